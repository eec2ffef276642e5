"""Analyzer tests on synthetic *fixtures* (hand-built edge arrays that exercise the analyzer itself).

Captures that verify the firmware never come from here: they come from the emulator (hil_tests/).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from picostim.capture.analyzer import analyze, both_high
from picostim.capture.trace import Channel, Trace

SR = 125_000_000  # one sample per PIO tick: exact mode


def make_train(n_pulses=10, p1=25_000, gap=1_000, p2=25_000, rec=0, rec_gap=0, period=125_000,
               burst=0, interburst=0, first=1_000, polarity="cathodic-first", sr=SR, tail=None,
               trig_at=None, sync=True, channel=0):
    """Edges of an ideal train, in samples (fixture generator, vectorised)."""
    k = np.arange(n_pulses, dtype=np.int64)
    if burst:
        b, i = k // burst, k % burst
        pulse_len = p1 + gap + p2 + (rec_gap + rec if rec else 0)
        burst_span = (burst - 1) * period + pulse_len  # last pulse end relative to burst start
        starts = first + b * (burst_span + interburst) + i * period
    else:
        starts = first + k * period
    p1e = starts + p1
    p2s = p1e + gap
    p2e = p2s + p2
    last_end = p2e[-1] + (rec_gap + rec if rec else 0)
    n = int(last_end + (tail if tail is not None else period))
    a = np.stack([starts, p1e], 1).ravel()
    bb = np.stack([p2s, p2e], 1).ravel()
    sfx = "" if channel == 0 else f"_{channel}"
    first_line, second_line = ("NEG", "POS") if polarity == "cathodic-first" else ("POS", "NEG")
    ch = {"POS" + sfx: None, "NEG" + sfx: None}
    ch[first_line + sfx] = Channel(0, a)
    ch[second_line + sfx] = Channel(0, bb)
    if rec:
        ch["RECOVERY" + sfx] = Channel(0, np.stack([p2e + rec_gap, p2e + rec_gap + rec], 1).ravel())
    if sync:
        ch["SYNC" + sfx] = Channel(0, np.stack([starts, p2e], 1).ravel())
    if trig_at is not None:
        ch["TRIG1"] = Channel(0, np.array([trig_at, trig_at + 100], dtype=np.int64))
    return Trace(sr, n, ch)


def us(samples, sr=SR):
    return samples * 1e6 / sr


EXP = dict(phase1_us=200.0, interphase_us=8.0, phase2_us=200.0, period_us=1000.0, pulses=10)


def test_ideal_train_exact():
    r = analyze(make_train(), expected=EXP)
    assert r.ok, r.failures
    j = r.to_json()
    assert j["pulses"] == 10
    assert j["phase1_us"] == {"min": 200.0, "mean": 200.0, "max": 200.0, "std": 0.0}
    assert j["interphase_us"]["mean"] == 8.0
    assert j["period_us"]["max"] == 1000.0
    assert j["overlaps"]["count"] == 0
    assert r.polarity == "cathodic-first"
    json.dumps(j)  # serialisable


def shifted(trace, name, index, delta):
    """Copy of ``trace`` with toggle ``index`` of ``name`` moved by ``delta`` samples."""
    chans = {k: Channel(c.initial, c.toggles.copy()) for k, c in trace.channels.items()}
    chans[name].toggles[index] += delta
    return Trace(trace.samplerate_hz, trace.n_samples, chans)


def with_toggles(trace, name, toggles, initial=None):
    chans = dict(trace.channels)
    old = chans.get(name)
    chans[name] = Channel(old.initial if initial is None and old else (initial or 0),
                          np.sort(np.asarray(toggles, dtype=np.int64)))
    return Trace(trace.samplerate_hz, trace.n_samples, chans)


def test_anodic_first_and_polarity_check():
    t = make_train(polarity="anodic-first")
    assert analyze(t, expected=EXP).ok
    assert analyze(t, expected=EXP).polarity == "anodic-first"
    r = analyze(t, expected=EXP, polarity="cathodic-first")
    assert not r.ok and any("polarity" in f for f in r.failures)


def test_zero_interphase_is_measured_and_is_a_dead_time_failure():
    # hand-built violating fixture: phase 2 starts on the sample phase 1 ends
    t = make_train(gap=0)
    r = analyze(t, expected=dict(EXP, interphase_us=0))
    assert r.to_json()["interphase_samples"]["max"] == 0  # the width is still measured as it is
    assert [f.split(":")[0] for f in r.failures] == ["DEAD TIME"]
    assert r.dead_time["violations"] == 10 and r.dead_time["min_idle_us"] == 0
    assert "NEG -> POS" in r.failures[0]
    assert analyze(t, expected=dict(EXP, interphase_us=0), dead_time_ns=0).ok  # only the dead time fails


@pytest.mark.parametrize("line,idx", [("NEG", 0), ("NEG", 7), ("POS", 4), ("POS", 19), ("SYNC", 3)])
@pytest.mark.parametrize("delta", [-1, 1, 3])
def test_shifted_edge_fails_in_exact_mode(line, idx, delta):
    t = shifted(make_train(), line, idx, delta)
    r = analyze(t, expected=EXP)
    assert not r.ok


def test_missing_pulse_fails():
    t = make_train()
    neg, pos, sync = (t.channels[k].toggles for k in ("NEG", "POS", "SYNC"))
    t = with_toggles(t, "NEG", np.delete(neg, [8, 9]))
    t = with_toggles(t, "POS", np.delete(pos, [8, 9]))
    t = with_toggles(t, "SYNC", np.delete(sync, [8, 9]))
    r = analyze(t, expected=EXP)
    assert not r.ok
    assert any("period" in f for f in r.failures) and any("pulses" in f for f in r.failures)
    # without a pulse count, the period still catches it
    assert not analyze(t, expected={k: v for k, v in EXP.items() if k != "pulses"}).ok


def test_extra_pulse_fails():
    t = make_train()
    extra = 1_000 + 3 * 125_000 + 60_000
    add = lambda name, a, b: with_toggles(t, name, np.concatenate((t.channels[name].toggles, [a, b])))  # noqa: E731
    t = add("NEG", extra, extra + 25_000)
    t = add("POS", extra + 26_000, extra + 51_000)
    t = add("SYNC", extra, extra + 51_000)
    r = analyze(t, expected=EXP)
    assert r.n_pulses == 11
    assert not r.ok


def test_overlap_fails_and_is_located():
    t = make_train()
    pos = t.channels["POS"].toggles.copy()
    pos[4] -= 1_500  # pulse 2's phase 2 starts 1500 samples early: 500 samples inside phase 1
    t = with_toggles(t, "POS", pos)
    r = analyze(t, expected=EXP)
    assert not r.ok
    j = r.to_json()
    assert j["overlaps"]["count"] == 1
    assert j["overlaps"]["samples"] == [int(pos[4])]
    assert j["overlaps"]["durations_samples"] == [500]
    # overlap without any expected values is still a failure (safety)
    assert not analyze(t).ok


def test_overlap_merge_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = 300
        a = Channel(int(rng.integers(2)), np.unique(rng.integers(1, n, 30)))
        b = Channel(int(rng.integers(2)), np.unique(rng.integers(1, n, 30)))
        la = np.array([a.level_at(i) for i in range(n)])
        lb = np.array([b.level_at(i) for i in range(n)])
        both = np.concatenate(([0], la & lb, [0]))
        d = np.diff(both)
        s, e = both_high(a, b, n)
        assert list(s) == list(np.flatnonzero(d == 1)) and list(e) == list(np.flatnonzero(d == -1))


def test_truncated_vs_cut_by_capture_end():
    t = make_train()
    # truncated: pulse 4 loses its phase 2 (and SYNC ends with phase 1)
    pos = np.delete(t.channels["POS"].toggles, [8, 9])
    tr = with_toggles(t, "POS", pos)
    r = analyze(tr, expected=EXP)
    assert r.incomplete["truncated"] == 1 and r.incomplete["cut_by_capture_end"] == 0
    assert not r.ok
    # cut: capture ends in the middle of the last pulse's phase 1 / during its interphase / its phase 2
    last_start = 1_000 + 9 * 125_000
    for cut in (last_start + 10_000, last_start + 25_000 + 500, last_start + 26_000 + 100):
        chans = {k: Channel(c.initial, c.toggles[c.toggles < cut]) for k, c in t.channels.items()}
        r = analyze(Trace(SR, cut, chans), expected={k: v for k, v in EXP.items() if k != "pulses"})
        assert r.incomplete["cut_by_capture_end"] == 1, (cut, r.incomplete)
        assert r.incomplete["truncated"] == 0
        assert r.n_pulses == 9
        assert r.ok, r.failures


def test_cut_by_capture_start_is_not_a_pulse():
    t = make_train(first=0)
    # shift the capture start into the first pulse's phase 1
    chans = {k: Channel(c.level_at(5_000), c.toggles[c.toggles > 5_000] - 5_000) for k, c in t.channels.items()}
    r = analyze(Trace(SR, t.n_samples - 5_000, chans), expected=dict(EXP, pulses=9))
    assert r.ok, r.failures
    assert r.incomplete["cut_by_capture_start"] == 1


def test_recovery():
    t = make_train(rec=12_500, rec_gap=125)  # the board's 1 µs dead time between phase 2 and RECOVERY
    r = analyze(t, expected=dict(EXP, recovery_us=100.0))
    assert r.ok, r.failures
    assert r.to_json()["recovery_gap_us"]["mean"] == 1.0
    assert r.to_json()["recovery_us"]["mean"] == 100.0
    assert not analyze(t, expected=dict(EXP, recovery_us=0)).ok
    assert not analyze(make_train(), expected=dict(EXP, recovery_us=100.0)).ok
    assert not analyze(shifted(t, "RECOVERY", 5, 1), expected=dict(EXP, recovery_us=100.0)).ok


def test_bursts():
    # 5 pulses at 500 Hz, 200 us phases, bursts separated by 10 ms of silence
    t = make_train(n_pulses=15, period=250_000, burst=5, interburst=1_250_000)
    exp = dict(phase1_us=200, interphase_us=8, phase2_us=200, period_us=2000, burst_pulses=5,
               burst_gap_us=10_000, bursts=3, pulses=15)
    r = analyze(t, expected=exp)
    assert r.ok, r.failures
    j = r.to_json()
    assert j["bursts"]["count"] == 3 and j["bursts"]["sizes"] == [5, 5, 5]
    assert j["burst_gap_us"]["mean"] == 10_000
    assert j["period_us"]["max"] == 2000
    assert not analyze(t, expected=dict(exp, burst_pulses=4)).ok
    assert not analyze(t, expected=dict(exp, burst_gap_us=10_000.016)).ok
    # drop the 3rd pulse of burst 2: burst sizes and the period both catch it
    k = 7
    tt = t
    for name in ("NEG", "POS", "SYNC"):
        tt = with_toggles(tt, name, np.delete(tt.channels[name].toggles, [2 * k, 2 * k + 1]))
    assert not analyze(tt, expected=exp).ok
    # auto-detected burst structure without expectations
    r = analyze(t)
    assert r.ok and r.bursts["count"] == 3


def test_trigger_latency():
    t = make_train(first=10_000, trig_at=9_996)
    r = analyze(t, expected=dict(EXP, trigger_latency_max_cycles=4))
    assert r.ok, r.failures
    assert r.to_json()["trigger_latency_cycles"] == 4
    assert r.to_json()["trigger_latency_us"] == pytest.approx(0.032)
    assert not analyze(t, expected=dict(EXP, trigger_latency_max_cycles=3)).ok
    t2 = make_train(first=10_000 + 125_000, trig_at=9_996)
    r2 = analyze(t2, expected=dict(EXP, train_delay_us=1000, trigger_latency_max_cycles=4))
    assert r2.ok, r2.failures


def test_channel_suffix():
    t = make_train(channel=2)
    r = analyze(t, channel=2, expected=EXP)
    assert r.ok, r.failures
    with pytest.raises(KeyError):
        analyze(t, channel=0)


def test_unknown_expected_key_is_an_error():
    with pytest.raises(ValueError):
        analyze(make_train(), expected={"phase_1_us": 200})


def test_asynchronous_tolerance_is_one_sample():
    # a 24 MS/s analyzer: 200 us = 4800 samples, 1 ms = 24000 samples
    sr = 24_000_000
    t = make_train(p1=4800, gap=192, p2=4800, period=24_000, sr=sr)
    assert analyze(t, expected=EXP, clock_ppm=0).ok
    r = analyze(shifted(t, "NEG", 6, 1), expected=EXP, clock_ppm=0)  # a phase 1 one sample long: inside ±1
    assert r.ok, r.failures
    r = analyze(shifted(t, "NEG", 6, 2), expected=EXP, clock_ppm=0)  # two samples: outside
    assert not r.ok
    assert any("phase1" in f for f in r.failures)
    # in exact mode (sample = PIO tick) the same one-sample shift fails
    assert not analyze(shifted(make_train(), "NEG", 6, 1), expected=EXP).ok


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 30), p1=st.integers(5, 5000), gap=st.integers(125, 400), p2=st.integers(5, 5000),
       extra=st.integers(125, 20000), data=st.data())
def test_property_perturbations(n, p1, gap, p2, extra, data):
    period = p1 + gap + p2 + extra
    t = make_train(n_pulses=n, p1=p1, gap=gap, p2=p2, period=period)
    exp = dict(phase1_us=us(p1), interphase_us=us(gap), phase2_us=us(p2), period_us=us(period), pulses=n)
    r = analyze(t, expected=exp)
    assert r.ok, r.failures
    assert r.n_pulses == n
    line = data.draw(st.sampled_from(["NEG", "POS"]))
    idx = data.draw(st.integers(0, 2 * n - 1))
    delta = data.draw(st.sampled_from([-2, -1, 1, 2]))
    tt = shifted(t, line, idx, delta)
    assert not analyze(tt, expected=exp).ok
    # drop one pulse (all its lines)
    k = data.draw(st.integers(0, n - 1))
    tt = t
    for name in ("NEG", "POS", "SYNC"):
        tt = with_toggles(tt, name, np.delete(tt.channels[name].toggles, [2 * k, 2 * k + 1]))
    assert not analyze(tt, expected=exp).ok
    # overlap: phase 2 of pulse k starts inside its phase 1
    pos = t.channels["POS"].toggles.copy()
    pos[2 * k] = t.channels["NEG"].toggles[2 * k + 1] - 1
    assert not analyze(with_toggles(t, "POS", pos), expected=exp).ok


def test_throughput_100M_sample_capture():
    """A 100 M-sample capture (0.8 s at 125 MHz) of a dense 125 kHz train: 100 k pulses, 600 k edges.
    Measured here: ~80 ms (about 1.3e9 samples/s, 7.7e6 edges/s). The bound is loose for slow CI."""
    t = make_train(first=1000, n_pulses=99_990, p1=250, gap=125, p2=250, period=1000)
    t.n_samples = 100_000_000
    t0 = time.perf_counter()
    r = analyze(t, expected=dict(phase1_us=2, interphase_us=1, phase2_us=2, period_us=8, pulses=99_990))
    dt = time.perf_counter() - t0
    assert r.ok, r.failures
    assert dt < 3.0, f"analyze took {dt:.2f} s"


def test_bursts_with_short_interburst():
    # interburst gap shorter than half a period: split by the expected burst period, not by 1.5 periods
    period, n_b = 250_000, 4
    t = make_train(n_pulses=12, period=period, burst=n_b, interburst=period - 51_000 + 50_000)
    # spacing last->first = pulse_len + interburst = 51_000 + 249_000 = 300_000 samples (2.4 ms vs 2 ms)
    bp_us = us((n_b - 1) * period + 300_000)
    exp = dict(phase1_us=200, interphase_us=8, phase2_us=200, period_us=2000, burst_pulses=n_b,
               burst_period_us=bp_us, pulses=12)
    r = analyze(t, expected=exp)
    assert r.ok, r.failures
    assert r.bursts["sizes"] == [4, 4, 4]
    r2 = analyze(t, expected={k: v for k, v in exp.items() if k != "burst_period_us"} | {"burst_gap_us": us(249_000)})
    assert r2.ok, r2.failures
