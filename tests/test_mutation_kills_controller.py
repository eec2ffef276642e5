"""The controller's refusals, one at a time (mutation testing, issue 15): a refused START/TRIGGER
moves no output, answers the NACK code/field/value/limit, and leaves every channel as it was."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from firmware.controller import Controller
from protocol import messages as M
from protocol import params as P
from protocol.framing import PROTOCOL_VERSION, FrameDecoder, encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from link_targets import GOOD, FakeHal  # noqa: E402


class ZHal(FakeHal):
    """FakeHal with a settable electrode reading per channel (None = no valid reading)."""

    def __init__(self, ohms=1000):
        super().__init__()
        self.ohms = [ohms] * self.channels
        self.now = 1234  # time_us(): tests move it

    def time_us(self):
        return self.now

    def measure_impedance(self, ch):
        self.calls.append(["impedance", ch])
        return self.ohms[ch]

    def replace(self, ch, train):
        super().replace(ch, train)
        self.replaced_with = (ch, train)


class Rig:
    def __init__(self, configure=(0,), storage=None, hal=None):
        self.hal = ZHal() if hal is None else hal
        self.out = []
        self.ctl = Controller(self.hal, self.out.append, storage=storage)
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


def nack(kind_body, code, field="channel", value=None, limit=0):
    """The reply is a NACK with this code, field and limit (0 unless given), and value when given."""
    kind, body = kind_body
    assert kind == M.NACK, kind_body
    assert body["code"] == code and body["field"] == field, body
    if value is not None:
        assert body["value"] == value, body
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


# ---- request shapes: every length, channel and mask check (mutation survivors, issue 15) ---------

def _state(r):
    c = r.ctl
    return (list(c.state), list(c.fault), [None if p is None else dict(p) for p in c.params],
            c.deadman_ms, c.handback, [k[0] for k in r.hal.calls])


@pytest.mark.parametrize("op", [M.START, M.TRIGGER, M.STOP, M.IMPEDANCE, M.CLEAR_FAULT])
def test_mask_requests_check_length_and_every_mask_bit(op):
    r = Rig()
    before = _state(r)
    nack(r.ask(op, b""), M.E_BAD_LENGTH, field="body", value=0, limit=1)
    nack(r.ask(op, b"\x01\x00"), M.E_BAD_LENGTH, field="body", value=2, limit=1)
    nack(r.ask(op, bytes((0,))), M.E_BAD_CHANNEL, field="mask", value=0, limit=0b1111)
    nack(r.ask(op, bytes((0x10,))), M.E_BAD_CHANNEL, field="mask", value=0x10, limit=0b1111)
    nack(r.ask(op, bytes((0x11,))), M.E_BAD_CHANNEL, field="mask", value=0x11, limit=0b1111)
    nack(r.ask(op, bytes((0x80,))), M.E_BAD_CHANNEL, field="mask", value=0x80, limit=0b1111)
    assert _state(r) == before and r.ctl.nacks == 6


def test_mask_selects_exactly_its_channels():
    r = Rig(configure=(0, 1, 2, 3))
    assert r.ask(M.START, bytes((0b1010,)))[0] == M.START | M.RESPONSE
    assert r.started() == [["start", 0b1010, [0, 0, 0, 0]]]
    assert r.ctl.state == [M.ST_IDLE, M.ST_RUNNING, M.ST_IDLE, M.ST_RUNNING]
    assert r.ask(M.START, bytes((0b0101,)))[0] == M.START | M.RESPONSE
    assert r.started()[-1] == ["start", 0b0101, [0, 0, 0, 0]]
    assert r.ctl.state == [M.ST_RUNNING] * 4


@pytest.mark.parametrize("op", [M.GET_PARAMS])
def test_channel_requests_check_length_and_channel(op):
    r = Rig()
    nack(r.ask(op, b""), M.E_BAD_LENGTH, field="body", value=0, limit=1)
    nack(r.ask(op, b"\x00\x00"), M.E_BAD_LENGTH, field="body", value=2, limit=1)
    nack(r.ask(op, bytes((4,))), M.E_BAD_CHANNEL, field="channel", value=4, limit=3)
    nack(r.ask(op, bytes((255,))), M.E_BAD_CHANNEL, field="channel", value=255, limit=3)
    nack(r.ask(op, bytes((3,))), M.E_NOT_CONFIGURED, value=3)
    kind, body = r.ask(op, bytes((0,)))
    assert kind == op | M.RESPONSE and M.decode_params_response(body)["channel"] == 0


def test_set_params_length_and_channel_refused_before_anything_is_stored():
    r = Rig(configure=())
    good = M.encode_params(3, GOOD)
    nack(r.ask(M.SET_PARAMS, good[:-1]), M.E_BAD_LENGTH, field="body", value=len(good) - 1, limit=len(good))
    nack(r.ask(M.SET_PARAMS, good + b"\x00"), M.E_BAD_LENGTH, field="body", value=len(good) + 1, limit=len(good))
    nack(r.ask(M.SET_PARAMS, bytes((4,)) + good[1:]), M.E_BAD_CHANNEL, value=4, limit=3)
    assert r.ctl.params == [None] * 4
    assert r.ask(M.SET_PARAMS, good)[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ctl.params[3] == GOOD and r.ctl.params[:3] == [None] * 3


def test_bad_version_and_unknown_type_are_refused():
    r = Rig()
    for version, kind in ((PROTOCOL_VERSION + 1, M.STATUS), (PROTOCOL_VERSION - 1, M.STATUS)):
        r.seq += 1
        r.out.clear()
        r.ctl.receive(encode_frame(kind, r.seq, b"", version=version))
        f = [f for c in r.out for f in FrameDecoder().feed(c)][-1]
        assert f.type == M.NACK and f.seq == r.seq
        n = M.decode_nack(f.body)
        assert (n["code"], n["field"], n["value"], n["limit"]) == (M.E_BAD_VERSION, None, version, PROTOCOL_VERSION)
    nack(r.ask(0x3F, b""), M.E_UNKNOWN_TYPE, field=None, value=0x3F, limit=0)
    assert r.ctl.nacks == 3


def test_status_with_a_body_is_refused():
    r = Rig()
    nack(r.ask(M.STATUS, b"\x00"), M.E_BAD_LENGTH, field="body", value=1, limit=0)
    assert r.ask(M.STATUS)[0] == M.STATUS | M.RESPONSE


# ---- SET_AMPLITUDE refusals ----------------------------------------------------------------------

def _running(r, ch=0):
    assert r.ask(M.START, bytes((1 << ch,)))[0] == M.START | M.RESPONSE
    assert r.ctl.state[ch] == M.ST_RUNNING


def test_set_amplitude_refusals_in_order():
    r = Rig(configure=(0,))
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)[:-1]), M.E_BAD_LENGTH, field="body", value=4, limit=5)
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200) + b"\x00"), M.E_BAD_LENGTH, field="body",
         value=6, limit=5)
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(4, 1200)), M.E_BAD_CHANNEL, value=4, limit=3)
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1200)), M.E_NOT_CONFIGURED, value=1)
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_BAD_STATE, value=0, limit=M.ST_IDLE)
    r.ctl.state[0] = M.ST_FAULT
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_FAULT_LATCHED, value=0)
    r.ctl.state[0] = M.ST_IDLE
    _running(r)
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 10001)), M.E_OUT_OF_RANGE, field="amplitude_ua",
         value=10001, limit=10000)
    assert not [c for c in r.hal.calls if c[0] == "dac_play"] and r.ctl.params[0] == GOOD


def test_set_amplitude_refused_while_stopping_draining_waiting_or_gate_closed():
    for setup in ("stopping", "drained", "waiting", "gate"):
        r = Rig(configure=(0,))
        _running(r)
        if setup == "stopping":
            r.ctl._stopping[0] = True
        elif setup == "drained":
            r.hal._running[0] = False
        elif setup == "waiting":
            r.hal.waiting = lambda ch: True
        else:
            r.ctl._gate_closed[0] = True
        nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_BAD_STATE, value=0, limit=M.ST_RUNNING)
        assert not [c for c in r.hal.calls if c[0] == "dac_play"], setup


def test_set_amplitude_refused_while_the_dac_bus_is_busy_then_accepted():
    r = Rig(configure=(0,))
    _running(r)
    r.hal.busy = True
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_DAC_BUSY, value=0)
    r.hal.busy = False
    r.ctl._down_mask = 0b10
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_DAC_BUSY, value=0)
    r.ctl._down_mask = 0
    assert not [c for c in r.hal.calls if c[0] == "dac_play"]
    kind, body = r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200))
    assert kind == M.SET_AMPLITUDE | M.RESPONSE
    assert M.decode_amplitude_response(body)["amplitude_ua"] == 1200
    assert [c for c in r.hal.calls if c[0] == "dac_play"]
    r.hal.busy = False  # the bus went idle, but no pulse has played the change yet: still pending
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1300)), M.E_DAC_BUSY, value=0)
    assert r.ctl.params[0] == GOOD


def test_set_amplitude_refused_on_a_hal_without_a_dac_bus():
    class NoDac(ZHal):
        dac_busy = None

    r = Rig.__new__(Rig)
    r.hal = NoDac()  # the controller looks dac_busy up with getattr(hal, "dac_busy", None)
    r.out = []
    r.ctl = Controller(r.hal, r.out.append)
    r.seq = 0
    assert r.ask(M.SET_PARAMS, M.encode_params(0, GOOD))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r)
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_DAC_BUSY, value=0)


# ---- SET_PARAMS on a running channel ------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("polarity", P.POLARITY_ANODIC_FIRST), ("shape", P.SHAPE_TRIPHASIC)])
def test_live_polarity_or_shape_change_refused(field, value):
    r = Rig()
    _running(r)
    new = dict(GOOD, **{field: value})
    nack(r.ask(M.SET_PARAMS, M.encode_params(0, new)), M.E_BAD_STATE, field=field, value=value, limit=M.ST_RUNNING)
    assert r.ctl.params[0] == GOOD and not [c for c in r.hal.calls if c[0] == "replace"]
    # the same change on an idle channel is accepted
    r2 = Rig()
    assert r2.ask(M.SET_PARAMS, M.encode_params(0, new))[0] == M.SET_PARAMS | M.RESPONSE
    assert r2.ctl.params[0] == new


def test_live_timing_change_refused_while_the_channels_dac_ops_play():
    r = Rig()
    _running(r)
    new = dict(GOOD, period_ns=25_000_000)
    r.ctl._dac_mask = 1
    r.hal.busy = True
    nack(r.ask(M.SET_PARAMS, M.encode_params(0, new)), M.E_DAC_BUSY, value=0)
    assert r.ctl.params[0] == GOOD
    r.ctl._dac_mask = 0b10  # another channel's ops: not this one's business
    assert r.ask(M.SET_PARAMS, M.encode_params(0, new))[0] == M.SET_PARAMS | M.RESPONSE
    assert ["replace", 0] in r.hal.calls and r.ctl.params[0] == new


def test_armed_channel_timing_change_is_replaced_not_refused():
    r = Rig(configure=())
    ext = dict(GOOD, trigger=P.TRIGGER_EXT1)
    assert r.ask(M.SET_PARAMS, M.encode_params(0, ext))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((1,)))[0] == M.START | M.RESPONSE and r.ctl.state[0] == M.ST_ARMED
    new = dict(ext, period_ns=25_000_000)
    assert r.ask(M.SET_PARAMS, M.encode_params(0, new))[0] == M.SET_PARAMS | M.RESPONSE
    assert ["replace", 0] in r.hal.calls
    nack(r.ask(M.SET_PARAMS, M.encode_params(0, dict(new, amplitude_ua=1500))), M.E_BAD_STATE,
         field="amplitude_ua", value=1500, limit=M.ST_ARMED)


def test_idle_channel_set_params_never_replaces():
    r = Rig()
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, amplitude_ua=2000)))[0] == M.SET_PARAMS | M.RESPONSE
    assert not [c for c in r.hal.calls if c[0] == "replace"]


# ---- flash slots --------------------------------------------------------------------------------

def _store(slots=8):
    from firmware import storage

    from link_targets import MemFiles
    return storage.Store(MemFiles(), slots)


def test_slot_requests_refused_without_storage_or_out_of_range():
    r = Rig(storage=None)
    for op in (M.SAVE, M.LOAD):
        nack(r.ask(op, bytes((0, 0))), M.E_STORAGE, field="slot", value=0, limit=0)
        nack(r.ask(op, bytes((0, 5))), M.E_STORAGE, field="slot", value=5, limit=0)
    r = Rig(storage=_store(3))
    for op in (M.SAVE, M.LOAD):
        nack(r.ask(op, bytes((0,))), M.E_BAD_LENGTH, field="body", value=1, limit=2)
        nack(r.ask(op, bytes((0, 0, 0))), M.E_BAD_LENGTH, field="body", value=3, limit=2)
        nack(r.ask(op, bytes((4, 0))), M.E_BAD_CHANNEL, value=4, limit=3)
        nack(r.ask(op, bytes((0, 3))), M.E_OUT_OF_RANGE, field="slot", value=3, limit=2)
        nack(r.ask(op, bytes((0, 200))), M.E_OUT_OF_RANGE, field="slot", value=200, limit=2)
    kind, body = r.ask(M.SAVE, bytes((0, 2)))
    assert kind == M.SAVE | M.RESPONSE and body[0] == 2


def test_save_refusals_and_the_crc_answer():
    store = _store()
    r = Rig(configure=(0,), storage=store)
    nack(r.ask(M.SAVE, bytes((1, 0))), M.E_NOT_CONFIGURED, value=1)
    _running(r)
    nack(r.ask(M.SAVE, bytes((0, 0))), M.E_BAD_STATE, value=0, limit=M.ST_RUNNING)
    r.ctl.state[0] = M.ST_IDLE  # idle but its stream still drains: still busy
    nack(r.ask(M.SAVE, bytes((0, 0))), M.E_BAD_STATE, value=0, limit=M.ST_IDLE)
    r.hal._running[0] = False
    r.ctl.state[2] = M.ST_ARMED
    nack(r.ask(M.SAVE, bytes((0, 0))), M.E_BAD_STATE, value=2, limit=M.ST_ARMED)
    r.ctl.state[2] = M.ST_IDLE
    assert store.files.files == {}
    kind, body = r.ask(M.SAVE, bytes((0, 5)))
    assert kind == M.SAVE | M.RESPONSE
    from firmware import storage
    rec = store.files.files["slot5.bin"]
    crc = int.from_bytes(rec[storage.HEAD_LEN - 2:storage.HEAD_LEN], "little")
    assert body == bytes((5, crc & 0xFF, crc >> 8))
    assert store.load(5) == P.pack(GOOD)


def test_save_storage_error_is_refused():
    from firmware import storage

    class Bad:
        slots = 8

        def save(self, slot, payload):
            raise storage.StorageError("flash says no")

    r = Rig(storage=Bad())
    nack(r.ask(M.SAVE, bytes((0, 1))), M.E_STORAGE, field="slot", value=1, limit=0)


def test_load_refusals_empty_corrupt_wrong_size_then_applies():
    from firmware import storage

    store = _store()
    r = Rig(configure=(), storage=store)
    nack(r.ask(M.LOAD, bytes((1, 0))), M.E_EMPTY_SLOT, field="slot", value=0, limit=0)
    store.save(1, P.pack(GOOD)[:-1])
    nack(r.ask(M.LOAD, bytes((1, 1))), M.E_STORAGE, field="slot", value=1, limit=0)
    store.save(2, P.pack(GOOD))
    rec = bytearray(store.files.files["slot2.bin"])
    rec[-1] ^= 0xFF
    store.files.files["slot2.bin"] = bytes(rec)
    with pytest.raises(storage.StorageError):
        store.load(2)
    nack(r.ask(M.LOAD, bytes((1, 2))), M.E_STORAGE, field="slot", value=2, limit=0)
    assert r.ctl.params == [None] * 4
    new = dict(GOOD, amplitude_ua=1500)
    store.save(3, P.pack(new))
    kind, body = r.ask(M.LOAD, bytes((1, 3)))
    assert kind == M.LOAD | M.RESPONSE and r.ctl.params[1] == new and r.ctl.params[0] is None
    assert M.decode_params_response(body)["channel"] == 1
    bad = dict(GOOD, amplitude_ua=10001)
    store.save(4, P.pack(bad))
    nack(r.ask(M.LOAD, bytes((1, 4))), M.E_OUT_OF_RANGE, field="amplitude_ua", value=10001, limit=10000)
    assert r.ctl.params[1] == new


# ---- LINK (deadman), REPL, EVENT_LOG -------------------------------------------------------------

def _ms(ms):
    return bytes((ms & 0xFF, ms >> 8 & 0xFF, ms >> 16 & 0xFF, ms >> 24 & 0xFF))


def test_link_checks_length_and_the_10_ms_floor():
    r = Rig()
    nack(r.ask(M.LINK, _ms(100)[:3]), M.E_BAD_LENGTH, field="body", value=3, limit=4)
    nack(r.ask(M.LINK, _ms(100) + b"\x00"), M.E_BAD_LENGTH, field="body", value=5, limit=4)
    for ms in (1, 9):
        nack(r.ask(M.LINK, _ms(ms)), M.E_OUT_OF_RANGE, field="deadman_ms", value=ms, limit=10)
        assert r.ctl.deadman_ms == 0
    for ms in (10, 0x12345678, 0xFFFFFFFF, 0):
        assert r.ask(M.LINK, _ms(ms))[0] == M.LINK | M.RESPONSE
        assert r.ctl.deadman_ms == ms
    assert r.ask(M.LINK, _ms(500))[0] == M.LINK | M.RESPONSE
    assert r.ask(M.HELLO)[0] == M.HELLO | M.RESPONSE and r.ctl.deadman_ms == 0


def _events(r):
    return [M.decode_event(f.body) for c in r.out for f in FrameDecoder().feed(c) if f.type == M.EVENT]


def test_deadman_trips_only_after_more_than_its_time_and_across_the_tick_wrap():
    from firmware.ticks import ticks_add

    r = Rig(configure=(0, 1))
    t0 = (1 << 30) - 3000  # the silence spans ticks_us()'s wrap
    r.hal.now = t0
    assert r.ask(M.LINK, _ms(10))[0] == M.LINK | M.RESPONSE
    _running(r, 1)
    r.hal.now = t0
    assert r.ask(M.STATUS)[0] == M.STATUS | M.RESPONSE  # heard at t0
    r.out.clear()
    for dt in (999, 5500, 9999, 10_000):
        r.hal.now = ticks_add(t0, dt)
        r.ctl.poll()
        assert r.ctl.deadman_trips == 0 and not [c for c in r.hal.calls if c[0] == "stop"], dt
    r.hal.now = ticks_add(t0, 10_001)
    r.ctl.poll()
    assert r.ctl.deadman_trips == 1
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b10]]
    ev = [e for e in _events(r) if e["kind"] == M.EVENT_NAMES[M.EV_DEADMAN]]
    assert len(ev) == 1 and (ev[0]["channel"], ev[0]["value"]) == (0, 0b10)
    assert r.ctl._stopping[1] and not r.ctl._stopping[0]
    r.hal.now = ticks_add(t0, 15_000)  # one trip per silence
    r.ctl.poll()
    assert r.ctl.deadman_trips == 1
    r.hal.now = ticks_add(t0, 20_002)  # a second silence of more than 10 ms
    r.ctl.poll()
    assert r.ctl.deadman_trips == 2


def test_deadman_with_nothing_running_stops_nothing_and_counts_no_trip():
    r = Rig()
    assert r.ask(M.LINK, _ms(10))[0] == M.LINK | M.RESPONSE
    r.hal.now += 50_000
    r.ctl.poll()
    assert r.ctl.deadman_trips == 0 and not [c for c in r.hal.calls if c[0] == "stop"]


def test_deadman_stops_an_armed_channel_too_and_never_ramps_down():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(2, dict(GOOD, trigger=P.TRIGGER_EXT2)))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b100,)))[0] == M.START | M.RESPONSE
    assert r.started()[-1][2] == [0, 0, 2, 0]
    assert r.ask(M.LINK, _ms(10))[0] == M.LINK | M.RESPONSE
    r.hal.now += 10_001
    r.ctl._down_mask = 0b100
    r.ctl.poll()
    assert ["stop", 0b100] in r.hal.calls and r.ctl.deadman_trips == 1 and r.ctl._down_mask == 0


def test_repl_refused_with_a_body_or_while_a_channel_is_busy():
    r = Rig()
    nack(r.ask(M.REPL, b"\x00"), M.E_BAD_LENGTH, field="body", value=1, limit=0)
    _running(r)
    nack(r.ask(M.REPL), M.E_BAD_STATE, value=0, limit=M.ST_RUNNING)
    assert not r.ctl.handback
    r.ctl.state[0] = M.ST_IDLE  # still draining
    nack(r.ask(M.REPL), M.E_BAD_STATE, value=0, limit=M.ST_IDLE)
    r.hal._running[0] = False
    r.ctl.state[3] = M.ST_ARMED
    nack(r.ask(M.REPL), M.E_BAD_STATE, value=3, limit=M.ST_ARMED)
    r.ctl.state[3] = M.ST_IDLE
    assert not r.ctl.handback
    assert r.ask(M.REPL)[0] == M.REPL | M.RESPONSE and r.ctl.handback


def test_event_log_request_length_and_the_events_newer_than_a_seq():
    r = Rig()
    nack(r.ask(M.EVENT_LOG, b"\x00"), M.E_BAD_LENGTH, field="body", value=1, limit=2)
    nack(r.ask(M.EVENT_LOG, b"\x00\x00\x00"), M.E_BAD_LENGTH, field="body", value=3, limit=2)
    for i in range(5):
        r.ctl.emit(M.EV_TRAIN_DONE, 0, i)
    kind, body = r.ask(M.EVENT_LOG, bytes((2, 0)))
    assert kind == M.EVENT_LOG | M.RESPONSE
    log = M.decode_event_log(body)
    assert body == M.encode_event_log(r.ctl.event_log[2:])
    assert log
    kind, body = r.ask(M.EVENT_LOG, bytes((0, 1)))  # after = 256: "newer" wraps mod 2**16
    assert body == M.encode_event_log([])


# ---- STOP with a soft stop, group ramps, TRIGGER of a fired channel ------------------------------

SOFT = dict(GOOD, ramp_down_pulses=3)


def _soft_running(r, ch=0, params=SOFT):
    assert r.ask(M.SET_PARAMS, M.encode_params(ch, params))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, ch)


def test_stop_of_a_running_soft_stop_channel_ramps_down_then_stops():
    r = Rig(configure=())
    _soft_running(r)
    kind, body = r.ask(M.STOP, bytes((1,)))
    assert (kind, body) == (M.STOP | M.RESPONSE, b"")
    assert [c for c in r.hal.calls if c[0] == "dac_play"] and not [c for c in r.hal.calls if c[0] == "stop"]
    assert r.ctl._down_mask == 1 and r.ctl._dac_mask == 1 and r.ctl._stopping[0]
    r.hal.busy = False  # the ramp's mark is pushed: now the stream stops
    r.ctl.poll()
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 1]] and r.ctl._down_mask == 0


def test_second_stop_stops_at_once():
    r = Rig(configure=())
    _soft_running(r)
    assert r.ask(M.STOP, bytes((1,)))[0] == M.STOP | M.RESPONSE
    assert r.ask(M.STOP, bytes((1,)))[0] == M.STOP | M.RESPONSE
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 1]] and r.ctl._down_mask == 0
    assert len([c for c in r.hal.calls if c[0] == "dac_play"]) == 1


@pytest.mark.parametrize("why", ["bus_busy", "drained", "waiting", "gate_closed", "no_ramp", "not_running_state"])
def test_stop_without_a_ramp_down_when_it_cannot_play(why):
    r = Rig(configure=())
    _soft_running(r, params=GOOD if why == "no_ramp" else SOFT)
    if why == "bus_busy":
        r.hal.busy = True
    elif why == "drained":
        r.hal._running[0] = False
    elif why == "waiting":
        r.hal.waiting = lambda ch: ch == 0  # only this channel waits
    elif why == "gate_closed":
        r.ctl._gate_closed[0] = True
    elif why == "not_running_state":
        r.ctl.state[0] = M.ST_ARMED
    assert r.ask(M.STOP, bytes((1,)))[0] == M.STOP | M.RESPONSE
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 1]]
    assert not [c for c in r.hal.calls if c[0] == "dac_play"] and r.ctl._down_mask == 0
    assert r.ctl._stopping[0] and not r.ctl._gate_closed[0]


def test_soft_stop_of_two_channels_with_the_same_timing_is_one_group():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(1, SOFT))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(3, SOFT))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b1010,)))[0] == M.START | M.RESPONSE
    assert r.ask(M.STOP, bytes((0b1010,)))[0] == M.STOP | M.RESPONSE
    assert r.ctl._down_mask == 0b1010 and r.ctl._group_mask == 0b1010
    assert not [c for c in r.hal.calls if c[0] == "stop"]


RAMP = dict(GOOD, ramp_up_pulses=4)


def test_group_ramp_start_then_stop_of_one_stops_the_group():
    r = Rig(configure=())
    for ch in (0, 2):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, RAMP))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, GOOD))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b101,)))[0] == M.START | M.RESPONSE
    assert r.started()[-1][:2] == ["start", 0b101] and len(r.started()[-1]) == 5
    assert r.ctl._group_mask == 0b101 and r.ctl._dac_mask == 0b101
    assert r.ask(M.START, bytes((0b10,)))[0] == M.START | M.RESPONSE  # not part of the group
    assert r.ask(M.STOP, bytes((0b100,)))[0] == M.STOP | M.RESPONSE
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b101]]
    assert r.ctl._stopping[:3] == [True, False, True]


def test_single_channel_ramp_is_no_group_and_stops_alone():
    r = Rig(configure=())
    for ch in (0, 1):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, RAMP if ch == 0 else GOOD))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b11,)))[0] == M.START | M.RESPONSE
    assert r.ctl._group_mask == 0 and r.ctl._dac_mask == 0b1
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b10]]


def test_ramp_start_refused_while_the_dac_bus_is_busy_or_on_a_hal_without_one():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(2, RAMP))[0] == M.SET_PARAMS | M.RESPONSE
    r.hal.busy = True
    nack(r.ask(M.START, bytes((0b100,))), M.E_DAC_BUSY, value=2)
    assert r.started() == [] and r.ctl.state[2] == M.ST_IDLE

    class NoDac(ZHal):
        dac_busy = None

    for field in ("ramp_up_pulses", "ramp_up_ns"):
        r = Rig.__new__(Rig)
        r.hal, r.out, r.seq = NoDac(), [], 0
        r.ctl = Controller(r.hal, r.out.append)
        p = dict(GOOD, **{field: 4 if field == "ramp_up_pulses" else 200_000_000})
        assert r.ask(M.SET_PARAMS, M.encode_params(1, p))[0] == M.SET_PARAMS | M.RESPONSE
        nack(r.ask(M.START, bytes((0b10,))), M.E_OUT_OF_RANGE, field=field, value=p[field], limit=0)
        assert r.started() == []


def test_ramps_of_different_timing_in_one_start_refused():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, RAMP))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(RAMP, period_ns=25_000_000)))[0] == M.SET_PARAMS | M.RESPONSE
    kind, body = r.ask(M.START, bytes((0b11,)))
    assert kind == M.NACK and body["code"] == M.E_RAMP_TIMING, body
    assert r.started() == [] and r.ctl.state[:2] == [M.ST_IDLE, M.ST_IDLE]


class FiredHal(ZHal):
    def disarm(self, mask):
        self.calls.append(["disarm", mask])
        return mask  # the external edge came first: every armed channel runs already


def test_trigger_of_an_armed_channel_whose_edge_fired_keeps_its_train():
    r = Rig(configure=())
    r.hal = FiredHal()
    r.ctl = Controller(r.hal, r.out.append)
    for ch in (0, 1):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, dict(GOOD, trigger=P.TRIGGER_EXT1)))[0] == \
            M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b10,)))[0] == M.START | M.RESPONSE and r.ctl.state[1] == M.ST_ARMED
    kind, body = r.ask(M.TRIGGER, bytes((0b11,)))
    assert (kind, body) == (M.TRIGGER | M.RESPONSE, b"")
    assert ["disarm", 0b10] in r.hal.calls
    assert r.started() == [["start", 0b10, [0, 1, 0, 0]], ["start", 0b01, [0, 0, 0, 0]]]
    assert r.ctl.state[:2] == [M.ST_RUNNING, M.ST_RUNNING]
    seen = [e for e in _events(r) if e["kind"] == M.EVENT_NAMES[M.EV_TRIGGER_SEEN]]
    assert [e["channel"] for e in seen] == [1]


def test_trigger_starts_an_external_trigger_channel_now_and_ungated():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(3, dict(GOOD, trigger=P.TRIGGER_GATED2)))[0] == \
        M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.TRIGGER, bytes((0b1000,)))[0] == M.TRIGGER | M.RESPONSE
    assert r.started() == [["start", 0b1000, [0, 0, 0, 0]]] and r.ctl.state[3] == M.ST_RUNNING
    assert not [c for c in r.hal.calls if c[0] == "disarm"]
    r.hal.input_level = lambda n: 0  # the gate is low: a software start ignores it
    r.ctl.poll()
    assert not [c for c in r.hal.calls if c[0] == "stop"] and r.ctl.state[3] == M.ST_RUNNING


def test_clear_fault_answers_empty_and_names_the_draining_channel():
    r = Rig(configure=())
    r.ctl.state[2] = M.ST_FAULT
    r.hal._running[2] = True
    nack(r.ask(M.CLEAR_FAULT, bytes((0b100,))), M.E_BAD_STATE, value=2, limit=M.ST_FAULT)
    r.hal._running[2] = False
    assert r.ask(M.CLEAR_FAULT, bytes((0b100,))) == (M.CLEAR_FAULT | M.RESPONSE, b"")


# ---- an amplitude update needs idle after the pulse (limits that let a train run without it) -----

LAX = None


def _lax_rig():
    from firmware.limits import LIMITS

    r = Rig.__new__(Rig)
    r.hal, r.out, r.seq = ZHal(), [], 0
    r.ctl = Controller(r.hal, r.out.append, limits=dict(LIMITS, min_update_idle_ns=0, max_duty_permille=1000))
    return r


TIGHT = dict(GOOD, phase1_ns=46_000, phase2_ns=46_000, period_ns=100_000)  # idle too short for a DAC update


def test_set_amplitude_refused_when_the_idle_cannot_hold_the_dac_update():
    r = _lax_rig()
    assert r.ask(M.SET_PARAMS, M.encode_params(0, TIGHT))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r)
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_OUT_OF_RANGE, field="period_ns",
         value=100_000, limit=101_000)
    assert not [c for c in r.hal.calls if c[0] == "dac_play"]


def test_set_amplitude_also_checks_the_train_a_live_change_replaced():
    r = _lax_rig()
    assert r.ask(M.SET_PARAMS, M.encode_params(0, TIGHT))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r)
    roomy = dict(TIGHT, period_ns=200_000)
    assert r.ask(M.SET_PARAMS, M.encode_params(0, roomy))[0] == M.SET_PARAMS | M.RESPONSE
    assert ["replace", 0] in r.hal.calls
    # the tight train may still be playing its last pulse: the update must fit its idle too
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_OUT_OF_RANGE, field="period_ns",
         value=100_000, limit=101_000)
    # after a fresh start nothing was replaced: accepted
    r2 = _lax_rig()
    assert r2.ask(M.SET_PARAMS, M.encode_params(0, roomy))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r2)
    assert r2.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200))[0] == M.SET_AMPLITUDE | M.RESPONSE


# ---- STOP: group membership and soft stops one after the other -----------------------------------

def test_stop_of_a_channel_outside_a_ramp_group_leaves_the_group_running():
    r = Rig(configure=())
    for ch in (0, 2):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, RAMP))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, GOOD))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b101,)))[0] == M.START | M.RESPONSE
    assert r.ask(M.START, bytes((0b10,)))[0] == M.START | M.RESPONSE
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b10]]
    assert r.ctl._stopping[:3] == [False, True, False]


def test_soft_stops_queued_one_after_the_other_all_stop_at_the_mark():
    r = Rig(configure=())
    _soft_running(r, 0)
    _soft_running(r, 1)
    assert r.ask(M.STOP, bytes((0b01,)))[0] == M.STOP | M.RESPONSE
    r.hal.busy = False  # the bus drained before the next poll
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    assert len([c for c in r.hal.calls if c[0] == "dac_play"]) == 2
    assert not [c for c in r.hal.calls if c[0] == "stop"]
    r.hal.busy = False
    r.ctl.poll()
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b11]]


def test_soft_stop_queues_the_engines_ramp_down_ops_for_that_train():
    from firmware import pulse_engine

    r = Rig(configure=())
    _soft_running(r, 2)
    r.hal.played[2] = 7
    n = len(r.hal.ops)
    assert r.ask(M.STOP, bytes((0b100,)))[0] == M.STOP | M.RESPONSE
    w = pulse_engine.RampWriter(r.ctl.trains, [2], None, True)
    assert r.hal.ops[n:] == list(w.chunk(w.lookahead())) and w.done
    assert r.ctl._mon_ramp[2][:2] == (1, 8)  # the ramp-down's first pulse follows the next pulse end


def test_long_soft_stop_is_topped_up_from_poll():
    r = Rig(configure=())
    _soft_running(r, 1, params=dict(GOOD, ramp_down_pulses=200))  # 10 s of pulses: several chunks
    r.hal.played[1] = 5
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    assert r.ctl._writer is not None and r.ctl._writer[1:] == [1, 5]
    plays = len([c for c in r.hal.calls if c[0] == "dac_play"])
    r.hal.played[1] = 5 + 1000  # the pulses caught up: the next chunk goes out
    r.ctl.poll()
    assert len([c for c in r.hal.calls if c[0] == "dac_play"]) > plays
    assert not [c for c in r.hal.calls if c[0] == "stop"]


def test_deadman_silence_in_one_long_poll_gap_trips_at_exactly_one_us_past_its_time():
    from firmware.ticks import ticks_add

    for gap, trips in ((10_000_000, 0), (10_000_001, 1)):
        r = Rig()
        _running(r)
        assert r.ask(M.LINK, _ms(10_000))[0] == M.LINK | M.RESPONSE  # 10 s
        t0 = r.hal.now
        r.hal.now = ticks_add(t0, gap)
        r.ctl.poll()
        assert r.ctl.deadman_trips == trips, gap
    r = Rig()  # the same silence seen in two polls
    _running(r)
    assert r.ask(M.LINK, _ms(10_000))[0] == M.LINK | M.RESPONSE
    t0 = r.hal.now
    r.hal.now = ticks_add(t0, 5_000_000)
    r.ctl.poll()
    assert r.ctl.deadman_trips == 0
    r.hal.now = ticks_add(t0, 10_000_000)
    r.ctl.poll()
    assert r.ctl.deadman_trips == 0
    r.hal.now = ticks_add(t0, 10_000_001)
    r.ctl.poll()
    assert r.ctl.deadman_trips == 1


def test_deadman_drops_a_ramp_still_being_written():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, ramp_up_pulses=200)))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r)
    assert r.ctl._writer is not None
    assert r.ask(M.LINK, _ms(10))[0] == M.LINK | M.RESPONSE
    r.hal.now += 10_001
    r.ctl.poll()
    assert ["stop", 1] in r.hal.calls and r.ctl._writer is None


def test_impedance_request_reports_each_masked_channel_and_unknown_for_no_reading():
    r = Rig(configure=())
    r.hal.ohms = [None, 49, 5000, 0xFFFFFFFF + 7]
    kind, body = r.ask(M.IMPEDANCE, bytes((0b1111,)))
    assert kind == M.IMPEDANCE | M.RESPONSE
    assert M.decode_impedance(body) == [
        {"channel": 0, "ohms": None, "class": "unknown"},
        {"channel": 1, "ohms": 49, "class": "short"},
        {"channel": 2, "ohms": 5000, "class": "open"},
        {"channel": 3, "ohms": 0xFFFFFFFE, "class": "open"},
    ]
    assert r.ctl.impedance_ohm == [M.OHM_UNKNOWN, 49, 5000, 0xFFFFFFFF + 7]
    kind, body = r.ask(M.IMPEDANCE, bytes((0b0100,)))
    assert M.decode_impedance(body) == [{"channel": 2, "ohms": 5000, "class": "open"}]
    assert r.started() == []


def test_gated_train_stops_when_the_gate_closes_and_rearms_counting_on():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(GOOD, trigger=P.TRIGGER_GATED2)))[0] == \
        M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b10,)))[0] == M.START | M.RESPONSE
    assert r.started() == [["start", 0b10, [0, 2, 0, 0]]] and r.ctl.state[1] == M.ST_ARMED
    r.hal.played[1] = 3
    r.ctl.poll()  # fired: running
    assert r.ctl.state[1] == M.ST_RUNNING
    levels = {1: 1, 2: 0}
    r.hal.input_level = lambda n: levels[n]
    r.ctl.poll()
    assert ["stop", 0b10] in r.hal.calls and r.ctl.state[1] == M.ST_RUNNING
    r.hal._running[1] = False  # drained
    r.hal.played[1] = 5
    r.ctl.poll()
    assert r.started()[-1] == ["start", 0b10, [0, 2, 0, 0]] and r.ctl.state[1] == M.ST_ARMED
    r.hal.played[1] = 0  # the new opening counts from 0; STATUS adds the earlier openings
    st = M.decode_status(r.ask(M.STATUS)[1])
    assert st["channels"][1]["pulses"] == 5
    assert not [e for e in _events(r) if e["kind"] == M.EVENT_NAMES[M.EV_TRAIN_DONE]]


def test_amplitude_change_takes_effect_on_the_first_pulse_after_its_mark():
    r = Rig()
    _running(r)
    r.hal.played[0] = 10
    kind, body = r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1500))
    assert kind == M.SET_AMPLITUDE | M.RESPONSE
    r.ctl.poll()  # bus still busy: nothing yet
    assert r.ctl.params[0] == GOOD
    r.hal.busy = False
    r.hal.mark_pulses[0] = 12  # the mark was pushed after pulse 12 ended
    r.hal.played[0] = 12
    r.out.clear()
    r.ctl.poll()  # no pulse with the new codes yet
    assert r.ctl.params[0] == GOOD and not _events(r)
    r.hal.played[0] = 13
    r.ctl.poll()
    ev = [e for e in _events(r) if e["kind"] == M.EVENT_NAMES[M.EV_AMPLITUDE]]
    assert len(ev) == 1 and (ev[0]["channel"], ev[0]["amplitude_ua"], ev[0]["from_pulse"]) == (0, 1500, 12)
    assert r.ctl.params[0] == dict(GOOD, amplitude_ua=1500) and r.ctl._dac_mask == 0
    # the next change is accepted again
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1600))[0] == M.SET_AMPLITUDE | M.RESPONSE


def test_amplitude_change_no_pulse_played_is_dropped_unreported():
    r = Rig()
    _running(r)
    r.hal.played[0] = 4
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
    r.hal.busy = False
    r.hal.mark_pulses[0] = 4
    r.hal._running[0] = False  # the stream ended first
    r.out.clear()
    r.ctl.poll()
    assert not [e for e in _events(r) if e["kind"] == M.EVENT_NAMES[M.EV_AMPLITUDE]]
    assert r.ctl.params[0] == GOOD and r.ctl._amp_pending[0] is None and r.ctl.state[0] == M.ST_IDLE


def test_the_replaced_train_kept_for_the_idle_check_is_the_one_with_the_shortest_idle():
    roomy = dict(TIGHT, period_ns=200_000)
    roomier = dict(TIGHT, period_ns=300_000)
    for order in ((TIGHT, roomy, roomier), (roomy, TIGHT, roomier), (roomier, roomy, TIGHT, roomier)):
        r = _lax_rig()
        assert r.ask(M.SET_PARAMS, M.encode_params(0, order[0]))[0] == M.SET_PARAMS | M.RESPONSE
        _running(r)
        for p in order[1:]:
            assert r.ask(M.SET_PARAMS, M.encode_params(0, p))[0] == M.SET_PARAMS | M.RESPONSE
        # TIGHT played at some point since the start: its idle decides
        nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_OUT_OF_RANGE, field="period_ns",
             value=100_000, limit=101_000)
    r = _lax_rig()
    assert r.ask(M.SET_PARAMS, M.encode_params(0, roomier))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r)
    assert r.ask(M.SET_PARAMS, M.encode_params(0, roomy))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(0, roomier))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200))[0] == M.SET_AMPLITUDE | M.RESPONSE


# ---- refusals name the channel / slot they are about (not channel 0, where 0 could hide it) --------

@pytest.mark.parametrize("op", [M.START, M.TRIGGER])
def test_refusals_name_a_channel_other_than_0(op):
    r = Rig(configure=(0, 1, 2, 3))
    r.ctl.state[2] = M.ST_FAULT
    nack(r.ask(op, bytes((0b0100,))), M.E_FAULT_LATCHED, value=2)
    r.ctl.state[2] = M.ST_IDLE
    r.hal.ohms[3] = None
    nack(r.ask(op, bytes((0b1000,))), M.E_IMPEDANCE, value=3, limit=M.OHM_UNKNOWN)
    r.hal.ohms[3] = 1000
    _running(r, 1)
    nack(r.ask(M.START, bytes((0b0010,))), M.E_BAD_STATE, value=1, limit=M.ST_RUNNING)
    assert r.started() == [["start", 0b10, [0, 0, 0, 0]]]


def test_set_amplitude_refusals_name_channel_1():
    r = Rig(configure=(0, 1))
    r.ctl.state[1] = M.ST_FAULT
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1200)), M.E_FAULT_LATCHED, value=1)
    r.ctl.state[1] = M.ST_IDLE
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1200)), M.E_BAD_STATE, value=1, limit=M.ST_IDLE)
    _running(r, 1)
    r.hal.busy = True
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1200)), M.E_DAC_BUSY, value=1)
    r.hal.busy = False
    r.hal.waiting = lambda ch: ch == 1  # only channel 1 waits
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1200)), M.E_BAD_STATE, value=1, limit=M.ST_RUNNING)
    r.hal.waiting = lambda ch: ch == 0
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1200))[0] == M.SET_AMPLITUDE | M.RESPONSE


def test_live_change_dac_busy_is_per_channel():
    r = Rig(configure=(0, 1))
    _running(r, 1)
    new = dict(GOOD, period_ns=25_000_000)
    r.ctl._dac_mask = 0b10
    r.hal.busy = True
    nack(r.ask(M.SET_PARAMS, M.encode_params(1, new)), M.E_DAC_BUSY, value=1)
    r.hal.busy = False  # ops of this channel were queued, but the bus is idle and no ramp is written
    assert r.ask(M.SET_PARAMS, M.encode_params(1, new))[0] == M.SET_PARAMS | M.RESPONSE
    ch, train = r.hal.replaced_with
    assert ch == 1 and train is r.ctl.trains[1] and train.period_ticks == r.ctl.trains[1].period_ticks


def test_amplitude_change_marks_its_channel_beside_a_ramp_of_another():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, RAMP))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, GOOD))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b11,)))[0] == M.START | M.RESPONSE
    assert r.ctl._dac_mask == 0b01
    r.hal.busy = False  # the ramp's ops went out; no poll yet
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1200))[0] == M.SET_AMPLITUDE | M.RESPONSE
    # the bus is busy again: a timing change is refused on both channels whose ops are queued
    for ch, p in ((1, GOOD), (0, RAMP)):
        nack(r.ask(M.SET_PARAMS, M.encode_params(ch, dict(p, period_ns=25_000_000))), M.E_DAC_BUSY, value=ch)


def test_load_empty_slot_names_the_slot():
    r = Rig(configure=(), storage=_store())
    nack(r.ask(M.LOAD, bytes((2, 6))), M.E_EMPTY_SLOT, field="slot", value=6)
    nack(r.ask(M.SAVE, bytes((2, 6))), M.E_NOT_CONFIGURED, value=2)


def test_duplicates_are_counted_each_time():
    r = Rig()
    frame = encode_frame(M.STATUS, 77, b"")
    for _ in range(3):
        r.ctl.receive(frame)
    assert r.ctl.duplicates == 2


def test_repl_answers_an_empty_body():
    r = Rig()
    assert r.ask(M.REPL) == (M.REPL | M.RESPONSE, b"")


@pytest.mark.parametrize("k,ramps", [(0, False), (1, False), (2, True), (3, True)])
def test_a_ramp_of_one_pulse_is_no_ramp(k, ramps):
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(GOOD, ramp_up_pulses=k)))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b10,)))[0] == M.START | M.RESPONSE
    assert len(r.started()[-1]) == (5 if ramps else 3)


def test_ramps_of_different_timing_name_the_channel_that_differs_and_the_lead():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(2, RAMP))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(3, dict(RAMP, period_ns=25_000_000)))[0] == M.SET_PARAMS | M.RESPONSE
    kind, body = r.ask(M.START, bytes((0b1100,)))
    assert kind == M.NACK, body
    assert (body["code"], body["field"], body["value"], body["limit"], body["relation"]) == (
        M.E_RAMP_TIMING, "ramp_up_pulses", 3, 2, "<="), body


def test_ramps_waiting_on_different_inputs_cannot_start_together_but_trigger_together():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(RAMP, trigger=P.TRIGGER_EXT1)))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(RAMP, trigger=P.TRIGGER_EXT2)))[0] == M.SET_PARAMS | M.RESPONSE
    kind, body = r.ask(M.START, bytes((0b11,)))
    assert kind == M.NACK and body["code"] == M.E_RAMP_TIMING and (body["value"], body["limit"]) == (1, 0), body
    assert r.started() == []
    assert not [c for c in r.hal.calls if c[0] == "impedance"]  # refused before the electrode check
    # a software TRIGGER starts both now (no input to wait for): the same timing, one ramp
    assert r.ask(M.TRIGGER, bytes((0b11,)))[0] == M.TRIGGER | M.RESPONSE
    assert r.started()[-1][:3] == ["start", 0b11, [0, 0, 0, 0]] and len(r.started()[-1]) == 5


def test_two_ramps_without_idle_for_two_dac_updates_refused():
    r = _lax_rig()
    p = dict(GOOD, phase1_ns=45_000, phase2_ns=45_000, period_ns=100_000, ramp_up_pulses=4)
    for ch in (0, 1):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, p))[0] == M.SET_PARAMS | M.RESPONSE
    kind, body = r.ask(M.START, bytes((0b11,)))
    assert kind == M.NACK and body["code"] == M.E_OUT_OF_RANGE and body["field"] == "period_ns", body
    assert body["value"] == 100_000 and body["limit"] > 100_000 and body["relation"] == ">="
    assert r.started() == []
    assert r.ask(M.START, bytes((0b01,)))[0] == M.START | M.RESPONSE  # one channel's update fits


def test_status_reports_configured_channels_and_uptime_in_ms():
    r = Rig(configure=(1,))
    r.hal.now = 1234 + 5_000_000
    kind, body = r.ask(M.STATUS)
    st = M.decode_status(body)
    assert [c["configured"] for c in st["channels"]] == [False, True, False, False]
    import struct
    size = struct.calcsize("<BBBII")
    assert [body[5 + i * size + 2] for i in range(4)] == [0, 1, 0, 0]
    assert st["uptime_ms"] == 5001


def test_event_log_by_seq_across_256_and_half_the_seq_space():
    r = Rig()
    for i in range(300):
        r.ctl.emit(M.EV_TRAIN_DONE, 0, i)
    kind, body = r.ask(M.EVENT_LOG, bytes((290 & 0xFF, 290 >> 8)))
    assert body == M.encode_event_log([e for e in r.ctl.event_log if e[0] > 290][:M.EVENT_LOG_MAX])
    assert len(M.decode_event_log(body)) == 10
    r = Rig()
    for i in range(5):
        r.ctl.emit(M.EV_TRAIN_DONE, 0, i)  # seqs 1..5
    after = (3 - 0x8000) & 0xFFFF  # seq 3 is exactly half the space ahead: not newer
    kind, body = r.ask(M.EVENT_LOG, bytes((after & 0xFF, after >> 8)))
    assert body == M.encode_event_log(r.ctl.event_log[:2])


def test_of_two_replaced_trains_with_the_same_idle_the_first_is_kept():
    same_idle = dict(TIGHT, phase1_ns=47_000, phase2_ns=47_000, period_ns=102_000)  # TIGHT's idle, longer pulse
    r = _lax_rig()
    assert r.ask(M.SET_PARAMS, M.encode_params(0, TIGHT))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r)
    for p in (same_idle, dict(TIGHT, period_ns=300_000)):
        assert r.ask(M.SET_PARAMS, M.encode_params(0, p))[0] == M.SET_PARAMS | M.RESPONSE
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_OUT_OF_RANGE, field="period_ns",
         value=100_000, limit=101_000)


@pytest.mark.parametrize("stop_ch", [0, 1])
def test_stop_of_either_channel_of_an_adjacent_ramp_group_stops_both(stop_ch):
    r = Rig(configure=())
    for ch in (0, 1):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, RAMP))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b11,)))[0] == M.START | M.RESPONSE
    assert r.ask(M.STOP, bytes((1 << stop_ch,)))[0] == M.STOP | M.RESPONSE
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b11]]


def test_a_soft_stop_of_one_pulse_still_ramps_down():
    r = Rig(configure=())
    _soft_running(r, params=dict(GOOD, ramp_down_pulses=1))
    assert r.ask(M.STOP, bytes((1,)))[0] == M.STOP | M.RESPONSE
    assert [c for c in r.hal.calls if c[0] == "dac_play"] and not [c for c in r.hal.calls if c[0] == "stop"]


@pytest.mark.parametrize("first", [0, 1])
def test_no_dac_bus_names_the_channel_that_ramps(first):
    class NoDac(ZHal):
        dac_busy = None

    r = Rig.__new__(Rig)
    r.hal, r.out, r.seq = NoDac(), [], 0
    r.ctl = Controller(r.hal, r.out.append)
    # channel 0 has a "ramp" of one pulse (none), channel 1 ramps over 2 pulses
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, ramp_up_pulses=first)))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(GOOD, ramp_up_pulses=2)))[0] == M.SET_PARAMS | M.RESPONSE
    nack(r.ask(M.START, bytes((0b11,))), M.E_OUT_OF_RANGE, field="ramp_up_pulses", value=2)
    assert r.started() == []


def test_boot_and_crash_events_are_on_channel_0_and_stay_first_in_the_log():
    r = Rig(configure=())
    r.ctl.boot(crashes=1, crash=("ValueError", M.CRASH_POLL))
    for i in range(40):
        r.ctl.emit(M.EV_TRAIN_DONE, 1, i)
    ev = _events(r)
    assert [(e["kind"], e["channel"]) for e in ev[:2]] == [(M.EVENT_NAMES[M.EV_BOOT], 0), (M.EVENT_NAMES[M.EV_CRASH], 0)]
    log = r.ctl.event_log
    assert len(log) == M.EVENT_LOG_LEN
    assert [seq for seq, _ in log[:2]] == [1, 2]
    assert [seq for seq, _ in log[2:]] == list(range(42 - (M.EVENT_LOG_LEN - 2) + 1, 43))


# ---- custom sequences: every refusal names its channel, value and limit (issue 15, new since the
# first run) ----------------------------------------------------------------------------------------

def _seq_params(n, amp=2000, **kw):
    from firmware.limits import LIMITS

    return P.complete(dict({"sequence_pulses": n, "period_ns": LIMITS["min_sequence_interval_ns"],
                            "amplitude_ua": amp, "sequence_cycle_ns": 0}, **kw))


def _onsets(n):
    from firmware.limits import LIMITS

    return [i * LIMITS["min_sequence_interval_ns"] for i in range(n)]


def _sequence(r, ch, amps, **kw):
    """Parameters in sequence mode on ``ch`` and its pulses uploaded (2 ms apart)."""
    assert r.ask(M.SET_PARAMS, M.encode_params(ch, _seq_params(len(amps), **kw)))[0] == M.SET_PARAMS | M.RESPONSE
    on = _onsets(len(amps))
    for first in range(0, len(amps), M.SEQUENCE_CHUNK):
        end = first + M.SEQUENCE_CHUNK
        kind, body = r.ask(M.SET_SEQUENCE, M.encode_set_sequence(ch, first, on[first:end], amps[first:end]))
        assert kind == M.SET_SEQUENCE | M.RESPONSE, body
    assert M.decode_sequence_response(body) == {"channel": ch, "received": len(amps), "complete": 1}


def test_two_varying_sequences_refused_naming_the_second_and_the_first():
    r = Rig(configure=())
    _sequence(r, 1, [100, 200, 300])
    _sequence(r, 2, [300, 200, 100])
    kind, body = r.ask(M.START, bytes((0b110,)))
    assert kind == M.NACK and (body["code"], body["field"], body["value"], body["limit"], body["relation"]) == (
        M.E_RAMP_TIMING, "sequence_pulses", 2, 1, "<="), body
    assert r.started() == [] and r.ctl.state[1:3] == [M.ST_IDLE, M.ST_IDLE]


def test_a_varying_sequence_refused_while_the_dac_bus_is_busy_names_its_channel():
    r = Rig(configure=())
    _sequence(r, 2, [100, 200, 300])
    r.hal.busy = True
    nack(r.ask(M.START, bytes((0b100,))), M.E_DAC_BUSY, value=2, limit=0)
    assert r.started() == [] and r.ctl.state[2] == M.ST_IDLE
    r.hal.busy = False
    assert r.ask(M.START, bytes((0b100,)))[0] == M.START | M.RESPONSE


def test_without_a_dac_bus_a_sequence_off_the_trains_amplitude_names_that_amplitude():
    class NoDac(ZHal):
        dac_busy = None

    r = Rig.__new__(Rig)
    r.hal, r.out, r.seq = NoDac(), [], 0
    r.ctl = Controller(r.hal, r.out.append)
    _sequence(r, 1, [1000, 500, 1000], amp=1000)
    nack(r.ask(M.START, bytes((0b10,))), M.E_OUT_OF_RANGE, field="sequence_amplitude_ua", value=1000, limit=0)
    assert r.started() == []


def test_set_amplitude_and_save_of_a_sequence_channel_name_its_pulses_limit_0():
    r = Rig(configure=(), storage=_store())
    _sequence(r, 3, [100, 200, 300, 400])
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(3, 500)), M.E_BAD_STATE, field="sequence_pulses",
         value=4, limit=0)
    nack(r.ask(M.SAVE, bytes((3, 1))), M.E_BAD_STATE, field="sequence_pulses", value=4, limit=0)


@pytest.mark.parametrize("n,k", [(0, 1), (2, 1), (22, 1), (30, 2), (40, 3), (14, 1), (16, 1), (250, 20)])
def test_set_sequence_bad_length_names_the_nearest_good_length(n, k):
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, _seq_params(3)))[0] == M.SET_PARAMS | M.RESPONSE
    nack(r.ask(M.SET_SEQUENCE, bytes(n)), M.E_BAD_LENGTH, field="body", value=n,
         limit=M.SEQUENCE_HEAD_SIZE + k * M.SEQUENCE_PULSE_SIZE)


def test_set_sequence_state_refusals_name_the_channel():
    r = Rig(configure=())
    body = M.encode_set_sequence(2, 0, _onsets(3), [1, 2, 3])
    nack(r.ask(M.SET_SEQUENCE, body), M.E_NOT_CONFIGURED, value=2, limit=0)
    assert r.ask(M.SET_PARAMS, M.encode_params(2, _seq_params(3)))[0] == M.SET_PARAMS | M.RESPONSE
    r.hal._running[2] = True  # idle, but its last stream still drains
    nack(r.ask(M.SET_SEQUENCE, body), M.E_BAD_STATE, value=2, limit=M.ST_IDLE)
    r.hal._running[2] = False
    _sequence(r, 3, [5, 5, 5])
    assert r.ask(M.START, bytes((0b1000,)))[0] == M.START | M.RESPONSE
    r.hal._running[3] = False  # ended, not yet seen by poll(): still running for the controller
    nack(r.ask(M.SET_SEQUENCE, M.encode_set_sequence(3, 0, _onsets(3), [1, 2, 3])), M.E_BAD_STATE, value=3,
         limit=M.ST_RUNNING)
    kind, body = r.ask(M.SET_SEQUENCE, body)
    assert kind == M.SET_SEQUENCE | M.RESPONSE and M.decode_sequence_response(body)["received"] == 3


def test_a_failed_sequence_write_names_the_channel_and_the_pulses_kept():
    from firmware import sequence as S

    class Failing:
        stalls = False

        def __init__(self):
            self.rec = S.RamRecords()

            def write_at(offset, data):
                raise OSError(28, "no space")

            self.rec.write_at = write_at

        def records(self, ch):
            return self.rec

    r = Rig.__new__(Rig)
    r.hal, r.out, r.seq = ZHal(), [], 0
    r.ctl = Controller(r.hal, r.out.append, sequences=Failing())
    assert r.ask(M.SET_PARAMS, M.encode_params(1, _seq_params(3)))[0] == M.SET_PARAMS | M.RESPONSE
    nack(r.ask(M.SET_SEQUENCE, M.encode_set_sequence(1, 0, _onsets(3), [1, 2, 3])), M.E_STORAGE, value=1, limit=0)


def test_a_sequence_directory_keeps_the_records_in_files_and_waits_for_every_channel(tmp_path):
    from firmware import sequence as S

    r = Rig.__new__(Rig)
    r.hal, r.out, r.seq = ZHal(), [], 0
    r.ctl = Controller(r.hal, r.out.append, sequences=str(tmp_path / "seqs"))
    assert r.ask(M.SET_PARAMS, M.encode_params(0, GOOD))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, _seq_params(3)))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    body = M.encode_set_sequence(1, 0, _onsets(3), [1, 2, 3])
    nack(r.ask(M.SET_SEQUENCE, body), M.E_BAD_STATE, value=0, limit=M.ST_RUNNING)  # a flash write stalls
    assert not (tmp_path / "seqs").exists()
    r.ask(M.STOP, bytes((1,)))
    r.hal._running[0] = False
    r.ctl.poll()
    assert r.ask(M.SET_SEQUENCE, body)[0] == M.SET_SEQUENCE | M.RESPONSE
    assert (tmp_path / "seqs" / "seq1.bin").stat().st_size == 3 * S.RECORD_SIZE


# ---- electrode monitoring: warnings, faults and what they stop (a HAL with phase-1 readings) -------

class MonHal(ZHal):
    """ZHal with phase-1 electrode readings the test queues per channel: (time_us, ADC code), oldest
    first, handed out once (hal.phase1_samples); and the crash path's safe state."""

    def __init__(self):
        super().__init__()
        self.now = 1_000_000
        self.samples = [[] for _ in range(self.channels)]

    def phase1_samples(self, ch, min_interval_us):
        out, self.samples[ch] = self.samples[ch], []
        return out

    def safe_state(self, wait_us=0):
        self.calls.append(["safe_state"])
        return True


