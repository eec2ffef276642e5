"""firmware/hal_rp2.py at register level (recording fakes, tests/rp2_fakes.py): the order of the
stores that make disarm, stop, DMA abort and replace safe against a DMA / PIO that keeps running
under the CPU (issue 10 items 1, 2, 9, 11, 12, and 3 for the HAL's registers).

A small model of the control-ring DMA (entries at a fixed rate, the control channel reading the ring
only while the data channel still chains to it) moves under the CPU, whose every register access
and ring store costs CPU time, so a stop can be issued at every phase of a 10 kHz train."""

from __future__ import annotations

import pytest
from rp2_fakes import TICKS_PERIOD, load_board_hal, unload_board_hal

from firmware import board, dac_bus, dma_chain as dc, pulse_engine as pe
from firmware import pio_programs as pp
from protocol import params as P

MS = 1_000_000


def train(**kw):
    return pe.build_train(P.complete(kw))


@pytest.fixture
def hal(monkeypatch):
    mod, hw, clock = load_board_hal(monkeypatch, 7, t0=TICKS_PERIOD - 3000)  # crosses the tick wrap
    yield mod.Rp2Hal(), hw, clock
    unload_board_hal()


class R:
    """A channel's register addresses, computed here from the datasheet map (not taken from the HAL)."""

    def __init__(self, st):
        self.d_ctrl = dc.dma_reg(st.data_ch, dc.DMA_AL1_CTRL)
        self.c_ctrl = dc.dma_reg(st.ctl_ch, dc.DMA_AL1_CTRL)
        self.c_read = dc.dma_reg(st.ctl_ch, dc.DMA_READ_ADDR)
        self.d_write = dc.dma_reg(st.data_ch, dc.DMA_WRITE_ADDR)
        self.pinctrl = dc.PIO0_BASE + 0x0DC + 0x18 * st.sm_id
        self.pc = dc.pio_sm_addr_reg(0, st.sm_id)
        self.instr = dc.pio_sm_instr_reg(0, st.sm_id)
        self.ctrl_clr = dc.PIO0_BASE + 0x3000


def _fields(v):
    return {"en": v & 1, "chain_to": v >> 11 & 0xF, "treq": v >> 15 & 0x3F}


def _after(log, i, kind):
    return [e for e in log[i:] if e[0] == kind]


# ---- item 1/2: disarm ------------------------------------------------------------------------------
def _armed(h, ch=1):
    trains = [None] * 4
    trains[ch] = train(trigger=1, period_ns=1 * MS)
    wait = [0] * 4
    wait[ch] = 1
    h.start(trains, 1 << ch, wait)
    return h._ch[ch]


def test_disarm_blinds_the_sm_in_one_store_before_reading_its_pc(hal):
    h, hw, _ = hal
    st = _armed(h)
    assert h.waiting(1)
    hw.log.clear()
    hw.log_reads = True
    assert h.disarm(0b10) == 0  # never fired
    log = hw.log
    i = log.index(("irq_off",))
    blind = log[i + 1]
    assert blind[:2] == ("mem", R(st).pinctrl)
    assert blind[2] >> dc.PINCTRL_IN_BASE_SHIFT & 0x1F == board.CH_POS[1]  # its own idle drive pin
    assert log[i + 2] == ("read", R(st).pc)
    # never left its wait: disabled and pins driven low in the same interrupts-off section
    assert log[i + 3] == ("sm_active", board.CH_PIO[1] * 4 + board.CH_SM[1], 0)
    assert log[i + 4] == ("mem", R(st).instr, dc.MOV_PINS_NULL)
    assert log[i + 5] == ("irq_on",)
    assert [e for e in log if e[:2] == ("mem", dc.DMA_CHAN_ABORT)]
    # DAC off: the shutdown commands went to the DAC bus (its last DMA batch), not over SPI
    assert not [e for e in log if e[0] == "spi"]
    assert list(h._dbuf[:h._dbatch_n]) == dac_bus.shutdown_ops(1) + [dac_bus.MARK_OP]
    assert not h.running(1) and not h.waiting(1) and h.pulses(1) == 0


