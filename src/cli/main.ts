/**
 * The xfel-redu command line: `xfel-redu <command> [arguments] [options]`, the same module under Node
 * (`npx xfel-redu`, bin/xfel-redu.js) and Deno (`deno task <command>`).
 *
 * Exit codes: 0 done, 2 bad input (one line on stderr naming the file and the problem), 1 internal error.
 * Stack traces only with --debug. Results on stdout (--json for machines), messages on stderr.
 */
import { EXIT, InputError } from "../errors.ts";
import { formatSummary, summarise } from "../exdf/inspect.ts";
import { Run } from "../exdf/run.ts";
import { localiseCommand } from "../localise/command.ts";
import { litframesCommand } from "../beam/litframes.ts";
import { reduceCommand } from "../reduce/reduce.ts";
import { cxiCommand } from "../localise/cxi.ts";
import { decompressCommand } from "../compress/decompress.ts";
import { averageCommand } from "../average/average.ts";
import { roiCommand } from "../reductions/roi.ts";
import { azintCommand } from "../reductions/azint.ts";
import { xpcsCommand } from "../reductions/xpcs.ts";
import { reportCommand } from "../report/model.ts";
import { mergePartsCommand, runPartCommand, submitCommand } from "../framework/slurm.ts";

export interface OptionSpec {
  name: string;
  help: string;
  /** Absent for flags. */
  value?: "number" | "string";
  /** The option may be given several times: its value is then the list of values. */
  repeat?: boolean;
  default?: number | string | boolean;
  /** The values a string option takes. */
  choices?: readonly string[];
  /** A number option that must be an integer. */
  integer?: boolean;
  /** Bounds of a number option (inclusive). */
  min?: number;
  max?: number;
}

export interface Command {
  name: string;
  usage: string;
  help: string;
  options: OptionSpec[];
  run(args: string[], options: Record<string, any>): Promise<number>;
}

const COMMON: OptionSpec[] = [
  { name: "json", help: "print a JSON object on stdout instead of text" },
  { name: "debug", help: "print stack traces on errors" },
  { name: "help", help: "show this help" },
];

const commands: Command[] = [
  {
    name: "inspect",
    usage: "inspect RUN",
    help: "Describe a run (directory or file): trains, sources and keys, detectors and modules.",
    options: [],
    async run(args, opts) {
      const run = await Run.open(requireArg(args, 0, "RUN"));
      try {
        const s = summarise(run);
        for (const w of s.warnings) console.error(`xfel-redu: warning: ${w}`);
        console.log(opts.json ? JSON.stringify(s, null, 2) : formatSummary(s));
        if (s.detectors.length === 0) throw new InputError(run.path, "no detector data in this run");
      } finally {
        run.close();
      }
      return EXIT.ok;
    },
  },
  localiseCommand,
  litframesCommand,
  reduceCommand,
  cxiCommand,
  decompressCommand,
  averageCommand,
  roiCommand,
  azintCommand,
  xpcsCommand,
  reportCommand,
  submitCommand,
  runPartCommand,
  mergePartsCommand,
];

/** Register a command (the modules of later stages call this). */
export function addCommand(c: Command): void {
  commands.push(c);
}

function requireArg(args: string[], i: number, name: string): string {
  if (args[i] === undefined) throw new InputError(undefined, `missing argument ${name}`);
  return args[i];
}

export function parseArgs(
  argv: string[],
  specs: OptionSpec[],
): { args: string[]; options: Record<string, any> } {
  const options: Record<string, any> = {};
  for (const s of specs) if (s.default !== undefined) options[camel(s.name)] = s.default;
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) {
      args.push(a);
      continue;
    }
    const [name, inline] = a.slice(2).split(/=(.*)/s, 2);
    const spec = specs.find((s) => s.name === name);
    if (!spec) throw new InputError(undefined, `unknown option --${name}`);
    if (!spec.value) {
      options[camel(name)] = true;
      continue;
    }
    const v = inline ?? argv[++i];
    if (v === undefined) throw new InputError(undefined, `option --${name} needs a value`);
    const checked = checkValue(spec, v);
    if (spec.repeat) (options[camel(name)] ??= []).push(checked);
    else options[camel(name)] = checked;
  }
  return { args, options };
}

/** A declared option's value, checked against its declaration (type, choices, integer, bounds). */
function checkValue(spec: OptionSpec, v: string): number | string {
  const bad = (why: string) => new InputError(undefined, `option --${spec.name}: must be ${why}, not ${v}`);
  if (spec.value !== "number") {
    if (spec.choices && !spec.choices.includes(v)) throw bad(`one of ${spec.choices.join(", ")}`);
    return v;
  }
  const n = v.trim() === "" ? NaN : Number(v);
  if (!Number.isFinite(n)) throw new InputError(undefined, `option --${spec.name}: not a number: ${v}`);
  const range = spec.min !== undefined && spec.max !== undefined
    ? ` in ${spec.min}..${spec.max}`
    : spec.min !== undefined
    ? ` >= ${spec.min}`
    : spec.max !== undefined
    ? ` <= ${spec.max}`
    : "";
  const what = `${spec.integer ? "an integer" : "a number"}${range}`;
  if (spec.integer && !Number.isInteger(n)) throw bad(what);
  if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) throw bad(what);
  return n;
}

function camel(s: string): string {
  return s.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
}

function usage(): string {
  const lines = ["usage: xfel-redu <command> [arguments] [options]", "", "commands:"];
  for (const c of commands) lines.push(`  ${c.usage.padEnd(40)} ${c.help}`);
  lines.push("", "`xfel-redu <command> --help` lists a command's options.");
  return lines.join("\n");
}

function commandHelp(c: Command): string {
  const lines = [`usage: xfel-redu ${c.usage}`, "", c.help, "", "options:"];
  for (const o of [...c.options, ...COMMON]) {
    const flag = `--${o.name}${o.choices ? ` <${o.choices.join("|")}>` : o.value ? ` <${o.value}>` : ""}`;
    const def = o.default !== undefined && o.value ? ` [${o.default}]` : "";
    lines.push(`  ${flag.padEnd(28)} ${o.help}${def}`);
  }
  return lines.join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes("--debug");
  try {
    const [name, ...rest] = argv;
    if (!name || name === "--help" || name === "help") {
      console.log(usage());
      return name ? EXIT.ok : EXIT.badInput;
    }
    const cmd = commands.find((c) => c.name === name);
    if (!cmd) throw new InputError(undefined, `unknown command: ${name} (try --help)`);
    if (rest.includes("--help")) {
      console.log(commandHelp(cmd));
      return EXIT.ok;
    }
    const { args, options } = parseArgs(rest, [...cmd.options, ...COMMON]);
    return await cmd.run(args, options);
  } catch (e) {
    if (e instanceof InputError) {
      console.error(`xfel-redu: ${e.message}`);
      if (debug) console.error(e.stack);
      return EXIT.badInput;
    }
    console.error(`xfel-redu: internal error: ${e instanceof Error ? e.message.split("\n")[0] : e}`);
    if (debug) console.error(e);
    return EXIT.internal;
  }
}

// Run when executed directly under Deno (`deno run src/cli/main.ts ...`); Node goes through bin/xfel-redu.js.
const g = globalThis as { Deno?: { args: string[]; exit(code: number): never } };
if (g.Deno && (import.meta as { main?: boolean }).main) {
  const code = await main(g.Deno.args);
  g.Deno.exit(code);
}
