"""Issue 13 item 4 through the CLI: a parameter file with [sequence] in validate / upload / run / check.
One-line errors with exit 2 for malformed or conflicting sequences and limits; upload reports the
sequence; `--virtual run` plays it to its end and checks every onset (to the tick) and amplitude (after
DAC rounding) from the capture, `run --json` key "sequence"; `check` of that capture against a file whose
single onset is one tick later, or whose single amplitude is one DAC code higher, exits 3.
Expected values are computed here from the numbers written in the files (8 ns a tick, 2.5 µA a code)."""

import json
import pathlib

import pytest

from firmware.limits import LIMITS
from picostim import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "paired_pulse_sequence.toml")
BASE = "phase1_us = 100\nelectrode_area_mm2 = 5\n"
LIM = LIMITS["min_sequence_interval_ns"]  # the shortest interval a sequence may have (2 ms)
LIM_MS = "%g" % (LIM / 1e6)
# 6 pulses, intervals 2.25..4 ms (>= the limit), one onset with a sub-tick part (4.0041 ms = 500512.5
# ticks -> 500513)
ONSETS = ["0.5", "4.0041", "6.5", "10.5", "12.75", "15"]
AMPS = ["1", "0.2", "1.5", "0.0011", "2", "0.75"]  # mA: 1.1 µA -> code 0 -> at least 1 code = 2.5 µA
WANT_UA = [1000.0, 200.0, 1500.0, 2.5, 2000.0, 750.0]


def seq_file(tmp_path, onsets=ONSETS, amps=AMPS, name="s.toml", extra=""):
    f = tmp_path / name
    f.write_text(BASE + extra + "[sequence]\nonsets_ms = [%s]\namplitudes_ma = [%s]\n" % (", ".join(onsets),
                                                                                       ", ".join(amps)))
    return str(f)


