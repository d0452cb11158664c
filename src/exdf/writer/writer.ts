/**
 * EuXFEL-format (EXDF) file writer: declared datasets, aliases over parameters, trains in bulk or one by
 * one, buffering, sequence splitting, and the checks that keep every file valid.
 *
 * Model. A schema declares datasets (source, key, entry shape, dtype). Trains are added with their
 * number of entries per source (`addTrains`); data then arrives per dataset in any number of calls, each
 * covering whole trains (`addData`). `writeTrain` does both for one train. Every call checks its input
 * completely before it changes anything, so a rejected call leaves the writer as it was.
 *
 * Files. Trains are assigned to sequence files as they are added (at most `maxTrainsPerFile` trains or
 * `maxBytesPerFile` data bytes each). A file is written under a temporary name (`.<name>.tmp-<pid>-<n>`)
 * and renamed to its final name once its trains are closed (a later train went to the next file, or
 * `close()`) and every dataset holds the data of all its trains. An error, `abort()`, process exit,
 * SIGINT/SIGTERM/SIGHUP remove the temporary files: no partial file ever carries a final name.
 *
 * Layout written (format 1.2): METADATA/{dataFormatVersion, creationDate, updateDate, daqLibrary,
 * sequenceNumber, [runNumber, proposalNumber], dataSources/{dataSourceId, root, deviceId}};
 * INDEX/{trainId, timestamp, flag, origin}; control sources: CONTROL/<src>/<key path>/{value, timestamp}
 * (one row per train), RUN/<src>/<key path>/{value, timestamp} (one row per file), INDEX/<src>/{first,count};
 * instrument sources (`device:channel`): INSTRUMENT/<src>/<group>/<rest of key>, INDEX/<src>/<group>/
 * {first,count} where the group is the key's first component.
 *
 * Memory. h5wasm works through a wasm heap (max 2 GiB, never shrinks): data goes to HDF5 in slices of at
 * most `sliceBytes`; buffered rows are kept in staging arrays bounded by `bufferBytes` in total; at most
 * `maxOpenFiles` HDF5 files are open at once (others are closed and reopened when needed).
 *
 * Code: this file (the FileWriter API, trains and the checks), src/exdf/writer/schema.ts (types, templates,
 * schema resolution, data checks), src/exdf/writer/files.ts (sequence files, HDF5 writes, temporary names,
 * process cleanup). User guide: docs/writer.md.
 */
import * as fs from "node:fs";
import { firstLine, h5, type NumericArray } from "../h5.ts";
import { type Run, SeqFiles } from "./files.ts";
import { track } from "../../app/cleanup.ts";
import type { Wasm } from "../wasm.ts";
import {
  type DataInput,
  type DatasetNames,
  type Ds,
  fmtShape,
  type Parsed,
  parseInput,
  resolveSchema,
  type SourceInfo,
  type Src,
  WriterError,
  type WriterOptions,
  type WriterSchema,
} from "./schema.ts";

export {
  type DataInput,
  type DatasetNames,
  type DatasetSpec,
  DEFAULT_TEMPLATE,
  defineSchema,
  type DType,
  formatTemplate,
  type SourceInfo,
  WriterError,
  type WriterOptions,
  type WriterSchema,
} from "./schema.ts";

interface TrainPlan {
  ids: bigint[];
  ts: bigint[];
  counts: Map<Src, number[]>;
}

function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

/**
 * Writes EuXFEL HDF5 files. Create with `FileWriter.open(template, schema, options)`; feed trains and
 * data; `close()` (or `abort()`).
 */
export class FileWriter<N extends string = string> {
  private readonly srcs: Src[];
  private readonly ds: Map<string, Ds>;
  private readonly tids: bigint[] = [];
  private readonly tss: bigint[] = [];
  private readonly files_: SeqFiles;
  private state: "open" | "closed" | "aborted" = "open";
  private abortReason = "";

