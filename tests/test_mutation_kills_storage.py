"""firmware/storage.py: record edges, the refusal reasons, the on-flash names and OsFiles' durability
calls (mutation testing, issue 15).

Self-contained (an in-memory file API of its own): these tests do not import the controller.
"""

from __future__ import annotations

import os

import pytest

from firmware import storage


class MemFiles:
    """In-memory file API: ``files`` is the flash; ``lie`` makes every write land one byte short."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.lie = False

    def read(self, name):
        return self.files.get(name)

    def write(self, name, data):
        self.files[name] = bytes(data[:-1] if self.lie else data)

    def rename(self, src, dst):
        self.files[dst] = self.files.pop(src)


# ------------------------------------------------------------------------------ record edges
def test_an_empty_payload_is_a_valid_record():
    rec = storage.encode_record(4, b"")
    assert len(rec) == storage.HEAD_LEN  # a record exactly as long as its header
    assert storage.decode_record(4, rec) == b""
    s = storage.Store(MemFiles())
    s.save(4, b"")
    assert s.load(4) == b""


def test_a_payload_past_32_kib_round_trips():
    # length is a u16: 32 768..65 535 bytes are legal (a signed field would refuse them)
    payload = bytes(range(256)) * 160  # 40 960 bytes
    rec = storage.encode_record(7, payload)
    assert int.from_bytes(rec[6:8], "little") == len(payload)
    assert storage.decode_record(7, rec) == payload


# ---------------------------------------------------------------------------- refusal reasons
def _corrupt_reason(slot, data):
    with pytest.raises(storage.Corrupt) as e:
        storage.decode_record(slot, data)
    return str(e.value)


def test_decode_tells_the_reasons_apart():
    rec = storage.encode_record(1, b"abcdef")
    assert _corrupt_reason(1, None) == "short record"
    assert _corrupt_reason(1, rec[:storage.HEAD_LEN - 1]) == "short record"
    assert _corrupt_reason(1, b"PSPQ" + rec[4:]) == "bad header"
    assert _corrupt_reason(2, rec) == "bad header"  # another slot's record
    assert _corrupt_reason(1, rec + b"\x00") == "bad header"  # length mismatch
    assert _corrupt_reason(1, rec[:-1] + bytes((rec[-1] ^ 1,))) == "bad crc"


def test_store_refusal_messages():
    files = MemFiles()
    s = storage.Store(files)
    with pytest.raises(storage.Empty) as e:
        s.load(3)
    assert str(e.value) == "slot 3 is empty"
    for call in (lambda: s.save(storage.SLOTS, b"x"), lambda: s.save(-1, b"x"), lambda: s.load(storage.SLOTS),
                 lambda: s.load(-1)):
        with pytest.raises(storage.StorageError) as e:
            call()
        assert str(e.value) == "no such slot"
    files.lie = True  # the flash reads back something else: nothing is committed
    with pytest.raises(storage.StorageError) as e:
        s.save(3, b"payload")
    assert str(e.value) == "verify failed"
    assert "slot3.bin" not in files.files


def test_flash_errors_are_storage_errors_with_the_cause():
    class Broken(MemFiles):
        def write(self, name, data):
            raise OSError(28, "no space")

        def read(self, name):
            raise OSError(5, "EIO")

    s = storage.Store(Broken())
    with pytest.raises(storage.StorageError) as e:
        s.save(0, b"x")
    assert str(e.value) == "write failed: [Errno 28] no space"
    with pytest.raises(storage.Corrupt) as e:  # a read error is a Corrupt slot, not a TypeError
        s.load(0)
    assert str(e.value) == "read failed: [Errno 5] EIO"


# ---------------------------------------------------------------------------- names on flash
def test_save_writes_slotN_tmp_then_renames_it_to_slotN_bin():
    calls = []

    class Recording(MemFiles):
        def write(self, name, data):
            calls.append(("write", name))
            super().write(name, data)

        def rename(self, src, dst):
            calls.append(("rename", src, dst))
            super().rename(src, dst)

    files = Recording()
    storage.Store(files).save(5, b"abc")
    assert calls == [("write", "slot5.tmp"), ("rename", "slot5.tmp", "slot5.bin")]
    assert sorted(files.files) == ["slot5.bin"]


# ----------------------------------------------------------------------------------- OsFiles
def test_osfiles_root_is_the_directory_given_without_trailing_slashes(tmp_path):
    # checked before anything is written: a wrong root would write somewhere else
    d = tmp_path / "params"
    assert storage.OsFiles(str(d) + "/").root == str(d)
    assert storage.OsFiles(str(d) + "///").root == str(d)
    x = tmp_path / "PARAMX"  # a name ending in a character that is not a slash stays whole
    assert storage.OsFiles(str(x)).root == str(x)
    assert storage.OsFiles("/").root == "/"
    assert storage.OsFiles("//").root == "/"


def test_osfiles_saves_into_its_directory(tmp_path):
    d = tmp_path / "params"
    files = storage.OsFiles(str(d))
    assert files.root == str(d) and d.is_dir()
    storage.Store(files).save(3, b"abc")
    assert sorted(os.listdir(d)) == ["slot3.bin"]
    assert (d / "slot3.bin").read_bytes() == storage.encode_record(3, b"abc")
    assert files.read("nothing.bin") is None


class _RecFile:
    def __init__(self, log):
        self.log = log

    def write(self, data):
        self.log.append(("write", bytes(data)))

    def close(self):
        self.log.append(("close",))


class _RecFileFlush(_RecFile):
    def flush(self):
        self.log.append(("flush",))


@pytest.mark.parametrize("has_flush", [True, False])
@pytest.mark.parametrize("has_sync", [True, False])
def test_osfiles_write_flushes_closes_then_syncs(tmp_path, monkeypatch, has_flush, has_sync):
    """The record must be on the flash before rename: write, flush (where the file has one), close,
    then os.sync (where the port has one); a port without flush/sync must not fail."""
    log: list[tuple] = []
    files = storage.OsFiles(str(tmp_path))

    def fake_open(path, mode):
        log.append(("open", path, mode))
        return (_RecFileFlush if has_flush else _RecFile)(log)

    monkeypatch.setattr(storage, "open", fake_open, raising=False)
    if has_sync:
        monkeypatch.setattr(os, "sync", lambda: log.append(("sync",)), raising=False)
    else:
        monkeypatch.delattr(os, "sync", raising=False)
    files.write("slot1.tmp", b"rec")
    assert log == ([("open", str(tmp_path) + "/slot1.tmp", "wb"), ("write", b"rec")]
                   + ([("flush",)] if has_flush else []) + [("close",)]
                   + ([("sync",)] if has_sync else []))
