"""Consistent Overhead Byte Stuffing: frames contain no 0x00, so 0x00 delimits them on the wire.

A decoder can always resynchronise on the next 0x00 after garbage or a lost byte.
"""


def encode(data):
    """COBS-encode ``data``; the result contains no zero byte (delimiter not appended)."""
    out = bytearray()
    block = bytearray()
    for b in data:
        if b == 0:
            out.append(len(block) + 1)
            out.extend(block)
            block = bytearray()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255)
                out.extend(block)
                block = bytearray()
    out.append(len(block) + 1)
    out.extend(block)
    return bytes(out)


def decode(data):
    """Decode one COBS block (without delimiter). Returns bytes, or None if malformed."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n:
            return None
        end = i + code
        chunk = data[i + 1:end]
        if chunk.find(b"\x00") >= 0:
            return None
        out.extend(chunk)
        i = end
        if code < 255 and i < n:
            out.append(0)
    return bytes(out)
