"""Custom sequences on the MicroPython unix port: firmware/sequence.py (per-pulse checks, records in
RAM and in files, readers in 32-record chunks, seek), the SET_SEQUENCE codecs and the controller's
upload give the same answers as on CPython, value for value. Onsets beyond 2**30 ticks (heap ints on
the board) are among the vectors."""

import struct
import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

import sequence_ops
from test_mpy_conformance import check_conformance, collect
from firmware.limits import LIMITS
from protocol import messages as M
from protocol.framing import FrameDecoder
from protocol.framing import encode_frame as framing_frame
from protocol import params as P

pytestmark = pytest.mark.mpy
FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
if str(FUZZ) not in sys.path:  # link_targets.FakeHal, on CPython too
    sys.path.insert(0, str(FUZZ))
MS = 1_000_000
LIM = LIMITS["min_sequence_interval_ns"]  # the shortest interval a sequence may have (2 ms)


def check(name, requests):
    return check_conformance(name, requests, sequence_ops, [FUZZ])


@st.composite
def sequence_case(draw):
    """About half valid (every rule kept), half with edges that may break one."""
    ok = draw(st.booleans())
    n = draw(st.integers(1, 70))
    period = draw(st.sampled_from([LIM, LIM + 4, 3 * LIM]))
    # 5 / 32 ns: 1 / 4 ticks, shorter than one PIO segment (refused); 36 ns: 5 ticks; beyond 2**30 / 2**32 ticks
    start = draw(st.sampled_from([0, 5, 32, 36, 2**31 * 8, 2**33 * 8 + 3]))
    onsets = [start]
    gap = st.integers(period + 4, 4 * period) if ok else st.one_of(st.integers(period - 8, period + 8),
                                                                   st.integers(period, 4 * period))
    for _ in range(n - 1):
        onsets.append(onsets[-1] + draw(gap))
    amp = draw(st.integers(1, 4000))
    each = st.integers(1, amp) if ok else st.one_of(st.integers(0, amp + 1), st.just(amp))
    amps = draw(st.lists(each, min_size=n, max_size=n))
    cycle = 0
    if draw(st.booleans()):
        extra = st.integers(period + 8, 3 * period) if ok else st.integers(period - 16, 3 * period)
        cycle = max(period, onsets[-1] - onsets[0] + draw(extra))
    params = P.complete({"sequence_pulses": n, "period_ns": period, "amplitude_ua": amp, "sequence_cycle_ns": cycle,
                         "train_duration_ns": draw(st.sampled_from([0, 2 * cycle + 1])) if cycle else 0})
    return params, onsets, amps


def test_codecs(micropython):
    cases = collect(st.tuples(st.integers(0, 255), st.integers(0, 0xFFFF),
                              st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
                                       min_size=1, max_size=M.SEQUENCE_CHUNK)), 150)
    reqs = [["codec", ch, first, [p[0] for p in ps], [p[1] for p in ps]] for ch, first, ps in cases]
    check("sequence_codec", reqs)


def test_violations(micropython):
    cases = collect(sequence_case(), 200)
    answers = check("sequence_violation", [["violation", p, o, a] for p, o, a in cases])
    assert any(a[1] is None for a in answers) and any(a[1] is not None for a in answers)


def test_records_and_readers_ram_and_file(micropython, tmp_path):
    cases = collect(sequence_case(), 60)
    reqs = []
    for i, (p, o, a) in enumerate(cases):
        k = 1 + i % 20
        chunks = [[f, o[f:f + k], a[f:f + k]] for f in range(0, len(o), k)]
        n = len(o)
        for root in (None, str(tmp_path / ("case%d" % i))):
            reqs.append(["store", p, chunks, root, 2 * n + 2, [0, n - 1, n, n + 3, 3 * n + 1]])
    answers = check("sequence_store", reqs)
    assert any(x["complete"] for x in answers) and any(not x["complete"] for x in answers)


