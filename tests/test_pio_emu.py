"""Unit tests of picostim's PIO emulator: opcode semantics against hand-worked cycle counts, the
DMA/FIFO model, several SMs on one clock, trigger waits, acceleration equivalence and speed."""

from __future__ import annotations

import time

import adafruit_pioasm
import pytest

from picostim.capture.trace import Trace
from picostim.virtual.pio_emu import PioSystem, PioUnsupported

try:
    from firmware import pio_programs as _P

    STIM = dict(ops=list(_P.OPCODES), wt=_P.WRAP_TARGET, wrap=_P.WRAP, seg=_P.SEGMENT_ENTRY,
                trig=getattr(_P, "TRIGGER_ENTRY", 0))
except Exception:
    STIM = dict(ops=list(adafruit_pioasm.assemble(
        ".program s\n wait 1 pin 0\n.wrap_target\n mov x, null\n pull noblock\n out pins, 4\n out x, 28\n"
        "d:\n jmp x-- d\n.wrap\n")), wt=1, wrap=5, seg=1, trig=0)


def asm(src: str):
    """Assemble pioasm text -> (opcodes, wrap_target, wrap, sideset kwargs)."""
    prog = adafruit_pioasm.Program(src)
    kw = prog.pio_kwargs
    n = len(prog.assembled)
    wt = kw.get("wrap_target", 0)
    wrap = kw.get("wrap", n - 1)
    ss = {}
    if kw.get("sideset_pin_count"):
        ss = dict(side_set_count=kw["sideset_pin_count"], side_set_opt=bool(kw.get("sideset_enable")))
    return list(prog.assembled), wt, wrap, ss


def make(src, accelerate=True, pindirs=0xFFFF, **cfg):
    ops, wt, wrap, ss = asm(src)
    s = PioSystem(accelerate=accelerate)
    sm = s.add_state_machine(ops, wt, wrap, **{**ss, **cfg})
    s.set_pindirs(0xFFFFFFFF, pindirs)
    return s, sm


def seg(pins, n):
    return (n << 4) | pins


# ------------------------------------------------------------------ opcode semantics
def test_set_pins_and_delay_cycle_counts():
    s, sm = make(".program t\n set pins, 1 [3]\n set pins, 0 [1]\n", set_base=0, set_count=1)
    s.enable([sm], start_pc=0)
    s.run_until(20)
    # 1+3 cycles high, 1+1 low, period 6
    assert s.edges(0) == [0, 4, 6, 10, 12, 16, 18]
    assert sm.instructions == 7


def test_jmp_x_dec_loop_counts_and_wraps_x():
    s, sm = make(".program t\n set x, 3\n set pins, 1\nl:\n jmp x-- l\n set pins, 0\nh:\n jmp h\n",
                 set_base=0, set_count=1)
    s.enable([sm], start_pc=0)
    s.run_until(100)
    # set x @0, pins=1 @1, jmp x-- at 2,3,4,5 (x=3..0; the one at x=0 falls through), pins=0 @6
    assert s.edges(0) == [1, 6]
    assert sm.x == 0xFFFFFFFF


def test_jmp_conditions():
    src = """.program t
    set y, 2
    mov x, y
    jmp x!=y bad
    jmp !x bad
    jmp !y bad
    set x, 0
    jmp !x ok1
    jmp bad
ok1:
    jmp x!=y ok2
    jmp bad
ok2:
    jmp pin bad
    jmp !osre bad        ; OSR empty after reset
    set pins, 1
h:
    jmp h
bad:
    set pins, 2
b:
    jmp b
"""
    s, sm = make(src, set_base=0, set_count=2, jmp_pin=5)
    s.enable([sm], start_pc=0)
    s.run_until(50)
    assert s.pin_level(0) == 1 and s.pin_level(1) == 0


