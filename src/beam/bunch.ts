/**
 * The bunch pattern of the European XFEL: the time server's table decoded per SASE, the SASE of each
 * instrument, and the detector's frame stride for each repetition rate (exdf.md's bit rules; the rest of
 * the spec in src/beam/annotate.ts).
 */
import { InputError } from "../errors.ts";

/** Frames the LITFRM arrays hold (AGIPD memory cells). */
export const LITFRM_FRAMES = 352;
/** Pulse slots of the bunch pattern table. */
export const PULSE_SLOTS = 2700;

export type Sase = 1 | 2 | 3;

const DEST_MASK = 0xf << 18;
const SOFT_KICK = 1 << 27;

/** Pulse slots holding a pulse for the SASE (exdf.md's bit rules), ascending. */
export function decodeBunchPattern(table: ArrayLike<number>, sase: Sase): number[] {
  const out: number[] = [];
  const n = Math.min(table.length, PULSE_SLOTS);
  for (let s = 0; s < n; s++) {
    const bp = table[s] >>> 0;
    let hit: boolean;
    if (sase === 1) hit = (bp & (SOFT_KICK | DEST_MASK)) >>> 0 === 4 << 18;
    else if (sase === 2) hit = (bp & DEST_MASK) === 2 << 18;
    else hit = (bp & (SOFT_KICK | DEST_MASK)) >>> 0 === (SOFT_KICK | (4 << 18)) >>> 0;
    if (hit) out.push(s);
  }
  return out;
}

const INSTRUMENT_SASE: Record<string, Sase> = {
  SPB: 1,
  FXE: 1,
  MID: 2,
  HED: 2,
  SQS: 3,
  SCS: 3,
  SXP: 3,
};

/** The SASE of an instrument ("SPB") or of a source name that starts with it ("MID_DET_AGIPD1M-1"). */
export function saseForInstrument(name: string): Sase {
  const inst = name.split(/[_/]/)[0].toUpperCase();
  const s = INSTRUMENT_SASE[inst];
  if (!s) {
    throw new InputError(
      undefined,
      `unknown instrument "${inst}": cannot tell its SASE (known: ${
        Object.keys(INSTRUMENT_SASE).join(", ")
      }; give --sase 1|2|3)`,
    );
  }
  return s;
}

const RATES: [number, number][] = [[4.5, 1], [2.2, 2], [1.1, 4], [0.5, 8]];

/** Pulse-slot stride of a repetition rate in MHz (4.5: 1, 2.2: 2, 1.1: 4, 0.5: 8; within 15 %). */
export function strideForRate(mhz: number): number {
  for (const [r, s] of RATES) if (Math.abs(mhz - r) <= 0.15 * r) return s;
  throw new InputError(undefined, `repetition rate ${mhz} MHz is not one of 4.5, 2.2, 1.1, 0.5`);
}

export function rateForStride(stride: number): number {
  const r = RATES.find(([, s]) => s === stride);
  if (!r) throw new InputError(undefined, `pulse-slot stride ${stride} is not one of 1, 2, 4, 8`);
  return r[0];
}
