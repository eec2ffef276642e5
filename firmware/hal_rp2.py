"""The board HAL: RP2040 PIO, DMA, SPI DAC, ADC and watchdog behind the controller's HAL contract
(firmware/controller.py docstring). MicroPython only (machine, rp2, uctypes).

Everything computable (register addresses, control words, the DMA feed plan) lives in
firmware/dma_chain.py and is tested on CPython; this file only performs the register writes.
Design notes, wiring and what is verified only on a board: docs/HARDWARE.md.
"""

import time
from array import array

import machine
import rp2
import uctypes

from firmware import board, dma_chain, impedance, pulse_engine
from firmware import pio_programs as pio

try:
    from typing import TYPE_CHECKING
except ImportError:  # MicroPython has no typing module
    TYPE_CHECKING = False
if TYPE_CHECKING:
    from rp2.asm_pio import *  # noqa: F401,F403  (PIO DSL names for the type checker)

mem32 = machine.mem32
Pin = machine.Pin
ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
ticks_add = time.ticks_add

_PRIME_TIMEOUT_US = 2000  # the DMA fills an 8-word FIFO in well under a microsecond
_ABORT_TIMEOUT_US = 1000  # CHAN_ABORT retires in-flight transfers within a few bus cycles
_SIO_GPIO_IN = 0xD0000004  # SIO GPIO_IN: pad levels, including pins driven by the PIO (RP2040 §2.3.1.7)
# Phase-1 monitoring: the main loop waits at most this long for a due phase-1 reading; a reading
# due later is taken by a later poll. Bounds the host link's added latency.
MONITOR_WAIT_US = 2000
# Only its last stretch runs with interrupts off (USB and timer interrupts are served before it).
# With the old 400 µs window (all of it interrupts-off) the emulated M0+ took almost no readings:
# the main loop, paced by the same timer as the pulses, stayed outside the window (docs/SAFETY.md
# "Phase-1 monitoring timing").
MONITOR_IRQ_OFF_US = 100
# The interpreter's time from choosing the pulse to the start of the wait (schedule arithmetic, mux
# pins; measured on the emulated M0+: up to ~0.9 ms with the old pulse-by-pulse search): only a pulse
# due at least this far ahead is chosen, so the wait never starts after the due time.
MONITOR_PREP_US = 1000
_ANCHOR_WAIT_US = 400  # _anchor: longest wait (interrupts off) for a first-phase edge
_LDAC_PULSE_US = 1  # MCP4822 LDAC low time >= 100 ns


def _assemble(out_count):
    """The generated stim program for ``out_count`` OUT pins (4 with SYNC on channel 0, else 3).

    asm_pio swaps this module's globals for the DSL while it runs the function, so everything the
    function needs comes in through default arguments. ``word()`` places each generated opcode; the
    loader relocates JMP targets by the load offset.
    """

    @rp2.asm_pio(out_init=[rp2.PIO.OUT_LOW] * out_count, out_shiftdir=rp2.PIO.SHIFT_RIGHT, autopull=False,
                 pull_thresh=pio.PULL_THRESHOLD, fifo_join=rp2.PIO.JOIN_TX)
    def stim(ops=pio.OPCODES, wrap_at=pio.WRAP_TARGET, wrap_end=pio.WRAP):
        for i in range(len(ops)):
            if i == wrap_at:
                wrap_target()
            word(ops[i])
            if i == wrap_end:
                wrap()

    return stim


