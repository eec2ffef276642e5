"""picostim: host tool for the picostim RP2040 pulse generator.

The Python API (host/picostim/api.py)::

    import picostim

    with picostim.open(virtual=True) as stim:
        stim.upload("presets/ptns.toml", channel=0)
        stim.start(0)

``picostim.open()`` returns a :class:`Stimulator`; results are frozen dataclasses with ``.to_json()``;
errors are :class:`DeviceRefused`, :class:`LinkError`, :class:`TimingMismatch`, :class:`SafetyFault`
(all :class:`PicostimError`) and :class:`ParamFileError`.
"""

from picostim.api import (Amplitude, AmplitudeChanged, Boot, ChannelStatus, Crash, DeviceRefused, Event, Fault,
                          Impedance, ImpedanceHigh, Info, LinkError, ParamFileError, PicostimError, Realised,
                          RunReport, SafetyFault, Status, Stimulator, TimingMismatch, TrainDone, TriggerSeen, open)

__all__ = ["open", "Stimulator", "Info", "Realised", "Amplitude", "ChannelStatus", "Status", "Impedance", "RunReport",
           "Event", "Boot", "TrainDone", "TriggerSeen", "Fault", "ImpedanceHigh", "Crash", "AmplitudeChanged",
           "PicostimError", "DeviceRefused", "LinkError", "TimingMismatch", "SafetyFault", "ParamFileError"]
