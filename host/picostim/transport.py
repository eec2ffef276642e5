"""Opening the link to a board: a serial device path or any pyserial URL, and USB discovery.

``open_port("/dev/ttyACM0")``, ``open_port("/dev/pts/5")`` (a virtual Pico), ``open_port("loop://")``,
``open_port("socket://host:port")`` all return a pyserial object; :func:`find_boards` lists the USB
serial ports that look like a Raspberry Pi RP2040 running MicroPython (or a given VID/PID/serial).
"""

import serial
import serial.tools.list_ports

RPI_VID = 0x2E8A  # Raspberry Pi
MICROPYTHON_PICO_PID = 0x0005  # MicroPython's Pico USB CDC
KNOWN_PIDS = (MICROPYTHON_PICO_PID,)
DEFAULT_BAUD = 115200  # ignored by USB CDC and ptys; matters for a UART


class TransportError(OSError):
    """No port could be opened or found."""


def open_port(port, baudrate=DEFAULT_BAUD, timeout=0.02, exclusive=True):
    """Open ``port`` (device path or pyserial URL such as ``loop://``, ``socket://h:p``, ``rfc2217://``).

    ``timeout`` is the per-read timeout of the returned object: the client polls with short reads.
    ``exclusive`` (default) locks a local serial device so that a second host program cannot open it
    and steal the answers."""
    try:
        ser = serial.serial_for_url(port, baudrate=baudrate, timeout=timeout, write_timeout=2, do_not_open=True)
        if exclusive and hasattr(ser, "exclusive"):
            try:
                ser.exclusive = True  # two hosts on one board would steal each other's responses
            except (ValueError, AttributeError, serial.SerialException):
                pass
        ser.open()
    except (serial.SerialException, ValueError, OSError) as e:
        raise TransportError("cannot open %s: %s" % (port, e)) from e
    return ser


def list_ports():
    """All serial ports: list of dicts (device, vid, pid, serial_number, description, manufacturer,
    picostim: whether it looks like a board)."""
    out = []
    for p in sorted(serial.tools.list_ports.comports(), key=lambda p: p.device):
        out.append({
            "device": p.device,
            "vid": p.vid,
            "pid": p.pid,
            "serial_number": p.serial_number,
            "description": p.description,
            "manufacturer": p.manufacturer,
            "location": p.location,
            "picostim": is_board(p.vid, p.pid),
        })
    return out


def is_board(vid, pid, want_vid=RPI_VID, want_pids=KNOWN_PIDS):
    return vid == want_vid and (want_pids is None or pid in want_pids)


def find_boards(vid=RPI_VID, pid=None, serial_number=None):
    """Ports that match ``vid`` (default Raspberry Pi), ``pid`` (default MicroPython's Pico CDC) and,
    if given, the USB serial number (exact or a unique prefix, case-insensitive)."""
    pids = KNOWN_PIDS if pid is None else (pid,)
    found = [p for p in list_ports() if is_board(p["vid"], p["pid"], vid, pids)]
    if serial_number:
        sn = serial_number.lower()
        found = [p for p in found if (p["serial_number"] or "").lower().startswith(sn)]
    return found


def discover(serial_number=None, vid=RPI_VID, pid=None):
    """Device path of the only matching board; TransportError if none or several."""
    found = find_boards(vid, pid, serial_number)
    if not found:
        what = "serial number %s" % serial_number if serial_number else "VID:PID %04X:%04X" % (
            vid, MICROPYTHON_PICO_PID if pid is None else pid)
        raise TransportError("no picostim board found (%s); give --port PATH or URL, or use --virtual" % what)
    if len(found) > 1:
        raise TransportError("several boards found (%s); choose one with --port or --serial"
                             % ", ".join("%s [%s]" % (p["device"], p["serial_number"]) for p in found))
    return found[0]["device"]


def format_ports(ports):
    """Human table for ``picostim ports``."""
    if not ports:
        return "no serial ports found"
    lines = ["%-22s %-9s %-18s %s" % ("DEVICE", "VID:PID", "SERIAL", "DESCRIPTION")]
    for p in ports:
        vp = "%04X:%04X" % (p["vid"], p["pid"]) if p["vid"] is not None else "-"
        mark = "  <- picostim board" if p["picostim"] else ""
        lines.append("%-22s %-9s %-18s %s%s" % (p["device"], vp, p["serial_number"] or "-", p["description"] or "", mark))
    return "\n".join(lines)
