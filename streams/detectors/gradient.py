"""``gradient_explosion``: the gradient norm is non-finite, or spiking far above its recent level.

The trap is mixed precision. With fp16/AMP a loss scaler multiplies the loss before backward;
when the scaled gradients overflow, the norm comes out inf/nan, the scaler *skips* the step and
halves the scale. That is routine:

- once in a while during training (the scaler probes a larger scale every ~1-2k steps and
  overflows once), followed by normal steps;
- many times in a row at the very start, while the scaler calibrates (DeepSpeed starts at
  2**32 and halves once per skipped step, so a dozen or more consecutive overflows are normal).

So a non-finite norm fires only when it persists for ``nonfinite_steps`` consecutive steps after
the rank has reported a finite norm (calibration is over), or at once when the loss is
non-finite too (then it is not a skip: the forward pass itself is broken). Startup overflows
fire only past ``startup_overflow_steps`` (the scaler has hit its floor; training is stuck).

A finite spike fires only when it is large (``ratio`` x the running level, default 10x: norms
are heavy-tailed and 3-5x spikes are ordinary) and sustained for ``spike_steps`` steps.
Non-finite steps neither feed the level nor break a spike run.
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
_NOTHING: tuple[()] = ()


@dataclass(frozen=True, slots=True)
class GradientExplosionConfig:
    """Thresholds of ``gradient_explosion``."""

    #: Consecutive non-finite norms (with a finite loss) before firing. A dynamic loss scaler
    #: skips a step and halves its scale at each: after a probe of a larger scale, or a jump
    #: of the gradients, a few skips in a row are healthy (DeepSpeed's hysteresis takes two);
    #: six is the scale cut 64x, a scaler losing ground, not calibrating.
    nonfinite_steps: int = 6
    #: Consecutive non-finite norms tolerated before the first finite one (scaler calibration).
    startup_overflow_steps: int = 40
    #: A spike is a finite norm above ``ratio`` x the running level ...
    ratio: float = 10.0
    #: ... for this many consecutive steps.
    spike_steps: int = 2
    #: Finite norms averaged before the spike rule arms (early norms fall fast).
    warmup_steps: int = 20
    #: EWMA weight of the running level.
    alpha: float = 0.05
    #: Each update of the level is clipped at ``clip`` x the level, so a 9x spike that does not
    #: count still cannot drag the level up by much.
    clip: float = 3.0
    #: Resolved when the norm is finite and within ``recover_ratio`` x the level ...
    recover_ratio: float = 3.0
    #: ... for this many consecutive steps.
    recover_steps: int = 3
    #: While the incident lasts, re-report it this often (event time) so it does not expire.
    refresh_s: float = 60.0
    #: A warning: clipping and the loss scaler often absorb it; ``loss_explosion`` pauses the
    #: job when the loss itself goes.
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.count(self, "nonfinite_steps", self.nonfinite_steps)
        check.count(self, "startup_overflow_steps", self.startup_overflow_steps)
        check.above_one(self, "ratio", self.ratio)
        check.count(self, "spike_steps", self.spike_steps)
        check.count(self, "warmup_steps", self.warmup_steps)
        check.fraction(self, "alpha", self.alpha)
        check.above_one(self, "clip", self.clip)
        check.above_one(self, "recover_ratio", self.recover_ratio)
        check.at_most(self, "recover_ratio", self.recover_ratio, self.ratio, "ratio")
        check.count(self, "recover_steps", self.recover_steps)
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


@dataclass(slots=True)
class GradientState:
    """Per-rank state: a dozen numbers."""

    level: float = 0.0  # running level of finite, non-spike norms (valid when n > 0)
    n: int = 0  # norms taken into the level, capped at warmup_steps
    last_ok: float = math.nan  # last finite, non-spike norm
    calibrated: bool = False  # a finite norm has been seen: the loss scaler has settled
    nonfinite: int = 0  # consecutive non-finite norms
    nonfinite_start: int = -1
    spikes: int = 0  # consecutive finite spikes (non-finite steps in between are neutral)
    spike_start: int = -1
    active: bool = False
    calm: int = 0
    reported_at: float = -math.inf


class GradientExplosion(PerRankRule[GradientExplosionConfig, GradientState]):
    """The ``gradient_explosion`` rule (a per-rank step detector)."""

    name: ClassVar[str] = "gradient_explosion"
    config_type = GradientExplosionConfig
    state_type = GradientState

    def on_step(
        self, job: JobState, rank: RankState, state: GradientState, event: StepEvent
    ) -> Iterable[Outcome]:
        g = event.gradient_norm
        if g is None:
            return _NOTHING
        s = state
        c = self.config
        if _isfinite(g):
            s.nonfinite = 0
            s.calibrated = True
            level = s.level
            if s.n >= c.warmup_steps and level > 0.0 and g > level * c.ratio:
                if s.spikes == 0:
                    s.spike_start = event.step
                s.spikes += 1
                s.calm = 0
                if s.spikes >= c.spike_steps:
                    return self._bad(rank, s, g, event, s.spike_start)
                return _NOTHING
            # The common path: an ordinary norm. Fold it into the level.
            s.spikes = 0
            s.last_ok = g
            n = s.n
            if n < c.warmup_steps:
                s.level = level + (g - level) / (n + 1)
                s.n = n + 1
            else:
                cap = level * c.clip
                s.level = level + c.alpha * ((g if g < cap else cap) - level)
            if s.active:
                return self._recovering(rank, s, g, event)
            return _NOTHING
        # Non-finite norm: an overflow skip, unless it persists or the loss went with it.
        if s.nonfinite == 0:
            s.nonfinite_start = event.step
        s.nonfinite += 1
        s.calm = 0
        loss = event.loss
        if (
            (loss is not None and not _isfinite(loss))
            or (s.calibrated and s.nonfinite >= c.nonfinite_steps)
            or s.nonfinite >= c.startup_overflow_steps
        ):
            return self._bad(rank, s, g, event, s.nonfinite_start)
        return _NOTHING

    def on_frame(self, job: JobState, table: RankTable[Any], frame: StepFrame) -> FrameFindings:
        """``on_step`` for every row of a frame: in vector operations (the same arithmetic, in
        the same order), the ordinary finite norms of ranks with no open incident, and the
        non-finite norms that only count as an overflow skip (a loss-scaler calibration hits
        every rank at once, for dozens of steps); the rest by ``on_step`` itself."""
        column = frame.metric("gradient_norm")
        if column is None:
            return []
        g, present = column
        c = self.config
        ranks = frame.ranks
        level, n, active, calibrated, nonfinite, nonfinite_start = gather(
            table, frame, "level", "n", "active", "calibrated", "nonfinite", "nonfinite_start"
        )
        with np.errstate(invalid="ignore", over="ignore"):
            isfinite = np.isfinite(g)
            finite = present & isfinite
            warm = n >= c.warmup_steps
            spike = warm & (level > 0.0) & (g > level * c.ratio)
            # Ordinary norms; an open incident's rows go to on_step, which counts calm steps.
            steady = finite & ~spike & ~active
            cap = level * c.clip
            new_level = np.where(
                warm,
                level + c.alpha * (np.where(g < cap, g, cap) - level),
                level + (g - level) / (n + 1),
            )
        rows = ranks[steady]
        table.column("level")[rows] = new_level[steady]
        early = steady & ~warm
        table.column("n")[ranks[early]] = n[early] + 1
        table.column("nonfinite")[rows] = 0
        table.column("calibrated")[rows] = True
        table.column("spikes")[rows] = 0
        table.column("last_ok")[rows] = g[steady]
        # Non-finite norms that confirm nothing: a skip. Ones that may confirm go to on_step.
        skip = present & ~isfinite
        count = nonfinite + 1
        confirms = (calibrated & (count >= c.nonfinite_steps)) | (count >= c.startup_overflow_steps)
        losses = frame.metric("loss")
        if losses is not None:
            loss, has_loss = losses
            confirms |= has_loss & ~np.isfinite(loss)
        skip &= ~confirms
        rows = ranks[skip]
        table.column("nonfinite_start")[rows] = np.where(
            nonfinite[skip] == 0, frame.steps[skip], nonfinite_start[skip]
        )
        table.column("nonfinite")[rows] = count[skip]
        table.column("calm")[rows] = 0
        return scalar_rows(self, job, table, frame, np.flatnonzero(present & ~steady & ~skip))

    def _bad(
        self, rank: RankState, s: GradientState, g: float, event: StepEvent, start: int
    ) -> Iterable[Outcome]:
        """The step confirms an explosion: open the incident, or refresh an open one."""
        now = event.epoch
        if self._due(s, now):
            return (self._finding(rank, s, g, event, start, now),)
        return _NOTHING

    def _recovering(
        self, rank: RankState, s: GradientState, g: float, event: StepEvent
    ) -> Iterable[Outcome]:
        c = self.config
        if g > s.level * c.recover_ratio:
            s.calm = 0
            return _NOTHING
        if not settled(s, c.recover_steps):
            return _NOTHING
        return self._resolution(
            rank,
            event,
            f"gradient norm back to {g:.4g} (level {s.level:.4g}) for {c.recover_steps} steps "
            f"at step {event.step}",
        )

    def _finding(
        self,
        rank: RankState,
        s: GradientState,
        g: float,
        event: StepEvent,
        start: int,
        now: float,
    ) -> Finding:
        level = s.level if s.n else math.nan
        loss = event.loss
        if not _isfinite(g):
            if loss is not None and not _isfinite(loss):
                why = f"with a {loss} loss"
            else:
                why = f"for {s.nonfinite} consecutive steps, more than loss-scale overflow skips"
            what = (
                f"gradient norm is {g} at step {event.step} {why} (was "
                f"{s.last_ok:.4g}); check the data batch, the learning rate and the loss scaler"
            )
            consecutive = s.nonfinite
        else:
            what = (
                f"gradient norm {g:.4g} is {g / level:.0f}x its recent level "
                f"{level:.4g} for {s.spikes} steps since step {start}; lower the learning "
                f"rate or tighten gradient clipping"
            )
            consecutive = s.spikes
        return self._report(
            rank,
            now,
            start,
            what,
            {
                "gradient_norm": g,
                "step": event.step,
                "loss": loss,
                "previous_gradient_norm": s.last_ok,
                "baseline_gradient_norm": level,
                "threshold": level * self.config.ratio,
                "consecutive_steps": consecutive,
            },
        )
