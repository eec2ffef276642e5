"""validate's limits pinned at their exact boundaries (mutation testing, issue 15).

For every limit: the value AT the limit is accepted and one unit past it is refused with the field,
value, limit and relation the NACK carries. Custom limit sets isolate a rule from the ones before it.
"""
from __future__ import annotations

import pytest

from firmware.limits import LIMITS
from protocol import params as P

DEAD = LIMITS["min_dead_time_ns"]
BASE = P.complete({})


def v_of(limits=LIMITS, **kw):
    v = P.validate(dict(BASE, **kw), limits)
    return None if v is None else (v.field, v.value, v.limit, v.relation)


def test_base_set_is_accepted():
    assert v_of() is None


@pytest.mark.parametrize("field,ok,bad,limit,rel,extra", [
    ("polarity", 1, 2, 1, "<=", {}),
    ("trigger", 4, 5, 4, "<=", {}),
    ("amplitude_ua", 1, 0, 1, ">=", {}),
    ("amplitude_ua", 10000, 10001, 10000, "<=", {}),
    ("phase1_ns", 40, 39, 40, ">=", {}),
    ("phase1_ns", 10_000_000, 10_000_001, 10_000_000, "<=", {"amplitude_ua": 100, "period_ns": 10**8}),
    ("phase2_ns", 40, 39, 40, ">=", {"phase1_ns": 40}),
    ("phase2_ns", 10_000_000, 10_000_001, 10_000_000, "<=", {"period_ns": 10**8}),
    ("interphase_ns", 10_000_000, 10_000_001, 10_000_000, "<=", {}),
    ("recovery_ns", 100_000_000, 100_000_001, 100_000_000, "<=", {"period_ns": 10**9}),
    ("electrode_area_um2", 100, 99, 100, ">=", {"amplitude_ua": 1, "phase1_ns": 40}),
    ("burst_pulses", 10000, 10001, 10000, "<=", {}),
    ("ramp_up_ns", 60_000_000_000, 60_000_000_001, 60_000_000_000, "<=", {}),
    ("ramp_down_ns", 60_000_000_000, 60_000_000_001, 60_000_000_000, "<=", {}),
    ("ramp_up_pulses", 1000, 1001, 1000, "<=", {}),
    ("ramp_down_pulses", 1000, 1001, 1000, "<=", {}),
    # a ramp given both as a time and as pulses: the pulses field is refused (limit 0)
    ("ramp_up_pulses", 0, 7, 0, "<=", {"ramp_up_ns": 10**9}),
    ("ramp_down_pulses", 0, 7, 0, "<=", {"ramp_down_ns": 10**9}),
    ("period_ns", 86_400_000_000_000, 86_400_000_000_001, 86_400_000_000_000, "<=", {}),
    ("interburst_ns", 86_400_000_000_000, 86_400_000_000_001, 86_400_000_000_000, "<=", {}),
    ("train_duration_ns", 86_400_000_000_000, 86_400_000_000_001, 86_400_000_000_000, "<=", {}),
    ("train_delay_ns", 86_400_000_000_000, 86_400_000_000_001, 86_400_000_000_000, "<=", {}),
    ("period_ns", 100_000, 99_999, 100_000, ">=", {"phase1_ns": 1000, "phase2_ns": 1000}),
])
def test_each_limit_at_and_past_its_boundary(field, ok, bad, limit, rel, extra):
    assert v_of(**dict(extra, **{field: ok})) is None
    assert v_of(**dict(extra, **{field: bad})) == (field, bad, limit, rel)


@pytest.mark.parametrize("ramp", [{"ramp_up_pulses": 5}, {"ramp_down_ns": 1}, {"ramp_up_ns": 1},
                                  {"ramp_down_pulses": 1}])
def test_a_ramped_train_leaves_the_dac_update_idle_after_every_pulse(ramp):
    # without the duty and rate limits (custom set) only the idle rules decide: 200 + 1 (dead time)
    # + 200 µs pulse, then min_update_idle_ns (8 µs) with a ramp, else the dead time (1 µs)
    L = dict(LIMITS, max_duty_permille=1000, min_period_ns=0)
    assert L["min_update_idle_ns"] == 8000
    assert v_of(L, period_ns=402_000) is None
    assert v_of(L, period_ns=409_000, **ramp) is None
    assert v_of(L, period_ns=408_999, **ramp) == ("period_ns", 408_999, 409_000, ">=")
    assert v_of(L, period_ns=402_000, **ramp) == ("period_ns", 402_000, 409_000, ">=")


