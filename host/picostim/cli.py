"""``picostim`` command line: argument parsing and output formatting only (the board is opened and
driven through the Python API, api.py; logic lives in client.py, paramfile.py, transport.py, runner.py).

Exit codes (EXIT_HELP): 0 ok; 1 link or other error; 2 bad input (file, capture, option, value) or a
refusal by the device (NACK); 3 a timing check (``run``/``check``) found the capture does not match the
parameters; 4 the train was stopped by a safety fault (electrode open/short, deadman). Every error is
one line on stderr, ``picostim: error: <key or option> = <value>: <why> (<limit>)``; never a traceback
(``--debug`` adds it).

Each ``--virtual`` invocation starts a fresh virtual Pico that lives only for that command; to keep a
virtual board's state across commands run ``picostim virtual`` in one terminal and pass the pty path
it prints to ``--port`` (or set PICOSTIM_PORT).
"""

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
import traceback

from picostim import api, paramfile, transport
from picostim.client import DeviceError, LinkError, mask_of
from protocol import messages as M

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 3
EXIT_SAFETY_STOP = 4

EXIT_HELP = """exit codes:
  0  ok
  1  link or other error (no answer, port gone)
  2  bad input (parameter file, capture, option or value) or a refusal by the device; nothing changed
  3  the capture does not match the parameters (run, check)
  4  the train was stopped by a safety fault (electrode open/short, deadman) (run)
every error is one line: picostim: error: <key or option> = <value>: <why> (<limit>)"""


class UsageError(Exception):
    """Bad input detected on the host (exit 2)."""


# ---- option types: validated at parse time, one line naming the option, the value and the range ---


def _show(text, n=40):
    text = str(text)
    return text if len(text) <= n else text[: n - 3] + "..."


def _number_type(kind, lo, hi, lo_open=False, unit=""):
    """argparse type: an int or finite float in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    rng = "%s %s %s ≤ %s%s" % (lo, "<" if lo_open else "≤", "N" if kind is int else "x", hi, unit)

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("= %s: not %s (%s)" % (
                _show(text), "an integer" if kind is int else "a number", rng)) from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError("= %s: not a finite number (%s)" % (_show(text), rng))
        if value < lo or (lo_open and value == lo) or value > hi:
            raise argparse.ArgumentTypeError("= %s: out of range (%s)" % (_show(text), rng))
        return value

    parse.__name__ = kind.__name__
    return parse


def _times_type(text):
    """``--trig1 10ms,50ms,...``: edge times (first rising) from the start of the run, ascending."""
    from picostim.virtual.electrode import SpecError, parse_time

    times = []
    for part in text.split(","):
        try:
            t = parse_time(part)
        except SpecError:
            raise argparse.ArgumentTypeError("= %s: %s is not a time (e.g. 10ms,50ms: edge times from the "
                                             "start, first rising)" % (_show(text), _show(part, 20))) from None
        if not (math.isfinite(t) and 0 <= t <= MAX_RUN_S):
            raise argparse.ArgumentTypeError("= %s: %s out of range (0 ≤ t ≤ %d s)" % (_show(text), _show(part, 20),
                                                                                   MAX_RUN_S))
        if times and t <= times[-1]:
            raise argparse.ArgumentTypeError("= %s: times must increase (%s after %s)" % (_show(text), _show(part, 20),
                                                                                         times[-1]))
        times.append(t)
    return times


MAP_ROLES = ("POS", "NEG", "RECOVERY", "SYNC", "TRIG1", "TRIG2", "SCK", "MOSI", "CS0", "CS1", "CS2", "CS3", "LDAC")


def _map_type(text):
    """``--map POS=D0,NEG=D1,...``: which capture channel carries which line."""
    out = {}
    for part in text.split(","):
        role, eq, src = part.partition("=")
        role, src = role.strip().upper(), src.strip()
        if not eq or not src:
            raise argparse.ArgumentTypeError("= %s: expected ROLE=CHANNEL pairs, e.g. POS=D0,NEG=D1" % _show(text))
        if role not in MAP_ROLES:
            raise argparse.ArgumentTypeError("= %s: %s is not a line (one of %s)" % (_show(text), _show(role, 20),
                                                                                ", ".join(MAP_ROLES)))
        if role in out:
            raise argparse.ArgumentTypeError("= %s: %s given twice" % (_show(text), role))
        out[role] = src
    return out


def _out_type(*suffixes):
    """argparse type: an output path with one of ``suffixes`` in an existing directory."""
    def parse(text):
        if not text.lower().endswith(suffixes):
            raise argparse.ArgumentTypeError("= %s: the file name must end in %s" % (_show(text), " or ".join(suffixes)))
        parent = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(parent):
            raise argparse.ArgumentTypeError("= %s: directory %s does not exist" % (_show(text), _show(parent)))
        return text

    return parse


MAX_RUN_S = 86400  # the firmware's longest train (max_duration_ns)
MAX_CHANNEL = 7  # the protocol's channel mask is one byte; the device's own count is checked on connect


# ---- connection -------------------------------------------------------------------------------


def _check_virtual(args, electrodes, realtime):
    """--virtual-channels / --electrode / --fault that the chosen virtual board cannot honour: exit 2."""
    kind = args.virtual
    if kind in ("micropython", "rp2040") and args.virtual_channels != 4:
        raise UsageError("--virtual=%s has the board's 4 channels (firmware/board.py)" % kind)
    if kind == "micropython":
        if not realtime:
            raise UsageError("--virtual=micropython runs the firmware on shim hardware without PIO timing; "
                             "use --virtual (the CPython virtual Pico) for run/captures")
        if electrodes is not None:
            raise UsageError("--electrode/--fault need the CPython virtual Pico (--virtual): the shim has no electrode model")


def _electrodes(args):
    """Electrode models from --electrode / --fault (picostim/virtual/electrode.py), None without them."""
    specs, faults = getattr(args, "electrode", None) or [], getattr(args, "fault", None) or []
    if not specs and not faults:
        return None
    if not args.virtual:
        raise UsageError("--electrode/--fault configure the virtual Pico: add --virtual")
    from picostim.virtual.electrode import SpecError, electrodes_from_specs

    try:
        return electrodes_from_specs(args.virtual_channels, specs, faults)
    except SpecError as e:
        for option, given in (("--electrode", specs), ("--fault", faults)):  # name the one that is wrong
            for spec in given:
                try:
                    electrodes_from_specs(args.virtual_channels, *(([spec], []) if option == "--electrode"
                                                                   else ([], [spec])))
                except SpecError as one:
                    why = str(one)
                    for prefix in ("%s %s: " % (option, spec), "%s: " % spec):
                        why = why[len(prefix):] if why.startswith(prefix) else why
                    raise UsageError("%s = %s: %s" % (option, _show(spec), why)) from None
        raise UsageError("--electrode/--fault: %s" % e) from None


@contextlib.contextmanager
def connect(args, realtime=True):
    """Yield a :class:`picostim.api.Stimulator` (``picostim.open``, the Python API) for --port /
    --virtual / USB discovery; HELLO already done. ``realtime=False``: the command is ``run``."""
    electrodes = _electrodes(args)  # bad --electrode/--fault (or without --virtual): exit 2 before connecting
    kind = args.virtual
    _check_virtual(args, electrodes, realtime)
    try:
        stim = api.open(None if kind else (args.port or None), virtual=kind or False, serial_number=args.serial,
                        timeout=args.timeout, retries=args.retries, channels=args.virtual_channels,
                        electrodes=electrodes, uf2=getattr(args, "uf2", None), realtime=realtime)
    except _loaded("picostim.virtual.wholechip", "WholeChipError") as e:
        raise UsageError(str(e)) from None
    with stim:
        yield stim


def _check_channel(client, ch):
    """--channel beyond the connected device's channels: exit 2 before any request naming it."""
    if not 0 <= ch < client.channels:
        raise UsageError("--channel = %d: the device has no such channel (0..%d)" % (ch, client.channels - 1))
    return ch


