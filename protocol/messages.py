"""Message catalogue: type codes, NACK codes, event kinds and the body codecs.

Requests come from the host with type < 0x80. A response echoes the request's sequence number with
type ``request | RESPONSE``; a refusal is a NACK (same seq). EVENT frames are unsolicited, carry the
device's own event counter as seq, and are never a response, so the host can tell them apart.
All integers are little-endian.
"""

import struct

from protocol import params as P
from protocol.framing import PROTOCOL_VERSION

# Requests (host -> device)
HELLO = 0x01
GET_PARAMS = 0x02
SET_PARAMS = 0x03
START = 0x04
STOP = 0x05
TRIGGER = 0x06
STATUS = 0x07
IMPEDANCE = 0x08
CLEAR_FAULT = 0x09
SAVE = 0x0A  # channel u8, slot u8: save the channel's parameters to a flash slot
LOAD = 0x0B  # channel u8, slot u8: load a slot into a channel (validated like SET_PARAMS)
LINK = 0x0C  # deadman_ms u32: per-connection host-link deadman (0 = off; HELLO resets it to off)
EVENT_LOG = 0x0D  # after u16: replay the logged EVENTs with a seq after ``after`` (lost on a bad link)
REPL = 0x0E  # empty: hand the USB port back to the MicroPython REPL (picostim flash); NACK while any channel runs
SET_AMPLITUDE = 0x0F  # channel u8, amplitude_ua u32: a running channel's amplitude from its next pulse boundary
# channel u8, first u16, k x (onset_ns u64, amplitude_ua u32), 1 <= k <= SEQUENCE_CHUNK: pulses first..first+k-1
# of the channel's custom sequence (in order: ``first`` = pulses already received; 0 restarts the upload)
SET_SEQUENCE = 0x10

REQUEST_NAMES = {
    HELLO: "hello", GET_PARAMS: "get_params", SET_PARAMS: "set_params", START: "start", STOP: "stop",
    TRIGGER: "trigger", STATUS: "status", IMPEDANCE: "impedance", CLEAR_FAULT: "clear_fault",
    SAVE: "save", LOAD: "load", LINK: "link", EVENT_LOG: "event_log", REPL: "repl",
    SET_AMPLITUDE: "set_amplitude", SET_SEQUENCE: "set_sequence",
}

RESPONSE = 0x80
NACK = 0xFE
EVENT = 0xFF

# NACK error codes
E_BAD_VERSION = 1
E_UNKNOWN_TYPE = 2
E_BAD_LENGTH = 3
E_OUT_OF_RANGE = 4
E_BAD_CHANNEL = 5
E_BAD_STATE = 6
E_FAULT_LATCHED = 7
E_IMPEDANCE = 8
E_NOT_CONFIGURED = 9
E_EMPTY_SLOT = 10
E_STORAGE = 11
E_DAC_BUSY = 12  # a ramp or an amplitude change is still playing on the DAC bus
E_RAMP_TIMING = 13  # channels ramping together in one START need identical pulse timing
E_SEQUENCE_INCOMPLETE = 14  # START/TRIGGER of a sequence channel before all its pulses arrived (SET_SEQUENCE)
ERROR_NAMES = {
    E_BAD_VERSION: "unsupported protocol version",
    E_UNKNOWN_TYPE: "unknown message type",
    E_BAD_LENGTH: "wrong body length",
    E_OUT_OF_RANGE: "value outside the firmware's limits",
    E_BAD_CHANNEL: "no such channel",
    E_BAD_STATE: "not allowed in the current state",
    E_FAULT_LATCHED: "channel fault latched; clear it first",
    E_IMPEDANCE: "electrode check failed",
    E_NOT_CONFIGURED: "channel has no parameters",
    E_EMPTY_SLOT: "nothing saved in that slot",
    E_STORAGE: "flash slot unreadable or corrupt (CRC)",
    E_DAC_BUSY: "a ramp or amplitude change is still playing; retry when it has taken effect",
    E_RAMP_TIMING: "channels ramping together need identical pulse timing, and trains that outlast the ramp or end together",
    E_SEQUENCE_INCOMPLETE: "the channel's sequence is incomplete; upload all its pulses (SET_SEQUENCE) first",
}

