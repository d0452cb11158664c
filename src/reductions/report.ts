/**
 * The report section of `roi`, `azint` and `xpcs`: `DIR/report.html`, one self-contained page (inline SVG,
 * no network) from the command's summary.json: the numbers (frames, bytes in / out, the ratio next to the
 * seed's figures for the experiment class), and one plot -- roi: each region's mean spectrum; azint: the
 * run's mean profile (log scale); xpcs: g2(tau) per q bin.
 *
 * Every number is in an element with `data-key` and an exact `data-value` (as the localise report does).
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** The seed's reduction figures per experiment class (bytes in / bytes out). */
export const SEED_RATIOS: Record<string, string> = {
  roi: "spectroscopy (XES, XAS) ROI integration: ~10^3",
  azint: "powder diffraction, SAXS/WAXS azimuthal integration: 10^2 - 10^3",
  xpcs: "XPCS/XCCA correlation functions: 10^2 - 10^3",
};

function esc(s: unknown): string {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]!));
}

function kv(key: string, value: unknown, text: string): string {
  return `<tr><th>${esc(key)}</th><td data-key="${esc(key)}" data-value="${esc(JSON.stringify(value))}">${
    esc(text)
  }</td></tr>`;
}

const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

/** A line plot of series over x (null / non-finite points skipped; log y when asked). */
export function linePlot(
  series: { name: string; x: number[]; y: (number | null)[] }[],
  opts: { xLabel: string; yLabel: string; logY?: boolean },
): string {
  const W = 720, H = 360, L = 70, R = 160, T = 20, B = 50;
  const ok = (v: number | null): v is number => v !== null && Number.isFinite(v) && (!opts.logY || v > 0);
  const xs = series.flatMap((s) => s.x.filter((_, i) => ok(s.y[i])));
  const ys = series.flatMap((s) => s.y.filter(ok)).map((v) => (opts.logY ? Math.log10(v) : v));
  if (!xs.length) return "<p>(nothing to plot)</p>";
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 === y0) [y0, y1] = [y0 - 1, y1 + 1];
  const px = (x: number) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const py = (y: number) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">`,
    `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#888"/>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const xv = x0 + ((x1 - x0) * i) / 4, yv = y0 + ((y1 - y0) * i) / 4;
    parts.push(
      `<text x="${px(xv).toFixed(1)}" y="${H - B + 16}" font-size="11" text-anchor="middle">${
        xv.toPrecision(3)
      }</text>`,
      `<text x="${L - 6}" y="${(py(yv) + 4).toFixed(1)}" font-size="11" text-anchor="end">${
        (opts.logY ? 10 ** yv : yv).toPrecision(3)
      }</text>`,
    );
  }
  parts.push(
    `<text x="${(L + W - R) / 2}" y="${H - 10}" font-size="12" text-anchor="middle">${
      esc(opts.xLabel)
    }</text>`,
    `<text x="14" y="${(T + H - B) / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 14 ${
      (T + H - B) / 2
    })">${esc(opts.yLabel)}${opts.logY ? " (log)" : ""}</text>`,
  );
  series.slice(0, 40).forEach((s, k) => {
    const pts = s.x.map((x, i) => (ok(s.y[i]) ? [x, opts.logY ? Math.log10(s.y[i]!) : s.y[i]!] : null))
      .filter((p): p is number[] => p !== null)
      .map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`);
    const c = COLOURS[k % COLOURS.length];
    parts.push(`<polyline fill="none" stroke="${c}" stroke-width="1.5" points="${pts.join(" ")}"/>`);
    if (k < 16) {
      parts.push(
        `<text x="${W - R + 8}" y="${T + 14 + 14 * k}" font-size="11" fill="${c}">${esc(s.name)}</text>`,
      );
    }
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/** The page of a reduction's summary.json. */
export function reductionReport(summary: Record<string, any>): string {
  const cmd = String(summary.command);
  const rows = [
    kv("command", cmd, cmd),
    kv("run", summary.run, summary.run),
    kv("detector", summary.detector, summary.detector),
    kv("backend", summary.backend ?? "cpu", summary.backend ?? "cpu"),
    ...(summary.frames !== undefined ? [kv("frames", summary.frames, String(summary.frames))] : []),
    ...(summary.trains !== undefined ? [kv("trains", summary.trains, String(summary.trains))] : []),
    kv("bytesIn", summary.bytesIn, `${(summary.bytesIn / 1e6).toFixed(1)} MB`),
    kv("bytesOut", summary.bytesOut, `${(summary.bytesOut / 1e6).toFixed(3)} MB`),
    kv("ratio", summary.ratio, `${Number(summary.ratio).toFixed(0)} (seed: ${SEED_RATIOS[cmd] ?? "?"})`),
  ];
  let plot = "";
  if (cmd === "azint") {
    const a = summary.azint;
    const x = a.mean.map((_: unknown, k: number) => (a.edges[k] + a.edges[k + 1]) / 2);
    plot = linePlot([{ name: "run mean", x, y: a.mean }], {
      xLabel: a.unit,
      yLabel: "intensity",
      logY: true,
    });
  } else if (cmd === "roi") {
    plot = linePlot(
      summary.roi.map((r: any) => ({
        name: r.name,
        x: r.meanSpectrum.map((_: unknown, c: number) => r.fs0 + c),
        y: r.meanSpectrum,
      })),
      { xLabel: "fs (pixel)", yLabel: "mean spectrum (sum over ss)" },
    );
  } else if (cmd === "xpcs") {
    const xp = summary.xpcs;
    plot = linePlot(
      xp.g2.map((g: (number | null)[], k: number) => ({
        name: `q ${((xp.edges[k] + xp.edges[k + 1]) / 2).toFixed(3)}`,
        x: xp.delays,
        y: g,
      })),
      { xLabel: "delay (frames)", yLabel: "g2" },
    );
  }
  const notes = (summary.notes ?? []).map((n: string) => `<li>${esc(n)}</li>`).join("");
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>xfel-redu ${esc(cmd)}: ${
    esc(path.basename(String(summary.run)))
  }</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{padding:2px 10px;text-align:left}
th{color:#555;font-weight:normal}</style></head><body>
<h1>${esc(cmd)}: ${esc(summary.run)}</h1>
<table>${rows.join("\n")}</table>
${notes ? `<ul>${notes}</ul>` : ""}
<h2>${cmd === "azint" ? "Run mean profile" : cmd === "roi" ? "Mean spectra" : "g2 per q bin"}</h2>
${plot}
</body></html>
`;
}

/** Write DIR/report.html from DIR/summary.json (under a temporary name, then renamed). */
export function writeReductionReport(dir: string, summary?: Record<string, any>): string {
  const s = summary ?? JSON.parse(fs.readFileSync(path.join(dir, "summary.json"), "utf8"));
  const file = path.join(dir, "report.html");
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, reductionReport(s));
  fs.renameSync(tmp, file);
  return file;
}
