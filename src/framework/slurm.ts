/**
 * Many nodes on SLURM: `xfel-redu submit --slurm RUN --algorithm localise --out DIR --parts N [options]`.
 *
 * Spec:
 * - A work directory `DIR.slurm/` holds job.json (algorithm, run, options, module groups), an sbatch
 *   job-array script (one task per part: a module group) and a merge script, the task logs, and one file
 *   per finished part (`part-<i>.bin`, written under a temporary name and renamed when complete).
 * - `submit` submits the array (only the parts without a part file: a rerun skips the parts that finished)
 *   and a merge job that depends on it (afterok). The merge joins the parts into the same outputs, in DIR,
 *   as a single-process run.
 * - `run-part WORK I` runs part I (a task), `merge-parts WORK` the merge; both are CLI commands, so a task
 *   runs the same code as a local run. `--no-submit` only writes the scripts (to submit by hand).
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { deserialize, serialize } from "node:v8";
import { InputError } from "../errors.ts";
import { Run } from "../exdf/run.ts";
import { tmpName } from "../app/outdir.ts";
import {
  type Algorithm,
  type AlgorithmSource,
  checkModules,
  createAlgorithm,
  moduleGroups,
  runPart,
} from "./algorithm.ts";
import { keepSpills } from "./spill.ts";

export interface Job {
  algorithm: string;
  /** Where run-part and merge-parts find the algorithm (framework/algorithm.ts createAlgorithm). */
  source: AlgorithmSource;
  run: string;
  out: string;
  options: Record<string, unknown>;
  groups: number[][];
}

function jobPath(work: string): string {
  return path.join(work, "job.json");
}

function partPath(work: string, i: number): string {
  return path.join(work, `part-${i}.bin`);
}

export function readJob(work: string): Job {
  try {
    return JSON.parse(fs.readFileSync(jobPath(work), "utf8"));
  } catch {
    throw new InputError(work, "no SLURM job here (job.json missing or unreadable)");
  }
}

/** The job's algorithm, built from the source job.json records (one written before it did: one line). */
function algorithmOf(work: string, job: Job): Promise<Algorithm> {
  if (!job.source?.module) {
    throw new InputError(
      work,
      "job.json names no algorithm module (an older xfel-redu wrote it): submit again",
    );
  }
  return createAlgorithm(job.source);
}

/** The command line that runs this CLI on a node: node + bin, or deno + src/cli/main.ts. */
function cliCommand(): string[] {
  const here = fileURLToPath(import.meta.url);
  let root = path.dirname(here);
  while (!fs.existsSync(path.join(root, "package.json"))) root = path.dirname(root);
  const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;
  if (deno) return [deno.execPath(), "run", "-A", path.join(root, "src/cli/main.ts")];
  return [process.execPath, path.join(root, "bin/xfel-redu.js")];
}

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** Write the work directory (job.json and scripts); returns the parts still to run. */
export async function prepareJob(
  algo: Algorithm,
  runPath: string,
  out: string,
  options: Record<string, unknown>,
  parts: number,
  force: boolean,
): Promise<{ work: string; todo: number[]; job: Job }> {
  const run = await Run.open(runPath);
  let modules: number[];
  try {
    const det = run.detector(options.detector as string | undefined);
    const wanted = options.modules as number[] | undefined;
    checkModules(run.path, det, wanted);
    modules = det.modules.map((m) => m.module).filter((m) => !wanted || wanted.includes(m));
  } finally {
    run.close();
  }
  const work = `${out}.slurm`;
  const job: Job = {
    algorithm: algo.id,
    source: algo.source,
    run: path.resolve(runPath),
    out,
    options,
    groups: moduleGroups(modules, parts),
  };
  if (fs.existsSync(jobPath(work))) {
    const old = readJob(work);
    // The same job whatever runtime wrote it (the algorithm's module is a .ts or a compiled .js).
    const same = (j: Job) => JSON.stringify({ ...j, source: undefined });
    if (same(old) !== same(job)) {
      if (!force) throw new InputError(work, "holds another job; use --force to start over");
      fs.rmSync(work, { recursive: true, force: true });
    }
  }
  fs.mkdirSync(path.join(work, "logs"), { recursive: true });
  fs.writeFileSync(jobPath(work), JSON.stringify(job, null, 2) + "\n");
  const cli = cliCommand().map(q).join(" ");
  const todo = job.groups.map((_, i) => i).filter((i) => !fs.existsSync(partPath(work, i)));
  fs.writeFileSync(
    path.join(work, "task.sh"),
    `#!/bin/bash
#SBATCH --job-name=xfel-redu-${algo.id}
#SBATCH --output=${work}/logs/part-%a.log
#SBATCH --ntasks=1
# One part of the run (a module group) per array task. Spill files (per-frame results) go to the work
# directory, where the merge job finds them.
export XFEL_REDU_SPILL_DIR=${q(work)}
exec ${cli} run-part ${q(work)} "$SLURM_ARRAY_TASK_ID"
`,
  );
  fs.writeFileSync(
    path.join(work, "merge.sh"),
    `#!/bin/bash
#SBATCH --job-name=xfel-redu-merge
#SBATCH --output=${work}/logs/merge.log
#SBATCH --ntasks=1
exec ${cli} merge-parts ${q(work)}
`,
  );
  return { work, todo, job };
}

