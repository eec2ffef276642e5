"""Register-level tests of the board HAL: firmware/hal_rp2.py + firmware/dma_chain.py, unmodified, on
CPython with machine.mem32 on npm rp2040js's bus (host/picostim/virtual/regbus.py, wholechip/regbus.mjs).

rp2040js's PIO and DMA (with the documented fidelity patches of wholechip/pio_patches.mjs) are a third
model of the whole board path, independent of picostim's pio_emu/dma_model (sim_hal) and of the HAL's
own bookkeeping: the pin edges, in PIO cycles, must equal sim_hal's for the same trains. Where the
two paths legitimately differ (where a stop or replace lands depends on each DMA model's look-ahead),
the tests assert the safety invariants instead: every pulse complete and balanced, POS/NEG never
together, at most one queued pulse after a stop, the edges a pulse-boundary prefix of the unstopped
train. One test per emulator patch checks it against an RP2040 datasheet fact.
"""

from __future__ import annotations

import pytest

from firmware import board
from firmware import pulse_engine as pe
from picostim.virtual import regbus as rb
from picostim.virtual.sim_hal import SimHal
from protocol import params as P

pytestmark = pytest.mark.skipif(rb.available() is not None, reason=str(rb.available()))

US = rb.CYCLES_PER_US
PIO0 = rb.PIO_BASE[0]
DMA = 0x50000000


def train(**kw):
    return pe.build_train(P.complete(kw))


def pins_of(ch):
    p = [board.CH_POS[ch], board.CH_NEG[ch], board.CH_RECOVERY[ch]]
    if ch == board.SYNC_CHANNEL:
        p.append(board.SYNC_PIN)
    return p


# short, fast trains (5 kHz .. 10 kHz) so that a few ms of emulated time show many pulses
T = [
    dict(phase1_ns=20_000, phase2_ns=20_000, period_ns=200_000),
    dict(phase1_ns=12_000, interphase_ns=4_000, phase2_ns=36_000, period_ns=150_000, polarity=1),
    dict(phase1_ns=30_000, phase2_ns=30_000, recovery_ns=20_000, period_ns=250_000),
    dict(phase1_ns=8_000, phase2_ns=8_000, period_ns=100_000, train_delay_ns=33_000),
]


def trains_for(mask, **extra):
    return [train(**{**T[ch], **extra}) if mask >> ch & 1 else None for ch in range(board.CHANNELS)]


# ---- the two models ------------------------------------------------------------------------------
def sim_edges(trains, mask, cycles, wait=(0, 0, 0, 0), trigger_at=None):
    """sim_hal (picostim's pio_emu + dma_model): edges of the masked channels' pins relative to the
    start, up to ``cycles`` after it."""
    sim = SimHal(channels=board.CHANNELS)
    sim.start([t if t is not None else trains[0] for t in trains], mask, list(wait))
    t0 = sim.system.now
    if trigger_at is not None:
        sim.drive_trigger(1, 1, at_s=(t0 + trigger_at) / board.SYS_CLK_HZ)
    sim.advance_cycles(cycles)
    pins = [p for ch in range(board.CHANNELS) if mask >> ch & 1 for p in pins_of(ch)]
    return [(c - t0, p, lv) for c, p, lv in sim.system.level_changes(pins) if c >= t0]


def rb_edges(bus, mask, t0, until=None):
    pins = {p for ch in range(board.CHANNELS) if mask >> ch & 1 for p in pins_of(ch)}
    return [(c - t0, p, lv) for c, p, lv in bus.edges() if p in pins and c >= t0
            and (until is None or c - t0 < until)]


def start_cycle(bus):
    """Cycle of the HAL's one SM_ENABLE write (PIO CTRL set alias) of its last start()."""
    starts = [c for c, a, _v in bus.enables if a == PIO0 + rb.ALIAS_SET]
    assert starts, "the HAL never enabled a state machine"
    return starts[-1]


def of_channel(edges, ch):
    ps = set(pins_of(ch))
    return [e for e in edges if e[1] in ps]


def pulses_of(edges, ch, first_pin):
    """[(rise, fall)] of the first-phase pin."""
    out, rise = [], None
    for c, p, lv in edges:
        if p != first_pin:
            continue
        if lv:
            rise = c
        else:
            out.append((rise, c))
    return out


def check_invariants(edges, ch):
    """POS and NEG never high together; every edge list ends with all drive pins low."""
    level = {p: 0 for p in pins_of(ch)}
    ev = sorted(of_channel(edges, ch))
    for i, (c, p, lv) in enumerate(ev):
        level[p] = lv
        if i + 1 < len(ev) and ev[i + 1][0] == c:
            continue  # the pins written in one PIO cycle change together
        assert not (level[board.CH_POS[ch]] and level[board.CH_NEG[ch]]), "POS and NEG high together at %d" % c
    assert all(v == 0 for v in level.values()), "channel %d ends with a pin high: %r" % (ch, level)
    # balanced: every pulse has both phases (each first phase is followed by its second phase)
    rises = [p for _c, p, lv in ev if lv and p in (board.CH_POS[ch], board.CH_NEG[ch])]
    assert rises[0::2] == rises[:1] * len(rises[0::2]) and len(rises) % 2 == 0, "unbalanced pulse on channel %d" % ch
    assert len(set(rises[1::2])) <= 1 and set(rises[1::2]).isdisjoint(rises[:1])


