/**
 * Output directories, the same rules for every command (the README's "Guards"):
 *
 * - Checked before any work (`prepareOut`, `checkOut`): the inputs exist; DIR is neither inside an input nor
 *   holds one (real paths, symlinks resolved); an existing DIR is refused without --force, and with --force
 *   replaced only when this tool wrote it (it holds the marker file `.xfel-redu`) or it is empty; another
 *   live process writing DIR (its lock `.<name>.lock` beside DIR) is refused; DIR's filesystem must take
 *   writes (a probe directory is created and removed beside DIR).
 * - Built under a temporary name (`buildDir`): `.<name>.tmp-<pid>` beside DIR, holding the marker from the
 *   start, renamed to DIR when complete (a replaced DIR is renamed away first, then removed). An error,
 *   SIGINT, SIGTERM or SIGHUP removes the temporary directory and the lock; a full disk is reported as
 *   "no space left on device".
 * - Leftovers of a killed process (`kill -9`): temporary directories, replaced directories and locks beside
 *   DIR whose process (same host) is gone and that carry the marker are removed by the next run writing into
 *   the same parent directory.
 * - Long synchronous work calls `checkpoint()` now and then, so that signals are handled within a second.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { InputError, OutputError } from "../errors.ts";
import { track } from "./cleanup.ts";

/** The marker file in every directory this tool writes. */
export const MARKER = ".xfel-redu";

interface MarkerInfo {
  tool: "xfel-redu";
  pid: number;
  host: string;
  started: string;
}

function markerInfo(): MarkerInfo {
  return { tool: "xfel-redu", pid: process.pid, host: os.hostname(), started: new Date().toISOString() };
}

function readMarker(file: string): MarkerInfo | null {
  try {
    const m = JSON.parse(fs.readFileSync(file, "utf8"));
    return m && m.tool === "xfel-redu" ? m : null;
  } catch {
    return null;
  }
}

/** Whether `dir` is a directory this tool wrote (marker) or an empty one: what --force may replace. */
export function replaceable(dir: string): boolean {
  const names = fs.readdirSync(dir);
  return names.length === 0 || readMarker(path.join(dir, MARKER)) !== null;
}

function errno(e: unknown): string | undefined {
  for (let x = e; x && typeof x === "object"; x = (x as { cause?: unknown }).cause) {
    const c = (x as { code?: unknown }).code;
    if (typeof c === "string") return c;
  }
  return undefined;
}

/** A process of this host that is alive (or that we may not signal, which means alive too). */
function alive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errno(e) === "EPERM";
  }
}

/** `p` with symlinks resolved: the real path of its deepest existing ancestor, then the rest. */
export function realPath(p: string): string {
  const abs = path.resolve(p);
  const rest: string[] = [];
  let cur = abs;
  for (;;) {
    try {
      return path.join(fs.realpathSync(cur), ...rest.reverse());
    } catch {
      const up = path.dirname(cur);
      if (up === cur) return abs;
      rest.push(path.basename(cur));
      cur = up;
    }
  }
}

function isInside(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent.endsWith(path.sep) ? parent : parent + path.sep);
}

const lockPath = (dir: string) => path.join(path.dirname(dir), `.${path.basename(dir)}.lock`);
/**
 * The temporary name of `final` (a directory or a file) while it is written: `.<name>.tmp-<pid>` beside it,
 * `.<name>.tmp-<pid>-<n>` when one process writes several at once. Hidden, and recognisable by
 * `sweepStale` (which removes such directories of processes that are gone). The one scheme of every
 * output: directories (buildDir), sequence files (the writer), Slurm part files, report.html.
 */
export function tmpName(final: string, n?: number): string {
  const name = `.${path.basename(final)}.tmp-${process.pid}${n === undefined ? "" : `-${n}`}`;
  return path.join(path.dirname(final), name);
}

const tmpPath = (dir: string) => tmpName(dir);
const oldPath = (dir: string) => path.join(path.dirname(dir), `.${path.basename(dir)}.old-${process.pid}`);

/** The lock's holder when it is a live process (or of another host, which cannot be checked). */
function lockHolder(lock: string): MarkerInfo | null {
  const m = readMarker(lock);
  if (!m) {
    // Being written this very moment, or not ours: alive unless old.
    try {
      return Date.now() - fs.statSync(lock).mtimeMs < 10_000
        ? { tool: "xfel-redu", pid: 0, host: "?", started: "" }
        : null;
    } catch {
      return null;
    }
  }
  if (m.host !== os.hostname()) return m;
  return alive(m.pid) ? m : null;
}

