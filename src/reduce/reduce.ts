/**
 * `reduce RUN --from LOCALISE_OUT --out DIR`: delete the dark frames of a run. See docs/dark-frames.md.
 *
 * Spec:
 * - The decision: `data.frameLit` of the localise REDU file (`<DET>/REDU/LOCALISE:output`), per
 *   (trainId, pulseId); module selection and ROIs from its summary.json. A selection found on a CORR run
 *   applies to the RAW run of the same frames (matched on trainId, pulseId). A frame the selection does not
 *   list counts as dark (and is reported as unmatched).
 * - Every `*.h5` file of RUN gets an output file of the same name in DIR:
 *   - files holding modules of the selected detector: each module source keeps only its lit frames (plus
 *     every Nth dark frame with `keepDark`), in every per-frame dataset (the datasets of the module's
 *     `image` group, JUNGFRAU `data`, whose first axis is the rows of the image data), bit-identical, with
 *     the source's dtype, chunk shape and deflate filter; `INDEX/<src>/<group>/{first,count}` (or legacy
 *     first/last/status) recomputed; everything else (METADATA, INDEX/trainId, per-train groups, CONTROL,
 *     RUN, attributes) copied as is, soft links (the legacy `DET/<m>CH0:xtdf` links of newer CORR files)
 *     recreated as links. JUNGFRAU stores a train's memory cells in one entry: an entry is kept when one of
 *     its cells is.
 *   - other files are copied byte for byte.
 *   - `modules: "selected"`: module files of modules localise did not select are left out.
 *   - `roi`: the image-shaped per-frame datasets (data, mask, gain) are replaced, per ROI box k of the module,
 *     by `<group>/roi<k>/<name>` of shape (N, ..., ss1 - ss0, fs1 - fs0), with attribute `box` =
 *     [ss0, fs0, ss1, fs1] on the dataset and on the roi<k> group.
 * - Bounded memory: data move through one reused wasm-heap buffer of at most `sliceBytes`, a run of
 *   consecutive kept rows at a time; no image dataset is ever read whole.
 * - Safety: RUN is opened read-only and never written; DIR inside RUN (or holding RUN or the localise output)
 *   is refused, an existing DIR without `force` too. Everything is written into a temporary directory beside
 *   DIR (each file under a temporary name until complete), renamed to DIR at the end; an error or a signal
 *   removes it: an interrupted reduce leaves no file under a final name.
 * - DIR/reduction.json records bytes in / out, the ratio, frames kept per module, options and notes.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { InputError } from "../errors.ts";
import {
  type CompressionRecord,
  Compressor,
  type CompressorOptions,
  formatCompression,
  parseCompress,
} from "../compress/compressor.ts";
import { h5, readAll } from "../exdf/h5.ts";
import { type Detector, type ModuleFile, readNumbers, Run, type RunFile, runFileName } from "../exdf/run.ts";
import { indexRows } from "../exdf/keydata.ts";
import { buildDir, checkOut, copyFile, realPath, releaseOut } from "../app/outdir.ts";
import { Copier } from "../exdf/copy.ts";
import { type CopyProgress, datasetsUnder, dsShape, type Special, walkCopy } from "../exdf/walk.ts";
import type { Box } from "../exdf/detectors.ts";
import { type LocaliseSummary, readLocaliseOutput } from "./selection.ts";
import type { Selection } from "../localise/redu.ts";
import type { Wasm } from "../exdf/wasm.ts";
import { fileSize, MB } from "../app/format.ts";

export interface ReduceOptions {
  /** "selected": leave out the module files of modules localise did not select. */
  modules?: "all" | "selected";
  /** Keep only the ROI boxes of each module. */
  roi?: boolean;
  /** Keep every Nth dark frame of each module (0: none). */
  keepDark?: number;
  /** Replace an existing DIR. */
  force?: boolean;
  /** The run is a copy of the one localise ran on (another path, same run): apply the selection anyway. */
  runCopy?: boolean;
  /**
   * Frames of the run that the selection does not list (localise ran on a train range or a copy that
   * grew): "keep" them or "delete" them. Unset: such a selection is refused.
   */
  unlisted?: "keep" | "delete";
  /** Accept a result that keeps no frame at all (else refused). */
  allowEmpty?: boolean;
  /** Largest block of data moved at once (default 32 MiB). */
  sliceBytes?: number;
  /** Called as files and datasets are done; may return a promise (awaited). */
  progress?: (ev: ReduceProgress) => void | Promise<void>;
  /**
   * Compress the detector datasets (docs/compression.md): "lossless:<filter>", "round:<m>[,<p>]" or
   * "sz:<error bound>".
   */
  compress?: string;
  /** The lossless stage of round and sz (default zstd). */
  compressFilter?: string;
  /** Backend of the SZ integer stage (default auto) and the quality sample size. */
  compressBackend?: CompressorOptions["backend"];
  qualityFrames?: number;
}

