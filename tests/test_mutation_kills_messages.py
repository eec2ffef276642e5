"""protocol/messages.py: exact wire bytes, defaults and edges of the body codecs (mutation testing,
issue 15).

tests/test_protocol.py round-trips the main codecs (encode then decode), which a change made to both
sides alike, or to an edge its random draws rarely hit, can pass. These pin the bytes on the wire
(little-endian, field order), the defaults, the clamps and masks, every length check and its message,
and the codecs test_protocol.py does not touch (SET_AMPLITUDE, SAVE/LOAD, EVENT_LOG, crash values).
"""

import struct

import pytest

from protocol import messages as M
from protocol import params as P
from protocol.framing import PROTOCOL_VERSION

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


# ------------------------------------------------------------------------------------------ NACK
def nack_fields(body):
    return struct.unpack("<BBBqq", body)


def test_nack_defaults_no_field_zero_value_limit_and_le():
    body = M.encode_nack(M.E_BAD_STATE)
    assert body == bytes((M.E_BAD_STATE, P.NO_FIELD, 0)) + bytes(16)
    assert M.decode_nack(body) == {"code": M.E_BAD_STATE, "error": M.ERROR_NAMES[M.E_BAD_STATE],
                                   "field": None, "relation": "<=", "value": 0, "limit": 0}


def test_nack_bytes_are_little_endian_in_field_order():
    body = M.encode_nack(M.E_OUT_OF_RANGE, 3, 0x0102030405060708, -2, ">=")
    assert body == (bytes((4, 3, 1)) + bytes((8, 7, 6, 5, 4, 3, 2, 1)) + (b"\xfe" + b"\xff" * 7))
    assert nack_fields(body) == (M.E_OUT_OF_RANGE, 3, 1, 0x0102030405060708, -2)


@pytest.mark.parametrize("value, wire", [
    (I64_MIN - 1, I64_MIN), (I64_MIN, I64_MIN), (I64_MIN + 1, I64_MIN + 1), (-1, -1), (0, 0),
    (I64_MAX - 1, I64_MAX - 1), (I64_MAX, I64_MAX), (I64_MAX + 1, I64_MAX), (1 << 64, I64_MAX),
    (-(1 << 70), I64_MIN)])
def test_nack_value_and_limit_clamped_to_int64(value, wire):
    assert nack_fields(M.encode_nack(1, 0, value, value))[3:] == (wire, wire)


@pytest.mark.parametrize("value", [True, False, 1.0, "5", None, 2.5])
def test_nack_non_integer_value_travels_as_zero(value):
    """bool is an int subclass but not a parameter value: True must not travel as 1."""
    assert nack_fields(M.encode_nack(1, 0, value, value))[3:] == (0, 0)


def test_nack_relations_travel_as_their_index():
    for i, rel in enumerate(P.RELATIONS):
        body = M.encode_nack(1, 0, 0, 0, rel)
        assert body[2] == i and M.decode_nack(body)["relation"] == rel


def test_decode_nack_unknown_relation_and_code():
    n = len(P.RELATIONS)
    body = struct.pack("<BBBqq", 200, P.NO_FIELD, n, 7, 9)  # first index past the table
    d = M.decode_nack(body)
    assert d == {"code": 200, "error": "error 200", "field": None, "relation": "?", "value": 7, "limit": 9}
    assert M.decode_nack(struct.pack("<BBBqq", 1, 0, n - 1, 0, 0))["relation"] == P.RELATIONS[n - 1]
    assert M.decode_nack(struct.pack("<BBBqq", 1, 0, 255, 0, 0))["relation"] == "?"


def test_decode_nack_names_field_zero_and_the_last_field():
    assert M.decode_nack(M.encode_nack(1, 0))["field"] == P.NAMES[0]
    last = len(P.NAMES) - 1
    assert M.decode_nack(M.encode_nack(1, last))["field"] == P.NAMES[last]


