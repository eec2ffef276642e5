"""Issue 13 item 4, host side: the [sequence] table of a parameter file (onsets_ms/_us/_s/_ns,
amplitudes_ma/_ua, loop, cycle_*) -> a paramfile.Sequence plus the canonical fields the contract derives
(period_ns = the shortest interval in ticks of the absolute onsets, amplitude_ua = the largest amplitude,
sequence_pulses, sequence_cycle_ns); exact decimal -> integer ns conversion from the TOML text; one-line
errors naming the key (and the list index) for everything malformed or conflicting; limits in the
sequence's own terms. Expected values are computed here from the numbers written in each test."""

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.limits import LIMITS
from picostim import paramfile as pf
from protocol import params as P

BASE = "phase1_us = 200\nelectrode_area_mm2 = 5\n"
NS = {"ns": 1, "us": 1000, "ms": 10 ** 6, "s": 10 ** 9}
LIM = LIMITS["min_sequence_interval_ns"]  # the shortest interval a sequence may have (2 ms)
LIM_MS = str(Decimal(LIM) / 10 ** 6)  # the same in a file's ms ("2")


def load(seq, extra="", require=True):
    return pf.loads(BASE + extra + "[sequence]\n" + seq, require=require)


def err(seq, extra=""):
    with pytest.raises(pf.ParamFileError) as e:
        load(seq, extra)
    msg = str(e.value)
    assert "\n" not in msg
    return e.value


def nearest(x: Fraction) -> int:
    return int(x + Fraction(1, 2))  # x >= 0: halves up


def tick(ns: int) -> int:
    return nearest(Fraction(ns, 8))  # 125 MHz: 8 ns per tick


def test_a_sequence_file_and_what_it_derives():
    ps = load('onsets_ms = [0, 12.5, 30, 30 + LIM]\namplitudes_ma = [1.0, 1.5, 0.5, 2]\n'.replace("30 + LIM",
                                                                                             str(30 + Decimal(LIM_MS))))
    seq = ps.sequence
    assert seq.onsets_ns == [0, 12500000, 30000000, 30000000 + LIM]
    assert seq.amplitudes_ua == [1000, 1500, 500, 2000]
    assert not seq.loop and seq.cycle_ns == 0 and len(seq) == 4
    p = ps.params
    assert p["period_ns"] == LIM  # 30 ms -> the last onset: the limit
    assert p["amplitude_ua"] == 2000
    assert p["sequence_pulses"] == 4 and p["sequence_cycle_ns"] == 0
    for name in P.SEQUENCE_ZERO_FIELDS:
        assert p[name] == 0, name
    assert ps.keys["amplitude_ua"] == "amplitudes_ma" and ps.keys["period_ns"] == "onsets_ms"
    assert pf.check(ps, LIMITS) is p  # every rule of the firmware holds


@pytest.mark.parametrize("okey,values,ns", [
    ("onsets_us", "[0, 2500, 7000.25]", [0, 2500000, 7000250]),
    ("onsets_s", "[0.5, 1, 1.25]", [500000000, 10 ** 9, 1250000000]),
    ("onsets_ns", "[100, 2000100]", [100, 2000100]),
    ("onsets_ms", "[1.0000005, 3]", [1000001, 3000000]),  # half a ns rounds up
    ("onsets_ms", "[1.0000004, 3]", [1000000, 3000000]),
])
def test_onset_units(okey, values, ns):
    ps = load("%s = %s\namplitudes_ua = [%s]\n" % (okey, values, ", ".join(["100"] * len(ns))))
    assert ps.sequence.onsets_ns == ns
    assert ps.sequence.keys["onsets"] == okey


def test_decimal_text_is_converted_exactly():
    """12345.6789012345 s is 12345678901234.5 ns -> 12345678901235 (half up); the float nearest to
    that decimal is a little below it and would round down: the [sequence] table is read as decimal
    text."""
    text = "12345.6789012345"
    exact = 12345678901235
    via_float = nearest(Fraction(float(text)) * 10 ** 9)
    assert via_float != exact  # the test means something: a float reader gets another ns
    ps = load("onsets_s = [0, %s]\namplitudes_ua = [10, 10]\nloop = false\n" % text, require=False)
    assert ps.sequence.onsets_ns == [0, exact]
    # the rest of the file is read as before (floats), untouched by the decimal reader
    assert isinstance(pf.loads(BASE + "amplitude_ma = 1.5\nfrequency_hz = 20\n").params["amplitude_ua"], int)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10 ** 12), min_size=1, max_size=30, unique=True),
       st.sampled_from(sorted(NS)), st.integers(0, 9))
