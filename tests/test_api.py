"""The Python API (host/picostim/api.py, issue 14): the README example as it stands in README.md,
every public method against the virtual Pico, errors with their type and fields, the examples, and
mypy --strict on the public module."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import picostim
from picostim import paramfile
from picostim.virtual.electrode import electrodes_from_specs

ROOT = Path(__file__).resolve().parent.parent
FAST = {"frequency_hz": 1000, "phase1_us": 100, "amplitude_ma": 1.0, "electrode_area_mm2": 5}


def readme_example() -> str:
    """The first python block of README.md's "Python API" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README.md: no python block in the Python API section"
    return m.group(1)


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert "picostim.open(" in code and "stim.run(" in code  # the block we mean, not another one
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md[Python API]", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\d+\.\d+\.\d+", out[0]), out
    pulses, ohms = out[-1].split()
    assert int(pulses) >= 0 and 100 <= int(ohms) < 100_000, out
    vcd = (tmp_path / "out" / "x.vcd").read_text()
    assert "$enddefinitions" in vcd and "POS" in vcd


@pytest.fixture(scope="module")
def stim():
    with picostim.open(virtual=True) as s:
        yield s


def test_info_and_repr(stim):
    info = stim.info()
    assert info.kind == "cpython" and info.port == stim.port and info.channels == stim.channels == 4
    assert info.limits["max_amplitude_ua"] == 10_000 and info.reset_reason == "power-on"
    assert json.loads(json.dumps(info.to_json()))["firmware_version"] == info.firmware_version
    assert "4 channels" in repr(stim)
    with pytest.raises(Exception):
        info.channels = 3  # frozen


def test_upload_path_dict_paramset(stim):
    r = stim.upload(ROOT / "presets" / "ptns.toml", channel=0)
    assert (r.channel, r.phase1_us, r.frequency_hz, r.amplitude_ma, r.name) == (0, 200.0, 20.0, 2.0, "ptns")
    r = stim.upload(dict(FAST, phase1_us=100.003), channel=1)  # realised to the 8 ns tick
    assert r.phase1_us == 100.0 and r.requested["phase1_us"] == pytest.approx(100.003)
    ps = paramfile.loads('phase1_us = 50\nperiod_us = 500\namplitude_ua = 300\nelectrode_area_mm2 = 5\n')
    r = stim.upload(ps, channel=2)
    assert (r.phase1_us, r.period_us, r.amplitude_ma) == (50.0, 500.0, 0.3)
    assert stim.params(2).period_us == 500.0 and stim.params(3) is None
    json.dumps(r.to_json())


def test_start_status_stop_events(stim):
    stim.upload(dict(FAST, train_duration_ms=5), channel=1)
    stim.upload(FAST, channel=2)
    stim.events()  # drop what earlier tests left
    stim.start(1, 2)
    done = stim.wait_event("train_done", channel=1, timeout=3)
    assert isinstance(done, picostim.TrainDone) and done.value == 5 and done.channel == 1
    st = stim.status()
    assert st.channels[2].state == "running" and st.channels[2].pulses > 0 and st.uptime_s > 0
    assert st.channels[1].state == "idle" and st.channels[1].pulses == 5
    json.dumps(st.to_json())
    stim.stop()  # default: all channels
    assert stim.wait_idle(timeout=3)
    assert all(c.state == "idle" for c in stim.status().channels)
    stopped = stim.events(timeout=0.2)  # a stopped train reports train_done with the pulses it played
    assert [(e.kind, e.channel) for e in stopped] == [("train_done", 2)] and stopped[0].value > 0
    stim.trigger(1)  # a software trigger starts the train now
    assert stim.wait_event("train_done", channel=1, timeout=3) is not None
    assert stim.wait_event("crash", timeout=0.05) is None


