"""Per-pulse cost of feeding a custom sequence on the emulated Cortex-M0+ (issue 13 item 4): the
official MicroPython rp2 image ($PICOSTIM_UF2) in rp2040js, picostim's deploy tree, driven from the
REPL (host/picostim/virtual/wholechip). Skips (exit 0, one line) without an image.

    PICOSTIM_UF2=/work/img/rp2-pico-v1.22.0.uf2 .venv/bin/python bench/sequence_feed_m0.py

What the main loop does per pulse of a sequence, each timed with time.ticks_us() (emulated time):
* the stream: Feeder.fill over a SequencePlan (the SequenceReader's record from flash, one pool
  entry written, one ring slot), in top-ups of 32 entries as a poll after 32 played pulses would;
* the DAC op writer: SequenceWriter.chunk (its own reader, the wait op, two writes when the amplitude
  changes: here every pulse changes);
* the reader alone (records read 32 at a time from littlefs);
* for comparison, Feeder.fill of a regular periodic train (the fast path) per entry.
``--full``: the firmware's whole main loop (Rp2Hal + Controller, link poll + poll()) playing a
varying-amplitude sequence uploaded by SET_SEQUENCE frames (SEQBENCH_N pulses, SEQBENCH_INTERVALS in ns;
SEQBENCH_PROFILE=1 times the HAL/controller calls): pulses played, onsets exact, loop iteration times.
Onsets start at 10 s (SEQBENCH_BASE_NS), so every onset is a heap-allocated int (>= 2**30 ticks) as
in a long sequence; SEQBENCH_BASE_NS=0 keeps them small ints.
Emulated time is instruction-count based (no flash wait states or XIP misses modelled): a board may
be slower where code or littlefs data miss the cache.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCRIPT = """
import gc, time
from array import array
import uctypes
from firmware import pulse_engine as pe, dma_chain as dc, sequence as sq
from firmware.limits import LIMITS
from protocol import params as P
N = 640
td = time.ticks_diff
params = P.complete({"phase1_ns": 100000, "phase2_ns": 100000, "period_ns": 1000000, "amplitude_ua": 3000,
                     "sequence_pulses": N})
onsets = [BASE_NS + i * 1000000 + (i % 7) * 8 for i in range(N)]
amps = [300 + 100 * (i % 9) for i in range(N)]
def upload(records):
    b = sq.SequenceBuilder(params, LIMITS, records)
    for k in range(0, N, 20):
        b.add(k, onsets[k:k + 20], amps[k:k + 20])
    return b
def drain(f):
    # top-ups of 32 entries until the plan ends: [(us, entries written)] per fill()
    fills = []
    consumed = 0
    while not f.finished:
        consumed = min(consumed + 32, f.head)
        h = f.head
        t0 = time.ticks_us()
        f.fill(consumed)
        fills.append((td(time.ticks_us(), t0), f.head - h))
    return fills
def write_all(w):
    # the sequence writer's chunks of 32 boundaries until done: total us
    us = 0
    while not w.done:
        t0 = time.ticks_us()
        w.chunk(32)
        us += td(time.ticks_us(), t0)
    return us
where = 'flash'
try:
    b = upload(sq.FileStore('/').records(0))
except OSError as e:
    print('no flash file:', e)
    where = 'ram'
    b = upload(sq.RamRecords())
t = pe.build_train(params)
t.sequence = b.source()
gc.collect()
t0 = time.ticks_us()
plan = dc.plan_for(t)
t_plan = td(time.ticks_us(), t0)
ring = array('I', [0] * (2 * dc.RING_LEN))
f = dc.Feeder(ring, 0, dc.RING_LEN, lambda blk: uctypes.addressof(blk.words))
gc.collect()
t0 = time.ticks_us()
f.load(plan)
t_load = td(time.ticks_us(), t0)
n_load = f.head
fills = drain(f)
fill_us = sum(x[0] for x in fills)
fill_n = sum(x[1] for x in fills)
fill_max = max(x[0] / max(1, x[1]) for x in fills if x[1])
r = t.sequence.reader()
t0 = time.ticks_us()
for i in range(N):
    r.next()
