"""A train of another channel ending by itself while a varying sequence (or a ramp) plays on channel 0
must not move channel 0's amplitudes (docs/ARCHITECTURE.md "Custom sequences", "DAC bus").

Register-level model of the board: firmware/hal_rp2.py unmodified on npm rp2040js's DMA and PIO
(host/picostim/virtual/regbus.py). Channel 0 plays a sequence whose amplitude changes at every pulse
(or a soft start), its DAC ops queued and topped up as the controller does; channel 1's plain train,
started together with it, is shorter. The poll that sees channel 1's stream end (hal.running(1): the
DAC shutdown of channel 1) is placed while channel 0's phase 2 is high, a few tens of µs before it
falls. Before the fix that poll halted the DAC bus state machine inside channel 0's open wait op and
the fall came during the halt, so the resumed wait waited for the NEXT pulse end: that write and every
later one landed one pulse late. The DAC commands are decoded from the emulated SCK/MOSI/CS pads.

Where the window is: under the model's CPU costs (regbus.COSTS_US) the old HAL disabled the DAC SM
about 35 µs after that poll began and re-enabled it about 34 µs later, so a poll 50 or 62 µs before
the fall (``before_us``) put the fall inside the halt (both fail on ed87132 with every amplitude from
the next pulse on one pulse late); 15 µs would be too late for the halt to contain the fall. The
sequence and ramp cases also check that the DAC SM is never disabled while channel 0 plays and that
channel 1's shutdown goes out within a few of channel 0's pulses.
"""

from __future__ import annotations

import pytest
from test_hal_regbus import US, bus, pins_of, start_cycle, train  # noqa: F401
from test_hal_regbus_dac import decode, drive_high_intervals
from test_hal_regbus_sequence import LIM, onsets_for, seq_train

from firmware import board, dac_bus, impedance
from firmware import pulse_engine as pe
from picostim.virtual import regbus as rb

pytestmark = pytest.mark.skipif(rb.available() is not None, reason=str(rb.available()))

MS = 1_000_000
PIO1 = rb.PIO_BASE[1]
B_TRAIN = dict(phase1_ns=50_000, phase2_ns=50_000, period_ns=1_000_000, train_duration_ns=12 * MS,
               amplitude_ua=1500)


def _feed(hal, writer, lead=0):
    if writer is not None and not writer.done and writer.emitted - hal.pulses(lead) <= writer.lookahead() // 2:
        hal.dac_play(writer.chunk(writer.lookahead()))


def _start(bus, trains, writer, channels, wait=None):
    """Load hal_rp2 and START ``channels`` with their first codes and ``writer``'s first chunk of DAC
    ops (what the controller passes); returns (the HAL, the cycle of the enable write)."""
    hal = bus.load_hal()
    mask = sum(1 << ch for ch in channels)
    hal.start(trains, mask, wait or [0] * 4, pe.start_ops(trains, channels), writer.chunk(writer.lookahead()))
    return hal, start_cycle(bus)


def _first_pulse(bus, t_en):
    """Channel 0's first pulse after the enable write: (its first phase's rise, its phase-2 fall)."""
    e0 = bus.edges()
    r0 = [c for c, p, lv in e0 if p == board.CH_NEG[0] and lv and c >= t_en][0]
    f0 = [c for c, p, lv in e0 if p == board.CH_POS[0] and not lv and c >= t_en][0]
    return r0, f0


def _run(bus, hal, writer, until, step_us=400):
    """The main loop: poll channel 0 (and top its DAC ops up) every ``step_us``; channel 1 is not
    polled, so the test chooses when its end is seen."""
    while bus.now < until:
        bus.run_until(min(until, bus.now + step_us * US))
        hal.running(0)
        _feed(hal, writer)


