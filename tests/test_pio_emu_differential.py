"""Differential tests: picostim's PIO emulator (acceleration on and off) against pioemu.

pioemu (PyPI rp2040-pio-emulator) is an independent cycle-by-cycle model. Random programs are drawn
from the subset where pioemu is known to follow the datasheet (see /work/shared/TOOLING.md): no IRQ,
no EXEC, no ``.side_set opt``, no ``mov ::``, no ``mov status``, no pindirs writes, no
``pull ifempty``/``push iffull`` (pioemu skips their delay), no autopull/autopush (refill timing
differs, see pio_emu's module docstring), ``in_base = 0`` and ``mov pins`` only with out_base 0 /
out_count 32. Edges are compared as (cycle, pin, level) over a bounded number of cycles.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pioemu = pytest.importorskip("pioemu")
from pioemu import State, emulate  # noqa: E402

from picostim.virtual.pio_emu import PioSystem, PioUnsupported  # noqa: E402

try:
    from firmware import pio_programs as _P

    STIM = (list(_P.OPCODES), _P.WRAP_TARGET, _P.WRAP, _P.SEGMENT_ENTRY, getattr(_P, "TRIGGER_ENTRY", 0))
except Exception:  # firmware program not generated yet: assemble the contract's program
    import adafruit_pioasm

    _SRC = """
.program stim
    wait 1 pin 0
.wrap_target
    mov x, null
    pull noblock
    out pins, 4
    out x, 28
delay:
    jmp x-- delay
