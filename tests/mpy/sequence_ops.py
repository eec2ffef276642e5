"""Custom-sequence operations (firmware/sequence.py, the SET_SEQUENCE codecs and the controller's
upload), answered on CPython (golden) and on MicroPython (under test) by tests/mpy/test_mpy_sequence.py.
JSON values in and out (bytes as hex). Must stay MicroPython-compatible."""

import binascii

from firmware import sequence as S
from firmware.limits import LIMITS
from protocol import messages as M
from protocol import params as P


def _b(h):
    return binascii.unhexlify(h)


def _h(b):
    return binascii.hexlify(bytes(b)).decode()


def _v(v):
    return None if v is None else [v.field, v.value, v.limit, v.relation, v.message()]


def op_codec(channel, first, onsets, amps):
    body = M.encode_set_sequence(channel, first, onsets, amps)
    ch, f, o, a = M.decode_set_sequence(body)
    resp = M.encode_sequence_response(channel, first, len(onsets) & 1)
    return [_h(body), ch, f, o, a, _h(resp), M.decode_sequence_response(resp)]


def op_violation(params, onsets, amps):
    return [_v(P.validate(params, LIMITS)), _v(S.sequence_violation(params, LIMITS, onsets, amps))]


def op_store(params, chunks, root, reads, seeks):
    """Upload ``chunks`` ([first, onsets, amps] each) into RAM (root None) or files under ``root``;
    per chunk the check's violation or the count received; then ``reads`` pulses from a reader, and
    after each seek in ``seeks`` the next pulse."""
    records = S.RamRecords() if root is None else S.FileStore(root).records(1)
    b = S.SequenceBuilder(params, LIMITS, records)
    steps = []
    for first, onsets, amps in chunks:
        if first and first != b.received:  # out of order: the controller refuses it (E_BAD_STATE)
            steps.append("order")
            continue
        v = b.check(first, onsets, amps)
        if v is None:
            b.add(first, onsets, amps)
            steps.append(b.received)
        else:
            steps.append(_v(v))
    out = {"steps": steps, "complete": b.complete, "codes": [b.code_min, b.code_max]}
    if b.complete:
        src = b.source()
        out["source"] = [src.pulses, src.cycle_ticks, src.repeats, src.total(), src.varies]
        r = src.reader()
        out["read"] = [r.next() for _ in range(reads)]
        got = []
        for k in seeks:
            r.seek(k)
            got.append(r.next())
        out["seek"] = got
        r.close()
        records.close()
    return out


def op_controller(requests, root):
    """A Controller on the link fuzzers' FakeHal with records under ``root`` (None: in RAM): each
    request [type, body hex] answered; returns the reply frames' hex and the uploads' state."""
    from firmware.controller import Controller
    from protocol.framing import encode_frame
    from link_targets import FakeHal

    out = []
    hal = FakeHal()
    ctl = Controller(hal, out.append, sequences=None if root is None else S.FileStore(root))
    replies = []
    for i, (t, body) in enumerate(requests):
        del out[:]
        ctl.receive(encode_frame(t, i + 1, _b(body)))
        replies.append([_h(x) for x in out])
    ups = [None if b is None else [b.received, b.complete, b.first_ticks, b.last_ticks] for b in ctl._seq]
    trains = []
    for t in ctl.trains:
        src = getattr(t, "sequence", None) if t is not None else None
        if src is None:
            trains.append(None)
        else:
            r = src.reader()
            trains.append([src.pulses, src.repeats, r.next(), r.next()])
    return [replies, ups, ctl.state, hal.calls, trains]


OPS = {
    "codec": op_codec,
    "violation": op_violation,
    "store": op_store,
    "controller": op_controller,
}
