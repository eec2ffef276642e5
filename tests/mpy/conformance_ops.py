"""Conformance operations: the same code runs on CPython (golden) and MicroPython (under test).

Every op takes and returns JSON values only (bytes as hex strings). On CPython ``protocol.framing``
computes CRCs with crcmod's C extension and on MicroPython with the table in ``protocol.crc16``, so
comparing the two runs also proves those agree. Must stay MicroPython-compatible.
"""

import binascii

from firmware.limits import LIMITS
from protocol import cobs, framing
from protocol import crc16 as crc_table
from protocol import messages as M
from protocol import params as P


def _b(h):
    return binascii.unhexlify(h)


def _h(b):
    return binascii.hexlify(bytes(b)).decode()


def op_crc(h):
    """framing's CRC (crcmod on CPython, the selected table CRC on MicroPython), the selected table
    CRC (viper on MicroPython, plain on CPython) and the plain-Python loop: all must agree."""
    data = _b(h)
    return [framing.crc16(data), crc_table.crc16(data), crc_table.crc16_plain(data)]


def op_cobs_encode(h):
    return _h(cobs.encode(_b(h)))


def op_cobs_decode(h):
    out = cobs.decode(_b(h))
    return None if out is None else _h(out)


def op_encode_frame(msg_type, seq, body_hex, version):
    return _h(framing.encode_frame(msg_type, seq, _b(body_hex), version))


def op_decode_stream(chunks):
    dec = framing.FrameDecoder()
    frames = []
    per_chunk = []
    for c in chunks:
        got = dec.feed(_b(c))
        per_chunk.append(len(got))
        for f in got:
            frames.append([f.version, f.type, f.seq, _h(f.body), f.crc])
    return {"frames": frames, "per_chunk": per_chunk, "frames_ok": dec.frames_ok, "crc_errors": dec.crc_errors,
            "frames_dropped": dec.frames_dropped, "bytes_discarded": dec.bytes_discarded}


def _violation(v):
    if v is None:
        return None
    value = v.value if isinstance(v.value, int) and not isinstance(v.value, bool) else repr(v.value)
    return [v.field, value, v.limit, v.relation, v.message()]


def op_validate(params, limits=None):
    v = P.validate(params, LIMITS if limits is None else limits)
    out = {"violation": _violation(v)}
    if v is not None:
        out["nack"] = _h(M.encode_violation_nack(v))
    return out


def op_pack(params):
    data = P.pack(params)
    back = P.unpack(data)
    return [_h(data), [back[n] for n in P.FIELD_NAMES]]


def op_nack(code, field, value, limit, relation):
    body = M.encode_nack(code, field, value, limit, relation)
    return [_h(body), M.decode_nack(body)]


def op_event(kind, channel, time_us, value):
    body = M.encode_event(kind, channel, time_us, value)
    return [_h(body), M.decode_event(body)]


def op_hello(fw, channels, board_id_hex, reset_reason, limits):
    body = M.encode_hello(fw, channels, _b(board_id_hex), reset_reason, limits)
    return [_h(body), M.decode_hello(body)]


def op_params_request(channel, params):
    body = M.encode_params(channel, params)
    ch, p = M.decode_params_request(body)
    return [_h(body), ch, [p[n] for n in P.FIELD_NAMES]]


def op_params_response(channel, params, realised):
    body = M.encode_params_response(channel, params, realised)
    return [_h(body), M.decode_params_response(body)]


def op_status(uptime, chans, counters):
    body = M.encode_status(uptime, [tuple(c) for c in chans], counters)
    return [_h(body), M.decode_status(body)]


def op_impedance(readings):
    body = M.encode_impedance([tuple(r) for r in readings])
    return [_h(body), M.decode_impedance(body)]


def op_engine(params, ramp_k=0):
    """build_train on a parameter set: every word, the run-length cycle and the realised values."""
    from firmware import pulse_engine as E

    t = E.build_train(params)
    out = {
        "delay": t.delay,
        "runs": [[g, n] for g, n in t.runs],
        "n_groups": t.pulses,
        "repeats": t.repeats,
        "pulses": t.pulses,
        "cycle_ticks": t.cycle_ticks,
        "period_ticks": t.period_ticks,
        "realised": t.realised,
        "entry": t.entry,
        "trigger_pin": t.trigger_pin,
        "dac": [t.dac_a, t.dac_b],
    }
    if t.pulses <= 64:
        out["cycle_words"] = E.cycle_words(t)
    if ramp_k:
        out["ramp"] = [list(E.ramp_codes(t, k)) for k in range(ramp_k)]
        out["ramp_pulses"] = E.ramp_pulses(t) if t.ramp_ticks < 100 * t.period_ticks else -1
    out["ramp_k"] = [t.ramp_up_k, t.ramp_down_k]
    return out


def _exc(e):
    return [type(e).__name__, getattr(e, "field", None), getattr(e, "value", None), getattr(e, "limit", None)]


def op_ramp(params_list, channels, waits=None):
    """The DAC bus op lists of a start / stop of ``channels`` (trains built from ``params_list``, one
    per channel or None), the per-pulse codes of the first train, and build_checked's decision."""
    from firmware import pulse_engine as E

    trains = [None if p is None else E.build_train(p) for p in params_list]
    out = {}
    t = trains[channels[0]]
    if t.ramp_up_k <= 300:
        out["up_codes"] = [list(E.pulse_codes(t, j)) for j in range(t.ramp_up_k + 1)]
    if t.ramp_down_k <= 300:
        out["down_codes"] = [list(E.ramp_down_codes(t, j)) for j in range(t.ramp_down_k)]
    out["first"] = E.start_ops(trains, channels)
    try:
        out["up"] = E.ramp_up_ops(trains, channels, waits)
    except E.Unrealisable as e:
        out["up"] = _exc(e)
    down = [ch for ch in channels if trains[ch].ramp_down_k > 0]
    if down:
        try:
            out["down"] = E.ramp_down_ops(trains, down)
        except E.Unrealisable as e:
            out["down"] = _exc(e)
    out["amplitude"] = E.amplitude_ops(t, channels[0])
    _, v = E.build_checked(params_list[channels[0]], LIMITS)
    out["checked"] = _violation(v)
    return out


def op_amplitude_messages(ch, amp, amp2, dac_a, dac_b, time_us, from_pulse):
    req = M.encode_set_amplitude(ch, amp)
    resp = M.encode_amplitude_response(ch, amp, amp2, dac_a, dac_b)
    ev = M.encode_amplitude_event(ch, time_us, from_pulse, amp)
    log = M.encode_event_log([(1, ev), (2, M.encode_event(M.EV_BOOT, 0, time_us, 1)), (3, ev)])
    return [_h(req), list(M.decode_set_amplitude(req)), _h(resp), M.decode_amplitude_response(resp), _h(ev),
            M.decode_event(ev), _h(log), M.decode_event_log(log)]


OPS = {
    "crc": op_crc,
    "cobs_encode": op_cobs_encode,
    "cobs_decode": op_cobs_decode,
    "encode_frame": op_encode_frame,
    "decode_stream": op_decode_stream,
    "validate": op_validate,
    "pack": op_pack,
    "nack": op_nack,
    "event": op_event,
    "hello": op_hello,
    "params_request": op_params_request,
    "params_response": op_params_response,
    "status": op_status,
    "impedance": op_impedance,
    "engine": op_engine,
    "ramp": op_ramp,
    "amplitude_messages": op_amplitude_messages,
}
