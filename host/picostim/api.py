"""picostim's Python API: one object per board, for lab scripts and notebooks.

::

    import picostim

    with picostim.open(virtual=True) as stim:          # or open("/dev/ttyACM0"), open() = USB discovery
        realised = stim.upload("presets/ptns.toml", channel=0)
        stim.start(0)
        print(stim.status().channels[0].pulses)
        report = stim.run("presets/ptns.toml", duration=0.5, capture="out/x.vcd")
        assert report.ok

Units in arguments and results are the ones a lab user reads: seconds for durations and timeouts,
µs / mA in the result fields (the unit is in the name: ``phase1_us``, ``amplitude_ma``), channels as
integers. Results are small frozen dataclasses with ``.to_json()`` (a dict of JSON types). Errors:
:class:`DeviceRefused` (field, value, limit), :class:`LinkError`, :class:`TimingMismatch`,
:class:`SafetyFault`; a malformed parameter file or dict raises :class:`ParamFileError`.

This module is a layer over the protocol client (:mod:`picostim.client`), the parameter files
(:mod:`picostim.paramfile`) and the runner (:mod:`picostim.runner`): every request goes through the
same ``Client`` the CLI uses; there is no second path to the device.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator, Literal, Mapping, Union

from picostim import client as _client_module
from picostim import paramfile as _paramfile_module
from picostim import transport as _transport_module
from protocol import messages as _messages_module
from protocol import params as _params_module

# The modules below are untyped; they are used through these Any-typed names, so this module's own
# signatures are what mypy --strict checks (tests/test_api.py).
_client: Any = _client_module
_pf: Any = _paramfile_module
_transport: Any = _transport_module
_M: Any = _messages_module
_P: Any = _params_module

ParamFileError = _paramfile_module.ParamFileError  # a malformed parameter file or dict (a ValueError)

__all__ = [
    "open", "Stimulator", "VirtualKind", "ParamSource",
    "Info", "Realised", "Amplitude", "ChannelStatus", "Status", "Impedance", "RunReport",
    "Event", "Boot", "TrainDone", "TriggerSeen", "Fault", "ImpedanceHigh", "Crash", "AmplitudeChanged",
    "PicostimError", "DeviceRefused", "LinkError", "TimingMismatch", "SafetyFault", "ParamFileError",
]

VirtualKind = Union[bool, Literal["cpython", "micropython", "rp2040"]]
ParamSource = Union[str, Path, Mapping[str, Any], Any]  # a TOML path, a dict with unit keys, or a ParamSet
AmplitudeSource = Union[str, float, int]  # "2.5mA", "2500uA", "2500 µA", or a number in mA

FAULT_REASONS = ("open", "short", "deadman")  # device event kinds that stop a train (SAFETY.md)


# ---- errors ---------------------------------------------------------------------------------------


class PicostimError(Exception):
    """Base class of the API's errors."""


