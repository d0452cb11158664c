/**
 * The WebGPU backend against the CPU reference: integer outputs and labels equal, floats within 1e-5
 * relative. Runs on whatever adapter getGpuDevice() finds (in CI: Mesa llvmpipe through Dawn's OpenGL
 * backend); skipped, with a message, when there is none.
 */
import { afterAll, describe, expect, it } from "vitest";
import { type DetectorType, type Geometry, geometry } from "../src/exdf/detectors.ts";
import { getGpuDevice } from "../src/gpu/device.ts";
import { accumulateLitCountsCpu, processBatchCpu } from "../src/localise/stages.ts";
import {
  type BatchResult,
  DEFAULT_PARAMS,
  type LocaliseParams,
  type ModuleBatch,
  type Peak,
} from "../src/localise/spec.ts";
import {
  createWebgpuBackend,
  framesPerBatch,
  type WebgpuBackend,
  type WebgpuOptions,
} from "../src/localise/webgpu.ts";
import { uniform } from "../fixtures/synth.ts";
import { batchOf, P, put } from "./helpers/batches.ts";

const gpu = await getGpuDevice();
if (!gpu) {
  console.warn("test/gpu.test.ts: SKIPPED: no WebGPU adapter (getGpuDevice() returned undefined)");
} else {
  console.info(`test/gpu.test.ts: adapter ${gpu.adapterName}${gpu.software ? " (software)" : ""}`);
}

const backends: WebgpuBackend[] = [];
afterAll(() => {
  for (const b of backends) b.dispose();
});

async function backend(
  t: DetectorType,
  params: Partial<LocaliseParams> = {},
  maxFrames = 4,
  options: WebgpuOptions = { debugLabels: true },
): Promise<WebgpuBackend> {
  const b = await createWebgpuBackend({ ...P, ...params }, geometry(t), maxFrames, options);
  if (!b) throw new Error("no backend although getGpuDevice() found a device");
  backends.push(b);
  return b;
}

function closeRel(a: number, b: number, what: string): void {
  const tol = 1e-5 * Math.max(Math.abs(a), Math.abs(b));
  if (!(Math.abs(a - b) <= tol)) expect.fail(`${what}: gpu ${a} vs cpu ${b}`);
}

const peakKey = (p: Peak) => p.box.join(",");

/** GPU == CPU on every output (peaks compared as sets per frame). */
function expectSame(gpuRes: BatchResult, cpuRes: BatchResult): void {
  expect(gpuRes.litPixels).toEqual(cpuRes.litPixels);
  expect(gpuRes.unmaskedPixels).toEqual(cpuRes.unmaskedPixels);
  expect(gpuRes.filteredLit).toEqual(cpuRes.filteredLit);
  expect(gpuRes.nPeaks).toEqual(cpuRes.nPeaks);
  for (let k = 0; k < cpuRes.litIntensity.length; k++) {
    closeRel(gpuRes.litIntensity[k], cpuRes.litIntensity[k], `litIntensity[${k}]`);
  }
  expect(gpuRes.peaks.length).toBe(cpuRes.peaks.length);
  for (let f = 0; f < cpuRes.peaks.length; f++) {
    const gp = [...gpuRes.peaks[f]].sort((a, b) => peakKey(a).localeCompare(peakKey(b)));
    const cp = [...cpuRes.peaks[f]].sort((a, b) => peakKey(a).localeCompare(peakKey(b)));
    expect(gp.map((p) => [p.box, p.area])).toEqual(cp.map((p) => [p.box, p.area]));
    for (let k = 0; k < cp.length; k++) {
      const w = `frame ${f} peak ${peakKey(cp[k])}`;
      closeRel(gp[k].intensity, cp[k].intensity, `${w} intensity`);
      closeRel(gp[k].ss, cp[k].ss, `${w} ss`);
      closeRel(gp[k].fs, cp[k].fs, `${w} fs`);
      closeRel(gp[k].max, cp[k].max, `${w} max`);
    }
    // And in the same order, up to near-equal intensities.
    for (let k = 1; k < gpuRes.peaks[f].length; k++) {
      expect(gpuRes.peaks[f][k].intensity).toBeLessThanOrEqual(gpuRes.peaks[f][k - 1].intensity * (1 + 1e-5));
    }
  }
}