def test_jmp_pin_and_wait_honour_in_base_and_jmp_pin():
    s, sm = make(".program t\n wait 1 pin 2\n jmp pin yes\n set pins, 1\nh:\n jmp h\nyes:\n set pins, 2\nh2:\n jmp h2\n",
                 pindirs=0b11, set_base=0, set_count=2, in_base=8, jmp_pin=11)
    s.set_input(10, 1, at_cycle=7)  # in_base 8 + 2
    s.set_input(11, 1, at_cycle=5)
    s.enable([sm], start_pc=0)
    s.run_until(30)
    assert s.edges(1) == [9]  # wait passes at 7, jmp pin at 8, set at 9
    assert sm.stall_cycles == 7


def test_wait_gpio_absolute_and_polarity():
    s, sm = make(".program t\n wait 0 gpio 12\n set pins, 1\n", pindirs=1, set_base=0, set_count=1)
    s.set_input(12, 1, 0)
    s.set_input(12, 0, 40)
    s.enable([sm], start_pc=0)
    s.run_until(45)
    assert s.edges(0) == [41]


def test_out_pins_respects_out_base_and_count_and_shift_left():
    s, sm = make(".program t\n pull\n out pins, 3\n out pins, 3\nh:\n jmp h\n", out_base=4, out_count=2,
                 out_shift_right=False)
    sm.put(0b101_011 << 26)
    s.enable([sm], start_pc=0)
    s.run_until(10)
    # first out: 0b101 -> pins 4,5 get bits 0,1 = 1,0 (bit 2 is beyond out_count); second: 0b011 -> 1,1
    assert s.edges(4) == [1] and s.edges(5) == [2]
    assert s.edges(6) == []


def test_in_shift_and_push_rx():
    s, sm = make(".program t\n set x, 5\n in x, 3\n in null, 2\n in x, 3\n push\n", in_shift_right=False)
    s.enable([sm], start_pc=0)
    s.run_until(5)
    assert sm.get() == (0b101 << 5) | 0b101
    s2, sm2 = make(".program t\n set x, 5\n in x, 3\n push\n", in_shift_right=True)
    s2.enable([sm2], start_pc=0)
    s2.run_until(3)
    assert sm2.get() == 0b101 << 29


def test_mov_invert_and_bit_reverse():
    s, sm = make(".program t\n set x, 1\n mov y, ~x\n mov isr, ::x\n push\n", in_shift_right=True)
    s.enable([sm], start_pc=0)
    s.run_until(4)
    assert sm.y == 0xFFFFFFFE
    assert sm.get() == 0x80000000


def test_pull_block_stalls_and_holds_pins_then_delay_after_stall():
    s, sm = make(".program t\n pull block [2]\n out pins, 1\n", out_base=0, out_count=1)
    s.enable([sm], start_pc=0)
    s.run_until(10)
    assert sm.stalled and sm.stall_cycles == 10 and sm.tx_stalled
    assert sm.put(1)
    s.run_until(20)
    # pull completes at 10, delay 2 -> out at 13; then pull stalls again at 14
    assert s.edges(0) == [13]
    assert sm.words_pulled == 1


def test_pull_noblock_empty_copies_x():
    s, sm = make(".program t\n set x, 3\n pull noblock\n out pins, 2\n", out_base=0, out_count=2)
    s.enable([sm], start_pc=0)
    s.run_until(3)
    assert s.pin_level(0) == 1 and s.pin_level(1) == 1
    assert sm.empty_pulls == 1


def test_out_x_pc_isr_and_null():
    s, sm = make(".program t\n pull\n out x, 4\n out null, 4\n out isr, 4\n out pc, 5\n", )
    sm.put(0b00011_0110_1111_1001)
    s.enable([sm], start_pc=0)
    s.run_until(5)
    assert sm.x == 0b1001 and sm.isr == 0b0110 and sm.isr_count == 4 and sm.pc == 3


def test_side_set_opt_and_precedence():
    src = ".program t\n.side_set 1 opt\n set pins, 1 side 0\n nop\n nop side 1 [2]\n set pins, 0\n"
    s, sm = make(src, set_base=3, set_count=1, side_set_base=3)
    s.enable([sm], start_pc=0)
    s.run_until(6)
    # side-set wins over SET on the same pin at 0; nop without side keeps; side 1 at 2; set 0 at 5
    assert s.edges(3) == [2, 5]


