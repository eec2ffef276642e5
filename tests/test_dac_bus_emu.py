"""The virtual Pico runs the firmware's DAC bus program (firmware/pio/dac.pio, PIO1 SM0) cycle by cycle
beside the stimulation state machines (issue 13, dac_contract.md).

Everything here is checked on the emulated pins with a test-local SPI decoder (mode 0, MSB first,
MOSI read at each SCK rise inside a CS-low interval), never from the op words or Train fields that
produced them: the waveform must decode to exactly the MCP4822 commands asked for.
"""

from __future__ import annotations

import random

import adafruit_pioasm
import pytest

from firmware import board, dac_bus, pulse_engine
from firmware import pio_programs as pio
from picostim.virtual.pio_emu import PioSystem
from picostim.virtual.sim_hal import DAC_LINE_NAMES, SimHal
from protocol import params as P

CS = board.CH_DAC_CS
SCK, MOSI = board.DAC_SCK_PIN, board.DAC_MOSI_PIN
US = board.SYS_CLK_HZ // 1_000_000


# ---------------------------------------------------------------- a tiny decoder, local to the tests
def level(system, pin, cycle):
    """Effective level of ``pin`` after the edges at ``cycle``."""
    lv = (system._initial_eff >> pin) & 1
    for e in system._edges[pin]:
        if e > cycle:
            break
        lv ^= 1
    return lv


def frames(system, dac):
    """[(cs_fall, cs_rise, 16-bit command or None)] of DAC ``dac`` from the pins."""
    edges = system.edges(CS[dac])
    assert (system._initial_eff >> CS[dac]) & 1 == 1  # released at boot: pulled up
    sck = system.edges(SCK)
    out = []
    for fall, rise in zip(edges[0::2], edges[1::2]):
        bits = []
        for i, e in enumerate(sck):
            if fall < e < rise and i % 2 == 0:  # SCK starts low: even toggles are rises
                bits.append(level(system, MOSI, e))
        out.append((fall, rise, int("".join(map(str, bits)), 2) if len(bits) == 16 else None))
    return out


def commands(system):
    """Every decoded command in time order: [(cs_rise, dac, command)]."""
    return sorted((r, d, c) for d in range(len(CS)) for (_f, r, c) in frames(system, d))


def low_intervals(system, dac):
    e = system.edges(CS[dac])
    return list(zip(e[0::2], e[1::2]))


# ---------------------------------------------------------------- a bare PIO system with the DAC SM
GPIO_MASK = (1 << SCK) | (1 << MOSI) | sum(1 << p for p in CS)


def dac_system(accelerate=True):
    s = PioSystem(board.SYS_CLK_HZ, accelerate=accelerate)
    sm = s.add_state_machine(pio.DAC_OPCODES, pio.DAC_WRAP_TARGET, pio.DAC_WRAP, out_base=MOSI,
                             out_count=pio.DAC_OUT_COUNT, side_set_base=SCK, side_set_count=1,
                             side_set_opt=False, out_shift_right=True, pull_threshold=pio.DAC_PULL_THRESHOLD,
                             fifo_depth=4, rx_fifo_depth=4, gpio_mask=GPIO_MASK)
    cs_mask = sum(1 << p for p in CS)
    s.set_pull(cs_mask, cs_mask)
    s.set_outputs(GPIO_MASK | 1 << board.LED_PIN, 1 << board.LED_PIN)  # the LED (GP25) lit by the CPU
    s.set_pindirs(GPIO_MASK | 1 << board.LED_PIN, 1 << SCK | 1 << board.LED_PIN)
    s.enable([sm], start_pc=pio.DAC_NEXT_ENTRY)
    return s, sm