/** Run a batch on both backends and compare everything, labels included. */
async function compare(b: WebgpuBackend, batch: ModuleBatch, params: Partial<LocaliseParams> = {}) {
  const labels = new Uint32Array(batch.nFrames * batch.geometry.pixels);
  const cpu = processBatchCpu(batch, { ...P, ...params }, { labels });
  const res = await b.process(batch);
  expectSame(res, cpu);
  if (res.labels) expect(res.labels).toEqual(labels);
  return { gpu: res, cpu };
}

const rng = uniform;

function gauss(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

/** The hand-made scenes, one per frame, on a geometry. */
function scenes(g: Geometry): ModuleBatch {
  const b = batchOf(g, 9, true);
  const s0 = g.asicSs - 1;
  const f0 = g.asicFs - 1;
  // 0: a spot on the image corner, one on an ASIC edge, one across the corner of four ASICs, and a
  //    diagonal line across a seam.
  put(b, 0, 0, 0, 2);
  put(b, 0, 0, 1, 3);
  put(b, 0, 1, 0, 4);
  for (let k = 0; k < 3; k++) put(b, 0, 5 + k, f0, 1 + k);
  put(b, 0, s0, f0, 1);
  put(b, 0, s0, f0 + 1, 2);
  put(b, 0, s0 + 1, f0, 3);
  put(b, 0, s0 + 1, f0 + 1, 4);
  for (let k = 0; k < 3; k++) put(b, 0, s0 + k, f0 + 10 + k, 1.5);
  // 1: a ring with a hole, and a U shape whose arms meet only at the bottom (labels merge late).
  let v = 1;
  for (let ss = 10; ss < 15; ss++) {
    for (let fs = 20; fs < 25; fs++) {
      if (ss === 10 || ss === 14 || fs === 20 || fs === 24) put(b, 1, ss, fs, v++);
    }
  }
  for (let ss = 30; ss < 40; ss++) {
    put(b, 1, ss, 40, 1.25);
    put(b, 1, ss, 47, 1.25);
  }
  for (let fs = 40; fs <= 47; fs++) put(b, 1, 40, fs, 1.25);
  // 2: all pixels lit.
  b.data.fill(1, 2 * g.pixels, 3 * g.pixels);
  // 3: none lit (zeros). 4: NaN, infinite and masked pixels in and around spots.
  for (let ss = 10; ss < 13; ss++) for (let fs = 10; fs < 13; fs++) put(b, 4, ss, fs, 2);
  put(b, 4, 10, 10, NaN);
  put(b, 4, 11, 11, Infinity);
  put(b, 4, 20, 20, -Infinity);
  b.mask![4 * g.pixels + 12 * g.moduleFs + 12] = 8;
  for (let k = 0; k < 40; k++) b.mask![4 * g.pixels + 30 * g.moduleFs + k] = 1;
  for (let k = 0; k < 40; k++) put(b, 4, 30, k, 9); // masked: never lit
  // 5: isolated single photons (removed), a strong isolated pixel (kept, area 1 < minArea).
  for (let k = 0; k < 20; k++) put(b, 5, 3 + 5 * k % (g.moduleSs - 3), 5 + 7 * k % (g.moduleFs - 5), 1);
  put(b, 5, 2, 2, 5);
  // 6: hot pixels (below) splitting a line into two components.
  for (let fs = 40; fs < 47; fs++) put(b, 6, 50, fs, 2);
  // 7: a fully masked frame with data.
  b.data.fill(3, 7 * g.pixels, 8 * g.pixels);
  b.mask!.fill(1, 7 * g.pixels, 8 * g.pixels);
  // 8: many peaks: a grid of 3-pixel spots of different intensities.
  let n = 0;
  for (let ss = 1; ss + 2 < g.moduleSs && n < 300; ss += 4) {
    for (let fs = 1; fs + 2 < g.moduleFs && n < 300; fs += 4, n++) {
      for (let k = 0; k < 3; k++) put(b, 8, ss, fs + k, 1 + (n % 17) * 0.5 + k * 0.25);
    }
  }
  b.hot = new Uint8Array(g.pixels);
  b.hot[50 * g.moduleFs + 43] = 1;
  b.hot[0] = 1; // lit in frame 0: counted in stage 1, not in stages 3-4
  return b;
}

describe.skipIf(!gpu)("webgpu backend == cpu reference", () => {
  it("sizes batches by the device limits", () => {
    const g = geometry("AGIPD");
    expect(framesPerBatch(g, { maxStorageBufferBindingSize: 128 << 20, maxBufferSize: 256 << 20 })).toBe(512);
    expect(
      framesPerBatch(geometry("JUNGFRAU"), {
        maxStorageBufferBindingSize: 128 << 20,
        maxBufferSize: 1 << 30,
      }),
    )
      .toBe(64);
    expect(framesPerBatch(g, { maxStorageBufferBindingSize: 128 << 20, maxBufferSize: 1 << 30 }, 1 << 20))
      .toBe(2); // 11-word entries
  });

  for (const t of ["AGIPD", "LPD", "DSSC"] as DetectorType[]) {
    it(`${t}: hand-made scenes`, async () => {
      const g = geometry(t);
      const b = await backend(t, {}, 4);
      expect(b.name).toBe("webgpu");
      const batch = scenes(g);
      const { gpu: res } = await compare(b, batch);
      // Spot checks of the scenes themselves (the CPU reference has its own tests).
      expect(res.nPeaks[0]).toBe(3); // the corner spot lost its hot pixel: area 2
      expect(res.litPixels[0]).toBeGreaterThanOrEqual(3); // ... which still counts in stage 1
      expect(res.nPeaks[1]).toBe(2);
      expect(res.peaks[1].map((p) => p.area).sort((x, y) => x - y)).toEqual([16, 28]);
      expect(res.nPeaks[2]).toBe(0); // one component of all pixels > maxArea
      expect(res.litPixels.subarray(2 * g.nAsics, 3 * g.nAsics).every((x) => x === g.asicSs * g.asicFs)).toBe(
        true,
      );
      expect(res.nPeaks[3]).toBe(0);
      expect(res.nPeaks[4]).toBe(1);
      expect(res.peaks[4][0].area).toBe(6);
      expect(res.filteredLit.subarray(5 * g.nAsics, 6 * g.nAsics).reduce((x, y) => x + y)).toBe(1);
      expect(res.nPeaks[5]).toBe(0);
      expect(res.nPeaks[6]).toBe(2);
      expect(res.nPeaks[7]).toBe(0);
      expect(res.nPeaks[8]).toBe(300);
      expect(res.peaks[8].length).toBe(256);
      expect(res.overflowFrames).toEqual([]);
      // Stage 2 pre-pass.
      const counts = new Uint32Array(g.pixels).fill(7);
      const expected = counts.slice();
      await b.accumulateLitCounts(batch, counts);
      accumulateLitCountsCpu(batch, expected, P);
      expect(counts).toEqual(expected);
    });
  }

  it("JUNGFRAU: a spot across the ASIC corner, a ring, all lit with a large maxArea", async () => {
    const g = geometry("JUNGFRAU");
    const b = await backend("JUNGFRAU", { maxArea: 1e7 }, 2);
    const batch = batchOf(g, 3);
    for (let k = 0; k < 4; k++) put(batch, 0, 255 + (k >> 1), 255 + (k & 1), 1 + k);
    for (let fs = 500; fs < 530; fs++) {
      put(batch, 0, 300, fs, 2);
      put(batch, 0, 310, fs, 2);
    }
    for (let ss = 300; ss <= 310; ss++) {
      put(batch, 0, ss, 500, 2);
      put(batch, 0, ss, 529, 2);
    }
    batch.data.fill(1.5, g.pixels, 2 * g.pixels);
    const { gpu: res } = await compare(b, batch, { maxArea: 1e7 });
    expect(res.nPeaks[0]).toBe(2);
    expect(res.peaks[1].map((p) => [p.box, p.area, p.intensity, p.max])).toEqual([
      [[0, 0, 512, 1024], g.pixels, 1.5 * g.pixels, 1.5],
    ]);
  });

  it("parameters: neighbours, strong, min/max area, threshold, maxPeaks", async () => {
    const g = geometry("AGIPD");
    const params = { neighbours: 2, strong: 3, minArea: 1, maxArea: 20, threshold: 1.1, maxPeaks: 5 };
    const b = await backend("AGIPD", params, 9);
    await compare(b, scenes(g), params);
  });

  it("the intensity cut: minIntensity drops the same peaks on both backends", async () => {
    const g = geometry("AGIPD");
    for (const minIntensity of [4, DEFAULT_PARAMS.minIntensity, 50]) {
      const b = await backend("AGIPD", { minIntensity }, 9);
      const { cpu } = await compare(b, scenes(g), { minIntensity });
      for (const f of cpu.peaks) {
        for (const pk of f) expect(pk.intensity).toBeGreaterThanOrEqual(minIntensity);
      }
    }
  });

  it("overflowing the GPU peak table: nPeaks exact, peaks recomputed on the CPU", async () => {
    const g = geometry("AGIPD");
    const b = await backend("AGIPD", { maxPeaks: 4 }, 9, { peakCapacity: 8, debugLabels: true });
    expect(b.peakCapacity).toBe(8);
    const batch = scenes(g);
    const { gpu: res } = await compare(b, batch, { maxPeaks: 4 });
    expect(res.overflowFrames).toEqual([8]);
    expect(res.nPeaks[8]).toBe(300);
    expect(res.peaks[8].length).toBe(4);
    expect(b.stats.overflowFrames).toBe(1);
  });

  it("splits batches larger than maxFrames, and runs several calls in flight", async () => {
    const g = geometry("DSSC");
    // A binding cap of two frames (the data binding; the peak table of a frame is smaller).
    const b = await backend("DSSC", {}, 2, { debugLabels: true, maxBindingBytes: 2 * 4 * g.pixels });
    expect(b.maxFrames).toBe(2);
    const all = scenes(g);
    const parts = [0, 1, 2].map((k) => {
      const f = [3 * k, 3 * k + 3];
      return {
        geometry: g,
        nFrames: 3,
        data: all.data.slice(f[0] * g.pixels, f[1] * g.pixels),
        mask: all.mask!.slice(f[0] * g.pixels, f[1] * g.pixels),
        hot: k === 2 ? all.hot : undefined,
      };
    });
    const pending = parts.map((batch) => b.process(batch));
    const results = await Promise.all(pending);
    for (let k = 0; k < 3; k++) {
      const labels = new Uint32Array(3 * g.pixels);
      expectSame(results[k], processBatchCpu(parts[k], P, { labels }));
      expect(results[k].labels).toEqual(labels);
    }
    await expect(b.process({ ...parts[0], geometry: geometry("AGIPD") })).rejects.toThrow();
  });

  it("several modules in one call: whole-batch dispatches, split by the binding cap", async () => {
    const g = geometry("AGIPD");
    const n = 9;
    const base = scenes(g);
    const shifted = (k: number): ModuleBatch => {
      const b = batchOf(g, n, true);
      for (let f = 0; f < n; f++) {
        const src = ((f + k) % n) * g.pixels;
        b.data.set(base.data.subarray(src, src + g.pixels), f * g.pixels);
        b.mask!.set(base.mask!.subarray(src, src + g.pixels), f * g.pixels);
      }
      return b;
    };
    // Each module its own frames, mask (or none) and hot pixels (or none).
    const mods: ModuleBatch[] = [
      base,
      { ...shifted(4), mask: undefined },
      { ...shifted(2), hot: new Uint8Array(g.pixels).fill(1, 40 * g.moduleFs, 60 * g.moduleFs) },
    ];
    const frame = 4 * g.pixels;
    const cpu = mods.map((batch) => {
      const labels = new Uint32Array(n * g.pixels);
      return { res: processBatchCpu(batch, P, { labels }), labels };
    });
    const expectedCounts = mods.map((batch) => {
      const c = new Uint32Array(g.pixels).fill(3);
      accumulateLitCountsCpu(batch, c, P);
      return c;
    });
    for (
      const [cap, parts, capacity, upload] of [
        [undefined, 1, undefined, undefined], // all modules x frames in one submission
        [2 * n * frame, 2, undefined, "writeBuffer"], // groups of two modules and one
        [4 * frame, 3 * 3, 8, undefined], // less than one module's frames: chunks of 4; overflowing tables
      ] as const
    ) {
      const b = await backend("AGIPD", {}, 4, {
        debugLabels: true,
        maxBindingBytes: cap,
        peakCapacity: capacity,
        upload,
      });
      const s0 = b.stats.submissions, d0 = b.stats.dispatches;
      const run = b.processModules(mods);
      await run.uploaded;
      const res = await run.results;
      expect(b.stats.submissions - s0, `cap ${cap}`).toBe(parts);
      expect(b.stats.dispatches - d0).toBe(10 * parts);
      expect(res.length).toBe(mods.length);
      for (let m = 0; m < mods.length; m++) {
        expectSame(res[m], cpu[m].res);
        expect(res[m].labels).toEqual(cpu[m].labels);
        if (capacity) expect(res[m].overflowFrames).toEqual([(8 - [0, 4, 2][m] + n) % n]);
      }
      // Stage 2 pre-pass of all modules at once.
      const counts = mods.map(() => new Uint32Array(g.pixels).fill(3));
      const s1 = b.stats.submissions;
      await b.accumulateModules(mods, counts);
      expect(b.stats.submissions - s1).toBe(parts);
      for (let m = 0; m < mods.length; m++) expect(counts[m]).toEqual(expectedCounts[m]);
    }
  });

  it("two calls in flight: the second is uploaded before the first is read back", async () => {
    const g = geometry("DSSC");
    const all = scenes(g);
    const part = (f0: number): ModuleBatch => ({
      geometry: g,
      nFrames: 2,
      data: all.data.slice(f0 * g.pixels, (f0 + 2) * g.pixels),
      mask: all.mask!.slice(f0 * g.pixels, (f0 + 2) * g.pixels),
      hot: all.hot,
    });
    const calls = [[part(0), part(2)], [part(4), part(6)]];
    const b = await backend("DSSC", {}, 2);
    const events: string[] = [];
    const runs = calls.map((mods, i) => {
      const run = b.processModules(mods);
      run.uploaded.then(() => events.push(`uploaded ${i}`));
      run.results.then(() => events.push(`results ${i}`));
      return run;
    });
    const results = await Promise.all(runs.map((r) => r.results));
    expect(events.indexOf("uploaded 1")).toBeLessThan(events.indexOf("results 0"));
    expect(events.indexOf("results 0")).toBeLessThan(events.indexOf("results 1"));
    calls.forEach((mods, i) =>
      mods.forEach((batch, m) => expectSame(results[i][m], processBatchCpu(batch, P)))
    );
  });

  it("uploads through queue.writeBuffer give the same results", async () => {
    const b = await backend("AGIPD", {}, 4, { upload: "writeBuffer", debugLabels: true });
    await compare(b, scenes(geometry("AGIPD")));
  });

  it("random frames: Gaussian noise, random spots, masked and NaN pixels, hot pixels", async () => {
    const g = geometry("AGIPD");
    const nFrames = 6;
    const r = rng(12345);
    const batch = batchOf(g, nFrames, true);
    for (let k = 0; k < batch.data.length; k++) {
      batch.data[k] = 0.25 * gauss(r);
      if (r() < 0.003) batch.data[k] = 1 + 2 * r(); // single photons and pile-up
      if (r() < 0.001) batch.mask![k] = 1 + (r() * 8 | 0);
      if (r() < 0.0002) batch.data[k] = NaN;
    }
    for (let f = 0; f < nFrames; f++) {
      const spots = 20 + f * 30;
      for (let s = 0; s < spots; s++) {
        const cs = r() * g.moduleSs;
        const cf = r() * g.moduleFs;
        const sigma = 0.4 + 1.6 * r();
        const amp = 2 + 60 * r();
        const rad = Math.ceil(3 * sigma);
        for (let ss = Math.floor(cs) - rad; ss <= Math.floor(cs) + rad; ss++) {
          for (let fs = Math.floor(cf) - rad; fs <= Math.floor(cf) + rad; fs++) {
            if (ss < 0 || fs < 0 || ss >= g.moduleSs || fs >= g.moduleFs) continue;
            const d2 = (ss + 0.5 - cs) ** 2 + (fs + 0.5 - cf) ** 2;
            batch.data[f * g.pixels + ss * g.moduleFs + fs] += amp * Math.exp(-d2 / (2 * sigma * sigma));
          }
        }
      }
    }
    batch.hot = new Uint8Array(g.pixels);
    for (let k = 0; k < 30; k++) batch.hot[(r() * g.pixels) | 0] = 1;
    const params = { maxPeaks: 1000 }; // no cut among near-equal intensities
    const b = await backend("AGIPD", params, 4);
    const { cpu } = await compare(b, batch, params);
    expect(cpu.nPeaks.reduce((x, y) => x + y)).toBeGreaterThan(100);
    const counts = new Uint32Array(g.pixels);
    const expected = new Uint32Array(g.pixels);
    await b.accumulateLitCounts(batch, counts);
    accumulateLitCountsCpu(batch, expected, P);
    expect(counts).toEqual(expected);
  });
});
