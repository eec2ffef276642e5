"""Firmware entry point (deployed as /main.py): safe state first, then the controller loop.

The HAL constructor drives every output idle and starts the watchdog before anything else runs, so
power-on, a crash and a watchdog reset all land in the same safe state: outputs idle, nothing armed.
"""

from firmware import storage
from firmware.controller import Controller
from firmware.crash import recover, reset_chip, safe_state
from firmware.transport import UsbCdc
from protocol import messages as M


PARAMS_DIR = "/params"  # parameter slots on the board's littlefs (firmware/storage.py)


def run(hal=None, link=None, loops=-1, params_dir=PARAMS_DIR):
    """Serve the host forever (or ``loops`` iterations, for tests)."""
    if hal is None:
        from firmware.hal_rp2 import Rp2Hal

        hal = Rp2Hal()
    if link is None:
        link = UsbCdc()
    store = storage.Store(storage.OsFiles(params_dir))

    def make():
        return Controller(hal, link.write, storage=store)

    controller = make()
    controller.boot()
    try:
        while loops != 0:
            loops -= 1
            try:
                data = link.read(1)
                if data:
                    controller.receive(data)
                controller.poll()
            except Exception as exc:  # noqa: BLE001 - the crash path: every exception, whatever it is
                controller = recover(hal, controller, exc, make)
    except BaseException:  # the crash path itself failed, or Ctrl-C/SystemExit: outputs safe, then up
        safe_state(hal)
        raise


def maintenance_requested():
    """BOOTSEL held at power-up: do not start the firmware, stay at the REPL with Ctrl-C enabled so
    `picostim flash` (mpremote) can replace the files. Outputs stay high-impedance (board pull-downs)."""
    try:
        import rp2

        return bool(rp2.bootsel_button())
    except (ImportError, AttributeError):  # not on an RP2040
        return False


if __name__ == "__main__":
    if maintenance_requested():
        print("picostim: BOOTSEL held at boot: firmware not started, REPL available for maintenance")
    else:
        try:
            run()
        except BaseException:  # noqa: BLE001 - run() already tried the safe state
            reset_chip()
            raise
