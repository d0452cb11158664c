/** The GPU backend of localise against its CPU reference (test/radial.test.ts, test/background.test.ts). */
import { expect } from "vitest";
import { processBatchCpu } from "../../src/localise/stages.ts";
import { backgroundCpu, cellsOf } from "../../src/localise/background.ts";
import type { LocaliseParams, ModuleBatch } from "../../src/localise/spec.ts";
import type { WebgpuBatchResult } from "../../src/localise/webgpu.ts";

export /** GPU stage 0 within float32 rounding of the CPU's; stages 1-4 equal the CPU's given the GPU's stage 0. */
function expectCpu(b: ModuleBatch, res: WebgpuBatchResult, params: LocaliseParams, what: string): void {
  const cpuBg = backgroundCpu(b, params);
  expect(res.background.mu.length).toBe(cpuBg.mu.length);
  expect(cpuBg.mu.length).toBe(b.nFrames * cellsOf(b, params).n);
  for (const k of ["mu", "sigma", "thr"] as const) {
    for (let i = 0; i < cpuBg[k].length; i++) {
      const a = res.background[k][i], c = cpuBg[k][i];
      if (!(Math.abs(a - c) <= 1e-5 * Math.max(1, Math.abs(c)))) {
        expect.fail(`${what}: ${k}[${i}]: ${a} vs ${c}`);
      }
    }
  }
  const cpu = processBatchCpu(b, params, { background: res.background });
  expect(res.litPixels).toEqual(cpu.litPixels);
  expect(res.unmaskedPixels).toEqual(cpu.unmaskedPixels);
  expect(res.filteredLit).toEqual(cpu.filteredLit);
  expect(res.nPeaks).toEqual(cpu.nPeaks);
  expect(cpu.nPeaks.reduce((a, x) => a + x, 0)).toBeGreaterThan(5);
  const key = (p: { box: number[] }) => p.box.join(",");
  for (let f = 0; f < b.nFrames; f++) {
    const gp = [...res.peaks[f]].sort((x, y) => key(x).localeCompare(key(y)));
    const cp = [...cpu.peaks[f]].sort((x, y) => key(x).localeCompare(key(y)));
    expect(gp.map((p) => [p.box, p.area])).toEqual(cp.map((p) => [p.box, p.area]));
    for (let k = 0; k < cp.length; k++) {
      for (const q of ["intensity", "ss", "fs", "max", "snr"] as const) {
        const a = gp[k][q], c = cp[k][q];
        if (!(Math.abs(a - c) <= 1e-4 * Math.max(1, Math.abs(c)))) expect.fail(`${what}: ${q}: ${a} vs ${c}`);
      }
    }
  }
}
