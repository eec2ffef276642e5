"""Issue 13 item 3, the CLI: ``picostim set-amplitude -c N 2.5mA`` against the virtual Pico over its pty
(one line out, ``--json``), the amplitude EVENT in ``watch``/``status``, and every refusal as one stderr
line with exit 2 (not running, beyond a limit, DAC still busy, no DAC update idle, bad value)."""

import json
import pathlib

import pytest

from picostim import cli, transport
from picostim.client import Client
from protocol import messages as M

pytest.importorskip("picostim.virtual.device")

ROOT = pathlib.Path(__file__).resolve().parent.parent
PTNS = str(ROOT / "presets" / "ptns.toml")
FAST = "frequency_hz = 1000\nphase1_us = 100\namplitude_ma = 1\nelectrode_area_mm2 = 5\n"


# fixtures vp, client: tests/conftest.py


def run(vp, capsys, *argv):
    rc = cli.main(["--port", vp.path] + list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err):
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("picostim: error: "), err
    assert "Traceback" not in err
    return lines[0]


def running(vp, capsys, tmp_path, text=FAST, channel=0):
    f = tmp_path / "p.toml"
    f.write_text(text)
    assert run(vp, capsys, "upload", str(f), "-c", str(channel))[0] == 0
    assert run(vp, capsys, "start", "-c", str(channel))[0] == 0
    vp.advance(0.0055)


def test_set_amplitude_one_line_and_the_event(vp, capsys, client, tmp_path):
    running(vp, capsys, tmp_path)
    rc, out, err = run(vp, capsys, "set-amplitude", "-c", "0", "2.5mA")
    assert rc == 0 and err == ""
    assert out == ("channel 0: amplitude 2.5 mA requested, 2.5 mA realised (phase 2 2.5 mA; DAC A 1000, B 1000) "
                   "from the next pulse boundary\n")
    vp.advance(0.005)
    ev = client.wait_event("amplitude", channel=0, timeout=1)
    assert ev is not None and ev["amplitude_ua"] == 2500 and 5 <= ev["from_pulse"] <= 7
    assert cli.format_event(ev).endswith("channel 0 amplitude 2.5 mA from pulse %d" % ev["from_pulse"])
    assert client.get_params(0)["params"]["amplitude_ua"] == 2500
    # --json, a bare number in mA, the realised value after DAC rounding (2.5 µA per code)
    rc, out, err = run(vp, capsys, "set-amplitude", "--channel", "0", "1.2345", "--json")
    assert rc == 0 and err == ""
    assert json.loads(out) == {"channel": 0, "requested_ua": 1235, "amplitude_ua": 1235,
                               "phase2_amplitude_ua": 1235, "dac_a": 494, "dac_b": 494}
    vp.advance(0.005)
    ev = client.wait_event("amplitude", channel=0, timeout=1)
    assert ev is not None and ev["amplitude_ua"] == 1235


def test_set_amplitude_uneven_phases_realises_a_balanced_phase2(vp, capsys, tmp_path):
    running(vp, capsys, tmp_path, "frequency_hz = 1000\nphase1_us = 100\nphase2_us = 400\namplitude_ma = 1\n"
                                  "electrode_area_mm2 = 5\npolarity = \"anodic-first\"\n")
    rc, out, err = run(vp, capsys, "set-amplitude", "2000uA", "--json")
    got = json.loads(out)
    # phase 2 a quarter of phase 1 (charge balance), DAC A = the POS direction = phase 1 when anodic-first
    assert rc == 0 and (got["amplitude_ua"], got["phase2_amplitude_ua"], got["dac_a"], got["dac_b"]) == (
        2000, 500, 800, 200)


@pytest.mark.parametrize("argv,words", [
    (["set-amplitude", "abc"], ["AMPLITUDE = abc", "not a current", "2.5mA"]),
    (["set-amplitude", "2.5A"], ["AMPLITUDE = 2.5A", "not a current"]),
    (["set-amplitude", "nan"], ["AMPLITUDE = nan"]),
    (["set-amplitude", "-c", "9", "1mA"], ["--channel = 9", "out of range"]),
    (["set-amplitude"], ["AMPLITUDE", "required"]),
])
def test_bad_arguments_exit_2_before_connecting(capsys, argv, words):
    rc = cli.main(["--port", "/nonexistent/picostim-port"] + argv)  # no board: parsing refuses first
    line = one_error(capsys.readouterr().err)
    assert rc == 2
    for w in words:
        assert w in line, (w, line)