def test_writes_decode_to_exactly_the_mcp4822_commands_with_the_documented_timing():
    rng = random.Random(13)
    ops, want = [], []
    for _ in range(12):
        ch, b, code = rng.randrange(4), rng.randrange(2), rng.randrange(4096)
        cmd = dac_bus.command(b, code) if rng.random() < 0.8 else dac_bus.shutdown_command(b)
        ops.append(dac_bus.write_op(ch, cmd))
        want.append((ch, cmd))
    s, sm = dac_system()
    pushed = []
    sm.push_hook = lambda t, w: pushed.append(t)
    s.dma(sm).queue(ops + [dac_bus.MARK_OP])
    s.run_until(20_000)
    got = commands(s)
    assert [(d, c) for _r, d, c in got] == want
    # timing: pull at 0, out pc 1, the select at 2; CS falls with the first data bit at 6 (the first
    # write: already at 2, the latches still 0 from the reset); one write every WRITE_TICKS, CS driven
    # high at its end (8 cycles before the next frame's fall); SCK 10 cycles a bit
    falls = sorted(f for d in range(4) for f, _r in low_intervals(s, d))
    assert falls == [2] + [2 + 4 + k * dac_bus.WRITE_TICKS for k in range(1, 12)]
    ends = sorted(r for d in range(4) for _f, r in low_intervals(s, d))
    assert [f - r for r, f in zip(ends, falls[1:])] == [8] * 11
    rises = s.edges(SCK)[0::2]
    assert rises[:16] == [2 + 4 + 5 + 10 * k for k in range(16)]  # CS setup 4 cycles, MOSI 5 before SCK
    # a write: out pindirs [3], 16 x 10, mov pins !null (CS rise at +164), jmp next, pull, out pc: CS
    # low for 160 cycles (164 for the first frame, whose CS fell at its select)
    assert sorted(r - f for d in range(4) for f, r in low_intervals(s, d)) == [160] * 11 + [164]
    assert pushed == [2 + 12 * dac_bus.WRITE_TICKS]  # the mark: where a 13th write would select
    # MOSI and the last CS stay driven high; SCK idles low; GP23-26 (not PIO1's) untouched: the LED
    assert s.pin_level(MOSI) == 1 and s.pin_level(SCK) == 0
    assert s.edges(board.LED_PIN) == [] and s.pin_level(board.LED_PIN) == 1
    assert all(s.pin_level(p) == 1 for p in CS)


def test_no_two_chip_selects_low_at_once_and_each_frame_has_16_clocks():
    rng = random.Random(7)
    ops = [dac_bus.write_op(rng.randrange(4), dac_bus.command(rng.randrange(2), rng.randrange(4096)))
           for _ in range(40)]
    s, sm = dac_system()
    s.dma(sm).queue(ops)
    s.run_until(40 * dac_bus.WRITE_TICKS + 100)
    iv = sorted((f, r, d) for d in range(4) for f, r in low_intervals(s, d))
    assert len(iv) == 40
    for (f0, r0, _), (f1, _r1, _) in zip(iv, iv[1:]):
        assert r0 < f1  # released before the next DAC is selected
    assert all(c is not None for d in range(4) for _f, _r, c in frames(s, d))


def _toggler(s, pin, high_at, low_at):
    """Another SM (a different PIO's, as the stimulation SMs are) drives ``pin`` high at ``high_at``
    and low at ``low_at`` (= high_at + 34): `set pins` around two 32-iteration delay loops."""
    prog = adafruit_pioasm.assemble(
        ".program t\n set pins, 0\n set x, 31\nl1:\n jmp x-- l1\n set pins, 1\n set x, 31\n"
        "l2:\n jmp x-- l2\n set pins, 0\nend:\n jmp end\n")
    sm = s.add_state_machine(list(prog), 0, len(prog) - 1, set_base=pin, set_count=1, gpio_mask=1 << pin)
    s.set_pindirs(1 << pin, 1 << pin)
    assert low_at == high_at + 34
    s.enable([sm], start_pc=0, at_cycle=high_at - 34)
    return sm


