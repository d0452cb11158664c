/**
 * xpcs's per-train sums between its parts and its merge: each part appends a record per train to a spill file
 * (src/framework/spill.ts) as the train ends (`TrainSumsSpill`); the merge reads them back a train at a time
 * (`mergedTrainSums`), summed over the parts, for the run's g2 and for the writer (`g2Of`). Memory: the trains
 * still open in a part, a record per part in the merge; nothing per train.
 */
import { SpillReader, SpillWriter } from "../framework/spill.ts";
import { addSums, type TrainSums, type TwoTimeSums, zeroSums } from "./xpcs-spec.ts";

/** g2 = A P / (L R) per (bin, delay). */
export function g2Of(s: Pick<TrainSums, "a" | "l" | "r" | "p">): Float64Array {
  return Float64Array.from(s.a, (a, j) => {
    const lr = s.l[j] * s.r[j];
    return s.p[j] > 0 && lr > 0 ? (a * s.p[j]) / lr : NaN;
  });
}

/** Bytes of a train's record in a sums spill file: trainId, then A, L, R, P (float64, n = bins x delays each). */
const sumsBytes = (n: number) => 8 * (1 + 4 * n);

/**
 * A part's trains' sums appended to a spill file in ascending trainId as they end, one record per train
 * (`sumsBytes`): the trains still open (those of the last batch's last train, or sums of several modules not
 * yet all in) wait in memory, at most a batch's trains.
 */
export class TrainSumsSpill {
  private open = new Map<number, TrainSums>();
  private spill?: SpillWriter;
  private last = -Infinity;
  private rec: Float64Array;
  trains = 0;
  constructor(private n: number) {
    this.rec = new Float64Array(1 + 4 * n);
  }

  /** Sums of (part of) a train: added to what the part has of it. */
  add(s: TrainSums | undefined): void {
    if (!s) return;
    const t = this.open.get(s.trainId);
    if (!t) this.open.set(s.trainId, s);
    else addSums(t, s);
  }

  /** Write the trains before `trainId` (they are complete: frames come in trainId order). */
  endBefore(trainId: number): void {
    const done = [...this.open.keys()].filter((t) => t < trainId).sort((x, y) => x - y);
    for (const t of done) {
      if (t <= this.last) {
        throw new Error(`xpcs: train ${t} after train ${this.last}: frames not in train order`);
      }
      const s = this.open.get(t)!, n = this.n, r = this.rec;
      r[0] = t;
      r.set(s.a, 1);
      r.set(s.l, 1 + n);
      r.set(s.r, 1 + 2 * n);
      r.set(s.p, 1 + 3 * n);
      this.spill ??= new SpillWriter(sumsBytes(n), "xpcs-sums");
      this.spill.append(new Uint8Array(r.buffer));
      this.open.delete(t);
      this.last = t;
      this.trains++;
    }
  }

  /** Write every train; close (an empty file where no train came): the file now belongs to the merge. */
  close(): { sums: string; trains: number } {
    this.endBefore(Infinity);
    this.spill ??= new SpillWriter(sumsBytes(this.n), "xpcs-sums");
    return { sums: this.spill.close(), trains: this.trains };
  }
}

/**
 * The parts' train sums merged, in ascending trainId, a train at a time: its sums over the parts that have
 * it (the first part's, then the others' added in part order). Memory: a record per part.
 */
export function* mergedTrainSums(parts: { sums: string; trains: number }[], n: number): Generator<TrainSums> {
  const rb = sumsBytes(n);
  const cur = parts.map((p) => ({
    reader: new SpillReader(p.sums, rb),
    left: p.trains,
    rec: new Float64Array(1 + 4 * n),
    trainId: NaN,
  }));
  const next = (c: (typeof cur)[number]) => {
    if (c.left-- > 0) {
      c.reader.readInto(new Uint8Array(c.rec.buffer));
      c.trainId = c.rec[0];
    } else c.trainId = NaN;
  };
  try {
    cur.forEach(next);
    for (;;) {
      let t = Infinity;
      for (const c of cur) if (c.trainId < t) t = c.trainId;
      if (t === Infinity) return;
      let s: TrainSums | undefined;
      for (const c of cur) {
        if (c.trainId !== t) continue;
        const rec = c.rec;
        const part = {
          a: rec.subarray(1, 1 + n),
          l: rec.subarray(1 + n, 1 + 2 * n),
          r: rec.subarray(1 + 2 * n, 1 + 3 * n),
          p: rec.subarray(1 + 3 * n, 1 + 4 * n),
        };
        if (!s) {
          s = { trainId: t, a: part.a.slice(), l: part.l.slice(), r: part.r.slice(), p: part.p.slice() };
        } else addSums(s, part);
        next(c);
      }
      yield s!;
    }
  } finally {
    for (const c of cur) c.reader.close();
  }
}

/**
 * `--two-time`: the parts' sums of the train merged into C per (q bin, t1, t2), the frames those of the union
 * of the parts' pulse IDs, in pulse order (a part may lack frames of a module).
 */
export function mergedTwoTime(tts: TwoTimeSums[], bins: number): { pulseIds: number[]; c: Float64Array } {
  const pulses = [...new Set(tts.flatMap((t) => t.pulseIds))].sort((x, y) => x - y);
  const T = pulses.length;
  const acc = zeroSums(bins * T * T);
  for (const t of tts) {
    const ix = t.pulseIds.map((q) => pulses.indexOf(q));
    const n = t.pulseIds.length;
    for (let k = 0; k < bins; k++) {
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < n; j++) {
          const src = (k * n + i) * n + j, dst = (k * T + ix[i]) * T + ix[j];
          acc.a[dst] += t.a[src];
          acc.l[dst] += t.l[src];
          acc.r[dst] += t.r[src];
          acc.p[dst] += t.p[src];
        }
      }
    }
  }
  return { pulseIds: pulses, c: g2Of(acc) };
}