@pytest.mark.parametrize("field", ["recovery_ns", "interburst_ns", "train_delay_ns"])
def test_a_gap_is_zero_or_at_least_one_segment(field):
    extra = {"period_ns": 10**8}
    assert v_of(**dict(extra, **{field: 0})) is None
    assert v_of(**dict(extra, **{field: 40})) is None
    assert v_of(**dict(extra, **{field: 39})) == (field, 39, 40, ">=")
    assert v_of(**dict(extra, **{field: 1})) == (field, 1, 40, ">=")


def test_interphase_is_judged_as_realised_with_the_dead_time():
    L0 = dict(LIMITS, min_dead_time_ns=0)
    assert v_of(L0, interphase_ns=0) is None
    assert v_of(L0, interphase_ns=40) is None
    assert v_of(L0, interphase_ns=39) == ("interphase_ns", 39, 40, ">=")
    assert v_of(L0, interphase_ns=1) == ("interphase_ns", 1, 40, ">=")
    # a dead time below one segment makes even a zero request unproducible
    L20 = dict(LIMITS, min_dead_time_ns=20)
    assert v_of(L20, interphase_ns=0) == ("interphase_ns", 0, 40, ">=")
    assert v_of(L20, interphase_ns=40) is None
    # the board's dead time (>= one segment) lengthens a short request instead of refusing it
    assert v_of(interphase_ns=1) is None


def test_realised_interphase_and_pulse_length():
    p = dict(BASE, phase1_ns=1000, interphase_ns=30, phase2_ns=2000, recovery_ns=5000)
    assert P.interphase_realised_ns(p, 48) == 48
    assert P.interphase_realised_ns(p, 20) == 30
    assert P.recovery_gap_ns(p, 48) == 48
    assert P.pulse_length_ns(p, 48) == 1000 + 48 + 2000 + 48 + 5000
    p0 = dict(p, recovery_ns=0)
    assert P.recovery_gap_ns(p0, 48) == 0
    assert P.pulse_length_ns(p0, 20) == 1000 + 30 + 2000


@pytest.mark.parametrize("dead", [0, 20, 40, 100, DEAD])
@pytest.mark.parametrize("recovery", [0, 700])
def test_period_must_fit_the_pulse_and_its_idle(dead, recovery):
    """period >= phase1 + realised interphase + phase2 (+ dead time + recovery) + max(dead, segment)."""
    L = dict(LIMITS, min_dead_time_ns=dead, min_period_ns=0, max_duty_permille=1000)
    ip = 300
    length = 1000 + max(ip, dead) + 2000 + ((dead + recovery) if recovery else 0)
    need = length + max(dead, 40)
    kw = dict(phase1_ns=1000, interphase_ns=ip, phase2_ns=2000, recovery_ns=recovery, amplitude_ua=10)
    assert v_of(L, period_ns=need, **kw) is None
    assert v_of(L, period_ns=need - 1, **kw) == ("period_ns", need - 1, need, ">=")


def test_phase2_amplitude_is_rounded_up():
    # 11 µA x 909091 ns = 10_000_001 fC over 1000 ns needs 10000.001 µA: refused as 10001
    kw = dict(amplitude_ua=11, phase1_ns=909_091, phase2_ns=1000, period_ns=10**8)
    assert v_of(**kw) == ("phase2_amplitude_ua", 10001, 10000, "<=")
    assert v_of(**dict(kw, phase1_ns=909_090)) is None  # 9999.99 µA
    assert v_of(amplitude_ua=10000, phase1_ns=1000, phase2_ns=1000, period_ns=10**6) is None


def test_charge_is_rounded_up_to_the_next_nc():
    L = dict(LIMITS, max_charge_nc=1, max_amplitude_ua=10**6)
    kw = dict(amplitude_ua=1, phase2_ns=2_000_000, period_ns=10**8, electrode_area_um2=10**9)
    assert v_of(L, phase1_ns=1_000_000, **kw) is None                 # exactly 1 nC
    assert v_of(L, phase1_ns=1_000_001, **kw) == ("charge_per_phase_nc", 2, 1, "<=")


