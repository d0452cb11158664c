/**
 * `reduce` (src/reduce/reduce.ts) on synthetic CORR and RAW runs with a localise output: the kept frames are exactly
 * the lit ones, bit for bit (checked with h5py, independent of h5wasm), in files of the same names that pass
 * the validity helper and open as a run; INDEX, links, per-train data and other files as they were; ROI,
 * keep-dark and module-selection modes; refusals; RUN untouched (read-only copy, hashes and mtimes); an
 * interrupted reduce leaves no file under a final name.
 */
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { spawn, spawnSync } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun, type SynthOptions, type Truth } from "../fixtures/synth.ts";
import { InputError } from "../src/errors.ts";
import { dsInfo, h5, type H5Dataset, readAll } from "../src/exdf/h5.ts";
import { localise } from "../src/localise/algorithm.ts";
import { summaryJson } from "../src/localise/output.ts";
import { Selection, writeRedu } from "../src/localise/redu.ts";
import { reduce, type ReductionRecord } from "../src/reduce/reduce.ts";
import { copyDatasetRows } from "../src/exdf/copy.ts";
import { reduceCommand } from "../src/cli/reduce.ts";
import { Run } from "../src/exdf/run.ts";
import { DENO, ROOT } from "./helpers/cli.ts";
import { validateExdf } from "./helpers/exdf-validate.ts";
import { independentAvailable, SYSTEM_PYTHON } from "./helpers/independent-h5.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-reduce-"));
afterAll(() => {
  spawnSync("chmod", ["-R", "u+w", tmp]);
  fs.rmSync(tmp, { recursive: true, force: true });
});

const DET = "SPB_DET_AGIPD1M-1";
const BASE: Partial<SynthOptions> = {
  seed: 101,
  modules: [0, 1, 2],
  trains: 6,
  trainsPerFile: 3,
  framesPerTrain: 16,
  litFraction: 0.3,
  compression: 1,
  missingTrains: [{ module: 2, trains: [1] }],
  shortFrames: [{ module: 1, train: 4, frames: 9 }],
};

let corr: string, raw: string, loc: string;
let truth: Truth, rawTruth: Truth;

beforeAll(async () => {
  corr = path.join(tmp, "corr");
  raw = path.join(tmp, "raw");
  loc = path.join(tmp, "loc");
  truth = await makeRun(corr, { ...BASE, naming: "output" });
  rawTruth = await makeRun(raw, { ...BASE, level: "raw", instrumentPadding: 2 });
  // ROIs as the union of the peak boxes (roiFraction 0): the run's spots are scattered, which makes no
  // persistence ROI, and the --roi tests need boxes to crop.
  const r = await localise(corr, { backend: "cpu", roiFraction: 0 });
  fs.mkdirSync(loc);
  await writeRedu(r, loc, r.runFiles);
  fs.writeFileSync(path.join(loc, "summary.json"), JSON.stringify(summaryJson(r), null, 2));
  // The decision reduce uses is localise's; on this run it is the truth.
  const lit = new Set(truth.frames.filter((f) => f.lit).map((f) => `${f.trainId}/${f.pulseId}`));
  const found = Array.from(r.perFrame.frameLit, (v, i) => [r.perFrame.trainId[i], r.perFrame.pulseId[i], v]);
  expect(found.filter(([, , v]) => v).map(([t, p]) => `${t}/${p}`).sort()).toEqual([...lit].sort());
}, 300_000);

// ---------------------------------------------------------------------------------------------------------
// Helpers

function sha(p: string): string {
  return crypto.createHash("sha256").update(fs.readFileSync(p)).digest("hex");
}

function h5names(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.endsWith(".h5")).sort();
}

/** (trainId/pulseId) of the frames of module m the truth says are lit, within the trains of `trains`. */
function litOf(t: Truth, m: number, trains?: Set<number>): string[] {
  return t.frames
    .filter((f) => f.lit && f.modules.includes(m) && (!trains || trains.has(f.trainId)))
    .map((f) => `${f.trainId}/${f.pulseId}`);
}

