"""Ramps, soft stop and live amplitude changes checked from the capture (issue 13 item 6).

Every amplitude here is read from the DAC bus in the capture (SCK/MOSI/CS0/LDAC decoded by the
analyzer: ``report.amplitude_ua`` = phase 1 of every complete pulse, ``report.dac["amplitude2_ua"]``
phase 2); every edge from POS/NEG. On the virtual Pico both come from the emulated PIO (the stim
program and the DAC bus program, dac.pio, run cycle by cycle), one sample per tick.

The expected amplitudes are computed HERE from the parameter file's numbers with the contract's model
(/work/notes/dac_contract.md, docs/ARCHITECTURE.md "DAC bus"), never by calling pulse_engine:
  * DAC code of a current: nearest multiple of 2.5 µA (10.24 mA / 4096), at least 1;
  * soft start over K pulses: pulse j < K at max(1, round(code1 * (j + 1) / K)), later pulses at code1;
    a time ramp's K = the pulses that start before ramp_up (strictly): ceil(ramp_up / period);
  * soft stop over K pulses after the STOP's next pulse end: max(1, round(code1 * (K - j) / (K + 1))),
    then the DAC outputs are shut down (0 µA) until the stream ends;
  * phase 2 of every pulse: max(1, round(c1 * phase1 / phase2)) (charge balance);
  * a live change applies from the first pulse that starts after the first phase-2 end following the
    request (the amplitude EVENT's from_pulse).
Rounding is half up (all values positive), as dac_contract.md's ``round`` on codes.

Documented STOP behaviour tested in (c): docs/SAFETY.md ("Faults, the deadman, a gate closing, a second
STOP and a STOP while a ramp or change is still playing never ramp down: the channel stops at its next
pulse boundary as before") and docs/PROTOCOL.md (STOP row: "a second STOP, or one while a ramp or change
still plays, stops at once"). firmware/controller.py: _may_ramp_down() is False while a ramp is still
being queued or stopping already, and _stop() plays no soft stop while hal.dac_busy().
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from firmware import board
from picostim import paramfile, runner
from picostim.client import DeviceError

UA_PER_CODE = Fraction(board.DAC_FULL_SCALE_UA, 4096)  # 2.5 µA
TICKS_PER_US = 125  # PIO clock 125 MHz: one tick = 8 ns


def make_params(**keys):
    return paramfile.from_dict(dict(electrode_area_mm2=5, **keys)).params


def rnd(x: Fraction) -> int:
    """Nearest integer, halves up (x >= 0)."""
    return int(x + Fraction(1, 2))


def code_of(ua) -> int:
    return max(1, rnd(Fraction(ua) / UA_PER_CODE))


def ua(code: int) -> float:
    return float(code * UA_PER_CODE)


def ticks(us) -> int:
    t = Fraction(str(us)) * TICKS_PER_US
    assert t.denominator == 1, "choose the test's widths on whole ticks"
    return int(t)


def up_code(code1: int, k: int, j: int) -> int:
    return code1 if j >= k else max(1, rnd(Fraction(code1 * (j + 1), k)))


def down_code(code1: int, k: int, j: int) -> int:
    return max(1, rnd(Fraction(code1 * (k - j), k + 1)))


def phase2_code(c1: int, phase1_us, phase2_us) -> int:
    return max(1, rnd(Fraction(c1) * Fraction(str(phase1_us)) / Fraction(str(phase2_us))))


def needs_bus(bench, rep) -> None:
    """A board capture checks amplitudes only with the DAC bus wired to the analyzer (SCK, MOSI, CS0;
    docs/HARDWARE.md); the virtual Pico's capture always has it."""
    if not bench.virtual and not rep.dac.get("checked"):
        pytest.skip("the analyzer capture has no DAC bus lines (SCK/MOSI/CS0): amplitudes not measurable")


