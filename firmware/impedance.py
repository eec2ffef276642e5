"""Electrode impedance: Z = V / I from a sub-threshold test pulse or a phase-1 sample, and its
classification OK / HIGH / OPEN / SHORT with hysteresis.

Pure logic, no hardware. Default thresholds follow the lead-integrity checks of sacral
neuromodulation practice (normal 400-1500 Ω, open circuit above 4000 Ω, short circuit "low"; see
docs/SAFETY.md for the sources and for the 50 Ω short threshold). HIGH (between HIGH_OHM and
OPEN_OHM) is a warning, not a fault.

Monitoring during stimulation (SPEC §5): the HAL reports raw ADC codes taken MONITOR_SAMPLE_NS into
phase 1 of the pulses actually played (``hal.phase1_samples``); :func:`phase1_ohms` turns a code and
the pulse's realised phase-1 current into ohms, and the controller feeds a :class:`Classifier`.
"""

from firmware import board
from protocol.messages import Z_HIGH, Z_OK, Z_OPEN, Z_SHORT, Z_UNKNOWN

SHORT_OHM = 50
HIGH_OHM = 2000
OPEN_OHM = 4000
CONSECUTIVE = 3  # readings that must agree before the class changes (no chatter on noise)

# The test pulse: 100 µA for 200 µs is 20 nC per phase, well below the ~100 nC a stimulation pulse
# carries, and 100 µA puts one ADC step (4 mV at the electrode, see board.py) at 40 Ω of resolution.
# Its length comes from the interpreter, measured on the emulated Cortex-M0+ (official MicroPython
# v1.22.0 rp2 image in rp2040js, docs/SAFETY.md "Impedance test timing"): the interrupts-off path
# from the state machine's start to the end of the conversion takes TEST_LATENCY_US; the phase
# holds that TEST_MARGIN times over. A try whose conversion left phase 1 anyway is retried, and
# a measurement without any valid try is reported as unknown, never as a reading.
TEST_CURRENT_UA = 100
TEST_PULSE_NS = 200000
TEST_SAMPLE_NS = 20000  # earliest conversion start after the phase-1 start (front-end settling)
TEST_TRIES = 3
_ADC_MAX = (1 << board.ADC_BITS) - 1

# ---- monitoring during stimulation ------------------------------------------------------------
MONITOR_SAMPLE_NS = 10000  # ADC conversion due 10 µs into phase 1 (access resistance dominates)
ADC_CONVERSION_NS = 2000  # RP2040 ADC: 96 cycles of its 48 MHz clock
# The board's interpreter starts the conversion up to this long after its due time (end of the
# interrupts-off wait, GPIO_IN and timer reads, read_u16's call): measured on the emulated M0+ (v1.22
# image in rp2040js, docs/SAFETY.md "Phase-1 monitoring timing": 24-29 µs).
MONITOR_LATENCY_NS = 30000
# Phase 1 must hold the sample offset, that latency and the conversion, plus a 20 µs margin: shorter
# phases are not monitored (the pre-start test pulse still checks the electrode; a reading whose
# conversion leaves phase 1 anyway is dropped by the HAL, never misattributed).
MONITOR_MIN_PHASE_NS = MONITOR_SAMPLE_NS + MONITOR_LATENCY_NS + ADC_CONVERSION_NS + 20000
MONITOR_MAX_HZ = 1000  # at most this many phase-1 readings per second and channel (every pulse up to 1 kHz)
# The current source's compliance (the analog stage's supply headroom; the virtual electrode model
# uses the same figure). At the rail the source no longer delivers the programmed current, so V / I
# says nothing about the load: a reading within 5 % of the rail is SATURATED (treated as open).
COMPLIANCE_UV = 12000000
SATURATION_UV = COMPLIANCE_UV * 95 // 100
SATURATED_OHM = 0x7FFFFFFF  # a reading at the rail: fits the EVENT's int32 and STATUS's u32


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


def phase1_ohms(code, current_na):
    """Ohms of one phase-1 reading: ADC ``code`` at the realised phase-1 current ``current_na``.

    SATURATED_OHM when the electrode voltage is at the compliance rail (open lead, or a load the
    current source cannot drive at this amplitude); 0 for a zero current (nothing to divide by)."""
    uv = adc_to_electrode_uv(code)
    if uv >= SATURATION_UV:
        return SATURATED_OHM
    if current_na <= 0:
        return 0
    ohm = (uv * 1000 + current_na // 2) // current_na
    return ohm if ohm < SATURATED_OHM else SATURATED_OHM


def monitor_interval_us(max_hz=MONITOR_MAX_HZ):
    """Minimum spacing of two phase-1 readings of one channel (the configurable rate cap)."""
    return (1000000 + max_hz - 1) // max_hz if max_hz > 0 else 0


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

    def reset(self, ohm=None):
        """Forget the history; with ``ohm`` (e.g. the pre-start test pulse's reading) start from
        that reading's class, so the next change of class needs ``consecutive`` readings."""
        self.state = Z_UNKNOWN if ohm is None else classify(ohm, *self.thresholds)
        self.last_ohm = 0 if ohm is None else ohm
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
