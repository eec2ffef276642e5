"""The parameter model: canonical per-channel parameters, their wire packing and validation.

Canonical units are integers: nanoseconds, µA, µm². The same :func:`validate` runs in the firmware
(authoritative, with the firmware's hard limits) and on the host (for a friendly message before
anything is sent). It returns ``None`` or a :class:`Violation`; it never raises on bad input.
"""

import math
import struct

# name, struct format, default. Order is the wire order: never reorder, only append.
FIELDS = (
    ("phase1_ns", "Q", 200000),
    ("interphase_ns", "Q", 0),
    ("phase2_ns", "Q", 200000),
    ("recovery_ns", "Q", 0),
    ("period_ns", "Q", 50000000),
    ("amplitude_ua", "I", 1000),
    ("polarity", "B", 0),
    ("burst_pulses", "I", 0),
    ("interburst_ns", "Q", 0),
    ("train_duration_ns", "Q", 0),
    ("train_delay_ns", "Q", 0),
    ("ramp_up_ns", "Q", 0),
    ("trigger", "B", 0),
    ("electrode_area_um2", "I", 6000000),
    # Ramps (docs/ARCHITECTURE.md "DAC bus"): a soft start over a time or a number of pulses, and a
    # soft stop (on STOP) likewise; at most one of each pair non-zero. Linear in DAC codes, each pulse
    # charge-balanced (firmware/pulse_engine.py pulse_codes / ramp_down_codes).
    ("ramp_down_ns", "Q", 0),
    ("ramp_up_pulses", "I", 0),
    ("ramp_down_pulses", "I", 0),
    # Pulse shape: 0 = biphasic (phase 1, interphase, phase 2), 1 = triphasic (flank, interphase, main
    # phase, interphase, flank; the flanks in phase 2's direction, each phase2_ns / 2, sharing one DAC
    # output; docs/ARCHITECTURE.md "Engine output").
    ("shape", "B", 0),
    # Custom sequences (protocol 8; docs/ARCHITECTURE.md "Custom sequences"): 0 = a regular train;
    # N >= 1 = N pulses with their own onsets and amplitudes, uploaded with SET_SEQUENCE after
    # SET_PARAMS (firmware/sequence.py). In sequence mode period_ns is the smallest interval between
    # two onsets and amplitude_ua the largest amplitude, so every rule below holds for every pulse.
    ("sequence_pulses", "I", 0),
    # 0 = the sequence plays once; > 0 = it loops with this cycle (onsets relative to each cycle's start)
    ("sequence_cycle_ns", "Q", 0),
)
# Fields a sequence replaces: they must be 0 in sequence mode (the onsets say when pulses come).
SEQUENCE_ZERO_FIELDS = ("train_delay_ns", "burst_pulses", "interburst_ns", "ramp_up_ns", "ramp_down_ns",
                        "ramp_up_pulses", "ramp_down_pulses")
RAMP_FIELDS = ("ramp_up_ns", "ramp_down_ns", "ramp_up_pulses", "ramp_down_pulses")
FIELD_NAMES = tuple(f[0] for f in FIELDS)
FORMAT = "<" + "".join(f[1] for f in FIELDS)
SIZE = struct.calcsize(FORMAT)
DEFAULTS = dict((f[0], f[2]) for f in FIELDS)

POLARITY_CATHODIC_FIRST = 0
POLARITY_ANODIC_FIRST = 1
POLARITY_NAMES = ("cathodic-first", "anodic-first")

SHAPE_BIPHASIC = 0
SHAPE_TRIPHASIC = 1
SHAPE_NAMES = ("biphasic", "triphasic")

TRIGGER_SOFTWARE = 0
TRIGGER_EXT1 = 1
TRIGGER_EXT2 = 2
TRIGGER_GATED1 = 3
TRIGGER_GATED2 = 4
TRIGGER_NAMES = ("software", "ext1", "ext2", "gated1", "gated2")

# Quantities a limit can apply to that are not a single field; NACKs name them by these ids.
DERIVED_NAMES = ("charge_per_phase_nc", "shannon_k_centi", "duty_permille", "phase2_amplitude_ua", "pulse_length_ns")
# Names of the other request fields a NACK can point at.
# "onset_ns" / "sequence_amplitude_ua": a SET_SEQUENCE pulse's onset or amplitude (firmware/sequence.py).
OTHER_NAMES = ("channel", "mask", "body", "slot", "deadman_ms", "onset_ns", "sequence_amplitude_ua")
NAMES = FIELD_NAMES + DERIVED_NAMES + OTHER_NAMES
NO_FIELD = 0xFF
# How a value relates to its limit; the index travels in NACKs.
RELATIONS = ("<=", ">=", "known", "integer")

