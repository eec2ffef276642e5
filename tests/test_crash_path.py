"""Issue 10 item 5, the crash path (SPEC §6, docs/SAFETY.md §7), on the virtual Pico.

An exception is injected at every controller entry point the main loop calls: the link decoding in
``receive`` (outside any handler), every request handler, and ``poll``. Each time a train is running
on channel 0 with the crash landing in the middle of a pulse's phase 1, and channel 1 is armed on
external trigger 1. Checked from the emulated PIO's pin record (the capture) and over the link:

* the pulse in progress completes (full phase 1 and phase 2; every pulse complete and balanced, POS
  and NEG never together), at most the one already-queued pulse follows, then every output is idle
  for good: the SMs are halted, the DMA aborted, the FIFOs empty, the DACs shut down;
* the armed channel is halted: a trigger edge after the crash gives no pulse;
* the host can read why: boot EVENT (value 3 = crash) followed by a crash EVENT naming the exception
  and where it was raised, both replayed by EVENT_LOG after any number of later events; HELLO's
  reset_reason is 3; STATUS counts the crash;
* the board serves again (a fresh controller, nothing configured) and can run a train.
"""

from __future__ import annotations

import pytest

from firmware import board
from picostim.client import Client, LinkError
from picostim.transport import open_port
from picostim.virtual.device import VirtualPico
from protocol import messages as M
from protocol import params as P
from pulse_check import check_pulses

TRAIN = P.complete({"phase1_ns": 200_000, "phase2_ns": 200_000, "period_ns": 2_000_000, "amplitude_ua": 500})
ARMED = dict(TRAIN, trigger=P.TRIGGER_EXT1)
PH1 = 25_000  # 200 µs at 125 MHz

# (entry point, request type or None, exception to raise, expected "where")
CASES = [("link", None, MemoryError, "link"), ("poll", None, ValueError, "poll")] + [
    ("handler", t, exc, name) for (t, name), exc in zip(sorted(M.REQUEST_NAMES.items()),
                                                        [MemoryError, ValueError, TypeError, IndexError,
                                                         KeyError, ZeroDivisionError, OverflowError,
                                                         OSError, RuntimeError, AttributeError,
                                                         MemoryError, ValueError, TypeError, KeyError,
                                                         IndexError, OSError] * 2)]


def _first_pin_rises(hal, ch):
    return [t for t in hal.system.edges(board.CH_NEG[ch])[0::2]]


def _inject(vp: VirtualPico, entry: str, req, exc) -> None:
    ctl = vp.controller

    def boom(*_a, **_k):
        raise exc("injected")

    if entry == "link":
        ctl.decoder.feed = boom
    elif entry == "poll":
        ctl._gate_input = boom  # called for every channel in every poll
    else:
        ctl._handlers[req] = boom


@pytest.mark.parametrize("entry,req,exc,where", CASES, ids=[
    c[0] if c[1] is None else M.REQUEST_NAMES[c[1]] for c in CASES])
