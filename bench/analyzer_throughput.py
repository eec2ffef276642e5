"""Table 3 — analyzer throughput: picostim.capture.analyze vs sigrok-cli's ``timing`` decoder on the same
.sr captures (1 M / 10 M / 100 M samples at 125 MS/s).

The capture content is an *emulated* pin trace (the firmware's PIO program in the emulator, one sample
per PIO cycle), used here only as analyzer input — it is not synthesised to check the firmware. It is
written once per size with picostim.capture.write_sr (write time reported, not compared).

Contenders, interleaved per rep:
* ``picostim file``: read_sr (unzip + edge extraction with NumPy) + analyze, all channels, one process
  call — the same work ``picostim check capture.sr`` does, minus interpreter start-up.
* ``picostim analyze``: analyze() on the in-memory trace (edge-based: cost per edge, not per sample).
* ``sigrok-cli timing``: ``sigrok-cli -i f.sr -P timing:data=NEG -A timing=time
  --protocol-decoder-samplenum`` (picostim.capture.run_timing_decoder), one channel, including its
  process start-up and output parsing.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import PIO_HZ, Section, interleave, med, paired_ratios, ratio_text, si, table

FULL_SIZES = (1_000_000, 10_000_000, 100_000_000)
TINY_SIZES = (100_000, 1_000_000)
# two realistic trains (all four output lines toggle): 1 kHz with recovery, and the 10 kHz rate limit
TRAINS = {
    "1 kHz": dict(phase1_us=100, interphase_us=50, phase2_us=100, recovery_us=200, frequency_hz=1000,
                  amplitude_ua=1000),
    "10 kHz": dict(phase1_us=20, interphase_us=5, phase2_us=20, recovery_us=20, frequency_hz=10_000,
                   amplitude_ua=1000),
}


def emulated_trace(n_samples: int, train: dict):
    """Emulate the train for ``n_samples`` PIO cycles on a VirtualPico and return the channel-0 trace."""
    from picostim import paramfile
    from picostim.capture.trace import Channel, Trace
    from picostim.client import Client
    from picostim.transport import open_port
    from picostim.virtual.device import VirtualPico

    with VirtualPico(channels=1) as vp:
        client = Client(open_port(vp.path))
        try:
            client.hello()
            client.set_params(0, paramfile.from_dict(train).params)
            client.start(1)
            vp.advance(n_samples / PIO_HZ + 1e-4)
        finally:
            client.close()
        full = vp.hal.trace([0])
    chans = {name: Channel(ch.initial, ch.toggles[ch.toggles < n_samples]) for name, ch in full.channels.items()}
    return Trace(full.samplerate_hz, n_samples, chans)


def run(scale: str = "full") -> Section:
    from picostim.capture import analyze, read_sr, run_timing_decoder, sigrok_cli_path, write_sr
    from picostim.capture.trace import Channel, Trace

    t0 = time.perf_counter()
    sizes = FULL_SIZES if scale == "full" else TINY_SIZES
    reps = {1_000_000: 5, 10_000_000: 5, 100_000_000: 3} if scale == "full" else {}
    have_sigrok = sigrok_cli_path() is not None
    tmp = Path(tempfile.mkdtemp(prefix="picostim-bench-"))
    rows, scale_rows, notes = [], [], []
    headline: dict = {}
    slower: list[str] = []
    try:
        for train_name, train in TRAINS.items():
            base = emulated_trace(max(sizes), train)
            for n in sizes:
                tr = Trace(base.samplerate_hz, n, {k: Channel(c.initial, c.toggles[c.toggles < n])
                                                   for k, c in base.channels.items()})
                path = tmp / f"cap_{n}.sr"
                tw = time.perf_counter()
                write_sr(tr, path)
                t_write = time.perf_counter() - tw
                n_edges = sum(len(c.toggles) for c in tr.channels.values())
                neg_edges = len(tr.channels["NEG"].toggles)

                def pico_file(path=path):
                    return analyze(read_sr(path))

                def pico_mem(tr=tr):
                    return analyze(tr)

                cont = {"picostim file": pico_file, "picostim analyze": pico_mem}
                if have_sigrok:
                    cont["sigrok-cli timing"] = lambda path=path: run_timing_decoder(path, "NEG", timeout_s=600)
                # cross-check once: both see the same NEG edges
                rep = pico_file()
                agree = ""
                if have_sigrok:
                    tres = run_timing_decoder(path, "NEG", timeout_s=600)
                    sig_edges = np.unique(np.concatenate([tres.starts, tres.ends])) if len(tres.starts) else np.zeros(0)
                    ours = tr.channels["NEG"].toggles
                    same = (len(sig_edges) > 0 and set(sig_edges.tolist()) <= set(ours.tolist()) | {0, n}
                            and len(tres.starts) >= len(ours) - 1)
                    agree = "yes" if same else f"NO ({len(tres.starts)} intervals vs {len(ours)} edges)"
                r = reps.get(n, 1)
                times = interleave(cont, r, min_s=0.05 if n <= 1_000_000 else 0.0)
                row = [train_name, f"{si(n)}", f"{n_edges:,} ({neg_edges:,} on NEG)", f"{rep.n_pulses:,}",
                       f"{t_write:.2f} s"]
                for name in ("picostim file", "picostim analyze", "sigrok-cli timing"):
                    if name in times:
                        sps = [n / t for t in times[name]]
                        row.append(f"{si(med(sps), 'S/s')} ({si(min(sps))}–{si(max(sps))})")
                    else:
                        row.append("sigrok-cli not installed")
                if have_sigrok:
                    rf = paired_ratios(times["sigrok-cli timing"], times["picostim file"])
                    rm = paired_ratios(times["sigrok-cli timing"], times["picostim analyze"])
                    row += [ratio_text(rf), ratio_text(rm), agree]
                    headline[(train_name, n)] = {"file_vs_sigrok": med(rf), "mem_vs_sigrok": med(rm)}
                    if med(rf) < 1:
                        slower.append(f"analyzer, {train_name} train, {si(n)} samples from file: "
                                      f"sigrok-cli is {1 / med(rf):.2g}× faster")
                row.append(str(r))
                rows.append(row)
                scale_rows.append((train_name, n, {k: med(v) for k, v in times.items()}))
                path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    srows = []
    for i in range(1, len(scale_rows)):
        (tn0, n0, t0s), (tn1, n1, t1s) = scale_rows[i - 1], scale_rows[i]
        if tn0 != tn1:
            continue
        srows.append([f"{tn1}: {si(n0)} → {si(n1)} (×{n1 // n0})"]
                     + [f"×{t1s[k] / t0s[k]:.3g}" for k in ("picostim file", "picostim analyze", "sigrok-cli timing")
                        if k in t1s])
    hdr = ["train", "samples", "edges (all lines)", "pulses", "write_sr", "picostim file: read_sr + analyze",
           "picostim analyze (in memory)", "sigrok-cli timing"]
    if have_sigrok:
        hdr += ["speed-up, file vs sigrok", "speed-up, in-memory vs sigrok", "same NEG edges", "reps"]
    else:
        hdr += ["reps"]
    body = "\n".join([
        "Captures: the firmware's 1 kHz train (100 µs phases, 50 µs gap, 200 µs recovery) and 10 kHz train "
        "(20 µs phases, 5 µs gap, 20 µs recovery; the rate limit) from the **emulated** PIO at 125 MS/s, cut to each length and written with `picostim.capture.write_sr` — emulated trace "
        "used only as analyzer input. Throughput = capture samples / wall time, median (min–max) over "
        "interleaved reps; speed-up = sigrok time / picostim time within the same rep.",
        "",
        table(hdr, rows),
        "",
        "Scaling with capture length (median time ratio when the capture grows; ×10 = linear in samples):",
        "",
        table(["length"] + [k for k in ("picostim file", "picostim analyze", "sigrok-cli timing")
                            if k in scale_rows[0][2]], srows),
        "",
        "What is compared: sigrok's `timing` decoder reports the interval between consecutive edges of **one** "
        "line (NEG); picostim's analyzer reconstructs every pulse of the channel from all lines (phases, gap, "
        "recovery, SYNC, bursts, overlaps, statistics). So picostim does more work per capture. picostim's "
        "in-memory analysis is per edge (its cost hardly grows with samples at a fixed pulse rate); from a "
        "file, the unzip and the NumPy edge search are per sample. sigrok-cli's time includes its process "
        "start-up, which dominates at 1 M samples; beyond that it decompresses the whole file and "
        "libsigrokdecode scans every sample for the decoder's edge condition (in C), so it scales with "
        "samples. Captures with millions of edges (not stimulation trains) would cost picostim more per "
        "capture, since its work is per edge; not measured here.",
        "",
        ("picostim is faster than sigrok-cli on every row of this run." if not slower else
         "Rows where sigrok-cli was faster: " + "; ".join(slower) + "."),
    ] + notes)
    return Section("analyzer", "3. Analyzer throughput vs sigrok-cli `timing`", body, headline=headline,
                   slower=slower, elapsed_s=time.perf_counter() - t0)
