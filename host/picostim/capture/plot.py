"""PNG of the first pulses of a capture: stacked digital lines plus the biphasic current they command,
annotated with the measured widths (µs). The current is in µA from the capture's own DAC bus (the
MCP4822 outputs decoded by capture/dac.py) when the capture has it, else in units of the amplitude.
Matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import dac as dacbus  # noqa: E402
from .analyzer import Report, channel_names  # noqa: E402
from .trace import Channel, Trace  # noqa: E402

_COLOURS = {"POS": "tab:red", "NEG": "tab:blue", "RECOVERY": "tab:green", "SYNC": "tab:gray",
            "TRIG1": "tab:purple", "TRIG2": "tab:purple"}


def _steps(ch: Channel, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Step-plot (x, y) of a line over samples [lo, hi) from its edges."""
    tg = ch.toggles
    inner = tg[(tg > lo) & (tg < hi)]
    x = np.concatenate(([lo], inner, [hi]))
    y0 = ch.level_at(lo)
    y = (np.arange(len(x)) & 1) ^ y0
    y[-1] = y[-2] if len(y) > 1 else y0
    return x, y.astype(float)


def default_window(trace: Trace, report: Report, pulses: int = 3) -> tuple[int, int]:
    """Sample window showing the first ``pulses`` complete pulses with a margin."""
    p = report.pulses
    idx = np.flatnonzero(p.complete)
    if len(idx) == 0:
        return 0, trace.n_samples
    first = int(p.start[idx[0]])
    last_i = idx[min(pulses, len(idx)) - 1]
    last = int(p.end()[last_i])
    span = max(last - first, 1)
    margin = max(span // 10, 1) if len(idx) > 1 else span
    return max(0, first - margin), min(trace.n_samples, last + margin)


def plot(trace: Trace, report: Report, out_png: str | Path, window: tuple[float, float] | None = None,
         *, pulses: int = 3, window_unit: str = "us", title: str | None = None, dpi: int = 110) -> Path:
    """Draw POS/NEG/RECOVERY/SYNC (and TRIG) of ``report.channel`` over ``window`` (µs by default,
    ``window_unit="samples"`` for sample indices; default: the first ``pulses`` pulses) and a biphasic
    current view, with phase widths annotated. Writes ``out_png`` and returns its path."""
    sr = trace.samplerate_hz
    k = 1e6 / sr  # µs per sample
    if window is None:
        lo, hi = default_window(trace, report, pulses)
    elif window_unit == "samples":
        lo, hi = int(window[0]), int(window[1])
    else:
        lo, hi = int(window[0] / k), int(np.ceil(window[1] / k))
    lo, hi = max(0, lo), min(trace.n_samples, max(hi, lo + 1))
    # time axis unit: µs, or ms for long windows
    span_us = (hi - lo) * k
    unit, scale = ("ms", 1e-3) if span_us > 20_000 else ("µs", 1.0)

    names = channel_names(report.channel)
    lines = [(base, names[base]) for base in ("POS", "NEG", "RECOVERY", "SYNC") if names[base] in trace.channels]
    lines += [(t, t) for t in ("TRIG1", "TRIG2") if t in trace.channels and len(trace.channels[t].toggles)]

    fig, (ax_d, ax_i) = plt.subplots(2, 1, figsize=(11, 2.2 + 0.65 * len(lines) + 2.2), sharex=True,
                                     gridspec_kw={"height_ratios": [max(len(lines), 1), 2.2]})
    # --- digital lines, stacked
    for row, (base, name) in enumerate(reversed(lines)):
        x, y = _steps(trace.channels[name], lo, hi)
        ax_d.step(x * k * scale, y * 0.8 + row * 1.2, where="post", color=_COLOURS.get(base, "black"), lw=1.4)
    ax_d.set_yticks([r * 1.2 + 0.4 for r in range(len(lines))])
    ax_d.set_yticklabels([name for _, name in reversed(lines)])
    ax_d.set_ylim(-0.3, len(lines) * 1.2)
    ax_d.grid(axis="x", alpha=0.3)
    status = "OK" if report.ok else f"FAIL ({len(report.failures)})"
    ax_d.set_title(title or f"channel {report.channel}: {report.n_pulses} pulses, {report.polarity or '?'}, "
                            f"{sr / 1e6:g} MS/s — {status}", fontsize=10)

    # --- biphasic current: +1 while POS, -1 while NEG (anodic positive), 0 otherwise
    pos, neg = trace.channels[names["POS"]], trace.channels[names["NEG"]]
    edges = np.unique(np.concatenate(([lo], pos.toggles[(pos.toggles > lo) & (pos.toggles < hi)],
                                      neg.toggles[(neg.toggles > lo) & (neg.toggles < hi)], [hi])))
    lp = pos.initial ^ (np.searchsorted(pos.toggles, edges, side="right") & 1)
    ln = neg.initial ^ (np.searchsorted(neg.toggles, edges, side="right") & 1)
    cur = lp.astype(float) - ln.astype(float)
    outputs = _dac_outputs(trace, report.channel)
    if outputs is not None:  # µA the DAC outputs carried at each step (A: POS direction, B: NEG)
        cur = (lp * outputs[0].at(edges) - ln * outputs[1].at(edges)) / 1000.0
    top = max(float(np.abs(cur).max()), 1e-9)
    y = 1.0 / top  # the annotations below are placed in units of the largest current
    ax_i.step(edges * k * scale, cur * y, where="post", color="black", lw=1.4)
    ax_i.fill_between(edges * k * scale, cur * y, step="post", alpha=0.2, color="tab:orange")
    ax_i.axhline(0, color="gray", lw=0.6)
    ax_i.set_ylim(-1.6, 1.6)
    ax_i.set_yticks([-1, 0, 1])
    if outputs is None:
        ax_i.set_yticklabels(["−I (NEG)", "0", "+I (POS)"])
    else:
        ax_i.set_yticklabels([f"−{top:g} µA (NEG)", "0", f"+{top:g} µA (POS)"])
    ax_i.set_xlabel(f"time ({unit}) from capture start")
    ax_i.grid(axis="x", alpha=0.3)

    # --- annotate measured widths of the pulses inside the window
    p = report.pulses
    show = np.flatnonzero(p.complete & (p.start >= lo) & (p.end() <= hi))[:8]
    sign1 = -1.0 if (report.polarity or "cathodic-first") == "cathodic-first" else 1.0
    for i in show:
        s, e1, s2, e2 = (int(v) for v in (p.start[i], p.phase1_end[i], p.phase2_start[i], p.phase2_end[i]))
        for a, b, y, label in ((s, e1, sign1 * 1.25, "P1"), (s2, e2, -sign1 * 1.25, "P2")):
            ax_i.annotate(f"{label} {(b - a) * k:.3f} µs", ((a + b) / 2 * k * scale, y), ha="center",
                          va="center", fontsize=8)
        if s2 > e1:
            ax_i.annotate(f"IPG {(s2 - e1) * k:.3f} µs", ((e1 + s2) / 2 * k * scale, 0.25), ha="center",
                          fontsize=7, color="dimgray")
        if p.recovery_start[i] >= 0:
            rs, re_ = int(p.recovery_start[i]), int(p.recovery_end[i])
            ax_i.annotate(f"rec {(re_ - rs) * k:.3f}", ((rs + re_) / 2 * k * scale, -0.35), ha="center",
                          fontsize=7, color="tab:green")
    per = report.stats["period"]
    if per.n:
        st = report.stat_us("period")
        ax_i.text(0.995, 0.97, f"period {st['mean']:.3f} µs (jitter σ {st['std']:.4f} µs, n={per.n})",
                  transform=ax_i.transAxes, ha="right", va="top", fontsize=8)
    ov_s, ov_e = report.overlaps
    for a, b in zip(ov_s[(ov_s < hi) & (ov_e > lo)][:20], ov_e[(ov_s < hi) & (ov_e > lo)][:20]):
        for ax in (ax_d, ax_i):
            ax.axvspan(a * k * scale, max(b, a + 1) * k * scale, color="red", alpha=0.3)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _dac_outputs(trace: Trace, channel: int) -> tuple[dacbus.Output, dacbus.Output] | None:
    """The channel's DAC outputs (A, B) decoded from the capture, None when it has no DAC bus for the
    channel or an output is still unknown (no command seen) somewhere."""
    bus = dacbus.decode_bus(trace)
    outs = bus.outputs.get(channel)
    if outs is None or any(len(o.times) == 0 for o in outs):
        return None
    return outs
