"""paramfile: loading, required keys, every refusal's message/key/value, the limit checks (check,
check_amplitude) and the requested/realised conversions, pinned where mutation testing found them
unobserved (issue 15; equivalent survivors: tests/mutation-survivors.md). Files are written by the test;
no firmware capture is involved."""
from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest

from firmware.limits import LIMITS
from picostim import paramfile
from picostim.paramfile import MAX_FILE_BYTES, ParamFileError, ParamLimitError, ParamSet
from protocol import params as P

GOOD = "amplitude_ma = 1\nphase1_us = 100\nelectrode_area_mm2 = 5\nfrequency_hz = 100\n"


@pytest.mark.parametrize("drop,first,keys", [
    ("amplitude_ma", "amplitude_ma", "amplitude_ma, amplitude_ua"),
    ("phase1_us", "phase1_us", "phase1_us, phase1_ns, phase1_ms, phase1_s"),
    ("electrode_area_mm2", "electrode_area_mm2", "electrode_area_mm2, electrode_area_um2, electrode_area_cm2"),
])
def test_required_key_message_and_key(drop, first, keys, tmp_path):
    text = "".join(l + "\n" for l in GOOD.splitlines() if not l.startswith(drop))
    p = tmp_path / "p.toml"
    p.write_text(text)
    with pytest.raises(ParamFileError) as ei:
        paramfile.load(p)
    assert str(ei.value) == "%s = (missing): a parameter file must give it explicitly (one of %s)" % (first, keys)
    assert ei.value.key == first
    # require=False loads it; loads() requires only when asked
    assert paramfile.load(p, require=False).source == str(p)
    assert paramfile.loads(text).params
    with pytest.raises(ParamFileError, match="missing"):
        paramfile.loads(text, require=True)


def test_load_records_the_source_and_parses_bytes(tmp_path):
    p = tmp_path / "good.toml"
    p.write_text(GOOD)
    ps = paramfile.load(p)
    assert ps.source == str(p) and ps.params["amplitude_ua"] == 1000
    assert paramfile.loads(GOOD.encode()).params == ps.params
    assert paramfile.loads(bytearray(GOOD.encode())).params == ps.params
    with pytest.raises(ParamFileError, match=r"^parameter text: UTF-16 text"):
        paramfile.loads(b"\xff\xfe" + GOOD.encode("utf-16-le"))


def test_unreadable_file_message(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ParamFileError) as ei:
        paramfile.load(missing)
    assert str(ei.value) == "parameter file %r: cannot read it: No such file or directory" % str(missing)
    long = tmp_path / ("x" * 250 + ".toml")
    with pytest.raises(ParamFileError) as ei:
        paramfile.load(long)
    msg = str(ei.value)
    assert msg.startswith("parameter file '") and "...: cannot read it: " in msg
    assert len(msg.split(": cannot read it")[0]) == len("parameter file ") + 200
    with pytest.raises(ParamFileError) as ei:
        paramfile.load("a\0b.toml")
    assert str(ei.value).startswith("parameter file 'a\\x00b.toml': cannot read it: ")


def test_file_size_limit_exactly(tmp_path):
    p = tmp_path / "big.toml"
    pad = "#" * (MAX_FILE_BYTES - len(GOOD) - 1) + "\n"
    p.write_text(GOOD + pad)  # exactly MAX_FILE_BYTES: accepted
    assert p.stat().st_size == MAX_FILE_BYTES and paramfile.load(p).params["amplitude_ua"] == 1000
    p.write_text(GOOD + pad + "\n")  # one byte more: refused, with the file named
    with pytest.raises(ParamFileError) as ei:
        paramfile.load(p)
    assert str(ei.value) == "%s: %d bytes is not a parameter file (at most %d bytes)" % (
        p, MAX_FILE_BYTES + 1, MAX_FILE_BYTES)


def test_deeply_nested_toml_message(tmp_path):
    p = tmp_path / "deep.toml"
    p.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ParamFileError) as ei:
        paramfile.load(p)
    assert str(ei.value) == "%s is not valid TOML: nested too deeply" % p


# ----------------------------------------------------------------------------------------------
# second batch (issue 15): every refusal's exact message, key and value; the number formatting of
# messages; the limit checks (check, check_amplitude) and the requested/realised conversions that
# `upload`, `compare` and `--json` print, called directly (no test of the selection reached them)

B = "amplitude_ma = 1\nphase1_us = 100\nelectrode_area_mm2 = 5\n"  # no pulse rate
R = "frequency_hz = 100\n"
ALLOWED = ", ".join(paramfile.ALLOWED_KEYS)


def _refusal(text):
    with pytest.raises(ParamFileError) as ei:
        paramfile.loads(text)
    e = ei.value
    return str(e), e.key, e.value


