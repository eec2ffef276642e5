// picostim whole-chip virtual board: npm rp2040js 1.4.1 with the documented patches picostim's firmware
// depends on. No rp2040js source is copied or forked; every patch wraps or replaces a method of the
// installed package at run time and is tested against a datasheet fact (tests/test_wholechip_patches.py
// runs selftest.mjs, no MicroPython image needed).
//
// Patches (RP2040 datasheet section in brackets). The state machine's own cycle semantics (only
// enabled SMs step, delay cycles, WAIT release, 2-cycle input synchroniser, 8-deep joined TX FIFO,
// pad loop-back of GPIO_IN, TXSTALL, DMA ABORT/MULTI_CHAN_TRIGGER reads) are helper regbus's patches
// in pio_patches.mjs (each tested in tests/test_hal_regbus.py); this module applies all of them and adds:
//  P1 lock-step PIO clock [2.15 clk_sys drives the PIO; 3.5.5 CLKDIV 1.0 = one PIO cycle per system
//     clock]: the PIO advances exactly one cycle per emulated CPU cycle, also while the CPU sleeps
//     in WFI/WFE (the clock jumps to the next alarm). Stock rp2040js runs 1,000 PIO steps per
//     JavaScript macrotask, unrelated to emulated time, so DMA and CPU see a PIO running at an
//     arbitrary speed.
//  P3 BOOTSEL released [Pico datasheet: QSPI_SS pulled up, the button pulls it to ground]: stock
//     rp2040js reads QSPI_SS low, so rp2.bootsel_button() reads "pressed" and picostim's main.py stays
//     at the REPL.
//  P5 ADC from the electrode model [4.9.2: a conversion samples its input when it starts and takes
//     96 cycles of the 48 MHz ADC clock = 2 us]: stock rp2040js returns channelValues[] read at the end
//     of the conversion. ADC0 (GP26) shows what picostim's analog front end would: the 4:1 mux
//     (GP16/GP17) selects a channel, whose electrode voltage comes from the current its MCP4822
//     drives in the direction of its POS/NEG pins, through the Randles model of
//     host/picostim/virtual/electrode.py (ported below). The MCP4822s read what the board's DACs
//     would [MCP4822 datasheet: SDI sampled on SCK rising edges while CS is low, the 16-bit command
//     taken at the CS rising edge; with LDAC low the output follows at once, else at LDAC's falling
//     edge]: from the pads (SCK GP18, MOSI GP19: the DAC bus state machine on PIO1) and from the
//     SPI0 bytes (the CPU's boot / crash-path writes; rp2040js has no SPI pads).
import { RP2040 } from 'rp2040js';
import { ALL_PATCHES, applyPioPatches, padLevel } from './pio_patches.mjs';

export const CYCLE_NS = 8; // 125 MHz: rp2040js's SimulationClock and the firmware's machine.freq()

// ---- board wiring (firmware/board.py; passed in by the launcher, these are its defaults) ----------
export const DEFAULT_BOARD = {
  pos: [0, 4, 7, 10], neg: [1, 5, 8, 11], dacCs: [20, 21, 22, 27], ldac: 13, dacSck: 18, dacMosi: 19, muxSel: [16, 17],
  adcInput: 0, dacFullScaleUa: 10240, electrodeUvPerAdcUv: 5, adcVrefUv: 3300000, adcBits: 12,
};

// ---- electrode model: the semantics of host/picostim/virtual/electrode.py ------------------------
export function seriesAt(el, tS) {
  let r = el.r_series;
  const faults = [...(el.faults || [])].sort((a, b) => a.at_s - b.at_s);
  for (const f of faults) {
    if (tS < f.at_s) break;
    if (f.kind === 'open') r = 1e9;
    else if (f.kind === 'short') r = 1.0;
    else if (f.kind === 'ok') r = el.r_series;
    else if (f.kind === 'drift') {
      const frac = f.ramp_s > 0 ? Math.min(1, (tS - f.at_s) / f.ramp_s) : 1;
      r = r + (f.ohms - r) * frac;
    } else if (f.kind === 'intermittent') {
      if ((tS - f.at_s) % f.every_s < f.on_s) r = 1e9;
    }
  }
  return r;
}

export function electrodeVoltage(el, currentA, tPulseS, tS) {
  const r = seriesAt(el, tS);
  let vdl;
  if (el.r_faradaic == null) vdl = (currentA * tPulseS) / el.c_dl;
  else {
    const tau = el.r_faradaic * el.c_dl;
    vdl = currentA * el.r_faradaic * (1 - Math.exp(-tPulseS / tau));
  }
  const v = currentA * r + vdl;
  return Math.max(-el.compliance_v, Math.min(el.compliance_v, v));
}

