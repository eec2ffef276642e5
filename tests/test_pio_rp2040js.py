"""Differential tests: picostim's PIO emulator (acceleration on and off) against npm ``rp2040js``.

rp2040js (Wokwi's RP2040 emulator, pinned to 1.4.1 in tests/rp2040js/package.json) is a second model
of the PIO, independent of both picostim's ``pio_emu`` and pioemu. Its published package cannot boot
firmware, so ``tests/rp2040js/run_pio.mjs`` drives one state machine of ``rp2040.pio[0]`` directly:
it writes the opcodes to INSTR_MEM, PINCTRL/EXECCTRL/SHIFTCTRL/CLKDIV (divider 1) from the program's
config, restarts the SM and executes ``jmp <entry>`` through SMx_INSTR (as ``pio_sm_init`` does),
then steps it and reports the pin edges as JSON. Many cases run in one ``node`` invocation.

Known gap, and how it is kept out of the comparison: rp2040js advances ``sm.cycles`` by 1 + delay per
instruction but not while an instruction is stalled. The stim program never stalls (``pull noblock``
on an empty FIFO copies X, which ``mov x, null`` zeroed), the script stops a case at the first stall
and reports it, and every test asserts ``stalled_at is None``, so rp2040js's clock is exact over the
whole window. rp2040js has no FJOIN (4-deep TX FIFO); the script tops the FIFO up after every step
like a zero-latency DMA, and reports any PULL that found it empty while words were still pending
(asserted never to happen), so FIFO depth cannot change the edges.

End of the stream: the window runs ``TAIL`` cycles past the end of the last segment. Both models
then execute the underrun path (``pull noblock`` on an empty FIFO -> X = 0 -> pins idle, N = 0,
5-cycle loops); the tail is compared too (edges, pulled/empty-pull/instruction counters).

Run ``npm ci --prefix tests/rp2040js`` once (the Makefile's venv rule does); without
tests/rp2040js/node_modules these tests are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import board
from firmware import pio_programs as P
from firmware import pulse_engine as pe
from picostim.virtual.pio_emu import PioSystem
from protocol import params as pp

HERE = Path(__file__).resolve().parent / "rp2040js"
SCRIPT = HERE / "run_pio.mjs"
PINNED = "1.4.1"

pytestmark = pytest.mark.skipif(
    not (HERE / "node_modules" / "rp2040js").is_dir(),
    reason="rp2040js not installed: run `npm ci --prefix tests/rp2040js` (make's venv rule does)",
)

TAIL = 23  # cycles compared after the stream's last segment: the underrun (idle) loop


def stim_program(ch: int = 0) -> dict:
    """The firmware's stim program and channel ``ch``'s SM config, as run_pio.mjs takes it."""
    return dict(opcodes=list(P.OPCODES), wrap_target=P.WRAP_TARGET, wrap=P.WRAP, entry=P.SEGMENT_ENTRY,
                out_base=board.CH_OUT_BASE[ch], out_count=board.CH_OUT_COUNT[ch],
                out_shift_right=P.OUT_SHIFT_RIGHT, autopull=P.AUTO_PULL, pull_threshold=P.PULL_THRESHOLD,
                in_shift_right=P.STIM_IN_SHIFT_RIGHT)


# cycles from the segment entry to the program's one pin write (`out pins, 4`)
FIRST_WRITE = next(i for i, op in enumerate(P.OPCODES) if op >> 13 == 3 and (op >> 5) & 7 == 0) - P.SEGMENT_ENTRY


def rp2040js(cases: list[dict]) -> list[dict]:
    """Run cases ``{"words", "cycles", "program"}`` in one node process; one result per case."""
    node = shutil.which("node")
    assert node, "node is not on PATH but tests/rp2040js/node_modules exists"
    req = {"program": stim_program(0), "cases": cases}
    out = subprocess.run([node, str(SCRIPT)], input=json.dumps(req), capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["rp2040js"] == PINNED
    assert len(res["results"]) == len(cases)
    return res["results"]


def picostim(prog: dict, words: list[int], n_cycles: int, accelerate: bool) -> dict:
    """The same run on picostim's PioSystem: joined 8-deep FIFO fed by its DMA model."""
    s = PioSystem(accelerate=accelerate)
    sm = s.add_state_machine(prog["opcodes"], prog["wrap_target"], prog["wrap"], out_base=prog["out_base"],
                             out_count=prog["out_count"], out_shift_right=prog["out_shift_right"],
                             in_shift_right=prog["in_shift_right"], autopull=prog["autopull"],
                             pull_threshold=prog["pull_threshold"], fifo_depth=pe.TX_FIFO_WORDS)
    mask = ((1 << prog["out_count"]) - 1) << prog["out_base"]
    s.set_pindirs(mask, mask)
    s.dma(sm).load_words(words)
    s.enable([sm], start_pc=prog["entry"])
    s.run_until(n_cycles)
    edges = [list(e) for e in s.level_changes()]
    return dict(edges=edges, instructions=sm.instructions, words_pulled=sm.words_pulled,
                empty_pulls=sm.empty_pulls, stall_cycles=sm.stall_cycles)