@pytest.mark.parametrize("text,msg,key,value", [
    # value types and ranges (_number, frequency, counts, names)
    (B.replace("amplitude_ma = 1", 'amplitude_ma = "x"') + R, "amplitude_ma = 'x': expected a number", "amplitude_ma", "x"),
    (B.replace("amplitude_ma = 1", "amplitude_ma = inf") + R, "amplitude_ma = inf: expected a finite number",
     "amplitude_ma", math.inf),
    (B.replace("phase1_us = 100", "phase1_us = -1") + R, "phase1_us = -1: must not be negative", "phase1_us", -1),
    (B.replace("electrode_area_mm2 = 5", 'electrode_area_mm2 = "x"') + R,
     "electrode_area_mm2 = 'x': expected a number", "electrode_area_mm2", "x"),
    (B + 'frequency_hz = "x"\n', "frequency_hz = 'x': expected a frequency in Hz", "frequency_hz", "x"),
    (B + "frequency_hz = 0\n", "frequency_hz = 0: must be greater than 0", "frequency_hz", 0),
    (B + R + "burst_pulses = -1\n", "burst_pulses = -1: expected a non-negative integer (0 = no bursts)",
     "burst_pulses", -1),
    (B + R + "burst_pulses = 1.5\n", "burst_pulses = 1.5: expected a non-negative integer (0 = no bursts)",
     "burst_pulses", 1.5),
    (B + R + "ramp_up_pulses = -1\n", "ramp_up_pulses = -1: must not be negative (0 = no ramp)", "ramp_up_pulses", -1),
    (B + R + "ramp_down_pulses = 1.5\n", "ramp_down_pulses = 1.5: expected a whole number of pulses (0 = no ramp)",
     "ramp_down_pulses", 1.5),
    (B + R + 'polarity = "x"\n', 'polarity = \'x\': allowed values are "cathodic-first", "anodic-first"', "polarity", "x"),
    (B + R + "trigger = 3\n", 'trigger = 3: allowed values are "software", "ext1", "ext2", "gated1", "gated2"',
     "trigger", 3),
    (B + R + 'shape = "quad"\n', 'shape = \'quad\': allowed values are "biphasic", "triphasic"', "shape", "quad"),
    (B + R + "XbogusX = 1\n", "XbogusX = 1: unknown key; allowed keys: " + ALLOWED, "XbogusX", 1),
    (B + R + "%s = 1\n" % ("k" * 50), "%s... = 1: unknown key; allowed keys: %s" % ("k" * 36, ALLOWED), "k" * 50, 1),
    # a value's repr is cut at 60 characters: 60 stay whole, 61 are cut to 57 + "..."
    (B.replace("amplitude_ma = 1", 'amplitude_ma = "%s"' % ("x" * 58)) + R,
     "amplitude_ma = '%s': expected a number" % ("x" * 58), "amplitude_ma", "x" * 58),
    (B.replace("amplitude_ma = 1", 'amplitude_ma = "%s"' % ("x" * 59)) + R,
     "amplitude_ma = '%s...: expected a number" % ("x" * 56), "amplitude_ma", "x" * 59),
    # file structure (_flatten): metadata types, [channel], duplicates, nested and unknown tables
    ("name = 1\n" + B + R, "name = 1: expected a string", "name", 1),
    ("description = 2\n" + B + R, "description = 2: expected a string", "description", 2),
    ("channel = 3\n" + B + R, "channel = 3: [channel] must be a table of parameters", "channel", 3),
    (B + R + "[channel]\nphase1_us = 200\n", "phase1_us = 200: is given both at the top level and in [channel]",
     "phase1_us", 200),
    ("channel = { phase1_us = 200 }\n" + B + R, "phase1_us = 100: is given both at the top level and in [channel]",
     "phase1_us", 100),
    (B + R + "[channel.sub]\nx = 1\n", "channel.sub = {...}: nested tables are not allowed", "sub", {"x": 1}),
    (B + R + "[channel.'a b']\nx = 1\n", "channel.'a b' = {...}: nested tables are not allowed", "a b", {"x": 1}),
    (B + R + "[foo]\nx = 1\n", "foo = {...}: unknown table (allowed: [channel])", "foo", {"x": 1}),
    (B + R + "[a-b_c]\nx = 1\n", "a-b_c = {...}: unknown table (allowed: [channel])", "a-b_c", {"x": 1}),
    (B + R + '["my table"]\nx = 1\n', "'my table' = {...}: unknown table (allowed: [channel])", "my table", {"x": 1}),
    # a bare key of 40 characters is shown as is; 41 are quoted and cut to 40
    (B + R + "[%s]\nx = 1\n" % ("t" * 40), "%s = {...}: unknown table (allowed: [channel])" % ("t" * 40), "t" * 40, {"x": 1}),
    (B + R + "[%s]\nx = 1\n" % ("t" * 41), "'%s... = {...}: unknown table (allowed: [channel])" % ("t" * 36),
     "t" * 41, {"x": 1}),
    # conflicting keys
    (B + "amplitude_ua = 1000\n" + R, "amplitude_ua = 1000: conflicts with amplitude_ma: give only one of them",
     "amplitude_ua", 1000),
    (B + "phase1_ms = 0.1\n" + R, "phase1_ms = 0.1: conflicts with phase1_us: give only one of them", "phase1_ms", 0.1),
    (B + R + "ramp_up_pulses = 5\nramp_up_ms = 100\n",
     "ramp_up_pulses = 5: conflicts with ramp_up_ms = 100: give the ramp as a time or as a number of pulses, not both",
     "ramp_up_pulses", 5),
    # pulse rate (_resolve_period)
    (B + R + "period_us = 100\n", "frequency_hz = (also given): period_us and frequency_hz conflict: give exactly one "
     "of frequency_hz, period_us or interpulse_us", "frequency_hz", None),
    (B + "period_us = 100\ninterpulse_us = 5\n", "interpulse_us = (also given): period_us and interpulse_us conflict: "
     "give exactly one of frequency_hz, period_us or interpulse_us", "interpulse_us", None),
    (B, "frequency_hz = (missing): the pulse rate is missing: give exactly one of frequency_hz, period_us or "
     "interpulse_us", "frequency_hz", None),
    # bursts (_resolve_bursts)
    (B + "period_us = 0\nburst_duration_ms = 10\n",
     "burst_duration_ms: needs a pulse period greater than 0 (period_us = 0)", "period_us", 0),
    (B + "period_us = 1\nburst_duration_ns = 5002\n",
     "burst_duration_ns = 5.002 µs: is not a whole number of periods (1 µs each)", "burst_duration_ns", "5002"),
    (B + "period_us = 1\nburst_duration_us = 5.002\n",
     "burst_duration_us = 5.002 µs: is not a whole number of periods (1 µs each)", "burst_duration_us", "5.002"),
    (B + R + "burst_pulses = 4\nburst_duration_ms = 50\n",
     "burst_duration_ms = (5 pulses per burst): conflicts with burst_pulses = 4: give only one of them",
     "burst_duration_ms", None),
    (B + R + "burst_pulses = 4\nburst_frequency_hz = 10\ninterburst_ms = 5\n",
     "burst_frequency_hz = 10: conflicts with interburst_ms: give only one of them", "burst_frequency_hz", "10"),
    (B + R + "burst_frequency_hz = 10\n",
     "burst_pulses = 0: burst_frequency_hz needs burst_pulses >= 1 (or burst_duration_*)", "burst_pulses", 0),
    (B + R + "burst_pulses = 11\nburst_frequency_hz = 10\n",
     "burst_frequency_hz = 10: 11 pulses at a 10000 µs period take 110000 µs, longer than the burst cycle 100000 µs",
     "burst_frequency_hz", "10"),
    (B + "frequency_hz = 3\nburst_pulses = 7\nburst_frequency_hz = 0.7\n",
     "burst_frequency_hz = 0.7: 7 pulses at a 333333.333 µs period take 2333333.331 µs, longer than the burst "
     "cycle 1428571.429 µs", "burst_frequency_hz", "0.7"),
])
def test_refusal_message_key_and_value(text, msg, key, value):
    got = _refusal(text)
    if msg.endswith("unknown table (allowed: [channel])"):  # other tables may be allowed too ([sequence])
        assert got[0].startswith(msg[:-1]) and got[0].endswith(")") and got[1:] == (key, value)
    else:
        assert got == (msg, key, value)


