// Stage 2 pre-pass (hot pixels): litCount[p] = number of frames of the batch where pixel p is lit by the
// stage-1 rule (valid && value > threshold). The host adds these to the module's running counts; a pixel
// is hot when its count > hotFraction * frames (hotPixels() in src/localise/stages.ts).
//
// One invocation per module pixel, looping over the frames (coalesced across invocations).

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> litCount: array<u32>;

@compute @workgroup_size(256)
fn hotcount(@builtin(global_invocation_id) gid: vec3u) {
  let p = gid.x;
  if (p >= params.pixels) {
    return;
  }
  var n = 0u;
  for (var f = 0u; f < params.nFrames; f++) {
    let i = f * params.pixels + p;
    let v = data[i];
    if (isFiniteF32(v) && v > params.threshold && (params.hasMask == 0u || mask[i] == 0u)) {
      n += 1u;
    }
  }
  litCount[p] = n;
}
