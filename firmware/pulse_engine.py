"""Pulse engine: canonical parameters -> PIO ticks -> segment words for DMA, plus realised values.

Pure logic (no hardware) so the same code runs on the board, in the virtual Pico and in tests.
All timing is integer maths (RP2040 floats are single precision; 60 s is 7.5e9 ticks).

Segment word (see firmware/pio/stim.pio): bits 3..0 pins (POS, NEG, RECOVERY, SYNC), bits 31..4
count N; the pins hold for N + SEGMENT_OVERHEAD_TICKS ticks, so a segment of T ticks is written as
N = T - SEGMENT_OVERHEAD_TICKS and the capture shows exactly T.

Safety invariants (POS and NEG never in one word, every group ends idle, count in range) are checked
with explicit raises rather than `assert`, so they survive `mpy-cross -O`.
"""

from firmware import board, dac_bus
from firmware import pio_programs as pio
from protocol import params as P

OVERHEAD = pio.SEGMENT_OVERHEAD_TICKS
COUNT_SHIFT = pio.COUNT_SHIFT
COUNT_MAX = pio.COUNT_MAX
PIN_MASK = pio.PIN_MASK
MAX_SEGMENT_TICKS = COUNT_MAX + OVERHEAD  # longest single word
MIN_SEGMENT_TICKS = OVERHEAD  # shortest non-zero segment
TX_FIFO_WORDS = 8 if pio.FIFO_JOIN == "tx" else 4  # joined TX FIFO depth
MIN_GROUP_WORDS = TX_FIFO_WORDS + 1  # see build_train: bounds the stop latency to one pulse

POS = pio.PIN_POS
NEG = pio.PIN_NEG
RECOVERY = pio.PIN_RECOVERY
SYNC = pio.PIN_SYNC
IDLE = 0

CATHODIC_FIRST = 0
ANODIC_FIRST = 1

BIPHASIC = P.SHAPE_BIPHASIC
TRIPHASIC = P.SHAPE_TRIPHASIC

_NS_PER_S = 1_000_000_000
_HALF_NS_PER_S = 500_000_000


class UnsafeWord(AssertionError):
    """A word that must never reach the PIO (POS and NEG together, count out of range)."""


class Unrealisable(ValueError):
    """Parameters the PIO or the DAC cannot produce; `field` (a canonical or derived name), `value`,
    `limit` and `relation` make the NACK (protocol.params.Violation)."""

    def __init__(self, field, value, msg, limit=0, relation="<="):
        super().__init__("%s: %s" % (field, msg))
        self.field = field
        self.value = value
        self.limit = limit
        self.relation = relation


def ns_to_ticks(ns):
    """Nearest tick, halves up: the realised value is never more than half a tick off."""
    return (ns * board.SYS_CLK_HZ + _HALF_NS_PER_S) // _NS_PER_S


