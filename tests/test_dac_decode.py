"""The DAC bus decoder (picostim.capture.dac) and the analyzer's DAC checks, on hand-built lines.

Every waveform here is built bit by bit in this file from MCP4822 command words the test writes out
(SPI mode 0: MOSI set while SCK is low, SCK rises mid-bit, MSB first, CS low around 16 clocks), never
from a parameter set the test then checks. Expected currents use the board's 2.5 µA per LSB
(10.24 mA full scale / 4096) written out here.
"""

from __future__ import annotations

import numpy as np
import pytest

from picostim.capture import dac as dacbus
from picostim.capture.analyzer import analyze
from picostim.capture.trace import Channel, Trace

SR = 125_000_000
UA_PER_LSB = 2.5  # 10_240 µA / 4096

# MCP4822 command words written out by hand: bit 15 A/B, bit 13 /GA (1 = 1x), bit 12 /SHDN (1 = on)
A_ON, B_ON = 0x3000, 0xB000
A_OFF, B_OFF = 0x2000, 0xA000
A_GAIN2 = 0x1000  # output A, gain 2x, on


class Lines:
    """Bit-level waveform builder: lines as lists of (sample, level), turned into a Trace."""

    def __init__(self, names=("SCK", "MOSI", "CS0", "CS1", "CS2", "CS3", "LDAC")):
        self.initial = {n: int(n.startswith("CS")) for n in names}  # chip selects idle high (pull-up)
        self.changes = {n: [] for n in names}

    def set(self, name, t, level):
        self.changes[name].append((int(t), int(level)))

    def frame(self, cs, t0, word, nbits=16, half=5):
        """CS ``cs`` low at t0, ``nbits`` bits of ``word`` (MSB of the 16-bit word first), CS high after;
        returns the CS rising sample."""
        self.set(cs, t0, 0)
        t = t0 + 2
        for i in range(nbits):
            bit = (word >> (15 - i)) & 1 if i < 16 else i & 1
            self.set("MOSI", t, bit)
            self.set("SCK", t + half, 1)
            self.set("SCK", t + 2 * half, 0)
            t += 2 * half
        self.set("MOSI", t + 1, 0)
        self.set(cs, t + 2, 1)
        return t + 2

    def pulse(self, first, t0, w1, gap, w2, first_line="NEG", sfx=""):
        second = "POS" if first_line == "NEG" else "NEG"
        self.set(first_line + sfx, t0, 1)
        self.set(first_line + sfx, t0 + w1, 0)
        self.set(second + sfx, t0 + w1 + gap, 1)
        self.set(second + sfx, t0 + w1 + gap + w2, 0)
        return t0 + w1 + gap + w2

    def trace(self, n):
        chans = {}
        for name, ch in self.changes.items():
            level = self.initial[name]
            toggles = []
            for t, lv in sorted(ch, key=lambda x: x[0]):
                if lv != level:
                    if toggles and toggles[-1] == t:  # two changes at one sample cancel
                        toggles.pop()
                    else:
                        toggles.append(t)
                    level = lv
            chans[name] = Channel(self.initial[name], np.array(toggles, np.int64))
        return Trace(SR, n, chans)


# ------------------------------------------------------------------------------------------ decoder
def test_frames_decode_words_and_cs_rise_samples():
    ln = Lines()
    words = [A_ON | 400, B_ON | 0x0FFF, A_ON | 0x0555, B_ON | 0x0AAA, A_OFF]
    rises, t = [], 100
    for w in words:
        rises.append(ln.frame("CS0", t, w))
        t += 300
    tr = ln.trace(t + 100)
    bus = dacbus.decode_bus(tr)
    assert bus.commands(0) == list(zip(rises, words))
    assert bus.malformed() == []
    assert bus.commands(1) == []
    fr = bus.frames[0]
    assert list(fr.nbits) == [16] * 5 and fr.cut == 0


