"""Issue 12 item 7: every subcommand driven in-process (``cli.main(argv)``, stdout/stderr captured) with
hypothesis-generated hostile argv, parameter files (random bytes, random TOML, mutated presets) and
captures (mutated .sr/.vcd, foreign channel names).

Invariants for every case: no traceback and no "internal error" (the CLI's last-resort catch), an exit
code the input deserves (a bad input 2, a link problem 1, a capture that does not match 3; 0 only
where the input is in fact valid, e.g. a mutation that left a preset intact), and on failure exactly
one stderr line ``picostim: error: ...`` that names what was wrong. The cases tried per subcommand are
printed with the reliability figures at the end of the run (tests/reliability_report.py).

Default run: a few thousand cases in well under a minute; the ``_x10`` variants (``-m slow``) run ten
times as many.
"""

from __future__ import annotations

import collections
import contextlib
import io
import re
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.limits import LIMITS
from picostim import cli, paramfile
from reliability_report import record

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "presets").glob("*.toml"))
PTNS = str(ROOT / "presets" / "ptns.toml")
NOPORT = "/nonexistent/picostim-port"  # device commands get this far: the link error (exit 1)
WORK = Path(tempfile.mkdtemp(prefix="picostim-hostile-"))

COUNTS: collections.Counter = collections.Counter()  # subcommand -> cases
CODES: collections.Counter = collections.Counter()  # exit code -> cases
ELAPSED = [0.0]  # seconds spent in the three properties (hypothesis generation included)
SUBCOMMANDS = ("info", "upload", "validate", "params", "start", "stop", "trigger", "clear-fault", "status",
               "impedance", "save", "load", "watch", "run", "check", "capture", "ports", "flash", "virtual",
               "set-amplitude")


@pytest.fixture(scope="module")
def captures():
    return _make_captures()


@pytest.fixture(autouse=True)
def _timed():
    t0 = time.monotonic()
    yield
    ELAPSED[0] += time.monotonic() - t0


@pytest.fixture(scope="module", autouse=True)
def _figures():
    yield
    record("cli_hostile_inputs", total=sum(COUNTS.values()), seconds=round(ELAPSED[0], 1),
           **{"exit_%d" % k: v for k, v in sorted(CODES.items())},
           **{k.replace("-", "_"): COUNTS[k] for k in SUBCOMMANDS + ("(none)",) if COUNTS[k]})


class _NoSleep:
    """``cli.time`` for the fuzz: ``picostim virtual`` serves until Ctrl-C; here its first sleep is one."""

    monotonic = staticmethod(time.monotonic)

    @staticmethod
    def sleep(_s):
        raise KeyboardInterrupt


_PARSER = []


def invoke(argv):
    """cli.main(argv) in-process with stdout/stderr captured. The parser is built once (argparse
    parsers are reusable; building one takes ~10 ms of gettext lookups, most of a case's time)."""
    if not _PARSER:
        _PARSER.append(cli.build_parser())
    out, err = io.StringIO(), io.StringIO()
    saved = cli.time, cli.build_parser
    cli.time, cli.build_parser = _NoSleep, lambda: _PARSER[0]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(list(argv))
    finally:
        cli.time, cli.build_parser = saved
    return rc, out.getvalue(), err.getvalue()


def subcommand(argv):
    return next((a for a in argv if a in SUBCOMMANDS), "(none)")


def check_outcome(argv, rc, out, err, allowed, names=()):
    """The invariants; ``names``: at least one must appear in the error line (what was wrong)."""
    COUNTS[subcommand(argv)] += 1
    CODES[rc] += 1
    where = "argv=%r rc=%r\nstderr=%r" % (argv, rc, err[-2000:])
    if "--debug" in argv:  # asked for the traceback (a generated value may spell it): judge the last line
        err = err.splitlines()[-1] + "\n" if err.strip() else err
    assert "Traceback" not in err and "Traceback" not in out, where
    assert "internal error" not in err, where
    assert rc in allowed, where
    if rc != 0:
        lines = err.splitlines()
        assert len(lines) == 1, where
        assert lines[0].startswith("picostim: error: ") and len(lines[0]) > len("picostim: error: ") + 5, where
        if names:
            assert any(n and n in lines[0] for n in names), where


SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------- argv
NASTY = ["nan", "inf", "-inf", "-1", "0", "-0", "1e400", "-1e400", "1e-400", "99999999999999999999999", "0x10",
         "1_0", "", " ", "1e3", "3.5", "-5", "7", "8", "4", "2", "abc", "10ms", "1s", "-10ms", "10ms,5ms",
         "POS=D0", "POS=D0,NEG=D1", "FOO=D0", "POS", "POS=", "x.png", "/nonexistent/dir/x.png", "x.txt",
         str(WORK / "o.vcd"), str(WORK / "o.sr"), str(WORK / "o.png"), "\x00", "é", "--json", "-c", "%s", "{}",
         "open@0.5s", "drift:10k@2s", "bogus@", "1k,c=4.7u", "1k,ch=9", "ok@-1s"]
value = st.one_of(st.sampled_from(NASTY), st.text(max_size=10),
                  st.integers(-10**30, 10**30).map(str), st.floats().map(repr))

GLOBAL_OPTS = {"--timeout": True, "--retries": True, "--virtual-channels": True, "--serial": True,
               "--electrode": True, "--fault": True}  # not --debug: it adds the traceback by design
COMMAND_OPTS = {
    "info": {"--json": False},
    "upload": {"--channel": True, "-c": True, "--json": False},
    "validate": {},
    "params": {"--channel": True, "-c": True, "--json": False},
    "start": {"--channel": True, "-c": True}, "stop": {"--channel": True}, "trigger": {"-c": True},
    "clear-fault": {"--channel": True},
    "status": {"--json": False},
    "impedance": {"--channel": True, "--json": False},
    "save": {"--channel": True, "--json": False}, "load": {"-c": True, "--json": False},
    "watch": {"--interval": True, "--duration": True, "--follow": False, "--json": False},
    "run": {"--channel": True, "--duration": True, "--capture": True, "--plot": True, "--analyzer": True,
            "--samplerate": True, "--trig1": True, "--trig2": True, "--json": False},
    "check": {"--params": True, "--channel": True, "--map": True, "--plot": True, "--json": False},
    "capture": {"--duration": True, "--analyzer": True, "--samplerate": True, "--channel": True},
    "ports": {"--json": False},
    "flash": {"--dry-run": False, "--tree": True},
    "virtual": {},
    "set-amplitude": {"--channel": True, "-c": True, "--json": False},
}
POSITIONAL = {"upload": ["file"], "validate": ["file"], "run": ["file"], "check": ["capture"], "save": ["slot"],
              "load": ["slot"], "capture": ["out"], "set-amplitude": ["amplitude"]}


@st.composite
def hostile_argv(draw):
    cmd = draw(st.sampled_from(sorted(COMMAND_OPTS)))
    argv = [] if cmd == "virtual" else ["--port", NOPORT]
    for opt in draw(st.lists(st.sampled_from(sorted(GLOBAL_OPTS)), max_size=3)):
        argv += [opt, draw(value)] if GLOBAL_OPTS[opt] else [opt]
    argv.append(cmd)
    for kind in POSITIONAL.get(cmd, []):
        if draw(st.booleans()):  # a plausible one: the fuzz then reaches the command itself
            argv.append({"file": PTNS, "capture": str(WORK / "cap.vcd"), "slot": "1",
                         "out": str(WORK / "o.sr"), "amplitude": "2.5mA"}[kind])
        else:
            argv.append(draw(value))
    opts = COMMAND_OPTS[cmd]
    for opt in draw(st.lists(st.sampled_from(sorted(opts) or ["--bogus"]), max_size=4)):
        argv += [opt, draw(value)] if opts.get(opt) else [opt]
    if cmd == "check" and "--params" not in argv and draw(st.booleans()):
        argv += ["--params", PTNS]
    if cmd == "flash":
        argv.append("--no-build")  # never build (seconds, and a shared build/ directory)
    if cmd in ("capture", "run") and any(a.lower().startswith("demo") for a in argv):
        argv.append("--bogus")  # sigrok's demo driver would really capture: keep it out (parse error)
    return argv