# Firmware limits, in the order they travel in the HELLO response (u64 each).
LIMIT_NAMES = (
    "max_amplitude_ua",
    "max_charge_nc",
    "shannon_k_centi",
    "min_period_ns",
    "max_duty_permille",
    "min_phase_ns",
    "max_phase_ns",
    "max_interphase_ns",
    "max_recovery_ns",
    "max_duration_ns",
    "max_ramp_ns",
    "max_burst_pulses",
    "min_electrode_area_um2",
    "min_dead_time_ns",
    "max_ramp_pulses",
    # Idle a pulse must leave before the next one when the amplitude can change at that boundary
    # (ramps, live changes): the DAC bus writes and the DAC's settling (firmware/dac_bus.UPDATE_TICKS).
    "min_update_idle_ns",
    # Custom sequences: pulses per channel, and the shortest interval between two onsets (the CPU
    # feeds a sequence pulse by pulse: firmware/limits.py).
    "max_sequence_pulses",
    "min_sequence_interval_ns",
)


def field_id(name):
    return NAMES.index(name)


def field_name(fid):
    return NAMES[fid] if 0 <= fid < len(NAMES) else "?"


class Violation:
    """Why a parameter set was refused: the field (or derived quantity), its value, the limit."""

    __slots__ = ("field", "value", "limit", "relation")

    def __init__(self, field, value, limit, relation):
        self.field = field
        self.value = value
        self.limit = limit
        self.relation = relation  # one of RELATIONS

    def message(self):
        if self.relation == "known":
            return "%s is not a known parameter" % self.field
        if self.relation == "integer":
            return "%s = %r is not a non-negative integer" % (self.field, self.value)
        return "%s = %s violates limit %s %s" % (self.field, self.value, self.relation, self.limit)

    def __repr__(self):
        return "Violation(%s)" % self.message()


def complete(params):
    """Return a full canonical dict: defaults for missing fields (unknown keys are refused by validate)."""
    out = dict(DEFAULTS)
    out.update(params)
    return out


def pack(params):
    return struct.pack(FORMAT, *[params[name] for name in FIELD_NAMES])


def unpack(data):
    return dict(zip(FIELD_NAMES, struct.unpack(FORMAT, data)))


def interphase_realised_ns(p, dead_ns):
    """The interphase the pulse engine builds: the request, or the board dead time if that is longer
    (phase 1 and phase 2 drive opposite legs of the bridge: never less idle than the dead time)."""
    return p["interphase_ns"] if p["interphase_ns"] > dead_ns else dead_ns


def recovery_gap_ns(p, dead_ns):
    """Idle the pulse engine puts between phase 2 and RECOVERY: the dead time (none without recovery)."""
    return dead_ns if p["recovery_ns"] else 0


def pulse_length_ns(p, dead_ns):
    """Pulse start to pulse end as the pulse engine builds it (``dead_ns``: the board dead time,
    limit ``min_dead_time_ns``): phase 1, realised interphase, phase 2, dead time + recovery; a
    triphasic pulse has a second interphase (flank, gap, main phase, gap, flank) and its two flanks
    together are phase2_ns (the engine rounds each to the tick: up to half a tick more each)."""
    gaps = 2 if p.get("shape") == SHAPE_TRIPHASIC else 1
    return (p["phase1_ns"] + gaps * interphase_realised_ns(p, dead_ns) + p["phase2_ns"]
            + recovery_gap_ns(p, dead_ns) + p["recovery_ns"])


def shannon_k(charge_pc_value, area_um2):
    """Shannon's k = log10(Q) + log10(Q/A), Q in µC, A in cm² (Shannon 1992)."""
    if charge_pc_value <= 0:
        return -99.0
    q_uc = charge_pc_value / 1e6
    return math.log10(q_uc) + math.log10(q_uc / (area_um2 / 1e8))


_SHANNON_CACHE: dict = {}


