"""Issue 13 item 2 through the CLI: ramp keys in parameter files (validate/upload one-line errors, exit
2), upload's ramp pulse counts, and a ramped preset run on the virtual Pico whose capture's DAC bus
shows the contract's linear ramp (computed here from the file, not taken from the firmware)."""

import json
import pathlib

import pytest

from picostim import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
SACRAL = str(ROOT / "presets" / "sacral_pudendal_low.toml")
BASE = "frequency_hz = 20\nphase1_us = 200\namplitude_ma = 1\nelectrode_area_mm2 = 5\n"
UA_PER_CODE = 2.5  # board.DAC_FULL_SCALE_UA / 4096 (10240 µA full scale)


def toml(tmp_path, text):
    f = tmp_path / "p.toml"
    f.write_text(text)
    return str(f)


@pytest.mark.parametrize("extra,line", [
    ("ramp_up_s = 1\nramp_up_pulses = 20\n",
     "ramp_up_pulses = 20: conflicts with ramp_up_s = 1: give the ramp as a time or as a number of pulses, not both"),
    ("ramp_down_pulses = -2\n", "ramp_down_pulses = -2: must not be negative (0 = no ramp)"),
    ("ramp_down_pulses = 1.5\n", "ramp_down_pulses = 1.5: expected a whole number of pulses (0 = no ramp)"),
    ("ramp_up_pulses = 1001\n", "ramp_up_pulses = 1001 pulses: exceeds the firmware limit 1000 pulses"),
    ("ramp_down_s = 61\n", "ramp_down_s = 61 s: exceeds the firmware limit 60 s"),
    ("ramp_up_ms = 55000\n", "ramp_up_ms = 55000 ms: exceeds the firmware limit 50000 ms (1000 pulses, the "
                             "firmware's max_ramp_pulses, at this pulse rate)"),
    ("ramp_up_s = 1e300\n", "ramp_up_s = 1e+300 s: exceeds the firmware limit 60 s"),
])
@pytest.mark.parametrize("command", ["validate", "upload"])
def test_ramp_key_errors_exit_2_one_line(tmp_path, capsys, extra, line, command):
    f = toml(tmp_path, BASE + extra)
    # upload: checked against the limits the device reports in HELLO, nothing else sent
    argv = ["validate", f] if command == "validate" else ["--virtual", "upload", f]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("picostim: error: ") and err[0].endswith(line), err


def test_upload_reports_the_ramp_pulses(capsys):
    assert cli.main(["--virtual", "upload", SACRAL, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requested"]["ramp_up_us"] == 500000.0 and out["requested"]["ramp_up_pulses"] == 0
    assert out["realised"]["ramp_up_pulses"] == 5  # 10 Hz: pulses start at 0, 100, ..., 400 ms
    assert out["realised"]["ramp_down_pulses"] == 0
    assert cli.main(["--virtual", "upload", SACRAL]) == 0
    assert "soft start: 5 pulses; soft stop (on stop): none" in capsys.readouterr().out


def test_ramped_preset_run_shows_the_linear_ramp_in_the_dac_bus(capsys):
    """`picostim --virtual run` of the ramped preset: every pulse's phase-1 amplitude from the capture's
    DAC bus follows the contract: code1 = round(1500 µA / 2.5), pulse j < K at max(1, round(code1 *
    (j + 1) / K)) codes, then full amplitude; nothing changes inside a pulse, every pulse balanced."""
    rc = cli.main(["--virtual", "run", SACRAL, "--duration", "1.2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"], out.get("failures")
    code1, k = round(1500 / UA_PER_CODE), 5
    model = [max(1, round(code1 * (j + 1) / k)) * UA_PER_CODE for j in range(k)]
    assert model == [300.0, 600.0, 900.0, 1200.0, 1500.0]
    amps = out["amplitude_ua"]
    assert len(amps) >= 12
    assert amps == model + [1500.0] * (len(amps) - k)
    assert out["dac"]["changes_in_pulse"] == 0 and out["dac"]["unbalanced"] == 0
