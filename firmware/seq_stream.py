"""Custom pulse sequences (issue 13 item 4) on the board's DMA and DAC bus: the stream's feed plan
(:class:`SequencePlan`, a pool of ring entries rewritten just in time) and the DAC op writer
(:class:`SequenceWriter`, per-pulse amplitudes written in the idle after each pulse).

Pure (no hardware), MicroPython-compatible. Imported only when a sequence plays
(``dma_chain.plan_for``, ``pulse_engine.start_ops`` / ``sequence_writer``), so its code costs no heap
on a board that plays regular trains. Reads firmware/sequence.py's SequenceSource
(``train.sequence``): every user opens its own reader (the stream, the DAC op writer, monitoring).
Design and proofs: docs/ARCHITECTURE.md "Custom sequences (firmware side)".
"""

from firmware import dac_bus, pulse_engine
from firmware.dma_chain import ENTRY_WORDS, MAX_TICKS, MIN_ENTRY_WORDS, OVERHEAD, SHIFT, Block, _idle_pieces, word_ticks

# ---- custom sequences (issue 13 item 4): a pool of entries rewritten just in time ----------------
# Entries of the pool (the "one-entry blocks" of docs/ARCHITECTURE.md "Custom sequences"), kept in a
# few arrays of POOL_CHUNK entries (8 KB a channel at P = 16; no object per entry).
POOL_BLOCKS = 128
# Entries per pool array: 16 (1 KB at P = 16), not one 8 KB array: a heap fragmented by the time of a
# START may have no 8 KB hole (measured on the emulated board: MemoryError allocating 8192 bytes).
POOL_CHUNK = 16


def _idle_word(ticks):
    return (ticks - OVERHEAD) << SHIFT


