"""Property tests of protocol.params: wire packing and the safety validation.

Every accepted random parameter set is re-checked against every limit with independent arithmetic
(exact integers, or floats with a margin for Shannon's k); every refusal must name a field that
exists in ``protocol.params.NAMES`` and the named rule must really be violated.
"""

import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.limits import LIMITS
from protocol import params as P

SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOP = {name: (1 << (8 * struct.calcsize(fmt))) - 1 for name, fmt, _ in P.FIELDS}


def _near(limit):
    """Values around a limit, where off-by-one and rounding bugs live."""
    return st.integers(-3, 3).map(lambda d: max(0, limit + d))


def field_strategy(name, limits):
    L = limits
    near = {
        "phase1_ns": [L["min_phase_ns"], L["max_phase_ns"]],
        "phase2_ns": [L["min_phase_ns"], L["max_phase_ns"]],
        "interphase_ns": [0, L["min_phase_ns"], L["max_interphase_ns"]],
        "recovery_ns": [0, L["min_phase_ns"], L["max_recovery_ns"]],
        "interburst_ns": [0, L["min_phase_ns"], L["max_duration_ns"]],
        "period_ns": [L["min_period_ns"], L["max_duration_ns"]],
        "amplitude_ua": [1, L["max_amplitude_ua"]],
        "polarity": [1],
        "trigger": [4],
        "shape": [1],
        "burst_pulses": [0, L["max_burst_pulses"]],
        "train_duration_ns": [0, L["max_duration_ns"]],
        "train_delay_ns": [0, L["max_duration_ns"]],
        "ramp_up_ns": [0, L["max_ramp_ns"]],
        "ramp_down_ns": [0, L["max_ramp_ns"]],
        "ramp_up_pulses": [0, L["max_ramp_pulses"]],
        "ramp_down_pulses": [0, L["max_ramp_pulses"]],
        "electrode_area_um2": [L["min_electrode_area_um2"], 10**6, 10**8],
        "sequence_pulses": [0, 1, L["max_sequence_pulses"]],
        "sequence_cycle_ns": [0, L["min_sequence_interval_ns"], L["max_duration_ns"]],
    }[name]
    plausible = {
        "phase1_ns": st.integers(L["min_phase_ns"], 2 * 10**6),
        "phase2_ns": st.integers(L["min_phase_ns"], 4 * 10**6),
        "interphase_ns": st.one_of(st.just(0), st.integers(L["min_phase_ns"], 10**5)),
        "recovery_ns": st.one_of(st.just(0), st.integers(L["min_phase_ns"], 10**6)),
        "interburst_ns": st.one_of(st.just(0), st.integers(L["min_phase_ns"], 10**9)),
        "period_ns": st.integers(L["min_period_ns"], 10**8),
        "amplitude_ua": st.integers(1, L["max_amplitude_ua"]),
        "polarity": st.integers(0, 1),
        "trigger": st.integers(0, 4),
        "shape": st.integers(0, 1),
        "burst_pulses": st.integers(0, 100),
        "train_duration_ns": st.integers(0, 10**11),
        "train_delay_ns": st.integers(0, 10**10),
        "ramp_up_ns": st.integers(0, 10**10),
        "ramp_down_ns": st.integers(0, 10**10),
        "ramp_up_pulses": st.integers(0, 2000),
        "ramp_down_pulses": st.integers(0, 2000),
        "electrode_area_um2": st.integers(L["min_electrode_area_um2"], 10**8),
        "sequence_pulses": st.one_of(st.just(0), st.just(0), st.integers(0, 20000)),
        "sequence_cycle_ns": st.one_of(st.just(0), st.just(0), st.integers(0, 10**10)),
    }[name]
    return st.one_of(
        plausible, plausible, plausible, plausible,
        st.sampled_from(near).flatmap(_near),
        st.integers(0, TOP[name]),
        st.sampled_from([TOP[name], TOP[name] + 1, -1]),
    )


