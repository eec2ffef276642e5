"""Decode the DAC bus op words (firmware/dac_bus.py) back into what the dac.pio program does, for tests.

Independent of dac_bus's builders: the op layout is read from the generated program constants
(firmware/pio_programs.py) and board.py, and the 16-bit MCP4822 command is un-reversed bit by bit.
"""

from __future__ import annotations

from firmware import board
from firmware import pio_programs as pio

WAIT_PINS = {v: int(k[2:]) for k, v in pio.DAC_ENTRIES.items() if k.startswith("gp")}


def decode(op):
    """("wait", gpio) | ("mark",) | ("write", ch, dac (0 = A, 1 = B), on (0/1), code)."""
    entry = op & 0x1F
    if entry in WAIT_PINS:
        assert op == entry, "a wait op carries nothing but its address: 0x%x" % op
        return ("wait", WAIT_PINS[entry])
    if entry == pio.DAC_MARK_ENTRY:
        return ("mark",)
    assert entry == pio.DAC_WRITE_ENTRY, "unknown op 0x%x" % op
    pattern = (op >> 5) & 0x1FF
    rev = (op >> 14) & 0xFFFF
    assert op >> 30 == 0, "op word beyond 30 bits"
    cmd = 0
    for i in range(16):
        cmd = (cmd << 1) | (rev >> i & 1)
    assert pattern & 1, "MOSI not driven"
    chs = [ch for ch in range(board.CHANNELS) if pattern >> (board.CH_DAC_CS[ch] - board.DAC_MOSI_PIN) & 1]
    assert len(chs) == 1, "exactly one chip select per write: %r" % chs
    assert cmd & 0x2000, "gain 1x"
    return ("write", chs[0], cmd >> 15, cmd >> 12 & 1, cmd & 0xFFF)


class Dacs:
    """The four MCP4822s as the op words leave them: per channel [code A, code B, A on, B on]."""

    def __init__(self):
        self.out = {ch: [0, 0, 0, 0] for ch in range(board.CHANNELS)}

    def apply(self, d):
        _, ch, which, on, code = d
        self.out[ch][which] = code if on else 0
        self.out[ch][2 + which] = on

    def codes(self, ch):
        return tuple(self.out[ch][:2])


def play(ops, dacs=None):
    """Split ``ops`` at their wait ops: returns (dacs after the writes before the first wait,
    [(wait pin, {ch: (a, b) after the writes that follow it}), ...])."""
    dacs = dacs or Dacs()
    boundaries = []
    for op in ops:
        d = decode(op)
        if d[0] == "wait":
            boundaries.append((d[1], {}))
        elif d[0] == "write":
            dacs.apply(d)
            if boundaries:
                boundaries[-1][1][d[1]] = dacs.codes(d[1])
    return dacs, boundaries
