"""firmware/dma_chain.py: exact register addresses and control words, the word-splitting edges, the
Feeder's bookkeeping and the DAC bus op helpers (mutation testing, issue 15).

tests/test_hal_rp2.py and tests/test_long_trains.py check the feed plan against a model of the DMA
chain and the waveform tick for tick; these pin what those leave loose: every register helper on
both PIO blocks and on SMs other than 0, every CTRL field and mask, which word split_to splits, the
floor/ceil order of idle pieces, the thresholds of idle_entries / pulse_entries and their refusals,
the Feeder's top-up limits, replace's clipping and race handling, and every branch of the DAC bus
resume logic. Expected values are written out from the RP2040 datasheet and the docstrings, not
computed with the functions under test.
"""

from array import array

import pytest

from firmware import board, dac_bus
from firmware import dma_chain as dc
from firmware import pio_programs as pp
from firmware import pulse_engine as pe
from protocol import params as P

MS = 1_000_000
S = 1_000_000_000
OV = pp.SEGMENT_OVERHEAD_TICKS  # 5
IDLE = 0


def word(ticks, pins=IDLE):
    """A stimulation word (count above COUNT_SHIFT = ticks - OVERHEAD, pins in the low bits)."""
    return ((ticks - OV) << pp.COUNT_SHIFT) | pins


def ticks(w):
    return (w >> pp.COUNT_SHIFT) + OV


def pins(w):
    return w & pp.PIN_MASK


def desc(words):
    return [(ticks(w), pins(w)) for w in words]


# ------------------------------------------------------------------------------------ registers
def test_register_helpers_on_both_pio_blocks_and_every_sm():
    assert dc.pio_base(0) == 0x50200000 and dc.pio_base(1) == 0x50300000
    assert dc.dma_reg(0, 0) == 0x50000000
    assert dc.dma_reg(11, dc.DMA_CTRL_TRIG) == 0x500002CC
    assert dc.dma_reg(1, dc.DMA_TRANS_COUNT) == 0x50000048
    assert dc.pio_sm_addr_reg(1, 2) == 0x50300104
    assert dc.pio_sm_instr_reg(1, 3) == 0x50300120
    assert dc.pio_sm_instr_reg(0, 1) == 0x502000F0
    assert dc.pio_txf(0, 0) == 0x50200010 and dc.pio_txf(1, 3) == 0x5030001C
    assert dc.pio_ctrl_set(1) == 0x50302000
    assert dc.pio_sm_pinctrl_reg(0, 0) == 0x502000DC and dc.pio_sm_pinctrl_reg(1, 1) == 0x503000F4
    assert dc.pio_flevel(1) == 0x5030000C
    assert dc.pio_reg(1, dc.PIO_FSTAT) == 0x50300004
    assert dc.pio_reg(0, dc.PIO_CTRL + dc.REG_ALIAS_CLR) == 0x50203000
    assert dc.pio_sm_reg(1, 2, 0x0C8) == 0x503000F8
    assert dc.pio_sm_reg(0, 0, dc.PIO_SM0_SHIFTCTRL) == 0x502000D0


def test_pinctrl_in_base_replaces_only_in_base():
    assert dc.pinctrl_in_base(0xFFFFFFFF, 3) == 0xFFF1FFFF
    assert dc.pinctrl_in_base(0, 31) == 0x000F8000
    assert dc.pinctrl_in_base(0x000F8000, 0) == 0
    assert dc.pinctrl_in_base(0x12345678, 0) == 0x12305678  # bits 19:15 cleared, the rest kept
    assert dc.pinctrl_in_base(0, 33) == 1 << 15  # a pin number is 5 bits


def test_tx_level_of_every_sm_is_four_bits():
    flevel = 0xF8F7F6F5  # RX levels (high nibbles) all 0xF: never part of a TX level
    assert [dc.tx_level(flevel, sm) for sm in range(4)] == [5, 6, 7, 8]
    assert dc.tx_level(0x00000800, 1) == 8


def test_sm_mask_and_ctrl_start_value():
    assert board.CHANNELS == 4
    for ch in range(board.CHANNELS):
        assert dc.sm_mask_of(1 << ch) == 1 << board.CH_SM[ch]
    assert dc.sm_mask_of(0) == 0
    assert dc.sm_mask_of(0b1010) == (1 << board.CH_SM[1]) | (1 << board.CH_SM[3])
    assert dc.sm_mask_of(0b110000) == 0  # no channel 4 or 5
    assert dc.ctrl_start_value(0b0010) == 0x202
    assert dc.ctrl_start_value(0x1F) == 0xF0F  # 4 SMs per block
    assert dc.ctrl_start_value(0) == 0


def test_jmp_is_five_bits():
    assert dc.jmp(0) == 0 and dc.jmp(31) == 31 and dc.jmp(0x25) == 5


def test_dma_ctrl_defaults_and_every_option_and_mask():
    # EN | DATA_SIZE word (2 << 2) | INCR_READ | IRQ_QUIET
    assert dc.dma_ctrl(0, 0) == 0x00200019
    # every field at its widest, options inverted: EN, size, INCR_WRITE, RING_SIZE 0xF, RING_SEL,
    # CHAIN_TO 0xF, TREQ 0x3F; no INCR_READ, no IRQ_QUIET
    assert dc.dma_ctrl(0x7F, 0x1F, inc_read=False, inc_write=True, ring_bits=0x1F, ring_write=True,
                       irq_quiet=False) == 0x001FFFE9
    assert dc.dma_ctrl(1, 2, ring_bits=3) == 0x00200019 | 3 << 6 | 2 << 11 | 1 << 15
    assert dc.data_ctrl(3, 5) == 0x0021A819  # TREQ = PIO0 TX3, chain to 5
    assert dc.control_ctrl(4) == 0x003FA299  # TREQ permanent, chain to itself, read ring 2^10 bytes
    assert dc.control_ctrl(4, ring_bits=3) == 0x003FA0D9
    assert dc.dac_ctrl(6) == 0x00243019  # TREQ = PIO1 TX0 (DAC SM 0), chain to itself


def test_dac_pinctrl():
    # OUT_BASE 19 (MOSI), OUT_COUNT 9, SIDESET_BASE 18 (SCK), SIDESET_COUNT 1
    assert dc.dac_pinctrl() == 19 | 9 << 20 | 18 << 10 | 1 << 29 == 0x20904813


def test_aligned_offset():
    assert dc.aligned_offset(0x20001008, 16) == 2
    assert dc.aligned_offset(0x20000FFC, 1024) == 1
    assert dc.aligned_offset(0x20001000, 16) == 0
    assert dc.aligned_offset(0x20000C00, 1024) == 0
    assert dc.aligned_offset(0x20000C04, 1024) == 255


