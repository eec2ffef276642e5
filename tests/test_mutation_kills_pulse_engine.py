"""pulse_engine's safety functions pinned one condition at a time (mutation testing, issue 15).

check_word's two refusals and make_word's two range limits are each tested on their own, so
neither is backed only by the other; dac_code's 1-LSB floor for a sub-LSB request is exact.
"""
from __future__ import annotations

import pytest

from firmware import pulse_engine as pe

LSB_UA = 2.5  # 10.24 mA full scale / 4096 codes (board.DAC_FULL_SCALE_UA)


def test_dac_code_rounds_to_nearest_with_a_one_lsb_floor():
    assert pe.dac_code(0) == 0
    assert pe.dac_code(-3) == -1   # negative requests are refused by validate, never floored up
    assert pe.dac_code(1) == 1     # 0.4 LSB: delivered as 1 LSB (2.5 µA), not 2
    assert pe.dac_code(2) == 1     # 0.8 LSB
    assert pe.dac_code(3) == 1     # 1.2 LSB
    assert pe.dac_code(4) == 2     # 1.6 LSB
    assert pe.dac_code(5) == 2     # exactly 2 LSB
    assert pe.dac_code(10_240) == 4096
    for ua in range(2, 200):  # from 0.8 LSB up: the nearest code
        assert abs(pe.dac_code(ua) * LSB_UA - ua) <= LSB_UA / 2


def test_code_to_na_and_balance_are_exact():
    assert pe.code_to_na(1) == 2500
    assert pe.code_to_na(4096) == 10_240_000
    assert pe.balance_code(100, 30, 60) == 50
    assert pe.balance_code(3, 1, 2) == 2  # 1.5 rounds away from zero
    assert pe.residual_fc(100, 30, 50, 60) == 0
    # one code * one tick = 2.5 µA * 8 ns = 20 fC
    assert pe.residual_fc(1, 1, 0, 1) == 20
    assert pe.residual_fc(0, 1, 1, 1) == -20


def test_round_div_halves_away_from_zero():
    assert pe._round_div(5, 2) == 3
    assert pe._round_div(-5, 2) == -3
    assert pe._round_div(4, 3) == 1
    assert pe._round_div(-4, 3) == -1
    assert pe._round_div(0, 7) == 0


def test_check_word_refuses_pos_and_neg_together_alone():
    ok = (5 << pe.COUNT_SHIFT) | pe.POS
    assert pe.check_word(ok) == ok
    assert pe.check_word((5 << pe.COUNT_SHIFT) | pe.NEG | pe.SYNC | pe.RECOVERY)
    with pytest.raises(pe.UnsafeWord, match="POS and NEG"):
        pe.check_word((5 << pe.COUNT_SHIFT) | pe.POS | pe.NEG)  # in range: only the pin check refuses


def test_check_word_refuses_out_of_32_bits_alone():
    top = 0xFFFFFFF0 | pe.POS
    assert pe.check_word(top) == top           # the largest legal word
    assert pe.check_word(0) == 0
    with pytest.raises(pe.UnsafeWord, match="32 bits"):
        pe.check_word(1 << 32)                  # pins 0: only the range check refuses
    with pytest.raises(pe.UnsafeWord, match="32 bits"):
        pe.check_word(-16)                      # negative, pins 0
    with pytest.raises(pe.UnsafeWord, match="32 bits"):
        pe.check_word((1 << 33) | pe.POS)


def test_make_word_range_limits_each():
    lo, hi = pe.OVERHEAD, pe.MAX_SEGMENT_TICKS
    assert pe.decode_word(pe.make_word(lo, pe.POS)) == (lo, pe.POS)
    assert pe.decode_word(pe.make_word(hi, pe.NEG)) == (hi, pe.NEG)
    assert pe.make_word(lo, 0) == 0
    assert pe.make_word(lo + 1, pe.SYNC) == (1 << pe.COUNT_SHIFT) | pe.SYNC
    with pytest.raises(pe.UnsafeWord, match="not representable"):
        pe.make_word(lo - 1, 0)
    with pytest.raises(pe.UnsafeWord, match="not representable"):
        pe.make_word(hi + 1, 0)
    with pytest.raises(pe.UnsafeWord, match="POS and NEG"):
        pe.make_word(lo, pe.POS | pe.NEG)


def test_words_ticks_and_decode_round_trip():
    words = [pe.make_word(t, p) for t, p in ((pe.OVERHEAD, 0), (1000, pe.POS), (pe.MAX_SEGMENT_TICKS, 0))]
    assert pe.words_ticks(words) == pe.OVERHEAD + 1000 + pe.MAX_SEGMENT_TICKS
    assert pe.words_ticks([]) == 0


def test_ns_ticks_conversions_round_half_up():
    assert pe.ns_to_ticks(4) == 1     # half a tick rounds up
    assert pe.ns_to_ticks(3) == 0
    assert pe.ns_to_ticks(12) == 2
    assert pe.ticks_to_ns(1) == 8
    assert pe.ticks_to_ns(pe.OVERHEAD) == pe.min_segment_ns() == 8 * pe.OVERHEAD


# ---- build_train / expand / ramp: values pinned exactly ------------------------------------------
from protocol import params as P  # noqa: E402

TICK_NS = 8


def train(**kw):
    return pe.build_train(P.complete(kw))


def test_ticks_to_ns_is_an_exact_int():
    for t in (0, 1, 5, 125_000, 2**28 + 4):
        v = pe.ticks_to_ns(t)
        assert type(v) is int and v == t * TICK_NS


def test_unrealisable_names_field_value_and_minimum():
    with pytest.raises(pe.Unrealisable) as ei:
        train(phase1_ns=30)  # 3.75 ticks -> 4 < one 5-tick segment
    assert (ei.value.field, ei.value.value) == ("phase1_ns", 30)
    assert str(ei.value) == "phase1_ns: 30 ns is below the minimum segment of 40 ns"


