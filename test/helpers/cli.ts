/** Run the CLI as a user would: through Node's bin (compiled dist/) or `deno task`. */
import { spawnSync } from "node:child_process";
import * as path from "node:path";

export const ROOT = path.resolve(import.meta.dirname, "../..");
export const DENO = path.join(ROOT, "node_modules/.bin/deno");

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function done(r: ReturnType<typeof spawnSync>): CliResult {
  return { code: r.status ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** `node bin/xfel-redu.js ...` (what `npx xfel-redu` runs). */
export function runNode(
  args: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
): CliResult {
  return done(
    spawnSync(process.execPath, [path.join(ROOT, "bin/xfel-redu.js"), ...args], {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, ...opts.env },
      encoding: "utf8",
      maxBuffer: 1 << 28,
    }),
  );
}

/** `deno task <command> ...` from the project root. */
export function runDenoTask(command: string, args: string[]): CliResult {
  return done(
    spawnSync(DENO, ["task", "-q", command, ...args], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: "1" },
      encoding: "utf8",
      maxBuffer: 1 << 28,
    }),
  );
}
