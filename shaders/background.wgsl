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
// `background`: one invocation per (tile, frame), sums in raster order in float32 (deterministic, and
// within float32 rounding of the CPU's float64). `bgthreshold`: one invocation per (tile, frame), after
// `background`.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> bg: array<f32>;

// Pixel q (0..255, row-major) of tile (ts, tf) of a frame: its value, and whether it is valid.
fn tilePixel(frame: u32, ts: u32, tf: u32, q: u32) -> f32 {
  return data[frame * params.pixels + (ts * 16u + q / 16u) * params.moduleFs + tf * 16u + q % 16u];
}

fn tileValid(frame: u32, ts: u32, tf: u32, q: u32, v: f32) -> bool {
  let i = frame * params.pixels + (ts * 16u + q / 16u) * params.moduleFs + tf * 16u + q % 16u;
  return isFiniteF32(v) && (params.hasMask == 0u || mask[i] == 0u);
}

@compute @workgroup_size(64)
fn background(@builtin(global_invocation_id) gid: vec3u) {
  let tSs = params.moduleSs / 16u;
  let nT = tSs * params.tilesFs;
  let tile = gid.x;
  if (tile >= nT) {
    return;
  }
  let frame = gid.y;
  let o = (frame * nT + tile) * 4u;
  if (!(params.minSnr > 0.0)) {
    bg[o] = 0.0;
    bg[o + 1u] = 0.0;
    return;
  }
  let ts = tile / params.tilesFs;
  let tf = tile % params.tilesFs;
  var mu = 0.0;
  var sigma = 0.0;
  var limitSet = false;
  var limit = 0.0;
  var prevN = -1.0;
  for (var it = 0u; it < params.bgIterations; it++) {
    var n = 0.0;
    var sum = 0.0;
    for (var q = 0u; q < 256u; q++) {
      let v = tilePixel(frame, ts, tf, q);
      if (tileValid(frame, ts, tf, q, v) && (!limitSet || v < limit)) {
        n += 1.0;
        sum += v;
      }
    }
    if (n == 0.0 || n == prevN) {
      break; // nothing left, or the same values as the previous iteration
    }
    prevN = n;
    let m = sum / n;
    var q2 = 0.0;
    for (var q = 0u; q < 256u; q++) {
      let v = tilePixel(frame, ts, tf, q);
      if (tileValid(frame, ts, tf, q, v) && (!limitSet || v < limit)) {
        q2 += (v - m) * (v - m);
      }
    }
    mu = m;
    sigma = sqrt(q2 / n);
    limit = mu + params.bgClip * sigma;
    limitSet = true;
  }
  bg[o] = mu;
  bg[o + 1u] = sigma;
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

// Stage 0 per radius bin (spec: radialBackgroundFrameCpu in src/localise/stages.ts). Cells c = 0 ..
// N - 1 (N = cellCounts[mi]: radius bins of the module; cells[module * pixels + p] is a pixel's bin).
// cellList: per module a segment of cellsN + 1 + pixels words at module * (cellsN + 1 + pixels): N + 1
// starts, then the pixels of each cell (cellList in stages.ts). Workgroups of cells c >= N return. `radialbg`: one workgroup of 64 per (cell, frame), the
// same one-sided clip as a tile's, with count, sum and sum of squares (sigma = sqrt(max(0, Q / n -
// mu^2)), as the CPU's) per invocation (strided over the cell's pixels), then a tree reduction in
// workgroup memory (float32, deterministic). `radialthr`: one invocation per (cell, frame):
// thr = max(threshold, minSnr * s), s the median of the sigmas of cells c - 1, c, c + 1 (the lower of
// two at the ends; its own with one cell).
@group(0) @binding(4) var<storage, read> cellList: array<u32>;
@group(0) @binding(5) var<storage, read> cellCounts: array<u32>;

var<workgroup> wn: array<f32, 64>;
var<workgroup> ws: array<f32, 64>;
var<workgroup> wq: array<f32, 64>;

@compute @workgroup_size(64)
fn radialbg(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let c = wid.x;
  let frame = wid.y;
  let mi = moduleOf(frame);
  let N = cellCounts[mi];
  if (c >= N) {
    return;
  }
  let o = (frame * params.cellsN + c) * 4u;
  if (!(params.minSnr > 0.0)) {
    if (li == 0u) {
      bg[o] = 0.0;
      bg[o + 1u] = 0.0;
    }
    return;
  }
  let seg = mi * (params.cellsN + 1u + params.pixels);
  let start = cellList[seg + c];
  let end = cellList[seg + c + 1u];
  let base = seg + N + 1u;
  var mu = 0.0;
  var sigma = 0.0;
  var limitSet = false;
  var limit = 0.0;
  var prevN = -1.0;
  for (var it = 0u; it < params.bgIterations; it++) {
    // One pass: count, sum and sum of squares of the values below the limit.
    var n = 0.0;
    var sum = 0.0;
    var sq = 0.0;
    for (var k = start + li; k < end; k += 64u) {
      let i = frame * params.pixels + cellList[base + k];
      let v = data[i];
      if (isFiniteF32(v) && (params.hasMask == 0u || mask[i] == 0u) && (!limitSet || v < limit)) {
        n += 1.0;
        sum += v;
        sq += v * v;
      }
    }
    wn[li] = n;
    ws[li] = sum;
    wq[li] = sq;
    workgroupBarrier();
    for (var h = 32u; h > 0u; h >>= 1u) {
      if (li < h) {
        wn[li] += wn[li + h];
        ws[li] += ws[li + h];
        wq[li] += wq[li + h];
      }
      workgroupBarrier();
    }
    let nt = workgroupUniformLoad(&wn[0]);
    let st = ws[0];
    let qt = wq[0];
    workgroupBarrier();
    if (nt == 0.0 || nt == prevN) {
      break; // nothing left, or the same values as the previous iteration
    }
    prevN = nt;
    mu = st / nt;
    sigma = sqrt(max(0.0, qt / nt - mu * mu));
    limit = mu + params.bgClip * sigma;
    limitSet = true;
  }
  if (li == 0u) {
    bg[o] = mu;
    bg[o + 1u] = sigma;
  }
}

@compute @workgroup_size(64)
fn radialthr(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let frame = gid.y;
  let N = cellCounts[moduleOf(frame)];
  if (c >= N) {
    return;
  }
  let o = (frame * params.cellsN + c) * 4u;
  if (!(params.minSnr > 0.0)) {
    bg[o + 2u] = params.threshold;
    return;
  }
  let a = bg[o + 1u];
  var s = a;
  if (c > 0u && c + 1u < N) {
    let x = bg[o - 3u];
    let y = bg[o + 5u];
    s = max(min(a, x), min(max(a, x), y));
  } else if (N > 1u) {
    s = min(a, bg[select(o + 5u, o - 3u, c > 0u)]);
  }
  bg[o + 2u] = max(params.threshold, params.minSnr * s);
}