export const DEFAULT_ELECTRODE = { r_series: 1000, c_dl: 10e-6, r_faradaic: null, compliance_v: 12, faults: [] };

function loadFlash(mcu, flash) {
  mcu.flash.set(flash.subarray(0, Math.min(flash.length, mcu.flash.length)), 0);
}

/**
 * Create a patched RP2040. opts: {bootrom: Uint32Array, flash: Uint8Array (whole flash image),
 * electrodes: [..per channel], board: DEFAULT_BOARD overrides,
 * pioPatches: names from pio_patches.mjs (default all)}.
 */
export async function createChip(opts = {}) {
  const mcu = new RP2040();
  if (opts.bootrom) mcu.loadBootrom(opts.bootrom);
  if (opts.flash) loadFlash(mcu, opts.flash);
  mcu.logger = { debug() {}, info() {}, warn() {}, error() {} };
  const chip = new Chip(mcu, opts);
  return chip;
}

export class Chip {
  constructor(mcu, opts) {
    this.mcu = mcu;
    this.board = { ...DEFAULT_BOARD, ...(opts.board || {}) };
    this.electrodes = (opts.electrodes || []).map((e) => ({ ...DEFAULT_ELECTRODE, ...e }));
    while (this.electrodes.length < this.board.pos.length) this.electrodes.push({ ...DEFAULT_ELECTRODE });
    this.cycle = 0; // emulated system-clock cycles since reset (the PIO cycle count: lock-step)
    // Patches can be switched off (selftest.mjs --no-patches shows each check failing on stock rp2040js).
    this.lockstep = opts.lockstep !== false;
    this.pioPatches = opts.pioPatches || (this.lockstep ? ALL_PATCHES : []); // regbus's (pio_patches.mjs)
    this.recording = 0; // GPIO mask whose edges are recorded
    this.edges = []; // [cycle, pin, level] while recording
    this.smEnables = []; // [cycle, pio, mask] on every CTRL write that enables state machines
    this.adcLog = []; // [cycle, channel, code] of every conversion (for tests/benchmarks)
    this.patchLockstepPio();
    this.bootselPressed = !!opts.bootselPressed;
    if (opts.bootsel !== false) this.patchBootsel();
    this.patchRecording();
    this.patchAdcElectrode(opts.adcModel !== false);
    if (opts.timerStartUs) this.patchTimerStart(opts.timerStartUs);
  }

  // ---- P1 + P2: lock-step PIO, enabled state machines only ------------------------------------
  // The per-cycle semantics of a state machine (only enabled SMs step, delay cycles, WAIT release,
  // synchroniser, FIFO join, pad loop-back) are regbus's patches in pio_patches.mjs; this class links
  // them to the CPU: Chip.run() gives the PIO exactly one cycle per emulated CPU cycle (also while
  // the CPU sleeps in WFI/WFE).
  patchLockstepPio() {
    const chip = this;
    this.pioCtl = applyPioPatches(this.mcu, this.pioPatches);
    for (const pio of this.mcu.pio) {
      const write = pio.writeUint32.bind(pio);
      pio.writeUint32 = (offset, value) => {
        write(offset, value);
        pio.checkChangedPins(); // SMx_INSTR / pin writes by the CPU reach the pads at once
        if (offset === 0 || offset === 0x2000 || offset === 0x3000) { // CTRL (and its set/clr aliases)
          const mask = pio.machines.reduce((m, sm, i) => m | (sm.enabled ? 1 << i : 0), 0);
          chip.smEnables.push([chip.cycle, pio.index, mask]);
        }
      };
    }
  }

  /** One PIO cycle of every enabled state machine of every PIO block (P1, P2). */
  stepPio() {
    const ctl = this.pioCtl;
    ctl.tick();
    for (const pio of this.mcu.pio) {
      for (const sm of pio.machines) {
        if (sm.enabled) { ctl.stepPio(pio); break; }
      }
    }
  }

  pioActive() {
    if (!this.lockstep) return false;
    for (const pio of this.mcu.pio) for (const sm of pio.machines) if (sm.enabled) return true;
    return false;
  }

