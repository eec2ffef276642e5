"""``picostim flash``: build the firmware with mpy-cross, deploy it with mpremote, verify over the protocol.

Steps (``flash(port)``):

0. handback  the firmware switches Ctrl-C off (``micropython.kbd_intr(-1)``, so 0x03 inside a binary
           frame cannot stop it), hence mpremote cannot break into a board that runs picostim. ``flash``
           first asks it over the protocol: HELLO, then the REPL request; the firmware ACKs, stops its
           watchdog, turns Ctrl-C back on and returns to the MicroPython REPL (firmware/main.py). It is
           refused while any channel is armed or running (``FlashError`` naming the channel: stop it
           first). Nothing answering HELLO means no picostim runs there (a fresh MicroPython board at
           its REPL): mpremote goes ahead. A firmware that predates the REPL request answers "unknown
           message type": docs/HARDWARE.md (Re-flashing) says how to get that board back.
1. build   ``tools/build_firmware.py`` with ``-march=armv6m`` into ``build/firmware``
           (``firmware/*.mpy``, ``protocol/*.mpy``, ``main.py``); fails on syntax MicroPython rejects.
2. deploy  one mpremote invocation (one raw-REPL session)::

               mpremote connect PORT exec CLEAN + fs cp -r TREE/firmware TREE/protocol : \\
                   + fs cp TREE/main.py :main.py + soft-reset

           CLEAN first checks that the board's MicroPython loads this build's .mpy version
           (``sys.implementation._mpy``) and raises otherwise, so mpremote stops before anything
           changes; then it removes ``/main.py``, ``/firmware`` and ``/protocol`` first (MicroPython imports a
           stale ``x.py`` in preference to a new ``x.mpy``; other files, e.g. saved parameter slots,
           stay). ``main.py`` is copied last, so an interrupted deploy boots to the REPL, not to a
           half-copied firmware.
3. verify  mpremote leaves the board at the friendly REPL, where a soft reset does not run main.py;
           ``verify`` sends Ctrl-D (soft reboot: boot.py, then main.py) and asks the firmware for
           HELLO over the picostim protocol: the protocol version must be this host's, the firmware
           version this build's (``firmware.controller.FIRMWARE_VERSION``).

``dry_run`` touches no board: it prints the handback step, the exact mpremote command lines and the
verify step. Prerequisite (once per board): the official MicroPython UF2 (docs/HARDWARE.md).
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TREE = ROOT / "build" / "firmware"
BOARD_MARCH = "armv6m"
SOFT_REBOOT = b"\x03\x04\x00"  # Ctrl-C (REPL: fresh line), Ctrl-D (soft reboot), 0x00 (frame delimiter)

# Run on the board by ``mpremote exec`` before the copy: remove what an earlier deploy left.
CLEAN_CODE = """import os
def rm(p):
    try:
        m = os.stat(p)[0]
    except OSError:
        return
    if m & 0x4000:
        for n in os.listdir(p):
            rm(p + "/" + n)
        os.rmdir(p)
    else:
        os.remove(p)
for p in ("{root}main.py", "{root}firmware", "{root}protocol"):
    rm(p)
"""


# Run first in the same ``mpremote exec``: a board whose MicroPython cannot load this build's .mpy
# files (another .mpy version, e.g. the v1.22 image with a v1.23+ mpy-cross) is refused before
# anything is removed. A raised exception makes mpremote exit 1 and skip the rest of the chain.
MPY_GUARD_CODE = """import sys
m = getattr(sys.implementation, "_mpy", 0)
if m & 0xFF != {ver} or {native} and (m >> 8) & 3 != {sub}:
    raise ValueError("picostim: this MicroPython loads .mpy v%d.%d, the build is v{ver}.{sub}: flash the "
                     "MicroPython image or the mpy-cross version that matches (docs/HARDWARE.md)" % (m & 0xFF, (m >> 8) & 3))
