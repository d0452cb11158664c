/**
 * The run index cache (src/exdf/run-cache.ts): Run.open from the cache gives the run it gives from the files;
 * the cache is read (an entry edited in it shows), an entry of a changed file is not used, a damaged or
 * unwritable cache changes nothing, and the cache lies outside the run.
 */
import { afterAll, beforeEach, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun } from "../fixtures/synth.ts";
import { Run } from "../src/exdf/run.ts";
import { cacheDir, fromRuns, MAX_BYTES, MAX_RUNS, runsOf } from "../src/exdf/run-cache.ts";
import { isRunFileOpen } from "../src/exdf/h5.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-run-cache-"));
const saved = process.env.XFEL_REDU_CACHE_DIR;
afterAll(() => {
  if (saved === undefined) delete process.env.XFEL_REDU_CACHE_DIR;
  else process.env.XFEL_REDU_CACHE_DIR = saved;
  fs.rmSync(tmp, { recursive: true, force: true });
});

let n = 0;
let cache = "";
beforeEach(() => {
  cache = path.join(tmp, `cache${n++}`);
  process.env.XFEL_REDU_CACHE_DIR = cache;
});

async function synth(): Promise<string> {
  const dir = path.join(tmp, `run${n++}`);
  await makeRun(dir, { trains: 5, framesPerTrain: 4, modules: [0, 1], trainsPerFile: 2 });
  return dir;
}

/** The run's index as plain data (Maps made arrays), to compare runs. */
function plain(run: Run): unknown {
  return JSON.parse(JSON.stringify(run.index(), (_k, v) => v instanceof Map ? [...v] : v));
}

function cacheFiles(): string[] {
  const d = path.join(cache, "runs");
  return fs.existsSync(d) ? fs.readdirSync(d).map((f) => path.join(d, f)) : [];
}

