"""Firmware on the emulated Cortex-M0+: the official MicroPython rp2 image ($PICOSTIM_UF2) running
picostim's deploy tree in rp2040js (host/picostim/virtual/wholechip). Prints the BENCHMARKS.md table
"Firmware on the emulated Cortex-M0+"; skips (exit 0, one line) without an image.

    PICOSTIM_UF2=/path/to/rp2-pico-v1.22.0.uf2 .venv/bin/python bench/wholechip_m0.py

Emulated time is instruction-count based: rp2040js charges every Cortex-M0+ instruction its cycle
count at 125 MHz and models no flash wait states, XIP cache misses or bus contention, so a real
board may be slower where code runs from flash. Every figure is in emulated time, read from the
emulator's cycle counter (request bytes handed to the USB CDC -> last answer byte; PIO edges).

Two boots: (1) the normal firmware over the CDC: boot to the first frame and to the HELLO answer,
SET_PARAMS -> answer, START -> first pin edge (includes START's electrode check: one test pulse per
channel); (2) the image booted to its REPL with picostim's entry point renamed, the firmware objects
built there and fed the same request frames, to read gc.mem_free() after 4 channels are configured
and to time the main-loop iteration (link poll with its 1 ms timeout + controller.poll()) while 4
trains run.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from firmware import board  # noqa: E402
from protocol import messages as M  # noqa: E402
from protocol import params as P  # noqa: E402
from protocol.framing import encode_frame  # noqa: E402

HZ = 125_000_000
MS = 1_000_000
TRAINS = [dict(amplitude_ua=2000, phase1_ns=100_000, phase2_ns=100_000, period_ns=1 * MS),
          dict(amplitude_ua=1500, phase1_ns=60_000, phase2_ns=60_000, period_ns=1_250_000),
          dict(amplitude_ua=1000, phase1_ns=200_000, phase2_ns=200_000, period_ns=2 * MS, polarity=1),
          dict(amplitude_ua=3000, phase1_ns=40_000, phase2_ns=120_000, period_ns=500_000)]


def ms(cycles: float) -> float:
    return cycles * 1000.0 / HZ


def wait_for(pred, timeout_s=120.0):
    t = time.monotonic()
    while not pred():
        if time.monotonic() - t > timeout_s:
            raise TimeoutError("emulated board did not get there")
        time.sleep(0.01)


def latency(wc, fn, reps=1):
    """Emulated ms from the request reaching the CDC to the last byte of its answer."""
    out = []
    for _ in range(reps):
        nrx, ntx = len(wc.rx_log), len(wc.tx_log)
        fn()
        rx = wc.rx_log[nrx][0]
        tx = wc.tx_log[-1][0] if len(wc.tx_log) > ntx else None
        out.append(ms(tx - rx))
    return out


def over_cdc(uf2):
    from picostim import transport
    from picostim.client import Client
    from picostim.virtual.wholechip import WholeChip, sm_start_cycle

    res = {}
    with WholeChip(uf2) as wc:
        wait_for(lambda: wc.tx_log)  # the BOOT event: main.py serves the link
        res["boot_frame_ms"] = ms(wc.tx_log[0][0])
        client = Client(transport.open_port(wc.path), timeout=120.0, retries=0)
        ntx = len(wc.tx_log)
        client.hello()
        res["boot_hello_ms"] = ms(wc.tx_log[-1][0])
        res["hello_ms"] = ms(wc.tx_log[-1][0] - wc.rx_log[0][0]) if ntx < len(wc.tx_log) else None
        res["set_params_ms"] = latency(wc, lambda: client.set_params(0, P.complete(TRAINS[0])), reps=5)
        for ch in range(1, 4):
            client.set_params(ch, P.complete(TRAINS[ch]))
        res["status_ms"] = latency(wc, client.status, reps=5)
        pins = [p for ch in range(4) for p in (board.CH_POS[ch], board.CH_NEG[ch])]
        for mask, key in ((0b0001, "start1_ms"), (0b1111, "start4_ms")):
            wc.record(pins)
            nrx = len(wc.rx_log)
            client.start(mask)
            rx = wc.rx_log[nrx][0]
            answered = wc.tx_log[-1][0]  # the last device bytes when the answer had arrived
            wc.wait_cycles(3 * HZ // 1000)
            rec = wc.recorded()
            t0 = sm_start_cycle(rec, rx, 0)  # the train's SM start (after the check's test pulses)
            first = min(c for c, p, lv in rec["edges"] if lv == 1 and c >= t0)
            res[key] = ms(first - rx)
            res[key.replace("_ms", "_answer_ms")] = ms(answered - rx)
            client.stop(0b1111)
            wc.wait_cycles(5 * HZ // 1000)
        client.close()
    return res


REPL_SCRIPT = """
import gc, time, sys, select
from firmware.hal_rp2 import Rp2Hal
from firmware.controller import Controller
from firmware import storage
out = []
hal = Rp2Hal()
c = Controller(hal, out.append, storage=storage.Store(storage.OsFiles('/params')))
gc.collect()
f0 = gc.mem_free()
for fr in SETS:
    c.receive(fr)
