"""The virtual Pico: the real firmware controller on CPython, a simulated HAL, served on a pty.

The host talks to it exactly as to a board: through a pseudo-terminal, with pyserial, byte for byte
the same frames. Virtual time is PIO cycles. In ``realtime`` mode (``picostim virtual``) the emulation
follows the wall clock; otherwise time only moves when :meth:`VirtualPico.advance` is called, which
makes runs and tests deterministic and faster than real time.

Either way the emulation runs in steps that end where the firmware's main loop would run
(:meth:`SimHal.next_poll_cycle`: just after each phase-1 electrode reading, plus the modelled
reaction time), and the controller polls at each step, so a fault stops the channel when the board
would. Electrodes and injected faults: ``VirtualPico(electrodes=[Electrode(...), ...])`` (see
:mod:`picostim.virtual.electrode`).
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import tempfile
import threading
import time
import tty

from firmware import sequence, storage
from firmware.controller import Controller
from firmware.dma_chain import WDT_TIMEOUT_MS
from firmware.crash import recover
from picostim.virtual.sim_hal import SimHal


MAX_STEP_S = 0.02  # real-time mode: longest stretch of virtual time emulated between two link reads
# Longest stretch of virtual time without a controller poll. The board's main loop polls every few
# ms (the 2 s watchdog enforces it); the firmware relies on that for its tick arithmetic (a poll at
# least once per 2**29 us: ticks_diff range, the uptime's wrap count) and the deadman.
MAX_POLL_GAP_S = 0.25


class VirtualPico:
    """A virtual board on a pty. Use as a context manager or call :meth:`open` / :meth:`close`."""

    def __init__(self, channels: int = 4, realtime: bool = False, flash_dir: str | None = None,
                 watchdog_ms: int | None = None, **hal_options):
        """``flash_dir``: the board's flash (parameter slots; default a fresh temp dir). ``watchdog_ms``:
        machine.WDT model in wall time (0 off; default the board's WDT_TIMEOUT_MS in realtime mode,
        off otherwise, where tests hold the emulation for long stretches). ``hal_options`` go to
        :class:`SimHal`, e.g. ``ticks0_us=2**30 - 5_000_000``: the board's ``ticks_us()`` at boot,
        so a run crosses the 2**30 us tick wrap 5 s in (the firmware's 32-bit time arithmetic)."""
        self._channels = channels
        self._hal_options = hal_options
        self.hal = SimHal(channels=channels, **hal_options)
        self.realtime = realtime
        self._own_flash = flash_dir is None  # a temp dir of ours: removed by close()
        self.flash_dir = flash_dir or tempfile.mkdtemp(prefix="picostim-flash-")
        self.storage = storage.Store(storage.OsFiles(self.flash_dir))
        self.sequences = sequence.FileStore(self.flash_dir + "/seq")  # as firmware/main.py: records in flash
        self.watchdog_ms = (WDT_TIMEOUT_MS if realtime else 0) if watchdog_ms is None else watchdog_ms
        self.resets = 0  # watchdog resets so far
        self._generation = 0
        self._fed = time.monotonic()
        self._watch(self.hal)
        self.lock = threading.RLock()
        self._master = -1
        self._slave = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.tx_dropped = 0
        self.controller = self._make_controller()
        self.crashes: list[BaseException] = []  # exceptions the crash path caught (firmware/main.py)
        self.path = ""

    # ---- lifecycle ----------------------------------------------------------------------------
    def open(self) -> str:
        """Create the pty, start serving in a background thread, return the device path."""
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.controller.boot()
        self._thread = threading.Thread(target=self._serve, name="virtual-pico", daemon=True)
        self._thread.start()
        if self.watchdog_ms:
            threading.Thread(target=self._watchdog, name="virtual-pico-wdt", daemon=True).start()
        return self.path

    # ---- watchdog (machine.WDT) ---------------------------------------------------------------
    def _watch(self, hal: SimHal) -> None:
        """Note the wall time of every feed_watchdog() of the current board."""
        feed = hal.feed_watchdog

        def fed() -> None:
            if hal is self.hal:
                self._fed = time.monotonic()
            feed()

        hal.feed_watchdog = fed  # type: ignore[method-assign]

    def _watchdog(self) -> None:
        while not self._stop.wait(0.02):
            if time.monotonic() - self._fed > self.watchdog_ms / 1000:
                self.watchdog_reset()

    def watchdog_reset(self) -> None:
        """What the RP2040 does when the watchdog expires: the whole chip resets (PIO stopped, outputs
        idle), the firmware boots again with reset_reason 1 (watchdog), nothing armed, and announces
        it with a boot EVENT. The flash (parameter slots) and the pty survive. The stalled serving
        thread is abandoned with its lock; a fresh one serves the new controller."""
        self._generation += 1
        self.resets += 1
        self.lock = threading.RLock()
        options = dict(self._hal_options, reset_reason=1)
        self.hal = SimHal(channels=self._channels, **options)
        self._watch(self.hal)
        self.controller = self._make_controller()
        self._fed = time.monotonic()
        self.controller.boot()
        self._thread = threading.Thread(target=self._serve, name="virtual-pico", daemon=True)
        self._thread.start()

    # ---- the crash path (firmware/main.py) ----------------------------------------------------
    def _make_controller(self) -> Controller:
        return Controller(self.hal, self._send, storage=self.storage, sequences=self.sequences)

    def _guarded(self, call, *args) -> None:
        """Run a controller entry point as firmware/main.py's loop does: an exception takes the crash
        path (safe state, fresh controller, crash report); if even that fails, the chip resets."""
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - the firmware's crash path catches everything
            self.crashes.append(exc)
            try:
                self.controller = recover(self.hal, self.controller, exc, self._make_controller)
            except Exception:  # noqa: BLE001 - machine.reset() on the board
                self.watchdog_reset()

    def stall_controller(self) -> None:
        """Fault injection: the controller's next poll() never returns (a firmware hang); only the
        watchdog brings the board back."""
        def hang() -> None:
            threading.Event().wait()  # for good: the abandoned (daemon) thread never touches the new board

        self.controller.poll = hang  # type: ignore[method-assign]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        if self._own_flash:  # the board's flash lives as long as the board (pass flash_dir= to keep it)
            shutil.rmtree(self.flash_dir, ignore_errors=True)

    def __enter__(self) -> VirtualPico:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- time ---------------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Run the emulated hardware ``seconds`` of virtual time, the firmware polling wherever its
        main loop would (see :meth:`run_until`)."""
        with self.lock:
            self.run_until(self.hal.system.now + round(seconds * self.hal.clock_hz))

    def run_until(self, cycle: int) -> None:
        """Emulate up to ``cycle``, stopping to let the controller poll at every point the HAL asks
        for (after each phase-1 reading of a running channel), then poll once more at the end."""
        with self.lock:
            system = self.hal.system
            gap = round(MAX_POLL_GAP_S * self.hal.clock_hz)
            while system.now < cycle:
                nxt = self.hal.next_poll_cycle()
                step = min(cycle, system.now + gap) if nxt is None else min(cycle, nxt, system.now + gap)
                system.run_until(step)
                if step < cycle:
                    self._guarded(self.controller.poll)
            self._guarded(self.controller.poll)

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
        generation = self._generation
        while not self._stop.is_set() and generation == self._generation:
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
                    self._guarded(self.controller.receive, data)
                if self.realtime:
                    # At most MAX_STEP_S of emulation per loop: if the emulator falls behind the wall
                    # clock (a heavily loaded host), virtual time lags instead of each step growing
                    # until the link is not read for seconds.
                    now = time.monotonic()
                    step = min(now - last, MAX_STEP_S)
                    self.run_until(self.hal.system.now + round(step * self.hal.clock_hz))
                    last = now
                else:
                    self._guarded(self.controller.poll)
