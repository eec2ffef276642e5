"""The DAC bus in a capture: MCP4822 commands decoded from SCK/MOSI/CS0..CS3/LDAC, and the output currents.

Lines (names of docs/ARCHITECTURE.md "DAC bus" and the issue-13 contract): ``SCK``, ``MOSI``, ``CS0`` ..
``CS3`` (one MCP4822 per stimulation channel, active low), ``LDAC`` (shared, active low).

SPI decoding (mode 0, MSB first, 16 bits per frame): a frame is a low interval of a chip select; its bits
are MOSI's levels at the SCK rising edges strictly inside it (the level at the edge's sample, after any
MOSI change at that sample: what sigrok's ``spi`` decoder reads too). A frame with any other number of
bits is *malformed* (reported, never applied: the MCP4822 ignores a write that is not 16 clocks). A
frame that began before the capture or is still open at its end is *cut* (not decoded, not an error).

DAC model (MCP4822 datasheet): a 16-bit command (bit 15 = A/B, bit 13 = /GA (1 = gain 1x), bit 12 =
/SHDN (0 = output off), bits 11..0 = code) loads the selected output's input register at the CS rising
edge. The output register takes the input register's value at that CS rise when LDAC is low
(transparent), else at LDAC's next falling edge. An output that is shut down carries 0 current. The
output current is ``code * board.DAC_FULL_SCALE_UA / 4096`` (twice that at gain 2x), exact in nA with
``pulse_engine.code_to_na``. Before the first command of a capture an output's value is unknown
(``None``): the capture may start long after the DAC was written.

Everything is computed from edge arrays with NumPy (``searchsorted`` over SCK/MOSI edges, one row of 16
bits per frame); only the DAC register model walks the decoded commands (two per amplitude change).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from firmware import pulse_engine
from firmware.dac_bus import CMD_ACTIVE, CMD_B, CMD_GAIN_1X, CODE_MASK

from .trace import Channel, Trace

SCK, MOSI, LDAC = "SCK", "MOSI", "LDAC"
CS_NAMES = ("CS0", "CS1", "CS2", "CS3")
DAC_LINES = (SCK, MOSI) + CS_NAMES + (LDAC,)
FRAME_BITS = 16
UNKNOWN = -1  # an output's value before the first command of the capture (nA arrays)


def cs_name(channel: int) -> str:
    """Chip-select line of stimulation channel ``channel``'s DAC (``CS<k>``; a board has CS0..CS3, so a
    capture checked as a higher channel has none and its DAC checks are skipped)."""
    return "CS%d" % channel


@dataclass
class Frames:
    """SPI frames of one chip select (arrays of equal length, one entry per complete CS-low interval)."""

    start: np.ndarray  # CS falling edge (sample)
    end: np.ndarray  # CS rising edge (sample): when the DAC takes the command
    nbits: np.ndarray  # SCK rising edges inside the frame
    word: np.ndarray  # the 16-bit word (valid where nbits == 16, else -1)
    cut: int = 0  # frames cut by the capture start or end (not decoded)

    @property
    def ok(self) -> np.ndarray:
        return self.nbits == FRAME_BITS

    def __len__(self) -> int:
        return len(self.start)


def levels_at(ch: Channel, samples: np.ndarray) -> np.ndarray:
    """Levels of ``ch`` at ``samples`` (after any toggle at that sample), vectorised."""
    return (ch.initial ^ (np.searchsorted(ch.toggles, samples, side="right") & 1)).astype(np.int64)


def within(samples: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each sample: inside one of the sorted, disjoint spans [start, end] (a triphasic pulse from its
    first flank's start to its second flank's end: the interphase gaps belong to the pulse)."""
    if len(starts) == 0:
        return np.zeros(len(samples), bool)
    i = np.searchsorted(starts, samples, side="right") - 1
    ok = i >= 0
    ic = np.maximum(i, 0)
    return ok & (samples <= ends[ic])


