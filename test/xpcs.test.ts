/**
 * `xpcs` on generated speckle (per pixel an AR(1) complex field within each train, Poisson counts,
 * rho = exp(-gamma q^2), masked and NaN pixels): g2 against the generated truth 1 + rho^(2 tau), against
 * numpy over h5py on the input files (the estimator computed independently), any worker count; CLI under
 * Node and Deno; output valid in extra-data-validate and readable by extra_data.RunDirectory.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeSpeckleRun, pixelQ, type SpeckleTruth } from "../fixtures/experiments.ts";
import { writeXpcsDir, xpcs } from "../src/reductions/xpcs.ts";
import { binOf } from "../src/reductions/azint.ts";
import { NO_BIN } from "../src/reductions/azint-spec.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { runDenoTask, runNode } from "./helpers/cli.ts";
import { extraDataValidate, openWithExtraData, pythonHas, runPython } from "./helpers/python-refs.ts";
import { validateExdf } from "./helpers/exdf-validate.ts";

let tmp: string;
let run: string;
let truth: SpeckleTruth;
const DET = "SPB_DET_AGIPD1M-1";
const MODULES = [0, 1, 2, 3];
const BINS = 8;
const D = 6;
const RANGE: [number, number] = [0.1, 1.9];
const OPTS = { qBins: BINS, maxDelay: D, range: RANGE, energy: 9300, distance: 4 };

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xpcs-"));
  run = path.join(tmp, "run");
  ({ truth } = await makeSpeckleRun(run, {
    seed: 9,
    modules: MODULES,
    trains: 3,
    framesPerTrain: 20,
    nanPixels: 100,
  }));
}, 180_000);

afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** The bin of every pixel of the modules (ours), for the truth and the numpy reference. */
function bins(): Uint32Array[] {
  return MODULES.map((m) => {
    const { q } = pixelQ("AGIPD", m, truth.clen, truth.photonEnergy);
    return Uint32Array.from(q, (v) => binOf(v, RANGE[0], RANGE[1], BINS));
  });
}

const NUMPY_G2 = `
import sys, json, glob, h5py, numpy as np
a = json.loads(sys.argv[1])
D, B = a["delays"], a["bins"]
acc = {}
for k, m in enumerate(a["modules"]):
    b = np.fromfile(a["binfile"], dtype="<u4").reshape(len(a["modules"]), -1)[k]
    for f in sorted(glob.glob(a["dir"] + "/*-AGIPD%02d-S*.h5" % m)):
        with h5py.File(f, "r") as h:
            g = h["INSTRUMENT/%s/DET/%dCH0:xtdf/image" % (a["det"], m)]
            tid = g["trainId"][()]; d = g["data"][()].astype(np.float64); mk = g["mask"][()]
            d = d.reshape(len(tid), -1); mk = mk.reshape(len(tid), -1)
            d[(mk != 0) | ~np.isfinite(d)] = np.nan
            for t in np.unique(tid[tid != 0]):
                x = d[tid == t]
                s = acc.setdefault(int(t), np.zeros((4, B, D)))
                for tau in range(1, D + 1):
                    u, v = x[:-tau], x[tau:]
                    ok = np.isfinite(u) & np.isfinite(v) & (b[None, :] < B)
                    bb = np.broadcast_to(b[None, :], u.shape)[ok]
                    s[0, :, tau - 1] += np.bincount(bb, (u * v)[ok], B)
                    s[1, :, tau - 1] += np.bincount(bb, u[ok], B)
                    s[2, :, tau - 1] += np.bincount(bb, v[ok], B)
                    s[3, :, tau - 1] += np.bincount(bb, None, B)
out = {str(t): (s[0] * s[3] / (s[1] * s[2])).tolist() for t, s in acc.items()}
print(json.dumps(out))
`;

