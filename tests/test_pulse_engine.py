"""Pulse engine: exact tick arithmetic, safety invariants, charge balance, and end-to-end PIO timing."""

import json
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from firmware import board
from firmware import pio_programs as pp
from firmware import pulse_engine as pe
from protocol import params as P

ROOT = Path(__file__).resolve().parent.parent
CLK = board.SYS_CLK_HZ
NS = 1_000_000_000
MS = 1_000_000
S = NS
DEAD_NS = board.DEAD_TIME_NS  # least idle between two different drive states


def built_pulse_ns(ph1, ip, ph2, rec):
    """Pulse length as the engine builds it: interphase >= dead time, dead time before recovery."""
    return ph1 + max(ip, DEAD_NS) + ph2 + (DEAD_NS + rec if rec else 0)


def params(**kw):
    """Canonical parameters: the protocol's defaults (200 µs phases, 20 Hz, 1 mA) with overrides."""
    return P.complete(kw)


def runs(words):
    """Decode words and merge consecutive equal pins: [(ticks, pins), ...] as a capture sees it."""
    out = []
    for w in words:
        t, p = pe.decode_word(w)
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0] + t, p)
        else:
            out.append((t, p))
    return out


def expected_group(tr, idle, first):
    second = pe.POS if first == pe.NEG else pe.NEG
    r = tr.realised
    seq = [(r["phase1"], first | pe.SYNC)]
    assert r["interphase"] >= pe.DEAD_TICKS
    seq.append((r["interphase"], pe.SYNC))
    seq.append((r["phase2"], second | pe.SYNC))
    if r["recovery"]:
        seq.append((pe.DEAD_TICKS, pe.IDLE))
        seq.append((r["recovery"], pe.RECOVERY))
    seq.append((idle, pe.IDLE))
    return seq


# ---------------------------------------------------------------- strategies

phase_ns = st.integers(40, 10 * MS)
gap_ns = st.one_of(st.just(0), st.integers(40, 10 * MS))


@st.composite
def valid_params(draw, long=True):
    ph1 = draw(phase_ns)
    ph2 = draw(phase_ns)
    ip = draw(gap_ns)
    rec = draw(gap_ns)
    pulse = built_pulse_ns(ph1, ip, ph2, rec)
    idle_top = 120 * S if long else 50 * MS
    period = pulse + draw(st.integers(DEAD_NS + 80, idle_top))  # 80 ns covers the rounding of 5 fields
    amp = draw(st.integers(1, 10_000))
    assume(amp * ph1 <= 10_000 * ph2)  # validation: phase-2 amplitude within the maximum
    # and the quantised phase-2 code within the DAC (1 uA asks for 1 code = 2.5 uA: see report)
    assume(pe.balance_code(pe.dac_code(amp), pe.ns_to_ticks(ph1), pe.ns_to_ticks(ph2)) <= 4095)
    n_burst = draw(st.sampled_from([0, 0, 1, 2, 5, 17]))
    return params(
        phase1_ns=ph1, interphase_ns=ip, phase2_ns=ph2, recovery_ns=rec, period_ns=period,
        amplitude_ua=amp, polarity=draw(st.integers(0, 1)), burst_pulses=n_burst,
        interburst_ns=draw(st.integers(0, idle_top)) if n_burst else 0,
        train_duration_ns=draw(st.one_of(st.just(0), st.integers(1, 3600 * S))),
        train_delay_ns=draw(st.one_of(st.just(0), st.integers(40, idle_top))),
        ramp_up_ns=draw(st.one_of(st.just(0), st.integers(1, 60 * S))),
        trigger=draw(st.integers(0, 4)),
    )


