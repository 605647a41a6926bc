/* Every job, its state and open alerts by severity; refreshed every 2 s. */
"use strict";

(() => {
  const body = document.querySelector("#jobs tbody");
  const order = ["critical", "warning", "info"];

  async function refresh() {
    try {
      const jobs = await rw.get("/api/jobs");
      const rows = jobs.map((j) => {
        const open = order
          .filter((s) => j.open_by_severity[s])
          .map((s) => rw.chip(j.open_by_severity[s] + " " + s, s));
        const state = [rw.chip(j.state)];
        if (j.restarted) state.push(rw.chip("restarted"));
        return rw.el(
          "tr",
          {},
          rw.el("td", {}, rw.el("a", { href: "/jobs/" + encodeURIComponent(j.job_id) }, j.job_id)),
          rw.el("td", {}, ...state),
          rw.el("td", {}, j.ranks + (j.ranks > 1 ? " (" + j.min_rank + "-" + j.max_rank + ")" : "")),
          rw.el("td", {}, j.last_step === null ? "" : j.last_step),
          rw.el("td", { class: "nowrap" }, rw.time(j.last_seen_s)),
          rw.el("td", {}, ...(open.length ? open : ["none"])),
        );
      });
      body.replaceChildren(
        ...(rows.length ? rows : [rw.el("tr", {}, rw.el("td", { colspan: 6, class: "muted" }, "no jobs in this store yet"))]),
      );
    } catch (err) {
      body.replaceChildren(rw.el("tr", {}, rw.el("td", { colspan: 6, class: "error" }, err.message)));
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
