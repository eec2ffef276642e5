"""Issue 10 items 1, 2 and 9 on the virtual Pico: the real controller on SimHal (the firmware's PIO
program executed cycle by cycle). A software TRIGGER never restarts a channel its external edge has
already started; STOP / deadman disarm a trigger-waiting channel at once; a stop at any phase of a
10 kHz train lets at most one queued pulse follow and never cuts one. A forced stop drives the pins
idle (a disabled SM holds them, on silicon and in the emulator).

Every check reads the pin edges the emulated PIO produced; nothing is derived from the parameters
under test except the expected widths."""

from __future__ import annotations

import pytest

from firmware import board, dac_bus, dma_chain, pulse_engine
from firmware import pio_programs as pio
from picostim.virtual.pio_emu import PioSystem
from picostim.virtual.sim_hal import SimHal
from protocol import messages as M
from protocol import params as P
from sim_bench import Bench

US = 125  # PIO cycles per µs
MS = 1_000_000  # ns



def pulses(hal, ch=0, first=None):
    """[(phase1 start, phase1 ticks, phase2 start, phase2 ticks)] from the emulated pins: every high
    interval of the first-phase pin followed by one of the second-phase pin."""
    neg, pos = board.CH_NEG[ch], board.CH_POS[ch]
    a_pin, b_pin = (neg, pos) if first in (None, pulse_engine.NEG) else (pos, neg)
    a, b = hal.system.edges(a_pin), hal.system.edges(b_pin)
    assert len(a) % 2 == 0 and len(b) % 2 == 0, "a drive pin was left high"
    ra = [(a[i], a[i + 1]) for i in range(0, len(a), 2)]
    rb = [(b[i], b[i + 1]) for i in range(0, len(b), 2)]
    assert len(ra) == len(rb), (ra, rb)
    out = []
    for (s1, e1), (s2, e2) in zip(ra, rb):
        assert e1 <= s2, "POS and NEG on together"
        out.append((s1, e1 - s1, s2, e2 - s2))
    return out


# ---- item 1: a software TRIGGER never restarts a channel its edge has started ---------------------
def test_trigger_after_the_external_edge_keeps_the_running_train():
    b = Bench()
    b.configure(trigger=P.TRIGGER_EXT1, period_ns=20 * MS, train_duration_ns=40 * MS)
    b.request(M.START, bytes([1]))
    b.run(0.01)
    assert b.ctl.state[0] == M.ST_ARMED
    edge = b.hal.drive_trigger(1, 1)
    b.hal.system.run_for(100 * US)  # the edge fired; the main loop has not polled yet
    b.request(M.TRIGGER, bytes([1]))  # acknowledged: the train it already runs is its train
    assert b.ctl.state[0] == M.ST_RUNNING
    b.run(0.1)
    got = pulses(b.hal)
    for s1, w1, s2, w2 in got:
        assert w1 == w2 == 200 * US  # 5aee4a5: 300 µs cathodic (NEG held through the restart)
    assert len(b.events(M.EV_TRIGGER_SEEN)) == 1
    assert len(got) == 2  # 40 ms at 50 Hz: the edge's train, not a second one
    assert edge < got[0][0] < edge + 10
    assert got[1][0] - got[0][0] == 20_000 * US
    done = b.events(M.EV_TRAIN_DONE)
    assert done and done[-1]["value"] == 2


def test_trigger_before_the_edge_disarms_and_starts_now():
    b = Bench()
    b.configure(trigger=P.TRIGGER_EXT1, period_ns=20 * MS, train_duration_ns=40 * MS)
    b.request(M.START, bytes([1]))
    b.run(0.01)
    t = b.hal.system.now
    b.request(M.TRIGGER, bytes([1]))
    b.hal.drive_trigger(1, 1)  # too late: the channel no longer waits on it
    b.run(0.1)
    got = pulses(b.hal)
    # now = after the DAC bus has shut the disarmed DAC down, written the start's codes and let
    # them settle (issue 13)
    assert len(got) == 2 and got[0][0] - t < 10 + 4 * dac_bus.WRITE_TICKS + dac_bus.SETTLE_TICKS
    assert all(w1 == w2 == 200 * US for _, w1, _, w2 in got)


