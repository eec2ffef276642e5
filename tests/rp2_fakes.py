"""Recording fakes of MicroPython's machine / rp2 / uctypes for running firmware/hal_rp2.py on CPython
(tests/test_hal_rp2.py, tests/test_impedance.py). What they cannot show is listed in docs/HARDWARE.md."""

import importlib
import sys
import time
import types

from firmware import dma_chain as dc
from firmware import ticks


class Hw:
    """Recording fakes of machine / rp2 / uctypes with a tiny register model."""

    def __init__(self):
        self.log = []
        self.regs = {}
        self.offset = 25  # where the PIO loader put the 7-word program (top of memory)
        self.next_dma = 0
        self.addr = 0x20000104  # deliberately not 1 KB aligned
        self.log_reads = False  # also log ("read", addr) (order-of-access tests)
        self.on_read = None  # hook(addr) run before a read (a register model moving under the CPU)
        # (computed once: tests may forbid the firmware to compute register addresses later)
        self._flevel = dc.pio_flevel(0)
        self._pc_regs = {dc.pio_sm_addr_reg(0, sm): sm for sm in range(4)}
        self._instr_regs = {dc.pio_sm_instr_reg(0, sm): sm for sm in range(4)}
        # the DAC bus SM (PIO1 SM0, loaded at offset 0): an exec'd JMP sets its PC
        self._pc_regs[dc.pio_sm_addr_reg(1, 0)] = "dac"
        self._instr_regs[dc.pio_sm_instr_reg(1, 0)] = "dac"

    # mem32
    def read(self, a):
        if self.on_read is not None:
            self.on_read(a)
        if self.log_reads:
            self.log.append(("read", a))
        return self._read(a)

    def _read(self, a):
        if a == self._flevel:
            return 0x08080808  # primed FIFOs
        sm = self._pc_regs.get(a)
        if sm is not None:
            return self.regs.get(("pc", sm), 0 if sm == "dac" else self.offset)
        return self.regs.get(a, 0)

    def write(self, a, v):
        self.log.append(("mem", a, v))
        self.regs[a] = v
        sm = self._instr_regs.get(a)
        if sm is not None and v >> 13 == 0:
            self.regs[("pc", sm)] = v & 0x1F

    def modules(self):
        hw = self

        class Mem:
            def __getitem__(self, a):
                return hw.read(a)

            def __setitem__(self, a, v):
                hw.write(a, v)

        class Pin:
            IN, OUT, PULL_DOWN, PULL_UP = 0, 1, 2, 1
            ALT, ALT_SPI, ALT_PIO1 = 3, 1, 7

            def __init__(self, pid, mode=-1, pull=-1, value=None, alt=-1):
                self.id = pid
                hw.log.append(("pin", pid, mode, value) if mode != 3 else ("pin_alt", pid, alt, pull))

            def init(self, mode=-1, pull=-1, value=None, alt=-1):
                hw.log.append(("pin", self.id, mode, value) if mode != 3 else ("pin_alt", self.id, alt, pull))

            def value(self, v=None):
                if v is not None:
                    hw.log.append(("pin_value", self.id, v))
                return 0

        class SPI:
            MSB = 0

            def __init__(self, *a, **kw):
                hw.log.append(("spi_init", kw.get("miso", "default")))

            def write(self, b):
                hw.log.append(("spi", bytes(b)))

        class WDT:
            def __init__(self, id=0, timeout=0):
                hw.log.append(("wdt", timeout))

            def feed(self):
                hw.log.append(("feed",))

        class ADC:
            def __init__(self, pin):
                pass

            def read_u16(self):
                return 1000 << 4

        machine = types.ModuleType("machine")
        machine.mem32 = Mem()
        machine.Pin, machine.SPI, machine.WDT, machine.ADC = Pin, SPI, WDT, ADC
        machine.freq = lambda hz=None: hw.log.append(("freq", hz))
        machine.reset_cause = lambda: 3
        machine.PWRON_RESET, machine.HARD_RESET, machine.WDT_RESET = 1, 2, 3
        machine.unique_id = lambda: b"\x01\x02\x03\x04\x05\x06\x07\x08"
        machine.disable_irq = lambda: hw.log.append(("irq_off",)) or 0
        machine.enable_irq = lambda s=0: hw.log.append(("irq_on",))

        class PIO:
            OUT_LOW, SHIFT_RIGHT, JOIN_TX = 2, 1, 1

        def asm_pio(**kw):
            def dec(fn):
                words, wraps = [], {}
                g = fn.__globals__
                saved = dict(g)
                g.clear()  # as MicroPython does: the function may only use its defaults and builtins
                class Side:  # word(x).side(v): the side-set value into bit 12 (1 side-set pin, no enable)
                    def side(self, v):
                        words[-1] |= v << 12

                def word(w):
                    words.append(w)
                    return Side()

                g.update(word=word, wrap_target=lambda: wraps.__setitem__("t", len(words)),
                         wrap=lambda: wraps.__setitem__("w", len(words) - 1))
                try:
                    fn()
                finally:
                    g.clear()
                    g.update(saved)
                return {"words": words, "wraps": wraps, "kw": kw}
            return dec

        class StateMachine:
            def __init__(self, sid):
                self.id = sid

            def init(self, prog, **kw):
                if "out_init" not in prog["kw"]:  # the DAC bus program (side-set SCK, no out_init)
                    hw.log.append(("sm_init_dac", self.id, kw))
                    return
                hw.log.append(("sm_init", self.id, len(prog["kw"]["out_init"]), kw["freq"],
                               kw["out_base"].id, kw["in_base"].id))

            def active(self, v=None):
                hw.log.append(("sm_active", self.id, v))

            def put(self, words):
                hw.log.append(("sm_put", self.id, list(words)))

        class DMA:
            def __init__(self):
                self.channel = hw.next_dma
                hw.next_dma += 1

        rp2 = types.ModuleType("rp2")
        rp2.PIO, rp2.StateMachine, rp2.DMA, rp2.asm_pio = PIO, StateMachine, DMA, asm_pio
        uctypes = types.ModuleType("uctypes")

        def addressof(obj):
            hw.addr += 0x2000
            return hw.addr

        uctypes.addressof = addressof
        return {"machine": machine, "rp2": rp2, "uctypes": uctypes}


