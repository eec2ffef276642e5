"""Feeder._write_run's fast path (issue 11 item 5: START's ring fill on the M0+) writes exactly what
the one-entry-at-a-time reference writes: same ring slots, pulse counts, head and end, after load()
and after every top-up, for plain periodic trains, bursts, delays (lead blocks), finite and endless
trains. The reference is the pre-optimisation loop over Feeder._next_entry / Cursor.next_block."""

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from firmware import dma_chain as dc
from firmware import pulse_engine as pe
from firmware.limits import LIMITS
from protocol import params as P

US = 1_000
MS = 1_000_000


class RefFeeder(dc.Feeder):
    def _write_run(self, start, limit):
        vals = []
        cums = []
        total = self.pulses_total
        i = start
        while i < limit and not self.finished:
            e = self._next_entry()
            if e is None:
                self.finished = True
                break
            total += e[1]
            vals.append(e[0])
            cums.append(total)
            i += 1
        new_head = start + len(vals)
        self._put(new_head, 0)
        self.cum[new_head % self.ring_len] = total
        for k in range(len(vals) - 1, -1, -1):
            self.cum[(start + k) % self.ring_len] = cums[k]
            self._put(start + k, vals[k])
        self.pulses_total = total
        self.head = new_head
        return new_head

    def load(self, plan):
        self.p = plan.p
        self.cursor = dc.Cursor(plan)
        self.block = None
        self.entry = 0
        self.finished = False
        self.pulses_total = 0
        self.head = 0
        self.max_tail_ticks = plan.tail_ticks
        for s in range(self.ring_len):
            self.ring[self.base + s] = 0
            self.cum[s] = 0
        return self._write_run(0, self.ring_len - self.margin)


def addresses():
    seen: dict = {}

    def addr_of(block):
        return seen.setdefault(id(block), 0x20000000 + 0x1000 * (len(seen) + 1))
    return addr_of


def state(f):
    return list(f.ring), list(f.cum), f.head, f.finished, f.pulses_total


params = st.builds(
    lambda ph1, ph2, period, burst, ib, dur, delay: P.complete({
        "phase1_ns": ph1, "phase2_ns": ph2, "period_ns": period, "burst_pulses": burst,
        "interburst_ns": ib, "train_duration_ns": dur, "train_delay_ns": delay}),
    st.integers(40, 500 * US), st.integers(40, 500 * US), st.integers(100 * US, 5 * MS),
    st.sampled_from([0, 0, 1, 2, 5]), st.one_of(st.just(0), st.integers(40, 20 * MS)),
    st.one_of(st.just(0), st.integers(40, 400 * MS)), st.one_of(st.just(0), st.integers(40, 5 * MS)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@example(P.complete({"period_ns": 1 * MS}), [7, 240, 1, 100, 300])  # endless plain train: the bulk path
@example(P.complete({"period_ns": 1 * MS, "train_duration_ns": 300 * MS}), [240, 50, 13])  # ends mid-ring
@example(P.complete({"period_ns": 1 * MS, "train_delay_ns": 3 * MS, "train_duration_ns": 20 * MS}), [5, 5])
@example(P.complete({"period_ns": 1 * MS, "burst_pulses": 5, "interburst_ns": 20 * MS}), [100, 100, 100])
@given(params, st.lists(st.integers(0, 300), min_size=1, max_size=8))
def test_fast_write_run_matches_the_reference(p, advances):
    if P.validate(p, LIMITS) is not None:
        assume(False)
    try:
        train = pe.build_train(p)
    except pe.Unrealisable:
        assume(False)
    plan = dc.Plan(train)
    addr_of = addresses()
    rl = dc.RING_LEN
    fast = dc.Feeder([0xFFFF] * (rl + 3), 3, rl, addr_of)
    ref = RefFeeder([0xFFFF] * (rl + 3), 3, rl, addr_of)
    assert fast.load(plan) == ref.load(plan)
    assert state(fast) == state(ref)
    consumed = 0
    for a in advances:  # the DMA reads ``a`` more entries (never past the 0 at head), then a top-up
        consumed = min(consumed + a, fast.head)
        assert fast.fill(consumed) == ref.fill(consumed)
        assert state(fast) == state(ref)
        assert fast.pulses_after(consumed) == ref.pulses_after(consumed) if consumed else True
