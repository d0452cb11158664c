/**
 * The SZ-style codec (src/compress/sz.ts, src/compress/huffman.ts) on the CPU, and the quality metrics
 * (src/compress/quality.ts): the error bound holds on random, detector-like and edge data (0, -0,
 * negatives, huge, subnormals, NaN payloads, Inf), on empty, one-pixel and thin frames, at bounds from
 * 2^-100 to 2^100; the stream format's header and its checks; Huffman lengths (Kraft, the 24-bit limit);
 * PSNR and SSIM against direct implementations written here. GPU == CPU: test/compress-gpu.test.ts.
 */
import { describe, expect, test } from "vitest";
import { BitWriter, canonicalCodes, codeLengths, HuffmanDecoder, MAX_LEN } from "../src/compress/huffman.ts";
import { quality, QualityAccumulator, ssimFrame } from "../src/compress/quality.ts";
import {
  prequant,
  SZ_HEADER_BYTES,
  SZ_MAGIC,
  szCodesCpu,
  szConstants,
  szDecode,
  szEncodeCpu,
  SzFrameDecoder,
  szFrameInfo,
} from "../src/compress/sz.ts";
import { uniform } from "../fixtures/synth.ts";

const prng = uniform;

function gauss(r: () => number): number {
  return Math.sqrt(-2 * Math.log(r() + 1e-300)) * Math.cos(2 * Math.PI * r());
}

/** Detector-like frames: read noise, Poisson-ish spots, a few garbage and NaN pixels. */
function detectorFrames(n: number, H: number, W: number, seed: number): Float32Array {
  const r = prng(seed);
  const d = new Float32Array(n * H * W);
  for (let i = 0; i < d.length; i++) d[i] = 0.12 * gauss(r);
  for (let f = 0; f < n; f++) {
    for (let s = 0; s < 4; s++) {
      const cy = r() * H, cx = r() * W, amp = 20 + 2000 * r(), sig = 0.7 + 1.3 * r();
      for (let y = Math.max(0, Math.floor(cy - 6)); y < Math.min(H, cy + 6); y++) {
        for (let x = Math.max(0, Math.floor(cx - 6)); x < Math.min(W, cx + 6); x++) {
          d[f * H * W + y * W + x] += Math.round(
            amp * Math.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sig * sig)),
          );
        }
      }
    }
    for (let k = 0; k < 10; k++) d[f * H * W + Math.floor(r() * H * W)] = 1e5 * 1e4 ** r();
    d[f * H * W + Math.floor(r() * H * W)] = NaN;
  }
  return d;
}

/** Random float32 bit patterns (every class: normal, subnormal, zero, NaN, Inf). */
function randomBits(n: number, seed: number): Float32Array {
  const r = prng(seed);
  const u = new Uint32Array(n);
  for (let i = 0; i < n; i++) u[i] = Math.floor(r() * 2 ** 32) >>> 0;
  return new Float32Array(u.buffer);
}

/** Every finite value within eb (strictly below eb32 <= eb), every non-finite value bit for bit. */
function checkBound(a: Float32Array, b: Float32Array, eb: number): void {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  expect(b.length).toBe(a.length);
  let bad = 0;
  for (let i = 0; i < a.length; i++) {
    const ok = Number.isFinite(a[i]) ? Math.abs(a[i] - b[i]) <= eb : ua[i] === ub[i];
    if (!ok && bad++ < 3) expect(`${i}: ${a[i]} -> ${b[i]}`).toBe(`within ${eb}`);
  }
  expect(bad).toBe(0);
}

function roundTrip(data: Float32Array, n: number, H: number, W: number, eb: number): Uint8Array[] {
  const streams = szEncodeCpu(data, n, H, W, eb);
  expect(streams.length).toBe(n);
  const { data: back } = szDecode(streams);
  if (n > 0) checkBound(data, back, eb);
  return streams;
}

