/**
 * EuXFEL's own reader as the judge of every file we write, and its mock writers as the source of test
 * inputs: Debian's python3-extra-data (EXtra-data 1.7) through /usr/bin/python3.
 *
 * - `mockRun(dir, spec)`: a run written by `extra_data.tests.mockdata` (the writers EXtra-data tests
 *   itself with; they pad METADATA and INDEX like the DAQ), then given signal with h5py: in `litFrames`
 *   (per module, frame index in the file) a few bright 3x3 spots on a low background, elsewhere zeros
 *   and noise below the lit threshold. Returns the truth.
 * - `validate(path)`: `extra-data-validate PATH` (exit code and output).
 * - `openRun(dir)`: what `extra_data.RunDirectory(dir)` makes of a directory: trains, sources, and every
 *   key of every source read in full (`.ndarray()`), with its shape and dtype, or the error it raised.
 *
 * Availability: `have("extra-data")` (test/helpers/tools.ts).
 */
import { spawnSync } from "node:child_process";
import { PYTHON } from "./tools.ts";

export interface MockSpec {
  detector: "AGIPD" | "LPD" | "DSSC" | "JUNGFRAU";
  modules: number[];
  trains: number;
  /** Frames per train: one number, or one per train (0: an empty train). */
  framesPerTrain?: number | number[];
  /** RAW (true) or CORR (false, default). */
  raw?: boolean;
  firstTrain?: number;
  /** Trains per sequence file (default: all in one). */
  trainsPerFile?: number;
  /** INDEX/METADATA padding unit (mockdata's chunksize). */
  chunksize?: number;
  formatVersion?: "0.5" | "1.0";
  /** Fraction of frames with spots (seeded). */
  litFraction?: number;
  seed?: number;
  /** Also write an XGM source in a DA file. */
  xgm?: boolean;
  run?: number;
}

export interface MockTruth {
  files: string[];
  /** Per module: [trainId, pulseId] of each frame with spots. */
  lit: Record<number, [number, number][]>;
  frames: number;
}

