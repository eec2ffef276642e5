"""picostim flash without a board: the exact mpremote command line, the clean-up code run under the
MicroPython unix port on a fake filesystem, the whole build -> mpremote -> verify sequence with a
recording stand-in for mpremote, and verify() (Ctrl-D soft reboot + HELLO) against the CPython
virtual Pico and against firmware/main.py running under MicroPython."""

import io
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from firmware.controller import FIRMWARE_VERSION
from picostim import cli, flash
from protocol.framing import PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "mpy"))
from mpyrun import micropython_binary, run_micropython  # noqa: E402

device = pytest.importorskip("picostim.virtual.device")
FW = "%d.%d.%d" % tuple(FIRMWARE_VERSION)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return flash.build(tmp_path_factory.mktemp("deploy") / "firmware")


def test_build_tree_is_deployable(tree):
    assert (tree / "main.py").read_bytes() == (ROOT / "firmware" / "main.py").read_bytes()
    for pkg in ("firmware", "protocol"):
        srcs = {p.stem for p in (ROOT / pkg).glob("*.py")}
        assert {p.stem for p in (tree / pkg).glob("*.mpy")} == srcs
        assert not list((tree / pkg).glob("*.py"))  # only .mpy: a stale .py would shadow it on the board
    head = (tree / "protocol" / "crc16.mpy").read_bytes()[:4]
    assert head[:2] == b"M\x06" and head[2] >> 2 == 4  # armv6m native code (the viper CRC)


def test_deploy_command_line_exact(tree):
    (cmd,) = flash.deploy_commands("/dev/ttyACM0", tree, mpremote=["mpremote"])
    assert cmd == ["mpremote", "connect", "/dev/ttyACM0",
                   "exec", flash.mpy_guard_code(tree) + flash.clean_code(), "+",
                   "fs", "cp", "-r", str(tree / "firmware"), str(tree / "protocol"), ":", "+",
                   "fs", "cp", str(tree / "main.py"), ":main.py", "+",
                   "soft-reset"]
    text = flash.format_command(cmd)
    assert text.startswith("mpremote connect /dev/ttyACM0 exec 'import sys\n")
    assert text.endswith("+ fs cp -r %s/firmware %s/protocol : + fs cp %s/main.py :main.py + soft-reset"
                         % (tree, tree, tree))


def test_default_mpremote_is_the_venv_one():
    exe = flash.mpremote_command()
    assert Path(exe[0]).exists()
    assert exe[-1] == "mpremote" or Path(exe[-1]).name == "mpremote"


