"""``gradient_desync``: ranks that split from their peers.

**gradient_desync** (:class:`GradientDesync`, cross-rank): ranks of one synchronous job report
different global gradient norms (or all-reduced losses) at the same step. After the gradient
all-reduce every replica holds the same gradients, so the norms agree exactly: measured on a
4-rank gloo DDP job on the CPU, the ranks' norms were bitwise equal in fp32 and in bf16, and the
same norm summed in other orders (reversed, upcast to fp32, without foreach) moved by at most
1.6e-7 (fp32) and 5.9e-3 (bf16) of itself. A rank that skips the all-reduce drifts away from
its peers: 0.7%-106% apart, 43% at the median, above 2% in 49 of 50 steps. So:

- ``rel_tolerance`` (2%) sits over three times above bf16 rounding and summation order;
- each metric is learned per attempt over its first ``learn_steps`` compared steps: it is
  *synchronous* when every rank agreed in ``agree_fraction`` of them. Jobs whose ranks report
  their LOCAL norms or losses (per-rank batches, pipeline stages) never agree, and the rule
  stays silent on that metric for the attempt;
- at each later step a rank off the majority (more than half the ranks within tolerance of the
  median) is flagged; with no majority every rank is (the job split);
- persistent: flagged in ``min_flagged`` of the rank's last ``window`` compared steps;
  resolved when its last ``recover`` are clean.

A step is compared once every rank reported it (or once a rank is two steps further, for ranks
that never will): per job at most a few steps of values are held, O(1) per event, O(ranks) per
step compared, and per rank a short list.

>>> try:
...     GradientDesyncConfig(rel_tolerance=2.0)
... except ValueError as error:
...     print(error)
GradientDesyncConfig.rel_tolerance must be strictly between 0 and 1, got 2.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from operator import itemgetter
from statistics import median
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.frames import StepFrame

_NOTHING: tuple[()] = ()
_isfinite = math.isfinite

_ADVICE_DESYNC = (
    "its model replica is drifting from its peers': look for a rank skipping a collective "
    "(no_sync or a conditional all-reduce on that rank), a different seed or config on it, "
    "or non-deterministic layers"
)


@dataclass(frozen=True, slots=True)
class GradientDesyncConfig:
    """Thresholds of ``gradient_desync``."""

    #: Values within this share of the ranks' median agree (bf16 rounding moves a norm by
    #: < 0.6%; ranks of a synchronous job report bitwise-equal norms).
    rel_tolerance: float = 0.02
    #: Compared steps (per metric) that tell whether the job's ranks agree at all ...
    learn_steps: int = 10
    #: ... they must all agree in this share of them, or the metric is local (never judged).
    agree_fraction: float = 0.9
    #: Compare the losses too (only where the job turns out to all-reduce them).
    check_loss: bool = True
    #: Flagged in ``min_flagged`` of a rank's last ``window`` compared steps fires ...
    window: int = 8
    min_flagged: int = 5
    #: ... and its last ``recover`` all clean resolves.
    recover: int = 8
    refresh_s: float = 60.0
    #: Replicas that drifted apart train a wrong model from then on.
    severity: Severity = "critical"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.fraction(self, "rel_tolerance", self.rel_tolerance)
        check.count(self, "learn_steps", self.learn_steps)
        check.fraction(self, "agree_fraction", self.agree_fraction)
        check.count(self, "window", self.window)
        check.at_most(self, "window", self.window, 62, "62")
        check.count(self, "min_flagged", self.min_flagged)
        check.at_most(self, "min_flagged", self.min_flagged, self.window, "window")
        check.count(self, "recover", self.recover)
        check.at_most(self, "recover", self.recover, self.window, "window")
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


_LEARNING, _SYNC, _LOCAL = 0, 1, 2
_METRICS = ("gradient norm", "loss")
# Per-rank entry: flag bits (newest lowest), status, first flagged step of the incident, then
# the last flagged comparison: step, metric, value, median, ranks agreeing, ranks compared.
_BITS, _STATUS, _FIRST, _STEP, _METRIC, _VALUE, _CENTER, _AGREE, _N, _AT = range(10)
_QUIET, _FIRING, _TO_FIRE, _TO_RESOLVE = range(4)
_LAG = 2  # a step is compared at the latest when some rank is this many steps further
_COLUMN = (itemgetter(0), itemgetter(1))  # a held step's values of one metric, every rank's
_MAX_HELD = 4  # steps of values held per job


class GradientDesync:
    """The ``gradient_desync`` rule (a cross-rank job detector)."""

    name: ClassVar[str] = "gradient_desync"
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("r", "p.*")

    def __init__(self, config: GradientDesyncConfig | None = None) -> None:
        self.config = c = config or GradientDesyncConfig()
        self._mask = (1 << c.window) - 1
        self._recover_mask = (1 << c.recover) - 1
        self._metrics = 2 if c.check_loss else 1
        self._check_loss = c.check_loss  # read for every step event

    def new_job_state(self) -> dict[str, Any]:
        # p: step -> {rank: [norm, loss]} held until compared (a list: plain data that stored
        # state gives back as it was); mode/seen/agree: per metric.
        return {
            "p": {},
            "done": -1,
            "mode": [0, 0],
            "seen": [0, 0],
            "agree": [0, 0],
            "r": {},
            "live": 0,
            "dirty": 0,
        }

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        modes = state["mode"]
        norm = None if modes[0] == _LOCAL else event.gradient_norm
        loss = event.loss if self._check_loss and modes[1] != _LOCAL else None
        # A non-finite value is loss_explosion's or gradient_explosion's news, not a desync.
        if norm is not None and not _isfinite(norm):
            norm = None
        if loss is not None and not _isfinite(loss):
            loss = None
        step = event.step
        if (norm is None and loss is None) or step <= state["done"]:
            return  # nothing to compare (a job of local norms and losses costs this much)
        held: dict[int, dict[int, list[float | None]]] = state["p"]
        values = held.setdefault(step, {})
        values[rank.rank] = [norm, loss]
        if len(values) >= (job.world_size or len(job.ranks)):
            self._compare_up_to(state, step)
        elif len(held) > 1:
            oldest = min(held)
            if oldest <= step - _LAG or len(held) > _MAX_HELD:
                self._compare_up_to(state, oldest)

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: StepFrame, events: Sequence[Any]
    ) -> None:
        """``on_step`` over a frame's rows (each rank once), holding and comparing them in the
        order ``on_step`` does. The rows with a value to hold are found in numpy (a metric
        already learned local counts as none: a job of local norms and losses costs this
        much); they are then taken in runs of one step. A long run (a step's values from many
        ranks) is held in bulk, and the step it completes compared in numpy when no rank is
        flagged (:meth:`_compare_fast`); short runs go row by row (:meth:`_hold_rows`)."""
        modes = state["mode"]
        columns: list[_Column | None] = []
        useful = np.zeros(len(frame), dtype=np.bool_)
        for k, name in enumerate(("gradient_norm", "loss")):
            column = frame.metric(name) if k < self._metrics else None
            if column is None or modes[k] == _LOCAL:
                columns.append(None)
                continue
            values, present = column
            # A non-finite value is loss_explosion's or gradient_explosion's news: not held.
            with np.errstate(invalid="ignore"):
                ok = present & np.isfinite(values)
            columns.append((values, ok))
            useful |= ok
        steps = frame.steps
        # A step already compared takes nothing ("done" only grows: still true later on).
        useful &= steps > state["done"]
        rows = np.flatnonzero(useful)
        if not len(rows):
            return
        world = job.world_size or len(job.ranks)
        if len(rows) < _BULK_ROWS:
            self._hold_rows(state, world, *_lists(frame, columns, rows))
            return
        at = steps[rows]
        cuts = [0, *(np.flatnonzero(at[1:] != at[:-1]) + 1).tolist(), len(rows)]
        short = 0  # where the pending short runs start (rows position)
        for a, b in pairwise(cuts):
            if b - a < _BULK_ROWS:
                continue
            if short < a:
                self._hold_rows(state, world, *_lists(frame, columns, rows[short:a]))
            self._hold_run(state, world, frame, columns, int(at[a]), rows[a:b])
            short = b
        if short < len(rows):
            self._hold_rows(state, world, *_lists(frame, columns, rows[short:]))

    def _hold_rows(
        self,
        state: dict[str, Any],
        world: int,
        ranks: list[int],
        steps: list[int],
        norm_of: list[float | None],
        loss_of: list[float | None],
    ) -> None:
        """``on_step``'s holding over rows given as lists (None: no value, or a local metric
        at the frame's start)."""
        modes = state["mode"]
        held: dict[int, dict[int, list[float | None]]] = state["p"]
        compare_up_to = self._compare_up_to
        # Read again after every comparison: one may end the learning of a metric (-> local)
        # and move "done" on.
        local_norm, local_loss, done = modes[0] == _LOCAL, modes[1] == _LOCAL, state["done"]
        for i, step in enumerate(steps):
            norm = None if local_norm else norm_of[i]
            loss = None if local_loss else loss_of[i]
            if (norm is None and loss is None) or step <= done:
                continue
            at_step = held.setdefault(step, {})
            at_step[ranks[i]] = [norm, loss]
            if len(at_step) >= world:
                compare_up_to(state, step)
            elif len(held) > 1:
                oldest = min(held)
                if oldest <= step - _LAG or len(held) > _MAX_HELD:
                    compare_up_to(state, oldest)
                else:
                    continue
            else:
                continue
            local_norm, local_loss, done = modes[0] == _LOCAL, modes[1] == _LOCAL, state["done"]

    def _hold_run(
        self,
        state: dict[str, Any],
        world: int,
        frame: StepFrame,
        columns: list[_Column | None],
        step: int,
        rows: npt.NDArray[np.intp],
    ) -> None:
        """A long run of rows of one ``step``: row by row until the step is held with no
        comparison due (``on_step`` then compares nothing before the step is complete, so
        the run's rest can be held at once, :meth:`_hold_bulk`). Each row taken alone may
        compare an older held step, at most a few of them (``_MAX_HELD``)."""
        held: dict[int, dict[int, list[float | None]]] = state["p"]
        while len(rows):
            if step <= state["done"]:
                return
            # A comparison may have ended a metric's learning: its values are not held.
            modes = state["mode"]
            keep = np.zeros(len(rows), dtype=np.bool_)
            for k, column in enumerate(columns):
                if column is not None and modes[k] != _LOCAL:
                    keep |= column[1][rows]
            rows = rows[keep]
            at_step = held.get(step)
            if at_step is not None and len(at_step) < world and not _due(held, step):
                self._hold_bulk(state, world, frame, columns, step, rows, at_step)
                return
            self._hold_rows(state, world, *_lists(frame, columns, rows[:1]))
            rows = rows[1:]

    def _hold_bulk(
        self,
        state: dict[str, Any],
        world: int,
        frame: StepFrame,
        columns: list[_Column | None],
        step: int,
        rows: npt.NDArray[np.intp],
        at_step: dict[int, list[float | None]],
    ) -> None:
        """Hold ``rows`` (of ``step``, each with a value) where ``on_step`` would, one by one:
        the step is held, no comparison is due until it is complete, and the row that
        completes it compares it (the rows after it are then of a step done, skipped)."""
        if not len(rows):
            return
        modes = state["mode"]
        cols = [
            None if column is None or modes[k] == _LOCAL else (column[0][rows], column[1][rows])
            for k, column in enumerate(columns)
        ]
        ranks = frame.ranks[rows]
        need = world - len(at_step)
        if len(rows) < need:  # the step stays incomplete: held, nothing compared
            at_step.update(zip(ranks.tolist(), _pairs(cols, len(rows)), strict=True))
            return
        # A rank held already (its step sent twice) keeps its place and does not count.
        new = ~np.isin(ranks, np.fromiter(at_step, dtype=np.int64, count=len(at_step)))
        counted = np.cumsum(new)
        if counted[-1] < need:
            at_step.update(zip(ranks.tolist(), _pairs(cols, len(rows)), strict=True))
            return
        # The row that completes the step: those after it come too late.
        end = int(np.searchsorted(counted, need)) + 1
        cols = [None if col is None else (col[0][:end], col[1][:end]) for col in cols]
        held: dict[int, dict[int, list[float | None]]] = state["p"]
        for older in sorted(s for s in held if s < step):
            self._compare(state, older, held.pop(older))
            state["done"] = max(state["done"], older)
        del held[step]
        if not (new[:end].all() and self._compare_fast(state, at_step, cols, end)):
            at_step.update(zip(ranks[:end].tolist(), _pairs(cols, end), strict=True))
            self._compare(state, step, at_step)
        state["done"] = max(state["done"], step)

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        if not state.get("live"):
            return _NOTHING
        out: list[Outcome] = []
        live = 0
        for r, e in state["r"].items():
            status = e[_STATUS]
            if status == _TO_FIRE or (status == _FIRING and now - e[_AT] >= self.config.refresh_s):
                e[_STATUS], e[_AT] = _FIRING, now
                out.append(self._finding(job, r, e, now))
            elif status == _TO_RESOLVE:
                e[_STATUS] = _QUIET
                out.append(
                    Resolution(self.name, r, now, "", f"rank {r} agrees with its peers again")
                )
            live += e[_STATUS] != _QUIET
        state["live"] = live
        return out

    def on_flush(self, job: JobState, state: dict[str, Any]) -> Iterable[Outcome]:
        if state["p"]:
            self._compare_up_to(state, max(state["p"]))
        return self.on_tick(job, state, job.watermark)

    def _compare_up_to(self, state: dict[str, Any], last: int) -> None:
        held = state["p"]
        for step in sorted(s for s in held if s <= last):
            self._compare(state, step, held.pop(step))
            state["done"] = max(state["done"], step)

    def _compare(
        self, state: dict[str, Any], step: int, values: dict[int, list[float | None]]
    ) -> None:
        c = self.config
        modes, off = state["mode"], {}
        for k in range(self._metrics):
            if modes[k] == _LOCAL:
                continue
            column = list(map(_COLUMN[k], values.values()))
            first = column[0]
            if first is not None and _isfinite(first) and column.count(first) == len(column):
                # A synchronous job's usual step: every rank the very same value.
                if len(column) > 1 and modes[k] == _LEARNING:
                    self._learn(state, k, True)
                continue
            reported: dict[int, float] = {}
            for r, v in values.items():
                x = v[k]
                if x is not None:
                    reported[r] = x
            finite = [x for x in reported.values() if _isfinite(x)]
            if len(reported) < 2 or not finite:
                continue  # one rank, or an overflow skip on every rank: nothing to compare
            center = median(finite)
            tol = c.rel_tolerance * abs(center)
            agreeing = {r for r, x in reported.items() if _isfinite(x) and abs(x - center) <= tol}
            n = len(reported)
            if modes[k] == _LEARNING:
                self._learn(state, k, len(agreeing) == n)
                continue
            majority = 2 * len(agreeing) > n
            for r, x in reported.items():
                if r not in off and not (majority and r in agreeing):
                    off[r] = (k, x, center, len(agreeing) if majority else 0, n)
        if not off and not state.get("dirty"):
            return  # nobody flagged now nor in any rank's window: no record changes
        ranks: dict[int, list[Any]] = state["r"]
        mask, dirty = self._mask, 0
        for r in values:
            e = ranks.get(r)
            if e is None:
                e = ranks[r] = [0, _QUIET, -1, -1, 0, math.nan, math.nan, 0, 0, -math.inf]
            flagged = r in off
            before = e[_BITS]
            bits = e[_BITS] = ((before << 1) | flagged) & mask
            dirty += (bits != 0) - (before != 0)
            if flagged:
                if not before:
                    e[_FIRST] = step
                e[_STEP] = step
                e[_METRIC], e[_VALUE], e[_CENTER], e[_AGREE], e[_N] = off[r]
            status = e[_STATUS]
            if status in (_FIRING, _TO_FIRE):
                if not bits & self._recover_mask:
                    e[_STATUS] = _TO_RESOLVE if status == _FIRING else _QUIET
            elif flagged and bits.bit_count() >= c.min_flagged:
                e[_STATUS] = _TO_FIRE
                state["live"] = state.get("live", 0) + 1
        # Ranks with a flag in their window (a firing rank has one until it resolves).
        state["dirty"] = state.get("dirty", 0) + dirty

    def _compare_fast(
        self,
        state: dict[str, Any],
        held: dict[int, list[float | None]],
        cols: list[_Column | None],
        count: int,
    ) -> bool:
        """:meth:`_compare` of a step whose values are ``held`` (a few ranks, as lists) and
        ``cols`` (the other ``count`` ranks, as columns: None, every value None), in numpy,
        when it flags no rank and no rank has a flag in its window: then only the learning
        moves. Otherwise False, with nothing changed (the caller compares it in Python)."""
        if state.get("dirty"):
            return False  # every rank's window shifts: the per-rank loop of _compare
        c = self.config
        modes = state["mode"]
        n = len(held) + count
        learned: list[tuple[int, bool]] = []
        for k in range(self._metrics):
            if modes[k] == _LOCAL:
                continue
            column = list(map(_COLUMN[k], held.values()))
            col = cols[k]
            if col is None:
                values, ok = _NO_VALUES, np.zeros(count, dtype=np.bool_)
            else:
                values, ok = col
            first = column[0] if column else float(values[0]) if ok[0] else None
            if (
                first is not None
                and _isfinite(first)
                and column.count(first) == len(column)
                and ok.all()
                and bool((values == first).all())
            ):
                # A synchronous job's usual step: every rank the very same value.
                if n > 1 and modes[k] == _LEARNING:
                    learned.append((k, True))
                continue
            reported = [x for x in column if x is not None]
            finite = np.concatenate(
                (np.array([x for x in reported if _isfinite(x)], dtype=np.float64), values[ok])
            )
            n_reported = len(reported) + int(np.count_nonzero(ok))
            if n_reported < 2 or not len(finite):
                continue  # one rank, or an overflow skip on every rank: nothing to compare
            center = _median(finite)
            tol = c.rel_tolerance * abs(center)
            with np.errstate(over="ignore"):
                agreeing = int(np.count_nonzero(np.abs(finite - center) <= tol))
            if modes[k] == _LEARNING:
                learned.append((k, agreeing == n_reported))
            elif agreeing < n_reported:
                return False  # a rank to flag: its record is _compare's
        for k, agreed in learned:
            self._learn(state, k, agreed)
        return True

    def _learn(self, state: dict[str, Any], k: int, all_agreed: bool) -> None:
        """One compared step of metric ``k`` while the job is learned: decide after enough."""
        c = self.config
        state["seen"][k] += 1
        state["agree"][k] += all_agreed
        if state["seen"][k] >= c.learn_steps:
            agreed = state["agree"][k] >= c.agree_fraction * state["seen"][k]
            state["mode"][k] = _SYNC if agreed else _LOCAL

    def _finding(self, job: JobState, r: int, e: list[Any], now: float) -> Finding:
        c = self.config
        metric, value, center = _METRICS[e[_METRIC]], e[_VALUE], e[_CENTER]
        apart = abs(value - center) / abs(center) if center else math.inf
        where = job.label(r)
        if e[_AGREE]:
            peers = f"{e[_AGREE]} of {e[_N]} ranks agree on {center:.6g}"
        else:
            peers = f"the {e[_N]} ranks no longer agree (no majority; median {center:.6g})"
        flagged = int(e[_BITS]).bit_count()
        same = "global gradient norm" if metric == "gradient norm" else "all-reduced loss"
        return Finding(
            rule=self.name,
            rank=r,
            severity=c.severity,
            event_time=now,
            step=int(e[_FIRST]),
            summary=(
                f"{where} reports {metric} {value:.6g} at step {e[_STEP]} while {peers}: "
                f"{apart:.0%} apart, in {flagged} of its last {c.window} steps compared, where "
                f"this job's ranks reported the same {same} (within {c.rel_tolerance:.0%}); "
                f"{_ADVICE_DESYNC}"
            ),
            evidence={
                "metric": "gradient_norm" if metric == "gradient norm" else "loss",
                "value": value,
                "majority_value": center,
                "relative_difference": apart,
                "agreeing_ranks": e[_AGREE],
                "ranks_compared": e[_N],
                "flagged": flagged,
                "window": c.window,
                "step": e[_STEP],
            },
            action=c.action,
        )


