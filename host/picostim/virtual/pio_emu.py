"""Fast, cycle-exact RP2040 PIO emulator for the virtual Pico.

Several state machines (SMs) run on one virtual clock: virtual time is counted in PIO cycles
(``clock_hz``, 125 MHz by default, clock divider 1). The emulator executes PIO opcodes generically
(it knows nothing about picostim's "segments"), each SM with its own TX/RX FIFO, and a per-SM
:class:`~picostim.virtual.dma_model.DmaChannel` that feeds the TX FIFO.

Typical use (what the simulated HAL does)::

    system = PioSystem(125_000_000)
    sm = system.add_state_machine(OPCODES, WRAP_TARGET, WRAP, out_base=2, out_count=4, in_base=20,
                                  fifo_depth=8)
    system.set_pindirs(0b1111 << 2, 0b1111 << 2)       # out_init: the four outputs are outputs
    system.dma(sm).load(delay_blocks, cycle_blocks, repeats)   # pre-fills the FIFO
    system.enable([sm], start_pc=SEGMENT_ENTRY)          # all listed SMs start on the same cycle
    system.run_until(system.now + 125_000_000)
    trace = system.trace({2: "POS", 3: "NEG", 4: "RECOVERY", 5: "SYNC"})

Timing model (all choices documented so tests can pin them down):

* An instruction that starts at cycle ``t`` and does not stall occupies cycles ``t .. t+delay``; the
  next instruction starts at ``t + 1 + delay``. A stalled instruction is retried every cycle; its
  delay starts after it completes. Side-set is asserted on the first cycle even when stalled.
* Pin writes (OUT/SET/MOV pins, side-set, pindirs) made by the instruction at cycle ``t`` are edges
  at sample ``t`` of the trace. Pin *reads* (WAIT, IN/MOV pins, JMP PIN) at cycle ``t`` see outputs
  written up to ``t-1`` and external inputs changed up to ``t`` (no 2-flop input synchroniser is
  modelled: a trigger level set at cycle ``c`` satisfies a ``wait`` at cycle ``c``). Within one
  cycle, when two SMs write the same pin the higher-numbered SM wins, and side-set beats OUT/SET of
  the same instruction (as on the RP2040).
* A pin's level is its output latch when its direction bit is 1, else the external input level
  (set with :meth:`PioSystem.set_input`; default 0, the pad's pull-down). A pull resistor is that
  input level (:meth:`PioSystem.set_pull`: the DAC chip selects' 10 kOhm pull-ups read 1 while
  released). The trace records the effective level.
* GPIO function select: an SM's pin writes (OUT/SET/MOV pins and pindirs, side-set) reach only the
  pins in its ``gpio_mask`` (default every pin): dac.pio's 9-pin OUT over GP19..GP27 writes its
  zero-extended bits to all nine, but GP23-26 are not PIO1's and keep their levels.
* OUT PINS / OUT PINDIRS write OUT_COUNT pins: the shifted bits zero-extended (``out pins, 1`` with
  OUT_COUNT 9 drives the other eight pins' latches to 0). MOV OSR, <src> fills the OSR (shift count
  0); JMP !OSRE compares the shift count with the pull threshold; PUSH/PULL noblock on a full/empty
  FIFO drop the ISR / load X into the OSR.
* Several PIOs (picostim: PIO0's stimulation SMs, PIO1's DAC bus SM) share one clock and one pin
  space in one PioSystem; a WAIT GPIO on a pin another SM drives sees that write one cycle later
  (the 2-flop input synchroniser, 2 more cycles on the chip, is not modelled; see above).
* DMA latency: when a state machine pops a word from its TX FIFO at cycle ``t``, the DMA refills the
  freed slot with a word that can be popped from cycle ``t + dma_latency`` on (default 1, i.e. the
  very next cycle; on the RP2040 DREQ-paced DMA needs a few system clocks, which never matters for a
  program that takes >= 2 cycles per word with a >= 2-deep FIFO). Words loaded by the CPU/HAL while
  the clock is stopped are available immediately (that is how the FIFO is pre-filled before enable).
* Reset state of an SM: X = Y = 0, ISR empty (count 0), OSR empty (count 32, as in pioemu).
* Autopull (documented choice): an OUT that finds the OSR empty (count >= threshold) refills it from
  the FIFO and executes in the same cycle, or stalls while the FIFO is empty; after an OUT that
  reaches the threshold the OSR is refilled in the same cycle if a word is available (so
  ``out pins, 32`` streams one word per cycle, as on the chip). pioemu instead spends one extra stall
  cycle per refill, so the differential tests do not cover autopull.
* Autopush: an IN that would reach the push threshold while the RX FIFO is full stalls before
  shifting; otherwise it shifts and pushes in the same cycle.

CPU-side observers (the HAL's interrupt handlers and busy-waits, modelled at an exact cycle):
``sm.push_hook(t, word)`` after each RX FIFO push; :meth:`PioSystem.at_pull` calls ``fn(t)`` at the
cycle an SM pulls its n-th TX word; anything such a hook does to a FIFO or DMA takes effect at
``t + 1``; :meth:`PioSystem.stop_run` from a hook ends the current run the cycle after ``t``.

Not modelled (raise :class:`PioUnsupported` when executed): IRQ, WAIT IRQ, OUT EXEC, MOV EXEC,
reserved encodings. Clock dividers are not modelled (divider 1).

Acceleration (``accelerate=True``, default) never changes results; it is checked against
cycle-by-cycle execution (``accelerate=False``) and against pioemu by the tests:

* a ``jmp x-- self`` / ``jmp y-- self`` loop is advanced in one step (bounded by ``run_until``'s
  limit and, if it side-sets, by the next event of any other SM);
* a stalled SM sleeps until the event that can release it (a FIFO word becoming available, a DMA
  (re)load, an input change, a pin write by another SM) instead of retrying every cycle;
* an SM that loops through its wrap target in a state that repeats exactly, without producing pin
  edges, touching a FIFO word or stalling (e.g. the stim program idling on an empty FIFO), is skipped
  ahead by whole periods to the next event;
* SMs are scheduled by their next instruction time, so one SM's long delay never steps the others.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from picostim.capture.trace import Channel, Trace
from picostim.virtual.dma_model import DmaChannel

__all__ = ["PioSystem", "StateMachine", "DmaChannel", "PioUnsupported", "decode"]

M32 = 0xFFFFFFFF
INF = float("inf")

# instruction kinds
K_JMP, K_WAIT, K_IN, K_OUT, K_PUSH, K_PULL, K_MOV, K_IRQ, K_SET = range(9)


class PioUnsupported(NotImplementedError):
    """An instruction (or encoding) the emulator deliberately does not model was executed."""


def _rotl(v: int, n: int) -> int:
    n &= 31
    return ((v << n) | (v >> (32 - n))) & M32 if n else v


def _rotr(v: int, n: int) -> int:
    n &= 31
    return ((v >> n) | (v << (32 - n))) & M32 if n else v


def _bitrev(x: int) -> int:
    return int(f"{x & M32:032b}"[::-1], 2)


def _pinmask(base: int, count: int) -> int:
    return _rotl((1 << count) - 1, base) if count < 32 else M32


def decode(opcode: int, side_set_count: int = 0, side_set_opt: bool = False) -> tuple:
    """Decode one 16-bit opcode to ``(kind, a, b, c, delay, sideset_or_None)``.

    ``side_set_count`` is the number of side-set *pins*; with ``side_set_opt`` one more bit (the
    enable, MSB of the delay/side-set field) is used, as pioasm's ``.side_set N opt`` does.
    """
    opcode &= 0xFFFF
    field = (opcode >> 8) & 0x1F
    ss_bits = side_set_count + (1 if side_set_opt else 0)
    if ss_bits > 5:
        raise ValueError("side-set uses more than 5 bits")
    dbits = 5 - ss_bits
    delay = field & ((1 << dbits) - 1)
    ss_raw = field >> dbits
    ss: Optional[int]
    if side_set_count == 0 and not side_set_opt:
        ss = None
    elif side_set_opt:
        ss = (ss_raw & ((1 << side_set_count) - 1)) if (ss_raw >> side_set_count) & 1 else None
    else:
        ss = ss_raw
    major = opcode >> 13
    low = opcode & 0xFF
    if major == 0:
        return (K_JMP, (low >> 5) & 7, low & 0x1F, 0, delay, ss)
    if major == 1:
        return (K_WAIT, (low >> 7) & 1, (low >> 5) & 3, low & 0x1F, delay, ss)
    if major == 2:
        return (K_IN, (low >> 5) & 7, (low & 0x1F) or 32, 0, delay, ss)
    if major == 3:
        return (K_OUT, (low >> 5) & 7, (low & 0x1F) or 32, 0, delay, ss)
    if major == 4:
        # bit7: 0 push / 1 pull; bit6 iffull/ifempty; bit5 block; bits 4..0 must be 0
        kind = K_PULL if low & 0x80 else K_PUSH
        return (kind, (low >> 6) & 1, (low >> 5) & 1, low & 0x1F, delay, ss)
    if major == 5:
        return (K_MOV, (low >> 5) & 7, (low >> 3) & 3, low & 7, delay, ss)
    if major == 6:
        return (K_IRQ, low, 0, 0, delay, ss)
    return (K_SET, (low >> 5) & 7, low & 0x1F, 0, delay, ss)


class StateMachine:
    """One PIO state machine: registers, FIFOs, configuration and counters.

    Counters the HAL may read: ``instructions`` (completed instructions), ``words_pulled`` (TX FIFO
    words taken by PULL/autopull), ``blocks_consumed`` (words pulled that were the last word of a DMA
    block -- one per pulse group for picostim), ``empty_pulls`` (``pull noblock`` on an empty FIFO),
    ``stall_cycles`` (cycles spent stalled, up to the last time the SM ran), ``tx_stalled`` (sticky,
    like FDEBUG.TXSTALL), ``last_pull_cycle``. ``stalled`` tells whether the SM is currently stalled.
    """

    def __init__(self, system: "PioSystem", index: int, program: Sequence[int], wrap_target: int,
                 wrap: int, *, out_base: int = 0, out_count: int = 0, set_base: int = 0,
                 set_count: int = 0, in_base: int = 0, side_set_base: int = 0, side_set_count: int = 0,
                 side_set_opt: bool = False, side_set_pindirs: bool = False, jmp_pin: int = 0,
                 out_shift_right: bool = True, in_shift_right: bool = True, autopull: bool = False,
                 pull_threshold: int = 32, autopush: bool = False, push_threshold: int = 32,
                 fifo_depth: int = 4, rx_fifo_depth: int = 4, status_sel: int = 0, status_n: int = 0,
                 gpio_mask: int = M32):
        prog = [int(o) & 0xFFFF for o in program]
        if not 1 <= len(prog) <= 32:
            raise ValueError("a PIO program has 1..32 instructions")
        if not (0 <= wrap_target < len(prog) and 0 <= wrap < len(prog)):
            raise ValueError("wrap_target/wrap outside the program")
        for name, v in (("pull_threshold", pull_threshold), ("push_threshold", push_threshold)):
            if not 1 <= v <= 32:
                raise ValueError(f"{name} must be 1..32")
        if not (0 <= out_count <= 32 and 0 <= set_count <= 5 and 0 <= side_set_count <= 5):
            raise ValueError("pin count out of range")
        if fifo_depth < 1 or rx_fifo_depth < 0:
            raise ValueError("bad FIFO depth")
        self.system = system
        self.index = index
        self.program = prog
        self.decoded = [decode(o, side_set_count, side_set_opt) for o in prog]
        self.wrap_target = wrap_target
        self.wrap = wrap
        self.out_base, self.out_count = out_base & 31, out_count
        self.set_base, self.set_count = set_base & 31, set_count
        self.in_base = in_base & 31
        self.side_set_base, self.side_set_count = side_set_base & 31, side_set_count
        self.side_set_pindirs = side_set_pindirs
        self.jmp_pin = jmp_pin & 31
        self.out_shift_right, self.in_shift_right = out_shift_right, in_shift_right
        self.autopull, self.pull_threshold = autopull, pull_threshold
        self.autopush, self.push_threshold = autopush, push_threshold
        self.fifo_depth, self.rx_fifo_depth = fifo_depth, rx_fifo_depth
        self.status_sel, self.status_n = status_sel, status_n
        # GPIO function select: only pins in ``gpio_mask`` are routed to this SM's PIO; its writes
        # to any other pin reach no pad (e.g. dac.pio's OUT over GP19..GP27 never drives GP23-26).
        self.gpio_mask = gpio_mask & M32
        self._out_mask = _pinmask(self.out_base, out_count) & self.gpio_mask
        self._set_mask = _pinmask(self.set_base, set_count) & self.gpio_mask
        self._ss_mask = _pinmask(self.side_set_base, side_set_count) & self.gpio_mask
        self._pot_wr = self._out_mask | self._set_mask | self._ss_mask  # pins this SM can ever drive
        self._next_pc = [wrap_target if pc == wrap else (pc + 1) & 31 for pc in range(len(prog))]
        # registers
        self.pc = 0
        self.x = 0
        self.y = 0
        self.osr = 0
        self.osr_count = 32
        self.isr = 0
        self.isr_count = 0
        self.tx: deque = deque()  # entries (available_from_cycle, word, last_of_block)
        self.rx: deque = deque()
        self.dma = DmaChannel()
        self.dma._system = system
        self.dma._sm = self
        # CPU-side observers (the HAL's interrupt handlers, modelled at the exact cycle):
        # push_hook(t, word) after every word pushed into the RX FIFO; see PioSystem.at_pull.
        self.push_hook = None
        self._pull_hooks: list = []  # sorted (words_pulled value, seq, fn)
        # run state
        self.enabled = False
        self.next_time: float = INF
        self.stalled = False
        self._stall_t = 0
        self._delay_left = 0  # only used with accelerate=False
        self._pin_wait = False
        # counters
        self.instructions = 0
        self.words_pulled = 0
        self.blocks_consumed = 0
        self.empty_pulls = 0
        self._stall_acc = 0
        self.tx_stalled = False
        self.last_pull_cycle = -1
        # idle-loop detection
        self._dirty = True
        self._rd_mask = 0  # pins read / written since the last idle snapshot
        self._wr_mask = 0
        self._snap_key: Optional[tuple] = None
        self._snap_t = 0
        self._snap_ctr = (0, 0)

    # ---------------------------------------------------------------- CPU-side FIFO access
    @property
    def stall_cycles(self) -> int:
        """Cycles spent stalled so far (up to ``system.now``)."""
        extra = max(0, self.system.now - self._stall_t) if self.stalled else 0
        return self._stall_acc + extra

    @property
    def tx_level(self) -> int:
        """Words in the TX FIFO (including any the DMA is still delivering)."""
        return len(self.tx)

    def put(self, word: int) -> bool:
        """CPU write to TXF: returns False (and drops the word, like TXOVER) when the FIFO is full."""
        if len(self.tx) >= self.fifo_depth:
            return False
        self.tx.append((self.system._cpu_time(), int(word) & M32, False))
        self.system._wake_tx(self)
        return True

    def get(self) -> Optional[int]:
        """CPU read of RXF (None when empty)."""
        if not self.rx:
            return None
        w = self.rx.popleft()
        self.system._wake_rx(self)
        return w

    def clear_fifos(self) -> None:
        self.tx.clear()
        self.rx.clear()

    def restart(self) -> None:
        """SM_RESTART: clear shift counters/ISR, delay and stall state (X, Y, OSR contents kept)."""
        self.isr = 0
        self.isr_count = 0
        self.osr_count = 32
        self._delay_left = 0
        self.stalled = False
        self._snap_key = None

    def __repr__(self) -> str:
        return (f"<SM{self.index} pc={self.pc} x={self.x:#x} y={self.y:#x} osr={self.osr:#x}/{self.osr_count}"
                f" tx={len(self.tx)} next={self.next_time} en={self.enabled}>")


class PioSystem:
    """A set of PIO state machines on one virtual clock, with GPIO, inputs and DMA.

    ``now`` is the current cycle: everything before ``now`` has been executed; instructions at
    ``now`` and later have not.
    """

    def __init__(self, clock_hz: float = 125_000_000, *, accelerate: bool = True, dma_latency: int = 1):
        if dma_latency < 1:
            raise ValueError("dma_latency must be >= 1 cycle")
        self.clock_hz = float(clock_hz)
        self.accelerate = accelerate
        self.dma_latency = dma_latency
        self.sms: list[StateMachine] = []
        self.now = 0
        self._out = 0  # output latches
        self._dir = 0  # pin directions (1 = output)
        self._in = 0  # external input levels
        self._eff = 0  # effective levels
        self._eff_prev = 0  # effective levels at the start of cycle _eff_prev_t (before outputs)
        self._eff_prev_t = -1
        self._initial_eff = 0
        self._edges: list[list[int]] = [[] for _ in range(32)]
        self._inputs: list[tuple[int, int, int, int]] = []  # (cycle, seq, pin, level), pending
        self._in_seq = 0
        self._pin_waiters: list[StateMachine] = []
        self._exec_t: Optional[int] = None  # cycle being executed inside run_until (hooks run there)
        self._stop_at: Optional[int] = None
        self._hook_seq = 0

    def stop_run(self) -> None:
        """From a hook: end the current :meth:`run_until` after the cycle being executed (``now``
        becomes that cycle + 1; instructions of other SMs in the same cycle still execute), e.g.
        a CPU busy-wait that ends when it sees an RX FIFO word. No effect outside a run."""
        if self._exec_t is not None:
            self._stop_at = self._exec_t + 1

    def _cpu_time(self) -> int:
        """When a CPU-side action (HAL call, or a hook running inside an instruction at cycle t)
        takes effect: ``now`` between runs, ``t + 1`` inside a hook."""
        return self.now if self._exec_t is None else self._exec_t + 1

    # ================================================================ configuration
    def add_state_machine(self, program: Sequence[int], wrap_target: int, wrap: int, **config) -> StateMachine:
        """Add an SM running ``program`` (opcodes, loaded at offset 0) with wrap config.

        Keyword config: ``out_base, out_count, set_base, set_count, in_base, side_set_base,
        side_set_count, side_set_opt, side_set_pindirs, jmp_pin, out_shift_right, in_shift_right,
        autopull, pull_threshold, autopush, push_threshold, fifo_depth`` (4, or 8 for a joined TX
        FIFO), ``rx_fifo_depth``, ``status_sel`` (0 TX level, 1 RX level), ``status_n``,
        ``gpio_mask`` (pins whose GPIO function is this SM's PIO: its pin writes reach only those;
        default every pin).
        """
        sm = StateMachine(self, len(self.sms), program, wrap_target, wrap, **config)
        self.sms.append(sm)
        return sm

    def dma(self, sm: StateMachine | int) -> DmaChannel:
        """The DMA channel feeding ``sm``'s TX FIFO."""
        return self._sm(sm).dma

    def state_machine(self, index: int) -> StateMachine:
        return self.sms[index]

    def _sm(self, sm) -> StateMachine:
        return self.sms[sm] if isinstance(sm, int) else sm

    def set_pindirs(self, mask: int, dirs: int) -> None:
        """Set pin directions (1 = output) for the pins in ``mask``, at ``now`` (CPU side)."""
        self._dir = (self._dir & ~mask | dirs & mask) & M32
        self._refresh(self.now, cpu=True)

    def set_outputs(self, mask: int, levels: int) -> None:
        """Set output latch levels for the pins in ``mask``, at ``now`` (e.g. ``out_init`` levels)."""
        self._out = (self._out & ~mask | levels & mask) & M32
        self._refresh(self.now, cpu=True)

    def set_pull(self, mask: int, levels: int) -> None:
        """Pull resistors (e.g. a 10 kOhm pull-up): from ``now`` on, each pin in ``mask`` reads
        ``levels``' bit whenever its direction is input (nothing drives it). Modelled as the pin's
        external input level, so it is the level the trace records while the pin is released;
        :meth:`set_input` changes it like any input."""
        self._in = (self._in & ~mask | levels & mask) & M32
        self._refresh(self.now, cpu=True)

    def at_pull(self, sm: "StateMachine | int", count: int, fn) -> None:
        """Call ``fn(t)`` at the cycle ``t`` at which ``sm`` pulls its ``count``-th TX word
        (``words_pulled`` reaches ``count``): the model of a CPU reacting at that exact cycle (an
        action ``fn`` takes, e.g. queueing DMA words, takes effect at ``t + 1``). Called at once
        (with ``t = now``) when ``sm`` has pulled that many words already."""
        sm = self._sm(sm)
        if sm.words_pulled >= count:
            fn(self.now)
            return
        self._hook_seq += 1
        bisect.insort(sm._pull_hooks, (count, self._hook_seq, fn))

    def set_input(self, pin: int, level: int, at_cycle: Optional[int] = None) -> None:
        """Schedule an external input change: ``pin`` becomes ``level`` at ``at_cycle`` (>= now)."""
        t = self.now if at_cycle is None else int(at_cycle)
        if t < self.now:
            raise ValueError(f"input change at {t} is in the past (now={self.now})")
        self._in_seq += 1
        bisect.insort(self._inputs, (t, self._in_seq, pin & 31, 1 if level else 0))
        for sm in self._pin_waiters:
            if sm.next_time > t:
                sm.next_time = t

    def set_inputs(self, timeline: Iterable[tuple[int, int, int]]) -> None:
        """Schedule many ``(cycle, pin, level)`` input changes."""
        for c, p, lv in timeline:
            self.set_input(p, lv, c)

    # ================================================================ run control
    def enable(self, sms: Iterable[StateMachine | int], start_pc: int | Mapping | Sequence | None = None,
               at_cycle: Optional[int] = None) -> None:
        """Enable several SMs so they execute their first instruction on the same cycle.

        Like writing the SM_ENABLE mask of CTRL. ``start_pc`` is one PC for all, or a mapping
        SM/index -> PC, or a sequence parallel to ``sms``; None keeps each SM's PC. ``at_cycle``
        defaults to ``now``.
        """
        sms = [self._sm(s) for s in sms]
        t = self.now if at_cycle is None else int(at_cycle)
        if t < self.now:
            raise ValueError("cannot enable in the past")
        for i, sm in enumerate(sms):
            if start_pc is not None:
                if isinstance(start_pc, int):
                    pc = start_pc
                elif isinstance(start_pc, Mapping):
                    pc = start_pc.get(sm, start_pc.get(sm.index, sm.pc))
                else:
                    pc = start_pc[i]
                if not 0 <= pc < len(sm.program):
                    raise ValueError(f"start pc {pc} outside the program")
                sm.pc = pc
            sm.enabled = True
            sm.stalled = False
            sm._delay_left = 0
            sm.next_time = t
            sm._snap_key = None

    def disable(self, sms: Iterable[StateMachine | int]) -> None:
        """Stop SMs at ``now`` (pins hold their levels, state is kept)."""
        for s in sms:
            sm = self._sm(s)
            if sm.stalled:
                sm._stall_acc += max(0, self.now - sm._stall_t)
            sm.enabled = False
            sm.stalled = False
            sm.next_time = INF
            if sm._pin_wait:
                sm._pin_wait = False
                self._pin_waiters.remove(sm)

    def exec_instruction(self, sm: StateMachine | int, opcode: int) -> None:
        """CPU write to SMx_INSTR at ``now``: execute ``opcode`` at once, also on a disabled SM (the
        RP2040 does; pico-sdk's pio_sm_exec). Modelled: ``mov pins, <x|y|null|osr|isr>`` (OUT pins,
        the forced-stop path's ``mov pins, null``) and ``jmp <addr>`` (always); anything else raises
        :class:`PioUnsupported`. A pin change is an edge at ``now``."""
        sm = self._sm(sm)
        kind, a, b, c, _delay, _ss = decode(opcode)
        if kind == K_MOV and a == 0 and b == 0 and c in (1, 2, 3, 6, 7):
            v = {1: sm.x, 2: sm.y, 3: 0, 6: sm.isr, 7: sm.osr}[c]
            mask = sm._out_mask
            sm._wr_mask |= mask
            self._out = (self._out & ~mask) | (_rotl(v, sm.out_base) & mask)
            self._refresh(self.now, cpu=True)
            sm._snap_key = None
        elif kind == K_JMP and a == 0:
            if not 0 <= b < len(sm.program):
                raise PioUnsupported(f"SM{sm.index}: jmp to {b} outside the program")
            if sm.stalled:
                sm._stall_acc += max(0, self.now - sm._stall_t)
            if sm._pin_wait:  # a stalled WAIT is abandoned
                sm._pin_wait = False
                self._pin_waiters.remove(sm)
            sm.pc = b
            sm.stalled = False
            sm._delay_left = 0
            sm._snap_key = None
            if sm.enabled:  # an enabled SM executes the new PC from the next cycle on
                sm.next_time = self._cpu_time()
        else:
            raise PioUnsupported(f"SM{sm.index}: SMx_INSTR {opcode:#06x} is not modelled")

    def run_for(self, cycles: int) -> None:
        self.run_until(self.now + int(cycles))

    def run_until(self, cycle: int) -> None:
        """Execute every instruction that starts before ``cycle``; then ``now = cycle``."""
        limit = int(cycle)
        if limit < self.now:
            raise ValueError("cannot run backwards")
        sms = self.sms
        inputs = self._inputs
        step = self._step
        try:
            while True:
                best = None
                bt = INF
                for sm in sms:
                    nt = sm.next_time
                    if nt < bt:
                        bt = nt
                        best = sm
                if best is None or bt >= limit:
                    break
                t = int(bt)
                if inputs and inputs[0][0] <= t:
                    self._apply_inputs(t)
                self._exec_t = t
                step(best, t, limit)
                if self._stop_at is not None:
                    limit = min(limit, self._stop_at)
                    self._stop_at = None
        finally:
            self._exec_t = None
        if inputs and inputs[0][0] < limit:
            self._apply_inputs(limit - 1)
        self.now = limit

    # ================================================================ observation
    def pin_level(self, pin: int) -> int:
        """Effective level of ``pin`` now (after everything before ``now``)."""
        return (self._eff >> (pin & 31)) & 1

    @property
    def pins(self) -> int:
        return self._eff

    def edges(self, pin: int) -> list[int]:
        """Cycles at which ``pin``'s effective level toggled (sorted)."""
        return list(self._edges[pin & 31])

    def level_changes(self, pins: Iterable[int] = range(32)) -> list[tuple[int, int, int]]:
        """Every level change of ``pins`` as ``(cycle, pin, new level)``, sorted: the form the
        differential tests compare against other PIO models."""
        out = []
        for p in pins:
            level = (self._initial_eff >> (p & 31)) & 1
            for t in self._edges[p & 31]:
                level ^= 1
                out.append((t, p, level))
        out.sort()
        return out

    def trace(self, pin_names: Mapping[int, str], start: int = 0, end: Optional[int] = None) -> Trace:
        """Trace of the named pins over cycles ``[start, end)`` (default end: ``now``), one sample per
        PIO cycle. Each channel's ``initial`` is the level at ``start``; toggles are relative to
        ``start`` and strictly after it."""
        end = self.now if end is None else int(end)
        if end < start:
            raise ValueError("end < start")
        chans = {}
        for pin, name in pin_names.items():
            e = np.asarray(self._edges[pin & 31], dtype=np.int64)
            lo = int(np.searchsorted(e, start, side="right"))
            hi = int(np.searchsorted(e, end, side="left"))
            init = ((self._initial_eff >> (pin & 31)) & 1) ^ (lo & 1)
            chans[name] = Channel(init, e[lo:hi] - start)
        return Trace(self.clock_hz, end - start, chans)

    # ================================================================ internals: pins
    def _refresh(self, t: int, cpu: bool = False, sm: Optional[StateMachine] = None) -> None:
        new = (self._out & self._dir) | (self._in & ~self._dir & M32)
        old = self._eff
        if new == old:
            return
        if not cpu and self._eff_prev_t != t:
            self._eff_prev = old
            self._eff_prev_t = t
        if t == 0 and cpu and not any(self._edges):
            self._initial_eff = new
            self._eff = new
            return
        changed = new ^ old
        edges = self._edges
        while changed:
            low = changed & -changed
            p = low.bit_length() - 1
            el = edges[p]
            if el and el[-1] == t:
                el.pop()
            else:
                el.append(t)
            changed ^= low
        self._eff = new
        for o in self.sms:
            o._dirty = True
        if self._pin_waiters:
            wt = t if cpu else t + 1
            for w in self._pin_waiters:
                if w is not sm and w.next_time > wt:
                    w.next_time = wt

    def _apply_inputs(self, t: int) -> None:
        inputs = self._inputs
        while inputs and inputs[0][0] <= t:
            c, _, pin, lv = inputs.pop(0)
            bit = 1 << pin
            self._in = (self._in | bit) if lv else (self._in & ~bit)
            old = self._eff
            new = (self._out & self._dir) | (self._in & ~self._dir & M32)
            if new != old:
                if self._eff_prev_t == c:
                    self._eff_prev ^= new ^ old
                el = self._edges[pin]
                if c == 0 and not el and self._eff_prev_t < 0:
                    self._initial_eff ^= bit
                elif el and el[-1] == c:
                    el.pop()
                else:
                    el.append(c)
                self._eff = new
                for sm in self.sms:
                    sm._dirty = True

    def _read_pins(self, t: int) -> int:
        return self._eff_prev if self._eff_prev_t == t else self._eff

    def _write_out(self, mask: int, value: int, t: int, sm: StateMachine) -> None:
        sm._wr_mask |= mask
        new = (self._out & ~mask) | (value & mask)
        if new != self._out:
            self._out = new
            self._refresh(t, sm=sm)

    def _write_dir(self, mask: int, value: int, t: int, sm: StateMachine) -> None:
        sm._wr_mask |= mask
        new = (self._dir & ~mask) | (value & mask)
        if new != self._dir:
            self._dir = new
            self._refresh(t, sm=sm)

    def _next_input_time(self) -> float:
        return self._inputs[0][0] if self._inputs else INF

    # ================================================================ internals: DMA / FIFO
    def _dma_kick(self, sm: StateMachine) -> None:
        """HAL changed the DMA program: top the FIFO up at ``now`` (at ``t + 1`` from a hook)."""
        self._fill(sm, self._cpu_time())
        self._wake_tx(sm)

    def _fill(self, sm: StateMachine, avail: int) -> None:
        tx = sm.tx
        dma = sm.dma
        while len(tx) < sm.fifo_depth:
            nw = dma.next_word()
            if nw is None:
                break
            tx.append((avail, nw[0], nw[1]))

    def _wake_tx(self, sm: StateMachine) -> None:
        t = self._cpu_time()
        if sm.enabled and sm.stalled and sm.next_time > t:
            sm.next_time = t
        sm._snap_key = None

    _wake_rx = _wake_tx

    def _pop_tx(self, sm: StateMachine, t: int) -> int:
        _, w, last = sm.tx.popleft()
        sm.words_pulled += 1
        sm.last_pull_cycle = t
        if last:
            sm.blocks_consumed += 1
        sm._dirty = True
        self._fill(sm, t + self.dma_latency)
        hooks = sm._pull_hooks
        while hooks and hooks[0][0] <= sm.words_pulled:
            hooks.pop(0)[2](t)
        return w

    # ================================================================ internals: execution
    def _stall(self, sm: StateMachine, t: int, wake: float) -> None:
        if not sm.stalled:
            sm.stalled = True
            sm._stall_t = t
        sm._dirty = True
        sm.next_time = wake if self.accelerate else t + 1

    def _step(self, sm: StateMachine, t: int, limit: int) -> None:
        """Execute (or retry) the instruction at ``sm.pc`` starting at cycle ``t``."""
        if sm._delay_left:
            sm._delay_left -= 1
            sm.next_time = t + 1
            return
        if sm.stalled and sm._pin_wait:
            sm._pin_wait = False
            self._pin_waiters.remove(sm)
        pc = sm.pc
        kind, a, b, c, delay, ss = sm.decoded[pc]
        if ss is not None:
            if sm.side_set_pindirs:
                self._write_dir(sm._ss_mask, _rotl(ss, sm.side_set_base), t, sm)
            else:
                self._write_out(sm._ss_mask, _rotl(ss, sm.side_set_base), t, sm)
        nxt = sm._next_pc[pc]

        if kind == K_JMP:
            if a == 0:
                take = True
            elif a == 1:
                take = sm.x == 0
            elif a == 2:
                take = sm.x != 0
                if self.accelerate and take and b == pc:
                    self._collapse_loop(sm, t, limit, delay, ss, True)
                    return
                sm.x = (sm.x - 1) & M32
            elif a == 3:
                take = sm.y == 0
            elif a == 4:
                take = sm.y != 0
                if self.accelerate and take and b == pc:
                    self._collapse_loop(sm, t, limit, delay, ss, False)
                    return
                sm.y = (sm.y - 1) & M32
            elif a == 5:
                take = sm.x != sm.y
            elif a == 6:
                sm._rd_mask |= 1 << sm.jmp_pin
                take = bool((self._read_pins(t) >> sm.jmp_pin) & 1)
            else:
                take = sm.osr_count < sm.pull_threshold
            if take:
                nxt = b
                if a == 0 and b == pc and self.accelerate and ss is None:
                    # `jmp self` forever: nothing observable ever happens again
                    sm.instructions += 1
                    sm.next_time = INF
                    return
        elif kind == K_WAIT:
            pol, src, idx = a, b, c
            if src == 0:
                pin = idx
            elif src == 1:
                pin = (sm.in_base + idx) & 31
            elif src == 2:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: WAIT IRQ is not modelled")
            else:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: reserved WAIT source")
            sm._rd_mask |= 1 << pin
            if ((self._read_pins(t) >> pin) & 1) != pol:
                wake: float = INF
                if ((self._eff >> pin) & 1) == pol:
                    wake = t + 1  # satisfied by a write made in this very cycle
                elif not (self._dir >> pin) & 1:
                    for ev in self._inputs:
                        if ev[2] == pin and ev[0] > t:
                            wake = ev[0]
                            break
                if not sm._pin_wait:
                    sm._pin_wait = True
                    self._pin_waiters.append(sm)
                self._stall(sm, t, wake)
                return
        elif kind == K_IN:
            src, n = a, b
            if sm.autopush and sm.isr_count + n >= sm.push_threshold and len(sm.rx) >= sm.rx_fifo_depth:
                self._stall(sm, t, INF)
                return
            if src == 0:
                sm._rd_mask |= _pinmask(sm.in_base, n)
                v = _rotr(self._read_pins(t), sm.in_base)
            elif src == 1:
                v = sm.x
            elif src == 2:
                v = sm.y
            elif src == 3:
                v = 0
            elif src == 6:
                v = sm.isr
            elif src == 7:
                v = sm.osr
            else:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: reserved IN source {src}")
            if n == 32:
                sm.isr = v
            else:
                v &= (1 << n) - 1
                if sm.in_shift_right:
                    sm.isr = (sm.isr >> n) | (v << (32 - n))
                else:
                    sm.isr = ((sm.isr << n) | v) & M32
            sm.isr_count = min(32, sm.isr_count + n)
            if sm.autopush and sm.isr_count >= sm.push_threshold:
                sm.rx.append(sm.isr)
                sm.isr = 0
                sm.isr_count = 0
                sm._dirty = True
                if sm.push_hook is not None:
                    sm.push_hook(t, sm.rx[-1])
        elif kind == K_OUT:
            dst, n = a, b
            if dst == 7:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: OUT EXEC is not modelled")
            if sm.autopull and sm.osr_count >= sm.pull_threshold:
                if not self._tx_ready(sm, t):
                    sm.tx_stalled = True
                    self._stall(sm, t, self._tx_wake(sm))
                    return
                sm.osr = self._pop_tx(sm, t)
                sm.osr_count = 0
            osr = sm.osr
            if n == 32:
                v = osr
                sm.osr = 0
            elif sm.out_shift_right:
                v = osr & ((1 << n) - 1)
                sm.osr = osr >> n
            else:
                v = osr >> (32 - n)
                sm.osr = (osr << n) & M32
            sm.osr_count = min(32, sm.osr_count + n)
            if dst == 0:
                self._write_out(sm._out_mask, _rotl(v, sm.out_base), t, sm)
            elif dst == 1:
                sm.x = v
            elif dst == 2:
                sm.y = v
            elif dst == 3:
                pass
            elif dst == 4:
                self._write_dir(sm._out_mask, _rotl(v, sm.out_base), t, sm)
            elif dst == 5:
                nxt = v & 31
            else:  # ISR
                sm.isr = v
                sm.isr_count = n
            if sm.autopull and sm.osr_count >= sm.pull_threshold and self._tx_ready(sm, t):
                sm.osr = self._pop_tx(sm, t)
                sm.osr_count = 0
        elif kind == K_PULL:
            ifempty, block = a, b
            if c:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: reserved PULL encoding")
            if ifempty and sm.osr_count < sm.pull_threshold:
                pass
            elif sm.autopull and sm.osr_count == 0:
                pass  # with autopull, PULL is a no-op when the OSR is full
            elif self._tx_ready(sm, t):
                sm.osr = self._pop_tx(sm, t)
                sm.osr_count = 0
            elif block:
                sm.tx_stalled = True
                self._stall(sm, t, self._tx_wake(sm))
                return
            else:
                sm.osr = sm.x
                sm.osr_count = 0
                sm.empty_pulls += 1
        elif kind == K_PUSH:
            iffull, block = a, b
            if c:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: reserved PUSH encoding")
            if iffull and sm.isr_count < sm.push_threshold:
                pass
            elif len(sm.rx) < sm.rx_fifo_depth:
                sm.rx.append(sm.isr)
                sm.isr = 0
                sm.isr_count = 0
                sm._dirty = True
                if sm.push_hook is not None:
                    sm.push_hook(t, sm.rx[-1])
            elif block:
                self._stall(sm, t, INF)
                return
            else:
                sm.isr = 0
                sm.isr_count = 0
        elif kind == K_MOV:
            dst, op, src = a, b, c
            if src == 0:
                sm._rd_mask = M32
                v = _rotr(self._read_pins(t), sm.in_base)
            elif src == 1:
                v = sm.x
            elif src == 2:
                v = sm.y
            elif src == 3:
                v = 0
            elif src == 5:
                lvl = len(sm.tx) if sm.status_sel == 0 else len(sm.rx)
                v = M32 if lvl < sm.status_n else 0
            elif src == 6:
                v = sm.isr
            elif src == 7:
                v = sm.osr
            else:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: reserved MOV source")
            if op == 1:
                v ^= M32
            elif op == 2:
                v = _bitrev(v)
            elif op == 3:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: reserved MOV operation")
            if dst == 0:
                self._write_out(sm._out_mask, _rotl(v, sm.out_base), t, sm)
            elif dst == 1:
                sm.x = v
            elif dst == 2:
                sm.y = v
            elif dst == 5:
                nxt = v & 31
            elif dst == 6:
                sm.isr = v
                sm.isr_count = 0
            elif dst == 7:
                sm.osr = v
                sm.osr_count = 0
            elif dst == 4:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: MOV EXEC is not modelled")
            else:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: reserved MOV destination")
        elif kind == K_SET:
            dst, v = a, b
            if dst == 0:
                self._write_out(sm._set_mask, _rotl(v, sm.set_base), t, sm)
            elif dst == 1:
                sm.x = v
            elif dst == 2:
                sm.y = v
            elif dst == 4:
                self._write_dir(sm._set_mask, _rotl(v, sm.set_base), t, sm)
            else:
                raise PioUnsupported(f"SM{sm.index} pc={pc}: reserved SET destination {dst}")
        else:
            raise PioUnsupported(f"SM{sm.index} pc={pc}: IRQ is not modelled")

        if ss is not None:  # side-set wins over OUT/SET/MOV to the same pins
            if sm.side_set_pindirs:
                self._write_dir(sm._ss_mask, _rotl(ss, sm.side_set_base), t, sm)
            else:
                self._write_out(sm._ss_mask, _rotl(ss, sm.side_set_base), t, sm)
        sm.instructions += 1
        if sm.stalled:
            sm.stalled = False
            sm._stall_acc += t - sm._stall_t
        if nxt >= len(sm.program):
            raise PioUnsupported(f"SM{sm.index}: PC {nxt} is outside the {len(sm.program)}-instruction program")
        sm.pc = nxt
        if self.accelerate:
            sm.next_time = t + 1 + delay
            if nxt == sm.wrap_target and kind != K_WAIT:
                self._idle_check(sm, sm.next_time, limit)
        else:
            sm._delay_left = delay
            sm.next_time = t + 1

    def _tx_ready(self, sm: StateMachine, t: int) -> bool:
        tx = sm.tx
        return bool(tx) and tx[0][0] <= t

    def _tx_wake(self, sm: StateMachine) -> float:
        return sm.tx[0][0] if sm.tx else INF

    def _others_min(self, sm: StateMachine, pins: int) -> float:
        """Earliest next event of another SM that can drive any of ``pins``."""
        m = INF
        for o in self.sms:
            if o is not sm and o.next_time < m and o._pot_wr & pins:
                m = o.next_time
        return m

    def _collapse_loop(self, sm: StateMachine, t: int, limit: int, delay: int, ss, is_x: bool) -> None:
        """``jmp x-- self`` (or y--) with a non-zero counter: run many iterations at once."""
        per = 1 + delay
        reg = sm.x if is_x else sm.y
        total = reg + 1  # iterations until (and including) the fall-through one
        cap = limit
        if ss is not None:
            om = self._others_min(sm, sm._ss_mask)
            if om < cap:
                cap = int(om)
        n = min(total, max(1, -(-(cap - t) // per)))
        reg = (reg - n) & M32
        if is_x:
            sm.x = reg
        else:
            sm.y = reg
        sm.instructions += n
        if n == total:
            nxt = sm._next_pc[sm.pc]
            if nxt >= len(sm.program):
                raise PioUnsupported(f"SM{sm.index}: PC {nxt} is outside the {len(sm.program)}-instruction program")
            sm.pc = nxt
        sm.next_time = t + n * per
        if sm.pc == sm.wrap_target and n == total:
            self._idle_check(sm, sm.next_time, limit)

    def _idle_check(self, sm: StateMachine, t: float, limit: int) -> None:
        """At the wrap target: if the SM's state repeats with nothing observable happening, skip
        whole periods up to the next event."""
        key = (sm.x, sm.y, sm.osr, sm.osr_count, sm.isr, sm.isr_count, len(sm.rx))
        if (not sm._dirty and key == sm._snap_key and not sm.tx and sm.dma.done):
            period = int(t) - sm._snap_t
            if period > 0:
                cap = limit
                touched = sm._rd_mask | sm._wr_mask
                if touched:
                    # the loop reads/writes pins: stop before another SM that can drive them acts
                    om = self._others_min(sm, touched)
                    if om < cap:
                        cap = int(om)
                if sm._rd_mask:
                    ni = self._next_input_time()
                    if ni < cap:
                        cap = int(ni)
                k = (cap - int(t)) // period
                if k > 0:
                    d_ins = sm.instructions - sm._snap_ctr[0]
                    d_emp = sm.empty_pulls - sm._snap_ctr[1]
                    sm.instructions += k * d_ins
                    sm.empty_pulls += k * d_emp
                    t = int(t) + k * period
                    sm.next_time = t
        sm._snap_key = key
        sm._snap_t = int(t)
        sm._snap_ctr = (sm.instructions, sm.empty_pulls)
        sm._dirty = False
        sm._rd_mask = 0
        sm._wr_mask = 0
