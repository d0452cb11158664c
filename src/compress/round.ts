/**
 * Float32 rounding for `--compress round:<m>[,<p>]`: keep m mantissa bits and an absolute precision of
 * 2^p, rounding half to even; the rounded values then go through a lossless filter, which finds the zeroed
 * low bits. The WGSL twin is shaders/round.wgsl; both follow this spec on the integer bits, so they give the
 * same bits (no float arithmetic is involved, so subnormal flushing on GPUs cannot differ).
 *
 * Spec. x is a float32 with bits b, sign s = b & 0x80000000, magnitude bits a = b & 0x7fffffff,
 * biased exponent E = a >> 23, mantissa f = a & 0x7fffff; Eeff = max(E, 1) (subnormals share the exponent
 * of the smallest normals). The result is x rounded to the nearest multiple of 2^qe, ties to the even
 * multiple, with
 *
 *     qe = max(Eeff - 127 - m, p)         (without p: qe = Eeff - 127 - m)
 *
 * i.e. m bits after the leading bit of the binade, and never finer than 2^p. In bits, with k = qe - (Eeff -
 * 150) the number of low bits of the significand N = (E > 0 ? 2^23 : 0) + f that are rounded away:
 *
 * - NaN, +-Inf (a >= 0x7f800000): unchanged (payload included). k <= 0: unchanged.
 * - 1 <= k <= 22, or k = 23 with E = 0: a' = (a + 2^(k-1) - 1 + ((a >> k) & 1)) & ~(2^k - 1). The bit
 *   (a >> k) & 1 is the parity of the multiple N >> k, so a tie goes to the even multiple; a carry out of the
 *   mantissa raises the exponent, which is the right next binade.
 * - k = 23, E >= 1 (the multiples are 2^(E-127) and 2^(E-126)): a' = E << 23 if f < 2^22, else (E + 1) << 23
 *   (the tie f = 2^22 goes to the even multiple, 2).
 * - k = 24, E >= 1 (then qe = p): a' = 0 if f = 0 (the tie N = 2^23 goes to 0), else the bits of 2^p.
 * - k >= 25, or k >= 24 with E = 0: a' = 0 (below half the quantum).
 * - Overflow: when a' >= 0x7f800000 (rounding up past the largest float), a' = a & ~(2^k - 1) (the largest
 *   multiple not above |x|): a finite value never becomes infinite.
 * - The result is s | a': the sign is kept, also on a zero result (-0.3 with p = 0 gives -0).
 *
 * Consequences (tested): m = 23 without p is the identity; m = 10, p = -24 is exactly a float16 round trip
 * for |x| <= 65519 (float16 has 10 mantissa bits, subnormal quantum 2^-24); m = 10 without p is a float16
 * round trip for 2^-14 <= |x| <= 65519; m = 23, p = 0 is round-half-to-even to integers. The error is at most
 * half the quantum: |x - x'| <= max(2^(e - m - 1), 2^(p - 1)) for x in the binade [2^e, 2^(e+1)).
 *
 * Ranges: m integer in [0, 23]; p integer in [-149, 127] or absent.
 */

export interface RoundParams {
  /** Mantissa bits kept, 0..23. */
  mantissaBits: number;
  /** Absolute precision 2^p (p in -149..127), or null for none. */
  absPower: number | null;
}

/** Checks the parameters; throws a RangeError naming the bad one. */
export function checkRoundParams(r: RoundParams): RoundParams {
  if (!Number.isInteger(r.mantissaBits) || r.mantissaBits < 0 || r.mantissaBits > 23) {
    throw new RangeError(`mantissa bits must be an integer in 0..23, not ${r.mantissaBits}`);
  }
  if (r.absPower !== null && (!Number.isInteger(r.absPower) || r.absPower < -149 || r.absPower > 127)) {
    throw new RangeError(`abs power must be an integer in -149..127, not ${r.absPower}`);
  }
  return r;
}

/** Bits of 2^p, p in -149..127. */
function pow2Bits(p: number): number {
  return p >= -126 ? ((p + 127) << 23) >>> 0 : (1 << (p + 149)) >>> 0;
}

/** The rounded bits of the float32 with bits b (see the spec above). */
export function roundBits(b: number, m: number, p: number | null): number {
  const s = (b & 0x80000000) >>> 0;
  const a = b & 0x7fffffff;
  if (a >= 0x7f800000) return b >>> 0;
  const E = a >>> 23;
  const eeff = E > 0 ? E : 1;
  let k = 23 - m;
  if (p !== null) k = Math.max(k, p - eeff + 150);
  if (k <= 0) return b >>> 0;
  let r: number;
  if (k <= 22 || (k === 23 && E === 0)) {
    const mask = (1 << k) - 1;
    r = ((a + (1 << (k - 1)) - 1 + ((a >>> k) & 1)) & ~mask) >>> 0;
    if (r >= 0x7f800000) r = (a & ~mask) >>> 0;
  } else if (k === 23) {
    r = (a & 0x7fffff) >= 0x400000 ? (E + 1) << 23 : E << 23;
    if (r >= 0x7f800000) r = E << 23;
  } else if (k === 24 && E > 0) {
    r = (a & 0x7fffff) === 0 ? 0 : pow2Bits(p as number);
  } else {
    r = 0;
  }
  return (s | r) >>> 0;
}

/** Round float32 values in place (CPU reference). */
export function roundInPlace(values: Float32Array, params: RoundParams): Float32Array {
  const { mantissaBits: m, absPower: p } = checkRoundParams(params);
  const u = new Uint32Array(values.buffer, values.byteOffset, values.length);
  if (m === 23 && p === null) return values;
  for (let i = 0; i < u.length; i++) u[i] = roundBits(u[i], m, p);
  return values;
}

/** A rounded copy. */
export function roundFloats(values: Float32Array, params: RoundParams): Float32Array {
  return roundInPlace(values.slice(), params);
}

/** Largest possible |x - round(x)| for |x| in [lo, hi] (for reports): half the coarsest quantum there. */
export function roundErrorBound(params: RoundParams, maxAbs: number): number {
  const { mantissaBits: m, absPower: p } = params;
  if (!(maxAbs > 0)) return 0;
  const e = Math.max(-126, Math.floor(Math.log2(maxAbs)));
  const qe = Math.max(e - m, p ?? -Infinity);
  return 2 ** (qe - 1);
}