gc.collect()
f1 = gc.mem_free()
c.receive(START)
p = select.poll()
p.register(sys.stdin, select.POLLIN)
d = []
last = time.ticks_us()
for i in range(400):
    p.poll(1)
    c.poll()
    now = time.ticks_us()
    d.append(time.ticks_diff(now, last))
    last = now
gc.collect()
f2 = gc.mem_free()
c.receive(STOP)
print('BENCH', f0, f1, f2, min(d), sum(d) // len(d), max(d), len(out))
"""


def in_repl(uf2):
    import serial

    from picostim.virtual.wholechip import WholeChip

    sets = [encode_frame(M.SET_PARAMS, 10 + ch, M.encode_params(ch, P.complete(TRAINS[ch]))) for ch in range(4)]
    start = encode_frame(M.START, 20, bytes((0b1111,)))
    stop = encode_frame(M.STOP, 21, bytes((0b1111,)))
    code = "SETS = %r\nSTART = %r\nSTOP = %r\n" % (sets, start, stop) + REPL_SCRIPT
    with WholeChip(uf2, run_main=False, extra_files={"picostim_bench.py": code.encode()}) as wc:
        ser = serial.Serial(wc.path, timeout=0.2)
        time.sleep(0.5)
        ser.write(b"\r\nimport picostim_bench\r\n")
        buf = b""
        t = time.monotonic()
        while b"BENCH" not in buf or not buf.rstrip().endswith(b">>>"):
            buf += ser.read(4096)
            if time.monotonic() - t > 600:
                raise TimeoutError(buf[-2000:])
        m = re.search(rb"BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", buf)
        if not m:
            raise RuntimeError(buf.decode(errors="replace")[-2000:])
        f0, f1, f2, dmin, dmean, dmax, nout = (int(x) for x in m.groups())
        ser.close()
    return {"heap_free_idle": f0, "heap_free_4ch": f1, "heap_free_running": f2, "loop_us": (dmin, dmean, dmax),
            "heap_used_4ch": f0 - f1}


def table(a, b, version):
    med = statistics.median
    lines = [
        "| measurement (MicroPython v%d.%d.%d, emulated Cortex-M0+ at 125 MHz) | value |" % version,
        "|---|---|",
        "| boot (reset) to the first frame (BOOT event: main loop serving) | %.0f ms |" % a["boot_frame_ms"],
        "| boot to the HELLO answer (HELLO sent at the BOOT event) | %.0f ms |" % a["boot_hello_ms"],
        "| HELLO request -> answer | %.1f ms |" % a["hello_ms"],
        "| SET_PARAMS request -> answer (median of 5, max) | %.1f ms (max %.1f) |" % (med(a["set_params_ms"]),
                                                                                   max(a["set_params_ms"])),
        "| STATUS request -> answer (median of 5) | %.1f ms |" % med(a["status_ms"]),
        "| START 1 channel -> first edge of the train (incl. the electrode test pulse) | %.1f ms |" % a["start1_ms"],
        "| START 4 channels -> first edge (4 test pulses, one CTRL write) | %.1f ms |" % a["start4_ms"],
        "| START 4 channels -> answer | %.1f ms |" % a["start4_answer_ms"],
        "| gc.mem_free() after the firmware started (idle) | %d B |" % b["heap_free_idle"],
        "| gc.mem_free() after 4 channels configured | %d B (%d B used by the 4 configurations) |"
        % (b["heap_free_4ch"], b["heap_used_4ch"]),
        "| gc.mem_free() with 4 trains running | %d B |" % b["heap_free_running"],
        "| main-loop iteration while 4 trains run (1 ms link poll + controller.poll), min / mean / max "
        "of 400 | %d / %d / %d µs |" % b["loop_us"],
    ]
    return "\n".join(lines)


def main():
    uf2 = os.environ.get("PICOSTIM_UF2")
    if not uf2:
        print("wholechip_m0: skipped (set PICOSTIM_UF2 to an official MicroPython rp2 image)")
        return 0
    from picostim.virtual.wholechip import flash_image

    _, version = flash_image(Path(uf2))
    t = time.monotonic()
    a = over_cdc(uf2)
    print(a, flush=True)
    b = in_repl(uf2)
    print(b, flush=True)
    print(table(a, b, version))
    print("\n(wall time %.0f s)" % (time.monotonic() - t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