t_read = td(time.ticks_us(), t0)
t_write = write_all(pe.sequence_writer([t], [0]))
reg = pe.build_train(P.complete({"phase1_ns": 100000, "phase2_ns": 100000, "period_ns": 1000000}))
rp = dc.Plan(reg)
f2 = dc.Feeder(ring, 0, dc.RING_LEN, lambda blk: uctypes.addressof(blk.words))
f2.load(rp)
h = f2.head
t0 = time.ticks_us()
f2.fill(h)
t_reg = td(time.ticks_us(), t0)
n_reg = f2.head - h
# the same with a reader that decodes a 32-record read in ONE struct call (a proposal for
# firmware/sequence.py; played once, no cycle offset: enough for a cost comparison)
import struct
class FastReader:
    def __init__(self, src):
        self.src = src
        self.buf = bytearray(320)
        self.mv = memoryview(self.buf)
        self.vals = ()
        self.i = 0
        self.j = 0
    def next(self):
        i = self.i
        if i >= len(self.vals):
            n = self.src.pulses - self.j
            if n <= 0:
                return None
            if n > 32:
                n = 32
            self.src.records.read_into(self.j * 10, self.mv[:n * 10])
            self.vals = struct.unpack_from('<' + 'QH' * n, self.buf, 0)
            self.j += n
            i = 0
        self.i = i + 2
        v = self.vals
        return v[i], v[i + 1]
    def close(self):
        pass
src = t.sequence
src.reader = lambda: FastReader(src)
r = src.reader()
t0 = time.ticks_us()
for i in range(N):
    r.next()
f_read = td(time.ticks_us(), t0)
plan = dc.plan_for(t)
f = dc.Feeder(ring, 0, dc.RING_LEN, lambda blk: uctypes.addressof(blk.words))
f.load(plan)
fills = drain(f)
ff = sum(x[0] for x in fills)
fn = sum(x[1] for x in fills)
fw = write_all(pe.sequence_writer([t], [0]))
print('SEQFAST', f_read, ff, fn, fw)
gc.collect()
print('SEQWHERE', where)
print('SEQBENCH', t_plan, t_load, n_load, fill_us, fill_n, int(fill_max), t_read, N, t_write, N - 1, t_reg, n_reg,
      gc.mem_free())
"""


FULL_SCRIPT = """
import gc, time, sys, select
from firmware.hal_rp2 import Rp2Hal
from firmware.controller import Controller
from firmware import sequence
from protocol import messages as M
from protocol import params as P
from protocol.framing import encode_frame
out = []
hal = Rp2Hal()
c = Controller(hal, out.append, sequences=sequence.RamStore())
params = P.complete({"phase1_ns": 100000, "phase2_ns": 100000, "period_ns": INTERVAL, "amplitude_ua": 2000,
                     "sequence_pulses": N})
