"""Custom sequences (issue 13 item 4), controller side (firmware/controller.py): SET_SEQUENCE upload in
chunks, every refusal changing nothing, START/TRIGGER of an incomplete sequence, SET_PARAMS
discarding an upload, SET_AMPLITUDE and SAVE refused on sequence channels, 10,000 pulses accepted and a
10,001st refused, the SequenceSource handed to the HAL, monitoring with each pulse's own current and
train_done. The HAL is the deterministic fake the link fuzzers use (tests/fuzz/link_targets.py)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from firmware import impedance
from firmware import pulse_engine as E
from firmware import sequence as S
from firmware.controller import Controller
from firmware.limits import LIMITS
from protocol import messages as M
from protocol import params as P
from protocol.framing import FrameDecoder, encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from link_targets import GOOD, FakeHal, MemFiles  # noqa: E402

MS = 1_000_000
LIM = LIMITS["min_sequence_interval_ns"]  # the shortest interval a sequence may have (2 ms)


def ticks(ns):
    return (ns * 125_000_000 + 500_000_000) // 1_000_000_000


def seq_params(n, period=LIM, amp=2000, cycle=0, **kw):
    return P.complete(dict({"sequence_pulses": n, "period_ns": period, "amplitude_ua": amp,
                            "sequence_cycle_ns": cycle}, **kw))


class Bench:
    """A controller on a FakeHal, with request helpers that decode the answer."""

    def __init__(self, hal=None, sequences=None, storage=True):
        from firmware import storage as st

        self.hal = hal or FakeHal()
        self.out: list = []
        self.ctl = Controller(self.hal, self.out.append, storage=st.Store(MemFiles()) if storage else None,
                              sequences=sequences)
        self.dec = FrameDecoder()
        self.seq = 0

    def req(self, t, body=b""):
        self.seq += 1
        self.out.clear()
        self.ctl.receive(encode_frame(t, self.seq, body))
        frames = [f for chunk in self.out for f in self.dec.feed(chunk)]
        (f,) = [f for f in frames if f.type != M.EVENT]
        if f.type == M.NACK:
            return M.decode_nack(f.body)
        assert f.type == t | M.RESPONSE
        return f.body

    def params(self, ch, p):
        body = self.req(M.SET_PARAMS, M.encode_params(ch, p))
        assert isinstance(body, bytes), body
        return M.decode_params_response(body)

    def chunk(self, ch, first, onsets, amps):
        r = self.req(M.SET_SEQUENCE, M.encode_set_sequence(ch, first, onsets, amps))
        return r if isinstance(r, dict) else M.decode_sequence_response(r)

    def upload(self, ch, onsets, amps, k=M.SEQUENCE_CHUNK, total=None):
        """Send the pulses in chunks of ``k`` from pulse 0; ``total``: the channel's N (default all)."""
        total = len(onsets) if total is None else total
        r = None
        for first in range(0, len(onsets), k):
            r = self.chunk(ch, first, onsets[first:first + k], amps[first:first + k])
            assert r == {"channel": ch, "received": min(first + k, len(onsets)),
                         "complete": int(min(first + k, len(onsets)) >= total)}, r
        return r

    def snapshot(self):
        """What a refused request must not change: parameters, states, the uploads, hardware calls."""
        ctl = self.ctl
        ups = [None if b is None else (b.received, b.first_ticks, b.last_ticks, b.code_min, b.code_max,
                                       bytes(b.records._buf) if isinstance(b.records, S.RamRecords) else None)
               for b in ctl._seq]
        return (copy.deepcopy(ctl.params), [id(t) for t in ctl.trains], list(ctl.state), ups,
                [c for c in self.hal.calls], list(self.hal.ops))


def onsets_amps(n, gap=LIM + 16, amp=2000):
    onsets = [i * (gap + 8) + (i % 2) * 8 for i in range(n)]  # intervals alternate gap + 2 ticks and gap
    amps = [1 + (i * 97) % amp for i in range(n)]
    return onsets, amps


