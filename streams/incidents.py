"""One incident, one alert: suppression of repeats, job-level aggregation, resolution.

Detectors report per-rank :class:`Finding` records. This module decides what people see:

- a finding for an incident already open only extends it (``last_seen``), nothing is emitted;
- findings of one rule from many ranks within ``group_wait_s`` of event time are gathered, and
  if they cover at least ``job_fraction`` of the job's ranks they become ONE alert with scope
  ``job`` listing the ranks (a NaN loss that the all-reduce spread to 256 ranks is one alert);
  otherwise each rank gets its own alert;
- rules in ``immediate_rules`` (a rank's own crash: OOM, fatal errors) skip the wait;
- an incident closes when its detector reports a :class:`Resolution` for every rank in it, or
  after ``expire_after_s`` of event time without new evidence; then a ``resolved`` alert goes out
  with the same ``alert_id``, and a later fault is a new incident with a new id.

Incident and pending records are plain dicts in :class:`JobState`, so they persist with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rankwatch.schemas import Alert, Status, alert_id_for
from rankwatch.streams.detectors.base import JobState
from rankwatch.streams.findings import Finding, Resolution

JOB = "job"


@dataclass(frozen=True, slots=True)
class IncidentPolicy:
    group_wait_s: float = 2.0
    job_fraction: float = 0.5
    #: At most this many ranks of one rule get alerts of their own at a time: more ranks with
    #: the same fault (a loss diverging rank after rank) are one job incident, whatever share
    #: of the job they are.
    max_rank_alerts: int = 3
    expire_after_s: float = 600.0
    immediate_rules: frozenset[str] = field(
        default_factory=lambda: frozenset(
            {
                "crash",
                "cuda_oom",
                "fatal_error",
                "nccl_error",
                "nccl_timeout_burst",
                "hang",
                "rank_silent",
            }
        )
    )


def _key(rule: str, scope_rank: int | None, incident_key: str) -> str:
    return f"{rule}|{JOB if scope_rank is None else scope_rank}|{incident_key}"


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _alert(job: JobState, inc: dict[str, Any], status: Status, summary: str | None = None) -> Alert:
    return Alert(
        alert_id=inc["alert_id"],
        job_id=job.job_id,
        rule=inc["rule"],
        severity=inc["severity"],
        scope=inc["scope"],
        ranks=sorted(inc["ranks"]),
        step=inc["step"],
        first_seen=_dt(inc["first_seen"]),
        last_seen=_dt(inc["last_seen"]),
        summary=summary or inc["summary"],
        evidence=inc["evidence"],
        action=inc["action"],
        status=status,
    )


class IncidentBook:
    """Turns findings into alerts for one engine; all state lives in the JobState given."""

    def __init__(self, policy: IncidentPolicy | None = None) -> None:
        self.policy = policy or IncidentPolicy()

    # -- findings -------------------------------------------------------------------------
    def on_finding(self, job: JobState, f: Finding, out: list[Alert]) -> None:
        incidents = job.incidents
        job_key = _key(f.rule, None, f.incident_key)
        if f.rank is None:
            self._open_or_extend(job, job_key, f, "job", set(f.ranks), out)
            return
        open_job = incidents.get(job_key)
        if open_job is not None:
            # The rank joins the job-wide incident: no second alert.
            open_job["ranks"].add(f.rank)
            open_job["firing"].add(f.rank)
            open_job["last_seen"] = max(open_job["last_seen"], f.event_time)
            return
        rank_key = _key(f.rule, f.rank, f.incident_key)
        if rank_key in incidents:
            inc = incidents[rank_key]
            inc["last_seen"] = max(inc["last_seen"], f.event_time)
            return
        if f.rule in self.policy.immediate_rules and not self._recent_rank_incidents(job, f):
            # A rank's own crash is news at once; ranks that follow within the wait are
            # gathered below, so an OOM on every rank is two alerts, not one per rank.
            self._open_or_extend(job, rank_key, f, "rank", {f.rank}, out)
            return
        group = job.pending.setdefault(job_key, {"first": f.event_time, "findings": {}})
        group["findings"].setdefault(f.rank, f)
        world = job.world_size or len(job.ranks)
        if len(group["findings"]) >= world:
            self._flush_group(job, job_key, out)

    def _open_or_extend(
        self, job: JobState, key: str, f: Finding, scope: str, ranks: set[int], out: list[Alert]
    ) -> None:
        inc = job.incidents.get(key)
        if inc is not None:
            inc["last_seen"] = max(inc["last_seen"], f.event_time)
            inc["ranks"] |= ranks
            inc["firing"] |= ranks
            return
        scope_id = JOB if scope == "job" else sorted(ranks)[0]
        first = f.step if f.step is not None else round(f.event_time, 3)
        attempt_part = (f"attempt{job.attempt}",) if job.attempt else ()
        inc = {
            # A later attempt may fail at the same step again: a new incident, a new id.
            "alert_id": alert_id_for(
                job.job_id, f.rule, scope_id, f.incident_key, first, *attempt_part
            ),
            "rule": f.rule,
            "severity": f.severity,
            "scope": scope,
            "ranks": set(ranks),
            "firing": set(ranks) if ranks else set(job.ranks),
            "step": f.step,
            "first_seen": f.event_time,
            "last_seen": f.event_time,
            "summary": f.summary,
            "evidence": f.evidence,
            "action": f.action,
        }
        job.incidents[key] = inc
        out.append(_alert(job, inc, "firing"))

    def _open_rank_ids(self, job: JobState, f: Finding) -> set[int]:
        """Ranks with an open incident of the finding's rule (and key) of their own."""
        prefix = f"{f.rule}|"
        suffix = f"|{f.incident_key}"
        out: set[int] = set()
        for key, inc in job.incidents.items():
            if inc["scope"] == "rank" and key.startswith(prefix) and key.endswith(suffix):
                out |= inc["ranks"]
        return out

    def _recent_rank_incidents(self, job: JobState, f: Finding) -> list[dict[str, Any]]:
        """Open rank incidents of the finding's rule that began within the grouping wait."""
        since = f.event_time - self.policy.group_wait_s
        prefix = f"{f.rule}|"
        return [
            inc
            for key, inc in job.incidents.items()
            if key.startswith(prefix)
            and inc["scope"] == "rank"
            and key.endswith(f"|{f.incident_key}")
            and inc["first_seen"] >= since
        ]

    def _flush_group(self, job: JobState, job_key: str, out: list[Alert]) -> None:
        group = job.pending.pop(job_key)
        findings: dict[int, Finding] = group["findings"]
        ordered = sorted(findings.values(), key=lambda x: (x.event_time, x.rank or 0))
        first = ordered[0]
        world = job.world_size or len(job.ranks)
        already: set[int] = set()
        if first.rule in self.policy.immediate_rules:
            for inc in self._recent_rank_incidents(job, first):
                already |= inc["ranks"]
        open_ranks = self._open_rank_ids(job, first)
        spread = len(findings) + len(open_ranks - set(findings)) > self.policy.max_rank_alerts
        if spread or (
            len(findings) >= 2 and len(findings) + len(already) >= self.policy.job_fraction * world
        ):
            ranks = set(findings) | already | open_ranks
            steps = [x.step for x in ordered if x.step is not None]
            merged = Finding(
                rule=first.rule,
                rank=None,
                severity=max((x.severity for x in ordered), key=_SEVERITY_ORDER.__getitem__),
                event_time=first.event_time,
                step=min(steps) if steps else None,
                summary=f"{len(ranks)} of {world} ranks: {first.summary}",
                evidence={
                    "ranks_affected": len(ranks),
                    "world_size": world,
                    "first_rank": first.rank,
                    **first.evidence,
                },
                action=first.action,
                ranks=tuple(sorted(ranks)),
                incident_key=first.incident_key,
            )
            self._open_or_extend(job, job_key, merged, "job", ranks, out)
            job.incidents[job_key]["last_seen"] = max(x.event_time for x in ordered)
            return
        for f in ordered:
            assert f.rank is not None
            self._open_or_extend(
                job, _key(f.rule, f.rank, f.incident_key), f, "rank", {f.rank}, out
            )

    # -- resolutions ----------------------------------------------------------------------
    def on_resolution(self, job: JobState, r: Resolution, out: list[Alert]) -> None:
        job_key = _key(r.rule, None, r.incident_key)
        pending = job.pending.get(job_key)
        if pending is not None and r.rank is not None:
            pending["findings"].pop(r.rank, None)
            if not pending["findings"]:
                del job.pending[job_key]
        if r.rank is None:
            self._close(job, job_key, r.event_time, r.summary, out)
            return
        rank_key = _key(r.rule, r.rank, r.incident_key)
        if rank_key in job.incidents:
            self._close(job, rank_key, r.event_time, r.summary, out)
        inc = job.incidents.get(job_key)
        if inc is not None:
            inc["firing"].discard(r.rank)
            if not inc["firing"]:
                self._close(job, job_key, r.event_time, r.summary, out)

    def close_all(self, job: JobState, when: float, summary: str, out: list[Alert]) -> None:
        """Resolve every open incident of the job (its attempt is over)."""
        for key in list(job.incidents):
            self._close(job, key, when, summary, out)

    def _close(self, job: JobState, key: str, when: float, summary: str, out: list[Alert]) -> None:
        inc = job.incidents.pop(key, None)
        if inc is None:
            return
        inc["last_seen"] = max(inc["last_seen"], when)
        out.append(_alert(job, inc, "resolved", f"resolved: {summary or inc['summary']}"))

    # -- event time -----------------------------------------------------------------------
    def on_time(self, job: JobState, now: float, out: list[Alert]) -> None:
        """Flush groups whose wait is over and expire incidents gone quiet."""
        if job.pending:
            wait = self.policy.group_wait_s
            for key in [k for k, g in job.pending.items() if g["first"] + wait <= now]:
                self._flush_group(job, key, out)
        if job.incidents:
            limit = now - self.policy.expire_after_s
            for key in [k for k, i in job.incidents.items() if i["last_seen"] < limit]:
                self._close(job, key, now, "no new evidence", out)

    def flush(self, job: JobState, out: list[Alert]) -> None:
        """End of input (replay): decide every pending group now."""
        for key in list(job.pending):
            self._flush_group(job, key, out)


_SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}