def _end_b_inside_phase2(bus, hal, writer, fall_of, k_min, before_us, step_us=400):
    """Let channel 1's stream drain, then see its end (the poll that shuts its DAC down) ``before_us``
    before the fall of channel 0's phase-2 pin that ends pulse k (the first k >= k_min far enough
    ahead). Returns (k, cycle of the poll)."""
    while hal._ch[1].idle_since is None:  # drained: running(1) starts its tail timer
        _run(bus, hal, writer, bus.now + 400 * US, step_us)
        assert hal.running(1), "channel 1 ended before its drained state was seen"
    k = k_min
    while fall_of(k) - before_us * US < bus.now + 3 * MS // 8:  # its last idle word's tail is over by then
        k += 1
    _run(bus, hal, writer, fall_of(k) - before_us * US, step_us)
    at = bus.now
    assert not hal.running(1), "channel 1's end was not seen by this poll"
    return k, at


def _check_amplitudes(edges, t_en, rises, codes, phase2_falls, b_end):
    """Every pulse of channel 0 gets its own phase-1 code (DAC B: cathodic first), every write of
    channel 0 after the start lands after a pulse's end and settles before the next pulse, no channel
    0 write lands while one of its drive pins is high, and channel 1's DAC is shut down after its
    last pulse."""
    d = decode(edges)
    assert all(isinstance(x[3], int) for x in d), "a cut DAC frame"
    writes0 = [(rise, cmd) for rise, _f, ch, cmd, _s in d if ch == 0]
    b_codes = [(rise, cmd & dac_bus.CODE_MASK) for rise, cmd in writes0
               if cmd & dac_bus.CMD_B and cmd & dac_bus.CMD_ACTIVE]
    got = []
    for r in rises:
        before = [c for at, c in b_codes if at < r]
        got.append(before[-1] if before else None)
    wrong = [(j, got[j], codes[j]) for j in range(len(rises)) if got[j] != codes[j]]
    assert not wrong, "pulse, code played, code wanted: %r" % wrong[:8]
    high = drive_high_intervals(edges, 0)
    for rise, cmd in writes0:
        assert not any(a <= rise <= b for a, b in high), "channel 0 DAC write at %d inside a pulse" % rise
        if rise > t_en and cmd & dac_bus.CMD_ACTIVE:
            k = max(i for i, f in enumerate(phase2_falls) if f < rise)
            assert rise - phase2_falls[k] < dac_bus.UPDATE_TICKS + 4 * dac_bus.WRITE_TICKS
            assert k + 1 >= len(rises) or rise + dac_bus.SETTLE_TICKS <= rises[k + 1]
    off1 = [(rise, cmd) for rise, _f, ch, cmd, _s in d if ch == 1 and rise > b_end]
    assert sorted(c for _r, c in off1) == [dac_bus.shutdown_command(False), dac_bus.shutdown_command(True)], off1
    return [r for r, _c in off1]


def _dac_sm_disables(bus, t0, t1):
    """Cycles of the HAL's writes that disable the DAC bus state machine (PIO1 CTRL clear alias)."""
    clr = PIO1 + rb.PIO_CTRL + rb.ALIAS_CLR
    return [c for c, rw, a, *v in bus.trace if rw == "w" and a == clr and v[0] & 1 << board.DAC_SM and t0 < c < t1]