class DeviceRefused(PicostimError, ValueError):
    """The device refused a request, or would: parameters beyond the limits the device reported, a
    channel it does not have, a state that does not allow the request (e.g. a parameter change
    while the channel runs). ``field`` is the protocol field (the unit is in its name: ``amplitude_ua``,
    ``phase1_ns``; or ``channel``), ``value`` what was asked, ``limit`` the device's limit in the same
    unit, ``relation`` how they compare ("<=", ">=", ...), ``nack`` the decoded NACK (None when the
    host refused before sending). ``str(e)`` is one line in user units."""

    def __init__(self, message: str, *, field: str | None, value: Any, limit: Any,
                 relation: str | None = None, code: int | None = None,
                 nack: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.limit = limit
        self.relation = relation
        self.code = code
        self.nack = nack


class LinkError(PicostimError, OSError):
    """The link failed: the port cannot be opened or found, no answer after the retries, the port
    went away, or an answer did not decode."""


class TimingMismatch(PicostimError):
    """``run(..., check=True)``: the capture does not match the parameters. ``report`` is the
    :class:`RunReport` (``report.failures`` lists what differs)."""

    def __init__(self, report: RunReport) -> None:
        first = report.failures[0] if report.failures else "see report.failures"
        more = " (+%d more)" % (len(report.failures) - 1) if len(report.failures) > 1 else ""
        super().__init__("the capture does not match the parameters: %s%s" % (first, more))
        self.report = report


class SafetyFault(PicostimError):
    """A safety check stopped (or blocks) a channel: ``run(..., check=True)`` whose train the firmware
    stopped (electrode open/short, deadman), or a start/trigger refused because the channel's fault is
    latched (``clear_fault`` first). ``kind``: "open", "short", "deadman" or "latched"; ``time_s``:
    device time of the stop (None for a latched refusal); ``ohms``: the reading (None if unknown);
    ``report``: the :class:`RunReport` of a run."""

    def __init__(self, message: str, *, channel: int, kind: str, time_s: float | None = None,
                 ohms: int | None = None, report: RunReport | None = None) -> None:
        super().__init__(message)
        self.channel = channel
        self.kind = kind
        self.time_s = time_s
        self.ohms = ohms
        self.report = report


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """The protocol layer's exceptions as the API's."""
    try:
        yield
    except _pf.ParamLimitError as e:
        v = e.violation
        raise DeviceRefused(str(e), field=v.field, value=v.value, limit=v.limit, relation=v.relation) from e
    except _client.DeviceError as e:
        if e.code == _M.E_FAULT_LATCHED and e.field == "channel":
            raise SafetyFault(str(e), channel=int(e.value), kind="latched") from e
        raise DeviceRefused(str(e), field=e.field, value=e.value, limit=e.limit, relation=e.relation,
                            code=e.code, nack=dict(e.nack)) from e
    except (_client.LinkError, _transport.TransportError) as e:
        raise LinkError(str(e)) from e


# ---- results --------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    if isinstance(x, _Result):
        return x.to_json()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class _Result:
    """``to_json()`` for the result dataclasses: every field except those marked ``json=False``."""

    def to_json(self) -> dict[str, Any]:
        """The fields as a dict of JSON types (``json.dumps`` ready)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)  # type: ignore[arg-type]
                if f.metadata.get("json", True)}


@dataclass(frozen=True)
class Info(_Result):
    """What the board says about itself (HELLO). ``limits``: the firmware's limits in protocol units
    (the unit is in each name: ``max_amplitude_ua``, ``min_period_ns``)."""

    port: str
    kind: str  # "board", "cpython", "micropython" or "rp2040"
    firmware_version: str
    protocol_version: int
    board_id: str
    channels: int
    reset_reason: str
    limits: Mapping[str, int]


@dataclass(frozen=True)
class Realised(_Result):
    """The values the device will play (after rounding to its clock and DAC), next to what was
    requested. Times in µs, amplitudes in mA; ``requested`` and ``values`` hold every field (µs, µA,
    pC) as the CLI's ``--json`` shows them."""

    channel: int
    phase1_us: float
    interphase_us: float
    phase2_us: float
    period_us: float
    frequency_hz: float
    amplitude_ma: float
    phase2_amplitude_ma: float
    charge_residual_pc: float
    tick_hz: int
    requested: Mapping[str, Any] = field(repr=False)
    values: Mapping[str, Any] = field(repr=False)
    name: str | None = None
    source: str | None = None
    # the device's answer as the protocol client decodes it (params in ns/µA, realised in ticks)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata={"json": False})


def _realised(channel: int, response: Mapping[str, Any], ps: Any = None) -> Realised:
    v = _pf.realised_us(response["realised"])
    return Realised(channel=channel, phase1_us=v.get("phase1_us", 0.0), interphase_us=v.get("interphase_us", 0.0),
                    phase2_us=v.get("phase2_us", 0.0), period_us=v.get("period_us", 0.0),
                    frequency_hz=v.get("frequency_hz", 0.0), amplitude_ma=v["amplitude_ua"] / 1000,
                    phase2_amplitude_ma=v["phase2_amplitude_ua"] / 1000, charge_residual_pc=v["charge_residual_pc"],
                    tick_hz=int(v["tick_hz"]), requested=_pf.requested_us(response["params"]), values=v,
                    name=getattr(ps, "name", None), source=getattr(ps, "source", None), raw=response)


_AMPLITUDE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ma|ua|µa|μa)?\s*$", re.IGNORECASE)


def parse_amplitude_ua(amplitude: AmplitudeSource) -> int:
    """An amplitude as the API takes it -> whole µA (nearest, halves up): ``"2.5mA"``, ``"2500uA"``
    (also ``µA``, any case, spaces allowed), or a number in mA (``2.5``). Raises ValueError naming the
    value for anything else (negative, not finite, no number, another unit). Limits are the device's
    business: :meth:`Stimulator.set_amplitude` checks them."""
    if isinstance(amplitude, bool) or not isinstance(amplitude, (int, float, str)):
        raise ValueError("amplitude = %r: a current such as \"2.5mA\" or \"2500uA\", or a number in mA"
                         % (amplitude,))
    if isinstance(amplitude, str):
        m = _AMPLITUDE.match(amplitude)
        if not m:
            shown = amplitude if len(amplitude) <= 30 else amplitude[:27] + "..."
            raise ValueError("amplitude = %r: not a current (e.g. 2.5mA or 2500uA; a bare number is mA)" % shown)
        value = Fraction(m.group(1))
        unit = (m.group(2) or "ma").lower()
        ua = value * (1000 if unit == "ma" else 1)
    else:
        if isinstance(amplitude, float) and not math.isfinite(amplitude):
            raise ValueError("amplitude = %r: not a finite number of mA" % (amplitude,))
        if amplitude < 0:
            raise ValueError("amplitude = %r: must not be negative" % (amplitude,))
        ua = Fraction(amplitude) * 1000
    return int(math.floor(ua + Fraction(1, 2)))


