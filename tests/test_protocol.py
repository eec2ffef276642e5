"""Property tests of protocol/: CRC, COBS, framing, the streaming decoder and the message codecs.

The decoder is checked against an independent reference model (a straightforward COBS decoder and
crcmod written here), segment by segment: every valid frame after a delimiter is recovered, nothing
raises, and ``frames_ok + crc_errors + frames_dropped`` accounts for every non-empty segment.
"""

import binascii
import random
import struct
import sys

import crcmod
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.limits import LIMITS
from protocol import cobs, framing
from protocol import messages as M
from protocol import params as P
from protocol.crc16 import TABLE, crc16

CRCMOD = crcmod.predefined.mkCrcFun("crc-ccitt-false")
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------- CRC
def test_crc_check_value():
    assert crc16(b"123456789") == 0x29B1
    assert CRCMOD(b"123456789") == 0x29B1
    assert binascii.crc_hqx(b"123456789", 0xFFFF) == 0x29B1
    assert crc16(b"") == 0xFFFF
    assert len(TABLE) == 256 and all(0 <= t <= 0xFFFF for t in TABLE)


def test_crcmod_uses_c_extension():
    # SPEC §7: the host CRC is crcmod's C extension.
    assert sys.modules["crcmod.crcmod"]._usingExtension
    assert framing.crc16 is not crc16  # framing picked crcmod on CPython


@FAST
@given(st.binary(max_size=600))
def test_crc_table_equals_crcmod_and_binascii(data):
    expected = CRCMOD(data)
    assert crc16(data) == expected
    assert binascii.crc_hqx(data, 0xFFFF) == expected
    assert framing.crc16(data) == expected


@FAST
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc_continuation(a, b):
    assert crc16(b, crc16(a)) == crc16(a + b)


def test_crc_large_random():
    rng = random.Random(1)
    for n in (1, 255, 256, 4096, 65537):
        data = rng.randbytes(n)
        assert crc16(data) == CRCMOD(data) == binascii.crc_hqx(data, 0xFFFF)


# --------------------------------------------------------------------------------------- COBS
def ref_cobs_decode(enc):
    """Textbook COBS decoder, written independently of protocol.cobs."""
    out = bytearray()
    i = 0
    while i < len(enc):
        code = enc[i]
        if code == 0:
            return None
        block = enc[i + 1:i + code]
        if len(block) != code - 1 or 0 in block:
            return None
        out += block
        i += code
        if code != 0xFF and i < len(enc):
            out.append(0)
    return bytes(out)


cobs_data = st.one_of(
    st.binary(max_size=1200),
    st.lists(st.sampled_from([0, 1, 0xFF]), max_size=600).map(bytes),
    st.integers(0, 1100).map(lambda n: b"\x01" * n),  # long zero-free runs (the 0xFF code path)
    st.tuples(st.integers(0, 600), st.integers(0, 3)).map(lambda t: b"\x05" * t[0] + b"\x00" * t[1]),
)


@FAST
@given(cobs_data)
def test_cobs_round_trip_no_zero(data):
    enc = cobs.encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert cobs.decode(enc) == data
    assert ref_cobs_decode(enc) == data


@pytest.mark.parametrize("n", [0, 1, 253, 254, 255, 507, 508, 509, 1000])
def test_cobs_block_boundaries(n):
    for data in (b"\x11" * n, b"\x11" * n + b"\x00", b"\x00" + b"\x11" * n, b"\x00" * n):
        enc = cobs.encode(data)
        assert 0 not in enc and cobs.decode(enc) == data


@FAST
@given(st.binary(max_size=400))
def test_cobs_decode_garbage_never_raises(data):
    got = cobs.decode(data)
    assert got == ref_cobs_decode(data)


# ------------------------------------------------------------------------------------ framing
frame_args = st.tuples(st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=framing.MAX_BODY),
                       st.integers(0, 255))


@FAST
@given(frame_args)
def test_frame_round_trip(args):
    msg_type, seq, body, version = args
    wire = framing.encode_frame(msg_type, seq, body, version)
    assert wire.endswith(b"\x00") and wire.count(0) == 1
    assert len(wire) - 1 <= framing.MAX_ENCODED
    payload = ref_cobs_decode(wire[:-1])
    assert payload[:4] == struct.pack("<BBH", version, msg_type, seq)
    assert payload[4:-2] == body
    assert struct.unpack(">H", payload[-2:])[0] == CRCMOD(payload[:-2])
    dec = framing.FrameDecoder()
    (f,) = dec.feed(wire)
    assert (f.version, f.type, f.seq, f.body) == (version, msg_type, seq, body)
    assert (dec.frames_ok, dec.crc_errors, dec.frames_dropped, dec.bytes_discarded) == (1, 0, 0, 0)


