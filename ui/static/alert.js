/* An alert: summary, evidence (numbers and log lines), the culprit's curve against its peers'
   band, and its rank's logs around it. */
"use strict";

(() => {
  const id = rw.data.alert;
  const AROUND_S = 300;

  function isLine(key, value) {
    return typeof value === "string" && (value.includes("\n") || value.length > 60 || /line|log|words|traceback|message/.test(key));
  }

  function evidence(ev) {
    const numbers = document.getElementById("evidence-numbers");
    const lines = document.getElementById("evidence-lines");
    const facts = [];
    const texts = [];
    for (const [key, value] of Object.entries(ev || {})) {
      if (isLine(key, value)) texts.push([key, value]);
      else if (Array.isArray(value) && value.every((v) => typeof v === "string")) texts.push([key, value.join("\n")]);
      else if (value !== null && typeof value === "object")
        facts.push([key, rw.el("code", { class: "json" }, JSON.stringify(value))]);
      else facts.push([key, rw.num(value)]);
    }
    numbers.replaceChildren(...facts.map(([k, v]) => rw.el("tr", {}, rw.el("th", {}, k), rw.el("td", {}, v))));
    lines.replaceChildren(...texts.map(([k, v]) => rw.el("div", { class: "evidence-line" }, rw.el("h3", {}, k), rw.el("pre", {}, v))));
  }

  async function curve(a) {
    const target = document.getElementById("alert-curve");
    document.getElementById("alert-metric").textContent = "(" + a.metric + ")";
    try {
      const heat = await rw.get("/api/jobs/" + encodeURIComponent(a.job_id) + "/heatmap", { metric: a.metric, columns: 200 });
      const ranks = a.ranks.slice(0, 8);
      let series = {};
      if (ranks.length) {
        const curves = await rw.get("/api/jobs/" + encodeURIComponent(a.job_id) + "/curves", {
          metric: a.metric, columns: heat.step_edges.length - 1, ranks: ranks.join(","),
        });
        series = rw.align(heat, curves);
      }
      rw.curves(target, heat, series, [a]);
      document.body.dataset.curveDrawn = "1";
    } catch (err) {
      target.replaceChildren(rw.el("p", { class: "error" }, "no curve: " + err.message));
    }
  }

  async function logs(a) {
    const body = document.querySelector("#alert-logs tbody");
    const rank = a.ranks.length ? a.ranks[0] : "";
    const params = { job: a.job_id, rank, since: a.first_seen_s - AROUND_S, until: (a.resolved_s || a.last_seen_s) + AROUND_S, limit: 200 };
    document.getElementById("alert-more-logs").href = "/logs?" + new URLSearchParams({ job: a.job_id, rank });
    try {
      const rows = await rw.get("/api/logs", params);
      body.replaceChildren(...(rows.length ? rows.map((r) => rw.logRow(r, false)) : [rw.el("tr", {}, rw.el("td", { class: "muted" }, "no log records around it"))]));
    } catch (err) {
      body.replaceChildren(rw.el("tr", {}, rw.el("td", { class: "error" }, err.message)));
    }
  }

  async function main() {
    let a;
    try {
      a = await rw.get("/api/alerts/" + encodeURIComponent(id));
    } catch (err) {
      document.getElementById("alert-summary").textContent = err.message;
      return;
    }
    document.title = a.rule + " · " + a.job_id + " · rankwatch";
    document.getElementById("alert-rule").textContent = a.rule;
    const sev = document.getElementById("alert-severity");
    sev.textContent = a.severity; sev.className = "chip " + a.severity;
    const status = document.getElementById("alert-status");
    const st = a.resolved_s ? "resolved" : a.status;
    status.textContent = st; status.className = "chip " + st;
    document.getElementById("alert-summary").textContent = a.summary;
    const jobLink = rw.el("a", { href: "/jobs/" + encodeURIComponent(a.job_id) + "?metric=" + a.metric + "&ranks=" + a.ranks.slice(0, 8).join(",") }, a.job_id);
    const facts = [
      ["job", jobLink], ["ranks", a.ranks.join(", ") || "the whole job"], ["step", a.step === null ? "" : a.step],
      ["scope", a.scope], ["action", a.action], ["first seen", rw.time(a.first_seen_s) + " UTC"],
      ["last seen", rw.time(a.last_seen_s) + " UTC"], ["resolved", a.resolved_s ? rw.time(a.resolved_s) + " UTC" : "no"],
      ["id", a.alert_id],
    ];
    document.getElementById("alert-facts").replaceChildren(...facts.map(([k, v]) => rw.el("tr", {}, rw.el("th", {}, k), rw.el("td", {}, v))));
    evidence(a.evidence);
    await Promise.all([curve(a), logs(a)]);
  }
  main();
})();