def test_decode_refusals_and_bom():
    good = (B + R).encode()
    assert paramfile.loads(b"\xef\xbb\xbf" + good).params == paramfile.loads(good).params  # BOM dropped, only it
    assert _refusal(b"\xfe\xff" + good) == ("parameter text: UTF-16 text; save the parameter file as UTF-8", None, None)
    bad = good + b'x = "\x80"\n'
    assert _refusal(bad)[0] == ("parameter text: not a UTF-8 text file (byte 0x80 at offset %d); a parameter file "
                                "is TOML text" % bad.index(b"\x80"))
    assert _refusal(b"a = 1\n\0b\0")[0] == "parameter text: not a text file (NUL byte at offset 6); a parameter file is TOML text"
    assert _refusal("amplitude_ma 1\n")[0] == ("parameter text is not valid TOML: Expected '=' after a key in a "
                                               "key/value pair (at line 1, column 14)")
    with pytest.raises(ParamFileError, match="^a parameter file is a TOML table$"):
        paramfile.from_dict([1])


def test_oversized_file_reports_the_bytes_read(tmp_path):
    p = tmp_path / "huge.toml"
    p.write_bytes(b"#" * (MAX_FILE_BYTES + 100))
    with pytest.raises(ParamFileError) as ei:
        paramfile.load(p)  # reads at most MAX_FILE_BYTES + 1 bytes, never the whole file
    assert str(ei.value) == "%s: %d bytes is not a parameter file (at most %d bytes)" % (
        p, MAX_FILE_BYTES + 1, MAX_FILE_BYTES)


def test_channel_table_then_top_level_keys_are_all_read():
    ps = paramfile.loads("channel = { phase1_us = 100 }\namplitude_ma = 1\nelectrode_area_mm2 = 5\nfrequency_hz = 100\n",
                         require=True)
    assert ps.params["period_ns"] == 10_000_000 and ps.params["phase1_ns"] == 100_000


def test_keys_record_what_the_user_wrote():
    ps = paramfile.loads(B + R + 'burst_pulses = 2\ninterburst_ms = 1\npolarity = "anodic-first"\nramp_up_pulses = 3\n')
    assert ps.keys == {"amplitude_ua": "amplitude_ma", "phase1_ns": "phase1_us", "electrode_area_um2": "electrode_area_mm2",
                       "period_ns": "frequency_hz", "burst_pulses": "burst_pulses", "interburst_ns": "interburst_ms",
                       "polarity": "polarity", "ramp_up_pulses": "ramp_up_pulses"}
    # phase 2 defaults to phase 1 (not to the protocol default 200 µs)
    assert ps.params["phase2_ns"] == 100_000 and ps.params["polarity"] == 1
    assert "phase2_ns" not in ps.keys


def test_burst_duration_and_frequency_boundaries():
    # a burst duration within 1 ns of a whole number of periods is accepted (2 ns is not: see above)
    ps = paramfile.loads(B + "period_us = 1\nburst_duration_ns = 5001\n")
    assert ps.params["burst_pulses"] == 5 and ps.keys["burst_pulses"] == "burst_duration_ns"
    ps = paramfile.loads(B + "period_ns = 1\nburst_duration_ns = 5\n")  # a 1 ns period is a period
    assert ps.params["burst_pulses"] == 5
    # the same count twice is no conflict; the key stays the explicit one
    ps = paramfile.loads(B + R + "burst_pulses = 5\nburst_duration_ms = 50\n")
    assert ps.params["burst_pulses"] == 5 and ps.keys["burst_pulses"] == "burst_pulses"
    # burst_pulses 0 is "no bursts", accepted
    assert paramfile.loads(B + R + "burst_pulses = 0\n").params["burst_pulses"] == 0
    # one pulse per burst at 1 Hz: interburst = 1 s - 10 ms, to the ns
    ps = paramfile.loads(B + R + "burst_pulses = 1\nburst_frequency_hz = 1\n")
    assert ps.params["interburst_ns"] == 990_000_000 and ps.keys["interburst_ns"] == "burst_frequency_hz"
    # bursts that fill the cycle exactly: no gap, accepted
    ps = paramfile.loads(B + R + "burst_pulses = 10\nburst_frequency_hz = 10\n")
    assert ps.params["interburst_ns"] == 0


def test_fmt_num():
    f = paramfile._fmt_num
    assert f(0.12345) == "0.123" and f(0.12345, 4) == "0.1235"
    assert f(1234.5) == "1234.5" and f(1.5) == "1.5" and f(0) == "0" and f(7) == "7"
    assert f(2.0001) == "2"  # rounds to a whole number: no trailing "."
    assert f(0.0001) == "0.0001" and f(-0.0001) == "-0.0001" and f(0.00001) == "1e-05"  # below the 3 digits
    assert f(1e15) == "1e+15" and f(1e14) == "100000000000000"
    assert f(float("inf")) == "inf" and f(float("nan")) == "nan"
    # beyond float range: leading digit and exponent from the digits
    assert f(10 ** 400) == "1e+400" and f(-2345 * 10 ** 397) == "-2e+400" and f(Fraction(98 * 10 ** 399, 1)) == "9e+400"


def test_user_value_and_period_formatting():
    assert paramfile.user_value("period_ns", 3000) == "3 µs (333333.333 Hz)"
    assert paramfile.user_value("period_ns", 0) == "0 µs"
    assert paramfile.user_value("phase1_ns", True) == "True"  # a bool is not a number of ns
    assert paramfile.user_value("phase1_ns", 1.5) == "1.5"
    assert paramfile.user_value("nofield", 5) == "5" and paramfile.user_name("nofield") == "nofield"


@pytest.mark.parametrize("args,text", [
    ((None, 5, 3, "<="), "request = 5: exceeds the firmware limit 3"),
    (("bogus", 1, 0, "known"), "bogus is not a known parameter"),
    (("phase1_ns", -1, 0, "integer"), "phase1_us = -1 is not a non-negative integer"),
    (("polarity", 7, 1, "<="), "polarity = 7 is not one of cathodic-first, anodic-first"),
    (("trigger", 9, 4, "<="), "trigger = 9 is not one of software, ext1, ext2, gated1, gated2"),
    (("shape", 2, 1, "<="), "shape = 2 is not one of biphasic, triphasic"),
    (("channel", 5, 3, ">="), "channel = 5: exceeds the firmware limit 3"),
    (("mask", 16, 15, ">="), "mask = 16: exceeds the firmware limit 15"),
    (("phase1_ns", 20_000_000, 10_000_000, "<=", "phase1_ms"),
     "phase1_ms (phase1_us) = 20000 µs: exceeds the firmware limit 10000 µs"),
    (("phase1_ns", 20_000_000, 10_000_000, "<=", "phase1_us"), "phase1_us = 20000 µs: exceeds the firmware limit 10000 µs"),
    (("period_ns", 50_000, 100_000, ">="), "period_us = 50 µs (20000 Hz): is below the firmware minimum 100 µs (10000 Hz)"),
    (("phase1_ns", 20, 40, ">="), "phase1_us = 0.02 µs: is below the firmware limit 0.04 µs"),
])
def test_describe_violation_texts(args, text):
    assert paramfile.describe_violation(*args) == text


