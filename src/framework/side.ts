/**
 * Side data aligned on frames: per-train values of any source (a control key, or a fast-data key with one
 * entry per train), delivered with each batch as one float64 per frame: the value of the frame's train,
 * NaN where the source lacks that train (never the neighbour's value). Vector entries give their first
 * element, or `index`.
 */
import { KeyData } from "../exdf/keydata.ts";
import type { Run } from "../exdf/run.ts";

export interface SideKey {
  /** Name under which the values are delivered. */
  name: string;
  source: string;
  key: string;
  index?: number;
}

export type SideData = Record<string, Float64Array>;

export type SideTable = Map<string, Map<number, number>>;

/** Read the per-train values of each side key (small: one number per train). */
export function loadSide(run: Run, keys: SideKey[]): SideTable {
  const out: SideTable = new Map();
  for (const k of keys) out.set(k.name, new KeyData(run, k.source, k.key).trainValues(k.index ?? 0));
  return out;
}

/** The side values of a batch's frames. */
export function alignSide(table: SideTable, trainIds: ArrayLike<number>): SideData {
  const out: SideData = {};
  for (const [name, values] of table) {
    const a = new Float64Array(trainIds.length);
    for (let i = 0; i < trainIds.length; i++) a[i] = values.get(trainIds[i]) ?? NaN;
    out[name] = a;
  }
  return out;
}
