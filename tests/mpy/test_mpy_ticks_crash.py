"""Issue 10 items 3 and 5 under the MicroPython unix port.

Item 3: tests/mpy/shims/time.py makes the unix port's ``time`` behave like the rp2 port's (ticks wrap
at 2**30, ticks_add/ticks_diff refuse non-tick arguments; the clock starts at
``PICOSTIM_SHIM_TICKS0``): the model gives the same answers as CPython's (firmware/ticks.py), the
controller's deadman trips on time across the wrap, and the board HAL's feeder idle timing
(Rp2Hal.running) ends a train across it.

Item 5: ``firmware.main.run`` on the board HAL (machine/rp2 shims) with an exception injected once
at each controller entry point (the link decoding, a request handler, the poll): the outputs go to
the safe state only after the stream has drained (the data channel is made to report BUSY for a
while: the halt waits for it), then every SM is disabled with ``mov pins, null``, both DMA channels
aborted, every DAC output shut down and latched, the drive pins back to SIO outputs driven low;
the host reads boot reason 3 and a crash EVENT naming the exception and where, and the firmware
keeps serving (a later STATUS counts the crash).
"""

import json

import pytest

from firmware import board, dac_bus, dma_chain, ticks
from mpyrun import run_micropython
from protocol import framing
from protocol import messages as M
from protocol import params as P

pytestmark = pytest.mark.mpy
WRAP = ticks.PERIOD