def test_in_key_unit():
    k = paramfile._in_key_unit
    assert k(None, "ramp_up_ns", 1, 2, "<=") is None and k("ramp_up_s", "ramp_up_ns", 1, 2, "known") is None
    assert k("ramp_up_ms", "ramp_down_ns", 1, 2, "<=") is None and k("ramp_up_pulses", "ramp_up_ns", 1, 2, "<=") is None
    assert k("phase1_ms", "phase1_ns", 1, 2, "<=") is None
    assert k("ramp_up_s", "ramp_up_ns", 1_234_567, 7_654_321, "<=") == \
        "ramp_up_s = 0.001235 s: exceeds the firmware limit 0.007654 s"
    assert k("ramp_down_ms", "ramp_down_ns", 1_234_567, 7_654_321, ">=") == \
        "ramp_down_ms = 1.234567 ms: is below the firmware limit 7.654321 ms"


def _limit_error(params_or_set, limits=LIMITS):
    with pytest.raises(ParamLimitError) as ei:
        paramfile.check(params_or_set, limits)
    return ei.value


def test_check_plain_dict_and_limit_error_attributes():
    p = paramfile.loads(B + R).params
    assert paramfile.check(dict(p), LIMITS) == p
    e = _limit_error(paramfile.loads(B.replace("phase1_us = 100", "phase1_ms = 20") + R))
    assert str(e) == "phase1_us = 20000 µs: exceeds the firmware limit 10000 µs (from phase1_ms)"
    assert (e.key, e.value, e.violation.field, e.violation.limit) == ("phase1_ns", 20_000_000, "phase1_ns", 10_000_000)


def test_check_ramp_bound_by_pulse_count_without_a_key():
    ramp = paramfile.loads(B + "frequency_hz = 1000\nramp_up_s = 5\n")
    e = _limit_error(dict(ramp.params))  # no keys: the canonical name in µs
    assert str(e) == ("ramp_up_us = 5000000 µs: exceeds the firmware limit 1000000 µs (1000 pulses, the firmware's "
                      "max_ramp_pulses, at this pulse rate)")
    assert (e.key, e.value) == ("ramp_up_ns", 5_000_000_000)
    assert str(_limit_error(ramp)) == ("ramp_up_s = 5 s: exceeds the firmware limit 1 s (1000 pulses, the firmware's "
                                       "max_ramp_pulses, at this pulse rate)")


def test_check_charge_messages_show_the_product():
    e = _limit_error(paramfile.loads("amplitude_ma = 10\nphase1_us = 500.1\nelectrode_area_cm2 = 40\nfrequency_hz = 1\n"))
    assert str(e) == ("charge per phase = 5001 nC: exceeds the firmware limit 5000 nC "
                      "(10000 µA × 500.1 µs = 5001 nC per phase on 4000 mm²)")
    assert (e.key, e.value) == ("charge_per_phase_nc", 5001)
    e = _limit_error(paramfile.loads("amplitude_ma = 10\nphase1_us = 400\nelectrode_area_mm2 = 1\nfrequency_hz = 1\n"))
    assert str(e) == ("charge density (Shannon k) = 3.2: exceeds the firmware limit 1.85 "
                      "(10000 µA × 400 µs = 4000 nC per phase on 1 mm²)")


def _idle_params(interphase_us):
    # 10 kHz, 25 µs phases: the idle after each pulse shrinks as the interphase grows
    return paramfile.loads("amplitude_ma = 1\nphase1_us = 25\ninterphase_us = %s\nelectrode_area_mm2 = 5\n"
                           "frequency_hz = 10000\n" % interphase_us).params


def test_check_amplitude_accepts_and_returns_a_new_dict():
    p = _idle_params(42)  # idle left for one channel's DAC update (8 µs), not for two
    before = dict(p)
    new = paramfile.check_amplitude(p, 2500, LIMITS)
    assert new == dict(before, amplitude_ua=2500) and p == before


def test_check_amplitude_refusals():
    p = _idle_params(0)
    with pytest.raises(ParamLimitError) as ei:
        paramfile.check_amplitude(p, 20000, LIMITS)
    assert str(ei.value) == "amplitude_ua = 20000 µA: exceeds the firmware limit 10000 µA"
    assert (ei.value.key, ei.value.value) == ("amplitude_ua", 20000)
    q = _idle_params(43)
    assert paramfile.check(q, LIMITS) is q  # fine as a parameter set
    with pytest.raises(ParamLimitError) as ei:
        paramfile.check_amplitude(q, 1500, LIMITS)  # but no idle for the DAC update at a pulse end
    assert str(ei.value) == ("period_us = 100 µs (10000 Hz): is below the firmware minimum 101 µs (9900.99 Hz) "
                             "(a live amplitude change needs the DAC update idle after every pulse)")
    v = ei.value.violation
    assert (ei.value.key, ei.value.value, v.field, v.limit, v.relation) == ("period_ns", 100_000, "period_ns", 101_000, ">=")


def test_ramp_pulses():
    base = P.complete({})
    assert paramfile.ramp_pulses(dict(base, ramp_up_pulses=2, ramp_down_pulses=3)) == {"ramp_up": 2, "ramp_down": 3}
    assert paramfile.ramp_pulses(dict(base, ramp_up_pulses=1)) == {"ramp_up": 0, "ramp_down": 0}  # 1 pulse: no ramp
    assert paramfile.ramp_pulses(dict(base, ramp_up_ns=200_000_000)) == {"ramp_up": 4, "ramp_down": 0}  # 20 Hz
    assert paramfile.ramp_pulses(base) == {"ramp_up": 0, "ramp_down": 0}
    assert paramfile.ramp_pulses({"phase1_ns": "x"}) == {"ramp_up": 0, "ramp_down": 0}  # unbuildable


def test_phase2_amplitude():
    p = dict(P.complete({}), amplitude_ua=1500, phase1_ns=100_000, phase2_ns=300_000)
    assert paramfile.phase2_amplitude_ua(p) == 500.0
    assert paramfile.phase2_amplitude_ua(dict(p, phase2_ns=0)) == 0.0


