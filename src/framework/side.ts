/**
 * Side data aligned on frames: per-train values of any source (a control key, or a fast-data key with one
 * entry per train), delivered with each batch as one float64 per frame: the value of the frame's train,
 * NaN where the source lacks that train (never the neighbour's value). Vector entries give their first
 * element, or `index`.
 */
import { arrayFor, type NumericArray, readSlab } from "../exdf/h5.ts";
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
  for (const k of keys) {
    const values = new Map<number, number>();
    for (const f of run.files) {
      const src = f.sources.get(k.source);
      if (!src) continue;
      const control = src.kind === "CONTROL";
      const group = control ? "" : k.key.split(".")[0];
      const index = src.index.get(group);
      if (!index) continue;
      const path = control
        ? `CONTROL/${k.source}/${k.key.replaceAll(".", "/")}/value`
        : `INSTRUMENT/${k.source}/${k.key.replaceAll(".", "/")}`;
      const ds = f.h5.get(path) as {
        shape: number[];
        metadata: { size: number; type: number; signed: boolean };
      } | null;
      if (!ds) continue;
      const shape = ds.shape;
      const entry = shape.slice(1).reduce((a, b) => a * b, 1);
      const m = ds.metadata;
      const dtype = m.type === 1 ? `float${m.size * 8}` : `${m.signed ? "int" : "uint"}${m.size * 8}`;
      const buf: NumericArray = arrayFor(dtype, entry);
      f.trainIds.forEach((t, i) => {
        if (index.count[i] < 1 || index.first[i] >= shape[0]) return;
        readSlab(f.h5, path, [index.first[i], ...shape.slice(1).map(() => 0)], [1, ...shape.slice(1)], buf);
        values.set(t, Number(buf[Math.min(k.index ?? 0, entry - 1)]));
      });
    }
    out.set(k.name, values);
  }
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