def test_group_must_end_idle():
    pos = pe.make_word(10, pe.POS)
    idle = pe.make_word(10, pe.IDLE)
    with pytest.raises(pe.UnsafeWord, match="^group does not end idle$"):
        pe.group_words([pos], 0)
    with pytest.raises(pe.UnsafeWord, match="group does not end idle"):
        pe.group_words([], 0)
    g = pe.group_words([pos, idle], 0)  # ends idle; the word before it may drive
    assert g == [pos, idle]
    assert len(pe.group_words([pos], 100)) == pe.MIN_GROUP_WORDS


@pytest.mark.parametrize("extra_ticks,cycles", [(0, 3), (1, 4), (-1, 3)])
def test_train_duration_one_tick_past_a_cycle_boundary_plays_one_more_cycle(extra_ticks, cycles):
    period = 125_000  # 1 ms
    t = train(period_ns=1_000_000, train_duration_ns=3_000_000 + extra_ticks * TICK_NS)
    assert t.repeats == cycles
    assert t.realised["train_duration"] == cycles * period
    segs = pe.expand(t, 10**6)
    words = pe.cycle_words(t)
    assert len(segs) == cycles * len(words)          # the stream ends after `repeats` cycles
    starts = [s for s, pins in segs if pins & (pe.NEG | pe.POS) and pins & pe.SYNC and s % period == 0]
    assert starts == [k * period for k in range(cycles)]


def test_expand_plays_the_delay_then_the_pulses():
    t = train(period_ns=1_000_000, train_delay_ns=1_000_000, train_duration_ns=1_000_000)
    assert pe.expand(t, 1) == [(0, pe.IDLE)]
    first = pe.expand(t, 3)
    assert first[0] == (0, pe.IDLE)
    assert first[1] == (125_000, pe.NEG | pe.SYNC)         # cathodic first, after exactly 1 ms
    assert first[2] == (125_000 + 25_000, pe.SYNC)         # 200 µs phase 1 = 25 000 ticks
    # a delay longer than one word (2^28 + 4 ticks): two idle words, the pulse after the sum
    long = train(period_ns=1_000_000, train_delay_ns=3_000_000_000, train_duration_ns=1_000_000)
    assert len(long.delay) == 2
    segs = pe.expand(long, 3)
    assert [p for _, p in segs] == [pe.IDLE, pe.IDLE, pe.NEG | pe.SYNC]
    assert segs[2][0] == 375_000_000
    assert segs[1][0] == (long.delay[0] >> pe.COUNT_SHIFT) + pe.OVERHEAD
    assert len(pe.expand(long, 1)) == 1


def test_ramp_codes_are_linear_in_time_and_balanced():
    # 1 ms period, 5 ms ramp: K = 5 pulses start before 5 ms; pulse k gets (k + 1) / 5 of the
    # amplitude, so pulses 0..3 are reduced and pulse 4 has the full one
    t = train(period_ns=1_000_000, amplitude_ua=1000, ramp_up_ns=5_000_000)
    assert pe.dac_code(1000) == 400 and (t.dac_a, t.dac_b) == (400, 400)
    assert pe.ramp_pulses(t) == 5
    assert [pe.ramp_codes(t, k) for k in range(6)] == [(80, 80), (160, 160), (240, 240), (320, 320),
                                                       (400, 400), (400, 400)]
    # unbalanced phases: phase 2 twice phase 1 carries half the code; anodic first swaps A/B
    a = train(period_ns=1_000_000, amplitude_ua=1000, phase2_ns=400_000, polarity=1, ramp_up_ns=5_000_000)
    assert pe.ramp_codes(a, 0) == (80, 40) and pe.ramp_codes(a, 9) == (400, 200)
    c = train(period_ns=1_000_000, amplitude_ua=1000, phase2_ns=400_000, polarity=0, ramp_up_ns=5_000_000)
    assert pe.ramp_codes(c, 0) == (40, 80)


def test_ramp_codes_never_drop_to_zero():
    # 1 LSB amplitude over a 10 ms ramp: 0.1 LSB rounds to 0 but is played as 1; phase 2 three times
    # longer balances to 1/3 LSB -> 0, also played as 1
    t = train(period_ns=1_000_000, amplitude_ua=3, phase2_ns=600_000, ramp_up_ns=10_000_000)
    assert t.code1 == 1
    assert pe.ramp_codes(t, 0) == (1, 1)


def test_ramp_pulses_edges():
    assert pe.ramp_pulses(train(period_ns=1_000_000)) == 0                         # no ramp
    assert pe.ramp_codes(train(period_ns=1_000_000), 0) == (400, 400)
    # K = pulses starting before the ramp's end; K = 1 is the full amplitude from pulse 0 (no ramp)
    assert pe.ramp_pulses(train(period_ns=1_000_000, ramp_up_ns=500_000)) == 1    # shorter than a period
    assert pe.ramp_codes(train(period_ns=1_000_000, ramp_up_ns=500_000), 0) == (400, 400)
    assert pe.ramp_pulses(train(period_ns=1_000_000, ramp_up_ns=1_000_008)) == 2
    assert pe.ramp_codes(train(period_ns=1_000_000, ramp_up_ns=1_000_008), 0) == (200, 200)
    assert pe.ramp_pulses(train(period_ns=1_000_000, ramp_up_ns=1_000_000)) == 1
    # in pulses: taken as given
    assert pe.ramp_pulses(train(period_ns=1_000_000, ramp_up_pulses=3)) == 3


def test_build_train_refusals_name_the_field():
    for kw, field, msg in ((dict(polarity=2), "polarity", "polarity: not 0 or 1"),
                           (dict(trigger=5), "trigger", "trigger: not 0..4"),
                           (dict(phase1_ns=0), "phase1_ns", "phase1_ns: 0 ns is below the minimum segment of 40 ns"),
                           (dict(phase2_ns=0), "phase2_ns", "phase2_ns: 0 ns is below the minimum segment of 40 ns")):
        with pytest.raises(pe.Unrealisable) as ei:
            train(**kw)
        assert (ei.value.field, ei.value.value, str(ei.value)) == (field, kw[field], msg)
    # the period must leave the dead time (1 µs) of idle after the 400 µs + 1 µs pulse
    assert train(period_ns=402_000).period_ticks == 50_250
    with pytest.raises(pe.Unrealisable) as ei:
        train(period_ns=401_992)
    assert (ei.value.field, ei.value.value) == ("period_ns", 401_992)
    assert str(ei.value) == "period_ns: 401992 ns leaves less than 1000 ns idle after the pulse"


