"""Custom pulse sequences (issue 13 item 4): per-pulse validation, storage of the records, readers.

A sequence is N pulses per channel, each with its own onset and amplitude, played once or looped
(protocol/params.py ``sequence_pulses`` / ``sequence_cycle_ns``). The host uploads it with
SET_SEQUENCE after SET_PARAMS, in chunks of at most ``messages.SEQUENCE_CHUNK`` pulses, in order.

Rules per pulse (the same on the host, :func:`sequence_violation`, and in the firmware,
:class:`SequenceBuilder`; ticks are ``pulse_engine.ns_to_ticks`` of the ABSOLUTE onset, never of a
difference, so every onset of a cycle is exact to the tick; a loop's cycle k starts k x the cycle's
ticks later, which is k x (its rounding, at most half a tick) off the cycle's ns):

* ``onset_ns`` <= limit ``max_duration_ns``;
* the first onset is 0 ticks or at least one PIO segment (``pulse_engine.MIN_SEGMENT_TICKS``, 40 ns):
  the idle before it is one segment word, and a shorter one cannot be played (refused at upload, not
  at START);
* the onset in ticks is at least the previous one + ``period_ns`` in ticks (the parameters' period is
  the smallest interval, so every per-period rule of ``params.validate`` holds for every interval);
* looped: onset ticks <= cycle ticks + first onset ticks - period ticks, i.e. the wrap interval (the
  last pulse to the next cycle's first) is at least the period too;
* ``sequence_amplitude_ua`` in 1..``amplitude_ua`` (the largest amplitude: the charge, Shannon and
  phase-2 checks of the parameters cover every pulse);
* at most ``sequence_pulses`` pulses (a chunk beyond: Violation on ``sequence_pulses``).

Storage: one record ``"<QH"`` = (onset ticks within the cycle, phase-1 DAC code
``pulse_engine.dac_code(amplitude)``) per pulse, 10 bytes, written at its position (a failed write is
overwritten by the retry). On the board in a file per channel (:class:`FileStore`, ``seq<ch>.bin`` on
littlefs: 100 KB a channel at 10,000 pulses, never in the heap); without storage (unit tests, a HAL
without flash) in RAM (:class:`RamStore`), same API. A flash write stalls the CPU (XIP off), so the
controller refuses SET_SEQUENCE to a :class:`FileStore` (``stalls``) while any channel runs.

Reading: :class:`SequenceSource` (the controller sets one as ``train.sequence``) hands out
independent :class:`SequenceReader` cursors that read 32 records at a time into their own buffer
(320 bytes), never the whole file. Onsets beyond 2**30 ticks are heap-allocated ints on the board:
readers run from the main loop (the feeder, the DAC op writer, monitoring), never with IRQs off.
"""

import struct

from firmware import pulse_engine
from protocol import params as P

RECORD = "<QH"  # onset ticks within the cycle, phase-1 DAC code
RECORD_SIZE = 10
READ_RECORDS = 32  # records a reader holds (one positioned read per 32 pulses)


class RamRecords:
    """A channel's records in a bytearray (no flash)."""

    def __init__(self):
        self._buf = bytearray()

    def reset(self):
        """Forget every record (a new upload starts)."""
        self._buf = bytearray()

    def write_at(self, offset, data):
        """Write ``data`` at byte ``offset`` (<= the current size) and drop anything after it."""
        if offset < len(self._buf):
            self._buf = bytearray(self._buf[:offset])
        self._buf.extend(data)

    def finish(self):
        """The upload is complete (nothing to flush in RAM)."""

    def read_into(self, offset, mv):
        """Copy bytes from ``offset`` into the memoryview ``mv``; returns how many."""
        n = len(self._buf) - offset
        if n <= 0:
            return 0
        if n > len(mv):
            n = len(mv)
        mv[:n] = self._buf[offset:offset + n]
        return n

    def close(self):
        """Release the records' resources (nothing in RAM; the data stays until reset)."""

    def release(self):
        """The upload was discarded (new parameters): nothing to do in RAM."""


