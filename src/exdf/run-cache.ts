/**
 * The run index cache: what `Run.open` learnt from each file of a run (train IDs, sources, their INDEX, the
 * module probe, INDEX problems), kept between processes so that opening the run again reads no file. Opening
 * a file costs HDF5 ~1.5-4 ms (more with longer INDEX datasets); a run of AGIPD-1M has 16 module files a
 * sequence, and localise, reduce, cxi, average, the report and every SLURM part open the same run. EXtra-data
 * keeps such a map of a run's files for the same reason (its `karabo_data_map` cache, by file name, size and
 * modification time).
 *
 * Spec:
 * - Where: `$XFEL_REDU_CACHE_DIR` (`off`, `none` or `0`: no cache), else `$XDG_CACHE_HOME/xfel-redu`, else
 *   `~/.cache/xfel-redu`; in it, `runs/<sha256 of the run's real path, 32 hex digits>.json`. Never in the run.
 * - An entry is used only when its file's size, modification time (ms) and inode number are those of the
 *   file now, and the cache's version is CACHE_VERSION (raised whenever what Run.open records changes). A
 *   file described anew replaces its entry; files gone from the run leave the cache when it is next written.
 * - Written only when something was described anew, to a temporary name in the same directory and renamed
 *   (processes opening one run at once each write a whole file; the last rename wins). At most MAX_RUNS run
 *   files and MAX_BYTES: the least recently written go first. A cache that cannot be read or written is
 *   ignored: the run is read from its files as without a cache.
 * - Integer arrays (train IDs, INDEX first and count) are stored as arithmetic runs: [value, step, length]
 *   triples (a file's train IDs and its INDEX are one run each, mostly).
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import type { DsInfo } from "./h5.ts";

/** The index of one data group of one source in one file: rows [first[i], first[i]+count[i]) per train. */
export interface SourceIndex {
  first: number[];
  count: number[];
}

export interface SourceInFile {
  name: string;
  kind: "CONTROL" | "INSTRUMENT";
  /** Instrument: index per data group ("image", "data", ...). Control: one group "". */
  index: Map<string, SourceIndex>;
  /**
   * A detector module's source (XTDF or JUNGFRAU names), read when the file was described: whether
   * INSTRUMENT/<name> is a soft link, and its image data's shape and dtype (null without one).
   */
  module?: { softLink: boolean; data: DsInfo | null };
}

/** What Run.open learns of a file of a run (run.ts's RunFile is this and the file's HDF5 handle). */
export interface DescribedFile {
  path: string;
  name: string;
  format: string;
  /** Train IDs of this file (padding dropped). */
  trainIds: number[];
  sources: Map<string, SourceInFile>;
  /**
   * What is inconsistent in the file's INDEX, one line each (as EXtra-data's validator finds it): train IDs
   * repeated or decreasing, index entries pointing past the data. Empty for a consistent file.
   */
  problems: string[];
}

/** Raised whenever DescribedFile, or what describeFile puts in it, changes. */
export const CACHE_VERSION = 1;
/** Run files kept in the cache directory at most, and their bytes at most (a home directory has a quota). */
export const MAX_RUNS = 500;
export const MAX_BYTES = 64 * 2 ** 20;

interface Entry {
  size: number;
  mtimeMs: number;
  ino: number;
  format: string;
  trainIds: Packed;
  sources: {
    name: string;
    kind: "CONTROL" | "INSTRUMENT";
    index: [string, Packed, Packed][];
    module?: { softLink: boolean; data: DsInfo | null };
  }[];
  problems: string[];
}

interface CacheFile {
  version: number;
  run: string;
  files: Record<string, Entry>;
}

/** The cache directory, or null when the cache is off or there is no home directory. */
export function cacheDir(): string | null {
  const env = process.env.XFEL_REDU_CACHE_DIR;
  if (env !== undefined && env !== "") return ["off", "none", "0"].includes(env) ? null : env;
  if (process.env.XDG_CACHE_HOME) return path.join(process.env.XDG_CACHE_HOME, "xfel-redu");
  let home: string;
  try {
    home = os.homedir();
  } catch {
    return null;
  }
  return home ? path.join(home, ".cache", "xfel-redu") : null;
}

/** The cache of one run (a directory or a single file), loaded once; `save` writes what changed. */
export class RunCache {
  private changed = false;
  private readonly used = new Set<string>();

  private constructor(private readonly file: string | null, private readonly data: CacheFile) {}

  /** The cache of `runPath` (empty when there is none, it cannot be read, or the cache is off). */
  static load(runPath: string): RunCache {
    const dir = cacheDir();
    let real: string;
    try {
      real = fs.realpathSync(runPath);
    } catch {
      real = path.resolve(runPath);
    }
    const empty: CacheFile = { version: CACHE_VERSION, run: real, files: {} };
    if (!dir) return new RunCache(null, empty);
    const hash = crypto.createHash("sha256").update(real).digest("hex").slice(0, 32);
    const file = path.join(dir, "runs", `${hash}.json`);
    try {
      const d = JSON.parse(fs.readFileSync(file, "utf8")) as CacheFile;
      if (d?.version === CACHE_VERSION && d.run === real && d.files && typeof d.files === "object") {
        return new RunCache(file, d);
      }
    } catch {
      // none yet, or unreadable: described anew, and written
    }
    return new RunCache(file, empty);
  }