  private constructor(
    files: (run: Run) => SeqFiles,
    srcs: Src[],
    private readonly overwrite: boolean,
  ) {
    this.srcs = srcs;
    this.ds = new Map(srcs.flatMap((s) => s.datasets.map((d) => [d.name, d] as [string, Ds])));
    // The files see the same (growing) train arrays.
    this.files_ = files({ srcs, datasets: [...this.ds.values()], tids: this.tids, tss: this.tss });
  }

  /** Check schema and options, resolve aliases and shapes. Files are created as trains are added. */
  static async open<const S extends WriterSchema>(
    pathTemplate: string,
    schema: S,
    options: WriterOptions = {},
  ): Promise<FileWriter<DatasetNames<S>>> {
    const lib = await h5();
    const { opt, names, srcs } = resolveSchema(pathTemplate, schema, options);
    const wasm = (await lib.ready) as unknown as Wasm;
    const w = new FileWriter<DatasetNames<S>>(
      (run) => new SeqFiles(lib, wasm, opt, pathTemplate, names, run),
      srcs,
      opt.overwrite,
    );
    track(w, true);
    return w;
  }

  // -------------------------------------------------------------------------------------------------
  // Inspection

  /** Resolved sources. */
  get sources(): SourceInfo[] {
    return this.srcs.map((s) => ({
      name: s.name,
      aliases: [...s.aliases],
      kind: s.kind,
      groups: [...s.groups],
      datasets: s.datasets.map((d) => d.name),
    }));
  }

  /** Trains added so far. */
  get trainCount(): number {
    return this.tids.length;
  }

  /** Final paths of the files completed so far (all of them after `close()`). */
  get files(): string[] {
    return [...this.files_.done];
  }

  // -------------------------------------------------------------------------------------------------
  // Adding trains and data

  /**
   * Add trains: IDs non-zero and strictly increasing (also across calls); `counts` gives the entries
   * per train of each source (`@alias` or full name; a number for all trains or one per train).
   * Instrument sources left out have 0 entries; control sources have 1 (0 or 1 allowed).
   * `timestamps` (ns since the epoch, non-decreasing) default to now.
   */
  addTrains(
    trainIds: ArrayLike<number | bigint>,
    counts: Readonly<Record<string, number | ArrayLike<number>>> = {},
    options: { timestamps?: ArrayLike<number | bigint> } = {},
  ): void {
    this.checkOpen();
    const plan = this.planTrains(trainIds, counts, options.timestamps);
    this.guard(() => {
      this.applyTrains(plan);
      this.files_.advance();
    });
  }

  /**
   * Add data to datasets, each call covering whole trains following the trains its dataset already has
   * data for. `addData(name, data)` or `addData({ name: data, ... })` (all checked before any is taken).
   */
  addData(name: N, data: DataInput): void;
  addData(data: Partial<Record<N, DataInput>>): void;
  addData(a: N | Partial<Record<N, DataInput>>, b?: DataInput): void {
    this.checkOpen();
    const items: [Ds, DataInput][] = typeof a === "string"
      ? [[this.dataset(a), b as DataInput]]
      : Object.entries(a).filter(([, v]) => v !== undefined).map((
        [k, v],
      ) => [this.dataset(k), v as DataInput]);
    const parsed = items.map(([ds, v]) => {
      if (ds.constant) throw new WriterError(`${ds.label}: has a constant value (setConstant)`, ds.name);
      const p = parseInput(ds, v);
      this.checkRows(ds, p.n);
      return [ds, p] as const;
    });
    this.guard(() => {
      for (const [ds, p] of parsed) this.files_.writeRows(ds, p.arr, p.n);
      this.files_.advance();
    });
  }

