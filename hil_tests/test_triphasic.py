"""Triphasic pulses on the bench (issue 13 item 4): a triphasic parameter file with a soft start and a
live amplitude change, checked from the capture (virtual Pico: the emulated stim and DAC bus programs,
one sample per PIO tick).

Expected values are computed HERE from the file's numbers (never by calling pulse_engine):
  * each flank = phase2 / 2 to the nearest tick (halves up), both equal; main phase = phase1 to the tick;
    both interphase gaps = the interphase (at least the 1 µs dead time);
  * DAC code of a current: nearest multiple of 2.5 µA, at least 1; soft start over K pulses: pulse j < K
    at max(1, round(code1 * (j + 1) / K)); flank code max(1, round(c1 * main / (2 * flank)));
  * a live change applies from the first pulse after the request's next pulse END (the second flank's
    fall), = the amplitude EVENT's from_pulse.
No DAC output may change anywhere from a pulse's first-flank start to its second-flank end: checked
here from the CS lines and the drive lines of the trace, besides the analyzer's own check.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from firmware import board, dac_bus
from firmware import pulse_engine
from picostim import paramfile, runner

UA_PER_CODE = Fraction(board.DAC_FULL_SCALE_UA, 4096)
TICKS_PER_US = 125


def rnd(x: Fraction) -> int:
    return int(x + Fraction(1, 2))


def code_of(ua: int) -> int:
    return max(1, rnd(Fraction(ua) / UA_PER_CODE))


def ua(code: int) -> float:
    return float(code * UA_PER_CODE)


FILES = {
    # cathodic main phase, anodic flanks from DAC A; 75 µs flanks
    "cathodic_1kHz": """
        name = "triphasic test"
        shape = "triphasic"
        phase1_us = 100
        phase2_us = 150
        interphase_us = 30
        frequency_hz = 1000
        amplitude_ua = 1501
        ramp_up_pulses = 6
        electrode_area_mm2 = 5
    """,
    # anodic main phase; odd flank ticks: 25.004 µs = 3125.5 ticks -> 3126 each; dead-time gaps
    "anodic_500Hz_odd": """
        shape = "triphasic"
        polarity = "anodic-first"
        phase1_us = 40
        phase2_us = 50.008
        frequency_hz = 500
        amplitude_ma = 2
        ramp_up_pulses = 4
        electrode_area_mm2 = 5
    """,
}


def _spans(trace, first_is_neg):
    """[(first-flank start, second-flank end)] of every pulse, from the flank line's edges."""
    flank = trace.channels["POS" if first_is_neg else "NEG"]
    assert flank.initial == 0
    tg = np.asarray(flank.toggles)
    rises, falls = tg[0::2], tg[1::2]
    return list(zip(rises[0::2], falls[1::2]))


def _run(vb, text, changes_at_period):
    """Start the file, request live changes at the given times (in periods after the first onset),
    stop after 16 periods, return (params, report, events, request samples)."""
    ps = paramfile.loads(text)
    params = ps.params
    period_us = params["period_ns"] / 1000
    vb.client.set_params(0, params)
    hal = vb.vp.hal
    armed = hal.system.now
    vb.client.start(1)
    onset = hal.train_start[0] - armed + 2
    t_req = []
    for t_p, amp in changes_at_period:
        target = armed + onset + round(t_p * period_us * TICKS_PER_US)
        vb.vp.advance((target - hal.system.now) / hal.clock_hz)
        t_req.append(target - armed)
        vb.client.set_amplitude(0, amp)
    target = armed + onset + round(16.5 * period_us * TICKS_PER_US)
    vb.vp.advance((target - hal.system.now) / hal.clock_hz)
    vb.client.stop(1)
    for _ in range(20):
        if not hal.running(0):
            break
        vb.vp.advance(params["period_ns"] * 1e-9)
    assert not hal.running(0)
    events = vb.client.events(timeout=0.2)
    trace = hal.trace([0], start=armed)
    rep = runner.check_trace(trace, params, 0, None)
    return params, trace, rep, events, t_req