function lockedError(dir: string, lock: string, m: MarkerInfo): OutputError {
  const who = m.pid ? `process ${m.pid} on ${m.host}` : "another process";
  return new OutputError(
    dir,
    "locked",
    `being written by ${who} (lock ${lock}); wait for it, or remove the lock if that process is gone`,
  );
}

/**
 * Remove what killed processes of this host left beside directories of `parent`: temporary and replaced
 * directories (`.<name>.tmp-<pid>`, `.<name>.old-<pid>`, holding the marker) and locks (`.<name>.lock`)
 * whose process is gone. Returns the paths removed.
 */
export function sweepStale(parent: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return [];
  }
  const removed: string[] = [];
  const host = os.hostname();
  for (const n of names) {
    const p = path.join(parent, n);
    const t = /^\..+\.(?:tmp|old)-(\d+)$/.exec(n);
    try {
      if (t) {
        const pid = Number(t[1]);
        if (pid === process.pid || alive(pid) || !fs.statSync(p).isDirectory()) continue;
        const m = readMarker(path.join(p, MARKER));
        if (!m || m.host !== host) continue;
        fs.rmSync(p, { recursive: true, force: true });
        removed.push(p);
      } else if (/^\..+\.lock$/.test(n)) {
        const m = readMarker(p);
        if (!m || m.host !== host || m.pid === process.pid || alive(m.pid)) continue;
        fs.rmSync(p, { force: true });
        removed.push(p);
      }
    } catch {
      // another process got there first, or not ours to judge
    }
  }
  for (const p of removed) {
    process.stderr.write(`xfel-redu: removed ${p}, left by a process that is gone\n`);
  }
  return removed;
}

/** Refuse, before any work, a `dir` whose filesystem does not take writes; one line naming the path. */
function probeWritable(dir: string): void {
  let cur = path.resolve(dir);
  while (!fs.existsSync(cur)) {
    const up = path.dirname(cur);
    if (up === cur) break;
    cur = up;
  }
  if (!fs.statSync(cur).isDirectory()) {
    throw new OutputError(dir, "unwritable", `cannot be created: ${cur} is not a directory`);
  }
  const probe = path.join(cur, `.xfel-redu-probe-${process.pid}`);
  try {
    fs.mkdirSync(probe);
    fs.rmdirSync(probe);
  } catch (e) {
    throw unwritable(dir, cur, e);
  }
}

function unwritable(dir: string, where: string, e: unknown): OutputError {
  const code = errno(e);
  if (code === "ENOSPC" || code === "EDQUOT") return noSpace(dir, code);
  const why = code === "EROFS"
    ? "read-only file system"
    : code === "EACCES" || code === "EPERM"
    ? "permission denied"
    : code === "ENOTDIR"
    ? "a parent is not a directory"
    : (code ?? (e instanceof Error ? e.message.split("\n")[0] : String(e)));
  return new OutputError(dir, "unwritable", `cannot write here (${where}: ${why})`);
}

function noSpace(dir: string, code?: string): OutputError {
  return new OutputError(
    dir,
    "no-space",
    code === "EDQUOT" ? "disk quota exceeded; nothing written" : "no space left on device; nothing written",
  );
}

/** Free bytes on the filesystem of p (Infinity when unknown). */
function freeBytes(p: string): number {
  try {
    const s = (fs as unknown as { statfsSync?: (p: string) => { bavail: number; bsize: number } })
      .statfsSync?.(p);
    return s ? s.bavail * s.bsize : Infinity;
  } catch {
    return Infinity;
  }
}

/** An error of writing into `where` that a full disk explains (ENOSPC, or an HDF5 write failure on a full disk). */
function isNoSpace(e: unknown, where: string): "ENOSPC" | "EDQUOT" | null {
  const code = errno(e);
  if (code === "ENOSPC" || code === "EDQUOT") return code;
  if (e instanceof InputError) return null;
  return freeBytes(where) < 64 * 2 ** 20 ? "ENOSPC" : null;
}

export interface OutInput {
  path: string;
  /** Its name in messages: "input run", "localise output". */
  what: string;
}

/**
 * Check, before any work, that `dir` may be written: the inputs exist and do not overlap it, an existing
 * `dir` is replaceable (--force, the marker), no live process holds its lock, its filesystem takes writes.
 * Also removes the leftovers of killed processes beside it.
 */
