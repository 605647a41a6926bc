"""An alert as Alertmanager sees it: identifying labels, annotations, and the v2 body.

Alertmanager identifies an alert by its label set: the resolution must carry exactly the labels
of the firing post, or it is a different alert and the firing one stays open until its
``endsAt``. So only what never changes during an incident is a label: ``alertname`` and
``rule`` (the rule), ``job`` (rankwatch's job id), ``severity``, ``scope``, ``alert_id`` (one
incident, one Alertmanager alert), and ``rank`` for a rank's own alert. A job-wide incident's
ranks grow while it is open (ranks join it), so they go in the ``ranks`` annotation, which
Alertmanager replaces on every post.

>>> from rankwatch.schemas import Alert
>>> a = Alert(alert_id="a1", job_id="llm-7", rule="cuda_oom", severity="critical",
...           scope="rank", ranks=[3], step=40, first_seen=0, last_seen=5, summary="OOM")
>>> sorted(alert_labels(a, {"team": "ml"}).items())  # doctest: +NORMALIZE_WHITESPACE
[('alert_id', 'a1'), ('alertname', 'cuda_oom'), ('job', 'llm-7'), ('rank', '3'),
 ('rule', 'cuda_oom'), ('scope', 'rank'), ('severity', 'critical'), ('team', 'ml')]
>>> postable(a, now=10.0, hold_s=240.0)["endsAt"]
'1970-01-01T00:04:10Z'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rankwatch.schemas import Alert
from rankwatch.schemas._types import format_timestamp

#: Prometheus's label name syntax; names starting with ``__`` are reserved for its internals.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
#: The labels rankwatch sets itself: a static label may not replace one.
RESERVED = ("alert_id", "alertname", "job", "rank", "rule", "scope", "severity")
#: Ranks listed in the ``ranks`` annotation before it says how many more there are.
MAX_RANKS_SHOWN = 64


def check_static_labels(labels: Mapping[str, str]) -> None:
    """Raise ``ValueError("labels: ...")`` for the first name Alertmanager would refuse or
    that would replace one of rankwatch's.

    >>> check_static_labels({"team": "ml", "2x": "x"})
    Traceback (most recent call last):
    ...
    ValueError: labels: '2x' is not a label name (letters, digits and _, not starting with a digit)
    """
    for name in labels:
        if not LABEL_NAME.match(name):
            raise ValueError(
                f"labels: {name!r} is not a label name "
                "(letters, digits and _, not starting with a digit)"
            )
        if name.startswith("__"):
            raise ValueError(f"labels: {name!r}: names starting with __ are reserved")
        if name in RESERVED:
            raise ValueError(f"labels: {name!r} is set by rankwatch ({', '.join(RESERVED)})")


def alert_labels(alert: Alert, static: Mapping[str, str] | None = None) -> dict[str, str]:
    """The identifying labels of ``alert``, the same whether it fires or resolves."""
    labels = dict(static or {})
    labels.update(
        alertname=alert.rule,
        rule=alert.rule,
        job=alert.job_id,
        severity=alert.severity,
        scope=alert.scope,
        alert_id=alert.alert_id,
    )
    if alert.scope == "rank" and len(alert.ranks) == 1:
        labels["rank"] = str(alert.ranks[0])
    return labels


def dashboard_link(dashboard_url: str | None, alert: Alert) -> str | None:
    """The alert's page on rankwatch's dashboard (``rankwatch ui``), if one is configured.

    >>> a = Alert(alert_id="a1", job_id="j", rule="hang", severity="critical", scope="job",
    ...           first_seen=0, last_seen=0, summary="hang")
    >>> dashboard_link("http://127.0.0.1:8080/", a)
    'http://127.0.0.1:8080/alerts/a1'
    """
    if not dashboard_url:
        return None
    return f"{dashboard_url.rstrip('/')}/alerts/{alert.alert_id}"


def alert_annotations(alert: Alert, dashboard_url: str | None = None) -> dict[str, str]:
    """What a person reads: the summary, a description, the ranks, the step, the remediation
    the rule knows (``evidence["remediation"]``) and the dashboard link."""
    summary = " ".join(alert.summary.split())
    ranks = _ranks(alert.ranks) if alert.ranks else "all"
    where = f"ranks {ranks}" + ("" if alert.step is None else f", step {alert.step}")
    annotations = {
        "summary": summary,
        "description": f"{alert.rule} ({alert.severity}) on job {alert.job_id}, {where}: {summary}",
        "ranks": ranks,
    }
    if alert.step is not None:
        annotations["step"] = str(alert.step)
    remediation = alert.evidence.get("remediation")
    if isinstance(remediation, str) and remediation.strip():
        annotations["remediation"] = " ".join(remediation.split())
    link = dashboard_link(dashboard_url, alert)
    if link is not None:
        annotations["dashboard"] = link
    return annotations


def postable(
    alert: Alert,
    *,
    now: float,
    hold_s: float,
    static_labels: Mapping[str, str] | None = None,
    dashboard_url: str | None = None,
) -> dict[str, Any]:
    """One ``PostableAlert`` of the v2 API.

    A firing alert ends ``hold_s`` after ``now`` unless posted again (as Prometheus does, so
    an alert whose sender died resolves by itself); a resolution ends at its ``last_seen``,
    or now if that is in the future (another clock), and never before it started.
    """
    starts = alert.first_seen.timestamp()
    if alert.status == "firing":
        ends = max(now, starts) + hold_s
    else:
        ends = max(starts, min(alert.last_seen.timestamp(), now))
    body: dict[str, Any] = {
        "labels": alert_labels(alert, static_labels),
        "annotations": alert_annotations(alert, dashboard_url),
        "startsAt": format_timestamp(alert.first_seen),
        "endsAt": format_timestamp(datetime.fromtimestamp(ends, UTC)),
    }
    link = dashboard_link(dashboard_url, alert)
    if link is not None:
        body["generatorURL"] = link
    return body


def _ranks(ranks: list[int]) -> str:
    """``1,5,9``, or the first :data:`MAX_RANKS_SHOWN` and how many there are."""
    shown = ",".join(map(str, ranks[:MAX_RANKS_SHOWN]))
    if len(ranks) <= MAX_RANKS_SHOWN:
        return shown
    return f"{shown},...({len(ranks)} ranks)"