def test_impedance_save_load(stim):
    z = stim.impedance(0)
    assert isinstance(z, picostim.Impedance) and z.classification == "ok" and 900 <= z.ohms <= 1100
    stim.upload(dict(FAST, amplitude_ma=0.7), channel=3)
    crc = stim.save(3, 1)
    assert 0 <= crc < 0x10000
    assert stim.load(1, channel=0).amplitude_ma == 0.7


def test_deadman_event(stim):
    stim.upload(FAST, channel=0)
    stim.events()
    stim.set_deadman(0.05)
    try:
        stim.start(0)
        ev = stim.wait_event("fault", timeout=3)  # waiting reads the link but sends nothing
    finally:
        stim.set_deadman(0)
    assert isinstance(ev, picostim.Fault) and ev.reason == "deadman" and ev.channel == 0 and ev.ohms is None
    assert stim.wait_idle(0, timeout=3)


def test_run_report(stim, tmp_path):
    stim.upload(FAST, channel=0)
    stim.start(0)  # run() takes the channel over: the running train is stopped first
    rep = stim.run(ROOT / "presets" / "scs_burst.toml", duration=0.05, capture=tmp_path / "new" / "c.vcd",
                   plot=tmp_path / "c.png")
    assert rep.ok and rep.failures == () and rep.pulses == 11 and not rep.stopped_by_fault
    assert rep.capture == tmp_path / "new" / "c.vcd" and rep.capture.exists() and rep.plot.exists()
    assert rep.realised.phase1_us == 500.0 and rep.trace.samplerate_hz == 125e6
    assert rep.measured["ok"] is True and "phase1" in rep.summary
    out = json.loads(json.dumps(rep.to_json()))
    assert "trace" not in out and out["capture"] == str(tmp_path / "new" / "c.vcd")
    # after a run the board is in real time again: a started train counts pulses by itself
    stim.upload(FAST, channel=0)
    stim.start(0)
    assert stim.wait_event("fault", timeout=0.2) is None
    assert stim.status().channels[0].pulses > 10
    stim.stop()
    stim.wait_idle()


# ---- errors ---------------------------------------------------------------------------------------


def test_refused_by_host_limits(stim):
    with pytest.raises(picostim.DeviceRefused) as e:
        stim.upload(dict(FAST, amplitude_ma=50), channel=0)
    assert (e.value.field, e.value.value, e.value.limit, e.value.relation, e.value.nack) == (
        "amplitude_ua", 50_000, 10_000, "<=", None)
    assert "amplitude" in str(e.value) and "10000 µA" in str(e.value)


def test_refused_by_device_while_running(stim):
    stim.upload(FAST, channel=0)
    stim.start(0)
    try:
        with pytest.raises(picostim.DeviceRefused) as e:
            stim.upload(dict(FAST, amplitude_ma=1.5), channel=0)  # live amplitude changes are refused
    finally:
        stim.stop(0)
        stim.wait_idle(0)
    assert e.value.nack is not None and e.value.field == "amplitude_ua" and e.value.value == 1500
    assert "stop it first" in str(e.value)


def test_bad_channel_and_bad_input(stim):
    with pytest.raises(picostim.DeviceRefused) as e:
        stim.start(7)
    assert (e.value.field, e.value.value, e.value.limit) == ("channel", 7, 3)
    with pytest.raises(TypeError):
        stim.impedance(True)
    with pytest.raises(picostim.ParamFileError) as pe:
        stim.upload({"frequency_hz": 20, "phase1_us": 200, "electrode_area_mm2": 5})  # no amplitude
    assert "amplitude" in str(pe.value)
    with pytest.raises(picostim.ParamFileError):
        stim.upload(dict(FAST, phase1_parsecs=3))


