// azint: per frame and radial bin, over the valid pixels of the bin: S = sum of values, C = sum of their
// corrections, n = their number (spec: src/azint.ts). The pixel table is a CSR matrix: bin k owns entries
// [offsets[k], offsets[k + 1]), each a pixel g = slot * pixels + p with its correction corr[j].
// One workgroup per (bin, frame); its invocations stride over the bin's entries, then a tree reduction.
//
// data / mask: module slot after module slot, (slot * maxFrames + frame) * pixels + p.
// out: 3 words per (frame * bins + bin): S (f32 bits), C (f32 bits), n.

struct Params {
  pixels: u32,
  nFrames: u32,
  maxFrames: u32,
  bins: u32,
  hasMask: u32,
  pad0: u32,
  pad1: u32,
  pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read> entries: array<u32>;
@group(0) @binding(5) var<storage, read> corr: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

const WG: u32 = 64u;
var<workgroup> sS: array<f32, WG>;
var<workgroup> sC: array<f32, WG>;
var<workgroup> sN: array<u32, WG>;

fn isFiniteF32(v: f32) -> bool {
  return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(WG)
fn azint(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let k = wid.x;
  let f = wid.y;
  var s = 0.0;
  var c = 0.0;
  var n = 0u;
  let j1 = offsets[k + 1u];
  for (var j = offsets[k] + lid; j < j1; j += WG) {
    let g = entries[j];
    let slot = g / params.pixels;
    let i = (slot * params.maxFrames + f) * params.pixels + (g - slot * params.pixels);
    let v = data[i];
    if (isFiniteF32(v) && (params.hasMask == 0u || mask[i] == 0u)) {
      s += v;
      c += corr[j];
      n += 1u;
    }
  }
  sS[lid] = s;
  sC[lid] = c;
  sN[lid] = n;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w = w / 2u) {
    if (lid < w) {
      sS[lid] += sS[lid + w];
      sC[lid] += sC[lid + w];
      sN[lid] += sN[lid + w];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let o = (f * params.bins + k) * 3u;
    out[o] = bitcast<u32>(sS[0]);
    out[o + 1u] = bitcast<u32>(sC[0]);
    out[o + 2u] = sN[0];
  }
}
