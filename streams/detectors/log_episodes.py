"""One collective failure, one alert: gathering NCCL and hang records across ranks.

When a collective times out, every rank in it says so, within a second or two of each other,
and each says it in three or four records. A person wants ONE alert that lists the ranks and
names the rank that most likely caused it, not 256 x 4. A record that stays alone (one rank's
``NCCL error``) is its own, smaller incident.

So records of one family (NCCL, or watchdog hangs) are gathered into an *episode*: records
within ``window_s`` of event time of the episode's last record belong to it. The episode is
decided once no new rank has joined for ``settle_s`` (or ``window_s`` after it began, or at
once when every rank of the job has reported):

- ``min_ranks`` distinct ranks or more: a burst, one job-scope finding listing them; ranks that
  report later only extend it (the incident book adds them without a second alert);
- fewer: each rank gets its own rank-scope finding (the ``lone`` rule).

The culprit of an NCCL burst is the rank that fell behind: the lowest "last completed NCCL
work" (or timed-out ``SeqNum``) when only a few ranks have it, else the few ranks that did NOT
report while their peers did (a rank stuck outside the collective has nothing to time out).

State is a plain dict in the detector's job slot: per reporting rank one small list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rankwatch.schemas import Action, Severity
from rankwatch.streams.detectors.base import JobState
from rankwatch.streams.detectors.log_patterns import NCCL_TIMEOUT_LABELS, clip
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome

_MAX_LINES = 5  # sample log lines kept per episode for evidence
_SUMMARY_LINE = 160  # characters of a log line quoted in a one-line summary

# Per-rank entry: [event_time, seq, last_completed, is_timeout, only_warn]; -1 = unknown.
_T, _SEQ, _DONE, _TIMEOUT, _WARN = range(5)


@dataclass(frozen=True, slots=True)
class EpisodeConfig:
    """How records of several ranks are gathered into one incident.

    Defaults: a collective's timeouts land within seconds on every rank, but ranks whose
    watchdog polls later, or whose logs travel slower, can trail by tens of seconds, hence a
    60 s window; 10 s of quiet is long enough for the stragglers of one burst yet keeps a lone
    NCCL error's alert within seconds.
    """

    burst_rule: str
    lone_rule: str
    window_s: float = 60.0
    settle_s: float = 10.0
    min_ranks: int = 2
    min_fraction: float | None = None
    max_culprits: int = 4
    severity: Severity = "critical"
    warn_severity: Severity = "warning"  # a rank whose records were all "NCCL WARN" lines
    action: Action = "notify"

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise DetectorConfigError(f"window_s must be > 0, got {self.window_s}")
        if not 0 < self.settle_s <= self.window_s:
            raise DetectorConfigError(
                f"settle_s must be in (0, window_s={self.window_s}], got {self.settle_s}"
            )
        if self.min_ranks < 2:
            raise DetectorConfigError(f"min_ranks must be >= 2, got {self.min_ranks}")
        if self.min_fraction is not None and not 0 < self.min_fraction <= 1:
            raise DetectorConfigError(f"min_fraction must be in (0, 1], got {self.min_fraction}")
        if self.max_culprits < 1:
            raise DetectorConfigError(f"max_culprits must be >= 1, got {self.max_culprits}")


class EpisodeGatherer:
    """Gathers one family of records (NCCL or hang) of one job into bursts and lone records."""

    def __init__(self, config: EpisodeConfig, *, what: str, name_culprit: bool) -> None:
        self.config = config
        self.what = what  # "NCCL" or "Hang": the first word of summaries
        self.name_culprit = name_culprit

    # -- events ---------------------------------------------------------------------------
    def add(
        self,
        job: JobState,
        state: dict[str, Any],
        rank: int,
        now: float,
        label: str,
        line: str,
        figures: dict[str, Any],
        step: int | None,
    ) -> list[Outcome]:
        """Record one matching record of ``rank``; a burst already decided absorbs it."""
        cfg = self.config
        ep: dict[str, Any] | None = state.get("ep")
        if ep is not None and now > ep["last"] + cfg.window_s:
            ep = None  # the previous episode is over: this record starts a new one
        if ep is None:
            ep = state["ep"] = {
                "first": now, "last": now, "decided": "", "ranks": {}, "alerted": [],
                "lines": [], "labels": {}, "step": step, "op": None, "timeout_ms": None,
            }  # fmt: skip
        ep["first"] = min(ep["first"], now)
        ep["last"] = max(ep["last"], now)
        if step is not None and (ep["step"] is None or step < ep["step"]):
            ep["step"] = step
        ep["labels"][label] = ep["labels"].get(label, 0) + 1
        for key in ("op", "timeout_ms"):
            if ep[key] is None and key in figures:
                ep[key] = figures[key]
        entry = ep["ranks"].get(rank)
        new_rank = entry is None
        if entry is None:
            entry = ep["ranks"][rank] = [now, -1, -1, 0, 1]
        entry[_T] = min(entry[_T], now)
        if "seq" in figures and (entry[_SEQ] < 0 or figures["seq"] < entry[_SEQ]):
            entry[_SEQ] = figures["seq"]
        if "last_completed" in figures:
            entry[_DONE] = figures["last_completed"]
        if label in NCCL_TIMEOUT_LABELS:
            entry[_TIMEOUT] = 1
        if label != "nccl_warn":
            entry[_WARN] = 0
        if len(ep["lines"]) < _MAX_LINES and new_rank:
            ep["lines"].append([rank, line])
        if ep["decided"] == "burst":
            if new_rank:
                # Joins the open job-scope incident: the book extends it, no second alert.
                return [self._burst_finding(job, ep, extend_with=rank)]
            return []
        if ep["decided"] == "lone":
            ep["decided"] = ""  # a new rank may turn it into a burst: decide again
        world = job.world_size or 0
        if world and len(ep["ranks"]) >= world:
            return self._decide(job, ep)
        return []

    def tick(self, job: JobState, state: dict[str, Any], now: float) -> list[Outcome]:
        """Decide an episode whose ranks have settled; forget one that is over."""
        ep: dict[str, Any] | None = state.get("ep")
        if ep is None:
            return []
        cfg = self.config
        if ep["decided"]:
            if now > ep["last"] + cfg.window_s:
                del state["ep"]
            return []
        if now >= min(ep["last"] + cfg.settle_s, ep["first"] + cfg.window_s):
            return self._decide(job, ep)
        return []

    def flush(self, job: JobState, state: dict[str, Any]) -> list[Outcome]:
        """End of input (replay): decide an episode still waiting for more ranks."""
        ep: dict[str, Any] | None = state.get("ep")
        if ep is None or ep["decided"]:
            return []
        return self._decide(job, ep)

    # -- decisions ------------------------------------------------------------------------
    def _threshold(self, job: JobState) -> int:
        cfg = self.config
        if cfg.min_fraction is None:
            return cfg.min_ranks
        world = job.world_size or len(job.ranks)
        return max(cfg.min_ranks, math.ceil(cfg.min_fraction * world))

    def _decide(self, job: JobState, ep: dict[str, Any]) -> list[Outcome]:
        if len(ep["ranks"]) >= self._threshold(job):
            ep["decided"] = "burst"
            return [self._burst_finding(job, ep)]
        ep["decided"] = "lone"
        out: list[Outcome] = []
        alerted: list[int] = ep["alerted"]
        for rank in sorted(ep["ranks"]):
            if rank not in alerted:
                alerted.append(rank)
                out.append(self._lone_finding(job, ep, rank))
        return out

    def _lone_finding(self, job: JobState, ep: dict[str, Any], rank: int) -> Finding:
        cfg = self.config
        entry = ep["ranks"][rank]
        line = next((ln for r, ln in ep["lines"] if r == rank), "")
        host = job.ranks[rank].host if rank in job.ranks else None
        where = job.label(rank)
        kind = "timeout" if entry[_TIMEOUT] else "error"
        head = f"{self.what} {kind} on {where}" if self.what == "NCCL" else f"Hang on {where}"
        evidence: dict[str, Any] = {"line": line, "labels": dict(ep["labels"])}
        if host:
            evidence["host"] = host
        if entry[_SEQ] >= 0:
            evidence["seq"] = entry[_SEQ]
        if entry[_DONE] >= 0:
            evidence["last_completed"] = entry[_DONE]
        for key in ("op", "timeout_ms"):
            if ep[key] is not None:
                evidence[key] = ep[key]
        return Finding(
            rule=cfg.lone_rule,
            rank=rank,
            severity=cfg.warn_severity if entry[_WARN] else cfg.severity,
            event_time=entry[_T],
            step=ep["step"],
            summary=f"{head}: {clip(line, _SUMMARY_LINE)}",
            evidence=evidence,
            action=cfg.action,
        )

    def _burst_finding(
        self, job: JobState, ep: dict[str, Any], extend_with: int | None = None
    ) -> Finding:
        cfg = self.config
        if extend_with is not None:
            # Only the rank and the time matter to the incident book for an open incident;
            # the summary is there in case it closed meanwhile (progress resumed) and reopens.
            return Finding(
                rule=cfg.burst_rule, rank=None, severity=cfg.severity,
                event_time=ep["ranks"][extend_with][_T], summary=ep.get("summary", ""),
                step=ep["step"], ranks=(extend_with,), action=cfg.action,
            )  # fmt: skip
        ranks: dict[int, list[Any]] = ep["ranks"]
        n = len(ranks)
        world = job.world_size or len(job.ranks)
        span = ep["last"] - ep["first"]
        timeouts = sum(1 for e in ranks.values() if e[_TIMEOUT])
        evidence: dict[str, Any] = {
            "ranks_reporting": n,
            "world_size": world,
            "window_s": round(span, 3),
            "timeout_ranks": timeouts,
            "labels": dict(ep["labels"]),
            "lines": [{"rank": r, "line": ln} for r, ln in ep["lines"]],
        }
        for key in ("op", "timeout_ms"):
            if ep[key] is not None:
                evidence[key] = ep[key]
        if self.what == "NCCL":
            kind = "timeouts" if timeouts * 2 >= n else "errors"
            head = f"NCCL {kind} on {n} of {world} ranks within {span:.0f} s"
        else:
            first_line = clip(ep["lines"][0][1], _SUMMARY_LINE) if ep["lines"] else ""
            head = f"Hang reported on {n} of {world} ranks within {span:.0f} s: {first_line}"
        tail = ""
        if self.name_culprit:
            culprits, reason, detail = self._culprit(job, ep, world)
            evidence.update(detail)
            if culprits:
                evidence["culprit_ranks"] = culprits
                hosts = sorted({h for r in culprits if (h := _host(job, r))})
                if hosts:
                    evidence["culprit_hosts"] = hosts
                who = _ranks_text(culprits)
                on = f" on {', '.join(hosts)}" if hosts else ""
                tail = f"; {who}{on} {reason}: check its node and network"
            else:
                tail = "; no single rank stands out: check the network fabric and recent changes"
        ep["summary"] = head + tail
        return Finding(
            rule=cfg.burst_rule,
            rank=None,
            severity=cfg.severity,
            event_time=ep["first"],
            step=ep["step"],
            summary=head + tail,
            evidence=evidence,
            action=cfg.action,
            ranks=tuple(sorted(ranks)),
        )

    def _culprit(
        self, job: JobState, ep: dict[str, Any], world: int
    ) -> tuple[list[int], str, dict[str, Any]]:
        """The few ranks that fell behind, why we think so, and the figures behind it."""
        cfg = self.config
        ranks: dict[int, list[Any]] = ep["ranks"]
        for field, words in ((_DONE, "last completed SeqNum"), (_SEQ, "timed out at SeqNum")):
            known = {r: e[field] for r, e in ranks.items() if e[field] >= 0}
            if len(known) < 2:
                continue
            low, high = min(known.values()), max(known.values())
            if low == high:
                continue
            behind = sorted(r for r, v in known.items() if v == low)
            if len(behind) <= cfg.max_culprits and len(behind) < len(known):
                detail = {"seq_behind": low, "seq_peers": high, "seq_field": words}
                return behind, f"fell behind ({words} {low} vs {high})", detail
        if len(ranks) >= 2:
            universe = range(world) if job.world_size else job.ranks.keys()
            missing = [r for r in universe if r not in ranks]
            if 1 <= len(missing) <= cfg.max_culprits and len(missing) < len(ranks):
                seqs = {e[_SEQ] for e in ranks.values() if e[_SEQ] >= 0}
                at = f" at SeqNum {min(seqs)}" if len(seqs) == 1 else ""
                verb = "timed out" if self.what == "NCCL" else "reported"
                missing.sort()
                return (
                    missing,
                    f"did not report while {len(ranks)} peers {verb}{at}",
                    {"silent_ranks": missing},
                )
        return [], "", {}


def _host(job: JobState, rank: int) -> str | None:
    state = job.ranks.get(rank)
    return state.host if state is not None else None


def _ranks_text(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ", ".join(str(r) for r in ranks)
