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
import { arrayFor, dsInfo, firstLine, type H5Dataset, type H5File, readSlab } from "../exdf/h5.ts";
import type { FramePeak, LocaliseResult } from "../localise/result.ts";
import { summaryJson } from "../localise/output.ts";
import { Run } from "../exdf/run.ts";
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

const LOCALISE_RE = /\/REDU\/LOCALISE:output$/;
/** Frames per block when reading the per-ASIC tables. */
const BLOCK_FRAMES = 4096;

interface Segment {
  file: H5File;
  base: string;
  /** First row in the file and the frame it holds. */
  row: number;
  frame: number;
  n: number;
}

/** Read rows [row, row+n) of a dataset as numbers into out (at element offset `at`). */
function readRowsAs(
  file: H5File,
  p: string,
  row: number,
  n: number,
  out: Float64Array | Uint32Array | Uint8Array,
  at: number,
) {
  const info = dsInfo(file.get(p) as H5Dataset);
  const per = info.shape.slice(1).reduce((a, b) => a * b, 1);
  const tmp = arrayFor(info.dtype, n * per);
  readSlab(file, p, [row, ...info.shape.slice(1).map(() => 0)], [n, ...info.shape.slice(1)], tmp, 0);
  if (tmp instanceof BigUint64Array || tmp instanceof BigInt64Array) {
    for (let i = 0; i < tmp.length; i++) out[at + i] = Number(tmp[i]);
  } else if (tmp.constructor === out.constructor) {
    out.set(tmp as any, at);
  } else {
    for (let i = 0; i < tmp.length; i++) out[at + i] = tmp[i] as number;
  }
}

/** The per-frame tables of a localise output directory (REDU files), read lazily in blocks. */
async function reduSource(dir: string, nMod: number, nA: number): Promise<PerFrameSource> {
  let run: Run;
  try {
    run = await Run.open(dir);
  } catch (e) {
    if (e instanceof InputError) throw new InputError(dir, "no localise REDU file found");
    throw e;
  }
  try {
    const segs: Segment[] = [];
    let nFrames = 0;
    const files = [...run.files].sort((a, b) => (a.trainIds[0] ?? 0) - (b.trainIds[0] ?? 0));
    for (const f of files) {
      for (const s of f.sources.values()) {
        if (!LOCALISE_RE.test(s.name)) continue;
        const ix = s.index.get("data");
        if (!ix) continue;
        const base = `INSTRUMENT/${s.name}/data`;
        for (let i = 0; i < ix.first.length; i++) {
          const c = ix.count[i];
          if (!c) continue;
          const last = segs[segs.length - 1];
          if (last && last.file === f.h5 && last.row + last.n === ix.first[i]) last.n += c;
          else segs.push({ file: f.h5, base, row: ix.first[i], frame: nFrames, n: c });
          nFrames += c;
        }
      }
    }
    if (segs.length === 0) {
      throw new InputError(dir, "no localise REDU file (source <DET>/REDU/LOCALISE:output) found");
    }
    const trainId = new Float64Array(nFrames), pulseId = new Float64Array(nFrames);
    const frameLit = new Uint8Array(nFrames), nPeaks = new Uint32Array(nFrames);
    for (const s of segs) {
      readRowsAs(s.file, `${s.base}/trainId`, s.row, s.n, trainId, s.frame);
      readRowsAs(s.file, `${s.base}/pulseId`, s.row, s.n, pulseId, s.frame);
      readRowsAs(s.file, `${s.base}/frameLit`, s.row, s.n, frameLit, s.frame);
      readRowsAs(s.file, `${s.base}/nPeaks`, s.row, s.n, nPeaks, s.frame);
    }
    const locate = (f: number): { s: Segment; row: number } => {
      const s = segs.find((x) => f >= x.frame && f < x.frame + x.n)!;
      return { s, row: s.row + f - s.frame };
    };
    const k = nMod * nA;
    return {
      nFrames,
      trainId,
      pulseId,
      frameLit,
      nPeaks,
      *blocks() {
        const litPixels = new Uint32Array(BLOCK_FRAMES * k);
        const unmasked = new Uint32Array(BLOCK_FRAMES * k);
        const filtered = new Uint32Array(BLOCK_FRAMES * k);
        for (const s of segs) {
          for (let r = 0; r < s.n; r += BLOCK_FRAMES) {
            const n = Math.min(BLOCK_FRAMES, s.n - r);
            readRowsAs(s.file, `${s.base}/litPixels`, s.row + r, n, litPixels, 0);
            readRowsAs(s.file, `${s.base}/unmaskedPixels`, s.row + r, n, unmasked, 0);
            readRowsAs(s.file, `${s.base}/filteredLit`, s.row + r, n, filtered, 0);
            yield { start: s.frame + r, n, litPixels, unmasked, filtered };
          }
        }
      },
      peaks(f) {
        const { s, row } = locate(f);
        const nP = dsInfo(s.file.get(`${s.base}/peakModule`) as H5Dataset).shape[1] ?? 0;
        const mod = new Uint32Array(nP), box = new Uint32Array(nP * 4), area = new Uint32Array(nP);
        const inten = new Float64Array(nP), pss = new Float64Array(nP), pfs = new Float64Array(nP);
        const pmax = new Float64Array(nP);
        readRowsAs(s.file, `${s.base}/peakModule`, row, 1, mod, 0);
        readRowsAs(s.file, `${s.base}/peakBox`, row, 1, box, 0);
        readRowsAs(s.file, `${s.base}/peakArea`, row, 1, area, 0);
        readRowsAs(s.file, `${s.base}/peakIntensity`, row, 1, inten, 0);
        readRowsAs(s.file, `${s.base}/peakSs`, row, 1, pss, 0);
        readRowsAs(s.file, `${s.base}/peakFs`, row, 1, pfs, 0);
        readRowsAs(s.file, `${s.base}/peakMax`, row, 1, pmax, 0);
        const out: FramePeak[] = [];
        for (let j = 0; j < Math.min(nP, nPeaks[f]); j++) {
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
        const { s, row } = locate(f);
        const out = new Uint8Array(k);
        readRowsAs(s.file, `${s.base}/asicLit`, row, 1, out, 0);
        return out;
      },
      close: () => run.close(),
    };
  } catch (e) {
    run.close();
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
