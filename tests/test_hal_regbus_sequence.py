"""Custom sequences (issue 13 item 4) on the register-level model of the board: firmware/hal_rp2.py,
dma_chain.Feeder and seq_stream.SequencePlan unmodified on CPython, mem32 on npm rp2040js's bus
(host/picostim/virtual/regbus.py). The DMA reads the control ring and the pool from emulated SRAM;
the pool is rewritten just in time by the Feeder while the DMA runs (more pulses than pool entries),
each store a bus write at its modelled CPU cost.

Checked: the pin edges equal sim_hal's for the same sequence (a third, independent model of the DMA
and PIO), every phase-1 rise is at the SM enable + 2 + ns_to_ticks(onset), and the DAC commands
decoded from the emulated SCK/MOSI/CS pads give every pulse its own amplitude, each written after
the previous pulse's phase 2 fell and before the pulse starts.
"""

from __future__ import annotations

import pytest
from test_hal_regbus import US, bus, pins_of, start_cycle  # noqa: F401
from test_hal_regbus_dac import decode
from seq_trains import sequence_train

from firmware import board, dac_bus
from firmware import pulse_engine as pe
from firmware.limits import LIMITS
from picostim.virtual import regbus as rb
from picostim.virtual.sim_hal import SimHal
from protocol import params as P

pytestmark = pytest.mark.skipif(rb.available() is not None, reason=str(rb.available()))

MS = 1_000_000
LIM = LIMITS["min_sequence_interval_ns"]  # the shortest interval a sequence may have (2 ms)


def seq_train(onsets, amps, cycle_ns=0, duration_ns=0, **kw):
    params = P.complete(dict(dict(phase1_ns=60_000, phase2_ns=60_000, period_ns=LIM, amplitude_ua=3000), **kw,
                             sequence_pulses=len(onsets), sequence_cycle_ns=cycle_ns, train_duration_ns=duration_ns))
    return sequence_train(params, onsets, amps)


def onsets_for(n):
    out = [40_000]  # 40 µs: merged in front of pulse 0
    for i in range(n - 1):
        out.append(out[-1] + (LIM if i % 5 else LIM + 136 + 8 * (i % 11)))
    return out


def sim_run(trains, mask, cycles):
    sim = SimHal(channels=board.CHANNELS)
    ch = 0
    writer = pe.sequence_writer(trains, [ch])
    sim.start(trains, mask, [0] * board.CHANNELS, pe.start_ops(trains, [ch]), writer.chunk(writer.lookahead()))
    t0 = sim.train_start[ch]
    end = t0 + cycles
    while sim.system.now < end:
        sim.system.run_until(min(end, sim.system.now + 500 * US))
        sim.running(ch)
        if not writer.done and writer.emitted - sim.pulses(ch) <= writer.lookahead() // 2:
            sim.dac_play(writer.chunk(writer.lookahead()))
    pins = pins_of(ch)
    return [(c - t0, p, lv) for c, p, lv in sim.system.level_changes(pins) if c >= t0], sim


def start_varying(bus, n):
    """A varying-amplitude sequence of ``n`` pulses started on channel 0 of the board HAL, its DAC
    writer's first chunk queued as the controller does: (onsets, amplitudes, trains, hal, writer, enable cycle)."""
    onsets = onsets_for(n)
    amps = [300 + 100 * (i % 9) for i in range(n)]
    t = seq_train(onsets, amps)
    trains = [t, None, None, None]
    hal = bus.load_hal()
    writer = pe.sequence_writer(trains, [0])
    hal.start(trains, 1, [0] * 4, pe.start_ops(trains, [0]), writer.chunk(writer.lookahead()))
    t_en = start_cycle(bus)
    return onsets, amps, trains, hal, writer, t_en