def test_duty_is_rounded_up():
    kw = dict(phase1_ns=50000, phase2_ns=50001, amplitude_ua=1, period_ns=200000)
    assert v_of(**kw) == ("duty_permille", 501, 500, "<=")  # 500.005 permille
    assert v_of(**dict(kw, phase2_ns=50000)) is None


def test_shannon_violation_reports_the_k_over_the_limit():
    v = P.validate(dict(BASE, amplitude_ua=10000, phase1_ns=200000, phase2_ns=200000,
                        electrode_area_um2=100), LIMITS)
    assert (v.field, v.limit, v.relation) == ("shannon_k_centi", 185, "<=")
    # k = log10(2 µC) + log10(2 µC / 1e-6 cm²) = 0.301 + 6.301 = 6.60
    assert v.value == 660
    assert P.shannon_k(0, 100) == -99.0
    assert P.shannon_k(-5, 100) == -99.0
    assert round(P.shannon_k(2_000_000, 100), 3) == 6.602


def test_wire_type_checks():
    assert v_of(polarity=256) == ("polarity", 256, 255, "<=")
    assert v_of(polarity=255) == ("polarity", 255, 1, "<=")
    assert v_of(amplitude_ua=2**32) == ("amplitude_ua", 2**32, 2**32 - 1, "<=")
    assert v_of(period_ns=2**64) == ("period_ns", 2**64, 2**64 - 1, "<=")
    assert v_of(phase1_ns=-1) == ("phase1_ns", -1, 0, ">=")
    assert v_of(polarity=True) == ("polarity", True, 0, "integer")
    assert v_of(phase1_ns=1.0) == ("phase1_ns", 1.0, 0, "integer")
    assert v_of(bogus=3) == ("bogus", 3, 0, "known")


def test_violation_messages_and_names():
    assert P.Violation("x", 1, 0, "known").message() == "x is not a known parameter"
    assert P.Violation("x", 1.5, 0, "integer").message() == "x = 1.5 is not a non-negative integer"
    assert P.Violation("x", 7, 5, "<=").message() == "x = 7 violates limit <= 5"
    assert repr(P.Violation("x", 3, 5, ">=")) == "Violation(x = 3 violates limit >= 5)"
    assert P.field_name(P.field_id("period_ns")) == "period_ns"
    assert P.field_name(len(P.NAMES)) == "?"
    assert P.field_name(-1) == "?"
    assert P.field_name(len(P.NAMES) - 1) == P.NAMES[-1]


def test_shannon_k_value():
    import math
    for q_pc, area in ((2_000_000, 100), (1, 10**8), (3_500, 6_000_000), (123_456, 777)):
        q_uc, a_cm2 = q_pc / 1e6, area / 1e8
        want = 2 * math.log10(q_uc) - math.log10(a_cm2)  # log Q + log(Q/A), written differently
        assert abs(P.shannon_k(q_pc, area) - want) < 1e-10, (q_pc, area)
    assert P.shannon_k(1, 10**8) == pytest.approx(-12.0)


def test_shannon_bound_is_computed_not_only_cached():
    # the bound is cached per k; computed afresh it must still be floor(1000 * 10^(k/100))
    P._SHANNON_CACHE.clear()
    try:
        assert P.shannon_bound_milli(185) == 70794        # 1000 * 10^1.85 = 70794.58
        assert P._SHANNON_CACHE[185] == 70794
        assert P.shannon_bound_milli(0) == 1000
        assert P.shannon_bound_milli(-300) == 1
        assert P.shannon_bound_milli(200) == 100000
        assert P.shannon_bound_milli(1) == 1023            # 1000 * 10^0.01 = 1023.29
    finally:
        P._SHANNON_CACHE.clear()