def expected_edges(prog: dict, words: list[int]) -> list[list[int]]:
    """The contract (docs/ARCHITECTURE.md): word k's pins are written at FIRST_WRITE + the sum of the
    earlier segments (N + 5 each); after the last word the FIFO is empty and the pins go idle."""
    edges = []
    t, prev = FIRST_WRITE, 0
    pin_mask = (1 << prog["out_count"]) - 1
    for w in list(words) + [0]:
        pins = w & pin_mask
        for b in range(prog["out_count"]):
            if (pins ^ prev) >> b & 1:
                edges.append([t, prog["out_base"] + b, pins >> b & 1])
        prev = pins
        t += (w >> pe.COUNT_SHIFT) + pe.OVERHEAD
    return sorted(edges)


def window(words: list[int]) -> int:
    return FIRST_WRITE + pe.words_ticks(words) + TAIL


def compare(cases: list[dict]) -> int:
    """Run all cases on rp2040js (one process) and on picostim (both modes); return cycles compared."""
    results = rp2040js(cases)
    total = 0
    for i, (case, ref) in enumerate(zip(cases, results)):
        prog, words, n = case["program"], case["words"], case["cycles"]
        ctx = f"case {i}: words={[hex(w) for w in words]} cycles={n} out_base={prog['out_base']}"
        assert ref["stalled_at"] is None, ctx  # rp2040js's clock would stop counting
        assert ref["underrun_with_words_pending"] is None, ctx
        assert ref["end"] == n, ctx  # no instruction straddles the window end (the last is 1 cycle)
        assert ref["words_pulled"] == len(words), ctx
        assert ref["edges"] == expected_edges(prog, words), ctx
        for acc in (True, False):
            got = picostim(prog, words, n, acc)
            assert got["stall_cycles"] == 0, ctx
            assert got["edges"] == ref["edges"], f"{ctx} accelerate={acc}"
            for k in ("instructions", "words_pulled", "empty_pulls"):
                assert got[k] == ref[k], f"{ctx} accelerate={acc}: {k} {got[k]} != {ref[k]}"
        total += n
    return total


# ------------------------------------------------------------------ pins, version
def test_rp2040js_is_pinned_exactly():
    pkg = json.loads((HERE / "package.json").read_text())
    assert pkg["dependencies"]["rp2040js"] == PINNED
    lock = HERE / "package-lock.json"
    if lock.exists():
        assert json.loads(lock.read_text())["packages"]["node_modules/rp2040js"]["version"] == PINNED


# ------------------------------------------------------------------ build_train streams
US = 1000
# Periods leave the board dead time (1 µs) after each pulse; the engine also puts it between phases
# (an interphase below it is realised as it) and before RECOVERY.
TRAINS = {
    "cathodic_symmetric": dict(phase1_ns=200, phase2_ns=200, period_ns=4 * US),
    "anodic_first": dict(phase1_ns=160, phase2_ns=240, period_ns=3 * US, polarity=pe.ANODIC_FIRST),
    "interphase": dict(phase1_ns=200, interphase_ns=80, phase2_ns=400, period_ns=5 * US),
    "recovery": dict(phase1_ns=120, phase2_ns=120, recovery_ns=640, period_ns=4 * US),
    "interphase_recovery_anodic": dict(phase1_ns=48, interphase_ns=40, phase2_ns=96, recovery_ns=200,
                                       period_ns=4 * US, polarity=pe.ANODIC_FIRST),
    "minimum_segments": dict(phase1_ns=40, interphase_ns=40, phase2_ns=40, recovery_ns=40, period_ns=3_200),
    "burst": dict(phase1_ns=200, interphase_ns=40, phase2_ns=200, period_ns=2_500, burst_pulses=3,
                  interburst_ns=6 * US),
    "burst_anodic_recovery": dict(phase1_ns=96, phase2_ns=192, recovery_ns=400, period_ns=4 * US,
                                  burst_pulses=4, interburst_ns=2 * US, polarity=pe.ANODIC_FIRST),
    "train_delay_duration": dict(phase1_ns=200, phase2_ns=200, period_ns=3 * US, train_delay_ns=3 * US,
                                 train_duration_ns=9 * US),
    "asymmetric_long_phase2": dict(phase1_ns=104, phase2_ns=1600, recovery_ns=80, period_ns=6 * US),
}
MIN_CYCLES = 6000  # stream at least this many ticks per parameter set (a few thousand cycles)