export function checkOut(
  dir: string,
  opts: { force: boolean; inputs: OutInput[]; existing?: "replace" | "add" },
): void {
  const real = realPath(dir);
  for (const inp of opts.inputs) {
    if (!fs.existsSync(inp.path)) throw new InputError(inp.path, "no such file or directory");
    let r = fs.realpathSync(inp.path);
    if (inp.what === "input run" && !fs.statSync(r).isDirectory()) r = path.dirname(r);
    if (isInside(real, r)) {
      throw new OutputError(
        dir,
        "overlap",
        `output directory lies inside the ${inp.what}; choose another --out`,
      );
    }
    if (isInside(r, real)) {
      throw new OutputError(dir, "overlap", `output directory holds the ${inp.what}; choose another --out`);
    }
  }
  const abs = path.resolve(dir);
  if (!claims.has(abs)) sweepStale(path.dirname(abs));
  if (fs.existsSync(dir) && opts.existing === "add") {
    // Files are added (litframes into a localise output): only into a directory of this tool.
    if (!fs.statSync(dir).isDirectory() || !replaceable(dir)) {
      throw new OutputError(
        dir,
        "foreign",
        `exists and was not written by xfel-redu (no ${MARKER} marker); files are added only to xfel-redu outputs`,
      );
    }
  } else if (fs.existsSync(dir)) {
    if (!opts.force) throw new OutputError(dir, "exists", "exists; use --force to replace it");
    if (!fs.statSync(dir).isDirectory()) {
      throw new OutputError(dir, "foreign", "exists and is not a directory; not replaced");
    }
    if (!replaceable(dir)) {
      throw new OutputError(
        dir,
        "foreign",
        `not written by xfel-redu (no ${MARKER} marker); --force replaces only xfel-redu outputs`,
      );
    }
  }
  probeWritable(dir);
  claim(abs);
}

/** The output directory `out` (default `<prefix>-<run name>`) of a command reading `runPath`, checked. */
export function prepareOut(
  runPath: string,
  out: string | undefined,
  prefix: string,
  force: boolean,
  inputs: OutInput[] = [],
): string {
  const name = path.basename(path.resolve(runPath)).replace(/\.h5$/, "");
  const dir = path.resolve(out ?? `${prefix}-${name}`);
  checkOut(dir, { force, inputs: [{ path: runPath, what: "input run" }, ...inputs] });
  return dir;
}

/** The directories this process has claimed (their lock held), by absolute path. */
const claims = new Map<string, Claim>();

interface Claim {
  /** A buildDir or addToDir is writing it. */
  busy: boolean;
  release(): void;
}

/** Take the lock of `dir` (refused while another live process holds it); returns its release. */
function takeLock(dir: string): () => void {
  const lock = lockPath(dir);
  for (let attempt = 0;; attempt++) {
    try {
      fs.mkdirSync(path.dirname(dir), { recursive: true });
      const fd = fs.openSync(lock, "wx");
      fs.writeSync(fd, JSON.stringify(markerInfo()) + "\n");
      fs.closeSync(fd);
      break;
    } catch (e) {
      if (errno(e) !== "EEXIST") throw unwritable(dir, path.dirname(dir), e);
      const holder = lockHolder(lock);
      // A lock of this very process without a claim: left by an earlier call that failed.
      const mine = holder?.pid === process.pid && holder.host === os.hostname();
      if ((holder && !mine) || attempt > 0) throw lockedError(dir, lock, holder ?? markerInfo());
      fs.rmSync(lock, { force: true }); // its process is gone
    }
  }
  return () => {
    try {
      if (readMarker(lock)?.pid === process.pid) fs.rmSync(lock, { force: true });
    } catch {
      // best effort
    }
  };
}

/**
 * Claim `dir` for this process until it is written or the process ends: its lock, released (and the
 * temporary directory removed) by an error, process exit, SIGINT, SIGTERM or SIGHUP, with one line on a
 * signal.
 */
function claim(dir: string): Claim {
  const had = claims.get(dir);
  if (had) {
    if (had.busy) throw lockedError(dir, lockPath(dir), markerInfo());
    return had;
  }
  const unlock = takeLock(dir);
  const cleanup = {
    abort: (reason: string) => {
      if (reason.startsWith("SIG")) {
        process.stderr.write(`xfel-redu: ${reason}: stopped; ${dir} not written\n`);
      }
      try {
        fs.rmSync(tmpPath(dir), { recursive: true, force: true });
      } catch {
        // best effort
      }
      unlock();
      claims.delete(dir);
    },
  };
  const c: Claim = {
    busy: false,
    release: () => {
      unlock();
      claims.delete(dir);
      track(cleanup, false);
    },
  };
  track(cleanup, true);
  claims.set(dir, c);
  return c;
}

