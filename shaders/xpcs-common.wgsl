// What the xpcs shaders share (put in front of shaders/xpcs.wgsl and shaders/xpcs-twotime.wgsl by
// src/reductions/xpcs-webgpu.ts, as localise puts common.wgsl in front of its stages): the workgroup size, the
// finiteness test and the workgroup's tree reduction of the four sums A, L, R (f32) and P (u32).

const WG: u32 = 64u;
var<workgroup> sA: array<f32, WG>;
var<workgroup> sL: array<f32, WG>;
var<workgroup> sR: array<f32, WG>;
var<workgroup> sP: array<u32, WG>;

fn isFiniteF32(v: f32) -> bool {
  return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// Each invocation's a, l, r, n summed over the workgroup: the totals in sA[0], sL[0], sR[0], sP[0]. Called
// in uniform control flow (it has barriers) by every invocation of the workgroup.
fn reduceSums(lid: u32, a: f32, l: f32, r: f32, n: u32) {
  sA[lid] = a;
  sL[lid] = l;
  sR[lid] = r;
  sP[lid] = n;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w = w / 2u) {
    if (lid < w) {
      sA[lid] += sA[lid + w];
      sL[lid] += sL[lid + w];
      sR[lid] += sR[lid + w];
      sP[lid] += sP[lid + w];
    }
    workgroupBarrier();
  }
}