def test_word_ticks_ticks_to_us_and_reset_reason():
    assert dc.word_ticks(word(105, 3)) == 105 and dc.word_ticks(0) == OV
    assert dc.MAX_TICKS == pp.COUNT_MAX + OV
    assert [dc.ticks_to_us_ceil(t) for t in (0, 1, 125, 126, 250, 125_000_000)] == [0, 1, 1, 2, 2, 1_000_000]
    assert dc.reset_reason_code(7, 7, 8, 9) == 0
    assert dc.reset_reason_code(8, 7, 8, 9) == 1
    assert dc.reset_reason_code(9, 7, 8, 9) == 2
    assert dc.reset_reason_code(99, 7, 8, 9) == 0


def test_entries_played():
    assert dc.entries_played(3, 16, 0, 0) == 3
    assert dc.entries_played(3, 16, 1, 0) == 2
    assert dc.entries_played(3, 16, 16, 0) == 2
    assert dc.entries_played(3, 16, 17, 0) == 1
    assert dc.entries_played(1, 16, 8, 8) == 0
    assert dc.entries_played(1, 16, 9, 8) == 0  # more in flight than moved: 0, never negative
    assert dc.entries_played(0, 16, 0, 1) == 0


# ------------------------------------------------------------------------------------- split_to
def test_split_to_refuses_to_shrink_with_its_message():
    with pytest.raises(ValueError, match="^cannot shrink 3 words to 2$"):
        dc.split_to([word(10)] * 3, 2)


def test_split_to_same_length_is_a_copy():
    ws = [word(10, 8), word(20)]
    out = dc.split_to(ws, 2)
    assert out == ws and out is not ws


def test_split_to_prefers_an_idle_word_over_a_longer_drive_word():
    assert desc(dc.split_to([word(1000, 9), word(20)], 3)) == [(1000, 9), (10, 0), (10, 0)]
    assert desc(dc.split_to([word(20), word(1000, 9)], 3)) == [(10, 0), (10, 0), (1000, 9)]


def test_split_to_splits_the_longest_idle_word_first_of_equals_floor_then_ceil():
    assert desc(dc.split_to([word(20), word(31), word(31)], 4)) == [(20, 0), (15, 0), (16, 0), (31, 0)]
    # then the next longest: 31 (the other), then 20
    assert desc(dc.split_to([word(20), word(31), word(31)], 6)) == [
        (10, 0), (10, 0), (15, 0), (16, 0), (15, 0), (16, 0)]


def test_split_to_splits_drive_words_only_when_no_idle_word_can_be_split():
    assert desc(dc.split_to([word(9), word(12, 5)], 3)) == [(9, 0), (6, 5), (6, 5)]
    assert desc(dc.split_to([word(10)], 2)) == [(5, 0), (5, 0)]  # 2 x OVERHEAD is still splittable
    with pytest.raises(ValueError, match="^segments too short to pad to 2 words$"):
        dc.split_to([word(9)], 2)
    with pytest.raises(ValueError, match="^segments too short to pad to 4 words$"):
        dc.split_to([word(9, 1), word(10)], 4)


# ------------------------------------------------------------------------------------ idle entries
@pytest.mark.parametrize("p", [9, 16])
def test_idle_entries_thresholds(p):
    full = p * dc.MAX_TICKS
    for t, nwords, k in [(OV * p, p, 0), (full - 1, p, 0), (full, p, 0), (full + 1, 2 * p, 0),
                         (2 * full - 1, 2 * p, 0), (2 * full, p, 1), (2 * full + 1, 2 * p, 1),
                         (3 * full, p, 2), (5 * full + 7, 2 * p, 4)]:
        words, kk = dc.idle_entries(t, p)
        assert (len(words), kk) == (nwords, k), t
        assert sum(ticks(w) for w in words) + kk * full == t
        assert all(pins(w) == 0 and OV <= ticks(w) <= dc.MAX_TICKS for w in words)


def test_idle_entries_pieces_are_floor_ceil_with_the_longer_ones_first():
    words, k = dc.idle_entries(9 * OV + 3, 9)
    assert k == 0 and [ticks(w) for w in words] == [6, 6, 6, 5, 5, 5, 5, 5, 5]
    words, k = dc.idle_entries(9 * 100, 9)
    assert [ticks(w) for w in words] == [100] * 9


# ----------------------------------------------------------------------------------- pulse entries
PULSE = [word(25000, 10), word(125, 8), word(25000, 9)]  # phase 1, interphase, phase 2 (with SYNC)


def test_pulse_entries_refusals():
    with pytest.raises(ValueError, match="^a pulse of 9 words and its idle do not fit an entry of 9$"):
        dc.pulse_entries(0, [word(100, 1)] * 9, 1000, 9)
    with pytest.raises(ValueError, match="^a pulse of 9 words and its idle do not fit an entry of 9$"):
        dc.pulse_entries(50, [word(100, 1)] * 8, 1000, 9)  # the pre word counts
    with pytest.raises(ValueError, match="^a pulse of 3 words and its idle do not fit an entry of 9$"):
        dc.pulse_entries(0, PULSE, OV - 1, 9)


def test_pulse_entries_tightest_fit():
    # 8 pulse words leave one idle word: the entry is the pulse then the idle
    pulse = [word(100, 1)] * 8
    words, k = dc.pulse_entries(0, pulse, OV, 9)
    assert k == 0 and desc(words) == [(100, 1)] * 8 + [(OV, 0)]
    # idle of exactly one overhead with room to spare: the pulse's own words are split to fill the entry
    words, k = dc.pulse_entries(0, [word(40, 1), word(40, 2)], OV, 9)
    assert k == 0 and len(words) == 9 and pins(words[-1]) == 0
    assert sum(ticks(w) for w in words) == 85 and ticks(words[-1]) == OV


def test_pulse_entries_pre_word_comes_first():
    words, k = dc.pulse_entries(20, PULSE, 9 * 1000, 9)
    assert k == 0 and desc(words[:4]) == [(20, 0), (25000, 10), (125, 8), (25000, 9)]
    assert [ticks(w) for w in words[4:]] == [1800] * 5
    words, k = dc.pulse_entries(0, PULSE, 9 * 1000, 9)
    assert desc(words[:3]) == desc(PULSE) and [ticks(w) for w in words[3:]] == [1500] * 6


def test_pulse_entries_short_idle_is_split_into_at_most_one_word_per_overhead():
    words, k = dc.pulse_entries(0, PULSE, 3 * OV + 2, 9)  # room for 6 idle words, ticks for 3
    assert k == 0 and len(words) == 9
    assert sum(ticks(w) for w in words) == 50125 + 3 * OV + 2
    assert desc(words[-1:])[0][1] == 0


