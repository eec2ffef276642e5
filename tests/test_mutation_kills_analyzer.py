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
from test_dac_decode import A_ON, B_ON, Lines


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


# ---- triphasic analysis (shape = triphasic): hand-built bit-level captures with the DAC bus
F, G, M, TP = 5_000, 250, 10_000, 50_000  # flank, gap, main phase, period (samples = PIO ticks)
TRI_EXP = dict(shape="triphasic", phase1_us=80, interphase_us=2, phase2_us=80, period_us=400)


def tri_train(n=None, codes=None, *, main_line="NEG", flanks=None, gaps=None, write_at=None, sync=True,
              drop_first_flank=(), drop_second_flank=(), first=10_000, tail=TP, extra=None):
    """Triphasic pulses drawn edge by edge: flank on the other line, gap, main phase on ``main_line``,
    gap, flank. ``codes`` [(main code, flank code)] written on CS0 7_500 samples (60 µs) before each
    pulse (main from DAC B when the main line is NEG); ``flanks``/``gaps``: per pulse (first, second)."""
    n = len(codes) if n is None else n
    flank_line = "POS" if main_line == "NEG" else "NEG"
    names = ("SCK", "MOSI", "CS0", "POS", "NEG") + (("SYNC",) if sync else ())
    ln = Lines(names)
    for k in range(n):
        t = first + k * TP
        f1, f2 = (flanks or {}).get(k, (F, F))
        g1, g2 = (gaps or {}).get(k, (G, G))
        if codes is not None:
            c1, c2 = codes[k]
            w1, w2 = (B_ON | c1, A_ON | c2) if main_line == "NEG" else (A_ON | c1, B_ON | c2)
            off = (write_at or {}).get(k, -7_500)
            u = ln.frame("CS0", t + off, w1)
            ln.frame("CS0", u + 10, w2)
        if k not in drop_first_flank:
            ln.set(flank_line, t, 1)
            ln.set(flank_line, t + f1, 0)
        m0 = t + f1 + g1
        ln.set(main_line, m0, 1)
        ln.set(main_line, m0 + M, 0)
        s2 = m0 + M + g2
        if k not in drop_second_flank:
            ln.set(flank_line, s2, 1)
            ln.set(flank_line, s2 + f2, 0)
        if sync:
            ln.set("SYNC", t, 1)
            ln.set("SYNC", s2 + f2, 0)
    if extra:
        extra(ln)
    return ln.trace(first + (n - 1) * TP + 2 * F + 2 * G + M + tail)


def test_triphasic_clean_train_measures_each_part():
    r = analyze(tri_train(codes=[(400, 400)] * 4), expected=TRI_EXP)
    assert r.ok, r.failures
    assert r.shape == "triphasic" and r.polarity == "cathodic-first" and r.n_pulses == 4
    v = r.values
    assert set(v["flank1"].tolist()) == set(v["flank2"].tolist()) == {F}
    assert set(v["interphase1"].tolist()) == set(v["interphase"].tolist()) == {G}
    assert set(v["phase1"].tolist()) == {M} and set(v["phase2"].tolist()) == {2 * F}
    assert set(v["period"].tolist()) == {TP}
    assert r.pulses.pulse_start().tolist() == [10_000 + k * TP for k in range(4)]
    j = r.to_json()
    assert j["shape"] == "triphasic" and j["flank1_us"]["mean"] == 40.0 and j["interphase1_us"]["max"] == 2.0
    assert "flank2_samples" in j and "shape" not in analyze(make_train(n_pulses=2)).to_json()
    assert "flank1" in r.summary() and "interphase1" in r.summary()
    assert r.train["start_us"] == 80.0 and r.amplitude_ua == [1000.0] * 4
    assert r.dac["amplitude2_ua"] == [1000.0] * 4 and r.dac["flank_codes_differ"] == 0
    assert r.sync_errors == 0


@pytest.mark.parametrize("shape", ["triphasic", "1", 1, " Triphasic "])
def test_triphasic_shape_spellings(shape):
    assert analyze(tri_train(codes=[(400, 400)] * 2), expected=dict(TRI_EXP, shape=shape)).shape == "triphasic"


@pytest.mark.parametrize("shape", [None, 0, "0", "biphasic"])
def test_biphasic_shape_spellings_read_a_triphasic_capture_as_biphasic(shape):
    r = analyze(tri_train(codes=[(400, 400)] * 2), expected=dict(shape=shape))
    assert r.shape == "biphasic" and not r.ok  # the first flanks are orphan phase-2 intervals


def test_unknown_shape_is_an_error():
    with pytest.raises(ValueError, match="unknown shape 'tri'"):
        analyze(tri_train(n=1), expected=dict(shape="tri"))


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("delta", [1, -1])
def test_triphasic_each_flank_checked_alone(which, delta):
    fl = [F, F]
    fl[which] += delta
    r = analyze(tri_train(codes=[(400, 400)] * 3, flanks={1: tuple(fl)}), expected=dict(TRI_EXP, pulses=3))
    name = ("flank1", "flank2")[which]
    assert [f for f in r.failures if not f.startswith("DAC")] and r.failures[0].startswith(name + ": 1/3"), r.failures


def test_triphasic_flank_expected_from_flank_us():
    tr = tri_train(codes=[(400, 400)] * 2)
    assert analyze(tr, expected=dict(TRI_EXP, phase2_us=100, flank_us=40)).ok
    assert fails(analyze(tr, expected=dict(TRI_EXP, flank_us=41)), "flank1:")


@pytest.mark.parametrize("which", [0, 1])
def test_triphasic_each_gap_checked(which):
    g = [G, G]
    g[which] += 1
    r = analyze(tri_train(codes=[(400, 400)] * 3, gaps={2: tuple(g)}), expected=TRI_EXP)
    name = ("interphase1", "interphase")[which]
    assert fails(r, name + ": 1/3"), r.failures


@pytest.mark.parametrize("main_line,pol", [("NEG", "cathodic-first"), ("POS", "anodic-first")])
def test_triphasic_polarity_is_the_main_phase_line(main_line, pol):
    tr = tri_train(codes=[(400, 400)] * 3, main_line=main_line)
    r = analyze(tr, expected=TRI_EXP)
    assert r.ok and r.polarity == pol, r.failures
    other = "anodic-first" if pol == "cathodic-first" else "cathodic-first"
    assert fails(analyze(tr, expected=dict(TRI_EXP, polarity=other)), "polarity: expected " + other)


def test_triphasic_main_phases_without_their_flanks_are_incomplete():
    # pulse 1 loses its second flank and pulse 2 its first: two main phases with no flank between them
    r = analyze(tri_train(codes=[(400, 400)] * 4, drop_first_flank=(2,), drop_second_flank=(1,)),
                expected=dict(shape="triphasic"))
    assert r.incomplete["truncated"] == 2 and r.n_pulses == 2
    assert r.incomplete["truncated_times_us"] == [pytest.approx((10_000 + k * TP + F + G) / 125) for k in (1, 2)]
    assert fails(r, "INCOMPLETE: 2 pulses with phase 1 but no phase 2")
    assert r.incomplete["cut_by_capture_start"] == 0 and r.incomplete["cut_by_capture_end"] == 0


def test_triphasic_missing_first_flank_is_incomplete_with_expected_widths():
    # (the analyzer used to take the previous pulse's second flank as its first; only the widths and
    # SYNC caught it)
    r = analyze(tri_train(codes=[(400, 400)] * 4, drop_first_flank=(2,)), expected=TRI_EXP)
    assert r.incomplete["truncated"] == 1 and fails(r, "INCOMPLETE: 1 pulses with phase 1 but no phase 2")


def test_triphasic_missing_first_flank_is_incomplete_without_expected_widths():
    """A main phase whose first flank is missing must not borrow the previous pulse's second flank."""
    r = analyze(tri_train(codes=[(400, 400)] * 4, drop_first_flank=(2,)), expected=dict(shape="triphasic"))
    assert not r.ok and r.incomplete["truncated"] == 1


def test_triphasic_capture_starting_inside_a_pulse_is_cut_not_failed():
    tr = tri_train(codes=[(400, 400)] * 4)
    t0 = 10_000 + F + 100  # after the first flank: the first main phase has no first flank
    ch = {}
    for k, c in tr.channels.items():
        lv = int(c.initial ^ (np.searchsorted(c.toggles, t0, side="right") & 1))
        tg = c.toggles[c.toggles > t0] - t0
        ch[k] = Channel(lv, tg)
    r = analyze(Trace(SR, tr.n_samples - t0, ch), expected=TRI_EXP)
    assert r.n_pulses == 3 and r.incomplete["cut_by_capture_start"] == 1 and r.incomplete["truncated"] == 0
    assert not fails(r, "INCOMPLETE") and not fails(r, "phase")


def test_triphasic_sync_from_first_flank_to_second():
    tr = tri_train(codes=[(400, 400)] * 3)
    sy = tr.channels["SYNC"].toggles.copy()
    sy[2] += F + G  # pulse 1's SYNC rises with the main phase
    r = analyze(with_toggles(tr, "SYNC", sy), expected=TRI_EXP)
    assert r.sync_errors == 1 and fails(r, "from the first flank start to the second flank end")