def test_append_segment_piece_count_and_refusal():
    M = pe.MAX_SEGMENT_TICKS
    for ticks, n in ((M, 1), (M - 1, 1), (M + 1, 2), (2 * M, 2), (2 * M + 1, 3)):
        w = pe.append_segment([], ticks, 0)
        assert len(w) == n and pe.words_ticks(w) == ticks, ticks
    w = pe.append_segment([], 12, 0, 9)  # at most ticks // OVERHEAD = 2 pieces of >= 5 ticks
    assert [pe.decode_word(x)[0] for x in w] == [6, 6]
    assert pe.append_segment([], 0, 0) == []
    with pytest.raises(ValueError, match="^segment of 3 ticks is shorter than 5$"):
        pe.append_segment([], 3, 0)


def test_interburst_only_with_bursts_and_a_one_tick_duration_is_one_cycle():
    plain = train(period_ns=1_000_000, interburst_ns=5_000_000)
    assert plain.realised["interburst"] == 0 and plain.cycle_ticks == 125_000
    one = train(period_ns=1_000_000, burst_pulses=1, interburst_ns=5_000_000)
    assert one.realised["interburst"] == 625_000 and one.cycle_ticks == 750_000
    assert train(period_ns=1_000_000, train_duration_ns=8).repeats == 1
    assert train(period_ns=1_000_000, train_duration_ns=0).repeats == 0  # 0 = until stopped


# ---- build_checked: every refusal path, with limits that let each one be reached -------------------
def _v(v):
    return None if v is None else (v.field, v.value, v.limit, v.relation)


def test_build_checked_returns_validates_refusal_first():
    from firmware.limits import LIMITS
    t, v = pe.build_checked(P.complete({"amplitude_ua": LIMITS["max_amplitude_ua"] + 1}), LIMITS)
    assert t is None and _v(v) == ("amplitude_ua", LIMITS["max_amplitude_ua"] + 1, LIMITS["max_amplitude_ua"], "<=")


def test_build_checked_maps_an_engine_refusal_with_its_own_limit():
    from firmware.limits import LIMITS
    # a 4 ns phase passes limits that allow it, but the PIO's shortest segment is 40 ns; the amplitude
    # limit (10 µA) is below that refusal's limit (40) and must not replace it
    lim = dict(LIMITS, min_phase_ns=1, max_amplitude_ua=10)
    p = P.complete({"phase1_ns": 4, "amplitude_ua": 5})
    assert P.validate(p, lim) is None
    t, v = pe.build_checked(p, lim)
    assert t is None and _v(v) == ("phase1_ns", 4, 40, ">=")


def test_build_checked_phase2_beyond_the_dac_names_the_lower_amplitude_limit():
    from firmware.limits import LIMITS
    # phase 1 four times phase 2: 2559 µA rounds to code 1024, whose balancing phase 2 is code 4096
    p = P.complete({"amplitude_ua": 2559, "phase1_ns": 800_000, "phase2_ns": 200_000})
    with pytest.raises(pe.Unrealisable) as ei:
        pe.build_train(p)
    assert (ei.value.field, ei.value.value, ei.value.limit, ei.value.relation) == ("phase2_amplitude_ua", 10240, 10238, "<=")
    lim = dict(LIMITS, max_amplitude_ua=10236)  # exact phase 2: 10236 µA, allowed by validate
    assert P.validate(p, lim) is None
    assert _v(pe.build_checked(p, lim)[1]) == ("phase2_amplitude_ua", 10240, 10236, "<=")
    lim = dict(LIMITS, max_amplitude_ua=20_000)  # a limit above the DAC: the DAC's own limit
    assert _v(pe.build_checked(p, lim)[1]) == ("phase2_amplitude_ua", 10240, 10238, "<=")


def test_build_checked_phase2_after_dac_rounding():
    from firmware.limits import LIMITS
    # 1002 µA rounds to code 401 = 1002.5 µA: phase 2 (equal phases) is realised as 1003 µA
    t, v = pe.build_checked(P.complete({"amplitude_ua": 1002}), dict(LIMITS, max_amplitude_ua=1002))
    assert t is None and _v(v) == ("phase2_amplitude_ua", 1003, 1002, "<=")
    t, v = pe.build_checked(P.complete({"amplitude_ua": 1000}), dict(LIMITS, max_amplitude_ua=1000))
    assert v is None and t.realised["amplitude2_ua"] == 1000  # exactly at the limit: accepted


def test_build_checked_time_ramp_longer_than_the_pulse_limit():
    from firmware.limits import LIMITS
    lim = dict(LIMITS, max_ramp_pulses=5)
    for name in ("ramp_up_ns", "ramp_down_ns"):
        p = P.complete({"period_ns": 1_000_000, name: 10_000_000})
        assert P.validate(p, lim) is None
        t, v = pe.build_checked(p, lim)
        assert t is None and _v(v) == (name, 10_000_000, 5_000_000, "<=")  # pulse 5 starts at 5 ms
    t, v = pe.build_checked(P.complete({"period_ns": 1_000_000, "ramp_up_ns": 4_000_000}), lim)
    assert v is None and t is not None and t.ramp_up_k == 4


def test_unrealisable_defaults_and_fields():
    e = pe.Unrealisable("phase1_ns", 7, "too short")
    assert (e.field, e.value, e.limit, e.relation, str(e)) == ("phase1_ns", 7, 0, "<=", "phase1_ns: too short")
    e = pe.Unrealisable("period_ns", 9, "m", 40, ">=")
    assert (e.limit, e.relation) == (40, ">=")


