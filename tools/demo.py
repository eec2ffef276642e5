"""`make demo`: the main job on the built-in virtual board, command by command, as a user types it.

1. `picostim virtual` serves a virtual Pico on a pseudo-terminal (a child process);
2. info / upload a preset / start / status talk to it through that pty, byte for byte the protocol a
   board speaks;
3. `picostim --virtual run` runs a preset, captures the emulated PIO pins, checks every pulse against
   the file and leaves out/demo.vcd and out/demo.png.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PICOSTIM = [sys.executable, "-m", "picostim"]
PRESET = ROOT / "presets" / "ptns.toml"
BURST = ROOT / "presets" / "scs_burst.toml"
OUT = ROOT / "out"


def show(args: list[str]) -> None:
    """Run a picostim command, echoing it first; stop the demo if it fails."""
    print("\n$ picostim " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    proc = subprocess.run(PICOSTIM + [str(a) for a in args], cwd=ROOT)
    if proc.returncode != 0:
        sys.exit("demo: command failed with exit code %d" % proc.returncode)


def main() -> int:
    OUT.mkdir(exist_ok=True)
    print("$ picostim virtual &", flush=True)
    board = subprocess.Popen(PICOSTIM + ["virtual"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port = board.stdout.readline().strip()
        if not port:
            sys.exit("demo: the virtual Pico did not start")
        print("virtual Pico on %s" % port, flush=True)
        show(["--port", port, "info"])
        show(["--port", port, "upload", PRESET.relative_to(ROOT)])
        show(["--port", port, "start"])
        time.sleep(1.0)  # the virtual board runs in real time here: let a few pulses go
        show(["--port", port, "status"])
        show(["--port", port, "stop"])
    finally:
        board.terminate()
        board.wait(timeout=10)
    show(["--virtual", "run", BURST.relative_to(ROOT), "--duration", "0.5",
          "--capture", "out/demo.vcd", "--plot", "out/demo.png"])
    print("\nThe capture (out/demo.vcd) opens in PulseView or GTKWave; out/demo.png shows the first pulses.")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
