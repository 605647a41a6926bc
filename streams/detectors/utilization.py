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
from collections.abc import Iterable
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
from rankwatch.streams.frames.entries import LISTS_BELOW, RankEntries
from rankwatch.streams.frames.frame import StepFrame

_NAN = math.nan
_NOTHING: tuple[()] = ()
# Per-rank entry, a RankEntries row (stored as a list: plain data): step events seen; event
# time and step of the previous one; EWMAs of the measured value (data seconds, or
# utilization), of the step seconds, of the data and of the "other" seconds (utilization's
# breakdown; nan until known); event time of the latest counted sample.
_N, _T, _P, _V, _S, _D, _O, _SEEN = range(8)
#: The entry's fields and their defaults, in that order (an int64 or a float64 column each).
_FIELDS: tuple[tuple[str, Any], ...] = (
    ("n", 0), ("t", -math.inf), ("step", -1), ("v", _NAN), ("s", _NAN), ("d", _NAN),
    ("o", _NAN), ("seen", -math.inf),
)  # fmt: skip
#: The fields a tick reads (floats), with their places in the entry.
_JUDGED = (("v", _V), ("s", _S), ("d", _D), ("o", _O), ("seen", _SEEN))
_WORST = 3  # ranks named in a summary
#: One step counts for at most this many of the rank's typical steps: a pause (a checkpoint
#: save, an unmarked evaluation) moves the level like a few slow batches, not like an hour.
_CLAMP = 8.0