# ---------------------------------------------------------------- properties

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(valid_params())
def test_groups_are_exact_and_safe(p):
    tr = pe.build_train(p)
    r = tr.realised
    first = pe.NEG if p["polarity"] == 0 else pe.POS
    # rounding: never more than half a tick from the request
    for name in ("phase1", "phase2", "recovery", "period", "train_delay"):
        assert abs(r[name] * NS - p[name + "_ns"] * CLK) * 2 <= NS
    # the interphase: the request, or the dead time when the request is shorter
    assert r["interphase"] == max(pe.ns_to_ticks(p["interphase_ns"]), pe.DEAD_TICKS)
    assert r["phase1"] == pe.ns_to_ticks(p["phase1_ns"])
    n = max(1, p["burst_pulses"])
    assert len(pe.cycle_groups(tr)) == n == tr.pulses_per_cycle == tr.pulses
    for i, g in enumerate(pe.cycle_groups(tr)):
        last = i == n - 1
        want = r["period"] + (r["interburst"] if last and p["burst_pulses"] else 0)
        assert pe.words_ticks(g) == want  # every group sums exactly to its duration
        assert runs(g) == expected_group(tr, want - r["pulse"], first)
        assert g[-1] & pp.PIN_MASK == pe.IDLE  # every group ends idle
        for w in g:
            pins = w & pp.PIN_MASK
            assert not (pins & pe.POS and pins & pe.NEG)
            assert 0 <= w < 1 << 32
            assert (w >> pp.COUNT_SHIFT) <= pp.COUNT_MAX
    assert sum(pe.words_ticks(g) for g in pe.cycle_groups(tr)) == tr.cycle_ticks == r["cycle"]
    assert sum(pe.words_ticks(g) * c for g, c in tr.runs) == tr.cycle_ticks
    assert pe.words_ticks(tr.delay) == r["train_delay"]
    assert all(w & pp.PIN_MASK == 0 for w in tr.delay)
    # train length: whole cycles covering the requested duration, counted in the requested ns
    dur = p["train_duration_ns"]
    n = p["burst_pulses"]
    cycle_ns = n * p["period_ns"] + p["interburst_ns"] if n > 0 else p["period_ns"]
    if dur == 0:
        assert tr.repeats == 0 and r["train_duration"] == 0
    else:
        assert (tr.repeats - 1) * cycle_ns < dur <= tr.repeats * cycle_ns
        assert r["train_duration"] == tr.repeats * tr.cycle_ticks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(valid_params(long=False))
def test_charge_balance_residual_within_one_lsb(p):
    tr = pe.build_train(p)
    r = tr.realised
    c1, c2, ph1, ph2 = r["dac_code1"], r["dac_code2"], r["phase1"], r["phase2"]
    assert 1 <= c1 <= board.DAC_MAX_CODE and 1 <= c2 <= board.DAC_MAX_CODE
    # code2 is the best integer (at least 1): the charge error is at most half an LSB over phase 2
    if c1 * ph1 * 2 >= ph2:
        assert abs(c1 * ph1 - c2 * ph2) * 2 <= ph2
    else:  # ideal code2 < 0.5 LSB: clamped to 1, still within one LSB
        assert c2 == 1 and abs(c1 * ph1 - c2 * ph2) <= ph2
    # reported residual (fC) bounded by one LSB over phase 2: |q| <= LSB_uA * phase2_ns
    lsb_fc_times = board.DAC_FULL_SCALE_UA * NS * ph2  # / (4096 * CLK)
    assert abs(r["residual_fc"]) * 4096 * CLK <= lsb_fc_times
    # amplitude: nearest code (at least 1)
    if p["amplitude_ua"] * 4096 >= board.DAC_FULL_SCALE_UA:
        assert abs(c1 * board.DAC_FULL_SCALE_UA - p["amplitude_ua"] * 4096) * 2 <= board.DAC_FULL_SCALE_UA
    # phase-1 current goes to the DAC of phase 1's direction
    if p["polarity"] == 0:
        assert (r["dac_b"], r["dac_a"]) == (c1, c2)
    else:
        assert (r["dac_a"], r["dac_b"]) == (c1, c2)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 1 << 40), st.sampled_from([0, pe.NEG | pe.SYNC, pe.RECOVERY]))