def test_safety_fault_and_timing_mismatch():
    faults = electrodes_from_specs(4, [], ["open@0.05s,ch=0"])
    # stepped time: the fault comes 50 ms into the run however long opening the board took
    with picostim.open(virtual=True, electrodes=faults, realtime=False) as s:
        time.sleep(0.2)  # wall time passes: a real-time board would be past the fault before the run
        with pytest.raises(picostim.SafetyFault) as e:
            s.run(FAST, duration=0.2, check=True)
        f = e.value
        assert (f.channel, f.kind, f.ohms) == (0, "open", 2147483647) and 0.05 <= f.time_s < 0.06
        assert f.report.stopped_by_fault and not f.report.ok and f.report.pulses_after_fault <= 1
        with pytest.raises(picostim.SafetyFault) as latched:  # the open electrode's fault is latched
            s.start(0)
        assert (latched.value.kind, latched.value.channel) == ("latched", 0)
        s.clear_fault(0)
        assert s.status().channels[0].fault == "none"
        # an external trigger that comes after the window: nothing to measure -> TimingMismatch
        with pytest.raises(picostim.TimingMismatch) as tm:
            s.run(dict(FAST, trigger="ext1"), duration=0.05, channel=1, triggers={1: [0.2]}, check=True)
        assert "waiting for TRIG1" in tm.value.report.failures[0] and not tm.value.report.ok
        rep = s.run(dict(FAST, trigger="ext1"), duration=0.05, channel=2, triggers={1: [0.01]})
        # 40 ms of a 1 kHz train from the edge; the stop lets the pulse in progress and one queued play
        assert rep.ok and 40 <= rep.pulses <= 42, rep.summary
        with pytest.raises(ValueError):
            s.run(dict(FAST, trigger="ext1"), duration=0.05, channel=2)  # nothing drives TRIG1


def test_link_errors():
    with pytest.raises(picostim.LinkError) as e:
        picostim.open("/nonexistent/tty-picostim")
    assert isinstance(e.value, OSError) and "/nonexistent/tty-picostim" in str(e.value)
    s = picostim.open(virtual=True, timeout=0.1, retries=0)
    s.virtual.close()  # the board goes away under the link
    try:
        with pytest.raises(picostim.LinkError):
            s.status()
    finally:
        s.close()
    with pytest.raises(ValueError):
        picostim.open(virtual="arduino")


def test_no_board_found(monkeypatch, capsys):
    from picostim import cli, transport

    monkeypatch.setattr(transport, "list_ports", lambda: [])
    with pytest.raises(picostim.LinkError) as e:
        picostim.open()  # USB discovery
    assert "no picostim board found" in str(e.value) and "open(virtual=True)" in str(e.value)
    # the CLI opens boards through the API and keeps its own advice and exit code
    monkeypatch.delenv("PICOSTIM_PORT", raising=False)
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("picostim: error: no picostim board found") and "--port" in err and "\n" not in err


# ---- live amplitude (issue 13 item 3) ----------------------------------------------------------------


@pytest.mark.parametrize("given,ua", [("2.5mA", 2500), ("2500uA", 2500), ("2500 µA", 2500), (" 2.5 MA ", 2500),
                                      (2.5, 2500), (2, 2000), ("0.0014mA", 1), ("0.0015mA", 2), ("1e1uA", 10),
                                      (".5", 500), ("3", 3000)])
def test_parse_amplitude(given, ua):
    assert picostim.api.parse_amplitude_ua(given) == ua


@pytest.mark.parametrize("given", ["abc", "2.5A", "2.5 mV", "-1mA", "", "nan", "inf mA", -0.5, float("nan"),
                                   float("inf"), True, None, [2.5]])
def test_parse_amplitude_refuses(given):
    with pytest.raises(ValueError) as e:
        picostim.api.parse_amplitude_ua(given)
    assert str(e.value).startswith("amplitude = ") and "\n" not in str(e.value)