@pytest.mark.parametrize("before_us", [50, 62])
def test_channel_1_ending_by_itself_leaves_a_varying_sequence_on_time(bus, before_us):
    n = 40
    onsets = onsets_for(n)
    amps = [300 + 100 * (i % 9) for i in range(n)]
    a = seq_train(onsets, amps)
    b = train(**B_TRAIN)
    trains = [a, b, None, None]
    writer = pe.sequence_writer(trains, [0, 1])
    assert writer is not None and writer.channels == [0]
    hal, t_en = _start(bus, trains, writer, [0, 1])
    _run(bus, hal, writer, t_en + 3 * MS // 8)
    neg0, pos0 = board.CH_NEG[0], board.CH_POS[0]
    r0, f0 = _first_pulse(bus, t_en)
    length = f0 - r0  # pulse 0's first-phase rise to its phase-2 fall

    def fall_of(k):
        return t_en + 2 + pe.ns_to_ticks(onsets[k]) + length

    k, at = _end_b_inside_phase2(bus, hal, writer, fall_of, 3, before_us)
    assert k + 3 < n, "channel 1's end came too late in the sequence to test anything"
    _run(bus, hal, writer, t_en + pe.ns_to_ticks(onsets[-1]) + 3 * MS // 8)
    assert not hal.running(0) and hal.pulses(0) == n
    bus.run_us(2000)
    edges = [e for e in bus.edges()]
    rises = [c for c, p, lv in edges if p == neg0 and lv and c >= t_en]
    falls = [c for c, p, lv in edges if p == pos0 and not lv and c >= t_en]
    assert [r - t_en - 2 for r in rises] == [pe.ns_to_ticks(o) for o in onsets]
    assert falls[k] == fall_of(k) and falls[k] - before_us * US <= at  # the window: the poll sees B's end
    p2_rise = [c for c, p, lv in edges if p == pos0 and lv and c >= t_en][k]
    assert p2_rise <= at < falls[k]  # ... while pulse k's phase 2 is high
    b_drive = [c for c, p, lv in edges if p in (board.CH_POS[1], board.CH_NEG[1])]
    assert len([1 for c, p, lv in edges if p == board.CH_NEG[1] and lv]) == 12  # channel 1's whole train
    codes = [pe.dac_code(x) for x in amps]
    off1 = _check_amplitudes(edges, t_en, rises, codes, falls, max(b_drive))
    # channel 1's shutdown goes out behind the few words already in the DAC SM's FIFO (the SM is
    # never disabled while channel 0 plays): within a few of channel 0's pulses, not its lookahead
    assert at < min(off1) and max(off1) < falls[k + 1 + 4], (at, off1, falls[k:k + 6])
    assert _dac_sm_disables(bus, t_en, falls[-1]) == []


@pytest.mark.parametrize("before_us", [50, 62])
def test_channel_1_ending_by_itself_leaves_a_ramp_on_time(bus, before_us):
    """The same with a soft start on channel 0 (pulse_engine.RampWriter's ops, 30 ramp pulses)."""
    a = train(phase1_ns=60_000, phase2_ns=60_000, period_ns=LIM, amplitude_ua=3000, ramp_up_pulses=30,
              train_duration_ns=80 * MS)
    b = train(**B_TRAIN)
    trains = [a, b, None, None]
    writer = pe.ramp_up_writer(trains, [0, 1], [0] * 4)
    assert writer is not None and writer.channels == [0]
    hal, t_en = _start(bus, trains, writer, [0, 1])
    _run(bus, hal, writer, t_en + 3 * MS // 8)
    neg0, pos0 = board.CH_NEG[0], board.CH_POS[0]
    r0, f0 = _first_pulse(bus, t_en)

    def fall_of(k):
        return f0 + k * a.period_ticks

    k, at = _end_b_inside_phase2(bus, hal, writer, fall_of, 3, before_us)
    assert k + 3 < 30
    _run(bus, hal, writer, r0 + 42 * a.period_ticks)
    assert not hal.running(0) and hal.pulses(0) == 40
    bus.run_us(2000)
    edges = bus.edges()
    rises = [c for c, p, lv in edges if p == neg0 and lv and c >= t_en]
    falls = [c for c, p, lv in edges if p == pos0 and not lv and c >= t_en]
    assert falls[k] == fall_of(k) and rises[0] == r0
    p2_rise = [c for c, p, lv in edges if p == pos0 and lv and c >= t_en][k]
    assert p2_rise <= at < falls[k]
    codes = [pe.pulse_codes(a, j)[1] for j in range(len(rises))]  # DAC B: the cathodic phase 1
    assert len(set(codes[:30])) > 20  # the ramp does change the code pulse by pulse
    b_drive = [c for c, p, lv in edges if p in (board.CH_POS[1], board.CH_NEG[1])]
    off1 = _check_amplitudes(edges, t_en, rises, codes, falls, max(b_drive))
    assert at < min(off1) and max(off1) < falls[k + 1 + 4], (at, off1, falls[k:k + 6])
    assert _dac_sm_disables(bus, t_en, falls[-1]) == []


@pytest.mark.parametrize("then", ["start", "impedance"])
def test_a_deferred_shutdown_is_dropped_when_the_channel_is_written_again(bus, then):
    """Channel 1 ends while channel 0's ramp keeps the DAC bus busy: its shutdown is queued behind the
    words already in the DAC SM's FIFO. A start (or an impedance test) of channel 1 that comes before
    that shutdown has gone out writes its own codes ahead of the queue; the stale shutdown must not
    follow them (channel 1 would then run, or take its test pulse, with its DAC outputs off)."""
    a = train(phase1_ns=60_000, phase2_ns=60_000, period_ns=LIM, amplitude_ua=3000, ramp_up_pulses=60,
              train_duration_ns=200 * MS)
    b = train(**B_TRAIN)
    trains = [a, b, None, None]
    writer = pe.ramp_up_writer(trains, [0, 1], [0] * 4)
    hal, t_en = _start(bus, trains, writer, [0, 1])
    _run(bus, hal, writer, t_en + 3 * MS // 8)
    f0 = _first_pulse(bus, t_en)[1]

    def fall_of(k):
        return f0 + k * a.period_ticks

    # the poll that sees channel 1's end comes 20 µs after a pulse end of channel 0: its writes are
    # out, the next wait is in the SM, so the deferred shutdown waits for channel 0's next pulse end
    k, at = _end_b_inside_phase2(bus, hal, writer, fall_of, 3, -20)
    assert hal.dac_busy()
    b2 = train(**dict(B_TRAIN, amplitude_ua=2500))
    if then == "start":
        hal.start([a, b2, None, None], 0b10, [0] * 4)
        t1 = start_cycle(bus)
        assert t1 < fall_of(k + 1)  # before channel 0's next pulse end: the shutdown had not gone out
        _run(bus, hal, writer, t1 + 13 * MS // 8)
        for _ in range(20):
            _run(bus, hal, writer, bus.now + 400 * US)
            if not hal.running(1):
                break
        assert not hal.running(1)
        edges = bus.edges()
        b_pulses = [c for c, p, lv in edges if p == board.CH_NEG[1] and lv and c > t1]
        assert len(b_pulses) == 12
        cmds1 = [(rise, cmd) for rise, _f, ch, cmd, _s in decode(edges) if ch == 1 and at < rise]
        before = [cmd for rise, cmd in cmds1 if rise < b_pulses[0]]
        assert before == [dac_bus.command(False, b2.dac_a), dac_bus.command(True, b2.dac_b)], [hex(c) for c in before]
        during = [cmd for rise, cmd in cmds1 if b_pulses[0] <= rise < b_pulses[-1]]
        assert during == []  # no stale shutdown under channel 1's new train
    else:
        hal.measure_impedance(1)
        t_test = bus.now
        assert t_test < fall_of(k + 1)
        bus.run_us(3000)
        edges = bus.edges()
        test_high = [(r, f) for r, f in drive_high_intervals(edges, 1) if r > at]
        assert len(test_high) == 2  # the test pulse: cathodic, then anodic
        cmds1 = [(rise, cmd) for rise, _f, ch, cmd, _s in decode(edges) if ch == 1 and at < rise]
        code = pe.dac_code(impedance.TEST_CURRENT_UA)
        test = [dac_bus.command(False, code), dac_bus.command(True, code)]
        assert [cmd for rise, cmd in cmds1 if rise < test_high[0][0]] == test, [hex(c) for _r, c in cmds1]
        assert [cmd for rise, cmd in cmds1 if test_high[0][0] <= rise <= test_high[-1][1]] == []
        after = [cmd for rise, cmd in cmds1 if rise > test_high[-1][1]]
        assert sorted(after) == [dac_bus.shutdown_command(False), dac_bus.shutdown_command(True)]


def test_a_start_beside_a_group_ramp_finds_a_safe_point_at_a_batch_boundary(bus):
    """Channels 0 and 2 ramp together (one wait, then the writes of both: 5 words a pulse, several
    DMA batches). Right after the HAL hands the DAC DMA a new batch, the DAC SM sits in the wait of
    the previous batch's last group with that group's 4 writes filling its TX FIFO. A start of
    channel 1 then (its first codes go ahead of the queue: _dac_now halts the SM at a safe point) must
    find that wait as its safe point: with only the FIFO-deep tail of the previous batch kept, the
    HAL did not know the word the SM ran, found no safe point until the pulse ended (2 ms away) and
    refused the start's writes as unconfirmed (RuntimeError: the crash path)."""
    kw = dict(phase1_ns=60_000, phase2_ns=60_000, period_ns=LIM, amplitude_ua=3000, ramp_up_pulses=80,
              train_duration_ns=200 * MS)
    a, c = train(**kw), train(**dict(kw, amplitude_ua=2000))
    trains = [a, None, c, None]
    writer = pe.ramp_up_writer(trains, [0, 2], [0] * 4)
    assert writer.channels == [0, 2]
    hal, t_en = _start(bus, trains, writer, [0, 2])
    kicked = None
    batch = hal._dwords  # (a new list for every batch handed to the DMA)
    wait = dac_bus.wait_op(pe.phase2_pin(a, 0))
    while bus.now < t_en + 120 * MS // 8:
        _run(bus, hal, writer, bus.now + 400 * US)
        if hal._dwords is not batch:  # a new batch was handed to the DMA in this poll
            if bus.peek_sm(board.DAC_SM, 1)["pc"] in (wait, wait + 1):
                kicked = bus.now
                break
        batch = hal._dwords
    assert kicked is not None, "no batch boundary with the SM in a wait"
    b = train(**B_TRAIN)
    hal.start([a, b, c, None], 0b10, [0] * 4)  # raised RuntimeError with the FIFO-deep tail
    t1 = start_cycle(bus)
    assert t1 - kicked < 1 * MS // 8  # the halt found its safe point at once, not at the pulse end
    _run(bus, hal, writer, t1 + 4 * MS // 8)
    edges = bus.edges()
    d = decode(edges)
    assert all(isinstance(x[3], int) for x in d)
    b_first = [c1 for c1, p, lv in edges if p == board.CH_NEG[1] and lv and c1 > t1][0]
    before = [cmd for rise, _f, ch, cmd, _s in d if ch == 1 and rise < b_first]
    assert before[-2:] == [dac_bus.command(False, b.dac_a), dac_bus.command(True, b.dac_b)]
    for ch in (0, 2):  # no DAC write of a ramping channel inside one of its pulses
        high = drive_high_intervals(edges, ch)
        for rise, _f, ch2, _cmd, _s in d:
            if ch2 == ch:
                assert not any(lo <= rise <= hi for lo, hi in high)


@pytest.mark.parametrize("before_us", [90, 100])
def test_disarming_channel_1_leaves_a_varying_sequence_on_time(bus, before_us):
    """Channel 1 started together with the sequence but waiting for its trigger (never fired), then
    stopped (disarmed at once: hal.stop -> _shut, its DAC shutdown) ``before_us`` before a fall of
    channel 0's phase-2 pin: the same exposure as a train ending by itself (the DAC shutdown of a
    channel whose SM is halted). On ed87132 the stop disabled the DAC SM ~71 µs after the call for
    ~34 µs, so both offsets put the fall inside that halt (every later amplitude one pulse late)."""
    n = 30
    onsets = onsets_for(n)
    amps = [300 + 100 * (i % 9) for i in range(n)]
    a = seq_train(onsets, amps)
    b = train(**dict(B_TRAIN, trigger=1))
    trains = [a, b, None, None]
    writer = pe.sequence_writer(trains, [0, 1])
    hal, t_en = _start(bus, trains, writer, [0, 1], [0, 1, 0, 0])
    _run(bus, hal, writer, t_en + 3 * MS // 8)
    assert hal.waiting(1)
    neg0, pos0 = board.CH_NEG[0], board.CH_POS[0]
    r0, f0 = _first_pulse(bus, t_en)

    def fall_of(k):
        return t_en + 2 + pe.ns_to_ticks(onsets[k]) + (f0 - r0)

    k = 5
    _run(bus, hal, writer, fall_of(k) - before_us * US)
    at = bus.now
    hal.stop(0b10)
    assert not hal.running(1) and hal.pulses(1) == 0
    _run(bus, hal, writer, t_en + pe.ns_to_ticks(onsets[-1]) + 3 * MS // 8)
    assert not hal.running(0) and hal.pulses(0) == n
    bus.run_us(2000)
    edges = bus.edges()
    rises = [c for c, p, lv in edges if p == neg0 and lv and c >= t_en]
    falls = [c for c, p, lv in edges if p == pos0 and not lv and c >= t_en]
    assert falls[k] - 110 * US < at < falls[k] == fall_of(k)
    assert not [1 for c, p, lv in edges if p in (board.CH_POS[1], board.CH_NEG[1]) and lv]  # never fired
    off1 = _check_amplitudes(edges, t_en, rises, [pe.dac_code(x) for x in amps], falls, at)
    assert max(off1) < falls[k + 1 + 4]
    assert _dac_sm_disables(bus, t_en, falls[-1]) == []


@pytest.mark.parametrize("before_us", [55, 80])
def test_channel_1_ending_beside_a_10khz_ramp_never_writes_inside_a_pulse(bus, before_us):
    """A 10 kHz soft start (100 µs period, 27 µs pulses, 73 µs idle) on channel 0: the shutdown of
    channel 1 going in behind the DAC SM's FIFO must not leave the DAC DMA stopped while the SM needs
    a write bound to a wait: with pulse ends every 100 µs, a write held back that long lands inside
    a later pulse. Every write of channel 0 lands after a pulse end and before the next pulse, every
    pulse has its ramp code."""
    a = train(phase1_ns=10_000, phase2_ns=10_000, interphase_ns=5_000, period_ns=100_000, amplitude_ua=2000,
              ramp_up_pulses=400, train_duration_ns=50 * MS)
    b = train(**dict(B_TRAIN, period_ns=200_000, train_duration_ns=2 * MS))
    trains = [a, b, None, None]
    writer = pe.ramp_up_writer(trains, [0, 1], [0] * 4)
    hal, t_en = _start(bus, trains, writer, [0, 1])
    _run(bus, hal, writer, t_en + 1 * MS // 8, step_us=50)
    f0 = _first_pulse(bus, t_en)[1]

    def fall_of(k):
        return f0 + k * a.period_ticks

    k, at = _end_b_inside_phase2(bus, hal, writer, fall_of, 3, before_us, 50)
    _run(bus, hal, writer, at + 20 * MS // 8, step_us=50)
    hal.stop(1)
    for _ in range(100):
        _run(bus, hal, writer, bus.now + 200 * US, step_us=50)
        if not hal.running(0):
            break
    assert not hal.running(0)
    bus.run_us(500)
    edges = bus.edges()
    rises = [c for c, p, lv in edges if p == board.CH_NEG[0] and lv and c >= t_en]
    falls = [c for c, p, lv in edges if p == board.CH_POS[0] and not lv and c >= t_en]
    codes = [pe.pulse_codes(a, j)[1] for j in range(len(rises))]
    b_drive = [c for c, p, lv in edges if p in (board.CH_POS[1], board.CH_NEG[1])]
    off1 = _check_amplitudes(edges, t_en, rises, codes, falls, max(b_drive))
    assert at < min(off1)
