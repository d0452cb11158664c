/**
 * Float32 rounding (src/compress/round.ts) against independent references written here with float64
 * arithmetic (not with bits): a float16 round trip (m = 10), round-half-to-even to integers (p = 0), and the
 * general rule "nearest multiple of max(2^(e - m), 2^p), ties to even". Edge values: zeros, negatives,
 * subnormals, the largest floats (no overflow to Inf), NaN payloads and Inf kept. The WGSL twin's bits are
 * checked in test/compress-gpu.test.ts.
 */
import { describe, expect, test } from "vitest";
import { checkRoundParams, roundBits, roundFloats, type RoundParams } from "../src/compress/round.ts";
import { uniform } from "../fixtures/synth.ts";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const bitsOf = (x: number) => ((f32[0] = x), u32[0]);
const fromBits = (b: number) => ((u32[0] = b), f32[0]);

/** Round half to even of a float64 (independent of the code under test). */
function rint(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * float32 -> float16 -> float32, from the definition of binary16: 10 fraction bits, exponents -14..15,
 * subnormal quantum 2^-24, ties to even, overflow to Inf. Uses float64 arithmetic only.
 */
function viaFloat16(x: number): number {
  if (!Number.isFinite(x)) return x;
  const a = Math.abs(x);
  if (a === 0) return x;
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const q = e < -14 ? 2 ** -24 : 2 ** (e - 10);
  const r = rint(a / q) * q;
  const out = r > 65504 ? Infinity : r;
  return Math.sign(x) * out || (x < 0 ? -0 : 0);
}

/** The general rule with float64 arithmetic. */
function reference(x: number, m: number, p: number | null): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  let e = Math.max(-126, Math.floor(Math.log2(a)));
  if (2 ** e > a && e > -126) e--;
  if (2 ** (e + 1) <= a) e++;
  const q = Math.max(2 ** (e - m), p === null ? 0 : 2 ** p);
  let r = rint(a / q) * q;
  if (r >= 2 ** 128) r = Math.floor(a / q) * q; // no overflow to Inf: the largest multiple below
  return x < 0 ? -r : r;
}

function rounded(x: number, m: number, p: number | null): number {
  return fromBits(roundBits(bitsOf(x), m, p));
}

const prng = uniform;

/** Random float32 bit patterns with finite values (any exponent, both signs). */
function randomFinite(n: number, seed: number, maxExp = 254): Uint32Array {
  const r = prng(seed);
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const e = Math.floor(r() * (maxExp + 1));
    const m = Math.floor(r() * 0x800000);
    out[i] = ((r() < 0.5 ? 0x80000000 : 0) | (e << 23) | m) >>> 0;
  }
  return out;
}

describe("m = 10 is a float16 round trip", () => {
  test("every integer 0..65519, with p = -24 and without p", () => {
    for (let v = 0; v <= 65519; v++) {
      expect(rounded(v, 10, -24)).toBe(viaFloat16(v));
      expect(rounded(v, 10, null)).toBe(viaFloat16(v));
      expect(rounded(-v, 10, -24)).toBe(viaFloat16(-v));
    }
  });

  test("every float16 value, the midpoints between neighbours and one float32 step either side", () => {
    let checked = 0;
    for (let h = 0; h < 0x7bff; h++) {
      // The float16 values h and h + 1 (non-negative, finite), as numbers.
      const val = (k: number) => {
        const e = k >> 10, f = k & 0x3ff;
        return e === 0 ? f * 2 ** -24 : (1 + f / 1024) * 2 ** (e - 15);
      };
      const lo = val(h), hi = val(h + 1);
      const mid = Math.fround((lo + hi) / 2);
      expect(mid).toBe((lo + hi) / 2); // midpoints of float16 neighbours are float32 values
      const mb = bitsOf(mid);
      for (const x of [lo, hi, mid, fromBits(mb - 1), fromBits(mb + 1)]) {
        expect(rounded(x, 10, -24), `${x}`).toBe(viaFloat16(x));
        if (x >= 2 ** -14) expect(rounded(x, 10, null), `${x}`).toBe(viaFloat16(x));
        checked++;
      }
    }
    expect(checked).toBe(5 * 0x7bff);
  });

  test("random float32 values up to 65519", () => {
    const r = prng(3);
    for (let i = 0; i < 200_000; i++) {
      const x = Math.fround(r() < 0.5 ? r() * 65519 : 2 ** (-40 + 56 * r()));
      if (x > 65519) continue;
      expect(rounded(x, 10, -24)).toBe(viaFloat16(x));
    }
  });
});