  /** Run the CPU (and the PIO in lock-step) for at least n cycles. */
  run(n) {
    const { mcu } = this;
    const clock = mcu.clock;
    const end = this.cycle + n;
    const core = mcu.core;
    while (this.cycle < end) {
      let cycles;
      if (core.waiting) {
        // WFI/WFE: nothing executes until the next alarm (timer, ADC, USB); the PIO keeps running.
        const toAlarm = clock.nanosToNextAlarm;
        cycles = Math.max(1, Math.ceil(toAlarm / CYCLE_NS));
        if (cycles > end - this.cycle) cycles = Math.max(1, end - this.cycle);
        if (this.pioActive()) {
          for (let i = 0; i < cycles; i++) { this.cycle++; this.stepPio(); if (!core.waiting) { cycles = i + 1; break; } }
          clock.tick(cycles * CYCLE_NS);
          continue;
        }
        this.cycle += cycles;
        clock.tick(cycles * CYCLE_NS);
        continue;
      }
      cycles = core.executeInstruction();
      if (this.pioActive()) {
        for (let i = 0; i < cycles; i++) { this.cycle++; this.stepPio(); }
      } else this.cycle += cycles;
      clock.tick(cycles * CYCLE_NS);
    }
  }

  // ---- P6: the µs timer starts at a chosen value [4.6.2: TIMEHW/TIMELW set the 64-bit count] -----
  // A board that has been running for a while: e.g. 2**30 us minus a little, so MicroPython's
  // ticks_us() (time_us_64() & (2**30 - 1)) wraps during a test. Only the TIMER's reads and alarms
  // see the offset; emulated cycles and the PIO are unaffected.
  patchTimerStart(us) {
    const clock = this.mcu.clock;
    const offsetNs = us * 1000;
    const timer = this.mcu.peripherals[0x40054]; // TIMER_BASE
    timer.clock = {
      get nanos() { return clock.nanos + offsetNs; },
      createAlarm: (cb) => clock.createAlarm(cb),
    };
  }

  // ---- P3: BOOTSEL released ------------------------------------------------------------------
  patchBootsel() {
    // QSPI_SS: pull-up on the Pico, button not pressed. rp2040js derives the input from the QSPI pad's
    // input-enable bit (IO_QSPI/PADS_QSPI overrides are not modelled), so pin the pad level itself.
    Object.defineProperty(this.mcu.qspi[1], 'inputValue', { configurable: true, get: () => !this.bootselPressed });
  }

  // ---- edge recording (the pad loop-back itself is regbus's 'loopback' patch) ---------------------
  patchRecording() {
    const chip = this;
    for (const pin of this.mcu.gpio) {
      pin.addListener(() => {
        if (chip.recording >> pin.index & 1) {
          chip.edges.push([chip.cycle, pin.index, pin.inputValue ? 1 : 0]);
        }
      });
    }
  }

  /** Drive an input pin from outside (a trigger source): null releases it (reads low: pull-down). */
  setExternal(index, level) {
    this.mcu.gpio[index].setInputValue(level == null ? false : !!level);
    if (this.pioCtl.refreshPads) this.pioCtl.refreshPads();
  }

  startRecording(mask) {
    this.recording = mask >>> 0;
    this.edges = [];
    const levels = [];
    for (const pin of this.mcu.gpio) {
      if (this.recording >> pin.index & 1) {
        levels.push([pin.index, pin.inputValue ? 1 : 0]);
      }
    }
    return { cycle: this.cycle, levels };
  }