@pytest.mark.parametrize("field", ["phase1_ns", "charge_per_phase_nc", "pulse_length_ns", "channel", "deadman_ms"])
def test_violation_nack_carries_field_value_limit_relation(field):
    v = P.Violation(field, 1234, 567, ">=")
    body = M.encode_violation_nack(v)
    assert nack_fields(body) == (M.E_OUT_OF_RANGE, P.field_id(field), P.RELATIONS.index(">="), 1234, 567)
    assert M.decode_nack(body) == {"code": M.E_OUT_OF_RANGE, "error": M.ERROR_NAMES[M.E_OUT_OF_RANGE],
                                   "field": field, "relation": ">=", "value": 1234, "limit": 567}


def test_violation_nack_unknown_field_is_no_field():
    body = M.encode_violation_nack(P.Violation("not_a_field", 3, 4, "integer"))
    assert nack_fields(body) == (M.E_OUT_OF_RANGE, P.NO_FIELD, P.RELATIONS.index("integer"), 3, 4)


# ----------------------------------------------------------------------------------------- EVENT
def test_event_sizes():
    assert M.EVENT_SIZE == 14 and M.EVENT_MAX_SIZE == 18
    assert M.event_size(M.EV_AMPLITUDE) == 18
    for kind in (0, M.EV_BOOT, M.EV_TRAIN_DONE, M.EV_CRASH, 200):
        assert M.event_size(kind) == 14


def test_event_bytes_little_endian_and_no_extra_for_plain_kinds():
    body = M.encode_event(M.EV_TRAIN_DONE, 1, 0x0102030405060708, -2, extra=77)
    assert body == bytes((2, 1, 8, 7, 6, 5, 4, 3, 2, 1)) + b"\xfe\xff\xff\xff"


def test_amplitude_event_bytes_and_from_pulse():
    body = M.encode_amplitude_event(3, 1000, 0x01020304, 250)
    assert body == bytes((M.EV_AMPLITUDE, 3)) + struct.pack("<Q", 1000) + struct.pack("<i", 250) + \
        bytes((4, 3, 2, 1))
    assert M.decode_event(body) == {"kind": "amplitude", "channel": 3, "time_us": 1000, "value": 250,
                                    "amplitude_ua": 250, "from_pulse": 0x01020304}


@pytest.mark.parametrize("extra, wire", [(None, 0), (0, 0), (5, 5), ((1 << 32) - 1, (1 << 32) - 1),
                                         (1 << 32, 0), ((1 << 32) + 7, 7), (-1, (1 << 32) - 1)])
def test_amplitude_event_extra_masked_to_u32(extra, wire):
    body = M.encode_event(M.EV_AMPLITUDE, 0, 0, 0, extra)
    assert len(body) == 18 and struct.unpack("<I", body[14:])[0] == wire
    assert M.decode_event(body)["from_pulse"] == wire


def test_decode_event_unknown_kind_keeps_its_number():
    assert M.decode_event(M.encode_event(99, 2, 3, 4)) == {"kind": "99", "channel": 2, "time_us": 3, "value": 4}


@pytest.mark.parametrize("body", [b"", bytes(13), bytes(15), bytes((M.EV_AMPLITUDE,)) + bytes(13),
                                  bytes((M.EV_AMPLITUDE,)) + bytes(16), bytes((M.EV_AMPLITUDE,)) + bytes(18),
                                  bytes((M.EV_BOOT,)) + bytes(17)])
def test_decode_event_wrong_length_raises(body):
    with pytest.raises(ValueError, match="^bad event length$"):
        M.decode_event(body)


# ---------------------------------------------------------------------------------- SET_AMPLITUDE
def test_set_amplitude_request_bytes_and_length_check():
    body = M.encode_set_amplitude(2, 0x01020304)
    assert body == bytes((2, 4, 3, 2, 1))
    assert M.decode_set_amplitude(body) == (2, 0x01020304)
    assert M.decode_set_amplitude(body[:-1]) is None
    assert M.decode_set_amplitude(body + b"\x00") is None
    assert M.decode_set_amplitude(b"") is None


