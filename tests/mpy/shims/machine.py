"""Minimal fake of MicroPython's ``machine`` module for running firmware code on the unix port.

Only what the firmware and its HAL need to import and run against fakes: Pin, ADC, SPI, WDT,
unique_id, mem32/mem16/mem8, freq, reset_cause, disable_irq/enable_irq, idle. Hardware effects are
recorded in ``LOG`` (a list of tuples) so tests can inspect them; ADC readings come from
``ADC_VALUES`` (dict: pin id -> value or list of values). This file shadows the unix port's built-in
``machine`` module when its directory is first on MICROPYPATH.

``PICOSTIM_SHIM_ADC_U16`` (environment, read once at import) is the reading of every ADC pin not
in ``ADC_VALUES``: host/picostim/virtual/micropython_board.py sets it to what a chosen electrode
impedance gives during the impedance test pulse, so ``firmware/main.py`` run unmodified passes its
electrode check. Unset: 0 (a short).
"""

try:
    import os as _os

    _ADC_DEFAULT = int(_os.getenv("PICOSTIM_SHIM_ADC_U16") or 0)
except (ImportError, AttributeError, ValueError):
    _ADC_DEFAULT = 0

LOG = []
ADC_VALUES = {}
UNIQUE_ID = b"\xe6\x61\x38\x52\x83\x4a\x2b\x2c"
_freq = [125_000_000]
_reset_cause = [1]

PWRON_RESET = 1
WDT_RESET = 3
HARD_RESET = 2
SOFT_RESET = 4
DEEPSLEEP_RESET = 5


def _pin_id(p):
    return p.id if isinstance(p, Pin) else p


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    ALT = 3
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8
    ALT_SPI = 1
    ALT_UART = 2
    ALT_I2C = 3
    ALT_PWM = 4
    ALT_SIO = 5
    ALT_PIO0 = 6
    ALT_PIO1 = 7

    def __init__(self, id, mode=-1, pull=-1, *, value=None, alt=-1):
        self.id = id
        self.mode = mode
        self.pull = pull
        self._value = 0
        self._irq = None
        if value is not None:
            self._value = 1 if value else 0
        LOG.append(("pin", id, mode, pull, self._value))

    def init(self, mode=-1, pull=-1, *, value=None, alt=-1):
        self.mode = mode
        self.pull = pull
        if value is not None:
            self._value = 1 if value else 0
        LOG.append(("pin", self.id, mode, pull, self._value))

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0
        LOG.append(("pin_value", self.id, self._value))

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    high = on
    low = off

    def toggle(self):
        self.value(1 - self._value)

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING, hard=False):
        self._irq = (handler, trigger, hard)
        return self._irq

    def __repr__(self):
        return "Pin(%d)" % self.id


class ADC:
    CORE_TEMP = 4

    def __init__(self, pin):
        self.id = _pin_id(pin)

    def read_u16(self):
        v = ADC_VALUES.get(self.id, _ADC_DEFAULT)
        if isinstance(v, list):
            v = v.pop(0) if len(v) > 1 else v[0]
        return v


class SPI:
    MSB = 0
    LSB = 1

    def __init__(self, id, baudrate=1_000_000, *, polarity=0, phase=0, bits=8, firstbit=0, sck=None, mosi=None,
                 miso=None):
        self.id = id
        self.baudrate = baudrate
        LOG.append(("spi_init", id, baudrate))

    def init(self, baudrate=1_000_000, **kw):
        self.baudrate = baudrate

    def deinit(self):
        pass

    def write(self, buf):
        LOG.append(("spi_write", self.id, bytes(buf)))

    def read(self, n, write=0):
        return bytes(n)

    def readinto(self, buf, write=0):
        for i in range(len(buf)):
            buf[i] = 0

    def write_readinto(self, wbuf, rbuf):
        LOG.append(("spi_write", self.id, bytes(wbuf)))
        for i in range(len(rbuf)):
            rbuf[i] = 0


WATCHDOG_CTRL_CLR = 0x4005B000  # WATCHDOG CTRL, atomic clear alias: bit 30 = ENABLE (pico-sdk watchdog_disable)
WATCHDOG_ENABLE = 0x40000000
try:
    import os as _os2

    _WDT_ENFORCE = (_os2.getenv("PICOSTIM_SHIM_WDT") or "") == "enforce"
except (ImportError, AttributeError):
    _WDT_ENFORCE = False
_wdt_on = [False]  # the hardware watchdog counts (WDT() starts it; the CTRL clear alias stops it)


def _ms():
    try:
        import utime

        return utime.ticks_ms()
    except ImportError:
        return 0


class WDT:
    """``PICOSTIM_SHIM_WDT=enforce`` (environment): a feed that comes later than ``timeout`` after the
    previous one is what resets a board; it is reported on stderr ("machine.WDT: ... the board would
    reset") and ends the interpreter. ``max_gap_ms``: longest gap between two feeds seen."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        self.max_gap_ms = 0
        self._last = _ms()
        _wdt_on[0] = True
        LOG.append(("wdt", timeout))

    def feed(self):
        self.feeds += 1
        now = _ms()
        gap = now - self._last
        self._last = now
        if gap > self.max_gap_ms:
            self.max_gap_ms = gap
        if _WDT_ENFORCE and _wdt_on[0] and gap > self.timeout:
            import sys

            sys.stderr.write("machine.WDT: not fed for %d ms (timeout %d ms): the board would reset\n"
                             % (gap, self.timeout))
            raise SystemExit(99)


_DAC_SM_INSTR = 0x503000D8  # PIO1 SM0 (the DAC bus state machine): an exec'd JMP sets its PC register
_DAC_SM_ADDR = 0x503000D4


class _Mem:
    """mem32/mem16/mem8: a sparse register file; reads of unwritten addresses return 0. One register
    model: a JMP written to PIO1 SM0's SMx_INSTR sets its SMx_ADDR (the HAL's DAC bus reads it back);
    the stimulation SMs' PCs stay 0 as before."""

    def __init__(self, width):
        self.mask = (1 << width) - 1
        self.regs = {}

    def __getitem__(self, addr):
        return self.regs.get(addr, 0)

    def __setitem__(self, addr, value):
        self.regs[addr] = value & self.mask
        LOG.append(("mem", addr, value & self.mask))
        if addr == WATCHDOG_CTRL_CLR and value & WATCHDOG_ENABLE:
            _wdt_on[0] = False
        if addr == _DAC_SM_INSTR and not value >> 13:
            self.regs[_DAC_SM_ADDR] = value & 0x1F


mem32 = _Mem(32)
mem16 = _Mem(16)
mem8 = _Mem(8)


def unique_id():
    return UNIQUE_ID


def freq(hz=None):
    if hz is None:
        return _freq[0]
    _freq[0] = hz


def reset_cause():
    return _reset_cause[0]


def reset():
    raise SystemExit("machine.reset()")


def soft_reset():
    raise SystemExit("machine.soft_reset()")


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def idle():
    pass


def bootloader():
    raise SystemExit("machine.bootloader()")
