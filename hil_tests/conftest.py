"""The bench for the HIL suite: the virtual Pico by default, a real board + logic analyzer when
PICOSTIM_PORT is set (``make hil PORT=/dev/ttyACM0 ANALYZER=fx2lafw``; wiring in docs/HARDWARE.md).

Every capture a test checks comes from executing the firmware's generated PIO program in the emulator
(virtual) or from sigrok-cli (board); nothing is synthesised from the parameters under test.
"""

from __future__ import annotations

import os

import pytest

from picostim import runner
from picostim.client import Client
from picostim.transport import open_port
from picostim.virtual.device import VirtualPico

BOARD_PORT = os.environ.get("PICOSTIM_PORT") or None
ANALYZER = os.environ.get("PICOSTIM_ANALYZER", "fx2lafw")
SAMPLERATE = float(os.environ.get("PICOSTIM_SAMPLERATE", "24e6"))


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.hil)


class VirtualBench:
    virtual = True

    def __init__(self) -> None:
        self.vp = VirtualPico()
        self.client = Client(open_port(self.vp.open()))
        self.client.hello()

    def run(self, params, duration_s, channel=0, **kw) -> runner.RunResult:
        return runner.run_virtual(self.vp, self.client, params, duration_s, channel=channel, **kw)

    def close(self) -> None:
        self.client.close()
        self.vp.close()


class BoardBench:
    virtual = False

    def __init__(self, port: str, tmp_path) -> None:
        self.client = Client(open_port(port))
        self.client.hello()
        self.tmp_path = tmp_path

    def run(self, params, duration_s, channel=0, **kw) -> runner.RunResult:
        return runner.run_board(self.client, params, duration_s, channel=channel, driver=ANALYZER,
                                samplerate=SAMPLERATE, capture=self.tmp_path / "capture.sr", **kw)

    def close(self) -> None:
        self.client.stop(0x0F)
        self.client.close()


@pytest.fixture
def bench(tmp_path):
    b = BoardBench(BOARD_PORT, tmp_path) if BOARD_PORT else VirtualBench()
    yield b
    b.close()


@pytest.fixture
def virtual_bench(bench):
    """For checks that need the virtual bench's extra reach (driving trigger inputs, patching the
    firmware): skipped on a real board, where they need a signal generator on TRIG1."""
    if not bench.virtual:
        pytest.skip("needs the virtual Pico (drives the trigger input / patches the firmware)")
    return bench
