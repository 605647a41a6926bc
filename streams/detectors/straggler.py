"""``straggler``: one rank holding the others back at the same steps.

In synchronous data-parallel training every rank's ``step_time_s`` grows together: they all
wait for the slowest at the all-reduce. Step time cannot tell who is slow; the rank's OWN
work can: ``compute_time_s`` (forward, backward, optimizer, waits in collectives excluded)
and ``data_time_s`` (waiting for the next batch). The straggler is the rank whose own time
stands out from its peers' median, or whose reported throughput fell alone, for several
consecutive steps. Compute points at the GPU (throttled, failing, a noisy neighbour), data at
the host (dataloader workers, storage, CPU).

Per rank the state is one short list; on each tick (not each event) the medians over the ranks
that reported since the last tick are computed once: O(ranks) per tick of event time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import median
from typing import Any, ClassVar

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome, Resolution

# Per-rank entry: latest compute, data, throughput; samples seen; consecutive flagged and
# clean evaluations; firing (0/1); step of the latest sample; step last evaluated.
_C, _D, _TP, _N, _BAD, _GOOD, _FIRING, _STEP, _EVAL = range(9)
_NAN = math.nan

_HINTS = {
    "compute": "likely a slow or throttled GPU: check its clocks, temperature, power and Xid",
    "data": "its input pipeline is slow: check dataloader workers, storage and CPU on the host",
    "throughput": "check its GPU and host",
}


@dataclass(frozen=True, slots=True)
class StragglerConfig:
    """Thresholds of ``straggler``.

    ``ratio`` 1.25: normal rank-to-rank spread of compute time is a few percent (3 sigma is
    well under 10%); a rank a quarter slower than its peers slows every step of the whole job
    by about as much, which on a large job is worth a person's look (a throttled GPU).
    ``min_excess_s`` 0.05: below that, data-time ratios on millisecond waits are noise.
    ``consecutive`` 3 evaluated steps: one slow step (rank 0 writing a checkpoint, a GC
    pause) is not a straggler.
    ``warmup_samples`` 5: compile and warm-up steps vary across ranks.
    """

    ratio: float = 1.25
    min_excess_s: float = 0.05
    consecutive: int = 3
    recover: int = 3
    warmup_samples: int = 5
    min_ranks: int = 3
    stale_s: float = 30.0  # a rank not heard from for this long is left out (rank_silent's job)
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        if not self.ratio > 1:
            raise DetectorConfigError(f"ratio must be > 1, got {self.ratio}")
        if self.min_excess_s < 0:
            raise DetectorConfigError(f"min_excess_s must be >= 0, got {self.min_excess_s}")
        for key in ("consecutive", "recover"):
            if getattr(self, key) < 1:
                raise DetectorConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.min_ranks < 3:
            raise DetectorConfigError(f"min_ranks must be >= 3, got {self.min_ranks}")
        if self.warmup_samples < 0:
            raise DetectorConfigError(f"warmup_samples must be >= 0, got {self.warmup_samples}")
        if not self.stale_s > 0:
            raise DetectorConfigError(f"stale_s must be > 0, got {self.stale_s}")


def _median_of(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return median(finite) if finite else _NAN


class StragglerDetector:
    """One rank's own compute or data time far above its peers' median (rank scope)."""

    name: ClassVar[str] = "straggler"
    rule: ClassVar[str] = "straggler"

    def __init__(self, config: StragglerConfig | None = None) -> None:
        self.config = config or StragglerConfig()

    def new_job_state(self) -> dict[str, Any]:
        return {"r": {}}

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        c, d, tp = event.compute_time_s, event.data_time_s, event.throughput_tokens_per_sec
        if c is None and d is None and tp is None:
            return
        entry = state["r"].get(rank.rank)
        if entry is None:
            entry = state["r"][rank.rank] = [_NAN, _NAN, _NAN, 0, 0, 0, 0, -1, -1]
        entry[_C] = _NAN if c is None else c
        entry[_D] = _NAN if d is None else d
        entry[_TP] = _NAN if tp is None else tp
        entry[_N] += 1
        entry[_STEP] = event.step

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        cfg = self.config
        entries: dict[int, list[Any]] = state["r"]
        if len(entries) < cfg.min_ranks:
            return ()
        fresh_after = now - cfg.stale_s
        ranks = job.ranks
        peers = [
            (r, e)
            for r, e in entries.items()
            if e[_N] > cfg.warmup_samples and ranks[r].last_seen >= fresh_after
        ]
        if len(peers) < cfg.min_ranks or not any(e[_STEP] > e[_EVAL] for _, e in peers):
            return ()
        med_c = _median_of([e[_C] for _, e in peers])
        med_d = _median_of([e[_D] for _, e in peers])
        med_tp = _median_of([e[_TP] for _, e in peers])
        out: list[Outcome] = []
        for r, e in peers:
            if e[_STEP] <= e[_EVAL]:
                continue  # nothing new from this rank since the last evaluation
            e[_EVAL] = e[_STEP]
            verdict = self._judge(e, med_c, med_d, med_tp)
            if verdict is None:
                e[_BAD] = 0
                e[_GOOD] += 1
                if e[_FIRING] and e[_GOOD] >= cfg.recover:
                    e[_FIRING] = 0
                    out.append(
                        Resolution(self.rule, r, now, "", f"rank {r} keeps pace with its peers")
                    )
                continue
            e[_GOOD] = 0
            e[_BAD] += 1
            if e[_BAD] >= cfg.consecutive and not e[_FIRING]:
                e[_FIRING] = 1
                out.append(self._finding(ranks[r], e, verdict, len(peers), now))
        return out

    def _judge(
        self, e: list[Any], med_c: float, med_d: float, med_tp: float
    ) -> tuple[str, float, float] | None:
        """The component that stands out most, with the rank's value and the peers' median."""
        cfg = self.config
        worst: tuple[str, float, float] | None = None
        worst_excess = 0.0
        for component, value, med in (("compute", e[_C], med_c), ("data", e[_D], med_d)):
            if value == value and med == med:
                excess = value - med
                if value > cfg.ratio * med and excess > cfg.min_excess_s and excess > worst_excess:
                    worst, worst_excess = (component, value, med), excess
        tp = e[_TP]
        if worst is None and tp == tp and med_tp == med_tp and tp * cfg.ratio < med_tp:
            worst = ("throughput", tp, med_tp)
        return worst

    def _finding(
        self, rs: RankState, e: list[Any], verdict: tuple[str, float, float], n: int, now: float
    ) -> Finding:
        component, value, med = verdict
        where = f"rank {rs.rank}" + (f" ({rs.host})" if rs.host else "")
        if component == "throughput":
            factor = med / value if value > 0 else math.inf
            what = f"throughput {value:.0f} tok/s vs peers' median {med:.0f} ({factor:.1f}x lower)"
        else:
            factor = value / med if med > 0 else math.inf
            what = f"{component} time {value:.3f} s vs peers' median {med:.3f} s ({factor:.1f}x)"
        steps = int(e[_BAD])
        return Finding(
            rule=self.rule,
            rank=rs.rank,
            severity=self.config.severity,
            event_time=now,
            step=int(e[_STEP]) - steps + 1 if steps else int(e[_STEP]),
            summary=f"{where} is a straggler: {what} for {steps} steps: {_HINTS[component]}",
            evidence={
                "component": component,
                "value": round(value, 4),
                "peers_median": round(med, 4),
                "factor": round(factor, 3),
                "consecutive_steps": steps,
                "peers": n,
                "host": rs.host,
            },
            action=self.config.action,
        )
