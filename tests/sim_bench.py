"""The real controller on SimHal (the virtual Pico's simulated HAL), polled where the virtual Pico's
main loop would poll: a bench for tests that read the emulated pins and DAC bus."""

from firmware.controller import Controller
from picostim.virtual.sim_hal import SimHal
from protocol import messages as M
from protocol import params as P
from protocol.framing import FrameDecoder, encode_frame


class Bench:
    """Controller + SimHal, polled where the virtual Pico's main loop would poll."""

    def __init__(self, channels=2):
        self.hal = SimHal(channels=channels)
        self.out = []
        self.ctl = Controller(self.hal, self.out.append)
        self.seq = 0

    def request(self, msg_type, body=b""):
        """Send one request; assert it was answered (not refused) and return the answer frame."""
        self.seq += 1
        n = len(self.out)
        self.ctl.receive(encode_frame(msg_type, self.seq, body))
        frames = [f for chunk in self.out[n:] for f in FrameDecoder().feed(chunk)]
        reply = [f for f in frames if f.type != M.EVENT]
        assert reply, "no answer"
        assert reply[-1].type == msg_type | M.RESPONSE, M.decode_nack(reply[-1].body)
        return reply[-1]

    def configure(self, ch=0, **kw):
        self.request(M.SET_PARAMS, bytes([ch]) + P.pack(P.complete(kw)))

    def run(self, seconds):
        end = self.hal.system.now + round(seconds * self.hal.clock_hz)
        while self.hal.system.now < end:
            nxt = self.hal.next_poll_cycle()
            self.hal.system.run_until(end if nxt is None else min(end, nxt))
            self.ctl.poll()

    def events(self, kind=None):
        """Every EVENT sent so far (decoded), or only those of ``kind`` (an M.EV_* number)."""
        frames = [f for chunk in self.out for f in FrameDecoder().feed(chunk)]
        evs = [M.decode_event(f.body) for f in frames if f.type == M.EVENT]
        return evs if kind is None else [e for e in evs if e["kind"] == M.EVENT_NAMES[kind]]
