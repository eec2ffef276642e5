"""Amplitude titration: step the amplitude up until the subject responds (or a ceiling is reached).

This firmware refuses parameter changes while a channel runs (SET_PARAMS answers "cannot change while
the channel is running: stop it first", raised here as picostim.DeviceRefused). So a titration step is
stop -> wait until the last pulse has played -> upload the new amplitude -> start, never a live change.
Each upload is checked against the device's limits (amplitude, charge per phase, Shannon charge
density for the electrode area) before anything is sent.

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
    amplitude = start_ma
    while amplitude <= ceiling_ma + 1e-9:
        stim.stop(channel)                       # a started pulse always completes
        stim.wait_idle(channel)                  # ... and parameters only change on an idle channel
        realised = stim.upload(dict(BASE, amplitude_ma=amplitude), channel=channel)
        stim.start(channel)
        time.sleep(dwell_s)
        pulses = stim.status().channels[channel].pulses
        print("%.2f mA requested, %.3f mA realised, %d pulses" % (amplitude, realised.amplitude_ma, pulses))
        for ev in stim.events():
            if isinstance(ev, picostim.Fault):   # electrode open/short: the firmware stopped the train
                raise picostim.SafetyFault("channel %d: %s" % (ev.channel, ev.reason), channel=ev.channel,
                                           kind=ev.reason, time_s=ev.time_s, ohms=ev.ohms)
        if responded(stim, amplitude):
            stim.stop(channel)
            return amplitude
        amplitude = round(amplitude + step_ma, 6)
    stim.stop(channel)
    return None


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
