/** Both entry points of the one CLI module: `npx xfel-redu` (Node, compiled) and `deno task` (Deno). */
import { describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { ROOT, runDenoTask, runNode } from "./helpers/cli.ts";

const SAMPLE = path.join(ROOT, "fixtures/sample");
const truth = JSON.parse(fs.readFileSync(path.join(SAMPLE, "truth.json"), "utf8"));

describe("inspect", () => {
  test("--json through Node describes the sample run as the truth says", () => {
    const r = runNode(["inspect", SAMPLE, "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.trains).toBe(truth.trains.length);
    expect(s.firstTrain).toBe(truth.trains[0]);
    expect(s.lastTrain).toBe(truth.trains[truth.trains.length - 1]);
    expect(s.detectors).toHaveLength(1);
    const d = s.detectors[0];
    expect(d).toMatchObject({
      name: truth.options.detectorName,
      type: "AGIPD",
      raw: false,
      modules: truth.options.modules,
      imageShape: [512, 128],
      dtype: "float32",
    });
    const moduleFrames = truth.frames.reduce(
      (a: number, f: { modules: number[] }) => a + f.modules.length,
      0,
    );
    expect(d.frames).toBe(moduleFrames);
    expect(d.framesPerTrain.max).toBe(Math.max(...truth.framesPerTrain));
    // The legacy link of the newer CORR naming must not make a module appear twice.
    expect(new Set(d.modules).size).toBe(d.modules.length);
  });

  test("deno task inspect prints the same JSON as the Node CLI", () => {
    const viaNode = runNode(["inspect", "fixtures/sample", "--json"]);
    const viaDeno = runDenoTask("inspect", ["fixtures/sample", "--json"]);
    expect(viaDeno.code).toBe(0);
    expect(JSON.parse(viaDeno.stdout)).toEqual(JSON.parse(viaNode.stdout));
  });

  test("text output names the detector, its modules and the sources", () => {
    const r = runNode(["inspect", SAMPLE]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/detector SPB_DET_AGIPD1M-1: AGIPD CORR, 3 modules \[0, 1, 2\]/);
    expect(r.stdout).toMatch(/image\.data {2}float32 \(512, 128\)/);
  });

  test("--help lists commands; a command's --help lists its options", () => {
    expect(runNode(["--help"]).stdout).toMatch(/inspect RUN/);
    expect(runNode(["localise", "--help"]).stdout).toMatch(/--threshold <number>.*\[0\.7\]/);
  });
});

describe("localise options", () => {
  test("every library parameter has a CLI option with the library default", async () => {
    const { LOCALISE_OPTIONS, toLocaliseOptions } = await import("../src/cli/localise.ts");
    const { DEFAULT_OPTIONS } = await import("../src/localise/result.ts");
    const camel = (s: string) => s.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    const byName = new Map(LOCALISE_OPTIONS.map((o) => [camel(o.name), o]));
    for (const [k, v] of Object.entries(DEFAULT_OPTIONS)) {
      if (k === "batchBytes") {
        expect(byName.get("batchMb")?.default).toBe(v / 2 ** 20);
        continue;
      }
      expect(byName.get(k)?.default, k).toBe(v);
    }
    // Options left out keep the library defaults (no undefined overrides).
    const parsed = toLocaliseOptions({ backend: "cpu", mode: "peaks", litFrom: "both", batchMb: 32 });
    expect(Object.values(parsed).some((v) => v === undefined)).toBe(false);
  });
});
