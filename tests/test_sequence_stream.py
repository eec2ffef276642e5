"""Custom sequences (issue 13 item 4), the stream: dma_chain.SequencePlan + Feeder over a fake control
ring, with a model of the DMA that reads the ring and the pool as the chip does (the control channel
reads slot i, the data channel then reads entry i's words; here at the LAST moment it may, right
before the control channel reads slot i + 1) and lags the Feeder by up to ``max_ahead`` entries.

Checked on the word stream the DMA read:
* every pulse starts exactly at its onset tick (cycle k: + k x cycle), with the train's pulse words,
  and the idle between pulses is exactly the rest (long gaps > 40 s included);
* every entry ends on an idle word; POS and NEG are never on in one word;
* the stream ends once, ``period - pulse`` ticks after the last pulse (played once, or the last
  cycle of a loop), or loops on;
* a pool entry is never rewritten while the DMA may still read it: every store into the pool is
  checked against the entries the DMA may read (from the one the data channel is transferring to the
  head), and every entry's words when the DMA reads them equal the words when the Feeder queued it;
* the Feeder never queues more than ``max_ahead`` entries ahead of the DMA.
"""

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from firmware import dma_chain as dc
from firmware import pulse_engine as pe
from firmware import seq_stream as ss
from firmware import sequence as seq
from firmware.limits import LIMITS
from protocol import params as P

US = 1_000
MS = 1_000_000
S = 1_000_000_000
T_S = 125_000_000  # ticks per second
PIN = pe.PIN_MASK


class FakeSource:
    """The contract's SequenceSource over lists (onset ticks within the cycle, code1)."""

    def __init__(self, onsets, codes=None, cycle_ticks=0, repeats=1):
        self.onsets = list(onsets)
        self.codes = list(codes) if codes is not None else [100] * len(self.onsets)
        self.pulses = len(self.onsets)
        self.cycle_ticks = cycle_ticks
        self.repeats = repeats if cycle_ticks else 1
        self.opened = 0

    def reader(self):
        self.opened += 1
        return FakeReader(self)


class FakeReader:
    def __init__(self, src):
        self.src = src
        self.k = 0
        self.closed = False

    def next(self):
        s = self.src
        c, j = divmod(self.k, s.pulses)
        if self.closed or (c > 0 and (not s.cycle_ticks or (s.repeats and c >= s.repeats))):
            return None
        self.k += 1
        return s.onsets[j] + c * s.cycle_ticks, s.codes[j]

    def close(self):
        self.closed = True


def make_train(shape=0, ph1=100 * US, ph2=100 * US, ip=0, rec=0, period=None):
    p = P.complete({"phase1_ns": ph1, "phase2_ns": ph2, "interphase_ns": ip, "recovery_ns": rec,
                    "shape": shape, "period_ns": 10 * MS, "amplitude_ua": 100})
    t = pe.build_train(p)
    pulse_ticks = t.realised["pulse"]
    min_period = pulse_ticks + max(pe.DEAD_TICKS, pe.OVERHEAD)
    p["period_ns"] = pe.ticks_to_ns(period if period is not None else min_period)
    t = pe.build_train(p)
    assert t.realised["pulse"] == pulse_ticks
    return t


class Guarded(list):
    """A pool array's words: every store is checked against the entries the DMA may still read."""

    def __init__(self, words, check, chunk):
        super().__init__(words)
        self.check = check
        self.chunk = chunk

    def __setitem__(self, i, v):
        self.check(self.chunk, i)
        super().__setitem__(i, v)


class Ring(list):
    """The control ring: a non-zero store snapshots the entry it points at (what the DMA must read)."""

    def __init__(self, n, on_store):
        super().__init__([0xDEAD] * n)  # garbage before load(): load() must write every slot it uses
        self.on_store = on_store

    def __setitem__(self, i, v):
        super().__setitem__(i, v)
        if v:
            self.on_store(i, v)


