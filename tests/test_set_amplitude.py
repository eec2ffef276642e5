"""Live amplitude (issue 13 item 3): the SET_AMPLITUDE request, its answer and the amplitude EVENT on
the wire, and the controller's handling through the HAL contract (fake HAL: dac_play / dac_busy /
dac_mark_pulses). On 49823f4 the request type did not exist (NACK E_UNKNOWN_TYPE)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dac_ops import decode
from firmware import board
from firmware import pulse_engine as pe
from firmware.controller import Controller
from protocol import framing
from protocol import messages as M
from protocol import params as P
from protocol.framing import FrameDecoder, encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from link_targets import FakeHal  # noqa: E402

MS = 1_000_000
FAST = settings(max_examples=300, deadline=None)


# ---- codecs -----------------------------------------------------------------------------------------
@FAST
@given(st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_request_round_trip(ch, amp):
    body = M.encode_set_amplitude(ch, amp)
    assert body == bytes([ch]) + amp.to_bytes(4, "little")
    assert M.decode_set_amplitude(body) == (ch, amp)
    assert M.decode_set_amplitude(body[:-1]) is None and M.decode_set_amplitude(body + b"\x00") is None


@FAST
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFF))
def test_response_round_trip(ch, a1, a2, da, db):
    body = M.encode_amplitude_response(ch, a1, a2, da, db)
    assert body == struct.pack("<BIIHH", ch, a1, a2, da, db)
    assert M.decode_amplitude_response(body) == {"channel": ch, "amplitude_ua": a1, "amplitude2_ua": a2,
                                                 "dac_a": da, "dac_b": db}


@FAST
@given(st.integers(0, 255), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**31 - 1))
def test_amplitude_event_round_trip(ch, t, from_pulse, amp):
    body = M.encode_amplitude_event(ch, t, from_pulse, amp)
    assert len(body) == M.EVENT_MAX_SIZE == M.EVENT_SIZE + 4
    assert body[:M.EVENT_SIZE] == struct.pack("<BBQi", M.EV_AMPLITUDE, ch, t, amp)
    assert body[M.EVENT_SIZE:] == from_pulse.to_bytes(4, "little")
    assert M.decode_event(body) == {"kind": "amplitude", "channel": ch, "time_us": t, "value": amp,
                                    "amplitude_ua": amp, "from_pulse": from_pulse}


@FAST
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.sampled_from(sorted(M.EVENT_NAMES)), st.integers(0, 3),
                          st.integers(0, 2**40), st.integers(0, 10**6)), max_size=M.EVENT_LOG_MAX))
def test_event_log_with_mixed_body_lengths_round_trips_and_fits_a_frame(events):
    entries = [(seq, M.encode_event(kind, ch, t, v, v + 1)) for seq, kind, ch, t, v in events]
    body = M.encode_event_log(entries)
    assert len(body) <= framing.MAX_BODY
    back = M.decode_event_log(body)
    assert [(e["seq"], e["kind"], e["channel"], e["time_us"], e["value"]) for e in back] == \
        [(seq, M.EVENT_NAMES[kind], ch, t, v) for seq, kind, ch, t, v in events]
    assert [e["from_pulse"] for e in back if e["kind"] == "amplitude"] == \
        [v + 1 for _, kind, _, _, v in events if kind == M.EV_AMPLITUDE]


def test_event_log_of_only_the_longest_bodies_fits():
    body = M.encode_event_log([(i, M.encode_amplitude_event(0, 2**63, 2**32 - 1, 10000))
                               for i in range(M.EVENT_LOG_MAX)])
    assert len(body) <= framing.MAX_BODY
    assert len(M.decode_event_log(body)) == M.EVENT_LOG_MAX


def test_protocol_version_is_not_a_repl_key():
    # 7 added SET_AMPLITUDE; 8 (custom sequences) keeps it. 0x02-0x05 are REPL control keys.
    assert framing.PROTOCOL_VERSION == 8 and framing.PROTOCOL_VERSION not in (2, 3, 4, 5)
    assert M.REQUEST_NAMES[M.SET_AMPLITUDE] == "set_amplitude" and M.SET_AMPLITUDE < M.RESPONSE


# ---- the controller -----------------------------------------------------------------------------------
def params(**kw):
    return P.complete(dict({"phase1_ns": 200_000, "phase2_ns": 400_000, "period_ns": 20 * MS,
                            "amplitude_ua": 1000}, **kw))


def replies(out):
    d = FrameDecoder()
    return [f for chunk in out for f in d.feed(chunk)]


def running(p=None, ch=0):
    out = []
    hal = FakeHal()
    ctl = Controller(hal, out.append)
    ctl.receive(encode_frame(M.SET_PARAMS, 1, M.encode_params(ch, p or params())))
    ctl.receive(encode_frame(M.START, 2, bytes([1 << ch])))
    assert ctl.state[ch] == M.ST_RUNNING
    out.clear()
    hal.calls.clear()
    return ctl, hal, out


def ask(ctl, out, ch, amp, seq=10):
    ctl.receive(encode_frame(M.SET_AMPLITUDE, seq, M.encode_set_amplitude(ch, amp)))
    return replies(out)[-1]


def nack(reply):
    assert reply.type == M.NACK
    d = M.decode_nack(reply.body)
    return d["code"], d["field"], d["value"], d["limit"]


def test_set_amplitude_plays_wait_then_writes_and_reports_the_realised_values():
    ctl, hal, out = running(ch=2)
    r = ask(ctl, out, 2, 2500)
    assert r.type == M.SET_AMPLITUDE | M.RESPONSE
    # 2500 µA = code 1000 for phase 1; phase 2 twice as long: code 500 = 1250 µA; cathodic first: B = phase 1
    assert M.decode_amplitude_response(r.body) == {"channel": 2, "amplitude_ua": 2500, "amplitude2_ua": 1250,
                                                   "dac_a": 500, "dac_b": 1000}
    assert hal.calls == [["dac_play", 3]]
    assert [decode(o) for o in hal.ops] == [("wait", board.CH_POS[2]), ("write", 2, 0, 1, 500),
                                           ("write", 2, 1, 1, 1000)]
    # until the mark, the old amplitude is what plays and what GET_PARAMS reports
    ctl.poll()
    assert ctl.params[2]["amplitude_ua"] == 1000 and not [r for r in replies(out) if r.type == M.EVENT]
    hal.busy = False
    hal.mark_pulses[2] = 17
    hal.played[2] = 17
    ctl.poll()  # the writes are done, but no pulse has played them yet: not reported
    assert not [r for r in replies(out) if r.type == M.EVENT] and ctl.params[2]["amplitude_ua"] == 1000
    hal.played[2] = 18
    ctl.poll()
    (ev,) = [M.decode_event(f.body) for f in replies(out) if f.type == M.EVENT]
    assert ev == dict(ev, kind="amplitude", channel=2, from_pulse=17, amplitude_ua=2500, value=2500)
    assert ctl.params[2]["amplitude_ua"] == 2500
    ctl.receive(encode_frame(M.GET_PARAMS, 11, b"\x02"))
    got = M.decode_params_response(replies(out)[-1].body)
    assert got["params"]["amplitude_ua"] == 2500 and got["realised"]["dac_code1"] == 1000
    ctl.poll()
    assert len([f for f in replies(out) if f.type == M.EVENT]) == 1  # reported once


def test_anodic_first_waits_on_neg():
    ctl, hal, out = running(params(polarity=1), ch=1)
    ask(ctl, out, 1, 500)
    assert decode(hal.ops[0]) == ("wait", board.CH_NEG[1])


def test_a_change_while_another_plays_is_refused():
    ctl, hal, out = running()
    assert ask(ctl, out, 0, 2000).type == M.SET_AMPLITUDE | M.RESPONSE
    assert nack(ask(ctl, out, 0, 3000, seq=11))[0] == M.E_DAC_BUSY
    assert hal.calls == [["dac_play", 3]]


def test_every_limit_is_checked_on_the_new_amplitude():
    ctl, hal, out = running(params(phase1_ns=200_000, phase2_ns=200_000))
    assert nack(ask(ctl, out, 0, 10001)) == (M.E_OUT_OF_RANGE, "amplitude_ua", 10001, 10000)
    assert nack(ask(ctl, out, 0, 0, seq=11)) == (M.E_OUT_OF_RANGE, "amplitude_ua", 0, 1)
    # phase 1 of 2 ms at 5 mA: 10 µC > 5 µC per phase
    ctl2, hal2, out2 = running(params(phase1_ns=2 * MS, phase2_ns=2 * MS, period_ns=100 * MS))
    assert nack(ask(ctl2, out2, 0, 5000))[:2] == (M.E_OUT_OF_RANGE, "charge_per_phase_nc")
    assert hal.calls == [] and hal2.calls == [] and ctl.params[0]["amplitude_ua"] == 1000


def test_a_train_without_the_update_idle_cannot_change_live():
    from firmware.limits import LIMITS

    out = []
    hal = FakeHal()
    limits = dict(LIMITS, max_duty_permille=1000, min_period_ns=0)
    ctl = Controller(hal, out.append, limits=limits)
    p = params(phase1_ns=100_000, phase2_ns=100_000, period_ns=201_000 + 5000)  # 5 µs idle < 8 µs
    ctl.receive(encode_frame(M.SET_PARAMS, 1, M.encode_params(0, p)))
    ctl.receive(encode_frame(M.START, 2, b"\x01"))
    out.clear()
    code, field, value, limit = nack(ask(ctl, out, 0, 500))
    assert (code, field, value, limit) == (M.E_OUT_OF_RANGE, "period_ns", 206_000, 201_000 + 8000)


def test_refused_unless_running():
    out = []
    hal = FakeHal()
    ctl = Controller(hal, out.append)
    assert nack(ask(ctl, out, 0, 500))[0] == M.E_NOT_CONFIGURED
    ctl.receive(encode_frame(M.SET_PARAMS, 1, M.encode_params(0, params())))
    assert nack(ask(ctl, out, 0, 500, seq=11))[:2] == (M.E_BAD_STATE, "channel")  # idle
    assert nack(ask(ctl, out, 7, 500, seq=12))[0] == M.E_BAD_CHANNEL
    ctl.receive(encode_frame(M.SET_AMPLITUDE, 13, b"\x00\x01"))
    assert nack(replies(out)[-1])[0] == M.E_BAD_LENGTH
    ext = params(trigger=P.TRIGGER_EXT1)
    ctl.receive(encode_frame(M.SET_PARAMS, 14, M.encode_params(1, ext)) + encode_frame(M.START, 15, b"\x02"))
    assert ctl.state[1] == M.ST_ARMED
    assert nack(ask(ctl, out, 1, 500, seq=16))[:2] == (M.E_BAD_STATE, "channel")  # waiting for its trigger
    ctl.receive(encode_frame(M.START, 17, b"\x01") + encode_frame(M.STOP, 18, b"\x01"))
    assert nack(ask(ctl, out, 0, 500, seq=19))[:2] == (M.E_BAD_STATE, "channel")  # stopping
    assert not [c for c in hal.calls if c[0] == "dac_play"]


def test_a_change_whose_stream_ends_first_never_applies():
    ctl, hal, out = running()
    ask(ctl, out, 0, 2000)
    hal._running[0] = False  # the train ended before the next boundary; the wait never completes
    ctl.poll()
    assert ctl.state[0] == M.ST_IDLE and ctl.params[0]["amplitude_ua"] == 1000
    assert [M.decode_event(f.body)["kind"] for f in replies(out) if f.type == M.EVENT] == ["train_done"]
    hal.busy = False
    ctl.poll()
    assert len([f for f in replies(out) if f.type == M.EVENT]) == 1


def test_set_params_while_a_change_plays_is_refused():
    ctl, hal, out = running()
    ask(ctl, out, 0, 2000)
    ctl.receive(encode_frame(M.SET_PARAMS, 20, M.encode_params(0, params(period_ns=30 * MS))))
    assert nack(replies(out)[-1])[0] == M.E_DAC_BUSY
    hal.busy = False
    hal.played[0] = 1  # a pulse with the new amplitude
    ctl.poll()
    ctl.receive(encode_frame(M.SET_PARAMS, 21, M.encode_params(0, params(period_ns=30 * MS, amplitude_ua=2000))))
    assert replies(out)[-1].type == M.SET_PARAMS | M.RESPONSE  # same codes as now: a timing change
    assert hal.calls[-1] == ["replace", 0]


def test_the_monitoring_current_follows_the_change():
    ctl, hal, out = running()
    ctl._monitor_na[0] = pe.build_train(params()).realised["amplitude_na"]  # as if monitored
    ask(ctl, out, 0, 2000)
    hal.busy = False
    hal.played[0] = 1
    ctl.poll()
    assert ctl._monitor_na[0] == pe.code_to_na(pe.dac_code(2000))


def test_a_polarity_change_while_running_is_refused():
    """The DAC bus waits on the phase-2 pin: a polarity switch pending in the HAL would make a later
    change wait on the playing train's phase-1 pin (a write inside the pulse)."""
    sym, hal2, out2 = running(params(phase2_ns=200_000))  # equal phases: A == B, only the pin differs
    sym.receive(encode_frame(M.SET_PARAMS, 30, M.encode_params(0, params(phase2_ns=200_000, polarity=1))))
    assert nack(replies(out2)[-1])[:2] == (M.E_BAD_STATE, "polarity")
    assert hal2.calls == []


