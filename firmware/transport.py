"""Byte link to the host over the Pico's USB CDC (the MicroPython REPL's stdin/stdout).

Non-blocking both ways: the main loop must keep polling the hardware (and topping up the DMA rings,
docs/HARDWARE.md "Lookahead") whether or not the host reads or writes. Ctrl-C handling is switched
off so a 0x03 inside a binary frame cannot interrupt the firmware (``release()`` switches it back on
for the handback to the REPL).

Why writes are queued and sent a byte at a time (MicroPython rp2 port sources): a write to
``sys.stdout`` on the USB CDC waits for room in TinyUSB's TX FIFO (``CFG_TUD_CDC_TX_BUFSIZE`` = 256
bytes at full speed) for up to ``MICROPY_HW_USB_CDC_TX_TIMEOUT`` = 500 ms while a host is connected
(v1.22 ``ports/rp2/mphalport.c``: each <= 64-byte chunk waits until it fits; v1.29
``shared/tinyusb/mp_usbd_cdc.c``: waits whenever the FIFO is full, the 500 ms restarting after every
byte that gets in). A host that has the port open but does not read (a paused terminal, a stuck
script) therefore stalls ``write`` for 500 ms or more, 20x the feeder's 24 ms headroom at 10 kHz.
``poll(POLLOUT)`` on stdout only says "at least one byte free" (v1.22: connected and
``tud_cdc_write_available() > 0``; v1.29 also when no host is connected, the FIFO then keeps the
newest bytes), so the only write that can never wait is a one-byte write after POLLOUT.
Hence: ``write(frame)`` appends to a bounded queue (``OUT_MAX`` bytes; a frame that does not fit is
dropped whole and counted, so the byte stream never carries a partial frame from the firmware's side)
and ``pump()`` (once per main-loop iteration, never from ``write``) moves bytes one at a time while
POLLOUT holds, at most ``PUMP_MAX_BYTES`` per call while a channel is armed or running
(``PUMP_IDLE_MAX_BYTES`` otherwise: nothing to keep fed). A host that stops reading loses responses (it
retries; the device answers a retry from its cache) and EVENTs (kept in the event log, EVENT_LOG
replays them), never loop time.

Cost, measured on the official v1.22 image in rp2040js (emulated M0+ at 125 MHz, instruction-count
timing, no flash wait states; tests/test_wholechip_handback.py): ``pump()`` takes ~170 us per byte
(2.69 ms for 16 bytes: ``ipoll(0)`` ~46 us, a one-byte ``write`` ~53 us, the rest interpreter
overhead; one 64-byte write would take 35 us but is not sure not to wait). A pump therefore uses
~2.7 ms of the feeder's 24 ms and the link moves ~16 bytes per loop iteration.
"""

import select
import sys

CHUNK = 256
OUT_MAX = 2048  # bytes waiting for the host; room for the longest answer (EVENT_LOG) plus events
PUMP_MAX_BYTES = 16  # most bytes one pump() writes (one-byte writes after POLLOUT never wait): ~2.7 ms
PUMP_IDLE_MAX_BYTES = 256  # per pump while no channel is armed or running (no lookahead to protect)


def _binary_link():
    """Stop the REPL from treating 0x03 in a frame as Ctrl-C (only once the firmware takes the link,
    so a maintenance handback gets Ctrl-C back, see ``UsbCdc.release``)."""
    try:
        import micropython

        micropython.kbd_intr(-1)
    except (ImportError, AttributeError):  # CPython (virtual Pico): the pty is binary-clean already
        pass


class UsbCdc:
    def __init__(self, stream_in=None, stream_out=None, out_max=OUT_MAX):
        _binary_link()
        self._in = stream_in or sys.stdin.buffer
        self._out = stream_out or sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(stream_in or sys.stdin, select.POLLIN)
        self._wpoll = select.poll()
        self._wpoll.register(stream_out or sys.stdout, select.POLLOUT)
        self._ipoll = getattr(self._wpoll, "ipoll", None)
        self._flush = getattr(self._out, "flush", None)  # CPython's buffered stdout; MicroPython: none
        self._q = bytearray()
        self._one = bytearray(1)
        self.out_max = out_max
        self.dropped_frames = 0  # frames not queued because the host was not reading
        self.sent_bytes = 0

    def read(self, timeout_ms=0):
        """Whatever bytes are waiting (possibly b""), waiting at most ``timeout_ms`` for the first."""
        data = b""
        while len(data) < CHUNK and self._poll.poll(timeout_ms if not data else 0):
            byte = self._in.read(1)
            if not byte:
                break
            data += byte
        return data

    def write(self, data):
        """Queue one frame for the host (``pump`` sends it); never waits. A frame that does not fit in
        the queue is dropped whole (``dropped_frames``)."""
        if len(self._q) + len(data) > self.out_max:
            self.dropped_frames += 1
        else:
            self._q.extend(data)

    def pending(self):
        """Bytes queued for the host."""
        return len(self._q)

    def pump(self, max_bytes=PUMP_MAX_BYTES):
        """Send queued bytes while the port has room, one byte per write (the only size that cannot
        wait, see the module doc), at most ``max_bytes``. Returns the bytes sent."""
        q = self._q
        if not q:
            return 0
        one = self._one
        write = self._out.write
        flush = self._flush
        ipoll = self._ipoll
        end = min(len(q), max_bytes)
        n = 0
        while n < end:
            if ipoll is None:  # CPython
                if not self._wpoll.poll(0):
                    break
            else:  # MicroPython: ipoll allocates nothing
                ready = False
                for _ in ipoll(0):
                    ready = True
                if not ready:
                    break
            one[0] = q[n]
            if not write(one):  # 0 or None (EAGAIN): the port took nothing after all
                break
            if flush is not None:
                flush()
            n += 1
        if n:
            q[:n] = b""
            self.sent_bytes += n
        return n

    def drain(self, tries, idle=None):
        """Pump until the queue is empty, at most ``tries`` times, running ``idle()`` after a try that
        sent nothing (the handback: its ACK must reach the host before the port changes hands; idle
        feeds the watchdog and sleeps 1 ms). Returns True when everything was sent."""
        while self._q and tries > 0:
            tries -= 1
            if not self.pump() and idle is not None:
                idle()
        return not self._q

    def release(self):
        """Hand the port back to the REPL: Ctrl-C on again (the firmware stops reading the link)."""
        try:
            import micropython

            micropython.kbd_intr(3)
        except (ImportError, AttributeError):
            pass