  /** A control dataset's value for every train of the run (also its RUN value). */
  setConstant(name: N, value: DataInput): void {
    this.checkOpen();
    const ds = this.dataset(name);
    const bad = (p: string) => new WriterError(`${ds.label}: ${p}`, ds.name);
    if (ds.src.kind !== "control") throw bad("setConstant is for control sources only");
    if (ds.constant) throw bad("constant already set");
    if (ds.rows > 0) throw bad("already has data for some trains");
    const p = parseInput(ds, value);
    if (p.n !== 1) {
      throw bad(`a constant is one entry of shape ${fmtShape(ds.entryShape)}, got ${p.n} entries`);
    }
    ds.constant = p.arr.slice(0, ds.entryElems) as NumericArray;
    this.guard(() => this.files_.advance());
  }

  /**
   * Add one train and its data: instrument sources get as many entries as their data has (0 when none
   * of their datasets is given; all of them otherwise), control sources one entry.
   */
  writeTrain(
    trainId: number | bigint,
    data: Partial<Record<N, DataInput>>,
    options: { timestamp?: number | bigint } = {},
  ): void {
    this.checkOpen();
    const given = new Map<Ds, Parsed>();
    for (const [k, v] of Object.entries(data)) {
      if (v === undefined) continue;
      const ds = this.dataset(k);
      if (ds.constant) throw new WriterError(`${ds.label}: has a constant value (setConstant)`, ds.name);
      given.set(ds, parseInput(ds, v as DataInput, true));
    }
    const counts: Record<string, number> = {};
    for (const src of this.srcs) {
      const needed = src.datasets.filter((d) => !d.constant);
      const have = needed.filter((d) => given.has(d));
      const ns = new Set(have.map((d) => given.get(d)!.n));
      if (ns.size > 1) {
        throw new WriterError(
          `train ${trainId}: source ${src.name}: datasets differ in entries (${
            have.map((d) => `${d.name}: ${given.get(d)!.n}`).join(", ")
          })`,
        );
      }
      const n = have.length ? [...ns][0] : 0;
      if (src.kind === "control") {
        const missing = needed.filter((d) => !given.has(d));
        if (missing.length) {
          throw new WriterError(
            `train ${trainId}: no data for ${missing[0].label} (control sources have one entry per train;` +
              ` give it, or setConstant)`,
            missing[0].name,
          );
        }
        if (have.length && n !== 1) {
          throw new WriterError(
            `train ${trainId}: ${have[0].label}: control data has one entry per train, got ${n}`,
          );
        }
        counts[src.name] = 1;
      } else {
        if (have.length && have.length < needed.length) {
          const missing = needed.find((d) => !given.has(d))!;
          throw new WriterError(
            `train ${trainId}: no data for ${missing.label} (the source's other datasets have ${n} entries)`,
            missing.name,
          );
        }
        counts[src.name] = n;
      }
    }
    const ts = options.timestamp === undefined ? undefined : [options.timestamp];
    const plan = this.planTrains([trainId], counts, ts);
    this.guard(() => {
      this.applyTrains(plan);
      for (const [ds, p] of given) this.files_.writeRows(ds, p.arr, p.n);
      this.files_.advance();
    });
  }

  // -------------------------------------------------------------------------------------------------
  // Closing

  /**
   * Write out everything and rename the remaining files to their final names; returns all final paths.
   * Datasets must hold data for all trains: otherwise a WriterError lists them and the writer stays open
   * (add the data, or `abort()`), unless `fillMissing` writes zeros for the missing entries.
   */
  close(options: { fillMissing?: boolean } = {}): string[] {
    if (this.state === "closed") return this.files;
    this.checkOpen();
    if (!options.fillMissing) {
      const missing: string[] = [];
      for (const src of this.srcs) {
        const total = src.cum[this.tids.length];
        for (const ds of src.datasets) {
          if (!ds.constant && ds.rows < total) missing.push(`${ds.label}: ${ds.rows} of ${total} entries`);
        }
      }
      if (missing.length) throw new WriterError(`cannot close: data missing for ${missing.join("; ")}`);
    }
    this.guard(() => this.files_.closeAll(options.fillMissing ?? false));
    this.state = "closed";
    track(this, false);
    return this.files;
  }