class _Chan:
    """Per-channel runtime state."""

    def __init__(self, ch, addr_of):
        self.ch = ch
        self.pio = board.CH_PIO[ch]
        self.sm_id = board.CH_SM[ch]
        self.sm = rp2.StateMachine(self.pio * 4 + self.sm_id)
        self.offset = 0  # program load offset in PIO instruction memory
        self.data = rp2.DMA()  # feeds the SM's TX FIFO
        self.ctl = rp2.DMA()  # walks the control ring
        # DMA.channel (documented attribute, missing from the rp2 stubs): the hardware channel number.
        self.data_ch = getattr(self.data, "channel")
        self.ctl_ch = getattr(self.ctl, "channel")
        # Register addresses (>= 2**30: heap ints on the board) and control words, computed once here
        # so that no hot or interrupts-off path builds one (docs/HARDWARE.md).
        d, c, pio_id, sm = self.data_ch, self.ctl_ch, self.pio, self.sm_id
        self.r_pc = dma_chain.pio_sm_addr_reg(pio_id, sm)
        self.r_instr = dma_chain.pio_sm_instr_reg(pio_id, sm)
        self.r_pinctrl = dma_chain.pio_sm_pinctrl_reg(pio_id, sm)
        self.r_flevel = dma_chain.pio_flevel(pio_id)
        self.r_ctrl_set = dma_chain.pio_ctrl_set(pio_id)
        self.r_txf = dma_chain.pio_txf(pio_id, sm)
        self.r_d_write = dma_chain.dma_reg(d, dma_chain.DMA_WRITE_ADDR)
        self.r_d_count = dma_chain.dma_reg(d, dma_chain.DMA_TRANS_COUNT)
        self.r_d_ctrl = dma_chain.dma_reg(d, dma_chain.DMA_AL1_CTRL)
        self.r_d_trig = dma_chain.dma_reg(d, dma_chain.DMA_AL3_READ_ADDR_TRIG)
        self.r_c_read = dma_chain.dma_reg(c, dma_chain.DMA_READ_ADDR)
        self.r_c_write = dma_chain.dma_reg(c, dma_chain.DMA_WRITE_ADDR)
        self.r_c_count = dma_chain.dma_reg(c, dma_chain.DMA_TRANS_COUNT)
        self.r_c_ctrl = dma_chain.dma_reg(c, dma_chain.DMA_AL1_CTRL)
        self.sm_bit = 1 << sm  # SM_ENABLE bit in PIO CTRL
        self.dma_bits = 1 << d | 1 << c  # CHAN_ABORT / MULTI_CHAN_TRIGGER bits
        self.d_run = dma_chain.data_ctrl(sm, c)  # chains to the control channel
        self.d_cut = dma_chain.data_ctrl(sm, d)  # CHAIN_TO = itself: no chain (stop)
        self.d_off = self.d_cut & ~dma_chain.CTRL_EN
        self.c_run = dma_chain.control_ctrl(c)
        self.c_off = self.c_run & ~dma_chain.CTRL_EN
        # IN_BASE that can never pass `wait 1 pin 0` while the SM waits: its own POS pin (the first
        # OUT pin; driven low by this SM until it leaves its wait). disarm() writes it.
        self.blind_pin = board.CH_POS[ch]
        self.pinctrl_blind = 0  # PINCTRL with IN_BASE = blind_pin, set by start()
        self.waits = False  # started to wait for a trigger (start's wait_trigger)
        self.cut_nonnull = -1  # >= 0 after stop() cut the chain: non-null entries it had read
        self.retired = []  # [(switch entry, buffers)]: an old plan's buffers until the DMA is past them
        # Control ring: 2**RING_BITS bytes aligned to its size (the DMA read ring wraps on the
        # address bits), carved out of a buffer twice as large.
        self.ring_store = array("I", [0] * (2 * dma_chain.RING_LEN))
        a = uctypes.addressof(self.ring_store)
        self.ring_base = dma_chain.aligned_offset(a, 1 << dma_chain.RING_BITS)
        self.ring_addr = a + 4 * self.ring_base
        self.feeder = dma_chain.Feeder(self.ring_store, self.ring_base, dma_chain.RING_LEN, addr_of)
        self.p = 1
        self.active = False
        self.last_abs = 0
        self.idle_since = None
        self.final_pulses = 0
        self.buffers = []  # keep every block buffer alive while the DMA may read it
        self.pending_dac = None  # (abs entry, a, b): latch when the stream reaches that entry
        self.last_ohm = None  # last valid impedance reading (None: none yet)
        # phase-1 monitoring (phase1_samples): the schedule of the running train
        self.train = None
        self.t0_us = None  # ticks_us of the train's pulse-0 schedule origin (None: not anchored yet)
        self.first_bit = 0  # SIO GPIO_IN bit of the first-phase pin
        self.origin_ticks = 0  # ticks from t0_us to pulse 0's phase-1 start
        self.mon_next = 0  # index of the next pulse that may be read (from the current origin)
        self.mon_base = 0  # pulses before the current origin (phase1_samples moves it by whole cycles)
        self.mon_last_us = None  # ticks_us of the last reading


