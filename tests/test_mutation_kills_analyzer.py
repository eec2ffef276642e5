"""The analyzer's safety checks pinned where mutation testing found them unobserved (issue 15).

Hand-built fixtures (edge arrays), as in test_analyzer.py: they exercise the analyzer itself; captures
that verify the firmware come from the emulator (hil_tests/).
"""
from __future__ import annotations

import numpy as np
import pytest

from picostim.capture.analyzer import analyze
from picostim.capture.trace import Channel, Trace
from test_analyzer import EXP, SR, make_train, with_toggles


def fails(r, word):
    return [f for f in r.failures if word in f]


# ---- bursts: the last burst is checked like the others unless partial ones are allowed
def test_last_burst_with_the_wrong_count_fails_in_strict_mode():
    t = make_train(n_pulses=13, period=250_000, burst=5, interburst=1_250_000)   # sizes 5, 5, 3
    exp = dict(phase1_us=200, interphase_us=8, phase2_us=200, period_us=2000, burst_pulses=5)
    r = analyze(t, expected=exp)
    assert r.bursts["sizes"] == [5, 5, 3]
    assert fails(r, "bursts:") and "(1 bursts wrong)" in fails(r, "bursts:")[0]
    # allowed: a shorter last burst passes, a longer one never does
    assert analyze(t, expected=exp, allow_partial_last_burst=True).ok
    t6 = make_train(n_pulses=16, period=250_000, burst=5, interburst=1_250_000)  # 5, 5, 5, 1
    assert analyze(t6, expected=exp, allow_partial_last_burst=True).ok
    assert fails(analyze(t6, expected=exp), "bursts:")


def test_a_longer_last_burst_fails_even_when_partial_bursts_are_allowed():
    t = make_train(n_pulses=15, period=250_000, burst=5, interburst=1_250_000)
    # close the gap before burst 3 (pulse 10 one period after pulse 9): the last burst has 10 pulses
    gap_start = 9
    chans = {k: Channel(c.initial, c.toggles.copy()) for k, c in t.channels.items()}
    shift = int(chans["NEG"].toggles[2 * 10] - (chans["NEG"].toggles[2 * gap_start] + 250_000))
    for name in ("NEG", "POS", "SYNC"):
        chans[name].toggles[2 * 10:] -= shift
    tt = Trace(t.samplerate_hz, t.n_samples, chans)
    r = analyze(tt, expected=dict(burst_pulses=5, period_us=2000), allow_partial_last_burst=True)
    assert r.bursts["sizes"] == [5, 10] and fails(r, "bursts:"), (r.bursts, r.failures)


def test_burst_count_is_checked():
    t = make_train(n_pulses=15, period=250_000, burst=5, interburst=1_250_000)
    exp = dict(burst_pulses=5, period_us=2000)
    assert analyze(t, expected=dict(exp, bursts=3)).ok
    assert fails(analyze(t, expected=dict(exp, bursts=2)), "expected 2 bursts, found 3")