@pytest.mark.parametrize("case", sorted(FILES))
def test_triphasic_file_with_ramp_and_live_change(virtual_bench, case):
    vb = virtual_bench
    text = FILES[case]
    # change 1 in the idle after pulse 7 (applies after pulse 8); change 2 requested between pulse 11's first flank and main phase
    ps = paramfile.loads(text)
    p = ps.params
    period = p["period_ns"] * 125 // 1000
    flank = rnd(Fraction(p["phase2_ns"] * 125, 2000))
    main = rnd(Fraction(p["phase1_ns"] * 125, 1000))
    gap = max(rnd(Fraction(p["interphase_ns"] * 125, 1000)), 125)
    inside = Fraction(flank + gap // 2, period)  # in the first gap of the pulse
    params, trace, rep, events, t_req = _run(vb, text, [(7.6, 2500), (11 + float(inside), 900)])
    assert rep.shape == "triphasic"
    assert rep.ok, rep.summary()
    n = rep.n_pulses
    assert n >= 16

    # widths to the tick (one sample = one tick)
    v = rep.values
    assert set(v["flank1"].tolist()) == set(v["flank2"].tolist()) == {flank}
    assert set(v["phase1"].tolist()) == {main}
    assert set(v["interphase1"].tolist()) == set(v["interphase"].tolist()) == {gap}
    assert set(v["phase2"].tolist()) == {2 * flank}
    assert set(v["period"].tolist()) == {period}
    pulse_len = 2 * flank + 2 * gap + main
    spans = _spans(trace, params["polarity"] == 0)
    assert len(spans) == n and all(e - s == pulse_len for s, e in spans)

    # amplitudes per pulse: soft start, then the file's current, then the two live changes
    k = params["ramp_up_pulses"]
    code1 = code_of(params["amplitude_ua"])
    amp_ev = [e for e in events if e["kind"] == "amplitude"]
    froms = [e["from_pulse"] for e in amp_ev]
    # from_pulse: the first pulse that starts after the first pulse END at or after the request
    want_from = [next(i + 1 for i, (_s, e) in enumerate(spans) if e >= t) for t in t_req]
    assert froms == want_from == [9, 12]  # 7.6: after pulse 8 ends; inside pulse 11: after it ends
    c1 = []
    for j in range(n):
        if j >= froms[1]:
            c1.append(code_of(900))
        elif j >= froms[0]:
            c1.append(code_of(2500))
        elif j < k:
            c1.append(max(1, rnd(Fraction(code1 * (j + 1), k))))
        else:
            c1.append(code1)
    c2 = [max(1, rnd(Fraction(c * main, 2 * flank))) for c in c1]
    assert rep.amplitude_ua == [ua(c) for c in c1]
    assert rep.dac["amplitude2_ua"] == [ua(c) for c in c2]
    # charge balance after DAC rounding, per pulse: main x code1 vs both flanks x code2
    for a, b in zip(c1, c2):
        assert abs(a * main - b * 2 * flank) * 2 <= 2 * flank or b == 1
    assert rep.dac["unbalanced"] == 0 and rep.dac["flank_codes_differ"] == 0

    # no DAC change inside any pulse, gaps included: every CS rise (a DAC output change) outside spans
    cs = np.asarray(trace.channels["CS0"].toggles)
    rises = cs[1::2]
    assert len(rises) == 2 * (1 + (k - 1) + 2)  # START's codes, K-1 ramp steps, two live changes
    for r in rises:
        assert not any(s <= r <= e for s, e in spans), r
    assert rep.dac["changes_in_pulse"] == 0


def test_a_lone_flank_wait_is_caught_inside_the_pulse(virtual_bench, monkeypatch):
    """A firmware that waited on the flank pin alone (patched here) writes after the FIRST flank: the
    writes land in the pulse's first interphase gap (no drive pin high there), and the analyzer's
    triphasic span check fails the run."""
    monkeypatch.setattr(pulse_engine, "boundary_wait_ops",
                        lambda train, ch: [dac_bus.wait_op(pulse_engine.phase2_pin(train, ch))])
    params, _trace, rep, _events, _t = _run(virtual_bench, FILES["cathodic_1kHz"], [])
    assert not rep.ok
    # each wait now ends at a flank's fall, two per pulse: of the 5 ramp steps, the 1st, 3rd and 5th land
    # after a first flank (inside pulses 0, 1, 2), A and B each; the ramp also runs twice as fast
    assert rep.dac["changes_in_pulse"] == 2 * 3
    assert any(f.startswith("DAC CHANGE IN PULSE: 6 ") and "in an interphase gap" in f for f in rep.failures)
    assert any(f.startswith("DAC FLANKS: 3 ") for f in rep.failures)  # the two flanks of pulses 0..2 differ


def test_a_triphasic_capture_read_as_biphasic_fails():
    """The shape matters to the analysis: the same capture without shape = triphasic is not a valid
    biphasic train (each main phase's second flank is its phase 2; the first flanks are orphans)."""
    from picostim.virtual.device import VirtualPico
    from picostim.client import Client
    from picostim.transport import open_port

    vp = VirtualPico()
    client = Client(open_port(vp.open()))
    try:
        client.hello()
        params = paramfile.loads(FILES["cathodic_1kHz"]).params
        params = dict(params, ramp_up_pulses=0, train_duration_ns=5_000_000)
        res = runner.run_virtual(vp, client, params, 0.008)
        assert res.report.ok and res.report.shape == "triphasic", res.report.summary()
        params0 = dict(params, shape=0)
        rep0 = runner.check_trace(res.trace, params0, 0, 0.008)
        assert not rep0.ok and rep0.shape == "biphasic"
    finally:
        client.close()
        vp.close()
