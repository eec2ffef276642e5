"""Electrode impedance: classification, debounce (hysteresis), phase-1 readings, the electrode model and
its fault-injection syntax, and the virtual Pico's phase-1 sampling (SPEC §5)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import board, impedance, pulse_engine
from picostim.virtual.electrode import (Electrode, Fault, SpecError, electrodes_from_specs, parse_electrode,
                                        parse_fault, parse_ohms, parse_time)
from picostim.virtual.sim_hal import SimHal
from protocol import messages as M
from protocol import params as P

RANK = {M.Z_SHORT: 0, M.Z_OK: 1, M.Z_HIGH: 2, M.Z_OPEN: 3}
N = impedance.CONSECUTIVE


# ---- classification --------------------------------------------------------------------------
def test_default_thresholds():
    assert impedance.classify(0) == M.Z_SHORT
    assert impedance.classify(49) == M.Z_SHORT
    assert impedance.classify(50) == M.Z_OK
    assert impedance.classify(2000) == M.Z_OK
    assert impedance.classify(2001) == M.Z_HIGH
    assert impedance.classify(4000) == M.Z_HIGH
    assert impedance.classify(4001) == M.Z_OPEN
    assert impedance.classify(impedance.SATURATED_OHM) == M.Z_OPEN


@given(st.integers(0, 2**32), st.integers(0, 2**32))
def test_classification_is_monotonic_in_the_load(a, b):
    lo, hi = min(a, b), max(a, b)
    assert RANK[impedance.classify(lo)] <= RANK[impedance.classify(hi)]


@settings(max_examples=200, deadline=None)
@given(st.floats(0.5, 1e7), st.floats(0.5, 1e7), st.sampled_from([100, 500, 1000, 5000]))
def test_measured_class_is_monotonic_in_the_electrode_load(r1, r2, amp_ua):
    """End to end through the model, the ADC and V/I: more load never gives a lower class."""
    code = pulse_engine.dac_code(amp_ua)
    na = pulse_engine.code_to_na(code)

    def measured(r):
        v = Electrode(r_series=r).voltage(na * 1e-9, impedance.MONITOR_SAMPLE_NS * 1e-9, 0.0)
        return impedance.phase1_ohms(impedance.electrode_uv_to_adc(v * 1e6), na)

    lo, hi = sorted((r1, r2))
    assert measured(lo) <= measured(hi)
    assert RANK[impedance.classify(measured(lo))] <= RANK[impedance.classify(measured(hi))]


def test_phase1_ohms_and_saturation():
    uv_per_code = board.ADC_VREF_UV * board.ELECTRODE_UV_PER_ADC_UV / 4096
    code = impedance.electrode_uv_to_adc(1_000_000)  # 1 V at 1 mA: 1 kΩ within one ADC step
    assert abs(impedance.phase1_ohms(code, 1_000_000) - 1000) <= uv_per_code / 1000 + 1
    rail = impedance.electrode_uv_to_adc(impedance.COMPLIANCE_UV)
    assert impedance.phase1_ohms(rail, 10_000_000) == impedance.SATURATED_OHM  # 1.2 kΩ at 10 mA: at the rail
    assert impedance.classify(impedance.phase1_ohms(rail, 10_000_000)) == M.Z_OPEN
    assert impedance.phase1_ohms(0, 1_000_000) == 0
    assert impedance.phase1_ohms(100, 0) == 0
    assert impedance.monitor_interval_us(1000) == 1000 and impedance.monitor_interval_us(0) == 0
    assert impedance.MONITOR_MIN_PHASE_NS >= impedance.MONITOR_SAMPLE_NS + impedance.ADC_CONVERSION_NS


# ---- debounce / hysteresis -------------------------------------------------------------------
def _changes(seq, seed=1000):
    c = impedance.Classifier()
    c.reset(seed)
    out = []
    for i, ohm in enumerate(seq):
        before = c.state
        if c.update(ohm) != before:
            out.append(i)
    return c, out


def test_needs_n_consecutive_readings():
    c, ch = _changes([5000] * (N - 1))
    assert ch == [] and c.state == M.Z_OK
    c, ch = _changes([5000] * N)
    assert ch == [N - 1] and c.state == M.Z_OPEN
    c, ch = _changes([5000, 1000] * 10 + [10] * N)
    assert ch == [20 + N - 1] and c.state == M.Z_SHORT


def test_reset_seeds_the_state_and_unknown_takes_the_first_reading():
    c = impedance.Classifier()
    assert c.update(5000) == M.Z_OPEN  # no history: the first reading decides
    c.reset(1000)
    assert c.state == M.Z_OK and c.last_ohm == 1000
    assert c.update(5000) == M.Z_OK


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.integers(0, 3000), st.lists(st.integers(-300, 300), min_size=1, max_size=200))
def test_noisy_reading_around_a_threshold_cannot_chatter(n, centre_pick, noise):
    """Readings scattered around a threshold: between two class changes there are at least N
    readings, and a change to class C is backed by the last N readings all being C."""
    threshold = (impedance.SHORT_OHM, impedance.HIGH_OHM, impedance.OPEN_OHM)[centre_pick % 3]
    seq = [max(0, threshold + e) for e in noise]
    c = impedance.Classifier(consecutive=n)
    c.reset(seq[0])
    changes = []
    for i, ohm in enumerate(seq):
        before = c.state
        if c.update(ohm) != before:
            changes.append(i)
            assert all(impedance.classify(r) == c.state for r in seq[i - n + 1:i + 1])
    for a, b in zip(changes, changes[1:]):
        assert b - a >= n
    assert len(changes) <= len(seq) // n


@given(st.integers(2, 6), st.integers(1, 100), st.sampled_from([impedance.SHORT_OHM, impedance.OPEN_OHM]))
def test_alternating_readings_never_change_the_class(n, k, threshold):
    seq = [threshold + 1, threshold - 1] * k
    c = impedance.Classifier(consecutive=n)
    c.reset(seq[0])
    start = c.state
    assert all(c.update(r) == start for r in seq)


# ---- electrode model and the fault syntax ----------------------------------------------------
def test_model_faults_over_time():
    e = Electrode(r_series=1000, faults=[Fault("open", 1.0), Fault("ok", 2.0), Fault("short", 3.0)])
    assert e.series_at(0.5) == 1000 and e.series_at(1.5) > 1e8 and e.series_at(2.5) == 1000
    assert e.series_at(3.5) == 1.0
    d = Electrode(r_series=1000, faults=[Fault("drift", 1.0, ohms=10_000, ramp_s=2.0)])
    assert d.series_at(1.0) == 1000 and d.series_at(2.0) == pytest.approx(5500) and d.series_at(5) == 10_000
    i = Electrode(faults=[Fault("intermittent", 1.0, every_s=0.1, on_s=0.03)])
    assert i.series_at(1.01) > 1e8 and i.series_at(1.05) == 1000 and i.series_at(1.12) > 1e8
    assert Electrode(r_series=1e9).voltage(1e-3, 1e-5, 0) == pytest.approx(impedance.COMPLIANCE_UV / 1e6)


@pytest.mark.parametrize("text, ohms", [("1k", 1000), ("2.2k", 2200), ("470", 470), ("1M", 1e6), ("10kΩ", 10_000),
                                        ("330ohm", 330), ("1e3", 1000)])
def test_parse_ohms(text, ohms):
    assert parse_ohms(text) == ohms


@pytest.mark.parametrize("text, s", [("0.5s", 0.5), ("500ms", 0.5), ("20us", 2e-5), ("2", 2.0), ("1.5 s", 1.5)])
def test_parse_time(text, s):
    assert parse_time(text) == pytest.approx(s)


def test_parse_fault_forms():
    assert parse_fault("open@0.5s") == (None, Fault("open", 0.5))
    assert parse_fault("short@500ms,ch=2") == (2, Fault("short", 0.5))
    assert parse_fault("drift:10k@2s") == (None, Fault("drift", 2.0, ohms=10_000))
    assert parse_fault("drift:20@1s,ramp=200ms") == (None, Fault("drift", 1.0, ohms=20, ramp_s=0.2))
    assert parse_fault("intermittent@1s,every=200ms,on=60ms,ch=1") == (
        1, Fault("intermittent", 1.0, every_s=0.2, on_s=0.06))
    assert parse_fault("ok@3s") == (None, Fault("ok", 3.0))


@pytest.mark.parametrize("bad", ["open", "open@", "break@1s", "drift@1s", "open:1k@1s", "open@1s,ramp=1s",
                                 "open@1s,foo=1", "open@soon", "intermittent@1s,on=200ms", "open@1s,ch=x",
                                 "drift:lots@1s"])
def test_parse_fault_errors_name_the_problem(bad):
    with pytest.raises(SpecError) as err:
        parse_fault(bad)
    assert bad in str(err.value) or "not a" in str(err.value)


def test_parse_electrode_and_specs():
    assert parse_electrode("2.2k,c=4.7u,ch=1") == (1, {"r_series": 2200, "c_dl": pytest.approx(4.7e-6)})
    assert parse_electrode("1k,leak=100k,compliance=15V")[1] == {"r_series": 1000, "r_faradaic": 100_000,
                                                                  "compliance_v": 15}
    es = electrodes_from_specs(3, ["1k", "500,ch=2"], ["open@1s,ch=1", "short@2s"])
    assert [e.r_series for e in es] == [1000, 1000, 500]
    assert [[f.kind for f in e.faults] for e in es] == [["short"], ["open", "short"], ["short"]]
    with pytest.raises(SpecError):
        electrodes_from_specs(2, [], ["open@1s,ch=2"])
    with pytest.raises(SpecError):
        parse_electrode("1k,c=-1u")


@pytest.mark.parametrize("bad", ["1e999", "1k,leak=1e999", "1k,c=1e999u", "1k,compliance=1e400V"])
def test_parse_electrode_refuses_numbers_a_float_cannot_hold(bad):
    """A value that overflows to inf would model an open circuit nobody asked for."""
    with pytest.raises(SpecError, match="too large"):
        parse_electrode(bad)
    with pytest.raises(SpecError, match="too large"):
        parse_fault("drift:1e999@1s")
    with pytest.raises(SpecError, match="too large"):
        parse_fault("open@1e999s")


# ---- the virtual Pico's phase-1 readings ---------------------------------------------------------
def _train(**kw):
    p = P.complete(dict(dict(phase1_ns=200_000, phase2_ns=200_000, period_ns=10_000_000, amplitude_ua=1000), **kw))
    assert P.validate(p, __import__("firmware.limits", fromlist=["LIMITS"]).LIMITS) is None
    return pulse_engine.build_train(p)


def _run(hal, train, seconds, ch=0):
    trains = [None] * hal.channels
    trains[ch] = train
    hal.start(trains, 1 << ch, [0] * hal.channels)
    hal.advance_cycles(round(seconds * hal.clock_hz))


@pytest.mark.parametrize("polarity", [0, 1])
def test_one_reading_per_played_pulse_at_the_phase1_time(polarity):
    hal = SimHal(channels=1)
    train = _train(polarity=polarity)
    _run(hal, train, 0.0505)
    samples = hal.phase1_samples(0)
    pin = board.CH_NEG[0] if polarity == 0 else board.CH_POS[0]
    rises = hal.system.edges(pin)[0::2]
    assert len(samples) == len(rises) == 6  # pulses at 0, 10, ..., 50 ms
    offset = pulse_engine.ns_to_ticks(impedance.MONITOR_SAMPLE_NS)
    assert [t for t, _ in samples] == [(r + offset) * 1_000_000 // hal.clock_hz for r in rises]
    ohms = {impedance.phase1_ohms(c, train.realised["amplitude_na"]) for _, c in samples}
    assert all(abs(o - 1001) <= 5 for o in ohms)  # 1 kΩ + the double layer's 1 mV, one ADC step
    assert hal.phase1_samples(0) == []  # nothing new


def test_rate_cap_and_short_phases():
    hal = SimHal(channels=1)
    _run(hal, _train(period_ns=1_000_000, phase1_ns=100_000, phase2_ns=100_000), 0.0101)
    assert len(hal.phase1_samples(0, min_interval_us=2500)) == 4  # 0, 3, 6, 9 ms of 11 pulses
    hal = SimHal(channels=1)
    _run(hal, _train(phase1_ns=11_000, phase2_ns=11_000), 0.05)
    assert hal.phase1_samples(0) == []  # phase 1 ends before the conversion (10 + 2 µs) does


def test_pulse_in_progress_is_read_once_its_conversion_is_done():
    hal = SimHal(channels=1)
    _run(hal, _train(), 0.000005)  # 5 µs into pulse 0's phase 1: the conversion starts at 10 µs
    assert hal.phase1_samples(0) == []
    hal.advance_cycles(round(0.00001 * hal.clock_hz))
    assert len(hal.phase1_samples(0)) == 1


def test_readings_follow_the_injected_fault():
    hal = SimHal(channels=1, electrodes=[Electrode(faults=[Fault("open", 0.025)])])
    train = _train()
    _run(hal, train, 0.0505)
    ohms = [impedance.phase1_ohms(c, train.realised["amplitude_na"]) for _, c in hal.phase1_samples(0)]
    assert [impedance.classify(o) for o in ohms] == [M.Z_OK] * 3 + [M.Z_OPEN] * 3
    assert ohms[-1] == impedance.SATURATED_OHM  # the source hits its compliance on an open lead


def test_next_poll_follows_the_pulse_schedule():
    hal = SimHal(channels=1, reaction_us=100)
    train = _train(burst_pulses=2, interburst_ns=5_000_000)
    assert hal.next_poll_cycle() is None
    hal.start([train], 1, [0])
    lag = pulse_engine.ns_to_ticks(impedance.MONITOR_SAMPLE_NS + impedance.ADC_CONVERSION_NS) + 100 * 125
    first = hal.next_poll_cycle()
    assert first == hal.train_start[0] + 2 + lag
    hal.system.run_until(first)
    period = train.period_ticks
    assert hal.next_poll_cycle() == first + period  # the burst's second pulse
    hal.system.run_until(first + period)
    assert hal.next_poll_cycle() == first + 2 * period + train.realised["interburst"]  # after the interburst


def test_adc_noise_is_seeded():
    a = SimHal(channels=1, adc_noise_lsb=3.0, seed=7)
    b = SimHal(channels=1, adc_noise_lsb=3.0, seed=7)
    assert [a.measure_impedance(0) for _ in range(5)] == [b.measure_impedance(0) for _ in range(5)]
    assert len({a.measure_impedance(0) for _ in range(20)}) > 1
    assert math.isfinite(SimHal(channels=1).measure_impedance(0))


# ---- command line ---------------------------------------------------------------------------------
def test_cli_run_with_injected_fault_reports_it(capsys):
    import json
    from pathlib import Path

    from picostim import cli

    preset = sorted(Path(__file__).resolve().parent.parent.joinpath("presets").glob("*.toml"))[0]
    rc = cli.main(["--virtual", "--electrode", "1k", "--fault", "short@0.3s,ch=0", "run", str(preset),
                   "--duration", "0.6", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 4, out  # the train was stopped by a safety fault (issue 12: exit 4, not 0)
    assert out["stopped_by_fault"] is True
    assert [(f["channel"], f["kind"]) for f in out["faults"]] == [(0, "short")]
    assert out["pulses_after_fault"] in (0, 1)


@pytest.mark.parametrize("argv", [["--virtual", "--fault", "bogus@1s", "info"],
                                  ["--virtual", "--fault", "open@1s,ch=9", "info"],
                                  ["--port", "loop://", "--fault", "open@1s", "info"]])
def test_cli_bad_fault_options_exit_2(argv, capsys):
    from picostim import cli

    assert cli.main(argv) == 2
    assert "fault" in capsys.readouterr().err


# ---- the board HAL's phase-1 reading, against the recording fakes of tests/rp2_fakes.py ----------------
@pytest.fixture
def board_hal(monkeypatch):
    from rp2_fakes import load_board_hal, unload_board_hal

    mod, hw, clock = load_board_hal(monkeypatch, 3)
    yield mod, mod.Rp2Hal(), hw, clock
    unload_board_hal()


def test_board_hal_reads_phase1_on_the_schedule_and_checks_the_pin(board_hal):
    mod, h, hw, clock = board_hal
    train = _train(period_ns=1_000_000)  # 1 kHz, 200 µs phase 1, cathodic first: NEG is the phase-1 pin
    h.start([train] * 4, 1, [0] * 4)
    t0 = h._ch[0].t0_us
    hw.regs[mod._SIO_GPIO_IN] = 1 << board.CH_NEG[0]  # the pin reads high: in phase 1
    got = h.phase1_samples(0, 0)
    assert len(got) == 1
    t_k, code = got[0]
    # pulse k's reading is due at schedule origin + 2 entry ticks + k periods + MONITOR_SAMPLE_NS; its
    # time is the hardware timer read just before the conversion (the fake clock: 3 µs per read)
    k = (t_k - t0 - 10) // 1000
    due = t0 + (2 + k * train.period_ticks + pulse_engine.ns_to_ticks(impedance.MONITOR_SAMPLE_NS)) // 125
    assert due <= t_k <= due + 12
    assert code == 1000  # the fake ADC
    mux = [e for e in hw.log if e[0] == "pin_value" and e[1] in board.ADC_MUX_SEL_PINS][-2:]
    assert [e[2] for e in mux] == [board.CH_ADC_MUX[0] & 1, board.CH_ADC_MUX[0] >> 1 & 1]
    # the rate cap skips pulses; a reading due beyond MONITOR_WAIT_US is left for a later poll
    assert h.phase1_samples(0, 5000) == []
    clock[0] = t_k + 5000 - mod.MONITOR_WAIT_US // 2
    nxt = h.phase1_samples(0, 5000)
    assert len(nxt) == 1 and nxt[0][0] - t_k >= 5000 - 12  # the cap spaces due times; reported: sample times
    # pin low at the due time (mistimed, or the stream already stopped): the reading is dropped
    hw.regs[mod._SIO_GPIO_IN] = 0
    clock[0] = nxt[0][0] + 1000 - 50
    assert h.phase1_samples(0, 0) == []


def test_board_hal_does_not_monitor_short_phases_or_idle_channels(board_hal):
    mod, h, hw, clock = board_hal
    assert h.phase1_samples(1, 0) == []  # never started
    h.start([_train(phase1_ns=15_000, phase2_ns=15_000)] * 4, 1, [0] * 4)
    hw.regs[mod._SIO_GPIO_IN] = 1 << board.CH_NEG[0]
    assert h.phase1_samples(0, 0) == []


def test_board_hal_monitors_a_burst_train_whose_cycle_exceeds_the_ticks_range(board_hal):
    """A 1 h interburst makes one cycle far longer than ticks_add/ticks_diff can span (2**29 µs): moving
    the schedule origin to the next burst must neither raise (OverflowError on the board: the crash
    path mid-train) nor put the origin in the future; the next burst's first pulse is still read."""
    mod, h, hw, clock = board_hal
    hour_ns = 3600 * 10**9
    train = _train(period_ns=5_000_000, burst_pulses=2, interburst_ns=hour_ns)
    h.start([train] * 4, 1, [0] * 4)
    t0 = h._ch[0].t0_us
    hw.regs[mod._SIO_GPIO_IN] = 1 << board.CH_NEG[0]
    assert h.phase1_samples(0, 0) == []  # pulse 0 is due too soon after the start to prepare for
    clock[0] = (t0 + 5000 - mod.MONITOR_PREP_US) & (2**30 - 1)
    got = h.phase1_samples(0, 0)  # pulse 1, the last of the first burst
    assert len(got) == 1 and 0 <= got[0][0] - t0 - 5000 <= 40
    for s_ in range(100, 3600, 100):  # the main loop keeps polling (here every 100 s) for an hour
        clock[0] = (t0 + s_ * 1_000_000) & (2**30 - 1)
        assert h.phase1_samples(0, 0) == []
    burst2 = train.cycle_ticks // 125  # µs from pulse 0 to the second burst's first pulse
    clock[0] = (t0 + burst2 - mod.MONITOR_PREP_US) & (2**30 - 1)
    nxt = []
    for _ in range(3):
        nxt += h.phase1_samples(0, 0)
    assert len(nxt) == 1
    assert 0 <= ((nxt[0][0] - t0 - burst2) & (2**30 - 1)) <= 40  # pulse 2 = the second burst's first pulse