def _vectors():
    vals = [0, 1, 2, WRAP // 2 - 1, WRAP // 2, WRAP // 2 + 1, WRAP - 2, WRAP - 1, WRAP, WRAP + 1, 2**31, -1, -WRAP]
    deltas = [0, 1, -1, WRAP // 2 - 1, -(WRAP // 2 - 1), WRAP // 2, -(WRAP // 2), WRAP, 12345, -54321]
    return [["diff", a, b] for a in vals for b in vals] + [["add", a, d] for a in vals for d in deltas]


def _expected(v):
    try:
        f = ticks.model_ticks_diff if v[0] == "diff" else ticks.model_ticks_add
        return f(v[1], v[2])
    except Exception as e:  # noqa: BLE001
        return type(e).__name__


def test_shim_time_is_the_rp2_model(micropython):
    vecs = _vectors()
    code = """
import sys, json, time
t0 = time.ticks_us()
out = []
for line in sys.stdin:
    op, a, b = json.loads(line)
    try:
        out.append((time.ticks_diff if op == "diff" else time.ticks_add)(a, b))
    except Exception as e:
        out.append(type(e).__name__)
time.sleep_ms(60)
t1 = time.ticks_us()
print(json.dumps([out, t0, t1, time.ticks_diff(t1, t0)]))
"""
    import os

    os.environ["PICOSTIM_SHIM_TICKS0"] = str(WRAP - 50_000)
    try:
        (line,) = run_micropython(code, [json.dumps(v) for v in vecs])
    finally:
        del os.environ["PICOSTIM_SHIM_TICKS0"]
    out, t0, t1, d = json.loads(line)
    assert out == [_expected(v) for v in vecs]
    assert WRAP - 50_000 <= t0 < WRAP and t1 < 500_000 and 60_000 <= d < 550_000  # wrapped, ticks_diff right


_DEADMAN = """
import sys, time, binascii
from firmware.controller import Controller

class Hal:
    channels = 1
    def __init__(self):
        self.run = False
        self.stopped_at = None
    def board_id(self): return bytes(8)
    def reset_reason(self): return 0
    def time_us(self): return time.ticks_us()
    def feed_watchdog(self): pass
    def start(self, trains, mask, wait): self.run = True
    def replace(self, ch, train): pass
    def stop(self, mask):
        if self.stopped_at is None:
            self.stopped_at = time.ticks_us()
        self.run = False
    def running(self, ch): return self.run
    def waiting(self, ch): return False
    def input_level(self, n): return 1
    def pulses(self, ch): return 0
    def measure_impedance(self, ch): return 1000

hal = Hal()
out = []
ctl = Controller(hal, out.append)
frames = [binascii.unhexlify(line.strip()) for line in sys.stdin]
time.set_ticks_us(time.TICKS_PERIOD - 100000)  # the shim's clock: 100 ms before the wrap
for f in frames[:-1]:
    ctl.receive(f)
t_rx = time.ticks_us()  # just before the last frame: the controller's silence starts at or after it
ctl.receive(frames[-1])
while hal.stopped_at is None and time.ticks_diff(time.ticks_us(), t_rx) < 500000:
    ctl.poll()
print(None if hal.stopped_at is None else time.ticks_diff(hal.stopped_at, t_rx), t_rx, time.ticks_us())
"""


def test_deadman_trips_on_time_across_the_wrap_under_micropython(micropython):
    import os

    reqs = [framing.encode_frame(M.LINK, 1, (150).to_bytes(4, "little")),
            framing.encode_frame(M.SET_PARAMS, 2, M.encode_params(0, P.complete({}))),
            framing.encode_frame(M.START, 3, bytes([1]))]
    (line,) = run_micropython(_DEADMAN, [r.hex() for r in reqs])
    late, t_rx, t_end = line.split()
    assert late != "None", "the deadman never tripped (silence across the tick wrap)"
    assert int(t_rx) > WRAP - 100_000 and int(t_end) < 500_000  # the silence did span the wrap
    assert 150_000 < int(late) < 250_000  # on time, within the poll loop's lateness on a loaded machine


_FEEDER = """
import time
from firmware.hal_rp2 import Rp2Hal
from firmware import pulse_engine
from protocol import params as P
hal = Rp2Hal()
train = pulse_engine.build_train(P.complete({}))
trains = [train] + [None] * (hal.channels - 1)
t0 = time.ticks_us()
hal.start(trains, 1, [0] * hal.channels)
n = 0
while hal.running(0) and time.ticks_diff(time.ticks_us(), t0) < 500000:
    n += 1
print(hal.running(0), time.ticks_diff(time.ticks_us(), t0), t0, time.ticks_us())
"""


def test_board_hal_feeder_idle_timing_across_the_wrap(micropython):
    """The shims have no PIO/DMA behind them: the started stream reads as drained at once and
    Rp2Hal.running() ends it after the tail time, measured with ticks_diff across the wrap."""
    import os

    os.environ["PICOSTIM_SHIM_TICKS0"] = str(WRAP - 2_000)
    try:
        (line,) = run_micropython(_FEEDER)
    finally:
        del os.environ["PICOSTIM_SHIM_TICKS0"]
    running, took, t0, t1 = line.split()
    assert running == "False" and int(took) < 100_000
    assert int(t0) > WRAP - 2_000 - 100_000 or int(t0) < 100_000


_CRASH = """
import sys, binascii, time, json
import machine, rp2
from firmware import dma_chain

BUSY_READS = 40
state = {"armed": False, "busy_left": BUSY_READS, "drained_at": None}

class Mem(machine._Mem):
    def __getitem__(self, addr):
        if state.get("started") and not state["armed"] and addr in CTL_ADDRS:
            return dma_chain.CTRL_BUSY  # the control chain is alive: the train runs until the crash
        if state["armed"] and addr in PC_ADDRS:
            return 2  # the SMs are past their trigger wait (PC = SEGMENT_ENTRY)
        if state["armed"] and addr in BUSY_ADDRS:
            if state["busy_left"] > 0:
                state["busy_left"] -= 1
                return dma_chain.CTRL_BUSY
            if state["drained_at"] is None:
                state["drained_at"] = len(rp2.LOG)
        return machine._Mem.__getitem__(self, addr)

machine.mem32 = Mem(32)
from firmware import main
from firmware.controller import Controller
from firmware.hal_rp2 import Rp2Hal
from protocol.framing import FrameDecoder

lines = [l.strip() for l in sys.stdin]
entry = lines.pop(0)
hal = Rp2Hal()
BUSY_ADDRS = set()
PC_ADDRS = set()
CTL_ADDRS = set()
for st in hal._ch:
    CTL_ADDRS.add(dma_chain.dma_reg(st.ctl_ch, dma_chain.DMA_AL1_CTRL))
    BUSY_ADDRS.add(dma_chain.dma_reg(st.data_ch, dma_chain.DMA_AL1_CTRL))
    PC_ADDRS.add(dma_chain.pio_sm_addr_reg(st.pio, st.sm_id))

def once(cls, name, exc):
    orig = getattr(cls, name)
    def boom(self, *a):
        if not state.get("started"):  # inject once channel 0 runs
            return orig(self, *a)
        setattr(cls, name, orig)
        state["armed"] = True
        state["crash_log"] = len(rp2.LOG)
        state["crash_mlog"] = len(machine.LOG)
        raise exc("injected")
    setattr(cls, name, boom)

class Link:
    def __init__(self, frames):
        self.frames = frames
        self.out = bytearray()
        self.n = 0
    def read(self, n):
        self.n += 1
        if self.n % 3 == 0 and self.frames:
            return self.frames.pop(0)
        return b""
    def write(self, data):
        self.out.extend(data)

_start = hal.start
def start(*a):
    _start(*a)
    state["started"] = True
hal.start = start
frames = [binascii.unhexlify(l) for l in lines]
link = Link(frames)
if entry == "link":
    once(FrameDecoder, "feed", MemoryError)
elif entry == "poll":
    once(Controller, "_gate_input", ValueError)
else:
    once(Controller, "_" + entry, TypeError)
main.run(hal=hal, link=link, loops=60, params_dir="/tmp")
active_off = [i for i, e in enumerate(rp2.LOG) if e[0] == "sm_active" and e[2] == 0 and i >= state.get("crash_log", 0)]
print(binascii.hexlify(bytes(link.out)).decode())
print(json.dumps([state.get("crash_log"), state["drained_at"], active_off[:1], state["busy_left"]]))
mlog = machine.LOG[state.get("crash_mlog", 0):]
print(repr(mlog))
"""


def _frames(wire):
    dec = framing.FrameDecoder()
    return list(dec.feed(bytes.fromhex(wire)))


@pytest.mark.parametrize("entry,exc,where", [("link", "MemoryError", "link"), ("poll", "ValueError", "poll"),
                                             ("status", "TypeError", "status"),
                                             ("get_params", "TypeError", "get_params")])
def test_crash_path_on_the_board_hal_under_micropython(micropython, monkeypatch, entry, exc, where):
    from picostim.virtual.micropython_board import adc_u16_for_ohm

    monkeypatch.setenv("PICOSTIM_SHIM_ADC_U16", str(adc_u16_for_ohm(1000)))  # the START's electrode check passes
    frames = [framing.encode_frame(M.HELLO, 1),
              framing.encode_frame(M.SET_PARAMS, 2, M.encode_params(0, P.complete({}))),
              framing.encode_frame(M.START, 3, bytes([1])),
              framing.encode_frame(M.GET_PARAMS, 7, bytes([0])),
              framing.encode_frame(M.STATUS, 4),
              framing.encode_frame(M.HELLO, 5),
              framing.encode_frame(M.STATUS, 6)]
    wire, marks, mlog = run_micropython(_CRASH, [entry] + [f.hex() for f in frames])
    crash_log, drained_at, first_off, busy_left = json.loads(marks)
    assert crash_log is not None, "the injected exception never fired"
    assert busy_left == 0 and drained_at is not None and first_off
    assert first_off[0] >= drained_at >= crash_log, "an SM was halted before the stream drained"
    got = _frames(wire)
    events = [M.decode_event(f.body) for f in got if f.type == M.EVENT]
    kinds = [(e["kind"], e["value"]) for e in events]
    crash = [e for e in events if e["kind"] == "crash"]
    assert len(crash) == 1 and M.decode_crash(crash[0]["value"]) == {"exception": exc, "where": where}
    assert kinds.index(("boot", M.RESET_CRASH)) + 1 == kinds.index(("crash", crash[0]["value"]))
    hello = [M.decode_hello(f.body) for f in got if f.type == M.HELLO | M.RESPONSE and f.seq == 5]
    assert hello and hello[0]["reset_reason"] == M.RESET_CRASH
    status = [M.decode_status(f.body) for f in got if f.type == M.STATUS | M.RESPONSE and f.seq == 6]
    assert status and status[0]["counters"]["crashes"] == 1  # serving again after the crash
    # the halt: every SM's OUT pins low through SMx_INSTR, DMA aborted, DACs shut down by the CPU (LDAC low),
    # drive pins SIO outputs driven low
    log = eval(mlog)  # noqa: S307 - our own repr of tuples
    for ch in range(board.CHANNELS):
        assert ("mem", dma_chain.pio_sm_instr_reg(board.CH_PIO[ch], board.CH_SM[ch]), 0xA003) in log
    assert any(e[0] == "mem" and e[1] == dma_chain.DMA_CHAN_ABORT for e in log)
    spi = [e[2] for e in log if e[0] == "spi_write"]
    for cmd in (dac_bus.shutdown_command(False), dac_bus.shutdown_command(True)):
        assert spi.count(bytes([cmd >> 8, cmd & 0xFF])) >= board.CHANNELS
    assert ("pin_value", board.DAC_LDAC_PIN, 0) in log
    for ch in range(board.CHANNELS):
        for p in (board.CH_POS[ch], board.CH_NEG[ch], board.CH_RECOVERY[ch]):
            assert ("pin", p, 1, -1, 0) in log
