/**
 * `cxi RUN --from LOCALISE_OUT --out DIR`: the hit frames of a run (localise's `frameLit`) as a CXI file with
 * the peak lists, a `.geom` addressing it and a `hits.lst`, for `indexamajig -i hits.lst -g det.geom
 * --peaks=cxi` (CrystFEL) and Cheetah users.
 *
 * A command of its own rather than a localise option: the hits are known only when localise has seen every
 * frame (stage 5 runs in finalize), so writing them takes a second pass over the run anyway; as a command it
 * runs on any localise output (also one made on the CORR run of a RAW run, or elsewhere), like `reduce`.
 *
 * Output contract (DIR, built under a temporary name and renamed, README "Guards"):
 * - `hits.cxi` (HDF5; the `.cxi` extension also keeps EuXFEL tools, which glob `*.h5`, away from it):
 *   - `/entry_1/instrument_1/detector_1/data`: float32 (nHits, nModules x moduleSs, moduleFs), the hit
 *     frames in (trainId, pulseId) order, the modules of the localise output stacked along slow scan in its
 *     module order (`module_identifier` beside it); chunks of one frame, gzip with `--gzip N` (default 0,
 *     none). The values are the frames as the framework reads them (float32; RAW ADU converted), NaN for a
 *     module that did not record the frame. `/entry_1/data_1` is a soft link to the detector group (as
 *     EXtra-data's CXI writer does), so `/entry_1/data_1/data` is the same array.
 *   - `/entry_1/instrument_1/detector_1/mask`: uint32, shaped like data, the run's mask (0 good; 0 where
 *     the run has none), gzip (level max(1, `--gzip`)); `det.geom` marks any set bit bad.
 *   - `/entry_1/result_1/nPeaks` (int32, nHits): the peaks listed for the frame (localise's `nPeaks`, at most
 *     the REDU table's capacity `maxPeaks`: CrystFEL's `read_peak_line` refuses a count beyond the table's
 *     width);
 *     `nPeaksAll` (int32): localise's `nPeaks` (all peaks found).
 *   - `/entry_1/result_1/peakXPosRaw`, `peakYPosRaw`, `peakTotalIntensity` (float32, nHits x maxPeaks,
 *     zero-padded): X = fs centroid, Y = k x moduleSs + ss centroid (k: the module's place in the stack),
 *     both as pixel indices (pixel centre at integer values: Cheetah's convention, which CrystFEL's default
 *     half-pixel shift turns into distances from the panel corner); intensity background-subtracted
 *     (REDU `peakIntensity`). Also `peakSNR` (REDU `peakSnr`).
 *   - `/entry_1/trainId`, `/entry_1/pulseId` (uint64), `/entry_1/cellId` (int32),
 *     `/entry_1/experiment_identifier` ("trainId:pulseId" strings), `/cxi_version` = 150, as EXtra-data's CXI
 *     export writes them.
 * - `det.geom`: the detector layout (`--geometry FILE`, else the one localise used when summary.json
 *   `layout` is a file, else the built-in layout of the type) in the 2D layout of that array (`dim0 = %`,
 *   `dim1 = ss`, `dim2 = fs`, panels of the k-th module at min_ss + k x moduleSs), with `data` and
 *   `peak_list = /entry_1/result_1`, `peak_list_type = cxi`, `mask0_data` (src/exdf/geometry.ts `writeGeom` with
 *   `stack`).
 * - `hits.lst`: one line per hit, `<absolute path of DIR/hits.cxi> //<index>`.
 * - `cxi.json`: run, localise output, detector, modules, layout, hits, peaks listed, seconds.
 *
 * Why the 2D (stacked) layout and not EXtra-geom's 3D one (`dim1 = <module>`): CrystFEL reads CXI peak lists
 * in libcrystfel/src/image-hdf5.c `image_hdf5_read_peaks_cxi` (row `//N` of nPeaks / peakXPosRaw /
 * peakYPosRaw / peakTotalIntensity under `peak_list`, +0.5 with the default half-pixel shift), then finds the
 * panel with libcrystfel/src/datatemplate.c `data_template_slabby_file_to_panel_coords`, which compares the
 * position with each panel's min/max fs/ss only, ignoring the module dimension: with the 3D layout every
 * module's panel of an ASIC matches and the peak is dropped as ambiguous. In the stacked layout each
 * (X, Y) falls in exactly one panel. (CrystFEL 0.11, read at taw10/crystfel 80f2485.)
 *
 * Memory: the hit frames are read in batches through the framework's FrameReader (runs of consecutive hit
 * frames, `--batch-mb` per batch) and written a batch at a time; the peak rows of a batch are read from the
 * REDU file then: about 4 x batchBytes in all (the reader's two buffer sets, the output batch of images and
 * masks, its copy on the wasm heap). Kept for the whole run: trainId, pulseId, nPeaks per hit (24 bytes a hit).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { InputError } from "../errors.ts";
import { ensureGroup, firstLine, h5, type H5Dataset, type H5File } from "../exdf/h5.ts";
import { Run } from "../exdf/run.ts";
import { ReduReader } from "./redu.ts";
import { FrameReader } from "../exdf/frames.ts";
import { buildDir, checkOut, checkpoint, releaseOut } from "../app/outdir.ts";
import { type DetectorLayout, loadLayout, writeGeom } from "../exdf/geometry.ts";

export interface CxiOptions {
  /** A CrystFEL .geom file; default: the layout localise used (summary.json), else the built-in one. */
  geometry?: string;
  /** Detector distance (m) and photon energy (eV) for det.geom, where the layout lacks them. */
  clen?: number;
  photonEnergy?: number;
  /** gzip level of the image data (0: none). */
  gzip?: number;
  /** Image data per batch, all modules together (bytes). */
  batchBytes?: number;
  force?: boolean;
}

