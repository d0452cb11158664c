/**
 * SLURM: the job-array parts and the merge give the same outputs as a single-process run; a rerun skips
 * finished parts. The in-process test always runs; the real-SLURM test runs where `sbatch` answers
 * (.ci/run starts a one-host SLURM with scripts/slurm-local.sh) and must not be skipped in CI.
 */
import { algorithm } from "../src/cli/algorithms.ts";
import { afterAll, describe, expect, test } from "vitest";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { mergeJob, prepareJob, readJob, runJobPart } from "../src/framework/slurm.ts";
import { InputError } from "../src/errors.ts";
import { writeXpcsDir, xpcs } from "../src/reductions/xpcs.ts";
import { openH5, readAll } from "../src/exdf/h5.ts";
import { ROOT, runNode } from "./helpers/cli.ts";
import { have } from "./helpers/tools.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-slurm-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const SAMPLE = path.join(ROOT, "fixtures/sample");

const haveSlurm = have("slurm");

/** summary.json without what depends on the process (timing, the notes about adapters). */
function summary(dir: string) {
  const s = JSON.parse(fs.readFileSync(path.join(dir, "summary.json"), "utf8"));
  delete s.timing;
  delete s.notes;
  return s;
}

/** Run job parts with their spill files in the work directory, as the task script (task.sh) puts them. */
async function runPartsSpillingIn(work: string, parts: number[]): Promise<void> {
  const before = process.env.XFEL_REDU_SPILL_DIR;
  process.env.XFEL_REDU_SPILL_DIR = work;
  try {
    for (const i of parts) await runJobPart(work, i);
  } finally {
    if (before === undefined) delete process.env.XFEL_REDU_SPILL_DIR;
    else process.env.XFEL_REDU_SPILL_DIR = before;
  }
}

/** The spill files in a directory, sorted. */
const spillsIn = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith(".spill")).sort();

async function reduData(dir: string): Promise<Record<string, number[]>> {
  const file = fs.readdirSync(dir).find((f) => f.endsWith(".h5"))!;
  const h5 = await openH5(path.join(dir, file));
  try {
    const src = "INSTRUMENT/SPB_DET_AGIPD1M-1/REDU/LOCALISE:output/data";
    const out: Record<string, number[]> = {};
    for (
      const k of [
        "trainId",
        "pulseId",
        "frameLit",
        "litPixels",
        "litIntensity",
        "asicLit",
        "nPeaks",
        "peakBox",
        "peakIntensity",
      ]
    ) {
      out[k] = Array.from(readAll(h5, `${src}/${k}`), Number);
    }
    return out;
  } finally {
    h5.close();
  }
}

function single(out: string) {
  const r = runNode(["localise", SAMPLE, "--out", out, "--backend", "cpu", "--workers", "1"]);
  expect(r.code, r.stderr).toBe(0);
}

