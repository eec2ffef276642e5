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


# ---- one rich capture at an asynchronous rate (25 MS/s: 0.04 µs per sample, 5 PIO cycles per sample),
# every report field pinned: µs conversions and JSON keys are what HIL verification and users read
SR25 = 25_000_000
K = 1e6 / SR25  # µs per sample


def rich():
    # 2 bursts of 3 pulses: 200 µs / 8 µs / 200 µs, recovery 100 µs after 4 µs, 1 ms period, 5 ms between bursts
    return make_train(sr=SR25, n_pulses=6, p1=5000, gap=200, p2=5000, rec=2500, rec_gap=100, period=25_000,
                      burst=3, interburst=125_000, first=1000, trig_at=900)


RICH_EXP = dict(phase1_us=200, interphase_us=8, phase2_us=200, recovery_us=100, recovery_gap_us=4,
                period_us=1000, burst_pulses=3, burst_gap_us=5000, burst_period_us=7512, bursts=2, pulses=6,
                trigger_latency_us=4, trigger_latency_max_cycles=500, polarity="cathodic-first")


def test_rich_capture_report_fields():
    r = analyze(rich(), expected=RICH_EXP)
    assert r.ok, r.failures
    assert not r.exact and r.tolerance_samples == 1.0 and r.clock_ppm == 100.0
    j = r.to_json()
    assert (j["channel"], j["polarity"], j["pulses"], j["n_samples"]) == (0, "cathodic-first", 6, 276_600)
    assert j["duration_us"] == pytest.approx(276_600 * K)
    for name, us_ in (("phase1", 200), ("interphase", 8), ("phase2", 200), ("recovery", 100),
                      ("recovery_gap", 4), ("period", 1000), ("burst_gap", 5000), ("burst_period", 7512)):
        assert j[f"{name}_us"]["mean"] == pytest.approx(us_), name
        assert j[f"{name}_samples"]["max"] == pytest.approx(us_ / K), name
    assert r.stats["period"].n == 4 and r.stats["burst_gap"].n == 1
    assert j["train"] == {"start_us": pytest.approx(40.0), "end_us": pytest.approx(10_064.0),
                          "duration_us": pytest.approx(10_024.0)}
    b = j["bursts"]
    assert (b["count"], b["sizes"], b["pulses_per_burst"]) == (2, [3, 3], {"min": 3, "max": 3})
    assert b["starts_us"] == [pytest.approx(40.0), pytest.approx(7552.0)]
    t = j["trigger"]
    assert (t["channel"], t["latency_samples"]) == ("TRIG1", 100)
    assert t["edge_us"] == pytest.approx(36.0) and t["latency_us"] == pytest.approx(4.0)
    assert j["trigger_latency_cycles"] == pytest.approx(500) and j["trigger_latency_us"] == pytest.approx(4.0)
    d = j["dead_time"]
    assert d["required_us"] == 1.0 and d["transitions"] == 17 and d["violations"] == 0
    assert d["min_idle_us"] == pytest.approx(4.0) and d["violation_times_us"] == []
    assert d["tolerance_samples"] == pytest.approx(1.0 + 100e-6 * 25, abs=1e-6)
    assert j["incomplete"] == {"truncated": 0, "truncated_times_us": [], "cut_by_capture_end": 0,
                               "cut_by_capture_end_times_us": [], "cut_by_capture_start": 0,
                               "orphan_phase2": 0, "orphan_phase2_times_us": [], "orphan_recovery": 0}
    assert j["overlaps"] == {"count": 0, "times_us": [], "samples": [], "durations_samples": []}
    assert j["sync_errors"] == 0 and j["expected"] == RICH_EXP and j["exact"] is False


@pytest.mark.parametrize("key", ["phase1_us", "interphase_us", "phase2_us", "recovery_us", "recovery_gap_us",
                                 "period_us", "burst_gap_us", "burst_period_us", "trigger_latency_us"])
@pytest.mark.parametrize("sign", [1, -1])
def test_rich_capture_each_expectation_just_outside_its_tolerance_fails(key, sign):
    # just outside the asynchronous tolerance: 1 sample + 100 ppm of the expected value, + 1 sample
    off = (2 + 100e-6 * RICH_EXP[key] / K) * K
    r = analyze(rich(), expected=dict(RICH_EXP, **{key: RICH_EXP[key] + sign * off}))
    assert len(r.failures) == 1, r.failures
    assert r.failures[0].startswith(key.removesuffix("_us").replace("_", " ") if key.startswith("trigger")
                                    else key.removesuffix("_us"))


def test_rich_capture_one_sample_off_passes_asynchronously():
    for key in ("phase1_us", "period_us", "burst_gap_us", "trigger_latency_us"):
        assert analyze(rich(), expected=dict(RICH_EXP, **{key: RICH_EXP[key] + 1 * K})).ok, key


