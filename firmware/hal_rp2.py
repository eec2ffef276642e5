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

from firmware import board, dac_bus, dma_chain, impedance, pulse_engine
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
# DAC bus (docs/ARCHITECTURE.md "DAC bus", docs/HARDWARE.md): one DMA channel feeds op words to the
# dac state machine from a bounded buffer, one batch at a time; _DAC_BUF_WORDS = 42 updates of one
# channel ([wait, write A, write B]) per batch.
_DAC_BUF_WORDS = 128
_DAC_TAIL = dma_chain.DAC_TX_DEPTH + 2  # words of earlier batches kept in _dwords (see __init__)
_DAC_MARK_TIMEOUT_US = 2000  # a write takes 1.4 us: the HAL's own writes are done far sooner
_DAC_SAFE_POINT_US = 500  # longest wait for the DAC SM to leave a write burst (8 writes: 11 us)


def _assemble_dac():
    """The generated dac program: 32 instructions (all of PIO1's memory: load offset 0), side-set 1
    pin without enable bit. asm_pio makes the side-set optional (EXECCTRL.SIDE_EN) unless every
    instruction calls ``.side()``, so each word goes in without bit 12 and ``.side()`` puts it back:
    the assembled words are exactly the generated ones."""

    @rp2.asm_pio(sideset_init=[rp2.PIO.OUT_LOW], out_shiftdir=rp2.PIO.SHIFT_RIGHT, autopull=False,
                 pull_thresh=pio.DAC_PULL_THRESHOLD)
    def dac(ops=pio.DAC_OPCODES, wrap_at=pio.DAC_WRAP_TARGET, wrap_end=pio.DAC_WRAP):
        for i in range(len(ops)):
            if i == wrap_at:
                wrap_target()
            word(ops[i] & 0xEFFF).side(ops[i] >> 12 & 1)
            if i == wrap_end:
                wrap()

    return dac


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
        self.pending_dac = None  # (abs entry, ops): DAC bus ops to queue when the stream reaches that entry
        self.dac_codes = None  # (dac_a, dac_b) the channel's DAC holds (None: off)
        self.last_ohm = None  # last valid impedance reading (None: none yet)
        # phase-1 monitoring (phase1_samples): the schedule of the running train
        self.train = None
        self.t0_us = None  # ticks_us of the train's pulse-0 schedule origin (None: not anchored yet)
        self.first_bit = 0  # SIO GPIO_IN bit of the first-phase pin
        self.origin_ticks = 0  # ticks from t0_us to pulse 0's phase-1 start
        self.mon_next = 0  # index of the next pulse that may be read (from the current origin)
        self.mon_base = 0  # pulses before the current origin (phase1_samples moves it by whole cycles)
        self.mon_last_us = None  # ticks_us of the last reading
        # a custom sequence's schedule: its own reader (firmware/sequence.py) at the next candidate pulse
        self.mon_reader = None
        self.mon_onset = None  # that pulse's onset ticks from the start's origin (None: no more)
        self.mon_k = 0  # that pulse's index


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
        # 2. DACs: chip selects idle high, LDAC high, both outputs of every MCP4822 shut down by the
        # CPU over SPI0; then LDAC low for good (every DAC output follows its own CS rising edge).
        self._cs = [Pin(p, Pin.OUT, value=1) for p in board.CH_DAC_CS]
        self._ldac = Pin(board.DAC_LDAC_PIN, Pin.OUT, value=1)
        self._spi = machine.SPI(board.DAC_SPI_ID, baudrate=board.DAC_BAUD, polarity=0, phase=0, bits=8,
                                firstbit=machine.SPI.MSB, sck=Pin(board.DAC_SCK_PIN),
                                mosi=Pin(board.DAC_MOSI_PIN), miso=None)
        self._dacbuf = bytearray(2)
        self._dac_cpu_shutdown_writes()
        self._ldac.value(0)
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
        # 4. The DAC bus: PIO1 SM0 (dac.pio) fed by one DMA channel; it takes SCK/MOSI/CS over from
        # SPI0/SIO (_dac_attach) and idles at `pull block`.
        self._dac_init()

    # ---- identity, time, watchdog --------------------------------------------------------------
    def board_id(self):
        return bytes(machine.unique_id())[:8]

    def reset_reason(self):
        return self._reset_reason

    def time_us(self):
        return time.ticks_us()

    def feed_watchdog(self):
        self._wdt.feed()

    # ---- DAC: the CPU path (boot, crash path) ---------------------------------------------------
    def _dac_cpu_shutdown_writes(self):
        """Both outputs of every DAC off, by the CPU over SPI0 (boot and the crash path)."""
        for ch in range(board.CHANNELS):
            self._dac_write(ch, dac_bus.shutdown_command(False))
            self._dac_write(ch, dac_bus.shutdown_command(True))

    def _dac_write(self, ch, cmd):
        """One MCP4822 command over SPI0 by the CPU (pins on SPI0/SIO: boot and _dac_cpu_shutdown)."""
        b = self._dacbuf
        b[0] = cmd >> 8 & 0xFF
        b[1] = cmd & 0xFF
        cs = self._cs[ch]
        cs.value(0)
        self._spi.write(b)
        cs.value(1)

    def _dac_cpu_shutdown(self):
        """Every DAC output off by the CPU, whatever the DAC bus state machine was doing: the SM is
        disabled and its DMA aborted first (nothing from PIO1 reaches the pins any more), the chip
        selects become SIO outputs driven high and SCK/MOSI go back to SPI0, then the shutdown
        commands go out over SPI0 (LDAC is low: each output turns off at its CS rising edge). No step
        waits on the PIO, so it cannot hang; a write the SM was in the middle of is cut (its DAC sees
        a short command, then the full shutdown command). The next DAC use hands the pins back to
        PIO1 (_dac_attach)."""
        irq = machine.disable_irq()
        mem32[self._r_dac_ctrl_clr] = self._dac_sm_bit
        machine.enable_irq(irq)
        self._dac_abort()
        self._dac_reset_queue()
        for cs in self._cs:
            cs.init(Pin.OUT, value=1)
        self._ldac.value(0)  # (held low since boot; asserted again: the commands act at CS rise)
        Pin(board.DAC_SCK_PIN, Pin.ALT, alt=Pin.ALT_SPI)
        Pin(board.DAC_MOSI_PIN, Pin.ALT, alt=Pin.ALT_SPI)
        self._dac_cpu_shutdown_writes()
        self._dac_on_pio = False

    # ---- DAC bus state machine (PIO1 SM0, docs/ARCHITECTURE.md "DAC bus") ----------------------
    def _dac_init(self):
        self._dac_prog = _assemble_dac()
        self._dac_sm = rp2.StateMachine(board.DAC_PIO * 4 + board.DAC_SM)
        self._dac_dma = rp2.DMA()
        d = getattr(self._dac_dma, "channel")
        p, sm = board.DAC_PIO, board.DAC_SM
        # register addresses (>= 2**30: heap ints on the board) and words, computed once
        self._r_dac_ctrl_set = dma_chain.pio_reg(p, dma_chain.PIO_CTRL + dma_chain.REG_ALIAS_SET)
        self._r_dac_ctrl_clr = dma_chain.pio_reg(p, dma_chain.PIO_CTRL + dma_chain.REG_ALIAS_CLR)
        self._r_dac_fstat = dma_chain.pio_reg(p, dma_chain.PIO_FSTAT)
        self._r_dac_flevel = dma_chain.pio_flevel(p)
        self._r_dac_txf = dma_chain.pio_txf(p, sm)
        self._r_dac_rxf = dma_chain.pio_reg(p, dma_chain.PIO_RXF0 + 4 * sm)
        self._r_dac_pc = dma_chain.pio_sm_addr_reg(p, sm)
        self._r_dac_instr = dma_chain.pio_sm_instr_reg(p, sm)
        self._r_dac_pinctrl = dma_chain.pio_sm_pinctrl_reg(p, sm)
        self._r_dac_shift_xor = dma_chain.pio_sm_reg(p, sm, dma_chain.PIO_SM0_SHIFTCTRL) + dma_chain.REG_ALIAS_XOR
        self._r_dd_read = dma_chain.dma_reg(d, dma_chain.DMA_READ_ADDR)
        self._r_dd_write = dma_chain.dma_reg(d, dma_chain.DMA_WRITE_ADDR)
        self._r_dd_count = dma_chain.dma_reg(d, dma_chain.DMA_TRANS_COUNT)
        self._r_dd_trig = dma_chain.dma_reg(d, dma_chain.DMA_CTRL_TRIG)
        self._r_dd_ctrl = dma_chain.dma_reg(d, dma_chain.DMA_AL1_CTRL)
        self._dac_dma_bit = 1 << d
        self._dac_run = dma_chain.dac_ctrl(d)
        self._dac_off = self._dac_run & ~dma_chain.CTRL_EN
        self._dac_sm_bit = 1 << sm
        self._dac_restart_bit = 1 << (dma_chain.CTRL_SM_RESTART_SHIFT + sm)
        self._dac_rxempty = 1 << (dma_chain.FSTAT_RXEMPTY_SHIFT + sm)
        self._dac_pins_pio = dma_chain.dac_pinctrl()
        self._dbuf = array("I", [0] * _DAC_BUF_WORDS)
        self._dbuf_addr = uctypes.addressof(self._dbuf)
        self._dbuf2 = array("I", [0] * _DAC_BUF_WORDS)  # the next batch, built while the DMA runs (_dac_soon)
        self._dbuf2_addr = uctypes.addressof(self._dbuf2)
        self._dq = []  # op words not handed to the DMA yet (self._dqi: the next one)
        self._dqi = 0
        self._dbatch_n = 0  # words of the batch in self._dbuf handed to the DMA
        # the words handed to the DMA that may not have been pulled yet: the batch, after the last
        # FIFO-depth + 2 words of the batches before it (they may still sit in the TX FIFO; the two
        # before them: the word the SM runs and the one before it, which dac_resume_ops needs; with
        # only the FIFO-deep tail, a wait op the SM ran behind a full FIFO, e.g. among bare waits,
        # was unknown and _dac_halt found no safe point until that wait ended)
        self._dwords = []
        self._dac_pending = 0  # marks queued and not seen yet
        self._dac_seen = 0  # marks seen since boot
        self._mark_pulses = [0] * board.CHANNELS
        self._dac_off_words = [dac_bus.shutdown_ops(ch) for ch in range(board.CHANNELS)]
        self._dac_on_pio = False
        self._dac_attach()

    def _dac_attach(self):
        """Hand SCK/MOSI/CS to PIO1 and start the DAC SM, idle: program loaded at offset 0, SM0
        configured (side-set SCK, OUT MOSI + 8 pins, shift right, pull threshold 30, divider 1),
        every OUT latch low and every chip select released (direction 0) before the pads switch, the
        chip-select pads pulled up (the external pull-ups are required as well: docs/HARDWARE.md),
        PC at `next`, enabled: it stalls at `pull block` with SCK low."""
        sm = self._dac_sm
        sm.init(self._dac_prog, freq=board.SYS_CLK_HZ, sideset_base=Pin(board.DAC_SCK_PIN),
                out_base=Pin(board.DAC_MOSI_PIN), out_shiftdir=rp2.PIO.SHIFT_RIGHT, pull_thresh=pio.DAC_PULL_THRESHOLD)
        mem32[self._r_dac_pinctrl] = self._dac_pins_pio  # OUT_COUNT 9 (asm_pio has no out_init for it)
        self._dac_exec_release()
        mem32[self._r_dac_instr] = dma_chain.jmp(pio.DAC_NEXT_ENTRY)
        for p in board.CH_DAC_CS:
            Pin(p, Pin.ALT, pull=Pin.PULL_UP, alt=Pin.ALT_PIO1)
        Pin(board.DAC_MOSI_PIN, Pin.ALT, pull=Pin.PULL_DOWN, alt=Pin.ALT_PIO1)
        mem32[self._r_dd_write] = self._r_dac_txf
        mem32[self._r_dac_ctrl_set] = self._dac_sm_bit
        self._dac_on_pio = True

    def _dac_exec_release(self):
        """Through SMx_INSTR (also on a disabled SM): MOSI and every chip-select latch low, every
        chip select released (direction 0), SCK low."""
        r = self._r_dac_instr
        mem32[r] = dma_chain.DAC_MOV_OSR_NULL
        mem32[r] = dma_chain.DAC_OUT_PINS_9
        mem32[r] = dma_chain.DAC_MOV_OSR_NULL
        mem32[r] = dma_chain.DAC_OUT_PINDIRS_9

    def _dac_abort(self):
        """Abort the DAC DMA channel (EN cleared first, CHAN_ABORT, bounded wait: erratum E13 order)."""
        mem32[self._r_dd_ctrl] = self._dac_off
        bit = self._dac_dma_bit
        mem32[dma_chain.DMA_CHAN_ABORT] = bit
        t0 = ticks_us()
        while (mem32[dma_chain.DMA_CHAN_ABORT] & bit or mem32[self._r_dd_ctrl] & dma_chain.CTRL_BUSY) \
                and ticks_diff(ticks_us(), t0) < _ABORT_TIMEOUT_US:
            pass

    def _dac_reset_queue(self):
        self._dq = []
        self._dqi = 0
        self._dbatch_n = 0
        self._dwords = []
        self._dac_pending = 0

    def _dac_queue(self, ops):
        """Queue ``ops`` and a mark after everything still queued; start a DMA batch if none runs."""
        q = self._dq
        q.extend(ops)  # (C-level: a sequence's top-up is hundreds of words)
        marks = 1 + ops.count(dac_bus.MARK_OP)
        q.append(dac_bus.MARK_OP)
        self._dac_pending += marks
        self._dac_kick()

    def _dac_kick(self):
        """Hand the next batch to the DMA when the previous one is done (the DMA channel idle).
        A batch never ends between a wait op and its writes (dma_chain.dac_batch_len)."""
        q = self._dq
        i = self._dqi
        if i >= len(q) or not self._dac_on_pio or mem32[self._r_dd_ctrl] & dma_chain.CTRL_BUSY:
            return
        n = dma_chain.dac_batch_len(q, i, _DAC_BUF_WORDS)
        buf = self._dbuf
        words = self._dwords[-_DAC_TAIL:]
        for k in range(n):
            buf[k] = q[i + k]
            words.append(q[i + k])
        self._dwords = words
        self._dbatch_n = n
        i += n
        if i >= len(q):
            self._dq = []
            i = 0
        elif i >= _DAC_BUF_WORDS:  # drop what the DMA has taken: a queue topped up before it empties
            del q[:i]  # (a sequence's, pulse after pulse) would otherwise grow for good
            i = 0
        self._dqi = i
        self._dac_dma_go(self._dbuf_addr, n)

    def _dac_dma_go(self, addr, n):
        """Start the DAC DMA on ``n`` words at ``addr`` into the DAC SM's TX FIFO."""
        mem32[self._r_dd_read] = addr
        mem32[self._r_dd_write] = self._r_dac_txf
        mem32[self._r_dd_count] = n
        mem32[self._r_dd_trig] = self._dac_run

    def _dac_marks(self):
        """Pop the marks the SM pushed (at most the RX FIFO's depth per call; a bound, not a wait)."""
        k = 0
        while k < dma_chain.DAC_RX_DEPTH and not mem32[self._r_dac_fstat] & self._dac_rxempty:
            mem32[self._r_dac_rxf]
            k += 1
        if k:
            self._dac_marks_seen(k)
        return k

    def _dac_marks_seen(self, k):
        self._dac_seen += k
        self._dac_pending = self._dac_pending - k if self._dac_pending > k else 0
        # dac_mark_pulses: the board reads the pulse counts when it sees the mark (docs/HARDWARE.md)
        for st in self._ch:
            if st.active:  # (not through pulses(): that may queue DAC ops, see _service)
                alive = self._busy_reg(st.r_d_ctrl) or self._busy_reg(st.r_c_ctrl)
                self._mark_pulses[st.ch] = st.feeder.pulses_after(self._played(st, self._consumed(st), alive))

    def _dac_service(self):
        if self._dac_pending:
            self._dac_marks()
            self._dac_kick()
            if self._dac_pending and self._dac_idle():
                # Everything has played, yet marks are missing: more were pushed than the 4-deep RX
                # FIFO holds between two looks (`push noblock` drops them). They were all pushed.
                self._dac_pending = 1
                self._dac_marks_seen(1)

    def _dac_idle(self):
        """The DAC SM has played every op handed to it: nothing queued, its DMA channel idle, its TX
        FIFO empty and the SM at `pull block` (PC read twice around the FIFO level: not in between)."""
        if self._dqi < len(self._dq) or not self._dac_on_pio:
            return False
        if mem32[self._r_dd_ctrl] & dma_chain.CTRL_BUSY:
            return False
        pc = mem32[self._r_dac_pc] & 0x1F
        return (pc == pio.DAC_NEXT_ENTRY and not mem32[self._r_dac_flevel] & 0xF
                and mem32[self._r_dac_pc] & 0x1F == pio.DAC_NEXT_ENTRY)

    def _dac_halt(self):
        """Stop the DAC SM at a safe point and return the op words it has not played (None if it did
        not reach one within _DAC_SAFE_POINT_US; it is then left disabled). A safe point: inside a wait
        op (played again from its start: it waits for the NEXT end of that phase), or between two
        groups; never inside a write or between a wait and its writes (the SM runs on and is stopped
        again). Then the DMA is aborted, the marks already pushed are counted, both FIFOs flushed, and
        the SM restarted at `next`, disabled."""
        rest = self._dq[self._dqi:]
        if not self._dac_on_pio:
            return rest
        t0 = ticks_us()
        while True:
            irq = machine.disable_irq()
            mem32[self._r_dac_ctrl_clr] = self._dac_sm_bit
            pc = mem32[self._r_dac_pc] & 0x1F
            machine.enable_irq(irq)
            words = self._dwords
            while True:  # a stable read: the DMA may still move words into the FIFO
                lvl = mem32[self._r_dac_flevel] & 0xF
                busy = self._dbatch_n and mem32[self._r_dd_ctrl] & dma_chain.CTRL_BUSY
                remaining = mem32[self._r_dd_count] if busy else 0
                if mem32[self._r_dac_flevel] & 0xF == lvl:
                    break
            ops = dma_chain.dac_resume_ops(pc, words, len(words) - remaining - lvl, rest)
            if ops is not None:
                break
            if ticks_diff(ticks_us(), t0) >= _DAC_SAFE_POINT_US:
                return None
            mem32[self._r_dac_ctrl_set] = self._dac_sm_bit  # let the write burst finish
            time.sleep_us(2)
        self._dac_abort()
        self._dac_marks()
        x = self._r_dac_shift_xor
        mem32[x] = dma_chain.SHIFTCTRL_FJOIN_RX  # flush both FIFOs (pico-sdk pio_sm_clear_fifos)
        mem32[x] = dma_chain.SHIFTCTRL_FJOIN_RX
        mem32[self._r_dac_ctrl_set] = self._dac_restart_bit
        mem32[self._r_dac_instr] = dma_chain.jmp(pio.DAC_NEXT_ENTRY)
        self._dq = []
        self._dqi = 0
        self._dbatch_n = 0
        self._dwords = []
        return ops

    def _dac_now(self, ops, drop_pins=()):
        """Play ``ops`` (writes for channels that are not running) ahead of everything still queued,
        dropping the queued groups that wait on ``drop_pins`` (a stopped channel's), and wait
        (bounded) for the mark after them. Returns False when the bus did not confirm them."""
        if not self._dac_on_pio:
            self._dac_attach()
        rest = self._dac_halt()
        if rest is None:
            return False
        if drop_pins:
            rest = dma_chain.dac_drop_channels(rest, drop_pins)
            stale = []  # and a shutdown deferred by _dac_channel_off: it must not follow a start's
            for ch in range(board.CHANNELS):  # codes or a test current
                if board.CH_POS[ch] in drop_pins:
                    stale.extend(self._dac_off_words[ch])
            if stale:
                rest = [w for w in rest if w not in stale]
        q = list(ops)
        q.append(dac_bus.MARK_OP)
        q.extend(rest)
        pending = 0
        for w in q:
            if w == dac_bus.MARK_OP:
                pending += 1
        self._dq = q
        self._dqi = 0
        self._dac_pending = pending
        seen = self._dac_seen
        mem32[self._r_dac_ctrl_set] = self._dac_sm_bit
        self._dac_kick()
        t0 = ticks_us()
        while self._dac_seen == seen:
            self._dac_marks()
            self._dac_kick()
            if self._dac_seen == seen and ticks_diff(ticks_us(), t0) >= _DAC_MARK_TIMEOUT_US:
                return False
        return True

    def _channel_pins(self, ch):
        return (board.CH_POS[ch], board.CH_NEG[ch])

    def _dac_channel_off(self, ch, defer=False):
        """Both outputs of channel ``ch``'s DAC off through the DAC bus, its queued groups dropped (its
        pins no longer move). The channel is not running. RuntimeError (the crash path then shuts
        every DAC down by the CPU) if the bus does not confirm it.

        ``defer`` (a stream that has ended, a disarmed channel: its SM is halted with POS/NEG low, so
        its DAC outputs pass no current): when other ops are still queued or playing and none of them
        waits on this channel's pins, the shutdown goes in behind the words the DAC SM already has
        (_dac_soon: a few op words later, marks around it) instead of halting the DAC SM. A halt
        inside another channel's open wait op would make that wait miss a pulse end that comes
        during the halt, and every later amplitude of that channel (a varying sequence, a ramp)
        would land one pulse late (docs/ARCHITECTURE.md "Custom sequences").
        _dac_now drops such a deferred shutdown when the channel's DAC is written again (a start, an
        impedance test); the crash path shuts every DAC down by the CPU whatever is queued."""
        self._ch[ch].dac_codes = None
        pins = self._channel_pins(ch)
        if defer and self._dac_on_pio:
            self._dac_service()
            if self._dac_pending and not self._dac_waits_on(pins):
                self._dac_soon(self._dac_off_words[ch])
                return
        if not self._dac_now(self._dac_off_words[ch], pins):
            raise RuntimeError("DAC bus: channel %d's shutdown was not confirmed" % ch)

    def _dac_soon(self, ops):
        """Queue ``ops`` (writes of a channel that is not running), a mark before and after them (the
        leading one keeps them out of the group before them: dma_chain.dac_drop_channels), without
        stopping the DAC SM, so every wait op it is in or pulls still sees its pin's next edges.

        Near the SM: when it waits in a wait op with its TX FIFO full (the DMA stalled on it) and
        that FIFO holds a wait op too or the DMA's next word starts a group, the SM needs no word
        from the DMA before a pulse end that is at least a period away. The new batch (the
        not-yet-moved writes bound to the FIFO's last group, the ops, the rest of the batch and of
        the queue) is built in the second buffer while the DMA runs on; then the DMA alone is
        stopped (EN cleared, aborted) and, if it had not moved on meanwhile, started on the new
        buffer at once (a few register writes: tens of µs), else resumed where it stopped. The ops
        then go out after the FIFO's words: within about two pulse ends of the waiting channel.
        Otherwise (or when the DMA moved on) the ops go to the front of the queue: after the batch
        the DMA has (a group boundary, dma_chain.dac_batch_len), never between a wait and its
        writes."""
        n = self._dbatch_n
        t0 = ticks_us()
        tries = 3
        while n and mem32[self._r_dd_ctrl] & dma_chain.CTRL_BUSY:
            moved = n - mem32[self._r_dd_count]
            pc = mem32[self._r_dac_pc] & 0x1F
            full = mem32[self._r_dac_flevel] & 0xF == dma_chain.DAC_TX_DEPTH
            if not (full and 0 < moved < n and (pc in dma_chain.DAC_WAIT_OPS or pc - 1 in dma_chain.DAC_WAIT_OPS)):
                if ticks_diff(ticks_us(), t0) >= _DAC_SAFE_POINT_US:
                    break
                continue  # a write burst, or the DMA refilling the FIFO: microseconds
            d = self._dwords
            b0 = len(d) - n  # d[b0:] is the batch; its last moved words are in the full FIFO
            fifo = d[b0 + moved - dma_chain.DAC_TX_DEPTH:b0 + moved] if b0 + moved >= dma_chain.DAC_TX_DEPTH else []
            if len(fifo) < dma_chain.DAC_TX_DEPTH or (dma_chain.dac_is_write(d[b0 + moved])
                                                     and not [w for w in fifo if w in dma_chain.DAC_WAIT_OPS]):
                break  # the SM could need a bound write from the DMA at its next pulse end
            tail = d[b0 + moved:] + self._dq[self._dqi:]
            i = 0
            while i < len(tail) and dma_chain.dac_is_write(tail[i]):
                i += 1  # writes bound to a wait (or a write) already in the FIFO go first
            new = tail[:i] + [dac_bus.MARK_OP] + list(ops) + [dac_bus.MARK_OP] + tail[i:]
            m = dma_chain.dac_batch_len(new, 0, _DAC_BUF_WORDS)
            buf = self._dbuf2
            for k in range(m):
                buf[k] = new[k]
            self._dac_abort()
            at = (mem32[self._r_dd_read] - self._dbuf_addr) >> 2
            if at == moved:  # stopped where it waited: switch to the new batch
                self._dac_dma_go(self._dbuf2_addr, m)
                self._dbuf, self._dbuf2 = buf, self._dbuf
                self._dbuf_addr, self._dbuf2_addr = self._dbuf2_addr, self._dbuf_addr
                self._dwords = d[:b0 + moved][-_DAC_TAIL:] + new[:m]
                self._dbatch_n = m
                self._dq = new[m:]
                self._dqi = 0
                self._dac_pending += 2
                return
            if not 0 <= at < n:
                break
            # it moved on (a wait ended while the batch was built): resume where it stopped, try again
            self._dac_dma_go(self._dbuf_addr + 4 * at, n - at)
            tries -= 1
            if not tries:
                break
            t0 = ticks_us()
        q = [dac_bus.MARK_OP]
        q.extend(ops)
        q.append(dac_bus.MARK_OP)
        q.extend(self._dq[self._dqi:])
        self._dq = q
        self._dqi = 0
        self._dac_pending += 2
        self._dac_kick()

    def _dac_waits_on(self, pins):
        """A wait op on one of ``pins`` may still be ahead of the DAC SM or running in it: in the
        queue, among the words handed to the DMA, or at the SM's PC (one of its two waits; `out pc`
        with a word not known: counted as one)."""
        pc = mem32[self._r_dac_pc] & 0x1F
        if pc == pio.DAC_NEXT_ENTRY + 1:
            return True
        ahead = self._dwords + self._dq[self._dqi:]
        for p in pins:
            w = dac_bus.wait_op(p)
            if pc == w or pc == w + 1 or w in ahead:
                return True
        return False

    # ---- contract: DAC bus -----------------------------------------------------------------------
    def dac_play(self, ops):
        """Queue op words (dac_bus: wait ops, then writes) after anything still queued; a mark follows.
        Groups that wait on a channel that is not running are dropped (its pins never move: they
        would hold the bus for good)."""
        if not self._dac_on_pio:
            self._dac_attach()
        idle = []
        for st in self._ch:
            if not st.active:
                idle.extend(self._channel_pins(st.ch))
        if idle:
            ops = dma_chain.dac_drop_channels(ops, idle)
        self._dac_queue(ops)

    def dac_busy(self):
        """Ops still queued or playing (the last mark not pushed yet)."""
        self._dac_service()
        return self._dac_pending > 0

    def dac_mark_pulses(self, ch):
        """Pulses of ``ch`` completed when the HAL saw the most recent mark (read at that moment, so
        on the board it may count pulses played after the mark was pushed: docs/HARDWARE.md)."""
        self._dac_service()
        return self._mark_pulses[ch]

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
        """The DMA reads each Block's OWN array (``block.words``), so a SequencePlan's just-in-time
        rewrites of its pool reach the DMA; nothing is copied. (The register-level model can address
        only the arrays the HAL allocates in its emulated SRAM: there the array is re-homed once, and
        ``block.words`` is then that array.)"""
        bufs = []
        for b in plan.blocks:
            try:
                b.addr = uctypes.addressof(b.words)
            except TypeError:
                b.words = array("I", b.words)
                b.addr = uctypes.addressof(b.words)
            bufs.append(b.words)
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
        self._dac_channel_off(st.ch, True)

    # ---- contract: stimulation -----------------------------------------------------------------
    def start(self, trains, mask, wait_trigger, first_ops=None, ramp_ops=()):
        """Load every masked channel, prime its FIFO, then enable all their SMs with ONE write of the
        PIO CTRL set-alias (SM_ENABLE | CLKDIV_RESTART): same PIO cycle. Precondition (the
        controller's): no masked channel is running; a channel still waiting for its trigger is
        disarmed first. Refused (ValueError, before anything changes) for a channel whose train is
        running: a started train is never restarted (it would cut the pulse in progress).

        Amplitude before any edge, through the DAC bus: ``first_ops`` (writes only), or when None
        each started channel's full codes (dac_bus.update_ops), played ahead of anything queued
        (groups still queued for the started channels are dropped) and confirmed by their mark
        before the SMs are enabled (RuntimeError, nothing started, if the bus does not confirm them
        within _DAC_MARK_TIMEOUT_US), and at least dac_bus.SETTLE_US earlier (the MCP4822 output
        settles). Then ``ramp_ops`` (they begin with wait ops, so they follow the
        pulses) are queued with a mark after them."""
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
            plan = dma_chain.plan_for(train)  # a custom sequence: its pool of just-in-time entries (8 KB)
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
            trig_bits |= 1 << st.ctl_ch
            n = entries * plan.p
            expect[st.ch] = n if n < dma_chain.FIFO_DEPTH else dma_chain.FIFO_DEPTH
        if chosen:
            ops = first_ops
            drop = []
            for st in chosen:
                drop.extend(self._channel_pins(st.ch))
            codes = {}  # read once, before any write (a sequence's pulse 0 comes from its records)
            for st in chosen:
                codes[st.ch] = pulse_engine.first_codes(trains[st.ch])
            if ops is None:
                ops = []
                for st in chosen:
                    a, b = codes[st.ch]
                    ops.extend(dac_bus.update_ops(st.ch, a, b))
            if not self._dac_now(ops, drop):
                for st in chosen:
                    self._halt(st)
                    self._abort(st)
                    st.active = False
                    st.waits = False
                raise RuntimeError("DAC bus: the start's DAC writes were not confirmed")
            t_dac = ticks_us()  # the first codes' CS edges: the outputs settle from here
            for st in chosen:
                st.dac_codes = codes[st.ch]
            if ramp_ops:
                self._dac_queue(ramp_ops)
        mem32[dma_chain.DMA_MULTI_CHAN_TRIGGER] = trig_bits
        t0 = ticks_us()
        for st in chosen:
            while self._tx_level(st) < expect[st.ch] and ticks_diff(ticks_us(), t0) < _PRIME_TIMEOUT_US:
                pass
        sm_mask = 0
        for st in chosen:
            sm_mask |= st.sm_bit
        if chosen:
            while ticks_diff(ticks_us(), t_dac) < dac_bus.SETTLE_US:  # the first pulse gets a settled
                pass  # current (usually over already: priming the FIFOs takes longer)
            mem32[chosen[0].r_ctrl_set] = dma_chain.ctrl_start_value(sm_mask)
        t_start = ticks_us()  # the CTRL write above: the software start's pulse-schedule origin
        for st in chosen:
            train = trains[st.ch]
            st.train = train
            st.first_bit = 1 << (board.CH_NEG[st.ch] if train.first == pulse_engine.NEG else board.CH_POS[st.ch])
            st.t0_us = None if wait_trigger[st.ch] else t_start
            # delay + the entry's 2 set-up ticks (+ a triphasic pulse's first flank and gap: the
            # first-phase pin is the main phase's, which starts that much after the pulse)
            st.origin_ticks = train.delay_ticks + 2 + self._main_offset(train)
            if st.mon_reader is not None:
                st.mon_reader.close()
            st.mon_reader = None
            if getattr(train, "sequence", None) is not None:
                st.mon_reader = train.sequence.reader()
                x = st.mon_reader.next()
                st.mon_onset = None if x is None else x[0]
                st.mon_k = 0  # index of the pulse at mon_onset
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
        st.mon_reader = None  # (a sequence is never replaced: the controller refuses it)
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
        # New codes: once the stream has pulled every old word, [wait for the end of the next pulse's
        # phase 2] + the writes go to the DAC bus, so they land between two pulses (HARDWARE.md).
        old = st.dac_codes
        st.dac_codes = (train.dac_a, train.dac_b)
        ops = []
        if old != st.dac_codes:
            # (a running channel keeps its polarity and shape: the controller refuses changing them)
            ops = pulse_engine.boundary_wait_ops(train, ch) + dac_bus.update_ops(ch, train.dac_a, train.dac_b)
        st.pending_dac = (switch, ops)  # the switch point the hardware reported (ops may be empty)

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
            at, ops = st.pending_dac
            if self._played(st, consumed, alive) >= at:
                st.pending_dac = None
                if ops:
                    self._dac_queue(ops)
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
        if self._dac_pending:
            self._dac_service()  # the DAC bus: marks, next batch (every poll of the main loop)
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
        self._dac_channel_off(ch, True)
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
        if st.mon_reader is not None:
            return self._sequence_samples(st, ch, min_interval_us)
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
        st.mon_next = k + 1
        return self._take(st, ch, train, start_ticks, sample_ticks, hz)

    def _take(self, st, ch, train, start_ticks, sample_ticks, hz):
        """The reading of the pulse whose phase 1 starts ``start_ticks`` after ``st.t0_us`` (due within
        MONITOR_WAIT_US): mux, wait (the last MONITOR_IRQ_OFF_US with interrupts off), convert, keep
        it only on hardware evidence (phase1_samples)."""
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
            return []
        while ticks_diff(ticks_us(), t_k) < 0:
            pass
        before = mem32[_SIO_GPIO_IN] & bit
        t_b = ticks_us()
        raw = adc.read_u16()
        t_a = ticks_us()
        after = mem32[_SIO_GPIO_IN] & bit
        machine.enable_irq(irq)
        if not (before and after and ticks_diff(t_a, p_start) < phase_us):
            return []
        st.mon_last_us = t_k  # the rate cap counts scheduled times (jitter cannot skip a pulse)
        return [(t_b, raw >> (16 - board.ADC_BITS))]

    def _sequence_samples(self, st, ch, min_interval_us):
        """phase1_samples for a custom sequence: the next pulse due is found by the channel's own
        SequenceReader (onsets from the start's origin; readings are taken as for a train and kept on
        the same hardware evidence). The schedule origin is the software start only: a sequence
        started by a trigger is not monitored by the board (no edge tells which pulse is pulse 0
        without counting them). Every µs value stays a small int: the time already past is folded
        into t0_us, and origin_ticks (a heap int, onsets beyond 2**30 ticks are too) keeps the rest."""
        if st.t0_us is None:
            return []
        train = st.train
        hz = board.SYS_CLK_HZ // 1000000
        sample_ticks = pulse_engine.ns_to_ticks(impedance.MONITOR_SAMPLE_NS)
        now = ticks_us()
        elapsed = ticks_diff(now, st.t0_us)
        if elapsed > 1 << 26:  # ~67 s: move the origin to now (ticks_diff's range is 2**29 µs)
            st.t0_us = now
            st.origin_ticks -= elapsed * hz
            if st.mon_last_us is not None and ticks_diff(now, st.mon_last_us) > 1 << 26:
                st.mon_last_us = None  # long past: the rate cap cannot hold it back any more
            elapsed = 0
        due = elapsed + MONITOR_PREP_US
        if st.mon_last_us is not None:
            due = max(due, ticks_diff(st.mon_last_us, st.t0_us) + min_interval_us)
        lead = st.origin_ticks + sample_ticks
        o = st.mon_onset
        reader = st.mon_reader
        if o is not None and (o + lead) // hz < due:
            # behind: jump (SequenceReader.seek) to the first pulse not completed yet, instead of reading
            # every record in between (~0.16 ms each on the M0+)
            done = st.feeder.pulses_after(self._played(st, self._consumed(st), True))
            if done > st.mon_k:
                reader.seek(done)
                st.mon_k = done
                x = reader.next()
                o = None if x is None else x[0]
        while o is not None and (o + lead) // hz < due:
            x = reader.next()
            st.mon_k += 1
            o = None if x is None else x[0]
        st.mon_onset = o
        if o is None:
            return []
        start_ticks = o + st.origin_ticks
        wait = (start_ticks + sample_ticks) // hz - elapsed
        if wait > MONITOR_WAIT_US:
            return []
        x = reader.next()  # this pulse is read (or skipped) now: the next candidate after it
        st.mon_k += 1
        st.mon_onset = None if x is None else x[0]
        return self._take(st, ch, train, start_ticks, sample_ticks, hz)

    @staticmethod
    def _main_offset(train):
        """Ticks from a pulse's start to its first phase's (main phase's) start: a triphasic pulse's
        first flank and interphase, 0 for a biphasic one."""
        if train.shape == pulse_engine.TRIPHASIC:
            r = train.realised
            return r["flank"] + r["interphase"]
        return 0

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
        if not self._dac_now(dac_bus.update_ops(ch, code, code), self._channel_pins(ch)):
            self._dac_channel_off(ch)  # raises unless the bus recovered
            return None
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
        self._dac_channel_off(ch, True)  # (its SM is halted: no halt of the DAC SM when others' ops play)
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
        for st in self._ch:
            st.dac_codes = None
        self._dac_cpu_shutdown()  # the CPU path: nothing in it waits on the PIO (docs/SAFETY.md §7)
        self._wdt.feed()
        return drained
