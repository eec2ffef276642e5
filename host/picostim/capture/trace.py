"""Edge-based digital traces: the one in-memory form of every capture.

Emulation, VCD, sigrok .sr files and sigrok-cli captures all decode to a :class:`Trace`, and the
analyzer works on it. A channel is stored as its initial level plus the sorted sample indices at which
it toggles, so memory grows with the number of edges, not samples (a 100 M-sample capture of a 50 Hz
train is a few thousand integers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class CaptureError(ValueError):
    """A capture file that cannot be read as a trace (empty, truncated, not a capture, no sample rate,
    time going backwards...). The message is one line naming the file and what is wrong."""


@dataclass
class Channel:
    """One digital line: ``initial`` level at sample 0 and the sample indices where it toggles."""

    initial: int
    toggles: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self.initial = int(bool(self.initial))
        self.toggles = np.asarray(self.toggles, dtype=np.int64)

    def rising(self) -> np.ndarray:
        """Sample indices of rising edges."""
        start = 0 if self.initial == 0 else 1
        return self.toggles[start::2]

    def falling(self) -> np.ndarray:
        """Sample indices of falling edges."""
        start = 1 if self.initial == 0 else 0
        return self.toggles[start::2]

    def level_at(self, sample: int) -> int:
        """Level at ``sample`` (after any toggle that happens at that sample)."""
        flips = int(np.searchsorted(self.toggles, sample, side="right"))
        return self.initial ^ (flips & 1)


@dataclass
class Trace:
    """A multi-channel digital capture: ``n_samples`` samples at ``samplerate_hz``."""

    samplerate_hz: float
    n_samples: int
    channels: dict[str, Channel]

    def sample_period_s(self) -> float:
        return 1.0 / self.samplerate_hz

    def duration_s(self) -> float:
        return self.n_samples / self.samplerate_hz
