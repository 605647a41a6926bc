"""``gradient_vanishing``: gradients that died (a per-rank rule).

**gradient_vanishing** (:class:`GradientVanishing`, per rank): the global gradient norm falls
``ratio`` (100x) below its own level and stays there for ``persist_steps`` steps while the loss
stops improving. Training has stalled: nothing is learning. What must not fire:

- the first steps, whose norms are often 10-100x the later ones: ``warmup_steps`` reports are
  ignored and the level is seeded with the median of the next ``seed_steps``;
- healthy convergence: a norm that shrinks slowly is followed by the level (a slow EWMA of the
  log norm, ~``1 / alpha`` steps); one that shrinks fast while the loss keeps falling is judged
  by the loss: the collapsed steps are taken in blocks of ``persist_steps``, and each block
  after the first must lower the loss's mean by ``min_loss_improvement`` of it and by
  ``loss_z`` standard errors of its own noise, or the rank stalls (so with per-rank losses
  every rank decides alike, at the same block);
- a plateau alone (the norm stays where it was), fp16 overflow skips (non-finite norms are
  neutral) and isolated zero norms (a normal norm breaks the streak).

The norm is global: every rank of a DDP job reports the same one, so every rank fires at the
same step and the incident book makes them one job alert. Resolved when the norm is back within
``recover_ratio`` of its level for ``recover_steps`` steps.

Its cross-rank sibling, ``gradient_desync`` (ranks whose norms split), is in
:mod:`rankwatch.streams.detectors.gradient_desync`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import median
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
_isfinite = math.isfinite
_log = math.log

_ADVICE_VANISHING = (
    "check the learning rate (too small, or decayed to 0), dead ReLUs (activations stuck at "
    "zero), the initialisation, layers left frozen (requires_grad=False) and gradient clipping "
    "that is too aggressive"
)


@dataclass(frozen=True, slots=True)
class GradientVanishingConfig:
    """Thresholds of ``gradient_vanishing``."""

    #: A norm below the level / ``ratio`` has collapsed (two orders of magnitude).
    ratio: float = 100.0
    #: Consecutive collapsed steps (non-finite norms neutral) that make one block: a block
    #: whose loss did not improve on the block before fires (at the earliest the second).
    persist_steps: int = 25
    #: A block improves when its mean loss is this share below the previous block's ...
    min_loss_improvement: float = 0.01
    #: Norms ignored at the start (initial norms are often 10-100x the later ones).
    warmup_steps: int = 100
    #: Norms after the warm-up whose median seeds the level.
    seed_steps: int = 20
    #: EWMA weight of the level (of the log norm): ~200 steps.
    alpha: float = 0.005
    #: One update of the level moves it by at most ``clip`` x (a spike or a dip counts little).
    clip: float = 3.0
    #: ... and this many standard errors of the loss's own step-to-step noise (the ranks of a
    #: job with per-rank losses then agree on a flat loss, and fire at the same block).
    loss_z: float = 3.0
    #: EWMA weight of the loss's noise.
    loss_alpha: float = 0.05
    #: Resolved when the norm is within ``recover_ratio`` of the level ...
    recover_ratio: float = 10.0
    #: ... for this many consecutive steps.
    recover_steps: int = 5
    #: While the incident lasts, re-report it this often (event time) so it does not expire.
    refresh_s: float = 60.0
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.above_one(self, "ratio", self.ratio)
        check.count(self, "persist_steps", self.persist_steps)
        check.non_negative(self, "min_loss_improvement", self.min_loss_improvement)
        check.at_most(self, "min_loss_improvement", self.min_loss_improvement, 0.5, "0.5")
        check.count(self, "warmup_steps", self.warmup_steps, minimum=0)
        check.count(self, "seed_steps", self.seed_steps)
        check.fraction(self, "alpha", self.alpha)
        check.above_one(self, "clip", self.clip)
        check.non_negative(self, "loss_z", self.loss_z)
        check.fraction(self, "loss_alpha", self.loss_alpha)
        check.above_one(self, "recover_ratio", self.recover_ratio)
        check.at_most(self, "recover_ratio", self.recover_ratio, self.ratio, "ratio")
        check.count(self, "recover_steps", self.recover_steps)
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


@dataclass(slots=True)
class VanishingState:
    """Per-rank state: a dozen numbers and a list of at most ``seed_steps`` floats."""

    seen: int = 0  # norms seen, capped at warmup_steps
    seed: list[float] = field(default_factory=list)  # log norms collected to seed the level
    ready: bool = False
    level: float = 0.0  # EWMA of the log norm (valid when ready)
    loss_last: float = math.nan
    loss_step_dev: float = 0.0  # EWMA of |a loss - the one before|: its noise (1.128 s.d.)
    low: int = 0  # consecutive collapsed steps
    low_start: int = -1
    block_ref: float = math.nan  # the loss the current block must improve on
    block_sum: float = 0.0
    block_n: int = 0
    last_block: float = math.nan  # the mean loss of the block that fired (evidence)
    active: bool = False
    calm: int = 0
    reported_at: float = -math.inf


class GradientVanishing(PerRankRule[GradientVanishingConfig, VanishingState]):
    """The ``gradient_vanishing`` rule (a per-rank step detector)."""

    name: ClassVar[str] = "gradient_vanishing"
    config_type = GradientVanishingConfig
    state_type = VanishingState
    names_host = True

    def __init__(self, config: GradientVanishingConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self._log_ratio = math.log(c.ratio)
        self._log_recover = math.log(c.recover_ratio)
        self._log_clip = math.log(c.clip)

    def on_step(
        self, job: JobState, rank: RankState, state: VanishingState, event: StepEvent
    ) -> Iterable[Outcome]:
        g = event.gradient_norm
        if g is None:
            return _NOTHING
        s, c = state, self.config
        loss = event.loss
        if loss is not None and _isfinite(loss):
            last = s.loss_last
            if last == last:
                s.loss_step_dev += c.loss_alpha * (abs(loss - last) - s.loss_step_dev)
            s.loss_last = loss
        else:
            loss = None
        if not _isfinite(g) or g < 0:
            return _NOTHING  # an fp16 overflow skip: neither collapsed nor normal
        if not s.ready:
            # The level is seeded with the median log norm after the warm-up (zeros left out).
            seed = warmed_up(s, math.log(g) if g > 0 else None, c.warmup_steps, c.seed_steps)
            if seed:
                s.level = median(seed)
            return _NOTHING
        lg = math.log(g) if g > 0 else -math.inf
        if s.active:
            if lg < s.level - self._log_recover:
                s.calm = 0
                if self._due(s, event.epoch):
                    return (self._finding(rank, s, g, event),)
                return _NOTHING
            if not settled(s, c.recover_steps):
                return _NOTHING
            s.low = 0
            return self._resolution(
                rank,
                event,
                f"gradient norm back to {g:.3g} (level {math.exp(s.level):.3g}) at step "
                f"{event.step}",
            )
        if lg >= s.level - self._log_ratio:
            # The common path: a normal norm ends any streak and feeds the level.
            s.low = 0
            lo, hi = s.level - self._log_clip, s.level + self._log_clip
            s.level += c.alpha * ((lo if lg < lo else hi if lg > hi else lg) - s.level)
            return _NOTHING
        if s.low == 0:
            s.low_start, s.block_ref, s.block_sum, s.block_n = event.step, math.nan, 0.0, 0
        s.low += 1
        if loss is not None:
            s.block_sum += loss
            s.block_n += 1
        if s.low % c.persist_steps:
            return _NOTHING
        # A block of collapsed steps is over: did the loss improve over it?
        ref = s.block_ref
        mean = s.block_sum / s.block_n if s.block_n else math.nan
        n = s.block_n
        s.block_ref, s.block_sum, s.block_n = mean, 0.0, 0
        if mean != mean or ref != ref:
            return _NOTHING  # the first block, or no loss: a small norm alone is not a stall
        # Two means of n noisy losses differ by sigma * sqrt(2 / n) by chance alone.
        noise = c.loss_z * s.loss_step_dev / 1.128 * math.sqrt(2.0 / n)
        if ref - mean > max(c.min_loss_improvement * abs(ref), noise):
            return _NOTHING  # still learning: healthy convergence
        s.last_block = mean
        self._due(s, event.epoch)  # not open here: this opens it
        return (self._finding(rank, s, g, event, ref),)

    def on_frame(self, job: JobState, table: RankTable[Any], frame: StepFrame) -> FrameFindings:
        """``on_step`` for every row of a frame: in vector operations the rows that only fold
        into the state (overflow skips, the ignored warm-up reports, normal norms of ranks with
        no open incident), with the same arithmetic in the same order; the rest (the seeding,
        collapsed norms, open incidents) by ``on_step`` itself."""
        column = frame.metric("gradient_norm")
        if column is None:
            return []  # on_step returns at once without a norm: not even the loss is read
        g, present = column
        c = self.config
        ranks = frame.ranks
        seen, ready, level, active = gather(table, frame, "seen", "ready", "level", "active")
        with np.errstate(invalid="ignore"):
            finite = present & np.isfinite(g)
            negative = finite & (g < 0.0)
            # An fp16 overflow skip (or a negative norm): neutral, only the loss is folded in.
            skipped = (present & ~finite) | negative
            # The first warmup_steps reports are only counted (the seed list stays scalar:
            # an object column, and a median).
            counting = finite & ~negative & ~ready & (seen < c.warmup_steps)
            candidate = finite & (g > 0.0) & ready & ~active
        idx = np.flatnonzero(candidate)
        # math.log, not np.log: numpy's SIMD log differs from libm's in the last bit for some
        # inputs (213 in a million on an AVX-512 CPU), and the level must be bit-identical.
        lg = np.fromiter(map(_log, g[idx].tolist()), dtype=np.float64, count=len(idx))
        lvl = level[idx]
        normal = lg >= lvl - self._log_ratio
        idx, lg, lvl = idx[normal], lg[normal], lvl[normal]
        lo, hi = lvl - self._log_clip, lvl + self._log_clip
        x = np.where(lg < lo, lo, np.where(lg > hi, hi, lg))
        healthy = ranks[idx]
        table.column("level")[healthy] = lvl + c.alpha * (x - lvl)
        table.column("low")[healthy] = 0
        table.column("seen")[ranks[counting]] = seen[counting] + 1
        common = skipped | counting
        common[idx] = True
        self._fold_losses(table, frame, common)
        return scalar_rows(self, job, table, frame, np.flatnonzero(present & ~common))

    def _fold_losses(
        self, table: RankTable[Any], frame: StepFrame, rows: npt.NDArray[np.bool_]
    ) -> None:
        """The loss part of ``on_step`` on the given rows (a mask): a finite loss updates the
        noise EWMA (once there is a loss before it) and becomes the last loss."""
        column = frame.metric("loss")
        if column is None:
            return
        loss, present = column
        with np.errstate(invalid="ignore", over="ignore"):
            take = rows & present & np.isfinite(loss)
            ranks = frame.ranks[take]
            loss = loss[take]
            last = table.column("loss_last")[ranks]
            dev = table.column("loss_step_dev")[ranks]
            moved = dev + self.config.loss_alpha * (np.abs(loss - last) - dev)
        table.column("loss_step_dev")[ranks] = np.where(last == last, moved, dev)
        table.column("loss_last")[ranks] = loss

    def _finding(
        self,
        rank: RankState,
        s: VanishingState,
        g: float,
        event: StepEvent,
        loss_ref: float = math.nan,
    ) -> Finding:
        level = math.exp(s.level)
        norm = f"{g:.3g} ({level / g:.0f}x below its level {level:.3g})" if g > 0 else "0"
        loss = (
            f"the loss not improving ({loss_ref:.4g} -> {s.last_block:.4g})"
            if loss_ref == loss_ref
            else f"the loss still not improving ({s.last_block:.4g})"
        )
        return self._report(
            rank,
            event.epoch,
            s.low_start,
            f"gradient norm {norm} for {s.low} steps since step {s.low_start}, with {loss}: "
            f"training has stalled; {_ADVICE_VANISHING}",
            {
                "gradient_norm": g,
                "level": level,
                "threshold": level / self.config.ratio,
                "collapsed_steps": s.low,
                "loss_before": loss_ref,
                "loss_now": s.last_block,
                "step": event.step,
            },
        )