def test_side_set_applies_during_stall():
    s, sm = make(".program t\n.side_set 1\n pull side 1\n nop side 0\n", side_set_base=2)
    s.enable([sm], start_pc=0)
    s.run_until(5)
    assert s.edges(2) == [0] and sm.stalled


def test_wrap_target_and_wrap():
    src = ".program t\n set pins, 1\n.wrap_target\n set pins, 0\n set pins, 1\n.wrap\n set pins, 0 [31]\n"
    s, sm = make(src, set_base=0, set_count=1)
    s.enable([sm], start_pc=0)
    s.run_until(6)
    assert s.edges(0) == [0, 1, 2, 3, 4, 5]


def test_autopull_streams_one_word_per_cycle_and_stalls_when_empty():
    s, sm = make(".program t\n out pins, 8\n", out_base=0, out_count=8, autopull=True, pull_threshold=16,
                 fifo_depth=8)
    s.dma(sm).load_words([0x0201, 0x0403])
    s.enable([sm], start_pc=0)
    s.run_until(10)
    # pins 0..7 take 1,2,3,4 on cycles 0..3 (refill in the same cycle as the emptying OUT), then OUT stalls
    assert s.edges(0) == [0, 1, 2, 3] and s.edges(1) == [1, 3] and s.edges(2) == [3]
    assert sm.words_pulled == 2 and sm.stalled


def test_autopush_threshold():
    s, sm = make(".program t\n set x, 1\n in x, 4\n in x, 4\n", autopush=True, push_threshold=8,
                 in_shift_right=False)
    s.enable([sm], start_pc=0)
    s.run_until(3)
    assert sm.get() == 0x11 and sm.isr_count == 0


def test_mov_status_tx_level():
    s, sm = make(".program t\n mov x, status\n", status_sel=0, status_n=1)
    s.enable([sm], start_pc=0)
    s.run_until(1)
    assert sm.x == 0xFFFFFFFF


@pytest.mark.parametrize("src", [".program t\n irq 0\n", ".program t\n wait 1 irq 0\n", ".program t\n out exec, 16\n",
                                 ".program t\n mov exec, x\n"])
def test_unsupported_raise_clearly(src):
    s, sm = make(src)
    s.enable([sm], start_pc=0)
    with pytest.raises(PioUnsupported):
        s.run_until(3)


def test_pindirs_select_input_or_output():
    s, sm = make(".program t\n set pins, 1\n set pindirs, 0\n set pindirs, 1\n", pindirs=0, set_base=0,
                 set_count=1)
    s.set_input(0, 0, 0)
    s.enable([sm], start_pc=0)
    s.run_until(3)
    assert s.edges(0) == [2]  # latch set at 0 but the pin is an input (low) until 2
    s2, sm2 = make(".program t\n set pins, 1\n set pindirs, 1\n set pindirs, 0\n", pindirs=0, set_base=0,
                   set_count=1)
    s2.enable([sm2], start_pc=0)
    s2.run_until(4)
    assert s2.edges(0) == [1, 2]


# ------------------------------------------------------------------ stim program, DMA and FIFO
def stim_system(n_sms=1, accelerate=True, depth=8, base_stride=4, **kw):
    s = PioSystem(accelerate=accelerate, **kw)
    sms = []
    for i in range(n_sms):
        sm = s.add_state_machine(STIM["ops"], STIM["wt"], STIM["wrap"], out_base=i * base_stride, out_count=4,
                                 in_base=28, fifo_depth=depth)
        sms.append(sm)
    s.set_pindirs((1 << (4 * n_sms)) - 1, (1 << (4 * n_sms)) - 1)
    return s, sms


def pulse_group(ph=20, gap=3, idle=50):
    return [seg(9, ph - 5), seg(8, gap - 5 if gap >= 5 else 0), seg(10, ph - 5), seg(0, idle - 5)]


