// Run a PIO program on ONE state machine of npm rp2040js (pinned in package.json), stepped directly:
// no firmware boot, no CPU. picostim's tests/test_pio_rp2040js.py uses it as a second, independent PIO
// model beside pioemu and compares its pin edges with picostim's own emulator.
//
// stdin: one JSON object
//   { "program": { "opcodes": [..16-bit..], "wrap_target": n, "wrap": n, "entry": pc,
//                  "out_base", "out_count", "set_base", "set_count", "in_base", "side_set_base",
//                  "side_set_count" (PINCTRL field, i.e. including an opt bit), "side_en", "jmp_pin",
//                  "out_shift_right", "in_shift_right", "autopull", "pull_threshold", "autopush",
//                  "push_threshold" },          (missing keys: 0 / false; thresholds 32)
//     "cases": [ { "words": [..32-bit TX words..], "cycles": N, "feed": "dma" | "prefill",
//                  "program": {..} (optional: overrides the top-level program for this case) } ] }
// stdout: one JSON object { "rp2040js": version, "results": [ per case:
//   { "edges": [[cycle, pin, level], ...],   cycle relative to the first instruction after enable,
//     "end": cycle reached (>= N unless the SM stalled),
//     "instructions", "words_pulled", "empty_pulls" (PULL executed on an empty TX FIFO),
//     "underrun_with_words_pending": cycle of the first PULL that found the FIFO empty while words were
//         still waiting to be fed (null if never: then the FIFO never ran dry inside the stream),
//     "stalled_at": cycle at which the SM stalled (null if never)  } ] }
//
// Timing: rp2040js executes one instruction per StateMachine.step() and advances `sm.cycles` by
// 1 + delay, but it does NOT advance `cycles` while an instruction is stalled (a blocking PULL on an
// empty FIFO, WAIT, autopull/autopush stalls). Edge times are `sm.cycles` before the step that changed
// the pins, which is exact only until the first stall: the script stops a case at its first stall and
// reports `stalled_at`, and the Python side only compares cases that never stalled.
//
// Feeding: rp2040js has no FJOIN (its TX FIFO is always 4 deep). "dma" (default) writes words to TXF0
// whenever the FIFO has room after every step, like a DREQ-paced DMA with zero latency, so the FIFO is
// never empty while words remain; "prefill" writes only the first 4 before enable.
import { readFileSync } from 'node:fs';
import { RP2040, StateMachine } from 'rp2040js';

// the version actually loaded (the package's exports hide its package.json from require())
const VERSION = JSON.parse(
  readFileSync(new URL('./node_modules/rp2040js/package.json', import.meta.url), 'utf8'),
).version;

// PIO register offsets (RP2040 datasheet 3.7)
const TXF0 = 0x010;
const INSTR_MEM0 = 0x048;
const SM0_CLKDIV = 0x0c8;
const SM0_EXECCTRL = 0x0cc;
const SM0_SHIFTCTRL = 0x0d0;
const SM0_INSTR = 0x0d8;
const SM0_PINCTRL = 0x0dc;

const b = (v) => (v ? 1 : 0);
const n = (v, d = 0) => (v === undefined || v === null ? d : v);

function pinctrl(p) {
  return (
    ((n(p.side_set_count) & 7) << 29) |
    ((n(p.set_count) & 7) << 26) |
    ((n(p.out_count) & 0x3f) << 20) |
    ((n(p.in_base) & 31) << 15) |
    ((n(p.side_set_base) & 31) << 10) |
    ((n(p.set_base) & 31) << 5) |
    (n(p.out_base) & 31)
  ) >>> 0;
}

function execctrl(p) {
  return (
    (b(p.side_en) << 30) |
    ((n(p.jmp_pin) & 31) << 24) |
    ((n(p.wrap) & 31) << 12) |
    ((n(p.wrap_target) & 31) << 7)
  ) >>> 0;
}

function shiftctrl(p) {
  return (
    ((n(p.pull_threshold, 32) & 31) << 25) |
    ((n(p.push_threshold, 32) & 31) << 20) |
    (b(n(p.out_shift_right, true)) << 19) |
    (b(n(p.in_shift_right, true)) << 18) |
    (b(p.autopull) << 17) |
    (b(p.autopush) << 16)
  ) >>> 0;
}

const rp2040 = new RP2040(); // one chip per invocation; each case gets a fresh state machine

function runCase(p, c) {
  const pio = rp2040.pio[0];
  const sm = new StateMachine(rp2040, pio, 0); // power-on state: X = Y = 0, empty FIFOs
  pio.machines[0] = sm;
  pio.pinValues = 0;
  pio.pinDirections = 0;
  pio.instructions.fill(0);
  p.opcodes.forEach((op, i) => pio.writeUint32(INSTR_MEM0 + 4 * i, op & 0xffff));
  // pio_sm_init(): config, restart, then `jmp entry` through SMx_INSTR
  pio.writeUint32(SM0_CLKDIV, 1 << 16); // divider 1.0
  pio.writeUint32(SM0_EXECCTRL, execctrl(p));
  pio.writeUint32(SM0_SHIFTCTRL, shiftctrl(p));
  pio.writeUint32(SM0_PINCTRL, pinctrl(p));
  sm.restart(); // CTRL.SM_RESTART: OSR empty (count 32), ISR empty
  pio.writeUint32(SM0_INSTR, n(p.entry) & 0x1f); // jmp <entry>
  const t0 = sm.cycles; // the exec'd jmp counted one cycle; time 0 = first instruction after enable
  const words = c.words.map((w) => w >>> 0);
  const feedAll = (c.feed || 'dma') === 'dma';
  let fed = 0;
  const feed = () => {
    while (fed < words.length && !sm.txFIFO.full) pio.writeUint32(TXF0, words[fed++]);
  };
  feed(); // pre-fill before enable (4 words: rp2040js has no FJOIN)
  sm.enabled = true; // SM_ENABLE without CTRL's setTimeout-driven run loop: we step it ourselves

  const N = c.cycles;
  const edges = [];
  let pins = pio.pinValues;
  let instructions = 0;
  let emptyPulls = 0;
  let underrun = null;
  let stalledAt = null;
  const written = () => fed;
  while (sm.cycles - t0 < N) {
    const t = sm.cycles - t0;
    const op = pio.instructions[sm.pc];
    if ((op >>> 13) === 4 && op & 0x80 && sm.txFIFO.empty) {
      // a PULL about to find the FIFO empty (the stim program's `pull noblock` then copies X)
      emptyPulls++;
      if (underrun === null && fed < words.length) underrun = t;
    }
    sm.step();
    instructions++;
    const now = pio.pinValues;
    let diff = (now ^ pins) >>> 0;
    while (diff) {
      const low = diff & -diff;
      const pin = 31 - Math.clz32(low);
      edges.push([t, pin, (now >>> pin) & 1]);
      diff = (diff ^ low) >>> 0;
    }
    pins = now;
    if (sm.waiting) {
      stalledAt = t; // rp2040js would not count the stall cycles: stop here
      break;
    }
    if (feedAll) feed();
  }
  return {
    edges,
    end: sm.cycles - t0,
    instructions,
    words_pulled: written() - sm.txFIFO.itemCount,
    empty_pulls: emptyPulls,
    underrun_with_words_pending: underrun,
    stalled_at: stalledAt,
  };
}

const input = JSON.parse(readFileSync(0, 'utf8'));
const results = input.cases.map((c) => runCase(c.program || input.program, c));
process.stdout.write(JSON.stringify({ rp2040js: VERSION, results }) + '\n');
