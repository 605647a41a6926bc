"""``loss_explosion``: the loss is non-finite, or far above its recent level and staying there.

Two ways in:

- a non-finite loss (nan/inf) fires at once: the weights are about to be (or already are)
  poisoned, and every further step is wasted compute;
- a finite loss above a threshold for ``sustain_steps`` consecutive steps, where the threshold
  is the absolute ``ceiling`` (the practitioners' "loss > 1e3 for 5 consecutive steps") or
  ``ratio`` x the rank's robust running level, whichever is lower. One spike that comes back is
  ordinary noise (a hard batch, the LR warm-up), not an explosion, so a run must *stay* high.

The running level is an EWMA of finite losses that (a) excludes the steps counted as too high,
so an explosion does not drag its own baseline up, and (b) clips each update at ``clip`` x the
level, so a single 2-3x spike moves it by a few percent at most. During the first
``warmup_steps`` losses it is a plain mean and the ratio rule is off (losses fall fast early on).

fp16 loss-scale overflow skips report a normal, finite loss with a non-finite gradient norm:
nothing here looks at the gradient norm, so they never count (``gradient_explosion`` owns them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors._per_rank import PerRankRule, settled
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Finding, Outcome
from rankwatch.streams.frames import FrameFindings, RankTable, StepFrame, gather, scalar_rows

_isfinite = math.isfinite
_INF = math.inf
_NOTHING: tuple[()] = ()


@dataclass(frozen=True, slots=True)
class LossExplosionConfig:
    """Thresholds of ``loss_explosion``; the defaults are what production runs tolerate."""

    #: Absolute ceiling (seed rule: loss > 1e3). Off while the run's own level is above it
    #: (a sum-reduced loss that normally sits at 5e3 is not exploding). ``inf`` turns it off.
    ceiling: float = 1e3
    #: Relative rule: loss above ``ratio`` x the running level (and at least ``min_rise`` above).
    ratio: float = 3.0
    #: Absolute floor of the rise, so a loss near zero going 0.01 -> 0.04 is not an explosion.
    min_rise: float = 0.5
    #: Consecutive steps above the threshold before firing (seed rule: 5).
    sustain_steps: int = 5
    #: Consecutive non-finite losses before firing; 1 = at once. Raise it for fp16 runs whose
    #: forward pass occasionally overflows and the scaler skips the step.
    nonfinite_steps: int = 1
    #: Finite losses averaged before the ratio rule arms.
    warmup_steps: int = 20
    #: EWMA weight of the running level (~1/alpha steps of memory).
    alpha: float = 0.05
    #: Each update of the level is clipped at ``clip`` x the level.
    clip: float = 2.0
    #: Resolved when the loss is finite and within ``recover_ratio`` x the level ...
    recover_ratio: float = 1.5
    #: ... for this many consecutive steps.
    recover_steps: int = 3
    #: While the incident lasts, re-report it this often (event time) so it does not expire.
    refresh_s: float = 60.0
    severity: Severity = "critical"
    action: Action = "pause_job"

    def __post_init__(self) -> None:
        check.positive(self, "ceiling", self.ceiling, allow_inf=True)
        check.above_one(self, "ratio", self.ratio)
        check.non_negative(self, "min_rise", self.min_rise)
        check.count(self, "sustain_steps", self.sustain_steps)
        check.count(self, "nonfinite_steps", self.nonfinite_steps)
        check.count(self, "warmup_steps", self.warmup_steps)
        check.fraction(self, "alpha", self.alpha)
        check.above_one(self, "clip", self.clip)
        check.above_one(self, "recover_ratio", self.recover_ratio)
        check.at_most(self, "recover_ratio", self.recover_ratio, self.ratio, "ratio")
        check.count(self, "recover_steps", self.recover_steps)
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


@dataclass(slots=True)
class LossState:
    """Per-rank state: a dozen numbers, persisted as they are."""

    level: float = 0.0  # running level of finite, not-too-high losses (valid when n > 0)
    n: int = 0  # losses taken into the level, capped at warmup_steps
    last_ok: float = math.nan  # last finite loss that was not too high: "(was 2.15)"
    bad: int = 0  # consecutive steps too high or non-finite
    nonfinite: int = 0  # consecutive non-finite losses
    start_step: int = -1  # first step of the current bad run
    active: bool = False  # an incident is open for this rank
    calm: int = 0  # consecutive recovered steps while active
    reported_at: float = -math.inf  # event time of the last finding


class LossExplosion(PerRankRule[LossExplosionConfig, LossState]):
    """The ``loss_explosion`` rule (a :class:`~rankwatch.streams.detectors.base.StepDetector`)."""

    name: ClassVar[str] = "loss_explosion"
    config_type = LossExplosionConfig
    state_type = LossState

    def threshold(self, s: LossState) -> float:
        """The loss above which a step counts as too high, given the rank's level now."""
        c = self.config
        if s.n == 0:
            return _INF
        level = s.level
        thr = c.ceiling if level < c.ceiling else _INF
        if s.n >= c.warmup_steps:
            # b + max(|b| (k-1), min_rise): k x b for a positive level, sane for a negative one.
            rel = level + max(abs(level) * (c.ratio - 1.0), c.min_rise)
            if rel < thr:
                thr = rel
        return thr

    def on_step(
        self, job: JobState, rank: RankState, state: LossState, event: StepEvent
    ) -> Iterable[Outcome]:
        loss = event.loss
        if loss is None:
            return _NOTHING
        s = state
        c = self.config
        finite = _isfinite(loss)
        if finite:
            # The common path, inlined (this runs for every step of every rank): a loss at
            # or below the threshold is healthy; fold it into the level, count calm steps.
            n = s.n
            level = s.level
            if n >= c.warmup_steps:
                if level > 0.0:
                    high = level * c.ratio
                    if high < level + c.min_rise:
                        high = level + c.min_rise
                else:
                    high = self.threshold(s)  # a negative level: rare, take the slow path
                if high > c.ceiling and level < c.ceiling:
                    high = c.ceiling
                if loss <= high:
                    cap = level * c.clip  # clip the update: one spike barely moves the level
                    x = cap if level > 0.0 and loss > cap else loss
                    s.level = level + c.alpha * (x - level)
                    return self._healthy(rank, s, loss, event)
            elif n == 0 or loss <= c.ceiling or level >= c.ceiling:
                s.level = level + (loss - level) / (n + 1)
                s.n = n + 1
                return self._healthy(rank, s, loss, event)
        # Too high or non-finite: the level is left alone (it stays the pre-incident one).
        if s.bad == 0:
            s.start_step = event.step
        s.bad += 1
        s.nonfinite = 0 if finite else s.nonfinite + 1
        s.calm = 0
        now = event.epoch
        confirmed = s.active or s.nonfinite >= c.nonfinite_steps or s.bad >= c.sustain_steps
        if confirmed and self._due(s, now):
            return (self._finding(rank, s, loss, event, now),)
        return _NOTHING

    def on_frame(self, job: JobState, table: RankTable[Any], frame: StepFrame) -> FrameFindings:
        """``on_step`` for every row of a frame: the healthy rows of ranks with no open
        incident in vector operations (the same arithmetic, in the same order), the rest by
        ``on_step`` itself."""
        column = frame.metric("loss")
        if column is None:
            return []
        loss, present = column
        c = self.config
        ranks = frame.ranks
        level, n, active = gather(table, frame, "level", "n", "active")
        with np.errstate(invalid="ignore", over="ignore"):
            finite = present & np.isfinite(loss) & ~active
            warm = n >= c.warmup_steps
            high = np.maximum(level * c.ratio, level + c.min_rise)
            high = np.where((high > c.ceiling) & (level < c.ceiling), c.ceiling, high)
            steady = finite & warm & (level > 0.0) & (loss <= high)
            early = finite & ~warm & ((n == 0) | (loss <= c.ceiling) | (level >= c.ceiling))
            cap = level * c.clip
            x = np.where((level > 0.0) & (loss > cap), cap, loss)
            new_level = np.where(
                steady, level + c.alpha * (x - level), level + (loss - level) / (n + 1)
            )
        common = steady | early
        rows = ranks[common]
        table.column("level")[rows] = new_level[common]
        table.column("n")[ranks[early]] = n[early] + 1
        table.column("bad")[rows] = 0
        table.column("nonfinite")[rows] = 0
        table.column("last_ok")[rows] = loss[common]
        return scalar_rows(self, job, table, frame, np.flatnonzero(present & ~common))

    def _healthy(
        self, rank: RankState, s: LossState, loss: float, event: StepEvent
    ) -> Iterable[Outcome]:
        s.bad = 0
        s.nonfinite = 0
        s.last_ok = loss
        if s.active:
            return self._recovering(rank, s, loss, event)
        return _NOTHING

    def _recovering(
        self, rank: RankState, s: LossState, loss: float, event: StepEvent
    ) -> Iterable[Outcome]:
        c = self.config
        level = s.level
        near = level + max(abs(level) * (c.recover_ratio - 1.0), c.min_rise)
        if loss > near:
            s.calm = 0
            return _NOTHING
        if not settled(s, c.recover_steps):
            return _NOTHING
        return self._resolution(
            rank,
            event,
            f"loss back to {loss:.4g} (level {level:.4g}) for {c.recover_steps} steps at step "
            f"{event.step}",
        )

    def _finding(
        self, rank: RankState, s: LossState, loss: float, event: StepEvent, now: float
    ) -> Finding:
        level = s.level if s.n else math.nan
        paused = ", pausing the job" if self.config.action == "pause_job" else ""
        if not _isfinite(loss):
            what = (
                f"loss is {loss} at step {event.step} (was {s.last_ok:.4g}); "
                f"check the data batch and learning rate{paused}"
            )
        else:
            what = (
                f"loss {loss:.4g} has stayed above {self.threshold(s):.4g} for "
                f"{s.bad} steps since step {s.start_step} (recent level {level:.4g}); the run "
                f"is diverging: lower the learning rate or restart from the last good "
                f"checkpoint{paused}"
            )
        return self._report(
            rank,
            now,
            s.start_step,
            what,
            {
                "loss": loss,
                "step": event.step,
                "previous_loss": s.last_ok,
                "baseline_loss": level,
                "threshold": self.threshold(s),
                "consecutive_steps": s.bad,
                "nonfinite_steps": s.nonfinite,
            },
        )
