"""sigrok session files (.sr) and the ``sigrok-cli`` command line.

Session file layout (libsigrok 0.5, file format version 2): a zip with ``version`` (``2``), ``metadata``
(an ini file) and the raw logic samples in chunks ``logic-1-1``, ``logic-1-2``... (format version 1 used a
single ``logic-1``). Each sample is ``unitsize`` little-endian bytes; ``probe<k>=<name>`` in the metadata
names bit ``k-1``.

Reading never makes a Python object per sample: chunks are concatenated into blocks of a few MiB and
decoded with NumPy (``frombuffer`` -> XOR with the previous sample -> ``flatnonzero`` of the changes ->
per-bit selection among the change positions only). Writing expands the edges to samples block by block
(``np.repeat`` of run lengths), so a 100 M-sample file is written with bounded memory.
"""

from __future__ import annotations

import configparser
import math
import os
import re
import shutil
import subprocess
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .trace import CaptureError, Channel, Trace
from .vcd import format_samplerate, parse_samplerate

SIGROK_CLI = "sigrok-cli"
_READ_BLOCK = 1 << 23  # bytes decoded per NumPy step when reading
WRITE_CHUNK_SAMPLES = 1 << 22  # samples per logic-1-<k> member when writing
_DTYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class SigrokError(RuntimeError):
    """sigrok-cli failed or timed out (the analyzer link: exit 1 in the CLI). One line."""


# ------------------------------------------------------------------------------------------ read .sr
def _chunk_names(zf: zipfile.ZipFile, capturefile: str) -> list[str]:
    names = set(zf.namelist())
    if capturefile in names:  # format version 1: one member
        return [capturefile]
    pat = re.compile(re.escape(capturefile) + r"-(\d+)$")
    found = sorted((int(m.group(1)), n) for n in names if (m := pat.match(n)))
    return [n for _, n in found]