def test_malformed_frames_reported_with_bit_count_and_not_applied():
    ln = Lines()
    r_ok = ln.frame("CS0", 100, A_ON | 100)
    r15 = ln.frame("CS0", 400, A_ON | 200, nbits=15)
    r17 = ln.frame("CS0", 700, A_ON | 300, nbits=17)
    ln.set("CS0", 1000, 0)  # a select without any clock
    ln.set("CS0", 1020, 1)
    tr = ln.trace(1200)
    bus = dacbus.decode_bus(tr)
    bad = bus.malformed()
    assert [(m["end"], m["bits"], m["cs"]) for m in bad] == [(r15, 15, "CS0"), (r17, 17, "CS0"), (1020, 0, "CS0")]
    assert bus.commands(0) == [(r_ok, A_ON | 100)]
    a, _ = bus.outputs[0]
    assert list(a.at([r_ok - 1, r_ok, 1199])) == [dacbus.UNKNOWN, 100_000 * UA_PER_LSB, 100_000 * UA_PER_LSB]


def test_frame_cut_by_capture_start_or_end_is_not_decoded_nor_malformed():
    ln = Lines()
    ln.initial["CS0"] = 0  # selected before the capture began
    ln.set("CS0", 50, 1)
    r = ln.frame("CS0", 100, B_ON | 7)
    ln.set("CS0", 500, 0)  # still selected at the end
    ln.set("SCK", 510, 1)
    tr = ln.trace(600)
    bus = dacbus.decode_bus(tr)
    assert bus.commands(0) == [(r, B_ON | 7)]
    assert bus.malformed() == [] and bus.frames[0].cut == 2


def test_two_channels_share_sck_and_mosi_each_dac_takes_only_its_frames():
    ln = Lines()
    r0 = ln.frame("CS0", 100, A_ON | 11)
    r1 = ln.frame("CS1", 400, A_ON | 22)
    r1b = ln.frame("CS1", 700, B_ON | 33)
    r0b = ln.frame("CS0", 1000, B_ON | 44)
    tr = ln.trace(1500)
    bus = dacbus.decode_bus(tr)
    assert bus.commands(0) == [(r0, A_ON | 11), (r0b, B_ON | 44)]
    assert bus.commands(1) == [(r1, A_ON | 22), (r1b, B_ON | 33)]
    a0, b0 = bus.outputs[0]
    a1, b1 = bus.outputs[1]
    assert list(a0.codes) == [11] and list(b0.codes) == [44]
    assert list(a1.codes) == [22] and list(b1.codes) == [33]
    assert list(b1.times) == [r1b] and list(a0.times) == [r0]


def test_ldac_high_holds_outputs_until_its_falling_edge():
    ln = Lines()
    r0 = ln.frame("CS0", 100, A_ON | 100)  # LDAC low: transparent, output at CS rise
    ln.set("LDAC", 300, 1)
    r1 = ln.frame("CS0", 400, A_ON | 200)  # held in the input register
    r2 = ln.frame("CS0", 700, A_ON | 300)  # overwrites the input register, still held
    r3 = ln.frame("CS0", 1000, B_ON | 50)
    ln.set("LDAC", 1500, 0)  # both outputs take their input registers
    r4 = ln.frame("CS0", 1600, A_ON | 400)  # transparent again
    tr = ln.trace(2000)
    a, b = dacbus.decode_bus(tr).outputs[0]
    assert list(a.times) == [r0, 1500, r4] and list(a.codes) == [100, 300, 400]
    assert list(b.times) == [1500] and list(b.codes) == [50]
    assert list(a.at([r1, r2, 1499, 1500])) == [250_000, 250_000, 250_000, 750_000]
    assert list(b.at([r3, 1499, 1500])) == [dacbus.UNKNOWN, dacbus.UNKNOWN, 125_000]


def test_ldac_high_at_the_end_never_applies():
    ln = Lines()
    r0 = ln.frame("CS0", 100, A_ON | 100)
    ln.set("LDAC", 300, 1)
    ln.frame("CS0", 400, A_ON | 200)
    tr = ln.trace(1000)
    a, _ = dacbus.decode_bus(tr).outputs[0]
    assert list(a.times) == [r0] and list(a.codes) == [100]


