"""Amplitude titration: raise the amplitude step by step while the train runs, until the subject
responds (or a ceiling is reached).

The train starts once and keeps running; each step is a live amplitude change
(``stim.set_amplitude``): the device checks it against every limit (amplitude, charge per phase,
Shannon charge density for the electrode area, phase 2 after DAC rounding) and applies it at the next
pulse boundary, never inside a pulse. The ``AmplitudeChanged`` event says from which pulse on the new
amplitude plays. A refused step raises ``picostim.DeviceRefused`` with the field, value and limit.

    python examples/titration.py                      # the virtual Pico
    python examples/titration.py --port /dev/ttyACM0  # a board
"""

from __future__ import annotations

import argparse
import time

import picostim

BASE = {  # the parameter-file keys, with their units
    "frequency_hz": 20,
    "phase1_us": 200,
    "phase2_us": 200,
    "polarity": "cathodic-first",
    "electrode_area_mm2": 5,
}


def responded(stim: picostim.Stimulator, amplitude_ma: float) -> bool:
    """Replace with the experiment's own readout (EMG threshold, a key press, ...)."""
    return amplitude_ma >= 2.0


def titrate(stim: picostim.Stimulator, channel: int = 0, start_ma: float = 0.5, step_ma: float = 0.5,
            ceiling_ma: float = 4.0, dwell_s: float = 0.5) -> float | None:
    """Return the first amplitude (mA) at which ``responded`` is true, None if the ceiling was reached."""
    stim.stop(channel)
    stim.wait_idle(channel)                      # parameters are uploaded to an idle channel
    realised = stim.upload(dict(BASE, amplitude_ma=start_ma), channel=channel)
    stim.start(channel)
    print("%.2f mA requested, %.3f mA realised, started" % (start_ma, realised.amplitude_ma))
    amplitude = start_ma
    try:
        while True:
            time.sleep(dwell_s)
            for ev in stim.events():
                if isinstance(ev, picostim.Fault):   # electrode open/short: the firmware stopped the train
                    raise picostim.SafetyFault("channel %d: %s" % (ev.channel, ev.reason), channel=ev.channel,
                                               kind=ev.reason, time_s=ev.time_s, ohms=ev.ohms)
            if responded(stim, amplitude):
                return amplitude
            amplitude = round(amplitude + step_ma, 6)
            if amplitude > ceiling_ma + 1e-9:
                return None
            step = stim.set_amplitude(channel, amplitude)   # live: the train keeps running
            changed = stim.wait_event("amplitude", channel=channel, timeout=2.0)
            where = "from pulse %d" % changed.from_pulse if isinstance(changed, picostim.AmplitudeChanged) \
                else "pending"
            print("%.2f mA requested, %.3f mA realised (phase 2 %.3f mA), %s"
                  % (amplitude, step.amplitude_ma, step.phase2_amplitude_ua / 1000, where))
    finally:
        stim.stop(channel)                       # a started pulse always completes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", help="serial port of a board (default: the virtual Pico)")
    ap.add_argument("--channel", type=int, default=0)
    ap.add_argument("--dwell", type=float, default=0.5, help="seconds at each amplitude")
    args = ap.parse_args(argv)
    with picostim.open(args.port, virtual=args.port is None) as stim:
        print("impedance before: %s ohm" % stim.impedance(args.channel).ohms)
        threshold = titrate(stim, channel=args.channel, dwell_s=args.dwell)
    print("threshold: %s" % ("%.2f mA" % threshold if threshold is not None else "not reached"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
