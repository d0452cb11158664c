// xpcs: per train segment, q bin and delay tau, over the pairs (pixel p of the bin, frame t) with p valid in
// both t and t + tau: A = sum n(t) n(t + tau), L = sum n(t), R = sum n(t + tau), P = the number of pairs
// (spec: src/xpcs.ts). Pairs whose later frame lies in the history (counted with the previous batch) are
// skipped.
//
// Timeline: `hist` history frames (the previous batch's last frames) then the batch's frames; data holds
// module slot after module slot, (slot * stride + position) * pixels + p, invalid pixels as NaN (the prep
// entry point writes NaN where the mask is set, over the batch's positions).
// The pixel table is a CSR matrix as in azint: bin k owns entries [offsets[k], offsets[k + 1]), each a pixel
// g = slot * pixels + p. segs: per train segment its timeline range [s, e).
// out: 4 words per ((seg * bins + bin) * delays + tau - 1): A, L, R (f32 bits), P.
// WG, isFiniteF32 and reduceSums: shaders/xpcs-common.wgsl, put in front of this file.

struct Params {
  pixels: u32,
  stride: u32,
  hist: u32,
  nFrames: u32,
  bins: u32,
  delays: u32,
  slots: u32,
  hasMask: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> data: array<u32>; // f32 bits
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read> entries: array<u32>;
@group(0) @binding(5) var<storage, read> segs: array<vec2u>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

// NaN where the value is not finite or its mask is set, over the batch's frames (mask: slot, frame, pixel).
@compute @workgroup_size(256)
fn prep(@builtin(global_invocation_id) gid: vec3u) {
  let p = gid.x;
  let f = gid.y;
  if (p >= params.pixels || f >= params.nFrames) {
    return;
  }
  for (var s = 0u; s < params.slots; s++) {
    let i = (s * params.stride + params.hist + f) * params.pixels + p;
    let bad = !isFiniteF32(bitcast<f32>(data[i])) ||
      (params.hasMask != 0u && mask[(s * params.nFrames + f) * params.pixels + p] != 0u);
    if (bad) {
      data[i] = 0x7fc00000u; // NaN
    }
  }
}

@compute @workgroup_size(WG)
fn pairs(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let k = wid.x;
  let tau = wid.y + 1u;
  let seg = segs[wid.z];
  var a = 0.0;
  var l = 0.0;
  var r = 0.0;
  var n = 0u;
  let j0 = offsets[k];
  let j1 = offsets[k + 1u];
  let u0 = max(seg.x + tau, params.hist);
  for (var u = u0; u < seg.y; u++) {
    let t = u - tau;
    for (var j = j0 + lid; j < j1; j += WG) {
      let g = entries[j];
      let slot = g / params.pixels;
      let base = slot * params.stride * params.pixels + (g - slot * params.pixels);
      let x = bitcast<f32>(data[base + t * params.pixels]);
      let y = bitcast<f32>(data[base + u * params.pixels]);
      if (isFiniteF32(x) && isFiniteF32(y)) {
        a += x * y;
        l += x;
        r += y;
        n += 1u;
      }
    }
  }
  reduceSums(lid, a, l, r, n);
  if (lid == 0u) {
    let o = ((wid.z * params.bins + k) * params.delays + wid.y) * 4u;
    out[o] = bitcast<u32>(sA[0]);
    out[o + 1u] = bitcast<u32>(sL[0]);
    out[o + 2u] = bitcast<u32>(sR[0]);
    out[o + 3u] = sP[0];
  }
}
