"""Parameter sets in flash (firmware/storage.py) and the SAVE/LOAD requests.

A power cut is simulated by a file API that stops after ``k`` bytes of flash writes (a rename counts
as one more step): hypothesis over ``k`` proves the previous set survives every cut and the new one
is either fully there or not at all. Loading refuses a bad CRC/header.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import storage
from firmware.controller import Controller
from protocol import messages as M
from protocol import params as P
from protocol.framing import FrameDecoder, encode_frame
from test_controller import GOOD, FakeHal, snapshot


class PowerCut(Exception):
    pass


class FlashFiles:
    """In-memory littlefs stand-in: writes land byte by byte, rename is atomic; the power fails after
    ``budget`` bytes written (None: never). ``files`` survives the cut (it is the flash)."""

    def __init__(self, budget=None):
        self.files: dict[str, bytes] = {}
        self.budget = budget

    def _spend(self, n):
        if self.budget is None:
            return n
        take = min(n, self.budget)
        self.budget -= take
        return take

    def read(self, name):
        return self.files.get(name)

    def write(self, name, data):
        self.files[name] = b""
        n = self._spend(len(data))
        self.files[name] = bytes(data[:n])
        if n < len(data):
            raise PowerCut()

    def rename(self, src, dst):
        if self._spend(1) < 1:
            raise PowerCut()
        self.files[dst] = self.files.pop(src)


OLD = P.pack(GOOD)
NEW = P.pack(dict(GOOD, amplitude_ua=2345, period_ns=20_000_000))


def test_round_trip_and_empty_slot(tmp_path):
    for files in (FlashFiles(), storage.OsFiles(str(tmp_path / "params"))):
        s = storage.Store(files)
        with pytest.raises(storage.Empty):
            s.load(3)
        crc = s.save(3, OLD)
        assert s.load(3) == OLD
        assert 0 <= crc <= 0xFFFF
        s.save(3, NEW)
        assert s.load(3) == NEW
        with pytest.raises(storage.StorageError):
            s.save(storage.SLOTS, OLD)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_power_cut_at_any_byte_keeps_the_previous_set(data):
    flash = FlashFiles()
    s = storage.Store(flash)
    s.save(1, OLD)
    record_len = storage.HEAD_LEN + len(NEW)
    k = data.draw(st.integers(0, record_len + 1), label="bytes written before the cut")
    flash.budget = k
    try:
        s.save(1, NEW)
        cut = False
    except PowerCut:
        cut = True
    flash.budget = None  # power back: boot and load
    after = storage.Store(flash).load(1)
    if cut:
        assert after == OLD, "a cut before the rename must leave the previous set"
    else:
        assert k >= record_len + 1 and after == NEW
    # and the next save after the cut works (a stale .tmp is overwritten)
    s.save(1, NEW)
    assert s.load(1) == NEW


@settings(max_examples=300, deadline=None)
@given(st.integers(0, storage.HEAD_LEN + len(OLD) - 1), st.integers(0, 7))
def test_load_refuses_any_bit_flip(pos, bit):
    flash = FlashFiles()
    s = storage.Store(flash)
    s.save(0, OLD)
    rec = bytearray(flash.files["slot0.bin"])
    rec[pos] ^= 1 << bit
    flash.files["slot0.bin"] = bytes(rec)
    with pytest.raises(storage.Corrupt):
        s.load(0)


def test_load_refuses_truncation_and_a_record_from_another_slot():
    flash = FlashFiles()
    s = storage.Store(flash)
    s.save(0, OLD)
    rec = flash.files["slot0.bin"]
    for n in range(len(rec)):
        flash.files["slot0.bin"] = rec[:n]
        with pytest.raises(storage.Corrupt):
            s.load(0)
    flash.files["slot5.bin"] = rec  # copied file: the slot number is in the CRC'd header
    with pytest.raises(storage.Corrupt):
        s.load(5)


# ------------------------------------------------------------------------- SAVE/LOAD requests
def ctl_with(flash):
    out: list[bytes] = []
    hal = FakeHal()
    return Controller(hal, out.append, storage=storage.Store(flash)), hal, out


def ask(ctl, out, msg_type, body, seq=[100]):
    seq[0] += 1
    out.clear()
    ctl.receive(encode_frame(msg_type, seq[0], body))
    (reply,) = FrameDecoder().feed(b"".join(out))
    return reply


def test_save_then_load_into_another_channel_survives_a_reboot():
    flash = FlashFiles()
    ctl, hal, out = ctl_with(flash)
    assert ask(ctl, out, M.SET_PARAMS, M.encode_params(0, GOOD)).type == M.SET_PARAMS | M.RESPONSE
    r = ask(ctl, out, M.SAVE, M.encode_slot_request(0, 2))
    assert r.type == M.SAVE | M.RESPONSE and M.decode_save_response(r.body)["slot"] == 2
    ctl2, hal2, out2 = ctl_with(flash)  # reboot: a fresh controller over the same flash
    r = ask(ctl2, out2, M.LOAD, M.encode_slot_request(3, 2))
    assert r.type == M.LOAD | M.RESPONSE
    assert M.decode_params_response(r.body)["params"] == GOOD and ctl2.params[3] == GOOD


@pytest.mark.parametrize("case", ["empty", "crc", "unconfigured", "slot", "length", "channel", "unsafe", "nostore"])
def test_refused_save_and_load_change_nothing(case):
    flash = FlashFiles()
    ctl, hal, out = ctl_with(flash)
    ask(ctl, out, M.SET_PARAMS, M.encode_params(0, GOOD))
    storage.Store(flash).save(1, OLD)
    before = snapshot(ctl, hal)
    files_before = dict(flash.files)
    if case == "empty":
        r, code = ask(ctl, out, M.LOAD, M.encode_slot_request(0, 4)), M.E_EMPTY_SLOT
    elif case == "crc":
        rec = flash.files["slot1.bin"]
        flash.files["slot1.bin"] = rec[:-1] + bytes((rec[-1] ^ 0xFF,))
        files_before = dict(flash.files)
        r, code = ask(ctl, out, M.LOAD, M.encode_slot_request(0, 1)), M.E_STORAGE
    elif case == "unconfigured":
        r, code = ask(ctl, out, M.SAVE, M.encode_slot_request(1, 1)), M.E_NOT_CONFIGURED
    elif case == "slot":
        r, code = ask(ctl, out, M.SAVE, M.encode_slot_request(0, storage.SLOTS)), M.E_OUT_OF_RANGE
    elif case == "length":
        r, code = ask(ctl, out, M.LOAD, b"\x00"), M.E_BAD_LENGTH
    elif case == "channel":
        r, code = ask(ctl, out, M.LOAD, M.encode_slot_request(9, 1)), M.E_BAD_CHANNEL
    elif case == "unsafe":  # a set that validates nowhere: LOAD runs the same checks as SET_PARAMS
        storage.Store(flash).save(6, P.pack(dict(GOOD, amplitude_ua=60_000)))
        files_before = dict(flash.files)
        r, code = ask(ctl, out, M.LOAD, M.encode_slot_request(0, 6)), M.E_OUT_OF_RANGE
    else:
        ctl.storage = None
        r, code = ask(ctl, out, M.SAVE, M.encode_slot_request(0, 1)), M.E_STORAGE
    assert r.type == M.NACK and M.decode_nack(r.body)["code"] == code
    assert snapshot(ctl, hal) == before and flash.files == files_before


def test_a_flash_write_failure_is_a_nack_and_keeps_the_slot():
    flash = FlashFiles()
    ctl, hal, out = ctl_with(flash)
    ask(ctl, out, M.SET_PARAMS, M.encode_params(0, GOOD))
    storage.Store(flash).save(1, NEW)

    def broken(name, data):
        raise OSError(28, "no space")

    flash.write = broken  # type: ignore[method-assign]
    r = ask(ctl, out, M.SAVE, M.encode_slot_request(0, 1))
    assert r.type == M.NACK and M.decode_nack(r.body)["code"] == M.E_STORAGE
    assert storage.Store(flash).load(1) == NEW


def test_record_layout_is_documented_by_the_code():
    rec = storage.encode_record(2, b"abc")
    magic, version, slot, length, crc = struct.unpack("<4sBBHH", rec[:storage.HEAD_LEN])
    assert (magic, version, slot, length) == (b"PSPS", 1, 2, 3) and rec[storage.HEAD_LEN:] == b"abc"
