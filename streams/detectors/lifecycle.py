"""``job_restarted``: a job came back from a checkpoint, said once, at ``info``.

A restart is not a fault (the launcher did its job), but it is news: the steps between the
checkpoint and the failure are computed again, and a job that restarts every half hour has a
problem of its own. The engine starts each attempt with fresh state (see
:meth:`~rankwatch.streams.engine.Engine.process`) and leaves what the previous attempt reached in
``JobState.restart``; this rule reports it once the new attempt's first step is applied.

>>> from rankwatch.streams import JobState
>>> job = JobState("j", attempt=1, max_step=200, watermark=1300.0,
...     restart={"last_step": 237, "ended": 1000.0, "world_size": 8, "ranks": 8,
...              "reported_attempt": 1})
>>> [f.summary for f in JobRestarted().on_tick(job, {}, 1300.0)]  # doctest: +ELLIPSIS
['job restarted (attempt 1): resumed at step 200, 300 s after its last step; ... 38 steps ...']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Finding, Outcome


@dataclass(frozen=True, slots=True)
class JobRestartedConfig:
    """``job_restarted`` has no threshold: a restart is a fact. ``info`` by default."""

    severity: Severity = "info"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.severity_action(self, self.severity, self.action)


class JobRestarted:
    """Reports a new attempt of a job at its first applied step (job scope)."""

    name: ClassVar[str] = "job_restarted"
    rule: ClassVar[str] = "job_restarted"

    def __init__(self, config: JobRestartedConfig | None = None) -> None:
        self.config = config or JobRestartedConfig()

    def new_job_state(self) -> dict[str, Any]:
        return {}

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        return None

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: Any, events: Sequence[Any]
    ) -> None:
        """Nothing, as ``on_step``: having a frame path spares the engine a call per step."""
        return None

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        restart = job.restart
        if restart is None or job.max_step < 0:
            return ()
        job.restart = None
        resumed = job.max_step  # the first tick comes with the attempt's first applied step
        last = int(restart["last_step"])
        lost = max(0, last - resumed + 1)
        down = max(0.0, now - float(restart["ended"]))
        world, before = job.world_size, restart["world_size"]
        resized = (
            f"; world size {before} -> {world}"
            if world is not None and before is not None and world != before
            else ""
        )
        summary = (
            f"job restarted (attempt {job.attempt}): resumed at step {resumed}, {down:.0f} s "
            f"after its last step; the previous attempt reached step {last}, so {lost} steps "
            f"are computed again{resized}. Check why it stopped (the alerts before this one)"
        )
        return (
            Finding(
                rule=self.rule,
                rank=None,
                severity=self.config.severity,
                event_time=now,
                step=resumed,
                summary=summary,
                evidence={
                    "attempt": job.attempt,
                    "reported_attempt": restart["reported_attempt"],
                    "resumed_step": resumed,
                    "previous_last_step": last,
                    "steps_lost": lost,
                    "down_s": round(down, 3),
                    "world_size": world,
                    "previous_world_size": before,
                },
                action=self.config.action,
            ),
        )