def first_pin(tr, ch):
    return board.CH_NEG[ch] if tr.first == pe.NEG else board.CH_POS[ch]


@pytest.fixture
def bus():
    b = rb.RegBus()
    yield b
    b.close()


def run_until_idle(bus, hal, chans, limit_us=20_000, step_us=50):
    end = bus.now + limit_us * US
    while any(hal.running(ch) for ch in chans):
        assert bus.now < end, "channels %r still running after %d us" % (chans, limit_us)
        bus.run_us(step_us)


# ---- emulator patches: one datasheet fact each ---------------------------------------------------
def raw_bus(patches=None):
    return rb.RegBus(patches=patches)


def _sm_setup(b, prog, shiftctrl=0x000C0000, pinctrl=0):
    for i, op in enumerate(prog):
        b.write32(PIO0 + rb.PIO_INSTR_MEM0 + 4 * i, op, cost=None)
    b.write32(PIO0 + rb.SM_EXECCTRL, (len(prog) - 1) << 12, cost=None)
    b.write32(PIO0 + rb.SM_SHIFTCTRL, shiftctrl, cost=None)
    b.write32(PIO0 + rb.SM_PINCTRL, pinctrl, cost=None)
    b.write32(PIO0 + rb.SM_INSTR, 0, cost=None)  # jmp 0


def test_patch_fjoin_tx_is_eight_deep_and_flushes():
    """SHIFTCTRL.FJOIN_TX: "TX FIFO steals the RX FIFO's storage, and becomes twice as deep ...
    FIFOs are flushed when this bit is changed." Stock rp2040js: 4 deep, never flushed."""
    for patches, depth, flushed in ((None, 8, True), ([p for p in rb_patches() if p != "fjoin"], 4, False)):
        with raw_bus(patches) as b:
            b.write32(PIO0 + rb.SM_SHIFTCTRL, 1 << 30 | 0x000C0000)
            for w in range(10):
                b.write32(PIO0 + rb.PIO_TXF0, w)
            assert b.read32(PIO0 + rb.PIO_FLEVEL) & 0xF == depth
            assert bool(b.read32(PIO0 + rb.PIO_FSTAT) & 1 << 16) is True  # TXFULL
            assert bool(b.read32(PIO0 + rb.PIO_FDEBUG) & 1 << 16) is True  # TXOVER: 10 > depth
            b.write32(PIO0 + rb.SM_SHIFTCTRL + rb.ALIAS_XOR, 1 << 31)  # pio_sm_clear_fifos: toggle twice
            b.write32(PIO0 + rb.SM_SHIFTCTRL + rb.ALIAS_XOR, 1 << 31)
            assert (b.read32(PIO0 + rb.PIO_FLEVEL) & 0xF == 0) is flushed


_PATCHES: list = []


def rb_patches():
    """Names of every patch pio_patches.mjs applies by default (asked once)."""
    if not _PATCHES:
        with rb.RegBus() as b:
            _PATCHES.extend(b.patches)
    return list(_PATCHES)


def _wait_latency(patches, bypass=False):
    """Cycles from an input edge on GPIO 14 to the pin written by the instruction after
    `wait 1 gpio 14`."""
    with raw_bus(patches) as b:
        # wait 1 gpio 14 ; set pins, 1 ; jmp 2 (park)   -- SET pins: base 0, count 1
        _sm_setup(b, [0x208E, 0xE001, 0x0002], pinctrl=1 << 26)
        b.write32(PIO0 + 0x038, (1 << 14) if bypass else 0)  # INPUT_SYNC_BYPASS
        b.write32(PIO0 + rb.SM_INSTR, 0xE081, cost=None)  # set pindirs, 1
        b.write32(rb.IO_BANK0 + 4, rb.GPIO_FUNC_PIO0, cost=None)  # GPIO0 -> PIO0
        b.write32(rb.PADS_BANK0 + 4 + 4 * 14, rb.PADS_IE, cost=None)
        b.write32(rb.PADS_BANK0 + 4, rb.PADS_IE, cost=None)
        b.write32(PIO0 + rb.PIO_CTRL, 1)
        t_in = b.now + 1000
        b.drive_input(14, 1, t_in)
        b.run_until(t_in + 100)
        rise = [c for c, p, lv in b.edges() if p == 0 and lv == 1]
        return rise[0] - t_in


