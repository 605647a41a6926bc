"""Liveness rules in event time: ``rank_silent`` (one rank stops) and ``hang`` (no rank moves).

Both compare the job's watermark (the newest event time of any rank) with when things last
happened, never with the wall clock, so a replay a month later alerts as the live run did; and
both scale their patience to the job's own pace: the typical seconds per step, learned from
how fast the job's highest step advances (:class:`StepPeriod`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.frames import StepFrame

_PERIOD_ALPHA = 0.1  # EWMA weight of one new step period
_PERIOD_CLAMP = 4.0  # one sample may move the estimate by at most this factor (a checkpoint)
_DOWN = "down"  # progress_hang's watch while the job was silent: disarmed until its next step
#: From this many rows on, a frame's advancing rows are found in numpy; below it a Python pass
#: over the steps costs less than numpy's fixed cost per call.
_NUMPY_FROM = 32


class StepPeriod:
    """Seconds per step of a job, from the times its highest step advanced (state: a dict).

    One EWMA per job, updated in O(1) per step event: the first rank to report each new step
    moves it, so a straggler or a silent rank does not bend the job's pace.
    """

    @staticmethod
    def new() -> dict[str, Any]:
        return {"ms": -1, "mt": float("-inf"), "period": 0.0}

    @staticmethod
    def observe(state: dict[str, Any], event: StepEvent) -> bool:
        """Fold in a step event; True when it advanced the job's highest step."""
        step = event.step
        last = state["ms"]
        if step <= last:
            return False
        now = event.epoch
        at = state["mt"]
        if last >= 0 and now > at:
            sample = (now - at) / (step - last)
            period = state["period"]
            if period > 0:
                sample = min(sample, period * _PERIOD_CLAMP)
                state["period"] = period + _PERIOD_ALPHA * (sample - period)
            else:
                state["period"] = sample
        state["ms"] = step
        state["mt"] = max(at, now)
        return True

    @staticmethod
    def observe_frame(state: dict[str, Any], frame: StepFrame, events: Sequence[Any]) -> bool:
        """:meth:`observe` of a frame's rows in order, called only on the rows that advance the
        job's highest step (the others leave the state as it is); True when one did.

        A row advances it when its step is above the state's and every earlier row's: in a
        healthy frame that is the first row of each new step, a handful of a frame's rows."""
        steps = frame.steps
        n = len(steps)
        if not n:
            return False
        last = state["ms"]
        observe = StepPeriod.observe
        if n < _NUMPY_FROM:
            advanced = False
            for i, step in enumerate(steps.tolist()):
                if step > state["ms"]:
                    observe(state, events[i])
                    advanced = True
            return advanced
        if not steps.max() > last:
            return False  # the usual frame after its first step: nothing new
        # The highest step before each row: the state's, then the running maximum.
        before = np.empty_like(steps)
        before[0] = last
        np.maximum(np.maximum.accumulate(steps[:-1]), last, out=before[1:])
        for i in np.flatnonzero(steps > before).tolist():
            observe(state, events[i])
        return True


def _check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise DetectorConfigError(f"{key} must be > 0, got {value}")


