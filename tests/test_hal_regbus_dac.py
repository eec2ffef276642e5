"""The DAC bus on the register-level model (issue 13 item 1, board path): firmware/hal_rp2.py runs
firmware/pio/dac.pio on PIO1 SM0 of npm rp2040js (host/picostim/virtual/regbus.py), and the pad trace
of SCK / MOSI / CS0-3 is decoded here as an MCP4822 would read it (a command = the 16 MOSI bits sampled
at SCK rising edges while that DAC's CS is low, taken at the CS rising edge; LDAC is held low, so the
output changes at that edge). Nothing here is synthesised from the parameters it checks: the commands
come from the emulated pins only.
"""

from __future__ import annotations

import pytest
from test_hal_regbus import PIO0, T, US, bus, first_pin, pins_of, pulses_of, start_cycle, train  # noqa: F401

from firmware import board, dac_bus
from firmware import dma_chain as dc
from firmware import pulse_engine as pe
from picostim.virtual import regbus as rb

pytestmark = pytest.mark.skipif(rb.available() is not None, reason=str(rb.available()))

SCK, MOSI, LDAC = board.DAC_SCK_PIN, board.DAC_MOSI_PIN, board.DAC_LDAC_PIN
CS = board.CH_DAC_CS
PIO1 = rb.PIO_BASE[1]


def decode(edges):
    """[(cs_rise_cycle, cs_fall_cycle, channel, command, sck_rises)] from the pad trace (all edges since
    reset, pads start low). A CS low period without SCK (the CPU's SPI0 writes: rp2040js does not model
    SPI pads) decodes to nothing."""
    level = {}
    bits = {ch: None for ch in range(len(CS))}
    fall = {}
    rises = {ch: [] for ch in range(len(CS))}
    out = []
    for c, p, lv in sorted(edges, key=lambda e: e[0]):
        level[p] = lv
        if p == SCK and lv:
            for ch, cs in enumerate(CS):
                if not level.get(cs, 0) and bits[ch] is not None:
                    bits[ch].append(level.get(MOSI, 0))
                    rises[ch].append(c)
        elif p in CS:
            ch = CS.index(p)
            if lv:
                if bits[ch]:
                    cmd = 0
                    for b in bits[ch]:
                        cmd = cmd << 1 | b
                    out.append((c, fall[ch], ch, cmd if len(bits[ch]) == 16 else ("bits", len(bits[ch])), rises[ch]))
                bits[ch] = None
            else:
                bits[ch] = []
                rises[ch] = []
                fall[ch] = c
    return out


def cmds(decoded, ch=None):
    return [(d[2], d[3]) for d in decoded if ch is None or d[2] == ch]


def drive_high_intervals(edges, ch):
    """[(rise, fall)] of the channel's POS or NEG being high."""
    out = []
    for p in (board.CH_POS[ch], board.CH_NEG[ch]):
        rise = None
        for c, q, lv in sorted(edges):
            if q != p:
                continue
            if lv:
                rise = c
            elif rise is not None:
                out.append((rise, c))
                rise = None
        if rise is not None:
            out.append((rise, 1 << 62))
    return out


def phase2_pin(tr, ch):
    return board.CH_POS[ch] if tr.first == pe.NEG else board.CH_NEG[ch]


def falls(edges, pin):
    return [c for c, p, lv in edges if p == pin and lv == 0]


def wait_idle(bus, hal, limit_us=5000):
    end = bus.now + limit_us * US
    while hal.dac_busy():
        assert bus.now < end, "the DAC bus is still busy"
        bus.run_us(20)