@pytest.mark.parametrize("p", [9, 16])
def test_pulse_entries_long_idle_thresholds(p):
    q = p - len(PULSE)
    full = p * dc.MAX_TICKS
    cases = [
        (q * dc.MAX_TICKS, 1, 0),  # fills the pulse entry exactly
        (q * dc.MAX_TICKS + 1, 2, 0),  # one tick more: a whole entry follows (idle moved into it)
        (q * dc.MAX_TICKS + OV * p, 2, 0),
        (q * dc.MAX_TICKS + full, 2, 0),
        (q * dc.MAX_TICKS + full + 1, 3, 0),
        (q * dc.MAX_TICKS + 2 * full, 2, 1),
        (q * dc.MAX_TICKS + 3 * full + 5, 3, 2),
    ]
    for idle, entries, k in cases:
        words, kk = dc.pulse_entries(0, PULSE, idle, p)
        assert (len(words), kk) == (entries * p, k), idle
        assert sum(ticks(w) for w in words) + kk * full == 50125 + idle
        assert all(OV <= ticks(w) <= dc.MAX_TICKS for w in words)
        assert desc(words[:3]) == desc(PULSE)
        for e in range(entries):
            assert pins(words[e * p + p - 1]) == 0
        assert all(pins(w) == 0 for w in words[3:])


# ------------------------------------------------------------------------------------------ Block
def test_block_checks_and_fields():
    with pytest.raises(ValueError, match="^0 words are not whole entries of 9$"):
        dc.Block([], 9)
    with pytest.raises(ValueError, match="^10 words are not whole entries of 9$"):
        dc.Block([word(10)] * 10, 9)
    with pytest.raises(ValueError, match="^entry 1 does not end idle$"):
        dc.Block([word(10)] * 17 + [word(10, 1)], 9)
    with pytest.raises(ValueError, match="^entry 0 does not end idle$"):
        dc.Block([word(10)] * 8 + [word(10, 2)], 9)
    b = dc.Block([word(10, 1)] + [word(10)] * 16 + [word(77)], 9)
    assert (b.entries, b.pulses, b.tail_ticks, len(b.words)) == (2, 1, 77, 18)
    assert list(b.words) == [word(10, 1)] + [word(10)] * 16 + [word(77)]
    assert dc.Block([word(10)] * 9, 9, 0).pulses == 0
    assert dc.Block([word(10)] * 9, 9, 5).pulses == 5


# ------------------------------------------------------------------------------------------- Plan
def train(**kw):
    return pe.build_train(P.complete(kw))


def test_plan_entry_words_default_and_minimum():
    t = train(period_ns=1 * MS)
    assert dc.Plan(t).p == dc.ENTRY_WORDS == 16
    assert dc.Plan(t, p=0).p == 16 and dc.Plan(t, p=-3).p == 16
    assert dc.Plan(t, p=dc.MIN_ENTRY_WORDS).p == 9
    with pytest.raises(ValueError, match="^8 words per entry do not outnumber the FIFO$"):
        dc.Plan(t, p=8)
    with pytest.raises(ValueError, match="^1 words per entry do not outnumber the FIFO$"):
        dc.Plan(t, p=1)


def test_plan_of_a_plain_train_has_one_block_and_no_idle():
    t = train(period_ns=1 * MS, train_duration_ns=5 * MS)
    plan = dc.Plan(t, p=9)
    assert len(plan.blocks) == 1 and plan.idle is None and plan.lead is None
    assert plan.words() == 9 and plan.repeats == t.repeats == 5
    (b, n, k), = plan.runs
    assert (n, k, b.entries, b.pulses) == (1, 0, 1, 1)
    assert plan.tail_ticks == b.tail_ticks == ticks(b.words[-1])


def test_plan_long_idle_gets_the_shared_idle_block():
    t = train(period_ns=2000 * MS)  # 2 s of idle fits the pulse entry's idle words (2.1 s each)
    plan = dc.Plan(t, p=9)
    assert plan.idle is None
    t = train(period_ns=3_600_000 * MS)  # 1 h
    plan = dc.Plan(t, p=9)
    assert plan.idle is not None and plan.idle in plan.blocks
    assert list(plan.idle.words) == [word(dc.MAX_TICKS)] * 9 and plan.idle.pulses == 0
    assert plan.words() == sum(len(b.words) for b in plan.blocks)
    assert plan.tail_ticks == dc.MAX_TICKS  # the shared idle block's last word is the longest tail


def test_plan_lead_alone_or_merged_into_the_first_group():
    p = 9
    long_delay = train(period_ns=1 * MS, train_delay_ns=OV * p * 8)  # exactly OVERHEAD * p ticks
    plan = dc.Plan(long_delay, p=p)
    assert long_delay.delay_ticks == OV * p
    assert plan.lead is not None and not plan.lead_replaces and plan.lead.pulses == 0
    assert plan.lead in plan.blocks and plan.lead_idle == 0
    assert plan.idle is None and len(plan.blocks) == 2 and plan.words() == 2 * p  # no shared idle block
    one = dc.Plan(train(period_ns=1 * MS, train_delay_ns=40 * S), p=p)
    assert one.lead_idle == 1 and one.idle is not None and one.idle in one.blocks
    assert sum(ticks(w) for w in plan.lead.words) == OV * p
    short_delay = train(period_ns=1 * MS, train_delay_ns=(OV * p - 1) * 8)
    plan = dc.Plan(short_delay, p=p)
    assert plan.lead_replaces and plan.lead.pulses == 1 and plan.lead in plan.blocks
    assert ticks(plan.lead.words[0]) == OV * p - 1
    assert dc.Plan(short_delay, p=p, with_delay=False).lead is None
    assert len(dc.Plan(short_delay, p=p, with_delay=False).blocks) == 1
    no_delay = dc.Plan(train(period_ns=1 * MS), p=p)
    assert no_delay.lead is None and not no_delay.lead_replaces and no_delay.lead_idle == 0


def test_plan_day_long_delay_uses_shared_idle_entries():
    t = train(period_ns=1 * MS, train_delay_ns=24 * 3600 * 1000 * MS)
    plan = dc.Plan(t, p=16)
    full = 16 * dc.MAX_TICKS
    assert plan.lead_idle > 0 and plan.idle is not None
    assert sum(ticks(w) for w in plan.lead.words) + plan.lead_idle * full == t.delay_ticks


def test_plan_sequence_of_a_merged_lead_replaces_the_first_group_once():
    t = train(period_ns=1 * MS, train_delay_ns=320, train_duration_ns=4 * MS)  # 40 ticks < OVERHEAD * 9
    plan = dc.Plan(t, p=9)
    seq = list(plan.sequence())
    assert plan.lead_replaces and t.repeats == 4
    assert seq[0] is plan.lead and len(seq) == 4  # the lead + 3 more groups: 4 pulses in all
    assert all(b is plan.runs[0][0] for b in seq[1:])
    assert sum(b.pulses for b in seq) == 4
    t = train(period_ns=1 * MS, train_delay_ns=800, train_duration_ns=4 * MS)  # 100 ticks: a lead of its own
    plan = dc.Plan(t, p=9)
    seq = list(plan.sequence())
    assert not plan.lead_replaces and seq[0] is plan.lead and len(seq) == 5
    assert [b.pulses for b in seq] == [0, 1, 1, 1, 1]


