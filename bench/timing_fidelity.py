"""Table 1 — timing fidelity: requested vs realised (firmware engine, via the protocol) vs measured from
the emulated capture, for every preset and a grid of edge cases.

Path of every number: parameter file / keys -> canonical ns -> SET_PARAMS over the pty to a VirtualPico
-> the firmware's controller + pulse engine (realised ticks in the response) -> the firmware's PIO
program executed cycle-exactly by the emulator with the engine's DMA words -> pin trace (one sample per
PIO cycle) -> picostim.capture.analyze. This is ``picostim.runner.run_virtual``, the same steps as
``picostim run`` and the HIL suite. The capture is *emulated*; a board measurement needs ``make hil``.
"""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np

from bench.common import NS_PER_TICK, ROOT, Section, table

PULSEPAL_PARAM_URL = "https://sites.google.com/site/pulsepalwiki/parameter-guide"
PULSEPAL_FW_URL = ("https://github.com/sanworks/PulsePal/blob/master/Firmware/PulsePal_2_0_1/PulsePal_2_0_1.ino")
SEG_LIMIT_TICKS = 1 << 28  # one 28-bit segment count

# name -> (what it probes, parameter-file keys, emulated seconds)
EDGE_CASES: dict[str, tuple[str, dict, float]] = {
    "shortest_phases": ("40 ns phases (5 ticks, the PIO minimum) at the 10 kHz rate limit",
                        dict(phase1_us=0.04, phase2_us=0.04, frequency_hz=10_000, amplitude_ua=1000,
                             train_duration_us=10_000), 0.02),
    "shortest_all": ("40 ns phase, gap, phase and recovery",
                     dict(phase1_us=0.04, interphase_us=0.04, phase2_us=0.04, recovery_us=0.04,
                          frequency_hz=10_000, amplitude_ua=1000, train_duration_us=5_000), 0.01),
    "asymmetric": ("100/400 µs asymmetric pulse, 50 µs gap, 1 ms recovery",
                   dict(phase1_us=100, interphase_us=50, phase2_us=400, recovery_us=1000, frequency_hz=100,
                        amplitude_ua=2000, train_duration_us=200_000), 0.3),
    "off_tick": ("values not on a tick (33.333 µs, 7.77 µs, 333 Hz)",
                 dict(phase1_us=33.333, interphase_us=7.77, phase2_us=33.333, frequency_hz=333, amplitude_ua=500,
                      polarity="anodic-first", train_duration_us=100_000), 0.2),
    "half_tick": ("half-tick values: 1.004 µs = 125.5 ticks (rounds half up), 0.043 µs = 5.375 ticks",
                  dict(phase1_us=1.004, phase2_us=0.043, interphase_us=0.045, frequency_hz=5_000,
                       amplitude_ua=50, train_duration_us=2_000), 0.005),
    "high_rate_bursts": ("10 pulses at 10 kHz, bursts every 6 ms",
                         dict(phase1_us=20, phase2_us=20, frequency_hz=10_000, burst_pulses=10, interburst_us=5_000,
                              amplitude_ua=1000, train_duration_us=60_000), 0.1),
    "long_interval_5s": ("5 s period = 6.25e8 ticks > 2^28 (split segment words)",
                         dict(phase1_us=200, phase2_us=200, frequency_hz=0.2, amplitude_ua=1000,
                              train_duration_us=12_000_000), 16.0),
    "long_interval_60s": ("60 s period = 7.5e9 ticks (idle split into ≤ 2^28-tick words)",
                          dict(phase1_us=200, phase2_us=200, period_s=60, amplitude_ua=1000, train_duration_s=120),
                          125.0),
    "train_delay": ("30 ms train delay, 50 Hz",
                    dict(phase1_us=200, phase2_us=200, frequency_hz=50, amplitude_ua=1000, train_delay_us=30_000,
                         train_duration_us=100_000), 0.2),
}
# the same exactness while the amplitude changes pulse by pulse: bench/ramp_fidelity.py's table
RAMPS_POINTER = ("Soft start, soft stop and live amplitude changes at 20 Hz, 1 kHz and 10 kHz (every edge and every "
                 "pulse's amplitude from captures that also hold the DAC bus): "
                 "[§10](#10-timing-and-amplitude-with-ramps-soft-stop-and-live-changes). Custom sequences (10,000 "
                 "pulses played once, a loop, every onset against the file's absolute onsets and every pulse's "
                 "amplitude): [§11](#11-timing-and-amplitude-of-custom-sequences).")
