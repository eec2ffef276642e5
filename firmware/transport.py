"""Byte link to the host over the Pico's USB CDC (the MicroPython REPL's stdin/stdout).

Non-blocking: the main loop must keep polling the hardware while no byte arrives. Ctrl-C handling is
switched off so a 0x03 inside a binary frame cannot interrupt the firmware.
"""

import select
import sys

CHUNK = 256


def _binary_link():
    """Stop the REPL from treating 0x03 in a frame as Ctrl-C (only once the firmware takes the link,
    so a maintenance boot keeps Ctrl-C, see main.maintenance_requested)."""
    try:
        import micropython

        micropython.kbd_intr(-1)
    except (ImportError, AttributeError):  # CPython (virtual Pico): the pty is binary-clean already
        pass


class UsbCdc:
    def __init__(self, stream_in=None, stream_out=None):
        _binary_link()
        self._in = stream_in or sys.stdin.buffer
        self._out = stream_out or sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(stream_in or sys.stdin, select.POLLIN)

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
        self._out.write(data)
        flush = getattr(self._out, "flush", None)
        if flush:
            flush()