def test_triphasic_trigger_latency_to_the_first_flank():
    tr = tri_train(codes=[(400, 400)] * 2)
    ch = dict(tr.channels)
    ch["TRIG1"] = Channel(0, np.array([9_500, 9_600], np.int64))
    r = analyze(Trace(SR, tr.n_samples, ch), expected=dict(TRI_EXP, trigger_latency_us=4))
    assert r.ok and r.trigger["latency_samples"] == 500, r.failures


def test_triphasic_dac_change_in_an_interphase_gap_fails():
    def in_gap(ln):  # one write of the flank output inside pulse 1's first interphase gap (G = 250 samples)
        ln.frame("CS0", 10_000 + TP + F + 2, A_ON | 300)
    r = analyze(tri_train(codes=[(400, 400)] * 3, extra=in_gap), expected=TRI_EXP)
    assert r.dac["changes_in_pulse"] == 1
    msg = fails(r, "DAC CHANGE IN PULSE: 1 ")
    assert msg and "output A of CS0" in msg[0] and msg[0].endswith("in an interphase gap"), r.failures


def test_triphasic_flanks_with_different_codes_fail():
    def between(ln):  # flank output A changes after pulse 1's main phase, before its second flank
        ln.frame("CS0", 10_000 + TP + F + G + M + 2, A_ON | 300)
    r = analyze(tri_train(codes=[(400, 400), (400, 400), (400, 300)], extra=between), expected=TRI_EXP)
    assert r.dac["flank_codes_differ"] == 1
    assert fails(r, "DAC FLANKS: 1 triphasic pulses") and "codes 400/300" in fails(r, "DAC FLANKS")[0]


def test_triphasic_balance_uses_both_flanks():
    # main 10_000 x 400 = flanks 2 x 5_000 x 400: balanced; 402 over the flanks is one LSB over: unbalanced
    assert analyze(tri_train(codes=[(400, 400)] * 2), expected=TRI_EXP).dac["unbalanced"] == 0
    r = analyze(tri_train(codes=[(400, 400), (400, 402)]), expected=TRI_EXP)
    assert r.dac["unbalanced_pulses"] == [1] and fails(r, "DAC BALANCE")
    # half an LSB over both flanks is the rounding: 401 x 10_000 vs 200.5 x 2 x 10_000 (flanks 10_000 each)


# ---- safety checks at their edges (second triage batch)
def test_dead_time_from_a_line_high_at_the_capture_start():
    # POS high at sample 0 until 100, NEG rises 10 samples later: the first drive state counts too
    t = Trace(SR, 50_000, {"POS": Channel(1, np.array([100], np.int64)),
                           "NEG": Channel(0, np.array([110, 30_000], np.int64))})
    r = analyze(t)
    assert r.dead_time["transitions"] == 1 and r.dead_time["violations"] == 1
    assert fails(r, "DEAD TIME: 1 transitions") and "first POS -> NEG" in fails(r, "DEAD TIME")[0]


def test_an_edge_at_the_capture_end_is_outside_the_capture():
    # NEG high up to the end; POS rises exactly at n_samples (not captured): no overlap, no transition
    n = 10_000
    t = Trace(SR, n, {"NEG": Channel(0, np.array([1_000], np.int64)), "POS": Channel(0, np.array([n], np.int64))})
    r = analyze(t)
    assert r.dead_time["transitions"] == 0 and len(r.overlaps[0]) == 0 and not fails(r, "OVERLAP")
    assert r.incomplete["orphan_phase2"] == 0 and r.incomplete["cut_by_capture_end"] == 1
    # POS falls 5 samples before the end, NEG rises at the end: no dead-time violation inside the capture
    t2 = Trace(SR, n, {"POS": Channel(0, np.array([1_000, n - 5], np.int64)), "NEG": Channel(0, np.array([n], np.int64))})
    assert analyze(t2).dead_time["violations"] == 0


@pytest.mark.parametrize("spelling", ["0", 0, "cathodic", "Cathodic-First", "cathodic_first", "neg", "NEGATIVE"])
def test_cathodic_polarity_spellings(spelling):
    t = make_train(n_pulses=3)
    assert analyze(t, polarity=spelling).ok
    assert fails(analyze(make_train(n_pulses=3, polarity="anodic-first"), polarity=spelling),
                 "polarity: expected cathodic-first")


@pytest.mark.parametrize("spelling", ["1", 1, "anodic", "ANODIC-first", "anodic_first", "pos", "Positive"])
def test_anodic_polarity_spellings(spelling):
    assert analyze(make_train(n_pulses=3, polarity="anodic-first"), polarity=spelling).ok
    assert fails(analyze(make_train(n_pulses=3), polarity=spelling), "polarity: expected anodic-first")


def test_unknown_polarity_is_an_error():
    with pytest.raises(ValueError, match="unknown polarity 'up'"):
        analyze(make_train(n_pulses=1), polarity="up")


def test_dac_change_while_pos_is_high_fails_with_the_first_change_located():
    from test_dac_decode import P1, GAP, PERIOD, _train
    # pulse 1's writes land inside its phase 2 (POS high; cathodic-first)
    off = P1 + GAP + 1_000
    r = analyze(_train([(40, 20), (80, 40), (80, 40)], write_at={1: off}))
    assert r.dac["changes_in_pulse"] == 2
    msg = fails(r, "DAC CHANGE IN PULSE: 2 ")
    assert msg and msg[0].endswith("while POS was high"), r.failures
    first = 10_000 + PERIOD + off + 2 + 16 * 10 + 2  # the B frame's CS rise (test_dac_decode.Lines.frame)
    assert r.dac["changes_in_pulse_us"][0] == pytest.approx(first / 125)
    assert "output B of CS0 at %.3f µs" % (first / 125) in msg[0]


def _settle_capture(sr, lead, out="B"):
    """One cathodic pulse: phase 1 (NEG, DAC B) at sample 2_000 for 400 samples, gap 20, phase 2 (POS,
    DAC A) 400. Codes 41 / 21 written at the start, the other output's new code long before, and one
    write of ``out``'s new code whose CS rises ``lead`` samples before the rise of the line that draws
    on that output (B: NEG, A: POS)."""
    ln = Lines(("SCK", "MOSI", "CS0", "POS", "NEG"))
    u = ln.frame("CS0", 100, B_ON | 41, half=2)
    ln.frame("CS0", u + 4, A_ON | 21, half=2)
    s1, s2 = 2_000, 2_000 + 400 + 20
    ln.pulse("NEG", s1, 400, 20, 400)
    use, word, other = (s1, B_ON | 40, A_ON | 20) if out == "B" else (s2, A_ON | 20, B_ON | 40)
    ln.frame("CS0", 600, other, half=2)
    # a frame with half = 2: CS falls at t0 and rises at t0 + 2 + 16 * 4 + 2
    assert ln.frame("CS0", use - lead - (2 + 16 * 4 + 2), word, half=2) == use - lead
    tr = ln.trace(4_000)
    return Trace(sr, tr.n_samples, tr.channels)


@pytest.mark.parametrize("out", ["B", "A"])
def test_dac_settling_threshold_in_samples(out):
    # 10 MS/s: 4.5 µs = 45 samples, minus one sample of slack: 44 samples ahead passes, 43 fails; both
    # outputs are checked against the rise of the line that draws on them (A: POS, B: NEG)
    sr = 10_000_000
    ok = analyze(_settle_capture(sr, 44, out))
    assert ok.dac["settle"]["short"] == 0 and not fails(ok, "DAC NOT SETTLED"), ok.failures
    bad = analyze(_settle_capture(sr, 43, out))
    assert bad.dac["settle"]["short"] == 1 and fails(bad, "DAC NOT SETTLED: 1 DAC output changes")
    assert bad.dac["settle"]["min_us"] == pytest.approx(4.3)


def test_dac_settling_threshold_exact_mode():
    # 125 MS/s, one sample per tick: 4.5 µs = 562.5 samples: 563 ahead passes, 562 fails
    assert analyze(_settle_capture(SR, 563)).dac["settle"]["short"] == 0
    assert analyze(_settle_capture(SR, 562)).dac["settle"]["short"] == 1


def test_balance_at_the_one_lsb_floor_and_half_an_lsb_above_it():
    from test_dac_decode import _train
    # phase 2 = 2 x phase 1. Code 1 over phase 2 (the floor) may be off by one LSB: 4 x P1 vs 1 x 2 P1 is
    # exactly one LSB over phase 2 (balanced), 5 is 1.5 LSB (unbalanced)
    assert analyze(_train([(4, 1)])).dac["unbalanced"] == 0
    assert analyze(_train([(5, 1)])).dac["unbalanced"] == 1
    # above the floor half an LSB: 402 vs 200 (one LSB over phase 2) is unbalanced
    assert analyze(_train([(402, 200)])).dac["unbalanced"] == 1
    assert analyze(_train([(401, 200)])).dac["unbalanced"] == 0


