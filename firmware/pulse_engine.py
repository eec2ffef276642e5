"""Pulse engine: canonical parameters -> PIO ticks -> segment words for DMA, plus realised values.

Pure logic (no hardware) so the same code runs on the board, in the virtual Pico and in tests.
All timing is integer maths (RP2040 floats are single precision; 60 s is 7.5e9 ticks).

Segment word (see firmware/pio/stim.pio): bits 3..0 pins (POS, NEG, RECOVERY, SYNC), bits 31..4
count N; the pins hold for N + SEGMENT_OVERHEAD_TICKS ticks, so a segment of T ticks is written as
N = T - SEGMENT_OVERHEAD_TICKS and the capture shows exactly T.

Safety invariants (POS and NEG never in one word, every group ends idle, count in range) are checked
with explicit raises rather than `assert`, so they survive `mpy-cross -O`.
"""

from firmware import board
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
        self.entry = pio.SEGMENT_ENTRY  # initial PC for the state machine
        self.trigger_pin: int | None = None  # GPIO the PIO waits on (in_base), None for a software start
        self.first = NEG  # pin of phase 1 (NEG = cathodic-first)
        self.dac_a = 0  # DAC codes at full amplitude: A = POS direction, B = NEG direction
        self.dac_b = 0

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
    """
    if DEAD_TICKS < OVERHEAD:
        raise Unrealisable("interphase_ns", params["interphase_ns"], "board dead time below one segment")
    ph1 = _field_ticks(params, "phase1_ns", False)
    ip = ns_to_ticks(params["interphase_ns"])
    if ip < DEAD_TICKS:
        ip = DEAD_TICKS
    ph2 = _field_ticks(params, "phase2_ns", False)
    rec = _field_ticks(params, "recovery_ns", True)
    rec_gap = DEAD_TICKS if rec else 0
    period = ns_to_ticks(params["period_ns"])
    delay = _field_ticks(params, "train_delay_ns", True)
    n_burst = params["burst_pulses"]
    interburst = ns_to_ticks(params["interburst_ns"]) if n_burst > 0 else 0
    pulse_ticks = ph1 + ip + ph2 + rec_gap + rec
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

    dur = ns_to_ticks(params["train_duration_ns"])
    t.repeats = (dur + t.cycle_ticks - 1) // t.cycle_ticks if dur > 0 else 0

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
    t.first = first
    t.dac_a, t.dac_b = _dac_pair(first, code1, code2)

    res = residual_fc(code1, ph1, code2, ph2)
    t.realised = {
        "phase1": ph1,
        "interphase": ip,
        "phase2": ph2,
        "recovery": rec,
        "recovery_gap": rec_gap,
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
    return train, None


def _dac_pair(first, code1, code2):
    """(DAC A, DAC B) codes: A drives the POS direction, B the NEG direction."""
    if first == NEG:
        return code2, code1
    return code1, code2


def pulse_start_ticks(train, k):
    """Start of pulse k (0-based) in ticks from the first pulse's start."""
    n = train.pulses_per_cycle
    return (k // n) * train.cycle_ticks + (k % n) * train.period_ticks


def ramp_codes(train, k):
    """(DAC A, DAC B) for pulse k during the soft-start ramp, still charge-balanced.

    Linear in time: pulse k gets min(1, (t_k + period) / ramp_up) of the full amplitude, so the
    first pulse is already non-zero and the ramp ends at ramp_up. The controller writes these in
    the idle after pulse k-1 (never mid-pulse).
    """
    if train.ramp_ticks <= 0:
        return train.dac_a, train.dac_b
    t = pulse_start_ticks(train, k) + train.period_ticks
    if t >= train.ramp_ticks:
        return train.dac_a, train.dac_b
    c1 = _round_div(train.code1 * t, train.ramp_ticks)
    if c1 < 1:
        c1 = 1
    c2 = balance_code(c1, train.phase1_ticks, train.phase2_ticks)
    if c2 < 1:
        c2 = 1
    return _dac_pair(train.first, c1, c2)


def ramp_pulses(train):
    """Number of pulses that get a reduced (ramp) amplitude."""
    if train.ramp_ticks <= 0:
        return 0
    k = 0
    while pulse_start_ticks(train, k) + train.period_ticks < train.ramp_ticks:
        k += 1
    return k


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
