"""Long legal durations and ring-entry boundaries (issue 10, items 6 and 2).

* Every legal parameter set, up to the corners of firmware/limits.py (24 h periods, interbursts,
  delays and trains, 10 000-pulse bursts), builds into a Train and a DMA feed Plan of bounded size:
  a budget in DMA words (what the HAL allocates as ``array('I')`` buffers) and in bytes (CPython's
  tracemalloc peak while building: every object built, a conservative stand-in for the board's
  heap; the board figure under MicroPython is in tests/test_memory_budget.py and BENCHMARKS.md).
* Every ring-entry boundary comes after an idle word and no entry holds part of a pulse, so a
  stream that ends at an entry boundary (stop, CPU lag) never cuts a pulse; the Plan plays the
  engine's waveform tick for tick.
* replace() on a stream whose old train had long idle (a large P before) does not raise.
"""

import tracemalloc

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from rp2_fakes import load_board_hal, unload_board_hal

from firmware import dma_chain as dc
from firmware import pulse_engine as pe
from firmware.limits import LIMITS
from protocol import params as P

US = 1_000
MS = 1_000_000
DAY = LIMITS["max_duration_ns"]  # 24 h
# Budgets per channel. DMA words: a cycle is at most two distinct groups (burst + last), each at most
# three entries of P = 16 words, plus a lead of at most three entries and the one shared idle entry:
# 10 entries. Bytes: CPython peak while building (ints are 28-32 bytes there, 4 on the board).
PLAN_WORDS_BUDGET = 160
TRAIN_BYTES_BUDGET = 8 * 1024
PLAN_BYTES_BUDGET = 16 * 1024

CORNERS = {
    "phase1_ns": [40, 200 * US, 10 * MS],
    "interphase_ns": [0, 40, 10 * MS],
    "phase2_ns": [40, 200 * US, 10 * MS],
    "recovery_ns": [0, 40, 100 * MS],
    "period_ns": [100 * US, 1_000 * MS, 3_600_000 * MS, DAY],
    "burst_pulses": [0, 1, 2, 10, LIMITS["max_burst_pulses"]],
    "interburst_ns": [0, 40, 3_600_000 * MS, DAY],
    "train_duration_ns": [0, 1, 10_800_000 * MS, DAY],
    "train_delay_ns": [0, 40, 1 * US, 100 * US, DAY],
    "polarity": [0, 1],
    "trigger": [0, 1, 3],
}
WORST = dict(P.complete({}), phase1_ns=40, phase2_ns=10 * MS, period_ns=DAY, burst_pulses=LIMITS["max_burst_pulses"],
             interburst_ns=DAY, train_duration_ns=DAY, train_delay_ns=DAY)


def legal_train(p):
    """The Train of a parameter set the firmware accepts, or None (refused by validate or by the
    engine as unrealisable)."""
    if P.validate(p, LIMITS) is not None:
        return None
    try:
        return pe.build_train(p)
    except pe.Unrealisable:
        return None


def segments(words, out=None):
    """Words -> [[ticks, pins]] with consecutive equal pins merged (what a capture sees)."""
    out = [] if out is None else out
    for w in words:
        t, pins = pe.decode_word(w)
        if out and out[-1][1] == pins:
            out[-1][0] += t
        else:
            out.append([t, pins])
    return out


def strip_idle(segs):
    i, j = 0, len(segs)
    while i < j and segs[i][1] == pe.IDLE:
        i += 1
    while j > i and segs[j - 1][1] == pe.IDLE:
        j -= 1
    return segs[i:j]


def pulse_pattern(train):
    """One pulse as merged segments, from the engine's first group (host view) without its idle."""
    return strip_idle(segments(pe.cycle_groups(train)[0]))


