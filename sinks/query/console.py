"""The console sink: one line per alert, coloured by severity when the output is a terminal."""

from __future__ import annotations

from rankwatch.schemas import Alert

_COLOURS = {"critical": "\033[1;31m", "warning": "\033[33m", "info": "\033[36m"}
_RESOLVED = "\033[32m"
_RESET = "\033[0m"


def alert_line(alert: Alert, *, colour: bool = False) -> str:
    """``TIME SEVERITY STATUS job rule ranks step: summary``, on one line.

    >>> a = Alert(alert_id="x", job_id="j1", rule="cuda_oom", severity="critical", scope="rank",
    ...           ranks=[7], step=1200, first_seen=0, last_seen=60, summary="rank 7: OOM")
    >>> alert_line(a)
    '1970-01-01 00:01:00 CRITICAL firing   j1 cuda_oom ranks=7 step=1200: rank 7: OOM'
    """
    ranks = _ranks(alert.ranks) if alert.ranks else ("all" if alert.scope == "job" else "-")
    step = "-" if alert.step is None else str(alert.step)
    summary = " ".join(alert.summary.split())  # one line, whatever the detector wrote
    text = (
        f"{alert.last_seen:%Y-%m-%d %H:%M:%S} {alert.severity.upper():<8} "
        f"{alert.status:<8} {alert.job_id} {alert.rule} ranks={ranks} step={step}: {summary}"
    )
    if not colour:
        return text
    code = _RESOLVED if alert.status == "resolved" else _COLOURS[alert.severity]
    return f"{code}{text}{_RESET}"


def _ranks(ranks: list[int], limit: int = 12) -> str:
    """``0,1,2`` or, for many ranks, ``0,1,...(256 ranks)``.

    >>> _ranks(list(range(20)), limit=3)
    '0,1,2,...(20 ranks)'
    """
    shown = ",".join(str(r) for r in ranks[:limit])
    return shown if len(ranks) <= limit else f"{shown},...({len(ranks)} ranks)"
