"""The single pin map and clock of the picostim board (Raspberry Pi Pico, RP2040). Pure data.

Nothing else in the firmware names a GPIO number: the HAL, the virtual Pico and the docs read them here.

GPIO budget (the Pico exposes GP0-22 and GP26-28): 4 channels x (POS, NEG, RECOVERY) + SYNC = 13,
triggers 2, DAC SPI 2 + 4 chip selects + LDAC, ADC mux select 2, ADC 1 = 25 of 26. That is why:
- channels 1-3 are 3-pin groups with OUT_COUNT 3 (the word's SYNC bit is simply not wired; a 4-pin
  group would make channel n's 4th pin channel n+1's POS, a second writer on a drive pin);
- the electrode voltage of all 4 channels goes through an external 4:1 analog mux (74HC4052 half or
  TMUX1104) into ADC0 (GP26): the RP2040 has only 3 external ADC inputs (GP26-28), and one mux keeps
  every channel on the same ADC path (same offset and gain, one calibration).

Before the HAL constructor runs (reset, ROM, MicroPython start-up) no pin is driven: every GPIO's
function is NULL and its pad resets with the internal pull-down on (PDE = 1), so the drive lines sit
weakly low, not floating; the board still fits external pull-downs (docs/HARDWARE.md, Wiring).
GP0/GP1 (ch0 POS/NEG) are also the pico-sdk default UART0 TX/RX: a MicroPython build with a UART REPL
would drive ch0 POS high from start-up on. Use a USB-REPL image only, or move channel 0.
"""

BOARD_ID = "picostim-pico-4ch-r1"

# ---- clock ---------------------------------------------------------------------------------------
SYS_CLK_HZ = 125_000_000  # machine.freq() is set to this at boot; 1 PIO tick = 8 ns
PIO_CLKDIV = 1  # timing resolution is one system clock

# ---- dead time ------------------------------------------------------------------------------------
# Minimum idle (all of POS, NEG, RECOVERY low) between any two different drive states of a channel:
# phase 1 -> phase 2 (an interphase below it is realised as this), phase 2 -> RECOVERY, and the end
# of a pulse -> the next pulse. It covers the H-bridge / gate-driver turn-off and propagation delays
# and the RP2040's pad-to-pad skew, so one leg is off before the other turns on (shoot-through).
# 1 us = 125 PIO ticks: an engineering choice, rationale and sources in docs/SAFETY.md (Dead time).
DEAD_TIME_NS = 1_000

# ---- stimulation channels ------------------------------------------------------------------------
CHANNELS = 4
# Per channel: POS, NEG, RECOVERY consecutive from OUT_BASE; channel 0 adds SYNC as its 4th pin.
CH_OUT_BASE = (0, 4, 7, 10)
CH_OUT_COUNT = (4, 3, 3, 3)  # out pins, 4 writes 4 bits; pins beyond OUT_COUNT are not driven
CH_POS = (0, 4, 7, 10)
CH_NEG = (1, 5, 8, 11)
CH_RECOVERY = (2, 6, 9, 12)
SYNC_PIN = 3  # high during every pulse of channel 0 (phase 1 start to phase 2 end)
SYNC_CHANNEL = 0

# All four state machines in one PIO block so a multi-channel start is one write of the SM enable
# mask (same PIO cycle), and the 7-instruction program is loaded once. PIO1 is left free.
CH_PIO = (0, 0, 0, 0)
CH_SM = (0, 1, 2, 3)

# ---- inputs --------------------------------------------------------------------------------------
TRIG1_PIN = 14  # TTL trigger inputs (5 V tolerant front end on the board); a channel's SM in_base
TRIG2_PIN = 15  # is its trigger pin, so the PIO itself waits on the edge / gate
TRIG_PINS = (TRIG1_PIN, TRIG2_PIN)
LED_PIN = 25  # on-board status LED

# ---- electrode voltage ADC -----------------------------------------------------------------------
ADC_PIN = 26  # ADC0; all channels through the external 4:1 mux
ADC_INPUT = 0
ADC_MUX_SEL_PINS = (16, 17)  # mux A0, A1
CH_ADC_MUX = (0, 1, 2, 3)  # mux input per channel
ADC_MUX_SETTLE_NS = 1_000  # allow after switching the mux before a conversion
ADC_BITS = 12  # machine.ADC.read_u16() scales to 16 bits
ADC_VREF_UV = 3_300_000
# Front end: differential electrode voltage, divided into 0..3.3 V (compliance up to 16.5 V).
ELECTRODE_UV_PER_ADC_UV = 5
ADC_SPARE_PIN = 28  # ADC2 free (e.g. compliance rail monitor)

# ---- amplitude DAC: one MCP4822 (dual 12-bit, SPI) per channel ----------------------------------
# DAC A sets the POS-direction current, DAC B the NEG-direction current, so both phases of an
# asymmetric pulse are set before the pulse and no DAC write ever happens mid-pulse.
DAC_SPI_ID = 0
DAC_SCK_PIN = 18
DAC_MOSI_PIN = 19
DAC_BAUD = 20_000_000  # MCP4822 maximum SCK
CH_DAC_CS = (20, 21, 22, 27)  # active low, one DAC per channel
DAC_LDAC_PIN = 13  # shared, active low: latch A and B of all DACs together
DAC_BITS = 12
DAC_MAX_CODE = 4095
# Current = code * DAC_FULL_SCALE_UA / 4096 (MCP4822: Vout = 2.048 V * code / 4096 at gain 1x, into a
# 204.8 ohm sense resistor of the V-to-I stage). LSB = 2.5 uA; code 4000 = 10 mA (limits.py maximum).
DAC_FULL_SCALE_UA = 10_240
# (DAC A drives the POS-direction current, DAC B the NEG direction; the MCP4822 command words are
# built in firmware/dac_bus.py)
DAC_SETTLE_NS = 4_500  # MCP4822 output settling (datasheet, typical): a new code is usable after it
# DAC bus state machine (firmware/pio/dac.pio, docs/ARCHITECTURE.md "DAC bus"): PIO1 SM0 writes the
# DACs at pulse boundaries. SCK is its side-set pin; its OUT pins run from MOSI over the chip selects
# (GP19..GP27: MOSI, CS0-2, GP23-26 unused by PIO1, CS3). LDAC is held low (outputs follow CS).
DAC_PIO = 1
DAC_SM = 0

# Crash path (firmware/main.py, HAL safe_state): after an exception the streams are stopped at their
# next pulse boundary and the HAL waits at most this long (feeding the watchdog) for them to drain
# before it halts the state machines, aborts the DMA and shuts the DACs down. Half the watchdog
# timeout. Rationale and the residual case (a final entry longer than this): docs/SAFETY.md §7.
SAFE_STOP_US = 1_000_000