@st.composite
def plausible_sets(draw, limits=LIMITS):
    """Sets built to respect the structural rules (period fits the pulse at <= 50 % duty), so a good
    share passes and the charge/Shannon/amplitude rules decide; values still reach the limits."""
    L = limits
    mp = L["min_phase_ns"]
    phase = st.one_of(st.integers(mp, 2000), st.integers(mp, 200000), st.integers(mp, L["max_phase_ns"]))
    gap = st.one_of(st.just(0), st.integers(mp, 100000), st.just(mp))
    p1, p2 = draw(phase), draw(st.one_of(phase, st.just(0)).map(lambda v: v or 0))
    p2 = p2 if p2 >= mp else p1
    ip, rec = draw(gap), draw(st.one_of(gap, st.integers(mp, L["max_recovery_ns"])))
    dead = L["min_dead_time_ns"]
    floor = max(L["min_period_ns"], p1 + max(ip, dead) + p2 + (dead + rec if rec else 0) + max(mp, dead))
    if draw(st.integers(0, 4)):  # else the duty limit may be what refuses the set
        floor = max(floor, -(-(p1 + p2) * 1000 // L["max_duty_permille"]))
    period = draw(st.one_of(st.just(floor), st.integers(floor, floor + 1000), st.integers(floor, 10 * floor)))
    amp = draw(st.one_of(st.integers(1, 100), st.integers(1, L["max_amplitude_ua"]), st.just(L["max_amplitude_ua"])))
    burst = draw(st.one_of(st.just(0), st.integers(1, 20), st.just(L["max_burst_pulses"])))
    ramp = st.one_of(st.just(0), st.just(0), st.integers(0, 10**9))
    up_ns, down_ns = draw(ramp), draw(ramp)
    if (up_ns or down_ns) and draw(st.integers(0, 3)):  # a ramp needs the DAC update idle after each pulse
        period = max(period, floor - max(mp, dead) + max(mp, dead, L["min_update_idle_ns"]))
    out = {
        "phase1_ns": p1, "interphase_ns": ip, "phase2_ns": p2, "recovery_ns": rec, "period_ns": period,
        "amplitude_ua": amp, "polarity": draw(st.integers(0, 1)), "burst_pulses": burst,
        "interburst_ns": draw(gap) if burst else draw(st.one_of(st.just(0), gap)),
        "train_duration_ns": draw(st.one_of(st.just(0), st.integers(0, 10**10))),
        "train_delay_ns": draw(st.one_of(st.just(0), st.integers(0, 10**10))),
        "ramp_up_ns": up_ns,
        "ramp_down_ns": down_ns,
        "ramp_up_pulses": 0 if up_ns and draw(st.integers(0, 3)) else draw(st.one_of(st.just(0), st.integers(0, 1000))),
        "ramp_down_pulses": 0 if down_ns and draw(st.integers(0, 3)) else draw(st.one_of(st.just(0), st.integers(0, 1000))),
        "trigger": draw(st.integers(0, 4)),
        "shape": 0 if p2 < 2 * mp or ip < dead or draw(st.integers(0, 3)) else 1,
        "electrode_area_um2": draw(st.one_of(st.integers(L["min_electrode_area_um2"], 10**6),
                                             st.integers(10**6, 10**8), st.just(L["min_electrode_area_um2"]))),
        "sequence_pulses": 0,
        "sequence_cycle_ns": 0,
    }
    seq = draw(st.one_of(st.just(0), st.just(0), st.integers(1, 20), st.just(L["max_sequence_pulses"])))
    if seq:  # a custom sequence, mostly respecting its structural rules
        out["sequence_pulses"] = seq
        if draw(st.integers(0, 4)):
            for name in ("train_delay_ns", "burst_pulses", "interburst_ns", "ramp_up_ns", "ramp_down_ns",
                         "ramp_up_pulses", "ramp_down_pulses"):
                out[name] = 0
            out["trigger"] = draw(st.integers(0, 2))
            out["period_ns"] = max(period, L["min_sequence_interval_ns"],
                                   floor - max(mp, dead) + max(mp, dead, L["min_update_idle_ns"]))
        cycle = draw(st.one_of(st.just(0), st.integers(0, 10**10), st.just(out["period_ns"])))
        out["sequence_cycle_ns"] = cycle
        if not cycle and draw(st.integers(0, 4)):
            out["train_duration_ns"] = 0
    return out


def param_sets(limits=LIMITS):
    """Half plausible (mostly accepted), half field-by-field mixtures reaching every edge."""
    return st.one_of(plausible_sets(limits),
                     st.fixed_dictionaries({name: field_strategy(name, limits) for name in P.FIELD_NAMES}))


def check_all_limits(p, L):
    """Independent restatement of every rule; returns the list of broken rules (empty = safe)."""
    bad = []

    def rule(ok, what):
        if not ok:
            bad.append(what)

    for name in P.FIELD_NAMES:
        v = p[name]
        rule(type(v) is int and 0 <= v <= TOP[name], name + " type/range")
    if bad:
        return bad
    rule(p["polarity"] in (0, 1), "polarity")
    rule(p["trigger"] in range(5), "trigger")
    rule(p["shape"] in (0, 1), "shape")
    rule(p["shape"] == 0 or p["phase2_ns"] >= 2 * L["min_phase_ns"], "triphasic flanks >= min phase")
    rule(1 <= p["amplitude_ua"] <= L["max_amplitude_ua"], "amplitude")
    for ph in ("phase1_ns", "phase2_ns"):
        rule(L["min_phase_ns"] <= p[ph] <= L["max_phase_ns"], ph)
    rule(p["interphase_ns"] <= L["max_interphase_ns"], "interphase max")
    rule(p["recovery_ns"] <= L["max_recovery_ns"], "recovery max")
    # the engine realises an interphase below the dead time as the dead time: that must be producible
    dead = L["min_dead_time_ns"]
    ip = max(p["interphase_ns"], dead)
    rule(ip == 0 or ip >= L["min_phase_ns"], "interphase producible")
    for gap in ("recovery_ns", "interburst_ns", "train_delay_ns"):
        rule(p[gap] == 0 or p[gap] >= L["min_phase_ns"], gap + " producible")
    for t in ("period_ns", "interburst_ns", "train_duration_ns", "train_delay_ns"):
        rule(p[t] <= L["max_duration_ns"], t + " max")
    rule(p["ramp_up_ns"] <= L["max_ramp_ns"], "ramp")
    rule(p["ramp_down_ns"] <= L["max_ramp_ns"], "ramp down")
    rule(p["ramp_up_pulses"] <= L["max_ramp_pulses"], "ramp pulses")
    rule(p["ramp_down_pulses"] <= L["max_ramp_pulses"], "ramp down pulses")
    rule(not (p["ramp_up_ns"] and p["ramp_up_pulses"]), "ramp up given twice")
    rule(not (p["ramp_down_ns"] and p["ramp_down_pulses"]), "ramp down given twice")
    rule(p["burst_pulses"] <= L["max_burst_pulses"], "burst")
    rule(p["electrode_area_um2"] >= L["min_electrode_area_um2"], "area")
    rule(p["period_ns"] >= L["min_period_ns"], "min period")
    # the pulse as built: phase 1, interphase (>= dead time), phase 2, dead time + recovery; then at
    # least one segment and the dead time of idle before the next pulse
    # triphasic: flank, interphase, phase 1, interphase, flank (the flanks together phase2_ns)
    length = (p["phase1_ns"] + ip * (2 if p["shape"] == 1 else 1) + p["phase2_ns"]
              + (dead + p["recovery_ns"] if p["recovery_ns"] else 0))
    rule(p["period_ns"] >= length + max(L["min_phase_ns"], dead), "period >= pulse + idle")
    ramps = p["ramp_up_ns"] or p["ramp_down_ns"] or p["ramp_up_pulses"] or p["ramp_down_pulses"]
    rule(not ramps or p["period_ns"] - length >= L["min_update_idle_ns"], "ramp: DAC update idle")
    # custom sequences (protocol 8): period = the smallest interval, every pulse's amplitude may change
    rule(p["sequence_pulses"] <= L["max_sequence_pulses"], "sequence pulses")
    rule(p["sequence_cycle_ns"] <= L["max_duration_ns"], "sequence cycle max")
    if p["sequence_pulses"]:
        for name in ("train_delay_ns", "burst_pulses", "interburst_ns", "ramp_up_ns", "ramp_down_ns",
                     "ramp_up_pulses", "ramp_down_pulses"):
            rule(p[name] == 0, "sequence: no " + name)
        rule(p["trigger"] <= 2, "sequence: not gated")
        rule(p["period_ns"] >= L["min_sequence_interval_ns"], "sequence: min interval")
        rule(p["period_ns"] - length >= L["min_update_idle_ns"], "sequence: DAC update idle")
        if p["sequence_cycle_ns"]:
            rule(p["sequence_cycle_ns"] >= p["period_ns"], "sequence: cycle >= interval")
        else:
            rule(p["train_duration_ns"] == 0, "sequence played once: no duration")
    else:
        rule(p["sequence_cycle_ns"] == 0, "cycle without a sequence")
    if bad:
        return bad
    # duty: active phases / period <= max_duty_permille / 1000, exact rational comparison
    rule((p["phase1_ns"] + p["phase2_ns"]) * 1000 <= L["max_duty_permille"] * p["period_ns"], "duty")
    # phase 2 balances phase 1's charge: amp2 = amp1 * phase1 / phase2 must not exceed the maximum
    rule(p["amplitude_ua"] * p["phase1_ns"] <= L["max_amplitude_ua"] * p["phase2_ns"], "phase2 amplitude")
    # charge per phase, exact: µA * ns = fC; limit in nC = 1e6 fC
    q_fc = p["amplitude_ua"] * p["phase1_ns"]
    rule(q_fc <= L["max_charge_nc"] * 10**6, "charge")
    # Shannon (1992): k = log10(Q[µC]) + log10(Q[µC] / A[cm²]) <= k_limit, with a float margin
    if q_fc > 0:
        q_uc = q_fc / 1e9
        k = math.log10(q_uc) + math.log10(q_uc / (p["electrode_area_um2"] / 1e8))
        rule(k <= L["shannon_k_centi"] / 100 + 1e-9, "shannon k=%.6f" % k)
    return bad


def violation_is_real(v, p, L):
    """The refused value is really on the wrong side of the reported limit."""
    if v.relation in ("known", "integer"):
        return True
    if v.field == "shannon_k_centi":
        q_uc = p["amplitude_ua"] * p["phase1_ns"] / 1e9
        k = math.log10(q_uc) + math.log10(q_uc / (p["electrode_area_um2"] / 1e8))
        return k > L["shannon_k_centi"] / 100 - 1e-9 and v.value > v.limit
    if v.relation == "<=":
        return v.value > v.limit
    return v.value < v.limit


# ------------------------------------------------------------------------------ pack / unpack
@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({name: st.integers(0, TOP[name]) for name in P.FIELD_NAMES}))
def test_pack_unpack_round_trip(p):
    data = P.pack(p)
    assert len(data) == P.SIZE
    assert P.unpack(data) == p
    assert P.pack(P.unpack(data)) == data


def test_field_table_consistent():
    assert len(set(P.FIELD_NAMES)) == len(P.FIELD_NAMES)
    assert len(set(P.NAMES)) == len(P.NAMES) and len(P.NAMES) < P.NO_FIELD
    assert P.complete({}) == P.DEFAULTS
    for i, n in enumerate(P.NAMES):
        assert P.field_id(n) == i and P.field_name(i) == n
    assert P.field_name(P.NO_FIELD) == "?"


def test_defaults_are_safe():
    assert P.validate(P.complete({}), LIMITS) is None


# ---------------------------------------------------------------------------------- validate
@SETTINGS
@given(param_sets())
def test_validate_accepts_only_safe_and_names_real_fields(p):
    v = P.validate(p, LIMITS)
    broken = check_all_limits(p, LIMITS)
    if v is None:
        assert broken == [], "accepted an unsafe set: %s" % broken
    else:
        assert v.field in P.NAMES, v
        assert v.relation in P.RELATIONS
        assert violation_is_real(v, p, LIMITS), (v, p)
        assert broken != [], "refused a set that satisfies every limit: %r" % v
        assert isinstance(v.message(), str)


@settings(max_examples=300, deadline=None)
@given(param_sets(), st.text(min_size=1, max_size=8).filter(lambda s: s not in P.DEFAULTS), st.integers())
def test_unknown_field_is_refused(p, key, value):
    p = dict(p)
    p[key] = value
    v = P.validate(p, LIMITS)
    assert v is not None and v.field == key and v.relation == "known"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(P.FIELD_NAMES), st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=3)))