def _na(params, j=None):
    """Realised phase-1 current (nA) of ``params`` (of its pulse ``j`` when given: soft start)."""
    from firmware import pulse_engine as E

    train = E.build_train(params)
    if j is None:
        return train.realised["amplitude_na"]
    a, b = E.pulse_codes(train, j)
    return E.code_to_na(b if train.first == E.NEG else a)


def _code(ohm, na):
    """The ADC code a phase-1 reading of ``ohm`` gives at ``na``."""
    from firmware import impedance

    return impedance.electrode_uv_to_adc(ohm * na // 1000)


def _ohm(code, na):
    from firmware import impedance

    return impedance.phase1_ohms(code, na)


def _status(r, ch):
    kind, body = r.ask(M.STATUS)
    assert kind == M.STATUS | M.RESPONSE
    return M.decode_status(body)["channels"][ch]


SATURATED = 4095  # a reading at the compliance rail: an open lead whatever the current


def test_impedance_high_warns_once_per_entry_with_the_readings_channel_ohms_and_time():
    from firmware import impedance

    r = Rig(configure=(2,), hal=MonHal())
    _running(r, 2)
    na = _na(GOOD)
    high, ok = _code(3000, na), _code(1000, na)
    oh = _ohm(high, na)
    assert impedance.classify(oh) == M.Z_HIGH and impedance.classify(_ohm(ok, na)) == M.Z_OK
    r.out.clear()
    r.hal.samples[2] = [(900_000, high), (910_000, high), (920_000, high), (930_000, high)]
    r.ctl.poll()
    ev = [e for e in _events(r) if e["kind"] != M.EVENT_NAMES[M.EV_TRAIN_DONE]]
    assert [(e["kind"], e["channel"], e["value"], e["time_us"]) for e in ev] == [
        (M.EVENT_NAMES[M.EV_IMPEDANCE_HIGH], 2, oh, 920_000)]  # the third agreeing reading
    r.out.clear()
    r.hal.samples[2] = [(940_000, high)] * 3  # still high: no second warning
    r.ctl.poll()
    assert _events(r) == []
    r.hal.samples[2] = [(950_000, ok)] * 3 + [(960_000, high), (961_000, high), (962_000, high)]
    r.ctl.poll()  # back to ok, then high again: a new warning
    ev = _events(r)
    assert [(e["kind"], e["channel"], e["value"], e["time_us"]) for e in ev] == [
        (M.EVENT_NAMES[M.EV_IMPEDANCE_HIGH], 2, oh, 962_000)]
    st = _status(r, 2)
    assert (st["state"], st["fault"], st["impedance_ohm"]) == ("running", "none", oh)
    assert not [c for c in r.hal.calls if c[0] == "stop"]  # stimulation goes on


@pytest.mark.parametrize("kind,ohm", [(M.EV_FAULT_OPEN, 9000), (M.EV_FAULT_SHORT, 40)])
def test_a_fault_in_the_poll_its_stream_ended_latches_and_reports_the_reading(kind, ohm):
    r = Rig(configure=(1,), hal=MonHal())
    _running(r, 1)
    na = _na(GOOD)
    code = _code(ohm, na)
    value = _ohm(code, na)
    assert value not in (0, 0x7FFFFFFF)
    r.hal._running[1] = False  # its last pulse has ended too: the stream is over in this very poll
    r.hal.samples[1] = [(950_000, code), (951_000, code), (952_000, code)]
    r.out.clear()
    r.ctl.poll()
    ev = _events(r)
    assert [(e["kind"], e["channel"], e["value"], e["time_us"]) for e in ev] == [
        (M.EVENT_NAMES[kind], 1, value, 952_000)]
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b10]]
    r.out.clear()
    r.ctl.poll()  # a latched fault never turns into train_done
    assert _events(r) == []
    st = _status(r, 1)
    assert (st["state"], st["fault"], st["impedance_ohm"]) == ("fault", M.EVENT_NAMES[kind], value)
    nack(r.ask(M.START, bytes((0b10,))), M.E_FAULT_LATCHED, value=1)