def test_patch_input_synchroniser_two_cycles():
    """INPUT_SYNC_BYPASS: "There is a 2-flipflop synchronizer on each GPIO input ... 0 -> input is
    synchronized (default), 1 -> synchronizer is bypassed". With it the pin write after the WAIT comes
    2 cycles later than with the bypass (the wait completes in the cycle it sees the level, the SET
    runs in the next)."""
    synced = _wait_latency(None)
    bypassed = _wait_latency(None, bypass=True)
    assert synced - bypassed == 2
    assert bypassed == 1  # input at t, WAIT completes at t, SET pins at t + 1
    # without the `wait` patch the instruction after the WAIT runs in the release cycle (one early);
    # stock rp2040js has neither: no synchroniser, and the release cycle merged with the next one
    patches = rb_patches()
    assert _wait_latency([p for p in patches if p != "wait"]) == synced - 1
    assert _wait_latency([p for p in patches if p not in ("sync", "wait")]) == 0


def _wait_pin_after_in_base_move(patches):
    """`wait 1 pin 0` with IN_BASE on low GPIO 14; then IN_BASE is moved to GPIO 15, high for long:
    the cycle (after the PINCTRL write) at which the next instruction drives GPIO 0, or None."""
    with raw_bus(patches) as b:
        _sm_setup(b, [0x20A0, 0xE001, 0x0002], pinctrl=1 << 26 | 14 << 15)
        b.write32(PIO0 + rb.SM_INSTR, 0xE081, cost=None)
        b.write32(rb.IO_BANK0 + 4, rb.GPIO_FUNC_PIO0, cost=None)
        for pin in (14, 15):
            b.write32(rb.PADS_BANK0 + 4 + 4 * pin, rb.PADS_IE, cost=None)
        b.drive_input(15, 1, b.now)
        b.write32(PIO0 + rb.PIO_CTRL, 1)
        b.run_us(2)
        assert b.peek(0)["waiting"]
        b.write32(PIO0 + rb.SM_PINCTRL, 1 << 26 | 15 << 15, cost=None)
        t = b.now
        b.run_us(2)
        rise = [c for c, p, lv in b.edges() if p == 0 and lv == 1]
        return rise[0] - t if rise else None


def test_patch_stalled_wait_pin_follows_in_base():
    """WAIT PIN waits on "the input pin selected by Index", relative to the state machine's IN_BASE, and
    a stalled instruction is re-evaluated every cycle with the current PINCTRL: moving IN_BASE under a
    waiting SM changes the pin it waits on (the HAL's disarm relies on it). Stock rp2040js resolved
    the GPIO once, when the WAIT first ran."""
    assert _wait_pin_after_in_base_move(None) == 1  # WAIT completes in the write's cycle, SET next
    assert _wait_pin_after_in_base_move([p for p in rb_patches() if p != "waitpin"]) is None


def test_patch_pull_noblock_does_not_set_txstall():
    """FDEBUG.TXSTALL: "State machine has stalled on empty TX FIFO during a blocking PULL, or an OUT
    with autopull enabled." A `pull noblock` never stalls; a blocking `pull` does."""
    for prog, expect in (([0x8080, 0x0001], False), ([0x80A0, 0x0001], True)):
        for patches, want in ((None, expect), ([p for p in rb_patches() if p != "txstall"], True)):
            with raw_bus(patches) as b:
                _sm_setup(b, prog)
                b.write32(PIO0 + rb.PIO_CTRL, 1)
                b.run_us(1)
                assert bool(b.read32(PIO0 + rb.PIO_FDEBUG) & 1 << 24) is want, (prog, patches)


def test_patch_dma_chan_abort_reads_zero():
    """DMA CHAN_ABORT: "The bit will remain high until any in-flight transfers have been flushed ...
    this register must be polled until it returns all-zero"; rp2040js transfers take zero time, so it
    reads 0 at once (stock: 0xFFFFFFFF, an unimplemented register; MULTI_CHAN_TRIGGER likewise)."""
    with raw_bus() as b:
        b.write32(DMA + 0x444, 0b11)
        assert b.read32(DMA + 0x444) == 0
        assert b.read32(DMA + 0x430) == 0
        assert not b.warnings
    with raw_bus([p for p in rb_patches() if p != "dmaregs"]) as b:
        assert b.read32(DMA + 0x444) == 0xFFFFFFFF


def test_patch_loopback_gpio_in_reads_pio_driven_pin():
    """SIO GPIO_IN reads the pad: a pin driven high by the PIO reads 1 (the HAL's phase-1 monitor
    reads the first-phase pin this way)."""
    for patches, want in ((None, 1), ([p for p in rb_patches() if p != "loopback"], 0)):
        with raw_bus(patches) as b:
            _sm_setup(b, [0xE001, 0x0001], pinctrl=1 << 26)  # set pins, 1 ; park
            b.write32(PIO0 + rb.SM_INSTR, 0xE081, cost=None)
            b.write32(rb.IO_BANK0 + 4, rb.GPIO_FUNC_PIO0, cost=None)
            b.write32(rb.PADS_BANK0 + 4, rb.PADS_IE, cost=None)
            b.write32(PIO0 + rb.PIO_CTRL, 1)
            assert b.read32(rb.SIO_GPIO_IN) & 1 == want