TINY_CASES = ("shortest_phases", "off_tick", "long_interval_5s")

# measured value name -> (requested ns from canonical params, realised ticks from the response)
FIELDS = ("phase1", "interphase", "phase2", "recovery", "period", "burst_period")


def _requested_ns(params: dict, name: str) -> int | None:
    if name == "burst_period":
        if params["burst_pulses"] <= 0:
            return None
        return params["burst_pulses"] * params["period_ns"] + params["interburst_ns"]
    return params[name + "_ns"]


def _realised_ticks(realised: dict, params: dict, name: str) -> int | None:
    if name == "burst_period":
        if params["burst_pulses"] <= 0:
            return None
        return params["burst_pulses"] * realised["period"] + realised["interburst"]
    return realised[name]


def _cases(scale: str):
    from picostim import paramfile

    presets = sorted((ROOT / "presets").glob("*.toml"))
    if scale == "tiny":
        presets = presets[:1]
    for p in presets:
        params = paramfile.load(p).params
        cycle_s = (params["burst_pulses"] * params["period_ns"] + params["interburst_ns"]
                   if params["burst_pulses"] > 0 else params["period_ns"]) * 1e-9
        # at least 1.5 s, and two whole cycles so that burst trains show a burst period (cheap: idle is skipped)
        yield "preset " + p.stem, "preset file presets/%s" % p.name, params, max(1.5, min(2.2 * cycle_s, 130.0))
    for name, (what, keys, dur) in EDGE_CASES.items():
        if scale == "tiny" and name not in TINY_CASES:
            continue
        yield name, what, paramfile.from_dict(keys).params, dur