def test_a_saturated_reading_faults_open_with_the_int32_maximum():
    r = Rig(configure=(0,), hal=MonHal())
    _running(r, 0)
    r.hal.samples[0] = [(990_000, SATURATED)] * 3
    r.out.clear()
    r.ctl.poll()
    ev = _events(r)
    assert [(e["kind"], e["channel"], e["value"]) for e in ev] == [(M.EVENT_NAMES[M.EV_FAULT_OPEN], 0, 0x7FFFFFFF)]


def test_a_fault_of_one_channel_does_not_hide_another_channels_end_in_the_same_poll():
    r = Rig(configure=(0, 1), hal=MonHal())
    _running(r, 0)
    _running(r, 1)
    r.hal._running[1] = False
    r.hal.samples[0] = [(990_000, SATURATED)] * 3
    r.out.clear()
    r.ctl.poll()
    ev = _events(r)
    assert [(e["kind"], e["channel"]) for e in ev] == [(M.EVENT_NAMES[M.EV_FAULT_OPEN], 0),
                                                        (M.EVENT_NAMES[M.EV_TRAIN_DONE], 1)]
    assert [_status(r, ch)["state"] for ch in (0, 1)] == ["fault", "idle"]


def test_a_fault_beside_another_channels_soft_stop_leaves_that_stop_to_its_ramp():
    r = Rig(configure=(0, 2), hal=MonHal())
    _running(r, 0)
    _soft_running(r, 1)
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE  # ramps down: the bus is busy
    r.hal.samples[0] = [(990_000, SATURATED)] * 3
    r.ctl.poll()
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b01]]
    r.hal.busy = False  # the ramp-down's mark: now channel 1 stops
    r.ctl.poll()
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b01], ["stop", 0b10]]
    r.hal._running[1] = False
    r.ctl.poll()
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b01], ["stop", 0b10]]
    assert [_status(r, ch)["state"] for ch in (0, 1)] == ["fault", "idle"]
    # the other channels' DAC work is not blocked by a fault
    _running(r, 2)
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(2, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE


def test_a_fault_during_its_own_soft_stop_stops_once_and_never_again_at_the_ramps_mark():
    r = Rig(configure=(), hal=MonHal())
    _soft_running(r, 1)
    r.hal.played[1] = 5
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    r.hal.played[1] = 6  # the first pulse of the ramp-down in progress
    r.hal.samples[1] = [(r.hal.now, SATURATED)] * 3
    r.out.clear()
    r.ctl.poll()
    assert [e["kind"] for e in _events(r)] == [M.EVENT_NAMES[M.EV_FAULT_OPEN]]
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b10]]
    r.hal.busy = False
    r.ctl.poll()
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 0b10]]