def test_non_integers_refused(name, value):
    p = P.complete({})
    p[name] = value
    v = P.validate(p, LIMITS)
    assert v is not None and v.field == name and v.relation == "integer"


@pytest.mark.parametrize("name", P.FIELD_NAMES)
def test_missing_field_refused(name):
    p = P.complete({})
    del p[name]
    v = P.validate(p, LIMITS)
    assert v is not None and v.field == name


def test_duty_limit_is_exact():
    """(p1 + p2) / period must not exceed max_duty_permille / 1000, not even by a rounding step."""
    base = dict(P.complete({}), phase1_ns=50000, phase2_ns=50013, amplitude_ua=1, period_ns=200000)
    assert check_all_limits(base, LIMITS) == ["duty"]  # 100013 / 200000 = 500.065 permille
    v = P.validate(base, LIMITS)
    assert v is not None and v.field == "duty_permille"
    assert P.validate(dict(base, period_ns=200026), LIMITS) is None


def test_charge_limit_is_exact():
    """5000 nC + 1 fC must be refused (µA x ns = fC)."""
    q = LIMITS["max_charge_nc"] * 10**6
    base = dict(P.complete({}), amplitude_ua=1, phase1_ns=q, phase2_ns=q, period_ns=4 * q + 8,
                electrode_area_um2=10**9)
    L = dict(LIMITS, max_phase_ns=10**10)
    assert P.validate(base, L) is None
    v = P.validate(dict(base, phase1_ns=q + 1, phase2_ns=q + 1), L)
    assert v is not None and v.field == "charge_per_phase_nc"