def test_a_wait_op_holds_the_writes_until_the_pin_has_been_high_and_then_low():
    s, sm = dac_system()
    pin = board.CH_NEG[1]  # GP5, one of the program's wait pins
    s.run_until(100)
    _toggler(s, pin, 1_000, 1_034)
    s.dma(sm).queue([dac_bus.wait_op(pin)] + dac_bus.update_ops(1, 1234, 567) + [dac_bus.MARK_OP])
    s.run_until(1_000)
    assert low_intervals(s, 1) == []  # low pin: still waiting for it to go high
    s.run_until(1_034)
    assert s.pin_level(pin) == 1 and low_intervals(s, 1) == []  # high: waiting for the fall
    s.run_until(3_000)
    assert s.edges(pin) == [1_000, 1_034]
    f = frames(s, 1)
    assert [c for *_x, c in f] == [dac_bus.command(False, 1234), dac_bus.command(True, 567)]
    # fall at 1034, seen by `wait 0` at 1035, jmp next 1036, pull 1037, out pc 1038, CS low 1039
    assert f[0][0] == 1_034 + 5
    assert f[1][1] == 1_034 + 5 + dac_bus.WRITE_TICKS + 164  # second CS rise (mov pins, !null)
    # the update rule's budget covers it: the writes end within UPDATE_TICKS minus the settling
    assert f[1][1] - 1_034 <= dac_bus.UPDATE_TICKS - board.DAC_SETTLE_NS * US // 1000


def test_a_wait_op_already_high_waits_only_for_the_fall():
    s, sm = dac_system()
    pin = board.CH_POS[0]
    s.run_until(10)
    _toggler(s, pin, 100, 134)
    s.run_until(110)
    s.dma(sm).queue([dac_bus.wait_op(pin), dac_bus.write_op(0, dac_bus.command(False, 9))])
    s.run_until(2_000)
    assert frames(s, 0)[0][0] == 134 + 5


def _scenario(accelerate):
    """A train with a ramp-like op list (waits on its phase-2 pin), a live change and a stop."""
    hal = SimHal(channels=2, accelerate=accelerate)
    trains = [_train(2000, 200_000, phase1_ns=40_000, phase2_ns=40_000),
              _train(500, 333_000, polarity=1, phase1_ns=60_000, phase2_ns=60_000)]
    ramp = []
    for j, code in enumerate((100, 200, 300)):
        ramp += [dac_bus.wait_op(board.CH_POS[0])] + dac_bus.update_ops(0, code, code)
    hal.start(trains, 0b11, [0, 0], ramp_ops=ramp)
    hal.advance_cycles(2_000 * US)
    hal.dac_play([dac_bus.wait_op(board.CH_NEG[1])] + dac_bus.update_ops(1, 700, 700))
    hal.advance_cycles(3_000 * US)
    hal.stop(0b11)
    hal.advance_cycles(1_000 * US)
    return hal


def test_accelerated_and_cycle_by_cycle_emulation_give_identical_pins():
    a, b = _scenario(True), _scenario(False)
    pins = list(range(30))
    assert a.system.level_changes(pins) == b.system.level_changes(pins)
    assert a.system.now == b.system.now and len(commands(a.system)) == (2 + 3 * 2) + (2 + 2)


# ---------------------------------------------------------------- the HAL contract on the virtual Pico
def _train(amp_ua, period_ns, polarity=0, **kw):
    p = P.complete(dict(amplitude_ua=amp_ua, period_ns=period_ns, polarity=polarity, **kw))
    return pulse_engine.build_train(p)


def _pulses(hal, ch, train):
    """[(start, phase-2 end)] of every pulse from the pins."""
    first = board.CH_NEG[ch] if train.first == pulse_engine.NEG else board.CH_POS[ch]
    second = board.CH_POS[ch] if first == board.CH_NEG[ch] else board.CH_NEG[ch]
    r = hal.system.edges(first)[0::2]
    f = hal.system.edges(second)[1::2]
    return list(zip(r, f))


