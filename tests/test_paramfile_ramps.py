"""Issue 13 item 2, host side: the ramp keys of a parameter file (ramp_up_s/_ms/... or ramp_up_pulses,
ramp_down_s/_ms/... or ramp_down_pulses) -> the canonical fields of docs/dac_contract (ramp_up_ns,
ramp_down_ns, ramp_up_pulses, ramp_down_pulses); one-line errors naming the key for both forms given,
negative or non-integer pulse counts, and limits in the key's own unit."""

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.limits import LIMITS
from picostim import paramfile as pf
from protocol import params as P

BASE = "frequency_hz = 20\nphase1_us = 200\namplitude_ma = 1\nelectrode_area_mm2 = 5\n"
RAMP_FIELDS = ("ramp_up_ns", "ramp_down_ns", "ramp_up_pulses", "ramp_down_pulses")



def load(extra):
    return pf.loads(BASE + extra, require=True)


def test_contract_fields_exist():
    """The wire fields the keys map to (protocol/params.py, appended by the firmware side)."""
    for name in RAMP_FIELDS:
        assert name in P.FIELD_NAMES, name
    assert "max_ramp_pulses" in P.LIMIT_NAMES and "max_ramp_pulses" in LIMITS


@pytest.mark.parametrize("key,value,field,expected", [
    ("ramp_up_s", 1, "ramp_up_ns", 10 ** 9),
    ("ramp_up_ms", 500, "ramp_up_ns", 5 * 10 ** 8),
    ("ramp_up_ms", 0.0000004, "ramp_up_ns", 0),  # 0.4 ns -> nearest ns
    ("ramp_up_us", 2.5, "ramp_up_ns", 2500),
    ("ramp_down_s", 0.25, "ramp_down_ns", 250000000),
    ("ramp_down_ms", 1.0000005, "ramp_down_ns", 1000001),  # half a ns rounds up
    ("ramp_up_pulses", 20, "ramp_up_pulses", 20),
    ("ramp_down_pulses", 7, "ramp_down_pulses", 7),
])
def test_ramp_keys_map_to_canonical_fields(key, value, field, expected):
    ps = load("%s = %r\n" % (key, value))
    assert ps.params[field] == expected
    assert ps.keys[field] == key
    for other in RAMP_FIELDS:
        if other != field:
            assert ps.params[other] == 0, other
    assert set(ps.params) == set(P.FIELD_NAMES)


def test_up_and_down_together_in_the_channel_table():
    ps = pf.loads('name = "r"\n[channel]\n' + BASE + "ramp_up_pulses = 10\nramp_down_ms = 300\n", require=True)
    assert (ps.params["ramp_up_pulses"], ps.params["ramp_up_ns"]) == (10, 0)
    assert (ps.params["ramp_down_ns"], ps.params["ramp_down_pulses"]) == (300000000, 0)


@pytest.mark.parametrize("text,key,words", [
    ("ramp_up_s = 1\nramp_up_pulses = 10\n", "ramp_up_pulses",
     ["ramp_up_pulses = 10", "ramp_up_s = 1", "not both"]),
    ("ramp_down_pulses = 0\nramp_down_ms = 200\n", "ramp_down_pulses",
     ["ramp_down_pulses = 0", "ramp_down_ms = 200", "not both"]),
    ("ramp_up_ms = 100\nramp_up_s = 1\n", "ramp_up_s", ["ramp_up_ms", "only one"]),
    ("ramp_up_pulses = -3\n", "ramp_up_pulses", ["ramp_up_pulses = -3", "negative"]),
    ("ramp_down_pulses = 2.5\n", "ramp_down_pulses", ["ramp_down_pulses = 2.5", "whole number"]),
    ("ramp_down_pulses = true\n", "ramp_down_pulses", ["True", "whole number"]),
    ('ramp_up_pulses = "10"\n', "ramp_up_pulses", ["'10'", "whole number"]),
    ("ramp_up_s = -1\n", "ramp_up_s", ["-1", "negative"]),
    ("ramp_down_ms = nan\n", "ramp_down_ms", ["nan", "finite"]),
    ("ramp_up_puls = 3\n", "ramp_up_puls", ["unknown key", "ramp_up_pulses", "ramp_down_ms"]),
])
def test_ramp_key_errors_are_one_line_naming_the_key(text, key, words):
    with pytest.raises(pf.ParamFileError) as ei:
        load(text)
    msg = str(ei.value)
    assert ei.value.key == key and "\n" not in msg
    assert msg.startswith(key)
    for w in words:
        assert w in msg, (w, msg)


def _limit_s(name):
    return Fraction(LIMITS[name], 10 ** 9)


@pytest.mark.parametrize("key,scale,unit", [("ramp_up_s", 10 ** 9, "s"), ("ramp_down_ms", 10 ** 6, "ms"),
                                            ("ramp_up_us", 1000, "µs")])