class Harness:
    BASE = 3  # the ring starts at a non-zero offset of its store (like the aligned ring in hal_rp2)

    def __init__(self, plan):
        self.plan = plan
        self.rl = dc.RING_LEN
        self.addr = {id(plan.idle): 0x20009000}
        for c, b in enumerate(plan.chunks):
            self.addr[id(b)] = 0x20001000 + 0x400 * c
        self.consumed = 0  # slots the control channel has read
        self.ended = False
        self.read = []  # words of every entry the data channel read, in order
        self.snap = {}  # ring slot -> the entry's words when it was queued
        for c, b in enumerate(plan.chunks):
            b.words = Guarded(b.words, self._pool_store, c)
        self.ring = Ring(self.rl + self.BASE, self._ring_store)
        self.feeder = dc.Feeder(self.ring, self.BASE, self.rl, lambda b: self.addr[id(b)])
        self.max_lead = 0
        self.violations = []

    def words_at(self, addr):
        p = self.plan.p
        if addr == self.addr[id(self.plan.idle)]:
            return list(self.plan.idle.words)
        off = (addr - 0x20001000) // 4
        c, off = divmod(off, ss.POOL_CHUNK * p)
        assert 0 <= c < len(self.plan.chunks) and off % p == 0, hex(addr)
        return list(self.plan.chunks[c].words[off:off + p])

    def _ring_store(self, i, v):
        self.snap[(i - self.BASE) % self.rl] = self.words_at(v)

    def _pool_store(self, c, i):
        """A store into entry i // P of pool array c: no entry the DMA may read (from consumed - 1,
        being transferred, to the head, not yet read) may point at it."""
        e = i // self.plan.p
        at = self.addr[id(self.plan.chunks[c])] + 4 * self.plan.p * e
        f = self.feeder
        for j in range(max(0, self.consumed - 1), f.head):
            v = self.ring[self.BASE + j % self.rl]
            if v == at:
                self.violations.append((c, e, j, self.consumed, f.head))

    def dma(self, n):
        """The DMA moves on by up to ``n`` control reads (never past the 0 at the head unless the
        stream has ended there)."""
        f = self.feeder
        for _ in range(n):
            if self.ended:
                return
            if self.consumed >= f.head and not f.finished:
                return  # the Feeder keeps up in this model: no underrun
            if self.consumed > 0:  # the data channel finished entry consumed - 1: its words, read now
                slot = (self.consumed - 1) % self.rl
                v = self.ring[self.BASE + slot]
                words = self.words_at(v)
                assert words == self.snap[slot], "entry %d changed after it was queued" % (self.consumed - 1)
                self.read.append(words)
            v = self.ring[self.BASE + self.consumed % self.rl]
            self.consumed += 1
            if v == 0:
                self.ended = True

    def run(self, rng, max_entries=None):
        f = self.feeder
        head = f.load(self.plan)
        assert head <= self.plan.max_ahead
        while not self.ended:
            if max_entries is not None and len(self.read) >= max_entries:
                break
            # the DMA lags: anything from nothing to everything queued
            self.dma(rng.choice([0, 1, 1, 2, 3, 7, 40, 200]))
            f.fill(self.consumed)
            self.max_lead = max(self.max_lead, f.head - self.consumed)
            assert f.head - self.consumed <= self.plan.max_ahead
        assert not self.violations, self.violations[:3]
        return self.read


def segments(entries):
    """(start tick, pins) of every level change of the stream, and its total ticks."""
    segs = []
    t = 0
    for words in entries:
        assert words[-1] & PIN == 0, "an entry ends on a drive word"
        for w in words:
            pins = w & PIN
            assert not (pins & pe.POS and pins & pe.NEG), "POS and NEG in one word"
            if not segs or segs[-1][1] != pins:
                segs.append((t, pins))
            t += dc.word_ticks(w)
    return segs, t


def expected(train, onsets, last_idle):
    """The same from the onsets and the train's pulse words."""
    segs = []
    t = 0
    for o in onsets:
        assert o >= t
        if o > t and (not segs or segs[-1][1] != 0):
            segs.append((t, 0))
        t = o
        for w in train.pulse:
            pins = w & PIN
            if not segs or segs[-1][1] != pins:
                segs.append((t, pins))
            t += dc.word_ticks(w)
    if segs[-1][1] != 0:
        segs.append((t, 0))
    return segs, t + last_idle


def play_onsets(src, n=None):
    r = src.reader()
    out = []
    while n is None or len(out) < n:
        x = r.next()
        if x is None:
            break
        out.append(x[0])
    return out


# ---- hypothesis: random onsets, gaps from the minimum to > 40 s ---------------------------------
shapes = st.fixed_dictionaries({
    "shape": st.sampled_from([0, 0, 1]),
    "ph1": st.integers(40, 300 * US), "ph2": st.integers(80, 300 * US),
    "ip": st.sampled_from([0, 0, 50 * US]), "rec": st.sampled_from([0, 0, 200 * US])})
gap_extra = st.one_of(st.just(0), st.integers(0, 100), st.integers(0, 3 * T_S),
                      st.integers(40 * T_S, 80 * T_S), st.just(dc.MAX_TICKS), st.integers(2 ** 28, 2 ** 28 + 200))
first_onset = st.one_of(st.just(0), st.integers(pe.OVERHEAD, 200), st.integers(200, 2 * T_S),
                        st.integers(30 * T_S, 70 * T_S))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.large_base_example])