# what a PARAMS response carries in "realised": tick counts, nA, fC (written here, not computed)
REALISED = {"phase1": 12500, "interphase": 125, "phase2": 37500, "period": 125000, "pulse": 50125,
            "amplitude_na": 1500000, "amplitude1_na": 7, "amplitude2_na": 500000, "residual_fc": 2500,
            "residual_charge_fc": 9, "dac_code1": 600, "dac_code2": 200, "dac_a": 200, "pulses_per_cycle": 3,
            "repeats": 7, "tick_hz": 125_000_000}
REQ_FIELDS_E2ECBD3 = ("phase1_ns", "interphase_ns", "phase2_ns", "recovery_ns", "period_ns", "amplitude_ua", "polarity",
                      "burst_pulses", "interburst_ns", "train_duration_ns", "train_delay_ns", "ramp_up_ns", "trigger",
                      "electrode_area_um2", "ramp_down_ns", "ramp_up_pulses", "ramp_down_pulses", "shape")
REQ = dict(P.complete({}), amplitude_ua=1500, phase1_ns=100_000, phase2_ns=300_000, period_ns=1_000_000,
           interphase_ns=0, electrode_area_um2=5_000_000)


def test_realised_us():
    assert paramfile.realised_us(REALISED) == {
        "phase1_us": 100.0, "phase1_ticks": 12500, "interphase_us": 1.0, "interphase_ticks": 125,
        "phase2_us": 300.0, "phase2_ticks": 37500, "period_us": 1000.0, "period_ticks": 125000,
        "amplitude_ua": 1500.0, "phase2_amplitude_ua": 500.0, "charge_residual_pc": 2.5,
        "dac_code1": 600, "dac_code2": 200, "pulses_per_cycle": 3, "repeats": 7,
        "tick_hz": 125_000_000, "frequency_hz": 1000.0}
    # older names, missing entries, another tick rate
    assert paramfile.realised_us({"phase1": 3, "tick_hz": 1000, "amplitude1_na": 2000, "residual_charge_fc": 3000,
                                  "period": 0}) == {
        "phase1_us": 3000.0, "phase1_ticks": 3, "period_us": 0.0, "period_ticks": 0, "amplitude_ua": 2.0,
        "phase2_amplitude_ua": 0.0, "charge_residual_pc": 3.0, "tick_hz": 1000}  # no frequency for period 0


def test_requested_us():
    out = paramfile.requested_us(dict(REQ, polarity=1, trigger=1, shape=1, burst_pulses=2))
    want = {"phase1_us": 100.0, "interphase_us": 0.0, "phase2_us": 300.0, "recovery_us": 0.0,
            "period_us": 1000.0, "amplitude_ua": 1500, "polarity": "anodic-first", "burst_pulses": 2,
            "interburst_us": 0.0, "train_duration_us": 0.0, "train_delay_us": 0.0, "ramp_up_us": 0.0,
            "trigger": "ext1", "electrode_area_mm2": 5.0, "ramp_down_us": 0.0, "ramp_up_pulses": 0,
            "ramp_down_pulses": 0, "shape": "triphasic", "phase2_amplitude_ua": 500.0, "frequency_hz": 1000.0}
    # fields appended to the protocol later (e.g. the [sequence] table's) follow the same rule
    later = {f[:-3] + "_us" if f.endswith("_ns") else f for f in P.FIELD_NAMES if f not in REQ_FIELDS_E2ECBD3}
    assert {k: out[k] for k in want} == want and set(out) - set(want) == later
    # names only for known codes; no frequency for a zero period
    out = paramfile.requested_us(dict(REQ, polarity=2, trigger=5, shape=2, period_ns=0))
    assert (out["polarity"], out["trigger"], out["shape"]) == (2, 5, 2) and "frequency_hz" not in out
    out = paramfile.requested_us(dict(REQ, polarity=0, trigger=0, shape=0))
    assert (out["polarity"], out["trigger"], out["shape"]) == ("cathodic-first", "software", "biphasic")


def test_compare_rows():
    assert paramfile.compare(REQ, REALISED) == [
        ("phase1_us", "µs", 100.0, 100.0), ("interphase_us", "µs", 0.0, 1.0), ("phase2_us", "µs", 300.0, 300.0),
        ("period_us", "µs", 1000.0, 1000.0), ("amplitude_ua", "µA", 1500.0, 1500.0),
        ("phase2_amplitude_ua", "µA", 500.0, 500.0), ("charge_residual_pc", "pC", 0.0, 2.5)]
    rows = paramfile.compare(REQ, {"phase1": 3, "tick_hz": 1000, "amplitude1_na": 2000, "residual_charge_fc": 3000})
    assert rows == [("phase1_us", "µs", 100.0, 3000.0), ("amplitude_ua", "µA", 1500.0, 2.0),
                    ("phase2_amplitude_ua", "µA", 500.0, 0.0), ("charge_residual_pc", "pC", 0.0, 3.0)]


def test_ticks_to_ns_is_exact():
    assert paramfile.ticks_to_ns(12500, 125_000_000) == 100_000
    assert paramfile.ticks_to_ns(1, 3) == Fraction(1_000_000_000, 3)


def test_paramset_and_error_attributes():
    ps = ParamSet({"a": 1}, name="n", source="f.toml")
    assert (ps.source, ps.name, ps.keys) == ("f.toml", "n", {})
    assert repr(ps) == "ParamSet('n', {'a': 1})"
    assert repr(ParamSet({"a": 1}, source="f.toml")) == "ParamSet('f.toml', {'a': 1})"
    assert repr(ParamSet({}, name="n")) == "ParamSet('n', {})"
    e = ParamFileError("m", "k", 5)
    assert (str(e), e.key, e.value) == ("m", "k", 5)
    v = P.Violation("phase1_ns", 7, 3, "<=")
    e = ParamLimitError("msg", v)
    assert (str(e), e.key, e.value, e.violation) == ("msg", "phase1_ns", 7, v)


# after e2ecbd3: a [sequence] table takes its own return path through from_dict and load
needs_sequence = pytest.mark.skipif(not hasattr(paramfile, "Sequence"), reason="no [sequence] table in this paramfile")


@needs_sequence
def test_sequence_file_keeps_metadata_and_exact_onsets(tmp_path):
    text = ('name = "paired"\ndescription = "two pulses"\nphase1_us = 100\n'
            "electrode_area_mm2 = 5\n[sequence]\nonsets_us = [0, 1000.0005]\namplitudes_ma = [1, 1]\n")
    p = tmp_path / "seq.toml"
    p.write_text(text)
    ps = paramfile.load(p)
    assert (ps.name, ps.description, ps.source) == ("paired", "two pulses", str(p))
    # 1000.0005 µs is 1000000.5 ns in decimal (halves up: 1000001), 1000000.4999... as a float
    assert ps.sequence.onsets_ns == [0, 1_000_001] == paramfile.loads(text).sequence.onsets_ns
    assert ps.params == paramfile.loads(text).params