def test_disarm_leaves_a_fired_channel_running(hal):
    h, hw, _ = hal
    st = _armed(h)
    hw.regs[("pc", board.CH_SM[1])] = st.offset + pp.SEGMENT_ENTRY + 2  # the edge came first
    hw.log.clear()
    assert h.disarm(0b10) == 0b10
    assert not [e for e in hw.log if e[:2] == ("mem", dc.DMA_CHAN_ABORT) or e[0] == "sm_active"]
    assert not [e for e in hw.log if e[:3] == ("mem", R(st).instr, dc.MOV_PINS_NULL)]
    assert h.running(1) and not h.waiting(1)


def test_stop_disarms_a_trigger_waiting_channel_at_once(hal):
    h, hw, _ = hal
    st = _armed(h)
    hw.log.clear()
    h.stop(0b10)
    i = hw.log.index(("irq_off",))
    assert hw.log[i + 1][:2] == ("mem", R(st).pinctrl)
    assert ("mem", R(st).instr, dc.MOV_PINS_NULL) in hw.log
    assert not h.running(1)


def test_start_refuses_a_running_channel_and_touches_nothing(hal):
    h, hw, _ = hal
    tr = train(period_ns=1 * MS)
    h.start([tr] * 4, 1, [0] * 4)
    hw.log.clear()
    with pytest.raises(ValueError):
        h.start([tr] * 4, 1, [0] * 4)
    assert not [e for e in hw.log if e[0] in ("mem", "sm_init", "spi")]


# ---- item 9: the stop cuts the chain in one store, first --------------------------------------------
class RingLog(list):
    """The control ring as the DMA sees it: every CPU store is logged (and costs CPU time)."""

    def __init__(self, data, hw, tick):
        super().__init__(data)
        self.hw, self.tick = hw, tick

    def __setitem__(self, i, v):
        self.tick()
        self.hw.log.append(("ring", i, v))
        super().__setitem__(i, v)


def test_stop_cuts_the_chain_before_touching_the_ring(hal):
    h, hw, _ = hal
    h.start([train(period_ns=100_000, phase1_ns=20_000, phase2_ns=20_000)] * 4, 1, [0] * 4)
    st = h._ch[0]
    st.ring_store = st.feeder.ring = RingLog(st.ring_store, hw, lambda: None)
    hw.log.clear()
    hw.log_reads = True
    h.stop(1)
    assert hw.log[0] == ("irq_off",)
    first = hw.log[1]
    assert first[:2] == ("mem", R(st).d_ctrl)
    f = _fields(first[2])
    assert f == {"en": 1, "chain_to": st.data_ch, "treq": dc.DREQ_PIO0_TX0 + st.sm_id}
    assert [e for e in hw.log if e[0] == "ring"]  # then the ring is nulled
    assert all(st.ring_store[st.ring_base + i] == 0 for i in range(dc.RING_LEN))


class ChainClock:
    """CPU time (``cost_us`` per register access or ring store) against a DMA whose data channel
    finishes an entry every ``entry_us`` (10 kHz: one pulse group per entry); at each finish the
    control channel reads the next ring slot, unless the data channel's CHAIN_TO no longer points
    at it, and a 0 slot ends the chain."""

    def __init__(self, h, hw, phase_us, entry_us=100, cost_us=2):
        self.h, self.hw, self.st = h, hw, h._ch[0]
        self.now = 0
        self.next_finish = phase_us
        self.entry_us, self.cost_us = entry_us, cost_us
        self.consumed = 1  # MULTI_CHAN_TRIGGER: the control channel read slot 0, data plays entry 0
        self.alive = True
        self.started = []  # CPU time at which the data channel started each further entry
        self._sync()

    def _sync(self):
        st = self.st
        self.hw.regs[R(st).c_read] = st.ring_addr + 4 * (self.consumed % dc.RING_LEN)

    def tick(self):
        self.now += self.cost_us
        st = self.st
        while self.alive and self.next_finish <= self.now:
            chain = self.hw.regs.get(R(st).d_ctrl, 0) >> dc.CTRL_CHAIN_TO_SHIFT & 0xF
            if chain != st.ctl_ch:
                self.alive = False  # CHAIN_TO = itself: the control channel is never triggered again
                break
            v = st.ring_store[st.ring_base + self.consumed % dc.RING_LEN]
            self.consumed += 1
            self._sync()
            if v == 0:
                self.alive = False
                break
            self.started.append(self.next_finish)
            self.next_finish += self.entry_us