def test_plan_sequence_of_bursts_with_repeats():
    t = train(period_ns=1 * MS, burst_pulses=3, interburst_ns=5 * MS, train_duration_ns=2 * 7 * MS)
    plan = dc.Plan(t, p=9)
    seq = list(plan.sequence())
    assert plan.repeats == t.repeats == 2
    assert [b.pulses for b in seq] == [1] * 6
    (b0, n0, k0), (b1, n1, k1) = plan.runs
    assert (n0, n1, k0, k1) == (2, 1, 0, 0)
    assert seq == [b0, b0, b1, b0, b0, b1]


# ----------------------------------------------------------------------------------------- Feeder
def addresses():
    seen = {}

    def addr_of(block):
        return seen.setdefault(id(block), 0x20000000 + 0x1000 * (len(seen) + 1))
    return addr_of


def feeder(ring_len=32, margin=4, base=2):
    ring = array("I", [0xDEAD] * (ring_len + base + 1))
    return dc.Feeder(ring, base, ring_len, addresses(), margin=margin), ring


def slots(f, ring):
    return list(ring[f.base:f.base + f.ring_len])


def test_load_of_an_endless_train_fills_up_to_the_margin_and_clears_the_rest():
    f, ring = feeder()
    plan = dc.Plan(train(period_ns=1 * MS), p=9)
    a = f.addr_of(plan.runs[0][0])
    assert f.load(plan) == 28
    assert slots(f, ring) == [a] * 28 + [0] * 4
    assert ring[0] == ring[1] == ring[34] == 0xDEAD  # outside the ring: untouched
    assert f.cum == list(range(1, 29)) + [28, 0, 0, 0]
    assert (f.head, f.pulses_total, f.finished, f.p) == (28, 28, False, 9)
    assert f.pulses_after(0) == 0 and f.pulses_after(-1) == 0
    assert f.pulses_after(1) == 1 and f.pulses_after(28) == 28


def test_fill_limits_and_wrap():
    f, ring = feeder()
    plan = dc.Plan(train(period_ns=1 * MS), p=9)
    a = f.addr_of(plan.runs[0][0])
    f.load(plan)
    before = slots(f, ring)
    assert f.fill(0) == 28 and slots(f, ring) == before  # nothing consumed: nothing to add
    assert f.fill(1) == 29 and slots(f, ring) == [a] * 29 + [0] * 3
    assert f.fill(10) == 38  # wraps: slots 29..31 then 0..5, the 0 in slot 6
    assert slots(f, ring) == [a] * 6 + [0] + [a] * 25
    assert f.cum[6] == 38 and f.cum[5] == 38 and f.cum[0] == 33
    assert f.pulses_after(38) == 38 and f.pulses_after(37) == 37
    assert f.unwrap(30, 6) == 38 and f.unwrap(38, 6) == 38


def test_unwrap():
    f, _ring = feeder(ring_len=64)
    assert f.unwrap(130, 5) == 133
    assert f.unwrap(128, 0) == 128
    assert f.unwrap(127, 0) == 128
    assert f.unwrap(0, 63) == 63


def test_a_finite_train_finishes_and_fill_then_writes_nothing():
    f, ring = feeder()
    plan = dc.Plan(train(period_ns=1 * MS, train_duration_ns=5 * MS), p=9)
    a = f.addr_of(plan.runs[0][0])
    assert f.load(plan) == 5 and f.finished
    assert slots(f, ring) == [a] * 5 + [0] * 27
    assert f.cum[:6] == [1, 2, 3, 4, 5, 5]
    ring[f.base + 5] = 0xBEEF  # fill must not write anything once finished
    assert f.fill(5) == 5 and ring[f.base + 5] == 0xBEEF


def test_stop_nulls_every_slot_and_ends_the_stream():
    f, ring = feeder()
    plan = dc.Plan(train(period_ns=1 * MS), p=9)
    f.load(plan)
    f.stop(3)
    assert slots(f, ring) == [0] * 32 and f.finished
    assert ring[1] == ring[34] == 0xDEAD
    assert f.fill(10) == 28 and slots(f, ring) == [0] * 32


def test_prepare_replace_refuses_another_p():
    f, _ring = feeder()
    f.load(dc.Plan(train(period_ns=1 * MS), p=9))
    with pytest.raises(ValueError, match=r"^replace needs the stream's words per entry \(9\)$"):
        f.prepare_replace(dc.Plan(train(period_ns=2 * MS), p=16))


def test_commit_replace_needs_a_prepare_and_consumes_it():
    f, _ring = feeder()
    f.load(dc.Plan(train(period_ns=1 * MS), p=9))
    with pytest.raises(ValueError, match="^commit_replace without prepare_replace$"):
        f.commit_replace(3)
    f.prepare_replace(dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False), n=4)
    assert f.commit_replace(3) == 3
    with pytest.raises(ValueError, match="^commit_replace without prepare_replace$"):
        f.commit_replace(3)


def test_replace_writes_n_entries_then_a_zero_and_counts_on():
    f, ring = feeder()
    f.load(dc.Plan(train(period_ns=1 * MS), p=9))
    new = dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False)
    b = f.addr_of(new.runs[0][0])
    f.prepare_replace(new, n=4)
    assert len(f.staged[0]) == 4 and not f.finished
    assert f.commit_replace(3) == 3 and f.staged is None
    assert f.head == 7 and f.pulses_total == 7
    s = slots(f, ring)
    assert s[3:7] == [b] * 4 and s[7] == 0
    assert f.cum[2:8] == [3, 4, 5, 6, 7, 7]
    assert f.fill(3) == 31 and slots(f, ring)[7:31] == [b] * 24  # the new plan continues


def test_replace_from_slot_zero_counts_from_zero():
    f, ring = feeder()
    f.load(dc.Plan(train(period_ns=1 * MS), p=9))
    new = dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False)
    f.prepare_replace(new, n=2)
    assert f.commit_replace(0) == 0
    assert f.cum[0:3] == [1, 2, 2] and f.head == 2 and f.pulses_total == 2


def test_prepare_replace_clips_the_run_to_the_ring():
    f, _ring = feeder(ring_len=32, margin=4)
    f.load(dc.Plan(train(period_ns=1 * MS), p=9))
    f.prepare_replace(dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False), n=1000)
    assert len(f.staged[0]) == 32 - 4 - 1
    f.prepare_replace(dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False), n=27)
    assert len(f.staged[0]) == 27
    f.prepare_replace(dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False))
    assert len(f.staged[0]) == min(dc.REPLACE_RUN, 27)


