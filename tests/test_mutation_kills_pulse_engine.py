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
