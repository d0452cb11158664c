/**
 * Once per `vitest run`: the Debian tools that some tests need (test/helpers/tools.ts). On CI every one must
 * be there; elsewhere one line names the skipped checks and the install line. The run index cache of the
 * tests' processes (src/exdf/run-cache.ts) goes to a temporary directory, removed at the end, not to the
 * user's ~/.cache.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { CI, missingTools, TOOLS } from "./tools.ts";

export default function setup(): () => void {
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-redu-test-cache-"));
  process.env.XFEL_REDU_CACHE_DIR = cache;
  const teardown = () => fs.rmSync(cache, { recursive: true, force: true });
  const missing = missingTools();
  if (!missing.length) return teardown;
  const pkgs = missing.flatMap((t) => TOOLS[t].packages.map((p) => p.split(" ")[0]));
  const line = `tests needing ${missing.join(", ")} (${missing.map((t) => TOOLS[t].what).join("; ")})`;
  if (CI) throw new Error(`CI: ${line} cannot run: apt-get install ${pkgs.join(" ")}`);
  process.stderr.write(`SKIPPED: ${line}. To run them: apt-get install ${pkgs.join(" ")}\n`);
  return teardown;
}
