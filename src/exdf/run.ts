/**
 * EuXFEL run reader: a run directory (every `*.h5` sequence file, any prefix) or a single file.
 *
 * Spec (../shared/docs/exdf.md):
 * - METADATA: format 0.5 (sources directly under METADATA, no version) or 1.x (`METADATA/dataSources/...`,
 *   `METADATA/dataFormatVersion`). Source lists may be padded with empty strings.
 * - INDEX/trainId: trailing zeros are padding and are dropped. Per source index groups hold `first`/`count`,
 *   or legacy `first`/`last`/`status` (count = (last - first + 1) * status).
 * - Detector modules: AGIPD/LPD/DSSC `<DET>/DET/<m>CH0:xtdf` (RAW, older CORR) and `<DET>/CORR/<m>CH0:output`
 *   (newer CORR, whose legacy link under the DET name is skipped, so no module appears twice); JUNGFRAU
 *   `<DET>/DET/JNGFR<nn>:daqOutput` (CORR: `<DET>/CORR/JNGFR<nn>:output`, legacy link skipped likewise) with
 *   `data.adc` (one entry per train holding every memory cell).
 *   Module number from the source name (0-based for XTDF, JNGFR01 -> module 1); type from names, else shapes.
 * - Nothing is read but the index and metadata when a run is opened; image data is read by frames.ts.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { InputError } from "../errors.ts";
import {
  closeRunFile,
  dsInfo,
  firstLine,
  h5 as loadH5,
  type H5Dataset,
  type H5File,
  type H5Group,
  type NumericArray,
  openH5,
  readAll,
  runFileHandle,
} from "./h5.ts";
import { type DetectorType, typeFromName, typeFromShape } from "./detectors.ts";
import { type DescribedFile, RunCache, type SourceIndex, type SourceInFile } from "./run-cache.ts";

export type { DescribedFile, SourceIndex, SourceInFile } from "./run-cache.ts";

export interface KeyInfo {
  /** Shape of one entry (dataset shape without the first axis). */
  entryShape: number[];
  dtype: string;
  /** Dataset path inside the file. */
  path: string;
}

/** A file of the run: what Run.open learnt of it (run-cache.ts's DescribedFile) and its HDF5 handle. */
export interface RunFile extends DescribedFile {
  /**
   * The file's HDF5 handle, opened when asked for (h5.ts `runFileHandle`: a thread keeps at most OPEN_FILES
   * run files open). Use it at once; never keep it or a dataset of it past asking for another file's.
   */
  readonly h5: H5File;
}

export interface ModuleFile {
  file: RunFile;
  /** Path of the image data dataset in the file. */
  dataPath: string;
  /** Group holding the per-frame keys (INSTRUMENT/<src>/image, or .../data for JUNGFRAU). */
  groupPath: string;
  /** Rows of the data dataset. */
  rows: number;
  index: SourceIndex;
}

export interface DetectorModule {
  module: number;
  source: string;
  files: ModuleFile[];
  /** Frames (entries of image data; trains x cells for JUNGFRAU) over the run. */
  frames: number;
}

export interface Detector {
  name: string;
  type: DetectorType;
  raw: boolean;
  modules: DetectorModule[];
  /** Module image shape [ss, fs]. */
  imageShape: [number, number];
  /** Stored dtype of image data. */
  dtype: string;
  /** Full shape of one stored entry of image data (e.g. [2, 512, 128] for AGIPD RAW). */
  entryShape: number[];
  /** JUNGFRAU stores memory cells per train: frames per entry. */
  cellsPerEntry: number;
  /** Data group of the module sources ("image" or "data"). */
  group: string;
  dataKey: string;
}

export interface SourceSummary {
  name: string;
  kind: "CONTROL" | "INSTRUMENT";
  keys: Map<string, KeyInfo>;
  files: number;
}

const XTDF_RE = /^(.+)\/(DET|CORR)\/(\d+)CH0:(xtdf|output)$/;
const JNGFR_RE = /^(.+)\/(DET|CORR)\/JNGFR(\d+):(daqOutput|output)$/;

