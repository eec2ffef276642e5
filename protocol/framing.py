"""Frame layout and the streaming decoder.

On the wire a frame is ``COBS(payload) + b"\\x00"`` where payload is::

    version:u8 | type:u8 | seq:u16 LE | body (0..MAX_BODY bytes) | crc:u16 BE

The CRC is CRC-16/CCITT-FALSE over version..body. Every malformed input is counted and dropped by
:class:`FrameDecoder`; it never raises and always resynchronises on the next 0x00.
"""

import struct

from protocol import cobs

try:  # host: crcmod's C extension (same polynomial/init as protocol.crc16, proven equal in tests)
    import crcmod  # pyright: ignore[reportMissingImports]  (host only; absent on the board)

    crc16 = crcmod.mkCrcFun(0x11021, initCrc=0xFFFF, rev=False, xorOut=0)
except ImportError:  # board / MicroPython: the table-driven implementation
    from protocol.crc16 import crc16

# 8: custom sequences: fields sequence_pulses and sequence_cycle_ns, HELLO limits max_sequence_pulses
# and min_sequence_interval_ns, SET_SEQUENCE (0x10), E_SEQUENCE_INCOMPLETE, NACK names onset_ns and
# sequence_amplitude_ua (appended after the fields, so the ids of the derived and other names moved).
# 0x08 (Ctrl-H) is backspace in MicroPython's readline: it edits the line being typed (no mode
# switch, interrupt or reset), like the 0x07 of version 7 that it ignores.
# 7: ramp fields (ramp_down_ns, ramp_up_pulses, ramp_down_pulses), HELLO limits max_ramp_pulses and
# min_update_idle_ns, SET_AMPLITUDE and the amplitude EVENT (with from_pulse), EVENT_LOG_MAX 12.
# 6: HELLO limits gained min_dead_time_ns, EVENT times count from boot, REPL request, crash event.
# Versions 2-5 are never used: the version byte is in every frame, and 0x02-0x05 are the REPL's
# control keys (Ctrl-B..Ctrl-E; a 0x03 is Ctrl-C), which a frame reaching a board at its REPL must not carry.
# 0x07 (Ctrl-G) has no meaning in MicroPython's readline (it is neither a REPL key nor printable: ignored).
PROTOCOL_VERSION = 8
HEADER_LEN = 4
CRC_LEN = 2
MAX_BODY = 250
MAX_PAYLOAD = HEADER_LEN + MAX_BODY + CRC_LEN
# COBS adds one byte per 254 plus one; anything longer between delimiters is garbage.
MAX_ENCODED = MAX_PAYLOAD + MAX_PAYLOAD // 254 + 1


def encode_frame(msg_type, seq, body=b"", version=PROTOCOL_VERSION):
    """Build the wire bytes (including the trailing 0x00 delimiter) of one frame."""
    if len(body) > MAX_BODY:
        raise ValueError("body too long")
    payload = struct.pack("<BBH", version, msg_type, seq & 0xFFFF) + bytes(body)
    payload += struct.pack(">H", crc16(payload))
    return cobs.encode(payload) + b"\x00"


class Frame:
    """A frame whose CRC checked out. ``version`` may still be foreign: the receiver decides."""

    __slots__ = ("version", "type", "seq", "body", "crc")

    def __init__(self, version, msg_type, seq, body, crc):
        self.version = version
        self.type = msg_type
        self.seq = seq
        self.body = body
        self.crc = crc

    def __repr__(self):
        return "Frame(v%d type=0x%02x seq=%d body=%s)" % (self.version, self.type, self.seq, self.body.hex())


class FrameDecoder:
    """Byte stream -> frames. Counts what it drops: ``crc_errors``, ``frames_dropped`` (truncated,
    oversize, bad COBS) and ``bytes_discarded``; ``frames_ok`` counts good frames."""

    def __init__(self):
        self._buf = bytearray()
        self._overflow = False
        self.frames_ok = 0
        self.crc_errors = 0
        self.frames_dropped = 0
        self.bytes_discarded = 0

    def feed(self, data):
        """Consume ``data`` (bytes-like) and return the list of good :class:`Frame` objects in it."""
        if not isinstance(data, bytes):
            data = bytes(data)
        frames = []
        start = 0
        n = len(data)
        while start < n:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:])
                break
            self._append(data[start:end])
            frame = self._finish()
            if frame is not None:
                frames.append(frame)
            start = end + 1
        return frames

    def _append(self, chunk):
        if self._overflow:
            self.bytes_discarded += len(chunk)
            return
        self._buf.extend(chunk)
        if len(self._buf) > MAX_ENCODED:
            self.bytes_discarded += len(self._buf)
            self._buf = bytearray()
            self._overflow = True

    def _finish(self):
        """A delimiter arrived: decode what was collected since the previous one."""
        raw = self._buf
        self._buf = bytearray()
        if self._overflow:
            self._overflow = False
            self.frames_dropped += 1
            return None
        if not raw:  # back-to-back delimiters are legal padding
            return None
        payload = cobs.decode(raw)
        # COBS lets a payload one byte longer than MAX_PAYLOAD fit in MAX_ENCODED: refuse it too.
        if payload is None or not HEADER_LEN + CRC_LEN <= len(payload) <= MAX_PAYLOAD:
            self.frames_dropped += 1
            self.bytes_discarded += len(raw)
            return None
        crc = (payload[-2] << 8) | payload[-1]
        if crc16(payload[:-2]) != crc:
            self.crc_errors += 1
            self.bytes_discarded += len(raw)
            return None
        version, msg_type, seq = struct.unpack("<BBH", payload[:HEADER_LEN])
        self.frames_ok += 1
        return Frame(version, msg_type, seq, bytes(payload[HEADER_LEN:-2]), crc)