def _names_for(argv):
    """Words that may name what was wrong: every option or value given, and the subcommand."""
    return [a for a in argv if len(a.strip()) >= 1] + ["argument", "arguments", "COMMAND", "file", "port", NOPORT,
                                                      "slot", "capture", "out", "AMPLITUDE"]


def argv_case(argv):
    rc, out, err = invoke(argv)
    # valid argv ends at the link (exit 1: no board at NOPORT) or, for a few offline commands, succeeds
    allowed = {1, 2, 3} | ({0} if subcommand(argv) in ("ports", "flash", "virtual", "validate", "check")
                           or "--help" in argv else set())
    check_outcome(argv, rc, out, err, allowed, _names_for(argv))


@settings(max_examples=1500, **SETTINGS)
@given(hostile_argv())
def test_hostile_argv(captures, argv):
    argv_case(argv)


@pytest.mark.slow
@settings(max_examples=15000, **SETTINGS)
@given(hostile_argv())
def test_hostile_argv_x10(captures, argv):
    argv_case(argv)


# ------------------------------------------------------------------- device commands on a live virtual Pico
DEVICE_CMDS = {
    "info": [], "status": [], "params": ["-c"], "start": ["-c"], "stop": ["-c"], "trigger": ["-c"],
    "clear-fault": ["-c"], "impedance": ["-c"], "save": ["slot", "-c"], "load": ["slot", "-c"],
    "upload": ["preset", "-c"], "run": ["preset", "-c", "--duration"], "set-amplitude": ["amplitude", "-c"],
}
small = st.one_of(st.integers(-2, 9).map(str), st.sampled_from(["nan", "1e400", "-0", "0x1", ""]))


@st.composite
def virtual_argv(draw):
    cmd = draw(st.sampled_from(sorted(DEVICE_CMDS)))
    argv = ["--virtual", "--virtual-channels", draw(st.sampled_from(["1", "2", "4", "0", "5"]))]
    argv.append(cmd)
    for kind in DEVICE_CMDS[cmd]:
        if kind == "slot":
            argv.append(draw(small))
        elif kind == "preset":
            argv.append(str(draw(st.sampled_from(PRESETS))))
        elif kind == "amplitude":
            argv.append(draw(st.one_of(st.sampled_from(["2.5mA", "2500uA", "1", "12mA", "0uA", "-1mA", "2.5A",
                                                        "1e400mA", "nan"]), small)))
        elif kind == "-c" and draw(st.booleans()):
            argv += ["-c", draw(small)]
        elif kind == "--duration":
            argv += ["--duration", draw(st.sampled_from(["0.02", "0.05", "nan", "-1", "0"]))]
    return argv


def virtual_case(argv):
    rc, out, err = invoke(argv)
    # a live board answers: ok, a refusal or a bad option (2), a capture that does not match (3)
    check_outcome(argv, rc, out, err, {0, 2, 3}, _names_for(argv) + ["channel", "refused", "slot"])


@settings(max_examples=200, **SETTINGS)
@given(virtual_argv())
def test_hostile_argv_live_virtual_pico(captures, argv):
    virtual_case(argv)


@pytest.mark.slow
@settings(max_examples=2000, **SETTINGS)
@given(virtual_argv())
def test_hostile_argv_live_virtual_pico_x10(captures, argv):
    virtual_case(argv)


# ---------------------------------------------------------------------------------------- parameter files
KEYS = list(paramfile.ALLOWED_KEYS) + ["name", "description", "channel", "phase_one_us", "amplitude", "x" * 60,
                                       "amplitude_MA", "a\nb", "ünïcödé", ""]
scalar = st.one_of(
    st.integers(-10**25, 10**25), st.integers(0, 10**400), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, 1e300, -0.0, 5e-324, 0.5]), st.booleans(),
    st.text(max_size=20), st.sampled_from(["cathodic-first", "anodic-first", "software", "ext1", "gated2"]))


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else "\\u%04x" % ord(c) for c in v) + '"'


def _toml_key(k):
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