def test_prepare_replace_of_a_short_train_finishes():
    f, _ring = feeder()
    f.load(dc.Plan(train(period_ns=1 * MS), p=9))
    f.prepare_replace(dc.Plan(train(period_ns=2 * MS, train_duration_ns=6 * MS), p=9, with_delay=False), n=10)
    assert f.finished and f.staged[0] and len(f.staged[0]) == 3 and f.staged[1] == [1, 1, 1]
    f.prepare_replace(dc.Plan(train(period_ns=2 * MS, train_duration_ns=6 * MS), p=9, with_delay=False), n=3)
    assert not f.finished and len(f.staged[0]) == 3


def test_replace_keeps_the_longest_tail_seen():
    f, _ring = feeder()
    short = dc.Plan(train(period_ns=1 * MS), p=9)
    long_ = dc.Plan(train(period_ns=3_600_000 * MS), p=9)
    f.load(short)
    t0 = f.max_tail_ticks
    assert t0 == short.tail_ticks
    f.prepare_replace(long_, n=4)
    assert f.max_tail_ticks == long_.tail_ticks > t0
    f.prepare_replace(short, n=4)
    assert f.max_tail_ticks == long_.tail_ticks


def test_commit_replace_follows_the_probe():
    def run(probe_values, start=3, tries=3):
        f, ring = feeder()
        f.load(dc.Plan(train(period_ns=1 * MS), p=9))
        new = dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False)
        f.prepare_replace(new, n=4)
        calls = []
        vals = list(probe_values)

        def probe():
            calls.append(1)
            return vals.pop(0)
        sw = f.commit_replace(start, probe, tries=tries)
        return sw, f, len(calls), slots(f, ring), f.addr_of(new.runs[0][0])

    sw, f, n, s, b = run([3])  # the DMA has not passed start: switch there
    assert (sw, f.races, n, f.head) == (3, 0, 1, 7)
    sw, f, n, s, b = run([2])
    assert (sw, f.races, n) == (3, 0, 1)
    sw, f, n, s, b = run([4, 4])  # it read slot 3 already and reads 4 next: write again from 5
    assert (sw, f.races, n, f.head) == (5, 1, 2, 9)
    assert s[5:9] == [b] * 4 and s[9] == 0 and f.cum[4:10] == [5, 6, 7, 8, 9, 9]
    sw, f, n, s, b = run([4, 6, 8])  # keeps racing: at most `tries` probes
    assert (sw, f.races, n) == (9, 3, 3)
    sw, f, n, s, b = run([4, 6, 8], tries=2)
    assert (sw, f.races, n) == (7, 2, 2)
    sw, f, n, s, b = run([28, 28])  # probe at the head (the old 0): start there, not after it
    assert (sw, f.races) == (28, 1) and f.head == 32
    sw, f, n, s, b = run([30, 30])  # probe past the head
    assert sw == 30 and f.head == 34


def test_commit_replace_without_probe_and_with_nothing_staged():
    f, ring = feeder()
    f.load(dc.Plan(train(period_ns=1 * MS), p=9))
    new = dc.Plan(train(period_ns=2 * MS, train_duration_ns=2 * MS), p=9, with_delay=False)
    f.prepare_replace(new, n=0)
    assert f.staged == ([], [])
    probed = []
    assert f.commit_replace(3, lambda: probed.append(1) or 99) == 3
    assert probed == [] and f.head == 3 and slots(f, ring)[3] == 0 and f.pulses_total == 3


def test_replace_convenience_switches_at_start():
    f, ring = feeder()
    f.load(dc.Plan(train(period_ns=1 * MS), p=9))
    new = dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False)
    assert f.replace(new, 5) == 5
    assert f.head == 5 + min(dc.REPLACE_RUN, 27)


# ----------------------------------------------------------------------------------- DAC bus ops
W = pp.DAC_ENTRIES["gp5"]  # a wait op (its routine's address)
W2 = pp.DAC_ENTRIES["gp11"]
M = pp.DAC_MARK_ENTRY
A = pp.DAC_WRITE_ENTRY | 0x123 << 5  # write ops (routine address + payload above bit 5)
B = pp.DAC_WRITE_ENTRY | 0x456 << 5
R = pp.DAC_WRITE_ENTRY | 0x789 << 5
C_ = pp.DAC_WRITE_ENTRY | 0x0AA << 5
D_ = pp.DAC_WRITE_ENTRY | 0x0BB << 5


def test_dac_op_classification():
    for name, e in pp.DAC_ENTRIES.items():
        assert dc.dac_is_wait(e) == name.startswith("gp")
        if name.startswith("gp"):
            assert dc.dac_wait_pin(e) == int(name[2:])
    assert dc.dac_wait_pin(pp.DAC_ENTRIES["gp11"]) == 11 and dc.dac_wait_pin(pp.DAC_ENTRIES["gp0"]) == 0
    assert dc.dac_wait_pin(M) == -1 and dc.dac_wait_pin(pp.DAC_WRITE_ENTRY) == -1 and dc.dac_wait_pin(99) == -1
    assert not dc.dac_is_wait(A) and not dc.dac_is_wait(M)
    assert dc.dac_is_write(A) and dc.dac_is_write(pp.DAC_WRITE_ENTRY | 1 << 5)
    assert not dc.dac_is_write(pp.DAC_WRITE_ENTRY)  # no payload
    assert not dc.dac_is_write((pp.DAC_WRITE_ENTRY + 1) | 1 << 5) and not dc.dac_is_write(W) and not dc.dac_is_write(M)
    assert dc.dac_is_wait(dac_bus.wait_op(board.CH_POS[1])) and dc.dac_is_write(dac_bus.update_ops(0, 1, 2)[0])


def test_dac_batch_len_edges():
    assert dc.dac_batch_len([A, B, M], 0, 3) == 3  # exactly fits: everything
    assert dc.dac_batch_len([A, W, B, M], 0, 4) == 4
    assert dc.dac_batch_len([A, B, M], 1, 2) == 2
    assert dc.dac_batch_len([A, B, C_, W, D_], 0, 4) == 3  # the wait op at the window's last index
    assert dc.dac_batch_len([A, B, C_, D_, W, A], 0, 4) == 4  # the wait op outside the window
    assert dc.dac_batch_len([W, A, B, C_, D_], 0, 4) == 4  # a wait op at the start is not a cut
    assert dc.dac_batch_len([W, A, W, B, C_, D_], 0, 4) == 2
    assert dc.dac_batch_len([W, A, W, B, C_, D_], 1, 4) == 1  # counted from ``start``
    assert dc.dac_batch_len([W, A, B, W, C_, W, D_], 0, 5) == 3  # the last wait op inside the limit
    assert dc.dac_batch_len([A] * 10, 4, 5) == 5


def test_dac_resume_ops_pulled_out_of_range():
    batch = [W, A, B, M]
    assert dc.dac_resume_ops(pp.DAC_NEXT_ENTRY, batch, -1, []) is None
    assert dc.dac_resume_ops(pp.DAC_NEXT_ENTRY, batch, 5, []) is None
    assert dc.dac_resume_ops(pp.DAC_NEXT_ENTRY, batch, 4, [R]) == [R]


