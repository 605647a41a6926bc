/* The rank x step heatmap on a canvas: one pixel row (or more) per rank, so one bad rank among
   thousands stays visible; colours scaled to the metric's own range; the most deviant row
   outlined and named; alerts as marks above the columns of their steps. */
"use strict";

const heatmap = (() => {
  // Viridis-like stops: dark (low) to bright (high), readable in print and by most colour-blind eyes.
  const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const LUT = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (STOPS.length - 1);
    const k = Math.min(Math.floor(t), STOPS.length - 2);
    const f = t - k;
    for (let c = 0; c < 3; c++) LUT[i * 3 + c] = STOPS[k][c] + (STOPS[k + 1][c] - STOPS[k][c]) * f;
  }
  const GUTTER = 64; // rank labels on the left
  const TOP = 14; // alert marks above

  function rowHeight(ranks) {
    return Math.max(1, Math.min(12, Math.floor(640 / Math.max(ranks, 1))));
  }

  /** Draw `heat` (the /api/jobs/J/heatmap answer) on `canvas`; returns hit-testing helpers. */
  function draw(canvas, heat, alerts) {
    const rows = heat.ranks.length;
    const cols = heat.step_edges.length - 1;
    const rh = rowHeight(rows);
    const width = Math.max(300, (canvas.parentElement.clientWidth || 900) - 4);
    const plotW = width - GUTTER;
    const height = TOP + rows * rh;
    canvas.width = width;
    canvas.height = height;
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);

    // Cells first at one pixel each, then scaled up without smoothing: fast for 1,024 x 200.
    const image = new ImageData(Math.max(cols, 1), Math.max(rows, 1));
    const lo = heat.min, hi = heat.max;
    const span = hi !== null && lo !== null && hi > lo ? hi - lo : 1;
    for (let r = 0; r < rows; r++) {
      const row = heat.values[r];
      for (let c = 0; c < cols; c++) {
        const v = row[c];
        const p = (r * cols + c) * 4;
        if (v === null) { image.data[p] = image.data[p + 1] = image.data[p + 2] = 235; }
        else if (typeof v === "string") { image.data[p] = 255; image.data[p + 1] = 0; image.data[p + 2] = 255; }
        else {
          const i = Math.max(0, Math.min(255, Math.round(((v - lo) / span) * 255))) * 3;
          image.data[p] = LUT[i]; image.data[p + 1] = LUT[i + 1]; image.data[p + 2] = LUT[i + 2];
        }
        image.data[p + 3] = 255;
      }
    }
    const cells = document.createElement("canvas");
    cells.width = image.width;
    cells.height = image.height;
    cells.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(cells, 0, 0, cols, rows, GUTTER, TOP, plotW, rows * rh);

    // Rank labels: about every 40 px.
    ctx.fillStyle = "#333";
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil(40 / rh));
    for (let r = 0; r < rows; r += every) ctx.fillText(String(heat.ranks[r]), 4, TOP + r * rh + rh / 2);

    // The most deviant row: outlined across, named in the gutter.
    const marked = heat.marked === null ? -1 : heat.ranks.indexOf(heat.marked);
    if (marked >= 0) {
      const y = TOP + marked * rh;
      ctx.strokeStyle = "#e4002b";
      ctx.lineWidth = 2;
      ctx.strokeRect(GUTTER - 1, y - 2, plotW + 1, rh + 3);
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, y + rh / 2 - 8, GUTTER - 4, 16);
      ctx.fillStyle = "#e4002b";
      ctx.font = "bold 11px sans-serif";
      ctx.fillText("▶ " + heat.marked, 4, y + rh / 2);
    }

    // Alerts above the column of their step.
    const first = heat.step_edges[0], last = heat.step_edges[cols];
    const xOf = (step) => GUTTER + ((step - first) / Math.max(last - first, 1)) * plotW;
    const marks = [];
    for (const a of alerts || []) {
      if (a.step === null || a.status !== "firing" || a.step < first || a.step > last) continue;
      const x = xOf(a.step);
      ctx.fillStyle = a.severity === "critical" ? "#b00020" : a.severity === "warning" ? "#e07000" : "#3366cc";
      ctx.beginPath();
      ctx.moveTo(x - 5, 1); ctx.lineTo(x + 5, 1); ctx.lineTo(x, TOP - 2); ctx.closePath();
      ctx.fill();
      marks.push({ x, alert: a });
    }

    return {
      /** What is under canvas point (x, y): an alert mark, or a cell (rank, steps, value). */
      at(x, y) {
        if (y < TOP) {
          const near = marks.filter((m) => Math.abs(m.x - x) <= 6);
          return near.length ? { alert: near[0].alert } : null;
        }
        if (x < GUTTER) return null;
        const r = Math.floor((y - TOP) / rh);
        const c = Math.floor(((x - GUTTER) / plotW) * cols);
        if (r < 0 || r >= rows || c < 0 || c >= cols) return null;
        return {
          rank: heat.ranks[r],
          from: heat.step_edges[c],
          to: heat.step_edges[c + 1] - 1,
          value: heat.values[r][c],
        };
      },
    };
  }

  /** A legend: the colour ramp with the metric's range. */
  function legend(target, heat) {
    const ramp = document.createElement("canvas");
    ramp.width = 160; ramp.height = 10;
    const ctx = ramp.getContext("2d");
    for (let i = 0; i < 160; i++) {
      const k = Math.round((i / 159) * 255) * 3;
      ctx.fillStyle = "rgb(" + LUT[k] + "," + LUT[k + 1] + "," + LUT[k + 2] + ")";
      ctx.fillRect(i, 0, 1, 10);
    }
    target.replaceChildren(rw.num(heat.min) + " ", ramp, " " + rw.num(heat.max) + " " + heat.metric +
      " (" + heat.stat + " per block of steps); grey: no data; magenta: NaN/inf");
  }

  return { draw, legend, GUTTER, TOP };
})();