const MOCK = String.raw`
import sys, json, os
import numpy as np, h5py
from extra_data.tests.mockdata import write_file
from extra_data.tests.mockdata.detectors import AGIPDModule, LPDModule, DSSCModule
from extra_data.tests.mockdata.jungfrau import JUNGFRAUModule
from extra_data.tests.mockdata.xgm import XGM
a = json.loads(sys.argv[1])
d = a["dir"]; os.makedirs(d, exist_ok=True)
det = a["detector"]; raw = a.get("raw", False); fpt = a.get("framesPerTrain", 16)
ntr = a["trains"]; t0 = a.get("firstTrain", 10000); per = a.get("trainsPerFile") or ntr
ck = a.get("chunksize", 32); ver = a.get("formatVersion", "1.0"); run = a.get("run", 238)
rng = np.random.default_rng(a.get("seed", 1)); lf = a.get("litFraction", 0.25)
prefix = "RAW" if raw else "CORR"
files = []; lit = {}; frames = 0
for m in a["modules"]:
    lit[m] = []
    for seq, s0 in enumerate(range(0, ntr, per)):
        n = min(per, ntr - s0)
        if det == "JUNGFRAU":
            name = "%s-R%04d-JNGFR%02d-S%05d.h5" % (prefix, run, m + 1, seq)
            dev = JUNGFRAUModule("SPB_IRDA_JF4M/DET/JNGFR%02d" % (m + 1))
        else:
            cls = {"AGIPD": AGIPDModule, "LPD": LPDModule, "DSSC": DSSCModule}[det]
            dname = {"AGIPD": "SPB_DET_AGIPD1M-1", "LPD": "FXE_DET_LPD1M-1", "DSSC": "SCS_DET_DSSC1M-1"}[det]
            tag = {"AGIPD": "AGIPD", "LPD": "LPD", "DSSC": "DSSC"}[det]
            name = "%s-R%04d-%s%02d-S%05d.h5" % (prefix, run, tag, m, seq)
            fp = np.asarray(fpt[s0:s0 + n], np.uint64) if isinstance(fpt, list) else fpt
            dev = cls("%s/DET/%dCH0" % (dname, m), frames_per_train=fp, raw=raw)
        path = os.path.join(d, name)
        write_file(path, [dev], ntrains=n, firsttrain=t0 + s0, chunksize=ck, format_version=ver)
        files.append(path)
        with h5py.File(path, "r+") as f:
            if det == "JUNGFRAU":
                g = f["INSTRUMENT/SPB_IRDA_JF4M/DET/JNGFR%02d:daqOutput/data" % (m + 1)]
                ds = g["adc"]; N = ds.shape[0]
                tids = g["trainId"][:N]
                for r in range(N):
                    if tids[r] == 0: continue
                    img = np.zeros(ds.shape[1:], "u2")
                    for c in range(ds.shape[1]):
                        frames += 1
                        if rng.random() < lf:
                            for _ in range(4):
                                y, x = rng.integers(8, ds.shape[2] - 8), rng.integers(8, ds.shape[3] - 8)
                                img[c, y-1:y+2, x-1:x+2] = 50
                            lit[m].append([int(tids[r]), c])
                    ds[r] = img
            else:
                g = f["INSTRUMENT/%s:xtdf/image" % dev.device_id]
                ds = g["data"]; N = ds.shape[0]
                tids = g["trainId"][:].reshape(-1); pids = g["pulseId"][:].reshape(-1)
                shp = ds.shape[1:]
                for r in range(N):
                    frames += 1
                    img = (rng.random(shp) * 0.3).astype(ds.dtype) if not raw else np.zeros(shp, ds.dtype)
                    if rng.random() < lf:
                        for _ in range(4):
                            y, x = rng.integers(4, shp[-2] - 4), rng.integers(4, shp[-1] - 4)
                            img[..., y-1:y+2, x-1:x+2] = 50
                        lit[m].append([int(tids[r]), int(pids[r])])
                    ds[r] = img
if a.get("xgm"):
    path = os.path.join(d, "%s-R%04d-DA01-S00000.h5" % (prefix, run))
    write_file(path, [XGM("SA1_XTD2_XGM/DOOCS/MAIN")], ntrains=ntr, firsttrain=t0, chunksize=ck, format_version=ver)
    files.append(path)
print(json.dumps({"files": files, "lit": lit, "frames": frames}))
`;