describe("the error bound", () => {
  test.each([0.5, 0.05, 1e-3, 2.7])("detector-like frames, eb = %s", (eb) => {
    const H = 512, W = 128, n = 3;
    const d = detectorFrames(n, H, W, 1 + eb * 1000);
    const streams = roundTrip(d, n, H, W, eb);
    const bytes = streams.reduce((a, s) => a + s.length, 0);
    if (eb >= 0.05) expect(d.length * 4 / bytes).toBeGreaterThan(4);
  });

  test.each([2 ** -100, 1e-20, 1e-6, 1, 1e6, 1e30, 2 ** 100])("random bit patterns, eb = %s", (eb) => {
    const d = randomBits(64 * 64, Math.log2(eb) + 200);
    roundTrip(d, 1, 64, 64, eb);
  });

  test("edge values: 0, -0, negatives, huge, subnormals, NaN payloads, Inf, bin edges", () => {
    const eb = 0.25;
    const c = szConstants(eb);
    const u = new Uint32Array([
      0,
      0x80000000,
      1, // smallest subnormal
      0x807fffff, // largest negative subnormal
      0x00800000, // smallest normal
      0x7f7fffff, // largest float
      0xff7fffff,
      0x7f800000, // Inf
      0xff800000,
      0x7fc00000, // NaN
      0x7fc12345, // NaN with payload
      0xffbfffff, // signalling NaN, negative
    ]);
    const edges = [-3, -2.5, -1, -0.75, 0.2499999, 0.25, 0.75, 1.25, 65535 * c.binWidth, 65536 * c.binWidth];
    const d = new Float32Array(16 * 16);
    const du = new Uint32Array(d.buffer);
    du.set(u);
    d.set(edges.map((x) => Math.fround(x)), u.length);
    for (let i = u.length + edges.length; i < d.length; i++) d[i] = Math.fround((i % 37) * 0.37 - 5);
    roundTrip(d, 1, 16, 16, eb);
    // -0 comes back as +0 (documented), NaN payloads bit for bit.
    const back = szDecode(szEncodeCpu(d, 1, 16, 16, eb)).data;
    expect(Object.is(back[1], 0)).toBe(true);
    expect(new Uint32Array(back.buffer)[10]).toBe(0x7fc12345);
  });

  test("empty, one-pixel and thin frames; zero frames", () => {
    expect(szEncodeCpu(new Float32Array(0), 0, 512, 128, 1)).toEqual([]);
    expect(szDecode([]).data.length).toBe(0);
    roundTrip(Float32Array.from([3.14159]), 1, 1, 1, 0.01);
    roundTrip(Float32Array.from([NaN]), 1, 1, 1, 0.01);
    roundTrip(new Float32Array(0), 1, 0, 7, 0.01);
    roundTrip(new Float32Array(0), 1, 5, 0, 0.01);
    const r = prng(9);
    for (const [H, W] of [[1, 1000], [1000, 1], [3, 7], [2, 2]]) {
      const d = Float32Array.from({ length: 4 * H * W }, () => 100 * gauss(r));
      roundTrip(d, 4, H, W, 0.3);
    }
  });

  test("a zero frame takes one symbol and no payload; large deltas become exceptions", () => {
    const s = szEncodeCpu(new Float32Array(512 * 128).fill(0.01), 1, 512, 128, 0.1)[0];
    const info = szFrameInfo(s);
    expect(info.exceptions).toBe(0);
    expect(s.length).toBeLessThan(SZ_HEADER_BYTES + 16);
    // A constant frame: two symbols (the first pixel's delta, then zeros), one bit per pixel: Huffman's
    // floor, which the final zstd / lz4 stage removes.
    const s7 = szEncodeCpu(new Float32Array(512 * 128).fill(7), 1, 512, 128, 0.1)[0];
    expect(s7.length).toBeLessThan(SZ_HEADER_BYTES + 32 + (512 * 128) / 8);
    // A jump of more than 32767 bins between neighbours: the pixel is stored exactly.
    const d = Float32Array.from([0, 0, 100000, 0]);
    const c = szConstants(1);
    const codes = new Uint16Array(4);
    szCodesCpu(d, 1, 1, 4, c, codes);
    expect(codes[2]).toBe(0);
    expect(codes[3]).toBe(0);
    roundTrip(d, 1, 1, 4, 1);
  });

  test("pre-quantisation: exact when not strictly within eb32, out of range, or non-finite", () => {
    const c = szConstants(0.5);
    expect(c.binWidth).toBe(1);
    expect(prequant(0x7fc00000, NaN, c)).toEqual([0, true]);
    const [q, exact] = prequant(new Uint32Array(Float32Array.from([2.49]).buffer)[0], Math.fround(2.49), c);
    expect([q, exact]).toEqual([2, false]);
    // 2.5 rounds to 2 (half to even), |2.5 - 2| = 0.5 is not < eb32: stored exactly.
    expect(prequant(new Uint32Array(Float32Array.from([2.5]).buffer)[0], 2.5, c)).toEqual([2, true]);
    const big = Math.fround(70000);
    expect(prequant(new Uint32Array(Float32Array.from([big]).buffer)[0], big, c)).toEqual([0, true]);
  });

  test("constants: eb32 <= eb, bin width has 8 significant bits and is <= 2 eb32; bad bounds refused", () => {
    for (const eb of [0.1, 0.05, 1 / 3, 7, 2 ** -100, 2 ** 100]) {
      const c = szConstants(eb);
      expect(c.eb32).toBeLessThanOrEqual(eb);
      expect(c.binWidth).toBeLessThanOrEqual(2 * c.eb32);
      expect(c.binWidth).toBeGreaterThan(2 * c.eb32 * (1 - 2 ** -7));
      const m = c.binWidth / 2 ** Math.floor(Math.log2(c.binWidth));
      expect(Number.isInteger(m * 128)).toBe(true);
    }
    for (const eb of [0, -1, NaN, Infinity, 2 ** -101, 2 ** 101]) {
      expect(() => szConstants(eb)).toThrow(RangeError);
    }
  });
});

