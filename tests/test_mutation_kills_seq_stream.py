"""firmware/seq_stream.py: the edges mutation testing (issue 15) found untested.

Checked on what the DMA reads (tests/test_sequence_stream.py's Harness: the Feeder over a model of
the control ring and the pool, every pool store checked against the entries the DMA may still read),
here with a DMA that lags the Feeder by the full ``max_ahead`` all the time (one entry read per top-up),
so a pool entry reused one entry too early shows at once:

* SequencePlan's bounds: P (the default, P = MIN_ENTRY_WORDS with exactly 2 idle words after the
  pulse, the refusals with their messages), the idle after the last pulse (exactly q x OVERHEAD
  accepted, one tick less refused; a period longer than an entry holds: capped at ``cap``),
  ``max_ahead`` = POOL_BLOCKS - 2 reached and never passed, ``tail_ticks`` = the last word's ticks;
* long idles split exactly (a first onset k x full + r for r around 0 and P x OVERHEAD), every word
  a valid 32-bit segment word (count <= COUNT_MAX);
* the pool across several wraps: pulse entries after a merged lead or after remainder entries are
  rewritten to the standard layout, then cost one store a pulse; the one-store fast path at both
  ends of the variable idle word's range; remainder entries at the pool's wrap;
* the refusals' messages name the pulse (also after a merged lead);
* SequenceCursor.entry() (Feeder.prepare_replace) hands out the same entries and pulse counts as
  run() (Feeder.load);
* SequenceWriter (the DAC ops): per boundary the wait(s) (two for a triphasic pulse) and, only when
  the next pulse's code differs, its (A, B) writes; bare waits after the last change dropped, none
  after the last pulse; chunks of at most CHUNK_BOUNDARIES; ``emitted``; ``done``; the lookahead per
  period; the update-idle refusal with field/value/limit/relation/message;
* varies(): the source's own flag without reading, else one pass over at most one cycle.
"""

from __future__ import annotations

import types

import pytest

from firmware import dac_bus
from firmware import dma_chain as dc
from firmware import pulse_engine as pe
from firmware import seq_stream as ss
from firmware.pio_programs import COUNT_MAX
from test_sequence_stream import T_S, FakeReader, FakeSource, Harness, expected, make_train, play_onsets, segments

OV = dc.OVERHEAD


class Steady:
    """The DMA model reads one entry per top-up: the Feeder stays max_ahead entries ahead."""

    def choice(self, options):
        return 1


class H(Harness):
    """The Harness with pool arrays spaced for any P."""

    def __init__(self, plan):
        super().__init__(plan)
        for c, b in enumerate(plan.chunks):
            self.addr[id(b)] = 0x20001000 + 4 * ss.POOL_CHUNK * plan.p * c


def words_ok(entries):
    for words in entries:
        for w in words:
            assert 0 <= w < 2 ** 32 and (w >> dc.SHIFT) <= COUNT_MAX, hex(w)


def play(train, onsets, p=0, cycle=0, repeats=1, stores=None):
    src = FakeSource(onsets, cycle_ticks=cycle, repeats=repeats)
    train.sequence = src
    plan = ss.SequencePlan(train, p)
    h = H(plan)
    if stores is not None:
        inner = h._pool_store

        def count(c, i):
            stores.append((c, i))
            inner(c, i)

        for b in plan.chunks:
            b.words.check = count
    entries = h.run(Steady())
    assert h.ended
    words_ok(entries)
    return plan, h, entries, src


def assert_exact(train, entries, src, last_idle):
    got, total = segments(entries)
    want, want_total = expected(train, play_onsets(src), last_idle)
    assert got == want
    assert total == want_total


# ------------------------------------------------------------------------------ the plan's bounds
def test_entry_words_default_minimum_and_refusals():
    train = make_train()
    train.sequence = FakeSource([0])
    assert ss.SequencePlan(train).p == dc.ENTRY_WORDS
    for p in (1, dc.MIN_ENTRY_WORDS - 1):
        with pytest.raises(ValueError, match=r"^%d words per entry do not outnumber the FIFO$" % p):
            ss.SequencePlan(train, p)
    fake = types.SimpleNamespace(pulse=[train.pulse[0]] * (dc.MIN_ENTRY_WORDS - 1), sequence=train.sequence,
                                 period_ticks=10 ** 6)
    with pytest.raises(ValueError, match=r"^a pulse of 8 words leaves less than 2 idle words in an entry of 9$"):
        ss.SequencePlan(fake, dc.MIN_ENTRY_WORDS)