function py(script: string, args: unknown): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(PYTHON, ["-c", script, JSON.stringify(args)], { encoding: "utf8", maxBuffer: 1 << 28 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Write a run with EXtra-data's mock writers (see the module comment). */
export function mockRun(dir: string, spec: MockSpec): MockTruth {
  const r = py(MOCK, { dir, ...spec });
  if (r.status !== 0) throw new Error(`mock run failed: ${r.stderr}`);
  const t = JSON.parse(r.stdout);
  return {
    files: t.files,
    frames: t.frames,
    lit: Object.fromEntries(Object.entries(t.lit).map(([k, v]) => [Number(k), v as [number, number][]])),
  };
}

/** `extra-data-validate PATH`. */
export function validate(p: string): { ok: boolean; output: string } {
  const r = spawnSync("extra-data-validate", [p], { encoding: "utf8", maxBuffer: 1 << 26 });
  return { ok: r.status === 0, output: `${r.stdout}${r.stderr}`.trim() };
}

const OPEN = String.raw`
import sys, json, warnings, logging
logging.disable(logging.CRITICAL)
import numpy as np
import hdf5plugin  # zstd and the other filters of reduce --compress
from extra_data import RunDirectory, H5File
a = json.loads(sys.argv[1])
out = {"trains": 0, "sources": {}, "errors": [], "warnings": []}
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    try:
        run = (H5File if a["file"] else RunDirectory)(a["path"])
    except Exception as e:
        out["errors"].append("open: %s: %s" % (type(e).__name__, e))
        print(json.dumps(out)); sys.exit(0)
    out["trains"] = len(run.train_ids)
    out["trainIds"] = [int(t) for t in run.train_ids]
    for s in sorted(run.all_sources):
        keys = {}
        for k in sorted(run.keys_for_source(s)):
            try:
                kd = run[s, k]
                v = kd.ndarray()
                try:
                    n = int(kd.data_counts(labelled=False).sum())
                except ValueError:  # EXtra-data 1.7 cannot count a key with no entries at all
                    n = v.shape[0]
                keys[k] = {"shape": list(v.shape), "dtype": v.dtype.str, "counts": n}
            except Exception as e:
                out["errors"].append("%s %s: %s: %s" % (s, k, type(e).__name__, e))
        out["sources"][s] = keys
    out["warnings"] = [str(x.message) for x in w]
print(json.dumps(out))
`;

export interface RunView {
  trains: number;
  trainIds?: number[];
  sources: Record<string, Record<string, { shape: number[]; dtype: string; counts: number }>>;
  errors: string[];
  warnings: string[];
}

/** What `extra_data.RunDirectory(dir)` (or `H5File(file)`) reads of a run: every key of every source. */
export function openRun(p: string, opts: { file?: boolean } = {}): RunView {
  const r = py(OPEN, { path: p, file: !!opts.file });
  if (r.status !== 0) throw new Error(`EXtra-data failed on ${p}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const SAME_FRAMES = String.raw`
import sys, json, warnings
warnings.simplefilter("ignore")
import numpy as np
import hdf5plugin
from extra_data import RunDirectory
a = json.loads(sys.argv[1])
A = RunDirectory(a["input"]); B = RunDirectory(a["output"])
out = {"frames": 0, "differ": 0, "missing": 0, "ids": []}
for src in a["sources"]:
    key = a["key"]
    ka, kb = A[src, key], B[src, key]
    def ids(run, k):
        grp = key.split(".")[0]
        t = run[src, grp + ".trainId"].ndarray().reshape(-1)
        p = run[src, grp + ".pulseId"].ndarray().reshape(-1)
        return t, p
    ta, pa = ids(A, ka); tb, pb = ids(B, kb)
    where = {(int(t), int(p)): i for i, (t, p) in enumerate(zip(ta, pa))}
    da, db = ka.ndarray(), kb.ndarray()
    if src == a["sources"][0]:
        out["ids"] = ["%d:%d" % (t, p) for t, p in zip(tb, pb)]
    for j, (t, p) in enumerate(zip(tb, pb)):
        out["frames"] += 1
        i = where.get((int(t), int(p)))
        if i is None:
            out["missing"] += 1
        elif da[i].tobytes() != db[j].tobytes():
            out["differ"] += 1
print(json.dumps(out))
`;

/**
 * Every frame of `key` (e.g. "image.data") of each source in the output run, read by EXtra-data, equals the
 * input's frame of the same (trainId, pulseId) byte for byte. XTDF sources (per-frame trainId/pulseId).
 */
export function sameFrames(
  input: string,
  output: string,
  sources: string[],
  key: string,
): { frames: number; differ: number; missing: number; ids: string[] } {
  const r = py(SAME_FRAMES, { input, output, sources, key });
  if (r.status !== 0) throw new Error(`EXtra-data frame comparison failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const METADATA = String.raw`
import sys, json, h5py
a = json.loads(sys.argv[1])
out = {}
with h5py.File(a["file"], "r") as f:
    for k in ("dataSourceId", "deviceId", "root"):
        ds = f["METADATA/dataSources/" + k]
        out[k] = {"values": [x.decode() if isinstance(x, bytes) else str(x) for x in ds[()]],
                  "maxshape": [-1 if m is None else m for m in ds.maxshape]}
print(json.dumps(out))
`;

/** METADATA/dataSources/{dataSourceId, deviceId, root} of a file as h5py reads them, with maxshape (-1 unlimited). */
export function metadataSources(
  file: string,
): Record<string, { values: string[]; maxshape: number[] }> {
  const r = py(METADATA, { file });
  if (r.status !== 0) throw new Error(`h5py failed on ${file}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}