def loaded(n=45, **kw):
    b = Bench(**kw)
    b.params(0, seq_params(n, period=LIM))  # the smallest interval is 2 ticks longer
    on, am = onsets_amps(n)
    b.upload(0, on, am)
    return b, on, am


# ------------------------------------------------------------------------------------ upload
def test_upload_in_chunks_then_start_hands_the_sequence_to_the_hal():
    b, on, am = loaded(45)
    assert b.ctl._seq[0].complete
    assert b.req(M.START, b"\x01") == b""
    (call,) = [c for c in b.hal.calls if c[0] == "start"]
    assert call[1] == 1
    src = b.ctl.trains[0].sequence
    assert isinstance(src, S.SequenceSource) and (src.pulses, src.cycle_ticks, src.repeats) == (45, 0, 1)
    r = src.reader()
    assert [r.next() for _ in range(46)] == [(ticks(o), E.dac_code(a)) for o, a in zip(on, am)] + [None]
    assert b.ctl.state[0] == M.ST_RUNNING


def test_chunks_of_any_size_and_a_restart_at_zero():
    b = Bench()
    b.params(1, seq_params(7))
    on, am = onsets_amps(7)
    b.upload(1, on, am, k=3)
    on2 = [x + 5 * MS for x in on]
    assert b.chunk(1, 0, on2[:1], am[:1]) == {"channel": 1, "received": 1, "complete": 0}
    b.upload(1, on2, am, k=7)
    assert b.ctl._seq[1].first_ticks == ticks(on2[0])


def test_params_response_reports_the_sequence():
    b = Bench()
    r = b.params(2, seq_params(5, cycle=20 * MS, train_duration_ns=70 * MS))
    assert r["realised"]["pulses_per_cycle"] == 5 and r["realised"]["repeats"] == 4  # ceil(70 / 20)
    assert r["realised"]["train_duration"] == 4 * ticks(20 * MS)
    r = b.params(2, seq_params(5))
    assert (r["realised"]["pulses_per_cycle"], r["realised"]["repeats"]) == (5, 1)


# ------------------------------------------------------------------------------------ refusals
def refused(b, t, body, code, field=None, value=None, limit=None):
    before = b.snapshot()
    r = b.req(t, body)
    assert isinstance(r, dict), "accepted: %r" % (r,)
    assert r["code"] == code, r
    if field is not None:
        assert r["field"] == field, r
    if value is not None:
        assert r["value"] == value, r
    if limit is not None:
        assert r["limit"] == limit, r
    assert b.snapshot() == before  # a refusal changes nothing
    return r


def test_out_of_order_chunks_are_refused_and_change_nothing():
    b = Bench()
    b.params(0, seq_params(60))
    on, am = onsets_amps(60)
    b.upload(0, on[:40], am[:40], total=60)
    for first in (41, 39, 20, 60, 0xFFFF):
        refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, first, on[40:41], am[40:41]), M.E_BAD_STATE,
                "sequence_pulses", first, 40)
    assert b.chunk(0, 40, on[40:], am[40:]) == {"channel": 0, "received": 60, "complete": 1}


def test_every_per_pulse_refusal_names_its_field_and_changes_nothing():
    b = Bench()
    b.params(0, seq_params(30, period=LIM, amp=1500))
    on = [i * LIM for i in range(30)]
    am = [1500] * 30
    b.upload(0, on[:20], am[:20], total=30)
    bad_on = list(on[20:])
    bad_on[3] = bad_on[2] + LIM - 8  # one tick too early, in the middle of the chunk
    r = refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, 20, bad_on, am[20:]), M.E_OUT_OF_RANGE,
                "onset_ns", bad_on[3], bad_on[2] + LIM)
    assert r["relation"] == ">="
    refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, 20, [on[19] + LIM - 8], [5]), M.E_OUT_OF_RANGE,
            "onset_ns", on[19] + LIM - 8, on[19] + LIM)  # across the chunk boundary
    bad_am = list(am[20:])
    bad_am[9] = 1501
    refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, 20, on[20:], bad_am), M.E_OUT_OF_RANGE,
            "sequence_amplitude_ua", 1501, 1500)
    bad_am[9] = 0
    refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, 20, on[20:], bad_am), M.E_OUT_OF_RANGE,
            "sequence_amplitude_ua", 0, 1)
    big = b.ctl.limits["max_duration_ns"]
    refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, 20, [big + 1], [5]), M.E_OUT_OF_RANGE,
            "onset_ns", big + 1, big)
    # a chunk that would pass N
    more = [on[-1] + LIM * (i + 1) for i in range(11)]
    refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, 20, more, [5] * 11), M.E_OUT_OF_RANGE,
            "sequence_pulses", 31, 30)
    assert b.chunk(0, 20, on[20:], am[20:])["complete"] == 1