def test_balance_margin_is_not_a_whole_sample_code():
    # exact mode, no slack: phase 1 2001 samples at code 1, phase 2 1000 at code 1 (the floor): the error
    # 1001 code-samples is one code-sample more than one LSB over phase 2 (1000): unbalanced
    ln = Lines(("SCK", "MOSI", "CS0", "POS", "NEG"))
    u = ln.frame("CS0", 100, B_ON | 1)
    ln.frame("CS0", u + 10, A_ON | 1)
    ln.pulse("NEG", 5_000, 2_001, 200, 1_000)
    r = analyze(ln.trace(20_000))
    assert r.dac["unbalanced"] == 1
    ln2 = Lines(("SCK", "MOSI", "CS0", "POS", "NEG"))
    u = ln2.frame("CS0", 100, B_ON | 1)
    ln2.frame("CS0", u + 10, A_ON | 1)
    ln2.pulse("NEG", 5_000, 2_000, 200, 1_000)
    assert analyze(ln2.trace(20_000)).dac["unbalanced"] == 0


def _last_phase2_lost(t, n):
    """make_train trace whose last pulse has no phase 2 (nor SYNC fall), ``n`` samples long."""
    ch = dict(t.channels)
    ch["POS"] = Channel(0, ch["POS"].toggles[:-2])
    ch["SYNC"] = Channel(0, ch["SYNC"].toggles[:-1])
    return Trace(t.samplerate_hz, n, ch)


def _drop_pulse(t, k):
    """Copy of a make_train trace without pulse k (its phase 1, phase 2 and SYNC edges)."""
    chans = {}
    for name, c in t.channels.items():
        tg = c.toggles
        if name in ("NEG", "POS", "SYNC"):
            tg = np.delete(tg, [2 * k, 2 * k + 1])
        chans[name] = Channel(c.initial, tg)
    return Trace(t.samplerate_hz, t.n_samples, chans)


@pytest.mark.parametrize("missing", [9, 14])
def test_a_short_burst_before_the_last_fails_even_when_partial_bursts_are_allowed(missing):
    t = _drop_pulse(make_train(n_pulses=20, period=250_000, burst=5, interburst=1_250_000), missing)
    exp = dict(burst_pulses=5, period_us=2000)
    r = analyze(t, expected=exp, allow_partial_last_burst=True)
    assert len(r.bursts["sizes"]) == 4 and sorted(r.bursts["sizes"]) == [4, 5, 5, 5]
    assert fails(r, "bursts: expected 5 pulses per burst") and "(1 bursts wrong)" in fails(r, "bursts:")[0]


def test_partial_last_burst_rules_with_three_bursts():
    exp = dict(burst_pulses=5, period_us=2000)
    full = make_train(n_pulses=15, period=250_000, burst=5, interburst=1_250_000)
    assert analyze(full, expected=exp, allow_partial_last_burst=True).ok  # a full last burst is fine
    # the last burst longer than 5 (bursts 5, 5, 10): wrong even with partial bursts allowed
    t = make_train(n_pulses=20, period=250_000, burst=5, interburst=1_250_000)
    chans = {k: Channel(c.initial, c.toggles.copy()) for k, c in t.channels.items()}
    shift = int(chans["NEG"].toggles[2 * 15] - (chans["NEG"].toggles[2 * 14] + 250_000))
    for name in ("NEG", "POS", "SYNC"):
        chans[name].toggles[2 * 15:] -= shift
    r = analyze(Trace(t.samplerate_hz, t.n_samples, chans), expected=exp, allow_partial_last_burst=True)
    assert r.bursts["sizes"] == [5, 5, 10] and fails(r, "bursts:"), r.failures


def test_train_delay_is_subtracted_from_the_cycle_latency():
    t = make_train(first=10_000, trig_at=9_500)  # 500 cycles from TRIG1 to the first pulse
    assert analyze(t, expected=dict(trigger_latency_max_cycles=125, train_delay_us=3)).ok  # 500 - 375
    assert fails(analyze(t, expected=dict(trigger_latency_max_cycles=124, train_delay_us=3)),
                 "trigger latency: 125.0 PIO cycles beyond the train delay, max 124")


def test_no_pulse_after_the_trigger_with_both_latency_expectations():
    t = make_train(first=10_000, trig_at=10_000 + 9 * 125_000 + 100)  # after the last pulse start
    r = analyze(t, expected=dict(trigger_latency_us=4, trigger_latency_max_cycles=500))
    assert fails(r, "trigger: no pulse after the trigger edge")
    assert not fails(analyze(t), "trigger")


def test_trigger_channel_named_or_auto_trig2():
    t = make_train(first=10_000, trig_at=9_500)
    ch = dict(t.channels)
    ch["TRIG2"] = ch.pop("TRIG1")
    t2 = Trace(t.samplerate_hz, t.n_samples, ch)
    assert analyze(t2).trigger["channel"] == "TRIG2" and analyze(t2).trigger["latency_samples"] == 500
    r = analyze(t2, trigger="TRIG2", expected=dict(trigger_latency_us=4))
    assert r.ok and r.trigger["latency_samples"] == 500, r.failures
    assert fails(analyze(t2, trigger="TRIGX"), "trigger channel 'TRIGX' not in trace")
    assert analyze(t2, trigger=None).trigger["channel"] is None


def test_forced_exact_mode_counts_one_cycle_per_sample():
    sr = 25_000_000
    t = make_train(first=2_000, trig_at=1_990, sr=sr, p1=5000, gap=200, p2=5000, period=25_000)
    r = analyze(t, exact=True)
    assert r.exact and r.trigger["latency_cycles"] == 10 and r.clock_ppm == 0.0


def test_nothing_measured_fails_except_intervals_of_a_single_pulse():
    one = make_train(n_pulses=1)
    assert analyze(one, expected=dict(EXP, pulses=1, burst_gap_us=5, burst_period_us=7)).ok
    # no complete pulse: a width expectation is a failure with its own message
    cut = Trace(SR, 1_000 + 10_000, dict(one.channels))  # ends inside the only phase 1
    r = analyze(cut, expected=dict(phase1_us=200))
    assert "phase1: expected 200 µs but nothing measured" in r.failures
    # two pulses in one burst: no burst gap to measure is a failure
    two = make_train(n_pulses=2)
    assert fails(analyze(two, expected=dict(period_us=1000, burst_pulses=2, burst_gap_us=5000)),
                 "burst_gap: expected 5000 µs but nothing measured")


def test_width_failure_message_in_microseconds():
    t = make_train(n_pulses=3, sr=SR25, p1=5000, gap=200, p2=5000, period=25_000)
    r = analyze(t, expected=dict(phase1_us=201))
    assert fails(r, "phase1:") == ["phase1: 3/3 outside 201 µs ± 0.0601 µs (measured 200.0000..200.0000 µs; "
                                   "first bad #0: 200.0000 µs = 5000 samples vs 5025.00)"]


@pytest.mark.parametrize("tail,cut", [(1_001, True), (1_002, False)])
def test_last_phase_1_without_phase_2_cut_or_truncated_at_the_interphase(tail, cut):
    # the capture ends `tail` samples after the last phase 1 (interphase 1_000 samples): within
    # interphase + 1.5 samples it is cut by the capture end, later it is a truncated pulse
    t = make_train(n_pulses=3)
    end = int(t.channels["NEG"].toggles[-1])
    tt = _last_phase2_lost(t, end + tail)
    for exp in (dict(interphase_us=8), {}):
        r = analyze(tt, expected=exp)
        assert (r.incomplete["cut_by_capture_end"], r.incomplete["truncated"]) == ((1, 0) if cut else (0, 1)), exp


def test_last_phase_1_cut_threshold_at_an_asynchronous_rate():
    # 25 MS/s: interphase 200 samples, + 1 sample tolerance + 1: 202 samples after phase 1 is cut, 203 not
    t = make_train(n_pulses=3, sr=SR25, p1=5000, gap=200, p2=5000, period=25_000)
    end = int(t.channels["NEG"].toggles[-1])
    for tail, cut in ((202, 1), (203, 0)):
        r = analyze(_last_phase2_lost(t, end + tail))
        assert r.incomplete["cut_by_capture_end"] == cut and r.incomplete["truncated"] == 1 - cut


def test_pulse_table_fields():
    t = make_train(n_pulses=2, rec=500, rec_gap=100)
    tt = _last_phase2_lost(t, int(t.channels["NEG"].toggles[-1]) + 10_000)  # pulse 1 loses its phase 2
    p = analyze(tt).pulses
    assert p.start.tolist() == [1_000, 126_000] and p.phase1_end.tolist() == [26_000, 151_000]
    assert p.phase2_start.tolist() == [27_000, -1] and p.phase2_end.tolist() == [52_000, -1]
    assert p.recovery_start.tolist() == [52_100, -1] and p.recovery_end.tolist() == [52_600, -1]
    assert p.complete.tolist() == [True, False] and p.truncated.tolist() == [False, True]
    assert p.cut_end.tolist() == [False, False] and p.cut_start.tolist() == [False, False]
    assert p.end().tolist() == [52_600, -1] and p.flank1_start is None and p.flank1_end is None
    tri = analyze(tri_train(codes=[(400, 400)] * 2), expected=TRI_EXP).pulses
    assert tri.flank1_start.tolist() == [10_000, 60_000] and tri.flank1_end.tolist() == [15_000, 65_000]


# ---- third batch: expected-value plumbing, sentinels, recovery matching, burst split threshold
def test_unknown_expected_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"unknown expected keys: \['phase_1_us'\]"):
        analyze(make_train(n_pulses=1), expected=dict(phase_1_us=200))


