"""VCD and sigrok .sr files: round trips, sigrok's own layouts, plot output."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from picostim.capture import analyze, plot, read_capture, read_sr, read_vcd, write_capture, write_sr, write_vcd
from picostim.capture.trace import Channel, Trace
from picostim.capture.vcd import format_samplerate, parse_samplerate

NAMES = ["POS", "NEG", "RECOVERY", "SYNC", "TRIG1", "TRIG2", "POS_1", "NEG_1", "RECOVERY_1"]


@st.composite
def traces(draw, max_samples=5000, rates=(125_000_000, 1_000_000, 24_000_000, 100_000_000, 500_000)):
    n = draw(st.integers(1, max_samples))
    k = draw(st.integers(1, 9))
    chans = {}
    for name in NAMES[:k]:
        tg = draw(st.lists(st.integers(1, n - 1), max_size=40, unique=True)) if n > 1 else []
        chans[name] = Channel(draw(st.integers(0, 1)), np.sort(np.array(tg, dtype=np.int64)))
    return Trace(float(draw(st.sampled_from(rates))), n, chans)


def assert_same(a: Trace, b: Trace):
    assert a.samplerate_hz == b.samplerate_hz
    assert a.n_samples == b.n_samples
    assert list(a.channels) == list(b.channels)
    for name, ch in a.channels.items():
        assert ch.initial == b.channels[name].initial, name
        np.testing.assert_array_equal(ch.toggles, b.channels[name].toggles, err_msg=name)


@settings(max_examples=60, deadline=None)
@given(traces())
def test_vcd_round_trip(tmp_path_factory, trace):
    p = tmp_path_factory.mktemp("vcd") / "t.vcd"
    write_vcd(trace, p)
    assert_same(trace, read_vcd(p))


@settings(max_examples=60, deadline=None)
@given(traces(), st.sampled_from([7, 64, 1 << 22]))
def test_sr_round_trip(tmp_path_factory, trace, chunk):
    p = tmp_path_factory.mktemp("sr") / "t.sr"
    write_sr(trace, p, chunk_samples=chunk)
    assert_same(trace, read_sr(p))


def test_vcd_timescale_is_one_sample(tmp_path):
    t = Trace(125e6, 10, {"POS": Channel(0, [3])})
    write_vcd(t, tmp_path / "x.vcd")
    text = (tmp_path / "x.vcd").read_text()
    assert "$timescale 8 ns $end" in text and "#3\n1!" in text and text.rstrip().endswith("#10")


def test_read_sigrok_style_vcd_multichange_lines(tmp_path):
    text = """$date Wed Nov 25 2026 $end
$version libsigrok 0.5.2 $end
$comment
  Acquisition with 3/13 channels at 1 MHz
$end
$timescale 1 us $end
$scope module libsigrok $end
$var wire 1 ! D0 $end
$var wire 1 " D1 $end
$var wire 1 # D2 $end
$upscope $end
$enddefinitions $end
#0 1! 0" 0#
#1 0! 1" 1#
#4 1! 0"
#5 1"
#9 0" 0#
#20
"""
    p = tmp_path / "s.vcd"
    p.write_text(text)
    t = read_vcd(p)
    assert t.samplerate_hz == 1e6 and t.n_samples == 20
    assert t.channels["D0"].initial == 1 and list(t.channels["D0"].toggles) == [1, 4]
    assert list(t.channels["D1"].toggles) == [1, 4, 5, 9]
    assert list(t.channels["D2"].toggles) == [1, 9]


def test_read_vcd_ns_timescale_at_125mhz_and_vectors(tmp_path):
    # sigrok exports 125 MHz captures with a 1 ns timescale; vectors and x/z must not confuse the reader
    text = """$comment Acquisition with 1/1 channels at 125 MHz $end