# Channel states
ST_IDLE = 0
ST_ARMED = 1
ST_RUNNING = 2
ST_FAULT = 3
STATE_NAMES = ("idle", "armed", "running", "fault")

# Event kinds
EV_BOOT = 1
EV_TRAIN_DONE = 2
EV_TRIGGER_SEEN = 3
EV_FAULT_OPEN = 4
EV_FAULT_SHORT = 5
EV_DEADMAN = 6  # the host link went silent while running with the deadman on: channels stopped
EV_IMPEDANCE_HIGH = 7  # warning: a running channel's debounced impedance entered HIGH (it keeps running)
EV_CRASH = 8  # the firmware caught an exception: outputs went to the safe state; value = crash_value()
# A SET_AMPLITUDE took effect: value = the realised phase-1 amplitude in µA; its body carries one more
# field, from_pulse u32 (0-based index, since the start, of the first pulse with the new amplitude).
EV_AMPLITUDE = 9
EVENT_NAMES = {EV_BOOT: "boot", EV_TRAIN_DONE: "train_done", EV_TRIGGER_SEEN: "trigger_seen",
               EV_FAULT_OPEN: "open", EV_FAULT_SHORT: "short", EV_DEADMAN: "deadman",
               EV_IMPEDANCE_HIGH: "impedance_high", EV_CRASH: "crash", EV_AMPLITUDE: "amplitude"}

# Boot/reset reason (HELLO reset_reason, value of the boot EVENT). RESET_CRASH: no chip reset; the
# firmware caught an exception, put every output in the safe state and serves again with a fresh
# controller (nothing configured); the crash EVENT that follows the boot EVENT says what and where.
RESET_POWER_ON = 0
RESET_WATCHDOG = 1
RESET_SOFT = 2
RESET_CRASH = 3
RESET_NAMES = ("power-on", "watchdog", "soft", "crash")

# Crash EVENT value = kind + 256 * where. kind: index in CRASH_KINDS (0 = another exception class);
# where: the request type whose handler raised, or CRASH_LINK / CRASH_POLL / CRASH_LOOP.
CRASH_KINDS = ("other", "MemoryError", "ValueError", "TypeError", "IndexError", "KeyError", "AttributeError",
               "ZeroDivisionError", "OverflowError", "OSError", "RuntimeError", "NotImplementedError",
               "AssertionError", "StopIteration", "NameError")
CRASH_LINK = 0xF0  # decoding host bytes (outside any request handler)
CRASH_POLL = 0xF1  # the periodic poll (monitoring, train ends, triggers, deadman)
CRASH_LOOP = 0xF2  # elsewhere in the main loop (the link read, the controller's construction)

# Impedance classes
Z_OK = 0
Z_HIGH = 1
Z_OPEN = 2
Z_SHORT = 3
Z_UNKNOWN = 4
Z_NAMES = ("ok", "high", "open", "short", "unknown")
# Ohms field (u32) of IMPEDANCE, STATUS and the E_IMPEDANCE NACK when there is no valid reading (the
# check never ran, or its test pulse could not be sampled inside its phase): never reported as 0 Ω.
OHM_UNKNOWN = 0xFFFFFFFF

# Counters reported by STATUS, in wire order.
COUNTER_NAMES = ("rx_frames", "crc_errors", "frames_dropped", "nacks", "duplicates", "events_sent", "crashes")