@example({"shape": 0, "ph1": 100 * US, "ph2": 100 * US, "ip": 0, "rec": 0}, 0, [0] * 300, None, 0, random.Random(1))
@example({"shape": 1, "ph1": 100 * US, "ph2": 100 * US, "ip": 0, "rec": 200 * US}, 7, [45 * T_S, 0, 79], None, 0,
         random.Random(2))
@given(shapes, first_onset, st.lists(gap_extra, max_size=60), st.one_of(st.none(), st.integers(0, 2 * T_S)),
       st.sampled_from([1, 2, 3]), st.randoms(use_true_random=False))
def test_stream_onsets_exact(shape, first, extras, wrap_extra, repeats, rng):
    train = make_train(shape["shape"], shape["ph1"], max(shape["ph2"], shape["ph1"] // 8), shape["ip"], shape["rec"])
    period = train.period_ticks
    onsets = [first]
    for x in extras:
        onsets.append(onsets[-1] + period + x)
    cycle = 0
    if wrap_extra is not None:  # looped: the wrap interval (cycle - last + first) >= period too
        cycle = onsets[-1] - first + period + wrap_extra
    src = FakeSource(onsets, cycle_ticks=cycle, repeats=repeats)
    train.sequence = src
    plan = dc.plan_for(train)
    assert isinstance(plan, ss.SequencePlan)
    h = Harness(plan)
    entries = h.run(rng)
    assert h.ended
    played = play_onsets(src)
    assert len(played) == len(onsets) * (repeats if cycle else 1)
    got, total = segments(entries)
    want, want_total = expected(train, played, train.period_ticks - train.realised["pulse"])
    assert got == want
    assert total == want_total  # the stream ends period - pulse after the last pulse, once
    assert h.feeder.pulses_total == len(played)
    assert h.feeder.pulses_after(h.consumed - 1) == len(played)


def test_endless_loop_keeps_going_and_lags_up_to_max_ahead():
    """A loop played until stopped: the stream follows the cycle (onsets + k x cycle) for as long as
    the DMA reads, the Feeder is max_ahead entries ahead of a DMA that lags, and 1,000s of pool
    rewrites never touch an entry the DMA may read."""
    train = make_train()
    period = train.period_ticks
    onsets = [0, period, 3 * period, 3 * period + period + 17, 9 * period]
    src = FakeSource(onsets, cycle_ticks=12 * period, repeats=0)
    train.sequence = src
    plan = dc.plan_for(train)
    h = Harness(plan)
    entries = h.run(random.Random(5), max_entries=3000)
    assert not h.ended
    assert h.max_lead == plan.max_ahead  # the lag reached the bound and the Feeder held it
    got, _ = segments(entries)
    played = play_onsets(src, 3000 - 2)
    want, _ = expected(train, played, 0)
    assert got[:len(want) - 1] == want[:-1]


def test_fast_path_is_one_store_per_pulse():
    """A pulse whose idle fits its entry is one word store into a standard pool entry."""
    train = make_train()
    period = train.period_ticks
    onsets = [i * 2 * period + (i % 3) for i in range(400)]
    train.sequence = FakeSource(onsets)
    plan = dc.plan_for(train)
    stores = []
    h = Harness(plan)
    inner = h._pool_store

    def count(c, i):
        stores.append(i)
        inner(c, i)

    for b in plan.chunks:
        b.words.check = count
    h.run(random.Random(3))
    assert len(stores) == len(onsets)  # the template already holds the standard layout
    assert {i % plan.p for i in stores} == {plan.iv}


def test_real_sequence_source_round_trip():
    """SEQ-A's SequenceBuilder/SequenceSource (RAM records) through the plan: onsets from ns exact to
    the tick of the absolute onset."""
    params = P.complete({"phase1_ns": 100 * US, "phase2_ns": 100 * US, "period_ns": 1 * MS, "amplitude_ua": 2000,
                         "sequence_pulses": 5, "sequence_cycle_ns": 0})
    onsets_ns = [0, 1 * MS + 4, 2 * MS + 12, 40 * S + 3, 40 * S + 1 * MS + 7]
    amps = [100, 2000, 1500, 100, 700]
    from firmware.limits import LIMITS
    b = seq.SequenceBuilder(params, LIMITS, seq.RamRecords())
    assert b.check(0, onsets_ns, amps) is None
    b.add(0, onsets_ns, amps)
    train = pe.build_train(params)
    train.sequence = b.source()
    h = Harness(dc.plan_for(train))
    entries = h.run(random.Random(0))
    got, total = segments(entries)
    want, want_total = expected(train, [pe.ns_to_ticks(o) for o in onsets_ns], train.period_ticks - train.realised["pulse"])
    assert got == want and total == want_total


def test_plain_plan_unchanged():
    """plan_for gives the old Plan for a regular train (its fast path and unlimited lookahead)."""
    train = make_train(period=1 * MS // 8)
    plan = dc.plan_for(train)
    assert type(plan) is dc.Plan and not plan.jit and plan.max_ahead >= dc.RING_LEN
    assert isinstance(plan.cursor(), dc.Cursor)


def test_refusals():
    train = make_train()
    train.sequence = FakeSource([3, 1000])
    with pytest.raises(ValueError, match="below one segment"):
        dc.plan_for(train).cursor()
    train.sequence = FakeSource([0, train.realised["pulse"] + 10])
    h = Harness(dc.plan_for(train))
    with pytest.raises(ValueError, match="do not fit"):
        h.run(random.Random(0))


def test_pool_bounded():
    train = make_train()
    train.sequence = FakeSource([0])
    plan = dc.plan_for(train)
    assert plan.words() == ss.POOL_BLOCKS * dc.ENTRY_WORDS + dc.ENTRY_WORDS  # 8 KB + one shared idle entry
    assert len(plan.blocks) == ss.POOL_BLOCKS // ss.POOL_CHUNK + 1
    assert max(len(b.words) for b in plan.blocks) == ss.POOL_CHUNK * dc.ENTRY_WORDS  # 1 KB arrays


# ---- the same code under the MicroPython unix port ----------------------------------------------
MPY_SCRIPT = r'''
import json, sys
from firmware import pulse_engine as pe, dma_chain as dc, sequence as sq
from firmware.limits import LIMITS
from firmware.limits import LIMITS
from protocol import params as P
cfg = json.loads(sys.stdin.readline())
params = P.complete(cfg["params"])
t = pe.build_train(params)
b = sq.SequenceBuilder(params, LIMITS, sq.RamRecords())
b.add(0, cfg["onsets"], cfg["amps"])
t.sequence = b.source()
plan = dc.plan_for(t)
addr = {id(plan.idle): 0x20009000}
where = {}
for c in range(len(plan.chunks)):
    addr[id(plan.chunks[c])] = 0x20001000 + 0x400 * c
ring = [0] * dc.RING_LEN
f = dc.Feeder(ring, 0, dc.RING_LEN, lambda blk: addr[id(blk)])
f.load(plan)
out = []
consumed = 0
while True:
    v = ring[consumed % dc.RING_LEN]
    consumed += 1
    if v == 0:
        break
    if v == 0x20009000:
        out.extend(list(plan.idle.words))
    else:
        c, o = divmod((v - 0x20001000) // 4, 256)
        out.extend([plan.chunks[c].words[o + i] for i in range(plan.p)])
    if consumed % 5 == 0:
        f.fill(consumed)
w = pe.sequence_writer([t], [0])
ops = w.chunk(10000)
print(json.dumps([out, ops, list(pe.start_ops([t], [0])), f.pulses_total]))
'''


def _mpy_case():
    onsets = [0, 1 * MS, 2 * MS + 16, 3 * MS + 24, 45 * S + 8, 45 * S + 2 * MS, 50 * S, 50 * S + 1 * MS]
    amps = [300, 300, 1200, 1200, 100, 2000, 2000, 50]
    return {"params": {"phase1_ns": 100 * US, "phase2_ns": 50 * US, "period_ns": 1 * MS, "amplitude_ua": 2000,
                       "sequence_pulses": len(onsets), "polarity": 1}, "onsets": onsets, "amps": amps}


def _cpython_run(cfg):
    params = P.complete(cfg["params"])
    t = pe.build_train(params)
    b = seq.SequenceBuilder(params, LIMITS, seq.RamRecords())
    b.add(0, cfg["onsets"], cfg["amps"])
    t.sequence = b.source()
    h = Harness(dc.plan_for(t))
    entries = h.run(random.Random(1))
    words = [w for e in entries for w in e]
    ops = pe.sequence_writer([t], [0]).chunk(10000)
    return [words, ops, pe.start_ops([t], [0]), h.feeder.pulses_total]


@pytest.mark.mpy
def test_sequence_stream_and_writer_under_micropython():
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "mpy"))
    from mpyrun import micropython_binary, run_micropython

    if micropython_binary() is None:
        pytest.skip("micropython unix port not installed")
    cfg = _mpy_case()
    (line,) = run_micropython(MPY_SCRIPT, [json.dumps(cfg)])
    got = json.loads(line)
    want = _cpython_run(cfg)
    assert got == want
    assert want[3] == len(cfg["onsets"])
    assert len(want[1]) > 0
