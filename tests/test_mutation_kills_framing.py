"""protocol/framing.py: exact edges of the frame decoder and the encoder's defaults (mutation testing,
issue 15).

tests/test_protocol.py checks the decoder against a reference model on random streams; these pin the
boundaries deterministically (shortest and longest payload, the overflow length, the counters) so a
change there does not depend on what hypothesis happens to draw.
"""

import struct

import crcmod
import pytest

from protocol import cobs, framing

CRCMOD = crcmod.predefined.mkCrcFun("crc-ccitt-false")


def segment(payload_without_crc):
    """COBS segment (no delimiter) of a payload with its correct CRC appended."""
    p = bytes(payload_without_crc)
    return cobs.encode(p + struct.pack(">H", CRCMOD(p)))


def counters(dec):
    return dec.frames_ok, dec.crc_errors, dec.frames_dropped, dec.bytes_discarded


def test_default_body_is_empty_and_version_is_the_protocol_version():
    wire = framing.encode_frame(0x21, 5)
    (f,) = framing.FrameDecoder().feed(wire)
    assert (f.version, f.type, f.seq, f.body) == (framing.PROTOCOL_VERSION, 0x21, 5, b"")
    assert len(cobs.decode(wire[:-1])) == framing.HEADER_LEN + framing.CRC_LEN


def test_oversize_body_message():
    with pytest.raises(ValueError, match="^body too long$"):
        framing.encode_frame(1, 0, bytes(framing.MAX_BODY + 1))


def test_frame_carries_its_crc():
    body = b"\x10\x20\x30"
    (f,) = framing.FrameDecoder().feed(framing.encode_frame(3, 0x0102, body, version=6))
    assert f.crc == CRCMOD(struct.pack("<BBH", 6, 3, 0x0102) + body)
    assert repr(f) == "Frame(v6 type=0x03 seq=258 body=102030)"


def test_shortest_and_longest_payloads():
    dec = framing.FrameDecoder()
    # header + CRC, no body: the shortest frame
    (f,) = dec.feed(segment(b"\x06\x01\x02\x00") + b"\x00")
    assert (f.type, f.seq, f.body) == (1, 2, b"")
    # one byte shorter: no room for a header and a CRC -> dropped, not a CRC error
    short = cobs.encode(b"\x06\x01\x02\x00\x00")
    assert dec.feed(short + b"\x00") == []
    assert counters(dec) == (1, 0, 1, len(short))
    # a body of exactly MAX_BODY is accepted, one more byte is dropped (even with a good CRC)
    full = segment(b"\x06\x01\x00\x00" + b"\x55" * framing.MAX_BODY)
    (g,) = dec.feed(full + b"\x00")
    assert len(g.body) == framing.MAX_BODY
    over = segment(b"\x06\x01\x00\x00" + b"\x55" * (framing.MAX_BODY + 1))
    assert dec.feed(over + b"\x00") == []
    assert counters(dec) == (2, 0, 2, len(short) + len(over))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_every_too_short_payload_is_dropped(n):
    dec = framing.FrameDecoder()
    seg = cobs.encode(bytes(range(1, n + 1)))
    assert dec.feed(seg + b"\x00") == []
    assert counters(dec) == (0, 0, 1, len(seg))


def test_crc_error_is_counted_apart_from_drops():
    wire = bytearray(framing.encode_frame(1, 2, b"abc"))
    seg = cobs.decode(bytes(wire[:-1]))
    bad = bytearray(seg)
    bad[-1] ^= 0x01
    enc = cobs.encode(bytes(bad))
    dec = framing.FrameDecoder()
    assert dec.feed(enc + b"\x00") == []
    assert counters(dec) == (0, 1, 0, len(enc))


def test_overflow_edge_is_max_encoded():
    # exactly MAX_ENCODED bytes between delimiters are still decoded (here: bad COBS, one drop)
    dec = framing.FrameDecoder()
    dec.feed(b"\x07" * framing.MAX_ENCODED)
    assert counters(dec) == (0, 0, 0, 0)
    dec.feed(b"\x00")
    assert counters(dec) == (0, 0, 1, framing.MAX_ENCODED)
    # one byte more overflows at once: discarded as it arrives, one drop at the delimiter
    dec = framing.FrameDecoder()
    dec.feed(b"\x07" * (framing.MAX_ENCODED + 1))
    assert counters(dec) == (0, 0, 0, framing.MAX_ENCODED + 1)
    dec.feed(b"\x07\x07")
    assert counters(dec) == (0, 0, 0, framing.MAX_ENCODED + 3)
    wire = framing.encode_frame(9, 9, b"ok")
    (f,) = dec.feed(b"\x00" + wire)
    assert f.body == b"ok"
    assert counters(dec) == (1, 0, 1, framing.MAX_ENCODED + 3)


def test_padding_and_empty_feeds_count_nothing():
    dec = framing.FrameDecoder()
    assert dec.feed(b"") == [] and dec.feed(b"\x00\x00\x00") == []
    assert counters(dec) == (0, 0, 0, 0)
    wire = framing.encode_frame(4, 4)
    # a frame split at every byte boundary, with an empty feed between the halves
    for cut in range(len(wire) + 1):
        d = framing.FrameDecoder()
        got = d.feed(wire[:cut]) + d.feed(b"") + d.feed(wire[cut:])
        assert [(f.type, f.seq) for f in got] == [(4, 4)] and counters(d) == (1, 0, 0, 0)
