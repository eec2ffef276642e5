"""paramfile: loading, required keys and their messages, pinned where mutation testing found them
unobserved (issue 15). Files are written by the test; no firmware capture is involved."""
from __future__ import annotations

import pytest

from picostim import paramfile
from picostim.paramfile import MAX_FILE_BYTES, ParamFileError

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
