/**
 * An error-bounded lossy codec for float32 frames in the SZ style (`--compress sz:<abs error bound>`):
 * dual quantisation (pre-quantise to integers, then 2-D Lorenzo prediction on the integers, as cuSZ does,
 * so every pixel is independent and the stage runs in parallel on the GPU), quantisation codes in bins of
 * the bin width, values that do not fit stored exactly, canonical Huffman coding of the codes; the final
 * zstd / lz4 stage is the HDF5 filter of the dataset the streams are stored in (src/compress/layout.ts).
 * The stream format and the guarantees are in docs/compression.md.
 *
 * Spec of the integer stage (the GPU twin is shaders/sz.wgsl; the same float32 operations, so the codes are
 * identical bits):
 *
 * Constants from the error bound eb (a number, 2^-100 <= eb <= 2^100):
 * - eb32: the largest float32 <= eb.
 * - s (bin width): 2 * eb32 with its significand cut to 8 bits (toward zero), so s <= 2 * eb32 and q * s is
 *   exact in float32 for |q| <= 65535.
 * - inv = float32(1 / s) (correctly rounded); lim = bits of 65536 * s (a float32, exact).
 *
 * Pre-quantisation of a pixel x (float32 bits b, a = b & 0x7fffffff), giving q (the integer the prediction
 * uses) and `exact` (the pixel is stored exactly):
 * - a >= 0x7f800000 (NaN, Inf) or a >= lim (|x| >= 65536 s): q = 0, exact.
 * - else t = f32(x * inv); q = round half to even (t); if |q| > 65535: q = 0, exact.
 * - else x' = f32(q * s) (exact), d = f32(x - x'); exact when not (|d| < eb32). Because float32 rounding is
 *   monotonic and eb32 is a float32, |d| < eb32 implies |x - x'| < eb32 <= eb: the bound holds without any
 *   assumption on the rounding of x * inv. A GPU that flushes subnormals gets the same answers (a subnormal
 *   x or d is far below eb32 either way).
 *
 * Prediction and code (pixel (i, j) of an H x W frame, q = 0 outside the frame):
 *   delta = q[i][j] - (q[i-1][j] + q[i][j-1] - q[i-1][j-1])
 *   code  = 0 if exact or |delta| > 32767, else delta + 32768        (a u16; R = 32768 is the radius)
 *
 * Pixels with code 0 are the exceptions: their float32 bits are stored, and the decoder recomputes their q
 * with the same pre-quantisation (so its prediction context is the encoder's). Decoding: x' = f32(q * s) for
 * code != 0, the stored value otherwise; so |x - x'| < eb for every finite x, and NaN, Inf (any payload)
 * come back bit for bit. -0 comes back as +0 (when it is not an exception).
 */
import { canonicalCodes, codeLengths, HuffmanDecoder } from "./huffman.ts";

export const SZ_MAGIC = 0x31_5a_53_58; // "XSZ1" read as a little-endian u32
export const SZ_RADIUS = 32768;
export const SZ_QMAX = 65535;
export const SZ_HEADER_BYTES = 40;
/** Smallest and largest error bounds accepted. */
export const SZ_MIN_EB = 2 ** -100;
export const SZ_MAX_EB = 2 ** 100;

