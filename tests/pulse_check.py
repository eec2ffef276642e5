"""Every pulse in a trace complete and charge-balanced (for symmetric-phase trains: equal widths).

A pulse is a phase on one drive pin (POS or NEG) immediately answered by a phase of the same width
on the other pin before either pin fires again; the trace must end with both pins low."""

from __future__ import annotations

import numpy as np


def intervals(ch, n_samples):
    t = ch.toggles
    if ch.initial:
        t = np.concatenate([[0], t])
    if len(t) % 2:
        t = np.concatenate([t, [n_samples]])
    return t[0::2], t[1::2]


def check_pulses(trace, suffix="", tolerance=0):
    """Returns (number of complete balanced pulses, list of problems)."""
    pos, neg = trace.channels["POS" + suffix], trace.channels["NEG" + suffix]
    problems = []
    if pos.level_at(trace.n_samples - 1) or neg.level_at(trace.n_samples - 1):
        problems.append("a drive pin is still high at the end of the capture")
    phases = []
    for name, ch in (("POS", pos), ("NEG", neg)):
        starts, ends = intervals(ch, trace.n_samples)
        phases += [(int(s), int(e), name) for s, e in zip(starts, ends)]
    phases.sort()
    pulses = 0
    i = 0
    while i < len(phases):
        s1, e1, p1 = phases[i]
        if i + 1 >= len(phases):
            problems.append("phase at %d has no balancing phase" % s1)
            break
        s2, e2, p2 = phases[i + 1]
        if p2 == p1:
            problems.append("two %s phases in a row at %d, %d" % (p1, s1, s2))
        elif abs((e1 - s1) - (e2 - s2)) > tolerance:
            problems.append("unbalanced pulse at %d: %d vs %d samples" % (s1, e1 - s1, e2 - s2))
        elif s2 < e1:
            problems.append("POS and NEG overlap at %d" % s2)
        else:
            pulses += 1
        i += 2
    return pulses, problems