def train_stream(params: dict) -> list[int]:
    """The words the board's DMA sends: the delay, then cycles of `runs` (repeats, or enough cycles to
    fill MIN_CYCLES when the train runs until stopped)."""
    t = pe.build_train(pp.complete(params))
    cyc = pe.cycle_words(t)
    n = t.repeats or -(-MIN_CYCLES // pe.words_ticks(cyc))
    words = list(t.delay) + cyc * n
    assert all((w >> pe.COUNT_SHIFT) < 4096 for w in words)  # short words only: no 2^28 splits here
    return words


def test_build_train_streams_match_rp2040js():
    cases = []
    for ch in (0, 1):  # channel 0: 4 pins with SYNC; channel 1: 3 pins at out_base 4
        for params in TRAINS.values():
            words = train_stream(params)
            cases.append(dict(words=words, cycles=window(words), program=stim_program(ch)))
    total = compare(cases)
    assert total > 50_000


# ------------------------------------------------------------------ random segment words
def _word(ticks_pins):
    ticks, pins = ticks_pins
    return ((ticks - pe.OVERHEAD) << pe.COUNT_SHIFT) | pins


SAFE_PINS = [p for p in range(16) if not (p & pe.POS and p & pe.NEG)]
seg_words = st.lists(st.tuples(st.integers(5, 200), st.sampled_from(SAFE_PINS)).map(_word), min_size=1,
                     max_size=16)
batch = st.lists(st.tuples(seg_words, st.integers(0, board.CHANNELS - 1)), min_size=20, max_size=60)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases=batch)
def test_random_segments_match_rp2040js(cases):
    """Random short segments (5..200 ticks, any pins but never POS with NEG), on every channel's pin
    group; a batch of cases per node invocation. The last word need not be idle, so the underrun's
    return to idle is compared too."""
    for w in (w for ws, _ in cases for w in ws):
        pe.check_word(w)
    compare([dict(words=ws, cycles=window(ws), program=stim_program(ch)) for ws, ch in cases])


# ------------------------------------------------------------------ the guards themselves
def test_script_reports_stalls_and_underruns():
    """The two conditions under which rp2040js's edge times would not be comparable are detected:
    a stall (its clock stops counting) and a FIFO that ran dry while words were still pending."""
    words = [_word((7, pe.POS | pe.SYNC)), _word((9, pe.IDLE))] * 4
    prog = stim_program(0)
    blocking = dict(prog, opcodes=[0x80A0, 0x6004], wrap_target=0, wrap=1, entry=0)  # pull block; out pins, 4
    starved, stalled, fed = rp2040js([
        dict(words=words, cycles=window(words), program=prog, feed="prefill"),  # only 4 words fit
        dict(words=[], cycles=50, program=blocking),
        dict(words=words[:3], cycles=50, program=blocking),
    ])
    assert starved["underrun_with_words_pending"] == FIRST_WRITE - 1 + pe.words_ticks(words[:4])
    assert starved["words_pulled"] == 4
    # rp2040js counts the stalled instruction's first cycle, then none while it waits
    assert stalled["stalled_at"] == 0 and stalled["end"] == 1 and stalled["edges"] == []
    # 3 words, 2 cycles each, then the 4th `pull block` stalls at cycle 6
    assert fed["stalled_at"] == 6 and fed["end"] == 7 and fed["words_pulled"] == 3