def test_dac_resume_ops_inside_a_write_never():
    for pc in range(pp.DAC_WRITE_ENTRY, min(e for n, e in pp.DAC_ENTRIES.items() if n.startswith("gp"))):
        for pulled in range(5):
            assert dc.dac_resume_ops(pc, [W, A, B, M], pulled, [R], prev_last=M) is None


def test_dac_resume_ops_in_an_open_wait():
    batch = [W, A, B, M]
    for pc in (W, W + 1):
        assert dc.dac_resume_ops(pc, batch, 1, [R]) == [W, A, B, M, R]
        assert dc.dac_resume_ops(pc, batch, 2, [R]) is None  # the last pulled word is a write
        assert dc.dac_resume_ops(pc, batch, 0, [R]) is None  # nothing pulled, nothing known before
        assert dc.dac_resume_ops(pc, batch, 0, [R], prev_last=W2) == [W2, W, A, B, M, R]
        assert dc.dac_resume_ops(pc, batch, 0, [R], prev_last=M) is None
    assert dc.dac_resume_ops(W2 + 1, [A, W2], 2, []) == [W2]


def test_dac_resume_ops_after_a_completed_wait():
    batch = [W, A, B, M]
    done = W + 2
    assert dc.dac_resume_ops(done, batch, 1, [R]) is None  # its writes must follow at once
    assert dc.dac_resume_ops(done, batch, 4, [R]) == [R]  # after a mark: free
    assert dc.dac_resume_ops(done, batch, 3, [R]) == [M, R]  # a write then a mark: free
    assert dc.dac_resume_ops(done, [W, M], 1, []) == [M]  # a wait with no write after it
    assert dc.dac_resume_ops(done, [W], 1, []) == []  # nothing follows
    assert dc.dac_resume_ops(W2 + 2, [W2], 1, [A]) is None  # the last gp routine's jmp (address 31)
    assert W2 + 2 == 31


def test_dac_resume_ops_at_out_pc():
    batch = [W, A, B, M]
    out_pc = pp.DAC_NEXT_ENTRY + 1
    assert dc.dac_resume_ops(out_pc, batch, 0, [R]) is None  # nothing pulled
    assert dc.dac_resume_ops(out_pc, batch, 1, [R]) == [W, A, B, M, R]  # the wait op again
    assert dc.dac_resume_ops(out_pc, batch, 2, [R]) is None  # a write bound to the wait before it
    assert dc.dac_resume_ops(out_pc, batch, 3, [R]) is None  # a write bound to the write before it
    assert dc.dac_resume_ops(out_pc, batch, 4, [R]) == [M, R]
    assert dc.dac_resume_ops(out_pc, [A, B], 1, [], prev_last=W) is None  # bound to prev_last
    assert dc.dac_resume_ops(out_pc, [A, B], 1, [], prev_last=M) == [A, B]
    assert dc.dac_resume_ops(out_pc, [A, B], 1, []) == [A, B]
    assert dc.dac_resume_ops(out_pc, [A, B], 0, [], prev_last=W) == [W, A, B]  # cur = prev_last, nothing before it
    assert dc.dac_resume_ops(out_pc, [M, A, B], 2, [], prev_last=W) == [A, B]  # prev is the mark, not prev_last


def test_dac_resume_ops_at_the_mark():
    batch = [M, W, A, B, M]
    assert dc.dac_resume_ops(M, batch, 0, [R]) == [M, W, A, B, M, R]  # never ran
    assert dc.dac_resume_ops(M, batch, 1, [R]) == [M, W, A, B, M, R]  # the mark's push again
    assert dc.dac_resume_ops(M, batch, 5, []) == [M]
    assert dc.dac_resume_ops(M, batch, 2, [R]) is None  # at the mark's address with a wait pulled last
    assert dc.dac_resume_ops(M, batch, 0, [R], prev_last=M) == [M, M, W, A, B, M, R]
    assert dc.dac_resume_ops(M, batch, 0, [R], prev_last=A) is None


def test_dac_resume_ops_at_pull():
    pull = pp.DAC_NEXT_ENTRY
    batch = [W, A, B, M]
    assert dc.dac_resume_ops(pull, batch, 0, [R]) == [W, A, B, M, R]
    assert dc.dac_resume_ops(pull, batch, 1, [R]) is None
    assert dc.dac_resume_ops(pull, batch, 2, [R]) is None
    assert dc.dac_resume_ops(pull, batch, 3, [R]) == [M, R]
    assert dc.dac_resume_ops(pull, [A, B], 0, [], prev_last=W) is None  # bound to the word before the batch
    assert dc.dac_resume_ops(pull, [A, B], 0, [], prev_last=B) is None
    assert dc.dac_resume_ops(pull, [A, B], 0, [], prev_last=M) == [A, B]
    assert dc.dac_resume_ops(pull, [W], 1, [A]) is None  # bound to a write not yet handed over
    assert dc.dac_resume_ops(pull, [B], 1, [W, A]) == [W, A]


def test_dac_resume_ops_outside_the_program():
    assert dc.dac_resume_ops(32, [W, A, B, M], 4, []) is None
    assert dc.dac_resume_ops(-1, [W, A, B, M], 4, []) is None


def test_dac_drop_channels_group_boundaries():
    g5 = [W, A, B]
    g11 = [W2, C_, D_]
    # writes before any wait are kept; a wait of a dropped pin drops its writes until the next wait or
    # mark; a wait of a kept pin right after a dropped group is kept with its writes
    ops = [A] + g5 + g11 + [M] + g11 + g5 + [M]
    assert dc.dac_drop_channels(ops, (5,)) == [A] + g11 + [M] + g11 + [M]
    assert dc.dac_drop_channels(ops, (11,)) == [A] + g5 + [M] + g5 + [M]
    assert dc.dac_drop_channels(ops, (5, 11)) == [A, M, M]
    assert dc.dac_drop_channels([W, M, A], (5,)) == [M, A]  # a mark ends the dropped group


# ------------------------------------------------- Feeder with multi-entry blocks and shared idle


def expected_slots(plan, addr_of, n):
    """The first ``n`` ring entries of ``plan`` written out from its structure (lead, lead_idle, runs,
    the shared idle block): a reference walk that does not use the Feeder or the Cursor."""
    out = []
    step = 4 * plan.p

    def block(b):
        return [addr_of(b) + step * e for e in range(b.entries)]
    first = True
    if plan.lead is not None:
        out += block(plan.lead) + [addr_of(plan.idle)] * plan.lead_idle
    cycle = 0
    while len(out) < n and (not plan.repeats or cycle < plan.repeats):
        for run_i, (b, count, k) in enumerate(plan.runs):
            for _ in range(count):
                if first and plan.lead_replaces:
                    first = False
                    continue
                first = False
                out += block(b) + ([addr_of(plan.idle)] * k if k else [])
        cycle += 1
    return out[:n]