def test_a_fault_during_a_long_soft_start_stops_writing_the_ramp():
    r = Rig(configure=(), hal=MonHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, ramp_up_pulses=200)))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r)
    r.hal.played[0] = 10
    r.hal.samples[0] = [(r.hal.now, SATURATED)] * 3
    r.ctl.poll()
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 1]]
    plays = len([c for c in r.hal.calls if c[0] == "dac_play"])
    r.hal.played[0] = 1000  # the stream still drains its last pulse: no more of the ramp is queued
    r.ctl.poll()
    assert len([c for c in r.hal.calls if c[0] == "dac_play"]) == plays


def test_trigger_seen_when_an_armed_channel_fires_even_before_its_first_pulse_ends():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(3, dict(GOOD, trigger=P.TRIGGER_EXT2)))[0] == M.SET_PARAMS | M.RESPONSE
    r.hal.waiting = lambda ch: True
    assert r.ask(M.START, bytes((0b1000,)))[0] == M.START | M.RESPONSE
    r.ctl.poll()
    assert _status(r, 3)["state"] == "armed"
    r.hal.waiting = lambda ch: False  # fired: running, no pulse completed yet
    r.out.clear()
    r.ctl.poll()
    ev = _events(r)
    assert [(e["kind"], e["channel"], e["value"]) for e in ev] == [(M.EVENT_NAMES[M.EV_TRIGGER_SEEN], 3, 0)]
    assert _status(r, 3)["state"] == "running"


