"""firmware/transport.py: the link's writes can never stall the main loop (issue 10 item 10).

On the board a USB CDC write waits up to 500 ms (MICROPY_HW_USB_CDC_TX_TIMEOUT) for FIFO room while
the host has the port open but does not read; the DMA feeder's headroom at 10 kHz is 24 ms. The link
therefore queues frames (bounded, whole frames dropped and counted) and writes one byte per POLLOUT.
Here the "host that does not read" is a pipe or pty nobody reads: a write to it blocks exactly like
the CDC write does (the old ``UsbCdc.write`` did).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from firmware import transport
from protocol import messages as M
from protocol.framing import FrameDecoder, encode_frame


class _Pipe:
    """A link whose host side is a pipe: ``host`` reads, nobody reads until the test does."""

    def __init__(self):
        r_in, self._w_in = os.pipe()
        self._r_out, w_out = os.pipe()
        self.stream_in = os.fdopen(r_in, "rb", buffering=0)
        self.stream_out = os.fdopen(w_out, "wb", buffering=0)
        self.capacity = self._capacity()

    def _capacity(self):
        import fcntl

        return fcntl.fcntl(self.stream_out.fileno(), 1032)  # F_GETPIPE_SZ

    def host_read_all(self):
        os.set_blocking(self._r_out, False)
        got = b""
        while True:
            try:
                chunk = os.read(self._r_out, 65536)
            except BlockingIOError:
                return got
            if not chunk:
                return got
            got += chunk

    def close(self):
        for f in (self.stream_in, self.stream_out):
            try:
                f.close()
            except OSError:
                pass
        for fd in (self._w_in, self._r_out):
            try:
                os.close(fd)
            except OSError:
                pass


def _frames(n, size=60):
    return [encode_frame(M.EVENT, i & 0xFFFF, bytes((i & 0xFF,)) * size) for i in range(n)]


def test_write_never_blocks_when_the_host_does_not_read():
    """Several times the pipe's capacity written while nobody reads: every write() returns at once
    (the old write blocked in the first call that did not fit)."""
    p = _Pipe()
    link = transport.UsbCdc(p.stream_in, p.stream_out)
    frames = _frames(3 * p.capacity // 60 + 10)
    done = threading.Event()
    worst = [0.0]

    def writer():
        for f in frames:
            t0 = time.perf_counter()
            link.write(f)
            worst[0] = max(worst[0], time.perf_counter() - t0)
        done.set()

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    try:
        assert done.wait(5.0), "UsbCdc.write blocked on a host that does not read"
        assert worst[0] < 0.1
        assert link.dropped_frames > 0 and link.pending() <= link.out_max
    finally:
        p.host_read_all()  # unblocks an old-style writer so the thread can end
        p.close()


def test_a_host_that_resumes_reading_gets_whole_frames_only():
    """Frames that did not fit were dropped whole: what the host reads decodes without one CRC error
    or dropped frame, in order, and the queue drains once the host reads again."""
    p = _Pipe()
    link = transport.UsbCdc(p.stream_in, p.stream_out, out_max=1000)
    frames = _frames(3 * p.capacity // 60 + 10)
    try:
        for f in frames:
            link.write(f)
        got = p.host_read_all()
        for _ in range(1000):
            if not link.pending():
                break
            link.pump()
            got += p.host_read_all()
        assert link.pending() == 0
        dec = FrameDecoder()
        seqs = [f.seq for f in dec.feed(got)]
        assert dec.crc_errors == 0 and dec.frames_dropped == 0
        assert len(seqs) + link.dropped_frames == len(frames)
        assert seqs == sorted(seqs) and seqs[0] == 0
        assert link.sent_bytes == len(got)
    finally:
        p.close()


def test_pump_writes_at_most_its_budget_per_call():
    p = _Pipe()
    link = transport.UsbCdc(p.stream_in, p.stream_out)
    try:
        link._q.extend(b"\x01" * 1000)  # queued, not yet pumped
        assert link.pump() == transport.PUMP_MAX_BYTES
        assert link.pending() == 1000 - transport.PUMP_MAX_BYTES
        assert link.drain(100) and link.pending() == 0
    finally:
        p.close()


def test_drain_gives_up_after_its_tries_and_idles_meanwhile():
    p = _Pipe()
    link = transport.UsbCdc(p.stream_in, p.stream_out)
    idles = []
    try:
        while link.pending() == 0:  # fill the pipe: until a drain leaves bytes behind
            link._q.extend(b"\x02" * 4096)
            link.drain(10_000)
        link._q.extend(b"\x03" * 10)
        before = link.pending()
        assert link.drain(5, lambda: idles.append(1)) is False
        assert len(idles) == 5 and link.pending() == before
    finally:
        p.close()


# ---- the real entry point under MicroPython, with the watchdog model enforced ------------------------
mb = pytest.importorskip("picostim.virtual.micropython_board")


@pytest.mark.mpy
def test_firmware_keeps_feeding_the_watchdog_while_the_host_does_not_read():
    """firmware/main.py under the unix port on a pty whose host stops reading while sending STATUS
    requests: the answers (~24 KB) exceed the pty's buffer. The old link blocked in write() until the
    host read again, 3 s later: the shim's watchdog (PICOSTIM_SHIM_WDT=enforce: a feed more than 2 s
    after the previous one is a board reset) fired. Now the loop keeps running and the host, once it
    reads again, gets whole frames and a HELLO answer."""
    if mb.micropython_binary() is None:
        pytest.skip("micropython unix port not installed")
    from picostim import transport as host_transport
    from picostim.client import Client

    with mb.MicroPythonBoard(env={"PICOSTIM_SHIM_WDT": "enforce"}) as board:
        fd = os.open(board.path, os.O_RDWR | os.O_NOCTTY)
        try:
            requests = b"".join(encode_frame(M.STATUS, 1000 + i) for i in range(300))
            os.write(fd, requests)  # ~3.6 KB: fits the firmware's input side; nobody reads the answers
            time.sleep(3.0)
            assert board.alive(), board.stderr()
        finally:
            os.close(fd)
        dec = FrameDecoder()
        got = board.read_until(b"\xff" * 8, timeout=1.0)  # everything there is
        answers = [f for f in dec.feed(got) if f.type == M.STATUS | M.RESPONSE]
        assert answers and dec.crc_errors == 0
        time.sleep(0.3)  # the loop has run again (an old-style blocked write would have returned now)
        assert board.alive() and "would reset" not in board.stderr(), board.stderr()
        client = Client(host_transport.open_port(board.path), timeout=1.0, retries=3)
        try:
            assert client.hello()["board_id"] == "e6613852834a2b2c"
        finally:
            client.close()
        assert board.alive(), board.stderr()
        assert "would reset" not in board.stderr()