/**
 * What Run.open learnt about a run, without the open files: sent to a worker thread (structured clone keeps
 * the detectors' references to the files), which reopens only the files (Run.fromIndex) instead of reading
 * every file's METADATA and INDEX again (~0.1-0.2 s of a thread's start-up, most of it warming up).
 */
export interface RunIndex {
  path: string;
  files: DescribedFile[];
  detectors: Detector[];
}

export class Run {
  readonly trainIds: number[];
  readonly detectors: Detector[];

  private constructor(readonly path: string, readonly files: RunFile[], detectors?: Detector[]) {
    const all = new Set<number>();
    for (const f of files) for (const t of f.trainIds) all.add(t);
    this.trainIds = [...all].sort((a, b) => a - b);
    this.detectors = detectors ?? findDetectors(files);
  }

  /** This run's index, for Run.fromIndex in another thread (the files' HDF5 handles left out). */
  index(): RunIndex {
    const files = new Map<RunFile, DescribedFile>(
      this.files.map((f) => {
        // h5 is a getter that is not enumerable: the spread leaves it out (and does not open the file).
        return [f, { ...f }];
      }),
    );
    const detectors = this.detectors.map((d) => ({
      ...d,
      modules: d.modules.map((m) => ({
        ...m,
        files: m.files.map((mf) => ({ ...mf, file: files.get(mf.file) as RunFile })),
      })),
    }));
    return { path: this.path, files: [...files.values()], detectors };
  }

  /**
   * The run of an index made by `index()` (in another thread): nothing read, each file opened when first read.
   * The objects of the index become the run's (the files get their HDF5 handles).
   */
  static async fromIndex(ix: RunIndex): Promise<Run> {
    await loadH5();
    return new Run(ix.path, ix.files.map(withHandle), ix.detectors);
  }

  /** Open a run directory or a single file. Throws InputError (one line, naming the file) on bad input. */
  static async open(runPath: string): Promise<Run> {
    let st: fs.Stats;
    try {
      st = fs.statSync(runPath);
    } catch {
      throw new InputError(runPath, "no such file or directory");
    }
    let paths: string[];
    if (st.isDirectory()) {
      paths = fs.readdirSync(runPath).filter((n) => n.endsWith(".h5")).sort().map((n) =>
        path.join(runPath, n)
      );
      if (paths.length === 0) throw new InputError(runPath, "directory holds no HDF5 (*.h5) files");
    } else {
      paths = [runPath];
    }
    // What an earlier process learnt of these files (run-cache.ts), where they are unchanged.
    await loadH5();
    const cache = RunCache.load(runPath);
    const files: RunFile[] = [];
    try {
      for (const p of paths) files.push(await openRunFile(p, cache));
    } catch (e) {
      for (const f of files) closeRunFile(f.path);
      throw e;
    }
    cache.save();
    return new Run(runPath, files);
  }

  /** INDEX inconsistencies of every file, each line naming its file. */
  indexProblems(): string[] {
    return this.files.flatMap((f) => f.problems.map((m) => `${f.path}: ${m}`));
  }

  /**
   * What a user must be told about the run before trusting results: INDEX inconsistencies, and files of
   * more than one run in one directory (run numbers from the file names `...-R<run>-...`). One line each.
   */
  warnings(): string[] {
    const out = this.indexProblems();
    const runs = new Map<string, string[]>();
    for (const f of this.files) {
      const n = runFileName(f.name);
      if (!n) continue;
      const r = String(n.run);
      if (!runs.has(r)) runs.set(r, []);
      runs.get(r)!.push(f.name);
    }
    if (runs.size > 1) {
      const list = [...runs].map(([r, fs]) => `run ${r} (${fs.length} files, e.g. ${fs[0]})`).join(", ");
      out.push(`${this.path}: files of ${runs.size} runs mixed in one directory: ${list}`);
    }
    return out;
  }

