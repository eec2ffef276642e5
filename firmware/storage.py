"""Parameter sets in flash: atomic, CRC-checked slots (SPEC §7 save/load).

Pure logic over a tiny file API, so the same code runs on the board (littlefs under ``/params``)
and on the host (the virtual Pico's file-backed flash in a directory, or an in-memory fake in tests).

A slot file is::

    magic "PSPS" | version u8 | slot u8 | length u16 LE | crc u16 LE | payload (length bytes)

with the CRC-16/CCITT-FALSE of ``version | slot | length | payload``. Saving writes the whole record
to ``slotN.tmp`` and then renames it over ``slotN.bin``; littlefs (and POSIX) renames are atomic, so
a power cut at any byte leaves either the previous record or the new one, never a mix. Loading
refuses a wrong magic, version, slot, length or CRC (``Corrupt``) and tells an empty slot apart
(``Empty``). A stale ``.tmp`` left by a cut is simply overwritten by the next save.

File API (duck-typed; :class:`OsFiles` is the real one):
    read(name) -> bytes or None     whole file, None if it does not exist
    write(name, data)               create/truncate and write (may stop part-way on a power cut)
    rename(src, dst)                atomic, replaces dst
"""

import struct

from protocol.crc16 import crc16

MAGIC = b"PSPS"
VERSION = 1
SLOTS = 8
_HEAD = "<4sBBHH"
HEAD_LEN = struct.calcsize(_HEAD)


class StorageError(Exception):
    """A slot could not be read or written."""


class Empty(StorageError):
    """Nothing saved in that slot."""


class Corrupt(StorageError):
    """The slot's record failed its magic/version/length/CRC check."""


def encode_record(slot, payload):
    payload = bytes(payload)
    crc = crc16(struct.pack("<BBH", VERSION, slot, len(payload)) + payload)
    return struct.pack(_HEAD, MAGIC, VERSION, slot, len(payload), crc) + payload


def decode_record(slot, data):
    """Payload of a record read from ``slot``; raises Corrupt."""
    if data is None or len(data) < HEAD_LEN:
        raise Corrupt("short record")
    magic, version, rslot, length, crc = struct.unpack(_HEAD, data[:HEAD_LEN])
    if magic != MAGIC or version != VERSION or rslot != slot or len(data) != HEAD_LEN + length:
        raise Corrupt("bad header")
    payload = bytes(data[HEAD_LEN:])
    if crc16(struct.pack("<BBH", version, rslot, length) + payload) != crc:
        raise Corrupt("bad crc")
    return payload


class Store:
    """``SLOTS`` slots of opaque payloads over a file API."""

    def __init__(self, files, slots=SLOTS):
        self.files = files
        self.slots = slots

    def _name(self, slot, ext):
        if not 0 <= slot < self.slots:
            raise StorageError("no such slot")
        return "slot%d.%s" % (slot, ext)

    def save(self, slot, payload):
        """Write atomically; returns the record's CRC. Raises StorageError if the flash refuses."""
        tmp = self._name(slot, "tmp")  # first: a slot out of range is a StorageError, not a struct.error
        record = encode_record(slot, payload)
        try:
            self.files.write(tmp, record)
            if self.files.read(tmp) != record:  # read back before committing: flash can lie
                raise StorageError("verify failed")
            self.files.rename(tmp, self._name(slot, "bin"))
        except OSError as e:
            raise StorageError("write failed: %s" % e)
        return struct.unpack("<H", record[HEAD_LEN - 2:HEAD_LEN])[0]

    def load(self, slot):
        """Payload saved in ``slot``; raises Empty or Corrupt."""
        try:
            data = self.files.read(self._name(slot, "bin"))
        except OSError as e:
            raise Corrupt("read failed: %s" % e)
        if data is None:
            raise Empty("slot %d is empty" % slot)
        return decode_record(slot, data)


class OsFiles:
    """The file API on ``os`` (MicroPython's littlefs on the board, any directory on the host)."""

    def __init__(self, root):
        import os

        self._os = os
        self.root = root.rstrip("/") or "/"
        try:
            os.mkdir(self.root)
        except OSError:
            pass  # exists

    def _path(self, name):
        return self.root + "/" + name

    def read(self, name):
        try:
            f = open(self._path(name), "rb")
        except OSError:
            return None
        try:
            return f.read()
        finally:
            f.close()

    def write(self, name, data):
        f = open(self._path(name), "wb")
        try:
            f.write(data)
            flush = getattr(f, "flush", None)
            if flush is not None:
                flush()
        finally:
            f.close()
        sync = getattr(self._os, "sync", None)
        if sync is not None:
            sync()

    def rename(self, src, dst):
        self._os.rename(self._path(src), self._path(dst))
