"""The timing analyzer: every pulse of one stimulation channel, measured from edges with NumPy.

Pulse anatomy (one channel ``k``; names ``POS``/``NEG``/``RECOVERY``/``SYNC``, suffixed ``_k`` for k > 0)::

    phase 1 (NEG high if cathodic-first, POS high if anodic-first)
    interphase gap, both low (at least the board dead time on a correct capture; measured as it is)
    phase 2 on the other line
    optional RECOVERY high (after phase 2)
    SYNC high from phase-1 start to phase-2 end

Everything is computed from edge arrays (``searchsorted``, ``diff``, masks): no Python loop over samples
or pulses, so a 100 M-sample capture costs time per edge only.

Tolerances (honest, derived from the sample rate):

* *exact* mode (sample rate == PIO clock, i.e. emulation where one sample is one PIO tick, or forced with
  ``exact=True``): a measured width must equal the expected width rounded to the sample (±0.5 sample
  means "the nearest integer").
* asynchronous sampling (a real analyzer): a width or interval is the difference of two edges each
  quantised to the sampling grid, so it is within ±1 sample of the true value; plus the frequency error
  of the two clocks (``clock_ppm``, default 100 ppm) proportional to the measured span.

Dead time (safety, checked on every capture whatever is expected): between two *different* drive states
(POS, NEG, RECOVERY, or any overlap of them) the three lines must all be low for at least the board dead
time (``firmware.board.DEAD_TIME_NS``); a shorter idle, or none, is a ``DEAD TIME`` failure. The idle is
measured like any interval (same tolerance), so a failure means the capture shows less than the dead
time beyond the sampling uncertainty.

DAC bus (issue 13; checked when the capture has SCK, MOSI and the channel's CS, else skipped with a
note): the MCP4822 commands are decoded (:mod:`.dac`) into the channel's two output currents; every
complete pulse's phase-1 amplitude is reported (``amplitude_ua``), and a malformed SPI frame, a DAC
output changing while POS or NEG is high, or a pulse whose charge (current x measured width of each
phase) is not balanced to the firmware's DAC rounding (half an LSB over phase 2, one LSB at the 1-LSB
floor, plus the width tolerance above) is a failure.

Custom sequences (``expected["onsets_us"]`` / ``expected["amplitudes_ua"]``, issue 13 item 4): every
complete pulse's onset, relative to the first pulse placed at the first expected onset, exact to the
sample in exact mode, and its phase-1 amplitude from the DAC bus (``report.sequence``; see
:func:`_check_sequence`).

Triphasic pulses (``expected["shape"] == "triphasic"``, parameter ``shape = 1``; otherwise everything
above is unchanged): flank, interphase, main phase, interphase, flank. The flanks are on the "phase 2"
line and the main phase on the "phase 1" line (the polarity names the main phase's direction; when not
given it is the line with one interval per pulse). A pulse starts at its first flank and ends at its
second (or its recovery); ``phase1`` is the main phase, ``interphase1``/``interphase`` the gaps before /
after it, ``flank1``/``flank2`` each flank and ``phase2`` their sum. Expected flank width: ``flank_us``
(default ``phase2_us / 2``), each flank within the width tolerance; the sum is not compared with
``phase2_us`` (the firmware rounds each flank to the tick). SYNC must be high from the first flank's
start to the second flank's end. DAC: both flanks must draw on one unchanged output (no output change
from the first flank's start to the second flank's end, gaps included), the amplitude is the main
phase's, and the balance check compares main current x main width with flank current x both widths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from firmware.board import DAC_SETTLE_NS, DEAD_TIME_NS

from . import dac as dacbus
from .trace import Channel, Trace

PIO_CLOCK_HZ = 125_000_000
WIDTH_KEYS = ("phase1", "interphase", "phase2", "recovery", "recovery_gap", "period", "burst_gap",
              "burst_period", "sync_start", "sync_end")
EXPECTED_KEYS = {
    "phase1_us", "interphase_us", "phase2_us", "recovery_us", "recovery_gap_us", "period_us", "frequency_hz",
    "burst_pulses", "burst_gap_us", "burst_period_us", "bursts", "pulses", "polarity",
    "trigger_latency_us", "trigger_latency_max_cycles", "train_delay_us", "shape", "flank_us",
    "onsets_us", "amplitudes_ua",
}
SEQUENCE_LIST_KEYS = ("onsets_us", "amplitudes_ua")  # per-pulse expectations of a custom sequence
TRIPHASIC_KEYS = ("flank1", "flank2", "interphase1")  # extra widths of a triphasic analysis
_MAX_LISTED = 100  # times listed in the JSON per kind


# ----------------------------------------------------------------------------------------------- helpers
def channel_names(channel: int = 0) -> dict[str, str]:
    """Trace channel names of stimulation channel ``channel``."""
    sfx = "" if channel == 0 else f"_{channel}"
    return {k: k + sfx for k in ("POS", "NEG", "RECOVERY", "SYNC")}


def _normalise(ch: Channel) -> tuple[int, np.ndarray]:
    """(level at sample 0, toggles > 0)."""
    tg = ch.toggles
    init = ch.level_at(0)
    return init, tg[tg > 0]


@dataclass
class _Intervals:
    starts: np.ndarray
    ends: np.ndarray
    cut_start: np.ndarray  # bool: high at sample 0 (began before the capture)
    cut_end: np.ndarray  # bool: still high at the capture end

    def __len__(self) -> int:
        return len(self.starts)


def _intervals(ch: Channel | None, n_samples: int) -> _Intervals:
    """High intervals [start, end) of a line; a line high at the end ends at ``n_samples`` (cut)."""
    if ch is None:
        z = np.zeros(0, np.int64)
        return _Intervals(z, z, np.zeros(0, bool), np.zeros(0, bool))
    init, tg = _normalise(ch)
    tg = tg[tg < n_samples]
    if init:
        tg = np.concatenate(([0], tg))
    starts = tg[0::2]
    ends = tg[1::2]
    cut_end = np.zeros(len(starts), bool)
    if len(ends) < len(starts):
        ends = np.concatenate((ends, [n_samples]))
        cut_end[-1] = True
    cut_start = np.zeros(len(starts), bool)
    if init and len(starts):
        cut_start[0] = True
    return _Intervals(starts.astype(np.int64), ends.astype(np.int64), cut_start, cut_end)


def both_high(a: Channel, b: Channel, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Intervals [start, end) where both lines are high, by merging the two edge arrays."""
    ia, ta = _normalise(a)
    ib, tb = _normalise(b)
    t = np.sort(np.concatenate(([0], ta, tb)), kind="stable")  # two sorted runs: timsort merges them
    if len(t) > 1:
        t = t[np.concatenate(([True], t[1:] != t[:-1]))]
    t = t[t < n_samples]
    la = ia ^ (np.searchsorted(ta, t, side="right") & 1)
    lb = ib ^ (np.searchsorted(tb, t, side="right") & 1)
    both = (la & lb).astype(np.int8)
    d = np.diff(np.concatenate(([0], both, [0])))
    bounds = np.concatenate((t, [n_samples]))
    return bounds[np.flatnonzero(d == 1)], bounds[np.flatnonzero(d == -1)]


