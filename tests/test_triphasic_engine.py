"""Triphasic pulses (issue 13 item 4): flank, interphase, main phase, interphase, flank.

The flanks have the main phase's opposite direction and share that direction's DAC output; each is
phase2_ns / 2 rounded to the nearest tick (halves up), so both are equal; the flank code balances
phase 1 over both flanks (pulse_engine.balance_code over the realised total). The expected values
here are computed independently (Fractions from the nanoseconds), never from the engine's own helpers.

The DAC bus rule: a wait on the flank pin alone ends after the FIRST flank, inside the pulse; the
engine's boundary_wait_ops wait for the main-phase pin, then the flank pin. Both are run on the
virtual Pico's emulated DAC program at every point of the period.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from test_pulse_engine import runs  # words -> [(ticks, pins)], equal pins merged: what a capture sees

from firmware import board, dac_bus, limits as fw_limits
from firmware import pio_programs as pio
from firmware import pulse_engine as pe
from picostim import paramfile
from picostim.virtual.sim_hal import SimHal
from protocol import params as P

LIMITS = fw_limits.LIMITS
TICK_NS = Fraction(10**9, board.SYS_CLK_HZ)
US = board.SYS_CLK_HZ // 1_000_000
LSB_NA = Fraction(board.DAC_FULL_SCALE_UA * 1000, 4096)


def nearest(x: Fraction) -> int:
    """Nearest integer, halves up (x >= 0)."""
    return int(x + Fraction(1, 2))


def tri(**kw):
    p = dict(shape=1, phase1_ns=100_000, phase2_ns=200_000, period_ns=2_000_000, amplitude_ua=1000)
    p.update(kw)
    return P.complete(p)


@st.composite
def triphasic_params(draw):
    mp = LIMITS["min_phase_ns"]
    p1 = draw(st.one_of(st.integers(mp, 2000), st.integers(mp, 500_000)))
    p2 = draw(st.one_of(st.integers(2 * mp, 4000), st.integers(2 * mp, 1_000_000)))
    ip = draw(st.one_of(st.just(0), st.integers(0, 50_000)))
    rec = draw(st.one_of(st.just(0), st.integers(mp, 100_000)))
    pol = draw(st.integers(0, 1))
    amp = draw(st.one_of(st.integers(1, 100), st.integers(1, LIMITS["max_amplitude_ua"] * p2 // max(p1, p2))))
    length = p1 + 2 * max(ip, board.DEAD_TIME_NS) + p2 + (board.DEAD_TIME_NS + rec if rec else 0) + 16
    period = draw(st.integers(max(LIMITS["min_period_ns"], 2 * (p1 + p2 + 16)), 2 * length + 10**6))
    period = max(period, length + board.DEAD_TIME_NS + 100)
    p = tri(phase1_ns=p1, phase2_ns=p2, interphase_ns=ip, recovery_ns=rec, polarity=pol, amplitude_ua=amp,
            period_ns=period, electrode_area_um2=10**8)
    _t, v = pe.build_checked(p, LIMITS)
    assume(v is None)  # only what the firmware accepts (a flank code beyond the DAC: refused)
    return p


@settings(max_examples=300, deadline=None)
@given(triphasic_params())
def test_triphasic_words_are_flank_gap_main_gap_flank_to_the_tick(p):
    train = pe.build_train(p)
    flank = nearest(Fraction(p["phase2_ns"], 2) / TICK_NS)
    main = nearest(Fraction(p["phase1_ns"]) / TICK_NS)
    gap = max(nearest(Fraction(p["interphase_ns"]) / TICK_NS), nearest(Fraction(board.DEAD_TIME_NS) / TICK_NS))
    first, second = (pe.NEG, pe.POS) if p["polarity"] == 0 else (pe.POS, pe.NEG)
    want = [(flank, second | pe.SYNC), (gap, pe.SYNC), (main, first | pe.SYNC), (gap, pe.SYNC),
            (flank, second | pe.SYNC)]
    if p["recovery_ns"]:
        dead = nearest(Fraction(board.DEAD_TIME_NS) / TICK_NS)
        want += [(dead, pe.IDLE), (nearest(Fraction(p["recovery_ns"]) / TICK_NS), pe.RECOVERY)]
    assert runs(train.pulse) == want
    for w in train.pulse:
        assert not (w & pe.POS and w & pe.NEG)
    r = train.realised
    assert r["shape"] == 1 and r["flank"] == flank and r["phase2"] == 2 * flank and r["phase1"] == main
    assert r["interphase"] == gap and r["pulse"] == sum(t for t, _ in want)
    # whole groups: the pulse, then idle to the period
    for g, _n in train.runs:
        assert pe.words_ticks(g) in (train.period_ticks, train.period_ticks + r["interburst"])


@settings(max_examples=300, deadline=None)
@given(triphasic_params())
def test_triphasic_flank_code_balances_phase1_over_both_flanks(p):
    train = pe.build_train(p)
    code1 = max(1, nearest(Fraction(p["amplitude_ua"] * 1000) / LSB_NA))
    flank = nearest(Fraction(p["phase2_ns"], 2) / TICK_NS)
    main = nearest(Fraction(p["phase1_ns"]) / TICK_NS)
    code2 = max(1, nearest(Fraction(code1 * main, 2 * flank)))
    r = train.realised
    assert (r["dac_code1"], r["dac_code2"]) == (code1, code2)
    # one output for both flanks: A (POS) when the flanks are anodic (cathodic main phase)
    assert (train.dac_a, train.dac_b) == ((code2, code1) if p["polarity"] == 0 else (code1, code2))
    # charge left per pulse after rounding: at most half an LSB over the flanks (one at the 1-LSB floor)
    q = code1 * main - code2 * 2 * flank  # code x ticks
    assert abs(q) <= (Fraction(1) if code2 == 1 and code1 * main < 2 * flank else Fraction(1, 2)) * 2 * flank
    assert r["residual_fc"] == nearest(abs(q) * LSB_NA / 1000 * TICK_NS) * (1 if q >= 0 else -1)
    # ramp pulses: every step balanced the same way over both flanks
    for c1 in (1, code1 // 3, code1):
        a, b = pe._codes(train, c1)
        c1_, c2_ = (b, a) if p["polarity"] == 0 else (a, b)
        assert c2_ == max(1, nearest(Fraction(max(1, c1) * main, 2 * flank)))


def test_odd_tick_phase2_gives_two_equal_flanks_rounded_half_up():
    t = pe.build_train(tri(phase2_ns=1000, phase1_ns=1000))  # 125 ticks: 62.5 per flank -> 63 each, 126 in all
    assert (t.realised["flank"], t.realised["phase2"]) == (63, 126)
    t = pe.build_train(tri(phase2_ns=1016, phase1_ns=1000))  # 127 ticks: 63.5 -> 64 each
    assert t.realised["flank"] == 64
    t = pe.build_train(tri(phase2_ns=1008, phase1_ns=1000))  # 126 ticks: 63 each, exact
    assert (t.realised["flank"], t.realised["phase2"]) == (63, 126)


def test_biphasic_is_unchanged_by_the_shape_field():
    b = pe.build_train(P.complete(dict(phase1_ns=100_000, phase2_ns=200_000, period_ns=2_000_000)))
    assert b.shape == 0 and b.realised["flank"] == 0
    assert [(t, pins) for t, pins in runs(b.pulse)] == [(12500, pe.NEG | pe.SYNC), (125, pe.SYNC),
                                                           (25000, pe.POS | pe.SYNC)]
    assert pe.boundary_wait_ops(b, 0) == [dac_bus.wait_op(board.CH_POS[0])]
    assert pe.amplitude_ops(b, 1) == [dac_bus.wait_op(board.CH_POS[1])] + dac_bus.update_ops(1, b.dac_a, b.dac_b)


def test_validation_of_the_shape():
    v = P.validate(tri(shape=2), LIMITS)
    assert v is not None and v.field == "shape" and v.limit == 1
    v = P.validate(tri(phase2_ns=2 * LIMITS["min_phase_ns"] - 1, phase1_ns=80, amplitude_ua=10), LIMITS)
    assert v is not None and v.field == "phase2_ns" and v.relation == ">=" and v.limit == 2 * LIMITS["min_phase_ns"]
    assert P.validate(tri(phase2_ns=2 * LIMITS["min_phase_ns"], phase1_ns=80, amplitude_ua=10), LIMITS) is None
    # the second interphase counts in the pulse length: a period that fits the biphasic pulse
    # (+ idle) but not the triphasic one is refused
    bi = dict(phase1_ns=10_000, phase2_ns=10_000, interphase_ns=100_000, period_ns=150_000)
    assert P.validate(P.complete(bi), LIMITS) is None
    v = P.validate(tri(**bi), LIMITS)
    assert v is not None and v.field == "period_ns" and v.relation == ">="
    assert v.limit == 10_000 + 2 * 100_000 + 10_000 + max(board.DEAD_TIME_NS, LIMITS["min_phase_ns"])
    # host and firmware share it: build_checked refuses the same
    _t, v2 = pe.build_checked(tri(**bi), LIMITS)
    assert v2 is not None and v2.field == "period_ns"


def test_paramfile_shape_key():
    ps = paramfile.loads('phase1_us = 100\nphase2_us = 200\nfrequency_hz = 100\nshape = "triphasic"\n')
    assert ps.params["shape"] == 1
    ps = paramfile.loads('phase1_us = 100\nfrequency_hz = 100\nshape = "Biphasic"\n')
    assert ps.params["shape"] == 0
    assert paramfile.loads('phase1_us = 100\nfrequency_hz = 100\n').params["shape"] == 0
    for bad in ('"tri"', "1", "true"):
        with pytest.raises(paramfile.ParamFileError) as exc:
            paramfile.loads('phase1_us = 100\nfrequency_hz = 100\nshape = %s\n' % bad)
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith("shape = ") and '"biphasic", "triphasic"' in msg
    assert paramfile.requested_us(tri())["shape"] == "triphasic"


def test_wait_ops_of_a_triphasic_train():
    for pol, main, flank in ((0, board.CH_NEG, board.CH_POS), (1, board.CH_POS, board.CH_NEG)):
        t = pe.build_train(tri(polarity=pol))
        for ch in range(board.CHANNELS):
            assert pe.boundary_wait_ops(t, ch) == [dac_bus.wait_op(main[ch]), dac_bus.wait_op(flank[ch])]
            assert pe.amplitude_ops(t, ch) == pe.boundary_wait_ops(t, ch) + dac_bus.update_ops(ch, t.dac_a, t.dac_b)


@pytest.mark.parametrize("down", [False, True])
def test_triphasic_ramp_ops_wait_main_then_flank_per_boundary(down):
    t = pe.build_train(tri(ramp_up_pulses=0 if down else 6, ramp_down_pulses=4 if down else 0,
                           train_duration_ns=0))
    ops = pe.ramp_down_ops([t], [0]) if down else pe.ramp_up_ops([t], [0])
    waits = pe.boundary_wait_ops(t, 0)
    want: list = []
    if down:
        for j in range(4):
            want += waits + dac_bus.update_ops(0, *pe.ramp_down_codes(t, j))
        want += waits + dac_bus.shutdown_ops(0)
    else:
        for j in range(1, 6):
            want += waits + dac_bus.update_ops(0, *pe.pulse_codes(t, j))
    assert ops == want


def test_a_running_channel_keeps_its_shape_and_a_live_change_waits_main_then_flank():
    """SET_PARAMS on a running channel may not switch biphasic <-> triphasic (the DAC bus's waits per
    boundary follow the shape), like a polarity change; SET_AMPLITUDE plays boundary_wait_ops."""
    from test_set_amplitude import ask, nack, replies, running

    from protocol import messages as M
    from protocol.framing import encode_frame

    bi = dict(phase1_ns=200_000, phase2_ns=200_000, period_ns=20_000_000, amplitude_ua=1000)
    ctl, hal, out = running(P.complete(bi))
    ctl.receive(encode_frame(M.SET_PARAMS, 30, M.encode_params(0, P.complete(dict(bi, shape=1)))))
    assert nack(replies(out)[-1])[:2] == (M.E_BAD_STATE, "shape")
    assert hal.calls == []
    ctl, hal, out = running(P.complete(dict(bi, shape=1)), ch=1)
    r = ask(ctl, out, 1, 2000)
    assert r.type == M.SET_AMPLITUDE | M.RESPONSE
    t = pe.build_train(P.complete(dict(bi, shape=1, amplitude_ua=2000)))
    want = pe.boundary_wait_ops(t, 1) + dac_bus.update_ops(1, t.dac_a, t.dac_b)
    assert hal.calls[-1] == ["dac_play", len(want)] and hal.ops[-len(want):] == want
    assert want[:2] == [dac_bus.wait_op(board.CH_NEG[1]), dac_bus.wait_op(board.CH_POS[1])]


# ------------------------------------------------------------- the DAC bus on the emulated pins
def _tri_pulses(hal, ch, train):
    """[(start, end)] of every triphasic pulse from the pins: flank rise .. second flank's fall."""
    flank = board.CH_POS[ch] if train.first == pe.NEG else board.CH_NEG[ch]
    e = hal.system.edges(flank)
    return list(zip(e[0::4], e[3::4]))


