"""DMA channel model that feeds one PIO state machine's TX FIFO (see :mod:`picostim.virtual.pio_emu`).

The firmware streams *blocks* (lists of 32-bit words) to a state machine: an optional list of blocks
played once (e.g. the train delay), then a *cycle* of blocks repeated ``repeats`` times (0 = forever).
On the RP2040 this is a pair of chained DMA channels paced by the state machine's TX DREQ; here it is
a word source that the :class:`~picostim.virtual.pio_emu.PioSystem` pulls from whenever the FIFO has
room.

Block-boundary control (what the firmware uses for stop and double-buffered parameter changes):

* :meth:`DmaChannel.stop_at_block_boundary` -- finish the block being transferred, then stop.
* :meth:`DmaChannel.replace_at_block_boundary` -- finish the block being transferred, then continue
  with a new (delay, cycle, repeats) program.

"Current block" is the block the DMA is *transferring*; words already in the FIFO always play out.
If the DMA sits exactly on a boundary (the last word of a block has been transferred and the next
block has not started) the stop/replace takes effect immediately.

Ring mode (:meth:`DmaChannel.load_ring`, custom sequences): the board's chained pair itself. The
control channel reads the next slot of a control ring (the Feeder's) as soon as the data channel has
transferred the last word of an entry (CHAIN_TO); a 0 ends the stream for good (null trigger); else
the data channel transfers the ``p`` words at that address, each read from the buffer at the moment
it goes into the FIFO, so a buffer the CPU rewrites too early shows in the pins. ``ring_consumed``
is the number of slots the control channel has read (what the HAL reads from its READ_ADDR).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

Block = Sequence[int]


def _norm_blocks(blocks: Iterable[Iterable[int]] | None) -> list[list[int]]:
    out: list[list[int]] = []
    for b in blocks or ():
        words = [int(w) & 0xFFFFFFFF for w in b]
        if words:  # an empty block completes immediately: drop it
            out.append(words)
    return out


class DmaChannel:
    """Per-state-machine DMA word source.

    Counters (read-only for the HAL): ``words_sent`` (words written into the FIFO), ``blocks_sent``
    (blocks whose last word has been written), ``cycles_done`` (completed passes over the cycle
    blocks), ``last_block`` (the words of the block written completely last, None before any).
    ``done`` is True when nothing more will be transferred.
    """

    __slots__ = (
        "_once", "_cycle", "_repeats_left", "_cur", "_pos", "_cycle_idx", "_in_cycle",
        "_pending", "words_sent", "blocks_sent", "cycles_done", "_system", "_sm", "last_block",
        "_ring", "_rcur", "ring_consumed",
    )

    def __init__(self) -> None:
        self._once: list[list[int]] = []
        self._cycle: list[list[int]] = []
        self._repeats_left: Optional[int] = 0  # None = forever
        self._cur: Optional[list[int]] = None
        self._pos = 0
        self._cycle_idx = 0
        self._in_cycle = False
        self._pending: Optional[tuple] = None  # ("stop",) or ("replace", once, cycle, repeats)
        self.words_sent = 0
        self.blocks_sent = 0
        self.cycles_done = 0
        self.last_block: Optional[list[int]] = None
        self._system = None  # set by PioSystem
        self._sm = None
        self._ring: Optional[tuple] = None  # ring mode: (ring, base, ring_len, words_at, p)
        self._rcur: Optional[tuple] = None  # ring mode: (buffer, offset) of the entry being transferred
        self.ring_consumed = 0

    # ------------------------------------------------------------------ control (HAL side)
    def load(self, delay_blocks: Iterable[Iterable[int]] = (), cycle_blocks: Iterable[Iterable[int]] = (),
             repeats: int = 1) -> None:
        """Replace the whole program now (any half-sent block is abandoned).

        ``delay_blocks`` play once, then ``cycle_blocks`` play ``repeats`` times (0 = forever).
        Words already in the FIFO stay there. Call before :meth:`PioSystem.enable` to pre-fill.
        """
        self._ring = None
        self._rcur = None
        self._program(delay_blocks, cycle_blocks, repeats)
        self._cur = None
        self._pos = 0
        self._pending = None
        self._kick()

    def load_ring(self, ring, base: int, ring_len: int, words_at, p: int) -> None:
        """Ring mode (see the module docstring): the control channel reads ``ring[base + i %
        ring_len]`` for i = 0, 1, ...; ``words_at(addr)`` -> (buffer, offset) of an entry's first
        word; every entry is ``p`` words. The first slot is read now (MULTI_CHAN_TRIGGER)."""
        self._clear()
        self._cur = None
        self._pos = 0
        self._pending = None
        self._ring = (ring, base, ring_len, words_at, p)
        self.ring_consumed = 0
        self._ring_read()
        self._kick()

    def _ring_read(self) -> None:
        ring, base, rl, words_at, _p = self._ring  # type: ignore[misc]
        v = ring[base + self.ring_consumed % rl]
        self.ring_consumed += 1
        self._pos = 0
        self._rcur = words_at(v) if v else None  # a 0: null trigger, the chain ends

    @property
    def ring_mode(self) -> bool:
        return self._ring is not None

    def load_words(self, words: Iterable[int]) -> None:
        """Convenience: one block, played once."""
        self.load((), [list(words)], 1)

    def queue(self, words: Iterable[int]) -> None:
        """Append one block, played once after everything already queued (a DMA fed from a
        software queue: the virtual Pico's DAC bus op words)."""
        block = [int(w) & 0xFFFFFFFF for w in words]
        if block:
            self._once.append(block)
            self._kick()

    def stop_at_block_boundary(self) -> None:
        """Finish the block being transferred, then stop (``done`` becomes True)."""
        if self._ring is not None:  # the entry handed to the data channel completes, nothing follows
            if self._rcur is not None:
                self._pending = ("stop",)
            return
        if self._cur is None:
            self._clear()
        else:
            self._pending = ("stop",)
        self._kick()

    def replace_at_block_boundary(self, delay_blocks: Iterable[Iterable[int]] = (),
                                  cycle_blocks: Iterable[Iterable[int]] = (), repeats: int = 1) -> None:
        """Finish the block being transferred, then continue with a new program (double buffering)."""
        once, cyc = _norm_blocks(delay_blocks), _norm_blocks(cycle_blocks)
        if self._ring is not None:
            if self._rcur is not None:
                self._pending = ("replace", once, cyc, repeats)
                return
            self._ring = None
        if self._cur is None:
            self._set_program(once, cyc, repeats)
        else:
            self._pending = ("replace", once, cyc, repeats)
        self._kick()

    def abort(self) -> None:
        """Stop immediately, mid-block (CHAN_ABORT). Words already in the FIFO still play."""
        self._clear()
        self._cur = None
        self._pending = None
        self._ring = None
        self._rcur = None

    # ------------------------------------------------------------------ status
    @property
    def done(self) -> bool:
        """True when the DMA has nothing more to transfer."""
        if self._ring is not None:
            return self._rcur is None
        return self._cur is None and self._pending is None and not self._has_next_block()

    @property
    def busy(self) -> bool:
        return not self.done

    @property
    def at_block_boundary(self) -> bool:
        if self._ring is not None:
            return self._rcur is None or self._pos == 0
        return self._cur is None

    # ------------------------------------------------------------------ internals
    def _program(self, delay_blocks, cycle_blocks, repeats) -> None:
        self._set_program(_norm_blocks(delay_blocks), _norm_blocks(cycle_blocks), repeats)

    def _set_program(self, once, cyc, repeats) -> None:
        if repeats < 0:
            raise ValueError("repeats must be >= 0 (0 = forever)")
        self._once = list(once)
        self._cycle = list(cyc)
        self._repeats_left = None if repeats == 0 else int(repeats)
        self._cycle_idx = 0
        self._in_cycle = False
        if not self._cycle:
            self._repeats_left = 0

    def _clear(self) -> None:
        self._once = []
        self._cycle = []
        self._repeats_left = 0
        self._cycle_idx = 0
        self._in_cycle = False

    def _has_next_block(self) -> bool:
        if self._once:
            return True
        if not self._cycle:
            return False
        if self._in_cycle:
            return True
        return self._repeats_left is None or self._repeats_left > 0

    def _start_next_block(self) -> bool:
        if self._once:
            self._cur = self._once.pop(0)
            self._pos = 0
            return True
        if not self._cycle:
            return False
        if not self._in_cycle:
            if self._repeats_left is not None:
                if self._repeats_left <= 0:
                    return False
                self._repeats_left -= 1
            self._in_cycle = True
            self._cycle_idx = 0
        self._cur = self._cycle[self._cycle_idx]
        self._cycle_idx += 1
        self._pos = 0
        return True

    def next_word(self) -> Optional[tuple[int, bool]]:
        """Take the next word: ``(word, is_last_word_of_its_block)`` or None when idle."""
        if self._ring is not None:
            return self._ring_word()
        if self._cur is None:
            if self._pending is not None:
                self._apply_pending()
            if not self._start_next_block():
                return None
        cur = self._cur
        w = cur[self._pos]
        self._pos += 1
        self.words_sent += 1
        last = self._pos >= len(cur)
        if last:
            self.last_block = cur
            self._cur = None
            self.blocks_sent += 1
            if self._in_cycle and self._cycle_idx >= len(self._cycle):
                self.cycles_done += 1
                self._in_cycle = False
            if self._pending is not None:
                self._apply_pending()
        return w, last

    def _ring_word(self) -> Optional[tuple[int, bool]]:
        cur = self._rcur
        if cur is None:
            return None
        buf, off = cur
        p = self._ring[4]  # type: ignore[index]
        w = int(buf[off + self._pos]) & 0xFFFFFFFF  # read from memory now, as the data channel does
        self._pos += 1
        self.words_sent += 1
        last = self._pos >= p
        if last:
            self.blocks_sent += 1
            self._rcur = None
            pending = self._pending
            self._pending = None
            if pending is None:
                self._ring_read()  # CHAIN_TO: the control channel reads the next slot at once
            elif pending[0] == "replace":
                self._ring = None
                self._set_program(pending[1], pending[2], pending[3])
        return w, last

    def _apply_pending(self) -> None:
        p = self._pending
        self._pending = None
        if p[0] == "stop":
            self._clear()
        else:
            self._set_program(p[1], p[2], p[3])

    def _kick(self) -> None:
        if self._system is not None:
            self._system._dma_kick(self._sm)
