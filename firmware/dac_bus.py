"""The DAC bus program's op words: what the DMA feeds the `dac` state machine (firmware/pio/dac.pio).

Pure, so the host, the virtual Pico and the MicroPython unix port build the same words the board
plays. An amplitude change is a short op list: wait for the end of a channel's pulse (the fall of its
phase-2 pin), then write DAC A and DAC B of that channel's MCP4822. The writes land in the idle after
that pulse, at a point fixed by the stimulation state machine, never by CPU timing; LDAC is held low,
so each DAC output changes at its own CS rising edge (docs/ARCHITECTURE.md, DAC bus).

Board constraint this module also owns: after a boundary an update needs `UPDATE_TICKS` before the
channel's next pulse may start (`min_idle_ticks`), checked wherever amplitudes change while running.
"""

from firmware import board
from firmware import pio_programs as pio

# MCP4822 command word: bit 15 A/B, bit 13 /GA (1 = gain 1x), bit 12 /SHDN (1 = output on), 11..0 code.
# (The host's decoders, capture/dac.py and the virtual Pico's electrode model, read it with these.)
CMD_B = 0x8000
CMD_GAIN_1X = 0x2000
CMD_ACTIVE = 0x1000
CODE_MASK = 0x0FFF

_OP_BITS = 5  # OUT PC, 5
_PATTERN_BITS = pio.DAC_OUT_COUNT  # OUT PINDIRS, 9: MOSI + the chip selects, from GP19
_CMD_SHIFT = _OP_BITS + _PATTERN_BITS
_MOSI_DIR = 1  # bit 0 of the pindirs pattern: MOSI driven while a DAC is selected

# Cycles the program spends per write (from the instruction delays of dac.pio): out pindirs [3] = 4,
# 16 bits x (out [4] + jmp [4]) = 160, mov pins + jmp next = 2, then pull + out pc = 2.
WRITE_TICKS = 4 + 16 * 10 + 2 + 2
# From the phase-2 pin's fall to the second CS rise: 2 cycles input synchroniser, the wait, the jmp
# back to `next` and its pull + out pc (4), then two writes; then the MCP4822's output settling
# (board.DAC_SETTLE_NS) before the next pulse may use the new current. Rounded up to whole µs.
_TICKS_PER_US = board.SYS_CLK_HZ // 1_000_000
_UPDATE_RAW = 2 + 4 + 2 * WRITE_TICKS + board.DAC_SETTLE_NS * _TICKS_PER_US // 1000
UPDATE_TICKS = -(-_UPDATE_RAW // _TICKS_PER_US) * _TICKS_PER_US
# Before a start the HALs wait this long after the first codes' mark, so the first pulse already
# gets the settled current (the MCP4822's output needs board.DAC_SETTLE_NS after its CS rise).
SETTLE_US = -(-board.DAC_SETTLE_NS // 1000)
SETTLE_TICKS = SETTLE_US * _TICKS_PER_US

def command(channel_b, code):
    """MCP4822 command: DAC A (POS direction) or B (NEG direction) at ``code``, gain 1x, output on."""
    return (CMD_B if channel_b else 0) | CMD_GAIN_1X | CMD_ACTIVE | (code & CODE_MASK)


def shutdown_command(channel_b):
    """MCP4822 command that turns one output off (high impedance): the safe state."""
    return (CMD_B if channel_b else 0) | CMD_GAIN_1X


def _reverse8(v):
    r = 0
    for _ in range(8):
        r = (r << 1) | (v & 1)
        v >>= 1
    return r


REV8 = bytes([_reverse8(i) for i in range(256)])  # bit-reversed bytes (also inlined by pulse_engine's ramp loops)


def _reverse16(v):
    return REV8[v & 0xFF] << 8 | REV8[v >> 8]


def cs_bit(ch):
    """The channel's chip select as a bit of the pindirs pattern (OUT_BASE = MOSI)."""
    return 1 << (board.CH_DAC_CS[ch] - board.DAC_MOSI_PIN)


def write_op(ch, cmd):
    """One op word: select channel ``ch``'s DAC, shift ``cmd`` out MSB first, drive CS high."""
    return pio.DAC_WRITE_ENTRY | ((_MOSI_DIR | cs_bit(ch)) << _OP_BITS) | (_reverse16(cmd) << _CMD_SHIFT)


def wait_op(pin):
    """One op word: wait until GPIO ``pin`` has been high and is low again (the end of that phase)."""
    entry = pio.DAC_ENTRIES.get("gp%d" % pin)
    if entry is None:
        raise ValueError("the dac program cannot wait on GPIO %d" % pin)
    return entry


MARK_OP = pio.DAC_MARK_ENTRY  # push a word to the RX FIFO: the ops before it are done


def update_ops(ch, code_a, code_b):
    """Write both outputs of channel ``ch``'s DAC (A first): two op words."""
    return [write_op(ch, command(False, code_a)), write_op(ch, command(True, code_b))]


def shutdown_ops(ch):
    """Turn both outputs of channel ``ch``'s DAC off: two op words."""
    return [write_op(ch, shutdown_command(False)), write_op(ch, shutdown_command(True))]


def min_idle_ticks(channels_sharing_a_boundary=1):
    """Idle a pulse must leave before the next one when amplitude updates follow it: the DAC
    program's writes for every channel that shares that boundary, then the outputs' settling."""
    return UPDATE_TICKS + (channels_sharing_a_boundary - 1) * 2 * WRITE_TICKS


# ---- fast path for long op lists (ramps: up to thousands of writes built in one request) ---------
# write_op of each channel's DAC A / DAC B with code 0: a code's bits are disjoint from the command's,
# so the bit-reversed command is the OR of the two reversals (code_write_op).
_CODE_BASE = [(write_op(ch, command(False, 0)), write_op(ch, command(True, 0))) for ch in range(board.CHANNELS)]


def code_write_op(ch, channel_b, code):
    """write_op(ch, command(channel_b, code)) from tables: the same word without the bit loop."""
    code &= CODE_MASK
    return _CODE_BASE[ch][1 if channel_b else 0] | (_reverse16(code) << _CMD_SHIFT)


CODE_SHIFT = _CMD_SHIFT


def code_bases(ch):
    """(write_op of DAC A with code 0, of DAC B with code 0) for channel ``ch``: OR in
    (REV8[code & 0xFF] << 8 | REV8[code >> 8]) << CODE_SHIFT for a code (code_write_op)."""
    return _CODE_BASE[ch]