@dataclass(frozen=True)
class Amplitude(_Result):
    """The result of :meth:`Stimulator.set_amplitude`: the amplitude asked for and what the DAC plays
    from the next pulse boundary on. ``amplitude_ua``: phase 1 as realised by the 12-bit DAC;
    ``phase2_amplitude_ua``: phase 2 derived from it for charge balance; ``dac_a`` / ``dac_b``: the
    DAC codes of the POS and NEG directions. The :class:`AmplitudeChanged` event says from which pulse
    on it applies."""

    channel: int
    requested_ua: int
    amplitude_ua: int
    phase2_amplitude_ua: int
    dac_a: int
    dac_b: int

    @property
    def amplitude_ma(self) -> float:
        """Realised phase-1 amplitude in mA."""
        return self.amplitude_ua / 1000


@dataclass(frozen=True)
class ChannelStatus(_Result):
    """One channel: ``state`` idle/armed/running/fault, ``fault`` (the latched fault's kind or "none"),
    pulses played since the last start, the last impedance reading (None = unknown)."""

    channel: int
    state: str
    fault: str
    configured: bool
    pulses: int
    impedance_ohm: int | None


@dataclass(frozen=True)
class Status(_Result):
    """The board's state (STATUS): uptime, one :class:`ChannelStatus` per channel, link counters."""

    uptime_s: float
    channels: tuple[ChannelStatus, ...]
    counters: Mapping[str, int]


@dataclass(frozen=True)
class Impedance(_Result):
    """An impedance reading: ``ohms`` (None = no valid reading) and the firmware's class
    (ok / high / open / short / unknown)."""

    channel: int
    ohms: int | None
    classification: str


@dataclass(frozen=True, kw_only=True)
class Event(_Result):
    """An event the board reported: ``kind``, ``channel``, ``time_s`` (device time since boot),
    ``value`` (raw), ``seq`` (the device's event counter). The subclasses say what it means."""

    kind: str
    channel: int
    time_s: float
    value: int
    seq: int


@dataclass(frozen=True, kw_only=True)
class Boot(Event):
    """The firmware (re)booted; ``reset_reason``: power_on, watchdog, crash, ..."""

    reset_reason: str


@dataclass(frozen=True, kw_only=True)
class TrainDone(Event):
    """A finite train played all its pulses."""


@dataclass(frozen=True, kw_only=True)
class TriggerSeen(Event):
    """A trigger input edge started or gated a train."""


@dataclass(frozen=True, kw_only=True)
class Fault(Event):
    """A safety check stopped the channel: ``reason`` "open" / "short" (electrode; ``ohms`` the reading,
    2147483647 = at the compliance rail; latched: the channel starts again only after
    :meth:`Stimulator.clear_fault`) or "deadman" (host link silent; ``ohms`` None; not latched)."""

    reason: str
    ohms: int | None


@dataclass(frozen=True, kw_only=True)
class ImpedanceHigh(Event):
    """Warning: a running channel's impedance is high (it keeps running)."""

    ohms: int


@dataclass(frozen=True, kw_only=True)
class Crash(Event):
    """The firmware caught an exception: every output went to the safe state and nothing is
    configured any more. ``exception`` and ``where`` say what and in which request/loop."""

    exception: str
    where: str


@dataclass(frozen=True, kw_only=True)
class AmplitudeChanged(Event):
    """A live amplitude change (:meth:`Stimulator.set_amplitude`) took effect: pulses from
    ``from_pulse`` on (0-based, counted since the channel's start) play ``amplitude_ua`` (phase 1, as
    realised by the DAC)."""

    from_pulse: int
    amplitude_ua: int


def _event(d: Mapping[str, Any]) -> Event:
    common: dict[str, Any] = {"channel": int(d["channel"]), "time_s": d["time_us"] / 1e6, "value": int(d["value"]),
                              "seq": int(d.get("seq", 0))}
    kind = d["kind"]
    if kind in FAULT_REASONS:
        return Fault(kind="fault", reason=kind, ohms=None if kind == "deadman" else int(d["value"]), **common)
    if kind == "train_done":
        return TrainDone(kind=kind, **common)
    if kind == "trigger_seen":
        return TriggerSeen(kind=kind, **common)
    if kind == "impedance_high":
        return ImpedanceHigh(kind=kind, ohms=int(d["value"]), **common)
    if kind == "crash":
        why = _M.decode_crash(d["value"])
        return Crash(kind=kind, exception=why["exception"], where=why["where"], **common)
    if kind == "amplitude":
        return AmplitudeChanged(kind=kind, from_pulse=int(d["from_pulse"]), amplitude_ua=int(d["amplitude_ua"]),
                                **common)
    if kind == "boot":
        names = _M.RESET_NAMES
        return Boot(kind=kind, reset_reason=names[d["value"]] if 0 <= d["value"] < len(names) else str(d["value"]),
                    **common)
    return Event(kind=str(kind), **common)


