"""``input_bound`` and ``gpu_utilization``: a whole job whose GPUs wait, for minutes.

``throughput_drop`` compares a rank with its own past, so a job that is slow from step 0 (too
few DataLoader workers, data on network storage, tokenizing on the fly) never raises it. These
two rules judge the job against a fixed bar instead, each a setting:

- **input_bound**: the data wait (``data_time_s``) is over ``share`` (25%) of the step on
  ``rank_share`` (75%) of the job's ranks, for ``sustain_s`` (120 s) of event time and
  ``min_steps`` (50) steps. One rank waiting alone is the ``straggler`` rule's business.
- **gpu_utilization**: NVML's ``gpu_utilization`` under ``bar`` (70%) on ``rank_share`` of
  the ranks for ``sustain_s`` (300 s) and ``min_steps``; the alert says which share of the
  step went to waiting for data and which to collectives (``step_time_s - compute_time_s -
  data_time_s``, where the events carry all three), and what to do about the larger.

Per rank, each step event updates a few EWMAs over about ``smoothing_steps`` (20) steps in
O(1); the job is judged at ticks. The data share is a ratio of time-weighted EWMAs (seconds
waited over seconds stepped): a loader that stalls one batch in eight, for eight batches'
time, is input-bound although seven steps in eight wait for nothing. The step is the larger of
``step_time_s`` (or data + compute when it is absent) and the rank's own period between its
step events: a loop that fetches the batch outside its timed step (``for batch in loader:
with watch_step(...)``) and a trainer that reports means every N steps are measured whole.

What must not fire, and why it does not:

- warm-up (the loader's first batches, compile): each rank's first ``warmup_steps`` (20)
  step events are not counted;
- evaluation and checkpoint phases: steps marked so never reach detectors, a tick while the
  job is not training judges nothing, and a rank's first step after a phase change (its data
  wait may hold the pause) is not counted;
- a few slow batches or one checkpoint pause counted as data wait: one step counts for at
  most 8 typical steps, and the EWMA forgets it within tens of steps, well before
  ``sustain_s``;
- jitter around the bar: once a streak began (and while firing) the job is judged against
  ``resolve_share`` (20%) / ``resolve_bar`` (75%), so a dip does not restart the streak; it
  resolves after ``recover_s`` (60 s) and ``recover_steps`` (20) on the good side of it.

What it cannot see: the share is each rank's OWN wait. In a synchronous job every step waits
for the slowest batch of any rank, and the wait for a peer's batch is spent in the gradient
all-reduce, not in ``data_time_s``: with batch times that vary a lot across ranks the job
loses more to data than its ranks' shares say (``gpu_utilization`` still sees it as idle).
A tick where fewer ranks than needed were heard from lately (``stale_s``) judges nothing.

>>> InputBoundConfig().share, GpuUtilizationConfig().bar
(0.25, 70.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.frames.frame import StepFrame

_NAN = math.nan
_NOTHING: tuple[()] = ()
# Per-rank entry (a list: plain data): step events seen; event time and step of the previous
# one; EWMAs of the measured value (data seconds, or utilization), of the step seconds, of
# the data and of the "other" seconds (utilization's breakdown; nan until known); event time
# of the latest counted sample.
_N, _T, _P, _V, _S, _D, _O, _SEEN = range(8)
_WORST = 3  # ranks named in a summary
#: One step counts for at most this many of the rank's typical steps: a pause (a checkpoint
#: save, an unmarked evaluation) moves the level like a few slow batches, not like an hour.
_CLAMP = 8.0

Floats = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
Rows = npt.NDArray[np.intp] | slice
Column = tuple[Floats, Mask]  # (values, present) of a metric
_TIMES = ("step_time_s", "data_time_s", "compute_time_s")
#: Integers up to this are exact as float64 (a frame's steps are read as floats).
_EXACT = 2**53

_INPUT_ADVICE = (
    "more DataLoader workers (num_workers), pin_memory=True and a larger prefetch_factor, "
    "data on faster (local) storage, tokenize and preprocess offline"
)
_COMM_ADVICE = (
    "overlap communication with compute (DDP bucket_cap_mb, no_sync under gradient "
    "accumulation), a larger per-GPU batch, and check the interconnect (NCCL_DEBUG=INFO: "
    "InfiniBand or sockets)"
)
_HOST_ADVICE = (
    "the GPU waits on the host: a larger batch, torch.compile or CUDA graphs for small "
    "kernels, fewer host syncs (.item(), .cpu()) in the step"
)


def _check_common(cfg: Any) -> None:
    """Settings both rules share (``cfg`` has them all)."""
    if not (0 < cfg.rank_share <= 1):
        raise DetectorConfigError(
            f"{type(cfg).__name__}.rank_share must be in (0, 1], got {cfg.rank_share!r}"
        )
    check.count(cfg, "min_ranks", cfg.min_ranks)
    check.positive(cfg, "sustain_s", cfg.sustain_s)
    check.count(cfg, "min_steps", cfg.min_steps, minimum=0)
    check.count(cfg, "warmup_steps", cfg.warmup_steps, minimum=0)
    check.count(cfg, "smoothing_steps", cfg.smoothing_steps)
    check.non_negative(cfg, "recover_s", cfg.recover_s)
    check.count(cfg, "recover_steps", cfg.recover_steps, minimum=0)
    check.positive(cfg, "refresh_s", cfg.refresh_s)
    check.positive(cfg, "stale_s", cfg.stale_s)
    check.severity_action(cfg, cfg.severity, cfg.action)


@dataclass(frozen=True, slots=True)
class InputBoundConfig:
    """Thresholds of ``input_bound`` (see the module docstring for how they combine).

    ``share`` 0.25: a quarter of every step with the GPU idle for want of data is material on
    any job (a healthy loader keeps its wait to a few per cent). ``rank_share`` 0.75 and
    ``min_ranks`` 2: the job's input, not one host (that is ``straggler``); a single-rank job
    is judged only with ``min_ranks`` 1. ``sustain_s`` 120 and ``min_steps`` 50: an
    epoch's first batches or a storage hiccup pass; a job starved from step 0 is named about
    two minutes after its warm-up (50 steps, where steps are longer than 2.4 s).
    """

    share: float = 0.25
    resolve_share: float = 0.20
    rank_share: float = 0.75
    min_ranks: int = 2
    sustain_s: float = 120.0
    min_steps: int = 50
    warmup_steps: int = 20
    smoothing_steps: int = 20
    recover_s: float = 60.0
    recover_steps: int = 20  # and this many steps: one stalled step of a slow job is not a fix
    refresh_s: float = 120.0  # re-report while firing, so the incident does not expire
    stale_s: float = 300.0  # a rank not heard from for this long is not counted as bound
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.fraction(self, "share", self.share)
        check.fraction(self, "resolve_share", self.resolve_share)
        check.at_most(self, "resolve_share", self.resolve_share, self.share, "share")
        _check_common(self)


@dataclass(frozen=True, slots=True)
class GpuUtilizationConfig:
    """Thresholds of ``gpu_utilization``.

    ``bar`` 70 (percent, NVML's ``utilization.gpu``: the share of time a kernel ran; NCCL's
    kernels count as busy): a data-parallel job that keeps its GPUs busy under 70% of the time
    is paying for a third of them idle. ``sustain_s`` 300: NVML readings are coarse and jumpy,
    and the finding is a matter of cost, not an emergency. The rest as ``input_bound``.
    """

    bar: float = 70.0
    resolve_bar: float = 75.0
    rank_share: float = 0.75
    min_ranks: int = 2
    sustain_s: float = 300.0
    min_steps: int = 50
    warmup_steps: int = 20
    smoothing_steps: int = 20
    recover_s: float = 60.0
    recover_steps: int = 20
    refresh_s: float = 120.0
    stale_s: float = 300.0
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        if not (0 < self.bar < 100):
            raise DetectorConfigError(
                f"GpuUtilizationConfig.bar must be strictly between 0 and 100, got {self.bar!r}"
            )
        if not (self.bar <= self.resolve_bar <= 100):
            raise DetectorConfigError(
                f"GpuUtilizationConfig.resolve_bar must be in [bar ({self.bar!r}), 100], "
                f"got {self.resolve_bar!r}"
            )
        _check_common(self)


class _JobShare:
    """The machinery both rules share: per-rank EWMAs, a job-level streak, one incident."""

    name: ClassVar[str]
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("r",)
    rule: ClassVar[str]
    config: Any

    def __init__(self) -> None:
        self._alpha = 1.0 / self.config.smoothing_steps
        self._warmup = self.config.warmup_steps

    def new_job_state(self) -> dict[str, Any]:
        # r: rank -> entry; on: firing; since / since_step: when the bad streak began;
        # clear / clear_step: when the clear streak began; at: last report; new: samples
        # counted since the last tick.
        return {"r": {}, "on": 0, "since": _NAN, "since_step": -1, "clear": _NAN,
                "clear_step": -1, "at": -math.inf, "new": 0}  # fmt: skip

    # -- per step: O(1) ---------------------------------------------------------------------
    # Every step event of every rank comes here: the step's length and the EWMAs are written
    # out inline (no helper calls), and each rule folds its own figures in ``_fold``.
    def _measure(self, event: StepEvent) -> float | None:
        raise NotImplementedError

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        value = self._measure(event)
        if value is None:
            return
        entries: dict[int, list[Any]] = state["r"]
        e = entries.get(rank.rank)
        if e is None:
            e = entries[rank.rank] = [0, -math.inf, -1, _NAN, _NAN, _NAN, _NAN, -math.inf]
        now = event.epoch
        last_t, last_step = e[_T], e[_P]
        after_phase = job.phase_since > last_t  # an evaluation or a checkpoint since its last
        # The step's length (see the module docstring), at most _CLAMP typical steps; nan
        # when nothing tells it.
        st, d, c = event.step_time_s, event.data_time_s, event.compute_time_s
        if st is None:
            st = d + c if d is not None and c is not None else _NAN
        step = event.step
        if last_step >= 0 and step > last_step:
            period = (now - last_t) / (step - last_step)
            if not st >= period:  # nan-safe: a period is better than nothing
                st = period
        typical = e[_S]
        if typical > 0:
            cap = _CLAMP * typical
            if cap < st:  # min(st, cap): a nan step stays nan
                st = cap
        n = e[_N] = e[_N] + 1
        e[_T], e[_P] = now, step
        if n <= self._warmup or after_phase or not st > 0:
            return
        self._fold(e, event, value, st)
        e[_SEEN] = now
        state["new"] += 1

    def _fold(self, e: list[Any], event: StepEvent, value: float, step_s: float) -> None:
        """Fold one counted step into the rank's EWMAs (each ``old + alpha * (x - old)``, or
        ``x`` while still nan)."""
        raise NotImplementedError

    # -- per frame: the same, as columns -----------------------------------------------------
    # A frame holds each rank at most once, so its rows touch distinct entries: they are read
    # out as columns (one transpose of the entry lists), updated with numpy by the scalar
    # arithmetic written elementwise (the same float64 operations in the same order, so the
    # same floats bit for bit; a selection where on_step has an ``if``), and written back in
    # place. Per row this is a few list operations, not on_step's call, attribute reads and
    # branches (see the tests for the measurement).
    _metric: ClassVar[str]  # the metric ``_measure`` reads

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: StepFrame, events: list[Any]
    ) -> None:
        """:meth:`on_step` of every row of ``frame``, leaving ``state`` exactly as it would."""
        measured = frame.metric(self._metric)
        if measured is None:
            return
        values, present = measured
        # Rows without the measure are skipped as on_step skips them: not even an entry.
        rows: Rows = slice(None) if present.all() else np.flatnonzero(present)
        step = frame.steps[rows]
        count = len(step)
        if not count:
            return
        ranks = frame.ranks[rows].tolist()
        entries: dict[int, list[Any]] = state["r"]
        es: list[Any] = list(map(entries.get, ranks))
        if None in es:
            for i, r in enumerate(ranks):  # in row order: the table's order is on_step's
                if es[i] is None:
                    es[i] = entries[r] = [0, -math.inf, -1, _NAN, _NAN, _NAN, _NAN, -math.inf]
        n_, t_, p_, v_, s_, d_, o_, seen_ = zip(*es, strict=True)
        f64 = np.float64
        n = np.fromiter(n_, np.int64, count) + 1
        last_t = np.fromiter(t_, f64, count)
        last_step = np.fromiter(p_, f64, count)
        if np.abs(step).max() >= _EXACT or np.abs(last_step).max() >= _EXACT:
            # Steps past 2**53 are not exact as float64 (the last steps are read as floats):
            # on_step itself, row by row (on the entries just made, as it would make them).
            ranks_of = job.ranks
            for e in events:
                self.on_step(job, ranks_of[e.rank], state, e)
            return
        typical = np.fromiter(s_, f64, count)
        now = frame.times[rows]
        times = _columns(frame, rows)
        with np.errstate(all="ignore"):  # nan and inf are handled as on_step handles them
            # The step's length: step_time_s, else data + compute, else nan; the period
            # where that is longer (or nan); at most _CLAMP typical steps.
            given, data, compute = times
            st = np.full(count, _NAN)
            if data is not None and compute is not None:
                st = np.where(data[1] & compute[1], data[0] + compute[0], st)
            if given is not None:
                st = np.where(given[1], given[0], st)
            period = (now - last_t) / (step - last_step)
            st = np.where((last_step >= 0) & (step > last_step) & ~(st >= period), period, st)
            cap = _CLAMP * typical
            st = np.where((typical > 0) & (cap < st), cap, st)
            counted = (n > self._warmup) & ~(job.phase_since > last_t) & (st > 0)
            new = int(np.count_nonzero(counted))
            if not new:
                # Warm-up, the step after a phase: the count and the last step, nothing else.
                for e, k, t, p in zip(es, n.tolist(), now.tolist(), step.tolist(), strict=True):
                    e[_N], e[_T], e[_P] = k, t, p
                return
            v = np.fromiter(v_, f64, count)
            v, typical = self._fold_frame(counted, values[rows], st, times, v, typical)
            d, o = self._fold_breakdown(counted, st, times, d_, o_)
        at = seen = now.tolist()
        if new < count:
            seen = np.where(counted, now, np.fromiter(seen_, f64, count)).tolist()
        for e, row in zip(
            es,
            zip(
                n.tolist(),
                at,
                step.tolist(),
                v.tolist(),
                typical.tolist(),
                d,
                o,
                seen,
                strict=True,
            ),
            strict=True,
        ):
            e[:] = row
        state["new"] += new

    def _fold_frame(
        self,
        counted: Mask,
        value: Floats,
        step_s: Floats,
        times: tuple[Column | None, Column | None, Column | None],
        v: Floats,
        s: Floats,
    ) -> tuple[Floats, Floats]:
        """:meth:`_fold` of the ``counted`` rows into the measure's and the step's EWMAs, as
        columns: the new ``v, s`` (the other rows' as given). ``times`` are the rows'
        (step_time_s, data_time_s, compute_time_s), each ``(values, present)`` or None."""
        alpha = self._alpha
        x = self._sample(value, step_s)
        v = np.where(counted, np.where(v != v, x, v + alpha * (x - v)), v)
        s = np.where(counted, np.where(s != s, step_s, s + alpha * (step_s - s)), s)
        return v, s

    def _sample(self, value: Floats, step_s: Floats) -> Floats:
        """The measure's sample of each row, as ``_fold`` takes it."""
        raise NotImplementedError

    def _fold_breakdown(
        self,
        counted: Mask,
        step_s: Floats,
        times: tuple[Column | None, Column | None, Column | None],
        d: tuple[float, ...],
        o: tuple[float, ...],
    ) -> tuple[Sequence[float], Sequence[float]]:
        """The data and "other" EWMAs after the ``counted`` rows (as given when the rule keeps
        none)."""
        return d, o

    # -- per tick ---------------------------------------------------------------------------
    # Each tick judges every rank but raises an outcome rarely: ``_count`` only counts (no
    # list of every rank's level per tick); ``_levels`` and ``_bad`` list the same levels, by
    # the same arithmetic, for the finding or the resolution that names them.
    def _bar(self, held: bool) -> float:
        """The bar a rank's level is judged against (the resolve bar when ``held``)."""
        raise NotImplementedError

    def _count(
        self, entries: dict[int, list[Any]], fresh_after: float, bar: float
    ) -> tuple[int, int]:
        """How many ranks have a sample counted at or after ``fresh_after``, and how many of
        those have a level on the wrong side of ``bar``."""
        raise NotImplementedError

    def _levels(self, entries: dict[int, list[Any]], fresh_after: float) -> list[tuple[int, float]]:
        """(rank, level) of the ranks with a sample counted at or after ``fresh_after``."""
        raise NotImplementedError

    def _bad(self, levels: list[tuple[int, float]], bar: float) -> list[tuple[int, float]]:
        """The ``levels`` on the wrong side of ``bar``."""
        raise NotImplementedError

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        if not state["new"] or job.phase != "train":
            return _NOTHING
        state["new"] = 0
        cfg = self.config
        entries: dict[int, list[Any]] = state["r"]
        fresh_after = now - cfg.stale_s
        firing = bool(state["on"])
        # Once a streak began (or the incident is open) the resolve bar holds: a job that
        # hovers at the bar is not restarted from zero by each dip.
        held = firing or state["since"] == state["since"]
        bar = self._bar(held)
        fresh, bad = self._count(entries, fresh_after, bar)
        world = max(job.world_size or 0, len(entries))
        need = max(cfg.min_ranks, math.ceil(cfg.rank_share * world - 1e-9))
        if fresh < need:
            # Too few ranks heard from lately (after a long evaluation, a pause) to judge the
            # job either way: the streak and the incident stand as they are.
            return _NOTHING
        if bad >= need:
            state["clear"] = _NAN
            if state["since"] != state["since"]:
                state["since"], state["since_step"] = now, job.max_step
            if firing:
                if now - state["at"] < cfg.refresh_s:
                    return _NOTHING
            elif (
                now - state["since"] < cfg.sustain_s
                or job.max_step - state["since_step"] < cfg.min_steps
            ):
                return _NOTHING
            state["on"], state["at"] = 1, now
            named = self._bad(self._levels(entries, fresh_after), bar)
            return (self._finding(job, state, entries, named, world, now),)
        state["since"] = _NAN
        if not firing:
            return _NOTHING
        if state["clear"] != state["clear"]:
            state["clear"], state["clear_step"] = now, job.max_step
        if (
            now - state["clear"] < cfg.recover_s
            or job.max_step - state["clear_step"] < cfg.recover_steps
        ):
            return _NOTHING
        state["on"], state["clear"], state["at"] = 0, _NAN, -math.inf
        summary = self._resolved(self._levels(entries, fresh_after), world)
        return (Resolution(self.rule, None, now, "", summary),)

    def _finding(
        self,
        job: JobState,
        state: dict[str, Any],
        entries: dict[int, list[Any]],
        bad: list[tuple[int, float]],
        world: int,
        now: float,
    ) -> Finding:
        raise NotImplementedError

    def _resolved(self, levels: list[tuple[int, float]], world: int) -> str:
        raise NotImplementedError

    @staticmethod
    def _breakdown(entries: dict[int, list[Any]], ranks: list[int]) -> tuple[float, float, float]:
        """Medians over ``ranks`` of the step (s), its data share and its "other" share."""
        steps, data, other = [], [], []
        for r in ranks:
            e = entries[r]
            s = e[_S]
            if s > 0:
                steps.append(s)
                if e[_D] == e[_D]:
                    data.append(min(1.0, e[_D] / s))
                if e[_O] == e[_O]:
                    other.append(min(1.0, e[_O] / s))
        return (
            median(steps) if steps else _NAN,
            median(data) if data else _NAN,
            median(other) if other else _NAN,
        )


class InputBoundDetector(_JobShare):
    """Most ranks wait for data over a set share of their step, for minutes (job scope)."""

    name: ClassVar[str] = "input_bound"
    rule: ClassVar[str] = "input_bound"
    _metric: ClassVar[str] = "data_time_s"

    def __init__(self, config: InputBoundConfig | None = None) -> None:
        self.config = config or InputBoundConfig()
        super().__init__()

    def _measure(self, event: StepEvent) -> float | None:
        return event.data_time_s

    def _fold(self, e: list[Any], event: StepEvent, value: float, step_s: float) -> None:
        alpha = self._alpha
        x = step_s if step_s < value else value  # min(value, step_s)
        old = e[_V]
        e[_V] = x if old != old else old + alpha * (x - old)
        old = e[_S]
        e[_S] = step_s if old != old else old + alpha * (step_s - old)

    def _sample(self, value: Floats, step_s: Floats) -> Floats:
        return np.where(step_s < value, step_s, value)  # min(value, step_s)

    def _bar(self, held: bool) -> float:
        bar: float = self.config.resolve_share if held else self.config.share
        return bar

    def _count(
        self, entries: dict[int, list[Any]], fresh_after: float, bar: float
    ) -> tuple[int, int]:
        fresh = bad = 0
        for e in entries.values():
            if e[_SEEN] >= fresh_after:
                fresh += 1
                s = e[_S]
                if s > 0 and e[_V] / s > bar:  # as _levels: a nan level is not over
                    bad += 1
        return fresh, bad

    def _levels(self, entries: dict[int, list[Any]], fresh_after: float) -> list[tuple[int, float]]:
        # The data share: seconds waited over seconds stepped.
        return [
            (r, float(e[_V] / e[_S]) if e[_S] > 0 else _NAN)
            for r, e in entries.items()
            if e[_SEEN] >= fresh_after
        ]

    def _bad(self, levels: list[tuple[int, float]], bar: float) -> list[tuple[int, float]]:
        return [(r, v) for r, v in levels if v > bar]

    def _finding(
        self,
        job: JobState,
        state: dict[str, Any],
        entries: dict[int, list[Any]],
        bad: list[tuple[int, float]],
        world: int,
        now: float,
    ) -> Finding:
        cfg = self.config
        worst = sorted(bad, key=lambda rv: (-rv[1], rv[0]))[:_WORST]
        share = median(v for _, v in bad)
        ranks = [r for r, _ in bad]
        step_s = median(entries[r][_S] for r in ranks)
        data_s = median(entries[r][_V] for r in ranks)
        lasted = now - state["since"]
        named = ", ".join(f"{job.label(r)} {v:.0%}" for r, v in worst)
        summary = (
            f"input-bound: {len(bad)} of {world} ranks wait for data {share:.0%} of their step "
            f"(median {data_s:.3f} s of {step_s:.3f} s; worst: {named}) for {lasted / 60:.1f} "
            f"min since step {state['since_step']} (bar {cfg.share:.0%}, held at "
            f"{cfg.resolve_share:.0%}): the GPUs "
            f"idle while the input pipeline catches up; try {_INPUT_ADVICE}"
        )
        return Finding(
            rule=self.rule,
            rank=None,
            severity=cfg.severity,
            event_time=now,
            summary=summary,
            step=int(state["since_step"]),
            evidence={
                "data_share": round(share, 4),
                "data_time_s": round(data_s, 4),
                "step_time_s": round(step_s, 4),
                "bar": cfg.share,
                "ranks_bound": len(bad),
                "world_size": world,
                "worst": [[r, round(v, 4)] for r, v in worst],
                "sustained_s": round(lasted, 1),
            },
            action=cfg.action,
            ranks=tuple(sorted(ranks)),
        )

    def _resolved(self, levels: list[tuple[int, float]], world: int) -> str:
        share = median(v for _, v in levels) if levels else _NAN
        return f"the data wait is down to {share:.0%} of the step (median of {world} ranks)"


class GpuUtilizationDetector(_JobShare):
    """Most ranks' GPUs busy under a set bar for minutes (job scope), with where time went."""

    name: ClassVar[str] = "gpu_utilization"
    rule: ClassVar[str] = "gpu_utilization"
    _metric: ClassVar[str] = "gpu_utilization"

    def __init__(self, config: GpuUtilizationConfig | None = None) -> None:
        self.config = config or GpuUtilizationConfig()
        super().__init__()

    def _measure(self, event: StepEvent) -> float | None:
        return event.gpu_utilization

    def _fold(self, e: list[Any], event: StepEvent, value: float, step_s: float) -> None:
        alpha = self._alpha
        old = e[_V]
        e[_V] = value if old != old else old + alpha * (value - old)
        old = e[_S]
        e[_S] = step_s if old != old else old + alpha * (step_s - old)
        d = event.data_time_s
        if d is None:
            return
        c, st = event.compute_time_s, event.step_time_s
        x = step_s if step_s < d else d  # min(d, step_s)
        old = e[_D]
        e[_D] = x if old != old else old + alpha * (x - old)
        if c is not None and st is not None:
            # Collectives (and, where compute_time_s times the forward only, the backward).
            x = st - c - d
            x = x if x > 0.0 else 0.0  # max(0.0, x): nan and -0.0 give 0.0
            old = e[_O]
            e[_O] = x if old != old else old + alpha * (x - old)

    def _sample(self, value: Floats, step_s: Floats) -> Floats:
        return value

    def _fold_breakdown(
        self,
        counted: Mask,
        step_s: Floats,
        times: tuple[Column | None, Column | None, Column | None],
        d: tuple[float, ...],
        o: tuple[float, ...],
    ) -> tuple[Sequence[float], Sequence[float]]:
        given, data, compute = times
        if data is None:
            return d, o
        alpha = self._alpha
        count = len(counted)
        dv, with_d = data
        with_d = counted & with_d
        if not with_d.any():
            return d, o
        old = np.fromiter(d, np.float64, count)
        x = np.where(step_s < dv, step_s, dv)  # min(d, step_s)
        new_d = np.where(with_d, np.where(old != old, x, old + alpha * (x - old)), old).tolist()
        if compute is None or given is None:
            return new_d, o
        with_o = with_d & compute[1] & given[1]
        if not with_o.any():
            return new_d, o
        # Collectives: max(0.0, st - c - d), nan and -0.0 giving 0.0.
        x = given[0] - compute[0] - dv
        x = np.where(x > 0.0, x, 0.0)
        old = np.fromiter(o, np.float64, count)
        new_o = np.where(with_o, np.where(old != old, x, old + alpha * (x - old)), old).tolist()
        return new_d, new_o

    def _bar(self, held: bool) -> float:
        bar: float = self.config.resolve_bar if held else self.config.bar
        return bar

    def _count(
        self, entries: dict[int, list[Any]], fresh_after: float, bar: float
    ) -> tuple[int, int]:
        fresh = bad = 0
        for e in entries.values():
            if e[_SEEN] >= fresh_after:
                fresh += 1
                if e[_V] < bar:  # as _levels: a nan level is not under
                    bad += 1
        return fresh, bad

    def _levels(self, entries: dict[int, list[Any]], fresh_after: float) -> list[tuple[int, float]]:
        return [(r, float(e[_V])) for r, e in entries.items() if e[_SEEN] >= fresh_after]

    def _bad(self, levels: list[tuple[int, float]], bar: float) -> list[tuple[int, float]]:
        return [(r, v) for r, v in levels if v < bar]

    def _finding(
        self,
        job: JobState,
        state: dict[str, Any],
        entries: dict[int, list[Any]],
        bad: list[tuple[int, float]],
        world: int,
        now: float,
    ) -> Finding:
        cfg = self.config
        worst = sorted(bad, key=lambda rv: (rv[1], rv[0]))[:_WORST]
        util = median(v for _, v in bad)
        ranks = [r for r, _ in bad]
        step_s, data, other = self._breakdown(entries, ranks)
        lasted = now - state["since"]
        named = ", ".join(f"{job.label(r)} {v:.0f}%" for r, v in worst)
        parts = []
        if data == data:
            parts.append(f"{data:.0%} waiting for data")
        if other == other:
            parts.append(f"{other:.0%} in collectives and other work outside compute_time_s")
        where = f"; of the {step_s:.3f} s step, " + " and ".join(parts) if parts else ""
        if data == data and data >= max(0.15, other if other == other else 0.0):
            advice = f"the input pipeline: {_INPUT_ADVICE}"
        elif other == other and other >= 0.15:
            advice = f"communication: {_COMM_ADVICE}"
        else:
            advice = _HOST_ADVICE
        summary = (
            f"GPUs underused: {len(bad)} of {world} ranks at {util:.0f}% utilization "
            f"(median; lowest: {named}) for {lasted / 60:.1f} min since step "
            f"{state['since_step']} (bar {cfg.bar:.0f}%, held at {cfg.resolve_bar:.0f}%){where}; "
            f"look at {advice}"
        )
        return Finding(
            rule=self.rule,
            rank=None,
            severity=cfg.severity,
            event_time=now,
            summary=summary,
            step=int(state["since_step"]),
            evidence={
                "gpu_utilization": round(util, 1),
                "bar": cfg.bar,
                "data_share": None if data != data else round(data, 4),
                "collective_share": None if other != other else round(other, 4),
                "step_time_s": None if step_s != step_s else round(step_s, 4),
                "ranks_under": len(bad),
                "world_size": world,
                "lowest": [[r, round(v, 1)] for r, v in worst],
                "sustained_s": round(lasted, 1),
            },
            action=cfg.action,
            ranks=tuple(sorted(ranks)),
        )

    def _resolved(self, levels: list[tuple[int, float]], world: int) -> str:
        util = median(v for _, v in levels) if levels else _NAN
        return f"GPU utilization back to {util:.0f}% (median of {world} ranks)"


def _columns(frame: StepFrame, rows: Rows) -> tuple[Column | None, Column | None, Column | None]:
    """(step_time_s, data_time_s, compute_time_s) of ``rows``: ``(values, present)`` each, or
    None where no row of the frame carries it."""
    given, data, compute = (frame.metric(name) for name in _TIMES)
    return (
        None if given is None else (given[0][rows], given[1][rows]),
        None if data is None else (data[0][rows], data[1][rows]),
        None if compute is None else (compute[0][rows], compute[1][rows]),
    )


def detectors() -> list[Any]:
    """Both rules with their default thresholds."""
    return [InputBoundDetector(), GpuUtilizationDetector()]
