// Stage 2 pre-pass (hot pixels): litCount[module * pixels + p] = number of the module's frames of the
// submission where pixel p is a candidate
// (valid && value - mu > thr of its background tile, stage 0). The host adds these to the module's running counts; a pixel
// is hot when its count > hotFraction * frames (hotPixels() in src/localise/stages.ts).
//
// One invocation per (pixel, module), looping over the module's frames (coalesced across invocations).

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> litCount: array<u32>;
@group(0) @binding(4) var<storage, read> bg: array<f32>;

@compute @workgroup_size(256)
fn hotcount(@builtin(global_invocation_id) gid: vec3u) {
  let p = gid.x;
  if (p >= params.pixels) {
    return;
  }
  let mi = gid.y;
  var n = 0u;
  let ss = p / params.moduleFs;
  let fs = p % params.moduleFs;
  for (var f = mi * params.nFrames; f < (mi + 1u) * params.nFrames; f++) {
    let i = f * params.pixels + p;
    let v = data[i];
    let b = bgIndex(f, ss, fs);
    if (isFiniteF32(v) && v - bg[b] > bg[b + 2u] && (params.hasMask == 0u || mask[i] == 0u)) {
      n += 1u;
    }
  }
  litCount[mi * params.pixels + p] = n;
}