def ticks_to_ns(ticks):
    """Ticks back to ns (nearest ns; exact at 125 MHz, 8 ns per tick)."""
    return (ticks * _NS_PER_S + board.SYS_CLK_HZ // 2) // board.SYS_CLK_HZ


def min_segment_ns():
    """Shortest non-zero duration the PIO program can produce, for validation elsewhere."""
    return ticks_to_ns(MIN_SEGMENT_TICKS)


def check_word(word):
    """Raise UnsafeWord unless the word is safe to send to the PIO."""
    pins = word & PIN_MASK
    if pins & POS and pins & NEG:
        raise UnsafeWord("POS and NEG in one word: 0x%x" % word)
    if word < 0 or word >> 32:
        raise UnsafeWord("word out of 32 bits")
    return word


def make_word(ticks, pins):
    """One segment word of exactly `ticks` (OVERHEAD..MAX_SEGMENT_TICKS)."""
    if ticks < OVERHEAD or ticks > MAX_SEGMENT_TICKS:
        raise UnsafeWord("segment of %d ticks not representable" % ticks)
    return check_word(((ticks - OVERHEAD) << COUNT_SHIFT) | pins)


def decode_word(word):
    """Word -> (ticks, pins)."""
    return (word >> COUNT_SHIFT) + OVERHEAD, word & PIN_MASK


def append_segment(words, ticks, pins, min_pieces=1):
    """Append words for `ticks` at `pins`: 0 ticks adds nothing, long ones are split evenly.

    Pieces are floor/ceil of ticks / n with n = ceil(ticks / MAX_SEGMENT_TICKS) (or more, up to
    `min_pieces` while each piece stays >= OVERHEAD), so every piece is in range and they sum to
    `ticks` exactly.
    """
    if ticks == 0:
        return words
    if ticks < OVERHEAD:
        raise ValueError("segment of %d ticks is shorter than %d" % (ticks, OVERHEAD))
    n = (ticks + MAX_SEGMENT_TICKS - 1) // MAX_SEGMENT_TICKS
    n = max(n, min(min_pieces, ticks // OVERHEAD))
    base = ticks // n
    extra = ticks - base * n
    for i in range(n):
        words.append(make_word(base + 1 if i < extra else base, pins))
    return words


def words_ticks(words):
    """Total duration of a word list in ticks."""
    total = 0
    for w in words:
        total += (w >> COUNT_SHIFT) + OVERHEAD
    return total


def _field_ticks(params, name, zero_ok):
    """ns field -> ticks, refusing a duration the PIO cannot produce."""
    t = ns_to_ticks(params[name])
    if t == 0 and zero_ok:
        return 0
    if t < OVERHEAD:
        raise Unrealisable(name, params[name], "%d ns is below the minimum segment of %d ns"
                           % (params[name], min_segment_ns()), min_segment_ns(), ">=")
    return t


def _round_div(num, den):
    """Integer num/den to nearest, halves away from zero (den > 0)."""
    if num >= 0:
        return (2 * num + den) // (2 * den)
    return -((-2 * num + den) // (2 * den))


def dac_code(amplitude_ua):
    """Nearest 12-bit DAC code for a current; at least 1 for any non-zero request."""
    code = _round_div(amplitude_ua * 4096, board.DAC_FULL_SCALE_UA)
    if code < 1 and amplitude_ua > 0:
        code = 1
    return code


def code_to_na(code):
    """DAC code -> current in nA (2.5 uA per LSB on this board: exact in nA)."""
    return _round_div(code * board.DAC_FULL_SCALE_UA * 1000, 4096)


def balance_code(code1, phase1_ticks, phase2_ticks):
    """Phase-2 DAC code that best balances code1 over phase1: code1*phase1 ~= code2*phase2."""
    return _round_div(code1 * phase1_ticks, phase2_ticks)


def residual_fc(code1, phase1_ticks, code2, phase2_ticks):
    """Net charge left per pulse by DAC quantisation, in fC (uA * ns); phase 1 minus phase 2."""
    q = code1 * phase1_ticks - code2 * phase2_ticks  # code * ticks
    return _round_div(q * board.DAC_FULL_SCALE_UA * _NS_PER_S, 4096 * board.SYS_CLK_HZ)


class Train:
    """One channel's built pulse train; see docs/ARCHITECTURE.md (Engine output)."""

    def __init__(self):
        # Compact form (what the board keeps and dma_chain.Plan feeds from): its size does not grow
        # with any duration, so a 24 h delay or interburst costs the same heap as 1 ms.
        self.pulse = []  # words of one pulse (phase 1 .. recovery), each <= MAX_SEGMENT_TICKS
        self.idle_runs = []  # one cycle: [(idle ticks after the pulse, count), ...]
        self.delay_ticks = 0  # train delay before the first pulse
        self._delay = None  # host views, built on first use (see `delay`, `runs`)
        self._runs = None
        self.repeats = 0  # cycles to play; 0 = until stopped
        self.pulses_per_cycle = 0
        self.cycle_ticks = 0
        self.period_ticks = 0
        self.realised = {}
        self.code1 = 0  # phase-1 DAC code (full amplitude)
        self.phase1_ticks = 0
        self.phase2_ticks = 0
        self.ramp_ticks = 0
        self.ramp_up_k = 0  # pulses of the soft start (pulse K-1 has the full codes); <= 1: no ramp
        self.ramp_down_k = 0  # pulses of the soft stop after the stop's boundary; 0: none
        self.ramp_down_ticks = 0  # ramp_down_ns in ticks (0 when given in pulses)
        self.entry = pio.SEGMENT_ENTRY  # initial PC for the state machine
        self.trigger_pin: int | None = None  # GPIO the PIO waits on (in_base), None for a software start
        self.first = NEG  # pin of phase 1 (NEG = cathodic-first); triphasic: of the main phase
        self.shape = BIPHASIC  # TRIPHASIC: flank, main phase (phase 1), flank; phase2_ticks = both flanks
        self.dac_a = 0  # DAC codes at full amplitude: A = POS direction, B = NEG direction
        self.dac_b = 0
        # A custom sequence (firmware/sequence.py SequenceSource, set by the controller): the pulses'
        # onsets and amplitudes come from it (dma_chain.plan_for, start_ops, sequence_writer); None
        # for a regular train.
        self.sequence = None

    @property
    def pulses(self):
        """Pulses per cycle (the contract name in docs/ARCHITECTURE.md)."""
        return self.pulses_per_cycle

    @property
    def delay(self):
        """Host view: the train delay as idle words (one word per 2^28 + 4 ticks: 40 000 for 24 h).
        The firmware never builds it (dma_chain.Plan uses `delay_ticks`)."""
        if self._delay is None:
            self._delay = append_segment([], self.delay_ticks, IDLE)
        return self._delay

    @property
    def runs(self):
        """Host view: one cycle run-length coded as [(group words, count), ...]; a group is the pulse
        plus its idle as words (`group_words`), identical groups share one list. The firmware never
        builds it (dma_chain.Plan lays out `pulse` / `idle_runs` in ring entries instead)."""
        if self._runs is None:
            self._runs = [(group_words(self.pulse, idle), n) for idle, n in self.idle_runs]
        return self._runs


def group_words(pulse, idle):
    """One group as words: the pulse, then `idle` ticks of idle split into at least enough words
    that the group outnumbers the FIFO (+1 word in flight)."""
    g = list(pulse)
    append_segment(g, idle, IDLE, MIN_GROUP_WORDS - len(g))
    if not g or g[-1] & PIN_MASK != IDLE:
        raise UnsafeWord("group does not end idle")
    return g


# Board dead time in ticks: the least idle between two different drive states (POS, NEG, RECOVERY).
DEAD_TICKS = ns_to_ticks(board.DEAD_TIME_NS)


def build_train(params):
    """Canonical params dict (validated elsewhere) -> Train.

    Dead time (docs/SAFETY.md): an interphase below DEAD_TICKS is realised as DEAD_TICKS (reported in
    realised["interphase"], next to the request), phase 2 and RECOVERY are DEAD_TICKS apart, and the
    period must leave at least DEAD_TICKS (and a segment) of idle after the pulse.

    Triphasic (shape 1): flank, interphase, main phase (phase1_ns, the polarity's direction),
    interphase, flank; the flanks have phase 2's direction and DAC output, each is phase2_ns / 2
    rounded to the nearest tick (halves up), so both are equal and phase 2 realised = 2 x flank
    (realised["phase2"], realised["flank"]); the flank code balances phase 1 over that total.
    """
    if DEAD_TICKS < OVERHEAD:
        raise Unrealisable("interphase_ns", params["interphase_ns"], "board dead time below one segment")
    ph1 = _field_ticks(params, "phase1_ns", False)
    ip = ns_to_ticks(params["interphase_ns"])
    if ip < DEAD_TICKS:
        ip = DEAD_TICKS
    ph2 = _field_ticks(params, "phase2_ns", False)
    shape = params["shape"]
    flank = 0
    if shape == TRIPHASIC:
        flank = (params["phase2_ns"] * board.SYS_CLK_HZ + _NS_PER_S) // (2 * _NS_PER_S)  # nearest, halves up
        if flank < OVERHEAD:
            raise Unrealisable("phase2_ns", params["phase2_ns"], "a triphasic flank of %d ns is below the minimum"
                               " segment of %d ns" % (ticks_to_ns(flank), min_segment_ns()),
                               2 * min_segment_ns(), ">=")
        ph2 = 2 * flank
    elif shape != BIPHASIC:
        raise Unrealisable("shape", shape, "not 0 or 1", 1)
    rec = _field_ticks(params, "recovery_ns", True)
    rec_gap = DEAD_TICKS if rec else 0
    period = ns_to_ticks(params["period_ns"])
    delay = _field_ticks(params, "train_delay_ns", True)
    n_burst = params["burst_pulses"]
    interburst = ns_to_ticks(params["interburst_ns"]) if n_burst > 0 else 0
    pulse_ticks = ph1 + ip + ph2 + rec_gap + rec + (ip if flank else 0)
    min_idle = DEAD_TICKS if DEAD_TICKS > OVERHEAD else OVERHEAD
    if period < pulse_ticks + min_idle:
        raise Unrealisable("period_ns", params["period_ns"], "%d ns leaves less than %d ns idle"
                           " after the pulse" % (params["period_ns"], ticks_to_ns(min_idle)),
                           ticks_to_ns(pulse_ticks + min_idle), ">=")
    polarity = params["polarity"]
    if polarity == CATHODIC_FIRST:
        first, second = NEG, POS
    elif polarity == ANODIC_FIRST:
        first, second = POS, NEG
    else:
        raise Unrealisable("polarity", polarity, "not 0 or 1", 1)

    pulse: list = []
    if flank:
        append_segment(pulse, flank, second | SYNC)
        append_segment(pulse, ip, SYNC)
        append_segment(pulse, ph1, first | SYNC)
        append_segment(pulse, ip, SYNC)
        append_segment(pulse, flank, second | SYNC)
    else:
        append_segment(pulse, ph1, first | SYNC)
        append_segment(pulse, ip, SYNC)
        append_segment(pulse, ph2, second | SYNC)
    append_segment(pulse, rec_gap, IDLE)
    append_segment(pulse, rec, RECOVERY)

    idle = period - pulse_ticks
    if idle < OVERHEAD:
        raise UnsafeWord("group does not end idle")
    t = Train()
    t.period_ticks = period
    t.pulse = pulse
    if n_burst > 0:
        # identical groups are one run: a 10 000-pulse burst is (idle, 9 999) + the last one
        t.idle_runs = ([(idle, n_burst - 1)] if n_burst > 1 else []) + [(idle + interburst, 1)]
        t.pulses_per_cycle = n_burst
        t.cycle_ticks = n_burst * period + interburst
    else:
        t.idle_runs = [(idle, 1)]
        t.pulses_per_cycle = 1
        t.cycle_ticks = period
    t.delay_ticks = delay

    # Cycles in the requested ns, not in ticks: a duration of exactly 3 cycles of 1000003 ns is 3
    # cycles, though its ticks (375001 over 125000 a cycle) would round up to 4.
    dur = params["train_duration_ns"]
    cycle_ns = params["period_ns"] * n_burst + params["interburst_ns"] if n_burst > 0 else params["period_ns"]
    t.repeats = (dur + cycle_ns - 1) // cycle_ns if dur > 0 else 0

    trig = params["trigger"]
    if trig == 0:
        t.entry, t.trigger_pin = pio.SEGMENT_ENTRY, None
    elif trig in (1, 2):
        t.entry, t.trigger_pin = pio.TRIGGER_ENTRY, board.TRIG_PINS[trig - 1]
    elif trig in (3, 4):
        t.entry, t.trigger_pin = pio.GATE_ENTRY, board.TRIG_PINS[trig - 3]
    else:
        raise Unrealisable("trigger", trig, "not 0..4", 4)

    # Amplitude: phase 2 derived for charge balance from the realised phase-1 code and ticks.
    code1 = dac_code(params["amplitude_ua"])
    code2 = balance_code(code1, ph1, ph2)
    if code2 < 1:
        code2 = 1  # a phase 2 without current would leave all of phase 1's charge: 1 LSB is closer
    dac_max_ua = _round_div(code_to_na(board.DAC_MAX_CODE), 1000)
    if code2 > board.DAC_MAX_CODE:  # a phase 2 much shorter than phase 1: beyond the DAC's full scale
        raise Unrealisable("phase2_amplitude_ua", _round_div(code_to_na(code2), 1000),
                           "DAC code %d beyond %d" % (code2, board.DAC_MAX_CODE), dac_max_ua)
    if not 1 <= code1 <= board.DAC_MAX_CODE:
        raise Unrealisable("amplitude_ua", params["amplitude_ua"], "DAC code %d out of range" % code1, dac_max_ua)
    t.code1, t.phase1_ticks, t.phase2_ticks = code1, ph1, ph2
    t.ramp_ticks = ns_to_ticks(params["ramp_up_ns"])
    t.ramp_up_k = params["ramp_up_pulses"] or pulses_starting_before(t, t.ramp_ticks)
    t.ramp_down_ticks = ns_to_ticks(params["ramp_down_ns"])
    t.ramp_down_k = params["ramp_down_pulses"] or pulses_starting_before(t, t.ramp_down_ticks)
    t.first = first
    t.shape = shape
    t.dac_a, t.dac_b = _dac_pair(first, code1, code2)

    res = residual_fc(code1, ph1, code2, ph2)
    t.realised = {
        "phase1": ph1,
        "interphase": ip,
        "phase2": ph2,
        "recovery": rec,
        "recovery_gap": rec_gap,
        "shape": shape,
        "flank": flank,  # each flank of a triphasic pulse (phase2 = 2 x flank); 0 when biphasic
        "dead_time": DEAD_TICKS,
        "period": period,
        "interburst": interburst,
        "train_delay": delay,
        "train_duration": t.repeats * t.cycle_ticks,
        "ramp_up": t.ramp_ticks,
        "pulse": pulse_ticks,
        "cycle": t.cycle_ticks,
        "amplitude_ua": _round_div(code_to_na(code1), 1000),
        "amplitude_na": code_to_na(code1),
        "amplitude2_ua": _round_div(code_to_na(code2), 1000),
        "amplitude2_na": code_to_na(code2),
        "dac_code1": code1,
        "dac_code2": code2,
        "dac_a": t.dac_a,
        "dac_b": t.dac_b,
        "residual_fc": res,
        "residual_pc": _round_div(res, 1000),
    }
    return t


def build_checked(params, limits):
    """Everything SET_PARAMS/LOAD refuse, in the firmware's order: protocol.params.validate, what the
    engine cannot produce, and the phase-2 amplitude after DAC rounding. Returns (Train, None) or
    (None, Violation); the host runs the same function on a file before it sends it."""
    violation = P.validate(params, limits)
    if violation is not None:
        return None, violation
    try:
        train = build_train(params)
    except Unrealisable as exc:  # e.g. rounding to the tick ate the last idle ticks validate allowed
        limit = exc.limit
        if exc.field == "phase2_amplitude_ua" and limits["max_amplitude_ua"] < limit:
            limit = limits["max_amplitude_ua"]  # beyond the DAC is beyond the amplitude limit too
        return None, P.Violation(exc.field, exc.value, limit, exc.relation)
    amp2 = train.realised["amplitude2_ua"]
    if amp2 > limits["max_amplitude_ua"]:  # after DAC rounding (1 LSB = 2.5 µA)
        return None, P.Violation("phase2_amplitude_ua", amp2, limits["max_amplitude_ua"], "<=")
    if P.has_ramp(params):
        v = ramp_violation(train, params, limits["max_ramp_pulses"])
        if v is not None:
            return None, v
    return train, None


def ramp_violation(train, params, max_pulses):
    """What the ramp rules refuse after rounding to the tick (validate checks them in ns): a time
    ramp longer than ``max_pulses`` pulses, and less idle after a pulse than a DAC update needs."""
    for name, k in (("ramp_up_ns", train.ramp_up_k), ("ramp_down_ns", train.ramp_down_k)):
        if params[name] and k > max_pulses:
            return P.Violation(name, params[name], ticks_to_ns(pulse_start_ticks(train, max_pulses)), "<=")
    return update_idle_violation(train, 1)


def update_idle_violation(train, channels=1):
    """None when the idle after each pulse leaves the DAC bus time to update ``channels`` channels
    at that boundary (dac_bus.min_idle_ticks); else the Violation naming period_ns."""
    need = train.realised["pulse"] + dac_bus.min_idle_ticks(channels)
    if train.period_ticks >= need:
        return None
    return P.Violation("period_ns", ticks_to_ns(train.period_ticks), ticks_to_ns(need), ">=")


def _dac_pair(first, code1, code2):
    """(DAC A, DAC B) codes: A drives the POS direction, B the NEG direction."""
    if first == NEG:
        return code2, code1
    return code1, code2


def pulse_start_ticks(train, k):
    """Start of pulse k (0-based) in ticks from the first pulse's start."""
    n = train.pulses_per_cycle
    return (k // n) * train.cycle_ticks + (k % n) * train.period_ticks


def pulses_starting_before(train, ticks):
    """How many pulses start before ``ticks`` after the first pulse's start (closed form: a 60 s
    ramp at 10 kHz is never counted pulse by pulse)."""
    if ticks <= 0:
        return 0
    n = train.pulses_per_cycle
    q = ticks // train.cycle_ticks
    r = ticks - q * train.cycle_ticks
    inc = (r + train.period_ticks - 1) // train.period_ticks
    return q * n + (inc if inc < n else n)


def total_pulses(train):
    """Pulses the train plays, or None when it plays until stopped."""
    return train.repeats * train.pulses_per_cycle if train.repeats else None


def _codes(train, c1):
    """(DAC A, DAC B) for a phase-1 code: phase 2 balanced from it (>= 1 LSB)."""
    if c1 < 1:
        c1 = 1
    c2 = balance_code(c1, train.phase1_ticks, train.phase2_ticks)
    if c2 < 1:
        c2 = 1
    return _dac_pair(train.first, c1, c2)


def pulse_codes(train, j):
    """(DAC A, DAC B) of pulse ``j`` (0-based) from the start, soft start included.

    Ramp-up over K = train.ramp_up_k pulses (ramp_up_pulses, or the pulses that start before
    ramp_up_ns): pulse j < K gets phase-1 code max(1, round(code1 * (j + 1) / K)), linear in DAC codes,
    so pulse K - 1 and every later one has the full codes; phase 2 is derived per pulse for charge
    balance (balance_code, at least 1 LSB). docs/ARCHITECTURE.md "DAC bus".
    """
    k = train.ramp_up_k
    if j >= k:
        return train.dac_a, train.dac_b
    return _codes(train, _round_div(train.code1 * (j + 1), k))


def ramp_codes(train, k):
    """Former name of pulse_codes (the conformance vectors and older tests use it)."""
    return pulse_codes(train, k)


def ramp_pulses(train):
    """K of the soft start: pulses 0..K-1 follow the ramp (the last of them at full amplitude)."""
    return train.ramp_up_k


def ramp_down_codes(train, j):
    """(DAC A, DAC B) of pulse ``j`` (0-based) of the soft stop, after the STOP's next boundary: phase-1
    code max(1, round(code1 * (K - j) / (K + 1))) with K = train.ramp_down_k, charge-balanced."""
    k = train.ramp_down_k
    return _codes(train, _round_div(train.code1 * (k - j), k + 1))


# ---- DAC bus op lists (firmware/dac_bus.py words; HAL contract in firmware/controller.py) --------
# Longest op list a ramp may queue (one u32 per word; 16 KB): a one-channel ramp of max_ramp_pulses
# (1000) needs at most 3 words per pulse, several channels ramping together 1 + 2 per channel.
MAX_RAMP_OPS = 4096
# A ramp is queued this far ahead of the pulses (the controller tops it up from poll(); the virtual
# Pico polls at least every 0.25 s, the board's main loop every few ms): at most 1 s of pulses, at
# least RAMP_CHUNK_MIN boundaries, per chunk.
RAMP_LOOKAHEAD_TICKS = board.SYS_CLK_HZ
RAMP_CHUNK_MIN = 16


class RampMismatch(Unrealisable):
    """Channels that cannot ramp together (their pulse boundaries are not the same ticks)."""


def phase2_pin(train, ch):
    """GPIO of channel ``ch``'s phase-2 drive pin: its fall is the end of the pulse's active part,
    where a DAC update may start (POS when cathodic-first, NEG when anodic-first). Triphasic: the
    flank pin, high twice per pulse: wait with boundary_wait_ops, never with this pin alone."""
    return board.CH_POS[ch] if train.first == NEG else board.CH_NEG[ch]


def main_pin(train, ch):
    """GPIO of channel ``ch``'s phase-1 (triphasic: main-phase) drive pin."""
    return board.CH_NEG[ch] if train.first == NEG else board.CH_POS[ch]


def boundary_wait_ops(train, ch):
    """The DAC wait ops that end at the end of channel ``ch``'s next pulse (its last drive phase),
    wherever in the period the DAC state machine starts them.

    Biphasic: one wait on the phase-2 pin (high once per pulse). Triphasic: the flank pin is high
    twice per pulse, so a lone wait on it ends after the FIRST flank, inside the pulse, when it starts
    before that flank, or after the next pulse's first flank when it starts between the flanks. The
    main-phase pin is high once per pulse and the next fall of the flank pin after the main phase's
    fall is the second flank of the same pulse: [wait main pin, wait flank pin] ends at that pulse's
    end whenever it starts (the second wait is pulled in the interphase, >= the dead time, before the
    second flank rises)."""
    if train.shape == TRIPHASIC:
        return [dac_bus.wait_op(main_pin(train, ch)), dac_bus.wait_op(phase2_pin(train, ch))]
    return [dac_bus.wait_op(phase2_pin(train, ch))]


def timing_key(train, wait=0):
    """Everything that places a train's pulse boundaries in time: equal keys (and the same start)
    mean every pulse of both ends on the same tick. ``wait``: the start's trigger input (0 = now)."""
    r = train.realised
    return (train.shape, r["phase1"], r["interphase"], r["phase2"], r["recovery_gap"], r["recovery"], train.period_ticks,
            tuple(train.idle_runs), train.delay_ticks, wait, train.entry if wait else 0)


def amplitude_ops(train, ch):
    """A live amplitude change of channel ``ch`` to ``train``'s codes: wait for the end of the
    channel's next pulse, then write both DAC outputs."""
    return boundary_wait_ops(train, ch) + dac_bus.update_ops(ch, train.dac_a, train.dac_b)


def start_ops(trains, channels):
    """The writes before a START enables the state machines: each channel's first-pulse codes (the
    ramp's first step, a sequence's pulse 0)."""
    ops: list = []
    for ch in channels:
        t = trains[ch]
        a, b = first_codes(t) if t.sequence is not None else pulse_codes(t, 0)
        ops.extend(dac_bus.update_ops(ch, a, b))
    return ops


def first_codes(train):
    """(DAC A, DAC B) the HAL writes before a start when the controller passes no first ops: the full
    codes, or a custom sequence's first pulse's (phase 2 balanced from its phase-1 code)."""
    if train.sequence is None:
        return train.dac_a, train.dac_b
    from firmware import seq_stream

    return seq_stream.first_codes(train)


def sequence_writer(trains, channels):
    """The SequenceWriter (firmware/seq_stream.py) of the one channel in ``channels`` whose sequence's
    amplitude varies, or None when none varies (constant-amplitude sequences need no op after the
    start's writes, on any number of channels). Refused with RampMismatch (E_RAMP_TIMING, naming
    ``sequence_pulses``) when two channels' amplitudes vary (their pulse ends are not the same ticks:
    one DAC queue cannot wait for both in order) or one varies while another channel of the start
    ramps; Unrealisable (period_ns) when the period leaves no DAC update idle."""
    seqs = [ch for ch in channels if trains[ch].sequence is not None]
    if not seqs:
        return None
    from firmware import seq_stream

    varying = [ch for ch in seqs if seq_stream.varies(trains[ch])]
    if not varying:
        return None
    for ch in channels:
        if ch != varying[0] and (ch in varying or trains[ch].ramp_up_k > 1):
            raise RampMismatch("sequence_pulses", ch, "channel %d cannot change its amplitude pulse by pulse "
                               "with channel %d in one start" % (ch, varying[0]), varying[0], "<=")
    return seq_stream.SequenceWriter(trains[varying[0]], varying[0])


def _ramp_field(train, down):
    """The parameter a ramp came from (NACKs name it): the time field if given, else the pulses."""
    if down:
        return "ramp_down_ns" if train.ramp_down_ticks else "ramp_down_pulses"
    return "ramp_up_ns" if train.ramp_ticks else "ramp_up_pulses"


def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


class RampWriter:
    """The DAC ops of a soft start (``down`` False) or soft stop of ``channels``, produced in chunks
    of boundaries (:meth:`chunk`), so a long slow ramp is queued a little ahead of the pulses instead
    of all at once (the controller tops it up from poll(): RAMP_LOOKAHEAD_TICKS).

    Per boundary (the end of a pulse of the first channel): a wait op on that channel's phase-2 pin,
    then for each channel whose phase-1 code c1 changes the writes of its (A, B) codes; a bare wait
    when none changes; the last chunk ends at the last change (soft start) or with the DAC shutdown
    (soft stop: at boundary K of each channel). The arithmetic is pulse_codes / ramp_down_codes /
    dac_bus.code_write_op inlined (the same integers, the tick ratio reduced by its gcd).

    Several channels only with identical pulse timing (timing_key, same trigger: ``waits``), with
    dac_bus.min_idle_ticks(k) idle, and (soft start) trains that outlast the ramp or end on the same
    pulse: else RampMismatch / Unrealisable. No wait follows the last pulse of a finite train.
    """

    def __init__(self, trains, channels, waits, down):
        lead = trains[channels[0]]
        key = timing_key(lead, waits[channels[0]] if waits else 0)
        for ch in channels[1:]:
            if timing_key(trains[ch], waits[ch] if waits else 0) != key:
                raise RampMismatch(_ramp_field(trains[ch], down), ch, "channel %d cannot ramp with channel %d: "
                                   "their pulse timing differs" % (ch, channels[0]), channels[0], "<=")
        v = update_idle_violation(lead, len(channels))
        if v is not None:
            raise Unrealisable(v.field, v.value, "%d channels updating at one boundary need more idle"
                               % len(channels), v.limit, v.relation)
        n = 0  # boundaries
        for ch in channels:
            t = trains[ch]
            k = t.ramp_down_k + 1 if down else t.ramp_up_k - 1
            if k > n:
                n = k
        if not down:  # never a wait (nor a write) after the last pulse of any of them
            short = None
            for ch in channels:
                total = total_pulses(trains[ch])
                if total is not None and total - 1 < n and (short is None or total < total_pulses(trains[short])):
                    short = ch
            if short is not None:
                for ch in channels:
                    if total_pulses(trains[ch]) != total_pulses(trains[short]):  # the others would stay mid-ramp
                        raise RampMismatch("train_duration_ns", short, "channel %d's train ends before the ramp "
                                           "of channel %d" % (short, ch), ch, "<=")
                n = total_pulses(trains[short]) - 1
        self.trains = trains
        self.channels = channels
        self.down = down
        self.n = n
        self.emitted = 0  # boundaries already in chunks
        waits = boundary_wait_ops(lead, channels[0])
        self.per = len(waits) + 2 * len(channels)
        self.wait = waits[-1] if len(waits) == 1 else waits[0]
        self.wait2 = waits[1] if len(waits) == 2 else 0  # triphasic: the flank pin after the main pin
        self.state = []  # per channel: [k, code1, step, num, den, r1, r2, neg_first, base_a, base_b, prev c1, ch]
        for ch in channels:
            t = trains[ch]
            g = _gcd(t.phase1_ticks, t.phase2_ticks)
            if down:  # c1_j = round(code1 * (K - j) / (K + 1)), j = 0..K-1; the shutdown at boundary K
                k = t.ramp_down_k
                num, step, den, prev = 2 * t.code1 * k + k + 1, -2 * t.code1, 2 * (k + 1), t.code1
            else:  # boundary b sets pulse b: c1 = round(code1 * (b + 1) / K), clamped at code1
                k = t.ramp_up_k
                num, step, den = 2 * t.code1 + k, 2 * t.code1, 2 * k
                prev = num // den if num >= den else 1
                num += step
            base = dac_bus.code_bases(ch)
            self.state.append([k if down else -1, t.code1, step, num, den, 2 * (t.phase1_ticks // g),
                               2 * (t.phase2_ticks // g), t.first == NEG, base[0], base[1], prev, ch])

    @property
    def done(self):
        return self.emitted >= self.n

    def lookahead(self):
        """Boundaries to queue ahead of the pulses: RAMP_LOOKAHEAD_TICKS of the fastest pulses (at
        least RAMP_CHUNK_MIN), within MAX_RAMP_OPS words."""
        period = self.trains[self.channels[0]].period_ticks
        b = (RAMP_LOOKAHEAD_TICKS + period - 1) // period
        if b < RAMP_CHUNK_MIN:
            b = RAMP_CHUNK_MIN
        top = MAX_RAMP_OPS // self.per
        return b if b < top else top

    def chunk(self, boundaries):
        """The ops of the next ``boundaries`` boundaries (fewer at the end; [] when done or when the
        rest changes nothing)."""
        m = self.n - self.emitted
        if boundaries < m:
            m = boundaries
        if m * self.per > MAX_RAMP_OPS:
            m = MAX_RAMP_OPS // self.per
        if m <= 0:
            return []
        ops = [0] * (m * self.per)
        if len(self.state) == 1:
            at, last_change = self._one(ops, m)
        else:
            at, last_change = self._many(ops, m)
        self.emitted += m
        # bare waits at the very end would only delay the mark; inside the ramp they count pulses
        del ops[last_change if self.done else at:]
        return ops

    def _many(self, ops, m):
        wait = self.wait
        wait2 = self.wait2
        rev = dac_bus.REV8
        shift = dac_bus.CODE_SHIFT
        at = 0
        last_change = 0
        for j in range(self.emitted, self.emitted + m):
            ops[at] = wait
            at += 1
            if wait2:
                ops[at] = wait2
                at += 1
            for st in self.state:
                if j == st[0]:  # soft stop: this channel's last ramp pulse has ended
                    ops[at:at + 2] = dac_bus.shutdown_ops(st[11])
                    at += 2
                    last_change = at
                    continue
                if 0 <= st[0] < j:
                    continue  # shut down already
                c1 = st[3] // st[4]
                st[3] += st[2]
                if c1 < 1:
                    c1 = 1
                elif c1 > st[1]:
                    c1 = st[1]
                if c1 != st[10]:
                    st[10] = c1
                    c2 = (c1 * st[5] + st[6] // 2) // st[6]
                    if c2 < 1:
                        c2 = 1
                    if st[7]:
                        c1, c2 = c2, c1  # (A, B): A drives POS; cathodic-first has phase 1 on NEG (B)
                    ops[at] = st[8] | (rev[c1 & 0xFF] << 8 | rev[c1 >> 8]) << shift
                    ops[at + 1] = st[9] | (rev[c2 & 0xFF] << 8 | rev[c2 >> 8]) << shift
                    at += 2
                    last_change = at
        return at, last_change

    def _one(self, ops, m):
        """_many for one channel with every value in a local (~30 % faster on the board)."""
        st = self.state[0]
        end, code1, step, num, den, r1, r2, neg_first, base_a, base_b, prev, ch = st
        r2h = r2 // 2
        wait = self.wait
        wait2 = self.wait2
        rev = dac_bus.REV8
        shift = dac_bus.CODE_SHIFT
        at = 0
        last_change = 0
        for j in range(self.emitted, self.emitted + m):
            ops[at] = wait
            at += 1
            if wait2:
                ops[at] = wait2
                at += 1
            if j == end:
                ops[at:at + 2] = dac_bus.shutdown_ops(ch)
                at += 2
                last_change = at
                break
            c1 = num // den
            num += step
            if c1 < 1:
                c1 = 1
            elif c1 > code1:
                c1 = code1
            if c1 != prev:
                prev = c1
                c2 = (c1 * r1 + r2h) // r2
                if c2 < 1:
                    c2 = 1
                if neg_first:
                    c1, c2 = c2, c1
                ops[at] = base_a | (rev[c1 & 0xFF] << 8 | rev[c1 >> 8]) << shift
                ops[at + 1] = base_b | (rev[c2 & 0xFF] << 8 | rev[c2 >> 8]) << shift
                at += 2
                last_change = at
        st[3] = num
        st[10] = prev
        return at, last_change


def _all_ops(writer):
    """Every op of ``writer`` in one list (bounded by MAX_RAMP_OPS: else Unrealisable naming the ramp)."""
    if writer.n * writer.per > MAX_RAMP_OPS:
        down = writer.down
        t = writer.trains[writer.channels[0]]
        for ch in writer.channels:
            if (writer.trains[ch].ramp_down_k if down else writer.trains[ch].ramp_up_k) > \
                    (t.ramp_down_k if down else t.ramp_up_k):
                t = writer.trains[ch]
        k_max = MAX_RAMP_OPS // writer.per - (1 if down else -1)  # the longest ramp that fits
        field = _ramp_field(t, down)
        if field.endswith("_pulses"):
            raise Unrealisable(field, t.ramp_down_k if down else t.ramp_up_k, "more than %d DAC op words"
                               % MAX_RAMP_OPS, k_max, "<=")
        raise Unrealisable(field, ticks_to_ns(t.ramp_down_ticks if down else t.ramp_ticks), "more than %d DAC op "
                           "words" % MAX_RAMP_OPS, ticks_to_ns(pulse_start_ticks(t, k_max)), "<=")
    return writer.chunk(writer.n)


def ramp_up_writer(trains, channels, waits=None):
    """RampWriter of the soft start of the channels in ``channels`` that have one (ramp_up_k > 1),
    or None when none has."""
    ramping = [ch for ch in channels if trains[ch].ramp_up_k > 1]
    return RampWriter(trains, ramping, waits, False) if ramping else None


def ramp_up_ops(trains, channels, waits=None):
    """Every op of the soft start (ramp_up_writer) in one list; [] when no channel ramps. Refused
    (Unrealisable naming the ramp) beyond MAX_RAMP_OPS words: the controller streams long ramps in
    chunks instead."""
    w = ramp_up_writer(trains, channels, waits)
    return [] if w is None else _all_ops(w)


def ramp_down_ops(trains, channels):
    """Every op of the soft stop of ``channels`` (each with ramp_down_k > 0, running with identical
    timing) in one list, like ramp_up_ops; the caller stops the streams when the mark after them is
    seen."""
    return _all_ops(RampWriter(trains, channels, None, True))


def iter_groups(train):
    """The groups of one cycle in order, from the run-length coded host view `runs` (host side and
    tests; the board feeds dma_chain.Plan from the compact `pulse` / `idle_runs` instead)."""
    for g, n in train.runs:
        for _ in range(n):
            yield g


def cycle_groups(train):
    """One cycle as a list of groups (host side: the virtual Pico's DMA model, tests)."""
    return list(iter_groups(train))


def cycle_words(train):
    """One cycle as a flat word list (tests, virtual Pico; the board DMAs `runs` instead)."""
    out: list = []
    for g in iter_groups(train):
        out.extend(g)
    return out


def expand(train, k):
    """First k segments as (start_tick, pins), time 0 = the first segment's pin write.

    Plays the delay, then `repeats` cycles (forever if 0), then stops: the stream's end.
    """
    out: list = []
    t = 0
    for w in train.delay:
        if len(out) >= k:
            return out
        out.append((t, w & PIN_MASK))
        t += (w >> COUNT_SHIFT) + OVERHEAD
    c = 0
    while train.repeats == 0 or c < train.repeats:
        for g in iter_groups(train):
            for w in g:
                if len(out) >= k:
                    return out
                out.append((t, w & PIN_MASK))
                t += (w >> COUNT_SHIFT) + OVERHEAD
        c += 1
    return out