def test_encode_frame_refuses_oversize_body():
    framing.encode_frame(1, 0, b"x" * framing.MAX_BODY)
    with pytest.raises(ValueError):
        framing.encode_frame(1, 0, b"x" * (framing.MAX_BODY + 1))


def test_seq_is_masked_to_16_bits():
    (f,) = framing.FrameDecoder().feed(framing.encode_frame(1, 0x12345))
    assert f.seq == 0x2345


def classify(segment):
    """Reference decision for one delimited segment: ('ok', frame tuple) | ('crc', None) | ('drop', None)."""
    if len(segment) > framing.MAX_ENCODED:
        return "drop", None
    payload = ref_cobs_decode(segment)
    if payload is None or len(payload) < 6 or len(payload) > framing.MAX_PAYLOAD:
        return "drop", None
    if CRCMOD(payload[:-2]) != struct.unpack(">H", payload[-2:])[0]:
        return "crc", None
    version, msg_type, seq = struct.unpack("<BBH", payload[:4])
    return "ok", (version, msg_type, seq, payload[4:-2])


def expected_from_stream(stream):
    """What a correct decoder must report for ``stream`` (only delimited segments count)."""
    segments = stream.split(b"\x00")[:-1]  # the tail after the last 0x00 is still pending
    frames, counts, discarded = [], {"ok": 0, "crc": 0, "drop": 0}, 0
    for seg in segments:
        if not seg:
            continue
        kind, frame = classify(seg)
        counts[kind] += 1
        if kind == "ok":
            frames.append(frame)
        else:
            discarded += len(seg)
    return frames, counts, discarded


def mutate(wire, rng):
    """Damage one encoded frame (delimiter stripped) in one of several ways."""
    body = bytearray(wire[:-1])
    how = rng.choice(("flip", "truncate", "drop_byte", "insert", "oversize", "garbage", "zero_code"))
    if how == "flip" and body:
        i = rng.randrange(len(body))
        body[i] ^= 1 << rng.randrange(8)
    elif how == "truncate" and body:
        del body[rng.randrange(len(body)):]
    elif how == "drop_byte" and body:
        del body[rng.randrange(len(body))]
    elif how == "insert":
        body.insert(rng.randrange(len(body) + 1), rng.randrange(1, 256))
    elif how == "oversize":
        body += bytes(rng.randrange(1, 256) for _ in range(framing.MAX_ENCODED + 1 - len(body) + rng.randrange(300)))
    elif how == "garbage":
        body = bytearray(rng.randbytes(rng.randrange(1, 400)).replace(b"\x00", b"\x5a"))
    return bytes(body).replace(b"\x00", b"\x01")  # the damage never plants a delimiter itself


def feed_in_chunks(decoder, stream, rng):
    frames, i = [], 0
    while i < len(stream):
        n = rng.choice((1, 1, 2, 3, 7, 64, 300, 1000))
        frames += decoder.feed(stream[i:i + n])
        i += n
    return frames


def build_stream(seed):
    rng = random.Random(seed)
    parts, valid = [], []
    for _ in range(rng.randrange(1, 40)):
        body = rng.randbytes(rng.choice((0, 1, 5, 40, framing.MAX_BODY)))
        wire = framing.encode_frame(rng.randrange(256), rng.randrange(0x10000), body)
        r = rng.random()
        if r < 0.45:
            parts.append(wire)
            valid.append(wire)
        elif r < 0.8:
            parts.append(mutate(wire, rng) + b"\x00")
        elif r < 0.9:
            parts.append(b"\x00" * rng.randrange(1, 4))  # padding
        else:
            parts.append(rng.randbytes(rng.randrange(1, 600)))  # raw garbage, may contain 0x00
    return b"".join(parts) + b"\x00", rng  # final delimiter flushes the last segment


@FAST
@given(st.integers(0, 2**32))
def test_decoder_stream_matches_reference(seed):
    stream, rng = build_stream(seed)
    dec = framing.FrameDecoder()
    got = feed_in_chunks(dec, stream, rng)
    frames, counts, discarded = expected_from_stream(stream)
    assert [(f.version, f.type, f.seq, f.body) for f in got] == frames
    assert dec.frames_ok == counts["ok"]
    assert dec.crc_errors == counts["crc"]
    assert dec.frames_dropped == counts["drop"]
    assert dec.bytes_discarded == discarded


