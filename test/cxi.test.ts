/**
 * `cxi`: the hit frames of a synthetic run with known spots as a CXI file, read back with h5py and checked
 * against the run (frames bit for bit, train/pulse), the REDU table (nPeaks) and the generator's truth (every
 * listed peak, mapped through the written .geom as CrystFEL maps it, lies within 3 px of a true spot of its
 * frame). The .geom is parsed twice: by src/exdf/geometry.ts and by a small panel lookup in Python.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun, type Truth } from "../fixtures/synth.ts";
import { localise } from "../src/localise/algorithm.ts";
import { type LocaliseResult } from "../src/localise/result.ts";
import { writeLocaliseDir } from "../src/localise/output.ts";
import { type CxiRecord, writeCxi } from "../src/localise/cxi.ts";
import { readGeom } from "../src/exdf/geometry.ts";
import { InputError } from "../src/errors.ts";
import { have, PYTHON } from "./helpers/tools.ts";
import { runNode } from "./helpers/cli.ts";
import { h5, type H5Dataset } from "../src/exdf/h5.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-cxi-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const MODULES = [1, 3]; // not 0..n-1: the stack index is not the module number
let run: string;
let loc: string;
let truth: Truth;
let result: LocaliseResult;
let rec: CxiRecord;

beforeAll(async () => {
  run = path.join(tmp, "run");
  truth = await makeRun(run, {
    seed: 23,
    modules: MODULES,
    trains: 4,
    framesPerTrain: 16,
    trainsPerFile: 2,
    litFraction: 0.4,
    spotsPerFrame: [3, 6],
    spotPhotons: [200, 3000],
    spotSigma: [0.6, 1.2],
    missingTrains: [{ module: 3, trains: [2] }],
  });
  result = await localise(run, { backend: "cpu", minPeaks: 2, maxPeaks: 5 });
  loc = path.join(tmp, "loc");
  await writeLocaliseDir(result, loc);
  rec = await writeCxi(run, loc, path.join(tmp, "cxi"), { batchBytes: 3 * 2 * 512 * 128 * 4, gzip: 1 });
}, 300_000);

const needH5py = have("h5py");

// Read the CXI file, and map every listed peak through the .geom with an independent panel lookup, as
// CrystFEL's data_template_slabby_file_to_panel_coords does: (X + 0.5, Y + 0.5) inside exactly one panel's
// [min, max + 1) ranges; the panel's module (rigid_group_p<m> names it) and the module-local ss, fs.
const READ = `
import sys, json, re, h5py, numpy as np
a = json.loads(sys.argv[1])
panels = {}
groups = {}
glob = {}
for line in open(a["geom"]):
    line = line.split(";")[0].strip()
    if not line: continue
    k, v = [x.strip() for x in line.split("=", 1)]
    if k.startswith("rigid_group_p"):
        for n in v.split(","): groups[n] = int(k[len("rigid_group_p"):])
    elif "/" in k:
        p, key = k.split("/", 1)
        panels.setdefault(p, {})[key] = v
    else:
        glob[k] = v
out = {"glob": glob}
with h5py.File(a["cxi"], "r") as f:
    out["trainId"] = f["entry_1/trainId"][()].tolist()
    out["pulseId"] = f["entry_1/pulseId"][()].tolist()
    out["ident"] = [x.decode() if isinstance(x, bytes) else x for x in f["entry_1/experiment_identifier"][()]]
    d = f["entry_1/data_1/data"]
    out["shape"] = list(d.shape); out["dtype"] = d.dtype.str; out["chunks"] = list(d.chunks)
    out["compression"] = d.compression
    out["modules"] = f["entry_1/instrument_1/detector_1/module_identifier"][()].tolist()
    r = f["entry_1/result_1"]
    n = r["nPeaks"][()]
    out["nPeaks"] = n.tolist()
    out["nPeaksAll"] = r["nPeaksAll"][()].tolist()
    X, Y, I = r["peakXPosRaw"][()], r["peakYPosRaw"][()], r["peakTotalIntensity"][()]
    out["peakShape"] = list(X.shape)
    out["padding"] = float(sum(np.abs(A[i, n[i]:]).sum() for A in (X, Y, I) for i in range(len(n))))
    peaks = []
    for i in range(len(n)):
        for j in range(n[i]):
            fs_, ss_ = float(X[i, j]) + 0.5, float(Y[i, j]) + 0.5
            hit = [p for p, q in panels.items()
                   if int(q["min_fs"]) <= fs_ < int(q["max_fs"]) + 1 and int(q["min_ss"]) <= ss_ < int(q["max_ss"]) + 1]
            if len(hit) != 1:
                peaks.append({"frame": i, "panel": None}); continue
            q = panels[hit[0]]
            m = groups[hit[0]]
            k = out["modules"].index(m)
            peaks.append({"frame": i, "panel": hit[0], "module": m,
                          "ss": ss_ - 0.5 - k * a["moduleSs"], "fs": fs_ - 0.5, "intensity": float(I[i, j])})
    out["peaks"] = peaks
    # The image data as raw bytes per frame (hex of a hash would hide nothing: compare whole frames).
    np.save(a["npy"], d[()])
print(json.dumps(out))
`;

interface Read {
  glob: Record<string, string>;
  trainId: number[];
  pulseId: number[];
  ident: string[];
  shape: number[];
  dtype: string;
  chunks: number[];
  compression: string | null;
  modules: number[];
  nPeaks: number[];
  nPeaksAll: number[];
  peakShape: number[];
  padding: number;
  peaks: { frame: number; panel: string | null; module: number; ss: number; fs: number; intensity: number }[];
}

function readCxi(): Read {
  const r = spawnSync(
    PYTHON,
    ["-c", READ, JSON.stringify({ cxi: rec.files.cxi, geom: rec.files.geom, moduleSs: 512, npy: npyPath() })],
    { encoding: "utf8", maxBuffer: 1 << 28 },
  );
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout);
}
const npyPath = () => path.join(tmp, "data.npy");

/** The hits according to localise (its frame table), in (trainId, pulseId) order. */
function hitFrames(): number[] {
  const out: number[] = [];
  for (let f = 0; f < result.frames; f++) if (result.perFrame.frameLit[f]) out.push(f);
  return out;
}