def drive_transitions(lines: list[Channel | None], n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                             np.ndarray]:
    """Transitions between two different drive states, from the merged edges of ``lines`` (POS, NEG,
    RECOVERY; a missing line is low): for each pair of consecutive non-idle states that differ,
    ``(end of the first, start of the second, first state, second state)``; a state is the bit mask of
    the lines that are high (bit i = ``lines[i]``). The idle between them is ``start - end`` (0 when
    one state follows the other directly, e.g. an overlap begins)."""
    present = [(i, c) for i, c in enumerate(lines) if c is not None]
    norm = [(i,) + _normalise(c) for i, c in present]
    t = np.sort(np.concatenate([np.zeros(1, np.int64)] + [tg.astype(np.int64) for _, _, tg in norm]), kind="stable")
    if len(t) > 1:
        t = t[np.concatenate(([True], t[1:] != t[:-1]))]
    t = t[t < n_samples]
    state = np.zeros(len(t), np.int64)
    for i, init, tg in norm:
        state |= ((init ^ (np.searchsorted(tg, t, side="right") & 1)) & 1).astype(np.int64) << i
    bounds = np.concatenate((t, [n_samples]))
    keep = np.concatenate(([True], state[1:] != state[:-1])) if len(state) else np.zeros(0, bool)
    starts, state = bounds[:-1][keep], state[keep]
    ends = np.concatenate((starts[1:], [n_samples]))
    on = state != 0
    s_on, e_on, st_on = starts[on], ends[on], state[on]
    diff = st_on[1:] != st_on[:-1]
    return e_on[:-1][diff], s_on[1:][diff], st_on[:-1][diff], st_on[1:][diff]


def _state_name(mask: int) -> str:
    return "+".join(name for i, name in enumerate(("POS", "NEG", "RECOVERY")) if mask >> i & 1)


def _follow_gaps(x: _Intervals, y: _Intervals) -> np.ndarray:
    """For each complete interval of x: samples from its end to the next start of y."""
    ends = x.ends[~x.cut_end]
    j = np.searchsorted(y.starts, ends, side="left")
    ok = j < len(y.starts)
    return y.starts[j[ok]] - ends[ok]


def _detect_polarity(neg: _Intervals, pos: _Intervals) -> str | None:
    """Phase 2 follows phase 1 after the interphase gap, which is shorter than the gap from phase 2 to
    the next pulse: the orientation with the smaller median follow-gap is the pulse order (robust to a
    capture that starts mid-pulse)."""
    if not len(neg) and not len(pos):
        return None
    if not len(pos):
        return "cathodic-first"
    if not len(neg):
        return "anodic-first"
    if not neg.cut_start.any() and not pos.cut_start.any():
        # both lines low at the capture start: the first rising edge is a phase 1 (unless the capture began
        # inside an interphase gap, which the follow-gap rule below handles only when the gap is shorter)
        if neg.starts[0] != pos.starts[0]:
            first_is_neg = neg.starts[0] < pos.starts[0]
            g_np, g_pn = _follow_gaps(neg, pos), _follow_gaps(pos, neg)
            # the capture began in an interphase gap: the first line's first interval is a lone phase 2.
            # Edges alternate, so first->second follow-gaps outnumber second->first ones only when the
            # capture also ends on the second line; equal counts (a lone phase 2 at the start, or a cut
            # at the end) are ambiguous and left to the follow-gap rule below.
            lone = (len(g_pn) >= len(g_np)) if first_is_neg else (len(g_np) >= len(g_pn))
            if not lone:
                return "cathodic-first" if first_is_neg else "anodic-first"
    g_np, g_pn = _follow_gaps(neg, pos), _follow_gaps(pos, neg)
    if len(g_np) and len(g_pn) and np.median(g_np) != np.median(g_pn):
        return "cathodic-first" if np.median(g_np) < np.median(g_pn) else "anodic-first"
    if len(g_np) != len(g_pn):
        return "cathodic-first" if len(g_np) > len(g_pn) else "anodic-first"
    return "cathodic-first" if neg.starts[0] <= pos.starts[0] else "anodic-first"


def _shape_name(shape: Any) -> str:
    """``"triphasic"`` for 1 / "triphasic", else ``"biphasic"`` (None, 0, "biphasic"); ValueError otherwise."""
    if shape is None:
        return "biphasic"
    s = str(shape).strip().lower()
    if s in ("0", "biphasic"):
        return "biphasic"
    if s in ("1", "triphasic"):
        return "triphasic"
    raise ValueError(f"unknown shape {shape!r} (biphasic or triphasic)")


def _polarity_name(p: Any) -> str | None:
    if p is None:
        return None
    s = str(p).lower()
    if s in ("0", "cathodic", "cathodic-first", "cathodic_first", "neg", "negative"):
        return "cathodic-first"
    if s in ("1", "anodic", "anodic-first", "anodic_first", "pos", "positive"):
        return "anodic-first"
    raise ValueError(f"unknown polarity {p!r}")


@dataclass
class Stat:
    """min/mean/max/std of a measure, in samples (``*_us`` converts)."""

    n: int
    min: float | None
    mean: float | None
    max: float | None
    std: float | None

    @classmethod
    def of(cls, values: np.ndarray) -> "Stat":
        if len(values) == 0:
            return cls(0, None, None, None, None)
        v = values.astype(np.float64)
        return cls(len(v), float(v.min()), float(v.mean()), float(v.max()), float(v.std()))

    def scaled(self, k: float) -> dict[str, float | None]:
        f = (lambda x: None if x is None else x * k)
        return {"min": f(self.min), "mean": f(self.mean), "max": f(self.max), "std": f(self.std)}


@dataclass
class Pulses:
    """Per-pulse sample indices (arrays of equal length, one entry per phase-1 interval); -1 = absent."""

    start: np.ndarray  # phase-1 start
    phase1_end: np.ndarray
    phase2_start: np.ndarray
    phase2_end: np.ndarray
    recovery_start: np.ndarray
    recovery_end: np.ndarray
    complete: np.ndarray  # bool
    truncated: np.ndarray  # bool: phase 1 without phase 2 before the next phase 1 / capture end
    cut_end: np.ndarray  # bool: cut by the capture end
    cut_start: np.ndarray  # bool: began before the capture
    # triphasic only (else None): the first flank [start, end); phase 2 above is the second flank
    flank1_start: np.ndarray | None = None
    flank1_end: np.ndarray | None = None

    def pulse_start(self) -> np.ndarray:
        """Pulse start: the first flank's start (triphasic), else the phase-1 start."""
        return self.start if self.flank1_start is None else self.flank1_start

    def end(self) -> np.ndarray:
        """Pulse end (recovery end if there is a recovery, else phase-2 end)."""
        return np.where(self.recovery_end >= 0, self.recovery_end, self.phase2_end)


