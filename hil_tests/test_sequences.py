"""Custom pulse sequences checked from the capture (issue 13 items 4 and 6).

A sequence file (``[sequence]``: onsets and amplitudes, played once or looped) is written by the test,
loaded through picostim.paramfile like any user file, uploaded (SET_PARAMS, then SET_SEQUENCE in chunks
of 20), played and captured; every pulse's onset comes from POS/NEG and every amplitude from the DAC bus
decoded from the same capture (SCK/MOSI/CS0/LDAC). On the virtual Pico both come from the emulated PIO
(stim program and DAC bus program, cycle by cycle), one sample per 8 ns tick.

Every expected value is computed HERE from the numbers written into the file, never by calling
pulse_engine or the runner:
  * onset: the decimal text -> ns, nearest (halves up), then ticks of that ABSOLUTE onset, nearest
    (halves up, 8 ns a tick); cycle c of a loop adds c x ticks(cycle);
  * amplitude: the nearest DAC code (2.5 µA a code, halves up, at least 1) x 2.5 µA;
  * time origin: the capture shows no start mark, so onsets are compared relative to the first pulse
    (the analyzer's rule; docs/ARCHITECTURE.md "Custom sequences"); on the virtual Pico the first onset
    itself is also checked against the stream's start (hal.train_start, as in test_ramps_live.py).
"""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from firmware import board
from firmware.limits import LIMITS
from picostim import paramfile, runner
from picostim.client import DeviceError
from protocol import messages as M

UA_PER_CODE = Fraction(board.DAC_FULL_SCALE_UA, 4096)  # 2.5 µA
NS_PER_UNIT = {"ns": 1, "us": 1000, "ms": 10 ** 6, "s": 10 ** 9}
UA_PER_UNIT = {"ua": 1, "ma": 1000}
BASE = 'phase1_us = 100\nphase2_us = 100\npolarity = "cathodic-first"\nelectrode_area_mm2 = 5\n'
LIM_MS = Decimal(LIMITS["min_sequence_interval_ns"]) / 10 ** 6  # the shortest interval a sequence may have (2 ms)
LIM_US = LIM_MS * 1000


def rnd(x: Fraction) -> int:
    """Nearest integer, halves up (x >= 0)."""
    return int(x + Fraction(1, 2))


def ns_of(text: str, unit: str) -> int:
    return rnd(Fraction(Decimal(text)) * NS_PER_UNIT[unit])


def tick_of(ns: int) -> int:
    return rnd(Fraction(ns, 8))


def dac_ua(text: str, unit: str) -> float:
    ua = rnd(Fraction(Decimal(text)) * UA_PER_UNIT[unit])
    return float(max(1, rnd(Fraction(ua) / UA_PER_CODE)) * UA_PER_CODE)


def write_file(tmp_path, onsets: list[str], amps: list[str], ounit="ms", aunit="ma", extra_seq="", extra=""):
    text = (BASE + extra + "[sequence]\n" + "onsets_%s = [%s]\n" % (ounit, ", ".join(onsets))
            + "amplitudes_%s = [%s]\n" % (aunit, ", ".join(amps)) + extra_seq)
    f = tmp_path / "sequence.toml"
    f.write_text(text)
    return f


def needs_bus(bench, rep) -> None:
    if not bench.virtual and not rep.dac.get("checked"):
        pytest.skip("the analyzer capture has no DAC bus lines (SCK/MOSI/CS0): amplitudes not measurable")


def assert_invariants(rep) -> None:
    """The analyzer's safety and DAC checks, each asserted by name (rep.ok covers them all)."""
    assert rep.ok, rep.summary()
    j = rep.to_json()
    assert j["overlaps"]["count"] == 0
    assert rep.dead_time["violations"] == 0
    assert rep.incomplete["truncated"] == 0
    assert rep.dac["changes_in_pulse"] == 0 and rep.dac["unbalanced"] == 0 and rep.dac["malformed"] == 0


def assert_pulses(rep, want_ticks: list[int], want_ua: list[float], widths_us=(100, 100)) -> None:
    """Every pulse of the capture: onset relative to pulse 0 exact to the tick, amplitude exact,
    phase widths exact; the count is the file's."""
    p = rep.pulses
    starts = p.start[p.complete].astype(np.int64)
    assert len(starts) == len(want_ticks), (len(starts), len(want_ticks))
    want = np.asarray(want_ticks, np.int64)
    err = (starts - starts[0]) - (want - want[0])
    assert int(np.abs(err).max()) == 0, "first onset error at pulse %d: %d ticks" % (
        int(np.flatnonzero(err)[0]), int(err[np.flatnonzero(err)[0]]))
    assert rep.amplitude_ua == want_ua
    assert set(rep.values["phase1"].tolist()) == {widths_us[0] * 125}
    assert set(rep.values["phase2"].tolist()) == {widths_us[1] * 125}
    # the analyzer's own sequence check agrees
    assert rep.sequence["checked"] == len(want_ticks) and rep.sequence["onset_mismatches"] == 0
    assert rep.sequence["worst_onset_error_samples"] == 0 and rep.sequence["amplitude_mismatches"] == 0