_Column = tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]  # values, finite (held)
_NO_VALUES: npt.NDArray[np.float64] = np.zeros(0)
#: A run of rows of one step this long is held in bulk (and its step compared in numpy). The
#: bulk path's few dozen numpy calls cost about what a few hundred rows cost in Python: with
#: 64, small frames of ranks straddling two steps (100-300 rows) were ~10% slower than row
#: by row; with 256, even.
_BULK_ROWS = 256


def _due(held: dict[int, dict[int, list[float | None]]], step: int) -> bool:
    """Whether ``on_step`` compares the oldest held step after holding a value of ``step``
    (``step`` held, not complete)."""
    return len(held) > 1 and (min(held) <= step - _LAG or len(held) > _MAX_HELD)


def _held_values(column: _Column | None, n: int) -> list[float | None]:
    """A column as ``on_step`` holds it: Python floats (the same doubles), None elsewhere."""
    if column is None:
        return [None] * n
    values, ok = column
    if ok.all():
        return values.tolist()  # type: ignore[no-any-return]
    held = values.astype(object)
    held[~ok] = None
    return held.tolist()  # type: ignore[no-any-return]


def _lists(
    frame: StepFrame, columns: list[_Column | None], rows: npt.NDArray[np.intp]
) -> tuple[list[int], list[int], list[float | None], list[float | None]]:
    """Ranks, steps, norms and losses of ``rows`` of a frame, as lists."""
    if len(rows) == len(frame):  # every row (sorted, each once): no copies to take
        return (
            frame.ranks.tolist(),
            frame.steps.tolist(),
            _held_values(columns[0], len(rows)),
            _held_values(columns[1], len(rows)),
        )
    norms, losses = (
        None if column is None else (column[0][rows], column[1][rows]) for column in columns
    )
    return (
        frame.ranks[rows].tolist(),
        frame.steps[rows].tolist(),
        _held_values(norms, len(rows)),
        _held_values(losses, len(rows)),
    )


def _pairs(cols: list[_Column | None], n: int) -> Iterator[list[float | None]]:
    """The ``[norm, loss]`` entries held for ``n`` rows given as columns."""
    return map(list, zip(_held_values(cols[0], n), _held_values(cols[1], n), strict=True))


def _median(values: npt.NDArray[np.float64]) -> float:
    """``statistics.median`` of finite values: the middle one, or the two middle ones
    averaged as it averages them (``(a + b) / 2`` in Python floats), to the bit."""
    n = len(values)
    i = n // 2
    if n % 2:
        return float(np.partition(values, i)[i])
    part = np.partition(values, (i - 1, i))
    return (float(part[i - 1]) + float(part[i])) / 2