export type ReduceProgress = CopyProgress;

export interface ModuleReduction {
  module: number;
  source: string;
  files: string[];
  /** Files left out (--modules selected). */
  dropped: boolean;
  selected: boolean;
  framesIn: number;
  framesKept: number;
  litKept: number;
  darkKept: number;
  /** Frames the selection does not list (refused unless `unlisted` says keep or delete). */
  unmatched: number;
  /** Of those, kept (`unlisted: "keep"`). */
  unlistedKept: number;
  /** Rows left out because they belong to no train of the index (or disagree with it). */
  unindexed: number;
  rois: [number, number, number, number][];
}

export interface FileReduction {
  name: string;
  action: "reduced" | "copied" | "dropped";
  bytesIn: number;
  bytesOut: number;
}

export interface ReductionRecord {
  run: string;
  from: string;
  out: string;
  detector: string;
  level: "raw" | "corr";
  options: { modules: "all" | "selected"; roi: boolean; keepDark: number };
  bytesIn: number;
  bytesOut: number;
  /** bytesIn / bytesOut. */
  ratio: number;
  framesIn: number;
  framesKept: number;
  modules: ModuleReduction[];
  files: FileReduction[];
  notes: string[];
  seconds: number;
  /** With `compress`: ratio, quality and speed of the compressed datasets. */
  compression?: CompressionRecord;
}

// -----------------------------------------------------------------------------------------------------
// Planning a module file

interface ModulePlanInFile {
  module: number;
  mf: ModuleFile;
  /** Rows of the image data. */
  rows: number;
  kept: Int32Array;
  /** New index counts per train of the file. */
  counts: number[];
  boxes: Box[];
}

interface ModuleState {
  rec: ModuleReduction;
  darkSeen: number;
}