class Rp2Hal:
    channels = board.CHANNELS

    def __init__(self):
        # 1. Clock, then every drive pin an SIO output driven low (POS/NEG/RECOVERY/SYNC).
        machine.freq(board.SYS_CLK_HZ)
        self._drive = []
        for ch in range(board.CHANNELS):
            for p in (board.CH_POS[ch], board.CH_NEG[ch], board.CH_RECOVERY[ch]):
                self._drive.append(Pin(p, Pin.OUT, value=0))
        self._drive.append(Pin(board.SYNC_PIN, Pin.OUT, value=0))
        # 2. DACs: chip selects idle high, LDAC high, both outputs of every MCP4822 shut down.
        self._cs = [Pin(p, Pin.OUT, value=1) for p in board.CH_DAC_CS]
        self._ldac = Pin(board.DAC_LDAC_PIN, Pin.OUT, value=1)
        self._spi = machine.SPI(board.DAC_SPI_ID, baudrate=board.DAC_BAUD, polarity=0, phase=0, bits=8,
                                firstbit=machine.SPI.MSB, sck=Pin(board.DAC_SCK_PIN),
                                mosi=Pin(board.DAC_MOSI_PIN), miso=None)
        self._dacbuf = bytearray(2)
        for ch in range(board.CHANNELS):
            self._dac_shutdown(ch, latch=False)
        self._latch()
        # 3. Watchdog (WDT_TIMEOUT_MS, docs/HARDWARE.md), then the reset reason.
        self._wdt = machine.WDT(timeout=dma_chain.WDT_TIMEOUT_MS)
        self._reset_reason = dma_chain.reset_reason_code(
            machine.reset_cause(), getattr(machine, "PWRON_RESET", 1), getattr(machine, "WDT_RESET", 3),
            getattr(machine, "SOFT_RESET", -1))
        # Inputs: triggers (pulled down: an open input never triggers), ADC mux, ADC.
        self._trig = [Pin(p, Pin.IN, Pin.PULL_DOWN) for p in board.TRIG_PINS]
        self._mux = [Pin(p, Pin.OUT, value=0) for p in board.ADC_MUX_SEL_PINS]
        self._adc = machine.ADC(board.ADC_PIN)
        self._led = Pin(board.LED_PIN, Pin.OUT, value=0)
        # PIO programs (one per OUT width) and one SM per channel, disabled; sm.init hands the
        # pins to the PIO with out_init = OUT_LOW, so they stay low.
        self._progs = {}  # type: dict
        for n in board.CH_OUT_COUNT:
            if n not in self._progs:
                self._progs[n] = _assemble(n)
        self._ch = [_Chan(ch, self._addr_of) for ch in range(board.CHANNELS)]
        for st in self._ch:
            self._init_sm(st, board.TRIG1_PIN)

    # ---- identity, time, watchdog --------------------------------------------------------------
    def board_id(self):
        return bytes(machine.unique_id())[:8]

    def reset_reason(self):
        return self._reset_reason

    def time_us(self):
        return time.ticks_us()

    def feed_watchdog(self):
        self._wdt.feed()

    # ---- DAC -----------------------------------------------------------------------------------
    def _dac_write(self, ch, cmd):
        b = self._dacbuf
        b[0] = cmd >> 8 & 0xFF
        b[1] = cmd & 0xFF
        cs = self._cs[ch]
        cs.value(0)
        self._spi.write(b)
        cs.value(1)

    def _latch(self):
        """LDAC low pulse: every DAC's input registers go to its outputs together."""
        self._ldac.value(0)
        time.sleep_us(_LDAC_PULSE_US)
        self._ldac.value(1)

    def _dac_set(self, ch, code_a, code_b, latch=True):
        self._dac_write(ch, dma_chain.dac_word(False, code_a))
        self._dac_write(ch, dma_chain.dac_word(True, code_b))
        if latch:
            self._latch()

    def _dac_shutdown(self, ch, latch=True):
        self._dac_write(ch, board.DAC_CMD_SHUTDOWN_A)
        self._dac_write(ch, board.DAC_CMD_SHUTDOWN_B)
        if latch:
            self._latch()

    # ---- PIO -----------------------------------------------------------------------------------
    def _init_sm(self, st, in_pin):
        """(Re)initialise a channel's SM, disabled (forced stop: pins driven idle), FIFOs cleared,
        PC at the program start."""
        prog = self._progs[board.CH_OUT_COUNT[st.ch]]
        self._halt(st)
        st.sm.init(prog, freq=board.SYS_CLK_HZ, out_base=Pin(board.CH_OUT_BASE[st.ch]), in_base=Pin(in_pin),
                   out_shiftdir=rp2.PIO.SHIFT_RIGHT, pull_thresh=pio.PULL_THRESHOLD)
        # sm.init leaves PC at the program's load offset (pio_sm_init jumps there).
        st.offset = mem32[st.r_pc] & 0x1F

    def _halt(self, st):
        """Forced stop of a channel's SM: disable it and drive its OUT pins low (``mov pins, null``
        executed through SMx_INSTR, which works on a disabled SM) in one interrupts-off section. On
        silicon a disabled SM holds its pins, so disabling alone could leave a drive pin on. Only
        used on an SM that is not inside a pulse (never fired, drained, or being re-initialised).
        ``sm.active(0)`` is pico-sdk's pio_sm_set_enabled(false): a read-modify-write of PIO CTRL that
        clears only this SM's enable bit (interrupts are off and core 1 is unused: nothing else
        writes CTRL in between)."""
        irq = machine.disable_irq()
        st.sm.active(0)  # pio_sm_set_enabled(false): clears its SM_ENABLE bit
        mem32[st.r_instr] = dma_chain.MOV_PINS_NULL
        machine.enable_irq(irq)

    def _set_pc(self, st, entry):
        mem32[st.r_instr] = dma_chain.jmp(st.offset + entry)

    def _pc(self, st):
        return (mem32[st.r_pc] - st.offset) & 0x1F

    def _tx_level(self, st):
        return (mem32[st.r_flevel] >> (8 * st.sm_id)) & 0xF

    # ---- DMA -----------------------------------------------------------------------------------
    @staticmethod
    def _addr_of(block):
        return block.addr

    @staticmethod
    def _busy_reg(reg_ctrl):
        """BUSY of a DMA channel from its (precomputed) AL1_CTRL address."""
        return mem32[reg_ctrl] & dma_chain.CTRL_BUSY

    def _abort(self, st):
        """Abort both DMA channels of a channel, per RP2040 erratum E13: clear EN on both first (so
        neither can be re-triggered by the other's chain), then CHAN_ABORT, then wait (bounded)
        until CHAN_ABORT reads 0 and neither channel is BUSY, before anything reconfigures them."""
        mem32[st.r_d_ctrl] = st.d_off
        mem32[st.r_c_ctrl] = st.c_off
        bits = st.dma_bits
        mem32[dma_chain.DMA_CHAN_ABORT] = bits
        t0 = ticks_us()
        while (mem32[dma_chain.DMA_CHAN_ABORT] & bits or mem32[st.r_d_ctrl] & dma_chain.CTRL_BUSY
               or mem32[st.r_c_ctrl] & dma_chain.CTRL_BUSY) and ticks_diff(ticks_us(), t0) < _ABORT_TIMEOUT_US:
            pass

    def _consumed(self, st):
        """Absolute index of the next ring entry the control channel will read."""
        ra = mem32[st.r_c_read]
        slot = ((ra - st.ring_addr) >> 2) & (dma_chain.RING_LEN - 1)
        st.last_abs = st.feeder.unwrap(st.last_abs, slot)
        return st.last_abs

    def _buffers(self, plan):
        bufs = []
        for b in plan.blocks:
            b.buf = array("I", b.words)
            b.addr = uctypes.addressof(b.buf)
            bufs.append(b.buf)
        return bufs

    def _release(self, st, consumed):
        """Drop retired buffers the DMA can no longer read: the control channel has read the switch
        entry (consumed > switch), so the data channel has finished every entry before it."""
        keep = []
        for sw, bufs in st.retired:
            if consumed <= sw:
                keep.append((sw, bufs))
        st.retired = keep

    def _configure_dma(self, st):
        mem32[st.r_d_write] = st.r_txf
        mem32[st.r_d_count] = st.p
        mem32[st.r_d_ctrl] = st.d_run
        mem32[st.r_c_read] = st.ring_addr
        mem32[st.r_c_write] = st.r_d_trig
        mem32[st.r_c_count] = 1
        mem32[st.r_c_ctrl] = st.c_run

    def _shut(self, st):
        """The rest of a forced stop, after _halt: DMA aborted, SM re-initialised (FIFOs cleared,
        PC at the program start, pins low), DAC outputs off, channel inactive."""
        self._abort(st)
        self._init_sm(st, board.TRIG1_PIN)
        st.active = False
        st.waits = False
        st.retired = []
        self._dac_shutdown(st.ch)

    # ---- contract: stimulation -----------------------------------------------------------------
    def start(self, trains, mask, wait_trigger):
        """Load every masked channel, prime its FIFO, then enable all their SMs with ONE write of the
        PIO CTRL set-alias (SM_ENABLE | CLKDIV_RESTART): same PIO cycle. Precondition (the
        controller's): no masked channel is running; a channel still waiting for its trigger is
        disarmed first. Refused (ValueError, before anything changes) for a channel whose train is
        running: a started train is never restarted (it would cut the pulse in progress)."""
        chosen = [st for st in self._ch if mask >> st.ch & 1]
        for st in chosen:
            if st.active and (not st.waits or self.disarm(1 << st.ch)):
                raise ValueError("channel %d is running" % st.ch)
        trig_bits = 0
        expect = {}
        for st in chosen:
            train = trains[st.ch]
            self._halt(st)
            self._abort(st)
            plan = dma_chain.Plan(train)
            st.p = plan.p
            st.retired = []
            st.buffers = self._buffers(plan)
            entries = st.feeder.load(plan)
            wait = wait_trigger[st.ch]
            self._init_sm(st, board.TRIG_PINS[wait - 1] if wait else board.TRIG1_PIN)
            st.pinctrl_blind = dma_chain.pinctrl_in_base(mem32[st.r_pinctrl], st.blind_pin)
            self._set_pc(st, train.entry if wait else pio.SEGMENT_ENTRY)
            self._configure_dma(st)
            st.last_abs = 0
            st.idle_since = None
            st.final_pulses = 0
            st.pending_dac = None
            st.cut_nonnull = -1
            st.waits = bool(wait)
            st.active = True
            # Amplitude before any edge: both directions' codes, latched together.
            self._dac_set(st.ch, train.dac_a, train.dac_b)
            trig_bits |= 1 << st.ctl_ch
            n = entries * plan.p
            expect[st.ch] = n if n < dma_chain.FIFO_DEPTH else dma_chain.FIFO_DEPTH
        mem32[dma_chain.DMA_MULTI_CHAN_TRIGGER] = trig_bits
        t0 = ticks_us()
        for st in chosen:
            while self._tx_level(st) < expect[st.ch] and ticks_diff(ticks_us(), t0) < _PRIME_TIMEOUT_US:
                pass
        sm_mask = 0
        for st in chosen:
            sm_mask |= st.sm_bit
        if chosen:
            mem32[chosen[0].r_ctrl_set] = dma_chain.ctrl_start_value(sm_mask)
        t_start = ticks_us()  # the CTRL write above: the software start's pulse-schedule origin
        for st in chosen:
            train = trains[st.ch]
            st.train = train
            st.first_bit = 1 << (board.CH_NEG[st.ch] if train.first == pulse_engine.NEG else board.CH_POS[st.ch])
            st.t0_us = None if wait_trigger[st.ch] else t_start
            st.origin_ticks = train.delay_ticks + 2  # delay + the entry's 2 set-up ticks
            st.mon_next = 0
            st.mon_base = 0
            st.mon_last_us = None

    def disarm(self, mask):
        """Make every masked channel that waits for its trigger unable to fire, atomically, and report
        which had fired already. Returns the mask of masked channels whose train is running (fired,
        or started without a trigger): those are left running, untouched. A channel that had not
        fired is stopped at once: SM disabled with its pins driven low, DMA aborted, FIFO cleared,
        DAC outputs off; it delivered no pulse.

        One store makes the SM blind: PINCTRL with IN_BASE on the channel's own POS pin, which this
        SM holds low while it waits, so neither `wait 0 pin 0` nor `wait 1 pin 0` can pass any more
        (the pin's 2-flop input synchroniser has seen it low for as long as the SM has waited). The
        PC read after that store is final: below SEGMENT_ENTRY the SM never left its wait; at or
        above it the edge came first (at most a few cycles before the store) and the train runs."""
        fired = 0
        for st in self._ch:
            if not (mask >> st.ch & 1) or not st.active:
                continue
            if not st.waits:
                fired |= 1 << st.ch
                continue
            irq = machine.disable_irq()
            gone = self._blind(st)
            machine.enable_irq(irq)
            if gone:
                fired |= 1 << st.ch
            else:
                self._shut(st)
        return fired

    def _blind(self, st):
        """disarm()'s interrupts-off part for one trigger-waiting channel (the caller holds interrupts
        off): the PINCTRL store, the PC read and, when it never fired, the forced stop (disable +
        ``mov pins, null``). Returns True when it had fired (its train runs)."""
        mem32[st.r_pinctrl] = st.pinctrl_blind
        pc = (mem32[st.r_pc] - st.offset) & 0x1F
        st.waits = False  # either way it waits no more: fired (running) or halted
        if pc >= pio.SEGMENT_ENTRY:
            return True
        st.sm.active(0)
        mem32[st.r_instr] = dma_chain.MOV_PINS_NULL
        st.final_pulses = 0
        return False

    def replace(self, ch, train):
        """Switch a running channel to ``train`` at an entry (pulse) boundary, at most one queued entry
        later: the staged entries are written from the entry after the one the control channel reads
        next, with interrupts off, and the switch point is the one the hardware reports
        (Feeder.commit_replace). The old plan's buffers are kept until the DMA is past the switch."""
        st = self._ch[ch]
        if not st.active:
            return
        st.train = train
        st.first_bit = 1 << (board.CH_NEG[ch] if train.first == pulse_engine.NEG else board.CH_POS[ch])
        st.t0_us = None  # the new timing starts at an unknown pulse boundary: re-anchor on an edge
        plan = dma_chain.Plan(train, p=st.p, with_delay=False)
        bufs = self._buffers(plan)
        st.feeder.prepare_replace(plan)
        feeder = st.feeder
        irq = machine.disable_irq()
        c = self._consumed(st)
        start = c + 1 if c < feeder.head else c
        switch = feeder.commit_replace(start, lambda: self._consumed(st))
        machine.enable_irq(irq)
        # The previous buffers stay alive until the control channel has read the switch entry; a
        # plan that never played (replaced again at the same switch point) is dropped at once.
        if not (st.retired and st.retired[-1][0] == switch):
            st.retired.append((switch, st.buffers))
        st.buffers = bufs
        self._release(st, c)
        # The new amplitude is latched once the stream has pulled every old word (see HARDWARE.md).
        st.pending_dac = (switch, train.dac_a, train.dac_b)

    def stop(self, mask):
        """End every masked channel, whatever its state. A channel waiting for its trigger is disarmed
        at once (never fires afterwards; disarm()). A running one ends at an entry (pulse) boundary:
        ONE store first cuts the chain (the data channel's CHAIN_TO pointed at itself through
        AL1_CTRL), so the entry it is transferring (and a control transfer already in flight, at most
        one entry) is the last; the words in the FIFO complete; then the ring is nulled. The decisive
        store of every masked channel (cut or disarm) comes first, all in one interrupts-off loop,
        before any slow work (ring nulling, DMA abort, DAC). Nothing is aborted mid-pulse; the pins
        are never forced."""
        halted = []
        cut = []
        irq = machine.disable_irq()
        for st in self._ch:  # every masked channel's one decisive store first, all channels together
            if not (mask >> st.ch & 1) or not st.active:
                continue
            if st.waits and not self._blind(st):
                halted.append(st)
            elif st.cut_nonnull < 0:
                mem32[st.r_d_ctrl] = st.d_cut
                cut.append(st)
        machine.enable_irq(irq)
        for st in cut:
            consumed = self._consumed(st)  # frozen now: nothing triggers the control channel
            # Entries the chain read that were not null: the last one read was the 0 when the
            # stream had already ended on it.
            last = st.ring_store[st.ring_base + (consumed - 1) % dma_chain.RING_LEN] if consumed else 0
            st.cut_nonnull = consumed if last else (consumed - 1 if consumed else 0)
            st.feeder.stop(consumed)
        for st in halted:
            self._shut(st)

    def _service(self, st):
        """Top up the ring and apply a deferred DAC change; returns (consumed, chain_alive)."""
        consumed = self._consumed(st)
        alive = self._busy_reg(st.r_d_ctrl) or self._busy_reg(st.r_c_ctrl)
        if alive and st.cut_nonnull < 0:
            st.feeder.fill(consumed)
        if st.retired:
            self._release(st, consumed)
        if st.pending_dac is not None:
            at, a, b = st.pending_dac
            if self._played(st, consumed, alive) >= at:
                self._dac_set(st.ch, a, b)
                st.pending_dac = None
        return consumed, alive

    def _played(self, st, consumed, alive):
        if st.cut_nonnull >= 0:
            nonnull = st.cut_nonnull
        else:
            nonnull = consumed if alive or consumed == 0 else consumed - 1
        remaining = mem32[st.r_d_count] if self._busy_reg(st.r_d_ctrl) else 0
        return dma_chain.entries_played(nonnull, st.p, remaining, self._tx_level(st))

    def running(self, ch):
        """True while the DMA chain is alive, the FIFO holds words, or the last (idle) word may
        still be playing: after the chain has ended (on a 0 entry or cut by stop()) and the FIFO is
        empty, the SM is inside its last word, which is at most ``feeder.max_tail_ticks`` long;
        running() stays True for that long after it first sees the drained state, then stops the SM
        (forced stop: pins driven low, they already are) and shuts the DAC outputs down."""
        st = self._ch[ch]
        if not st.active:
            return False
        consumed, alive = self._service(st)
        if alive or self._tx_level(st):
            st.idle_since = None
            return True
        now = ticks_us()
        if st.idle_since is None:
            st.idle_since = now
            return True
        if ticks_diff(now, st.idle_since) <= dma_chain.ticks_to_us_ceil(st.feeder.max_tail_ticks):
            return True
        st.final_pulses = st.feeder.pulses_after(self._played(st, consumed, False))
        self._halt(st)
        st.active = False
        st.waits = False
        st.retired = []
        self._dac_shutdown(ch)
        return False

    def input_level(self, n):
        """Level of trigger input ``n`` (1 or 2), for gated trains."""
        return self._trig[n - 1].value()

    def waiting(self, ch):
        st = self._ch[ch]
        return st.active and st.waits and self._pc(st) < pio.SEGMENT_ENTRY

    def pulses(self, ch):
        st = self._ch[ch]
        if not st.active:
            return st.final_pulses
        consumed, alive = self._service(st)
        return st.feeder.pulses_after(self._played(st, consumed, alive))

    # ---- contract: phase-1 monitoring ---------------------------------------------------------
    def _pulse_tick(self, train, k):
        """Ticks from the schedule origin to the start of pulse k's phase 1 (k counts from the
        origin, which phase1_samples moves forward by whole cycles, so k and the result stay small)."""
        return pulse_engine.pulse_start_ticks(train, k)

    def _anchor(self, st):
        """Find the schedule origin of a train started by a trigger or changed by replace(): wait
        (bounded) for a rising edge of the first-phase pin and call that pulse 0. Only for trains
        without bursts, whose schedule is the same from every pulse (a burst train is anchored only
        by a software start)."""
        if st.train.pulses_per_cycle != 1:
            return
        irq = machine.disable_irq()
        t0 = ticks_us()
        high = mem32[_SIO_GPIO_IN] & st.first_bit
        while ticks_diff(ticks_us(), t0) < _ANCHOR_WAIT_US:
            now = mem32[_SIO_GPIO_IN] & st.first_bit
            if now and not high:
                st.t0_us = ticks_us()
                st.origin_ticks = 0
                st.mon_next = 0
                st.mon_base = 0
                st.mon_last_us = None
                break
            high = now
        machine.enable_irq(irq)

    def _rebase(self, st, train, k, now):
        """Fold the whole cycles before pulse k into the schedule (mon_base, origin_ticks), then move
        t0_us forward by at most the time already past (``now``): t0_us stays at or before now, so
        every ticks_diff against it stays inside the ticks range (2**29 µs, ~8.9 min) and every
        ticks_add delta is a small int, however long the delay or a cycle (a 1 h interburst is far
        beyond that range: origin_ticks then keeps the rest until its time comes)."""
        n = train.pulses_per_cycle
        c = k // n
        if c > 0:
            st.origin_ticks += c * train.cycle_ticks
            st.mon_base += c * n
            st.mon_next -= c * n  # pulse indexes count from mon_base (a poll may return before using k)
            k -= c * n
        hz = board.SYS_CLK_HZ // 1000000
        past = ticks_diff(now, st.t0_us)
        move = st.origin_ticks // hz
        if move > past:
            move = past
        if move > 0:
            st.t0_us = ticks_add(st.t0_us, move)
            st.origin_ticks -= move * hz
        return k

    def phase1_samples(self, ch, min_interval_us):
        """At most one phase-1 reading per call, CPU-scheduled against the PIO's pulse schedule and
        accepted only on hardware evidence.

        The schedule origin is the start's CTRL write (software start) or an observed rising edge
        (trigger, replace); pulse k's reading is due MONITOR_SAMPLE_NS after its phase-1 start
        (``pulse_engine.pulse_start_ticks`` + the train delay + the entry's 2 ticks). If the next
        due reading (at least ``min_interval_us`` after the last) is within MONITOR_WAIT_US, the CPU
        sets the mux, waits for it (the last MONITOR_IRQ_OFF_US with interrupts off) and converts.
        The reading is kept only if the first-phase pin (SIO GPIO_IN) was high before and after the
        conversion and the hardware timer read after the conversion is still inside pulse k's
        phase 1; its time is the timer
        read just before the conversion started (not the due time). A mistimed reading is dropped,
        never misattributed. Phases shorter than MONITOR_MIN_PHASE_NS (the interpreter's measured
        latency plus margin, docs/SAFETY.md) are not monitored."""
        st = self._ch[ch]
        train = st.train
        if not st.active or train is None:
            return []
        if train.phase1_ticks < pulse_engine.ns_to_ticks(impedance.MONITOR_MIN_PHASE_NS):
            return []
        if st.t0_us is None:
            self._anchor(st)
            if st.t0_us is None:
                return []
        hz = board.SYS_CLK_HZ // 1000000  # ticks per µs
        sample_ticks = pulse_engine.ns_to_ticks(impedance.MONITOR_SAMPLE_NS)
        now = ticks_us()
        k = self._rebase(st, train, st.mon_next, now)
        elapsed = ticks_diff(now, st.t0_us)
        due = elapsed + MONITOR_PREP_US
        if st.mon_last_us is not None:
            due = max(due, ticks_diff(st.mon_last_us, st.t0_us) + min_interval_us)
        total = train.repeats * train.pulses_per_cycle  # 0: until stopped
        lead = st.origin_ticks + sample_ticks
        if train.pulses_per_cycle == 1 and (self._pulse_tick(train, k) + lead) // hz < due:
            # one step to the first pulse due at or after ``due`` (a pulse-by-pulse search costs the
            # interpreter ~20 us per pulse)
            k = (due * hz - lead + train.cycle_ticks - 1) // train.cycle_ticks
        while (self._pulse_tick(train, k) + lead) // hz < due:
            k += 1
        if total and k + st.mon_base >= total:
            return []
        start_ticks = self._pulse_tick(train, k) + st.origin_ticks  # pulse k's phase-1 start
        wait = (start_ticks + sample_ticks) // hz - elapsed
        if wait > MONITOR_WAIT_US:
            return []
        sel = board.CH_ADC_MUX[ch]
        self._mux[0].value(sel & 1)
        self._mux[1].value(sel >> 1 & 1)
        t_k = ticks_add(st.t0_us, (start_ticks + sample_ticks) // hz)
        p_start = ticks_add(st.t0_us, start_ticks // hz)
        phase_us = train.phase1_ticks // hz - 1  # the µs timer's granularity
        bit = st.first_bit
        adc = self._adc
        while ticks_diff(ticks_us(), t_k) < -MONITOR_IRQ_OFF_US:
            pass
        irq = machine.disable_irq()
        if ticks_diff(ticks_us(), t_k) > 0:  # an interrupt made the wait late: skip this pulse
            machine.enable_irq(irq)
            st.mon_next = k + 1
            return []
        while ticks_diff(ticks_us(), t_k) < 0:
            pass
        before = mem32[_SIO_GPIO_IN] & bit
        t_b = ticks_us()
        raw = adc.read_u16()
        t_a = ticks_us()
        after = mem32[_SIO_GPIO_IN] & bit
        machine.enable_irq(irq)
        st.mon_next = k + 1
        if not (before and after and ticks_diff(t_a, p_start) < phase_us):
            return []
        st.mon_last_us = t_k  # the rate cap counts scheduled times (jitter cannot skip a pulse)
        return [(t_b, raw >> (16 - board.ADC_BITS))]

    # ---- contract: impedance -------------------------------------------------------------------
    def measure_impedance(self, ch):
        """Sub-threshold, charge-balanced test pulse through the channel's own PIO/DAC path:
        TEST_CURRENT_UA cathodic for TEST_PULSE_NS, DEAD_TIME_NS idle, the same anodic; the ADC
        (through the mux) converts once in phase 1, at least TEST_SAMPLE_NS after its start.

        Returns the ohms, or None when no try produced a valid reading (never a made-up 0). A
        reading is valid only on hardware evidence: the hardware µs timer read before the state
        machine's start and after the conversion brackets the conversion inside phase 1 (the SM
        starts between the timer reads around the CTRL write; the conversion starts after the read
        before read_u16 and has ended before the read after it). TEST_PULSE_NS is long enough for
        the interpreter's measured latency on the M0+ with margin (docs/SAFETY.md). A running
        channel returns its last valid reading (None before the first)."""
        st = self._ch[ch]
        if st.active:
            return st.last_ohm
        code = pulse_engine.dac_code(impedance.TEST_CURRENT_UA)
        current_ua = pulse_engine.code_to_na(code) // 1000
        ph = pulse_engine.ns_to_ticks(impedance.TEST_PULSE_NS)
        words = array("I", [pulse_engine.make_word(ph, pulse_engine.NEG),
                            pulse_engine.make_word(pulse_engine.DEAD_TICKS, pulse_engine.IDLE),
                            pulse_engine.make_word(ph, pulse_engine.POS),
                            pulse_engine.make_word(pulse_engine.MIN_SEGMENT_TICKS, pulse_engine.IDLE)])
        sel = board.CH_ADC_MUX[ch]
        self._mux[0].value(sel & 1)
        self._mux[1].value(sel >> 1 & 1)
        time.sleep_us((board.ADC_MUX_SETTLE_NS + 999) // 1000)
        self._dac_set(ch, code, code)
        settle_us = impedance.TEST_SAMPLE_NS // 1000 + 1  # +1: the µs timer's granularity
        phase_us = impedance.TEST_PULSE_NS // 1000
        ctrl = st.r_ctrl_set  # precomputed (>= 2**30): nothing is built with interrupts off
        start = dma_chain.ctrl_start_value(st.sm_bit)
        adc = self._adc
        raw = -1
        for _ in range(impedance.TEST_TRIES):  # retry if an interrupt-free window was still too late
            self._abort(st)
            self._init_sm(st, board.TRIG1_PIN)
            self._set_pc(st, pio.SEGMENT_ENTRY)
            st.sm.put(words)
            irq = machine.disable_irq()
            t_cb = ticks_us()
            mem32[ctrl] = start
            t_ca = ticks_us()
            while ticks_diff(ticks_us(), t_ca) < settle_us:
                pass
            t_b = ticks_us()
            v = adc.read_u16()
            t_a = ticks_us()
            machine.enable_irq(irq)
            ok = ticks_diff(t_b, t_ca) >= settle_us and ticks_diff(t_a, t_cb) < phase_us
            t1 = ticks_us()
            while self._tx_level(st) and ticks_diff(ticks_us(), t1) < 10 * phase_us:
                pass
            time.sleep_us(phase_us + 1)  # phase 2 and the idle word finish
            self._halt(st)  # forced stop: disabled with its pins driven low (a disabled SM holds them)
            if ok:
                raw = v >> (16 - board.ADC_BITS)
                break
        self._dac_shutdown(ch)
        if raw < 0:
            return None
        st.last_ohm = impedance.ohms(impedance.adc_to_electrode_uv(raw), current_ua)
        return st.last_ohm

    # ---- crash path (firmware/crash.py, docs/SAFETY.md §7) -------------------------------------
    def safe_state(self, wait_us=board.SAFE_STOP_US):
        """Every output to the safe state without cutting a pulse: stop every stream at its next
        pulse boundary (stop(): the ring is nulled, the entry already handed to the data channel
        completes), wait until each running channel has drained (both DMA channels idle and its TX
        FIFO empty: the SM is inside its final word, which is the idle that ends every entry) for at
        most ``wait_us``, feeding the watchdog; then halt: every SM disabled and its OUT pins driven
        low (``mov pins, null`` through SMx_INSTR, then the pads back to SIO outputs, low), both DMA
        channels aborted, every DAC output shut down. A channel still waiting for its trigger has
        no pulse in progress and is not waited for. Returns True when every stream had drained
        before the halt. Must not raise on a half-initialised or inconsistent HAL state."""
        try:
            self.stop((1 << self.channels) - 1)
        except Exception:  # noqa: BLE001 - the halt below happens anyway
            pass
        t0 = ticks_us()
        drained = False
        while True:
            drained = True
            for st in self._ch:
                if st.active and self._pc(st) >= pio.SEGMENT_ENTRY and (
                        self._busy_reg(st.r_d_ctrl) or self._busy_reg(st.r_c_ctrl) or self._tx_level(st)):
                    drained = False
            if drained or ticks_diff(ticks_us(), t0) >= wait_us:
                break
            self._wdt.feed()
        for st in self._ch:
            self._halt(st)  # disable + mov pins, null in one interrupts-off section
            self._abort(st)
            st.active = False
            st.idle_since = None
            st.pending_dac = None
        for p in self._drive:
            p.init(Pin.OUT, value=0)
        for ch in range(board.CHANNELS):
            self._dac_shutdown(ch, latch=False)
        self._latch()
        self._wdt.feed()
        return drained