def test_boot_hands_the_dac_pins_to_pio1_idle(bus):
    """After the constructor: LDAC low (SIO), SCK/MOSI/CS0-3 on PIO1 (FUNCSEL 7), CS pads pulled up
    and released (pad high), SCK low, the DAC SM enabled and stalled at `pull block`."""
    bus.load_hal()
    bus.run_us(50)
    for p in (SCK, MOSI) + tuple(CS):
        assert bus.read32(rb.IO_BANK0 + 4 + 8 * p) & 0x1F == rb.GPIO_FUNC_PIO1
    for p in CS:
        assert bus.read32(rb.PADS_BANK0 + 4 + 4 * p) & (rb.PADS_PUE | rb.PADS_PDE) == rb.PADS_PUE
    assert bus.read32(rb.IO_BANK0 + 4 + 8 * LDAC) & 0x1F == rb.GPIO_FUNC_SIO
    pads = bus.read32(rb.SIO_GPIO_IN)
    assert [pads >> p & 1 for p in CS] == [1, 1, 1, 1] and pads >> SCK & 1 == 0 and pads >> LDAC & 1 == 0
    assert bus.read32(PIO1 + rb.PIO_CTRL) & 1 == 1
    sm = bus.peek_sm(0, 1)
    assert sm["enabled"] and sm["waiting"] and sm["pc"] == 1  # `next`: pull block, FIFO empty


def test_start_writes_every_started_dac_before_the_state_machines_run(bus):
    hal = bus.load_hal()
    tr = [train(**T[0]), train(**T[1], amplitude_ua=2500), None, train(**T[3], amplitude_ua=700)]
    hal.start(tr, 0b1011, [0] * 4)
    bus.run_us(400)
    edges = bus.edges()
    d = decode(edges)
    want = []
    for ch in (0, 1, 3):
        want += [(ch, dac_bus.command(False, tr[ch].dac_a)), (ch, dac_bus.command(True, tr[ch].dac_b))]
    assert cmds(d) == want
    t_en = start_cycle(bus)
    assert max(x[0] for x in d) < t_en  # every CS rising edge (the outputs change) before the enable
    first_drive = min(c for c, p, lv in edges if lv and p in (board.CH_POS + board.CH_NEG))
    assert first_drive > t_en
    assert t_en - max(x[0] for x in d) >= dac_bus.SETTLE_TICKS  # the outputs settled before the enable
    # the wire format: SCK 12.5 MHz (10 cycles per bit); CS falls with the first data bit, 5 cycles
    # before the first rise (9 for a frame whose CS latch was still 0 from the reset)
    for rise, fall, _ch, _cmd, sck in d:
        assert [b - a for a, b in zip(sck, sck[1:])] == [10] * 15
        assert sck[0] - fall in (5, 4 + 5) and rise > sck[-1]
    assert not hal.dac_busy()


@pytest.mark.parametrize("ch", [0, 1])
def test_a_wait_op_holds_the_writes_until_the_phase_2_pin_falls(bus, ch):
    """[wait_op(phase-2 pin)] + update_ops queued at different points of the period: every write's CS
    rising edge comes the same number of cycles after a fall of that channel's phase-2 pin, inside the
    idle (no POS/NEG high from CS low to CS high), and the idle left before the next pulse covers the
    MCP4822's settling (dac_bus.UPDATE_TICKS). Channel 1 is anodic-first (phase-2 pin NEG)."""
    hal = bus.load_hal()
    tr = train(**T[ch])
    trains = [tr if c == ch else None for c in range(4)]
    hal.start(trains, 1 << ch, [0] * 4)
    p2 = phase2_pin(tr, ch)
    assert p2 == (board.CH_POS[ch] if ch == 0 else board.CH_NEG[ch])
    codes = [(600, 600), (900, 901), (1200, 1200)]
    for k, (a, b) in enumerate(codes):
        bus.run_us(310 + 53 * k)  # a different phase of the period each time
        hal.dac_play([dac_bus.wait_op(p2)] + dac_bus.update_ops(ch, a, b))
        wait_idle(bus, hal)
    bus.run_us(300)
    hal.stop(1 << ch)
    bus.run_us(600)
    edges = bus.edges()
    d = [x for x in decode(edges) if x[0] > start_cycle(bus)]
    updates = [x for x in d if x[3] not in (dac_bus.shutdown_command(False), dac_bus.shutdown_command(True))]
    want = []
    for a, b in codes:
        want += [(ch, dac_bus.command(False, a)), (ch, dac_bus.command(True, b))]
    assert cmds(updates) == want
    p2_falls = falls(edges, p2)
    starts = [r for r, _f in pulses_of(edges, ch, first_pin(tr, ch))]
    lat_a, lat_b = [], []
    for k in range(len(codes)):
        wa, wb = updates[2 * k], updates[2 * k + 1]
        f = max(c for c in p2_falls if c < wa[1])
        lat_a.append(wa[0] - f)
        lat_b.append(wb[0] - f)
        nxt = min(s for s in starts if s > f)
        assert nxt - f >= dac_bus.UPDATE_TICKS and wb[0] < nxt
    assert len(set(lat_a)) == 1 and len(set(lat_b)) == 1, (lat_a, lat_b)  # fixed by the PIO, not the CPU
    # from the program: the fall reaches the PIO through the pad and the 2-flop synchroniser (the
    # wait completes 3 cycles after the pad edge), then jmp next, pull, out pc, `out pindirs` selects
    # (+4 with its delay), 16 bits x 10 cycles, then `mov pins, !null` drives CS high: CS rises 171
    # cycles after the fall
    assert lat_a[0] == 3 + 4 + 4 + 16 * 10
    assert lat_b[0] - lat_a[0] == dac_bus.WRITE_TICKS
    assert lat_b[0] <= 2 + 4 + 2 * dac_bus.WRITE_TICKS  # dac_bus's timing model of the two writes
    for rise, fall, c, _cmd, _sck in d:
        for hi, lo in drive_high_intervals(edges, c):
            assert lo <= fall or hi >= rise, "a DAC write overlaps a pulse on channel %d" % c
    # the mark after each update is seen; dac_mark_pulses counts the pulses completed by then
    assert 0 < hal.dac_mark_pulses(ch) <= len(starts)


