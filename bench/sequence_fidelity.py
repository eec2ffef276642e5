"""Table 11 — timing and amplitude exactness of custom pulse sequences (issue 13 item 4): 10,000 pulses
played once with varying intervals and amplitudes, a loop over three cycles, the densest sequence the
limits allow (every interval firmware.limits ``min_sequence_interval_ns``, 2 ms) and the shipped example
file. Every interval is derived from that limit, so the cases follow it.

Path of every number: a parameter file with a ``[sequence]`` table (written here as TOML text, or the
example file) -> picostim.paramfile -> SET_PARAMS, then SET_SEQUENCE in chunks of 20 over the pty to a
VirtualPico -> the firmware's controller, sequence records, stream and DAC op writer -> the stim program
and the DAC bus program executed cycle by cycle by the PIO emulator -> one capture per case (POS/NEG and
SCK/MOSI/CS0/LDAC, one sample per 8 ns tick) -> picostim.capture.analyze.

The expected onsets and amplitudes are computed HERE from the file's text (decimal -> ns nearest, ticks
of each absolute onset nearest, cycle c adding c x ticks(cycle); amplitude: nearest 2.5 µA DAC code, at
least 1), not by the firmware's or the runner's functions (hil_tests/test_sequences.py asserts the same
model). The first onset is measured from the stream's start (hal.train_start + 2 cycles, as in table 10).
"""

from __future__ import annotations

import random
import time
import tomllib
from decimal import Decimal
from fractions import Fraction

import numpy as np

from bench.common import ROOT, Section, table
from firmware.limits import LIMITS

UA_PER_CODE = Fraction(10_240, 4096)  # board.DAC_FULL_SCALE_UA / 4096 = 2.5 µA
NS = {"ns": 1, "us": 1000, "ms": 10 ** 6, "s": 10 ** 9}
UA = {"ua": 1, "ma": 1000}
EXAMPLE = ROOT / "examples" / "paired_pulse_sequence.toml"
BASE = 'phase1_us = 100\nphase2_us = 100\npolarity = "cathodic-first"\nelectrode_area_mm2 = 5\n'
LIM_MS = Decimal(LIMITS["min_sequence_interval_ns"]) / 10 ** 6  # the shortest interval (2 ms)
LIM_US = LIM_MS * 1000


def _rnd(x: Fraction) -> int:
    return int(x + Fraction(1, 2))


def _dec(v) -> Fraction:
    return Fraction(Decimal(str(v))) if not isinstance(v, Decimal) else Fraction(v)


def _file(onsets: list[str], amps: list[str], ounit="ms", aunit="ma", seq_extra="", extra="") -> str:
    return (BASE + extra + "[sequence]\n" + f"onsets_{ounit} = [{', '.join(onsets)}]\n"
            + f"amplitudes_{aunit} = [{', '.join(amps)}]\n" + seq_extra)


def _varying(n: int, seed: int) -> str:
    rng = random.Random(seed)
    # the limit, + 0.4 ns (the same tick), + sub-tick and repeating decimals, up to the limit + 2 ms
    steps = [LIM_MS + Decimal(d) for d in ("0", "0.25", "0.5", "1.008", "0.0000004", "0.3333333", "2")]
    t = Decimal("0.5")
    onsets, amps = [], []
    for _ in range(n):
        onsets.append(str(t))
        amps.append(str(Decimal(rng.randrange(20, 2000)) / 1000 + Decimal(rng.choice(["0", "0.0011", "0.00125"]))))
        t += Decimal(rng.choice(steps))
    return _file(onsets, amps)


def _loop(n: int, seed: int, cycles: int = 3) -> str:
    rng = random.Random(seed)
    onsets, t = [], Decimal("250.004")
    for _ in range(n):
        onsets.append(str(t))
        t += LIM_US + Decimal(rng.choice(["0", "250.5", "700.012", "1999.996"]))
    cycle = t + Decimal("1500.003")
    amps = [str(rng.randrange(1, 4000)) for _ in onsets]
    dur_ns = cycles * _rnd(Fraction(cycle) * 1000)
    return _file(onsets, amps, "us", "ua", f"loop = true\ncycle_us = {cycle}\n", f"train_duration_ns = {dur_ns}\n")


def _dense(n: int) -> str:
    onsets = [str(i * LIM_MS) for i in range(n)]  # every interval min_sequence_interval_ns
    amps = [str(Decimal(100 + (i * 37) % 1900) / 1000) for i in range(n)]
    return _file(onsets, amps)