def assert_invariants(rep) -> None:
    """(e) the analyzer's safety and DAC checks on this capture: no POS/NEG overlap, the dead time
    between drive states, no pulse cut short, every pulse charge-balanced after DAC rounding, no DAC
    output change inside a pulse, well-formed SPI frames. (rep.ok covers them all; each is also
    asserted by name so a weakened analyzer cannot pass silently.)"""
    assert rep.ok, rep.summary()
    assert rep.dac.get("checked"), rep.dac  # the capture holds the DAC bus
    j = rep.to_json()
    assert j["overlaps"]["count"] == 0
    dt = rep.dead_time
    assert dt["violations"] == 0 and dt["transitions"] > 0
    assert dt["min_idle_us"] >= dt["required_us"] - 1e-9
    assert rep.incomplete["truncated"] == 0
    assert rep.dac["changes_in_pulse"] == 0
    assert rep.dac["unbalanced"] == 0
    assert rep.dac["malformed"] == 0
    assert rep.dac["unknown_pulses"] == 0


def assert_timing(rep, file: dict, offset: int | None) -> None:
    """Every pulse's phase widths are the file's to the tick and (virtual: ``offset`` = the first
    onset in capture samples) pulse j starts exactly at offset + j * period: the amplitude changes
    move no edge."""
    p = rep.pulses
    starts = p.start[p.complete]
    assert set(rep.values["phase1"].tolist()) == {ticks(file["phase1_us"])}
    assert set(rep.values["phase2"].tolist()) == {ticks(file.get("phase2_us", file["phase1_us"]))}
    period = ticks(Fraction(10**6) / Fraction(str(file["frequency_hz"])))
    if len(starts) > 1:
        assert set(np.diff(starts).tolist()) == {period}
    if offset is not None:
        assert starts.tolist() == [offset + j * period for j in range(len(starts))]


def first_onset(hal, armed: int) -> int:
    """Capture sample of the first phase-1 edge: the SMs are enabled at train_start (after the start's
    DAC writes), the program's first pin write comes 2 cycles later (SEGMENT_ENTRY's set-up)."""
    return hal.train_start[0] - armed + 2


def boundary_pulse(rep, t: int) -> int:
    """Index of the first pulse that starts after the first phase-2 end at or after sample ``t``:
    where a DAC change requested at ``t`` (wait op on the phase-2 pin) must first show."""
    p = rep.pulses
    ends = p.phase2_end[p.complete]
    starts = p.start[p.complete]
    end = ends[ends >= t].min()
    return int(np.flatnonzero(starts > end)[0])


def settle(vb, params, max_cycles=60) -> None:
    """Emulate until the channel's stream has ended (bounded)."""
    step = runner.cycle_ns(params) * 1e-9 + 1e-3
    for _ in range(max_cycles):
        if not vb.vp.hal.running(0):
            return
        vb.vp.advance(step)
    raise AssertionError("channel 0 still running")


def start(vb, params) -> int:
    """SET_PARAMS + START on channel 0; returns the capture's first sample (armed before START, as a
    logic analyzer: it holds the DAC writes START makes first)."""
    vb.client.set_params(0, params)
    armed = vb.vp.hal.system.now
    vb.client.start(1)
    return armed


def advance_to(vb, armed: int, t_us: float) -> int:
    """Emulate until ``t_us`` after the first pulse's onset; returns that capture sample."""
    hal = vb.vp.hal
    target = armed + first_onset(hal, armed) + round(t_us * TICKS_PER_US)
    vb.vp.advance((target - hal.system.now) / hal.clock_hz)
    assert hal.system.now == target
    return target - armed


def capture(vb, params, armed: int):
    trace = vb.vp.hal.trace([0], start=armed)
    return runner.check_trace(trace, params, 0, None)


def stop_and_check(vb, params, file, armed: int, max_cycles=60):
    """STOP channel 0 and emulate until its stream has ended; returns (the EVENTs received, the
    capture's report), the invariants and the file's timing already checked on it."""
    vb.client.stop(1)
    settle(vb, params, max_cycles)
    events = vb.client.events(timeout=0.2)
    rep = capture(vb, params, armed)
    assert_invariants(rep)
    assert_timing(rep, file, first_onset(vb.vp.hal, armed))
    return events, rep