def read_sr(path: str | Path, *, packed: bool | None = None) -> Trace:
    """Read a sigrok session file (logic channels of device 1) into a :class:`Trace`.

    ``packed``: whether the k-th listed probe is stored in bit k (rather than bit ``index``); ``None``
    detects it (see below)."""
    with zipfile.ZipFile(path) as zf:
        if "metadata" not in zf.namelist():
            raise CaptureError(f"capture {path}: a zip without sigrok metadata (not a sigrok session file)")
        meta = configparser.ConfigParser(interpolation=None, strict=False)
        meta.optionxform = str  # keep key case
        meta.read_string(zf.read("metadata").decode("utf-8", "replace"))
        dev = next((s for s in meta.sections() if s.startswith("device")), None)
        if dev is None:
            raise CaptureError(f"capture {path}: metadata has no [device] section")
        sec = meta[dev]
        if "samplerate" not in sec:
            raise CaptureError(f"capture {path}: metadata has no samplerate")
        try:
            samplerate = parse_samplerate(sec["samplerate"])
        except ValueError:
            raise CaptureError(f"capture {path}: samplerate = {sec['samplerate'][:40]!r}: not a sample rate") from None
        if not (math.isfinite(samplerate) and samplerate > 0):
            raise CaptureError(f"capture {path}: samplerate = {sec['samplerate'][:40]}: not usable (must be > 0)")
        try:
            unitsize = int(sec.get("unitsize", "1"))
        except ValueError:
            unitsize = 0
        if not 1 <= unitsize <= 8:
            raise CaptureError(f"capture {path}: unitsize = {sec.get('unitsize', '')[:20]}: not a logic unit size (1..8 bytes)")
        capturefile = sec.get("capturefile", "logic-1")
        probes: dict[int, str] = {}
        for key, value in sec.items():
            m = re.fullmatch(r"probe(\d+)", key)
            if m:
                probes[int(m.group(1)) - 1] = value
        probe_bits = sorted(probes)
        if probe_bits and probe_bits[-1] >= unitsize * 8:
            raise ValueError(f"{path}: probe bit {probe_bits[-1]} outside unitsize {unitsize}")
        bits = list(range(unitsize * 8))  # decode every bit; map to probes after (see packing below)
        if unitsize in _DTYPES:
            dtype = _DTYPES[unitsize]
            words_needed = None
        else:  # odd unit sizes (3, 5, ...): widen to uint64
            dtype = np.uint64
            words_needed = unitsize
        toggles: dict[int, list[np.ndarray]] = {b: [] for b in bits}
        prev = None  # last sample of the previous block
        first = None
        offset = 0  # sample index of the block's first sample
        pending = b""
        mask = (1 << (unitsize * 8)) - 1

        def flush(buf: bytes) -> None:
            nonlocal prev, first, offset
            if not buf:
                return
            if words_needed is None:
                s = np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<"))
            else:
                raw = np.frombuffer(buf, dtype=np.uint8).reshape(-1, unitsize)
                pad = np.zeros((len(raw), 8), dtype=np.uint8)
                pad[:, :unitsize] = raw
                s = pad.view("<u8").ravel()
            if len(s) == 0:
                return
            if first is None:
                first = int(s[0]) & mask
                prev = s[:1].copy()
            changed = np.empty(len(s), dtype=s.dtype)
            changed[0] = s[0] ^ prev[0]
            np.bitwise_xor(s[1:], s[:-1], out=changed[1:])
            changed &= np.asarray(mask, dtype=s.dtype)
            pos = np.flatnonzero(changed)
            if len(pos):
                cv = changed[pos]
                for b in bits:
                    sel = (cv >> np.asarray(b, dtype=s.dtype)) & np.asarray(1, dtype=s.dtype)
                    hits = pos[sel.astype(bool)]
                    if len(hits):
                        toggles[b].append(hits.astype(np.int64) + offset)
            prev = s[-1:].copy()
            offset += len(s)

        buf: list[bytes] = []
        size = 0
        for name in _chunk_names(zf, capturefile):
            data = pending + zf.read(name) if pending else zf.read(name)
            cut = len(data) - len(data) % unitsize
            pending = data[cut:]
            buf.append(data[:cut])
            size += cut
            if size >= _READ_BLOCK:
                flush(b"".join(buf))
                buf, size = [], 0
        flush(b"".join(buf))

    per_bit = {}
    for b in bits:
        tg = np.concatenate(toggles[b]) if toggles[b] else np.zeros(0, np.int64)
        init = (first >> b) & 1 if first is not None else 0
        per_bit[b] = Channel(init, tg[tg > 0])
    # libsigrok 0.5 writes ``probe<index+1>`` for the enabled channels but some drivers (demo) store their
    # samples packed (k-th enabled channel in bit k); sigrok's own VCD output reads them packed. Detect it:
    # probe indices with gaps, and activity only in the low len(probes) bits, some of them not probe bits.
    active = {b for b, ch in per_bit.items() if ch.initial or len(ch.toggles)}
    n = len(probe_bits)
    if packed is None:
        packed = (probe_bits != list(range(n)) and active <= set(range(n))
                  and bool(active - set(probe_bits)))
    channels: dict[str, Channel] = {}
    for k, b in enumerate(probe_bits):
        channels[probes[b]] = per_bit[k if packed else b]
    return Trace(float(samplerate), int(offset), channels)


# ------------------------------------------------------------------------------------------ write .sr
def _levels_block(ch: Channel, start: int, stop: int) -> np.ndarray:
    """Levels of ``ch`` for samples [start, stop) as uint8, via run lengths (no per-sample Python)."""
    tg = ch.toggles
    lo, hi = np.searchsorted(tg, [start, stop], side="right")
    lvl0 = ch.level_at(start)
    inner = tg[lo:hi]
    inner = inner[inner < stop]
    bounds = np.concatenate(([start], inner, [stop]))
    runs = np.diff(bounds)
    levels = (np.arange(len(runs)) & 1).astype(np.uint8) ^ np.uint8(lvl0)
    return np.repeat(levels, runs)


