"""Link faults between the host and a virtual Pico (issue 7): a fault-injecting transport drops,
duplicates and corrupts bytes, injects garbage and duplicates whole frames in both directions; the
host closes and reopens the port mid-command; the pty disappears. Checked: the host retries with the
same sequence number and no request is executed twice (executions counted inside the device), every
event the device logged reaches the host (directly or from the EVENT_LOG replay), and the device keeps
stimulating or stops according to the deadman policy (docs/PROTOCOL.md, LINK).

Deadman policy: off by default (untethered: a train runs to its programmed end whatever the link
does). With ``Client.set_deadman(ms)`` (per connection; HELLO turns it off) the device stops every
running or armed channel at the next pulse boundary once the host has been silent for ``ms`` (virtual
time on the virtual Pico), and reports an EVENT ``deadman`` (value = stopped mask).
"""

from __future__ import annotations

import random
import time

import pytest

from picostim.client import Client, DeviceError, LinkError
from picostim.transport import open_port
from picostim.virtual.device import VirtualPico
from protocol import messages as M
from protocol import params as P
from pulse_check import check_pulses
from reliability_report import record

TRAIN = P.complete({"phase1_ns": 100_000, "phase2_ns": 100_000, "period_ns": 1_000_000,
                    "train_duration_ns": 5_000_000, "amplitude_ua": 500})
ENDLESS = dict(TRAIN, train_duration_ns=0)


class FaultyPort:
    """A pyserial-like wrapper that injects faults in both directions (seeded, counted)."""

    def __init__(self, inner, rng: random.Random, p_byte: float = 0.001, p_frame: float = 0.03):
        self.inner = inner
        self.rng = rng
        self.p_byte = p_byte
        self.p_frame = p_frame
        self.injected = {"dropped": 0, "duplicated": 0, "corrupted": 0, "garbage": 0, "frame_dups": 0,
                         "frames_dropped": 0}

    def _mangle(self, data: bytes) -> bytes:
        out = bytearray()
        r = self.rng
        for b in data:
            x = r.random()
            if x < self.p_byte:
                self.injected["dropped"] += 1
                continue
            if x < 2 * self.p_byte:
                self.injected["duplicated"] += 1
                out += bytes((b, b))
                continue
            if x < 3 * self.p_byte:
                self.injected["corrupted"] += 1
                out.append(b ^ r.randint(1, 255))
                continue
            out.append(b)
        if r.random() < self.p_frame:
            self.injected["garbage"] += 1
            out += bytes(r.randrange(256) for _ in range(r.randint(1, 12)))
        return bytes(out)

    def write(self, data: bytes) -> int:
        r = self.rng.random()
        if r < self.p_frame:  # the whole frame twice (a USB retransmit, a confused adapter)
            self.injected["frame_dups"] += 1
            data = data + data
        elif r < 2 * self.p_frame:
            self.injected["frames_dropped"] += 1
            return len(data)
        return self.inner.write(self._mangle(data))

    @property
    def in_waiting(self) -> int:
        return self.inner.in_waiting

    def read(self, n: int) -> bytes:
        return self._mangle(self.inner.read(n))

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


def count_executions(vp: VirtualPico) -> dict[int, list]:
    """Wrap the controller's handlers: seq -> list of executions (type) inside the device."""
    ctl = vp.controller
    executed: dict[int, list] = {}
    current = {}
    respond = ctl._respond

    def tracking_respond(frame):
        current["seq"] = frame.seq
        return respond(frame)

    def wrap(t, h):
        def run(body):
            executed.setdefault(current["seq"], []).append(t)
            return h(body)
        return run

    ctl._respond = tracking_respond
    ctl._handlers = {t: wrap(t, h) for t, h in ctl._handlers.items()}
    return executed


def recover(c: Client) -> int:
    """recover_events() over the lossy link: the EVENT_LOG request itself may be lost; try again."""
    for _ in range(6):
        try:
            return c.recover_events()
        except LinkError:
            continue
    raise AssertionError("EVENT_LOG never got through")


