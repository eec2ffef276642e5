"""``picostim`` command line: argument parsing and output formatting only (logic lives in client.py,
paramfile.py and transport.py).

Exit codes: 0 ok, 2 bad input or a refusal by the device (NACK), 1 link or other error, 3 a timing
check (``run``/``check``) found the capture does not match the parameters.

Each ``--virtual`` invocation starts a fresh virtual Pico that lives only for that command; to keep a
virtual board's state across commands run ``picostim virtual`` in one terminal and pass the pty path
it prints to ``--port`` (or set PICOSTIM_PORT).
"""

import argparse
import contextlib
import json
import os
import sys
import time

from picostim import paramfile, transport
from picostim.client import Client, DeviceError, LinkError, mask_of
from protocol import messages as M

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 3


class UsageError(Exception):
    """Bad input detected on the host (exit 2)."""


# ---- connection -------------------------------------------------------------------------------


@contextlib.contextmanager
def _virtual_board(channels, realtime=True, kind="cpython", electrodes=None):
    """A virtual Pico on a pty: real time for interactive commands, stepped (virtual) time for
    ``run``, which emulates the requested duration as fast as the emulator goes.

    ``kind="micropython"``: firmware/main.py itself under the MicroPython unix port on shim hardware
    (picostim/virtual/micropython_board.py): the board's entry point and protocol, no timing."""
    if kind == "micropython":
        from picostim.virtual.micropython_board import MicroPythonBoard

        if not realtime:
            raise UsageError("--virtual=micropython runs the firmware on shim hardware without PIO timing; "
                             "use --virtual (the CPython virtual Pico) for run/captures")
        if channels != 4:
            raise UsageError("--virtual=micropython has the board's 4 channels (firmware/board.py)")
        if electrodes is not None:
            raise UsageError("--electrode/--fault need the CPython virtual Pico (--virtual): the shim has no electrode model")
        with MicroPythonBoard() as board:
            yield None, board.path
        return
    from picostim.virtual.device import VirtualPico

    vp = VirtualPico(channels=channels, realtime=realtime, electrodes=electrodes)
    path = vp.open()
    try:
        yield vp, path
    finally:
        vp.close()


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
        raise UsageError(str(e)) from None


@contextlib.contextmanager
def connect(args, realtime=True):
    """Yield a Client for --port / --virtual / USB discovery; HELLO already done. With --virtual,
    ``client.virtual`` is the VirtualPico (None for a board)."""
    electrodes = _electrodes(args)  # bad --electrode/--fault (or without --virtual): exit 2 before connecting
    with contextlib.ExitStack() as stack:
        vp = None
        if args.virtual:
            vp, path = stack.enter_context(_virtual_board(args.virtual_channels, realtime, args.virtual, electrodes))
        elif args.port:
            path = args.port
        else:
            path = transport.discover(serial_number=args.serial)
        ser = transport.open_port(path)
        client = Client(ser, timeout=args.timeout, retries=args.retries)
        stack.callback(client.close)
        client.port_name = path
        client.virtual = vp
        client.hello()
        yield client


def _channels_mask(client, channels, default):
    """Mask from --channel (repeatable) or the default: 'configured' or 'all'."""
    n = client.channels
    if channels:
        for ch in channels:
            if not 0 <= ch < n:
                raise UsageError("--channel %d: the device has channels 0..%d" % (ch, n - 1))
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
    with connect(args) as c:
        info = dict(c.device)
        info["port"] = c.port_name
    if args.json:
        _print_json(info)
        return EXIT_OK
    print("port:             %s" % info["port"])
    print("firmware version: %s" % info["firmware_version"])
    print("protocol version: %d" % info["protocol_version"])
    print("board id:         %s" % info["board_id"])
    print("channels:         %d" % info["channels"])
    print("reset reason:     %s" % {0: "power-on", 1: "watchdog", 2: "soft"}.get(info["reset_reason"],
                                                                               info["reset_reason"]))
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


