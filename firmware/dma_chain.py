"""Pure part of the board HAL: RP2040 register map, DMA/PIO control words, and the DMA feed plan.

No hardware access here, so CPython tests and the MicroPython unix port can import and check it.
firmware/hal_rp2.py does the (thin) register writes with the values computed below.

Register addresses: RP2040 datasheet (build 2023-06 and later), section numbers given per block.

Feed design (see docs/HARDWARE.md, "DMA chain"):

* Every *entry* is P = ENTRY_WORDS words (the same for every stream). A pulse group (one pulse +
  its idle) is laid out so the pulse lies inside ONE entry that ends on idle words; idle beyond what
  that entry holds fills one or two more entries, and a long idle (up to 48 h) is ``k`` repeats of
  ONE shared entry of P longest idle words (the ring holds its address k times). Idle words are
  split to fill entries (pins and tick sum unchanged; a drive word only inside its own entry, when
  the idle after a pulse is too short to fill it), so every entry boundary comes after an idle
  word and a stream that ends at an entry boundary never cuts a pulse. A train delay that fills an entry
  gets entries of its own; a shorter one is merged into the first group's pulse entry ("lead").
  Plan size and build cost are bounded whatever the durations (see Plan).
* The *data* DMA channel (DREQ = the SM's TX FIFO, 32-bit, inc_read) has a fixed TRANS_COUNT = P and
  chains to the *control* channel; the control channel copies ONE word per trigger (the next
  entry's address) from a power-of-two aligned ring into the data channel's AL3_READ_ADDR_TRIG,
  using its read ring (CTRL.RING_SIZE, RING_SEL = read), so the control list loops in hardware.
* A ring slot holding 0 is a null trigger (datasheet 2.5.2.2): the data channel does not start and
  the chain ends, at a group boundary. The CPU (Feeder below) keeps the ring filled ahead of the DMA
  and always leaves a 0 right after the last valid entry, so a CPU that falls behind ends the stream
  early at a group boundary (reported as an underrun), never replays stale entries. The timing of
  every edge stays in the PIO; the CPU only decides which group comes next, up to RING_LEN groups
  ahead.
"""

from array import array

from firmware import board
from firmware import pio_programs as pio

# ---- DMA (datasheet 2.5.7 "List of registers", DMA_BASE 0x50000000) ------------------------------
DMA_BASE = 0x50000000
DMA_CH_STRIDE = 0x40
DMA_READ_ADDR = 0x00
DMA_WRITE_ADDR = 0x04
DMA_TRANS_COUNT = 0x08
DMA_CTRL_TRIG = 0x0C
DMA_AL1_CTRL = 0x10  # CTRL without trigger
DMA_AL3_READ_ADDR_TRIG = 0x3C  # alias 3: CTRL, WRITE_ADDR, TRANS_COUNT, READ_ADDR_TRIG
DMA_MULTI_CHAN_TRIGGER = DMA_BASE + 0x430
DMA_CHAN_ABORT = DMA_BASE + 0x444

# CHx_CTRL_TRIG fields (2.5.7)
CTRL_EN = 1 << 0
CTRL_HIGH_PRIORITY = 1 << 1
CTRL_DATA_SIZE_WORD = 2 << 2
CTRL_INCR_READ = 1 << 4
CTRL_INCR_WRITE = 1 << 5
CTRL_RING_SIZE_SHIFT = 6
CTRL_RING_SEL_WRITE = 1 << 10
CTRL_CHAIN_TO_SHIFT = 11
CTRL_TREQ_SEL_SHIFT = 15
CTRL_IRQ_QUIET = 1 << 21
CTRL_BUSY = 1 << 24
TREQ_PERMANENT = 0x3F
DREQ_PIO0_TX0 = 0  # 2.5.3.1: DREQ_PIO0_TX0..3 = 0..3, PIO1 TX0..3 = 8..11

# ---- PIO (datasheet 3.7 "List of registers", PIO0_BASE 0x50200000) -------------------------------
PIO0_BASE = 0x50200000
PIO1_BASE = 0x50300000
PIO_CTRL = 0x000  # SM_ENABLE 3:0, SM_RESTART 7:4, CLKDIV_RESTART 11:8
PIO_FSTAT = 0x004
PIO_FLEVEL = 0x00C  # TXn level at bits 8n+3..8n (4 bits, 0..8 with a joined FIFO)
PIO_TXF0 = 0x010  # TXFn at 0x010 + 4n
PIO_SM0_ADDR = 0x0D4  # current PC (5 bits); SMn at + 0x18 n
PIO_SM0_INSTR = 0x0D8  # write: execute this instruction now (also on a disabled SM)
PIO_SM0_PINCTRL = 0x0DC  # OUT_BASE 4:0, SET_BASE 9:5, SIDESET_BASE 14:10, IN_BASE 19:15, counts above
PIO_SM_STRIDE = 0x18
PINCTRL_IN_BASE_SHIFT = 15
PINCTRL_IN_BASE_MASK = 0x1F << PINCTRL_IN_BASE_SHIFT
# Atomic register aliases (2.1.2): +0x1000 XOR, +0x2000 SET, +0x3000 CLR
REG_ALIAS_SET = 0x2000
# `mov pins, null` (3.4.8: MOV, destination PINS = 000, op none, source NULL = 011): all OUT pins low.
# Written to SMx_INSTR it executes at once, also on a disabled SM: the forced-stop path's pin reset
# (a disabled SM holds its pins at whatever it last drove).
MOV_PINS_NULL = 0xA003

