// Shared by every localisation shader: the loader (src/localise/webgpu.ts) puts this file in front of
// each stage's file. Layouts match src/localise/webgpu.ts.
//
// A submission holds several modules' frames of one batch: `frame` is the module-frame index
// j = module * nFrames + f (module: its place in the submission, nFrames: frames per module), so that
// every stage runs once over (modules x frames); per-module inputs (hot pixels, stage-0 cells) are
// indexed by moduleOf(j).
// Pixel indices: p = ss * moduleFs + fs within a module frame; i = frame * pixels + p within the submission.
// Per-frame counters (stride = 4 * nAsics + 1 words): [0, A) litPixels, [A, 2A) litIntensity (f32 bits),
// [2A, 3A) unmaskedPixels, [3A, 4A) filteredLit, [4A] number of peaks (components in the area range).
// Peak table: `capacity` entries of ENTRY words per frame: area, ss0, fs0, ss1, fs1 (u32), intensity
// (sum of d = v - mu), sum(d * (ss - cs)), sum(d * (fs - cf)) about the box centre
// cs = (ss0 + ss1 - 1) / 2 (f32 bits), max (ordered u32 key of the f32, see orderedKey), first (the
// component's root: its smallest module-frame pixel index), sum of (thr / minSnr)^2 (f32 bits).
// Background (stage 0): bg[(frame * cellsN + cell) * 4 + {0, 1, 2}] = mu, sigma, thr of the cells
// (16 x 16 tiles, or radius bins).

struct Params {
  pixels: u32,
  moduleSs: u32,
  moduleFs: u32,
  asicSs: u32,
  asicFs: u32,
  asicCols: u32,
  nAsics: u32,
  nFrames: u32,
  hasMask: u32,
  hasHot: u32,
  neighbours: u32,
  minArea: u32,
  maxArea: u32,
  capacity: u32,
  stride: u32,
  segments: u32,
  threshold: f32,
  strong: f32,
  bgIterations: u32,
  tilesFs: u32,
  minSnr: f32,
  bgClip: f32,
  cellsN: u32,
  radial: u32,
}

// Stage-0 cell of every module pixel, per module of the submission (cells[module * pixels + p]): its
// 16 x 16 tile, or its radius bin (cellsOf in stages.ts). cellsN is the stride of bg per module frame
// (the tiles, or the most radius bins a module can have); a module's own count of radius bins is in
// cellCounts (background.wgsl).
@group(0) @binding(15) var<storage, read> cells: array<u32>;

const NONE: u32 = 0xffffffffu;
// Pixels per row segment in the run-length passes (moduleFs is a multiple of it).
const SEG: u32 = 16u;
const ENTRY: u32 = 11u;

// Background cell (tile or radius bin) of pixel (ss, fs) of a frame: its mu, sigma, thr at
// bg[bgIndex(...) + 0, 1, 2].
fn bgIndex(frame: u32, ss: u32, fs: u32) -> u32 {
  return (frame * params.cellsN + cells[moduleOf(frame) * params.pixels + ss * params.moduleFs + fs]) * 4u;
}

// The module (its place in the submission) of module-frame `frame`.
fn moduleOf(frame: u32) -> u32 {
  return frame / params.nFrames;
}

// finite(v) from the bits: compilers may assume no NaN/Inf in float comparisons.
fn isFiniteF32(v: f32) -> bool {
  return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// An unsigned key with the order of the float's value (for atomicMax on floats of any sign).
fn orderedKey(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
