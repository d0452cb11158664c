// roi: per frame and region column, the sum over slow scan of the valid pixels and their number
// (spec: src/roi.ts). One invocation per (column, frame); columns of all regions are concatenated.
//
// data: the batch's frames of the regions' modules, module slot after module slot
//   (slot * maxFrames + frame) * pixels + ss * moduleFs + fs; mask alike (read when hasMask = 1).
// cols: per column (slot, ss0, ss1, fs). present: per (slot * maxFrames + frame), 1 where recorded.
// colSum (f32 bits, Kahan-compensated sum) and colCount at frame * total + column; NaN / 0 where not recorded.

struct Params {
  pixels: u32,
  moduleFs: u32,
  nFrames: u32,
  maxFrames: u32,
  total: u32,
  hasMask: u32,
  pad0: u32,
  pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> cols: array<vec4u>;
@group(0) @binding(4) var<storage, read> present: array<u32>;
@group(0) @binding(5) var<storage, read_write> colSum: array<u32>;
@group(0) @binding(6) var<storage, read_write> colCount: array<u32>;

// finite(v) from the bits: compilers may assume no NaN/Inf in float comparisons.
fn isFiniteF32(v: f32) -> bool {
  return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(64)
fn roi(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let f = gid.y;
  if (c >= params.total || f >= params.nFrames) {
    return;
  }
  let col = cols[c];
  let slot = col.x;
  let out = f * params.total + c;
  if (present[slot * params.maxFrames + f] == 0u) {
    colSum[out] = 0x7fc00000u;
    colCount[out] = 0u;
    return;
  }
  let base = (slot * params.maxFrames + f) * params.pixels + col.w;
  var s = 0.0;
  var comp = 0.0;
  var n = 0u;
  for (var ss = col.y; ss < col.z; ss++) {
    let i = base + ss * params.moduleFs;
    let v = data[i];
    if (isFiniteF32(v) && (params.hasMask == 0u || mask[i] == 0u)) {
      let y = v - comp;
      let t = s + y;
      comp = (t - s) - y;
      s = t;
      n += 1u;
    }
  }
  colSum[out] = bitcast<u32>(s);
  colCount[out] = n;
}