def test_start_writes_the_full_codes_before_the_state_machines_start_and_the_lines_are_in_the_trace():
    hal = SimHal(channels=2)
    t0, t1 = _train(1500, 1_000_000), _train(250, 500_000, polarity=1)
    hal.start([t0, t1], 0b11, [0, 0])
    assert not hal.dac_busy()
    cmds = commands(hal.system)
    assert [(d, c) for _r, d, c in cmds] == [
        (0, dac_bus.command(False, t0.dac_a)), (0, dac_bus.command(True, t0.dac_b)),
        (1, dac_bus.command(False, t1.dac_a)), (1, dac_bus.command(True, t1.dac_b))]
    assert cmds[-1][0] < hal.train_start[0] == hal.train_start[1]  # written before the enable
    hal.advance_cycles(3_000 * US)
    assert hal.trace().channels["CS0"].toggles.size == 0  # by default from the SM enable: after them
    tr = hal.trace(start=min(hal.start_called))  # armed before the start: the writes are in it
    for name in ("SCK", "MOSI", "CS0", "CS1", "CS2", "CS3", "LDAC", "POS", "NEG", "POS_1", "NEG_1"):
        assert name in tr.channels
    assert set(DAC_LINE_NAMES.values()) == {"SCK", "MOSI", "CS0", "CS1", "CS2", "CS3", "LDAC"}
    assert tr.channels["LDAC"].initial == 0 and tr.channels["LDAC"].toggles.size == 0  # held low
    assert len(tr.channels["CS0"].toggles) == 4 and tr.channels["CS0"].initial == 1
    # the electrode sees the current the bus wrote
    assert hal.dac.update() is None and hal.dac.current_na(0, True, hal.system.now) == \
        pulse_engine.code_to_na(t0.dac_b)


def test_start_plays_first_ops_instead_and_ramp_ops_follow_the_pulses():
    hal = SimHal(channels=1)
    tr = _train(2000, 500_000, recovery_ns=0)
    first = dac_bus.update_ops(0, 80, 80)
    codes = [160, 240, 320]
    ramp = []
    for c in codes:
        ramp += [dac_bus.wait_op(board.CH_POS[0])] + dac_bus.update_ops(0, c, c)
    hal.start([tr], 1, [0], first_ops=first, ramp_ops=ramp)
    assert hal.dac_busy()  # the ramp waits for pulses
    hal.advance_cycles(5_000 * US)
    assert not hal.dac_busy()
    assert hal.dac_mark_pulses(0) == 3  # the ramp's mark: after the third pulse's update
    pulses = _pulses(hal, 0, tr)
    cmds = commands(hal.system)
    assert [c & 0xFFF for _r, _d, c in cmds] == [80, 80] + [c for c in codes for _ in (0, 1)]
    # every update lies between the end of pulse k's phase 2 and the start of pulse k + 1
    for k in range(3):
        r_a, r_b = cmds[2 + 2 * k][0], cmds[3 + 2 * k][0]
        assert pulses[k][1] < r_a < r_b < pulses[k + 1][0]
    # per pulse current (the electrode's source), from the bus: 80, 160, 240, 320, 320...
    hal.dac.update()
    got = [hal.dac.current_na(0, True, s) for s, _e in pulses[:6]]
    assert got == [pulse_engine.code_to_na(c) for c in (80, 160, 240, 320, 320, 320)]


def test_dac_play_while_running_lands_after_the_next_pulse_and_mark_pulses_is_exact():
    hal = SimHal(channels=1)
    tr = _train(1000, 1_000_000)
    hal.start([tr], 1, [0])
    for when_us in (100, 250, 700):  # inside phase 1, inside phase 2 (NEG-first: POS), in the idle
        hal.advance_cycles(1_000 * US - (hal.system.now - hal.train_start[0]) % (1_000 * US) + when_us * US)
        k0 = hal.pulses_ended(0)
        hal.dac_play([dac_bus.wait_op(board.CH_POS[0])] + dac_bus.update_ops(0, 111 + when_us, 111 + when_us))
        hal.advance_cycles(2_000 * US)
        assert not hal.dac_busy()
        pulses = _pulses(hal, 0, tr)
        rise = commands(hal.system)[-1][0]
        k = hal.dac_mark_pulses(0)
        assert pulses[k - 1][1] < rise < pulses[k][0]
        assert k == k0 + 1  # the pulse in progress (phase 1 or 2) or, from the idle, the next one


