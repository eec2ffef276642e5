"""Fuzz targets of the link, shared by the atheris fuzzer (fuzz_link.py), the pytest runs
(tests/test_fuzz_link.py) and the MicroPython replay (``OPS``, served by tests/mpy/mpy_serve.py).

MicroPython-compatible (no typing, copy, dataclasses): the firmware-side target must run unchanged
under the unix port so the same corpus gives the same decisions on both runtimes.

``firmware_decisions(data)``: a fresh Controller on a deterministic fake HAL, configured with one
valid parameter set, is fed ``data`` then a delimiter; the result is everything it decided: the
exact reply bytes, the decoder and controller counters, the states and which channels hold
parameters, and the hardware actions.
"""

import binascii

from firmware.controller import Controller
from protocol import messages as M
from protocol import params as P
from protocol.framing import encode_frame

GOOD = P.complete({"phase1_ns": 200000, "phase2_ns": 200000, "period_ns": 50000000, "amplitude_ua": 1000})
SETUP_SEQ = 0x7000


class FakeHal:
    """Deterministic HAL: fixed clock and readings, hardware actions recorded."""

    channels = 4

    def __init__(self):
        self.calls = []
        self._running = [False] * self.channels
        self.busy = False  # DAC bus: ops queued and their mark not yet pushed (tests flip it)
        self.mark_pulses = [0] * self.channels
        self.played = [0] * self.channels  # pulses(ch): pulses delivered (tests advance it)
        self.ops = []  # every op word queued on the DAC bus (first_ops, ramp_ops, dac_play), in order

    def board_id(self):
        return b"fuzzhal0"

    def reset_reason(self):
        return 0

    def time_us(self):
        return 1234

    def start(self, trains, mask, wait, first_ops=None, ramp_ops=()):
        if first_ops is None:
            self.calls.append(["start", mask, list(wait)])
        else:  # a soft start: the controller built the DAC ops
            self.calls.append(["start", mask, list(wait), len(first_ops), len(ramp_ops)])
            self.ops.extend(first_ops)
            self.ops.extend(ramp_ops)
            self.busy = self.busy or bool(ramp_ops)
        for ch in range(self.channels):
            if mask >> ch & 1:
                self._running[ch] = True

    def dac_play(self, ops):
        self.calls.append(["dac_play", len(ops)])
        self.ops.extend(ops)
        self.busy = True

    def dac_busy(self):
        return self.busy

    def dac_mark_pulses(self, ch):
        return self.mark_pulses[ch]

    def replace(self, ch, train):
        self.calls.append(["replace", ch])

    def stop(self, mask):
        self.calls.append(["stop", mask])

    def disarm(self, mask):
        self.calls.append(["disarm", mask])
        return 0

    def running(self, ch):
        return self._running[ch]

    def input_level(self, n):
        return 1

    def waiting(self, ch):
        return False

    def pulses(self, ch):
        return self.played[ch]

    def measure_impedance(self, ch):
        return 1000

    def feed_watchdog(self):
        pass


class MemFiles:
    """In-memory flash for SAVE/LOAD (firmware.storage file API)."""

    def __init__(self):
        self.files = {}

    def read(self, name):
        return self.files.get(name)

    def write(self, name, data):
        self.files[name] = bytes(data)

    def rename(self, src, dst):
        self.files[dst] = self.files.pop(src)


def make_controller():
    """A configured controller (channel 0 holds GOOD, slot 0 holds GOOD), its HAL and output list."""
    from firmware import storage

    out = []
    hal = FakeHal()
    store = storage.Store(MemFiles())
    store.save(0, P.pack(GOOD))
    ctl = Controller(hal, out.append, storage=store)
    if _CACHE:  # the train GOOD builds once: installing it directly keeps the fuzz loop fast
        ctl.params[0] = dict(GOOD)
        ctl.trains[0] = _CACHE[0]
        ctl.decoder.frames_ok = 1
    else:
        ctl.receive(encode_frame(M.SET_PARAMS, SETUP_SEQ, M.encode_params(0, GOOD)))
        _CACHE.append(ctl.trains[0])
    del out[:]
    return ctl, hal, out


_CACHE = []


def state_of(ctl, hal):
    """Everything a request could change (comparable with ==, JSON-able)."""
    params = []
    for p in ctl.params:
        params.append(None if p is None else [p[n] for n in P.FIELD_NAMES])
    return [params, list(ctl.state), list(ctl.fault), ctl.deadman_ms, [list(c) for c in hal.calls]]


def firmware_decisions(data):
    ctl, hal, out = make_controller()
    ctl.receive(data)
    ctl.receive(b"\x00")  # flush: every segment is now decided
    ctl.poll()
    d = ctl.decoder
    return {
        "replies": binascii.hexlify(b"".join(out)).decode(),
        "frames_ok": d.frames_ok - 1,  # minus the setup frame
        "crc_errors": d.crc_errors,
        "frames_dropped": d.frames_dropped,
        "bytes_discarded": d.bytes_discarded,
        "nacks": ctl.nacks,
        "duplicates": ctl.duplicates,
        "events_sent": ctl.events_sent,
        "state": state_of(ctl, hal),
    }


def op_firmware(h):
    return firmware_decisions(binascii.unhexlify(h))


OPS = {"firmware": op_firmware}


def seed_frames():
    """Valid requests of every type with good, empty and hostile bodies: the fuzzer's starting corpus."""
    seeds = []
    good = M.encode_params(0, GOOD)
    bodies = {
        M.HELLO: [b""], M.GET_PARAMS: [b"\x00", b"\x03", b"\x09"],
        M.SET_PARAMS: [good, M.encode_params(1, dict(GOOD, amplitude_ua=10 ** 9 & 0xFFFFFFFF)), good[:-1]],
        M.START: [b"\x01", b"\x0f", b"\x00", b"\xff"], M.STOP: [b"\x01", b"\x0f"], M.TRIGGER: [b"\x01"],
        M.STATUS: [b"", b"\x00"], M.IMPEDANCE: [b"\x0f"], M.CLEAR_FAULT: [b"\x01"],
        M.SAVE: [b"\x00\x01", b"\x01\x02", b"\x00\x09"], M.LOAD: [b"\x01\x00", b"\x00\x05", b"\x00"],
        M.LINK: [b"\x64\x00\x00\x00", b"\x01\x00\x00\x00", b"\xff\xff\xff\xff"],
        M.EVENT_LOG: [b"\x00\x00", b"\xff\xff"], 0x55: [b""],
        M.SET_AMPLITUDE: [M.encode_set_amplitude(0, 2000), M.encode_set_amplitude(0, 10 ** 6), b"\x00\x01"],
    }
    seq = 1
    for t in sorted(bodies):
        for body in bodies[t]:
            seeds.append(encode_frame(t, seq, body))
            seq += 1
    seeds.append(encode_frame(M.START, 9, b"\x01", version=2))
    seeds.append(encode_frame(M.START, 10, b"\x01") * 2)  # a duplicate
    return seeds