def test_any_decimal_onset_to_nearest_ns(raw, unit, digits):
    """Onsets written with up to 9 fractional digits in any unit: integer ns nearest to the decimal
    value (halves up), exactly; the period is the shortest interval in ticks of the absolute onsets."""
    raw = sorted(raw)
    texts = [str(Decimal(r).scaleb(-digits)) for r in raw]
    want = [nearest(Fraction(Decimal(t)) * NS[unit]) for t in texts]
    if any(b <= a for a, b in zip(want, want[1:])):
        with pytest.raises(pf.ParamFileError, match="strictly increasing"):
            load("onsets_%s = [%s]\namplitudes_ua = [%s]\n" % (unit, ", ".join(texts), ", ".join(["5"] * len(raw))))
        return
    ps = load("onsets_%s = [%s]\namplitudes_ua = [%s]\n" % (unit, ", ".join(texts), ", ".join(["5"] * len(raw))))
    assert ps.sequence.onsets_ns == want
    ticks = [tick(t) for t in want]
    assert ps.sequence.onset_ticks() == ticks
    if len(want) > 1:
        assert ps.params["period_ns"] == 8 * min(b - a for a, b in zip(ticks, ticks[1:]))


def test_period_is_the_shortest_interval_in_ticks():
    """1 ms + 4 ns -> tick 125001 (half up), 1 ms + LIM + 8 ns -> tick 125001 + LIM / 8: LIM / 8 ticks
    apart, though LIM + 4 ns apart (LIM / 8 + 0.5 ticks -> one more): the derived period is the tick
    interval, so the firmware's check (every tick interval >= the period's ticks) passes."""
    a, b = 10 ** 6 + 4, 10 ** 6 + LIM + 8
    assert (tick(a), tick(b), tick(b - a)) == (125001, 125001 + LIM // 8, LIM // 8 + 1)
    ps = load("onsets_ns = [%d, %d, %d]\namplitudes_ua = [100, 100, 100]\n" % (a, b, b + 2 * LIM))
    assert ps.params["period_ns"] == LIM // 8 * 8 == LIM
    assert pf.check(ps, LIMITS)


def test_loop_cycle_default_explicit_and_wrap_interval():
    ps = load("onsets_ms = [0, 10, 25]\namplitudes_ma = [1, 1, 1]\nloop = true\n")
    assert ps.sequence.loop and ps.sequence.cycle_ns == 40 * 10 ** 6  # 25 + (25 - 10)
    assert ps.params["sequence_cycle_ns"] == 40 * 10 ** 6
    assert ps.params["period_ns"] == 10 ** 7
    ps = load("onsets_ms = [2, 10, 25]\namplitudes_ma = [1, 1, 1]\nloop = true\ncycle_ms = 26.5\n")
    assert ps.sequence.cycle_ns == 26500000
    assert ps.params["period_ns"] == 3500000  # wrap: 26.5 - 25 + 2
    assert ps.sequence.shortest_interval() == (3500000, 2, 0)
    ps = load("onsets_ms = [3]\namplitudes_ma = [1]\nloop = true\ncycle_us = 5000\n")
    assert ps.params["period_ns"] == 5 * 10 ** 6 and ps.params["sequence_cycle_ns"] == 5 * 10 ** 6
    # a loop with a duration plays ceil(duration / cycle) cycles
    ps = load("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\nloop = true\n", "train_duration_ms = 50\n")
    assert ps.sequence.cycles(ps.params) == 3
    assert ps.sequence.play_ticks(3) == [0, 1250000, 2500000, 3750000, 5000000, 6250000]


def test_a_cycle_a_few_ns_below_its_ticks_still_validates():
    """cycle_ns = LIM + 4 is LIM / 8 + 0.5 ticks -> one more (LIM + 8 ns): the period (a one-pulse loop's
    only interval) must not exceed the cycle's ns (validate: cycle >= period) yet have the same ticks."""
    ps = load("onsets_ms = [0]\namplitudes_ma = [1]\nloop = true\ncycle_ns = %d\n" % (LIM + 4))
    assert ps.params["period_ns"] == LIM + 4 and tick(ps.params["period_ns"]) == LIM // 8 + 1
    assert pf.check(ps, LIMITS)
    ps = load("onsets_ns = [0, %d]\namplitudes_ma = [1, 1]\nloop = true\ncycle_ns = %d\n" % (LIM, 2 * LIM + 4))
    assert ps.params["period_ns"] == LIM  # the shorter 0 -> LIM interval, not the cycle
    assert pf.check(ps, LIMITS)


def test_single_pulse_played_once_gets_a_period_that_validates():
    ps = load("onsets_ms = [7]\namplitudes_ua = [300]\n")
    assert ps.sequence.shortest_interval() == (None, 0, 0)
    assert ps.params["period_ns"] >= LIMITS["min_sequence_interval_ns"]
    assert pf.check(ps, LIMITS)


@pytest.mark.parametrize("extra", [
    "frequency_hz = 20\n", "period_ms = 50\n", "interpulse_ms = 10\n", "burst_pulses = 3\n",
    "interburst_ms = 100\n", "burst_frequency_hz = 2\n", "burst_duration_ms = 100\n", "ramp_up_s = 1\n",
    "ramp_down_pulses = 5\n", "ramp_up_pulses = 5\n", "train_delay_ms = 5\n", "ramp_down_ms = 200\n",
])
def test_train_keys_conflict_with_a_sequence(extra):
    e = err("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\n", extra)
    key = extra.split(" = ")[0]
    assert str(e).startswith("%s = " % key) and "not allowed with [sequence]" in str(e), str(e)
    assert e.key == key


@pytest.mark.parametrize("extra", ["amplitude_ma = 1\n", "amplitude_ua = 500\n"])
def test_a_single_amplitude_conflicts_with_the_amplitudes(extra):
    e = err("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\n", extra)
    assert "not allowed with [sequence]: its amplitudes_ma (or amplitudes_ua) give every pulse's amplitude" in str(e)


@pytest.mark.parametrize("seq,message,key", [
    ("amplitudes_ma = [1]\n", "onsets_ms = (missing): [sequence] needs the pulse onsets", "onsets_ms"),
    ("onsets_ms = [0]\n", "amplitudes_ma = (missing): [sequence] needs one amplitude per onset", "amplitudes_ma"),
    ("onsets_ms = [0, 10]\nonsets_us = [0]\namplitudes_ma = [1, 1]\n",
     "onsets_us = [0]: conflicts with onsets_ms: give the onsets only once", "onsets_us"),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\namplitudes_ua = [1, 1]\n",
     "conflicts with amplitudes_ma: give the amplitudes only once", "amplitudes_ua"),
    ("onsets_ms = []\namplitudes_ma = []\n", "onsets_ms = []: a sequence needs at least one pulse", "onsets_ms"),
    ("onsets_ms = 5\namplitudes_ma = [1]\n", "onsets_ms = 5: expected a list of onset times", "onsets_ms"),
    ("onsets_ms = [0, 10, 10]\namplitudes_ma = [1, 1, 1]\n",
     "onsets_ms[2] = 10: is not after onsets_ms[1] = 10: onsets must be strictly increasing", "onsets_ms[2]"),
    ("onsets_ms = [0, 10, 9.5]\namplitudes_ma = [1, 1, 1]\n", "onsets_ms[2] = 9.5: is not after", "onsets_ms[2]"),
    ("onsets_ms = [0, -1]\namplitudes_ma = [1, 1]\n", "onsets_ms[1] = -1: must not be negative", "onsets_ms[1]"),
    ("onsets_ms = [0, inf]\namplitudes_ma = [1, 1]\n", "onsets_ms[1] = Infinity: expected a finite number",
     "onsets_ms[1]"),
    ("onsets_ms = [0, nan]\namplitudes_ma = [1, 1]\n", "onsets_ms[1] = NaN: expected a finite number", "onsets_ms[1]"),
    ("onsets_ms = [0, true]\namplitudes_ma = [1, 1]\n", "onsets_ms[1] = True: expected a number", "onsets_ms[1]"),
    ("onsets_ms = [0, \"5\"]\namplitudes_ma = [1, 1]\n", "onsets_ms[1] = '5': expected a number", "onsets_ms[1]"),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1]\n",
     "amplitudes_ma: 1 amplitudes for 2 onsets (onsets_ms): give one amplitude per onset", "amplitudes_ma"),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 0]\n", "amplitudes_ma[1] = 0: must be greater than 0",
     "amplitudes_ma[1]"),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 0.0004]\n",
     "amplitudes_ma[1] = 0.0004: is below 1 µA: every pulse of a sequence has a current", "amplitudes_ma[1]"),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\nloop = 1\n", "loop = 1: expected true or false", "loop"),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\ncycle_ms = 30\n",
     "cycle_ms = 30: only with loop = true (a sequence played once has no cycle)", "cycle_ms"),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\nloop = true\ncycle_ms = 10\n",
     "cycle_ms = 10: must be longer than the last onset (onsets_ms[1] = 10): onsets are times within the cycle",
     "cycle_ms"),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\nloop = true\ncycle_ms = 20\ncycle_us = 3\n",
     "conflicts with cycle_ms: give the cycle only once", "cycle_us"),
    ("onsets_ms = [5]\namplitudes_ma = [1]\nloop = true\n",
     "cycle_ms = (missing): loop = true with a single pulse: give the loop's cycle", "cycle_ms"),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\nrepeat = 3\n",
     "sequence.repeat = 3: unknown key in [sequence]; allowed keys: onsets_ns", "repeat"),
])
def test_malformed_sequences_name_the_key(seq, message, key):
    e = err(seq)
    assert message in str(e), str(e)
    assert e.key == key


