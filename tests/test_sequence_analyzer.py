"""The analyzer's custom-sequence checks (issue 13 item 4): ``expected["onsets_us"]`` (every pulse's onset
from the start's origin, compared exact to the sample: one sample = one PIO tick on the virtual Pico) and
``expected["amplitudes_ua"]`` (every pulse's phase-1 amplitude after DAC rounding, from the DAC bus).

The machinery is tested on captures the virtual Pico produced for a regular train (its onsets are a
sequence with equal intervals), so nothing here is synthesised from the values it checks; the expected
onsets and amplitudes are computed in the test from the parameter numbers (8 ns per tick, 2.5 µA per DAC
code), and a one-tick or one-code change of a single expectation must fail."""

from fractions import Fraction

import pytest

from picostim import paramfile, runner
from picostim.capture import analyze
from picostim.client import Client
from picostim.transport import open_port
from picostim.virtual.device import VirtualPico

TICK_US = Fraction(8, 1000)
PULSES = 12
PERIOD_US = 1250  # 156250 ticks
AMP_UA = 1001  # DAC: round(1001 / 2.5) = 400 codes -> 1000 µA


@pytest.fixture(scope="module")
def trace():
    vp = VirtualPico()
    client = Client(open_port(vp.open()))
    try:
        client.hello()
        ps = paramfile.from_dict({"period_us": PERIOD_US, "phase1_us": 100, "amplitude_ua": AMP_UA,
                                  "electrode_area_mm2": 5, "train_duration_us": PULSES * PERIOD_US})
        res = runner.run_virtual(vp, client, ps.params, PULSES * PERIOD_US / 1e6 + 0.01)
        assert res.report.ok and res.report.n_pulses == PULSES, res.report.summary()
        return res.trace
    finally:
        client.close()
        vp.close()


def onsets(first_us=0, n=PULSES):
    return [float(first_us + k * PERIOD_US) for k in range(n)]


def test_equal_intervals_match_exactly(trace):
    rep = analyze(trace, expected={"onsets_us": onsets(), "amplitudes_ua": [1000.0] * PULSES})
    assert rep.ok, rep.failures
    q = rep.sequence
    assert q["checked"] == PULSES and q["onset_mismatches"] == 0 and q["worst_onset_error_samples"] == 0
    assert q["amplitudes_checked"] == PULSES and q["amplitude_mismatches"] == 0 and q["amplitudes_unknown"] == 0
    assert q["onsets_us"] == pytest.approx(onsets())
    assert rep.to_json()["sequence"]["onset_mismatches"] == 0
    assert rep.to_json()["expected"]["onsets_us"] == PULSES  # the lists are counted, not repeated
    assert "sequence    12/12 pulses checked: onsets exact to the sample (worst 0 samples)" in rep.summary()


def test_origin_is_the_first_pulse_at_the_first_onset(trace):
    rep = analyze(trace, expected={"onsets_us": onsets(first_us=7000)})
    assert rep.ok, rep.failures
    assert rep.sequence["onsets_us"][0] == 7000 and rep.sequence["onsets_us"][3] == pytest.approx(7000 + 3 * PERIOD_US)


@pytest.mark.parametrize("k,ticks", [(5, 1), (5, -1), (PULSES - 1, 1), (1, 3)])
def test_one_onset_one_tick_off_fails(trace, k, ticks):
    exp = onsets()
    exp[k] += float(ticks * TICK_US)
    rep = analyze(trace, expected={"onsets_us": exp})
    assert not rep.ok
    assert rep.sequence["onset_mismatches"] == 1 and rep.sequence["worst_onset_error_samples"] == abs(ticks)
    assert rep.sequence["first_onset_mismatch"]["pulse"] == k
    assert any(f.startswith("sequence onsets: 1/%d pulses off the file's onsets" % PULSES) and "first #%d" % k in f
               for f in rep.failures), rep.failures


def test_half_a_tick_rounds_to_the_nearest_sample(trace):
    """Exact mode compares whole samples: an expectation 0.4 tick off still names the same tick."""
    exp = onsets()
    exp[4] += float(Fraction(4, 10) * TICK_US)
    assert analyze(trace, expected={"onsets_us": exp}).ok