describe("cxi: the hit frames and peak lists for CrystFEL", () => {
  test("files and record", () => {
    expect(rec.hits).toBe(hitFrames().length);
    expect(rec.hits).toBeGreaterThan(10);
    console.info(`cxi: ${rec.hits} hits, ${rec.peaksListed} peaks listed of ${rec.peaksFound} found`);
    for (const f of ["hits.cxi", "det.geom", "hits.lst", "cxi.json"]) {
      expect(fs.existsSync(path.join(tmp, "cxi", f))).toBe(true);
    }
    const lines = fs.readFileSync(rec.files.list, "utf8").trimEnd().split("\n");
    expect(lines).toEqual(hitFrames().map((_, i) => `${path.join(tmp, "cxi", "hits.cxi")} //${i}`));
  });

  test.runIf(needH5py)(
    "every hit with its train and pulse; images equal the run's frames bit for bit",
    () => {
      const r = readCxi();
      const hits = hitFrames();
      expect(r.trainId).toEqual(hits.map((f) => result.perFrame.trainId[f]));
      expect(r.pulseId).toEqual(hits.map((f) => result.perFrame.pulseId[f]));
      expect(r.ident).toEqual(hits.map((f) => `${result.perFrame.trainId[f]}:${result.perFrame.pulseId[f]}`));
      // And against the generator: these are frames it lit.
      const lit = new Set(truth.frames.filter((f) => f.lit).map((f) => `${f.trainId}:${f.pulseId}`));
      for (const id of r.ident) expect(lit.has(id)).toBe(true);
      expect(r.modules).toEqual(MODULES);
      expect(r.shape).toEqual([hits.length, MODULES.length * 512, 128]);
      expect(r.dtype).toBe("<f4");
      expect(r.chunks).toEqual([1, MODULES.length * 512, 128]);
      expect(r.compression).toBe("gzip");
      // The images: h5py's array against the run read independently by h5py (module files, by train/pulse).
      const cmp = spawnSync(PYTHON, [
        "-c",
        `
import sys, json, glob, h5py, numpy as np
a = json.loads(sys.argv[1])
d = np.load(a["npy"])
with h5py.File(a["cxi"], "r") as f:
    mk = f["entry_1/data_1/mask"][()]
bad = 0
masked = 0
absent = 0
for i, (t, p) in enumerate(zip(a["trainId"], a["pulseId"])):
    for k, src in enumerate(a["sources"]):
        img = None
        for fn in a["files"]:
            with h5py.File(fn, "r") as f:
                if ("INSTRUMENT/" + src + "/image") not in f: continue
                g = f["INSTRUMENT/" + src + "/image"]
                sel = np.nonzero((g["trainId"][()].ravel() == t) & (g["pulseId"][()].ravel() == p))[0]
                if len(sel):
                    img = g["data"][sel[0]].astype(np.float32)
                    msk = g["mask"][sel[0]].astype(np.uint32) if "mask" in g else np.zeros(img.shape, np.uint32)
        got = d[i, k * 512:(k + 1) * 512]
        if img is None:
            bad += int(not np.isnan(got).all()) + int(mk[i, k * 512:(k + 1) * 512].any())
            absent += 1
        else:
            bad += int(got.tobytes() != img.tobytes())
            bad += int(mk[i, k * 512:(k + 1) * 512].tobytes() != msk.tobytes())
            masked += int((msk != 0).sum())
print(json.dumps([bad, masked, absent]))
`,
        JSON.stringify({
          npy: npyPath(),
          cxi: rec.files.cxi,
          files: truth.files.map((f) => path.join(run, f)),
          sources: MODULES.map((m) => truth.sources.modules.find((x) => x.module === m)!.source),
          trainId: r.trainId,
          pulseId: r.pulseId,
        }),
      ], { encoding: "utf8" });
      if (cmp.status !== 0) throw new Error(cmp.stderr);
      const [bad, masked, absent] = JSON.parse(cmp.stdout);
      // Module 3 misses the third train: its hits there are NaN with mask 0.
      expect(absent).toBe(r.trainId.filter((t) => t === truth.trains[2]).length);
      expect(absent).toBeGreaterThan(0);
      expect(bad).toBe(0);
      expect(masked).toBeGreaterThan(0); // the generator's masked pixels and columns are there
    },
  );

  test.runIf(needH5py)(
    "nPeaks as the REDU table; padding zero; every peak within 3 px of a true spot",
    () => {
      const r = readCxi();
      const hits = hitFrames();
      expect(r.peakShape).toEqual([hits.length, 5]);
      // Listed: localise's nPeaks up to the table's capacity (some frames of this run hold more).
      expect(r.nPeaks).toEqual(hits.map((f) => Math.min(5, result.perFrame.nPeaks[f])));
      expect(hits.some((f) => result.perFrame.nPeaks[f] > 5)).toBe(true);
      expect(r.nPeaksAll).toEqual(hits.map((f) => result.perFrame.nPeaks[f]));
      expect(r.padding).toBe(0);
      expect(r.glob["peak_list"]).toBe("/entry_1/result_1");
      expect(r.glob["peak_list_type"]).toBe("cxi");
      expect(r.glob["dim0"]).toBe("%");
      expect(r.glob["data"]).toBe("/entry_1/data_1/data");
      expect(r.glob["mask0_data"]).toBe("/entry_1/data_1/mask");
      expect(r.peaks.length).toBe(r.nPeaks.reduce((a, b) => a + b, 0));
      expect(r.peaks.length).toBeGreaterThan(40);
      let far = 0;
      for (const p of r.peaks) {
        expect(p.panel).not.toBeNull();
        const f = hits[p.frame];
        const t = result.perFrame.trainId[f], u = result.perFrame.pulseId[f];
        const d = Math.min(
          ...truth.spots.filter((s) => s.trainId === t && s.pulseId === u && s.module === p.module)
            .map((s) => Math.hypot(s.ss - p.ss, s.fs - p.fs)),
        );
        if (!(d <= 3)) far++;
      }
      expect(far).toBe(0);
    },
  );

  test("the same peaks read with h5wasm and mapped through src/exdf/geometry.ts: within 3 px of a true spot", async () => {
    const g = readGeom(rec.files.geom);
    expect(g.type).toBe("AGIPD");
    expect(g.nModules).toBe(MODULES.length);
    expect(g.panels.length).toBe(MODULES.length * 8);
    const lib = await h5();
    const f = new lib.File(rec.files.cxi, "r");
    const get = (p: string) => Array.from((f.get(p) as H5Dataset).value as ArrayLike<number>, Number);
    const n = get("/entry_1/result_1/nPeaks");
    const X = get("/entry_1/result_1/peakXPosRaw");
    const Y = get("/entry_1/result_1/peakYPosRaw");
    const width = X.length / n.length;
    f.close();
    const hits = hitFrames();
    let count = 0, far = 0;
    n.forEach((np, i) => {
      const t = result.perFrame.trainId[hits[i]], u = result.perFrame.pulseId[hits[i]];
      for (let j = 0; j < np; j++) {
        // CrystFEL: +0.5 (half-pixel shift), then the one panel whose [min, max + 1) ranges hold it.
        const fs = X[i * width + j] + 0.5, ss = Y[i * width + j] + 0.5;
        const inside = g.panels.filter((q) =>
          q.minFs <= fs && fs < q.maxFs + 1 && q.module * 512 + q.minSs <= ss &&
          ss < q.module * 512 + q.maxSs + 1
        );
        expect(inside.length).toBe(1);
        const module = MODULES[inside[0].module];
        expect(inside[0].name.startsWith(`p${module}a`)).toBe(true);
        const lss = ss - 0.5 - inside[0].module * 512, lfs = fs - 0.5;
        const d = Math.min(
          ...truth.spots.filter((s) => s.trainId === t && s.pulseId === u && s.module === module)
            .map((s) => Math.hypot(s.ss - lss, s.fs - lfs)),
        );
        if (!(d <= 3)) far++;
        count++;
      }
    });
    expect(count).toBeGreaterThan(40);
    expect(far).toBe(0);
  });

  test("CLI (Node): writes the directory; a missing --from is one line, exit 2", () => {
    const out = path.join(tmp, "cxi-node");
    const r = runNode([
      "cxi",
      run,
      "--from",
      loc,
      "--out",
      out,
      "--json",
      "--clen",
      "0.125",
      "--photon-energy",
      "9300",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.hits).toBe(rec.hits);
    expect(j.peaksListed).toBe(rec.peaksListed);
    const g = readGeom(path.join(out, "det.geom"));
    expect(g.clen).toBe(0.125);
    expect(g.photonEnergy).toBe(9300);
    expect(g.panels).toEqual(readGeom(rec.files.geom).panels);
    const bad = runNode(["cxi", run, "--out", path.join(tmp, "bad")]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim()).toBe("xfel-redu: missing option --from LOCALISE_OUT");
  }, 120_000);

  test("a localise output of another run is refused with one line", async () => {
    const other = path.join(tmp, "other");
    await makeRun(other, { seed: 24, modules: MODULES, trains: 2, framesPerTrain: 4, firstTrainId: 5_000 });
    await expect(writeCxi(other, loc, path.join(tmp, "cxi2"))).rejects.toThrow(InputError);
    expect(fs.existsSync(path.join(tmp, "cxi2"))).toBe(false);
  });
});