def test_shannon_boundary():
    """Near the Shannon line the exact-integer decision agrees with the float k."""
    area = 100000  # 0.001 cm²
    k = LIMITS["shannon_k_centi"] / 100
    q_uc = math.sqrt(10**k * area / 1e8)  # Q²/A = 10^k
    amp = 1000
    phase = int(q_uc * 1e9 / amp)
    base = dict(P.complete({}), amplitude_ua=amp, phase2_ns=phase + 10, period_ns=10**8, electrode_area_um2=area)
    assert P.validate(dict(base, phase1_ns=phase - 1), LIMITS) is None
    v = P.validate(dict(base, phase1_ns=phase + 2), LIMITS)
    assert v is not None and v.field == "shannon_k_centi" and v.value > v.limit


@pytest.mark.parametrize("k_centi", [-300, -100, 0, 1, 50, 99, 100, 150, 185, 200, 250])
def test_shannon_bound_milli(k_centi):
    b = P.shannon_bound_milli(k_centi)
    # b = floor(1000 * 10^(k/100)): b^100 <= 10^(k+300) < (b+1)^100
    assert b**100 <= 10 ** (k_centi + 300) < (b + 1) ** 100
    assert abs(b - 1000 * 10 ** (k_centi / 100)) <= 1


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({n: st.integers(0, 2**64 - 1) for n in P.FIELD_NAMES}))
def test_validate_never_raises_on_any_wire_values(p):
    v = P.validate(p, LIMITS)
    assert v is None or v.field in P.NAMES