function planModule(
  det: Detector,
  mf: ModuleFile,
  sel: Selection,
  keepDark: number,
  keepUnlisted: boolean,
  st: ModuleState,
): { kept: Int32Array; counts: number[] } {
  const f = mf.file;
  const N = mf.rows;
  const jf = det.type === "JUNGFRAU";
  const cells = det.cellsPerEntry;
  const tids = jf ? null : readNumbers(f, `${mf.groupPath}/trainId`);
  const pids = jf ? null : readNumbers(f, `${mf.groupPath}/pulseId`);
  const kept: number[] = [];
  const counts: number[] = [];
  let inIndex = 0;
  for (const { trainId: t, first: a, count: c } of indexRows(f, mf.index, N)) {
    let n = 0;
    for (let r = a; r < a + c; r++) {
      inIndex++;
      // JUNGFRAU: one entry holds every memory cell (frames = cells); the entry is kept when a cell is lit.
      let lit: number;
      let litCells = 0, unlistedCells = 0;
      if (jf) {
        lit = -1;
        for (let k = 0; k < cells; k++) {
          const v = sel.match(t, k);
          if (v < 0) unlistedCells++;
          if (v === 1) {
            lit = 1;
            litCells++;
          } else if (v === 0 && lit < 0) lit = 0;
        }
        if (lit !== 1 && unlistedCells) lit = -1;
        st.rec.framesIn += cells;
      } else {
        if (tids![r] !== 0 && tids![r] !== t) {
          st.rec.unindexed++;
          continue;
        }
        st.rec.framesIn++;
        lit = sel.match(t, pids![r]);
        unlistedCells = lit === -1 ? 1 : 0;
        litCells = lit === 1 ? 1 : 0;
      }
      const per = jf ? cells : 1;
      let keep = lit === 1;
      if (lit === 1) st.rec.litKept += litCells;
      else if (lit === -1 && keepUnlisted) {
        keep = true;
        st.rec.unmatched += unlistedCells;
        st.rec.unlistedKept += per;
      } else {
        if (lit === -1) st.rec.unmatched += unlistedCells;
        if (keepDark > 0 && st.darkSeen++ % keepDark === 0) {
          keep = true;
          st.rec.darkKept += per;
        }
      }
      if (keep) {
        kept.push(r);
        n++;
      }
    }
    counts.push(n);
  }
  st.rec.unindexed += Math.max(0, N - inIndex);
  st.rec.framesKept += kept.length * (jf ? cells : 1);
  return { kept: Int32Array.from(kept), counts };
}

async function reduceFile(
  cp: Copier,
  src: RunFile,
  plans: ModulePlanInFile[],
  det: Detector,
  roi: boolean,
  tmpPath: string,
  progress: ReduceOptions["progress"],
  compressor?: Compressor,
): Promise<void> {
  const lib = cp.h5lib;
  const s = src.h5;
  const dst = new lib.File(tmpPath, "w");
  if (!dst.file_id || dst.file_id < 0n) throw new Error(`cannot create ${tmpPath}`);
  try {
    // Per-frame datasets and index rewrites.
    const special = new Map<string, Special>();
    const imageShape = det.imageShape;
    for (const pl of plans) {
      const g = pl.mf.groupPath;
      for (const p of datasetsUnder(s, g)) {
        const shape = dsShape(s, p);
        if (shape.length === 0 || shape[0] !== pl.rows) {
          cp.notes.add(`${p}: first axis is not the frame axis, copied unchanged`);
          continue;
        }
        const imageLike = shape.length >= 3 &&
          shape[shape.length - 2] === imageShape[0] && shape[shape.length - 1] === imageShape[1];
        // Compression (docs/compression.md): image-shaped per-frame datasets.
        const m = imageLike && compressor ? cp.meta(s, p) : null;
        const k = p.lastIndexOf("/");
        const parent = p.slice(0, k), name = p.slice(k + 1);
        const names = roi && imageLike ? pl.boxes.map((_, i) => `${parent}/roi${i}/${name}`) : [p];
        const ce = m && compressor
          ? compressor.begin(
            pl.module,
            src.name,
            p,
            g,
            { type: m.type, size: m.size, signed: m.signed, shape: m.shape ?? [] },
            pl.kept,
            roi ? names.map((q, i) => ({ path: q, box: pl.boxes[i] })) : [{ path: p }],
          )
          : null;
        if (ce && compressor && ce.kind === "sz") {
          special.set(
            p,
            () => compressor.measureWrite(ce, dst, tmpPath, () => compressor.writeSz(ce, s, dst)),
          );
        } else if (roi && imageLike) {
          const copy = async () => {
            await cp.copyRois(s, dst, p, pl.kept, pl.boxes, names, ce?.hook);
            pl.boxes.forEach((box, i) => {
              const boxArr = Int32Array.from(box);
              for (const q of [names[i], `${parent}/roi${i}`]) {
                const e = dst.get(q) as unknown as {
                  attrs: Record<string, unknown>;
                  create_attribute: (...a: unknown[]) => void;
                };
                if (!("box" in e.attrs)) e.create_attribute("box", boxArr, [4], "<i");
              }
            });
          };
          special.set(p, ce && compressor ? () => compressor.measureWrite(ce, dst, tmpPath, copy) : copy);
        } else if (ce && compressor) {
          special.set(
            p,
            () =>
              compressor.measureWrite(
                ce,
                dst,
                tmpPath,
                () => cp.copyRows(s, dst, p, p, pl.kept, m!, ce.hook),
              ),
          );
        } else {
          special.set(p, () => cp.copyRows(s, dst, p, p, pl.kept));
        }
      }
      // The index of the module's group.
      const ig = `INDEX/${g.slice("INSTRUMENT/".length)}`;
      const nT = src.trainIds.length;
      const first = new Array<number>(nT);
      let acc = 0;
      for (let i = 0; i < nT; i++) {
        first[i] = acc;
        acc += pl.counts[i];
      }
      const put = (key: string, vals: (i: number) => number) => {
        const p = `${ig}/${key}`;
        if (!s.get(p)) return;
        special.set(p, () => {
          const orig = readAll(s, p);
          const out = orig.slice();
          const big = orig instanceof BigUint64Array || orig instanceof BigInt64Array;
          for (let i = 0; i < nT && i < out.length; i++) {
            (out as unknown as (number | bigint)[])[i] = big ? BigInt(vals(i)) : vals(i);
          }
          cp.createLike(s, dst, p, out);
        });
      };
      put("first", (i) => first[i]);
      put("count", (i) => pl.counts[i]);
      put("last", (i) => (pl.counts[i] > 0 ? first[i] + pl.counts[i] - 1 : first[i]));
      put("status", (i) => (pl.counts[i] > 0 ? 1 : 0));
    }

    cp.copyAttrs(s, dst, "");
    await walkCopy(cp, s, dst, src.name, special, progress);
  } finally {
    dst.close();
  }
}

