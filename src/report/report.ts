/**
 * The localise report: `DIR/report.html`, one self-contained page (inline styles, scripts and SVG, images as
 * PNG data URIs; opens without network access) for judging a localise result in a minute. See
 * docs/report.md.
 *
 * Spec:
 * - Sources: a LocaliseResult in memory (`writeReport`, what `localise --report` calls), or a localise
 *   output directory (`report LOCALISE_OUT`: summary.json plus the per-frame tables of the REDU file(s),
 *   read in blocks of rows, so memory stays bounded for any run). Sample frames' images come from the run
 *   (the path given, else the run recorded in summary.json).
 * - Contents: the run summary (summary.json's numbers, each in an element with `data-key` and an exact
 *   `data-value`); the lit fraction per train (binned to at most `maxTrainPoints` points); per module lit
 *   frames, hot pixels, ROIs and selection, as a table and a detector-shaped map; the histogram of the
 *   classifier's per-ASIC quantity for lit and dark frames with its threshold; and up to `litFrames` lit and
 *   `darkFrames` dark frames (evenly spaced over the run's lit / dark frames), each module's image on a log
 *   colour scale with the frame's peak boxes, its lit ASICs and the module ROIs.
 * - Size: bounded by the options, not by the run (a few hundred kB for AGIPD 1M): images are max-pooled so
 *   that one frame's modules hold at most `framePixels` pixels; per-train data are binned.
 * - The page is written under a temporary name and renamed when complete.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { Buffer } from "node:buffer";
import { tmpName } from "../app/outdir.ts";
import { DETECTOR_TYPES, type DetectorType, geometry } from "../exdf/detectors.ts";
import { InputError } from "../errors.ts";
import { firstLine } from "../exdf/h5.ts";
import type { FramePeak, LocaliseResult } from "../localise/result.ts";
import { summaryJson } from "../localise/output.ts";
import { NoReduFile, ReduReader } from "../localise/redu.ts";
import { renderReport } from "./html.ts";

import {
  buildModel,
  DEFAULTS,
  type PerFrameSource,
  type ReportInfo,
  type ReportOptions,
  type ReportSummary,
  resultSource,
} from "./model.ts";

async function writeFrom(
  src: PerFrameSource,
  summary: ReportSummary,
  runPath: string | undefined,
  dir: string,
  opts: ReportOptions,
  notes: string[],
): Promise<ReportInfo> {
  const o = { ...DEFAULTS, ...opts };
  const model = await buildModel(src, summary, runPath, o, notes);
  for (const n of model.notes) opts.onNote?.(n);
  const html = renderReport(model);
  const out = path.join(dir, o.fileName);
  const tmp = tmpName(out);
  try {
    fs.writeFileSync(tmp, html);
    fs.renameSync(tmp, out);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  return {
    path: out,
    bytes: Buffer.byteLength(html),
    samples: model.samples.map((s) => ({
      kind: s.kind,
      trainId: s.trainId,
      pulseId: s.pulseId,
      images: s.images.some((x) => x !== null),
    })),
    notes: model.notes,
  };
}

/**
 * Write `dir/report.html` for a localise result; `runPath` is the run it came from (sample frames' images
 * are read from it). Returns the page's path.
 */
export async function writeReport(
  result: LocaliseResult,
  runPath: string,
  dir: string,
  opts: ReportOptions = {},
): Promise<string> {
  return (await writeFrom(resultSource(result), summaryJson(result), runPath, dir, opts, [])).path;
}

// ---------------------------------------------------------------------------------------------------------
// From a localise output directory

/** Frames per block when reading the per-ASIC tables. */
const BLOCK_FRAMES = 4096;

