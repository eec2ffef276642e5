"""Tick arithmetic that is right on the 32-bit board, and the same code on CPython and MicroPython.

On the rp2 port ``time.ticks_us()`` wraps at ``PERIOD`` = 2**30 µs (MICROPY_PY_TIME_TICKS_PERIOD,
about 17.9 min) and every int >= 2**30 is a heap object; ``time.ticks_diff``/``ticks_add`` read
their tick arguments as small ints without checking (a big int or a negative value gives garbage,
no exception). So every tick difference and offset goes through :func:`ticks_diff` /
:func:`ticks_add`, and nothing else is done with raw tick values.

On MicroPython these are the port's own functions. On CPython (the virtual Pico, the tests) they
are :func:`model_ticks_add` / :func:`model_ticks_diff`: MicroPython's formulas with the rp2 period,
which *raise* where the board would silently misbehave (an argument that is not a tick value, a
delta outside +-PERIOD/2). tests/mpy/shims/time.py installs the same model under the MicroPython
unix port (whose own ticks never wrap: 64-bit period).

:class:`Uptime` extends the wrapping ticks to microseconds since boot for STATUS and EVENT times.
"""

PERIOD = 1 << 30  # the rp2 port's TICKS_PERIOD
HALF = 1 << 29
MASK = PERIOD - 1


def check(t):
    """``t`` if it is a tick value the rp2 port's ticks functions handle (an int in 0..PERIOD-1)."""
    if type(t) is not int or t < 0 or t > MASK:
        raise ValueError("not a ticks value (small int 0..2**30-1): %r" % (t,))
    return t


def model_ticks_diff(end, start):
    """MicroPython's ticks_diff (extmod/modtime.c) with the rp2 period, checking its arguments."""
    return ((check(end) - check(start) + HALF) & MASK) - HALF


def model_ticks_add(t, delta):
    """MicroPython's ticks_add: ``delta`` must be an int in (-PERIOD/2, PERIOD/2) (OverflowError)."""
    check(t)
    if type(delta) is not int or not -HALF < delta < HALF:
        raise OverflowError("ticks interval overflow: %r" % (delta,))
    return (t + delta) & MASK


try:
    from time import ticks_add, ticks_diff  # MicroPython (on the unix port: the shim's model)
except ImportError:  # CPython
    ticks_add = model_ticks_add
    ticks_diff = model_ticks_diff


class Uptime:
    """Microseconds since boot from a wrapping µs tick source (``read()`` -> 0..PERIOD-1).

    :meth:`update` must run at least once per PERIOD (the main loop's poll does, every few ms; the
    2 s watchdog guarantees it); it only compares and counts small ints, so it allocates nothing.
    :meth:`now_us` and :meth:`at_us` build the 64-bit value (a heap int after 17.9 min) and are
    for STATUS and EVENTs only. The origin is the tick value at construction, i.e. the board's
    ``ticks_us()`` at boot (µs since reset)."""

    def __init__(self, read):
        self._read = read
        self.last = read()
        self.wraps = 0

    def update(self):
        """Read the tick source, count a wrap; returns the tick value read."""
        t = self._read()
        if t < self.last:
            self.wraps += 1
        self.last = t
        return t

    def now_us(self):
        t = self.update()
        return self.wraps * PERIOD + t

    def at_us(self, t):
        """µs since boot of a tick value ``t`` within PERIOD/2 of now (e.g. a sample's time)."""
        return self.now_us() + ticks_diff(t, self.last)
