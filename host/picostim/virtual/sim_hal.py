"""The virtual Pico's HAL: the controller's hardware contract (see firmware/controller.py) implemented
on the cycle-exact PIO emulator, a DMA model, and an electrode model.

Everything timing-related comes from executing the firmware's own generated PIO opcodes
(firmware/pio_programs.py) on :class:`~picostim.virtual.pio_emu.PioSystem` with the exact words the
firmware's pulse engine built; this module only wires pins, DMA and state machines the way
firmware/hal_rp2.py does on the board.

Electrode monitoring (SPEC §5): :meth:`SimHal.phase1_samples` reads the electrode model at
``impedance.MONITOR_SAMPLE_NS`` after every rising edge of the channel's first-phase pin that the
emulated PIO actually produced (``system`` edges), i.e. at the emulated phase-1 times of the pulses
that were played, quantised by the 12-bit ADC. The firmware's main loop is modelled by
:meth:`SimHal.next_poll_cycle`: the virtual Pico polls the controller ``reaction_us`` after each
predicted sample (the ADC conversion, the classification and the stop write on the board), so the
capture shows when a board running this controller would stop.
"""

from __future__ import annotations

import bisect
import hashlib
import random

from firmware import board, dac_bus, dma_chain, impedance, pulse_engine, ticks
from firmware import pio_programs as pio
from picostim.capture.trace import Trace
from picostim.virtual.electrode import Electrode, Mcp4822Bus
from picostim.virtual.pio_emu import PioSystem

# The DAC bus lines in every capture (the names a logic analyzer wired to the board uses too).
DAC_LINE_NAMES = {board.DAC_SCK_PIN: "SCK", board.DAC_MOSI_PIN: "MOSI", board.DAC_LDAC_PIN: "LDAC"}
DAC_LINE_NAMES.update({pin: "CS%d" % ch for ch, pin in enumerate(board.CH_DAC_CS)})
# Pins whose GPIO function is PIO1 (the DAC program's): SCK, MOSI and the chip selects. dac.pio's
# OUT PINDIRS/PINS span GP19..GP27; GP23-26 are not PIO1's, so those bits reach no pad.
_DAC_GPIO_MASK = (1 << board.DAC_SCK_PIN) | (1 << board.DAC_MOSI_PIN)
for _cs in board.CH_DAC_CS:
    _DAC_GPIO_MASK |= 1 << _cs
_CS_MASK = _DAC_GPIO_MASK & ~((1 << board.DAC_SCK_PIN) | (1 << board.DAC_MOSI_PIN))
# PCs of the wait routines' two WAIT instructions (entry, entry + 1: `wait 1 gpio N`, `wait 0 gpio N`)
_DAC_WAIT_PCS = frozenset(v + i for k, v in pio.DAC_ENTRIES.items() if k.startswith("gp") for i in (0, 1))
# wait routine entry (= its op word) -> the GPIO it waits on
_DAC_WAIT_PIN = {v: int(k[2:]) for k, v in pio.DAC_ENTRIES.items() if k.startswith("gp")}


def _pin_names(ch: int) -> dict[int, str]:
    suffix = "" if ch == 0 else "_%d" % ch
    names = {board.CH_POS[ch]: "POS" + suffix, board.CH_NEG[ch]: "NEG" + suffix,
             board.CH_RECOVERY[ch]: "RECOVERY" + suffix}
    if ch == board.SYNC_CHANNEL:
        names[board.SYNC_PIN] = "SYNC"
    return names