@st.composite
def random_toml(draw):
    entries = draw(st.dictionaries(st.sampled_from(KEYS), st.one_of(scalar, st.lists(scalar, max_size=3)),
                                   max_size=10))
    lines = ["%s = %s" % (_toml_key(k), _toml_value(v)) for k, v in entries.items()]
    if draw(st.booleans()):
        table = draw(st.dictionaries(st.sampled_from(KEYS), scalar, max_size=8))
        lines += ["[%s]" % draw(st.sampled_from(["channel", "channel", "other", "channel.sub"]))]
        lines += ["%s = %s" % (_toml_key(k), _toml_value(v)) for k, v in table.items()]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


NUMBER = re.compile(rb"(?<![A-Za-z_])-?[0-9]+(?:\.[0-9]+)?")


@st.composite
def mutated_preset(draw):
    data = draw(st.sampled_from(PRESETS)).read_bytes()
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["number", "drop_line", "dup_line", "flip", "insert", "truncate", "key"]))
        lines = data.split(b"\n")
        if kind == "number" and NUMBER.search(data):
            spans = [m.span() for m in NUMBER.finditer(data)]
            a, b = draw(st.sampled_from(spans))
            new = draw(st.sampled_from([b"0", b"-1", b"1e300", b"1e-300", b"nan", b"inf", b"18446744073709551616",
                                        b"99999999999999999999999999999999999999", b"0.0000001", b"\"200\"",
                                        b"true", b"[1, 2]", b"2147483648", b"1e19"]))
            data = data[:a] + new + data[b:]
        elif kind == "drop_line" and lines:
            del lines[draw(st.integers(0, len(lines) - 1))]
            data = b"\n".join(lines)
        elif kind == "dup_line" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = b"\n".join(lines)
        elif kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data = data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
        elif kind == "truncate" and data:
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif kind == "key":
            key = draw(st.sampled_from(KEYS[:20]))
            data += b"\n%s = %s\n" % (_toml_key(key).encode(), _toml_value(draw(scalar)).encode("utf-8", "replace"))
    if draw(st.integers(0, 9)) == 0:
        data = data.decode("utf-8", "replace").encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])))
    return data


param_bytes = st.one_of(st.binary(max_size=300), random_toml(), mutated_preset())


def _file_verdict(path):
    """("load", error) when the file is not a well-formed parameter file, ("limits", error) when it
    breaks this build's limits, (None, None) when it is valid. Also proves paramfile raises nothing
    but ParamFileError on any input."""
    try:
        ps = paramfile.load(path)
    except paramfile.ParamFileError as e:
        return "load", e
    try:
        paramfile.check(ps, LIMITS)
    except paramfile.ParamFileError as e:
        return "limits", e
    return None, None


def file_case(data, cmd, channel):
    f = WORK / "params.toml"
    f.write_bytes(data)
    bad, _ = _file_verdict(f)
    argv = {"validate": ["validate", str(f)],
            "upload": ["--port", NOPORT, "upload", str(f), "-c", str(channel)],
            "run": ["--port", NOPORT, "run", str(f), "--duration", "0.01"],
            "check": ["check", _good_capture(), "--params", str(f)]}[cmd]
    rc, out, err = invoke(argv)
    if bad == "load":  # refused before anything else
        allowed = {2}
    elif bad == "limits":  # validate: this build's limits; upload/run: the device's, after connecting (none
        allowed = {"validate": {2}, "upload": {1}, "run": {1}, "check": {2}}[cmd]  # here: exit 1)
    else:
        allowed = {"validate": {0}, "upload": {1}, "run": {1}, "check": {0, 3}}[cmd]
    names = [str(f), " = ", "(missing)", "TOML", "UTF", NOPORT]
    check_outcome(argv, rc, out, err, allowed, names)


FILE_CASES = dict(data=param_bytes, cmd=st.sampled_from(["validate", "upload", "run", "check"]),
                  channel=st.integers(0, 3))


@settings(max_examples=1200, **SETTINGS)
@given(**FILE_CASES)
def test_hostile_parameter_files(captures, data, cmd, channel):
    file_case(data, cmd, channel)


