"""firmware/sequence.py: the edges mutation testing (issue 15) found untested.

Pinned here, each through what a caller sees (records read back, a reader's pulses, a Violation's
field/value/limit/relation, the storage's reads and file handles):

* the record stores' API: RamRecords.write_at drops what follows a rewrite, read_into copies a
  partial tail and returns 0 at the end (FileRecords the same); FileRecords reopens its file for a
  write after close() (the retry path) and keeps what is there; every write handle is closed when an
  upload completes or the next upload starts, the read handle when the upload is discarded; the
  store's file names (one slash, the root "/"), one records object per channel;
* a reader over records that end early (storage failed) or with a truncated last record plays the
  whole records only, then ends for good without reading the storage again;
* a short loop is read from the storage once (the whole cycle stays in the reader's buffer), a seek
  inside the buffer reads nothing, a seek after another seek or after close() is right, a seek past
  the last cycle of a finite loop ends the reader (the controller's monitor seeks there);
* SequenceBuilder: cycles for a duration one ns past a whole number of cycles, the out-of-order
  message, a failed write of a restart leaves 0 pulses received (not the old count), a chunk that
  starts at pulse 1 keeps pulse 0 as the first (its onset for the wrap rule, its code for "varies"),
  a looped first onset exactly at max_duration_ns;
* sequence_violation's refusals with their value, limit and relation (a negative onset included).
"""

from __future__ import annotations

import builtins
import struct

import pytest

from firmware import pulse_engine as E
from firmware import sequence as S
from firmware.limits import LIMITS
from protocol import messages as M
from protocol import params as P

MS = 1_000_000
LIM = LIMITS["min_sequence_interval_ns"]


def seq_params(n=3, period=LIM, amp=2000, cycle=0, **kw):
    return P.complete(dict({"sequence_pulses": n, "period_ns": period, "amplitude_ua": amp,
                            "sequence_cycle_ns": cycle}, **kw))


def upload(p, onsets, amps, records, chunk=M.SEQUENCE_CHUNK):
    b = S.SequenceBuilder(p, LIMITS, records)
    for first in range(0, len(onsets), chunk):
        sl = slice(first, first + chunk)
        assert b.check(first, onsets[sl], amps[sl]) is None
        b.add(first, onsets[sl], amps[sl])
    return b


def vt(v):
    return None if v is None else (v.field, v.value, v.limit, v.relation)


class Counting:
    """A records object that counts the storage reads of the records it wraps."""

    def __init__(self, inner):
        self.inner = inner
        self.reads = 0

    def read_into(self, offset, mv):
        self.reads += 1
        return self.inner.read_into(offset, mv)


class Opened:
    """``open`` for firmware/sequence.py that keeps every file it opened (so none is closed by the
    garbage collector: a handle the code forgets stays open and shows)."""

    def __init__(self):
        self.files = []

    def __call__(self, path, mode="r"):
        f = builtins.open(path, mode)
        self.files.append((mode, f))
        return f

    def open_handles(self, kind):
        return [m for m, f in self.files if kind in m and not f.closed]


# ------------------------------------------------------------------------------ record stores
def test_ram_records_rewrite_drops_the_rest_and_read_into_copies_the_tail():
    r = S.RamRecords()
    r.write_at(0, b"0123456789")
    r.write_at(10, b"abcdefghij")
    r.write_at(5, b"XY")  # a rewrite below the size drops everything after it
    buf = bytearray(20)
    assert r.read_into(0, memoryview(buf)) == 7 and bytes(buf[:7]) == b"01234XY"
    assert r.read_into(3, memoryview(buf)) == 4 and bytes(buf[:4]) == b"34XY"  # less than asked, from offset
    assert r.read_into(6, memoryview(buf)[:3]) == 1 and buf[0:1] == b"Y"  # one byte left
    assert r.read_into(2, memoryview(buf)[:2]) == 2 and bytes(buf[:2]) == b"23"  # more left than asked
    assert r.read_into(7, memoryview(buf)) == 0  # at the end
    assert r.read_into(9, memoryview(buf)) == 0  # beyond it


