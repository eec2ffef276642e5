#!/usr/bin/env python3
"""Coverage-guided fuzzing of the link (issue 7): the firmware-side decoder + dispatcher
(Controller.receive on a fake HAL) and the host-side decoder + response parsing (Client over a port
that plays the fuzz input as the device's output).

Standalone (atheris, libFuzzer flags pass through)::

    python tests/fuzz/fuzz_link.py --target firmware -atheris_runs=200000
    python tests/fuzz/fuzz_link.py --target host -max_total_time=60

Without atheris, :func:`mutation_run` drives the same targets from a seeded random mutator (used by
tests/test_fuzz_link.py, which also replays a corpus under MicroPython).

Invariants checked on every input (an AssertionError or any other exception is a crash):
firmware: nothing escapes ``receive``; an input without a valid frame changes no state and sends
nothing; ``frames_ok + crc_errors + frames_dropped`` equals the number of non-empty delimited
segments; exactly one reply per good frame, echoing its seq; a valid STATUS afterwards is answered
(the decoder resynchronised). host: only LinkError/DeviceError escape a request; the host decoder
accounts for every segment it consumed; decoded answers and queued events have their documented
shape.
"""

from __future__ import annotations

import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for p in (ROOT, os.path.join(ROOT, "host"), HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

if __name__ == "__main__":  # standalone under atheris: instrument the code under test for coverage
    import atheris

    _instrumented = atheris.instrument_imports(include=["protocol", "firmware", "picostim", "link_targets"])
else:
    import contextlib

    _instrumented = contextlib.nullcontext()
with _instrumented:
    import link_targets as T
    from picostim.client import Client, DeviceError, LinkError
    from protocol import messages as M
    from protocol import params as P
    from protocol.framing import MAX_ENCODED, FrameDecoder, encode_frame

STATS = {"inputs": 0, "frames": 0, "valid_frames": 0}


def segments(data: bytes) -> int:
    """Non-empty delimiter-terminated segments (each one frame the decoder must decide)."""
    return sum(1 for s in data.split(b"\x00")[:-1] if s)


# ------------------------------------------------------------------------------- firmware side
def check_firmware(data: bytes) -> None:
    ctl, hal, out = T.make_controller()
    before = T.state_of(ctl, hal)
    reference = FrameDecoder()
    valid = reference.feed(data + b"\x00")
    ctl.receive(data)
    ctl.receive(b"\x00")
    d = ctl.decoder
    n = segments(data + b"\x00")
    assert d.frames_ok - 1 + d.crc_errors + d.frames_dropped == n, "a dropped frame was not counted"
    assert d.frames_ok - 1 == len(valid)
    replies = FrameDecoder().feed(b"".join(out))
    assert len(replies) == len(valid), "not exactly one reply per good frame"
    for req, rep in zip(valid, replies):
        assert rep.seq == req.seq and rep.type in (req.type | M.RESPONSE, M.NACK)
        if rep.type == M.NACK:
            assert M.decode_nack(rep.body)["code"] in M.ERROR_NAMES
    if not valid:
        assert T.state_of(ctl, hal) == before, "state changed without a valid frame"
        assert out == []
    ctl.poll()
    del out[:]
    ctl.receive(encode_frame(M.STATUS, 0xBEEF))  # resynchronised: the next frame is answered
    (status,) = FrameDecoder().feed(b"".join(out))
    assert status.seq == 0xBEEF and status.type == M.STATUS | M.RESPONSE
    STATS["inputs"] += 1
    STATS["frames"] += n
    STATS["valid_frames"] += len(valid)


# ----------------------------------------------------------------------------------- host side
class FuzzPort:
    """Plays ``data`` as the device's output in chunks; exhausted -> OSError (the port 'breaks',
    which the client must turn into LinkError)."""

    def __init__(self, data: bytes, chunk: int):
        self.data = data
        self.pos = 0
        self.chunk = max(1, chunk)
        self.written: list[bytes] = []

    @property
    def in_waiting(self) -> int:
        return min(self.chunk, len(self.data) - self.pos)

    def read(self, n: int) -> bytes:
        if self.pos >= len(self.data):
            raise OSError("fuzz input exhausted")
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def write(self, b: bytes) -> int:
        self.written.append(bytes(b))
        return len(b)

    def close(self) -> None:
        pass


HOST_SEQ = 0x1234
HOST_CALLS = (
    ("hello", lambda c: c.hello(), dict),
    ("status", lambda c: c.status(), dict),
    ("get_params", lambda c: c.get_params(0), dict),
    ("set_params", lambda c: c.set_params(0, T.GOOD), dict),
    ("impedance", lambda c: c.impedance(0x0F), list),
    ("save", lambda c: c.save(0, 1), dict),
    ("load", lambda c: c.load(0, 1), dict),
    ("event_log", lambda c: c.event_log(0), list),
    ("start", lambda c: c.start(1), type(None)),
    ("events", lambda c: c.wait_event("nope", timeout=60), type(None)),
)


def check_host(data: bytes) -> None:
    if not data:
        return
    name, call, kind = HOST_CALLS[data[0] % len(HOST_CALLS)]
    port = FuzzPort(data[2:], data[1] if len(data) > 1 else 1)
    c = Client(port, timeout=60, retries=0, seq=HOST_SEQ - 1)
    c._said_hello = True
    try:
        result = call(c)
        assert isinstance(result, kind), (name, result)
    except (LinkError, DeviceError):
        pass
    consumed = port.data[:port.pos]
    c.decoder.feed(b"\x00")
    d = c.decoder
    n = segments(consumed + b"\x00")
    assert d.frames_ok + d.crc_errors + d.frames_dropped == n, "host decoder lost count"
    for ev in c._events:
        assert set(ev) >= {"kind", "channel", "time_us", "value", "seq"}
    STATS["malformed"] = STATS.get("malformed", 0) + c.malformed
    STATS["valid_frames"] += d.frames_ok
    STATS["inputs"] += 1
    STATS["frames"] += n


def host_seeds() -> list[bytes]:
    """Valid device answers for HOST_SEQ (good and hostile bodies), events, NACKs, stale answers."""
    realised = {n: 1 for n in M.REALISED_NAMES}
    good_params = M.encode_params_response(0, T.GOOD, realised)
    hello = M.encode_hello((0, 1, 0), 4, b"12345678", 0, {n: 1 for n in P.LIMIT_NAMES})
    status = M.encode_status(5, [(0, 0, 1, 1, 2)] * 4, {n: 0 for n in M.COUNTER_NAMES})
    bodies = [hello, status, good_params, good_params, M.encode_impedance([(0, 1000, 0)]),
              b"\x01\x34\x12", good_params, M.encode_event_log([(1, M.encode_event(1, 0, 5, 0))]), b"", b""]
    types = [M.HELLO, M.STATUS, M.GET_PARAMS, M.SET_PARAMS, M.IMPEDANCE, M.SAVE, M.LOAD, M.EVENT_LOG,
             M.START, M.STATUS]
    seeds = []
    for i, (t, body) in enumerate(zip(types, bodies)):
        ev = encode_frame(M.EVENT, 7, M.encode_event(2, 0, 99, 3))
        seeds.append(bytes((i, 64)) + ev + encode_frame(t | M.RESPONSE, HOST_SEQ, body))
        seeds.append(bytes((i, 3)) + encode_frame(t | M.RESPONSE, HOST_SEQ, body[:len(body) // 2]))
        seeds.append(bytes((i, 7)) + encode_frame(M.NACK, HOST_SEQ, M.encode_nack(4, 0, 5, 6)))
        seeds.append(bytes((i, 255)) + encode_frame(t | M.RESPONSE, HOST_SEQ - 1, body) + b"\x00junk\x00")
    return seeds


# ------------------------------------------------------------------------ seeded random mutator
def mutate(rng: random.Random, seeds: list[bytes], keep_prefix: int = 0) -> bytes:
    """Concatenate 1-4 seeds and apply 0-6 of: bit flip, byte set, insert, delete, truncate,
    duplicate a slice, oversize run, random garbage, a valid frame with a random type and body."""
    data = bytearray(b"".join(rng.choice(seeds) for _ in range(rng.randint(1, 4))))
    prefix, data = data[:keep_prefix], data[keep_prefix:]
    for _ in range(rng.randint(0, 6)):
        op = rng.randrange(9)
        n = len(data)
        if op == 0 and n:
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            data[rng.randrange(n)] = rng.choice((0, 1, 0xFF, rng.randrange(256)))
        elif op == 2:
            i = rng.randint(0, n)
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and n:
            i = rng.randrange(n)
            del data[i:i + rng.randint(1, 8)]
        elif op == 4 and n:
            del data[rng.randint(0, n):]
        elif op == 5 and n:
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 64))
            data[j:j] = data[i:j]
        elif op == 6:
            data += bytes(rng.randint(1, 255) for _ in range(rng.randint(MAX_ENCODED - 2, MAX_ENCODED + 40)))
            data += b"\x00"
        elif op == 7:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        else:
            body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 2, 4, P.SIZE + 1, rng.randint(0, 250)))))
            data += encode_frame(rng.randrange(0x80), rng.randrange(0x10000), body, rng.choice((1, 1, 1, 0, 2)))
    return bytes(prefix + data)