/** Run part i of a job (skipped when its part file exists). */
export async function runJobPart(work: string, i: number): Promise<boolean> {
  const job = readJob(work);
  if (!(i >= 0 && i < job.groups.length)) {
    throw new InputError(work, `no part ${i} (parts 0..${job.groups.length - 1})`);
  }
  const file = partPath(work, i);
  if (fs.existsSync(file)) return false;
  const algo = await algorithmOf(work, job);
  try {
    algo.configure(job.options);
    const part = await runPart(algo, job.run, { modules: job.groups[i] });
    const tmp = tmpName(file);
    fs.writeFileSync(tmp, serialize(part));
    fs.renameSync(tmp, file);
  } finally {
    algo.dispose?.();
  }
  return true;
}

/** Join the parts into the outputs of a single-process run, in the job's output directory. */
export async function mergeJob(work: string): Promise<string> {
  const job = readJob(work);
  const missing = job.groups.map((_, i) => i).filter((i) => !fs.existsSync(partPath(work, i)));
  if (missing.length) throw new InputError(work, `parts not finished: ${missing.join(", ")}`);
  const parts = job.groups.map((_, i) => deserialize(fs.readFileSync(partPath(work, i))));
  const algo = await algorithmOf(work, job);
  algo.configure(job.options);
  // initialize with no modules only records the run (finalize reopens it).
  const run = await Run.open(job.run);
  try {
    await algo.initialize({
      runPath: job.run,
      run,
      detector: run.detector(job.options.detector as string),
      modules: [],
    });
  } finally {
    run.close();
  }
  // The spill files in the work directory stay (kept with the parts): the merge can be rerun.
  await keepSpills(work, async () => {
    const result = await algo.finalize(parts);
    try {
      await algo.writeOutput(result, job.out);
    } finally {
      (result as { dispose?(): void }).dispose?.();
    }
  });
  return job.out;
}

export function sbatch(args: string[]): string {
  try {
    return execFileSync("sbatch", ["--parsable", ...args], { encoding: "utf8" }).trim().split(";")[0];
  } catch (e) {
    if ((e as { code?: unknown }).code === "ENOENT") {
      throw new InputError(
        undefined,
        "sbatch not found: SLURM is not installed here (--no-submit writes the scripts only)",
      );
    }
    const err = (e as { stderr?: unknown }).stderr;
    const msg = typeof err === "string" && err.trim()
      ? err.trim().split("\n")[0]
      : e instanceof Error
      ? e.message.split("\n")[0]
      : String(e);
    throw new InputError(undefined, `sbatch failed: ${msg}`);
  }
}