class SimHal:
    """Simulated RP2040 + analog front end. Virtual time is PIO cycles (``system.now``)."""

    # Modelled firmware latency from the end of a phase-1 ADC conversion to the stop reaching the
    # DMA on the board (MicroPython: read the ADC, classify, null the control ring). A model figure,
    # not a board measurement; docs/SAFETY.md.
    REACTION_US = 500
    IDLE_POLL_US = 1000  # main-loop cadence modelled while a channel waits for its trigger

    def __init__(self, channels: int = board.CHANNELS, electrodes: list[Electrode] | None = None,
                 accelerate: bool = True, reset_reason: int = 0, reaction_us: int | None = None,
                 adc_noise_lsb: float = 0.0, seed: int = 0, ticks0_us: int = 0):
        """``ticks0_us``: the board's ``ticks_us()`` at virtual time 0 (0..2**30-1), e.g.
        ``2**30 - 5_000_000`` to cross the tick wrap 5 s into a run (see :meth:`time_us`)."""
        if not 1 <= channels <= board.CHANNELS:
            raise ValueError("channels must be 1..%d" % board.CHANNELS)
        self.channels = channels
        self.clock_hz = board.SYS_CLK_HZ
        self.system = PioSystem(self.clock_hz, accelerate=accelerate)
        electrodes = list(electrodes or [])
        if len(electrodes) > channels:
            raise ValueError("%d electrodes for %d channels" % (len(electrodes), channels))
        self.electrodes = electrodes + [Electrode() for _ in range(channels - len(electrodes))]
        self.reaction_us = self.REACTION_US if reaction_us is None else reaction_us
        self.adc_noise_lsb = adc_noise_lsb
        self._rng = random.Random(seed)
        self._edge_pos = [0] * channels  # next unread edge of the first-phase pin
        self._edge0 = [0] * channels  # first edge of the current train
        self._last_sample = [None] * channels  # cycle of the last reading taken
        self._reset_reason = reset_reason
        self.ticks0_us = ticks.check(ticks0_us)
        self.watchdog_fed_at = 0
        self.sms = []
        out_mask = 0
        for ch in range(channels):
            sm = self.system.add_state_machine(
                pio.OPCODES, pio.WRAP_TARGET, pio.WRAP, out_base=board.CH_OUT_BASE[ch],
                out_count=board.CH_OUT_COUNT[ch], in_base=board.TRIG1_PIN,
                out_shift_right=pio.OUT_SHIFT_RIGHT, autopull=pio.AUTO_PULL,
                pull_threshold=pio.PULL_THRESHOLD, fifo_depth=pulse_engine.TX_FIFO_WORDS)
            self.sms.append(sm)
            out_mask |= ((1 << board.CH_OUT_COUNT[ch]) - 1) << board.CH_OUT_BASE[ch]
        # Safe state, as hal_rp2 does at boot: every drive pin an output, low.
        self.out_mask = out_mask  # every drive pin of the channels (OUT pins of their SMs)
        self.system.set_outputs(out_mask, 0)
        self.system.set_pindirs(out_mask, out_mask)
        # The DAC bus (docs/ARCHITECTURE.md "DAC bus"): PIO1 SM0 runs dac.pio; here it is the SM
        # after the channels' in the same PioSystem, so it runs cycle by cycle beside them (one
        # clock for both PIOs, as on the chip). SCK (side-set) an output, low; MOSI and the chip
        # selects released (direction input, output latch 0): the CS lines' 10 kOhm pull-ups hold
        # them high; MOSI reads 0 (the pad's default pull-down). LDAC an output held low.
        self.dac_sm = self.system.add_state_machine(
            pio.DAC_OPCODES, pio.DAC_WRAP_TARGET, pio.DAC_WRAP, out_base=board.DAC_MOSI_PIN,
            out_count=pio.DAC_OUT_COUNT, side_set_base=board.DAC_SCK_PIN,
            side_set_count=pio.DAC_SIDESET_COUNT, side_set_opt=pio.DAC_SIDESET_OPT,
            out_shift_right=pio.DAC_OUT_SHIFT_RIGHT, in_shift_right=pio.DAC_IN_SHIFT_RIGHT,
            autopull=pio.DAC_AUTO_PULL, pull_threshold=pio.DAC_PULL_THRESHOLD,
            fifo_depth=4, rx_fifo_depth=4, gpio_mask=_DAC_GPIO_MASK)  # FIFO_JOIN 'txrx': 4 + 4
        assert pio.DAC_FIFO_JOIN == "txrx"
        ldac = 1 << board.DAC_LDAC_PIN
        sck = 1 << board.DAC_SCK_PIN
        self.system.set_pull(_CS_MASK, _CS_MASK)
        self.system.set_outputs(_DAC_GPIO_MASK | ldac, 0)
        self.system.set_pindirs(_DAC_GPIO_MASK | ldac, sck | ldac)
        self.dac_sm.push_hook = self._dac_pushed
        self.system.enable([self.dac_sm], start_pc=pio.DAC_NEXT_ENTRY)  # stalls on its pull
        self.dac = Mcp4822Bus(self.system, board.DAC_SCK_PIN, board.DAC_MOSI_PIN, board.CH_DAC_CS)
        self._marks_queued = 0  # marks appended to the DAC queue
        self._marks_pushed = 0  # marks the DAC program has pushed (RX FIFO, read at once)
        self._mark_pulses = [0] * channels  # pulses_ended(ch) when the most recent mark was pushed
        self._drive_edge0 = [((board.CH_POS[ch], 0), (board.CH_NEG[ch], 0)) for ch in range(channels)]
        self._mark_wanted = None  # start()/safe_state() busy-wait: stop the run at this mark
        self._codes = [None] * channels  # (dac_a, dac_b) last queued for each channel
        self._replace_token = [0] * channels  # invalidates a replace()'s pending DAC update
        self._replace_pending = [False] * channels
        self._wait_pins: set = set()  # GPIOs of the wait ops queued since the bus was last idle
        self.train_start = [0] * channels  # cycle at which each channel's SM was last enabled
        self.start_called = [0] * channels  # cycle of that start() call: its DAC writes begin here
        self.dac_on = [False] * channels  # DAC outputs driving (start() on, safe_state() off)
        self._waits = [False] * channels  # started to wait for a trigger (disarm() clears it)
        self.safe_states = 0  # safe_state() calls (the crash path)
        self._trains = [None] * channels
        self._blocks0 = [0] * channels
        self._empty0 = [0] * channels
        self._delay_blocks = [0] * channels
        # Custom sequences (dma_chain.plan_for -> seq_stream.SequencePlan): the board's own Feeder over a
        # control ring the DMA model plays in ring mode; None for a regular train.
        self._feeders: list = [None] * channels
        self._seq_next: list = [None] * channels  # [reader, next onset ticks]: next_poll_cycle's schedule

    # ---- identity and time -------------------------------------------------------------------
    def board_id(self) -> bytes:
        return hashlib.sha256(b"picostim-virtual").digest()[:8]

    def reset_reason(self) -> int:
        return self._reset_reason

    def time_us(self) -> int:
        """``time.ticks_us()`` as on the rp2 port: µs that wrap at 2**30 (firmware/ticks.py's model;
        every tick sum or difference the firmware makes goes through ticks_add/ticks_diff, which on
        CPython reject anything that is not a small-int tick value)."""
        return self.ticks_at(self.system.now)

    def ticks_at(self, cycle: int) -> int:
        """The ``ticks_us()`` value at virtual time ``cycle``."""
        return (self.ticks0_us + cycle * 1_000_000 // int(self.clock_hz)) & ticks.MASK

    def uptime_us(self, cycle: int | None = None) -> int:
        """µs since boot at ``cycle`` (default now) as the firmware reports it (STATUS uptime, EVENT
        times): ticks0_us + the virtual time, never wrapping."""
        return self.ticks0_us + (self.system.now if cycle is None else cycle) * 1_000_000 // int(self.clock_hz)

    def feed_watchdog(self) -> None:
        self.watchdog_fed_at = self.system.now

    def advance_cycles(self, cycles: int) -> None:
        if cycles > 0:
            self.system.run_for(cycles)

    # ---- stimulation -------------------------------------------------------------------------
    def _halt(self, ch: int) -> None:
        """Forced stop, as hal_rp2._halt: disable the SM (on silicon, and in the emulator, a disabled
        SM holds its pins) and drive its OUT pins low with ``mov pins, null`` through SMx_INSTR."""
        sm = self.sms[ch]
        self.system.disable([sm])
        self.system.exec_instruction(sm, dma_chain.MOV_PINS_NULL)

    def start(self, trains, mask: int, wait_trigger, first_ops=None, ramp_ops=()) -> None:
        """Load every masked channel's DMA, then enable their SMs on one cycle (CTRL write). As
        hal_rp2: a channel still waiting for its trigger is disarmed first; one whose train runs is
        refused (ValueError, nothing changed): a started train is never restarted.

        DAC (dac_contract.md): before the SMs are enabled the DAC program writes the first codes:
        ``first_ops`` (op words, writes only) or, when None, each started channel's full codes
        (``dac_bus.update_ops(ch, train.dac_a, train.dac_b)``); a mark follows and the emulation
        runs (the board busy-waits) until the DAC program has pushed it, then for
        ``dac_bus.SETTLE_TICKS`` (the MCP4822 output settles), and the enable comes then. Then ``ramp_ops`` (they begin with wait ops: they follow the
        pulses) are queued with a mark after them."""
        for ch in range(self.channels):
            if mask >> ch & 1 and self.running(ch) and (not self._waits[ch] or self.disarm(1 << ch)):
                raise ValueError("channel %d is running" % ch)
        chosen, pcs = [], {}
        for ch in range(self.channels):
            if not mask >> ch & 1:
                continue
            self.start_called[ch] = self.system.now
            train = trains[ch]
            sm = self.sms[ch]
            self._halt(ch)
            self.system.dma(sm).abort()
            self._waits[ch] = bool(wait_trigger[ch])
            sm.clear_fifos()
            sm.restart()
            sm.in_base = train.trigger_pin if wait_trigger[ch] else board.TRIG1_PIN
            plan = dma_chain.plan_for(train)
            if plan.jit:  # a custom sequence: the Feeder writes the ring just in time, the DMA reads it
                delay = []
                self._load_sequence(ch, sm, plan)
            else:
                delay = [train.delay] if train.delay else []
                self._feeders[ch] = None
                self._seq_next[ch] = None
                self.system.dma(sm).load(delay, pulse_engine.cycle_groups(train), train.repeats)
            self._trains[ch] = train
            self.dac_on[ch] = True
            self._delay_blocks[ch] = len(delay)
            self._blocks0[ch] = sm.blocks_consumed
            self._empty0[ch] = sm.empty_pulls
            self.train_start[ch] = self.system.now
            edges = self.system._edges[self._first_pin(ch, train)]
            self._edge_pos[ch] = self._edge0[ch] = len(edges)
            self._last_sample[ch] = None
            chosen.append(sm)
            pcs[sm] = train.entry if wait_trigger[ch] else pio.SEGMENT_ENTRY
            self._replace_token[ch] += 1
            self._replace_pending[ch] = False
        self._dac_release_dead_waits()  # the channels just halted: their old waits can never end
        for ch in range(self.channels):  # read once (a sequence's pulse 0 comes from its records)
            if mask >> ch & 1:
                self._codes[ch] = pulse_engine.first_codes(trains[ch])
        if first_ops is None:
            first_ops = []
            for ch in range(self.channels):
                if mask >> ch & 1:
                    first_ops += dac_bus.update_ops(ch, *self._codes[ch])
        if chosen:
            self._dac_run_to_mark(self.dac_play(first_ops))
            self.system.run_until(self.system.now + dac_bus.SETTLE_TICKS)  # the outputs settle
        for ch in range(self.channels):  # the SMs start now (after the DAC writes)
            if mask >> ch & 1:
                self.train_start[ch] = self.system.now
                self._drive_edge0[ch] = tuple((pin, len(self.system._edges[pin]))
                                              for pin in (board.CH_POS[ch], board.CH_NEG[ch]))
        self.system.enable(chosen, start_pc=pcs)
        if ramp_ops:
            self.dac_play(ramp_ops)

    def _load_sequence(self, ch: int, sm, plan) -> None:
        """As hal_rp2.start for a custom sequence: the plan's buffers at model addresses, the Feeder
        over a RING_LEN control ring, the DMA model in ring mode (the control channel triggered)."""
        addrs = {}
        where = {}
        a = 0x20000000 + 0x10000 * ch
        for b in plan.blocks:
            addrs[id(b)] = a
            for e in range(len(b.words) // plan.p):
                where[a + 4 * plan.p * e] = (b, plan.p * e)
            a += 4 * len(b.words) + 0x100

        def words_at(addr):
            b, off = where[addr]
            return b.words, off  # the block's own array: a rewrite is seen by the next read

        ring = [0] * dma_chain.RING_LEN
        feeder = dma_chain.Feeder(ring, 0, dma_chain.RING_LEN, lambda b: addrs[id(b)])
        feeder.load(plan)
        self._feeders[ch] = feeder
        self.system.dma(sm).load_ring(ring, 0, dma_chain.RING_LEN, words_at, plan.p)
        reader = plan.source.reader()
        x = reader.next()
        self._seq_next[ch] = [reader, None if x is None else x[0]]

    def _feed(self, ch: int) -> None:
        """The board's main loop topping up a sequence's ring (hal_rp2._service): what the control
        channel has read so far, then Feeder.fill; nothing once the chain has ended."""
        f = self._feeders[ch]
        if f is None:
            return
        dma = self.system.dma(self.sms[ch])
        if dma.ring_mode and not dma.done:
            f.fill(dma.ring_consumed)

    # ---- DAC bus (dac.pio on the emulated PIO1 SM0) ------------------------------------------
    def dac_play(self, ops) -> int:
        """Queue op words after anything still queued, with a mark after them; returns the mark's
        number (marks are counted from 1)."""
        self._dac_release_dead_waits()
        ops = list(ops)
        self._wait_pins.update(_DAC_WAIT_PIN[w] for w in ops if w in _DAC_WAIT_PIN)
        self._marks_queued += 1
        self.system.dma(self.dac_sm).queue(ops + [dac_bus.MARK_OP])
        return self._marks_queued

    def dac_busy(self) -> bool:
        """Ops still queued or running (the last appended mark not yet pushed), or a replace()'s
        amplitude update still waiting for its switch point."""
        self._dac_release_dead_waits()
        return self._marks_pushed < self._marks_queued or any(self._replace_pending)

    def _dac_release_dead_waits(self) -> None:
        """A wait op on the pin of a channel whose stream has ended (or was halted, or never
        started) could never end and would hold every op behind it, on every channel: the HAL
        skips it when it next looks at the bus (this call: start(), dac_play(), dac_busy()). As
        hal_rp2 does when a channel stops (``_dac_channel_off``: ``dma_chain.dac_drop_channels``, then
        the shutdown): every queued group waiting on such a pin goes, its writes too (a stopped
        sequence's codes for boundaries that never come must not play back to back after its last
        pulse), the marks stay; then that channel's DAC outputs are shut down through the bus (a
        ramp-down's dropped shutdown included). The program stuck in such a wait leaves it through
        SMx_INSTR (`jmp next`), and the writes of that group still queued are dropped with it."""
        if self._marks_pushed >= self._marks_queued:
            self._wait_pins.clear()
            return
        dead = set()
        for ch in range(board.CHANNELS):
            if ch >= self.channels or not self.running(ch):
                dead.add(board.CH_POS[ch])
                dead.add(board.CH_NEG[ch])
        dead &= self._wait_pins  # (a superset of the pins queued waits are on: cheap when none)
        if not dead:
            return
        self._wait_pins -= dead
        sm = self.dac_sm
        head = []  # the wait op the program is in (or about to enter): its group's writes go with it
        if sm.pc in _DAC_WAIT_PCS:
            entry = sm.pc if sm.pc in _DAC_WAIT_PIN else sm.pc - 1
            if _DAC_WAIT_PIN[entry] in dead:
                self.system.exec_instruction(sm, pio.DAC_NEXT_ENTRY)  # jmp next
                head = [entry]
        elif sm.pc == pio.DAC_NEXT_ENTRY + 1 and _DAC_WAIT_PIN.get(sm.osr & 31) in dead and not sm.osr >> 5:
            self.system.exec_instruction(sm, pio.DAC_NEXT_ENTRY)  # its `out pc` would enter one
            head = [sm.osr & 31]
        dma = sm.dma
        words = [w for _t, w, _last in sm.tx]
        if dma._cur is not None:
            words += dma._cur[dma._pos:]
        for block in dma._once:
            words += block
        kept = dma_chain.dac_drop_channels(head + words, dead)
        if kept != words:
            dma.abort()
            sm.tx.clear()
            dma.queue(kept)
        for ch in range(self.channels):  # as hal_rp2._dac_channel_off: the stopped channel's DAC off
            if board.CH_POS[ch] in dead or board.CH_NEG[ch] in dead:
                self.dac_play(dac_bus.shutdown_ops(ch))

    def dac_mark_pulses(self, ch: int) -> int:
        """Pulses of ``ch`` completed at the emulated cycle at which the most recent mark was
        pushed (:meth:`pulses_ended`: their phase 2 had ended). After ``[wait_op] + update_ops``
        this is the index of the first pulse with the new codes."""
        return self._mark_pulses[ch]

    def pulses_ended(self, ch: int, cycle: int | None = None) -> int:
        """Pulses of ``ch`` since its start whose phase 2 had ended at ``cycle`` (default: now),
        from the emulated pins: a biphasic pulse is one high interval on each of POS and NEG, so
        the ended pulses are (POS falls + NEG falls) // 2 -- whatever the polarity, also across a
        replace() that changes it. Unlike :meth:`pulses` (a group counts once the SM has pulled
        its last idle word) this counts a pulse from the end of its drive phases."""
        cycle = self.system.now if cycle is None else cycle
        falls = 0
        for pin, e0 in self._drive_edge0[ch]:
            edges = self.system._edges[pin]
            falls += (bisect.bisect_right(edges, cycle, e0) - e0) // 2  # each pin starts low
        tr = self._trains[ch]  # a triphasic pulse has three drive intervals (the controller refuses a
        # shape change while the channel runs)
        return falls // (3 if tr is not None and tr.shape == pulse_engine.TRIPHASIC else 2)

    def _dac_pushed(self, t: int, word: int) -> None:
        """Push hook of the DAC SM: the HAL reads the RX FIFO at once (so it never fills)."""
        self.dac_sm.get()
        self._marks_pushed += 1
        self._mark_pulses = [self.pulses_ended(ch, t) for ch in range(self.channels)]
        if self._mark_wanted is not None and self._marks_pushed >= self._mark_wanted:
            self._mark_wanted = None
            self.system.stop_run()

    def _dac_run_to_mark(self, mark: int, max_us: int = 60_000_000) -> None:
        """Busy-wait (emulate) until mark ``mark`` has been pushed; the run ends the cycle after
        the push. RuntimeError if the DAC program has not got there within ``max_us``."""
        deadline = self.system.now + max_us * self.clock_hz // 1_000_000
        self._mark_wanted = mark
        try:
            while self._marks_pushed < mark:
                if self.system.now >= deadline:
                    raise RuntimeError("the DAC bus program did not reach its mark within %d us" % max_us)
                self.system.run_until(min(deadline, self.system.now + self.clock_hz // 1000))
        finally:
            self._mark_wanted = None

    def _dac_flush(self) -> None:
        """Drop every DAC op not yet started (DMA aborted, TX FIFO cleared, marks forgotten) and
        leave a wait op at once (``jmp next`` through SMx_INSTR); a write in progress completes
        (never a cut command). Returns with the program stalled on its pull."""
        sm = self.dac_sm
        sm.dma.abort()
        sm.tx.clear()
        self._marks_queued = self._marks_pushed
        for _ in range(4 * dac_bus.WRITE_TICKS):
            if sm.pc in _DAC_WAIT_PCS:
                self.system.exec_instruction(sm, pio.DAC_NEXT_ENTRY)  # jmp next (opcode 0x0000 | addr)
            if sm.pc == pio.DAC_NEXT_ENTRY and sm.stalled:
                return
            self.system.run_until(self.system.now + 1)

    def replace(self, ch: int, train) -> None:
        """Double-buffered switch to ``train`` at the next pulse boundary (the end of the group the
        DMA is transferring). A different amplitude (other DAC codes) goes out as
        ``[wait_op(phase-2 pin of the old train)] + update_ops(ch, a, b)`` + a mark, queued when
        the stream reaches the switch point: the cycle at which the SM pulls the phase-2 word of
        the last pulse of the old program (its pin goes high the next cycle, so the wait ends at
        that pulse's end and the writes land in the idle before the new program's first pulse).
        When no pulse of the old program is still to come the writes are queued at once."""
        old = self._trains[ch]
        if old is not None and self._first_pin(ch, old) != self._first_pin(ch, train):
            # polarity change: monitor the new first-phase pin from here on
            self._edge_pos[ch] = self._edge0[ch] = len(self.system._edges[self._first_pin(ch, train)])
        self._trains[ch] = train
        sm = self.sms[ch]
        dma = self.system.dma(sm)
        # where the old program ends: the rest of the block the DMA is transferring, or (at a
        # boundary) the block it sent last
        cur = dma._cur
        last = cur if cur is not None else dma.last_block
        remaining = len(cur) - dma._pos if cur is not None else 0
        dma.replace_at_block_boundary((), pulse_engine.cycle_groups(train), train.repeats)
        self._replace_token[ch] += 1
        self._replace_pending[ch] = False
        codes = (train.dac_a, train.dac_b)
        if codes == self._codes[ch] or old is None:
            return
        token = self._replace_token[ch]
        wait_pin = board.CH_POS[ch] if old.first == pulse_engine.NEG else board.CH_NEG[ch]
        bit = pio.PIN_POS if wait_pin == board.CH_POS[ch] else pio.PIN_NEG
        p2 = None
        for i, w in enumerate(last or ()):
            if w & bit:
                p2 = i  # the last word of phase 2 (a long phase may be split over several words)
        # pull number of that word: the word the DMA sent last is pulled as number
        # words_pulled + len(tx); each word still to send adds one
        n = None if p2 is None else sm.words_pulled + sm.tx_level + remaining - (len(last) - p2) + 1
        ops = dac_bus.update_ops(ch, train.dac_a, train.dac_b)

        def switch(_t: int) -> None:
            if self._replace_token[ch] != token:
                return  # restarted, halted or replaced again meanwhile
            self._replace_pending[ch] = False
            self._codes[ch] = codes
            if wait_pin_high_or_coming[0] or old.shape == pulse_engine.TRIPHASIC:
                self.dac_play(pulse_engine.boundary_wait_ops(old, ch) + ops)  # a triphasic flank pin
            else:  # is high twice per pulse: wait on the main phase first
                self.dac_play(ops)

        wait_pin_high_or_coming = [True]
        if n is None or (n <= sm.words_pulled and not self.system.pin_level(wait_pin)):
            wait_pin_high_or_coming[0] = False  # no pulse of the old program still to end
            switch(self.system.now)
            return
        self._replace_pending[ch] = True
        self.system.at_pull(sm, n, switch)

    def disarm(self, mask: int) -> int:
        """As hal_rp2.disarm: point each masked trigger-waiting SM's IN_BASE at its own POS pin (low
        while it waits, so its `wait` can never pass), then read its PC: still in the wait -> halted
        at once (pins driven idle, DMA aborted, FIFO cleared, DAC off; no pulse); past it -> fired,
        left running. Returns the masked channels whose train runs (fired or software-started)."""
        fired = 0
        for ch in range(self.channels):
            if not mask >> ch & 1 or not self.running(ch):
                continue
            sm = self.sms[ch]
            if not self._waits[ch]:
                fired |= 1 << ch
                continue
            sm.in_base = board.CH_POS[ch]
            self._waits[ch] = False
            if sm.pc < pio.SEGMENT_ENTRY:
                self._halt(ch)
                self.system.dma(sm).abort()
                sm.clear_fifos()
                sm.restart()
                self.dac_on[ch] = False
                self._replace_token[ch] += 1
                self._replace_pending[ch] = False
                self._codes[ch] = None
                self.dac_play(dac_bus.shutdown_ops(ch))  # DAC outputs off, through the DAC bus
            else:
                fired |= 1 << ch
        return fired

    def stop(self, mask: int) -> None:
        """As hal_rp2.stop: a trigger-waiting channel is disarmed at once; a running stream ends at
        the boundary of the group the DMA is transferring (the chain cut)."""
        self.disarm(mask)
        for ch in range(self.channels):
            if mask >> ch & 1:
                self._stop_stream(ch)

    def _stop_stream(self, ch: int) -> None:
        dma = self.system.dma(self.sms[ch])
        dma.stop_at_block_boundary()
        f = self._feeders[ch]
        if f is not None and dma.ring_mode:
            f.stop(dma.ring_consumed)  # the ring nulled: no more entries

    def _drained(self, ch: int) -> bool:
        """Nothing more will reach the SM and it has pulled its last word (the final group's idle:
        a group always ends on its idle word), so no pulse is in progress or to come."""
        sm = self.sms[ch]
        return self.system.dma(sm).done and sm.tx_level == 0

    def safe_state(self, wait_us: int = board.SAFE_STOP_US) -> bool:
        """The crash path (firmware/main.py), as firmware/hal_rp2.py does it: stop every stream at its
        next pulse boundary; a channel still waiting for its trigger is halted at once (nothing is in
        progress); the others are emulated on (the board busy-waits) until drained, at most
        ``wait_us``; then every SM is disabled with its pins driven idle, the DMA aborted, the FIFOs
        cleared and the DACs shut down. Returns True when every stream had drained (no pulse cut),
        False when the bound ran out first."""
        for ch in range(self.channels):
            self._stop_stream(ch)
        deadline = self.system.now + wait_us * self.clock_hz // 1_000_000
        step = max(1, self.clock_hz // 100_000)  # the busy-wait's loop: one check every 10 us
        while True:
            live = [ch for ch in range(self.channels)
                    if self.sms[ch].enabled and not self.waiting(ch) and not self._drained(ch)]
            if not live or self.system.now >= deadline:
                break
            self.system.run_until(min(deadline, self.system.now + step))
        self.system.disable(self.sms)
        for ch in range(self.channels):
            self.system.dma(self.sms[ch]).abort()
            self.sms[ch].clear_fifos()
            self.dac_on[ch] = False
            self._replace_token[ch] += 1
            self._replace_pending[ch] = False
            self._codes[ch] = None
        self.system.set_outputs(self.out_mask, 0)  # mov pins, null through SMx_INSTR on the board
        # every DAC output shut down (all of the board's DACs, as hal_rp2): pending DAC ops are
        # dropped (a write in progress completes), then the shutdown commands are emulated to the end
        self._dac_flush()
        ops = []
        for ch in range(board.CHANNELS):
            ops += dac_bus.shutdown_ops(ch)
        self._dac_run_to_mark(self.dac_play(ops))
        self.safe_states += 1
        return not live

    def running(self, ch: int) -> bool:
        """True until the stream has drained and the SM has pulled from an empty FIFO, i.e. the last
        (idle) segment has fully played."""
        sm = self.sms[ch]
        if not sm.enabled:
            return False
        self._feed(ch)
        drained = self.system.dma(sm).done and sm.tx_level == 0
        return not (drained and sm.empty_pulls > self._empty0[ch])

    def input_level(self, n: int) -> int:
        """Level of trigger input ``n`` (1 or 2) now, as driven by :meth:`drive_trigger`."""
        return (self.system.pins >> board.TRIG_PINS[n - 1]) & 1

    def waiting(self, ch: int) -> bool:
        sm = self.sms[ch]
        return sm.enabled and sm.pc < pio.SEGMENT_ENTRY

    def pulses(self, ch: int) -> int:
        """Completed pulses: each group is one DMA block whose last word is the idle after the pulse,
        so a block pulled to its end is a pulse that has completed."""
        f = self._feeders[ch]
        if f is not None:  # a sequence: entries pulled to their end -> the Feeder's pulse count
            self._feed(ch)
            return f.pulses_after(self.sms[ch].blocks_consumed - self._blocks0[ch])
        done = self.sms[ch].blocks_consumed - self._blocks0[ch] - self._delay_blocks[ch]
        return max(0, done)

    # ---- analog front end --------------------------------------------------------------------
    def _adc(self, volts: float) -> int:
        """The 12-bit ADC code for an electrode voltage (magnitude: differential front end), with
        optional Gaussian noise of ``adc_noise_lsb`` codes."""
        code = impedance.electrode_uv_to_adc(abs(volts) * 1e6)
        if self.adc_noise_lsb:
            code = round(code + self._rng.gauss(0.0, self.adc_noise_lsb))
            code = min(max(code, 0), (1 << board.ADC_BITS) - 1)
        return code

    def measure_impedance(self, ch: int) -> int:
        """Sub-threshold test pulse through the electrode model, read by the 12-bit ADC. Its current
        is modelled (impedance.TEST_CURRENT_UA) and not written over the emulated DAC bus, so it
        never puts a DAC write into any running channel's pulse."""
        t_s = self.system.now / self.clock_hz
        volts = self.electrodes[ch].voltage(impedance.TEST_CURRENT_UA * 1e-6,
                                            impedance.TEST_SAMPLE_NS * 1e-9, t_s)
        return impedance.ohms(impedance.adc_to_electrode_uv(self._adc(volts)), impedance.TEST_CURRENT_UA)

    def _first_pin(self, ch: int, train) -> int:
        return board.CH_NEG[ch] if train.first == pulse_engine.NEG else board.CH_POS[ch]

    def phase1_samples(self, ch: int, min_interval_us: int = 0) -> list[tuple[int, int]]:
        """Phase-1 electrode readings since the last call: ``[(time_us, adc_code), ...]``.

        One reading per pulse actually played (a rising edge of the first-phase pin in the emulated
        PIO's pin record), the conversion started ``MONITOR_SAMPLE_NS`` after the edge; a pulse whose
        phase 1 ends before the conversion does is not read (too short to monitor), nor one closer
        than ``min_interval_us`` to the previous reading (the rate cap). A pulse whose conversion
        has not finished yet is left for the next call."""
        train = self._trains[ch]
        if train is None:
            return []
        edges = self.system._edges[self._first_pin(ch, train)]  # read-only view of the pin record
        now = self.system.now
        offset = pulse_engine.ns_to_ticks(impedance.MONITOR_SAMPLE_NS)
        conv = pulse_engine.ns_to_ticks(impedance.ADC_CONVERSION_NS)
        spacing = min_interval_us * self.clock_hz // 1_000_000
        # phase 1's current: the output the emulated DAC bus has latched (A = POS direction, B =
        # NEG direction) at the moment of the reading, not the train's nominal amplitude
        self.dac.update()
        out_b = train.first == pulse_engine.NEG
        out = []
        i = self._edge_pos[ch]
        while i < len(edges):
            rise = edges[i]
            fall = edges[i + 1] if i + 1 < len(edges) else None
            s = rise + offset
            if fall is None and s + conv > now:
                break  # phase 1 in progress, conversion not finished yet
            i += 2
            if fall is not None and s + conv > fall:
                continue  # phase 1 shorter than the conversion window
            last = self._last_sample[ch]
            if last is not None and s - last < spacing:
                continue
            self._last_sample[ch] = s
            current_a = self.dac.current_na(ch, out_b, s) * 1e-9
            volts = self.electrodes[ch].voltage(current_a, offset / self.clock_hz, s / self.clock_hz)
            out.append((self.ticks_at(s), self._adc(volts)))
        self._edge_pos[ch] = i
        return out

    def next_poll_cycle(self) -> int | None:
        """When the modelled firmware main loop next needs to run: ``reaction_us`` after the
        predicted end of the next phase-1 conversion of any running channel (from the channel's
        last phase-1 edge and its pulse schedule), or ``IDLE_POLL_US`` from now for a channel that
        waits for its trigger. None when nothing runs. Always later than ``now``."""
        now = self.system.now
        lag = pulse_engine.ns_to_ticks(impedance.MONITOR_SAMPLE_NS + impedance.ADC_CONVERSION_NS) + \
            self.reaction_us * self.clock_hz // 1_000_000
        best = None
        for ch in range(self.channels):
            train = self._trains[ch]
            if train is None or not self.running(ch):
                continue
            if self._feeders[ch] is not None:
                t = self._sequence_poll(ch, train, now, lag)
                best = t if best is None or t < best else best
                continue
            edges = self.system._edges[self._first_pin(ch, train)]
            n = len(edges) - self._edge0[ch]
            if n == 0:
                if self.waiting(ch):
                    t = now + self.IDLE_POLL_US * self.clock_hz // 1_000_000
                    best = t if best is None or t < best else best
                    continue
                rise = self.train_start[ch] + 2 + pulse_engine.words_ticks(train.delay)
                j = 0
            else:
                j = (n - 1) // 2  # index (since the start) of the last pulse seen
                rise = edges[self._edge0[ch] + 2 * j]
            t = rise + lag
            while t <= now:  # that pulse's poll is due or past: predict the next pulse's
                gap = train.period_ticks
                if (j + 1) % train.pulses_per_cycle == 0:
                    gap += train.realised["interburst"]
                rise += gap
                j += 1
                t = rise + lag
            best = t if best is None or t < best else best
        return best

    # A sequence's ring holds at most max_ahead entries, each (but a short lead) at least one period
    # long: polled at least every SEQUENCE_POLL_FRACTION of that, the Feeder never runs dry (the
    # board's main loop polls every few ms; the virtual Pico otherwise may wait MAX_POLL_GAP_S).
    SEQUENCE_POLL_FRACTION = 4

    def _sequence_poll(self, ch: int, train, now: int, lag: int) -> int:
        """next_poll_cycle for a sequence channel: ``lag`` after its next phase-1 start (from the
        onsets: train_start + 2 + onset), and at least every (max_ahead / SEQUENCE_POLL_FRACTION)
        periods so the Feeder tops the ring up in time."""
        f = self._feeders[ch]
        feed = now + max(1, f.max_ahead // self.SEQUENCE_POLL_FRACTION) * train.period_ticks
        st = self._seq_next[ch]
        origin = self.train_start[ch] + 2
        while st[1] is not None and origin + st[1] + lag <= now:
            x = st[0].next()
            st[1] = None if x is None else x[0]
        if st[1] is None:
            return feed
        return min(feed, origin + st[1] + lag)

    # ---- the bench around the board ----------------------------------------------------------
    def drive_trigger(self, n: int, level: int, at_s: float | None = None) -> int:
        """Drive external trigger input ``n`` (1 or 2) to ``level`` at virtual time ``at_s`` (default
        now), like a function generator wired to TRIG1/TRIG2. Returns the cycle of the change."""
        cycle = self.system.now if at_s is None else round(at_s * self.clock_hz)
        self.system.set_input(board.TRIG_PINS[n - 1], level, cycle)
        return cycle

    # ---- the logic analyzer attached to the virtual pins -------------------------------------
    def trace(self, channels=None, start: int | None = None, end: int | None = None) -> Trace:
        """Pin trace (one sample per PIO cycle) of the given channels (default: all), the trigger
        inputs and the DAC bus (SCK, MOSI, CS0-CS3, LDAC: shared by every channel, always all of
        them), from ``start`` (default: the earliest train start, i.e. SM enable, of those
        channels) to ``end`` (default: now). The DAC writes start() makes before it enables the
        SMs begin at ``start_called[ch]``: pass ``start=min(hal.start_called)`` (or any earlier
        cycle) for a capture that holds them, as a logic analyzer armed before START would."""
        channels = range(self.channels) if channels is None else channels
        names: dict[int, str] = {board.TRIG1_PIN: "TRIG1", board.TRIG2_PIN: "TRIG2"}
        names.update(DAC_LINE_NAMES)
        for ch in channels:
            names.update(_pin_names(ch))
        if start is None:
            start = min(self.train_start[ch] for ch in channels)
        return self.system.trace(names, start, end)
