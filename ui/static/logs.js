/* Logs by job, rank, level, time range and text (the store's full-text search). */
"use strict";

(() => {
  const d = rw.data;
  const jobBox = document.getElementById("log-job");
  for (const [key, id] of [["rank", "log-rank"], ["level", "log-level"], ["since", "log-since"], ["until", "log-until"], ["q", "log-q"]]) {
    document.getElementById(id).value = d[key] || "";
  }

  async function jobs() {
    const all = await rw.get("/api/jobs").catch(() => []);
    const ids = all.map((j) => j.job_id);
    if (d.job && !ids.includes(d.job)) ids.unshift(d.job);
    jobBox.replaceChildren(...ids.map((j) => rw.el("option", { value: j, selected: j === d.job }, j)));
    return d.job || ids[0];
  }

  async function search(job) {
    const count = document.getElementById("log-count");
    const body = document.querySelector("#logs tbody");
    if (!job) { count.textContent = "no jobs in this store yet"; return; }
    try {
      const rows = await rw.get("/api/logs", { job, rank: d.rank, level: d.level, since: d.since, until: d.until, q: d.q, limit: 1000 });
      count.textContent = rows.length + " records" + (rows.length === 1000 ? " (the latest 1000)" : "");
      body.replaceChildren(...rows.map((r) => rw.logRow(r, true)));
    } catch (err) {
      count.textContent = err.message;
      count.className = "error";
      body.replaceChildren();
    }
  }
  jobs().then(search);
})();