# ---- trigger latency: µs -> samples, both ways, at an asynchronous sample rate as well
@pytest.mark.parametrize("sr,first,trig", [(SR, 10_000, 9_500), (25_000_000, 2_000, 1_900)])
def test_expected_trigger_latency_us_is_checked(sr, first, trig):
    t = make_train(first=first, trig_at=trig, sr=sr, p1=sr // 5000, gap=sr // 125_000, p2=sr // 5000,
                   period=sr // 1000)
    lat_us = (first - trig) * 1e6 / sr  # 4 µs in both cases
    assert lat_us == pytest.approx(4.0)
    exp = dict(phase1_us=200, interphase_us=8, phase2_us=200, period_us=1000)
    r = analyze(t, expected=dict(exp, trigger_latency_us=lat_us))
    assert r.ok, r.failures
    assert r.trigger["latency_samples"] == first - trig
    assert r.trigger["latency_us"] == pytest.approx(4.0)
    off = 2 * 1e6 / sr  # two samples off: outside the tolerance in both modes
    assert fails(analyze(t, expected=dict(exp, trigger_latency_us=lat_us + off)), "trigger latency")
    assert fails(analyze(t, expected=dict(exp, trigger_latency_us=lat_us - off)), "trigger latency")


def test_trigger_latency_in_cycles_at_an_asynchronous_rate():
    sr = 25_000_000  # 5 PIO cycles per sample
    t = make_train(first=2_000, trig_at=1_990, sr=sr, p1=5000, gap=200, p2=5000, period=25_000)
    r = analyze(t)
    assert r.trigger["latency_samples"] == 10
    assert r.trigger["latency_cycles"] == pytest.approx(50)
    assert analyze(t, expected=dict(trigger_latency_max_cycles=50)).ok
    # 45 + one sample (5 cycles) of slack still passes; 44 does not
    assert analyze(t, expected=dict(trigger_latency_max_cycles=45)).ok
    assert fails(analyze(t, expected=dict(trigger_latency_max_cycles=44)), "PIO cycles")


def test_latency_expected_without_a_trigger_or_a_pulse_after_it():
    t = make_train()
    assert fails(analyze(t, expected=dict(trigger_latency_us=4)), "no trigger edge")
    late = make_train(first=1_000, trig_at=400_000, n_pulses=3)  # edge after the last pulse (ends 302 000)
    assert fails(analyze(late, expected=dict(trigger_latency_us=4)), "no pulse after the trigger edge")
    assert fails(analyze(t, trigger="TRIG2"), "not in trace")


# ---- polarity
def test_polarity_passed_in_expected_is_checked():
    t = make_train()  # cathodic-first
    assert analyze(t, expected=dict(EXP, polarity="cathodic-first")).ok
    r = analyze(t, expected=dict(EXP, polarity="anodic-first"))
    assert fails(r, "polarity: expected anodic-first, first pulse is cathodic-first")
    assert fails(analyze(t, expected=dict(EXP, polarity=1)), "polarity: expected anodic-first")
    assert analyze(t, expected=dict(EXP, polarity=0)).ok
    with pytest.raises(ValueError, match="unknown polarity"):
        analyze(t, expected=dict(EXP, polarity="sideways"))


@pytest.mark.parametrize("polarity", ["cathodic-first", "anodic-first"])
def test_polarity_when_the_capture_starts_inside_the_interphase_gap(polarity):
    t = make_train(polarity=polarity)
    first_line = "NEG" if polarity == "cathodic-first" else "POS"
    # drop the first phase 1: the capture's first edge is the lone phase 2 of pulse 0
    tt = with_toggles(t, first_line, t.channels[first_line].toggles[2:])
    tt = with_toggles(tt, "SYNC", t.channels["SYNC"].toggles[2:])
    r = analyze(tt)
    assert r.polarity == polarity
    assert r.n_pulses == 9
    assert r.incomplete["orphan_phase2"] == 1


@pytest.mark.parametrize("polarity", ["cathodic-first", "anodic-first"])
def test_polarity_from_the_first_edge_with_one_pulse(polarity):
    t = make_train(n_pulses=1, polarity=polarity)
    assert analyze(t).polarity == polarity


# ---- dead time, overlap, incomplete: exact thresholds
def test_dead_time_threshold_is_exact_in_samples():
    # dead time 1 µs = 125 samples: an interphase of 125 passes, 124 fails (exact mode, ±0.5 sample)
    ok = make_train(gap=125)
    assert not fails(analyze(ok), "DEAD TIME")
    bad = make_train(gap=124)
    r = analyze(bad)
    assert fails(r, "DEAD TIME: 10 transitions")
    assert r.dead_time["violations"] == 10 and r.dead_time["min_idle_us"] == pytest.approx(124 / 125)
    assert "NEG -> POS" in fails(r, "DEAD TIME")[0]
    assert not fails(analyze(bad, dead_time_ns=992), "DEAD TIME")


def test_overlap_of_one_sample_fails():
    t = make_train(gap=125)
    neg = t.channels["NEG"].toggles.copy()
    neg[1] += 126  # phase 1 of pulse 0 now ends one sample after phase 2 started
    r = analyze(with_toggles(t, "NEG", neg))
    assert fails(r, "OVERLAP: POS and NEG both high 1 times") and "for 1 samples" in fails(r, "OVERLAP")[0]


def test_truncated_pulse_is_reported_with_its_time():
    t = make_train()
    pos = np.delete(t.channels["POS"].toggles, [8, 9])  # pulse 4 loses its phase 2
    r = analyze(with_toggles(t, "POS", pos), expected=EXP)
    assert r.incomplete["truncated"] == 1
    assert r.incomplete["truncated_times_us"] == [pytest.approx((1_000 + 4 * 125_000) / 125)]
    assert fails(r, "INCOMPLETE: 1 pulses with phase 1 but no phase 2")