# ----------------------------------------------------------------------------------------------
# third batch (issue 15): the [sequence] table (SEQ-C's code after e2ecbd3). Every refusal's exact
# message, key and value; the limit messages in the sequence's own terms (which pulse, which pair,
# the unit of the key the user wrote, the real firmware limit); check_sequence as client.set_sequence
# calls it (a Sequence built from lists, default keys); the Sequence methods the runner and the CLI use
# (cycles, play_ticks, end_ns, repr, in_unit, current). Expected values come from the numbers written
# in each test.

SB = "phase1_us = 200\nelectrode_area_mm2 = 5\n"  # a sequence file's pulse: 200 µs phases, 5 mm²
SEQ_KEYS = ", ".join(getattr(paramfile, "SEQUENCE_KEYS", ()))
SEQ_LIM = LIMITS["min_sequence_interval_ns"]


def _seq(seq, extra=""):
    return paramfile.loads(SB + extra + "[sequence]\n" + seq)


def _seq_refusal(seq, extra=""):
    with pytest.raises(ParamFileError) as ei:
        _seq(seq, extra)
    e = ei.value
    return str(e), e.key, e.value


TWO = "onsets_ms = [0, 10]\namplitudes_ma = [1, 1]\n"


@needs_sequence
@pytest.mark.parametrize("seq,extra,msg,key,value", [
    # the table itself and its keys
    (None, "sequence = 3\n", "sequence = 3: [sequence] must be a table (onsets_ms = [...], amplitudes_ma = [...], "
     "loop = true|false)", "sequence", 3),
    # a value of 41 characters (repr) is cut to 40 for an unknown key
    (TWO + "repeat = '%s'\n" % ("x" * 39), "", "sequence.repeat = '%s...: unknown key in [sequence]; allowed keys: %s"
     % ("x" * 36, SEQ_KEYS), "repeat", "x" * 39),
    (TWO, "frequency_hz = 20\n", "frequency_hz = 20: not allowed with [sequence]: its onsets give every pulse's time "
     "(no pulse rate, bursts, ramps or train delay)", "frequency_hz", 20),
    (TWO, "amplitude_ma = 1.5\n", "amplitude_ma = 1.5: not allowed with [sequence]: its amplitudes_ma (or "
     "amplitudes_ua) give every pulse's amplitude", "amplitude_ma", 1.5),
    ("amplitudes_ma = [1]\n", "", "onsets_ms = (missing): [sequence] needs the pulse onsets: one of onsets_ms, "
     "onsets_us, onsets_s, onsets_ns", "onsets_ms", None),
    ("onsets_ms = [0]\n", "", "amplitudes_ma = (missing): [sequence] needs one amplitude per onset: amplitudes_ma "
     "or amplitudes_ua", "amplitudes_ma", None),
    # the second of two keys for the onsets: its value cut to 40 characters
    ("onsets_ms = [0, 10]\nonsets_us = [0, 1000, 2000, 3000, 4000, 5000, 6000, 7000]\namplitudes_ma = [1, 1]\n", "",
     "onsets_us = [0, 1000, 2000, 3000, 4000, 5000, 600...: conflicts with onsets_ms: give the onsets only once",
     "onsets_us", [0, 1000, 2000, 3000, 4000, 5000, 6000, 7000]),
    # the lists
    ("onsets_ms = 5\namplitudes_ma = [1]\n", "", "onsets_ms = 5: expected a list of onset times, e.g. onsets_ms = "
     "[0, 10, 25]", "onsets_ms", 5),
    ("onsets_ms = [0]\namplitudes_ma = 5\n", "", "amplitudes_ma = 5: expected a list of amplitudes, e.g. "
     "amplitudes_ma = [0, 10, 25]", "amplitudes_ma", 5),
    ("onsets_ms = []\namplitudes_ma = [1]\n", "", "onsets_ms = []: a sequence needs at least one pulse", "onsets_ms", []),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1]\n", "", "amplitudes_ma: 1 amplitudes for 2 onsets (onsets_ms): give "
     "one amplitude per onset", "amplitudes_ma", 1),
    # the numbers in them (decimal text: the value is the Decimal the file wrote)
    ("onsets_ms = [0, 10, 9.5]\namplitudes_ma = [1, 1, 1]\n", "", "onsets_ms[2] = 9.5: is not after onsets_ms[1] = 10: "
     "onsets must be strictly increasing", "onsets_ms[2]", Decimal("9.5")),
    ("onsets_ms = [0, true]\namplitudes_ma = [1, 1]\n", "", "onsets_ms[1] = True: expected a number", "onsets_ms[1]",
     True),
    ("onsets_ms = [0, inf]\namplitudes_ma = [1, 1]\n", "", "onsets_ms[1] = Infinity: expected a finite number",
     "onsets_ms[1]", Decimal("Infinity")),
    ("onsets_ms = [0, -1]\namplitudes_ma = [1, 1]\n", "", "onsets_ms[1] = -1: must not be negative", "onsets_ms[1]", -1),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 0]\n", "", "amplitudes_ma[1] = 0: must be greater than 0",
     "amplitudes_ma[1]", 0),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 0.0004]\n", "", "amplitudes_ma[1] = 0.0004: is below 1 µA: every "
     "pulse of a sequence has a current", "amplitudes_ma[1]", Decimal("0.0004")),
    # loop and cycle
    (TWO + "loop = 1\n", "", "loop = 1: expected true or false", "loop", 1),
    (TWO + "cycle_ms = 30\n", "", "cycle_ms = 30: only with loop = true (a sequence played once has no cycle)",
     "cycle_ms", 30),
    (TWO + "loop = true\ncycle_ms = 0\n", "", "cycle_ms = 0: must be greater than 0", "cycle_ms", 0),
    ("onsets_ms = [0, 10, 25]\namplitudes_ma = [1, 1, 1]\nloop = true\ncycle_ms = 20\n", "",
     "cycle_ms = 20: must be longer than the last onset (onsets_ms[2] = 25): onsets are times within the cycle",
     "cycle_ms", 20),
    ("onsets_ms = [5]\namplitudes_ma = [1]\nloop = true\n", "", "cycle_ms = (missing): loop = true with a single "
     "pulse: give the loop's cycle (cycle_ms, cycle_us or cycle_s)", "cycle_ms", None),
    (TWO, "train_duration_ms = 500\n", "train_duration_ms = 500: only with loop = true: a sequence played once ends "
     "after its last pulse", "train_duration_ms", 500),
])
def test_sequence_refusal_message_key_and_value(seq, extra, msg, key, value):
    if seq is None:
        with pytest.raises(ParamFileError) as ei:
            paramfile.loads(SB + extra)
        got = (str(ei.value), ei.value.key, ei.value.value)
    else:
        got = _seq_refusal(seq, extra)
    assert got == (msg, key, value)


