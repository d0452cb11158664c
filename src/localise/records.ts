/** The spill record of a module frame (ASIC counters and peaks) that parts write and the merge reads back. */
import * as fs from "node:fs";
import { SpillReader } from "../framework/spill.ts";
import { type BatchResult } from "./spec.ts";

/** Bytes of one peak in a spill record: box (4), area, intensity, ss, fs, max, snr as float64. */
export const PEAK_BYTES = 80;

/** Bytes of a module frame's fixed header in a spill record: nPeaks, peaks stored, 4 x nAsics counters. */
export function headerBytes(nA: number): number {
  return Math.ceil(((2 + 4 * nA) * 4) / 8) * 8;
}

/**
 * One frame's spill record for the part's modules: per module, a header (u32 nPeaks, u32 peaks stored,
 * u32 litPixels[nA], f32 litIntensity[nA], u32 unmaskedPixels[nA], u32 filteredLit[nA], padded to 8 bytes)
 * then the stored peaks (PEAK_BYTES each). Absent module frames are zeros.
 */
export function frameRecords(
  n: number,
  nMod: number,
  nA: number,
  results: (BatchResult | undefined)[],
  present: ArrayLike<number>[],
): Uint8Array {
  const hb = headerBytes(nA);
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    for (let m = 0; m < nMod; m++) {
      bytes += hb + (present[m][i] ? results[m]!.peaks[i].length * PEAK_BYTES : 0);
    }
  }
  const buf = new ArrayBuffer(bytes);
  let o = 0;
  for (let i = 0; i < n; i++) {
    for (let m = 0; m < nMod; m++) {
      const r = results[m]!;
      const u = new Uint32Array(buf, o, 2 + 4 * nA);
      const peaks = present[m][i] ? r.peaks[i] : [];
      if (present[m][i]) {
        u[0] = r.nPeaks[i];
        u[1] = peaks.length;
        u.set(r.litPixels.subarray(i * nA, (i + 1) * nA), 2);
        new Float32Array(buf, o + (2 + nA) * 4, nA).set(r.litIntensity.subarray(i * nA, (i + 1) * nA));
        u.set(r.unmaskedPixels.subarray(i * nA, (i + 1) * nA), 2 + 2 * nA);
        u.set(r.filteredLit.subarray(i * nA, (i + 1) * nA), 2 + 3 * nA);
      }
      o += hb;
      for (const p of peaks) {
        const d = new Float64Array(buf, o, PEAK_BYTES / 8);
        d.set(p.box);
        d[4] = p.area;
        d[5] = p.intensity;
        d[6] = p.ss;
        d[7] = p.fs;
        d[8] = p.max;
        d[9] = p.snr;
        o += PEAK_BYTES;
      }
    }
  }
  return new Uint8Array(buf);
}

/**
 * A spill file read as a byte stream (the records have variable length), through one read buffer that is
 * reused: a merge reads its spill files two or three times, and a fresh 1 MB buffer per read piled up for
 * tens of MB before V8 freed it (their objects outlive the young generation). A view that `take` returns is
 * valid until the next `take`.
 */
export class SpillStream {
  private reader: SpillReader;
  private left: number;
  private store = new Uint8Array(0);
  private buf: Uint8Array = this.store;
  private pos = 0;
  constructor(file: string) {
    this.reader = new SpillReader(file, 1);
    this.left = fs.statSync(file).size;
  }
  /**
   * The next n bytes, 8-byte aligned (byteOffset a multiple of 8): a view of the read buffer when they lie
   * in it, else (a record across two reads) a fresh copy. No allocation per record: a block of the merge
   * takes thousands of them. Valid until the next call.
   */
  take(n: number): Uint8Array {
    if (this.buf.length - this.pos >= n && (this.buf.byteOffset + this.pos) % 8 === 0) {
      const v = this.buf.subarray(this.pos, this.pos + n);
      this.pos += n;
      return v;
    }
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      if (this.pos === this.buf.length) {
        // The buffer's bytes are all taken (copied into out, or views the caller is done with): refill it.
        const k = Math.min(this.left, Math.max(n - got, 1 << 20));
        if (k === 0) throw new Error(`${this.reader.path}: spill file ends early`);
        if (this.store.length < k) this.store = new Uint8Array(k);
        this.buf = this.reader.readInto(this.store.subarray(0, k));
        this.left -= k;
        this.pos = 0;
      }
      const k = Math.min(n - got, this.buf.length - this.pos);
      out.set(this.buf.subarray(this.pos, this.pos + k), got);
      this.pos += k;
      got += k;
    }
    return out;
  }
  close(): void {
    this.reader.close();
  }
}
