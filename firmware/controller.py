"""The controller: command dispatch and the per-channel state machine (IDLE -> ARMED/RUNNING -> FAULT).

It touches hardware only through a HAL object (firmware/hal_rp2.py on the board, the virtual Pico's
simulated HAL on the host), so the same code runs on both. Every request is fully validated before
anything changes; a refused request is answered with a NACK and leaves all state as it was.

HAL contract (duck-typed; MicroPython has no abc):
    channels                      number of stimulation channels
    board_id() -> bytes(8)        unique id
    reset_reason() -> int         0 power-on, 1 watchdog, 2 soft
    time_us() -> int              time.ticks_us(): µs that wrap at 2**30 on the board; only ever
                                  used through firmware/ticks.py (ticks_diff/ticks_add, Uptime)
    start(trains, mask, wait_trigger, first_ops=None, ramp_ops=())
                                  load each masked channel's Train and start all of them on the
                                  same PIO cycle; wait_trigger[ch] = 0 (start now) or trigger input 1/2.
                                  DAC codes: first_ops None -> each started channel's full codes
                                  (dac_bus.update_ops of train.dac_a/dac_b), else the op words of
                                  first_ops (writes only: pulse_engine.start_ops); either way written
                                  (a mark seen) before the state machines are enabled. Then ramp_ops
                                  (pulse_engine.ramp_up_ops: they begin with a wait op, so they follow
                                  the pulses) are queued on the DAC bus and a mark after them. The
                                  controller passes the two only when a started channel ramps.
    dac_play(ops)                 queue DAC bus op words after anything still queued, then a mark
    dac_busy() -> bool            ops still queued or running (the last mark not yet pushed)
    dac_mark_pulses(ch) -> int    pulses of ch completed when the most recent mark was pushed
    replace(ch, train)            double-buffered: switch to ``train`` at the next pulse boundary
    stop(mask)                    end each masked channel in every state: one waiting for its
                                  trigger is disarmed at once (it never fires); a running stream ends
                                  at the next pulse boundary (never mid-pulse, at most one queued
                                  pulse follows)
    disarm(mask) -> fired_mask    atomically make each masked trigger-waiting channel unable to fire;
                                  one that had not fired is stopped at once (no pulse, pins idle);
                                  returns the masked channels whose train is running (fired already,
                                  or started without a trigger): left running, never restarted
    running(ch) -> bool           stream still producing (or waiting for its trigger)
    waiting(ch) -> bool           stream armed, waiting for its external trigger
    input_level(n) -> int         level of trigger input n (1 or 2), for gated trains
    pulses(ch) -> int             pulses delivered since the channel was last started
    measure_impedance(ch) -> int | None  ohms from a sub-threshold test pulse; None: no valid reading
    phase1_samples(ch, min_interval_us) -> [(time_us, adc_code), ...]
                                  electrode readings taken during phase 1 of the pulses played since
                                  the last call (impedance.MONITOR_SAMPLE_NS into phase 1, at most one
                                  per min_interval_us), oldest first; [] when none
    feed_watchdog()
    safe_state(wait_us) -> bool   the crash path (firmware/crash.py): stop every stream at its pulse
                                  boundary, wait at most wait_us for it to drain, then halt (SMs off,
                                  pins idle, DMA aborted, DACs shut down); True if all had drained

Electrode monitoring and faults (SPEC §5, docs/SAFETY.md): poll() turns every phase-1 reading of a
running channel into ohms with the train's realised phase-1 current and feeds the channel's
debounced impedance.Classifier (seeded with the start's test-pulse reading). The pulse whose reading
completes the debounce (CONSECUTIVE readings agreeing on OPEN or SHORT) is the pulse in which the
fault is *seen*; in that same poll the channel is stopped at the next pulse boundary (hal.stop: the
pulse in progress completes its balancing phase, at most one already-queued pulse follows), the
channel latches ST_FAULT with the fault kind, and an EVENT reports channel, kind, the reading's time
and the reading in ohms. START/TRIGGER are refused (E_FAULT_LATCHED) until CLEAR_FAULT, and the start's
test pulse is the fresh check (E_IMPEDANCE while the electrode is still open or shorted).

DAC bus (docs/ARCHITECTURE.md "DAC bus"): the amplitude changes only after a pulse's end, through op
lists of firmware/dac_bus.py built by pulse_engine. START with a soft start (ramp_up_*) passes the first
pulse's codes and the first chunk of the ramp's ops (pulse_engine.RampWriter: 1 s of pulses ahead) to
hal.start, and poll() queues the next chunks (hal.dac_play) as the pulses go; several channels ramp in
one START only with identical pulse timing (E_RAMP_TIMING otherwise), and a STOP or fault of one of them
while the ramp plays stops them all. While the current changes pulse by pulse (ramps, just after a live
change) electrode monitoring maps each phase-1 reading to its pulse and uses that pulse's current. SET_AMPLITUDE (a running channel, the DAC bus idle, every limit
checked on the new parameter set) plays [wait for the channel's phase-2 pin, write A, write B]; when
poll() sees its mark (hal.dac_busy() false) the parameters, realised values and monitoring current
become the new ones and an `amplitude` EVENT gives the first pulse with them (hal.dac_mark_pulses).
STOP of a running channel with a soft stop (ramp_down_*) plays the ramp-down ops and the DAC shutdown,
and stops the stream when poll() sees their mark; a second STOP, a STOP while the DAC bus is busy or
of channels whose timing differs, a fault, a gate closing and the deadman stop at once (no ramp).

Custom sequences (docs/ARCHITECTURE.md "Custom sequences"): a channel whose parameters have
sequence_pulses = N > 0 takes its N pulses by SET_SEQUENCE (firmware/sequence.py checks each chunk
and stores its records; SET_PARAMS/LOAD discard them); START/TRIGGER refuse it until all N arrived
(E_SEQUENCE_INCOMPLETE) and then set ``train.sequence`` (a sequence.SequenceSource) on the Train
handed to ``hal.start``, whose stream plays the onsets from it (dma_chain.plan_for). When the
amplitude varies, pulse_engine.sequence_writer's ops are queued like a ramp's (start chunk, poll()
top-ups) and hold the DAC bus. SET_AMPLITUDE and SAVE refuse a sequence channel, SET_PARAMS refuses to
switch a running channel into or out of sequence mode; STOP ends it at the next pulse boundary.

Gated trains (trigger gated1/gated2, SPEC §3 "runs while the input is high"): the PIO itself waits for
the gate to be high (cycle-exact start); poll() sees the gate low, stops the stream at the next pulse
boundary and, once it has drained, re-arms the channel on the gate, so the train restarts from its
beginning at the next opening. The stop is as quick as the main loop's poll (after each pulse on the
board), plus at most one queued pulse.
"""

from firmware import board, impedance, pulse_engine, storage
from firmware.limits import LIMITS
from firmware.ticks import Uptime, ticks_add, ticks_diff
from protocol import messages as M
from protocol import params as P
from protocol.framing import PROTOCOL_VERSION, FrameDecoder, encode_frame

