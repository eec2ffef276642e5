"""Issue 12: the edges of the CLI, one regression test per finding. Every user mistake exits 2 with one
line ``picostim: error: <key or option> = <value>: <why> (<limit>)``, a link problem exits 1 with one
line, never a traceback; exit 4 when a safety fault stopped the train; triggered runs on the virtual
Pico; one meaning per name for "interburst"; no temp dirs left behind."""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
import zipfile
from pathlib import Path

import pytest

from picostim import cli

ROOT = Path(__file__).resolve().parent.parent
PTNS = str(ROOT / "presets" / "ptns.toml")
SCS_BURST = str(ROOT / "presets" / "scs_burst.toml")
GOOD = "frequency_hz = 20\nphase1_us = 200\namplitude_ma = 1\nelectrode_area_mm2 = 5\n"


def invoke(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def one_error_line(err, *words):
    """Exactly one stderr line, the error, containing every word; returns it."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("picostim: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def toml(tmp_path, text, name="p.toml"):
    f = tmp_path / name
    f.write_text(text) if isinstance(text, str) else f.write_bytes(text)
    return f


# ---------------------------------------------------------------------------- explicit amplitude (item 1)
@pytest.mark.parametrize("drop,key", [("amplitude_ma", "amplitude_ma"), ("phase1_us", "phase1_us"),
                                      ("electrode_area_mm2", "electrode_area_mm2")])
def test_missing_safety_key_is_refused_naming_it(tmp_path, drop, key):
    body = "".join(line + "\n" for line in GOOD.splitlines() if not line.startswith(drop))
    f = toml(tmp_path, body)
    rc, _, err = invoke("validate", f)
    assert rc == 2
    one_error_line(err, key, "(missing)")
    # upload: refused before any connection (the port does not exist: a connection attempt would be exit 1)
    rc, _, err = invoke("--port", "/nonexistent/port", "upload", f)
    assert rc == 2
    one_error_line(err, key)


def test_every_preset_states_the_required_keys():
    from picostim import paramfile

    for f in sorted((ROOT / "presets").glob("*.toml")):
        ps = paramfile.load(f)
        assert set(paramfile.REQUIRED) <= set(ps.keys), f


def test_phase2_defaults_to_phase1(tmp_path):
    from picostim import paramfile

    ps = paramfile.load(toml(tmp_path, GOOD.replace("phase1_us = 200", "phase1_us = 50")))
    assert ps.params["phase1_ns"] == ps.params["phase2_ns"] == 50_000


# ---------------------------------------------------------------------------- binary / UTF-16 files
@pytest.mark.parametrize("data,words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", ["not a UTF-8 text file"]),
    (GOOD.encode("utf-16"), ["UTF-16"]),
    (b"frequency_hz = 20\x00\n", ["NUL"]),
    (b"\xff" * 100, ["UTF-8"]),
])
@pytest.mark.parametrize("how", ["validate", "upload", "run", "check"])
def test_binary_parameter_files(tmp_path, data, words, how):
    f = toml(tmp_path, data)
    argv = {"validate": ["validate", f], "upload": ["--port", "/nonexistent/port", "upload", f],
            "run": ["--port", "/nonexistent/port", "run", f], "check": ["check", "x.vcd", "--params", f]}[how]
    rc, _, err = invoke(*argv)
    assert rc == 2
    one_error_line(err, str(f), *words)


# ---------------------------------------------------------------------------- far beyond a limit
@pytest.mark.parametrize("line,words", [
    ("phase1_us = 1e300", ["phase1_us = 1e+300 µs", "10000 µs"]),
    ("amplitude_ma = 1e300", ["amplitude_ua = 1e+303 µA", "10000 µA", "amplitude_ma"]),
    ("phase1_ms = 100000000000000000000000000", ["1e+29 µs", "10000 µs", "phase1_ms"]),
    ("train_duration_s = 1e30", ["train_duration_us = 1e+36 µs", "86400000000 µs"]),
])
def test_huge_values_reported_against_the_firmware_limit(tmp_path, line, words):
    key = line.split("_")[0]
    body = "".join(x + "\n" for x in GOOD.splitlines() if not x.startswith(key)) + line + "\n"
    rc, _, err = invoke("validate", toml(tmp_path, body))
    assert rc == 2
    msg = one_error_line(err, *words)
    assert "18446744073709551" not in msg and "4294967295" not in msg  # not the wire format's ceiling
    assert not re.search(r"\d{20}", msg) and len(msg) < 200


# ---------------------------------------------------------------------------- options at parse time
@pytest.mark.parametrize("argv,words", [
    (["--virtual-channels", "0", "--virtual", "info"], ["--virtual-channels = 0", "1 ≤ N ≤ 4"]),
    (["--virtual", "run", PTNS, "--duration", "nan"], ["--duration = nan", "finite"]),
    (["--virtual", "run", PTNS, "--duration", "-1"], ["--duration = -1", "0 < x ≤ 86400 s"]),
    (["--timeout", "0", "info"], ["--timeout = 0", "0 < x ≤ 3600 s"]),
    (["--timeout", "-1", "info"], ["--timeout = -1"]),
    (["--retries", "-1", "info"], ["--retries = -1", "0 ≤ N ≤ 100"]),
    (["--virtual", "save", "8"], ["slot = 8", "0 ≤ N ≤ 7"]),
    (["--virtual", "load", "-1"], ["slot = -1"]),
    (["--virtual", "params", "-c", "99"], ["--channel = 99", "0 ≤ N ≤ 7"]),
    (["--virtual", "save", "1", "-c", "-3"], ["--channel = -3"]),
    (["--virtual", "watch", "--interval", "inf"], ["--interval = inf"]),
    (["capture", "out.txt"], ["out = out.txt", ".sr or .vcd"]),
    (["--virtual", "run", PTNS, "--plot", "/nonexistent/dir/x.png"], ["--plot = /nonexistent/dir/x.png",
                                                                       "does not exist"]),
    (["check", "x.vcd", "--params", PTNS, "--map", "POS=D0,FOO=D1"], ["--map = POS=D0,FOO=D1", "FOO"]),
    (["--virtual", "run", PTNS, "--trig1", "5ms,1ms"], ["--trig1 = 5ms,1ms", "increase"]),
    (["nosuchcommand"], ["invalid choice"]),
])
def test_bad_options_one_line_exit2(argv, words):
    rc, _, err = invoke(*argv)
    assert rc == 2
    one_error_line(err, *words)


@pytest.mark.parametrize("argv", [["params", "-c", "3"], ["save", "0", "-c", "2"], ["load", "0", "-c", "2"],
                                  ["upload", PTNS, "-c", "2"], ["start", "-c", "2"]])
def test_channel_the_device_lacks(argv):
    rc, _, err = invoke("--virtual", "--virtual-channels", "2", *argv)
    assert rc == 2
    one_error_line(err, "--channel = ", "0..1")


def test_link_problem_is_exit1_one_line():
    rc, _, err = invoke("--port", "/nonexistent/port", "status")
    assert rc == 1
    one_error_line(err, "/nonexistent/port")


def test_debug_shows_the_traceback():
    rc, _, err = invoke("--debug", "--port", "/nonexistent/port", "status")
    assert rc == 1 and "Traceback" in err and err.splitlines()[-1].startswith("picostim: error: ")


def test_help_lists_exit_codes():
    rc, out, _ = invoke("--help")
    assert rc == 0
    for code in ("0  ok", "1  link", "2  bad input", "3  the capture does not match", "4  the train was stopped"):
        assert code in out, code


# ---------------------------------------------------------------------------- captures
@pytest.fixture(scope="module")
def capture_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("caps")
    rc, _, err = invoke("--virtual", "run", PTNS, "--duration", "0.12", "--capture", d / "own.sr")
    assert rc == 0, err
    from picostim.capture import read_capture, write_capture
    from picostim.capture.trace import Channel, Trace

    t = read_capture(d / "own.sr")
    wiring = {"POS": "D0", "NEG": "D1", "RECOVERY": "D2", "SYNC": "D3", "TRIG1": "D4"}
    demo = {wiring[n]: c for n, c in t.channels.items() if n in wiring}
    demo.update({"D5": Channel(0), "D6": Channel(1), "D7": Channel(0)})
    write_capture(Trace(t.samplerate_hz, t.n_samples, dict(sorted(demo.items()))), d / "demo.sr")
    odd = {"CH%d" % i: c for i, c in enumerate(t.channels.values())}
    write_capture(Trace(t.samplerate_hz, t.n_samples, odd), d / "odd.vcd")
    (d / "odd.map").write_text(",".join("%s=CH%d" % (n, i) for i, n in enumerate(t.channels)
                                        if n in ("POS", "NEG", "RECOVERY", "SYNC")))
    write_capture(t, d / "own.vcd")
    return d


def test_foreign_capture_default_wiring(capture_files):
    """A capture with sigrok's channel names (D0..D7) is read with the analyzer wiring of
    docs/HARDWARE.md and checks OK; --map says the same explicitly."""
    rc, out, err = invoke("check", capture_files / "demo.sr", "--params", PTNS)
    assert rc == 0, err
    assert "POS=D0" in out and "NEG=D1" in out
    rc, out, err = invoke("check", capture_files / "demo.sr", "--params", PTNS, "--map", "POS=D0,NEG=D1,SYNC=D3")
    assert rc == 0, err
    # swapped lines: the polarity is wrong -> a mismatch (exit 3), not a crash
    rc, out, err = invoke("check", capture_files / "demo.sr", "--params", PTNS, "--map", "POS=D1,NEG=D0")
    assert rc == 3
    one_error_line(err, "does not match")


def test_foreign_capture_without_the_lines_lists_channels(capture_files):
    rc, _, err = invoke("check", capture_files / "odd.vcd", "--params", PTNS)
    assert rc == 2
    one_error_line(err, "CH0", "CH1", "--map")
    good = (capture_files / "odd.map").read_text()
    pos = dict(kv.split("=") for kv in good.split(","))["POS"]
    rc, _, err = invoke("check", capture_files / "odd.vcd", "--params", PTNS, "--map", "POS=%s,NEG=D1" % pos)
    assert rc == 2
    one_error_line(err, "--map = NEG=D1", "no channel D1", "CH0")
    rc, out, err = invoke("check", capture_files / "odd.vcd", "--params", PTNS, "--map", good)
    assert rc == 0, err


def test_channel_missing_from_capture(capture_files):
    rc, _, err = invoke("check", capture_files / "own.vcd", "--params", PTNS, "-c", "2")
    assert rc == 2
    one_error_line(err, "-c = 2", "POS_2", "POS, NEG")


def _sr_variant(src, dst, meta_edit=None, drop=()):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for n in zin.namelist():
            if n in drop:
                continue
            data = zin.read(n)
            if n == "metadata" and meta_edit:
                data = meta_edit(data.decode()).encode()
            zout.writestr(n, data)
    return dst


@pytest.mark.parametrize("make,words", [
    (lambda d: d.joinpath("e.sr").write_bytes(b"") and None or d / "e.sr", ["empty"]),
    (lambda d: d.joinpath("t.sr").write_bytes((d / "own.sr").read_bytes()[:300]) and d / "t.sr",
     ["not a complete sigrok session"]),
    (lambda d: _sr_variant(d / "own.sr", d / "nm.sr", drop=("metadata",)), ["metadata"]),
    (lambda d: _sr_variant(d / "own.sr", d / "z.sr", lambda m: re.sub(r"samplerate=.*", "samplerate=0 Hz", m)),
     ["samplerate = 0 Hz", "must be > 0"]),
    (lambda d: _sr_variant(d / "own.sr", d / "ns.sr", lambda m: re.sub(r"samplerate=.*\n", "", m)), ["samplerate"]),
    (lambda d: _sr_variant(d / "own.sr", d / "u.sr", lambda m: re.sub(r"unitsize=.*", "unitsize=100000", m)),
     ["unitsize = 100000"]),
    (lambda d: d.joinpath("x.vcd").write_bytes(b"hello") and d / "x.vcd", ["neither a sigrok session"]),
])
def test_unusable_captures(capture_files, make, words):
    path = make(capture_files)
    rc, _, err = invoke("check", path, "--params", PTNS)
    assert rc == 2
    one_error_line(err, str(path), *words)


def test_vcd_time_going_backwards(capture_files):
    text = (capture_files / "own.vcd").read_text().split("\n")
    stamps = [i for i, ln in enumerate(text) if ln.startswith("#")]
    i, j = stamps[3], stamps[5]
    text[i], text[j] = text[j], text[i]
    bad = capture_files / "back.vcd"
    bad.write_text("\n".join(text))
    rc, _, err = invoke("check", bad, "--params", PTNS)
    assert rc == 2
    one_error_line(err, "goes backwards", str(bad))


# ---------------------------------------------------------------------------- exit 4 (item 2)
def test_safety_fault_stop_is_exit4(tmp_path):
    rc, out, err = invoke("--virtual", "--fault", "open@0.1s", "run", PTNS, "--duration", "0.3")
    assert rc == 4, (out, err)
    assert "STOPPED" in out and not out.startswith("OK")
    one_error_line(err, "channel 0", "open", "safety stop")
    rc, out, err = invoke("--virtual", "--fault", "open@0.1s", "run", PTNS, "--duration", "0.3", "--json")
    assert rc == 4 and json.loads(out)["stopped_by_fault"] is True and json.loads(out)["exit_code"] == 4
    # a fault on another channel does not stop this run's train
    rc, out, err = invoke("--virtual", "--fault", "open@0.1s,ch=1", "run", PTNS, "--duration", "0.3")
    assert rc == 0, err


# ---------------------------------------------------------------------------- triggered runs (item 3)
def test_triggered_run_needs_and_uses_trig(tmp_path):
    f = toml(tmp_path, GOOD + 'trigger = "ext1"\ntrain_duration_ms = 100\n')
    rc, out, err = invoke("--virtual", "run", f)
    assert rc == 2
    one_error_line(err, "TRIG1", "--trig1", 'trigger = "ext1"')
    assert "no complete pulse" not in err + out
    rc, out, err = invoke("--virtual", "run", f, "--trig1", "30ms", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["pulses"] == 2  # 100 ms at 20 Hz
    assert rep["trigger_latency_cycles"] is not None and rep["trigger_latency_cycles"] <= 3 + 2  # PIO-exact start
    rc, _, err = invoke("--port", "/nonexistent/port", "run", f, "--trig1", "30ms")
    assert rc == 2
    one_error_line(err, "--trig1", "--virtual")


def test_trigger_edge_after_the_run_says_waiting(tmp_path):
    """No edge within the run (here: scheduled after it; on a board: none came): the report says the
    train waited for its input, not "no complete pulse found"."""
    f = toml(tmp_path, GOOD + 'trigger = "ext2"\n')
    rc, out, err = invoke("--virtual", "run", f, "--trig2", "5s", "--duration", "0.1")
    assert rc == 3
    one_error_line(err, "waiting for TRIG2", 'trigger = "ext2"')
    assert "no complete pulse found" not in out + err


def test_gated_run_follows_the_gate(tmp_path):
    f = toml(tmp_path, GOOD.replace("frequency_hz = 20", "frequency_hz = 100") + 'trigger = "gated2"\n')
    rc, out, err = invoke("--virtual", "run", f)
    assert rc == 2
    one_error_line(err, "TRIG2", "--trig2")
    rc, out, err = invoke("--virtual", "run", f, "--trig2", "10ms,60ms", "--duration", "0.2", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    # 10 ms periods while the gate is open (50 ms) plus the pulse the stop lets finish: no pulses after
    assert 4 <= rep["pulses"] <= 7, rep["pulses"]


# ---------------------------------------------------------------------------- "interburst" (item 4)
def test_interburst_means_one_thing(tmp_path):
    rc, out, err = invoke("--virtual", "upload", SCS_BURST, "--json")
    assert rc == 0, err
    up = json.loads(out)
    interburst = up["requested"]["interburst_us"]  # the parameter: end of the burst's last period -> next burst
    assert interburst == 15000.0
    rc, out, err = invoke("--virtual", "run", SCS_BURST, "--duration", "0.1", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert "interburst_us" not in rep  # the run measures a different gap, under its own name
    pulse_us = rep["phase1_us"]["mean"] + rep["interphase_us"]["mean"] + rep["phase2_us"]["mean"]
    gap = rep["burst_gap_us"]["mean"]  # end of a burst's last pulse -> next burst's first pulse
    assert abs(gap - (interburst + up["requested"]["period_us"] - pulse_us)) < 0.01, (gap, interburst, pulse_us)
    rc, out, _ = invoke("--virtual", "run", SCS_BURST, "--duration", "0.1")
    assert "burst_gap" in out and "interburst" not in out


# ---------------------------------------------------------------------------- temp dirs (item 5)
def test_virtual_commands_leave_no_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for argv in (["--virtual", "info"], ["--virtual", "run", PTNS, "--duration", "0.05"],
                 ["--virtual", "save", "0"]):
        invoke(*argv)
    assert not list(tmp_path.glob("picostim-flash-*"))


# ---------------------------------------------------------------------------- docs (item 6)
def test_docs_name_only_project_files_and_public_sources():
    for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "/work/" not in f.read_text(), f