@pytest.mark.parametrize("n", [pytest.param(70, id="quick"), pytest.param(1500, id="long", marks=pytest.mark.slow)])
def test_lossy_link_no_double_execution_and_no_lost_event(tmp_path, n):
    rng = random.Random(7 + n)
    injected: dict = {}
    outcomes = {"ok": 0, "nack": 0, "link_error": 0}
    with VirtualPico(channels=2, flash_dir=str(tmp_path)) as vp:
        executed = count_executions(vp)
        port = FaultyPort(open_port(vp.path, exclusive=False), rng)
        c = Client(port, timeout=0.1, retries=15)
        issued = set()
        next_seq = c.next_seq

        def tracked_seq():
            s = next_seq()
            issued.add(s)
            return s

        c.next_seq = tracked_seq  # type: ignore[method-assign]
        c.hello()
        c._ev_contig = 1  # the baseline: the boot event (seq 1) went out before this connection
        sent: dict[int, str] = {}
        events: list[dict] = []
        recovered = 0
        for i in range(n):
            op = rng.choice(["set", "set", "status", "get", "start", "stop", "save", "load", "bad_start"])
            seq_before = c.seq
            try:
                if op == "set":
                    c.set_params(i % 2, dict(TRAIN, amplitude_ua=100 + i))
                elif op == "status":
                    c.status()
                elif op == "get":
                    c.get_params(0)
                elif op == "start":
                    c.start(1)
                elif op == "stop":
                    c.stop(3)
                elif op == "save":
                    c.save(0, i % 4)
                elif op == "load":
                    c.load(1, i % 4)
                else:
                    c.request(M.START, b"\x00")  # mask 0: always refused
                outcomes["ok"] += 1
                answered = True
            except DeviceError:
                outcomes["nack"] += 1
                answered = True
            except LinkError:
                outcomes["link_error"] += 1
                answered = False
            seq = c.seq
            assert seq == (seq_before + 1) & 0xFFFF  # one seq per request, whatever the retries
            sent[seq] = op
            if answered:
                assert len(executed.get(seq, [])) == 1, (op, executed.get(seq))
            if i % 10 == 9:
                for mask in (1, 2):
                    try:
                        c.start(mask)
                    except (DeviceError, LinkError):
                        pass
                vp.advance(0.006)  # trains end: train_done events on the lossy link
                events += c.events()
                recovered += recover(c)
                events += c.events()
        injected = port.injected
        device_events = vp.controller.events_sent
        recovered += recover(c)
        events += c.events()
        counters = c.counters()
    # HELLO always executes (read-only apart from turning the deadman off: idempotent by design)
    twice = {s: e for s, e in executed.items() if len(e) > 1 and e[0] != M.HELLO}
    assert not twice, twice
    assert set(executed) <= issued  # nothing the host did not send
    seqs = sorted(e["seq"] for e in events)
    assert seqs == list(range(2, device_events + 1)), "events lost"  # 1 = boot, before the client
    assert counters["retransmits"] > 0 and sum(injected.values()) > 50
    assert outcomes["ok"] + outcomes["nack"] >= 0.9 * n
    record("link_faults_lossy_%d" % n, requests=len(sent), faults_injected=sum(injected.values()), **injected,
           retransmits=counters["retransmits"], link_errors=outcomes["link_error"], executed_twice=0,
           device_events=device_events, events_received=len(seqs), events_recovered_from_log=recovered)


def test_port_closed_and_reopened_mid_command_executes_once(tmp_path):
    """The host's port breaks after the request went out (the answer is lost with it); the client
    reopens the port and resends the same bytes; the device answers from its duplicate cache."""
    with VirtualPico(channels=1, flash_dir=str(tmp_path)) as vp:
        executed = count_executions(vp)
        ports = []

        def reopen():
            p = open_port(vp.path, exclusive=False)
            ports.append(p)
            return p

        class BreakAfterWrite:
            """Closes the real port right after the request bytes are written."""

            def __init__(self, inner):
                self.inner = inner
                self.armed = True

            def write(self, data):
                n = self.inner.write(data)
                if self.armed:
                    self.armed = False
                    time.sleep(0.05)  # the device executes and answers into the closing port
                    self.inner.close()
                return n

            def __getattr__(self, name):
                return getattr(self.inner, name)

        c = Client(reopen(), timeout=0.3, retries=3, reopen=reopen)
        c.hello()
        c.set_params(0, TRAIN)
        c.port = BreakAfterWrite(c.port)
        c.start(1)  # breaks mid-command: reopened, resent with the same seq
        assert c.reopens == 1
        assert executed[c.seq] == [M.START]
        assert vp.controller.duplicates >= 1 or c.retransmits >= 1
        assert c.status()["channels"][0]["state"] in ("running", "idle")
        assert sum(1 for e in executed.values() for t in e if t == M.START) == 1
        c.close()


