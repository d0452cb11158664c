/**
 * Module images of the report: a log colour scale into an 8-bit palette, max-pooled to the report's size,
 * written as indexed-colour PNG (zlib deflate + CRC32, no dependencies).
 *
 * Palette (also the report's legend):
 * - 0: invalid pixel (masked, NaN, or the module did not record the frame), grey;
 * - 1: hot pixel (excluded from the analysis), cyan;
 * - 2..255: the value on a log scale from `lo` (and below) to `hi` (and above), magma-like.
 *
 * Pooling by `pool` x `pool` blocks keeps the largest valid, non-hot value of each block (a one-pixel spot
 * stays visible); a block holding a hot pixel and no value above `lo` is hot; a block without valid pixels
 * is invalid.
 */
import { deflateSync } from "node:zlib";

export const INVALID = 0;
export const HOT = 1;
const FIRST = 2;
const LEVELS = 256 - FIRST;

/** Colour stops of the scale (matplotlib's magma at 0, 1/8, ..., 1). */
export const MAGMA = [
  "#000004",
  "#1c1044",
  "#4f127b",
  "#812581",
  "#b5367a",
  "#e55064",
  "#fb8761",
  "#fec287",
  "#fcfdbf",
];
export const INVALID_COLOUR = "#767676";
export const HOT_COLOUR = "#22d3ee";

function rgb(hex: string): [number, number, number] {
  const n = parseInt(hex.slice(1), 16);
  return [n >> 16, (n >> 8) & 255, n & 255];
}

/** The 256-entry palette, RGB. */
export function palette(): Uint8Array {
  const p = new Uint8Array(256 * 3);
  p.set(rgb(INVALID_COLOUR), INVALID * 3);
  p.set(rgb(HOT_COLOUR), HOT * 3);
  const stops = MAGMA.map(rgb);
  for (let i = 0; i < LEVELS; i++) {
    const t = (i / (LEVELS - 1)) * (stops.length - 1);
    const k = Math.min(stops.length - 2, Math.floor(t));
    const u = t - k;
    for (let c = 0; c < 3; c++) {
      p[(FIRST + i) * 3 + c] = Math.round(stops[k][c] * (1 - u) + stops[k + 1][c] * u);
    }
  }
  return p;
}

/** The CSS gradient of the colour scale (for the legend). */
export function scaleGradient(): string {
  return `linear-gradient(to right, ${MAGMA.join(", ")})`;
}

export interface ColourScale {
  /** Values at or below lo get the first colour. */
  lo: number;
  /** Values at or above hi get the last colour. */
  hi: number;
}

/** Palette index of a valid value. */
export function colourIndex(v: number, s: ColourScale): number {
  if (!(v > s.lo)) return FIRST;
  const t = Math.log(v / s.lo) / Math.log(s.hi / s.lo);
  return FIRST + Math.round(Math.min(1, t) * (LEVELS - 1));
}

export interface ModuleImage {
  width: number;
  height: number;
  /** Palette indices, row-major (rows = slow scan). */
  pixels: Uint8Array;
}

/**
 * One module frame (ss rows x fs columns) as palette indices, max-pooled by `pool`.
 * `mask`: 0 = good (optional); `hot`: 1 = hot pixel (optional).
 */
export function moduleImage(
  data: Float32Array,
  ss: number,
  fs: number,
  scale: ColourScale,
  pool: number,
  mask?: Uint32Array,
  hot?: Uint8Array,
): ModuleImage {
  const h = Math.ceil(ss / pool), w = Math.ceil(fs / pool);
  const best = new Float64Array(w * h).fill(-Infinity);
  const valid = new Uint8Array(w * h), hasHot = new Uint8Array(w * h);
  for (let s = 0; s < ss; s++) {
    const row = Math.floor(s / pool) * w;
    for (let f = 0; f < fs; f++) {
      const p = s * fs + f;
      const o = row + Math.floor(f / pool);
      const v = data[p];
      if (!Number.isFinite(v) || (mask && mask[p] !== 0)) continue;
      if (hot && hot[p]) {
        hasHot[o] = 1;
        continue;
      }
      valid[o] = 1;
      if (v > best[o]) best[o] = v;
    }
  }
  // A block shows its largest valid value when that is above lo, else a hot pixel it holds, else the value.
  const pixels = new Uint8Array(w * h);
  for (let o = 0; o < w * h; o++) {
    pixels[o] = valid[o] && (best[o] > scale.lo || !hasHot[o])
      ? colourIndex(best[o], scale)
      : hasHot[o]
      ? HOT
      : INVALID;
  }
  return { width: w, height: h, pixels };
}

/** An image of a module frame that was not recorded. */
export function absentImage(ss: number, fs: number, pool: number): ModuleImage {
  const w = Math.ceil(fs / pool), h = Math.ceil(ss / pool);
  return { width: w, height: h, pixels: new Uint8Array(w * h).fill(INVALID) };
}

// ---------------------------------------------------------------------------------------------------------
// PNG

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(bytes: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
  return ~c >>> 0;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

let PALETTE: Uint8Array | undefined;

/** An 8-bit indexed-colour PNG of the image with the report palette; `transparent`: an index drawn transparent. */
export function encodePng(img: ModuleImage, transparent?: number): Uint8Array {
  const { width: w, height: h, pixels } = img;
  const ihdr = new Uint8Array(13);
  const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, w);
  dv.setUint32(4, h);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 3; // colour type: indexed
  // compression, filter, interlace: 0
  const raw = new Uint8Array(h * (w + 1));
  for (let y = 0; y < h; y++) raw.set(pixels.subarray(y * w, (y + 1) * w), y * (w + 1) + 1); // filter 0
  const idat = new Uint8Array(deflateSync(raw, { level: 9 }));
  let top = 0;
  for (let i = 0; i < pixels.length; i++) if (pixels[i] > top) top = pixels[i];
  PALETTE ??= palette();
  const pal = PALETTE.subarray(0, (top + 1) * 3); // PLTE may stop at the highest index used
  const trns = transparent !== undefined && transparent <= top
    ? [chunk("tRNS", Uint8Array.from({ length: transparent + 1 }, (_, i) => (i === transparent ? 0 : 255)))]
    : [];
  const sig = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);
  const parts = [
    sig,
    chunk("IHDR", ihdr),
    chunk("PLTE", pal),
    ...trns,
    chunk("IDAT", idat),
    chunk("IEND", new Uint8Array()),
  ];
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