_NACK = "<BBBqq"
_EVENT = "<BBQi"
_EVENT_EXTRA = "<I"  # appended to the EVENT body of the kinds in _EXTENDED_EVENTS
_EXTENDED_EVENTS = (EV_AMPLITUDE,)
EVENT_SIZE = struct.calcsize(_EVENT)
EVENT_MAX_SIZE = EVENT_SIZE + struct.calcsize(_EVENT_EXTRA)
_AMPLITUDE_REQUEST = "<BI"  # channel, amplitude_ua
_AMPLITUDE_RESPONSE = "<BIIHH"  # channel, amplitude_ua (realised phase 1), amplitude2_ua, dac_a, dac_b
AMPLITUDE_RESPONSE_NAMES = ("channel", "amplitude_ua", "amplitude2_ua", "dac_a", "dac_b")
_SEQUENCE_HEAD = "<BH"  # channel, first
_SEQUENCE_PULSE = "<QI"  # onset_ns, amplitude_ua
SEQUENCE_PULSE_SIZE = struct.calcsize(_SEQUENCE_PULSE)
SEQUENCE_HEAD_SIZE = struct.calcsize(_SEQUENCE_HEAD)
SEQUENCE_CHUNK = 20  # pulses per SET_SEQUENCE: 3 + 20 x 12 = 243 bytes <= framing.MAX_BODY
_SEQUENCE_RESPONSE = "<BHB"  # channel, received, complete (0/1)
SEQUENCE_RESPONSE_NAMES = ("channel", "received", "complete")
_HELLO_HEAD = "<BBBBB8s"
_CHAN_STATUS = "<BBBII"  # state, fault (event kind), configured (0/1), pulses, impedance ohm
# Realised values returned with the parameters: times in PIO ticks (see tick_hz), amplitudes as
# realised by the 12-bit DAC, the charge-balance residual per pulse in fC (phase 1 minus phase 2).
_REALISED = "<QQQQQQQQQIIHHqIII"
REALISED_NAMES = (
    "phase1", "interphase", "phase2", "recovery", "period", "interburst", "train_delay", "train_duration",
    "ramp_up", "amplitude_na", "amplitude2_na", "dac_code1", "dac_code2", "residual_fc",
    "pulses_per_cycle", "repeats", "tick_hz",
)


_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


def _i64(v):
    """Clamp to the NACK's int64 slots: params are u64 on the wire, and struct must never raise
    (CPython) nor silently wrap (MicroPython) on a value we are refusing."""
    if not isinstance(v, int) or isinstance(v, bool):
        return 0
    return _I64_MIN if v < _I64_MIN else _I64_MAX if v > _I64_MAX else v


def encode_nack(code, field=P.NO_FIELD, value=0, limit=0, relation="<="):
    """NACK body: error code, offending field id, how value relates to limit, value, limit
    (value and limit clamped to int64; a non-integer value travels as 0)."""
    return struct.pack(_NACK, code, field, P.RELATIONS.index(relation), _i64(value), _i64(limit))


def encode_violation_nack(violation):
    return encode_nack(E_OUT_OF_RANGE, P.field_id(violation.field) if violation.field in P.NAMES else P.NO_FIELD,
                       violation.value, violation.limit, violation.relation)


def decode_nack(body):
    code, field, relation, value, limit = struct.unpack(_NACK, body)
    return {"code": code, "error": ERROR_NAMES.get(code, "error %d" % code),
            "field": None if field == P.NO_FIELD else P.field_name(field),
            "relation": P.RELATIONS[relation] if relation < len(P.RELATIONS) else "?",
            "value": value, "limit": limit}


def encode_event(kind, channel, time_us, value, extra=None):
    """EVENT body; ``extra`` (u32) only for the kinds in _EXTENDED_EVENTS (amplitude: from_pulse)."""
    body = struct.pack(_EVENT, kind, channel, time_us, value)
    if kind in _EXTENDED_EVENTS:
        body += struct.pack(_EVENT_EXTRA, (extra or 0) & 0xFFFFFFFF)
    return body


def event_size(kind):
    """Length of the EVENT body of ``kind``."""
    return EVENT_MAX_SIZE if kind in _EXTENDED_EVENTS else EVENT_SIZE


def decode_event(body):
    if not body or len(body) != event_size(body[0]):
        raise ValueError("bad event length")
    kind, channel, time_us, value = struct.unpack(_EVENT, body[:EVENT_SIZE])
    out = {"kind": EVENT_NAMES.get(kind, str(kind)), "channel": channel, "time_us": time_us, "value": value}
    if kind == EV_AMPLITUDE:
        out["amplitude_ua"] = value
        out["from_pulse"] = struct.unpack(_EVENT_EXTRA, body[EVENT_SIZE:])[0]
    return out


def encode_amplitude_event(channel, time_us, from_pulse, amplitude_ua):
    """EVENT amplitude: ``amplitude_ua`` (realised phase 1) applies from pulse ``from_pulse``."""
    return encode_event(EV_AMPLITUDE, channel, time_us, amplitude_ua, from_pulse)


def encode_set_amplitude(channel, amplitude_ua):
    return struct.pack(_AMPLITUDE_REQUEST, channel, amplitude_ua)


