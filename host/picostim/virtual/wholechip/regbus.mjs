// Register-level bus server: one rp2040js RP2040 whose CPU never runs. A Python process (the board
// HAL under test, see host/picostim/virtual/regbus.py) drives its bus over stdin/stdout; this process
// steps PIO0/PIO1 one PIO cycle at a time (clock divider 1, 8 ns at 125 MHz), lets rp2040js's DMA run
// (paced by DREQ, transfers fired by the simulation clock after every cycle) and records every GPIO pad
// edge with its PIO cycle. Fidelity patches: ./pio_patches.mjs (all applied unless told otherwise).
//
// Protocol: one request per line, a JSON array of operations executed in order; one reply line
//   {"r": [values of the reads, in order], "now": cycle, "edges": [[cycle, pin, level], ...] (only if
//    asked), "warn": [...] (rp2040js warnings/errors since the last reply, e.g. unimplemented
//    registers), "err": "message" (the batch stopped there)}.
// Operations (t = PIO cycle at which the CPU access happens; non-decreasing within the stream):
//   ["w", t, addr, value]          32-bit bus write (atomic aliases, SRAM, SIO, peripherals)
//   ["wb", t, addr, [values]]      consecutive 32-bit SRAM writes (an array's initial contents)
//   ["r", t, addr]                 32-bit bus read -> next entry of "r" (unsigned)
//   ["in", t, pin, level]          external level of a GPIO pad from cycle t on
//   ["run", t]                     execute every PIO cycle before t
//   ["edges"]                      return and clear the recorded edges
//   ["reset", patches|null, accelerate, start_ns]   fresh chip; patches: list of names (null: all);
//                                  the TIMER starts at start_ns
//   ["peek", sm, pio]              debug: {pc, x, tx, enabled} of SM sm of PIO pio (default 0) -> "r"
// Cycle semantics: everything before `now` has executed; an operation at t is applied after cycle
// t-1 and before cycle t. A pin written by the PIO in cycle c is an edge at c; a pin changed by a CPU
// write or an input at t is an edge at t (as picostim's pio_emu records them).
import { createInterface } from 'node:readline';
import { readFileSync } from 'node:fs';
import { RP2040 } from 'rp2040js';
import { applyPioPatches, ALL_PATCHES, padLevel, padWatcher } from './pio_patches.mjs';

const VERSION = JSON.parse(
  readFileSync(new URL('./node_modules/rp2040js/package.json', import.meta.url), 'utf8'),
).version;
const NS_PER_CYCLE = 8; // 125 MHz

let chip = null;
let ctl = null;
let now = 0;
let accelerate = true;
let edges = [];
let lastPad = 0;
let warnings = [];
let pads = null; // padWatcher of the current chip

function padLevels() {
  // what a logic analyser on the pins sees: the driven level where the output is enabled, else the
  // external level or, with the 'pulls' patch, the pad's pull (input enable and overrides play no part)
  let v = 0;
  const { gpio } = chip;
  for (let i = 0; i < gpio.length; i++) {
    if (padLevel(gpio[i])) v |= 1 << i;
  }
  return v >>> 0;
}

function record(at) {
  if (!pads.changed()) return;
  const pad = padLevels();
  let diff = (pad ^ lastPad) >>> 0;
  while (diff) {
    const low = diff & -diff;
    const pin = 31 - Math.clz32(low);
    edges.push([at, pin, (pad >>> pin) & 1]);
    diff = (diff ^ low) >>> 0;
  }
  lastPad = pad;
}

function reset(patches, accel, startNs) {
  chip = new RP2040();
  if (startNs) chip.clock.tick(startNs); // TIMER (and the CPU's ticks_us) start there
  warnings = [];
  chip.logger = {
    debug() {},
    info() {},
    warn(name, msg) {
      warnings.push(`${name}: ${msg}`);
    },
    error(name, msg) {
      warnings.push(`ERROR ${name}: ${msg}`);
    },
  };
  ctl = applyPioPatches(chip, patches === null || patches === undefined ? ALL_PATCHES : patches);
  if (!ctl.applied.includes('lockstep')) {
    // even unpatched, the harness must own the stepping: a free-running PIO would race the bus
    for (const pio of chip.pio) pio.run = () => {};
  }
  now = 0;
  accelerate = accel !== false;
  edges = [];
  pads = padWatcher(chip);
  lastPad = padLevels();
}