/** Give up this process's claim of `dir` (its lock) when nothing is writing it: a command that failed early. */
export function releaseOut(dir: string): void {
  const c = claims.get(path.resolve(dir));
  if (c && !c.busy) c.release();
}

/**
 * Fill a temporary directory beside `dir` (`.<name>.tmp-<pid>`, with the marker), then put it in place of
 * `dir` (an existing `dir` only when this tool wrote it or it is empty). An error, SIGINT, SIGTERM or SIGHUP
 * removes the temporary directory; a full disk gives an OutputError "no space left on device".
 */
export async function buildDir<T>(dirIn: string, fill: (tmp: string) => Promise<T>): Promise<T> {
  const dir = path.resolve(dirIn);
  if (!claims.has(dir)) sweepStale(path.dirname(dir));
  const c = claim(dir);
  c.busy = true;
  const tmp = tmpPath(dir);
  const removeTmp = () => fs.rmSync(tmp, { recursive: true, force: true });
  try {
    try {
      removeTmp();
      fs.mkdirSync(tmp, { recursive: true });
      fs.writeFileSync(path.join(tmp, MARKER), JSON.stringify(markerInfo()) + "\n");
    } catch (e) {
      throw unwritable(dir, path.dirname(dir), e);
    }
    let result: T;
    try {
      result = await fill(tmp);
    } catch (e) {
      const ns = isNoSpace(e, tmp);
      throw ns ? noSpace(dir, ns) : e;
    }
    if (fs.existsSync(dir)) {
      if (!fs.statSync(dir).isDirectory() || !replaceable(dir)) {
        throw new OutputError(
          dir,
          "foreign",
          `appeared while it was being written and was not written by xfel-redu; left as it is`,
        );
      }
      const old = oldPath(dir);
      fs.renameSync(dir, old);
      fs.renameSync(tmp, dir);
      fs.rmSync(old, { recursive: true, force: true });
    } else fs.renameSync(tmp, dir);
    return result;
  } catch (e) {
    removeTmp();
    throw e;
  } finally {
    c.release();
  }
}

/**
 * Add files to the existing directory `dir` (litframes into a localise output): under its lock, with the
 * marker, `fill` writing its files under temporary names; a full disk gives "no space left on device".
 */
export async function addToDir<T>(dirIn: string, fill: (dir: string) => Promise<T>): Promise<T> {
  const dir = path.resolve(dirIn);
  if (!claims.has(dir)) sweepStale(path.dirname(dir));
  const c = claim(dir);
  c.busy = true;
  try {
    try {
      const marker = path.join(dir, MARKER);
      if (!readMarker(marker)) fs.writeFileSync(marker, JSON.stringify(markerInfo()) + "\n");
      return await fill(dir);
    } catch (e) {
      const ns = isNoSpace(e, dir);
      throw ns ? noSpace(dir, ns) : e;
    }
  } finally {
    c.release();
  }
}

let lastYield = 0;

/**
 * Let the event loop run (signal handlers among it) when 50 ms have passed since the last time: long
 * synchronous work (copying, decoding) awaits this between slices, so SIGINT/SIGTERM stop it within a second.
 */
export async function checkpoint(): Promise<void> {
  const now = performance.now();
  if (now - lastYield < 50) return;
  await new Promise((r) => setTimeout(r, 0));
  lastYield = performance.now();
}

/** Copy a file byte for byte, 16 MiB at a time with a `checkpoint()` between (a signal stops it). */
export async function copyFile(src: string, dst: string): Promise<void> {
  const from = fs.openSync(src, "r");
  try {
    const to = fs.openSync(dst, "w");
    try {
      const buf = new Uint8Array(16 * 2 ** 20);
      for (;;) {
        await checkpoint();
        const n = fs.readSync(from, buf, 0, buf.length, null);
        if (n === 0) break;
        for (let k = 0; k < n;) k += fs.writeSync(to, buf, k, n - k);
      }
    } finally {
      fs.closeSync(to);
    }
  } finally {
    fs.closeSync(from);
  }
}

/** A progress line on stderr (frames/s, ETA) when stderr is a terminal; undefined otherwise. */
export function progressPrinter(label: string): ((done: number, total: number) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  const t0 = performance.now();
  return (done, total) => {
    const s = (performance.now() - t0) / 1000;
    const rate = done / s;
    const eta = rate > 0 ? (total - done) / rate : 0;
    process.stderr.write(
      `\r${label}: ${done}/${total} frames, ${rate.toFixed(0)} frames/s, ETA ${eta.toFixed(0)} s   `,
    );
    if (done >= total) process.stderr.write("\n");
  };
}
