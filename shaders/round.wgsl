// Float32 rounding (src/compress/round.ts has the spec and the CPU reference; the bits are identical).
// Keep m mantissa bits and an absolute precision of 2^p, half to even, on the integer bits only, so no
// float arithmetic (and no subnormal flushing) is involved. NaN and Inf are unchanged.
//
// One invocation per value: values[i] (float32 bits) rounded in place. Dispatch (ceil(n / WG), 1, 1),
// or a 2-D grid of such rows when n / WG exceeds the per-dimension limit (index = y * xGroups * WG + x).

struct RoundParams {
  n: u32,
  m: u32,
  hasP: u32,
  p: i32,
  xGroups: u32,
  pad0: u32,
  pad1: u32,
  pad2: u32,
}

@group(0) @binding(0) var<uniform> params: RoundParams;
@group(0) @binding(1) var<storage, read_write> values: array<u32>;

const WG: u32 = 256u;

fn pow2Bits(p: i32) -> u32 {
  if (p >= -126) {
    return u32(p + 127) << 23u;
  }
  return 1u << u32(p + 149);
}

fn roundBits(b: u32, m: u32, hasP: bool, p: i32) -> u32 {
  let s = b & 0x80000000u;
  let a = b & 0x7fffffffu;
  if (a >= 0x7f800000u) {
    return b;
  }
  let E = a >> 23u;
  let eeff = max(E, 1u);
  var k = 23 - i32(m);
  if (hasP) {
    k = max(k, p - i32(eeff) + 150);
  }
  if (k <= 0) {
    return b;
  }
  var r: u32;
  if (k <= 22 || (k == 23 && E == 0u)) {
    let ku = u32(k);
    let mask = (1u << ku) - 1u;
    r = (a + (1u << (ku - 1u)) - 1u + ((a >> ku) & 1u)) & ~mask;
    if (r >= 0x7f800000u) {
      r = a & ~mask;
    }
  } else if (k == 23) {
    if ((a & 0x7fffffu) >= 0x400000u) {
      r = (E + 1u) << 23u;
    } else {
      r = E << 23u;
    }
    if (r >= 0x7f800000u) {
      r = E << 23u;
    }
  } else if (k == 24 && E > 0u) {
    if ((a & 0x7fffffu) == 0u) {
      r = 0u;
    } else {
      r = pow2Bits(p);
    }
  } else {
    r = 0u;
  }
  return s | r;
}

@compute @workgroup_size(WG)
fn round_values(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.y * params.xGroups * WG + gid.x;
  if (i >= params.n) {
    return;
  }
  values[i] = roundBits(values[i], params.m, params.hasP != 0u, params.p);
}