class FileRecords:
    """A channel's records in one file (littlefs on the board). One write handle while uploading
    (records written at their position), one shared read handle afterwards (each read seeks).
    Anything that may write flash (the directory, opening for writing, closing a write handle: its
    flush) happens only in reset/write_at/finish, i.e. in SET_SEQUENCE, which the controller refuses
    while any channel is armed or running; release() (new parameters, at any time) never writes."""

    def __init__(self, root, path):
        self.root = root
        self.path = path
        self._w = None
        self._r = None

    def release(self):
        """The upload was discarded: drop the read handle. A write handle of an unfinished upload
        stays open (closing it flushes to flash) until the next reset, when every channel is idle."""
        r = self._r
        self._r = None
        if r is not None:
            r.close()

    def close(self):
        for f in (self._w, self._r):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._w = None
        self._r = None

    def reset(self):
        self.close()
        import os

        try:
            os.mkdir(self.root)
        except OSError:
            pass  # exists
        self._w = open(self.path, "wb")

    def write_at(self, offset, data):
        if self._w is None:  # a retry after a failed write closed it: keep what is there
            self._w = open(self.path, "r+b")
        self._w.seek(offset)
        self._w.write(data)

    def finish(self):
        w = self._w
        self._w = None
        if w is not None:
            w.close()

    def read_into(self, offset, mv):
        if self._r is None:
            self._r = open(self.path, "rb")
        self._r.seek(offset)
        n = self._r.readinto(mv)
        return n or 0


class RamStore:
    """Records in RAM per channel (the controller's default without a sequence directory)."""

    stalls = False  # writing does not stall the CPU: only the channel's own state matters

    def __init__(self):
        self._records = {}

    def records(self, ch):
        r = self._records.get(ch)
        if r is None:
            r = self._records[ch] = RamRecords()
        return r


class FileStore:
    """Records in ``<root>/seq<ch>.bin`` (the board: littlefs; the virtual Pico: its flash directory)."""

    stalls = True  # littlefs writes erase/program flash with the CPU stalled: refused while any channel runs

    def __init__(self, root):
        self.root = root.rstrip("/") or "/"  # created by the first upload (a flash write: never at SET_PARAMS)
        self._records = {}

    def records(self, ch):
        r = self._records.get(ch)
        if r is None:
            r = self._records[ch] = FileRecords(self.root, self.root + "/seq%d.bin" % ch)
        return r


def check_pulse(prev_ticks, first_ticks, onset_ns, amplitude_ua, period_ticks, cycle_ticks, max_ns, amp_max):
    """The first rule pulse (onset_ns, amplitude_ua) breaks, as a Violation, or None. ``prev_ticks``:
    the previous pulse's onset ticks (None for pulse 0); ``first_ticks``: pulse 0's (its own for
    pulse 0); ``cycle_ticks``: 0 when played once."""
    if onset_ns > max_ns:
        return P.Violation("onset_ns", onset_ns, max_ns, "<=")
    t = pulse_engine.ns_to_ticks(onset_ns)
    if prev_ticks is None and 0 < t < pulse_engine.MIN_SEGMENT_TICKS:  # the lead idle is one PIO segment
        return P.Violation("onset_ns", onset_ns, pulse_engine.ticks_to_ns(pulse_engine.MIN_SEGMENT_TICKS), ">=")
    if prev_ticks is not None and t - prev_ticks < period_ticks:  # the earliest allowed onset
        return P.Violation("onset_ns", onset_ns, pulse_engine.ticks_to_ns(prev_ticks + period_ticks), ">=")
    if cycle_ticks and t > cycle_ticks + first_ticks - period_ticks:  # the wrap interval >= the period
        return P.Violation("onset_ns", onset_ns, pulse_engine.ticks_to_ns(cycle_ticks + first_ticks - period_ticks),
                           "<=")
    if amplitude_ua < 1:
        return P.Violation("sequence_amplitude_ua", amplitude_ua, 1, ">=")
    if amplitude_ua > amp_max:
        return P.Violation("sequence_amplitude_ua", amplitude_ua, amp_max, "<=")
    return None