@pytest.mark.parametrize("phase_us", range(0, 100, 1))
def test_a_stop_at_any_phase_of_a_10khz_train_starts_no_further_entry(hal, phase_us):
    h, hw, _ = hal
    h.start([train(period_ns=100_000, phase1_ns=20_000, phase2_ns=20_000)] * 4, 1, [0] * 4)
    model = ChainClock(h, hw, phase_us)
    st = h._ch[0]
    st.ring_store = st.feeder.ring = RingLog(st.ring_store, hw, model.tick)
    first_access = []

    def on_access(*_):
        if not first_access:
            first_access.append(model.now + model.cost_us)
        model.tick()

    hw.on_read = on_access
    orig_write = hw.write
    hw.write = lambda a, v: (on_access(), orig_write(a, v))
    st.ring_store.tick = on_access
    h.stop(1)
    for _ in range(100):  # 200 µs more of CPU time: two more entry boundaries
        model.tick()
    late = [t for t in model.started if t > first_access[0]]  # (at the same instant: before the store)
    # the entry being transferred when the stop began is the one queued pulse; 5aee4a5 let a
    # group complete between its READ_ADDR read and the first ring store: a second queued pulse
    assert late == [], (phase_us, late)
    assert not model.alive


# ---- item 11: DMA abort per RP2040-E13 --------------------------------------------------------------
def test_abort_clears_en_first_then_aborts_then_waits_for_busy(hal):
    h, hw, _ = hal
    st = h._ch[0]
    busy_reads = [0]

    def busy(a):
        if a == dc.DMA_CHAN_ABORT:
            hw.regs[a] = 0  # CHAN_ABORT self-clears
        if a == R(st).d_ctrl and busy_reads[0] < 3:  # the in-flight transfer retires after 3 polls
            busy_reads[0] += 1
            hw.regs[a] = hw.regs.get(a, 0) | dc.CTRL_BUSY
        elif a == R(st).d_ctrl:
            hw.regs[a] = hw.regs.get(a, 0) & ~dc.CTRL_BUSY

    hw.on_read = busy
    hw.log.clear()
    hw.log_reads = True
    h._abort(st)
    log = [e for e in hw.log if e[0] in ("mem", "read")]
    i = log.index(("mem", dc.DMA_CHAN_ABORT, 1 << st.data_ch | 1 << st.ctl_ch))
    en_off = {e[1]: e[2] for e in log[:i] if e[0] == "mem"}
    assert en_off[R(st).d_ctrl] & dc.CTRL_EN == 0 and en_off[R(st).c_ctrl] & dc.CTRL_EN == 0
    assert _fields(en_off[R(st).d_ctrl])["chain_to"] == st.data_ch  # nothing chains while aborting
    reads = [e[1] for e in log[i + 1:] if e[0] == "read"]
    assert dc.DMA_CHAN_ABORT in reads and reads.count(R(st).d_ctrl) >= 4 and R(st).c_ctrl in reads
    assert busy_reads[0] == 3


def test_start_aborts_before_reconfiguring(hal):
    h, hw, _ = hal
    hw.log.clear()
    h.start([train()] * 4, 1, [0] * 4)
    st = h._ch[0]
    log = [e for e in hw.log if e[0] == "mem"]
    abort = log.index(("mem", dc.DMA_CHAN_ABORT, 1 << st.data_ch | 1 << st.ctl_ch))
    en_clear = [j for j, e in enumerate(log[:abort]) if e[1] in (R(st).d_ctrl, R(st).c_ctrl) and not e[2] & 1]
    assert len(en_clear) == 2
    reconf = [j for j, e in enumerate(log) if e[1] == R(st).d_write]
    assert reconf and min(reconf) > abort