def decode_set_amplitude(body):
    """(channel, amplitude_ua) of a SET_AMPLITUDE body, or None if its length is wrong."""
    if len(body) != struct.calcsize(_AMPLITUDE_REQUEST):
        return None
    return struct.unpack(_AMPLITUDE_REQUEST, body)


def encode_amplitude_response(channel, amplitude_ua, amplitude2_ua, dac_a, dac_b):
    return struct.pack(_AMPLITUDE_RESPONSE, channel, amplitude_ua, amplitude2_ua, dac_a, dac_b)


def decode_amplitude_response(body):
    return dict(zip(AMPLITUDE_RESPONSE_NAMES, struct.unpack(_AMPLITUDE_RESPONSE, body)))


def encode_set_sequence(channel, first, onsets_ns, amplitudes_ua):
    """SET_SEQUENCE body: pulses ``first`` .. ``first + k - 1`` of the channel's sequence."""
    if len(onsets_ns) != len(amplitudes_ua) or not 1 <= len(onsets_ns) <= SEQUENCE_CHUNK:
        raise ValueError("1..%d pulses, as many onsets as amplitudes" % SEQUENCE_CHUNK)
    out = bytearray(struct.pack(_SEQUENCE_HEAD, channel, first))
    for onset, amp in zip(onsets_ns, amplitudes_ua):
        out += struct.pack(_SEQUENCE_PULSE, onset, amp)
    return bytes(out)


def sequence_body_ok(n):
    """True when ``n`` is the length of a SET_SEQUENCE body (1..SEQUENCE_CHUNK pulses)."""
    k, rest = divmod(n - SEQUENCE_HEAD_SIZE, SEQUENCE_PULSE_SIZE)
    return rest == 0 and 1 <= k <= SEQUENCE_CHUNK


def decode_set_sequence(body):
    """(channel, first, onsets_ns, amplitudes_ua) of a SET_SEQUENCE body, or None if its length is wrong."""
    if not sequence_body_ok(len(body)):
        return None
    channel, first = struct.unpack(_SEQUENCE_HEAD, body[:SEQUENCE_HEAD_SIZE])
    onsets = []
    amps = []
    for at in range(SEQUENCE_HEAD_SIZE, len(body), SEQUENCE_PULSE_SIZE):
        onset, amp = struct.unpack_from(_SEQUENCE_PULSE, body, at)
        onsets.append(onset)
        amps.append(amp)
    return channel, first, onsets, amps


def encode_sequence_response(channel, received, complete):
    return struct.pack(_SEQUENCE_RESPONSE, channel, received, 1 if complete else 0)


def decode_sequence_response(body):
    return dict(zip(SEQUENCE_RESPONSE_NAMES, struct.unpack(_SEQUENCE_RESPONSE, body)))


def encode_hello(fw_version, channels, board_id, reset_reason, limits):
    head = struct.pack(_HELLO_HEAD, fw_version[0], fw_version[1], fw_version[2], PROTOCOL_VERSION,
                       channels, board_id)
    return head + struct.pack("<B", reset_reason) + struct.pack(
        "<" + "Q" * len(P.LIMIT_NAMES), *[limits[n] for n in P.LIMIT_NAMES])


def decode_hello(body):
    n = struct.calcsize(_HELLO_HEAD)
    a, b, c, proto, channels, board_id = struct.unpack(_HELLO_HEAD, body[:n])
    reset_reason = body[n]
    values = struct.unpack("<" + "Q" * len(P.LIMIT_NAMES), body[n + 1:])
    return {"firmware_version": "%d.%d.%d" % (a, b, c), "protocol_version": proto, "channels": channels,
            "board_id": board_id.hex(), "reset_reason": reset_reason, "limits": dict(zip(P.LIMIT_NAMES, values))}


def encode_params(channel, params):
    return bytes((channel,)) + P.pack(params)


def decode_params_request(body):
    """(channel, params) of a SET_PARAMS body, or None if its length is wrong."""
    if len(body) != 1 + P.SIZE:
        return None
    return body[0], P.unpack(body[1:])


def encode_params_response(channel, params, realised):
    return encode_params(channel, params) + struct.pack(_REALISED, *[realised[n] for n in REALISED_NAMES])