def check_entries(plan, block, pattern, checked):
    """Every entry of ``block`` ends on an idle word and holds either no drive state or exactly one
    whole pulse (leading and trailing idle aside)."""
    if id(block) in checked:
        return
    p = plan.p
    assert len(block.words) % p == 0
    for e in range(len(block.words) // p):
        entry = block.words[e * p:(e + 1) * p]
        assert entry[-1] & pe.PIN_MASK == pe.IDLE, "entry %d ends inside a pulse" % e
        inner = strip_idle(segments(entry))
        assert inner == [] or inner == pattern, "entry %d holds part of a pulse: %r" % (e, inner)
    checked.add(id(block))


def merged(segs):
    out: list = []
    for t, pins in segs:
        if t == 0:
            continue
        if out and out[-1][1] == pins:
            out[-1][0] += t
        else:
            out.append([t, pins])
    return out


def idle_entry_ticks(plan):
    return pe.words_ticks(plan.idle.words) if plan.idle is not None else 0


def check_layout(train):
    """Cheap, whatever the durations: every block's entries end idle and hold no partial pulse, and
    each run of the Plan (block + k shared idle entries, count) is the engine's group (pulse + idle,
    count); the lead is the delay (+ the first group when merged)."""
    pulse = segments(train.pulse)  # the compact engine output (before the Plan: it must exist)
    plan = dc.Plan(train)
    checked: set = set()
    for b in plan.blocks:
        check_entries(plan, b, strip_idle(pulse), checked)
    e = idle_entry_ticks(plan)
    assert len(plan.runs) == len(train.idle_runs)
    for (block, count, k), (idle, n) in zip(plan.runs, train.idle_runs):
        assert count == n and block.pulses == 1
        assert merged(segments(block.words) + [[k * e, pe.IDLE]]) == merged(pulse + [[idle, pe.IDLE]])
    d = train.delay_ticks
    if d == 0:
        assert plan.lead is None
        return
    played = merged(segments(plan.lead.words) + [[plan.lead_idle * e, pe.IDLE]])
    if plan.lead_replaces:
        assert played == merged([[d, pe.IDLE]] + pulse + [[train.idle_runs[0][0], pe.IDLE]])
    else:
        assert played == [[d, pe.IDLE]] and plan.lead.pulses == 0


def play(plan, end):
    """Merged segments of the Cursor's block sequence up to tick ``end`` (shared idle entries taken
    in bulk from the cursor's count, so a 24 h idle costs one step), and the pulses the blocks
    count."""
    cur = dc.Cursor(plan)
    e = idle_entry_ticks(plan)
    segs: list = []
    total = pulses = 0
    while total < end:
        b = cur.next_block()
        if b is None:
            break
        segments(b.words, segs)
        total += pe.words_ticks(b.words)
        pulses += b.pulses
        if cur.idle_left:
            segments([pe.IDLE], segs)  # a 0-count idle word: merges into the idle the block ends with
            segs[-1][0] += cur.idle_left * e - pe.OVERHEAD
            total += cur.idle_left * e
            cur.idle_left = 0
    return segs, total, pulses


corner_params = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in CORNERS.items()}).map(P.complete)


# ---- item 6: bounded words and bytes for every legal corner ---------------------------------------
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@example(WORST)
@example(dict(P.complete({}), burst_pulses=10, period_ns=1 * MS, interburst_ns=3_600_000 * MS))  # issue: 1 h
@example(dict(P.complete({}), burst_pulses=2, period_ns=1 * MS, interburst_ns=10_800_000 * MS))  # issue: 3 h
@example(dict(P.complete({}), train_delay_ns=DAY))  # issue: 24 h delay
@given(corner_params)
def test_every_legal_corner_builds_within_a_word_and_byte_budget(p):
    assume(legal_train(p) is not None)
    tracemalloc.start()
    try:
        train = pe.build_train(p)
        train_peak = tracemalloc.get_traced_memory()[1]
        # checked before the Plan is built: a build that grows with a duration fails here, at once
        assert train_peak <= TRAIN_BYTES_BUDGET, "Train built with a %d-byte peak" % train_peak
        tracemalloc.reset_peak()
        plan = dc.Plan(train)
        plan_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    words = sum(len(b.words) for b in plan.blocks)
    assert words <= PLAN_WORDS_BUDGET, "%d DMA words" % words
    assert plan_peak <= PLAN_BYTES_BUDGET, "Plan built with a %d-byte peak" % plan_peak


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@example(WORST)
@given(corner_params)
def test_every_legal_corner_is_laid_out_in_whole_pulse_entries(p):
    train = legal_train(p)
    assume(train is not None)
    check_layout(train)


