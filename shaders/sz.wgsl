// SZ codec, integer stage (spec and CPU reference: src/compress/sz.ts, szCodesCpu; the codes are identical
// bits): pre-quantisation of each pixel to an integer q in bins of width s, 2-D Lorenzo prediction on the
// integers, and the u16 quantisation code (0: the pixel is stored exactly). Every pixel is independent: a
// pixel recomputes the q of its three causal neighbours instead of waiting for them.
//
// Floats: values arrive as u32 bits and NaN / Inf / out-of-range values are caught on the bits before any
// float operation, so no Inf or NaN is ever computed (WGSL lets compilers assume there are none). The float
// operations are one multiplication (t = x * inv, correctly rounded), round() (half to even), an exact
// product q * s (16 x 8 significant bits) and one subtraction, all as on the CPU.
//
// Layout: `values` holds nFrames frames of height x width pixels (frame-major, row-major); `codes` two codes
// per u32 (pixel 2k in the low half, 2k + 1 in the high half). One invocation per pair;
// dispatch (min(pairs / WG, xGroups), ceil(pairs / WG / xGroups)).

struct SzParams {
  pixels: u32,
  width: u32,
  height: u32,
  total: u32,
  pairs: u32,
  xGroups: u32,
  limBits: u32,
  pad0: u32,
  binWidth: f32,
  inv: f32,
  eb32: f32,
  pad1: f32,
}

@group(0) @binding(0) var<uniform> params: SzParams;
@group(0) @binding(1) var<storage, read> values: array<u32>;
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;

const WG: u32 = 256u;
const QMAX: f32 = 65535.0;
const RADIUS: i32 = 32768;

// q of the pixel at flat index i (x: the low bit says "stored exactly").
fn prequant(i: u32) -> vec2<i32> {
  let b = values[i];
  let a = b & 0x7fffffffu;
  if (a >= 0x7f800000u || a >= params.limBits) {
    return vec2<i32>(0, 1);
  }
  let x = bitcast<f32>(b);
  let t = x * params.inv;
  let qf = round(t);
  if (abs(qf) > QMAX) {
    return vec2<i32>(0, 1);
  }
  let d = x - qf * params.binWidth;
  var exact = 1;
  if (abs(d) < params.eb32) {
    exact = 0;
  }
  return vec2<i32>(i32(qf), exact);
}

fn codeOf(i: u32) -> u32 {
  if (i >= params.total) {
    return 0u;
  }
  let p = i % params.pixels;
  let y = p / params.width;
  let x = p % params.width;
  let me = prequant(i);
  if (me.y != 0) {
    return 0u;
  }
  var up = 0;
  var left = 0;
  var ul = 0;
  if (y > 0u) {
    up = prequant(i - params.width).x;
  }
  if (x > 0u) {
    left = prequant(i - 1u).x;
  }
  if (y > 0u && x > 0u) {
    ul = prequant(i - params.width - 1u).x;
  }
  let delta = me.x - (up + left - ul);
  if (delta > 32767 || delta < -32767) {
    return 0u;
  }
  return u32(delta + RADIUS);
}

@compute @workgroup_size(WG)
fn sz_codes(@builtin(global_invocation_id) gid: vec3u) {
  let k = gid.y * params.xGroups * WG + gid.x;
  if (k >= params.pairs) {
    return;
  }
  codes[k] = codeOf(2u * k) | (codeOf(2u * k + 1u) << 16u);
}
