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
import type { Command } from "../cli.ts";
import { EXIT, InputError } from "../errors.ts";
import { Run } from "../run.ts";
import { prepareOut } from "../outdir.ts";
import { keepSpills } from "../spill.ts";
import { algorithmFactory, checkModules, moduleGroups, runPart } from "./algorithm.ts";

export interface Job {
  algorithm: string;
  run: string;
  out: string;
  options: Record<string, unknown>;
  groups: number[][];
}

const ALGORITHMS = ["localise", "average", "roi", "azint", "xpcs"];

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

/** The command line that runs this CLI on a node: node + bin, or deno + src/cli.ts. */
function cliCommand(): string[] {
  const here = fileURLToPath(import.meta.url);
  let root = path.dirname(here);
  while (!fs.existsSync(path.join(root, "package.json"))) root = path.dirname(root);
  const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;
  if (deno) return [deno.execPath(), "run", "-A", path.join(root, "src/cli.ts")];
  return [process.execPath, path.join(root, "bin/xfel-redu.js")];
}

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** Write the work directory (job.json and scripts); returns the parts still to run. */
export async function prepareJob(
  algorithm: string,
  runPath: string,
  out: string,
  options: Record<string, unknown>,
  parts: number,
  force: boolean,
): Promise<{ work: string; todo: number[]; job: Job }> {
  if (!ALGORITHMS.includes(algorithm)) {
    throw new InputError(undefined, `--algorithm: one of ${ALGORITHMS.join(", ")}`);
  }
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
    algorithm,
    run: path.resolve(runPath),
    out,
    options,
    groups: moduleGroups(modules, parts),
  };
  if (fs.existsSync(jobPath(work))) {
    const old = readJob(work);
    if (JSON.stringify(old) !== JSON.stringify(job)) {
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
#SBATCH --job-name=xfel-redu-${algorithm}
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
  const algo = (await algorithmFactory(job.algorithm))();
  try {
    algo.configure(job.options);
    const part = await runPart(algo, job.run, job.groups[i]);
    const tmp = `${file}.tmp-${process.pid}`;
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
  const algo = (await algorithmFactory(job.algorithm))();
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
    if (job.algorithm === "localise") {
      const { writeLocaliseDir } = await import("../localise/command.ts");
      await writeLocaliseDir(result as never, job.out);
      (result as { dispose(): void }).dispose();
    } else if (job.algorithm === "roi") {
      const { writeRoiDir } = await import("../roi.ts");
      await writeRoiDir(result as never, job.out);
      (result as { dispose(): void }).dispose();
    } else if (job.algorithm === "azint") {
      const { writeAzintDir } = await import("../azint.ts");
      await writeAzintDir(result as never, job.out);
      (result as { dispose(): void }).dispose();
    } else if (job.algorithm === "xpcs") {
      const { writeXpcsDir } = await import("../xpcs.ts");
      await writeXpcsDir(result as never, job.out);
    } else {
      const { writeAverageDir } = await import("../average.ts");
      await writeAverageDir(result as never, job.out);
    }
  });
  return job.out;
}

/** The options of roi / azint / xpcs from a JSON file, as their APIs take them (paths made absolute). */
async function reductionOptions(
  algorithm: string,
  file: string | undefined,
): Promise<Record<string, unknown>> {
  if (!file) throw new InputError(undefined, `--algorithm ${algorithm} needs --options FILE (JSON)`);
  let o: Record<string, any>;
  try {
    o = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new InputError(
      file,
      `not a JSON options file (${e instanceof Error ? e.message.split("\n")[0] : e})`,
    );
  }
  if (o.geometry) o.geometry = path.resolve(path.dirname(file), o.geometry);
  if (o.from) o.from = path.resolve(path.dirname(file), o.from);
  if (algorithm === "roi") {
    const { readRoiFile } = await import("../roi.ts");
    return { backend: "cpu", ...o, rois: readRoiFile(file) };
  }
  if (algorithm === "azint") {
    const { DEFAULT_AZINT, checkAzintOptions } = await import("../azint.ts");
    const a = { ...DEFAULT_AZINT, backend: "cpu", ...o };
    checkAzintOptions(a as never);
    return a;
  }
  return o;
}