@dataclass(frozen=True, slots=True)
class RankSilentConfig:
    """``rank_silent``: silent for ``max(min_silence_s, step_periods x typical step)``.

    30 s floor: well above log/metric batching and broker hiccups; 5 steps: a rank that misses
    five of its peers' steps is not merely late. ``min_peer_steps`` and ``peer_progress``:
    peers must have moved on, or it is the whole job that paused (a checkpoint) or hung (the
    ``hang`` rule's case, where the rank that stopped first is named).
    """

    min_silence_s: float = 30.0
    step_periods: float = 5.0
    min_peer_steps: int = 2
    #: Peers must have made this share of the steps their pace allows in the silence window:
    #: "keep stepping", not one step as a stalled job resumes.
    peer_progress: float = 0.5
    #: A rank is called silent only once it has been seen behind at ticks spanning this share
    #: of the threshold, and this share of its peers reported in that span. After a broker
    #: outage each rank's producer drains its buffer in a burst, one after another: the job's
    #: clock runs ahead on the first rank's backlog while the others' are still on their way.
    #: Then one rank is "stepping", not its peers, and nobody is called silent.
    confirm_fraction: float = 0.5
    confirm_peers: float = 0.5
    severity: Severity = "critical"
    action: Action = "notify"

    def __post_init__(self) -> None:
        _check_positive(min_silence_s=self.min_silence_s, step_periods=self.step_periods)
        if self.min_peer_steps < 1:
            raise DetectorConfigError(f"min_peer_steps must be >= 1, got {self.min_peer_steps}")
        if not 0 <= self.peer_progress <= 1:
            raise DetectorConfigError(f"peer_progress must be in [0, 1], got {self.peer_progress}")
        for key in ("confirm_fraction", "confirm_peers"):
            if not 0 <= getattr(self, key) <= 1:
                raise DetectorConfigError(f"{key} must be in [0, 1], got {getattr(self, key)}")


