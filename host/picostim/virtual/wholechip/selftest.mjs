// Datasheet checks of chip.mjs's own patches, without a MicroPython image (tests/test_wholechip_patches.py
// runs this and asserts every field). The CPU runs a two-instruction Thumb program from flash
// (`wfi` or `b .`) while the checks drive peripherals through the bus (mcu.readUint32/writeUint32).
// Usage: node selftest.mjs [--no-patches]  (--no-patches: chip.mjs's own patches off, to show the
// checks fail on stock rp2040js)
import { createChip, electrodeVoltage, DEFAULT_ELECTRODE } from './chip.mjs';

const stock = process.argv.includes('--no-patches');
const SIO = 0xd0000000;
const IO_BANK0 = 0x40014000;
const PIO0 = 0x50200000;
const ADC = 0x4004c000;

function thumbFlash(instr) { // flash: instr at 0x10000000, then `b .`
  const f = new Uint8Array(4096).fill(0xff);
  f[0] = instr & 0xff; f[1] = instr >> 8;
  f[2] = 0xfe; f[3] = 0xe7; // b .
  return f;
}

async function chipWith(instr, opts = {}) {
  const chip = await createChip({ flash: thumbFlash(instr), lockstep: !stock, bootselPressed: opts.bootselPressed,
    adcModel: !stock, bootsel: !stock });
  chip.mcu.core.PC = 0x10000000;
  return chip;
}

// P1: a PIO loop `set pins,1 [3]` / `set pins,0 [3]` on GP0 toggles every 4 system-clock cycles
// (RP2040 datasheet 3.4: each instruction takes 1 cycle + its delay; CLKDIV 1.0 = one PIO cycle per
// clk_sys cycle), whether the CPU executes instructions or sleeps in WFI.
async function lockstep(instr) {
  const chip = await chipWith(instr);
  const { mcu } = chip;
  mcu.writeUint32(PIO0 + 0x048, 0xe301); // INSTR_MEM0: set pins, 1 [3]
  mcu.writeUint32(PIO0 + 0x04c, 0xe300); // INSTR_MEM1: set pins, 0 [3]
  mcu.writeUint32(PIO0 + 0x0cc, (1 << 12) | (0 << 7)); // SM0_EXECCTRL: wrap_top 1, wrap_bottom 0
  mcu.writeUint32(PIO0 + 0x0dc, (1 << 26) | (0 << 5)); // SM0_PINCTRL: SET_COUNT 1, SET_BASE 0
  mcu.writeUint32(PIO0 + 0x0d8, 0xe081); // SM0_INSTR: set pindirs, 1
  mcu.writeUint32(IO_BANK0 + 0x004, 6); // GPIO0_CTRL: FUNCSEL PIO0
  chip.startRecording(1);
  mcu.writeUint32(PIO0 + 0x000, 1); // CTRL: SM0_ENABLE
  const t0 = chip.cycle;
  chip.run(1000);
  const edges = chip.edges.map((e) => e[0] - t0);
  const gaps = edges.slice(1).map((c, i) => c - edges[i]);
  return { edges: edges.length, cycles: chip.cycle - t0, gaps: [...new Set(gaps)], cpuWaiting: mcu.core.waiting };
}

// P3: QSPI_SS reads high (GPIO_HI_IN bit 1) with BOOTSEL released, low when pressed.
async function bootsel(pressed) {
  const chip = await chipWith(0xe7fe, { bootselPressed: pressed });
  return (chip.mcu.readUint32(SIO + 0x008) >> 1) & 1;
}

// P5: ADC0 sampled at the conversion's start, READY after 96 cycles of the 48 MHz ADC clock (2 us),
// value from the electrode model driven by the MCP4822 frame (SPI0, CS low) latched by LDAC.
async function adc() {
  const chip = await chipWith(0xe7fe);
  const { mcu } = chip;
  const b = chip.board;
  const sioOut = (pin, v) => {
    mcu.writeUint32(IO_BANK0 + 8 * pin + 4, 5); // FUNCSEL SIO
    mcu.writeUint32(SIO + 0x024, 1 << pin); // GPIO_OE_SET
    mcu.writeUint32(SIO + (v ? 0x014 : 0x018), 1 << pin); // GPIO_OUT_SET / CLR
  };
  for (const p of [b.dacCs[0], b.ldac]) sioOut(p, 1);
  for (const p of [b.muxSel[0], b.muxSel[1], b.pos[0], b.neg[0]]) sioOut(p, 0);
  // MCP4822 frame for DAC B (NEG direction): A/B=1, /GA=1, /SHDN=1, code 400 = 1 mA
  const code = 400;
  const word = 0xb000 | code;
  sioOut(b.dacCs[0], 0);
  mcu.spi[0].onTransmit(word >> 8);
  mcu.spi[0].onTransmit(word & 0xff);
  sioOut(b.dacCs[0], 1);
  sioOut(b.ldac, 0); sioOut(b.ldac, 1); // latch
  sioOut(b.neg[0], 1); // phase 1 (NEG) starts now
  const phaseStart = chip.cycle;
  chip.run(1250); // 10 us into the phase
  mcu.writeUint32(ADC + 0x00, 1 | (1 << 2)); // CS: EN, START_ONE, AINSEL 0
  const tStart = chip.cycle;
  const expect = (() => {
    const i = code * b.dacFullScaleUa / 4096 * 1e-6;
    const v = electrodeVoltage({ ...DEFAULT_ELECTRODE }, i, (tStart - phaseStart) * 8e-9, tStart * 8e-9);
    return Math.floor(Math.abs(v) * 1e6 * 4096 / (b.adcVrefUv * b.electrodeUvPerAdcUv));
  })();
  chip.run(125); // 1 us
  sioOut(b.neg[0], 0); // the phase ends during the conversion: the sample was taken at its start
  const readyAt1us = (mcu.readUint32(ADC) >> 8) & 1;
  let readyCycle = null;
  for (let i = 0; i < 400 && readyCycle === null; i++) {
    chip.run(1);
    if ((mcu.readUint32(ADC) >> 8) & 1) readyCycle = chip.cycle - tStart;
  }
  return { result: mcu.readUint32(ADC + 0x04), expect, readyAt1us, readyCycles: readyCycle };
}

const out = {
  lockstepRunning: await lockstep(0xe7fe), // b .
  lockstepWfi: await lockstep(0xbf30), // wfi
  bootselReleased: await bootsel(false),
  bootselPressed: await bootsel(true),
  adc: await adc(),
};
console.log(JSON.stringify(out));
process.exit(0); // stock rp2040js keeps free-running its PIO on timers