@dataclass
class Report:
    samplerate_hz: float
    n_samples: int
    channel: int
    polarity: str | None
    exact: bool
    tolerance_samples: float  # base width tolerance (0.5 = exact to the sample, 1 = ±1 sample)
    clock_ppm: float
    pulses: Pulses
    stats: dict[str, Stat]
    values: dict[str, np.ndarray]  # raw per-pulse measures in samples (complete pulses)
    overlaps: tuple[np.ndarray, np.ndarray]
    incomplete: dict[str, Any]
    bursts: dict[str, Any]
    train: dict[str, Any]
    trigger: dict[str, Any]
    sync_errors: int
    dead_time: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    expected: dict[str, Any] = field(default_factory=dict)
    # DAC bus (issue 13): phase-1 amplitude of every complete pulse in µA (None = the capture does not
    # show the DAC's value then; the whole list is None when the capture has no DAC lines), and the
    # decoder's findings (see :func:`_check_dac`)
    amplitude_ua: list[float | None] | None = None
    dac: dict[str, Any] = field(default_factory=dict)
    shape: str = "biphasic"  # "triphasic" when the expected parameters said so (TRIPHASIC_KEYS measured)
    # custom sequence (expected ``onsets_us`` / ``amplitudes_ua``): see :func:`_check_sequence`; {} otherwise
    sequence: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def n_pulses(self) -> int:
        return int(self.pulses.complete.sum())

    def us(self, samples: float) -> float:
        return samples * 1e6 / self.samplerate_hz

    def stat_us(self, name: str) -> dict[str, float | None]:
        return self.stats[name].scaled(1e6 / self.samplerate_hz)

    def to_json(self) -> dict[str, Any]:
        k = 1e6 / self.samplerate_hz
        ov_s, ov_e = self.overlaps
        out: dict[str, Any] = {
            "ok": self.ok,
            "failures": list(self.failures),
            "samplerate_hz": self.samplerate_hz,
            "n_samples": self.n_samples,
            "duration_us": self.n_samples * k,
            "channel": self.channel,
            "polarity": self.polarity,
            "exact": self.exact,
            "tolerance_samples": self.tolerance_samples,
            "clock_ppm": self.clock_ppm,
            "pulses": self.n_pulses,
        }
        if self.shape != "biphasic":
            out["shape"] = self.shape
        for name in WIDTH_KEYS + tuple(x for x in TRIPHASIC_KEYS if x in self.stats):
            out[f"{name}_us"] = self.stats[name].scaled(k)
            out[f"{name}_samples"] = self.stats[name].scaled(1.0)
        out["overlaps"] = {
            "count": int(len(ov_s)),
            "times_us": [float(x) * k for x in ov_s[:_MAX_LISTED]],
            "samples": [int(x) for x in ov_s[:_MAX_LISTED]],
            "durations_samples": [int(x) for x in (ov_e - ov_s)[:_MAX_LISTED]],
        }
        out["incomplete"] = self.incomplete
        out["bursts"] = self.bursts
        out["train"] = self.train
        out["trigger_latency_cycles"] = self.trigger.get("latency_cycles")
        out["trigger_latency_us"] = self.trigger.get("latency_us")
        out["trigger"] = self.trigger
        out["sync_errors"] = self.sync_errors
        out["dead_time"] = self.dead_time
        # the per-pulse lists of a sequence are the file's: counted here, compared in "sequence"
        out["expected"] = {k: (len(v) if k in SEQUENCE_LIST_KEYS and v is not None else v)
                           for k, v in self.expected.items()}
        out["amplitude_ua"] = self.amplitude_ua
        out["dac"] = self.dac
        if self.sequence:
            out["sequence"] = self.sequence
        return out

    def to_json_text(self, indent: int = 2) -> str:
        return json.dumps(self.to_json(), indent=indent)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"{'OK' if self.ok else 'FAIL'}: {self.n_pulses} pulses at {self.samplerate_hz / 1e6:g} MS/s"
                 f" ({self.polarity or '?'}), overlaps {len(self.overlaps[0])},"
                 f" incomplete {self.incomplete['truncated']} truncated / {self.incomplete['cut_by_capture_end']} cut"]
        for name in ("phase1", "interphase", "phase2", "recovery", "period", "burst_gap") + \
                tuple(x for x in TRIPHASIC_KEYS if x in self.stats):
            st = self.stats[name]
            if st.n:
                s = self.stat_us(name)
                lines.append(f"  {name:<11} min {s['min']:.3f}  mean {s['mean']:.3f}  max {s['max']:.3f}"
                             f"  std {s['std']:.4f} µs  (n={st.n})")
        dt = self.dead_time
        if dt.get("transitions"):
            lines.append(f"  dead time   min idle {dt['min_idle_us']:.3f} µs between drive states"
                         f" (required {dt['required_us']:g} µs, {dt['transitions']} transitions)")
        d = self.dac
        if d.get("checked"):
            amps = [a for a in (self.amplitude_ua or []) if a is not None]
            rng = f"{min(amps):g}..{max(amps):g} µA" if amps else "unknown"
            lines.append(f"  DAC         {d['commands']} commands, phase-1 amplitude {rng}, "
                         f"{d['changes_in_pulse']} changes inside a pulse, {d['unbalanced']} unbalanced pulses, "
                         f"{d['malformed']} malformed frames")
        if d.get("settle", {}).get("short"):
            st = d["settle"]
            lines.append(f"  DAC         note: {st['short']} changes less than {st['required_us']:g} µs (settling) "
                         f"before the phase that uses them, shortest {st['min_us']:.3f} µs")
        if d.get("note"):
            lines.append(f"  DAC         {d['note']}")
        q = self.sequence
        if q:
            worst = q["worst_onset_error_samples"]
            lines.append(f"  sequence    {q['checked']}/{q['expected_pulses']} pulses checked: onsets "
                         f"{'exact to the sample' if q['onset_mismatches'] == 0 and q['exact'] else 'within tolerance' if q['onset_mismatches'] == 0 else str(q['onset_mismatches']) + ' off'}"
                         f" (worst {worst if worst is not None else '-'} samples), amplitudes "
                         f"{q['amplitudes_checked']} checked, {q['amplitude_mismatches']} differ"
                         + (f", {q['amplitudes_unknown']} unknown" if q['amplitudes_unknown'] else ""))
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- analyze
def analyze(trace: Trace, channel: int = 0, expected: Mapping[str, Any] | None = None,
            polarity: Any = None, *, pio_clock_hz: float = PIO_CLOCK_HZ, exact: bool | None = None,
            clock_ppm: float | None = None, trigger: str | None = "auto",
            allow_partial_last_burst: bool = False, dead_time_ns: float = DEAD_TIME_NS) -> Report:
    """Extract and measure every pulse of stimulation ``channel`` in ``trace``.

    ``expected``: values in µs (``phase1_us``, ``interphase_us``, ``phase2_us``, ``recovery_us`` (0 = no
    recovery allowed), ``recovery_gap_us``, ``period_us`` or ``frequency_hz``, ``burst_pulses``,
    ``burst_gap_us`` (end of a burst's last pulse -> next burst's first phase-1 start; not the parameter
    ``interburst``, which runs from the end of the burst's last *period*),
    ``burst_period_us`` (burst start to start), ``bursts`` (count), ``pulses`` (complete pulses),
    ``polarity``, ``trigger_latency_us``, ``trigger_latency_max_cycles``, ``train_delay_us``; a custom
    sequence: ``onsets_us`` (every pulse's onset from the start's origin) and ``amplitudes_ua`` (every pulse's
    phase-1 current after DAC rounding), see :func:`_check_sequence`). Unknown keys
    raise ``ValueError`` (a typo must not silently skip a check).
    ``polarity``: ``"cathodic-first"``/``"anodic-first"`` (or 0/1); ``None`` = detect from the first pulse.
    ``exact``: ``None`` = exact iff the sample rate equals ``pio_clock_hz``. ``clock_ppm``: relative clock
    error allowed for asynchronous captures (default 100 ppm; 0 in exact mode).
    ``trigger``: trace channel of the trigger input, ``"auto"`` (TRIG1 then TRIG2) or ``None``.
    ``dead_time_ns``: least idle between two different drive states (default: the board's
    ``DEAD_TIME_NS``); checked on every capture.
    """
    expected = dict(expected or {})
    unknown = set(expected) - EXPECTED_KEYS
    if unknown:
        raise ValueError(f"unknown expected keys: {sorted(unknown)} (known: {sorted(EXPECTED_KEYS)})")
    if "frequency_hz" in expected and "period_us" not in expected and expected["frequency_hz"]:
        expected["period_us"] = 1e6 / float(expected["frequency_hz"])
    sr = float(trace.samplerate_hz)
    n = int(trace.n_samples)
    if exact is None:
        exact = abs(sr - pio_clock_hz) < 1e-6 * pio_clock_hz
    if clock_ppm is None:
        clock_ppm = 0.0 if exact else 100.0
    tol0 = 0.5 if exact else 1.0
    us_per_sample = 1e6 / sr

    names = channel_names(channel)
    ch = trace.channels
    if names["POS"] not in ch or names["NEG"] not in ch:
        raise KeyError(f"trace has no {names['POS']}/{names['NEG']} (channels: {list(ch)})")
    pos, neg = ch[names["POS"]], ch[names["NEG"]]
    rec = ch.get(names["RECOVERY"])
    sync = ch.get(names["SYNC"])

    failures: list[str] = []

    triphasic = _shape_name(expected.get("shape")) == "triphasic"

    # --- polarity: which line carries phase 1
    want_pol = _polarity_name(polarity if polarity is not None else expected.get("polarity"))
    ip, iN = _intervals(pos, n), _intervals(neg, n)
    if triphasic:  # the main phase's line: one interval per pulse, the flanks' line two
        seen_pol = (None if len(iN) == len(ip) else "cathodic-first" if len(iN) < len(ip) else "anodic-first")
    else:
        seen_pol = _detect_polarity(iN, ip)
    pol = want_pol or seen_pol or "cathodic-first"
    if want_pol and seen_pol and want_pol != seen_pol:
        failures.append(f"polarity: expected {want_pol}, first pulse is {seen_pol}")
    A, B = (iN, ip) if pol == "cathodic-first" else (ip, iN)
    R = _intervals(rec, n)

    # --- pulses: each phase-1 interval, its phase 2 (first B start >= phase-1 end, before the next phase 1)
    s, e = A.starts, A.ends
    big = np.iinfo(np.int64).max
    nxt = np.concatenate((s[1:], [big])) if len(s) else s
    nB = len(B)
    j = np.searchsorted(B.starts, e, side="left")
    jj = np.minimum(j, max(nB - 1, 0))
    if nB:
        has_b = (j < nB) & (B.starts[jj] < nxt) & ~A.cut_end
    else:
        has_b = np.zeros(len(s), bool)
    p2s = np.where(has_b, B.starts[jj] if nB else -1, -1)
    p2e = np.where(has_b, B.ends[jj] if nB else -1, -1)
    b_cut = has_b & (B.cut_end[jj] if nB else False)
    # recovery: first RECOVERY start >= phase-2 end, before the next phase 1
    nR = len(R)
    k = np.searchsorted(R.starts, p2e, side="left")
    kk = np.minimum(k, max(nR - 1, 0))
    if nR:
        has_r = has_b & ~b_cut & (k < nR) & (R.starts[kk] < nxt)
    else:
        has_r = np.zeros(len(s), bool)
    rs = np.where(has_r, R.starts[kk] if nR else -1, -1)
    re_ = np.where(has_r, R.ends[kk] if nR else -1, -1)
    r_cut = has_r & (R.cut_end[kk] if nR else False)

    cut_start = A.cut_start.copy()
    f1s = f1e = None
    if triphasic:
        # the first flank: the last phase-2-line interval that ends at or before the main phase's start,
        # after the previous pulse's end (its second flank; its main phase when it has none): else a
        # main phase without its first flank would take the previous pulse's second flank as its own
        prev_end = np.where(has_b, p2e, e)
        prev = np.concatenate(([-1], prev_end[:-1])) if len(s) else s
        jf = np.searchsorted(B.ends, s, side="right") - 1
        jfc = np.maximum(jf, 0)
        has_f1 = (jf >= 0) & (B.starts[jfc] >= prev) if nB else np.zeros(len(s), bool)
        f1s = np.where(has_f1, B.starts[jfc] if nB else -1, -1)
        f1e = np.where(has_f1, B.ends[jfc] if nB else -1, -1)
        f1_cut = has_f1 & (B.cut_start[jfc] if nB else False)
        # a main phase without a first flank: the capture began inside the pulse (first one) or a
        # malformed pulse (counted as truncated below)
        first = np.zeros(len(s), bool)
        if len(s):
            first[0] = True
        cut_start |= f1_cut | (~has_f1 & first)
        has_b = has_b & (has_f1 | first)
    complete = has_b & ~b_cut & ~r_cut & ~cut_start
    # a phase 1 without phase 2: cut by the capture end if the capture ended before phase 2 could start
    no_b = ~has_b & ~cut_start & ~A.cut_end
    is_last = np.zeros(len(s), bool)
    if len(s):
        is_last[-1] = True
    if "interphase_us" in expected:
        max_gap = expected["interphase_us"] / us_per_sample + tol0 + 1
    else:
        ig = (p2s - e)[complete]
        max_gap = float(ig.max()) + tol0 + 1 if len(ig) else float("inf")
    ran_out = no_b & is_last & ((n - e) <= max_gap)
    cut_end = (A.cut_end | b_cut | r_cut | ran_out) & ~cut_start
    truncated = no_b & ~ran_out
    if triphasic:
        truncated |= ~has_f1 & ~cut_start
        complete &= ~truncated
    pulses = Pulses(s, e, p2s, p2e, rs, re_, complete, truncated, cut_end, cut_start, f1s, f1e)

    # orphans: phase-2 (or recovery) intervals that belong to no pulse
    matched_b = np.zeros(nB, bool)
    if nB:
        matched_b[jj[has_b]] = True
        if triphasic:
            matched_b[jfc[has_f1]] = True
    orphan_b = ~matched_b & ~B.cut_start
    matched_r = np.zeros(nR, bool)
    if nR:
        matched_r[kk[has_r]] = True
    orphan_r = ~matched_r & ~R.cut_start

    # --- measures (complete pulses)
    c = complete
    values: dict[str, np.ndarray] = {
        "phase1": (e - s)[c],
        "interphase": (p2s - e)[c],
        "phase2": (p2e - p2s)[c],
        "recovery": (re_ - rs)[c & has_r],
        "recovery_gap": (rs - p2e)[c & has_r],
    }
    ps = pulses.pulse_start()
    if triphasic:
        assert f1s is not None and f1e is not None
        values["flank1"] = (f1e - f1s)[c]
        values["flank2"] = (p2e - p2s)[c]
        values["interphase1"] = (s - f1e)[c]
        values["phase2"] = values["flank1"] + values["flank2"]
    starts_c = ps[c]
    ends_c = pulses.end()[c]
    d = np.diff(starts_c)
    exp_period = expected.get("period_us")
    if exp_period:
        thr = 1.5 * exp_period / us_per_sample
        # with an expected burst structure, split midway between the period and the expected spacing from
        # a burst's last pulse start to the next burst's first (it may be < 1.5 periods)
        bp = expected.get("burst_pulses")
        gap_exp = None
        if bp and expected.get("burst_period_us"):
            gap_exp = float(expected["burst_period_us"]) - (int(bp) - 1) * float(exp_period)
        elif bp and expected.get("burst_gap_us") is not None and all(
                expected.get(key) is not None for key in ("phase1_us", "interphase_us", "phase2_us")):
            gap_exp = float(expected["burst_gap_us"]) + sum(
                float(expected.get(key) or 0)
                for key in ("phase1_us", "interphase_us", "phase2_us", "recovery_gap_us", "recovery_us"))
        if gap_exp is not None and gap_exp / us_per_sample > exp_period / us_per_sample + 4 * tol0 + 2:
            thr = (gap_exp + exp_period) / 2 / us_per_sample
    elif len(d):
        thr = 1.5 * float(d.min()) + tol0
    else:
        thr = float("inf")
    split = d > thr
    burst_id = np.concatenate(([0], np.cumsum(split))) if len(starts_c) else np.zeros(0, np.int64)
    sizes = np.bincount(burst_id) if len(burst_id) else np.zeros(0, np.int64)
    first_idx = np.concatenate(([0], np.flatnonzero(split) + 1)) if len(starts_c) else np.zeros(0, np.int64)
    last_idx = np.concatenate((np.flatnonzero(split), [len(starts_c) - 1])) if len(starts_c) else first_idx
    if expected.get("burst_pulses") or (not exp_period and split.any()):
        values["period"] = d[~split]
        values["burst_gap"] = starts_c[first_idx[1:]] - ends_c[last_idx[:-1]]
        values["burst_period"] = np.diff(starts_c[first_idx])
    else:
        values["period"] = d
        values["burst_gap"] = np.zeros(0, np.int64)
        values["burst_period"] = np.zeros(0, np.int64)

    # --- SYNC: high from phase-1 start to phase-2 end
    sync_errors = 0
    if sync is not None and c.any():
        S = _intervals(sync, n)
        if len(S):
            m = np.searchsorted(S.starts, starts_c, side="right") - 1
            mm = np.maximum(m, 0)
            valid = m >= 0
            values["sync_start"] = np.where(valid, S.starts[mm] - starts_c, big)
            values["sync_end"] = np.where(valid, S.ends[mm] - p2e[c], big)
            tol_sync = tol0 if not exact else 0.5
            bad = ~valid | (np.abs(values["sync_start"]) > tol_sync) | (np.abs(values["sync_end"]) > tol_sync)
            sync_errors = int(bad.sum())
            values["sync_start"] = values["sync_start"][valid]
            values["sync_end"] = values["sync_end"][valid]
        else:
            sync_errors = int(c.sum())
        if sync_errors:
            failures.append(f"SYNC: {sync_errors} pulses without SYNC high exactly from "
                            f"{'the first flank' if triphasic else 'phase-1'} start to "
                            f"{'the second flank' if triphasic else 'phase-2'} end")
    width_keys = WIDTH_KEYS + (TRIPHASIC_KEYS if triphasic else ())
    for key in width_keys:
        values.setdefault(key, np.zeros(0, np.int64))
    stats = {key: Stat.of(values[key]) for key in width_keys}

    # --- overlaps (safety)
    ov = both_high(pos, neg, n)
    if len(ov[0]):
        failures.append(f"OVERLAP: POS and NEG both high {len(ov[0])} times, first at sample {int(ov[0][0])} "
                        f"({ov[0][0] * us_per_sample:.3f} µs) for {int(ov[1][0] - ov[0][0])} samples")

    # --- dead time (safety): idle between two different drive states
    t_end, t_start, st_a, st_b = drive_transitions([pos, neg, rec], n)
    idle = t_start - t_end
    dead_s = float(dead_time_ns) * sr / 1e9
    dead_tol = tol0 + clock_ppm * 1e-6 * dead_s + 1e-9
    short = idle < dead_s - dead_tol
    dead_time = {
        "required_us": float(dead_time_ns) / 1000,
        "tolerance_samples": dead_tol,
        "transitions": int(len(idle)),
        "min_idle_us": float(idle.min()) * us_per_sample if len(idle) else None,
        "violations": int(short.sum()),
        "violation_times_us": [float(x) * us_per_sample for x in t_end[short][:_MAX_LISTED]],
    }
    if short.any():
        i = int(np.flatnonzero(short)[0])
        failures.append(f"DEAD TIME: {int(short.sum())} transitions between different drive states with less than "
                        f"{float(dead_time_ns) / 1000:g} µs idle, first {_state_name(int(st_a[i]))} -> "
                        f"{_state_name(int(st_b[i]))} at {t_end[i] * us_per_sample:.3f} µs after "
                        f"{int(idle[i])} samples ({idle[i] * us_per_sample:.3f} µs)")

    def tlist(mask: np.ndarray) -> list[float]:
        return [float(x) * us_per_sample for x in s[mask][:_MAX_LISTED]]

    incomplete = {
        "truncated": int(truncated.sum()),
        "truncated_times_us": tlist(truncated),
        "cut_by_capture_end": int(cut_end.sum()),
        "cut_by_capture_end_times_us": tlist(cut_end),
        "cut_by_capture_start": int(cut_start.sum()) + int(B.cut_start.sum() and not A.cut_start.sum()),
        "orphan_phase2": int(orphan_b.sum()),
        "orphan_phase2_times_us": [float(x) * us_per_sample for x in B.starts[orphan_b][:_MAX_LISTED]],
        "orphan_recovery": int(orphan_r.sum()),
    }
    if incomplete["truncated"]:
        failures.append(f"INCOMPLETE: {incomplete['truncated']} pulses with phase 1 but no phase 2, first at "
                        f"{incomplete['truncated_times_us'][0]:.3f} µs")
    if incomplete["orphan_phase2"]:
        failures.append(f"INCOMPLETE: {incomplete['orphan_phase2']} phase-2 intervals without a phase 1, first at "
                        f"{incomplete['orphan_phase2_times_us'][0]:.3f} µs")
    if incomplete["orphan_recovery"]:
        failures.append(f"RECOVERY: {incomplete['orphan_recovery']} RECOVERY intervals not after a phase 2")

    bursts = {
        "count": int(len(sizes)),
        "pulses_per_burst": {"min": int(sizes.min()) if len(sizes) else None,
                             "max": int(sizes.max()) if len(sizes) else None},
        "sizes": [int(x) for x in sizes[:_MAX_LISTED]],
        "starts_us": [float(x) * us_per_sample for x in starts_c[first_idx][:_MAX_LISTED]],
        "split_threshold_us": None if thr == float("inf") else thr * us_per_sample,
    }
    train = {
        "start_us": float(starts_c[0]) * us_per_sample if len(starts_c) else None,
        "end_us": float(ends_c[-1]) * us_per_sample if len(ends_c) else None,
        "duration_us": float(ends_c[-1] - starts_c[0]) * us_per_sample if len(starts_c) else None,
    }

    # --- trigger latency: TRIG rising edge -> first phase-1 start at or after it
    trig: dict[str, Any] = {"channel": None, "latency_samples": None, "latency_cycles": None, "latency_us": None}
    tname = None
    if trigger == "auto":
        for cand in ("TRIG1", "TRIG2"):
            if cand in ch and len(_intervals(ch[cand], n).starts[~_intervals(ch[cand], n).cut_start]):
                tname = cand
                break
    elif trigger:
        tname = trigger if trigger in ch else None
        if tname is None:
            failures.append(f"trigger channel {trigger!r} not in trace")
    if tname is not None:
        ti = _intervals(ch[tname], n)
        rises = ti.starts[~ti.cut_start]
        all_starts = ps[~cut_start]
        if len(rises):
            q = np.searchsorted(all_starts, rises[0], side="left")
            trig["channel"] = tname
            trig["edge_us"] = float(rises[0]) * us_per_sample
            if q < len(all_starts):
                lat = int(all_starts[q] - rises[0])
                trig["latency_samples"] = lat
                trig["latency_cycles"] = lat * pio_clock_hz / sr if not exact else lat
                trig["latency_us"] = lat * us_per_sample

    # --- comparisons with expected values
    def tol_for(exp_samples: float) -> float:
        return tol0 + clock_ppm * 1e-6 * abs(exp_samples) + 1e-9

    def check(key: str, name: str) -> None:
        if key not in expected or expected[key] is None:
            return
        exp_s = float(expected[key]) / us_per_sample
        v = values[name]
        tol = tol_for(exp_s)
        if len(v) == 0:
            if name in ("burst_gap", "burst_period", "period") and n_complete <= 1:
                return
            failures.append(f"{name}: expected {expected[key]} µs but nothing measured")
            return
        bad = np.abs(v - exp_s) > tol
        if bad.any():
            idx = int(np.flatnonzero(bad)[0])
            failures.append(
                f"{name}: {int(bad.sum())}/{len(v)} outside {expected[key]} µs ± {tol * us_per_sample:.4g} µs "
                f"(measured {v.min() * us_per_sample:.4f}..{v.max() * us_per_sample:.4f} µs; first bad #{idx}: "
                f"{v[idx] * us_per_sample:.4f} µs = {int(v[idx])} samples vs {exp_s:.2f})")

    n_complete = int(c.sum())
    if n_complete == 0 and expected.get("pulses", None) != 0:
        failures.append("no complete pulse found")
    if triphasic:
        if expected.get("flank_us") is None and expected.get("phase2_us") is not None:
            expected["flank_us"] = float(expected["phase2_us"]) / 2
        for name in ("flank1", "flank2"):
            check("flank_us", name)
        check("interphase_us", "interphase1")
    for name in ("phase1", "interphase", "phase2", "recovery_gap", "period", "burst_gap", "burst_period"):
        if not (triphasic and name == "phase2"):  # the flanks are checked one by one above
            check(f"{name}_us", name)
    if "recovery_us" in expected and expected["recovery_us"] is not None:
        if float(expected["recovery_us"]) == 0:
            if len(values["recovery"]):
                failures.append(f"recovery: expected none, found {len(values['recovery'])}")
        else:
            missing = int((c & ~has_r).sum())
            if missing:
                failures.append(f"recovery: {missing}/{n_complete} pulses without RECOVERY")
            check("recovery_us", "recovery")
    if "pulses" in expected and expected["pulses"] is not None and n_complete != int(expected["pulses"]):
        failures.append(f"pulses: expected {int(expected['pulses'])}, found {n_complete}")
    if expected.get("burst_pulses"):
        bp = int(expected["burst_pulses"])
        body = sizes[:-1] if (allow_partial_last_burst and len(sizes)) else sizes
        bad = body != bp
        if allow_partial_last_burst and len(sizes) and sizes[-1] > bp:
            bad = np.concatenate((bad, [True]))
        if bad.any():
            failures.append(f"bursts: expected {bp} pulses per burst, found sizes "
                            f"{sorted(set(int(x) for x in sizes))} ({int(bad.sum())} bursts wrong)")
    if "bursts" in expected and expected["bursts"] is not None and len(sizes) != int(expected["bursts"]):
        failures.append(f"bursts: expected {int(expected['bursts'])} bursts, found {len(sizes)}")
    if tname is None and any(k in expected for k in ("trigger_latency_us", "trigger_latency_max_cycles",
                                                      "train_delay_us")):
        failures.append("trigger: expected a trigger latency but the trace has no trigger edge")
    elif tname is not None:
        lat = trig["latency_samples"]
        if lat is None and any(k in expected for k in ("trigger_latency_us", "trigger_latency_max_cycles")):
            failures.append("trigger: no pulse after the trigger edge")
        if lat is not None:
            if "trigger_latency_us" in expected:
                exp_s = float(expected["trigger_latency_us"]) / us_per_sample
                if abs(lat - exp_s) > tol_for(exp_s):
                    failures.append(f"trigger latency: {lat * us_per_sample:.4f} µs, expected "
                                    f"{expected['trigger_latency_us']} µs")
            if "trigger_latency_max_cycles" in expected:
                delay_cycles = float(expected.get("train_delay_us", 0)) * 1e-6 * pio_clock_hz
                over = trig["latency_cycles"] - delay_cycles
                slack = 0 if exact else pio_clock_hz / sr  # one sample of the analyzer
                if over > float(expected["trigger_latency_max_cycles"]) + slack + 1e-9:
                    failures.append(f"trigger latency: {over:.1f} PIO cycles beyond the train delay, max "
                                    f"{expected['trigger_latency_max_cycles']}")

    # --- DAC bus (issue 13): amplitude per pulse, no change inside a pulse, balance after DAC rounding
    flanks1 = None if f1s is None or f1e is None else (f1s[c], f1e[c])
    amplitude_ua, dac = _check_dac(trace, channel, pol, pos, neg, s[c], e[c], p2s[c], p2e[c], us_per_sample,
                                   0.0 if exact else tol0, clock_ppm, failures, flanks1)
    seq = _check_sequence(expected, starts_c, amplitude_ua, us_per_sample, bool(exact), tol0, clock_ppm, failures)

    return Report(samplerate_hz=sr, n_samples=n, channel=channel, polarity=pol if (seen_pol or want_pol) else None,
                  exact=bool(exact), tolerance_samples=tol0, clock_ppm=float(clock_ppm), pulses=pulses,
                  stats=stats, values=values, overlaps=ov, incomplete=incomplete, bursts=bursts, train=train,
                  trigger=trig, sync_errors=sync_errors, dead_time=dead_time, failures=failures,
                  expected=dict(expected), amplitude_ua=amplitude_ua, dac=dac,
                  shape="triphasic" if triphasic else "biphasic", sequence=seq)