const NUMPY_TWO_TIME = `
import sys, json, glob, h5py, numpy as np
a = json.loads(sys.argv[1])
B = a["bins"]
rows = {}
for k, m in enumerate(a["modules"]):
    b = np.fromfile(a["binfile"], dtype="<u4").reshape(len(a["modules"]), -1)[k]
    for f in sorted(glob.glob(a["dir"] + "/*-AGIPD%02d-S*.h5" % m)):
        with h5py.File(f, "r") as h:
            g = h["INSTRUMENT/%s/DET/%dCH0:xtdf/image" % (a["det"], m)]
            tid = g["trainId"][()]; pid = g["pulseId"][()]
            sel = tid == a["train"]
            if not sel.any(): continue
            d = g["data"][()][sel].astype(np.float64).reshape(sel.sum(), -1); mk = g["mask"][()][sel].reshape(sel.sum(), -1)
            d[(mk != 0) | ~np.isfinite(d)] = np.nan
            rows[k] = (pid[sel], d, b)
T = len(next(iter(rows.values()))[0])
A = np.zeros((B, T, T)); L = np.zeros((B, T, T)); R = np.zeros((B, T, T)); P = np.zeros((B, T, T))
for pid, d, b in rows.values():
    for k in range(B):
        x = d[:, b == k]
        ok = np.isfinite(x).astype(np.float64); x0 = np.nan_to_num(x)
        A[k] += x0 @ x0.T; L[k] += x0 @ ok.T; R[k] += ok @ x0.T; P[k] += ok @ ok.T
print(json.dumps((A * P / (L * R)).tolist()))
`;

