"""TOML parameter files -> canonical params; friendly errors; the shipped presets."""

import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.limits import LIMITS
from picostim import paramfile as pf
from protocol import params as P

PRESETS = sorted((pathlib.Path(__file__).resolve().parent.parent / "presets").glob("*.toml"))


def load(text):
    return pf.loads(text).params


def test_units_and_rounding():
    p = load('frequency_hz = 3\nphase1_us = 200.0004\nphase2_ms = 0.2\ninterphase_ns = 10.5\n'
             'recovery_s = 0.001\ntrain_duration_s = 60\ntrain_delay_ms = 5\nramp_up_ms = 250\n'
             'amplitude_ma = 1.5\nelectrode_area_mm2 = 0.5\n')
    assert p["phase1_ns"] == 200000  # 200000.4 -> nearest
    assert p["phase2_ns"] == 200000
    assert p["interphase_ns"] == 11  # half rounds up
    assert p["recovery_ns"] == 1000000
    assert p["period_ns"] == 333333333  # 1/3 s to the nearest ns
    assert p["train_duration_ns"] == 60 * 10 ** 9
    assert p["train_delay_ns"] == 5000000
    assert p["ramp_up_ns"] == 250000000
    assert p["amplitude_ua"] == 1500
    assert p["electrode_area_um2"] == 500000
    assert set(p) == set(P.FIELD_NAMES)


@pytest.mark.parametrize("stem,field", sorted(pf.TIME_FIELDS.items(), key=lambda kv: kv[1]))
@pytest.mark.parametrize("unit,scale", [("ns", 1), ("us", 1000), ("ms", 10 ** 6), ("s", 10 ** 9)])
def test_every_time_field_takes_every_unit(stem, field, unit, scale):
    p = load("period_s = 100\n%s_%s = 3\n" % (field, unit))
    assert p[stem] == 3 * scale


def test_channel_table_and_top_level_are_equivalent():
    a = pf.loads('name = "x"\n[channel]\nfrequency_hz = 20\nphase1_us = 100\n')
    b = pf.loads('name = "x"\nfrequency_hz = 20\nphase1_us = 100\n')
    assert a.params == b.params and a.name == "x"
    mixed = pf.loads('phase1_us = 100\n[channel]\nfrequency_hz = 20\n')
    assert mixed.params == a.params


def test_metadata():
    ps = pf.loads('name = "n"\ndescription = "d"\nfrequency_hz = 1\n')
    assert (ps.name, ps.description) == ("n", "d")


def test_interpulse_is_gap_after_the_pulse():
    p = load("interpulse_us = 1000\nphase1_us = 200\ninterphase_us = 50\nphase2_us = 100\nrecovery_us = 30\n")
    # the pulse as the engine builds it: the board dead time (1 µs) separates phase 2 from recovery
    assert p["period_ns"] == (1000 + 200 + 50 + 100 + 1 + 30) * 1000
    # an interphase below the dead time is realised as the dead time: the gap still follows the pulse
    p = load("interpulse_us = 1000\nphase1_us = 200\nphase2_us = 100\n")
    assert p["period_ns"] == (1000 + 200 + 1 + 100) * 1000


def test_period_us():
    assert load("period_us = 2500")["period_ns"] == 2500000


def test_burst_frequency():
    p = load("period_us = 2000\nburst_pulses = 5\nburst_frequency_hz = 40\n")
    assert p["interburst_ns"] == 25000000 - 5 * 2000000
    assert p["burst_pulses"] == 5


def test_burst_duration():
    p = load("period_us = 2000\nburst_duration_ms = 10\ninterburst_ms = 15\n")
    assert p["burst_pulses"] == 5 and p["interburst_ns"] == 15000000
    p = load("period_us = 2000\nburst_duration_ms = 10\nburst_frequency_hz = 40\n")
    assert p["burst_pulses"] == 5 and p["interburst_ns"] == 15000000
    with pytest.raises(pf.ParamFileError, match="burst_pulses"):
        load("period_us = 2000\nburst_duration_ms = 10\nburst_pulses = 4\n")
    with pytest.raises(pf.ParamFileError, match="conflict"):
        load("period_us = 2000\nburst_pulses = 5\nburst_frequency_hz = 40\ninterburst_ms = 3\n")


