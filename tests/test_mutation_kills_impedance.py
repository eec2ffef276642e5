"""Impedance arithmetic and debounce pinned exactly (mutation testing, issue 15: tools/mutate.py).

Each test names the surviving mutant class it kills. Oracles are computed independently of the code
(exact fractions of the front end's 16.5 V full scale over 4096 codes), never from the function itself.
"""
from __future__ import annotations

from fractions import Fraction
from math import ceil, floor

import pytest

from firmware import board, impedance as I
from protocol import messages as M

FULL_SCALE_UV = 3_300_000 * 5  # ADC reference x front-end divider (board.py)
CODES = 4096


def test_board_constants_behind_the_oracle():
    assert board.ADC_VREF_UV * board.ELECTRODE_UV_PER_ADC_UV == FULL_SCALE_UV
    assert (1 << board.ADC_BITS) == CODES


def test_adc_code_to_microvolts_is_exact():
    # 1 LSB = 16.5 V / 4096 = 4028.3 µV; a divisor of 4094 or 4097 shifts the top code by > 4 mV
    for code in (0, 1, 2, 1000, 2048, 4095):
        assert I.adc_to_electrode_uv(code) == floor(Fraction(code * FULL_SCALE_UV, CODES))
    assert I.adc_to_electrode_uv(4095) == 16495971


def test_microvolts_to_adc_code_inverts_the_conversion_and_clips():
    for code in (0, 1, 7, 1000, 2829, 2830, 4000, 4095):
        lo = ceil(Fraction(code * FULL_SCALE_UV, CODES))  # first µV of this code's step
        assert I.electrode_uv_to_adc(lo) == code
        if code:
            assert I.electrode_uv_to_adc(lo - 1) == code - 1
    assert I.electrode_uv_to_adc(-1_000_000) == 0  # below ground: clipped, never negative
    assert I.electrode_uv_to_adc(10**9) == 4095    # above full scale: clipped to the top code


def test_ohms_rounds_half_up_and_refuses_zero_current():
    assert I.ohms(1000, 0) == 0
    assert I.ohms(1000, -5) == 0
    assert I.ohms(1000, 1) == 1000
    assert I.ohms(1001, 2) == 501          # 500.5 rounds up
    assert I.ohms(1000, 3) == 333
    assert I.ohms(1002, 4) == 251          # 250.5 rounds up (a //3 half would give 250)
    r = I.ohms(1001, 2)
    assert isinstance(r, int)


@pytest.mark.parametrize("current_na", [1000, 3000, 77777, 100000, 1000000, 4000000])
def test_phase1_ohms_is_the_rounded_quotient(current_na):
    for code in range(0, 2830, 7):
        uv = floor(Fraction(code * FULL_SCALE_UV, CODES))
        want = floor(Fraction(uv * 1000, current_na) + Fraction(1, 2))
        want = min(want, I.SATURATED_OHM)
        assert I.phase1_ohms(code, current_na) == want, (code, current_na)


def test_phase1_ohms_edges():
    assert I.phase1_ohms(100, 0) == 0
    assert I.phase1_ohms(100, 1) == I.adc_to_electrode_uv(100) * 1000  # 1 nA is a valid current
    # below the rail but too large for the int32 field: capped at SATURATED_OHM, not wrapped
    assert I.phase1_ohms(2800, 1) == I.SATURATED_OHM
    assert I.phase1_ohms(2800, 5) == I.SATURATED_OHM
    # at the rail (>= 95 % of compliance) the reading is saturated whatever the current
    assert I.phase1_ohms(2830, 10**9) == I.SATURATED_OHM
    assert I.phase1_ohms(2829, 10**9) == 11  # just below the rail: a real (tiny) reading


def test_monitor_interval_rounds_up():
    assert I.monitor_interval_us(1) == 1_000_000
    assert I.monitor_interval_us(3) == 333_334
    assert I.monitor_interval_us(1000) == 1000
    assert I.monitor_interval_us(0) == 0


def test_classifier_starts_clean_and_reset_forgets():
    c = I.Classifier()
    assert (c.state, c.last_ohm) == (M.Z_UNKNOWN, 0)
    assert c.update(1234) == M.Z_OK and c.last_ohm == 1234
    c.reset()
    assert (c.state, c.last_ohm) == (M.Z_UNKNOWN, 0)
    c.reset(5000)
    assert (c.state, c.last_ohm) == (M.Z_OPEN, 5000)


def test_classifier_uses_its_own_thresholds_in_update_and_reset():
    c = I.Classifier(consecutive=1, short_ohm=100, high_ohm=1000, open_ohm=1500)
    c.reset(80)
    assert c.state == M.Z_SHORT          # default thresholds would say OK
    assert c.update(1200) == M.Z_HIGH    # default: OK
    assert c.update(1600) == M.Z_OPEN    # default: OK


def test_three_different_classes_do_not_add_up_to_a_change():
    c = I.Classifier()
    c.reset(1000)
    assert c.update(3000) == M.Z_OK   # HIGH, 1st
    assert c.update(5000) == M.Z_OK   # OPEN, 1st (a different class starts over)
    assert c.update(10) == M.Z_OK     # SHORT, 1st
    assert c.update(10) == M.Z_OK
    assert c.update(10) == M.Z_SHORT  # three agreeing readings


def test_a_reading_of_the_current_class_restarts_the_count():
    c = I.Classifier()
    c.reset(1000)
    for ohm in (3000, 3000, 1000, 3000, 3000):  # the OK in between breaks the run of HIGHs
        assert c.update(ohm) == M.Z_OK
    assert c.update(3000) == M.Z_HIGH