def test_replace_with_a_new_amplitude_switches_at_the_same_pulse_as_the_new_timing():
    hal = SimHal(channels=1)
    old, new = _train(1000, 1_000_000), _train(3000, 700_000)
    hal.start([old], 1, [0])
    hal.advance_cycles(4_300 * US)
    hal.replace(0, new)
    assert hal.dac_busy()
    hal.advance_cycles(6_000 * US)
    assert not hal.dac_busy()
    pulses = _pulses(hal, 0, old)
    starts = [s for s, _e in pulses]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    k_timing = next(i for i, g in enumerate(gaps) if g != 1_000 * US)  # first group of `new`
    hal.dac.update()
    amps = [hal.dac.current_na(0, True, s) for s in starts]
    k_amp = amps.index(pulse_engine.code_to_na(new.dac_b))
    assert k_amp == k_timing == hal.dac_mark_pulses(0)
    assert set(amps[:k_amp]) == {pulse_engine.code_to_na(old.dac_b)}
    assert set(amps[k_amp:]) == {pulse_engine.code_to_na(new.dac_b)}
    # never inside a pulse: every CS rise is outside every [start, phase-2 end]
    for r, _d, _c in commands(hal.system):
        assert not any(s <= r <= e for s, e in pulses)


def test_replace_with_the_same_codes_writes_nothing():
    hal = SimHal(channels=1)
    hal.start([_train(1000, 1_000_000)], 1, [0])
    hal.advance_cycles(2_500 * US)
    hal.replace(0, _train(1000, 800_000))
    assert not hal.dac_busy()
    hal.advance_cycles(3_000 * US)
    assert len(commands(hal.system)) == 2


def test_safe_state_drops_pending_waits_and_shuts_every_dac_down_through_the_bus():
    hal = SimHal(channels=2)
    tr = _train(1000, 1_000_000)
    ramp = [dac_bus.wait_op(board.CH_POS[0])] + dac_bus.update_ops(0, 5, 5)
    ramp = ramp * 50  # far more than will play
    hal.start([tr, tr], 0b11, [0, 0], ramp_ops=ramp)
    hal.advance_cycles(2_300 * US)
    assert hal.dac_busy()
    assert hal.safe_state() is True
    assert not hal.dac_busy()
    last = {}
    for _r, d, c in commands(hal.system):
        last.setdefault(d, []).append(c)
    for d in range(board.CHANNELS):
        assert last[d][-2:] == [dac_bus.shutdown_command(False), dac_bus.shutdown_command(True)]
    hal.dac.update()
    assert hal.dac.current_na(0, False, hal.system.now) == 0 == hal.dac.current_na(1, True, hal.system.now)
    # nothing stalls: the bus is idle again and a new start writes at once
    n = len(commands(hal.system))
    hal.start([tr, tr], 0b01, [0, 0])
    assert len(commands(hal.system)) == n + 2


def test_disarm_of_a_waiting_channel_shuts_its_dac_down():
    hal = SimHal(channels=1)
    tr = _train(1000, 1_000_000, trigger=1)
    hal.start([tr], 1, [1])
    assert hal.disarm(1) == 0
    hal.advance_cycles(100 * US)
    assert [c for _r, _d, c in commands(hal.system)][-2:] == [dac_bus.shutdown_command(False),
                                                             dac_bus.shutdown_command(True)]


