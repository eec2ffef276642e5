"""Electrode faults injected on the virtual Pico, checked from the capture (SPEC §5, docs/SAFETY.md).

The promise: on OPEN or SHORT the pulse in progress completes its balancing phase, outputs go idle,
the channel latches FAULT, an EVENT names channel, kind, time and the last reading; stimulation stops
no later than the end of the pulse after the one in which the fault was *seen* (the pulse whose
phase-1 reading completes the debounce). START is refused until CLEAR_FAULT, and the start's test
pulse re-checks the electrode.

These need the virtual Pico's electrode model (fault injection); on a board they are skipped.
"""

from __future__ import annotations

import pytest

from firmware import board, impedance, pulse_engine
from picostim import paramfile, runner
from picostim.capture import analyze
from picostim.client import DeviceError
from picostim.virtual.electrode import Fault
from protocol import messages as M

N = impedance.CONSECUTIVE
OFFSET = pulse_engine.ns_to_ticks(impedance.MONITOR_SAMPLE_NS)
REACTIONS: list[dict] = []  # measured figures, printed at the end (pytest -s) for docs/SAFETY.md


def make_params(**keys):
    return paramfile.from_dict(keys).params


def _expected(params):
    return {k: v for k, v in runner.expected_from_params(params, 0).items()
            if k in ("phase1_us", "interphase_us", "phase2_us", "recovery_us", "period_us")}


def _check_fault_stop(bench, params, fault, kind, seconds, case):
    vp, client = bench.vp, bench.client
    vp.hal.electrodes[0].faults.append(fault)
    client.set_params(0, params)
    client.start(1)
    vp.advance(seconds)
    ev = client.wait_event(kind, 0, timeout=1.0)
    assert ev["channel"] == 0 and ev["kind"] == kind
    assert not vp.hal.running(0)
    for pin in (board.CH_POS[0], board.CH_NEG[0], board.CH_RECOVERY[0], board.SYNC_PIN):
        assert vp.hal.system.pin_level(pin) == 0  # outputs idle
    trace = vp.hal.trace([0])
    report = analyze(trace, expected=_expected(params))
    assert report.ok, report.summary()
    assert report.to_json()["overlaps"]["count"] == 0
    assert report.incomplete["truncated"] == 0 and report.incomplete["cut_by_capture_end"] == 0
    starts = report.pulses.start
    clk = vp.hal.clock_hz
    t0 = vp.hal.train_start[0]
    ev_cycle = round(ev["time_us"] * clk / 1e6) - t0
    # the pulse in which the fault was seen: its phase 1 holds the reading that completed the debounce
    seen = int((starts <= ev_cycle).sum()) - 1
    assert starts[seen] + OFFSET - 125 <= ev_cycle <= starts[seen] + OFFSET
    after = runner.pulses_after(report, ev_cycle)
    assert after <= 1, "pulses after the seen pulse: %d" % after
    assert report.n_pulses == seen + 1 + after
    # the injected fault: the first pulse read after it, then N - 1 more readings to debounce
    inject = round(fault.at_s * clk) - t0
    first_bad = int((starts + OFFSET < inject).sum())
    if fault.kind in ("open", "short"):
        assert seen == first_bad + N - 1
    end = int(report.pulses.end()[-1])
    REACTIONS.append({"case": case, "kind": kind, "period_us": params["period_ns"] / 1000,
                      "pulses_after_injection": int((starts > inject).sum()),
                      "seen_pulse_after_injection": seen - first_bad + 1,
                      "pulses_after_seen": after,
                      "injection_to_idle_us": (end - inject) / clk * 1e6,
                      "event_to_idle_us": (end - ev_cycle) / clk * 1e6,
                      "ohms": ev["value"]})
    st = client.status()["channels"][0]
    assert st["state"] == "fault" and st["fault"] == kind
    return ev, report


def _refused(client, code):
    with pytest.raises(DeviceError) as err:
        client.start(1)
    assert err.value.code == code, err.value
    return err.value


PARAMS_50HZ = dict(phase1_us=200, interphase_us=50, phase2_us=200, recovery_us=300, frequency_hz=50,
                   amplitude_ua=1000)