def _channels_mask(client, channels, default):
    """Mask from --channel (repeatable) or the default: 'configured' or 'all'."""
    n = client.channels
    if channels:
        for ch in channels:
            _check_channel(client, ch)
        return mask_of(channels)
    if default == "all":
        return (1 << n) - 1
    mask = client.configured_mask()
    if not mask:
        raise UsageError("no channel has parameters yet: upload a parameter file first (picostim upload FILE.toml)")
    return mask


def _chan_list(mask):
    return [ch for ch in range(8) if mask >> ch & 1]


def _print_json(obj):
    print(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False))


# ---- commands ---------------------------------------------------------------------------------


def cmd_ports(args):
    ports = transport.list_ports()
    if args.json:
        _print_json(ports)
    else:
        print(transport.format_ports(ports))
    return EXIT_OK


def cmd_info(args):
    with connect(args) as stim:
        info = dict(stim.client.info())
        info["port"] = stim.port
    if args.json:
        _print_json(info)
        return EXIT_OK
    print("port:             %s" % info["port"])
    print("firmware version: %s" % info["firmware_version"])
    print("protocol version: %d" % info["protocol_version"])
    print("board id:         %s" % info["board_id"])
    print("channels:         %d" % info["channels"])
    reason = info["reset_reason"]
    print("reset reason:     %s" % (M.RESET_NAMES[reason] if reason < len(M.RESET_NAMES) else reason))
    print("firmware limits:")
    for name, value in info["limits"].items():
        print("  %-24s %s" % (name, _limit_text(name, value)))
    return EXIT_OK


def _limit_text(name, value):
    if name.endswith("_ns"):
        text = "%s µs" % paramfile.ns_to_us(value)
        if name == "min_period_ns" and value:
            text += " (max %s Hz)" % paramfile._fmt_num(1e9 / value)
        return text
    if name.endswith("_ua"):
        return "%d µA" % value
    if name.endswith("_nc"):
        return "%d nC" % value
    if name == "shannon_k_centi":
        return "k = %s" % paramfile._fmt_num(value / 100, 2)
    if name.endswith("_permille"):
        return "%s %%" % paramfile._fmt_num(value / 10, 1)
    if name.endswith("_um2"):
        return "%s mm²" % paramfile._fmt_num(value / 1e6, 6)
    return str(value)


def _fmt_val(x, unit):
    if unit == "pC":
        return "%.3f" % x
    return paramfile._fmt_num(x, 3)


