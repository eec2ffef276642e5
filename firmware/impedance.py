"""Electrode impedance: Z = V / I from a sub-threshold test pulse or a phase-1 sample, and its
classification OK / HIGH / OPEN / SHORT with hysteresis.

Pure logic, no hardware. Default thresholds follow the lead-integrity checks of implanted sacral
neuromodulation systems (Medtronic InterStim: impedance below 50 Ω is reported as a short, above
4000 Ω as an open circuit); see docs/SAFETY.md for the sources. HIGH (between HIGH_OHM and OPEN_OHM)
is a warning, not a fault.
"""

from firmware import board
from protocol.messages import Z_HIGH, Z_OK, Z_OPEN, Z_SHORT, Z_UNKNOWN

SHORT_OHM = 50
HIGH_OHM = 2000
OPEN_OHM = 4000
CONSECUTIVE = 3  # readings that must agree before the class changes (no chatter on noise)

# The test pulse: 100 µA for 50 µs is 5 nC, far below the ~100 nC a stimulation pulse carries, and
# 100 µA puts one ADC step (4 mV at the electrode, see board.py) at 40 Ω of resolution.
TEST_CURRENT_UA = 100
TEST_PULSE_NS = 50000
TEST_SAMPLE_NS = 40000  # ADC conversion started 40 µs into the test phase
_ADC_MAX = (1 << board.ADC_BITS) - 1


def adc_to_electrode_uv(code):
    """Electrode voltage in µV from a 12-bit ADC code (through the board's front-end divider)."""
    return code * board.ADC_VREF_UV * board.ELECTRODE_UV_PER_ADC_UV // (_ADC_MAX + 1)


def electrode_uv_to_adc(uv):
    """The 12-bit code the ADC returns for an electrode voltage (clipped to the ADC's range)."""
    code = int(uv * (_ADC_MAX + 1) // (board.ADC_VREF_UV * board.ELECTRODE_UV_PER_ADC_UV))
    return 0 if code < 0 else (_ADC_MAX if code > _ADC_MAX else code)


def ohms(volts_uv, current_ua):
    """Impedance in Ω from a voltage in µV and a current in µA (integer maths)."""
    if current_ua <= 0:
        return 0
    return (volts_uv + current_ua // 2) // current_ua


def classify(ohm, short_ohm=SHORT_OHM, high_ohm=HIGH_OHM, open_ohm=OPEN_OHM):
    """Class of a single reading, monotonic in the load: SHORT < OK < HIGH < OPEN."""
    if ohm < short_ohm:
        return Z_SHORT
    if ohm > open_ohm:
        return Z_OPEN
    if ohm > high_ohm:
        return Z_HIGH
    return Z_OK


class Classifier:
    """Debounced class: changes only after ``consecutive`` readings agree on the new class."""

    def __init__(self, consecutive=CONSECUTIVE, short_ohm=SHORT_OHM, high_ohm=HIGH_OHM, open_ohm=OPEN_OHM):
        self.consecutive = consecutive
        self.thresholds = (short_ohm, high_ohm, open_ohm)
        self.state = Z_UNKNOWN
        self.last_ohm = 0
        self._candidate = Z_UNKNOWN
        self._count = 0

    def reset(self):
        self.state = Z_UNKNOWN
        self._candidate = Z_UNKNOWN
        self._count = 0

    def update(self, ohm):
        """Add one reading; return the (possibly unchanged) debounced class."""
        self.last_ohm = ohm
        cls = classify(ohm, *self.thresholds)
        if cls == self.state:
            self._count = 0
            return self.state
        if cls == self._candidate:
            self._count += 1
        else:
            self._candidate = cls
            self._count = 1
        if self._count >= self.consecutive or self.state == Z_UNKNOWN:
            self.state = cls
            self._count = 0
        return self.state