@pytest.mark.parametrize("kind, at_s", [("open", 0.1003), ("open", 0.1113), ("short", 0.1003), ("short", 0.1199)])
def test_fault_mid_train_stops_within_the_bound_and_latches(virtual_bench, kind, at_s):
    vp, client = virtual_bench.vp, virtual_bench.client
    params = make_params(**PARAMS_50HZ)
    ev, _ = _check_fault_stop(virtual_bench, params, Fault(kind, at_s), kind, 0.3, "%s@%gs 50Hz" % (kind, at_s))
    if kind == "open":
        assert impedance.classify(ev["value"]) == M.Z_OPEN
    else:
        assert ev["value"] < impedance.SHORT_OHM
    # latched: START refused until cleared, whatever the electrode does meanwhile
    err = _refused(client, M.E_FAULT_LATCHED)
    assert err.value == 0
    assert client.status()["channels"][0]["state"] == "fault"
    client.clear_fault(1)
    assert client.status()["channels"][0]["state"] == "idle"
    # the fresh check: the electrode is still broken
    err = _refused(client, M.E_IMPEDANCE)
    assert impedance.classify(err.limit) == (M.Z_OPEN if kind == "open" else M.Z_SHORT)
    # repaired: the start's check passes and stimulation resumes
    vp.hal.electrodes[0].faults.append(Fault("ok", vp.hal.system.now / vp.hal.clock_hz))
    client.start(1)
    vp.advance(0.1)
    assert client.status()["channels"][0]["state"] == "running"
    client.stop(1)


@pytest.mark.parametrize("hz", [20, 200, 1000])
def test_bound_holds_across_rates(virtual_bench, hz):
    params = make_params(phase1_us=100, phase2_us=100, frequency_hz=hz, amplitude_ua=2000)
    period_s = 1 / hz
    _check_fault_stop(virtual_bench, params, Fault("open", 0.05 + 20.3 * period_s), "open",
                      0.05 + 40 * period_s, "open %d Hz" % hz)


def test_clear_fault_is_refused_while_the_last_pulse_drains(virtual_bench):
    vp, client = virtual_bench.vp, virtual_bench.client
    vp.hal.electrodes[0].faults.append(Fault("open", 0.05))
    client.set_params(0, make_params(phase1_us=200, phase2_us=200, frequency_hz=10, amplitude_ua=1000))
    client.start(1)
    # three readings at 0.1, 0.2, 0.3 s: the fault latches in the poll after the 0.3 s reading
    vp.advance(0.3006)
    assert client.status()["channels"][0]["state"] == "fault"
    assert vp.hal.running(0)  # the queued pulse (0.4 s) may still play
    with pytest.raises(DeviceError) as err:
        client.clear_fault(1)
    assert err.value.code == M.E_BAD_STATE
    vp.advance(0.2)
    client.clear_fault(1)


def test_intermittent_contact_trips_only_when_it_persists(virtual_bench):
    vp, client = virtual_bench.vp, virtual_bench.client
    params = make_params(**PARAMS_50HZ)
    # glitches of one or two pulses (30 ms open every 200 ms at 50 Hz): the debounce rides them out
    vp.hal.electrodes[0].faults.append(Fault("intermittent", 0.1, every_s=0.2, on_s=0.03))
    client.set_params(0, params)
    client.start(1)
    vp.advance(1.0)
    st = client.status()["channels"][0]
    assert st["state"] == "running" and st["fault"] == "none"
    client.stop(1)
    vp.advance(0.05)
    assert not [e for e in client.events() if e["kind"] in ("open", "short")]
    # longer drop-outs (90 ms open every 300 ms: 4-5 pulses) do trip
    vp.hal.electrodes[0].faults[:] = [Fault("intermittent", vp.hal.system.now / vp.hal.clock_hz + 0.1,
                                            every_s=0.3, on_s=0.09)]
    client.start(1)
    vp.advance(0.5)
    ev = client.wait_event("open", 0, timeout=1.0)
    assert client.status()["channels"][0]["state"] == "fault"
    report = analyze(vp.hal.trace([0]), expected=_expected(params))
    assert report.ok and report.incomplete["truncated"] == 0
    ev_cycle = round(ev["time_us"] * vp.hal.clock_hz / 1e6) - vp.hal.train_start[0]
    assert runner.pulses_after(report, ev_cycle) <= 1
    client.clear_fault(1)
    # the contact comes back every 300 ms: a start inside a good window passes its check
    t = vp.hal.system.now / vp.hal.clock_hz
    fault = vp.hal.electrodes[0].faults[0]
    phase = (t - fault.at_s) % fault.every_s
    if phase < fault.on_s + 0.005:
        vp.advance(fault.on_s + 0.005 - phase)
    client.start(1)
    assert client.status()["channels"][0]["state"] == "running"
    client.stop(1)


