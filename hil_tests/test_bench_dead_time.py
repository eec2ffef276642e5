"""Dead time between drive states on the bench (issue 10 item 4): a train with interphase 0 and a
recovery shows at least board.DEAD_TIME_NS of idle at every change of drive state, and the analyzer
fails a run whose firmware leaves less."""

from __future__ import annotations

import pytest

from firmware import board, pulse_engine
from picostim import paramfile

DEAD_TICKS = pulse_engine.ns_to_ticks(board.DEAD_TIME_NS)


def _params(**extra):
    keys = dict(phase1_us=100, interphase_us=0, phase2_us=100, recovery_us=200, frequency_hz=1000,
                amplitude_ua=500, train_duration_us=20_000, electrode_area_mm2=1)
    keys.update(extra)
    return paramfile.from_dict(keys).params


@pytest.mark.parametrize("polarity", ["cathodic-first", "anodic-first"])
def test_interphase_zero_runs_with_the_dead_time(bench, polarity):
    result = bench.run(_params(polarity=polarity), duration_s=0.04)
    report = result.report
    assert report.ok, report.summary()
    assert report.n_pulses == 20
    assert result.realised["interphase"] == DEAD_TICKS  # reported by the firmware, next to the request 0
    dt = report.dead_time
    assert dt["violations"] == 0 and dt["transitions"] == 20 * 2 + 19
    if bench.virtual:  # one sample per PIO tick: the idle is the dead time to the tick
        assert set(report.values["interphase"].tolist()) == {DEAD_TICKS}
        assert set(report.values["recovery_gap"].tolist()) == {DEAD_TICKS}
        assert dt["min_idle_us"] == board.DEAD_TIME_NS / 1000


def test_firmware_without_dead_time_fails_the_run(virtual_bench, monkeypatch):
    """The firmware patched to the old behaviour (a 5-tick gap, the shortest segment): every capture check
    reports DEAD TIME, even though POS and NEG never overlap."""
    monkeypatch.setattr(pulse_engine, "DEAD_TICKS", pulse_engine.OVERHEAD)
    result = virtual_bench.run(_params(), duration_s=0.04)
    report = result.report
    assert not report.ok
    assert report.to_json()["overlaps"]["count"] == 0
    dead = [f for f in report.failures if f.startswith("DEAD TIME")]
    assert dead and report.dead_time["violations"] == 20 * 2
    assert report.dead_time["min_idle_us"] == pulse_engine.OVERHEAD * 8 / 1000
