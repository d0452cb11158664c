/**
 * Benchmark of the experiment-specific reductions: `node dist/bench/reductions.js [--trains N] [--gpu]
 * [--repeat N] [--only xpcs]`.
 *
 * Generates (or reuses) a powder run (fixtures/experiments.ts) of 8 AGIPD modules, 32 frames per train, in
 * bench/data/powder-agipd8, and measures on it, end to end (reading included):
 * - the read ceiling: every frame's data and mask read into buffers, no compute (one reader, as the
 *   reductions read with one reader per worker);
 * - azint (500 bins, q, solid angle), roi (two regions), xpcs (20 q bins, 8 delays) on the cpu backend with
 *   1 and all workers, and on webgpu with `--gpu` (a hardware adapter);
 * - pyFAI 0.21 (/usr/bin/python3): h5py reads of the same files and `integrate1d` with method
 *   ("no", "csr", "cython"), the same corners (the reference of the azint tests);
 * - whole processes, alternating, wall clock of each (start-up, imports, set-up and writing included):
 *   `xfel-redu azint` (bin/xfel-redu.js, default workers and backend) and the pyFAI script above.
 * Each figure is the best of `--repeat` runs (default 3; the machine is shared). `--only xpcs`: the read
 * ceiling and xpcs, printed only. Writes bench/RESULTS-reductions.md. GB/s: image data + mask bytes (f32 + u32) of every module frame per second.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { makePowderRun } from "../fixtures/experiments.ts";
import { azint, writeAzintDir } from "../src/reductions/azint.ts";
import { FrameReader } from "../src/exdf/frames.ts";
import { defaultLayout, pixelCorners, writeGeom } from "../src/exdf/geometry.ts";
import { roi, writeRoiDir } from "../src/reductions/roi.ts";
import { Run } from "../src/exdf/run.ts";
import { writeXpcsDir, xpcs } from "../src/reductions/xpcs.ts";
import { writeResults } from "./results.ts";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = fs.existsSync(path.join(here, "../package.json"))
  ? path.join(here, "..")
  : path.join(here, "../..");
const MODULES = [0, 1, 2, 3, 4, 5, 6, 7];
const FRAMES = 32;
const FRAME_BYTES = 512 * 128 * 8; // f32 data + u32 mask

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

async function ensureRun(dir: string, trains: number): Promise<void> {
  const tag = JSON.stringify({ v: 1, modules: MODULES, trains, frames: FRAMES });
  const stamp = path.join(dir, "bench.json");
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, "utf8") === tag) return;
  fs.rmSync(dir, { recursive: true, force: true });
  console.error(
    `bench: generating ${trains} trains x ${FRAMES} frames x ${MODULES.length} modules in ${dir}`,
  );
  await makePowderRun(dir, {
    seed: 2027,
    modules: MODULES,
    trains,
    framesPerTrain: FRAMES,
    trainsPerFile: 250,
  });
  fs.writeFileSync(stamp, tag);
}

interface Row {
  config: string;
  seconds: number;
  frames: number;
  gbPerSecond: number;
  framesPerSecond: number;
  ratio?: number;
  note?: string;
}

function row(
  config: string,
  seconds: number,
  frames: number,
  extra: Partial<Row> = {},
  modules = MODULES.length,
): Row {
  return {
    config,
    seconds,
    frames,
    gbPerSecond: (frames * modules * FRAME_BYTES) / seconds / 1e9,
    framesPerSecond: frames / seconds,
    ...extra,
  };
}

const PYFAI = `
import sys, json, glob, time, h5py, numpy as np
from pyFAI.detectors import Detector
from pyFAI.azimuthalIntegrator import AzimuthalIntegrator
a = json.loads(sys.argv[1])
mods = a["modules"]; ss, fs = 512, 128
corners = np.fromfile(a["corners"], dtype="<f8").reshape(len(mods) * ss, fs, 4, 3)[..., ::-1].astype(np.float32)
det = Detector(pixel1=2e-4, pixel2=2e-4, max_shape=(len(mods) * ss, fs))
det.set_pixel_corners(np.ascontiguousarray(corners))
ai = AzimuthalIntegrator(dist=a["distance"], poni1=0, poni2=0, detector=det,
                         wavelength=12.398419843320026 / (a["energy"] / 1000) * 1e-10)
files = [sorted(glob.glob(a["dir"] + "/*-AGIPD%02d-S*.h5" % m)) for m in mods]
t0 = time.time()
n = 0
handles = [[h5py.File(f, "r") for f in fl] for fl in files]
groups = [[h["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/%dCH0:xtdf/image" % m] for h in hs] for m, hs in zip(mods, handles)]
for fi in range(len(groups[0])):
    rows = groups[0][fi]["data"].shape[0]
    for r0 in range(0, rows, 32):
        r1 = min(rows, r0 + 32)
        d = np.concatenate([g[fi]["data"][r0:r1][:, None] for g in groups], axis=1)
        mk = np.concatenate([g[fi]["mask"][r0:r1][:, None] for g in groups], axis=1)
        for i in range(r1 - r0):
            img = d[i].reshape(len(mods) * ss, fs); bad = (mk[i].reshape(len(mods) * ss, fs) != 0) | ~np.isfinite(img)
            ai.integrate1d(img, 500, mask=bad, unit="q_nm^-1", method=("no", "csr", "cython"), correctSolidAngle=True)
            n += 1
print(json.dumps({"seconds": time.time() - t0, "frames": n}))
`;

async function main(): Promise<void> {
  const trains = Number(arg("trains", "6"));
  const dir = path.join(root, "bench/data/powder-agipd8");
  await ensureRun(dir, trains);
  const truth = JSON.parse(fs.readFileSync(path.join(dir, "experiment.json"), "utf8"));
  const geom = path.join(dir, "agipd.geom");
  fs.writeFileSync(
    geom,
    writeGeom(defaultLayout("AGIPD"), { clen: truth.clen, photonEnergy: truth.photonEnergy }),
  );
  const rows: Row[] = [];
  const cores = os.availableParallelism();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "bench-red-"));
  const repeat = Math.max(1, Number(arg("repeat", "3")));
  /** The best of `repeat` runs (and the last run's value). */
  const time = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
    let best = Infinity, v: T | undefined;
    for (let k = 0; k < repeat; k++) {
      const t0 = performance.now();
      v = await f();
      best = Math.min(best, (performance.now() - t0) / 1000);
    }
    return [v as T, best];
  };

  {
    const [frames, s] = await time(async () => {
      const run = await Run.open(dir);
      const reader = new FrameReader(run.detector(), { mask: true, batchBytes: 32 * 2 ** 20 });
      let n = 0;
      for (const b of reader.batches()) n += b.nFrames;
      run.close();
      return n;
    });
    rows.push(row("read ceiling (1 reader)", s, frames));
  }
  const backends: ["cpu" | "webgpu", number][] = [["cpu", 1], ["cpu", cores]];
  if (process.argv.includes("--gpu")) backends.push(["webgpu", 1]);
  // `--only xpcs`: the read ceiling and xpcs only, printed, RESULTS-reductions.md left as it is.
  const only = arg("only", "");
  for (const [backend, workers] of backends) {
    const tag = `${backend}, ${workers} worker${workers > 1 ? "s" : ""}`;
    if (only === "xpcs") {
      const [x, sx] = await time(async () => {
        const r = await xpcs(dir, { geometry: geom, qBins: 20, maxDelay: 8, backend, workers });
        const sum = await writeXpcsDir(r, path.join(out, `xpcs-${backend}-${workers}`));
        return { r, sum };
      });
      rows.push(row(`xpcs ${tag}`, sx, x.r.trainIds.length * FRAMES, { note: x.r.backend }));
      continue;
    }
    const [a, sa] = await time(async () => {
      const r = await azint(dir, { geometry: geom, bins: 500, backend, workers });
      const sum = await writeAzintDir(r, path.join(out, `azint-${backend}-${workers}`));
      return { r, sum };
    });
    rows.push(
      row(`azint ${tag}`, sa, a.r.trainId.length, { ratio: a.sum.ratio as number, note: a.r.backend }),
    );
    const rois = [
      { name: "line", module: 3, ss0: 100, ss1: 140, fs0: 0, fs1: 128 },
      { name: "bg", module: 5, ss0: 0, ss1: 64, fs0: 0, fs1: 128 },
    ];
    const [o, so] = await time(async () => {
      const r = await roi(dir, { rois, backend, workers });
      const sum = await writeRoiDir(r, path.join(out, `roi-${backend}-${workers}`));
      return { r, sum };
    });
    rows.push(
      row(`roi ${tag} (reads 2 modules)`, so, o.r.trainId.length, {
        ratio: o.sum.ratio as number,
        note: o.r.backend,
      }, 2),
    );
    const [x, sx] = await time(async () => {
      const r = await xpcs(dir, { geometry: geom, qBins: 20, maxDelay: 8, backend, workers });
      const sum = await writeXpcsDir(r, path.join(out, `xpcs-${backend}-${workers}`));
      return { r, sum };
    });
    rows.push(
      row(`xpcs ${tag}`, sx, x.r.trainIds.length * FRAMES, {
        ratio: x.sum.ratio as number,
        note: x.r.backend,
      }),
    );
  }
  if (only) {
    fs.rmSync(out, { recursive: true, force: true });
    for (const r of rows) {
      console.log(
        `${r.config}: ${r.seconds.toFixed(2)} s, ${r.framesPerSecond.toFixed(0)} frames/s, ${
          (r.gbPerSecond / rows[0].gbPerSecond).toFixed(2)
        }x the read ceiling`,
      );
    }
    return;
  }
  // pyFAI over h5py, the same frames.
  const corners = new Float64Array(MODULES.length * 512 * 128 * 12);
  const L = defaultLayout("AGIPD");
  MODULES.forEach((m, k) => corners.set(pixelCorners(L, m), k * 512 * 128 * 12));
  const cf = path.join(os.tmpdir(), `bench-corners-${process.pid}.bin`);
  fs.writeFileSync(cf, new Uint8Array(corners.buffer));
  let py = spawnSync("true", { encoding: "utf8" });
  let pyBest: { seconds: number; frames: number } | undefined;
  for (let k = 0; k < repeat; k++) {
    py = spawnSync(
      "/usr/bin/python3",
      [
        "-c",
        PYFAI,
        JSON.stringify({
          dir,
          modules: MODULES,
          corners: cf,
          distance: truth.clen,
          energy: truth.photonEnergy,
        }),
      ],
      { encoding: "utf8", maxBuffer: 1 << 26 },
    );
    if (py.status !== 0) break;
    const p = JSON.parse(py.stdout.trim().split("\n").pop()!);
    if (!pyBest || p.seconds < pyBest.seconds) pyBest = p;
  }
  if (py.status === 0 && pyBest) {
    rows.push(
      row("pyFAI 0.21 csr over h5py (1 process)", pyBest.seconds, pyBest.frames, { note: "reference" }),
    );
  } else {
    console.error(`bench: pyFAI not run: ${py.stderr.split("\n").slice(-2).join(" ")}`);
  }
  // Whole processes, alternating: the CLI as a user runs it, and the pyFAI script as its own process.
  const pyArgs = JSON.stringify({
    dir,
    modules: MODULES,
    corners: cf,
    distance: truth.clen,
    energy: truth.photonEnergy,
  });
  const whole = { azint: Infinity, pyfai: Infinity };
  const cliOut = path.join(out, "azint-cli");
  for (let k = 0; k < repeat; k++) {
    let t0 = performance.now();
    const c = spawnSync(
      process.execPath,
      [path.join(root, "bin/xfel-redu.js"), "azint", dir, "--geometry", geom, "--out", cliOut, "--force"],
      { encoding: "utf8" },
    );
    if (c.status !== 0) throw new Error(`bench: xfel-redu azint failed: ${c.stderr}`);
    whole.azint = Math.min(whole.azint, (performance.now() - t0) / 1000);
    if (py.status !== 0) continue;
    t0 = performance.now();
    const p = spawnSync("/usr/bin/python3", ["-c", PYFAI, pyArgs], { encoding: "utf8", maxBuffer: 1 << 26 });
    if (p.status === 0) whole.pyfai = Math.min(whole.pyfai, (performance.now() - t0) / 1000);
  }
  fs.rmSync(cf, { force: true });
  const nFrames = rows[0].frames;
  rows.push(row("azint CLI, whole process (default workers)", whole.azint, nFrames, { note: "cpu" }));
  if (whole.pyfai < Infinity) {
    rows.push(row("pyFAI 0.21 csr over h5py, whole process", whole.pyfai, nFrames, { note: "reference" }));
  }

  fs.rmSync(out, { recursive: true, force: true });
  const ceiling = rows[0].gbPerSecond;
  const lines = [
    "# Benchmarks: roi, azint, xpcs",
    "",
    `Measured ${
      new Date().toISOString().slice(0, 16)
    }Z by \`node dist/bench/reductions.js\` (Node ${process.versions.node}).`,
    "",
    `- Machine: ${os.cpus()[0]?.model ?? "?"}, ${cores} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    `- Run: generated powder pattern (fixtures/experiments.ts), AGIPD CORR, ${MODULES.length} modules, ${FRAMES} frames per train, ${
      rows[0].frames
    } frames; GB/s: image data f32 + mask u32 of every module frame per second; end to end (reading, compute,`,
    `  merge and writing the output directory), each the best of ${repeat} runs. xpcs frames: the frames`,
    "  correlated (trains x frames per train).",
    "- ratio: bytes in (the module files read) / bytes out (the REDU file), from summary.json.",
    `- Load: ${
      os.loadavg().map((x) => x.toFixed(1)).join(", ")
    } (1, 5, 15 min) at the end; on a shared machine the`,
    "  absolute figures are noisy: compare rows of one table (pyFAI ran in the same invocation).",
    "",
    "| configuration | seconds | frames/s | GB/s | vs read ceiling | ratio | backend |",
    "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ...rows.map((r) =>
      `| ${r.config} | ${r.seconds.toFixed(2)} | ${r.framesPerSecond.toFixed(0)} | ${
        r.gbPerSecond.toFixed(2)
      } | ${(r.gbPerSecond / ceiling).toFixed(2)}x | ${r.ratio ? r.ratio.toFixed(0) : ""} | ${r.note ?? ""} |`
    ),
    "",
  ];
  writeResults(path.join(root, "bench/RESULTS-reductions.md"), lines.join("\n"));
  console.log(lines.join("\n"));
}

await main();
