# %% [markdown]
# # Run a preset on the virtual Pico and plot the capture
#
# Notebook-friendly: each `# %%` cell runs on its own in Jupyter / VS Code (or run the file as a
# script: `python examples/plot_capture.py out/capture.png`). On a board, give `picostim.open("/dev/ttyACM0")`
# and a logic analyzer wired as in docs/HARDWARE.md.

# %%
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if __name__ == "__main__" and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a script writes a PNG; a notebook shows the figure inline
import matplotlib.pyplot as plt

import picostim
from picostim.capture import read_capture

PRESET = Path(__file__).resolve().parent.parent / "presets" / "scs_burst.toml" if "__file__" in globals() \
    else Path("presets/scs_burst.toml")
OUT = Path("out")

# %% run: upload, start, capture the emulated pins, check them against the file
with picostim.open(virtual=True) as stim:
    report = stim.run(PRESET, duration=0.05, capture=OUT / "scs_burst.vcd")
print(report.summary)
print("realised: phase 1 %.3f us at %.3f mA" % (report.realised.phase1_us, report.realised.amplitude_ma))

# %% plot: read the capture file back (what PulseView would show) and draw POS and NEG
trace = read_capture(OUT / "scs_burst.vcd")


def steps(name: str, t_end_s: float) -> tuple[list[float], list[int]]:
    """Times (ms) and levels of one line up to ``t_end_s``, for plt.step(where="post")."""
    ch = trace.channels[name]
    sr = trace.samplerate_hz
    times, levels, level = [0.0], [ch.initial], ch.initial
    for s in ch.toggles:
        if s / sr > t_end_s:
            break
        level ^= 1
        times.append(s / sr * 1e3)
        levels.append(level)
    times.append(t_end_s * 1e3)
    levels.append(level)
    return times, levels


window_s = 3 * report.realised.period_us * 1e-6  # the first three pulses
fig, axes = plt.subplots(2, 1, sharex=True, figsize=(8, 3.5))
for ax, name in zip(axes, ("POS", "NEG")):
    t, v = steps(name, window_s)
    ax.step(t, v, where="post")
    ax.set_ylabel(name)
    ax.set_yticks([0, 1])
axes[-1].set_xlabel("time from the start of the run [ms]")
fig.suptitle("%s: %d pulses, %s" % (PRESET.stem, report.pulses, "ok" if report.ok else "MISMATCH"))
fig.tight_layout()

# %%
if __name__ == "__main__":
    png = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT / "scs_burst_capture.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    print("plot: %s" % png)
