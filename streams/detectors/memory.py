"""``memory_growth``: GPU memory growing steadily over many windows, through allocator noise.

Raw memory readings are useless step to step: the caching allocator produces a sawtooth
(activations pile up within a step or an accumulation cycle and are released), readings are
sampled at arbitrary points of it, and a rank that sits at 98% is simply full, not leaking.
A leak shows in the *lows*: what is left after each release keeps rising.

So the stream is cut into windows of ``window_steps`` reports and only each window's minimum is
kept, the last ``windows`` of them. Their trend is the Theil-Sen slope (the median of the
slopes between every pair: one odd window cannot tilt it), and their noise the robust spread of
what is left around that line (1.4826 x the median absolute residual), so each rank is judged
against the noise its own memory shows. The trend is *significant* when the rise it fits over
the windows is at least ``noise_z`` of those deviations; the rule fires when a significant
trend has added up, since it began, to something that matters: ``min_total_mb`` and
``min_total_fraction`` of the level. A fast leak (+50 MB/step) fires within ~5 windows, a slow
one once it has added up; a sawtooth whose period fits in a window leaves the lows flat, a
one-time step up (a new buffer) fits no line, and white noise or a slow wave of the allocator
moves the lows by less than their own spread. (A leak much slower than the noise of the lows is
out of reach by design.)

The series is ``gpu_memory_allocated_mb`` if reported, else ``gpu_memory_reserved_mb``, else
``gpu_memory_usage`` (percent, with the ``*_pct`` margins). A switch of series starts over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors._per_rank import PerRankRule, settled
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome
from rankwatch.streams.frames import FrameFindings, RankTable, StepFrame, gather, scalar_rows

_NOTHING: tuple[()] = ()
_INF = math.inf

# The series, in order of preference: allocated is the truest view of live tensors; reserved
# includes the allocator's cache; percent (nvidia-smi) is coarsest.
_ALLOCATED, _RESERVED, _PERCENT = 1, 2, 3
_MAD_TO_SD = 1.4826  # a normal distribution's s.d. per median absolute deviation
# The residual spread of a Theil-Sen fit to n points underestimates their s.d. (the line takes
# some of it): this factor undoes that for n = 4..16 (measured: 40,000 fits of normal noise).
_UNBIAS = {4: 1.847, 5: 1.727, 6: 1.553, 7: 1.359, 8: 1.314, 9: 1.25, 10: 1.221, 11: 1.183,
           12: 1.17, 13: 1.149, 14: 1.142, 15: 1.124, 16: 1.117}  # fmt: skip
# For white noise of s.d. sigma, E|second difference| = sqrt(6) sigma sqrt(2/pi).
_ABS_D2_PER_SD = math.sqrt(6) * math.sqrt(2 / math.pi)
_D2_SEED = 16  # second differences averaged plainly before the EWMA takes over
_D2_ALPHA = 0.05
_D2_EFFECTIVE = 40  # about as many samples as the EWMA averages over (2 / alpha)
_MIN_FIT = 8  # window minima before a first fit (then up to ``windows`` of them)
_D2_BEFORE_JUDGING = 10  # second differences seen before a trend may be called significant
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
    #: Window minima the trend is fitted over (from 8, as they come): a long span sees a leak
    #: that each window's noise hides.
    windows: int = 16
    #: Reports ignored at the start: optimizer state and the allocator's pool grow then.
    warmup_steps: int = 20
    #: The same for the reserved and percent series: the caching allocator's pool grows to
    #: its plateau over the first hundreds of steps.
    cache_warmup_steps: int = 300
    #: A trend is significant when the rise it fits over ``windows`` is at least ``noise_z``
    #: robust standard deviations of the minima around it ...
    noise_z: float = 6.0
    #: ... in this many consecutive windows (a one-time step up of the lows looks like a
    #: trend in three fits, while the step is in the middle of the windows, and noise may add
    #: one or two); or, for
    #: a fast leak, each of the last three lows above the one before by more than the noise
    #: and ``noise_z`` of it together, two windows running (a step up is one such rise, a
    #: low from the top of its tail falls back; a fast leak makes each) ...
    persist_windows: int = 6
    #: ... and it fires once it has added up, since it began, to ``min_total_mb`` ...
    min_total_mb: float = 256.0
    #: ... and this fraction of the level (1% of an 80 GB card is 800 MB).
    min_total_fraction: float = 0.01
    #: The same for the percent series, in percentage points.
    min_total_pct: float = 1.0
    #: Resolved after this many windows in a row whose fitted trend is flat (within noise).
    recover_windows: int = 3
    #: While the incident lasts, re-report it this often (event time) so it does not expire.
    refresh_s: float = 60.0
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.count(self, "window_steps", self.window_steps, minimum=2)
        check.count(self, "windows", self.windows, minimum=_MIN_FIT)
        if self.windows > 16:
            raise DetectorConfigError(
                f"MemoryGrowthConfig.windows must be <= 16, got {self.windows}"
            )
        check.count(self, "warmup_steps", self.warmup_steps, minimum=0)
        check.count(self, "cache_warmup_steps", self.cache_warmup_steps, minimum=0)
        check.non_negative(self, "noise_z", self.noise_z)
        check.count(self, "persist_windows", self.persist_windows)
        check.positive(self, "min_total_mb", self.min_total_mb)
        check.non_negative(self, "min_total_fraction", self.min_total_fraction)
        check.positive(self, "min_total_pct", self.min_total_pct)
        check.count(self, "recover_windows", self.recover_windows)
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


@dataclass(slots=True)
class MemoryState:
    """Per-rank state: a dozen numbers and the last ``windows`` window minima."""

    series: int = 0  # which field the numbers below are in (_ALLOCATED, ...); 0 = none yet
    seen: int = 0  # reports of this series seen, capped at the warm-up
    win_min: float = _INF  # minimum of the window being filled
    win_min_step: int = -1
    win_n: int = 0
    minima: list[float] = field(default_factory=list)  # last `windows` closed-window minima
    trend_from: float = math.nan  # fitted low where the significant trend began (nan: none)
    trend_step: int = -1  # the step it began at
    trend_fits: int = 0  # consecutive fits in which the trend was significant
    steady_fits: int = 0  # consecutive windows each a clear rise over the three before
    noise: float = 0.0  # robust s.d. of the minima around their trend, at the last window
    prev_delta: float = math.nan  # last difference of consecutive lows
    d2_mean: float = 0.0  # mean |second difference| of the lows: their long-run noise
    d2_n: int = 0  # second differences averaged (capped at _D2_EFFECTIVE)
    active: bool = False
    calm: int = 0  # closed windows in a row with a flat trend while active
    reported_at: float = -math.inf


class MemoryGrowth(PerRankRule[MemoryGrowthConfig, MemoryState]):
    """The ``memory_growth`` rule (a per-rank step detector)."""

    name: ClassVar[str] = "memory_growth"
    config_type = MemoryGrowthConfig
    state_type = MemoryState

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
        if s.seen < (c.warmup_steps if series == _ALLOCATED else c.cache_warmup_steps):
            s.seen += 1
            return _NOTHING
        if v < s.win_min:
            s.win_min = v
            s.win_min_step = event.step
        s.win_n += 1
        if s.win_n < c.window_steps:
            return _NOTHING
        return self._close_window(rank, s, event)

    def on_frame(self, job: JobState, table: RankTable[Any], frame: StepFrame) -> FrameFindings:
        """``on_step`` for every row of a frame: the reports that only count towards a warm-up
        or fold into the window being filled in vector operations, the rest (a switch of
        series, a window that closes) by ``on_step`` itself."""
        c = self.config
        n = len(frame)
        # The series each row reports, by the same preference as on_step (0: none).
        series = np.zeros(n, dtype=np.int64)
        value = np.zeros(n, dtype=np.float64)
        for code in (_PERCENT, _RESERVED, _ALLOCATED):  # the preferred one written last
            column = frame.metric(_SERIES[code])
            if column is not None:
                v, present = column
                series[present] = code
                value[present] = v[present]
        reports = series != 0
        if not reports.any():
            return []
        ranks = frame.ranks
        now_series, seen, win_min, win_n = gather(
            table, frame, "series", "seen", "win_min", "win_n"
        )
        same = reports & (series == now_series)
        warm = np.where(series == _ALLOCATED, c.warmup_steps, c.cache_warmup_steps)
        warming = same & (seen < warm)
        filling = same & ~warming & (win_n + 1 < c.window_steps)
        table.column("seen")[ranks[warming]] = seen[warming] + 1
        lower = filling & (value < win_min)
        table.column("win_min")[ranks[lower]] = value[lower]
        table.column("win_min_step")[ranks[lower]] = frame.steps[lower]
        table.column("win_n")[ranks[filling]] = win_n[filling] + 1
        return scalar_rows(self, job, table, frame, np.flatnonzero(reports & ~warming & ~filling))

    @staticmethod
    def _start_over(s: MemoryState, series: int) -> None:
        fresh = MemoryState(series=series)
        for name in MemoryState.__slots__:
            setattr(s, name, getattr(fresh, name))

    def _close_window(self, rank: RankState, s: MemoryState, event: StepEvent) -> Iterable[Outcome]:
        """Once per ``window_steps`` reports: refit the trend of the last window minima."""
        c = self.config
        low, low_step = s.win_min, s.win_min_step
        s.win_min, s.win_n = _INF, 0
        minima = s.minima
        if minima:
            self._learn_noise(s, low - minima[-1])
        if len(minima) >= c.windows:
            del minima[0]
        minima.append(low)
        if len(minima) < _MIN_FIT:
            return _NOTHING
        if not s.active and low <= minima[0] and s.trend_from != s.trend_from:
            return _NOTHING  # no higher than the oldest low: no rising trend to fit (cheap)
        slope, base, noise = _trend(minima)
        # The noise is the rank's long-run noise, from every second difference of its lows so
        # far: eight points alone give a noisy spread, and a run of them may line up by chance.
        # Taken at an upper bound: a mean of n |second differences| is uncertain by about
        # 0.76 / sqrt(n) of itself (half-normal), and a rank's first windows are few.
        n = s.d2_n
        if n < _D2_BEFORE_JUDGING:
            return _NOTHING
        long_run = s.d2_mean / _ABS_D2_PER_SD * (1.0 + 2.0 / math.sqrt(n))
        # Where the line fits badly (the lows curve, or a leak began inside the windows) the
        # residual spread is not noise but misfit: it counts at half weight.
        noise = s.noise = max(0.5 * noise * _UNBIAS[len(minima)], long_run)
        rise = slope * (len(minima) - 1)
        if s.active:
            # Over when the trend of the latest lows is flat (within twice the noise) for a few
            # windows running, not when one window happens to dip.
            recent = minima[-_MIN_FIT:]
            recent_slope = _trend(recent)[0] if len(minima) > _MIN_FIT else slope
            if recent_slope > 0 and recent_slope * (_MIN_FIT - 1) >= 2.0 * noise:
                s.calm = 0
            elif settled(s, c.recover_windows):
                return self._resolve(rank, s, low, event)
        percent = s.series == _PERCENT
        need = c.min_total_pct if percent else max(c.min_total_mb, c.min_total_fraction * low)
        significant = slope > 0 and rise >= c.noise_z * noise and _leads_somewhere(minima, slope)
        # A fast leak shows sooner than the fitted line (which needs the lows from before the
        # leak to leave the windows): each of the last three lows clearly above the one before,
        # and the three rises together beyond the noise. A step up of the lows is one rise,
        # and so is the tail of one that the windows cut in two (388, 118, 82 MB, seen on fresh
        # soak data): a climb does not fall away, each rise is a third of the one before at
        # least. (A leak's first rise may be small, its window cut by the leak's start: rises
        # may grow.)
        climb = low - minima[-4]
        r1, r2, r3 = minima[-3] - minima[-4], minima[-2] - minima[-3], low - minima[-2]
        steady = (
            climb >= max(need, c.noise_z * long_run)
            and min(r1, r2, r3) > long_run
            and 3.0 * r2 >= r1
            and 3.0 * r3 >= r2
        )
        if not (significant or steady):
            s.trend_from = math.nan  # no trend (any more): a later one starts afresh
            s.trend_fits = s.steady_fits = 0
            return _NOTHING
        s.trend_fits = s.trend_fits + 1 if significant else 0
        s.steady_fits = s.steady_fits + 1 if steady else 0
        if s.trend_from != s.trend_from:
            if significant:
                s.trend_from = base
                # It began a window before the first low clearly above the oldest one.
                bar = minima[0] + 2.0 * noise
                k = next((i for i, m in enumerate(minima) if m > bar), len(minima) - 1)
                s.trend_step = low_step - (len(minima) - max(k, 1)) * c.window_steps
            else:
                s.trend_from = minima[-4]
                s.trend_step = low_step - 3 * c.window_steps
        total = max(base + rise, low) - s.trend_from
        if total < need or not (s.steady_fits >= 2 or s.trend_fits >= c.persist_windows):
            return _NOTHING  # (twice steady: one window low from the top of its tail is not)
        now = event.epoch
        if not self._due(s, now):
            return _NOTHING
        return (self._finding(rank, s, low, low_step, slope, total, event, now),)

    @staticmethod
    def _learn_noise(s: MemoryState, delta: float) -> None:
        """Average |second difference| of the lows (a mean, then an EWMA): a steady leak does
        not move it (a leak is a constant first difference); heavy tails do, as they should."""
        last = s.prev_delta
        s.prev_delta = delta
        if last != last:
            return
        d2 = abs(delta - last)
        n = s.d2_n
        if n < _D2_SEED:
            s.d2_mean += (d2 - s.d2_mean) / (n + 1)
        else:
            s.d2_mean += _D2_ALPHA * (d2 - s.d2_mean)
        if n < _D2_EFFECTIVE:
            s.d2_n = n + 1

    def _resolve(
        self, rank: RankState, s: MemoryState, low: float, event: StepEvent
    ) -> Iterable[Outcome]:
        """The incident is closed (``settled``): a new one needs a new rise, so the lows of
        this one leave the fit."""
        del s.minima[:-1]
        s.trend_from = math.nan
        s.trend_fits = s.steady_fits = 0
        unit = "%" if s.series == _PERCENT else " MB"
        return self._resolution(
            rank,
            event,
            f"GPU memory stopped growing (low {low:.0f}{unit} for "
            f"{self.config.recover_windows} windows) at step {event.step}",
        )

    def _finding(
        self,
        rank: RankState,
        s: MemoryState,
        low: float,
        low_step: int,
        slope: float,
        total: float,
        event: StepEvent,
        now: float,
    ) -> Finding:
        c = self.config
        steps = low_step - s.trend_step
        per_step = total / steps if steps > 0 else slope / c.window_steps
        series = _SERIES[s.series]
        unit = "%" if s.series == _PERCENT else " MB"
        start = s.trend_from
        what = (
            f"GPU memory lows rising steadily since step {s.trend_step}, "
            f"{start:.0f}{unit} -> {low:.0f}{unit} (+{per_step:.3g}{unit}/step, {series}, "
            f"{total / s.noise if s.noise > 0 else math.inf:.0f}x its noise); likely a leak: "
            f"tensors kept across steps (a loss without .item(), a growing cache or list), it "
            f"will run out of memory"
        )
        return self._report(
            rank,
            now,
            s.trend_step,
            what,
            {
                "series": series,
                "window_minima": list(s.minima),
                "window_steps": c.window_steps,
                "start_minimum": start,
                "current_minimum": low,
                "rise": total,
                "slope_per_step": per_step,
                "minima_noise_sd": s.noise,
                "step": event.step,
            },
        )


def _leads_somewhere(minima: list[float], slope: float) -> bool:
    """Whether a rising line is the right shape for the lows: not one step up (a buffer
    allocated once, which two flat levels fit better than the line), nor growth levelling off
    (a cache filling to its plateau: the later half rising at under a third of the earlier).

    >>> _leads_somewhere([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 1.0)
    True
    >>> _leads_somewhere([1.0, 1.1, 0.9, 1.0, 5.0, 5.1, 4.9, 5.0], 0.57)
    False
    >>> _leads_somewhere([1.0, 3.0, 4.5, 5.5, 6.0, 6.2, 6.3, 6.35], 0.7)
    False
    """
    n = len(minima)
    line = _median_abs([m - slope * i for i, m in enumerate(minima)])
    for k in range(2, n - 1):
        if _median_abs(minima[:k]) + _median_abs(minima[k:]) <= line:
            return False
    half = n // 2
    early, late = _trend(minima[:half])[0], _trend(minima[half:])[0]
    return not (early > 0 and late < early / 3)


def _median_abs(values: list[float]) -> float:
    """Median absolute deviation from the median, times the count (a robust sum of errors)."""
    ordered = sorted(values)
    n = len(ordered)
    mid = ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])
    spread = sorted(abs(v - mid) for v in ordered)
    return n * (spread[n // 2] if n % 2 else 0.5 * (spread[n // 2 - 1] + spread[n // 2]))


def _trend(minima: list[float]) -> tuple[float, float, float]:
    """Theil-Sen fit of the minima against their index: (slope per window, the fitted value at
    the first, the robust s.d. of the residuals, before the small-sample correction).

    >>> _trend([10.0, 12.0, 14.0, 16.0, 99.0, 20.0, 22.0, 24.0])
    (2.0, 10.0, 0.0)
    """
    n = len(minima)
    slopes = sorted(
        (minima[j] - minima[i]) / (j - i) for i in range(n - 1) for j in range(i + 1, n)
    )
    half = len(slopes) // 2
    slope = slopes[half] if len(slopes) % 2 else 0.5 * (slopes[half - 1] + slopes[half])
    residuals = sorted(m - slope * i for i, m in enumerate(minima))
    base = residuals[n // 2] if n % 2 else 0.5 * (residuals[n // 2 - 1] + residuals[n // 2])
    spread = sorted(abs(x - base) for x in residuals)
    mad = spread[n // 2] if n % 2 else 0.5 * (spread[n // 2 - 1] + spread[n // 2])
    return slope, base, _MAD_TO_SD * mad