def _cs_rises(hal, ch):
    return hal.system.edges(board.CH_DAC_CS[ch])[1::2]


def _sweep(waits_of, step_us=7):
    """dac_play(waits + writes) started at offsets all over the period; per offset the CS rises'
    position: ('ok', pulse index after which they land, mark_pulses) or ('inside', ...)."""
    hal = SimHal(channels=1)
    t = pe.build_train(tri(phase1_ns=60_000, phase2_ns=80_000, interphase_ns=20_000, period_ns=400_000))
    hal.start([t], 1, [0])
    period = t.period_ticks
    out = []
    for k, off_us in enumerate(range(3, 400, step_us)):
        now = hal.system.now - hal.train_start[0]
        hal.advance_cycles(period - now % period + off_us * US)  # off_us into a period
        n_cs = len(_cs_rises(hal, 0))
        hal.dac_play(waits_of(t) + dac_bus.update_ops(0, 300 + k, 150 + k))
        hal.advance_cycles(3 * period)
        assert not hal.dac_busy()
        pulses = _tri_pulses(hal, 0, t)
        rises = _cs_rises(hal, 0)[n_cs:]
        assert len(rises) == 2
        where = []
        for r in rises:
            inside = [i for i, (s, e) in enumerate(pulses) if s <= r <= e]
            after = [i for i, (_s, e) in enumerate(pulses) if e < r]
            where.append(("inside", inside[0]) if inside else ("ok", len(after)))
        out.append((off_us, where, hal.dac_mark_pulses(0)))
    return out


def test_one_wait_on_the_flank_pin_can_land_inside_a_triphasic_pulse():
    """The hazard the engine's rule avoids (and proof that the sweep below can fail)."""
    res = _sweep(lambda t: [dac_bus.wait_op(pe.phase2_pin(t, 0))], step_us=13)
    assert any(w[0][0] == "inside" or w[1][0] == "inside" for _o, w, _m in res)


def test_boundary_wait_ops_land_between_pulses_wherever_they_start():
    res = _sweep(lambda t: pe.boundary_wait_ops(t, 0))
    assert len(res) > 50
    for off_us, where, mark in res:
        assert where[0][0] == where[1][0] == "ok", (off_us, where)
        assert where[0][1] == where[1][1] == mark, (off_us, where, mark)  # mark_pulses: first new pulse
