/** The options and results of localise, and what a part hands to the merge (types shared by its modules). */
import type { Geometry } from "../exdf/detectors.ts";
import { type ClassifierMode } from "./classify.ts";
import { type Box } from "./rois.ts";
import { type BeamLookup, type LitFrom } from "../beam/annotate.ts";
import { type Sase } from "../beam/bunch.ts";
import { DEFAULT_PARAMS, type LocaliseParams, type Peak } from "./spec.ts";

import type { BackendChoice } from "../gpu/device.ts";

export type { BackendChoice };

export interface LocaliseOptions extends LocaliseParams {
  /** Classifier (peaks mode): a frame is lit with at least this many peaks, all modules together ... */
  minPeaks: number;
  /** ... or with an ASIC of at least this many filtered lit pixels (0 = off). */
  minLit: number;
  mode: ClassifierMode;
  snr: number;
  margin: number;
  maxRois: number;
  /**
   * ROIs: pixels inside peak boxes in at least this fraction of the lit frames (and at least 2), padded by
   * margin; 0: the union of every peak box of the lit frames.
   */
  roiFraction: number;
  /** A module is selected when its lit-frame fraction is at least this (or it holds an ROI). */
  minLitFraction: number;
  /** Frames per module sampled for the hot-pixel pass. */
  hotSample: number;
  backend: BackendChoice;
  /** Where the lit-frame decision comes from: the beam (bunch pattern), the images, or both. */
  litFrom: LitFrom;
  /** Beam annotation: SASE (default from the instrument), repetition rate (MHz), reference frame. */
  sase?: Sase;
  repRate?: number;
  referenceFrame?: number;
  /** Bytes of image data per batch, all modules together. */
  batchBytes: number;
  /** A CrystFEL .geom file (peak positions); default: the built-in layout of the detector type. */
  geometry?: string;
  /** Worker threads (module groups); default: the cores for the cpu backend, 1 for webgpu. */
  workers?: number;
  detector?: string;
  modules?: number[];
  firstTrain?: number;
  lastTrain?: number;
}

export const DEFAULT_OPTIONS: LocaliseOptions = {
  ...DEFAULT_PARAMS,
  minPeaks: 3,
  minLit: 0,
  mode: "peaks",
  snr: 4,
  margin: 4,
  maxRois: 32,
  roiFraction: 0.1,
  minLitFraction: 0.01,
  hotSample: 128,
  backend: "auto",
  litFrom: "both",
  batchBytes: 128 * 2 ** 20,
};

export interface ModuleResult {
  module: number;
  /** Frames this module recorded. */
  frames: number;
  /** Frames in which this module has a lit ASIC. */
  litFrames: number;
  selected: boolean;
  files: string[];
  rois: Box[];
  hotPixels: [number, number][];
}

export interface FramePeak extends Peak {
  module: number;
  /** Position of the centroid (position.ts): x, y in metres, radius in pixels from the beam. */
  x?: number;
  y?: number;
  radius?: number;
}

/** Everything localise found, per frame and per module. */
export interface LocaliseResult {
  run: string;
  /** File names of the run. */
  runFiles: string[];
  detector: { name: string; type: string; modules: number[] };
  backend: { name: string; adapter: string };
  notes: string[];
  params: LocaliseOptions;
  trains: number;
  frames: number;
  litFrames: number;
  modules: ModuleResult[];
  selectedFiles: string[];
  timing: { seconds: number; bytesRead: number; gbPerSecond: number; framesPerSecond: number };
  /**
   * The frames (sorted by trainId, pulseId), their lit decision and score: made on first access from the
   * spill files (21 bytes a frame; tests, the HTML report). The command's summary and REDU file do not use
   * them: nothing per frame stays in memory.
   */
  readonly trainId: Float64Array;
  readonly pulseId: Float64Array;
  readonly frameLit: Uint8Array;
  readonly score: Float32Array;
  /** Per train, in train order: its frames and lit frames (hits). */
  perTrain: { trainId: number[]; frames: number[]; litFrames: number[] };
  /** Frame bounds of blocks of whole trains, bounded in size, for `frameBlocks`. */
  blockBounds(): number[];
  /**
   * The per-frame tables of frames [f0, f1) for consecutive ranges (bounds), read back from the parts'
   * spill files and classified: memory bounded by the range (the REDU writer uses blockBounds()). A block's
   * typed tables are reused for the next block of the same call: copy what must outlive the iteration.
   */
  frameBlocks(bounds: number[]): Generator<{ f0: number; f1: number; per: FrameTables }>;
  /** Remove the spill files (after writing); frameBlocks and a first perFrame fail after this. */
  dispose(): void;
  /**
   * What stays in memory (bytes): per frame (none until trainId, pulseId, frameLit or score are asked for),
   * per train and block (perTrain, the block bounds), fixed-size accumulators, the largest block.
   */
  memory: {
    frameBytes: number;
    trainBytes: number;
    accumulatorBytes: number;
    blockModuleFrames: number;
    spillFiles: string[];
  };
  /** Per frame (sorted by trainId, pulseId): all frames at once, materialised on first access (tests, small runs). */
  readonly perFrame: {
    trainId: Float64Array;
    pulseId: Float64Array;
    frameLit: Uint8Array;
    /** frames x modules x ASICs */
    litPixels: Uint32Array;
    litIntensity: Float32Array;
    unmaskedPixels: Uint32Array;
    filteredLit: Uint32Array;
    asicLit: Uint8Array;
    /** Lit fraction of the frame (adaptive classifier score). */
    score: Float32Array;
    nPeaks: Uint32Array;
    /** The brightest maxPeaks peaks of each frame over all modules. */
    peaks: FramePeak[][];
  };
  nAsics: number;
  geometry: Geometry;
  /** The detector layout of the peak positions: a .geom path, or `default AGIPD-1M` etc. */
  layout: string;
  /** The beam annotation (LITFRM) when the run has a bunch pattern and --lit-from is not images. */
  beam?: BeamLookup;
  /** Frames with signal in the images but no X-ray pulse (kept, never dropped): the first
   * MAX_LISTED_ANOMALIES (merge.ts) in frame order, and how many there are. */
  anomalies: { trainId: number; pulseId: number }[];
  anomalyCount: number;
}

export interface Progress {
  (done: number, total: number): void;
}

/** What one part (a module group) of localise hands to finalize: stages 1-4 of its modules. */
export interface LocalisePart {
  modules: number[];
  files: string[][];
  /** The part's frames (aligned over its modules): how many. */
  frames: number;
  /**
   * Id spill file of the frames (src/framework/spill.ts `IdWriter`: trainId, pulseId as float64), sorted by
   * trainId then pulseId, in the order of the records in `spill`.
   */
  ids: string;
  /** Per module of the part: frames it recorded. */
  recorded: number[];
  /**
   * Spill file (src/framework/spill.ts) of the per-frame records, in the part's frame order (`frameRecord`): per
   * module, the ASIC counters and the module's brightest maxPeaks peaks.
   */
  spill: string;
  hot: Uint8Array[];
  bytesRead: number;
  backend: { name: string; adapter: string };
  notes: string[];
}

/** The per-frame arrays stage 5 reads and writes (see LocaliseResult.perFrame). */
export type FrameTables = LocaliseResult["perFrame"];