def _low_intervals(ch: Channel, n_samples: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Complete low intervals [fall, rise) of an active-low line; the count of intervals cut by the
    capture start (low at sample 0) or end (still low at the last sample)."""
    tg = ch.toggles[(ch.toggles > 0) & (ch.toggles < n_samples)]
    cut = 0
    if ch.initial == 0:  # low at sample 0: the first interval began before the capture
        if len(tg):
            tg = tg[1:]
        cut += 1
    falls, rises = tg[0::2], tg[1::2]
    if len(rises) < len(falls):  # still low at the end
        falls = falls[:len(rises)]
        cut += 1
    return falls.astype(np.int64), rises.astype(np.int64), cut


def decode_frames(sck: Channel, mosi: Channel, cs: Channel, n_samples: int) -> Frames:
    """The 16-bit SPI frames (mode 0, MSB first) written while ``cs`` was low."""
    falls, rises, cut = _low_intervals(cs, n_samples)
    sck_rise = sck.rising()
    sck_rise = sck_rise[(sck_rise > 0) & (sck_rise < n_samples)]
    lo = np.searchsorted(sck_rise, falls, side="right")  # first SCK rise strictly after CS fall
    hi = np.searchsorted(sck_rise, rises, side="left")  # SCK rises strictly before CS rise
    nbits = (hi - lo).astype(np.int64)
    word = np.full(len(falls), -1, np.int64)
    good = np.flatnonzero(nbits == FRAME_BITS)
    if len(good):
        idx = lo[good][:, None] + np.arange(FRAME_BITS)[None, :]
        bits = levels_at(mosi, sck_rise[idx])
        word[good] = bits @ (1 << np.arange(FRAME_BITS - 1, -1, -1, dtype=np.int64))
    return Frames(falls, rises, nbits, word, cut)


@dataclass
class Output:
    """One DAC output as a step function: from ``times[i]`` on (sample) the output carries ``na[i]``
    (nA; 0 = shut down); ``codes[i]`` the command's code, ``on[i]`` False when shut down. Before
    ``times[0]`` (and with no entry at all) the output is unknown."""

    times: np.ndarray
    na: np.ndarray
    codes: np.ndarray
    on: np.ndarray

    def at(self, samples: np.ndarray) -> np.ndarray:
        """Current in nA at ``samples`` (after any change at that sample); ``UNKNOWN`` before the first
        command."""
        samples = np.asarray(samples, np.int64)
        i = np.searchsorted(self.times, samples, side="right") - 1
        out = np.full(len(samples), UNKNOWN, np.int64)
        ok = i >= 0
        out[ok] = self.na[i[ok]]
        return out

    def code_at(self, samples: np.ndarray) -> np.ndarray:
        """Effective code (code x gain, 0 when shut down) at ``samples``; ``UNKNOWN`` before the first."""
        samples = np.asarray(samples, np.int64)
        i = np.searchsorted(self.times, samples, side="right") - 1
        out = np.full(len(samples), UNKNOWN, np.int64)
        ok = i >= 0
        eff = np.where(self.on, self.codes, 0)
        out[ok] = eff[i[ok]]
        return out

    def changes(self) -> np.ndarray:
        """Samples at which the output value changes (the first command counts: unknown -> known)."""
        if not len(self.times):
            return np.zeros(0, np.int64)
        eff = np.where(self.on, self.codes, 0)
        keep = np.concatenate(([True], eff[1:] != eff[:-1]))
        return self.times[keep]


def command_fields(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(output B?, effective code = code x gain (1x or 2x), active) of MCP4822 command words."""
    words = np.asarray(words, np.int64)
    is_b = (words & CMD_B) != 0
    gain = np.where(words & CMD_GAIN_1X, 1, 2)
    active = (words & CMD_ACTIVE) != 0
    return is_b, (words & CODE_MASK) * gain, active


def dac_outputs(frames: Frames, ldac: Channel | None) -> tuple[Output, Output]:
    """Outputs A and B of one MCP4822 from its decoded frames and the LDAC line (None = held low)."""
    ok = frames.ok
    t_cmd, words = frames.end[ok], frames.word[ok]
    is_b, codes, active = command_fields(words)
    if ldac is not None and len(t_cmd):
        high = levels_at(ldac, t_cmd) == 1
        falls = ldac.falling()
        nxt = np.searchsorted(falls, t_cmd, side="right")
        late = high & (nxt < len(falls))
        eff = t_cmd.copy()
        eff[late] = falls[nxt[late]]
        # LDAC high at the command and never falling again: the output never takes it
        taken = ~high | late
    else:
        eff = t_cmd
        taken = np.ones(len(t_cmd), bool)
    outs = []
    for want_b in (False, True):
        sel = (is_b == want_b) & taken
        t, c, a = eff[sel], codes[sel], active[sel]
        # several commands that take effect at the same sample (LDAC high, then one fall): the last wins
        if len(t):
            last = np.concatenate((t[1:] != t[:-1], [True]))
            t, c, a = t[last], c[last], a[last]
        uniq, inv = np.unique(c, return_inverse=True)  # at most 8192 distinct codes (x gain)
        na = np.array([pulse_engine.code_to_na(int(x)) for x in uniq], np.int64)[inv.ravel()] if len(c) \
            else np.zeros(0, np.int64)
        na = np.where(a, na, 0)
        outs.append(Output(t.astype(np.int64), na, c.astype(np.int64), a.astype(bool)))
    return outs[0], outs[1]


@dataclass
class Bus:
    """The decoded DAC bus of a capture: frames per chip select present, the outputs of each decoded
    channel's DAC, and notes on what could not be decoded."""

    frames: dict[int, Frames] = field(default_factory=dict)  # channel -> frames of its CS
    outputs: dict[int, tuple[Output, Output]] = field(default_factory=dict)  # channel -> (A, B)
    ldac: bool = False  # the capture has an LDAC line (else it is taken as held low)
    missing: list[str] = field(default_factory=list)  # DAC lines the capture does not have

    def malformed(self) -> list[dict[str, Any]]:
        """Every frame with a wrong bit count: channel, CS fall and rise samples, bits seen."""
        out = []
        for ch, fr in sorted(self.frames.items()):
            for i in np.flatnonzero(~fr.ok):
                out.append({"channel": ch, "cs": CS_NAMES[ch], "start": int(fr.start[i]), "end": int(fr.end[i]),
                            "bits": int(fr.nbits[i])})
        return sorted(out, key=lambda d: d["end"])

    def commands(self, channel: int) -> list[tuple[int, int]]:
        """(CS rising edge sample, 16-bit word) of every well-formed frame of ``channel``'s DAC."""
        fr = self.frames.get(channel)
        if fr is None:
            return []
        ok = fr.ok
        return [(int(t), int(w)) for t, w in zip(fr.end[ok], fr.word[ok])]


def decode_bus(trace: Trace) -> Bus:
    """Decode every chip select the capture has (SCK and MOSI are needed for any of them)."""
    ch = trace.channels
    bus = Bus(missing=[name for name in DAC_LINES if name not in ch])
    bus.ldac = LDAC in ch
    if SCK not in ch or MOSI not in ch:
        return bus
    for k, name in enumerate(CS_NAMES):
        if name in ch:
            fr = decode_frames(ch[SCK], ch[MOSI], ch[name], trace.n_samples)
            bus.frames[k] = fr
            bus.outputs[k] = dac_outputs(fr, ch.get(LDAC))
    return bus
