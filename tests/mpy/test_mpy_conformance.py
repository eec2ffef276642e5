"""Differential conformance: protocol/ and firmware code give identical results on CPython and on
the MicroPython unix port.

Vectors are generated at test time on CPython (seeded random + hypothesis), answered in-process by
``conformance_ops`` (the golden side; CRCs via crcmod) and, in one batched interpreter launch per
category, by the same ops under MicroPython (CRCs via the table in protocol/crc16.py). Results are
compared value for value: bytes as hex, decoder frames and counters, validation decisions
(field/value/limit/relation/message and the NACK body), engine words and realised values.
"""

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conformance_ops
from mpyrun import CONFORMANCE_PASSED
from mpyrun import run_ops, run_ops_cpython
from firmware.limits import LIMITS
from protocol import framing
from protocol import messages as M
from protocol import params as P

pytestmark = pytest.mark.mpy
RNG_SEED = 20240607


def check_conformance(name, requests, ops=conformance_ops, extra_path=()):
    """Run ``requests`` through the ``ops`` module's OPS on both interpreters and assert identical
    answers; returns the answers."""
    golden = run_ops_cpython(ops.OPS, requests)
    got = run_ops(ops.__name__, requests, extra_path=list(extra_path))
    mismatches = [(req, g, m) for req, g, m in zip(requests, golden, got) if g != m]
    if mismatches:
        req, g, m = mismatches[0]
        pytest.fail("%s: %d of %d vectors differ; first:\n request    %r\n CPython    %r\n MicroPython %r"
                    % (name, len(mismatches), len(requests), req, g, m))
    CONFORMANCE_PASSED[name] = CONFORMANCE_PASSED.get(name, 0) + len(requests)
    return golden