def first_onset_sample(hal, armed: int) -> int:
    """Capture sample of the stream's time origin + 2 (SEGMENT_ENTRY's set-up before the first pin
    write), as in test_ramps_live.first_onset."""
    return hal.train_start[0] - armed + 2


# ---------------------------------------------------------------------------------------------------
# (a) 10,000 pulses played once, varying intervals (decimal onsets, some with sub-tick digits) and
#     varying amplitudes (mA with decimals, some between DAC codes)


def ten_thousand(seed=13):
    rng = random.Random(seed)
    # ms: the limit, + 0.4 ns (the same tick), + sub-tick and repeating decimals, up to the limit + 2 ms
    steps = [LIM_MS + Decimal(d) for d in ("0", "0.25", "0.5", "1.008", "0.0000004", "0.3333333", "2")]
    t = Decimal("0.5")
    onsets, amps = [], []
    for _ in range(10_000):
        onsets.append(str(t))
        amps.append(str(Decimal(rng.randrange(20, 2000)) / 1000 + Decimal(rng.choice(["0", "0.0011", "0.00125"]))))
        t += rng.choice(steps)
    return onsets, amps


def test_ten_thousand_pulses_once(bench, tmp_path):
    onsets, amps = ten_thousand()
    f = write_file(tmp_path, onsets, amps)
    ps = paramfile.load(f)
    assert ps.sequence is not None and len(ps.sequence) == 10_000
    want_ticks = [tick_of(ns_of(t, "ms")) for t in onsets]
    want_ua = [dac_ua(a, "ma") for a in amps]
    assert len(set(want_ua)) > 500  # the amplitudes vary (793 different DAC codes)
    end_s = float(Fraction(Decimal(onsets[-1])) / 1000) + 0.01
    result = bench.run(ps.params, end_s, sequence=ps.sequence)
    rep = result.report
    needs_bus(bench, rep)
    assert_invariants(rep)
    assert not result.faults
    assert rep.expected["pulses"] == 10_000
    assert_pulses(rep, want_ticks, want_ua)
    if bench.virtual:  # the first onset itself: the stream's start + ticks(onset 0)
        hal = bench.vp.hal
        armed = hal.system.now - result.trace.n_samples
        p = rep.pulses
        assert int(p.start[p.complete][0]) == first_onset_sample(hal, armed) + want_ticks[0]


# ---------------------------------------------------------------------------------------------------
# (b) a loop over exactly 3 cycles (train_duration = 3 cycles), microsecond onsets, µA amplitudes


def test_loop_three_cycles(bench, tmp_path):
    rng = random.Random(4)
    onsets, t = [], Decimal("250.004")  # µs; 250.004 µs = 31.2505 ticks -> 32 (halves up, after 250004 ns)
    for _ in range(60):
        onsets.append(str(t))
        t += LIM_US + Decimal(rng.choice(["0", "250.5", "700.012", "1999.996"]))
    cycle = str(t + Decimal("1500.003"))  # µs, after the last onset
    amps = [str(rng.randrange(1, 4000)) for _ in onsets]  # µA, 1 µA rounds up to 1 code (2.5 µA)
    amps[0] = "1"
    cyc_ns = ns_of(cycle, "us")
    dur_ns = 3 * cyc_ns
    f = write_file(tmp_path, onsets, amps, "us", "ua", "loop = true\ncycle_us = %s\n" % cycle,
                   "train_duration_ns = %d\n" % dur_ns)
    ps = paramfile.load(f)
    assert ps.params["sequence_cycle_ns"] == cyc_ns
    one = [tick_of(ns_of(x, "us")) for x in onsets]
    want_ticks = [c * tick_of(cyc_ns) + x for c in range(3) for x in one]
    want_ua = [dac_ua(a, "ua") for a in amps] * 3
    assert want_ua[0] == 2.5
    result = bench.run(ps.params, dur_ns / 1e9 + 0.01, sequence=ps.sequence)
    rep = result.report
    needs_bus(bench, rep)
    assert_invariants(rep)
    assert rep.expected["pulses"] == 180
    assert_pulses(rep, want_ticks, want_ua)


# ---------------------------------------------------------------------------------------------------
# (c) refusals change nothing: each refused request leaves the upload where it was, and the sequence
#     finally played is exactly the file's


