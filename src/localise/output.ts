/**
 * Outputs of `localise`, a contract other tools rely on (documented in the README):
 * - summary.json (summaryJson below);
 * - `<PREFIX>-R<run>-REDU00-S00000.h5` (more sequences when large), written with the writer library:
 *   fast source `<DET>/REDU/LOCALISE:output`, index group `data`, one entry per frame of the run (frames
 *   aligned across modules, sorted by trainId then pulseId), and the module order of the nModules axes in the
 *   RUN section of the control source `<DET>/REDU/LOCALISE` (key `modules`).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { buildDir } from "../app/outdir.ts";
import { type DataInput, openWriter } from "../exdf/writer/writer.ts";
import { litframesCounts, litframesData, litframesDevice, litframesSchema } from "../beam/litfrm.ts";
import type { LocaliseOptions, LocaliseResult } from "./result.ts";
import { loadLayout } from "../exdf/geometry.ts";
import type { DetectorType } from "../exdf/detectors.ts";
import { resolutionAngstrom } from "./position.ts";

/**
 * Options of the outputs only (command.ts `--photon-energy`, `--clen`): they pass through localise in
 * `params` untouched. They override the `.geom` file's `photon_energy` / `clen`.
 */
export interface OutputOptions {
  /** Photon energy (eV). */
  photonEnergy?: number;
  /** Detector distance, sample to detector plane (metres). */
  clen?: number;
}

/** Where the peak resolution's photon energy and clen come from, and the values (undefined: unknown). */
export interface ResolutionSource {
  photonEnergy?: number;
  clen?: number;
  photonEnergyFrom: "option" | "geometry" | "unknown";
  clenFrom: "option" | "geometry" | "unknown";
}

export function resolutionSource(r: LocaliseResult): ResolutionSource {
  const p = r.params as LocaliseOptions & OutputOptions;
  let layout: { photonEnergy?: number; clen?: number } = {};
  if (p.geometry) layout = loadLayout(p.geometry, r.detector.type as DetectorType);
  const pick = (opt?: number, geom?: number) =>
    opt !== undefined
      ? { v: opt, from: "option" as const }
      : geom !== undefined
      ? { v: geom, from: "geometry" as const }
      : { v: undefined, from: "unknown" as const };
  const e = pick(p.photonEnergy, layout.photonEnergy);
  const c = pick(p.clen, layout.clen);
  return { photonEnergy: e.v, clen: c.v, photonEnergyFrom: e.from, clenFrom: c.from };
}

/**
 * The background estimate of stage 0 the run used, as summary.json states it: per radius bin (bgBinWidth
 * > 0; radii from the layout) or per 16 x 16 tile (bgBinWidth 0, no geometry).
 */
export function backgroundEstimate(
  r: LocaliseResult,
): { method: string; binWidth: number; layout: string | null } {
  const w = r.params.bgBinWidth;
  return w > 0
    ? { method: `radius bins of width ${w} px from geometry ${r.layout}`, binWidth: w, layout: r.layout }
    : { method: "16x16 tiles, no geometry", binWidth: 0, layout: null };
}

/** Per train: frames and lit frames (hits), in train order. */
function perTrain(r: LocaliseResult): { trainId: number[]; frames: number[]; litFrames: number[] } {
  const out = { trainId: [] as number[], frames: [] as number[], litFrames: [] as number[] };
  for (let f = 0; f < r.frames; f++) {
    const k = out.trainId.length - 1;
    if (k < 0 || out.trainId[k] !== r.trainId[f]) {
      out.trainId.push(r.trainId[f]);
      out.frames.push(0);
      out.litFrames.push(0);
    }
    out.frames[out.frames.length - 1]++;
    out.litFrames[out.litFrames.length - 1] += r.frameLit[f];
  }
  return out;
}

export function summaryJson(r: LocaliseResult) {
  const { backend: _b, workers: _w, ...params } = r.params;
  return {
    run: path.resolve(r.run),
    detector: r.detector,
    layout: r.layout,
    backend: r.backend,
    params: { ...params, backend: r.params.backend },
    trains: r.trains,
    frames: r.frames,
    litFrames: r.litFrames,
    /** Lit frames / frames: the hit rate of an SFX run. */
    hitRate: r.frames ? r.litFrames / r.frames : 0,
    perTrain: perTrain(r),
    /** Stage 0's background estimate (docs/localise.md gives its measured accuracy). */
    background: backgroundEstimate(r),
    /** Photon energy (eV) and clen (m) of the peak resolution (REDU peakResolution), and where they came from. */
    resolution: resolutionSource(r),
    modules: r.modules,
    selectedFiles: r.selectedFiles,
    timing: r.timing,
    beam: r.beam
      ? {
        sase: r.beam.sase,
        repRate: r.beam.repRate,
        referenceFrame: r.beam.referenceFrame,
        sources: r.beam.sources,
        dataFrames: r.beam.trains.reduce((a, t) => a + t.nDataFrame, 0),
      }
      : null,
    anomalies: r.anomalies,
    notes: r.notes,
  };
}