@pytest.mark.parametrize("kw", [
    dict(burst_pulses=10, period_ns=1 * MS, interburst_ns=3_600_000 * MS),
    dict(burst_pulses=2, period_ns=1 * MS, interburst_ns=10_800_000 * MS, train_delay_ns=40),
    dict(train_delay_ns=DAY, period_ns=DAY, train_duration_ns=DAY),
    dict(WORST),
])
def test_long_trains_play_the_engine_cycle_tick_for_tick(kw):
    train = legal_train(P.complete(kw))
    assert train is not None
    want = [[train.delay_ticks, pe.IDLE]]  # the engine's compact output, expanded as segments
    pulse = segments(train.pulse)
    for idle, n in train.idle_runs:
        want += (pulse + [[idle, pe.IDLE]]) * n
    end = train.delay_ticks + train.cycle_ticks
    segs, total, pulses = play(dc.Plan(train), end)
    assert total == end and pulses == train.pulses_per_cycle
    assert segs == merged(want)


# ---- item 2: entry boundaries only after idle, waveform unchanged ---------------------------------
@st.composite
def boundary_params(draw):
    """Legal-looking sets of moderate durations (the entry layout, not the length, is under test)."""
    ns = st.integers
    return P.complete({
        "phase1_ns": draw(ns(40, 2 * MS)),
        "interphase_ns": draw(st.one_of(st.just(0), ns(40, 500 * US))),
        "phase2_ns": draw(ns(40, 2 * MS)),
        "recovery_ns": draw(st.one_of(st.just(0), ns(40, 2 * MS))),
        "period_ns": draw(ns(100 * US, 20 * MS)),
        "burst_pulses": draw(st.sampled_from([0, 0, 1, 2, 5])),
        "interburst_ns": draw(st.one_of(st.just(0), ns(40, 20 * MS))),
        "train_duration_ns": draw(ns(40, 60 * MS)),
        "train_delay_ns": draw(st.one_of(st.just(0), ns(40, 2 * US), ns(40, 5 * MS))),
        "polarity": draw(st.sampled_from([0, 1])),
    })


def plan_entries_and_stream(train, plan):
    """The whole word stream a (finite) Plan plays."""
    stream: list = []
    for block in plan.sequence():
        stream += block.words
    return stream


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@example(P.complete({"train_delay_ns": 1 * US, "phase1_ns": 200 * US, "interphase_ns": 50 * US, "phase2_ns": 200 * US,
                     "period_ns": 1 * MS, "train_duration_ns": 10 * MS}))  # the example