def test_a_gated_train_runs_on_while_its_gate_is_high():
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, trigger=P.TRIGGER_GATED1)))[0] == \
        M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((1,)))[0] == M.START | M.RESPONSE
    r.hal.played[0] = 2
    for _ in range(3):
        r.ctl.poll()  # fired, gate input 1 high
    assert _status(r, 0)["state"] == "running" and not [c for c in r.hal.calls if c[0] == "stop"]
    r.hal.input_level = lambda n: 0 if n == 1 else 1
    r.ctl.poll()
    assert [c for c in r.hal.calls if c[0] == "stop"] == [["stop", 1]]


def test_a_crash_after_a_poll_is_reported_in_the_main_loop():
    from firmware import crash

    r = Rig(hal=MonHal())
    _running(r)
    r.ctl.poll()
    out = []
    new = crash.recover(r.hal, r.ctl, ValueError("x"), lambda: Controller(r.hal, out.append))
    evs = [M.decode_event(f.body) for c in out for f in FrameDecoder().feed(c) if f.type == M.EVENT]
    assert M.decode_crash(evs[1]["value"]) == {"exception": "ValueError", "where": "loop"}
    assert new.crashes == 1


# ---- a fresh controller, the crash report's place, the event log, HALs without a DAC bus ----------

def test_a_fresh_controller_reports_no_crash_no_fault_no_pulses():
    r = Rig(configure=())
    kind, body = r.ask(M.STATUS)
    st = M.decode_status(body)
    assert st["counters"]["crashes"] == 0
    assert [(c["state"], c["fault"], c["pulses"], c["impedance_ohm"]) for c in st["channels"]] == [
        ("idle", "none", 0, None)] * 4