def test_a_first_onset_below_one_pio_segment_is_refused_at_upload_and_start_says_incomplete():
    """A first onset of 1..4 ticks cannot be played (the idle before it is one PIO segment word): it is
    refused at SET_SEQUENCE (nothing stored), so START answers E_SEQUENCE_INCOMPLETE and never reaches
    the HAL (whose stream would refuse it at START: the crash path)."""
    seg = E.ticks_to_ns(E.MIN_SEGMENT_TICKS)
    b = Bench()
    b.params(0, seq_params(2))
    for first in (8, seg - 5):  # 1 and 4 ticks
        refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, 0, [first, first + LIM], [5, 6]), M.E_OUT_OF_RANGE,
                "onset_ns", first, seg)
        refused(b, M.START, b"\x01", M.E_SEQUENCE_INCOMPLETE)
    assert not [c for c in b.hal.calls if c[0] == "start"] and b.ctl.state[0] == M.ST_IDLE
    assert b.chunk(0, 0, [seg, seg + LIM], [5, 6])["complete"] == 1  # one segment: played
    assert b.req(M.START, b"\x01") == b""
    assert b.ctl.trains[0].sequence.reader().next() == (E.MIN_SEGMENT_TICKS, E.dac_code(5))


def test_loop_wrap_is_checked_on_the_wire():
    b = Bench()
    b.params(0, seq_params(2, period=LIM, cycle=5 * LIM))
    last = 4 * LIM + MS  # the wrap: 5 LIM - last + 1 ms = LIM
    refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, 0, [MS, last + 8], [5, 5]), M.E_OUT_OF_RANGE,
            "onset_ns", last + 8, last)
    assert b.chunk(0, 0, [MS, last], [5, 5])["complete"] == 1


def test_set_sequence_state_refusals():
    b = Bench()
    on, am = onsets_amps(3)
    body = M.encode_set_sequence(0, 0, on, am)
    refused(b, M.SET_SEQUENCE, body, M.E_NOT_CONFIGURED, "channel")
    refused(b, M.SET_SEQUENCE, M.encode_set_sequence(4, 0, on, am), M.E_BAD_CHANNEL, "channel", 4, 3)
    b.params(0, GOOD)  # a regular train
    refused(b, M.SET_SEQUENCE, body, M.E_BAD_STATE, "sequence_pulses", 0, 1)
    for n in (0, 1, 2, 14, 16, 244, 250):
        r = refused(b, M.SET_SEQUENCE, bytes(n), M.E_BAD_LENGTH, "body", n)
        assert M.sequence_body_ok(r["limit"])
    b.params(0, seq_params(3))
    b.upload(0, on, am)
    assert b.req(M.START, b"\x01") == b""
    refused(b, M.SET_SEQUENCE, body, M.E_BAD_STATE, "channel", 0, M.ST_RUNNING)  # its own channel running