def test_stim_segment_lasts_count_plus_five():
    s, (sm,) = stim_system()
    s.dma(sm).load([], [[seg(1, 100), seg(0, 0)]], 1)
    s.enable([sm], start_pc=STIM["seg"])
    s.run_until(1000)
    assert s.edges(0) == [2, 107]
    assert sm.blocks_consumed == 1 and sm.dma.done


def test_dma_repeats_blocks_and_cycles():
    s, (sm,) = stim_system()
    d = s.dma(sm)
    d.load([[seg(0, 10)]], [[seg(1, 5), seg(0, 5)], [seg(2, 5), seg(0, 5)]], 3)
    s.enable([sm], start_pc=STIM["seg"])
    s.run_until(10_000)
    assert len(s.edges(0)) == 6 and len(s.edges(1)) == 6
    assert d.done and d.cycles_done == 3 and d.blocks_sent == 7 and sm.blocks_consumed == 7
    assert s.edges(0)[0] == 2 + 15


def test_dma_forever_then_stop_at_block_boundary_finishes_pulse():
    s, (sm,) = stim_system(depth=4)
    d = s.dma(sm)
    grp = [seg(1, 95), seg(0, 2), seg(2, 95), seg(0, 795)]  # period 100+7+100+800 = 1007
    d.load([], [grp], 0)
    s.enable([sm], start_pc=STIM["seg"])
    s.run_until(5_000 + 150)  # inside the 6th pulse's first phase
    d.stop_at_block_boundary()
    s.run_until(50_000)
    pos, neg = s.edges(0), s.edges(1)
    # the 6th pulse is playing from the FIFO and the DMA is already transferring the 7th block: it completes
    assert len(pos) == 14 and len(neg) == 14 and sm.blocks_consumed == 7
    assert all(b - a == 100 for a, b in zip(pos[0::2], pos[1::2]))
    assert d.done and s.pin_level(0) == 0 and s.pin_level(1) == 0
    assert sm.empty_pulls > 0  # idling on an empty FIFO afterwards


def test_dma_replace_at_block_boundary_changes_params_between_pulses():
    s, (sm,) = stim_system(depth=4)
    d = s.dma(sm)
    d.load([], [[seg(1, 45), seg(0, 145)]], 0)  # 50 high, 150 low
    s.enable([sm], start_pc=STIM["seg"])
    s.run_until(510)
    d.replace_at_block_boundary([], [[seg(1, 95), seg(0, 95)]], 0)  # 100 high, 100 low
    s.run_until(2000)
    e = s.edges(0)
    widths = [b - a for a, b in zip(e[0::2], e[1::2])]
    assert all(w in (50, 100) for w in widths)
    first_new = widths.index(100)
    assert all(w == 50 for w in widths[:first_new]) and all(w == 100 for w in widths[first_new:])


def test_fifo_depth_limits_prefill_and_dma_latency():
    s, (sm,) = stim_system(depth=4)
    s.dma(sm).load_words([seg(0, 0)] * 10)
    assert sm.tx_level == 4 and sm.dma.words_sent == 4
    s2, (sm2,) = stim_system(depth=8)
    s2.dma(sm2).load_words([seg(0, 0)] * 10)
    assert sm2.tx_level == 8


def test_pull_stall_on_dma_refill_latency():
    """`pull block; out pins` at 2 cycles/word from a 1-deep FIFO: a latency of 3 stalls each pull."""
    for lat, expect in ((1, [0, 1, 2, 3, 4]), (3, [1, 3, 5, 7])):
        s = PioSystem(dma_latency=lat)
        ops, wt, wrap, _ = asm(".program t\n pull\n out pins, 1\n")
        sm = s.add_state_machine(ops, wt, wrap, out_base=0, out_count=1, fifo_depth=1)
        s.set_pindirs(1, 1)
        s.dma(sm).load_words([1, 0, 1, 0, 1, 0])
        s.enable([sm], start_pc=0)
        s.run_until(12 if lat == 1 else 12)
        e = s.edges(0)
        if lat == 1:
            assert e == [1, 3, 5, 7, 9, 11]
        else:
            # word k (k>=1) is available 3 cycles after the previous pull; pulls at 0,3,6,... outs at 1,4,7,10
            assert e == [1, 4, 7, 10]