def write_sr(trace: Trace, path: str | Path, *, chunk_samples: int = WRITE_CHUNK_SAMPLES,
             compresslevel: int = 1) -> None:
    """Write ``trace`` as a sigrok session file (format version 2) that ``sigrok-cli -i`` and PulseView load.
    Channel ``k`` of ``trace.channels`` (in order) is bit ``k``."""
    names = list(trace.channels)
    n = len(names)
    unitsize = 1 if n <= 8 else 2 if n <= 16 else 4 if n <= 32 else 8
    if n > 64:
        raise ValueError("at most 64 channels")
    dtype = np.dtype(_DTYPES[unitsize]).newbyteorder("<")
    lines = ["[global]", "sigrok version=0.5.2", "", "[device 1]", "capturefile=logic-1",
             f"total probes={unitsize * 8}",
             f"samplerate={format_samplerate(trace.samplerate_hz)}", "total analog=0"]
    lines += [f"probe{i + 1}={name}" for i, name in enumerate(names)]
    lines += [f"unitsize={unitsize}", ""]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as zf:
        zf.writestr("version", "2")
        zf.writestr("metadata", "\n".join(lines))
        k = 0
        for start in range(0, trace.n_samples, chunk_samples):
            stop = min(start + chunk_samples, trace.n_samples)
            block = np.zeros(stop - start, dtype=dtype)
            for bit, name in enumerate(names):
                lv = _levels_block(trace.channels[name], start, stop)
                if bit == 0:
                    block |= lv.astype(dtype)
                else:
                    block |= lv.astype(dtype) << dtype.type(bit)
            k += 1
            zf.writestr(f"logic-1-{k}", block.tobytes())


# ------------------------------------------------------------------------------------------ sigrok-cli
def sigrok_cli_path() -> str | None:
    """Absolute path of ``sigrok-cli`` or None if it is not installed."""
    return shutil.which(SIGROK_CLI)


def _rate_arg(samplerate: float | str) -> str:
    if isinstance(samplerate, str):
        return samplerate.replace(" ", "").replace("Hz", "").replace("hz", "").lower()
    hz = float(samplerate)
    for suffix, mult in (("g", 1e9), ("m", 1e6), ("k", 1e3)):
        if hz >= mult and (hz / mult) == int(hz / mult):
            return f"{int(hz / mult)}{suffix}"
    return str(int(hz))


def build_capture_command(driver: str, samplerate: float | str, out_path: str | Path, *,
                          samples: int | None = None, duration_s: float | None = None,
                          channels: Mapping[str, str] | Iterable[str] | None = None,
                          trigger: str | Mapping[str, str] | None = None,
                          config: Mapping[str, str] | None = None,
                          wait_trigger: bool = False, sigrok_cli: str = SIGROK_CLI) -> list[str]:
    """The ``sigrok-cli`` argument list for a logic capture.

    ``driver``: e.g. ``"fx2lafw"`` (optionally ``"fx2lafw:conn=1.5"``) or ``"demo"``. ``samplerate``: Hz or
    sigrok text (``"24m"``). Exactly one of ``samples`` / ``duration_s``. ``channels`` maps analyzer channel
    -> trace name (``{"D0": "POS", "D1": "NEG", "D2": "RECOVERY", "D3": "SYNC"}``); the capture file then
    carries the trace names. ``trigger`` is sigrok's ``--triggers`` text in trace names (``"SYNC=r"``) or a
    mapping ``{"SYNC": "r"}`` (``0 1 r f e``)."""
    if (samples is None) == (duration_s is None):
        raise ValueError("give exactly one of samples or duration_s")
    cmd = [sigrok_cli, "--driver", driver, "--config", f"samplerate={_rate_arg(samplerate)}"]
    for key, value in (config or {}).items():
        cmd += ["--config", f"{key}={value}"]
    if samples is not None:
        if int(samples) <= 0:
            raise ValueError("samples must be positive")
        cmd += ["--samples", str(int(samples))]
    else:
        ms = max(1, int(round(float(duration_s) * 1000)))
        cmd += ["--time", f"{ms}ms"]
    if channels:
        if isinstance(channels, Mapping):
            spec = ",".join(f"{src}={dst}" if dst and dst != src else src for src, dst in channels.items())
        else:
            spec = ",".join(channels)
        cmd += ["--channels", spec]
    if trigger:
        text = trigger if isinstance(trigger, str) else ",".join(f"{k}={v}" for k, v in trigger.items())
        cmd += ["--triggers", text]
        if wait_trigger:
            cmd += ["--wait-trigger"]
    cmd += ["--output-file", str(out_path)]
    if str(out_path).lower().endswith(".vcd"):
        cmd += ["--output-format", "vcd"]
    else:
        cmd += ["--output-format", "srzip"]
    return cmd


