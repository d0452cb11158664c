// Stage 4a (connected components: labelling).
// 8-connectivity over the survivors of each module frame (across ASIC seams, never across frames).
// Union-find on labels[] (parent pointers, batch pixel indices, NONE = not a survivor), after
// Playne & Hawick's lock-free scheme: every link points from a larger index to a smaller one (atomicMin),
// so each component's root is its smallest index, i.e. its first pixel in raster order.
//   unite:    each survivor unites with its earlier neighbours (up; else up-right and left or up-left).
//   compress: labels[i] = root(i) for every survivor; area[i] = 0 for every pixel (for stage 4b).
// One invocation per pixel, dispatched as (pixels / 256, frames).

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> labels: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read_write> area: array<u32>;

fn findRoot(x0: u32) -> u32 {
  var x = x0;
  var p = atomicLoad(&labels[x]);
  while (p != x) {
    x = p;
    p = atomicLoad(&labels[x]);
  }
  return x;
}

fn unite(a0: u32, b0: u32) {
  var a = a0;
  var b = b0;
  loop {
    a = findRoot(a);
    b = findRoot(b);
    if (a == b) {
      break;
    }
    if (a < b) {
      let old = atomicMin(&labels[b], a);
      if (old == b) {
        break;
      }
      b = old;
    } else {
      let old = atomicMin(&labels[a], b);
      if (old == a) {
        break;
      }
      a = old;
    }
  }
}

fn survives(i: u32) -> bool {
  return atomicLoad(&labels[i]) != NONE;
}

@compute @workgroup_size(256)
fn merge(@builtin(global_invocation_id) gid: vec3u) {
  let p = gid.x;
  if (p >= params.pixels) {
    return;
  }
  let i = gid.y * params.pixels + p;
  if (!survives(i)) {
    return;
  }
  let w = params.moduleFs;
  let fs = p % w;
  let hasLeft = fs > 0u;
  let hasRight = fs + 1u < w;
  if (p >= w) {
    let up = i - w;
    if (survives(up)) {
      // up-left and left are neighbours of up's row / of up: they join through it.
      unite(i, up);
      return;
    }
    if (hasRight && survives(up + 1u)) {
      unite(i, up + 1u);
    }
    if (hasLeft && survives(i - 1u)) {
      unite(i, i - 1u); // left joins up-left itself (up-left is left's up)
    } else if (hasLeft && survives(up - 1u)) {
      unite(i, up - 1u);
    }
  } else if (hasLeft && survives(i - 1u)) {
    unite(i, i - 1u);
  }
}

@compute @workgroup_size(256)
fn compress(@builtin(global_invocation_id) gid: vec3u) {
  let p = gid.x;
  if (p >= params.pixels) {
    return;
  }
  let i = gid.y * params.pixels + p;
  area[i] = 0u;
  if (survives(i)) {
    atomicStore(&labels[i], findRoot(i));
  }
}
