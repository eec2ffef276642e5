"""The way back to the REPL (issue 10 item 7) and SAVE during a train (item 10).

* The REPL request: ACKed only while every channel is idle, refused (E_BAD_STATE naming the channel
  and its state) while one is armed, running or draining; accepted, firmware/main.py returns to the
  REPL with the watchdog stopped and Ctrl-C on. Under the MicroPython unix port (``-i``: the REPL
  takes the pty when main.py returns, as on a board) the real mpremote then enters the raw REPL.
* BOOTSEL pressed in the boot window (main.BOOTSEL_WINDOW_MS after the BOOT event) does the same;
  a press after the window is ignored.
* SAVE (a flash erase with the CPU stalled) is refused while any channel is armed or running.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware import storage
from firmware.controller import Controller
from picostim.client import describe_nack
from protocol import messages as M
from protocol import params as P
from protocol.framing import FrameDecoder, encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from link_targets import GOOD, FakeHal, MemFiles  # noqa: E402

REPL = getattr(M, "REPL", 0x0E)  # (getattr: so this file shows the behaviour missing on older trees)
WATCHDOG_CTRL_CLR = 0x40058000 + 0x3000  # RP2040 datasheet: WATCHDOG_BASE, CTRL at +0, clear alias +0x3000
WATCHDOG_CTRL_ENABLE = 1 << 30


def make():
    out = []
    hal = FakeHal()
    files = MemFiles()
    ctl = Controller(hal, out.append, storage=storage.Store(files))
    return ctl, hal, out, files


def ask(ctl, out, msg_type, body=b"", seq=[100]):
    seq[0] += 1
    out.clear()
    ctl.receive(encode_frame(msg_type, seq[0], body))
    frames = [f for f in FrameDecoder().feed(b"".join(out)) if f.type != M.EVENT]
    assert len(frames) == 1, frames
    return frames[0]


def configured(trigger=P.TRIGGER_SOFTWARE):
    ctl, hal, out, files = make()
    r = ask(ctl, out, M.SET_PARAMS, M.encode_params(0, dict(GOOD, trigger=trigger)))
    assert r.type == M.SET_PARAMS | M.RESPONSE
    return ctl, hal, out, files


def test_repl_request_accepted_when_idle():
    ctl, hal, out, files = configured()
    r = ask(ctl, out, REPL)
    assert r.type == REPL | M.RESPONSE and r.body == b""
    assert ctl.handback is True
    assert [c for c in hal.calls if c[0] in ("start", "stop")] == []  # nothing moved


@pytest.mark.parametrize("case", ["running", "armed", "draining_fault"])
def test_repl_request_refused_while_a_channel_is_live(case):
    ctl, hal, out, files = configured(trigger=P.TRIGGER_EXT1 if case == "armed" else P.TRIGGER_SOFTWARE)
    assert ask(ctl, out, M.START, bytes((1,))).type == M.START | M.RESPONSE
    if case == "draining_fault":  # a fault latched, the stream still plays its last pulse
        ctl.state[0] = M.ST_FAULT
    expect_state = ctl.state[0]
    r = ask(ctl, out, REPL)
    assert r.type == M.NACK
    nack = M.decode_nack(r.body)
    assert (nack["code"], nack["field"], nack["value"], nack["limit"]) == (M.E_BAD_STATE, "channel", 0, expect_state)
    assert ctl.handback is False
    text = describe_nack(nack, REPL)
    assert text.startswith("repl refused: channel 0") and M.STATE_NAMES[expect_state] in text


def test_repl_request_accepted_once_the_train_has_drained():
    ctl, hal, out, files = configured()
    ask(ctl, out, M.START, bytes((1,)))
    assert ask(ctl, out, REPL).type == M.NACK
    hal._running[0] = False
    ctl.poll()  # train_done: idle
    assert ask(ctl, out, REPL).type == REPL | M.RESPONSE and ctl.handback


def test_repl_request_with_a_body_is_refused():
    ctl, hal, out, files = make()
    r = ask(ctl, out, REPL, b"\x01")
    assert r.type == M.NACK and M.decode_nack(r.body)["code"] == M.E_BAD_LENGTH and not ctl.handback


@pytest.mark.parametrize("trigger", [P.TRIGGER_SOFTWARE, P.TRIGGER_EXT1])
def test_save_refused_while_a_channel_runs_or_is_armed(trigger):
    """Item 10: a littlefs write stalls the CPU (flash erase, XIP and interrupts off) for longer than
    the feeder's lookahead; SAVE during a train is refused, naming the channel and its state."""
    ctl, hal, out, files = configured(trigger)
    ask(ctl, out, M.SET_PARAMS, M.encode_params(1, GOOD))
    assert ask(ctl, out, M.START, bytes((1,))).type == M.START | M.RESPONSE
    state = ctl.state[0]
    assert state == (M.ST_ARMED if trigger == P.TRIGGER_EXT1 else M.ST_RUNNING)
    before = dict(files.files)
    r = ask(ctl, out, M.SAVE, M.encode_slot_request(1, 3))  # another channel's parameters: still refused
    assert r.type == M.NACK
    nack = M.decode_nack(r.body)
    assert (nack["code"], nack["field"], nack["value"], nack["limit"]) == (M.E_BAD_STATE, "channel", 0, state)
    assert files.files == before
    hal._running[0] = False
    ctl.poll()
    r = ask(ctl, out, M.SAVE, M.encode_slot_request(1, 3))
    assert r.type == M.SAVE | M.RESPONSE and files.files != before