  // ---- P5: ADC fed by the electrode model ----------------------------------------------------------
  patchAdcElectrode(adcModel = true) {
    const chip = this;
    const b = this.board;
    const n = b.pos.length;
    this.dac = Array.from({ length: n }, () => ({ input: [0, 0], inputOn: [false, false], out: [0, 0], on: [false, false], bytes: [],
      bits: [] }));
    this.dacWrites = []; // [cycle, channel, command] of every command a DAC took (pin or SPI0 path)
    const take = (ch, w) => {
      const d = chip.dac[ch];
      const which = w >> 15 & 1;
      d.input[which] = w & 0xfff;
      d.inputOn[which] = !!(w >> 12 & 1);
      if (!padLevel(chip.mcu.gpio[b.ldac])) { d.out = [...d.input]; d.on = [...d.inputOn]; }
      chip.dacWrites.push([chip.cycle, ch, w]);
    };
    this.phase = Array.from({ length: n }, () => ({ dir: 0, since: 0 })); // dir +1 POS, -1 NEG
    const spi = this.mcu.spi[0];
    spi.onTransmit = (value) => {
      for (let ch = 0; ch < n; ch++) {
        if (!chip.mcu.gpio[b.dacCs[ch]].outputValue) { // CS low: this DAC listens
          const d = chip.dac[ch];
          d.bytes.push(value & 0xff);
          if (d.bytes.length === 2) {
            const w = d.bytes[0] << 8 | d.bytes[1];
            d.bytes = [];
            take(ch, w);
          }
        }
      }
      spi.completeTransmit(0);
    };
    const sck = chip.mcu.gpio[b.dacSck];
    let sckLevel = padLevel(sck);
    sck.addListener(() => {
      const lv = padLevel(sck);
      if (lv && !sckLevel) { // rising edge: every selected DAC samples MOSI
        const bit = padLevel(chip.mcu.gpio[b.dacMosi]) ? 1 : 0;
        for (let ch = 0; ch < n; ch++) {
          if (!padLevel(chip.mcu.gpio[b.dacCs[ch]])) chip.dac[ch].bits.push(bit);
        }
      }
      sckLevel = lv;
    });
    for (let ch = 0; ch < n; ch++) {
      const cs = chip.mcu.gpio[b.dacCs[ch]];
      let csLevel = padLevel(cs);
      cs.addListener(() => {
        const lv = padLevel(cs);
        if (lv === csLevel) return;
        csLevel = lv;
        const d = chip.dac[ch];
        if (lv) { // CS high ends a frame: 16 bits from the pads are a command
          if (d.bits.length === 16) take(ch, d.bits.reduce((w, x) => w << 1 | x, 0));
          d.bytes = [];
        }
        d.bits = [];
      });
      for (const p of [b.pos[ch], b.neg[ch]]) {
        chip.mcu.gpio[p].addListener(() => chip.updatePhase(ch));
      }
    }
    chip.mcu.gpio[b.ldac].addListener(() => {
      if (!padLevel(chip.mcu.gpio[b.ldac])) {
        for (const d of chip.dac) { d.out = [...d.input]; d.on = [...d.inputOn]; }
      }
    });
    const adc = this.mcu.adc;
    if (!adcModel) return;
    adc.onADCRead = (channel) => {
      const code = channel === b.adcInput ? chip.adcCode() : 0;
      chip.adcLog.push([chip.cycle, channel, code]);
      adc.currentChannel = channel;
      adc.sampleAlarm.cancel();
      adc.sampleAlarm = chip.mcu.clock.createAlarm(() => adc.completeADCRead(code, false));
      adc.sampleAlarm.schedule(adc.sampleTime * 1000); // 96 cycles of 48 MHz = 2 us
    };
  }

  updatePhase(ch) {
    const b = this.board;
    const pos = this.mcu.gpio[b.pos[ch]].outputValue && this.mcu.gpio[b.pos[ch]].outputEnable;
    const neg = this.mcu.gpio[b.neg[ch]].outputValue && this.mcu.gpio[b.neg[ch]].outputEnable;
    const dir = pos && !neg ? 1 : neg && !pos ? -1 : 0;
    const ph = this.phase[ch];
    if (dir !== ph.dir) { ph.dir = dir; ph.since = this.cycle; }
  }

  muxChannel() {
    const [a0, a1] = this.board.muxSel.map((p) => (this.mcu.gpio[p].outputValue ? 1 : 0));
    return a0 | a1 << 1;
  }

  /** Electrode current (A) of channel ch now: the latched DAC code of the driven direction. */
  currentA(ch) {
    const ph = this.phase[ch];
    const d = this.dac[ch];
    if (ph.dir === 0) return 0;
    const i = ph.dir > 0 ? 0 : 1; // DAC A: POS direction, DAC B: NEG direction
    if (!d.on[i]) return 0;
    return ph.dir * d.out[i] * this.board.dacFullScaleUa / 4096 * 1e-6;
  }

  adcCode() {
    const ch = this.muxChannel();
    if (ch >= this.electrodes.length) return 0;
    this.updatePhase(ch);
    const ph = this.phase[ch];
    const tS = this.cycle * CYCLE_NS * 1e-9;
    const v = electrodeVoltage(this.electrodes[ch], this.currentA(ch), (this.cycle - ph.since) * CYCLE_NS * 1e-9, tS);
    const b = this.board;
    const max = (1 << b.adcBits) - 1;
    const code = Math.floor(Math.abs(v) * 1e6 * (max + 1) / (b.adcVrefUv * b.electrodeUvPerAdcUv));
    return code < 0 ? 0 : code > max ? max : code;
  }
}
