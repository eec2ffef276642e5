// Whole-chip board process: boots a flash image (MicroPython UF2 payload + littlefs) in the patched
// rp2040js (chip.mjs) and talks to the Python launcher (picostim/virtual/wholechip/__init__.py) over
// stdin/stdout in frames: one type byte, a u32 little-endian length, the payload.
//
//   launcher -> board: 'D' bytes for the USB CDC (host to device)
//                      'R' u32 GPIO mask: start recording edges of those pins (answers 'r')
//                      'G' stop recording and send the edges (answers 'g')
//                      'I' u8 pin, u8 level (0/1, 2 = release): drive an input from outside
//                      'P' debugging: answers 'L' with the CPU's PC, LR, SP
//                      'Q' u32 tag: answer 'T' with the tag and the cycle count
//                      'X' exit
//   board -> launcher: 'D' f64 cycle + CDC bytes (device to host), 'a' f64 cycle + u32 count: host
//                      bytes handed to the CDC at that cycle, 'C' CDC connected (f64 cycle),
//                      'T' u32 tag + f64 cycle, 'r' JSON {cycle, levels}, 'g' JSON {cycle, edges,
//                      smEnables, adc}, 'L' log text
//
// Usage: node serve.mjs --flash FLASH.bin --bootrom BOOTROM.bin [--electrodes JSON] [--board JSON]
//        [--timer-start-us N]  (the TIMER's µs count at reset, e.g. just before the 2**30 us tick wrap)
//        [--bootsel pressed]  (BOOTSEL held: picostim's main.py stays at the REPL, for maintenance/debugging)
import { readFileSync } from 'fs';
import { USBCDC } from 'rp2040js';
import { createChip } from './chip.mjs';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];

const bootrom = new Uint32Array(readFileSync(args.bootrom).buffer.slice(0));
const flash = new Uint8Array(readFileSync(args.flash));
const chip = await createChip({
  bootrom, flash,
  electrodes: args.electrodes ? JSON.parse(args.electrodes) : [],
  board: args.board ? JSON.parse(args.board) : {},
  bootselPressed: args.bootsel === 'pressed',
  timerStartUs: args['timer-start-us'] ? Number(args['timer-start-us']) : 0,
});

function send(type, payload) {
  const head = Buffer.alloc(5);
  head[0] = type.charCodeAt(0);
  head.writeUInt32LE(payload.length, 1);
  process.stdout.write(Buffer.concat([head, Buffer.from(payload)]));
}
const f64 = (x) => { const b = Buffer.alloc(8); b.writeDoubleLE(x, 0); return b; };
const u32 = (x) => { const b = Buffer.alloc(4); b.writeUInt32LE(x, 0); return b; };

const cdc = new USBCDC(chip.mcu.usbCtrl);
let connected = false;
const pendingIn = []; // host bytes waiting for the CDC to connect
cdc.onDeviceConnected = () => {
  connected = true;
  send('C', f64(chip.cycle));
  const held = pendingIn.splice(0);
  for (const b of held) cdc.sendSerialByte(b);
  if (held.length) send('a', Buffer.concat([f64(chip.cycle), u32(held.length)]));
};
cdc.onSerialData = (value) => send('D', Buffer.concat([f64(chip.cycle), Buffer.from(value)]));

let exiting = false;
let inbuf = Buffer.alloc(0);
process.stdin.on('data', (chunk) => {
  inbuf = Buffer.concat([inbuf, chunk]);
  while (inbuf.length >= 5) {
    const len = inbuf.readUInt32LE(1);
    if (inbuf.length < 5 + len) break;
    const type = String.fromCharCode(inbuf[0]);
    const p = inbuf.subarray(5, 5 + len);
    inbuf = inbuf.subarray(5 + len);
    handle(type, Buffer.from(p));
  }
});
process.stdin.on('end', () => { exiting = true; });

function handle(type, p) {
  if (type === 'D') {
    if (!connected) { for (const b of p) pendingIn.push(b); return; }
    for (const b of p) cdc.sendSerialByte(b);
    send('a', Buffer.concat([f64(chip.cycle), u32(p.length)]));
  } else if (type === 'R') {
    send('r', JSON.stringify(chip.startRecording(p.readUInt32LE(0))));
  } else if (type === 'G') {
    const out = { cycle: chip.cycle, edges: chip.edges, smEnables: chip.smEnables, adc: chip.adcLog };
    chip.recording = 0;
    chip.edges = [];
    send('g', JSON.stringify(out));
  } else if (type === 'I') {
    chip.setExternal(p[0], p[1] === 2 ? null : p[1]);
  } else if (type === 'Q') {
    send('T', Buffer.concat([p.subarray(0, 4), f64(chip.cycle)]));
  } else if (type === 'P') { // debugging: where is the CPU
    const c = chip.mcu.core;
    send('L', JSON.stringify({ pc: c.PC, lr: c.LR, sp: c.SP, waiting: c.waiting, cycle: chip.cycle, pio: chip.pioActive() }));
  } else if (type === 'X') {
    exiting = true;
  }
}

chip.mcu.core.PC = 0x10000000;
const CHUNK = 20000; // cycles between looks at stdin (160 us emulated)
let turns = 0;
function loop() {
  if (exiting || (++turns % 256 === 0 && process.ppid === 1)) { process.exit(0); } // launcher gone
  try {
    chip.run(CHUNK);
  } catch (e) {
    send('L', 'emulator error: ' + (e && e.stack || e));
    process.exit(3);
  }
  setImmediate(loop);
}
loop();
