"""Host side of the protocol: request/response with retries, NACKs as exceptions, queued events.

``Client(serial_like)`` works over anything with ``read(n)`` / ``write(b)`` (a pyserial object from
:func:`picostim.transport.open_port`, or a test double). Rules:

- Sequence numbers start at a random value per connection and increase by one per request.
- The first request of a connection is HELLO (sent automatically if the caller did not): the device
  never answers HELLO from its duplicate cache, so a new connection cannot be served a stale reply.
- A timed-out request is resent byte for byte (same seq, same CRC); the device recognises the
  duplicate and answers it from its cache without executing twice.
- A NACK raises :class:`DeviceError` with the decoded NACK and a user-unit message.
- EVENT frames are queued (``events()``), never taken for a response; responses to other sequence
  numbers (late answers to an abandoned request) are counted and dropped. Events carry the device's
  event counter as seq: gaps (events lost on a bad link) are counted (``events_missed``) and
  :meth:`Client.recover_events` fetches them from the device's event log (EVENT_LOG); duplicates
  are dropped.
- A response whose body does not decode (a device bug or a foreign firmware: its CRC was good) is
  counted (``malformed``) and raised as :class:`LinkError`, never as a decoding exception.
- With ``reopen`` (a callable returning a fresh port), a port that breaks mid-request is reopened
  and the same bytes are resent (no HELLO in between: that would reset the device's duplicate
  cache), so the command executes once.
"""

import random
import struct
import time
from collections import deque

from picostim import paramfile
from protocol import messages as M
from protocol import params as P
from protocol.framing import PROTOCOL_VERSION, FrameDecoder, encode_frame


class LinkError(IOError):
    """The link failed: no answer after all retries, or the port broke."""


class DeviceError(Exception):
    """The device refused a request (NACK). ``nack`` is the decoded NACK dict: code, error, field,
    relation, value, limit."""

    def __init__(self, nack, request=None):
        self.nack = nack
        self.request = request
        self.code = nack["code"]
        self.field = nack["field"]
        self.value = nack["value"]
        self.limit = nack["limit"]
        self.relation = nack["relation"]
        super().__init__(describe_nack(nack, request))


def describe_nack(nack, request=None):
    """One line in user units: "<what> refused: <field> = <value> exceeds the firmware limit <limit>"."""
    what = "%s refused" % M.REQUEST_NAMES.get(request, "request") if request is not None else "device refused"
    code = nack["code"]
    field = nack["field"]
    if code == M.E_OUT_OF_RANGE and field:
        detail = paramfile.describe_violation(field, nack["value"], nack["limit"], nack["relation"])
    elif code == M.E_BAD_CHANNEL and field in ("channel", "mask"):
        detail = "%s = %s is not available (the device has channels 0..%s)" % (
            field, nack["value"] if field == "channel" else "0x%02x" % nack["value"],
            nack["limit"] if field == "channel" else bin(nack["limit"]).count("1") - 1)
    elif code == M.E_BAD_STATE and field == "channel" and request == M.SET_AMPLITUDE:
        state = M.STATE_NAMES[nack["limit"]] if 0 <= nack["limit"] < len(M.STATE_NAMES) else "not running"
        detail = ("channel %d is %s: a live amplitude change needs a running train (start it first; upload sets "
                  "the amplitude of a stopped channel)" % (nack["value"], state))
    elif code == M.E_DAC_BUSY and field == "channel":
        detail = "channel %d: %s" % (nack["value"], nack["error"])
    elif code == M.E_RAMP_TIMING and field:
        detail = "%s: %s" % (nack["error"], paramfile.describe_violation(field, nack["value"], nack["limit"],
                                                                         nack["relation"]))
    elif code in (M.E_FAULT_LATCHED, M.E_NOT_CONFIGURED, M.E_BAD_STATE) and field == "channel":
        extra = ""
        if code == M.E_BAD_STATE and 0 <= nack["limit"] < len(M.STATE_NAMES):
            extra = " (it is %s)" % M.STATE_NAMES[nack["limit"]]
        detail = "channel %d: %s%s" % (nack["value"], nack["error"], extra)
    elif code == M.E_BAD_STATE and field:
        state = M.STATE_NAMES[nack["limit"]] if 0 <= nack["limit"] < len(M.STATE_NAMES) else "busy"
        detail = "%s = %s cannot change while the channel is %s: stop it first" % (
            paramfile.user_name(field), paramfile.user_value(field, nack["value"]), state)
    elif code == M.E_IMPEDANCE and field == "channel":
        if nack["limit"] == M.OHM_UNKNOWN:
            detail = "channel %d: %s (no valid reading: the test pulse could not be sampled inside its phase)" % (
                nack["value"], nack["error"])
        else:
            detail = "channel %d: %s (%d ohm)" % (nack["value"], nack["error"], nack["limit"])
    elif code == M.E_BAD_VERSION:
        detail = "%s (sent %d, device speaks %d)" % (nack["error"], nack["value"], nack["limit"])
    elif field:
        detail = "%s: %s = %s (limit %s %s)" % (nack["error"], field, nack["value"], nack["relation"], nack["limit"])
    else:
        detail = nack["error"]
    return "%s: %s" % (what, detail)