def test_the_smallest_entry_with_two_idle_words_plays_exactly():
    train = make_train(shape=1, ip=50_000, rec=200_000)
    assert len(train.pulse) == dc.MIN_ENTRY_WORDS - 2
    period = train.period_ticks
    onsets = [0, period, 2 * period + 7, 3 * period + 3 * T_S, 4 * period + 3 * T_S]
    plan, h, entries, src = play(train, onsets, p=dc.MIN_ENTRY_WORDS)
    assert plan.p == dc.MIN_ENTRY_WORDS
    assert_exact(train, entries, src, period - train.realised["pulse"])


def test_the_idle_after_the_last_pulse_exactly_q_segments_and_one_tick_less():
    train = make_train()
    last = train.period_ticks - train.realised["pulse"]
    q = last // OV  # an entry of len(pulse) + q words leaves exactly q shortest idle words' room
    assert q * OV == last
    period = train.period_ticks
    onsets = [0, period, 3 * period]
    plan, h, entries, src = play(train, onsets, p=len(train.pulse) + q)
    assert plan.last_idle == last
    assert_exact(train, entries, src, last)
    with pytest.raises(ValueError, match=r"^period of %d ticks leaves too little idle after the pulse$" % period):
        ss.SequencePlan(train, len(train.pulse) + q + 1)


def test_a_period_longer_than_an_entry_holds_ends_the_stream_after_cap_ticks():
    train = make_train(period=3 * T_S)
    train.sequence = FakeSource([0])
    plan = ss.SequencePlan(train)
    cap = dc.MAX_TICKS + (plan.p - len(train.pulse) - 1) * OV  # the variable word + the shortest ones
    assert train.period_ticks - train.realised["pulse"] > cap
    onsets = [0, 3 * T_S + 7, 6 * T_S + 9]
    plan, h, entries, src = play(train, onsets)
    assert plan.last_idle == cap
    assert_exact(train, entries, src, cap)


def test_max_ahead_is_reached_and_the_tail_is_the_last_word():
    train = make_train()
    period = train.period_ticks
    onsets = [i * period + (i % 5) for i in range(400)]
    plan, h, entries, src = play(train, onsets)
    assert plan.max_ahead == ss.POOL_BLOCKS - 2
    assert h.max_lead == ss.POOL_BLOCKS - 2  # the lookahead the ARCHITECTURE promises (126 intervals)
    assert plan.tail_ticks == dc.word_ticks(entries[-1][-1]) == OV
    assert_exact(train, entries, src, period - train.realised["pulse"])


# ------------------------------------------------------------------------------ long idles
def test_long_idles_split_exactly_around_whole_shared_entries():
    train = make_train()
    period = train.period_ticks
    train.sequence = FakeSource([0])
    full = ss.SequencePlan(train).full
    pe_ov = dc.ENTRY_WORDS * OV
    for k in (1, 2):
        for r in (-1, 0, 1, 4, pe_ov - 1, pe_ov, pe_ov + 1):
            lead = k * full + r
            gap = k * full + r + period  # the same idle after a pulse
            onsets = [lead, lead + period, lead + period + gap, lead + 2 * period + gap]
            plan, h, entries, src = play(train, onsets)
            assert_exact(train, entries, src, period - train.realised["pulse"])
    # idles around the most a standard pulse entry holds (cap): the variable word at its top, then the
    # rest in a remainder entry (a word beyond COUNT_MAX would not fit the 32-bit array on the board)
    cap = ss.SequencePlan(train).cap
    onsets = [0]
    for extra in (-1, 0, 1, 3, 5, 6, 100, 0, 1):
        onsets.append(onsets[-1] + train.realised["pulse"] + cap + extra)
    plan, h, entries, src = play(train, onsets)
    assert_exact(train, entries, src, period - train.realised["pulse"])