def test_records_in_flash_are_refused_while_any_channel_runs(tmp_path):
    """A flash write stalls the CPU: with a FileStore (the board) an upload waits until every
    channel is idle; records in RAM only need their own channel idle."""
    for store, accepted in ((S.FileStore(str(tmp_path / "s")), False), (None, True)):
        b = Bench(sequences=store)
        b.params(1, GOOD)
        assert b.req(M.START, b"\x02") == b""
        b.params(0, seq_params(3))
        on, am = onsets_amps(3)
        body = M.encode_set_sequence(0, 0, on, am)
        if accepted:
            assert b.chunk(0, 0, on, am)["complete"] == 1
        else:
            refused(b, M.SET_SEQUENCE, body, M.E_BAD_STATE, "channel", 1, M.ST_RUNNING)
            b.hal._running[1] = False
            b.ctl.poll()  # train_done
            assert b.chunk(0, 0, on, am)["complete"] == 1
            assert (tmp_path / "s" / "seq0.bin").stat().st_size == 3 * S.RECORD_SIZE


def test_start_and_trigger_of_an_incomplete_sequence_are_refused():
    b = Bench()
    b.params(0, seq_params(45))
    on, am = onsets_amps(45)
    for t in (M.START, M.TRIGGER):
        refused(b, t, b"\x01", M.E_SEQUENCE_INCOMPLETE, "sequence_pulses", 0, 45)
    b.upload(0, on[:40], am[:40], total=45)
    b.params(1, GOOD)
    for t in (M.START, M.TRIGGER):
        refused(b, t, b"\x03", M.E_SEQUENCE_INCOMPLETE, "sequence_pulses", 40, 45)  # nothing starts, not even ch 1
    assert [c for c in b.hal.calls if c[0] == "start"] == []
    b.chunk(0, 40, on[40:], am[40:])
    assert b.req(M.TRIGGER, b"\x03") == b""


def test_set_params_discards_the_upload_even_with_the_same_n():
    b, on, am = loaded(45)
    p = b.ctl.params[0]
    b.params(0, p)
    assert b.ctl._seq[0].received == 0
    refused(b, M.START, b"\x01", M.E_SEQUENCE_INCOMPLETE, "sequence_pulses", 0, 45)
    refused(b, M.SET_SEQUENCE, M.encode_set_sequence(0, 20, on[20:40], am[20:40]), M.E_BAD_STATE,
            "sequence_pulses", 20, 0)
    b.params(0, GOOD)  # back to a regular train: no upload at all
    assert b.ctl._seq[0] is None
    assert b.req(M.START, b"\x01") == b""


def test_set_params_into_or_out_of_a_sequence_is_refused_while_running():
    b, on, am = loaded(45)
    b.params(1, GOOD)
    assert b.req(M.START, b"\x03") == b""  # together: a varying sequence refuses a later START beside it
    refused(b, M.SET_PARAMS, M.encode_params(0, GOOD), M.E_BAD_STATE, "sequence_pulses", 0, M.ST_RUNNING)
    refused(b, M.SET_PARAMS, M.encode_params(0, b.ctl.params[0]), M.E_BAD_STATE, "sequence_pulses", 45)
    refused(b, M.SET_PARAMS, M.encode_params(1, seq_params(3)), M.E_BAD_STATE, "sequence_pulses", 3)


def test_set_amplitude_and_save_are_refused_on_a_sequence_channel():
    b, on, am = loaded(45)
    refused(b, M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1000), M.E_BAD_STATE, "sequence_pulses", 45)
    refused(b, M.SAVE, M.encode_slot_request(0, 1), M.E_BAD_STATE, "sequence_pulses", 45)
    assert b.req(M.START, b"\x01") == b""
    refused(b, M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1000), M.E_BAD_STATE, "sequence_pulses", 45)
    b.params(1, GOOD)
    assert isinstance(b.req(M.SAVE, M.encode_slot_request(1, 1)), dict)  # refused too, but because ch 0 runs
    b.hal._running[0] = False
    b.ctl.poll()
    assert isinstance(b.req(M.SAVE, M.encode_slot_request(1, 1)), bytes)  # a regular channel saves