// -----------------------------------------------------------------------------------------------------
// reduce

/** ROI boxes clipped to the module image; empty ones left out. */
function clampBoxes(boxes: readonly Box[], [SS, FS]: [number, number]): Box[] {
  const out: Box[] = [];
  for (const b of boxes) {
    const c: Box = [Math.max(0, b[0]), Math.max(0, b[1]), Math.min(SS, b[2]), Math.min(FS, b[3])];
    if (c.every(Number.isInteger) && c[2] > c[0] && c[3] > c[1]) out.push(c);
  }
  return out;
}

/** Run numbers and data levels (RAW, CORR, ...) named by files `<LEVEL>-R<run>-...h5` of a run path. */
function namingOf(p: string): { runs: Set<number>; levels: Set<string> } {
  let names: string[] = [];
  try {
    names = fs.statSync(p).isDirectory() ? fs.readdirSync(p) : [path.basename(p)];
  } catch {
    names = [];
  }
  const runs = new Set<number>(), levels = new Set<string>();
  for (const n of names) {
    const r = n.endsWith(".h5") ? runFileName(n) : null;
    if (!r || r.run === 0) continue;
    levels.add(r.prefix.toUpperCase());
    runs.add(r.run);
  }
  return { runs, levels };
}

/**
 * The selection must come from this run: localise's summary.json names the run it ran on. Another run
 * number is refused. The same run at another data level (a CORR selection on the RAW run) is the point of
 * reducing RAW data and is accepted; another path at the same level (a copy) only with runCopy. The frames
 * are matched afterwards, one by one.
 */