# ------------------------------------------------------------------------------ the pool over wraps
def test_pulse_entries_after_remainders_are_rewritten_once_then_one_store_each():
    """P = len(pulse) + 25: the shortest interval leaves exactly q x OVERHEAD idle, so the variable
    word is at its minimum (OVERHEAD) in the fast path and in a full rewrite. A first onset of a
    shared entry + 10 ticks puts two remainder entries in pool entries 0 and 1; their next use (a
    pulse) rewrites them to the standard layout, later uses are one store; idles at the top of the
    variable word's range (cap) are one store too."""
    train = make_train()
    period = train.period_ticks
    last = period - train.realised["pulse"]
    p = len(train.pulse) + last // OV
    train.sequence = FakeSource([0])
    probe = ss.SequencePlan(train, p)
    lead = probe.full + 10
    n = 3 * ss.POOL_BLOCKS
    onsets = [lead]
    for i in range(1, n):
        gap = period if i % 7 else train.realised["pulse"] + probe.cap  # the variable word's bottom and top
        onsets.append(onsets[-1] + gap)
    stores = []
    plan, h, entries, src = play(train, onsets, p=p, stores=stores)
    assert_exact(train, entries, src, last)
    # 2 remainder entries (p words each), 2 pulse entries rewritten (p words each), 1 store per other pulse
    assert len(stores) == 2 * p + 2 * p + (n - 2)


def test_a_merged_lead_entry_is_rewritten_before_the_fast_path_uses_it():
    train = make_train()
    period = train.period_ticks
    onsets = [40]
    for i in range(1, 3 * ss.POOL_BLOCKS):
        onsets.append(onsets[-1] + period + (i % 3))
    plan, h, entries, src = play(train, onsets)
    assert_exact(train, entries, src, period - train.realised["pulse"])


def test_remainder_entries_at_the_pools_wrap():
    """Pulses alternating with idles longer than an entry holds (one remainder entry each): over
    several wraps the pool's entry 127 is a remainder entry, then entry 0 follows."""
    train = make_train()
    period = train.period_ticks
    train.sequence = FakeSource([0])
    cap = ss.SequencePlan(train).cap
    onsets = [40]
    for i in range(1, 400):
        onsets.append(onsets[-1] + (train.realised["pulse"] + cap + 100 if i % 2 else period + (i % 5)))
    plan, h, entries, src = play(train, onsets)
    assert len(entries) > 3 * ss.POOL_BLOCKS
    assert_exact(train, entries, src, period - train.realised["pulse"])
    assert h.feeder.pulses_total == len(onsets)


# ------------------------------------------------------------------------------ refusals name the pulse
def test_refusals_name_the_first_onset_and_the_pulse():
    train = make_train()
    period = train.period_ticks
    pulse = train.realised["pulse"]
    train.sequence = FakeSource([3, period])
    with pytest.raises(ValueError, match=r"^first onset of 3 ticks is below one segment \(5\)$"):
        ss.SequencePlan(train).cursor()
    for onsets, j in (([0, period, 2 * period, 2 * period + pulse + 10], 2),
                      ([40, 40 + period, 40 + 2 * period, 40 + 3 * period, 40 + 3 * period + pulse + 10], 3)):
        train.sequence = FakeSource(onsets)
        h = H(ss.SequencePlan(train))
        with pytest.raises(ValueError, match=r"^pulse %d: 10 ticks of idle after it do not fit$" % j):
            h.run(Steady())


# ------------------------------------------------------------------------------ entry() = run()
class Addresses:
    """addr_of for a Feeder: each buffer gets an address on first sight; words_at reads them back."""

    def __init__(self):
        self.at = []  # (address, block)
        self.next = 0x20000000

    def __call__(self, b):
        for a, blk in self.at:
            if blk is b:
                return a
        a = self.next
        self.at.append((a, b))
        self.next += 4 * len(b.words) + 0x100
        return a

    def words_at(self, addr, p):
        for a, blk in self.at:
            if a <= addr < a + 4 * len(blk.words):
                off = (addr - a) // 4
                return list(blk.words[off:off + p])
        raise AssertionError(hex(addr))