def test_amplitude_response_bytes_and_names():
    body = M.encode_amplitude_response(1, 0x01020304, 0x05060708, 0x090A, 0x0B0C)
    assert body == bytes((1, 4, 3, 2, 1, 8, 7, 6, 5, 0x0A, 0x09, 0x0C, 0x0B))
    assert M.decode_amplitude_response(body) == {"channel": 1, "amplitude_ua": 0x01020304,
                                                 "amplitude2_ua": 0x05060708, "dac_a": 0x090A, "dac_b": 0x0B0C}


# ----------------------------------------------------------------------------------------- HELLO
def test_hello_bytes_layout():
    limits = {n: i + 1 for i, n in enumerate(P.LIMIT_NAMES)}
    body = M.encode_hello((7, 8, 9), 2, bytes(range(10, 18)), M.RESET_WATCHDOG, limits)
    head = bytes((7, 8, 9, PROTOCOL_VERSION, 2)) + bytes(range(10, 18)) + bytes((M.RESET_WATCHDOG,))
    assert body == head + b"".join(struct.pack("<Q", i + 1) for i in range(len(P.LIMIT_NAMES)))
    d = M.decode_hello(body)
    assert d == {"firmware_version": "7.8.9", "protocol_version": PROTOCOL_VERSION, "channels": 2,
                 "board_id": "0a0b0c0d0e0f1011", "reset_reason": M.RESET_WATCHDOG, "limits": limits}


def test_decode_hello_reads_the_protocol_version_from_the_body():
    limits = dict.fromkeys(P.LIMIT_NAMES, 0)
    body = bytearray(M.encode_hello((1, 2, 3), 1, bytes(8), 0, limits))
    body[3] = 0xEE
    assert M.decode_hello(bytes(body))["protocol_version"] == 0xEE


# ---------------------------------------------------------------------------------------- PARAMS
def params_sample():
    p = dict(P.DEFAULTS)
    for i, (name, fmt, _) in enumerate(P.FIELDS):
        p[name] = (i * 37 + 11) % 251 + 1  # distinct small values, each fits every field width
    return p


def realised_sample():
    return {n: i + 3 for i, n in enumerate(M.REALISED_NAMES)}


def test_params_request_bytes_channel_first():
    p = params_sample()
    body = M.encode_params(5, p)
    assert body == bytes((5,)) + P.pack(p)
    assert len(body) == 1 + P.SIZE
    ch, got = M.decode_params_request(body)
    assert (ch, got) == (5, p)


def test_params_response_layout_and_decode():
    p, r = params_sample(), realised_sample()
    body = M.encode_params_response(4, p, r)
    tail = struct.pack(M._REALISED, *[r[n] for n in M.REALISED_NAMES])
    assert body == bytes((4,)) + P.pack(p) + tail
    assert M.decode_params_response(body) == {"channel": 4, "params": p, "realised": r}


# ---------------------------------------------------------------------------------------- STATUS
def test_status_bytes_layout():
    counters = {n: 0x100 + i for i, n in enumerate(M.COUNTER_NAMES)}
    chans = [(M.ST_RUNNING, M.EV_FAULT_OPEN, 1, 0x01020304, 0x0A0B0C0D), (M.ST_FAULT, 0, 0, 5, M.OHM_UNKNOWN)]
    body = M.encode_status(0x11223344, chans, counters)
    expect = bytes((0x44, 0x33, 0x22, 0x11, 2))
    expect += bytes((2, 4, 1, 4, 3, 2, 1, 0x0D, 0x0C, 0x0B, 0x0A))
    expect += bytes((3, 0, 0, 5, 0, 0, 0)) + b"\xff" * 4
    expect += b"".join(struct.pack("<I", 0x100 + i) for i in range(len(M.COUNTER_NAMES)))
    assert body == expect
    d = M.decode_status(body)
    assert d["uptime_ms"] == 0x11223344 and d["counters"] == counters
    assert d["channels"] == [
        {"channel": 0, "state": "running", "fault": "open", "configured": True, "pulses": 0x01020304,
         "impedance_ohm": 0x0A0B0C0D},
        {"channel": 1, "state": "fault", "fault": "none", "configured": False, "pulses": 5,
         "impedance_ohm": None}]


