"""paramfile: loading, required keys, every refusal's message/key/value, the limit checks (check,
check_amplitude) and the requested/realised conversions, pinned where mutation testing found them
unobserved (issue 15; equivalent survivors: tests/mutation-survivors.md). Files are written by the test;
no firmware capture is involved."""
from __future__ import annotations

import math
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
