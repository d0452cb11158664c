/** Stage 6 (ROIs) and the classifier helpers, on hand-made boxes and scores. */
import { describe, expect, test } from "vitest";
import { type Box, overlaps, RoiSet } from "../src/localise/rois.ts";
import { adaptiveThreshold, adaptiveThresholdStreamed, quantile } from "../src/localise/classify.ts";

const covers = (rois: Box[], b: Box) =>
  rois.some((r) => r[0] <= b[0] && r[1] <= b[1] && r[2] >= b[2] && r[3] >= b[3]);

describe("RoiSet", () => {
  test("pads by the margin and clips to the module", () => {
    const r = new RoiSet(512, 128, 4, 32);
    r.add([1, 126, 3, 128]);
    expect(r.result()).toEqual([[0, 122, 7, 128]]);
  });

  test("overlapping padded boxes merge into their bounding box; distant ones stay apart", () => {
    const r = new RoiSet(512, 128, 2, 32);
    r.add([10, 10, 12, 12]);
    r.add([15, 15, 17, 17]); // padded boxes [8,8,14,14] and [13,13,19,19] overlap
    r.add([100, 100, 102, 102]);
    expect(r.result()).toEqual([[8, 8, 19, 19], [98, 98, 104, 104]]);
  });

  test("a merge that creates a new overlap merges again (chains)", () => {
    const r = new RoiSet(512, 128, 0, 32);
    r.add([0, 0, 2, 10]);
    r.add([0, 20, 2, 30]);
    r.add([1, 5, 3, 25]); // touches both
    expect(r.result()).toEqual([[0, 0, 3, 30]]);
  });

  test("never more than maxRois; every added box stays covered; results never overlap", () => {
    const r = new RoiSet(512, 128, 4, 8);
    const added: Box[] = [];
    let seed = 1;
    const rnd = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
    for (let i = 0; i < 400; i++) {
      const ss = Math.floor(rnd() * 500), fs = Math.floor(rnd() * 120);
      const b: Box = [ss, fs, ss + 1 + Math.floor(rnd() * 5), fs + 1 + Math.floor(rnd() * 5)];
      added.push(b);
      r.add(b);
    }
    const rois = r.result();
    expect(rois.length).toBeLessThanOrEqual(8);
    for (const b of added) expect(covers(rois, b)).toBe(true);
    for (let i = 0; i < rois.length; i++) {
      for (let j = i + 1; j < rois.length; j++) expect(overlaps(rois[i], rois[j])).toBe(false);
    }
  });

  test("over maxRois, the closest pair merges first", () => {
    const r = new RoiSet(512, 128, 0, 2);
    r.add([0, 0, 2, 2]);
    r.add([0, 5, 2, 7]); // gap 3 from the first
    r.add([300, 0, 302, 2]); // far away
    expect(r.result()).toEqual([[0, 0, 2, 7], [300, 0, 302, 2]]);
  });
});

describe("adaptive threshold", () => {
  test("median + snr * IQR / 1.349, quantiles as numpy's linear default", () => {
    expect(quantile([1, 2, 3, 4], 0.5)).toBe(2.5);
    expect(quantile([1, 2, 3, 4], 0.25)).toBe(1.75);
    const s = [1, 2, 3, 4, 5, 6, 7, 8, 9, 100, NaN];
    // finite values: median 5.5, q25 3.25, q75 7.75 -> 5.5 + 4 * 4.5 / 1.349
    expect(adaptiveThreshold(s, 4)).toBeCloseTo(5.5 + (4 * 4.5) / 1.349, 10);
  });

  test("streamed in blocks (bounded memory) it is exactly the threshold of the sorted scores", () => {
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
    const cases: number[][] = [
      [],
      [NaN, Infinity, -Infinity],
      [0.5],
      [0.25, 0.75],
      [3, 1, 2],
      [0, -0, 0, -0, 1e-30, -1e-30],
      Array.from({ length: 1000 }, () => 0), // one value: every statistic in one bucket
      Array.from({ length: 5000 }, () => Math.floor(rand() * 7) / 7), // ties
      // Scores whose keys share their high 16 bits: the statistics differ only in the low bits.
      Array.from({ length: 3001 }, (_, i) => 0.5 + i * 2 ** -23),
      Array.from({ length: 20_000 }, () => (rand() < 0.01 ? NaN : rand() ** 4)),
      Array.from({ length: 4099 }, () => (rand() - 0.3) * 1e3),
    ];
    for (const values of cases) {
      const scores = Float32Array.from(values);
      for (const block of [1, 3, 1000, 1 << 20]) {
        const passes = () =>
          Array.from(
            { length: Math.ceil(scores.length / block) },
            (_, i) => scores.subarray(i * block, (i + 1) * block),
          );
        for (const snr of [0, 4]) {
          expect(adaptiveThresholdStreamed(passes, snr), `${values.length} values, blocks of ${block}`)
            .toBe(adaptiveThreshold(scores, snr));
        }
      }
    }
  });
});