def format_comparison(channel, ps, result, dead_ns=None):
    """The requested-vs-realised table; ``dead_ns`` (the device's min_dead_time_ns from HELLO) adds the
    dead time the engine inserts: a realised interphase longer than the request, the recovery gap."""
    params = result["params"]
    realised = result["realised"]
    title = "channel %d" % channel
    if ps is not None and (ps.name or ps.source):
        title += ": %s" % (ps.name or "")
        if ps.source:
            title += " (%s)" % ps.source
    lines = [title, "%-22s %14s %14s %10s" % ("", "requested", "realised", "diff")]
    for name, unit, req, real in paramfile.compare(params, realised):
        if req == 0 and real == 0 and name not in ("charge_residual_pc",):
            continue
        label = "%s [%s]" % (name.rsplit("_", 1)[0] if name.endswith(("_us", "_ua", "_pc")) else name, unit)
        diff = real - req
        lines.append("%-22s %14s %14s %10s" % (label, _fmt_val(req, unit), _fmt_val(real, unit),
                                               "0" if abs(diff) < 1e-9 else "%+.3f" % diff))
    if dead_ns:
        dead_us = paramfile._fmt_num(dead_ns / 1000, 3)
        if params["recovery_ns"]:
            lines.append("%-22s %14s %14s" % ("recovery_gap [µs]", "-", dead_us))
        ip_us = float(paramfile.ticks_to_ns(realised["interphase"], realised["tick_hz"]) / 1000)
        if ip_us * 1000 > params["interphase_ns"]:
            lines.append("interphase %s µs requested, %s µs realised: the board dead time (%s µs idle between "
                         "POS, NEG and RECOVERY)" % (paramfile._fmt_num(params["interphase_ns"] / 1000, 3),
                                                      paramfile._fmt_num(ip_us, 3), dead_us))
    rq = paramfile.requested_us(params)
    lines.append("%-22s %14s" % ("frequency [Hz]", paramfile._fmt_num(rq.get("frequency_hz", 0), 4)))
    extras = ["polarity %s" % rq["polarity"], "trigger %s" % rq["trigger"],
              "electrode %s mm²" % paramfile._fmt_num(rq["electrode_area_mm2"], 6)]
    if params.get("shape"):  # triphasic: flank, main phase (phase 1), flank; the flanks share phase 2
        extras.insert(1, "shape %s (two flanks of %s µs around phase 1)" % (
            rq["shape"], paramfile._fmt_num(float(paramfile.ticks_to_ns(realised["phase2"], realised["tick_hz"]))
                                            / 2000, 3)))
    if params["burst_pulses"]:
        extras.append("%d pulses per burst" % params["burst_pulses"])
    extras.append("tick %s ns" % paramfile._fmt_num(1e9 / realised["tick_hz"], 3))
    lines.append(", ".join(extras))
    ramps = paramfile.ramp_pulses(params)
    if any(ramps.values()):
        lines.append("; ".join("%s: %s" % (label, "%d pulses" % ramps[key] if ramps[key] else "none")
                               for label, key in (("soft start", "ramp_up"), ("soft stop (on stop)", "ramp_down"))))
    seq = getattr(ps, "sequence", None)
    if seq is not None:  # period and amplitude above are the sequence's shortest interval and largest amplitude
        lines.append("sequence: %d pulses %s, onsets %s .. %s, amplitudes %s .. %s µA (the period above is the "
                     "shortest interval, the amplitude the largest)"
                     % (len(seq), "looped every %s" % seq.in_unit(seq.cycle_ns, "cycle") if seq.loop else "played once",
                        seq.in_unit(seq.onsets_ns[0]), seq.in_unit(seq.onsets_ns[-1]),
                        paramfile._fmt_num(min(seq.amplitudes_ua)), paramfile._fmt_num(max(seq.amplitudes_ua))))
    lines.append("charge-balance residual per pulse: %.3f pC (phase 2 amplitude derived from phase 1 charge)"
                 % (paramfile._get(realised, "residual_fc", "residual_charge_fc") / 1000.0))
    return "\n".join(lines)


def _result_json(channel, ps, result):
    out = {"channel": channel,
           "requested": paramfile.requested_us(result["params"]),
           "realised": paramfile.realised_us(result["realised"])}
    ramps = paramfile.ramp_pulses(result["params"])
    out["realised"]["ramp_up_pulses"] = ramps["ramp_up"]
    out["realised"]["ramp_down_pulses"] = ramps["ramp_down"]
    if ps is not None:
        out["name"] = ps.name
        out["source"] = ps.source
    seq = getattr(ps, "sequence", None)
    if seq is not None:
        out["sequence"] = {"pulses": len(seq), "loop": seq.loop, "cycle_us": seq.cycle_ns / 1000,
                           "shortest_interval_us": result["params"]["period_ns"] / 1000,
                           "onsets_us": [t / 1000 for t in seq.onsets_ns], "amplitudes_ua": list(seq.amplitudes_ua)}
    return out


def cmd_upload(args):
    ps = paramfile.load(args.file)  # a malformed file -> exit 2 before any connection
    with connect(args) as stim:  # HELLO: the device's own limits, which may differ from this build's
        _check_channel(stim, args.channel)
        limits = stim.client.limits
        paramfile.check(ps, limits)  # out of range -> exit 2, nothing sent but HELLO
        result = stim.upload(ps, args.channel).raw
    if args.json:
        _print_json(_result_json(args.channel, ps, result))
    else:
        print(format_comparison(args.channel, ps, result, limits.get("min_dead_time_ns")))
    return EXIT_OK


def cmd_validate(args):
    """Offline: check files against this firmware build's limits (no board needed)."""
    bad = 0
    for f in args.files:
        try:
            ps = paramfile.load(f)
            paramfile.check(ps, _offline_limits())
            print("%s: ok (%s)" % (f, ps.name or "unnamed"))
        except paramfile.ParamFileError as e:  # one line per bad file, the file named first
            message = str(e) if str(f) in str(e) else "%s: %s" % (f, e)
            print("picostim: error: %s" % _one_line(message), file=sys.stderr)
            bad += 1
    return EXIT_BAD_INPUT if bad else EXIT_OK