Floats = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]
Rows = npt.NDArray[np.intp] | slice
Column = tuple[Floats, Mask]  # (values, present) of a metric
Times = tuple[Column | None, Column | None, Column | None]
Cols = dict[str, npt.NDArray[Any]]  # RankEntries.columns(): field -> column, indexed by rank
_TIMES = ("step_time_s", "data_time_s", "compute_time_s")

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
    #: A job with fewer entries is judged on their live lists, a bigger one on the columns
    #: (:data:`~rankwatch.streams.frames.entries.LISTS_BELOW`); a test sets 0 on an instance
    #: to run the column path on a small job.
    lists_below: int = LISTS_BELOW

    def __init__(self) -> None:
        self._alpha = 1.0 / self.config.smoothing_steps
        self._warmup = self.config.warmup_steps

    def new_job_state(self) -> dict[str, Any]:
        # r: rank -> entry (columns); on: firing; since / since_step: when the bad streak
        # began; clear / clear_step: when the clear streak began; at: last report; new:
        # samples counted since the last tick.
        return {"r": RankEntries(_FIELDS), "on": 0, "since": _NAN, "since_step": -1,
                "clear": _NAN, "clear_step": -1, "at": -math.inf, "new": 0}  # fmt: skip

    # -- per step: O(1) ---------------------------------------------------------------------
    # Every step event of every rank comes here: the step's length and the EWMAs are written
    # out inline (no helper calls) on the rank's entry as a live list, and each rule folds its
    # own figures in ``_fold``.
    def _measure(self, event: StepEvent) -> float | None:
        raise NotImplementedError

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        value = self._measure(event)
        if value is None:
            return
        entries: RankEntries = state["r"]
        e = entries.get(rank.rank)
        if e is None:
            e = entries.fresh()
            entries[rank.rank] = e
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

    # -- per frame: the same, on the columns -------------------------------------------------
    # A frame holds each rank at most once, so its rows touch distinct entries: their fields
    # are read from the entries' columns by rank, updated with numpy by the scalar arithmetic
    # written elementwise (the same float64 operations in the same order, so the same floats
    # bit for bit; the steps stay int64, so their differences are exact as on_step's; a
    # selection where on_step has an ``if``), and written back by rank. No Python per row.
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
        ranks: Ints = frame.ranks[rows]
        count = len(ranks)
        if not count:
            return
        entries: RankEntries = state["r"]
        # An entry at the defaults where a rank has none, as on_step's.
        entries.add(ranks, job.world_size)
        if entries.apart(ranks):
            # An entry kept out of the columns (see RankEntries): on_step, row by row.
            ranks_of = job.ranks
            for e in events:
                self.on_step(job, ranks_of[e.rank], state, e)
            return
        cols = entries.columns(write=True)
        step: Ints = frame.steps[rows]
        now = frame.times[rows]
        n = cols["n"][ranks] + 1
        last_t = cols["t"][ranks]
        last_step = cols["step"][ranks]
        typical = cols["s"][ranks]
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
            # (A difference of steps that wraps, from last_step -1, is not selected.)
            period = (now - last_t) / (step - last_step)
            st = np.where((last_step >= 0) & (step > last_step) & ~(st >= period), period, st)
            cap = _CLAMP * typical
            st = np.where((typical > 0) & (cap < st), cap, st)
            counted = (n > self._warmup) & ~(job.phase_since > last_t) & (st > 0)
        cols["n"][ranks] = n
        cols["t"][ranks] = now
        cols["step"][ranks] = step
        new = int(np.count_nonzero(counted))
        if not new:  # warm-up, the step after a phase: the count and the last step alone
            return
        value = values[rows]
        if new < count:
            pick = np.flatnonzero(counted)
            ranks, now, st, value = ranks[pick], now[pick], st[pick], value[pick]
            times = _take(times, pick)
        with np.errstate(all="ignore"):
            self._fold_frame(cols, ranks, value, st, times)
        cols["seen"][ranks] = now
        state["new"] += new

    def _fold_frame(
        self, cols: Cols, at: Ints, value: Floats, step_s: Floats, times: Times
    ) -> None:
        """:meth:`_fold` of counted rows, as columns: ``at`` their ranks, ``value`` their
        measure, ``step_s`` their step's length, ``times`` their (step_time_s, data_time_s,
        compute_time_s), each ``(values, present)`` or None."""
        alpha = self._alpha
        _ewma(cols["v"], at, self._sample(value, step_s), alpha)
        _ewma(cols["s"], at, step_s, alpha)

    def _sample(self, value: Floats, step_s: Floats) -> Floats:
        """The measure's sample of each row, as ``_fold`` takes it."""
        raise NotImplementedError

    # -- per tick ---------------------------------------------------------------------------
    # Each tick judges every entry from the columns (``_judged``): ``_level`` is each rank's
    # level and ``_wrong`` which levels are on the wrong side of a bar (the scalar arithmetic,
    # elementwise); a finding or a resolution lists the levels it names as (rank, level).
    def _bar(self, held: bool) -> float:
        """The bar a rank's level is judged against (the resolve bar when ``held``)."""
        raise NotImplementedError

    def _level(self, cols: Cols) -> Floats:
        """Every rank's level (nan where it has none)."""
        raise NotImplementedError

    def _wrong(self, level: Floats, bar: float) -> Mask:
        """Which ``level`` are on the wrong side of ``bar`` (a nan level is not)."""
        raise NotImplementedError

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        if not state["new"] or job.phase != "train":
            return _NOTHING
        state["new"] = 0
        cfg = self.config
        entries: RankEntries = state["r"]
        ranks, cols, present = _judged(entries, self.lists_below)
        fresh_after = now - cfg.stale_s
        firing = bool(state["on"])
        # Once a streak began (or the incident is open) the resolve bar holds: a job that
        # hovers at the bar is not restarted from zero by each dip.
        held = firing or state["since"] == state["since"]
        bar = self._bar(held)
        # The ranks with a sample counted at or after fresh_after, and those of them whose
        # level is on the wrong side of the bar.
        fresh = (cols["seen"] >= fresh_after) & present
        with np.errstate(all="ignore"):
            level = self._level(cols)
        wrong = fresh & self._wrong(level, bar)
        world = max(job.world_size or 0, len(entries))
        need = max(cfg.min_ranks, math.ceil(cfg.rank_share * world - 1e-9))
        if np.count_nonzero(fresh) < need:
            # Too few ranks heard from lately (after a long evaluation, a pause) to judge the
            # job either way: the streak and the incident stand as they are.
            return _NOTHING
        if np.count_nonzero(wrong) >= need:
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
            at = np.flatnonzero(wrong)
            fields = {name: cols[name][at] for name in "vsdo"}  # of the ranks it names
            return (self._finding(job, state, fields, _listed(wrong, level, ranks), world, now),)
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
        summary = self._resolved(_listed(fresh, level, ranks), world)
        return (Resolution(self.rule, None, now, "", summary),)

    def _finding(
        self,
        job: JobState,
        state: dict[str, Any],
        fields: Cols,
        bad: list[tuple[int, float]],
        world: int,
        now: float,
    ) -> Finding:
        """The finding naming ``bad``; ``fields``: their fields v, s, d and o."""
        raise NotImplementedError

    def _resolved(self, levels: list[tuple[int, float]], world: int) -> str:
        raise NotImplementedError

    @staticmethod
    def _breakdown(fields: Cols) -> tuple[float, float, float]:
        """Medians over the ranks of ``fields`` of the step (s), its data share and its "other"
        share."""
        steps, data, other = [], [], []
        for s, d, o in zip(*(fields[k].tolist() for k in "sdo"), strict=True):
            if s > 0:
                steps.append(s)
                if d == d:
                    data.append(min(1.0, d / s))
                if o == o:
                    other.append(min(1.0, o / s))
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

    def _level(self, cols: Cols) -> Floats:
        # The data share: seconds waited over seconds stepped.
        s = cols["s"]
        return np.where(s > 0, cols["v"] / s, _NAN)

    def _wrong(self, level: Floats, bar: float) -> Mask:
        return level > bar

    def _finding(
        self,
        job: JobState,
        state: dict[str, Any],
        fields: Cols,
        bad: list[tuple[int, float]],
        world: int,
        now: float,
    ) -> Finding:
        cfg = self.config
        worst = sorted(bad, key=lambda rv: (-rv[1], rv[0]))[:_WORST]
        share = median(v for _, v in bad)
        ranks = [r for r, _ in bad]
        step_s = median(fields["s"].tolist())
        data_s = median(fields["v"].tolist())
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

    def _fold_frame(
        self, cols: Cols, at: Ints, value: Floats, step_s: Floats, times: Times
    ) -> None:
        super()._fold_frame(cols, at, value, step_s, times)
        given, data, compute = times
        if data is None:
            return
        alpha = self._alpha
        dv, with_d = data
        if not with_d.any():
            return
        x = np.where(step_s < dv, step_s, dv)  # min(d, step_s)
        _ewma(cols["d"], at[with_d], x[with_d], alpha)
        if compute is None or given is None:
            return
        with_o = with_d & compute[1] & given[1]
        if not with_o.any():
            return
        # Collectives: max(0.0, st - c - d), nan and -0.0 giving 0.0.
        x = given[0] - compute[0] - dv
        x = np.where(x > 0.0, x, 0.0)
        _ewma(cols["o"], at[with_o], x[with_o], alpha)

    def _bar(self, held: bool) -> float:
        bar: float = self.config.resolve_bar if held else self.config.bar
        return bar

    def _level(self, cols: Cols) -> Floats:
        level: Floats = cols["v"]
        return level

    def _wrong(self, level: Floats, bar: float) -> Mask:
        return level < bar

    def _finding(
        self,
        job: JobState,
        state: dict[str, Any],
        fields: Cols,
        bad: list[tuple[int, float]],
        world: int,
        now: float,
    ) -> Finding:
        cfg = self.config
        worst = sorted(bad, key=lambda rv: (rv[1], rv[0]))[:_WORST]
        util = median(v for _, v in bad)
        ranks = [r for r, _ in bad]
        step_s, data, other = self._breakdown(fields)
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