describe("SLURM job parts", () => {
  test("parts run one by one and merged equal a single-process run; a rerun skips finished parts", async () => {
    const ref = path.join(tmp, "single");
    single(ref);
    const out = path.join(tmp, "parts");
    const { work, todo } = await prepareJob(algorithm("localise"), SAMPLE, out, { backend: "cpu" }, 3, false);
    expect(todo).toEqual([0, 1, 2]);
    expect(readJob(work).groups).toEqual([[0], [1], [2]]);
    for (const i of todo) expect(await runJobPart(work, i)).toBe(true);
    expect(await runJobPart(work, 1)).toBe(false); // finished: skipped
    const again = await prepareJob(algorithm("localise"), SAMPLE, out, { backend: "cpu" }, 3, false);
    expect(again.todo).toEqual([]);
    await mergeJob(work);
    expect(summary(out)).toEqual(summary(ref));
    expect(await reduData(out)).toEqual(await reduData(ref));
  });

  test("a finished merge can be rerun: the parts' spill files stay, the output is the same", async () => {
    const out = path.join(tmp, "rerun");
    const { work, todo } = await prepareJob(algorithm("localise"), SAMPLE, out, { backend: "cpu" }, 2, false);
    await runPartsSpillingIn(work, todo);
    const written = spillsIn(work);
    expect(written.length).toBeGreaterThan(0);
    await mergeJob(work);
    const first = { summary: summary(out), data: await reduData(out) };
    expect(spillsIn(work)).toEqual(written);
    await mergeJob(work);
    expect(spillsIn(work)).toEqual(written);
    expect(summary(out)).toEqual(first.summary);
    expect(await reduData(out)).toEqual(first.data);
  });

  test("a merge with unfinished parts is refused with one line", async () => {
    const out = path.join(tmp, "unfinished");
    const { work } = await prepareJob(algorithm("localise"), SAMPLE, out, { backend: "cpu" }, 2, false);
    // (In the temporary directory the part's spill files stayed there: no merge takes them.)
    await runPartsSpillingIn(work, [0]);
    await expect(mergeJob(work)).rejects.toThrow(/parts not finished: 1/);
  });

  test("xpcs: the parts' train sums in spill files in the work directory; merged twice, as one process", async () => {
    const opts = { backend: "cpu" as const, qBins: 8, maxDelay: 3, energy: 9300, distance: 4 };
    const ref = path.join(tmp, "xpcs-single");
    const one = await xpcs(SAMPLE, { ...opts, workers: 1 });
    await writeXpcsDir(one, ref);
    one.dispose();
    const out = path.join(tmp, "xpcs-parts");
    const { work, todo } = await prepareJob(algorithm("xpcs"), SAMPLE, out, opts, 3, false);
    expect(todo).toEqual([0, 1, 2]);
    await runPartsSpillingIn(work, todo);
    const written = spillsIn(work);
    // One sums file per part (a module each).
    expect(written.filter((f) => f.includes("xpcs-sums")).length).toBe(3);
    const xpcsData = async (dir: string) => {
      const h5 = await openH5(path.join(dir, fs.readdirSync(dir).find((f) => f.endsWith(".h5"))!));
      try {
        const src = "INSTRUMENT/SPB_DET_AGIPD1M-1/REDU/XPCS:output/data";
        return {
          trainId: Array.from(readAll(h5, "INDEX/trainId"), Number),
          g2: Array.from(readAll(h5, `${src}/g2`), Number),
          pairs: Array.from(readAll(h5, `${src}/pairs`), Number),
        };
      } finally {
        h5.close();
      }
    };
    const want = await xpcsData(ref);
    expect(want.trainId.length).toBeGreaterThan(0);
    for (let k = 0; k < 2; k++) {
      await mergeJob(work);
      expect(spillsIn(work)).toEqual(written);
      const got = await xpcsData(out);
      expect(got.trainId).toEqual(want.trainId);
      expect(got.pairs).toEqual(want.pairs);
      // Sums of the modules in another order (parts): float32 g2 equal to rounding.
      got.g2.forEach((v, j) => {
        if (Number.isNaN(want.g2[j])) expect(v).toBeNaN();
        else expect(Math.abs(v - want.g2[j])).toBeLessThanOrEqual(1e-6 * Math.abs(want.g2[j]));
      });
    }
  });

  test("a job.json without the algorithm's module (an older version's) is one line, not a crash", async () => {
    const out = path.join(tmp, "old-job");
    const { work } = await prepareJob(algorithm("localise"), SAMPLE, out, { backend: "cpu" }, 2, false);
    const job = JSON.parse(fs.readFileSync(path.join(work, "job.json"), "utf8"));
    delete job.source;
    fs.writeFileSync(path.join(work, "job.json"), JSON.stringify(job));
    await expect(runJobPart(work, 0)).rejects.toThrow(InputError);
    await expect(runJobPart(work, 0)).rejects.toThrow(/names no algorithm module .*: submit again/);
    await expect(mergeJob(work)).rejects.toThrow(/parts not finished/);
  });
});

describe.skipIf(!haveSlurm)("a real SLURM on this host", () => {
  test("submit: job array + dependent merge give the single-process outputs", async () => {
    expect(haveSlurm, "CI must start SLURM (scripts/slurm-local.sh start)").toBe(true);
    const ref = path.join(tmp, "single-ref");
    single(ref);
    const out = path.join(tmp, "slurm");
    const r = runNode(["submit", "--slurm", SAMPLE, "--out", out, "--parts", "3", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.todo).toEqual([0, 1, 2]);
    // Wait for the merge job (bounded: 3 minutes).
    const t0 = Date.now();
    while (!fs.existsSync(path.join(out, "summary.json")) && Date.now() - t0 < 180_000) {
      await new Promise((res) => setTimeout(res, 500));
      const q = execFileSync("squeue", ["-h", "-j", String(info.mergeJob), "-o", "%T"], { encoding: "utf8" })
        .trim();
      if (q === "" && !fs.existsSync(path.join(out, "summary.json"))) {
        await new Promise((res) => setTimeout(res, 1000));
        if (!fs.existsSync(path.join(out, "summary.json"))) break;
      }
    }
    const logs = path.join(`${out}.slurm`, "logs");
    const log = fs.existsSync(logs)
      ? fs.readdirSync(logs).map((f) => fs.readFileSync(path.join(logs, f), "utf8")).join("\n")
      : "";
    expect(fs.existsSync(path.join(out, "summary.json")), log).toBe(true);
    expect(summary(out)).toEqual(summary(ref));
    expect(await reduData(out)).toEqual(await reduData(ref));
    // A rerun of a finished job submits no array task, only the merge... of an existing output: refused.
    const again = runNode(["submit", "--slurm", SAMPLE, "--out", out, "--parts", "3"]);
    expect(again.code).toBe(2);
  }, 240_000);
});