def test_split_long_segments_sum_exactly(ticks, pins):
    assume(ticks == 0 or ticks >= pe.OVERHEAD)
    words = pe.append_segment([], ticks, pins)
    assert pe.words_ticks(words) == ticks
    assert all(w & pp.PIN_MASK == pins for w in words)
    assert all(pe.OVERHEAD <= pe.decode_word(w)[0] <= pe.MAX_SEGMENT_TICKS for w in words)
    assert len(words) == -(-ticks // pe.MAX_SEGMENT_TICKS)


def test_split_remainder_never_below_overhead():
    # A naive split would leave a 1-tick remainder here.
    for ticks in (pe.MAX_SEGMENT_TICKS + 1, 2 * pe.MAX_SEGMENT_TICKS + 3, 3 * pe.MAX_SEGMENT_TICKS - 1):
        words = pe.append_segment([], ticks, 0)
        assert pe.words_ticks(words) == ticks
        assert min(pe.decode_word(w)[0] for w in words) >= pe.OVERHEAD


@given(st.integers(0, 10**13))
def test_rounding_half_up_within_half_tick(ns):
    t = pe.ns_to_ticks(ns)
    assert abs(t * NS - ns * CLK) * 2 <= NS
    if (ns * CLK) % NS * 2 == NS:  # exact half: rounds up
        assert t * NS > ns * CLK
    assert pe.ns_to_ticks(pe.ticks_to_ns(t)) == t


def test_unsafe_words_refused():
    with pytest.raises(AssertionError):
        pe.check_word((10 << 4) | pe.POS | pe.NEG)
    with pytest.raises(AssertionError):
        pe.make_word(4, 0)
    with pytest.raises(AssertionError):
        pe.make_word(pe.MAX_SEGMENT_TICKS + 1, 0)


def test_unrealisable_timing_refused_with_field_name():
    with pytest.raises(ValueError, match="phase1_ns"):
        pe.build_train(params(phase1_ns=24))
    # an interphase below one segment is not refused: it is realised as the dead time
    assert pe.build_train(params(interphase_ns=16)).realised["interphase"] == pe.DEAD_TICKS
    with pytest.raises(ValueError, match="period_ns"):
        pe.build_train(params(period_ns=400_000))
    with pytest.raises(pe.Unrealisable, match="train_delay_ns") as e:
        pe.build_train(params(train_delay_ns=8))
    assert (e.value.field, e.value.value) == ("train_delay_ns", 8)
    assert pe.min_segment_ns() == 40


# ---------------------------------------------------------------- presets

def test_preset_20hz_200us():
    tr = pe.build_train(params(period_ns=50 * MS, train_duration_ns=60 * S))
    r = tr.realised
    assert r["phase1"] == r["phase2"] == 25_000  # 200 µs is exactly 25 000 ticks
    assert r["period"] == 6_250_000 and tr.repeats == 1200
    (group,) = pe.cycle_groups(tr)
    # interphase 0 is realised as the 1 µs dead time (125 ticks), SYNC staying high through it
    assert r["interphase"] == pe.DEAD_TICKS == 125
    assert group[:3] == [((25_000 - 5) << 4) | pe.NEG | pe.SYNC, ((125 - 5) << 4) | pe.SYNC,
                         ((25_000 - 5) << 4) | pe.POS | pe.SYNC]
    # the rest of the period is idle, padded to MIN_GROUP_WORDS words (stop latency bound), exactly
    idle = group[3:]
    assert len(group) == pe.MIN_GROUP_WORDS
    assert all(w & pe.PIN_MASK == 0 for w in idle) and pe.words_ticks(idle) == 6_250_000 - 50_125
    starts = [t for t, pins in pe.expand(tr, 2 * pe.MIN_GROUP_WORDS) if pins & (pe.NEG | pe.POS)]
    assert starts == [0, 25_125, 6_250_000, 6_275_125]
    assert r["dac_code1"] == r["dac_code2"] == 400 and r["residual_fc"] == 0
    assert r["amplitude_ua"] == 1000


def test_groups_outnumber_the_fifo_when_the_idle_allows():
    """A group of >= FIFO + 1 words keeps the DMA at most one group ahead of the pins."""
    tr = pe.build_train(params(period_ns=100_000, phase1_ns=20_000, phase2_ns=20_000))
    assert len(pe.cycle_groups(tr)[0]) == pe.MIN_GROUP_WORDS == pe.TX_FIFO_WORDS + 1


def test_preset_burst_5_at_500hz_repeated_40hz():
    tr = pe.build_train(params(period_ns=2 * MS, burst_pulses=5, interburst_ns=15 * MS,
                               train_duration_ns=1 * S))
    assert tr.cycle_ticks == 25 * MS * CLK // NS  # 40 Hz bursts
    assert tr.pulses_per_cycle == 5 and tr.repeats == 40
    starts = [pe.pulse_start_ticks(tr, k) for k in range(7)]
    assert starts == [0, 250_000, 500_000, 750_000, 1_000_000, 3_125_000, 3_375_000]
    edges = [t for t, pins in pe.expand(tr, 100) if pins & pe.NEG]
    assert edges[:7] == starts
    assert pe.cycle_groups(tr)[0] is pe.cycle_groups(tr)[3]  # identical groups share one list (memory)
    assert [c for _, c in tr.runs] == [4, 1]


def test_anodic_first_asymmetric_and_recovery():
    tr = pe.build_train(params(polarity=1, phase1_ns=100_000, phase2_ns=400_000, interphase_ns=50_000,
                               recovery_ns=1 * MS, amplitude_ua=2000, period_ns=10 * MS))
    r = tr.realised
    assert runs(pe.cycle_groups(tr)[0]) == [(12_500, pe.POS | pe.SYNC), (6_250, pe.SYNC),
                                  (50_000, pe.NEG | pe.SYNC), (pe.DEAD_TICKS, 0), (125_000, pe.RECOVERY),
                                  (1_250_000 - 193_750 - pe.DEAD_TICKS, 0)]
    assert r["dac_code1"] == 800 and r["dac_code2"] == 200
    assert (r["dac_a"], r["dac_b"]) == (800, 200)
    assert r["amplitude2_ua"] == 500 and r["residual_fc"] == 0


def test_phase2_code_beyond_dac_refused():
    # 1 uA -> 1 code (2.5 uA); balanced over a 4096x shorter phase 2 needs code 4096
    with pytest.raises(ValueError, match="amplitude_ua"):
        pe.build_train(params(amplitude_ua=1, phase1_ns=163_840, phase2_ns=40))


def test_residual_reported_when_quantised():
    tr = pe.build_train(params(phase1_ns=200_000, phase2_ns=300_000, amplitude_ua=1000))
    r = tr.realised
    assert (r["dac_code1"], r["dac_code2"]) == (400, 267)  # 266.67 -> 267
    # 400*25000 - 267*37500 = -12500 code*ticks, 20 fC each
    assert r["residual_fc"] == -250_000 and r["residual_pc"] == -250


def test_triggers_select_entry_and_pin():
    assert pe.build_train(params(trigger=0)).entry == pp.SEGMENT_ENTRY
    t = pe.build_train(params(trigger=2))
    assert (t.entry, t.trigger_pin) == (pp.TRIGGER_ENTRY, board.TRIG2_PIN)
    t = pe.build_train(params(trigger=3))
    assert (t.entry, t.trigger_pin) == (pp.GATE_ENTRY, board.TRIG1_PIN)


def test_long_train_delay_and_60s_period():
    tr = pe.build_train(params(period_ns=60 * S, train_delay_ns=90 * S))
    assert tr.realised["period"] == 7_500_000_000
    assert pe.words_ticks(pe.cycle_groups(tr)[0]) == 7_500_000_000
    assert pe.words_ticks(tr.delay) == 11_250_000_000
    assert pe.expand(tr, 50)[-1][0] < pe.words_ticks(tr.delay) + tr.cycle_ticks * 2


def test_ramp_is_monotonic_balanced_and_reaches_full():
    tr = pe.build_train(params(period_ns=50 * MS, ramp_up_ns=1 * S, phase2_ns=400_000,
                               amplitude_ua=5000))
    n = pe.ramp_pulses(tr)
    assert n == 20  # the pulses starting before 1 s; the last of them has the full codes
    codes = [pe.ramp_codes(tr, k) for k in range(n + 2)]
    bs = [b for _, b in codes]  # cathodic-first: B carries phase 1
    assert bs == sorted(bs) and bs[0] >= 1
    assert codes[n - 2] != codes[n - 1] == codes[n] == codes[n + 1] == (tr.dac_a, tr.dac_b)
    for a, b in codes:
        assert abs(b * tr.phase1_ticks - a * tr.phase2_ticks) * 2 <= tr.phase2_ticks
    assert pe.ramp_codes(pe.build_train(params()), 0) == (400, 400)


# ---------------------------------------------------------------- end to end through the PIO emulator

pioemu = pytest.importorskip("pioemu")


def emulate_edges(words, cycles):
    """Run words through the generated program; return [(tick, pins)] at every pin change."""
    from pioemu import State, emulate

    state = State(program_counter=pp.SEGMENT_ENTRY, transmit_fifo=deque(words),
                  pin_directions=pp.PIN_MASK)
    edges = []
    for before, after in emulate(list(pp.OPCODES), stop_when=lambda op, s: s.clock >= cycles,
                                 initial_state=state, shift_osr_right=pp.OUT_SHIFT_RIGHT,
                                 auto_pull=pp.AUTO_PULL, out_base=0, out_count=pp.OUT_COUNT,
                                 wrap_target=pp.WRAP_TARGET, wrap_top=pp.WRAP):
        if after.pin_values != before.pin_values:
            edges.append((before.clock, after.pin_values & pp.PIN_MASK))
    return edges


def expected_edges(tr, k):
    out = []
    for t, pins in pe.expand(tr, k):
        if not out or out[-1][1] != pins:
            out.append((t, pins))
    return out


def check_emulated(tr, cycles_extra=50):
    words = list(tr.delay)
    for _ in range(tr.repeats or 2):  # a train "until stopped": play two cycles
        words += pe.cycle_words(tr)
    total = pe.words_ticks(words)
    got = emulate_edges(words, total + cycles_extra)
    want = expected_edges(tr, len(words))
    if want[0][1] == 0:  # a leading idle (delay) is not an edge from reset
        want = want[1:]
    t0 = got[0][0] - want[0][0]
    assert [(t - t0, p) for t, p in got] == want
    # the stream then rests idle
    assert got[-1][1] == 0
    return [(t - t0, p) for t, p in got]


def test_emulated_200us_phase_is_25000_ticks():
    tr = pe.build_train(params(period_ns=402_000, train_duration_ns=402_000))
    edges = check_emulated(tr)
    # phase 1, the dead time (interphase 0 requested), phase 2: 25 000 ticks each, not 25 003
    assert [b[0] - a[0] for a, b in zip(edges, edges[1:])] == [25_000, 125, 25_000]


def test_emulated_burst_with_delay_recovery_and_interphase():
    tr = pe.build_train(params(phase1_ns=120, interphase_ns=40, phase2_ns=240, recovery_ns=80,
                               period_ns=3_600, burst_pulses=3, interburst_ns=400,
                               train_delay_ns=200, train_duration_ns=20_000, amplitude_ua=500))
    check_emulated(tr)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.integers(40, 400), st.one_of(st.just(0), st.integers(40, 200)), st.integers(40, 400),
       st.one_of(st.just(0), st.integers(40, 200)), st.integers(80, 600), st.integers(0, 1),
       st.sampled_from([0, 2, 3]), st.integers(0, 500), st.one_of(st.just(0), st.integers(40, 300)))