@dataclass(frozen=True)
class RunReport(_Result):
    """The result of :meth:`Stimulator.run`: ``ok`` when the capture matches the parameters and no
    safety check stopped the train. ``failures``: what differs; ``pulses``: complete pulses in the
    capture; ``measured``: the analyzer's numbers (µs); ``faults``: the safety stops the device
    reported during the run; ``pulses_after_fault``: pulses that started after the first fault (at most
    1 is promised; None without a fault or when the clocks cannot be aligned). ``trace`` (the capture:
    ``trace.channels["POS"]`` ...) and ``analysis`` (the analyzer's Report) are for plotting and are
    not part of ``to_json()``."""

    ok: bool
    channel: int
    duration_s: float
    failures: tuple[str, ...]
    pulses: int
    realised: Realised
    measured: Mapping[str, Any]
    events: tuple[Event, ...]
    faults: tuple[Fault, ...]
    pulses_after_fault: int | None
    capture: Path | None
    plot: Path | None
    summary: str = field(repr=False)
    trace: Any = field(default=None, repr=False, compare=False, metadata={"json": False})
    analysis: Any = field(default=None, repr=False, compare=False, metadata={"json": False})
    result: Any = field(default=None, repr=False, compare=False, metadata={"json": False})  # runner.RunResult

    @property
    def stopped_by_fault(self) -> bool:
        """A safety check stopped the run's channel."""
        return any(f.channel == self.channel for f in self.faults)


# ---- opening a board ------------------------------------------------------------------------------


class _Board:
    """The link and whatever serves it (a virtual board) for one Stimulator."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self.board: Any = None  # the VirtualPico / MicroPythonBoard / WholeChip, None for a real board
        self.kind = "board"
        self.path = ""


def _start_virtual(b: _Board, kind: str, channels: int, electrodes: Any, uf2: str | Path | None,
                   realtime: bool = True, watchdog_ms: int | None = 0) -> None:
    """Start a virtual board of ``kind`` into ``b`` (its link path, closed with ``b.stack``).
    ``watchdog_ms`` (CPython virtual Pico): the wall-clock WDT model, 0 off (a notebook may pause for
    minutes), None the board's own timeout (``picostim virtual`` serving other processes)."""
    b.kind = kind
    if kind == "rp2040":
        from picostim.virtual import wholechip

        chip: Any = wholechip.WholeChip(uf2, electrodes=electrodes)
        b.path = chip.open()
        b.stack.callback(chip.close)
        b.board = chip
    elif kind == "micropython":
        from picostim.virtual.micropython_board import MicroPythonBoard

        if electrodes is not None:
            raise ValueError("electrodes= needs the CPython virtual Pico (virtual=True): the MicroPython shim has "
                             "no electrode model")
        mp: Any = MicroPythonBoard()
        b.path = mp.open()
        b.stack.callback(mp.close)
        b.board = mp
    else:
        from picostim.virtual.device import VirtualPico

        # real time (default), so start()/events()/status() behave as on a board; run() switches to
        # stepped (virtual) time for its duration.
        vp = VirtualPico(channels=channels, realtime=realtime, watchdog_ms=watchdog_ms, electrodes=electrodes)
        b.path = vp.open()
        b.stack.callback(vp.close)
        b.board = vp