"""


def mpy_version(tree):
    """(version, sub-version, native) of the .mpy files in a built tree; None when it holds none.

    Header: b"M", version, flags (sub-version in bits 0-1, native architecture above). MicroPython
    refuses a file of another version, and one with native code (the viper CRC) of another
    sub-version; bytecode-only files carry sub-version 0 and load on every sub-version."""
    found = None
    for f in sorted(Path(tree).glob("*/*.mpy")):
        head = f.read_bytes()[:3]
        if len(head) < 3 or head[:1] != b"M":
            continue
        if head[2] >> 2:
            return head[1], head[2] & 3, True
        found = (head[1], head[2] & 3, False)
    return found


def mpy_guard_code(tree):
    """The guard for ``tree`` (empty for a tree of sources, which load on every version)."""
    version = mpy_version(tree)
    if version is None:
        return ""
    ver, sub, native = version
    return MPY_GUARD_CODE.format(ver=ver, sub=sub, native=native)


class FlashError(RuntimeError):
    """Build, deploy or verification failed."""


# Bytes that mean something to MicroPython's friendly REPL: Ctrl-B (friendly REPL), Ctrl-C
# (interrupt), Ctrl-D (soft reboot: would start main.py, i.e. picostim), Ctrl-E (paste mode).
_REPL_CONTROL = frozenset((0x02, 0x03, 0x04, 0x05))


def probe_seq(msg_type, body=b""):
    """A sequence number whose frame for ``msg_type`` contains no REPL control byte: the HELLO probe
    may land on a board that is already at its REPL, where a 0x04 would soft-reboot into main.py."""
    from protocol.framing import encode_frame

    for seq in range(1, 0x10000):
        if not _REPL_CONTROL.intersection(encode_frame(msg_type, seq, body)):
            return seq
    raise AssertionError("no clean sequence number")  # pragma: no cover - there are thousands


def hand_back(port, timeout=1.0, out=None):
    """Ask the picostim firmware on ``port`` to hand the USB port back to the MicroPython REPL.

    Returns the firmware's HELLO (dict) when it did, None when nothing answered HELLO (no picostim
    there: assume the REPL has the port). Raises FlashError when the board refuses (a channel is
    armed or running), predates the REPL request, or the port cannot be opened."""
    from picostim import transport
    from picostim.client import Client, DeviceError, LinkError
    from protocol import messages as M

    out = out or sys.stdout
    try:
        ser = transport.open_port(port)
    except transport.TransportError as e:
        raise FlashError("cannot open %s: %s" % (port, e)) from e
    # HELLO is sent twice at most; its seq is chosen so that neither copy holds a REPL control byte.
    client = Client(ser, timeout=timeout, retries=1, seq=probe_seq(M.HELLO) - 1)
    try:
        try:
            info = client.hello()
        except LinkError:
            print("no picostim answer on %s: assuming the MicroPython REPL has the port" % port, file=out)
            return None
        try:
            client.repl()
        except DeviceError as e:
            if e.code == M.E_UNKNOWN_TYPE:
                raise FlashError("the board runs picostim firmware %s, which has no REPL request: get it back "
                                 "to the REPL as docs/HARDWARE.md (Re-flashing) describes, then flash again"
                                 % info["firmware_version"]) from e
            raise FlashError("the board keeps the port: %s" % e) from e
        except LinkError:
            print("no answer to the REPL request on %s (the firmware may have handed the port back anyway); "
                  "trying mpremote" % port, file=out)
            return info
        print("picostim %s on %s handed the port back to the MicroPython REPL" % (info["firmware_version"], port),
              file=out)
        return info
    finally:
        client.close()


def clean_code(root="/"):
    return CLEAN_CODE.format(root=root)


def mpremote_command():
    """How to run mpremote: the script next to this Python (the venv), else on PATH, else -m."""
    cand = Path(sys.executable).parent / "mpremote"
    if cand.exists():
        return [str(cand)]
    found = shutil.which("mpremote")
    return [found] if found else [sys.executable, "-m", "mpremote"]


def _build_tool():
    path = ROOT / "tools" / "build_firmware.py"
    if not path.exists():
        raise FlashError("%s not found: picostim flash needs a picostim source checkout" % path)
    spec = importlib.util.spec_from_file_location("picostim_build_firmware", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def build(out=DEFAULT_TREE, quiet=True):
    """mpy-cross the firmware for the RP2040 into ``out``; returns ``out``."""
    try:
        _build_tool().build(Path(out), BOARD_MARCH, quiet=quiet)
    except SystemExit as e:
        if e.code not in (0, None):
            raise FlashError("firmware build failed (mpy-cross rejected a module, see above)") from e
    out = Path(out)
    if not (out / "main.py").is_file():
        raise FlashError("build produced no main.py in %s" % out)
    return out


def deploy_commands(port, tree=DEFAULT_TREE, mpremote=None):
    """The mpremote command line(s) that deploy ``tree`` to the board on ``port`` (list of argv lists)."""
    exe = list(mpremote or mpremote_command())
    t = Path(tree)
    return [exe + ["connect", port,
                   "exec", mpy_guard_code(t) + clean_code(), "+",
                   "fs", "cp", "-r", str(t / "firmware"), str(t / "protocol"), ":", "+",
                   "fs", "cp", str(t / "main.py"), ":main.py", "+",
                   "soft-reset"]]


def format_command(argv):
    return " ".join(shlex.quote(a) for a in argv)


def verify(port, timeout=1.0, retries=8, reboot=True, expect_firmware=None):
    """Ask the board on ``port`` for HELLO over the protocol; returns the decoded HELLO.

    ``reboot`` first sends Ctrl-D (soft reboot at the friendly REPL, which runs main.py; to a running
    firmware these bytes are garbage it counts and drops). Raises FlashError if nothing answers or
    the versions are not this host's / this build's."""
    from picostim import transport
    from picostim.client import Client, LinkError
    from protocol.framing import PROTOCOL_VERSION

    if expect_firmware is None:
        from firmware.controller import FIRMWARE_VERSION

        expect_firmware = "%d.%d.%d" % tuple(FIRMWARE_VERSION)
    deadline = time.monotonic() + max(5.0, timeout * (retries + 1))
    while True:  # after a reset the USB port may take a moment to (re)appear
        try:
            ser = transport.open_port(port)
            break
        except transport.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    client = Client(ser, timeout=timeout, retries=retries)
    try:
        if reboot:
            ser.write(SOFT_REBOOT)
            ser.flush()
            time.sleep(0.05)
        try:
            info = client.hello()
        except LinkError as e:
            raise FlashError("no picostim answer on %s after deploying: %s" % (port, e)) from e
    finally:
        client.close()
    if info["protocol_version"] != PROTOCOL_VERSION:
        raise FlashError("the board speaks protocol %d, this host %d" % (info["protocol_version"], PROTOCOL_VERSION))
    if info["firmware_version"] != expect_firmware:
        raise FlashError("the board reports firmware %s, this build is %s" % (info["firmware_version"],
                                                                              expect_firmware))
    return info


def flash(port, tree=DEFAULT_TREE, dry_run=False, skip_build=False, mpremote=None, out=None, verify_port=None,
          run=subprocess.run):
    """Build, hand the port back to the REPL, deploy and verify. ``out`` (a text stream) gets progress
    and, with ``dry_run``, the steps and command lines. Returns the HELLO dict (None for a dry run)."""
    out = out or sys.stdout
    tree = Path(tree)
    if not skip_build:
        build(tree)
        print("built %s (mpy-cross -march=%s)" % (tree, BOARD_MARCH), file=out)
    cmds = deploy_commands(port, tree, mpremote)
    if dry_run:
        print("# first: HELLO, then the REPL request over the picostim protocol on %s (a running picostim "
              "hands the port back to the MicroPython REPL; refused while a channel is armed or running)" % port,
              file=out)
        for c in cmds:
            print(format_command(c), file=out)
        print("# then: soft reboot (Ctrl-D) and HELLO over the picostim protocol on %s" % port, file=out)
        return None
    hand_back(port, out=out)
    for c in cmds:
        print("$ " + format_command(c), file=out, flush=True)
        proc = run(c)
        if proc.returncode != 0:
            raise FlashError("mpremote failed (exit %d): see its message above (an .mpy version mismatch is "
                             "refused before anything on the board changes); if the board runs picostim and "
                             "ignored the REPL request, see docs/HARDWARE.md (Re-flashing)" % proc.returncode)
    info = verify(verify_port or port)
    print("verified: firmware %s, protocol %d, board %s, %d channels"
          % (info["firmware_version"], info["protocol_version"], info["board_id"], info["channels"]), file=out)
    return info
