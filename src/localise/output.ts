/**
 * Outputs of `localise`, a contract other tools rely on (documented in the README):
 * - summary.json (summaryJson below);
 * - the REDU file(s), written and read by redu.ts.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { buildDir } from "../app/outdir.ts";
import type { LocaliseResult } from "./result.ts";
import { resolutionSource, writeRedu } from "./redu.ts";

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
    perTrain: r.perTrain,
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
        dataFrames: r.beam.dataFrames,
      }
      : null,
    anomalies: r.anomalies,
    anomalyCount: r.anomalyCount,
    notes: r.notes,
  };
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