def collect(strategy, n, seed=0):
    """Draw ``n`` examples of a hypothesis strategy (without running a test per example)."""
    out = []

    @settings(max_examples=n, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def _draw(x):
        out.append(x)

    _draw()
    return out


def _hex(b):
    return bytes(b).hex()


# ------------------------------------------------------------------------------ CRC / COBS / frames
def test_crc(micropython):
    rng = random.Random(RNG_SEED)
    datas = [b"", b"123456789", bytes(range(256)), b"\x00" * 300, b"\xff" * 300]
    datas += [rng.randbytes(rng.choice((1, 2, 7, 64, 255, 256, 1000, 4096))) for _ in range(600)]
    answers = check_conformance("crc", [["crc", _hex(d)] for d in datas])
    assert answers[1] == [0x29B1] * 3
    assert all(a[0] == a[1] == a[2] for a in answers)  # crcmod (CPython) == viper (MicroPython) == plain


def test_cobs(micropython):
    rng = random.Random(RNG_SEED + 1)
    datas = [b"", b"\x00", b"\x00\x00", b"\x01" * 254, b"\x01" * 255, b"\x01" * 254 + b"\x00", b"\x01" * 1000]
    for _ in range(500):
        n = rng.choice((1, 5, 100, 253, 254, 255, 600))
        datas.append(bytes(rng.choice((0, 0, 1, rng.randrange(256))) for _ in range(n)))
    reqs = [["cobs_encode", _hex(d)] for d in datas]
    encoded = check_conformance("cobs_encode", reqs)
    reqs = [["cobs_decode", e] for e in encoded]  # valid blocks
    reqs += [["cobs_decode", _hex(rng.randbytes(rng.randrange(0, 300)))] for _ in range(400)]  # garbage
    check_conformance("cobs_decode", reqs)


def test_encode_frame(micropython):
    rng = random.Random(RNG_SEED + 2)
    reqs = [["encode_frame", rng.randrange(256), rng.randrange(0x10000),
             _hex(rng.randbytes(rng.choice((0, 1, 10, 100, framing.MAX_BODY)))), rng.choice((1, 1, 1, 0, 255))]
            for _ in range(500)]
    reqs.append(["encode_frame", 1, 0, _hex(b"x" * (framing.MAX_BODY + 1)), 1])  # refused on both: ValueError
    answers = check_conformance("encode_frame", reqs)
    assert answers[-1]["exc"] == "ValueError"


def _streams(rng, n):
    from test_protocol import build_stream  # the CPython property test's stream builder

    out = []
    for _ in range(n):
        stream, _ = build_stream(rng.randrange(2**32))
        chunks, i = [], 0
        while i < len(stream):
            k = rng.choice((1, 2, 3, 17, 64, 300, 2000))
            chunks.append(stream[i:i + k])
            i += k
        out.append([_hex(c) for c in chunks])
    for _ in range(n // 4):  # pure garbage, delimiters at random
        out.append([_hex(rng.randbytes(rng.randrange(1, 800))) for _ in range(rng.randrange(1, 6))] + ["00"])
    out.append([_hex(b"\x07" * 3000), _hex(b"\x00" + framing.encode_frame(1, 2, b"after overflow"))])
    return out


def test_decode_stream(micropython):
    rng = random.Random(RNG_SEED + 3)
    reqs = [["decode_stream", chunks] for chunks in _streams(rng, 160)]
    answers = check_conformance("decode_stream", reqs)
    assert sum(a["frames_ok"] for a in answers) > 500
    assert sum(a["crc_errors"] for a in answers) > 50 and sum(a["frames_dropped"] for a in answers) > 50


# ------------------------------------------------------------------------------------- params
TOP = {n: (1 << (8 * struct.calcsize(f))) - 1 for n, f, _ in P.FIELDS}


def random_param_set(rng, L=LIMITS):
    """Seeded-random twin of tests/test_params.py's strategies (hypothesis draws cost ~6 ms each):
    half plausible sets (period fits the pulse at <= 50 % duty), half field-by-field edge mixtures."""
    mp = L["min_phase_ns"]

    def phase():
        return rng.choice((rng.randint(mp, 2000), rng.randint(mp, 200000), rng.randint(mp, L["max_phase_ns"])))

    def gap():
        return rng.choice((0, mp, rng.randint(mp, 100000)))

    if rng.random() < 0.5:
        p1, p2, ip, rec = phase(), phase(), gap(), gap()
        floor = max(L["min_period_ns"], p1 + ip + p2 + rec + mp)
        if rng.random() < 0.8:  # else the duty limit may be what refuses the set
            floor = max(floor, -(-(p1 + p2) * 1000 // L["max_duty_permille"]))
        burst = rng.choice((0, rng.randint(1, 20), L["max_burst_pulses"]))
        return {
            "phase1_ns": p1, "interphase_ns": ip, "phase2_ns": p2, "recovery_ns": rec,
            "period_ns": rng.choice((floor, floor + rng.randint(0, 1000), rng.randint(floor, 10 * floor))),
            "amplitude_ua": rng.choice((rng.randint(1, 100), rng.randint(1, L["max_amplitude_ua"]),
                                        L["max_amplitude_ua"])),
            "polarity": rng.randint(0, 1), "burst_pulses": burst, "interburst_ns": gap(),
            "train_duration_ns": rng.choice((0, rng.randint(0, 10**10))),
            "train_delay_ns": rng.choice((0, rng.randint(0, 10**10))),
            "ramp_up_ns": rng.choice((0, rng.randint(0, 10**9))), "trigger": rng.randint(0, 4),
            "ramp_down_ns": rng.choice((0, 0, rng.randint(0, 10**9))),
            "ramp_up_pulses": rng.choice((0, 0, rng.randint(0, 1000))),
            "ramp_down_pulses": rng.choice((0, 0, rng.randint(0, 1000))),
            "electrode_area_um2": rng.choice((L["min_electrode_area_um2"], rng.randint(100, 10**6),
                                              rng.randint(10**6, 10**8))),
            "shape": rng.choice((0, 0, 1)),
            "sequence_pulses": rng.choice((0, 0, 0, rng.randint(1, 20), L["max_sequence_pulses"])),
            "sequence_cycle_ns": rng.choice((0, 0, 0, rng.randint(0, 10**9))),
        }
    edges = {"phase1_ns": (mp, L["max_phase_ns"]), "phase2_ns": (mp, L["max_phase_ns"]),
             "interphase_ns": (0, mp, L["max_interphase_ns"]), "recovery_ns": (0, mp, L["max_recovery_ns"]),
             "interburst_ns": (0, mp, L["max_duration_ns"]), "period_ns": (L["min_period_ns"], L["max_duration_ns"]),
             "amplitude_ua": (1, L["max_amplitude_ua"]), "polarity": (0, 1), "trigger": (0, 4),
             "burst_pulses": (0, L["max_burst_pulses"]), "train_duration_ns": (0, L["max_duration_ns"]),
             "train_delay_ns": (0, L["max_duration_ns"]), "ramp_up_ns": (0, L["max_ramp_ns"]),
             "ramp_down_ns": (0, L["max_ramp_ns"]), "ramp_up_pulses": (0, L["max_ramp_pulses"]),
             "ramp_down_pulses": (0, L["max_ramp_pulses"]),
             "electrode_area_um2": (L["min_electrode_area_um2"], 10**6), "shape": (0, 1),
             "sequence_pulses": (0, 1, L["max_sequence_pulses"]),
             "sequence_cycle_ns": (0, L["min_sequence_interval_ns"], L["max_duration_ns"])}
    base = P.complete({})
    out = {}
    for name in P.FIELD_NAMES:
        r = rng.random()
        if r < 0.6:
            out[name] = base[name]
        elif r < 0.85:
            out[name] = max(0, rng.choice(edges[name]) + rng.randint(-2, 2))
        elif r < 0.95:
            out[name] = rng.randint(0, TOP[name])
        else:
            out[name] = rng.choice((TOP[name], TOP[name] + 1, -1))
    return out


def _param_vectors():
    from test_params import param_sets  # the CPython property test's strategies

    rng = random.Random(RNG_SEED + 4)
    sets = collect(param_sets(), 200) + [random_param_set(rng) for _ in range(2000)]
    base = P.complete({})
    odd = []
    for name in P.FIELD_NAMES:
        for bad in (None, True, False, "7", 1.5, -1, -(2**70), 2**64, 2**64 - 1):
            odd.append(dict(base, **{name: bad}))
        missing = dict(base)
        del missing[name]
        odd.append(missing)
    odd.append(dict(base, bogus_field=3))
    # limit variants: different Shannon k, minimum phase and amplitude ceilings
    variants = []
    for _ in range(300):
        lim = dict(LIMITS, shannon_k_centi=rng.choice((-50, 0, 100, 150, 185, 200, 250)),
                   min_phase_ns=rng.choice((8, 40, 1000)), max_amplitude_ua=rng.choice((500, 10000, 20000)))
        variants.append((rng.choice(sets), lim))
    return [["validate", s] for s in sets + odd] + [["validate", s, lim] for s, lim in variants]


def test_validate(micropython):
    reqs = _param_vectors()
    answers = check_conformance("validate", reqs)
    accepted = sum(1 for a in answers if a["violation"] is None)
    fields = {a["violation"][0] for a in answers if a["violation"] is not None}
    assert accepted > 100, accepted
    assert {"shannon_k_centi", "duty_permille", "charge_per_phase_nc", "phase2_amplitude_ua", "period_ns"} <= fields


def test_pack(micropython):
    sets = collect(st.fixed_dictionaries({n: st.integers(0, TOP[n]) for n in P.FIELD_NAMES}), 100)
    rng = random.Random(RNG_SEED + 7)
    sets += [{n: rng.choice((0, TOP[n], rng.randint(0, TOP[n]))) for n in P.FIELD_NAMES} for _ in range(400)]
    check_conformance("pack", [["pack", s] for s in sets])


# ----------------------------------------------------------------------------------- messages
def _int_range(code):
    bits = 8 * struct.calcsize("<" + code)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)


def test_messages(micropython):
    rng = random.Random(RNG_SEED + 5)
    reqs = []
    for _ in range(200):
        reqs.append(["nack", rng.choice(sorted(M.ERROR_NAMES)), rng.randrange(len(P.NAMES)),
                     rng.randrange(-(2**63), 2**64), rng.randrange(0, 2**64), rng.choice(P.RELATIONS)])
        reqs.append(["event", rng.choice(sorted(M.EVENT_NAMES)), rng.randrange(256), rng.randrange(2**64),
                     rng.randrange(-(2**31), 2**31)])
        reqs.append(["hello", [rng.randrange(256) for _ in range(3)], rng.randrange(1, 9), _hex(rng.randbytes(8)),
                     rng.randrange(256), {n: rng.randrange(2**64) for n in P.LIMIT_NAMES}])
        chans = [[rng.randrange(len(M.STATE_NAMES)), rng.choice([0] + sorted(M.EVENT_NAMES)), rng.randrange(2),
                  rng.randrange(2**32), rng.randrange(2**32)] for _ in range(rng.randrange(0, 5))]
        reqs.append(["status", rng.randrange(2**32), chans, {n: rng.randrange(2**32) for n in M.COUNTER_NAMES}])
        reqs.append(["impedance", [[rng.randrange(4), rng.randrange(2**32), rng.randrange(len(M.Z_NAMES))]
                                   for _ in range(rng.randrange(0, 5))]])
    codes = M._REALISED.lstrip("<")
    for _ in range(150):
        p = {n: rng.choice((0, 1, TOP[n], rng.randrange(TOP[n] + 1))) for n in P.FIELD_NAMES}
        reqs.append(["params_request", rng.randrange(4), p])
        real = {n: rng.randrange(lo, hi + 1) for n, (lo, hi) in zip(M.REALISED_NAMES, map(_int_range, codes))}
        reqs.append(["params_response", rng.randrange(4), p, real])
    check_conformance("messages", reqs)


# -------------------------------------------------------------------------------- pulse engine
def test_engine(micropython):
    pytest.importorskip("firmware.pulse_engine")
    rng = random.Random(RNG_SEED + 6)
    sets = [s for s in (random_param_set(rng) for _ in range(2500)) if P.validate(s, LIMITS) is None]
    sets = [s for s in sets if s["train_delay_ns"] < 10**12 and s["interburst_ns"] < 10**12
            and s["period_ns"] < 10**12]  # keep the JSON small: ~4 words per 2^28 ticks
    reqs = [["engine", s, rng.choice((0, 0, 8))] for s in sets]
    reqs.append(["engine", P.complete({}), 4])
    reqs.append(["engine", dict(P.complete({}), polarity=7), 0])  # refused by the engine itself
    answers = check_conformance("engine", reqs)
    assert len(sets) >= 100, len(sets)
    assert sum(1 for a in answers if "exc" not in a) >= 100


# ------------------------------------------------------------------------- ramps, live amplitude
def test_ramps(micropython):
    """Per-pulse ramp codes, the DAC bus op lists (start, soft start, soft stop, live change) and their
    refusals are identical on MicroPython (op words stay below 2**30: small ints on the board)."""
    rng = random.Random(RNG_SEED + 8)
    reqs = []
    for _ in range(500):
        base = random_param_set(rng)
        if P.validate(base, LIMITS) is not None or base["period_ns"] > 10**10:
            continue
        p = dict(base, ramp_up_ns=0, ramp_down_ns=0, ramp_up_pulses=0, ramp_down_pulses=0)
        if rng.random() < 0.5:
            p["ramp_up_pulses"] = rng.choice((1, 2, rng.randint(1, 60), 1000))
        else:
            p["ramp_up_ns"] = rng.randint(1, 60) * p["period_ns"] + rng.randint(-3, 3)
        if rng.random() < 0.5:
            p["ramp_down_pulses"] = rng.randint(0, 60)
        else:
            p["ramp_down_ns"] = rng.randint(0, 30 * p["period_ns"])
        ch = rng.randrange(4)
        others = [None] * 4
        others[ch] = p
        chans = [ch]
        if rng.random() < 0.4:  # a second channel, same timing or not
            ch2 = (ch + 1 + rng.randrange(3)) % 4
            q = dict(p, amplitude_ua=rng.randint(1, p["amplitude_ua"]), polarity=rng.randint(0, 1))
            if rng.random() < 0.3:
                q["period_ns"] += 8
            others[ch2] = q
            chans.append(ch2)
        reqs.append(["ramp", others, chans])
    answers = check_conformance("ramp", reqs)
    assert len(reqs) >= 40
    assert any(isinstance(a.get("up"), list) and a["up"] and isinstance(a["up"][0], int) for a in answers)
    assert any(a["up"] and a["up"][0] == "RampMismatch" for a in answers)
    words = [w for a in answers for k in ("first", "up", "down", "amplitude") for w in a.get(k) or []
             if isinstance(w, int)]
    assert words and max(words) < 2**30


def test_amplitude_messages(micropython):
    rng = random.Random(RNG_SEED + 9)
    reqs = [["amplitude_messages", rng.randrange(256), rng.randrange(2**31), rng.randrange(2**32),
             rng.randrange(2**16), rng.randrange(2**16), rng.randrange(2**64), rng.randrange(2**32)]
            for _ in range(200)]
    reqs[0] = ["amplitude_messages", 3, 2**31 - 1, 0, 4095, 1, 2**64 - 1, 2**32 - 1]
    check_conformance("amplitude_messages", reqs)
