// Stage 0 (background and noise per tile of each frame; spec: backgroundFrameCpu in src/localise/stages.ts).
// Tiles of T x T = 16 x 16 pixels, row-major over the module image (tilesFs = moduleFs / 16 per row).
// The valid pixels (finite, mask 0) of the tile enter a one-sided iterative clip: limit = +inf;
// bgIterations times, over the valid values v < limit: n = their count; if n = 0 stop;
// mu = sum(v) / n, sigma = sqrt(sum((v - mu)^2) / n), limit = mu + bgClip * sigma. No valid pixel:
// mu = sigma = 0. Then (entry `bgthreshold`) thr = max(threshold, minSnr * s), s the lower median of the
// k sigmas of the tile and its neighbours within the module (element (k - 1) / 2 in ascending order).
// minSnr <= 0: mu = sigma = 0, thr = threshold.
// Output: bg[(frame * tiles + tile) * 4 + {0, 1, 2}] = mu, sigma, thr.
//
// `background`: one workgroup per (tile, frame), one invocation per pixel; float32 tree reductions in
// workgroup memory (a fixed order: the result is deterministic, and within float32 rounding of the CPU's
// float64). `bgthreshold`: one invocation per (tile, frame), after `background`.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> bg: array<f32>;

var<workgroup> sN: array<f32, 256>;
var<workgroup> sS: array<f32, 256>;

// Sums sN and sS over the workgroup into sN[0], sS[0].
fn reduce2(li: u32) {
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (li < s) {
      sN[li] += sN[li + s];
      sS[li] += sS[li + s];
    }
    workgroupBarrier();
  }
}

@compute @workgroup_size(256)
fn background(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let frame = wid.z;
  let tile = wid.y * params.tilesFs + wid.x;
  let o = (frame * params.tilesFs * (params.moduleSs / 16u) + tile) * 4u;
  if (!(params.minSnr > 0.0)) {
    if (li == 0u) {
      bg[o] = 0.0;
      bg[o + 1u] = 0.0;
    }
    return;
  }
  let i = frame * params.pixels + (wid.y * 16u + li / 16u) * params.moduleFs + wid.x * 16u + li % 16u;
  let v = data[i];
  let valid = isFiniteF32(v) && (params.hasMask == 0u || mask[i] == 0u);
  var mu = 0.0;
  var sigma = 0.0;
  var limitSet = false;
  var limit = 0.0;
  var done = false;
  for (var it = 0u; it < params.bgIterations; it++) {
    let inside = valid && (!limitSet || v < limit);
    sN[li] = select(0.0, 1.0, inside);
    sS[li] = select(0.0, v, inside);
    reduce2(li);
    let n = sN[0];
    let m = sS[0] / max(n, 1.0);
    workgroupBarrier();
    sS[li] = select(0.0, (v - m) * (v - m), inside);
    sN[li] = 0.0;
    reduce2(li);
    let q = sS[0];
    workgroupBarrier();
    if (!done) {
      if (n == 0.0) {
        done = true;
      } else {
        mu = m;
        sigma = sqrt(q / n);
        limit = mu + params.bgClip * sigma;
        limitSet = true;
      }
    }
  }
  if (li == 0u) {
    bg[o] = mu;
    bg[o + 1u] = sigma;
  }
}

@compute @workgroup_size(64)
fn bgthreshold(@builtin(global_invocation_id) gid: vec3u) {
  let tSs = params.moduleSs / 16u;
  let nT = tSs * params.tilesFs;
  let tile = gid.x;
  if (tile >= nT) {
    return;
  }
  let frame = gid.y;
  let o = (frame * nT + tile) * 4u;
  if (!(params.minSnr > 0.0)) {
    bg[o + 2u] = params.threshold;
    return;
  }
  let ts = tile / params.tilesFs;
  let tf = tile % params.tilesFs;
  var nb: array<f32, 9>;
  var k = 0u;
  for (var y = max(ts, 1u) - 1u; y <= min(tSs - 1u, ts + 1u); y++) {
    for (var x = max(tf, 1u) - 1u; x <= min(params.tilesFs - 1u, tf + 1u); x++) {
      let v = bg[(frame * nT + y * params.tilesFs + x) * 4u + 1u];
      var j = k;
      k += 1u;
      while (j > 0u && nb[j - 1u] > v) {
        nb[j] = nb[j - 1u];
        j -= 1u;
      }
      nb[j] = v;
    }
  }
  bg[o + 2u] = max(params.threshold, params.minSnr * nb[(k - 1u) / 2u]);
}