const COMPARE = String.raw`
import sys, json, h5py, numpy as np
a = json.loads(sys.argv[1])
A = h5py.File(a["input"], "r"); B = h5py.File(a["output"], "r")
grp, idx = a["group"], a["index"]
out = {"rows": [], "mismatch": [], "meta": [], "index": [], "other": [], "links": {}, "keys": sorted(B[grp].keys())}
ta = A[grp + "/trainId"][:].ravel(); pa = A[grp + "/pulseId"][:].ravel()
tb = B[grp + "/trainId"][:].ravel(); pb = B[grp + "/pulseId"][:].ravel()
N = len(ta)
pos = {}
for i, (t, p) in enumerate(zip(ta, pa)):
    pos.setdefault((int(t), int(p)), i)
rows = [pos[(int(t), int(p))] for t, p in zip(tb, pb)]
out["rows"] = ["%d/%d" % (t, p) for t, p in zip(tb, pb)]
boxes = a.get("boxes")
for k, d in A[grp].items():
    if not isinstance(d, h5py.Dataset) or d.shape[0] != N:
        continue
    if boxes is not None and d.ndim >= 3 and list(d.shape[-2:]) == a["imageShape"]:
        if k in B[grp]:
            out["mismatch"].append([k, "full image dataset kept"])
        for i, b in enumerate(boxes):
            e = B["%s/roi%d/%s" % (grp, i, k)]
            if list(e.attrs["box"]) != b or list(B["%s/roi%d" % (grp, i)].attrs["box"]) != b:
                out["mismatch"].append([k, i, "box attribute"])
            if e.dtype.str != d.dtype.str or e.shape != (len(rows),) + d.shape[1:-2] + (b[2] - b[0], b[3] - b[1]):
                out["mismatch"].append([k, i, "dtype/shape", e.dtype.str, list(e.shape)])
                continue
            for j, r in enumerate(rows):
                if d[r][..., b[0]:b[2], b[1]:b[3]].tobytes() != e[j].tobytes():
                    out["mismatch"].append([k, i, r, j])
        continue
    e = B[grp + "/" + k]
    out["meta"].append([k, d.dtype.str == e.dtype.str, d.chunks == e.chunks, d.compression == e.compression,
                        d.compression_opts == e.compression_opts, e.shape == (len(rows),) + d.shape[1:]])
    for j, r in enumerate(rows):
        if d[r].tobytes() != e[j].tobytes():
            out["mismatch"].append([k, r, j])
tids = B["INDEX/trainId"][:]
first = B[idx + "/first"][:]; count = B[idx + "/count"][:]
for i, t in enumerate(tids):
    if t == 0:
        continue
    seg = tb[first[i]:first[i] + count[i]]
    out["index"].append([int(t), int(count[i]), bool(np.all(seg == t))])
def other(name, obj):
    if not isinstance(obj, h5py.Dataset) or name.startswith(grp + "/") or name.startswith(idx + "/"):
        return
    e = B.get(name)
    if e is None:
        out["other"].append([name, "missing"]); return
    x, y = obj[()], e[()]
    same = (np.array_equal(x, y) if obj.dtype.kind == "O" else
            (obj.dtype.str == e.dtype.str and np.asarray(x).tobytes() == np.asarray(y).tobytes()))
    if not same or obj.shape != e.shape:
        out["other"].append([name, "differs"])
A.visititems(other)
for p in a.get("links", []):
    l = B.get(p, getlink=True)
    out["links"][p] = l.path if isinstance(l, h5py.SoftLink) else None
print(json.dumps(out))
`;

interface Compared {
  rows: string[];
  mismatch: unknown[];
  meta: [string, boolean, boolean, boolean, boolean, boolean][];
  index: [number, number, boolean][];
  other: unknown[];
  links: Record<string, string | null>;
  keys: string[];
}

