"""Electrode model of the virtual Pico: what the ADC would read across the electrode pair.

A Randles-style load: access (series) resistance ``r_series`` in series with the double-layer
capacitance ``c_dl``, optionally shunted by a faradaic leak ``r_faradaic``; the current source cannot
drive the electrodes beyond ``compliance_v``. Faults change the load at a given virtual time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

OPEN_OHM = 1e9  # a broken lead: only leakage remains
SHORT_OHM = 1.0  # touching contacts / a saline bridge


@dataclass
class Fault:
    """A change of the load from ``at_s`` on: kind 'open', 'short', 'drift' (to ``ohms`` over
    ``ramp_s``) or 'intermittent' (open for ``on_s`` out of every ``every_s``)."""

    kind: str
    at_s: float
    ohms: float = 0.0
    ramp_s: float = 1.0
    every_s: float = 0.1
    on_s: float = 0.02


@dataclass
class Electrode:
    r_series: float = 1000.0
    c_dl: float = 10e-6
    r_faradaic: float = math.inf
    compliance_v: float = 12.0
    faults: list[Fault] = field(default_factory=list)

    def series_at(self, t_s: float) -> float:
        """Access resistance at virtual time ``t_s`` with the faults applied."""
        r = self.r_series
        for f in sorted(self.faults, key=lambda f: f.at_s):
            if t_s < f.at_s:
                break
            if f.kind == "open":
                r = OPEN_OHM
            elif f.kind == "short":
                r = SHORT_OHM
            elif f.kind == "drift":
                frac = min(1.0, (t_s - f.at_s) / f.ramp_s) if f.ramp_s > 0 else 1.0
                r = r + (f.ohms - r) * frac
            elif f.kind == "intermittent":
                if (t_s - f.at_s) % f.every_s < f.on_s:
                    r = OPEN_OHM
            else:
                raise ValueError("unknown fault kind %r" % f.kind)
        return r

    def voltage(self, current_a: float, t_pulse_s: float, t_s: float) -> float:
        """Electrode voltage ``t_pulse_s`` into a constant-current phase starting from a discharged
        double layer, clipped at the compliance limit."""
        r = self.series_at(t_s)
        if math.isinf(self.r_faradaic):
            v_dl = current_a * t_pulse_s / self.c_dl
        else:
            tau = self.r_faradaic * self.c_dl
            v_dl = current_a * self.r_faradaic * (1.0 - math.exp(-t_pulse_s / tau))
        v = current_a * r + v_dl
        return max(-self.compliance_v, min(self.compliance_v, v))
