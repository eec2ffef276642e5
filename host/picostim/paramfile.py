"""TOML parameter files with units in the keys -> canonical parameters (protocol.params).

A parameter file looks like::

    name = "PTNS"
    description = "Percutaneous tibial nerve stimulation"
    [channel]                    # optional: the same keys may also sit at the top level
    frequency_hz = 20
    phase1_us = 200
    phase2_us = 200
    amplitude_ma = 2.0
    polarity = "cathodic-first"
    electrode_area_mm2 = 12.6

Time keys take a unit suffix (``_ns``, ``_us``, ``_ms``, ``_s``); the pulse rate is given by exactly
one of ``frequency_hz``, ``period_*`` or ``interpulse_*`` (the gap from the end of one pulse to the
start of the next, Pulse Pal's meaning). Bursts: ``burst_pulses`` plus ``interburst_*``,
``burst_frequency_hz`` or ``burst_duration_*``. Values are converted to integer nanoseconds rounded to
the nearest ns. Anything malformed raises :class:`ParamFileError` naming the key, the value and what
is allowed; :func:`check` then applies the firmware's own rules (protocol.params.validate) and raises
:class:`ParamLimitError` with a message in user units.
"""

import math
import tomllib
from decimal import Decimal
from fractions import Fraction

from firmware import pulse_engine
from firmware.board import DEAD_TIME_NS
from protocol import params as P

# canonical time field -> the stem users write before the unit suffix
TIME_FIELDS = {
    "phase1_ns": "phase1",
    "interphase_ns": "interphase",
    "phase2_ns": "phase2",
    "recovery_ns": "recovery",
    "interburst_ns": "interburst",
    "train_duration_ns": "train_duration",
    "train_delay_ns": "train_delay",
    "ramp_up_ns": "ramp_up",
    "ramp_down_ns": "ramp_down",
}
# soft-start / soft-stop ramps: a duration (``ramp_up_s``/``_ms``/...) or a number of pulses
# (``ramp_up_pulses``), never both for the same ramp (docs: README "Parameter files")
RAMP_PULSE_FIELDS = {"ramp_up_ns": "ramp_up_pulses", "ramp_down_ns": "ramp_down_pulses"}
TIME_UNITS = {"ns": Fraction(1), "us": Fraction(1000), "ms": Fraction(1000000), "s": Fraction(1000000000)}
AMPLITUDE_UNITS = {"ua": Fraction(1), "ma": Fraction(1000)}
AREA_UNITS = {"um2": Fraction(1), "mm2": Fraction(1000000), "cm2": Fraction(100000000)}
# stems that define the period; only one may appear (in any unit)
RATE_STEMS = ("period", "interpulse")
META_KEYS = ("name", "description")
CHANNEL_TABLE = "channel"

# Every key a file may use (for the "allowed" part of error messages).
ALLOWED_KEYS = tuple(
    ["%s_%s" % (stem, u) for stem in list(TIME_FIELDS.values()) + list(RATE_STEMS) + ["burst_duration"]
     for u in TIME_UNITS]
    + ["frequency_hz", "burst_frequency_hz", "burst_pulses", "ramp_up_pulses", "ramp_down_pulses",
       "amplitude_ua", "amplitude_ma",
       "electrode_area_um2", "electrode_area_mm2", "electrode_area_cm2", "polarity", "trigger", "shape"]
)


class ParamFileError(ValueError):
    """A parameter file that cannot be turned into canonical parameters. ``key``/``value`` name the
    offending entry (``key`` may be None for file-level problems)."""

    def __init__(self, message, key=None, value=None):
        super().__init__(message)
        self.key = key
        self.value = value


class ParamLimitError(ParamFileError):
    """Well-formed parameters that break a firmware limit; carries the protocol Violation."""

    def __init__(self, message, violation):
        super().__init__(message, violation.field, violation.value)
        self.violation = violation


class ParamSet:
    """The result of loading a file: canonical ``params`` (complete dict), plus metadata."""

    def __init__(self, params, name=None, description=None, source=None, keys=None, sequence=None):
        self.params = params
        self.name = name
        self.description = description
        self.source = source
        self.keys = keys or {}  # canonical field -> the key the user wrote (for messages)
        self.sequence = sequence  # a Sequence when the file has a [sequence] table, else None

    def __repr__(self):
        return "ParamSet(%r, %r)" % (self.name or self.source, self.params)


# ----------------------------------------------------------------------------------------------
# loading


# Keys a parameter *file* must state (no silent default for what sets the dose and the charge-density
# check): canonical field -> the keys that give it.
REQUIRED = {
    "amplitude_ua": ("amplitude_ma", "amplitude_ua"),
    "phase1_ns": ("phase1_us", "phase1_ns", "phase1_ms", "phase1_s"),
    "electrode_area_um2": ("electrode_area_mm2", "electrode_area_um2", "electrode_area_cm2"),
}
MAX_FILE_BYTES = 1 << 20  # a parameter file is a few hundred bytes; refuse anything absurd


def _short(value, n=60):
    """repr() of a value cut to ``n`` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _k(key):
    """A TOML key for a message: cut, and quoted if it is not a bare key."""
    return key if key and len(key) <= 40 and key.replace("_", "a").replace("-", "a").isalnum() else _short(key, 40)


def _decode(raw, where):
    if len(raw) > MAX_FILE_BYTES:
        raise ParamFileError("%s: %d bytes is not a parameter file (at most %d bytes)"
                             % (where, len(raw), MAX_FILE_BYTES))
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ParamFileError("%s: UTF-16 text; save the parameter file as UTF-8" % where)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is harmless
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParamFileError("%s: not a UTF-8 text file (byte 0x%02x at offset %d); a parameter file is TOML text"
                             % (where, raw[e.start], e.start)) from None
    if "\0" in text:
        raise ParamFileError("%s: not a text file (NUL byte at offset %d); a parameter file is TOML text"
                             % (where, text.index("\0")))
    return text


def _parse_toml(text, where):
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ParamFileError("%s is not valid TOML: %s" % (where, str(e).splitlines()[0] if str(e) else e)) from None
    except RecursionError:
        raise ParamFileError("%s is not valid TOML: nested too deeply" % where) from None


def check_required(ps):
    """Refuse a parameter file that leaves amplitude, phase 1 or the electrode area to a default."""
    for field, keys in REQUIRED.items():
        if field not in ps.keys:
            raise ParamFileError("%s = (missing): a parameter file must give it explicitly (one of %s)"
                                 % (keys[0], ", ".join(keys)), keys[0])
    return ps


def load(path, require=True):
    """Load a TOML parameter file -> :class:`ParamSet` (not yet checked against limits). ``require``:
    amplitude, phase 1 and the electrode area must be in the file (:data:`REQUIRED`)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ParamFileError("parameter file %s: cannot read it: %s" % (_short(str(path), 200), e.strerror or e)) from None
    except ValueError as e:  # e.g. an embedded NUL in the path
        raise ParamFileError("parameter file %s: cannot read it: %s" % (_short(str(path)), e)) from None
    text = _decode(raw, path)
    ps = from_dict(_exact_sequence(_parse_toml(text, path), text))
    ps.source = str(path)
    return check_required(ps) if require else ps


