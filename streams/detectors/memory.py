"""``memory_growth``: GPU memory growing monotonically over a window, through allocator noise.

Raw memory readings are useless step to step: the caching allocator produces a sawtooth
(activations pile up within a step or an accumulation cycle and are released), readings are
sampled at arbitrary points of it, and a rank that sits at 98% is simply full, not leaking.
A leak shows in the *lows*: what is left after each release keeps rising.

So the stream is cut into windows of ``window_steps`` reports and only each window's minimum is
kept. The rule fires when the last ``windows`` minima each rose by more than a noise margin
(``min_rise_mb``) and the rise since the streak began is meaningful: at least ``min_total_mb``,
``min_total_fraction`` of the level, and ``noise_z`` standard deviations of the minima's own
noise. That noise is estimated from the minima's *second* differences, which a steady leak does
not move (a leak is a constant first difference), so a leak cannot hide itself by raising it.
The streak can be longer than ``windows``: a slow leak fires once it has added up, a fast one
(+50 MB/step) within ~4 windows (a few dozen steps). A sawtooth whose period fits in a window
leaves the minima flat, so it never counts. (A leak much slower than the noise of the minima
never shows a clean streak; it is out of reach of this rule by design.)

The series is ``gpu_memory_allocated_mb`` if reported, else ``gpu_memory_reserved_mb``, else
``gpu_memory_usage`` (percent, with the ``*_pct`` margins). A switch of series starts over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Finding, Outcome, Resolution

_NOTHING: tuple[()] = ()
_INF = math.inf

# The series, in order of preference: allocated is the truest view of live tensors; reserved
# includes the allocator's cache; percent (nvidia-smi) is coarsest.
_ALLOCATED, _RESERVED, _PERCENT = 1, 2, 3
# For white noise of s.d. sigma in the minima, E|second difference| = sqrt(6) sigma sqrt(2/pi)
# and a first difference has s.d. sqrt(2) sigma: the ratio of the two.
_DIFF_SD_PER_MEAN_ABS_D2 = math.sqrt(2) / (math.sqrt(6) * math.sqrt(2 / math.pi))
_NOISE_SEED = 4  # second differences averaged before the EWMA takes over
_NOISE_ALPHA = 0.1
_SERIES = {
    _ALLOCATED: "gpu_memory_allocated_mb",
    _RESERVED: "gpu_memory_reserved_mb",
    _PERCENT: "gpu_memory_usage",
}


@dataclass(frozen=True, slots=True)
class MemoryGrowthConfig:
    """Thresholds of ``memory_growth`` (seed rule: +50 MB every step with no release)."""

    #: Reports per window; a sawtooth with a period up to this long leaves the minima flat.
    window_steps: int = 10
    #: Window minima that must each rise over the one before (``windows - 1`` rises).
    windows: int = 4
    #: Reports ignored at the start: optimizer state and the allocator's pool grow then.
    warmup_steps: int = 20
    #: A window minimum counts as a rise only above the previous one by more than this.
    min_rise_mb: float = 8.0
    #: Total rise over the streak must reach ``min_total_mb`` ...
    min_total_mb: float = 256.0
    #: ... and this fraction of the level (1% of an 80 GB card is 800 MB).
    min_total_fraction: float = 0.01
    #: The same two margins for the percent series, in percentage points.
    min_rise_pct: float = 0.05
    min_total_pct: float = 1.0
    #: ... and ``noise_z`` x the standard deviation of the difference of two window minima.
    noise_z: float = 5.0
    #: Resolved after this many windows in a row whose low is no new high (beyond noise).
    recover_windows: int = 3
    #: While the incident lasts, re-report it this often (event time) so it does not expire.
    refresh_s: float = 60.0
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.count(self, "window_steps", self.window_steps, minimum=2)
        check.count(self, "windows", self.windows, minimum=2)
        check.count(self, "warmup_steps", self.warmup_steps, minimum=0)
        check.non_negative(self, "min_rise_mb", self.min_rise_mb)
        check.positive(self, "min_total_mb", self.min_total_mb)
        check.non_negative(self, "min_total_fraction", self.min_total_fraction)
        check.non_negative(self, "min_rise_pct", self.min_rise_pct)
        check.positive(self, "min_total_pct", self.min_total_pct)
        check.non_negative(self, "noise_z", self.noise_z)
        check.count(self, "recover_windows", self.recover_windows)
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


@dataclass(slots=True)
class MemoryState:
    """Per-rank state: a dozen numbers and the last ``windows`` window minima."""

    series: int = 0  # which field the numbers below are in (_ALLOCATED, ...); 0 = none yet
    seen: int = 0  # reports of this series seen, capped at warmup_steps
    win_min: float = _INF  # minimum of the window being filled
    win_min_step: int = -1
    win_n: int = 0
    prev_min: float = math.nan  # minimum of the last closed window
    prev_step: int = -1
    rises: int = 0  # consecutive closed windows whose minimum rose
    start_min: float = 0.0  # minimum just before the streak of rises
    start_step: int = -1
    minima: list[float] = field(default_factory=list)  # last `windows` closed-window minima
    prev_delta: float = math.nan  # last difference of consecutive minima
    noise: float = 0.0  # mean |second difference| of the minima (trend-free noise)
    noise_n: int = 0
    active: bool = False
    peak: float = 0.0  # highest window minimum of the open incident
    calm: int = 0  # closed windows in a row without a new peak while active
    reported_at: float = -math.inf


class MemoryGrowth:
    """The ``memory_growth`` rule (a per-rank step detector)."""

    name: ClassVar[str] = "memory_growth"

    def __init__(self, config: MemoryGrowthConfig | None = None) -> None:
        self.config = config or MemoryGrowthConfig()

    def new_rank_state(self) -> MemoryState:
        return MemoryState()

    def on_step(
        self, job: JobState, rank: RankState, state: MemoryState, event: StepEvent
    ) -> Iterable[Outcome]:
        v = event.gpu_memory_allocated_mb
        series = _ALLOCATED
        if v is None:
            v = event.gpu_memory_reserved_mb
            series = _RESERVED
            if v is None:
                v = event.gpu_memory_usage
                series = _PERCENT
                if v is None:
                    return _NOTHING
        s = state
        if series != s.series:
            self._start_over(s, series)
        c = self.config
        if s.seen < c.warmup_steps:
            s.seen += 1
            return _NOTHING
        if v < s.win_min:
            s.win_min = v
            s.win_min_step = event.step
        s.win_n += 1
        if s.win_n < c.window_steps:
            return _NOTHING
        return self._close_window(rank, s, event)

    @staticmethod
    def _start_over(s: MemoryState, series: int) -> None:
        fresh = MemoryState(series=series)
        for name in MemoryState.__slots__:
            setattr(s, name, getattr(fresh, name))

    def _close_window(self, rank: RankState, s: MemoryState, event: StepEvent) -> Iterable[Outcome]:
        """Once per ``window_steps`` reports: compare this window's low with the last one's."""
        c = self.config
        low, low_step = s.win_min, s.win_min_step
        s.win_min, s.win_n = _INF, 0
        minima = s.minima
        if len(minima) >= c.windows:
            del minima[0]
        minima.append(low)
        prev, prev_step = s.prev_min, s.prev_step
        s.prev_min, s.prev_step = low, low_step
        if prev != prev:  # nan: the first window, nothing to compare with
            return _NOTHING
        delta = low - prev
        self._learn_noise(s, delta)
        percent = s.series == _PERCENT
        margin = c.min_rise_pct if percent else c.min_rise_mb
        rising = delta > margin
        if rising:
            if s.rises == 0:
                s.start_min, s.start_step = prev, prev_step
            s.rises += 1
        else:
            s.rises = 0
        if s.active:
            # Over when the lows stop making new highs (beyond noise), not when one window
            # happens to dip: noisy minima go up as often as down once the leak has stopped.
            if low > s.peak + max(margin, 2.0 * _DIFF_SD_PER_MEAN_ABS_D2 * s.noise):
                s.peak = low
                s.calm = 0
            else:
                s.calm += 1
                if s.calm >= c.recover_windows:
                    return self._resolve(rank, s, low, event)
        if not rising:
            return _NOTHING
        if s.rises < c.windows - 1:
            return _NOTHING
        total = low - s.start_min
        need = c.min_total_pct if percent else max(c.min_total_mb, c.min_total_fraction * low)
        if total < need or total < c.noise_z * _DIFF_SD_PER_MEAN_ABS_D2 * s.noise:
            return _NOTHING
        now = event.epoch
        if s.active:
            if now - s.reported_at < c.refresh_s:
                return _NOTHING
        else:
            s.active = True
            s.peak = low
            s.calm = 0
        s.reported_at = now
        return (self._finding(rank, s, low, low_step, event, now),)

    @staticmethod
    def _learn_noise(s: MemoryState, delta: float) -> None:
        """Track the mean absolute second difference of the minima (a mean, then an EWMA)."""
        last = s.prev_delta
        s.prev_delta = delta
        if last != last:
            return
        d2 = abs(delta - last)
        n = s.noise_n
        if n < _NOISE_SEED:
            s.noise += (d2 - s.noise) / (n + 1)
            s.noise_n = n + 1
            return
        cap = 3.0 * s.noise  # one step change of the level gives two big d2: clip them
        if s.noise > 0.0 and d2 > cap:
            d2 = cap
        s.noise += _NOISE_ALPHA * (d2 - s.noise)

    def _resolve(
        self, rank: RankState, s: MemoryState, low: float, event: StepEvent
    ) -> Iterable[Outcome]:
        s.active = False
        s.calm = 0
        s.reported_at = -math.inf
        unit = "%" if s.series == _PERCENT else " MB"
        return (
            Resolution(
                rule=self.name,
                rank=rank.rank,
                event_time=event.epoch,
                summary=(
                    f"rank {rank.rank}: GPU memory stopped growing (low {low:.0f}{unit} "
                    f"for {self.config.recover_windows} windows) at step {event.step}"
                ),
            ),
        )

    def _finding(
        self,
        rank: RankState,
        s: MemoryState,
        low: float,
        low_step: int,
        event: StepEvent,
        now: float,
    ) -> Finding:
        c = self.config
        r = rank.rank
        total = low - s.start_min
        steps = low_step - s.start_step
        slope = total / steps if steps > 0 else math.nan
        series = _SERIES[s.series]
        unit = "%" if s.series == _PERCENT else " MB"
        summary = (
            f"rank {r}: GPU memory lows rose {s.rises} windows in a row since step "
            f"{s.start_step}, {s.start_min:.0f}{unit} -> {low:.0f}{unit} "
            f"(+{slope:.3g}{unit}/step, {series}); likely a leak: tensors kept across steps "
            f"(a loss without .item(), a growing cache or list), it will run out of memory"
        )
        return Finding(
            rule=self.name,
            rank=r,
            severity=c.severity,
            event_time=now,
            summary=summary,
            step=s.start_step,
            evidence={
                "series": series,
                "window_minima": list(s.minima),
                "window_steps": c.window_steps,
                "start_minimum": s.start_min,
                "current_minimum": low,
                "rise": total,
                "rising_windows": s.rises,
                "slope_per_step": slope,
                "minima_diff_sd": _DIFF_SD_PER_MEAN_ABS_D2 * s.noise,
                "step": event.step,
            },
            action=c.action,
        )
