"""The real-board path of `picostim run` (board + sigrok analyzer), exercised without a board: the
"board" is a virtual Pico reached through its pty like a USB port, the analyzer is sigrok-cli's demo
driver. The demo analyzer does not see our pins, so the check must *fail* (exit 3) — what this proves
is that the whole hardware path runs: arming sigrok-cli, starting and stopping the board over the
port, reading the capture back, analysing it and reporting."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from picostim import runner
from picostim.virtual.device import VirtualPico
from protocol import messages as M

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("sigrok-cli") is None, reason="sigrok-cli not installed")


def test_wiring_names_follow_the_channel_under_test():
    assert runner.wiring_for(0)["D1"] == "NEG"
    w = runner.wiring_for(2)
    assert (w["D0"], w["D1"], w["D2"], w["D3"], w["D4"]) == ("POS_2", "NEG_2", "RECOVERY_2", "SYNC_2", "TRIG1")


def test_run_on_a_port_with_a_sigrok_analyzer_goes_through_the_whole_hardware_path(tmp_path):
    with VirtualPico(realtime=True) as vp:
        out = tmp_path / "bench.sr"
        proc = subprocess.run(
            [sys.executable, "-m", "picostim", "--port", vp.path, "run", str(ROOT / "presets" / "ptns.toml"),
             "--analyzer", "demo", "--samplerate", "1000000", "--duration", "0.2", "--capture", str(out),
             "--json"], capture_output=True, text=True, timeout=120)
        report = json.loads(proc.stdout)
        assert proc.returncode == 3, proc.stderr  # the demo pattern is not a ptns pulse train
        assert report["ok"] is False and report["capture"] == str(out) and out.exists()
        assert report["samplerate_hz"] == 1_000_000
        # the board was started over the port and stopped again by the run (drained within 2 periods)
        time.sleep(0.3)
        assert vp.controller.state[0] == M.ST_IDLE and vp.hal.pulses(0) >= 1