class RankSilentDetector:
    """A rank stops reporting while its peers keep stepping; resolved when it reports again.

    Ranks that fall silent together (a node) are one job-scope alert with its own incident key,
    so a rank that dies later is still a new alert.
    """

    name: ClassVar[str] = "rank_silent"
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("silent", "suspect")
    rule: ClassVar[str] = "rank_silent"

    def __init__(self, config: RankSilentConfig | None = None) -> None:
        self.config = config or RankSilentConfig()

    def new_job_state(self) -> dict[str, Any]:
        # silent: rank -> [incident_key, last_seen when flagged];
        # suspect: rank -> the tick time it was first seen behind (not yet flagged)
        return {**StepPeriod.new(), "silent": {}, "suspect": {}}

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        # Only the first rank to report a step moves the pace: the others skip the call.
        if event.step > state["ms"]:
            StepPeriod.observe(state, event)

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: StepFrame, events: Sequence[Any]
    ) -> None:
        """:meth:`on_step` of each row of a frame, in order."""
        StepPeriod.observe_frame(state, frame, events)

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        cfg = self.config
        silent: dict[int, list[Any]] = state["silent"]
        out: list[Outcome] = []
        for r in [r for r, (_, seen) in silent.items() if job.ranks[r].last_seen > seen]:
            key = silent.pop(r)[0]
            out.append(
                Resolution(self.rule, r, job.ranks[r].last_seen, key, f"rank {r} reports again")
            )
        period = state["period"]
        threshold = max(cfg.min_silence_s, cfg.step_periods * period)
        cutoff = now - threshold
        min_behind = cfg.min_peer_steps
        if period > 0:
            min_behind = max(min_behind, int(cfg.peer_progress * threshold / period))
        behind_at = job.max_step - min_behind  # a rank at or below this step is behind
        suspect: dict[int, float] = state.setdefault("suspect", {})  # older snapshots lack it
        behind = [
            rs
            for rs in job.ranks.values()
            if rs.last_seen < cutoff and 0 <= rs.last_step <= behind_at and rs.rank not in silent
        ]
        if len(suspect) > len(behind) or any(r not in suspect for r in (b.rank for b in behind)):
            ids = {rs.rank for rs in behind}
            for r in [r for r in suspect if r not in ids]:
                del suspect[r]  # reported again, or its peers paused: no longer a suspect
        if not behind:
            return out
        confirm = cfg.confirm_fraction * threshold
        # Peers heard from since a suspicion began: one sort per tick, a bisect per suspect.
        seen = sorted(rs.last_seen for rs in job.ranks.values())
        need = cfg.confirm_peers * (len(seen) - 1)
        newly: list[RankState] = []
        for rs in behind:
            start = suspect.setdefault(rs.rank, now)
            if now - start >= confirm and len(seen) - bisect_left(seen, start) >= need:
                newly.append(rs)
        if not newly:
            return out
        # Ranks of one failure cross the threshold a second or so apart: take along those
        # already half-way silent, so a dead node is one alert.
        half = now - threshold / 2
        taken = {rs.rank for rs in newly}
        for rs in job.ranks.values():
            if (
                rs.rank not in taken
                and rs.rank not in silent
                and rs.last_seen < half
                and 0 <= rs.last_step <= behind_at
            ):
                newly.append(rs)
        newly.sort(key=lambda rs: rs.rank)
        for rs in newly:
            suspect.pop(rs.rank, None)
        if len(newly) == 1:
            rs = newly[0]
            silent[rs.rank] = ["", rs.last_seen]
            out.append(self._rank_finding(job, rs, now, threshold, period))
            return out
        key = f"g{round(now, 3)}"
        for rs in newly:
            silent[rs.rank] = [key, rs.last_seen]
        out.append(self._job_finding(job, newly, now, threshold, period, key))
        return out

    def _rank_finding(
        self, job: JobState, rs: RankState, now: float, threshold: float, period: float
    ) -> Finding:
        where = rs.label
        gap = now - rs.last_seen
        behind = job.max_step - rs.last_step
        return Finding(
            rule=self.rule,
            rank=rs.rank,
            severity=self.config.severity,
            event_time=now,
            step=rs.last_step + 1,
            summary=(
                f"{where} silent for {gap:.0f} s while its peers advanced {behind} steps "
                f"(its last step {rs.last_step}): check whether its process and node are alive"
            ),
            evidence={
                "silent_s": round(gap, 3),
                "threshold_s": round(threshold, 3),
                "last_step": rs.last_step,
                "job_max_step": job.max_step,
                "typical_step_s": round(period, 4),
                "host": rs.host,
            },
            action=self.config.action,
        )

    def _job_finding(
        self,
        job: JobState,
        ranks: list[RankState],
        now: float,
        threshold: float,
        period: float,
        key: str,
    ) -> Finding:
        hosts = sorted({rs.host for rs in ranks if rs.host})
        min_gap = min(now - rs.last_seen for rs in ranks)
        ids = [rs.rank for rs in ranks]
        shown = ", ".join(map(str, ids[:16])) + (", ..." if len(ids) > 16 else "")
        on = f" on {', '.join(hosts[:8])}" + ("..." if len(hosts) > 8 else "") if hosts else ""
        return Finding(
            rule=self.rule,
            rank=None,
            severity=self.config.severity,
            event_time=now,
            step=min(rs.last_step for rs in ranks) + 1,
            summary=(
                f"{len(ids)} ranks{on} silent for {min_gap:.0f}+ s while their peers kept "
                f"stepping (ranks {shown}): check those nodes"
            ),
            evidence={
                "silent_ranks": ids,
                "hosts": hosts,
                "threshold_s": round(threshold, 3),
                "job_max_step": job.max_step,
                "last_steps": {str(rs.rank): rs.last_step for rs in ranks[:64]},
                "typical_step_s": round(period, 4),
            },
            action=self.config.action,
            ranks=tuple(ids),
            incident_key=key,
        )


@dataclass(frozen=True, slots=True)
class ProgressHangConfig:
    """``hang``: no new step for ``max(min_stall_s, step_periods x typical step)``.

    120 s floor: longer than warm-up/compile steps and most checkpoint saves, five times
    shorter than NCCL's default 600 s watchdog, which is the point of detecting it here.
    ``watch_fraction``: events must have kept arriving for that part of the threshold, so a
    job that resumes after an outage (one jump of the clock) is not called hung.
    """

    min_stall_s: float = 120.0
    step_periods: float = 10.0
    watch_fraction: float = 0.5
    #: While the job says (or its trainer's log lines say) it is evaluating or saving a
    #: checkpoint, no step is expected: the stall must pass this bound instead (30 min).
    phase_stall_s: float = 1800.0
    severity: Severity = "critical"
    action: Action = "notify"
    max_named: int = 4  # ranks that never reported the last step, named when this few

    def __post_init__(self) -> None:
        _check_positive(
            min_stall_s=self.min_stall_s,
            step_periods=self.step_periods,
            phase_stall_s=self.phase_stall_s,
        )
        if not 0 <= self.watch_fraction <= 1:
            raise DetectorConfigError(
                f"watch_fraction must be in [0, 1], got {self.watch_fraction}"
            )


