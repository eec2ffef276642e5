"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor; check 0x29B1).

Table driven so it runs on the board; the host may use crcmod's C extension instead (see
``protocol.framing.crc16``) and the tests prove the two agree on random data.

Three functions, one answer:
    crc16_plain(data, crc)   plain Python, any iterable of byte values (CPython and MicroPython)
    crc16_viper(data, crc)   MicroPython only: the same table loop compiled by the viper emitter
                             (machine-word ints, raw pointer loads); ``data`` must support the
                             buffer protocol (bytes, bytearray, memoryview, array)
    crc16(data, crc)         the one to use: ``crc16_viper`` where the interpreter has the viper
                             emitter (the RP2040 build with ``mpy-cross -march=armv6m``, the x86-64
                             unix port) and it passes the check value at import, else ``crc16_plain``
``crc16_viper`` is None on CPython. ``@micropython.viper`` is a compile-time directive (there is no
``micropython.viper`` attribute to test at run time): CPython only parses it (the function that
defines it runs on MicroPython only); a MicroPython port built without native emitters would
reject this module at compile time (rp2 and the x86-64 unix port have them; mpy-cross needs
``-march``, see tools/build_firmware.py).
"""

import sys
from array import array

POLY = 0x1021
INIT = 0xFFFF
CHECK = 0x29B1  # crc16(b"123456789")


def _make_table():
    table = array("H", [0] * 256)  # 512 bytes on every port (a tuple of ints is 1-2 KB)
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) if crc & 0x8000 else (crc << 1)
        table[byte] = crc & 0xFFFF
    return table


TABLE = _make_table()


def crc16_plain(data, crc=INIT):
    """CRC of ``data`` (bytes-like or any iterable of 0..255), optionally continuing from ``crc``."""
    table = TABLE
    for b in data:
        crc = ((crc << 8) & 0xFF00) ^ table[(crc >> 8) ^ b]
    return crc


def _build_viper():
    """The viper variant, or None off MicroPython or if it does not give the check value."""
    if sys.implementation.name != "micropython":  # CPython (host): no viper emitter
        return None
    try:
        import micropython  # pyright: ignore[reportMissingModuleSource]

        @micropython.viper
        def loop(data, n: int, crc: int, table) -> int:
            p = ptr8(data)
            t = ptr16(table)
            c = crc
            i = 0
            while i < n:
                c = ((c << 8) & 0xFF00) ^ t[((c >> 8) ^ p[i]) & 0xFF]
                i += 1
            return c

        def crc16_viper(data, crc=INIT):
            """``crc16_plain`` compiled by the viper emitter (``data``: a buffer-protocol object)."""
            return loop(data, len(data), crc & 0xFFFF, TABLE)

        if crc16_viper(b"123456789") != CHECK:  # a broken emitter must not corrupt every frame
            return None
        return crc16_viper
    except Exception:  # noqa: BLE001 - e.g. an emitter that refuses at run time
        return None


crc16_viper = _build_viper()
crc16 = crc16_plain if crc16_viper is None else crc16_viper