@pytest.mark.parametrize("kw, margin", [
    (dict(period_ns=20 * S), 4),  # one run of a two-entry block, nothing shared
    (dict(period_ns=20 * S), 5),  # the load stops inside a block: the top-up must resume there
    (dict(period_ns=3600 * S), 16),  # a three-entry block + 184 shared idle entries per pulse
    (dict(period_ns=MS, train_delay_ns=40 * S), 7),  # a two-entry lead + 1 shared idle entry
    (dict(period_ns=MS, train_delay_ns=100 * S), 7),  # a two-entry lead + 4 shared idle entries
    (dict(period_ns=MS, burst_pulses=3, interburst_ns=5 * MS), 5),  # two runs, endless
])
def test_feeder_writes_every_entry_of_long_idle_plans(kw, margin):
    plan = dc.Plan(train(**kw), p=9)
    rl = dc.RING_LEN
    ring = array("I", [0xDEAD] * rl)
    addr_of = addresses()
    f = dc.Feeder(ring, 0, rl, addr_of, margin=margin)
    head = f.load(plan)
    want = expected_slots(plan, addr_of, 3 * rl)
    got = list(ring[:head])
    assert got == want[:head]
    # two top-ups: the ring wraps, every entry in order, none skipped or repeated
    stream = got
    for _ in range(2):
        h0 = f.head
        h1 = f.fill(h0 - 3)
        assert h1 > h0
        stream += [ring[i % rl] for i in range(h0, h1)]
    assert stream == want[:len(stream)]
    done = []
    total = 0
    for v in stream:  # pulses complete with the last entry of a block that holds a pulse
        for blk in plan.blocks:
            if v == addr_of(blk) + 4 * plan.p * (blk.entries - 1):
                total += blk.pulses
        done.append(total)
    n = len(stream)
    for i in range(n - (rl - margin), n + 1):
        assert f.pulses_after(i) == (done[i - 1] if i else 0)


def test_feeder_multi_entry_block_pulse_counts():
    plan = dc.Plan(train(period_ns=20 * S), p=9)
    f, ring = feeder(ring_len=32, margin=5)
    a = f.addr_of(plan.runs[0][0])
    assert f.load(plan) == 27
    assert slots(f, ring)[:27] == [a, a + 36] * 13 + [a]
    assert f.cum[:28] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 13]
    assert f.fill(1) == 28 and slots(f, ring)[27] == a + 36 and f.cum[27] == 14


def test_prepare_replace_walks_multi_entry_blocks():
    f, ring = feeder()
    f.load(dc.Plan(train(period_ns=MS), p=9))
    new = dc.Plan(train(period_ns=20 * S), p=9, with_delay=False)
    b = f.addr_of(new.runs[0][0])
    f.prepare_replace(new, n=5)
    assert f.staged == ([b, b + 36, b, b + 36, b], [0, 1, 0, 1, 0])
    assert f.commit_replace(4) == 4
    assert slots(f, ring)[4:10] == [b, b + 36, b, b + 36, b, 0]
    assert f.cum[3:10] == [4, 4, 5, 5, 6, 6, 6]
    assert f.fill(8) == 8 + 28 and slots(f, ring)[9] == b + 36 and f.cum[9] == 7  # resumes inside the block
    long_ = dc.Plan(train(period_ns=3600 * S), p=9, with_delay=False)
    c, idle = f.addr_of(long_.runs[0][0]), f.addr_of(long_.idle)
    f.prepare_replace(long_, n=6)
    assert f.staged == ([c, c + 36, c + 72, idle, idle, idle], [0, 0, 1, 0, 0, 0])


def test_commit_replace_counts_on_from_start_one_and_from_zero_after_a_wrap():
    f, _ring = feeder()
    f.load(dc.Plan(train(period_ns=MS), p=9))
    f.prepare_replace(dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False), n=2)
    f.commit_replace(1)
    assert f.cum[0:4] == [1, 2, 3, 3]
    # margin 1: the load's 0 sits in the last slot, whose count is the whole load's
    f, _ring = feeder(ring_len=32, margin=1)
    f.load(dc.Plan(train(period_ns=MS), p=9))
    assert f.head == 31 and f.cum[31] == 31
    f.prepare_replace(dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False), n=2)
    assert f.commit_replace(0) == 0
    assert f.cum[0:3] == [1, 2, 2] and f.pulses_total == 2


def test_pulses_after_zero_is_zero_after_the_ring_wraps():
    f, _ring = feeder()
    f.load(dc.Plan(train(period_ns=MS), p=9))
    f.fill(20)
    assert f.cum[31] != 0
    assert f.pulses_after(0) == 0 and f.pulses_after(-5) == 0 and f.pulses_after(32) == 32


def test_replace_passes_the_probe_on():
    f, ring = feeder()
    f.load(dc.Plan(train(period_ns=MS), p=9))
    new = dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False)
    seen = [6, 6]
    assert f.replace(new, 3, lambda: seen.pop(0)) == 7 and f.races == 1


def test_commit_replace_probes_three_times_by_default():
    f, _ring = feeder()
    f.load(dc.Plan(train(period_ns=MS), p=9))
    f.prepare_replace(dc.Plan(train(period_ns=2 * MS), p=9, with_delay=False), n=4)
    vals = [4, 6, 8]
    assert f.commit_replace(3, lambda: vals.pop(0)) == 9 and f.races == 3 and vals == []


def test_commit_replace_stores_the_first_entry_first():
    f, ring = feeder()
    f.load(dc.Plan(train(period_ns=MS), p=9))
    new = dc.Plan(train(period_ns=20 * S), p=9, with_delay=False)
    b = f.addr_of(new.runs[0][0])
    f.prepare_replace(new, n=3)
    writes = []

    class Rec(array):
        def __setitem__(self, i, v):
            writes.append((i, v))
            super().__setitem__(i, v)
    f.ring = Rec("I", ring)
    f.commit_replace(3)
    assert writes[0] == (f.base + 3, b)
    assert [v for i, v in writes if i == f.base + 3] == [b]


def test_stop_nulls_from_the_next_slot_onwards_in_ring_order():
    f, ring = feeder()
    f.load(dc.Plan(train(period_ns=MS), p=9))
    order = []

    class Rec(array):
        def __setitem__(self, i, v):
            order.append(i - f.base)
            super().__setitem__(i, v)
    f.ring = Rec("I", ring)
    f.stop(70)  # slot 70 % 32 = 6 first, then 7, 8, ... around the ring
    assert order == [(6 + s) % 32 for s in range(32)]
    order.clear()
    f.stop()  # default: from slot 0
    assert order == list(range(32))