def test_multi_sm_same_cycle_start_and_independent_streams():
    s, sms = stim_system(n_sms=3)
    streams = [[seg(1, 10), seg(0, 0)], [seg(1, 30), seg(0, 0)], [seg(2, 2), seg(0, 0)]]
    for sm, st in zip(sms, streams):
        s.dma(sm).load_words(st)
    s.enable(sms, start_pc=STIM["seg"])
    s.run_until(200)
    assert s.edges(0) == [2, 17] and s.edges(4) == [2, 37] and s.edges(9) == [2, 9]


def test_multi_sm_trigger_entry_starts_together_on_the_trigger():
    s, sms = stim_system(n_sms=2)
    for sm in sms:
        s.dma(sm).load_words([seg(1, 20), seg(0, 0)])
    s.enable(sms, start_pc=STIM["trig"])
    s.run_until(1000)
    assert s.edges(0) == [] and all(sm.stalled for sm in sms)
    s.set_input(28, 1, at_cycle=1500)
    s.run_until(3000)
    # wait passes at 1500; mov 1501, pull 1502, out pins 1503
    assert s.edges(0) == [1503, 1528] and s.edges(4) == [1503, 1528]


def test_trace_output_and_names():
    s, (sm,) = stim_system()
    s.dma(sm).load([], [pulse_group()], 2)
    s.set_input(28, 1, 30)
    s.enable([sm], start_pc=STIM["seg"])
    s.run_until(400)
    tr = s.trace({0: "POS", 1: "NEG", 3: "SYNC", 28: "TRIG1"})
    assert isinstance(tr, Trace) and tr.samplerate_hz == 125e6 and tr.n_samples == 400
    assert tr.channels["POS"].rising().tolist() == [2, 97]  # group = 20 + 5 + 20 + 50 cycles
    assert tr.channels["TRIG1"].toggles.tolist() == [30]
    part = s.trace({0: "POS"}, start=10, end=100)
    assert part.channels["POS"].initial == 1 and part.channels["POS"].toggles.tolist() == [12, 87]


def test_accelerated_equals_cycle_by_cycle_on_long_multi_sm_run():
    def run(acc):
        s, sms = stim_system(n_sms=2, accelerate=acc)
        s.dma(sms[0]).load([[seg(0, 300)]], [pulse_group(40, 7, 900)], 4)
        s.dma(sms[1]).load([], [pulse_group(25, 3, 500), pulse_group(60, 10, 700)], 3)
        s.set_input(28, 1, 5000)
        s.enable([sms[0]], start_pc=STIM["seg"])
        s.enable([sms[1]], start_pc=STIM["trig"])
        for stop in (1234, 3000, 7777, 12000):
            s.run_until(stop)
        s.dma(sms[1]).load([], [pulse_group(30, 5, 100)], 2)
        s.run_until(20000)
        return [s.edges(p) for p in range(8)], [(sm.words_pulled, sm.blocks_consumed, sm.empty_pulls,
                                               sm.instructions, sm.stall_cycles, sm.pc, sm.x) for sm in sms]

    assert run(True) == run(False)


def test_speed_ten_seconds_of_50hz_train():
    """10 s of a 50 Hz biphasic train (1.25e9 cycles, 500 pulses) on 4 SMs in well under a second."""
    s, sms = stim_system(n_sms=4)
    grp = [seg(9, 25000 - 5), seg(8, 2500 - 5), seg(10, 25000 - 5), seg(0, 2_500_000 - 52500 - 5)]
    for sm in sms:
        s.dma(sm).load([], [grp], 500)
    t0 = time.perf_counter()
    s.enable(sms, start_pc=STIM["seg"])
    s.run_until(1_250_000_000 + 100_000)
    wall = time.perf_counter() - t0
    for i, sm in enumerate(sms):
        assert sm.blocks_consumed == 500
        assert len(s.edges(4 * i)) == 1000
        e = s.edges(4 * i)
        assert e[1] - e[0] == 25000 and e[2] - e[0] == 2_500_000
    assert wall < 2.0, wall