# ---- DAC bus state machine (firmware/pio/dac.pio on PIO1 SM0, docs/ARCHITECTURE.md "DAC bus") -----
DREQ_PIO1_TX0 = 8  # 2.5.3.1
PIO_RXF0 = 0x020  # RXFn at 0x020 + 4n (read: pops the FIFO)
PIO_SM0_SHIFTCTRL = 0x0D0
FSTAT_RXEMPTY_SHIFT = 8  # FSTAT.RXEMPTY bits 11:8 (one per SM)
SHIFTCTRL_FJOIN_RX = 1 << 31  # changing FJOIN_RX flushes both FIFOs (3.7 SHIFTCTRL)
REG_ALIAS_XOR = 0x1000
REG_ALIAS_CLR = 0x3000
CTRL_SM_RESTART_SHIFT = 4  # PIO CTRL.SM_RESTART 7:4, self-clearing
PINCTRL_OUT_COUNT_SHIFT = 20
PINCTRL_SIDESET_BASE_SHIFT = 10
PINCTRL_SIDESET_COUNT_SHIFT = 29
# `mov osr, null` / `out pins, 9` / `out pindirs, 9`, side-set 0 (SCK low): executed through SMx_INSTR
# they drive MOSI and every chip-select latch low and release every chip select (direction 0).
DAC_MOV_OSR_NULL = 0xA0E3
DAC_OUT_PINS_9 = 0x6000 | pio.DAC_OUT_COUNT
DAC_OUT_PINDIRS_9 = 0x6080 | pio.DAC_OUT_COUNT
DAC_RX_DEPTH = 4  # `.fifo txrx`: 4-deep RX FIFO (marks)
DAC_TX_DEPTH = 4  # and a 4-deep TX FIFO

# ---- watchdog / misc ----
WDT_TIMEOUT_MS = 2000  # see docs/HARDWARE.md: 2 s covers the slowest legal main-loop step
RING_BITS = 10  # control ring = 2**RING_BITS bytes = 256 entries (RING_LEN groups ahead of the DMA)
RING_LEN = (1 << RING_BITS) // 4
RING_MARGIN = 16  # slots kept behind the DMA (their pulse counts are still read) -- >= 8 words + 2
FIFO_DEPTH = 8  # TX FIFO joined
# Entries a replace writes with interrupts off (Feeder.commit_replace); fill() tops up the rest.
REPLACE_RUN = 32


def pio_base(pio_id):
    return PIO0_BASE if pio_id == 0 else PIO1_BASE


def dma_reg(channel, offset):
    """Address of a register of DMA channel ``channel``."""
    return DMA_BASE + DMA_CH_STRIDE * channel + offset


def pio_sm_addr_reg(pio_id, sm):
    return pio_base(pio_id) + PIO_SM0_ADDR + PIO_SM_STRIDE * sm


def pio_sm_instr_reg(pio_id, sm):
    return pio_base(pio_id) + PIO_SM0_INSTR + PIO_SM_STRIDE * sm


def pio_txf(pio_id, sm):
    return pio_base(pio_id) + PIO_TXF0 + 4 * sm


def pio_ctrl_set(pio_id):
    """Set-alias of PIO CTRL: one write ORs bits in without a read-modify-write."""
    return pio_base(pio_id) + PIO_CTRL + REG_ALIAS_SET


def pio_sm_pinctrl_reg(pio_id, sm):
    return pio_base(pio_id) + PIO_SM0_PINCTRL + PIO_SM_STRIDE * sm


def pinctrl_in_base(pinctrl, pin):
    """A PINCTRL value with IN_BASE replaced by ``pin`` (everything else kept)."""
    return (pinctrl & ~PINCTRL_IN_BASE_MASK) | (pin & 0x1F) << PINCTRL_IN_BASE_SHIFT


def pio_flevel(pio_id):
    return pio_base(pio_id) + PIO_FLEVEL


def tx_level(flevel, sm):
    """Words in SM ``sm``'s TX FIFO from a FLEVEL register value."""
    return (flevel >> (8 * sm)) & 0xF


def sm_mask_of(channels_mask):
    """Channel mask -> state-machine mask (board.CH_SM)."""
    m = 0
    for ch in range(board.CHANNELS):
        if channels_mask >> ch & 1:
            m |= 1 << board.CH_SM[ch]
    return m


def ctrl_start_value(sm_mask):
    """PIO CTRL bits that enable the SMs of ``sm_mask`` and restart their clock dividers together.

    Written once to the SET alias, so every SM of the mask starts on the same PIO cycle with its
    fractional divider phase aligned (pico-sdk pio_enable_sm_mask_in_sync does the same).
    """
    return (sm_mask & 0xF) | (sm_mask & 0xF) << 8


def jmp(addr):
    """Encoding of an unconditional `jmp addr` (PIO instruction format, 3.4.2)."""
    return addr & 0x1F