def test_status_with_no_channels_and_three():
    counters = dict.fromkeys(M.COUNTER_NAMES, 9)
    d = M.decode_status(M.encode_status(1, [], counters))
    assert d == {"uptime_ms": 1, "channels": [], "counters": counters}
    chans = [(i % 4, 0, 1, 10 + i, 100 + i) for i in range(3)]
    d = M.decode_status(M.encode_status(2, chans, counters))
    assert [c["pulses"] for c in d["channels"]] == [10, 11, 12]
    assert [c["impedance_ohm"] for c in d["channels"]] == [100, 101, 102]
    assert [c["channel"] for c in d["channels"]] == [0, 1, 2]


def test_status_ohms_one_below_unknown_is_a_reading():
    counters = dict.fromkeys(M.COUNTER_NAMES, 0)
    d = M.decode_status(M.encode_status(0, [(0, 0, 0, 0, M.OHM_UNKNOWN - 1)], counters))
    assert d["channels"][0]["impedance_ohm"] == M.OHM_UNKNOWN - 1


# ------------------------------------------------------------------------------------- IMPEDANCE
def test_impedance_bytes_layout_and_decode():
    readings = [(0, 0x01020304, M.Z_OK), (1, M.OHM_UNKNOWN, M.Z_UNKNOWN), (3, 0, M.Z_SHORT)]
    body = M.encode_impedance(readings)
    assert body == bytes((3, 0, 4, 3, 2, 1, 0, 1, 255, 255, 255, 255, 4, 3, 0, 0, 0, 0, 3))
    assert M.decode_impedance(body) == [
        {"channel": 0, "ohms": 0x01020304, "class": "ok"},
        {"channel": 1, "ohms": None, "class": "unknown"},
        {"channel": 3, "ohms": 0, "class": "short"}]
    assert M.encode_impedance([]) == b"\x00" and M.decode_impedance(b"\x00") == []


# ------------------------------------------------------------------------------------ SAVE / LOAD
def test_slot_request_and_save_response():
    assert M.encode_slot_request(1, 7) == b"\x01\x07"
    assert M.decode_save_response(b"\x05\x34\x12") == {"slot": 5, "crc": 0x1234}
    # unsigned: a channel/slot byte >= 128 and a CRC >= 0x8000 (half of all CRCs)
    assert M.encode_slot_request(200, 255) == b"\xc8\xff"
    assert M.decode_save_response(b"\xff\xef\xbe") == {"slot": 255, "crc": 0xBEEF}


# ------------------------------------------------------------------------------------- EVENT_LOG
def test_event_log_bytes_and_seq_mask():
    a = M.encode_event(M.EV_BOOT, 0, 10, 1)
    b = M.encode_amplitude_event(1, 20, 3, 400)
    body = M.encode_event_log([(0x10203, a), (0xFFFF, b)])
    assert body == bytes((2, 0x03, 0x02)) + a + b"\xff\xff" + b
    log = M.decode_event_log(body)
    assert [e["seq"] for e in log] == [0x0203, 0xFFFF]
    assert log[0] == dict(M.decode_event(a), seq=0x0203)
    assert log[1] == dict(M.decode_event(b), seq=0xFFFF)
    assert M.encode_event_log([]) == b"\x00" and M.decode_event_log(b"\x00") == []


def test_event_log_of_max_entries_mixed_sizes():
    entries = [(i, M.encode_amplitude_event(i, i, i, i) if i % 2 else M.encode_event(M.EV_TRIGGER_SEEN, i, i, i))
               for i in range(M.EVENT_LOG_MAX)]
    log = M.decode_event_log(M.encode_event_log(entries))
    assert [e["seq"] for e in log] == list(range(M.EVENT_LOG_MAX))
    assert [e["channel"] for e in log] == list(range(M.EVENT_LOG_MAX))
    assert [e["kind"] for e in log] == ["amplitude" if i % 2 else "trigger_seen" for i in range(M.EVENT_LOG_MAX)]


