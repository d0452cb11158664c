/**
 * EuXFEL's own reader judges what every command writes, on inputs made by EuXFEL's own mock writers
 * (extra_data.tests.mockdata: METADATA and INDEX padded like the DAQ's, image datasets the writer never
 * filled). Every HDF5 output passes `extra-data-validate` and opens in `extra_data.RunDirectory` with all its
 * sources and every key readable; reduced runs keep METADATA as written (NULL padding stays empty, unlimited
 * maxshape stays unlimited), keep exactly the lit frames byte for byte, are never larger than their input,
 * and count the frames inspect counts. The guards of `reduce` (never delete what is not known to be dark) are
 * checked here too, each through the Node CLI: one line, exit 2, nothing written.
 *
 * Needs python3-extra-data (test/helpers/tools.ts): skipped with one line without it, required on CI.
 */
import { algorithm } from "../src/cli/algorithms.ts";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { mergeJob, prepareJob, runJobPart } from "../src/framework/slurm.ts";
import { type CliResult, runDenoTask, runNode } from "./helpers/cli.ts";
import {
  metadataSources,
  mockRun,
  type MockTruth,
  openRun,
  sameFrames,
  validate,
} from "./helpers/extra-data.ts";
import { have } from "./helpers/tools.ts";

const ED = have("extra-data");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-exdf-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const AGIPD = "SPB_DET_AGIPD1M-1";
const src = (m: number) => `${AGIPD}/DET/${m}CH0:xtdf`;

function ok(r: CliResult, what: string): void {
  expect(r.code, `${what}: ${r.stderr}`).toBe(0);
}

