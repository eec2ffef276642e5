"""Table 10 — timing and amplitude exactness with amplitude changes: soft start (by pulses, by time, the
ramped preset), soft stop and live amplitude changes at 20 Hz, 1 kHz and 10 kHz (issue 13).

Path of every number: parameter-file keys -> SET_PARAMS / START / SET_AMPLITUDE / STOP over the pty to a
VirtualPico -> the firmware's controller, pulse engine and DAC op lists -> the stim program and the DAC
bus program (dac.pio) executed cycle by cycle by the PIO emulator -> one capture per case (POS/NEG and
SCK/MOSI/CS0/LDAC, one sample per 8 ns tick) -> picostim.capture.analyze (edges, overlaps, dead time,
DAC bus decoded: every pulse's amplitude, DAC changes inside a pulse, charge balance).

The expected amplitudes are computed here from the file's numbers with the contract's model
(docs/ARCHITECTURE.md "DAC bus"; the same model hil_tests/test_ramps_live.py asserts), not by the
firmware's functions; the expected edges are the file's values in ticks: pulse j starts at
first onset + j x period, every phase width exactly as requested.
"""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np

from bench.common import NS_PER_TICK, ROOT, Section, table

TICKS_PER_US = 1000 // NS_PER_TICK
UA_PER_CODE = Fraction(10_240, 4096)  # board.DAC_FULL_SCALE_UA / 4096 = 2.5 µA


# ---- the contract's amplitude model (dac_contract.md), on DAC codes --------------------------------
def _rnd(x: Fraction) -> int:
    return int(x + Fraction(1, 2))


def _code(ua) -> int:
    return max(1, _rnd(Fraction(ua) / UA_PER_CODE))


def _up(code1: int, k: int, j: int) -> int:
    return code1 if j >= k else max(1, _rnd(Fraction(code1 * (j + 1), k)))


def _down(code1: int, k: int, j: int) -> int:
    return max(1, _rnd(Fraction(code1 * (k - j), k + 1)))


# ---- cases -------------------------------------------------------------------------------------------
# name -> (kind, what, file keys, actions, run length in periods). Actions: ("amp", t in periods, µA),
# ("stop", t in periods); times count from the first pulse's onset (x.6 = in the idle after pulse x).
RATES = {20: dict(frequency_hz=20, phase1_us=200),
         1000: dict(frequency_hz=1000, phase1_us=100, phase2_us=300, polarity="anodic-first"),
         10_000: dict(frequency_hz=10_000, phase1_us=20)}


def _cases() -> list[tuple[str, str, str, dict, list, float]]:
    out = []
    k_up = {20: 5, 1000: 20, 10_000: 50}
    t_up = {20: 200, 1000: 12.5, 10_000: 3}  # ms: K = 4, 13, 30 pulses start before it
    k_down = {20: 4, 1000: 10, 10_000: 20}
    for f, base in RATES.items():
        tag = f"{f // 1000} kHz" if f >= 1000 else f"{f} Hz"
        n = {20: 12, 1000: 40, 10_000: 100}[f]
        out.append((f"soft start {k_up[f]} pulses, {tag}", "ramp up (pulses)", f"ramp_up_pulses = {k_up[f]}",
                    dict(base, amplitude_ua=2000, ramp_up_pulses=k_up[f]), [("stop", n + 0.6)], n + 1))
        out.append((f"soft start {t_up[f]:g} ms, {tag}", "ramp up (time)", f"ramp_up_ms = {t_up[f]:g}",
                    dict(base, amplitude_ua=2000, ramp_up_ms=t_up[f]), [("stop", n + 0.6)], n + 1))
        down = dict(ramp_down_ms=2) if f == 10_000 else dict(ramp_down_pulses=k_down[f])
        out.append((f"soft stop {k_down[f]} pulses, {tag}", "soft stop",
                    " ".join(f"{k} = {v}" for k, v in down.items()) + ", STOP after pulse 5",
                    dict(base, amplitude_ua=1501, **down), [("stop", 5.6)], 5 + k_down[f] + 12))
        out.append((f"live changes, {tag}", "live change", "2.5 mA after pulse 3, 0.777 mA inside pulse 9",
                    dict(base, amplitude_ua=1000), [("amp", 3.6, 2500), ("amp", 9 + 5 / (1e6 / f), 777),
                                                    ("stop", 14.6)], 16))
    preset = _preset_keys(PRESET)
    out.append((f"preset {PRESET.stem}", "ramp up (preset)",
                f"presets/{PRESET.name}: ramp_up_ms = {preset['ramp_up_ms']:g}",
                preset, [("stop", 10.6)], 12))
    out.append(("soft start + live change + soft stop, 1 kHz", "all three",
                "ramp_up_pulses = 8, 3 mA after pulse 11, ramp_down_pulses = 6 after pulse 20",
                dict(RATES[1000], amplitude_ua=2000, ramp_up_pulses=8, ramp_down_pulses=6),
                [("amp", 11.6, 3000), ("stop", 20.6)], 40))
    return out


