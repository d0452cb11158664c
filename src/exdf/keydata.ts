/**
 * One key of one source of a run, read per train or per row range (EXtra-data's KeyData).
 *
 * Spec (../shared/docs/exdf.md):
 * - Where the key's rows lie comes from INDEX as run.ts parsed it once when the run was opened
 *   (`SourceInFile.index`: `first`/`count`, the legacy `first`/`last`/`status` form turned into counts
 *   there). Nothing else in src/ walks INDEX by hand: per-train values, first rows of trains and row ranges
 *   of a key all come from here.
 * - Dataset: CONTROL keys `a.b` are `CONTROL/<src>/a/b/value` (index group ""); INSTRUMENT keys `g.rest` are
 *   `INSTRUMENT/<src>/g/rest` (index group `g`, the key's first component).
 * - Trains: in file order, then INDEX order; a train without rows (count 0) is skipped; rows past the
 *   dataset's end are left out (run.ts reports such a file's INDEX as a problem). A train present in two
 *   files takes its value from the first (`firstRows`, `trainValues`).
 * - Reads go into caller buffers (any numeric typed array, converted element by element when the dtype
 *   differs; 64-bit integers become numbers).
 */
import { arrayFor, dsInfo, type H5Dataset, type NumericArray, readSlab } from "./h5.ts";
import type { RunFile, SourceIndex } from "./run.ts";

/** The key in one file. */
export interface KeyFile {
  file: RunFile;
  /** Dataset path in the file. */
  path: string;
  index: SourceIndex;
  /** Rows of the dataset. */
  rows: number;
  /** Shape of one entry (the dataset's shape without the first axis). */
  entryShape: number[];
  dtype: string;
}

/** The rows of one train in one file: [first, first + count). */
export interface TrainRows {
  part: KeyFile;
  trainId: number;
  first: number;
  count: number;
}

/** Rows, a typed array of numbers the reads convert into. */
export type RowBuffer =
  | Float64Array
  | Float32Array
  | Uint32Array
  | Int32Array
  | Uint16Array
  | Int16Array
  | Uint8Array
  | Int8Array;

export class KeyData {
  /** The files holding the key, in the run's file order. */
  readonly parts: KeyFile[] = [];

  constructor(run: { files: readonly RunFile[] }, readonly source: string, readonly key: string) {
    for (const file of run.files) {
      const src = file.sources.get(source);
      if (!src) continue;
      const control = src.kind === "CONTROL";
      const index = src.index.get(control ? "" : key.split(".")[0]);
      if (!index) continue;
      const p = control
        ? `CONTROL/${source}/${key.replaceAll(".", "/")}/value`
        : `INSTRUMENT/${source}/${key.replaceAll(".", "/")}`;
      let ds: unknown;
      try {
        ds = file.h5.get(p);
      } catch {
        continue;
      }
      if ((ds as { type?: string } | null)?.type !== "Dataset") continue;
      const info = dsInfo(ds as H5Dataset);
      this.parts.push({
        file,
        path: p,
        index,
        rows: info.shape[0] ?? 0,
        entryShape: info.shape.slice(1),
        dtype: info.dtype,
      });
    }
  }

  /** Whether any file of the run holds the key. */
  get present(): boolean {
    return this.parts.length > 0;
  }

  /** Elements of one entry. */
  get entrySize(): number {
    return this.parts[0]?.entryShape.reduce((a, b) => a * b, 1) ?? 1;
  }

  /** The rows of every train that has some, in file order, then INDEX order. */
  *trains(): Generator<TrainRows> {
    for (const part of this.parts) {
      for (const t of indexRows(part.file, part.index, part.rows)) {
        if (t.count > 0) yield { part, trainId: t.trainId, first: t.first, count: t.count };
      }
    }
  }

  /** The first row of each train (from the first file holding it). */
  firstRows(): Map<number, { part: KeyFile; row: number }> {
    const out = new Map<number, { part: KeyFile; row: number }>();
    for (const t of this.trains()) {
      if (!out.has(t.trainId)) out.set(t.trainId, { part: t.part, row: t.first });
    }
    return out;
  }

