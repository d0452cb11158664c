// Stage 4b (connected components: statistics and the peak table).
// Per component, with d = value - mu (mu of the pixel's background tile, stage 0): area (pixel count),
// box [ss0, fs0, ss1, fs1) half-open, intensity = sum of d, sum(d * (ss - cs)) and sum(d * (fs - cf))
// about the box centre (cs, cf) = ((ss0 + ss1 - 1) / 2, (fs0 + fs1 - 1) / 2) (the host computes the
// centroid cs + sum(d * (ss - cs)) / intensity: sums about the centre stay small, so float32 rounding in
// them does not move the centroid), max value, the root (first pixel in raster order, for the final
// tie-break of the host's sort), and the sum of (thr / minSnr)^2 (the host's SNR; 0 with minSnr <= 0).
// Peaks = components with minArea <= area <= maxArea.
//   areas:      area[root] += pixels of the component (labels are roots after compress).
//   allocate:   each root with minArea <= area <= maxArea takes slot = atomicAdd(peak count of its frame);
//               the count is exact; a slot < capacity gets a table entry (initialised here), and
//               area[root] becomes the slot (NONE for roots without an entry).
//   bounds:     each survivor adds itself to its root's entry: area, box (atomicAdd/Min/Max).
//   accumulate: each survivor adds itself to its root's entry: the float sums (a compare-exchange loop
//               on the bits, so their order, and the last bits of the sums, depend on scheduling), max
//               (atomicMax on orderedKey).
// A frame whose peak count exceeds `capacity` has only `capacity` of its peaks in the table (whichever
// allocated first); the host recomputes that frame's peak list on the CPU (see webgpu.ts).
// The run passes (areas, accumulate) give each invocation a segment of SEG pixels of one row and
// aggregate runs of pixels of one component before touching global atomics (fewer collisions).

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> area: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> counters: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> table: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> bg: array<f32>;

fn addF32(k: u32, v: f32) {
  var old = atomicLoad(&table[k]);
  loop {
    let r = atomicCompareExchangeWeak(&table[k], old, bitcast<u32>(bitcast<f32>(old) + v));
    if (r.exchanged) {
      break;
    }
    old = r.old_value;
  }
}

@compute @workgroup_size(256)
fn areas(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= params.segments) {
    return;
  }
  let start = gid.y * params.pixels + gid.x * SEG;
  var cur = NONE;
  var n = 0u;
  for (var k = 0u; k < SEG; k++) {
    let r = labels[start + k];
    if (r == NONE) {
      continue;
    }
    if (r != cur) {
      if (cur != NONE) {
        atomicAdd(&area[cur], n);
      }
      cur = r;
      n = 0u;
    }
    n += 1u;
  }
  if (cur != NONE) {
    atomicAdd(&area[cur], n);
  }
}

@compute @workgroup_size(256)
fn allocate(@builtin(global_invocation_id) gid: vec3u) {
  let p = gid.x;
  if (p >= params.pixels) {
    return;
  }
  let frame = gid.y;
  let i = frame * params.pixels + p;
  if (labels[i] != i) {
    return; // not a survivor, or not a root
  }
  let a = atomicLoad(&area[i]);
  var slot = NONE;
  if (a >= params.minArea && a <= params.maxArea) {
    let s = atomicAdd(&counters[frame * params.stride + 4u * params.nAsics], 1u);
    if (s < params.capacity) {
      slot = s;
      let t = (frame * params.capacity + s) * ENTRY;
      atomicStore(&table[t], 0u);
      atomicStore(&table[t + 1u], NONE);
      atomicStore(&table[t + 2u], NONE);
      atomicStore(&table[t + 3u], 0u);
      atomicStore(&table[t + 4u], 0u);
      atomicStore(&table[t + 5u], 0u);
      atomicStore(&table[t + 6u], 0u);
      atomicStore(&table[t + 7u], 0u);
      atomicStore(&table[t + 8u], 0u);
      atomicStore(&table[t + 9u], p);
      atomicStore(&table[t + 10u], 0u);
    }
  }
  atomicStore(&area[i], slot);
}