def test_set_amplitude_at_the_pulse_boundary_in_the_capture():
    """A live change while the train runs: the result gives the realised amplitudes and DAC codes, the
    AmplitudeChanged event the first pulse that has it, and the capture's DAC bus (decoded by the
    analyzer) shows every pulse before it at the old amplitude and every pulse from it on at the new one."""
    from picostim import runner

    with picostim.open(virtual=True, realtime=False) as s:
        s.upload(dict(FAST, amplitude_ma=1.0), channel=0)
        s.start(0)
        s.virtual.advance(0.0105)
        a = s.set_amplitude(0, "2.5mA")
        assert isinstance(a, picostim.Amplitude)
        assert (a.channel, a.requested_ua, a.amplitude_ua, a.phase2_amplitude_ua, a.amplitude_ma) == (
            0, 2500, 2500, 2500, 2.5)
        assert (a.dac_a, a.dac_b) == (1000, 1000)  # 2.5 µA per code, symmetric phases
        with pytest.raises(picostim.DeviceRefused) as busy:  # stepped time: the first change is still queued
            s.set_amplitude(0, "3mA")
        assert busy.value.nack is not None and busy.value.code == picostim.api._M.E_DAC_BUSY
        assert "still playing" in str(busy.value)
        assert json.loads(json.dumps(a.to_json())) == {"channel": 0, "requested_ua": 2500, "amplitude_ua": 2500,
                                                       "phase2_amplitude_ua": 2500, "dac_a": 1000, "dac_b": 1000}
        s.virtual.advance(0.01)
        ev = s.wait_event("amplitude", channel=0, timeout=1)
        assert isinstance(ev, picostim.AmplitudeChanged) and ev.amplitude_ua == 2500 and ev.kind == "amplitude"
        assert 10 <= ev.from_pulse <= 13  # 1 kHz: ~10.5 pulses before the request, applied at the next boundary
        assert ev.to_json()["from_pulse"] == ev.from_pulse
        assert s.params(0).amplitude_ma == 2.5  # the channel's parameters carry the new amplitude
        s.stop(0)
        s.virtual.advance(0.005)
        trace = s.virtual.hal.trace([0])
        rep = runner.check_trace(trace, s.client.get_params(0)["params"], 0, trace.duration_s())
    amps = rep.amplitude_ua
    assert rep.ok and len(amps) >= ev.from_pulse + 5, rep.summary()
    # before from_pulse: the old amplitude (or unknown, when the start's writes precede the capture);
    # from it on: the new one. A write one boundary early or late fails one of these.
    assert amps[ev.from_pulse - 1] in (1000.0, None)
    assert set(amps[:ev.from_pulse]) <= {1000.0, None}
    assert amps[ev.from_pulse:] == [2500.0] * (len(amps) - ev.from_pulse)
    assert rep.dac["changes_in_pulse"] == 0 and rep.dac["unbalanced"] == 0


def test_set_amplitude_refusals(stim):
    stim.stop()
    stim.wait_idle()
    stim.upload(FAST, channel=0)
    with pytest.raises(picostim.DeviceRefused) as e:  # the device: the channel is not running
        stim.set_amplitude(0, "2mA")
    assert e.value.nack is not None and (e.value.field, e.value.value) == ("channel", 0)
    assert "running" in str(e.value) and "idle" in str(e.value)
    stim.start(0)
    try:
        nacks = stim.client.nacks
        with pytest.raises(picostim.DeviceRefused) as e:  # the host: beyond the amplitude limit, nothing sent
            stim.set_amplitude(0, 12.0)
        assert (e.value.field, e.value.value, e.value.limit, e.value.relation, e.value.nack) == (
            "amplitude_ua", 12000, 10000, "<=", None)
        small = dict(FAST, electrode_area_mm2=0.01)  # Shannon: 2 mA x 100 µs on 0.01 mm² is over k = 1.85
        stim.stop(0)
        stim.wait_idle(0)
        stim.upload(dict(small, amplitude_ma=0.1), channel=0)
        stim.start(0)
        with pytest.raises(picostim.DeviceRefused) as e:
            stim.set_amplitude(0, "2mA")
        assert e.value.field == "shannon_k_centi" and e.value.limit == 185 and "Shannon" in str(e.value)
        assert stim.client.nacks == nacks  # refused on the host: the device never saw these
        with pytest.raises(ValueError):
            stim.set_amplitude(0, "2 A")
        with pytest.raises(picostim.DeviceRefused) as e:
            stim.set_amplitude(7, "1mA")
        assert (e.value.field, e.value.value) == ("channel", 7)
        assert stim.set_amplitude(0, "0.2mA").amplitude_ua == 200  # within the limits: accepted
        assert stim.wait_event("amplitude", channel=0, timeout=2) is not None
    finally:
        stim.stop(0)
        stim.wait_idle(0)