def test_shutdown_is_zero_current_and_gain_2x_doubles():
    ln = Lines()
    r0 = ln.frame("CS0", 100, A_ON | 1000)
    r1 = ln.frame("CS0", 400, A_OFF | 1000)  # code ignored: output off
    r2 = ln.frame("CS0", 700, A_GAIN2 | 1000)
    tr = ln.trace(1000)
    a, _ = dacbus.decode_bus(tr).outputs[0]
    assert list(a.at([r0, r1, r2])) == [2_500_000, 0, 5_000_000]
    assert list(a.on) == [True, False, True]
    assert list(a.changes()) == [r0, r1, r2]


def test_repeated_same_value_is_not_a_change():
    ln = Lines()
    r0 = ln.frame("CS0", 100, B_ON | 5)
    ln.frame("CS0", 400, B_ON | 5)
    r2 = ln.frame("CS0", 700, B_ON | 6)
    _, b = dacbus.decode_bus(ln.trace(1000)).outputs[0]
    assert list(b.changes()) == [r0, r2]


def test_mosi_sampled_on_sck_rise_not_fall():
    # MOSI flips right after each rising edge (at the falling edge it carries the *next* bit): a decoder
    # sampling on the falling edge would read the word shifted by one
    ln = Lines()
    word = B_ON | 0x0A5C
    ln.set("CS0", 100, 0)
    t = 102
    for i in range(16):
        ln.set("MOSI", t, (word >> (15 - i)) & 1)
        ln.set("SCK", t + 5, 1)
        ln.set("MOSI", t + 6, ((word >> (15 - i)) & 1) ^ 1)  # garbage after the rise
        ln.set("SCK", t + 10, 0)
        t += 10
    ln.set("CS0", t + 2, 1)
    bus = dacbus.decode_bus(ln.trace(t + 100))
    assert bus.commands(0) == [(t + 2, word)]


# ------------------------------------------------------------------------------------------ analyzer
P1, GAP, P2, PERIOD = 25_000, 1_250, 50_000, 250_000


def _train(codes, *, write_at=None, polarity="cathodic-first", ldac=False, extra=None, sfx="", cs="CS0"):
    """Pulses (phase 1 P1, phase 2 P2) with DAC writes in the idle before each: ``codes`` =
    [(code phase 1, code phase 2), ...]; ``write_at``: pulse index -> offset of the writes from that
    pulse's start (default: 60 µs before it)."""
    names = ("SCK", "MOSI", "CS0", "CS1", "CS2", "CS3", "POS" + sfx, "NEG" + sfx) + (("LDAC",) if ldac else ())
    ln = Lines(names)
    first_line = "NEG" if polarity == "cathodic-first" else "POS"
    t0 = 10_000
    for k, (c1, c2) in enumerate(codes):
        start = t0 + k * PERIOD
        off = (write_at or {}).get(k, -7_500)
        # phase 1 on NEG (cathodic-first) is DAC B's current, phase 2 on POS is DAC A's
        w1, w2 = (B_ON | c1, A_ON | c2) if first_line == "NEG" else (A_ON | c1, B_ON | c2)
        t = ln.frame(cs, start + off, w1)
        ln.frame(cs, t + 10, w2)
        ln.pulse(first_line, start, P1, GAP, P2, first_line=first_line, sfx=sfx)
    if extra:
        extra(ln)
    return ln.trace(t0 + len(codes) * PERIOD)


def test_amplitude_of_every_pulse_from_the_bus():
    tr = _train([(40, 20), (80, 40), (401, 201), (4095, 2047)])
    r = analyze(tr)
    assert r.ok, r.failures
    assert r.amplitude_ua == [100.0, 200.0, 1002.5, 10237.5]
    assert r.dac["amplitude2_ua"] == [50.0, 100.0, 502.5, 5117.5]
    assert r.to_json()["amplitude_ua"] == [100.0, 200.0, 1002.5, 10237.5]
    assert r.dac["commands"] == 8 and r.dac["changes_in_pulse"] == 0 and r.dac["malformed"] == 0


