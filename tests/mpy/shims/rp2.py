"""Minimal fake of MicroPython's ``rp2`` module (PIO, StateMachine, DMA, asm_pio) for the unix port.

Enough for firmware modules to import and for code to run against it: ``asm_pio`` runs the program
function with the DSL names bound and records the words it emits (``word(x)`` places ``x``; other DSL
instructions are recorded as 0 with their name in ``program[-1]``); state machines and DMA channels
store their configuration and record writes in ``LOG`` so tests can inspect them.
"""

LOG = []


# ------------------------------------------------------------------------------------ PIO DSL
class PIOASMError(Exception):
    pass


def asm_pio(*, out_init=None, set_init=None, sideset_init=None, side_pindir=False, in_shiftdir=0, out_shiftdir=0,
            autopush=False, autopull=False, push_thresh=32, pull_thresh=32, fifo_join=0):
    def decorator(fn):
        words, names = [], []
        labels = {}
        wrap = [None, None]

        def _emit(name):
            def f(*args, **kw):
                words.append(0)
                names.append(name)
                return _Instr()
            return f

        class _Instr:
            def side(self, v):
                return self

            def __getitem__(self, delay):
                return self

        def word(instr, label=None):
            words.append(instr & 0xFFFF)
            names.append("word")
            return _Instr()

        def label(name):
            labels[name] = len(words)

        def wrap_target():
            wrap[0] = len(words)

        def wrap_():
            wrap[1] = len(words) - 1

        dsl = {"word": word, "label": label, "wrap_target": wrap_target, "wrap": wrap_}
        for n in ("nop", "jmp", "wait", "in_", "out", "push", "pull", "mov", "irq", "set"):
            dsl[n] = _emit(n)
        for n in ("pins", "x", "y", "null", "isr", "osr", "pc", "pindirs", "status", "exec", "block", "noblock",
                  "iffull", "ifempty", "rel", "clear", "not_x", "not_y", "x_dec", "y_dec", "x_not_y",
                  "not_osre", "gpio", "pin", "invert", "reverse"):
            dsl[n] = n
        g = fn.__globals__
        saved = {}
        for k in dsl:
            if k in g:
                saved[k] = g[k]
            g[k] = dsl[k]
        try:
            fn()
        finally:
            for k in dsl:
                if k in saved:
                    g[k] = saved[k]
                else:
                    del g[k]
        if len(words) > 32:
            raise PIOASMError("program too long")
        config = {"out_init": out_init, "set_init": set_init, "sideset_init": sideset_init,
                  "in_shiftdir": in_shiftdir, "out_shiftdir": out_shiftdir, "autopush": autopush,
                  "autopull": autopull, "push_thresh": push_thresh, "pull_thresh": pull_thresh,
                  "fifo_join": fifo_join, "wrap_target": wrap[0] or 0,
                  "wrap": len(words) - 1 if wrap[1] is None else wrap[1], "labels": labels, "names": names}
        return [words, config]

    return decorator


# ---------------------------------------------------------------------------------- PIO / SM
class StateMachine:
    _all = {}

    def __init__(self, id, program=None, freq=-1, **kw):
        self.id = id
        self._active = 0
        self.tx = []
        self.rx = []
        self.execs = []
        self.config = {}
        StateMachine._all[id] = self
        if program is not None:
            self.init(program, freq, **kw)

    def init(self, program, freq=-1, *, in_base=None, out_base=None, set_base=None, jmp_pin=None,
             sideset_base=None, in_shiftdir=None, out_shiftdir=None, push_thresh=None, pull_thresh=None):
        self.program = program
        self.config = {"freq": freq, "in_base": in_base, "out_base": out_base, "set_base": set_base,
                       "jmp_pin": jmp_pin, "sideset_base": sideset_base, "in_shiftdir": in_shiftdir,
                       "out_shiftdir": out_shiftdir, "push_thresh": push_thresh, "pull_thresh": pull_thresh}
        LOG.append(("sm_init", self.id))

    def active(self, value=None):
        if value is None:
            return self._active
        self._active = 1 if value else 0
        LOG.append(("sm_active", self.id, self._active))
        return self._active

    def restart(self):
        LOG.append(("sm_restart", self.id))

    def exec(self, instr):
        self.execs.append(instr)
        LOG.append(("sm_exec", self.id, instr))

    def put(self, value, shift=0):
        if isinstance(value, int):
            self.tx.append((value >> shift) & 0xFFFFFFFF)
        else:
            for v in value:
                self.tx.append((v >> shift) & 0xFFFFFFFF)

    def get(self, buf=None, shift=0):
        v = self.rx.pop(0) if self.rx else 0
        return v >> shift

    def rx_fifo(self):
        return len(self.rx)

    def tx_fifo(self):
        return min(len(self.tx), 8)

    def irq(self, handler=None, trigger=0, hard=False):
        self._irq = handler