def test_ten_thousand_pulses_accepted_and_the_next_refused():
    b = Bench()
    n = 10000
    assert b.ctl.limits["max_sequence_pulses"] == n
    b.params(3, seq_params(n, period=LIM, amp=3000))
    on = [i * (LIM + 8) + (i % 2) * 8 for i in range(n)]  # intervals alternate the limit + 2 ticks and the limit
    am = [1 + (i * 7919) % 3000 for i in range(n)]
    b.upload(3, on, am)
    refused(b, M.SET_SEQUENCE, M.encode_set_sequence(3, n, [on[-1] + 10 * MS], [5]), M.E_OUT_OF_RANGE,
            "sequence_pulses", n + 1, n)
    refused(b, M.SET_PARAMS, M.encode_params(3, seq_params(n + 1, period=LIM)), M.E_OUT_OF_RANGE,
            "sequence_pulses", n + 1, n)
    assert b.req(M.START, b"\x08") == b""
    src = b.ctl.trains[3].sequence
    r = src.reader()
    got = [r.next() for _ in range(n)]
    assert got == [(ticks(o), E.dac_code(a)) for o, a in zip(on, am)] and r.next() is None


def test_a_varying_sequence_needs_the_dac_bus_to_itself():
    b, on, am = loaded(45)
    b.params(1, dict(GOOD, ramp_up_pulses=5))
    refused(b, M.START, b"\x03", M.E_RAMP_TIMING, "sequence_pulses", 1, 0)  # with a soft start
    b.params(2, seq_params(3, amp=2000))
    b.upload(2, [0, LIM, 2 * LIM], [7, 8, 9])
    refused(b, M.START, b"\x05", M.E_RAMP_TIMING, "sequence_pulses")  # two varying sequences
    b.hal.busy = True
    refused(b, M.START, b"\x01", M.E_DAC_BUSY, "channel", 0)
    b.hal.busy = False
    assert b.req(M.START, b"\x01") == b""
    (call,) = [c for c in b.hal.calls if c[0] == "start"]
    assert call[3] == 2 and call[4] > 0  # pulse 0's codes, then the first chunk of the per-pulse ops
    a0, b0 = E._codes(b.ctl.trains[0], E.dac_code(am[0]))
    assert b.hal.ops[:2] == E.dac_bus.update_ops(0, a0, b0)


def test_beside_a_running_varying_sequence_other_starts_and_impedance_checks_are_refused():
    """The HAL's urgent DAC writes (a START's first codes, an impedance check) halt the DAC bus state
    machine: a pulse of a varying sequence ending inside the halt would shift every later amplitude by
    one pulse (review of hal_rp2._dac_now). While one runs, other channels' START and IMPEDANCE are
    refused, naming the sequence's channel; together with it, or once it is stopped, they are not."""
    b, on, am = loaded(45)
    b.params(1, GOOD)
    assert b.req(M.START, b"\x01") == b""
    refused(b, M.START, b"\x02", M.E_DAC_BUSY, "channel", 0, 0)
    refused(b, M.IMPEDANCE, b"\x02", M.E_DAC_BUSY, "channel", 0, 0)
    assert isinstance(b.req(M.IMPEDANCE, b"\x01"), (bytes, dict))  # its own channel: not refused here
    b.req(M.STOP, b"\x01")
    b.ctl.state[0] = M.ST_IDLE  # as poll() leaves it once the stream has ended
    assert b.req(M.START, b"\x02") == b""


def test_a_constant_sequence_leaves_other_channels_free():
    b = Bench()
    b.params(0, seq_params(3, amp=2000))
    b.upload(0, [0, LIM, 2 * LIM], [2000, 2000, 2000])
    b.params(1, GOOD)
    assert b.req(M.START, b"\x01") == b""
    assert b.req(M.START, b"\x02") == b""


def expected_ops(train, ch, amps):
    """Independently: after pulse j's end, pulse j + 1's codes when its phase-1 code differs (phase 2
    balanced per pulse); no wait after the last pulse, none after the last change."""
    ops: list = []
    keep = 0
    codes = [E.dac_code(a) for a in amps]
    for j in range(len(codes) - 1):
        ops += E.boundary_wait_ops(train, ch)
        if codes[j + 1] != codes[j]:
            ops += E.dac_bus.update_ops(ch, *E._codes(train, codes[j + 1]))
            keep = len(ops)
    return ops[:keep]


