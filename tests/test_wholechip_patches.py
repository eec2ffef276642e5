"""chip.mjs's own rp2040js patches (the whole-chip board, picostim --virtual=rp2040), each against an
RP2040 datasheet fact, without a MicroPython image: host/picostim/virtual/wholechip/selftest.mjs
drives the patched chip through its bus while the CPU runs a two-instruction program. Each check is
also run on stock rp2040js (--no-patches) and must fail there, so none passes by construction.
regbus's PIO patches (FIFO join, synchroniser, delays, WAIT release, loop-back) have their own tests
in tests/test_hal_regbus.py."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent.parent / "host" / "picostim" / "virtual" / "wholechip"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None or not (HERE / "node_modules" / "rp2040js").is_dir(),
                                reason="needs Node.js and rp2040js (make installs it)")


def selftest(*args):
    out = subprocess.run([NODE, str(HERE / "selftest.mjs"), *args], capture_output=True, text=True, timeout=120,
                         cwd=str(HERE))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def patched():
    return selftest()


@pytest.fixture(scope="module")
def stock():
    return selftest("--no-patches")


@pytest.mark.parametrize("mode", ["lockstepRunning", "lockstepWfi"])
def test_pio_runs_one_cycle_per_cpu_cycle(patched, stock, mode):
    # datasheet 3.4 / 3.5.5: `set pins,1 [3]` + `set pins,0 [3]` at CLKDIV 1 toggles every 4 clk_sys
    # cycles, also while the CPU sleeps in WFI (the PIO's clock is clk_sys, not the core)
    r = patched[mode]
    assert r["cycles"] == 1000 and r["gaps"] == [4] and r["edges"] == 250
    assert r["cpuWaiting"] == (mode == "lockstepWfi")
    assert stock[mode]["gaps"] != [4]  # stock: unrelated to emulated time


def test_bootsel_reads_released(patched, stock):
    # Pico: QSPI_SS has a pull-up, BOOTSEL pulls it to ground; GPIO_HI_IN bit 1 is QSPI_SS
    assert patched["bootselReleased"] == 1 and patched["bootselPressed"] == 0
    assert stock["bootselReleased"] == 0  # stock reads "pressed": main.py would stay at the REPL


def test_adc_samples_the_electrode_model_at_conversion_start(patched, stock):
    # datasheet 4.9.2: the conversion samples when it starts and takes 96 cycles of 48 MHz (2 us);
    # the phase ended 1 us into the conversion: the result is the voltage at the start, from 1 mA
    # (MCP4822 code 400 latched by LDAC) into the default 1 kohm + 10 uF electrode: ~1 V -> code 248
    r = patched["adc"]
    assert r["result"] == r["expect"] == 248
    assert r["readyAt1us"] == 0 and r["readyCycles"] == 250
    assert stock["adc"]["result"] != stock["adc"]["expect"]