# ---------------------------------------------------------------------------------------------------
# (a) soft start by pulses and by time, at 20 Hz, 1 kHz and 10 kHz
RAMP_UP = {
    # name: (file keys, K computed from the file: pulses, or ceil(ramp_up / period) pulses start before it)
    "20Hz_pulses": (dict(frequency_hz=20, phase1_us=200, amplitude_ua=2000, ramp_up_pulses=5,
                         train_duration_ms=450), 5),
    # 200 ms at 50 ms: pulses at 0, 50, 100, 150 ms start before it (200 ms does not: strictly before)
    "20Hz_time": (dict(frequency_hz=20, phase1_us=200, amplitude_ua=2000, ramp_up_ms=200, train_duration_ms=450), 4),
    # asymmetric, anodic-first: phase 2 three times longer, its code derived per ramp pulse
    "1kHz_pulses": (dict(frequency_hz=1000, phase1_us=100, phase2_us=300, polarity="anodic-first", amplitude_ua=1501,
                         ramp_up_pulses=20, train_duration_ms=30), 20),
    "1kHz_time": (dict(frequency_hz=1000, phase1_us=100, phase2_us=300, polarity="anodic-first", amplitude_ua=1501,
                       ramp_up_ms=12.5, train_duration_ms=30), 13),
    "10kHz_pulses": (dict(frequency_hz=10_000, phase1_us=20, amplitude_ua=1000, ramp_up_pulses=50,
                          train_duration_ms=8), 50),
    "10kHz_time": (dict(frequency_hz=10_000, phase1_us=20, amplitude_ua=1000, ramp_up_ms=3, train_duration_ms=8), 30),
}


@pytest.mark.parametrize("case", list(RAMP_UP))
def test_soft_start_amplitudes_and_timing(bench, case):
    file, k = RAMP_UP[case]
    params = make_params(**file)
    result = bench.run(params, duration_s=file["train_duration_ms"] / 1000 + 0.6 / file["frequency_hz"] + 0.002)
    rep = result.report
    needs_bus(bench, rep)
    assert_invariants(rep)
    assert not result.faults
    n = rep.n_pulses
    assert n == rep.expected["pulses"] == rnd(Fraction(str(file["train_duration_ms"])) * file["frequency_hz"] / 1000)
    code1 = code_of(file["amplitude_ua"])
    c1 = [up_code(code1, k, j) for j in range(n)]
    assert rep.amplitude_ua == [ua(c) for c in c1]
    p2 = file.get("phase2_us", file["phase1_us"])
    assert rep.dac["amplitude2_ua"] == [ua(phase2_code(c, file["phase1_us"], p2)) for c in c1]
    assert rep.amplitude_ua[0] < rep.amplitude_ua[k - 1] == ua(code1)  # a real ramp, full at pulse K-1
    assert result.to_json()["amplitude_ua"] == rep.amplitude_ua
    if bench.virtual:  # one sample per tick: widths and onsets exact (a board: the analyzer's tolerance)
        hal = bench.vp.hal
        assert_timing(rep, file, first_onset(hal, hal.start_called[0]))