export interface SzConstants {
  /** The error bound asked for. */
  errorBound: number;
  /** The largest float32 <= errorBound. */
  eb32: number;
  /** Bin width s (float32, 8 significant bits, <= 2 eb32). */
  binWidth: number;
  /** float32(1 / s). */
  inv: number;
  /** Bits of 65536 * s: |x| at or above it is stored exactly. */
  limBits: number;
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

function bitsOf(x: number): number {
  f32buf[0] = x;
  return u32buf[0];
}

function fromBits(b: number): number {
  u32buf[0] = b;
  return f32buf[0];
}

/** The largest float32 <= x (x finite, positive). */
function f32Below(x: number): number {
  const f = Math.fround(x);
  if (f <= x) return f;
  return fromBits(bitsOf(f) - 1);
}

export function szConstants(errorBound: number): SzConstants {
  if (!(errorBound >= SZ_MIN_EB && errorBound <= SZ_MAX_EB)) {
    throw new RangeError(`sz error bound must be a number in [2^-100, 2^100], not ${errorBound}`);
  }
  const eb32 = f32Below(errorBound);
  const twice = Math.fround(2 * eb32);
  const binWidth = fromBits(bitsOf(twice) & 0xffff0000); // 1 implicit + 7 explicit significand bits
  const inv = Math.fround(1 / binWidth);
  const limBits = bitsOf(Math.fround(65536 * binWidth));
  return { errorBound, eb32, binWidth, inv, limBits };
}

/** Round half to even of a float (as WGSL's round()). */
function rne(t: number): number {
  let r = Math.round(t);
  if (r - t === 0.5 && (r & 1) !== 0) r -= 1;
  return r;
}

/**
 * Pre-quantisation of one pixel (bits b, value x = the float32 of b), as specified above: [q, exact], q the
 * integer the prediction uses (0 for non-finite and out-of-range values), exact when the pixel is stored
 * exactly.
 */
export function prequant(b: number, x: number, c: SzConstants): [number, boolean] {
  const a = b & 0x7fffffff;
  if (a >= 0x7f800000 || a >= c.limBits) return [0, true];
  const q = rne(Math.fround(x * c.inv));
  if (q > SZ_QMAX || q < -SZ_QMAX) return [0, true];
  const d = Math.fround(x - q * c.binWidth);
  return [q, !(Math.abs(d) < c.eb32)];
}

/**
 * Quantisation codes of nFrames frames of H x W pixels (CPU reference of shaders/sz.wgsl): `codes` gets one
 * u16 per pixel, frame-major, row-major.
 */
export function szCodesCpu(
  data: Float32Array,
  nFrames: number,
  H: number,
  W: number,
  c: SzConstants,
  codes: Uint16Array,
): void {
  const P = H * W;
  if (data.length < nFrames * P || codes.length < nFrames * P) {
    throw new RangeError("szCodesCpu: arrays too short");
  }
  const bits = new Uint32Array(data.buffer, data.byteOffset, nFrames * P);
  const q = new Int32Array(P);
  const exact = new Uint8Array(P);
  const { inv, binWidth: s, eb32, limBits } = c;
  for (let f = 0; f < nFrames; f++) {
    const o = f * P;
    for (let i = 0; i < P; i++) {
      const b = bits[o + i];
      const a = b & 0x7fffffff;
      if (a >= 0x7f800000 || a >= limBits) {
        q[i] = 0;
        exact[i] = 1;
        continue;
      }
      const x = data[o + i];
      const t = Math.fround(x * inv);
      let r = Math.round(t);
      if (r - t === 0.5 && (r & 1) !== 0) r -= 1;
      if (r > SZ_QMAX || r < -SZ_QMAX) {
        q[i] = 0;
        exact[i] = 1;
        continue;
      }
      q[i] = r;
      exact[i] = Math.abs(Math.fround(x - r * s)) < eb32 ? 0 : 1;
    }
    for (let y = 0; y < H; y++) {
      const row = y * W;
      for (let x = 0; x < W; x++) {
        const i = row + x;
        const up = y > 0 ? q[i - W] : 0;
        const left = x > 0 ? q[i - 1] : 0;
        const ul = y > 0 && x > 0 ? q[i - W - 1] : 0;
        const delta = q[i] - (up + left - ul);
        codes[o + i] = exact[i] || delta > 32767 || delta < -32767 ? 0 : delta + SZ_RADIUS;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The stream of one frame

function writeLeb(buf: Uint8Array, pos: number, v: number): number {
  while (v >= 0x80) {
    buf[pos++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[pos++] = v;
  return pos;
}

function readLeb(buf: Uint8Array, pos: number): [number, number] {
  let v = 0, mul = 1;
  for (;;) {
    if (pos >= buf.length) throw new Error("sz stream: truncated");
    const b = buf[pos++];
    v += (b & 0x7f) * mul;
    if (b < 0x80) return [v, pos];
    mul *= 128;
  }
}

/** Reused scratch of an encoder. */
export class SzFrameEncoder {
  private readonly hist = new Uint32Array(65536);
  private readonly codeOf = new Uint32Array(65536);
  private readonly lenOf = new Uint8Array(65536);
  private payload = new Uint8Array(0);
  private side = new Uint8Array(1 << 16);

  constructor(readonly c: SzConstants) {}

  /** The stream of one H x W frame from its codes and values (the exceptions' bits come from `values`). */
  encode(codes: Uint16Array, values: Float32Array, H: number, W: number): Uint8Array {
    const P = H * W;
    const bits = new Uint32Array(values.buffer, values.byteOffset, P);
    const hist = this.hist;
    const used: number[] = [];
    let nExc = 0;
    for (let i = 0; i < P; i++) {
      const s = codes[i];
      if (hist[s]++ === 0) used.push(s);
      if (s === 0) nExc++;
    }
    used.sort((a, b) => a - b);
    const symbols = Uint32Array.from(used);
    const counts = new Float64Array(symbols.length);
    for (let k = 0; k < symbols.length; k++) counts[k] = hist[symbols[k]];
    const lengths = codeLengths(symbols, counts);
    const cc = canonicalCodes(symbols, lengths);
    for (let k = 0; k < symbols.length; k++) {
      this.codeOf[symbols[k]] = cc[k];
      this.lenOf[symbols[k]] = lengths[k];
      hist[symbols[k]] = 0;
    }
    // Side sections: exceptions (index gaps, then values), then the table.
    const sideMax = 9 * nExc + 4 + 4 * symbols.length + 16;
    if (this.side.length < sideMax) this.side = new Uint8Array(sideMax * 2);
    const side = this.side;
    let pos = 0;
    let prev = -1;
    for (let i = 0; i < P && nExc; i++) {
      if (codes[i] === 0) {
        pos = writeLeb(side, pos, i - prev - 1);
        prev = i;
      }
    }
    const dv = new DataView(side.buffer, side.byteOffset, side.byteLength);
    for (let i = 0; i < P && nExc; i++) {
      if (codes[i] === 0) {
        dv.setUint32(pos, bits[i], true);
        pos += 4;
      }
    }
    const excBytes = pos;
    dv.setUint32(pos, symbols.length, true);
    pos += 4;
    prev = -1;
    for (let k = 0; k < symbols.length; k++) {
      pos = writeLeb(side, pos, symbols[k] - prev - 1);
      prev = symbols[k];
    }
    for (let k = 0; k < symbols.length; k++) side[pos++] = lengths[k];
    const tableBytes = pos - excBytes;
    // Payload.
    let payload: Uint8Array;
    if (symbols.length > 1) {
      // MSB-first bit packing (as BitWriter, inlined): at most 24 bits per symbol.
      const need = Math.ceil((P * 24) / 8) + 8;
      if (this.payload.length < need) this.payload = new Uint8Array(need);
      const buf = this.payload;
      const codeOf = this.codeOf, lenOf = this.lenOf;
      let acc = 0, n = 0, o = 0;
      for (let i = 0; i < P; i++) {
        const s = codes[i];
        const len = lenOf[s];
        acc = (acc << len) | codeOf[s];
        n += len;
        while (n >= 8) {
          n -= 8;
          buf[o++] = acc >>> n;
        }
      }
      if (n > 0) buf[o++] = acc << (8 - n);
      payload = buf.subarray(0, o);
    } else payload = new Uint8Array(0);
    const out = new Uint8Array(SZ_HEADER_BYTES + pos + payload.length);
    const h = new DataView(out.buffer);
    h.setUint32(0, SZ_MAGIC, true);
    h.setUint32(4, H, true);
    h.setUint32(8, W, true);
    h.setFloat32(12, this.c.binWidth, true);
    h.setFloat32(16, this.c.eb32, true);
    h.setUint32(20, SZ_RADIUS, true);
    h.setUint32(24, nExc, true);
    h.setUint32(28, excBytes, true);
    h.setUint32(32, tableBytes, true);
    h.setUint32(36, payload.length, true);
    out.set(side.subarray(0, pos), SZ_HEADER_BYTES);
    out.set(payload, SZ_HEADER_BYTES + pos);
    return out;
  }
}

export interface SzFrameInfo {
  height: number;
  width: number;
  binWidth: number;
  eb32: number;
  exceptions: number;
  bytes: number;
}

/** The header of a frame stream (checks the magic and the section sizes). */
export function szFrameInfo(stream: Uint8Array): SzFrameInfo {
  if (stream.length < SZ_HEADER_BYTES) throw new Error("sz stream: shorter than its header");
  const h = new DataView(stream.buffer, stream.byteOffset, stream.byteLength);
  if (h.getUint32(0, true) !== SZ_MAGIC) throw new Error("sz stream: bad magic (not an XSZ1 frame)");
  const bytes = SZ_HEADER_BYTES + h.getUint32(28, true) + h.getUint32(32, true) + h.getUint32(36, true);
  if (bytes > stream.length) throw new Error("sz stream: truncated");
  if (h.getUint32(20, true) !== SZ_RADIUS) throw new Error("sz stream: unsupported radius");
  return {
    height: h.getUint32(4, true),
    width: h.getUint32(8, true),
    binWidth: h.getFloat32(12, true),
    eb32: h.getFloat32(16, true),
    exceptions: h.getUint32(24, true),
    bytes,
  };
}

/** Reused scratch of a decoder. */
export class SzFrameDecoder {
  private codes = new Uint16Array(0);
  private q = new Int32Array(0);
  private pad = new Uint8Array(0);

  /** Decode one frame stream into `out` (at least height * width values); returns the frame info. */
  decode(stream: Uint8Array, out: Float32Array): SzFrameInfo {
    const info = szFrameInfo(stream);
    const { height: H, width: W, binWidth: s } = info;
    const P = H * W;
    if (out.length < P) throw new RangeError(`sz decode: output holds ${out.length} values, need ${P}`);
    if (this.codes.length < P) {
      this.codes = new Uint16Array(P);
      this.q = new Int32Array(P);
    }
    const h = new DataView(stream.buffer, stream.byteOffset, stream.byteLength);
    const nExc = h.getUint32(24, true);
    const excBytes = h.getUint32(28, true);
    const tableBytes = h.getUint32(32, true);
    const payloadBytes = h.getUint32(36, true);
    // Table.
    let pos = SZ_HEADER_BYTES + excBytes;
    const nSym = h.getUint32(pos, true);
    pos += 4;
    const symbols = new Uint32Array(nSym);
    let prev = -1;
    for (let k = 0; k < nSym; k++) {
      const [g, p2] = readLeb(stream, pos);
      pos = p2;
      prev = prev + 1 + g;
      if (prev > 0xffff) throw new Error("sz stream: bad symbol table");
      symbols[k] = prev;
    }
    const lengths = stream.slice(pos, pos + nSym);
    pos += nSym;
    if (pos !== SZ_HEADER_BYTES + excBytes + tableBytes) throw new Error("sz stream: bad table size");
    const codes = this.codes.subarray(0, P);
    if (nSym === 1) codes.fill(symbols[0]);
    else if (P > 0) {
      if (this.pad.length < payloadBytes + 4) this.pad = new Uint8Array(payloadBytes + 8);
      this.pad.fill(0, payloadBytes, payloadBytes + 4);
      this.pad.set(stream.subarray(pos, pos + payloadBytes));
      const used = new HuffmanDecoder(symbols, lengths).decode(this.pad, 0, codes);
      if (used > payloadBytes * 8) throw new Error("sz stream: truncated payload");
    }
    // Exceptions, then the reconstruction.
    let ep = SZ_HEADER_BYTES;
    let vp = 0;
    {
      // Find where the values start: after nExc LEB128 gaps.
      let p = ep;
      for (let k = 0; k < nExc; k++) p = readLeb(stream, p)[1];
      vp = p;
    }
    const c = constantsFromHeader(info);
    const q = this.q;
    const outBits = new Uint32Array(out.buffer, out.byteOffset, P);
    let nextExc = -1;
    let excLeft = nExc;
    const nextIndex = () => {
      if (excLeft === 0) return -1;
      const [g, p2] = readLeb(stream, ep);
      ep = p2;
      excLeft--;
      return nextExc + 1 + g;
    };
    nextExc = nextIndex();
    for (let y = 0; y < H; y++) {
      const row = y * W;
      for (let x = 0; x < W; x++) {
        const i = row + x;
        const code = codes[i];
        if (code === 0) {
          if (i !== nextExc) throw new Error("sz stream: exception list does not match the codes");
          const b = h.getUint32(vp, true);
          vp += 4;
          outBits[i] = b;
          q[i] = prequant(b, out[i], c)[0];
          nextExc = nextIndex();
          continue;
        }
        const up = y > 0 ? q[i - W] : 0;
        const left = x > 0 ? q[i - 1] : 0;
        const ul = y > 0 && x > 0 ? q[i - W - 1] : 0;
        const v = code - SZ_RADIUS + up + left - ul;
        q[i] = v;
        out[i] = v * s;
      }
    }
    if (nextExc !== -1) throw new Error("sz stream: more exceptions than exception codes");
    return info;
  }
}

/** Constants as the decoder needs them (for the exceptions' pre-quantisation), from a stream header. */
function constantsFromHeader(info: SzFrameInfo): SzConstants {
  const s = info.binWidth;
  return {
    errorBound: info.eb32,
    eb32: info.eb32,
    binWidth: s,
    inv: Math.fround(1 / s),
    limBits: bitsOf(Math.fround(65536 * s)),
  };
}

/** Encode frames on the CPU: one stream per frame. */
export function szEncodeCpu(
  data: Float32Array,
  nFrames: number,
  H: number,
  W: number,
  errorBound: number | SzConstants,
): Uint8Array[] {
  const c = typeof errorBound === "number" ? szConstants(errorBound) : errorBound;
  const P = H * W;
  const codes = new Uint16Array(nFrames * P);
  szCodesCpu(data, nFrames, H, W, c, codes);
  const enc = new SzFrameEncoder(c);
  const out: Uint8Array[] = [];
  for (let f = 0; f < nFrames; f++) {
    out.push(enc.encode(codes.subarray(f * P, (f + 1) * P), data.subarray(f * P, (f + 1) * P), H, W));
  }
  return out;
}

/** Decode frame streams into one array (frames of the same shape). */
export function szDecode(streams: Uint8Array[]): { data: Float32Array; height: number; width: number } {
  if (!streams.length) return { data: new Float32Array(0), height: 0, width: 0 };
  const first = szFrameInfo(streams[0]);
  const P = first.height * first.width;
  const data = new Float32Array(streams.length * P);
  const dec = new SzFrameDecoder();
  streams.forEach((s, f) => {
    const info = dec.decode(s, data.subarray(f * P, (f + 1) * P));
    if (info.height !== first.height || info.width !== first.width) {
      throw new Error("sz decode: frames of different shapes");
    }
  });
  return { data, height: first.height, width: first.width };
}