# ---- firmware/main.py under the MicroPython unix port ----------------------------------------------
mb = pytest.importorskip("picostim.virtual.micropython_board")


def _need_micropython():
    if mb.micropython_binary() is None:
        pytest.skip("micropython unix port not installed")


@pytest.mark.mpy
def test_repl_request_hands_the_port_to_the_repl_and_mpremote_gets_in():
    """The real entry point: ACK, then main.py returns (watchdog stopped through the CTRL clear alias,
    Ctrl-C on) and the REPL has the port; the real mpremote enters the raw REPL and runs code."""
    _need_micropython()
    from picostim import flash

    from picostim import transport
    from picostim.client import Client

    with mb.MicroPythonBoard(repl=True) as board:
        client = Client(transport.open_port(board.path), timeout=2.0, retries=0)
        try:
            assert client.hello()["board_id"] == "e6613852834a2b2c"
            assert client.request(REPL, b"", retries=0) == b""  # the ACK
        finally:
            client.close()
        got = board.read_until(b">>> ", timeout=10)
        assert b"picostim: REPL request: firmware stopped" in got, got
        assert got.endswith(b">>> "), got
        code = ("import machine, micropython\n"
                "print('WDT', [e[2] for e in machine.LOG if e[0] == 'mem' and e[1] == %d])\n" % WATCHDOG_CTRL_CLR)
        r = subprocess.run(flash.mpremote_command() + ["connect", board.path, "resume", "exec", code],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "WDT [%d]" % WATCHDOG_CTRL_ENABLE in r.stdout
        assert board.alive(), board.stderr()


@pytest.mark.mpy
def test_bootsel_pressed_in_the_boot_window_hands_back():
    _need_micropython()
    from firmware import main as fw_main

    start, end = 600, 600 + 2 * getattr(fw_main, "BOOTSEL_POLL_MS", 20) + 200
    assert end < getattr(fw_main, "BOOTSEL_WINDOW_MS", 2000)
    with mb.MicroPythonBoard(repl=True, env={"PICOSTIM_SHIM_BOOTSEL": "%d:%d" % (start, end)}) as board:
        got = board.read_until(b">>> ", timeout=10)
        assert b"picostim: BOOTSEL pressed in the boot window: firmware stopped" in got, got + board.stderr().encode()
        assert board.alive()


@pytest.mark.mpy
def test_bootsel_pressed_after_the_window_is_ignored():
    _need_micropython()
    from firmware import main as fw_main
    from picostim import transport
    from picostim.client import Client

    start = getattr(fw_main, "BOOTSEL_WINDOW_MS", 2000) + 1500  # well after the window (it opens at BOOT, ~0.1 s in)
    with mb.MicroPythonBoard(repl=True, env={"PICOSTIM_SHIM_BOOTSEL": "%d:600000" % start}) as board:
        time.sleep((start + 500) / 1000)
        client = Client(transport.open_port(board.path), timeout=1.0, retries=2)
        try:
            assert client.hello()["board_id"] == "e6613852834a2b2c"  # still picostim
        finally:
            client.close()
        assert b"picostim: BOOTSEL" not in board.read_until(b">>> ", timeout=0.3)