def _offline_limits():
    from firmware.limits import LIMITS

    return LIMITS


def cmd_params(args):
    with connect(args) as stim:
        c = stim.client  # GET_PARAMS with its NACK for an explicit channel without parameters
        for ch in args.channel or ():
            _check_channel(c, ch)
        chans = args.channel if args.channel else range(c.channels)
        results = []
        for ch in chans:
            try:
                results.append((ch, c.get_params(ch)))
            except DeviceError as e:
                if e.code != M.E_NOT_CONFIGURED or args.channel:
                    raise
                results.append((ch, None))
    if args.json:
        _print_json([_result_json(ch, None, r) if r else {"channel": ch, "configured": False} for ch, r in results])
    else:
        for ch, r in results:
            print(format_comparison(ch, None, r, c.limits.get("min_dead_time_ns")) if r
                  else "channel %d: no parameters" % ch)
            print()
    return EXIT_OK


def _simple(method, default):
    def run(args):
        with connect(args) as stim:
            mask = _channels_mask(stim.client, args.channel, default)
            getattr(stim, method)(*_chan_list(mask))
            print("%s: channel%s %s" % (method.replace("_", " "), "s" if bin(mask).count("1") > 1 else "",
                                        ", ".join(str(ch) for ch in _chan_list(mask))))
        return EXIT_OK

    return run


def cmd_status(args):
    with connect(args) as stim:
        c = stim.client  # the raw STATUS and the host's link counters (--json shape)
        st = c.status()
        host = c.counters()
        events = c.events()
    st["host_counters"] = host
    st["events"] = events
    if args.json:
        _print_json(st)
        return EXIT_OK
    print(format_status(st))
    return EXIT_OK


def format_status(st):
    lines = ["uptime %.3f s" % (st["uptime_ms"] / 1000.0),
             "%-8s %-8s %-7s %12s %12s" % ("channel", "state", "fault", "pulses", "impedance")]
    for ch in st["channels"]:
        ohm = ch["impedance_ohm"]
        lines.append("%-8d %-8s %-7s %12d %12s" % (ch["channel"], ch["state"], ch["fault"], ch["pulses"],
                                                  "unknown" if ohm is None else "%d Ω" % ohm))
    lines.append("device link: " + ", ".join("%s %d" % kv for kv in st["counters"].items()))
    if "host_counters" in st:
        lines.append("host link:   " + ", ".join("%s %d" % kv for kv in st["host_counters"].items()))
    for ev in st.get("events", []):
        lines.append("event: %s" % format_event(ev))
    return "\n".join(lines)


def format_event(ev):
    """One line per EVENT; ``t`` is seconds since the device booted."""
    if ev["kind"] == M.EVENT_NAMES[M.EV_CRASH]:
        why = M.decode_crash(ev["value"])
        return "t=%.6f s crash: %s in %s; outputs went to the safe state, nothing is configured" % (
            ev["time_us"] / 1e6, why["exception"], why["where"])
    if ev["kind"] == M.EVENT_NAMES[M.EV_AMPLITUDE] and "from_pulse" in ev:
        return "t=%.6f s channel %d amplitude %s from pulse %d" % (ev["time_us"] / 1e6, ev["channel"],
                                                                    _ma(ev["amplitude_ua"]), ev["from_pulse"])
    return "t=%.6f s channel %d %s (value %d)" % (ev["time_us"] / 1e6, ev["channel"], ev["kind"], ev["value"])


def cmd_impedance(args):
    with connect(args) as stim:
        c = stim.client  # one IMPEDANCE request for every channel of the mask
        mask = _channels_mask(c, args.channel, "all")
        readings = c.impedance(mask)
    if args.json:
        _print_json(readings)
    else:
        for r in readings:
            print("channel %d: %s (%s)" % (r["channel"], "no valid reading" if r["ohms"] is None else "%d Ω" % r["ohms"],
                                           r["class"]))
    return EXIT_OK


def cmd_save(args):
    with connect(args) as stim:
        r = {"slot": args.slot, "crc": stim.save(_check_channel(stim, args.channel), args.slot)}
    if args.json:
        _print_json(r)
    else:
        print("channel %d saved to slot %d (CRC 0x%04X)" % (args.channel, r["slot"], r["crc"]))
    return EXIT_OK


def cmd_load(args):
    with connect(args) as stim:
        r = stim.load(args.slot, _check_channel(stim, args.channel)).raw
    if args.json:
        _print_json(r)
    else:
        print("slot %d loaded into channel %d" % (args.slot, args.channel))
    return EXIT_OK


def _amplitude_type(text):
    """argparse type for ``set-amplitude``: 2.5mA, 2500uA, 2500µA or a bare number in mA -> µA."""
    try:
        return api.parse_amplitude_ua(text)
    except ValueError:
        raise argparse.ArgumentTypeError("= %s: not a current (e.g. 2.5mA or 2500uA; a bare number is mA)"
                                         % _show(text)) from None


def _ma(ua):
    return "%s mA" % paramfile._fmt_num(ua / 1000, 4)


def cmd_set_amplitude(args):
    """Live amplitude change of a running channel, applied at the next pulse boundary (one line out)."""
    with connect(args) as stim:
        _check_channel(stim, args.channel)
        r = stim.set_amplitude(args.channel, "%duA" % args.amplitude)
    if args.json:
        _print_json(r.to_json())
    else:
        print("channel %d: amplitude %s requested, %s realised (phase 2 %s; DAC A %d, B %d) from the next pulse "
              "boundary" % (r.channel, _ma(r.requested_ua), _ma(r.amplitude_ua), _ma(r.phase2_amplitude_ua),
                            r.dac_a, r.dac_b))
    return EXIT_OK


