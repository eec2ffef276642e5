#!/usr/bin/env python3
"""Type-check firmware/ and protocol/ against the MicroPython rp2 stubs (SPEC §9).

    python tools/typecheck.py               # mypy (tools/mypy-firmware.ini) on firmware/ and protocol/
    python tools/typecheck.py protocol      # only some paths
    python tools/typecheck.py --pyright     # pyright instead (tools/pyrightconfig.firmware.json)
    python tools/typecheck.py --install-only

The stubs are installed on first use with ``pip install --no-deps --target typings`` (typings/ is
gitignored) and never into the venv: they ship ``time.pyi`` etc. that would shadow the host's
standard library. Exit status: 0 clean, 1 type errors, 2 stubs could not be installed.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPINGS = ROOT / "typings"
STUBS = ("micropython-rp2-rpi-pico-stubs==1.29.0.post1", "micropython-stdlib-stubs")
MYPY_INI = ROOT / "tools" / "mypy-firmware.ini"
PYRIGHT_JSON = ROOT / "tools" / "pyrightconfig.firmware.json"
DEFAULT_PATHS = ("firmware", "protocol")
EXIT_NO_STUBS = 2


def stubs_installed():
    return (TYPINGS / "rp2" / "__init__.pyi").is_file() and (TYPINGS / "stdlib" / "VERSIONS").is_file() \
        and any(TYPINGS.glob("micropython_rp2_rpi_pico_stubs-1.29.0.post1.dist-info"))


def install_stubs(quiet=False):
    """Install the stubs into typings/ if missing. Returns True when they are available."""
    if stubs_installed():
        return True
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--target", str(TYPINGS),
           "--disable-pip-version-check"] + (["-q"] if quiet else []) + list(STUBS)
    proc = subprocess.run(cmd, capture_output=quiet, text=True)
    if proc.returncode != 0:
        if quiet:
            sys.stderr.write(proc.stdout + proc.stderr)
        return False
    return stubs_installed()


def run_mypy(paths):
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(MYPY_INI)] + list(paths)
    return subprocess.run(cmd, cwd=ROOT).returncode


def run_pyright(paths):
    exe = Path(sys.executable).parent / "pyright"
    cmd = [str(exe) if exe.exists() else "pyright", "-p", str(PYRIGHT_JSON)] + [str(ROOT / p) for p in paths]
    return subprocess.run(cmd, cwd=ROOT).returncode


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", default=list(DEFAULT_PATHS))
    ap.add_argument("--pyright", action="store_true", help="use pyright instead of mypy")
    ap.add_argument("--install-only", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true", help="quiet stub installation")
    args = ap.parse_args(argv)
    if not install_stubs(args.quiet):
        sys.stderr.write("typecheck: could not install %s into %s\n" % (" ".join(STUBS), TYPINGS))
        return EXIT_NO_STUBS
    if args.install_only:
        return 0
    os.chdir(ROOT)
    rc = run_pyright(args.paths) if args.pyright else run_mypy(args.paths)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
