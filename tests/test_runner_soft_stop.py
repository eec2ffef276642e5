"""runner.run_virtual after its STOP waits until the channel has really ended (bounded), so a soft stop
(ramp_down_*) is captured whole: before the fix it let only ~2 cycles play, and `picostim --virtual run`
of an endless train with ramp_down_pulses = 3 at 20 Hz reported 750 µA but not 500 and 250 µA.

The expected soft-stop amplitudes are computed here from the file's numbers (dac_contract.md: pulse j of
K at max(1, round(code1 * (K - j) / (K + 1))) codes of 2.5 µA), not by the firmware's functions."""

from __future__ import annotations

import json

import pytest

from picostim import cli, paramfile, runner
from picostim.client import Client
from picostim.transport import open_port

device = pytest.importorskip("picostim.virtual.device")

UA_PER_CODE = 2.5


def _round(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den)


def soft_stop_ua(amplitude_ua: int, k: int) -> list[float]:
    code1 = _round(amplitude_ua * 2, 5)  # µA / 2.5 µA per code
    return [max(1, _round(code1 * (k - j), k + 1)) * UA_PER_CODE for j in range(k)]


@pytest.fixture
def bench():
    vp = device.VirtualPico()
    client = Client(open_port(vp.open()))
    client.hello()
    yield vp, client
    client.close()
    vp.close()


def _tail(amps: list[float], full: float) -> list[float]:
    """The amplitudes after the last full-amplitude pulse."""
    last = max(i for i, a in enumerate(amps) if a == full)
    return amps[last + 1:]


@pytest.mark.parametrize("frequency_hz", [20, 1000, 10_000])
@pytest.mark.parametrize("ramp", [dict(ramp_down_pulses=3), dict(ramp_down_pulses=6)])
def test_run_captures_the_whole_soft_stop(bench, frequency_hz, ramp):
    vp, client = bench
    k = ramp["ramp_down_pulses"]
    params = paramfile.from_dict(dict(phase1_us=20, phase2_us=20, frequency_hz=frequency_hz, amplitude_ua=1000,
                                      electrode_area_mm2=5, **ramp)).params
    result = runner.run_virtual(vp, client, params, duration_s=5.5 / frequency_hz)
    assert result.report.ok, result.report.summary()
    amps = result.to_json()["amplitude_ua"]
    tail = _tail(amps, 1000.0)
    want = soft_stop_ua(1000, k)
    assert tail[:k] == want  # every soft-stop pulse, in order
    # after the DAC shutdown no current; the stream stops once the firmware's poll sees the ramp's mark
    # (the virtual Pico polls reaction_us after each phase-1 reading: up to 5 pulses at 10 kHz) and at
    # most one queued pulse follows
    assert all(a == 0.0 for a in tail[k:])
    late = -(-vp.hal.reaction_us * 1000 // params["period_ns"])
    assert 0 <= len(tail) - k <= late + 2
    assert not vp.hal.running(0)  # the run returned only once the channel had ended
    assert client.status()["channels"][0]["state"] == "idle"


def test_time_based_soft_stop_at_20_hz(bench):
    """ramp_down_ms = 200 at 20 Hz: the 4 pulses that start within 200 ms of the stop's boundary."""
    vp, client = bench
    params = paramfile.from_dict(dict(phase1_us=200, phase2_us=200, frequency_hz=20, amplitude_ua=2000,
                                      electrode_area_mm2=5, ramp_down_ms=200)).params
    assert runner.stop_cycles(params) >= 4 + 2
    result = runner.run_virtual(vp, client, params, duration_s=0.26)
    assert result.report.ok, result.report.summary()
    tail = _tail(result.report.amplitude_ua, 2000.0)
    assert tail[:4] == soft_stop_ua(2000, 4) == [1600.0, 1200.0, 800.0, 400.0]
    assert set(tail[4:]) <= {0.0}
    assert not vp.hal.running(0)


def test_a_train_without_soft_stop_still_ends_within_two_cycles(bench):
    vp, client = bench
    params = paramfile.from_dict(dict(phase1_us=200, phase2_us=200, frequency_hz=20, amplitude_ua=1000,
                                      electrode_area_mm2=5)).params
    assert runner.stop_cycles(params) == 4
    t0 = vp.hal.system.now
    result = runner.run_virtual(vp, client, params, duration_s=0.26)
    assert result.report.ok and not vp.hal.running(0)
    assert result.report.amplitude_ua == [1000.0] * result.report.n_pulses
    # the stop ended the stream at the next boundary: the run lasted at most the window plus two cycles
    assert vp.hal.system.now - t0 <= (0.26 + 2 * (0.05 + 1e-3) + 1e-3) * vp.hal.clock_hz  # (+ the start writes)


def test_cli_run_json_reports_every_soft_stop_pulse(tmp_path, capsys):
    f = tmp_path / "soft.toml"
    f.write_text("frequency_hz = 20\nphase1_us = 200\namplitude_ua = 1000\nelectrode_area_mm2 = 5\n"
                 "ramp_down_pulses = 3\n")
    assert cli.main(["--virtual", "run", str(f), "--duration", "0.3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tail = _tail(out["amplitude_ua"], 1000.0)
    assert tail[:3] == [750.0, 500.0, 250.0]
    assert set(tail[3:]) <= {0.0}
