"""The main job: upload a parameter file, run the train, capture the pins, check the timing, plot.

On the virtual Pico the capture is the pin trace of the emulated PIO (one sample per PIO cycle); on a
real board it is a sigrok-cli capture from a logic analyzer wired to POS/NEG/RECOVERY/SYNC. Either way
the same analyzer checks the measured edges against the *requested* values of the parameter file
(tolerance: half a sample when one sample is one PIO tick, so a value realised to the nearest tick
passes and an edge one tick off fails). When the capture holds the DAC bus (SCK, MOSI, CS0..CS3, LDAC)
the analyzer also decodes it: the phase-1 amplitude of every pulse (``amplitude_ua`` in the JSON) and
the DAC checks (no change inside a pulse, charge balance after DAC rounding, well-formed SPI frames).
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picostim.capture import analyze, plot, write_capture
from picostim.capture import sigrok as sigrok_capture
from picostim.capture.analyzer import Report, channel_names
from picostim.capture.trace import CaptureError, Trace
from picostim.client import Client
from firmware import board, pulse_engine
from firmware.board import DEAD_TIME_NS
from protocol import params as P

# Analyzer wiring of `make hil` / `picostim run --analyzer` (docs/HARDWARE.md): logic channel -> line of
# the stimulation channel under test.
ANALYZER_ARM_S = 1.0  # sigrok-cli start-up before the board is started
DEFAULT_WIRING = {"D0": "POS", "D1": "NEG", "D2": "RECOVERY", "D3": "SYNC", "D4": "TRIG1"}


def wiring_for(channel: int, wiring: dict[str, str] | None = None) -> dict[str, str]:
    """The analyzer wiring with trace names of stimulation channel ``channel`` (POS_1, ...), so the
    analyzer finds the lines of the channel it checks."""
    names = channel_names(channel)
    return {src: names.get(line, line) for src, line in (wiring or DEFAULT_WIRING).items()}


def requested_us(params: dict[str, int]) -> dict[str, Any]:
    """Canonical parameters with times in µs (``phase1_ns`` -> ``phase1_us``), for reports."""
    return {(k[:-3] + "_us" if k.endswith("_ns") else k): (v / 1000 if k.endswith("_ns") else v)
            for k, v in params.items()}


def cycle_ns(params: dict[str, int]) -> int:
    """Length of one repetition of the pattern: a period, or a whole burst plus its interburst."""
    if params["burst_pulses"] > 0:
        return params["burst_pulses"] * params["period_ns"] + params["interburst_ns"]
    return params["period_ns"]


def default_duration_s(params: dict[str, int], sequence: Any = None) -> float:
    """A finite train: all of it plus one cycle to drain; an endless one: 1 s. A custom sequence
    (:class:`picostim.paramfile.Sequence`): until its last pulse has ended (played once, or a loop with
    a duration) plus 10 ms; an endless loop: 1 s or three cycles, whichever is longer."""
    if sequence is not None:
        end = sequence.end_ns(params)
        if end is None:
            return max(1.0, 3 * sequence.cycle_ns / 1e9)
        return end / 1e9 + 0.01
    dur = params["train_duration_ns"]
    if dur == 0:
        return 1.0
    cycle = cycle_ns(params)
    return (params["train_delay_ns"] + -(-dur // cycle) * cycle + cycle) / 1e9


def stop_cycles(params: dict[str, int]) -> int:
    """Upper bound, in cycles (:func:`cycle_ns`), on how long a running channel takes to end after a
    STOP: the pulse in progress and one queued pulse (2), a soft stop's K pulses (``ramp_down_pulses``:
    at most one cycle each; ``ramp_down_ns``: that time, rounded up to whole cycles) and the pulses
    still queued behind its DAC shutdown (2)."""
    k = params.get("ramp_down_pulses", 0)
    if params.get("ramp_down_ns", 0):
        # a time ramp spans ramp_down_ns from the stop's boundary: that many cycles, rounded up
        k = -(-params["ramp_down_ns"] // cycle_ns(params))
    return k + 4


def sequence_expectations(params: dict[str, int], sequence: Any, run_s: float | None = None) -> dict[str, Any]:
    """A custom sequence's per-pulse expectations for the analyzer: ``onsets_us`` (every pulse the run
    plays, in play order, from the start's origin: ns_to_ticks of each ABSOLUTE onset plus c cycle ticks
    for cycle c, as the firmware plays it, in µs), ``amplitudes_ua`` (each pulse's phase-1 current after
    the DAC's rounding: the nearest 12-bit code, at least 1) and ``pulses`` when the window holds the
    whole sequence. An endless loop lists the cycles the window can hold."""
    cycles = sequence.cycles(params)
    if cycles == 0:  # until stopped: enough cycles for the window
        span = run_s if run_s is not None else default_duration_s(params, sequence)
        cycles = int(span * 1e9 // sequence.cycle_ns) + 2
    ticks = sequence.play_ticks(cycles)
    tick_us = 1e6 / board.SYS_CLK_HZ
    amps = [pulse_engine.code_to_na(pulse_engine.dac_code(a)) / 1000 for a in sequence.amplitudes_ua]
    exp: dict[str, Any] = {"onsets_us": [t * tick_us for t in ticks],
                           "amplitudes_ua": amps * (len(ticks) // len(amps))}
    end = sequence.end_ns(params)
    if end is not None and (run_s is None or run_s * 1e9 >= end):
        exp["pulses"] = len(ticks)
    return exp


def expected_from_params(params: dict[str, int], run_s: float | None = None, sequence: Any = None) -> dict[str, Any]:
    """What the capture must show, in µs, from the canonical *requested* parameters (and a custom
    sequence's onsets and amplitudes: :func:`sequence_expectations`; no period, bursts or count from
    the parameters then)."""
    if sequence is not None:
        exp = expected_from_params({**params, "sequence_pulses": 0, "train_duration_ns": 0}, run_s)
        exp.pop("period_us", None)
        exp.update(sequence_expectations(params, sequence, run_s))
        return exp
    us = 1e-3
    exp: dict[str, Any] = {
        "phase1_us": params["phase1_ns"] * us,
        # the engine realises an interphase below the board dead time as the dead time
        "interphase_us": P.interphase_realised_ns(params, DEAD_TIME_NS) * us,
        "phase2_us": params["phase2_ns"] * us,
        "recovery_us": params["recovery_ns"] * us,
        "period_us": params["period_ns"] * us,
        "polarity": P.POLARITY_NAMES[params["polarity"]],
    }
    if params.get("shape"):  # triphasic: flank, main, flank (analyzer: each flank phase2_us / 2)
        exp["shape"] = P.SHAPE_NAMES[params["shape"]]
    if params["recovery_ns"]:
        exp["recovery_gap_us"] = P.recovery_gap_ns(params, DEAD_TIME_NS) * us
    n_burst = params["burst_pulses"]
    cycle = cycle_ns(params)
    if n_burst > 0:
        exp["burst_pulses"] = n_burst
        if run_s is None or run_s * 1e9 >= params["train_delay_ns"] + 2 * cycle:
            exp["burst_period_us"] = cycle * us  # measurable: at least two bursts start
    dur = params["train_duration_ns"]
    cycles = -(-dur // cycle)  # a train plays whole cycles: ceil(duration / cycle)
    if dur > 0 and (run_s is None or run_s * 1e9 >= params["train_delay_ns"] + cycles * cycle):
        exp["pulses"] = cycles * max(1, n_burst)
    return exp


@dataclass
class RunResult:
    params: dict[str, int]
    realised: dict[str, int]
    trace: Trace
    report: Report
    events: list[dict] = field(default_factory=list)
    capture_path: Path | None = None
    plot_path: Path | None = None
    # electrode faults reported by the device (EVENTs open/short): channel, kind, time_s, ohms
    faults: list[dict] = field(default_factory=list)
    # pulses of the run's channel whose phase 1 starts after the first fault event's time, from the
    # capture (SPEC §5 promises at most 1); None when there is no fault or the capture and the device
    # clock cannot be aligned (board runs)
    pulses_after_fault: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The analyzer's report (``amplitude_ua``: every complete pulse's phase-1 amplitude in µA from
        the capture's DAC bus, in capture order; null when the capture has no DAC lines, ``dac.note``
        says why) plus the run's context."""
        out = self.report.to_json()
        out["amplitude_ua"] = self.report.amplitude_ua
        out["requested"] = requested_us(self.params)
        out["realised_ticks"] = self.realised
        out["events"] = self.events
        out["faults"] = self.faults
        out["pulses_after_fault"] = self.pulses_after_fault
        out["capture"] = str(self.capture_path) if self.capture_path else None
        out["plot"] = str(self.plot_path) if self.plot_path else None
        return out


def check_trace(trace: Trace, params: dict[str, int], channel: int, run_s: float | None,
                gate_openings: int = 1, sequence: Any = None) -> Report:
    """Analyze ``trace`` against the requested ``params``. When the window (``run_s``) cannot hold
    the whole train, the pulse count is not checked and the last burst may end early: a stop ends
    the stream at a pulse boundary, not a burst boundary. A gated train that the gate opened more than
    once restarts at each opening: the spacing across a closed gate is not a period, so the period is
    only checked for a single opening."""
    expected = expected_from_params(params, run_s, sequence)
    if gate_openings > 1:
        expected.pop("period_us", None)
        expected.pop("burst_period_us", None)
    return analyze(trace, channel=channel, expected=expected, allow_partial_last_burst="pulses" not in expected)


FAULT_KINDS = ("open", "short", "deadman")  # EVENTs of a train stopped by a safety check (exit 4)


def faults_from_events(events: list[dict]) -> list[dict]:
    """The safety-stop EVENTs as report entries (electrode open/short: ``ohms`` 2147483647 = at the
    compliance rail; deadman: the link silence in ms)."""
    return [{"channel": ev["channel"], "kind": ev["kind"], "time_s": ev["time_us"] / 1e6, "ohms": ev["value"]}
            for ev in events if ev["kind"] in FAULT_KINDS]


def pulses_after(report: Report, cycle: int) -> int:
    """Pulses in the capture whose phase 1 starts after sample ``cycle``."""
    return int((report.pulses.start > cycle).sum())


def _finish(params, realised, trace, events, capture, plot_png, channel, run_s, fault_sample=None,
            gate_openings=1, sequence=None) -> RunResult:
    if fault_sample is not None:
        # the fault ended the train: only the part before it is held to the train's length
        run_s = min(run_s if run_s is not None else math.inf, fault_sample / trace.samplerate_hz)
    report = check_trace(trace, params, channel, run_s, gate_openings, sequence)
    capture_path = plot_path = None
    if capture:
        capture_path = Path(capture)
        write_capture(trace, capture_path)
    if plot_png:
        plot_path = Path(plot_png)
        plot(trace, report, plot_path)
    faults = faults_from_events(events)
    after = pulses_after(report, fault_sample) if fault_sample is not None else None
    return RunResult(params, realised, trace, report, events, capture_path, plot_path, faults, after)


def trigger_input(params: dict[str, int]) -> int | None:
    """The trigger input (1 = TRIG1, 2 = TRIG2) a train waits on, None for a software start."""
    name = P.TRIGGER_NAMES[params["trigger"]] if params["trigger"] < len(P.TRIGGER_NAMES) else "software"
    return None if name == "software" else int(name[-1])


def run_virtual(vp, client: Client, params: dict[str, int], duration_s: float, *, channel: int = 0,
                capture: str | Path | None = None, plot_png: str | Path | None = None,
                triggers: dict[int, list[float]] | None = None, sequence: Any = None) -> RunResult:
    """Run on a :class:`~picostim.virtual.device.VirtualPico` in stepped (virtual) time: start, emulate
    ``duration_s`` seconds, stop (the running pulse completes), drain, capture the emulated pins.
    ``triggers``: input (1, 2) -> edge times in s from the start (first rising, then alternating),
    driven on TRIG1/TRIG2 like a function generator. ``sequence``: the custom sequence of a file with
    ``[sequence]`` (:class:`picostim.paramfile.Sequence`), uploaded after the parameters; the capture's
    onsets and amplitudes are checked against it pulse by pulse."""
    mask = 1 << channel
    resp = client.set_params(channel, params)
    if sequence is not None:
        client.set_sequence(channel, sequence.onsets_ns, sequence.amplitudes_ua, params)
    armed = vp.hal.system.now  # the capture starts here, as a logic analyzer armed before START:
    client.start(mask)  # it holds the DAC writes the HAL makes before it enables the state machines
    start = vp.hal.system.now  # the run's start (a gate re-arms the train: its own start moves on)
    for n, times in sorted((triggers or {}).items()):
        for i, t in enumerate(times):
            vp.hal.drive_trigger(n, 0 if i % 2 else 1, at_s=start / vp.hal.clock_hz + t)
    vp.advance(duration_s)
    if vp.hal.running(channel):
        client.stop(mask)
        # let the channel really end, so the capture holds the whole stop: the pulse in progress, at
        # most one queued pulse and, with a soft stop (ramp_down_*), its K pulses after the stop's next
        # boundary plus the pulses the DAC shutdown leaves at 0 current
        step = cycle_ns(params) * 1e-9 + 1e-3
        for _ in range(stop_cycles(params)):
            vp.advance(step)
            if not vp.hal.running(channel):
                break
    events = client.events(timeout=0.05)
    trace = vp.hal.trace([channel], start=armed)
    check_s: float | None = duration_s
    n_in = trigger_input(params)
    if n_in is not None:  # the train starts at the first edge; a gate stops and restarts it
        edges = (triggers or {}).get(n_in) or [math.inf]
        check_s = max(0.0, duration_s - edges[0]) if P.TRIGGER_NAMES[params["trigger"]].startswith("ext") else 0.0
    fault_sample = None
    for f in faults_from_events(events):
        if f["channel"] == channel:  # device µs -> capture samples (the trace starts when armed)
            fault_sample = round(f["time_s"] * vp.hal.clock_hz) - armed
            break
    openings = (len((triggers or {}).get(n_in, ())) + 1) // 2 if n_in is not None else 1
    result = _finish(params, resp["realised"], trace, events, capture, plot_png, channel, check_s, fault_sample,
                     gate_openings=openings, sequence=sequence)
    say_waiting(result.report, params, duration_s)
    return result


def run_board(client: Client, params: dict[str, int], duration_s: float, *, driver: str,
              samplerate: float, channel: int = 0, wiring: dict[str, str] | None = None,
              capture: str | Path, plot_png: str | Path | None = None, sequence: Any = None) -> RunResult:
    """Run on a real board while sigrok-cli captures the pins. The capture is armed first and
    triggers on the first phase-1 edge (sigrok `--triggers ... --wait-trigger`), so its window starts
    with the train however long sigrok-cli takes to start. ``sequence``: as in :func:`run_virtual`."""
    mask = 1 << channel
    resp = client.set_params(channel, params)
    if sequence is not None:
        client.set_sequence(channel, sequence.onsets_ns, sequence.amplitudes_ua, params)
    names = channel_names(channel)
    first = names["NEG"] if params["polarity"] == P.POLARITY_CATHODIC_FIRST else names["POS"]
    out: dict[str, Any] = {}

    def grab() -> None:
        try:
            out["trace"] = sigrok_capture.capture(driver, samplerate, capture, duration_s=duration_s,
                                                  channels=wiring_for(channel, wiring), trigger={first: "r"},
                                                  wait_trigger=True, timeout_s=duration_s + 30)
        except Exception as exc:  # reported below, after the board is stopped
            out["error"] = exc

    thread = threading.Thread(target=grab)
    thread.start()
    try:
        time.sleep(ANALYZER_ARM_S)  # let sigrok-cli open the analyzer before the first edge
        client.start(mask)
        thread.join(duration_s + 30)
    finally:
        client.stop(mask)
    if "error" in out:
        raise out["error"]
    events = client.events(timeout=0.2)
    result = _finish(params, resp["realised"], out["trace"], events, None, plot_png, channel, duration_s,
                     sequence=sequence)
    result.capture_path = Path(capture)
    say_waiting(result.report, params, duration_s)
    return result


def say_waiting(report: Report, params: dict[str, int], duration_s: float) -> None:
    """A triggered train that never started: say it waited for its input, not "no complete pulse"."""
    n_in = trigger_input(params)
    if n_in is None or report.n_pulses:
        return
    report.failures[:] = ["waiting for TRIG%d: the train (trigger = \"%s\") was armed and no TRIG%d edge came "
                          "in the %g s run" % (n_in, P.TRIGGER_NAMES[params["trigger"]], n_in, duration_s)
                          if f == "no complete pulse found" else f for f in report.failures]


def _names(names, n=12) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (", ... (%d in all)" % len(names) if len(names) > n else "")


def map_channels(trace: Trace, channel: int = 0, mapping: dict[str, str] | None = None) -> tuple[Trace, dict[str, str]]:
    """The capture's lines under the names the analyzer looks for (POS/NEG/... of ``channel``).

    ``mapping``: line -> capture channel (``{"POS": "D0", "NEG": "D1"}``, from ``--map``). Without it a
    capture that names the lines itself is used as it is, and a foreign one (sigrok's D0..D7) is read
    with the analyzer wiring of docs/HARDWARE.md (:data:`DEFAULT_WIRING`). Returns the trace and the
    mapping used ({} = the capture's own names). :class:`CaptureError` names the channels found."""
    names = channel_names(channel)
    found = list(trace.channels)
    if mapping is None:
        if names["POS"] in trace.channels and names["NEG"] in trace.channels:
            return trace, {}
        own = [n for n in found if re.fullmatch(r"(POS|NEG)(_\d+)?", n)]
        if own:
            raise CaptureError("-c = %d: the capture has no %s/%s (channels found: %s)"
                               % (channel, names["POS"], names["NEG"], _names(found)))
        mapping = {line: src for src, line in DEFAULT_WIRING.items()}
        if not all(mapping[k] in trace.channels for k in ("POS", "NEG")):
            raise CaptureError("the capture has no POS/NEG lines and no %s/%s of the default wiring (channels "
                               "found: %s): name them with --map POS=<ch>,NEG=<ch>[,RECOVERY=..,SYNC=..]"
                               % (mapping["POS"], mapping["NEG"], _names(found)))
        mapping = {k: v for k, v in mapping.items() if v in trace.channels}
    else:
        for k in ("POS", "NEG"):
            if k not in mapping:
                raise CaptureError("--map = %s: needs POS and NEG" % ",".join("%s=%s" % kv for kv in mapping.items()))
        for line, src in mapping.items():
            if src not in trace.channels:
                raise CaptureError("--map = %s=%s: the capture has no channel %s (channels found: %s)"
                                   % (line, src, src, _names(found)))
    lines = {names.get(line, line): trace.channels[src] for line, src in mapping.items()}
    return Trace(trace.samplerate_hz, trace.n_samples, lines), mapping


def load_capture(path: str | Path, channel: int = 0,
                 mapping: dict[str, str] | None = None) -> tuple[Trace, dict[str, str]]:
    """Read a capture file and name its lines for ``channel`` (:func:`map_channels`)."""
    return map_channels(sigrok_capture.read_capture(path), channel, mapping)


def check_capture(path: str | Path, params: dict[str, int], *, channel: int = 0,
                  plot_png: str | Path | None = None, mapping: dict[str, str] | None = None,
                  sequence: Any = None) -> Report:
    """Check any capture file against a parameter set (``mapping``: see :func:`map_channels`)."""
    trace, _ = load_capture(path, channel, mapping)
    report = check_trace(trace, params, channel, trace.duration_s(), sequence=sequence)
    if plot_png:
        plot(trace, report, plot_png)
    return report
