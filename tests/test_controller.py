"""The firmware controller under hostile input (SPEC §7): random and mutated byte streams, valid frames
with hostile bodies, foreign versions, unknown types and duplicates. Invariants: it never raises, an
invalid frame changes nothing, every dropped frame is counted, a duplicate is answered from the cache
without executing twice."""

from __future__ import annotations

import copy
import struct
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.controller import Controller
from firmware.limits import LIMITS
from protocol import messages as M
from protocol import params as P
from protocol.framing import PROTOCOL_VERSION, FrameDecoder, encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from link_targets import GOOD, FakeHal  # noqa: E402  (the deterministic HAL the fuzzers use too)


def make():
    out = []
    hal = FakeHal()
    return Controller(hal, out.append), hal, out


def snapshot(ctl, hal):
    """Everything a request could change: parameters, trains, states, faults and hardware actions."""
    return (copy.deepcopy(ctl.params), [id(t) for t in ctl.trains], list(ctl.state), list(ctl.fault),
            [c for c in hal.calls if c[0] != "impedance"])


def frame(msg_type, seq, body=b"", version=PROTOCOL_VERSION):
    return encode_frame(msg_type, seq, body, version)


def configured():
    ctl, hal, out = make()
    ctl.receive(frame(M.SET_PARAMS, 1, M.encode_params(0, GOOD)))
    assert out[-1][:0] == b"" and ctl.params[0] == GOOD
    out.clear()
    return ctl, hal, out


def replies(out):
    d = FrameDecoder()
    return [f for chunk in out for f in d.feed(chunk)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_and_change_nothing_without_a_valid_frame(data):
    ctl, hal, out = configured()
    before = snapshot(ctl, hal)
    reference = FrameDecoder()
    valid = reference.feed(data + b"\x00")
    ctl.receive(data + b"\x00")
    if not valid:
        assert snapshot(ctl, hal) == before
        assert out == []
    d = ctl.decoder
    assert d.frames_ok == 1 + len(valid)  # the SET_PARAMS of configured() plus what was in the data
    assert d.crc_errors == reference.crc_errors and d.frames_dropped == reference.frames_dropped


@st.composite
def mutated_frames(draw):
    seq = draw(st.integers(0, 0xFFFF))
    raw = bytearray(frame(M.START, seq, bytes((1,))))
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    body = raw[:-1]  # keep the delimiter separate
    if kind == "flip":
        i = draw(st.integers(0, len(body) - 1))
        body[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif kind == "insert":
        i = draw(st.integers(0, len(body)))
        body[i:i] = bytes((draw(st.integers(1, 255)),))
    else:
        i = draw(st.integers(0, len(body) - 1))
        del body[i]
    return bytes(body) + b"\x00", seq


@settings(max_examples=400, deadline=None)
@given(mutated_frames())
def test_a_mutated_start_is_dropped_counted_and_starts_nothing(case):
    data, seq = case
    ctl, hal, out = configured()
    before = snapshot(ctl, hal)
    ctl.receive(data)
    reference = FrameDecoder()
    survivors = reference.feed(data)
    if survivors and survivors[0].type == M.START and survivors[0].body == b"\x01":
        return  # the mutation was undone by COBS/CRC equivalence: a genuine START (never seen in practice)
    assert [c for c in hal.calls if c[0] == "start"] == []
    if not survivors:
        assert snapshot(ctl, hal) == before and out == []
        if data.strip(b"\x00"):  # a bare delimiter is legal padding, not a bad frame
            assert ctl.decoder.crc_errors + ctl.decoder.frames_dropped >= 1


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 0x7F), st.binary(max_size=120), st.integers(0, 0xFFFF))
def test_valid_frames_with_hostile_bodies_are_answered_and_a_nack_changes_nothing(msg_type, body, seq):
    ctl, hal, out = configured()
    before = snapshot(ctl, hal)
    ctl.receive(frame(msg_type, seq, body))
    (reply,) = replies(out)
    assert reply.seq == seq
    if reply.type == M.NACK:
        assert snapshot(ctl, hal) == before
        nack = M.decode_nack(reply.body)
        assert nack["code"] in M.ERROR_NAMES
    else:
        assert reply.type == msg_type | M.RESPONSE


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(P.FIELD_NAMES), st.integers(0, 2**32 - 1)), st.integers(0, 3))
def test_set_params_either_applies_a_safe_set_or_refuses_naming_the_field(changes, channel):
    params = dict(GOOD)
    params.update({k: v & ((1 << (8 * struct.calcsize(f))) - 1) for k, v in changes.items()
                   for name, f, _ in P.FIELDS if name == k})
    ctl, hal, out = configured()
    before = snapshot(ctl, hal)
    ctl.receive(frame(M.SET_PARAMS, 7, M.encode_params(channel, params)))
    (reply,) = replies(out)
    if reply.type == M.NACK:
        nack = M.decode_nack(reply.body)
        assert nack["field"] in P.NAMES
        assert snapshot(ctl, hal) == before
    else:
        assert P.validate(params, ctl.limits) is None
        assert ctl.params[channel] == params


