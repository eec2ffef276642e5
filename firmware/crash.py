"""The crash path (SPEC §6, docs/SAFETY.md §7), shared by firmware/main.py and the virtual Pico.

Any exception that escapes the controller in the main loop: the HAL's ``safe_state()`` (every
stream stopped at its next pulse boundary, a bounded wait for it to drain, then state machines
halted with pins idle, DMA aborted, DACs shut down), then a fresh controller serves the host and
reports the crash (boot reason M.RESET_CRASH, a crash EVENT with the exception's class and where it
was raised, both kept in the event log; STATUS counter ``crashes``). If the safe state itself
fails, the chip is reset (``reset_chip``). Pure: runs on CPython and MicroPython.
"""

from protocol import messages as M


def safe_state(hal):
    """``hal.safe_state()``: every stream stopped at its next pulse boundary, a bounded wait for it
    to drain, then SMs halted with pins idle, DMA aborted, DACs shut down (docs/SAFETY.md §7).
    True when it completed (whether or not a stream ran out of the wait), False when it raised."""
    try:
        hal.safe_state()
        return True
    except Exception:  # noqa: BLE001
        return False


def recover(hal, old, exc, make):
    """The crash path (SPEC §6, docs/SAFETY.md §7): an exception escaped the controller (``old``).
    Outputs go to the safe state first; then a fresh controller (``make()``: nothing configured,
    nothing armed) serves the host, announcing boot reason M.RESET_CRASH and a crash EVENT (the
    exception's class and where it was raised: the request type, the link, the poll or the loop),
    both kept first in its event log; STATUS counts the crashes. Uptime carries on. Raises (the
    caller then resets the chip) when the safe state itself fails."""
    where = getattr(old, "where", M.CRASH_LOOP)
    name = type(exc).__name__
    if not safe_state(hal):
        raise exc
    crashes = getattr(old, "crashes", 0) + 1
    uptime = getattr(old, "_uptime", None)
    old = None  # the old controller's memory is garbage now (a MemoryError may have brought us here)
    try:
        import gc

        gc.collect()
    except ImportError:
        pass
    controller = make()
    controller.boot(crashes, (name, where), uptime)
    return controller


def reset_chip():
    """Last resort when even the crash path failed: an immediate chip reset (``machine.reset()``:
    PIO and DMA reset, pads back to their reset state); the firmware boots again (reason: watchdog)."""
    try:
        import machine
    except ImportError:  # CPython: nothing to reset
        return
    machine.reset()