@needs_sequence
@pytest.mark.parametrize("seq,limits,msg,field,value", [
    # two equal shortest intervals: the first pair is named (played once; looped, the wrap ties too)
    ("onsets_ms = [0, 1, 2, 10]\namplitudes_ua = [1, 1, 1, 1]\n", {},
     "the shortest interval between two onsets, onsets_ms[0] -> [1] = 1 ms: is below the firmware minimum 2 ms",
     "period_ns", 1_000_000),
    ("onsets_ms = [0, 1, 5]\namplitudes_ua = [1, 1, 1]\nloop = true\ncycle_ms = 6\n", {},
     "the shortest interval between two onsets, onsets_ms[0] -> [1] = 1 ms: is below the firmware minimum 2 ms",
     "period_ns", 1_000_000),
    # one pulse played once: its period is this build's least (2 ms); a device that wants more says so
    ("onsets_ms = [7]\namplitudes_ua = [300]\n", {"min_sequence_interval_ns": 5_000_000},
     "the shortest interval between two onsets, onsets_ms (a single pulse) = 2 ms: is below the firmware minimum 5 ms",
     "period_ns", SEQ_LIM),
    # the loop's cycle in the unit of its key (cycle_s here, the onsets in ms); by default the onsets' unit
    ("onsets_ms = [0, 10]\namplitudes_ua = [1, 1]\nloop = true\ncycle_s = 90000\n", {},
     "the loop's cycle, cycle_s = 90000 s: exceeds the firmware limit 86400 s", "sequence_cycle_ns", 90_000 * 10 ** 9),
    ("onsets_s = [0, 50000]\namplitudes_ua = [1, 1]\nloop = true\n", {},
     "the loop's cycle, cycle_s = 100000 s: exceeds the firmware limit 86400 s", "sequence_cycle_ns", 100_000 * 10 ** 9),
    # beyond the wire format (amplitude_ua is 32 bits, period_ns 64): the limit shown is the firmware's
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 10000000000]\n", {},
     "the largest amplitude, amplitudes_ma[1] = 10000000000 mA: exceeds the firmware limit 10 mA", "amplitude_ua",
     10 ** 13),
    ("onsets_ms = [0, 1e400]\namplitudes_ua = [1, 1]\n", {},  # a finite decimal, however large
     "the shortest interval between two onsets, onsets_ms[0] -> [1] = 1e+400 ms: exceeds the firmware limit "
     "86400000 ms", "period_ns", 10 ** 406),
    ("onsets_ms = [0, 10]\namplitudes_ma = [1, 12.5]\n", {},
     "the largest amplitude, amplitudes_ma[1] = 12.5 mA: exceeds the firmware limit 10 mA", "amplitude_ua", 12_500),
    # an onset beyond 24 h, to the ns in the key's unit (9 digits: 10 would show the float's noise)
    ("onsets_s = [0, 1, 1234567.123456789]\namplitudes_ua = [1, 1, 1]\n", {},
     "onsets_s[2] = 1234567.123456789 s: exceeds the firmware limit 86400 s", "onset_ns", 1_234_567_123_456_789),
    ("onsets_ms = [0, 10, 20]\namplitudes_ua = [1, 1, 1]\n", {"max_sequence_pulses": 2},
     "the number of pulses (onsets_ms) = 3: exceeds the firmware limit 2", "sequence_pulses", 3),
])
def test_sequence_limit_messages(seq, limits, msg, field, value):
    e = _limit_error(_seq(seq), dict(LIMITS, **limits))
    assert (str(e), e.key, e.value, e.violation.field) == (msg, field, value, field)


@needs_sequence
def test_sequence_cycle_below_the_period_names_the_period():
    """A ParamSet built in code whose cycle (1 h) is shorter than its period (25 h, beyond the longest
    duration): the minimum shown is the period itself, not the 24 h maximum of the field."""
    ps = _seq("onsets_s = [0, 1800]\namplitudes_ua = [1, 1]\nloop = true\ncycle_s = 3600\n")
    params = dict(ps.params, period_ns=25 * 3600 * 10 ** 9)
    e = _limit_error(ParamSet(params, sequence=ps.sequence, keys=ps.keys))
    assert str(e) == "the loop's cycle, cycle_s = 3600 s: is below the firmware minimum 90000 s"
    assert (e.key, e.value, e.violation.limit) == ("sequence_cycle_ns", 3600 * 10 ** 9, 25 * 3600 * 10 ** 9)


@needs_sequence
def test_sequence_keys_record_what_the_user_wrote():
    once = _seq("onsets_us = [0, 10000]\namplitudes_ma = [1, 2]\n")
    assert once.keys == {"phase1_ns": "phase1_us", "electrode_area_um2": "electrode_area_mm2", "period_ns": "onsets_us",
                         "amplitude_ua": "amplitudes_ma", "sequence_pulses": "onsets_us"}
    assert once.sequence.keys == {"onsets": "onsets_us", "amplitudes": "amplitudes_ma", "cycle": "cycle_us"}
    loop = _seq("onsets_us = [0, 10000]\namplitudes_ua = [1, 2]\nloop = true\ncycle_ms = 30\n")
    assert loop.keys["sequence_cycle_ns"] == "cycle_ms" and loop.keys["sequence_pulses"] == "onsets_us"
    assert loop.sequence.keys == {"onsets": "onsets_us", "amplitudes": "amplitudes_ua", "cycle": "cycle_ms"}
    default = _seq("onsets_us = [0, 10000]\namplitudes_ua = [1, 2]\nloop = true\n")  # cycle from the onsets
    assert default.keys["sequence_cycle_ns"] == "onsets_us" and default.sequence.keys["cycle"] == "cycle_us"


@needs_sequence
def test_single_pulse_period_is_the_least_this_build_accepts():
    """One pulse played once has no interval: its period is the largest of the sequence minimum (a
    short pulse) and twice the pulse plus the DAC update idle (a long one: the duty limit is 50 %)."""
    short = _seq("onsets_ms = [7]\namplitudes_ua = [300]\n")
    assert short.params["period_ns"] == SEQ_LIM
    long = paramfile.loads("phase1_ms = 5\ninterphase_us = 50\nelectrode_area_mm2 = 5\n[sequence]\n"
                           "onsets_ms = [7]\namplitudes_ua = [100]\n")
    length = 5_000_000 + 50_000 + 5_000_000  # phase 1, interphase, phase 2 (= phase 1), no recovery
    assert long.params["period_ns"] == 2 * length + LIMITS["min_update_idle_ns"]
    assert paramfile.check(long, LIMITS) is long.params  # duty (10 ms of 20.108 ms) just below 50 %


