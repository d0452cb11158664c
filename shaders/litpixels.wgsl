// Stage 1 (lit pixels).
// valid = finite(value) && (no mask || mask == 0); lit = valid && value > threshold.
// Per frame x ASIC: litPixels (lit count), litIntensity (sum of lit values, f32), unmaskedPixels (valid
// count). Hot pixels still count here (this mirrors EuXFEL's lit-pixel counter).
//
// One workgroup per (ASIC, frame): each invocation sums a strided share of the ASIC's pixels, then a
// tree reduction in workgroup memory; no atomics, so the float sum is deterministic (float32).

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> counters: array<u32>;

const WG: u32 = 256u;
var<workgroup> sLit: array<u32, WG>;
var<workgroup> sValid: array<u32, WG>;
var<workgroup> sSum: array<f32, WG>;

@compute @workgroup_size(WG)
fn litpixels(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let asic = wid.x;
  let frame = wid.y;
  let ss0 = (asic / params.asicCols) * params.asicSs;
  let fs0 = (asic % params.asicCols) * params.asicFs;
  let n = params.asicSs * params.asicFs;
  let base = frame * params.pixels;
  var lit = 0u;
  var valid = 0u;
  var sum = 0.0;
  for (var q = li; q < n; q += WG) {
    let i = base + (ss0 + q / params.asicFs) * params.moduleFs + fs0 + q % params.asicFs;
    let v = data[i];
    if (isFiniteF32(v) && (params.hasMask == 0u || mask[i] == 0u)) {
      valid += 1u;
      if (v > params.threshold) {
        lit += 1u;
        sum += v;
      }
    }
  }
  sLit[li] = lit;
  sValid[li] = valid;
  sSum[li] = sum;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (li < s) {
      sLit[li] += sLit[li + s];
      sValid[li] += sValid[li + s];
      sSum[li] += sSum[li + s];
    }
    workgroupBarrier();
  }
  if (li == 0u) {
    let o = frame * params.stride;
    counters[o + asic] = sLit[0];
    counters[o + params.nAsics + asic] = bitcast<u32>(sSum[0]);
    counters[o + 2u * params.nAsics + asic] = sValid[0];
  }
}
