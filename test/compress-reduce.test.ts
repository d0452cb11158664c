/**
 * `reduce --compress` and `decompress` on a synthetic CORR run (src/compress/compressor.ts, layout.ts,
 * decompress.ts): lossless filters keep every value (read back with h5py and Debian's HDF5 filter plugins,
 * independent of h5wasm; zstd, which Debian's plugins lack, through h5wasm), rounding gives exactly the
 * rounded values, the SZ layout passes the EuXFEL validity rules and `decompress` restores plain files
 * within the bound; the GPU backend writes the same streams; the records add up; refusals.
 */
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun, type SynthOptions } from "../fixtures/synth.ts";
import { decompress } from "../src/compress/decompress.ts";
import { decompressCommand } from "../src/cli/decompress.ts";
import { SzDatasetReader } from "../src/compress/layout.ts";
import { roundFloats } from "../src/compress/round.ts";
import { InputError } from "../src/errors.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { h5, type H5Dataset, readAll } from "../src/exdf/h5.ts";
import { localise } from "../src/localise/algorithm.ts";
import { summaryJson } from "../src/localise/output.ts";
import { writeRedu } from "../src/localise/redu.ts";
import { reduce, type ReductionRecord } from "../src/reduce/reduce.ts";
import { reduceCommand } from "../src/cli/reduce.ts";
import { validateExdf } from "./helpers/exdf-validate.ts";
import { independentAvailable, SYSTEM_PYTHON } from "./helpers/independent-h5.ts";
import { have } from "./helpers/tools.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-compress-"));

/**
 * Debian's HDF5 filter plugins (packages hdf5-filter-plugin, bitshuffle, hdf5-filter-plugin-blosc-serial),
 * which HDF5 finds in its default plugin directory: h5py reads lz4, bitshuffle and blosc files through them.
 * Missing: the independent check of those files falls back to h5wasm (on CI that is an error).
 */
function pluginAvailable(id: number): boolean {
  // Debian's plugins: lz4, bitshuffle, blosc (no zstd).
  return id === 1 || ([32004, 32008, 32001].includes(id) && have("hdf5-plugins"));
}
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const DET = "SPB_DET_AGIPD1M-1";
const BASE: Partial<SynthOptions> = {
  seed: 202,
  modules: [0, 1],
  trains: 4,
  trainsPerFile: 2,
  framesPerTrain: 16,
  litFraction: 0.5,
  compression: 1,
  naming: "output",
  nanPixels: 6,
};

let corr: string, loc: string, plain: string;

beforeAll(async () => {
  corr = path.join(tmp, "corr");
  loc = path.join(tmp, "loc");
  plain = path.join(tmp, "plain");
  await makeRun(corr, BASE);
  // ROIs as the union of the peak boxes (roiFraction 0): the run's spots are scattered, which makes no
  // persistence ROI, and the --roi tests need boxes to crop.
  const r = await localise(corr, { backend: "cpu", roiFraction: 0 });
  fs.mkdirSync(loc);
  await writeRedu(r, loc, r.runFiles);
  fs.writeFileSync(path.join(loc, "summary.json"), JSON.stringify(summaryJson(r), null, 2));
  await reduce(corr, loc, plain);
}, 300_000);

function h5names(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.endsWith(".h5")).sort();
}

function moduleNames(dir: string): string[] {
  return h5names(dir).filter((n) => n.includes("AGIPD"));
}

const group = (m: number) => `INSTRUMENT/${DET}/CORR/${m}CH0:output/image`;
const moduleOf = (name: string) => Number(/AGIPD(\d+)/.exec(name)![1]);

/**
 * h5py: compare the image datasets of a module file of `b` with those of `a` ("exact": bytes equal;
 * "bound": |x - y| <= eb on finite x, bits equal otherwise), and list each dataset's filter ids.
 */
