"""Custom sequences (issue 13 item 4) on the virtual Pico, driven through the HAL (SimHal: the
firmware's own stim and DAC bus PIO programs executed cycle by cycle, the DMA model playing the
Feeder's control ring in ring mode, pool entries read when they go into the FIFO).

The loop below does what the controller's poll does for a sequence (hal.running / hal.pulses, which
top up the ring, and the DAC op writer topped up like a ramp: firmware/controller.py _feed_ramp),
at the cadence the virtual Pico's main-loop model asks for (hal.next_poll_cycle).

Checked against the model (the onsets and amplitudes given here, not the firmware's view of them):
* every phase-1 rising edge is at train start + 2 + ns_to_ticks(absolute onset) exactly (+ k x cycle
  when looped), and there are exactly as many pulses as the sequence has;
* every pulse's phase-1 current (the emulated MCP4822's output, decoded from SCK/MOSI/CS) is the
  pulse's own amplitude after DAC rounding, phase 2 balanced per pulse;
* no DAC command lands inside a pulse of its channel (the analyzer's DAC checks agree: no failure);
* the stream ends after the last pulse (running() False) and the DAC queue drains.
"""

from __future__ import annotations

import random

import pytest
from seq_trains import sequence_train

from firmware import board, pulse_engine as pe
from firmware.limits import LIMITS
from picostim.capture.analyzer import analyze
from picostim.virtual.sim_hal import SimHal
from protocol import params as P

US = 1_000
MS = 1_000_000
S = 1_000_000_000
LIM = LIMITS["min_sequence_interval_ns"]  # the shortest interval a sequence may have (2 ms)


def make(ch_params, onsets_ns, amps_ua, cycle_ns=0, duration_ns=0):
    params = P.complete(dict(ch_params, sequence_pulses=len(onsets_ns), sequence_cycle_ns=cycle_ns,
                             train_duration_ns=duration_ns))
    return params, sequence_train(params, onsets_ns, amps_ua)


def play(hal, trains, channels, until_s, max_gap_s=0.25):
    """START through the HAL, then the controller's poll loop until ``until_s`` of virtual time or
    until every channel has ended."""
    writer = pe.sequence_writer(trains, channels)
    first = pe.start_ops(trains, channels)
    ramp = writer.chunk(writer.lookahead()) if writer is not None else ()
    mask = sum(1 << ch for ch in channels)
    hal.start(trains, mask, [0] * hal.channels, first, ramp)
    system = hal.system
    end = system.now + round(until_s * hal.clock_hz)
    gap = round(max_gap_s * hal.clock_hz)
    polls = 0
    while system.now < end:
        nxt = hal.next_poll_cycle()
        system.run_until(min(end, system.now + gap) if nxt is None else min(end, nxt, system.now + gap))
        polls += 1
        alive = [ch for ch in channels if hal.running(ch)]
        if writer is not None and not writer.done:
            lead = writer.channels[0]
            ahead = writer.lookahead()
            if writer.emitted - hal.pulses(lead) <= ahead // 2:
                ops = writer.chunk(ahead)
                if ops:
                    hal.dac_play(ops)
        hal.dac_busy()
        if not alive and not hal.dac_busy():
            break
    return polls


def phase1_pin(ch, train):
    return board.CH_NEG[ch] if train.first == pe.NEG else board.CH_POS[ch]