class SequenceBuilder:
    """One channel's upload: validates each chunk against the channel's parameters (nothing changes
    when it is refused) and writes its records."""

    def __init__(self, params, limits, records):
        self.pulses = params["sequence_pulses"]
        self.period_ticks = pulse_engine.ns_to_ticks(params["period_ns"])
        self.cycle_ticks = pulse_engine.ns_to_ticks(params["sequence_cycle_ns"])
        self.cycle_ns = params["sequence_cycle_ns"]
        self.duration_ns = params["train_duration_ns"]
        self.max_ns = limits["max_duration_ns"]
        self.amp_max = params["amplitude_ua"]
        self.records = records
        self.received = 0
        self.first_ticks = 0
        self.last_ticks = 0
        self.code_min = 0  # smallest and largest phase-1 DAC code received (equal: constant amplitude)
        self.code_max = 0

    @property
    def complete(self):
        return self.received == self.pulses

    def check(self, first, onsets_ns, amplitudes_ua):
        """Violation of the chunk that starts at pulse ``first`` (0 or ``received``: the caller
        refuses any other first), or None. Changes nothing."""
        if first + len(onsets_ns) > self.pulses:
            return P.Violation("sequence_pulses", first + len(onsets_ns), self.pulses, "<=")
        prev = self.last_ticks if first else None
        first_t = self.first_ticks
        for i in range(len(onsets_ns)):
            onset = onsets_ns[i]
            if prev is None:
                first_t = pulse_engine.ns_to_ticks(onset) if onset <= self.max_ns else 0
            v = check_pulse(prev, first_t, onset, amplitudes_ua[i], self.period_ticks, self.cycle_ticks,
                            self.max_ns, self.amp_max)
            if v is not None:
                return v
            prev = pulse_engine.ns_to_ticks(onset)
        return None

    def add(self, first, onsets_ns, amplitudes_ua):
        """Store a chunk :meth:`check` passed. Raises OSError when the storage fails (the pulses
        received stay as they were; a retry of the chunk overwrites what was written). ValueError for a
        chunk out of order (the controller refuses those first: E_BAD_STATE)."""
        if first and first != self.received:
            raise ValueError("chunk at pulse %d, %d received" % (first, self.received))
        if first == 0:
            self.records.reset()
            self.received = 0
        k = len(onsets_ns)
        data = bytearray(k * RECORD_SIZE)
        last = self.last_ticks
        first_t = self.first_ticks
        lo, hi = (self.code_min, self.code_max) if first else (0, 0)
        for i in range(k):
            t = pulse_engine.ns_to_ticks(onsets_ns[i])
            code = pulse_engine.dac_code(amplitudes_ua[i])
            if first + i == 0:
                first_t = t
                lo = hi = code
            elif code < lo:
                lo = code
            elif code > hi:
                hi = code
            struct.pack_into(RECORD, data, i * RECORD_SIZE, t, code)
            last = t
        self.records.write_at(first * RECORD_SIZE, data)
        self.received = first + k
        self.first_ticks = first_t
        self.last_ticks = last
        self.code_min = lo
        self.code_max = hi
        if self.complete:
            self.records.finish()

    def repeats(self):
        """Cycles to play: 1 when played once; looped, ceil(duration / cycle) in the requested ns (as
        pulse_engine.build_train counts a train's cycles: ticks would round 3 cycles of 2000003 ns
        up to 4), or 0 (until stopped)."""
        if not self.cycle_ticks:
            return 1
        d = self.duration_ns
        return (d + self.cycle_ns - 1) // self.cycle_ns if d else 0

    def source(self):
        """The SequenceSource of a complete upload."""
        return SequenceSource(self.records, self.pulses, self.cycle_ticks, self.repeats(), self.code_min != self.code_max)

    def discard(self):
        """The parameters changed: the records no longer count (a new upload starts at pulse 0)."""
        self.received = 0
        self.records.release()


class SequenceSource:
    """What the HAL's stream, the DAC op writer and the monitor read a sequence from
    (``train.sequence``): ``pulses`` per cycle, ``cycle_ticks`` (0 = played once), ``repeats``
    (cycles when looping, 0 = until stopped; 1 when played once), ``varies`` (some pulse's phase-1
    code differs from another's; None: unknown)."""

    def __init__(self, records, pulses, cycle_ticks, repeats, varies=None):
        self.records = records
        self.pulses = pulses
        self.cycle_ticks = cycle_ticks
        self.repeats = repeats
        self.varies = varies

    def reader(self):
        """A fresh, independent cursor at pulse 0."""
        return SequenceReader(self)

    def total(self):
        """Pulses played in all, or None when looping until stopped."""
        if self.cycle_ticks and not self.repeats:
            return None
        return self.pulses * self.repeats