def test_patch_delay_and_lockstep():
    """Delay field: "the state machine waits for the delay count after the instruction"; only enabled
    state machines run (CTRL.SM_ENABLE). `set pins,1 [7]; set pins,0 [3]` toggles every 8/4 cycles."""
    for patches, period in ((None, 12), ([p for p in rb_patches() if p != "delay"], 2)):
        with raw_bus(patches) as b:
            _sm_setup(b, [0xE701, 0xE300], pinctrl=1 << 26)
            b.write32(PIO0 + rb.SM_INSTR, 0xE081, cost=None)
            b.write32(rb.IO_BANK0 + 4, rb.GPIO_FUNC_PIO0, cost=None)
            b.write32(PIO0 + rb.SM_CLKDIV + rb.SM_STRIDE, 1 << 16, cost=None)  # SM1 stays disabled
            b.write32(PIO0 + rb.PIO_CTRL, 1)
            b.run_us(1)
            rises = [c for c, p, lv in b.edges() if p == 0 and lv == 1]
            assert len(rises) > 3 and {rises[i + 1] - rises[i] for i in range(len(rises) - 1)} == {period}
            assert b.peek(1)["pc"] == 0  # the disabled SM1 never stepped
    with raw_bus([p for p in rb_patches() if p != "lockstep"]) as b:  # stock: every SM steps
        _sm_setup(b, [0xE701, 0xE300], pinctrl=1 << 26)
        b.write32(PIO0 + rb.PIO_CTRL, 1)
        b.run_us(1)
        assert b.peek(1)["pc"] != 0


# ---- the HAL on the chip -------------------------------------------------------------------------
def test_hal_boots_to_the_safe_state_with_the_rp2_ports_register_writes(bus):
    hal = bus.load_hal()
    assert not bus.warnings, bus.warnings[:5]  # no unimplemented register touched
    for ch in range(board.CHANNELS):
        st = hal._ch[ch]
        info = bus.peek(board.CH_SM[ch])
        assert not info["enabled"] and info["txsize"] == 8  # joined TX FIFO from fifo_join=JOIN_TX
    # programs loaded top-down by pio_add_program: the 4-pin one at 25, the 3-pin one at 18
    assert hal._ch[0].offset == 25 and {hal._ch[ch].offset for ch in (1, 2, 3)} == {18}
    assert all(lv == 0 for c, p, lv in bus.edges() if p in pins_of(0) + pins_of(1) + pins_of(2) + pins_of(3))


@pytest.mark.parametrize("mask", [0b0001, 0b0010, 0b0101, 0b1111])
def test_start_edges_equal_sim_hal(bus, mask):
    """Finite trains (5 ms) on 1-4 channels from one start(): every edge of every channel, in PIO cycles
    from the SM_ENABLE write, equals picostim's emulator; then the HAL reports each channel finished
    with the right pulse count."""
    hal = bus.load_hal()
    trains = trains_for(mask, train_duration_ns=1_000_000)
    hal.start(trains, mask, [0] * 4)
    t0 = start_cycle(bus)
    chans = [ch for ch in range(4) if mask >> ch & 1]
    run_until_idle(bus, hal, chans)
    window = bus.now - t0
    got = rb_edges(bus, mask, t0)
    want = sim_edges(trains, mask, window)
    assert got == want
    for ch in chans:
        check_invariants(got, ch)
        n = len(pulses_of(got, ch, first_pin(trains[ch], ch)))
        assert n == trains[ch].repeats * trains[ch].pulses_per_cycle and n > 0
        assert hal.pulses(ch) == n
    assert not bus.warnings, bus.warnings[:5]  # no unimplemented/invalid register was touched


def test_acceleration_changes_nothing():
    """The server skips cycles in which every enabled SM counts down a delay loop or waits on a
    settled input: the edges are the same as stepping every cycle (a triggered channel included)."""
    mask = 0b1011
    out = []
    for accel in (True, False):
        with rb.RegBus(accelerate=accel) as b:
            hal = b.load_hal()
            trains = trains_for(mask, train_duration_ns=400_000)
            trains[0] = train(**T[0], train_duration_ns=400_000, trigger=1)
            hal.start(trains, mask, [1, 0, 0, 0])
            b.drive_input(board.TRIG1_PIN, 1, b.now + 123 * US + 5)
            b.run_us(700)
            out.append(b.edges())
    assert out[0] == out[1] and len(out[0]) > 40


