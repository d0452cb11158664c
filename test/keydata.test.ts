/**
 * exdf/keydata.ts against EXtra-data (an independent reader of the same INDEX): per-train values of a control
 * key, every row of a fast key per train, and the rows of a train read into a caller buffer.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Run } from "../src/exdf/run.ts";
import { KeyData } from "../src/exdf/keydata.ts";
import { have, PYTHON } from "./helpers/tools.ts";

// A copy: EXtra-data writes its file map (karabo_data_map.json) into a run directory it may write.
let SAMPLE = "";
beforeAll(() => {
  SAMPLE = fs.mkdtempSync(path.join(os.tmpdir(), "keydata-"));
  fs.cpSync(path.resolve(__dirname, "../fixtures/sample"), SAMPLE, { recursive: true });
});
afterAll(() => fs.rmSync(SAMPLE, { recursive: true, force: true }));
const XGM = "SA1_XTD2_XGM/XGM/DOOCS:output";
const CTL = "SPB_DET_AGIPD1M-1/MDL/FPGA_COMP";

/** EXtra-data's view of a key: train ID of each row and the rows (flattened). */
function extraData(source: string, key: string): { tid: number[]; rows: number[][] } {
  const py = `
import json, sys
from extra_data import RunDirectory
kd = RunDirectory(sys.argv[1])[sys.argv[2], sys.argv[3]]
a = kd.ndarray()
print(json.dumps({"tid": [int(t) for t in kd.xarray().coords["trainId"].values],
                  "rows": [[float(x) for x in r.ravel()] for r in a.reshape(len(a), -1)]}))
`;
  const r = spawnSync(PYTHON, ["-c", py, SAMPLE, source, key], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout);
}

describe.skipIf(!have("extra-data"))("KeyData reads what EXtra-data reads", () => {
  test("control key: one value per train; fast key: every row of each train, into a caller buffer", async () => {
    const run = await Run.open(SAMPLE);
    try {
      const ctl = extraData(CTL, "bunchStructure.nPulses.value");
      const want = new Map<number, number>();
      ctl.tid.forEach((t, i) => want.has(t) || want.set(t, ctl.rows[i][0]));
      const got = new KeyData(run, CTL, "bunchStructure.nPulses").trainValues();
      expect([...got]).toEqual([...want]);
      expect(got.size).toBeGreaterThan(0);

      const xgm = extraData(XGM, "data.intensityTD");
      const kd = new KeyData(run, XGM, "data.intensityTD");
      const per = kd.entrySize;
      expect(per).toBe(xgm.rows[0].length);
      const tids: number[] = [];
      for (const t of kd.trains()) for (let i = 0; i < t.count; i++) tids.push(t.trainId);
      expect(tids).toEqual(xgm.tid);
      for (const t of new Set(xgm.tid)) {
        const rows = xgm.rows.filter((_, i) => xgm.tid[i] === t);
        const out = new Float64Array(rows.length * per);
        expect(kd.readTrain(t, out)).toBe(rows.length);
        expect(Array.from(out)).toEqual(rows.flat().map((x) => Math.fround(x)));
      }
      expect(kd.readTrain(12345, new Float64Array(per))).toBe(0);
    } finally {
      run.close();
    }
  });
});