def test_pulses_starting_before_edges():
    t = train(period_ns=1_000_000, burst_pulses=3, interburst_ns=5_000_000)  # cycle 8 ms: pulses at 0, 1, 2 ms
    tick_ms = 125_000
    assert pe.pulses_starting_before(t, 0) == 0
    assert pe.pulses_starting_before(t, -5) == 0
    assert pe.pulses_starting_before(t, 1) == 1  # pulse 0 starts at tick 0
    assert pe.pulses_starting_before(t, tick_ms) == 1 and pe.pulses_starting_before(t, tick_ms + 1) == 2
    assert pe.pulses_starting_before(t, 4 * tick_ms) == 3  # inside the interburst: the burst's 3, not 4
    assert pe.pulses_starting_before(t, 8 * tick_ms) == 3 and pe.pulses_starting_before(t, 8 * tick_ms + 1) == 4


def test_unsafe_word_messages_exact():
    with pytest.raises(pe.UnsafeWord, match=r"^POS and NEG in one word: 0x%x$" % (pe.POS | pe.NEG)):
        pe.check_word(pe.POS | pe.NEG)
    with pytest.raises(pe.UnsafeWord, match=r"^word out of 32 bits$"):
        pe.check_word(1 << 32)
    with pytest.raises(pe.UnsafeWord, match=r"^word out of 32 bits$"):
        pe.check_word(-16)
    with pytest.raises(pe.UnsafeWord, match=r"^segment of %d ticks not representable$" % (pe.OVERHEAD - 1)):
        pe.make_word(pe.OVERHEAD - 1, pe.IDLE)


# ---- triphasic shape in build_train (the selection's other tests build biphasic trains only) -------
def test_triphasic_pulse_words_and_realised_values():
    t = train(shape=1)  # 200 µs phases: flanks of 100 µs each around the 200 µs main phase
    assert [pe.decode_word(w) for w in t.pulse] == [
        (12500, pe.POS | pe.SYNC), (125, pe.SYNC), (25000, pe.NEG | pe.SYNC), (125, pe.SYNC), (12500, pe.POS | pe.SYNC)]
    r = t.realised
    assert (r["shape"], r["flank"], r["phase2"], r["phase1"], r["interphase"], r["pulse"]) == (1, 12500, 25000, 25000, 125, 50250)
    assert (t.code1, t.dac_a, t.dac_b, t.phase2_ticks, r["residual_fc"]) == (400, 400, 400, 25000, 0)
    # anodic first, a phase 2 whose half is 12500.75 ticks (nearest: 12501), interphase and recovery
    t = train(shape=1, phase2_ns=200_012, interphase_ns=50_000, recovery_ns=100_000, polarity=1)
    assert [pe.decode_word(w) for w in t.pulse] == [
        (12501, pe.NEG | pe.SYNC), (6250, pe.SYNC), (25000, pe.POS | pe.SYNC), (6250, pe.SYNC), (12501, pe.NEG | pe.SYNC),
        (125, pe.IDLE), (12500, pe.RECOVERY)]
    r = t.realised
    assert (r["flank"], r["phase2"], r["pulse"], t.phase2_ticks) == (12501, 25002, 75127, 25002)
    assert r["residual_fc"] == 400 * (25000 - 25002) * 20  # one code for one tick is 20 fC


def test_triphasic_flank_below_one_segment_is_refused():
    with pytest.raises(pe.Unrealisable) as ei:
        train(shape=1, phase2_ns=64, amplitude_ua=10)  # flanks of 4 ticks (32 ns) < 5
    e = ei.value
    assert (e.field, e.value, e.limit, e.relation) == ("phase2_ns", 64, 80, ">=")
    assert str(e) == "phase2_ns: a triphasic flank of 32 ns is below the minimum segment of 40 ns"
    t = train(shape=1, phase2_ns=80, amplitude_ua=2, phase1_ns=40)  # flanks of exactly 5 ticks
    assert t.realised["flank"] == 5 and [pe.decode_word(w)[0] for w in t.pulse][0] == 5
    b = train()  # biphasic: no flank
    assert (b.realised["shape"], b.realised["flank"]) == (0, 0)


def test_build_train_refusals_carry_limit_and_relation():
    cases = [(dict(shape=2), ("shape", 2, 1, "<=")), (dict(polarity=2), ("polarity", 2, 1, "<=")),
             (dict(trigger=5), ("trigger", 5, 4, "<=")),
             (dict(period_ns=401_992), ("period_ns", 401_992, 402_000, ">="))]  # 50125-tick pulse + 125 idle
    for kw, want in cases:
        with pytest.raises(pe.Unrealisable) as ei:
            train(**kw)
        e = ei.value
        assert (e.field, e.value, e.limit, e.relation) == want, kw


# ---- custom sequences: start_ops / first_codes / sequence_writer -----------------------------------
from firmware import dac_bus  # noqa: E402
from firmware.limits import LIMITS  # noqa: E402

SEQ_MS = 1_000_000
SEQ_BASE = dict(phase1_ns=100_000, phase2_ns=100_000, period_ns=2 * SEQ_MS, amplitude_ua=3000)


def seq_train(amps_ua, **kw):
    """A train playing a custom sequence once: pulses 2 ms apart with these amplitudes."""
    from seq_trains import sequence_train

    onsets = [i * 2 * SEQ_MS for i in range(len(amps_ua))]
    return sequence_train(P.complete(dict(SEQ_BASE, sequence_pulses=len(amps_ua), **kw)), onsets, amps_ua)


def test_start_ops_write_a_sequences_first_pulse_codes():
    t = seq_train([1000, 2000, 3000])  # the parameters' amplitude is 3000 µA (code 1200)
    assert (t.dac_a, t.dac_b) == (1200, 1200)
    assert pe.first_codes(t) == (400, 400)  # pulse 0: 1000 µA
    plain = pe.build_train(P.complete(SEQ_BASE))
    assert pe.first_codes(plain) == (1200, 1200)
    assert pe.start_ops([plain, t], [0, 1]) == dac_bus.update_ops(0, 1200, 1200) + dac_bus.update_ops(1, 400, 400)