def dma_ctrl(treq, chain_to, inc_read=True, inc_write=False, ring_bits=0, ring_write=False, irq_quiet=True):
    """A CHx_CTRL value: enabled, 32-bit transfers."""
    v = CTRL_EN | CTRL_DATA_SIZE_WORD
    if inc_read:
        v |= CTRL_INCR_READ
    if inc_write:
        v |= CTRL_INCR_WRITE
    v |= (ring_bits & 0xF) << CTRL_RING_SIZE_SHIFT
    if ring_write:
        v |= CTRL_RING_SEL_WRITE
    v |= (chain_to & 0xF) << CTRL_CHAIN_TO_SHIFT
    v |= (treq & 0x3F) << CTRL_TREQ_SEL_SHIFT
    if irq_quiet:
        v |= CTRL_IRQ_QUIET
    return v


def data_ctrl(sm, control_channel):
    """Data channel: paced by the SM's TX DREQ, read increments, write fixed (the FIFO), then chains
    to the control channel. IRQ_QUIET: an IRQ only on the null trigger that ends the stream."""
    return dma_ctrl(DREQ_PIO0_TX0 + sm, control_channel, inc_read=True, inc_write=False)


def control_ctrl(control_channel, ring_bits=RING_BITS):
    """Control channel: full speed, one word per trigger, read ring over the control ring, no chain
    (CHAIN_TO = itself)."""
    return dma_ctrl(TREQ_PERMANENT, control_channel, inc_read=True, inc_write=False, ring_bits=ring_bits)


def pio_reg(pio_id, offset):
    """Address of a PIO block register (CTRL, FSTAT, FLEVEL, ...) plus an alias offset if any."""
    return pio_base(pio_id) + offset


def pio_sm_reg(pio_id, sm, sm0_offset):
    """Address of a per-SM register given its SM0 offset (CLKDIV 0x0c8 ... PINCTRL 0x0dc)."""
    return pio_base(pio_id) + sm0_offset + PIO_SM_STRIDE * sm


def aligned_offset(addr, align_bytes):
    """Index (in 32-bit words) of the first ``align_bytes``-aligned word at or after ``addr``."""
    return ((-addr) % align_bytes) // 4


# ---- words ---------------------------------------------------------------------------------------
OVERHEAD = pio.SEGMENT_OVERHEAD_TICKS
SHIFT = pio.COUNT_SHIFT
PIN_MASK = pio.PIN_MASK


def word_ticks(w):
    return (w >> SHIFT) + OVERHEAD


MAX_TICKS = pio.COUNT_MAX + OVERHEAD  # longest single word
# P, words per ring entry: the same for every stream, so replace() never meets another P. >= the
# FIFO depth + 1 (an entry outnumbers the FIFO plus the word in flight: the DMA is at most one entry
# ahead of the pins, so a stop lets at most one queued entry follow) and room for a pulse, a
# delay word and idle after them in one entry.
ENTRY_WORDS = 16
MIN_ENTRY_WORDS = FIFO_DEPTH + 1


def _idle_pieces(ticks, n):
    """``ticks`` of idle as exactly ``n`` words (floor/ceil of ticks/n; the caller keeps every piece
    in OVERHEAD..MAX_TICKS)."""
    base = ticks // n
    extra = ticks - base * n
    out = []
    for i in range(n):
        out.append(((base + 1 if i < extra else base) - OVERHEAD) << SHIFT)
    return out


def split_to(words, n):
    """The same waveform in exactly ``n`` words (n >= len(words)): repeatedly split a word into two
    with the same pins (floor/ceil halves, both >= OVERHEAD): the longest idle word, or the longest
    word of any pins only when no idle word can be split. O(n * len): used only inside one entry
    (n <= P). Raises ValueError when the words are too short to split that far."""
    out = list(words)
    if n < len(out):
        raise ValueError("cannot shrink %d words to %d" % (len(out), n))
    while len(out) < n:
        best = -1
        best_t = 0
        best_idle = False
        for i in range(len(out)):
            t = word_ticks(out[i])
            if t < 2 * OVERHEAD:
                continue
            idle = out[i] & PIN_MASK == 0
            if best < 0 or (idle and not best_idle) or (idle == best_idle and t > best_t):
                best, best_t, best_idle = i, t, idle
        if best < 0:
            raise ValueError("segments too short to pad to %d words" % n)
        a = best_t // 2
        b = best_t - a
        pins = out[best] & PIN_MASK
        out[best:best + 1] = [((a - OVERHEAD) << SHIFT) | pins, ((b - OVERHEAD) << SHIFT) | pins]
    return out


def idle_entries(ticks, p):
    """``ticks`` (>= OVERHEAD * p) of idle in entries of ``p`` words: (words, k) where ``words`` (one
    or two entries, each word in range) are followed by ``k`` shared full-idle entries of p x
    MAX_TICKS ticks each (Plan.idle). Size bounded whatever ``ticks`` is."""
    full = p * MAX_TICKS
    k = 0
    if ticks > full:
        k = ticks // full - 1
        ticks -= k * full  # now full < ticks < 2 * full
    return _idle_pieces(ticks, p if ticks <= full else 2 * p), k