@pytest.mark.parametrize("mask,trigger", [(0b0011, 1), (0b1111, 3)])
def test_trigger_start_equals_sim_hal_plus_the_input_synchroniser(bus, mask, trigger):
    """Channels armed on TRIG1 (rising edge, or gated: trigger 3) start on the edge: their edges equal
    sim_hal's two PIO cycles later (sim_hal's pio_emu does not model the 2-flop input synchroniser;
    the datasheet's PIO has it)."""
    hal = bus.load_hal()
    trains = trains_for(mask, train_duration_ns=600_000, trigger=trigger)
    chans = [ch for ch in range(4) if mask >> ch & 1]
    wait = [1 if mask >> ch & 1 else 0 for ch in range(4)]
    hal.start(trains, mask, wait)
    t0 = start_cycle(bus)
    assert all(hal.waiting(ch) for ch in chans)
    d = 300 * US + 7
    bus.drive_input(board.TRIG1_PIN, 1, t0 + d)
    bus.run_us(300)
    assert hal.running(0) and not hal.waiting(0)
    run_until_idle(bus, hal, chans)
    got = rb_edges(bus, mask, t0)
    want = sim_edges(trains, mask, bus.now - t0, wait=tuple(wait), trigger_at=d)
    assert got and got == [(c + 2, p, lv) for c, p, lv in want]


SLOW_CPU = {k: 5 * v for k, v in rb.COSTS_US.items()}  # a CPU five times slower than the cost model


@pytest.mark.parametrize("mask,stop_us,costs", [(0b0001, 437, None), (0b0110, 611, None), (0b1111, 1203, None),
                                                (0b1111, 1577, SLOW_CPU)])
def test_stop_ends_at_a_pulse_boundary_with_at_most_one_queued_pulse(mask, stop_us, costs):
    """The bound must not depend on how fast the interpreter is: with every firmware call five times
    slower the stop still lets at most one queued pulse out on every channel."""
    with rb.RegBus(costs=costs) as bus:
        _stop_case(bus, mask, stop_us)


def _stop_case(bus, mask, stop_us):
    hal = bus.load_hal()
    trains = trains_for(mask)  # endless
    hal.start(trains, mask, [0] * 4)
    t0 = start_cycle(bus)
    bus.run_until(t0 + stop_us * US)
    chans = [ch for ch in range(4) if mask >> ch & 1]
    # while running, the HAL's pulse count (STATUS) never counts a pulse that has not ended; it trails
    # the pins by the pulse whose idle is still playing, and by one more when an entry boundary falls
    # between its READ_ADDR and TRANS_COUNT/FLEVEL reads (a non-atomic snapshot: measured here, see
    # the regbus report), so by at most two
    counts = {}
    for ch in chans:
        t_call = bus.now - t0
        counts[ch] = (t_call, hal.pulses(ch), bus.now - t0)
    so_far = rb_edges(bus, mask, t0)
    for ch in chans:
        t_a, n, t_b = counts[ch]
        second = board.CH_POS[ch] if first_pin(trains[ch], ch) == board.CH_NEG[ch] else board.CH_NEG[ch]
        ends = [f for _r, f in pulses_of(so_far, ch, second)]  # complete pulses: second phase over
        lo = len([f for f in ends if f <= t_a]) - 2
        hi = len([f for f in ends if f <= t_b])
        assert lo <= n <= hi, "channel %d: pulses() = %d, pins %d..%d" % (ch, n, lo + 1, hi)
    t_stop = bus.now - t0
    hal.stop(mask)
    run_until_idle(bus, hal, chans)
    got = rb_edges(bus, mask, t0)
    free = sim_edges(trains, mask, bus.now - t0)
    for ch in chans:
        g = of_channel(got, ch)
        check_invariants(g, ch)
        assert g == of_channel(free, ch)[:len(g)], "channel %d is not a prefix of its unstopped train" % ch
        p = pulses_of(g, ch, first_pin(trains[ch], ch))
        after = [r for r, _f in p if r > t_stop]
        assert len(after) <= 1, "channel %d: %d pulses started after the stop" % (ch, len(after))
        assert hal.pulses(ch) == len(p)
    assert not bus.warnings, bus.warnings[:5]


def test_fault_stop_of_one_channel_leaves_the_others_exact(bus):
    mask = 0b1111
    hal = bus.load_hal()
    trains = trains_for(mask)
    hal.start(trains, mask, [0] * 4)
    t0 = start_cycle(bus)
    bus.run_until(t0 + 777 * US)
    t_stop = bus.now - t0
    hal.stop(1 << 2)  # what the controller does on OPEN/SHORT of channel 2
    run_until_idle(bus, hal, [2])
    bus.run_us(500)
    window = bus.now - t0
    got = rb_edges(bus, mask, t0, until=window)
    free = sim_edges(trains, mask, window)
    for ch in (0, 1, 3):
        assert of_channel(got, ch) == of_channel(free, ch)
        assert hal.running(ch)
    g = of_channel(got, 2)
    check_invariants(g, 2)
    assert g == of_channel(free, 2)[:len(g)]
    assert len([r for r, _f in pulses_of(g, 2, first_pin(trains[2], 2)) if r > t_stop]) <= 1