def check_channel(hal, ch, train, onsets_ticks, codes1):
    """Onsets exact to the tick, each pulse's DAC codes, no DAC command inside a pulse."""
    hal.dac.update()
    rises = hal.system.edges(phase1_pin(ch, train))[0::2]
    origin = hal.train_start[ch] + 2
    if train.shape == pe.TRIPHASIC:  # the main phase is phase 1; the pulse starts with the first flank
        lead = train.realised["flank"] + train.realised["interphase"]
    else:
        lead = 0
    assert [r - origin - lead for r in rises] == onsets_ticks
    out_b = train.first == pe.NEG
    got = []
    for r in rises:
        na1 = hal.dac.current_na(ch, out_b, r)
        na2 = hal.dac.current_na(ch, not out_b, r)
        got.append((na1, na2))
    want = []
    for c1 in codes1:
        a, b = pe._codes(train, c1)
        c_1, c_2 = (b, a) if out_b else (a, b)
        want.append((pe.code_to_na(c_1), pe.code_to_na(c_2)))
    assert got == want
    # pulse intervals: the first drive edge to the last drive fall of each pulse
    pins = (board.CH_POS[ch], board.CH_NEG[ch])
    ivs = []
    for p in pins:
        e = hal.system.edges(p)
        ivs += list(zip(e[0::2], e[1::2]))
    pulse = train.realised["pulse"]
    for rise, dac, _cmd in hal.dac.commands:
        if dac == ch:
            assert not any(a <= rise <= b for a, b in ivs), "DAC command at %d inside a pulse" % rise
            assert not any(o <= rise - origin < o + pulse for o in onsets_ticks), rise


def expected_codes(amps):
    return [pe.dac_code(a) for a in amps]


BASE = dict(phase1_ns=100 * US, phase2_ns=100 * US, period_ns=LIM, amplitude_ua=3000)


def test_varying_sequence_once_exact_onsets_and_amplitudes():
    rng = random.Random(13)
    n = 240
    onsets = [0]
    for i in range(n - 1):
        gap = rng.choice([LIM, LIM + rng.randrange(0, 2000), rng.randrange(LIM, 30 * MS)])
        if i == 150:
            gap = 2600 * MS + 9  # longer than one word (2.1 s): continuation entries
        onsets.append(onsets[-1] + gap)
    amps = [rng.choice([100, 500, 1000, 2500, 3000, 3000]) for _ in range(n)]
    params, train = make(BASE, onsets, amps)
    hal = SimHal(channels=1)
    play(hal, [train], [0], onsets[-1] / S + 0.05)
    assert not hal.running(0)
    assert hal.pulses(0) == n
    check_channel(hal, 0, train, [pe.ns_to_ticks(o) for o in onsets], expected_codes(amps))
    start = min(hal.start_called)
    report = analyze(hal.trace([0], start=start), 0, {"phase1_us": 100, "phase2_us": 100, "pulses": n})
    assert report.ok, report.failures
    assert report.amplitude_ua == [pe.code_to_na(pe.dac_code(a)) / 1000 for a in amps]


def test_looped_triphasic_constant_with_a_varying_channel():
    """Channel 0: varying amplitude, played once; channel 1: a triphasic constant-amplitude loop of 3
    cycles (anodic first) in the same START: only channel 0 has DAC ops after the start."""
    L = LIM  # intervals of the limit, the limit + 1 tick, and longer
    on0 = [0, L, 2 * L + 500 * US, 7 * L, 8 * L, 20 * L, 21 * L + 8, 40 * L]
    amp0 = [1000, 2000, 2000, 500, 3000, 100, 100, 2000]
    _, t0 = make(BASE, on0, amp0)
    p1 = dict(phase1_ns=200 * US, phase2_ns=200 * US, period_ns=2 * L, amplitude_ua=1500, shape=1, polarity=1)
    on1 = [3 * L, 5 * L, 9 * L + 16, 15 * L]
    amp1 = [1500] * 4
    cyc = 20 * L
    _, t1 = make(p1, on1, amp1, cycle_ns=cyc, duration_ns=3 * cyc)
    assert t1.sequence.repeats == 3
    hal = SimHal(channels=2)
    play(hal, [t0, t1], [0, 1], (3 * cyc + 5 * MS) / S)
    assert not hal.running(0) and not hal.running(1)
    check_channel(hal, 0, t0, [pe.ns_to_ticks(o) for o in on0], expected_codes(amp0))
    looped = [pe.ns_to_ticks(o) + k * pe.ns_to_ticks(cyc) for k in range(3) for o in on1]
    check_channel(hal, 1, t1, looped, expected_codes(amp1 * 3))
    assert hal.pulses(1) == 12
    assert not [c for c in hal.dac.commands if c[1] == 1 and c[0] > hal.train_start[1]]  # constant: no writes