class SequenceReader:
    """A cursor over the pulses in play order: :meth:`next` gives (onset ticks from the start's time
    origin, phase-1 DAC code), cycle k's onsets shifted by k * cycle_ticks, then None at the end."""

    def __init__(self, source):
        self._src = source
        self._buf = bytearray(READ_RECORDS * RECORD_SIZE)
        self._mv = memoryview(self._buf)
        self._n = 0  # records in the buffer
        self._i = 0  # next record in the buffer
        self._at = 0  # index in the cycle of the buffer's first record
        self._j = 0  # index in the cycle of the next pulse
        self._cycle = 0
        self._base = 0  # cycle * cycle_ticks
        self._done = source.pulses <= 0

    def _fill(self):
        n = self._src.pulses - self._j
        if n > READ_RECORDS:
            n = READ_RECORDS
        got = self._src.records.read_into(self._j * RECORD_SIZE, self._mv[:n * RECORD_SIZE]) // RECORD_SIZE
        self._at = self._j
        self._n = got
        self._i = 0
        return got

    def next(self):
        if self._done:
            return None
        if self._i >= self._n and self._fill() == 0:  # the records end early (storage failed): end here
            self._done = True
            return None
        onset, code = struct.unpack_from(RECORD, self._buf, self._i * RECORD_SIZE)
        onset += self._base
        self._i += 1
        self._j += 1
        src = self._src
        if self._j >= src.pulses:
            self._next_cycle()
        return onset, code

    def _next_cycle(self):
        src = self._src
        self._j = 0
        self._cycle += 1
        if not src.cycle_ticks or (src.repeats and self._cycle >= src.repeats):
            self._done = True
            return
        self._base += src.cycle_ticks
        if self._at == 0 and self._n == src.pulses:
            self._i = 0  # the whole cycle is in the buffer: no read per cycle
        else:
            self._n = self._i = 0

    def seek(self, k):
        """Position at pulse ``k`` (0-based, in play order since the start): the next :meth:`next`
        returns it (None if the sequence has ended before it)."""
        src = self._src
        cycle, j = divmod(k, src.pulses)
        self._cycle = cycle
        self._j = j
        self._base = cycle * src.cycle_ticks
        self._done = cycle > 0 and (not src.cycle_ticks or (src.repeats and cycle >= src.repeats))
        if self._at <= j < self._at + self._n:
            self._i = j - self._at
        else:
            self._n = self._i = 0

    def close(self):
        self._done = True
        self._n = self._i = 0


def sequence_violation(params, limits, onsets_ns, amplitudes_ua):
    """The host's check of a whole sequence before it is sent (same rules and names as the firmware's
    per-chunk check): the parameters (``params.validate``), sequence mode, as many amplitudes as
    onsets, exactly ``sequence_pulses`` of them, then every pulse. None when the device will accept it."""
    v = P.validate(params, limits)
    if v is not None:
        return v
    n = params["sequence_pulses"]
    if n < 1:
        return P.Violation("sequence_pulses", n, 1, ">=")
    if len(amplitudes_ua) != len(onsets_ns):
        return P.Violation("sequence_amplitude_ua", len(amplitudes_ua), len(onsets_ns), "<=" if
                           len(amplitudes_ua) > len(onsets_ns) else ">=")
    if len(onsets_ns) != n:
        return P.Violation("sequence_pulses", len(onsets_ns), n, "<=" if len(onsets_ns) > n else ">=")
    for i in range(n):
        a = onsets_ns[i]
        if not isinstance(a, int) or isinstance(a, bool) or a < 0:
            return P.Violation("onset_ns", a, 0, "integer")
        a = amplitudes_ua[i]
        if not isinstance(a, int) or isinstance(a, bool) or a < 0:
            return P.Violation("sequence_amplitude_ua", a, 0, "integer")
    return SequenceBuilder(params, limits, None).check(0, onsets_ns, amplitudes_ua)
