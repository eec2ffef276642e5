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
where = 'flash'
try:
    b = sq.SequenceBuilder(params, LIMITS, sq.FileStore('/').records(0))
    for k in range(0, N, 20):
        b.add(k, onsets[k:k + 20], amps[k:k + 20])
except OSError as e:
    print('no flash file:', e)
    where = 'ram'
    b = sq.SequenceBuilder(params, LIMITS, sq.RamRecords())
    for k in range(0, N, 20):
        b.add(k, onsets[k:k + 20], amps[k:k + 20])
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
fills = []
consumed = 0
while not f.finished:
    consumed = min(consumed + 32, f.head)
    h = f.head
    t0 = time.ticks_us()
    f.fill(consumed)
    fills.append((td(time.ticks_us(), t0), f.head - h))
fill_us = sum(x[0] for x in fills)
fill_n = sum(x[1] for x in fills)
fill_max = max(x[0] / max(1, x[1]) for x in fills if x[1])
r = t.sequence.reader()
t0 = time.ticks_us()
for i in range(N):
    r.next()
t_read = td(time.ticks_us(), t0)
w = pe.sequence_writer([t], [0])
chunks = []
while not w.done:
    t0 = time.ticks_us()
    ops = w.chunk(32)
    chunks.append(td(time.ticks_us(), t0))
t_write = sum(chunks)
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
ff = 0
fn = 0
consumed = 0
while not f.finished:
    consumed = min(consumed + 32, f.head)
    h = f.head
    t0 = time.ticks_us()
    f.fill(consumed)
    ff += td(time.ticks_us(), t0)
    fn += f.head - h
w = pe.sequence_writer([t], [0])
fw = 0
while not w.done:
    t0 = time.ticks_us()
    w.chunk(32)
    fw += td(time.ticks_us(), t0)
print('SEQFAST', f_read, ff, fn, fw)
gc.collect()
print('SEQWHERE', where)
print('SEQBENCH', t_plan, t_load, n_load, fill_us, fill_n, int(fill_max), t_read, N, t_write, N - 1, t_reg, n_reg,
      gc.mem_free())
"""


def main():
    uf2 = os.environ.get("PICOSTIM_UF2")
    if not uf2:
        print("sequence_feed_m0: skipped (set PICOSTIM_UF2 to an official MicroPython rp2 image)")
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