PRESET = ROOT / "presets" / "sacral_pudendal_low.toml"  # the shipped preset with a soft start


def _preset_keys(path) -> dict:
    """The preset's [channel] keys, its amplitude in µA (amplitude_ma x 1000)."""
    import tomllib

    keys = dict(tomllib.loads(path.read_text(encoding="utf-8"))["channel"])
    if "amplitude_ma" in keys:
        keys["amplitude_ua"] = Fraction(str(keys.pop("amplitude_ma"))) * 1000
    return keys


TINY = ("soft start 12.5 ms, 1 kHz", "soft stop 10 pulses, 1 kHz", "live changes, 1 kHz")


def _ticks(us) -> Fraction:
    return Fraction(str(us)) * TICKS_PER_US


def _play(params: dict, actions: list, periods: float, period_us: float):
    """One case on a fresh virtual Pico; returns (report, events, armed-relative action samples, offset,
    SET_AMPLITUDE answers)."""
    from picostim import runner
    from picostim.client import Client
    from picostim.transport import open_port
    from picostim.virtual.device import VirtualPico

    with VirtualPico() as vp:
        client = Client(open_port(vp.path))
        client.hello()
        try:
            hal = vp.hal
            client.set_params(0, params)
            armed = hal.system.now
            client.start(1)
            offset = hal.train_start[0] - armed + 2  # first pin write: 2 cycles after the SM enable

            def to(t_periods: float) -> int:
                target = armed + offset + round(t_periods * period_us * TICKS_PER_US)
                vp.advance((target - hal.system.now) / hal.clock_hz)
                return hal.system.now - armed

            times, answers = [], []
            for act in actions:
                times.append(to(act[1]))
                if act[0] == "amp":
                    answers.append(client.set_amplitude(0, act[2]))
                else:
                    client.stop(1)
            to(periods)
            step = runner.cycle_ns(params) * 1e-9 + 1e-3
            for _ in range(60):
                if not hal.running(0):
                    break
                vp.advance(step)
            events = client.events(timeout=0.2)
            report = runner.check_trace(hal.trace([0], start=armed), params, 0, None)
            return report, events, times, offset, answers, hal.reaction_us
        finally:
            client.close()


def _boundary(rep, t: int) -> int:
    """First pulse starting after the first phase-2 end at or after sample t."""
    ok = rep.pulses.complete
    ends, starts = rep.pulses.phase2_end[ok], rep.pulses.start[ok]
    after = np.flatnonzero(starts > ends[ends >= t].min())
    return int(after[0]) if len(after) else len(starts)  # (no pulse after it: the stream ended there)