def test_burst_duration_not_whole_periods():
    with pytest.raises(pf.ParamFileError, match="burst_duration_ms"):
        load("period_us = 2000\nburst_duration_ms = 9\n")


def test_burst_frequency_too_high():
    with pytest.raises(pf.ParamFileError) as ei:
        load("period_us = 2000\nburst_pulses = 5\nburst_frequency_hz = 200\n")
    assert ei.value.key == "burst_frequency_hz" and "200" in str(ei.value)


def test_polarity_and_trigger_names():
    p = load('frequency_hz = 1\npolarity = "anodic-first"\ntrigger = "gated2"\n')
    assert p["polarity"] == P.POLARITY_ANODIC_FIRST and p["trigger"] == P.TRIGGER_GATED2
    for i, name in enumerate(P.TRIGGER_NAMES):
        assert load('frequency_hz = 1\ntrigger = "%s"\n' % name)["trigger"] == i


@pytest.mark.parametrize("text,key,words", [
    ("frequency_hz = 20\nphase1_usec = 3\n", "phase1_usec", ["unknown key", "phase1_us"]),
    ("frequency_hz = 20\nphase1_us = -5\n", "phase1_us", ["-5", "negative"]),
    ('frequency_hz = 20\nphase1_us = "200"\n', "phase1_us", ["'200'", "number"]),
    ("frequency_hz = 20\nphase1_us = true\n", "phase1_us", ["True", "number"]),
    ("frequency_hz = 20\nperiod_us = 100\n", "frequency_hz", ["period_us", "exactly one"]),
    ("period_us = 20\ninterpulse_us = 100\n", "interpulse_us", ["period_us", "exactly one"]),
    ("frequency_hz = 20\nphase1_us = 1\nphase1_ms = 1\n", "phase1_ms", ["phase1_us", "only one"]),
    ('frequency_hz = 20\npolarity = "biphasic"\n', "polarity", ["biphasic", "cathodic-first", "anodic-first"]),
    ('frequency_hz = 20\ntrigger = "ext3"\n', "trigger", ["ext3", "software", "gated2"]),
    ("frequency_hz = 20\nburst_pulses = 2.5\n", "burst_pulses", ["2.5", "integer"]),
    ("frequency_hz = 0\n", "frequency_hz", ["0", "greater than 0"]),
    ("frequency_hz = 20\nphase1_us = nan\n", "phase1_us", ["nan", "finite"]),
    ("frequency_hz = 20\namplitude_ua = 1\namplitude_ma = 1\n", "amplitude_ma", ["amplitude_ua"]),
    ("frequency_hz = 20\n[foo]\nx = 1\n", "foo", ["channel"]),
    ("frequency_hz = 20\n[channel]\nfrequency_hz = 20\n", "frequency_hz", ["both"]),
    ("burst_frequency_hz = 40\nfrequency_hz = 20\n", "burst_pulses", ["burst_pulses"]),
])
def test_errors_name_key_value_and_allowed(text, key, words):
    with pytest.raises(pf.ParamFileError) as ei:
        pf.loads(text)
    assert ei.value.key == key
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


def test_missing_rate():
    with pytest.raises(pf.ParamFileError, match="frequency_hz"):
        pf.loads("phase1_us = 200\n")