  /**
   * Stop writing: close open HDF5 files and remove the temporary files. Files already completed keep
   * their final names (they are complete and valid). Safe to call any time, also after `close()`.
   */
  abort(reason = "aborted"): void {
    if (this.state !== "open") return;
    this.state = "aborted";
    this.abortReason = reason;
    this.files_.abort();
    track(this, false);
  }

  // -------------------------------------------------------------------------------------------------
  // Checks

  private checkOpen(): void {
    if (this.state === "closed") throw new WriterError("the writer is closed");
    if (this.state === "aborted") throw new WriterError(`the writer was aborted (${this.abortReason})`);
  }

  private dataset(name: string): Ds {
    const ds = this.ds.get(name);
    if (!ds) {
      throw new WriterError(`unknown dataset "${name}" (declared: ${[...this.ds.keys()].join(", ")})`, name);
    }
    return ds;
  }

  private source(ref: string): Src {
    const src = ref.startsWith("@")
      ? this.srcs.find((s) => s.aliases.includes(ref.slice(1)))
      : this.srcs.find((s) => s.name === ref);
    if (!src) {
      throw new WriterError(
        `unknown source "${ref}" (sources: ${
          this.srcs.map((s) => [...s.aliases.map((a) => "@" + a), s.name].join(" = ")).join(", ")
        })`,
      );
    }
    return src;
  }

  /** `n` more rows must end on a train boundary, within the trains added. */
  private checkRows(ds: Ds, n: number): void {
    const cum = ds.src.cum;
    const ntr = this.tids.length;
    const total = cum[ntr];
    const end = ds.rows + n;
    if (end > total) {
      const t0 = this.trainAtRow(cum, ds.rows);
      throw new WriterError(
        `${ds.label}: ${n} entries given, but the ${ntr - t0} trains added after its data so far ` +
          `hold ${total - ds.rows} entries of ${ds.src.name} (add the trains first, with their counts)`,
        ds.name,
      );
    }
    // Smallest t with cum[t] >= end: the data must end exactly there.
    const t = this.trainAtRow(cum, end);
    if (cum[t] !== end) {
      throw new WriterError(
        `${ds.label}: ${n} entries end inside train ${this.tids[t - 1]} (${end - cum[t - 1]} of its ` +
          `${cum[t] - cum[t - 1]} entries): data must cover whole trains`,
        ds.name,
      );
    }
  }