def test_frequency_is_an_alternative_to_the_period():
    exp = {k: v for k, v in RICH_EXP.items() if k != "period_us"}
    assert analyze(rich(), expected=dict(exp, frequency_hz=1000)).ok
    assert fails(analyze(rich(), expected=dict(exp, frequency_hz=990)), "period")


def test_overlap_and_dead_time_messages_at_an_asynchronous_rate():
    t = make_train(sr=SR25, n_pulses=3, p1=5000, gap=20, p2=5000, period=25_000, first=1000)
    r = analyze(t)
    msg = fails(r, "DEAD TIME")
    assert msg == ["DEAD TIME: 3 transitions between different drive states with less than 1 µs idle, "
                   "first NEG -> POS at 240.000 µs after 20 samples (0.800 µs)"]
    assert r.dead_time["violation_times_us"] == [pytest.approx(240.0), pytest.approx(1240.0),
                                                  pytest.approx(2240.0)]
    pos = t.channels["POS"].toggles.copy()
    pos[0] -= 30  # phase 2 of pulse 0 rises 10 samples before phase 1 ends
    r = analyze(with_toggles(t, "POS", pos))
    assert fails(r, "OVERLAP") == ["OVERLAP: POS and NEG both high 1 times, first at sample 5990 (239.600 µs) "
                                   "for 10 samples"]
    assert r.to_json()["overlaps"] == {"count": 1, "times_us": [pytest.approx(239.6)], "samples": [5990],
                                       "durations_samples": [10]}


def test_orphans_and_cut_pulses_are_located_in_microseconds():
    t = make_train(sr=SR25, n_pulses=4, p1=5000, gap=200, p2=5000, rec=2500, rec_gap=100, period=25_000,
                   first=1000)
    neg = np.delete(t.channels["NEG"].toggles, [2, 3])  # pulse 1 loses phase 1: its phase 2 is an orphan
    r = analyze(with_toggles(t, "NEG", neg))
    assert r.incomplete["orphan_phase2"] == 1
    assert r.incomplete["orphan_phase2_times_us"] == [pytest.approx((26_000 + 5200) * K)]
    assert r.incomplete["orphan_recovery"] == 1
    assert fails(r, "RECOVERY: 1 RECOVERY intervals not after a phase 2")
    # the capture ends inside the last phase 2: cut by the capture end, not a failure
    cut = Trace(SR25, 76_000 + 5200 + 100, dict(t.channels))
    rc = analyze(cut)
    assert rc.incomplete["cut_by_capture_end"] == 1
    assert rc.incomplete["cut_by_capture_end_times_us"] == [pytest.approx(76_000 * K)]
    assert rc.n_pulses == 3 and not fails(rc, "INCOMPLETE")


@pytest.mark.parametrize("line,pol", [("NEG", "cathodic-first"), ("POS", "anodic-first")])
def test_polarity_with_one_line_only(line, pol):
    t = make_train(n_pulses=3)
    other = "POS" if line == "NEG" else "NEG"
    chans = dict(t.channels)
    chans[line] = t.channels["NEG"]
    chans[other] = Channel(0, np.zeros(0, np.int64))
    r = analyze(Trace(t.samplerate_hz, t.n_samples, chans))
    assert r.polarity == pol
    assert r.n_pulses == 0 and r.incomplete["truncated"] + r.incomplete["cut_by_capture_end"] == 3


def test_no_pulses_no_polarity():
    t = make_train(n_pulses=1)
    empty = Trace(t.samplerate_hz, t.n_samples, {"POS": Channel(0), "NEG": Channel(0)})
    r = analyze(empty)
    assert r.polarity is None and r.n_pulses == 0 and fails(r, "no complete pulse found")
    assert analyze(empty, expected=dict(pulses=0)).ok


@pytest.mark.parametrize("pol", ["cathodic-first", "anodic-first"])
def test_polarity_of_a_capture_starting_mid_phase1(pol):
    t = make_train(polarity=pol)
    first = "NEG" if pol == "cathodic-first" else "POS"
    tg = t.channels[first].toggles
    # the capture starts 100 samples into the first phase 1: that line is high at sample 0
    chans = {k: Channel(c.initial, c.toggles - (tg[0] + 100)) for k, c in t.channels.items()}
    chans[first] = Channel(1, (tg - (tg[0] + 100))[1:])
    chans["SYNC"] = Channel(1, (t.channels["SYNC"].toggles - (tg[0] + 100))[1:])
    tt = Trace(t.samplerate_hz, t.n_samples - tg[0] - 100, chans)
    r = analyze(tt)
    assert r.polarity == pol and r.n_pulses == 9
    assert r.incomplete["cut_by_capture_start"] == 1


def test_missing_lines_are_an_error():
    t = make_train()
    with pytest.raises(KeyError, match="trace has no POS/NEG"):
        analyze(Trace(t.samplerate_hz, t.n_samples, {"NEG": t.channels["NEG"]}))
    with pytest.raises(KeyError, match="trace has no POS_1/NEG_1"):
        analyze(t, channel=1)
