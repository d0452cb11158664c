/**
 * xpcs's per-train sums go to spill files as the trains end (`TrainSumsSpill`) and are merged a train at a time
 * (`mergedTrainSums`): the merge against a plain Map over the same pieces, trains that only some parts
 * have, an empty part, a train that comes back out of order (an error, not a wrong sum), and the records on
 * disk rather than in memory. No timing here.
 */
import { afterAll, describe, expect, test } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { mergedTrainSums, TrainSumsSpill } from "../src/reductions/xpcs-sums.ts";
import { addSums, type TrainSums } from "../src/reductions/xpcs-spec.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "xfel-xpcs-merge-"));
const saved = process.env.XFEL_REDU_SPILL_DIR;
process.env.XFEL_REDU_SPILL_DIR = tmp;

afterAll(() => {
  if (saved === undefined) delete process.env.XFEL_REDU_SPILL_DIR;
  else process.env.XFEL_REDU_SPILL_DIR = saved;
  fs.rmSync(tmp, { recursive: true, force: true });
});

let seed = 7;
const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;

function piece(trainId: number, n: number): TrainSums {
  const v = () => Float64Array.from({ length: n }, () => rand() * 1e3 - 100);
  return {
    trainId,
    a: v(),
    l: v(),
    r: v(),
    p: Float64Array.from({ length: n }, () => Math.floor(rand() * 50)),
  };
}

const copy = (s: TrainSums): TrainSums => ({
  ...s,
  a: s.a.slice(),
  l: s.l.slice(),
  r: s.r.slice(),
  p: s.p.slice(),
});

describe("xpcs train sums through spill files", () => {
  test("the merge equals a Map over the same pieces; trains only some parts have; an empty part", () => {
    const n = 6;
    // Per part: batches of pieces (a train's modules come as several pieces, a train may span batches).
    const plan: number[][][] = [
      [[1, 1, 2], [2, 3, 3], [5, 9]],
      [[2, 3], [4, 4, 4], [9, 9, 12]],
      [],
    ];
    const reference = new Map<number, TrainSums>();
    const parts = plan.map((batches) => {
      const spill = new TrainSumsSpill(n);
      const mine = new Map<number, TrainSums>();
      for (const batch of batches) {
        for (const t of batch) {
          const s = piece(t, n);
          const m = mine.get(t);
          if (m) addSums(m, s);
          else mine.set(t, copy(s));
          spill.add(s);
        }
        spill.endBefore(batch[batch.length - 1]);
      }
      for (const [t, s] of [...mine].sort((x, y) => x[0] - y[0])) {
        const r = reference.get(t);
        if (r) addSums(r, s);
        else reference.set(t, copy(s));
      }
      return spill.close();
    });
    expect(parts.map((p) => p.trains)).toEqual([5, 5, 0]);
    // Each train a record on disk: trainId and four sums of n float64.
    expect(parts.map((p) => fs.statSync(p.sums).size)).toEqual([5, 5, 0].map((t) => t * 8 * (1 + 4 * n)));
    const merged = [...mergedTrainSums(parts, n)];
    expect(merged.map((s) => s.trainId)).toEqual([1, 2, 3, 4, 5, 9, 12]);
    for (const s of merged) {
      const r = reference.get(s.trainId)!;
      expect(s.a).toEqual(r.a);
      expect(s.l).toEqual(r.l);
      expect(s.r).toEqual(r.r);
      expect(s.p).toEqual(r.p);
    }
    // Read twice (the run's g2, then the writer): the same.
    expect([...mergedTrainSums(parts, n)]).toEqual(merged);
  });

  test("a train that comes back after the part wrote it is an error", () => {
    const spill = new TrainSumsSpill(2);
    spill.add(piece(10, 2));
    spill.add(piece(11, 2));
    spill.endBefore(11);
    spill.add(piece(10, 2));
    expect(() => spill.endBefore(11)).toThrow(/train 10 after train 10/);
  });

  test("2,000 trains of the default size (20 bins x 32 delays): each on disk as it ends, merged back in order", () => {
    const n = 640, spill = new TrainSumsSpill(n);
    for (let t = 0; t < 2000; t++) {
      spill.add(piece(t, n));
      spill.endBefore(t);
    }
    const { sums, trains } = spill.close();
    expect(trains).toBe(2000);
    expect(fs.statSync(sums).size).toBe(2000 * 8 * (1 + 4 * n));
    let k = 0;
    for (const s of mergedTrainSums([{ sums, trains }], n)) expect(s.trainId).toBe(k++);
    expect(k).toBe(2000);
  });
});
