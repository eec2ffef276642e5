"""protocol/crc16.py's viper variant: selected on MicroPython, equal to the plain-Python loop and to
crcmod on random data (whole buffers, continuations, bytearray/memoryview/array inputs); absent on
CPython. The x86-64 unix port has the viper emitter, so this runs the real native code path; the
board's armv6m build is compiled by tests/test_firmware_build.py."""

import random

import crcmod
import pytest

from mpyrun import run_micropython
from mpyrun import CONFORMANCE_PASSED
from protocol import crc16 as C

pytestmark = pytest.mark.mpy
CRCMOD = crcmod.mkCrcFun(0x11021, initCrc=0xFFFF, rev=False, xorOut=0)

SCRIPT = """
import sys, binascii
from array import array
from protocol import crc16 as C
print(C.crc16 is C.crc16_viper and C.crc16_viper is not None)
for line in sys.stdin:
    data = binascii.unhexlify(line.strip())
    h = len(data) // 2
    v = C.crc16_viper(data)
    print(v, C.crc16_plain(data), C.crc16_viper(bytearray(data)), C.crc16_viper(memoryview(data)),
          C.crc16_viper(data[h:], C.crc16_viper(data[:h])), C.crc16_viper(array("B", data)))
"""


def test_cpython_has_no_viper():
    assert C.crc16_viper is None and C.crc16 is C.crc16_plain
    assert C.crc16(b"123456789") == C.CHECK == CRCMOD(b"123456789")
    assert C.TABLE.itemsize == 2 and len(C.TABLE) == 256


def test_viper_equals_plain_equals_crcmod(micropython):
    rng = random.Random(99)
    datas = [b"", b"\x00", b"123456789", bytes(range(256)), b"\xff" * 1000]
    datas += [rng.randbytes(rng.choice((1, 2, 3, 31, 255, 256, 257, 4096))) for _ in range(400)]
    lines = run_micropython(SCRIPT, [d.hex() for d in datas])
    assert lines[0] == "True", "crc16 is not the viper variant under MicroPython"
    for d, line in zip(datas, lines[1:]):
        got = [int(x) for x in line.split()]
        assert got == [CRCMOD(d)] * 6, (d.hex()[:40], got)
    assert len(lines) == len(datas) + 1
    CONFORMANCE_PASSED["crc_viper"] = CONFORMANCE_PASSED.get("crc_viper", 0) + len(datas)


def test_viper_is_faster(micropython):
    code = """
import time
from protocol import crc16 as C
d = bytes(range(256)) * 16
def best(f):
    b = 10**9
    for _ in range(5):
        t = time.ticks_us(); f(d); b = min(b, time.ticks_diff(time.ticks_us(), t))
    return b
print(best(C.crc16_plain), best(C.crc16_viper))
"""
    plain, viper = map(int, run_micropython(code)[0].split())
    assert viper * 3 < plain, (plain, viper)