def pulse_entries(pre, pulse, idle, p):
    """[``pre`` ticks idle (0 or < OVERHEAD * p)][``pulse`` words][``idle`` ticks idle] laid out in
    entries of ``p`` words: (words, k), ``words`` a whole number (1..3) of entries, then ``k`` shared
    full-idle entries. The pulse lies inside the first entry and is followed there by at least one
    idle word, so every entry boundary comes after an idle word: a stream that ends at an entry
    boundary (stop, CPU lag) never cuts a pulse. Only idle words are split, except when the idle is
    too short to fill the entry, where a pulse word is split inside the entry (no edge moves)."""
    head = list(pulse)
    if pre:
        head.insert(0, (pre - OVERHEAD) << SHIFT)
    q = p - len(head)  # idle words after the pulse in its entry
    if q < 1 or idle < OVERHEAD:
        raise ValueError("a pulse of %d words and its idle do not fit an entry of %d" % (len(head), p))
    rest = 0
    if idle > q * MAX_TICKS:
        rest = idle - q * MAX_TICKS
        idle = q * MAX_TICKS
        if rest < OVERHEAD * p:  # what follows must fill whole entries: move some idle there
            idle -= OVERHEAD * p - rest
            rest = OVERHEAD * p
    n = idle // OVERHEAD
    words = split_to(head + _idle_pieces(idle, n if n < q else q), p)
    if words[p - 1] & PIN_MASK:
        raise ValueError("entry does not end idle")
    k = 0
    if rest:
        more, k = idle_entries(rest, p)
        words += more
    return words, k


class Block:
    """Words of whole entries (``entries`` x P) played in one go; ``pulses`` completed by its last
    entry. Every entry ends on an idle word (checked)."""

    def __init__(self, words, p, pulses=1):
        n = len(words) // p
        if n < 1 or n * p != len(words):
            raise ValueError("%d words are not whole entries of %d" % (len(words), p))
        for e in range(n):
            if words[e * p + p - 1] & PIN_MASK:
                raise ValueError("entry %d does not end idle" % e)
        self.words = array("I", words)  # 4 bytes a word (a list would hold heap ints >= 2**30 on the board)
        self.entries = n
        self.pulses = pulses
        self.tail_ticks = word_ticks(words[-1])  # last word: always idle


class Plan:
    """How one Train is fed, in entries of P words (``p``, default ENTRY_WORDS) whatever the durations:

    * ``runs``: one cycle, [(Block, count, k)]: ``count`` times the block (one pulse + up to two
      entries of its idle), each followed by ``k`` entries of the shared ``idle`` block (P words of
      MAX_TICKS: 34 s per entry at P = 16), so a 24 h idle is a repeat count, not 40 000 words;
    * ``lead`` (+ ``lead_idle`` shared idle entries), played once first: the delay alone when it
      fills an entry (>= OVERHEAD * P ticks), else (``lead_replaces``) the delay merged into the
      cycle's first group, which it then replaces once;
    * ``blocks``: every distinct block (the buffers the DMA reads), at most 4 of <= 3 entries + idle.
    Building costs O(P^2) word operations, independent of every duration and of the burst count.
    Every block is fixed once built, so the Feeder may queue as far ahead as the ring allows
    (``max_ahead``).
    """

    jit = False  # blocks are never rewritten (SequencePlan: True)
    max_ahead = RING_LEN  # entries the Feeder may queue ahead of the DMA: the ring is the bound

    def __init__(self, train, p=0, with_delay=True):
        if p <= 0:
            p = ENTRY_WORDS
        if p < MIN_ENTRY_WORDS:
            raise ValueError("%d words per entry do not outnumber the FIFO" % p)
        self.p = p
        self.runs = []  # [(Block, count, shared idle entries after each)]
        self.blocks = []
        need_idle = False
        for idle, n in train.idle_runs:
            words, k = pulse_entries(0, train.pulse, idle, p)
            b = Block(words, p)
            self.blocks.append(b)
            self.runs.append((b, n, k))
            need_idle = need_idle or k > 0
        self.lead = None
        self.lead_idle = 0
        self.lead_replaces = False
        d = train.delay_ticks if with_delay else 0
        if d >= OVERHEAD * p:
            words, self.lead_idle = idle_entries(d, p)
            self.lead = Block(words, p, 0)
        elif d:
            words, self.lead_idle = pulse_entries(d, train.pulse, train.idle_runs[0][0], p)
            self.lead = Block(words, p)
            self.lead_replaces = True
        if self.lead is not None:
            self.blocks.append(self.lead)
            need_idle = need_idle or self.lead_idle > 0
        self.idle = None
        if need_idle:
            self.idle = Block([(MAX_TICKS - OVERHEAD) << SHIFT] * p, p, 0)
            self.blocks.append(self.idle)
        self.repeats = train.repeats
        self.tail_ticks = 0
        for b in self.blocks:
            if b.tail_ticks > self.tail_ticks:
                self.tail_ticks = b.tail_ticks

    def words(self):
        """32-bit words in every buffer of the plan (what the HAL allocates for the DMA)."""
        n = 0
        for b in self.blocks:
            n += len(b.words)
        return n

    def cursor(self):
        """A fresh position at the plan's start (what the Feeder walks)."""
        return Cursor(self)

    def sequence(self):
        """Generator of blocks in play order (test helper; the Feeder walks the same order)."""
        cursor = Cursor(self)
        while True:
            b = cursor.next_block()
            if b is None:
                return
            yield b