def open(port: str | None = None, *, virtual: VirtualKind = False, serial_number: str | None = None,
         timeout: float = 1.0, retries: int = 3, channels: int = 4, electrodes: Any = None,
         uf2: str | Path | None = None, realtime: bool = True) -> Stimulator:
    """Connect to a board and return its :class:`Stimulator` (use it as a context manager, or call
    ``close()``).

    ``port``: a serial device or pyserial URL; None = USB discovery (``serial_number`` picks one of
    several boards). ``virtual``: True or "cpython" starts a virtual Pico (the firmware on CPython,
    emulated PIO: captures and ``run``), "micropython" the firmware under the MicroPython unix port
    (protocol and logic, no timing), "rp2040" a MicroPython rp2 image (``uf2`` or $PICOSTIM_UF2) in the
    rp2040js whole-chip emulator. ``channels`` (virtual Pico only) and ``electrodes`` (a list of
    :class:`picostim.virtual.electrode.Electrode`, CPython virtual Pico) shape the virtual board.
    ``timeout`` (s) and ``retries``: per request. ``realtime=False`` (CPython virtual Pico): virtual time
    moves only inside :meth:`Stimulator.run` (and :meth:`Stimulator.wait_idle`), so a run is exactly
    reproducible and electrode fault times (``open@0.5s``) count from the run's start; started trains do
    not advance between requests. Raises :class:`LinkError` when nothing answers."""
    kind = {True: "cpython", False: None}.get(virtual, virtual) if isinstance(virtual, bool) else virtual
    if kind not in (None, "cpython", "micropython", "rp2040"):
        raise ValueError("virtual = %r: one of False, True, \"cpython\", \"micropython\", \"rp2040\"" % (virtual,))
    if kind is not None and port is not None:
        raise ValueError("give port or virtual, not both")
    if kind in ("micropython", "rp2040") and channels != 4:
        raise ValueError("virtual=%r has the board's 4 channels (firmware/board.py)" % kind)
    b = _Board()
    try:
        with _translated():
            if kind is not None:
                _start_virtual(b, str(kind), channels, electrodes, uf2, realtime)
                if kind == "rp2040":
                    from picostim.virtual.wholechip import MIN_HOST_TIMEOUT_S

                    timeout = max(timeout, MIN_HOST_TIMEOUT_S)  # emulated time runs slower than wall time
            elif port is not None:
                b.path = port
            else:
                try:
                    b.path = _transport.discover(serial_number=serial_number)
                except _transport.TransportError as e:  # the transport's advice names CLI options
                    raise LinkError(str(e).replace("give --port PATH or URL, or use --virtual",
                                                   "give open(port) or open(virtual=True)")
                                    .replace("with --port or --serial", "with open(port) or open(serial_number=...)")
                                    ) from e
            ser = _transport.open_port(b.path)
            c = _client.Client(ser, timeout=timeout, retries=retries)
            b.stack.callback(c.close)
            c.port_name = b.path
            c.virtual = b.board
            c.hello()
    except BaseException:
        b.stack.close()
        raise
    return Stimulator(c, b)


@contextlib.contextmanager
def connection(port: str | None = None, **options: Any) -> Iterator[Stimulator]:
    """``with connection(...) as stim``: :func:`open` as a context manager function (same arguments)."""
    stim = open(port, **options)
    try:
        yield stim
    finally:
        stim.close()


# ---- the board object -----------------------------------------------------------------------------


