"""Routing: which destinations an alert goes to, by job pattern, rule, severity and status.

Routes are tried in order; the first that matches decides, unless it says ``continue = true``
(then later routes may add destinations), as in Alertmanager.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from rankwatch.schemas import Alert
from rankwatch.sinks.config import RouteConfig

SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


def matches(route: RouteConfig, alert: Alert) -> bool:
    """Whether ``route`` takes ``alert``."""
    return (
        fnmatchcase(alert.job_id, route.jobs)
        and (not route.rules or alert.rule in route.rules)
        and SEVERITY_ORDER[alert.severity] >= SEVERITY_ORDER[route.min_severity]
        and alert.status in route.statuses
    )


def destinations_for(routes: Sequence[RouteConfig], alert: Alert) -> list[str]:
    """The destination names for ``alert``, each once, in route order.

    >>> r = [RouteConfig(jobs="llm-*", min_severity="critical", to=("pager",)),
    ...      RouteConfig(to=("chat",))]
    >>> a = Alert(alert_id="x", job_id="llm-1", rule="hang", severity="critical",
    ...           scope="job", first_seen=0, last_seen=0, summary="hang")
    >>> destinations_for(r, a), destinations_for(r, a.model_copy(update={"severity": "info"}))
    (['pager'], ['chat'])
    """
    chosen: list[str] = []
    for route in routes:
        if matches(route, alert):
            chosen += [name for name in route.to if name not in chosen]
            if not route.continue_:
                break
    return chosen