class Cursor:
    """Position in a Plan: which block comes next (the shared idle block once per idle entry)."""

    def __init__(self, plan):
        self.plan = plan
        self.cycle = 0
        self.run = 0
        self.rep = 0
        self.lead_pending = plan.lead is not None
        self.idle_left = 0  # shared idle entries still due after the block last returned

    def next_block(self):
        plan = self.plan
        if self.idle_left > 0:
            self.idle_left -= 1
            return plan.idle
        if self.lead_pending:
            self.lead_pending = False
            self.idle_left = plan.lead_idle
            if plan.lead_replaces:
                self._advance()
            return plan.lead
        if plan.repeats and self.cycle >= plan.repeats:
            return None
        # _advance inlined (one call per entry of a one-entry block: the feeder's hot path)
        runs = plan.runs
        b, n, k = runs[self.run]
        rep = self.rep + 1
        if rep >= n:
            rep = 0
            run = self.run + 1
            if run >= len(runs):
                run = 0
                self.cycle += 1
            self.run = run
        self.rep = rep
        self.idle_left = k
        return b

    def _advance(self):
        self.rep += 1
        if self.rep >= self.plan.runs[self.run][1]:
            self.rep = 0
            self.run += 1
            if self.run >= len(self.plan.runs):
                self.run = 0
                self.cycle += 1


def plan_for(train, p=0):
    """The feed plan of ``train``: a firmware.seq_stream.SequencePlan when it plays a custom sequence
    (``train.sequence``, set by the controller), else a Plan. Both HALs choose through this one
    function. (seq_stream is imported on the first sequence only: its code costs no heap otherwise.)"""
    if getattr(train, "sequence", None) is not None:
        from firmware.seq_stream import SequencePlan

        return SequencePlan(train, p)
    return Plan(train, p)


