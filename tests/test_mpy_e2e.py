"""End to end under real MicroPython: ``firmware/main.py`` itself runs under the unix port with the
machine/rp2 shims, its USB-CDC stdin/stdout on a raw pty, and the host CLI/API drives it over that
pty exactly as over a board's /dev/ttyACM0 (picostim/virtual/micropython_board.py).

The HAL is the board's Rp2Hal on shim hardware: no PIO/DMA behind it, so a started train reads as
drained after its tail time; timing and captures are tested on the CPython virtual Pico.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware.controller import FIRMWARE_VERSION
from firmware.limits import LIMITS
from picostim import cli, transport
from picostim.client import Client, DeviceError
from picostim.virtual.micropython_board import MicroPythonBoard, MicroPythonBoardError, micropython_binary
from protocol import messages as M
from protocol import params as P
from protocol.framing import PROTOCOL_VERSION, FrameDecoder, encode_frame

pytestmark = [pytest.mark.mpy,
              pytest.mark.skipif(micropython_binary() is None, reason="micropython unix port not installed")]
ROOT = Path(__file__).resolve().parent.parent
PTNS = str(ROOT / "presets" / "ptns.toml")
SCS_BURST = str(ROOT / "presets" / "scs_burst.toml")


@pytest.fixture(scope="module")
def board():
    with MicroPythonBoard() as b:
        yield b
        assert b.alive(), b.stderr()
        assert b.stderr() == ""


@pytest.fixture
def client(board):
    c = Client(transport.open_port(board.path, exclusive=False), timeout=2.0, retries=1)
    c.hello()
    yield c
    c.close()


def cli_json(board, capsys, *argv):
    rc = cli.main(["--port", board.path] + list(argv) + ["--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def raw_exchange(board, wire, n_frames=1, timeout=3.0):
    """Write raw bytes to the board, return the first ``n_frames`` non-event frames (and the raw reply)."""
    ser = transport.open_port(board.path, exclusive=False)
    try:
        ser.reset_input_buffer()
        ser.write(wire)
        dec = FrameDecoder()
        got, raw = [], b""
        deadline = time.monotonic() + timeout
        while len(got) < n_frames and time.monotonic() < deadline:
            data = ser.read(256)
            raw += data
            got += [f for f in dec.feed(data) if f.type != M.EVENT]
        return got, raw
    finally:
        ser.close()


def test_boot_event_and_process(board):
    assert board.boot_event["kind"] == "boot" and board.boot_event["channel"] == 0
    assert board.alive()
    assert "firmware/main.py" in " ".join(board.command())


def test_cli_info(board, capsys):
    rc, info = cli_json(board, capsys, "info")
    assert rc == 0
    assert info["firmware_version"] == "%d.%d.%d" % FIRMWARE_VERSION
    assert info["protocol_version"] == PROTOCOL_VERSION
    assert info["channels"] == 4
    assert info["board_id"] == "e6613852834a2b2c"  # the shim's machine.unique_id()
    assert info["limits"] == LIMITS


def test_cli_upload_start_status_stop(board, capsys):
    rc, up = cli_json(board, capsys, "upload", PTNS, "--channel", "1")
    assert rc == 0, up
    assert up["channel"] == 1 and up["realised"]["phase1_us"] > 0
    rc, up2 = cli_json(board, capsys, "upload", SCS_BURST, "--channel", "2")
    assert rc == 0 and up2["requested"]["burst_pulses"] == 5
    rc = cli.main(["--port", board.path, "start", "--channel", "1", "--channel", "2"])
    assert rc == 0
    assert "start: channels 1, 2" in capsys.readouterr().out
    rc, st = cli_json(board, capsys, "status")
    assert rc == 0
    chans = {c["channel"]: c for c in st["channels"]}
    assert chans[1]["impedance_ohm"] == pytest.approx(1000, abs=40)  # the shim ADC: 1 kΩ electrode
    assert chans[1]["state"] in ("running", "idle")  # shim DMA: drained after the tail time
    assert st["counters"]["nacks"] == 0 and st["counters"]["crc_errors"] == 0
    rc = cli.main(["--port", board.path, "stop"])
    assert rc == 0 and "stop: channels 0, 1, 2, 3" in capsys.readouterr().out
    time.sleep(0.05)
    rc, st = cli_json(board, capsys, "status")
    assert [c["state"] for c in st["channels"]] == ["idle"] * 4
    rc, params = cli_json(board, capsys, "params", "--channel", "2")
    assert rc == 0 and params[0]["requested"]["burst_pulses"] == 5


def test_nack_from_the_firmware(client):
    with pytest.raises(DeviceError) as exc:
        client.start(1 << 3)  # channel 3 has no parameters yet on this board
    assert exc.value.code == M.E_NOT_CONFIGURED
    with pytest.raises(DeviceError) as exc:
        client.get_params(7)
    assert exc.value.code == M.E_BAD_CHANNEL
    with pytest.raises(DeviceError) as exc:
        client.set_params(0, dict(P.complete({}), amplitude_ua=LIMITS["max_amplitude_ua"] + 1))
    assert exc.value.code == M.E_OUT_OF_RANGE and exc.value.field == "amplitude_ua"
    with pytest.raises(DeviceError) as exc:
        client.request(M.STATUS, b"x")
    assert exc.value.code == M.E_BAD_LENGTH


def test_bad_frames_counted(board, client):
    before = client.status()["counters"]
    good = encode_frame(M.HELLO, 0x1234)
    bad_crc = bytearray(good)
    bad_crc[3] ^= 0x55
    # garbage, a CRC error, an oversize run, then a good STATUS that must still be answered
    client.port.write(b"\x01\x02garbage\x00" + bytes(bad_crc) + b"\x07" * 400 + b"\x00")
    st = client.status()
    c = st["counters"]
    assert c["crc_errors"] == before["crc_errors"] + 1
    assert c["frames_dropped"] >= before["frames_dropped"] + 2
    assert board.alive()


def test_duplicate_answered_from_cache(board, client):
    client.set_params(3, P.complete({}))
    before = client.status()["counters"]["duplicates"]
    seq = 0x4242
    wire = encode_frame(M.START, seq, bytes([1 << 3]))
    frames, raw = raw_exchange(board, wire + wire, n_frames=2)
    assert [f.type for f in frames] == [M.START | M.RESPONSE] * 2  # executed once: a 2nd START would NACK
    assert frames[0].seq == frames[1].seq == seq and frames[0].body == frames[1].body
    assert client.status()["counters"]["duplicates"] == before + 1
    client.stop(1 << 3)


def test_binary_clean_link(board, client):
    """Bytes a cooked tty would eat or translate (Ctrl-C, LF, CR, XON/XOFF, DEL, Ctrl-D, Ctrl-Z) in the
    sequence number and the body reach the firmware and come back untouched."""
    specials = b"\x03\x0a\x0d\x11\x13\x7f\x04\x1a\x1b"
    for i, seq in enumerate((0x0a0d, 0x0303, 0x1311, 0x7f04)):
        body = specials[i:] + specials[:i]
        wire = encode_frame(M.HELLO, seq, body)  # HELLO ignores its body
        frames, _ = raw_exchange(board, wire)
        assert frames and frames[0].seq == seq and frames[0].type == M.HELLO | M.RESPONSE
    assert board.alive(), board.stderr()


def test_impedance_and_clear_fault(client):
    readings = client.impedance(0b1111)
    assert [r["class"] for r in readings] == ["ok"] * 4
    client.clear_fault(0b1111)


def test_state_survives_reconnect(board):
    with Client(transport.open_port(board.path, exclusive=False), timeout=2.0) as c1:
        c1.set_params(0, dict(P.complete({}), amplitude_ua=1234))
    with Client(transport.open_port(board.path, exclusive=False), timeout=2.0) as c2:
        assert c2.get_params(0)["params"]["amplitude_ua"] == 1234


def test_open_short_electrode_refuses_start():
    with MicroPythonBoard(ohm=20) as b, Client(transport.open_port(b.path), timeout=2.0) as c:
        c.set_params(0, P.complete({}))
        with pytest.raises(DeviceError) as exc:
            c.start(1)
        assert exc.value.code == M.E_IMPEDANCE
        assert c.status()["channels"][0]["state"] == "idle"


def test_firmware_crash_is_reported(tmp_path):
    bad = tmp_path / "main.py"
    bad.write_text("import firmware.controller\nraise RuntimeError('boom at boot')\n")
    with pytest.raises(MicroPythonBoardError, match="boom at boot"):
        MicroPythonBoard(main=bad, boot_timeout=5).open()


def test_cli_virtual_micropython_subprocess():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "host")]))
    r = subprocess.run([sys.executable, "-m", "picostim", "--virtual=micropython", "info", "--json"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["protocol_version"] == PROTOCOL_VERSION and info["channels"] == 4
    r = subprocess.run([sys.executable, "-m", "picostim", "--virtual", "micropython", "run", PTNS],
                       capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 2 and "CPython virtual Pico" in r.stderr


def test_argv_normalisation_keeps_plain_virtual():
    assert cli.normalise_argv(["--virtual", "info"]) == ["--virtual=cpython", "info"]
    assert cli.normalise_argv(["--virtual", "micropython", "info"]) == ["--virtual=micropython", "info"]
    assert cli.normalise_argv(["--virtual=micropython", "info"]) == ["--virtual=micropython", "info"]
    args = cli.build_parser().parse_args(cli.normalise_argv(["--virtual", "status"]))
    assert args.virtual == "cpython" and args.command == "status"
