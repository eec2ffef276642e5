"""Heap use of the firmware's main objects under MicroPython (run by tests/test_memory_budget.py).

stdin: one JSON line ``{"frames": {"configure": [HEX, ...], "start": HEX, "run": [HEX, ...],
"stop": HEX}, "polls": N}``: request frames built on the host (SET_PARAMS for each channel, START,
STATUS/GET_PARAMS/IMPEDANCE while running, STOP). stdout: one JSON line of byte counts.

What is measured, in the order firmware/main.py does it:
  import      the firmware and protocol modules (bytecode, constants, tables: on the board the .mpy
              bytecode is loaded into the heap the same way unless frozen)
  objects     Rp2Hal (pins, SPI, 4 control rings) + Controller + FrameDecoder
  configured  + 4 channels' params and Trains (SET_PARAMS answered)
  running     + the DMA block buffers and fed rings of 4 started channels
Each is ``gc.mem_alloc()`` right after ``gc.collect()`` (what stays alive). The peak of each step is
measured with the collector off: mem_alloc() after the step without collecting = everything live
plus every byte the step allocated, an upper bound of what the heap must hold during it.
The shims' call logs (machine.LOG / rp2.LOG) are not firmware memory: they are emptied before every
measurement; their growth during a step stays inside that step's peak (small, conservative).
"""

import gc
import json
import sys

import machine
import rp2


def _clear_logs():
    del machine.LOG[:]
    del rp2.LOG[:]


def live():
    _clear_logs()
    gc.collect()
    return gc.mem_alloc()


class Peak:
    def __init__(self):
        self.value = 0
        self.step = ""

    def run(self, name, fn, *args):
        start = live()
        gc.disable()
        try:
            fn(*args)
            top = gc.mem_alloc()
        finally:
            gc.enable()
        if top > self.value:
            self.value = top
            self.step = name
        return top - start


def main():
    req = json.loads(sys.stdin.readline())
    frames = req["frames"]
    polls = req.get("polls", 5)
    out = {"heap_total": gc.mem_alloc() + gc.mem_free()}
    from binascii import unhexlify

    configure = [unhexlify(h) for h in frames["configure"]]
    start = unhexlify(frames["start"])
    run = [unhexlify(h) for h in frames["run"]]
    stop = unhexlify(frames["stop"])
    del req, frames
    out["baseline"] = live()

    import firmware.controller  # noqa: F401
    import firmware.hal_rp2  # noqa: F401
    import firmware.main  # noqa: F401
    import firmware.transport  # noqa: F401
    from firmware.controller import Controller
    from firmware.hal_rp2 import Rp2Hal

    out["import"] = live()
    sent = [0, 0]  # bytes and frames sent to the host (the link itself keeps nothing)

    def send(data):
        sent[0] += len(data)
        sent[1] += 1

    peak = Peak()
    holder = {}

    def build():
        holder["hal"] = Rp2Hal()
        holder["ctl"] = Controller(holder["hal"], send)

    peak.run("objects", build)
    out["objects"] = live()
    ctl = holder["ctl"]

    def feed(frames_):
        for f in frames_:
            ctl.receive(f)
            ctl.poll()

    peak.run("configure", feed, configure)
    out["configured"] = live()
    peak.run("start", feed, [start])
    out["running"] = live()
    for _ in range(polls):
        peak.run("run", feed, run)
    out["after_run"] = live()
    peak.run("stop", feed, [stop])
    for _ in range(3):
        ctl.poll()
    out["stopped"] = live()
    out["peak"] = peak.value
    out["peak_step"] = peak.step
    out["states"] = list(ctl.state)
    out["nacks"] = ctl.nacks
    out["sent_frames"] = sent[1]
    out["groups"] = [t.pulses if t is not None else 0 for t in ctl.trains]
    print(json.dumps(out))


main()