describe("p = 0 rounds half to even to integers", () => {
  test("halves, quarters and random values", () => {
    for (let k = -2000; k <= 2000; k++) {
      for (const x of [k + 0.5, k + 0.25, k + 0.75, k]) {
        expect(rounded(x, 23, 0), `${x}`).toBe(rint(x) === 0 && x < 0 ? -0 : rint(x));
      }
    }
    const r = prng(5);
    for (let i = 0; i < 100_000; i++) {
      const x = Math.fround((r() - 0.5) * 2 ** (30 * r()));
      const want = rint(x);
      expect(rounded(x, 23, 0)).toBe(want === 0 && x < 0 ? -0 : want);
    }
  });
});

describe("the general rule", () => {
  const cases: [number, number | null][] = [
    [0, null],
    [1, null],
    [7, null],
    [12, null],
    [22, null],
    [23, null],
    [7, -3],
    [10, -8],
    [3, 2],
    [23, -10],
    [0, 100],
    [5, -140],
    [12, 127],
  ];
  test.each(cases)("m = %s, p = %s on random float32 values of every binade", (m, p) => {
    const bits = randomFinite(20_000, 11 + m * 7 + (p ?? 0));
    for (const b of bits) {
      const x = fromBits(b);
      const got = rounded(x, m, p);
      const want = reference(x, m, p);
      if (!Object.is(got, want)) expect(`${x} -> ${got}`).toBe(`${x} -> ${want}`);
    }
  });

  test("idempotent, monotonic, error at most half the quantum", () => {
    for (const [m, p] of cases) {
      const xs = Array.from(randomFinite(5000, 99 + m), fromBits).sort((a, b) => a - b);
      let prev = -Infinity;
      for (const x of xs) {
        const y = rounded(x, m, p);
        expect(rounded(y, m, p)).toBe(y);
        expect(y).toBeGreaterThanOrEqual(prev);
        prev = y;
        const a = Math.abs(x);
        let e = Math.max(-126, Math.floor(Math.log2(a)));
        if (2 ** e > a && e > -126) e--;
        if (2 ** (e + 1) <= a) e++;
        const q = Math.max(2 ** (e - m), p === null ? 0 : 2 ** p);
        const saturated = rint(a / q) * q >= 2 ** 128;
        expect(Math.abs(x - y)).toBeLessThanOrEqual(saturated ? q : q / 2);
        expect(Number.isFinite(y)).toBe(true);
      }
    }
  });

  test("edge values: zeros, subnormals, the largest floats, NaN payloads and Inf", () => {
    const nan1 = 0x7fc00001, nan2 = 0xffa00000, inf = 0x7f800000, ninf = 0xff800000;
    for (const [m, p] of cases) {
      for (const b of [nan1, nan2, inf, ninf]) expect(roundBits(b, m, p)).toBe(b);
      expect(roundBits(0, m, p)).toBe(0);
      expect(roundBits(0x80000000, m, p)).toBe(0x80000000);
      // The largest float never becomes Inf.
      const big = roundBits(0x7f7fffff, m, p);
      expect(big < 0x7f800000).toBe(true);
      expect(fromBits(big)).toBe(reference(fromBits(0x7f7fffff), m, p));
      // Subnormals.
      for (const b of [1, 2, 3, 0x400000, 0x7fffff, 0x800001]) {
        expect(rounded(fromBits(b), m, p)).toBe(reference(fromBits(b), m, p));
        expect(rounded(-fromBits(b), m, p)).toBe(reference(-fromBits(b), m, p));
      }
    }
    // A negative value rounding to zero keeps its sign.
    expect(Object.is(rounded(-0.3, 23, 0), -0)).toBe(true);
    // m = 23 without p changes nothing.
    for (const b of randomFinite(1000, 1)) expect(roundBits(b, 23, null)).toBe(b);
  });

  test("roundFloats copies, checkRoundParams refuses bad parameters", () => {
    const a = Float32Array.from([1.2345, -7.77, NaN]);
    const b = roundFloats(a, { mantissaBits: 2, absPower: null });
    expect(Array.from(a)).toEqual(Array.from(Float32Array.from([1.2345, -7.77, NaN])));
    expect(Array.from(b)).toEqual([1.25, -8, NaN]);
    const bad: RoundParams[] = [
      { mantissaBits: 24, absPower: null },
      { mantissaBits: -1, absPower: null },
      { mantissaBits: 1.5, absPower: null },
      { mantissaBits: 5, absPower: 128 },
      { mantissaBits: 5, absPower: -150 },
    ];
    for (const r of bad) expect(() => checkRoundParams(r)).toThrow(RangeError);
  });
});
