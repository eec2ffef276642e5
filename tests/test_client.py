"""picostim.client against the real firmware Controller behind a fake HAL and an in-memory link.

The link double can drop, duplicate and corrupt bytes, which pyserial's loop:// cannot (nothing
answers on it); the virtual Pico over a real pty is covered by tests/test_cli_e2e.py.
"""

import pytest
import serial

from firmware.controller import Controller
from firmware.limits import LIMITS
from picostim import paramfile
from picostim.client import Client, DeviceError, LinkError, mask_of
from protocol import messages as M
from protocol import params as P
from protocol import framing
from protocol.framing import encode_frame


class FakeHal:
    def __init__(self, channels=4, ohm=1000):
        self.channels = channels
        self.ohm = ohm
        self.t = 0
        self.started = []
        self.stopped = []
        self.run = [False] * channels

    def board_id(self):
        return b"\x01\x02\x03\x04\x05\x06\x07\x08"

    def reset_reason(self):
        return 0

    def time_us(self):
        self.t += 1
        return self.t

    def start(self, trains, mask, wait):
        self.started.append(mask)
        for ch in range(self.channels):
            if mask >> ch & 1:
                self.run[ch] = True

    def replace(self, ch, train):
        pass

    def stop(self, mask):
        self.stopped.append(mask)
        for ch in range(self.channels):
            if mask >> ch & 1:
                self.run[ch] = False

    def disarm(self, mask):
        self.stop(mask)  # never waits (waiting() is False): nothing has fired
        return 0

    def running(self, ch):
        return self.run[ch]

    def input_level(self, n):
        return 1

    def waiting(self, ch):
        return False

    def pulses(self, ch):
        return 7 if self.run[ch] else 0

    def measure_impedance(self, ch):
        return self.ohm

    def feed_watchdog(self):
        pass


class FakeLink:
    """Serial-like: bytes written go to the controller; its answers are readable.

    ``drop_responses``: how many response frames to swallow (simulates a lost answer);
    ``executions``: count of requests the controller actually handled, by type."""

    def __init__(self, controller_factory=None, channels=4):
        self.hal = FakeHal(channels)
        self.rx = bytearray()
        self.sent = []
        self.drop_responses = 0
        self.controller = Controller(self.hal, self._device_send)
        self.closed = False
        self.in_waiting = 0

    def _device_send(self, data):
        if self.drop_responses and data[-1:] == b"\x00":
            self.drop_responses -= 1
            return
        self.rx.extend(data)
        self.in_waiting = len(self.rx)

    def write(self, data):
        self.sent.append(bytes(data))
        self.controller.receive(bytes(data))
        self.controller.poll()
        return len(data)

    def read(self, n):
        out = bytes(self.rx[:n])
        del self.rx[:n]
        self.in_waiting = len(self.rx)
        return out

    def close(self):
        self.closed = True


GOOD = {"phase1_ns": 200000, "phase2_ns": 200000, "period_ns": 50000000, "amplitude_ua": 2000,
        "electrode_area_um2": 5000000}


@pytest.fixture
def link():
    return FakeLink()


def test_hello_first_and_limits(link):
    c = Client(link, timeout=0.05, retries=1)
    st = c.status()  # HELLO is sent automatically before the first request
    assert M.decode_hello  # noqa
    assert len(link.sent) == 2
    assert c.device["limits"] == LIMITS
    assert c.device["channels"] == 4
    assert c.device["protocol_version"] == framing.PROTOCOL_VERSION
    assert [ch["state"] for ch in st["channels"]] == ["idle"] * 4


def test_random_sequence_start():
    seqs = {Client(FakeLink()).seq for _ in range(20)}
    assert len(seqs) > 1


def test_set_get_params_realised(link):
    c = Client(link)
    r = c.set_params(1, GOOD)
    assert r["channel"] == 1
    assert r["params"] == P.complete(GOOD)
    real = r["realised"]
    assert real["tick_hz"] == 125000000
    assert real["phase1"] == 25000 and real["phase2"] == 25000
    assert c.get_params(1) == r


def test_nack_out_of_range_names_field_value_limit(link):
    c = Client(link)
    bad = dict(GOOD, phase1_ns=20000000)  # 20 ms > 10 ms
    with pytest.raises(DeviceError) as ei:
        c.set_params(0, bad)
    e = ei.value
    assert e.code == M.E_OUT_OF_RANGE
    assert e.field == "phase1_ns"
    assert e.value == 20000000 and e.limit == LIMITS["max_phase_ns"]
    msg = str(e)
    assert "phase1_us = 20000 µs" in msg and "10000 µs" in msg
    # nothing changed on the device
    with pytest.raises(DeviceError) as ei:
        c.get_params(0)
    assert ei.value.code == M.E_NOT_CONFIGURED
    assert c.nacks == 2