def test_writes_for_a_channel_waiting_for_its_trigger_do_not_block_a_stop(bus):
    """Ops that wait on a trigger-waiting channel's pin hold the bus; STOP of that channel drops them
    (its pins never move again) and the other channel's queued update still lands at its boundary."""
    hal = bus.load_hal()
    t0, t1 = train(**T[0]), train(**T[1], trigger=1)
    hal.start([t0, t1, None, None], 0b11, [0, 1, 0, 0])
    bus.run_us(300)
    hal.dac_play([dac_bus.wait_op(phase2_pin(t1, 1))] + dac_bus.update_ops(1, 1111, 1111))
    hal.dac_play([dac_bus.wait_op(phase2_pin(t0, 0))] + dac_bus.update_ops(0, 777, 777))
    bus.run_us(600)
    assert hal.dac_busy()  # held by channel 1's wait
    assert (0, dac_bus.command(False, 777)) not in cmds(decode(bus.edges()))
    hal.stop(0b10)
    wait_idle(bus, hal)
    bus.run_us(300)
    edges = bus.edges()
    got = cmds([x for x in decode(edges) if x[0] > start_cycle(bus)])
    assert (1, dac_bus.command(False, 1111)) not in got
    assert got[:2] == [(1, dac_bus.shutdown_command(False)), (1, dac_bus.shutdown_command(True))]
    assert (0, dac_bus.command(False, 777)) in got and (0, dac_bus.command(True, 777)) in got
    for rise, fall, c, _cmd, _sck in decode(edges):
        for hi, lo in drive_high_intervals(edges, c):
            assert lo <= fall or hi >= rise


def test_the_end_of_a_stream_shuts_its_dac_down_over_the_bus(bus):
    hal = bus.load_hal()
    tr = train(**T[0], train_duration_ns=1_000_000)
    hal.start([tr, None, None, None], 0b1, [0] * 4)
    end = bus.now + 5000 * US
    while hal.running(0):
        assert bus.now < end
        bus.run_us(50)
    edges = bus.edges()
    d = [x for x in decode(edges) if x[0] > start_cycle(bus)]
    assert cmds(d) == [(0, dac_bus.shutdown_command(False)), (0, dac_bus.shutdown_command(True))]
    last_fall = max(c for c, p, lv in edges if p in pins_of(0) and lv == 0)
    assert d[0][1] > last_fall