@FAST
@given(st.integers(0, 2**32))
def test_valid_frames_after_a_delimiter_always_recovered(seed):
    """Whatever precedes it, a valid frame that follows a 0x00 is decoded."""
    rng = random.Random(seed)
    garbage = rng.randbytes(rng.randrange(0, 2000))
    wires = [framing.encode_frame(rng.randrange(256), rng.randrange(0x10000), rng.randbytes(rng.randrange(0, 251)))
             for _ in range(rng.randrange(1, 6))]
    dec = framing.FrameDecoder()
    got = feed_in_chunks(dec, garbage + b"\x00" + b"".join(wires), rng)
    assert [(f.type, f.seq, f.body) for f in got[-len(wires):]] == [classify(w[:-1])[1][1:] for w in wires]


@FAST
@given(st.binary(max_size=3000), st.integers(0, 2**32))
def test_decoder_garbage_never_raises_and_counts(data, seed):
    dec = framing.FrameDecoder()
    feed_in_chunks(dec, data + b"\x00", random.Random(seed))
    frames, counts, discarded = expected_from_stream(data + b"\x00")
    assert (dec.frames_ok, dec.crc_errors, dec.frames_dropped) == (counts["ok"], counts["crc"], counts["drop"])
    assert dec.bytes_discarded == discarded


def test_decoder_accepts_bytearray_and_memoryview():
    wire = framing.encode_frame(3, 7, b"hi")
    assert len(framing.FrameDecoder().feed(bytearray(wire))) == 1
    assert len(framing.FrameDecoder().feed(memoryview(wire))) == 1


def test_oversize_payload_within_encoded_limit_is_dropped():
    """A payload one byte longer than MAX_PAYLOAD still fits MAX_ENCODED once COBS-encoded when it
    contains zeros; the decoder must drop it (body would exceed MAX_BODY)."""
    payload = bytes([1, 1, 0, 0]) + bytes(framing.MAX_BODY + 1)
    payload += struct.pack(">H", CRCMOD(payload))
    enc = cobs.encode(payload)
    assert len(enc) <= framing.MAX_ENCODED
    dec = framing.FrameDecoder()
    assert dec.feed(enc + b"\x00") == []
    assert dec.frames_dropped == 1


def test_overflow_then_valid_frame():
    dec = framing.FrameDecoder()
    wire = framing.encode_frame(2, 9, b"ok")
    got = dec.feed(b"\x07" * 5000) + dec.feed(b"\x07" * 5000 + b"\x00" + wire)
    assert [f.body for f in got] == [b"ok"]
    assert (dec.frames_dropped, dec.bytes_discarded, dec.frames_ok) == (1, 10000, 1)


# ------------------------------------------------------------------------------------ messages
def test_message_type_spaces_are_disjoint():
    reqs = set(M.REQUEST_NAMES)
    assert all(t < M.RESPONSE for t in reqs)
    assert {t | M.RESPONSE for t in reqs}.isdisjoint({M.NACK, M.EVENT})


nack_field = st.sampled_from(P.NAMES)


@FAST
@given(st.sampled_from(sorted(M.ERROR_NAMES)), nack_field, st.integers(-(2**63), 2**63 - 1),
       st.integers(0, 2**63 - 1), st.sampled_from(P.RELATIONS))
def test_nack_round_trip(code, field, value, limit, relation):
    body = M.encode_nack(code, P.field_id(field), value, limit, relation)
    d = M.decode_nack(body)
    assert d == {"code": code, "error": M.ERROR_NAMES[code], "field": field, "relation": relation,
                 "value": value, "limit": limit}


@FAST
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_nack_never_raises_on_wide_values(value, limit):
    """Params travel as u64, so a violation may carry a value/limit beyond int64: clamp, don't raise."""
    d = M.decode_nack(M.encode_violation_nack(P.Violation("phase1_ns", value, limit, "<=")))
    assert d["value"] == min(value, 2**63 - 1) and d["limit"] == min(limit, 2**63 - 1)
    assert d["field"] == "phase1_ns"


def test_nack_unknown_field_and_non_int_value():
    d = M.decode_nack(M.encode_violation_nack(P.Violation("bogus", "x", 0, "known")))
    assert d["field"] is None and d["value"] == 0 and d["relation"] == "known"