@pytest.mark.parametrize("extra,seq,line", [
    ("frequency_hz = 20\n", "onsets_ms = [0, 5]\namplitudes_ma = [1, 1]\n",
     "frequency_hz = 20: not allowed with [sequence]: its onsets give every pulse's time (no pulse rate, bursts, "
     "ramps or train delay)"),
    ("", "onsets_ms = [0, 5, 5]\namplitudes_ma = [1, 1, 1]\n",
     "onsets_ms[2] = 5: is not after onsets_ms[1] = 5: onsets must be strictly increasing"),
    ("", "onsets_ms = [0, 5]\namplitudes_ma = [1]\n",
     "amplitudes_ma: 1 amplitudes for 2 onsets (onsets_ms): give one amplitude per onset"),
    ("", "onsets_ms = [0, 5, %g]\namplitudes_ma = [1, 1, 1]\n" % (5 + LIM / 1e6 - 0.1),  # 0.1 ms short
     "the shortest interval between two onsets, onsets_ms[1] -> [2] = %g ms: is below the firmware minimum %s ms"
     % (LIM / 1e6 - 0.1, LIM_MS)),
    ("", "onsets_ms = [0, 5]\namplitudes_ma = [1, 11]\n",
     "the largest amplitude, amplitudes_ma[1] = 11 mA: exceeds the firmware limit 10 mA"),
])
@pytest.mark.parametrize("command", ["validate", "upload"])
def test_sequence_errors_exit_2_one_line(tmp_path, capsys, extra, seq, line, command):
    f = tmp_path / "bad.toml"
    f.write_text(BASE + extra + "[sequence]\n" + seq)
    argv = ["validate", str(f)] if command == "validate" else ["--virtual", "upload", str(f)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("picostim: error: ") and err[0].endswith(line), err


def test_validate_and_upload_the_example(capsys):
    assert cli.main(["validate", EXAMPLE]) == 0
    assert "ok (paired-pulse-sequence)" in capsys.readouterr().out
    assert cli.main(["--virtual", "upload", EXAMPLE, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    seq = out["sequence"]
    assert seq["pulses"] == 16 and seq["loop"] is False
    assert seq["onsets_us"][:4] == [0.0, 10000.0, 1000000.0, 1020000.0]
    assert seq["amplitudes_ua"][-1] == 2000 and out["requested"]["amplitude_ua"] == 2000
    assert seq["shortest_interval_us"] == 10000.0 and out["requested"]["period_us"] == 10000.0
    assert cli.main(["--virtual", "upload", EXAMPLE]) == 0
    assert "sequence: 16 pulses played once, onsets 0 ms .. 7500 ms, amplitudes 250 .. 2000 µA" in (
        capsys.readouterr().out)


def test_run_checks_every_onset_and_amplitude_and_check_catches_one_tick(tmp_path, capsys):
    f = seq_file(tmp_path)
    cap = tmp_path / "seq.vcd"
    rc = cli.main(["--virtual", "run", f, "--json", "--capture", str(cap)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out["failures"]
    q = out["sequence"]
    assert out["pulses"] == 6 and q["checked"] == 6 and q["expected_pulses"] == 6
    assert q["onset_mismatches"] == 0 and q["worst_onset_error_samples"] == 0
    assert q["amplitude_mismatches"] == 0 and q["amplitudes_checked"] == 6
    assert out["amplitude_ua"] == WANT_UA
    # measured onsets from the origin (pulse 0 at 0.5 ms): ticks of each absolute onset x 8 ns
    assert min(float(b) - float(a) for a, b in zip(ONSETS, ONSETS[1:])) * 1e6 >= LIM
    ticks = [62500, 500513, 812500, 1312500, 1593750, 1875000]
    assert q["onsets_us"] == pytest.approx([t * 0.008 for t in ticks], abs=1e-9)
    # the same capture against files one tick / one code away
    assert cli.main(["check", str(cap), "--params", f]) == 0
    capsys.readouterr()
    later = list(ONSETS)
    later[3] = "10.500008"  # one tick later
    g = seq_file(tmp_path, onsets=later, name="later.toml")
    assert cli.main(["check", str(cap), "--params", g, "--json"]) == 3
    res = capsys.readouterr()
    rep = json.loads(res.out)
    assert rep["sequence"]["onset_mismatches"] == 1 and rep["sequence"]["first_onset_mismatch"]["pulse"] == 3
    assert "sequence onsets: 1/6 pulses off the file's onsets" in res.err
    louder = list(AMPS)
    louder[5] = "0.7525"  # 752.5 µA: one DAC code above 750
    h = seq_file(tmp_path, amps=louder, name="louder.toml")
    assert cli.main(["check", str(cap), "--params", h]) == 3
    assert "sequence amplitudes: 1/6 pulses differ from the file after DAC rounding, first #5: 750 µA vs 752.5 µA" in (
        capsys.readouterr().err)


def test_api_upload_and_run_a_sequence(tmp_path):
    """picostim.open(virtual=True): upload() sends the pulses (a START then plays them), run() checks them
    (measured["sequence"]); a file whose pulses the device would refuse raises before anything is sent."""
    import picostim

    f = seq_file(tmp_path)
    with picostim.open(virtual=True) as stim:
        r = stim.upload(f)
        assert r.to_json()["requested"]["amplitude_ua"] == 2000
        rep = stim.run(f, check=True)
        assert rep.ok and rep.pulses == 6
        q = rep.measured["sequence"]
        assert q["checked"] == 6 and q["onset_mismatches"] == 0 and q["amplitude_mismatches"] == 0
        assert rep.duration_s == pytest.approx(0.015 + 0.0002 + 0.000001 + 0.01)  # last onset + pulse + 10 ms
        bad = seq_file(tmp_path, onsets=["0", "0.5"], amps=["1", "1"], name="bad.toml")
        sent = stim.client.tx_frames
        with pytest.raises(picostim.DeviceRefused):
            stim.upload(bad)
        assert stim.client.tx_frames == sent


def test_a_duration_of_exactly_three_cycles_plays_three(tmp_path, capsys):
    """Cycles are counted in the file's ns: ceil(6000009 / 2000003) = 3. Counted in ticks (750001 over
    250000 a cycle, as before this fix) a fourth cycle played."""
    f = tmp_path / "rep.toml"
    cycle = LIM + 3  # the limit + 3 ns: 3 ns below its tick's ns
    f.write_text(BASE + "train_duration_ns = %d\n[sequence]\nonsets_ms = [0]\namplitudes_ma = [1]\n"
                 "loop = true\ncycle_ns = %d\n" % (3 * cycle, cycle))
    assert cli.main(["validate", str(f)]) == 0  # the file is legal
    capsys.readouterr()
    rc = cli.main(["--virtual", "run", str(f), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["pulses"] == 3 and rc == 0, out["failures"]


def test_sigrok_spi_decoder_reads_the_same_amplitudes(tmp_path, capsys):
    """Issue 13 "Done when": the DAC lines of a custom-sequence run's capture decode with sigrok-cli's own
    spi decoder to the same MCP4822 words as picostim's decoder, and its phase-1 codes (DAC B: cathodic
    first) are the file's amplitudes after DAC rounding, pulse by pulse."""
    from picostim.capture import dac as dacbus
    from picostim.capture import read_capture, run_spi_decoder, sigrok_cli_path

    if sigrok_cli_path() is None:
        pytest.skip("sigrok-cli not installed (.ci/run installs it)")
    cap = tmp_path / "seq.sr"
    assert cli.main(["--virtual", "run", seq_file(tmp_path), "--capture", str(cap), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ours = dacbus.decode_bus(read_capture(cap)).commands(0)
    theirs = run_spi_decoder(cap, "CS0")
    assert len(theirs) >= 12 and [w for _, w in ours] == [w for _, _, w in theirs]
    b_codes = [w & 0xFFF for _, _, w in theirs if w & 0x8000 and w & 0x1000]
    assert [c * 2.5 for c in b_codes[:6]] == WANT_UA == report["amplitude_ua"]