def test_safe_state_shuts_every_dac_down_by_the_cpu(bus):
    """The crash path with an update still waiting on the bus: the DAC SM is disabled and its DMA
    aborted, the pins go back to SPI0 / SIO (CS driven high), and the CPU writes the shutdown command
    to both outputs of all four DACs; later use hands the pins back to PIO1."""
    hal = bus.load_hal()
    tr = trains = [train(**T[0]), train(**T[2]), None, None]
    hal.start(trains, 0b11, [0] * 4)
    bus.run_us(350)
    hal.dac_play([dac_bus.wait_op(phase2_pin(tr[0], 0))] + dac_bus.update_ops(0, 321, 321))
    n_spi = len(bus.spi_log)
    assert hal.safe_state() is True
    shut = [bytes([c >> 8, c & 0xFF]) for c in (dac_bus.shutdown_command(False), dac_bus.shutdown_command(True))]
    assert bus.spi_log[n_spi:] == shut * board.CHANNELS
    assert bus.read32(PIO1 + rb.PIO_CTRL) & 1 == 0
    assert bus.read32(dc.dma_reg(hal._dac_dma.channel, dc.DMA_AL1_CTRL)) & (dc.CTRL_EN | dc.CTRL_BUSY) == 0
    for p in (SCK, MOSI):
        assert bus.read32(rb.IO_BANK0 + 4 + 8 * p) & 0x1F == rb.GPIO_FUNC_SPI
    pads = bus.read32(rb.SIO_GPIO_IN)
    for p in CS:
        assert bus.read32(rb.IO_BANK0 + 4 + 8 * p) & 0x1F == rb.GPIO_FUNC_SIO and pads >> p & 1
    assert pads >> LDAC & 1 == 0
    # the firmware serves again: the next start hands the pins back and writes over the bus
    n_edges = len(bus.edges())
    hal.start([train(**T[0], amplitude_ua=1500), None, None, None], 0b1, [0] * 4)
    bus.run_us(200)
    assert cmds(decode(bus.edges()[n_edges:])) == [(0, dac_bus.command(False, 600)), (0, dac_bus.command(True, 600))]


def test_impedance_test_current_goes_over_the_bus(bus):
    hal = bus.load_hal()
    bus.adc_value = 0x2000
    n = len(bus.edges())
    hal.measure_impedance(2)
    bus.run_us(50)
    code = pe.dac_code(100)
    edges = bus.edges()
    d = decode(edges[n:])
    assert cmds(d) == [(2, dac_bus.command(False, code)), (2, dac_bus.command(True, code)),
                       (2, dac_bus.shutdown_command(False)), (2, dac_bus.shutdown_command(True))]
    drive = [c for c, p, lv in edges[n:] if p in (board.CH_POS[2], board.CH_NEG[2])]
    assert d[1][0] < min(drive) and d[2][1] > max(drive)  # current set before, off after the pulse


def test_patch_pulls_an_undriven_pad_reads_its_pull():
    """PADS_BANK0 GPIOn.PUE / PDE (datasheet 2.19.4, "Pads": pull-up and pull-down resistors): a pad whose
    output is disabled and which nothing outside drives reads 1 through its pull-up, 0 through its
    pull-down. Stock rp2040js read the (absent) external level: 0, so a chip select released to its
    pull-up would read as selected."""
    from test_hal_regbus import rb_patches

    for patches, want in ((None, (1, 0, 1)), ([p for p in rb_patches() if p != "pulls"], (0, 0, 1))):
        with rb.RegBus(patches=patches) as b:
            for pin, pads in ((20, rb.PADS_IE | rb.PADS_PUE), (21, rb.PADS_IE | rb.PADS_PDE), (22, rb.PADS_IE)):
                b.write32(rb.PADS_BANK0 + 4 + 4 * pin, pads)
                b.write32(rb.IO_BANK0 + 4 + 8 * pin, rb.GPIO_FUNC_SIO)
            b.drive_input(22, 1)  # an external driver wins over the pulls
            b.run_us(1)
            v = b.read32(rb.SIO_GPIO_IN)
            assert (v >> 20 & 1, v >> 21 & 1, v >> 22 & 1) == want


