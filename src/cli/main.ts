/**
 * The xfel-redu command line: `xfel-redu <command> [arguments] [options]`, the same module under Node
 * (`npx xfel-redu`, bin/xfel-redu.js) and Deno (`deno task <command>`).
 *
 * Exit codes: 0 done, 2 bad input (one line on stderr naming the file and the problem), 1 internal error.
 * Stack traces only with --debug. Results on stdout (--json for machines), messages on stderr.
 */
import { EXIT, InputError } from "../errors.ts";
import { type Command, commandHelp, COMMON, parseArgs, requireArg } from "./command.ts";
import { formatSummary, summarise } from "../exdf/inspect.ts";
import { Run } from "../exdf/run.ts";
import { localiseCommand } from "./localise.ts";
import { litframesCommand } from "./litframes.ts";
import { reduceCommand } from "./reduce.ts";
import { cxiCommand } from "./cxi.ts";
import { decompressCommand } from "./decompress.ts";
import { averageCommand } from "./average.ts";
import { roiCommand } from "./roi.ts";
import { azintCommand } from "./azint.ts";
import { xpcsCommand } from "./xpcs.ts";
import { reportCommand } from "./report.ts";
import { mergePartsCommand, runPartCommand, submitCommand } from "./submit.ts";

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

function usage(): string {
  const lines = ["usage: xfel-redu <command> [arguments] [options]", "", "commands:"];
  for (const c of commands) lines.push(`  ${c.usage.padEnd(40)} ${c.help}`);
  lines.push("", "`xfel-redu <command> --help` lists a command's options.");
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
