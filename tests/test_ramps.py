"""Soft start / soft stop (issue 13 item 2): the per-pulse codes of a ramp, the DAC bus op lists the
firmware builds for them, the limits, and the controller playing them through the HAL contract.

The op lists are checked by decoding the words (tests/dac_ops.py) and replaying them boundary by
boundary, not by rebuilding them with the functions under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dac_ops import decode, play
from firmware import board, dac_bus
from firmware import pulse_engine as pe
from firmware.controller import Controller
from firmware.limits import LIMITS
from protocol import messages as M
from protocol import params as P
from protocol.framing import FrameDecoder, encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from link_targets import FakeHal  # noqa: E402

MS = 1_000_000
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def params(**kw):
    return P.complete(dict({"phase1_ns": 200_000, "phase2_ns": 200_000, "period_ns": 20 * MS,
                            "amplitude_ua": 1000}, **kw))


@st.composite
def ramped(draw):
    """Valid parameter sets with a ramp-up and a ramp-down, in pulses or in time."""
    ph1 = draw(st.integers(40, 1_000_000))
    ph2 = draw(st.one_of(st.just(ph1), st.integers(40, 3_000_000)))
    rec = draw(st.one_of(st.just(0), st.integers(40, 500_000)))
    p = P.complete(dict(phase1_ns=ph1, phase2_ns=ph2, recovery_ns=rec, polarity=draw(st.integers(0, 1)),
                        amplitude_ua=draw(st.one_of(st.integers(1, 30), st.integers(1, 10000))),
                        electrode_area_um2=10**8, burst_pulses=draw(st.one_of(st.just(0), st.integers(1, 5))),
                        interburst_ns=draw(st.sampled_from([0, 7 * MS]))))
    length = P.pulse_length_ns(p, LIMITS["min_dead_time_ns"])
    p["period_ns"] = max(2 * (ph1 + ph2), LIMITS["min_period_ns"], length + LIMITS["min_update_idle_ns"]) \
        + draw(st.integers(0, 3 * MS))
    if draw(st.booleans()):
        p["ramp_up_pulses"] = draw(st.integers(1, 120))
    else:
        p["ramp_up_ns"] = draw(st.integers(1, 120)) * p["period_ns"] + draw(st.integers(-5000, 5000))
    if draw(st.booleans()):
        p["ramp_down_pulses"] = draw(st.integers(1, 120))
    else:
        p["ramp_down_ns"] = draw(st.integers(1, 40 * p["period_ns"]))
    train, v = pe.build_checked(p, LIMITS)
    assume(v is None)
    return p, train


def residual_ok(train, a, b):
    """Charge balance of one pulse within the DAC's rounding: |c1*ph1 - c2*ph2| <= ph2 / 2 LSB-ticks,
    or phase 2 at its 1-LSB floor."""
    c1, c2 = (b, a) if train.first == pe.NEG else (a, b)
    q = c1 * train.phase1_ticks - c2 * train.phase2_ticks
    return 2 * abs(q) <= train.phase2_ticks or (c2 == 1 and q < 0)


def phase1(train, codes):
    return codes[1] if train.first == pe.NEG else codes[0]


# ---- the ramp model -------------------------------------------------------------------------------
@SETTINGS
@given(ramped())
def test_every_ramp_pulse_is_balanced_monotone_and_ends_at_full(case):
    p, t = case
    k = t.ramp_up_k
    up = [pe.pulse_codes(t, j) for j in range(k + 3)]
    c1 = [phase1(t, c) for c in up]
    assert all(c >= 1 for c in c1)
    assert c1 == sorted(c1)  # non-decreasing
    for j, codes in enumerate(up):
        assert residual_ok(t, *codes), (j, codes)
        if j >= k - 1:
            assert codes == (t.dac_a, t.dac_b)
        else:  # linear in DAC codes: exact to the rounding of code1 * (j + 1) / K
            assert abs(c1[j] * k - t.code1 * (j + 1)) * 2 <= k or c1[j] == 1
    down = [pe.ramp_down_codes(t, j) for j in range(t.ramp_down_k)]
    d1 = [phase1(t, c) for c in down]
    assert d1 == sorted(d1, reverse=True) and all(1 <= c <= t.code1 for c in d1)
    for j, codes in enumerate(down):
        assert residual_ok(t, *codes)
        assert abs(d1[j] * (t.ramp_down_k + 1) - t.code1 * (t.ramp_down_k - j)) * 2 <= t.ramp_down_k + 1 or d1[j] == 1


def test_time_ramp_counts_the_pulses_that_start_before_its_end():
    # 20 ms period: a 100 ms ramp holds the pulses at 0, 20, ..., 80 ms: K = 5
    assert pe.build_train(params(ramp_up_ns=100 * MS)).ramp_up_k == 5
    assert pe.build_train(params(ramp_up_ns=100 * MS + 8)).ramp_up_k == 6
    # bursts of 3 at 20 ms, then 50 ms more: cycle 110 ms; pulses at 0 20 40 | 110 130 150 | 220 ...
    b = pe.build_train(params(burst_pulses=3, interburst_ns=50 * MS, ramp_up_ns=131 * MS))
    assert b.ramp_up_k == 5
    assert [pe.pulse_start_ticks(b, j) for j in range(4)][-1] == pe.ns_to_ticks(110 * MS)
    # ramp-down in time: same count
    assert pe.build_train(params(ramp_down_ns=60 * MS)).ramp_down_k == 3
    assert pe.build_train(params(ramp_down_pulses=7)).ramp_down_k == 7


def test_ramp_codes_pinned():
    t = pe.build_train(params(ramp_up_pulses=4, ramp_down_pulses=3))  # 1000 µA = code 400
    assert [pe.pulse_codes(t, j) for j in range(5)] == [(100, 100), (200, 200), (300, 300), (400, 400),
                                                        (400, 400)]
    # down: 400 * 3/4, 2/4, 1/4
    assert [pe.ramp_down_codes(t, j) for j in range(3)] == [(300, 300), (200, 200), (100, 100)]
    a = pe.build_train(params(ramp_up_pulses=4, phase2_ns=400_000, polarity=1))  # anodic first: A = phase 1
    assert pe.pulse_codes(a, 0) == (100, 50) and pe.pulse_codes(a, 3) == (400, 200)


# ---- limits -----------------------------------------------------------------------------------------
def test_a_time_ramp_longer_than_max_ramp_pulses_is_refused_naming_its_field():
    L = LIMITS
    period = 1 * MS
    ok = params(period_ns=period, ramp_up_ns=L["max_ramp_pulses"] * period)
    assert pe.build_checked(ok, L)[1] is None
    bad = dict(ok, ramp_up_ns=ok["ramp_up_ns"] + 8)
    v = pe.build_checked(bad, L)[1]
    assert (v.field, v.value, v.limit, v.relation) == ("ramp_up_ns", bad["ramp_up_ns"], ok["ramp_up_ns"], "<=")
    down = dict(params(period_ns=period), ramp_down_ns=60 * 10**9)
    v = pe.build_checked(down, L)[1]
    assert v.field == "ramp_down_ns" and v.limit == L["max_ramp_pulses"] * period


def test_ramp_idle_is_checked_after_rounding_to_the_tick():
    # validate allows 8 µs idle in ns; the engine checks the same rule in ticks (here: equal)
    L = dict(LIMITS, max_duty_permille=1000, min_period_ns=0)
    p = params(period_ns=401_000 + 8000, ramp_up_pulses=3)
    assert pe.build_checked(p, L)[1] is None
    v = pe.build_checked(dict(p, period_ns=p["period_ns"] - 1), L)[1]
    assert v.field == "period_ns" and v.relation == ">="


def test_the_old_firmware_refused_every_ramp():
    """Before issue 13 (49823f4) max_ramp_ns was 0: a ramp of 1 s was refused. Now it is accepted."""
    assert P.validate(params(ramp_up_ns=10**9), LIMITS) is None
    assert P.validate(params(ramp_up_pulses=10, ramp_down_ns=10**9), LIMITS) is None


# ---- op lists ---------------------------------------------------------------------------------------
@SETTINGS
@given(ramped(), st.integers(0, 3))
def test_ramp_up_ops_replay_to_every_pulse_codes(case, ch):
    p, t = case
    trains = [None] * 4
    trains[ch] = t
    first = pe.start_ops(trains, [ch])
    ops = pe.ramp_up_ops(trains, [ch])
    assert all(decode(o)[0] == "write" for o in first) and len(first) == 2
    dacs, bounds = play(first)
    assert dacs.codes(ch) == pe.pulse_codes(t, 0)
    if t.ramp_up_k <= 1 or not ops:  # no ramp, or one whose codes never change (1 LSB amplitudes)
        assert all(pe.pulse_codes(t, j) == (t.dac_a, t.dac_b) for j in range(t.ramp_up_k + 1))
        return
    assert decode(ops[0])[0] == "wait"  # nothing is written before the first pulse's end
    assert decode(ops[-1])[0] == "write"  # no trailing bare waits
    assert len(ops) <= pe.MAX_RAMP_OPS
    dacs, bounds = play(ops, dacs)
    pin = board.CH_POS[ch] if p["polarity"] == 0 else board.CH_NEG[ch]  # phase 2 of cathodic-first is POS
    state = pe.pulse_codes(t, 0)
    for j, (wait_pin, written) in enumerate(bounds, start=1):
        assert wait_pin == pin
        assert set(written) <= {ch}
        state = written.get(ch, state)
        assert state == pe.pulse_codes(t, j), j  # the codes pulse j plays
    assert state == (t.dac_a, t.dac_b)
    # never more boundaries than pulses of a finite train (a wait that never comes)
    total = pe.total_pulses(t)
    assert total is None or len(bounds) <= total - 1


@SETTINGS
@given(ramped(), st.integers(0, 3))
def test_ramp_down_ops_replay_to_the_soft_stop_then_shut_down(case, ch):
    p, t = case
    trains = [None] * 4
    trains[ch] = t
    ops = pe.ramp_down_ops(trains, [ch])
    dacs, _ = play(pe.start_ops(trains, [ch]))
    dacs, bounds = play(ops, dacs)
    assert decode(ops[0])[0] == "wait"
    assert len(bounds) == t.ramp_down_k + 1
    state = (t.dac_a, t.dac_b)
    for j, (_, written) in enumerate(bounds[:-1]):
        state = written.get(ch, state)
        assert state == pe.ramp_down_codes(t, j)
    last = [decode(o) for o in ops[-2:]]
    assert [(d[0], d[1], d[2], d[3]) for d in last] == [("write", ch, 0, 0), ("write", ch, 1, 0)]  # both off


def test_channels_with_identical_timing_ramp_together_one_wait_per_boundary():
    t0 = pe.build_train(params(ramp_up_pulses=4))
    t1 = pe.build_train(params(ramp_up_pulses=6, amplitude_ua=2000, polarity=1))
    flat = pe.build_train(params())
    trains = [t0, flat, t1, None]
    ops = pe.ramp_up_ops(trains, [0, 1, 2])
    dacs, bounds = play(pe.start_ops(trains, [0, 1, 2]))
    assert dacs.codes(1) == (400, 400) and dacs.codes(0) == (100, 100)
    dacs, bounds = play(ops, dacs)
    assert len(bounds) == 5 and {pin for pin, _ in bounds} == {board.CH_POS[0]}  # the lead channel's pin
    for j, (_, written) in enumerate(bounds, start=1):
        assert 1 not in written
        if j < 4:
            assert written[0] == pe.pulse_codes(t0, j)
        assert written[2] == pe.pulse_codes(t1, j)
    # 2 channels at one boundary need dac_bus.min_idle_ticks(2)
    need = pe.ns_to_ticks(401_000) + dac_bus.min_idle_ticks(2)
    short = params(period_ns=pe.ticks_to_ns(need - 1), ramp_up_pulses=4)
    L = dict(LIMITS, max_duty_permille=1000, min_period_ns=0)
    a = pe.build_checked(short, L)[0]
    with pytest.raises(pe.Unrealisable) as e:
        pe.ramp_up_ops([a, pe.build_train(dict(short, amplitude_ua=500)), None, None], [0, 1])
    assert e.value.field == "period_ns" and e.value.limit == pe.ticks_to_ns(need)
    pe.ramp_up_ops([a, None, None, None], [0])  # alone it fits


def test_channels_with_different_timing_cannot_ramp_together():
    t0 = pe.build_train(params(ramp_up_pulses=4))
    for other in (params(ramp_up_pulses=4, period_ns=21 * MS), params(ramp_up_pulses=4, phase2_ns=300_000),
                  params(ramp_up_pulses=4, train_delay_ns=MS), params(ramp_up_pulses=4, burst_pulses=3)):
        with pytest.raises(pe.RampMismatch) as e:
            pe.ramp_up_ops([t0, pe.build_train(other), None, None], [0, 1])
        assert e.value.field == "ramp_up_pulses" and e.value.value == 1 and e.value.limit == 0
    # a different trigger input: not the same start
    with pytest.raises(pe.RampMismatch):
        pe.ramp_up_ops([t0, pe.build_train(params(ramp_up_pulses=4)), None, None], [0, 1], [0, 1, 0, 0])
    # a channel without a ramp never constrains the others
    pe.ramp_up_ops([t0, pe.build_train(params(period_ns=33 * MS)), None, None], [0, 1])


def test_op_list_is_bounded_and_the_refusal_names_the_ramp_field():
    trains = [pe.build_train(params(ramp_up_pulses=1000, amplitude_ua=10000)) for _ in range(4)]
    assert len(pe.ramp_up_ops(trains, [0])) <= 3 * 999
    with pytest.raises(pe.Unrealisable) as e:
        pe.ramp_up_ops(trains, [0, 1, 2, 3])  # 9 words per boundary
    k_max = pe.MAX_RAMP_OPS // 9 + 1  # K pulses need K - 1 boundaries of 9 words
    assert (e.value.field, e.value.value, e.value.limit) == ("ramp_up_pulses", 1000, k_max)
    fits = [pe.build_train(params(ramp_up_pulses=k_max, amplitude_ua=10000)) for _ in range(4)]
    assert len(pe.ramp_up_ops(fits, [0, 1, 2, 3])) <= pe.MAX_RAMP_OPS
    over = [pe.build_train(params(ramp_up_pulses=k_max + 1, amplitude_ua=10000)) for _ in range(4)]
    with pytest.raises(pe.Unrealisable):
        pe.ramp_up_ops(over, [0, 1, 2, 3])
    # the soft stop likewise: K pulses + the shutdown = K + 1 boundaries
    downs = [pe.build_train(params(ramp_down_pulses=1000, amplitude_ua=10000)) for _ in range(4)]
    with pytest.raises(pe.Unrealisable) as e:
        pe.ramp_down_ops(downs, [0, 1, 2, 3])
    assert (e.value.field, e.value.limit) == ("ramp_down_pulses", pe.MAX_RAMP_OPS // 9 - 1)
    fits = [pe.build_train(params(ramp_down_pulses=pe.MAX_RAMP_OPS // 9 - 1)) for _ in range(4)]
    assert len(pe.ramp_down_ops(fits, [0, 1, 2, 3])) <= pe.MAX_RAMP_OPS
    assert not isinstance(e.value, pe.RampMismatch)


# ---- the controller -------------------------------------------------------------------------------
def frame(t, seq, body=b""):
    return encode_frame(t, seq, body)


def replies(out):
    d = FrameDecoder()
    return [f for chunk in out for f in d.feed(chunk)]


def setup(*sets):
    out = []
    hal = FakeHal()
    ctl = Controller(hal, out.append)
    for ch, p in enumerate(sets):
        if p is not None:
            ctl.receive(frame(M.SET_PARAMS, 100 + ch, M.encode_params(ch, p)))
            assert replies(out)[-1].type == M.SET_PARAMS | M.RESPONSE, M.decode_nack(replies(out)[-1].body)
    out.clear()
    return ctl, hal, out


def test_start_with_a_ramp_passes_first_and_ramp_ops_to_the_hal():
    ctl, hal, out = setup(params(ramp_up_pulses=4), params())
    ctl.receive(frame(M.START, 1, b"\x03"))
    assert replies(out)[-1].type == M.START | M.RESPONSE
    (start,) = [c for c in hal.calls if c[0] == "start"]
    assert start[:3] == ["start", 3, [0, 0, 0, 0]] and start[3] == 4  # both channels' first codes
    dacs, bounds = play(hal.ops)
    assert dacs.codes(1) == (400, 400)
    assert [w.get(0) for _, w in bounds] == [(200, 200), (300, 300), (400, 400)]
    assert hal.busy  # the ramp is playing: a live change is refused until its mark
    ctl.receive(frame(M.SET_AMPLITUDE, 2, M.encode_set_amplitude(0, 500)))
    assert M.decode_nack(replies(out)[-1].body)["code"] == M.E_DAC_BUSY


def test_start_without_ramp_keeps_the_old_hal_call():
    ctl, hal, out = setup(params())
    ctl.receive(frame(M.START, 1, b"\x01"))
    assert [c for c in hal.calls if c[0] == "start"] == [["start", 1, [0, 0, 0, 0]]]


def test_ramps_with_different_timing_are_refused_before_anything_moves():
    ctl, hal, out = setup(params(ramp_up_pulses=4), params(ramp_up_pulses=4, period_ns=30 * MS))
    ctl.receive(frame(M.START, 1, b"\x03"))
    nack = M.decode_nack(replies(out)[-1].body)
    assert (nack["code"], nack["field"], nack["value"], nack["limit"]) == (M.E_RAMP_TIMING, "ramp_up_pulses", 1, 0)
    assert hal.calls == [] and ctl.state[:2] == [M.ST_IDLE, M.ST_IDLE]  # not even the electrode check
    ctl.receive(frame(M.START, 2, b"\x01"))  # one at a time: fine
    assert replies(out)[-1].type == M.START | M.RESPONSE
    hal.calls.clear()
    ctl.receive(frame(M.START, 3, b"\x02"))  # ... but not while channel 0's ramp plays
    assert M.decode_nack(replies(out)[-1].body)["code"] == M.E_DAC_BUSY and hal.calls == []
    hal.busy = False
    ctl.receive(frame(M.START, 4, b"\x02"))
    assert replies(out)[-1].type == M.START | M.RESPONSE


def test_stop_with_a_ramp_down_plays_it_then_stops_at_the_mark():
    ctl, hal, out = setup(params(ramp_down_pulses=3), params())
    ctl.receive(frame(M.START, 1, b"\x03"))
    hal.calls.clear()
    ctl.receive(frame(M.STOP, 2, b"\x03"))
    assert hal.calls == [["dac_play", 3 * 3 + 3], ["stop", 2]]  # channel 1 (no ramp) stops at once
    dacs, bounds = play(hal.ops)
    assert [w.get(0) for _, w in bounds] == [(300, 300), (200, 200), (100, 100), (0, 0)]
    ctl.poll()
    assert ["stop", 1] not in hal.calls and ctl.state[0] == M.ST_RUNNING  # still ramping down
    hal.busy = False  # the mark after the DAC shutdown
    ctl.poll()
    assert hal.calls[-1] == ["stop", 1]
    hal._running[0] = False
    ctl.poll()
    assert ctl.state[0] == M.ST_IDLE


def test_a_second_stop_ends_the_ramp_down_at_once():
    ctl, hal, out = setup(params(ramp_down_ns=100 * MS))
    ctl.receive(frame(M.START, 1, b"\x01"))
    ctl.receive(frame(M.STOP, 2, b"\x01"))
    assert hal.calls[-1][0] == "dac_play"
    ctl.receive(frame(M.STOP, 3, b"\x01"))
    assert hal.calls[-1] == ["stop", 1]
    hal.busy = False
    ctl.poll()
    assert hal.calls[-1] == ["stop", 1] and len([c for c in hal.calls if c[0] == "stop"]) == 1


def test_stop_while_the_ramp_up_plays_stops_at_once():
    ctl, hal, out = setup(params(ramp_up_pulses=5, ramp_down_pulses=5))
    ctl.receive(frame(M.START, 1, b"\x01"))
    ctl.receive(frame(M.STOP, 2, b"\x01"))
    assert hal.calls[-1] == ["stop", 1] and "dac_play" not in [c[0] for c in hal.calls]


class ClockHal(FakeHal):
    def __init__(self):
        super().__init__()
        self.t = 0

    def time_us(self):
        self.t += 1000
        return self.t


def test_the_deadman_never_ramps_down():
    out = []
    hal = ClockHal()
    ctl = Controller(hal, out.append)
    ctl.receive(frame(M.SET_PARAMS, 1, M.encode_params(0, params(ramp_down_pulses=10))))
    ctl.receive(frame(M.START, 2, b"\x01"))
    ctl.receive(frame(M.LINK, 3, (20).to_bytes(4, "little")))
    for _ in range(40):
        ctl.poll()
    assert ["stop", 1] in hal.calls and not [c for c in hal.calls if c[0] == "dac_play"]
    assert ctl.deadman_trips >= 1


def test_the_fast_dac_write_gives_exactly_the_write_op_words():
    """dac_bus.code_write_op (tables, for ramps of thousands of writes) == write_op(command(...))."""
    for ch in range(board.CHANNELS):
        for b in (False, True):
            for code in range(4096):
                assert dac_bus.code_write_op(ch, b, code) == dac_bus.write_op(ch, dac_bus.command(b, code))


class NoBusHal(FakeHal):
    """A HAL from before the DAC bus (getattr(hal, "dac_busy", None) is None)."""

    dac_play = dac_busy = dac_mark_pulses = None


def test_a_hal_without_a_dac_bus_refuses_ramps_and_never_ramps_down():
    out = []
    hal = NoBusHal()
    ctl = Controller(hal, out.append)
    ctl.receive(frame(M.SET_PARAMS, 1, M.encode_params(0, params(ramp_up_ns=100 * MS)))
                + frame(M.SET_PARAMS, 2, M.encode_params(1, params(ramp_down_pulses=3)))
                + frame(M.START, 3, b"\x01"))
    nack = M.decode_nack(replies(out)[-1].body)
    assert (nack["code"], nack["field"], nack["value"], nack["limit"]) == (M.E_OUT_OF_RANGE, "ramp_up_ns", 100 * MS, 0)
    ctl.receive(frame(M.START, 4, b"\x02") + frame(M.STOP, 5, b"\x02"))
    assert hal.calls[-2:] == [["start", 2, [0, 0, 0, 0]], ["stop", 2]]


@SETTINGS
@given(ramped(), st.integers(0, 3))
def test_op_lists_equal_the_reference_built_from_the_per_pulse_codes(case, ch):
    """The inlined builder gives word for word what pulse_codes / ramp_down_codes and dac_bus's
    update_ops / shutdown_ops say (the slow, obvious construction)."""
    _, t = case
    trains = [None] * 4
    trains[ch] = t
    wait = dac_bus.wait_op(pe.phase2_pin(t, ch))
    total = pe.total_pulses(t)
    k = t.ramp_up_k if total is None else min(t.ramp_up_k, total)
    ref, prev, last = [], pe.pulse_codes(t, 0), 0
    for j in range(1, k):
        ref.append(wait)
        if pe.pulse_codes(t, j) != prev:
            prev = pe.pulse_codes(t, j)
            ref += dac_bus.update_ops(ch, *prev)
            last = len(ref)
    assert pe.ramp_up_ops(trains, [ch]) == (ref[:last] if t.ramp_up_k > 1 else [])
    ref, prev = [], (t.dac_a, t.dac_b)
    for j in range(t.ramp_down_k):
        ref.append(wait)
        if pe.ramp_down_codes(t, j) != prev:
            prev = pe.ramp_down_codes(t, j)
            ref += dac_bus.update_ops(ch, *prev)
    assert pe.ramp_down_ops(trains, [ch]) == ref + [wait] + dac_bus.shutdown_ops(ch)


def test_a_group_ramp_never_outlives_a_train_of_the_group():
    """Ramp ops wait on the first channel's pin and write every channel: no wait may follow the end
    of any of the trains (a HAL may then skip the wait and play the writes at once), and a longer
    train must not stay mid-ramp: refused. Equal finite trains shorter than the ramp: cut to them."""
    short = pe.build_train(params(ramp_up_pulses=10, train_duration_ns=3 * 20 * MS))  # 3 pulses
    long = pe.build_train(params(ramp_up_pulses=10))
    for order in ([short, long], [long, short]):
        with pytest.raises(pe.RampMismatch) as e:
            pe.ramp_up_ops(order + [None, None], [0, 1])
        assert e.value.field == "train_duration_ns" and e.value.value == order.index(short)
    ops = pe.ramp_up_ops([short, short, None, None], [0, 1])
    assert [d[0] for d in map(decode, ops)].count("wait") == 2  # after pulses 0 and 1: pulse 2 is the last


def test_stopping_one_channel_of_a_group_ramp_stops_the_group():
    """The group's ops wait on channel 0's pin: if channel 0 stopped alone, a HAL that skips a wait
    on an ended stream would play channel 1's writes at once, possibly inside its pulse."""
    ctl, hal, out = setup(params(ramp_up_pulses=6), params(ramp_up_pulses=6, amplitude_ua=700))
    ctl.receive(frame(M.START, 1, b"\x03"))
    assert hal.calls[-1][:2] == ["start", 3]
    ctl.receive(frame(M.STOP, 2, b"\x01"))  # only the lead
    assert hal.calls[-1] == ["stop", 3] and ctl._stopping[:2] == [True, True]
    # once the ramp is over, the channels are independent again
    ctl2, hal2, out2 = setup(params(ramp_up_pulses=6), params(ramp_up_pulses=6, amplitude_ua=700))
    ctl2.receive(frame(M.START, 1, b"\x03"))
    hal2.busy = False
    ctl2.poll()
    ctl2.receive(frame(M.STOP, 2, b"\x02"))
    assert hal2.calls[-1] == ["stop", 2]