class Feeder:
    """CPU side of the control ring of one channel (pure: the ring is any indexable of ints).

    ``ring[base + slot]`` for slot in 0..ring_len-1 are the entries the control DMA reads in order;
    ``addr_of(block)`` gives a block's word-0 address. Absolute entry index i lives in slot
    i % ring_len. ``head`` is the absolute index of the slot that holds the terminating 0.
    ``cum[slot]`` = pulses completed once the entry in that slot has fully played.
    """

    def __init__(self, ring, base, ring_len, addr_of, margin=RING_MARGIN):
        self.ring = ring
        self.base = base
        self.ring_len = ring_len
        self.addr_of = addr_of
        self.margin = margin
        self.cum = [0] * ring_len
        self.head = 0
        self.pulses_total = 0  # cum value of entry head-1
        self.p = 1  # words per entry of the stream
        self.cursor = None  # type: Cursor | None
        self.block = None  # block being emitted and its next entry index
        self.entry = 0
        self.finished = True
        self.max_tail_ticks = 0
        self.staged = None  # type: tuple | None  # (addresses, pulses) of a prepared replace
        self.jit = False  # the plan rewrites its entries (SequencePlan): no fast path, max_ahead applies
        self.max_ahead = RING_LEN  # entries queued at most beyond the one the control channel reads next
        self.races = 0  # replaces whose first store the DMA may have raced (commit_replace)

    # -- ring access
    def _put(self, i, value):
        self.ring[self.base + i % self.ring_len] = value

    def _next_entry(self):
        """(address, pulses-completed-after) of the next entry, or None at the end of the plan."""
        if self.jit:
            return self.cursor.entry(self.addr_of, 4 * self.p)  # type: ignore[union-attr]
        if self.block is None or self.entry >= self.block.entries:
            self.block = self.cursor.next_block() if self.cursor is not None else None
            self.entry = 0
            if self.block is None:
                return None
        b = self.block
        addr = self.addr_of(b) + 4 * self.p * self.entry
        self.entry += 1
        done = b.pulses if self.entry == b.entries else 0
        return addr, done

    def _write_run(self, start, limit):
        """Write entries at absolute indexes start.. (< limit) then a 0 after them; the first slot is
        written LAST (it commits the run: the DMA sees either the old 0 there or the whole run).
        Returns the new head. (_next_entry inlined, with the block's address looked up once per
        block: this loop is most of START's time on the M0+.)"""
        if self.jit:
            return self._write_seq_run(start, limit)
        vals = []
        cums = []
        total = self.pulses_total
        i = start
        if i < limit and not self.finished:
            cur = self.cursor
            addr_of = self.addr_of
            step = 4 * self.p
            b = self.block
            entry = self.entry
            prev = None
            if b is not None:
                prev = b
                a0 = addr_of(b)
                n = b.entries
                pz = b.pulses
            if cur is not None:  # Cursor.next_block inlined on locals (written back below)
                plan = cur.plan
                idle = plan.idle
                runs = plan.runs
                nruns = len(runs)
                repeats = plan.repeats
                idle_left = cur.idle_left
                run = cur.run
                rep = cur.rep
                cycle = cur.cycle
                # every block the cursor gives is the same one-entry block (a plain periodic train)
                uniform = nruns == 1 and runs[0][1] == 1 and runs[0][2] == 0 and runs[0][0].entries == 1
            else:
                uniform = False
            while i < limit:
                if b is None or entry >= n:
                    if uniform and idle_left == 0 and not cur.lead_pending:  # type: ignore[union-attr]
                        # the rest of the run in one go: the same entry, one pulse group each
                        m = limit - i
                        if repeats and m > repeats - cycle:
                            m = repeats - cycle
                        if m > 0:
                            b = runs[0][0]
                            if b is not prev:
                                prev = b
                                a0 = addr_of(b)
                                n = b.entries
                                pz = b.pulses
                            for _ in range(m):
                                vals.append(a0)
                                total += pz
                                cums.append(total)
                            cycle += m
                            entry = 1
                            i += m
                            continue
                    entry = 0
                    if cur is None:
                        b = None
                    elif idle_left > 0:
                        idle_left -= 1
                        b = idle
                    elif cur.lead_pending:  # once per plan: the Cursor itself
                        cur.idle_left = idle_left
                        cur.run = run
                        cur.rep = rep
                        cur.cycle = cycle
                        b = cur.next_block()
                        idle_left = cur.idle_left
                        run = cur.run
                        rep = cur.rep
                        cycle = cur.cycle
                    elif repeats and cycle >= repeats:
                        b = None
                    else:
                        b, nrep, k = runs[run]
                        rep += 1
                        if rep >= nrep:
                            rep = 0
                            run += 1
                            if run >= nruns:
                                run = 0
                                cycle += 1
                        idle_left = k
                    if b is None:
                        self.finished = True
                        break
                    if b is not prev:
                        prev = b
                        a0 = addr_of(b)
                        n = b.entries
                        pz = b.pulses
                vals.append(a0 + step * entry)
                entry += 1
                if entry == n:
                    total += pz
                cums.append(total)
                i += 1
            self.block = b
            self.entry = entry
            if cur is not None:
                cur.idle_left = idle_left
                cur.run = run
                cur.rep = rep
                cur.cycle = cycle
        new_head = start + len(vals)
        ring = self.ring
        base = self.base
        rl = self.ring_len
        cum = self.cum
        ring[base + new_head % rl] = 0
        cum[new_head % rl] = total
        for k in range(len(vals) - 1, -1, -1):
            s = (start + k) % rl
            cum[s] = cums[k]
            ring[base + s] = vals[k]
        self.pulses_total = total
        self.head = new_head
        return new_head

    def _write_seq_run(self, start, limit):
        """_write_run for a SequencePlan (its cursor's run(): each pool entry written before its ring
        slot), the run's first slot stored last (it commits the run)."""
        total = self.pulses_total
        n = 0
        first = 0
        ring = self.ring
        base = self.base
        rl = self.ring_len
        if start < limit and not self.finished:
            cur = self.cursor
            n, total, first, fin = cur.run(start, limit, ring, base, rl, self.cum, total,  # type: ignore[union-attr,operator]
                                           self.addr_of, 4 * self.p)
            if fin:
                self.finished = True
        new_head = start + n
        ring[base + new_head % rl] = 0
        self.cum[new_head % rl] = total
        if n:
            ring[base + start % rl] = first
        self.pulses_total = total
        self.head = new_head
        return new_head

    # -- API
    def load(self, plan):
        """Fresh stream (DMA stopped): fill the ring from slot 0. Returns the number of entries."""
        self.p = plan.p
        self.cursor = plan.cursor()
        self.jit = plan.jit
        self.max_ahead = plan.max_ahead
        self.block = None
        self.entry = 0
        self.finished = False
        self.pulses_total = 0
        self.head = 0
        self.max_tail_ticks = plan.tail_ticks
        limit = self.ring_len - self.margin
        if plan.max_ahead < limit:
            limit = plan.max_ahead
        head = self._write_run(0, limit)  # slots 0..head (the 0 at head)
        ring = self.ring
        base = self.base
        cum = self.cum
        for s in range(head + 1, self.ring_len):  # every other slot 0 (the DMA is stopped)
            ring[base + s] = 0
            cum[s] = 0
        return head

    def fill(self, consumed):
        """Top up: ``consumed`` = absolute index of the next entry the DMA will read."""
        if self.finished:
            return self.head
        limit = consumed + self.ring_len - self.margin
        ahead = consumed + self.max_ahead  # a SequencePlan's pool entries: never one the DMA may read
        if ahead < limit:
            limit = ahead
        if limit <= self.head:
            return self.head
        return self._write_run(self.head, limit)

    def stop(self, consumed=0):
        """Every slot 0, starting with the one the control channel reads next (absolute index
        ``consumed``), so the chain ends at the next group boundary even while this loop is still
        running: the entry already handed to the data channel completes, nothing follows."""
        for s in range(self.ring_len):
            self.ring[self.base + (consumed + s) % self.ring_len] = 0
        self.finished = True

    def prepare_replace(self, plan, n=REPLACE_RUN):
        """First half of a replace (CPU work, no ring write): take the first ``n`` entries of ``plan``
        (its cycle; no delay) into ``staged``; fill() continues after them once committed."""
        if plan.p != self.p:
            raise ValueError("replace needs the stream's words per entry (%d)" % self.p)
        limit = self.ring_len - self.margin - 1
        if n > limit:
            n = limit
        if n > plan.max_ahead:
            n = plan.max_ahead
        self.cursor = plan.cursor()
        self.jit = plan.jit
        self.max_ahead = plan.max_ahead
        self.block = None
        self.entry = 0
        self.finished = False
        if plan.tail_ticks > self.max_tail_ticks:
            self.max_tail_ticks = plan.tail_ticks
        vals = []  # type: list
        dones = []  # type: list
        while len(vals) < n:
            e = self._next_entry()
            if e is None:
                self.finished = True
                break
            vals.append(e[0])
            dones.append(e[1])
        self.staged = (vals, dones)

    def commit_replace(self, start, probe=None, tries=3):
        """Second half (the HAL runs it with interrupts off): the staged entries from absolute index
        ``start`` on, then a 0. Returns the switch point: the absolute index of the first new entry.

        ``start`` is the entry after the one the control channel reads next (that one may be read at
        any moment, so it stays old), or the head (the 0) when no old entry is queued. Slots are
        written FRONT TO BACK, slot ``start`` first: the DMA reads slots in order, one per entry, and
        an entry lasts much longer than one store, so once slot ``start`` holds the new entry the DMA
        stays behind the writer (it never reads an old entry after a new one, nor a stale slot past
        the old 0). ``probe()`` (the HAL: the control channel's READ_ADDR as an absolute index) is
        read right after the first store: if it is already past ``start``, the DMA may have read
        that slot before the store, so the run is written again from the entry after the one it
        reads next (at most ``tries`` times; ``races`` counts them). The switch point is thus the
        one the hardware reports, not an earlier estimate."""
        staged = self.staged
        if staged is None:
            raise ValueError("commit_replace without prepare_replace")
        vals, dones = staged
        self.staged = None
        rl = self.ring_len
        for _ in range(tries):
            if not vals:
                break
            self._put(start, vals[0])
            if probe is None:
                break
            c = probe()
            if c <= start:
                break
            self.races += 1
            start = c + 1 if c < self.head else c
        total = self.cum[(start - 1) % rl] if start > 0 else 0
        for k in range(len(vals)):
            total += dones[k]
            self.cum[(start + k) % rl] = total
            if k:
                self._put(start + k, vals[k])
        new_head = start + len(vals)
        self.cum[new_head % rl] = total
        self._put(new_head, 0)
        self.pulses_total = total
        self.head = new_head
        return start

    def replace(self, plan, start, probe=None):
        """From absolute entry ``start`` on, play ``plan`` (its cycle; no delay): prepare_replace then
        commit_replace. Returns the switch point."""
        self.prepare_replace(plan)
        return self.commit_replace(start, probe)

    def unwrap(self, last_abs, slot):
        """Absolute index from a ring slot, given a previous absolute index <= it (DMA never passes
        the 0 at head, so it is at most ring_len ahead)."""
        return last_abs + (slot - last_abs) % self.ring_len

    def pulses_after(self, entries_played):
        """Pulses completed when the first ``entries_played`` entries have fully played."""
        if entries_played <= 0:
            return 0
        return self.cum[(entries_played - 1) % self.ring_len]