def test_not_toml(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("phase1_us = = 3\n")
    with pytest.raises(pf.ParamFileError, match="TOML"):
        pf.load(f)
    with pytest.raises(pf.ParamFileError, match="cannot read"):
        pf.load(tmp_path / "missing.toml")


@pytest.mark.parametrize("text,words", [
    ("frequency_hz = 20\nphase1_us = 20000\n", ["phase1_us = 20000 µs", "exceeds the firmware limit 10000 µs"]),
    ("period_us = 50\n", ["period_us = 50 µs", "below the firmware minimum 100 µs"]),
    ("frequency_hz = 20\namplitude_ma = 12\n", ["amplitude_ua = 12000 µA", "limit 10000 µA"]),
    ("frequency_hz = 20\nphase1_us = 0.02\n", ["phase1_us = 0.02 µs", "0.04 µs"]),
    ("frequency_hz = 20\nelectrode_area_um2 = 10\n", ["electrode_area_mm2 = 0.00001 mm²", "0.0001 mm²"]),
    ("frequency_hz = 2000\nphase1_us = 200\nphase2_us = 200\n", ["duty cycle = 80 %", "50 %"]),
    ("frequency_hz = 20\namplitude_ma = 5\nphase1_us = 2000\nphase2_us = 2000\nelectrode_area_mm2 = 100\n",
     ["charge per phase = 10000 nC", "5000 nC"]),
    ("frequency_hz = 20\namplitude_ma = 2\nphase1_us = 200\nelectrode_area_mm2 = 0.01\n",
     ["Shannon k", "1.85", "0.01 mm²", "400 nC"]),
    ("frequency_hz = 20\namplitude_ma = 8\nphase1_us = 400\nphase2_us = 200\nelectrode_area_mm2 = 100\n",
     ["phase-2 amplitude = 16000 µA", "10000 µA"]),
    ("interpulse_us = 10\nphase1_us = 30\nphase2_us = 30\n", ["period_us = 71 µs", "(from interpulse_us)"]),
])
def test_limit_messages_in_user_units(text, words):
    ps = pf.loads(text)
    with pytest.raises(pf.ParamLimitError) as ei:
        pf.check(ps, LIMITS)
    msg = str(ei.value)
    for w in words:
        assert w in msg, (w, msg)
    assert ei.value.violation.field


def test_describe_violation_handles_every_name():
    for name in P.NAMES:
        for rel in P.RELATIONS:
            assert name in pf.describe_violation(name, 5, 3, rel) or pf.user_name(name) in \
                pf.describe_violation(name, 5, 3, rel)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_pass_firmware_limits(path):
    ps = pf.load(path)
    pf.check(ps, LIMITS)
    assert P.validate(ps.params, LIMITS) is None
    assert ps.name and ps.description
    text = path.read_text()
    assert "electrode_area_mm2" in text and "amplitude_" in text
    assert text.lstrip().startswith("#") and ("doi" in text.lower() or "19" in text or "20" in text)


def test_presets_cover_spec():
    by = {p.stem: pf.load(p).params for p in PRESETS}
    assert 5e6 <= 1e9 / by["sacral_pudendal_low"]["period_ns"] * 1e6 <= 20e6
    assert by["sacral_pudendal_low"]["phase1_ns"] == 200000
    assert 35 <= 1e9 / by["pudendal_high"]["period_ns"] <= 50
    assert by["ptns"]["period_ns"] == 50000000 and by["ptns"]["phase1_ns"] == 200000
    assert 40 <= 1e9 / by["scs_tonic"]["period_ns"] <= 60 and 200000 <= by["scs_tonic"]["phase1_ns"] <= 450000
    b = by["scs_burst"]
    assert b["burst_pulses"] == 5 and b["period_ns"] == 2000000
    assert b["burst_pulses"] * b["period_ns"] + b["interburst_ns"] == 25000000  # 40 Hz
    assert 1e9 / by["transcranial_low"]["period_ns"] <= 1
    assert 1e9 / by["transcranial_high"]["period_ns"] >= 10


times = st.one_of(st.integers(0, 10 ** 7), st.floats(0, 1e7, allow_nan=False))


@given(times, st.sampled_from(["ns", "us", "ms", "s"]))
def test_conversion_is_nearest_ns(value, unit):
    p = load("period_s = 1000\nphase1_%s = %r\n" % (unit, value))
    from fractions import Fraction
    exact = Fraction(value) * pf.TIME_UNITS[unit]
    assert abs(Fraction(p["phase1_ns"]) - exact) <= Fraction(1, 2)