def mask_of(channels):
    mask = 0
    for ch in channels:
        mask |= 1 << ch
    return mask


class Client:
    """One connection to a board (or a virtual Pico)."""

    def __init__(self, port, timeout=1.0, retries=3, seq=None, reopen=None):
        self.port = port
        self.reopen = reopen
        self.timeout = timeout
        self.retries = retries
        self.seq = random.randrange(0x10000) if seq is None else seq & 0xFFFF
        self.decoder = FrameDecoder()
        self._events = deque()
        self._said_hello = False
        self.device = None  # decoded HELLO
        # host-side link counters (the decoder's crc_errors / frames_dropped are added by counters())
        self.tx_frames = 0
        self.retransmits = 0
        self.timeouts = 0
        self.stale_responses = 0
        self.nacks = 0
        self.events_received = 0
        self.foreign_version = 0
        self.malformed = 0
        self.reopens = 0
        self.events_missed = 0
        self.events_duplicate = 0
        self._ev_contig = None  # every event up to this seq has been received
        self._ev_ahead = set()  # seqs received beyond a gap

    # ---- lifecycle ----------------------------------------------------------------------------
    def close(self):
        try:
            self.port.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def limits(self):
        if self.device is None:
            self.hello()
        return self.device["limits"]

    @property
    def channels(self):
        if self.device is None:
            self.hello()
        return self.device["channels"]

    def counters(self):
        d = self.decoder
        return {
            "tx_frames": self.tx_frames, "rx_frames": d.frames_ok, "crc_errors": d.crc_errors,
            "frames_dropped": d.frames_dropped, "bytes_discarded": d.bytes_discarded,
            "retransmits": self.retransmits, "timeouts": self.timeouts, "stale_responses": self.stale_responses,
            "nacks": self.nacks, "events": self.events_received, "malformed": self.malformed,
            "reopens": self.reopens, "events_missed": self.events_missed,
            "events_duplicate": self.events_duplicate,
        }

    # ---- raw I/O ------------------------------------------------------------------------------
    def _read_some(self):
        try:
            n = getattr(self.port, "in_waiting", 0) or 1
            data = self.port.read(n)
        except Exception as e:  # serial.SerialException, OSError: the port went away
            raise LinkError("read failed: %s" % e) from e
        return data or b""

    def _write(self, data):
        try:
            self.port.write(data)
            flush = getattr(self.port, "flush", None)
            if flush is not None:
                flush()
        except Exception as e:
            raise LinkError("write failed: %s" % e) from e

    def _pump(self):
        """Read what is available; return the non-event frames, queue the events."""
        data = self._read_some()
        if not data:
            return []
        out = []
        for frame in self.decoder.feed(data):
            if frame.type == M.EVENT:
                self.events_received += 1
                try:
                    ev = M.decode_event(frame.body)
                except Exception:
                    self.malformed += 1
                    continue
                ev["seq"] = frame.seq
                self._queue_event(ev)
            else:
                out.append(frame)
        return out

    def _queue_event(self, ev):
        """Queue ``ev`` unless already seen; track the contiguous prefix of event seqs and the gaps."""
        seq = ev["seq"]
        if self._ev_contig is None:
            self._ev_contig = (seq - 1) & 0xFFFF
        elif (seq - self._ev_contig) & 0xFFFF >= 0x8000 or seq == self._ev_contig or seq in self._ev_ahead:
            self.events_duplicate += 1
            return
        self._ev_ahead.add(seq)
        while (self._ev_contig + 1) & 0xFFFF in self._ev_ahead:
            self._ev_contig = (self._ev_contig + 1) & 0xFFFF
            self._ev_ahead.discard(self._ev_contig)
        far = max([(s - self._ev_contig) & 0xFFFF for s in self._ev_ahead] or [0])
        self.events_missed = far - len(self._ev_ahead)
        self._events.append(ev)

    def _reopen(self, error):
        if self.reopen is None:
            raise error
        self.close()
        try:
            self.port = self.reopen()
        except Exception as e:
            raise LinkError("reopen failed: %s" % e) from e
        self.reopens += 1
        self.decoder.feed(b"\x00")  # a half frame from the old port must not swallow the next answer

    def next_seq(self):
        self.seq = (self.seq + 1) & 0xFFFF
        return self.seq

    def request(self, msg_type, body=b"", timeout=None, retries=None, decode=None):
        """Send one request and return the response body (or ``decode(body)``). Retries resend the
        same bytes.

        Raises DeviceError on NACK, LinkError when no answer arrived after all retries or the answer
        does not decode."""
        if msg_type != M.HELLO and not self._said_hello:
            self.hello()
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        seq = self.next_seq()
        wire = encode_frame(msg_type, seq, body)
        for attempt in range(retries + 1):
            if attempt:
                self.retransmits += 1
            try:
                # a retry starts with a delimiter: the device's decoder drops any half frame first
                self._write(b"\x00" + wire if attempt else wire)
            except LinkError as e:
                self._reopen(e)
                continue
            self.tx_frames += 1
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    frames = self._pump()
                except LinkError as e:
                    self._reopen(e)
                    break  # resend the same bytes on the new port
                for frame in frames:
                    if frame.seq != seq or frame.type not in (msg_type | M.RESPONSE, M.NACK):
                        self.stale_responses += 1
                        continue
                    if frame.version != PROTOCOL_VERSION:
                        self.foreign_version += 1
                    if frame.type == M.NACK:
                        self.nacks += 1
                        try:
                            nack = M.decode_nack(frame.body)
                        except Exception:
                            self.malformed += 1
                            nack = {"code": 0, "error": "malformed NACK", "field": None, "relation": "?",
                                    "value": 0, "limit": 0}
                        raise DeviceError(nack, msg_type)
                    if decode is None:
                        return frame.body
                    try:
                        return decode(frame.body)
                    except Exception as e:  # struct.error, IndexError, KeyError...: never escapes
                        self.malformed += 1
                        raise LinkError("malformed %s response (seq %d, %d bytes): %s"
                                        % (M.REQUEST_NAMES.get(msg_type, hex(msg_type)), seq, len(frame.body), e))
            else:
                self.timeouts += 1
        raise LinkError("no answer to %s (seq %d) after %d attempt(s) of %.2f s"
                        % (M.REQUEST_NAMES.get(msg_type, hex(msg_type)), seq, retries + 1, timeout))

    # ---- events -------------------------------------------------------------------------------
    def events(self, timeout=0.0):
        """Drain and return queued EVENT dicts (kind, channel, time_us, value, seq); waits up to
        ``timeout`` seconds for the first one if none is queued."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self._pump():
                self.stale_responses += 1  # a response nobody is waiting for
            if self._events or time.monotonic() >= deadline:
                break
        out = list(self._events)
        self._events.clear()
        return out

    def wait_event(self, kind=None, channel=None, timeout=5.0):
        """Wait for an event (optionally of ``kind`` / ``channel``); None on timeout. Other events
        stay queued."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if (kind is None or ev["kind"] == kind) and (channel is None or ev["channel"] == channel):
                    del self._events[i]
                    return ev
            if time.monotonic() >= deadline:
                return None
            for frame in self._pump():
                self.stale_responses += 1

    # ---- typed requests -----------------------------------------------------------------------
    def hello(self):
        self._said_hello = True
        self.device = self.request(M.HELLO, decode=M.decode_hello)
        return self.device

    def info(self):
        """HELLO, cached per connection."""
        return self.device if self.device is not None else self.hello()

    def repl(self, timeout=None):
        """REPL request: the firmware hands the USB port back to the MicroPython REPL (what
        ``picostim flash`` does before mpremote). Sent once, never retried: after the handback the
        bytes of a retry would be typed at the REPL. Raises DeviceError (E_BAD_STATE naming the
        channel) while any channel is armed, running or draining; LinkError if the ACK did not come
        (the firmware may have handed the port back anyway). Afterwards the firmware does not answer."""
        return self.request(M.REPL, b"", timeout=timeout, retries=0)

    def set_params(self, channel, params):
        """Send canonical params (missing fields take the defaults). Returns
        {"channel", "params", "realised"} as echoed by the device."""
        full = P.complete(params)
        return self.request(M.SET_PARAMS, M.encode_params(channel, full), decode=M.decode_params_response)

    def set_amplitude(self, channel, amplitude_ua):
        """Live amplitude of a running channel (SET_AMPLITUDE): applied by the device at the end of the
        channel's next pulse. Returns {"channel", "amplitude_ua" (realised phase 1), "amplitude2_ua"
        (phase 2, balanced), "dac_a", "dac_b"}; the ``amplitude`` EVENT (keys ``from_pulse``,
        ``amplitude_ua``) follows when it has taken effect. NACKs: not running (E_BAD_STATE), a ramp or
        change still playing (E_DAC_BUSY), a limit (E_OUT_OF_RANGE with the field)."""
        return self.request(M.SET_AMPLITUDE, M.encode_set_amplitude(channel, amplitude_ua),
                            decode=M.decode_amplitude_response)

    def set_sequence(self, channel, onsets_ns, amplitudes_ua, params=None):
        """Upload a custom sequence to ``channel`` after :meth:`set_params` put it in sequence mode
        (``sequence_pulses`` = N): SET_SEQUENCE chunks of ``SEQUENCE_CHUNK`` (20) pulses, in order from
        pulse 0 (a first chunk restarts the upload). ``onsets_ns``: integer ns from the start (within
        the cycle when looped), ``amplitudes_ua``: phase-1 µA per pulse. With ``params`` (the channel's
        canonical parameters) the host first applies the firmware's own per-pulse rules
        (firmware.sequence.sequence_violation) and raises :class:`picostim.paramfile.ParamLimitError`
        naming the pulse, so nothing is sent. Returns the last response ({"channel", "received",
        "complete"}). NACKs: E_BAD_STATE (running, not in sequence mode, chunk out of order),
        E_OUT_OF_RANGE (``onset_ns`` / ``sequence_amplitude_ua`` / ``sequence_pulses``)."""
        onsets_ns = list(onsets_ns)
        amplitudes_ua = list(amplitudes_ua)
        if len(onsets_ns) != len(amplitudes_ua) or not onsets_ns:
            raise ValueError("set_sequence: %d onsets and %d amplitudes: one amplitude per onset, at least one pulse"
                             % (len(onsets_ns), len(amplitudes_ua)))
        if params is not None:
            seq = paramfile.Sequence(onsets_ns, amplitudes_ua, params.get("sequence_cycle_ns", 0) > 0,
                                     params.get("sequence_cycle_ns", 0))
            paramfile.check_sequence(P.complete(params), seq, self.limits)
        resp = None
        step = M.SEQUENCE_CHUNK
        for first in range(0, len(onsets_ns), step):
            body = M.encode_set_sequence(channel, first, onsets_ns[first:first + step],
                                         amplitudes_ua[first:first + step])
            resp = self.request(M.SET_SEQUENCE, body, decode=M.decode_sequence_response)
        return resp

    def get_params(self, channel):
        return self.request(M.GET_PARAMS, bytes((channel,)), decode=M.decode_params_response)

    def save(self, channel, slot):
        """Save the channel's parameters to flash slot ``slot`` (atomic, CRC-checked on the device).
        Returns {"slot", "crc"}."""
        return self.request(M.SAVE, M.encode_slot_request(channel, slot), decode=M.decode_save_response)

    def load(self, channel, slot):
        """Load flash slot ``slot`` into ``channel``; validated like set_params (NACK on an empty slot
        or a bad CRC). Returns the params response."""
        return self.request(M.LOAD, M.encode_slot_request(channel, slot), decode=M.decode_params_response)

    def set_deadman(self, ms):
        """Host-link deadman for this connection: while a channel runs, ``ms`` of silence from the
        host stops it (event ``deadman``); 0 turns it off (HELLO does too). Keep it alive with any
        request, e.g. :meth:`status`."""
        self.request(M.LINK, struct.pack("<I", ms))

    def event_log(self, after):
        """The device's logged events with a seq after ``after`` (at most EVENT_LOG_MAX)."""
        return self.request(M.EVENT_LOG, struct.pack("<H", after & 0xFFFF), decode=M.decode_event_log)

    def recover_events(self, after=None):
        """Fetch the events lost on the link from the device's event log and queue them; ``after``
        (default: the last event seq received without a gap) for a fresh connection, e.g. 0. Returns
        how many were recovered."""
        if after is not None:
            self._ev_contig = after & 0xFFFF
            self._ev_ahead = set()
        if self._ev_contig is None:
            return 0
        got = 0
        while True:
            start = self._ev_contig
            entries = self.event_log(start)
            before = len(self._events)
            for ev in entries:
                self._queue_event(ev)
            got += len(self._events) - before
            if len(entries) < M.EVENT_LOG_MAX or self._ev_contig == start:
                return got

    def _mask_body(self, mask):
        if isinstance(mask, (list, tuple, set)):
            mask = mask_of(mask)
        return bytes((mask & 0xFF,))

    def start(self, mask):
        self.request(M.START, self._mask_body(mask))

    def stop(self, mask):
        self.request(M.STOP, self._mask_body(mask))

    def trigger(self, mask):
        self.request(M.TRIGGER, self._mask_body(mask))

    def clear_fault(self, mask):
        self.request(M.CLEAR_FAULT, self._mask_body(mask))

    def status(self):
        return self.request(M.STATUS, decode=M.decode_status)

    def impedance(self, mask):
        return self.request(M.IMPEDANCE, self._mask_body(mask), decode=M.decode_impedance)

    def configured_mask(self):
        """Mask of the channels that have parameters on the device (from one STATUS)."""
        mask = 0
        for ch in self.status()["channels"]:
            if ch["configured"]:
                mask |= 1 << ch["channel"]
        return mask


def connect(port=None, timeout=1.0, retries=3):
    """Open ``port`` (path or URL) and say HELLO. Returns a Client."""
    from picostim import transport

    ser = transport.open_port(port)
    client = Client(ser, timeout=timeout, retries=retries)
    try:
        client.hello()
    except BaseException:
        client.close()
        raise
    return client
