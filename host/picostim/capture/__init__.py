"""Captures: edge-based traces, VCD and sigrok .sr files, sigrok-cli, the timing analyzer and the plot.

Typical use (what ``picostim capture/check`` call)::

    from picostim.capture import read_capture, analyze, plot
    trace = read_capture("run.sr")                      # or .vcd
    report = analyze(trace, channel=0, expected={"phase1_us": 200, "period_us": 50_000})
    plot(trace, report, "run.png")
    print(report.summary()); report.to_json()
"""

from .analyzer import PIO_CLOCK_HZ, Report, analyze, channel_names
from .sigrok import (TimingResult, build_capture_command, capture, read_capture, read_sr, run_timing_decoder,
                     run_spi_decoder, sigrok_cli_path, write_capture, write_sr)
from .plot import plot
from .trace import Channel, Trace
from .vcd import read_vcd, write_vcd


__all__ = ["Channel", "Trace", "PIO_CLOCK_HZ", "Report", "analyze", "channel_names", "read_vcd", "write_vcd",
           "read_sr", "write_sr", "read_capture", "write_capture", "capture", "build_capture_command",
           "run_timing_decoder", "run_spi_decoder", "TimingResult", "sigrok_cli_path", "plot"]