def decode_params_response(body):
    channel = body[0]
    params = P.unpack(body[1:1 + P.SIZE])
    realised = dict(zip(REALISED_NAMES, struct.unpack(_REALISED, body[1 + P.SIZE:])))
    return {"channel": channel, "params": params, "realised": realised}


def encode_status(uptime_ms, channels, counters):
    """``channels``: list of (state, fault_kind, configured, pulses, impedance_ohm); ``counters``: dict."""
    out = struct.pack("<IB", uptime_ms, len(channels))
    for ch in channels:
        out += struct.pack(_CHAN_STATUS, *ch)
    return out + struct.pack("<" + "I" * len(COUNTER_NAMES), *[counters[n] for n in COUNTER_NAMES])


def decode_status(body):
    uptime_ms, n = struct.unpack("<IB", body[:5])
    size = struct.calcsize(_CHAN_STATUS)
    chans = []
    for i in range(n):
        state, fault, configured, pulses, ohm = struct.unpack(_CHAN_STATUS, body[5 + i * size:5 + (i + 1) * size])
        chans.append({"channel": i, "state": STATE_NAMES[state], "fault": EVENT_NAMES.get(fault, "none"),
                      "configured": bool(configured), "pulses": pulses,
                      "impedance_ohm": None if ohm == OHM_UNKNOWN else ohm})
    counters = struct.unpack("<" + "I" * len(COUNTER_NAMES), body[5 + n * size:])
    return {"uptime_ms": uptime_ms, "channels": chans, "counters": dict(zip(COUNTER_NAMES, counters))}


def encode_impedance(readings):
    """``readings``: list of (channel, ohms, class)."""
    out = bytes((len(readings),))
    for ch, ohm, cls in readings:
        out += struct.pack("<BIB", ch, ohm, cls)
    return out


def decode_impedance(body):
    out = []
    for i in range(body[0]):
        ch, ohm, cls = struct.unpack("<BIB", body[1 + 6 * i:7 + 6 * i])
        out.append({"channel": ch, "ohms": None if ohm == OHM_UNKNOWN else ohm, "class": Z_NAMES[cls]})
    return out


# SAVE / LOAD bodies: channel u8, slot u8. SAVE answers slot u8 + the record's CRC-16 u16; LOAD answers
# like SET_PARAMS (params response).
def encode_slot_request(channel, slot):
    return struct.pack("<BB", channel, slot)


def decode_save_response(body):
    slot, crc = struct.unpack("<BH", body)
    return {"slot": slot, "crc": crc}


# EVENT_LOG: request ``after`` u16 (the seq of the last event the host holds); response count u8, then
# per event: seq u16 + the EVENT body (its length follows from its kind: event_size). At most
# EVENT_LOG_MAX per answer, oldest first: 12 of the longest bodies fit in one frame.
EVENT_LOG_MAX = 12
EVENT_LOG_LEN = 32  # events the device keeps for replay


def encode_event_log(entries):
    """``entries``: list of (seq, event body bytes)."""
    out = bytes((len(entries),))
    for seq, body in entries:
        out += struct.pack("<H", seq & 0xFFFF) + body
    return out


def decode_event_log(body):
    n = body[0]
    out = []
    at = 1
    for _ in range(n):
        if at + 3 > len(body):
            raise ValueError("bad event log length")
        end = at + 2 + event_size(body[at + 2])
        if end > len(body):
            raise ValueError("bad event log length")
        ev = decode_event(body[at + 2:end])
        ev["seq"] = struct.unpack("<H", body[at:at + 2])[0]
        out.append(ev)
        at = end
    if at != len(body):
        raise ValueError("bad event log length")
    return out


def crash_value(exc_name, where):
    """The crash EVENT's value for an exception class name and where it was raised."""
    kind = CRASH_KINDS.index(exc_name) if exc_name in CRASH_KINDS else 0
    return kind | where << 8


def decode_crash(value):
    """``{"exception": name, "where": request name / "link" / "poll" / "loop"}`` of a crash value."""
    kind, where = value & 0xFF, value >> 8 & 0xFF
    places = {CRASH_LINK: "link", CRASH_POLL: "poll", CRASH_LOOP: "loop"}
    return {"exception": CRASH_KINDS[kind] if kind < len(CRASH_KINDS) else "other",
            "where": places.get(where, REQUEST_NAMES.get(where, "0x%02X" % where))}
