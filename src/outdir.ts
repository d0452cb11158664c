/**
 * Output directories, the same rules for every command: refuse one inside the input run, refuse an existing
 * one without --force, build it under a temporary name beside it and rename it when complete (an error
 * leaves nothing under the final name).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { InputError } from "./errors.ts";
import { track } from "./writer-files.ts";

/** The output directory `out` (default `<prefix>-<run name>`), checked. */
export function prepareOut(runPath: string, out: string | undefined, prefix: string, force: boolean): string {
  const name = path.basename(path.resolve(runPath)).replace(/\.h5$/, "");
  const dir = path.resolve(out ?? `${prefix}-${name}`);
  const run = path.resolve(runPath);
  const runDir = fs.existsSync(run) && fs.statSync(run).isDirectory() ? run : path.dirname(run);
  if (dir === runDir || dir.startsWith(runDir + path.sep)) {
    throw new InputError(dir, "output directory lies inside the input run; choose another --out");
  }
  if (fs.existsSync(dir) && !force) throw new InputError(dir, "exists; use --force to replace it");
  return dir;
}

/**
 * Fill a temporary directory beside `dir` (`.<name>.tmp-<pid>`), then put it in place of `dir`. An error,
 * SIGINT or SIGTERM removes the temporary directory (the writer library's process cleanup).
 */
export async function buildDir<T>(dir: string, fill: (tmp: string) => Promise<T>): Promise<T> {
  const tmp = path.join(path.dirname(dir), `.${path.basename(dir)}.tmp-${process.pid}`);
  const cleanup = {
    abort: () => {
      try {
        fs.rmSync(tmp, { recursive: true, force: true });
      } catch {
        // best effort
      }
    },
  };
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  track(cleanup, true);
  try {
    const result = await fill(tmp);
    if (fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(tmp, dir);
    return result;
  } catch (e) {
    cleanup.abort();
    throw e;
  } finally {
    track(cleanup, false);
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