class SequencePlan:
    """How a custom sequence (``train.sequence``: firmware/sequence.py's SequenceSource) is fed: its
    pulses are read one by one (SequenceReader) and laid out just in time in a pool of POOL_BLOCKS
    entries of P words that the ring points at in turn; the pool is rewritten as the DMA moves on.

    * Pulse entry: ``train.pulse`` (fixed), then the idle up to the next onset as ONE variable idle
      word followed by ``q - 1`` shortest idle words (``q`` = P - pulse words >= 2). A pool entry
      keeps that layout, so a pulse whose idle fits the entry (up to ``cap`` = MAX_TICKS + (q - 1) x
      OVERHEAD ticks, about 2.1 s) costs ONE word store (the fast path).
    * A longer idle continues in a remainder pool entry (or two) of idle words and ``k`` entries of
      the shared ``idle`` block, which is never rewritten (P - 1 longest idle words and a shortest
      one: 32 s an entry). The first onset is a lead of idle entries (>= P x OVERHEAD ticks) or, when
      shorter, an idle word merged in front of the first pulse (below OVERHEAD ticks: unrealisable).
    * The last pulse (played once, or of the last cycle) is followed by ``period - pulse`` ticks of
      idle (the tightest interval's; at most ``cap``, ~2.1 s, for a longer period), then the stream ends.
    * Every entry ends on a shortest idle word: an entry boundary never cuts a pulse, and the SM's
      last word after the chain ends is OVERHEAD ticks (``tail_ticks``).

    Just in time means: an entry is written when the Feeder queues it, and the Feeder never queues
    more than ``max_ahead`` (= POOL_BLOCKS - 2) entries beyond the one the control channel reads
    next. The pool entry written for absolute entry i last served entry i - POOL_BLOCKS or earlier,
    which is <= consumed - 2, an entry the data channel has finished (it finished entry consumed - 2
    before the control channel read slot consumed - 1): the DMA never reads a half-rewritten entry.
    """

    jit = True

    def __init__(self, train, p=0):
        if p <= 0:
            p = ENTRY_WORDS
        if p < MIN_ENTRY_WORDS:
            raise ValueError("%d words per entry do not outnumber the FIFO" % p)
        pulse = list(train.pulse)
        q = p - len(pulse)
        if q < 2:
            raise ValueError("a pulse of %d words leaves less than 2 idle words in an entry of %d" % (len(pulse), p))
        self.p = p
        self.source = train.sequence
        self.pulse = pulse
        pt = 0
        for w in pulse:
            pt += word_ticks(w)
        self.pulse_ticks = pt
        self.iv = len(pulse)  # index of the variable idle word in a standard pulse entry
        self.fixed = (q - 1) * OVERHEAD  # the shortest idle words after it
        self.cap = MAX_TICKS + self.fixed  # the most idle a standard pulse entry holds
        self.full = (p - 1) * MAX_TICKS + OVERHEAD  # ticks of one shared idle entry
        last = train.period_ticks - pt
        if last > self.cap:
            last = self.cap
        if last < q * OVERHEAD:
            raise ValueError("period of %d ticks leaves too little idle after the pulse" % train.period_ticks)
        self.last_idle = last
        template = pulse + [_idle_word(OVERHEAD)] * q
        # the pool in arrays of POOL_CHUNK entries: entry e is entry e % POOL_CHUNK of chunk e // POOL_CHUNK
        self.chunks = [Block(template * POOL_CHUNK, p, 1) for _ in range(POOL_BLOCKS // POOL_CHUNK)]
        self.std = bytearray(b"\x01" * POOL_BLOCKS)  # 1: the entry holds the standard pulse layout
        self.idle = Block([_idle_word(MAX_TICKS)] * (p - 1) + [_idle_word(OVERHEAD)], p, 0)
        self.blocks = self.chunks + [self.idle]
        self.max_ahead = POOL_BLOCKS - 2
        self.tail_ticks = OVERHEAD

    def words(self):
        """32-bit words in every buffer of the plan (what the HAL allocates for the DMA)."""
        n = len(self.idle.words)
        for b in self.chunks:
            n += len(b.words)
        return n

    def cursor(self):
        return SequenceCursor(self)


class SequenceCursor:
    """Position in a SequencePlan: reads the sequence one pulse ahead and (re)writes pool entries as
    :meth:`advance` hands them out."""

    def __init__(self, plan):
        self.plan = plan
        self.reader = plan.source.reader()
        self.slot = 0  # next pool entry to write
        self.idle_left = 0  # shared idle entries due before the next pulse
        self.rems = []  # remainder idle entries (ticks) due before the next pulse
        self.done = 0  # pulses completed by the entry advance() returned last
        self.pulses = 0  # pulse entries handed out
        self.pre = 0  # idle merged in front of the next pulse (a first onset below P x OVERHEAD)
        self.next = self.reader.next()  # (onset ticks, code1) of the next pulse, None at the end
        if self.next is not None:
            o = self.next[0]
            if o >= plan.p * OVERHEAD:
                self.idle_left, self.rems = self._split(o)
            elif o >= OVERHEAD:
                self.pre = o
            elif o:
                raise ValueError("first onset of %d ticks is below one segment (%d)" % (o, OVERHEAD))

    def _split(self, ticks):
        """``ticks`` (>= P x OVERHEAD) of idle as (k shared entries, [1 or 2 remainder entries' ticks],
        each in P x OVERHEAD .. full)."""
        plan = self.plan
        full = plan.full
        k = (ticks - 1) // full
        rem = ticks - k * full
        if rem >= plan.p * OVERHEAD:
            return k, [rem]
        k -= 1  # (rem < P x OVERHEAD <= ticks: k >= 1)
        rem += full
        a = rem // 2
        return k, [a, rem - a]

    def _slot(self):
        e = self.slot
        self.slot = e + 1 if e + 1 < POOL_BLOCKS else 0
        return e

    def _write(self, e, words):
        buf = self.plan.chunks[e // POOL_CHUNK].words
        at = (e % POOL_CHUNK) * self.plan.p
        for i in range(len(words)):
            buf[at + i] = words[i]

    def advance(self):
        """The next entry in play order, written: a pool entry index (>= 0), -1 for the shared idle
        block, -2 at the end. ``done``: pulses that entry completes (1 for a pulse entry)."""
        plan = self.plan
        if self.rems:
            t = self.rems.pop()
            e = self._slot()
            self._write(e, _idle_pieces(t - OVERHEAD, plan.p - 1) + [_idle_word(OVERHEAD)])
            plan.std[e] = 0
            self.done = 0
            return e
        if self.idle_left > 0:
            self.idle_left -= 1
            self.done = 0
            return -1
        cur = self.next
        if cur is None:
            self.done = 0
            return -2
        nxt = self.reader.next()
        self.next = nxt
        if nxt is None:
            self.reader.close()
            idle = plan.last_idle
        else:
            idle = nxt[0] - cur[0] - plan.pulse_ticks
        e = self.slot
        self.slot = e + 1 if e + 1 < POOL_BLOCKS else 0
        v = idle - plan.fixed
        if OVERHEAD <= v <= MAX_TICKS and not self.pre and plan.std[e]:
            plan.chunks[e // POOL_CHUNK].words[(e % POOL_CHUNK) * plan.p + plan.iv] = (v - OVERHEAD) << SHIFT
        else:
            self._pulse_entry(e, idle)
        self.done = 1
        self.pulses += 1
        return e

    def _pulse_entry(self, e, idle):
        plan = self.plan
        p = plan.p
        words = []
        pre = self.pre
        if pre:
            words.append(_idle_word(pre))
            self.pre = 0
        words.extend(plan.pulse)
        n = p - len(words)  # idle words after the pulse (>= 1)
        v = idle - (n - 1) * OVERHEAD
        if v > MAX_TICKS:  # the rest continues in idle entries before the next pulse
            c = v - MAX_TICKS
            v = MAX_TICKS
            if c < p * OVERHEAD:
                v -= p * OVERHEAD - c
                c = p * OVERHEAD
            self.idle_left, self.rems = self._split(c)
        if v < OVERHEAD:
            raise ValueError("pulse %d: %d ticks of idle after it do not fit" % (self.pulses, idle))
        words.append(_idle_word(v))
        for _ in range(n - 1):
            words.append(_idle_word(OVERHEAD))
        self._write(e, words)
        plan.std[e] = 0 if pre else 1

    def run(self, start, limit, ring, base, rl, cum, total, addr_of, step):
        """Feeder._write_seq_run's loop: entries from absolute index ``start`` up to ``limit``, each
        written (pool entry) and its ring slot and pulse count stored, EXCEPT the first slot, whose
        value is returned for the caller to store last (it commits the run). Returns (entries,
        pulses total, first slot's value, finished). The standard pulse entry is handled inline on
        locals (one interval, one word store, one ring store per pulse); everything else goes
        through advance()."""
        plan = self.plan
        arrs = [b.words for b in plan.chunks]
        bases = [addr_of(b) for b in plan.chunks]
        ia = addr_of(plan.idle)
        std = plan.std
        p = plan.p
        iv = plan.iv
        fixed = plan.fixed + OVERHEAD  # idle - fixed = the variable word's count field
        top = MAX_TICKS - OVERHEAD
        pt = plan.pulse_ticks
        reader = self.reader
        nxt_of = reader.next
        cur = self.next
        slot = self.slot
        first = 0
        i = start
        fin = False
        while i < limit:
            if cur is not None and not self.rems and not self.idle_left and not self.pre:
                nxt = nxt_of()
                if nxt is None:
                    reader.close()
                    idle = plan.last_idle
                else:
                    idle = nxt[0] - cur[0] - pt
                e = slot
                slot = e + 1
                if slot == POOL_BLOCKS:
                    slot = 0
                v = idle - fixed
                c = e // POOL_CHUNK
                r = e - c * POOL_CHUNK
                if 0 <= v <= top and std[e]:
                    arrs[c][r * p + iv] = v << SHIFT  # the fast path
                else:
                    self.next = nxt
                    self.slot = slot
                    self._pulse_entry(e, idle)
                cur = nxt
                self.pulses += 1
                total += 1
                val = bases[c] + step * r
            else:
                self.next = cur
                self.slot = slot
                e = self.advance()
                cur = self.next
                slot = self.slot
                if e < -1:
                    fin = True
                    break
                total += self.done
                val = ia if e < 0 else bases[e // POOL_CHUNK] + step * (e % POOL_CHUNK)
            k = i % rl
            cum[k] = total
            if i == start:
                first = val
            else:
                ring[base + k] = val
            i += 1
        self.next = cur
        self.slot = slot
        self.done = 0
        return i - start, total, first, fin

    def entry(self, addr_of, step):
        """(address, pulses completed) of the next entry, or None at the end (Feeder._next_entry)."""
        e = self.advance()
        if e < -1:
            return None
        plan = self.plan
        if e < 0:
            return addr_of(plan.idle), 0
        return addr_of(plan.chunks[e // POOL_CHUNK]) + step * (e % POOL_CHUNK), self.done


# ---- the DAC op writer ----------------------------------------------------------------------------
PAIR_CACHE = 64  # phase-1 codes whose write pair a SequenceWriter keeps (a dict entry each)
# Boundaries per SequenceWriter.chunk call and its lookahead: ~0.3 ms each on the M0+ (BENCHMARKS.md §8),
# so a chunk holds the main loop ~40 ms, well inside the stream ring's 126 intervals; the DAC ops are
# then queued about as far ahead as the stream itself.
CHUNK_BOUNDARIES = 128

class SequenceWriter:
    """The DAC ops of one channel's sequence whose amplitude varies, chunk by chunk (the controller
    queues them like a RampWriter's: ``lookahead()`` boundaries ahead of the pulses, topped up from
    poll()). Boundary j is the end of pulse j (``pulse_engine.boundary_wait_ops``); its ops are the
    wait(s), then, only when pulse j + 1's phase-1 code differs from pulse j's, the writes of pulse
    j + 1's (A, B) codes (phase 2 balanced per pulse: ``pulse_engine._codes``). A boundary without a
    change is a bare wait (it counts the pulse); the bare waits after the last change of a sequence
    that ends are dropped, and no wait follows its last pulse. Pulse 0's codes are written before the
    start (``pulse_engine.start_ops``). Same interface as RampWriter (``channels``, ``emitted``,
    ``done``, ``lookahead()``, ``chunk(n)``).

    Each interval is at least the period, and the period leaves ``dac_bus.min_idle_ticks(1)`` after
    the pulse (checked here: Unrealisable naming period_ns), so the writes of boundary j are done
    and settled before pulse j + 1 starts; the next wait is then pulled at once, long before pulse
    j + 1's last phase ends, so it ends at that pulse's end (the lookahead keeps the queue from
    running dry)."""

    down = False

    def __init__(self, train, ch):
        v = pulse_engine.update_idle_violation(train, 1)
        if v is not None:
            raise pulse_engine.Unrealisable(v.field, v.value, "a sequence whose amplitude varies needs the DAC "
                                            "update idle after every pulse", v.limit, v.relation)
        self.train = train
        self.channels = [ch]
        self.ch = ch
        self.reader = train.sequence.reader()
        first = self.reader.next()
        self.prev = first[1] if first is not None else 0
        self.ended = first is None
        self.waits = pulse_engine.boundary_wait_ops(train, ch)
        self.per = len(self.waits) + 2
        self.emitted = 0  # boundaries already in chunks
        self._pairs = {}  # phase-1 code -> (write A, write B) op words

    @property
    def done(self):
        return self.ended

    def lookahead(self):
        """Boundaries to queue ahead of the pulses: 1 s at the tightest interval (RAMP_LOOKAHEAD_TICKS,
        at least RAMP_CHUNK_MIN), at most CHUNK_BOUNDARIES (about the stream ring's own lookahead)."""
        period = self.train.period_ticks
        b = (pulse_engine.RAMP_LOOKAHEAD_TICKS + period - 1) // period
        if b < pulse_engine.RAMP_CHUNK_MIN:
            b = pulse_engine.RAMP_CHUNK_MIN
        return b if b < CHUNK_BOUNDARIES else CHUNK_BOUNDARIES

    def chunk(self, boundaries):
        """The ops of the next ``boundaries`` boundaries, at most CHUNK_BOUNDARIES per call (fewer at
        the end; [] when done): a boundary costs ~0.3 ms on the M0+, and a longer chunk would hold the
        main loop while the stream's ring (126 entries) drains. The write pair of each phase-1 code is
        computed once (``_pairs``, at most PAIR_CACHE codes kept)."""
        if self.ended:
            return []
        m = boundaries
        if m > CHUNK_BOUNDARIES:
            m = CHUNK_BOUNDARIES
        ops = []  # type: list
        app = ops.append
        last_change = 0
        reader = self.reader
        nxt_of = reader.next
        prev = self.prev
        w1 = self.waits[0]
        w2 = self.waits[1] if len(self.waits) > 1 else -1
        pairs = self._pairs
        n = 0
        while n < m:
            x = nxt_of()
            if x is None:
                self.ended = True
                reader.close()
                break
            app(w1)
            if w2 >= 0:
                app(w2)
            c1 = x[1]
            if c1 != prev:
                prev = c1
                pr = pairs.get(c1)
                if pr is None:
                    pr = self._pair(c1)
                app(pr[0])
                app(pr[1])
                last_change = len(ops)
            n += 1
        self.emitted += n
        self.prev = prev
        if self.ended:
            del ops[last_change:]  # bare waits after the last change would only delay the mark
        return ops

    def _pair(self, c1):
        a, b = pulse_engine._codes(self.train, c1)
        pr = (dac_bus.code_write_op(self.ch, False, a), dac_bus.code_write_op(self.ch, True, b))
        if len(self._pairs) < PAIR_CACHE:
            self._pairs[c1] = pr
        return pr


def first_codes(train):
    """(DAC A, DAC B) of the sequence's first pulse."""
    r = train.sequence.reader()
    x = r.next()
    r.close()
    return pulse_engine._codes(train, x[1] if x is not None else train.code1)


def varies(train):
    """True when some pulse's phase-1 code differs from the first's (the source's ``varies`` when it
    knows, else one pass over the records, ending at the first difference)."""
    src = train.sequence
    v = getattr(src, "varies", None)
    if v is not None:
        return bool(v)
    r = src.reader()
    x = r.next()
    first = x[1] if x is not None else 0
    n = src.pulses
    try:
        while x is not None and n > 0:
            if x[1] != first:
                return True
            x = r.next()
            n -= 1
    finally:
        r.close()
    return False