def test_a_start_with_a_ramp_updates_after_exactly_the_pulse_each_step_belongs_to(bus):
    """start(first_ops, ramp_ops): the first pulse's codes before the enable, then one update per pulse
    queued before the stream starts, so update k follows the phase-2 end of pulse k exactly (the wait
    ops count the pulses; no CPU timing involved), each pair (A, B) before pulse k + 1 begins."""
    hal = bus.load_hal()
    tr = train(**T[0], amplitude_ua=2000)
    p2 = phase2_pin(tr, 0)
    steps = [(100, 100), (250, 250), (400, 400), (tr.dac_a, tr.dac_b)]
    first = dac_bus.update_ops(0, *steps[0])
    ramp = []
    for a, b in steps[1:]:
        ramp += [dac_bus.wait_op(p2)] + dac_bus.update_ops(0, a, b)
    hal.start([tr, None, None, None], 0b1, [0] * 4, first_ops=first, ramp_ops=ramp)
    bus.run_us(1200)  # 6 pulses at 5 kHz; the CPU does nothing meanwhile
    assert not hal.dac_busy()
    edges = bus.edges()
    d = decode(edges)
    t_en = start_cycle(bus)
    before = [x for x in d if x[0] < t_en]
    after = [x for x in d if x[0] > t_en]
    assert cmds(before)[-2:] == [(0, dac_bus.command(False, 100)), (0, dac_bus.command(True, 100))]
    want = []
    for a, b in steps[1:]:
        want += [(0, dac_bus.command(False, a)), (0, dac_bus.command(True, b))]
    assert cmds(after) == want
    p2_falls = [c for c in falls(edges, p2) if c > t_en]
    starts = [r for r, _f in pulses_of(edges, 0, first_pin(tr, 0))]
    for k in range(len(steps) - 1):
        wa, wb = after[2 * k], after[2 * k + 1]
        assert wa[0] - p2_falls[k] == 171  # after pulse k's phase 2 (pulse 0 had the first codes)
        assert wb[0] < starts[k + 1]


def test_replace_with_a_new_amplitude_writes_it_between_two_pulses(bus):
    hal = bus.load_hal()
    tr = train(**T[0])
    hal.start([tr, None, None, None], 0b1, [0] * 4)
    bus.run_us(300)
    new = train(**T[0], amplitude_ua=2000)
    hal.replace(0, new)
    for _ in range(30):  # the main loop's polls
        bus.run_us(50)
        hal.pulses(0)
    wait_idle(bus, hal)
    edges = bus.edges()
    d = [x for x in decode(edges) if x[0] > start_cycle(bus)]
    assert cmds(d) == [(0, dac_bus.command(False, new.dac_a)), (0, dac_bus.command(True, new.dac_b))]
    p2 = phase2_pin(new, 0)
    f = max(c for c in falls(edges, p2) if c < d[0][1])
    assert d[0][0] - f == 171
    for rise, fall, c, _cmd, _sck in d:
        for hi, lo in drive_high_intervals(edges, c):
            assert lo <= fall or hi >= rise


def test_more_marks_than_the_rx_fifo_holds_do_not_leave_the_bus_busy(bus):
    """Seven op lists queued, the last five handed to the DMA in one batch by a single poll and played
    while the CPU does not look: the 4-deep RX FIFO drops the fifth mark (`push noblock`), yet once
    everything has played dac_busy() is False (the HAL sees the SM idle with nothing queued) and every
    update was written, in order."""
    hal = bus.load_hal()
    tr = train(**T[0])
    hal.start([tr, None, None, None], 0b1, [0] * 4)
    p2 = phase2_pin(tr, 0)
    for k in range(7):
        hal.dac_play([dac_bus.wait_op(p2)] + dac_bus.update_ops(0, 300 + k, 300 + k))
    bus.run_us(500)  # lists 0 and 1 (the first two batches) play
    hal.running(0)  # one main-loop poll: reads their marks, hands lists 2..6 to the DMA
    bus.run_us(2500)  # 12 pulses, no HAL call: five marks pushed into a 4-deep RX FIFO
    assert bus.read32(rb.PIO_BASE[1] + 0x008) & 1  # FDEBUG.RXSTALL of SM0: a push found the FIFO full
    assert not hal.dac_busy()
    got = cmds([x for x in decode(bus.edges()) if x[0] > start_cycle(bus)])
    assert got == [(0, dac_bus.command(b, 300 + k)) for k in range(7) for b in (False, True)]