@pytest.mark.parametrize("offset_us", [3, 41, 58, 77, 96])
def test_stop_race_at_10khz(bus, offset_us):
    """Issue 10 item 9: a stop at any moment of a 10 kHz train lets at most one queued pulse follow."""
    hal = bus.load_hal()
    tr = train(phase1_ns=8_000, phase2_ns=8_000, period_ns=100_000)
    hal.start([tr, None, None, None], 1, [0] * 4)
    t0 = start_cycle(bus)
    bus.run_until(t0 + (1000 + offset_us) * US)
    t_stop = bus.now - t0
    hal.stop(1)
    run_until_idle(bus, hal, [0])
    g = rb_edges(bus, 1, t0)
    check_invariants(g, 0)
    assert g == sim_edges([tr, None, None, None], 1, bus.now - t0)[:len(g)]
    assert len([r for r, _f in pulses_of(g, 0, board.CH_NEG[0]) if r > t_stop]) <= 1


def test_replace_switches_at_a_pulse_boundary_to_the_new_train(bus):
    """replace() mid-train: the pins play whole old pulses, then the new train from an old group
    boundary, edge for edge as sim_hal plays the new train; after a stop the HAL's pulse count (its
    bookkeeping of where the switch happened, issue 10 item 12) equals the pulses on the pins."""
    old = train(phase1_ns=20_000, phase2_ns=20_000, period_ns=200_000)
    new = train(phase1_ns=40_000, phase2_ns=40_000, period_ns=150_000)
    hal = bus.load_hal()
    hal.start([old, None, None, None], 1, [0] * 4)
    t0 = start_cycle(bus)
    bus.run_until(t0 + 917 * US)
    hal.replace(0, new)
    bus.run_us(1500)
    hal.stop(1)
    run_until_idle(bus, hal, [0])
    window = bus.now - t0
    got = rb_edges(bus, 1, t0)
    check_invariants(got, 0)
    old_e = sim_edges([old, None, None, None], 1, window)
    k = 0
    while k < len(got) and k < len(old_e) and got[k] == old_e[k]:
        k += 1
    # back to the last whole old pulse (6 edges: NEG/SYNC up, NEG down, POS up, POS/SYNC down): the
    # first new pulse starts on the same cycle as the old one would have
    k -= k % 6
    assert 0 < k < len(got)
    new_e = sim_edges([new, None, None, None], 1, window)
    t_sw = got[k][0] - new_e[0][0]
    assert t_sw % old.period_ticks == 0, "the new train does not start at an old group boundary"
    shifted = [(c + t_sw, p, lv) for c, p, lv in new_e]
    assert got[k:] == shifted[:len(got) - k] and len(got) - k >= 12  # at least two new pulses
    assert hal.pulses(0) == len(pulses_of(got, 0, board.CH_NEG[0]))


def test_stop_disarms_a_channel_waiting_for_its_trigger(bus):
    hal = bus.load_hal()
    trains = trains_for(0b0001, trigger=1)
    hal.start(trains, 1, [1, 0, 0, 0])
    t0 = start_cycle(bus)
    bus.run_us(200)
    assert hal.waiting(0)
    hal.stop(1)
    bus.run_us(100)
    bus.drive_input(board.TRIG1_PIN, 1)
    bus.run_us(2000)
    hal.running(0)
    assert rb_edges(bus, 1, t0) == [], "a pulse was delivered on a trigger after STOP"


def test_a_fired_channel_is_never_restarted(bus):
    """Issue 10 item 1: the controller's software TRIGGER after the external edge has fired must not
    restart the channel (on silicon a disabled SM holds its pins: NEG would stay on). start() on it
    is refused and the pulse in progress completes exactly as sim_hal plays the triggered train."""
    hal = bus.load_hal()
    tr = train(phase1_ns=200_000, phase2_ns=200_000, period_ns=2_000_000, train_duration_ns=4_000_000,
               trigger=1)
    trains = [tr, None, None, None]
    hal.start(trains, 1, [1, 0, 0, 0])
    t0 = start_cycle(bus)
    d = 50 * US
    bus.drive_input(board.TRIG1_PIN, 1, t0 + d)
    bus.run_until(t0 + 150 * US)  # 100 us into phase 1
    with pytest.raises(ValueError):
        hal.start(trains, 1, [0, 0, 0, 0])
    run_until_idle(bus, hal, [0])
    g = rb_edges(bus, 1, t0)
    check_invariants(g, 0)
    assert g == [(c + 2, p, lv) for c, p, lv in sim_edges(trains, 1, bus.now - t0, wait=(1, 0, 0, 0), trigger_at=d)]
    assert [f - r for r, f in pulses_of(g, 0, board.CH_NEG[0])] == [tr.phase1_ticks] * 2


def test_safe_state_completes_every_pulse_then_halts(bus):
    """The crash path (issue 10 item 5) at register level: safe_state() during 4 running trains lets
    each pulse in progress complete (at most one queued pulse), then every SM is disabled with its
    pins low and every DMA channel idle."""
    mask = 0b1111
    hal = bus.load_hal()
    trains = trains_for(mask)
    hal.start(trains, mask, [0] * 4)
    t0 = start_cycle(bus)
    bus.run_until(t0 + 1313 * US)
    t_abort = bus.now - t0
    hal.safe_state()
    bus.run_us(500)
    got = rb_edges(bus, mask, t0)
    free = sim_edges(trains, mask, bus.now - t0)
    for ch in range(4):
        g = of_channel(got, ch)
        check_invariants(g, ch)
        assert g == of_channel(free, ch)[:len(g)]
        assert len([r for r, _f in pulses_of(g, ch, first_pin(trains[ch], ch)) if r > t_abort]) <= 1
        assert not bus.peek(board.CH_SM[ch])["enabled"]
    busy = [bus.read32(DMA + 0x40 * c + 0x10) >> 24 & 1 for c in range(8)]
    assert busy == [0] * 8