def entries_played(consumed_nonnull, p, data_remaining, fifo_level):
    """Entries whose every word the SM has pulled: words the DMA moved minus words still in the FIFO,
    in whole entries (the last word of a group is idle, so a pulled group is a completed pulse)."""
    words = consumed_nonnull * p - data_remaining - fifo_level
    if words < 0:
        return 0
    return words // p


def ticks_to_us_ceil(ticks):
    return (ticks * 1_000_000 + board.SYS_CLK_HZ - 1) // board.SYS_CLK_HZ


def reset_reason_code(cause, pwron, wdt, soft):
    """machine.reset_cause() -> contract code: 0 power-on (also RUN pin / unknown), 1 watchdog,
    2 soft."""
    if cause == wdt:
        return 1
    if cause == soft:
        return 2
    return 0


# ---- DAC bus: op-word bookkeeping for the HAL (pure; firmware/pio/dac.pio, firmware/dac_bus.py) ------
# Program addresses by role: the write routine (select, 16 bits, release), and per `gpN` routine its two
# WAIT instructions (the wait is still open there) and the `jmp next` after them (the wait is done).
_GP_ENTRIES = [e for n, e in pio.DAC_ENTRIES.items() if n.startswith("gp")]
DAC_WAIT_OPS = set(_GP_ENTRIES)  # a wait op word is exactly its routine's address
_DAC_WAITING_PCS = set([e for e in _GP_ENTRIES] + [e + 1 for e in _GP_ENTRIES])
_DAC_WAIT_DONE_PCS = set([e + 2 for e in _GP_ENTRIES if e + 2 < 32])
_DAC_WRITE_PCS = set(range(pio.DAC_WRITE_ENTRY, min(_GP_ENTRIES)))
_DAC_PULL_PC = pio.DAC_NEXT_ENTRY  # `pull block` (stalls here when idle)
_DAC_OUTPC_PC = pio.DAC_NEXT_ENTRY + 1  # `out pc, 5`: a word pulled, its routine not entered yet
DAC_MARK = pio.DAC_MARK_ENTRY


def dac_is_wait(word):
    return word in DAC_WAIT_OPS