def test_after_a_replace_the_old_trains_idle_still_bounds_live_changes():
    from firmware.limits import LIMITS

    out = []
    hal = FakeHal()
    ctl = Controller(hal, out.append, limits=dict(LIMITS, max_duty_permille=1000, min_period_ns=0))
    short = params(phase1_ns=100_000, phase2_ns=100_000, period_ns=201_000 + 5000)  # 5 µs idle
    ctl.receive(encode_frame(M.SET_PARAMS, 1, M.encode_params(0, short)) + encode_frame(M.START, 2, b"\x01"))
    ctl.receive(encode_frame(M.SET_PARAMS, 3, M.encode_params(0, dict(short, period_ns=10 * MS))))
    assert hal.calls[-1] == ["replace", 0]
    out.clear()
    # the new train has room, but the short one may still be playing until the switch
    assert nack(ask(ctl, out, 0, 500))[:2] == (M.E_OUT_OF_RANGE, "period_ns")
    ctl.receive(encode_frame(M.STOP, 4, b"\x01"))
    hal._running[0] = False
    ctl.poll()
    ctl.receive(encode_frame(M.START, 5, b"\x01"))  # a fresh start forgets the old train
    out.clear()
    assert ask(ctl, out, 0, 500, seq=12).type == M.SET_AMPLITUDE | M.RESPONSE