def _expected_codes(file: dict, params: dict, actions: list, times: list, rep) -> tuple[list, list]:
    """Phase-1 codes of every pulse from the model, and the change points (pulse indices) it used."""
    n = rep.n_pulses
    period = params["period_ns"]
    code = _code(file["amplitude_ua"])
    if file.get("ramp_up_pulses"):
        k_up = file["ramp_up_pulses"]
    elif file.get("ramp_up_ms"):
        k_up = -(-int(Fraction(str(file["ramp_up_ms"])) * 1_000_000) // period)  # pulses starting before it
    else:
        k_up = 0
    if file.get("ramp_down_pulses"):
        k_down = file["ramp_down_pulses"]
    elif file.get("ramp_down_ms"):
        k_down = -(-int(Fraction(str(file["ramp_down_ms"])) * 1_000_000) // period)
    else:
        k_down = 0
    codes = [_up(code, k_up, j) for j in range(n)]
    points = []
    for act, t in zip(actions, times):
        f = _boundary(rep, t)
        points.append(f)
        if act[0] == "amp":
            code = _code(act[2])
            codes[f:] = [code] * (n - f)
        elif k_down:
            codes[f:] = [_down(code, k_down, j) if j < k_down else 0 for j in range(n - f)]
    return codes, points


def run(scale: str = "full") -> Section:
    t_start = time.perf_counter()
    rows = []
    worst = 0
    all_ok = True
    total = 0
    amp_ok_all = True
    in_pulse_total = 0
    for name, kind, what, file, actions, periods in _cases():
        if scale == "tiny" and name not in TINY:
            continue
        from picostim import paramfile

        params = (paramfile.load(PRESET) if kind == "ramp up (preset)" else
                  paramfile.from_dict(dict(file, electrode_area_mm2=5))).params
        period_us = 1e6 / file["frequency_hz"]
        t0 = time.perf_counter()
        rep, events, times, offset, answers, reaction_us = _play(params, actions, periods, period_us)
        wall = time.perf_counter() - t0
        total += rep.n_pulses
        ok = rep.pulses.complete
        starts = rep.pulses.start[ok]
        # timing: every width and onset against the file's values in ticks
        err = 0
        for key, us in (("phase1", file["phase1_us"]), ("phase2", file.get("phase2_us", file["phase1_us"]))):
            err = max(err, float(np.abs(rep.values[key] - _ticks(us)).max()))
        period_t = _ticks(Fraction(10**6) / Fraction(str(file["frequency_hz"])))
        onsets = offset + period_t * np.arange(len(starts))
        err = max(err, float(max(abs(Fraction(int(s)) - o) for s, o in zip(starts, onsets))))
        worst = max(worst, err)
        # amplitudes: every pulse's phase-1 code from the bus against the model; live changes: the EVENT's
        # from_pulse is where the capture shows the new amplitude
        codes, points = _expected_codes(file, params, actions, times, rep)
        got = [None if a is None else _rnd(Fraction(str(a)) / UA_PER_CODE) for a in rep.amplitude_ua]
        match = sum(1 for g, c in zip(got, codes) if g == c)
        froms = [e["from_pulse"] for e in events if e["kind"] == "amplitude"]
        amp_points = [p for a, p in zip(actions, points) if a[0] == "amp"]
        events_ok = froms == amp_points
        stopped = [p for a, p in zip(actions, points) if a[0] == "stop"]
        tail_ok = True
        if stopped and (file.get("ramp_down_pulses") or file.get("ramp_down_ms")):
            # after the soft stop's K pulses the DAC is off until the firmware stops the stream (its poll
            # sees the ramp's mark reaction_us after a phase-1 reading; one queued pulse may follow)
            zeros = sum(1 for c in codes if c == 0)
            tail_ok = zeros <= -(-reaction_us // period_us) + 2
        amp_ok = match == rep.n_pulses and events_ok and tail_ok
        amp_ok_all &= amp_ok
        in_pulse = rep.dac.get("changes_in_pulse", -1)
        in_pulse_total += max(in_pulse, 0)
        all_ok &= rep.ok and amp_ok and err == 0
        lo, hi = min(c for c in codes if c) * UA_PER_CODE, max(codes) * UA_PER_CODE
        amp_text = (f"{match}/{rep.n_pulses} = model" if match == rep.n_pulses else
                    f"**{match}/{rep.n_pulses} = model**")
        if not events_ok:
            amp_text += f" (**EVENT from_pulse {froms} ≠ capture {amp_points}**)"
        elif amp_points:
            amp_text += f"; from_pulse {', '.join(map(str, froms))} = capture"
        if not tail_ok:
            amp_text += "; **too many 0 µA pulses after the soft stop**"
        rows.append([name, what, rep.n_pulses, f"{float(lo):g}–{float(hi):g}",
                     f"{int(_ticks(file['phase1_us'])):,} / {int(_ticks(file.get('phase2_us', file['phase1_us']))):,}"
                     f" / {int(period_t):,}", f"{err:g}", amp_text, in_pulse,
                     "OK" if rep.ok else "FAIL: " + "; ".join(rep.failures), f"{wall * 1e3:.0f} ms"])

    body = [
        "**Emulated capture with the DAC bus**: the firmware's controller and pulse engine on the virtual "
        "Pico; the stim program and the DAC bus program (firmware/pio/dac.pio, PIO1 SM0) executed cycle by "
        "cycle; one capture per case holds POS/NEG/RECOVERY/SYNC and SCK/MOSI/CS0/LDAC at one sample per "
        "8 ns tick; `picostim.capture.analyze` decodes the MCP4822 commands and checks the capture (edges, "
        "POS/NEG overlap, dead time, charge balance of every pulse after DAC rounding, no DAC output change "
        "while POS or NEG is on).",
        "",
        "Columns: *amplitudes* is the range of phase-1 currents the capture shows; *ticks* the file's "
        "phase 1 / phase 2 / period in 8 ns ticks; *worst timing error* the largest |measured − requested| "
        "in ticks over every pulse's phase-1 and phase-2 width and every onset against first onset + j × "
        "period (the amplitude changes move no edge); *amplitude check* how many pulses' phase-1 DAC code "
        "from the bus equals the contract's model computed from the file (soft start pulse j of K: "
        "round(code × (j+1)/K); soft stop: round(code × (K−j)/(K+1)) from the first pulse after the STOP's "
        "next pulse end, then 0 µA; a live change from the first pulse after the request's next pulse end, "
        "which must also be the `amplitude` EVENT's from_pulse); *in pulse* the DAC output changes while "
        "POS or NEG is high. A time ramp's K counts the pulses that start strictly before it (20 Hz, 200 ms: "
        "4). The 1 kHz cases are asymmetric (phase 2 three times phase 1, its current derived per pulse for charge "
        "balance) and anodic-first. The first row's wall time includes the imports. Reproduce one case by hand "
        "with `hil_tests/test_ramps_live.py`, which asserts the same model.",
        "",
        table(["case", "what", "pulses", "amplitudes µA", "ticks ph1 / ph2 / period", "worst timing error ticks",
               "amplitude check", "in pulse", "analyzer", "wall"], rows),
        "",
        f"Every case: worst timing error **{worst:g} ticks** over {total:,} pulses; amplitude check "
        f"{'passed on every pulse' if amp_ok_all else '**FAILED** (see rows)'}; {in_pulse_total} DAC changes "
        "inside a pulse.",
    ]
    return Section("ramps", "10. Timing and amplitude with ramps, soft stop and live changes", "\n".join(body),
                   headline={"all_ok": bool(all_ok), "worst_timing_error_ticks": worst, "pulses": total,
                             "amplitudes_ok": bool(amp_ok_all), "changes_in_pulse": in_pulse_total,
                             "cases": len(rows)},
                   elapsed_s=time.perf_counter() - t_start)


if __name__ == "__main__":  # quick look: python -m bench.ramp_fidelity
    import sys

    sys.path.insert(0, str(ROOT))
    s = run(sys.argv[1] if len(sys.argv) > 1 else "full")
    print(s.body)
    print(s.headline)
