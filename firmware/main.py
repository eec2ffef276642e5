"""Firmware entry point (deployed as /main.py): safe state first, then the controller loop.

The HAL constructor drives every output idle and starts the watchdog before anything else runs, so
power-on, a crash and a watchdog reset all land in the same safe state: outputs idle, nothing armed.

Back to the REPL (``picostim flash``, docs/HARDWARE.md "Re-flashing"). The firmware switches Ctrl-C
off, so mpremote cannot break in; two ways hand the USB port back to the MicroPython REPL, both only
while every channel is idle (nothing armed, running or draining):

* the REPL request (protocol/messages.py ``REPL``), which ``picostim flash`` sends first;
* BOOTSEL pressed during the boot window: the ``BOOTSEL_WINDOW_MS`` after the BOOT event (i.e. after
  the HAL constructor has made every output safe and started the watchdog), sampled every
  ``BOOTSEL_POLL_MS`` with ``rp2.bootsel_button()``. Holding BOOTSEL while plugging in does not work
  for this: the RP2040's ROM then starts its USB bootloader and main.py never runs. The host link is
  served during the window as always.

Handback (``hand_back``): the ACK is sent (bounded wait), the outputs are already idle (the request
is refused otherwise), the hardware watchdog is stopped, Ctrl-C is switched back on
(``micropython.kbd_intr(3)``) and ``run()`` returns, so main.py ends at the REPL. The watchdog must
be stopped because MicroPython's rp2 ``machine.WDT`` has no deinit (``ports/rp2/machine_wdt.c`` calls
pico-sdk ``watchdog_enable`` and only ever feeds it) and a soft reset does not touch it
(``ports/rp2/main.c``): left running, it would reset the board 2 s into the REPL session and
main.py would take the port again. The HAL's ``WDT`` is therefore stopped the way pico-sdk's
``watchdog_disable()`` does it: clear WATCHDOG CTRL.ENABLE (bit 30) through the register's atomic
clear alias (RP2040 datasheet 4.7.6 / 2.1.2). The next main.py run (Ctrl-D at the friendly REPL,
or a reset) constructs the HAL, whose ``machine.WDT`` re-enables it.
"""

if __name__ == "__main__":  # the board: Ctrl-C off before anything else (the imports take ~0.5 s),
    try:  # or a 0x03 in a host frame sent while the board boots raises KeyboardInterrupt (found whole-chip)
        import micropython

        micropython.kbd_intr(-1)
    except (ImportError, AttributeError):
        pass

import time  # ticks_ms/ticks_diff/sleep_ms: MicroPython (main.py runs only there; CPython imports constants)

from firmware import storage
from firmware.controller import Controller
from firmware.crash import recover, reset_chip, safe_state
from firmware.transport import PUMP_IDLE_MAX_BYTES, PUMP_MAX_BYTES, UsbCdc
from protocol import messages as M

PARAMS_DIR = "/params"  # parameter slots on the board's littlefs (firmware/storage.py)
SEQUENCE_DIR = "/seq"  # custom sequences' records, one file per channel (firmware/sequence.py)
BOOTSEL_WINDOW_MS = 2000  # BOOTSEL pressed within this long after the BOOT event: back to the REPL
BOOTSEL_POLL_MS = 20  # bootsel_button() sampling period in the window (each read: ~10 us, IRQs off)
HANDBACK_DRAIN_MS = 200  # longest wait for the REPL request's ACK to leave before the handback
WATCHDOG_CTRL_CLR = 0x40058000 + 0x3000  # WATCHDOG_BASE + CTRL (0x000), atomic clear alias
WATCHDOG_CTRL_ENABLE = 1 << 30


