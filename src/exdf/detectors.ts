/**
 * Detector geometry, in the field's words: a detector has modules; a module image is ss x fs pixels
 * (slow scan x fast scan) tiled by ASICs.
 *
 * ASIC numbering (used by every per-ASIC output): row-major over the ASIC grid of the module,
 * asic = floor(ss / asicSs) * asicCols + floor(fs / asicFs).
 *
 * | type     | module (ss x fs) | ASIC (ss x fs) | grid (rows x cols) | modules | max frames/train |
 * | AGIPD    | 512 x 128        | 64 x 64        | 8 x 2              | 16 (1M), 8 (500K) | 352 |
 * | LPD      | 256 x 256        | 32 x 128       | 8 x 2              | 16     | 512 |
 * | DSSC     | 128 x 512        | 64 x 64        | 2 x 8              | 16     | 800 |
 * | JUNGFRAU | 512 x 1024       | 256 x 256      | 2 x 4              | 1..32  | 16 memory cells |
 */
/** A box of module pixels [ss0, fs0, ss1, fs1): rows ss0..ss1-1, columns fs0..fs1-1. */
export type Box = [number, number, number, number];

export type DetectorType = "AGIPD" | "LPD" | "DSSC" | "JUNGFRAU";

export interface Geometry {
  type: DetectorType;
  moduleSs: number;
  moduleFs: number;
  asicSs: number;
  asicFs: number;
  asicRows: number;
  asicCols: number;
  nAsics: number;
  /** Pixels per module image. */
  pixels: number;
}

const SHAPES: Record<DetectorType, [number, number, number, number]> = {
  AGIPD: [512, 128, 64, 64],
  LPD: [256, 256, 32, 128],
  DSSC: [128, 512, 64, 64],
  JUNGFRAU: [512, 1024, 256, 256],
};

export const DETECTOR_TYPES = Object.keys(SHAPES) as DetectorType[];

export function geometry(type: DetectorType): Geometry {
  const [moduleSs, moduleFs, asicSs, asicFs] = SHAPES[type];
  const asicRows = moduleSs / asicSs;
  const asicCols = moduleFs / asicFs;
  return {
    type,
    moduleSs,
    moduleFs,
    asicSs,
    asicFs,
    asicRows,
    asicCols,
    nAsics: asicRows * asicCols,
    pixels: moduleSs * moduleFs,
  };
}

/** ASIC index of a pixel. */
export function asicOf(g: Geometry, ss: number, fs: number): number {
  return Math.floor(ss / g.asicSs) * g.asicCols + Math.floor(fs / g.asicFs);
}

/** The detector type a detector/source name implies, if any. */
export function typeFromName(name: string): DetectorType | undefined {
  const n = name.toUpperCase();
  if (n.includes("AGIPD")) return "AGIPD";
  if (n.includes("LPD")) return "LPD";
  if (n.includes("DSSC")) return "DSSC";
  if (n.includes("JNGFR") || n.includes("JUNGF")) return "JUNGFRAU";
  return undefined;
}

/** The detector type a module image shape implies (ss, fs), if it is unambiguous. */
export function typeFromShape(ss: number, fs: number): DetectorType | undefined {
  for (const t of DETECTOR_TYPES) {
    const [s, f] = SHAPES[t];
    if (s === ss && f === fs) return t;
  }
  return undefined;
}