describe("xpcs", () => {
  test("g2 follows the generated speckle: 1 + mean over the bin's pixels of rho^(2 tau)", async () => {
    const r = await xpcs(run, { ...OPTS, workers: 2 });
    expect(r.trainIds).toHaveLength(3);
    expect(r.delays).toEqual([1, 2, 3, 4, 5, 6]);
    // Expected: pooled over pairs of valid pixels; every pixel has the same mean, so the mean of rho^(2 tau).
    const expected = new Float64Array(BINS * D), n = new Float64Array(BINS);
    bins().forEach((b, i) => {
      const { q } = pixelQ("AGIPD", MODULES[i], truth.clen, truth.photonEnergy);
      b.forEach((k, p) => {
        if (k === NO_BIN) return;
        n[k]++;
        const rho = Math.exp(-truth.gamma * q[p] * q[p]);
        for (let d = 0; d < D; d++) expected[k * D + d] += rho ** (2 * (d + 1));
      });
    });
    let worst = 0, checked = 0;
    for (let k = 0; k < BINS; k++) {
      if (n[k] < 2000) continue;
      for (let d = 0; d < D; d++) {
        const e = 1 + expected[k * D + d] / n[k];
        worst = Math.max(worst, Math.abs(r.runG2[k * D + d] - e));
        checked++;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(6 * D);
    console.info(`xpcs vs generated g2: ${checked} (q, tau) points, worst |difference| ${worst.toFixed(4)}`);
    expect(worst).toBeLessThan(0.02);
    // The decay is there: g2 at tau = 1 falls from near 2 at small q towards 1 at large q.
    expect(r.runG2[1 * D]).toBeGreaterThan(1.8);
    expect(r.runG2[7 * D + 5]).toBeLessThan(1.02);
  }, 180_000);

  test(
    "equals numpy over h5py per train (the estimator computed independently); workers agree",
    async (ctx) => {
      const one = await xpcs(run, { ...OPTS, workers: 1 });
      const two = await xpcs(run, { ...OPTS, workers: 2 });
      one.g2.forEach((g, t) => expect(Array.from(two.g2[t])).toEqual(Array.from(g)));
      if (!pythonHas("h5py", "numpy")) return ctx.skip();
      const bf = path.join(tmp, "bins.bin");
      const all = new Uint32Array(MODULES.length * 512 * 128);
      bins().forEach((b, i) => all.set(b, i * 512 * 128));
      fs.writeFileSync(bf, new Uint8Array(all.buffer));
      // D = 6 and D = 13 (delays four at a time, then one at a time), the latter also in batches of 7 frames
      // (trains split across batches: the history carried over).
      const configs = [
        { D, one },
        { D: 13, one: await xpcs(run, { ...OPTS, maxDelay: 13, workers: 1 }) },
        {
          D: 13,
          one: await xpcs(run, { ...OPTS, maxDelay: 13, workers: 1, batchBytes: 7 * 4 * 512 * 128 * 4 }),
        },
      ];
      const refs = new Map<number, Record<string, number[][]>>();
      for (const { D, one } of configs) {
        if (!refs.has(D)) {
          refs.set(
            D,
            runPython(NUMPY_G2, { dir: run, det: DET, modules: MODULES, binfile: bf, bins: BINS, delays: D }),
          );
        }
        const ref = refs.get(D)!;
        let worst = 0;
        one.trainIds.forEach((t, i) => {
          const theirs: number[][] = ref[String(t)];
          for (let k = 0; k < BINS; k++) {
            for (let d = 0; d < D; d++) {
              const ours = one.g2[i][k * D + d], th = theirs[k][d];
              if (th === null || Number.isNaN(th)) expect(ours).toBeNaN();
              else worst = Math.max(worst, Math.abs(ours - th) / th);
            }
          }
        });
        expect(worst).toBeLessThan(1e-9);
      }
    },
    180_000,
  );

  test(
    "the WebGPU kernel equals the CPU reference (pairs equal, g2 close), trains split across batches",
    async (ctx) => {
      if (!(await getGpuDevice())) {
        console.warn("xpcs GPU test SKIPPED: no WebGPU adapter");
        return ctx.skip();
      }
      // Batches of 7 frames (4 modules x 256 KiB each): trains of 20 frames span up to 4 batches.
      const small = { ...OPTS, workers: 1, batchBytes: 7 * 4 * 512 * 128 * 4 };
      const cpu = await xpcs(run, { ...small, backend: "cpu" });
      const gpu = await xpcs(run, { ...small, backend: "webgpu" });
      expect(gpu.backend).toBe("webgpu");
      expect(gpu.trainIds).toEqual(cpu.trainIds);
      let worst = 0;
      cpu.trainIds.forEach((_, t) => {
        expect(Array.from(gpu.pairs[t])).toEqual(Array.from(cpu.pairs[t]));
        cpu.g2[t].forEach((v, j) => {
          if (Number.isNaN(v)) expect(gpu.g2[t][j]).toBeNaN();
          else worst = Math.max(worst, Math.abs(gpu.g2[t][j] - v) / v);
        });
      });
      expect(worst).toBeLessThan(1e-4);
      // And the CPU reference with small batches equals the one with one batch.
      const big = await xpcs(run, { ...OPTS, workers: 1, backend: "cpu" });
      big.g2.forEach((g, t) => expect(Array.from(cpu.g2[t])).toEqual(Array.from(g)));
    },
    300_000,
  );

  test(
    "--two-time: C(q, t1, t2) of one train equals numpy and decays like the generated speckle",
    async (ctx) => {
      const train = 1000000001;
      const r = await xpcs(run, { ...OPTS, workers: 2, twoTime: train });
      expect(r.twoTime!.trainId).toBe(train);
      const T = r.twoTime!.pulseIds.length;
      expect(T).toBe(20);
      const c = r.twoTime!.c;
      // Symmetric; C(t, t + tau) averaged over t follows 1 + rho^(2 tau) (pixel mean) within 0.03.
      const expected = new Float64Array(BINS * D), n = new Float64Array(BINS);
      bins().forEach((b, i) => {
        const { q } = pixelQ("AGIPD", MODULES[i], truth.clen, truth.photonEnergy);
        b.forEach((k, p) => {
          if (k === NO_BIN) return;
          n[k]++;
          const rho = Math.exp(-truth.gamma * q[p] * q[p]);
          for (let d = 0; d < D; d++) expected[k * D + d] += rho ** (2 * (d + 1));
        });
      });
      for (let k = 0; k < BINS; k++) {
        if (n[k] < 2000) continue;
        for (let d = 0; d < D; d++) {
          let s = 0;
          for (let t = 0; t + d + 1 < T; t++) {
            s += c[(k * T + t) * T + t + d + 1];
            expect(c[(k * T + t + d + 1) * T + t]).toBeCloseTo(c[(k * T + t) * T + t + d + 1], 12);
          }
          expect(Math.abs(s / (T - d - 1) - (1 + expected[k * D + d] / n[k]))).toBeLessThan(0.03);
        }
      }
      if (!pythonHas("h5py", "numpy")) return ctx.skip();
      const bf = path.join(tmp, "bins2.bin");
      const all = new Uint32Array(MODULES.length * 512 * 128);
      bins().forEach((b, i) => all.set(b, i * 512 * 128));
      fs.writeFileSync(bf, new Uint8Array(all.buffer));
      const ref: number[][][] = runPython(NUMPY_TWO_TIME, {
        dir: run,
        det: DET,
        modules: MODULES,
        binfile: bf,
        bins: BINS,
        train,
      });
      let worst = 0;
      for (let k = 0; k < BINS; k++) {
        for (let i = 0; i < T; i++) {
          for (let j = 0; j < T; j++) {
            const th = ref[k][i][j], ours = c[(k * T + i) * T + j];
            if (th === null) expect(ours).toBeNaN();
            else worst = Math.max(worst, Math.abs(ours - th) / th);
          }
        }
      }
      expect(worst).toBeLessThan(1e-9);
    },
    300_000,
  );

  test(
    "--two-time on WebGPU equals the CPU reference (C close, both triangles)",
    async (ctx) => {
      if (!(await getGpuDevice())) {
        console.warn("xpcs two-time GPU test SKIPPED: no WebGPU adapter");
        return ctx.skip();
      }
      const train = 1000000002;
      const cpu = await xpcs(run, { ...OPTS, workers: 1, backend: "cpu", twoTime: train });
      const gpu = await xpcs(run, { ...OPTS, workers: 1, backend: "webgpu", twoTime: train });
      expect(gpu.backend).toBe("webgpu");
      expect(gpu.twoTime!.pulseIds).toEqual(cpu.twoTime!.pulseIds);
      const c = cpu.twoTime!.c, g = gpu.twoTime!.c;
      expect(g.length).toBe(c.length);
      let worst = 0, finite = 0;
      c.forEach((v, j) => {
        if (Number.isNaN(v)) expect(g[j]).toBeNaN();
        else {
          finite++;
          worst = Math.max(worst, Math.abs(g[j] - v) / v);
        }
      });
      expect(finite).toBeGreaterThan(c.length / 2);
      console.info(
        `xpcs two-time GPU vs CPU: ${finite} values, worst relative difference ${worst.toExponential(2)}`,
      );
      expect(worst).toBeLessThan(1e-4);
    },
    300_000,
  );

  test(
    "writes a valid EuXFEL file and summary.json; CLI under Node and Deno; bad input exits 2",
    async () => {
      const r = await xpcs(run, { ...OPTS, workers: 1, twoTime: 1000000001 });
      const out = path.join(tmp, "out-api");
      const summary = await writeXpcsDir(r, out);
      const files = fs.readdirSync(out).filter((f) => f.endsWith(".h5"));
      expect(files).toEqual(["CORR-R0001-REDU05-S00000.h5"]);
      expect(await validateExdf(path.join(out, files[0]))).toEqual([]);
      const js = JSON.parse(fs.readFileSync(path.join(out, "summary.json"), "utf8"));
      expect(js.xpcs.unit).toBe("q_nm^-1");
      expect(fs.readFileSync(path.join(out, "report.html"), "utf8").match(/<polyline /g)).toHaveLength(BINS);
      expect(js.xpcs.edges).toHaveLength(BINS + 1);
      expect(js.xpcs.delays).toEqual([1, 2, 3, 4, 5, 6]);
      expect(js.xpcs.g2).toHaveLength(BINS);
      expect(js.xpcs.g2[0]).toHaveLength(D);
      expect(summary.ratio).toBeGreaterThan(100);
      if (pythonHas("extra_data")) {
        const v = extraDataValidate(out);
        expect(v.status, v.output).toBe(0);
        const src = `${DET}/REDU/XPCS:output`;
        const two = `${DET}/REDU/XPCS:twoTime`;
        const ed = openWithExtraData(out, {
          [src]: ["data.g2"],
          [`${DET}/REDU/XPCS`]: ["delays.value"],
          [two]: ["data.c"],
        });
        expect(ed.trains).toBe(3);
        expect(ed.keys[src]["data.g2"].shape).toEqual([3, BINS, D]);
        expect(ed.keys[two]["data.c"].shape).toEqual([1, BINS, 20, 20]);
        expect(js.xpcs.twoTime.c).toHaveLength(BINS);
      }
      const args = [
        run,
        "--q-bins",
        String(BINS),
        "--max-delay",
        String(D),
        "--range",
        RANGE.join(","),
        "--energy",
        "9300",
        "--distance",
        "4",
      ];
      const n = runNode(["xpcs", ...args, "--out", path.join(tmp, "out-node")]);
      expect(n.code, n.stderr).toBe(0);
      const ns = JSON.parse(fs.readFileSync(path.join(tmp, "out-node", "summary.json"), "utf8"));
      expect(ns.xpcs.g2).toEqual(js.xpcs.g2);
      const d = runDenoTask("xpcs", [...args, "--out", path.join(tmp, "out-deno")]);
      expect(d.code, d.stderr).toBe(0);
      const ds = JSON.parse(fs.readFileSync(path.join(tmp, "out-deno", "summary.json"), "utf8"));
      expect(ds.xpcs.g2).toEqual(js.xpcs.g2);
      const bad = runNode(["xpcs", run, "--q-bins", "0", "--out", path.join(tmp, "bad")]);
      expect(bad.code).toBe(2);
      expect(bad.stderr.trim().split("\n")).toEqual(["xfel-redu: --q-bins: 0? (an integer 1..10000)"]);
    },
    300_000,
  );
});