def run(scale: str = "full") -> Section:
    from picostim import runner
    from picostim.client import Client
    from picostim.transport import open_port
    from picostim.virtual.device import VirtualPico

    t_start = time.perf_counter()
    rows = []
    case_rows = []
    worst_req = Fraction(0)  # |realised - requested| ticks
    worst_meas = 0  # |measured - realised| ticks
    worst_jitter = 0
    n_pulses_total = 0
    all_ok = True
    long_ok = []
    # a fresh virtual board per case: independent runs (and run_virtual's one-cycle drain after its stop
    # can leave a 1 Hz train still playing its last queued pulse, which would refuse the next SET_PARAMS)
    for name, what, params, dur in _cases(scale):
        with VirtualPico() as vp:
            client = Client(open_port(vp.path))
            client.hello()
            try:
                t0 = time.perf_counter()
                res = runner.run_virtual(vp, client, params, dur)
                wall = time.perf_counter() - t0
                rep = res.report
                all_ok &= rep.ok
                n_pulses_total += rep.n_pulses
                case_rows.append([name, what, rep.n_pulses, "OK" if rep.ok else "FAIL: " + "; ".join(rep.failures),
                                  f"{dur:g} s", f"{wall * 1e3:.1f} ms"])
                for f in FIELDS:
                    req_ns = _requested_ns(params, f)
                    real = _realised_ticks(res.realised, params, f)
                    vals = rep.values.get(f, np.zeros(0))
                    if req_ns is None or real is None or (req_ns == 0 and f in ("interphase", "recovery")):
                        continue
                    if len(vals) == 0:
                        rows.append([name, f, f"{req_ns:,}", _fmt_ticks(Fraction(req_ns, NS_PER_TICK)), f"{real:,}",
                                     "not in capture", "", ""])
                        continue
                    req_t = Fraction(req_ns, NS_PER_TICK)
                    lo, hi = int(vals.min()), int(vals.max())
                    worst_req = max(worst_req, abs(real - req_t))
                    worst_meas = max(worst_meas, abs(lo - real), abs(hi - real))
                    worst_jitter = max(worst_jitter, hi - lo)
                    if real >= SEG_LIMIT_TICKS:
                        long_ok.append(lo == hi == real)
                    meas = f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"
                    err_t = Fraction(hi, 1) - req_t if abs(hi - req_t) >= abs(lo - req_t) else Fraction(lo, 1) - req_t
                    rows.append([name, f, f"{req_ns:,}", _fmt_ticks(req_t), f"{real:,}", f"{meas} (n={len(vals)})",
                                 _fmt_signed(err_t), _fmt_signed(err_t * NS_PER_TICK)])
            finally:
                client.close()

    pp_res_ns = 100_000
    body = [
        "**The capture is emulated**: the firmware's own PIO program (firmware/pio_programs.py, assembled "
        "from firmware/pio/stim.pio) executed cycle-exactly by picostim's PIO emulator with the exact DMA "
        "words the firmware's pulse engine built, sampled once per PIO cycle (125 MS/s). It proves the "
        "engine's arithmetic and the program's overhead compensation to the tick; it says nothing about "
        "crystal tolerance or output-stage edges. A board measurement is `make hil PORT=... ANALYZER=...` "
        "(sigrok analyzer, ±1 sample at its rate).",
        "",
        "Columns: *requested* is the canonical value in ns (parameter-file units converted exactly), also "
        "in ticks (8 ns); *realised* is what the firmware answered over the protocol (SET_PARAMS response, "
        "ticks); *measured* is min–max over every complete pulse in the capture; *error* is measured − "
        "requested (the worst pulse), in ticks and ns. `burst_period` is burst start to next burst start "
        "(burst_pulses × period + interburst).",
        "",
        table(["case", "field", "requested ns", "requested ticks", "realised ticks", "measured ticks",
               "error ticks", "error ns"], rows),
        "",
        "Cases (all trains finite; analyzer check against the *requested* values with ±0.5-tick tolerance):",
        "",
        table(["case", "what it probes", "complete pulses", "analyzer check", "emulated", "wall"], case_rows),
        "",
        "Summary and peers:",
        "",
        table(["", "timing resolution", "worst error vs request", "pulse-to-pulse jitter", "source"], [
            ["picostim (this run, emulated capture)", "8 ns (1 PIO tick)",
             f"{float(worst_req):.3g} ticks = {float(worst_req) * NS_PER_TICK:.3g} ns (rounding to the nearest tick; "
             f"measured − realised: max {worst_meas} ticks)",
             f"{worst_jitter} ticks (max − min of any field over {n_pulses_total} pulses)", "this table"],
            ["physical limit: RP2040 PIO at 125 MHz, clock divider 1", "8 ns", "±4 ns (half a tick)", "0 (same clock)",
             "SPEC §4"],
            ["Sanworks Pulse Pal 2", "100 µs (0.0001 s) resolution, 10 µs (0.00001 s) precision per parameter; "
             "hardware update cycle 50 µs (20 kHz)", "±50 µs (inferred: half the resolution)", "not published; "
             "precision 10 µs", f"[parameter guide]({PULSEPAL_PARAM_URL}); firmware v2.0.1 `CycleDuration = 50` "
             f"([source]({PULSEPAL_FW_URL}))"],
        ]),
        "",
        f"Resolution ratio: Pulse Pal 2's 100 µs / picostim's 8 ns = **{pp_res_ns // NS_PER_TICK:,}×** finer "
        f"(against Pulse Pal's 50 µs hardware cycle: {50_000 // NS_PER_TICK:,}×). Intervals longer than one "
        f"28-bit segment (2^28 ticks = 2.15 s) are split into several words and still land on the tick "
        f"({'all exact' if long_ok and all(long_ok) else 'see rows'}). picostim is not slower or coarser than "
        "Pulse Pal on any timing row; Pulse Pal's advantages are elsewhere (±10 V outputs, custom pulse "
        "lists, 3600 s maximum per parameter where picostim allows 24 h for periods and trains but 10 ms "
        "per phase).",
        "",
        RAMPS_POINTER,
    ]
    return Section("fidelity", "1. Timing fidelity (requested → realised → measured)", "\n".join(body),
                   headline={"all_ok": all_ok, "worst_request_error_ticks": float(worst_req),
                             "worst_measured_vs_realised_ticks": worst_meas, "worst_jitter_ticks": worst_jitter,
                             "pulses": n_pulses_total, "resolution_ratio_vs_pulsepal": pp_res_ns // NS_PER_TICK},
                   elapsed_s=time.perf_counter() - t_start)


def _fmt_ticks(x: Fraction) -> str:
    if x.denominator == 1:
        return f"{x.numerator:,}"
    return f"{float(x):,.3f}"


def _fmt_signed(x: Fraction) -> str:
    if x == 0:
        return "0"
    v = float(x)
    return f"{v:+.3g}"