def _check_sequence(expected: Mapping[str, Any], starts: np.ndarray, amplitude_ua: list[float | None] | None,
                    us_per_sample: float, exact: bool, tol0: float, clock_ppm: float,
                    failures: list[str]) -> dict[str, Any]:
    """A custom sequence's per-pulse checks (``expected["onsets_us"]``, ``expected["amplitudes_ua"]``);
    appends to ``failures``; {} when neither is expected.

    Time origin: the capture has no mark of the start itself (a logic analyzer sees the pins), so the
    first complete pulse in the capture is taken as pulse 0 and placed at the file's first onset:
    measured onset k = (start of pulse k - start of pulse 0) + ``onsets_us[0]``. Every later onset is
    then compared with the file's onset k (``onsets_us``: absolute onsets from the start's origin, cycle
    c of a loop adding c cycles): exact to the sample (= to the tick on the virtual Pico, one sample per
    PIO tick) in exact mode, else within the width tolerance (±1 sample plus ``clock_ppm`` of the span).
    An error in the first onset itself (the start -> first pulse delay) is not visible this way.

    Amplitudes: pulse k's phase-1 amplitude decoded from the DAC bus must equal ``amplitudes_ua[k]``
    (the file's value after the firmware's DAC rounding, computed by the caller) within 1 nA; a pulse
    whose amplitude the capture does not show (None: the DAC was written before the capture began) is
    counted as unknown, not compared. More complete pulses than expected onsets is a failure; fewer is
    one only through ``expected["pulses"]`` (a run window may end early)."""
    onsets = expected.get("onsets_us")
    amps = expected.get("amplitudes_ua")
    if onsets is None and amps is None:
        return {}
    n_meas = int(len(starts))
    out: dict[str, Any] = {"exact": exact, "checked": 0, "onset_mismatches": 0,
                           "worst_onset_error_samples": None, "worst_onset_error_us": None,
                           "first_onset_mismatch": None, "onsets_us": None,
                           "amplitudes_checked": 0, "amplitude_mismatches": 0, "amplitudes_unknown": 0,
                           "first_amplitude_mismatch": None}
    n_exp = len(onsets) if onsets is not None else len(amps or [])
    out["expected_pulses"] = n_exp
    if n_meas > n_exp:
        failures.append(f"sequence: {n_meas} complete pulses in the capture, the sequence has {n_exp}")
    if onsets is not None and len(onsets) and n_meas:
        m = min(n_meas, len(onsets))
        exp_us = np.asarray(onsets[:m], dtype=np.float64)
        exp_rel = (exp_us - exp_us[0]) / us_per_sample  # samples from pulse 0
        meas_rel = (starts[:m] - starts[0]).astype(np.int64)
        err = meas_rel - exp_rel
        tol = tol0 + clock_ppm * 1e-6 * np.abs(exp_rel) + 1e-9
        bad = np.abs(err) > tol
        worst = float(np.abs(err).max()) if m else 0.0
        out["checked"] = m
        out["onset_mismatches"] = int(bad.sum())
        # exact mode: the nearest whole sample of the expected onset must be the measured one
        out["worst_onset_error_samples"] = int(np.abs(np.rint(err)).max()) if exact else worst
        out["worst_onset_error_us"] = float(np.abs(np.rint(err) if exact else err).max()) * us_per_sample
        out["onsets_us"] = [float(x) for x in meas_rel * us_per_sample + float(onsets[0])]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            out["first_onset_mismatch"] = {"pulse": i, "expected_us": float(onsets[i]),
                                           "measured_us": out["onsets_us"][i],
                                           "error_samples": float(err[i])}
            failures.append(f"sequence onsets: {int(bad.sum())}/{m} pulses off the file's onsets (origin: pulse 0 "
                            f"at {float(onsets[0]):g} µs), first #{i}: {out['onsets_us'][i]:.4f} µs vs "
                            f"{float(onsets[i]):.4f} µs ({float(err[i]):+.1f} samples)")
    if amps is not None and amplitude_ua is None:
        out["amplitude_note"] = "the capture has no DAC lines: amplitudes not checked"
    elif amps is not None and n_meas:
        m = min(n_meas, len(amps), len(amplitude_ua or []))
        meas = amplitude_ua[:m] if amplitude_ua is not None else []
        known = np.array([a is not None for a in meas], bool)
        got = np.array([a if a is not None else np.nan for a in meas], np.float64)
        want = np.asarray(amps[:m], dtype=np.float64)
        bad = known & (np.abs(got - want) > 1e-3)
        out["amplitudes_checked"] = int(known.sum())
        out["amplitudes_unknown"] = int((~known).sum())
        out["amplitude_mismatches"] = int(bad.sum())
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            out["first_amplitude_mismatch"] = {"pulse": i, "expected_ua": float(want[i]), "measured_ua": float(got[i])}
            failures.append(f"sequence amplitudes: {int(bad.sum())}/{int(known.sum())} pulses differ from the file "
                            f"after DAC rounding, first #{i}: {got[i]:g} µA vs {want[i]:g} µA")
    return out