def dac_is_write(word):
    return word & 0x1F == pio.DAC_WRITE_ENTRY and word >> 5 != 0


def dac_wait_pin(word):
    """GPIO a wait op waits on (its routine's name gpN)."""
    for n, e in pio.DAC_ENTRIES.items():
        if e == word and n.startswith("gp"):
            return int(n[2:])
    return -1


def dac_batch_len(ops, start, limit):
    """How many words of ``ops[start:]`` one DMA batch takes (at most ``limit``): everything if it fits,
    else up to the last wait op inside the limit, so a batch never ends between a wait op and the
    writes that must follow it (those go out in the same idle, paced by the FIFO, not by the CPU)."""
    n = len(ops) - start
    if n <= limit:
        return n
    for k in range(limit - 1, 0, -1):
        if ops[start + k] in DAC_WAIT_OPS:
            return k
    return limit  # no wait op at all in the window: only unbound writes/marks, any cut is safe


def _bound_write_next(prev, nxt):
    """True when ``nxt`` is a write that must follow ``prev`` (a wait or a write of the same group)
    without a pause: interrupting there could push the write into the next pulse."""
    return nxt is not None and dac_is_write(nxt) and prev is not None and (dac_is_write(prev) or prev in DAC_WAIT_OPS)


def dac_resume_ops(pc, batch, pulled, rest, prev_last=None):
    """The op words still to play after the DAC state machine was disabled at program address ``pc``
    having pulled ``pulled`` words of ``batch`` (the words handed to the DMA that may not all have been
    pulled: the HAL passes the batch after the last TX-FIFO-depth words of the batches before it;
    ``rest``: words not handed to the DMA yet; ``prev_last``: the word before ``batch[0]``, when known).
    None when ``pc`` is not a safe point, i.e.
    inside a write, or between a completed wait op (or write) and a write bound to it: the caller
    lets the SM run on and tries again. An open wait op is played again from its start (it waits
    for the NEXT end of that phase, so its writes still land between two pulses)."""
    n = len(batch)
    if pulled < 0 or pulled > n:
        return None
    follow = list(batch[pulled:]) + list(rest)
    nxt = follow[0] if follow else None
    cur = batch[pulled - 1] if pulled >= 1 else prev_last
    prev = batch[pulled - 2] if pulled >= 2 else (prev_last if pulled == 1 else None)
    if pc in _DAC_WRITE_PCS:
        return None
    if pc in _DAC_WAITING_PCS:
        if cur is None or cur not in DAC_WAIT_OPS:
            return None
        return [cur] + follow
    if pc in _DAC_WAIT_DONE_PCS:
        return None if _bound_write_next(cur, nxt) else follow
    if pc == _DAC_OUTPC_PC:  # `cur` pulled, not entered yet: play it again
        if cur is None or _bound_write_next(prev, cur):
            return None
        return [cur] + follow
    if pc == DAC_MARK:  # the mark's push has not run yet (or the SM never ran: nothing pulled)
        if pulled == 0 and prev_last is None:
            return follow
        if cur != DAC_MARK:
            return None
        return [DAC_MARK] + follow
    if pc == _DAC_PULL_PC:
        return None if _bound_write_next(cur, nxt) else follow
    return None  # any other address is not part of the program's op routines


_WAIT_OP_PIN = dict([(e, int(n[2:])) for n, e in pio.DAC_ENTRIES.items() if n.startswith("gp")])


def dac_drop_channels(ops, pins):
    """``ops`` without the groups (a wait op and the writes after it) that wait on one of ``pins``:
    a stopped channel's phase pins never move again, so its waits would block the bus forever.
    (When no op waits on those pins, a copy: one C-level scan per such wait op, not a Python loop
    over the words; a sequence's DAC top-up is hundreds of words, ~0.4 ms each in that loop on the
    M0+.)"""
    for w, gp in _WAIT_OP_PIN.items():
        if gp in pins and w in ops:
            break
    else:
        return list(ops)
    out = []
    skip = False
    wait_pin = _WAIT_OP_PIN.get
    for w in ops:
        pin = wait_pin(w)
        if pin is not None:
            skip = pin in pins
        elif not dac_is_write(w):
            skip = False  # a mark ends a group
        if not skip:
            out.append(w)
    return out


def dac_ctrl(channel):
    """DMA CTRL for the DAC bus channel: paced by DREQ_PIO1_TX0 + DAC_SM, read increments, write fixed
    (the TX FIFO), no chain (CHAIN_TO = itself)."""
    return dma_ctrl(DREQ_PIO1_TX0 + board.DAC_SM, channel, inc_read=True, inc_write=False)


def dac_pinctrl():
    """PINCTRL of the DAC state machine: OUT_BASE = MOSI, OUT_COUNT 9 (MOSI and the chip selects),
    side-set 1 pin at SCK (no enable bit), no SET pins, IN_BASE unused (its waits are WAIT GPIO)."""
    return (board.DAC_MOSI_PIN | pio.DAC_OUT_COUNT << PINCTRL_OUT_COUNT_SHIFT
            | board.DAC_SCK_PIN << PINCTRL_SIDESET_BASE_SHIFT | pio.DAC_SIDESET_COUNT << PINCTRL_SIDESET_COUNT_SHIFT)