  /**
   * Per train, one number: element `element` (clamped to the entry) of the train's first row. Small
   * datasets are read whole, larger ones a row per train.
   */
  trainValues(element = 0): Map<number, number> {
    const out = new Map<number, number>();
    const per = this.entrySize;
    const e = Math.max(0, Math.min(element, per - 1));
    for (const part of this.parts) {
      const whole = part.rows * per <= 2 ** 20 ? arrayFor(part.dtype, part.rows * per) : null;
      if (whole) {
        readSlab(part.file.h5, part.path, [0, ...part.entryShape.map(() => 0)], [
          part.rows,
          ...part.entryShape,
        ], whole);
      }
      const row = whole ? null : arrayFor(part.dtype, per);
      const { first, count } = part.index;
      const ids = part.file.trainIds;
      for (let i = 0; i < ids.length && i < first.length; i++) {
        if (count[i] < 1 || first[i] >= part.rows || out.has(ids[i])) continue;
        if (whole) out.set(ids[i], Number(whole[first[i] * per + e]));
        else {
          readSlab(part.file.h5, part.path, [first[i], ...part.entryShape.map(() => 0)], [
            1,
            ...part.entryShape,
          ], row!);
          out.set(ids[i], Number(row![e]));
        }
      }
    }
    return out;
  }

  /** The entries of one train (every row INDEX gives it, first file holding it) into `out`; returns the rows read. */
  readTrain(trainId: number, out: RowBuffer, at = 0): number {
    for (const t of this.trains()) {
      if (t.trainId !== trainId) continue;
      this.readRows(t.part, t.first, t.count, out, at);
      return t.count;
    }
    return 0;
  }

  /** Rows [row, row + n) of the key in one of its files into `out` (at element `at`). */
  readRows(part: KeyFile, row: number, n: number, out: RowBuffer, at = 0): void {
    readRowsInto(part, part.path, row, n, out, at);
  }

  /**
   * Rows of the key in its files, in file order, then INDEX order, adjacent rows of a file merged into one
   * range; `at` counts the rows before the range (its position in the concatenation).
   */
  ranges(): { part: KeyFile; row: number; n: number; at: number }[] {
    const out: { part: KeyFile; row: number; n: number; at: number }[] = [];
    let at = 0;
    for (const t of this.trains()) {
      const last = out[out.length - 1];
      if (last && last.part === t.part && last.row + last.n === t.first) last.n += t.count;
      else out.push({ part: t.part, row: t.first, n: t.count, at });
      at += t.count;
    }
    return out;
  }
}

/**
 * Every train of a file with the rows an index (run.ts's parse of one source group's INDEX) gives it:
 * `i` the train's position in the file, count 0 for a train without rows (or past the end of a short index), rows past `rows` (the dataset's
 * length) left out. The walk of INDEX that KeyData and the per-module readers (reduce, the annotation)
 * share.
 */
export function* indexRows(
  file: RunFile,
  index: SourceIndex,
  rows: number,
): Generator<{ i: number; trainId: number; first: number; count: number }> {
  const ids = file.trainIds;
  for (let i = 0; i < ids.length; i++) {
    const first = index.first[i] ?? 0;
    yield { i, trainId: ids[i], first, count: Math.max(0, Math.min(index.count[i] ?? 0, rows - first)) };
  }
}

/** Read rows [row, row + n) of dataset `p` of a file into `out` at element `at`, converting to its type. */
export function readRowsInto(
  part: { file: RunFile },
  p: string,
  row: number,
  n: number,
  out: RowBuffer,
  at = 0,
): void {
  const info = dsInfo(part.file.h5.get(p) as H5Dataset);
  const rest = info.shape.slice(1);
  const per = rest.reduce((a, b) => a * b, 1);
  const sameType = arrayFor(info.dtype, 0).constructor === out.constructor;
  if (sameType) {
    readSlab(part.file.h5, p, [row, ...rest.map(() => 0)], [n, ...rest], out as NumericArray, at);
    return;
  }
  const tmp = arrayFor(info.dtype, n * per);
  readSlab(part.file.h5, p, [row, ...rest.map(() => 0)], [n, ...rest], tmp, 0);
  for (let i = 0; i < tmp.length; i++) out[at + i] = Number(tmp[i]);
}
