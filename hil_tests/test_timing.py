"""Timing of the firmware's pulse trains, checked from captures (SPEC §4, §9).

On the virtual Pico one sample is one PIO cycle, so every width must equal the requested value to
the tick (tolerance: half a sample, i.e. the engine's documented round-to-nearest-tick).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware import board, pulse_engine
from picostim import paramfile


def make_params(**keys):
    """Canonical params from parameter-file keys (units in the names), as a file would give."""
    return paramfile.from_dict(keys).params
from picostim.capture import analyze

PRESETS = sorted(Path(__file__).resolve().parent.parent.joinpath("presets").glob("*.toml"))


def _assert_clean(report):
    """Safety invariants of every capture: no overlap, no cut-short pulse."""
    assert report.to_json()["overlaps"]["count"] == 0
    assert report.incomplete["truncated"] == 0
    assert report.incomplete["cut_by_capture_end"] == 0


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_timing_is_exact(bench, preset):
    params = paramfile.load(preset).params
    result = bench.run(params, duration_s=1.5)
    assert result.report.ok, result.report.summary()
    assert result.report.n_pulses > 0
    _assert_clean(result.report)
    if bench.virtual:  # one sample per tick: the widths are the engine's realised ticks exactly
        for name in ("phase1", "phase2"):
            widths = result.report.values[name]
            assert set(widths.tolist()) == {result.realised[name]}


EDGE_CASES = {
    # the shortest phases the PIO program can make (5 ticks = 40 ns) at the maximum rate
    "shortest_phases": (make_params(phase1_us=0.04, phase2_us=0.04, frequency_hz=10_000, amplitude_ua=1000,
                                    train_duration_us=10_000), 0.02),
    # asymmetric, with an interphase gap and passive recovery
    "asymmetric": (make_params(phase1_us=100, interphase_us=50, phase2_us=400, recovery_us=1000,
                               frequency_hz=100, amplitude_ua=2000, train_duration_us=200_000), 0.3),
    # values that are not a whole number of ticks: rounded to the nearest tick
    "rounding": (make_params(phase1_us=33.333, interphase_us=7.77, phase2_us=33.333, frequency_hz=333,
                             amplitude_ua=500, polarity="anodic-first", train_duration_us=100_000), 0.2),
    # high-rate bursts: 10 pulses at 10 kHz, bursts every 6 ms
    "high_rate_bursts": (make_params(phase1_us=20, phase2_us=20, frequency_hz=10_000, burst_pulses=10,
                                     interburst_us=5_000, amplitude_ua=1000, train_duration_us=60_000), 0.1),
    # long intervals: a 5 s period needs segments longer than the 28-bit counter (split words)
    "long_interval": (make_params(phase1_us=200, phase2_us=200, frequency_hz=0.2, amplitude_ua=1000,
                                  train_duration_us=12_000_000), 16.0),
    # a train delay before the first pulse
    "train_delay": (make_params(phase1_us=200, phase2_us=200, frequency_hz=50, amplitude_ua=1000,
                                train_delay_us=30_000, train_duration_us=100_000), 0.2),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_case_timing(bench, case):
    params, duration = EDGE_CASES[case]
    result = bench.run(params, duration_s=duration)
    assert result.report.ok, result.report.summary()
    assert "pulses" in result.report.expected  # finite trains: the count is checked too
    _assert_clean(result.report)


def test_train_delay_is_exact(virtual_bench):
    params, duration = EDGE_CASES["train_delay"]
    result = virtual_bench.run(params, duration_s=duration)
    hal = virtual_bench.vp.hal
    # the capture is armed before START: the enable comes after the DAC writes start() makes first
    first = result.trace.channels["NEG"].rising()[0] - (hal.train_start[0] - hal.start_called[0])
    # the SM's first pin write comes SEGMENT_ENTRY's two set-up instructions after the enable
    assert first == pulse_engine.ns_to_ticks(30_000_000) + 2


def test_stop_mid_train_completes_the_pulse(virtual_bench):
    vp, client = virtual_bench.vp, virtual_bench.client
    params = make_params(phase1_us=400, interphase_us=100, phase2_us=400, recovery_us=500, frequency_hz=50,
                         amplitude_ua=1000)
    client.set_params(0, params)
    client.start(1)
    vp.advance(0.1002)  # 200 µs into pulse 6: mid phase 1
    assert vp.hal.system.pin_level(board.CH_NEG[0]) == 1
    stop_cycle = vp.hal.system.now - vp.hal.train_start[0]
    client.stop(1)
    vp.advance(0.1)
    report = analyze(vp.hal.trace([0]), expected={"phase1_us": 400, "interphase_us": 100, "phase2_us": 400,
                                                   "recovery_us": 500, "period_us": 20_000})
    assert report.ok, report.summary()
    _assert_clean(report)  # pulse 6 completed its balancing phase and recovery
    # at most one further pulse was already queued in the FIFO (SPEC §5's reaction bound)
    started_after_stop = int((report.pulses.start > stop_cycle).sum())
    assert started_after_stop <= 1
    assert report.n_pulses == 6 + started_after_stop
    assert not vp.hal.running(0)
    for pin in (board.CH_POS[0], board.CH_NEG[0], board.CH_RECOVERY[0], board.SYNC_PIN):
        assert vp.hal.system.pin_level(pin) == 0
    event = client.wait_event("train_done", 0, timeout=1.0)
    assert event["value"] == report.n_pulses


def test_parameter_change_takes_effect_at_a_pulse_boundary(virtual_bench):
    vp, client = virtual_bench.vp, virtual_bench.client
    a = make_params(phase1_us=200, phase2_us=200, frequency_hz=100, amplitude_ua=1000)
    b = make_params(phase1_us=100, phase2_us=100, frequency_hz=100, amplitude_ua=1000)
    client.set_params(0, a)
    client.start(1)
    vp.advance(0.0551)  # inside pulse 6's idle
    client.set_params(0, b)
    vp.advance(0.05)
    client.stop(1)
    vp.advance(0.02)
    report = analyze(vp.hal.trace([0]), expected={"period_us": 10_000})
    assert report.ok, report.summary()
    _assert_clean(report)
    p1 = report.values["phase1"].tolist()
    p2 = report.values["phase2"].tolist()
    shapes = list(zip(p1, p2))
    # (the amplitude may not change while running: the DAC is not latched at a pulse boundary)
    assert set(shapes) == {(25_000, 25_000), (12_500, 12_500)}  # no hybrid pulse
    switch = shapes.index((12_500, 12_500))
    assert all(s == (25_000, 25_000) for s in shapes[:switch])
    assert all(s == (12_500, 12_500) for s in shapes[switch:])


def test_channels_started_together_start_on_the_same_cycle(virtual_bench):
    vp, client = virtual_bench.vp, virtual_bench.client
    for ch, us in ((0, 200), (1, 100), (2, 50)):
        client.set_params(ch, make_params(phase1_us=us, phase2_us=us, frequency_hz=20, amplitude_ua=1000,
                                          train_duration_us=100_000))
    client.start(0b111)
    vp.advance(0.2)
    trace = vp.hal.trace([0, 1, 2])
    starts = {name: trace.channels[name].rising()[0] for name in ("NEG", "NEG_1", "NEG_2")}
    assert len(set(starts.values())) == 1, starts
    for ch, us in ((0, 200), (1, 100), (2, 50)):
        report = analyze(trace, channel=ch, expected={"phase1_us": us, "phase2_us": us, "period_us": 50_000,
                                                      "pulses": 2})
        assert report.ok, report.summary()


def test_external_trigger_latency_is_a_few_cycles(virtual_bench):
    vp, client = virtual_bench.vp, virtual_bench.client
    client.set_params(0, make_params(phase1_us=200, phase2_us=200, frequency_hz=50, amplitude_ua=1000,
                                     train_duration_us=40_000, trigger="ext1"))
    client.start(1)
    vp.advance(0.01)
    assert client.status()["channels"][0]["state"] == "armed"
    assert vp.hal.trace([0]).channels["NEG"].toggles.size == 0  # nothing before the trigger
    edge = vp.hal.drive_trigger(1, 1, at_s=0.0123)
    vp.advance(0.1)
    trace = vp.hal.trace([0])
    report = analyze(trace, expected={"phase1_us": 200, "phase2_us": 200, "pulses": 2,
                                      "trigger_latency_max_cycles": 5})
    assert report.ok, report.summary()
    latency = report.trigger["latency_cycles"]
    # wait 1 pin (edge seen at its cycle) -> mov x, null -> pull -> out pins: three cycles
    assert latency == 3
    assert trace.channels["NEG"].rising()[0] == edge - vp.hal.train_start[0] + 3


@pytest.mark.parametrize("error", [-1, +1])
def test_broken_overhead_compensation_is_caught(virtual_bench, monkeypatch, error):
    """A firmware whose segment-overhead compensation is one tick off must fail the HIL check."""
    monkeypatch.setattr(pulse_engine, "OVERHEAD", pulse_engine.OVERHEAD + error)
    params = make_params(phase1_us=200, phase2_us=200, frequency_hz=50, amplitude_ua=1000,
                         train_duration_us=100_000)
    result = virtual_bench.run(params, duration_s=0.2)
    assert not result.report.ok
    assert any("phase1" in f for f in result.report.failures), result.report.failures
    widths = np.unique(result.report.values["phase1"])
    assert widths.tolist() == [25_000 - error]


def test_amplitude_change_while_running_is_refused(virtual_bench):
    """Changing the DAC codes mid-train could land mid-pulse: refused, and nothing changes."""
    from picostim.client import DeviceError

    vp, client = virtual_bench.vp, virtual_bench.client
    a = make_params(phase1_us=200, phase2_us=200, frequency_hz=100, amplitude_ua=1000)
    client.set_params(0, a)
    client.start(1)
    vp.advance(0.02)
    with pytest.raises(DeviceError) as err:
        client.set_params(0, make_params(phase1_us=200, phase2_us=200, frequency_hz=100, amplitude_ua=2000))
    assert err.value.field == "amplitude_ua"
    assert client.get_params(0)["params"] == a


def test_gated_train_runs_only_while_the_gate_is_high(virtual_bench):
    """Gated trigger: the PIO starts the train on the gate's rising edge to the cycle; the firmware
    stops it at a pulse boundary after the gate falls and re-arms on the gate (train from its start)."""
    vp, client = virtual_bench.vp, virtual_bench.client
    period = 10_000  # µs
    client.set_params(0, make_params(phase1_us=200, phase2_us=200, frequency_hz=1e6 / period,
                                     amplitude_ua=1000, trigger="gated1"))
    client.start(1)
    start = vp.hal.train_start[0]  # (each re-arm on the gate restarts the stream later)
    vp.advance(0.005)
    assert client.status()["channels"][0]["state"] == "armed"
    opens = [vp.hal.drive_trigger(1, 1, at_s=0.0101), vp.hal.drive_trigger(1, 1, at_s=0.1503)]
    closes = [vp.hal.drive_trigger(1, 0, at_s=0.0552), vp.hal.drive_trigger(1, 0, at_s=0.2011)]
    vp.advance(0.3)
    trace = vp.hal.trace([0], start=start)
    report = analyze(trace, expected={"phase1_us": 200, "phase2_us": 200})
    assert report.ok, report.summary()
    _assert_clean(report)
    starts = report.pulses.start + start  # absolute cycles
    per_tick = vp.hal.clock_hz // 1_000_000
    for t_open, t_close in zip(opens, closes):
        inside = starts[(starts >= t_open) & (starts < t_close + 2 * period * per_tick)]
        assert inside[0] == t_open + 3  # wait 1 pin -> mov -> pull -> out pins: the same 3 cycles
        # pulses every period while open; after the gate falls, at most the pulse noticed at the next
        # poll (after each pulse) plus one queued pulse
        assert np.all(np.diff(inside) == period * per_tick)
        late = inside[inside > t_close]
        assert len(late) <= 2
    # nothing between a closing (plus the bound) and the next opening
    quiet = starts[(starts > closes[0] + 2 * period * per_tick) & (starts < opens[1])]
    assert quiet.size == 0
    status = client.status()["channels"][0]
    assert status["state"] == "armed"  # re-armed on the gate, waiting for the next opening
    assert status["pulses"] == report.n_pulses
    assert client.events(timeout=0.1)  # trigger_seen per opening
