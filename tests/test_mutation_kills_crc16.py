"""protocol/crc16.py: the table builder and the viper selection (mutation testing, issue 15).

``TABLE`` is built once at import, so a test that only calls ``crc16`` never re-runs ``_make_table``:
the builder itself is checked here against two independent CRC-16/CCITT implementations.

``_build_viper`` returns None on CPython at its first line; its MicroPython path (the wrapper around
the viper loop, the check-value self test that refuses a broken emitter) is run on the real unix port
by tests/mpy/test_mpy_crc_viper.py, which mutation runs cannot use. Here the same path runs on
CPython with ``sys.implementation.name`` set to "micropython", a ``micropython`` module whose
``viper`` decorator returns the function unchanged, and ``ptr8``/``ptr16`` as plain indexing (what
viper's raw pointers do for bytes and an ``array("H")``): the wrapper's arguments, its 16-bit mask
of the start value and the self test are observable.
"""

import binascii
import random
import sys
import types

import crcmod
import pytest

from protocol import crc16 as C

CRC_INIT0 = crcmod.mkCrcFun(0x11021, initCrc=0, rev=False, xorOut=0)


def test_make_table_is_the_ccitt_table():
    t = C._make_table()
    assert t.typecode == "H" and t.itemsize == 2 and len(t) == 256  # 512 bytes on every port
    # with a zero register, one byte's CRC is its table entry (two independent implementations)
    assert list(t) == [CRC_INIT0(bytes([b])) for b in range(256)]
    assert list(t) == [binascii.crc_hqx(bytes([b]), 0) for b in range(256)]
    assert (t[0], t[1], t[0x80], t[0xFF]) == (0x0000, 0x1021, 0x9188, 0x1EF0)
    assert list(C.TABLE) == list(t)


def test_plain_register_keeps_only_the_low_byte_shifted_up():
    # one step from each start value: ((crc << 8) & 0xFF00) ^ TABLE[(crc >> 8) ^ b]
    for crc in (0x0000, 0x00FF, 0x0101, 0x8001, 0xFFFF, 0x1234):
        for b in (0x00, 0x01, 0x5A, 0xFF):
            assert C.crc16_plain(bytes([b]), crc) == binascii.crc_hqx(bytes([b]), crc)


@pytest.fixture
def fake_micropython(monkeypatch):
    """CPython dressed as a MicroPython with a viper emitter that compiles to plain Python."""
    mp = types.ModuleType("micropython")
    mp.viper = lambda f: f  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "micropython", mp)
    monkeypatch.setattr(sys.implementation, "name", "micropython")
    monkeypatch.setattr(C, "ptr8", lambda buf: buf, raising=False)
    monkeypatch.setattr(C, "ptr16", lambda buf: buf, raising=False)
    return mp


def test_viper_variant_selected_and_equal_to_plain(fake_micropython):
    v = C._build_viper()
    assert v is not None
    assert v(b"123456789") == C.CHECK
    assert v(b"") == C.INIT
    rng = random.Random(15)
    for n in (1, 2, 9, 255, 1000):
        data = rng.randbytes(n)
        assert v(data) == C.crc16_plain(data)
        for start in (0x0000, 0x1234, 0x8000, 0xFFFE):  # a continued CRC, not only INIT
            assert v(data, start) == C.crc16_plain(data, start)
        h = n // 2
        assert v(data[h:], v(data[:h])) == v(data)


def test_viper_variant_refused_when_the_emitter_gets_the_check_value_wrong(fake_micropython, monkeypatch):
    def broken_viper(f):
        return lambda data, n, crc, table: f(data, n, crc, table) ^ 1  # off by one bit

    monkeypatch.setattr(fake_micropython, "viper", broken_viper)
    assert C._build_viper() is None


def test_viper_variant_refused_when_the_emitter_raises(fake_micropython, monkeypatch):
    def refusing_viper(f):
        def run(*args):
            raise NotImplementedError("native code not supported")
        return run

    monkeypatch.setattr(fake_micropython, "viper", refusing_viper)
    assert C._build_viper() is None


def test_cpython_gets_no_viper_variant():
    assert C._build_viper() is None
    assert C.crc16_viper is None and C.crc16 is C.crc16_plain