# ---- item 12: replace ------------------------------------------------------------------------------
def _running(h, hw, consumed):
    h.start([train(period_ns=1 * MS)] * 4, 1, [0] * 4)
    st = h._ch[0]
    hw.regs[R(st).c_read] = st.ring_addr + 4 * consumed
    h.pulses(0)  # the HAL notes the DMA's position
    return st


def _live_buffers(st):
    return len(st.buffers) + sum(len(b) for _, b in getattr(st, "retired", []))


def test_replace_keeps_the_next_entry_and_switches_where_the_hardware_says(hal):
    h, hw, _ = hal
    st = _running(h, hw, 5)
    ring = st.ring_store
    old5, old_cum5 = ring[st.ring_base + 5], st.feeder.cum[5]
    old_values = set(ring)
    new = train(period_ns=3 * MS)
    h.replace(0, new)
    # slot 5 (the control channel may be reading it right now) keeps its old entry
    assert ring[st.ring_base + 5] == old5 and st.feeder.cum[5] == old_cum5
    assert ring[st.ring_base + 6] not in old_values  # the new plan's first entry: a fresh buffer
    assert st.pending_dac[0] == 6  # 5aee4a5: 5, an entry the DMA may already have read
    assert st.feeder.cum[6] == old_cum5 + 1 and st.feeder.pulses_after(7) == old_cum5 + 1


def test_replace_detects_the_dma_racing_its_first_store(hal):
    h, hw, _ = hal
    st = _running(h, hw, 5)
    old = {i: st.ring_store[st.ring_base + i] for i in range(5, 12)}
    moved = []

    def dma(a):
        # the first store landed (slot 6 changed): the DMA has meanwhile read slots 5..7
        if a == R(st).c_read and not moved and st.ring_store[st.ring_base + 6] != old[6]:
            moved.append(1)
            hw.regs[a] = st.ring_addr + 4 * 8

    hw.on_read = dma
    h.replace(0, train(period_ns=3 * MS))
    assert moved
    assert st.pending_dac[0] == 9 and st.feeder.races == 1
    assert st.ring_store[st.ring_base + 7] == old[7]  # what the DMA read stays as it was
    assert st.ring_store[st.ring_base + 9] != old[9]


def test_replace_memory_is_bounded(hal):
    h, hw, _ = hal
    st = _running(h, hw, 5)
    for k in range(40):  # a host changing the period 40 times before the DMA moved on
        h.replace(0, train(period_ns=(2 + k % 3) * MS))
    assert _live_buffers(st) <= 3 * len(dc.Plan(train(period_ns=2 * MS)).blocks)  # 5aee4a5: every plan
    hw.regs[R(st).c_read] = st.ring_addr + 4 * 8  # the DMA is past the switch
    h.pulses(0)
    assert _live_buffers(st) == len(st.buffers)


# ---- item 3: no register address or big constant computed after construction -------------------
def test_no_register_address_is_computed_outside_construction(hal, monkeypatch):
    h, hw, clock = hal

    def refuse(*a):
        raise AssertionError("register address computed in a hot path")

    for name in ("dma_reg", "pio_sm_addr_reg", "pio_sm_instr_reg", "pio_sm_pinctrl_reg", "pio_flevel",
                 "pio_ctrl_set", "pio_txf"):
        monkeypatch.setattr(dc, name, refuse)
    trains = [train(period_ns=1 * MS, train_duration_ns=5 * MS), train(trigger=1), None, None]
    h.start(trains, 0b11, [0, 1, 0, 0])
    assert h.waiting(1) and h.running(0)
    h.replace(0, train(period_ns=2 * MS, train_duration_ns=5 * MS))
    h.pulses(0)
    h.stop(0b11)
    hw.read = (lambda orig: lambda a: 0 if a == dc.PIO0_BASE + 0x00C else orig(a))(hw.read)
    while h.running(0):  # the tail wait crosses the 2**30 tick wrap (fixture clock)
        pass
    assert clock[0] < 100_000  # wrapped (it started 3,000 µs before the wrap)
