"""sigrok-cli's own ``spi`` decoder and picostim's DAC bus decoder read the same MCP4822 words from the
same capture file (issue 13 item 5).

1. The capture of a real ``picostim --virtual run`` of a ramped train (the firmware's ops on the
   virtual Pico's DAC state machine, written by ``--capture``): sigrok's words, ours, and the
   amplitudes ``run --json`` reports all agree.
2. Two channels, waits and a shutdown: the DAC program itself (firmware/pio/dac.pio) run on the
   cycle-exact PIO emulator, fed with op words from firmware/dac_bus.py, chip selects pulled up, POS
   driven as an input so the program's ``gpN`` waits pass; written as .sr and as VCD.
"""

from __future__ import annotations

import pytest

from firmware import board, dac_bus
from firmware import pio_programs as pio
from picostim.capture import dac as dacbus
from picostim.capture import read_capture, run_spi_decoder, sigrok_cli_path, write_capture
from picostim.virtual.pio_emu import PioSystem

pytestmark = pytest.mark.skipif(sigrok_cli_path() is None, reason="sigrok-cli not installed (.ci/run installs it)")

RAMPED = """frequency_hz = 500
phase1_us = 100
phase2_us = 300
amplitude_ma = 2.0
electrode_area_mm2 = 5
ramp_up_pulses = 6
train_duration_ms = 20
"""


def test_sigrok_agrees_on_a_virtual_run_capture(tmp_path):
    import contextlib
    import io
    import json

    from picostim import cli

    f = tmp_path / "ramped.toml"
    f.write_text(RAMPED)
    cap = tmp_path / "run.sr"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["--virtual", "run", str(f), "--capture", str(cap), "--json"])
    assert rc == 0, err.getvalue()
    report = json.loads(out.getvalue())
    trace = read_capture(cap)
    assert {"SCK", "MOSI", "CS0", "LDAC"} <= set(trace.channels)
    bus = dacbus.decode_bus(trace)
    ours = bus.commands(0)
    theirs = run_spi_decoder(cap, "CS0")
    assert len(ours) >= 12  # 6 ramp steps x (A, B), then nothing or a shutdown
    assert [w for _, w in ours] == [w for _, _, w in theirs]
    assert bus.malformed() == []
    # the words sigrok read, as phase-1 currents (cathodic-first: phase 1 = DAC B), in write order
    b_codes = [w & 0xFFF for _, _, w in theirs if w & 0x8000 and w & 0x1000]
    assert [c * 2.5 for c in b_codes[:6]] == report["amplitude_ua"][:6]
    assert report["amplitude_ua"][0] < report["amplitude_ua"][5] == report["amplitude_ua"][-1] == 2000.0
    assert report["dac"]["changes_in_pulse"] == 0 and report["ok"]

PINS = {board.DAC_SCK_PIN: "SCK", board.DAC_MOSI_PIN: "MOSI", board.DAC_LDAC_PIN: "LDAC",
        board.CH_POS[0]: "POS", board.CH_NEG[0]: "NEG", board.CH_POS[1]: "POS_1", board.CH_NEG[1]: "NEG_1"}
PINS.update({pin: "CS%d" % k for k, pin in enumerate(board.CH_DAC_CS)})


def run_dac_program(ops, pulses=(), cycles=40_000):
    """Play ``ops`` on the dac program; ``pulses``: (pin, rise cycle, fall cycle) driven as inputs."""
    system = PioSystem(board.SYS_CLK_HZ)
    sm = system.add_state_machine(pio.DAC_OPCODES, pio.DAC_WRAP_TARGET, pio.DAC_WRAP,
                                  out_base=board.DAC_MOSI_PIN, out_count=pio.DAC_OUT_COUNT,
                                  side_set_base=board.DAC_SCK_PIN, side_set_count=pio.DAC_SIDESET_COUNT,
                                  out_shift_right=pio.DAC_OUT_SHIFT_RIGHT, pull_threshold=pio.DAC_PULL_THRESHOLD)
    for pin in board.CH_DAC_CS:  # released chip selects: 10 kOhm pull-ups
        system.set_input(pin, 1)
    drive = (1 << board.DAC_SCK_PIN) | (1 << board.DAC_LDAC_PIN)  # SCK side-set output, LDAC held low
    system.set_pindirs(drive, drive)
    system.set_outputs(drive, 0)
    for pin, rise, fall in pulses:
        system.set_input(pin, 1, at_cycle=rise)
        system.set_input(pin, 0, at_cycle=fall)
    system.dma(sm).load_words(list(ops) + [dac_bus.MARK_OP])
    system.enable([sm], start_pc=pio.DAC_NEXT_ENTRY)
    system.run_until(cycles)
    assert sm.get() is not None, "the mark was never pushed: the ops did not all run"
    return system.trace(PINS)