def _crash_where(hal, ctl):
    from firmware import crash

    out = []
    crash.recover(hal, ctl, KeyError("x"), lambda: Controller(hal, out.append))
    evs = [M.decode_event(f.body) for c in out for f in FrameDecoder().feed(c) if f.type == M.EVENT]
    return M.decode_crash(evs[1]["value"])["where"]


def test_the_crash_report_names_the_loop_before_any_request_and_after_one():
    hal = MonHal()
    assert _crash_where(hal, Controller(hal, [].append)) == "loop"
    r = Rig(hal=MonHal())
    assert r.ask(M.STATUS)[0] == M.STATUS | M.RESPONSE
    assert _crash_where(r.hal, r.ctl) == "loop"


def test_the_crash_report_names_the_link_when_decoding_fails_after_a_frame():
    r = Rig(configure=(), hal=MonHal())
    real = r.ctl.decoder.feed

    def feed(data):  # the link layer fails after handing out the first frame of the chunk
        for f in real(data):
            yield f
            raise MemoryError("link")

    r.ctl.decoder.feed = feed
    with pytest.raises(MemoryError):
        r.ctl.receive(encode_frame(M.STATUS, 1, b"") + encode_frame(M.STATUS, 2, b""))
    assert _crash_where(r.hal, r.ctl) == "link"


def test_without_a_crash_the_event_log_drops_its_oldest_entry():
    r = Rig(configure=())
    r.ctl.boot()
    for i in range(M.EVENT_LOG_LEN):
        r.ctl.emit(M.EV_TRAIN_DONE, 1, i)
    assert [seq for seq, _ in r.ctl.event_log] == list(range(2, M.EVENT_LOG_LEN + 2))
    kind, body = r.ask(M.EVENT_LOG, bytes((0, 0)))
    assert M.decode_event_log(body)[0]["kind"] == M.EVENT_NAMES[M.EV_TRAIN_DONE]


def test_a_hal_without_a_dac_bus_at_all_runs_and_refuses_live_changes():
    class Bare(ZHal):
        def __getattribute__(self, name):
            if name in ("dac_busy", "dac_play", "dac_mark_pulses"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    r = Rig(hal=Bare())
    _running(r)
    nack(r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1200)), M.E_DAC_BUSY, value=0)


def test_link_answers_an_empty_body():
    r = Rig()
    assert r.ask(M.LINK, _ms(100)) == (M.LINK | M.RESPONSE, b"")


def test_starts_and_impedance_checks_beside_a_varying_sequence_name_its_channel():
    r = Rig(configure=(0, 1))
    _sequence(r, 2, [100, 200, 300])
    assert r.ask(M.START, bytes((0b100,)))[0] == M.START | M.RESPONSE
    nack(r.ask(M.START, bytes((0b10,))), M.E_DAC_BUSY, value=2, limit=0)
    nack(r.ask(M.IMPEDANCE, bytes((0b01,))), M.E_DAC_BUSY, value=2, limit=0)


def test_a_sequence_needs_the_update_idle_of_one_channel_after_each_pulse():
    from firmware import pulse_engine as E

    r = _lax_rig()
    tight = _seq_params(3, amp=1000, phase1_ns=996_000, phase2_ns=996_000)
    need = E.build_train(tight).realised["pulse"] + E.dac_bus.min_idle_ticks(1)
    kind, body = r.ask(M.SET_PARAMS, M.encode_params(1, tight))
    assert kind == M.NACK and (body["code"], body["field"], body["value"], body["limit"], body["relation"]) == (
        M.E_OUT_OF_RANGE, "period_ns", 2_000_000, E.ticks_to_ns(need), ">="), body
    assert r.ctl.params[1] is None
    fits_one = _seq_params(3, amp=1000, phase1_ns=995_000, phase2_ns=995_000)  # not two channels' updates
    assert r.ask(M.SET_PARAMS, M.encode_params(1, fits_one))[0] == M.SET_PARAMS | M.RESPONSE


# ---- monitoring while the current changes pulse by pulse: each reading at its own pulse's current ---
# A reading is taken MONITOR_SAMPLE_NS into phase 1; its pulse ends (pulse - sample) later. So one
# taken at least that long before now belongs to a completed pulse (counted back by the period, or a
# sequence's own intervals); a later one to the pulse in progress (index = pulses completed).

def _rest_us(params):
    from firmware import impedance
    from firmware import pulse_engine as E

    return (E.build_train(params).realised["pulse"] - E.ns_to_ticks(impedance.MONITOR_SAMPLE_NS)) // 125


def _phase1_na(params, codes):
    """nA of phase 1 for a pulse's (DAC A, DAC B): the side phase 1 drives (B when cathodic first)."""
    from firmware import pulse_engine as E

    a, b = codes
    return E.code_to_na(b if params["polarity"] == P.POLARITY_CATHODIC_FIRST else a)


def _read(r, ch, p_now, back_us, code):
    """One poll with ``p_now`` pulses completed and one reading taken ``back_us`` before now: the
    ohms STATUS then reports for the channel."""
    r.hal.played[ch] = p_now
    r.hal.samples[ch] = [(r.hal.now - back_us, code)]
    r.ctl.poll()
    return _status(r, ch)["impedance_ohm"]


ASYM = dict(GOOD, phase2_ns=400_000)  # phase 2 twice as long: its code is half phase 1's


@pytest.mark.parametrize("polarity", [P.POLARITY_CATHODIC_FIRST, P.POLARITY_ANODIC_FIRST])
def test_readings_during_a_soft_start_use_their_own_pulses_current(polarity):
    """Each poll's readings are of pulses since the last poll (the HAL contract), a late one up to a
    period or two after its pulse ended; the per-pulse current is kept until the ramp has passed."""
    from firmware import pulse_engine as E

    p = dict(ASYM, ramp_up_pulses=8, polarity=polarity)
    train = E.build_train(p)
    na = [_phase1_na(p, E.pulse_codes(train, j)) for j in range(8)]
    assert len(set(na)) == 8
    r = Rig(configure=(), hal=MonHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(1, p))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 1)
    rest = _rest_us(p)
    period_us = p["period_ns"] // 1000
    code = _code(250, na[7])
    cases = [
        (0, rest, 0),  # the pulse count lags the clock: never before pulse 0
        (1, rest, 0),  # pulse 0 has just ended
        (1, rest - 1, 1),  # still in pulse 1
        (2, rest, 1), (2, rest + 1, 1),
        (4, rest + period_us, 2),  # a whole period before pulse 3's end: pulse 2
        (5, 49_700, 4),  # less than a period before pulse 4's end
        (5, rest + period_us - 1, 4),
        (8, rest + period_us, 6),  # late, the ramp's last partial pulse
        (8, 0, 7),
    ]
    for p_now, back, j in cases:
        assert _read(r, 1, p_now, back, code) == _ohm(code, na[j]), (p_now, back, j)


def test_a_soft_start_of_two_pulses_is_monitored_at_its_first_pulses_current():
    from firmware import pulse_engine as E

    p = dict(GOOD, ramp_up_pulses=2)
    train = E.build_train(p)
    half = _phase1_na(p, E.pulse_codes(train, 0))
    r = Rig(configure=(), hal=MonHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, p))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    code = _code(500, _na(GOOD))
    assert half != _na(GOOD)
    assert _read(r, 0, 0, 0, code) == _ohm(code, half)


@pytest.mark.parametrize("polarity", [P.POLARITY_CATHODIC_FIRST, P.POLARITY_ANODIC_FIRST])
def test_readings_during_a_soft_stop_use_its_pulses_current_and_none_after_the_dac_shutdown(polarity):
    from firmware import pulse_engine as E

    p = dict(ASYM, ramp_down_pulses=3, polarity=polarity)
    train = E.build_train(p)
    down = [_phase1_na(p, E.ramp_down_codes(train, i)) for i in range(3)]
    full = _na(p)
    assert len(set(down + [full])) == 4
    r = Rig(configure=(), hal=MonHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(2, p))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 2)
    r.hal.played[2] = 5
    assert r.ask(M.STOP, bytes((0b100,)))[0] == M.STOP | M.RESPONSE  # the soft stop's first pulse: 6
    code = _code(300, full)
    assert _read(r, 2, 5, 0, code) == _ohm(code, full)  # pulse 5: before the ramp
    for i in range(3):
        assert _read(r, 2, 6 + i, 0, code) == _ohm(code, down[i]), i
    last = _ohm(code, down[2])
    for p_now in (9, 10, 11, 12, 20):  # the DAC is shut down: no current, no reading counts
        assert _read(r, 2, p_now, 0, code) == last, p_now
    assert _status(r, 2)["state"] == "running"  # nothing was taken for an open lead


