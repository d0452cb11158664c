/**
 * `inspect RUN`: what a user needs to decide what to do with a run: trains (count, ID range), sources with
 * their keys, shapes and dtypes, and per detector: type, modules, frames per train (min/median/max), image
 * shape and dtype, RAW or CORR, files per module.
 */
import type { Run } from "./run.ts";

export interface DetectorSummary {
  name: string;
  type: string;
  raw: boolean;
  modules: number[];
  frames: number;
  framesPerTrain: { min: number; median: number; max: number };
  imageShape: [number, number];
  dtype: string;
  filesPerModule: Record<string, string[]>;
}

export interface RunSummary {
  run: string;
  files: number;
  formats: string[];
  trains: number;
  firstTrain: number | null;
  lastTrain: number | null;
  detectors: DetectorSummary[];
  /** Inconsistent INDEX, mixed runs (Run.warnings), one line each naming the file. */
  warnings: string[];
  sources: {
    name: string;
    kind: string;
    files: number;
    keys: { key: string; shape: number[]; dtype: string }[];
  }[];
}

function median(sorted: number[]): number {
  if (sorted.length === 0) return 0;
  const m = sorted.length >> 1;
  return sorted.length % 2 ? sorted[m] : (sorted[m - 1] + sorted[m]) / 2;
}

export function summarise(run: Run): RunSummary {
  const detectors = run.detectors.map((d): DetectorSummary => {
    // Frames per train of each module, over the trains where the module recorded data.
    const perTrain: number[] = [];
    for (const m of d.modules) {
      const counts = new Map<number, number>();
      for (const mf of m.files) {
        mf.file.trainIds.forEach((t, i) => {
          const c = mf.index.count[i] * d.cellsPerEntry;
          if (c > 0) counts.set(t, (counts.get(t) ?? 0) + c);
        });
      }
      perTrain.push(...counts.values());
    }
    perTrain.sort((a, b) => a - b);
    return {
      name: d.name,
      type: d.type,
      raw: d.raw,
      modules: d.modules.map((m) => m.module),
      frames: d.modules.reduce((a, m) => a + m.frames, 0),
      framesPerTrain: {
        min: perTrain[0] ?? 0,
        median: median(perTrain),
        max: perTrain[perTrain.length - 1] ?? 0,
      },
      imageShape: d.imageShape,
      dtype: d.dtype,
      filesPerModule: Object.fromEntries(
        d.modules.map((m) => [String(m.module), m.files.map((f) => f.file.name)]),
      ),
    };
  });
  return {
    run: run.path,
    files: run.files.length,
    formats: [...new Set(run.files.map((f) => f.format))].sort(),
    trains: run.trainIds.length,
    firstTrain: run.trainIds[0] ?? null,
    lastTrain: run.trainIds[run.trainIds.length - 1] ?? null,
    detectors,
    warnings: run.warnings(),
    sources: run.sources().map((s) => ({
      name: s.name,
      kind: s.kind,
      files: s.files,
      keys: [...s.keys].map(([key, k]) => ({ key, shape: k.entryShape, dtype: k.dtype })),
    })),
  };
}

/** The human-readable form of the summary. */
export function formatSummary(s: RunSummary): string {
  const lines: string[] = [];
  lines.push(`run ${s.run}: ${s.files} files (format ${s.formats.join(", ")})`);
  lines.push(`trains: ${s.trains}` + (s.trains ? ` (${s.firstTrain} .. ${s.lastTrain})` : ""));
  for (const d of s.detectors) {
    const f = d.framesPerTrain;
    lines.push("");
    lines.push(
      `detector ${d.name}: ${d.type} ${d.raw ? "RAW" : "CORR"}, ${d.modules.length} modules [${
        d.modules.join(", ")
      }]`,
    );
    lines.push(`  image ${d.imageShape.join(" x ")} ${d.dtype}, ${d.frames} module frames`);
    lines.push(`  frames per train: min ${f.min}, median ${f.median}, max ${f.max}`);
    const files = Object.values(d.filesPerModule).map((v) => v.length);
    lines.push(`  files per module: ${Math.min(...files)}..${Math.max(...files)}`);
  }
  lines.push("");
  lines.push(`sources (${s.sources.length}):`);
  for (const src of s.sources) {
    lines.push(`  ${src.kind === "CONTROL" ? "control   " : "instrument"} ${src.name}`);
    for (const k of src.keys) {
      lines.push(`      ${k.key}  ${k.dtype}${k.shape.length ? ` (${k.shape.join(", ")})` : ""}`);
    }
  }
  return lines.join("\n");
}