def test_duration_only_with_a_loop():
    e = err("onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\n", "train_duration_s = 1\n")
    assert str(e) == ("train_duration_s = 1: only with loop = true: a sequence played once ends after its last "
                      "pulse")


def test_sequence_must_be_a_table():
    e = None
    with pytest.raises(pf.ParamFileError) as e:
        pf.loads(BASE + "sequence = 3\n")
    assert "[sequence] must be a table" in str(e.value)
    with pytest.raises(pf.ParamFileError, match=r"unknown table \(allowed: \[channel\], \[sequence\]\)"):
        pf.loads(BASE + "[seq]\nonsets_ms = [0]\n")


def test_required_keys_are_met_by_the_amplitudes():
    """The file's amplitude is its amplitudes list: check_required passes without amplitude_ma."""
    ps = load("onsets_ms = [0, 10]\namplitudes_ua = [100, 200]\n")
    assert pf.check_required(ps) is ps
    with pytest.raises(pf.ParamFileError, match=r"phase1_us = \(missing\)"):
        pf.loads("electrode_area_mm2 = 5\n[sequence]\nonsets_ms = [0, 10]\namplitudes_ua = [1, 2]\n", require=True)


# ---- limits, in the sequence's own terms (check -> ParamLimitError) ---------------------------------