def replace_entries(train, onsets, n=ss.POOL_BLOCKS - 2):
    rl = dc.RING_LEN
    fb = dc.Feeder([0] * (rl + 3), 3, rl, Addresses())
    fb.load(dc.Plan(make_train(), p=dc.ENTRY_WORDS))
    train.sequence = FakeSource(onsets)
    fb.prepare_replace(ss.SequencePlan(train), n)
    vals, dones = fb.staged
    return fb, [fb.addr_of.words_at(v, dc.ENTRY_WORDS) for v in vals], dones


def test_a_replace_stages_the_entries_and_pulse_counts_a_load_writes():
    train = make_train()
    period = train.period_ticks
    pulse = train.realised["pulse"]
    train.sequence = FakeSource([0])
    cap = ss.SequencePlan(train).cap
    onsets = [40, 40 + period, 40 + 2 * period + 3, 40 + 2 * period + 3 + pulse + cap + 100]
    onsets += [onsets[-1] + period, onsets[-1] + period + 41 * T_S + 7]
    onsets += [onsets[-1] + period + i * (period + 1) for i in range(1, 30)]
    rl = dc.RING_LEN
    addr = Addresses()
    fa = dc.Feeder([0] * (rl + 3), 3, rl, addr)
    train.sequence = FakeSource(onsets)
    head = fa.load(ss.SequencePlan(train))
    assert fa.finished and head < ss.POOL_BLOCKS - 2
    load_words = [addr.words_at(fa.ring[3 + i], dc.ENTRY_WORDS) for i in range(head)]
    load_cum = [fa.cum[i] for i in range(head)]
    fb, words, dones = replace_entries(train, onsets)
    assert fb.finished
    assert words == load_words
    cum, t = [], 0
    for d in dones:
        t += d
        cum.append(t)
    assert cum == load_cum and t == len(onsets)
    with pytest.raises(ValueError, match=r"^pulse 2: 10 ticks of idle after it do not fit$"):
        replace_entries(train, [0, period, 2 * period, 2 * period + pulse + 10])


# ------------------------------------------------------------------------------ SequenceWriter
def writer_train(codes, onsets=None, shape=0, period=None):
    if period is None:  # the shortest period with the DAC update idle, and some more
        period = make_train(shape=shape).realised["pulse"] + dac_bus.min_idle_ticks(1) + 1000
    train = make_train(shape=shape, period=period)
    if onsets is None:
        onsets = [i * train.period_ticks for i in range(len(codes))]
    train.sequence = FakeSource(onsets, codes)
    return train


def boundary_ops(train, ch, codes, j):
    """Restated: the ops of boundary j (the end of pulse j): its waits, then pulse j + 1's writes when
    its code differs from pulse j's."""
    if train.shape == pe.TRIPHASIC:
        waits = [dac_bus.wait_op(pe.main_pin(train, ch)), dac_bus.wait_op(pe.phase2_pin(train, ch))]
    else:
        waits = [dac_bus.wait_op(pe.phase2_pin(train, ch))]
    if codes[j + 1] == codes[j]:
        return waits
    a, b = pe._codes(train, codes[j + 1])
    return waits + [dac_bus.code_write_op(ch, False, a), dac_bus.code_write_op(ch, True, b)]


@pytest.mark.parametrize("shape", [0, 1])
def test_writer_ops_only_on_a_change_chunk_by_chunk(shape):
    codes = [100, 100, 200, 200, 50, 300, 300, 300, 300]
    train = writer_train(codes, shape=shape)
    ch = 2
    w = ss.SequenceWriter(train, ch)
    assert w.channels == [ch] and not w.done
    got = []
    for size, boundaries in ((1, [0]), (1, [1]), (2, [2, 3]), (3, [4, 5, 6]), (9, [])):
        ops = w.chunk(size)
        want = [op for j in boundaries for op in boundary_ops(train, ch, codes, j)]
        assert ops == want, (size, boundaries)
        got.append(ops)
    # the last chunk: boundary 7 is a bare wait after the last change (dropped), no wait after pulse 8
    assert w.emitted == len(codes) - 1
    assert w.done
    assert w.chunk(5) == [] and w.emitted == len(codes) - 1