def format_comparison(channel, ps, result):
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
    rq = paramfile.requested_us(params)
    lines.append("%-22s %14s" % ("frequency [Hz]", paramfile._fmt_num(rq.get("frequency_hz", 0), 4)))
    extras = ["polarity %s" % rq["polarity"], "trigger %s" % rq["trigger"],
              "electrode %s mm²" % paramfile._fmt_num(rq["electrode_area_mm2"], 6)]
    if params["burst_pulses"]:
        extras.append("%d pulses per burst" % params["burst_pulses"])
    extras.append("tick %s ns" % paramfile._fmt_num(1e9 / realised["tick_hz"], 3))
    lines.append(", ".join(extras))
    lines.append("charge-balance residual per pulse: %.3f pC (phase 2 amplitude derived from phase 1 charge)"
                 % (paramfile._get(realised, "residual_fc", "residual_charge_fc") / 1000.0))
    return "\n".join(lines)


def _result_json(channel, ps, result):
    out = {"channel": channel,
           "requested": paramfile.requested_us(result["params"]),
           "realised": paramfile.realised_us(result["realised"])}
    if ps is not None:
        out["name"] = ps.name
        out["source"] = ps.source
    return out


def cmd_upload(args):
    ps = paramfile.load(args.file)  # a malformed file -> exit 2 before any connection
    with connect(args) as c:  # HELLO: the device's own limits, which may differ from this build's
        if not 0 <= args.channel < c.channels:
            raise UsageError("--channel %d: the device has channels 0..%d" % (args.channel, c.channels - 1))
        paramfile.check(ps, c.limits)  # out of range -> exit 2, nothing sent but HELLO
        result = c.set_params(args.channel, ps.params)
    if args.json:
        _print_json(_result_json(args.channel, ps, result))
    else:
        print(format_comparison(args.channel, ps, result))
    return EXIT_OK


def cmd_validate(args):
    """Offline: check files against this firmware build's limits (no board needed)."""
    bad = 0
    for f in args.files:
        try:
            ps = paramfile.load(f)
            paramfile.check(ps, _offline_limits())
            print("%s: ok (%s)" % (f, ps.name or "unnamed"))
        except paramfile.ParamFileError as e:
            print("%s: %s" % (f, e), file=sys.stderr)
            bad += 1
    return EXIT_BAD_INPUT if bad else EXIT_OK


def _offline_limits():
    from firmware.limits import LIMITS

    return LIMITS


def cmd_params(args):
    with connect(args) as c:
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
            print(format_comparison(ch, None, r) if r else "channel %d: no parameters" % ch)
            print()
    return EXIT_OK


def _simple(method, default):
    def run(args):
        with connect(args) as c:
            mask = _channels_mask(c, args.channel, default)
            getattr(c, method)(mask)
            print("%s: channel%s %s" % (method.replace("_", " "), "s" if bin(mask).count("1") > 1 else "",
                                        ", ".join(str(ch) for ch in _chan_list(mask))))
        return EXIT_OK

    return run


def cmd_status(args):
    with connect(args) as c:
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
        lines.append("%-8d %-8s %-7s %12d %10d Ω" % (ch["channel"], ch["state"], ch["fault"], ch["pulses"],
                                                    ch["impedance_ohm"]))
    lines.append("device link: " + ", ".join("%s %d" % kv for kv in st["counters"].items()))
    if "host_counters" in st:
        lines.append("host link:   " + ", ".join("%s %d" % kv for kv in st["host_counters"].items()))
    for ev in st.get("events", []):
        lines.append("event: %s" % format_event(ev))
    return "\n".join(lines)


def format_event(ev):
    return "t=%.6f s channel %d %s (value %d)" % (ev["time_us"] / 1e6, ev["channel"], ev["kind"], ev["value"])


def cmd_impedance(args):
    with connect(args) as c:
        mask = _channels_mask(c, args.channel, "all")
        readings = c.impedance(mask)
    if args.json:
        _print_json(readings)
    else:
        for r in readings:
            print("channel %d: %d Ω (%s)" % (r["channel"], r["ohms"], r["class"]))
    return EXIT_OK


