/**
 * `submit --slurm`, `run-part` and `merge-parts`: the command line of the SLURM jobs of
 * src/framework/slurm.ts (options files of roi / azint / xpcs read here).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { EXIT, InputError } from "../errors.ts";
import { prepareOut } from "../app/outdir.ts";
import { mergeJob, prepareJob, runJobPart, sbatch } from "../framework/slurm.ts";
import { parseModules } from "./localise.ts";
import { readRoiFile } from "../reductions/roi.ts";
import { checkAzintOptions, DEFAULT_AZINT } from "../reductions/azint.ts";
import { algorithm, ALGORITHM_IDS } from "./algorithms.ts";
import type { Command } from "./command.ts";

/** The options of roi / azint / xpcs from a JSON file, as their APIs take them (paths made absolute). */
function reductionOptions(
  algorithm: string,
  file: string | undefined,
): Record<string, unknown> {
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
    return { backend: "cpu", ...o, rois: readRoiFile(file) };
  }
  if (algorithm === "azint") {
    const a = { ...DEFAULT_AZINT, backend: "cpu", ...o };
    checkAzintOptions(a as never);
    return a;
  }
  return o;
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
      choices: ALGORITHM_IDS,
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
        ...(o.modules ? { modules: parseModules(o.modules) } : {}),
      }
      : ["roi", "azint", "xpcs"].includes(o.algorithm)
      ? reductionOptions(o.algorithm, o.options)
      : { from: o.from ? path.resolve(o.from) : undefined };
    const fresh = !fs.existsSync(`${out}.slurm`);
    const { work, todo, job } = await prepareJob(
      algorithm(o.algorithm),
      runPath,
      out,
      options,
      o.parts,
      !!o.force,
    );
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
