"""``throughput_drop``: throughput below 70% of its recent mean for 3 or more consecutive steps.

What normal training does that must not fire:

- the first steps are slow (CUDA/NCCL init, ``torch.compile``, autotuning, the data loader
  filling its queue): the first ``warmup_steps`` reports are ignored, and the mean is then
  seeded with the *median* of ``seed_steps`` reports, so one odd report there cannot skew it;
- a checkpoint save slows one step of every rank: the 3-step rule ignores it, and a report
  below the threshold is never folded into the mean, so the slow step cannot drag the
  baseline down (which would hide a real drop that follows, or make the next normal step look
  like a spike). Reports far *above* the mean are clipped for the same reason.

The mean is an EWMA ("recent"), frozen while the rank is below the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors._calm import settled
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Finding, Outcome, Resolution

_NOTHING: tuple[()] = ()


@dataclass(frozen=True, slots=True)
class ThroughputDropConfig:
    """Thresholds of ``throughput_drop`` (seed rule: < 70% of the previous mean for 3 steps)."""

    #: A report below ``drop_ratio`` x the recent mean is low.
    drop_ratio: float = 0.7
    #: Consecutive low reports before firing; 1-2 are a checkpoint save or a GC pause.
    drop_steps: int = 3
    #: Reports ignored at the start: init, compile and warm-up steps.
    warmup_steps: int = 10
    #: Reports after the warm-up whose median seeds the mean.
    seed_steps: int = 5
    #: EWMA weight of the recent mean.
    alpha: float = 0.1
    #: Reports above ``clip`` x the mean are clipped there before the update.
    clip: float = 1.5
    #: Resolved after this many consecutive reports back at or above the threshold.
    recover_steps: int = 3
    #: While the incident lasts, re-report it this often (event time) so it does not expire.
    refresh_s: float = 60.0
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.fraction(self, "drop_ratio", self.drop_ratio)
        check.count(self, "drop_steps", self.drop_steps)
        check.count(self, "warmup_steps", self.warmup_steps, minimum=0)
        check.count(self, "seed_steps", self.seed_steps)
        check.fraction(self, "alpha", self.alpha)
        check.above_one(self, "clip", self.clip)
        check.count(self, "recover_steps", self.recover_steps)
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


@dataclass(slots=True)
class ThroughputState:
    """Per-rank state: a few numbers and two lists of at most a handful of floats."""

    seen: int = 0  # reports seen, capped at warmup_steps
    mean: float = 0.0  # recent mean; valid once ``seed`` is consumed (``ready``)
    ready: bool = False
    seed: list[float] = field(default_factory=list)  # reports collected to seed the mean
    low: int = 0  # consecutive low reports
    low_start: int = -1
    recent_low: list[float] = field(default_factory=list)  # the last <= drop_steps low values
    active: bool = False
    calm: int = 0
    reported_at: float = -math.inf


class ThroughputDrop:
    """The ``throughput_drop`` rule (a per-rank step detector)."""

    name: ClassVar[str] = "throughput_drop"

    def __init__(self, config: ThroughputDropConfig | None = None) -> None:
        self.config = config or ThroughputDropConfig()

    def new_rank_state(self) -> ThroughputState:
        return ThroughputState()

    def on_step(
        self, job: JobState, rank: RankState, state: ThroughputState, event: StepEvent
    ) -> Iterable[Outcome]:
        x = event.throughput_tokens_per_sec
        if x is None:
            return _NOTHING
        s = state
        c = self.config
        if not s.ready:
            self._warm_up(s, x)
            return _NOTHING
        mean = s.mean
        threshold = mean * c.drop_ratio
        if x >= threshold:
            # The common path. Clip a burst so it cannot lift the mean past normal either.
            cap = mean * c.clip
            s.mean = mean + c.alpha * ((x if x < cap else cap) - mean)
            if s.low:
                s.low = 0
                s.recent_low.clear()
            if s.active:
                return self._recovering(rank, s, x, event)
            return _NOTHING
        # Low: counted, remembered for the evidence, and kept out of the mean.
        if s.low == 0:
            s.low_start = event.step
        s.low += 1
        s.calm = 0
        lows = s.recent_low
        if len(lows) >= c.drop_steps:
            del lows[0]
        lows.append(x)
        if s.low < c.drop_steps:
            return _NOTHING
        now = event.epoch
        if s.active:
            if now - s.reported_at < c.refresh_s:
                return _NOTHING
        else:
            s.active = True
        s.reported_at = now
        return (self._finding(rank, s, x, event, now),)

    def _warm_up(self, s: ThroughputState, x: float) -> None:
        c = self.config
        if s.seen < c.warmup_steps:
            s.seen += 1
            return
        s.seed.append(x)
        if len(s.seed) >= c.seed_steps:
            ordered = sorted(s.seed)
            s.mean = ordered[len(ordered) // 2]
            s.ready = True
            s.seed.clear()

    def _recovering(
        self, rank: RankState, s: ThroughputState, x: float, event: StepEvent
    ) -> Iterable[Outcome]:
        if not settled(s, self.config.recover_steps):
            return _NOTHING
        return (
            Resolution(
                rule=self.name,
                rank=rank.rank,
                event_time=event.epoch,
                summary=(
                    f"rank {rank.rank}: throughput back to {x:.0f} tokens/s (mean "
                    f"{s.mean:.0f}) at step {event.step}"
                ),
            ),
        )

    def _finding(
        self, rank: RankState, s: ThroughputState, x: float, event: StepEvent, now: float
    ) -> Finding:
        c = self.config
        r = rank.rank
        mean = s.mean
        where = f" on {rank.host}" if rank.host else ""
        summary = (
            f"rank {r}: throughput {x:.0f} tokens/s is {x / mean:.0%} of its recent mean "
            f"{mean:.0f} for {s.low} steps since step {s.low_start}; look for NCCL timeouts, "
            f"a slow data loader or a throttled GPU{where}"
        )
        return Finding(
            rule=self.name,
            rank=r,
            severity=c.severity,
            event_time=now,
            summary=summary,
            step=s.low_start,
            evidence={
                "throughput_tokens_per_sec": x,
                "recent_mean": mean,
                "threshold": mean * c.drop_ratio,
                "recent_values": list(s.recent_low),
                "consecutive_steps": s.low,
                "step": event.step,
            },
            action=c.action,
        )