def _check_dac(trace: Trace, channel: int, pol: str, pos: Channel, neg: Channel, s: np.ndarray, e: np.ndarray,
               p2s: np.ndarray, p2e: np.ndarray, us_per_sample: float, slack: float, clock_ppm: float,
               failures: list[str], flanks1: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[list[float | None] | None, dict[str, Any]]:
    """The DAC checks of one channel, from the decoded bus (:mod:`.dac`); appends to ``failures``.

    ``s, e, p2s, p2e``: phase-1 and phase-2 [start, end) of the complete pulses. ``slack``: how far a
    measured width may be from the true one in samples (0 when one sample is one PIO tick), plus
    ``clock_ppm`` of it.

    * SPI: every chip-select frame the capture has must be 16 bits (a malformed frame: the DAC ignores it).
    * No output of the channel's DAC may change while its POS or NEG is high.
    * Phase-1 current (the output of phase 1's direction: B = NEG, A = POS) x phase-1 width against
      phase-2 current x phase-2 width, in DAC codes x samples: the firmware's phase-2 code is the best
      integer, so they differ by at most half an LSB over phase 2 (one LSB when phase 2 is clamped to
      the 1-LSB floor, ``pulse_engine.balance_code``/``residual_fc``), plus the measurement slack of
      both widths times their codes.

    Triphasic (``flanks1`` = the first flanks' [start, end); ``s, e`` the main phases, ``p2s, p2e`` the
    second flanks): no output change from a pulse's first-flank start to its second-flank end (the gaps
    too), the flank current read at both flanks must be the same code (one output), and the balance
    is main current x main width against flank current x (flank 1 + flank 2) widths.

    Without SCK, MOSI and the channel's CS the checks are skipped with a note (not failed)."""
    need = (dacbus.SCK, dacbus.MOSI, dacbus.cs_name(channel))
    absent = [name for name in need if name not in trace.channels]
    if absent:
        return None, {"checked": False, "note": "the capture has no DAC lines (%s): DAC checks skipped"
                      % ", ".join(absent)}
    bus = dacbus.decode_bus(trace)
    out_a, out_b = bus.outputs[channel]
    info: dict[str, Any] = {"checked": True, "note": None if bus.ldac else "no LDAC line: taken as held low",
                            "cs": dacbus.cs_name(channel)}
    fr = bus.frames[channel]
    info["commands"] = int(fr.ok.sum())
    info["frames_cut"] = int(fr.cut)

    bad = bus.malformed()
    info["malformed"] = len(bad)
    info["malformed_frames"] = [dict(m, time_us=m["end"] * us_per_sample) for m in bad[:_MAX_LISTED]]
    if bad:
        m = bad[0]
        failures.append(f"DAC SPI: {len(bad)} malformed frames (not {dacbus.FRAME_BITS} bits), first on {m['cs']} "
                        f"with {m['bits']} bits, CS rising at {m['end'] * us_per_sample:.3f} µs")

    # outputs changing while a drive pin is high
    ch_a, ch_b = out_a.changes(), out_b.changes()
    t_ch = np.concatenate((ch_a, ch_b))
    which = np.concatenate((np.zeros(len(ch_a), np.int64), np.ones(len(ch_b), np.int64)))
    order = np.argsort(t_ch, kind="stable")
    t_ch, which = t_ch[order], which[order]
    on_pos = dacbus.levels_at(pos, t_ch) == 1
    on_neg = dacbus.levels_at(neg, t_ch) == 1
    inside = on_pos | on_neg
    in_gap = np.zeros(len(t_ch), bool)
    if flanks1 is not None:  # triphasic: the interphase gaps are inside the pulse as well
        in_gap = dacbus.within(t_ch, flanks1[0], p2e) & ~inside
        inside = inside | in_gap
    info["changes"] = int(len(t_ch))
    info["changes_in_pulse"] = int(inside.sum())
    info["changes_in_pulse_us"] = [float(x) * us_per_sample for x in t_ch[inside][:_MAX_LISTED]]
    if inside.any():
        i = int(np.flatnonzero(inside)[0])
        failures.append(f"DAC CHANGE IN PULSE: {int(inside.sum())} DAC output changes while POS or NEG is on, first "
                        f"output {'AB'[int(which[i])]} of {dacbus.cs_name(channel)} at "
                        f"{t_ch[i] * us_per_sample:.3f} µs while "
                        f"{'POS was high' if on_pos[i] else 'NEG was high' if on_neg[i] else 'in an interphase gap'}")

    # settling: from each change to the next rise of the drive pin that draws on that output (A: POS,
    # B: NEG); the MCP4822 needs board.DAC_SETTLE_NS to reach the new current. A failure: the firmware
    # leaves that time (the start waits for it, updates follow the UPDATE_TICKS idle rule), so a
    # shorter one means a pulse ran at a current that had not settled
    settle = np.full(len(t_ch), np.iinfo(np.int64).max, np.int64)
    for k, line in ((0, pos), (1, neg)):
        rises = line.rising()
        sel = which == k
        j = np.searchsorted(rises, t_ch[sel], side="left")
        ok = j < len(rises)
        vals = np.full(int(sel.sum()), np.iinfo(np.int64).max, np.int64)
        vals[ok] = rises[j[ok]] - t_ch[sel][ok]
        settle[sel] = vals
    used = settle != np.iinfo(np.int64).max
    need = DAC_SETTLE_NS / 1000 / us_per_sample  # samples
    short = used & (settle < need - slack)
    info["settle"] = {"required_us": DAC_SETTLE_NS / 1000,
                      "min_us": float(settle[used].min()) * us_per_sample if used.any() else None,
                      "short": int(short.sum()),
                      "short_times_us": [float(x) * us_per_sample for x in t_ch[short][:_MAX_LISTED]]}
    if short.any():
        failures.append(f"DAC NOT SETTLED: {int(short.sum())} DAC output changes less than "
                        f"{DAC_SETTLE_NS / 1000:g} µs before the phase that uses them, shortest "
                        f"{info['settle']['min_us']:.3f} µs, first at {info['settle']['short_times_us'][0]:.3f} µs")

    # per pulse: phase 1 from the output of its direction, phase 2 from the other
    out1, out2 = (out_b, out_a) if pol == "cathodic-first" else (out_a, out_b)
    na1, na2 = out1.at(s), out2.at(p2s)
    c1, c2 = out1.code_at(s), out2.code_at(p2s)
    known = (c1 != dacbus.UNKNOWN) & (c2 != dacbus.UNKNOWN)
    amplitude_ua = [None if x == dacbus.UNKNOWN else int(x) / 1000 for x in na1]
    info["amplitude2_ua"] = [None if x == dacbus.UNKNOWN else int(x) / 1000 for x in na2]
    info["unknown_pulses"] = int((~known).sum())
    if (~known).any():
        info["note"] = "; ".join(x for x in (info["note"], f"{int((~known).sum())} pulses before the capture's "
                                             f"first command of each output: amplitude unknown") if x)
    t1, t2 = (e - s).astype(np.float64), (p2e - p2s).astype(np.float64)
    if flanks1 is not None:
        c2b = out2.code_at(flanks1[0])  # the first flank's code: both flanks share one output
        split = known & (c2b != c2)
        info["flank_codes_differ"] = int(split.sum())
        if split.any():
            i = int(np.flatnonzero(split)[0])
            failures.append(f"DAC FLANKS: {int(split.sum())} triphasic pulses whose two flanks have different "
                            f"currents, first #{i} at {flanks1[0][i] * us_per_sample:.3f} µs (codes "
                            f"{int(c2b[i])}/{int(c2[i])})")
        known = known & (c2b != dacbus.UNKNOWN)
        t2 = t2 + (flanks1[1] - flanks1[0]).astype(np.float64)
    sl1 = slack + clock_ppm * 1e-6 * t1
    sl2 = slack * (2 if flanks1 is not None else 1) + clock_ppm * 1e-6 * t2  # triphasic: two measured flanks
    err = np.abs(c1 * t1 - c2 * t2)
    lsb = np.where(c2 == 1, 1.0, 0.5)
    allow = lsb * (t2 + sl2) + np.abs(c1) * sl1 + np.abs(c2) * sl2 + 1e-9
    unbalanced = known & (err > allow)
    info["unbalanced"] = int(unbalanced.sum())
    info["unbalanced_pulses"] = [int(x) for x in np.flatnonzero(unbalanced)[:_MAX_LISTED]]
    if unbalanced.any():
        i = int(np.flatnonzero(unbalanced)[0])
        failures.append(f"DAC BALANCE: {int(unbalanced.sum())} pulses not charge-balanced after DAC rounding, first "
                        f"#{i} at {s[i] * us_per_sample:.3f} µs: {na1[i] / 1000:g} µA x {t1[i] * us_per_sample:g} µs "
                        f"vs {na2[i] / 1000:g} µA x {t2[i] * us_per_sample:g} µs (codes {int(c1[i])}/{int(c2[i])})")
    return amplitude_ua, info
