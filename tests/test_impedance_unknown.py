"""Issue 10 item 8 (a): an electrode check that never produced a valid reading is reported as unknown
and refuses the START with its own reason; it is never a measured 0 ohm "short". On main before the
fix the board HAL returned its initial last_ohm = 0 and the controller classified it as SHORT
("electrode check failed (0 ohm)"). The board HAL's side (None after TEST_TRIES late tries) is
tested here on the recording fakes; the real timing on the whole chip (tests/test_wholechip.py)."""

import sys
from pathlib import Path


from firmware.controller import Controller
from picostim.client import DeviceError
from protocol import messages as M
from protocol.framing import FrameDecoder, encode_frame

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from link_targets import GOOD, FakeHal  # noqa: E402


class NoReadingHal(FakeHal):
    def measure_impedance(self, ch):
        return None  # every try of the test pulse was late: no valid reading


def answers(ctl, out, msg_type, seq, body=b""):
    out.clear()
    ctl.receive(encode_frame(msg_type, seq, body))
    dec = FrameDecoder()
    return [f for f in dec.feed(b"".join(out))]


def test_impedance_without_a_valid_reading_is_unknown_not_zero_ohm():
    hal, out = NoReadingHal(), []
    ctl = Controller(hal, out.append)
    (resp,) = answers(ctl, out, M.IMPEDANCE, 1, bytes((0b0011,)))
    got = M.decode_impedance(resp.body)
    assert got == [{"channel": 0, "ohms": None, "class": "unknown"}, {"channel": 1, "ohms": None, "class": "unknown"}]
    (st,) = answers(ctl, out, M.STATUS, 2)
    assert [c["impedance_ohm"] for c in M.decode_status(st.body)["channels"]] == [None] * 4


def test_start_without_a_valid_reading_is_refused_with_its_own_reason():
    hal, out = NoReadingHal(), []
    ctl = Controller(hal, out.append)
    answers(ctl, out, M.SET_PARAMS, 1, M.encode_params(0, GOOD))
    (nack,) = answers(ctl, out, M.START, 2, bytes((1,)))
    assert nack.type == M.NACK
    n = M.decode_nack(nack.body)
    assert n["code"] == M.E_IMPEDANCE and n["limit"] == M.OHM_UNKNOWN
    assert not any(c[0] == "start" for c in hal.calls)  # nothing moved
    text = str(DeviceError(n, M.START))
    assert "no valid reading" in text and "0 ohm" not in text


def test_board_hal_reports_none_when_every_try_is_late(monkeypatch):
    # the recording fakes' clock advances 300 us per timer read: every conversion ends after phase 1
    from rp2_fakes import load_board_hal, unload_board_hal

    mod, hw, clock = load_board_hal(monkeypatch, 300)
    try:
        h = mod.Rp2Hal()
        assert h.measure_impedance(1) is None
        assert h._ch[1].last_ohm is None
    finally:
        unload_board_hal()
