// Stage 3 (noise filter).
// L = candidate && !hot: candidate = valid && value - mu > thr (mu, thr: the pixel's background tile,
// stage 0). A pixel survives when L and (the number of its 8 neighbours with L is >= neighbours, or
// value - mu >= strong). Neighbours are taken within the module image, across ASIC
// seams; out-of-image neighbours count as not lit. filteredLit = survivors per frame x ASIC.
// Output for stage 4: labels[i] = i for a survivor, NONE otherwise (union-find initialisation).
//
// One workgroup per 16 x 16 tile of a frame (a tile never straddles an ASIC: ASIC sides are multiples
// of 16): L of the tile and its 1-pixel halo is computed once into workgroup memory; survivors are
// counted in workgroup memory, then one atomicAdd per tile.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> hotBytes: array<u32>;
@group(0) @binding(4) var<storage, read_write> labels: array<u32>;
@group(0) @binding(5) var<storage, read_write> counters: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> bg: array<f32>;

const T: u32 = 16u;
const H: u32 = 18u; // T + 2
var<workgroup> tileL: array<u32, 324>; // H * H
var<workgroup> tileCount: atomic<u32>;

// Hot bytes: one per pixel of each module of the submission (hotBytes[module * pixels + p], packed 4 a word).
fn isHot(frame: u32, p: u32) -> bool {
  let b = moduleOf(frame) * params.pixels + p;
  return params.hasHot != 0u && ((hotBytes[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu) != 0u;
}

// L at (ss, fs) of the frame starting at `base`; false outside the image.
fn litNotHot(frame: u32, base: u32, ss: i32, fs: i32) -> u32 {
  if (ss < 0 || fs < 0 || ss >= i32(params.moduleSs) || fs >= i32(params.moduleFs)) {
    return 0u;
  }
  let p = u32(ss) * params.moduleFs + u32(fs);
  let i = base + p;
  let v = data[i];
  let b = bgIndex(frame, u32(ss), u32(fs));
  if (!isFiniteF32(v) || !(v - bg[b] > bg[b + 2u])) {
    return 0u;
  }
  if (params.hasMask != 0u && mask[i] != 0u) {
    return 0u;
  }
  if (isHot(frame, p)) {
    return 0u;
  }
  return 1u;
}

@compute @workgroup_size(16, 16)
fn noisefilter(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) li: u32,
) {
  let frame = wid.z;
  let base = frame * params.pixels;
  let ssT = i32(wid.y * T) - 1;
  let fsT = i32(wid.x * T) - 1;
  if (li == 0u) {
    atomicStore(&tileCount, 0u);
  }
  for (var k = li; k < H * H; k += T * T) {
    tileL[k] = litNotHot(frame, base, ssT + i32(k / H), fsT + i32(k % H));
  }
  workgroupBarrier();

  let ss = wid.y * T + lid.y;
  let fs = wid.x * T + lid.x;
  let c = (lid.y + 1u) * H + lid.x + 1u;
  let i = base + ss * params.moduleFs + fs;
  var survive = false;
  if (tileL[c] != 0u) {
    let n = tileL[c - H - 1u] + tileL[c - H] + tileL[c - H + 1u] + tileL[c - 1u] + tileL[c + 1u] +
      tileL[c + H - 1u] + tileL[c + H] + tileL[c + H + 1u];
    survive = n >= params.neighbours || data[i] - bg[bgIndex(frame, ss, fs)] >= params.strong;
  }
  labels[i] = select(NONE, i, survive);
  if (survive) {
    atomicAdd(&tileCount, 1u);
  }
  workgroupBarrier();
  if (li == 0u) {
    let count = atomicLoad(&tileCount);
    if (count > 0u) {
      let asic = (wid.y * T / params.asicSs) * params.asicCols + wid.x * T / params.asicFs;
      atomicAdd(&counters[frame * params.stride + 3u * params.nAsics + asic], count);
    }
  }
}