def test_sequence_writer_picks_the_one_varying_channel():
    plain = pe.build_train(P.complete(SEQ_BASE))
    const = seq_train([1000, 1000, 1000])
    vary = seq_train([1000, 2000, 1000])
    assert pe.sequence_writer([plain, plain], [0, 1]) is None          # no sequence
    assert pe.sequence_writer([const, plain, const], [0, 1, 2]) is None  # none varies
    w = pe.sequence_writer([const, vary, plain], [0, 1, 2])
    assert w.channels == [1] and w.train is vary
    ops = w.chunk(10)  # waits on channel 1's phase-2 pin, channel 1's codes
    assert ops == [dac_bus.wait_op(pe.phase2_pin(vary, 1))] + dac_bus.update_ops(1, 800, 800) + \
        [dac_bus.wait_op(pe.phase2_pin(vary, 1))] + dac_bus.update_ops(1, 400, 400)
    # a channel whose soft start is a single pulse (no ramp) does not conflict
    w = pe.sequence_writer([pe.build_train(P.complete(dict(SEQ_BASE, ramp_up_pulses=1))), vary], [0, 1])
    assert w.channels == [1]


def test_sequence_writer_refuses_a_second_varying_channel_or_a_ramp():
    vary = seq_train([1000, 2000, 1000])
    ramp = pe.build_train(P.complete(dict(SEQ_BASE, ramp_up_pulses=2)))
    for trains, chans, other, lead in (([ramp, vary], [0, 1], 0, 1), ([vary, ramp], [0, 1], 1, 0),
                                       ([vary, seq_train([500, 700])], [0, 1], 1, 0)):
        with pytest.raises(pe.RampMismatch) as ei:
            pe.sequence_writer(trains, chans)
        e = ei.value
        assert (e.field, e.value, e.limit, e.relation) == ("sequence_pulses", other, lead, "<=")
        assert str(e) == ("sequence_pulses: channel %d cannot change its amplitude pulse by pulse with channel %d"
                          " in one start" % (other, lead))


# ---- RampWriter with several channels: word for word against the per-pulse codes -----------------
def ramp_params(**kw):
    return P.complete(dict({"phase1_ns": 200_000, "phase2_ns": 300_000, "period_ns": 20 * SEQ_MS,
                            "amplitude_ua": 1000}, **kw))


def group_bounds(trains, channels, down):
    """The slow construction, per boundary: the lead's wait(s), then each channel whose codes change
    (pulse_codes / ramp_down_codes), a soft stop's shutdown at boundary K of each channel."""
    lead = channels[0]
    waits = pe.boundary_wait_ops(trains[lead], lead)
    if down:
        n = max(trains[ch].ramp_down_k for ch in channels) + 1
        prev = {ch: (trains[ch].dac_a, trains[ch].dac_b) for ch in channels}
    else:
        n = max(trains[ch].ramp_up_k for ch in channels) - 1
        prev = {ch: pe.pulse_codes(trains[ch], 0) for ch in channels}
    bounds = []
    for j in range(n):
        ops, changed = list(waits), False
        for ch in channels:
            t = trains[ch]
            if down:
                if j == t.ramp_down_k:
                    ops += dac_bus.shutdown_ops(ch)
                    changed = True
                    continue
                if j > t.ramp_down_k:
                    continue
                codes = pe.ramp_down_codes(t, j)
            else:
                codes = pe.pulse_codes(t, j + 1)
            if codes != prev[ch]:
                prev[ch] = codes
                ops += dac_bus.update_ops(ch, *codes)
                changed = True
        bounds.append((ops, changed))
    return bounds


def _trim(bounds):
    """Boundaries flattened, nothing after the last change (bare waits at the very end dropped)."""
    out, last = [], 0
    for ops, changed in bounds:
        out += ops
        if changed:
            last = len(out)
    return out[:last]


def group_reference(trains, channels, down):
    return _trim(group_bounds(trains, channels, down))


def chunked_reference(trains, channels, down, size):
    """What chunk(size) calls give one after the other: whole boundaries (bare waits included: they
    count pulses), only the last chunk cut after its last change."""
    b = group_bounds(trains, channels, down)
    last = (len(b) - 1) // size * size
    out = []
    for ops, _ in b[:last]:
        out += ops
    return out + _trim(b[last:])


def writer_chunks(w, size):
    got = []
    while not w.done:
        got += w.chunk(size)
    return got


# phase 2 of 1.5 x phase 1 (balanced codes round down or up), 2 x (halves round up), 3 x (a 1-LSB
# phase 1 balances to 1/3 LSB: phase 2 floors at 1 LSB)
PHASE2 = [dict(phase2_ns=300_000), dict(phase2_ns=400_000), dict(phase1_ns=100_000, phase2_ns=300_000)]


@pytest.mark.parametrize("shape", [0, 1])
@pytest.mark.parametrize("ph", PHASE2)
def test_group_ramp_up_equals_the_reference(shape, ph):
    # different amplitudes (one of 3 codes: its first steps floor at 1 LSB), polarities and K; the
    # same pulse timing
    trains = [pe.build_train(ramp_params(shape=shape, amplitude_ua=1000, ramp_up_pulses=7, **ph)),
              pe.build_train(ramp_params(shape=shape, amplitude_ua=7, polarity=1, ramp_up_pulses=12, **ph)),
              pe.build_train(ramp_params(shape=shape, amplitude_ua=10000, ramp_up_pulses=3, **ph)),
              pe.build_train(ramp_params(shape=shape, amplitude_ua=2, ramp_up_pulses=5, **ph))]
    assert trains[1].code1 == 3 and trains[3].code1 == 1
    for chans in ([0, 1, 2], [2, 1, 0], [1, 3], [0, 1, 2, 3]):
        ops = pe.ramp_up_ops(trains, chans)
        assert ops and ops == group_reference(trains, chans, False), chans
        for size in (2, 3):
            assert writer_chunks(pe.ramp_up_writer(trains, chans), size) == \
                chunked_reference(trains, chans, False, size), (chans, size)