/** The per-frame tables of a localise output directory (REDU files), read in blocks each time: nothing per frame. */
async function reduSource(dir: string, nMod: number, nA: number): Promise<PerFrameSource> {
  let redu: ReduReader;
  try {
    redu = await ReduReader.open(dir);
  } catch (e) {
    if (e instanceof InputError && !(e instanceof NoReduFile)) {
      throw new InputError(dir, "no localise REDU file found");
    }
    throw e;
  }
  try {
    const nFrames = redu.nFrames;
    if (nFrames === 0) throw new NoReduFile(dir);
    const k = nMod * nA;
    return {
      nFrames,
      *blocks(tables) {
        const nPeaks = new Uint32Array(BLOCK_FRAMES);
        const litPixels = new Uint32Array(tables ? BLOCK_FRAMES * k : 0);
        const unmasked = new Uint32Array(tables ? BLOCK_FRAMES * k : 0);
        for (const w of redu.frameWindows(BLOCK_FRAMES)) {
          redu.read("nPeaks", w.start, w.n, nPeaks);
          if (tables) {
            redu.read("litPixels", w.start, w.n, litPixels);
            redu.read("unmaskedPixels", w.start, w.n, unmasked);
          }
          yield { ...w, nPeaks, litPixels, unmasked };
        }
      },
      peaks(f) {
        const all = new Uint32Array(1);
        redu.read("nPeaks", f, 1, all);
        const nP = redu.entryShape("peakModule", f)[0] ?? 0;
        const mod = new Uint32Array(nP), box = new Uint32Array(nP * 4), area = new Uint32Array(nP);
        const inten = new Float64Array(nP), pss = new Float64Array(nP), pfs = new Float64Array(nP);
        const pmax = new Float64Array(nP);
        redu.read("peakModule", f, 1, mod);
        redu.read("peakBox", f, 1, box);
        redu.read("peakArea", f, 1, area);
        redu.read("peakIntensity", f, 1, inten);
        redu.read("peakSs", f, 1, pss);
        redu.read("peakFs", f, 1, pfs);
        redu.read("peakMax", f, 1, pmax);
        const out: FramePeak[] = [];
        for (let j = 0; j < Math.min(nP, all[0]); j++) {
          if (area[j] === 0) continue; // unused rows are zero
          out.push({
            module: mod[j],
            box: [box[j * 4], box[j * 4 + 1], box[j * 4 + 2], box[j * 4 + 3]],
            area: area[j],
            intensity: inten[j],
            ss: pss[j],
            fs: pfs[j],
            max: pmax[j],
            snr: 0, // not drawn
          });
        }
        return out;
      },
      asicLit(f) {
        const out = new Uint8Array(k);
        redu.read("asicLit", f, 1, out);
        return out;
      },
      close: () => redu.close(),
    };
  } catch (e) {
    redu.close();
    throw e;
  }
}

/** The run a localise output came from: the path recorded in summary.json, as given or beside the output. */
function recordedRun(summary: ReportSummary, outDir: string): string | undefined {
  const r = summary.run;
  if (!r) return undefined;
  const candidates = path.isAbsolute(r) ? [r] : [path.resolve(r), path.resolve(path.dirname(outDir), r)];
  return candidates.find((c) => fs.existsSync(c)) ?? candidates[0];
}

/** Regenerate `outDir/report.html` from a localise output directory. */
export async function reportFromOutput(
  outDir: string,
  opts: ReportOptions & { run?: string } = {},
): Promise<ReportInfo> {
  const dir = path.resolve(outDir);
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new InputError(outDir, "localise output directory not found");
  }
  const sp = path.join(dir, "summary.json");
  if (!fs.existsSync(sp)) throw new InputError(sp, "no summary.json: not a localise output directory");
  let summary: ReportSummary;
  try {
    summary = JSON.parse(fs.readFileSync(sp, "utf8"));
  } catch (e) {
    throw new InputError(sp, `cannot read: ${firstLine(e)}`);
  }
  if (!summary?.detector?.modules || !summary.params || !Array.isArray(summary.modules)) {
    throw new InputError(sp, "not a localise summary (detector, params, modules missing)");
  }
  if (!DETECTOR_TYPES.includes(summary.detector.type as DetectorType)) {
    throw new InputError(sp, `unknown detector type ${summary.detector.type}`);
  }
  const g = geometry(summary.detector.type as DetectorType);
  const src = await reduSource(dir, summary.detector.modules.length, g.nAsics);
  try {
    const notes: string[] = [];
    if (src.nFrames !== summary.frames) {
      notes.push(`the REDU file holds ${src.nFrames} frames, summary.json says ${summary.frames}`);
    }
    return await writeFrom(src, summary, opts.run ?? recordedRun(summary, dir), dir, opts, notes);
  } finally {
    src.close();
  }
}