@FAST
@given(st.sampled_from(sorted(k for k in M.EVENT_NAMES if k != M.EV_AMPLITUDE)), st.integers(0, 255),
       st.integers(0, 2**64 - 1), st.integers(-(2**31), 2**31 - 1))
def test_event_round_trip(kind, channel, time_us, value):  # amplitude (one more field): tests/test_set_amplitude.py
    d = M.decode_event(M.encode_event(kind, channel, time_us, value))
    assert d == {"kind": M.EVENT_NAMES[kind], "channel": channel, "time_us": time_us, "value": value}


@FAST
@given(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)), st.integers(0, 255),
       st.binary(min_size=8, max_size=8), st.integers(0, 255),
       st.fixed_dictionaries({n: st.integers(0, 2**64 - 1) for n in P.LIMIT_NAMES}))
def test_hello_round_trip(fw, channels, board_id, reset_reason, limits):
    d = M.decode_hello(M.encode_hello(fw, channels, board_id, reset_reason, limits))
    assert d == {"firmware_version": "%d.%d.%d" % fw, "protocol_version": framing.PROTOCOL_VERSION,
                 "channels": channels, "board_id": board_id.hex(), "reset_reason": reset_reason,
                 "limits": limits}


def test_hello_fits_one_frame():
    body = M.encode_hello((1, 2, 3), 4, b"\x01" * 8, 0, LIMITS)
    assert len(body) <= framing.MAX_BODY


wire_params = st.fixed_dictionaries({name: st.integers(0, (1 << (8 * struct.calcsize(fmt))) - 1)
                                     for name, fmt, _ in P.FIELDS})


def _int_range(code):
    bits = 8 * struct.calcsize("<" + code)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)


# ranges follow the realised block's own struct format, so the test tracks the catalogue
_REALISED_CODES = M._REALISED.lstrip("<")
assert len(_REALISED_CODES) == len(M.REALISED_NAMES)
realised = st.fixed_dictionaries({n: st.integers(*_int_range(c)) for n, c in zip(M.REALISED_NAMES, _REALISED_CODES)})


@FAST
@given(st.integers(0, 255), wire_params, realised)
def test_params_request_and_response_round_trip(channel, params, real):
    body = M.encode_params(channel, params)
    assert M.decode_params_request(body) == (channel, params)
    assert M.decode_params_request(body + b"\x00") is None
    assert M.decode_params_request(body[:-1]) is None
    resp = M.encode_params_response(channel, params, real)
    assert len(resp) <= framing.MAX_BODY
    assert M.decode_params_response(resp) == {"channel": channel, "params": params, "realised": real}


chan_status = st.tuples(st.integers(0, len(M.STATE_NAMES) - 1), st.sampled_from([0] + sorted(M.EVENT_NAMES)),
                        st.integers(0, 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


@FAST
@given(st.integers(0, 2**32 - 1), st.lists(chan_status, max_size=8),
       st.fixed_dictionaries({n: st.integers(0, 2**32 - 1) for n in M.COUNTER_NAMES}))
def test_status_round_trip(uptime, chans, counters):
    body = M.encode_status(uptime, chans, counters)
    assert len(body) <= framing.MAX_BODY
    d = M.decode_status(body)
    assert d["uptime_ms"] == uptime and d["counters"] == counters
    assert d["channels"] == [{"channel": i, "state": M.STATE_NAMES[s], "fault": M.EVENT_NAMES.get(f, "none"),
                              "configured": bool(c), "pulses": n,
                              "impedance_ohm": None if z == M.OHM_UNKNOWN else z}
                             for i, (s, f, c, n, z) in enumerate(chans)]


@FAST
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, len(M.Z_NAMES) - 1)),
                max_size=8))
def test_impedance_round_trip(readings):
    d = M.decode_impedance(M.encode_impedance(readings))
    assert d == [{"channel": c, "ohms": None if o == M.OHM_UNKNOWN else o, "class": M.Z_NAMES[z]}
                 for c, o, z in readings]


def test_frames_carry_every_message_type():
    dec = framing.FrameDecoder()
    stream = b"".join(framing.encode_frame(t, i, b"") for i, t in enumerate(
        list(M.REQUEST_NAMES) + [t | M.RESPONSE for t in M.REQUEST_NAMES] + [M.NACK, M.EVENT]))
    got = dec.feed(stream)
    assert [f.seq for f in got] == list(range(len(got))) and dec.frames_ok == len(got)