  private trainAtRow(cum: number[], row: number): number {
    let lo = 0;
    let hi = cum.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cum[mid] >= row) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  private planTrains(
    trainIds: ArrayLike<number | bigint>,
    counts: Readonly<Record<string, number | ArrayLike<number>>>,
    timestamps?: ArrayLike<number | bigint>,
  ): TrainPlan {
    const n = trainIds.length;
    const ids: bigint[] = new Array(n);
    let prev = this.tids.length ? this.tids[this.tids.length - 1] : 0n;
    for (let i = 0; i < n; i++) {
      const v = trainIds[i];
      if (typeof v === "number" && !Number.isSafeInteger(v)) {
        throw new WriterError(`train ID ${v} is not an integer`);
      }
      const id = BigInt(v);
      if (id <= 0n || id >= 1n << 64n) {
        throw new WriterError(`train ID ${id} at position ${i}: must be > 0 (u64)`);
      }
      if (id <= prev) {
        throw new WriterError(
          `train IDs must increase strictly: ${id} at position ${i} follows ${prev}${
            i === 0 ? " (the last train added)" : ""
          }`,
        );
      }
      ids[i] = prev = id;
    }
    let prevTs = this.tss.length ? this.tss[this.tss.length - 1] : 0n;
    const ts: bigint[] = new Array(n);
    if (timestamps !== undefined) {
      if (timestamps.length !== n) {
        throw new WriterError(`${timestamps.length} timestamps given for ${n} trains`);
      }
      for (let i = 0; i < n; i++) {
        const v = timestamps[i];
        if (typeof v === "number" && !Number.isSafeInteger(v)) {
          throw new WriterError(`timestamp ${v} is not an integer (ns since the epoch)`);
        }
        const t = BigInt(v);
        if (t < 0n || t >= 1n << 64n) throw new WriterError(`timestamp ${t} at position ${i}: not a u64`);
        if (t < prevTs) {
          throw new WriterError(`timestamps must not decrease: ${t} at position ${i} follows ${prevTs}`);
        }
        ts[i] = prevTs = t;
      }
    } else {
      const now = nowNs();
      for (let i = 0; i < n; i++) ts[i] = prevTs = now > prevTs ? now : prevTs;
    }
    const per = new Map<Src, number[]>();
    for (const [ref, c] of Object.entries(counts)) {
      const src = this.source(ref);
      if (per.has(src)) throw new WriterError(`counts for source ${src.name} given twice`);
      let arr: number[];
      if (typeof c === "number") arr = new Array(n).fill(c);
      else {
        if (c.length !== n) throw new WriterError(`counts of ${ref}: ${c.length} values for ${n} trains`);
        arr = Array.from(c);
      }
      for (let i = 0; i < n; i++) {
        const v = arr[i];
        if (!Number.isSafeInteger(v) || v < 0) {
          throw new WriterError(`counts of ${ref}: ${v} for train ${ids[i]} is not an integer >= 0`);
        }
        if (src.kind === "control" && v > 1) {
          throw new WriterError(
            `counts of ${ref}: ${v} for train ${ids[i]}: control sources have 0 or 1 entries`,
          );
        }
      }
      per.set(src, arr);
    }
    for (const src of this.srcs) {
      if (!per.has(src)) per.set(src, new Array(n).fill(src.kind === "control" ? 1 : 0));
    }
    // New sequence files must not overwrite existing files.
    if (!this.overwrite) {
      const segs = this.files_.segs;
      let seg: { start: number; end: number; bytes: number } | undefined = segs[segs.length - 1];
      let nt = seg ? seg.end - seg.start : 0;
      let bytes = seg ? seg.bytes : 0;
      let seq = segs.length;
      for (let i = 0; i < n; i++) {
        const b = this.trainBytes(per, i);
        if (!seg || this.files_.splitBefore(nt, bytes, b)) {
          const final = this.files_.finalName(seq++);
          if (fs.existsSync(final)) {
            throw new WriterError(`${final} exists (open the writer with overwrite: true to replace it)`);
          }
          seg = { start: 0, end: 0, bytes: 0 };
          nt = 0;
          bytes = 0;
        }
        nt++;
        bytes += b;
      }
    }
    return { ids, ts, counts: per };
  }

  private trainBytes(per: Map<Src, number[]>, i: number): number {
    let b = 0;
    for (const [src, c] of per) b += c[i] * src.rowBytes;
    return b;
  }

  private applyTrains(plan: TrainPlan): void {
    for (let i = 0; i < plan.ids.length; i++) {
      const t = this.tids.length;
      this.files_.assignTrain(t, this.trainBytes(plan.counts, i));
      this.tids.push(plan.ids[i]);
      this.tss.push(plan.ts[i]);
      for (const [src, c] of plan.counts) src.cum.push(src.cum[t] + c[i]);
    }
  }

  /** Run a state-changing step; an internal failure aborts the writer (no partial file keeps a final name). */
  private guard(step: () => void): void {
    try {
      step();
    } catch (e) {
      const msg = e instanceof WriterError ? e.message : firstLine(e);
      this.abort(`write failed: ${msg}`);
      throw new WriterError(`write failed, writer aborted and temporary files removed: ${msg}`);
    }
  }
}

/** `FileWriter.open` as a function. */
export function openWriter<const S extends WriterSchema>(
  pathTemplate: string,
  schema: S,
  options?: WriterOptions,
): Promise<FileWriter<DatasetNames<S>>> {
  return FileWriter.open(pathTemplate, schema, options);
}