def test_cli_dry_run_prints_commands(tmp_path, capsys):
    out = tmp_path / "fw"
    rc = cli.main(["--port", "/dev/ttyACM7", "flash", "--dry-run", "--tree", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "built %s" % out in text
    handback = text.index("# first: HELLO, then the REPL request over the picostim protocol on /dev/ttyACM7")
    assert handback < text.index("mpremote connect /dev/ttyACM7")  # the request goes first
    assert "mpremote connect /dev/ttyACM7 exec 'import sys" in text  # the .mpy version guard, then the clean-up
    assert "fs cp -r %s/firmware %s/protocol :" % (out, out) in text
    assert "fs cp %s/main.py :main.py + soft-reset" % out in text
    assert "HELLO" in text
    assert (out / "firmware" / "controller.mpy").is_file()


def test_cli_flash_refuses_virtual(capsys):
    assert cli.main(["--virtual", "flash", "--dry-run"]) == cli.EXIT_BAD_INPUT


@pytest.mark.mpy
def test_clean_code_under_micropython(tmp_path):
    """The clean-up snippet mpremote runs on the board, run by the unix port on a fake board root."""
    if micropython_binary() is None:
        pytest.skip("micropython unix port not installed")
    board = tmp_path / "board"
    for rel in ("main.py", "firmware/controller.py", "firmware/controller.mpy", "protocol/sub/x.mpy",
                "protocol/crc16.mpy", "slots/ch0.bin", "boot.py"):
        (board / rel).parent.mkdir(parents=True, exist_ok=True)
        (board / rel).write_text("x")
    code = flash.clean_code(str(board) + "/")
    run_micropython(code)
    run_micropython(code)  # nothing left to remove: still fine
    left = sorted(p.relative_to(board).as_posix() for p in board.rglob("*"))
    assert left == ["boot.py", "slots", "slots/ch0.bin"]


def test_mpy_version_of_a_built_tree(tree, tmp_path):
    head = (tree / "protocol" / "crc16.mpy").read_bytes()[:3]  # the one module with native code
    assert flash.mpy_version(tree) == (head[1], head[2] & 3, True) == (6, 3, True)
    (tmp_path / "firmware").mkdir()
    (tmp_path / "firmware" / "board.mpy").write_bytes((tree / "firmware" / "board.mpy").read_bytes())
    assert flash.mpy_version(tmp_path) == (6, 0, False)  # bytecode only: any sub-version loads it
    (tmp_path / "firmware" / "board.mpy").unlink()
    (tmp_path / "firmware" / "board.py").write_text("x = 1\n")
    assert flash.mpy_version(tmp_path) is None and flash.mpy_guard_code(tmp_path) == ""
    (cmd,) = flash.deploy_commands("/dev/ttyACM0", tmp_path, mpremote=["mpremote"])
    assert cmd[4] == flash.clean_code()


@pytest.mark.mpy
def test_mpy_guard_under_micropython():
    """The guard runs on a real MicroPython: it passes for the interpreter's own .mpy version and
    raises (so mpremote exits 1 before the clean-up) for another version, or for another
    sub-version when the build has native code (a v1.22 board and a v1.23+ mpy-cross)."""
    if micropython_binary() is None:
        pytest.skip("micropython unix port not installed")
    from mpyrun import MicroPythonError

    (line,) = run_micropython("import sys\nprint(sys.implementation._mpy)")
    ver, sub = int(line) & 0xFF, (int(line) >> 8) & 3
    guard = flash.MPY_GUARD_CODE.format
    assert run_micropython(guard(ver=ver, sub=sub, native=True) + "print('ok')") == ["ok"]
    assert run_micropython(guard(ver=ver, sub=sub - 1, native=False) + "print('ok')") == ["ok"]
    with pytest.raises(MicroPythonError, match=r"loads \.mpy v%d\.%d, the build is v%d\.%d" % (ver, sub, ver, sub - 1)):
        run_micropython(guard(ver=ver, sub=sub - 1, native=True) + "print('ok')")
    with pytest.raises(MicroPythonError, match="the build is v%d" % (ver + 1)):
        run_micropython(guard(ver=ver + 1, sub=sub, native=False) + "print('ok')")


FAKE_MPREMOTE = textwrap.dedent("""
    import sys
    with open(sys.argv[1], "a") as f:
        f.write(repr(sys.argv[2:]) + "\\n")
    sys.exit(int(sys.argv[2] == "connect" and sys.argv[3] == "/dev/fail"))
""")


def _fake_mpremote(tmp_path):
    script = tmp_path / "fake_mpremote.py"
    script.write_text(FAKE_MPREMOTE)
    log = tmp_path / "mpremote.log"
    return [sys.executable, str(script), str(log)], log


def test_flash_sequence_with_recording_mpremote(tmp_path):
    """build -> REPL request (the firmware hands the port back) -> the mpremote invocation -> soft
    reboot + HELLO verify, the board being the virtual Pico (which ACKs the REPL request and, having
    no REPL to go to, keeps serving: verify's HELLO then answers)."""
    mpremote, log = _fake_mpremote(tmp_path)
    out = io.StringIO()
    with device.VirtualPico(channels=4) as vp:
        t0 = time.monotonic()
        info = flash.flash(vp.path, tree=tmp_path / "fw", mpremote=mpremote, out=out)
        elapsed = time.monotonic() - t0
        assert getattr(vp.controller, "handback", False) is True  # the REPL request came and was accepted
        counters = vp.controller.decoder
        assert counters.frames_dropped + counters.crc_errors >= 1  # the Ctrl-C/Ctrl-D bytes, dropped
    text = out.getvalue()
    assert text.index("handed the port back to the MicroPython REPL") < text.index("$ ")  # before mpremote
    calls = [eval(line) for line in log.read_text().splitlines()]  # noqa: S307 - our own repr()
    assert calls == [flash.deploy_commands(vp.path, tmp_path / "fw", mpremote=["x"])[0][1:]]
    assert info["protocol_version"] == PROTOCOL_VERSION and info["firmware_version"] == FW
    assert "verified: firmware %s, protocol %d" % (FW, PROTOCOL_VERSION) in out.getvalue()
    assert elapsed < 5


def test_flash_reports_mpremote_failure(tmp_path):
    script = tmp_path / "failing_mpremote.py"
    script.write_text("import sys\nsys.exit(1)\n")
    with device.VirtualPico(channels=4) as vp:
        with pytest.raises(flash.FlashError, match="mpremote failed .exit 1"):
            flash.flash(vp.path, tree=tmp_path / "fw", mpremote=[sys.executable, str(script)], out=io.StringIO())


def test_flash_cannot_open_the_port(tmp_path):
    mpremote, log = _fake_mpremote(tmp_path)
    with pytest.raises(flash.FlashError, match="cannot open /dev/fail"):
        flash.flash("/dev/fail", tree=tmp_path / "fw", mpremote=mpremote, out=io.StringIO())
    assert not log.exists()  # mpremote never ran


def test_flash_refused_while_a_channel_runs(tmp_path):
    """A running train keeps the port: flash stops with the channel and its state, mpremote never runs,
    the train goes on."""
    from picostim.client import Client
    from picostim.transport import open_port
    from protocol import params as P

    mpremote, log = _fake_mpremote(tmp_path)
    with device.VirtualPico(channels=4) as vp:
        with Client(open_port(vp.path), timeout=2.0) as c:
            c.set_params(1, P.complete({"phase1_ns": 100_000, "phase2_ns": 100_000, "period_ns": 10_000_000,
                                        "amplitude_ua": 500}))
            c.start(0b10)
        with pytest.raises(flash.FlashError, match=r"repl refused: channel 1: .*\(it is running\)"):
            flash.flash(vp.path, tree=tmp_path / "fw", mpremote=mpremote, out=io.StringIO(), skip_build=True)
        assert vp.controller.state[1] == 2 and not getattr(vp.controller, "handback", False)
    assert not log.exists()


def test_flash_on_a_firmware_without_the_repl_request(tmp_path):
    """An older picostim answers "unknown message type": flash says what to do instead of letting
    mpremote time out."""
    from protocol import messages as M

    mpremote, log = _fake_mpremote(tmp_path)
    with device.VirtualPico(channels=4) as vp:
        del vp.controller._handlers[M.REPL]
        with pytest.raises(flash.FlashError, match="has no REPL request.*docs/HARDWARE.md"):
            flash.flash(vp.path, tree=tmp_path / "fw", mpremote=mpremote, out=io.StringIO(), skip_build=True)
    assert not log.exists()


def test_handback_probe_on_a_silent_port_types_no_repl_control_byte():
    """Nothing answers HELLO (a board at its REPL): hand_back gives up quietly (mpremote goes ahead),
    and what it sent contains no Ctrl-B/C/D/E, which the REPL would act on (Ctrl-D: soft reboot into
    main.py, i.e. picostim would take the port again)."""
    import select

    master, slave = os.openpty()
    try:
        import tty

        tty.setraw(slave)
        out = io.StringIO()
        assert flash.hand_back(os.ttyname(slave), timeout=0.2, out=out) is None
        assert "assuming the MicroPython REPL has the port" in out.getvalue()
        sent = b""
        while select.select([master], [], [], 0.05)[0]:
            sent += os.read(master, 4096)
        assert sent and not set(sent) & {0x02, 0x03, 0x04, 0x05}
    finally:
        os.close(master)
        os.close(slave)


def test_verify_against_virtual_pico():
    with device.VirtualPico(channels=4) as vp:
        info = flash.verify(vp.path)
    assert info["firmware_version"] == FW and info["protocol_version"] == PROTOCOL_VERSION
    assert info["channels"] == 4


def test_verify_version_mismatch():
    with device.VirtualPico(channels=4) as vp:
        with pytest.raises(flash.FlashError, match="this build is 9.9.9"):
            flash.verify(vp.path, expect_firmware="9.9.9")


def test_verify_nothing_answers():
    master, slave = os.openpty()
    try:
        with pytest.raises(flash.FlashError, match="no picostim answer"):
            flash.verify(os.ttyname(slave), timeout=0.1, retries=1)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.mpy
def test_verify_against_firmware_under_micropython():
    """The real entry point under MicroPython: the reboot bytes (0x03 0x04) are dropped as garbage,
    Ctrl-C does not stop it (kbd_intr(-1)), and HELLO answers."""
    mb = pytest.importorskip("picostim.virtual.micropython_board")
    if mb.micropython_binary() is None:
        pytest.skip("micropython unix port not installed")
    with mb.MicroPythonBoard() as board:
        info = flash.verify(board.path)
        assert board.alive(), board.stderr()
    assert info["firmware_version"] == FW and info["board_id"] == "e6613852834a2b2c"