def capture(driver: str, samplerate: float | str, samples: int | str | Path | None = None,
            channels: Mapping[str, str] | Iterable[str] | None = None, out_path: str | Path | None = None,
            trigger: str | Mapping[str, str] | None = None, *, duration_s: float | None = None,
            config: Mapping[str, str] | None = None, wait_trigger: bool = False,
            timeout_s: float | None = None, sigrok_cli: str = SIGROK_CLI) -> Trace:
    """Run ``sigrok-cli`` to capture into ``out_path`` (``.sr`` or ``.vcd``) and return the decoded Trace.

    ``samples`` or ``duration_s`` (one of them; a path as third positional argument is taken as
    ``out_path``, so ``capture(driver, rate, "x.sr", duration_s=1)`` works too); ``channels`` maps analyzer channel -> trace name, e.g.
    ``{"D0": "POS", "D1": "NEG", "D2": "RECOVERY", "D3": "SYNC"}``; ``trigger`` e.g. ``{"SYNC": "r"}``.
    Raises ``FileNotFoundError`` if sigrok-cli is missing and ``RuntimeError`` (with sigrok's stderr) on
    failure. See :func:`build_capture_command` for the arguments."""
    if isinstance(samples, (str, os.PathLike)):  # also accept capture(driver, rate, out_path, ...)
        if out_path is not None:
            raise ValueError("out_path given twice")
        out_path, samples = samples, None
    if out_path is None:
        raise ValueError("out_path is required (.sr or .vcd)")
    cmd = build_capture_command(driver, samplerate, out_path, samples=samples, duration_s=duration_s,
                                channels=channels, trigger=trigger, config=config,
                                wait_trigger=wait_trigger, sigrok_cli=sigrok_cli)
    if shutil.which(cmd[0]) is None:
        raise FileNotFoundError(f"{cmd[0]} not found: install sigrok-cli (Debian: apt install sigrok-cli)")
    if os.path.exists(out_path):
        os.remove(out_path)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SigrokError(f"sigrok-cli did not finish within {timeout_s:g} s: {' '.join(cmd)}") from None
    if proc.returncode != 0 or not os.path.exists(out_path):
        why = (proc.stderr.strip().splitlines() or ["no capture file written"])[-1]
        raise SigrokError(f"sigrok-cli failed ({proc.returncode}): {why} (command: {' '.join(cmd)})")
    return read_capture(out_path)


def read_capture(path: str | Path, samplerate_hz: float | None = None) -> Trace:
    """Read a ``.sr`` or ``.vcd`` capture by extension (zip magic wins over the extension).

    Anything that is not a usable capture (empty, truncated, no metadata, no sample rate, time going
    backwards, or no file at all) raises :class:`CaptureError` with one line naming the file and the
    problem."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except (OSError, ValueError) as e:  # missing, a directory, a NUL in the name...
        raise CaptureError(f"capture {str(path)[:200]!r}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    if not magic:
        raise CaptureError(f"capture {path}: the file is empty")
    try:
        if magic.startswith(b"PK"):
            trace = read_sr(path)
        else:
            from .vcd import read_vcd

            if not magic.lstrip().startswith(b"$"):
                raise CaptureError(f"capture {path}: neither a sigrok session (.sr, a zip) nor a VCD "
                                   f"(starts with {magic!r})")
            trace = read_vcd(path, samplerate_hz=samplerate_hz)
    except CaptureError as e:
        if str(e).startswith("capture "):
            raise
        raise CaptureError(f"capture {path}: {e}") from None
    except zipfile.BadZipFile as e:
        raise CaptureError(f"capture {path}: not a complete sigrok session (.sr zip): {e}") from None
    except (KeyError, configparser.Error, UnicodeDecodeError, ValueError, OverflowError, ZeroDivisionError,
            EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise CaptureError(f"capture {path}: unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    if not (math.isfinite(trace.samplerate_hz) and trace.samplerate_hz > 0):
        raise CaptureError(f"capture {path}: sample rate = {trace.samplerate_hz:g} Hz: not usable (must be > 0)")
    if trace.n_samples <= 0:
        raise CaptureError(f"capture {path}: holds no samples")
    if not trace.channels:
        raise CaptureError(f"capture {path}: holds no 1-bit channels")
    return trace


def write_capture(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` as ``.vcd`` (by extension) or otherwise as a sigrok ``.sr`` session."""
    if str(path).lower().endswith(".vcd"):
        from .vcd import write_vcd

        write_vcd(trace, path)
    else:
        write_sr(trace, path)


