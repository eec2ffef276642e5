"""Electrode model of the virtual Pico: what the ADC would read across the electrode pair.

A Randles-style load: access (series) resistance ``r_series`` in series with the double-layer
capacitance ``c_dl``, optionally shunted by a faradaic leak ``r_faradaic``; the current source cannot
drive the electrodes beyond ``compliance_v``. Faults change the load at a given virtual time.

Command-line syntax (``picostim --virtual --electrode ... --fault ...``; docs/SAFETY.md):

``--electrode R[,c=CAP][,leak=R][,compliance=V][,ch=N]``
    nominal load: ``1k``, ``680``, ``2.2k,c=4.7u``, ``1k,leak=100k``, ``1k,ch=2``. Without ``ch=``
    it applies to every channel.
``--fault KIND[:OHMS]@TIME[,key=value...]``
    ``open@0.5s`` (lead break), ``short@500ms`` (contacts touching), ``drift:10k@2s`` (access
    resistance moves linearly to 10 kΩ over ``ramp=`` (default 1 s) from 2 s on),
    ``intermittent@1s`` (open for ``on=`` (default 20 ms) out of every ``every=`` (default 100 ms)),
    ``ok@3s`` (back to the nominal load: a repaired lead). Keys: ``ch=N`` (default: every channel),
    ``ramp=``, ``every=``, ``on=``. Times take ``s``, ``ms``, ``us`` (bare numbers are seconds);
    ohms take ``k`` / ``M`` and an optional ``ohm`` / ``Ω``. Later faults override earlier ones.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field

from firmware import impedance

OPEN_OHM = 1e9  # a broken lead: only leakage remains
SHORT_OHM = 1.0  # touching contacts / a saline bridge
FAULT_KINDS = ("open", "short", "drift", "intermittent", "ok")


@dataclass
class Fault:
    """A change of the load from ``at_s`` on: kind 'open', 'short', 'drift' (to ``ohms`` over
    ``ramp_s``), 'intermittent' (open for ``on_s`` out of every ``every_s``) or 'ok' (back to the
    nominal load)."""

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
    compliance_v: float = impedance.COMPLIANCE_UV / 1e6
    faults: list[Fault] = field(default_factory=list)

    def series_at(self, t_s: float) -> float:
        """Access resistance at virtual time ``t_s`` with the faults applied (in time order; a
        later fault overrides an earlier one)."""
        r = self.r_series
        for f in sorted(self.faults, key=lambda f: f.at_s):
            if t_s < f.at_s:
                break
            if f.kind == "open":
                r = OPEN_OHM
            elif f.kind == "short":
                r = SHORT_OHM
            elif f.kind == "ok":
                r = self.r_series
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


# ---- command-line syntax ----------------------------------------------------------------------
class SpecError(ValueError):
    """A malformed --electrode / --fault value (the message says what and how to write it)."""


_NUM = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_SCALE = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "n": 1e-9, "p": 1e-12}
_TIME = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def _finite(value: float, text: str) -> float:
    """``1e999`` matches the number pattern but is inf in a float: say so instead of modelling it."""
    if not math.isfinite(value):
        raise SpecError("%r is too large a number" % text)
    return value


def parse_ohms(text: str) -> float:
    """``1k`` -> 1000.0, ``2.2k`` -> 2200.0, ``1M`` -> 1e6, ``470ohm``, ``10kΩ``."""
    m = re.fullmatch(r"(%s)\s*([kKM]?)\s*(?:ohms?|Ω)?" % _NUM, text.strip())
    if not m:
        raise SpecError("%r is not a resistance (e.g. 470, 1k, 2.2k, 1M)" % text)
    return _finite(float(m.group(1)) * _SCALE[m.group(2)], text)


def parse_time(text: str) -> float:
    """``0.5s``, ``500ms``, ``20us``, ``2`` (seconds) -> seconds."""
    m = re.fullmatch(r"(%s)\s*(s|ms|us|µs)?" % _NUM, text.strip())
    if not m:
        raise SpecError("%r is not a time (e.g. 0.5s, 500ms, 20us)" % text)
    return _finite(float(m.group(1)) * _TIME[m.group(2) or ""], text)


def _parse_value(text: str, unit: str) -> float:
    m = re.fullmatch(r"(%s)\s*([kKMmuµnp]?)%s?" % (_NUM, unit), text.strip())
    if not m:
        raise SpecError("%r is not a value in %s" % (text, unit))
    return _finite(float(m.group(1)) * _SCALE[m.group(2)], text)


def _keys(parts: list[str], allowed: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise SpecError("%s: unknown option %r (allowed: %s)" % (what, part, ", ".join(k + "=" for k in allowed)))
        out[key] = value.strip()
    return out


def _channel(keys: dict[str, str], what: str) -> int | None:
    if "ch" not in keys:
        return None
    try:
        ch = int(keys["ch"])
    except ValueError:
        raise SpecError("%s: ch=%r is not a channel number" % (what, keys["ch"])) from None
    if ch < 0:
        raise SpecError("%s: ch=%d is not a channel number" % (what, ch))
    return ch


def parse_fault(text: str) -> tuple[int | None, Fault]:
    """``KIND[:OHMS]@TIME[,key=value...]`` -> (channel or None for every channel, Fault)."""
    what = "--fault %s" % text
    head, *rest = text.split(",")
    m = re.fullmatch(r"\s*([a-z]+)(?::([^@]+))?@(.+)", head)
    if not m:
        raise SpecError("%s: expected KIND[:OHMS]@TIME, e.g. open@0.5s, drift:10k@2s" % what)
    kind, ohms, at = m.group(1), m.group(2), m.group(3)
    if kind not in FAULT_KINDS:
        raise SpecError("%s: unknown fault kind %r (one of %s)" % (what, kind, ", ".join(FAULT_KINDS)))
    keys = _keys(rest, ("ch", "ramp", "every", "on"), what)
    fault = Fault(kind, parse_time(at))
    if kind == "drift":
        if ohms is None:
            raise SpecError("%s: drift needs a target, e.g. drift:10k@2s" % what)
        fault.ohms = parse_ohms(ohms)
    elif ohms is not None:
        raise SpecError("%s: only drift takes a resistance" % what)
    for key, attr, kinds in (("ramp", "ramp_s", ("drift",)), ("every", "every_s", ("intermittent",)),
                             ("on", "on_s", ("intermittent",))):
        if key in keys:
            if kind not in kinds:
                raise SpecError("%s: %s= applies to %s only" % (what, key, "/".join(kinds)))
            setattr(fault, attr, parse_time(keys[key]))
    if kind == "intermittent" and not 0 < fault.on_s < fault.every_s:
        raise SpecError("%s: need 0 < on < every" % what)
    return _channel(keys, what), fault


def parse_electrode(text: str) -> tuple[int | None, dict]:
    """``R[,c=CAP][,leak=R][,compliance=V][,ch=N]`` -> (channel or None, Electrode keyword args)."""
    what = "--electrode %s" % text
    head, *rest = text.split(",")
    keys = _keys(rest, ("c", "leak", "compliance", "ch"), what)
    kw: dict = {"r_series": parse_ohms(head)}
    if "c" in keys:
        kw["c_dl"] = _parse_value(keys["c"], "F")
    if "leak" in keys:
        kw["r_faradaic"] = parse_ohms(keys["leak"])
    if "compliance" in keys:
        kw["compliance_v"] = _parse_value(keys["compliance"], "V")
    if kw.get("c_dl", 1) <= 0 or kw.get("compliance_v", 1) <= 0:
        raise SpecError("%s: values must be positive" % what)
    return _channel(keys, what), kw


def electrodes_from_specs(channels: int, electrode_specs=(), fault_specs=()) -> list[Electrode]:
    """One Electrode per channel from --electrode / --fault strings (a spec without ch= applies to
    every channel; a ch= beyond the board's channels is an error)."""
    kws: list[dict] = [{} for _ in range(channels)]
    for spec in electrode_specs or ():
        ch, kw = parse_electrode(spec)
        for c in _targets(ch, channels, "--electrode " + spec):
            kws[c].update(kw)
    out = [Electrode(**kw) for kw in kws]
    for spec in fault_specs or ():
        ch, fault = parse_fault(spec)
        for c in _targets(ch, channels, "--fault " + spec):
            out[c].faults.append(Fault(**vars(fault)))
    return out


def _targets(ch: int | None, channels: int, spec: str) -> range:
    if ch is None:
        return range(channels)
    if ch >= channels:
        raise SpecError("%s: ch=%d but the virtual Pico has channels 0..%d" % (spec, ch, channels - 1))
    return range(ch, ch + 1)


# ---- the current source: one MCP4822 per channel on the emulated DAC bus ----------------------
class Mcp4822Bus:
    """The MCP4822s on the virtual Pico's DAC bus, fed by the pins the emulated ``dac`` program drove.

    Each DAC decodes its own SPI frames from the emulator's pin record (``system._edges``: SCK, MOSI,
    its chip select): a frame is a low interval of the chip select; its bits are MOSI's levels at the
    SCK rising edges inside it (MSB first). A 16-bit command (bit 15 A/B, bit 13 /GA, bit 12 /SHDN,
    bits 11..0 code) updates the selected output at the CS rising edge (LDAC is held low: outputs are
    transparent); a frame of any other length is ignored, as the MCP4822 does. An output is off (0
    current) until its first command (and after a shutdown command). Current = code *
    ``board.DAC_FULL_SCALE_UA`` / 4096, exact in nA by ``pulse_engine.code_to_na``, twice that at
    gain 2x. Frames are decoded incrementally (:meth:`update`), only for chip-select edges not seen
    before, so the cost grows with the DAC writes, not with time.
    """

    def __init__(self, system, sck_pin: int, mosi_pin: int, cs_pins) -> None:
        self.system = system
        self.sck_pin, self.mosi_pin = sck_pin, mosi_pin
        self.cs_pins = tuple(cs_pins)
        self._seen = [0] * len(self.cs_pins)  # CS edges already decoded
        # per DAC, per output (0 = A, 1 = B): cycles of the CS rises that changed it and the nA after
        self._at: list[list[list[int]]] = [[[], []] for _ in self.cs_pins]
        self._na: list[list[list[int]]] = [[[], []] for _ in self.cs_pins]
        self.commands: list[tuple[int, int, int]] = []  # (CS rise cycle, dac, 16-bit command)
        self.malformed = 0

    def _level(self, pin: int, cycle: int) -> int:
        edges = self.system._edges[pin]
        flips = bisect.bisect_right(edges, cycle)
        return ((self.system._initial_eff >> pin) & 1) ^ (flips & 1)

    def update(self) -> None:
        """Decode every frame whose chip select has risen since the last call."""
        from firmware import pulse_engine  # the board's code -> nA rule
        from firmware.dac_bus import CMD_ACTIVE, CMD_B, CMD_GAIN_1X, CODE_MASK

        sys_edges = self.system._edges
        sck = sys_edges[self.sck_pin]
        sck0 = (self.system._initial_eff >> self.sck_pin) & 1
        for dac, pin in enumerate(self.cs_pins):
            edges = sys_edges[pin]
            i = self._seen[dac]
            if len(edges) == i:
                continue
            high0 = (self.system._initial_eff >> pin) & 1
            while i < len(edges):
                level_after = high0 ^ ((i + 1) & 1)
                if level_after == 0:  # a fall: the frame ends at the next edge
                    if i + 1 >= len(edges):
                        break  # CS still low: frame in progress
                    fall, rise = edges[i], edges[i + 1]
                    lo = bisect.bisect_right(sck, fall)
                    hi = bisect.bisect_left(sck, rise)
                    bits = []
                    for k in range(lo, hi):
                        if sck0 ^ ((k + 1) & 1):  # SCK high after toggle k: a rising edge
                            bits.append(self._level(self.mosi_pin, sck[k]))
                    i += 2
                    if len(bits) != 16:
                        self.malformed += 1
                        continue
                    cmd = 0
                    for b in bits:
                        cmd = (cmd << 1) | b
                    self.commands.append((rise, dac, cmd))
                    out = 1 if cmd & CMD_B else 0
                    if cmd & CMD_ACTIVE:
                        na = pulse_engine.code_to_na(cmd & CODE_MASK) * (1 if cmd & CMD_GAIN_1X else 2)
                    else:
                        na = 0
                    self._at[dac][out].append(rise)
                    self._na[dac][out].append(na)
                else:
                    i += 1  # a rise without a fall seen (CS released at the start): nothing
            self._seen[dac] = i

    def current_na(self, dac: int, out_b: bool, cycle: int) -> int:
        """Output A (``out_b`` False: POS direction) or B (NEG direction) of DAC ``dac`` at ``cycle``
        (after a CS rise at that cycle), in nA; call :meth:`update` first."""
        at = self._at[dac][1 if out_b else 0]
        k = bisect.bisect_right(at, cycle)
        return self._na[dac][1 if out_b else 0][k - 1] if k else 0