export interface CxiRecord {
  run: string;
  from: string;
  out: string;
  detector: string;
  modules: number[];
  layout: string;
  hits: number;
  /** Peaks listed in the CXI file (all hits), and found by localise (more when a table was full). */
  peaksListed: number;
  peaksFound: number;
  files: { cxi: string; geom: string; list: string };
  seconds: number;
}

/** Where the REDU rows of the hits are, and what the frames need. */
interface Hits {
  detector: string;
  modules: number[];
  maxPeaks: number;
  trainId: number[];
  pulseId: number[];
  nPeaks: number[];
  /** Frame of each hit in the REDU file(s), read through `redu`. */
  frame: number[];
  redu: ReduReader;
  layout?: string;
}

interface Summary {
  detector?: { name?: string; modules?: number[] };
  layout?: string;
}

/** Frames of the REDU file read at a time for the hits (64k). */
const HIT_WINDOW = 1 << 16;

/** The hits of a localise output directory (its REDU files), in (trainId, pulseId) order. */
function readHits(redu: ReduReader, dir: string, summary: Summary): Hits {
  for (
    const k of [
      "trainId",
      "pulseId",
      "frameLit",
      "nPeaks",
      "peakModule",
      "peakSs",
      "peakFs",
      "peakIntensity",
      "peakSnr",
    ]
  ) {
    const f = redu.missing(k);
    if (f) {
      throw new InputError(
        f.path,
        `localise REDU file without data.${k} (an older localise?): rerun localise`,
      );
    }
  }
  let maxPeaks = -1;
  for (const { file, shape } of redu.entryShapes("peakFs")) {
    if (maxPeaks >= 0 && shape[0] !== maxPeaks) {
      throw new InputError(file.path, `peak table width ${shape[0]} differs from ${maxPeaks} in other files`);
    }
    maxPeaks = shape[0];
  }
  const modules = summary.detector?.modules ?? redu.modules();
  if (!modules) throw new InputError(dir, "no module list (summary.json detector.modules, or REDU modules)");
  // The hits' rows, ids and peak counts, read a window of frames at a time: memory per hit, not per frame.
  const hit: { frame: number; trainId: number; pulseId: number; nPeaks: number }[] = [];
  const nPeaks = new Uint32Array(HIT_WINDOW);
  for (const w of redu.frameWindows(HIT_WINDOW)) {
    redu.read("nPeaks", w.start, w.n, nPeaks);
    for (let i = 0; i < w.n; i++) {
      if (w.frameLit[i]) {
        hit.push({ frame: w.start + i, trainId: w.trainId[i], pulseId: w.pulseId[i], nPeaks: nPeaks[i] });
      }
    }
  }
  hit.sort((a, b) => a.trainId - b.trainId || a.pulseId - b.pulseId);
  return {
    detector: summary.detector?.name ?? redu.detector,
    modules,
    maxPeaks,
    trainId: hit.map((h) => h.trainId),
    pulseId: hit.map((h) => h.pulseId),
    nPeaks: hit.map((h) => h.nPeaks),
    frame: hit.map((h) => h.frame),
    redu,
    layout: summary.layout,
  };
}

