"""protocol/cobs.py: the cases the property tests rarely generate (mutation testing, issue 15).

A COBS block never contains 0x00; ``decode`` must refuse one that does wherever the zero sits in a
code's chunk (first, middle, last byte), not only where a code byte is expected. Random binaries
rarely build a well-formed code whose chunk holds a zero, so these are pinned here.
"""

import pytest

from protocol import cobs


@pytest.mark.parametrize("enc", [
    b"\x03\x00\x05",          # zero as the first byte of a chunk
    b"\x04\x05\x00\x06",      # in the middle
    b"\x03\x05\x00",          # as the last byte
    b"\x02\x07\x03\x00\x05",  # in a later chunk, after a good one
    b"\xff" + b"\x11" * 253 + b"\x00",  # at the end of a full 254-byte chunk
])
def test_decode_refuses_a_zero_inside_a_chunk(enc):
    assert cobs.decode(enc) is None


def test_the_same_blocks_without_the_zero_decode():
    # the refusal above is about the zero, not the shape: the same codes with a non-zero byte decode
    assert cobs.decode(b"\x03\x01\x05") == b"\x01\x05"
    assert cobs.decode(b"\x04\x05\x01\x06") == b"\x05\x01\x06"
    assert cobs.decode(b"\x02\x07\x03\x01\x05") == b"\x07\x00\x01\x05"
    assert cobs.decode(b"\xff" + b"\x11" * 254) == b"\x11" * 254


def test_decode_refuses_a_code_past_the_end_and_a_zero_code():
    assert cobs.decode(b"\x03\x05") is None         # code 3 needs two more bytes
    assert cobs.decode(b"\x02\x05\x00\x01") is None  # a zero where a code is expected
    assert cobs.decode(b"\x03\x05\x06") == b"\x05\x06"  # exactly enough bytes
    assert cobs.decode(b"") == b""


def test_encode_exact_bytes():
    assert cobs.encode(b"") == b"\x01"
    assert cobs.encode(b"\x00") == b"\x01\x01"
    assert cobs.encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert cobs.encode(b"\x11" * 254) == b"\xff" + b"\x11" * 254 + b"\x01"
    assert cobs.encode(b"\x11" * 255) == b"\xff" + b"\x11" * 254 + b"\x02\x11"