def test_poll_tops_up_the_sequences_dac_ops_as_the_pulses_go():
    n = 1500  # 3 s of pulses: more than one lookahead (1 s)
    b, on, am = loaded(n)
    assert b.req(M.START, b"\x01") == b""
    w = b.ctl._writer
    assert w is not None and w[0].channels == [0] and not w[0].done
    first_chunk = w[0].emitted
    assert 0 < first_chunk < n - 1
    b.ctl.poll()
    assert [c for c in b.hal.calls if c[0] == "dac_play"] == []  # still half a lookahead ahead
    played = 0
    while b.ctl._writer is not None:
        played += 50
        b.hal.played[0] = played
        b.ctl.poll()
        assert b.ctl._writer is None or b.ctl._writer[0].emitted - played >= first_chunk // 2 - 50
        assert played < n
    assert b.hal.ops[2:] == expected_ops(b.ctl.trains[0], 0, am)
    # the stream ends: the controller forgets the DAC state and reports train_done
    b.hal._running[0] = False
    b.hal.busy = False
    b.ctl.poll()
    assert b.ctl.state[0] == M.ST_IDLE and b.ctl._dac_mask == 0


def test_stop_of_a_varying_sequence_stops_at_once_and_drops_its_writer():
    b, on, am = loaded(1500)
    assert b.req(M.START, b"\x01") == b""
    assert b.ctl._writer is not None
    assert b.req(M.STOP, b"\x01") == b""
    assert ["stop", 1] in b.hal.calls and b.ctl._writer is None


def test_constant_sequences_start_together_and_with_a_soft_start():
    b = Bench()
    for ch in (0, 2):
        b.params(ch, seq_params(3, amp=2000))
        b.upload(ch, [0, LIM, 2 * LIM], [700] * 3)  # constant, below amplitude_ua
    b.params(1, dict(GOOD, ramp_up_pulses=5))
    assert b.req(M.START, b"\x07") == b""
    (call,) = [c for c in b.hal.calls if c[0] == "start"]
    assert call[3] == 6  # first ops: every started channel's first-pulse codes (a sequence's pulse 0)
    a0, b0 = E._codes(b.ctl.trains[0], E.dac_code(700))
    assert b.hal.ops[:2] == E.dac_bus.update_ops(0, a0, b0)
    assert b.ctl.trains[2].sequence.varies is False


class NoBusHal(FakeHal):
    """A HAL without a DAC bus (no dac_busy): only each train's own codes can play."""

    dac_busy = None  # type: ignore[assignment]


def test_without_a_dac_bus_only_a_constant_sequence_at_the_trains_amplitude_starts():
    b = Bench(hal=NoBusHal())
    b.params(0, seq_params(3, amp=1000))
    b.upload(0, [0, LIM, 2 * LIM], [1000, 500, 1000])
    refused(b, M.START, b"\x01", M.E_OUT_OF_RANGE, "sequence_amplitude_ua")
    b.chunk(0, 0, [0, LIM, 2 * LIM], [1000, 1000, 1000])
    assert b.req(M.START, b"\x01") == b""
    assert b.ctl.trains[0].sequence.pulses == 3


class SamplingHal(FakeHal):
    """FakeHal with phase-1 electrode readings the test queues (time_us, adc code)."""

    def __init__(self):
        super().__init__()
        self.samples: list = []
        self.now = 1_000_000

    def time_us(self):
        return self.now

    def phase1_samples(self, ch, min_interval_us):
        out, self.samples = self.samples, []
        return out