def test_a_change_that_reaches_the_last_pulse_after_a_stop_is_still_reported():
    ctl, hal, out = running()
    ask(ctl, out, 0, 2000)
    ctl.receive(encode_frame(M.STOP, 40, b"\x01"))  # no ramp-down: stops at the next boundary
    assert hal.calls[-1] == ["stop", 1]
    hal.busy = False  # the change's writes went out after the pulse in progress (before the last one)
    hal.mark_pulses[0] = hal.played[0] = 4
    ctl.poll()
    hal.played[0] = 5  # the last pulse played them
    hal._running[0] = False
    ctl.poll()
    evs = [M.decode_event(f.body) for f in replies(out) if f.type == M.EVENT]
    assert [(e["kind"], e.get("from_pulse")) for e in evs] == [("amplitude", 4), ("train_done", None)]
    assert ctl.params[0]["amplitude_ua"] == 2000


def test_a_change_whose_writes_come_after_the_last_pulse_is_not_reported():
    """A HAL may drop the wait of a change whose stream has ended and play its writes at once (the
    virtual Pico does): the mark then comes with every pulse already played, so no pulse has the new
    amplitude: no EVENT, parameters unchanged."""
    out = []
    hal = FakeHal()
    ctl = Controller(hal, out.append)
    ctl.receive(encode_frame(M.SET_PARAMS, 1, M.encode_params(0, params())) + encode_frame(M.START, 2, b"\x01"))
    out.clear()
    ask(ctl, out, 0, 2000)
    hal.played[0] = hal.mark_pulses[0] = 9
    hal._running[0] = False
    hal.busy = False
    ctl.poll()
    kinds = [M.decode_event(f.body)["kind"] for f in replies(out) if f.type == M.EVENT]
    assert kinds == ["train_done"] and ctl.params[0]["amplitude_ua"] == 1000
    # while the stream runs the same mark is a real change from pulse 9, reported once pulse 9 played
    ctl.receive(encode_frame(M.START, 3, b"\x01"))
    hal.played[0] = 0
    ask(ctl, out, 0, 2000, seq=13)
    hal.played[0] = hal.mark_pulses[0] = 9
    hal.busy = False
    ctl.poll()
    assert [M.decode_event(f.body)["kind"] for f in replies(out) if f.type == M.EVENT][-1] == "train_done"
    hal.played[0] = 10
    ctl.poll()
    ev = [M.decode_event(f.body) for f in replies(out) if f.type == M.EVENT][-1]
    assert (ev["kind"], ev["from_pulse"]) == ("amplitude", 9)


def test_a_change_written_in_the_last_pulses_idle_while_the_stream_still_runs_is_not_reported():
    """The mark comes while the idle after the stream's last pulse still plays (running() True, the
    case the virtual Pico showed after a STOP): nothing is reported until a pulse has the new codes,
    and when the stream then ends without one the change is dropped."""
    ctl, hal, out = running()
    ask(ctl, out, 0, 2000)
    hal.mark_pulses[0] = hal.played[0] = 5
    hal.busy = False
    ctl.poll()
    assert not [f for f in replies(out) if f.type == M.EVENT]
    hal._running[0] = False
    ctl.poll()
    assert [M.decode_event(f.body)["kind"] for f in replies(out) if f.type == M.EVENT] == ["train_done"]
    assert ctl.params[0]["amplitude_ua"] == 1000 and ctl._amp_pending[0] is None