"""Hard safety limits of this firmware build. Nothing received over the link can raise them.

The host learns them from HELLO and checks the same rules (protocol.params.validate) for a friendly
message, but the decision that counts is the firmware's. Sources for the figures are in
docs/SAFETY.md.
"""

from firmware import board, dac_bus

LIMITS = {
    "max_amplitude_ua": 10000,  # 10 mA: the bench current source's full scale
    "max_charge_nc": 5000,  # 5 µC per phase
    "shannon_k_centi": 185,  # Shannon (1992) k = 1.85
    "min_period_ns": 100000,  # 10 kHz maximum pulse rate
    "max_duty_permille": 500,  # active phases at most half of each period
    "min_phase_ns": 40,  # 5 PIO ticks: the shortest segment the PIO program can produce
    "max_phase_ns": 10000000,  # 10 ms
    "max_interphase_ns": 10000000,  # 10 ms
    "max_recovery_ns": 100000000,  # 100 ms
    "max_duration_ns": 86400000000000,  # 24 h for periods, delays and trains
    # Ramps (soft start / soft stop): the DAC bus state machine changes the amplitude only after a
    # pulse's end (docs/ARCHITECTURE.md "DAC bus"). 60 s covers the clinical soft starts (seconds);
    # the pulse count is also bounded (max_ramp_pulses) so the DAC op list stays small (pulse_engine
    # MAX_RAMP_OPS words): a time ramp longer than max_ramp_pulses pulses is refused too.
    "max_ramp_ns": 60000000000,
    "max_burst_pulses": 10000,
    "min_electrode_area_um2": 100,
    # Idle between two different drive states (board.DEAD_TIME_NS): an interphase below it is
    # realised as it, and the period must leave it after the pulse (protocol.params.validate).
    "min_dead_time_ns": board.DEAD_TIME_NS,
    "max_ramp_pulses": 1000,
    # Idle after a pulse when the amplitude changes at its end (ramps, SET_AMPLITUDE): the DAC bus
    # writes plus the MCP4822's settling, dac_bus.UPDATE_TICKS (8 µs at 125 MHz), in ns.
    "min_update_idle_ns": -(-dac_bus.UPDATE_TICKS * 1000000000 // board.SYS_CLK_HZ),
    # Custom sequences (firmware/sequence.py): records live in flash (10 bytes a pulse: 100 KB a
    # channel at the limit, 400 KB for four: never in the ~190 KB heap). Pulse Pal 2 plays ~5,000.
    "max_sequence_pulses": 10000,
    # Shortest interval between two onsets of a sequence (period_ns in sequence mode). A regular train
    # repeats one ring entry; a sequence's entries are rewritten pulse by pulse by the main loop (one
    # ring entry and up to 3 DAC op words per pulse, read from flash 32 records at a time) with a
    # bounded lookahead (126 entries), so the CPU must keep up with the pulse rate whatever else the
    # loop does (a host frame, monitoring, a GC pass). Measured on the emulated M0+ (BENCHMARKS.md §8):
    # the feed costs ~0.76 ms of CPU per pulse; at 1 ms the worst main-loop iteration (104 ms) came
    # within reach of the 126 ms lookahead, so one SET_PARAMS (~78 ms) could run the ring dry. 2 ms
    # gives a 252 ms lookahead against a 59 ms worst iteration and ~38 % of the CPU.
    "min_sequence_interval_ns": 2000000,
}