def shannon_bound_milli(k_centi):
    """floor(1000 * 10^(k/100)) in exact integer arithmetic, so board floats (single precision) and
    host floats can never disagree on a limit decision. Cached: k is a firmware constant."""
    bound = _SHANNON_CACHE.get(k_centi)
    if bound is None:
        bound = _SHANNON_CACHE[k_centi] = _root_search(k_centi)
    return bound


def _root_search(k_centi):
    target = 10 ** (k_centi + 300)
    lo, hi = 0, 10 ** ((k_centi + 300) // 100 + 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid ** 100 <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def is_sequence(p):
    """True when the parameter set is a custom sequence (sequence_pulses > 0)."""
    return p.get("sequence_pulses", 0) > 0


def has_ramp(p):
    """True when the parameter set has a ramp-up or ramp-down (its amplitude changes while running)."""
    for name in RAMP_FIELDS:
        if p[name]:
            return True
    return False


def _check_max(field, value, limit):
    return None if value <= limit else Violation(field, value, limit, "<=")


def _check_min(field, value, limit):
    return None if value >= limit else Violation(field, value, limit, ">=")


def _bound_violations(p, limits, min_phase):
    """Each single-field bound in order (a generator: no tuple of results is built, and
    validate stops at the first violation)."""
    yield _check_max("polarity", p["polarity"], len(POLARITY_NAMES) - 1)
    yield _check_max("trigger", p["trigger"], len(TRIGGER_NAMES) - 1)
    yield _check_max("shape", p["shape"], len(SHAPE_NAMES) - 1)
    yield _check_min("amplitude_ua", p["amplitude_ua"], 1)
    yield _check_max("amplitude_ua", p["amplitude_ua"], limits["max_amplitude_ua"])
    yield _check_min("phase1_ns", p["phase1_ns"], min_phase)
    yield _check_max("phase1_ns", p["phase1_ns"], limits["max_phase_ns"])
    yield _check_min("phase2_ns", p["phase2_ns"], min_phase)
    yield _check_max("phase2_ns", p["phase2_ns"], limits["max_phase_ns"])
    # triphasic: phase 2 is split into two equal flanks, each at least the shortest phase
    if p["shape"] == SHAPE_TRIPHASIC:
        yield _check_min("phase2_ns", p["phase2_ns"], 2 * min_phase)
    yield _check_max("interphase_ns", p["interphase_ns"], limits["max_interphase_ns"])
    yield _check_max("recovery_ns", p["recovery_ns"], limits["max_recovery_ns"])
    yield _check_min("electrode_area_um2", p["electrode_area_um2"], limits["min_electrode_area_um2"])
    yield _check_max("burst_pulses", p["burst_pulses"], limits["max_burst_pulses"])
    yield _check_max("ramp_up_ns", p["ramp_up_ns"], limits["max_ramp_ns"])
    yield _check_max("ramp_down_ns", p["ramp_down_ns"], limits["max_ramp_ns"])
    yield _check_max("ramp_up_pulses", p["ramp_up_pulses"], limits["max_ramp_pulses"])
    yield _check_max("ramp_down_pulses", p["ramp_down_pulses"], limits["max_ramp_pulses"])
    # a ramp is given as a time or as a number of pulses, never both
    if p["ramp_up_ns"]:
        yield _check_max("ramp_up_pulses", p["ramp_up_pulses"], 0)
    if p["ramp_down_ns"]:
        yield _check_max("ramp_down_pulses", p["ramp_down_pulses"], 0)
    yield _check_max("sequence_pulses", p["sequence_pulses"], limits["max_sequence_pulses"])
    yield _check_max("sequence_cycle_ns", p["sequence_cycle_ns"], limits["max_duration_ns"])
    if p["sequence_pulses"]:
        yield from _sequence_violations(p, limits)
    else:  # a cycle without a sequence means nothing: refused rather than ignored
        yield _check_max("sequence_cycle_ns", p["sequence_cycle_ns"], 0)


def _sequence_violations(p, limits):
    """What sequence mode refuses in the parameters (the per-pulse rules are firmware/sequence.py's):
    the fields the onsets replace, gated triggers (a gate restarts a train; a sequence has no soft
    re-arm), an interval below min_sequence_interval_ns, a cycle shorter than one interval, and a
    duration on a sequence played once (its onsets say when it ends)."""
    for name in SEQUENCE_ZERO_FIELDS:
        yield _check_max(name, p[name], 0)
    yield _check_max("trigger", p["trigger"], TRIGGER_EXT2)
    yield _check_min("period_ns", p["period_ns"], limits["min_sequence_interval_ns"])
    if p["sequence_cycle_ns"]:
        yield _check_min("sequence_cycle_ns", p["sequence_cycle_ns"], p["period_ns"])
    else:
        yield _check_max("train_duration_ns", p["train_duration_ns"], 0)


def validate(params, limits):
    """First violated rule of a canonical parameter dict against ``limits``, or None if it is safe."""
    for name in params:
        if name not in DEFAULTS:
            return Violation(name, params[name], 0, "known")
    for name, fmt, _ in FIELDS:
        value = params.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            return Violation(name, value, 0, "integer")
        if value < 0:
            return Violation(name, value, 0, ">=")
        top = (1 << (8 * struct.calcsize(fmt))) - 1
        if value > top:
            return Violation(name, value, top, "<=")
    p = params
    min_phase = limits["min_phase_ns"]
    for v in _bound_violations(p, limits, min_phase):
        if v is not None:
            return v
    # A non-zero gap shorter than one PIO segment cannot be produced exactly. The interphase is
    # realised as at least the dead time (see interphase_realised_ns), so only that value must be
    # producible: a request below the dead time is lengthened to it, not refused.
    dead = limits["min_dead_time_ns"]
    if 0 < interphase_realised_ns(p, dead) < min_phase:
        return Violation("interphase_ns", p["interphase_ns"], min_phase, ">=")
    for name in ("recovery_ns", "interburst_ns", "train_delay_ns"):
        if 0 < p[name] < min_phase:
            return Violation(name, p[name], min_phase, ">=")
    for name in ("period_ns", "interburst_ns", "train_duration_ns", "train_delay_ns"):
        v = _check_max(name, p[name], limits["max_duration_ns"])
        if v is not None:
            return v
    # The idle after the pulse separates its last drive state from the next pulse's phase 1: at
    # least one segment and at least the dead time.
    length = pulse_length_ns(p, dead)
    v = (_check_min("period_ns", p["period_ns"], limits["min_period_ns"])
         or _check_min("period_ns", p["period_ns"], length + (dead if dead > min_phase else min_phase)))
    if v is not None:
        return v
    # A train whose amplitude changes while it runs (a ramp) must leave the DAC bus its update time
    # after every pulse (the writes follow the pulse's end; the next pulse needs the settled output).
    if has_ramp(p) or p["sequence_pulses"]:  # a sequence's amplitude may change at every pulse
        v = _check_min("period_ns", p["period_ns"], length + limits["min_update_idle_ns"])
        if v is not None:
            return v
    # Rounded up (like every derived quantity here): a floor let 500.9 permille pass a 500 limit.
    duty = -(-(p["phase1_ns"] + p["phase2_ns"]) * 1000 // p["period_ns"])
    v = _check_max("duty_permille", duty, limits["max_duty_permille"])
    if v is not None:
        return v
    # Phase 2 carries the same charge: amp2 = amp1 * phase1 / phase2 (rounded up: the worst case).
    amp2 = -(-p["amplitude_ua"] * p["phase1_ns"] // p["phase2_ns"])
    v = _check_max("phase2_amplitude_ua", amp2, limits["max_amplitude_ua"])
    if v is not None:
        return v
    # Exact charge in fC (µA × ns); flooring to pC first let up to 1 pC over the limit pass.
    q_fc = p["amplitude_ua"] * p["phase1_ns"]
    v = _check_max("charge_per_phase_nc", -(-q_fc // 1000000), limits["max_charge_nc"])
    if v is not None:
        return v
    # Shannon: Q^2/A <= 10^k in integers (Q in fC, A in µm²): Q_fC^2 <= 10^k * A_um2 * 1e10
    # = (1000 * 10^k) * A_um2 * 1e7, with 1000 * 10^k floored (conservative).
    k_centi = limits["shannon_k_centi"]
    bound = shannon_bound_milli(k_centi) * p["electrode_area_um2"] * 10000000
    if q_fc * q_fc > bound:
        # k of the exact charge (fC / 1000 = pC as a float): flooring to whole pC first reported
        # k one step low when it lay within a hair above a half-step (1481 µA x 7979 ns on 100 µm²: 214.5007)
        actual = int(shannon_k(q_fc / 1000, p["electrode_area_um2"]) * 100 + 0.5)
        return Violation("shannon_k_centi", max(actual, k_centi + 1), k_centi, "<=")
    return None