@pytest.mark.slow
@settings(max_examples=12000, **SETTINGS)
@given(**FILE_CASES)
def test_hostile_parameter_files_x10(captures, data, cmd, channel):
    file_case(data, cmd, channel)


# ---------------------------------------------------------------------------------------------- captures
_CAPTURES: dict[str, str] = {}


def _make_captures():
    """A real capture of the virtual Pico (ptns, 0.12 s) as .sr and .vcd, plus foreign copies: sigrok
    channel names D0..D7 (the analyzer wiring) and made-up names (needing --map)."""
    if _CAPTURES:
        return _CAPTURES
    from picostim.capture import read_capture, write_capture
    from picostim.capture.trace import Channel, Trace

    own = WORK / "own.sr"
    rc, _, err = invoke(["--virtual", "run", PTNS, "--duration", "0.12", "--capture", str(own)])
    assert rc == 0, err
    trace = read_capture(own)
    wiring = {"POS": "D0", "NEG": "D1", "RECOVERY": "D2", "SYNC": "D3", "TRIG1": "D4"}
    foreign = {wiring.get(n, n): ch for n, ch in trace.channels.items() if n in wiring}
    for extra in ("D5", "D6", "D7"):
        foreign[extra] = Channel(0)
    odd = {"CH%d" % i: ch for i, ch in enumerate(trace.channels.values())}
    for label, chans in (("own", trace.channels), ("foreign", foreign), ("odd", odd)):
        for ext in ("sr", "vcd"):
            path = WORK / ("%s.%s" % (label, ext))
            write_capture(Trace(trace.samplerate_hz, trace.n_samples, dict(chans)), path)
            _CAPTURES["%s.%s" % (label, ext)] = str(path)
    (WORK / "cap.vcd").write_bytes(Path(_CAPTURES["own.vcd"]).read_bytes())
    return _CAPTURES


def _good_capture():
    return _make_captures()["own.vcd"]


def _rezip(data, draw):
    """Structural .sr mutations: metadata and chunks edited inside a valid zip."""
    src = zipfile.ZipFile(io.BytesIO(data))
    members = {n: src.read(n) for n in src.namelist()}
    meta = members.get("metadata", b"").decode()
    kind = draw(st.sampled_from(["no_metadata", "samplerate", "unitsize", "probes", "no_chunks", "odd_chunk",
                                 "version", "no_device"]))
    if kind == "no_metadata":
        members.pop("metadata", None)
    elif kind == "samplerate":
        meta = re.sub(r"samplerate=.*", draw(st.sampled_from(["", "samplerate=0 Hz", "samplerate=abc",
                                                               "samplerate=1e999 Hz", "samplerate=-5 MHz",
                                                               "samplerate=0.000001 Hz"])), meta)
    elif kind == "unitsize":
        meta = re.sub(r"unitsize=.*", "unitsize=%s" % draw(st.sampled_from(["0", "3", "9", "x", "100000", "-1"])),
                      meta)
    elif kind == "probes":
        meta = re.sub(r"probe(\d+)=\S+", lambda m: "probe%s=%s" % (
            draw(st.sampled_from([m.group(1), "0", "99", "x"])), draw(st.sampled_from(["D0", "POS", "", "ä"]))),
            meta)
    elif kind == "no_chunks":
        members = {n: v for n, v in members.items() if not n.startswith("logic")}
    elif kind == "odd_chunk":
        for n in [n for n in members if n.startswith("logic")][:1]:
            members[n] = members[n][:max(0, len(members[n]) - draw(st.integers(1, 3)))]
    elif kind == "version":
        members["version"] = draw(st.sampled_from([b"1", b"3", b"", b"\xff"]))
    elif kind == "no_device":
        meta = meta.replace("[device 1]", "[other]")
    if "metadata" in members:
        members["metadata"] = meta.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, v in members.items():
            zf.writestr(n, v)
    return buf.getvalue()