def test_a_fault_on_a_group_ramp_channel_stops_the_group():
    ctl, hal, out = setup(params(ramp_up_pulses=6), params(ramp_up_pulses=6, amplitude_ua=700))
    ctl.receive(frame(M.START, 1, b"\x03"))
    ctl._monitor_na[1] = 1000
    ctl._sampler = lambda ch, interval: [(1234, 0)] if ch == 1 else []  # 0 V at 1 mA: a short
    for _ in range(5):
        ctl.poll()
    assert ctl.state[1] == M.ST_FAULT and ["stop", 3] in hal.calls


class CountingHal(FakeHal):
    """FakeHal whose pulse counter the test advances."""

    def __init__(self):
        super().__init__()
        self.count = [0] * self.channels

    def pulses(self, ch):
        return self.count[ch]


def _stream(ctl, hal, ch, until, step=1):
    """Advance channel ``ch``'s pulses to ``until``, polling after each step (the DAC bus is never
    'done' meanwhile: hal.busy stays as the test sets it)."""
    while hal.count[ch] < until:
        hal.count[ch] = min(until, hal.count[ch] + step)
        ctl.poll()


def test_a_long_slow_ramp_is_queued_in_chunks_ahead_of_the_pulses():
    out = []
    hal = CountingHal()
    ctl = Controller(hal, out.append)
    p = params(period_ns=50 * MS, ramp_up_pulses=1000, amplitude_ua=10000)  # 20 Hz: 50 s of ramp
    ctl.receive(frame(M.SET_PARAMS, 1, M.encode_params(0, p)) + frame(M.START, 2, b"\x01"))
    start = [c for c in hal.calls if c[0] == "start"][0]
    look = pe.RAMP_LOOKAHEAD_TICKS // pe.ns_to_ticks(50 * MS)  # 20 boundaries = 1 s at 20 Hz
    assert start[4] == 3 * look  # the first chunk only, not 2997 words
    hal.busy = False  # the first chunk's mark came (the SM waits for no more): the ramp is not over
    ctl.receive(frame(M.SET_AMPLITUDE, 3, M.encode_set_amplitude(0, 500)))
    assert M.decode_nack(replies(out)[-1].body)["code"] == M.E_DAC_BUSY
    plays = []
    for until in range(1, 1001):
        n = len(hal.calls)
        _stream(ctl, hal, 0, until)
        plays += [c for c in hal.calls[n:] if c[0] == "dac_play"]
        # never fewer than half a lookahead queued ahead of the pulses (or the whole ramp)
        queued = (len(hal.ops) - 2) // 3  # after the 2 first writes; every boundary writes (4000 > K)
        assert queued - hal.count[0] > look // 2 - 1 or queued == 999, (until, queued)
    assert all(c[1] <= 3 * look for c in plays) and len(plays) >= 999 // look - 1
    first = pe.start_ops(ctl.trains, [0])
    assert hal.ops == first + pe.ramp_up_ops(ctl.trains, [0])  # the chunks add up to the whole ramp
    hal.busy = False
    ctl.poll()
    ctl.receive(frame(M.SET_AMPLITUDE, 4, M.encode_set_amplitude(0, 500)))
    assert replies(out)[-1].type == M.SET_AMPLITUDE | M.RESPONSE