def test_sequence_edges_equal_sim_hal_and_onsets_exact(bus):
    n = 400  # > POOL_BLOCKS: pool entries are rewritten while the DMA runs
    onsets, amps, trains, hal, writer, t_en = start_varying(bus, n)
    polls = 0
    longest = 0
    end = t_en + (onsets[-1] // 8) + 2 * MS // 8
    while bus.now < end:
        bus.run_us(400)  # the main loop: a few hundred µs between polls
        hal.running(0)
        polls += 1
        if not writer.done and writer.emitted - hal.pulses(0) <= writer.lookahead() // 2:
            hal.dac_play(writer.chunk(writer.lookahead()))
        longest = max(longest, len(hal._dq))
    # the DAC queue's list drops what the DMA took: bounded by about two top-ups, not the sequence
    assert longest <= 2 * writer.per * writer.lookahead() + 256
    assert not hal.running(0)
    assert hal.pulses(0) == n
    edges = bus.edges()
    mine = [(c - t_en, p, lv) for c, p, lv in edges if p in pins_of(0) and c >= t_en]
    sim_edges, _sim = sim_run(trains, 1, end - t_en)
    assert mine == sim_edges
    neg = board.CH_NEG[0]
    rises = [c for c, p, lv in mine if p == neg and lv]
    assert [r - 2 for r in rises] == [pe.ns_to_ticks(o) for o in onsets]
    # the DAC: pulse 0's codes before the enable, then each change after the previous pulse's end
    d = [x for x in decode(edges) if x[2] == 0]
    pos = board.CH_POS[0]
    p2_falls = [c for c, p, lv in edges if p == pos and not lv]
    abs_rises = [r + t_en for r in rises]
    b_out = {}
    for rise, _fall, _ch, cmd, _sck in d:
        assert isinstance(cmd, int)
        b_out.setdefault(cmd & dac_bus.CMD_B, []).append((rise, cmd & dac_bus.CODE_MASK))
    for j, r in enumerate(abs_rises):  # cathodic first: phase 1 on NEG draws on DAC B
        code = [c for at, c in b_out[dac_bus.CMD_B] if at < r][-1]
        assert code == pe.dac_code(amps[j]), j
    shutdowns = [x for x in d if not x[3] & dac_bus.CMD_ACTIVE]
    assert len(shutdowns) == 2 and min(x[0] for x in shutdowns) > p2_falls[-1]  # the end: DAC off
    for rise, _f, _c, cmd, _s in d:
        if rise > t_en and cmd & dac_bus.CMD_ACTIVE:
            k = max(i for i, f in enumerate(p2_falls) if f < rise)  # after pulse k's end
            assert k + 1 >= len(abs_rises) or rise + dac_bus.SETTLE_TICKS <= abs_rises[k + 1]
            assert rise - p2_falls[k] < dac_bus.UPDATE_TICKS


def _phase1_kept(bus, hal, first_pin, polls, step_us, ch=0):
    """Poll phase1_samples like the main loop; every kept reading's conversion lies in a phase 1."""
    from firmware import impedance

    kept = []
    for _ in range(polls):
        n = len(bus.adc_reads)
        got = hal.phase1_samples(ch, 0)
        if got:
            assert len(bus.adc_reads) > n
            kept.append(bus.adc_reads[-1])
        bus.run_us(step_us)
    conv = pe.ns_to_ticks(impedance.ADC_CONVERSION_NS)
    edges = sorted(e for e in bus.edges() if e[1] == first_pin)
    phases = [(a[0], b[0]) for a, b in zip(edges[0::2], edges[1::2])]
    for c in kept:
        assert any(r <= c - conv and c <= f for r, f in phases), "reading at cycle %d outside phase 1" % c
    return kept, phases


def test_sequence_phase1_readings_follow_the_onsets(bus):
    """The board's monitoring schedule comes from the sequence's own reader: irregular onsets (not a
    multiple of the period) are read in phase 1, and most pulses get a reading."""
    onsets = [0]
    for i in range(39):
        onsets.append(onsets[-1] + LIM + (i % 4) * 700_000 + 8 * i)
    t = seq_train(onsets, [1000] * 40, phase1_ns=100_000, phase2_ns=100_000)
    hal = bus.load_hal()
    hal.start([t, None, None, None], 1, [0] * 4)
    kept, phases = _phase1_kept(bus, hal, board.CH_NEG[0], 300, 150)
    assert len(phases) == 40
    assert len(kept) >= 20, "only %d of 40 pulses read" % len(kept)


def test_triphasic_train_phase1_readings(bus):
    """A triphasic train (software start): the schedule points at the main phase (after the first
    flank and gap), so readings are kept (before, the schedule pointed at the flank and every reading
    was dropped by the pin check)."""
    t = pe.build_train(P.complete(dict(phase1_ns=100_000, phase2_ns=100_000, interphase_ns=20_000, shape=1,
                                       period_ns=1 * MS)))
    hal = bus.load_hal()
    hal.start([t, None, None, None], 1, [0] * 4)
    kept, phases = _phase1_kept(bus, hal, board.CH_NEG[0], 60, 97)
    assert len(kept) >= 2, "no phase-1 reading kept in %d triphasic pulses" % len(phases)


def test_stop_of_a_varying_sequence_drops_its_queued_dac_ops(bus):
    """hal_rp2 after stop() of a varying sequence with a lookahead of DAC ops queued: when the stream
    has ended (_dac_channel_off) the groups waiting on the channel's pins are dropped and its DAC is
    shut down: after the last pulse at most the one group whose wait came, then the two shutdown
    commands, nothing else (the virtual Pico does the same: test_sequence_dac)."""
    n = 400
    onsets, amps, trains, hal, writer, t_en = start_varying(bus, n)
    while bus.now < t_en + 20 * LIM // 8:
        bus.run_us(400)
        hal.running(0)
        if not writer.done and writer.emitted - hal.pulses(0) <= writer.lookahead() // 2:
            hal.dac_play(writer.chunk(writer.lookahead()))
    assert hal.dac_busy()
    hal.stop(1)
    for _ in range(200):
        bus.run_us(400)
        if not hal.running(0):
            break
    assert not hal.running(0)
    bus.run_us(2000)
    edges = bus.edges()
    drive = [c for c, p, lv in edges if p in pins_of(0) and c >= t_en]
    rises = [c for c, p, lv in edges if p == board.CH_NEG[0] and lv and c >= t_en]
    assert 20 <= len(rises) <= 23  # stopped at the next boundary
    after = [cmd for rise, _f, ch, cmd, _s in decode(edges) if ch == 0 and rise > drive[-1]]
    assert len(after) <= 4 and sorted(after[-2:]) == [0x2000, 0xA000], [hex(c) for c in after]
    assert all(c & dac_bus.CMD_ACTIVE for c in after[:-2])