/** Compare a module file of the output with its input through h5py. */
function compare(
  input: string,
  output: string,
  source: string,
  opts: { boxes?: number[][]; links?: string[] } = {},
): Compared {
  const args = {
    input,
    output,
    group: `INSTRUMENT/${source}/image`,
    index: `INDEX/${source}/image`,
    boxes: opts.boxes,
    imageShape: [512, 128],
    links: opts.links ?? [],
  };
  const r = spawnSync(SYSTEM_PYTHON, ["-c", COMPARE, JSON.stringify(args)], {
    encoding: "utf8",
    maxBuffer: 1 << 28,
  });
  if (r.status !== 0) throw new Error(`h5py compare failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

function moduleFiles(dir: string, m: number): string[] {
  return h5names(dir).filter((n) => n.includes(`AGIPD${String(m).padStart(2, "0")}`));
}

function trainsOfFile(t: Truth, name: string): Set<number> {
  const seq = Number(/-S(\d+)\.h5$/.exec(name)![1]);
  return new Set(t.trains.slice(seq * 3, seq * 3 + 3));
}

async function expectValid(dir: string): Promise<void> {
  for (const n of h5names(dir)) expect(await validateExdf(path.join(dir, n)), n).toEqual([]);
}

// ---------------------------------------------------------------------------------------------------------

describe("reduce a CORR run", () => {
  let out: string;
  let rec: ReductionRecord;
  beforeAll(async () => {
    out = path.join(tmp, "out-corr");
    rec = await reduce(corr, loc, out);
  });

  test("same file names, every file valid, reduction.json as returned; opens as a run", async () => {
    expect(h5names(out)).toEqual(h5names(corr));
    await expectValid(out);
    expect(JSON.parse(fs.readFileSync(path.join(out, "reduction.json"), "utf8"))).toEqual(rec);
    const run = await Run.open(out);
    try {
      const det = run.detector();
      expect(det.name).toBe(DET);
      expect(det.modules.map((m) => m.frames)).toEqual([0, 1, 2].map((m) => litOf(truth, m).length));
    } finally {
      run.close();
    }
  });

  test("the kept frames are exactly the lit ones, bit for bit; INDEX cut, links kept, the rest as it was", () => {
    if (!independentAvailable()) return;
    for (const m of [0, 1, 2]) {
      const source = `${DET}/CORR/${m}CH0:output`;
      const legacy = [`INSTRUMENT/${DET}/DET/${m}CH0:xtdf`, `INDEX/${DET}/DET/${m}CH0:xtdf`];
      for (const name of moduleFiles(corr, m)) {
        const c = compare(path.join(corr, name), path.join(out, name), source, { links: legacy });
        expect(c.rows, name).toEqual(litOf(truth, m, trainsOfFile(truth, name)));
        expect(c.mismatch, name).toEqual([]);
        expect(c.other, name).toEqual([]);
        expect(c.meta.map((x) => x[0]).sort()).toEqual([
          "cellId",
          "data",
          "gain",
          "mask",
          "pulseId",
          "trainId",
        ]);
        for (const x of c.meta) expect(x, `${name} ${x[0]}`).toEqual([x[0], true, true, true, true, true]);
        for (const [t, n, ok] of c.index) {
          expect(ok).toBe(true);
          expect(n).toBe(litOf(truth, m, new Set([t])).length);
        }
        expect(c.links).toEqual({
          [legacy[0]]: `/INSTRUMENT/${source}`,
          [legacy[1]]: `/INDEX/${source}`,
        });
      }
    }
  });

  test("files without detector data copied byte for byte; the record adds up", () => {
    for (const n of h5names(corr).filter((n) => n.includes("DA01"))) {
      expect(sha(path.join(out, n))).toBe(sha(path.join(corr, n)));
    }
    const size = (d: string) => h5names(d).reduce((a, n) => a + fs.statSync(path.join(d, n)).size, 0);
    expect(rec.bytesIn).toBe(size(corr));
    expect(rec.bytesOut).toBe(size(out));
    expect(rec.ratio).toBeCloseTo(rec.bytesIn / rec.bytesOut, 10);
    expect(rec.ratio).toBeGreaterThan(2.5);
    expect(rec.level).toBe("corr");
    for (const m of rec.modules) {
      expect(m.framesIn).toBe(truth.frames.filter((f) => f.modules.includes(m.module)).length);
      expect(m.framesKept).toBe(litOf(truth, m.module).length);
      expect(m.litKept).toBe(m.framesKept);
      expect([m.darkKept, m.unmatched, m.unindexed, m.dropped]).toEqual([0, 0, 0, false]);
    }
    expect(rec.files.filter((f) => f.action === "copied").map((f) => f.name)).toEqual(
      h5names(corr).filter((n) => n.includes("DA01")),
    );
  });
});

describe("reduce a RAW run with the CORR selection", () => {
  test("frames matched on (trainId, pulseId), bit for bit; RUN read-only and untouched", async () => {
    const ro = path.join(tmp, "raw-ro");
    fs.cpSync(raw, ro, { recursive: true });
    const before = new Map(
      h5names(ro).map((n) => {
        const p = path.join(ro, n);
        return [n, { sha: sha(p), mtime: fs.statSync(p).mtimeMs }];
      }),
    );
    spawnSync("chmod", ["-R", "a-w", ro]);
    const out = path.join(tmp, "out-raw");
    let rec: ReductionRecord;
    try {
      rec = await reduce(ro, loc, out);
    } finally {
      spawnSync("chmod", ["-R", "u+w", ro]);
    }
    expect(fs.readdirSync(ro).sort()).toEqual([...before.keys(), "truth.json"].sort());
    for (const [n, b] of before) {
      const p = path.join(ro, n);
      expect({ sha: sha(p), mtime: fs.statSync(p).mtimeMs }).toEqual(b);
    }
    expect(h5names(out)).toEqual(h5names(raw));
    await expectValid(out);
    expect(rec.level).toBe("raw");
    // Padding rows (instrumentPadding) belong to no train: left out and reported.
    for (const m of rec.modules) {
      expect(m.framesKept).toBe(litOf(rawTruth, m.module).length);
      expect(m.unindexed).toBe(2 * m.files.length);
    }
    if (!independentAvailable()) return;
    for (const m of [0, 1, 2]) {
      for (const name of moduleFiles(raw, m)) {
        const c = compare(path.join(raw, name), path.join(out, name), `${DET}/DET/${m}CH0:xtdf`);
        expect(c.rows, name).toEqual(litOf(rawTruth, m, trainsOfFile(rawTruth, name)));
        expect(c.mismatch, name).toEqual([]);
        expect(c.other, name).toEqual([]);
        expect(c.meta.map((x) => x[0]).sort()).toEqual([
          "cellId",
          "data",
          "length",
          "pulseId",
          "status",
          "trainId",
        ]);
        for (const x of c.meta) expect(x, `${name} ${x[0]}`).toEqual([x[0], true, true, true, true, true]);
        expect(c.index.every(([, , ok]) => ok)).toBe(true);
      }
    }
  });
});

describe("options", () => {
  test("--modules selected leaves out the modules localise did not select", async () => {
    const loc2 = path.join(tmp, "loc-unselected");
    fs.cpSync(loc, loc2, { recursive: true });
    const s = JSON.parse(fs.readFileSync(path.join(loc2, "summary.json"), "utf8"));
    s.modules.find((m: { module: number }) => m.module === 2).selected = false;
    fs.writeFileSync(path.join(loc2, "summary.json"), JSON.stringify(s));
    const out = path.join(tmp, "out-selected");
    const rec = await reduce(corr, loc2, out, { modules: "selected" });
    expect(h5names(out)).toEqual(h5names(corr).filter((n) => !n.includes("AGIPD02")));
    await expectValid(out);
    expect(rec.modules.map((m) => m.dropped)).toEqual([false, false, true]);
    expect(rec.files.filter((f) => f.action === "dropped").map((f) => f.name)).toEqual(moduleFiles(corr, 2));
    // With all modules (the default) they stay.
    const all = await reduce(corr, loc2, path.join(tmp, "out-selected-all"), { modules: "all" });
    expect(all.modules.every((m) => !m.dropped)).toBe(true);
  });

  test("--roi: one dataset per ROI box, the box as attributes, crops bit for bit", async () => {
    const out = path.join(tmp, "out-roi");
    const rec = await reduce(corr, loc, out, { roi: true });
    expect(h5names(out)).toEqual(h5names(corr));
    await expectValid(out);
    if (!independentAvailable()) return;
    for (const m of [0, 1]) {
      const boxes = rec.modules[m].rois;
      expect(boxes.length).toBeGreaterThan(0);
      const name = moduleFiles(corr, m)[0];
      const c = compare(path.join(corr, name), path.join(out, name), `${DET}/CORR/${m}CH0:output`, { boxes });
      expect(c.rows).toEqual(litOf(truth, m, trainsOfFile(truth, name)));
      expect(c.mismatch).toEqual([]);
      expect(c.other).toEqual([]);
      expect(c.keys).toEqual(
        ["cellId", "pulseId", ...boxes.map((_, i) => `roi${i}`), "trainId"].sort(),
      );
    }
    expect(rec.ratio).toBeGreaterThan(4);
  });

  test("--keep-dark N keeps every Nth dark frame of each module, counted in order", async () => {
    const out = path.join(tmp, "out-dark");
    const rec = await reduce(corr, loc, out, { keepDark: 3, sliceBytes: 600_000 });
    await expectValid(out);
    const run = await Run.open(out);
    try {
      for (const mod of run.detector().modules) {
        let dark = 0;
        const want = truth.frames.filter((f) => {
          if (!f.modules.includes(mod.module)) return false;
          return f.lit || dark++ % 3 === 0;
        }).map((f) => `${f.trainId}/${f.pulseId}`);
        const got: string[] = [];
        for (const mf of mod.files) {
          const tid = Array.from(readAll(mf.file.h5, `${mf.groupPath}/trainId`), Number);
          const pid = Array.from(readAll(mf.file.h5, `${mf.groupPath}/pulseId`), Number);
          tid.forEach((t, i) => got.push(`${t}/${pid[i]}`));
        }
        expect(got).toEqual(want);
        const r = rec.modules.find((x) => x.module === mod.module)!;
        expect(r.darkKept).toBe(want.length - litOf(truth, mod.module).length);
      }
    } finally {
      run.close();
    }
  });
});

describe("the per-frame copy", () => {
  test("any chunking (several frames per chunk, contiguous, one per chunk), small slices: bytes, chunks, filters", async () => {
    const lib = await h5();
    const srcPath = path.join(tmp, "copy-src.h5");
    const src = new lib.File(srcPath, "w");
    const N = 40;
    const fill = (n: number, f: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => f(i));
    src.create_dataset({
      name: "a",
      data: fill(N * 3 * 64, (i) => Math.sin(i) * 1e3),
      shape: [N, 3, 8, 8],
      chunks: [6, 3, 8, 8],
      maxshape: [null, 3, 8, 8],
      compression: "gzip",
      compression_opts: 3,
    });
    src.create_dataset({
      name: "b",
      data: Uint16Array.from({ length: N * 2 }, (_, i) => i * 7),
      shape: [N, 2],
    });
    src.create_dataset({
      name: "c",
      data: Uint8Array.from({ length: N * 64 }, (_, i) => (i * 31) & 255),
      shape: [N, 8, 8],
      chunks: [1, 8, 8],
      maxshape: [null, 8, 8],
    });
    const rowsSets = [
      [],
      [0],
      Array.from({ length: N }, (_, i) => i),
      [1, 2, 3, 5, 6, 11, 12, 13, 14, 17, 18, 30, 39],
      [5, 6, 7, 8, 9, 10, 11, 12, 13, 24],
    ];
    const box: [number, number, number, number] = [1, 2, 5, 7];
    for (const [i, rs] of rowsSets.entries()) {
      const rows = Int32Array.from(rs);
      const dstPath = path.join(tmp, `copy-dst${i}.h5`);
      const dst = new lib.File(dstPath, "w");
      for (const p of ["a", "b", "c"]) await copyDatasetRows(src, dst, p, rows, { sliceBytes: 2000 });
      await copyDatasetRows(src, dst, "a", rows, { sliceBytes: 2000, boxes: [box, [0, 0, 8, 8]] });
      for (const p of ["a", "b", "c"]) {
        const s0 = dsInfo(src.get(p) as H5Dataset), d0 = dsInfo(dst.get(p) as H5Dataset);
        const row = s0.shape.slice(1).reduce((x, y) => x * y, 1);
        expect(d0.shape).toEqual([rows.length, ...s0.shape.slice(1)]);
        expect(d0.dtype).toBe(s0.dtype);
        const sv = readAll(src, p), dv = readAll(dst, p);
        const want = rs.flatMap((r) => Array.from(sv.subarray(r * row, (r + 1) * row) as ArrayLike<number>));
        expect(Array.from(dv as ArrayLike<number>)).toEqual(want);
        const sm = (src.get(p) as H5Dataset).metadata, dm = (dst.get(p) as H5Dataset).metadata;
        expect(dm.chunks).toEqual(sm.chunks);
        expect((dst.get(p) as H5Dataset).filters).toEqual((src.get(p) as H5Dataset).filters);
      }
      const crop = readAll(dst, "a_roi0"), whole = readAll(dst, "a_roi1"), sv = readAll(src, "a");
      expect((dst.get("a_roi0") as H5Dataset).shape).toEqual([rows.length, 3, 4, 5]);
      const want: number[] = [], wantWhole: number[] = [];
      for (const r of rs) {
        for (let pl = 0; pl < 3; pl++) {
          for (let y = 0; y < 8; y++) {
            for (let x = 0; x < 8; x++) {
              const v = sv[((r * 3 + pl) * 8 + y) * 8 + x] as number;
              wantWhole.push(v);
              if (y >= 1 && y < 5 && x >= 2 && x < 7) want.push(v);
            }
          }
        }
      }
      expect(Array.from(crop as Float32Array)).toEqual(want);
      expect(Array.from(whole as Float32Array)).toEqual(wantWhole);
      expect((dst.get("a_roi0") as H5Dataset).metadata.chunks).toEqual([6, 3, 4, 5]);
      dst.close();
    }
    src.close();
  });
});

describe("refusals and interruption", () => {
  test("refuses an existing DIR without force, DIR inside RUN, DIR holding RUN; bad options", async () => {
    const out = path.join(tmp, "out-exists");
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, "old.txt"), "x");
    await expect(reduce(corr, loc, out)).rejects.toThrow(/exists; use --force/);
    // --force replaces only what this tool wrote (its marker), never a foreign directory.
    await expect(reduce(corr, loc, out, { force: true })).rejects.toThrow(/not written by xfel-redu/);
    expect(fs.readFileSync(path.join(out, "old.txt"), "utf8")).toBe("x");
    fs.rmSync(out, { recursive: true });
    await reduce(corr, loc, out);
    fs.writeFileSync(path.join(out, "old.txt"), "x");
    await reduce(corr, loc, out, { force: true });
    expect(fs.existsSync(path.join(out, "old.txt"))).toBe(false);
    expect(h5names(out)).toEqual(h5names(corr));
    await expect(reduce(corr, loc, path.join(corr, "out"))).rejects.toThrow(/inside the input run/);
    await expect(reduce(corr, loc, tmp, { force: true })).rejects.toThrow(/holds the input run/);
    await expect(reduce(corr, path.join(tmp, "nope"), path.join(tmp, "o1"))).rejects.toThrow(InputError);
    await expect(reduce(corr, corr, path.join(tmp, "o2"))).rejects.toThrow(/no localise REDU file/);
    await expect(reduce(corr, loc, path.join(tmp, "o3"), { keepDark: -1 })).rejects.toThrow(InputError);
    await expect(reduce(corr, loc, path.join(tmp, "o4"), { modules: "some" as never })).rejects.toThrow(
      InputError,
    );
    expect(fs.readdirSync(corr).filter((n) => !n.endsWith(".h5"))).toEqual(["truth.json"]);
    expect(fs.readdirSync(tmp).filter((n) => /^o\d$|\.tmp-/.test(n))).toEqual([]);
  });

  test(
    "an interrupted reduce leaves no file under a final name (SIGTERM cleans up, SIGKILL leaves temporaries)",
    async () => {
      const entry = path.join(tmp, "interrupt-entry.ts");
      fs.writeFileSync(
        entry,
        `import * as fs from "node:fs";
import { reduce } from ${JSON.stringify(path.join(ROOT, "src/reduce/reduce.ts"))};
const [run, from, out, marker] = Deno.args;
let files = 0;
await reduce(run, from, out, {
  progress: async (ev) => {
    if (ev.phase === "done") files++;
    // Stall in the second file, once the first is complete.
    if (ev.phase === "dataset" && files === 1) {
      fs.writeFileSync(marker, ev.file);
      await new Promise((r) => setTimeout(r, 120000));
    }
  },
});
`,
      );
      for (const sig of ["SIGTERM", "SIGKILL"] as const) {
        const out = path.join(tmp, `out-interrupted-${sig}`);
        const marker = path.join(tmp, `marker-${sig}`);
        const child = spawn(DENO, [
          "run",
          "-A",
          "--config",
          path.join(ROOT, "deno.json"),
          entry,
          corr,
          loc,
          out,
          marker,
        ], {
          stdio: ["ignore", "ignore", "pipe"],
        });
        let stderr = "";
        child.stderr.on("data", (d) => (stderr += d));
        const exited = new Promise<{ code: number | null; signal: string | null }>((res) =>
          child.on("exit", (code, signal) => res({ code, signal }))
        );
        const t0 = Date.now();
        while (!fs.existsSync(marker) && Date.now() - t0 < 60_000 && child.exitCode === null) {
          await new Promise((r) => setTimeout(r, 50));
        }
        expect(fs.existsSync(marker), stderr).toBe(true);
        child.kill(sig);
        const { signal } = await exited;
        expect(signal).toBe(sig);
        expect(fs.existsSync(out)).toBe(false);
        const temps = fs.readdirSync(tmp).filter((n) => n.startsWith(`.${path.basename(out)}.tmp-`));
        if (sig === "SIGTERM") expect(temps).toEqual([]);
        else {
          // What is left is a hidden temporary directory, never DIR.
          expect(temps.length).toBe(1);
          fs.rmSync(path.join(tmp, temps[0]), { recursive: true, force: true });
        }
      }
    },
    120_000,
  );

  test("reduceCommand prints the reduction (text and --json)", async () => {
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    try {
      const out = path.join(tmp, "out-cmd");
      expect(await reduceCommand.run([corr], { from: loc, out, modules: "all", keepDark: 0 })).toBe(0);
      const text = String(log.mock.calls[0][0]);
      expect(text).toMatch(/ratio \d+\.\dx; frames kept \d+ of \d+/);
      expect(text).toMatch(/module {2}frames {2}kept/);
      expect(await reduceCommand.run([corr], { from: loc, out, force: true, json: true, modules: "all" }))
        .toBe(0);
      expect(JSON.parse(String(log.mock.calls[1][0])).out).toBe(out);
      await expect(reduceCommand.run([corr], { out })).rejects.toThrow(/--from/);
    } finally {
      log.mockRestore();
    }
  });
});

describe("Selection (the frame decisions reduce, cxi and average look up)", () => {
  test("agrees with a plain map in any order of adding, duplicates and large pulse IDs included", () => {
    let seed = 11;
    const rand = (k: number) => (seed = (seed * 1103515245 + 12345) % 2147483648) % k;
    const sel = new Selection();
    const ref = new Map<string, number>();
    const key = (t: number, p: number) => `${t}:${p}`;
    const add = (t: number, p: number, lit: number) => {
      sel.add(t, p, lit);
      ref.set(key(t, p), lit ? 1 : 0);
    };
    // Sorted trains of 352 pulses, as a REDU file lists them; then a train revisited, out-of-order pulses,
    // repeated frames with a new decision, and a pulse ID beyond 32 bits.
    for (let t = 0; t < 40; t++) for (let p = 0; p < 352; p++) add(1e9 + t, p, rand(10) === 0 ? 1 : 0);
    for (let i = 0; i < 500; i++) add(1e9 + rand(45), rand(400), rand(2));
    add(1e9 + 3, 2 ** 40 + 7, 1);
    add(1e9 + 3, 5, 1);
    expect(sel.frames).toBe(ref.size);
    expect(sel.lit).toBe([...ref.values()].filter((v) => v === 1).length);
    for (let t = -1; t < 46; t++) {
      for (const p of [0, 1, 5, 200, 351, 352, 399, 2 ** 40 + 7, 2 ** 40]) {
        expect(sel.lookup(1e9 + t, p), key(t, p)).toBe(ref.get(key(1e9 + t, p)) ?? -1);
      }
    }
    // match: the same answers, each frame matched once however often it is asked for.
    expect(sel.match(1e9 + 3, 2 ** 40 + 7)).toBe(1);
    expect(sel.match(1e9 + 3, 2 ** 40 + 7)).toBe(1);
    expect(sel.match(1e9 + 3, 5)).toBe(1);
    expect(sel.match(1e9 + 99, 5)).toBe(-1);
    expect(sel.matched).toBe(2);
    expect(sel.lookup(1e9 + 3, 5)).toBe(1);
  });

  test("trains whose pulse IDs are a progression hold a flag byte a frame, and only those are found", () => {
    const sel = new Selection();
    // Stride 4 from 8 (64 frames), a one-frame train, stride 1 from a pulse ID beyond 32 bits, and a train
    // whose progression breaks (then its pulse IDs are kept per frame).
    for (let k = 0; k < 64; k++) sel.add(7, 8 + 4 * k, k % 3 === 0 ? 1 : 0);
    sel.add(8, 99, 1);
    for (let k = 0; k < 10; k++) sel.add(9, 2 ** 40 + k, 1);
    // A train's arrays are trimmed to its frames when the next train comes (here train 11, 4 bytes to start).
    sel.add(11, 0, 0);
    expect(sel.arrayBytes()).toBe(64 + 1 + 10 + 4);
    for (const p of [8, 12, 260]) expect(sel.lookup(7, p)).toBe(((p - 8) / 4) % 3 === 0 ? 1 : 0);
    for (const p of [0, 4, 9, 10, 264, 268, 8.5, -4]) expect(sel.lookup(7, p)).toBe(-1);
    expect([sel.lookup(8, 99), sel.lookup(8, 98), sel.lookup(8, 100)]).toEqual([1, -1, -1]);
    expect([sel.lookup(9, 2 ** 40), sel.lookup(9, 2 ** 40 + 9), sel.lookup(9, 2 ** 40 + 10)]).toEqual([
      1,
      1,
      -1,
    ]);
    for (const p of [0, 1, 2, 10, 5]) sel.add(10, p, p === 10 ? 1 : 0);
    expect([0, 1, 2, 3, 5, 9, 10, 11].map((p) => sel.lookup(10, p))).toEqual([0, 0, 0, -1, 0, -1, 1, -1]);
    // A frame of a progression added again keeps one entry, with the new decision.
    sel.add(7, 12, 1);
    expect(sel.lookup(7, 12)).toBe(1);
    expect(sel.frames).toBe(64 + 1 + 10 + 1 + 5);
  });
});