fn flushBounds(frame: u32, slot: u32, ss: u32, n: u32, fsMin: u32, fsMax: u32) {
  if (slot == NONE || n == 0u) {
    return;
  }
  let t = (frame * params.capacity + slot) * ENTRY;
  atomicAdd(&table[t], n);
  atomicMin(&table[t + 1u], ss);
  atomicMin(&table[t + 2u], fsMin);
  atomicMax(&table[t + 3u], ss + 1u);
  atomicMax(&table[t + 4u], fsMax + 1u);
}

@compute @workgroup_size(256)
fn bounds(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= params.segments) {
    return;
  }
  let frame = gid.y;
  let p0 = gid.x * SEG;
  let ss = p0 / params.moduleFs;
  let fs0 = p0 % params.moduleFs;
  let start = frame * params.pixels + p0;
  var cur = NONE;
  var slot = NONE;
  var n = 0u;
  var fsMin = 0u;
  var fsMax = 0u;
  for (var k = 0u; k < SEG; k++) {
    let r = labels[start + k];
    if (r == NONE) {
      continue;
    }
    if (r != cur) {
      flushBounds(frame, slot, ss, n, fsMin, fsMax);
      cur = r;
      slot = atomicLoad(&area[r]);
      n = 0u;
      fsMin = fs0 + k;
    }
    n += 1u;
    fsMax = fs0 + k;
  }
  flushBounds(frame, slot, ss, n, fsMin, fsMax);
}

fn flushSums(t: u32, dss: f32, sum: f32, sumDfs: f32, maxV: f32, var2: f32) {
  if (t == NONE) {
    return;
  }
  addF32(t + 5u, sum);
  addF32(t + 6u, sum * dss); // ss is constant along a run
  addF32(t + 7u, sumDfs);
  atomicMax(&table[t + 8u], orderedKey(maxV));
  addF32(t + 10u, var2);
}

@compute @workgroup_size(256)
fn accumulate(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= params.segments) {
    return;
  }
  let frame = gid.y;
  let p0 = gid.x * SEG;
  let ss = p0 / params.moduleFs;
  let fs0 = p0 % params.moduleFs;
  let start = frame * params.pixels + p0;
  var cur = NONE;
  var t = NONE; // table entry of the current run's component, NONE when it has none
  var dss = 0.0;
  var cf = 0.0;
  var sum = 0.0;
  var sumDfs = 0.0;
  var maxV = 0.0;
  var var2 = 0.0;
  for (var k = 0u; k < SEG; k++) {
    let r = labels[start + k];
    if (r == NONE) {
      continue;
    }
    let v = data[start + k];
    // The pixel's background cell (a tile, or a radius bin: these change along a segment).
    let b = bgIndex(frame, ss, fs0 + k);
    let mu = bg[b];
    // The noise of the SNR: sigma floored at threshold / minSnr, i.e. thr / minSnr (0 without a background).
    let se = select(0.0, bg[b + 2u] / params.minSnr, params.minSnr > 0.0);
    let sigma2 = se * se;
    if (r != cur) {
      flushSums(t, dss, sum, sumDfs, maxV, var2);
      cur = r;
      let slot = atomicLoad(&area[r]);
      t = NONE;
      if (slot != NONE) {
        t = (frame * params.capacity + slot) * ENTRY;
        // Box centre (complete after the bounds pass).
        let cs = 0.5 * f32(atomicLoad(&table[t + 1u]) + atomicLoad(&table[t + 3u]) - 1u);
        cf = 0.5 * f32(atomicLoad(&table[t + 2u]) + atomicLoad(&table[t + 4u]) - 1u);
        dss = f32(ss) - cs;
      }
      sum = 0.0;
      sumDfs = 0.0;
      var2 = 0.0;
      maxV = v;
    }
    let d = v - mu;
    sum += d;
    sumDfs += d * (f32(fs0 + k) - cf);
    var2 += sigma2;
    maxV = max(maxV, v);
  }
  flushSums(t, dss, sum, sumDfs, maxV, var2);
}