def test_file_records_read_into_agrees_with_ram(tmp_path):
    data = bytes(range(35))
    f = S.FileRecords(str(tmp_path / "d"), str(tmp_path / "d" / "r.bin"))
    f.reset()
    f.write_at(0, data)
    f.finish()
    r = S.RamRecords()
    r.write_at(0, data)
    for off, size in ((0, 40), (30, 10), (34, 3), (35, 4), (40, 4)):
        a, b = bytearray(size), bytearray(size)
        assert f.read_into(off, memoryview(a)) == r.read_into(off, memoryview(b)) == max(0, min(size, 35 - off))
        assert a == b
    f.close()


def test_file_records_write_after_close_reopens_and_keeps_what_is_there(tmp_path):
    """The retry path: a write handle closed after a write (a failed write) is reopened without
    truncating the file, and the write lands at its position."""
    f = S.FileRecords(str(tmp_path / "d"), str(tmp_path / "d" / "r.bin"))
    f.reset()
    f.write_at(0, b"A" * 10)
    f.close()
    f.write_at(10, b"B" * 10)
    f.write_at(5, b"C" * 5)
    f.finish()
    assert (tmp_path / "d" / "r.bin").read_bytes() == b"A" * 5 + b"C" * 5 + b"B" * 10
    buf = bytearray(20)
    assert f.read_into(0, memoryview(buf)) == 20 and bytes(buf) == b"A" * 5 + b"C" * 5 + b"B" * 10
    f.close()


def test_file_uploads_close_every_handle(tmp_path, monkeypatch):
    """A complete upload closes its write handle (its data is then in the file), a discard closes the
    read handle, and an upload that replaces an unfinished one closes the old write handle first (a
    forgotten handle would flush its stale buffer over the new file when collected)."""
    opened = Opened()
    monkeypatch.setattr(S, "open", opened, raising=False)
    store = S.FileStore(str(tmp_path / "seq"))
    n = 40
    onsets = [i * LIM for i in range(n)]
    amps = [1 + i for i in range(n)]
    b = upload(seq_params(n=n), onsets, amps, store.records(1))
    assert b.complete and opened.open_handles("w") == []
    raw = (tmp_path / "seq" / "seq1.bin").read_bytes()
    assert [struct.unpack_from("<QH", raw, 10 * i) for i in range(n)] == [
        (E.ns_to_ticks(o), E.dac_code(a)) for o, a in zip(onsets, amps)]
    r = b.source().reader()
    assert r.next() == (0, E.dac_code(1))
    assert len(opened.open_handles("r")) == 1
    b.discard()
    assert opened.open_handles("r") == []
    # new parameters, a new upload over the completed one (SET_PARAMS keeps the channel's records)
    b2 = upload(seq_params(n=2), [0, LIM], [7, 8], store.records(1))
    assert b2.complete and opened.open_handles("w") == []
    assert (tmp_path / "seq" / "seq1.bin").read_bytes() == struct.pack(
        "<QHQH", 0, E.dac_code(7), E.ns_to_ticks(LIM), E.dac_code(8))
    # an unfinished upload on channel 0, then new parameters and a complete upload there
    b3 = S.SequenceBuilder(seq_params(n=40), LIMITS, store.records(0))
    b3.add(0, onsets[:20], amps[:20])
    assert len(opened.open_handles("w")) == 1
    b3.discard()
    b4 = upload(seq_params(n=1), [0], [5], store.records(0))
    assert b4.complete and opened.open_handles("w") == []
    assert (tmp_path / "seq" / "seq0.bin").read_bytes() == struct.pack("<QH", 0, E.dac_code(5))


def test_store_file_names_and_one_records_object_per_channel(tmp_path):
    root = str(tmp_path / "seqX")
    store = S.FileStore(root + "/")
    assert store.root == root
    assert store.records(0).path == root + "/seq0.bin"
    assert store.records(2).path == root + "/seq2.bin"
    top = S.FileStore("/")  # the root directory itself ("//seq3.bin": littlefs and POSIX read "//" as "/")
    assert top.root == "/" and top.records(3).path.lstrip("/") == "seq3.bin"
    upload(seq_params(n=1), [0], [5], store.records(2))
    assert (tmp_path / "seqX" / "seq2.bin").read_bytes() == struct.pack("<QH", 0, E.dac_code(5))
    ram = S.RamStore()
    upload(seq_params(n=1), [0], [9], ram.records(1))
    upload(seq_params(n=1), [0], [3], ram.records(2))
    for ch, amp in ((1, 9), (2, 3)):  # each channel's records, found again by its number
        r = S.SequenceSource(ram.records(ch), 1, 0, 1).reader()
        assert r.next() == (0, E.dac_code(amp)) and r.next() is None