  /** The description of file `p` if the cache holds it for the file as it is now (stat `st`). */
  get(p: string, st: fs.Stats): DescribedFile | undefined {
    const name = path.basename(p);
    const e = this.data.files[name];
    if (!e || e.size !== st.size || e.mtimeMs !== st.mtimeMs || e.ino !== st.ino) return undefined;
    try {
      const f = decodeEntry(p, name, e);
      this.used.add(name);
      return f;
    } catch {
      return undefined; // a damaged entry: described anew
    }
  }

  /** Record the description of file `p` (stat `st`, taken before it was read). */
  put(p: string, st: fs.Stats, f: DescribedFile): void {
    if (!this.file || !jsonSafe(f)) return;
    const name = path.basename(p);
    this.data.files[name] = encodeEntry(st, f);
    this.used.add(name);
    this.changed = true;
  }

  /** Write the cache if a file was described anew or left the run; errors are ignored (no cache then). */
  save(): void {
    if (!this.file) return;
    for (const name of Object.keys(this.data.files)) {
      if (!this.used.has(name)) {
        delete this.data.files[name];
        this.changed = true;
      }
    }
    if (!this.changed) return;
    const dir = path.dirname(this.file);
    const tmp = `${this.file}.${process.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    try {
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(tmp, JSON.stringify(this.data));
      fs.renameSync(tmp, this.file);
      this.changed = false;
      prune(dir);
    } catch {
      try {
        fs.rmSync(tmp, { force: true });
      } catch {
        // nothing written
      }
    }
  }
}

/**
 * Keep the most recently written run files of the cache's `runs` directory, at most MAX_RUNS of them and
 * MAX_BYTES in all (the one just written always stays).
 */
function prune(dir: string): void {
  const files = fs.readdirSync(dir).filter((n) => /^[0-9a-f]{32}\.json$/.test(n)).map((n) => {
    const p = path.join(dir, n);
    const st = fs.statSync(p);
    return { p, t: st.mtimeMs, size: st.size };
  }).sort((a, b) => a.t - b.t);
  let bytes = files.reduce((a, f) => a + f.size, 0);
  for (let i = 0, n = files.length; i < files.length - 1 && (n > MAX_RUNS || bytes > MAX_BYTES); i++, n--) {
    fs.rmSync(files[i].p, { force: true });
    bytes -= files[i].size;
  }
}

function encodeEntry(st: fs.Stats, f: DescribedFile): Entry {
  return {
    size: st.size,
    mtimeMs: st.mtimeMs,
    ino: st.ino,
    format: f.format,
    trainIds: pack(f.trainIds),
    sources: [...f.sources.values()].map((s) => ({
      name: s.name,
      kind: s.kind,
      index: [...s.index].map(([g, ix]) => [g, pack(ix.first), pack(ix.count)]),
      ...(s.module ? { module: s.module } : {}),
    })),
    problems: f.problems,
  };
}

function decodeEntry(p: string, name: string, e: Entry): DescribedFile {
  const sources = new Map<string, SourceInFile>();
  for (const s of e.sources) {
    const src: SourceInFile = {
      name: s.name,
      kind: s.kind,
      index: new Map(s.index.map(([g, first, count]) => [g, { first: unpack(first), count: unpack(count) }])),
    };
    if (s.module) src.module = s.module;
    sources.set(s.name, src);
  }
  return {
    path: p,
    name,
    format: String(e.format),
    trainIds: unpack(e.trainIds),
    sources,
    problems: e.problems.map(String),
  };
}

/** An array as runsOf's triples where they give it back exactly, else as it is. */
type Packed = number[] | { values: number[] };

function pack(a: readonly number[]): Packed {
  const r = runsOf(a);
  const back = fromRuns(r);
  return back.every((v, i) => v === a[i]) ? r : { values: [...a] };
}

function unpack(p: Packed): number[] {
  if (Array.isArray(p)) return fromRuns(p);
  if (!Array.isArray(p?.values) || p.values.some((v) => typeof v !== "number")) {
    throw new RangeError("bad values");
  }
  return p.values;
}

/** Whether every number of a description survives JSON (finite: no NaN or Infinity, which JSON turns to null). */
function jsonSafe(f: DescribedFile): boolean {
  const ok = (a: readonly number[]) => a.every(Number.isFinite);
  if (!ok(f.trainIds)) return false;
  for (const s of f.sources.values()) {
    for (const ix of s.index.values()) if (!ok(ix.first) || !ok(ix.count)) return false;
    if (s.module?.data && !ok(s.module.data.shape)) return false;
  }
  return true;
}

/** An integer array as arithmetic runs: [value, step, length] triples, flattened. */
export function runsOf(a: readonly number[]): number[] {
  const out: number[] = [];
  let i = 0;
  while (i < a.length) {
    const v = a[i];
    const step = i + 1 < a.length ? a[i + 1] - v : 0;
    let n = 1;
    while (i + n < a.length && a[i + n] - a[i + n - 1] === step) n++;
    out.push(v, step, n);
    i += n;
  }
  return out;
}

/** The array of runsOf's triples; throws on a malformed list. */
export function fromRuns(r: readonly number[]): number[] {
  if (!Array.isArray(r) || r.length % 3 !== 0) throw new RangeError("bad runs");
  const out: number[] = [];
  for (let k = 0; k < r.length; k += 3) {
    const [v, step, n] = [r[k], r[k + 1], r[k + 2]];
    if (!Number.isSafeInteger(n) || n < 1 || typeof v !== "number" || typeof step !== "number") {
      throw new RangeError("bad runs");
    }
    for (let j = 0; j < n; j++) out.push(v + j * step);
  }
  return out;
}