def test_slow_drift_warns_high_then_faults_open_and_recovers(virtual_bench):
    vp, client = virtual_bench.vp, virtual_bench.client
    params = make_params(**PARAMS_50HZ)
    vp.hal.electrodes[0].faults.append(Fault("drift", 0.1, ohms=10_000, ramp_s=1.0))
    client.set_params(0, params)
    client.start(1)
    vp.advance(0.35)  # 1000 + 9000 * 0.25 = 3250 Ω: HIGH, a warning only
    st = client.status()["channels"][0]
    assert st["state"] == "running" and impedance.classify(st["impedance_ohm"]) == M.Z_HIGH
    warn = client.wait_event("impedance_high", 0, timeout=1.0)  # once, when the debounce enters HIGH
    assert impedance.HIGH_OHM < warn["value"] <= impedance.OPEN_OHM
    vp.advance(0.5)
    ev = client.wait_event("open", 0, timeout=1.0)
    # caught just past the threshold: the first reading over 4 kΩ plus N - 1 more pulses of drift
    # (9 kΩ/s at 50 Hz = 180 Ω per pulse)
    assert impedance.OPEN_OHM < ev["value"] <= impedance.OPEN_OHM + N * 180 + 20
    report = analyze(vp.hal.trace([0]), expected=_expected(params))
    ev_cycle = round(ev["time_us"] * vp.hal.clock_hz / 1e6) - vp.hal.train_start[0]
    assert report.ok and runner.pulses_after(report, ev_cycle) <= 1
    REACTIONS.append({"case": "drift 1k->10k over 1 s, 50 Hz", "kind": "open", "ohms": ev["value"],
                      "pulses_after_seen": runner.pulses_after(report, ev_cycle)})
    client.clear_fault(1)
    _refused(client, M.E_IMPEDANCE)
    # the lead settles back (drift back to 1 kΩ): the re-check passes
    vp.hal.electrodes[0].faults.append(Fault("drift", vp.hal.system.now / vp.hal.clock_hz, ohms=1000, ramp_s=0))
    client.start(1)
    assert client.status()["channels"][0]["state"] == "running"
    client.stop(1)


def test_fault_on_one_channel_leaves_the_others_running(virtual_bench):
    vp, client = virtual_bench.vp, virtual_bench.client
    vp.hal.electrodes[1].faults.append(Fault("short", 0.1))
    for ch in (0, 1):
        client.set_params(ch, make_params(**PARAMS_50HZ))
    client.start(0b11)
    vp.advance(0.3)
    ev = client.wait_event("short", 1, timeout=1.0)
    assert ev["channel"] == 1
    chans = client.status()["channels"]
    assert chans[0]["state"] == "running" and chans[1]["state"] == "fault" and chans[1]["fault"] == "short"
    assert vp.hal.running(0) and not vp.hal.running(1)
    client.stop(1)


def test_run_report_lists_faults_and_pulses_after_fault(virtual_bench):
    vp = virtual_bench.vp
    vp.hal.electrodes[0].faults.append(Fault("open", 0.2))
    params = make_params(**dict(PARAMS_50HZ, train_duration_us=1_000_000))
    result = virtual_bench.run(params, duration_s=1.1)
    out = result.to_json()
    assert [(f["channel"], f["kind"]) for f in out["faults"]] == [(0, "open")]
    assert 0.2 < out["faults"][0]["time_s"] < 0.3 and out["faults"][0]["ohms"] > impedance.OPEN_OHM
    assert out["pulses_after_fault"] in (0, 1)
    assert result.report.ok, result.report.summary()  # timing exact; the count is not held to the full train
    virtual_bench.client.clear_fault(1)
    vp.hal.electrodes[0].faults.append(Fault("ok", vp.hal.system.now / vp.hal.clock_hz))
    clean = virtual_bench.run(params, duration_s=0.05)
    assert clean.to_json()["faults"] == [] and clean.to_json()["pulses_after_fault"] is None


def test_zz_print_measured_reactions():
    """Collects the figures docs/SAFETY.md quotes (run with -s to see them)."""
    for r in REACTIONS:
        print("reaction:", r)