def test_refusals_change_nothing(virtual_bench, tmp_path):
    vb = virtual_bench
    c = vb.client
    rng = random.Random(7)
    step = LIM_MS + 1  # ms: every interval >= the limit + 0.5 ms
    onsets = [str(step * i + Decimal(rng.choice(["0", "0.5", "0.004"]))) for i in range(50)]  # ms
    amps = [str(Decimal(rng.randrange(100, 1500)) / 1000) for _ in onsets]  # mA
    ps = paramfile.load(write_file(tmp_path, onsets, amps))
    seq = ps.sequence
    on, am = seq.onsets_ns, seq.amplitudes_ua
    c.set_params(0, ps.params)

    def chunk(first, k=20, amps_=None):
        return M.encode_set_sequence(0, first, on[first:first + k], (amps_ or am)[first:first + k])

    def refused(body, code, field=None, msg_type=M.SET_SEQUENCE):
        with pytest.raises(DeviceError) as e:
            c.request(msg_type, body)
        assert e.value.code == code, e.value
        if field is not None:
            assert e.value.field == field, e.value

    # START before anything arrived, and after part of it
    with pytest.raises(DeviceError) as e:
        c.start(1)
    assert e.value.code == M.E_SEQUENCE_INCOMPLETE
    assert c.request(M.SET_SEQUENCE, chunk(0), decode=M.decode_sequence_response) == {
        "channel": 0, "received": 20, "complete": 0}
    with pytest.raises(DeviceError) as e:
        c.start(1)
    assert e.value.code == M.E_SEQUENCE_INCOMPLETE
    # out of order (skips 20..39), a repeat of an old chunk, another channel's mode
    refused(chunk(40, 10), M.E_BAD_STATE)
    refused(M.encode_set_sequence(0, 10, on[10:20], am[10:20]), M.E_BAD_STATE)
    # an amplitude above the parameters' amplitude_ua (the largest): refused, nothing stored
    bad = list(am)
    bad[25] = ps.params["amplitude_ua"] + 1
    refused(chunk(20, 20, bad), M.E_OUT_OF_RANGE, "sequence_amplitude_ua")
    # an onset closer than the period to the previous one
    close = list(on)
    close[22] = on[21] + 1000
    refused(M.encode_set_sequence(0, 20, close[20:40], am[20:40]), M.E_OUT_OF_RANGE, "onset_ns")
    # host side: the same rule before anything is sent
    sent = c.tx_frames
    with pytest.raises(paramfile.ParamLimitError):
        c.set_sequence(0, close, am, ps.params)
    assert c.tx_frames == sent
    # the upload continues where it was: pulses 20.. as the file says
    r = c.request(M.SET_SEQUENCE, chunk(20), decode=M.decode_sequence_response)
    assert r == {"channel": 0, "received": 40, "complete": 0}
    # a chunk that would pass sequence_pulses (50)
    refused(M.encode_set_sequence(0, 40, on[40:50] + [on[49] + 10 ** 7], am[40:50] + [am[49]]), M.E_OUT_OF_RANGE,
            "sequence_pulses")
    r = c.request(M.SET_SEQUENCE, chunk(40, 10), decode=M.decode_sequence_response)
    assert r == {"channel": 0, "received": 50, "complete": 1}
    with pytest.raises(DeviceError) as e:  # slots hold parameters only
        c.save(0, 1)
    assert e.value.code == M.E_BAD_STATE
    hal = vb.vp.hal
    armed = hal.system.now
    c.start(1)
    with pytest.raises(DeviceError) as e:  # a sequence's amplitudes are its own
        c.set_amplitude(0, 500)
    assert e.value.code == M.E_BAD_STATE
    end_s = float(Fraction(Decimal(onsets[-1])) / 1000) + 0.01
    vb.vp.advance(end_s)
    for _ in range(20):
        if not hal.running(0):
            break
        vb.vp.advance(0.01)
    assert not hal.running(0)
    trace = hal.trace([0], start=armed)
    rep = runner.check_trace(trace, ps.params, 0, None, sequence=seq)
    assert_invariants(rep)
    want_ticks = [tick_of(ns_of(t, "ms")) for t in onsets]
    assert_pulses(rep, want_ticks, [dac_ua(a, "ma") for a in amps])
    p = rep.pulses
    assert int(p.start[p.complete][0]) == first_onset_sample(hal, armed) + want_ticks[0]
    # SET_PARAMS discards the sequence (even with the same N): START is refused again
    c.set_params(0, ps.params)
    with pytest.raises(DeviceError) as e:
        c.start(1)
    assert e.value.code == M.E_SEQUENCE_INCOMPLETE