def mutation_run(target: str, n_inputs: int, seed: int = 0):
    """Run ``n_inputs`` mutated inputs through ``target`` ("firmware" or "host"); returns the list
    of inputs that crashed (each with its exception) and leaves the figures in STATS."""
    rng = random.Random(seed)
    seeds = T.seed_frames() if target == "firmware" else host_seeds()
    check = check_firmware if target == "firmware" else check_host
    crashes = []
    for _ in range(n_inputs):
        data = mutate(rng, seeds, keep_prefix=2 if target == "host" else 0)
        try:
            check(data)
        except Exception as e:  # noqa: BLE001 - every exception is a finding
            crashes.append((data, repr(e)))
    return crashes


def corpus(n: int, seed: int = 1) -> list[bytes]:
    """A deterministic firmware corpus (for the MicroPython replay)."""
    rng = random.Random(seed)
    seeds = T.seed_frames()
    return seeds + [mutate(rng, seeds) for _ in range(n)]


# --------------------------------------------------------------------------------------- atheris
def main(argv: list[str]) -> int:
    import atheris

    target = "firmware"
    if "--target" in argv:
        i = argv.index("--target")
        target = argv[i + 1]
        del argv[i:i + 2]
    check = check_firmware if target == "firmware" else check_host
    seed_dir = os.environ.get("FUZZ_SEED_DIR")
    if seed_dir:  # libFuzzer takes corpus directories as positional arguments
        os.makedirs(seed_dir, exist_ok=True)
        for i, s in enumerate(T.seed_frames() if target == "firmware" else host_seeds()):
            with open(os.path.join(seed_dir, "seed%03d" % i), "wb") as f:
                f.write(s)
        argv.append(seed_dir)

    def one(data: bytes) -> None:
        check(data)

    atheris.Setup(argv, one)
    try:
        atheris.Fuzz()
    finally:
        # reached only when libFuzzer stops normally: a crash ends the process with its own report
        print("picostim fuzz_link %s: %d inputs, %d frames (%d valid), 0 crashes"
              % (target, STATS["inputs"], STATS["frames"], STATS["valid_frames"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
