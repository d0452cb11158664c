/**
 * Canonical Huffman coding of 16-bit symbols (the entropy stage of the SZ codec, src/compress/sz.ts).
 *
 * - Code lengths: optimal Huffman lengths of the symbols' counts (Moffat-Katajainen in-place algorithm on the
 *   counts sorted ascending, ties by symbol), limited to MAX_LEN = 24 bits: while the longest code is
 *   longer, every count c becomes ceil(c / 2) and the lengths are computed again.
 * - Canonical codes (as DEFLATE): symbols sorted by (length, symbol); the first gets code 0, each next one
 *   the previous code + 1, shifted left by the length difference when the length grows.
 * - Bit order: each code is written most significant bit first; the payload is a big-endian bit string,
 *   zero padded to a whole byte.
 * - A single distinct symbol gets length 0 and takes no payload bits.
 */

export const MAX_LEN = 24;
const LUT_BITS = 11;

/** Code lengths (1..MAX_LEN) for `symbols` (distinct, ascending) with counts `counts` (all > 0). */
export function codeLengths(symbols: Uint32Array, counts: Float64Array): Uint8Array {
  const n = symbols.length;
  const lengths = new Uint8Array(n);
  if (n <= 1) return lengths;
  let c = Float64Array.from(counts);
  for (;;) {
    // Order by count, ties by symbol (symbols are ascending, so a stable sort of indices).
    const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => c[i] - c[j] || i - j);
    const A = new Float64Array(n);
    for (let i = 0; i < n; i++) A[i] = c[order[i]];
    mkLengths(A);
    let max = 0;
    for (let i = 0; i < n; i++) max = Math.max(max, A[i]);
    if (max <= MAX_LEN) {
      for (let i = 0; i < n; i++) lengths[order[i]] = A[i];
      return lengths;
    }
    c = c.map((v) => Math.ceil(v / 2));
  }
}

/**
 * In-place minimum-redundancy code lengths (Moffat & Katajainen 1995): A holds counts in ascending order;
 * on return A[i] is the code length of the i-th symbol.
 */
function mkLengths(A: Float64Array): void {
  const n = A.length;
  if (n === 0) return;
  if (n === 1) {
    A[0] = 0;
    return;
  }
  // First pass, left to right: parent pointers.
  A[0] += A[1];
  let root = 0, leaf = 2;
  for (let next = 1; next < n - 1; next++) {
    if (leaf >= n || A[root] < A[leaf]) {
      A[next] = A[root];
      A[root++] = next;
    } else A[next] = A[leaf++];
    if (leaf >= n || (root < next && A[root] < A[leaf])) {
      A[next] += A[root];
      A[root++] = next;
    } else A[next] += A[leaf++];
  }
  // Second pass, right to left: depths of internal nodes.
  A[n - 2] = 0;
  for (let next = n - 3; next >= 0; next--) A[next] = A[A[next]] + 1;
  // Third pass, right to left: depths of leaves.
  let avbl = 1, used = 0, dpth = 0;
  root = n - 2;
  let next = n - 1;
  while (avbl > 0) {
    while (root >= 0 && A[root] === dpth) {
      used++;
      root--;
    }
    while (avbl > used) {
      A[next--] = dpth;
      avbl--;
    }
    avbl = 2 * used;
    dpth++;
    used = 0;
  }
}

/** Canonical codes for symbols with lengths (same order as `symbols`). */
export function canonicalCodes(symbols: Uint32Array, lengths: Uint8Array): Uint32Array {
  const n = symbols.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) =>
    lengths[i] - lengths[j] || symbols[i] - symbols[j]
  );
  const codes = new Uint32Array(n);
  let code = 0, prev = 0;
  for (let k = 0; k < n; k++) {
    const i = order[k];
    const len = lengths[i];
    if (k > 0) code = (code + 1) * 2 ** (len - prev);
    else code = 0;
    prev = len;
    codes[i] = code;
  }
  return codes;
}

/** MSB-first bit writer into a growable byte buffer. */
export class BitWriter {
  buf: Uint8Array;
  pos = 0;
  private acc = 0;
  private n = 0;

