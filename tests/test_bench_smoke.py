"""Smoke test for the benchmarks (bench/, `make bench`): every table runs at a tiny size in seconds, so
the bench code cannot rot. The numbers are not checked for speed (that is what BENCHMARKS.md is for),
only for correctness invariants the tables rely on."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import (analyzer_throughput, emulation_speed, link_fuzz, protocol_bench, run_all,  # noqa: E402
                   timing_fidelity, trigger_latency)


def test_timing_fidelity_tiny():
    s = timing_fidelity.run("tiny")
    assert s.headline["all_ok"]
    assert s.headline["worst_measured_vs_realised_ticks"] == 0
    assert s.headline["worst_request_error_ticks"] <= 0.5
    assert "| case | field |" in s.body


def test_trigger_latency_tiny():
    s = trigger_latency.run("tiny")
    assert s.headline["ok"]
    for lo, _mid, hi in s.headline["latency_cycles"].values():
        assert 0 < lo <= hi <= 5


@pytest.mark.skipif(shutil.which("sigrok-cli") is None, reason="sigrok-cli not installed")
def test_analyzer_throughput_tiny():
    s = analyzer_throughput.run("tiny")
    assert s.headline and "same NEG edges" in s.body
    assert "| NO" not in s.body


def test_emulation_speed_tiny():
    s = emulation_speed.run("tiny")
    assert all(v["identical"] for v in s.headline.values() if isinstance(v, dict))
    assert s.headline["1ch_emulated_s_per_wall_s"] > 0


def test_protocol_tiny():
    s = protocol_bench.run("tiny")
    assert s.headline["status_rt_per_s"] > 0
    assert "**NO**" not in s.body


def test_link_fuzz_tiny():
    s = link_fuzz.run("tiny")
    assert all(v["crashes"] == 0 and v["frames"] >= 5_000 for v in s.headline.values())
    assert "| firmware |" in s.body and "| host |" in s.body


def test_run_all_writes_markdown(tmp_path):
    out = tmp_path / "B.md"
    assert run_all.main(["--tiny", "--only", "fidelity", "--only", "protocol", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Machine" in text and "nproc" in text and "## Headlines" in text
    assert "--only fidelity" in text