@given(boundary_params())
def test_entry_boundaries_fall_only_after_idle_and_the_waveform_is_unchanged(p):
    train = legal_train(p)
    assume(train is not None and 1 <= train.repeats <= 200)
    plan = dc.Plan(train)
    stream = plan_entries_and_stream(train, plan)
    pattern = pulse_pattern(train)
    n = plan.p
    assert len(stream) % n == 0
    for e in range(len(stream) // n):
        entry = stream[e * n:(e + 1) * n]
        assert entry[-1] & pe.PIN_MASK == pe.IDLE, "entry %d ends on a drive word" % e
        inner = strip_idle(segments(entry))
        assert inner == [] or inner == pattern, "entry %d holds part of a pulse" % e
    expected = list(train.delay)
    for _ in range(train.repeats):
        expected += pe.cycle_words(train)
    assert segments(stream) == segments(expected)  # tick for tick


def test_a_stop_at_every_entry_boundary_leaves_only_whole_pulses():
    """The issue's case played entry by entry: cutting the stream after any entry never leaves a
    pulse without its phase 2."""
    train = pe.build_train(P.complete({"train_delay_ns": 1 * US, "phase1_ns": 200 * US, "interphase_ns": 50 * US,
                                       "phase2_ns": 200 * US, "period_ns": 1 * MS, "train_duration_ns": 5 * MS}))
    plan = dc.Plan(train)
    stream = plan_entries_and_stream(train, plan)
    first = train.realised["phase1"]
    for cut in range(plan.p, len(stream) + 1, plan.p):
        segs = segments(stream[:cut])
        drive = [s for s in segs if s[1] & (pe.POS | pe.NEG)]
        assert len(drive) % 2 == 0 and all(s[0] in (first, train.realised["phase2"]) for s in drive)
        assert segs[-1][1] == pe.IDLE


# ---- replace() after a long-idle train ----------------------------------------------------------
@pytest.fixture
def hal(monkeypatch):
    mod, hw, _clock = load_board_hal(monkeypatch, 7)
    yield mod.Rp2Hal(), hw
    unload_board_hal()


def test_replace_after_a_24h_period_train_does_not_raise(hal):
    h, _hw = hal
    old = pe.build_train(P.complete({"period_ns": DAY}))
    new = pe.build_train(P.complete({"period_ns": 100 * US, "phase1_ns": 40, "phase2_ns": 40}))
    h.start([old] * 4, 0b0001, [0] * 4)
    h.replace(0, new)  # raised ValueError when P was the old train's longest group (40 000 words)
    st_ = h._ch[0]
    assert st_.p == dc.Plan(new).p == dc.ENTRY_WORDS
    assert any(st_.ring_store[st_.ring_base + i] for i in range(dc.RING_LEN))  # entries still queued
    assert h.running(0)


def test_replace_plan_with_the_streams_p_plays_the_new_cycle():
    """Feeder level: the old stream had a 24 h idle; the new plan uses the same P and plays exactly
    the new train's cycle."""
    old = pe.build_train(P.complete({"period_ns": DAY}))
    new = pe.build_train(P.complete({"period_ns": 100 * US, "phase1_ns": 40, "phase2_ns": 40,
                                     "train_duration_ns": 1 * MS}))
    old_plan = dc.Plan(old)
    new_plan = dc.Plan(new, p=old_plan.p, with_delay=False)
    stream: list = []
    for block in new_plan.sequence():
        stream += block.words
    assert segments(stream) == segments(pe.cycle_words(new) * new.repeats)


def test_entry_layout_at_the_split_edges():
    """Idle lengths at every threshold of the layout (what one pulse entry holds, one shared idle
    entry, their sums +-1 tick): whole entries, every word in range, every entry ending idle, the tick
    sum exact, and at most three entries besides the shared ones."""
    p = dc.ENTRY_WORDS
    pulse = pe.build_train(P.complete({})).pulse
    full = p * dc.MAX_TICKS
    q = p - len(pulse)
    edges_ = set()
    for base in (q * dc.MAX_TICKS, (q - 1) * dc.MAX_TICKS, full, 2 * full, 7 * full, q * dc.MAX_TICKS + full):
        for d in (-5 * p - 1, -5 * p, -1, 0, 1, 5 * p - 1, 5 * p, 5 * p + 1):
            if base + d >= pe.DEAD_TICKS:
                edges_.add(base + d)
    for pre in (0, pe.OVERHEAD, 5 * p - 1):
        for idle in sorted(edges_ | {pe.DEAD_TICKS, 10 * pe.OVERHEAD}):
            words, k = dc.pulse_entries(pre, pulse, idle, p)
            b = dc.Block(words, p)  # checks whole entries, each ending idle
            assert 1 <= b.entries <= 3
            assert all(pe.OVERHEAD <= dc.word_ticks(w) <= dc.MAX_TICKS for w in words)
            assert pe.words_ticks(words) + k * full == pre + pe.words_ticks(pulse) + idle
            assert strip_idle(segments(words[:p])) == strip_idle(segments(pulse))
    for d in sorted(edges_ | {5 * p, 5 * p + 1}):
        if d >= 5 * p:
            words, k = dc.idle_entries(d, p)
            assert len(words) in (p, 2 * p) and pe.words_ticks(words) + k * full == d
            assert all(pe.OVERHEAD <= dc.word_ticks(w) <= dc.MAX_TICKS and w & pe.PIN_MASK == 0 for w in words)