class ProgressHangDetector:
    """No rank progresses while events still arrive: the job is hung (job scope)."""

    name: ClassVar[str] = "progress_hang"
    rule: ClassVar[str] = "hang"

    def __init__(self, config: ProgressHangConfig | None = None) -> None:
        self.config = config or ProgressHangConfig()

    def new_job_state(self) -> dict[str, Any]:
        # watch: first tick seen while stalled; firing: the step it stalled at, or -1;
        # tick: the time of the last tick.
        return {**StepPeriod.new(), "watch": None, "firing": -1, "tick": None}

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        # Only the first rank to report a step moves the pace: the others skip the call.
        if event.step > state["ms"] and StepPeriod.observe(state, event):
            state["watch"] = None

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: StepFrame, events: Sequence[Any]
    ) -> None:
        """:meth:`on_step` of each row of a frame, in order."""
        if StepPeriod.observe_frame(state, frame, events):
            state["watch"] = None

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        cfg = self.config
        last = state["ms"]
        last_tick = state.get("tick")  # older snapshots lack it
        state["tick"] = now
        if last < 0:
            return ()
        if state["firing"] >= 0:
            if last > state["firing"]:
                state["firing"] = -1
                return (Resolution(self.rule, None, now, "", f"progress again: step {last}"),)
            return ()
        if now <= state["mt"]:
            return ()
        threshold = max(cfg.min_stall_s, cfg.step_periods * state["period"])
        gap = now - last_tick if last_tick is not None else 0.0
        if gap >= threshold:
            # The whole job said nothing for as long as the bound: it was down (a relaunch
            # loading its model logs, then steps) or its stream was; not hung while talking.
            # Wait for its next step.
            state["watch"] = _DOWN
        watch = state["watch"]
        if watch == _DOWN:
            return ()
        if watch is None or gap > cfg.watch_fraction * threshold:
            # Watch from here, the first tick of the stall or the first after a long silence:
            # events must keep arriving for a while.
            state["watch"] = watch = now
        if job.phase != "train":
            threshold = max(threshold, cfg.phase_stall_s)
        # A stall counts from the last step or the last change of phase, whichever is later:
        # the first step after an evaluation is a step's time after its end.
        stalled = now - max(state["mt"], job.phase_since)
        if stalled <= threshold or now - watch < cfg.watch_fraction * threshold:
            return ()
        state["firing"] = last
        return (self._finding(job, state, now, stalled, threshold),)

    def _finding(
        self, job: JobState, state: dict[str, Any], now: float, stalled: float, threshold: float
    ) -> Finding:
        last = state["ms"]
        behind = sorted(r for r, rs in job.ranks.items() if 0 <= rs.last_step < last)
        evidence: dict[str, Any] = {
            "last_step": last,
            "stalled_s": round(stalled, 3),
            "threshold_s": round(threshold, 3),
            "typical_step_s": round(state["period"], 4),
            "ranks_behind_count": len(behind),
        }
        hint = "check NCCL/watchdog logs and dump the ranks' stacks (py-spy)"
        if 1 <= len(behind) <= self.config.max_named:
            evidence["ranks_behind"] = behind
            names = ", ".join(
                f"{r}" + (f" ({h})" if (h := job.ranks[r].host) else "") for r in behind
            )
            hint = f"rank {names} never reported step {last}: start there"
        return Finding(
            rule=self.rule,
            rank=None,
            severity=self.config.severity,
            event_time=now,
            step=last + 1,
            summary=(
                f"No rank has progressed past step {last} for {stalled:.0f} s (typical step "
                f"{state['period']:.2f} s) while events still arrive: {hint}"
            ),
            evidence=evidence,
            action=self.config.action,
        )