def _ops():
    """Two channels' writes, separated by waits on channel 0's phase-2 pin (POS, cathodic-first) and on
    channel 1's, plus a shutdown: the shape of a ramp/amplitude change, from dac_bus's builders."""
    ops = dac_bus.update_ops(0, 123, 246) + dac_bus.update_ops(1, 4095, 1)
    ops += [dac_bus.wait_op(board.CH_POS[0])] + dac_bus.update_ops(0, 0x0A5, 0x5A0)
    ops += [dac_bus.wait_op(board.CH_POS[1])] + dac_bus.update_ops(1, 2048, 1024)
    ops += [dac_bus.wait_op(board.CH_POS[0])] + dac_bus.shutdown_ops(0)
    return ops


def _words(ops):
    """The 16-bit commands the write ops carry, per channel, read back from the op words' fields."""
    out = {0: [], 1: []}
    for op in ops:
        if op & 0x1F != pio.DAC_WRITE_ENTRY:
            continue
        pattern = (op >> 5) & 0x1FF
        rev = (op >> 14) & 0xFFFF
        word = int(f"{rev:016b}"[::-1], 2)
        ch = next(k for k in (0, 1) if pattern & dac_bus.cs_bit(k))
        out[ch].append(word)
    return out


@pytest.fixture(scope="module")
def bus_trace():
    pulses = [(board.CH_POS[0], 3_000, 3_400), (board.CH_POS[1], 6_000, 6_200), (board.CH_POS[0], 9_000, 9_100)]
    return run_dac_program(_ops(), pulses)


@pytest.mark.parametrize("suffix", [".sr", ".vcd"])
def test_sigrok_spi_decoder_agrees_with_ours(tmp_path, bus_trace, suffix):
    path = tmp_path / ("bus" + suffix)
    write_capture(bus_trace, path)
    trace = read_capture(path)
    bus = dacbus.decode_bus(trace)
    assert bus.malformed() == []
    for ch in (0, 1):
        ours = bus.commands(ch)
        theirs = run_spi_decoder(path, "CS%d" % ch)
        assert [w for _, w in ours] == [w for _, _, w in theirs]
        # each sigrok word starts inside the CS-low frame we decoded it from
        fr = bus.frames[ch]
        assert [(int(a) < s < int(b)) for (s, _, _), a, b in zip(theirs, fr.start[fr.ok], fr.end[fr.ok])] \
            == [True] * len(theirs)
    # and both are what the op words carried (not only each other)
    expect = _words(_ops())
    assert [w for _, w in bus.commands(0)] == expect[0] and len(expect[0]) == 6
    assert [w for _, w in bus.commands(1)] == expect[1] and len(expect[1]) == 4
    # the writes after a wait land after that pin's fall
    t0 = [t for t, _ in bus.commands(0)]
    assert t0[1] < 3_400 < t0[2] and t0[3] < 9_100 < t0[4]


def test_both_decoders_drop_a_short_frame(tmp_path):
    # hand-built lines: a 15-bit frame between two good ones on CS0
    from test_dac_decode import A_ON, B_ON, Lines

    ln = Lines()
    ln.frame("CS0", 100, A_ON | 400)
    ln.frame("CS0", 500, B_ON | 0x321, nbits=15)
    ln.frame("CS0", 900, B_ON | 0xFFF)
    path = tmp_path / "short.sr"
    write_capture(ln.trace(1400), path)
    bus = dacbus.decode_bus(read_capture(path))
    theirs = run_spi_decoder(path, "CS0")
    assert [w for _, w in bus.commands(0)] == [w for _, _, w in theirs] == [A_ON | 400, B_ON | 0xFFF]
    assert [m["bits"] for m in bus.malformed()] == [15]