# ------------------------------------------------------------------------------ readers
def records_of(onsets, codes):
    r = S.RamRecords()
    r.write_at(0, b"".join(struct.pack("<QH", o, c) for o, c in zip(onsets, codes)))
    return r


def test_records_that_end_early_play_what_is_there_then_end_for_good():
    onsets = [i * 1000 for i in range(35)]
    codes = [10 + i for i in range(35)]
    rec = Counting(records_of(onsets, codes))
    r = S.SequenceSource(rec, 40, 0, 1).reader()  # 40 pulses announced, 35 stored
    assert [r.next() for _ in range(35)] == list(zip(onsets, codes))
    assert r.next() is None
    reads = rec.reads
    rec.inner.write_at(350, struct.pack("<QH", 99999, 1))  # the storage would now have one more
    assert r.next() is None and r.next() is None
    assert rec.reads == reads  # ended: the storage is not read again


def test_a_truncated_last_record_is_not_played():
    raw = struct.pack("<QHQH", 0, 5, 800, 6) + struct.pack("<QH", 1600, 7)[:5]
    rec = S.RamRecords()
    rec.write_at(0, raw)
    r = S.SequenceSource(rec, 3, 0, 1).reader()
    assert [r.next(), r.next(), r.next()] == [(0, 5), (800, 6), None]


def test_a_short_loop_is_read_once_and_every_cycle_starts_at_pulse_0():
    p = seq_params(n=3, amp=300, cycle=8 * MS)
    b = upload(p, [0, LIM, 5 * MS], [100, 200, 300], S.RamRecords())
    rec = Counting(b.records)
    src = S.SequenceSource(rec, 3, b.cycle_ticks, 0)
    r = src.reader()
    cyc = E.ns_to_ticks(8 * MS)
    want = [(E.ns_to_ticks(o) + k * cyc, E.dac_code(a)) for k in range(100)
            for o, a in zip([0, LIM, 5 * MS], [100, 200, 300])]
    assert [r.next() for _ in range(300)] == want
    assert rec.reads == 1  # the whole cycle stays in the reader's buffer


def test_seek_inside_the_buffer_reads_nothing_and_seeks_compose():
    n = 40
    onsets = [i * 1000 for i in range(n)]
    codes = [100 + i for i in range(n)]
    rec = Counting(records_of(onsets, codes))
    src = S.SequenceSource(rec, n, 0, 1)
    r = src.reader()
    assert r.next() == (0, 100) and rec.reads == 1  # records 0..31 in the buffer
    for k in (0, 31, 7, 0):
        r.seek(k)
        assert r.next() == (onsets[k], codes[k])
    assert rec.reads == 1
    r.seek(32)
    assert r.next() == (onsets[32], codes[32]) and rec.reads == 2
    fresh = src.reader()
    fresh.seek(5)
    fresh.seek(0)
    assert fresh.next() == (0, 100)
    closed = src.reader()
    closed.close()
    assert closed.next() is None
    closed.seek(0)  # a seek positions any reader, a closed one too
    assert closed.next() == (0, 100)


def test_seek_past_the_last_cycle_of_a_finite_loop_ends():
    p = seq_params(n=2, amp=300, cycle=8 * MS, train_duration_ns=3 * 8 * MS)
    b = upload(p, [0, LIM], [100, 200], S.RamRecords())
    src = b.source()
    assert src.repeats == 3 and src.total() == 6
    r = src.reader()
    r.seek(5)
    assert r.next() == (E.ns_to_ticks(LIM) + 2 * E.ns_to_ticks(8 * MS), E.dac_code(200))
    assert r.next() is None
    for k in (6, 7, 13):
        r.seek(k)
        assert r.next() is None, k


# ------------------------------------------------------------------------------ the builder
def test_cycles_for_a_duration_just_past_whole_cycles():
    cyc = 8 * MS
    for dur, cycles in ((3 * cyc - 1, 3), (3 * cyc, 3), (3 * cyc + 1, 4), (0, 0)):
        b = S.SequenceBuilder(seq_params(n=2, cycle=cyc, train_duration_ns=dur), LIMITS, S.RamRecords())
        assert b.repeats() == cycles, dur


