"""Ramps and a live amplitude change end to end on the virtual Pico: the real controller on SimHal (the
PIO programs, the DAC bus program included, executed cycle by cycle). Every amplitude is read back
from the MCP4822 commands the emulated DAC bus put on the pins (SCK/MOSI/CS), at each pulse's phase-1
start; the expected codes are computed here from the contract's ramp model (not by pulse_engine)."""

from __future__ import annotations

import pytest

from firmware import board
from protocol import messages as M
from protocol import params as P
from sim_bench import Bench


MS = 1_000_000


def _round(num, den):
    return (2 * num + den) // (2 * den)



@pytest.mark.parametrize("period_ns,phase_ns", [(5 * MS, 200_000), (100_000, 20_000)])  # 200 Hz, 10 kHz
def test_soft_start_live_change_and_soft_stop_in_the_dac_commands(period_ns, phase_ns):
    b = Bench()
    code1 = 800  # 2 mA = 800 x 2.5 µA
    p = P.complete(dict(phase1_ns=phase_ns, phase2_ns=phase_ns, period_ns=period_ns, amplitude_ua=2000,
                        ramp_up_pulses=4, ramp_down_pulses=3))
    b.request(M.SET_PARAMS, M.encode_params(0, p))
    b.request(M.START, b"\x01")
    T = period_ns / 1e9
    b.run(6.4 * T)
    t_req = b.hal.system.now
    r = M.decode_amplitude_response(b.request(M.SET_AMPLITUDE, M.encode_set_amplitude(0, 1000)).body)
    assert (r["amplitude_ua"], r["dac_a"], r["dac_b"]) == (1000, 400, 400)
    b.run(4.2 * T)
    (ev,) = [e for e in b.events() if e["kind"] == "amplitude"]
    assert ev["amplitude_ua"] == 1000
    t_stop = b.hal.system.now
    b.request(M.STOP, b"\x01")
    b.run(10 * T)
    assert [e["kind"] for e in b.events()][-1] == "train_done" and b.ctl.state[0] == M.ST_IDLE

    hal = b.hal
    hal.dac.update()
    neg, pos = hal.system.edges(board.CH_NEG[0]), hal.system.edges(board.CH_POS[0])
    assert len(neg) % 2 == 0 and len(pos) % 2 == 0
    starts = neg[0::2]  # cathodic first: phase 1 on NEG, its current from DAC B
    ends = pos[1::2]
    codes = [_round(hal.dac.current_na(0, True, s) * 4096, board.DAC_FULL_SCALE_UA * 1000) for s in starts]
    # soft start: pulse j at round(code1 * (j + 1) / 4)
    assert codes[:4] == [_round(code1 * (j + 1), 4) for j in range(4)] == [200, 400, 600, 800]
    f = ev["from_pulse"]
    assert 4 < f < len(codes) and codes[4:f] == [800] * (f - 4) and codes[f] == 400
    # applied from the pulse after the first pulse end that followed the request: no pulse later
    first_end = min(e for e in ends if e >= t_req)
    assert f == min(i for i, s in enumerate(starts) if s > first_end)
    # soft stop: after the STOP's next boundary, round(400 * (3 - j) / 4) for j = 0..2, then DAC off
    after = [c for s, c in zip(starts, codes) if s > t_stop]
    assert after[:1] == [400] or after[:3] == [300, 200, 100]
    tail = after[1:] if after[0] == 400 else after
    assert tail[:3] == [_round(400 * (3 - j), 4) for j in range(3)] == [300, 200, 100]
    assert all(c == 0 for c in tail[3:]) and len(tail[3:]) <= 2
    # no DAC command lands inside a pulse of channel 0 (phase-1 start to phase-2 end)
    for rise, dac, _ in hal.dac.commands:
        if dac == 0:
            assert not any(s <= rise <= e for s, e in zip(starts, ends)), rise


def test_two_channels_ramp_together_each_pulse_at_its_own_codes():
    b = Bench()
    p0 = P.complete(dict(phase1_ns=100_000, phase2_ns=100_000, period_ns=2 * MS, amplitude_ua=2000, ramp_up_pulses=5))
    p1 = dict(p0, amplitude_ua=1000, polarity=1, ramp_up_pulses=3)  # anodic first: phase 1 on POS (DAC A)
    b.request(M.SET_PARAMS, M.encode_params(0, p0))
    b.request(M.SET_PARAMS, M.encode_params(1, p1))
    b.request(M.START, b"\x03")
    b.run(0.0165)
    hal = b.hal
    hal.dac.update()
    for ch, pin, out_b, code1, k in ((0, board.CH_NEG[0], True, 800, 5), (1, board.CH_POS[1], False, 400, 3)):
        starts = hal.system.edges(pin)[0::2]
        codes = [_round(hal.dac.current_na(ch, out_b, s) * 4096, board.DAC_FULL_SCALE_UA * 1000) for s in starts]
        want = [_round(code1 * min(j + 1, k), k) for j in range(len(codes))]
        assert len(codes) >= 8 and codes == want, (ch, codes, want)


def test_a_ramp_longer_than_the_lookahead_arrives_in_chunks_and_stays_exact():
    b = Bench()
    k = 60  # at 20 Hz: 3 s, three times the controller's 1 s lookahead
    p = P.complete(dict(phase1_ns=200_000, phase2_ns=200_000, period_ns=50 * MS, amplitude_ua=2000, ramp_up_pulses=k,
                        ramp_down_pulses=40))
    b.request(M.SET_PARAMS, M.encode_params(0, p))
    b.request(M.START, b"\x01")
    plays = []
    orig = b.hal.dac_play

    def spy(ops):
        plays.append(len(ops))
        return orig(ops)

    b.hal.dac_play = spy
    for _ in range(33):  # the main loop polls at least every 100 ms here (the virtual Pico: 250 ms)
        b.run(0.1)
    assert len(plays) >= 2  # topped up from poll()
    hal = b.hal
    hal.dac.update()
    starts = hal.system.edges(board.CH_NEG[0])[0::2]
    codes = [_round(hal.dac.current_na(0, True, s) * 4096, board.DAC_FULL_SCALE_UA * 1000) for s in starts]
    assert len(codes) >= 64
    assert codes == [_round(800 * min(j + 1, k), k) for j in range(len(codes))]
    # electrode monitoring follows each pulse's own current: no false short at 1/60 of the amplitude
    assert not [e for e in b.events() if e["kind"] in ("short", "open")] and b.ctl.state[0] == M.ST_RUNNING
    n = len(codes)
    b.request(M.STOP, b"\x01")
    for _ in range(25):
        b.run(0.1)
    assert b.ctl.state[0] == M.ST_IDLE and [e["kind"] for e in b.events()][-1] == "train_done"
    assert not [e for e in b.events() if e["kind"] in ("short", "open", "impedance_high")]
    hal.dac.update()
    starts = hal.system.edges(board.CH_NEG[0])[0::2]
    codes = [_round(hal.dac.current_na(0, True, s) * 4096, board.DAC_FULL_SCALE_UA * 1000) for s in starts]
    down = codes[n:]
    ramp = [_round(800 * (40 - j), 41) for j in range(40)]
    i = down.index(ramp[0])
    assert down[:i] == [800] * i and i <= 1 and down[i:i + 40] == ramp and set(down[i + 40:]) <= {0}