def test_period_wins_over_frequency_and_frequency_is_exact():
    t = make_train(n_pulses=3)
    assert analyze(t, expected=dict(period_us=1000, frequency_hz=500)).ok
    slow = make_train(n_pulses=2, period=125_000_000, tail=1_000)  # 1 Hz: 1 s = 125e6 samples, exact
    assert analyze(slow, expected=dict(frequency_hz=1)).ok
    assert fails(analyze(slow, expected=dict(frequency_hz=1.000001)), "period")


@pytest.mark.parametrize("sr,exact", [(125_000_125, False), (125_000_124, True), (124_999_875, False),
                                      (125_000_001, True)])
def test_exact_mode_within_one_ppm_of_the_pio_clock(sr, exact):
    r = analyze(make_train(n_pulses=2, sr=sr))
    assert r.exact is exact and r.clock_ppm == (0.0 if exact else 100.0)


def test_triphasic_analysis_of_equal_line_counts_defaults_to_neg_as_main():
    # a biphasic capture read as triphasic: as many NEG as POS intervals, no polarity: NEG is the main line
    r = analyze(make_train(n_pulses=3), expected=dict(shape="triphasic"))
    assert r.polarity is None and r.pulses.start.tolist() == [1_000, 126_000, 251_000]
    # no POS interval before a NEG one belongs to that pulse (each follows the previous NEG): no first
    # flanks, so no complete triphasic pulse
    assert r.pulses.flank1_start.tolist() == [-1, -1, -1] and r.n_pulses == 0
    assert fails(r, "no complete pulse found")


def test_triphasic_without_any_flank_is_all_truncated():
    t = make_train(n_pulses=3)
    ch = {"NEG": t.channels["NEG"], "POS": Channel(0, np.zeros(0, np.int64))}
    r = analyze(Trace(SR, t.n_samples, ch), expected=dict(shape="triphasic", polarity="cathodic-first"))
    assert r.n_pulses == 0 and r.incomplete["truncated"] == 2 and r.incomplete["cut_by_capture_start"] == 1
    assert r.pulses.flank1_start.tolist() == [-1, -1, -1] and r.pulses.phase2_start.tolist() == [-1, -1, -1]


def test_triphasic_flank_ending_where_the_main_phase_starts_is_its_first_flank():
    r = analyze(tri_train(codes=[(400, 400)] * 3, gaps={1: (0, G)}), expected=TRI_EXP)
    assert r.values["interphase1"].tolist() == [G, 0, G] and fails(r, "DEAD TIME")


def test_triphasic_truncated_pulse_has_no_flank_times():
    r = analyze(tri_train(codes=[(400, 400)] * 4, drop_first_flank=(2,), drop_second_flank=(1,)),
                expected=dict(shape="triphasic"))
    p = r.pulses
    assert p.flank1_start.tolist()[2] == -1 and p.flank1_end.tolist()[2] == -1
    assert p.phase2_start.tolist()[1] == -1 and p.phase2_end.tolist()[1] == -1


def _recovery_on_first_only():
    t = make_train(n_pulses=2, rec=500, rec_gap=100)
    ch = dict(t.channels)
    ch["RECOVERY"] = Channel(0, ch["RECOVERY"].toggles[:2])
    return Trace(SR, t.n_samples, ch)


def test_recovery_is_matched_to_its_own_pulse_only():
    r = analyze(_recovery_on_first_only(), expected=dict(recovery_us=4, recovery_gap_us=0.8))
    assert r.pulses.recovery_start.tolist() == [52_100, -1] and r.pulses.recovery_end.tolist() == [52_600, -1]
    assert fails(r, "recovery: 1/2 pulses without RECOVERY") and not fails(r, "recovery_gap")
    assert r.values["recovery_gap"].tolist() == [100] and r.values["recovery"].tolist() == [500]


def test_recovery_without_a_phase_2_is_an_orphan():
    t = make_train(n_pulses=2, rec=500, rec_gap=100)
    ch = dict(t.channels)
    ch["POS"] = Channel(0, ch["POS"].toggles[2:])  # pulse 0 loses its phase 2, keeps its RECOVERY
    r = analyze(Trace(SR, t.n_samples, ch))
    assert r.incomplete["orphan_recovery"] == 1 and r.incomplete["truncated"] == 1
    assert r.pulses.recovery_start.tolist() == [-1, 177_100]


def test_cut_threshold_follows_the_expected_interphase():
    # complete pulses' interphase 1_000 samples; the file says 20 µs (2_500): 1_500 samples after the last
    # phase 1 the capture end cuts it (it could still be in its interphase), measured alone it would not
    t = make_train(n_pulses=3)
    tt = _last_phase2_lost(t, int(t.channels["NEG"].toggles[-1]) + 1_500)
    assert analyze(tt, expected=dict(interphase_us=20)).incomplete["cut_by_capture_end"] == 1
    assert analyze(tt).incomplete["truncated"] == 1


def test_a_missing_pulse_splits_the_train_at_one_and_a_half_periods():
    t = _drop_pulse(make_train(n_pulses=6), 3)  # a two-period gap
    r = analyze(t, expected=dict(period_us=1000))
    assert r.bursts["count"] == 2 and r.bursts["sizes"] == [3, 2] and fails(r, "period")
    assert r.bursts["split_threshold_us"] == pytest.approx(1500)


@pytest.mark.parametrize("spacing,split", [(125_005, True), (125_004.25, True), (125_003, False),
                                           (125_004, False)])
def test_burst_split_from_the_expected_burst_gap(spacing, split):
    # bursts of 3 pulses, 1 ms period; the next burst starts `spacing` samples after the last pulse of the
    # previous one (phase 1 + interphase + phase 2 = 51_000 samples = 408 µs). The split threshold is
    # midway between the period and that spacing when the spacing exceeds the period by more than
    # 4 x 0.5 + 2 samples, else 1.5 periods
    pulse = 51_000
    t = make_train(n_pulses=6, burst=3, interburst=int(np.ceil(spacing)) - pulse, period=125_000)
    exp = dict(phase1_us=200, interphase_us=8, phase2_us=200, period_us=1000, burst_pulses=3,
               burst_gap_us=(spacing - pulse) / 125)
    r = analyze(t, expected=exp)
    assert r.bursts["count"] == (2 if split else 1), r.bursts


def test_burst_split_counts_the_recovery_in_the_spacing():
    # with a recovery (500 samples after a 100-sample gap) the pulse is 51_600 samples long; the expected
    # spacing is burst_gap + phase 1 + interphase + phase 2 + recovery (the analyzer leaves the recovery
    # gap out of it: 100 samples short, reported), here 125_005 samples: just enough to split
    pulse = 51_000 + 600
    t = make_train(n_pulses=6, burst=3, interburst=125_105 - pulse, period=125_000, rec=500, rec_gap=100)
    exp = dict(phase1_us=200, interphase_us=8, phase2_us=200, recovery_us=4, period_us=1000, burst_pulses=3,
               burst_gap_us=(125_105 - pulse) / 125)
    assert analyze(t, expected=exp).bursts["count"] == 2


# ---- fourth batch: the report a user reads, and the DAC balance allowance at an asynchronous rate
def test_summary_text_of_a_dac_capture():
    from test_dac_decode import _train
    # phase 1 25_000 samples = 200 µs, gap 1_250 = 10 µs, phase 2 50_000 = 400 µs, 250_000 = 2 ms apart;
    # codes 40 / 80 x 2.5 µA
    head = ("2 pulses at 125 MS/s (cathodic-first), overlaps 0, incomplete 0 truncated / 0 cut\n"
            "  phase1      min 200.000  mean 200.000  max 200.000  std 0.0000 µs  (n=2)\n"
            "  interphase  min 10.000  mean 10.000  max 10.000  std 0.0000 µs  (n=2)\n"
            "  phase2      min 400.000  mean 400.000  max 400.000  std 0.0000 µs  (n=2)\n"
            "  period      min 2000.000  mean 2000.000  max 2000.000  std 0.0000 µs  (n=1)\n"
            "  dead time   min idle 10.000 µs between drive states (required 1 µs, 3 transitions)\n"
            "  DAC         4 commands, phase-1 amplitude 100..200 µA, 0 changes inside a pulse, 0 unbalanced "
            "pulses, 0 malformed frames\n")
    r = analyze(_train([(40, 20), (80, 40)]))
    assert r.summary() == "OK: " + head + "  DAC         no LDAC line: taken as held low"
    bad = analyze(_train([(40, 20), (80, 40)], write_at={1: -400}))  # B changes 236 samples before phase 1
    assert bad.summary() == (
        "FAIL: " + head + "  DAC         note: 1 changes less than 4.5 µs (settling) before the phase that uses "
        "them, shortest 1.888 µs\n  DAC         no LDAC line: taken as held low\n  - DAC NOT SETTLED: 1 DAC "
        "output changes less than 4.5 µs before the phase that uses them, shortest 1.888 µs, first at "
        "2078.112 µs")
    j = r.to_json()
    assert (j["failures"], j["samplerate_hz"], j["tolerance_samples"], j["clock_ppm"]) == ([], SR, 0.5, 0.0)
    assert bad.to_json()["failures"] == bad.failures and len(bad.failures) == 1
    assert r.stat_us("phase2") == {"min": 400.0, "mean": 400.0, "max": 400.0, "std": 0.0}
    assert r.stats["recovery"].n == 0 and r.stats["recovery"].min is None