def test_emulated_edges_match_engine(ph1, ip, ph2, rec, idle, pol, nb, ib, delay):
    p = params(phase1_ns=ph1, interphase_ns=ip, phase2_ns=ph2, recovery_ns=rec,
               period_ns=built_pulse_ns(ph1, ip, ph2, rec) + DEAD_NS + idle, polarity=pol, burst_pulses=nb,
               interburst_ns=ib if nb else 0, train_delay_ns=delay, amplitude_ua=100,
               train_duration_ns=[0, 1_000][nb % 2])  # until stopped (2 cycles played) or 1 cycle
    check_emulated(pe.build_train(p))


# ---------------------------------------------------------------- the same words under MicroPython

MPY = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")


@pytest.mark.mpy
@pytest.mark.skipif(MPY is None, reason="micropython unix port not installed")
def test_micropython_builds_identical_words():
    cases = [
        params(train_duration_ns=60 * S),
        params(period_ns=2 * MS, burst_pulses=5, interburst_ns=15 * MS, train_delay_ns=61 * S),
        params(polarity=1, phase2_ns=300_000, recovery_ns=1 * MS, interphase_ns=40, period_ns=70 * S),
    ]
    code = (
        "import sys, json\nsys.path.insert(0, %r)\nfrom firmware import pulse_engine as pe\n"
        "for p in json.loads(%r):\n"
        "    t = pe.build_train(p)\n"
        "    print(json.dumps([t.delay, pe.cycle_groups(t), t.repeats, t.cycle_ticks, t.realised]))\n"
    ) % (str(ROOT), json.dumps(cases))
    out = subprocess.run([MPY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    for p, line in zip(cases, lines, strict=True):
        t = pe.build_train(p)
        assert json.loads(line) == json.loads(json.dumps(
            [t.delay, pe.cycle_groups(t), t.repeats, t.cycle_ticks, t.realised]))


def test_train_duration_counts_cycles_in_the_requested_ns():
    """A duration of exactly 3 periods of 1000003 ns plays 3 pulses: the period is 125000 ticks after
    rounding, and counting in ticks (375001 / 125000) would play a fourth; bursts count their whole
    cycle (n x period + interburst) the same way."""
    p = dict(P.DEFAULTS, period_ns=1_000_003, train_duration_ns=3 * 1_000_003)
    assert pe.build_train(p).repeats == 3
    assert pe.build_train(dict(p, train_duration_ns=3 * 1_000_003 + 1)).repeats == 4
    b = dict(P.DEFAULTS, period_ns=1_000_003, burst_pulses=4, interburst_ns=5_000_001)
    cycle = 4 * 1_000_003 + 5_000_001
    assert pe.build_train(dict(b, train_duration_ns=2 * cycle)).repeats == 2
    assert pe.build_train(dict(b, train_duration_ns=2 * cycle + 1)).repeats == 3
