"""MicroPython-faithful ``time`` for the unix port: rp2 tick width and argument checks.

The unix port's ticks come from a 64-bit counter (period 2**62): they never wrap and its
``ticks_diff`` accepts any int. On the board (rp2 port) ``ticks_us()`` wraps at 2**30 and
``ticks_diff``/``ticks_add`` silently misbehave on arguments that are not small tick values. This
shim (first on MICROPYPATH, it shadows the built-in ``time``; everything else comes from the
built-in, reachable as ``utime``) gives:

* ``ticks_us()`` = the port's monotonic µs + an offset, modulo 2**30; the offset starts the clock
  at ``PICOSTIM_SHIM_TICKS0`` (environment, read once at import; default 0), e.g. 2**30 - 5e6 for
  a run that crosses the wrap 5 s after boot. ``ticks_ms()`` wraps the same way.
* ``ticks_add``/``ticks_diff`` = firmware/ticks.py's model, which raises on a non-tick argument
  or a delta beyond +-2**29 (the board would return garbage).
* ``set_ticks_us(t)``: jump the clock (tests), ``advance_us(n)``: move it forward without waiting.
"""

import sys as _sys
import firmware.ticks  # noqa: F401 - may be importing us right now (circular): take it from sys.modules
from utime import *  # noqa: F401,F403 - sleep, sleep_ms, sleep_us, time, localtime, ...
import utime as _b

_model = _sys.modules["firmware.ticks"]

try:
    import os as _os

    _T0 = int(_os.getenv("PICOSTIM_SHIM_TICKS0") or 0)
except (ImportError, AttributeError, ValueError):
    _T0 = 0

TICKS_PERIOD = _model.PERIOD
_offset = [(_T0 - _b.ticks_us()) % _model.PERIOD]

ticks_add = _model.model_ticks_add
ticks_diff = _model.model_ticks_diff


def ticks_us():
    return (_b.ticks_us() + _offset[0]) & _model.MASK


def ticks_ms():
    return ((_b.ticks_us() + _offset[0]) // 1000) & _model.MASK


def ticks_cpu():
    return ticks_us()


def set_ticks_us(t):
    _offset[0] = (_model.check(t) - _b.ticks_us()) % _model.PERIOD


def advance_us(n):
    _offset[0] = (_offset[0] + n) % _model.PERIOD