function checkSameRun(runAbs: string, fromAbs: string, summary: LocaliseSummary, runCopy: boolean): void {
  if (!summary.run) return;
  if (realPath(summary.run) === realPath(runAbs)) return;
  const mine = namingOf(runAbs), theirs = namingOf(fromAbs);
  const sameRun = [...theirs.runs].some((r) => mine.runs.has(r));
  if (mine.runs.size && theirs.runs.size && !sameRun) {
    throw new InputError(
      fromAbs,
      `the selection was made on run ${[...theirs.runs].join(", ")} (${summary.run}), not on run ${
        [...mine.runs].join(", ")
      } (${runAbs})`,
    );
  }
  const otherLevel = sameRun && ![...theirs.levels].some((l) => mine.levels.has(l));
  if (!otherLevel && !runCopy) {
    throw new InputError(
      fromAbs,
      `the selection was made on ${summary.run}, not on ${runAbs}; if the run is a copy of it, say --run-copy`,
    );
  }
}

/** Delete the dark frames of RUN as the localise output in fromDir says; write the reduced run into outDir. */
export async function reduce(
  runPath: string,
  fromDir: string,
  outDir: string,
  opts: ReduceOptions = {},
): Promise<ReductionRecord> {
  const t0 = performance.now();
  const modulesOpt = opts.modules ?? "all";
  if (modulesOpt !== "all" && modulesOpt !== "selected") {
    throw new InputError(undefined, `--modules must be all or selected, not ${modulesOpt}`);
  }
  const keepDark = opts.keepDark ?? 0;
  if (!Number.isInteger(keepDark) || keepDark < 0) {
    throw new InputError(undefined, `--keep-dark must be an integer >= 0, not ${keepDark}`);
  }
  const runAbs = path.resolve(runPath);
  const fromAbs = path.resolve(fromDir);
  const out = path.resolve(outDir);
  checkOut(out, {
    force: !!opts.force,
    inputs: [{ path: runAbs, what: "input run" }, { path: fromAbs, what: "localise output" }],
  });
  const method = opts.compress !== undefined
    ? parseCompress(opts.compress, opts.compressFilter)
    : opts.compressFilter !== undefined
    ? (() => {
      throw new InputError(undefined, "--compress-filter needs --compress round:... or sz:...");
    })()
    : undefined;
  if (method?.kind === "sz" && opts.roi) {
    throw new InputError(undefined, "--compress sz: is not supported with --roi (use round: or lossless:)");
  }

  const { selection, summary, detector: detName } = await readLocaliseOutput(fromAbs);
  if (opts.roi && !summary.modules) {
    throw new InputError(path.join(fromAbs, "summary.json"), "--roi needs the localise summary.json (ROIs)");
  }
  if (modulesOpt === "selected" && !summary.modules) {
    throw new InputError(
      path.join(fromAbs, "summary.json"),
      "--modules selected needs the localise summary.json",
    );
  }
  if (opts.unlisted !== undefined && opts.unlisted !== "keep" && opts.unlisted !== "delete") {
    throw new InputError(undefined, `--unlisted must be keep or delete, not ${opts.unlisted}`);
  }
  checkSameRun(runAbs, fromAbs, summary, !!opts.runCopy);
  const lib = await h5();
  const mod = (await lib.ready) as unknown as Wasm;
  const run = await Run.open(runAbs);
  const cp = new Copier(lib, mod, opts.sliceBytes ?? 32 * 2 ** 20);
  let compressor: Compressor | undefined;
  try {
    // Never delete frames of a run whose INDEX cannot be trusted.
    const problems = run.indexProblems();
    if (problems.length) {
      throw new InputError(
        undefined,
        `${problems[0]}${
          problems.length > 1 ? ` (and ${problems.length - 1} more)` : ""
        }; reduce refuses an inconsistent INDEX`,
      );
    }
    if (method) {
      compressor = await Compressor.create(method, {
        backend: opts.compressBackend,
        qualityFrames: opts.qualityFrames,
      });
    }
    if (detName && !run.detectors.some((d) => d.name === detName)) {
      throw new InputError(
        fromAbs,
        `the selection is for detector ${detName}; ${runPath} has ${
          run.detectors.map((d) => d.name).join(", ") || "no detector"
        }`,
      );
    }
    const det = run.detector(detName ?? undefined);
    const notes: string[] = [];
    const sumMods = new Map((summary.modules ?? []).map((m) => [m.module, m]));
    const states = new Map<number, ModuleState>();
    for (const m of det.modules) {
      const sm = sumMods.get(m.module);
      const selected = summary.modules ? !!sm?.selected : true;
      states.set(m.module, {
        darkSeen: 0,
        rec: {
          module: m.module,
          source: m.source,
          files: m.files.map((f) => f.file.name),
          dropped: modulesOpt === "selected" && !selected,
          selected,
          // Dropped modules are not read: their frames as the index counts them.
          framesIn: modulesOpt === "selected" && !selected ? m.frames : 0,
          framesKept: 0,
          litKept: 0,
          darkKept: 0,
          unmatched: 0,
          unlistedKept: 0,
          unindexed: 0,
          rois: clampBoxes(sm?.rois ?? [], det.imageShape),
        },
      });
    }
    // Module files by run file.
    const byFile = new Map<RunFile, { module: number; mf: ModuleFile }[]>();
    for (const m of det.modules) {
      for (const mf of m.files) {
        if (!byFile.has(mf.file)) byFile.set(mf.file, []);
        byFile.get(mf.file)!.push({ module: m.module, mf });
      }
    }

    // Plan every module file first (frame IDs only): the guards below see the whole run's counts before
    // anything is written. The kept rows are not kept (4 bytes a kept module frame): each file is planned again
    // when it is written, from the module's dark count where the file began (the same rows).
    const keepUnlisted = opts.unlisted === "keep";
    const darkStart = new Map<ModuleFile, number>();
    for (const [, mods] of byFile) {
      if (mods.every((m) => states.get(m.module)!.rec.dropped)) continue;
      for (const { module, mf } of mods) {
        const st = states.get(module)!;
        darkStart.set(mf, st.darkSeen);
        planModule(det, mf, selection, keepDark, keepUnlisted, st);
      }
    }
    const plansOf = (f: RunFile): ModulePlanInFile[] =>
      byFile.get(f)!.map(({ module, mf }) => {
        // Counted by the first pass: this one's counts go to a scratch record.
        const scratch = { rec: { ...states.get(module)!.rec }, darkSeen: darkStart.get(mf)! };
        const { kept, counts } = planModule(det, mf, selection, keepDark, keepUnlisted, scratch);
        return { module, mf, rows: mf.rows, kept, counts, boxes: states.get(module)!.rec.rois };
      });
    const planned = [...states.values()].map((s) => s.rec).filter((m) => !m.dropped);
    const unlisted = planned.reduce((a, m) => a + m.unmatched, 0);
    const framesIn = planned.reduce((a, m) => a + m.framesIn, 0);
    if (unlisted > 0 && opts.unlisted === undefined) {
      throw new InputError(
        fromAbs,
        `the selection does not list ${unlisted} of the run's ${framesIn} frames (localise ran on part of the run?); ` +
          "rerun localise on the whole run, or say --unlisted keep|delete",
      );
    }
    const absent = selection.frames - selection.matched;
    if (absent > 0) {
      throw new InputError(
        fromAbs,
        `the selection lists ${absent} frames that ${runPath} does not have: it was made on another run`,
      );
    }
    const keptTotal = planned.reduce((a, m) => a + m.framesKept, 0);
    if (keptTotal === 0 && framesIn > 0 && !opts.allowEmpty) {
      throw new InputError(
        fromAbs,
        `the selection keeps none of the run's ${framesIn} frames; say --allow-empty to write a run without them`,
      );
    }

    return await buildDir(out, async (tmpDir) => {
      const files: FileReduction[] = [];
      const sorted = [...run.files].sort((a, b) => a.name.localeCompare(b.name));
      for (const f of sorted) {
        const bytesIn = fileSize(f.path);
        const final = path.join(tmpDir, f.name);
        const tmp = path.join(tmpDir, `.${f.name}.tmp-${process.pid}`);
        const mods = byFile.get(f);
        await opts.progress?.({ file: f.name, phase: "start" });
        if (!mods) {
          await copyFile(f.path, tmp);
          fs.renameSync(tmp, final);
          files.push({ name: f.name, action: "copied", bytesIn, bytesOut: fileSize(final) });
        } else if (mods.every((m) => states.get(m.module)!.rec.dropped)) {
          files.push({ name: f.name, action: "dropped", bytesIn, bytesOut: 0 });
        } else {
          await reduceFile(cp, f, plansOf(f), det, !!opts.roi, tmp, opts.progress, compressor);
          fs.renameSync(tmp, final);
          await compressor?.measure(f.h5, final);
          files.push({ name: f.name, action: "reduced", bytesIn, bytesOut: fileSize(final) });
        }
        await opts.progress?.({ file: f.name, phase: "done" });
      }
      const modules = [...states.values()].map((s) => s.rec);
      const unmatched = modules.reduce((a, m) => a + m.unmatched, 0);
      if (unmatched) {
        notes.push(
          `${unmatched} frames are not in the selection: ${
            opts.unlisted === "keep" ? "kept" : "deleted (--unlisted delete)"
          }`,
        );
      }
      const unindexed = modules.reduce((a, m) => a + m.unindexed, 0);
      if (unindexed) notes.push(`${unindexed} rows belong to no train of the index (padding): left out`);
      notes.push(...cp.notes);
      const bytesIn = files.reduce((a, f) => a + f.bytesIn, 0);
      const bytesOut = files.reduce((a, f) => a + f.bytesOut, 0);
      const record: ReductionRecord = {
        run: runAbs,
        from: fromAbs,
        out,
        detector: det.name,
        level: det.raw ? "raw" : "corr",
        options: { modules: modulesOpt, roi: !!opts.roi, keepDark },
        bytesIn,
        bytesOut,
        ratio: bytesOut > 0 ? bytesIn / bytesOut : Infinity,
        framesIn: modules.reduce((a, m) => a + m.framesIn, 0),
        framesKept: modules.reduce((a, m) => a + (m.dropped ? 0 : m.framesKept), 0),
        modules,
        files,
        notes,
        seconds: (performance.now() - t0) / 1000,
      };
      if (compressor) record.compression = compressor.record();
      fs.writeFileSync(path.join(tmpDir, "reduction.json"), JSON.stringify(record, null, 2) + "\n");
      return record;
    });
  } finally {
    cp.dispose();
    compressor?.dispose();
    run.close();
    releaseOut(out);
  }
}

// -----------------------------------------------------------------------------------------------------
// Command

export function formatReduction(r: ReductionRecord): string {
  const lines = [
    `${r.run} -> ${r.out} (${r.detector}, ${r.level.toUpperCase()})`,
    `bytes in ${(r.bytesIn / MB).toFixed(1)} MB, out ${(r.bytesOut / MB).toFixed(1)} MB, ratio ${
      r.ratio.toFixed(1)
    }x; frames kept ${r.framesKept} of ${r.framesIn}`,
    "module  frames  kept  lit  dark  unmatched  files",
  ];
  for (const m of r.modules) {
    lines.push(
      `${String(m.module).padStart(6)}  ${String(m.framesIn).padStart(6)}  ${
        String(m.dropped ? 0 : m.framesKept).padStart(4)
      }  ${String(m.litKept).padStart(3)}  ${String(m.darkKept).padStart(4)}  ${
        String(m.unmatched).padStart(9)
      }  ${m.dropped ? "dropped" : "kept"}`,
    );
  }
  for (const n of r.notes) lines.push(`note: ${n}`);
  if (r.compression) lines.push(formatCompression(r.compression));
  lines.push(`written: ${r.out} (reduction.json)`);
  return lines.join("\n");
}