describe("the stream", () => {
  test("header fields; corrupt streams are refused", () => {
    const d = detectorFrames(1, 64, 32, 4);
    const s = szEncodeCpu(d, 1, 64, 32, 0.1)[0];
    const h = new DataView(s.buffer, s.byteOffset);
    expect(h.getUint32(0, true)).toBe(SZ_MAGIC);
    expect(String.fromCharCode(...s.subarray(0, 4))).toBe("XSZ1");
    const info = szFrameInfo(s);
    expect([info.height, info.width, info.bytes]).toEqual([64, 32, s.length]);
    expect(info.eb32).toBe(szConstants(0.1).eb32);
    expect(info.exceptions).toBeGreaterThanOrEqual(11);
    const dec = new SzFrameDecoder();
    const out = new Float32Array(64 * 32);
    const bad = s.slice();
    bad[0] = 0;
    expect(() => dec.decode(bad, out)).toThrow(/magic/);
    expect(() => dec.decode(s.subarray(0, s.length - 1), out)).toThrow(/truncated/);
    expect(() => dec.decode(s.subarray(0, 10), out)).toThrow(/header/);
    expect(() => dec.decode(s, new Float32Array(10))).toThrow(RangeError);
  });

  test("deterministic: the same input gives the same bytes", () => {
    const d = detectorFrames(2, 128, 64, 8);
    const a = szEncodeCpu(d, 2, 128, 64, 0.2), b = szEncodeCpu(d.slice(), 2, 128, 64, 0.2);
    expect(a).toEqual(b);
  });
});

describe("Huffman", () => {
  function kraft(lengths: Uint8Array): number {
    return lengths.reduce((a, l) => a + 2 ** -l, 0);
  }

  test("optimal lengths are complete (Kraft sum 1); canonical codes decode", () => {
    const r = prng(2);
    for (const n of [2, 3, 17, 300, 4000]) {
      const symbols = Uint32Array.from({ length: n }, (_, i) => i * 3 + 1);
      const counts = Float64Array.from({ length: n }, () => 1 + Math.floor(1000 * r() ** 4));
      const lengths = codeLengths(symbols, counts);
      expect(kraft(lengths)).toBeCloseTo(1, 12);
      const codes = canonicalCodes(symbols, lengths);
      const msg = Uint32Array.from({ length: 5000 }, () => symbols[Math.floor(r() * n)]);
      const index = new Map(Array.from(symbols, (s, i) => [s, i]));
      const w = new BitWriter(16);
      for (const s of msg) {
        const i = index.get(s)!;
        w.write(codes[i], lengths[i]);
      }
      const bytes = w.finish();
      const padded = new Uint8Array(bytes.length + 4);
      padded.set(bytes);
      const out = new Uint32Array(msg.length);
      const used = new HuffmanDecoder(symbols, lengths).decode(padded, 0, out);
      expect(out).toEqual(msg);
      expect(Math.ceil(used / 8)).toBe(bytes.length);
    }
  });

  test("lengths are limited to 24 bits (Fibonacci counts would need more)", () => {
    const n = 40;
    const counts = new Float64Array(n);
    counts[0] = counts[1] = 1;
    for (let i = 2; i < n; i++) counts[i] = counts[i - 1] + counts[i - 2];
    const symbols = Uint32Array.from({ length: n }, (_, i) => i);
    const lengths = codeLengths(symbols, counts);
    expect(Math.max(...lengths)).toBeLessThanOrEqual(MAX_LEN);
    expect(kraft(lengths)).toBeLessThanOrEqual(1);
    // ... and the codec works on such a frame (1024 x 1024 pixels, skewed codes).
    const r = prng(12);
    const H = 1024, W = 1024;
    const d = new Float32Array(H * W);
    for (let i = 0; i < d.length; i++) d[i] = r() < 0.999 ? 0 : Math.round(gauss(r) * 50);
    roundTrip(d, 1, H, W, 0.5);
  });
});