c.receive(encode_frame(M.SET_PARAMS, 1, M.encode_params(0, params)))
for k in range(0, N, M.SEQUENCE_CHUNK):
    m = min(M.SEQUENCE_CHUNK, N - k)
    on = [(k + i) * INTERVAL + 8 * ((k + i) // 5) for i in range(m)]
    am = [500 + 250 * ((k + i) % 7) for i in range(m)]
    c.receive(encode_frame(M.SET_SEQUENCE, 2 + k // M.SEQUENCE_CHUNK, M.encode_set_sequence(0, k, on, am)))
    gc.collect()
del out[:]
PROF = {}
def timed(obj, name, key):
    f = getattr(obj, name)
    def w(*a, **k):
        t = time.ticks_us()
        r = f(*a, **k)
        e = PROF.get(key)
        dt = time.ticks_diff(time.ticks_us(), t)
        PROF[key] = (dt + (e[0] if e else 0), 1 + (e[1] if e else 0), max(dt, e[2] if e else 0))
        return r
    setattr(obj, name, w)
if PROFILE:
    for n in ("running", "pulses", "dac_play", "phase1_samples", "dac_busy", "dac_mark_pulses", "_service",
              "_dac_service"):
        timed(hal, n, "hal." + n)
    for n in ("_feed_ramp", "_monitor", "_follow_dac", "poll"):
        timed(c, n, "ctl." + n)
    c._sampler = hal.phase1_samples
    for st in hal._ch:
        timed(st.feeder, "fill", "feeder.fill")
gc.collect()
free0 = gc.mem_free()
c.receive(encode_frame(M.START, 900, b"\\x01"))
p = select.poll()
p.register(sys.stdin, select.POLLIN)
d = []
last = time.ticks_us()
t0 = last
while len(d) < MAX_LOOPS:
    p.poll(1)
    c.poll()
    now = time.ticks_us()
    d.append(time.ticks_diff(now, last))
    last = now
    if len(d) % 200 == 0:
        print('PROGRESS', len(d), hal.pulses(0), c.state[0], time.ticks_diff(now, t0))
    if c.state[0] == 0 and time.ticks_diff(now, t0) > 50000:
        break
gc.collect()
for o in out[-4:]:
    print('OUT', bytes(o).hex())
for k in sorted(PROF):
    print('PROF', k, PROF[k])
print('FULL', hal.pulses(0), len(d), min(d), sum(d) // len(d), max(d), free0 - gc.mem_free(), len(out))
"""


def full_loop(uf2, interval_ns, n):
    """The firmware's own main loop (link poll with its 1 ms timeout + Controller.poll, as
    firmware/main.py) playing a varying-amplitude sequence of ``n`` pulses ``interval_ns`` apart (phase
    1 100 µs, monitoring on; every 5th interval one tick longer), uploaded by SET_SEQUENCE frames into
    RAM records (the harness's flash takes no littlefs writes), started by START, on the emulated chip.
    Returns the pulses the HAL counted, the phase-1 rises recorded on the pins and whether every onset
    is exact relative to pulse 0, and the loop iteration times (µs)."""
    import serial

    from firmware import board
    from firmware import pulse_engine as pe
    from picostim.virtual.wholechip import WholeChip, sm_start_cycle

    onsets = [i * interval_ns + 8 * (i // 5) for i in range(n)]
    code = "N = %d\nINTERVAL = %d\nMAX_LOOPS = %d\nPROFILE = %d\n" % (
        n, interval_ns, 2000, int(os.environ.get("SEQBENCH_PROFILE", "0"))) + FULL_SCRIPT
    with WholeChip(uf2, run_main=False, extra_files={"picostim_seqfull.py": code.encode()}) as wc:
        ser = serial.Serial(wc.path, timeout=0.2)
        time.sleep(0.5)
        wc.record([board.CH_NEG[0], board.CH_POS[0]])
        ser.write(b"\r\nimport picostim_seqfull\r\n")
        buf = b""
        t = time.monotonic()
        while b"FULL" not in buf or not buf.rstrip().endswith(b">>>"):
            got = ser.read(4096)
            if got and os.environ.get("SEQBENCH_VERBOSE"):
                print(got.decode(errors="replace"), end="", flush=True)
            buf += got
            if b"Traceback" in buf and buf.rstrip().endswith(b">>>"):
                raise RuntimeError(buf.decode(errors="replace")[-3000:])
            if time.monotonic() - t > 3000:
                raise TimeoutError(buf[-2000:])
        rec = wc.recorded()
        ser.close()
    for line in re.findall(rb"PROF ([^\r\n]+)", buf):
        print("  time in (total µs, calls, max µs):", line.decode())
    m = re.search(rb"FULL ([\d ]+)", buf)
    pulses, loops, dmin, dmean, dmax, heap, nout = (int(x) for x in m.group(1).split())
    t0 = sm_start_cycle(rec, 0, 0)
    neg = board.CH_NEG[0]
    rises = [int(c) - t0 - 2 for c, p, lv in rec["edges"] if p == neg and lv == 1 and int(c) >= t0]
    want = [pe.ns_to_ticks(o) for o in onsets]
    # every onset exact relative to pulse 0 (pulse 0 itself comes a fixed 1 cycle later here than on the
    # register-level model: where rp2040js lands the CPU's enable write)
    exact = len(rises) == len(want) and all(g - rises[0] == w for g, w in zip(rises, want))
    return {"interval_ns": interval_ns, "n": n, "pulses": pulses, "rises": len(rises), "exact": exact,
            "pulse0_after_enable": rises[0] + 2 if rises else None, "loop_us": (dmin, dmean, dmax), "loops": loops}


def main():
    uf2 = os.environ.get("PICOSTIM_UF2")
    if not uf2:
        print("sequence_feed_m0: skipped (set PICOSTIM_UF2 to an official MicroPython rp2 image)")
        return 0
    if "--full" in sys.argv:  # the whole main loop playing a sequence at 1 ms and 2 ms
        for interval in [int(x) for x in os.environ.get("SEQBENCH_INTERVALS", "1000000,2000000").split(",")]:
            print(full_loop(uf2, interval, int(os.environ.get("SEQBENCH_N", "400"))), flush=True)
            if os.environ.get("SEQBENCH_ONE"):
                break
        return 0
    import serial

    from picostim.virtual.wholechip import WholeChip

    t = time.monotonic()
    base_ns = int(os.environ.get("SEQBENCH_BASE_NS", 10 * 10**9))  # 10 s: every onset a heap int
    code = "BASE_NS = %d\n" % base_ns + SCRIPT
    with WholeChip(uf2, run_main=False, extra_files={"picostim_seqbench.py": code.encode()}) as wc:
        ser = serial.Serial(wc.path, timeout=0.2)
        time.sleep(0.5)
        ser.write(b"\r\nimport picostim_seqbench\r\n")
        buf = b""
        while b"SEQBENCH" not in buf or not buf.rstrip().endswith(b">>>"):
            buf += ser.read(4096)
            if b"Traceback" in buf and buf.rstrip().endswith(b">>>"):
                raise RuntimeError(buf.decode(errors="replace")[-3000:])
            if time.monotonic() - t > 1200:
                raise TimeoutError(buf[-2000:])
        ser.close()
    w = re.search(rb"SEQWHERE (\w+)", buf)
    print("records in %s" % w.group(1).decode())
    m = re.search(rb"SEQBENCH ([\d ]+)", buf)
    v = [int(x) for x in m.group(1).split()]
    (t_plan, t_load, n_load, fill_us, fill_n, fill_max, t_read, n_read, t_write, n_write, t_reg, n_reg,
     free) = v
    print("| measurement (emulated Cortex-M0+ at 125 MHz, MicroPython image) | value |")
    print("|---|---|")
    print("| SequencePlan (pool of 128 entries, 8 KB) | %d µs |" % t_plan)
    print("| Feeder.load: first %d entries | %d µs (%.0f µs an entry) |" % (n_load, t_load, t_load / n_load))
    print("| Feeder.fill, top-ups of 32 entries: per pulse (mean / worst top-up) | %.0f / %d µs |"
          % (fill_us / fill_n, fill_max))
    print("| SequenceReader.next alone (littlefs, 32 records a read), per pulse | %.0f µs |" % (t_read / n_read))
    print("| SequenceWriter.chunk, per boundary (every pulse changes amplitude) | %.0f µs |" % (t_write / n_write))
    print("| regular train: Feeder.fill per entry (the fast path), for comparison | %.1f µs |" % (t_reg / n_reg))
    print("| gc.mem_free() at the end | %d B |" % free)
    fm = re.search(rb"SEQFAST (\d+) (\d+) (\d+) (\d+)", buf)
    if fm:
        f_read, ff, fn, fw = (int(x) for x in fm.groups())
        print("| with a one-struct-call chunk reader (proposal): reader / fill / chunk per pulse | %.0f / %.0f / "
              "%.0f µs |" % (f_read / n_read, ff / fn, fw / n_write))
    print("\nper pulse, stream + DAC ops: %.0f µs (wall %.0f s)" % (fill_us / fill_n + t_write / n_write,
                                                                 time.monotonic() - t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