$timescale 1 ns $end
$scope module top $end
$var wire 1 a POS $end
$var wire 4 b BUS $end
$upscope $end
$enddefinitions $end
$dumpvars
0a
bxxxx b
$end
#0
#8
1a
b1010 b
#16
xa
#40
1a
#80
"""
    p = tmp_path / "n.vcd"
    p.write_text(text)
    t = read_vcd(p)
    assert t.samplerate_hz == 125e6 and t.n_samples == 10
    assert list(t.channels) == ["POS"]
    assert list(t.channels["POS"].toggles) == [1, 2, 5]


def test_samplerate_text():
    for hz, txt in ((125e6, "125 MHz"), (1e6, "1 MHz"), (500e3, "500 kHz"), (24e6, "24 MHz"), (1e9, "1 GHz"),
                    (1_500_000, "1500 kHz"), (7, "7 Hz")):
        assert format_samplerate(hz) == txt
        assert parse_samplerate(txt) == hz
    assert parse_samplerate("1.5 MHz") == 1.5e6


def test_sr_layout(tmp_path):
    t = Trace(125e6, 100, {"POS": Channel(0, [10, 20]), "NEG": Channel(1, [5])})
    p = tmp_path / "x.sr"
    write_sr(t, p)
    with zipfile.ZipFile(p) as z:
        assert z.read("version") == b"2"
        meta = z.read("metadata").decode()
        assert "samplerate=125 MHz" in meta and "probe1=POS" in meta and "probe2=NEG" in meta
        assert "unitsize=1" in meta
        raw = np.frombuffer(z.read("logic-1-1"), np.uint8)
    assert len(raw) == 100 and raw[0] == 2 and raw[5] == 0 and raw[10] == 1 and raw[20] == 0


def test_sr_wide_unitsize(tmp_path):
    chans = {f"D{i}": Channel(i & 1, [i + 1, 50 + i]) for i in range(12)}
    t = Trace(1e6, 80, chans)
    write_sr(t, tmp_path / "w.sr")
    assert "unitsize=2" in zipfile.ZipFile(tmp_path / "w.sr").read("metadata").decode()
    assert_same(t, read_sr(tmp_path / "w.sr"))


def test_read_capture_dispatch(tmp_path):
    t = Trace(1e6, 50, {"POS": Channel(0, [3, 7])})
    write_capture(t, tmp_path / "a.vcd")
    write_capture(t, tmp_path / "a.sr")
    assert_same(t, read_capture(tmp_path / "a.vcd"))
    assert_same(t, read_capture(tmp_path / "a.sr"))


def test_plot_writes_png(tmp_path):
    from test_analyzer import EXP, make_train

    t = make_train(rec=12_500, trig_at=900)
    r = analyze(t, expected=dict(EXP, recovery_us=100))
    out = plot(t, r, tmp_path / "p.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # explicit window in µs, a failing report (overlap) and the anodic view
    t2 = make_train(polarity="anodic-first")
    r2 = analyze(t2)
    out2 = plot(t2, r2, tmp_path / "q.png", window=(0, 3000))
    assert out2.read_bytes()[:4] == b"\x89PNG"


def test_pyvcd_reads_our_files_standard_layout(tmp_path):
    """Our VCD is standard enough for an independent reader (pyvcd's tokenizer)."""
    from vcd.reader import TokenKind, tokenize

    t = Trace(1e6, 30, {"POS": Channel(0, [3, 7]), "NEG": Channel(1, [9])})
    write_vcd(t, tmp_path / "x.vcd")
    with open(tmp_path / "x.vcd", "rb") as f:
        kinds = [tok.kind for tok in tokenize(f)]
    assert kinds.count(TokenKind.CHANGE_SCALAR) == 2 + 3


@pytest.mark.slow
def test_sr_100M_samples_bounded_memory(tmp_path):
    """100 M samples (0.8 s at 125 MHz, 1 kHz train): written and read chunk by chunk.
    Measured here: write ~0.3 s, read ~0.35 s (~3e8 samples/s each)."""
    from test_analyzer import make_train

    t = make_train(first=1000, n_pulses=799, period=125_000)
    t.n_samples = 100_000_000
    write_sr(t, tmp_path / "big.sr")
    back = read_sr(tmp_path / "big.sr")
    assert_same(t, back)
    assert analyze(back, expected=dict(phase1_us=200, interphase_us=8, phase2_us=200, period_us=1000,
                                       pulses=799)).ok


def test_plot_current_in_microamps_from_the_captures_dac_bus(tmp_path):
    """With the DAC bus in the capture the plot's current is what the decoded MCP4822 outputs carried
    (a soft start: each pulse its own amplitude), not a unit level; without it, the unit view."""
    from picostim import paramfile
    import importlib

    from picostim.client import Client
    from picostim.runner import run_virtual
    from picostim.transport import open_port
    from picostim.virtual.device import VirtualPico
    from protocol import params as P

    plot_mod = importlib.import_module("picostim.capture.plot")  # the module (the package exports plot())
    params = P.complete(paramfile.load("presets/sacral_pudendal_low.toml").params)
    with VirtualPico(channels=1) as vp, Client(open_port(vp.path), timeout=2.0) as c:
        res = run_virtual(vp, c, params, 0.35)
    outs = plot_mod._dac_outputs(res.trace, 0)
    assert outs is not None
    p = res.report.pulses
    got = [int(x) / 1000 for x in outs[1].at(p.start[p.complete])]  # cathodic-first: phase 1 on B
    assert got == res.report.amplitude_ua[:len(got)] and got[0] < got[-1]  # the ramp, in µA
    out = plot(res.trace, res.report, tmp_path / "r.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    names = [n for n in res.trace.channels if n not in ("SCK", "MOSI", "CS0", "CS1", "CS2", "CS3", "LDAC")]
    bare = Trace(res.trace.samplerate_hz, res.trace.n_samples, {n: res.trace.channels[n] for n in names})
    assert plot_mod._dac_outputs(bare, 0) is None
