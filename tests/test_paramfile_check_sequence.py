"""paramfile.check_sequence (what client.set_sequence runs before it sends a sequence built in code):
a Sequence with fewer or more amplitudes than onsets is refused with the counts, and an onset or an
amplitude that is not a whole non-negative number is said to be one, naming the pulse. Before the fix
the count was shown as a current against a "limit" of the other count ("amplitudes_ua = 1 µA: is below
the firmware limit 2 µA"), and a float amplitude "exceeded the firmware limit 0 µA" (found while
triaging paramfile's mutation survivors, issue 15)."""

import pytest

from firmware.limits import LIMITS
from picostim import paramfile


def _params():
    """Canonical parameters of a 2-pulse sequence file: 10 ms apart, at most 200 µA."""
    return paramfile.loads("phase1_us = 200\nelectrode_area_mm2 = 5\n[sequence]\nonsets_ms = [0, 10]\n"
                           "amplitudes_ua = [100, 200]\n").params


def _error(onsets_ns, amplitudes_ua):
    with pytest.raises(paramfile.ParamLimitError) as ei:
        paramfile.check_sequence(_params(), paramfile.Sequence(onsets_ns, amplitudes_ua), LIMITS)
    return ei.value


@pytest.mark.parametrize("amps,n", [([100], 1), ([1], 1), ([100, 100, 100], 3)])
def test_amplitude_count_differs_from_the_onsets(amps, n):
    e = _error([0, 10_000_000], amps)
    assert str(e) == "amplitudes_ua: %d amplitudes for 2 onsets (onsets_ns): give one amplitude per onset" % n
    assert (e.key, e.value) == ("sequence_amplitude_ua", n)


@pytest.mark.parametrize("onsets,amps,msg,field", [
    ([0, 10_000_000], [100, 1.5], "amplitudes_ua[1] = 1.5: is not a non-negative integer", "sequence_amplitude_ua"),
    ([0, 10_000_000.5], [100, 100], "onsets_ns[1] = 10000000.5: is not a non-negative integer", "onset_ns"),
    ([-5, 10_000_000], [100, 100], "onsets_ns[0] = -5: is not a non-negative integer", "onset_ns"),
])
def test_not_a_whole_number(onsets, amps, msg, field):
    e = _error(onsets, amps)
    assert (str(e), e.key) == (msg, field)


def test_parameters_not_valid_keep_the_field_message():
    """A violation of the parameters themselves (here phase1_ns not an integer) is not a pulse's."""
    params = dict(_params(), phase1_ns=1.5)
    with pytest.raises(paramfile.ParamLimitError) as ei:
        paramfile.check_sequence(params, paramfile.Sequence([0, 10_000_000], [100, 200]), LIMITS)
    assert str(ei.value) == "phase1_us = 1.5 is not a non-negative integer (from [sequence])"