@needs_sequence
def test_sequence_numbers_from_a_dict():
    """from_dict (the API's form): floats at their exact value (finite checked without Decimal's
    is_finite), a signalling NaN refused as not finite, a huge Decimal is finite."""
    d = {"phase1_us": 200, "electrode_area_mm2": 5, "sequence": {"onsets_ms": [0, 2.5], "amplitudes_ua": [1, 2]}}
    assert paramfile.from_dict(d).sequence.onsets_ns == [0, 2_500_000]
    for bad, shown in ((math.inf, "inf"), (Decimal("sNaN"), "sNaN")):
        d["sequence"]["onsets_ms"] = [0, bad]
        with pytest.raises(ParamFileError) as ei:
            paramfile.from_dict(d)
        assert (str(ei.value), ei.value.key) == ("onsets_ms[1] = %s: expected a finite number" % shown, "onsets_ms[1]")
    d["sequence"]["onsets_ms"] = [0, Decimal("1e400")]  # beyond float range, still a number
    assert paramfile.from_dict(d).sequence.onsets_ns == [0, 10 ** 406]


@needs_sequence
def test_sequence_cycles_play_ticks_end_and_repr():
    extra = "interphase_us = 50\n"  # a 450 µs pulse: 200 + 50 + 200
    once = _seq("onsets_ms = [0, 10, 25]\namplitudes_ua = [1, 2, 3]\n", extra)
    s, p = once.sequence, once.params
    assert s.cycles(p) == 1 and repr(s) == "Sequence(3 pulses, once)"
    assert s.play_ticks(3) == [0, 1_250_000, 3_125_000]  # played once whatever the cycles asked
    assert s.end_ns(p) == 25_450_000 and s.end_ns(p, cycles=3) == 25_450_000
    loop = _seq("onsets_ms = [0, 10]\namplitudes_ua = [1, 2]\nloop = true\n", extra + "train_duration_ms = 50\n")
    s, p = loop.sequence, loop.params
    assert repr(s) == "Sequence(2 pulses, loop 20000000 ns)"
    assert s.cycles(p) == 3  # ceil(50 / 20)
    assert s.end_ns(p) == 2 * 20_000_000 + 10_000_000 + 450_000
    assert s.end_ns(p, cycles=1) == 10_450_000 and s.end_ns(p, cycles=0) is None
    assert s.cycles({}) == 0  # no duration: until stopped
    endless = _seq("onsets_ms = [0, 10]\namplitudes_ua = [1, 2]\nloop = true\n", extra)
    assert endless.sequence.cycles(endless.params) == 0 and endless.sequence.end_ns(endless.params) is None


@needs_sequence
def test_sequence_built_from_lists():
    """A Sequence as client.set_sequence builds it (onsets, amplitudes, loop, cycle; default keys)."""
    s = paramfile.Sequence([0, 5_000_000], [10, 2500])
    assert (s.loop, s.cycle_ns, s.keys) == (False, 0, {"onsets": "onsets_ns", "amplitudes": "amplitudes_ua",
                                                        "cycle": "cycle_ns"})
    assert repr(s) == "Sequence(2 pulses, once)"
    assert paramfile.Sequence([0], [1], loop=False, cycle_ns=7).cycle_ns == 0  # played once: no cycle
    assert repr(paramfile.Sequence([0], [1], loop=True)) == "Sequence(1 pulses, loop 0 ns)"
    assert s.in_unit(20_000_000, "cycle") == "20000000 ns" and s.current(2500) == "2500 µA"
    odd = paramfile.Sequence([0], [1], keys={"onsets": "times", "amplitudes": "amps", "cycle": "period"})
    assert odd.in_unit(1500) == "1500 ns" and odd.current(2500) == "2500 µA"  # keys without a unit: ns, µA


def _seq_check_error(onsets_ns, amplitudes_ua):
    """check_sequence as client.set_sequence calls it: a Sequence built from the lists (default keys),
    the canonical parameters of a 2-pulse file (10 ms apart, at most 200 µA)."""
    params = _seq("onsets_ms = [0, 10]\namplitudes_ua = [100, 200]\n").params
    assert paramfile.check_sequence(params, paramfile.Sequence([0, 10_000_000], [100, 200]), LIMITS) is params
    with pytest.raises(ParamLimitError) as ei:
        paramfile.check_sequence(params, paramfile.Sequence(onsets_ns, amplitudes_ua), LIMITS)
    return ei.value


@needs_sequence
@pytest.mark.parametrize("onsets,amps,msg,field,value", [
    ([0, 10_000_000], [100, 300], "amplitudes_ua[1] = 300 µA: exceeds the firmware limit 200 µA",
     "sequence_amplitude_ua", 300),
    ([0, 10_000_000], [300, 300], "amplitudes_ua[0] = 300 µA: exceeds the firmware limit 200 µA",  # the first
     "sequence_amplitude_ua", 300),
    ([0, 10_000_000], [0, 100], "amplitudes_ua[0] = 0 µA: is below the firmware limit 1 µA", "sequence_amplitude_ua", 0),
    ([0, 1_000_000], [100, 100], "onsets_ns[1] = 1000000 ns: is below the firmware limit 10000000 ns", "onset_ns",
     1_000_000),
    # not the parameters' number of pulses: said as a pulse count
    ([0, 10_000_000, 20_000_000], [1, 1, 1], "sequence pulses = 3 pulses: exceeds the firmware limit 2 pulses (from "
     "[sequence])", "sequence_pulses", 3),
    ([0], [1], "sequence pulses = 1 pulses: is below the firmware limit 2 pulses (from [sequence])", "sequence_pulses", 1),
])
def test_check_sequence_names_the_pulse(onsets, amps, msg, field, value):
    e = _seq_check_error(onsets, amps)
    assert (str(e), e.key, e.value, e.violation.field) == (msg, field, value, field)


@needs_sequence
def test_check_sequence_fewer_amplitudes_than_onsets():
    """Refused on the amplitudes (not a pulse of them: the count 1 is not one of the amplitudes)."""
    e = _seq_check_error([0, 10_000_000], [100])
    assert (e.key, e.value) == ("sequence_amplitude_ua", 1)
    assert str(e).startswith("amplitudes_ua") and not str(e).startswith("amplitudes_ua[")