def test_shannon_limit_is_exact_at_a_perfect_square():
    # floor(1000 * 10^1.85) = 70794 = 2 * 3^4 * 19 * 23; with A = 2185 µm² (5 * 19 * 23) the integer
    # bound 70794 * A * 1e7 is the perfect square 39 330 000²: Q = 39 330 000 fC is exactly on the line
    L = dict(LIMITS, max_phase_ns=10**10)
    q = 39_330_000
    assert 70794 * 2185 * 10**7 == q * q
    base = dict(BASE, amplitude_ua=1, phase2_ns=q + 1, period_ns=10**9, electrode_area_um2=2185)
    assert P.validate(dict(base, phase1_ns=q), L) is None
    v = P.validate(dict(base, phase1_ns=q + 1), L)  # 1 fC over: refused
    assert (v.field, v.limit, v.relation) == ("shannon_k_centi", 185, "<=")
    assert v.value == 186  # k = 1.850000...: reported as at least one step over the limit


def test_shannon_violation_value_is_the_rounded_k():
    import math
    kw = dict(amplitude_ua=2049, phase1_ns=200_000, phase2_ns=200_000, electrode_area_um2=100)
    v = P.validate(dict(BASE, **kw), LIMITS)
    q_uc = 2049 * 200_000 / 1e9
    k = 2 * math.log10(q_uc) - math.log10(100 / 1e8)   # 5.2251
    assert v.field == "shannon_k_centi" and v.value == int(k * 100 + 0.5) == 523


# ---- protocol 8 and triphasic additions (survivors of the 45ffc0d run)
def test_a_triphasic_pulse_has_two_interphases():
    # flank, gap, main phase, gap, flank: the period must hold both realised gaps
    p = dict(BASE, shape=P.SHAPE_TRIPHASIC, phase1_ns=1000, interphase_ns=300, phase2_ns=2000, recovery_ns=0)
    assert P.pulse_length_ns(p, 48) == 1000 + 2 * 300 + 2000
    assert P.pulse_length_ns(p, 500) == 1000 + 2 * 500 + 2000
    assert P.pulse_length_ns(dict(p, shape=P.SHAPE_BIPHASIC), 48) == 1000 + 300 + 2000
    L = dict(LIMITS, min_dead_time_ns=100, min_period_ns=0, max_duty_permille=1000)
    kw = dict(shape=P.SHAPE_TRIPHASIC, phase1_ns=1000, interphase_ns=300, phase2_ns=2000, amplitude_ua=10)
    need = 1000 + 2 * 300 + 2000 + 100
    assert v_of(L, period_ns=need, **kw) is None
    assert v_of(L, period_ns=need - 1, **kw) == ("period_ns", need - 1, need, ">=")


def test_each_triphasic_flank_is_at_least_the_shortest_phase():
    # phase 2 is two flanks of phase2_ns / 2 each: phase2_ns >= 2 x min_phase_ns (80 ns)
    kw = dict(shape=P.SHAPE_TRIPHASIC, phase1_ns=40, amplitude_ua=100, period_ns=10**6)
    assert v_of(phase2_ns=80, **kw) is None
    assert v_of(phase2_ns=79, **kw) == ("phase2_ns", 79, 80, ">=")
    assert v_of(phase2_ns=79, **dict(kw, shape=P.SHAPE_BIPHASIC)) is None


def test_is_sequence_of_a_partial_dict():
    # a dict without the field (an older parameter set) is a regular train; one pulse is a sequence
    assert P.is_sequence({}) is False
    assert P.is_sequence({"period_ns": 10**6}) is False
    assert P.is_sequence({"sequence_pulses": 1}) is True
    assert P.is_sequence({"sequence_pulses": 0}) is False



def test_shannon_violation_reports_k_of_the_exact_charge():
    # 1481 µA x 7979 ns = 11 816 899 fC on 100 µm²: k = 2.145007, reported rounded as 215. Flooring the
    # charge to 11 816 pC first gave 2.144993 -> 214 (bug found by mutation testing, issue 15)
    import math
    kw = dict(amplitude_ua=1481, phase1_ns=7979, phase2_ns=7979, electrode_area_um2=100, period_ns=10**7)
    q_uc = 1481 * 7979 / 1e9
    k_centi = (2 * math.log10(q_uc) - math.log10(100 / 1e8)) * 100
    assert 214.5 < k_centi < 214.501
    v = P.validate(dict(BASE, **kw), LIMITS)
    assert (v.field, v.value, v.limit, v.relation) == ("shannon_k_centi", 215, 185, "<=")