@pytest.mark.parametrize("shape", [0, 1])
@pytest.mark.parametrize("ph", PHASE2)
def test_group_ramp_down_equals_the_reference(shape, ph):
    trains = [pe.build_train(ramp_params(shape=shape, amplitude_ua=1000, ramp_down_pulses=6, **ph)),
              pe.build_train(ramp_params(shape=shape, amplitude_ua=7, polarity=1, ramp_down_pulses=9, **ph)),
              pe.build_train(ramp_params(shape=shape, amplitude_ua=10000, ramp_down_pulses=1, **ph)),
              pe.build_train(ramp_params(shape=shape, amplitude_ua=2, ramp_down_pulses=4, **ph))]
    for chans in ([0, 1, 2], [2, 0, 1], [1, 3], [0, 1, 2, 3], [2, 3], [2, 0]):
        ops = pe.ramp_down_ops(trains, chans)
        assert ops == group_reference(trains, chans, True), chans
        for size in (1, 2, 3):  # chunked as the controller streams a long soft stop
            w = pe.RampWriter(trains, chans, None, True)
            assert writer_chunks(w, size) == chunked_reference(trains, chans, True, size), (chans, size)
        assert ops[-2:] == dac_bus.shutdown_ops(max(chans, key=lambda c: trains[c].ramp_down_k))
        # every channel is shut down exactly once
        for ch in chans:
            sd = dac_bus.shutdown_ops(ch)
            assert sum(ops[i:i + 2] == sd for i in range(len(ops) - 1)) == 1


def test_ramp_up_writer_ignores_a_one_pulse_soft_start():
    one = pe.build_train(ramp_params(ramp_up_pulses=1))
    assert pe.ramp_up_writer([one], [0]) is None and pe.ramp_up_ops([one], [0]) == []
    # nor does such a channel constrain a ramping one with other timing
    four = pe.build_train(ramp_params(ramp_up_pulses=4, period_ns=33 * SEQ_MS))
    assert pe.ramp_up_writer([four, one], [0, 1]).channels == [0]


def test_ramp_mismatch_names_the_ramps_time_or_pulse_field():
    base = pe.build_train(ramp_params(ramp_up_pulses=4, ramp_down_pulses=4))
    cases = ((dict(ramp_up_ns=60 * SEQ_MS), False, "ramp_up_ns"), (dict(ramp_up_pulses=3), False, "ramp_up_pulses"),
             (dict(ramp_down_ns=60 * SEQ_MS), True, "ramp_down_ns"), (dict(ramp_down_pulses=3), True, "ramp_down_pulses"))
    for kw, down, field in cases:
        other = pe.build_train(ramp_params(period_ns=21 * SEQ_MS, **kw))
        with pytest.raises(pe.RampMismatch) as ei:
            if down:
                pe.ramp_down_ops([base, other], [0, 1])
            else:
                pe.ramp_up_ops([base, other], [0, 1])
        assert (ei.value.field, ei.value.value, ei.value.limit) == (field, 1, 0), kw
        assert str(ei.value) == "%s: channel 1 cannot ramp with channel 0: their pulse timing differs" % field


def test_ramp_lookahead_boundaries():
    def la(period_ns, n=1, shape=0):
        t = pe.build_train(ramp_params(period_ns=period_ns, ramp_up_pulses=50, shape=shape))
        return pe.ramp_up_writer([t] * n, list(range(n))).lookahead()
    assert la(1_000_000 * 1000) == pe.RAMP_CHUNK_MIN        # 1 s pulses: at least 16 boundaries
    assert la(100 * SEQ_MS) == pe.RAMP_CHUNK_MIN
    # 125 000 000 ticks = 499 x 250 501 + 1: the ceiling is 500 boundaries
    assert pe.ns_to_ticks(2_004_008) == 250_501 and la(2_004_008) == 500
    assert la(2 * SEQ_MS) == 500
    # 1 ms pulses: 1000 boundaries, within 4096 words of 3 (1 channel): 1000; of 9 (4 channels): 455
    assert la(SEQ_MS) == 1000
    v = la(SEQ_MS, 4)
    assert v == 455 and type(v) is int
    v = la(SEQ_MS, 1, 1)  # triphasic: 2 waits + 2 writes a boundary
    assert v == 1000 and la(SEQ_MS, 4, 1) == 409 and type(la(SEQ_MS, 4, 1)) is int


def test_all_ops_bound_exactly_at_max_ramp_ops():
    # triphasic, one channel: 4 words a boundary; K = 1025 pulses are 1024 boundaries = 4096 words
    t = pe.build_train(ramp_params(shape=1, ramp_up_pulses=1025, amplitude_ua=10000))
    assert len(pe.ramp_up_ops([t], [0])) <= pe.MAX_RAMP_OPS
    t = pe.build_train(ramp_params(shape=1, ramp_up_pulses=1026, amplitude_ua=10000))
    with pytest.raises(pe.Unrealisable) as ei:
        pe.ramp_up_ops([t], [0])
    e = ei.value
    assert (e.field, e.value, e.limit, e.relation) == ("ramp_up_pulses", 1026, 1025, "<=")
    assert str(e) == "ramp_up_pulses: more than 4096 DAC op words"