def test_nack_bad_channel(link):
    c = Client(link)
    with pytest.raises(DeviceError) as ei:
        c.get_params(9)
    assert ei.value.code == M.E_BAD_CHANNEL and "channel = 9" in str(ei.value)


def test_retry_resends_same_bytes_and_device_executes_once(link):
    c = Client(link, timeout=0.05, retries=2)
    c.hello()
    link.drop_responses = 1  # the answer to the next request is lost
    c.set_params(0, GOOD)
    frames = link.sent[-2:]
    # same seq, same bytes (a retry is preceded by a 0x00 so a half-received frame cannot swallow it)
    assert frames[1] == b"\x00" + frames[0]
    assert c.retransmits == 1 and c.timeouts == 1
    assert link.controller.duplicates == 1
    c.start(0b1)
    link.drop_responses = 1
    c.stop(0b1)
    assert link.hal.stopped == [1]  # STOP executed once although sent twice
    assert link.controller.duplicates == 2


def test_link_error_after_retries(link):
    c = Client(link, timeout=0.02, retries=2)
    c.hello()
    link.drop_responses = 10
    with pytest.raises(LinkError):
        c.status()
    assert c.timeouts == 3 and c.retransmits == 2


def test_events_are_queued_not_responses(link):
    c = Client(link)
    c.set_params(0, GOOD)
    # inject an event in front of the next response
    link.rx.extend(encode_frame(M.EVENT, 99, M.encode_event(M.EV_TRIGGER_SEEN, 2, 123, 0)))
    link.in_waiting = len(link.rx)
    st = c.status()
    assert "channels" in st
    evs = c.events()
    assert evs and evs[-1]["kind"] == "trigger_seen" and evs[-1]["channel"] == 2
    assert c.events() == []


def test_stale_response_ignored(link):
    c = Client(link)
    c.hello()
    # a late answer to some earlier request (other seq) must not be taken for the next one
    link.rx.extend(encode_frame(M.STATUS | M.RESPONSE, (c.seq - 5) & 0xFFFF, b"junk"))
    link.in_waiting = len(link.rx)
    c.set_params(0, GOOD)
    assert c.stale_responses == 1


def test_host_counters_on_garbage(link):
    c = Client(link)
    c.hello()
    link.rx.extend(b"\x11\x22\x33\x00")  # garbage then delimiter
    bad = bytearray(encode_frame(M.STATUS | M.RESPONSE, 1, b"x"))
    bad[2] ^= 0xFF  # corrupt a byte inside the frame
    link.rx.extend(bad)
    link.in_waiting = len(link.rx)
    c.status()
    cnt = c.counters()
    assert cnt["crc_errors"] + cnt["frames_dropped"] >= 2


def test_start_stop_trigger_status_events(link):
    c = Client(link)
    c.set_params(0, GOOD)
    c.set_params(2, GOOD)
    nacks = c.status()["counters"]["nacks"]
    assert c.configured_mask() == 0b101
    assert c.status()["counters"]["nacks"] == nacks  # found from STATUS, not by probing with GET_PARAMS
    c.start(mask_of([0, 2]))
    assert link.hal.started == [0b101]
    st = c.status()
    assert [ch["state"] for ch in st["channels"]] == ["running", "idle", "running", "idle"]
    assert st["channels"][0]["pulses"] == 7
    with pytest.raises(DeviceError) as ei:
        c.start(0b1)
    assert ei.value.code == M.E_BAD_STATE
    c.stop([0, 2])
    ev = c.wait_event("train_done", channel=0, timeout=0.2)
    assert ev is not None
    c.trigger(0b1)
    assert link.hal.started[-1] == 0b1
    c.clear_fault(0b1)
    z = c.impedance(0b11)
    assert [r["class"] for r in z] == ["ok", "ok"]


def test_preset_values_accepted_by_firmware(link):
    c = Client(link)
    ps = paramfile.load("presets/ptns.toml")
    r = c.set_params(0, ps.params)
    assert r["realised"]["phase1"] == 25000


def test_loop_url_times_out_cleanly():
    ser = serial.serial_for_url("loop://", timeout=0.01)
    c = Client(ser, timeout=0.05, retries=1)
    # loop:// echoes our own request back: a request frame is never a response
    with pytest.raises(LinkError):
        c.hello()
    assert c.stale_responses == 2


def test_describe_nack_bad_state_field():
    from picostim.client import describe_nack
    nack = M.decode_nack(M.encode_nack(M.E_BAD_STATE, P.field_id("amplitude_ua"), 1500, M.ST_RUNNING))
    msg = describe_nack(nack, M.SET_PARAMS)
    assert msg == "set_params refused: amplitude_ua = 1500 µA cannot change while the channel is running: stop it first"
