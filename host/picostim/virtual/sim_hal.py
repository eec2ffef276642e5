"""The virtual Pico's HAL: the controller's hardware contract (see firmware/controller.py) implemented
on the cycle-exact PIO emulator, a DMA model, and an electrode model.

Everything timing-related comes from executing the firmware's own generated PIO opcodes
(firmware/pio_programs.py) on :class:`~picostim.virtual.pio_emu.PioSystem` with the exact words the
firmware's pulse engine built; this module only wires pins, DMA and state machines the way
firmware/hal_rp2.py does on the board.
"""

from __future__ import annotations

import hashlib

from firmware import board, impedance, pulse_engine
from firmware import pio_programs as pio
from picostim.capture.trace import Trace
from picostim.virtual.electrode import Electrode
from picostim.virtual.pio_emu import PioSystem


def _pin_names(ch: int) -> dict[int, str]:
    suffix = "" if ch == 0 else "_%d" % ch
    names = {board.CH_POS[ch]: "POS" + suffix, board.CH_NEG[ch]: "NEG" + suffix,
             board.CH_RECOVERY[ch]: "RECOVERY" + suffix}
    if ch == board.SYNC_CHANNEL:
        names[board.SYNC_PIN] = "SYNC"
    return names


class SimHal:
    """Simulated RP2040 + analog front end. Virtual time is PIO cycles (``system.now``)."""

    def __init__(self, channels: int = board.CHANNELS, electrodes: list[Electrode] | None = None,
                 accelerate: bool = True, reset_reason: int = 0):
        if not 1 <= channels <= board.CHANNELS:
            raise ValueError("channels must be 1..%d" % board.CHANNELS)
        self.channels = channels
        self.clock_hz = board.SYS_CLK_HZ
        self.system = PioSystem(self.clock_hz, accelerate=accelerate)
        self.electrodes = electrodes or [Electrode() for _ in range(channels)]
        self._reset_reason = reset_reason
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
        self.system.set_outputs(out_mask, 0)
        self.system.set_pindirs(out_mask, out_mask)
        self.train_start = [0] * channels  # cycle at which each channel was last started
        self._trains = [None] * channels
        self._blocks0 = [0] * channels
        self._empty0 = [0] * channels
        self._delay_blocks = [0] * channels

    # ---- identity and time -------------------------------------------------------------------
    def board_id(self) -> bytes:
        return hashlib.sha256(b"picostim-virtual").digest()[:8]

    def reset_reason(self) -> int:
        return self._reset_reason

    def time_us(self) -> int:
        return self.system.now * 1_000_000 // self.clock_hz

    def feed_watchdog(self) -> None:
        self.watchdog_fed_at = self.system.now

    def advance_cycles(self, cycles: int) -> None:
        if cycles > 0:
            self.system.run_for(cycles)

    # ---- stimulation -------------------------------------------------------------------------
    def start(self, trains, mask: int, wait_trigger) -> None:
        """Load every masked channel's DMA, then enable their SMs on one cycle (CTRL write)."""
        chosen, pcs = [], {}
        for ch in range(self.channels):
            if not mask >> ch & 1:
                continue
            train = trains[ch]
            sm = self.sms[ch]
            self.system.disable([sm])
            sm.clear_fifos()
            sm.restart()
            sm.in_base = train.trigger_pin if wait_trigger[ch] else board.TRIG1_PIN
            delay = [train.delay] if train.delay else []
            self.system.dma(sm).load(delay, train.groups, train.repeats)
            self._trains[ch] = train
            self._delay_blocks[ch] = len(delay)
            self._blocks0[ch] = sm.blocks_consumed
            self._empty0[ch] = sm.empty_pulls
            self.train_start[ch] = self.system.now
            chosen.append(sm)
            pcs[sm] = train.entry if wait_trigger[ch] else pio.SEGMENT_ENTRY
        self.system.enable(chosen, start_pc=pcs)

    def replace(self, ch: int, train) -> None:
        self._trains[ch] = train
        self.system.dma(self.sms[ch]).replace_at_block_boundary((), train.groups, train.repeats)

    def stop(self, mask: int) -> None:
        for ch in range(self.channels):
            if mask >> ch & 1:
                self.system.dma(self.sms[ch]).stop_at_block_boundary()

    def running(self, ch: int) -> bool:
        """True until the stream has drained and the SM has pulled from an empty FIFO, i.e. the last
        (idle) segment has fully played."""
        sm = self.sms[ch]
        if not sm.enabled:
            return False
        drained = self.system.dma(sm).done and sm.tx_level == 0
        return not (drained and sm.empty_pulls > self._empty0[ch])

    def waiting(self, ch: int) -> bool:
        sm = self.sms[ch]
        return sm.enabled and sm.pc < pio.SEGMENT_ENTRY

    def pulses(self, ch: int) -> int:
        """Completed pulses: each group is one DMA block whose last word is the idle after the pulse,
        so a block pulled to its end is a pulse that has completed."""
        done = self.sms[ch].blocks_consumed - self._blocks0[ch] - self._delay_blocks[ch]
        return max(0, done)

    # ---- analog front end --------------------------------------------------------------------
    def measure_impedance(self, ch: int) -> int:
        """Sub-threshold test pulse through the electrode model, read by the 12-bit ADC."""
        t_s = self.system.now / self.clock_hz
        volts = self.electrodes[ch].voltage(impedance.TEST_CURRENT_UA * 1e-6,
                                            impedance.TEST_SAMPLE_NS * 1e-9, t_s)
        return impedance.ohms(impedance.adc_to_electrode_uv(impedance.electrode_uv_to_adc(volts * 1e6)),
                              impedance.TEST_CURRENT_UA)

    # ---- the bench around the board ----------------------------------------------------------
    def drive_trigger(self, n: int, level: int, at_s: float | None = None) -> int:
        """Drive external trigger input ``n`` (1 or 2) to ``level`` at virtual time ``at_s`` (default
        now), like a function generator wired to TRIG1/TRIG2. Returns the cycle of the change."""
        cycle = self.system.now if at_s is None else round(at_s * self.clock_hz)
        self.system.set_input(board.TRIG_PINS[n - 1], level, cycle)
        return cycle

    # ---- the logic analyzer attached to the virtual pins -------------------------------------
    def trace(self, channels=None, start: int | None = None, end: int | None = None) -> Trace:
        """Pin trace (one sample per PIO cycle) of the given channels (default: all) and the trigger
        inputs, from ``start`` (default: the earliest train start) to ``end`` (default: now)."""
        channels = range(self.channels) if channels is None else channels
        names: dict[int, str] = {board.TRIG1_PIN: "TRIG1", board.TRIG2_PIN: "TRIG2"}
        for ch in channels:
            names.update(_pin_names(ch))
        if start is None:
            start = min(self.train_start[ch] for ch in channels)
        return self.system.trace(names, start, end)
