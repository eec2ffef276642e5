"""The virtual Pico: the real firmware controller on CPython, a simulated HAL, served on a pty.

The host talks to it exactly as to a board: through a pseudo-terminal, with pyserial, byte for byte
the same frames. Virtual time is PIO cycles. In ``realtime`` mode (``picostim virtual``) the emulation
follows the wall clock; otherwise time only moves when :meth:`VirtualPico.advance` is called, which
makes runs and tests deterministic and faster than real time.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import threading
import time
import tty

from firmware.controller import Controller
from picostim.virtual.sim_hal import SimHal
from protocol import messages as M


class VirtualPico:
    """A virtual board on a pty. Use as a context manager or call :meth:`open` / :meth:`close`."""

    def __init__(self, channels: int = 4, realtime: bool = False, **hal_options):
        self.hal = SimHal(channels=channels, **hal_options)
        self.realtime = realtime
        self.lock = threading.RLock()
        self._master = -1
        self._slave = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.tx_dropped = 0
        self.controller = Controller(self.hal, self._send)
        self.path = ""

    # ---- lifecycle ----------------------------------------------------------------------------
    def open(self) -> str:
        """Create the pty, start serving in a background thread, return the device path."""
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.controller.emit(M.EV_BOOT, 0, self.hal.reset_reason())
        self._thread = threading.Thread(target=self._serve, name="virtual-pico", daemon=True)
        self._thread.start()
        return self.path

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> VirtualPico:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- time ---------------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Run the emulated hardware ``seconds`` of virtual time, then let the firmware poll."""
        with self.lock:
            self.hal.advance_cycles(round(seconds * self.hal.clock_hz))
            self.controller.poll()

    # ---- serving ------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        """Write to the host; when nobody reads and the pty buffer is full, drop (like a USB CDC
        with no host attached) rather than stall the firmware."""
        try:
            os.write(self._master, data)
        except BlockingIOError:
            self.tx_dropped += len(data)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            self.tx_dropped += len(data)

    def _serve(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.002)
            data = b""
            if ready:
                try:
                    data = os.read(self._master, 4096)
                except (BlockingIOError, InterruptedError):
                    data = b""
                except OSError as exc:  # EIO: no process has the slave open right now
                    if exc.errno != errno.EIO:
                        raise
                    time.sleep(0.01)
            with self.lock:
                if data:
                    self.controller.receive(data)
                if self.realtime:
                    now = time.monotonic()
                    self.hal.advance_cycles(round((now - last) * self.hal.clock_hz))
                    last = now
                self.controller.poll()


def main(argv: list[str] | None = None) -> int:
    """Serve a real-time virtual Pico until Ctrl-C (``picostim virtual``)."""
    with VirtualPico(realtime=True) as vp:
        print(vp.path, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