def _log_bad(body):
    with pytest.raises(ValueError, match="^bad event log length$"):
        M.decode_event_log(body)


def test_event_log_truncations_raise_value_error():
    a = M.encode_event(M.EV_BOOT, 0, 10, 1)
    b = M.encode_amplitude_event(1, 20, 3, 400)
    good = M.encode_event_log([(1, a), (2, b)])
    for cut in range(1, len(good)):
        _log_bad(good[:cut])  # every cut: count says 2, the entries are short (never an IndexError)
    _log_bad(good + b"\x00")  # trailing byte
    _log_bad(bytes((1, 1, 0)))  # seq only, no kind byte
    _log_bad(bytes((1, 1)))  # half a seq
    _log_bad(bytes((1,)))  # count 1, nothing
    _log_bad(bytes((0, 0)))  # count 0 but a byte follows


def test_event_log_entry_of_exactly_three_bytes_left():
    """Three bytes left (seq + kind): the kind says how long the body is, and it is longer."""
    _log_bad(bytes((1, 5, 0, M.EV_BOOT)))
    _log_bad(bytes((1, 5, 0, M.EV_AMPLITUDE)) + bytes(13))  # a plain event's length under the amplitude kind


# ---------------------------------------------------------------------------------------- crashes
def test_crash_value_kind_and_where():
    assert M.crash_value("MemoryError", M.CRASH_POLL) == 1 | 0xF1 << 8
    assert M.crash_value("NameError", M.SET_PARAMS) == (len(M.CRASH_KINDS) - 1) | M.SET_PARAMS << 8
    assert M.crash_value("other", 0) == 0
    assert M.crash_value("SomethingElse", M.CRASH_LINK) == 0xF000
    assert M.crash_value("ValueError", 0) == 2


def test_decode_crash_round_trips_every_kind_and_place():
    for i, name in enumerate(M.CRASH_KINDS):
        assert M.decode_crash(M.crash_value(name, M.CRASH_LOOP)) == {"exception": name, "where": "loop"}
    assert M.decode_crash(M.crash_value("KeyError", M.CRASH_LINK))["where"] == "link"
    assert M.decode_crash(M.crash_value("KeyError", M.CRASH_POLL))["where"] == "poll"
    for t, name in M.REQUEST_NAMES.items():
        assert M.decode_crash(M.crash_value("TypeError", t)) == {"exception": "TypeError", "where": name}


def test_decode_crash_unknown_kind_and_place():
    n = len(M.CRASH_KINDS)
    assert M.decode_crash(n) == {"exception": "other", "where": "0x00"}
    assert M.decode_crash(n - 1)["exception"] == M.CRASH_KINDS[n - 1]
    assert M.decode_crash(0xFF | 0x7E << 8) == {"exception": "other", "where": "0x7E"}
    assert M.decode_crash(0xAB << 8 | 3)["where"] == "0xAB"
    # only the low 16 bits count: higher bits of the i32 value are ignored
    assert M.decode_crash(0x12F102) == {"exception": "ValueError", "where": "poll"}
    assert M.decode_crash(M.REPL << 8)["where"] == "repl"


@pytest.mark.parametrize("onsets, amps", [([], []), ([0, 1], [5]), ([0], [5, 6]),
                                          (list(range(M.SEQUENCE_CHUNK + 1)), [5] * (M.SEQUENCE_CHUNK + 1))])
def test_set_sequence_chunk_refused_with_its_rule(onsets, amps):
    """The host's encoder says what a SET_SEQUENCE chunk must be (the client splits uploads by it)."""
    with pytest.raises(ValueError) as e:
        M.encode_set_sequence(0, 0, onsets, amps)
    assert str(e.value) == "1..20 pulses, as many onsets as amplitudes"
