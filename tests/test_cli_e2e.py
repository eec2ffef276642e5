"""End to end: the picostim CLI and Client talking to the virtual Pico over its pty, byte for byte as
to a board."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from firmware.limits import LIMITS
from picostim import cli, transport
from picostim.client import Client, DeviceError
from protocol import messages as M
from protocol.framing import PROTOCOL_VERSION, FrameDecoder, encode_frame

pytest.importorskip("picostim.virtual.device")

ROOT = pathlib.Path(__file__).resolve().parent.parent
PTNS = str(ROOT / "presets" / "ptns.toml")
SCS_BURST = str(ROOT / "presets" / "scs_burst.toml")
# what a parameter file must state (paramfile.REQUIRED); explicit() adds the ones a body leaves out
REQUIRED = {"amplitude_": "amplitude_ma = 1", "phase1_": "phase1_us = 200", "electrode_area_": "electrode_area_mm2 = 5"}


def explicit(body):
    return body + "".join(line + "\n" for stem, line in REQUIRED.items() if stem not in body)


# fixtures vp, client: tests/conftest.py


def run(vp, *argv):
    return cli.main(["--port", vp.path] + list(argv))


def run_json(vp, capsys, *argv):
    rc = run(vp, *argv, "--json")
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_info_json(vp, capsys):
    rc, info = run_json(vp, capsys, "info")
    assert rc == 0
    assert {"firmware_version", "protocol_version", "channels", "limits"} <= set(info)
    assert info["channels"] == 4 and info["protocol_version"] == PROTOCOL_VERSION
    assert info["limits"] == LIMITS


def test_upload_good_preset_realised_equals_requested(vp, capsys, client):
    rc, out = run_json(vp, capsys, "upload", PTNS, "--channel", "1")
    assert rc == 0
    assert out["channel"] == 1
    assert out["requested"]["phase1_us"] == 200.0
    assert out["realised"]["phase1_us"] == 200.0
    assert out["realised"]["phase1_ticks"] == 25000
    assert out["realised"]["phase2_ticks"] == 25000
    assert out["realised"]["period_us"] == out["requested"]["period_us"] == 50000.0
    assert out["realised"]["charge_residual_pc"] == 0.0
    assert client.get_params(1)["params"]["phase1_ns"] == 200000
    # the human table too
    assert run(vp, "upload", PTNS) == 0
    text = capsys.readouterr().out
    assert "requested" in text and "realised" in text and "residual" in text


@pytest.mark.parametrize("body,words", [
    ("frequency_hz = 20\nphase1_us = 20000\n", ["phase1_us = 20000 µs", "10000 µs"]),
    ("frequency_hz = 20000\n", ["period_us = 50 µs", "100 µs"]),
    ("frequency_hz = 20\namplitude_ma = 25\n", ["amplitude_ua = 25000 µA", "10000 µA"]),
    ("frequency_hz = 20\nphase_one_us = 200\n", ["phase_one_us", "unknown key"]),
    ("frequency_hz = 20\nphase1_us = -1\n", ["phase1_us", "-1"]),
])
def test_upload_bad_file_exit2_and_nothing_changes(vp, capsys, client, tmp_path, body, words):
    assert run(vp, "upload", PTNS) == 0
    before = client.get_params(0)
    capsys.readouterr()
    nacks_before = client.status()["counters"]["nacks"]
    f = tmp_path / "bad.toml"
    f.write_text(explicit(body))
    assert run(vp, "upload", str(f)) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert client.get_params(0) == before
    # refused on the host: no SET_PARAMS reached the device (it would have been NACKed there)
    assert client.status()["counters"]["nacks"] == nacks_before


def test_upload_firmware_nack_path(vp, capsys, monkeypatch, tmp_path, client):
    # bypass host validation: the firmware must refuse and the CLI must say why, exit 2
    monkeypatch.setattr(cli.paramfile, "check", lambda ps, limits: ps.params)
    f = tmp_path / "too_long.toml"
    f.write_text(explicit("frequency_hz = 20\nphase1_us = 20000\n"))
    assert run(vp, "upload", str(f)) == 2
    err = capsys.readouterr().err
    assert "phase1_us = 20000 µs" in err and "10000 µs" in err
    with pytest.raises(DeviceError) as ei:
        client.get_params(0)
    assert ei.value.code == M.E_NOT_CONFIGURED


def test_client_nack_names_field(client):
    with pytest.raises(DeviceError) as ei:
        client.set_params(2, {"phase1_ns": 200000, "phase2_ns": 200000, "period_ns": 600000})  # duty 67 %
    assert ei.value.field == "duty_permille"
    assert "duty cycle" in str(ei.value) and "50 %" in str(ei.value)
    with pytest.raises(DeviceError) as ei:
        client.set_params(0, {"amplitude_ua": 20000})
    assert ei.value.field == "amplitude_ua" and ei.value.value == 20000 and ei.value.limit == 10000


def test_start_stop_status(vp, capsys, client):
    assert run(vp, "start") == 2  # nothing configured yet
    assert "upload" in capsys.readouterr().err
    assert run(vp, "upload", PTNS, "-c", "0") == 0
    assert run(vp, "upload", SCS_BURST, "-c", "2") == 0
    assert run(vp, "start") == 0
    assert "channels 0, 2" in capsys.readouterr().out
    vp.advance(0.2)
    rc, st = run_json(vp, capsys, "status")
    assert rc == 0
    states = [ch["state"] for ch in st["channels"]]
    assert states == ["running", "idle", "running", "idle"]
    assert st["channels"][0]["pulses"] >= 4
    assert st["channels"][2]["pulses"] >= 5
    assert {"crc_errors", "frames_dropped"} <= set(st["counters"])
    assert {"crc_errors", "frames_dropped", "retransmits"} <= set(st["host_counters"])
    assert run(vp, "stop", "--channel", "0") == 0
    assert "stop: channel 0" in capsys.readouterr().out
    vp.advance(0.5)  # the stop lands at a pulse-group boundary (the DMA may hold a few groups queued)
    rc, st = run_json(vp, capsys, "status")
    assert [ch["state"] for ch in st["channels"]][:3] == ["idle", "idle", "running"]
    assert run(vp, "stop") == 0
    vp.advance(0.5)
    ev = client.wait_event("train_done", timeout=2)
    assert ev is not None
    assert run(vp, "status") == 0
    assert "idle" in capsys.readouterr().out


def test_status_counters_after_bad_frames(vp, capsys):
    fd = os.open(vp.path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\x13\x37garbage\x00")  # bad COBS / too short
        bad = bytearray(encode_frame(M.STATUS, 7))
        bad[3] ^= 0x5A  # corrupt the CRC-covered part
        os.write(fd, bytes(bad))
        os.write(fd, b"\x00\x00")  # empty frames are padding
        time.sleep(0.2)
    finally:
        os.close(fd)
    rc, st = run_json(vp, capsys, "status")
    assert rc == 0
    assert st["counters"]["crc_errors"] >= 1
    assert st["counters"]["frames_dropped"] >= 1
    assert all(ch["state"] == "idle" for ch in st["channels"])


def _raw_exchange(ser, dec, wire, n=1, timeout=2.0):
    ser.write(wire)
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < n and time.monotonic() < deadline:
        frames += [f for f in dec.feed(ser.read(ser.in_waiting or 1)) if f.type != M.EVENT]
    return frames


def test_duplicate_request_executes_once(vp):
    ser = transport.open_port(vp.path)
    dec = FrameDecoder()
    try:
        assert _raw_exchange(ser, dec, encode_frame(M.HELLO, 100))[0].type == M.HELLO | M.RESPONSE
        from picostim import paramfile
        body = M.encode_params(0, paramfile.load(PTNS).params)
        assert _raw_exchange(ser, dec, encode_frame(M.SET_PARAMS, 101, body))[0].type == M.SET_PARAMS | M.RESPONSE
        start = encode_frame(M.START, 102, b"\x01")
        first = _raw_exchange(ser, dec, start)
        second = _raw_exchange(ser, dec, start)  # a retry: same bytes, same seq
        assert first[0].type == M.START | M.RESPONSE
        assert (second[0].type, second[0].seq, second[0].body) == (first[0].type, first[0].seq, first[0].body)
        # executed once: a second real START on a running channel would have been NACKed (bad state)
        again = _raw_exchange(ser, dec, encode_frame(M.START, 103, b"\x01"))
        assert again[0].type == M.NACK and M.decode_nack(again[0].body)["code"] == M.E_BAD_STATE
        st = M.decode_status(_raw_exchange(ser, dec, encode_frame(M.STATUS, 104))[0].body)
        assert st["counters"]["duplicates"] == 1
    finally:
        ser.close()


def test_reconnect_after_close(vp):
    c1 = Client(transport.open_port(vp.path))
    c1.set_params(3, {"phase1_ns": 100000, "phase2_ns": 100000, "period_ns": 10000000})
    c1.close()
    c2 = Client(transport.open_port(vp.path))
    assert c2.get_params(3)["params"]["phase1_ns"] == 100000
    assert c2.status()["channels"][3]["state"] == "idle"
    c2.close()
    c3 = Client(transport.open_port(vp.path))
    assert c3.hello()["channels"] == 4
    c3.close()


def _cli_subprocess(*argv, timeout=60):
    env = dict(os.environ)
    env.pop("PICOSTIM_PORT", None)
    return subprocess.run([sys.executable, "-m", "picostim"] + list(argv), capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))


def test_python_m_picostim_virtual_info():
    r = _cli_subprocess("--virtual", "info", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["channels"] == 4


def test_python_m_picostim_virtual_upload_bad_exit2(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(explicit("frequency_hz = 20\nphase2_us = 12000\n"))
    r = _cli_subprocess("--virtual", "upload", str(f))
    assert r.returncode == 2
    assert "phase2_us = 12000 µs" in r.stderr and "10000 µs" in r.stderr


def test_link_error_exit1(tmp_path):
    r = _cli_subprocess("--port", str(tmp_path / "no-such-port"), "info")
    assert r.returncode == 1 and "cannot open" in r.stderr


def test_picostim_virtual_command_serves_until_stopped():
    proc = subprocess.Popen([sys.executable, "-m", "picostim", "virtual"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/")
        r = _cli_subprocess("--port", path, "upload", PTNS)
        assert r.returncode == 0, r.stderr
        r = _cli_subprocess("--port", path, "params", "-c", "0", "--json")  # state persists across commands
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[0]["realised"]["phase1_ticks"] == 25000
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_watch_shows_progress(vp, capsys, tmp_path):
    f = tmp_path / "short.toml"
    f.write_text(explicit("frequency_hz = 100\nphase1_us = 100\nphase2_us = 100\ntrain_duration_s = 0.2\n"))
    assert run(vp, "upload", str(f)) == 0
    assert run(vp, "start", "-c", "0") == 0
    capsys.readouterr()
    vp.advance(0.05)
    assert run(vp, "watch", "--interval", "0.05", "--duration", "0.2", "--json") == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    st = [x for x in lines if "channels" in x][0]
    assert st["channels"][0]["train_pulses"] == 20
    assert st["channels"][0]["pulses"] >= 1
    vp.advance(0.3)
    assert run(vp, "watch", "--interval", "0.05") == 0  # returns once every channel is idle
    out = capsys.readouterr().out
    assert "ch0 idle 20 pulses" in out  # (events sent while no host had the port open are gone)