class PIO:
    IN_LOW = 0
    IN_HIGH = 1
    OUT_LOW = 2
    OUT_HIGH = 3
    SHIFT_LEFT = 0
    SHIFT_RIGHT = 1
    JOIN_NONE = 0
    JOIN_TX = 1
    JOIN_RX = 2
    IRQ_SM0 = 0x100
    IRQ_SM1 = 0x200
    IRQ_SM2 = 0x400
    IRQ_SM3 = 0x800

    def __init__(self, id):
        self.id = id
        self.programs = []

    def add_program(self, program):
        if program not in self.programs:
            self.programs.append(program)

    def remove_program(self, program=None):
        if program is None:
            self.programs = []
        elif program in self.programs:
            self.programs.remove(program)

    def state_machine(self, id, program=None, *args, **kw):
        sm_id = self.id * 4 + id
        sm = StateMachine._all.get(sm_id)
        if sm is None:
            sm = StateMachine(sm_id)
        if program is not None:
            sm.init(program, *args, **kw)
        return sm

    def irq(self, handler=None, trigger=0xFFF, hard=False):
        self._irq = handler

    def gpiobase(self, base=None):
        return 0


# ---------------------------------------------------------------------------------------- DMA
class DMA:
    _next = [0]

    def __init__(self):
        if DMA._next[0] >= 12:
            raise OSError("no free DMA channels")
        self.channel = DMA._next[0]
        DMA._next[0] += 1
        self.read = 0
        self.write = 0
        self.count = 0
        self.ctrl = 0
        self.registers = [0] * 16
        self._active = 0
        self._irq = None

    def config(self, read=None, write=None, count=None, ctrl=None, trigger=False):
        if read is not None:
            self.read = read
        if write is not None:
            self.write = write
        if count is not None:
            self.count = count
        if ctrl is not None:
            self.ctrl = ctrl
        LOG.append(("dma_config", self.channel, self.count, trigger))
        if trigger:
            self._active = 1

    def active(self, value=None):
        if value is None:
            return self._active
        self._active = 1 if value else 0
        LOG.append(("dma_active", self.channel, self._active))
        return self._active

    def pack_ctrl(self, default=None, **kw):
        d = self.unpack_ctrl(self.ctrl if default is None else default)
        d.update(kw)
        v = 0
        for name, (shift, width) in _CTRL_FIELDS.items():
            v |= (int(d.get(name, 0)) & ((1 << width) - 1)) << shift
        return v

    def unpack_ctrl(self, value):
        d = {}
        for name, (shift, width) in _CTRL_FIELDS.items():
            d[name] = (value >> shift) & ((1 << width) - 1)
        return d

    def irq(self, handler=None, hard=False):
        self._irq = handler

    def close(self):
        self._active = 0


_CTRL_FIELDS = {
    "enable": (0, 1), "high_pri": (1, 1), "size": (2, 2), "inc_read": (4, 1), "inc_write": (5, 1),
    "ring_size": (6, 4), "ring_sel": (10, 1), "chain_to": (11, 4), "treq_sel": (15, 6), "irq_quiet": (21, 1),
    "bswap": (22, 1), "sniff_en": (23, 1), "busy": (24, 1), "write_err": (29, 1), "read_err": (30, 1),
    "ahb_err": (31, 1),
}


# ------------------------------------------------------------------------------------- others
class Flash:
    def __init__(self):
        self.blocks = {}

    def ioctl(self, op, arg=0):
        return {4: 256, 5: 4096}.get(op, 0)


def _bootsel_window():
    """``PICOSTIM_SHIM_BOOTSEL`` = "START:END" (ms after this shim was imported, i.e. about process
    start): BOOTSEL reads pressed in [START, END). Unset: never pressed."""
    try:
        import os as _os

        spec = _os.getenv("PICOSTIM_SHIM_BOOTSEL") or ""
        if spec:
            a, b = spec.split(":")
            return int(a), int(b)
    except (ImportError, AttributeError, ValueError):
        pass
    return None


try:
    import utime as _ut  # the port's own clock (tests/mpy/shims/time.py may shadow ``time``)

    _T_IMPORT = _ut.ticks_ms()
except ImportError:  # CPython
    _ut = None
    _T_IMPORT = 0
_BOOTSEL = _bootsel_window()
BOOTSEL_READS = []  # ms after import of every bootsel_button() call


def bootsel_button():
    if _ut is None:
        return 0
    t = _ut.ticks_diff(_ut.ticks_ms(), _T_IMPORT)
    BOOTSEL_READS.append(t)
    if _BOOTSEL is None:
        return 0
    return 1 if _BOOTSEL[0] <= t < _BOOTSEL[1] else 0


def country(code=None):
    return "XX"