# ---- item 2: STOP / deadman end an ARMED channel at once ---------------------------------------------
def test_stop_disarms_an_armed_channel_and_a_later_edge_delivers_nothing():
    b = Bench()
    b.configure(trigger=P.TRIGGER_EXT1, period_ns=20 * MS, train_duration_ns=40 * MS)
    b.request(M.START, bytes([1]))
    b.run(0.01)
    b.request(M.STOP, bytes([1]))
    b.hal.drive_trigger(1, 1)  # 5aee4a5: ring entry 0 was already in the FIFO -> one pulse
    b.run(0.1)
    for pin in (board.CH_POS[0], board.CH_NEG[0], board.CH_RECOVERY[0], board.SYNC_PIN):
        assert b.hal.system.edges(pin) == []
    assert b.ctl.state[0] == M.ST_IDLE
    assert b.events(M.EV_TRIGGER_SEEN) == []
    assert [e["value"] for e in b.events(M.EV_TRAIN_DONE)] == [0]


def test_deadman_disarms_an_armed_channel():
    b = Bench()
    b.configure(trigger=P.TRIGGER_EXT2, period_ns=20 * MS)
    b.request(M.LINK, (20).to_bytes(4, "little"))
    b.request(M.START, bytes([1]))
    b.run(0.05)  # host silent for 50 ms > 20 ms
    assert b.events(M.EV_DEADMAN)
    b.hal.drive_trigger(2, 1)
    b.run(0.05)
    assert b.hal.system.edges(board.CH_NEG[0]) == [] and b.hal.system.edges(board.CH_POS[0]) == []
    assert b.ctl.state[0] == M.ST_IDLE


def test_stop_after_the_edge_ends_at_a_pulse_boundary():
    b = Bench()
    b.configure(trigger=P.TRIGGER_EXT1, period_ns=1 * MS)
    b.request(M.START, bytes([1]))
    b.run(0.002)
    b.hal.drive_trigger(1, 1)
    b.hal.system.run_for(2_550 * US)  # inside pulse 2 (starts at 2000 µs + 2 ticks)
    b.request(M.STOP, bytes([1]))
    b.run(0.01)
    got = pulses(b.hal)
    assert 3 <= len(got) <= 4  # the pulse in progress and at most one queued pulse
    assert all(w1 == w2 == 200 * US for _, w1, _, w2 in got)


# ---- item 9 on the virtual Pico: stops at many phases of a 10 kHz train ----------------------------
@pytest.mark.parametrize("phase_us", [0, 3, 13, 21, 37, 50, 64, 77, 88, 99])
def test_stop_at_any_phase_of_a_10khz_train(phase_us):
    b = Bench()
    b.configure(period_ns=100_000, phase1_ns=20_000, phase2_ns=20_000)
    b.request(M.START, bytes([1]))
    b.hal.system.run_for((1000 + phase_us) * US)
    t_stop = b.hal.system.now
    b.request(M.STOP, bytes([1]))
    b.run(0.005)
    got = pulses(b.hal)
    assert all(w1 == w2 == 20 * US for _, w1, _, w2 in got)  # none cut, all balanced
    after = [p for p in got if p[0] >= t_stop]
    in_progress = [p for p in got if p[0] < t_stop <= p[2] + p[3]]
    assert len(after) <= 1 and len(in_progress) <= 1
    assert b.ctl.state[0] == M.ST_IDLE


# ---- forced stops: a disabled SM holds its pins; the HAL drives them idle -----------------------
def test_disabled_sm_holds_its_pins_and_mov_pins_null_releases_them():
    system = PioSystem(125_000_000)
    sm = system.add_state_machine(pio.OPCODES, pio.WRAP_TARGET, pio.WRAP, out_base=0, out_count=4,
                                  fifo_depth=8)
    system.set_pindirs(0xF, 0xF)
    system.dma(sm).load_words([pulse_engine.make_word(1000, pulse_engine.NEG), pulse_engine.make_word(1000, 0)])
    system.enable([sm], start_pc=pio.SEGMENT_ENTRY)
    system.run_for(100)
    assert system.pin_level(board.CH_NEG[0]) == 1
    system.disable([sm])
    system.run_for(10_000)
    assert system.pin_level(board.CH_NEG[0]) == 1  # held: what a bare sm.active(0) leaves on silicon
    system.exec_instruction(sm, dma_chain.MOV_PINS_NULL)
    assert system.pin_level(board.CH_NEG[0]) == 0


def test_sim_hal_start_refuses_a_running_channel():
    hal = SimHal(channels=1)
    train = pulse_engine.build_train(P.complete({"period_ns": 1 * MS}))
    hal.start([train], 1, [0])
    hal.system.run_for(1000 * US)
    with pytest.raises(ValueError):
        hal.start([train], 1, [0])
    assert pulses(hal)[0][1] == 200 * US  # the pulse in progress was not touched