def test_a_chunk_out_of_order_names_both_counts():
    b = S.SequenceBuilder(seq_params(n=40), LIMITS, S.RamRecords())
    b.add(0, [0, LIM], [5, 5])
    with pytest.raises(ValueError, match=r"^chunk at pulse 5, 2 received$"):
        b.add(5, [9 * LIM], [5])
    assert b.received == 2


class FailingWrites(S.RamRecords):
    fail = False

    def write_at(self, offset, data):
        if self.fail:
            raise OSError(5, "EIO")
        super().write_at(offset, data)


def test_a_failed_restart_leaves_no_pulse_received():
    """A restart at pulse 0 resets the records before writing: when the write fails, 0 pulses count as
    received (the old upload is gone), so the next chunk must be pulse 0 again."""
    rec = FailingWrites()
    b = upload(seq_params(n=3), [0, LIM, 2 * LIM], [5, 6, 7], rec)
    assert b.complete
    rec.fail = True
    with pytest.raises(OSError):
        b.add(0, [0, LIM], [5, 6])
    assert b.received == 0 and not b.complete
    rec.fail = False
    with pytest.raises(ValueError):
        b.add(2, [2 * LIM], [7])


def test_a_chunk_from_pulse_1_keeps_pulse_0_as_the_first():
    """Chunks [0], [1..5], [6]: pulse 0 stays the first for the loop's wrap rule and for "varies"."""
    cyc = 20 * LIM
    p = seq_params(n=7, amp=300, cycle=cyc)
    onsets = [0, 3 * LIM, 5 * LIM, 7 * LIM, 9 * LIM, 11 * LIM, cyc - LIM]
    amps = [100, 200, 200, 200, 200, 200, 200]
    b = S.SequenceBuilder(p, LIMITS, S.RamRecords())
    b.add(0, onsets[:1], amps[:1])
    assert b.check(1, onsets[1:6], amps[1:6]) is None
    b.add(1, onsets[1:6], amps[1:6])
    late = cyc - LIM + E.ticks_to_ns(1)  # the wrap interval one tick below the period
    want = vt(S.sequence_violation(p, LIMITS, onsets[:6] + [late], amps))
    assert want == ("onset_ns", late, cyc - LIM, "<=")
    assert vt(b.check(6, [late], [200])) == want
    b.add(6, onsets[6:], amps[6:])
    assert b.complete and (b.code_min, b.code_max) == (E.dac_code(100), E.dac_code(200))
    assert b.source().varies is True


def test_a_looped_first_onset_at_max_duration_is_accepted():
    big = LIMITS["max_duration_ns"]
    p = seq_params(n=1, cycle=big)
    assert P.validate(p, LIMITS) is None
    assert S.sequence_violation(p, LIMITS, [big], [5]) is None
    assert vt(S.sequence_violation(p, LIMITS, [big + 1], [5])) == ("onset_ns", big + 1, big, "<=")


# ------------------------------------------------------------------------------ sequence_violation
def test_sequence_violation_refusals_with_value_limit_relation():
    p = seq_params(n=2)
    assert vt(S.sequence_violation(P.complete({}), LIMITS, [0], [5])) == ("sequence_pulses", 0, 1, ">=")
    assert vt(S.sequence_violation(p, LIMITS, [0, LIM], [5, 5, 5])) == ("sequence_amplitude_ua", 3, 2, "<=")
    assert vt(S.sequence_violation(p, LIMITS, [0, LIM], [5])) == ("sequence_amplitude_ua", 1, 2, ">=")
    assert vt(S.sequence_violation(p, LIMITS, [0], [5])) == ("sequence_pulses", 1, 2, ">=")
    assert vt(S.sequence_violation(p, LIMITS, [0, LIM, 2 * LIM], [5, 5, 5])) == ("sequence_pulses", 3, 2, "<=")
    # a negative onset is not a whole non-negative number of ns (it would round to tick 0)
    assert vt(S.sequence_violation(p, LIMITS, [-3, LIM], [5, 5])) == ("onset_ns", -3, 0, "integer")
    assert vt(S.sequence_violation(p, LIMITS, [0, 2.5 * LIM], [5, 5])) == ("onset_ns", 2.5 * LIM, 0, "integer")
    assert vt(S.sequence_violation(p, LIMITS, [0, LIM], [5, -3])) == ("sequence_amplitude_ua", -3, 0, "integer")
    assert vt(S.sequence_violation(p, LIMITS, [0, LIM], [2.5, 5])) == ("sequence_amplitude_ua", 2.5, 0, "integer")
