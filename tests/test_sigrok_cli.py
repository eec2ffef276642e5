"""sigrok-cli interoperability: our files load in sigrok-cli, sigrok's files load in our readers,
the capture wrapper drives the demo driver, the timing decoder output is parsed."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from picostim.capture import (analyze, build_capture_command, capture, read_sr, read_vcd, run_timing_decoder,
                              sigrok_cli_path, write_sr, write_vcd)
from picostim.capture.trace import Channel, Trace

needs_sigrok = pytest.mark.skipif(sigrok_cli_path() is None, reason="sigrok-cli not installed")


def assert_same(a: Trace, b: Trace, names=None):
    assert a.samplerate_hz == b.samplerate_hz
    assert a.n_samples == b.n_samples
    for name in names or a.channels:
        assert a.channels[name].initial == b.channels[name].initial, name
        np.testing.assert_array_equal(a.channels[name].toggles, b.channels[name].toggles, err_msg=name)


def sigrok(*args):
    return subprocess.run(["sigrok-cli", *args], check=True, capture_output=True)


def test_build_capture_command():
    cmd = build_capture_command("fx2lafw", 24e6, "out.sr", samples=1_000_000,
                                channels={"D0": "POS", "D1": "NEG", "D2": "RECOVERY", "D3": "SYNC"},
                                trigger={"SYNC": "r"}, wait_trigger=True)
    assert cmd == ["sigrok-cli", "--driver", "fx2lafw", "--config", "samplerate=24m", "--samples", "1000000",
                   "--channels", "D0=POS,D1=NEG,D2=RECOVERY,D3=SYNC", "--triggers", "SYNC=r", "--wait-trigger",
                   "--output-file", "out.sr", "--output-format", "srzip"]
    cmd = build_capture_command("demo", "1 MHz", "x.vcd", duration_s=0.25, channels=["D0", "D1"])
    assert cmd[4] == "samplerate=1m" and cmd[5:7] == ["--time", "250ms"] and cmd[-2:] == ["--output-format", "vcd"]
    with pytest.raises(ValueError):
        build_capture_command("demo", 1e6, "x.sr")


@needs_sigrok
def test_demo_capture_sr_and_vcd_agree(tmp_path):
    ch = {"D0": "POS", "D1": "NEG", "D2": "RECOVERY", "D3": "SYNC"}
    t = capture("demo", 1e6, 20_000, ch, tmp_path / "d.sr")
    assert t.n_samples == 20_000 and t.samplerate_hz == 1e6
    assert list(t.channels) == ["POS", "NEG", "RECOVERY", "SYNC"]
    assert sum(len(c.toggles) for c in t.channels.values()) > 1000  # the demo pattern toggles a lot
    # sigrok's own VCD export of the same file reads back identically
    vcd = tmp_path / "d.vcd"
    vcd.write_bytes(sigrok("-i", str(tmp_path / "d.sr"), "-O", "vcd").stdout)
    assert_same(t, read_vcd(vcd))
    # capture straight to VCD
    t2 = capture("demo", 1e6, channels=ch, out_path=tmp_path / "e.vcd", duration_s=0.005)
    assert t2.n_samples == 5_000 and set(t2.channels) == set(ch.values())


@needs_sigrok
def test_demo_sparse_channels_packed_layout(tmp_path):
    # libsigrok 0.5 writes probe1/probe4 for D0,D3 but stores the demo samples packed in bits 0,1
    out = tmp_path / "y.sr"
    sigrok("--driver", "demo", "--config", "samplerate=125m", "--samples", "200000", "--channels", "D0,D3",
           "-o", str(out))
    t = read_sr(out)
    vcd = tmp_path / "y.vcd"
    vcd.write_bytes(sigrok("-i", str(out), "-O", "vcd").stdout)
    v = read_vcd(vcd)
    assert v.samplerate_hz == 125e6  # from the "at 125 MHz" comment, timescale is 1 ns
    assert_same(t, v)


def _train(sr=125e6):
    from test_analyzer import make_train

    return make_train(n_pulses=6, rec=12_500, rec_gap=125, trig_at=500, sr=sr)  # 1 µs dead time before RECOVERY


@needs_sigrok
def test_sigrok_reads_our_sr(tmp_path):
    t = _train()
    write_sr(t, tmp_path / "o.sr", chunk_samples=100_000)
    vcd = tmp_path / "o.vcd"
    vcd.write_bytes(sigrok("-i", str(tmp_path / "o.sr"), "-O", "vcd").stdout)
    assert_same(t, read_vcd(vcd))
    assert analyze(read_vcd(vcd), expected=dict(phase1_us=200, interphase_us=8, phase2_us=200, recovery_us=100,
                                               period_us=1000, pulses=6)).ok


@needs_sigrok
def test_sigrok_reads_our_vcd_at_125mhz(tmp_path):
    t = _train()
    write_vcd(t, tmp_path / "o.vcd")
    sigrok("-I", "vcd", "-i", str(tmp_path / "o.vcd"), "-o", str(tmp_path / "back.sr"))
    back = read_sr(tmp_path / "back.sr")
    assert back.samplerate_hz == 125e6
    assert_same(t, back)


@needs_sigrok
def test_timing_decoder(tmp_path):
    t = _train()
    write_sr(t, tmp_path / "o.sr")
    res = run_timing_decoder(tmp_path / "o.sr", "NEG")
    tg = t.channels["NEG"].toggles
    np.testing.assert_array_equal(res.starts, tg[:-1])
    np.testing.assert_array_equal(res.widths, np.diff(tg))
    assert res.texts[0].startswith("200.000 μs") or "200" in res.texts[0]


@needs_sigrok
def test_capture_accepts_path_as_third_argument(tmp_path):
    t = capture("demo", "1m", tmp_path / "p.sr", duration_s=0.002, channels={"D0": "POS", "D1": "NEG"})
    assert t.samplerate_hz == 1e6 and set(t.channels) == {"POS", "NEG"} and t.n_samples >= 2000