def test_summary_of_unknown_amplitudes_and_no_polarity():
    from test_dac_decode import _train
    tr = _train([(40, 20), (80, 40)])
    ch = dict(tr.channels)
    for name in ("SCK", "MOSI"):  # the bus idle: no command in the capture
        ch[name] = Channel(0, np.zeros(0, np.int64))
    ch["CS0"] = Channel(1, np.zeros(0, np.int64))
    r = analyze(Trace(SR, tr.n_samples, ch))
    assert "phase-1 amplitude unknown" in r.summary() and r.amplitude_ua == [None, None]
    assert r.dac["unknown_pulses"] == 2 and "2 pulses before the capture's first command" in r.dac["note"]
    empty = analyze(Trace(SR, 1_000, {"POS": Channel(0), "NEG": Channel(0)}))
    assert empty.summary().startswith("FAIL: 0 pulses at 125 MS/s (?), overlaps 0")
    assert "dead time" not in empty.summary()


SR25_ = 25_000_000


def _async_pulse(t1, t2, c1, c2, flanks=None):
    """One cathodic pulse at 25 MS/s drawn edge by edge with its DAC writes (bus at 25 MS/s too):
    biphasic (phase 1 t1 samples, phase 2 t2) or triphasic (``flanks`` = (f1, f2), main phase t1)."""
    ln = Lines(("SCK", "MOSI", "CS0", "POS", "NEG"))
    u = ln.frame("CS0", 100, B_ON | c1, half=2)
    ln.frame("CS0", u + 4, A_ON | c2, half=2)
    s = 1_000
    if flanks is None:
        ln.pulse("NEG", s, t1, 50, t2)
    else:
        f1, f2 = flanks
        ln.set("POS", s, 1)
        ln.set("POS", s + f1, 0)
        ln.set("NEG", s + f1 + 50, 1)
        ln.set("NEG", s + f1 + 50 + t1, 0)
        ln.set("POS", s + f1 + 100 + t1, 1)
        ln.set("POS", s + f1 + 100 + t1 + f2, 0)
    tr = ln.trace(s + 3 * (t1 + t2) + 1_000)
    return Trace(SR25_, tr.n_samples, tr.channels)


def _allowance(t1, t2, c1, c2, n_widths2=1):
    """The documented balance allowance (analyzer._check_dac) at an asynchronous rate: half an LSB over
    phase 2 (one at code 1) plus each width's measurement slack, 1 sample per measured width and 100 ppm
    of it, times its code."""
    s1 = 1 + 100e-6 * t1
    s2 = n_widths2 + 100e-6 * t2
    lsb = 1.0 if c2 == 1 else 0.5
    return lsb * (t2 + s2) + c1 * s1 + c2 * s2


