"""Figures of the reliability suites (fuzzing, link faults, watchdog, soak): collected during the run,
printed in pytest's terminal summary (tests/conftest.py) and merged into out/reliability.json, which
the README's "Reliability" figures and BENCHMARKS.md are taken from."""

from __future__ import annotations

import json
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "out" / "reliability.json"
FIGURES: dict[str, dict] = {}


def record(name: str, **figures) -> None:
    figures["recorded"] = time.strftime("%Y-%m-%d %H:%M:%S")
    FIGURES[name] = figures
    OUT.parent.mkdir(parents=True, exist_ok=True)
    try:
        merged = json.loads(OUT.read_text()) if OUT.exists() else {}
    except ValueError:
        merged = {}
    merged[name] = figures
    OUT.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