def test_gap_over_40_s_and_the_feed_keeps_up_at_the_limit():
    """A 41 s gap between two runs at the shortest interval (min_sequence_interval_ns): the lookahead
    never runs dry (every pulse is there) and the virtual Pico polls at the sequence's feed cadence."""
    first = [i * LIM for i in range(300)]
    second = [41 * S + 7 + i * LIM for i in range(300)]
    onsets = first + second
    amps = [(i % 7 + 1) * 400 for i in range(600)]
    _, train = make(BASE, onsets, amps)
    hal = SimHal(channels=1)
    polls = play(hal, [train], [0], onsets[-1] / S + 0.1)
    assert hal.pulses(0) == 600 and not hal.running(0)
    check_channel(hal, 0, train, [pe.ns_to_ticks(o) for o in onsets], expected_codes(amps))
    assert polls < 41 / 0.02  # not a poll per ms during the gap


def test_two_varying_channels_are_refused():
    _, t0 = make(BASE, [0, LIM], [100, 200])
    _, t1 = make(BASE, [0, LIM + MS], [300, 200])
    with pytest.raises(pe.RampMismatch) as e:
        pe.sequence_writer([t0, t1], [0, 1])
    assert e.value.field == "sequence_pulses"
    _, c1 = make(BASE, [0, LIM + MS], [300, 300])
    assert pe.sequence_writer([t0, c1], [0, 1]).channels == [0]
    assert pe.sequence_writer([c1], [0]) is None


def test_stop_of_a_varying_sequence_drops_its_queued_dac_ops_and_shuts_the_dac_down():
    """STOP of a running varying-amplitude sequence on the virtual Pico (the controller on SimHal): the
    DAC ops already queued for later boundaries (up to a lookahead's worth) wait on pins that no longer
    move. They are dropped, as hal_rp2 drops them when a channel stops (dac_drop_channels, then the
    shutdown): after the last pulse at most the one group whose wait came (the next pulse's codes at the
    last pulse's end), then the channel's shutdown, and nothing after it. Before, the waits alone were
    skipped and the writes played back to back (216 commands here) with the DAC left on."""
    from sim_bench import Bench

    from firmware import dac_bus
    from protocol import messages as M

    n = 400
    b = Bench(channels=1)
    p = P.complete(dict(BASE, sequence_pulses=n))
    b.request(M.SET_PARAMS, M.encode_params(0, p))
    on = [i * LIM for i in range(n)]
    am = [300 + 100 * (i % 9) for i in range(n)]  # every boundary changes the codes
    for f in range(0, n, M.SEQUENCE_CHUNK):
        b.request(M.SET_SEQUENCE, M.encode_set_sequence(0, f, on[f:f + M.SEQUENCE_CHUNK], am[f:f + M.SEQUENCE_CHUNK]))
    b.request(M.START, b"\x01")
    b.run(20.5 * LIM / S)
    assert b.ctl._writer is not None and b.hal.dac_busy()  # later boundaries' ops are queued
    b.request(M.STOP, b"\x01")
    b.run(0.5)
    assert [e["kind"] for e in b.events()] == ["train_done"] and b.ctl.state[0] == M.ST_IDLE
    hal = b.hal
    hal.dac.update()
    neg, pos = hal.system.edges(board.CH_NEG[0]), hal.system.edges(board.CH_POS[0])
    assert 20 <= len(neg) // 2 <= 23  # stopped at the next boundary
    after = [cmd for at, dac, cmd in hal.dac.commands if dac == 0 and at > max(neg[-1], pos[-1])]
    shutdown = [0x2000, 0xA000]  # MCP4822 outputs A and B shut down (SHDN bit low, datasheet §5.2)
    assert len(after) <= 4 and sorted(after[-2:]) == shutdown, [hex(c) for c in after]
    assert all(c & dac_bus.CMD_ACTIVE for c in after[:-2])
    assert not hal.dac_busy()