def cmd_watch(args):
    """Live status: events as they arrive, pulses and train progress, until Ctrl-C or all idle."""
    with connect(args) as stim:
        c = stim.client  # raw events and STATUS (--json lines)
        totals = {}  # channel -> pulses in the whole train (0 = until stopped)
        for ch in range(c.channels):
            try:
                real = c.get_params(ch)["realised"]
            except DeviceError:
                continue
            totals[ch] = real.get("pulses_per_cycle", 0) * real.get("repeats", 0)
        t_end = time.monotonic() + args.duration if args.duration else None
        try:
            while True:
                for ev in c.events(timeout=args.interval):
                    print(json.dumps(ev) if args.json else "event: %s" % format_event(ev), flush=True)
                st = c.status()
                active = [ch for ch in st["channels"] if ch["state"] in ("running", "armed")]
                if args.json:
                    for ch in st["channels"]:
                        ch["train_pulses"] = totals.get(ch["channel"])
                    print(json.dumps({"uptime_ms": st["uptime_ms"], "channels": st["channels"]}), flush=True)
                else:
                    parts = []
                    for ch in st["channels"]:
                        if ch["channel"] not in totals:
                            continue
                        text = "ch%d %s %d pulses" % (ch["channel"], ch["state"], ch["pulses"])
                        total = totals[ch["channel"]]
                        if total and ch["state"] != "idle":
                            text += " / %d (%d %%)" % (total, min(100, 100 * ch["pulses"] // total))
                        parts.append(text)
                    print("\r" + " | ".join(parts) + "   ", end="", flush=True)
                if not active and not args.follow:
                    break
                if t_end is not None and time.monotonic() >= t_end:
                    break
        except KeyboardInterrupt:
            pass
        if not args.json:
            print()
    return EXIT_OK


def cmd_virtual(args):
    kind = args.virtual or "cpython"
    electrodes = _electrodes(args)
    _check_virtual(args, electrodes, True)
    board = api._Board()  # the same virtual boards as picostim.open(virtual=...), served for other processes
    with board.stack:
        try:
            api._start_virtual(board, kind, args.virtual_channels, electrodes, getattr(args, "uf2", None),
                               watchdog_ms=None)
        except _loaded("picostim.virtual.wholechip", "WholeChipError") as e:
            raise UsageError(str(e)) from None
        path = board.path
        print(path, flush=True)
        print("virtual Pico (%s) with %d channels serving on %s; use: picostim --port %s info   (Ctrl-C to stop)"
              % (kind, args.virtual_channels, path, path), file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def cmd_flash(args):
    """Build (mpy-cross -march=armv6m), deploy (mpremote), soft reboot, verify HELLO (host/picostim/flash.py)."""
    from picostim import flash

    if args.virtual:
        raise UsageError("flash deploys to a board: give --port (virtual boards run the sources directly)")
    port = args.port
    if not port:
        try:
            port = transport.discover(serial_number=args.serial)
        except transport.TransportError:
            if not args.dry_run:
                raise
            port = "PORT"
    try:
        flash.flash(port, tree=args.tree or flash.DEFAULT_TREE, dry_run=args.dry_run, skip_build=args.no_build)
    except flash.FlashError as e:
        return _fail(str(e), EXIT_ERROR, False)
    return EXIT_OK


def cmd_run(args):
    """The main job: upload, start, capture, check against the file, plot."""
    from picostim import runner

    ps = paramfile.load(args.file)
    triggers = {n: t for n, t in ((1, args.trig1), (2, args.trig2)) if t}
    n_in = runner.trigger_input(ps.params)
    if triggers and not args.virtual:
        raise UsageError("--trig%d = %s: drives the virtual Pico's input; add --virtual (a board's TRIG%d is "
                         "wired to your signal source)" % (min(triggers), _show(",".join("%g" % t for t in
                                                                        triggers[min(triggers)])), min(triggers)))
    if args.virtual and n_in is not None and n_in not in triggers:
        raise UsageError('trigger = "%s": the train waits for TRIG%d and nothing drives it on the virtual Pico: '
                         "give --trig%d T[,T...] (edge times from the start, e.g. --trig%d 10ms)"
                         % (paramfile.P.TRIGGER_NAMES[ps.params["trigger"]], n_in, n_in, n_in))
    duration = args.duration
    if duration is None:
        duration = runner.default_duration_s(ps.params, ps.sequence) + (triggers[n_in][0] if n_in in triggers else 0)
    with connect(args, realtime=False) as stim:
        _check_channel(stim, args.channel)
        paramfile.check(ps, stim.client.limits)
        if stim.kind == "rp2040" and triggers:
            raise UsageError("--trig1/--trig2 drive the CPython virtual Pico's inputs; --virtual=rp2040 has none yet")
        result = stim.run(ps, duration, channel=args.channel, capture=args.capture, plot=args.plot,
                          triggers=triggers, analyzer=args.analyzer, samplerate=args.samplerate).result
    stopped = [f for f in result.faults if f["channel"] == args.channel]
    code = EXIT_SAFETY_STOP if stopped else EXIT_OK if result.report.ok else EXIT_CHECK_FAILED
    if stopped:
        f = stopped[0]
        print("picostim: error: channel %d = stopped at t=%.6f s: %s (a safety stop)"
              % (f["channel"], f["time_s"], _fault_text(f)), file=sys.stderr)
    elif not result.report.ok:
        _mismatch(result.report, args.capture or "the capture", args.file)
    if args.json:
        out = result.to_json()
        out["stopped_by_fault"] = bool(stopped)
        out["exit_code"] = code
        _print_json(out)
        return code
    print("%s on channel %d for %g s (%s)" % (ps.name or args.file, args.channel, duration,
                                             "virtual Pico: emulated PIO pins" if args.virtual else args.analyzer))
    for f in stopped:
        print("STOPPED: the firmware stopped channel %d at t=%.6f s: %s (exit %d)"
              % (f["channel"], f["time_s"], _fault_text(f), EXIT_SAFETY_STOP))
    if stopped:
        print("pulses before the stop:")
    print(result.report.summary())
    for f in result.faults:
        print("fault: channel %d %s at t=%.6f s (%s); pulses after the fault: %s"
              % (f["channel"], f["kind"], f["time_s"], _fault_text(f),
                 "?" if result.pulses_after_fault is None else result.pulses_after_fault))
    for label, path in (("capture", result.capture_path), ("plot", result.plot_path)):
        if path:
            print("%s: %s" % (label, path))
    return code


def _mismatch(report, capture, params):
    """Exit 3: the report goes to stdout; stderr gets the one-line verdict like every other error."""
    first = report.failures[0] if report.failures else "see the report"
    more = " (+%d more)" % (len(report.failures) - 1) if len(report.failures) > 1 else ""
    print("picostim: error: %s" % _one_line("capture = %s: does not match %s: %s%s" % (capture, params, first, more)),
          file=sys.stderr)


def _fault_text(f):
    if f["kind"] == "deadman":
        return "deadman: the host link was silent"
    return "electrode %s, %s" % (f["kind"], "at the compliance rail" if f["ohms"] >= 0x7FFFFFFF else "%d ohm" % f["ohms"])


def cmd_check(args):
    """Check any capture file (.sr or .vcd) against a parameter file; no board needed."""
    from picostim import runner

    ps = paramfile.load(args.params)
    paramfile.check(ps, _offline_limits())  # a file the firmware would refuse describes no capture
    trace, used = runner.load_capture(args.capture, args.channel, args.map)
    report = runner.check_trace(trace, ps.params, args.channel, trace.duration_s(), sequence=ps.sequence)
    if args.plot:
        runner.plot(trace, report, args.plot)
    if not report.ok:
        _mismatch(report, args.capture, args.params)
    if args.json:
        out = report.to_json()
        out["map"] = used
        _print_json(out)
    else:
        if used:
            print("capture lines: %s%s" % (", ".join("%s=%s" % kv for kv in used.items()),
                                          "" if args.map else " (the analyzer wiring of docs/HARDWARE.md; "
                                                              "--map to change)"))
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


def cmd_capture(args):
    """Record POS/NEG/RECOVERY/SYNC/TRIG1 with a sigrok-supported analyzer (no board commands)."""
    from picostim import runner
    from picostim.capture import sigrok

    trace = sigrok.capture(args.analyzer, args.samplerate, args.out, duration_s=args.duration,
                           channels=runner.wiring_for(args.channel))
    print("%s: %d samples at %g MS/s, channels %s" % (args.out, trace.n_samples, trace.samplerate_hz / 1e6,
                                                      ", ".join(trace.channels)))
    return EXIT_OK


# ---- parser -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``picostim: error: --timeout = 0: out of range (0 < x ≤ 3600 s)``,
    raised as UsageError (exit 2) instead of a usage block and sys.exit."""

    def error(self, message):
        m = re.match(r"argument ([^\s:/]+)(?:/\S+)?: (= .*)$", message)
        if m:  # our option types: "argument --timeout/-t: = 0: ..." -> "--timeout = 0: ..."
            raise UsageError("%s %s" % (m.group(1), m.group(2)))
        raise UsageError("%s (see: %s --help)" % (message, self.prog))


_CHANNEL = _number_type(int, 0, MAX_CHANNEL)
_SECONDS = _number_type(float, 0, MAX_RUN_S, lo_open=True, unit=" s")
_SAMPLERATE = _number_type(float, 0, 1e10, lo_open=True, unit=" Hz")


def _board_channels():
    from firmware import board

    return board.CHANNELS


def _slots():
    from firmware import storage

    return storage.SLOTS


def build_parser():
    p = _Parser(prog="picostim", description="picostim RP2040 pulse generator (research and bench "
                                             "use only; not a medical device)",
                epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", "-p", default=os.environ.get("PICOSTIM_PORT"),
                       help="serial device or pyserial URL (loop://, socket://host:port, /dev/pts/N); "
                            "default $PICOSTIM_PORT, else USB discovery")
    where.add_argument("--virtual", nargs="?", const="cpython", choices=VIRTUAL_KINDS,
                       help="start a fresh virtual Pico for this one command (state is not kept between commands); "
                            "--virtual=micropython runs firmware/main.py under the MicroPython unix port on shim "
                            "hardware (protocol and firmware logic, no PIO timing); --virtual=rp2040 boots a "
                            "MicroPython rp2 image (--uf2) in the rp2040js whole-chip emulator")
    p.add_argument("--uf2", default=os.environ.get("PICOSTIM_UF2"),
                   help="MicroPython rp2 image (.uf2, v1.22.0 or later) for --virtual=rp2040 (default $PICOSTIM_UF2)")
    p.add_argument("--serial", help="USB serial number (or prefix) of the board to use")
    p.add_argument("--timeout", type=_number_type(float, 0, 3600, lo_open=True, unit=" s"), default=1.0,
                   help="seconds to wait for each answer (default 1.0; 0 < S ≤ 3600)")
    p.add_argument("--retries", type=_number_type(int, 0, 100), default=3,
                   help="resends of a request without answer (default 3; 0..100)")
    p.add_argument("--virtual-channels", type=_number_type(int, 1, _board_channels()), default=_board_channels(),
                   help="channels of the virtual Pico (default and most %d, the board's)" % _board_channels())
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    p.add_argument("--electrode", action="append", metavar="R[,c=CAP][,leak=R][,compliance=V][,ch=N]",
                   help="virtual Pico electrode load, e.g. 1k or 2.2k,c=4.7u,ch=1 (default 1k, 10 µF; without ch= "
                        "every channel; repeatable; docs/SAFETY.md)")
    p.add_argument("--fault", action="append", metavar="KIND[:OHMS]@TIME[,key=value]",
                   help="inject an electrode fault on the virtual Pico at a virtual time: open@0.5s, short@500ms, "
                        "drift:10k@2s[,ramp=1s], intermittent@1s[,every=100ms,on=20ms], ok@3s (repaired); "
                        "add ,ch=N for one channel (default every channel); repeatable")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("info", help="firmware and protocol version, channels, limits")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("upload", help="validate a TOML parameter file and send it to a channel")
    s.add_argument("file")
    s.add_argument("--channel", "-c", type=_CHANNEL, default=0, help="channel (default 0)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_upload)

    s = sub.add_parser("validate", help="check parameter files against this firmware build's limits (offline)")
    s.add_argument("files", nargs="+")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("params", help="show the parameters on the device (requested vs realised)")
    s.add_argument("--channel", "-c", type=_CHANNEL, action="append")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_params)

    for name, default, text in (("start", "configured", "start trains (default: every configured channel)"),
                                ("stop", "all", "stop at the next pulse boundary (default: all channels)"),
                                ("trigger", "configured", "software trigger (default: every configured channel)"),
                                ("clear-fault", "all", "clear latched faults (default: all channels)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--channel", "-c", type=_CHANNEL, action="append", help="channel (repeatable)")
        s.set_defaults(func=_simple(name.replace("-", "_"), default))

    s = sub.add_parser("status", help="state, pulses, faults and link counters")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("impedance", help="measure electrode impedance (default: all channels)")
    s.add_argument("--channel", "-c", type=_CHANNEL, action="append")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_impedance)

    for name, func, text in (("save", cmd_save, "save a channel's parameters to a flash slot (atomic, CRC-checked)"),
                             ("load", cmd_load, "load a flash slot into a channel (validated like upload)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("slot", type=_number_type(int, 0, _slots() - 1), help="slot 0..%d" % (_slots() - 1))
        s.add_argument("--channel", "-c", type=_CHANNEL, default=0, help="channel (default 0)")
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=func)
    s = sub.add_parser("set-amplitude", help="change a running channel's amplitude at the next pulse boundary "
                                             "(e.g. 2.5mA, 2500uA; checked against every limit)")
    s.add_argument("amplitude", type=_amplitude_type, metavar="AMPLITUDE",
                   help="the new phase-1 amplitude: 2.5mA, 2500uA (a bare number is mA); phase 2 follows for "
                        "charge balance")
    s.add_argument("--channel", "-c", type=_CHANNEL, default=0, help="channel (default 0)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_set_amplitude)
    s = sub.add_parser("watch", help="live events and pulse counts until the trains end (or Ctrl-C)")
    s.add_argument("--interval", type=_number_type(float, 0, 3600, lo_open=True, unit=" s"), default=0.5)
    s.add_argument("--follow", action="store_true", help="keep watching after all channels are idle")
    s.add_argument("--duration", type=_SECONDS, help="stop watching after this many seconds")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=cmd_watch)

    s = sub.add_parser("run", help="upload, run, capture and check a parameter file (the main job)")
    s.add_argument("file")
    s.add_argument("--channel", "-c", type=_CHANNEL, default=0, help="channel (default 0)")
    s.add_argument("--duration", type=_SECONDS, help="seconds to run (default: the whole train, or 1 s)")
    s.add_argument("--capture", type=_out_type(".vcd", ".sr"), help="write the capture to OUT.vcd or OUT.sr")
    s.add_argument("--plot", type=_out_type(".png"), help="draw the first pulses with measured widths to OUT.png")
    s.add_argument("--analyzer", default="fx2lafw", help="sigrok driver of the logic analyzer (board runs)")
    s.add_argument("--samplerate", type=_SAMPLERATE, default=24e6, help="analyzer sample rate in Hz (board runs)")
    for n in (1, 2):
        s.add_argument("--trig%d" % n, type=_times_type, metavar="T[,T...]",
                       help="virtual Pico: drive TRIG%d with edges at these times from the start of the run "
                            "(first rising, then alternating), e.g. 10ms or 10ms,60ms for a gate" % n)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check", help="check a capture file against a parameter file (exit 3 if it does not match)")
    s.add_argument("capture", help="capture file (.sr or .vcd)")
    s.add_argument("--params", required=True, help="the TOML parameter file the capture should show")
    s.add_argument("--channel", "-c", type=_CHANNEL, default=0)
    s.add_argument("--map", type=_map_type, metavar="POS=D0,NEG=D1,...",
                   help="which capture channel carries which line (default: the capture's own POS/NEG/... "
                        "names, else the analyzer wiring of docs/HARDWARE.md: POS=D0,NEG=D1,RECOVERY=D2,"
                        "SYNC=D3,TRIG1=D4; the DAC bus lines SCK, MOSI, CS0..CS3, LDAC only by name or --map)")
    s.add_argument("--plot", type=_out_type(".png"), help="draw the first pulses with measured widths to OUT.png")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("capture", help="record the pins with a sigrok analyzer (wiring: docs/HARDWARE.md)")
    s.add_argument("out", type=_out_type(".sr", ".vcd"), help="OUT.sr or OUT.vcd")
    s.add_argument("--duration", type=_SECONDS, default=1.0)
    s.add_argument("--analyzer", default="fx2lafw", help="sigrok driver (e.g. fx2lafw; demo for a dry run)")
    s.add_argument("--samplerate", type=_SAMPLERATE, default=24e6)
    s.add_argument("--channel", "-c", type=_CHANNEL, default=0, help="stimulation channel wired to the analyzer")
    s.set_defaults(func=cmd_capture)

    s = sub.add_parser("ports", help="list serial ports; picostim boards are marked")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ports)

    s = sub.add_parser("flash", help="build the firmware (mpy-cross), deploy it with mpremote, verify HELLO")
    s.add_argument("--dry-run", action="store_true", help="build, then print the mpremote command lines only")
    s.add_argument("--no-build", action="store_true", help="deploy the existing tree as it is")
    s.add_argument("--tree", help="deploy tree (default build/firmware in the source checkout)")
    s.set_defaults(func=cmd_flash)

    s = sub.add_parser("virtual", help="serve a virtual Pico on a pty (prints its path) until Ctrl-C")
    s.set_defaults(func=cmd_virtual)
    return p


VIRTUAL_KINDS = ("cpython", "micropython", "rp2040")


def normalise_argv(argv):
    """``--virtual`` is optional-valued: spell a bare one ``--virtual=cpython`` (and ``--virtual KIND``
    as ``--virtual=KIND``) so argparse cannot take the subcommand for its value."""
    out = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--virtual":
            if i + 1 < len(argv) and argv[i + 1] in VIRTUAL_KINDS:
                a = "--virtual=" + argv[i + 1]
                i += 1
            else:
                a = "--virtual=cpython"
        out.append(a)
        i += 1
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    debug = "--debug" in argv  # known before parsing, so a parse error can show its traceback too
    as_json = False
    try:
        args = build_parser().parse_args(normalise_argv(argv))
        as_json = getattr(args, "json", False)
        return args.func(args)
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else EXIT_OK if e.code is None else EXIT_BAD_INPUT
    except (paramfile.ParamFileError, UsageError) + _loaded("picostim.capture.trace", "CaptureError") as e:
        return _fail(str(e), EXIT_BAD_INPUT, as_json, {"field": getattr(e, "key", None)}, debug)
    except DeviceError as e:
        return _fail(str(e), EXIT_BAD_INPUT, as_json, {"nack": e.nack}, debug)
    except api.SafetyFault as e:  # START/TRIGGER refused: the channel's fault is latched (a NACK)
        return _fail(str(e), EXIT_BAD_INPUT, as_json, {"nack": getattr(e.__cause__, "nack", None)}, debug)
    except api.DeviceRefused as e:  # a NACK, or a refusal on the host from the device's limits
        return _fail(str(e), EXIT_BAD_INPUT, as_json, {"nack": e.nack} if e.nack is not None else {"field": e.field},
                     debug)
    except (LinkError, transport.TransportError, OSError) + _loaded("picostim.capture.sigrok", "SigrokError") as e:
        return _fail(_os_message(e), EXIT_ERROR, as_json, None, debug)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: still one line (the test suite asserts this is never reached)
        return _fail("internal error: %s: %s (run with --debug for the traceback)" % (type(e).__name__, e),
                     EXIT_ERROR, as_json, None, debug)


def _loaded(module, name):
    """An exception class of a module that may not be imported yet (the capture package pulls in NumPy
    and Matplotlib; ``info`` should not wait for them): () when it is not, so nothing can be one."""
    mod = sys.modules.get(module)
    return (getattr(mod, name),) if mod is not None else ()


def _os_message(e):
    if isinstance(e, api.LinkError) and e.__cause__ is not None:  # the API's LinkError wraps the original
        e = e.__cause__
    if not isinstance(e, (LinkError, transport.TransportError)) and getattr(e, "strerror", None):
        return "%s: %s" % (e.filename, e.strerror) if e.filename else e.strerror
    cause = getattr(e, "__cause__", None)
    m = re.match(r"cannot open (.*?): ", str(e))
    if isinstance(e, transport.TransportError) and m and getattr(cause, "errno", None):
        return "--port = %s: cannot open it: %s" % (m.group(1), os.strerror(cause.errno))
    return str(e) or type(e).__name__


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # everything str.splitlines() breaks on, and more
MAX_MESSAGE = 1000


def _one_line(message):
    """Errors are one line: control characters (a newline in a TOML key...) escaped, length capped."""
    text = _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()), str(message))
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _fail(message, code, as_json, extra=None, debug=False):
    if debug:
        traceback.print_exc()
    message = _one_line(message)
    print("picostim: error: %s" % message, file=sys.stderr)
    if as_json:
        obj = {"error": message}
        obj.update(extra or {})
        _print_json(obj)
    return code


if __name__ == "__main__":
    sys.exit(main())