def test_all_ops_refusal_names_the_longest_ramp_of_the_group():
    P_ = ramp_params
    # soft start: channel 0's K (1000) is the longest; channel 1 has the longer soft stop
    up = [pe.build_train(P_(ramp_up_pulses=1000)), pe.build_train(P_(ramp_up_pulses=900, ramp_down_pulses=1100))]
    with pytest.raises(pe.Unrealisable) as ei:
        pe.ramp_up_ops(up, [0, 1])  # 5 words a boundary
    assert (ei.value.field, ei.value.value, ei.value.limit, ei.value.relation) == ("ramp_up_pulses", 1000, 4096 // 5 + 1, "<=")
    # soft stop: channel 1's K (1000) is the longest; channel 0 has the longer soft start
    down = [pe.build_train(P_(ramp_down_pulses=900, ramp_up_pulses=1200)), pe.build_train(P_(ramp_down_pulses=1000))]
    with pytest.raises(pe.Unrealisable) as ei:
        pe.ramp_down_ops(down, [0, 1])
    assert (ei.value.field, ei.value.value, ei.value.limit, ei.value.relation) == ("ramp_down_pulses", 1000, 4096 // 5 - 1, "<=")
    assert str(ei.value) == "ramp_down_pulses: more than 4096 DAC op words"
    # equal K: the first channel's field (pulses) is named, not the second's (time)
    tie = [pe.build_train(P_(ramp_up_pulses=1000)), pe.build_train(P_(ramp_up_ns=999 * 20 * SEQ_MS + 8))]
    assert tie[1].ramp_up_k == 1000
    with pytest.raises(pe.Unrealisable) as ei:
        pe.ramp_up_ops(tie, [0, 1])
    assert ei.value.field == "ramp_up_pulses"
    # one channel alone
    with pytest.raises(pe.Unrealisable) as ei:
        pe.ramp_up_ops([pe.build_train(P_(ramp_up_pulses=1400))], [0])
    assert (ei.value.field, ei.value.value, ei.value.limit) == ("ramp_up_pulses", 1400, 4096 // 3 + 1)


def test_all_ops_refusal_of_a_time_ramp_names_its_ns_and_the_longest_that_fits():
    ms = SEQ_MS
    # 1 ms pulses, a 1.5 s soft start: 1500 pulses, 1499 boundaries of 3 words
    t = pe.build_train(ramp_params(period_ns=ms, ramp_up_ns=1500 * ms, ramp_down_ns=700 * ms))
    with pytest.raises(pe.Unrealisable) as ei:
        pe.ramp_up_ops([t], [0])
    e = ei.value
    k_max = 4096 // 3 + 1  # 1366 pulses: pulse 1366 starts at 1366 ms
    assert (e.field, e.value, e.limit, e.relation) == ("ramp_up_ns", 1500 * ms, k_max * ms, "<=")
    assert str(e) == "ramp_up_ns: more than 4096 DAC op words"
    t = pe.build_train(ramp_params(period_ns=ms, ramp_down_ns=1500 * ms + 8, ramp_up_ns=700 * ms))
    with pytest.raises(pe.Unrealisable) as ei:
        pe.ramp_down_ops([t], [0])
    e = ei.value
    assert (e.field, e.value, e.limit, e.relation) == ("ramp_down_ns", 1500 * ms + 8, (4096 // 3 - 1) * ms, "<=")
    assert str(e) == "ramp_down_ns: more than 4096 DAC op words"


def test_update_idle_violation_names_the_period_and_the_idle_it_needs():
    need = pe.ns_to_ticks(501_000) + dac_bus.min_idle_ticks(1)  # 200 + 1 + 300 µs pulse + one DAC update
    L = dict(LIMITS, max_duty_permille=1000, min_period_ns=0)
    ok = pe.build_checked(ramp_params(period_ns=pe.ticks_to_ns(need)), L)[0]
    assert pe.update_idle_violation(ok, 1) is None and pe.update_idle_violation(ok) is None  # default: 1 channel
    short = pe.build_train(ramp_params(period_ns=pe.ticks_to_ns(need - 1)))
    v = pe.update_idle_violation(short)
    assert (v.field, v.value, v.limit, v.relation) == ("period_ns", pe.ticks_to_ns(need - 1), pe.ticks_to_ns(need), ">=")
    need2 = pe.ns_to_ticks(501_000) + dac_bus.min_idle_ticks(2)
    v = pe.update_idle_violation(ok, 2)
    assert (v.value, v.limit, v.relation) == (pe.ticks_to_ns(need), pe.ticks_to_ns(need2), ">=")
    # a group ramp whose boundary is too short for 2 channels' updates: the same fields, its own message
    with pytest.raises(pe.Unrealisable) as ei:
        pe.ramp_up_ops([pe.build_train(ramp_params(period_ns=pe.ticks_to_ns(need), ramp_up_pulses=3))] * 2, [0, 1])
    e = ei.value
    assert (e.field, e.value, e.limit, e.relation) == ("period_ns", pe.ticks_to_ns(need), pe.ticks_to_ns(need2), ">=")
    assert str(e) == "period_ns: 2 channels updating at one boundary need more idle"


def test_timing_key_counts_the_trigger_mode_only_for_a_triggered_start():
    soft = pe.build_train(ramp_params(ramp_up_pulses=3))
    edge = pe.build_train(ramp_params(ramp_up_pulses=3, trigger=1))   # TRIG1, rising edge
    gate = pe.build_train(ramp_params(ramp_up_pulses=3, trigger=3))   # TRIG1, gate
    assert edge.entry != gate.entry
    assert pe.timing_key(soft) == pe.timing_key(edge) == pe.timing_key(gate, 0)  # default: a start now
    assert pe.timing_key(edge, 1) != pe.timing_key(gate, 1)
    assert pe.timing_key(edge, 1) != pe.timing_key(edge)
    # a group started on one trigger input ramps together when the trigger mode is the same...
    w = pe.ramp_up_writer([edge, edge], [0, 1], [1, 1, 0, 0])
    assert w.channels == [0, 1] and w.n == 2
    # ...and not when one waits for an edge and the other for a level
    with pytest.raises(pe.RampMismatch):
        pe.ramp_up_writer([edge, gate], [0, 1], [1, 1, 0, 0])


def test_a_group_ramp_stops_at_the_last_pulse_of_equal_finite_trains():
    P_ = ramp_params
    period = 20 * SEQ_MS
    nine = pe.build_train(P_(ramp_up_pulses=10, train_duration_ns=9 * period))
    ten = pe.build_train(P_(ramp_up_pulses=10, train_duration_ns=10 * period))
    endless = pe.build_train(P_(ramp_up_pulses=10))
    assert pe.total_pulses(nine) == 9 and pe.total_pulses(ten) == 10

    def waits(ops):
        return sum(1 for o in ops if o == dac_bus.wait_op(pe.phase2_pin(nine, 0)))
    assert waits(pe.ramp_up_ops([nine, nine], [0, 1])) == 8   # after pulses 0..7: pulse 8 is the last
    assert waits(pe.ramp_up_ops([ten, ten], [0, 1])) == 9     # the whole ramp fits: K - 1 boundaries
    assert waits(pe.ramp_up_ops([ten, endless], [0, 1])) == 9  # a train of exactly K pulses does not cut it
    # two equally short trains and a longer one: the first short channel is named, the longer one is the limit
    with pytest.raises(pe.RampMismatch) as ei:
        pe.ramp_up_ops([nine, nine, endless], [0, 1, 2])
    e = ei.value
    assert (e.field, e.value, e.limit, e.relation) == ("train_duration_ns", 0, 2, "<=")
    assert str(e) == "train_duration_ns: channel 0's train ends before the ramp of channel 2"


def test_ramp_chunks_are_bounded_by_max_ramp_ops_and_continue_where_they_stopped():
    trains = [pe.build_train(ramp_params(ramp_up_pulses=1000, amplitude_ua=10000)) for _ in range(4)]
    w = pe.ramp_up_writer(trains, [0, 1, 2, 3])
    first = w.chunk(999)  # 999 boundaries of 9 words would be 8991 words
    assert w.emitted == pe.MAX_RAMP_OPS // 9 and len(first) == 9 * w.emitted
    w.chunk(10)
    assert w.emitted == pe.MAX_RAMP_OPS // 9 + 10


@pytest.mark.parametrize("ch,amp,k", [(0, 7, 12), (1, 1000, 9), (2, 2, 6)])
def test_one_channel_ramp_in_chunks_equals_the_whole(ch, amp, k):
    t = pe.build_train(ramp_params(amplitude_ua=amp, ramp_up_pulses=k, ramp_down_pulses=k, polarity=ch % 2))
    trains = [None] * 4
    trains[ch] = t
    assert pe.ramp_up_ops(trains, [ch]) == group_reference(trains, [ch], False)
    for size in (1, 2, 3):
        assert writer_chunks(pe.ramp_up_writer(trains, [ch]), size) == chunked_reference(trains, [ch], False, size)
        assert writer_chunks(pe.RampWriter(trains, [ch], None, True), size) == \
            chunked_reference(trains, [ch], True, size)


def test_ramp_chunks_never_pass_the_last_pulse_of_a_finite_train():
    t = pe.build_train(ramp_params(ramp_up_pulses=10, train_duration_ns=4 * 20 * SEQ_MS))  # 4 pulses
    w = pe.ramp_up_writer([t], [0])
    assert w.n == 3
    got = w.chunk(2) + w.chunk(2)
    assert w.done and got == pe.ramp_up_ops([t], [0])
    assert sum(1 for o in got if o == dac_bus.wait_op(pe.phase2_pin(t, 0))) == 3
    assert w.chunk(2) == []


# ---- build_train: the DAC range checks at their edges, burst cycles, realised values ---------------
def test_shape_refusal_message():
    with pytest.raises(pe.Unrealisable) as ei:
        train(shape=2)
    assert str(ei.value) == "shape: not 0 or 1"


def test_dac_codes_at_the_top_of_the_range_are_accepted():
    # phase 1 three times phase 2: 3412 µA is code 1365, its balancing phase 2 exactly code 4095
    t = train(amplitude_ua=3412, phase1_ns=300_000, phase2_ns=100_000)
    assert (t.realised["dac_code1"], t.realised["dac_code2"]) == (1365, 4095)
    # 10238 µA is code 4095 (the largest): equal phases, both at 4095
    t = train(amplitude_ua=10_238)
    assert (t.code1, t.realised["dac_code2"]) == (4095, 4095)


def test_phase2_beyond_the_dac_message():
    with pytest.raises(pe.Unrealisable) as ei:
        train(amplitude_ua=3414, phase1_ns=300_000, phase2_ns=100_000)  # code 1366: phase 2 would be 4098
    assert str(ei.value) == "phase2_amplitude_ua: DAC code 4098 beyond 4095"


def test_amplitude_outside_the_dac_codes_is_refused_naming_it():
    for amp, code, kw in ((0, 0, {}), (10_240, 4096, dict(phase2_ns=400_000))):  # phase 2 of 4096 balances to 2048
        with pytest.raises(pe.Unrealisable) as ei:
            train(amplitude_ua=amp, **kw)
        e = ei.value
        assert (e.field, e.value, e.limit, e.relation) == ("amplitude_ua", amp, 10_238, "<="), amp
        assert str(e) == "amplitude_ua: DAC code %d out of range" % code


def test_a_one_pulse_burst_cycle_includes_its_interburst():
    # bursts of 1 pulse, 1 ms period + 5 ms interburst: a 6 ms cycle, so 12 ms is 2 cycles (not 12)
    t = train(period_ns=1_000_000, burst_pulses=1, interburst_ns=5_000_000, train_duration_ns=12_000_000)
    assert t.repeats == 2 and t.realised["train_duration"] == 2 * 750_000
    assert pe.total_pulses(t) == 2


def test_realised_dead_time_and_residual_in_pc():
    # a 1-LSB phase 1 of 200 µs against a 600 µs phase 2 floored at 1 LSB: 1 x 25000 - 1 x 75000
    # code-ticks = -50000 x 20 fC = -1 000 000 fC = -1000 pC
    t = train(amplitude_ua=3, phase2_ns=600_000)
    r = t.realised
    assert (r["dac_code1"], r["dac_code2"]) == (1, 1)
    assert (r["residual_fc"], r["residual_pc"]) == (-1_000_000, -1000)
    assert r["dead_time"] == pe.DEAD_TICKS == 125