describe("quality metrics", () => {
  /** SSIM of one frame straight from the definition (7 x 7 windows, sample statistics). */
  function ssimDirect(a: Float32Array, b: Float32Array, h: number, w: number, L: number): number {
    const c1 = (0.01 * L) ** 2, c2 = (0.03 * L) ** 2;
    let sum = 0, n = 0;
    for (let y = 0; y + 7 <= h; y++) {
      for (let x = 0; x + 7 <= w; x++) {
        let ma = 0, mb = 0;
        for (let j = 0; j < 7; j++) {
          for (let i = 0; i < 7; i++) (ma += a[(y + j) * w + x + i]), (mb += b[(y + j) * w + x + i]);
        }
        ma /= 49;
        mb /= 49;
        let va = 0, vb = 0, cov = 0;
        for (let j = 0; j < 7; j++) {
          for (let i = 0; i < 7; i++) {
            const da = a[(y + j) * w + x + i] - ma, db = b[(y + j) * w + x + i] - mb;
            va += da * da;
            vb += db * db;
            cov += da * db;
          }
        }
        va /= 48;
        vb /= 48;
        cov /= 48;
        sum += ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
        n++;
      }
    }
    return sum / n;
  }

  test("SSIM and PSNR against direct computations; identical frames give SSIM 1 and PSNR Infinity", () => {
    const r = prng(21);
    const h = 40, w = 33;
    const a = Float32Array.from({ length: h * w }, (_, i) => 1000 + 50 * Math.sin(i / 9) + gauss(r));
    const b = Float32Array.from(a, (v) => v + 0.8 * gauss(r));
    let min = Infinity, max = -Infinity, sse = 0, maxErr = 0;
    for (let i = 0; i < a.length; i++) {
      min = Math.min(min, a[i]);
      max = Math.max(max, a[i]);
      sse += (a[i] - b[i]) ** 2;
      maxErr = Math.max(maxErr, Math.abs(a[i] - b[i]));
    }
    const L = max - min;
    expect(ssimFrame(a, b, h, w, L)!).toBeCloseTo(ssimDirect(a, b, h, w, L), 9);
    const q = quality(a, b, 1, h, w);
    expect(q.psnr!).toBeCloseTo(10 * Math.log10((L * L) / (sse / a.length)), 9);
    expect(q.maxAbsError).toBe(maxErr);
    expect(q.ssim!).toBeCloseTo(ssimDirect(a, b, h, w, L), 9);
    const same = quality(a, a, 1, h, w);
    expect([same.psnr, same.ssim, same.maxAbsError]).toEqual([Infinity, 1, 0]);
    expect(ssimFrame(a, b, 6, 100, L)).toBeNull();
  });

  test("non-finite and masked pixels: left out of PSNR/SSIM, non-finite changes counted", () => {
    const h = 16, w = 16;
    const a = Float32Array.from({ length: h * w }, (_, i) => i % 17);
    const b = a.slice();
    a[5] = NaN;
    b[5] = NaN;
    a[6] = Infinity;
    b[6] = 0;
    const valid = new Uint8Array(h * w).fill(1);
    a[100] = 1e9;
    b[100] = 1e9 + 64;
    valid[100] = 0;
    const acc = new QualityAccumulator();
    acc.add(a, b, h, w, valid);
    const q = acc.result();
    expect(q.nonFiniteChanged).toBe(1);
    expect(q.maxAbsError).toBe(0);
    expect(q.maxAbsErrorAll).toBe(64);
    expect(q.psnr).toBe(Infinity);
    expect(q.dataRange).toBe(16);
    expect(q.validPixels).toBe(h * w - 3);
    expect(q.ssim).toBe(1);
  });

  test("the codec's quality on detector-like frames: PSNR grows as the bound shrinks", () => {
    const H = 256, W = 128, n = 2;
    const d = detectorFrames(n, H, W, 77);
    let prev = 0;
    for (const eb of [2, 0.5, 0.1, 0.01]) {
      const back = szDecode(szEncodeCpu(d, n, H, W, eb)).data;
      const q = quality(d, back, n, H, W);
      expect(q.maxAbsErrorAll).toBeLessThanOrEqual(eb);
      expect(q.psnr!).toBeGreaterThan(prev);
      prev = q.psnr!;
    }
  });
});
