"""``throughput_drop``: the rank's recent throughput below 70% of its longer-run mean.

A drop that matters is one the job keeps paying: the input pipeline stalls, the interconnect
degrades, a GPU throttles. So two levels are kept per rank: the *recent* level (an EWMA over
about ``1 / recent_alpha`` = 5 steps) and the *baseline* (a slow EWMA over ~50 steps). The rule
fires when the recent level stays below ``drop_ratio`` x the baseline for ``drop_steps``
consecutive steps and at least ``drop_s`` seconds of event time. What normal training does that
must not fire:

- the first steps are slow (CUDA/NCCL init, ``torch.compile``, autotuning, the data loader
  filling its queue): the first ``warmup_steps`` reports are ignored, and the baseline is then
  seeded with the *median* of ``seed_steps`` reports, so one odd report there cannot skew it;
- a checkpoint save, a garbage-collection or logging pause on one rank (which every rank of a
  synchronous job waits for): one slow step moves the recent level by at most ``recent_alpha``
  x (1 - ``floor``), and a few in a row, each on another rank, are averaged with the steps
  around them instead of counted as a streak. Pauses that come often are part of the baseline;
- while the recent level is low the baseline is frozen, so a real drop does not become the new
  normal; reports far above the baseline are clipped for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors._per_rank import PerRankRule, settled, warmed_up
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Finding, Outcome
from rankwatch.streams.frames import FrameFindings, RankTable, StepFrame, gather, scalar_rows

_NOTHING: tuple[()] = ()


@dataclass(frozen=True, slots=True)
class ThroughputDropConfig:
    """Thresholds of ``throughput_drop`` (seed rule: < 70% of the previous mean for 3 steps)."""

    #: The recent level below ``drop_ratio`` x the baseline is low.
    drop_ratio: float = 0.7
    #: Consecutive low steps before firing ...
    drop_steps: int = 3
    #: ... spanning at least this much event time (a drop the job keeps paying for).
    drop_s: float = 5.0
    #: Reports ignored at the start: init, compile and warm-up steps.
    warmup_steps: int = 10
    #: Reports after the warm-up whose median seeds the baseline.
    seed_steps: int = 5
    #: EWMA weight of the baseline (~50 steps) ...
    alpha: float = 0.02
    #: ... and of the recent level (~5 steps).
    recent_alpha: float = 0.2
    #: A report enters the recent level at no less than ``floor`` x the baseline: one stalled
    #: step (a checkpoint save) cannot drag it down alone.
    floor: float = 0.3
    #: Reports above ``clip`` x the baseline are clipped there before the update.
    clip: float = 1.5
    #: Resolved after this many consecutive steps with the recent level back above the bar.
    recover_steps: int = 3
    #: While the incident lasts, re-report it this often (event time) so it does not expire.
    refresh_s: float = 60.0
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.fraction(self, "drop_ratio", self.drop_ratio)
        check.count(self, "drop_steps", self.drop_steps)
        check.non_negative(self, "drop_s", self.drop_s)
        check.count(self, "warmup_steps", self.warmup_steps, minimum=0)
        check.count(self, "seed_steps", self.seed_steps)
        check.fraction(self, "alpha", self.alpha)
        check.fraction(self, "recent_alpha", self.recent_alpha)
        check.fraction(self, "floor", self.floor)
        check.above_one(self, "clip", self.clip)
        check.count(self, "recover_steps", self.recover_steps)
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


@dataclass(slots=True)
class ThroughputState:
    """Per-rank state: a few numbers and two lists of at most a handful of floats."""

    seen: int = 0  # reports seen, capped at warmup_steps
    mean: float = 0.0  # the baseline; valid once ``seed`` is consumed (``ready``)
    ready: bool = False
    seed: list[float] = field(default_factory=list)  # reports collected to seed the baseline
    low: int = 0  # consecutive low steps
    low_start: int = -1
    recent_low: list[float] = field(default_factory=list)  # the last <= drop_steps low values
    active: bool = False
    calm: int = 0
    reported_at: float = -math.inf
    recent: float = 0.0  # the recent level
    low_since: float = math.inf  # event time of the first low step of the streak


class ThroughputDrop(PerRankRule[ThroughputDropConfig, ThroughputState]):
    """The ``throughput_drop`` rule (a per-rank step detector)."""

    name: ClassVar[str] = "throughput_drop"
    config_type = ThroughputDropConfig
    state_type = ThroughputState

    def on_step(
        self, job: JobState, rank: RankState, state: ThroughputState, event: StepEvent
    ) -> Iterable[Outcome]:
        x = event.throughput_tokens_per_sec
        if x is None:
            return _NOTHING
        s = state
        c = self.config
        if not s.ready:
            # The baseline is seeded with the median of the reports after the warm-up.
            seed = warmed_up(s, x, c.warmup_steps, c.seed_steps)
            if seed:
                s.mean = s.recent = seed[len(seed) // 2]
            return _NOTHING
        mean = s.mean
        recent = s.recent + c.recent_alpha * (max(x, mean * c.floor) - s.recent)
        s.recent = recent
        if recent >= mean * c.drop_ratio:
            # The common path. Clip a burst so it cannot lift the baseline past normal either.
            cap = mean * c.clip
            s.mean = mean + c.alpha * ((x if x < cap else cap) - mean)
            if s.low:
                s.low = 0
                s.recent_low.clear()
            if s.active:
                return self._recovering(rank, s, x, event)
            return _NOTHING
        # Low: counted, remembered for the evidence; the baseline stays where it was.
        now = event.epoch
        if s.low == 0:
            s.low_start = event.step
            s.low_since = now
        s.low += 1
        s.calm = 0
        lows = s.recent_low
        if len(lows) >= c.drop_steps:
            del lows[0]
        lows.append(x)
        if s.low < c.drop_steps or now - s.low_since < c.drop_s or not self._due(s, now):
            return _NOTHING
        return (self._finding(rank, s, x, event, now),)

    def on_frame(self, job: JobState, table: RankTable[Any], frame: StepFrame) -> FrameFindings:
        """``on_step`` for every row of a frame: in vector operations (the same arithmetic, in
        the same order) the rows that only fold the value into the state, that is the first
        ``warmup_steps`` reports (counted, nothing else) and the healthy steps of seeded ranks
        with no low streak and no open incident; the reports that collect the seed in one loop
        over the ranks' seed lists (:meth:`_collect_seeds`); the rest by ``on_step`` itself."""
        column = frame.metric("throughput_tokens_per_sec")
        if column is None:
            return []
        x, present = column
        c = self.config
        ranks = frame.ranks
        seen, ready, mean, recent, low, active = gather(
            table, frame, "seen", "ready", "mean", "recent", "low", "active"
        )
        seeded = present & ready
        # Seeded ranks with no streak to clear (a list) and no incident to close: the steps
        # that stay above the bar only move the two levels.
        quiet = seeded & ~active & (low == 0)
        with np.errstate(invalid="ignore", over="ignore"):
            floor = mean * c.floor
            # max(x, floor) as Python's max picks: the first one unless the second is larger.
            new_recent = recent + c.recent_alpha * (np.where(floor > x, floor, x) - recent)
            common = quiet & (new_recent >= mean * c.drop_ratio)
            cap = mean * c.clip
            new_mean = mean + c.alpha * (np.where(x < cap, x, cap) - mean)
        rows = ranks[common]
        table.column("recent")[rows] = new_recent[common]
        table.column("mean")[rows] = new_mean[common]
        warming = present & ~ready
        if warming.any():  # a job's first steps (the rows are other ranks' than the above)
            # A report among the first warmup_steps only counts (warmed_up's first branch);
            # the next ones are collected into the seed (its second).
            early = seen < c.warmup_steps
            ignored = warming & early
            table.column("seen")[ranks[ignored]] = seen[ignored] + 1
            seeding = warming & ~early
            if seeding.any():
                self._collect_seeds(table, ranks[seeding], x[seeding])
        # The rest: seeded ranks with a streak, an incident, or a step below the bar.
        rest = seeded & ~common
        return scalar_rows(self, job, table, frame, np.flatnonzero(rest))

    def _collect_seeds(
        self, table: RankTable[Any], ranks: npt.NDArray[np.int64], x: npt.NDArray[np.float64]
    ) -> None:
        """What ``on_step`` does with a report after the warm-up while the baseline is not
        seeded yet (``warmed_up``'s second branch): the value appended to the rank's seed list,
        and once there are ``seed_steps`` the baseline seeded with their median. One loop over
        the lists (they are the table's own objects) instead of a scalar row each: these rows
        are every rank's ``seed_steps`` reports after the warm-up, a whole frame at a time.
        A report never finds anything here, so there is nothing to return."""
        need = self.config.seed_steps
        done: list[int] = []
        medians: list[float] = []
        for r, value, seed in zip(
            ranks.tolist(), x.tolist(), table.column("seed")[ranks].tolist(), strict=True
        ):
            seed.append(value)
            if len(seed) >= need:
                ordered = sorted(seed)
                seed.clear()
                done.append(r)
                medians.append(ordered[len(ordered) // 2])
        if done:
            table.column("ready")[done] = True
            table.column("mean")[done] = medians
            table.column("recent")[done] = medians

    def _recovering(
        self, rank: RankState, s: ThroughputState, x: float, event: StepEvent
    ) -> Iterable[Outcome]:
        if not settled(s, self.config.recover_steps):
            return _NOTHING
        return self._resolution(
            rank,
            event,
            f"throughput back to {s.recent:.0f} tokens/s (mean {s.mean:.0f}) at step {event.step}",
        )

    def _finding(
        self, rank: RankState, s: ThroughputState, x: float, event: StepEvent, now: float
    ) -> Finding:
        mean = s.mean
        where = f" on {rank.host}" if rank.host else ""
        what = (
            f"throughput {s.recent:.0f} tokens/s over its recent steps is "
            f"{s.recent / mean:.0%} of its mean {mean:.0f}, for {s.low} steps "
            f"({now - s.low_since:.0f} s) since step {s.low_start}; look for NCCL timeouts, "
            f"a slow data loader or a throttled GPU{where}"
        )
        return self._report(
            rank,
            now,
            s.low_start,
            what,
            {
                "throughput_tokens_per_sec": x,
                "recent_level": s.recent,
                "recent_mean": mean,
                "threshold": mean * self.config.drop_ratio,
                "recent_values": list(s.recent_low),
                "consecutive_steps": s.low,
                "step": event.step,
            },
        )