def test_refusals_are_one_line_exit_2(vp, capsys, client, tmp_path):
    rc, out, err = run(vp, capsys, "set-amplitude", "2mA")
    assert rc == 2 and out == ""
    assert one_error(err) == "picostim: error: set_amplitude refused: channel 0: channel has no parameters"
    # beyond the limit even with no parameters (the wire field is 32 bits: it was an internal error)
    rc, out, err = run(vp, capsys, "set-amplitude", "1e400")
    assert rc == 2 and one_error(err).startswith("picostim: error: amplitude_ua = 1e+403 µA: exceeds the firmware")
    assert run(vp, capsys, "upload", PTNS)[0] == 0
    rc, out, err = run(vp, capsys, "set-amplitude", "2mA")
    assert rc == 2 and "channel 0 is idle: a live amplitude change needs a running train" in one_error(err)
    assert run(vp, capsys, "set-amplitude", "-c", "3", "1mA")[0] == 2
    running(vp, capsys, tmp_path, channel=1)
    nacks = client.status()["counters"]["nacks"]
    rc, out, err = run(vp, capsys, "set-amplitude", "-c", "1", "12mA")
    assert rc == 2 and one_error(err) == ("picostim: error: amplitude_ua = 12000 µA: exceeds the firmware limit "
                                          "10000 µA")
    rc, out, err = run(vp, capsys, "set-amplitude", "-c", "1", "0uA")
    assert rc == 2 and one_error(err) == "picostim: error: amplitude_ua = 0 µA: is below the firmware limit 1 µA"
    assert client.status()["counters"]["nacks"] == nacks  # checked on the host: nothing reached the device
    assert run(vp, capsys, "set-amplitude", "-c", "1", "1.5mA")[0] == 0
    rc, out, err = run(vp, capsys, "set-amplitude", "-c", "1", "1.6mA")  # stepped time: the first still queued
    assert rc == 2 and one_error(err) == ("picostim: error: set_amplitude refused: channel 1: a ramp or amplitude "
                                          "change is still playing; retry when it has taken effect")
    vp.advance(0.003)
    assert run(vp, capsys, "set-amplitude", "-c", "1", "1.6mA")[0] == 0  # applied: the next one goes through


def test_shannon_limit_on_the_electrode(vp, capsys, tmp_path):
    running(vp, capsys, tmp_path, FAST.replace("amplitude_ma = 1", "amplitude_ma = 0.1")
            .replace("electrode_area_mm2 = 5", "electrode_area_mm2 = 0.01"))
    rc, out, err = run(vp, capsys, "set-amplitude", "2mA")
    line = one_error(err)
    assert rc == 2 and "charge density (Shannon k)" in line and "exceeds the firmware limit 1.85" in line
    assert "0.01 mm²" in line


def test_no_dac_update_idle(vp, capsys, tmp_path):
    running(vp, capsys, tmp_path, "period_us = 100\nphase1_us = 20\ninterphase_us = 55\nphase2_us = 20\n"
                                  "amplitude_ma = 1\nelectrode_area_mm2 = 5\n")
    rc, out, err = run(vp, capsys, "set-amplitude", "1.5mA")
    line = one_error(err)
    # pulse 20 + 55 + 20 µs, then the DAC bus needs min_update_idle_ns (8 µs) before the next pulse
    assert rc == 2 and line == ("picostim: error: period_us = 100 µs (10000 Hz): is below the firmware minimum "
                                "103 µs (9708.738 Hz) (a live amplitude change needs the DAC update idle after "
                                "every pulse)")


def test_help_lists_set_amplitude(capsys):
    assert cli.main(["--help"]) == 0
    assert "set-amplitude" in capsys.readouterr().out
    assert cli.main(["set-amplitude", "--help"]) == 0
    text = capsys.readouterr().out
    assert "2.5mA" in text and "--channel" in text and "--json" in text


def test_amplitude_event_name_is_the_protocols():
    assert M.EVENT_NAMES[M.EV_AMPLITUDE] == "amplitude"


def test_amplitude_event_survives_a_reconnect_through_the_event_log(vp, capsys, client, tmp_path):
    """The amplitude EVENT is longer than the others (from_pulse): a host that missed it gets it back,
    decoded with its fields, from the device's event log."""
    running(vp, capsys, tmp_path)
    assert run(vp, capsys, "set-amplitude", "3mA")[0] == 0
    vp.advance(0.005)
    live = client.wait_event("amplitude", channel=0, timeout=1)
    late = Client(transport.open_port(vp.path, exclusive=False), timeout=1.0, retries=2)
    try:
        late.hello()
        assert late.recover_events(after=0) >= 2  # boot, amplitude (and whatever else was logged)
        got = [e for e in late.events() if e["kind"] == "amplitude"]
    finally:
        late.close()
    assert live is not None and len(got) == 1
    assert {k: got[0][k] for k in ("channel", "from_pulse", "amplitude_ua", "seq")} == {
        k: live[k] for k in ("channel", "from_pulse", "amplitude_ua", "seq")}