/** The run's file prefix and run number, from EuXFEL file names (CORR-R0012-AGIPD00-S00000.h5). */
export function runNaming(files: string[]): { prefix: string; run: number } {
  for (const f of files) {
    const m = /^([A-Za-z]+)-R(\d+)-/.exec(f);
    if (m) return { prefix: m[1], run: Number(m[2]) };
  }
  return { prefix: "CORR", run: 0 };
}

/** Write the REDU file(s) of a localise result into dir; returns their paths. */
export async function writeRedu(r: LocaliseResult, dir: string, runFiles: string[] = []): Promise<string[]> {
  const { prefix, run } = runNaming(runFiles.map((f) => path.basename(f)));
  const nMod = r.detector.modules.length;
  const nA = r.nAsics;
  const maxPeaks = r.params.maxPeaks;
  const { photonEnergy, clen } = resolutionSource(r);
  const perFrame = [nMod, nA];
  // Per-frame tables are small and mostly zeros (peak tables): modest chunks, fast gzip.
  const packed = { chunks: 256, compression: "gzip", compressionOpts: 1 } as const;
  // The beam annotation (LITFRM) goes into the same file, in the facility's layout.
  const litfrm = r.beam ? litframesSchema(litframesDevice(r.beam.instrument)) : undefined;
  const schema = {
    parameters: ["det", "nmod", "nasic", "maxpeaks"],
    aliases: { out: "{det}/REDU/LOCALISE:output", ctl: "{det}/REDU/LOCALISE", ...litfrm?.aliases },
    datasets: {
      ...litfrm?.datasets,
      trainId: { source: "@out", key: "data.trainId", shape: [], dtype: "uint64", ...packed },
      pulseId: { source: "@out", key: "data.pulseId", shape: [], dtype: "uint64", ...packed },
      frameLit: { source: "@out", key: "data.frameLit", shape: [], dtype: "uint8", ...packed },
      litPixels: {
        source: "@out",
        key: "data.litPixels",
        shape: ["nmod", "nasic"],
        dtype: "uint32",
        ...packed,
      },
      litIntensity: {
        source: "@out",
        key: "data.litIntensity",
        shape: ["nmod", "nasic"],
        dtype: "float32",
        ...packed,
      },
      unmaskedPixels: {
        source: "@out",
        key: "data.unmaskedPixels",
        shape: ["nmod", "nasic"],
        dtype: "uint32",
        ...packed,
      },
      filteredLit: {
        source: "@out",
        key: "data.filteredLit",
        shape: ["nmod", "nasic"],
        dtype: "uint32",
        ...packed,
      },
      asicLit: { source: "@out", key: "data.asicLit", shape: ["nmod", "nasic"], dtype: "uint8", ...packed },
      nPeaks: { source: "@out", key: "data.nPeaks", shape: [], dtype: "uint32", ...packed },
      peakModule: { source: "@out", key: "data.peakModule", shape: ["maxpeaks"], dtype: "uint16", ...packed },
      peakBox: { source: "@out", key: "data.peakBox", shape: ["maxpeaks", 4], dtype: "uint16", ...packed },
      peakArea: { source: "@out", key: "data.peakArea", shape: ["maxpeaks"], dtype: "uint32", ...packed },
      peakIntensity: {
        source: "@out",
        key: "data.peakIntensity",
        shape: ["maxpeaks"],
        dtype: "float32",
        ...packed,
      },
      peakSs: { source: "@out", key: "data.peakSs", shape: ["maxpeaks"], dtype: "float32", ...packed },
      peakFs: { source: "@out", key: "data.peakFs", shape: ["maxpeaks"], dtype: "float32", ...packed },
      peakMax: { source: "@out", key: "data.peakMax", shape: ["maxpeaks"], dtype: "float32", ...packed },
      peakSnr: { source: "@out", key: "data.peakSnr", shape: ["maxpeaks"], dtype: "float32", ...packed },
      peakX: { source: "@out", key: "data.peakX", shape: ["maxpeaks"], dtype: "float32", ...packed },
      peakY: { source: "@out", key: "data.peakY", shape: ["maxpeaks"], dtype: "float32", ...packed },
      peakRadius: {
        source: "@out",
        key: "data.peakRadius",
        shape: ["maxpeaks"],
        dtype: "float32",
        ...packed,
      },
      peakResolution: {
        source: "@out",
        key: "data.peakResolution",
        shape: ["maxpeaks"],
        dtype: "float32",
        ...packed,
      },
      modules: { source: "@ctl", key: "modules", shape: ["nmod"], dtype: "uint16", ...packed },
    },
  } as const;
  const w = await openWriter(path.join(dir, "{prefix}-R{run:04d}-{aggregator}-S{seq:05d}.h5"), schema, {
    params: { det: r.detector.name, nmod: nMod, nasic: nA, maxpeaks: maxPeaks },
    prefix,
    run,
    aggregator: "REDU00",
    maxBytesPerFile: 4 * 2 ** 30,
  });
  try {
    w.setConstant("modules", Uint16Array.from(r.detector.modules));
    // Blocks of whole trains (frames are sorted by trainId, then pulseId), read back from the spill files.
    for (const { f0, f1, per: pf } of r.frameBlocks(r.blockBounds())) {
      const n = f1 - f0;
      const ids: number[] = [];
      const c: number[] = [];
      for (let f = 0; f < n; f++) {
        if (ids.length && ids[ids.length - 1] === pf.trainId[f]) c[c.length - 1]++;
        else {
          ids.push(pf.trainId[f]);
          c.push(1);
        }
      }
      w.addTrains(ids, { "@out": c, ...(r.beam ? litframesCounts(r.beam, ids) : {}) });
      if (r.beam) w.addData(litframesData(r.beam, ids) as Record<string, DataInput>);
      const peakModule = new Uint16Array(n * maxPeaks);
      const peakBox = new Uint16Array(n * maxPeaks * 4);
      const peakArea = new Uint32Array(n * maxPeaks);
      const peakIntensity = new Float32Array(n * maxPeaks);
      const peakSs = new Float32Array(n * maxPeaks);
      const peakFs = new Float32Array(n * maxPeaks);
      const peakMax = new Float32Array(n * maxPeaks);
      const peakSnr = new Float32Array(n * maxPeaks);
      const peakX = new Float32Array(n * maxPeaks);
      const peakY = new Float32Array(n * maxPeaks);
      const peakRadius = new Float32Array(n * maxPeaks);
      const peakResolution = new Float32Array(n * maxPeaks);
      for (let i = 0; i < n; i++) {
        pf.peaks[i].forEach((p, j) => {
          const k = i * maxPeaks + j;
          peakModule[k] = p.module;
          peakBox.set(p.box, k * 4);
          peakArea[k] = p.area;
          peakIntensity[k] = p.intensity;
          peakSs[k] = p.ss;
          peakFs[k] = p.fs;
          peakMax[k] = p.max;
          peakSnr[k] = p.snr;
          peakX[k] = p.x ?? NaN;
          peakY[k] = p.y ?? NaN;
          peakRadius[k] = p.radius ?? NaN;
          peakResolution[k] = resolutionAngstrom(Math.hypot(p.x ?? NaN, p.y ?? NaN), photonEnergy, clen);
        });
      }
      w.addData({
        trainId: BigUint64Array.from(pf.trainId, BigInt),
        pulseId: BigUint64Array.from(pf.pulseId, BigInt),
        frameLit: pf.frameLit,
        litPixels: { data: pf.litPixels, shape: [n, ...perFrame] },
        litIntensity: { data: pf.litIntensity, shape: [n, ...perFrame] },
        unmaskedPixels: { data: pf.unmaskedPixels, shape: [n, ...perFrame] },
        filteredLit: { data: pf.filteredLit, shape: [n, ...perFrame] },
        asicLit: { data: pf.asicLit, shape: [n, ...perFrame] },
        nPeaks: pf.nPeaks,
        peakModule: { data: peakModule, shape: [n, maxPeaks] },
        peakBox: { data: peakBox, shape: [n, maxPeaks, 4] },
        peakArea: { data: peakArea, shape: [n, maxPeaks] },
        peakIntensity: { data: peakIntensity, shape: [n, maxPeaks] },
        peakSs: { data: peakSs, shape: [n, maxPeaks] },
        peakFs: { data: peakFs, shape: [n, maxPeaks] },
        peakMax: { data: peakMax, shape: [n, maxPeaks] },
        peakSnr: { data: peakSnr, shape: [n, maxPeaks] },
        peakX: { data: peakX, shape: [n, maxPeaks] },
        peakY: { data: peakY, shape: [n, maxPeaks] },
        peakRadius: { data: peakRadius, shape: [n, maxPeaks] },
        peakResolution: { data: peakResolution, shape: [n, maxPeaks] },
      });
    }
    return w.close();
  } catch (e) {
    w.abort(String(e));
    throw e;
  }
}

/**
 * Write localise's output directory: the REDU file and summary.json, plus what `extra` adds (the report),
 * built under a temporary name and renamed when complete.
 */
export async function writeLocaliseDir(
  result: LocaliseResult,
  dir: string,
  extra?: (tmp: string) => Promise<void>,
): Promise<void> {
  await buildDir(dir, async (tmp) => {
    await writeRedu(result, tmp, result.runFiles);
    fs.writeFileSync(path.join(tmp, "summary.json"), JSON.stringify(summaryJson(result), null, 2) + "\n");
    if (extra) await extra(tmp);
  });
}