def _dma_ctrl_writes(bus, ch):
    regs = {DMA + 0x40 * ch + off for off in (0x0C, 0x10, 0x20, 0x30)}
    return [(c, v) for c, kind, a, v in bus.trace if kind == "w" and a in regs]


def test_dma_abort_follows_erratum_e13(bus):
    """Issue 10 item 11 (RP2040-E13): before every CHAN_ABORT both channels' EN is clear, and after it
    the HAL polls CHAN_ABORT and BUSY of both channels before it reconfigures them. rp2040js has no
    in-flight DMA transfers (zero-time DMA), so this checks the HAL's register sequence on the bus."""
    hal = bus.load_hal()
    trains = trains_for(0b0011, train_duration_ns=600_000)
    for _ in range(2):  # start() aborts both DMA channels of each channel before loading it
        hal.start(trains, 0b0011, [0] * 4)
        run_until_idle(bus, hal, [0, 1])
    aborts = [(i, c, v) for i, (c, kind, a, v) in enumerate(bus.trace) if kind == "w" and a == DMA + 0x444 and v]
    assert aborts
    for i, c, bits in aborts:
        chans = [ch for ch in range(12) if bits >> ch & 1]
        for ch in chans:
            before = [v for cy, v in _dma_ctrl_writes(bus, ch) if cy <= c]
            assert before and not before[-1] & 1, "DMA channel %d enabled when aborted (cycle %d)" % (ch, c)
        # the polls after the abort, up to the next write to one of those channels
        nxt = next((j for j in range(i + 1, len(bus.trace)) if bus.trace[j][1] == "w"
                    and any(DMA + 0x40 * ch <= bus.trace[j][2] < DMA + 0x40 * (ch + 1) for ch in chans)), len(bus.trace))
        reads = {a for _c, kind, a, _v in bus.trace[i + 1:nxt] if kind == "r"}
        assert DMA + 0x444 in reads
        for ch in chans:
            assert reads & {DMA + 0x40 * ch + off for off in (0x0C, 0x10, 0x20, 0x30)}, "BUSY of %d not polled" % ch


def test_trains_across_the_2_30_us_tick_wrap():
    """ticks_us() wraps at 2**30 on the rp2 port: a start, stop and drain around the wrap behave as
    anywhere else (edges equal sim_hal, running() ends, pulses() counts them)."""
    with rb.RegBus(start_us=(1 << 30) - 3700) as bus:  # boot + start take ~3.1 ms of emulated CPU
        hal = bus.load_hal()
        mask = 0b0101
        trains = trains_for(mask, train_duration_ns=2_000_000)
        hal.start(trains, mask, [0] * 4)
        t0 = start_cycle(bus)
        assert (1 << 30) - 1500 < bus.ticks_us() < 1 << 30  # started before the wrap
        run_until_idle(bus, hal, [0, 2])
        assert bus.ticks_us() < 5000  # wrapped
        got = rb_edges(bus, mask, t0)
        assert got == sim_edges(trains, mask, bus.now - t0)
        for ch in (0, 2):
            assert hal.pulses(ch) == len(pulses_of(got, ch, first_pin(trains[ch], ch))) > 5
        timer = bus.read32(0x40054028)  # TIMERAWL: the same microseconds as ticks_us()
        assert timer % (1 << 30) == bus.ticks_us()


def test_impedance_test_pulse_is_balanced_on_the_pins(bus):
    """measure_impedance() plays its test pulse through the channel's PIO: NEG then POS of equal
    length (TEST_PULSE_NS), never together, then idle."""
    from firmware import impedance
    hal = bus.load_hal()
    t = bus.now
    hal.measure_impedance(1)
    bus.run_us(200)
    g = [e for e in bus.edges() if e[0] >= t and e[1] in pins_of(1)]
    check_invariants(g, 1)
    neg = pulses_of(g, 1, board.CH_NEG[1])
    pos = pulses_of(g, 1, board.CH_POS[1])
    ph = pe.ns_to_ticks(impedance.TEST_PULSE_NS)
    assert neg and len(neg) == len(pos)
    for (nr, nf), (pr, pf) in zip(neg, pos):
        assert nf - nr == ph and pf - pr == ph and pr >= nf