def test_controller_upload(micropython, tmp_path):
    """SET_PARAMS, an out-of-order chunk, a bad pulse, the chunks, START: identical frames."""
    n = 45
    onsets = [i * (LIM + 8) + (i % 2) * 8 + 2**31 * 8 for i in range(n)]  # intervals LIM + 2 ticks, LIM
    amps = [1 + (i * 97) % 2000 for i in range(n)]
    p = P.complete({"sequence_pulses": n, "period_ns": LIM, "amplitude_ua": 2000})
    body = lambda first, o, a: M.encode_set_sequence(0, first, o, a).hex()  # noqa: E731
    reqs = [[M.SET_PARAMS, M.encode_params(0, p).hex()], [M.START, "01"],
            [M.SET_SEQUENCE, body(0, onsets[:20], amps[:20])],
            [M.SET_SEQUENCE, body(21, onsets[21:22], amps[21:22])],
            [M.SET_SEQUENCE, body(20, [onsets[19] + LIM - 8], [5])],  # one tick short
            [M.SET_SEQUENCE, body(20, onsets[20:40], amps[20:40])],
            [M.SET_SEQUENCE, body(40, onsets[40:], amps[40:])],
            [M.SET_SEQUENCE, "00"], [M.START, "01"], [M.SET_AMPLITUDE, M.encode_set_amplitude(0, 5).hex()]]
    answers = check("sequence_controller", [["controller", reqs, None], ["controller", reqs, str(tmp_path / "s")]])
    from firmware.pulse_engine import dac_code

    for replies, ups, state, calls, trains in answers:
        assert ups[0] == [n, True, onsets[0] // 8, onsets[-1] // 8]  # 8 ns = 1 tick at 125 MHz
        assert state[0] == M.ST_RUNNING
        assert trains[0] == [n, 1, [onsets[0] // 8, dac_code(amps[0])], [onsets[1] // 8, dac_code(amps[1])]]
        dec = FrameDecoder()
        frames = [dec.feed(bytes.fromhex(r[0]))[0] for r in replies]
        codes = [M.decode_nack(f.body)["code"] if f.type == M.NACK else "ok" for f in frames]
        assert codes == ["ok", M.E_SEQUENCE_INCOMPLETE, "ok", M.E_BAD_STATE, M.E_OUT_OF_RANGE, "ok", "ok",
                         M.E_BAD_LENGTH, "ok", M.E_BAD_STATE]


BOARD_RUN = """
import sys, binascii
from firmware import main
from firmware.hal_rp2 import Rp2Hal

class Link:
    def __init__(self, frames):
        self.frames = frames
        self.out = bytearray()
    def read(self, n):
        return self.frames.pop(0) if self.frames else b""
    def write(self, data):
        self.out.extend(data)

lines = [l.strip() for l in sys.stdin]
root = lines.pop(0)
link = Link([binascii.unhexlify(l) for l in lines])
main.run(hal=Rp2Hal(), link=link, loops=len(lines) + 20, params_dir=root + "/params", sequence_dir=root + "/seq",
         bootsel=lambda: False)
print(binascii.hexlify(bytes(link.out)).decode())
"""


def test_board_path_upload_to_flash_files_and_start(micropython, monkeypatch, tmp_path):
    """firmware.main.run on the board HAL (machine/rp2 shims) under MicroPython: a 45-pulse sequence
    uploaded in chunks lands in <sequence_dir>/seq0.bin record for record, START is accepted."""
    from picostim.virtual.micropython_board import adc_u16_for_ohm

    from firmware.pulse_engine import dac_code
    from mpyrun import run_micropython

    monkeypatch.setenv("PICOSTIM_SHIM_ADC_U16", str(adc_u16_for_ohm(1000)))  # the START's electrode check
    n = 45
    onsets = [3 * MS + i * (LIM + 8) + (i % 2) * 8 for i in range(n)]  # intervals LIM + 2 ticks, LIM
    amps = [1 + (i * 97) % 2000 for i in range(n)]
    p = P.complete({"sequence_pulses": n, "period_ns": LIM, "amplitude_ua": 2000})
    frames = [framing_frame(M.HELLO, 1), framing_frame(M.SET_PARAMS, 2, M.encode_params(0, p))]
    seq = 3
    for first in range(0, n, M.SEQUENCE_CHUNK):
        frames.append(framing_frame(M.SET_SEQUENCE, seq, M.encode_set_sequence(0, first, onsets[first:first + 20],
                                                                               amps[first:first + 20])))
        seq += 1
    frames.append(framing_frame(M.START, seq, b"\x01"))
    (wire,) = run_micropython(BOARD_RUN, [str(tmp_path)] + [f.hex() for f in frames])
    replies = {f.seq: f for f in FrameDecoder().feed(bytes.fromhex(wire)) if f.type != M.EVENT}
    for s in range(1, seq + 1):
        f = replies[s]
        assert f.type & M.RESPONSE and f.type != M.NACK, (s, M.decode_nack(f.body) if f.type == M.NACK else f)
    assert M.decode_sequence_response(replies[seq - 1].body) == {"channel": 0, "received": n, "complete": 1}
    raw = (tmp_path / "seq" / "seq0.bin").read_bytes()
    assert raw == b"".join(struct.pack("<QH", o // 8, dac_code(a)) for o, a in zip(onsets, amps))