// ---- stepping ---------------------------------------------------------------------------------
const JMP_XDEC_SELF = (op, pc) => (op >>> 13) === 0 && ((op >>> 5) & 7) === 2 && (op & 31) === pc && !(op & 0x1f00);

function skippable(limit) {
  // cycles that can be skipped at once: every enabled SM is in a `jmp x-- self` loop (no delay,
  // no side-set) with X > 0, counting down a delay, or waiting on a pin with settled synchronisers;
  // the DMA has nothing scheduled. Nothing observable happens in those cycles.
  let k = limit;
  let any = false;
  if (chip.clock.nextAlarm) return 0;
  for (const pio of chip.pio) {
    for (const sm of pio.machines) {
      if (!sm.enabled) continue;
      any = true;
      if (sm._delayLeft > 0) {
        k = Math.min(k, sm._delayLeft);
      } else if (sm.waiting) {
        if (sm.waitType !== 1 || !ctl.syncSettled() || ctl.pinWaitSatisfied(sm)) return 0;
      } else if (JMP_XDEC_SELF(pio.instructions[sm.pc], sm.pc) && sm.x > 0) {
        k = Math.min(k, sm.x >>> 0);
      } else {
        return 0;
      }
    }
  }
  return any ? k : limit;
}

function skip(k) {
  for (const pio of chip.pio) {
    for (const sm of pio.machines) {
      if (!sm.enabled) continue;
      if (sm._delayLeft > 0) sm._delayLeft -= k;
      else if (!sm.waiting) {
        sm.x = (sm.x - k) >>> 0;
        sm.cycles += k;
      }
    }
  }
  for (let i = 0; i < 2; i++) ctl.tick(); // synchronisers hold the (unchanged) pad levels
  now += k;
  chip.clock.tick(NS_PER_CYCLE * k);
}

function checkDividers() {
  for (const pio of chip.pio) {
    if (!ctl.clkdivOk(pio)) throw new Error('an enabled state machine has CLKDIV != 1.0 (not modelled)');
  }
}

function advanceTo(t) {
  if (t < now) throw new Error(`time went backwards: ${t} < ${now}`);
  checkDividers();
  const [pio0, pio1] = chip.pio;
  while (now < t) {
    if (accelerate) {
      const k = skippable(t - now);
      if (k >= 4) {
        skip(k);
        continue;
      }
    }
    ctl.tick();
    ctl.stepPio(pio0);
    ctl.stepPio(pio1);
    record(now);
    chip.clock.tick(NS_PER_CYCLE);
    now++;
  }
}

function op(o, out) {
  switch (o[0]) {
    case 'w':
      advanceTo(o[1]);
      chip.writeUint32(o[2] >>> 0, o[3] >>> 0);
      ctl.invalidate();
      pads.invalidate();
      record(now);
      break;
    case 'wb': {
      advanceTo(o[1]);
      let a = o[2] >>> 0;
      for (const v of o[3]) {
        chip.writeUint32(a, v >>> 0);
        a += 4;
      }
      break;
    }
    case 'r':
      advanceTo(o[1]);
      out.r.push(chip.readUint32(o[2] >>> 0) >>> 0);
      break;
    case 'in':
      advanceTo(o[1]);
      chip.gpio[o[2]].setInputValue(!!o[3]);
      ctl.invalidate();
      pads.invalidate();
      record(now);
      break;
    case 'run':
      advanceTo(o[1]);
      break;
    case 'edges':
      out.edges = edges;
      edges = [];
      break;
    case 'reset':
      reset(o[1], o[2], o[3]);
      out.version = VERSION;
      out.patches = ctl.applied;
      break;
    case 'peek': {
      const sm = chip.pio[o[2] || 0].machines[o[1]];
      out.r.push({ pc: sm.pc, x: sm.x, tx: sm.txFIFO.itemCount, txsize: sm.txFIFO.size, enabled: sm.enabled,
        waiting: sm.waiting });
      break;
    }
    default:
      throw new Error(`unknown operation ${JSON.stringify(o[0])}`);
  }
}

reset(null, true);
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  const out = { r: [] };
  try {
    for (const o of JSON.parse(line)) op(o, out);
  } catch (e) {
    out.err = String(e && e.stack ? e.stack : e);
  }
  out.now = now;
  if (warnings.length) {
    out.warn = warnings;
    warnings = [];
  }
  process.stdout.write(JSON.stringify(out) + '\n');
});