/** One line on stderr (our own), exit 2, matching `re`. */
function refused(r: CliResult, re: RegExp): void {
  expect(r.code, r.stdout + r.stderr).toBe(2);
  const lines = r.stderr.trim().split("\n").filter((l) =>
    !/^xfel-redu: (warning|note|no GPU|no bunch)/.test(l)
  );
  expect(lines.length, r.stderr).toBe(1);
  expect(lines[0]).toMatch(/^xfel-redu: /);
  expect(lines[0]).toMatch(re);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

/** extra-data-validate passes, and RunDirectory reads every key of every expected source. */
function judged(dir: string, expectSources: string[]): ReturnType<typeof openRun> {
  const v = validate(dir);
  expect(v.ok, `extra-data-validate ${dir}:\n${v.output}`).toBe(true);
  const view = openRun(dir);
  expect(view.errors, dir).toEqual([]);
  for (const s of expectSources) expect(Object.keys(view.sources), dir).toContain(s);
  for (const [s, keys] of Object.entries(view.sources)) {
    expect(Object.keys(keys).length, `${dir}: ${s} has keys`).toBeGreaterThan(0);
  }
  return view;
}

function dirBytes(d: string): number {
  return fs.readdirSync(d).filter((n) => n.endsWith(".h5")).reduce(
    (a, n) => a + fs.statSync(path.join(d, n)).size,
    0,
  );
}

function h5files(d: string): string[] {
  return fs.readdirSync(d).filter((n) => n.endsWith(".h5")).sort();
}

describe.skipIf(!ED)("EXtra-data judges every output (inputs from its mock writers)", () => {
  let run: string;
  let truth: MockTruth;
  let loc: string;

  beforeAll(() => {
    run = path.join(tmp, "agipd");
    // 2 modules, 6 trains in two sequence files, METADATA padded to 32 entries (28 NULLs).
    truth = mockRun(run, {
      detector: "AGIPD",
      modules: [0, 1],
      trains: 6,
      trainsPerFile: 3,
      framesPerTrain: 8,
      litFraction: 0.3,
      xgm: true,
      seed: 3,
    });
    loc = path.join(tmp, "agipd-loc");
    ok(runNode(["localise", run, "--out", loc, "--backend", "cpu"]), "localise");
  });

  test("the mock input itself passes EXtra-data (the reference is sound)", () => {
    judged(run, [src(0), src(1), "SA1_XTD2_XGM/DOOCS/MAIN"]);
  });

  test("localise: the REDU file validates and opens", () => {
    const view = judged(loc, [`${AGIPD}/REDU/LOCALISE`, `${AGIPD}/REDU/LOCALISE:output`]);
    const keys = view.sources[`${AGIPD}/REDU/LOCALISE:output`];
    expect(keys["data.frameLit"].counts).toBe(6 * 8);
  });

  test("reduce: METADATA padding stays empty, maxshape unlimited, frames kept bit for bit", () => {
    const out = path.join(tmp, "agipd-red");
    ok(runNode(["reduce", run, "--from", loc, "--out", out]), "reduce");
    expect(h5files(out)).toEqual(h5files(run));
    for (const n of h5files(run)) {
      const a = metadataSources(path.join(run, n));
      const b = metadataSources(path.join(out, n));
      expect(b, n).toEqual(a);
      expect(a.dataSourceId.values.filter((v) => v === "").length).toBeGreaterThan(0);
      expect(b.dataSourceId.maxshape).toEqual([-1]);
      expect(b.dataSourceId.values).not.toContain("emsc");
    }
    judged(out, [src(0), src(1), "SA1_XTD2_XGM/DOOCS/MAIN"]);
    // A frame with spots in either module is lit: kept in both (frames aligned across modules).
    const lit = [...new Set([...truth.lit[0], ...truth.lit[1]].map(([t, p]) => `${t}:${p}`))].sort();
    const same = sameFrames(run, out, [src(0), src(1)], "image.data");
    expect(same.ids.sort()).toEqual(lit);
    expect({ ...same, ids: undefined }).toEqual({
      frames: 2 * lit.length,
      differ: 0,
      missing: 0,
      ids: undefined,
    });
    // mask and gain were never written by the mock writer: the output does not grow them.
    expect(dirBytes(out)).toBeLessThan(dirBytes(run));
  });

  const variants: [string, string[], string[]][] = [
    ["--modules selected", ["--modules", "selected"], []],
    ["--roi", ["--roi"], []],
    ["--keep-dark 3", ["--keep-dark", "3"], []],
    ["--compress lossless:lz4", ["--compress", "lossless:lz4"], []],
    // zstd (the default lossless stage) is not in Debian's HDF5 plugins: lz4, which EXtra-data reads here.
    ["--compress round:7", ["--compress", "round:7", "--compress-filter", "lz4"], []],
    ["--compress sz:0.05", ["--compress", "sz:0.05", "--compress-filter", "lz4"], []],
  ];
  for (const [name, args] of variants) {
    test(`reduce ${name}: validates and opens with every key readable`, () => {
      const out = path.join(tmp, `agipd-red-${name.replace(/[^a-z0-9]+/gi, "_")}`);
      ok(runNode(["reduce", run, "--from", loc, "--out", out, ...args]), `reduce ${name}`);
      for (const n of h5files(out)) {
        expect(metadataSources(path.join(out, n)).dataSourceId.values).not.toContain("emsc");
      }
      judged(out, ["SA1_XTD2_XGM/DOOCS/MAIN"]);
      expect(dirBytes(out)).toBeLessThanOrEqual(dirBytes(run));
      if (name.startsWith("--compress sz")) {
        const dec = path.join(tmp, "agipd-decompressed");
        ok(runNode(["decompress", out, "--out", dec]), "decompress");
        judged(dec, [src(0), src(1), "SA1_XTD2_XGM/DOOCS/MAIN"]);
        for (const n of h5files(dec)) {
          expect(metadataSources(path.join(dec, n))).toEqual(metadataSources(path.join(run, n)));
        }
      }
    });
  }

  test("reduce under Deno: the same METADATA and a valid run", () => {
    const out = path.join(tmp, "agipd-red-deno");
    ok(runDenoTask("reduce", [run, "--from", loc, "--out", out]), "deno task reduce");
    for (const n of h5files(run)) {
      expect(metadataSources(path.join(out, n))).toEqual(metadataSources(path.join(run, n)));
    }
    judged(out, [src(0), src(1)]);
  });

  test("average and litframes outputs validate and open", () => {
    const avg = path.join(tmp, "agipd-avg");
    ok(runNode(["average", run, "--out", avg]), "average");
    judged(avg, []);
    const lf = path.join(tmp, "agipd-litframes");
    ok(runNode(["litframes", run, "--out", lf]), "litframes");
    judged(lf, []);
  });

  test("SLURM parts merged (localise, average): the merged outputs validate and open", async () => {
    for (const alg of ["localise", "average"] as const) {
      const out = path.join(tmp, `agipd-slurm-${alg}`);
      const { work } = await prepareJob(algorithm(alg), run, out, { backend: "cpu" }, 2, false);
      await runJobPart(work, 0);
      await runJobPart(work, 1);
      await mergeJob(work);
      judged(out, []);
    }
  });

  test("inspect, localise and reduce count the same frames and trains (empty trains included)", () => {
    const r2 = path.join(tmp, "agipd-empty-trains");
    // Train 2 and train 5 are empty; 7 trains in all.
    mockRun(r2, {
      detector: "AGIPD",
      modules: [0, 1],
      trains: 7,
      framesPerTrain: [8, 8, 0, 8, 4, 0, 8],
      seed: 5,
    });
    const ins = runNode(["inspect", r2, "--json"]);
    ok(ins, "inspect");
    const det = JSON.parse(ins.stdout).detectors[0];
    expect(JSON.parse(ins.stdout).trains).toBe(7);
    expect(det.frames).toBe(2 * 36);
    const l2 = path.join(tmp, "agipd-empty-trains-loc");
    const lr = runNode(["localise", r2, "--out", l2, "--json", "--backend", "cpu"]);
    ok(lr, "localise");
    const s = JSON.parse(lr.stdout);
    expect(s.trains).toBe(7);
    expect(s.modules.reduce((a: number, m: { frames: number }) => a + m.frames, 0)).toBe(det.frames);
    const rr = runNode([
      "reduce",
      r2,
      "--from",
      l2,
      "--out",
      path.join(tmp, "agipd-empty-trains-red"),
      "--json",
    ]);
    ok(rr, "reduce");
    expect(JSON.parse(rr.stdout).framesIn).toBe(det.frames);
    judged(path.join(tmp, "agipd-empty-trains-red"), [src(0), src(1)]);
  });

  test("JUNGFRAU (memory cells): counts agree, and the reduced run is never larger than its input", () => {
    const jf = path.join(tmp, "jf");
    mockRun(jf, { detector: "JUNGFRAU", modules: [0, 1], trains: 4, raw: true, litFraction: 0.02, seed: 9 });
    const ins = JSON.parse(runNode(["inspect", jf, "--json"]).stdout).detectors[0];
    expect(ins.frames).toBe(2 * 4 * 16);
    const l = path.join(tmp, "jf-loc");
    const s = JSON.parse(runNode(["localise", jf, "--out", l, "--json", "--backend", "cpu"]).stdout);
    expect(s.modules.reduce((a: number, m: { frames: number }) => a + m.frames, 0)).toBe(ins.frames);
    const out = path.join(tmp, "jf-red");
    const rr = runNode(["reduce", jf, "--from", l, "--out", out, "--json", "--allow-empty"]);
    ok(rr, "reduce");
    const rec = JSON.parse(rr.stdout);
    expect(rec.framesIn).toBe(ins.frames);
    expect(rec.framesKept % 16).toBe(0);
    expect(dirBytes(out)).toBeLessThanOrEqual(dirBytes(jf));
    judged(out, ["SPB_IRDA_JF4M/DET/JNGFR01:daqOutput", "SPB_IRDA_JF4M/DET/JNGFR02:daqOutput"]);
  });
});

describe.skipIf(!ED)("reduce never deletes what is not known to be dark", () => {
  let run: string;
  let loc: string;
  beforeAll(() => {
    run = path.join(tmp, "g-run");
    mockRun(run, {
      detector: "AGIPD",
      modules: [0],
      trains: 4,
      framesPerTrain: 4,
      litFraction: 0.5,
      seed: 11,
    });
    loc = path.join(tmp, "g-loc");
    ok(runNode(["localise", run, "--out", loc, "--backend", "cpu"]), "localise");
  });

  test("a selection of another run number is refused", () => {
    const other = path.join(tmp, "g-other");
    mockRun(other, { detector: "AGIPD", modules: [0], trains: 4, framesPerTrain: 4, run: 239, seed: 11 });
    const out = path.join(tmp, "g-out-other");
    refused(runNode(["reduce", other, "--from", loc, "--out", out]), /made on run 238 .* not on run 239/);
    expect(fs.existsSync(out)).toBe(false);
  });

  test("a copy of the run needs --run-copy; then its frames match and it works", () => {
    const copy = path.join(tmp, "g-copy");
    fs.cpSync(run, copy, { recursive: true });
    const out = path.join(tmp, "g-out-copy");
    refused(runNode(["reduce", copy, "--from", loc, "--out", out]), /--run-copy/);
    expect(fs.existsSync(out)).toBe(false);
    ok(runNode(["reduce", copy, "--from", loc, "--out", out, "--run-copy"]), "reduce --run-copy");
    judged(out, [src(0)]);
  });

  test("localise on a train range beyond the run: exit 2, nothing written", () => {
    const out = path.join(tmp, "g-loc-empty");
    refused(
      runNode(["localise", run, "--first-train", "20000", "--out", out, "--backend", "cpu"]),
      /no detector frames/,
    );
    expect(fs.existsSync(out)).toBe(false);
  });

  test("a selection covering part of the run is refused unless --unlisted says keep or delete", () => {
    const part = path.join(tmp, "g-loc-part");
    ok(
      runNode(["localise", run, "--first-train", "10002", "--out", part, "--backend", "cpu"]),
      "localise part",
    );
    const out = path.join(tmp, "g-out-part");
    refused(runNode(["reduce", run, "--from", part, "--out", out]), /does not list 8 of the run's 16 frames/);
    expect(fs.existsSync(out)).toBe(false);
    const keep = runNode(["reduce", run, "--from", part, "--out", out, "--unlisted", "keep", "--json"]);
    ok(keep, "--unlisted keep");
    const rec = JSON.parse(keep.stdout);
    expect(rec.modules[0].unlistedKept).toBe(8);
    expect(rec.framesKept).toBeGreaterThanOrEqual(8);
    judged(out, [src(0)]);
  });

  test("a selection that keeps no frame is refused unless --allow-empty", () => {
    const dark = path.join(tmp, "g-dark");
    mockRun(dark, { detector: "AGIPD", modules: [0], trains: 3, framesPerTrain: 4, litFraction: 0, seed: 2 });
    const l = path.join(tmp, "g-dark-loc");
    ok(runNode(["localise", dark, "--out", l, "--backend", "cpu"]), "localise");
    const out = path.join(tmp, "g-dark-out");
    refused(
      runNode(["reduce", dark, "--from", l, "--out", out]),
      /keeps none of the run's 12 frames.*--allow-empty/,
    );
    expect(fs.existsSync(out)).toBe(false);
    ok(runNode(["reduce", dark, "--from", l, "--out", out, "--allow-empty"]), "--allow-empty");
    judged(out, []);
  });

  test("a repeated train ID: inspect and localise warn naming file and train, reduce refuses", async () => {
    const bad = path.join(tmp, "g-dup");
    fs.cpSync(run, bad, { recursive: true });
    const f = path.join(bad, h5files(bad)[0]);
    const { spawnSync } = await import("node:child_process");
    const r = spawnSync("/usr/bin/python3", [
      "-c",
      `import h5py\nwith h5py.File(${
        JSON.stringify(f)
      }, "r+") as f:\n    t = f["INDEX/trainId"]; t[2] = t[1]`,
    ]);
    expect(r.status).toBe(0);
    const ins = runNode(["inspect", bad]);
    expect(ins.stderr).toMatch(
      new RegExp(`warning: .*${path.basename(f)}: INDEX/trainId not strictly increasing: 10001 repeated`),
    );
    const l = path.join(tmp, "g-dup-loc");
    const lr = runNode(["localise", bad, "--out", l, "--backend", "cpu"]);
    expect(lr.stderr).toMatch(/warning: .*10001 repeated/);
    const out = path.join(tmp, "g-dup-out");
    refused(
      runNode(["reduce", bad, "--from", l, "--out", out, "--run-copy"]),
      /10001 repeated; reduce refuses/,
    );
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe.skipIf(!ED)("odd but valid runs are handled and reported", () => {
  test("a module that is entirely NaN: localise warns, names the module, and still writes", async () => {
    const r = path.join(tmp, "nan-run");
    mockRun(r, { detector: "AGIPD", modules: [0, 1], trains: 2, framesPerTrain: 4, seed: 4 });
    const f = path.join(r, h5files(r).find((n) => n.includes("AGIPD01"))!);
    const { spawnSync } = await import("node:child_process");
    const py = spawnSync("/usr/bin/python3", [
      "-c",
      `import h5py, numpy as np\nwith h5py.File(${JSON.stringify(f)}, "r+") as f:\n` +
      `    d = f["INSTRUMENT/${src(1)}/image/data"]; d[...] = np.nan`,
    ]);
    expect(py.status, String(py.stderr)).toBe(0);
    const out = path.join(tmp, "nan-loc");
    const lr = runNode(["localise", r, "--out", out, "--backend", "cpu"]);
    ok(lr, "localise");
    expect(lr.stderr).toMatch(/warning: module 1: no valid pixel in any of its 8 frames/);
    expect(lr.stderr).not.toMatch(/module 0: no valid/);
    judged(out, []);
  });

  test("a directory that mixes two runs' files: inspect and localise warn", () => {
    const r = path.join(tmp, "mixed-run");
    mockRun(r, { detector: "AGIPD", modules: [0], trains: 2, framesPerTrain: 4, seed: 6 });
    const other = path.join(tmp, "mixed-other");
    mockRun(other, { detector: "AGIPD", modules: [1], trains: 2, framesPerTrain: 4, seed: 6, run: 240 });
    for (const n of h5files(other)) fs.copyFileSync(path.join(other, n), path.join(r, n));
    const ins = runNode(["inspect", r]);
    ok(ins, "inspect");
    expect(ins.stderr).toMatch(/warning: .*files of 2 runs mixed in one directory: run 238 .*, run 240/);
    const lr = runNode(["localise", r, "--out", path.join(tmp, "mixed-loc"), "--backend", "cpu"]);
    expect(lr.stderr).toMatch(/files of 2 runs mixed/);
  });
});

describe("stderr carries only the tool's own lines", () => {
  test("localise on the sample under Node: no Dawn or Vulkan lines", () => {
    const out = path.join(tmp, "quiet");
    const r = runNode(["localise", "fixtures/sample", "--out", out]);
    ok(r, "localise");
    const foreign = r.stderr.split("\n").filter((l) => l.trim() && !l.startsWith("xfel-redu"));
    expect(foreign).toEqual([]);
  });
});
