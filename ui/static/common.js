/* rankwatch dashboard: helpers shared by every page (no framework, no build step). */
"use strict";

const rw = {
  data: document.body.dataset,

  /** GET a JSON API path; throws an Error carrying the API's message. */
  async get(path, params) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    }
    const response = await fetch(url, { credentials: "same-origin" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
    return body;
  },

  /** An element with text (never markup) and attributes. */
  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  },

  time(seconds) {
    if (seconds === null || seconds === undefined) return "";
    return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
  },

  num(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "string") return v;
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : String(+v.toPrecision(5));
  },

  chip(text, kind) {
    return rw.el("span", { class: "chip " + (kind || text) }, text);
  },

  /** A log message: one line as text, several (a traceback) folded whole in <details>. */
  message(text) {
    const lines = String(text).split("\n");
    if (lines.length === 1) return rw.el("span", { class: "msg" }, text);
    const last = lines.filter((l) => l.trim()).slice(-1)[0] || "";
    const summary = lines[0] === last ? last : lines[0] + "  …  " + last;
    return rw.el(
      "details",
      { class: "folded" },
      rw.el("summary", {}, summary + "  (" + lines.length + " lines)"),
      rw.el("pre", {}, text),
    );
  },

  logRow(row, showRank) {
    return rw.el(
      "tr",
      { class: "level-" + row.level },
      rw.el("td", { class: "nowrap" }, rw.time(row.time_s)),
      showRank ? rw.el("td", {}, row.rank) : null,
      rw.el("td", {}, row.level),
      rw.el("td", {}, row.step === null ? "" : row.step),
      rw.el("td", {}, rw.message(row.message)),
    );
  },

  /** Server-sent events from /api/live; shows the connection state in the header. */
  live(job, handlers) {
    const badge = document.getElementById("live");
    const source = new EventSource("/api/live?job=" + encodeURIComponent(job));
    source.onopen = () => { badge.textContent = "live"; badge.className = "live on"; };
    source.onerror = () => { badge.textContent = "reconnecting"; badge.className = "live off"; };
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => fn(JSON.parse(event.data)));
    }
    return source;
  },

  /** Column x positions (a block's first step) from a heatmap's edges. */
  xs(edges) {
    return edges.slice(0, -1);
  },

  /** Draw curves with uPlot: the job's band (p10-p90), its median, chosen ranks, alert lines. */
  curves(target, heat, series, alerts, onAlert) {
    const x = rw.xs(heat.step_edges);
    const num = (v) => (typeof v === "number" ? v : null);
    const data = [x, heat.p10.map(num), heat.p90.map(num), heat.median.map(num)];
    const specs = [
      {},
      { label: "p10", stroke: "rgba(90,120,170,0.5)", width: 1 },
      { label: "p90", stroke: "rgba(90,120,170,0.5)", width: 1 },
      { label: "job median", stroke: "#5a6f8f", width: 2, dash: [6, 4] },
    ];
    const palette = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
    Object.entries(series).forEach(([rank, values], i) => {
      data.push(values.map(num));
      specs.push({ label: "rank " + rank, stroke: palette[i % palette.length], width: 2 });
    });
    const alertSteps = (alerts || []).filter((a) => a.step !== null && a.status === "firing");
    const markers = {
      hooks: {
        draw: [
          (u) => {
            const ctx = u.ctx;
            ctx.save();
            ctx.strokeStyle = "rgba(214,39,40,0.8)";
            ctx.fillStyle = "rgba(214,39,40,0.9)";
            ctx.lineWidth = 1.5 * devicePixelRatio;
            for (const a of alertSteps) {
              const px = u.valToPos(a.step, "x", true);
              if (px < u.bbox.left || px > u.bbox.left + u.bbox.width) continue;
              ctx.beginPath();
              ctx.moveTo(px, u.bbox.top);
              ctx.lineTo(px, u.bbox.top + u.bbox.height);
              ctx.stroke();
              ctx.font = 11 * devicePixelRatio + "px sans-serif";
              ctx.fillText(a.rule, px + 3, u.bbox.top + 12 * devicePixelRatio);
            }
            ctx.restore();
          },
        ],
      },
    };
    target.replaceChildren();
    const width = Math.max(400, target.clientWidth || 900);
    const plot = new uPlot(
      {
        width,
        height: 300,
        scales: { x: { time: false } },
        axes: [{ label: "step" }, { label: heat.metric, size: 70 }],
        series: specs,
        bands: [{ series: [2, 1], fill: "rgba(90,120,170,0.18)" }],
        plugins: [markers],
        cursor: { drag: { x: true, y: false } },
      },
      data,
      target,
    );
    if (onAlert) {
      plot.over.addEventListener("click", () => {
        const step = plot.posToVal(plot.cursor.left, "x");
        const span = (x[x.length - 1] - x[0]) / 100 || 1;
        const hit = alertSteps.find((a) => Math.abs(a.step - step) <= span);
        if (hit) onAlert(hit);
      });
    }
    return plot;
  },

  /** Heatmap curves of chosen ranks, aligned on the heatmap's columns. */
  align(heat, curves) {
    const index = new Map(rw.xs(heat.step_edges).map((s, i) => [s, i]));
    const out = {};
    const cx = rw.xs(curves.step_edges);
    for (const [rank, values] of Object.entries(curves.series)) {
      const row = new Array(index.size).fill(null);
      values.forEach((v, i) => { const at = index.get(cx[i]); if (at !== undefined) row[at] = v; });
      out[rank] = row;
    }
    return out;
  },
};