def loads(text, require=False):
    """Parse parameter-file text (``require`` as in :func:`load`; off by default for code that builds
    parameter sets from a few keys)."""
    if isinstance(text, (bytes, bytearray)):
        text = _decode(bytes(text), "parameter text")
    ps = from_dict(_exact_sequence(_parse_toml(text, "parameter text"), text))
    return check_required(ps) if require else ps


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(key, value, allowed="a number"):
    if not _is_number(value):
        raise ParamFileError("%s = %s: expected %s" % (key, _short(value), allowed), key, value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamFileError("%s = %s: expected a finite number" % (key, _short(value)), key, value)
    if value < 0:
        raise ParamFileError("%s = %s: must not be negative" % (key, _short(value)), key, value)
    return Fraction(value)


def _round(x):
    """Round a non-negative Fraction to the nearest integer (halves up)."""
    return int(math.floor(x + Fraction(1, 2)))


def _split_unit(key, units):
    for u in units:
        if key.endswith("_" + u):
            return key[: -len(u) - 1], u
    return None, None


def _flatten(data):
    """Merge the optional [channel] table with top-level keys; return (entries, name, description)."""
    if not isinstance(data, dict):
        raise ParamFileError("a parameter file is a TOML table")
    entries = {}
    name = data.get("name")
    description = data.get("description")
    for meta, val in (("name", name), ("description", description)):
        if val is not None and not isinstance(val, str):
            raise ParamFileError("%s = %s: expected a string" % (meta, _short(val)), meta, val)
    for key, value in data.items():
        if key in META_KEYS or key == SEQUENCE_TABLE:  # [sequence]: see _sequence
            continue
        if key == CHANNEL_TABLE:
            if not isinstance(value, dict):
                raise ParamFileError("channel = %s: [channel] must be a table of parameters" % _short(value), key, value)
            for k, v in value.items():
                if k in entries:
                    raise ParamFileError("%s = %s: is given both at the top level and in [channel]" % (_k(k), _short(v)), k, v)
                if isinstance(v, dict):
                    raise ParamFileError("channel.%s = {...}: nested tables are not allowed" % _k(k), k, v)
                entries[k] = v
            continue
        if isinstance(value, dict):
            raise ParamFileError("%s = {...}: unknown table (allowed: [channel], [sequence])" % _k(key), key, value)
        if key in entries:
            raise ParamFileError("%s = %s: is given both at the top level and in [channel]" % (_k(key), _short(value)),
                                 key, value)
        entries[key] = value
    return entries, name, description


def from_dict(data):
    """Convert an already-parsed TOML document -> :class:`ParamSet`."""
    entries, name, description = _flatten(data)
    params = {}
    keys = {}
    times = {}  # stem -> (key, Fraction ns)
    extra = {}  # non-field helper values: frequency_hz, burst_frequency_hz, ...

    def put(field, value, key):
        if field in params:
            raise ParamFileError("%s = %s: conflicts with %s: give only one of them" % (key, _short(entries[key]), keys[field]),
                                 key, entries[key])
        params[field] = value
        keys[field] = key

    time_stems = set(TIME_FIELDS.values()) | set(RATE_STEMS) | {"burst_duration"}
    for key, value in entries.items():
        stem, unit = _split_unit(key, TIME_UNITS)
        if stem in time_stems:
            if stem in times:
                raise ParamFileError("%s = %s: conflicts with %s: give only one of them" % (key, _short(value), times[stem][0]),
                                     key, value)
            times[stem] = (key, _number(key, value) * TIME_UNITS[unit])
            continue
        if key in ("frequency_hz", "burst_frequency_hz"):
            f = _number(key, value, "a frequency in Hz")
            if f == 0:
                raise ParamFileError("%s = %s: must be greater than 0" % (key, _short(value)), key, value)
            extra[key] = f
            continue
        stem, unit = _split_unit(key, AMPLITUDE_UNITS)
        if stem == "amplitude":
            put("amplitude_ua", _round(_number(key, value) * AMPLITUDE_UNITS[unit]), key)
            continue
        stem, unit = _split_unit(key, AREA_UNITS)
        if stem == "electrode_area":
            put("electrode_area_um2", _round(_number(key, value) * AREA_UNITS[unit]), key)
            continue
        if key == "burst_pulses":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ParamFileError("burst_pulses = %s: expected a non-negative integer (0 = no bursts)" % _short(value),
                                     key, value)
            put("burst_pulses", value, key)
            continue
        if key in RAMP_PULSE_FIELDS.values():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ParamFileError("%s = %s: expected a whole number of pulses (0 = no ramp)" % (key, _short(value)),
                                     key, value)
            if value < 0:
                raise ParamFileError("%s = %s: must not be negative (0 = no ramp)" % (key, _short(value)), key, value)
            put(key, value, key)
            continue
        if key in ("polarity", "trigger", "shape"):
            names = {"polarity": P.POLARITY_NAMES, "trigger": P.TRIGGER_NAMES, "shape": P.SHAPE_NAMES}[key]
            if not isinstance(value, str) or value.lower() not in names:
                raise ParamFileError("%s = %s: allowed values are %s" % (key, _short(value), ", ".join('"%s"' % n for n in names)),
                                     key, value)
            put(key, names.index(value.lower()), key)
            continue
        raise ParamFileError("%s = %s: unknown key; allowed keys: %s" % (_short(key, 40).strip("'\""), _short(value),
                                                                         ", ".join(ALLOWED_KEYS)), key, value)

    for field, stem in TIME_FIELDS.items():
        if stem in times:
            key, ns = times[stem]
            if RAMP_PULSE_FIELDS.get(field) in params:  # a ramp in time and in pulses: which one is meant?
                pkey = RAMP_PULSE_FIELDS[field]
                raise ParamFileError("%s = %s: conflicts with %s = %s: give the ramp as a time or as a number of "
                                     "pulses, not both" % (pkey, _short(params[pkey]), key, _short(entries[key])),
                                     pkey, params[pkey])
            put(field, _round(ns), key)
    if "phase1_ns" in params and "phase2_ns" not in params:
        params["phase2_ns"] = params["phase1_ns"]  # a symmetric pulse unless phase 2 is given

    if isinstance(data, dict) and SEQUENCE_TABLE in data:  # the onsets replace the rate, bursts, ramps
        seq = _sequence(data[SEQUENCE_TABLE], entries, params, keys)
        return ParamSet(P.complete(params), name, description, keys=keys, sequence=seq)
    _resolve_period(params, keys, times, extra)
    _resolve_bursts(params, keys, times, extra)
    return ParamSet(P.complete(params), name, description, keys=keys)


def _resolve_period(params, keys, times, extra):
    given = [(times[s][0], s) for s in RATE_STEMS if s in times]
    if "frequency_hz" in extra:
        given.append(("frequency_hz", "frequency"))
    if len(given) > 1:
        raise ParamFileError("%s = (also given): %s conflict: give exactly one of frequency_hz, period_us or "
                             "interpulse_us" % (given[1][0], " and ".join(k for k, _ in given)), given[1][0])
    if not given:
        raise ParamFileError("frequency_hz = (missing): the pulse rate is missing: give exactly one of frequency_hz, "
                             "period_us or interpulse_us", "frequency_hz")
    key, stem = given[0]
    if stem == "frequency":
        period = Fraction(1000000000) / extra["frequency_hz"]
    elif stem == "period":
        period = times["period"][1]
    else:  # interpulse: gap from the end of the pulse to the next pulse start
        full = P.complete(params)
        period = times["interpulse"][1] + P.pulse_length_ns(full, DEAD_TIME_NS)  # as the engine builds it
    params["period_ns"] = _round(period)
    keys["period_ns"] = key


def _resolve_bursts(params, keys, times, extra):
    """Pulses per burst: ``burst_pulses`` or ``burst_duration_*`` (a whole number of periods).
    Gap: ``interburst_*`` (from the end of the burst's last period to the next burst) or
    ``burst_frequency_hz`` (interburst = 1/f - burst_pulses x period)."""
    period = params["period_ns"]
    if "burst_duration" in times:
        key, duration = times["burst_duration"]
        if period <= 0:
            raise ParamFileError("%s: needs a pulse period greater than 0 (%s = 0)" % (key, keys["period_ns"]),
                                 keys["period_ns"], 0)
        n = duration / period
        if abs(n - round(n)) * period > 1:
            raise ParamFileError("%s = %s µs: is not a whole number of periods (%s µs each)"
                                 % (key, _fmt_num(duration / 1000), _fmt_num(Fraction(period, 1000))), key,
                                 _fmt_num(duration / TIME_UNITS[key.rsplit("_", 1)[1]]))
        n = round(n)
        if "burst_pulses" in params and params["burst_pulses"] != n:
            raise ParamFileError("%s = (%d pulses per burst): conflicts with burst_pulses = %d: give only one of them"
                                 % (key, n, params["burst_pulses"]), key)
        params["burst_pulses"] = n
        keys.setdefault("burst_pulses", key)
    if "burst_frequency_hz" not in extra:
        return
    if "interburst" in times:
        raise ParamFileError("burst_frequency_hz = %s: conflicts with %s: give only one of them"
                             % (_fmt_num(extra["burst_frequency_hz"]), times["interburst"][0]),
                             "burst_frequency_hz", _fmt_num(extra["burst_frequency_hz"]))
    n = params.get("burst_pulses", 0)
    if n < 1:
        raise ParamFileError("burst_pulses = %d: burst_frequency_hz needs burst_pulses >= 1 (or burst_duration_*)" % n,
                             "burst_pulses", n)
    cycle = Fraction(1000000000) / extra["burst_frequency_hz"]
    gap = cycle - n * period
    if gap < 0:
        raise ParamFileError("burst_frequency_hz = %s: %d pulses at a %s µs period take %s µs, longer than the "
                             "burst cycle %s µs" % (_fmt_num(extra["burst_frequency_hz"]), n,
                                                   _fmt_num(Fraction(period, 1000)),
                                                   _fmt_num(Fraction(n * period, 1000)), _fmt_num(cycle / 1000)),
                             "burst_frequency_hz", _fmt_num(extra["burst_frequency_hz"]))
    params["interburst_ns"] = _round(gap)
    keys["interburst_ns"] = "burst_frequency_hz"


# ----------------------------------------------------------------------------------------------
# custom sequences: the [sequence] table (issue 13 item 4; README "Custom sequences")
#
#     [sequence]
#     onsets_ms = [0, 12.5, 30]        # or onsets_us / onsets_s / onsets_ns: strictly increasing, the
#                                      # first relative to the start (it replaces train_delay)
#     amplitudes_ma = [1.0, 1.5, 0.5]  # or amplitudes_ua: one per onset
#     loop = true                      # default false: played once
#     cycle_ms = 100                   # loop only (cycle_us / cycle_s / cycle_ns); default: the last
#                                      # onset + the last interval; a one-pulse loop must give it
#
# Exactness: a TOML file's decimal numbers are read as decimal.Decimal for this table (the rest of the
# file is read as before), so every onset is converted from the decimal text to integer ns exactly,
# rounded to the nearest ns (halves up) only when the text has sub-ns digits; a dict from Python code
# is converted from its numbers' exact values (a float's exact binary value). The firmware turns each
# ABSOLUTE onset into ticks (pulse_engine.ns_to_ticks), never a difference, so every onset is exact
# to the tick whatever the intervals. The canonical parameters get period_ns = the smallest interval
# in ticks of the absolute onsets, back in ns (the wrap interval cycle - last + first counts when
# looped; see Sequence.shortest_interval), amplitude_ua = the largest amplitude,
# sequence_pulses = N and sequence_cycle_ns (0 = played once), so every rule of a regular train holds
# for every pulse; the per-pulse rules are firmware.sequence.sequence_violation's (check()).

SEQUENCE_TABLE = "sequence"
SEQUENCE_KEYS = tuple(["onsets_%s" % u for u in TIME_UNITS] + ["amplitudes_ua", "amplitudes_ma", "loop"]
                      + ["cycle_%s" % u for u in TIME_UNITS])
# regular-train keys a sequence replaces (its onsets give every pulse's time, its amplitudes every current)
SEQUENCE_CONFLICT_STEMS = ("period", "interpulse", "burst_duration", "interburst", "train_delay", "ramp_up",
                           "ramp_down")
SEQUENCE_CONFLICT_KEYS = ("frequency_hz", "burst_frequency_hz", "burst_pulses", "ramp_up_pulses",
                          "ramp_down_pulses")


class Sequence:
    """The pulses of a ``[sequence]`` table: ``onsets_ns`` (integer ns from the start; from each cycle's
    start when looped), ``amplitudes_ua`` (integer µA, phase 1), ``loop`` and ``cycle_ns`` (0 when
    played once). ``keys``: what the user wrote ({"onsets": "onsets_ms", "amplitudes": ..., "cycle": ...}),
    ``unit``: the onsets' unit in ns (for messages)."""

    def __init__(self, onsets_ns, amplitudes_ua, loop=False, cycle_ns=0, keys=None):
        self.onsets_ns = list(onsets_ns)
        self.amplitudes_ua = list(amplitudes_ua)
        self.loop = bool(loop)
        self.cycle_ns = cycle_ns if loop else 0
        self.keys = keys or {"onsets": "onsets_ns", "amplitudes": "amplitudes_ua", "cycle": "cycle_ns"}

    def __len__(self):
        return len(self.onsets_ns)

    def __repr__(self):
        return "Sequence(%d pulses, %s)" % (len(self), "loop %d ns" % self.cycle_ns if self.loop else "once")

    def onset_ticks(self):
        """Each onset in PIO ticks within the cycle: ns_to_ticks of the absolute onset."""
        return [pulse_engine.ns_to_ticks(t) for t in self.onsets_ns]

    def cycle_ticks(self):
        return pulse_engine.ns_to_ticks(self.cycle_ns)

    def cycles(self, params):
        """Cycles a start plays: 1 when played once; a loop: ceil(train_duration / cycle), 0 = until
        stopped."""
        if not self.loop:
            return 1
        dur = params.get("train_duration_ns", 0)
        return -(-dur // self.cycle_ns) if dur else 0

    def play_ticks(self, cycles):
        """Onset ticks of ``cycles`` cycles in play order, from the start's time origin (cycle k adds k
        cycle ticks, as the firmware plays it)."""
        one = self.onset_ticks()
        ct = self.cycle_ticks()
        return [k * ct + t for k in range(cycles if self.loop else 1) for t in one]

    def end_ns(self, params, cycles=None):
        """When the last pulse of a start ends (ns from the start); None for an endless loop."""
        n = self.cycles(params) if cycles is None else cycles
        if n == 0:
            return None
        full = P.complete(params)
        return (n - 1) * self.cycle_ns + self.onsets_ns[-1] + P.pulse_length_ns(full, DEAD_TIME_NS)

    def shortest_interval(self):
        """(interval ns, i, j): the smallest gap between consecutive onsets, pulse i -> pulse j (j = 0
        for the loop's wrap; (None, 0, 0) for a single pulse played once: no interval). Measured as the
        firmware plays them, in ticks of the absolute onsets (two intervals equal in ns may differ by a
        tick), and returned in ns (exact: 8 ns per tick at 125 MHz), so the period derived from it is
        never longer, in ticks, than any interval the firmware checks against it."""
        ticks = self.onset_ticks()
        best = None
        for i in range(1, len(ticks)):
            d = ticks[i] - ticks[i - 1]
            if best is None or d < best[0]:
                best = (d, i - 1, i)
        if self.loop:
            d = self.cycle_ticks() - ticks[-1] + ticks[0]
            if best is None or d < best[0]:
                best = (d, len(ticks) - 1, 0)
        if best is None:
            return (None, 0, 0)
        return (pulse_engine.ticks_to_ns(best[0]), best[1], best[2])

    def current(self, ua):
        """``ua`` in the unit of the amplitudes key the user wrote, e.g. "1.5 mA"."""
        if self.keys["amplitudes"].endswith("_ma"):
            return "%s mA" % _fmt_num(Fraction(ua, 1000), 6)
        return "%s µA" % _fmt_num(ua)

    def in_unit(self, ns, what="onsets"):
        """``ns`` in the unit of the key the user wrote, e.g. "12.5 ms"."""
        _stem, unit = _split_unit(self.keys[what], TIME_UNITS)
        unit = unit or "ns"
        return "%s %s" % (_fmt_num(Fraction(ns) / TIME_UNITS[unit], 9), UNIT_NAMES[unit])


def _exact_sequence(data, text):
    """The [sequence] table of a file read again with TOML floats as :class:`decimal.Decimal`, so its
    onsets and amplitudes convert from the decimal text exactly (a float would round 1234567.123456789
    s to the nearest binary fraction, ns off). Only that table: the rest of the file is unchanged."""
    if isinstance(data, dict) and isinstance(data.get(SEQUENCE_TABLE), dict):
        data[SEQUENCE_TABLE] = tomllib.loads(text, parse_float=Decimal)[SEQUENCE_TABLE]
    return data


def _seq_show(value):
    """A value as the user wrote it (Decimal as its text)."""
    if isinstance(value, Decimal):
        return str(value)
    return _short(value)


def _seq_number(key, value, positive=False):
    """An exact non-negative number of a [sequence] list -> Fraction."""
    ok = isinstance(value, (int, float, Decimal, Fraction)) and not isinstance(value, bool)
    if not ok:
        raise ParamFileError("%s = %s: expected a number" % (key, _seq_show(value)), key, value)
    if isinstance(value, (float, Decimal)) and not (value.is_finite() if isinstance(value, Decimal)
                                                    else math.isfinite(value)):
        raise ParamFileError("%s = %s: expected a finite number" % (key, _seq_show(value)), key, value)
    if value < 0 or (positive and value == 0):
        raise ParamFileError("%s = %s: %s" % (key, _seq_show(value), "must be greater than 0" if positive
                                               else "must not be negative"), key, value)
    return Fraction(value)


def _one_key(table, stems, what):
    """The single key of ``table`` that starts with one of ``stems``; None when there is none."""
    found = [k for k in table if any(k.startswith(s) for s in stems)]
    if len(found) > 1:
        raise ParamFileError("%s = %s: conflicts with %s: give the %s only once" % (
            found[1], _short(table[found[1]], 40), found[0], what), found[1], table[found[1]])
    return found[0] if found else None


def _seq_list(table, key, what):
    value = table[key]
    if not isinstance(value, list):
        raise ParamFileError("%s = %s: expected a list of %s, e.g. %s = [0, 10, 25]" % (key, _seq_show(value), what,
                                                                                       key), key, value)
    if not value:
        raise ParamFileError("%s = []: a sequence needs at least one pulse" % key, key, value)
    return value


def _sequence(table, entries, params, keys):
    """Parse the [sequence] table (see above) into a :class:`Sequence` and the canonical fields it
    sets in ``params``. Raises :class:`ParamFileError` naming the key (and the list index)."""
    if not isinstance(table, dict):
        raise ParamFileError("sequence = %s: [sequence] must be a table (onsets_ms = [...], amplitudes_ma = [...], "
                             "loop = true|false)" % _short(table), SEQUENCE_TABLE, table)
    for key, value in table.items():
        if key not in SEQUENCE_KEYS:
            raise ParamFileError("sequence.%s = %s: unknown key in [sequence]; allowed keys: %s"
                                 % (_k(key), _short(value, 40), ", ".join(SEQUENCE_KEYS)), key, value)
    for key, value in entries.items():
        stem, _unit = _split_unit(key, TIME_UNITS)
        if stem in SEQUENCE_CONFLICT_STEMS or key in SEQUENCE_CONFLICT_KEYS:
            raise ParamFileError("%s = %s: not allowed with [sequence]: its onsets give every pulse's time (no "
                                 "pulse rate, bursts, ramps or train delay)" % (key, _short(value)), key, value)
        if _split_unit(key, AMPLITUDE_UNITS)[0] == "amplitude":
            raise ParamFileError("%s = %s: not allowed with [sequence]: its amplitudes_ma (or amplitudes_ua) give "
                                 "every pulse's amplitude" % (key, _short(value)), key, value)
    okey = _one_key(table, ("onsets_",), "onsets")
    if okey is None:
        raise ParamFileError("onsets_ms = (missing): [sequence] needs the pulse onsets: one of %s"
                             % ", ".join("onsets_%s" % u for u in ("ms", "us", "s", "ns")), "onsets_ms")
    akey = _one_key(table, ("amplitudes_",), "amplitudes")
    if akey is None:
        raise ParamFileError("amplitudes_ma = (missing): [sequence] needs one amplitude per onset: amplitudes_ma "
                             "or amplitudes_ua", "amplitudes_ma")
    ckey = _one_key(table, ("cycle_",), "cycle")
    onsets = _seq_list(table, okey, "onset times")
    amps = _seq_list(table, akey, "amplitudes")
    if len(amps) != len(onsets):
        raise ParamFileError("%s: %d amplitudes for %d onsets (%s): give one amplitude per onset"
                             % (akey, len(amps), len(onsets), okey), akey, len(amps))
    unit = TIME_UNITS[_split_unit(okey, TIME_UNITS)[1]]
    onsets_ns = []
    for i, v in enumerate(onsets):
        ns = _round(_seq_number("%s[%d]" % (okey, i), v) * unit)
        if onsets_ns and ns <= onsets_ns[-1]:
            raise ParamFileError("%s[%d] = %s: is not after %s[%d] = %s: onsets must be strictly increasing"
                                 % (okey, i, _seq_show(v), okey, i - 1, _seq_show(onsets[i - 1])),
                                 "%s[%d]" % (okey, i), v)
        onsets_ns.append(ns)
    aunit = AMPLITUDE_UNITS[_split_unit(akey, AMPLITUDE_UNITS)[1]]
    amps_ua = []
    for i, v in enumerate(amps):
        ua = _round(_seq_number("%s[%d]" % (akey, i), v, positive=True) * aunit)
        if ua < 1:
            raise ParamFileError("%s[%d] = %s: is below 1 µA: every pulse of a sequence has a current"
                                 % (akey, i, _seq_show(v)), "%s[%d]" % (akey, i), v)
        amps_ua.append(ua)
    loop = table.get("loop", False)
    if not isinstance(loop, bool):
        raise ParamFileError("loop = %s: expected true or false" % _seq_show(loop), "loop", loop)
    cycle_ns = 0
    if ckey is not None:
        if not loop:
            raise ParamFileError("%s = %s: only with loop = true (a sequence played once has no cycle)"
                                 % (ckey, _seq_show(table[ckey])), ckey, table[ckey])
        cycle_ns = _round(_seq_number(ckey, table[ckey], positive=True) * TIME_UNITS[_split_unit(ckey, TIME_UNITS)[1]])
        if cycle_ns <= onsets_ns[-1]:
            raise ParamFileError("%s = %s: must be longer than the last onset (%s[%d] = %s): onsets are times within "
                                 "the cycle" % (ckey, _seq_show(table[ckey]), okey, len(onsets) - 1,
                                                _seq_show(onsets[-1])), ckey, table[ckey])
    elif loop:
        if len(onsets_ns) < 2:
            raise ParamFileError("cycle_ms = (missing): loop = true with a single pulse: give the loop's cycle "
                                 "(cycle_ms, cycle_us or cycle_s)", "cycle_ms")
        cycle_ns = onsets_ns[-1] + (onsets_ns[-1] - onsets_ns[-2])
    if not loop and params.get("train_duration_ns"):
        key = keys.get("train_duration_ns", "train_duration_s")
        raise ParamFileError("%s = %s: only with loop = true: a sequence played once ends after its last pulse"
                             % (key, _short(entries.get(key))), key, entries.get(key))
    seq = Sequence(onsets_ns, amps_ua, loop, cycle_ns,
                   {"onsets": okey, "amplitudes": akey, "cycle": ckey or "cycle_" + okey.rsplit("_", 1)[1]})
    interval = seq.shortest_interval()[0]
    if interval is None:  # one pulse played once: no interval; the smallest period this build accepts
        interval = _single_pulse_period(params)
    elif loop and cycle_ns < interval:
        # the wrap (or a one-pulse loop's cycle) in ticks x 8 ns can exceed the cycle's ns by up to 4 ns,
        # and validate wants cycle_ns >= period_ns: the cycle's ns have the same ticks (nearest, halves up)
        interval = cycle_ns
    params["period_ns"] = interval
    params["amplitude_ua"] = max(amps_ua)
    params["sequence_pulses"] = len(onsets_ns)
    params["sequence_cycle_ns"] = cycle_ns
    keys["period_ns"] = okey
    keys["amplitude_ua"] = akey
    keys["sequence_pulses"] = okey
    if loop:
        keys["sequence_cycle_ns"] = ckey or okey
    return seq


def _single_pulse_period(params):
    """A period for a one-pulse sequence played once (it has no interval; the firmware still checks
    the pulse against a period): the least this build's limits accept for the pulse (the sequence
    interval minimum, the rate limit, twice the pulse for the duty limit plus the DAC update idle)."""
    from firmware.limits import LIMITS

    full = P.complete(params)
    length = P.pulse_length_ns(full, DEAD_TIME_NS)
    return max(LIMITS.get("min_sequence_interval_ns", 0), LIMITS["min_period_ns"],
               2 * length + LIMITS.get("min_update_idle_ns", 0))


# ----------------------------------------------------------------------------------------------
# limits and user-facing units


def _fmt_num(x, digits=3):
    """Compact decimal: 200, 0.04, 1234.5 (no trailing zeros); 1.2e+20 beyond 1e15 (never a
    300-digit number)."""
    try:
        f = float(x)
    except OverflowError:  # an int/Fraction beyond float range: order of magnitude from its digits
        n = abs(int(x))
        return "%s%se+%d" % ("-" if x < 0 else "", str(n)[0], len(str(n)) - 1)
    x = f
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e15:
        return "%.4g" % x
    if x == int(x):
        return str(int(x))
    s = ("%%.%df" % digits) % x
    s = s.rstrip("0").rstrip(".")
    return "%.4g" % x if s in ("0", "-0") and x else s


def ns_to_us(ns):
    return _fmt_num(Fraction(ns, 1000))


# canonical/derived name -> (user-facing name, formatter of a raw value)
def _us(v):
    return "%s µs" % ns_to_us(v)


def _period(v):
    s = "%s µs" % ns_to_us(v)
    if v:
        s += " (%s Hz)" % _fmt_num(Fraction(1000000000, v))
    return s


USER_FIELDS = {
    "phase1_ns": ("phase1_us", _us),
    "interphase_ns": ("interphase_us", _us),
    "phase2_ns": ("phase2_us", _us),
    "recovery_ns": ("recovery_us", _us),
    "period_ns": ("period_us", _period),
    "interburst_ns": ("interburst_us", _us),
    "train_duration_ns": ("train_duration_us", _us),
    "train_delay_ns": ("train_delay_us", _us),
    "ramp_up_ns": ("ramp_up_us", _us),
    "ramp_down_ns": ("ramp_down_us", _us),
    "ramp_up_pulses": ("ramp_up_pulses", lambda v: "%s pulses" % _fmt_num(v)),
    "ramp_down_pulses": ("ramp_down_pulses", lambda v: "%s pulses" % _fmt_num(v)),
    "pulse_length_ns": ("pulse length", _us),
    "amplitude_ua": ("amplitude_ua", lambda v: "%s µA" % _fmt_num(v)),
    "phase2_amplitude_ua": ("phase-2 amplitude", lambda v: "%s µA" % _fmt_num(v)),
    "electrode_area_um2": ("electrode_area_mm2", lambda v: "%s mm²" % _fmt_num(Fraction(v, 1000000), 6)),
    "charge_per_phase_nc": ("charge per phase", lambda v: "%s nC" % _fmt_num(v)),
    "shannon_k_centi": ("charge density (Shannon k)", lambda v: _fmt_num(Fraction(v, 100), 2)),
    "duty_permille": ("duty cycle", lambda v: "%s %%" % _fmt_num(Fraction(v, 10), 1)),
    "burst_pulses": ("burst_pulses", lambda v: _fmt_num(v)),
    "polarity": ("polarity", lambda v: '"%s"' % P.POLARITY_NAMES[v] if 0 <= v < len(P.POLARITY_NAMES) else str(v)),
    "trigger": ("trigger", lambda v: '"%s"' % P.TRIGGER_NAMES[v] if 0 <= v < len(P.TRIGGER_NAMES) else str(v)),
    "shape": ("shape", lambda v: '"%s"' % P.SHAPE_NAMES[v] if 0 <= v < len(P.SHAPE_NAMES) else str(v)),
    # custom sequences (a device NACK names these)
    "sequence_pulses": ("sequence pulses", lambda v: "%s pulses" % _fmt_num(v)),
    "sequence_cycle_ns": ("cycle_us", _us),
    "onset_ns": ("onset_us", _us),
    "sequence_amplitude_ua": ("sequence amplitude", lambda v: "%s µA" % _fmt_num(v)),
}


def user_name(field):
    return USER_FIELDS.get(field, (field, None))[0]


def user_value(field, value):
    fmt = USER_FIELDS.get(field, (None, None))[1]
    if fmt is None or not isinstance(value, int) or isinstance(value, bool):
        return str(value)
    try:
        return fmt(value)
    except (ValueError, ZeroDivisionError, IndexError):
        return str(value)


def describe_violation(field, value, limit, relation, user_key=None):
    """The friendly sentence for a limit violation (host validation or firmware NACK), in user units:
    "<field> = <value> exceeds the firmware limit <limit>"."""
    name = (user_key or user_name(field)) if field else "request"
    if relation == "known":
        return "%s is not a known parameter" % name
    if relation == "integer":
        return "%s = %r is not a non-negative integer" % (name, value)
    if field in ("polarity", "trigger", "shape"):
        names = {"polarity": P.POLARITY_NAMES, "trigger": P.TRIGGER_NAMES, "shape": P.SHAPE_NAMES}[field]
        return "%s = %s is not one of %s" % (name, value, ", ".join(names))
    if field in ("channel", "mask"):
        return "%s = %s: exceeds the firmware limit %s" % (name, value, limit)
    v = user_value(field, value)
    lim = user_value(field, limit)
    if user_key and user_key != user_name(field):
        name = "%s (%s)" % (user_key, user_name(field))
    if relation == ">=":
        if field in ("period_ns",):
            return "%s = %s: is below the firmware minimum %s" % (name, v, lim)
        return "%s = %s: is below the firmware limit %s" % (name, v, lim)
    return "%s = %s: exceeds the firmware limit %s" % (name, v, lim)


# canonical field -> the firmware limit that bounds it (a value beyond the wire format's integer is
# reported against this limit, not against 2^64 - 1)
FIRMWARE_LIMIT_OF = {
    "phase1_ns": "max_phase_ns", "phase2_ns": "max_phase_ns", "interphase_ns": "max_interphase_ns",
    "recovery_ns": "max_recovery_ns", "period_ns": "max_duration_ns", "interburst_ns": "max_duration_ns",
    "train_duration_ns": "max_duration_ns", "train_delay_ns": "max_duration_ns", "ramp_up_ns": "max_ramp_ns",
    "ramp_down_ns": "max_ramp_ns", "ramp_up_pulses": "max_ramp_pulses", "ramp_down_pulses": "max_ramp_pulses",
    "amplitude_ua": "max_amplitude_ua", "burst_pulses": "max_burst_pulses",
    "sequence_pulses": "max_sequence_pulses", "sequence_cycle_ns": "max_duration_ns",
}


UNIT_NAMES = {"ns": "ns", "us": "µs", "ms": "ms", "s": "s"}
KEY_UNIT_FIELDS = ("ramp_up_ns", "ramp_down_ns")  # limit messages in the unit of the key the user wrote


def _in_key_unit(key, field, value, limit, relation):
    """``ramp_up_s = 20 s: exceeds the firmware limit 10 s``: a time violation in the unit of the key
    that gave it (None when ``key`` is not a time key of ``field`` or the relation is not a bound)."""
    if field not in KEY_UNIT_FIELDS or not key or relation not in ("<=", ">="):
        return None
    stem, unit = _split_unit(key, TIME_UNITS)
    if stem != TIME_FIELDS[field]:
        return None
    scale, name = TIME_UNITS[unit], UNIT_NAMES[unit]
    why = "exceeds the firmware limit" if relation == "<=" else "is below the firmware limit"
    return "%s = %s %s: %s %s %s" % (key, _fmt_num(Fraction(value) / scale, 6), name, why,
                                     _fmt_num(Fraction(limit) / scale, 6), name)


def check(paramset_or_params, limits):
    """What the firmware checks before it accepts a parameter set (``pulse_engine.build_checked``:
    protocol.params.validate, then what the engine and the DAC can produce, e.g. the phase-2
    amplitude after DAC rounding); raise :class:`ParamLimitError` with a user-unit message."""
    seq = None
    if isinstance(paramset_or_params, ParamSet):
        params, keys = paramset_or_params.params, paramset_or_params.keys
        seq = paramset_or_params.sequence
    else:
        params, keys = paramset_or_params, {}
    _train, v = pulse_engine.build_checked(params, limits)
    if v is None:
        if seq is not None:
            check_sequence(params, seq, limits)
        return params
    if seq is not None and v.field in SEQUENCE_FIELD_WORDS:
        raise ParamLimitError(_sequence_field_message(v, seq, limits), v)
    key = keys.get(v.field)
    limit = v.limit
    if v.relation == "<=" and v.field in FIRMWARE_LIMIT_OF and FIRMWARE_LIMIT_OF[v.field] in limits:
        limit = min(limit, limits[FIRMWARE_LIMIT_OF[v.field]])  # beyond the wire format: the real limit
    msg = _in_key_unit(key, v.field, v.value, limit, v.relation)
    if (v.field in KEY_UNIT_FIELDS and v.relation == "<=" and "max_ramp_pulses" in limits
            and limit < limits.get("max_ramp_ns", limit)):  # the bound is the ramp's pulse count
        msg = (msg or describe_violation(v.field, v.value, limit, v.relation)) + (
            " (%d pulses, the firmware's max_ramp_pulses, at this pulse rate)" % limits["max_ramp_pulses"])
    if msg is None:
        msg = describe_violation(v.field, v.value, limit, v.relation, user_key=None)
        if key and key != user_name(v.field):
            msg += " (from %s)" % key
    if v.field in ("shannon_k_centi", "charge_per_phase_nc"):
        msg += " (%s µA × %s µs = %s nC per phase on %s)" % (
            params["amplitude_ua"], ns_to_us(params["phase1_ns"]),
            _fmt_num(Fraction(params["amplitude_ua"] * params["phase1_ns"], 1000000)),
            user_value("electrode_area_um2", params["electrode_area_um2"]))
    raise ParamLimitError(msg, v)


# canonical fields a sequence derives -> how to name them in a message
SEQUENCE_FIELD_WORDS = {
    "period_ns": "the shortest interval between two onsets",
    "amplitude_ua": "the largest amplitude",
    "sequence_pulses": "the number of pulses",
    "sequence_cycle_ns": "the loop's cycle",
}


def _sequence_field_message(v, seq, limits):
    """A limit on a field the sequence derived, said in the sequence's own terms: "the shortest interval
    between two onsets, onsets_ms[3] -> [4] = 0.5 ms: is below the firmware minimum 2 ms"."""
    what = SEQUENCE_FIELD_WORDS[v.field]
    limit = v.limit
    if v.relation == "<=" and v.field in FIRMWARE_LIMIT_OF and FIRMWARE_LIMIT_OF[v.field] in limits:
        limit = min(limit, limits[FIRMWARE_LIMIT_OF[v.field]])
    why = ("is below the firmware minimum" if v.relation == ">=" else "exceeds the firmware limit")
    okey, akey = seq.keys["onsets"], seq.keys["amplitudes"]
    if v.field == "period_ns":
        d, i, j = seq.shortest_interval()
        if d is None:
            where = "%s (a single pulse)" % okey
        elif j == 0 and seq.loop:
            where = "%s[%d] -> the next cycle's %s[0]" % (okey, i, okey)
        else:
            where = "%s[%d] -> [%d]" % (okey, i, j)
        return "%s, %s = %s: %s %s" % (what, where, seq.in_unit(v.value), why, seq.in_unit(limit))
    if v.field == "sequence_cycle_ns":
        return "%s, %s = %s: %s %s" % (what, seq.keys["cycle"], seq.in_unit(v.value, "cycle"), why,
                                       seq.in_unit(limit, "cycle"))
    if v.field == "amplitude_ua":
        i = seq.amplitudes_ua.index(max(seq.amplitudes_ua))
        return "%s, %s[%d] = %s: %s %s" % (what, akey, i, seq.current(v.value), why, seq.current(limit))
    return "%s (%s) = %s: %s %s" % (what, okey, _fmt_num(v.value), why, _fmt_num(limit))


def check_sequence(params, seq, limits):
    """The per-pulse rules of a sequence (firmware.sequence.sequence_violation: every interval, in
    ticks of the absolute onsets, at least the period; every amplitude within 1..amplitude_ua; onsets
    within the firmware's longest duration), the same the firmware applies to each SET_SEQUENCE
    chunk; raises :class:`ParamLimitError` naming the pulse."""
    from firmware import sequence as fseq

    v = fseq.sequence_violation(params, limits, seq.onsets_ns, seq.amplitudes_ua)
    if v is None:
        return params
    why = "is below the firmware limit" if v.relation == ">=" else "exceeds the firmware limit"
    if v.field == "sequence_amplitude_ua" and len(seq.amplitudes_ua) != len(seq.onsets_ns):  # a Sequence from code
        msg = "%s: %d amplitudes for %d onsets (%s): give one amplitude per onset" % (
            seq.keys["amplitudes"], len(seq.amplitudes_ua), len(seq.onsets_ns), seq.keys["onsets"])
    elif v.relation == "integer" and v.field in ("sequence_amplitude_ua", "onset_ns"):  # e.g. a float from code
        values, key = (seq.amplitudes_ua, "amplitudes") if v.field == "sequence_amplitude_ua" else (seq.onsets_ns, "onsets")
        msg = "%s[%d] = %s: is not a non-negative integer" % (seq.keys[key], values.index(v.value), _seq_show(v.value))
    elif v.field == "sequence_amplitude_ua":  # the value is the pulse's own
        where = "%s[%d]" % (seq.keys["amplitudes"], seq.amplitudes_ua.index(v.value))
        msg = "%s = %s: %s %s" % (where, seq.current(v.value), why, seq.current(v.limit))
    elif v.field == "onset_ns":
        where = "%s[%d]" % (seq.keys["onsets"], seq.onsets_ns.index(v.value))
        msg = "%s = %s: %s %s" % (where, seq.in_unit(v.value), why, seq.in_unit(v.limit))
    else:
        msg = describe_violation(v.field, v.value, v.limit, v.relation) + " (from [sequence])"
    raise ParamLimitError(msg, v)


def check_amplitude(params, amplitude_ua, limits):
    """What the firmware checks before a live amplitude change (SET_AMPLITUDE): the channel's
    canonical ``params`` with ``amplitude_ua`` through :func:`check` (every limit, phase 2 after DAC
    rounding), then the idle after each pulse the DAC bus needs to update at a pulse boundary
    (pulse_engine.update_idle_violation). Returns the new parameter dict; raises
    :class:`ParamLimitError` with a user-unit message."""
    new = dict(params)
    new["amplitude_ua"] = amplitude_ua
    check(new, limits)
    train, _v = pulse_engine.build_checked(new, limits)
    v = pulse_engine.update_idle_violation(train, 1)
    if v is not None:
        raise ParamLimitError(describe_violation(v.field, v.value, v.limit, v.relation)
                              + " (a live amplitude change needs the DAC update idle after every pulse)", v)
    return new


# ----------------------------------------------------------------------------------------------
# requested vs realised


def ticks_to_ns(ticks, tick_hz):
    return Fraction(ticks * 1000000000, tick_hz)


def _time_names(realised):
    """Realised entries that are tick counts of a canonical *_ns field (phase1, period, ...)."""
    return [n for n in realised if n + "_ns" in P.FIELD_NAMES]


def _get(realised, *names):
    for n in names:
        if n in realised:
            return realised[n]
    return 0


def ramp_pulses(params):
    """{"ramp_up": K, "ramp_down": K}: how many pulses the soft start / soft stop of canonical
    ``params`` span, as the pulse engine counts them (a time ramp: the pulses that start within it);
    0 = none (a 1-pulse soft start plays its only pulse at full amplitude: none either)."""
    try:
        train = pulse_engine.build_train(P.complete(params))
    except Exception:  # parameters the engine cannot build have no ramp to report
        return {"ramp_up": 0, "ramp_down": 0}
    up = train.ramp_up_k if train.ramp_up_k > 1 else 0
    return {"ramp_up": up, "ramp_down": train.ramp_down_k}


def phase2_amplitude_ua(params):
    """Requested phase-2 amplitude for charge balance: amp1 × phase1 / phase2 (float µA)."""
    if not params["phase2_ns"]:
        return 0.0
    return params["amplitude_ua"] * params["phase1_ns"] / params["phase2_ns"]


def compare(params, realised):
    """Rows of (quantity, unit, requested, realised) as floats for display; times in µs."""
    tick_hz = realised["tick_hz"]
    rows = []
    for name in _time_names(realised):
        req = Fraction(params[name + "_ns"], 1000)
        real = ticks_to_ns(realised[name], tick_hz) / 1000
        rows.append((name + "_us", "µs", float(req), float(real)))
    rows.append(("amplitude_ua", "µA", float(params["amplitude_ua"]),
                 _get(realised, "amplitude_na", "amplitude1_na") / 1000.0))
    rows.append(("phase2_amplitude_ua", "µA", phase2_amplitude_ua(params),
                 _get(realised, "amplitude2_na") / 1000.0))
    rows.append(("charge_residual_pc", "pC", 0.0, _get(realised, "residual_fc", "residual_charge_fc") / 1000.0))
    return rows


def requested_us(params):
    """Canonical params -> user-facing dict (µs, µA, mm², names) for JSON output."""
    out = {}
    for field, value in params.items():
        if field.endswith("_ns"):
            out[field[:-3] + "_us"] = float(Fraction(value, 1000))
        elif field == "polarity":
            out[field] = P.POLARITY_NAMES[value] if value < len(P.POLARITY_NAMES) else value
        elif field == "trigger":
            out[field] = P.TRIGGER_NAMES[value] if value < len(P.TRIGGER_NAMES) else value
        elif field == "shape":
            out[field] = P.SHAPE_NAMES[value] if value < len(P.SHAPE_NAMES) else value
        elif field == "electrode_area_um2":
            out["electrode_area_mm2"] = value / 1e6
        else:
            out[field] = value
    out["phase2_amplitude_ua"] = phase2_amplitude_ua(params)
    if params.get("period_ns"):
        out["frequency_hz"] = 1e9 / params["period_ns"]
    return out


def realised_us(realised):
    """Realised ticks -> µs / µA / pC dict for JSON output (the raw tick counts are kept as *_ticks)."""
    tick_hz = realised["tick_hz"]
    out = {}
    for name in _time_names(realised):
        out[name + "_us"] = float(ticks_to_ns(realised[name], tick_hz) / 1000)
        out[name + "_ticks"] = realised[name]
    out["amplitude_ua"] = _get(realised, "amplitude_na", "amplitude1_na") / 1000.0
    out["phase2_amplitude_ua"] = _get(realised, "amplitude2_na") / 1000.0
    out["charge_residual_pc"] = _get(realised, "residual_fc", "residual_charge_fc") / 1000.0
    for name in ("dac_code1", "dac_code2", "pulses_per_cycle", "repeats"):
        if name in realised:
            out[name] = realised[name]
    out["tick_hz"] = tick_hz
    if realised.get("period"):
        out["frequency_hz"] = tick_hz / realised["period"]
    return out