/** Write the CXI file, geometry and list of the hits of `from` (a localise output of `runPath`) into `out`. */
export async function writeCxi(
  runPath: string,
  from: string,
  out: string,
  opts: CxiOptions = {},
): Promise<CxiRecord> {
  const t0 = performance.now();
  checkOut(out, {
    force: !!opts.force,
    inputs: [{ path: runPath, what: "input run" }, { path: from, what: "localise output" }],
  });
  try {
    if (!fs.existsSync(from) || !fs.statSync(from).isDirectory()) {
      throw new InputError(from, "localise output directory not found");
    }
    let summary: Summary = {};
    const sp = path.join(from, "summary.json");
    if (fs.existsSync(sp)) {
      try {
        summary = JSON.parse(fs.readFileSync(sp, "utf8"));
      } catch (e) {
        throw new InputError(sp, `cannot read: ${firstLine(e)}`);
      }
    }
    const redu = await ReduReader.open(from);
    try {
      const hits = readHits(redu, from, summary);
      const run = await Run.open(runPath);
      try {
        const det = run.detectors.find((d) => d.name === hits.detector);
        if (!det) {
          throw new InputError(runPath, `no detector ${hits.detector} (the localise output's) in this run`);
        }
        const geomPath = opts.geometry ??
          (hits.layout && !hits.layout.startsWith("default ") && fs.existsSync(hits.layout)
            ? hits.layout
            : undefined);
        const layout = loadLayout(geomPath, det.type);
        for (const m of hits.modules) {
          if (!layout.panels.some((p) => p.module === m)) {
            throw new InputError(layout.source, `the layout has no panels for module ${m}`);
          }
        }
        const reader = new FrameReader(det, {
          modules: hits.modules,
          mask: true,
          batchBytes: Math.max(1, Math.floor((opts.batchBytes ?? 128 * 2 ** 20) / hits.modules.length)),
        });
        // The reader's module order is the detector's; the stack follows the localise output's.
        const order = hits.modules.map((m) => reader.modules.findIndex((x) => x.module === m));
        // Each hit's frame in the run: the run's frame ids walked a window at a time, looked up among the hits
        // (memory per hit, not per frame of the run).
        const hitOf = new Map<number, Map<number, number>>();
        hits.trainId.forEach((t, i) => {
          if (!hitOf.has(t)) hitOf.set(t, new Map());
          if (!hitOf.get(t)!.has(hits.pulseId[i])) hitOf.get(t)!.set(hits.pulseId[i], i);
        });
        const frameOf = hits.trainId.map(() => -1);
        for (const w of reader.frameIdWindows()) {
          for (let i = 0; i < w.trainId.length; i++) {
            const h = hitOf.get(w.trainId[i])?.get(w.pulseId[i]);
            if (h !== undefined) frameOf[h] = w.start + i; // the last frame of these ids, as a map of them gave
          }
        }
        // A hit listed twice: the frame of its first listing.
        hits.trainId.forEach((t, i) => (frameOf[i] = frameOf[hitOf.get(t)!.get(hits.pulseId[i])!]));
        const lost = frameOf.indexOf(-1);
        if (lost >= 0) {
          throw new InputError(
            runPath,
            `has no frame train ${hits.trainId[lost]} pulse ${
              hits.pulseId[lost]
            }, a hit of ${from} (another run?)`,
          );
        }
        const dir = path.resolve(out);
        return await buildDir(dir, async (tmp) => {
          const written = await writeFile(
            path.join(tmp, "hits.cxi"),
            reader,
            order,
            frameOf,
            hits,
            layout,
            opts,
          );
          fs.writeFileSync(
            path.join(tmp, "det.geom"),
            writeGeom(layout, {
              stack: hits.modules,
              data: DATA,
              peakList: RESULT,
              mask: MASK,
              clen: opts.clen,
              photonEnergy: opts.photonEnergy,
            }),
          );
          const cxiFinal = path.join(dir, "hits.cxi");
          fs.writeFileSync(
            path.join(tmp, "hits.lst"),
            frameOf.map((_, i) => `${cxiFinal} //${i}\n`).join(""),
          );
          const rec: CxiRecord = {
            run: path.resolve(runPath),
            from: path.resolve(from),
            out: dir,
            detector: det.name,
            modules: hits.modules,
            layout: layout.source,
            hits: frameOf.length,
            peaksListed: written.listed,
            peaksFound: hits.nPeaks.reduce((a, b) => a + b, 0),
            files: { cxi: cxiFinal, geom: path.join(dir, "det.geom"), list: path.join(dir, "hits.lst") },
            seconds: (performance.now() - t0) / 1000,
          };
          fs.writeFileSync(path.join(tmp, "cxi.json"), JSON.stringify(rec, null, 2) + "\n");
          return rec;
        });
      } finally {
        run.close();
      }
    } finally {
      redu.close();
    }
  } finally {
    releaseOut(out);
  }
}

