// xpcs two-time correlation (spec: src/xpcs.ts, `--two-time`): per q bin and frame pair (t1, t2), t1 <= t2,
// of one train, over the pixels of the bin valid in both frames: A = sum n(t1) n(t2), L = sum n(t1),
// R = sum n(t2), P = the number of pixels. One dispatch per module: frames holds that module's T frames of
// the train, (t * pixels + p), invalid pixels as NaN (prepared on the CPU as for the CPU reference); the
// module's pixels of bin k are entries [offsets[k], offsets[k + 1]). One workgroup per (t1, t2, bin); the
// sums are added to out (4 words per (bin * T + t1) * T + t2: A, L, R as f32 bits, P), so the modules'
// dispatches accumulate. The lower triangle (t2 < t1) is left to the host (it mirrors the upper one).
// WG, isFiniteF32 and reduceSums: shaders/xpcs-common.wgsl, put in front of this file.

struct Params {
  pixels: u32,
  frames: u32,
  bins: u32,
  first: u32, // 1 for the first module: out is written, not added to
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> frames: array<u32>; // f32 bits
@group(0) @binding(2) var<storage, read> offsets: array<u32>;
@group(0) @binding(3) var<storage, read> entries: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(WG)
fn twoTime(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let t1 = wid.x;
  let t2 = wid.y;
  let k = wid.z;
  if (t2 < t1) {
    return; // uniform across the workgroup
  }
  var a = 0.0;
  var l = 0.0;
  var r = 0.0;
  var n = 0u;
  let o1 = t1 * params.pixels;
  let o2 = t2 * params.pixels;
  for (var j = offsets[k] + lid; j < offsets[k + 1u]; j += WG) {
    let p = entries[j];
    let x = bitcast<f32>(frames[o1 + p]);
    let y = bitcast<f32>(frames[o2 + p]);
    if (isFiniteF32(x) && isFiniteF32(y)) {
      a += x * y;
      l += x;
      r += y;
      n += 1u;
    }
  }
  reduceSums(lid, a, l, r, n);
  if (lid == 0u) {
    let o = ((k * params.frames + t1) * params.frames + t2) * 4u;
    if (params.first != 0u) {
      out[o] = bitcast<u32>(sA[0]);
      out[o + 1u] = bitcast<u32>(sL[0]);
      out[o + 2u] = bitcast<u32>(sR[0]);
      out[o + 3u] = sP[0];
    } else {
      out[o] = bitcast<u32>(bitcast<f32>(out[o]) + sA[0]);
      out[o + 1u] = bitcast<u32>(bitcast<f32>(out[o + 1u]) + sL[0]);
      out[o + 2u] = bitcast<u32>(bitcast<f32>(out[o + 2u]) + sR[0]);
      out[o + 3u] = out[o + 3u] + sP[0];
    }
  }
}
