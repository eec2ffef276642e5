"""Shared helpers for the benchmarks: machine facts, interleaved timing, robust statistics, Markdown.

The machines these run on are noisy (shared cores, other jobs). Every comparison is therefore made
side by side in one process: the contenders are *interleaved* (rep 1: A B C, rep 2: B C A, ...), the
per-rep ratio is taken between timings of the same rep, and the table reports the median with its
spread (min–max or p25–p75), never a lone absolute time as the headline.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
PIO_HZ = 125_000_000
NS_PER_TICK = 8


@dataclass
class Section:
    """One BENCHMARKS.md table: Markdown body plus headline numbers for the summary."""

    key: str
    title: str
    body: str
    headline: dict[str, Any] = field(default_factory=dict)
    slower: list[str] = field(default_factory=list)  # rows where picostim is slower than a peer, with why
    elapsed_s: float = 0.0


# ------------------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any], min_s: float = 0.0) -> float:
    """Seconds per call of ``fn``; repeats the call until ``min_s`` has elapsed (for very fast calls)."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return dt / n


def interleave(contenders: dict[str, Callable[[], Any]], reps: int, min_s: float = 0.0) -> dict[str, list[float]]:
    """Time every contender ``reps`` times, rotating the order each rep. Returns name -> [s per call]."""
    names = list(contenders)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(timed(contenders[name], min_s))
    return out


def paired_ratios(num: list[float], den: list[float]) -> list[float]:
    """Per-rep ratios num[i] / den[i] (times measured in the same rep)."""
    return [a / b for a, b in zip(num, den) if b > 0]


def med(values) -> float:
    return float(statistics.median(values))


def pct(values, q: float) -> float:
    """Percentile by linear interpolation (q in 0..100)."""
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def spread(values, fmt: str = "{:.3g}") -> str:
    """'median (min–max, n=k)' of a distribution."""
    v = list(values)
    if len(v) == 1:
        return fmt.format(v[0]) + " (n=1)"
    return f"{fmt.format(med(v))} ({fmt.format(min(v))}–{fmt.format(max(v))}, n={len(v)})"


def si(x: float, unit: str = "", digits: int = 3) -> str:
    """Engineering format: 1.23 M, 45.6 k."""
    if x == 0 or x != x:
        return f"{x:g} {unit}".strip()
    for mult, p in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(x) >= mult:
            return f"{x / mult:.{digits}g} {p}{unit}".strip()
    return f"{x:.{digits}g} {unit}".strip()


def ratio_text(ratios: list[float]) -> str:
    """'12.3× (10.1–14.0×)'."""
    if len(ratios) == 1:
        return f"{ratios[0]:.3g}×"
    return f"{med(ratios):.3g}× ({min(ratios):.3g}–{max(ratios):.3g}×)"


# ------------------------------------------------------------------------------------------ Markdown
def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ machine
def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def micropython_binary() -> str | None:
    cand = Path(sys.executable).parent / "micropython"
    return str(cand) if cand.exists() else shutil.which("micropython")


def machine_facts() -> dict[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    import numpy

    facts = {
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "nproc": f"{affinity} (os.cpu_count {os.cpu_count()})",
        "cpu": cpu or platform.processor() or "?",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": numpy.__version__,
        "git": (_run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "?")
        + (" (+ uncommitted changes)" if _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]) else ""),
    }
    sig = shutil.which("sigrok-cli")
    facts["sigrok-cli"] = (_run([sig, "--version"]).splitlines() or ["?"])[0] if sig else "not installed"
    mp = micropython_binary()
    if mp:
        out = _run([mp, "-c", "import sys; print(sys.implementation.name, '.'.join(map(str, sys.implementation.version[:3])), sys.platform)"])
        facts["micropython"] = out or "?"
    else:
        facts["micropython"] = "not installed"
    try:
        import importlib.metadata as md

        facts["rp2040-pio-emulator"] = md.version("rp2040-pio-emulator")
        import crcmod  # noqa: F401  (loads crcmod.crcmod)

        ext = getattr(sys.modules.get("crcmod.crcmod"), "_usingExtension", False)
        facts["crcmod"] = md.version("crcmod") + (" (C extension)" if ext else " (pure Python!)")
    except Exception:
        pass
    return facts