@pytest.mark.parametrize("seq,message,field", [
    ("onsets_ms = [0, 12.5, 13]\namplitudes_ma = [1, 2, 3]\n",
     "the shortest interval between two onsets, onsets_ms[1] -> [2] = 0.5 ms: is below the firmware minimum %s ms"
     % LIM_MS,
     "period_ns"),
    ("onsets_ms = [0, 12.5, 30]\namplitudes_ma = [1, 2, 3]\nloop = true\ncycle_ms = 30.5\n",
     "onsets_ms[2] -> the next cycle's onsets_ms[0] = 0.5 ms: is below the firmware minimum %s ms" % LIM_MS,
     "period_ns"),
    ("onsets_ms = [0, 12.5, 30]\namplitudes_ma = [1, 20, 3]\n",
     "the largest amplitude, amplitudes_ma[1] = 20 mA: exceeds the firmware limit 10 mA", "amplitude_ua"),
    ("onsets_s = [0, 1, 90000]\namplitudes_ua = [100, 200, 300]\n",
     "onsets_s[2] = 90000 s: exceeds the firmware limit 86400 s", "onset_ns"),
    ("onsets_us = [0.008, 5000]\namplitudes_ua = [100, 200]\n",  # 1 tick: shorter than one PIO segment
     "onsets_us[0] = 0.008 µs: is below the firmware limit 0.04 µs", "onset_ns"),
])
def test_limits_name_the_pulse(seq, message, field):
    ps = load(seq)
    with pytest.raises(pf.ParamLimitError) as e:
        pf.check(ps, LIMITS)
    assert str(e.value).endswith(message), str(e.value)
    assert e.value.violation.field == field