class Stimulator:
    """One board (real or virtual). Made by :func:`picostim.open`; not constructed directly.

    ``client`` is the underlying protocol :class:`picostim.client.Client` (raw requests, counters);
    ``virtual`` the virtual board object (None for a real board)."""

    def __init__(self, client: Any, board: _Board) -> None:
        self.client: Any = client
        self._board = board

    # ---- lifecycle ----
    def close(self) -> None:
        """Close the link (and end a virtual board). Running trains keep running on a real board."""
        self._board.stack.close()

    def __enter__(self) -> Stimulator:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<picostim.Stimulator %s on %s, %d channels>" % (self.kind, self.port, self.channels)

    @property
    def port(self) -> str:
        """The serial device (a pty for a virtual board)."""
        return self._board.path

    @property
    def kind(self) -> str:
        """"board", or the virtual kind: "cpython", "micropython", "rp2040"."""
        return self._board.kind

    @property
    def virtual(self) -> Any:
        """The virtual board object (VirtualPico, MicroPythonBoard, WholeChip), None for a real board."""
        return self._board.board

    @property
    def channels(self) -> int:
        """Number of stimulation channels the device reports."""
        return int(self.client.channels)

    # ---- helpers ----
    def _channel(self, ch: int) -> int:
        if isinstance(ch, bool) or not isinstance(ch, int):
            raise TypeError("channel = %r: channels are integers 0..%d" % (ch, self.channels - 1))
        if not 0 <= ch < self.channels:
            raise DeviceRefused("channel = %d: the device has no such channel (0..%d)" % (ch, self.channels - 1),
                                field="channel", value=ch, limit=self.channels - 1, relation="<=")
        return ch

    def _mask(self, channels: tuple[int, ...], default: str) -> int:
        if channels:
            return int(_client.mask_of([self._channel(ch) for ch in channels]))
        if default == "all":
            return (1 << self.channels) - 1
        with _translated():
            mask = int(self.client.configured_mask())
        if not mask:
            raise DeviceRefused("no channel has parameters yet: upload() first", field="channel", value=None,
                                limit=None)
        return mask

    @staticmethod
    def _paramset(params: ParamSource) -> Any:
        if isinstance(params, _pf.ParamSet):
            return params
        if isinstance(params, Mapping):
            ps = _pf.from_dict(dict(params))
            return _pf.check_required(ps)
        if isinstance(params, (str, Path)):
            return _pf.load(params)
        raise TypeError("params = %r: a parameter file path, a dict with unit keys (phase1_us, amplitude_ma, ...) "
                        "or a ParamSet" % (params,))

    # ---- requests ----
    def info(self) -> Info:
        """Firmware and protocol version, board id, channels, reset reason, firmware limits."""
        with _translated():
            d = self.client.info()
        names = _M.RESET_NAMES
        reason = d["reset_reason"]
        return Info(port=self.port, kind=self.kind, firmware_version=d["firmware_version"],
                    protocol_version=int(d["protocol_version"]), board_id=d["board_id"], channels=int(d["channels"]),
                    reset_reason=names[reason] if 0 <= reason < len(names) else str(reason), limits=dict(d["limits"]))

    def upload(self, params: ParamSource, channel: int = 0) -> Realised:
        """Check ``params`` against the device's limits and send them to ``channel``; returns the
        realised values. ``params``: a TOML parameter file path, a dict with the file's unit keys
        (``{"frequency_hz": 20, "phase1_us": 200, "amplitude_ma": 2, "electrode_area_mm2": 5}``) or a
        :class:`picostim.paramfile.ParamSet`. Raises :class:`ParamFileError` (malformed),
        :class:`DeviceRefused` (beyond a limit: nothing is sent; or the channel is running: parameters
        do not change while a train runs, stop it first). A file with a ``[sequence]`` table also
        uploads its pulses (SET_SEQUENCE, after the parameters; each pulse checked on the host first)."""
        ps = self._paramset(params)
        self._channel(channel)
        with _translated():
            _pf.check(ps, self.client.limits)
            resp = self.client.set_params(channel, ps.params)
            if ps.sequence is not None:  # a [sequence]: its pulses follow the parameters, 20 a request
                self.client.set_sequence(channel, ps.sequence.onsets_ns, ps.sequence.amplitudes_ua, ps.params)
        return _realised(channel, resp, ps)

    def params(self, channel: int = 0) -> Realised | None:
        """The parameters on ``channel`` (requested and realised), None if it has none."""
        self._channel(channel)
        try:
            with _translated():
                resp = self.client.get_params(channel)
        except DeviceRefused as e:
            if e.code == _M.E_NOT_CONFIGURED:
                return None
            raise
        return _realised(channel, resp)

    def set_amplitude(self, channel: int, amplitude: AmplitudeSource) -> Amplitude:
        """Change the amplitude of a running ``channel`` without stopping it: ``"2.5mA"``,
        ``"2500uA"`` or a number in mA. The device applies it at the next pulse boundary (never inside
        a pulse; the phase-2 amplitude follows for charge balance) and reports from which pulse on as
        an :class:`AmplitudeChanged` event. The channel's parameters with the new amplitude are first
        checked against the device's limits (amplitude, charge per phase, Shannon density, phase 2
        after DAC rounding), so nothing is sent when the host already sees a limit. Raises
        :class:`DeviceRefused` (``field``/``value``/``limit``: beyond a limit; or the device refused:
        the channel is not running, a ramp or another change is still playing, or the idle after each
        pulse is too short for the DAC update), ValueError for an amplitude that is not a current."""
        self._channel(channel)
        ua = parse_amplitude_ua(amplitude)
        with _translated():
            try:
                params = self.client.get_params(channel)["params"]
            except _client.DeviceError as e:
                if e.code != _M.E_NOT_CONFIGURED:
                    raise
                params = None  # nothing to check against: the device's own refusal names the channel
            limit = self.client.limits["max_amplitude_ua"]
            if ua > limit:  # also when the channel has no parameters: the wire field is 32 bits
                v = _P.Violation("amplitude_ua", ua, limit, "<=")
                raise _pf.ParamLimitError(_pf.describe_violation(v.field, v.value, v.limit, v.relation), v)
            if params is not None:
                _pf.check_amplitude(params, ua, self.client.limits)
            r = self.client.set_amplitude(channel, ua)
        return Amplitude(channel=int(r["channel"]), requested_ua=ua, amplitude_ua=int(r["amplitude_ua"]),
                         phase2_amplitude_ua=int(r["amplitude2_ua"]), dac_a=int(r["dac_a"]), dac_b=int(r["dac_b"]))

    def start(self, *channels: int) -> None:
        """Start the trains of ``channels`` (default: every channel with parameters). A train with an
        external trigger is armed and waits for its input."""
        with _translated():
            self.client.start(self._mask(channels, "configured"))

    def stop(self, *channels: int) -> None:
        """Stop ``channels`` (default: all) at the next pulse boundary: a started pulse completes."""
        with _translated():
            self.client.stop(self._mask(channels, "all"))

    def trigger(self, *channels: int) -> None:
        """Software trigger of ``channels`` (default: every channel with parameters): their trains start
        now, whatever their trigger source (an armed train is disarmed first)."""
        with _translated():
            self.client.trigger(self._mask(channels, "configured"))

    def clear_fault(self, *channels: int) -> None:
        """Unlatch the faults of ``channels`` (default: all); the next start re-checks the electrode."""
        with _translated():
            self.client.clear_fault(self._mask(channels, "all"))

    def status(self) -> Status:
        """State, pulse count, latched fault and last impedance of every channel, plus the device's link
        counters. Any request also keeps a deadman (:meth:`set_deadman`) from expiring."""
        with _translated():
            st = self.client.status()
        chans = tuple(ChannelStatus(channel=c["channel"], state=c["state"], fault=c["fault"],
                                    configured=bool(c["configured"]), pulses=int(c["pulses"]),
                                    impedance_ohm=c["impedance_ohm"]) for c in st["channels"])
        return Status(uptime_s=st["uptime_ms"] / 1000, channels=chans, counters=dict(st["counters"]))

    def impedance(self, channel: int = 0) -> Impedance:
        """Measure the electrode impedance of ``channel`` with a test pulse."""
        self._channel(channel)
        with _translated():
            readings = self.client.impedance(1 << channel)
        r = readings[0]
        return Impedance(channel=int(r["channel"]), ohms=r["ohms"], classification=r["class"])

    def save(self, channel: int, slot: int) -> int:
        """Save ``channel``'s parameters to flash ``slot``; returns the record's CRC."""
        self._channel(channel)
        with _translated():
            return int(self.client.save(channel, slot)["crc"])

    def load(self, slot: int, channel: int = 0) -> Realised:
        """Load flash ``slot`` into ``channel`` (validated like :meth:`upload`)."""
        self._channel(channel)
        with _translated():
            resp = self.client.load(channel, slot)
        return _realised(channel, resp)

    def set_deadman(self, seconds: float) -> None:
        """While a channel runs, ``seconds`` without any request from this host stops it (a
        :class:`Fault` with reason "deadman"); 0 turns it off."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError("seconds = %r: a finite number >= 0" % (seconds,))
        with _translated():
            self.client.set_deadman(round(seconds * 1000))

    def events(self, timeout: float = 0.0) -> list[Event]:
        """The events received so far (oldest first); when there are none, waits up to ``timeout``
        seconds for the first. Typed: :class:`TrainDone`, :class:`Fault`, :class:`ImpedanceHigh`,
        :class:`Crash`, :class:`Boot`, :class:`TriggerSeen`, :class:`AmplitudeChanged`."""
        with _translated():
            return [_event(d) for d in self.client.events(timeout=timeout)]

    def wait_event(self, kind: str | None = None, channel: int | None = None,
                   timeout: float = 5.0) -> Event | None:
        """Wait up to ``timeout`` s for an event of ``kind`` ("train_done", "fault", "impedance_high",
        "crash", "boot", "trigger_seen", "amplitude"; None = any) on ``channel`` (None = any); None on timeout.
        Other events stay queued for :meth:`events`."""
        deadline = time.monotonic() + timeout
        c = self.client
        while True:
            for i, d in enumerate(c._events):
                ev = _event(d)
                if (kind is None or ev.kind == kind) and (channel is None or ev.channel == channel):
                    del c._events[i]
                    return ev
            if time.monotonic() >= deadline:
                return None
            with _translated():
                for _ in c._pump():  # what Client.wait_event does: queue the events that arrived
                    c.stale_responses += 1

    # ---- the main job ----
    def wait_idle(self, *channels: int, timeout: float = 5.0) -> bool:
        """Wait until ``channels`` (default: all) are neither running nor armed, e.g. after
        :meth:`stop` (the pulse in progress completes first). False if ``timeout`` s passed first."""
        chans = [self._channel(ch) for ch in channels] or list(range(self.channels))
        vp = self.virtual if self.kind == "cpython" and not self.virtual.realtime else None
        deadline = time.monotonic() + timeout
        while True:
            if vp is not None:
                busy = any(vp.hal.running(ch) for ch in chans)
            else:
                st = self.status()
                busy = any(st.channels[ch].state in ("running", "armed") for ch in chans)
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            if vp is not None:
                vp.advance(0.01)  # stepped time (inside run): emulate instead of sleeping
            else:
                time.sleep(0.01)

    def _make_idle(self, channel: int) -> None:
        """Stop a train still running on ``channel`` and wait until its last pulse has played."""
        if self.status().channels[channel].state in ("running", "armed"):
            self.stop(channel)
            self.wait_idle(channel)

    def run(self, params: ParamSource, duration: float | None = None, *, channel: int = 0,
            capture: str | Path | None = None, plot: str | Path | None = None,
            triggers: Mapping[int, list[float]] | None = None, check: bool = False,
            analyzer: str = "fx2lafw", samplerate: float = 24e6) -> RunReport:
        """Upload ``params`` to ``channel``, run the train for ``duration`` seconds (default: the whole
        train plus one cycle, or 1 s for an endless one; a ``[sequence]`` played once: until its last
        pulse has ended), capture the pins and check the capture against the *requested* parameters
        (``report.ok``; a sequence: every onset exact to the tick and every amplitude after DAC
        rounding, ``report.measured["sequence"]``). A train already running on ``channel`` is stopped
        first.

        Virtual Pico: emulated time (the run takes as long as the emulator needs) and the emulated PIO
        pins; ``triggers`` drives TRIG1/TRIG2 (``{1: [0.01]}``: a rising edge 10 ms in; more times
        alternate falling/rising, a gate). A board: a sigrok-cli capture from the logic analyzer
        ``analyzer`` at ``samplerate`` Hz (wiring: docs/HARDWARE.md). ``capture``: write it (.vcd or
        .sr; the directory is created), ``plot``: a PNG of the first pulses.

        ``check=True`` raises :class:`SafetyFault` when the firmware stopped the train and
        :class:`TimingMismatch` when the capture does not match; otherwise look at ``report.ok``,
        ``report.stopped_by_fault``."""
        from picostim import runner

        ps = self._paramset(params)
        self._channel(channel)
        if duration is not None and not (math.isfinite(duration) and 0 < duration <= 86400):
            raise ValueError("duration = %r: 0 < seconds <= 86400" % (duration,))
        trig = {int(n): [float(t) for t in ts] for n, ts in (triggers or {}).items() if ts}
        for n, ts in trig.items():
            if n not in (1, 2):
                raise ValueError("triggers: input %r: the trigger inputs are 1 (TRIG1) and 2 (TRIG2)" % n)
            if any(not (math.isfinite(t) and t >= 0) for t in ts) or any(b <= a for a, b in zip(ts, ts[1:])):
                raise ValueError("triggers[%d] = %r: increasing times >= 0 in seconds" % (n, ts))
        n_in = runner.trigger_input(ps.params)
        if trig and self.kind != "cpython":
            raise ValueError("triggers= drive the CPython virtual Pico's inputs (virtual=True)")
        if self.kind == "cpython" and n_in is not None and n_in not in trig:
            raise ValueError('trigger = "%s": the train waits for TRIG%d and nothing drives it on the virtual Pico: '
                             "give triggers={%d: [seconds, ...]}" % (_pf.P.TRIGGER_NAMES[ps.params["trigger"]], n_in,
                                                                     n_in))
        if self.kind == "micropython":
            raise ValueError("virtual=\"micropython\" runs the firmware on shim hardware without PIO timing; "
                             "use virtual=True for run/captures")
        if duration is None:
            duration = runner.default_duration_s(ps.params, ps.sequence) + (trig[n_in][0] if n_in in trig else 0)
        if ps.sequence is not None and self.kind == "rp2040":
            raise ValueError("[sequence]: virtual=\"rp2040\" runs no custom sequences yet; use virtual=True")
        if capture is not None:
            Path(capture).parent.mkdir(parents=True, exist_ok=True)
        with _translated():
            _pf.check(ps, self.client.limits)
        vp = self.virtual
        stepped = self.kind == "cpython"
        was_realtime = bool(stepped and vp.realtime)
        if stepped:
            vp.realtime = False  # emulated time for the run: deterministic, as fast as the emulator goes
        try:
            self._make_idle(channel)
            with _translated():
                if self.kind == "rp2040":
                    from picostim.virtual import wholechip

                    result = wholechip.run(vp, self.client, ps.params, duration, channel=channel, capture=capture,
                                           plot_png=plot)
                elif stepped:
                    result = runner.run_virtual(vp, self.client, ps.params, duration, channel=channel,
                                                capture=capture, plot_png=plot, triggers=trig, sequence=ps.sequence)
                else:
                    result = runner.run_board(self.client, ps.params, duration, driver=analyzer,
                                              samplerate=samplerate, channel=channel,
                                              capture=capture or "picostim-capture.sr", plot_png=plot,
                                              sequence=ps.sequence)
        finally:
            if was_realtime:
                vp.realtime = True
        report = _run_report(result, channel, duration, ps)
        if check:
            stops = [f for f in report.faults if f.channel == channel]
            if stops:
                f = stops[0]
                raise SafetyFault("channel %d stopped at t=%.6f s: %s" % (channel, f.time_s, f.reason),
                                  channel=channel, kind=f.reason, time_s=f.time_s, ohms=f.ohms, report=report)
            if not report.ok:
                raise TimingMismatch(report)
        return report


def _run_report(result: Any, channel: int, duration: float, ps: Any) -> RunReport:
    rep = result.report
    events = tuple(_event(d) for d in result.events)
    faults = tuple(e for e in events if isinstance(e, Fault))
    stopped = any(f.channel == channel for f in faults)
    realised = _realised(channel, {"params": result.params, "realised": result.realised}, ps)
    return RunReport(ok=bool(rep.ok) and not stopped, channel=channel, duration_s=float(duration),
                     failures=tuple(rep.failures), pulses=int(rep.n_pulses), realised=realised,
                     measured=rep.to_json(), events=events, faults=faults,
                     pulses_after_fault=result.pulses_after_fault, capture=result.capture_path,
                     plot=result.plot_path, summary=rep.summary(), trace=result.trace, analysis=rep,
                     result=result)