def test_ramp_time_beyond_limit_in_the_keys_own_unit(key, scale, unit):
    slow = BASE.replace("frequency_hz = 20", "frequency_hz = 1")  # max_ramp_pulses is not the bound here
    over = LIMITS["max_ramp_ns"] // scale + 1
    ps = pf.loads(slow + "%s = %d\n" % (key, over))
    with pytest.raises(pf.ParamLimitError) as ei:
        pf.check(ps, LIMITS)
    limit = pf._fmt_num(Fraction(LIMITS["max_ramp_ns"], scale), 6)
    assert str(ei.value) == "%s = %d %s: exceeds the firmware limit %s %s" % (key, over, unit, limit, unit)
    ok = pf.loads(slow + "%s = %s\n" % (key, LIMITS["max_ramp_ns"] // scale))  # on the limit: accepted
    pf.check(ok, LIMITS)


def test_ramp_time_bounded_by_the_pulse_count_says_so():
    """At 20 Hz a 60 s ramp is 1200 pulses: the bound is max_ramp_pulses, and the message says why the
    limit is below max_ramp_ns."""
    n = LIMITS["max_ramp_pulses"]
    limit_s = Fraction(n, 20)  # 1000 pulses at 20 Hz
    assert limit_s * 10 ** 9 < LIMITS["max_ramp_ns"]
    ps = load("ramp_up_s = %s\n" % pf._fmt_num(limit_s + 1))
    with pytest.raises(pf.ParamLimitError) as ei:
        pf.check(ps, LIMITS)
    assert str(ei.value) == ("ramp_up_s = %s s: exceeds the firmware limit %s s (%d pulses, the firmware's "
                             "max_ramp_pulses, at this pulse rate)"
                             % (pf._fmt_num(limit_s + 1), pf._fmt_num(limit_s), n))
    pf.check(load("ramp_up_s = %s\n" % pf._fmt_num(limit_s)), LIMITS)


def test_absurd_ramp_time_reports_the_firmware_limit_not_the_wire_ceiling():
    ps = load("ramp_down_s = 1e30\n")
    with pytest.raises(pf.ParamLimitError) as ei:
        pf.check(ps, LIMITS)
    msg = str(ei.value)
    limit = pf._fmt_num(_limit_s("max_ramp_ns"))
    assert msg.startswith("ramp_down_s = 1e+30 s: exceeds the firmware limit %s s" % limit)
    assert "18446744073709551615" not in msg and len(msg) < 120


@pytest.mark.parametrize("key", ["ramp_up_pulses", "ramp_down_pulses"])
def test_ramp_pulses_beyond_limit(key):
    n = LIMITS["max_ramp_pulses"]
    pf.check(load("%s = %d\n" % (key, n)), LIMITS)
    with pytest.raises(pf.ParamLimitError) as ei:
        pf.check(load("%s = %d\n" % (key, n + 1)), LIMITS)
    assert str(ei.value) == "%s = %d pulses: exceeds the firmware limit %d pulses" % (key, n + 1, n)
    with pytest.raises(pf.ParamLimitError) as ei:
        pf.check(load("%s = %d\n" % (key, 10 ** 30)), LIMITS)
    assert str(ei.value).endswith("exceeds the firmware limit %d pulses" % n)


UNITS = {"ns": 1, "us": 1000, "ms": 10 ** 6, "s": 10 ** 9}
time_value = st.one_of(st.integers(0, 10 ** 7), st.floats(0, 1e7, allow_nan=False, allow_infinity=False))
ramp_form = st.one_of(
    st.none(),
    st.tuples(st.just("time"), time_value, st.sampled_from(sorted(UNITS))),
    st.tuples(st.just("pulses"), st.integers(0, 10 ** 6)),
)


@given(ramp_form, ramp_form)
def test_ramp_keys_round_trip_to_canonical_ns_and_pulses(up, down):
    """Any ramp written as a time in any unit or as a pulse count -> exactly the canonical ns (nearest
    ns, halves up) or the same count; the other form of the same ramp stays 0."""
    lines = []
    for side, form in (("up", up), ("down", down)):
        if form is None:
            continue
        if form[0] == "time":
            lines.append("ramp_%s_%s = %r" % (side, form[2], form[1]))
        else:
            lines.append("ramp_%s_pulses = %d" % (side, form[1]))
    p = load("\n".join(lines) + "\n").params
    for side, form in (("up", up), ("down", down)):
        ns, pulses = p["ramp_%s_ns" % side], p["ramp_%s_pulses" % side]
        if form is None:
            assert (ns, pulses) == (0, 0)
        elif form[0] == "time":
            exact = Fraction(form[1]) * UNITS[form[2]]
            assert -Fraction(1, 2) < ns - exact <= Fraction(1, 2) and pulses == 0
        else:
            assert (ns, pulses) == (0, form[1])
    # and the canonical set packs onto the wire and back unchanged
    assert P.unpack(P.pack(p)) == p