def test_anodic_first_takes_phase_1_from_dac_a():
    tr = _train([(40, 20), (120, 60)], polarity="anodic-first")
    r = analyze(tr, polarity="anodic-first")
    assert r.ok, r.failures
    assert r.amplitude_ua == [100.0, 300.0]


def test_unbalanced_pulse_fails():
    # 401 x P1 vs 199 x P2 (P2 = 2 P1): 1.5 LSB over phase 2, more than the rounding's half LSB
    tr = _train([(400, 200), (401, 199), (400, 200)])
    r = analyze(tr)
    assert not r.ok
    assert r.dac["unbalanced"] == 1 and r.dac["unbalanced_pulses"] == [1]
    assert any(f.startswith("DAC BALANCE: 1 pulses") and "#1" in f for f in r.failures)


def test_balance_allows_half_an_lsb_not_more():
    # 401 x P1 = 200.5 x P2: 200 and 201 are both the nearest integer (half an LSB): balanced
    assert analyze(_train([(401, 200), (401, 201)])).ok
    # clamped to the 1-LSB floor: phase 1 worth 0.5 LSB over phase 2 is balanced by 1
    assert analyze(_train([(1, 1)])).ok
    # 0 -> 1 LSB over phase 2 is one LSB: allowed only at the floor (code 1), 2 is not
    assert not analyze(_train([(1, 2)])).ok
    assert not analyze(_train([(3, 0)])).ok


def test_shutdown_both_outputs_is_a_balanced_zero_current_pulse():
    def off(ln):
        t = ln.frame("CS0", 10_000 + 2 * PERIOD - 7_500, A_OFF)
        ln.frame("CS0", t + 10, B_OFF)
    tr = _train([(40, 20), (40, 20)], extra=off)
    # a third pulse after the shutdown, without writes of its own
    ch = dict(tr.channels)
    start = 10_000 + 2 * PERIOD
    ch["NEG"] = Channel(0, np.concatenate((ch["NEG"].toggles, [start, start + P1])))
    ch["POS"] = Channel(0, np.concatenate((ch["POS"].toggles, [start + P1 + GAP, start + P1 + GAP + P2])))
    tr = Trace(SR, start + PERIOD, ch)
    r = analyze(tr)
    assert r.ok, r.failures
    assert r.amplitude_ua == [100.0, 100.0, 0.0]
    assert r.dac["amplitude2_ua"] == [50.0, 50.0, 0.0]


def test_phase_2_output_shut_down_is_unbalanced():
    def off_b(ln):  # phase 2 (POS, DAC A) shut down between the phases of pulse 1
        ln.frame("CS0", 10_000 + PERIOD + P1 + 100, A_OFF)
    tr = _train([(40, 20), (40, 20)], extra=off_b)
    r = analyze(tr)
    assert not r.ok
    assert r.dac["unbalanced_pulses"] == [1]
    assert r.dac["changes_in_pulse"] == 0  # in the interphase gap: neither POS nor NEG high


def test_change_inside_a_pulse_fails():
    # pulse 1's writes land inside its phase 1 (offset 1000 samples after its start)
    tr = _train([(40, 20), (80, 40), (80, 40)], write_at={1: 1_000})
    r = analyze(tr)
    assert not r.ok
    assert r.dac["changes_in_pulse"] == 2
    assert any(f.startswith("DAC CHANGE IN PULSE: 2 ") and "while NEG was high" in f for f in r.failures)


def test_change_held_by_ldac_until_after_the_pulse_passes():
    # the writes happen inside pulse 1 with LDAC high; LDAC falls in the idle after it: no change in a pulse
    fall = 10_000 + 1 * PERIOD + P1 + GAP + P2 + 1_000

    def ldac(ln):
        ln.set("LDAC", 10_000 + PERIOD - 100, 1)
        ln.set("LDAC", fall, 0)
    tr = _train([(40, 20), (80, 40), (80, 40)], write_at={1: 1_000}, ldac=True, extra=ldac)
    r = analyze(tr)
    # pulse 1 still has the old codes (40/20), pulse 2 the new ones
    assert r.amplitude_ua == [100.0, 100.0, 200.0]
    assert r.dac["changes_in_pulse"] == 0
    assert r.ok, r.failures


