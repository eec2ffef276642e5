"""Fuzzing the link (issue 7): firmware-side decoder + dispatcher and host-side decoder + response
parsing, by a seeded random mutator (in-process, counted) and by atheris (coverage-guided, standalone
script tests/fuzz/fuzz_link.py), plus the same corpus replayed under the MicroPython unix port with
byte-identical decisions. Invariants: see tests/fuzz/fuzz_link.py. The >= 10^6-frame runs are
behind ``-m slow``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FUZZ = HERE / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_link as F  # noqa: E402
import link_targets as T  # noqa: E402
from reliability_report import record  # noqa: E402

from picostim.client import Client, LinkError  # noqa: E402
from protocol import messages as M  # noqa: E402
from protocol.framing import encode_frame  # noqa: E402


def _run(target, n_inputs=None, min_frames=None, seed=0):
    F.STATS.clear()
    F.STATS.update(inputs=0, frames=0, valid_frames=0)
    t0 = time.monotonic()
    crashes = []
    batch = 0
    while True:
        crashes += F.mutation_run(target, n_inputs or 5000, seed=seed + batch)
        batch += 1
        if n_inputs or F.STATS["frames"] >= min_frames:
            break
    figures = dict(F.STATS, crashes=len(crashes), seconds=round(time.monotonic() - t0, 1))
    return crashes, figures


@pytest.mark.parametrize("target", ["firmware", "host"])
def test_mutation_fuzz(target):
    crashes, figs = _run(target, n_inputs=6000)
    record("fuzz_%s_quick" % target, **figs)
    assert not crashes, crashes[:3]
    assert figs["frames"] > 15000


@pytest.mark.slow
@pytest.mark.parametrize("target", ["firmware", "host"])
def test_mutation_fuzz_a_million_frames(target):
    crashes, figs = _run(target, min_frames=1_000_000, seed=1000)
    record("fuzz_%s_1M" % target, **figs)
    assert not crashes, crashes[:3]


def _atheris(target, runs, tmp_path):
    env = dict(os.environ, FUZZ_SEED_DIR=str(tmp_path / ("seeds_" + target)))
    proc = subprocess.run([sys.executable, str(FUZZ / "fuzz_link.py"), "--target", target,
                           "-atheris_runs=%d" % runs, "-seed=1"], capture_output=True, text=True,
                          timeout=900, env=env, cwd=str(HERE.parent))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("picostim fuzz_link")][-1]
    words = line.split()
    return {"inputs": int(words[3]), "frames": int(words[5]), "crashes": 0}


needs_atheris = pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")


@needs_atheris
@pytest.mark.parametrize("target", ["firmware", "host"])
def test_atheris_coverage_guided(target, tmp_path):
    record("atheris_%s_quick" % target, **_atheris(target, 2500, tmp_path))


@needs_atheris
@pytest.mark.slow
@pytest.mark.parametrize("target", ["firmware", "host"])
def test_atheris_coverage_guided_long(target, tmp_path):
    record("atheris_%s_long" % target, **_atheris(target, 150_000, tmp_path))


def test_corpus_replayed_under_micropython_gives_the_same_decisions():
    sys.path.insert(0, str(HERE / "mpy"))
    from mpyrun import micropython_binary, run_ops, run_ops_cpython

    if micropython_binary() is None:
        pytest.skip("micropython unix port not installed")
    cases = F.corpus(400)
    requests = [["firmware", c.hex()] for c in cases]
    golden = run_ops_cpython(T.OPS, requests)
    got = run_ops("link_targets", requests, extra_path=[FUZZ])
    diffs = [i for i, (a, b) in enumerate(zip(golden, got)) if a != b]
    assert not diffs, (diffs[:5], golden[diffs[0]], got[diffs[0]]) if diffs else None
    frames = sum(F.segments(c + b"\x00") for c in cases)
    replies = sum(len(g["replies"]) for g in golden)
    record("fuzz_micropython_replay", inputs=len(cases), frames=frames, identical=len(cases) - len(diffs),
           reply_hex_chars=replies)


# ------------------------------------------------------------- host parsing: found and fixed
class Scripted:
    """A port whose answers are scripted: the bytes to return after each write."""

    def __init__(self, answer):
        self.answer = answer
        self.buf = b""

    @property
    def in_waiting(self):
        return len(self.buf)

    def write(self, b):
        self.buf += self.answer(b)

    def read(self, n):
        out, self.buf = self.buf[:max(n, 1)], self.buf[max(n, 1):]
        return out

    def close(self):
        pass


def _reply_with(msg_type, body):
    from protocol.framing import FrameDecoder

    d = FrameDecoder()

    def answer(b):
        return b"".join(encode_frame(msg_type | M.RESPONSE, f.seq, body) for f in d.feed(b))

    return answer


@pytest.mark.parametrize("call,msg_type,body", [
    (lambda c: c.status(), M.STATUS, b"\x01\x00\x00\x00\x07"),  # claims 7 channels, carries none
    (lambda c: c.status(), M.STATUS, b"\x00" * 5 + b"\x09\x00\x00\x00" + b"\x00" * 70),  # state 9 unknown
    (lambda c: c.get_params(0), M.GET_PARAMS, b"\x00\x01"),
    (lambda c: c.hello(), M.HELLO, b"\x00"),
    (lambda c: c.impedance(1), M.IMPEDANCE, b"\x01\x00\x00\x00\x00\x00\x09"),  # class 9 unknown
    (lambda c: c.event_log(0), M.EVENT_LOG, b"\x02"),
])
def test_a_malformed_response_body_is_a_counted_link_error_not_a_crash(call, msg_type, body):
    c = Client(Scripted(_reply_with(msg_type, body)), timeout=0.2, retries=0)
    c._said_hello = True
    with pytest.raises(LinkError, match="malformed"):
        call(c)
    assert c.malformed == 1 and c.counters()["malformed"] == 1