  constructor(capacity = 1 << 16) {
    this.buf = new Uint8Array(Math.max(16, capacity));
  }

  /** Append the low `len` bits of `code` (len <= 24). */
  write(code: number, len: number): void {
    this.acc = ((this.acc << len) | code) >>> 0;
    this.n += len;
    if (this.n >= 8) {
      if (this.pos + 4 > this.buf.length) this.grow();
      while (this.n >= 8) {
        this.n -= 8;
        this.buf[this.pos++] = (this.acc >>> this.n) & 0xff;
      }
    }
  }

  private grow(): void {
    const b = new Uint8Array(this.buf.length * 2);
    b.set(this.buf.subarray(0, this.pos));
    this.buf = b;
  }

  /** Pad to a byte; the bytes written. */
  finish(): Uint8Array {
    if (this.n > 0) {
      if (this.pos + 1 > this.buf.length) this.grow();
      this.buf[this.pos++] = (this.acc << (8 - this.n)) & 0xff;
      this.n = 0;
    }
    return this.buf.subarray(0, this.pos);
  }
}

/** A decoder for one canonical code. */
export class HuffmanDecoder {
  private readonly lut: Uint32Array;
  private readonly lutBits: number;
  private readonly maxLen: number;
  /** Per length: first code, index of its first symbol in `sorted`, and count. */
  private readonly first = new Float64Array(MAX_LEN + 2);
  private readonly start = new Int32Array(MAX_LEN + 2);
  private readonly count = new Int32Array(MAX_LEN + 2);
  private readonly sorted: Uint32Array;

  constructor(symbols: Uint32Array, lengths: Uint8Array) {
    const n = symbols.length;
    const codes = canonicalCodes(symbols, lengths);
    let maxLen = 0;
    for (let i = 0; i < n; i++) maxLen = Math.max(maxLen, lengths[i]);
    this.maxLen = maxLen;
    this.lutBits = Math.min(LUT_BITS, maxLen);
    this.lut = new Uint32Array(1 << this.lutBits);
    const order = Array.from({ length: n }, (_, i) => i).sort((i, j) =>
      lengths[i] - lengths[j] || symbols[i] - symbols[j]
    );
    this.sorted = new Uint32Array(n);
    for (let k = 0; k < n; k++) {
      const i = order[k];
      const len = lengths[i];
      this.sorted[k] = symbols[i];
      if (this.count[len] === 0) {
        this.first[len] = codes[i];
        this.start[len] = k;
      }
      this.count[len]++;
      if (len <= this.lutBits) {
        const shift = this.lutBits - len;
        const a = codes[i] << shift;
        const e = (symbols[i] << 5) | len;
        for (let j = 0; j < 1 << shift; j++) this.lut[a + j] = e;
      }
    }
  }

  /**
   * Decode `out.length` symbols from `bytes` (MSB-first) starting at byte `offset`; returns the bits used.
   * `bytes` must hold 4 readable bytes after the payload (zero padding).
   */
  decode(bytes: Uint8Array, offset: number, out: Uint16Array | Uint32Array): number {
    const lutBits = this.lutBits, lut = this.lut, maxLen = this.maxLen;
    let bit = 0;
    const n = out.length;
    for (let k = 0; k < n; k++) {
      const p = offset + (bit >>> 3);
      const w = ((bytes[p] << 24) | (bytes[p + 1] << 16) | (bytes[p + 2] << 8) | bytes[p + 3]) >>> 0;
      const win = (w << (bit & 7)) >>> 0; // the next 25..32 bits, MSB-aligned
      const e = lut[win >>> (32 - lutBits)];
      const len = e & 31;
      if (len !== 0) {
        out[k] = e >>> 5;
        bit += len;
        continue;
      }
      let done = false;
      for (let L = lutBits + 1; L <= maxLen; L++) {
        const c = win >>> (32 - L);
        const cnt = this.count[L];
        if (cnt && c - this.first[L] < cnt && c >= this.first[L]) {
          out[k] = this.sorted[this.start[L] + c - this.first[L]];
          bit += L;
          done = true;
          break;
        }
      }
      if (!done) throw new Error("sz stream: invalid Huffman code");
    }
    return bit;
  }
}
