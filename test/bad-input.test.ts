/** Bad input: one line naming the file and the problem, exit code 2, no stack trace unless --debug. */
import { beforeAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ensureGroup, h5 } from "../src/exdf/h5.ts";
import { runNode } from "./helpers/cli.ts";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-bad-"));

beforeAll(async () => {
  const lib = await h5();
  fs.mkdirSync(path.join(dir, "empty"));
  fs.writeFileSync(path.join(dir, "text.h5"), "this is not HDF5\n");
  // A valid HDF5 file without EuXFEL layout.
  const plain = new lib.File(path.join(dir, "plain.h5"), "w");
  plain.create_dataset({ name: "x", data: new Float32Array([1, 2, 3]) });
  plain.close();
  // An EuXFEL file with no detector source; and a truncated copy of a bigger file.
  const nodet = new lib.File(path.join(dir, "RAW-R0001-DA01-S00000.h5"), "w");
  const meta = ensureGroup(nodet, "METADATA/dataSources");
  meta.create_dataset({ name: "dataSourceId", data: ["CONTROL/SA1_XTD2_XGM/DOOCS/MAIN"] });
  meta.create_dataset({ name: "root", data: ["CONTROL"] });
  meta.create_dataset({ name: "deviceId", data: ["SA1_XTD2_XGM/DOOCS/MAIN"] });
  ensureGroup(nodet, "METADATA").create_dataset({ name: "dataFormatVersion", data: ["1.2"] });
  ensureGroup(nodet, "INDEX").create_dataset({ name: "trainId", data: new BigUint64Array([10n, 11n]) });
  const idx = ensureGroup(nodet, "INDEX/SA1_XTD2_XGM/DOOCS/MAIN");
  idx.create_dataset({ name: "first", data: new BigUint64Array([0n, 1n]) });
  idx.create_dataset({ name: "count", data: new BigUint64Array([1n, 1n]) });
  const c = ensureGroup(nodet, "CONTROL/SA1_XTD2_XGM/DOOCS/MAIN/pulseEnergy/photonFlux");
  c.create_dataset({ name: "value", data: new Float32Array([1, 2]) });
  c.create_dataset({ name: "timestamp", data: new BigUint64Array([1n, 2n]) });
  c.create_dataset({ name: "big", data: new Float32Array(1 << 18) });
  nodet.close();
  const whole = fs.readFileSync(path.join(dir, "RAW-R0001-DA01-S00000.h5"));
  fs.writeFileSync(path.join(dir, "truncated.h5"), whole.subarray(0, whole.length >> 1));
});

const cases: [string, string, RegExp][] = [
  ["a missing path", "missing-run", /no such file or directory/],
  ["a directory without HDF5 files", "empty", /holds no HDF5/],
  ["a file that is not HDF5", "text.h5", /not an HDF5 file/],
  ["a truncated file", "truncated.h5", /truncated/],
  ["an HDF5 file without EuXFEL layout", "plain.h5", /not an EuXFEL data file/],
  ["a run with no detector", "RAW-R0001-DA01-S00000.h5", /no detector/],
];

describe("bad input", () => {
  for (const [what, name, problem] of cases) {
    test(`${what}: one line, exit 2`, () => {
      const file = path.join(dir, name);
      const r = runNode(["inspect", file]);
      expect(r.code).toBe(2);
      const lines = r.stderr.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(file);
      expect(lines[0]).toMatch(problem);
    });
  }

  test("--debug adds the stack trace", () => {
    const r = runNode(["inspect", path.join(dir, "text.h5"), "--debug"]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split("\n").length).toBeGreaterThan(1);
    expect(r.stderr).toMatch(/at .*h5\.(ts|js)/);
  });

  test("unknown command and option", () => {
    expect(runNode(["frobnicate"]).code).toBe(2);
    const r = runNode(["inspect", dir, "--no-such-option"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown option --no-such-option/);
  });
});
