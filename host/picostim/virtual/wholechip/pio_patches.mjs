// Documented fidelity patches for npm rp2040js 1.4.1 (pinned in package.json), applied to ONE chip
// instance (no global prototype changes). Used by the register-level harness (regbus.mjs) and by the
// whole-chip board. Each patch names the RP2040 datasheet fact it restores; tests/test_hal_regbus.py
// has one test per patch (it fails with the patch switched off, see `patches` below).
//
//   lockstep    PIO0/PIO1 never free-run: rp2040js's CTRL write starts `run()` (1,000 steps per
//               macrotask, unrelated to emulated time); here the harness steps the PIO itself, one
//               call of `stepPio(pio)` per PIO cycle (clock divider 1), and only ENABLED state
//               machines execute (CTRL.SM_ENABLE: a disabled SM does not run).
//   delay       An instruction's delay field [12:8] stalls the SM for that many extra cycles
//               (datasheet 3.4.x "Delay"); rp2040js only adds them to `sm.cycles` and executes the
//               next instruction on the next step.
//   wait        A stalled WAIT completes on the cycle its condition is seen true and the next
//               instruction runs on the FOLLOWING cycle (datasheet 3.4.3 WAIT); rp2040js ran the next
//               instruction in the same step as the release (one cycle early).
//   sync        2-flipflop input synchroniser on every GPIO input of the PIO (PIO INPUT_SYNC_BYPASS
//               register: "0 -> input is synchronized (default)"): the PIO sees a pad level two PIO
//               cycles after it changed; bits set in INPUT_SYNC_BYPASS see it at once. Applies to WAIT
//               GPIO/PIN, JMP PIN, IN PINS, MOV x, PINS.
//   waitpin     A stalled `wait pin` re-evaluates its pin through the CURRENT IN_BASE every cycle
//               (WAIT PIN: "the input pin selected by Index ... relative to the state machine's input
//               pin mapping"; a stalled instruction is re-evaluated each cycle, and PINCTRL writes take
//               effect at once). rp2040js resolved the absolute GPIO once, when the WAIT first
//               executed, so moving IN_BASE under a waiting SM (the HAL's disarm) had no effect.
//   loopback    GPIO_IN / the PIO's inputs read the PAD level: for a pin whose output is enabled,
//               the level the chip drives (rp2040js 1.4.1 returned only externally driven levels, so
//               SIO GPIO_IN read 0 on a PIO-driven pin).
//   fjoin       SHIFTCTRL.FJOIN_TX: "TX FIFO steals the RX FIFO's storage, and becomes twice as deep.
//               RX FIFO is disabled as a result (always reads as both full and empty). FIFOs are
//               flushed when this bit is changed." (FJOIN_RX likewise). rp2040js: always 4 + 4 deep,
//               never flushed, so pico-sdk's pio_sm_clear_fifos() (toggles FJOIN_RX twice) did nothing.
//   txstall     FDEBUG.TXSTALL: "State machine has stalled on empty TX FIFO during a blocking PULL,
//               or an OUT with autopull enabled." A `pull noblock` on an empty FIFO does not stall
//               and does not set it (rp2040js set it).
//   pulls       PADS_BANK0 GPIOn PUE / PDE (datasheet 2.19.4 "Pads": each pad has a pull-up and a
//               pull-down resistor): a pad that no output drives and no external source drives
//               reads 1 with only its pull-up enabled, else 0. rp2040js 1.4.1 keeps the pull bits in
//               the pad register but a pad nobody drives always read its external level, 0 unless set;
//               so a chip select released to its pull-up (the DAC bus drives CS through the pin
//               direction) read low = selected. A pin the harness drives (setInputValue) keeps that
//               external level.
//   dmaregs     DMA CHAN_ABORT reads 0 once in-flight transfers have been flushed (rp2040js DMA
//               transfers take zero time, so at once) and MULTI_CHAN_TRIGGER reads 0 (self-clearing);
//               rp2040js 1.4.1 read both as 0xFFFFFFFF (unimplemented), so a firmware poll of
//               CHAN_ABORT spun until its timeout.
//
// Not patched (documented gaps): clock dividers other than 1.0 (the harness refuses to step an
// enabled SM whose CLKDIV is not 1.0), DMA transfers take zero time (no RP2040-E13 in-flight
// transfers can exist), a blocking PULL / autopull stall is released by the TX FIFO write itself.