def test_dac_resume_ops_at_out_pc_with_only_the_word_before_the_batch():
    out_pc = pp.DAC_NEXT_ENTRY + 1
    # nothing pulled from this batch: the word pulled last is prev_last and what came before it is
    # unknown, so it is played again (it is never compared with itself)
    assert dc.dac_resume_ops(out_pc, [B], 0, [], prev_last=A) == [A, B]


@pytest.mark.parametrize("period_s, k", [(60, 1), (80, 2)])
def test_plan_sequence_plays_each_shared_idle_entry_once(period_s, k):
    from itertools import islice
    t = train(period_ns=period_s * S, train_duration_ns=3 * period_s * S)
    plan = dc.Plan(t, p=9)
    (b, n, kk), = plan.runs
    assert (t.repeats, n, kk) == (3, 1, k)
    got = list(islice(plan.sequence(), 20))  # bounded: a wrong count could loop for ever
    assert got == ([b] + [plan.idle] * k) * 3
    f, ring = feeder(ring_len=64, margin=4)
    f.load(dc.Plan(train(period_ns=MS), p=9))
    f.prepare_replace(dc.Plan(t, p=9, with_delay=False), n=20)
    staged, dones = f.staged
    assert len(staged) == 3 * (3 + k) and f.finished
    assert dones == ([0, 0, 1] + [0] * k) * 3


def test_a_fresh_feeder_has_nothing_queued():
    f, ring = feeder()
    assert (f.head, f.pulses_total, f.finished, f.max_tail_ticks, f.staged, f.races) == (0, 0, True, 0, None, 0)
    assert f.cum == [0] * 32 and f.pulses_after(0) == 0
    assert f.fill(5) == 0 and list(ring) == [0xDEAD] * len(ring)  # finished: fill writes nothing
    with pytest.raises(ValueError, match=r"^replace needs the stream's words per entry \(1\)$"):
        f.prepare_replace(dc.Plan(train(period_ns=MS), p=9))


# ------------------------------------- custom sequences: plan_for, the jit Feeder and max_ahead
def seq_train(n, p_ms=2, **kw):
    """A train playing a custom sequence of ``n`` pulses ``p_ms`` ms apart, once."""
    from seq_trains import sequence_train

    onsets = [i * p_ms * MS for i in range(n)]
    amps = [100 + 10 * (i % 5) for i in range(n)]
    params = P.complete(dict(phase1_ns=100_000, phase2_ns=100_000, period_ns=2 * MS, amplitude_ua=3000,
                             sequence_pulses=n, **kw))
    return sequence_train(params, onsets, amps)


def test_plan_for_chooses_by_the_sequence_and_passes_p():
    from firmware.seq_stream import SequencePlan

    plain = train(period_ns=1 * MS)
    assert type(dc.plan_for(plain)) is dc.Plan and dc.plan_for(plain).p == dc.ENTRY_WORDS
    assert dc.plan_for(plain, 9).p == 9 and dc.plan_for(plain, p=9).runs[0][0].entries == 1
    s = seq_train(4)
    sp = dc.plan_for(s, 12)
    assert type(sp) is SequencePlan and sp.p == 12 and sp.jit and sp.max_ahead == 126
    assert dc.plan_for(s).p == dc.ENTRY_WORDS
    del plain.sequence  # an object without the attribute: a regular plan
    assert type(dc.plan_for(plain)) is dc.Plan


def seq_feeder(ring_len=dc.RING_LEN, margin=dc.RING_MARGIN, base=2):
    ring = array("I", [0xDEAD] * (ring_len + base + 1))
    return dc.Feeder(ring, base, ring_len, addresses(), margin=margin), ring


def test_load_and_fill_of_a_sequence_stay_within_max_ahead():
    plan = dc.plan_for(seq_train(400))
    f, ring = seq_feeder()
    assert f.load(plan) == plan.max_ahead == 126 and f.jit and f.max_ahead == 126
    assert not f.finished and f.pulses_total == 126 and f.cum[125] == 126
    assert slots(f, ring)[126] == 0 and all(slots(f, ring)[:126]) and f.cum[126] == 126
    assert slots(f, ring)[127:] == [0] * (dc.RING_LEN - 127)
    assert f.fill(0) == 126 and f.fill(10) == 136 and f.head == 136 and f.pulses_total == 136
    assert slots(f, ring)[136] == 0 and f.cum[135] == 136
    # the ring's own bound when it is the tighter one
    g, ring2 = seq_feeder(ring_len=64, margin=4)
    assert g.load(dc.plan_for(seq_train(400))) == 60
    assert g.fill(7) == 67
    # a regular plan after a sequence: the ring is the bound again
    f.load(dc.Plan(train(period_ns=1 * MS), p=16))
    assert not f.jit and f.max_ahead == dc.RING_LEN and f.head == dc.RING_LEN - dc.RING_MARGIN


def test_a_short_sequence_finishes_in_load():
    plan = dc.plan_for(seq_train(5))
    f, ring = seq_feeder()
    head = f.load(plan)
    assert f.finished and head >= 5 and f.pulses_total == 5
    assert f.cum[head] == 5 and f.pulses_after(head + 1) == 5  # the slot of the 0: every pulse played
    assert slots(f, ring)[head] == 0 and all(slots(f, ring)[:head])
    ring[f.base + head] = 0xBEEF
    assert f.fill(head) == head and ring[f.base + head] == 0xBEEF  # finished: nothing written


def test_prepare_replace_into_a_sequence_stages_pool_entries():
    f, ring = seq_feeder()
    f.load(dc.Plan(train(period_ns=2 * MS), p=16))
    plan = dc.plan_for(seq_train(200))
    f.prepare_replace(plan, n=500)
    vals, dones = f.staged
    assert f.jit and f.max_ahead == 126
    assert len(vals) == min(dc.RING_LEN - dc.RING_MARGIN - 1, 126) == 126
    pool = [f.addr_of(c) for c in plan.chunks]
    # entry e of the pool is entry e % 16 of chunk e // 16, 64 bytes (16 words) apart
    assert vals[:20] == [pool[e // 16] + 64 * (e % 16) for e in range(20)]
    assert dones == [1] * 126  # one pulse completed by each entry


def test_dac_drop_channels_without_a_wait_on_the_pins_is_a_copy():
    ops = [A, W2, C_, M, W2, D_, M]
    out = dc.dac_drop_channels(ops, (5,))  # nothing waits on GP5
    assert out == ops and out is not ops
    out.append(A)
    assert ops == [A, W2, C_, M, W2, D_, M]
    assert dc.dac_drop_channels(ops, (5, 11)) == [A, M, M]  # one of the pins has waits: dropped
    assert dc.dac_drop_channels(ops, (11, 5)) == [A, M, M]
    assert dc.dac_drop_channels([W, A, W2, B, M], (11,)) == [W, A, M]
    assert dc.dac_drop_channels([], (5,)) == []
