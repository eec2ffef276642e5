"""`make bench`: run every benchmark table side by side in one process and write BENCHMARKS.md.

    .venv/bin/python bench/run_all.py                 # all tables, full size -> BENCHMARKS.md
    .venv/bin/python bench/run_all.py --only analyzer # one table (keys: fidelity trigger analyzer
                                                      # emulation protocol fuzz ramps sequences)
    .venv/bin/python bench/run_all.py --tiny --out /tmp/b.md   # seconds; what tests/test_bench_smoke.py runs

Budget: < 10 min on 2 cores (typically ~1 min). Numbers are medians with spread over interleaved
repetitions and ratios measured in the same run; see bench/common.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import (analyzer_throughput, emulation_speed, link_fuzz, protocol_bench, ramp_fidelity,  # noqa: E402
                   sequence_fidelity, timing_fidelity, trigger_latency)
from bench.common import Section, machine_facts, table  # noqa: E402

MODULES = {
    "fidelity": timing_fidelity,
    "trigger": trigger_latency,
    "analyzer": analyzer_throughput,
    "emulation": emulation_speed,
    "protocol": protocol_bench,
    "fuzz": link_fuzz,
    "ramps": ramp_fidelity,
    "sequences": sequence_fidelity,
}
BUDGET_S = 600


def headline_lines(sections: dict[str, Section]) -> list[str]:
    out = []
    s = sections.get("fidelity")
    if s:
        h = s.headline
        out.append(f"- **Timing fidelity** (emulated capture): {h['pulses']:,} pulses over every preset and edge case, "
                   f"worst error vs request {h['worst_request_error_ticks']:g} tick "
                   f"({h['worst_request_error_ticks'] * 8:g} ns, rounding), measured = realised on every pulse "
                   f"(max difference {h['worst_measured_vs_realised_ticks']} ticks, jitter "
                   f"{h['worst_jitter_ticks']} ticks); resolution **{h['resolution_ratio_vs_pulsepal']:,}×** finer "
                   "than Pulse Pal 2's 100 µs.")
    s = sections.get("trigger")
    if s:
        h = s.headline
        lc = h["latency_cycles"]
        worst = max(v[2] for v in lc.values())
        out.append(f"- **Trigger latency**: {worst} PIO cycles emulated ({worst * 8} ns), ≈ {h['hardware_worst_ns']} ns "
                   f"on hardware with the 2-cycle input synchroniser, no jitter; **{h['ratio_vs_pulsepal_cycle']:,.0f}×** "
                   "shorter than Pulse Pal 2's 50 µs trigger-polling cycle.")
    s = sections.get("analyzer")
    if s and s.headline:
        parts = []
        big = max(n for _t, n in s.headline)
        for (train, n), v in s.headline.items():
            if n >= min(big, 10_000_000):
                parts.append(f"{train} {n / 1e6:g} M: {v['file_vs_sigrok']:.2g}× from file, "
                             f"{v['mem_vs_sigrok']:.3g}× in memory")
        out.append("- **Analyzer vs sigrok-cli `timing`** (speed-up, same .sr file): " + "; ".join(parts) + ".")
    s = sections.get("emulation")
    if s:
        h = s.headline
        accel = [v for k, v in h.items() if isinstance(v, dict)]
        out.append(f"- **Emulation**: accelerated PioSystem vs plain pioemu on the firmware's program and words: "
                   f"{accel[0]['accel_vs_pioemu']:,.0f}× (10 kHz train), {accel[-1]['accel_vs_pioemu']:.3g}× on "
                   f"the synthetic 5-tick worst case; cycle-by-cycle mode {accel[0]['step_vs_pioemu']:.3g}×. "
                   f"VirtualPico, 50 Hz train: {h['1ch_emulated_s_per_wall_s']:,.0f} / "
                   f"{h['2ch_emulated_s_per_wall_s']:,.0f} / {h['4ch_emulated_s_per_wall_s']:,.0f} emulated s per "
                   "wall s for 1 / 2 / 4 channels.")
    s = sections.get("protocol")
    if s:
        h = s.headline
        mp = (f", {h['crc_table_mpy_vs_crcmod']:.0f}× under MicroPython" if "crc_table_mpy_vs_crcmod" in h else "")
        if "crc_viper_mpy_vs_crcmod" in h:
            mp += f" (the firmware's viper CRC: {h['crc_viper_mpy_vs_crcmod']:.1f}×)"
        out.append(f"- **Protocol**: STATUS round trip over the pty p50 {h['status_p50_ms']:.3f} ms / p99 "
                   f"{h['status_p99_ms']:.3f} ms ({h['status_rt_per_s']:,.0f} round trips/s); frames "
                   f"{h['encode_frames_per_s']:,.0f} encoded/s, {h['decode_frames_per_s']:,.0f} decoded/s; table CRC "
                   f"{h['crc_table_cpython_vs_crcmod']:.0f}× slower than crcmod on CPython{mp}.")
    s = sections.get("fuzz")
    if s:
        h = s.headline
        out.append("- **Fuzzing the link**: " + ", ".join(
            f"{side} side {v['frames']:,} frames, {v['crashes']} crashes" for side, v in h.items()) + ".")
    s = sections.get("ramps")
    if s:
        h = s.headline
        out.append("- **Ramps, soft stop, live amplitude changes** (emulated capture with the DAC bus, "
                   f"20 Hz–10 kHz): "
                   f"{h['pulses']:,} pulses in {h['cases']} runs, worst timing error {h['worst_timing_error_ticks']:g} "
                   f"ticks, every pulse's amplitude from the bus "
                   f"{'= the contract model' if h['amplitudes_ok'] else '**differs from the model**'}, "
                   f"{h['changes_in_pulse']} DAC changes inside a pulse.")
    s = sections.get("sequences")
    if s:
        h = s.headline
        b = h["big"]
        out.append(f"- **Custom sequences** (emulated capture with the DAC bus): {h['pulses']:,} pulses in "
                   f"{h['cases']} runs (the largest {b['pulses']:,} pulses: uploaded in {b['upload_s']:.1f} s, "
                   f"{b['emulated_s']:.1f} s of stimulation emulated in {b['play_s']:.1f} s), worst onset error "
                   f"{h['worst_onset_error_ticks']} ticks against the file's absolute onsets, every pulse's amplitude "
                   f"{'= the file after DAC rounding' if h['amplitudes_ok'] else '**differs from the file**'}, "
                   f"{h['changes_in_pulse']} DAC changes inside a pulse.")
    return out


def render(sections: dict[str, Section], facts: dict[str, str], argv: list[str], total_s: float,
           kept: list[str] = ()) -> str:
    cmd = "make bench" if not argv else "python bench/run_all.py " + " ".join(argv)
    lines = [
        "# picostim benchmarks",
        "",
        "<!-- GENERATED by bench/run_all.py — do not edit; regenerate with `make bench`. Sections 7 and later are "
        "written by the scripts they name and kept as they are by `make bench`. -->",
        "",
        f"Produced by `{cmd}` (= `.venv/bin/python bench/run_all.py`) in {total_s:.0f} s. Each table below names "
        "the command that reproduces it alone. The machine is shared and noisy: contenders are measured side by "
        "side in this one run, interleaved, and reported as medians with their spread and as same-run ratios — "
        "read the ratios, not the absolute times.",
        "",
        "**All timing captures here are emulated** (the firmware's PIO program in picostim's cycle-exact "
        "emulator, one sample per 8 ns PIO cycle). A real board measurement is `make hil PORT=... ANALYZER=...`.",
        "",
        "## Machine",
        "",
        table(["", ""], [[k, v] for k, v in facts.items()]),
        "",
        "## Headlines",
        "",
    ]
    lines += headline_lines(sections)
    slower = [x for s in sections.values() for x in s.slower]
    lines += ["", "## Where picostim is slower than a peer (or than itself)", ""]
    lines += [f"- {x}" for x in slower] or ["- none in this run"]
    blocks = list(kept)
    for key, s in sections.items():
        blocks.append("\n".join([
            f"## {s.title}", "",
            f"Command: `.venv/bin/python bench/run_all.py --only {key}` (module `bench/{MODULES[key].__name__.split('.')[-1]}.py`), "
            f"{s.elapsed_s:.1f} s in this run.", "", s.body]))
    for block in sorted(blocks, key=_section_number):
        lines += ["", block.rstrip("\n")]
    return "\n".join(lines) + "\n"


def _section_number(block: str) -> int:
    """Tables are numbered ('## 7. Long trains ...'): keep that order whoever wrote them."""
    head = block[3:].split(".", 1)[0]
    return int(head) if head.isdigit() else 1000


def kept_sections(old: str, titles: set[str]) -> list[str]:
    """The ``## `` sections of an existing BENCHMARKS.md that this script does not produce (tables
    written by their own scripts: bench/long_trains.py, bench/wholechip_m0.py, tools/mutate.py), so a
    regeneration keeps them."""
    own = {"Machine", "Headlines", "Where picostim is slower than a peer (or than itself)"} | titles
    out = []
    for part in old.split("\n## ")[1:]:
        title = part.split("\n", 1)[0].strip()
        if title not in own:
            out.append("## " + part.rstrip("\n"))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=list(MODULES), help="run only this table (repeatable)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (seconds; for the smoke test)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="output Markdown (default BENCHMARKS.md)")
    args = ap.parse_args(argv)
    scale = "tiny" if args.tiny else "full"
    facts = machine_facts()
    t0 = time.perf_counter()
    sections: dict[str, Section] = {}
    for key, mod in MODULES.items():
        if args.only and key not in args.only:
            continue
        print(f"[bench] {key} ...", flush=True)
        sections[key] = mod.run(scale)
        print(f"[bench] {key} done in {sections[key].elapsed_s:.1f} s", flush=True)
    total = time.perf_counter() - t0
    out = Path(args.out)
    previous = out.read_text(encoding="utf-8") if out.exists() else ""
    kept = kept_sections(previous, {s.title for s in sections.values()})
    out.write_text(render(sections, facts, argv, total, kept), encoding="utf-8")
    print(f"[bench] wrote {args.out} in {total:.0f} s", flush=True)
    if total > BUDGET_S:
        print(f"[bench] WARNING: over the {BUDGET_S} s budget", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