@pytest.mark.parametrize("tri", [False, True])
def test_balance_allowance_at_an_asynchronous_rate_to_the_code_sample(tri):
    c1, c2 = 401, 201
    near = {}
    for t1 in range(4_950, 5_050):
        for t2 in range(9_900, 10_100):
            margin = abs(c1 * t1 - c2 * t2) - _allowance(t1, t2, c1, c2, 2 if tri else 1)
            if -2 < margin <= 0 and "in" not in near:
                near["in"] = (t1, t2)
            if 0 < margin < 150 and "out" not in near:
                near["out"] = (t1, t2)
    assert set(near) == {"in", "out"}
    for key, (t1, t2) in near.items():
        fl = (t2 // 2, t2 - t2 // 2) if tri else None
        r = analyze(_async_pulse(t1, t2, c1, c2, fl), expected=dict(shape="triphasic") if tri else None)
        assert r.n_pulses == 1 and not r.exact
        assert r.dac["unbalanced"] == (1 if key == "out" else 0), (key, t1, t2, r.failures)


# ---- polarity detection corners (safety: which line is phase 1 decides every check after it)
def _window(t, a, b):
    """The capture of ``t`` from sample a to b (levels at a become initial levels)."""
    ch = {}
    for name, c in t.channels.items():
        lv = int(c.initial ^ (np.searchsorted(c.toggles, a, side="right") & 1))
        tg = c.toggles[(c.toggles > a) & (c.toggles < b)] - a
        ch[name] = Channel(lv, tg)
    return Trace(t.samplerate_hz, b - a, ch)


@pytest.mark.parametrize("pol", ["cathodic-first", "anodic-first"])
def test_polarity_when_the_interphase_is_longer_than_the_idle(pol):
    # phase 1 2_000, interphase 5_000, phase 2 2_000, period 10_000: the gap after phase 2 (1_000) is the
    # shorter one, so only the first edge tells the order
    t = make_train(n_pulses=5, p1=2_000, gap=5_000, p2=2_000, period=10_000, polarity=pol)
    assert analyze(t).polarity == pol


@pytest.mark.parametrize("pol", ["cathodic-first", "anodic-first"])
def test_polarity_of_a_capture_from_inside_phase_2_to_inside_phase_1(pol):
    t = make_train(n_pulses=5, polarity=pol)  # phase 1 25_000 from 1_000 + k 125_000, gap 1_000, phase 2
    r = analyze(_window(t, 1_000 + 27_000 + 100, 1_000 + 4 * 125_000 + 100))
    assert r.polarity == pol and r.n_pulses == 3


@pytest.mark.parametrize("pol", ["cathodic-first", "anodic-first"])
def test_polarity_of_a_single_pulse_seen_from_inside_its_phase_1(pol):
    t = make_train(n_pulses=1, polarity=pol)
    r = analyze(_window(t, 1_100, t.n_samples))
    assert r.polarity == pol and r.incomplete["cut_by_capture_start"] == 1


@pytest.mark.parametrize("pol", ["cathodic-first", "anodic-first"])
def test_polarity_of_a_symmetric_train_cut_inside_phase_1_at_both_ends(pol):
    # interphase = idle after phase 2 (both 25_000): the follow gaps tie, the first line decides
    t = make_train(n_pulses=5, p1=25_000, gap=25_000, p2=25_000, period=100_000, polarity=pol)
    r = analyze(_window(t, 1_000 + 100, 1_000 + 4 * 100_000 + 100))
    assert r.polarity == pol and r.n_pulses == 3


# ---- sixth batch: the DAC report fields and messages, unknown outputs, changes after the last pulse
def test_dac_report_fields_and_messages():
    from test_dac_decode import P1, PERIOD, _train

    def extra(ln):  # a 15-bit frame after the pulses, and a frame still selected at the capture end
        ln.frame("CS0", 10_000 + 3 * PERIOD - 20_000, A_ON | 5, nbits=15)
        ln.set("CS0", 10_000 + 3 * PERIOD - 1_000, 0)
    r = analyze(_train([(40, 20), (80, 40), (401, 199)], extra=extra))
    d = r.dac
    assert d["note"] == "no LDAC line: taken as held low" and d["cs"] == "CS0"
    assert d["commands"] == 6 and d["frames_cut"] == 1 and d["changes"] == 6 and d["malformed"] == 1
    end = 10_000 + 3 * PERIOD - 20_000 + 2 + 15 * 10 + 2
    assert d["malformed_frames"] == [{"channel": 0, "cs": "CS0", "start": end - 154, "end": end, "bits": 15,
                                      "time_us": pytest.approx(end / 125)}]
    assert fails(r, "DAC SPI") == [f"DAC SPI: 1 malformed frames (not 16 bits), first on CS0 with 15 bits, CS rising "
                                   f"at {end / 125:.3f} µs"]
    s = 10_000 + 2 * PERIOD
    assert fails(r, "DAC BALANCE") == [f"DAC BALANCE: 1 pulses not charge-balanced after DAC rounding, first #2 at "
                                       f"{s / 125:.3f} µs: 1002.5 µA x 200 µs vs 497.5 µA x 400 µs (codes 401/199)"]
    assert d["unbalanced_pulses"] == [2] and P1 == 25_000
    with_ldac = analyze(_train([(40, 20)], ldac=True))
    assert with_ldac.dac["note"] is None and with_ldac.ok
    tr = _train([(40, 20)])
    nodac = analyze(Trace(SR, tr.n_samples, {k: tr.channels[k] for k in ("POS", "NEG")}))
    assert nodac.dac == {"checked": False, "note": "the capture has no DAC lines (SCK, MOSI, CS0): DAC checks skipped"}


def test_unknown_outputs_note_and_second_amplitudes():
    from test_dac_decode import _train
    tr = _train([(40, 20), (80, 40)])
    ch = dict(tr.channels)
    for name in ("SCK", "MOSI"):
        ch[name] = Channel(0, np.zeros(0, np.int64))
    ch["CS0"] = Channel(1, np.zeros(0, np.int64))
    r = analyze(Trace(SR, tr.n_samples, ch))
    assert r.dac["amplitude2_ua"] == [None, None]
    assert r.dac["note"] == ("no LDAC line: taken as held low; 2 pulses before the capture's first command of "
                             "each output: amplitude unknown")


def test_a_pulse_with_one_output_unknown_is_not_balance_checked():
    from test_dac_decode import PERIOD, _train

    ln = Lines(("SCK", "MOSI", "CS0", "POS", "NEG"))
    ln.frame("CS0", 2_000, B_ON | 40)  # B only
    ln.pulse("NEG", 10_000, 25_000, 1_250, 50_000)
    ln.frame("CS0", 10_000 + PERIOD - 7_500, A_ON | 20)
    ln.pulse("NEG", 10_000 + PERIOD, 25_000, 1_250, 50_000)
    r = analyze(ln.trace(10_000 + 2 * PERIOD))
    assert r.dac["unknown_pulses"] == 1 and r.dac["unbalanced"] == 0 and r.ok, r.failures
    assert r.amplitude_ua == [100.0, 100.0] and r.dac["amplitude2_ua"] == [None, 50.0]


def test_triphasic_pulse_with_the_main_output_unknown_is_not_balance_checked():
    ln = Lines(("SCK", "MOSI", "CS0", "POS", "NEG"))
    ln.frame("CS0", 2_000, A_ON | 400)  # the flank output only; B first written after pulse 0
    tr0 = tri_train(n=2, codes=None)
    for name in ("POS", "NEG"):
        ln.changes[name] = [(int(t), lv) for t, lv in zip(tr0.channels[name].toggles, [1, 0] * 99)]
    ln.frame("CS0", 10_000 + TP - 7_500, B_ON | 400)
    r = analyze(ln.trace(tr0.n_samples), expected=dict(shape="triphasic"))
    assert r.n_pulses == 2 and r.dac["unknown_pulses"] == 1 and r.dac["unbalanced"] == 0, r.failures


def test_triphasic_flank_output_changed_during_the_first_flank():
    def during(ln):  # pulse 1: A changes inside its first flank (POS high)
        ln.frame("CS0", 10_000 + TP + 1_000, A_ON | 300)
    r = analyze(tri_train(codes=[(400, 400)] * 3, extra=during), expected=TRI_EXP)
    assert r.dac["flank_codes_differ"] == 1 and fails(r, "DAC CHANGE IN PULSE: 1 ")
    assert fails(r, "DAC FLANKS") == [f"DAC FLANKS: 1 triphasic pulses whose two flanks have different currents, "
                                      f"first #1 at {(10_000 + TP) / 125:.3f} µs (codes 400/300)"]


def test_triphasic_flank_message_names_the_first_of_two():
    def between(ln):  # flank output A changes between the flanks of pulses 1 and 2
        for k in (1, 2):
            ln.frame("CS0", 10_000 + k * TP + F + G + M + 2, A_ON | (300 + k))
    r = analyze(tri_train(codes=[(400, 400), (400, 400), (400, 400), (400, 400)], extra=between), expected=TRI_EXP)
    assert r.dac["flank_codes_differ"] == 2
    assert fails(r, "DAC FLANKS")[0].startswith(f"DAC FLANKS: 2 triphasic pulses whose two flanks have different "
                                                f"currents, first #1 at {(10_000 + TP) / 125:.3f} µs (codes 400/301)")


def test_a_dac_change_after_the_last_pulse_is_not_a_settling_failure():
    from test_dac_decode import A_OFF, B_OFF, PERIOD, _train

    def shutdown(ln):  # the soft stop's shutdown after the last pulse: no later phase uses it
        t = ln.frame("CS0", 10_000 + 2 * PERIOD - 100_000, A_OFF)
        ln.frame("CS0", t + 10, B_OFF)
    r = analyze(_train([(40, 20), (40, 20)], extra=shutdown))
    assert r.ok, r.failures
    assert r.dac["settle"]["short"] == 0 and r.dac["settle"]["min_us"] == pytest.approx(7_336 / 125)  # B: 7_500 - 164 samples ahead


# ---- seventh batch: SYNC, split threshold without expectations, trigger messages, state names
def _sync_moved(t, index, delta):
    sy = t.channels["SYNC"].toggles.copy()
    sy[index] += delta
    return with_toggles(t, "SYNC", sy)


def test_sync_one_sample_early_fails_and_the_message_names_the_phases():
    r = analyze(_sync_moved(make_train(n_pulses=3), 2, -1))  # pulse 1's SYNC rises a sample early
    assert r.sync_errors == 1
    assert fails(r, "SYNC") == ["SYNC: 1 pulses without SYNC high exactly from phase-1 start to phase-2 end"]


def test_sync_end_one_sample_late_is_within_the_asynchronous_tolerance():
    t = make_train(n_pulses=3, sr=SR25, p1=5000, gap=200, p2=5000, period=25_000)
    assert analyze(_sync_moved(t, 3, 1)).sync_errors == 0
    assert analyze(_sync_moved(t, 3, 2)).sync_errors == 1


def test_sync_missing_for_a_pulse_or_never_high():
    t = make_train(n_pulses=3)
    sy = t.channels["SYNC"].toggles[2:]  # pulse 0 without SYNC
    r = analyze(with_toggles(t, "SYNC", sy))
    assert r.sync_errors == 1 and r.stats["sync_start"].n == 2 and r.values["sync_end"].tolist() == [0, 0]
    never = analyze(with_toggles(t, "SYNC", np.zeros(0, np.int64)))
    assert never.sync_errors == 3 and fails(never, "SYNC: 3 pulses")
    nosync = analyze(make_train(n_pulses=3, sync=False))
    assert nosync.sync_errors == 0 and nosync.to_json()["sync_errors"] == 0 and nosync.ok


def test_biphasic_report_has_no_flank_keys():
    j = analyze(make_train(n_pulses=2)).to_json()
    assert not [k for k in j if k.startswith(("flank", "interphase1"))]


def test_dead_time_threshold_without_clock_error_is_inclusive():
    # 100 MS/s, clock_ppm 0: 1 µs = 100 samples minus one sample of quantisation: 99 samples of idle pass,
    # 98 fail
    for gap, bad in ((99, 0), (98, 3)):
        t = make_train(n_pulses=3, sr=100_000_000, p1=20_000, gap=gap, p2=20_000, period=100_000)
        assert analyze(t, clock_ppm=0).dead_time["violations"] == bad, gap


def test_dead_time_names_overlap_and_recovery_states():
    t = make_train(n_pulses=2, rec=500, rec_gap=10)  # RECOVERY 10 samples after phase 2
    assert fails(analyze(t), "DEAD TIME")[0].startswith(
        "DEAD TIME: 2 transitions between different drive states with less than 1 µs idle, first POS -> RECOVERY")
    pos = t.channels["POS"].toggles.copy()
    pos[0] -= 2_000  # phase 2 of pulse 0 rises inside phase 1
    assert "first NEG -> POS+NEG" in fails(analyze(with_toggles(t, "POS", pos)), "DEAD TIME")[0]


def test_a_capture_starting_inside_phase_2_counts_one_cut_pulse():
    t = make_train(n_pulses=4)
    r = analyze(_window(t, 1_000 + 27_000 + 100, t.n_samples))
    assert r.incomplete["cut_by_capture_start"] == 1 and r.n_pulses == 3


def test_trigger_report_without_a_trigger_line():
    r = analyze(make_train(n_pulses=2))
    assert r.to_json()["trigger"] == {"channel": None, "latency_samples": None, "latency_cycles": None,
                                      "latency_us": None}


@pytest.mark.parametrize("key", ["trigger_latency_max_cycles", "train_delay_us", "trigger_latency_us"])
def test_any_latency_expectation_needs_a_trigger_edge(key):
    r = analyze(make_train(n_pulses=2), expected={key: 5})
    assert "trigger: expected a trigger latency but the trace has no trigger edge" in r.failures


def test_no_pulse_after_the_trigger_with_only_the_cycle_limit():
    late = make_train(first=1_000, trig_at=400_000, n_pulses=3)
    assert "trigger: no pulse after the trigger edge" in analyze(
        late, expected=dict(trigger_latency_max_cycles=500)).failures


def test_trigger_latency_message_in_microseconds():
    t = make_train(first=10_000, trig_at=9_500)
    assert fails(analyze(t, expected=dict(trigger_latency_us=6)), "trigger latency") == [
        "trigger latency: 4.0000 µs, expected 6 µs"]


def test_recovery_expected_none_and_no_pulse_messages():
    t = make_train(n_pulses=2, rec=500, rec_gap=200)
    assert "recovery: expected none, found 2" in analyze(t, expected=dict(recovery_us=0)).failures
    empty = analyze(Trace(SR, 1_000, {"POS": Channel(0), "NEG": Channel(0)}))
    assert empty.failures == ["no complete pulse found"]
    assert empty.bursts["count"] == 0 and empty.bursts["sizes"] == [] and empty.bursts["split_threshold_us"] is None


def _with_gap(n_pulses, period, gap_at, spacing, sr=SR, **kw):
    """A make_train trace whose pulse ``gap_at`` starts ``spacing`` samples after the one before it."""
    t = make_train(n_pulses=n_pulses, period=period, sr=sr, **kw)
    chans = {k: Channel(c.initial, c.toggles.copy()) for k, c in t.channels.items()}
    for name in ("NEG", "POS", "SYNC"):
        chans[name].toggles[2 * gap_at:] += spacing - period
    return Trace(sr, t.n_samples + spacing - period, chans)


def test_split_without_expectations_at_one_and_a_half_shortest_spacings():
    # exact mode: threshold 1.5 x 125_000 + 0.5 samples
    assert analyze(_with_gap(5, 125_000, 3, 187_500)).bursts["count"] == 1
    assert analyze(_with_gap(5, 125_000, 3, 187_501)).bursts["count"] == 2
    assert analyze(_with_gap(5, 125_000, 3, 250_000)).bursts["count"] == 2
    # 25 MS/s: 1.5 x 25_000 + 1 = 37_501 samples: a gap of exactly that is not a split
    kw = dict(p1=5000, gap=200, p2=5000)
    assert analyze(_with_gap(5, 25_000, 3, 37_501, sr=SR25, **kw)).bursts["count"] == 1
    assert analyze(_with_gap(5, 25_000, 3, 37_502, sr=SR25, **kw)).bursts["count"] == 2


def test_stray_phase_2_starting_with_the_next_phase_1_is_not_this_pulses_phase_2():
    t = make_train(n_pulses=3)
    pos = t.channels["POS"].toggles.copy()
    nxt = int(t.channels["NEG"].toggles[2])  # pulse 1's phase 1 start
    pos[0], pos[1] = nxt, nxt + 100  # pulse 0's phase 2 replaced by a POS interval starting with pulse 1
    r = analyze(with_toggles(t, "POS", np.sort(pos)))
    assert r.incomplete["truncated"] == 1 and r.pulses.truncated.tolist() == [True, False, False]
    assert fails(r, "OVERLAP")


def test_recovery_starting_with_the_next_phase_1_is_an_orphan():
    t = make_train(n_pulses=2, rec=500, rec_gap=100)
    rec = t.channels["RECOVERY"].toggles.copy()
    nxt = int(t.channels["NEG"].toggles[2])
    rec[0], rec[1] = nxt, nxt + 100  # pulse 0's recovery moved to the start of pulse 1's phase 1
    r = analyze(with_toggles(t, "RECOVERY", rec))
    assert r.pulses.recovery_start.tolist()[0] == -1 and r.incomplete["orphan_recovery"] == 1


def test_a_line_rising_at_sample_0_is_high_from_the_capture_start():
    t = make_train(n_pulses=3)
    neg = t.channels["NEG"].toggles.copy() - 1_000  # the first phase 1 rises at sample 0
    ch = {k: Channel(c.initial, c.toggles - 1_000) for k, c in t.channels.items()}
    ch["NEG"] = Channel(0, neg)
    r = analyze(Trace(SR, t.n_samples - 1_000, ch))
    assert r.incomplete["cut_by_capture_start"] == 1 and r.n_pulses == 2


def test_channel_names_default_to_channel_0():
    from picostim.capture.analyzer import channel_names
    assert channel_names() == {"POS": "POS", "NEG": "NEG", "RECOVERY": "RECOVERY", "SYNC": "SYNC"}
    assert channel_names(2)["SYNC"] == "SYNC_2"


def test_an_empty_capture_is_analysed_without_error():
    r = analyze(Trace(SR, 0, {"POS": Channel(0), "NEG": Channel(0), "RECOVERY": Channel(0)}))
    assert r.failures == ["no complete pulse found"] and r.dead_time["transitions"] == 0
    assert r.dead_time["min_idle_us"] is None and r.n_pulses == 0


def test_no_sync_line_no_sync_measures():
    r = analyze(make_train(n_pulses=3, sync=False))
    assert r.stats["sync_start"].n == 0 and r.stats["sync_end"].n == 0 and len(r.values["sync_start"]) == 0


def test_a_pulse_cut_by_the_capture_start_starts_at_sample_0():
    t = make_train(n_pulses=3)
    r = analyze(_window(t, 1_100, t.n_samples))
    assert r.pulses.start.tolist()[0] == 0 and r.pulses.cut_start.tolist() == [True, False, False]


def test_report_us_and_json_text():
    import json
    r = analyze(make_train(n_pulses=2, sr=SR25, p1=5000, gap=200, p2=5000, period=25_000))
    assert r.us(25) == 1.0 and r.us(5000) == 200.0
    text = r.to_json_text()
    assert json.loads(text) == json.loads(json.dumps(r.to_json())) and text.startswith('{\n  "ok": true,\n  "failures"')
    assert r.to_json_text(indent=0).startswith('{\n"ok": true')


def test_burst_split_threshold_counts_the_recovery_gap_in_the_pulse():
    # burst_gap_us runs from a pulse's END (after RECOVERY), so the expected spacing from a burst's last
    # pulse start to the next burst's first is burst_gap + phase 1 + interphase + phase 2 + recovery gap
    # + recovery; the split threshold sits midway between it and the period (it left the recovery gap out)
    pulse = 51_000 + 125 + 500
    t = make_train(n_pulses=6, burst=3, interburst=200_000, period=125_000, rec=500, rec_gap=125)
    exp = dict(phase1_us=200, interphase_us=8, phase2_us=200, recovery_gap_us=1, recovery_us=4, period_us=1000,
               burst_pulses=3, burst_gap_us=200_000 / 125)
    r = analyze(t, expected=exp)
    assert r.bursts["count"] == 2 and r.ok, r.failures
    assert r.bursts["split_threshold_us"] == pytest.approx(((200_000 + pulse) / 125 + 1000) / 2)


# ---- custom sequences (protocol 8): _check_sequence's per-pulse results on hand-built irregular trains
SEQ_AT = [5_000, 130_000, 380_000, 405_000, 905_000]  # pulse starts (samples): intervals 125k, 250k, 25k, 500k


def seq_trace(at=SEQ_AT, sr=SR, p1=5_000, gap=500, p2=10_000, codes=None, first_code_written=True):
    """Pulses starting at the samples ``at`` (phase 1 NEG, phase 2 POS, SYNC over both); with ``codes``
    [(c1, c2), ...] the DAC writes 2_000 samples before each pulse (pulse 0's left out when
    ``first_code_written`` is False: its amplitude is unknown to the capture)."""
    ln = Lines(("SCK", "MOSI", "CS0", "POS", "NEG", "SYNC") if codes else ("POS", "NEG", "SYNC"))
    for k, s in enumerate(at):
        if codes and (k or first_code_written):
            t = ln.frame("CS0", s - 2_000, B_ON | codes[k][0])
            ln.frame("CS0", t + 10, A_ON | codes[k][1])
        end = ln.pulse("NEG", s, p1, gap, p2)
        ln.set("SYNC", s, 1)
        ln.set("SYNC", end, 0)
    tr = ln.trace(at[-1] + p1 + gap + p2 + 10_000)
    return Trace(sr, tr.n_samples, tr.channels)


SEQ_US = [40.0, 1040.0, 3040.0, 3240.0, 7240.0]  # SEQ_AT at 125 MS/s (8 ns per sample)


def test_no_sequence_expected_no_sequence_report():
    r = analyze(seq_trace())
    assert r.sequence == {} and "sequence" not in r.to_json() and "sequence " not in r.summary()
    r = analyze(seq_trace(), expected=dict(onsets_us=None, amplitudes_ua=None))
    assert r.sequence == {} and r.ok
    assert r.to_json()["expected"] == {"onsets_us": None, "amplitudes_ua": None}


def test_irregular_onsets_exact_to_the_sample():
    r = analyze(seq_trace(), expected=dict(onsets_us=SEQ_US))
    assert r.ok and r.exact, r.failures
    q = r.sequence
    assert q == {"exact": True, "checked": 5, "onset_mismatches": 0, "worst_onset_error_samples": 0,
                 "worst_onset_error_us": 0.0, "first_onset_mismatch": None, "onsets_us": SEQ_US,
                 "amplitudes_checked": 0, "amplitude_mismatches": 0, "amplitudes_unknown": 0,
                 "first_amplitude_mismatch": None, "expected_pulses": 5}
    # the first pulse is placed at the file's first onset: a later origin shifts every measured onset
    r = analyze(seq_trace(), expected=dict(onsets_us=[x + 500 for x in SEQ_US]))
    assert r.ok and r.sequence["onsets_us"] == [x + 500 for x in SEQ_US]
    assert "  sequence    5/5 pulses checked: onsets exact to the sample (worst 0 samples), amplitudes 0 checked, " \
           "0 differ" in r.summary().splitlines()
    assert r.to_json()["expected"] == {"onsets_us": 5}


@pytest.mark.parametrize("k,samples", [(2, 1), (2, -1), (4, 1), (1, 0.6), (3, -0.6)])
def test_one_onset_off_by_a_sample_in_exact_mode(k, samples):
    exp = list(SEQ_US)
    exp[k] += samples * 0.008
    r = analyze(seq_trace(), expected=dict(onsets_us=exp))
    q = r.sequence
    assert q["onset_mismatches"] == 1 and q["checked"] == 5
    assert q["worst_onset_error_samples"] == 1 and isinstance(q["worst_onset_error_samples"], int)
    assert q["worst_onset_error_us"] == pytest.approx(0.008)
    assert q["first_onset_mismatch"] == {"pulse": k, "expected_us": exp[k], "measured_us": SEQ_US[k],
                                         "error_samples": pytest.approx(-samples)}
    assert r.failures == [f"sequence onsets: 1/5 pulses off the file's onsets (origin: pulse 0 at 40 µs), first #{k}: "
                          f"{SEQ_US[k]:.4f} µs vs {exp[k]:.4f} µs ({-samples:+.1f} samples)"]
    assert f"onsets 1 off (worst 1 samples)" in r.summary()


def test_less_than_half_a_sample_off_rounds_to_the_same_sample_in_exact_mode():
    exp = list(SEQ_US)
    exp[2] += 0.4 * 0.008
    exp[4] -= 0.45 * 0.008
    r = analyze(seq_trace(), expected=dict(onsets_us=exp))
    assert r.ok, r.failures
    assert r.sequence["worst_onset_error_samples"] == 0 and r.sequence["worst_onset_error_us"] == 0.0


def test_two_onsets_off_names_the_first_and_counts_both():
    exp = list(SEQ_US)
    exp[1] -= 3 * 0.008
    exp[3] += 2 * 0.008
    r = analyze(seq_trace(), expected=dict(onsets_us=exp))
    q = r.sequence
    assert q["onset_mismatches"] == 2 and q["first_onset_mismatch"]["pulse"] == 1
    assert q["worst_onset_error_samples"] == 3 and q["worst_onset_error_us"] == pytest.approx(0.024)
    assert fails(r, "sequence onsets: 2/5 pulses off") and "onsets 2 off (worst 3 samples)" in r.summary()


SR25 = 25_000_000


def test_asynchronous_onset_tolerance_grows_with_the_span():
    # 25 MS/s: +-1 sample plus 100 ppm of the expected span from pulse 0; pulse 1 is 100_000 samples
    # (4 ms) after pulse 0: 11 samples allowed there, 11.25 at pulse 2 (102_500 samples)
    at = [1_000, 101_000, 103_500]
    tr = seq_trace(at, sr=SR25, p1=1_000, gap=100, p2=1_000)
    base = [40.0, 4040.0, 4140.0]
    r = analyze(tr, expected=dict(onsets_us=base))
    assert r.ok and not r.exact and r.sequence["worst_onset_error_samples"] == 0.0

    def run(k, samples, **kw):
        exp = list(base)
        exp[k] += samples * 0.04
        return analyze(tr, expected=dict(onsets_us=exp), **kw).sequence

    q = run(1, 10.9)
    assert q["onset_mismatches"] == 0 and q["worst_onset_error_samples"] == pytest.approx(10.9)
    assert q["worst_onset_error_us"] == pytest.approx(10.9 * 0.04)
    assert run(1, -10.9)["onset_mismatches"] == 0
    q = run(1, 11.1)
    assert q["onset_mismatches"] == 1 and q["first_onset_mismatch"]["error_samples"] == pytest.approx(-11.1)
    assert run(1, -11.1)["onset_mismatches"] == 1
    assert run(2, 11.2)["onset_mismatches"] == 0 and run(2, -11.3)["onset_mismatches"] == 1
    # clock_ppm 0: one sample only, wherever the pulse is
    assert run(1, 0.9, clock_ppm=0)["onset_mismatches"] == 0
    assert run(1, 1.1, clock_ppm=0)["onset_mismatches"] == 1
    r = analyze(tr, expected=dict(onsets_us=[40.0, 4040.0 + 0.2, 4140.0]))
    assert "onsets within tolerance (worst 5.0" in r.summary()


def test_sequence_count_from_the_amplitudes_when_no_onsets_are_given():
    tr = seq_trace(codes=[(40, 20)] * 5)
    r = analyze(tr, expected=dict(amplitudes_ua=[100.0] * 5))
    assert r.ok and r.sequence["expected_pulses"] == 5 and r.sequence["checked"] == 0, r.failures
    assert r.sequence["amplitudes_checked"] == 5 and r.sequence["onsets_us"] is None
    r = analyze(tr, expected=dict(amplitudes_ua=[100.0] * 4))
    assert r.sequence["expected_pulses"] == 4 and r.sequence["amplitudes_checked"] == 4
    assert r.failures == ["sequence: 5 complete pulses in the capture, the sequence has 4"]


def test_an_empty_sequence_and_a_capture_without_pulses():
    r = analyze(seq_trace(), expected=dict(onsets_us=[]))
    assert r.sequence["expected_pulses"] == 0 and r.sequence["checked"] == 0
    assert r.failures == ["sequence: 5 complete pulses in the capture, the sequence has 0"]
    empty = Trace(SR, 10_000, {"POS": Channel(0), "NEG": Channel(0)})
    r = analyze(empty, expected=dict(onsets_us=SEQ_US, amplitudes_ua=[100.0] * 5))
    assert r.failures == ["no complete pulse found"]
    q = r.sequence
    assert q["checked"] == 0 and q["onsets_us"] is None and q["amplitudes_checked"] == 0
    assert q["expected_pulses"] == 5 and q["worst_onset_error_samples"] is None
    assert "0/5 pulses checked: onsets exact to the sample (worst - samples)" in r.summary()


def test_amplitudes_compared_to_a_nanoampere():
    codes = [(40, 20), (80, 40), (401, 201), (4, 2), (40, 20)]
    tr = seq_trace(codes=codes)
    want = [100.0, 200.0, 1002.5, 10.0, 100.0]
    r = analyze(tr, expected=dict(onsets_us=SEQ_US, amplitudes_ua=want))
    assert r.ok, r.failures
    assert r.sequence["amplitudes_checked"] == 5 and r.sequence["amplitude_mismatches"] == 0
    assert analyze(tr, expected=dict(amplitudes_ua=[100.0, 200.0009, 1002.5, 10.0, 100.0])).ok
    bad = [100.0, 200.0, 1002.5, 10.0, 100.0]
    bad[2], bad[4] = 1002.49, 102.5
    r = analyze(tr, expected=dict(onsets_us=SEQ_US, amplitudes_ua=bad))
    q = r.sequence
    assert q["amplitude_mismatches"] == 2 and q["amplitudes_checked"] == 5 and q["amplitudes_unknown"] == 0
    assert q["first_amplitude_mismatch"] == {"pulse": 2, "expected_ua": 1002.49, "measured_ua": 1002.5}
    assert r.failures == ["sequence amplitudes: 2/5 pulses differ from the file after DAC rounding, first #2: "
                          "1002.5 µA vs 1002.49 µA"]
    assert "amplitudes 5 checked, 2 differ" in r.summary()
    # fewer expected amplitudes than pulses: only those are compared (and the count fails)
    r = analyze(tr, expected=dict(amplitudes_ua=[100.0, 200.0, 1.0]))
    assert r.sequence["amplitudes_checked"] == 3 and r.sequence["amplitude_mismatches"] == 1
    # more: the capture's pulses are compared
    r = analyze(tr, expected=dict(amplitudes_ua=want + [5.0, 5.0]))
    assert r.ok and r.sequence["amplitudes_checked"] == 5


def test_an_amplitude_the_capture_does_not_show_is_unknown_not_compared():
    tr = seq_trace(codes=[(40, 20), (80, 40), (40, 20), (80, 40), (40, 20)], first_code_written=False)
    r = analyze(tr, expected=dict(amplitudes_ua=[999.0, 200.0, 100.0, 200.0, 100.0]))
    assert r.amplitude_ua[0] is None
    q = r.sequence
    assert q["amplitudes_unknown"] == 1 and q["amplitudes_checked"] == 4 and q["amplitude_mismatches"] == 0
    assert not fails(r, "sequence")
    assert r.summary().splitlines()[-1 - len(r.failures)].endswith("amplitudes 4 checked, 0 differ, 1 unknown")
    r = analyze(tr, expected=dict(amplitudes_ua=[999.0, 200.0, 100.0, 200.0, 102.5]))
    assert r.sequence["amplitude_mismatches"] == 1 and r.sequence["first_amplitude_mismatch"]["pulse"] == 4


def test_amplitudes_without_dac_lines_are_noted_not_checked():
    r = analyze(seq_trace(), expected=dict(amplitudes_ua=[1.0] * 5))
    assert r.ok and r.sequence["amplitude_note"] == "the capture has no DAC lines: amplitudes not checked"
    assert r.sequence["amplitudes_checked"] == 0
    assert "amplitude_note" not in analyze(seq_trace(codes=[(40, 20)] * 5),
                                           expected=dict(amplitudes_ua=[100.0] * 5)).sequence


@pytest.mark.parametrize("exact,ppm,half", [(True, None, 0.5), (False, 0, 1.0)])
def test_an_onset_exactly_at_the_tolerance_passes(exact, ppm, half):
    # 4 MS/s: 0.25 µs per sample, so the expected onsets below are exact binary fractions and the error
    # is exactly the tolerance (half a sample in exact mode, one sample asynchronously without clock error)
    tr = seq_trace([1_000, 5_000, 12_000], sr=4_000_000, p1=100, gap=10, p2=200)
    kw = dict(exact=exact, clock_ppm=ppm) if ppm is not None else dict(exact=exact)
    for sign in (1, -1):
        exp = [250.0, 1250.0 + sign * half * 0.25, 3000.0]
        r = analyze(tr, expected=dict(onsets_us=exp), **kw)
        assert r.sequence["onset_mismatches"] == 0 and not fails(r, "sequence"), r.failures
        exp[1] += sign * 0.25  # a sample further: outside
        assert analyze(tr, expected=dict(onsets_us=exp), **kw).sequence["onset_mismatches"] == 1