.wrap
"""
    STIM = (list(adafruit_pioasm.assemble(_SRC)), 1, 5, 1, 0)


def pioemu_edges(opcodes, words, n_cycles, *, start_pc=0, pin_dirs=0, input_fn=None, **cfg):
    """Run pioemu to ``n_cycles``; return (edge list [(cycle, pin, level)], errored?)."""
    state = State(program_counter=start_pc, transmit_fifo=deque(words), pin_directions=pin_dirs)
    kw = dict(cfg)
    if input_fn is not None:
        kw["input_source"] = input_fn
    edges = []
    errored = False
    gen = emulate(list(opcodes), stop_when=lambda _op, s: s.clock >= n_cycles, initial_state=state, **kw)
    try:
        for before, after in gen:
            diff = before.pin_values ^ after.pin_values
            while diff:
                low = diff & -diff
                p = low.bit_length() - 1
                edges.append((before.clock, p, (after.pin_values >> p) & 1))
                diff ^= low
    except IndexError:  # PC left the program
        errored = True
    return edges, errored


def our_edges(opcodes, words, n_cycles, *, accelerate, start_pc=0, wrap_target=0, wrap=0, pindirs=0xFFFFFFFF,
              inputs=(), fifo_depth=4, **cfg):
    s = PioSystem(accelerate=accelerate)
    sm = s.add_state_machine(opcodes, wrap_target, wrap, fifo_depth=fifo_depth, **cfg)
    s.set_pindirs(0xFFFFFFFF, pindirs)
    s.set_inputs(inputs)
    if words:
        s.dma(sm).load_words(words)
    s.enable([sm], start_pc=start_pc)
    errored = False
    try:
        s.run_until(n_cycles)
    except PioUnsupported:
        errored = True
    return s.level_changes(), errored, s, sm


def _norm(edges):
    return sorted(edges)


# ------------------------------------------------------------------ random program strategy
@st.composite
def programs(draw):
    ss_count = draw(st.integers(0, 2))
    dmax = (1 << (5 - ss_count)) - 1
    wide = draw(st.booleans())  # out_base 0 / out_count 32: lets us use `mov pins`
    if wide:
        out_base, out_count = 0, 32
    else:
        out_base = draw(st.integers(0, 6))
        out_count = draw(st.integers(0, 6))
    set_base = draw(st.integers(0, 6))
    set_count = draw(st.integers(0, 5))
    ss_base = draw(st.integers(0, 8))
    n = draw(st.integers(1, 8))

    def delay_ss():
        d = draw(st.one_of(st.just(0), st.integers(0, min(dmax, 3)), st.integers(0, dmax)))
        s = draw(st.integers(0, (1 << ss_count) - 1)) if ss_count else 0
        return ((s << (5 - ss_count)) | d) << 8

    ops = []
    for _ in range(n):
        fam = draw(st.sampled_from(["jmp", "jmp", "wait", "in", "out", "out", "push", "pull", "pull", "mov", "set"]))
        if fam == "jmp":
            op = 0x0000 | (draw(st.integers(0, 7)) << 5) | draw(st.integers(0, n - 1))
        elif fam == "wait":
            op = 0x2000 | (draw(st.integers(0, 1)) << 7) | (draw(st.integers(0, 1)) << 5) | draw(st.integers(0, 9))
        elif fam == "in":
            op = 0x4000 | (draw(st.sampled_from([0, 1, 2, 3, 6, 7])) << 5) | draw(st.integers(0, 31))
        elif fam == "out":
            op = 0x6000 | (draw(st.sampled_from([0, 1, 2, 3, 5, 6])) << 5) | draw(st.integers(0, 31))
        elif fam == "push":
            op = 0x8000 | (draw(st.integers(0, 1)) << 5)
        elif fam == "pull":
            op = 0x8080 | (draw(st.integers(0, 1)) << 5)
        elif fam == "mov":
            dsts = [0, 1, 2, 5, 6, 7] if wide else [1, 2, 5, 6, 7]
            op = 0xA000 | (draw(st.sampled_from(dsts)) << 5) | (draw(st.integers(0, 1)) << 3) | draw(
                st.sampled_from([0, 1, 2, 3, 6, 7]))
        else:
            op = 0xE000 | (draw(st.sampled_from([0, 1, 2])) << 5) | draw(st.integers(0, 31))
        ops.append(op | delay_ss())
    wrap = draw(st.integers(1, n - 1)) if n > 1 else 0
    wrap_target = draw(st.integers(0, n - 1))
    start_pc = draw(st.integers(0, n - 1))
    cfg = dict(out_base=out_base, out_count=out_count, set_base=set_base, set_count=set_count,
               side_set_base=ss_base, side_set_count=ss_count, jmp_pin=draw(st.integers(0, 9)),
               out_shift_right=draw(st.booleans()), in_shift_right=draw(st.booleans()))
    return ops, wrap_target, wrap, start_pc, cfg


word_values = st.one_of(st.integers(0, 15), st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF),
                        st.integers(0, 40).map(lambda n: n << 4 | 5))


def _pioemu_cfg(cfg, wrap_target, wrap):
    return dict(out_base=cfg["out_base"], out_count=cfg["out_count"], set_base=cfg["set_base"],
                set_count=cfg["set_count"], side_set_base=cfg["side_set_base"],
                side_set_count=cfg["side_set_count"], jmp_pin=cfg["jmp_pin"],
                shift_osr_right=cfg["out_shift_right"], shift_isr_right=cfg["in_shift_right"],
                wrap_target=wrap_target, wrap_top=wrap)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs(), words=st.lists(word_values, max_size=12), n_cycles=st.integers(1, 300))
def test_random_programs_match_pioemu(prog, words, n_cycles):
    ops, wt, wrap, start_pc, cfg = prog
    ref, ref_err = pioemu_edges(ops, words, n_cycles, start_pc=start_pc, **_pioemu_cfg(cfg, wt, wrap))
    fast, fast_err, *_ = our_edges(ops, words, n_cycles, accelerate=True, start_pc=start_pc,
                                   wrap_target=wt, wrap=wrap, **cfg)
    slow, slow_err, *_ = our_edges(ops, words, n_cycles, accelerate=False, start_pc=start_pc,
                                   wrap_target=wt, wrap=wrap, **cfg)
    assert fast_err == slow_err == ref_err
    assert _norm(slow) == _norm(ref)
    assert _norm(fast) == _norm(ref)


# ------------------------------------------------------------------ the stim program
seg_words = st.lists(
    st.tuples(st.integers(0, 15), st.one_of(st.integers(0, 8), st.integers(0, 60))).map(
        lambda pc: (pc[1] << 4) | pc[0]),
    min_size=1, max_size=14)


@settings(max_examples=80, deadline=None)
@given(words=seg_words, extra=st.integers(0, 40), depth=st.sampled_from([4, 8]))
def test_stim_program_matches_pioemu(words, extra, depth):
    ops, wt, wrap, seg_entry, _trig = STIM
    n = sum((w >> 4) + 5 for w in words) + 3 + extra
    ref, _ = pioemu_edges(ops, words, n, start_pc=seg_entry, out_base=0, out_count=4,
                          wrap_target=wt, wrap_top=wrap)
    for acc in (True, False):
        got, err, s, sm = our_edges(ops, words, n, accelerate=acc, start_pc=seg_entry, wrap_target=wt,
                                    wrap=wrap, out_base=0, out_count=4, fifo_depth=depth)
        assert not err
        assert _norm(got) == _norm(ref)
        assert sm.words_pulled == min(len(words), sm.words_pulled)


@settings(max_examples=40, deadline=None)
@given(words=seg_words, trig_at=st.integers(0, 50), glitch=st.booleans())
def test_stim_trigger_wait_matches_pioemu(words, trig_at, glitch):
    """Trigger entry: `wait 1 pin 0` with in_base 0 (pioemu ignores in_base), outputs at pins 2..5."""
    ops, wt, wrap, _seg, trig_entry = STIM
    n = trig_at + sum((w >> 4) + 5 for w in words) + 20
    changes = [(trig_at, 0, 1)]
    if glitch:
        changes = [(max(0, trig_at - 7), 0, 1), (max(0, trig_at - 7) + 2, 0, 0)] + [(trig_at + 3, 0, 1)]

    def level(clock: int) -> int:
        v = 0
        for c, _p, lv in changes:
            if c <= clock:
                v = lv
        return v

    level.__annotations__ = {"clock": int, "return": int}  # pioemu inspects the real type
    ref, _ = pioemu_edges(ops, words, n, start_pc=trig_entry, pin_dirs=0b111100, input_fn=level,
                          out_base=2, out_count=4, wrap_target=wt, wrap_top=wrap)
    ref = [e for e in ref if e[1] >= 2]
    for acc in (True, False):
        got, err, *_ = our_edges(ops, words, n, accelerate=acc, start_pc=trig_entry, wrap_target=wt,
                                 wrap=wrap, out_base=2, out_count=4, in_base=0, pindirs=0b111100,
                                 inputs=changes)
        got = [e for e in got if e[1] >= 2]
        assert not err
        assert _norm(got) == _norm(ref)