def test_monitoring_uses_each_pulses_own_current_and_train_done_follows():
    hal = SamplingHal()
    b = Bench(hal=hal)
    amps = [2000, 400, 1200, 800, 100, 2000]
    gaps = [3 * MS, 2 * MS, 5 * MS, 2 * MS, 4 * MS]  # irregular intervals
    on = [0]
    for g in gaps:
        on.append(on[-1] + g)
    b.params(0, seq_params(6, amp=2000))
    b.upload(0, on, amps)
    assert b.req(M.START, b"\x01") == b""
    train = b.ctl.trains[0]
    tpu = 125
    rest = (train.realised["pulse"] - E.ns_to_ticks(impedance.MONITOR_SAMPLE_NS)) // tpu
    code = 60  # ohms between the short and open thresholds for every amplitude here (no fault)

    def ohms_of(j):
        return impedance.phase1_ohms(code, E.code_to_na(E.dac_code(amps[j])))

    # pulse 3 in progress (3 completed): the reading belongs to pulse 3
    hal.played[0] = 3
    hal.samples = [(hal.now, code)]
    b.ctl.poll()
    assert b.ctl.impedance_ohm[0] == ohms_of(3) != ohms_of(2)
    # 5 completed, a reading taken 2.5 ms + rest before now: pulse 4 ended at most 2.5 ms ago...
    # the interval 3 -> 4 is 2 ms, so the reading is pulse 3's; with 1.5 ms it is pulse 4's
    hal.played[0] = 5
    hal.samples = [(hal.now - rest - 2500, code)]
    b.ctl.poll()
    assert b.ctl.impedance_ohm[0] == ohms_of(3)
    hal.samples = [(hal.now - rest - 1500, code)]
    b.ctl.poll()
    assert b.ctl.impedance_ohm[0] == ohms_of(4)
    # 5 completed, 2 ms + 5 ms + rest back: over the intervals 3 -> 4 (2 ms) and 2 -> 3 (5 ms)
    hal.samples = [(hal.now - rest - 7001, code)]
    b.ctl.poll()
    assert b.ctl.impedance_ohm[0] == ohms_of(2)
    hal._running[0] = False
    hal.played[0] = 6
    b.out.clear()
    b.ctl.poll()
    evs = [M.decode_event(f.body) for chunk in b.out for f in b.dec.feed(chunk) if f.type == M.EVENT]
    assert [(e["kind"], e["value"]) for e in evs] == [("train_done", 6)]
    assert b.ctl.state[0] == M.ST_IDLE


@pytest.mark.parametrize("trigger", [1, 2])
def test_external_trigger_arms_a_sequence(trigger):
    b = Bench()
    b.params(0, seq_params(3, trigger=trigger))
    b.upload(0, [0, LIM, 2 * LIM], [5, 6, 7])
    assert b.req(M.START, b"\x01") == b""
    (call,) = [c for c in b.hal.calls if c[0] == "start"]
    assert call[2][0] == trigger and b.ctl.state[0] == M.ST_ARMED


class FailingStore:
    """Records whose writes fail from the ``fail_at``-th on (a full or broken flash)."""

    stalls = False

    def __init__(self, fail_at):
        self.fail_at = fail_at
        self.writes = 0
        self.rec = S.RamRecords()
        real = self.rec.write_at

        def write_at(offset, data):
            self.writes += 1
            if self.writes >= self.fail_at:
                raise OSError(28, "no space")
            real(offset, data)

        self.rec.write_at = write_at

    def records(self, ch):
        return self.rec


def test_a_failed_write_is_e_storage_and_the_chunk_can_be_retried():
    store = FailingStore(fail_at=2)
    b = Bench(sequences=store)
    b.params(0, seq_params(30))
    on, am = onsets_amps(30)
    assert b.chunk(0, 0, on[:20], am[:20])["received"] == 20
    r = b.req(M.SET_SEQUENCE, M.encode_set_sequence(0, 20, on[20:], am[20:]))
    assert r["code"] == M.E_STORAGE and r["field"] == "channel" and r["limit"] == 20
    assert b.ctl._seq[0].received == 20  # the pulses received stay as they were
    store.fail_at = 10**9
    assert b.chunk(0, 20, on[20:], am[20:]) == {"channel": 0, "received": 30, "complete": 1}
    r = b.ctl._seq[0].source().reader()
    assert [r.next() for _ in range(30)] == [(ticks(o), E.dac_code(a)) for o, a in zip(on, am)]
