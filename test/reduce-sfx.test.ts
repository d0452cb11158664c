/**
 * The reduce ratio on a realistic SFX run on disk (issue 12): the frames of fixtures/sfx.ts (water ring,
 * jet, calibration residuals, ~10 % hits) written as an EuXFEL CORR run, `localise` with its defaults, then
 * `reduce`: the image data shrink at least 8x, every truth hit frame is kept, and the kept frames match the
 * truth hits with recall and precision >= 0.99.
 *
 * The run: synthetic CORR files (fixtures/synth.ts makeRun, no DA01 files: the decision comes from the
 * images) whose image data and mask are then overwritten with the SfxRun frames, frame f of the run
 * (sorted by trainId, pulseId) = SfxRun frame f.
 */
import { afterAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { makeRun } from "../fixtures/synth.ts";
import { SFX_WATER, SfxRun } from "../fixtures/sfx.ts";
import { h5 } from "../src/exdf/h5.ts";
import { localise } from "../src/localise/algorithm.ts";
import { writeLocaliseDir } from "../src/localise/output.ts";
import { reduce } from "../src/reduce/reduce.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-reduce-sfx-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const DET = "SPB_DET_AGIPD1M-1";
const MODULES = [0, 8];
const TRAINS = 12;
const FPT = 16;

describe("reduce on a realistic SFX run on disk", () => {
  it(
    "localise defaults then reduce: >= 8x smaller image data, every hit kept, frames match truth",
    async () => {
      const sfx = new SfxRun({ ...SFX_WATER, modules: MODULES, frames: TRAINS * FPT, hitRate: 0.1 });
      const run = path.join(tmp, "run");
      await makeRun(run, {
        seed: 12,
        modules: MODULES,
        level: "corr",
        naming: "output",
        trains: TRAINS,
        trainsPerFile: TRAINS,
        framesPerTrain: FPT,
        writeDa: false,
        compression: 1,
        hotPixels: 0,
        maskedPixels: 0,
        maskedColumns: 0,
        nanPixels: 0,
        deadAsics: [],
      });
      // Overwrite each module's image data and mask with the SFX frames.
      const lib = await h5();
      const P = sfx.geometry.pixels;
      for (const name of fs.readdirSync(run).filter((n) => n.endsWith(".h5"))) {
        const m = Number(/AGIPD(\d+)/.exec(name)![1]);
        const mi = MODULES.indexOf(m);
        const f = new lib.File(path.join(run, name), "a");
        try {
          const g = `INSTRUMENT/${DET}/CORR/${m}CH0:output/image`;
          const data = f.get(`${g}/data`) as InstanceType<typeof lib.Dataset>;
          const mask = f.get(`${g}/mask`) as InstanceType<typeof lib.Dataset>;
          expect(data.shape![0]).toBe(TRAINS * FPT);
          for (let f0 = 0; f0 < TRAINS * FPT; f0 += FPT) {
            data.write_slice([[f0, f0 + FPT], [], []], sfx.batch(mi, f0, FPT));
            mask.write_slice([[f0, f0 + FPT], [], []], sfx.batchMask(mi, FPT).subarray(0, FPT * P));
          }
        } finally {
          f.close();
        }
      }

      const r = await localise(run, { backend: "cpu" });
      const loc = path.join(tmp, "loc");
      const lit = r.frameLit; // made from the spill files, which dispose removes
      try {
        await writeLocaliseDir(r, loc);
      } finally {
        r.dispose();
      }
      const out = path.join(tmp, "out");
      const rec = await reduce(run, loc, out);

      // Kept frames against the truth hits (frame f of the run = SfxRun frame f).
      const kept = new Uint8Array(sfx.frames);
      const summary = JSON.parse(fs.readFileSync(path.join(loc, "summary.json"), "utf8"));
      expect(summary.frames).toBe(sfx.frames);
      for (let f = 0; f < sfx.frames; f++) kept[f] = lit[f];
      const hits = sfx.hit.reduce((a, x) => a + x, 0);
      let tp = 0, fp = 0;
      for (let f = 0; f < sfx.frames; f++) {
        if (kept[f] && sfx.hit[f]) tp++;
        else if (kept[f]) fp++;
      }
      const recall = tp / hits, precision = tp / Math.max(1, tp + fp);
      // Image data bytes in and out: the stored size of the image datasets of the module files.
      const imageBytes = (dir: string) => {
        let n = 0;
        for (const name of fs.readdirSync(dir).filter((x) => x.includes("AGIPD"))) {
          const f = new lib.File(path.join(dir, name), "r");
          try {
            const m = Number(/AGIPD(\d+)/.exec(name)![1]);
            const g = f.get(`INSTRUMENT/${DET}/CORR/${m}CH0:output/image`) as InstanceType<typeof lib.Group>;
            for (const k of g.keys()) {
              const ds = g.get(k) as InstanceType<typeof lib.Dataset>;
              if (ds.shape!.length === 3) n += Number(ds.metadata.total_size) * ds.metadata.size;
            }
          } finally {
            f.close();
          }
        }
        return n;
      };
      const imgIn = imageBytes(run), imgOut = imageBytes(out);
      console.info(
        `sfx reduce: ${hits} hits of ${sfx.frames} frames; kept ${rec.framesKept} / ${rec.framesIn}; ` +
          `recall ${recall.toFixed(3)} precision ${precision.toFixed(3)}; image data ${imgIn} -> ${imgOut} ` +
          `(${(imgIn / imgOut).toFixed(2)}x); files ${rec.bytesIn} -> ${rec.bytesOut} (${
            rec.ratio.toFixed(2)
          }x)`,
      );
      expect(hits).toBeGreaterThan(10);
      for (let f = 0; f < sfx.frames; f++) if (sfx.hit[f]) expect(kept[f], `hit frame ${f} kept`).toBe(1);
      expect(recall).toBeGreaterThanOrEqual(0.99);
      expect(precision).toBeGreaterThanOrEqual(0.99);
      expect(rec.framesKept).toBe(MODULES.length * (tp + fp));
      expect(imgIn / imgOut).toBeGreaterThanOrEqual(8);
    },
    180_000,
  );
});
