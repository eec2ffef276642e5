"""firmware/ and protocol/ type-check against the MicroPython rp2 stubs (tools/typecheck.py).

The stubs are installed into typings/ on first use; the tests skip (with the reason) only if that
installation fails, e.g. offline without a pip cache. A probe file proves the MicroPython stubs are
really the ones in effect (``time.ticks_ms`` exists, ``machine.Pin`` has no made-up methods).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_tool():
    spec = importlib.util.spec_from_file_location("typecheck", ROOT / "tools" / "typecheck.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tc = _load_tool()


@pytest.fixture(scope="module")
def stubs():
    pytest.importorskip("mypy")
    if not tc.install_stubs(quiet=True):
        pytest.skip("could not install %s into typings/ (offline?)" % " ".join(tc.STUBS))


def _mypy(*paths):
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(tc.MYPY_INI)] + [str(p) for p in paths],
                          cwd=ROOT, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_stubs_in_effect(stubs, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import time\nimport machine\nimport rp2\n"
                     "t = time.ticks_ms()\n"  # MicroPython-only API: fine with the stubs
                     "rp2.PIO(0).state_machine(0)\n"
                     "machine.Pin(1).no_such_method()\n")  # must be reported
    rc, out = _mypy(probe)
    assert rc == 1, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "probe.py:6" in errors[0] and "no_such_method" in errors[0], out


def test_protocol_typechecks(stubs):
    rc, out = _mypy("protocol")
    assert rc == 0, "mypy (MicroPython stubs) on protocol/:\n" + out


def test_firmware_typechecks(stubs):
    rc, out = _mypy("firmware")
    assert rc == 0, "mypy (MicroPython stubs) on firmware/:\n" + out


def test_typecheck_tool_exit_status(stubs):
    """The CLI (what `make typecheck` runs) agrees with mypy's verdict on firmware/ + protocol/."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "typecheck.py"), "-q"], cwd=ROOT,
                          capture_output=True, text=True)
    rc, _ = _mypy("firmware", "protocol")
    assert proc.returncode == (0 if rc == 0 else 1), proc.stdout + proc.stderr


def test_pyright_protocol(stubs):
    exe = Path(sys.executable).parent / "pyright"
    if not exe.exists():
        pytest.skip("pyright not installed")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "typecheck.py"), "-q", "--pyright", "protocol"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