describe("run index cache", () => {
  test("a run from the cache equals the run from its files and leaves no file open", async () => {
    const dir = await synth();
    process.env.XFEL_REDU_CACHE_DIR = "off";
    const fromFiles = await Run.open(dir);
    fromFiles.close();
    expect(cacheDir()).toBeNull();
    process.env.XFEL_REDU_CACHE_DIR = cache;
    const first = await Run.open(dir);
    first.close();
    expect(cacheFiles()).toHaveLength(1);
    const cached = await Run.open(dir);
    expect(first.files.some((f) => isRunFileOpen(f.path))).toBe(false);
    expect(plain(cached)).toEqual(plain(fromFiles));
    expect(cached.trainIds).toEqual(fromFiles.trainIds);
    expect(cached.detector().modules.map((m) => m.frames)).toEqual(
      fromFiles.detector().modules.map((m) => m.frames),
    );
    cached.close();
    // Nothing written into the run.
    expect(fs.readdirSync(dir).filter((f) => !f.endsWith(".h5") && f !== "truth.json")).toEqual([]);
  });

  test("the cache is read: an edited entry shows; a changed file is described anew", async () => {
    const dir = await synth();
    (await Run.open(dir)).close();
    const [file] = cacheFiles();
    const data = JSON.parse(fs.readFileSync(file, "utf8"));
    const name = Object.keys(data.files).find((f) => f.includes("AGIPD00-S00000"))!;
    const real = await (async () => {
      process.env.XFEL_REDU_CACHE_DIR = "off";
      const r = await Run.open(dir);
      r.close();
      process.env.XFEL_REDU_CACHE_DIR = cache;
      return r.files.find((f) => f.name === name)!.trainIds;
    })();
    // The file's train IDs shifted by 1000 in the cache (arithmetic runs: [value, step, length]).
    const t = data.files[name].trainIds as number[];
    for (let k = 0; k < t.length; k += 3) t[k] += 1000;
    fs.writeFileSync(file, JSON.stringify(data));
    const edited = await Run.open(dir);
    edited.close();
    expect(edited.files.find((f) => f.name === name)!.trainIds).toEqual(real.map((x) => x + 1000));
    // The file changes (its modification time): the cache's entry is not used, and is replaced.
    const p = path.join(dir, name);
    const st = fs.statSync(p);
    fs.utimesSync(p, st.atime, new Date(st.mtimeMs + 5000));
    const again = await Run.open(dir);
    again.close();
    expect(again.files.find((f) => f.name === name)!.trainIds).toEqual(real);
    const rewritten = JSON.parse(fs.readFileSync(file, "utf8"));
    expect(fromRuns(rewritten.files[name].trainIds)).toEqual(real);
  });

  test("a damaged cache file or an unwritable cache directory changes nothing", async () => {
    const dir = await synth();
    process.env.XFEL_REDU_CACHE_DIR = "off";
    const ref = await Run.open(dir);
    ref.close();
    process.env.XFEL_REDU_CACHE_DIR = cache;
    (await Run.open(dir)).close();
    const [file] = cacheFiles();
    fs.writeFileSync(file, "{ not json");
    const r1 = await Run.open(dir);
    r1.close();
    expect(plain(r1)).toEqual(plain(ref));
    expect(JSON.parse(fs.readFileSync(file, "utf8")).version).toBeGreaterThan(0); // written again
    // A damaged entry (its runs cut short): that file is described anew.
    const data = JSON.parse(fs.readFileSync(file, "utf8"));
    for (const e of Object.values(data.files) as { trainIds: number[] }[]) e.trainIds = [1, 2];
    fs.writeFileSync(file, JSON.stringify(data));
    const r2 = await Run.open(dir);
    r2.close();
    expect(plain(r2)).toEqual(plain(ref));
    // The cache directory's place holds a file: nothing can be written, the run opens all the same.
    const blocked = path.join(tmp, `blocked${n++}`);
    fs.writeFileSync(blocked, "");
    process.env.XFEL_REDU_CACHE_DIR = blocked;
    const r3 = await Run.open(dir);
    r3.close();
    expect(plain(r3)).toEqual(plain(ref));
  });

  test("a single file is a run of its own in the cache", async () => {
    const dir = await synth();
    const one = path.join(dir, fs.readdirSync(dir).find((f) => f.includes("AGIPD01-S00001"))!);
    process.env.XFEL_REDU_CACHE_DIR = "off";
    const ref = await Run.open(one);
    ref.close();
    process.env.XFEL_REDU_CACHE_DIR = cache;
    (await Run.open(one)).close();
    (await Run.open(dir)).close();
    expect(cacheFiles()).toHaveLength(2);
    const r = await Run.open(one);
    r.close();
    expect(plain(r)).toEqual(plain(ref));
  });

  test("at most MAX_RUNS runs are kept, the least recently written go first", async () => {
    const runs = path.join(cache, "runs");
    fs.mkdirSync(runs, { recursive: true });
    const old = Date.now() / 1000 - 3600;
    for (let k = 0; k < MAX_RUNS; k++) {
      const p = path.join(runs, `${k.toString(16).padStart(32, "0")}.json`);
      fs.writeFileSync(p, "{}");
      fs.utimesSync(p, old + k, old + k);
    }
    const keep = path.join(runs, "not-a-cache-file.txt");
    fs.writeFileSync(keep, "");
    const dir = await synth();
    (await Run.open(dir)).close();
    const left = fs.readdirSync(runs);
    expect(left.filter((f) => f.endsWith(".json"))).toHaveLength(MAX_RUNS);
    expect(left).not.toContain(`${"0".padStart(32, "0")}.json`); // the oldest went
    expect(left).toContain(`${(MAX_RUNS - 1).toString(16).padStart(32, "0")}.json`);
    expect(left).toContain("not-a-cache-file.txt"); // only its own files are removed
  });

  test("at most MAX_BYTES are kept, the least recently written go first", async () => {
    const runs = path.join(cache, "runs");
    fs.mkdirSync(runs, { recursive: true });
    const old = Date.now() / 1000 - 3600;
    // Three sparse files of a third of the budget each: with the run's own file the budget is passed.
    for (let k = 0; k < 3; k++) {
      const p = path.join(runs, `${k.toString(16).padStart(32, "0")}.json`);
      fs.writeFileSync(p, "");
      fs.truncateSync(p, Math.ceil(MAX_BYTES / 3));
      fs.utimesSync(p, old + k, old + k);
    }
    const dir = await synth();
    (await Run.open(dir)).close();
    const left = fs.readdirSync(runs).sort();
    expect(left).toHaveLength(3);
    expect(left).not.toContain(`${"0".padStart(32, "0")}.json`);
    const total = left.reduce((a, f) => a + fs.statSync(path.join(runs, f)).size, 0);
    expect(total).toBeLessThanOrEqual(MAX_BYTES);
  });
});

describe("arithmetic runs", () => {
  test("give every integer array back", () => {
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    const arrays: number[][] = [
      [],
      [5],
      [1, 2],
      [3, 3, 3, 3],
      [10, 20, 30, 31, 32, 0, 0, 7],
      Array.from({ length: 250 }, (_, i) => 1_000_000_000 + i),
      Array.from({ length: 300 }, (_, i) => 352 * i),
      Array.from({ length: 200 }, () => Math.floor(rnd() * 5)),
      [2 ** 52, 2 ** 52 + 2, 0, -3],
    ];
    for (const a of arrays) expect(fromRuns(runsOf(a))).toEqual(a);
    expect(runsOf(Array.from({ length: 250 }, (_, i) => 1_000_000_000 + i))).toEqual([1_000_000_000, 1, 250]);
    expect(() => fromRuns([1, 2])).toThrow();
    expect(() => fromRuns([1, 0, -1])).toThrow();
  });
});
