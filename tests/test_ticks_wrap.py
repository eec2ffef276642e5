"""Issue 10 item 3: 32-bit time on the board. The rp2 port's ``ticks_us()`` wraps at 2**30 µs
(17.9 min) and its ticks_diff/ticks_add misbehave silently on anything that is not a small-int tick
value. firmware/ticks.py is the model CI runs (on CPython here, tests/mpy/shims/time.py under the
MicroPython unix port); the virtual Pico's clock is that model, started just before the wrap with
the ``ticks0_us`` device option, so every run below crosses it:

* uptime: STATUS uptime keeps increasing across the wrap (and EVENT times are µs since boot);
* deadman: trips on time when the host's silence spans the wrap (plain subtraction: ~18 min late);
* monitoring: phase-1 readings keep flowing across the wrap and a fault after it is caught in time;
* feeder: a finite train crossing the wrap ends with every pulse; a STOP after the wrap ends at a
  pulse boundary.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import board, ticks
from picostim.client import Client
from picostim.transport import open_port
from picostim.virtual.device import VirtualPico
from picostim.virtual.electrode import Electrode, Fault
from protocol import messages as M
from protocol import params as P
from pulse_check import check_pulses

WRAP = ticks.PERIOD
ENDLESS = P.complete({"phase1_ns": 100_000, "phase2_ns": 100_000, "period_ns": 2_000_000, "amplitude_ua": 500})


# ---- the model --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [WRAP, WRAP + 5, 2**31, 2**40, -1, -WRAP, 1.0, True, None, "5"])
def test_model_rejects_what_the_board_would_misread(bad):
    with pytest.raises((ValueError, TypeError)):
        ticks.model_ticks_diff(bad, 0)
    with pytest.raises((ValueError, TypeError)):
        ticks.model_ticks_diff(0, bad)
    with pytest.raises((ValueError, TypeError)):
        ticks.model_ticks_add(bad, 1)


@pytest.mark.parametrize("delta", [WRAP // 2, -WRAP // 2, WRAP, 2**40, -(2**40), 1.5])
def test_model_add_refuses_deltas_ticks_diff_cannot_return(delta):
    with pytest.raises(OverflowError):
        ticks.model_ticks_add(5, delta)


@given(st.integers(0, WRAP - 1), st.integers(-WRAP // 2 + 1, WRAP // 2 - 1))
def test_model_add_and_diff_are_inverse_across_the_wrap(t, d):
    u = ticks.model_ticks_add(t, d)
    assert 0 <= u < WRAP and u == (t + d) % WRAP
    assert ticks.model_ticks_diff(u, t) == d and ticks.model_ticks_diff(t, u) == -d


def test_cpython_uses_the_model():
    assert ticks.ticks_diff is ticks.model_ticks_diff and ticks.ticks_add is ticks.model_ticks_add


def test_uptime_counts_wraps():
    clock = [WRAP - 10]
    up = ticks.Uptime(lambda: clock[0])
    for step in (5, 4, 3, 500_000_000, 600_000_000, 1, 536_870_000):
        before = up.now_us()
        clock[0] = (clock[0] + step) % WRAP
        assert up.now_us() == before + step
    assert up.wraps == 2
    assert up.at_us(ticks.ticks_add(clock[0], -7)) == up.now_us() - 7


def test_virtual_clock_is_the_wrapping_model():
    with pytest.raises(ValueError):
        VirtualPico(channels=1, ticks0_us=WRAP)
    vp = VirtualPico(channels=1, ticks0_us=WRAP - 1000)
    assert vp.hal.time_us() == WRAP - 1000
    vp.advance(0.002)
    assert vp.hal.time_us() == 1000 and vp.hal.uptime_us() == WRAP + 1000


# ---- runs across the wrap on the virtual Pico -------------------------------------------------
def _cycle(vp, us_since_boot):
    return (us_since_boot - vp.hal.ticks0_us) * vp.hal.clock_hz // 1_000_000


def test_status_uptime_keeps_increasing_across_the_wrap():
    with VirtualPico(channels=1, ticks0_us=WRAP - 300_000) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        seen = []
        for _ in range(8):  # 8 x 100 ms: the wrap comes after 300 ms
            seen.append(c.status()["uptime_ms"])
            vp.advance(0.1)
        seen.append(c.status()["uptime_ms"])
        assert seen == sorted(seen) and len(set(seen)) == len(seen), seen
        assert seen[0] == (WRAP - 300_000) // 1000
        assert seen[-1] == vp.hal.uptime_us() // 1000 == (WRAP + 500_000) // 1000
        assert vp.hal.time_us() < 600_000  # the tick counter itself did wrap
        boot = [e for e in c.event_log(0) if e["kind"] == "boot"][0]
        assert boot["time_us"] == WRAP - 300_000


def test_deadman_trips_on_time_when_the_silence_spans_the_wrap():
    with VirtualPico(channels=1, ticks0_us=WRAP - 100_000) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        c.set_params(0, ENDLESS)
        c.set_deadman(50)
        c.start(1)
        for _ in range(8):  # the host talks every 10 ms up to 80 ms: 20 ms before the wrap
            vp.advance(0.01)
            c.status()
        last_rx = vp.hal.uptime_us()
        assert vp.controller.state[0] == M.ST_RUNNING and vp.hal.time_us() > WRAP - 25_000
        vp.advance(0.2)  # silence across the wrap
        assert vp.controller.deadman_trips == 1
        ev = c.wait_event("deadman", timeout=1)
        assert ev is not None and ev["value"] == 1
        late_us = ev["time_us"] - last_rx - 50_000
        print("deadman across the wrap: %d us after its time" % late_us)
        assert 0 < late_us <= 2_100, "deadman %d us after its time" % late_us  # one poll (2 ms pulse period)
        assert ev["time_us"] > WRAP  # after the wrap
        assert c.status()["channels"][0]["state"] == "idle"
        n, problems = check_pulses(vp.hal.trace([0]))
        assert not problems and n >= 60


def test_monitoring_keeps_reading_across_the_wrap_and_catches_a_fault_after_it():
    t_fault = 0.8  # s of virtual time; the wrap is at 0.3 s
    el = Electrode(r_series=1000, faults=[Fault("open", t_fault)])
    with VirtualPico(channels=1, ticks0_us=WRAP - 300_000, electrodes=[el]) as vp:
        got = []
        sampler = vp.hal.phase1_samples

        def spy(ch, min_interval_us=0):
            out = sampler(ch, min_interval_us)
            got.extend((vp.hal.system.now, t) for t, _ in out)
            return out

        vp.hal.phase1_samples = spy  # type: ignore[method-assign]
        vp.controller._sampler = spy
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        c.set_params(0, P.complete(dict(ENDLESS, period_ns=10_000_000)))  # 100 Hz, every pulse read
        c.start(1)
        vp.advance(1.0)
        wrap_cycle = _cycle(vp, WRAP)
        after = [t for cyc, t in got if cyc > wrap_cycle]
        before = [t for cyc, t in got if cyc < wrap_cycle]
        assert len(before) >= 25 and len(after) >= 45, (len(before), len(after))  # read across the wrap
        assert all(0 <= t < WRAP for _, t in got) and min(after) < 600_000
        ev = c.wait_event("open", timeout=1)
        assert ev is not None, "the open lead after the wrap was not caught"
        fault_us = vp.hal.ticks0_us + round(t_fault * 1e6)
        assert 0 < ev["time_us"] - fault_us <= 3 * 10_000 + 20  # the 3rd reading after the fault
        assert vp.controller.state[0] == M.ST_FAULT
        n, problems = check_pulses(vp.hal.trace([0]))
        assert not problems and 80 <= n <= 84


def test_a_finite_train_across_the_wrap_ends_with_every_pulse_and_a_stop_after_it_is_clean():
    with VirtualPico(channels=2, ticks0_us=WRAP - 200_000) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        finite = P.complete(dict(ENDLESS, period_ns=10_000_000, train_duration_ns=500_000_000))  # 50 pulses
        c.set_params(0, finite)
        c.set_params(1, ENDLESS)
        c.start(0b11)
        vp.advance(0.35)  # across the wrap
        c.stop(0b10)
        vp.advance(0.4)
        done = {}
        for _ in range(2):
            ev = c.wait_event("train_done", timeout=1)
            assert ev is not None
            done[ev["channel"]] = ev
        assert done[0]["value"] == 50
        assert done[0]["time_us"] > WRAP and done[1]["time_us"] > WRAP
        st = c.status()
        assert [x["state"] for x in st["channels"]] == ["idle", "idle"]
        n0, p0 = check_pulses(vp.hal.trace([0]))
        n1, p1 = check_pulses(vp.hal.trace([1]), "_1")
        assert not p0 and n0 == 50
        assert not p1 and done[1]["value"] == n1 and 170 <= n1 <= 177
        assert all(vp.hal.system.pin_level(p) == 0 for ch in (0, 1)
                   for p in (board.CH_POS[ch], board.CH_NEG[ch], board.CH_RECOVERY[ch]))
