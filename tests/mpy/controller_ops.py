"""Controller conformance: the firmware's Controller on a deterministic fake HAL, fed request byte
streams, on CPython (golden) and on MicroPython (under test). Must stay MicroPython-compatible.

A session is a list of steps:
    ["rx", HEX]        bytes from the host, given to ``Controller.receive`` (any split, any garbage)
    ["tick", N]        N main-loop turns: the fake hardware advances one step, then ``poll()``
and the answer is every byte the controller sent per step (hex), the hardware calls it made and
its final state (per-channel state, faults, impedance, parameters, trains, counters).

The fake HAL implements the contract in firmware/controller.py's docstring with no timing at all:
time advances a fixed amount per ``time_us()`` call, a started finite train runs for a few ticks
derived from the train, an endless one until stopped, a channel waiting for an external trigger
starts after ``1 + ch`` ticks, and impedance readings come from the session's configuration.
"""

import binascii

from firmware import pio_programs as pio
from firmware.controller import Controller
from protocol import params as P


def _b(h):
    return binascii.unhexlify(h)


def _h(b):
    return binascii.hexlify(bytes(b)).decode()


def _train_summary(t):
    if t is None:
        return None
    return [t.entry, t.trigger_pin, t.dac_a, t.dac_b, t.cycle_ticks, t.pulses, t.pulses_per_cycle, t.repeats,
            t.pulses, len(t.delay)]


class FakeHal:
    """Deterministic HAL: every effect is recorded in ``log``."""

    def __init__(self, cfg):
        self.channels = cfg.get("channels", 4)
        self._ohms = list(cfg.get("ohms", [1000] * self.channels))
        self._ohm_seq = list(cfg.get("ohm_seq", []))  # consumed first, one reading per call
        self._reset = cfg.get("reset_reason", 0)
        self._t = cfg.get("t0", 1000000)
        n = self.channels
        self._trains = [None] * n
        self._left = [0] * n  # ticks until the stream ends; -1 = endless
        self._wait = [0] * n  # ticks until the trigger arrives
        self._ticks = [0] * n  # ticks run since start
        self._active = [False] * n
        self._stopping = [False] * n
        self.watchdog = 0
        self.log = []
        self._dac_ticks = 0  # DAC bus: ticks until the queued ops' mark is pushed (0 = idle)
        self._marks = [0] * n  # pulses per channel when the last mark was pushed

    # identity, time, watchdog
    def board_id(self):
        return b"\x01\x23\x45\x67\x89\xab\xcd\xef"

    def reset_reason(self):
        return self._reset

    def time_us(self):
        self._t += 1237
        return self._t

    def feed_watchdog(self):
        self.watchdog += 1

    # stimulation
    def start(self, trains, mask, wait_trigger, first_ops=None, ramp_ops=()):
        entry = ["start", mask, list(wait_trigger),
                 [_train_summary(trains[ch]) if mask >> ch & 1 else None for ch in range(self.channels)]]
        if first_ops is not None:
            entry.append(list(first_ops))
            entry.append(list(ramp_ops))
            self._queue(ramp_ops)
        self.log.append(entry)
        for ch in range(self.channels):
            if mask >> ch & 1:
                t = trains[ch]
                self._trains[ch] = t
                self._active[ch] = True
                self._stopping[ch] = False
                self._ticks[ch] = 0
                self._wait[ch] = (1 + ch) if wait_trigger[ch] else 0
                self._left[ch] = (2 + t.pulses % 3) if t.repeats else -1

    # DAC bus: queued ops take one tick per wait op (a pulse boundary each), then the mark
    def _queue(self, ops):
        waits = 0
        for op in ops:
            if op & 0x1F not in (pio.DAC_WRITE_ENTRY, pio.DAC_MARK_ENTRY):
                waits += 1
        self._dac_ticks += waits if waits else 1

    def dac_play(self, ops):
        self.log.append(["dac_play", list(ops)])
        self._queue(ops)

    def dac_busy(self):
        return self._dac_ticks > 0

    def dac_mark_pulses(self, ch):
        return self._marks[ch]

    def replace(self, ch, train):
        self.log.append(["replace", ch, _train_summary(train)])
        self._trains[ch] = train

    def stop(self, mask):
        self.log.append(["stop", mask])
        for ch in range(self.channels):
            if mask >> ch & 1 and self._active[ch]:
                if self._wait[ch] > 0:  # waiting for its trigger: disarmed at once, no pulse
                    self._active[ch] = False
                    continue
                self._stopping[ch] = True
                self._left[ch] = 1

    def disarm(self, mask):
        self.log.append(["disarm", mask])
        fired = 0
        for ch in range(self.channels):
            if mask >> ch & 1 and self._active[ch]:
                if self._wait[ch] > 0:
                    self._active[ch] = False
                else:
                    fired |= 1 << ch
        return fired

    def running(self, ch):
        return self._active[ch]

    def waiting(self, ch):
        return self._active[ch] and self._wait[ch] > 0

    def input_level(self, n):
        self.log.append(["input_level", n])
        return 1  # a gate, once open, stays open here

    def pulses(self, ch):
        t = self._trains[ch]
        if t is None:
            return 0
        n = self._ticks[ch] * t.pulses_per_cycle
        return min(n, t.pulses) if t.repeats else n

    def measure_impedance(self, ch):
        ohm = self._ohm_seq.pop(0) if self._ohm_seq else self._ohms[ch]
        self.log.append(["z", ch, ohm])
        return ohm

    # the fake's own clock
    def tick(self):
        if self._dac_ticks > 0:
            self._dac_ticks -= 1
            if self._dac_ticks == 0:
                self._marks = [self.pulses(ch) for ch in range(self.channels)]
        for ch in range(self.channels):
            if not self._active[ch]:
                continue
            if self._wait[ch] > 0:
                self._wait[ch] -= 1
                if not self._stopping[ch]:
                    continue
            self._ticks[ch] += 1
            if self._left[ch] > 0:
                self._left[ch] -= 1
                if self._left[ch] == 0:
                    self._active[ch] = False


def _params_list(p):
    if p is None:
        return None
    return [p[n] for n in P.FIELD_NAMES]


def _snapshot(ctl, hal):
    d = ctl.decoder
    return {
        "state": list(ctl.state), "fault": list(ctl.fault), "impedance_ohm": list(ctl.impedance_ohm),
        "params": [_params_list(p) for p in ctl.params], "trains": [_train_summary(t) for t in ctl.trains],
        "realised": [None if t is None else sorted(t.realised.items()) for t in ctl.trains],
        "nacks": ctl.nacks, "duplicates": ctl.duplicates, "events_sent": ctl.events_sent,
        "decoder": [d.frames_ok, d.crc_errors, d.frames_dropped, d.bytes_discarded],
        "watchdog": hal.watchdog,
    }


def op_session(steps, cfg=None):
    hal = FakeHal(cfg or {})
    sent = []
    ctl = Controller(hal, sent.append)
    out = []
    for step in steps:
        del sent[:]
        if step[0] == "rx":
            ctl.receive(_b(step[1]))
        else:
            for _ in range(step[1]):
                hal.tick()
                ctl.poll()
        out.append(_h(b"".join(sent)))
    return {"out": out, "hal": hal.log, "final": _snapshot(ctl, hal)}


OPS = {"session": op_session}
