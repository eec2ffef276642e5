"""The controller's refusals, one at a time (mutation testing, issue 15): a refused START/TRIGGER
moves no output, answers the NACK code/field/value/limit, and leaves every channel as it was."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from firmware.controller import Controller
from protocol import messages as M
from protocol import params as P
from protocol.framing import FrameDecoder, encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from link_targets import GOOD, FakeHal  # noqa: E402


class ZHal(FakeHal):
    """FakeHal with a settable electrode reading per channel (None = no valid reading)."""

    def __init__(self, ohms=1000):
        super().__init__()
        self.ohms = [ohms] * self.channels

    def measure_impedance(self, ch):
        self.calls.append(["impedance", ch])
        return self.ohms[ch]


class Rig:
    def __init__(self, configure=(0,)):
        self.hal = ZHal()
        self.out = []
        self.ctl = Controller(self.hal, self.out.append)
        self.seq = 0
        for ch in configure:
            kind, _ = self.ask(M.SET_PARAMS, M.encode_params(ch, GOOD))
            assert kind == M.SET_PARAMS | M.RESPONSE

    def ask(self, msg_type, body=b""):
        self.seq += 1
        self.out.clear()
        self.ctl.receive(encode_frame(msg_type, self.seq, body))
        frames = [f for chunk in self.out for f in FrameDecoder().feed(chunk)]
        reply = [f for f in frames if f.seq == self.seq][-1]
        return reply.type, (M.decode_nack(reply.body) if reply.type == M.NACK else reply.body)

    def started(self):
        return [c for c in self.hal.calls if c[0] == "start"]


def nack(kind_body, code, field="channel", value=None, limit=None):
    kind, body = kind_body
    assert kind == M.NACK, kind_body
    assert body["code"] == code and body["field"] == field, body
    if value is not None:
        assert body["value"] == value, body
    if limit is not None:
        assert body["limit"] == limit, body


@pytest.mark.parametrize("op", [M.START, M.TRIGGER])
def test_no_valid_impedance_reading_refuses_and_records_unknown(op):
    r = Rig()
    r.hal.ohms[0] = None
    nack(r.ask(op, bytes((1,))), M.E_IMPEDANCE, value=0, limit=M.OHM_UNKNOWN)
    assert r.started() == [] and r.ctl.state[0] == M.ST_IDLE
    assert r.ctl.impedance_ohm[0] == M.OHM_UNKNOWN


@pytest.mark.parametrize("ohm,ok", [(49, False), (50, True), (4000, True), (4001, False), (10**6, False), (0, False)])
def test_start_refused_on_an_open_or_shorted_electrode(ohm, ok):
    r = Rig()
    r.hal.ohms[0] = ohm
    reply = r.ask(M.START, bytes((1,)))
    assert r.ctl.impedance_ohm[0] == ohm
    if ok:
        assert reply[0] == M.START | M.RESPONSE and r.started() and r.ctl.state[0] == M.ST_RUNNING
    else:
        nack(reply, M.E_IMPEDANCE, value=0, limit=ohm)
        assert r.started() == [] and r.ctl.state[0] == M.ST_IDLE


def test_every_electrode_is_checked_before_any_channel_moves():
    r = Rig(configure=(0, 1))
    r.hal.ohms[1] = 10**6
    nack(r.ask(M.START, bytes((0b11,))), M.E_IMPEDANCE, value=1, limit=10**6)
    assert r.started() == [] and r.ctl.state[:2] == [M.ST_IDLE, M.ST_IDLE]


@pytest.mark.parametrize("op", [M.START, M.TRIGGER])
def test_latched_fault_refuses_start_until_cleared(op):
    r = Rig()
    r.ctl.state[0] = M.ST_FAULT
    r.ctl.fault[0] = M.EV_FAULT_OPEN
    nack(r.ask(op, bytes((1,))), M.E_FAULT_LATCHED, value=0)
    assert r.started() == [] and r.ctl.state[0] == M.ST_FAULT
    assert not [c for c in r.hal.calls if c[0] == "impedance"]  # refused before the electrode check
    assert r.ask(M.CLEAR_FAULT, bytes((1,)))[0] == M.CLEAR_FAULT | M.RESPONSE
    assert (r.ctl.state[0], r.ctl.fault[0]) == (M.ST_IDLE, 0)
    assert r.ask(op, bytes((1,)))[0] == op | M.RESPONSE and r.started()


def test_clear_fault_refused_while_the_faulted_stream_drains():
    r = Rig()
    r.ctl.state[0] = M.ST_FAULT
    r.hal._running[0] = True
    nack(r.ask(M.CLEAR_FAULT, bytes((1,))), M.E_BAD_STATE, value=0, limit=M.ST_FAULT)
    assert r.ctl.state[0] == M.ST_FAULT


@pytest.mark.parametrize("op", [M.START, M.TRIGGER])
def test_unconfigured_channel_refuses_and_nothing_else_starts(op):
    r = Rig(configure=(0,))
    nack(r.ask(op, bytes((0b10,))), M.E_NOT_CONFIGURED, value=1)
    nack(r.ask(op, bytes((0b11,))), M.E_NOT_CONFIGURED, value=1)
    assert r.started() == [] and r.ctl.state[0] == M.ST_IDLE


def test_start_of_a_running_channel_is_refused_trigger_of_a_running_one_too():
    r = Rig()
    assert r.ask(M.START, bytes((1,)))[0] == M.START | M.RESPONSE
    nack(r.ask(M.START, bytes((1,))), M.E_BAD_STATE, value=0, limit=M.ST_RUNNING)
    nack(r.ask(M.TRIGGER, bytes((1,))), M.E_BAD_STATE, value=0, limit=M.ST_RUNNING)
    assert len(r.started()) == 1


def test_armed_channel_start_refused_trigger_accepted():
    r = Rig(configure=())
    kind, _ = r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, trigger=P.TRIGGER_EXT1)))
    assert kind == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((1,)))[0] == M.START | M.RESPONSE
    assert r.ctl.state[0] == M.ST_ARMED and r.started()[-1][2][0] == 1
    nack(r.ask(M.START, bytes((1,))), M.E_BAD_STATE, value=0, limit=M.ST_ARMED)
    assert r.ask(M.TRIGGER, bytes((1,)))[0] == M.TRIGGER | M.RESPONSE
    assert r.ctl.state[0] == M.ST_RUNNING


def test_live_amplitude_change_refused_timing_change_replaced():
    r = Rig()
    assert r.ask(M.START, bytes((1,)))[0] == M.START | M.RESPONSE
    nack(r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, amplitude_ua=2000))), M.E_BAD_STATE,
         field="amplitude_ua", value=2000, limit=M.ST_RUNNING)
    assert r.ctl.params[0] == GOOD
    assert not [c for c in r.hal.calls if c[0] == "replace"]
    new = dict(GOOD, period_ns=25_000_000)
    assert r.ask(M.SET_PARAMS, M.encode_params(0, new))[0] == M.SET_PARAMS | M.RESPONSE
    assert ["replace", 0] in r.hal.calls and r.ctl.params[0] == new


def test_out_of_limit_parameters_are_refused_with_the_violation():
    r = Rig(configure=())
    nack(r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, amplitude_ua=10001))), M.E_OUT_OF_RANGE,
         field="amplitude_ua", value=10001, limit=10000)
    assert r.ctl.params[0] is None