const DETECTOR = "/entry_1/instrument_1/detector_1";
const DATA = "/entry_1/data_1/data";
const MASK = "/entry_1/data_1/mask";
const RESULT = "/entry_1/result_1";

function create(
  g: ReturnType<typeof ensureGroup>,
  name: string,
  dtype: string,
  shape: number[],
  extra: Record<string, unknown> = {},
): H5Dataset {
  const ds = g.create_dataset({
    name,
    data: new Float32Array(0),
    shape: [0, ...shape.slice(1)],
    dtype,
    maxshape: [null, ...shape.slice(1)],
    chunks: extra.chunks as number[] ?? [Math.max(1, Math.min(shape[0], 1024)), ...shape.slice(1)],
    ...(extra.compression
      ? { compression: "gzip" as const, compression_opts: extra.compression as number }
      : {}),
  });
  if (!ds || ds.shape?.[0] !== 0) throw new Error(`cannot create ${g.path}/${name}`);
  if (shape[0] > 0) ds.resize(shape);
  return ds;
}

async function writeFile(
  file: string,
  reader: FrameReader,
  order: number[],
  frameOf: number[],
  hits: Hits,
  layout: DetectorLayout,
  opts: CxiOptions,
): Promise<{ listed: number }> {
  const lib = await h5();
  const nHits = frameOf.length;
  const nMod = order.length;
  const ssM = layout.moduleSs, fsM = layout.moduleFs;
  const px = reader.pixels;
  if (px !== ssM * fsM) throw new Error(`module image ${px} pixels, layout ${ssM} x ${fsM}`);
  const maxPeaks = Math.max(1, hits.maxPeaks);
  const f: H5File = new lib.File(file, "w");
  let listed = 0;
  try {
    f.create_dataset({ name: "cxi_version", data: new Int32Array([150]) });
    const entry = ensureGroup(f, "/entry_1");
    const detG = ensureGroup(f, DETECTOR);
    const res = ensureGroup(f, RESULT);
    const data = create(detG, "data", "<f", [nHits, nMod * ssM, fsM], {
      chunks: [1, nMod * ssM, fsM],
      compression: opts.gzip ?? 0,
    });
    data.create_attribute("axes", "experiment_identifier:y:x");
    const mask = create(detG, "mask", "<I", [nHits, nMod * ssM, fsM], {
      chunks: [1, nMod * ssM, fsM],
      compression: Math.max(1, opts.gzip ?? 0),
    });
    mask.create_attribute("axes", "experiment_identifier:y:x");
    detG.create_dataset({ name: "module_identifier", data: Int32Array.from(hits.modules) });
    entry.create_soft_link(DETECTOR, "data_1");
    const tid = BigUint64Array.from(hits.trainId, BigInt);
    const pid = BigUint64Array.from(hits.pulseId, BigInt);
    entry.create_dataset({ name: "trainId", data: tid, shape: [nHits], dtype: "<Q" });
    entry.create_dataset({ name: "pulseId", data: pid, shape: [nHits], dtype: "<Q" });
    const cells = reader.frameIds.cellId;
    entry.create_dataset({ name: "cellId", data: Int32Array.from(frameOf, (k) => cells[k]), shape: [nHits] });
    if (nHits) {
      entry.create_dataset({
        name: "experiment_identifier",
        data: hits.trainId.map((t, i) => `${t}:${hits.pulseId[i]}`),
      });
    }
    const listedN = Int32Array.from(hits.nPeaks, (n) => Math.min(n, hits.maxPeaks));
    res.create_dataset({ name: "nPeaks", data: listedN, shape: [nHits], dtype: "<i" });
    res.create_dataset({
      name: "nPeaksAll",
      data: Int32Array.from(hits.nPeaks),
      shape: [nHits],
      dtype: "<i",
    });
    const peakDs = ["peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakSNR"].map((n) =>
      create(res, n, "<f", [nHits, maxPeaks])
    );

    // Batches of hits: runs of consecutive frames of the run read together.
    const per = reader.framesPerBatch;
    const img = new Float32Array(Math.min(per, Math.max(nHits, 1)) * nMod * px);
    const msk = new Uint32Array(img.length);
    let h0 = 0;
    while (h0 < nHits) {
      const h1 = Math.min(nHits, h0 + per);
      let h = h0;
      while (h < h1) {
        let n = 1;
        while (h + n < h1 && frameOf[h + n] === frameOf[h] + n) n++;
        const b = reader.read(frameOf[h], n);
        for (let i = 0; i < n; i++) {
          for (let k = 0; k < nMod; k++) {
            const src = b.modules[order[k]];
            img.set(src.data.subarray(i * px, (i + 1) * px), ((h - h0 + i) * nMod + k) * px);
            msk.set(src.mask!.subarray(i * px, (i + 1) * px), ((h - h0 + i) * nMod + k) * px);
          }
        }
        h += n;
        await checkpoint();
      }
      const nb = h1 - h0;
      data.write_slice([[h0, h1], [], []], img.subarray(0, nb * nMod * px));
      mask.write_slice([[h0, h1], [], []], msk.subarray(0, nb * nMod * px));
      // The peak rows of these hits, from the REDU file.
      const mod = new Uint16Array(hits.maxPeaks);
      const ss = new Float32Array(hits.maxPeaks);
      const fsC = new Float32Array(hits.maxPeaks);
      const inten = new Float32Array(hits.maxPeaks);
      const snr = new Float32Array(hits.maxPeaks);
      const out = [0, 1, 2, 3].map(() => new Float32Array(nb * maxPeaks));
      for (let i = 0; i < nb; i++) {
        const j = h0 + i;
        const at = (key: string, arr: Float32Array | Uint16Array) =>
          hits.redu.read(key, hits.frame[j], 1, arr);
        at("peakModule", mod);
        at("peakSs", ss);
        at("peakFs", fsC);
        at("peakIntensity", inten);
        at("peakSnr", snr);
        const np = listedN[j];
        for (let p = 0; p < np; p++) {
          const k = hits.modules.indexOf(mod[p]);
          if (k < 0) {
            throw new InputError(
              hits.redu.fileOf(hits.frame[j]).path,
              `peak on module ${mod[p]}, not in the module list`,
            );
          }
          out[0][i * maxPeaks + p] = fsC[p];
          out[1][i * maxPeaks + p] = k * ssM + ss[p];
          out[2][i * maxPeaks + p] = inten[p];
          out[3][i * maxPeaks + p] = snr[p];
        }
        listed += np;
      }
      peakDs.forEach((ds, q) => ds.write_slice([[h0, h1], []], out[q]));
      h0 = h1;
    }
  } finally {
    f.close();
  }
  return { listed };
}

export function formatCxi(r: CxiRecord): string {
  return [
    `${r.hits} hit frames of ${r.detector} (modules ${r.modules.join(", ")}), ${r.peaksListed} peaks listed`,
    `  ${r.files.cxi}`,
    `  ${r.files.geom} (layout ${r.layout})`,
    `  ${r.files.list}`,
    `indexamajig -i ${r.files.list} -g ${r.files.geom} --peaks=cxi -o hits.stream`,
  ].join("\n");
}
