"""Custom sequences (issue 13 item 4), protocol side: the SET_SEQUENCE codecs, the version-8 name
tables, the sequence-mode parameter rules (protocol/params.py) and the per-pulse rules, records and
readers of firmware/sequence.py. Every rule is restated here independently (in ticks of the ABSOLUTE
onsets) and compared with the code; a refused chunk changes nothing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import pulse_engine as E
from firmware import sequence as S
from firmware.limits import LIMITS
from protocol import framing
from protocol import messages as M
from protocol import params as P

MS = 1_000_000
TICK_NS = 1_000_000_000 // 125_000_000  # 8 ns at the board's 125 MHz
LIM = LIMITS["min_sequence_interval_ns"]  # the shortest interval a sequence may have (2 ms)
SEG_NS = E.ticks_to_ns(E.MIN_SEGMENT_TICKS)  # one PIO segment: the shortest non-zero first onset (40 ns)


def seq_params(n=3, period=LIM, amp=2000, cycle=0, **kw):
    return P.complete(dict({"sequence_pulses": n, "period_ns": period, "amplitude_ua": amp,
                            "sequence_cycle_ns": cycle}, **kw))


# ---------------------------------------------------------------------------------------- wire
def test_version_8_and_the_new_names():
    assert framing.PROTOCOL_VERSION == 8
    assert M.SET_SEQUENCE == 0x10 and M.REQUEST_NAMES[M.SET_SEQUENCE] == "set_sequence"
    assert M.E_SEQUENCE_INCOMPLETE == 14 and M.E_SEQUENCE_INCOMPLETE in M.ERROR_NAMES
    assert P.FIELD_NAMES[-2:] == ("sequence_pulses", "sequence_cycle_ns")  # appended, never reordered
    assert P.FIELD_NAMES[:3] == ("phase1_ns", "interphase_ns", "phase2_ns")
    assert P.FORMAT.endswith("IQ") and P.DEFAULTS["sequence_pulses"] == 0 and P.DEFAULTS["sequence_cycle_ns"] == 0
    assert P.LIMIT_NAMES[-2:] == ("max_sequence_pulses", "min_sequence_interval_ns")
    assert LIMITS["max_sequence_pulses"] == 10000 and LIMITS["min_sequence_interval_ns"] == 2 * MS
    for name in ("onset_ns", "sequence_amplitude_ua"):
        assert name in P.OTHER_NAMES and P.field_name(P.field_id(name)) == name


def test_hello_carries_the_sequence_limits():
    body = M.encode_hello((0, 1, 0), 4, b"12345678", 0, LIMITS)
    d = M.decode_hello(body)
    assert d["protocol_version"] == 8
    assert d["limits"]["max_sequence_pulses"] == 10000 and d["limits"]["min_sequence_interval_ns"] == 2 * MS
    assert len(body) <= framing.MAX_BODY


def test_a_full_chunk_fits_a_frame():
    body = M.encode_set_sequence(3, 0xFFFF, [2**64 - 1] * M.SEQUENCE_CHUNK, [2**32 - 1] * M.SEQUENCE_CHUNK)
    assert len(body) == 3 + 12 * 20 == 243 <= framing.MAX_BODY
    framing.encode_frame(M.SET_SEQUENCE, 1, body)  # does not raise
    with pytest.raises(ValueError):
        M.encode_set_sequence(0, 0, [0] * 21, [1] * 21)
    with pytest.raises(ValueError):
        M.encode_set_sequence(0, 0, [], [])
    with pytest.raises(ValueError):
        M.encode_set_sequence(0, 0, [0, 1], [1])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.integers(0, 0xFFFF),
       st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=20))
def test_set_sequence_round_trip(channel, first, pulses):
    onsets = [p[0] for p in pulses]
    amps = [p[1] for p in pulses]
    body = M.encode_set_sequence(channel, first, onsets, amps)
    assert len(body) == 3 + 12 * len(pulses)
    # the layout, independently: channel u8 | first u16 LE | (onset u64 LE, amplitude u32 LE) ...
    assert body[0] == channel and body[1] | body[2] << 8 == first
    for i, (o, a) in enumerate(pulses):
        assert int.from_bytes(body[3 + 12 * i:11 + 12 * i], "little") == o
        assert int.from_bytes(body[11 + 12 * i:15 + 12 * i], "little") == a
    assert M.decode_set_sequence(body) == (channel, first, onsets, amps)


def test_every_other_length_is_refused_by_the_decoder():
    good = {3 + 12 * k for k in range(1, 21)}
    for n in range(0, 300):
        got = M.decode_set_sequence(bytes(n))
        assert (got is not None) == (n in good), n
        assert M.sequence_body_ok(n) == (n in good)


@given(st.integers(0, 255), st.integers(0, 0xFFFF), st.booleans())
def test_sequence_response_round_trip(channel, received, complete):
    body = M.encode_sequence_response(channel, received, complete)
    assert body == struct.pack("<BHB", channel, received, int(complete))
    assert M.decode_sequence_response(body) == {"channel": channel, "received": received, "complete": int(complete)}


# ------------------------------------------------------------------------- parameter rules
def test_a_sequence_parameter_set_validates():
    assert P.validate(seq_params(), LIMITS) is None
    assert P.validate(seq_params(cycle=10 * MS, train_duration_ns=1000 * MS), LIMITS) is None
    assert P.is_sequence(seq_params()) and not P.is_sequence(P.complete({}))


@pytest.mark.parametrize("name", P.SEQUENCE_ZERO_FIELDS)
def test_fields_a_sequence_replaces_must_be_zero(name):
    value = 1 if name.endswith("_pulses") else 100 * MS
    p = seq_params(**{name: value})
    v = P.validate(p, LIMITS)
    assert (v.field, v.value, v.limit, v.relation) == (name, value, 0, "<=")
    # the same field is fine in a regular train
    assert P.validate(dict(p, sequence_pulses=0), LIMITS) is None or P.validate(dict(p, sequence_pulses=0), LIMITS).field != name


@pytest.mark.parametrize("trigger", [3, 4])
def test_gated_triggers_are_refused(trigger):
    v = P.validate(seq_params(trigger=trigger), LIMITS)
    assert (v.field, v.value, v.limit, v.relation) == ("trigger", trigger, 2, "<=")
    for ok in (0, 1, 2):
        assert P.validate(seq_params(trigger=ok), LIMITS) is None


def test_interval_limit_and_counts():
    lim = LIMITS["min_sequence_interval_ns"]
    v = P.validate(seq_params(period=lim - 1), LIMITS)
    assert (v.field, v.value, v.limit, v.relation) == ("period_ns", lim - 1, lim, ">=")
    assert P.validate(seq_params(period=lim), LIMITS) is None
    v = P.validate(seq_params(n=10001), LIMITS)
    assert (v.field, v.value, v.limit, v.relation) == ("sequence_pulses", 10001, 10000, "<=")
    assert P.validate(seq_params(n=10000), LIMITS) is None
    big = LIMITS["max_duration_ns"]
    v = P.validate(seq_params(cycle=big + 1), LIMITS)
    assert (v.field, v.value, v.limit, v.relation) == ("sequence_cycle_ns", big + 1, big, "<=")


def test_cycle_rules():
    v = P.validate(P.complete({"sequence_cycle_ns": 5 * MS}), LIMITS)  # a cycle without a sequence
    assert (v.field, v.value, v.limit, v.relation) == ("sequence_cycle_ns", 5 * MS, 0, "<=")
    v = P.validate(seq_params(period=LIM, cycle=LIM - 1), LIMITS)
    assert (v.field, v.value, v.limit, v.relation) == ("sequence_cycle_ns", LIM - 1, LIM, ">=")
    assert P.validate(seq_params(period=LIM, cycle=LIM), LIMITS) is None
    v = P.validate(seq_params(train_duration_ns=50 * MS), LIMITS)  # played once: no duration
    assert (v.field, v.value, v.limit, v.relation) == ("train_duration_ns", 50 * MS, 0, "<=")


def test_every_interval_leaves_the_dac_update_idle():
    base = seq_params(period=LIM, phase1_ns=100_000, phase2_ns=100_000, recovery_ns=LIM - 200_000 - 3_000)
    length = P.pulse_length_ns(base, LIMITS["min_dead_time_ns"])
    need = length + LIMITS["min_update_idle_ns"]
    assert LIM - LIMITS["min_update_idle_ns"] < length < LIM  # the pulse fits the limit's period, its update does not
    v = P.validate(base, LIMITS)
    assert (v.field, v.value, v.limit, v.relation) == ("period_ns", LIM, need, ">=")
    assert P.validate(dict(base, period_ns=need), LIMITS) is None
    assert P.validate(dict(base, sequence_pulses=0), LIMITS) is None  # a regular train never changes amplitude


# ------------------------------------------------------------------------ per-pulse rules
def ticks(ns):
    return (ns * 125_000_000 + 500_000_000) // 1_000_000_000  # nearest tick, halves up


def restated(params, onsets, amps, limits=LIMITS):
    """Independent restatement: None if the sequence is acceptable, else the index of the first bad
    pulse (or -1 for a count mismatch)."""
    n = params["sequence_pulses"]
    if len(onsets) != n or len(amps) != n:
        return -1
    per = ticks(params["period_ns"])
    cyc = ticks(params["sequence_cycle_ns"])
    for i, (o, a) in enumerate(zip(onsets, amps)):
        if o > limits["max_duration_ns"] or not 1 <= a <= params["amplitude_ua"]:
            return i
        if not i and 0 < ticks(o) < 5:  # the first onset: 0 or at least one 5-tick PIO segment
            return i
        if i and ticks(o) - ticks(onsets[i - 1]) < per:
            return i
        if cyc and cyc - ticks(o) + ticks(onsets[0]) < per:  # the wrap after this pulse
            return i
    return None


@st.composite
def sequences(draw):
    n = draw(st.integers(1, 60))
    period = draw(st.sampled_from([LIM, LIM + 4, LIM * 3 // 2, 2 * LIM]))
    gaps = draw(st.lists(st.one_of(st.integers(period - 12, period + 12), st.integers(period, 5 * period),
                                   st.just(period - 4), st.just(period + 3)), min_size=n - 1, max_size=n - 1))
    start = draw(st.one_of(st.just(0), st.integers(0, 10 * MS), st.just(2**31 * TICK_NS),  # beyond 2**30 ticks
                           st.integers(0, 2 * SEG_NS)))  # around the shortest first onset
    onsets = [start]
    for g in gaps:
        onsets.append(onsets[-1] + g)
    amp = draw(st.integers(1, 3000))
    amps = draw(st.lists(st.one_of(st.integers(1, amp), st.just(amp), st.just(amp + 1), st.just(0)),
                         min_size=n, max_size=n))
    loop = draw(st.booleans())
    cycle = 0
    if loop:
        span = onsets[-1] - onsets[0]
        cycle = draw(st.one_of(st.integers(span + period - 12, span + period + 12), st.integers(span, span + 5 * period)))
        cycle = max(cycle, period)
    p = seq_params(n=n, period=period, amp=amp, cycle=cycle,
                   train_duration_ns=draw(st.sampled_from([0, 3 * cycle])) if cycle else 0)
    return p, onsets, amps


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequences())
def test_sequence_violation_agrees_with_an_independent_restatement(case):
    p, onsets, amps = case
    assert P.validate(p, LIMITS) is None
    v = S.sequence_violation(p, LIMITS, onsets, amps)
    bad = restated(p, onsets, amps)
    if bad is None:
        assert v is None
    else:
        assert v is not None and v.field in ("onset_ns", "sequence_amplitude_ua")
        i = bad
        assert v.value in (onsets[i], amps[i])
        # the value is on the wrong side of the reported limit
        assert (v.value > v.limit) if v.relation == "<=" else (v.value < v.limit)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequences(), st.integers(1, 20), st.booleans())
def test_chunked_upload_stores_exact_ticks_and_codes_and_a_refusal_changes_nothing(case, k, on_file):
    p, onsets, amps = case
    records = S.RamRecords()
    b = S.SequenceBuilder(p, LIMITS, records)
    n = len(onsets)
    refused = None
    for first in range(0, n, k):
        state = (b.received, b.first_ticks, b.last_ticks, b.code_min, b.code_max, bytes(records._buf))
        v = b.check(first, onsets[first:first + k], amps[first:first + k])
        assert (b.received, b.first_ticks, b.last_ticks, b.code_min, b.code_max, bytes(records._buf)) == state
        if v is not None:
            refused = v
            break
        b.add(first, onsets[first:first + k], amps[first:first + k])
        assert b.received == min(first + k, n)
    assert (refused is None) == (restated(p, onsets, amps) is None)
    if refused is not None:
        return
    assert b.complete
    # one more pulse is refused naming sequence_pulses, and changes nothing
    v = b.check(n, [onsets[-1] + 10 * MS], [1])
    assert (v.field, v.value, v.limit, v.relation) == ("sequence_pulses", n + 1, n, "<=")
    src = b.source()
    cycles = src.repeats if p["sequence_cycle_ns"] else 1
    cycles = cycles or 3  # until stopped: check three cycles
    r = src.reader()
    cyc = ticks(p["sequence_cycle_ns"])
    for c in range(cycles):
        for o, a in zip(onsets, amps):
            assert r.next() == (ticks(o) + c * cyc, E.dac_code(a))
    if src.repeats:
        assert r.next() is None and r.next() is None
    assert b.code_min == min(E.dac_code(a) for a in amps) and b.code_max == max(E.dac_code(a) for a in amps)


def test_the_earliest_allowed_onset_is_the_limit_and_a_tick_decides():
    p = seq_params(n=2, period=LIM)
    # the limit after 0 is allowed; 4 ns less rounds to the same tick (halves up), 5 ns less does not
    assert S.sequence_violation(p, LIMITS, [0, LIM], [1, 2000]) is None
    assert S.sequence_violation(p, LIMITS, [0, LIM - 4], [1, 2000]) is None
    v = S.sequence_violation(p, LIMITS, [0, LIM - 5], [1, 2000])
    assert (v.field, v.value, v.limit, v.relation) == ("onset_ns", LIM - 5, LIM, ">=")
    # the interval is measured between the ticks of the absolute onsets, not rounded on its own
    assert S.sequence_violation(p, LIMITS, [3, LIM + 3], [1, 1]) is None  # ticks 0 and LIM / 8
    t0 = 5 * LIM  # ticks 5 * LIM / 8 + 1 (4 ns rounds up) and 6 * LIM / 8: one tick short
    v = S.sequence_violation(p, LIMITS, [t0 + 4, t0 + LIM - 1], [1, 1])
    assert (v.field, v.value, v.limit, v.relation) == ("onset_ns", t0 + LIM - 1, t0 + LIM + TICK_NS, ">=")


def test_a_first_onset_shorter_than_one_pio_segment_is_refused():
    """The idle before the first pulse is one PIO segment word (5 ticks at least): a first onset of
    1..4 ticks cannot be played (the stream refused it at START, the crash path) and is refused at
    upload; 0 (at once) and one segment are played."""
    assert SEG_NS == 40 and E.MIN_SEGMENT_TICKS == 5
    p = seq_params(n=2, period=LIM)
    for first in (0, 3, SEG_NS - 4, SEG_NS, SEG_NS + 1, 100):  # ticks 0, 0, 5, 5, 5, 13 (36 ns rounds up)
        assert S.sequence_violation(p, LIMITS, [first, first + LIM], [1, 2]) is None, first
    for first in (4, 8, 16, 32, SEG_NS - 5):  # ticks 1, 1, 2, 4, 4
        v = S.sequence_violation(p, LIMITS, [first, first + LIM], [1, 2])
        assert (v.field, v.value, v.limit, v.relation) == ("onset_ns", first, SEG_NS, ">="), first
    # only the first pulse: a later pulse's lead is the previous pulse's idle (>= the period)
    b = S.SequenceBuilder(p, LIMITS, S.RamRecords())
    assert b.check(0, [8], [1]).field == "onset_ns"
    b.add(0, [0], [1])
    assert b.check(1, [LIM], [1]) is None
    # looped: the next cycle's first pulse follows the wrap interval, only the start counts
    pl = seq_params(n=2, period=LIM, cycle=3 * LIM)
    v = S.sequence_violation(pl, LIMITS, [8, LIM + 8], [1, 2])
    assert (v.field, v.value, v.limit) == ("onset_ns", 8, SEG_NS)
    assert S.sequence_violation(pl, LIMITS, [SEG_NS, LIM + SEG_NS], [1, 2]) is None


def test_loop_wrap_amplitude_count_and_duration_refusals():
    p = seq_params(n=2, period=LIM, cycle=5 * LIM)
    last = 4 * LIM + MS
    assert S.sequence_violation(p, LIMITS, [MS, last], [5, 6]) is None  # wrap 5 LIM - last + 1 ms = LIM
    v = S.sequence_violation(p, LIMITS, [MS, last + 8], [5, 6])  # wrap one tick short
    assert (v.field, v.value, v.limit, v.relation) == ("onset_ns", last + 8, last, "<=")
    v = S.sequence_violation(p, LIMITS, [0, LIM], [0, 6])
    assert (v.field, v.value, v.limit, v.relation) == ("sequence_amplitude_ua", 0, 1, ">=")
    v = S.sequence_violation(p, LIMITS, [0, LIM], [5, 2001])
    assert (v.field, v.value, v.limit, v.relation) == ("sequence_amplitude_ua", 2001, 2000, "<=")
    v = S.sequence_violation(p, LIMITS, [0], [5])
    assert (v.field, v.value, v.limit, v.relation) == ("sequence_pulses", 1, 2, ">=")
    v = S.sequence_violation(p, LIMITS, [0, LIM, 2 * LIM], [5, 5, 5])
    assert (v.field, v.value, v.limit, v.relation) == ("sequence_pulses", 3, 2, "<=")
    v = S.sequence_violation(p, LIMITS, [0, LIM], [5])
    assert v.field == "sequence_amplitude_ua"
    big = LIMITS["max_duration_ns"]
    p1 = seq_params(n=1)
    v = S.sequence_violation(p1, LIMITS, [big + 1], [5])
    assert (v.field, v.value, v.limit, v.relation) == ("onset_ns", big + 1, big, "<=")
    assert S.sequence_violation(p1, LIMITS, [big], [5]) is None
    v = S.sequence_violation(P.complete({}), LIMITS, [0], [5])  # not a sequence
    assert (v.field, v.relation) == ("sequence_pulses", ">=")
    v = S.sequence_violation(p1, LIMITS, [0.5], [5])
    assert (v.field, v.relation) == ("onset_ns", "integer")
    v = S.sequence_violation(p1, LIMITS, [0], [True])
    assert (v.field, v.relation) == ("sequence_amplitude_ua", "integer")
    v = S.sequence_violation(dict(p1, period_ns=10), LIMITS, [0], [5])  # the parameters first
    assert v.field == "period_ns"


# ------------------------------------------------------------------------------ storage and readers
def upload(p, onsets, amps, records):
    b = S.SequenceBuilder(p, LIMITS, records)
    for first in range(0, len(onsets), M.SEQUENCE_CHUNK):
        sl = slice(first, first + M.SEQUENCE_CHUNK)
        assert b.check(first, onsets[sl], amps[sl]) is None
        b.add(first, onsets[sl], amps[sl])
    return b


def test_file_and_ram_records_read_alike_in_32_record_chunks(tmp_path):
    n = 101  # > 3 reader buffers
    onsets = [0]
    for i in range(1, n):  # irregular intervals, each >= the period
        onsets.append(onsets[-1] + LIM + (i % 7) * 64)
    amps = [1 + (i * 37) % 2000 for i in range(n)]
    p = seq_params(n=n, cycle=onsets[-1] + 3 * MS, train_duration_ns=2 * (onsets[-1] + 3 * MS))
    store = S.FileStore(str(tmp_path / "seq"))
    fb = upload(p, onsets, amps, store.records(2))
    rb = upload(p, onsets, amps, S.RamRecords())
    assert (tmp_path / "seq" / "seq2.bin").stat().st_size == n * S.RECORD_SIZE
    raw = (tmp_path / "seq" / "seq2.bin").read_bytes()
    assert [struct.unpack_from("<QH", raw, 10 * i) for i in range(n)] == [(ticks(o), E.dac_code(a))
                                                                          for o, a in zip(onsets, amps)]
    outs = []
    for b in (fb, rb):
        src = b.source()
        assert (src.pulses, src.repeats, src.total()) == (n, 2, 2 * n)
        r1, r2 = src.reader(), src.reader()
        a = [r1.next() for _ in range(2 * n + 1)]
        b2 = [r2.next() for _ in range(n)]  # an independent cursor
        assert a[:n] == b2 and a[-1] is None
        outs.append(a)
    assert outs[0] == outs[1]
    cyc = ticks(p["sequence_cycle_ns"])
    assert outs[0][n + 5] == (ticks(onsets[5]) + cyc, E.dac_code(amps[5]))


def test_seek_and_a_once_sequence_end():
    onsets = [i * (LIM + MS) for i in range(40)]
    amps = [10 + i for i in range(40)]
    b = upload(seq_params(n=40, amp=100), onsets, amps, S.RamRecords())
    src = b.source()
    assert (src.repeats, src.total(), src.cycle_ticks) == (1, 40, 0)
    r = src.reader()
    r.seek(33)
    assert r.next() == (ticks(onsets[33]), E.dac_code(amps[33]))
    r.seek(2)
    assert r.next() == (ticks(onsets[2]), E.dac_code(amps[2]))
    r.seek(39)
    assert r.next() is not None and r.next() is None
    r.seek(40)
    assert r.next() is None
    r.close()
    assert r.next() is None


def test_looping_until_stopped_and_the_short_loop_buffer():
    onsets = [0, LIM, 5 * MS]
    assert 5 * MS - LIM >= LIM and 8 * MS - 5 * MS >= LIM  # every interval and the wrap >= the limit
    b = upload(seq_params(n=3, amp=300, cycle=8 * MS), onsets, [100, 200, 300], S.RamRecords())
    src = b.source()
    assert (src.repeats, src.total()) == (0, None)
    r = src.reader()
    got = [r.next() for _ in range(3 * 1000)]
    assert got[-1] == (ticks(5 * MS) + 999 * ticks(8 * MS), E.dac_code(300))
    r.seek(3 * 500 + 1)
    assert r.next() == (ticks(LIM) + 500 * ticks(8 * MS), E.dac_code(200))


def test_a_restart_at_pulse_zero_replaces_the_upload():
    b = upload(seq_params(n=3, amp=300), [0, LIM, 5 * MS], [100, 200, 300], S.RamRecords())
    assert b.complete
    assert b.check(0, [7 * MS], [50]) is None
    b.add(0, [7 * MS], [50])
    assert (b.received, b.complete, b.code_min, b.code_max) == (1, False, E.dac_code(50), E.dac_code(50))
    v = b.check(1, [7 * MS + LIM - TICK_NS], [50])  # the interval counts from the new pulse 0
    assert v is not None and v.field == "onset_ns" and v.limit == 7 * MS + LIM
    assert b.check(1, [7 * MS + LIM], [50]) is None


def test_discarding_an_upload_never_writes_flash(tmp_path):
    """SET_PARAMS may come while another channel runs: discarding an unfinished file upload keeps its
    write handle open (closing it would flush to flash with the CPU stalled) and only drops the read
    handle; the next upload (refused while any channel runs) closes it. The directory is made by the
    first upload, not when the store is set up."""
    store = S.FileStore(str(tmp_path / "seqdir"))
    rec = store.records(0)
    assert not (tmp_path / "seqdir").exists()
    b = S.SequenceBuilder(seq_params(n=40), LIMITS, rec)
    b.add(0, [i * LIM for i in range(20)], [5] * 20)
    w = rec._w
    assert w is not None and not w.closed and (tmp_path / "seqdir").is_dir()
    b.discard()
    assert rec._w is w and not w.closed and b.received == 0
    b2 = S.SequenceBuilder(seq_params(n=1), LIMITS, rec)
    b2.add(0, [0], [5])
    assert w.closed and b2.complete
    assert (tmp_path / "seqdir" / "seq0.bin").read_bytes() == struct.pack("<QH", 0, E.dac_code(5))