def test_set_amplitude_needs_the_dac_update_idle(stim):
    """A train whose idle after the pulse is shorter than the DAC update (min_update_idle_ns) runs, but
    its amplitude cannot change at a pulse boundary: refused on the host with the period limit."""
    tight = {"period_us": 100, "phase1_us": 20, "interphase_us": 55, "phase2_us": 20, "amplitude_ma": 1,
             "electrode_area_mm2": 5}
    stim.upload(tight, channel=1)
    stim.start(1)
    try:
        with pytest.raises(picostim.DeviceRefused) as e:
            stim.set_amplitude(1, "1.5mA")
        assert e.value.field == "period_ns" and e.value.relation == ">=" and e.value.nack is None
        assert e.value.limit >= 95_000 + stim.info().limits["min_update_idle_ns"]
        assert "DAC update" in str(e.value)
    finally:
        stim.stop(1)
        stim.wait_idle(1)


# ---- examples and types -----------------------------------------------------------------------------


def test_titration_example(capsys):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import titration
    finally:
        sys.path.pop(0)
    assert titration.main(["--dwell", "0.05"]) == 0
    out = capsys.readouterr().out
    # one upload and start, then live steps while the train runs, each from a pulse the device names
    assert "0.50 mA requested, 0.500 mA realised, started" in out
    assert re.search(r"1\.00 mA requested, 1\.000 mA realised \(phase 2 1\.000 mA\), from pulse \d+", out), out
    assert re.search(r"2\.00 mA requested, 2\.000 mA realised \(phase 2 2\.000 mA\), from pulse \d+", out), out
    assert "threshold: 2.00 mA" in out and "pending" not in out
    steps = [int(n) for n in re.findall(r"from pulse (\d+)", out)]
    assert len(steps) == 3 and steps == sorted(steps) and steps[0] >= 1  # one train, pulses counted on


def test_plot_capture_example(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "plot_capture.py"), str(tmp_path / "p.png")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.png").stat().st_size > 10_000 and (tmp_path / "out" / "scs_burst.vcd").exists()
    assert "OK: 11 pulses" in proc.stdout


def test_mypy_strict_public_module():
    pytest.importorskip("mypy")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "host/picostim/api.py", "host/picostim/__init__.py"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_public_name_documented():
    for name in picostim.__all__:
        obj = getattr(picostim, name)
        assert (obj.__doc__ or "").strip(), name
    for name, member in vars(picostim.Stimulator).items():
        if not name.startswith("_") and callable(getattr(member, "fget", member)):
            assert (getattr(member, "__doc__", "") or "").strip(), name


def test_cli_goes_through_the_api(monkeypatch, capsys, tmp_path):
    """picostim's device commands open the board with picostim.open and run through Stimulator.run."""
    from picostim import api, cli

    opened, ran = [], []
    real_open, real_run = api.open, api.Stimulator.run

    def spy_open(*a, **k):
        opened.append(k.get("virtual"))
        return real_open(*a, **k)

    def spy_run(self, *a, **k):
        ran.append(a[0])
        return real_run(self, *a, **k)

    monkeypatch.setattr(api, "open", spy_open)
    monkeypatch.setattr(api.Stimulator, "run", spy_run)
    preset = str(ROOT / "presets" / "scs_burst.toml")
    assert cli.main(["--virtual", "upload", preset]) == 0
    assert cli.main(["--virtual", "run", preset, "--duration", "0.05", "--capture", str(tmp_path / "c.vcd")]) == 0
    assert opened == ["cpython", "cpython"] and len(ran) == 1
    assert "OK: 11 pulses" in capsys.readouterr().out