def test_electrode_current_comes_from_the_bus_not_from_the_train():
    """A DAC shut down behind the Train's back: the electrode reading drops to ~0 although the
    train's amplitude says 2 mA; back on, it follows the code written, not the train."""
    hal = SimHal(channels=1)
    tr = _train(2000, 2_000_000, phase1_ns=200_000)
    hal.start([tr], 1, [0])
    hal.advance_cycles(5_000 * US)
    full = [code for _t, code in hal.phase1_samples(0)]
    hal.dac_play([dac_bus.wait_op(board.CH_POS[0])] + dac_bus.shutdown_ops(0))
    hal.advance_cycles(6_000 * US)
    off = [code for _t, code in hal.phase1_samples(0)]
    hal.dac_play([dac_bus.wait_op(board.CH_POS[0])] + dac_bus.update_ops(0, tr.dac_a // 2, tr.dac_b // 2))
    hal.advance_cycles(6_000 * US)
    half = [code for _t, code in hal.phase1_samples(0)]
    assert full and min(full) > 50
    assert off[-1] <= 1 < min(full)
    assert abs(half[-1] * 2 - full[-1]) <= 2


def test_the_idle_dac_program_costs_nothing_on_long_trains():
    hal = SimHal(channels=1)
    hal.start([_train(1000, 1_000_000_000)], 1, [0])  # 1 Hz
    before = hal.dac_sm.instructions
    hal.advance_cycles(600 * board.SYS_CLK_HZ)  # 10 minutes
    assert hal.dac_sm.instructions == before  # stalled on its pull the whole time: never stepped
    assert hal.pulses_ended(0) == 600


@pytest.mark.parametrize("accelerate", [True, False])
def test_the_mark_is_pushed_into_an_rx_fifo_the_hal_reads(accelerate):
    s, sm = dac_system(accelerate)
    s.dma(sm).queue([dac_bus.MARK_OP] * 6)  # no reader: 4 fit, `push noblock` drops the rest
    s.run_until(100)
    assert len(sm.rx) == 4 and sm.get() == 0
    assert sm.pc == pio.DAC_NEXT_ENTRY and sm.stalled


def test_waits_on_a_channel_whose_stream_ended_are_skipped_and_block_nobody():
    """A ramp longer than its train: the waits left over would never end and would hold every later
    op (another channel's live change, the next start) for good. Once the stream has ended the HAL
    drops those groups (each wait with its writes; the marks stay) and shuts the channel's DAC down,
    as hal_rp2._dac_channel_off does on the board; channel 1's change then plays."""
    hal = SimHal(channels=2)
    short = _train(1000, 1_000_000, train_duration_ns=3_000_000)  # 3 pulses
    other = _train(1000, 1_000_000)
    ramp = []
    for c in range(10, 110, 10):  # 10 steps
        ramp += [dac_bus.wait_op(board.CH_POS[0])] + dac_bus.update_ops(0, c, c)
    hal.start([short, other], 0b11, [0, 0], ramp_ops=ramp)
    hal.advance_cycles(5_000 * US)
    assert not hal.running(0) and hal.running(1)
    n_before = len(commands(hal.system))
    assert n_before == 4 + 2 * 3  # start codes of both, then the 3 ramp steps the pulses released
    hal.dac_play([dac_bus.wait_op(board.CH_POS[1])] + dac_bus.update_ops(1, 7, 7))  # its phase 2
    hal.advance_cycles(2_000 * US)
    assert not hal.dac_busy()
    cmds = commands(hal.system)
    # the 7 leftover ramp groups of channel 0 dropped, its outputs A and B shut down (MCP4822 SHDN low),
    # then channel 1's change
    assert [(d, c & 0xFFF, bool(c & dac_bus.CMD_ACTIVE)) for _r, d, c in cmds[n_before:]] == \
        [(0, 0, False), (0, 0, False), (1, 7, True), (1, 7, True)]
    p1 = _pulses(hal, 1, other)
    r = cmds[-1][0]
    assert any(e < r for _s, e in p1) and not any(s <= r <= e for s, e in p1)
    n = len(cmds)
    hal.start([short, other], 0b01, [0, 0])  # a new start is not held up either
    assert len(commands(hal.system)) == n + 2


@pytest.mark.parametrize("phase", range(0, 1_000, 37))
def test_replace_at_any_point_of_the_period_switches_timing_and_amplitude_together(phase):
    """The DMA may be inside a group or exactly at a group boundary (FIFO full) when replace() comes:
    either way the new codes apply from the first pulse of the new program, never inside a pulse."""
    hal = SimHal(channels=1)
    old, new = _train(1000, 1_000_000, recovery_ns=100_000), _train(2500, 600_000, recovery_ns=100_000)
    hal.start([old], 1, [0])
    hal.advance_cycles(3_000 * US + phase * US)
    hal.replace(0, new)
    hal.advance_cycles(4_000 * US)
    assert not hal.dac_busy()
    pulses = _pulses(hal, 0, old)
    starts = [s for s, _e in pulses]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    k_timing = next(i for i, g in enumerate(gaps) if g != 1_000 * US)
    hal.dac.update()
    amps = [hal.dac.current_na(0, True, s) for s in starts]
    assert amps == [pulse_engine.code_to_na(old.dac_b)] * k_timing + \
        [pulse_engine.code_to_na(new.dac_b)] * (len(starts) - k_timing)
    assert hal.dac_mark_pulses(0) == k_timing
    for r, _d, _c in commands(hal.system):
        assert not any(s <= r <= e for s, e in pulses)


@pytest.mark.parametrize("ext", ["vcd", "sr"])
def test_the_dac_lines_survive_vcd_and_sr_and_decode_to_the_emulated_commands(tmp_path, ext):
    """The virtual Pico's capture file (VCD and sigrok .sr alike) holds SCK/MOSI/CS0-3/LDAC beside the
    stimulation lines; read back, the analyzer's bus decoder finds the commands the pins carried."""
    from picostim.capture import read_capture, write_capture
    from picostim.capture import dac as capdac

    hal = SimHal(channels=2)
    ramp = [dac_bus.wait_op(board.CH_POS[0])] + dac_bus.update_ops(0, 300, 300)
    hal.start([_train(1000, 500_000), _train(700, 700_000)], 0b11, [0, 0], ramp_ops=ramp)
    hal.advance_cycles(2_000 * US)
    t0 = min(hal.start_called)
    tr = hal.trace(start=t0)
    path = tmp_path / ("cap." + ext)
    write_capture(tr, path)
    back = read_capture(path)
    for name in ("SCK", "MOSI", "CS0", "CS1", "CS2", "CS3", "LDAC", "POS", "NEG", "POS_1", "NEG_1"):
        assert back.channels[name].initial == tr.channels[name].initial, name
        assert list(back.channels[name].toggles) == list(tr.channels[name].toggles), name
    bus = capdac.decode_bus(back)
    assert not bus.missing and bus.ldac
    want = commands(hal.system)
    got = sorted((t + t0, ch, w) for ch in range(4) for t, w in bus.commands(ch))
    assert got == want and len(want) == 6


@pytest.mark.parametrize("phase", range(0, 1_000, 131))
def test_replace_of_a_triphasic_train_never_writes_between_its_flanks(phase):
    """A triphasic pulse's flank pin is high twice: a replace() with new codes must not land between
    the two flanks wherever in the period it comes (both HALs now queue boundary_wait_ops)."""
    hal = SimHal(channels=1)
    old = _train(1000, 1_000_000, phase1_ns=200_000, phase2_ns=200_000, interphase_ns=50_000, shape=1)
    new = _train(2500, 1_000_000, phase1_ns=200_000, phase2_ns=200_000, interphase_ns=50_000, shape=1)
    hal.start([old], 1, [0])
    hal.advance_cycles(3_000 * US + phase * US)
    hal.replace(0, new)
    hal.advance_cycles(4_000 * US)
    assert not hal.dac_busy()
    flank = board.CH_POS[0]  # cathodic main phase on NEG, flanks on POS
    e = hal.system.edges(flank)
    pulses = list(zip(e[0::4], e[3::4]))  # first flank's rise .. second flank's fall
    assert len(pulses) >= 6
    cmds = commands(hal.system)
    assert [c & 0xFFF for _r, _d, c in cmds[-2:]] == [new.dac_a, new.dac_b]
    for r, _d, _c in cmds:
        assert not any(s <= r <= f for s, f in pulses)
