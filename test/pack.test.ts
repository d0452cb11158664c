/**
 * Embedding: `npm pack` gives a tarball that a pipeline installs without the source tree; its `xfel-redu`
 * bin runs localise, and `import { localise } from "xfel-redu"` returns the same results as the CLI.
 */
import { afterAll, expect, test } from "vitest";
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ROOT } from "./helpers/cli.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-pack-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

test("the packed tarball installs into an empty project and runs localise (bin and library)", () => {
  const npm = (args: string[], cwd: string) =>
    execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd, encoding: "utf8" });
  const packed = JSON.parse(npm(["pack", "--json", "--ignore-scripts", "--pack-destination", tmp], ROOT));
  const tarball = path.join(tmp, packed[0].filename);
  const files: string[] = packed[0].files.map((f: { path: string }) => f.path);
  expect(files).toContain("dist/src/cli/main.js");
  expect(files).toContain("shaders/litpixels.wgsl");
  expect(files.some((f) => f.startsWith("test/"))).toBe(false);

  const proj = path.join(tmp, "pipeline");
  fs.mkdirSync(proj);
  fs.writeFileSync(
    path.join(proj, "package.json"),
    JSON.stringify({ name: "pipeline", private: true, type: "module" }),
  );
  npm(["install", "--prefer-offline", tarball], proj);

  const out = path.join(tmp, "out");
  const sample = path.join(ROOT, "fixtures/sample");
  const bin = spawnSync(path.join(proj, "node_modules/.bin/xfel-redu"), [
    "localise",
    sample,
    "--out",
    out,
    "--backend",
    "cpu",
    "--json",
  ], {
    cwd: proj,
    encoding: "utf8",
  });
  expect(bin.stderr).toBe("");
  expect(bin.status).toBe(0);
  const viaBin = JSON.parse(bin.stdout);

  fs.writeFileSync(
    path.join(proj, "use.js"),
    `import { localise } from "xfel-redu";
const r = await localise(${JSON.stringify(sample)}, { backend: "cpu" });
console.log(JSON.stringify({ frames: r.frames, litFrames: r.litFrames, modules: r.modules }));\n`,
  );
  const lib = JSON.parse(execFileSync(process.execPath, ["use.js"], { cwd: proj, encoding: "utf8" }));
  expect(lib.frames).toBe(viaBin.frames);
  expect(lib.litFrames).toBe(viaBin.litFrames);
  expect(lib.modules).toEqual(viaBin.modules);
  const truth = JSON.parse(fs.readFileSync(path.join(sample, "truth.json"), "utf8"));
  expect(viaBin.litFrames).toBe(truth.frames.filter((f: { lit: boolean }) => f.lit).length);
}, 300_000);
