/* A job: its heatmap of one metric, chosen ranks' curves against the band, its alerts; live. */
"use strict";

(() => {
  const job = rw.data.job;
  const metricBox = document.getElementById("metric");
  const statBox = document.getElementById("stat");
  const ranksBox = document.getElementById("ranks");
  const canvas = document.getElementById("heatmap");
  const tip = document.getElementById("heatmap-tip");
  const alertsBody = document.querySelector("#alerts tbody");
  statBox.value = rw.data.stat || "max";
  ranksBox.value = rw.data.ranks || "";
  document.getElementById("job-logs").href = "/logs?job=" + encodeURIComponent(job);

  const state = { heat: null, hit: null, alerts: new Map(), loading: false, again: false, first: true };

  function chosenRanks() {
    return ranksBox.value.split(",").map((s) => s.trim()).filter((s) => /^\d+$/.test(s));
  }

  function remember() {
    const url = new URL(location.href);
    url.searchParams.set("metric", metricBox.value);
    url.searchParams.set("stat", statBox.value);
    if (ranksBox.value) url.searchParams.set("ranks", ranksBox.value); else url.searchParams.delete("ranks");
    history.replaceState(null, "", url);
  }

  function alertList() {
    return [...state.alerts.values()].sort((a, b) => a.first_seen_s - b.first_seen_s);
  }

  async function load() {
    // One load at a time; a change meanwhile loads once more after it.
    if (state.loading) { state.again = true; return; }
    state.loading = true;
    try {
      if (state.first) performance.mark("heatmap-start");
      const params = { metric: metricBox.value, stat: statBox.value, columns: 200 };
      const heat = await rw.get("/api/jobs/" + encodeURIComponent(job) + "/heatmap", params);
      state.heat = heat;
      document.getElementById("heatmap-title").textContent = heat.metric + ", " + heat.stat;
      state.hit = heatmap.draw(canvas, heat, alertList());
      heatmap.legend(document.getElementById("heatmap-legend"), heat);
      const marked = document.getElementById("heatmap-marked");
      if (heat.marked !== null) {
        const d = heat.deviation[heat.ranks.indexOf(heat.marked)];
        marked.textContent = "rank " + heat.marked + " deviates most from the job (" +
          rw.num(d) + "x the p10-p90 spread from the median, on average)";
        canvas.dataset.marked = heat.marked;
      } else {
        marked.textContent = heat.ranks.length ? "too few ranks to compare" : "no steps of this metric yet";
        delete canvas.dataset.marked;
      }
      if (state.first) {
        performance.mark("heatmap-drawn");
        performance.measure("heatmap", "heatmap-start", "heatmap-drawn");
        performance.measure("heatmap-from-navigation", undefined, "heatmap-drawn");
        state.first = false;
      }
      document.body.dataset.heatmapDrawn = String(Number(document.body.dataset.heatmapDrawn || 0) + 1);
      await drawCurves();
    } catch (err) {
      document.getElementById("heatmap-marked").textContent = "could not load the heatmap: " + err.message;
    } finally {
      state.loading = false;
      if (state.again) { state.again = false; load(); }
    }
  }

  async function drawCurves() {
    const heat = state.heat;
    if (!heat) return;
    const ranks = chosenRanks();
    let series = {};
    if (ranks.length) {
      const curves = await rw.get("/api/jobs/" + encodeURIComponent(job) + "/curves", {
        metric: heat.metric, stat: heat.stat, columns: heat.step_edges.length - 1, ranks: ranks.join(","),
      });
      series = rw.align(heat, curves);
    }
    rw.curves(document.getElementById("curves"), heat, series, alertList(), openAlert);
  }

  function openAlert(a) {
    location.href = "/alerts/" + encodeURIComponent(a.alert_id);
  }

  function addRank(rank) {
    const ranks = chosenRanks();
    if (!ranks.includes(String(rank))) ranks.push(String(rank));
    ranksBox.value = ranks.join(",");
    remember();
    drawCurves();
  }

  function showRank(cell) {
    const panel = document.getElementById("rank-panel");
    panel.hidden = false;
    panel.replaceChildren(
      "rank " + cell.rank + ", steps " + cell.from + "-" + cell.to + ": " + rw.num(cell.value) + "  ",
      rw.el("a", { href: "/logs?job=" + encodeURIComponent(job) + "&rank=" + cell.rank }, "its logs"),
    );
  }

  function renderAlerts() {
    const rows = alertList().map((a) =>
      rw.el(
        "tr",
        { class: "clickable sev-" + a.severity, "data-alert": a.alert_id },
        rw.el("td", { class: "nowrap" }, rw.time(a.first_seen_s)),
        rw.el("td", {}, rw.chip(a.severity)),
        rw.el("td", {}, rw.chip(a.status)),
        rw.el("td", {}, a.rule),
        rw.el("td", {}, a.ranks.join(",")),
        rw.el("td", {}, a.step === null ? "" : a.step),
        rw.el("td", {}, rw.el("a", { href: "/alerts/" + encodeURIComponent(a.alert_id) }, a.summary)),
      ),
    );
    alertsBody.replaceChildren(...(rows.length ? rows : [rw.el("tr", {}, rw.el("td", { colspan: 7, class: "muted" }, "no alerts"))]));
  }

  function addAlert(a) {
    // One row per incident: a resolution replaces its firing row.
    const known = state.alerts.get(a.alert_id);
    if (!known || a.status === "resolved" || known.status !== "resolved") state.alerts.set(a.alert_id, a);
    renderAlerts();
  }

  canvas.addEventListener("mousemove", (event) => {
    const cell = state.hit && state.hit.at(event.offsetX, event.offsetY);
    if (!cell) { tip.hidden = true; canvas.style.cursor = "default"; return; }
    canvas.style.cursor = "pointer";
    tip.hidden = false;
    tip.textContent = cell.alert
      ? cell.alert.rule + " (" + cell.alert.severity + "): " + cell.alert.summary
      : "rank " + cell.rank + ", steps " + cell.from + "-" + cell.to + ": " + rw.num(cell.value);
    tip.style.left = event.offsetX + 12 + "px";
    tip.style.top = event.offsetY + 12 + "px";
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (event) => {
    const cell = state.hit && state.hit.at(event.offsetX, event.offsetY);
    if (!cell) return;
    if (cell.alert) { openAlert(cell.alert); return; }
    showRank(cell);
    addRank(cell.rank);
  });
  metricBox.addEventListener("change", () => { remember(); load(); });
  statBox.addEventListener("change", () => { remember(); load(); });
  ranksBox.addEventListener("change", () => { remember(); drawCurves(); });
  document.getElementById("controls").addEventListener("submit", (e) => e.preventDefault());

  // Live: a moved job redraws (at most every 1.5 s); an alert joins the list and the marks.
  let redraw = null;
  function soon() {
    if (redraw) return;
    redraw = setTimeout(() => { redraw = null; load(); }, 500);
  }
  let lastRedraw = 0;
  rw.live(job, {
    progress(p) {
      document.getElementById("job-state").textContent = p.state;
      document.getElementById("job-state").className = "chip " + p.state;
      document.getElementById("job-summary").textContent =
        p.ranks + " ranks, last step " + (p.last_step === null ? "-" : p.last_step) +
        ", last event " + rw.time(p.last_seen_s) + " UTC, " + p.open_alerts + " open alerts";
      if (Date.now() - lastRedraw > 1500 && !state.first) { lastRedraw = Date.now(); soon(); }
    },
    alert(a) {
      addAlert(a);
      if (!state.first) soon();
    },
  });

  rw.get("/api/jobs/" + encodeURIComponent(job) + "/alerts")
    .then((alerts) => { alerts.forEach(addAlert); })
    .catch(() => {})
    .finally(load);
})();