def test_too_many_pulses():
    n = LIMITS["max_sequence_pulses"] + 1
    ps = load("onsets_ms = [%s]\namplitudes_ua = [%s]\n" % (", ".join(str(2 * i) for i in range(n)),
                                                          ", ".join(["100"] * n)))
    with pytest.raises(pf.ParamLimitError) as e:
        pf.check(ps, LIMITS)
    assert e.value.violation.field == "sequence_pulses"
    assert "the number of pulses (onsets_ms) = %d: exceeds the firmware limit %d" % (
        n, LIMITS["max_sequence_pulses"]) in str(e.value)


def test_gated_trigger_refused():
    ps = load("onsets_ms = [0, 10]\namplitudes_ua = [100, 200]\n", 'trigger = "gated1"\n')
    with pytest.raises(pf.ParamLimitError) as e:
        pf.check(ps, LIMITS)
    assert e.value.violation.field == "trigger"


def test_dict_input_uses_exact_values():
    """From Python code (the API's dict form): Decimal / Fraction / int values are exact; floats are
    taken at their exact binary value."""
    d = {"phase1_us": 200, "electrode_area_mm2": 5,
         "sequence": {"onsets_s": [0, Decimal("1234567.123456789"), Fraction(2469134246913578, 2 * 10 ** 9) + 1],
                      "amplitudes_ua": [1, 2, 3]}}
    ps = pf.from_dict(d)
    assert ps.sequence.onsets_ns[1] == 1234567123456789
    assert ps.sequence.onsets_ns[2] == 1234567123456789 + 10 ** 9


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(LIM, 3 * LIM + 13), min_size=1, max_size=25),
       st.one_of(st.integers(0, 9_999), st.integers(0, 48)),
       st.lists(st.integers(1, 4_000), min_size=25, max_size=25), st.booleans(), st.integers(0, 2 * LIM + 13))
def test_derived_fields_satisfy_the_firmware_for_any_legal_sequence(gaps, first, amps, loop, extra):
    """Any sequence whose onsets (integer ns) are at least the limit (min_sequence_interval_ns) apart,
    with amplitudes up to 4 mA (within the charge and Shannon limits of 200 µs phases on 5 mm²),
    played once or looped (cycle = last onset + the limit + extra): the derived period / amplitude / cycle pass
    the firmware's own rules (params.validate, the engine, and every pulse through
    firmware.sequence.sequence_violation: intervals in ticks of the absolute onsets >= the period's ticks,
    the wrap too), i.e. paramfile.check accepts it. A period derived in ns, or a cycle below the wrap's
    ticks, would break this for some onsets (intervals equal in ns can differ by one tick)."""
    onsets = [first]
    for g in gaps[:-1]:
        onsets.append(onsets[-1] + g)
    n = len(onsets)
    seq = "onsets_ns = [%s]\namplitudes_ua = [%s]\n" % (", ".join(map(str, onsets)), ", ".join(map(str, amps[:n])))
    if loop:
        seq += "loop = true\ncycle_ns = %d\n" % (onsets[-1] + LIM + extra)
    ps = load(seq)
    if 0 < tick(first) < 5:  # a first onset of 1..4 ticks: shorter than one PIO segment, unplayable
        with pytest.raises(pf.ParamLimitError) as e:
            pf.check(ps, LIMITS)
        assert (e.value.violation.field, e.value.violation.value, e.value.violation.limit) == ("onset_ns", first, 40)
        return
    assert pf.check(ps, LIMITS) is ps.params
    ticks = ps.sequence.onset_ticks()
    intervals = [b - a for a, b in zip(ticks, ticks[1:])]
    if loop:
        intervals.append(tick(ps.sequence.cycle_ns) - ticks[-1] + ticks[0])
    if intervals:
        assert tick(ps.params["period_ns"]) == min(intervals)
    assert ps.params["amplitude_ua"] == max(amps[:n])