def test_ramped_preset(bench):
    """The shipped preset with a soft start (sacral_pudendal_low: ramp_up over 500 ms / 5 pulses)."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "presets" / "sacral_pudendal_low.toml"
    ps = paramfile.load(path)
    p = ps.params
    assert p["ramp_up_ns"] or p["ramp_up_pulses"], "the preset no longer ramps"
    k = p["ramp_up_pulses"] or -(-p["ramp_up_ns"] // p["period_ns"])
    result = bench.run(p, duration_s=(k + 3) * p["period_ns"] / 1e9)
    rep = result.report
    needs_bus(bench, rep)
    assert_invariants(rep)
    code1 = code_of(p["amplitude_ua"])
    assert rep.n_pulses >= k + 2
    assert rep.amplitude_ua[:k + 2] == [ua(up_code(code1, k, j)) for j in range(k + 2)]


# ---------------------------------------------------------------------------------------------------
# (b) soft stop after STOP
SOFT_STOP = {
    "20Hz": (dict(frequency_hz=20, phase1_us=200, amplitude_ua=2000, ramp_down_pulses=4), 4),
    "1kHz": (dict(frequency_hz=1000, phase1_us=100, phase2_us=300, polarity="anodic-first", amplitude_ua=1501,
                  ramp_down_pulses=10), 10),
    # a time ramp: the pulses starting within 2 ms of the stop's boundary at 10 kHz
    "10kHz": (dict(frequency_hz=10_000, phase1_us=20, amplitude_ua=1000, ramp_down_ms=2), 20),
}


@pytest.mark.parametrize("where", ["idle", "phase1"])
@pytest.mark.parametrize("case", list(SOFT_STOP))
def test_soft_stop_k_decreasing_pulses_then_dac_off(virtual_bench, case, where):
    vb = virtual_bench
    file, k = SOFT_STOP[case]
    params = make_params(**file)
    period_us = 1e6 / file["frequency_hz"]
    armed = start(vb, params)
    # STOP in the idle after pulse 5 (pulse 6 still plays at full: its end is the boundary), or 10 µs
    # into pulse 6's phase 1 (its end is the boundary)
    t_stop = advance_to(vb, armed, 5.6 * period_us if where == "idle" else 6 * period_us + 10)
    events, rep = stop_and_check(vb, params, file, armed, max_cycles=k + 20)
    amps = rep.amplitude_ua
    code1 = code_of(file["amplitude_ua"])
    f = boundary_pulse(rep, t_stop)
    assert f == 7  # the pulse after the stop's next pulse end
    assert amps[:f] == [ua(code1)] * f
    assert amps[f:f + k] == [ua(down_code(code1, k, j)) for j in range(k)]
    assert all(a > b for a, b in zip(amps[f:f + k], amps[f + 1:f + k]))  # strictly decreasing
    tail = amps[f + k:]
    assert all(a == 0.0 for a in tail)  # DAC off: the pulses before the stream ends carry no current
    # the firmware stops the stream when its poll sees the ramp's mark (the virtual Pico polls reaction_us
    # after each phase-1 reading) and at most one queued pulse follows
    assert len(tail) <= -(-vb.vp.hal.reaction_us // period_us) + 2
    p2 = file.get("phase2_us", file["phase1_us"])
    assert rep.dac["amplitude2_ua"][f:f + k] == [ua(phase2_code(down_code(code1, k, j), file["phase1_us"], p2))
                                                 for j in range(k)]
    done = [e for e in events if e["kind"] == "train_done"]
    assert len(done) == 1 and done[0]["value"] == rep.n_pulses


# ---------------------------------------------------------------------------------------------------
# (c) STOP during a soft start; a second STOP during a soft stop
STOP_IN_RAMP = {
    # the ramp fully queued on the DAC bus (hal.dac_busy() while it plays)
    "1kHz_queued": (dict(frequency_hz=1000, phase1_us=100, amplitude_ua=2000, ramp_up_pulses=12, ramp_down_pulses=4),
                    5),
    # 40 pulses at 20 Hz = 2 s: the controller is still writing the ramp in 1 s chunks at the STOP
    "20Hz_chunked": (dict(frequency_hz=20, phase1_us=200, amplitude_ua=2000, ramp_up_pulses=40, ramp_down_pulses=4),
                     10),
    "10kHz_queued": (dict(frequency_hz=10_000, phase1_us=20, amplitude_ua=1000, ramp_up_pulses=30,
                          ramp_down_pulses=5), 12),
}


@pytest.mark.parametrize("case", list(STOP_IN_RAMP))
def test_stop_during_soft_start_stops_at_the_next_boundary(virtual_bench, case):
    """Documented (SAFETY.md, PROTOCOL.md): a STOP while the soft start still plays does not ramp
    down (neither from the ramp's current level nor from full): the stream ends at its next pulse
    boundary; the pulses that still play keep the soft start's own amplitudes."""
    vb = virtual_bench
    file, n_stop = STOP_IN_RAMP[case]
    params = make_params(**file)
    k = file["ramp_up_pulses"]
    period_us = 1e6 / file["frequency_hz"]
    armed = start(vb, params)
    t_stop = advance_to(vb, armed, (n_stop - 1 + 0.6) * period_us)  # in the idle after pulse n_stop - 1
    assert vb.vp.hal.dac_busy()  # the ramp still plays
    events, rep = stop_and_check(vb, params, file, armed, max_cycles=6)
    n = rep.n_pulses
    after = int((rep.pulses.start[rep.pulses.complete] > t_stop).sum())
    assert n == n_stop + after and after <= 1  # at most the one queued pulse (SPEC §5), no soft stop
    code1 = code_of(file["amplitude_ua"])
    assert rep.amplitude_ua == [ua(up_code(code1, k, j)) for j in range(n)]  # never a ramp-down code
    done = [e for e in events if e["kind"] == "train_done"]
    assert len(done) == 1 and done[0]["value"] == n


@pytest.mark.parametrize("freq", [20, 1000, 10_000])
def test_second_stop_during_soft_stop_stops_at_once(virtual_bench, freq):
    vb = virtual_bench
    file = dict(frequency_hz=freq, phase1_us=20 if freq == 10_000 else 100, amplitude_ua=2000, ramp_down_pulses=8)
    params = make_params(**file)
    period_us = 1e6 / freq
    armed = start(vb, params)
    t1 = advance_to(vb, armed, 4.6 * period_us)
    vb.client.stop(1)
    t2 = advance_to(vb, armed, 7.6 * period_us)  # pulse 5 at full, soft-stop pulses 6 and 7 played
    vb.client.stop(1)
    settle(vb, params, max_cycles=6)
    rep = capture(vb, params, armed)
    assert_invariants(rep)
    assert_timing(rep, file, first_onset(vb.vp.hal, armed))
    code1 = code_of(2000)
    f = boundary_pulse(rep, t1)
    assert f == 6
    after = int((rep.pulses.start[rep.pulses.complete] > t2).sum())
    assert after <= 1
    n = rep.n_pulses
    assert n == 8 + after < f + 8  # cut short: fewer than the 8 soft-stop pulses
    assert rep.amplitude_ua == [ua(code1)] * f + [ua(down_code(code1, 8, j)) for j in range(n - f)]


# ---------------------------------------------------------------------------------------------------
# (d) live amplitude changes
LIVE = {
    "20Hz": dict(frequency_hz=20, phase1_us=200, amplitude_ua=1000),
    "1kHz": dict(frequency_hz=1000, phase1_us=100, phase2_us=300, polarity="anodic-first", amplitude_ua=1501),
    "10kHz": dict(frequency_hz=10_000, phase1_us=20, amplitude_ua=1000),
}


@pytest.mark.parametrize("case", list(LIVE))
def test_live_changes_apply_from_the_events_pulse(virtual_bench, case):
    """Two changes (up, then down; the first requested in the idle, the second inside a pulse): each
    EVENT's from_pulse is the first pulse with the new amplitude in the capture, the pulses before keep
    the old one, the change lands after the request's next pulse end, never inside a pulse."""
    vb = virtual_bench
    file = LIVE[case]
    params = make_params(**file)
    period_us = 1e6 / file["frequency_hz"]
    armed = start(vb, params)
    changes = [(3.6 * period_us, 2500), (9 * period_us + 5, 777)]  # idle after pulse 3; 5 µs into pulse 9
    # -> the first from pulse 5 (pulse 4 still plays the old amplitude: its end is the boundary), the
    # second from pulse 10
    t_req, resp = [], []
    for t_us, amp in changes:
        t_req.append(advance_to(vb, armed, t_us))
        resp.append(vb.client.set_amplitude(0, amp))
    advance_to(vb, armed, 14.6 * period_us)
    events, rep = stop_and_check(vb, params, file, armed)
    amp_ev = [e for e in events if e["kind"] == "amplitude"]
    assert [e["amplitude_ua"] for e in amp_ev] == [r["amplitude_ua"] for r in resp]
    p2 = file.get("phase2_us", file["phase1_us"])
    codes = [code_of(file["amplitude_ua"])] + [code_of(a) for _t, a in changes]
    for r, c in zip(resp, codes[1:]):  # the answer: realised amplitudes after DAC rounding
        assert r["amplitude_ua"] == rnd(c * UA_PER_CODE)
        assert r["amplitude2_ua"] == rnd(phase2_code(c, file["phase1_us"], p2) * UA_PER_CODE)
    froms = [e["from_pulse"] for e in amp_ev]
    assert froms == [boundary_pulse(rep, t) for t in t_req] == [5, 10]
    bounds = [0] + froms + [rep.n_pulses]
    want = []
    for i, c in enumerate(codes):
        want += [ua(c)] * (bounds[i + 1] - bounds[i])
    assert rep.amplitude_ua == want
    assert rep.dac["amplitude2_ua"] == [ua(phase2_code(code_of(a), file["phase1_us"], p2)) for a in want]
    assert vb.client.get_params(0)["params"]["amplitude_ua"] == 777


def test_refused_change_changes_nothing(virtual_bench):
    """10 kHz with 20 + 55 + 20 µs pulses: the 5 µs idle after a pulse is shorter than the DAC update
    time (min_update_idle_ns, 8 µs): the change is refused and the capture shows no DAC write after
    START's."""
    vb = virtual_bench
    file = dict(frequency_hz=10_000, phase1_us=20, interphase_us=55, phase2_us=20, amplitude_ua=1000)
    params = make_params(**file)
    armed = start(vb, params)
    advance_to(vb, armed, 3.5 * 100)
    with pytest.raises(DeviceError) as err:
        vb.client.set_amplitude(0, 2000)
    assert err.value.nack["field"] == "period_ns"
    advance_to(vb, armed, 10.5 * 100)
    events, rep = stop_and_check(vb, params, file, armed)
    assert not [e for e in events if e["kind"] == "amplitude"]
    assert rep.amplitude_ua == [ua(code_of(1000))] * rep.n_pulses
    assert rep.dac["commands"] == 2  # START's A and B, nothing else
    assert vb.client.get_params(0)["params"]["amplitude_ua"] == 1000


def test_live_change_through_the_api():
    """The same through picostim.open(virtual=True) (stepped time) and Stimulator.set_amplitude."""
    import picostim

    file = dict(frequency_hz=1000, phase1_us=100, amplitude_ua=1000)
    with picostim.open(virtual=True, realtime=False) as stim:
        vp = stim.virtual
        stim.upload(paramfile.from_dict(dict(electrode_area_mm2=5, **file)))
        armed = vp.hal.system.now
        stim.start(0)
        vp.advance(0.0056)
        t_req = vp.hal.system.now - armed
        got = stim.set_amplitude(0, "2mA")
        assert (got.amplitude_ua, got.dac_a, got.dac_b) == (2000, 800, 800)
        vp.advance(0.006)
        stim.stop(0)
        vp.advance(0.005)
        ev = stim.wait_event("amplitude", 0, timeout=1)
        trace = vp.hal.trace([0], start=armed)
    rep = runner.check_trace(trace, make_params(**file), 0, None)
    assert_invariants(rep)
    assert ev is not None and ev.from_pulse == boundary_pulse(rep, t_req) == 7  # 5.6 ms: pulse 6 still old
    f = ev.from_pulse
    assert rep.amplitude_ua == [1000.0] * f + [2000.0] * (rep.n_pulses - f)



def _stop_while_change_plays(vb):
    file = dict(frequency_hz=20, phase1_us=200, amplitude_ua=1000, ramp_down_pulses=4)
    params = make_params(**file)
    armed = start(vb, params)
    t = advance_to(vb, armed, 3.6 * 50_000)  # the idle after pulse 3: pulse 4 is queued
    vb.client.set_amplitude(0, 2000)
    assert vb.vp.hal.dac_busy()
    events, rep = stop_and_check(vb, params, file, armed, max_cycles=6)
    return t, events, rep


def test_stop_while_a_live_change_plays_stops_at_once(virtual_bench):
    """Documented (README ramp section, SAFETY.md, PROTOCOL.md): a STOP while a live change is still queued
    does not ramp down: the stream ends at its next pulse boundary. The change waits for the end of the
    queued pulse 4, after which no pulse plays: every pulse keeps the old amplitude."""
    vb = virtual_bench
    t, events, rep = _stop_while_change_plays(vb)  # invariants and timing checked there
    n = rep.n_pulses
    after = int((rep.pulses.start[rep.pulses.complete] > t).sum())
    assert n == 4 + after and after <= 1  # no soft stop: at most the queued pulse
    assert rep.amplitude_ua == [ua(code_of(1000))] * n
    done = [e for e in events if e["kind"] == "train_done"]
    assert len(done) == 1 and done[0]["value"] == n


def test_a_change_that_never_reaches_a_pulse_is_not_reported(virtual_bench):
    """The amplitude EVENT's from_pulse names a pulse that has the new amplitude (PROTOCOL.md); a change
    that no pulse played is not reported and leaves the parameters (controller._stop: 'a change already
    queued is reported if it reaches a pulse')."""
    vb = virtual_bench
    _t, events, rep = _stop_while_change_plays(vb)
    for ev in (e for e in events if e["kind"] == "amplitude"):
        assert ev["from_pulse"] < rep.n_pulses, ev
        assert rep.amplitude_ua[ev["from_pulse"]] == ua(code_of(ev["amplitude_ua"]))
    if not [e for e in events if e["kind"] == "amplitude"]:
        assert vb.client.get_params(0)["params"]["amplitude_ua"] == 1000