TICKS_PERIOD = ticks.PERIOD  # the rp2 port's ticks_us() period
# the firmware's own model of the rp2 port's ticks functions: they raise where the board would misbehave
ticks_diff = ticks.model_ticks_diff
ticks_add = ticks.model_ticks_add


def load_board_hal(monkeypatch, us_per_tick_read, t0=0):
    """Install the fakes and a fake microsecond clock that wraps at 2**30 like the rp2 port's
    (starting at ``t0``, advancing ``us_per_tick_read`` per ``time.ticks_us()`` call; ticks_diff /
    ticks_add reject non-tick arguments), then import firmware.hal_rp2 afresh. Returns (module, hw,
    clock); call ``unload_board_hal()`` when done."""
    hw = Hw()
    for name, module in hw.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    clock = [t0 & (TICKS_PERIOD - 1)]

    def ticks_us():
        clock[0] = (clock[0] + us_per_tick_read) & (TICKS_PERIOD - 1)
        return clock[0]

    monkeypatch.setattr(time, "ticks_us", ticks_us, raising=False)
    monkeypatch.setattr(time, "ticks_diff", ticks_diff, raising=False)
    monkeypatch.setattr(time, "ticks_add", ticks_add, raising=False)
    monkeypatch.setattr(time, "sleep_us", lambda us: clock.__setitem__(0, (clock[0] + us) & (TICKS_PERIOD - 1)),
                        raising=False)
    sys.modules.pop("firmware.hal_rp2", None)
    return importlib.import_module("firmware.hal_rp2"), hw, clock


def unload_board_hal():
    sys.modules.pop("firmware.hal_rp2", None)