def test_ldac_falling_inside_a_pulse_fails():
    fall = 10_000 + 2 * PERIOD + 500  # inside pulse 2's phase 1

    def ldac(ln):
        ln.set("LDAC", 10_000 + PERIOD + P1 + GAP + P2 + 100, 1)
        ln.set("LDAC", fall, 0)
    tr = _train([(40, 20), (40, 20), (80, 40)], ldac=True, extra=ldac)
    r = analyze(tr)
    assert r.dac["changes_in_pulse"] == 2 and r.dac["changes_in_pulse_us"][0] == pytest.approx(fall / 125)
    assert not r.ok


def test_malformed_frame_fails_the_analysis():
    def bad(ln):
        ln.frame("CS2", 10_000 + PERIOD // 2, A_ON | 5, nbits=12)  # another channel's DAC: a bus fault too
    r = analyze(_train([(40, 20), (40, 20)], extra=bad))
    assert not r.ok and r.dac["malformed"] == 1
    assert any(f.startswith("DAC SPI: 1 malformed frames") and "CS2 with 12 bits" in f for f in r.failures)


def test_other_channel_uses_its_own_cs():
    tr = _train([(40, 20), (80, 40)], sfx="_1", cs="CS1")
    r = analyze(tr, channel=1)
    assert r.ok, r.failures
    assert r.amplitude_ua == [100.0, 200.0] and r.dac["cs"] == "CS1"
    # channel 1's pulses read against CS0 (no writes there): amplitude unknown, not failed
    ch = dict(tr.channels)
    ch["CS1"], ch["CS0"] = ch["CS0"], ch["CS1"]
    r0 = analyze(Trace(SR, tr.n_samples, ch), channel=1)
    assert r0.ok and r0.amplitude_ua == [None, None] and "amplitude unknown" in r0.dac["note"]


def test_no_dac_lines_skips_with_a_note():
    tr = _train([(40, 20), (80, 40)])
    ch = {k: v for k, v in tr.channels.items() if k in ("POS", "NEG")}
    r = analyze(Trace(SR, tr.n_samples, ch))
    assert r.ok
    assert r.amplitude_ua is None and r.dac["checked"] is False
    assert "no DAC lines (SCK, MOSI, CS0)" in r.dac["note"]
    assert r.to_json()["amplitude_ua"] is None
    assert "DAC checks skipped" in r.summary()
    # a capture with the bus but no LDAC: decoded, LDAC taken as held low
    ch = {k: v for k, v in tr.channels.items() if k != "LDAC"}
    r = analyze(Trace(SR, tr.n_samples, ch))
    assert r.ok and r.amplitude_ua == [100.0, 200.0]


def test_asynchronous_capture_balance_within_sampling_slack():
    # the same pulses seen by a 25 MS/s analyzer (one sample = 5 ticks): widths quantised, balanced
    tr = _train([(401, 200), (400, 200), (401, 201)])
    ch = {k: Channel(v.initial, v.toggles // 5) for k, v in tr.channels.items()
          if k not in ("SCK", "MOSI")}
    # the bus itself must be resampled without losing bits: rebuild it at 25 MS/s from the same words
    ln = Lines(("SCK", "MOSI", "CS0"))
    for k, (c1, c2) in enumerate([(401, 200), (400, 200), (401, 201)]):
        t = ln.frame("CS0", (10_000 + k * PERIOD - 7_500) // 5, B_ON | c1, half=2)
        ln.frame("CS0", t + 4, A_ON | c2, half=2)
    slow = ln.trace(tr.n_samples // 5)
    ch.update({k: slow.channels[k] for k in ("SCK", "MOSI", "CS0")})
    r = analyze(Trace(25_000_000, tr.n_samples // 5, ch))
    assert r.ok, r.failures
    assert r.amplitude_ua == [1002.5, 1000.0, 1002.5]


# ------------------------------------------------------------------------------------------ CLI --map
def test_check_maps_foreign_dac_lines_and_reports_amplitudes(tmp_path):
    """``picostim check --map`` names the DAC bus lines of a foreign capture (D0..D6) too; without
    them in the map the DAC checks are skipped with a note, not failed."""
    import contextlib
    import io
    import json

    from picostim import cli
    from picostim.capture import write_capture

    tr = _train([(40, 20), (80, 40), (401, 201)])
    names = {"POS": "D0", "NEG": "D1", "SCK": "D2", "MOSI": "D3", "CS0": "D4", "CS1": "D5", "CS2": "D6"}
    foreign = Trace(SR, tr.n_samples, {names[k]: tr.channels[k] for k in names})
    cap = tmp_path / "foreign.sr"
    write_capture(foreign, cap)
    params = tmp_path / "p.toml"
    params.write_text("frequency_hz = 500\nphase1_us = 200\ninterphase_us = 10\nphase2_us = 400\n"
                      "amplitude_ma = 0.1\nelectrode_area_mm2 = 5\n")

    def run(*extra):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(["check", str(cap), "--params", str(params), "--json", *extra])
        return rc, json.loads(out.getvalue()) if out.getvalue().strip() else None, err.getvalue()

    rc, j, err = run("--map", "POS=D0,NEG=D1,SCK=D2,MOSI=D3,CS0=D4,CS1=D5,CS2=D6")
    assert rc == 0, err
    assert j["amplitude_ua"] == [100.0, 200.0, 1002.5] and j["dac"]["checked"] is True
    rc, j, err = run("--map", "POS=D0,NEG=D1")
    assert rc == 0, err
    assert j["amplitude_ua"] is None and "DAC checks skipped" in j["dac"]["note"]
    # a malformed frame on the mapped bus is a mismatch (exit 3)
    ln = Lines(("SCK", "MOSI", "CS0"))
    ln.frame("CS0", 5_000, A_ON | 1, nbits=14)
    bad = ln.trace(tr.n_samples)
    sck = Channel(0, np.sort(np.concatenate((tr.channels["SCK"].toggles, bad.channels["SCK"].toggles))))
    cs0 = Channel(1, np.sort(np.concatenate((tr.channels["CS0"].toggles, bad.channels["CS0"].toggles))))
    foreign.channels.update({"D2": sck, "D4": cs0})
    write_capture(foreign, cap)
    rc, j, err = run("--map", "POS=D0,NEG=D1,SCK=D2,MOSI=D3,CS0=D4")
    assert rc == 3 and j["dac"]["malformed"] == 1
    assert "DAC SPI: 1 malformed frames" in err


def test_channel_without_a_dac_line_name_is_skipped_not_crashed():
    # channel 4 (no CS4 on the board): the capture cannot hold its DAC: a note, no IndexError
    tr = _train([(40, 20)], sfx="_4")
    r = analyze(tr, channel=4)
    assert r.ok and r.amplitude_ua is None and "CS4" in r.dac["note"]


def test_a_change_too_close_before_the_phase_that_uses_it_fails_as_not_settled():
    # pulse 1's writes start 400 samples before it: B (phase 1, NEG; a frame is 164 samples from CS fall
    # to rise) changes 236 samples = 1.888 µs before phase 1, less than the MCP4822's 4.5 µs; A changes
    # 62 samples before phase 1 but is only used by phase 2, 200 µs later (settled by then)
    r = analyze(_train([(40, 20), (80, 40), (80, 40)], write_at={1: -400}))
    assert not r.ok and [f for f in r.failures if f.startswith("DAC NOT SETTLED: 1 DAC output change")]
    assert len(r.failures) == 1, r.failures
    st = r.dac["settle"]
    assert st["short"] == 1 and st["required_us"] == 4.5
    assert st["min_us"] == pytest.approx(236 / 125)
    assert "settling" in r.summary()
    assert analyze(_train([(40, 20), (80, 40)])).dac["settle"]["short"] == 0  # 60 µs ahead
