/**
 * The structure check CI runs (scripts/check-structure.mjs): it passes on this repository and fails, naming
 * the files, on an import cycle (type-only included), on an import of cli/ from below it, and on a long file.
 */
import { describe, expect, test } from "vitest";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ROOT } from "./helpers/cli.ts";

const SCRIPT = path.join(ROOT, "scripts/check-structure.mjs");

function check(root?: string) {
  const r = spawnSync(process.execPath, [SCRIPT, ...(root ? ["--root", root] : [])], { encoding: "utf8" });
  return { code: r.status, out: r.stdout + r.stderr };
}

function tree(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "structure-"));
  for (const [f, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, "src", f)), { recursive: true });
    fs.writeFileSync(path.join(dir, "src", f), text);
  }
  return dir;
}

describe("check-structure", () => {
  test("this repository passes", () => {
    const r = check();
    expect(r.out).toMatch(/no import cycle/);
    expect(r.code).toBe(0);
  });

  test("a type-only import cycle fails and names its files", () => {
    const dir = tree({
      "a/x.ts": 'import type { Y } from "../b/y.ts";\nexport type X = Y;\n',
      "b/y.ts": 'import type { X } from "../a/x.ts";\nexport type Y = number;\nexport type Z = X;\n',
      "c/ok.ts": 'import type { Y } from "../b/y.ts";\nexport const ok: Y = 1;\n',
    });
    const r = check(dir);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/import cycle of 2 files: src\/a\/x\.ts, src\/b\/y\.ts/);
    expect(r.out).not.toMatch(/ok\.ts/);
  });

  test("an import of cli/ from below it and a file over 800 lines fail", () => {
    const dir = tree({
      "cli/command.ts": "export const c = 1;\n",
      "localise/x.ts": 'import { c } from "../cli/command.ts";\nexport const x = c;\n',
      "big.ts": "export const a = 1;\n".repeat(801),
    });
    const r = check(dir);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/src\/localise\/x\.ts imports src\/cli\/command\.ts/);
    expect(r.out).toMatch(/src\/big\.ts: 802 lines/);
  });
});
