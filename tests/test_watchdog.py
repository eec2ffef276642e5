"""Watchdog (SPEC §6, issue 7): a stalled controller on the virtual Pico (machine.WDT model, wall
time) resets the board: outputs idle, nothing armed or configured, reset reason 1 (watchdog) in
HELLO and in the boot EVENT; flash slots survive, so the host can reload and go on."""

from __future__ import annotations

import time

from picostim.client import Client
from picostim.transport import open_port
from picostim.virtual.device import VirtualPico
from protocol import messages as M
from protocol import params as P
from reliability_report import record

ENDLESS = P.complete({"phase1_ns": 100_000, "phase2_ns": 100_000, "period_ns": 2_000_000, "amplitude_ua": 500})


def _drive_pins_idle(hal) -> bool:
    from firmware import board

    return all(hal.system.pin_level(pin) == 0 for ch in range(hal.channels)
               for pin in (board.CH_POS[ch], board.CH_NEG[ch], board.CH_RECOVERY[ch]))


def test_a_stalled_controller_is_reset_by_the_watchdog_to_the_safe_state(tmp_path):
    with VirtualPico(channels=2, realtime=True, watchdog_ms=300, flash_dir=str(tmp_path)) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        assert c.hello()["reset_reason"] == 0
        c.set_params(0, ENDLESS)
        c.save(0, 3)
        c.start(1)
        time.sleep(0.1)
        assert c.status()["channels"][0]["state"] == "running"
        old_hal = vp.hal
        t0 = time.monotonic()
        vp.stall_controller()
        boot = c.wait_event("boot", timeout=3)
        latency = time.monotonic() - t0
        assert boot is not None and boot["value"] == 1, "the host sees the reset reason in the boot event"
        assert vp.resets == 1 and vp.hal is not old_hal
        assert 0.3 <= latency < 1.5
        assert _drive_pins_idle(vp.hal)
        ctl = vp.controller
        assert ctl.state == [M.ST_IDLE] * 2 and ctl.params == [None, None]
        info = c.hello()
        assert info["reset_reason"] == 1
        st = c.status()
        assert [ch["state"] for ch in st["channels"]] == ["idle", "idle"]
        # the board serves again: reload the saved set from flash and run
        c.load(0, 3)
        c.start(1)
        time.sleep(0.05)
        assert c.status()["channels"][0]["state"] == "running"
        c.stop(1)
        record("watchdog", timeout_ms=300, resets=vp.resets, reset_latency_ms=round(latency * 1000),
               outputs_idle_after_reset=True)


def test_a_healthy_realtime_board_is_never_reset():
    with VirtualPico(channels=1, realtime=True, watchdog_ms=300) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        c.set_params(0, ENDLESS)
        c.start(1)
        time.sleep(0.8)
        assert vp.resets == 0 and c.status()["channels"][0]["state"] == "running"