def test_four_channels_ramp_1000_pulses_together_in_chunks():
    """Beyond MAX_RAMP_OPS as one list (9 words a boundary): streamed, it is accepted."""
    out = []
    hal = CountingHal()
    ctl = Controller(hal, out.append)
    for ch in range(4):
        p = params(period_ns=50 * MS, ramp_up_pulses=1000, amplitude_ua=2000 + 1000 * ch, polarity=ch % 2)
        ctl.receive(frame(M.SET_PARAMS, 1 + ch, M.encode_params(ch, p)))
    ctl.receive(frame(M.START, 9, b"\x0f"))
    assert replies(out)[-1].type == M.START | M.RESPONSE
    _stream(ctl, hal, 0, 1000, step=7)
    dacs, bounds = play(hal.ops)
    assert len(bounds) == 999
    for ch in range(4):
        state = pe.pulse_codes(ctl.trains[ch], 0)
        for j, (_, written) in enumerate(bounds, start=1):
            state = written.get(ch, state)
            assert state == pe.pulse_codes(ctl.trains[ch], j)


def test_a_long_soft_stop_is_queued_in_chunks_then_the_stream_stops():
    out = []
    hal = CountingHal()
    ctl = Controller(hal, out.append)
    ctl.receive(frame(M.SET_PARAMS, 1, M.encode_params(0, params(period_ns=50 * MS, ramp_down_pulses=300,
                                                                    amplitude_ua=10000))))
    ctl.receive(frame(M.START, 2, b"\x01"))
    hal.count[0] = 17
    n = len(hal.ops)
    ctl.receive(frame(M.STOP, 3, b"\x01"))
    assert hal.calls[-1] == ["dac_play", 3 * 20]
    _stream(ctl, hal, 0, 17 + 301, step=3)
    assert ["stop", 1] not in hal.calls
    hal.busy = False
    ctl.poll()
    assert hal.calls[-1] == ["stop", 1]
    assert hal.ops[n:] == pe.ramp_down_ops(ctl.trains, [0])