def _vcd_edit(data, draw):
    text = data.decode("ascii", "replace")
    kind = draw(st.sampled_from(["backwards", "no_enddefs", "timescale", "rate", "rename", "drop_lines",
                                 "huge_time", "garbage_values"]))
    lines = text.split("\n")
    if kind == "backwards":
        times = [i for i, ln in enumerate(lines) if ln.startswith("#")]
        if len(times) >= 3:
            i, j = sorted(draw(st.lists(st.sampled_from(times[1:]), min_size=2, max_size=2, unique=True)))
            lines[i], lines[j] = lines[j], lines[i]
    elif kind == "no_enddefs":
        lines = [ln for ln in lines if "$enddefinitions" not in ln]
    elif kind == "timescale":
        lines = [re.sub(r"\$timescale .* \$end", "$timescale %s $end" % draw(st.sampled_from(
            ["0 ns", "1 xs", "99999999999999999999 s", "1 fs", "", "-1 ns"])), ln) for ln in lines]
    elif kind == "rate":
        lines = [re.sub(r"at [0-9.]+ [kMG]?Hz", "at %s" % draw(st.sampled_from(["0 Hz", "0.0 MHz", "1e9 GHz"])), ln)
                 for ln in lines]
    elif kind == "rename":
        lines = [re.sub(r"(\$var wire 1 \S+ )(\S+)", lambda m: m.group(1) + draw(st.sampled_from(
            ["D0", "D1", "X", "POS_3", "NEG", "a.b"])), ln) for ln in lines]
    elif kind == "drop_lines" and lines:
        for _ in range(draw(st.integers(1, 5))):
            if lines:
                del lines[draw(st.integers(0, len(lines) - 1))]
    elif kind == "huge_time":
        lines.insert(len(lines) - 1, draw(st.sampled_from(["#99999999999999999999", "#-5", "#1e9", "#"])))
    elif kind == "garbage_values":
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["b1010 !", "x!", "r1.5 !", "1", "$end",
                                                                              "$dumpvars", "$comment"])))
    return "\n".join(lines).encode()


@st.composite
def hostile_capture(draw):
    caps = _make_captures()
    name = draw(st.sampled_from(sorted(caps)))
    data = Path(caps[name]).read_bytes()
    kind = draw(st.sampled_from(["intact", "truncate", "flip", "insert", "empty", "structure", "random"]))
    if kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    elif kind == "insert":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=32)) + data[i:]
    elif kind == "empty":
        data = b""
    elif kind == "structure":
        data = _rezip(data, draw) if name.endswith(".sr") else _vcd_edit(data, draw)
    elif kind == "random":
        data = draw(st.sampled_from([b"PK\x03\x04", b"$", b"", b"#"])) + draw(st.binary(max_size=200))
    return name, data


map_values = st.one_of(st.none(), st.sampled_from(["POS=D0,NEG=D1", "POS=CH0,NEG=CH1,RECOVERY=CH2,SYNC=CH3",
                                                    "POS=D9,NEG=D1", "NEG=D1", "POS=POS,NEG=NEG"]),
                       st.text(max_size=15))


def capture_case(cap, channel, mapping, as_json):
    name, data = cap
    path = WORK / ("capture" + Path(name).suffix)
    path.write_bytes(data)
    argv = ["check", str(path), "--params", PTNS, "-c", str(channel)]
    if mapping is not None:
        argv += ["--map", mapping]
    if as_json:
        argv.append("--json")
    rc, out, err = invoke(argv)
    # no link involved: readable and matching 0, unreadable or unusable 2, readable but wrong 3
    check_outcome(argv, rc, out, err, {0, 2, 3}, [str(path), "--map", "-c", "capture"])


CAPTURE_CASES = dict(cap=hostile_capture(), channel=st.one_of(st.just(0), st.integers(0, 7)), mapping=map_values,
                     as_json=st.booleans())


@settings(max_examples=400, **SETTINGS)
@given(**CAPTURE_CASES)
def test_hostile_captures(captures, cap, channel, mapping, as_json):
    capture_case(cap, channel, mapping, as_json)


@pytest.mark.slow
@settings(max_examples=4000, **SETTINGS)
@given(**CAPTURE_CASES)
def test_hostile_captures_x10(captures, cap, channel, mapping, as_json):
    capture_case(cap, channel, mapping, as_json)