FIRMWARE_VERSION = (0, 1, 0)
_FAULT_EVENT = {M.Z_OPEN: M.EV_FAULT_OPEN, M.Z_SHORT: M.EV_FAULT_SHORT}
_I32_MAX = 0x7FFFFFFF
_SEQ_WALK = 64  # pulses a sequence reading is walked back at most (monitoring)


class Refused(Exception):
    """A request that is answered with a NACK; raised before any state changes."""

    def __init__(self, body):
        super().__init__()
        self.body = body


def _refuse(code, field=None, value=0, limit=0):
    fid = P.NO_FIELD if field is None else P.field_id(field)
    raise Refused(M.encode_nack(code, fid, value, limit))


class Controller:
    def __init__(self, hal, send, limits=LIMITS, storage=None, monitor_max_hz=impedance.MONITOR_MAX_HZ,
                 sequences=None):
        """``send(bytes)`` writes to the host link; ``storage`` is a firmware.storage.Store (or None:
        SAVE/LOAD are refused); ``monitor_max_hz`` caps the phase-1 electrode readings per second and
        channel (0 = monitoring off); ``sequences``: where custom sequences' records go: a store
        (firmware.sequence.FileStore / RamStore), a directory (a FileStore there: the board) or None
        (RAM). firmware/sequence.py is imported only when a channel gets a sequence (heap)."""
        self.hal = hal
        self.send = send
        self.limits = limits
        self.storage = storage
        self._sequences = sequences
        self.event_log = []  # (seq, body), at most M.EVENT_LOG_LEN, oldest first
        self.deadman_trips = 0
        self.deadman_ms = 0  # per connection: 0 off; HELLO resets it
        self._uptime = Uptime(hal.time_us)  # µs since boot across the 2**30 µs tick wrap
        self._rx_ref = self._uptime.last  # tick value the host's current silence is measured from
        self._silent_ms = 0  # whole ms of that silence already folded out of _rx_ref (small ints only)
        self.boot_reason = hal.reset_reason()  # HELLO reset_reason; main.py sets M.RESET_CRASH after a crash
        self.crashes = 0  # exceptions caught by main.py since the chip's reset (STATUS counter)
        self.where = M.CRASH_LOOP  # what the controller is doing, for a crash report (main.py)
        self._pinned = 0  # event_log entries at its start that are never dropped (a crash report)
        self.decoder = FrameDecoder()
        n = hal.channels
        self.params = [None] * n
        self.trains = [None] * n
        self.state = [M.ST_IDLE] * n
        self.fault = [0] * n
        self.impedance_ohm = [M.OHM_UNKNOWN] * n  # no reading until a check or monitoring gives one
        self.classifier = [impedance.Classifier() for _ in range(n)]
        self.monitor_max_hz = monitor_max_hz
        self._monitor_na = [0] * n  # realised phase-1 current of the running train (0 = not monitored)
        # while the current changes from pulse to pulse (ramp, live change): (kind, first pulse, train
        # or the old current); monitoring then uses the current of each reading's own pulse
        self._mon_ramp: list = [None] * n
        self._gate_closed = [False] * n  # a gated channel stopping because its gate went low
        self._software_start = [False] * n  # started by TRIGGER: runs ungated
        self._stopping = [False] * n  # stopped by the host or the deadman: no re-arm on the gate
        self._pulses_before = [0] * n  # pulses of earlier gate openings of the current start
        self._sampler = getattr(hal, "phase1_samples", None)  # a HAL without it: no monitoring
        self._dac_busy = getattr(hal, "dac_busy", None)  # a HAL without a DAC bus: no ramps, no live changes
        self._amp_pending: list = [None] * n  # (params, train) of a SET_AMPLITUDE until its mark is seen
        self._down_mask = 0  # channels ramping down after a STOP: stopped when the ramp's mark is seen
        self._dac_mask = 0  # channels whose DAC ops (ramp, change, ramp-down) are queued, until the mark
        # channels of a ramp whose ops wait on one channel's pin and write several: if one of them
        # stops early, all stop (a HAL may skip a wait on a stream that ended and play the writes
        # behind it at once: they must not reach a channel that still runs)
        self._group_mask = 0
        # [RampWriter, lead channel, its pulse count when the ramp began]: a ramp still being queued
        # chunk by chunk (poll() tops it up RAMP_LOOKAHEAD_TICKS ahead of the pulses)
        self._writer: list | None = None
        self._plan = None  # (channels, software, ops) of the start the last _check_startable passed
        self._replaced: list = [None] * n  # the shortest-idle train replace()d away since the start
        self._seq: list = [None] * n  # sequence.SequenceBuilder of a channel in sequence mode (its upload)
        self.nacks = 0
        self.duplicates = 0
        self.events_sent = 0
        self._last_key = None
        self._last_response = b""
        self._handlers = {
            M.HELLO: self._hello,
            M.GET_PARAMS: self._get_params,
            M.SET_PARAMS: self._set_params,
            M.START: self._start,
            M.STOP: self._stop,
            M.TRIGGER: self._trigger,
            M.STATUS: self._status,
            M.IMPEDANCE: self._impedance,
            M.CLEAR_FAULT: self._clear_fault,
            M.SAVE: self._save,
            M.LOAD: self._load,
            M.LINK: self._link,
            M.EVENT_LOG: self._event_log,
            M.REPL: self._repl,
            M.SET_AMPLITUDE: self._set_amplitude,
            M.SET_SEQUENCE: self._set_sequence,
        }
        self.handback = False  # REPL accepted: main.py stops serving and returns to the REPL

    # ---- link ---------------------------------------------------------------------------------
    def receive(self, data):
        """Feed bytes from the host; answers every good frame (garbage is counted and dropped)."""
        self.where = M.CRASH_LINK
        for frame in self.decoder.feed(data):
            self._heard()  # any good frame keeps the deadman quiet
            self.where = frame.type
            self.send(self._respond(frame))
            self.where = M.CRASH_LINK
        self.where = M.CRASH_LOOP

    def _respond(self, frame):
        key = (frame.seq, frame.crc)
        if key == self._last_key and frame.type != M.HELLO:
            self.duplicates += 1  # a retry: answer from the cache, do not execute twice
            return self._last_response
        if frame.version != PROTOCOL_VERSION:
            reply = self._nack(frame.seq, M.encode_nack(M.E_BAD_VERSION, P.NO_FIELD, frame.version,
                                                        PROTOCOL_VERSION))
        else:
            handler = self._handlers.get(frame.type)
            if handler is None:
                reply = self._nack(frame.seq, M.encode_nack(M.E_UNKNOWN_TYPE, P.NO_FIELD, frame.type, 0))
            else:
                try:
                    reply = encode_frame(frame.type | M.RESPONSE, frame.seq, handler(frame.body))
                except Refused as refusal:
                    reply = self._nack(frame.seq, refusal.body)
        self._last_key = key
        self._last_response = reply
        return reply

    def _nack(self, seq, body):
        self.nacks += 1
        return encode_frame(M.NACK, seq, body)

    def emit(self, kind, channel, value=0, time_us=None, extra=None):
        """Send an asynchronous EVENT frame (its seq is the device's own event counter). ``time_us``:
        a ``hal.time_us()`` tick value (e.g. a phase-1 reading's), default now. On the wire the time
        is µs since boot (u64, never wraps): the tick value extended across the 2**30 µs wrap.
        ``extra``: the additional field of the kinds that have one (amplitude: from_pulse)."""
        self.events_sent += 1
        t = self._uptime.now_us() if time_us is None else self._uptime.at_us(time_us)
        body = M.encode_event(kind, channel, t, value, extra)
        self.event_log.append((self.events_sent & 0xFFFF, body))
        if len(self.event_log) > M.EVENT_LOG_LEN:  # a lossy link loses unacknowledged EVENTs
            self.event_log.pop(self._pinned)  # ... except a crash report (boot()), kept for replay
        self.send(encode_frame(M.EVENT, self.events_sent, body))

    def boot(self, crashes=0, crash=None, uptime=None):
        """Announce the boot: EVENT boot (value = the boot reason). After an exception caught by
        firmware/main.py (``crash`` = (exception class name, where)), the boot reason is
        M.RESET_CRASH, a crash EVENT (value = M.crash_value) follows, and both stay first in the
        event log (EVENT_LOG replays them after a reconnection however many events follow);
        ``crashes`` counts the crashes since the chip's reset (STATUS counter ``crashes``);
        ``uptime``: the crashed controller's clock (uptime and EVENT times carry on)."""
        self.crashes = crashes
        if uptime is not None:
            self._uptime = uptime
        if crash is not None:
            self.boot_reason = M.RESET_CRASH
        self.emit(M.EV_BOOT, 0, self.boot_reason)
        if crash is not None:
            self.emit(M.EV_CRASH, 0, M.crash_value(crash[0], crash[1]))
            self._pinned = 2

    # ---- periodic work ------------------------------------------------------------------------
    def poll(self):
        """Follow the hardware: electrode readings, finished trains, triggers. Called from the main
        loop."""
        self.where = M.CRASH_POLL
        self._uptime.update()  # at least once per 2**30 µs: counts the tick wraps
        if self._writer is not None:
            self._feed_ramp()
        if self._dac_mask:
            self._follow_dac()
        for ch in range(self.hal.channels):
            st = self.state[ch]
            if st == M.ST_ARMED and not self.hal.waiting(ch) and (self.hal.running(ch) or self.hal.pulses(ch)):
                # fired (a channel disarmed by a stop before its trigger is neither running nor
                # has pulses: it only reports train_done below)
                self.state[ch] = st = M.ST_RUNNING
                self.emit(M.EV_TRIGGER_SEEN, ch)
            if st == M.ST_RUNNING and self._monitor_na[ch] and self._monitor(ch):
                continue  # fault latched: the channel is stopping
            if self._mon_ramp[ch] is not None:
                self._mon_settled(ch)
            gate = self._gate_input(ch)
            if st == M.ST_RUNNING and gate and not self._gate_closed[ch] and not self.hal.input_level(gate):
                self.hal.stop(1 << ch)  # gate low: end at the next pulse boundary, then re-arm
                self._gate_closed[ch] = True
            if st in (M.ST_ARMED, M.ST_RUNNING) and not self.hal.running(ch):
                if self._gate_closed[ch]:
                    self._rearm_on_gate(ch, gate)
                else:
                    self._cancel_dac(ch)
                    self.state[ch] = M.ST_IDLE
                    self.emit(M.EV_TRAIN_DONE, ch, self._pulses(ch))
        if self.deadman_ms:
            self._check_deadman()
        self.hal.feed_watchdog()
        self.where = M.CRASH_LOOP

    def _follow_dac(self):
        """The DAC bus's mark: a SET_AMPLITUDE took effect (EVENT amplitude) once a pulse has played
        with it, a ramp-down is over (stop its streams). A change that no pulse played (the stream
        ended first, e.g. a STOP right after it, or its writes followed the last pulse) is dropped: not
        reported, the parameters keep the old amplitude."""
        busy = self._bus_busy()
        for ch in range(self.hal.channels):
            pending = self._amp_pending[ch]
            if pending is None:
                continue
            if not busy:
                params, train = pending
                mark = self.hal.dac_mark_pulses(ch)
                if self.hal.pulses(ch) <= mark:  # no pulse with the new codes yet
                    if not self.hal.running(ch):
                        self._amp_pending[ch] = None  # and none will come
                    continue
                self._amp_pending[ch] = None
                from_pulse = self._pulses_before[ch] + mark
                self.params[ch] = params
                self.trains[ch] = train
                if self._monitor_na[ch]:
                    self._mon_ramp[ch] = (2, mark, self._monitor_na[ch])  # readings of earlier pulses
                    self._monitor_na[ch] = train.realised["amplitude_na"]
                self.emit(M.EV_AMPLITUDE, ch, train.realised["amplitude_ua"], extra=from_pulse)
        if not busy and self._writer is None:
            if self._down_mask:
                self.hal.stop(self._down_mask)  # after the DAC shutdown: the remaining pulses carry no current
            self._down_mask = 0
            self._dac_mask = 0
            for ch in range(self.hal.channels):  # changes still waiting for their first pulse
                if self._amp_pending[ch] is not None:
                    self._dac_mask |= 1 << ch
            self._group_mask = 0
            return
        for ch in range(self.hal.channels):  # a stream that ended never reaches its queued ops
            if self._dac_mask >> ch & 1 and not self.hal.running(ch):
                self._cancel_dac(ch)

    def _bus_busy(self):
        """hal.dac_busy(): True while DAC ops are queued or running (never called without it)."""
        busy = self._dac_busy
        return busy is not None and busy()

    def _feed_ramp(self):
        """Queue the next chunk of the ramp being written once no more than half a lookahead of its
        boundaries is still ahead of the pulses; forget it when its lead stream has ended."""
        w = self._writer
        if w is None:
            return
        writer, lead, base = w
        if not self.hal.running(lead):
            self._writer = None
            return
        ahead = writer.lookahead()
        if writer.emitted - (self.hal.pulses(lead) - base) <= ahead // 2:
            ops = writer.chunk(ahead)
            if ops:
                self.hal.dac_play(ops)
            if writer.done:
                self._writer = None

    def _drop_writer(self, ch):
        """No more chunks for a ramp of ``ch`` (it stops some other way)."""
        if self._writer is not None and ch in self._writer[0].channels:
            self._writer = None

    def _group_of(self, ch):
        """The other channels of the group ramp ``ch`` is in (0 when none): they stop with it."""
        return self._group_mask & ~(1 << ch) if self._group_mask >> ch & 1 else 0

    def _cancel_dac(self, ch):
        """Forget a channel's pending amplitude change and ramp-down: its stream ended before their
        mark (the ops wait for a pulse that never comes) or it starts afresh."""
        self._amp_pending[ch] = None
        self._down_mask &= ~(1 << ch)
        self._dac_mask &= ~(1 << ch)
        self._drop_writer(ch)
        if self._group_mask >> ch & 1:
            self._group_mask = 0

    def _monitor(self, ch):
        """Classify the channel's new phase-1 readings; on OPEN/SHORT stop and latch the fault.
        Returns True when a fault was latched."""
        sampler = self._sampler
        if sampler is None:
            return False
        samples = sampler(ch, impedance.monitor_interval_us(self.monitor_max_hz))
        debounce = self.classifier[ch]
        ramp = self._mon_ramp[ch]
        if ramp is not None:
            p_now = self.hal.pulses(ch)
            t_now = self.hal.time_us()
        for t_us, code in samples:
            na = self._monitor_na[ch]
            if ramp is not None:
                na = self._reading_na(ch, ramp, self._reading_pulse(ch, t_us, p_now, t_now))
                if not na:
                    continue  # a pulse after the soft stop's DAC shutdown: no current to measure with
            ohm = impedance.phase1_ohms(code, na)
            self.impedance_ohm[ch] = ohm
            before = debounce.state
            cls = debounce.update(ohm)
            if cls == M.Z_HIGH and before != M.Z_HIGH:  # a warning once per entry; stimulation goes on
                self.emit(M.EV_IMPEDANCE_HIGH, ch, ohm, t_us)
            if cls == M.Z_OPEN or cls == M.Z_SHORT:
                self.hal.stop(1 << ch | self._group_of(ch))  # first: the pulse in progress completes
                self._drop_writer(ch)
                self._down_mask &= ~(1 << ch)  # a fault never ramps down (a pending change may
                # still reach the last pulse: _follow_dac reports it if its mark comes)
                self.state[ch] = M.ST_FAULT
                self.fault[ch] = _FAULT_EVENT[cls]
                self._monitor_na[ch] = 0
                self.emit(self.fault[ch], ch, ohm if ohm < _I32_MAX else _I32_MAX, t_us)
                return True
        return False

    def _reading_pulse(self, ch, t_us, p_now, t_now):
        """Index (since the start) of the pulse a phase-1 reading taken at ``t_us`` belongs to, from the
        pulses completed by ``t_now`` (hal.pulses) and the train's timing (within a pulse)."""
        train = self.trains[ch]
        tpu = board.SYS_CLK_HZ // 1000000
        d = ticks_diff(t_now, t_us)
        rest = (train.realised["pulse"] - pulse_engine.ns_to_ticks(impedance.MONITOR_SAMPLE_NS)) // tpu
        if d < rest:
            return p_now  # still in progress: its index is the number completed
        ramp = self._mon_ramp[ch]
        if ramp is not None and ramp[0] == 3:  # a sequence: walk back over its own intervals
            return self._sequence_pulse(ramp[2], p_now - 1, (d - rest) * tpu)
        j = p_now - 1 - (d - rest) * tpu // train.period_ticks
        return j if j > 0 else 0

    @staticmethod
    def _sequence_pulse(reader, j, elapsed):
        """The pulse of a sequence that ended ``elapsed`` ticks before pulse ``j`` did: back over the
        intervals between their onsets (at most _SEQ_WALK pulses: readings come every few ms)."""
        steps = 0
        while j > 0 and steps < _SEQ_WALK:
            reader.seek(j - 1)
            a = reader.next()
            b = reader.next()
            if a is None or b is None or elapsed < b[0] - a[0]:
                break
            elapsed -= b[0] - a[0]
            j -= 1
            steps += 1
        return j if j > 0 else 0

    def _reading_na(self, ch, ramp, j):
        """Phase-1 current (nA) of pulse ``j`` while the amplitude changes pulse by pulse."""
        kind, first, what = ramp
        if kind == 2:  # a live change: the old current before its first pulse
            return what if j < first else self._monitor_na[ch]
        if kind == 3:  # a sequence: the pulse's own phase-1 code from its record
            what.seek(j)
            rec = what.next()
            return pulse_engine.code_to_na(rec[1]) if rec is not None else self._monitor_na[ch]
        if kind == 0:
            a, b = pulse_engine.pulse_codes(what, j - first)
        elif j < first:
            a, b = what.dac_a, what.dac_b
        elif j - first < what.ramp_down_k:
            a, b = pulse_engine.ramp_down_codes(what, j - first)
        else:
            return 0  # the DAC is shut down
        return pulse_engine.code_to_na(b if what.first == pulse_engine.NEG else a)

    def _mon_settled(self, ch):
        """Forget the per-pulse current once every pulse it covers has passed."""
        ramp = self._mon_ramp[ch]
        if ramp is not None and (ramp[0] == 0 or ramp[0] == 2):  # 1 ramp-down, 3 a sequence: to the end
            last = ramp[1] if ramp[0] == 2 else ramp[1] + ramp[2].ramp_up_k
            if self.hal.pulses(ch) > last + 2:
                self._mon_ramp[ch] = None

    def _gate_input(self, ch):
        """Trigger input (1 or 2) gating this channel's running train, or 0 when it is not gated
        (a software TRIGGER starts a gated train ungated)."""
        params = self.params[ch]
        if params is None or self._software_start[ch] or self._stopping[ch]:
            return 0
        trig = params["trigger"]
        return trig - 2 if trig in (P.TRIGGER_GATED1, P.TRIGGER_GATED2) else 0

    def _rearm_on_gate(self, ch, gate):
        self._gate_closed[ch] = False
        self._pulses_before[ch] += self.hal.pulses(ch)
        wait = [0] * self.hal.channels
        wait[ch] = gate
        writer = None
        if self._dac_busy is not None and self._writer is None and self.trains[ch].ramp_up_k > 1:
            try:  # the soft start again at every opening (validated when the train was set)
                writer = pulse_engine.ramp_up_writer(self.trains, [ch], wait)
            except pulse_engine.Unrealisable:
                writer = None
        if writer is not None:
            self.hal.start(self.trains, 1 << ch, wait, pulse_engine.start_ops(self.trains, [ch]),
                           writer.chunk(writer.lookahead()))
            self._dac_mask |= 1 << ch
            self._mon_ramp[ch] = (0, 0, self.trains[ch])  # pulses count from this opening
            if not writer.done:
                self._writer = [writer, ch, 0]
        else:
            self.hal.start(self.trains, 1 << ch, wait)  # the PIO waits for the gate to open again
        self.state[ch] = M.ST_ARMED

    def _pulses(self, ch):
        return self._pulses_before[ch] + self.hal.pulses(ch)

    def _heard(self):
        """The host spoke (or the deadman tripped): its silence is measured from now."""
        self._rx_ref = self.hal.time_us()
        self._silent_ms = 0

    def _silence_exceeds(self, ms):
        """True once the host has been silent for more than ``ms`` milliseconds. Wrap-safe: the
        silence is ticks_diff(now, _rx_ref) plus whole ms folded out of it at every poll (so the
        tick difference stays far below 2**29 µs and any u32 deadman_ms works)."""
        d = ticks_diff(self.hal.time_us(), self._rx_ref)
        if d >= 1000:
            whole = d // 1000
            self._silent_ms += whole
            self._rx_ref = ticks_add(self._rx_ref, whole * 1000)
            d -= whole * 1000
        return self._silent_ms > ms or (self._silent_ms == ms and d > 0)

    def _check_deadman(self):
        """Tethered mode (SPEC §6): stop every running or armed channel once the host has been silent
        for the deadman time; trips once per silence (the next good frame re-arms it)."""
        if not self._silence_exceeds(self.deadman_ms):
            return
        live = [ch for ch in range(self.hal.channels) if self.state[ch] in (M.ST_ARMED, M.ST_RUNNING)]
        if live:
            self.hal.stop(self._bits(live))  # at the next pulse boundary; poll() reports train_done
            for ch in live:
                self._down_mask &= ~(1 << ch)  # the deadman never ramps down
                self._drop_writer(ch)
                self._stopping[ch] = True
                self._gate_closed[ch] = False
            self.deadman_trips += 1
            self.emit(M.EV_DEADMAN, 0, self._bits(live))
        self._heard()  # one trip per silence

    # ---- request bodies -----------------------------------------------------------------------
    def _channel(self, body, length):
        if len(body) != length:
            _refuse(M.E_BAD_LENGTH, "body", len(body), length)
        ch = body[0]
        if ch >= self.hal.channels:
            _refuse(M.E_BAD_CHANNEL, "channel", ch, self.hal.channels - 1)
        return ch

    def _mask(self, body):
        if len(body) != 1:
            _refuse(M.E_BAD_LENGTH, "body", len(body), 1)
        mask = body[0]
        if mask == 0 or mask >> self.hal.channels:
            _refuse(M.E_BAD_CHANNEL, "mask", mask, (1 << self.hal.channels) - 1)
        return [ch for ch in range(self.hal.channels) if mask >> ch & 1]

    def _hello(self, body):
        self.deadman_ms = 0  # a new connection starts with the deadman off
        return M.encode_hello(FIRMWARE_VERSION, self.hal.channels, self.hal.board_id(), self.boot_reason,
                              self.limits)

    def _params_response(self, ch):
        train = self.trains[ch]
        realised = dict(train.realised)
        realised["pulses_per_cycle"] = train.pulses_per_cycle
        realised["repeats"] = train.repeats
        seq = self._seq[ch]
        if seq is not None:  # a custom sequence: N pulses per cycle, played once or looped
            realised["pulses_per_cycle"] = seq.pulses
            realised["repeats"] = seq.repeats()
            realised["train_duration"] = seq.repeats() * seq.cycle_ticks
        realised["tick_hz"] = board.SYS_CLK_HZ
        return M.encode_params_response(ch, self.params[ch], realised)

    def _get_params(self, body):
        ch = self._channel(body, 1)
        if self.params[ch] is None:
            _refuse(M.E_NOT_CONFIGURED, "channel", ch, 0)
        return self._params_response(ch)

    def _set_params(self, body):
        if len(body) != 1 + P.SIZE:
            _refuse(M.E_BAD_LENGTH, "body", len(body), 1 + P.SIZE)
        ch = self._channel(body[:1], 1)
        return self._apply(ch, P.unpack(body[1:]))

    def _apply(self, ch, params):
        """Validate, build and install ``params`` on ``ch`` (SET_PARAMS and LOAD); refuses first."""
        train, violation = pulse_engine.build_checked(params, self.limits)
        if violation is None and params["sequence_pulses"]:  # the amplitude may change at every pulse
            violation = pulse_engine.update_idle_violation(train, 1)
        if violation is not None:
            raise Refused(M.encode_violation_nack(violation))
        if self.state[ch] in (M.ST_ARMED, M.ST_RUNNING):
            old_seq = self.params[ch]["sequence_pulses"] if self.params[ch] is not None else 0
            if old_seq or params["sequence_pulses"]:
                # a sequence is uploaded for its parameters and played from its records: no switch
                # at a pulse boundary into or out of one (STOP, SET_PARAMS, SET_SEQUENCE, START)
                _refuse(M.E_BAD_STATE, "sequence_pulses", params["sequence_pulses"], self.state[ch])
            if self._dac_mask >> ch & 1 and (self._writer is not None or self._bus_busy()):
                # DAC ops in flight were built for the current train (its phase-2 pin, its codes)
                _refuse(M.E_DAC_BUSY, "channel", ch, 0)
            old = self.trains[ch]
            if (train.dac_a, train.dac_b) != (old.dac_a, old.dac_b):
                # a running channel's amplitude changes through SET_AMPLITUDE (at a known pulse)
                _refuse(M.E_BAD_STATE, "amplitude_ua", params["amplitude_ua"], self.state[ch])
            if train.first != old.first:
                # the DAC bus waits on the phase-2 pin: until the switch, the new train's phase-2
                # pin would be the playing train's phase-1 pin (a later change could land mid-pulse)
                _refuse(M.E_BAD_STATE, "polarity", params["polarity"], self.state[ch])
            if train.shape != old.shape:
                # likewise the DAC bus's waits per boundary (pulse_engine.boundary_wait_ops) follow the shape
                _refuse(M.E_BAD_STATE, "shape", params["shape"], self.state[ch])
            self.hal.replace(ch, train)  # timing changes take effect at the next pulse boundary
            older = self._replaced[ch]
            if older is None or older.period_ticks - older.realised["pulse"] > old.period_ticks - old.realised["pulse"]:
                self._replaced[ch] = old  # may still play: DAC updates must also fit its idle
        self.params[ch] = params
        self.trains[ch] = train
        if self._seq[ch] is not None:  # new parameters discard an uploaded sequence (even the same N)
            self._seq[ch].discard()
        self._seq[ch] = None
        if params["sequence_pulses"]:
            from firmware import sequence

            self._seq[ch] = sequence.SequenceBuilder(params, self.limits, self._seq_store().records(ch))
        return self._params_response(ch)

    def _waits(self, channels, software):
        wait = [0] * self.hal.channels
        for ch in channels:
            trig = self.params[ch]["trigger"]
            wait[ch] = 0 if software or trig == P.TRIGGER_SOFTWARE else (1 if trig in (1, 3) else 2)
        return wait

    def _ramp_ops(self, channels, wait):
        """(first_ops, the ramp's first chunk, its RampWriter) for a start of ``channels``, or None
        when none of them ramps. Refuses (before anything moves) ramps the DAC bus cannot play.
        A start with sequence channels: _sequence_ops first (its ops when a sequence's amplitude
        varies; start_ops gives a sequence's pulse-0 codes)."""
        for ch in channels:
            if self._seq[ch] is not None:
                ops = self._sequence_ops(channels, wait)
                if ops is not None:
                    return ops
                break
        if not [ch for ch in channels if self.trains[ch].ramp_up_k > 1]:
            return None
        if self._dac_busy is None:  # no DAC bus on this HAL: a ramp would be played at full amplitude
            ch = [c for c in channels if self.trains[c].ramp_up_k > 1][0]
            field = "ramp_up_ns" if self.trains[ch].ramp_ticks else "ramp_up_pulses"
            _refuse(M.E_OUT_OF_RANGE, field, self.params[ch][field], 0)
        if self._writer is not None or self._bus_busy():
            _refuse(M.E_DAC_BUSY, "channel", channels[0], 0)
        try:
            writer = pulse_engine.ramp_up_writer(self.trains, channels, wait)
        except pulse_engine.RampMismatch as exc:
            raise Refused(M.encode_nack(M.E_RAMP_TIMING, P.field_id(exc.field), exc.value, exc.limit, exc.relation))
        except pulse_engine.Unrealisable as exc:
            raise Refused(M.encode_violation_nack(P.Violation(exc.field, exc.value, exc.limit, exc.relation)))
        return pulse_engine.start_ops(self.trains, channels), writer.chunk(writer.lookahead()), writer

    def _sequence_ops(self, channels, wait):
        """A START with sequence channels: attach each one's SequenceSource to its train
        (``train.sequence``: the HAL's stream reads it, and without first_ops the HAL writes its pulse
        0's codes), then (first_ops, the first chunk of the DAC ops, the SequenceWriter) when a
        sequence's amplitude varies, else None (constant sequences need no op after the start; a soft
        start of another channel then plays as usual). Refused before anything moves: amplitudes the
        trains' codes do not give on a HAL without a DAC bus, what pulse_engine.sequence_writer
        refuses (two channels whose amplitudes vary, or one with a soft start: E_RAMP_TIMING naming
        sequence_pulses; too little idle for the DAC update: period_ns), and the DAC bus busy with a
        ramp or a change while a varying sequence would start (E_DAC_BUSY)."""
        seqs = [ch for ch in channels if self._seq[ch] is not None]
        if self._dac_busy is None:  # the HAL writes each train's own codes: only a constant sequence at them
            for ch in seqs:
                b = self._seq[ch]
                if b.code_min != b.code_max or b.code_max != self.trains[ch].code1:
                    _refuse(M.E_OUT_OF_RANGE, "sequence_amplitude_ua", self.params[ch]["amplitude_ua"], 0)
        for ch in channels:
            b = self._seq[ch]
            self.trains[ch].sequence = b.source() if b is not None else None
        if self._dac_busy is None:
            return None
        try:
            writer = pulse_engine.sequence_writer(self.trains, channels)
        except pulse_engine.RampMismatch as exc:
            raise Refused(M.encode_nack(M.E_RAMP_TIMING, P.field_id(exc.field), exc.value, exc.limit, exc.relation))
        except pulse_engine.Unrealisable as exc:
            raise Refused(M.encode_violation_nack(P.Violation(exc.field, exc.value, exc.limit, exc.relation)))
        if writer is None:
            return None
        if self._writer is not None or self._bus_busy():
            _refuse(M.E_DAC_BUSY, "channel", writer.channels[0], 0)
        return pulse_engine.start_ops(self.trains, channels), writer.chunk(writer.lookahead()), writer

    def _check_startable(self, channels, armed_ok=False, software=False):
        for ch in channels:
            if self.state[ch] == M.ST_FAULT:
                _refuse(M.E_FAULT_LATCHED, "channel", ch, 0)
            if self.params[ch] is None:
                _refuse(M.E_NOT_CONFIGURED, "channel", ch, 0)
            if self.state[ch] != M.ST_IDLE and not (armed_ok and self.state[ch] == M.ST_ARMED):
                _refuse(M.E_BAD_STATE, "channel", ch, self.state[ch])
            seq = self._seq[ch]
            if seq is not None and not seq.complete:  # value = pulses received, limit = N
                _refuse(M.E_SEQUENCE_INCOMPLETE, "sequence_pulses", seq.received, seq.pulses)
        self._refuse_beside_varying_sequence(channels)
        self._plan = None
        ops = self._ramp_ops(channels, self._waits(channels, software))  # refuses an unplayable ramp first
        self._plan = (list(channels), software, ops)
        readings = []
        for ch in channels:  # electrode check before any output moves
            ohm = self.hal.measure_impedance(ch)
            if ohm is None:  # no valid reading: the check failed (unknown), it did not measure a short
                self.impedance_ohm[ch] = M.OHM_UNKNOWN
                _refuse(M.E_IMPEDANCE, "channel", ch, M.OHM_UNKNOWN)
            self.impedance_ohm[ch] = ohm
            cls = impedance.classify(ohm)
            if cls in (M.Z_OPEN, M.Z_SHORT):
                _refuse(M.E_IMPEDANCE, "channel", ch, ohm)
            readings.append(ohm)
        return readings

    def _launch(self, channels, software, readings):
        for ch, ohm in zip(channels, readings):  # monitoring starts from the fresh check's class
            self.classifier[ch].reset(ohm)
            train = self.trains[ch]
            monitored = self._sampler is not None and self.monitor_max_hz > 0 and train.realised["phase1"] >= \
                pulse_engine.ns_to_ticks(impedance.MONITOR_MIN_PHASE_NS)
            self._monitor_na[ch] = train.realised["amplitude_na"] if monitored else 0
        mask = 0
        wait = self._waits(channels, software)
        plan = self._plan
        self._plan = None
        ops = plan[2] if plan is not None and plan[0] == list(channels) and plan[1] == software else \
            self._ramp_ops(channels, wait)
        for ch in channels:
            mask |= 1 << ch
            self._cancel_dac(ch)
            self._replaced[ch] = None
            self._mon_ramp[ch] = (0, 0, self.trains[ch]) if ops is not None and self.trains[ch].ramp_up_k > 1 else None
            src = getattr(self.trains[ch], "sequence", None) if self._seq[ch] is not None else None
            if src is not None:  # monitoring with each pulse's own current: its own reader
                self._mon_ramp[ch] = (3, 0, src.reader())
            self._software_start[ch] = software
            self._stopping[ch] = False
            self._gate_closed[ch] = False
            self._pulses_before[ch] = 0
        if ops is None:
            self.hal.start(self.trains, mask, wait)
        else:
            self.hal.start(self.trains, mask, wait, ops[0], ops[1])
            writer = ops[2]
            if writer is not None and not writer.done:
                self._writer = [writer, writer.channels[0], 0]
            if ops[1]:
                group = 0
                for ch in channels:
                    if self.trains[ch].ramp_up_k > 1 or (self._seq[ch] is not None and ch in writer.channels):
                        group |= 1 << ch
                self._dac_mask |= group
                if group & (group - 1):  # more than one channel
                    self._group_mask = group
        for ch in channels:
            self.state[ch] = M.ST_ARMED if wait[ch] else M.ST_RUNNING
        return b""

    def _start(self, body):
        channels = self._mask(body)
        readings = self._check_startable(channels)
        return self._launch(channels, False, readings)

    def _trigger(self, body):
        """Software trigger: start the masked channels now, whatever their trigger source. An armed
        channel is disarmed atomically first (hal.disarm); one whose external edge has already
        started its train keeps that train (it is never restarted: that would cut the pulse in
        progress): it is reported running with a trigger_seen EVENT, and the TRIGGER is acknowledged."""
        channels = self._mask(body)
        readings = self._check_startable(channels, armed_ok=True, software=True)  # refuses before anything moves
        armed = [ch for ch in channels if self.state[ch] == M.ST_ARMED]
        fired = self.hal.disarm(self._bits(armed)) if armed else 0
        go = []
        go_readings = []
        for ch, ohm in zip(channels, readings):
            if fired >> ch & 1:
                self.state[ch] = M.ST_RUNNING
                self.emit(M.EV_TRIGGER_SEEN, ch)
            else:
                go.append(ch)
                go_readings.append(ohm)
        if go:
            self._launch(go, True, go_readings)
        return b""

    def _stop(self, body):
        """Stop the masked channels at their next pulse boundary (the running pulse completes; poll()
        reports train_done). A running channel with a soft stop ramps down first (its stream is
        stopped when the ramp's mark is seen); a second STOP stops it at once."""
        channels = self._mask(body)
        for ch in range(self.hal.channels):  # a group ramp stops whole (see _group_mask)
            if self._group_of(ch) and (self._group_of(ch) | 1 << ch) & self._bits(channels) and ch not in channels:
                channels.append(ch)
        now = []
        down = []
        for ch in channels:
            if self._may_ramp_down(ch):
                down.append(ch)
            else:
                now.append(ch)
        if down:
            ops = None
            if self._writer is None and not self._bus_busy():
                fits = True
                for ch in down:  # a train replace()d away may still play: its idle counts too
                    if self._replaced[ch] is not None and pulse_engine.update_idle_violation(
                            self._replaced[ch], len(down)) is not None:
                        fits = False
                try:
                    if fits:
                        writer = pulse_engine.RampWriter(self.trains, down, None, True)
                        ops = writer.chunk(writer.lookahead())
                        if not writer.done:
                            self._writer = [writer, down[0], self.hal.pulses(down[0])]
                except pulse_engine.Unrealisable:  # timing differs, too little idle
                    ops = None
            if ops:
                self.hal.dac_play(ops)
                for ch in down:  # the soft stop's pulses follow the next pulse end
                    self._mon_ramp[ch] = (1, self.hal.pulses(ch) + 1, self.trains[ch])
                self._down_mask |= self._bits(down)
                self._dac_mask |= self._bits(down)
                if len(down) > 1:
                    self._group_mask = self._bits(down)
            else:
                now += down
        if now:
            self.hal.stop(self._bits(now))
            for ch in now:  # no ramp-down; a change already queued is reported if it reaches a pulse
                self._down_mask &= ~(1 << ch)
                self._drop_writer(ch)
        for ch in channels:
            self._stopping[ch] = True
            self._gate_closed[ch] = False
        return b""

    def _may_ramp_down(self, ch):
        """A STOP of ``ch`` plays its soft stop: running (not waiting, not stopping already) with
        ramp_down_* on a HAL with a DAC bus."""
        return (self._dac_busy is not None and self._writer is None and self.state[ch] == M.ST_RUNNING
                and not self._stopping[ch]
                and not self._gate_closed[ch] and self.trains[ch].ramp_down_k > 0 and self.hal.running(ch)
                and not self.hal.waiting(ch))

    def _set_amplitude(self, body):
        """Live amplitude: checked like SET_PARAMS with the new amplitude (every limit) and the DAC
        update idle; played at the end of the channel's next pulse; the answer gives the realised
        amplitudes and codes, the amplitude EVENT (poll) the first pulse that has them."""
        req = M.decode_set_amplitude(body)
        if req is None:
            _refuse(M.E_BAD_LENGTH, "body", len(body), 5)
        ch = self._channel(body, 5)
        if self.params[ch] is None:
            _refuse(M.E_NOT_CONFIGURED, "channel", ch, 0)
        if self._seq[ch] is not None:  # a sequence's amplitudes are its records'
            _refuse(M.E_BAD_STATE, "sequence_pulses", self._seq[ch].pulses, 0)
        if self.state[ch] == M.ST_FAULT:
            _refuse(M.E_FAULT_LATCHED, "channel", ch, 0)
        if (self.state[ch] != M.ST_RUNNING or self._stopping[ch] or self._gate_closed[ch]
                or not self.hal.running(ch) or self.hal.waiting(ch)):
            _refuse(M.E_BAD_STATE, "channel", ch, self.state[ch])
        params = dict(self.params[ch])
        params["amplitude_ua"] = req[1]
        train, violation = pulse_engine.build_checked(params, self.limits)
        if violation is None:
            violation = pulse_engine.update_idle_violation(train, 1)
        if violation is None and self._replaced[ch] is not None:  # the train before a replace may still play
            violation = pulse_engine.update_idle_violation(self._replaced[ch], 1)
        if violation is not None:
            raise Refused(M.encode_violation_nack(violation))
        if (self._dac_busy is None or self._writer is not None or self._bus_busy() or self._down_mask
                or self._amp_pending[ch] is not None):  # the last change not yet seen on a pulse
            _refuse(M.E_DAC_BUSY, "channel", ch, 0)
        self.hal.dac_play(pulse_engine.amplitude_ops(train, ch))
        self._amp_pending[ch] = (params, train)
        self._dac_mask |= 1 << ch
        r = train.realised
        return M.encode_amplitude_response(ch, r["amplitude_ua"], r["amplitude2_ua"], train.dac_a, train.dac_b)

    def _set_sequence(self, body):
        """Pulses ``first`` .. ``first + k - 1`` of a sequence channel's upload (firmware/sequence.py).
        Refused, nothing stored: a length that is not 1..SEQUENCE_CHUNK pulses, no such channel, no
        parameters, parameters not in sequence mode, the channel armed/running/draining (or, records
        in flash, any channel: a flash write stalls the CPU longer than the feeder's lookahead), a
        chunk out of order, and every per-pulse rule (E_OUT_OF_RANGE naming onset_ns,
        sequence_amplitude_ua or sequence_pulses)."""
        req = M.decode_set_sequence(body)
        if req is None:
            k = (len(body) - M.SEQUENCE_HEAD_SIZE) // M.SEQUENCE_PULSE_SIZE
            k = 1 if k < 1 else M.SEQUENCE_CHUNK if k > M.SEQUENCE_CHUNK else k
            _refuse(M.E_BAD_LENGTH, "body", len(body), M.SEQUENCE_HEAD_SIZE + k * M.SEQUENCE_PULSE_SIZE)
        ch, first, onsets, amps = req
        if ch >= self.hal.channels:
            _refuse(M.E_BAD_CHANNEL, "channel", ch, self.hal.channels - 1)
        if self.params[ch] is None:
            _refuse(M.E_NOT_CONFIGURED, "channel", ch, 0)
        builder = self._seq[ch]
        if builder is None:  # its parameters are a regular train
            _refuse(M.E_BAD_STATE, "sequence_pulses", 0, 1)
        if self.state[ch] in (M.ST_ARMED, M.ST_RUNNING) or self.hal.running(ch):
            _refuse(M.E_BAD_STATE, "channel", ch, self.state[ch])
        if self._seq_store().stalls:
            self._refuse_if_busy()
        if first and first != builder.received:  # chunks in order (first = 0 restarts)
            _refuse(M.E_BAD_STATE, "sequence_pulses", first, builder.received)
        violation = builder.check(first, onsets, amps)
        if violation is not None:
            raise Refused(M.encode_violation_nack(violation))
        try:
            builder.add(first, onsets, amps)
        except OSError:
            _refuse(M.E_STORAGE, "channel", ch, builder.received)
        return M.encode_sequence_response(ch, builder.received, builder.complete)

    def _seq_store(self):
        """The sequence store, built on first use (``sequences`` of the constructor)."""
        s = self._sequences
        if s is None or isinstance(s, str):
            from firmware import sequence

            s = self._sequences = sequence.RamStore() if s is None else sequence.FileStore(s)
        return s

    @staticmethod
    def _bits(channels):
        mask = 0
        for ch in channels:
            mask |= 1 << ch
        return mask

    def _status(self, body):
        if body:
            _refuse(M.E_BAD_LENGTH, "body", len(body), 0)
        d = self.decoder
        counters = {
            "rx_frames": d.frames_ok, "crc_errors": d.crc_errors, "frames_dropped": d.frames_dropped,
            "nacks": self.nacks, "duplicates": self.duplicates, "events_sent": self.events_sent,
            "crashes": self.crashes,
        }
        chans = [(self.state[ch], self.fault[ch], 0 if self.params[ch] is None else 1, self._pulses(ch),
                  self.impedance_ohm[ch])
                 for ch in range(self.hal.channels)]
        # µs since boot across the tick wrap (ms on the wire: u32, wraps after 49.7 days)
        return M.encode_status(self._uptime.now_us() // 1000 & 0xFFFFFFFF, chans, counters)

    def _refuse_beside_varying_sequence(self, channels):
        """A varying sequence's DAC ops follow its pulses on the one DAC bus state machine. A START or
        an impedance check of another channel halts that machine for its own writes (the HAL's urgent
        path), and a pulse of the sequence ending inside the halt would make its pending wait target
        the next pulse: every later amplitude one pulse late. So, while such a sequence is armed or
        running, both are refused for the other channels (E_DAC_BUSY naming the sequence's channel);
        start the channels together instead. A train of another channel ending by itself cannot be
        refused: the board HAL queues that channel's DAC shutdown without a halt (docs/ARCHITECTURE.md)."""
        for ch in range(self.hal.channels):
            b = self._seq[ch]
            if (b is not None and b.code_min != b.code_max and ch not in channels
                    and self.state[ch] in (M.ST_RUNNING, M.ST_ARMED)):
                _refuse(M.E_DAC_BUSY, "channel", ch, 0)

    def _impedance(self, body):
        channels = self._mask(body)
        self._refuse_beside_varying_sequence(channels)
        readings = []
        for ch in channels:
            ohm = self.hal.measure_impedance(ch)
            if ohm is None:  # no valid reading: unknown, never 0 ohm
                self.impedance_ohm[ch] = M.OHM_UNKNOWN
                readings.append((ch, M.OHM_UNKNOWN, M.Z_UNKNOWN))
                continue
            self.impedance_ohm[ch] = ohm
            readings.append((ch, min(ohm, 0xFFFFFFFE), impedance.classify(ohm)))
        return M.encode_impedance(readings)

    def _clear_fault(self, body):
        """Unlatch the masked channels' faults. Refused (nothing changes) while a faulted channel's
        stream is still draining (its last pulse and idle): the next START re-checks the electrode."""
        channels = self._mask(body)
        for ch in channels:
            if self.state[ch] == M.ST_FAULT and self.hal.running(ch):
                _refuse(M.E_BAD_STATE, "channel", ch, M.ST_FAULT)
        for ch in channels:
            if self.state[ch] == M.ST_FAULT:
                self.state[ch] = M.ST_IDLE
                self.fault[ch] = 0
        return b""

    # ---- flash slots, link settings, event log ------------------------------------------------
    def _slot_request(self, body):
        if len(body) != 2:
            _refuse(M.E_BAD_LENGTH, "body", len(body), 2)
        ch = self._channel(body[:1], 1)
        slot = body[1]
        if self.storage is None:
            _refuse(M.E_STORAGE, "slot", slot, 0)
        if slot >= self.storage.slots:
            _refuse(M.E_OUT_OF_RANGE, "slot", slot, self.storage.slots - 1)
        return ch, slot

    def busy_channel(self):
        """The first channel that is armed, running or still draining (None when every output is
        idle): SAVE and REPL are refused while one exists."""
        for ch in range(self.hal.channels):
            st = self.state[ch]
            if st == M.ST_ARMED or st == M.ST_RUNNING or self.hal.running(ch):
                return ch
        return None

    def _refuse_if_busy(self):
        ch = self.busy_channel()
        if ch is not None:
            _refuse(M.E_BAD_STATE, "channel", ch, self.state[ch])

    def _save(self, body):
        """Refused while any channel is armed or running: a littlefs write erases and programs flash
        with the CPU stalled (XIP off, interrupts off) for tens of ms, longer than the DMA feeder's
        lookahead (docs/HARDWARE.md "Lookahead and blocking calls"), so a train could end early."""
        ch, slot = self._slot_request(body)
        if self.params[ch] is None:
            _refuse(M.E_NOT_CONFIGURED, "channel", ch, 0)
        if self._seq[ch] is not None:  # slots hold parameters only, never a sequence's records
            _refuse(M.E_BAD_STATE, "sequence_pulses", self._seq[ch].pulses, 0)
        self._refuse_if_busy()
        try:
            crc = self.storage.save(slot, P.pack(self.params[ch]))
        except storage.StorageError:
            _refuse(M.E_STORAGE, "slot", slot, 0)
        return bytes((slot, crc & 0xFF, crc >> 8))

    def _load(self, body):
        ch, slot = self._slot_request(body)
        try:
            payload = self.storage.load(slot)
        except storage.Empty:
            _refuse(M.E_EMPTY_SLOT, "slot", slot, 0)
        except storage.StorageError:
            _refuse(M.E_STORAGE, "slot", slot, 0)
        if len(payload) != P.SIZE:
            _refuse(M.E_STORAGE, "slot", slot, 0)
        return self._apply(ch, P.unpack(payload))

    def _link(self, body):
        if len(body) != 4:
            _refuse(M.E_BAD_LENGTH, "body", len(body), 4)
        ms = body[0] | body[1] << 8 | body[2] << 16 | body[3] << 24
        if ms and ms < 10:
            _refuse(M.E_OUT_OF_RANGE, "deadman_ms", ms, 10)
        self.deadman_ms = ms
        self._heard()
        return b""

    def _repl(self, body):
        """Hand the USB port back to the MicroPython REPL (``picostim flash``). Refused (E_BAD_STATE
        naming the channel and its state) while any channel is armed, running or draining; accepted:
        the ACK goes out and ``handback`` tells the main loop to leave (firmware/main.py)."""
        if body:
            _refuse(M.E_BAD_LENGTH, "body", len(body), 0)
        self._refuse_if_busy()
        self.handback = True
        return b""

    def _event_log(self, body):
        if len(body) != 2:
            _refuse(M.E_BAD_LENGTH, "body", len(body), 2)
        after = body[0] | body[1] << 8
        newer = [e for e in self.event_log if 0 < (e[0] - after) & 0xFFFF < 0x8000]
        return M.encode_event_log(newer[:M.EVENT_LOG_MAX])