def test_one_amplitude_one_code_off_fails(trace):
    amps = [1000.0] * PULSES
    amps[7] = 1002.5
    rep = analyze(trace, expected={"amplitudes_ua": amps})
    assert not rep.ok and rep.sequence["amplitude_mismatches"] == 1
    assert rep.sequence["first_amplitude_mismatch"] == {"pulse": 7, "expected_ua": 1002.5, "measured_ua": 1000.0}
    # the file's 1001 µA is not what the DAC plays: the caller must round
    assert not analyze(trace, expected={"amplitudes_ua": [float(AMP_UA)] * PULSES}).ok


def test_more_pulses_than_the_sequence_fails_fewer_needs_the_count(trace):
    rep = analyze(trace, expected={"onsets_us": onsets(n=PULSES - 1)})
    assert not rep.ok and any("12 complete pulses in the capture, the sequence has 11" in f for f in rep.failures)
    rep = analyze(trace, expected={"onsets_us": onsets(n=PULSES + 5)})
    assert rep.ok and rep.sequence["checked"] == PULSES  # a run window may end early ...
    rep = analyze(trace, expected={"onsets_us": onsets(n=PULSES + 5), "pulses": PULSES + 5})
    assert not rep.ok  # ... unless the whole sequence was due


def test_no_dac_lines_no_amplitude_check(trace):
    from picostim.capture.trace import Trace

    pins = Trace(trace.samplerate_hz, trace.n_samples,
                 {k: v for k, v in trace.channels.items() if k in ("POS", "NEG", "RECOVERY", "SYNC")})
    rep = analyze(pins, expected={"onsets_us": onsets(), "amplitudes_ua": [5.0] * PULSES})
    assert rep.ok and rep.sequence["amplitude_note"].startswith("the capture has no DAC lines")


def test_sequence_expectations_from_a_file():
    """runner.sequence_expectations: onsets = ticks of each absolute onset (+ c cycle ticks), in µs;
    amplitudes after DAC rounding; the count when the window holds the whole sequence."""
    ps = paramfile.loads("phase1_us = 100\nelectrode_area_mm2 = 5\ntrain_duration_ms = 20\n[sequence]\n"
                         "onsets_us = [0.004, 2000.012, 5500]\namplitudes_ua = [1001, 2, 1503.75]\nloop = true\n"
                         "cycle_ms = 9.000004\n")
    exp = runner.sequence_expectations(ps.params, ps.sequence, run_s=1.0)
    # ticks: 0.5 -> 1, 250001.5 -> 250002, 687500; cycle 1125000.5 -> 1125001; 3 cycles (20 / 9.000004)
    t = [1, 250002, 687500]
    want = [(c * 1125001 + x) * TICK_US for c in range(3) for x in t]
    assert exp["onsets_us"] == pytest.approx([float(w) for w in want], abs=1e-9)
    # codes: 1001 / 2.5 = 400.4 -> 400; 2 / 2.5 = 0.8 -> 1; 1503.75 / 2.5 = 601.5 -> 602 (halves up)
    assert exp["amplitudes_ua"] == [1000.0, 2.5, 1505.0] * 3
    assert exp["pulses"] == 9
    assert runner.sequence_expectations(ps.params, ps.sequence, run_s=0.01).get("pulses") is None


def test_asynchronous_sampling_tolerance(trace):
    """The same emulated pins sampled as a 24 MS/s logic analyzer would (an edge at tick t is seen at the
    first analyzer sample at or after it): onsets are checked within ±1 sample plus the clock tolerance
    (100 ppm of the span: 3 samples at pulse 1, 1250 µs after pulse 0), so the true onsets pass and an
    expectation 6 samples off at pulse 1 fails."""
    from fractions import Fraction as F

    import numpy as np

    from picostim.capture.trace import Channel, Trace

    sr = 24_000_000
    k = F(sr, 125_000_000)
    lines = {}
    for name in ("POS", "NEG", "RECOVERY", "SYNC"):
        ch = trace.channels[name]
        lines[name] = Channel(ch.initial, np.array([-(-int(t) * k.numerator // k.denominator) for t in ch.toggles],
                                                   np.int64))
    slow = Trace(sr, -(-trace.n_samples * k.numerator // k.denominator), lines)
    rep = analyze(slow, expected={"onsets_us": onsets()})
    assert rep.ok and not rep.exact and rep.sequence["checked"] == PULSES, rep.failures
    assert rep.sequence["worst_onset_error_samples"] <= 1
    exp = onsets()
    exp[1] += 6 / 24  # µs: 6 samples at 24 MS/s
    bad = analyze(slow, expected={"onsets_us": exp})
    assert not bad.ok and bad.sequence["first_onset_mismatch"]["pulse"] == 1