def test_pty_disappearing_is_a_link_error_not_a_hang():
    vp = VirtualPico(channels=1)
    vp.open()
    path = vp.path
    c = Client(open_port(path, exclusive=False), timeout=0.1, retries=2,
               reopen=lambda: open_port(path, exclusive=False))
    c.hello()
    vp.close()
    t0 = time.monotonic()
    with pytest.raises(LinkError):
        c.status()
    assert time.monotonic() - t0 < 3
    c.close()


# ------------------------------------------------------------------------------ deadman policy
def test_without_deadman_the_train_keeps_running_when_the_host_goes_away():
    with VirtualPico(channels=1) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        c.set_params(0, ENDLESS)
        c.start(1)
        c.close()  # the host disappears
        vp.advance(0.05)
        assert vp.controller.state[0] == M.ST_RUNNING and vp.controller.deadman_trips == 0


def test_deadman_stops_at_a_pulse_boundary_after_host_silence_and_keepalive_prevents_it():
    with VirtualPico(channels=1) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        c.set_params(0, ENDLESS)
        c.set_deadman(20)
        c.start(1)
        for _ in range(5):  # a host that keeps talking every 10 ms (virtual) keeps it running
            vp.advance(0.01)
            c.status()
        assert vp.controller.state[0] == M.ST_RUNNING
        vp.advance(0.03)  # silence > 20 ms
        vp.advance(0.003)
        assert vp.controller.deadman_trips == 1
        ev = c.wait_event("deadman", timeout=1)
        assert ev is not None and ev["value"] == 1
        assert c.status()["channels"][0]["state"] == "idle"
        pulses, problems = check_pulses(vp.hal.trace([0]))
        assert not problems and pulses > 40  # stopped between pulses: every one complete, balanced


def test_hello_turns_the_deadman_off_and_bad_values_are_refused():
    with VirtualPico(channels=1) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        c.set_deadman(20)
        assert vp.controller.deadman_ms == 20
        with pytest.raises(DeviceError) as e:
            c.set_deadman(5)
        assert e.value.field == "deadman_ms"
        assert vp.controller.deadman_ms == 20  # a refused LINK changes nothing
        c.hello()
        assert vp.controller.deadman_ms == 0


def test_client_event_gap_and_duplicate_accounting():
    c = Client(None)
    for s in (5, 6, 9, 7, 9, 6):
        c._queue_event({"seq": s, "kind": "x", "channel": 0, "time_us": 0, "value": 0})
    assert c.events_duplicate == 2 and c.events_missed == 1  # 8 is missing
    c._queue_event({"seq": 8, "kind": "x", "channel": 0, "time_us": 0, "value": 0})
    assert c.events_missed == 0 and c._ev_contig == 9


def test_events_lost_on_the_link_are_replayed_from_the_device_log():
    with VirtualPico(channels=1) as vp:
        c = Client(open_port(vp.path, exclusive=False), timeout=0.5)
        c.set_params(0, TRAIN)
        for _ in range(3):
            c.start(1)
            vp.advance(0.006)
        got = []
        deadline = time.monotonic() + 3
        while sum(e["seq"] > 1 for e in got) < vp.controller.events_sent - 1 and time.monotonic() < deadline:
            got += c.events(timeout=0.1)
        got = [e for e in got if e["seq"] > 1]  # the boot event went out before this connection
        assert len(got) == vp.controller.events_sent - 1 and got[-1]["kind"] == "train_done"
        lost = got[1:]  # pretend everything after the first event was corrupted on the wire
        c._ev_contig, c._ev_ahead = got[0]["seq"], set()
        assert c.recover_events() == len(lost)
        replayed = sorted(c.events(), key=lambda e: e["seq"])
        assert [(e["seq"], e["kind"], e["time_us"]) for e in replayed] == \
               [(e["seq"], e["kind"], e["time_us"]) for e in lost]
        assert c.recover_events() == 0  # nothing twice