def test_writer_drops_the_bare_waits_of_a_chunk_without_a_change_at_the_end():
    codes = [100, 200, 200, 200]
    train = writer_train(codes)
    w = ss.SequenceWriter(train, 0)
    assert w.chunk(1) == boundary_ops(train, 0, codes, 0)
    assert w.chunk(10) == [] and w.done and w.emitted == 3


def test_writer_chunks_hold_at_most_chunk_boundaries():
    codes = [100 + (i % 2) for i in range(300)]
    train = writer_train(codes)
    w = ss.SequenceWriter(train, 1)
    ops = w.chunk(1000)
    assert w.emitted == ss.CHUNK_BOUNDARIES
    assert ops == [op for j in range(ss.CHUNK_BOUNDARIES) for op in boundary_ops(train, 1, codes, j)]
    ops = w.chunk(5)
    assert w.emitted == ss.CHUNK_BOUNDARIES + 5
    assert ops == [op for j in range(ss.CHUNK_BOUNDARIES, ss.CHUNK_BOUNDARIES + 5)
                   for op in boundary_ops(train, 1, codes, j)]


def test_writer_lookahead_per_period():
    for period, want in ((250_000, ss.CHUNK_BOUNDARIES),  # 2 ms: 500 boundaries a second, capped
                         (1_250_000, 100),  # 10 ms: exactly 100 in a second
                         (1_250_001, 100),  # one tick more: still 100 (ceil)
                         (1_300_000, 97),
                         (T_S, pe.RAMP_CHUNK_MIN)):  # 1 s: the minimum
        w = ss.SequenceWriter(writer_train([1, 2], period=period), 0)
        b = w.lookahead()
        assert type(b) is int and b == want, period
        assert b == min(ss.CHUNK_BOUNDARIES, max(pe.RAMP_CHUNK_MIN, -(-pe.RAMP_LOOKAHEAD_TICKS // period)))


def test_writer_needs_the_dac_update_idle_after_every_pulse():
    base = make_train()
    pulse = base.realised["pulse"]
    need = pulse + dac_bus.min_idle_ticks(1)
    ss.SequenceWriter(writer_train([1, 2], period=need), 0)  # exactly the idle: accepted
    with pytest.raises(pe.Unrealisable) as e:
        ss.SequenceWriter(writer_train([1, 2], period=need - 1), 0)
    v = e.value
    assert (v.field, v.value, v.limit, v.relation) == ("period_ns", pe.ticks_to_ns(need - 1),
                                                       pe.ticks_to_ns(need), ">=")
    assert str(v) == "period_ns: a sequence whose amplitude varies needs the DAC update idle after every pulse"


# ------------------------------------------------------------------------------ varies()
class CountingSource(FakeSource):
    def reader(self):
        self.last = FakeReader(self)
        self.opened += 1
        return self.last


def test_varies_uses_the_sources_flag_without_reading():
    for flag in (True, False, 0, 1):
        train = make_train()
        src = CountingSource([0, 1000], [5, 6])
        src.varies = flag
        train.sequence = src
        assert ss.varies(train) is bool(flag)
        assert src.opened == 0


def test_varies_scans_one_cycle_at_most():
    cases = (([5, 5, 5, 5], 0, False), ([5, 5, 5, 6], 0, True), ([5, 6, 6, 6], 0, True),
             ([5, 5, 6, 5], 0, True), ([7], 0, False), ([5, 5, 5, 5], 10 ** 6, False),
             ([5, 5, 5, 6], 10 ** 6, True))
    for codes, cycle, want in cases:
        train = make_train()
        src = CountingSource([i * 1000 for i in range(len(codes))], codes, cycle_ticks=cycle, repeats=0)
        train.sequence = src
        assert ss.varies(train) is want, (codes, cycle)
        assert src.opened == 1 and src.last.closed
        assert src.last.k <= len(codes) + 1  # a loop until stopped: one cycle (and the next pulse), not more