def test_foreign_version_and_unknown_type_are_nacked_with_their_code():
    ctl, hal, out = configured()
    before = snapshot(ctl, hal)
    ctl.receive(frame(M.START, 5, b"\x01", version=PROTOCOL_VERSION + 1) + frame(0x55, 6))
    a, b = replies(out)
    assert M.decode_nack(a.body)["code"] == M.E_BAD_VERSION and a.seq == 5
    assert M.decode_nack(b.body)["code"] == M.E_UNKNOWN_TYPE and b.seq == 6
    assert snapshot(ctl, hal) == before
    assert ctl.nacks == 2


def test_a_duplicate_request_is_answered_from_the_cache_and_executed_once():
    ctl, hal, out = configured()
    start = frame(M.START, 42, b"\x01")
    ctl.receive(start)
    ctl.receive(start)
    first, second = out
    assert first == second
    assert [c for c in hal.calls if c[0] == "start"] == [["start", 1, [0, 0, 0, 0]]]
    assert ctl.duplicates == 1
    # the same seq with another body is a new request, not a duplicate
    ctl.receive(frame(M.STOP, 42, b"\x01"))
    assert ["stop", 1] in hal.calls


def test_hello_always_executes_so_a_new_connection_is_never_served_a_stale_answer():
    ctl, hal, out = configured()
    hello = frame(M.HELLO, 9)
    ctl.receive(hello)
    ctl.receive(hello)
    assert ctl.duplicates == 0 and len(out) == 2


def test_garbage_between_frames_does_not_hide_the_frames():
    ctl, hal, out = configured()
    ctl.receive(b"\xff\xfe garbage \x13\x00\x00" + frame(M.STATUS, 3) + b"\x01\x02\x03\x00" + frame(M.STATUS, 4))
    assert [f.seq for f in replies(out)] == [3, 4]
    assert ctl.decoder.frames_dropped + ctl.decoder.crc_errors == 2
    # bytes glued to a frame's start (no delimiter between) corrupt that one frame only
    out.clear()
    ctl.receive(b"\x05\x06" + frame(M.STATUS, 5) + frame(M.STATUS, 6))
    assert [f.seq for f in replies(out)] == [6]


def test_a_refused_software_trigger_leaves_an_armed_channel_armed():
    ctl, hal, out = make()
    ext = dict(GOOD, trigger=P.TRIGGER_EXT1)
    ctl.receive(frame(M.SET_PARAMS, 1, M.encode_params(0, ext)) + frame(M.START, 2, b"\x01"))
    assert ctl.state[0] == M.ST_ARMED
    before = snapshot(ctl, hal)
    ctl.receive(frame(M.TRIGGER, 3, b"\x03"))  # channel 1 has no parameters: the whole request is refused
    nack = M.decode_nack(replies(out)[-1].body)
    assert nack["code"] == M.E_NOT_CONFIGURED
    assert snapshot(ctl, hal) == before and ctl.state[0] == M.ST_ARMED
    ctl.receive(frame(M.TRIGGER, 4, b"\x01"))  # channel 0 alone: fired now, from the software entry
    assert replies(out)[-1].type == M.TRIGGER | M.RESPONSE
    assert ctl.state[0] == M.ST_RUNNING and hal.calls[-1] == ["start", 1, [0, 0, 0, 0]]


_US = 1000


@st.composite
def corner_params(draw):
    """Parameter sets near the corners where the engine and the DAC round: tiny amplitudes with very
    asymmetric phases (phase-2 DAC code beyond full scale), periods within ticks of the pulse + dead
    time (rounding to the tick eats the idle validate() allowed)."""
    ph1 = draw(st.integers(40, 2000 * _US))
    ph2 = draw(st.one_of(st.integers(40, 200), st.integers(40, 2000 * _US)))
    p = P.complete(dict(phase1_ns=ph1, phase2_ns=ph2, interphase_ns=draw(st.integers(0, 1200)),
                        amplitude_ua=draw(st.one_of(st.integers(1, 5), st.integers(1, 10000))),
                        electrode_area_um2=10**8))
    length = P.pulse_length_ns(p, LIMITS["min_dead_time_ns"])
    p["period_ns"] = max(draw(st.integers(length, length + 2000)), 2 * (ph1 + ph2), LIMITS["min_period_ns"])
    return p


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corner_params())
def test_the_host_check_refuses_exactly_what_the_firmware_refuses(p):
    """A file the host's check passes is never refused by the firmware, and the other way round
    (the host used to accept 1 µA sets with a phase-2 DAC code beyond full scale, and periods that
    rounding to the tick left one tick short of the dead time)."""
    from picostim import paramfile

    ctl, hal, out = make()
    ctl.receive(frame(M.SET_PARAMS, 1, M.encode_params(0, p)))
    (reply,) = replies(out)
    try:
        paramfile.check(p, LIMITS)
        host_ok = True
    except paramfile.ParamLimitError as e:
        host_ok = False
        assert reply.type == M.NACK and M.decode_nack(reply.body)["value"] == e.violation.value
    assert (reply.type != M.NACK) == host_ok, (reply, M.decode_nack(reply.body) if reply.type == M.NACK else None)
