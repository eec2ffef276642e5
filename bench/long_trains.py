"""Long legal trains under the MicroPython unix port: DMA words, heap and build time of one channel's
Train + feed Plan + DMA buffers, for the corners of firmware/limits.py (issue 10 item 6).

    .venv/bin/python bench/long_trains.py                       # every legal corner + named cases -> markdown
    .venv/bin/python bench/long_trains.py --root /tmp/base --cases issue --timeout 120   # another tree

Per parameter set, in a fresh step of one MicroPython process (firmware modules imported from
``--root``, run from source; the board runs the same bytecode from .mpy): build_train + dma_chain.Plan
+ one ``array('I')`` per block (what hal_rp2 allocates), timed with ticks_us (gc enabled, as on the
board); ``live`` = gc.mem_alloc() growth after gc.collect() with all three kept; ``peak`` = growth
with the collector off during the build (everything allocated: an upper bound of what the heap must
hold). Unix port x86-64: 8-byte object pointers and 32-byte GC blocks (the RP2040 has 4 and 16, but
makes integers >= 2**30 heap objects); times are this x86 host's, the RP2040 (Cortex-M0+ 125 MHz) is
much slower. Sets the tree refuses (validate or Unrealisable) are skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import micropython_binary, table  # noqa: E402

MS = 1_000_000
DAY = 86_400_000 * MS

# durations at their legal extremes (firmware/limits.py); 40 ns = the shortest segment
CORNERS = {
    "phase1_ns": [40, 10 * MS],
    "interphase_ns": [0, 10 * MS],
    "phase2_ns": [40, 10 * MS],
    "recovery_ns": [0, 100 * MS],
    "period_ns": [100_000, DAY],
    "burst_pulses": [0, 2, 10_000],
    "interburst_ns": [0, DAY],
    "train_duration_ns": [0, DAY],
    "train_delay_ns": [0, 40, DAY],
}
CASES = {  # the measurements, and the worst legal set found below
    "burst 10, 1 ms period, 1 h interburst": dict(burst_pulses=10, period_ns=1 * MS, interburst_ns=3_600_000 * MS),
    "burst 2, 1 ms period, 3 h interburst": dict(burst_pulses=2, period_ns=1 * MS, interburst_ns=10_800_000 * MS),
    "24 h train delay": dict(train_delay_ns=DAY),
    "24 h period, delay and train": dict(period_ns=DAY, train_delay_ns=DAY, train_duration_ns=DAY),
}

MP_SCRIPT = r'''
import gc, json, sys, time
REPS = 3
from array import array
from firmware import pulse_engine as pe
from firmware import dma_chain as dc

def build(p):
    t = pe.build_train(p)
    plan = dc.Plan(t)
    return t, plan, [array("I", b.words) for b in plan.blocks]

for line in sys.stdin:
    p = json.loads(line)
    gc.collect()
    base = gc.mem_alloc()
    try:
        us = None
        for _ in range(REPS):  # the fastest of REPS builds, each after a collection: no gc pause inside
            keep = None
            gc.collect()
            t0 = time.ticks_us()
            keep = build(p)
            dt = time.ticks_diff(time.ticks_us(), t0)
            us = dt if us is None or dt < us else us
    except pe.Unrealisable:
        print(json.dumps(None))
        continue
    words = 0
    for b in keep[1].blocks:
        words += len(b.words)
    gc.collect()
    live = gc.mem_alloc() - base
    keep = None
    gc.collect()
    base = gc.mem_alloc()
    gc.disable()
    try:
        keep = build(p)
        peak = gc.mem_alloc() - base
    except MemoryError:
        peak = -1
    gc.enable()
    keep = None
    print(json.dumps({"us": us, "words": words, "live": live, "peak": peak}))
'''


def legal_sets():
    """Every legal combination of CORNERS (protocol.params.validate with firmware.limits)."""
    from firmware.limits import LIMITS
    from protocol import params as P

    out = []
    for vals in itertools.product(*CORNERS.values()):
        p = P.complete(dict(zip(CORNERS, vals)))
        if P.validate(p, LIMITS) is None:
            out.append(p)
    return out


def run(root: Path, sets: list[dict], timeout: float, heap: str = "64M") -> list:
    """Measure ``sets`` in one MicroPython process per set (``timeout`` s each) or, with timeout 0,
    all in one process. None for a set the engine refuses, "timeout" for one that did not finish."""
    exe = micropython_binary()
    if exe is None:
        raise SystemExit("micropython (unix port) not found")
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(root), ".frozen"]))
    batches = [sets] if not timeout else [[s] for s in sets]
    results: list = []
    for batch in batches:
        inp = "".join(json.dumps(s) + "\n" for s in batch)
        try:
            proc = subprocess.run([exe, "-X", "heapsize=" + heap, "-c", MP_SCRIPT], input=inp, capture_output=True,
                                  text=True, timeout=timeout or None, cwd=str(root), env=env)
        except subprocess.TimeoutExpired:
            results.append("timeout")
            continue
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 and len(lines) < len(batch):
            err = (proc.stderr + proc.stdout).strip().splitlines()
            results.extend(["error: " + (err[-1] if err else "?")] * (len(batch) - len(lines)))
        results = results + [json.loads(x) for x in lines[:len(batch)]] if lines else results
    return results


def describe(p):
    """The fields of a set that differ from the protocol defaults, short."""
    from protocol import params as P

    def v(name, x):
        if name.endswith("_ns"):
            return "24 h" if x == DAY else ("%g ms" % (x / MS) if x >= MS else "%d ns" % x)
        return str(x)

    return ", ".join("%s %s" % (k[:-3] if k.endswith("_ns") else k, v(k, x)) for k, x in p.items()
                     if P.DEFAULTS.get(k) != x)


def _kb(n):
    return "%.1f KB" % (n / 1024)


def _row(name, r):
    if not isinstance(r, dict):
        return [name, r, "", "", ""]
    return [name, f"{r['words']:,}", _kb(r["live"]), _kb(r["peak"]) if r["peak"] >= 0 else "MemoryError",
            "%.2f ms" % (r["us"] / 1000)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT), help="tree whose firmware/ is measured")
    ap.add_argument("--cases", choices=("all", "issue"), default="all",
                    help="issue: only the named cases (e.g. on an old tree, with --timeout)")
    ap.add_argument("--timeout", type=float, default=0, help="seconds per set, each in its own process (0: one "
                                                             "process for all)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    from protocol import params as P

    named = [(n, P.complete(kw)) for n, kw in CASES.items()]
    rows = [_row(n, r) for (n, _), r in zip(named, run(root, [p for _, p in named], args.timeout))]
    header = ["parameter set", "DMA words", "live heap", "peak heap", "build time"]
    if args.cases == "all":
        sets = legal_sets()
        pairs = [(s, r) for s, r in zip(sets, run(root, sets, args.timeout)) if isinstance(r, dict)]
        sets_ok = [s for s, _ in pairs]
        res = [r for _, r in pairs]
        worst = {k: max(res, key=lambda r: r[k]) for k in ("words", "live", "peak", "us")}
        for k, label in (("words", "most words"), ("live", "most live heap"), ("peak", "highest peak"),
                         ("us", "slowest build")):
            i = res.index(worst[k])
            rows.append(_row(f"{label} of all {len(res)} legal corner sets: {describe(sets_ok[i])}", worst[k]))
    print(table(header, rows))


if __name__ == "__main__":
    main()