def cmd_save(args):
    with connect(args) as c:
        r = c.save(args.channel, args.slot)
    if args.json:
        _print_json(r)
    else:
        print("channel %d saved to slot %d (CRC 0x%04X)" % (args.channel, r["slot"], r["crc"]))
    return EXIT_OK


def cmd_load(args):
    with connect(args) as c:
        r = c.load(args.channel, args.slot)
    if args.json:
        _print_json(r)
    else:
        print("slot %d loaded into channel %d" % (args.slot, args.channel))
    return EXIT_OK


def cmd_watch(args):
    """Live status: events as they arrive, pulses and train progress, until Ctrl-C or all idle."""
    with connect(args) as c:
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
    with _virtual_board(args.virtual_channels, kind=kind, electrodes=_electrodes(args)) as (vp, path):
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
        print("picostim: error: %s" % e, file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_run(args):
    """The main job: upload, start, capture, check against the file, plot."""
    from picostim import runner

    ps = paramfile.load(args.file)
    duration = args.duration if args.duration is not None else runner.default_duration_s(ps.params)
    with connect(args, realtime=False) as c:
        if not 0 <= args.channel < c.channels:
            raise UsageError("--channel %d: the device has channels 0..%d" % (args.channel, c.channels - 1))
        paramfile.check(ps, c.limits)
        if c.virtual is not None:
            result = runner.run_virtual(c.virtual, c, ps.params, duration, channel=args.channel,
                                        capture=args.capture, plot_png=args.plot)
        else:
            result = runner.run_board(c, ps.params, duration, driver=args.analyzer, samplerate=args.samplerate,
                                      channel=args.channel, capture=args.capture or "picostim-capture.sr",
                                      plot_png=args.plot)
    if args.json:
        _print_json(result.to_json())
    else:
        print("%s on channel %d for %g s (%s)" % (ps.name or args.file, args.channel, duration,
                                                 "virtual Pico: emulated PIO pins" if args.virtual else args.analyzer))
        print(result.report.summary())
        for f in result.faults:
            print("fault: channel %d %s at t=%.6f s (%s); pulses after the fault: %s"
                  % (f["channel"], f["kind"], f["time_s"],
                     "at the compliance rail" if f["ohms"] >= 0x7FFFFFFF else "%d ohm" % f["ohms"],
                     "?" if result.pulses_after_fault is None else result.pulses_after_fault))
        for label, path in (("capture", result.capture_path), ("plot", result.plot_path)):
            if path:
                print("%s: %s" % (label, path))
    return EXIT_OK if result.report.ok else EXIT_CHECK_FAILED


def cmd_check(args):
    """Check any capture file (.sr or .vcd) against a parameter file; no board needed."""
    from picostim import runner

    ps = paramfile.load(args.params)
    report = runner.check_capture(args.capture, ps.params, channel=args.channel, plot_png=args.plot)
    if args.json:
        _print_json(report.to_json())
    else:
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


def build_parser():
    p = argparse.ArgumentParser(prog="picostim", description="picostim RP2040 pulse generator (research and bench "
                                                             "use only; not a medical device)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", "-p", default=os.environ.get("PICOSTIM_PORT"),
                       help="serial device or pyserial URL (loop://, socket://host:port, /dev/pts/N); "
                            "default $PICOSTIM_PORT, else USB discovery")
    where.add_argument("--virtual", nargs="?", const="cpython", choices=VIRTUAL_KINDS,
                       help="start a fresh virtual Pico for this one command (state is not kept between commands); "
                            "--virtual=micropython runs firmware/main.py under the MicroPython unix port on shim "
                            "hardware (protocol and firmware logic, no PIO timing)")
    p.add_argument("--serial", help="USB serial number (or prefix) of the board to use")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each answer (default 1.0)")
    p.add_argument("--retries", type=int, default=3, help="resends of a request without answer (default 3)")
    p.add_argument("--virtual-channels", type=int, default=4, help="channels of the virtual Pico (default 4)")
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
    s.add_argument("--channel", "-c", type=int, default=0, help="channel (default 0)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_upload)

    s = sub.add_parser("validate", help="check parameter files against this firmware build's limits (offline)")
    s.add_argument("files", nargs="+")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("params", help="show the parameters on the device (requested vs realised)")
    s.add_argument("--channel", "-c", type=int, action="append")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_params)

    for name, default, text in (("start", "configured", "start trains (default: every configured channel)"),
                                ("stop", "all", "stop at the next pulse boundary (default: all channels)"),
                                ("trigger", "configured", "software trigger (default: every configured channel)"),
                                ("clear-fault", "all", "clear latched faults (default: all channels)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--channel", "-c", type=int, action="append", help="channel (repeatable)")
        s.set_defaults(func=_simple(name.replace("-", "_"), default))

    s = sub.add_parser("status", help="state, pulses, faults and link counters")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("impedance", help="measure electrode impedance (default: all channels)")
    s.add_argument("--channel", "-c", type=int, action="append")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_impedance)

    for name, func, text in (("save", cmd_save, "save a channel's parameters to a flash slot (atomic, CRC-checked)"),
                             ("load", cmd_load, "load a flash slot into a channel (validated like upload)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("slot", type=int, help="slot 0..7")
        s.add_argument("--channel", "-c", type=int, default=0, help="channel (default 0)")
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=func)
    s = sub.add_parser("watch", help="live events and pulse counts until the trains end (or Ctrl-C)")
    s.add_argument("--interval", type=float, default=0.5)
    s.add_argument("--follow", action="store_true", help="keep watching after all channels are idle")
    s.add_argument("--duration", type=float, help="stop watching after this many seconds")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=cmd_watch)

    s = sub.add_parser("run", help="upload, run, capture and check a parameter file (the main job)")
    s.add_argument("file")
    s.add_argument("--channel", "-c", type=int, default=0, help="channel (default 0)")
    s.add_argument("--duration", type=float, help="seconds to run (default: the whole train, or 1 s)")
    s.add_argument("--capture", help="write the capture to OUT.vcd or OUT.sr")
    s.add_argument("--plot", help="draw the first pulses with measured widths to OUT.png")
    s.add_argument("--analyzer", default="fx2lafw", help="sigrok driver of the logic analyzer (board runs)")
    s.add_argument("--samplerate", type=float, default=24e6, help="analyzer sample rate in Hz (board runs)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check", help="check a capture file against a parameter file (exit 3 if it does not match)")
    s.add_argument("capture", help="capture file (.sr or .vcd)")
    s.add_argument("--params", required=True, help="the TOML parameter file the capture should show")
    s.add_argument("--channel", "-c", type=int, default=0)
    s.add_argument("--plot", help="draw the first pulses with measured widths to OUT.png")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("capture", help="record the pins with a sigrok analyzer (wiring: docs/HARDWARE.md)")
    s.add_argument("out", help="OUT.sr or OUT.vcd")
    s.add_argument("--duration", type=float, default=1.0)
    s.add_argument("--analyzer", default="fx2lafw", help="sigrok driver (e.g. fx2lafw; demo for a dry run)")
    s.add_argument("--samplerate", type=float, default=24e6)
    s.add_argument("--channel", "-c", type=int, default=0, help="stimulation channel wired to the analyzer")
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


VIRTUAL_KINDS = ("cpython", "micropython")


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
    args = build_parser().parse_args(normalise_argv(sys.argv[1:] if argv is None else list(argv)))
    as_json = getattr(args, "json", False)
    try:
        return args.func(args)
    except (paramfile.ParamFileError, UsageError) as e:
        return _fail(str(e), EXIT_BAD_INPUT, as_json, {"field": getattr(e, "key", None)})
    except DeviceError as e:
        return _fail(str(e), EXIT_BAD_INPUT, as_json, {"nack": e.nack})
    except (LinkError, transport.TransportError, OSError) as e:
        return _fail(str(e), EXIT_ERROR, as_json)
    except KeyboardInterrupt:
        return 130


def _fail(message, code, as_json, extra=None):
    print("picostim: error: %s" % message, file=sys.stderr)
    if as_json:
        obj = {"error": message}
        obj.update(extra or {})
        _print_json(obj)
    return code


if __name__ == "__main__":
    sys.exit(main())