@dataclass
class TimingResult:
    """Output of sigrok's ``timing`` decoder: one entry per interval between consecutive edges."""

    starts: np.ndarray  # sample numbers
    ends: np.ndarray
    texts: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def widths(self) -> np.ndarray:
        """Interval widths in samples."""
        return self.ends - self.starts


_TIMING_LINE = re.compile(r"^(\d+)-(\d+)\s+timing-\d+:\s*(.*)$")


def run_timing_decoder(path: str | Path, channel: str, *, input_format: str | None = None,
                       sigrok_cli: str = SIGROK_CLI, timeout_s: float | None = None) -> TimingResult:
    """Run sigrok's ``timing`` protocol decoder on ``channel`` of a capture file and parse its output
    (sample-number ranges of every interval between edges). Used to benchmark against the analyzer."""
    cmd = [sigrok_cli, "--input-file", str(path)]
    fmt = input_format or ("vcd" if str(path).lower().endswith(".vcd") else None)
    if fmt:
        cmd += ["--input-format", fmt]
    cmd += ["--protocol-decoders", f"timing:data={channel}", "--protocol-decoder-annotations", "timing=time",
            "--protocol-decoder-samplenum"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sigrok-cli failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
    starts, ends, texts = [], [], []
    for line in proc.stdout.splitlines():
        m = _TIMING_LINE.match(line.strip())
        if m:
            starts.append(int(m.group(1)))
            ends.append(int(m.group(2)))
            texts.append(m.group(3))
    return TimingResult(np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64), texts, elapsed)


_SPI_LINE = re.compile(r"^(\d+)-(\d+)\s+spi-\d+:\s*([0-9A-Fa-f]+)\s*$")


def run_spi_decoder(path: str | Path, cs: str, *, clk: str = "SCK", mosi: str = "MOSI", wordsize: int = 16,
                    input_format: str | None = None, sigrok_cli: str = SIGROK_CLI,
                    timeout_s: float | None = None) -> list[tuple[int, int, int]]:
    """Run sigrok's own ``spi`` decoder (mode 0, MSB first, CS# active low) on the DAC bus of a capture
    file and return its MOSI words as ``(start sample, end sample, word)``: the independent decoding
    the DAC bus check is compared with (tests/test_sigrok_spi_agrees.py). sigrok emits no word for a
    frame with fewer bits than ``wordsize``."""
    cmd = [sigrok_cli, "--input-file", str(path)]
    fmt = input_format or ("vcd" if str(path).lower().endswith(".vcd") else None)
    if fmt:
        cmd += ["--input-format", fmt]
    cmd += ["--protocol-decoders",
            f"spi:clk={clk}:mosi={mosi}:cs={cs}:wordsize={int(wordsize)}:cpol=0:cpha=0:bitorder=msb-first",
            "--protocol-decoder-annotations", "spi=mosi-data", "--protocol-decoder-samplenum"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise SigrokError(f"sigrok-cli failed ({proc.returncode}): {' '.join(cmd)}: "
                          f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
    out = []
    for line in proc.stdout.splitlines():
        m = _SPI_LINE.match(line.strip())
        if m:
            out.append((int(m.group(1)), int(m.group(2)), int(m.group(3), 16)))
    return out
