"""Register-level model of the board: firmware/hal_rp2.py and firmware/dma_chain.py, unmodified, on
CPython with ``machine.mem32`` mapped onto the bus of npm rp2040js's RP2040 (a Node process,
``wholechip/regbus.mjs``; its CPU never runs).

What is real here: every PIO0/DMA/SIO/IO_BANK0/PADS register access the HAL makes (and the ones
MicroPython's ``rp2`` / ``machine`` modules make on its behalf: ``StateMachine.init`` loads the program
with JMP relocation, writes CLKDIV/EXECCTRL/SHIFTCTRL/PINCTRL, clears the FIFOs by toggling FJOIN_RX
and hands the OUT pins to PIO0 exactly as the rp2 port does), the DMA chain reading the control ring
and the block buffers from emulated SRAM, the PIO executing the generated program, the pads. The
``array`` the HAL allocates lives in emulated SRAM: ``uctypes.addressof`` returns its SRAM address and
every item store is a bus write, so what the DMA reads is what the Feeder wrote.

What is modelled: CPU time. Emulated time is the PIO clock (125 MHz, 8 ns per cycle); each call the
interpreted firmware makes (``mem32`` access, ``ticks_us()``, an array store, a Pin call...) advances it
by a fixed cost (:data:`COSTS_US`: model figures for interpreted MicroPython on the 125 MHz
Cortex-M0+, not measurements), so the PIO and DMA run on while the HAL works, as on the board.
``time.ticks_us`` is the rp2 port's: it wraps at 2**30 and its ``ticks_diff``/``ticks_add`` refuse
arguments that are not small ints (the port would compute garbage with them).

Use::

    with RegBus() as bus:
        hal = bus.load_hal()                 # firmware.hal_rp2.Rp2Hal() on the emulated chip
        hal.start(trains, mask, wait)
        bus.run_us(2000)                     # the CPU idles (no register access) for 2 ms
        edges = bus.edges()                  # [(cycle, pin, level)]
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import types
import weakref
from pathlib import Path

WHOLECHIP = Path(__file__).resolve().parent / "wholechip"
SERVER = WHOLECHIP / "regbus.mjs"
CLOCK_HZ = 125_000_000
CYCLES_PER_US = CLOCK_HZ // 1_000_000
TICKS_PERIOD = 1 << 30  # the rp2 port's ticks_us() wraps here (MICROPY_PY_UTIME_TICKS_PERIOD)
SMALL_INT_MAX = (1 << 30) - 1  # 32-bit port: small ints are 31-bit signed
SMALL_INT_MIN = -(1 << 30)

# Modelled CPU cost of each call of the interpreted firmware, in microseconds (model figures for
# MicroPython bytecode on the 125 MHz M0+: one statement with a call and a global lookup is a few us).
COSTS_US = {
    "mem32": 2.0,  # one mem32[...] read or write, including computing the address
    "ticks_us": 3.0,  # time.ticks_us() / ticks_diff() inside a polling loop
    "array_set": 1.0,  # one item store into an array
    "pin": 3.0,  # Pin.value(), Pin(...) init
    "irq": 1.0,  # disable_irq / enable_irq
    "spi_byte": 1.0,  # SPI write, per byte (20 MHz SCK plus call overhead)
    "adc": 4.0,  # ADC.read_u16(): ~2 us conversion plus the call
    "call": 2.0,  # any other machine/rp2 call
}

# RP2040 register map used by the fakes (datasheet 2.3.1.7 SIO, 2.19.6 IO_BANK0, 2.19.6.3 PADS_BANK0)
SIO_GPIO_IN = 0xD0000004
SIO_GPIO_OUT_SET = 0xD0000014
SIO_GPIO_OUT_CLR = 0xD0000018
SIO_GPIO_OE_SET = 0xD0000024
SIO_GPIO_OE_CLR = 0xD0000028
IO_BANK0 = 0x40014000
PADS_BANK0 = 0x4001C000
PADS_IE = 1 << 6
PADS_OD = 1 << 7
PADS_PUE = 1 << 3
PADS_PDE = 1 << 2
GPIO_FUNC_SPI = 1
GPIO_FUNC_SIO = 5
GPIO_FUNC_PIO0 = 6
GPIO_FUNC_PIO1 = 7
ALIAS_XOR, ALIAS_SET, ALIAS_CLR = 0x1000, 0x2000, 0x3000
PIO_BASE = (0x50200000, 0x50300000)
PIO_CTRL, PIO_FSTAT, PIO_FDEBUG, PIO_FLEVEL, PIO_TXF0, PIO_INSTR_MEM0 = 0x000, 0x004, 0x008, 0x00C, 0x010, 0x048
SM_CLKDIV, SM_EXECCTRL, SM_SHIFTCTRL, SM_ADDR, SM_INSTR, SM_PINCTRL = 0x0C8, 0x0CC, 0x0D0, 0x0D4, 0x0D8, 0x0DC
SM_STRIDE = 0x18
SRAM_BASE = 0x20000000
SRAM_SIZE = 264 * 1024


def available() -> str | None:
    """None when the harness can run, else the reason it cannot (for a pytest skip)."""
    if not (WHOLECHIP / "node_modules" / "rp2040js").is_dir():
        return "rp2040js not installed: run `npm ci --prefix host/picostim/virtual/wholechip` (make does)"
    if shutil.which("node") is None:
        return "node (Node.js >= 18) is not on PATH"
    return None


class BusError(RuntimeError):
    """The Node side reported an error (bad access, time going backwards, unsupported config)."""


class RegBus:
    """One emulated RP2040 (rp2040js, patched) and the CPU-side fakes that reach it.

    ``patches``: names from pio_patches.mjs to apply (None: all); ``accelerate``: let the server
    skip cycles in which nothing observable can happen (results are identical, see the tests);
    ``start_us``: initial value of the emulated microsecond counter (e.g. just before the 2**30 wrap).
    """

    def __init__(self, patches=None, accelerate: bool = True, costs: dict | None = None, start_us: int = 0):
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.proc = subprocess.Popen(["node", str(SERVER)], cwd=str(WHOLECHIP), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.costs = {k: int(round(v * CYCLES_PER_US)) for k, v in {**COSTS_US, **(costs or {})}.items()}
        self.base_us = start_us
        self.now = 0  # emulated CPU time, PIO cycles
        self.pending: list = []
        self.inputs: list = []  # scheduled external input changes (cycle, pin, level), sorted
        self.warnings: list[str] = []
        self.edge_log: list[tuple[int, int, int]] = []
        self.enables: list[tuple[int, int, int]] = []  # (cycle, address, value) of PIO0 SM_ENABLE writes
        self.heap = SRAM_BASE + 0x4110  # deliberately not 1 KB aligned (the HAL aligns its ring)
        self.live_bytes = 0  # bytes of SramArrays still referenced (a bump allocator never reuses)
        self.dma_claimed = 0
        self.spi_log: list[bytes] = []
        self.wdt_feeds = 0
        self.adc_value = 0x8000
        self.adc_reads: list[int] = []
        self.hal_module = None
        self.trace: list[tuple] = []  # (cycle, "r"|"w", address[, value]) of every non-SRAM access
        reply = self._call([["reset", patches, accelerate, start_us * 1000]])
        self.version = reply["version"]
        self.patches = reply["patches"]

    # ---- transport ----------------------------------------------------------------------------
    def _call(self, ops):
        self.proc.stdin.write(json.dumps(ops, separators=(",", ":")) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise BusError("regbus.mjs exited")
        reply = json.loads(line)
        if reply.get("warn"):
            self.warnings.extend(reply["warn"])
        if reply.get("err"):
            raise BusError(reply["err"])
        if "edges" in reply:
            self.edge_log.extend((c, p, lv) for c, p, lv in reply["edges"])
        return reply

    def _queue(self, op):
        t = op[1]
        while self.inputs and self.inputs[0][0] <= t:
            c, pin, lv = self.inputs.pop(0)
            self.pending.append(["in", c, pin, lv])
        self.pending.append(op)
        if len(self.pending) > 4000:
            self.flush()

    def flush(self):
        if self.pending:
            ops, self.pending = self.pending, []
            self._call(ops)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- CPU time -----------------------------------------------------------------------------
    def spend(self, kind: str, n: int = 1):
        self.now += self.costs[kind] * n

    def run_until(self, cycle: int):
        """The CPU idles (no bus access) until ``cycle``."""
        self.now = max(self.now, int(cycle))
        self._queue(["run", self.now])
        self.flush()

    def run_us(self, us: float):
        self.run_until(self.now + int(us * CYCLES_PER_US))

    def ticks_us(self) -> int:
        return (self.base_us + self.now // CYCLES_PER_US) % TICKS_PERIOD

    # ---- bus ----------------------------------------------------------------------------------
    def read32(self, addr: int, cost: str = "mem32") -> int:
        self.spend(cost)
        self._queue(["r", self.now, addr & 0xFFFFFFFF])
        ops, self.pending = self.pending, []
        v = self._call(ops)["r"][-1]
        if addr >= 0x40000000:
            self.trace.append((self.now, "r", addr, v))
        return v

    def write32(self, addr: int, value: int, cost: str | None = "mem32"):
        if cost:
            self.spend(cost)
        if addr & ~0x3000 == PIO_BASE[0] + PIO_CTRL and addr & 0x3000 in (0, ALIAS_SET) and value & 0xF:
            self.enables.append((self.now, addr, value & 0xFFFFFFFF))  # SM_ENABLE writes: start times
        if addr >= 0x40000000:
            self.trace.append((self.now, "w", addr, value & 0xFFFFFFFF))
        self._queue(["w", self.now, addr & 0xFFFFFFFF, value & 0xFFFFFFFF])

    def write_block(self, addr: int, values):
        self._queue(["wb", self.now, addr, [v & 0xFFFFFFFF for v in values]])

    def drive_input(self, pin: int, level: int, at_cycle: int | None = None):
        """An external signal (function generator) on GPIO ``pin`` from ``at_cycle`` (default now)."""
        c = self.now if at_cycle is None else int(at_cycle)
        if c < self.now:
            raise ValueError("input change in the past")
        self.inputs.append((c, pin, 1 if level else 0))
        self.inputs.sort()

    def edges(self) -> list[tuple[int, int, int]]:
        """Every pad edge so far as (cycle, pin, level), sorted."""
        self.flush()
        self._call([["edges"]])
        return list(self.edge_log)

    def peek(self, sm: int) -> dict:
        self.flush()
        return self._call([["peek", sm]])["r"][-1]

    def peek_sm(self, sm: int, pio: int) -> dict:
        """Debug view {pc, x, tx, enabled, waiting} of SM ``sm`` of PIO ``pio`` (no bus access)."""
        self.flush()
        return self._call([["peek", sm, pio]])["r"][-1]

    def release(self, nbytes: int):
        self.live_bytes -= nbytes

    def alloc(self, nbytes: int) -> int:
        a = (self.heap + 15) & ~15
        if a + nbytes > SRAM_BASE + SRAM_SIZE:
            raise MemoryError("emulated SRAM exhausted")
        self.heap = a + nbytes
        return a

    # ---- the firmware ---------------------------------------------------------------------------
    def modules(self) -> dict:
        return {"machine": _machine(self), "rp2": _rp2(self), "uctypes": _uctypes(self), "time": _time(self),
                "array": _array(self)}

    def load_hal(self, construct: bool = True):
        """Import firmware.hal_rp2 afresh with this bus's machine/rp2/uctypes/time/array modules and
        return ``Rp2Hal()`` (or the module when ``construct`` is False). The real modules are put back
        in sys.modules right after the import (the HAL keeps its own references)."""
        fakes = self.modules()
        # firmware modules that bind machine/time at import are imported afresh against the fakes
        fresh = ["firmware.hal_rp2", "firmware.ticks", "firmware.crash"]
        saved = {name: sys.modules.get(name) for name in list(fakes) + fresh}
        try:
            sys.modules.update(fakes)
            for name in fresh:
                sys.modules.pop(name, None)
            mod = importlib.import_module("firmware.hal_rp2")
        finally:
            pkg = sys.modules.get("firmware")
            for name, m in saved.items():
                if m is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = m
                if name.startswith("firmware.") and pkg is not None:
                    # `from firmware import hal_rp2` reads the package attribute: put it back too
                    attr = name.split(".", 1)[1]
                    if m is None:
                        if hasattr(pkg, attr):
                            delattr(pkg, attr)
                    else:
                        setattr(pkg, attr, m)
        self.hal_module = mod
        if not construct:
            return mod
        hal = mod.Rp2Hal()
        self.flush()
        return hal


# ---- fake modules -------------------------------------------------------------------------------
def _signed(v: int) -> int:
    """machine.mem32 reads are signed on the rp2 port."""
    return v - (1 << 32) if v & 0x80000000 else v


def _machine(bus: RegBus):
    m = types.ModuleType("machine")

    class Mem32:
        def __getitem__(self, addr):
            return _signed(bus.read32(addr))

        def __setitem__(self, addr, value):
            bus.write32(addr, value)

    class Pin:
        IN, OUT, OPEN_DRAIN, ALT = 0, 1, 2, 3
        PULL_UP, PULL_DOWN = 1, 2
        ALT_SPI, ALT_SIO, ALT_PIO0, ALT_PIO1 = GPIO_FUNC_SPI, GPIO_FUNC_SIO, GPIO_FUNC_PIO0, GPIO_FUNC_PIO1

        def __init__(self, pid, mode=None, pull=None, value=None, alt=GPIO_FUNC_SIO):
            self.id = pid
            if mode is None and pull is None and value is None:
                return  # Pin(n): just the object (rp2 port: no init without arguments)
            self.init(mode, pull, value, alt=alt)

        def init(self, mode=None, pull=None, value=None, alt=GPIO_FUNC_SIO):
            """machine_pin_obj_init_helper: value first, then mode (SIO function, or ALT: the ``alt``
            function), then the pulls (unconditionally: None means no pull)."""
            pid = self.id
            bus.spend("pin")
            if value is not None:
                bus.write32(SIO_GPIO_OUT_SET if value else SIO_GPIO_OUT_CLR, 1 << pid, cost=None)
            if mode == Pin.IN:
                bus.write32(SIO_GPIO_OE_CLR, 1 << pid, cost=None)
                _gpio_set_function(bus, pid, GPIO_FUNC_SIO)
            elif mode == Pin.OUT:
                bus.write32(SIO_GPIO_OE_SET, 1 << pid, cost=None)
                _gpio_set_function(bus, pid, GPIO_FUNC_SIO)
            elif mode == Pin.ALT:
                _gpio_set_function(bus, pid, alt)
            elif mode is not None:
                raise NotImplementedError("Pin mode %r is not modelled" % mode)
            p = pull or 0
            _pads_write_masked(bus, pid, (PADS_PUE if p & Pin.PULL_UP else 0) | (PADS_PDE if p & Pin.PULL_DOWN else 0),
                               PADS_PUE | PADS_PDE)

        def value(self, v=None):
            bus.spend("pin")
            if v is None:
                return (bus.read32(SIO_GPIO_IN, cost="call") >> self.id) & 1
            bus.write32(SIO_GPIO_OUT_SET if v else SIO_GPIO_OUT_CLR, 1 << self.id, cost=None)
            return None

    class SPI:
        MSB, LSB = 0, 1

        def __init__(self, id, **kw):
            bus.spend("call")

        def write(self, buf):
            bus.spend("spi_byte", len(buf))
            bus.spi_log.append(bytes(buf))

    class WDT:
        def __init__(self, id=0, timeout=5000):
            bus.spend("call")
            self.timeout = timeout

        def feed(self):
            bus.spend("call")
            bus.wdt_feeds += 1

    class ADC:
        def __init__(self, pin):
            bus.spend("call")

        def read_u16(self):
            bus.spend("adc")
            bus.adc_reads.append(bus.now)  # cycle at which the conversion ended
            return bus.adc_value

    def freq(hz=None):
        bus.spend("call")
        if hz is not None and hz != CLOCK_HZ:
            raise ValueError("the register-level model runs at %d Hz only" % CLOCK_HZ)
        return CLOCK_HZ

    def disable_irq():
        bus.spend("irq")
        return 1

    def enable_irq(state=1):
        bus.spend("irq")

    m.mem32 = Mem32()
    m.Pin, m.SPI, m.WDT, m.ADC = Pin, SPI, WDT, ADC
    m.freq = freq
    m.disable_irq, m.enable_irq = disable_irq, enable_irq
    m.unique_id = lambda: b"\xe6\x60\x58\x38\x83\x2c\x40\x21"
    m.reset_cause = lambda: 1
    m.PWRON_RESET, m.WDT_RESET = 1, 3
    return m


def _pads_write_masked(bus, pin, values, mask):
    """pico-sdk hw_write_masked on PADS_BANK0 GPIOn: read, then an XOR-alias write of the bits that
    differ."""
    addr = PADS_BANK0 + 4 + 4 * pin
    cur = bus.read32(addr, cost="call")
    bus.write32(addr + ALIAS_XOR, (cur ^ values) & mask, cost=None)


def _gpio_set_function(bus, pin, fn):
    """pico-sdk gpio_set_function: pad input enable on, output disable off, then FUNCSEL."""
    _pads_write_masked(bus, pin, PADS_IE, PADS_IE | PADS_OD)
    bus.write32(IO_BANK0 + 4 + 8 * pin, fn, cost=None)


def _uctypes(bus: RegBus):
    u = types.ModuleType("uctypes")

    def addressof(obj):
        if not isinstance(obj, SramArray):
            raise TypeError("addressof: only arrays in emulated SRAM have an address here")
        return obj.addr

    u.addressof = addressof
    return u


class SramArray:
    """``array.array('I', ...)`` whose storage is emulated SRAM: item stores are bus writes (the
    shadow list serves reads; only the CPU writes these buffers, the DMA only reads them)."""

    def __init__(self, bus: RegBus, typecode, init=()):
        if typecode not in ("I", "L", "i", "l"):
            raise NotImplementedError("only 32-bit arrays live in emulated SRAM")
        self.bus = bus
        self.typecode = typecode
        self._v = [int(x) & 0xFFFFFFFF for x in init]
        nbytes = 4 * max(1, len(self._v))
        self.addr = bus.alloc(nbytes)
        bus.live_bytes += nbytes  # emulated heap in use: given back when the array is collected
        weakref.finalize(self, bus.release, nbytes)
        bus.spend("array_set", len(self._v))
        bus.write_block(self.addr, self._v)

    def __len__(self):
        return len(self._v)

    def __getitem__(self, i):
        v = self._v[i]
        if self.typecode in ("i", "l") and v & 0x80000000:
            return v - (1 << 32)
        return v

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            raise NotImplementedError("slice assignment")
        n = len(self._v)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("array index out of range")
        v = int(value) & 0xFFFFFFFF
        self._v[i] = v
        self.bus.spend("array_set")
        self.bus.write32(self.addr + 4 * i, v, cost=None)

    def __iter__(self):
        return iter(self[i] for i in range(len(self._v)))


def _array(bus: RegBus):
    a = types.ModuleType("array")
    a.array = lambda typecode, init=(): SramArray(bus, typecode, init)
    return a


def _time(bus: RegBus):
    t = types.ModuleType("time")

    def small(*args):
        for v in args:
            if not isinstance(v, int) or not SMALL_INT_MIN <= v <= SMALL_INT_MAX:
                raise ValueError("%r is not a small int: the rp2 port's ticks functions would compute garbage" % (v,))

    def ticks_us():
        bus.spend("ticks_us")
        return bus.ticks_us()

    def ticks_ms():
        bus.spend("ticks_us")
        return (bus.ticks_us() // 1000) % TICKS_PERIOD

    def ticks_diff(a, b):
        small(a, b)
        return ((a - b + TICKS_PERIOD // 2) % TICKS_PERIOD) - TICKS_PERIOD // 2

    def ticks_add(a, d):
        small(a, d)
        return (a + d) % TICKS_PERIOD

    def sleep_us(us):
        bus.spend("call")
        bus.now += int(us) * CYCLES_PER_US

    def sleep_ms(ms):
        sleep_us(int(ms) * 1000)

    t.ticks_us, t.ticks_ms, t.ticks_diff, t.ticks_add = ticks_us, ticks_ms, ticks_diff, ticks_add
    t.sleep_us, t.sleep_ms = sleep_us, sleep_ms
    t.sleep = lambda s: sleep_us(int(s * 1_000_000))
    return t


# ---- rp2 -----------------------------------------------------------------------------------------
PROG_DATA, PROG_OFFSET_PIO0, PROG_OFFSET_PIO1, PROG_EXECCTRL, PROG_SHIFTCTRL, PROG_OUT_PINS, PROG_SET_PINS, \
    PROG_SIDESET_PINS = range(8)


def _rp2(bus: RegBus):
    r = types.ModuleType("rp2")
    used = [0, 0]  # instruction memory in use per PIO (pico-sdk _used_instruction_space)

    class PIO:
        IN_LOW, IN_HIGH, OUT_LOW, OUT_HIGH = 0, 1, 2, 3
        SHIFT_LEFT, SHIFT_RIGHT = 0, 1
        JOIN_NONE, JOIN_TX, JOIN_RX = 0, 1, 2

    def asm_pio(*, out_init=None, set_init=None, sideset_init=None, side_pindir=False, in_shiftdir=0,
                out_shiftdir=0, autopush=False, autopull=False, push_thresh=32, pull_thresh=32, fifo_join=0):
        """The rp2 port's asm_pio for what the HAL uses (word, wrap_target, wrap): the function runs
        twice (two assembler passes) with its module globals replaced by the DSL; the result is the
        port's program list [data, offset_pio0, offset_pio1, execctrl, shiftctrl, out, set, sideset]."""
        execctrl = int(side_pindir) << 29
        shiftctrl = (fifo_join << 30 | (pull_thresh & 0x1F) << 25 | (push_thresh & 0x1F) << 20 | out_shiftdir << 19
                     | in_shiftdir << 18 | int(autopull) << 17 | int(autopush) << 16)
        prog = [[], -1, -1, execctrl, shiftctrl, out_init, set_init, sideset_init]
        if sideset_init is None:
            sideset_count = 0
        else:
            sideset_count = 1 if isinstance(sideset_init, int) else len(sideset_init)
        state = {"n": 0, "pass": 0, "wrap_used": False, "nside": 0, "count": sideset_count, "opt": False}

        class Instr:
            """What the DSL's word() returns: ``.side(v)`` as PIOASMEmit.side (value at bit 13 - count,
            the enable bit 12 when the program's side-set is optional)."""

            def side(self, value):
                state["nside"] += 1
                if state["pass"] > 0:
                    if state["count"] == 0:
                        raise ValueError("no sideset")
                    prog[PROG_DATA][-1] |= int(state["opt"]) << 12 | value << (13 - state["count"])
                return self

        def word(instr, label=None):
            if label is not None:
                raise NotImplementedError("labels")
            state["n"] += 1
            if state["pass"] > 0:
                prog[PROG_DATA].append(instr & 0xFFFF)
            return Instr()

        def wrap_target():
            prog[PROG_EXECCTRL] |= state["n"] << 7

        def wrap():
            assert state["n"]
            prog[PROG_EXECCTRL] |= (state["n"] - 1) << 12
            state["wrap_used"] = True

        def dec(f):
            g = f.__globals__
            old = dict(g)
            g.clear()
            g.update(word=word, wrap_target=wrap_target, wrap=wrap)
            try:
                state["n"] = 0
                f()
                if not state["wrap_used"] and state["n"]:
                    wrap()
                if state["count"]:  # PIOASMEmit.start_pass(1): optional unless every word had .side()
                    state["opt"] = state["nside"] != state["n"]
                    if state["opt"]:
                        prog[PROG_EXECCTRL] |= 1 << 30
                        state["count"] += 1
                state["pass"] = 1
                state["n"] = 0
                state["nside"] = 0
                f()
            finally:
                g.clear()
                g.update(old)
            return prog

        return dec

    def add_program(pio_id, prog):
        """pico-sdk pio_add_program: the highest free offset ("work down from the top always"); JMP
        targets relocated by the offset."""
        data = prog[PROG_DATA]
        n = len(data)
        mask = (1 << n) - 1
        for off in range(32 - n, -1, -1):
            if not used[pio_id] & (mask << off):
                break
        else:
            raise OSError(12, "ENOMEM: no room in PIO instruction memory")
        base = PIO_BASE[pio_id]
        for i, ins in enumerate(data):
            if ins >> 13 == 0:
                ins = ins + off  # JMP: absolute target + offset
            bus.write32(base + PIO_INSTR_MEM0 + 4 * (off + i), ins & 0xFFFF, cost=None)
            bus.spend("call")
        used[pio_id] |= mask << off
        prog[PROG_OFFSET_PIO0 + pio_id] = off
        return off

    class StateMachine:
        def __init__(self, sm_id, prog=None, **kw):
            self.id = sm_id
            self.pio = sm_id // 4
            self.sm = sm_id % 4
            self.base = PIO_BASE[self.pio]
            self.initial_pc = 0
            if prog is not None:
                self.init(prog, **kw)

        def _smreg(self, off):
            return self.base + off + SM_STRIDE * self.sm

        def _exec(self, instr):
            bus.write32(self._smreg(SM_INSTR), instr & 0xFFFF, cost=None)

        def _set_enabled(self, on):
            ctrl = bus.read32(self.base + PIO_CTRL, cost="call")
            bus.write32(self.base + PIO_CTRL, (ctrl & ~(1 << self.sm)) | (int(bool(on)) << self.sm), cost=None)

        def init(self, prog, freq=-1, *, in_base=None, out_base=None, set_base=None, jmp_pin=None,
                 sideset_base=None, in_shiftdir=None, out_shiftdir=None, push_thresh=None, pull_thresh=None):
            bus.spend("call", 4)
            offset = prog[PROG_OFFSET_PIO0 + self.pio]
            if offset < 0:
                offset = add_program(self.pio, prog)
            self.initial_pc = offset
            if freq < 0 or freq == CLOCK_HZ:
                div_int, div_frac = 1, 0
            else:
                raise NotImplementedError("the register-level model steps the PIO at divider 1.0 only")
            # pio_sm_init(pio, sm, offset, NULL): disable, default config, clear FIFOs, clear FDEBUG,
            # restart, clkdiv restart, jmp offset
            self._set_enabled(False)
            self._set_config(1 << 16, 0x1F << 12, 0x000C0000, 0)
            for _ in range(2):  # pio_sm_clear_fifos: toggle FJOIN_RX twice through the XOR alias
                bus.write32(self._smreg(SM_SHIFTCTRL) + ALIAS_XOR, 1 << 31, cost=None)
            bus.write32(self.base + PIO_FDEBUG, 0x01010101 << self.sm, cost=None)
            bus.write32(self.base + PIO_CTRL + ALIAS_SET, 1 << (4 + self.sm), cost=None)
            bus.write32(self.base + PIO_CTRL + ALIAS_SET, 1 << (8 + self.sm), cost=None)
            self._exec(offset & 0x1F)  # pio_encode_jmp(offset)
            # the program's config
            clkdiv = div_frac << 8 | div_int << 16
            execctrl = prog[PROG_EXECCTRL] + (offset << 12) + (offset << 7)
            shiftctrl = prog[PROG_SHIFTCTRL]
            pinctrl = 0
            if in_base is not None:
                pinctrl |= (in_base.id & 31) << 15
            out_cfg = _pin_config(prog[PROG_OUT_PINS], out_base)
            if out_cfg["base"] >= 0:
                pinctrl = (pinctrl & ~(0x3F << 20 | 31)) | out_cfg["count"] << 20 | out_cfg["base"]
            if prog[PROG_SET_PINS] is not None or set_base is not None or jmp_pin is not None:
                raise NotImplementedError("set/jmp pins are not used by picostim's programs")
            side_cfg = _pin_config(prog[PROG_SIDESET_PINS], sideset_base)
            if side_cfg["base"] >= 0:  # rp2_pio.c: count (+1 when optional) and base into PINCTRL
                count = side_cfg["count"] + (1 if execctrl >> 30 & 1 else 0)
                pinctrl = (pinctrl & ~(7 << 29 | 31 << 10)) | count << 29 | side_cfg["base"] << 10
            # asm_pio_override_shiftctrl: (shiftctrl & ~bits) | (value << lsb), the value NOT masked
            for value, bits, lsb in ((in_shiftdir, 1 << 18, 18), (out_shiftdir, 1 << 19, 19),
                                     (push_thresh, 0x1F << 20, 20), (pull_thresh, 0x1F << 25, 25)):
                if value is not None:
                    shiftctrl = (shiftctrl & ~bits) | (value << lsb)
            self._set_config(clkdiv, execctrl, shiftctrl & 0xFFFFFFFF, pinctrl)
            if out_cfg["base"] >= 0:
                self._init_gpio(out_cfg)
            if side_cfg["base"] >= 0:
                self._init_gpio(side_cfg)

        def _set_config(self, clkdiv, execctrl, shiftctrl, pinctrl):
            bus.write32(self._smreg(SM_CLKDIV), clkdiv, cost=None)
            bus.write32(self._smreg(SM_EXECCTRL), execctrl, cost=None)
            bus.write32(self._smreg(SM_SHIFTCTRL), shiftctrl, cost=None)
            bus.write32(self._smreg(SM_PINCTRL), pinctrl, cost=None)

        def _init_gpio(self, cfg):
            """asm_pio_init_gpio: pio_sm_set_pins_with_mask, pio_sm_set_pindirs_with_mask (each pin by
            an exec'd `set pins`/`set pindirs` with a one-pin SET group), gpio_set_function(PIO)."""
            mask = ((1 << cfg["count"]) - 1) << cfg["base"]
            if not mask:
                return
            for values, set_op in ((cfg["vals"] << cfg["base"], 0xE000), (cfg["dirs"] << cfg["base"], 0xE080)):
                pinctrl = bus.read32(self._smreg(SM_PINCTRL), cost="call")
                execctrl = bus.read32(self._smreg(SM_EXECCTRL), cost="call")
                bus.write32(self._smreg(SM_EXECCTRL) + ALIAS_CLR, 1 << 17, cost=None)  # OUT_STICKY off
                m = mask
                while m:
                    base = (m & -m).bit_length() - 1
                    bus.write32(self._smreg(SM_PINCTRL), 1 << 26 | base << 5, cost=None)
                    self._exec(set_op | (values >> base) & 1)
                    m &= m - 1
                bus.write32(self._smreg(SM_PINCTRL), pinctrl, cost=None)
                bus.write32(self._smreg(SM_EXECCTRL), execctrl, cost=None)
            for i in range(cfg["count"]):
                _gpio_set_function(bus, cfg["base"] + i, GPIO_FUNC_PIO0 + self.pio)

        def active(self, value=None):
            bus.spend("call")
            if value is not None:
                self._set_enabled(value)
            return bool(bus.read32(self.base + PIO_CTRL, cost="call") >> self.sm & 1)

        def exec(self, instr):
            if not isinstance(instr, int):
                raise NotImplementedError("exec() of assembler text")
            bus.spend("call")
            self._exec(instr)

        def restart(self):
            bus.spend("call")
            bus.write32(self.base + PIO_CTRL + ALIAS_SET, 1 << (4 + self.sm), cost=None)
            self._exec(self.initial_pc & 0x1F)

        def put(self, value, shift=0):
            bus.spend("call")
            words = [value] if isinstance(value, int) else list(value)
            for w in words:
                while bus.read32(self.base + PIO_FSTAT, cost="call") >> (16 + self.sm) & 1:  # TX full
                    pass
                bus.write32(self.base + PIO_TXF0 + 4 * self.sm, (w << shift) & 0xFFFFFFFF, cost="call")

        def tx_fifo(self):
            return bus.read32(self.base + PIO_FLEVEL, cost="call") >> (8 * self.sm) & 0xF

    class DMA:
        def __init__(self):
            bus.spend("call")
            for ch in range(12):  # dma_claim_unused_channel: the lowest free channel
                if not bus.dma_claimed >> ch & 1:
                    bus.dma_claimed |= 1 << ch
                    self.channel = ch
                    return
            raise OSError(16, "EBUSY: no free DMA channel")

        def close(self):
            bus.dma_claimed &= ~(1 << self.channel)

    r.PIO, r.StateMachine, r.DMA, r.asm_pio = PIO, StateMachine, DMA, asm_pio
    return r


def _pin_config(prog_pins, arg_base):
    """asm_pio_get_pins for out/set pins: count, dirs, vals from the program's *_init, base from the
    init() argument."""
    cfg = {"base": -1, "count": 0, "dirs": 0, "vals": 0}
    if prog_pins is not None:
        items = [prog_pins] if isinstance(prog_pins, int) else list(prog_pins)
        cfg["count"] = len(items)
        for i, v in enumerate(items):
            cfg["dirs"] |= (v >> 1) << i
            cfg["vals"] |= (v & 1) << i
    if arg_base is not None:
        cfg["base"] = arg_base.id
    return cfg
