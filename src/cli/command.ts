/**
 * Commands and their options on the command line: the Command shape, parsing argv against a command's
 * declared options (type, choices, integer, bounds checked here, once for every command), and help text.
 */
import { InputError } from "../errors.ts";
import type { OptionSpec } from "../framework/options.ts";

export type { OptionSpec };

export interface Command {
  name: string;
  usage: string;
  help: string;
  options: OptionSpec[];
  run(args: string[], options: Record<string, any>): Promise<number>;
}

export const COMMON: OptionSpec[] = [
  { name: "json", help: "print a JSON object on stdout instead of text" },
  { name: "debug", help: "print stack traces on errors" },
  { name: "help", help: "show this help" },
];

export function requireArg(args: string[], i: number, name: string): string {
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

export function commandHelp(c: Command): string {
  const lines = [`usage: xfel-redu ${c.usage}`, "", c.help, "", "options:"];
  for (const o of [...c.options, ...COMMON]) {
    const flag = `--${o.name}${o.choices ? ` <${o.choices.join("|")}>` : o.value ? ` <${o.value}>` : ""}`;
    const def = o.default !== undefined && o.value ? ` [${o.default}]` : "";
    lines.push(`  ${flag.padEnd(28)} ${o.help}${def}`);
  }
  return lines.join("\n");
}