def test_readings_after_an_early_soft_stops_dac_shutdown_never_count():
    p = dict(GOOD, ramp_down_pulses=2)
    r = Rig(configure=(), hal=MonHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, p))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    r.hal.played[0] = 1
    assert r.ask(M.STOP, bytes((1,)))[0] == M.STOP | M.RESPONSE  # the soft stop's pulses: 2 and 3
    code = _code(300, _na(GOOD))
    first = _read(r, 0, 2, 0, code)
    for p_now in (4, 5, 6, 7, 8, 9):
        assert _read(r, 0, p_now, 0, code + 1 + p_now) == first, p_now


@pytest.mark.parametrize("p_now,periods,new", [(13, 1, False), (13, 0, True), (14, 1, True), (14, 2, False)])
def test_readings_around_a_live_change_use_the_old_current_before_its_first_pulse(p_now, periods, new):
    r = Rig(configure=(), hal=MonHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(3, GOOD))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 3)
    r.hal.played[3] = 10
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(3, 2000))[0] == M.SET_AMPLITUDE | M.RESPONSE
    old, na = _na(GOOD), _na(dict(GOOD, amplitude_ua=2000))
    r.hal.busy = False
    r.hal.mark_pulses[3] = 12  # pulse 12 is the first with the new codes
    code = _code(800, old)
    back = _rest_us(GOOD) + periods * GOOD["period_ns"] // 1000  # pulse p_now - 1 - periods
    assert _read(r, 3, p_now, back, code) == _ohm(code, na if new else old)
    assert _read(r, 3, p_now, 0, code) == _ohm(code, na)  # the pulse in progress


def _seq_rig(n, amps):
    r = Rig(configure=(), hal=MonHal())
    _sequence(r, 1, amps, phase1_ns=200_000, phase2_ns=200_000)
    _running(r, 1)
    return r


@pytest.mark.parametrize("p_now,ivs,extra_us,j", [
    (0, 0, 0, 0),  # the pulse count lags the clock: never before pulse 0
    (1, 0, 0, 0),
    (2, 0, 0, 1),
    (2, 1, 0, 0),  # exactly one interval before pulse 1's end: pulse 0
    (3, 1, 0, 1),
    (3, 1, -1, 2),
    (3, 2, 1000, 0),
    (3, 10, 0, 0),
    (90, 100, 0, 89 - 64),  # walked back 64 pulses at most
    (90, 63, 0, 89 - 63),
])
def test_readings_of_a_sequence_walk_back_over_its_intervals_at_most_64_pulses(p_now, ivs, extra_us, j):
    from firmware import pulse_engine as E
    from firmware.limits import LIMITS

    n = 90
    amps = [100 + 20 * i for i in range(n)]
    r = _seq_rig(n, amps)
    na = [E.code_to_na(E.dac_code(a)) for a in amps]
    rest = _rest_us(_seq_params(n, phase1_ns=200_000, phase2_ns=200_000))
    iv = LIMITS["min_sequence_interval_ns"] // 1000  # every interval: 2 ms
    code = _code(400, na[45])
    assert _read(r, 1, p_now, rest + ivs * iv + extra_us, code) == _ohm(code, na[j])


def test_a_reading_past_a_sequences_last_pulse_is_taken_at_the_trains_amplitude():
    from firmware import pulse_engine as E

    amps = [300, 600, 900]
    r = _seq_rig(3, amps)
    full = E.code_to_na(E.dac_code(2000))  # the parameters' amplitude_ua
    code = _code(400, full)
    assert _read(r, 1, 3, 0, code) == _ohm(code, full)


@pytest.mark.parametrize("op", [M.START, M.TRIGGER])
def test_monitoring_starts_from_the_start_checks_class(op):
    r = Rig(configure=(1,), hal=MonHal())
    assert r.ask(op, bytes((0b10,)))[0] == op | M.RESPONSE
    high = _code(3000, _na(GOOD))
    r.out.clear()
    r.hal.samples[1] = [(990_000, high)]  # one high reading: the check said ok, it takes three
    r.ctl.poll()
    assert _events(r) == []
    r.hal.ohms[1] = 3000
    r2 = Rig(configure=(1,), hal=MonHal())
    r2.hal.ohms[1] = 3000  # the check itself is high: no warning while it stays high
    assert r2.ask(op, bytes((0b10,)))[0] == op | M.RESPONSE
    r2.out.clear()
    r2.hal.samples[1] = [(990_000, high)] * 4
    r2.ctl.poll()
    assert _events(r2) == []


# ---- gated trains with a soft start: the ramp again at every opening ------------------------------

class GateHal(MonHal):
    """MonHal with trigger inputs the test sets, recording each start's trains (period ticks)."""

    def __init__(self):
        super().__init__()
        self.gate = {1: 1, 2: 1}
        self.loaded = []

    def input_level(self, n):
        return self.gate[n]

    def start(self, trains, mask, wait, first_ops=None, ramp_ops=()):
        self.loaded.append([trains[ch].period_ticks for ch in range(self.channels) if mask >> ch & 1])
        super().start(trains, mask, wait, first_ops, ramp_ops)


def _close_and_drain(r, ch, gate, pulses):
    """The gate closes after ``pulses`` pulses of this opening; the stream stops and drains."""
    r.hal.played[ch] = pulses
    r.hal.gate[gate] = 0
    stops = [c for c in r.hal.calls if c[0] == "stop"]
    r.ctl.poll()
    assert [c for c in r.hal.calls if c[0] == "stop"] == stops + [["stop", 1 << ch]]
    r.hal._running[ch] = False
    n = len(r.started())
    r.ctl.poll()  # drained: re-armed on the gate
    assert len(r.started()) == n + 1
    r.hal.gate[gate] = 1
    r.hal.played[ch] = 0


@pytest.mark.parametrize("k", [2, 4])
def test_a_gated_soft_start_ramps_again_at_every_opening(k):
    from firmware import pulse_engine as E

    p = dict(GOOD, trigger=P.TRIGGER_GATED2, ramp_up_pulses=k)
    r = Rig(configure=(), hal=GateHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(1, p))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b10,)))[0] == M.START | M.RESPONSE
    r.ctl.poll()  # the gate is open: running
    assert _status(r, 1)["state"] == "running"
    n_ops = len(r.hal.ops)
    _close_and_drain(r, 1, 2, 5)
    trains = [None, E.build_train(p), None, None]
    wait = [0, 2, 0, 0]
    w = E.ramp_up_writer(trains, [1], wait)
    first, chunk = E.start_ops(trains, [1]), w.chunk(w.lookahead())
    assert r.started()[-1] == ["start", 0b10, wait, len(first), len(chunk)]
    assert r.hal.ops[n_ops:] == first + chunk and chunk
    assert r.hal.loaded[-1] == [trains[1].period_ticks]
    assert _status(r, 1)["state"] == "armed"
    r.ctl.poll()  # the gate opens again: running, from the ramp's first pulse
    assert _status(r, 1)["state"] == "running"
    na0 = _phase1_na(p, E.pulse_codes(trains[1], 0))
    code = _code(300, na0)
    assert _read(r, 1, 1, _rest_us(p), code) == _ohm(code, na0)
    # the ramp's ops are queued for this channel: no timing change under them
    nack(r.ask(M.SET_PARAMS, M.encode_params(1, dict(p, period_ns=25_000_000))), M.E_DAC_BUSY, value=1)
    r.hal.busy = False
    _close_and_drain(r, 1, 2, 7)  # closes again: stopped again, re-armed again
    assert _status(r, 1)["pulses"] == 12  # both openings


def test_a_gated_opening_keeps_another_channels_queued_dac_work():
    r = Rig(configure=(0,), hal=GateHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(GOOD, trigger=P.TRIGGER_GATED1, ramp_up_pulses=4)))[0] \
        == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    assert r.ask(M.START, bytes((0b10,)))[0] == M.START | M.RESPONSE
    r.hal.busy = False
    r.ctl.poll()
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
    _close_and_drain(r, 1, 1, 3)  # channel 1 re-armed with its soft start while channel 0's change is queued
    nack(r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, period_ns=25_000_000))), M.E_DAC_BUSY, value=0)


def test_a_gated_opening_without_a_free_dac_bus_restarts_without_its_soft_start():
    r = Rig(configure=(), hal=GateHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, ramp_up_pulses=200)))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(GOOD, trigger=P.TRIGGER_GATED1, ramp_up_pulses=4)))[0] \
        == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b10,)))[0] == M.START | M.RESPONSE
    r.hal.busy = False
    r.ctl.poll()
    _running(r, 0)  # a long soft start: its ramp is still being written
    _close_and_drain(r, 1, 1, 3)
    assert r.started()[-1] == ["start", 0b10, [0, 1, 0, 0]]


def _top_up_at(r, ch, threshold):
    """No DAC ops are queued one pulse before ``threshold`` pulses, the next chunk at it."""
    plays = len([c for c in r.hal.calls if c[0] == "dac_play"])
    r.hal.played[ch] = threshold - 1
    r.ctl.poll()
    assert len([c for c in r.hal.calls if c[0] == "dac_play"]) == plays
    r.hal.played[ch] = threshold
    r.ctl.poll()
    assert len([c for c in r.hal.calls if c[0] == "dac_play"]) == plays + 1


def _first_chunk(p, down=False):
    from firmware import pulse_engine as E

    trains = [E.build_train(p)]
    w = E.RampWriter(trains, [0], None, True) if down else E.ramp_up_writer(trains, [0], [0])
    w.chunk(w.lookahead())
    return w.emitted, w.lookahead()


def test_a_long_soft_start_is_topped_up_once_half_a_lookahead_is_left():
    p = dict(GOOD, ramp_up_pulses=200)
    emitted, ahead = _first_chunk(p)
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(2, p))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 2)
    _top_up_at(r, 2, emitted - ahead // 2)
    r.hal._running[2] = False  # the stream ends: the rest of the ramp is never queued
    r.ctl.poll()
    r.ctl.poll()
    assert _status(r, 2)["state"] == "idle"


def test_a_gated_long_soft_start_is_topped_up_from_each_openings_first_pulse():
    p = dict(GOOD, trigger=P.TRIGGER_GATED2, ramp_up_pulses=200)
    emitted, ahead = _first_chunk(dict(p, trigger=P.TRIGGER_SOFTWARE))
    r = Rig(configure=(), hal=GateHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(3, p))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b1000,)))[0] == M.START | M.RESPONSE
    r.ctl.poll()
    r.hal._running[3] = True
    _close_and_drain(r, 3, 2, 25)
    r.ctl.poll()
    _top_up_at(r, 3, emitted - ahead // 2)


def test_a_long_soft_stop_is_topped_up_counting_from_the_stop():
    p = dict(GOOD, ramp_down_pulses=200)
    emitted, ahead = _first_chunk(p, down=True)
    r = Rig(configure=())
    _soft_running(r, 1, params=p)
    r.hal.played[1] = 5
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    _top_up_at(r, 1, 5 + emitted - ahead // 2)


# ---- DAC follow-up: changes waiting for their pulse, ended streams, soft stops of several channels ---

def _stops(r):
    return [c for c in r.hal.calls if c[0] == "stop"]


def test_a_change_pending_on_a_faulted_channel_whose_stream_ended_is_dropped_quietly():
    r = Rig(configure=(0,), hal=MonHal())
    _running(r, 0)
    r.hal.played[0] = 4
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
    r.hal.samples[0] = [(990_000, SATURATED)] * 3
    r.ctl.poll()
    assert _status(r, 0)["state"] == "fault"
    r.hal.busy = False
    r.hal.mark_pulses[0] = 4  # written after the last pulse: no pulse ever has it
    r.hal._running[0] = False
    r.out.clear()
    for _ in range(3):
        r.ctl.poll()
    assert _events(r) == [] and _status(r, 0)["state"] == "fault"


def test_two_pending_changes_one_not_yet_played_the_other_reported():
    r = Rig(configure=(0, 1))
    _running(r, 0)
    _running(r, 1)
    r.hal.played[0] = r.hal.played[1] = 5
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
    r.hal.busy = False
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1700))[0] == M.SET_AMPLITUDE | M.RESPONSE
    r.hal.busy = False
    r.hal.mark_pulses[0] = r.hal.mark_pulses[1] = 5
    r.hal.played[1] = 6  # channel 1 played a pulse with its change, channel 0 not yet
    r.out.clear()
    r.ctl.poll()
    ev = [e for e in _events(r) if e["kind"] == M.EVENT_NAMES[M.EV_AMPLITUDE]]
    assert [(e["channel"], e["amplitude_ua"], e["from_pulse"]) for e in ev] == [(1, 1700, 5)]


