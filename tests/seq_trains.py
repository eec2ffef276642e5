"""A Train that plays a custom sequence, built the way the firmware builds one, for tests: the
parameters pass ``params.validate``, the pulses ``SequenceBuilder.check``, the records are in RAM."""

from __future__ import annotations

from firmware import pulse_engine as pe
from firmware import sequence as seq
from firmware.limits import LIMITS
from protocol import params as P


def sequence_train(params, onsets_ns, amps_ua):
    """``pulse_engine.build_train(params)`` with ``train.sequence`` = the SequenceSource of these pulses
    (``params`` complete, with ``sequence_pulses`` = len(onsets_ns))."""
    assert P.validate(params, LIMITS) is None, P.validate(params, LIMITS)
    b = seq.SequenceBuilder(params, LIMITS, seq.RamRecords())
    assert b.check(0, onsets_ns, amps_ua) is None, b.check(0, onsets_ns, amps_ua)
    b.add(0, onsets_ns, amps_ua)
    train = pe.build_train(params)
    train.sequence = b.source()
    return train