const PIO_SM0_SHIFTCTRL = 0x0d0;
const PIO_SM0_CLKDIV = 0x0c8;
const SM_STRIDE = 0x18;
const FJOIN_TX = 1 << 30;
const FJOIN_RX = 1 << 31;
const FDEBUG_TXSTALL = 1 << 24;
const DMA_MULTI_CHAN_TRIGGER = 0x430;
const DMA_CHAN_ABORT = 0x444;

export const ALL_PATCHES = ['lockstep', 'delay', 'wait', 'waitpin', 'sync', 'loopback', 'pulls', 'fjoin', 'txstall',
  'dmaregs'];

/** Level of a pad whose output driver is off: the external level if something drives it (the harness
 *  called setInputValue), else its pulls (with the 'pulls' patch; rp2040js alone: rawInputValue). */
export function undrivenLevel(g) {
  if (g._pulls && !g._external) return g.pullupEnabled && !g.pulldownEnabled;
  return g.rawInputValue;
}

/** What a logic analyser on the pin sees: the driven level where the output is enabled, else
 *  undrivenLevel (input enable and overrides play no part). */
export function padLevel(g) {
  return g.outputEnable ? g.outputValue : undrivenLevel(g);
}

/** Pad level of every GPIO as one word (bit n = GPIO n): driven level when the output is enabled,
 *  else the external level (input enable and input override applied, as rp2040js does). */
export function padLevels(rp2040) {
  let v = 0;
  const { gpio } = rp2040;
  for (let i = 0; i < gpio.length; i++) {
    if (gpio[i].inputValue) v |= 1 << i;
  }
  return v >>> 0;
}

/** A cheap change detector for the pads: `changed()` is true when a PIO block's pin values or
 *  directions or the SIO outputs moved since the last call that returned true, or after
 *  `invalidate()` (a bus write to IO_BANK0/PADS, an external input level). */
export function padWatcher(rp2040) {
  const p0 = rp2040.pio[0];
  const p1 = rp2040.pio[1];
  const sio = rp2040.sio;
  const sig = { a: -1, b: -1, c: -1, d: -1, e: -1, f: -1, dirty: true };
  return {
    invalidate() {
      sig.dirty = true;
    },
    changed() {
      if (!sig.dirty && sig.a === p0.pinValues && sig.b === p0.pinDirections && sig.c === p1.pinValues &&
          sig.d === p1.pinDirections && sig.e === sio.gpioValue && sig.f === sio.gpioOutputEnable) {
        return false;
      }
      sig.a = p0.pinValues;
      sig.b = p0.pinDirections;
      sig.c = p1.pinValues;
      sig.d = p1.pinDirections;
      sig.e = sio.gpioValue;
      sig.f = sio.gpioOutputEnable;
      sig.dirty = false;
      return true;
    },
  };
}

/**
 * Apply the patches named in `patches` (default: all) to chip `rp2040`. Returns a controller:
 *   applied        the names applied
 *   tick()         call once per PIO cycle BEFORE stepping the PIO blocks: shifts the input
 *                  synchronisers (pad levels entering this cycle -> 1 -> 2 cycles old)
 *   stepPio(pio)   one PIO cycle of that block (only its enabled SMs execute)
 *   invalidate()   call after anything that changes pads outside the PIO/SIO outputs (IO_BANK0 or
 *                  PADS writes, an external input level), so the next tick re-reads the pads
 *   syncSettled()  true when the synchronisers hold the current pad levels (nothing in flight)
 *   clkdivOk(pio)  false when an enabled SM of that block has CLKDIV != 1.0 (not modelled)
 * A harness loop per PIO cycle: ctl.tick(); ctl.stepPio(pio0); ctl.stepPio(pio1);
 * rp2040.clock.tick(8) (lets DREQ-paced DMA transfers fire), as wholechip/regbus.mjs does.
 */