def _columns(frame: StepFrame, rows: Rows) -> Times:
    """(step_time_s, data_time_s, compute_time_s) of ``rows``: ``(values, present)`` each, or
    None where no row of the frame carries it."""
    given, data, compute = (frame.metric(name) for name in _TIMES)
    return _take((given, data, compute), rows)


def _take(times: Times, rows: Rows) -> Times:
    """Some rows of each of ``times``."""
    given, data, compute = times
    return (
        None if given is None else (given[0][rows], given[1][rows]),
        None if data is None else (data[0][rows], data[1][rows]),
        None if compute is None else (compute[0][rows], compute[1][rows]),
    )


def _ewma(col: Floats, at: Ints, x: Floats, alpha: float) -> None:
    """``col[at]`` moved towards ``x`` as ``_fold`` moves one entry: ``old + alpha * (x -
    old)``, or ``x`` while still nan (the same float64 operations, elementwise)."""
    old = col[at]
    col[at] = np.where(old != old, x, old + alpha * (x - old))


def _judged(entries: RankEntries, lists_below: int) -> tuple[list[int] | None, Cols, Mask]:
    """What a tick reads of ``entries``: each row's rank (None: a row is its rank's), the
    fields of ``_JUDGED`` as columns, and which rows hold an entry. The entries kept out of
    the columns (``RankEntries.far``: a rank far beyond the others, a step past int64) are rows
    after theirs: the tick judges every entry, as the rule did when its entries were lists."""
    if len(entries) < lists_below:
        # A small job's entries are live lists (its steps come one at a time): read as they
        # are, not copied back into the columns first, which would make every next step
        # build its rank's list again.
        live = entries.live()
        rows = list(live.values())
        judged = {name: np.array([e[j] for e in rows], dtype=np.float64) for name, j in _JUDGED}
        return list(live), judged, np.ones(len(rows), dtype=np.bool_)
    cols = entries.columns()
    present = entries.present()
    if not entries.far:
        return None, cols, present
    apart = sorted(entries.far.items())
    judged = {
        name: np.concatenate([cols[name], np.array([e[j] for _, e in apart], dtype=np.float64)])
        for name, j in _JUDGED
    }
    ranks = [*range(len(present)), *(r for r, _ in apart)]
    return ranks, judged, np.concatenate([present, np.ones(len(apart), dtype=np.bool_)])


def _listed(mask: Mask, level: Floats, ranks: list[int] | None) -> list[tuple[int, float]]:
    """``(rank, level)`` of the rows in ``mask``, ranks ascending (``ranks``: as _judged)."""
    at = np.flatnonzero(mask).tolist()
    levels = level[at].tolist()
    if ranks is None:
        return list(zip(at, levels, strict=True))
    return sorted(zip([ranks[i] for i in at], levels, strict=True))


def detectors() -> list[Any]:
    """Both rules with their default thresholds."""
    return [InputBoundDetector(), GpuUtilizationDetector()]
