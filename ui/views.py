"""What the dashboard shows, computed from the store: plain JSON-ready dicts, no HTTP here.

Each function takes the store first (it runs on a :class:`~rankwatch.ui.reader.StoreReader`
thread). The heatmap's statistics across ranks (the job's median, its p10-p90 band, and how far
each rank's row sits from them) are computed here from the store's rollup heatmap, so a
1,024-rank job costs a few thousand cells, never its raw rows.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from rankwatch.schemas import Alert
from rankwatch.sinks.storage import METRICS, LogQuery, SqlStore

#: The step metric that shows an alert's rule best (else the evidence's ``series``/``metric``).
RULE_METRIC: dict[str, str] = {
    "memory_growth": "gpu_memory_allocated_mb",
    "cuda_oom": "gpu_memory_allocated_mb",
    "straggler": "compute_time_s",
    "loss_explosion": "loss",
    "loss_divergence": "loss",
    "gradient_explosion": "gradient_norm",
    "gradient_vanishing": "gradient_norm",
    "gradient_desync": "gradient_norm",
    "throughput_drop": "throughput_tokens_per_sec",
    "input_bound": "data_time_s",
    "gpu_utilization": "step_time_s",
    "lr_schedule": "learning_rate",
    "loss_scale_collapse": "loss",
}
_INF = float("inf")
#: How many alerts the jobs page and an alert lookup read at most (alerts are rare: incidents).
ALERT_SCAN = 50_000


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ascending values, linearly interpolated.

    >>> quantile([1.0, 2.0, 3.0, 4.0], 0.5), quantile([5.0], 0.9), quantile([0.0, 10.0], 0.1)
    (2.5, 5.0, 1.0)
    """
    pos = (len(sorted_values) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def band_and_deviation(
    ranks: Sequence[int], values: Sequence[Sequence[float | None]]
) -> dict[str, Any]:
    """Per column the job's median, p10 and p90 across ranks; per rank how far its row sits from
    the median in units of the p10-p90 spread (mean over its columns); and the rank that
    deviates most (``None`` for fewer than 3 ranks: no majority to deviate from).

    >>> out = band_and_deviation([0, 1, 2, 3], [[1.0, 1.0], [1.1, 1.0], [0.9, 1.1], [5.0, 9.0]])
    >>> out["median"], out["marked"]
    ([1.05, 1.05], 3)
    """
    if not values:
        return {"median": [], "p10": [], "p90": [], "deviation": [], "marked": None}
    # numpy: a 1,024 x 200 heatmap is 200k cells, a second of Python and a millisecond here.
    grid = np.array(values, dtype=float)  # None -> NaN
    present = ~np.isnan(grid)
    for r in np.flatnonzero(~present.all(axis=1)).tolist():  # rows with a gap or a real NaN
        present[r] = [v is not None for v in values[r]]
    finite = np.where(np.isfinite(grid), grid, np.nan)  # the band is of finite values only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no band
        lo, mid, hi = np.nanquantile(finite, [0.1, 0.5, 0.9], axis=0)
    unit = np.maximum(np.maximum(hi - lo, np.abs(mid) * 1e-3), 1e-12)
    # A column where every rank agrees still needs a unit: a small share of its level.
    counted = present & ~np.isnan(mid)[None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(grid - mid[None, :]) / unit[None, :]
    # NaN or infinity: as far from its peers as a value can be.
    d = np.where(np.isfinite(d), d, 100.0)
    total = np.where(counted, d, 0.0).sum(axis=1)
    n = counted.sum(axis=1)

    def col(a: Any) -> list[float | None]:
        return [None if math.isnan(x) else float(x) for x in a.tolist()]

    median, p10, p90 = col(mid), col(lo), col(hi)
    deviation = [
        round(t / k, 3) if k else None for t, k in zip(total.tolist(), n.tolist(), strict=True)
    ]
    scored = [(d, r) for d, r in zip(deviation, ranks, strict=True) if d is not None]
    marked = max(scored)[1] if len(scored) >= 3 else None
    return {"median": median, "p10": p10, "p90": p90, "deviation": deviation, "marked": marked}


def heatmap_view(
    store: SqlStore,
    job_id: str,
    metric: str,
    stat: str = "max",
    columns: int = 200,
    step_from: int | None = None,
    step_to: int | None = None,
) -> dict[str, Any]:
    """The rank x step heatmap of one metric, with the band and the most deviant rank."""
    hm = store.heatmap(
        job_id, metric, stat=stat, columns=columns, step_from=step_from, step_to=step_to
    )
    # Rollups hold finite values only (the store leaves NaN and infinities out of them), so the
    # rows go out as they are: 200k cells, no Python call per cell.
    grid = np.array(hm.values, dtype=float) if hm.values else np.zeros((0, 0))
    finite = grid[np.isfinite(grid)]
    return {
        "job_id": hm.job_id,
        "metric": hm.metric,
        "stat": hm.stat,
        "ranks": hm.ranks,
        "step_edges": hm.step_edges,
        "values": hm.values,
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        **band_and_deviation(hm.ranks, hm.values),
    }


def curves_view(
    store: SqlStore,
    job_id: str,
    metric: str,
    ranks: Sequence[int],
    stat: str = "max",
    columns: int = 200,
    step_from: int | None = None,
    step_to: int | None = None,
) -> dict[str, Any]:
    """The chosen ranks' rows of the heatmap (the store reads only those ranks' rollups)."""
    hm = store.heatmap(
        job_id,
        metric,
        stat=stat,
        columns=columns,
        step_from=step_from,
        step_to=step_to,
        ranks=list(ranks),
    )
    return {
        "metric": hm.metric,
        "stat": hm.stat,
        "step_edges": hm.step_edges,
        "series": {
            str(r): [_json_float(v) for v in row]
            for r, row in zip(hm.ranks, hm.values, strict=True)
        },
    }


def _json_float(v: float | None) -> float | str | None:
    # JSON has no NaN or infinity: say them as strings the page draws as gaps and names.
    if v is None or math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def alert_view(alert: Alert) -> dict[str, Any]:
    """An alert as JSON, times as epoch seconds, with the metric its page draws."""
    data = alert.model_dump(mode="json")
    data["first_seen_s"] = alert.first_seen.timestamp()
    data["last_seen_s"] = alert.last_seen.timestamp()
    data["metric"] = alert_metric(alert)
    return data


def alert_metric(alert: Alert) -> str:
    """The step metric that shows this alert best.

    >>> from rankwatch.schemas import Alert
    >>> a = Alert(alert_id="a", job_id="j", rule="custom", severity="warning", scope="rank",
    ...           first_seen=0, last_seen=0, summary="s", evidence={"series": "loss"})
    >>> alert_metric(a), alert_metric(a.model_copy(update={"evidence": {}}))
    ('loss', 'gpu_memory_allocated_mb')
    """
    for key in ("series", "metric", "field"):
        value = alert.evidence.get(key)
        if isinstance(value, str) and value in METRICS:
            return value
    return RULE_METRIC.get(alert.rule, "gpu_memory_allocated_mb")


def _ready(store: SqlStore) -> bool:
    # A store no sink has created yet reads as empty: the dashboard never creates tables.
    return store.schema_version() > 0


def jobs_view(store: SqlStore) -> list[dict[str, Any]]:
    """Every job with its state, ranks, last step and open alerts by severity."""
    if not _ready(store):
        return []
    alerts = store.alerts(limit=ALERT_SCAN)
    resolved = {a.alert_id for a in alerts if a.status == "resolved"}
    open_by_job: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    restarted: set[str] = set()
    for a in alerts:
        if a.rule == "job_restarted":
            restarted.add(a.job_id)
        if a.status == "firing" and a.alert_id not in resolved:
            open_by_job[a.job_id][a.severity] += 1
    return [
        {
            "job_id": j.job_id,
            "state": j.state,
            "restarted": j.job_id in restarted,
            "ranks": j.ranks,
            "min_rank": j.min_rank,
            "max_rank": j.max_rank,
            "last_step": j.last_step,
            "last_seen_s": j.last_seen.timestamp(),
            "open_alerts": j.open_alerts,
            "open_by_severity": dict(open_by_job.get(j.job_id, {})),
        }
        for j in store.jobs()
    ]


def job_alerts_view(
    store: SqlStore, job_id: str, since: float | None = None
) -> list[dict[str, Any]]:
    """A job's alerts, one per ``(alert_id, status)``, oldest first."""
    if not _ready(store):
        return []
    return [alert_view(a) for a in store.alerts(job_id=job_id, since=since, limit=ALERT_SCAN)]


def find_alert(store: SqlStore, alert_id: str) -> dict[str, Any] | None:
    """One alert by id: its latest status, and whether it resolved (``None``: not stored)."""
    if not _ready(store):
        return None
    # The store has no lookup by id; alerts are incidents, few enough to scan.
    found = [a for a in store.alerts(limit=ALERT_SCAN) if a.alert_id == alert_id]
    if not found:
        return None
    firing = next((a for a in found if a.status == "firing"), found[0])
    view = alert_view(firing)
    resolution = next((a for a in found if a.status == "resolved"), None)
    view["resolved_s"] = resolution.last_seen.timestamp() if resolution else None
    return view


def logs_view(
    store: SqlStore,
    job_id: str,
    *,
    rank: int | None = None,
    level: str | None = None,
    since: float | None = None,
    until: float | None = None,
    text: str | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Log records oldest first: the store's filters and full-text search, then ``until``.

    The store's query has no upper time bound: with ``until`` more records are read and the
    later ones dropped here, so a narrow window far in the past may come back short.
    """
    if not _ready(store):
        return []
    query = LogQuery(
        job_id=job_id,
        rank=rank,
        since=since,
        level=level,
        grep=text or None,
        limit=limit if until is None else max(limit * 10, 5000),
    )
    rows = store.logs(query)
    if until is not None:
        rows = [r for r in rows if r.timestamp.timestamp() <= until][-limit:]
    return [
        {
            "rank": r.rank,
            "time_s": r.timestamp.timestamp(),
            "level": r.level,
            "message": r.message,
            "logger": r.logger,
            "step": r.step,
            "host": r.host,
        }
        for r in rows
    ]
