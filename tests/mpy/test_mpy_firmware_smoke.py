"""Smoke test: the whole firmware imports from source under the MicroPython unix port with the
machine/rp2 shims, the board HAL constructs, and a Controller on it answers a short host session
(HELLO, SET_PARAMS, GET_PARAMS, START, STATUS, STOP, garbage) with frames CPython decodes.
Differential controller vectors belong to the controller's own tests (they can reuse mpyrun)."""

import importlib.util
from pathlib import Path

import pytest

from mpyrun import run_micropython
from protocol import framing
from protocol import messages as M
from protocol import params as P

pytestmark = pytest.mark.mpy
ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted("firmware." + p.stem for p in (ROOT / "firmware").glob("*.py") if p.stem != "__init__")


def test_every_firmware_module_imports(micropython):
    code = "".join("import %s\n" % m for m in MODULES) + "print('imported', %d)\n" % len(MODULES)
    assert run_micropython(code) == ["imported %d" % len(MODULES)]


def test_controller_session_on_rp2_hal(micropython):
    if importlib.util.find_spec("firmware.hal_rp2") is None or importlib.util.find_spec("firmware.controller") is None:
        pytest.skip("firmware/hal_rp2.py or firmware/controller.py not there yet")
    reqs = [
        framing.encode_frame(M.HELLO, 1),
        framing.encode_frame(M.SET_PARAMS, 2, M.encode_params(0, P.complete({}))),
        framing.encode_frame(M.GET_PARAMS, 3, bytes([0])),
        b"\x13\x37garbage\x00",
        framing.encode_frame(M.START, 4, bytes([1])),
        framing.encode_frame(M.STATUS, 5),
        framing.encode_frame(M.STOP, 6, bytes([1])),
    ]
    code = """
import sys, binascii
from firmware.hal_rp2 import Rp2Hal
from firmware.controller import Controller
out = []
hal = Rp2Hal()
ctl = Controller(hal, out.append)
for line in sys.stdin:
    ctl.receive(binascii.unhexlify(line.strip()))
    ctl.poll()
print(binascii.hexlify(b"".join(out)).decode())
"""
    (wire,) = run_micropython(code, [r.hex() for r in reqs])
    dec = framing.FrameDecoder()
    frames = [f for f in dec.feed(bytes.fromhex(wire)) if f.type != M.EVENT]
    assert dec.crc_errors == 0 and dec.frames_dropped == 0
    got = {f.seq: f for f in frames}
    for seq, req in ((1, M.HELLO), (2, M.SET_PARAMS), (3, M.GET_PARAMS), (5, M.STATUS)):
        assert got[seq].type == req | M.RESPONSE, (seq, got[seq], M.decode_nack(got[seq].body)
                                                  if got[seq].type == M.NACK else "")
    hello = M.decode_hello(got[1].body)
    assert hello["limits"]["max_amplitude_ua"] > 0 and hello["channels"] >= 1
    assert M.decode_params_response(got[3].body)["params"] == P.complete({})
    status = M.decode_status(got[5].body)
    assert status["counters"]["frames_dropped"] + status["counters"]["crc_errors"] >= 1  # the garbage
    assert 4 in got and 6 in got  # START and STOP answered (ack or a NACK naming the reason)