export function applyPioPatches(rp2040, patches = ALL_PATCHES) {
  const on = new Set(patches);
  for (const p of on) {
    if (!ALL_PATCHES.includes(p)) throw new Error(`unknown rp2040js patch ${p}`);
  }
  const ctl = { applied: [...on], stepPio: (pio) => pio.step(), tick: () => {}, invalidate: () => {}, syncSettled: () => true };

  // ---- pulls: an undriven pad reads its pull-up / pull-down ---------------------------------------
  if (on.has('pulls')) {
    for (const pin of rp2040.gpio) {
      pin._pulls = true;
      pin._external = false;
      const origSet = pin.setInputValue.bind(pin);
      pin.setInputValue = function (value) {
        this._external = true;
        origSet(value);
      };
      pin.refreshInput = function () {
        origSet(this.rawInputValue); // a pad write (input enable) is not an external driver
      };
      if (!on.has('loopback')) {
        Object.defineProperty(pin, 'inputValue', {
          configurable: true,
          get() {
            const v = (this.outputEnable ? false : undrivenLevel(this)) && this.inputEnable;
            switch (this.inputOverride) {
              case 1: return !v;
              case 2: return false;
              case 3: return true;
              default: return v;
            }
          },
        });
      }
    }
  }

  // ---- loopback: GPIO input value = pad level ----------------------------------------------------
  if (on.has('loopback')) {
    for (const pin of rp2040.gpio) {
      Object.defineProperty(pin, 'inputValue', {
        configurable: true,
        get() {
          const level = this.outputEnable ? this.outputValue : undrivenLevel(this);
          const v = level && this.inputEnable;
          switch (this.inputOverride) {
            case 1: return !v;
            case 2: return false;
            case 3: return true;
            default: return v;
          }
        },
      });
    }
  }

  // ---- sync: two-flop synchroniser in front of the PIO -------------------------------------------
  // sync1/sync2: pad levels one and two cycles ago; the PIO sees sync2 (bypassed bits: now).
  // cur: pad levels now (refreshed lazily); last: pad levels entering the current cycle; s1, s2: one
  // and two cycles before. The PIO sees s2 (bits set in INPUT_SYNC_BYPASS: last).
  const sync = { cur: padLevels(rp2040), last: 0, s1: 0, s2: 0 };
  sync.last = sync.s1 = sync.s2 = sync.cur;
  const pioInputs = (pio) => {
    if (!on.has('sync')) return rp2040.gpioValues >>> 0;
    const by = pio.inputSyncBypass >>> 0;
    return ((sync.s2 & ~by) | (sync.last & by)) >>> 0;
  };
  if (on.has('sync')) {
    // pad levels are recomputed only when a pin source changed (PIO/SIO outputs and directions) or
    // the harness called invalidate() (bus write to IO_BANK0/PADS, external input change)
    const pads = padWatcher(rp2040);
    ctl.invalidate = () => pads.invalidate();
    const refresh = () => {
      if (pads.changed()) sync.cur = padLevels(rp2040);
    };
    ctl.tick = () => {
      sync.s2 = sync.s1;
      sync.s1 = sync.last;
      refresh();
      sync.last = sync.cur;
    };
    ctl.syncSettled = () => {
      // after the next tick the PIO would see the current pad levels, and so on: nothing in flight
      refresh();
      return sync.s2 === sync.cur && sync.s1 === sync.cur && sync.last === sync.cur;
    };
  }

  // the GPIO a pin WAIT looks at: through the current IN_BASE (waitpin) or as first resolved
  const waitPin = (sm) => (sm._waitPinRel >= 0 ? (sm._waitPinRel + sm.inBase) % 32 : sm.waitIndex);
  // would a waiting SM's pin WAIT be released by the pad levels it will see once nothing is in flight?
  ctl.pinWaitSatisfied = (sm) => {
    const v = on.has('sync') ? sync.cur : rp2040.gpioValues >>> 0;
    return !!((v >>> waitPin(sm)) & 1) === sm.waitPolarity;
  };

  for (const pio of rp2040.pio) {
    // ---- lockstep: no free-running PIO, only enabled SMs step --------------------------------
    if (on.has('lockstep')) {
      pio.run = () => {};
      pio.step = function () {
        for (const m of this.machines) {
          if (m.enabled) m.step();
        }
        this.checkChangedPins();
      };
    }

    // ---- dmaregs handled once below (DMA is not per PIO)

    for (const sm of pio.machines) {
      sm._delayLeft = 0;
      const origRestart = sm.restart.bind(sm);
      const origWriteReg = sm.writeUint32.bind(sm);
      const origJmp = sm.jmpCondition.bind(sm);
      const origCheckWait = sm.checkWait.bind(sm);

      if (on.has('lockstep')) {
        // CTRL.CLKDIV_RESTART: with divider 1.0 (the only one stepped) there is no fractional phase
        // to restart; rp2040js only logged "not implemented"
        sm.clkDivRestart = () => {};
      }
      sm.restart = function () {
        origRestart();
        this._delayLeft = 0; // SM_RESTART clears the delay counter
      };

      if (on.has('sync')) {
        // WAIT GPIO/PIN, JMP PIN and IN/MOV PINS read the synchronised levels
        Object.defineProperty(sm, 'inPins', {
          configurable: true,
          get() {
            const v = pioInputs(this.pio);
            const b = this.inBase;
            return (b ? (v << (32 - b)) | (v >>> b) : v) >>> 0;
          },
        });
        sm.jmpCondition = function (condition) {
          if (condition === 0b110) return !!((pioInputs(this.pio) >>> this.jmpPin) & 1);
          return origJmp(condition);
        };
      }
      if (on.has('sync') || on.has('waitpin')) {
        sm.checkWait = function () {
          if (this.waiting && this.waitType === 1 /* WaitType.Pin */) {
            const level = !!((pioInputs(this.pio) >>> waitPin(this)) & 1);
            if (level === this.waitPolarity) {
              this.waiting = false;
              this.nextPC();
              this.cycles += this.waitDelay;
              this.execCtrl &= ~(1 << 31);
            }
            return;
          }
          origCheckWait();
        };
      }

      sm._waitPinRel = -1;
      if (on.has('waitpin')) {
        const inner = sm.executeInstruction.bind(sm);
        sm.executeInstruction = function (opcode) {
          // WAIT (001) with source PIN (bits 6:5 = 01): remember the index relative to IN_BASE
          this._waitPinRel = (opcode >>> 13) === 1 && ((opcode >>> 5) & 3) === 1 ? opcode & 31 : -1;
          return inner(opcode);
        };
      }

      if (on.has('txstall')) {
        const innerExec = sm.executeInstruction.bind(sm);
        sm.executeInstruction = function (opcode) {
          // PULL (100, bit 7 = 1) without Block (bit 5 = 0) on an empty FIFO: no stall, no TXSTALL
          const noblockPull = (opcode >>> 13) === 4 && opcode & 0x80 && !(opcode & 0x20) && this.txFIFO.empty;
          if (!noblockPull) return innerExec(opcode);
          const bit = FDEBUG_TXSTALL << this.index;
          const stall = this.pio.txStall & bit;
          const dbg = this.pio.fdebug & bit;
          innerExec(opcode);
          this.pio.txStall = (this.pio.txStall & ~bit) | stall;
          this.pio.fdebug = (this.pio.fdebug & ~bit) | dbg;
          return undefined;
        };
      }

      if (on.has('fjoin')) {
        sm.writeUint32 = function (offset, value) {
          const before = this.shiftCtrl >>> 0;
          origWriteReg(offset, value);
          if (offset + PIO_SM0_CLKDIV === PIO_SM0_SHIFTCTRL) {
            const after = this.shiftCtrl >>> 0;
            if ((before ^ after) & (FJOIN_TX | FJOIN_RX)) {
              const tx = after & FJOIN_TX ? 8 : after & FJOIN_RX ? 0 : 4;
              const rx = after & FJOIN_RX ? 8 : after & FJOIN_TX ? 0 : 4;
              const Fifo = this.txFIFO.constructor;
              this.txFIFO = new Fifo(tx); // new storage: both FIFOs flushed
              this.rxFIFO = new Fifo(rx);
              this.updateDMATx();
              this.updateDMARx();
            }
          }
        };
      }

      // ---- delay + wait: one call of step() = one PIO cycle --------------------------------
      if (on.has('delay') || on.has('wait')) {
        const useDelay = on.has('delay');
        const useWait = on.has('wait');
        sm.step = function () {
          if (useDelay && this._delayLeft > 0) {
            this._delayLeft--;
            return;
          }
          if (this.waiting) {
            this.checkWait();
            if (this.waiting) return;
            if (useWait) {
              // the stalled instruction completed in THIS cycle; its delay (if any) follows
              if (useDelay) this._delayLeft = this.waitDelay > 0 ? this.waitDelay : 0;
              return;
            }
          }
          const c0 = this.cycles;
          this.updatePC = true;
          this.executeInstruction(this.pio.instructions[this.pc]);
          if (this.updatePC) this.nextPC();
          if (useDelay && !this.waiting) this._delayLeft = Math.max(0, this.cycles - c0 - 1);
        };
      }
    }
  }

  // ---- dmaregs ---------------------------------------------------------------------------------
  if (on.has('dmaregs')) {
    const dma = rp2040.dma;
    const origRead = dma.readUint32.bind(dma);
    dma.readUint32 = function (offset) {
      if (offset === DMA_CHAN_ABORT || offset === DMA_MULTI_CHAN_TRIGGER) return 0;
      return origRead(offset);
    };
  }

  ctl.stepPio = (pio) => pio.step();
  ctl.clkdivOk = (pio) => {
    for (const m of pio.machines) {
      if (m.enabled && (m.clockDivInt !== 1 || m.clockDivFrac !== 0)) return false;
    }
    return true;
  };
  ctl.smRegister = (sm) => PIO_SM0_CLKDIV + SM_STRIDE * sm;
  return ctl;
}