const PY_COMPARE = String.raw`
import sys, json, h5py, numpy as np
a = json.loads(sys.argv[1])
A = h5py.File(a["a"], "r"); B = h5py.File(a["b"], "r")
g = a["group"]; out = {"keys": sorted(B[g].keys()), "filters": {}, "bad": []}
for k in a["keys"]:
    x = A[g + "/" + k][()]; ds = B[g + "/" + k]; y = ds[()]
    plist = ds.id.get_create_plist()
    out["filters"][k] = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if x.shape != y.shape or x.dtype != y.dtype:
        out["bad"].append([k, "shape/dtype", list(y.shape), str(y.dtype)]); continue
    if a["mode"] == "exact" or k != "data":
        if x.tobytes() != y.tobytes(): out["bad"].append([k, "values differ"])
    else:
        fin = np.isfinite(x)
        err = float(np.max(np.abs(x[fin].astype(np.float64) - y[fin].astype(np.float64)))) if fin.any() else 0.0
        if not err <= a["eb"]: out["bad"].append([k, "error", err])
        if x[~fin].view(np.uint32).tobytes() != y[~fin].view(np.uint32).tobytes(): out["bad"].append([k, "non-finite"])
print(json.dumps(out))
`;

function pyCompare(
  a: string,
  b: string,
  m: number,
  keys: string[],
  mode: "exact" | "bound",
  eb = 0,
): { keys: string[]; filters: Record<string, number[]>; bad: unknown[] } {
  const r = spawnSync(
    SYSTEM_PYTHON,
    ["-c", PY_COMPARE, JSON.stringify({ a, b, group: group(m), keys, mode, eb })],
    { encoding: "utf8", maxBuffer: 1 << 28 },
  );
  if (r.status !== 0) throw new Error(`h5py compare failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Read a dataset of a file through h5wasm (after the plugins are registered). */
async function readH5(file: string, p: string): Promise<ArrayLike<number | bigint>> {
  const lib = await h5();
  const f = new lib.File(file, "r");
  try {
    return readAll(f, p) as ArrayLike<number | bigint>;
  } finally {
    f.close();
  }
}

async function expectValid(dir: string): Promise<void> {
  for (const n of h5names(dir)) expect(await validateExdf(path.join(dir, n)), n).toEqual([]);
}

function checkRecord(rec: ReductionRecord, exact: boolean): void {
  const c = rec.compression!;
  expect(c).toBeDefined();
  expect(c.exact).toBe(exact);
  expect(c.bytesIn).toBeGreaterThan(0);
  expect(c.ratio).toBeCloseTo(c.bytesIn / c.bytesOut, 10);
  expect(c.compressMBps).toBeGreaterThan(0);
  expect(c.decompressMBps).toBeGreaterThan(0);
  const keys = c.modules.map((m) => `${m.module}:${m.dataset}`).sort();
  expect(keys).toEqual([
    "0:image.data",
    "0:image.gain",
    "0:image.mask",
    "1:image.data",
    "1:image.gain",
    "1:image.mask",
  ]);
  for (const m of c.modules) {
    expect(m.frames).toBe(rec.modules.find((x) => x.module === m.module)!.framesKept);
    expect(m.sampledFrames).toBeGreaterThan(0);
    expect(m.sampledFrames).toBeLessThanOrEqual(8 * 2);
    expect(m.nonFiniteChanged).toBe(0);
    if (m.dataset !== "image.data") expect(m.exact).toBe(true);
  }
  // The JSON record: Infinity (exact PSNR) is written as null.
  const json = JSON.parse(fs.readFileSync(path.join(rec.out, "reduction.json"), "utf8"));
  expect(json.compression.spec).toBe(c.spec);
  if (exact) expect(json.compression.psnr).toBeNull();
}

describe("lossless filters", () => {
  const filters: [string, number][] = [
    ["gzip", 1],
    ["bitshuffle+lz4", 32008],
    ["blosc", 32001],
    ["blosc:lz4", 32001],
    ["zstd", 32015],
    ["lz4", 32004],
  ];
  test.each(filters)("lossless:%s keeps every value bit for bit", async (filter, id) => {
    const out = path.join(tmp, `lossless-${filter.replace(/[:+]/g, "_")}`);
    const rec = await reduce(corr, loc, out, { compress: `lossless:${filter}` });
    checkRecord(rec, true);
    expect(rec.compression!.psnr).toBe(Infinity);
    expect(h5names(out)).toEqual(h5names(corr));
    await expectValid(out);
    for (const name of moduleNames(out)) {
      const m = moduleOf(name);
      if (independentAvailable() && pluginAvailable(id)) {
        const c = pyCompare(
          path.join(plain, name),
          path.join(out, name),
          m,
          ["data", "mask", "gain"],
          "exact",
        );
        expect(c.bad, name).toEqual([]);
        for (const k of ["data", "mask", "gain"]) expect(c.filters[k], `${name} ${k}`).toEqual([id]);
        expect(c.filters.trainId ?? []).toEqual([]);
      } else {
        // Debian's HDF5 plugins have no zstd (nor the others, when not installed): read back through h5wasm.
        for (const k of ["data", "mask", "gain"]) {
          const a = await readH5(path.join(plain, name), `${group(m)}/${k}`);
          const b = await readH5(path.join(out, name), `${group(m)}/${k}`);
          expect(Buffer.from((b as Uint8Array).buffer).equals(Buffer.from((a as Uint8Array).buffer)), k).toBe(
            true,
          );
        }
      }
    }
  });
});

describe("round", () => {
  test("round:10,-3 with bitshuffle+lz4: data are exactly the rounded values; mask and gain unchanged", async () => {
    const out = path.join(tmp, "round");
    const rec = await reduce(corr, loc, out, { compress: "round:10,-3", compressFilter: "bitshuffle+lz4" });
    checkRecord(rec, false);
    const c = rec.compression!;
    expect([c.filter, c.params]).toEqual(["bitshuffle+lz4", { mantissaBits: 10, absPower: -3 }]);
    expect(c.maxAbsError).toBeGreaterThan(0);
    expect(c.maxAbsError).toBeLessThan(1); // half a quantum: 2^-4 or 2^(e-11) for values in [2^e, 2^(e+1))
    expect(c.ssim!).toBeGreaterThan(0.99);
    await expectValid(out);
    for (const name of moduleNames(out)) {
      const m = moduleOf(name);
      const a = (await readH5(path.join(plain, name), `${group(m)}/data`)) as Float32Array;
      const b = (await readH5(path.join(out, name), `${group(m)}/data`)) as Float32Array;
      const want = roundFloats(a, { mantissaBits: 10, absPower: -3 });
      expect(Buffer.from(b.buffer).equals(Buffer.from(want.buffer)), name).toBe(true);
      if (independentAvailable() && pluginAvailable(32008)) {
        const py = pyCompare(path.join(plain, name), path.join(out, name), m, ["mask", "gain"], "exact");
        expect(py.bad).toEqual([]);
        expect(py.filters.mask).toEqual([32008]);
      }
    }
  });

  test("--roi with round:8: the ROI crops are rounded, measured, filtered with zstd", async () => {
    const out = path.join(tmp, "round-roi");
    const rec = await reduce(corr, loc, out, { compress: "round:8", roi: true });
    const c = rec.compression!;
    expect(c.filter).toBe("zstd:3");
    const withRois = rec.modules.filter((m) => m.rois.length);
    expect(withRois.length).toBeGreaterThan(0);
    for (const mr of withRois) {
      const name = moduleNames(out).find((n) => moduleOf(n) === mr.module)!;
      const box = mr.rois[0];
      const roi = (await readH5(path.join(out, name), `${group(mr.module)}/roi0/data`)) as Float32Array;
      const full = (await readH5(path.join(plain, name), `${group(mr.module)}/data`)) as Float32Array;
      const h = box[2] - box[0], w = box[3] - box[1];
      const frames = roi.length / (h * w);
      const want = new Float32Array(roi.length);
      for (let f = 0; f < frames; f++) {
        for (let y = 0; y < h; y++) {
          for (let x = 0; x < w; x++) {
            want[(f * h + y) * w + x] = full[(f * 512 + box[0] + y) * 128 + box[1] + x];
          }
        }
      }
      const r = roundFloats(want, { mantissaBits: 8, absPower: null });
      expect(Buffer.from(roi.buffer).equals(Buffer.from(r.buffer))).toBe(true);
    }
    expect(c.modules.find((m) => m.dataset === "image.data")!.sampledFrames).toBeGreaterThan(0);
  });
});

describe("sz", () => {
  const EB = 0.05;
  let out: string, rec: ReductionRecord, dec: string;
  beforeAll(async () => {
    out = path.join(tmp, "sz");
    dec = path.join(tmp, "sz-dec");
    rec = await reduce(corr, loc, out, { compress: `sz:${EB}`, compressBackend: "cpu" });
    await decompress(out, dec);
  }, 120_000);

  test("layout: dataSz + dataSzBytes replace data, attributes, valid EuXFEL files that h5py opens", async () => {
    checkRecord(rec, false);
    const c = rec.compression!;
    expect(c.backend).toBe("cpu");
    expect(c.maxAbsErrorAll).toBeLessThanOrEqual(EB);
    expect(c.psnr!).toBeGreaterThan(40);
    expect(c.ratio).toBeGreaterThan(3);
    await expectValid(out);
    const lib = await h5();
    for (const name of moduleNames(out)) {
      const m = moduleOf(name);
      const f = new lib.File(path.join(out, name), "r");
      try {
        const g = f.get(group(m)) as unknown as { keys(): string[] };
        expect(g.keys()).toContain("dataSz");
        expect(g.keys()).toContain("dataSzBytes");
        expect(g.keys()).not.toContain("data");
        const r = new SzDatasetReader(f, `${group(m)}/dataSz`);
        expect(r.meta).toMatchObject({
          codec: "xfel-redu-sz",
          version: 1,
          errorBound: EB,
          shape: [512, 128],
          dtype: "float32",
          name: "data",
          chunks: [1, 512, 128],
          filter: { id: 1, opts: [1] },
        });
        expect((f.get(`${group(m)}/dataSz`) as H5Dataset).filters.map((x) => x.id)).toEqual([32015]);
        expect(r.meta.frames).toBe((f.get(`${group(m)}/trainId`) as H5Dataset).shape![0]);
      } finally {
        f.close();
      }
    }
    if (!independentAvailable()) return;
    // h5py (EXtra-data's reader) opens the files and reads the index and the per-frame keys (those without
    // zstd, which Debian's plugins lack).
    const py = spawnSync(SYSTEM_PYTHON, [
      "-c",
      `import h5py, sys
for p in sys.argv[1:]:
    f = h5py.File(p, "r")
    def v(name, obj):
        if not isinstance(obj, h5py.Dataset): return
        pl = obj.id.get_create_plist()
        if 32015 not in [pl.get_filter(i)[0] for i in range(pl.get_nfilters())]: obj[()]
    f.visititems(v)
print("ok")`,
      ...moduleNames(out).map((n) => path.join(out, n)),
    ], { encoding: "utf8" });
    expect(py.stderr).toBe("");
    expect(py.stdout.trim()).toBe("ok");
  });

  test("decompress: plain files (no plugin filters), data within the bound, NaN kept; h5py reads them", async () => {
    expect(h5names(dec)).toEqual(h5names(out));
    await expectValid(dec);
    const drec = JSON.parse(fs.readFileSync(path.join(dec, "decompression.json"), "utf8"));
    expect(drec.frames).toBe(rec.framesKept);
    if (!independentAvailable()) return;
    for (const name of moduleNames(dec)) {
      const m = moduleOf(name);
      const c = pyCompare(
        path.join(plain, name),
        path.join(dec, name),
        m,
        ["data", "mask", "gain"],
        "bound",
        EB,
      );
      expect(c.bad, name).toEqual([]);
      expect(c.filters).toEqual({ data: [1], mask: [1], gain: [1] });
      expect(c.keys).not.toContain("dataSz");
      expect(c.keys).not.toContain("dataSzBytes");
    }
    // The DA file is copied byte for byte.
    const da = h5names(dec).find((n) => n.includes("DA01"))!;
    expect(fs.readFileSync(path.join(dec, da)).equals(fs.readFileSync(path.join(out, da)))).toBe(true);
  });

  test("the WebGPU backend writes the same streams", async () => {
    const gpu = await getGpuDevice();
    if (!gpu) return;
    const out2 = path.join(tmp, "sz-gpu");
    const rec2 = await reduce(corr, loc, out2, { compress: `sz:${EB}`, compressBackend: "webgpu" });
    expect(rec2.compression!.backend).toBe("webgpu");
    for (const name of moduleNames(out)) {
      const m = moduleOf(name);
      for (const k of ["dataSz", "dataSzBytes"]) {
        const a = await readH5(path.join(out, name), `${group(m)}/${k}`);
        const b = await readH5(path.join(out2, name), `${group(m)}/${k}`);
        expect(Buffer.from((b as Uint8Array).buffer).equals(Buffer.from((a as Uint8Array).buffer)), k).toBe(
          true,
        );
      }
    }
  });

  test("decompress of a lossless run rewrites plugin filters with deflate", async () => {
    const src = path.join(tmp, "lossless-zstd");
    if (!fs.existsSync(src)) await reduce(corr, loc, src, { compress: "lossless:zstd" });
    const d = path.join(tmp, "lossless-zstd-dec");
    const r = await decompress(src, d);
    expect(r.files.filter((f) => f.action === "rewritten").length).toBe(moduleNames(src).length);
    expect(r.frames).toBe(0);
    if (!independentAvailable()) return;
    for (const name of moduleNames(d)) {
      const c = pyCompare(path.join(plain, name), path.join(d, name), moduleOf(name), [
        "data",
        "mask",
        "gain",
      ], "exact");
      expect(c.bad).toEqual([]);
      expect(c.filters).toEqual({ data: [1], mask: [1], gain: [1] });
    }
  });
});

describe("commands and refusals", () => {
  test("reduce --compress prints the compression; decompress prints its files; --json", async () => {
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    try {
      const out = path.join(tmp, "cmd");
      expect(
        await reduceCommand.run([corr], { from: loc, out, modules: "all", keepDark: 0, compress: "sz:0.5" }),
      )
        .toBe(0);
      const text = String(log.mock.calls[0][0]);
      expect(text).toMatch(
        /compression sz:0\.5 \(filter zstd:3, (cpu|webgpu)\): .* ratio [\d.]+x, PSNR [\d.]+ dB/,
      );
      expect(text).toMatch(/^ +0 {2}image\.data +[\d.]+ +[\d.]+ +[\d.]+/m);
      const d = path.join(tmp, "cmd-dec");
      expect(await decompressCommand.run([out], { out: d })).toBe(0);
      expect(String(log.mock.calls[1][0])).toMatch(/decoded, 1 SZ datasets/);
      expect(await decompressCommand.run([out], { out: d, force: true, json: true })).toBe(0);
      expect(JSON.parse(String(log.mock.calls[2][0])).out).toBe(d);
      await expect(decompressCommand.run([out], {})).rejects.toThrow(/--out/);
      await expect(decompressCommand.run([], { out: d })).rejects.toThrow(/RUN/);
    } finally {
      log.mockRestore();
    }
  });

  test("bad --compress values, sz with --roi, a filter without a method: InputErrors; nothing written", async () => {
    const out = path.join(tmp, "refused");
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ compress: "lossless" }, /name a filter/],
      [{ compress: "lossless:brotli" }, /unknown filter/],
      [{ compress: "lossless:gzip:12" }, /level/],
      [{ compress: "round:24" }, /mantissa bits/],
      [{ compress: "round:10,200" }, /abs power/],
      [{ compress: "round:x" }, /round:<mantissa bits>/],
      [{ compress: "sz:0" }, /positive/],
      [{ compress: "sz:1e-40" }, /error bound/],
      [{ compress: "zfp:3" }, /method must be/],
      [{ compress: "sz:0.1", roi: true }, /--roi/],
      [{ compressFilter: "zstd" }, /--compress-filter needs/],
      [{ compress: "lossless:zstd", compressFilter: "lz4" }, /--compress-filter is for/],
      [{ compress: "sz:0.1", compressBackend: "cuda" }, /--compress-backend/],
    ];
    for (const [opts, re] of bad) {
      const p = reduce(corr, loc, out, opts);
      await expect(p, JSON.stringify(opts)).rejects.toThrow(InputError);
      await expect(reduce(corr, loc, out, opts)).rejects.toThrow(re);
    }
    expect(fs.existsSync(out)).toBe(false);
    // decompress: DIR inside RUN, an existing DIR, a missing RUN.
    await expect(decompress(plain, path.join(plain, "x"))).rejects.toThrow(/inside the input run/);
    await expect(decompress(plain, loc)).rejects.toThrow(/exists/);
    await expect(decompress(path.join(tmp, "nope"), path.join(tmp, "x"))).rejects.toThrow(InputError);
    expect(fs.readdirSync(tmp).filter((n) => n.includes(".tmp-"))).toEqual([]);
  });
});