def test_exception_at_entry_point_goes_safe_without_cutting_a_pulse(entry, req, exc, where):
    with VirtualPico(channels=2) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5, retries=0)
        c.set_params(0, TRAIN)
        c.set_params(1, ARMED)
        c.start(0b11)
        with vp.lock:  # into the 6th pulse's phase 1 (the main loop is busy: no poll)
            vp.run_until(vp.hal.train_start[0] + 5 * 250_000 + 1000)
            rise = _first_pin_rises(vp.hal, 0)[-1]
            vp.hal.system.run_until(rise + PH1 // 2)
            crash_at = vp.hal.system.now
            assert vp.hal.system.pin_level(board.CH_NEG[0]) == 1  # mid phase 1
            assert vp.controller.state == [M.ST_RUNNING, M.ST_ARMED]
            _inject(vp, entry, req, exc)
        if entry == "poll":
            vp.advance(0)
        else:
            with pytest.raises(LinkError):  # the request that crashed is never answered
                c.request(req if req is not None else M.STATUS, b"", timeout=0.3)
        crash = c.wait_event("crash", timeout=3)
        assert crash is not None, "no crash EVENT"
        assert M.decode_crash(crash["value"]) == {"exception": exc.__name__, "where": where}
        assert len(vp.crashes) == 1 and isinstance(vp.crashes[0], exc)

        # the capture: the pulse in progress completed, at most one queued pulse, then idle for good
        vp.hal.drive_trigger(1, 1)  # an edge for the armed channel after the crash
        vp.advance(0.05)
        hal = vp.hal
        for ch in (0, 1):
            n, problems = check_pulses(hal.trace([ch], start=0), "" if ch == 0 else "_1")
            assert not problems, problems
        rises = _first_pin_rises(hal, 0)
        assert rises.index(rise) == 5
        after = [t for t in rises if t > crash_at]
        assert len(after) <= 1, "more than the one queued pulse after the crash"
        falls = hal.system.edges(board.CH_NEG[0])[1::2]
        assert falls[rises.index(rise)] - rise == PH1  # the interrupted phase 1: full width
        assert _first_pin_rises(hal, 1) == []  # the armed channel never fired
        assert all(not sm.enabled for sm in hal.sms) and hal.dac_on == [False, False]
        assert all(hal.system.dma(sm).done and sm.tx_level == 0 for sm in hal.sms)
        assert hal.safe_states == 1
        assert all(hal.system.pin_level(p) == 0 for ch in (0, 1)
                   for p in (board.CH_POS[ch], board.CH_NEG[ch], board.CH_RECOVERY[ch]))

        # the host reads the reason, also after a reconnection and many later events
        info = c.hello()
        assert info["reset_reason"] == M.RESET_CRASH
        st = c.status()
        assert st["counters"]["crashes"] == 1
        assert [x["state"] for x in st["channels"]] == ["idle", "idle"]
        assert not any(x["configured"] for x in st["channels"])
        for _ in range(M.EVENT_LOG_LEN + 3):
            vp.controller.emit(M.EV_TRAIN_DONE, 0, 0)
        c2 = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        log = c2.event_log(0)
        kinds = [(e["kind"], e["value"]) for e in log[:2]]
        assert kinds == [("boot", M.RESET_CRASH), ("crash", crash["value"])]

        # and it serves again
        c2.set_params(0, TRAIN)
        c2.start(1)
        vp.advance(0.01)
        assert c2.status()["channels"][0]["state"] == "running"
        assert hal.dac_on[0] and len(_first_pin_rises(hal, 0)) > len(rises)


def test_safe_state_waits_for_the_pulse_and_the_queued_one_then_halts():
    """SimHal.safe_state directly, landing in phase 2 of a 1 ms-phase pulse at 100 Hz: the pulse
    completes, the queued group may follow, the halt comes only once the stream has drained."""
    params = P.complete({"phase1_ns": 1_000_000, "phase2_ns": 1_000_000, "period_ns": 10_000_000,
                         "amplitude_ua": 200})
    with VirtualPico(channels=1) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        c.set_params(0, params)
        c.start(1)
        with vp.lock:
            hal = vp.hal
            hal.system.run_until(hal.train_start[0] + 3 * 1_250_000 + 125_000 + 125_000 // 2 + 1000)
            pos = board.CH_POS[0]
            assert hal.system.pin_level(pos) == 1  # phase 2 of the 4th pulse
            t = hal.system.now
            assert hal.safe_state() is True
            waited = hal.system.now - t
        assert 0 < waited <= 2 * 1_250_000
        n, problems = check_pulses(hal.trace([0], start=0))
        assert not problems and n in (4, 5)


def test_cli_names_the_crash_and_the_reset_reason(capsys):
    from picostim import cli

    ev = M.decode_event(M.encode_event(M.EV_CRASH, 0, 2_000_000, M.crash_value("MemoryError", M.STATUS)))
    assert cli.format_event(ev) == ("t=2.000000 s crash: MemoryError in status; outputs went to the safe state, "
                                    "nothing is configured")
    assert M.decode_crash(M.crash_value("SomethingElse", M.CRASH_POLL)) == {"exception": "other", "where": "poll"}
    assert M.RESET_NAMES[M.RESET_CRASH] == "crash"


def test_safe_state_bound_halts_anyway_and_says_so():
    """With a wait bound shorter than the pulse in progress, the halt comes at the bound (the residual
    case of docs/SAFETY.md §7): safe_state returns False, and every output is still driven idle."""
    with VirtualPico(channels=1) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        c.set_params(0, TRAIN)
        c.start(1)
        with vp.lock:
            hal = vp.hal
            hal.system.run_until(hal.train_start[0] + 250_000 + 1000)
            assert hal.system.pin_level(board.CH_NEG[0]) == 1
            assert hal.safe_state(wait_us=10) is False
            assert hal.system.pin_level(board.CH_NEG[0]) == 0 and not hal.sms[0].enabled
            hal.system.run_until(hal.system.now + 1_000_000)
        assert all(hal.system.pin_level(p) == 0 for p in (board.CH_POS[0], board.CH_NEG[0], board.CH_RECOVERY[0]))
        assert len(hal.system.edges(board.CH_NEG[0])) == 4  # pulse 0, then the cut pulse 1: nothing after