function sbatch(args: string[]): string {
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

export const submitCommand: Command = {
  name: "submit",
  usage: "submit --slurm RUN --algorithm A --out DIR [--parts N]",
  help: "Run an algorithm as a SLURM job array (one task per module group) and a dependent merge job.",
  options: [
    { name: "slurm", help: "submit to SLURM (the only scheduler so far)" },
    {
      name: "algorithm",
      value: "string",
      default: "localise",
      choices: ["localise", "average", "roi", "azint", "xpcs"],
      help: "the algorithm to run",
    },
    { name: "out", value: "string", help: "output directory (default ./<algorithm>-<run name>)" },
    {
      name: "parts",
      value: "number",
      integer: true,
      min: 1,
      default: 4,
      help: "array tasks (module groups)",
    },
    { name: "force", help: "replace an existing output directory or job" },
    { name: "no-submit", help: "write the scripts only" },
    {
      name: "backend",
      value: "string",
      default: "cpu",
      choices: ["auto", "webgpu", "cpu"],
      help: "localise backend on the nodes",
    },
    { name: "modules", value: "string", help: "modules to use, e.g. 0-3,8 (default all)" },
    { name: "from", value: "string", help: "average: localise output whose frameLit decides lit/dark" },
    {
      name: "options",
      value: "string",
      help:
        'roi, azint, xpcs: JSON file of the algorithm\'s options (e.g. {"geometry": "a.geom", "bins": 500})',
    },
  ],
  async run(args, o) {
    const runPath = args[0];
    if (!runPath) throw new InputError(undefined, "missing argument RUN");
    if (!o.slurm) throw new InputError(undefined, "submit needs --slurm (the scheduler to use)");
    const out = prepareOut(runPath, o.out, o.algorithm, !!o.force);
    const options: Record<string, unknown> = o.algorithm === "localise"
      ? {
        backend: o.backend,
        ...(o.modules ? { modules: (await import("../localise/command.ts")).parseModules(o.modules) } : {}),
      }
      : ["roi", "azint", "xpcs"].includes(o.algorithm)
      ? await reductionOptions(o.algorithm, o.options)
      : { from: o.from ? path.resolve(o.from) : undefined };
    const fresh = !fs.existsSync(`${out}.slurm`);
    const { work, todo, job } = await prepareJob(o.algorithm, runPath, out, options, o.parts, !!o.force);
    const info: Record<string, unknown> = { work, parts: job.groups.length, todo, out };
    if (!o.noSubmit) {
      try {
        let dependency: string[] = [];
        if (todo.length) {
          const array = sbatch([`--array=${todo.join(",")}`, path.join(work, "task.sh")]);
          info.arrayJob = array;
          dependency = [`--dependency=afterok:${array}`];
        }
        info.mergeJob = sbatch([...dependency, path.join(work, "merge.sh")]);
      } catch (e) {
        // Nothing submitted: leave nothing behind (a work directory of an earlier submit stays).
        if (fresh && !info.arrayJob) fs.rmSync(work, { recursive: true, force: true });
        throw e;
      }
    }
    if (o.json) console.log(JSON.stringify(info, null, 2));
    else {
      console.log(
        `${job.algorithm} on ${job.run}: ${job.groups.length} parts, ${todo.length} to run; work ${work}`,
      );
      if (info.arrayJob) console.log(`array job ${info.arrayJob}`);
      if (info.mergeJob) console.log(`merge job ${info.mergeJob} -> ${out}`);
    }
    return EXIT.ok;
  },
};

export const runPartCommand: Command = {
  name: "run-part",
  usage: "run-part WORK I",
  help: "Run part I of a submitted job (what an array task runs).",
  options: [],
  async run(args) {
    const [work, i] = args;
    if (!work || i === undefined) throw new InputError(undefined, "usage: run-part WORK I");
    const ran = await runJobPart(path.resolve(work), Number(i));
    console.error(`xfel-redu: part ${i} ${ran ? "done" : "already done: skipped"}`);
    return EXIT.ok;
  },
};

export const mergePartsCommand: Command = {
  name: "merge-parts",
  usage: "merge-parts WORK",
  help: "Join the parts of a submitted job into its outputs (what the merge job runs).",
  options: [],
  async run(args) {
    if (!args[0]) throw new InputError(undefined, "usage: merge-parts WORK");
    console.log(`written: ${await mergeJob(path.resolve(args[0]))}`);
    return EXIT.ok;
  },
};