  /** A short name for outputs: the directory (or file) name. */
  get name(): string {
    return path.basename(path.resolve(this.path)).replace(/\.h5$/, "");
  }

  /** Every source of the run with its keys, merged over files. */
  sources(): SourceSummary[] {
    const out = new Map<string, SourceSummary>();
    for (const f of this.files) {
      for (const src of f.sources.values()) {
        let s = out.get(src.name);
        if (!s) {
          s = { name: src.name, kind: src.kind, keys: new Map(), files: 0 };
          out.set(src.name, s);
        }
        s.files++;
        if (s.keys.size === 0) {
          for (const [k, v] of listKeys(f.h5, src)) s.keys.set(k, v);
        }
      }
    }
    return [...out.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /** The detector to work on: by name, else the only one; InputError when there is none. */
  detector(name?: string): Detector {
    if (this.detectors.length === 0) throw new InputError(this.path, "no detector data in this run");
    if (name) {
      const d = this.detectors.find((d) => d.name === name);
      if (!d) {
        throw new InputError(
          this.path,
          `no detector ${name} (found: ${this.detectors.map((d) => d.name).join(", ")})`,
        );
      }
      return d;
    }
    return this.detectors[0];
  }

  /** Close the run's open files (a file read after this opens again). */
  close(): void {
    for (const f of this.files) closeRunFile(f.path);
  }
}

function strings(v: unknown): string[] {
  if (Array.isArray(v)) return v.map(String).filter((s) => s.length > 0);
  if (typeof v === "string") return v ? [v] : [];
  return [];
}

/** The whole dataset at `p`, or null where there is none (one lookup, where has + readAll make two). */
function readIfAny(h5: H5File, p: string): NumericArray | null {
  const e = lookup(h5, p);
  return (e as { type?: string } | null)?.type === "Dataset" ? readAll(h5, p, e as H5Dataset) : null;
}

/** The object at `p` (h5wasm's get), or null where there is none or it cannot be looked up. */
function lookup(g: H5Group, p: string): unknown {
  try {
    return g.get(p);
  } catch {
    return null;
  }
}

function has(g: H5Group, name: string): boolean {
  return lookup(g, name) !== null;
}

async function openRunFile(p: string, cache: RunCache): Promise<RunFile> {
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(p);
  } catch {
    // openH5 says what is wrong
  }
  const cached = st?.isFile() ? cache.get(p, st) : undefined;
  if (cached) return withHandle(cached);
  const h5 = await openH5(p);
  let file: DescribedFile;
  try {
    file = describeFile(p, h5);
  } catch (e) {
    h5.close();
    if (e instanceof InputError) throw e;
    throw new InputError(p, `cannot read EuXFEL layout: ${firstLine(e)}`);
  }
  // Closed once described, not kept open: HDF5 holds ~0.37 MB of the wasm heap per open file, and the heap
  // keeps its high-water mark. Opening a run of 12 files kept them all, +3.3 MB of it (bench/RESULTS.md);
  // closing each in turn reuses the same memory. The file opens again when read (runFileHandle).
  h5.close();
  if (st) cache.put(p, st, file);
  return withHandle(file);
}

/** The run file with its `h5` getter (not enumerable: a spread or a structured clone leaves it out). */
function withHandle(f: DescribedFile): RunFile {
  const path = f.path;
  return Object.defineProperty(f, "h5", { get: () => runFileHandle(path), enumerable: false }) as RunFile;
}

function describeFile(p: string, h5: H5File): DescribedFile {
  if (!has(h5, "INDEX/trainId") || !has(h5, "METADATA")) {
    throw new InputError(p, "not an EuXFEL data file (no METADATA or INDEX/trainId)");
  }
  let format = "0.5";
  let meta = "METADATA";
  if (has(h5, "METADATA/dataSources/dataSourceId")) {
    meta = "METADATA/dataSources";
    format = has(h5, "METADATA/dataFormatVersion")
      ? String(strings((h5.get("METADATA/dataFormatVersion") as H5Dataset).value)[0] ?? "1.0")
      : "1.0";
  } else if (!has(h5, "METADATA/dataSourceId")) {
    throw new InputError(p, "not an EuXFEL data file (METADATA lists no dataSourceId)");
  }
  const ids = strings((h5.get(`${meta}/dataSourceId`) as H5Dataset).value);

  const rawTrains = readAll(h5, "INDEX/trainId");
  let nTrains = rawTrains.length;
  while (nTrains > 0 && Number(rawTrains[nTrains - 1]) === 0) nTrains--;
  const trainIds = Array.from({ length: nTrains }, (_, i) => Number(rawTrains[i]));

  const sources = new Map<string, SourceInFile>();
  for (const id of ids) {
    const slash = id.indexOf("/");
    const section = id.slice(0, slash);
    const rest = id.slice(slash + 1);
    if (section === "CONTROL") {
      if (!sources.has(rest)) {
        sources.set(rest, {
          name: rest,
          kind: "CONTROL",
          index: new Map([["", readIndex(h5, rest, nTrains)]]),
        });
      }
    } else if (section === "INSTRUMENT") {
      const cut = rest.lastIndexOf("/");
      const name = rest.slice(0, cut);
      const group = rest.slice(cut + 1);
      let s = sources.get(name);
      if (!s) {
        s = { name, kind: "INSTRUMENT", index: new Map() };
        sources.set(name, s);
      }
      s.index.set(group, readIndex(h5, `${name}/${group}`, nTrains));
    }
  }
  for (const s of sources.values()) {
    const m = s.kind === "INSTRUMENT" ? moduleSource(s.name) : null;
    if (!m) continue;
    // One lookup of the image data (has + get made two).
    const data = lookup(h5, `INSTRUMENT/${s.name}/${m.group}/${m.dataKey}`);
    s.module = {
      softLink: m.det && isSoftLink(h5, `/INSTRUMENT/${s.name}`),
      data: data === null ? null : dsInfo(data as H5Dataset),
    };
  }
  return {
    path: p,
    name: path.basename(p),
    format,
    trainIds,
    sources,
    problems: indexProblems(h5, trainIds, sources),
  };
}

/** The module source names: XTDF (AGIPD, LPD, DSSC) with image.data, JUNGFRAU with data.adc. */
const MODULE_SOURCES = [
  { re: XTDF_RE, group: "image", dataKey: "data", jf: false },
  { re: JNGFR_RE, group: "data", dataKey: "adc", jf: true },
];

/** A detector module's source name: its detector, module number, CORR or DET, data group and key; else null. */
function moduleSource(
  name: string,
): { detName: string; moduleNo: number; det: boolean; group: string; dataKey: string; jf: boolean } | null {
  for (const { re, group, dataKey, jf } of MODULE_SOURCES) {
    const m = re.exec(name);
    if (m) return { detName: m[1], moduleNo: Number(m[3]), det: m[2] === "DET", group, dataKey, jf };
  }
  return null;
}

/** Train IDs repeated or decreasing; per source index group, trains whose rows lie past the data. */
function indexProblems(h5: H5File, trainIds: number[], sources: Map<string, SourceInFile>): string[] {
  const out: string[] = [];
  const bad: string[] = [];
  for (let i = 1; i < trainIds.length; i++) {
    if (trainIds[i] === trainIds[i - 1]) bad.push(`${trainIds[i]} repeated`);
    else if (trainIds[i] < trainIds[i - 1]) bad.push(`${trainIds[i]} after ${trainIds[i - 1]}`);
  }
  if (bad.length) out.push(`INDEX/trainId not strictly increasing: ${listSome(bad)}`);
  for (const s of sources.values()) {
    for (const [group, ix] of s.index) {
      const root = s.kind === "CONTROL" ? `CONTROL/${s.name}` : `INSTRUMENT/${s.name}/${group}`;
      const rows = firstDatasetRows(h5, root);
      if (rows === null) continue;
      const past: number[] = [];
      for (let i = 0; i < ix.first.length; i++) {
        if (ix.count[i] > 0 && ix.first[i] + ix.count[i] > rows) past.push(trainIds[i]);
      }
      if (past.length) {
        const where = s.kind === "CONTROL" ? s.name : `${s.name}/${group}`;
        out.push(
          `INDEX/${where}: trains ${listSome(past.map(String))} point past the data (${rows} rows)`,
        );
      }
    }
  }
  return out;
}

function listSome(xs: string[]): string {
  return xs.length > 5 ? `${xs.slice(0, 5).join(", ")} and ${xs.length - 5} more` : xs.join(", ");
}

/** Rows (first axis) of the first dataset found under a group, or null. */
function firstDatasetRows(h5: H5File, g: string): number | null {
  const e = lookup(h5, g);
  const kind = (e as { type?: string } | null)?.type;
  if (kind === "Dataset") return dsInfo(e as H5Dataset).shape[0] ?? null;
  if (kind !== "Group") return null;
  for (const n of (e as H5Group).keys()) {
    const r = firstDatasetRows(h5, `${g}/${n}`);
    if (r !== null) return r;
  }
  return null;
}

function readIndex(h5: H5File, key: string, nTrains: number): SourceIndex {
  const base = `INDEX/${key}`;
  const firstAll = readIfAny(h5, `${base}/first`);
  if (!firstAll) {
    return { first: new Array(nTrains).fill(0), count: new Array(nTrains).fill(0) };
  }
  const first = Array.from(firstAll, Number).slice(0, nTrains);
  const countAll = readIfAny(h5, `${base}/count`);
  let count: number[];
  if (countAll) {
    count = Array.from(countAll, Number).slice(0, nTrains);
  } else {
    // Legacy index (format 0.1-0.5): count = (last - first + 1) * status.
    const last = Array.from(readAll(h5, `${base}/last`), Number);
    const status = Array.from(readAll(h5, `${base}/status`), Number);
    count = first.map((f, i) => status[i] ? last[i] - f + 1 : 0);
  }
  return { first, count };
}

/** Keys of a source in a file: dotted key -> entry shape, dtype, path. */
function listKeys(h5: H5File, src: SourceInFile): Map<string, KeyInfo> {
  const out = new Map<string, KeyInfo>();
  const root = `${src.kind}/${src.name}`;
  if (src.kind === "INSTRUMENT") {
    for (const group of src.index.keys()) walk(h5, `${root}/${group}`, group, out, false);
  } else {
    walk(h5, root, "", out, true);
  }
  return out;
}

function walk(h5: H5File, gpath: string, key: string, out: Map<string, KeyInfo>, control: boolean): void {
  const g = h5.get(gpath);
  if (!g) return;
  const kind = (g as { type?: string }).type;
  if (kind === "Dataset") {
    const info = dsInfo(g as H5Dataset);
    out.set(key, { entryShape: info.shape.slice(1), dtype: info.dtype, path: gpath });
    return;
  }
  if (kind !== "Group") return;
  const names = (g as H5Group).keys();
  if (control && names.includes("value")) {
    const info = dsInfo(h5.get(`${gpath}/value`) as H5Dataset);
    out.set(key, { entryShape: info.shape.slice(1), dtype: info.dtype, path: `${gpath}/value` });
    return;
  }
  for (const n of names) walk(h5, `${gpath}/${n}`, key ? `${key}.${n}` : n, out, control);
}

function isSoftLink(h5: H5File, p: string): boolean {
  try {
    return typeof h5.get_link(p) === "string";
  } catch {
    return false;
  }
}

function findDetectors(files: RunFile[]): Detector[] {
  interface Acc {
    det: Detector;
    byModule: Map<number, DetectorModule>;
  }
  const dets = new Map<string, Acc>();
  for (const f of files) {
    // Newer CORR files carry `<DET>/CORR/<m>CH0:output` plus a legacy `<DET>/DET/<m>CH0:xtdf` link to it.
    const corrModules = new Set<string>();
    for (const name of f.sources.keys()) {
      const m = moduleSource(name);
      if (m && !m.det) corrModules.add(`${m.detName}/${m.moduleNo}`);
    }
    for (const src of f.sources.values()) {
      const m = src.kind === "INSTRUMENT" ? moduleSource(src.name) : null;
      if (!m || !src.module) continue;
      // A DET source next to its CORR source, or a soft link: the legacy link of a CORR source.
      if (m.det && (corrModules.has(`${m.detName}/${m.moduleNo}`) || src.module.softLink)) continue;
      const { detName, moduleNo, group, dataKey } = m;
      let type: DetectorType | undefined = m.jf ? "JUNGFRAU" : typeFromName(detName);
      const index = src.index.get(group);
      const dataPath = `INSTRUMENT/${src.name}/${group}/${dataKey}`;
      const info = src.module.data;
      if (!index || !info) continue;
      const entryShape = info.shape.slice(1);
      const [ss, fs] = entryShape.slice(-2);
      type ??= typeFromShape(ss, fs);
      if (!type) continue;
      let acc = dets.get(detName);
      if (!acc) {
        // RAW detector data is stored as ADU counts (u16); corrected data as photon/keV floats.
        const raw = info.dtype === "uint16";
        acc = {
          det: {
            name: detName,
            type,
            raw,
            modules: [],
            imageShape: [ss, fs],
            dtype: info.dtype,
            entryShape,
            cellsPerEntry: type === "JUNGFRAU" && entryShape.length === 3 ? entryShape[0] : 1,
            group,
            dataKey: `${group}.${dataKey}`,
          },
          byModule: new Map(),
        };
        dets.set(detName, acc);
      }
      let mod = acc.byModule.get(moduleNo);
      if (!mod) {
        mod = { module: moduleNo, source: src.name, files: [], frames: 0 };
        acc.byModule.set(moduleNo, mod);
      }
      mod.files.push({
        file: f,
        dataPath,
        groupPath: `INSTRUMENT/${src.name}/${group}`,
        rows: info.shape[0],
        index,
      });
      const entries = index.count.reduce((a, b) => a + b, 0);
      mod.frames += entries * acc.det.cellsPerEntry;
    }
  }
  const out: Detector[] = [];
  for (const { det, byModule } of dets.values()) {
    det.modules = [...byModule.values()].sort((a, b) => a.module - b.module);
    for (const m of det.modules) {
      m.files.sort((a, b) => (a.file.trainIds[0] ?? 0) - (b.file.trainIds[0] ?? 0));
    }
    out.push(det);
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * The data level (prefix) and run number of an EuXFEL file name, `<PREFIX>-R<run>-<aggregator>-S<seq>.h5`
 * (RAW-R0012-AGIPD00-S00000.h5: RAW, 12); a path's base name is used. Null when the name does not follow it.
 * The one parser of run numbers: Run.warnings, runNaming (outputs) and reduce's same-run check use it.
 */
export function runFileName(name: string): { prefix: string; run: number } | null {
  const m = /^([A-Za-z]+)-R(\d+)-/.exec(path.basename(name));
  return m ? { prefix: m[1], run: Number(m[2]) } : null;
}

/**
 * The prefix and run number an output of a run is named with: those of the first file named as EuXFEL
 * names files (runFileName). Defaults when none is: the prefix `fallbackPrefix` ("CORR", the data level
 * localise, average, roi, azint and xpcs usually read; litframes passes "REDU") and run 0.
 */
export function runNaming(files: string[], fallbackPrefix = "CORR"): { prefix: string; run: number } {
  for (const f of files) {
    const n = runFileName(f);
    if (n) return n;
  }
  return { prefix: fallbackPrefix, run: 0 };
}

/** Read a whole small dataset of a file as numbers (IDs, indices). */
export function readNumbers(file: RunFile, p: string): number[] {
  return Array.from(readAll(file.h5, p) as NumericArray, Number);
}