def test_replace_keeps_buffer_memory_bounded(bus):
    """Issue 10 item 12: every replace() allocates the new train's buffers; the old ones must be let
    go once the DMA can no longer read them, so 24 replaces use no more array memory than a few.
    (Measured on the arrays the HAL keeps referenced; the pins stay balanced throughout.)"""
    import gc

    a = train(phase1_ns=20_000, phase2_ns=20_000, period_ns=200_000)
    b = train(phase1_ns=30_000, phase2_ns=10_000, period_ns=120_000)
    hal = bus.load_hal()
    hal.start([a, None, None, None], 1, [0] * 4)
    t0 = start_cycle(bus)
    live = []
    for i in range(24):
        bus.run_us(300)
        hal.replace(0, b if i % 2 == 0 else a)
        for _ in range(4):
            bus.run_us(250)
            assert hal.running(0)
        if i < 4 or i % 4 == 3:
            gc.collect()
            live.append(bus.live_bytes)
    hal.stop(1)
    run_until_idle(bus, hal, [0])
    check_invariants(rb_edges(bus, 1, t0), 0)
    assert max(live[4:]) <= max(live[:4]), "array memory grows with every replace: %r" % live


@pytest.mark.parametrize("trigger", [0, 1])
def test_phase1_readings_are_taken_inside_phase_1(bus, trigger):
    """Phase-1 monitoring on the chip: every reading phase1_samples() keeps was converted while the
    first-phase pin was high on the pins (the HAL schedules by CPU time and checks GPIO_IN, which
    reads the pad the PIO drives), and readings are actually kept."""
    from firmware import impedance

    tr = train(phase1_ns=100_000, phase2_ns=100_000, period_ns=1_000_000, trigger=trigger)
    hal = bus.load_hal()
    hal.start([tr, None, None, None], 1, [trigger, 0, 0, 0])
    t0 = start_cycle(bus)
    if trigger:
        bus.drive_input(board.TRIG1_PIN, 1, t0 + 333 * US)
    kept = []
    for _ in range(60):
        n = len(bus.adc_reads)
        got = hal.phase1_samples(0, 0)
        if got:
            assert len(bus.adc_reads) > n
            kept.append(bus.adc_reads[-1])
        bus.run_us(97)
    conv = pe.ns_to_ticks(impedance.ADC_CONVERSION_NS)
    phases = pulses_of(rb_edges(bus, 1, 0), 0, board.CH_NEG[0])
    assert len(kept) >= 2, "no phase-1 reading kept in %d pulses" % len(phases)
    for c in kept:
        assert any(r <= c - conv and c <= f for r, f in phases), "reading at cycle %d outside phase 1" % c


def _disarm_store_cycle(bus, t_call):
    """Cycle of the first PINCTRL write of channel 0's SM at or after ``t_call`` (the disarm store)."""
    reg = PIO0 + rb.SM_PINCTRL
    return next(c for c, kind, a, _v in bus.trace if kind == "w" and a == reg and c >= t_call)


def _stop_with_trigger_at(d, store_offset=None):
    """Arm channel 0 on TRIG1, then stop it with the trigger edge ``d`` cycles after the disarm store
    (store_offset: cycles from the stop call to that store, found by a dry run)."""
    with rb.RegBus() as bus:
        hal = bus.load_hal()
        tr = train(phase1_ns=20_000, phase2_ns=20_000, period_ns=200_000, train_duration_ns=600_000, trigger=1)
        hal.start([tr, None, None, None], 1, [1, 0, 0, 0])
        t0 = start_cycle(bus)
        bus.run_us(200)
        t_call = bus.now
        if store_offset is not None:
            bus.drive_input(board.TRIG1_PIN, 1, t_call + store_offset + d)
        hal.stop(1)
        store = _disarm_store_cycle(bus, t_call)
        bus.run_us(1500)
        hal.running(0)
        bus.run_us(100)
        return store - t_call, rb_edges(bus, 1, t0), hal.running(0), tr, t0, store


def test_stop_races_a_trigger_edge_cycle_by_cycle():
    """Issue 10 item 2 at cycle level: an external edge arriving around STOP's disarm store (the SM's
    IN_BASE moved to its own low POS pin) either never fires, or fires a train whose pulses all
    complete; never a cut or unbalanced pulse, and the HAL ends the channel either way. An edge
    fires only if it reached the PIO (2 cycles through the input synchroniser) before the store: on
    the modelled chip an edge 3 cycles before the store fires, one 2 cycles before never does."""
    offset = _stop_with_trigger_at(0)[0]
    outcomes = {}
    for d in range(-6, 5):
        _off, g, running, tr, _t0, _store = _stop_with_trigger_at(d, offset)
        assert not running, "channel still running after a stop (edge at store%+d)" % d
        check_invariants(g, 0)
        n = len(pulses_of(g, 0, board.CH_NEG[0]))
        outcomes[d] = n
        if n:  # it fired before the disarm: the train runs and stop() ends it at a pulse boundary
            assert g[0][2] == 1
    assert outcomes[-6] > 0 and outcomes[4] == 0, outcomes  # early edges fire, late ones never do
    fired = [d for d in sorted(outcomes) if outcomes[d]]
    assert fired == list(range(-6, -2)), outcomes  # the synchroniser's 2 cycles decide, no flicker