def run(hal=None, link=None, loops=-1, params_dir=PARAMS_DIR, bootsel=None, sequence_dir=SEQUENCE_DIR):
    """Serve the host until the port is handed back to the REPL (or for ``loops`` iterations, for
    tests). ``bootsel``: a callable reading the BOOTSEL button (default ``rp2.bootsel_button`` when it
    exists). Returns why it stopped: "repl" (REPL request), "bootsel" (boot window) or None."""
    if hal is None:
        from firmware.hal_rp2 import Rp2Hal

        hal = Rp2Hal()
    if link is None:
        link = UsbCdc()
    if bootsel is None:
        bootsel = bootsel_reader()
    store = storage.Store(storage.OsFiles(params_dir))

    made: list = []

    def make():
        # sequences: the directory (firmware/sequence.py is imported when a sequence is first set), or
        # the store the crashed controller built: its records' open handles are closed by the next upload
        seqs = made[-1]._sequences if made else sequence_dir
        del made[:]
        made.append(Controller(hal, link.write, storage=store, sequences=seqs))
        return made[0]

    controller = make()
    controller.boot()
    pump = getattr(link, "pump", None)
    pending = getattr(link, "pending", None)
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    t_boot = ticks_ms()
    window = bootsel is not None  # open until BOOTSEL_WINDOW_MS after the BOOT event
    t_sample = t_boot
    try:
        while loops != 0:
            loops -= 1
            try:
                data = link.read(0 if pending is not None and pending() else 1)  # no wait with output queued
                if data:
                    controller.receive(data)
                controller.poll()
                if pump is not None:  # a train needs the loop back within the feeder's lookahead
                    st = controller.state
                    pump(PUMP_MAX_BYTES if M.ST_RUNNING in st or M.ST_ARMED in st else PUMP_IDLE_MAX_BYTES)
                if controller.handback:
                    hand_back(hal, link, "REPL request")
                    return "repl"
                if window:
                    now = ticks_ms()
                    if ticks_diff(now, t_boot) >= BOOTSEL_WINDOW_MS:
                        window = False
                    elif ticks_diff(now, t_sample) >= BOOTSEL_POLL_MS:
                        t_sample = now
                        if bootsel() and controller.busy_channel() is None:
                            hand_back(hal, link, "BOOTSEL pressed in the boot window")
                            return "bootsel"
            except Exception as exc:  # noqa: BLE001 - the crash path: every exception, whatever it is
                controller = recover(hal, controller, exc, make)
    except BaseException:  # the crash path itself failed, or Ctrl-C/SystemExit: outputs safe, then up
        safe_state(hal)
        raise
    return None


def bootsel_reader():
    """``rp2.bootsel_button`` (MicroPython >= 1.20 on an RP2040), else None."""
    try:
        import rp2

        return rp2.bootsel_button
    except (ImportError, AttributeError):
        return None


def stop_watchdog():
    """Stop the RP2040 hardware watchdog (pico-sdk ``watchdog_disable``: clear CTRL.ENABLE through the
    atomic clear alias). False where there is no ``machine.mem32`` (CPython)."""
    try:
        import machine
    except ImportError:
        return False
    mem32 = getattr(machine, "mem32", None)
    if mem32 is None:
        return False
    mem32[WATCHDOG_CTRL_CLR] = WATCHDOG_CTRL_ENABLE
    return True


def hand_back(hal, link, why):
    """Give the USB port back to the REPL. Called only with every channel idle (outputs already in
    the safe state: SMs stopped, pins low, DACs shut down); the HAL's ``safe_state()`` runs as well
    when it has one. Order: the ACK out (bounded, feeding the watchdog), safe state, watchdog off,
    Ctrl-C on, a line for whoever reads the REPL."""
    drain = getattr(link, "drain", None)
    if drain is not None:
        def idle():
            hal.feed_watchdog()
            time.sleep_ms(1)

        drain(HANDBACK_DRAIN_MS, idle)
    hal.feed_watchdog()
    safe = getattr(hal, "safe_state", None)
    if safe is not None:
        safe()
    stop_watchdog()
    release = getattr(link, "release", None)
    if release is not None:
        release()
    print("picostim: %s: firmware stopped, outputs idle, watchdog off; REPL (Ctrl-D restarts picostim)" % why)


if __name__ == "__main__":
    try:
        run()
    except BaseException:  # noqa: BLE001 - run() already tried the safe state
        reset_chip()
        raise