def test_changes_still_waiting_for_their_pulse_keep_guarding_their_channels():
    r = Rig(configure=(0, 1, 2))
    for ch in (0, 1, 2):
        _running(r, ch)
    for ch in (0, 1):
        assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(ch, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
        r.hal.busy = False  # their marks are pushed, no pulse has played them yet
    r.ctl.poll()
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(2, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE  # busy
    for ch in (0, 1):
        nack(r.ask(M.SET_PARAMS, M.encode_params(ch, dict(GOOD, period_ns=25_000_000))), M.E_DAC_BUSY, value=ch)


def test_a_change_of_a_gated_train_whose_gate_closed_never_reaches_the_next_opening():
    r = Rig(configure=(), hal=GateHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(GOOD, trigger=P.TRIGGER_GATED1)))[0] == \
        M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b10,)))[0] == M.START | M.RESPONSE
    r.ctl.poll()
    r.hal.played[1] = 3
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
    _close_and_drain(r, 1, 1, 3)  # the bus is still busy with the change's wait when the stream ends
    r.hal.busy = False
    r.hal.played[1] = 2  # the next opening's pulses
    r.out.clear()
    r.ctl.poll()
    assert not [e for e in _events(r) if e["kind"] == M.EVENT_NAMES[M.EV_AMPLITUDE]]
    assert M.decode_params_response(r.ask(M.GET_PARAMS, bytes((1,)))[1])["params"]["amplitude_ua"] == 1000


def test_a_train_ending_beside_another_channels_soft_stop_leaves_that_stop_to_its_mark():
    r = Rig(configure=(1,))
    _running(r, 1)
    _soft_running(r, 2)
    assert r.ask(M.STOP, bytes((0b100,)))[0] == M.STOP | M.RESPONSE
    r.hal._running[1] = False
    r.ctl.poll()  # channel 1's train is done
    r.hal.busy = False
    r.ctl.poll()
    assert _stops(r) == [["stop", 0b100]]


def test_a_soft_stop_whose_stream_ends_before_its_mark_is_not_stopped_again():
    r = Rig(configure=(0,))
    _soft_running(r, 1)
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    r.hal._running[1] = False  # the train ended by itself during the ramp-down
    r.ctl.poll()
    r.hal.busy = False
    r.ctl.poll()
    assert _stops(r) == []
    _running(r, 0)  # nothing is left ramping down: live changes are free again
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE


def test_a_train_ending_beside_another_channels_queued_change_keeps_that_change_guarded():
    r = Rig(configure=(0, 1))
    _running(r, 0)
    _running(r, 1)
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
    r.hal._running[1] = False
    r.ctl.poll()
    nack(r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, period_ns=25_000_000))), M.E_DAC_BUSY, value=0)


def test_a_restarted_channel_is_free_of_its_last_runs_dac_ops():
    r = Rig(configure=(1,))
    _running(r, 1)
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
    r.hal._running[1] = False
    r.ctl.poll()  # train_done; the bus still holds the change's wait
    _running(r, 1)
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(GOOD, period_ns=25_000_000)))[0] == \
        M.SET_PARAMS | M.RESPONSE


def test_a_ramp_group_that_ended_is_no_group_for_the_next_starts():
    r = Rig(configure=())
    for ch in (1, 2):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, RAMP))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b110,)))[0] == M.START | M.RESPONSE
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    assert _stops(r) == [["stop", 0b110]]
    r.hal._running[1] = r.hal._running[2] = False
    r.ctl.poll()  # both done; the bus still busy
    for ch in (1, 2):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, GOOD))[0] == M.SET_PARAMS | M.RESPONSE
        _running(r, ch)
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    assert _stops(r)[-1] == ["stop", 0b10]


# ---- STOP: the idle of a train replace()d away, stops at once beside soft stops ---------------------

SOFT44 = dict(GOOD, phase1_ns=44_000, phase2_ns=44_000, period_ns=100_000, ramp_down_pulses=3)


@pytest.mark.parametrize("first_phase,ramps", [(45_500, False), (44_000, True)])
def test_a_soft_stop_needs_the_update_idle_of_the_train_replaced_away_too(first_phase, ramps):
    r = _lax_rig()
    first = dict(SOFT44, phase1_ns=first_phase, phase2_ns=first_phase)
    if not ramps:  # too little idle for a DAC update: it has no soft stop of its own (refused otherwise)
        first["ramp_down_pulses"] = 0
    assert r.ask(M.SET_PARAMS, M.encode_params(0, first))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(SOFT44, period_ns=200_000)))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.STOP, bytes((1,)))[0] == M.STOP | M.RESPONSE
    plays = [c for c in r.hal.calls if c[0] == "dac_play"]
    if ramps:
        assert plays and _stops(r) == []
    else:
        assert not plays and _stops(r) == [["stop", 1]]


def test_a_soft_stop_of_two_channels_needs_two_updates_of_idle_in_a_replaced_train():
    r = _lax_rig()
    fits_one = dict(SOFT44, phase1_ns=45_000, phase2_ns=45_000)
    assert r.ask(M.SET_PARAMS, M.encode_params(0, fits_one))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, SOFT44))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    _running(r, 1)
    assert r.ask(M.SET_PARAMS, M.encode_params(0, SOFT44))[0] == M.SET_PARAMS | M.RESPONSE  # replaced
    assert r.ask(M.STOP, bytes((0b11,)))[0] == M.STOP | M.RESPONSE
    assert not [c for c in r.hal.calls if c[0] == "dac_play"] and _stops(r) == [["stop", 0b11]]


def test_a_soft_stop_keeps_another_channels_pending_change_guarded():
    r = Rig(configure=(0,))
    _running(r, 0)
    _soft_running(r, 1)
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
    r.hal.busy = False  # its mark is out, no pulse has it yet
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE  # the ramp-down keeps the bus busy
    nack(r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, period_ns=25_000_000))), M.E_DAC_BUSY, value=0)


def test_a_stop_with_a_busy_bus_stops_every_masked_channel_at_once():
    r = Rig(configure=(0,))
    _running(r, 0)
    _soft_running(r, 1)
    r.hal.busy = True
    assert r.ask(M.STOP, bytes((0b11,)))[0] == M.STOP | M.RESPONSE
    assert _stops(r) == [["stop", 0b11]] and not [c for c in r.hal.calls if c[0] == "dac_play"]


def test_a_second_stop_of_a_soft_stopping_channel_1_is_final():
    r = Rig(configure=())
    _soft_running(r, 1)
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    r.hal.busy = False
    r.ctl.poll()
    assert _stops(r) == [["stop", 0b10]]


# ---- START: which channels are monitored, ramp groups, a TRIGGER of partly fired ramps -------------

@pytest.mark.parametrize("hz,phase1_ns,monitored", [
    (0, 200_000, False), (1, 200_000, True), (1000, 200_000, True),
    (1000, 62_000, True), (1000, 61_992, False)])
def test_monitoring_needs_a_rate_and_a_phase_1_long_enough(hz, phase1_ns, monitored):
    from firmware import impedance

    assert impedance.MONITOR_MIN_PHASE_NS == 62_000
    hal = MonHal()
    r = Rig.__new__(Rig)
    r.hal, r.out, r.seq = hal, [], 0
    r.ctl = Controller(hal, r.out.append, monitor_max_hz=hz)
    p = dict(GOOD, phase1_ns=phase1_ns, phase2_ns=phase1_ns)
    assert r.ask(M.SET_PARAMS, M.encode_params(0, p))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    assert _status(r, 0)["impedance_ohm"] == 1000  # the start's check
    code = _code(700, _na(p))
    r.out.clear()
    assert _read(r, 0, 1, 0, code) == (_ohm(code, _na(p)) if monitored else 1000)
    assert _events(r) == [] and _status(r, 0)["state"] == "running"


def test_a_ramp_of_one_channel_makes_no_group_with_the_others():
    r = Rig(configure=(0,))
    assert r.ask(M.SET_PARAMS, M.encode_params(2, RAMP))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    _running(r, 2)
    assert r.ask(M.STOP, bytes((0b100,)))[0] == M.STOP | M.RESPONSE
    assert r.ask(M.STOP, bytes((0b001,)))[0] == M.STOP | M.RESPONSE
    assert _stops(r) == [["stop", 0b100], ["stop", 0b001]]


@pytest.mark.parametrize("k0,k1,group", [(1, 4, False), (2, 4, True), (0, 2, False)])
def test_the_channels_that_ramp_in_one_start_are_its_group(k0, k1, group):
    r = Rig(configure=())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, ramp_up_pulses=k0)))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.SET_PARAMS, M.encode_params(1, dict(GOOD, ramp_up_pulses=k1)))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b11,)))[0] == M.START | M.RESPONSE
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    assert _stops(r) == [["stop", 0b11 if group else 0b10]]


def test_constant_sequences_started_with_a_varying_one_are_not_its_group():
    r = Rig(configure=())
    _sequence(r, 0, [100, 200, 300])
    _sequence(r, 1, [400, 400, 400], amp=400)
    _sequence(r, 2, [500, 500, 500], amp=500)
    assert r.ask(M.START, bytes((0b111,)))[0] == M.START | M.RESPONSE
    assert r.ask(M.STOP, bytes((0b10,)))[0] == M.STOP | M.RESPONSE
    assert _stops(r) == [["stop", 0b10]]


def test_a_soft_start_keeps_another_channels_pending_change_guarded():
    r = Rig(configure=(1,))
    _running(r, 1)
    assert r.ask(M.SET_AMPLITUDE, M.encode_set_amplitude(1, 1500))[0] == M.SET_AMPLITUDE | M.RESPONSE
    r.hal.busy = False  # its mark is out, no pulse has it yet
    assert r.ask(M.SET_PARAMS, M.encode_params(0, dict(GOOD, ramp_up_pulses=200)))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    nack(r.ask(M.SET_PARAMS, M.encode_params(1, dict(GOOD, period_ns=25_000_000))), M.E_DAC_BUSY, value=1)


def test_a_trigger_of_armed_ramps_one_of_which_fired_starts_the_other_with_its_own_ramp():
    from firmware import pulse_engine as E

    class HalfFired(ZHal):
        def disarm(self, mask):
            self.calls.append(["disarm", mask])
            return mask & 1  # channel 0's edge came first

    r = Rig(configure=(), hal=HalfFired())
    p = dict(RAMP, trigger=P.TRIGGER_EXT1)
    for ch in (0, 1):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, p))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b11,)))[0] == M.START | M.RESPONSE
    r.hal.busy = False
    n = len(r.hal.ops)
    assert r.ask(M.TRIGGER, bytes((0b11,)))[0] == M.TRIGGER | M.RESPONSE
    trains = [E.build_train(p)] * 2
    w = E.ramp_up_writer(trains, [1], [0, 0])
    first, chunk = E.start_ops(trains, [1]), w.chunk(w.lookahead())
    assert r.started()[-1] == ["start", 0b10, [0, 0, 0, 0], len(first), len(chunk)]
    assert r.hal.ops[n:] == first + chunk


def test_soft_starts_of_one_pulse_trains_queue_no_ramp_and_make_no_group():
    p = dict(GOOD, ramp_up_pulses=4, train_duration_ns=50_000_000)  # one pulse: no boundary to ramp at
    r = Rig(configure=())
    for ch in (0, 1):
        assert r.ask(M.SET_PARAMS, M.encode_params(ch, p))[0] == M.SET_PARAMS | M.RESPONSE
    assert r.ask(M.START, bytes((0b11,)))[0] == M.START | M.RESPONSE
    assert r.started()[-1][-1] == 0  # an empty first chunk
    assert r.ask(M.STOP, bytes((0b01,)))[0] == M.STOP | M.RESPONSE
    assert _stops(r) == [["stop", 0b01]]


class RaceHal(MonHal):
    """MonHal on which ``race`` pulses end while a poll runs, right after it has taken the readings."""

    def __init__(self):
        super().__init__()
        self.race = 0

    def phase1_samples(self, ch, min_interval_us):
        out = super().phase1_samples(ch, min_interval_us)
        self.played[ch] += self.race
        return out


@pytest.mark.parametrize("race", [1, 4])
def test_a_soft_starts_per_pulse_current_outlives_pulses_ending_during_a_poll(race):
    """The pulse in progress when a poll takes the readings delivers its own reading at the next poll,
    however many pulses (up to the margin of two) end meanwhile: it is still read at its current."""
    from firmware import pulse_engine as E

    p = dict(GOOD, ramp_up_pulses=8)
    train = E.build_train(p)
    r = Rig(configure=(), hal=RaceHal())
    assert r.ask(M.SET_PARAMS, M.encode_params(0, p))[0] == M.SET_PARAMS | M.RESPONSE
    _running(r, 0)
    r.hal.played[0] = 6  # pulse 6 (of the 8 ramp pulses) in progress, its reading not taken yet
    r.hal.race = race
    r.ctl.poll()
    r.hal.race = 0
    now = 6 + race
    na6 = _phase1_na(p, E.pulse_codes(train, 6))
    assert na6 != _na(p)
    code = _code(300, na6)
    back = _rest_us(p) + (now - 1 - 6) * p["period_ns"] // 1000
    assert _read(r, 0, now, back, code) == _ohm(code, na6)