def _cases(scale: str) -> list[tuple[str, str, str]]:
    big = 10_000 if scale == "full" else 300
    out = [
        (f"{big:,} pulses once", f"intervals {LIM_MS:g}–{LIM_MS + 2:g} ms (decimal, some sub-tick), 0.02–2 mA",
         _varying(big, 13)),
        ("loop, 3 cycles of 60", "µs onsets, µA amplitudes, cycle_us, train_duration = 3 cycles", _loop(60, 4)),
        (f"dense, {1000 if scale == 'full' else 100} pulses", f"every interval {LIM_MS:g} ms (the limit)",
         _dense(1000 if scale == "full" else 100)),
        ("example file", f"examples/{EXAMPLE.name}", EXAMPLE.read_text(encoding="utf-8")),
    ]
    return out


def _expected(text: str) -> tuple[list[int], list[float], list[int]]:
    """(onset ticks in play order, phase-1 µA after DAC rounding, interval ticks) from the TOML text."""
    doc = tomllib.loads(text, parse_float=Decimal)
    seq = doc["sequence"]
    okey = next(k for k in seq if k.startswith("onsets_"))
    akey = next(k for k in seq if k.startswith("amplitudes_"))
    ns = [_rnd(_dec(v) * NS[okey.rsplit("_", 1)[1]]) for v in seq[okey]]
    ticks = [_rnd(Fraction(t, 8)) for t in ns]
    ua = [float(max(1, _rnd(Fraction(_rnd(_dec(a) * UA[akey.rsplit("_", 1)[1]])) / UA_PER_CODE)) * UA_PER_CODE)
          for a in seq[akey]]
    cycles = 1
    if seq.get("loop"):
        ckey = next(k for k in seq if k.startswith("cycle_"))
        cyc_ns = _rnd(_dec(seq[ckey]) * NS[ckey.rsplit("_", 1)[1]])
        chan = doc.get("channel", doc)
        dkey = next(k for k in chan if k.startswith("train_duration_"))
        dur_ns = _rnd(_dec(chan[dkey]) * NS[dkey.rsplit("_", 1)[1]])
        cycles = -(-dur_ns // cyc_ns)
        ct = _rnd(Fraction(cyc_ns, 8))
        ticks = [c * ct + t for c in range(cycles) for t in ticks]
        ua = ua * cycles
    return ticks, ua, list(np.diff(ticks).tolist())


def _play(text: str):
    """One case on a fresh virtual Pico: upload (timed), start, play to the end, capture, analyze."""
    from picostim import paramfile, runner
    from picostim.client import Client
    from picostim.transport import open_port
    from picostim.virtual.device import VirtualPico

    ps = paramfile.loads(text, require=True)
    with VirtualPico() as vp:
        client = Client(open_port(vp.path))
        client.hello()
        try:
            paramfile.check(ps, client.limits)
            hal = vp.hal
            t0 = time.perf_counter()
            client.set_params(0, ps.params)
            client.set_sequence(0, ps.sequence.onsets_ns, ps.sequence.amplitudes_ua, ps.params)
            upload_s = time.perf_counter() - t0
            requests = -(-len(ps.sequence) // 20)
            armed = hal.system.now
            t0 = time.perf_counter()
            client.start(1)
            offset = hal.train_start[0] - armed + 2  # first pin write: 2 cycles after the SM enable
            end_ns = ps.sequence.end_ns(ps.params)
            vp.advance(end_ns / 1e9 + 0.005)
            for _ in range(100):
                if not hal.running(0):
                    break
                vp.advance(0.01)
            play_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = runner.check_trace(hal.trace([0], start=armed), ps.params, 0, None, sequence=ps.sequence)
            analyze_s = time.perf_counter() - t0
            return ps, report, offset, upload_s, requests, play_s, analyze_s, end_ns / 1e9
        finally:
            client.close()


def _when() -> str:
    """UTC date and git commit of this run (the section can be regenerated alone)."""
    import datetime
    import subprocess

    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        rev = "?"
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC at git {rev}"


def run(scale: str = "full") -> Section:
    t_start = time.perf_counter()
    rows = []
    worst_all = 0
    total = 0
    all_ok = True
    amp_ok_all = True
    in_pulse_total = 0
    big_row = None
    for name, what, text in _cases(scale):
        want_ticks, want_ua, intervals = _expected(text)
        ps, rep, offset, upload_s, requests, play_s, analyze_s, emulated_s = _play(text)
        ok = rep.pulses.complete
        starts = rep.pulses.start[ok].astype(np.int64)
        n = len(starts)
        total += n
        m = min(n, len(want_ticks))
        rel = (starts[:m] - starts[0]) - (np.asarray(want_ticks[:m], np.int64) - want_ticks[0])
        worst = int(np.abs(rel).max()) if m else -1
        first_err = int(starts[0] - (offset + want_ticks[0])) if n else None
        worst_all = max(worst_all, worst, abs(first_err or 0))
        amp_match = sum(1 for g, w in zip(rep.amplitude_ua or [], want_ua) if g == w)
        amp_ok = n == len(want_ua) and amp_match == n
        count_ok = n == len(want_ticks)
        amp_ok_all &= amp_ok
        in_pulse = rep.dac.get("changes_in_pulse", -1)
        in_pulse_total += max(in_pulse, 0)
        all_ok &= rep.ok and amp_ok and count_ok and worst == 0 and first_err == 0
        q = rep.sequence
        got = [a for a in (rep.amplitude_ua or []) if a is not None]
        lo, hi = (min(got), max(got)) if got else (float("nan"), float("nan"))
        row = [name, what, f"{n:,}" + ("" if count_ok else f" (**file: {len(want_ticks):,}**)"),
               f"{lo:g}–{hi:g}", f"{min(intervals) * 8 / 1e6:g}–{max(intervals) * 8 / 1e6:g}" if intervals else "-",
               f"{worst}", f"{first_err}", f"{amp_match:,}/{len(want_ua):,}" + ("" if amp_ok else " **differs**"),
               in_pulse, ("OK" if rep.ok else "FAIL: " + "; ".join(rep.failures))
               + (f" ({q['checked']:,} onsets, worst {q['worst_onset_error_samples']})" if q else ""),
               f"{requests} req, {upload_s * 1e3:.0f} ms", f"{emulated_s:.2f} s in {play_s:.2f} s",
               f"{analyze_s * 1e3:.0f} ms"]
        rows.append(row)
        if big_row is None:
            big_row = {"pulses": n, "worst": worst, "first": first_err, "upload_s": upload_s, "play_s": play_s,
                       "emulated_s": emulated_s}
    body = [
        f"Measured {_when()} (the Machine table above may be from an older full run).",
        "",
        "**Emulated capture with the DAC bus** (as table 10): the firmware's controller, sequence records and "
        "stream on the virtual Pico; the stim program and the DAC bus program executed cycle by cycle; one "
        "capture per case at one sample per 8 ns tick, checked by `picostim.capture.analyze` with the file's "
        "onsets and amplitudes (`run`'s check).",
        "",
        "Columns: *intervals* the shortest and longest gap between consecutive onsets the file asks for (ms, "
        "in ticks of the absolute onsets); *worst onset error* the largest |measured − expected| in ticks over "
        "every pulse's onset relative to pulse 0, expected = ticks of each absolute onset computed here from "
        "the file's decimal text (cycle c of a loop adding c × the cycle's ticks); *first onset error* pulse "
        "0's onset against the stream's start (hal.train_start + 2 cycles) + ticks(first onset); *amplitudes "
        "= file* how many pulses' phase-1 current decoded from the DAC bus equals the file's after DAC "
        "rounding; *in pulse* DAC output changes while POS or NEG is high; *upload* SET_PARAMS + SET_SEQUENCE "
        "requests (20 pulses each) over the pty, wall time; *play* emulated time of the whole sequence and "
        "the wall time the virtual Pico took; *analyze* the analyzer's wall time on the capture. Reproduce by "
        "hand with `hil_tests/test_sequences.py`, which asserts the same model.",
        "",
        table(["case", "what", "pulses", "amplitudes µA", "intervals ms", "worst onset error ticks",
               "first onset error ticks", "amplitudes = file", "in pulse", "analyzer", "upload", "play", "analyze"],
              rows),
        "",
        f"Every case: worst onset error **{worst_all} ticks** over {total:,} pulses; amplitudes "
        f"{'equal the file after DAC rounding on every pulse' if amp_ok_all else '**differ** (see rows)'}; "
        f"{in_pulse_total} DAC changes inside a pulse.",
    ]
    return Section("sequences", "11. Timing and amplitude of custom sequences", "\n".join(body),
                   headline={"all_ok": bool(all_ok), "worst_onset_error_ticks": worst_all, "pulses": total,
                             "amplitudes_ok": bool(amp_ok_all), "changes_in_pulse": in_pulse_total,
                             "cases": len(rows), "big": big_row},
                   elapsed_s=time.perf_counter() - t_start)
