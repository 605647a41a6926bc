"""``lr_schedule``: the learning rate off the schedule the trainer declared, or off its peers'.

Two faults, both job-scope alerts of this one rule (told apart by ``incident_key``):

- **ranks disagree** (``ranks``): data-parallel ranks step one optimizer each with one
  schedule, so at the same step they report the same ``learning_rate``. A rank whose value
  differs beyond float rounding (``rank_tolerance``) at ``mismatch_reports`` compared steps in
  a row runs with a different config. Ranks are compared at a step most of them have reported
  (each rank's last two reports are kept, so a rank a step behind is still compared, and sparse
  logging only compares fewer steps); the ranks off the peers' median are named (with two ranks
  there is no majority: both are).
- **off schedule** (``schedule``): step events may declare the schedule (``lr_schedule``,
  ``lr_warmup_steps``, ``lr_total_steps``, Hugging Face's ``lr_scheduler_type`` names). The
  peak is inferred from the first report after warm-up where the curve is still high
  (``lr / multiplier``, never below the highest LR seen), the curve's expected value at each
  reported step is computed with Hugging Face's formulas (:func:`multiplier`), and a report is
  off when it lies outside a band around it: ``tolerance`` relative plus ``peak_tolerance`` x
  the peak, the step one either side (trainers log before or after ``scheduler.step()``), and
  a floor of up to ``floor_ratio`` x the peak the decay may level off at (a min LR). Off for
  ``off_reports`` reports in a row fires; that catches an LR that stays at its peak after
  warm-up (a ``scheduler.step()`` that ran only during warm-up), decays far faster or slower
  than declared, goes up during a decay, or is 0. Warm-up reports are not judged (the peak is
  not known yet). ``cosine_with_restarts`` is judged only on holding still (the same LR as
  the report before, before the last step): the number of cycles is not on the event.
  ``polynomial`` is judged with the Trainer's default power 1. No declaration, or
  ``other``: only the ranks' agreement is checked; the intent cannot be known.

A job restarted from a checkpoint starts a new attempt with fresh state (the engine's
``_new_attempt``), so the resumed run anchors its peak again. Resolution: ``recover_reports``
reports (or compared steps) in a row back within the band for every rank named.

State is one entry per rank, kept as columns (:class:`~rankwatch.streams.frames.RankEntries`:
a frame of a big job updates its ranks with a few array assignments, a tick reads each field of
every rank as one array), and a few numbers per job.

>>> round(multiplier("cosine", 55, 10, 100), 3), multiplier("linear", 5, 10, 100)
(0.5, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from statistics import median
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from rankwatch.schemas import KNOWN_LR_SCHEDULES, Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.frames import RankEntries, StepFrame
from rankwatch.streams.frames.entries import LISTS_BELOW

#: Declared names whose curve is judged; ``other`` and unknown names are not.
JUDGED = frozenset(KNOWN_LR_SCHEDULES)
_NEEDS_TOTAL = frozenset({"linear", "cosine", "cosine_with_restarts", "polynomial"})


def multiplier(name: str, step: int, warmup: int, total: int | None) -> float:
    """The LR multiplier of Hugging Face's schedule ``name`` after ``step`` scheduler steps
    (``get_*_schedule_with_warmup``; cosine with half a cycle, polynomial with power 1,
    inverse_sqrt with the warm-up as timescale, 10,000 without one)."""
    if name == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if name == "constant_with_warmup":
        return 1.0
    if name == "inverse_sqrt":
        timescale = warmup or 10_000
        return 1.0 / math.sqrt((step + timescale - warmup) / timescale)
    t = total if total is not None else step
    progress = (step - warmup) / max(1, t - warmup)
    if name in ("linear", "polynomial"):
        return max(0.0, 1.0 - progress)
    if progress >= 1.0:
        return 0.0
    if name == "cosine_with_restarts":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (progress % 1.0))))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass(frozen=True, slots=True)
class LrScheduleConfig:
    """Thresholds of ``lr_schedule`` (see the module docstring for how they combine).

    ``tolerance`` 0.1 and ``peak_tolerance`` 0.02: a schedule is exact arithmetic, so the slack
    covers printing, off-by-one step conventions and producers' rounding, not behaviour: a
    cosine decaying twice as slow as declared is off by 25% of the peak at mid-run.
    ``floor_ratio`` 0.1: common recipes end at a min LR of 10% of the peak.
    """

    #: Relative difference between two ranks' LR at one step that is float rounding.
    rank_tolerance: float = 1e-3
    #: ... and the absolute one (LR units), for values at or near 0.
    rank_abs_tolerance: float = 1e-12
    #: Compared steps in a row a rank must disagree on before firing.
    mismatch_reports: int = 3
    #: Relative slack around the declared curve's value.
    tolerance: float = 0.1
    #: Absolute slack, as a fraction of the inferred peak.
    peak_tolerance: float = 0.02
    #: The decay may level off at up to this fraction of the peak (a min LR).
    floor_ratio: float = 0.1
    #: The peak is inferred at the first report after warm-up whose multiplier is at least
    #: this (a job resumed late in its decay is judged once the curve allows an estimate).
    min_anchor: float = 0.1
    #: Reports in a row off the curve before firing.
    off_reports: int = 3
    #: Reports (or compared steps) in a row back in line before resolving.
    recover_reports: int = 3
    #: While an incident lasts, re-report it this often (event time) so it does not expire.
    refresh_s: float = 60.0
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.fraction(self, "rank_tolerance", self.rank_tolerance)
        check.non_negative(self, "rank_abs_tolerance", self.rank_abs_tolerance)
        check.count(self, "mismatch_reports", self.mismatch_reports)
        check.fraction(self, "tolerance", self.tolerance)
        check.non_negative(self, "peak_tolerance", self.peak_tolerance)
        if self.peak_tolerance >= 1:
            raise DetectorConfigError(
                f"LrScheduleConfig.peak_tolerance must be < 1, got {self.peak_tolerance!r}"
            )
        if not 0 <= self.floor_ratio < 1:
            raise DetectorConfigError(
                f"LrScheduleConfig.floor_ratio must be >= 0 and < 1, got {self.floor_ratio!r}"
            )
        check.fraction(self, "min_anchor", self.min_anchor)
        check.count(self, "off_reports", self.off_reports)
        check.count(self, "recover_reports", self.recover_reports)
        for name in ("mismatch_reports", "recover_reports"):
            if getattr(self, name) > 62:
                raise DetectorConfigError(f"LrScheduleConfig.{name} must be <= 62")
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


# Per-rank entry: the last two reports (step, lr); the declaration they are judged against;
# the inferred peak (nan: not yet) and the highest LR seen; consecutive off / back-in-line
# reports; off schedule (0/1); the step the off streak began; the last report's expected value
# and band; bits of the rank comparisons (1 = disagreed, newest lowest).
_STEP, _LR, _PSTEP, _PLR, _DECL, _PEAK, _MAX, _OFF, _OK, _BAD, _SINCE, _EXP, _LO, _HI, _BITS = (
    range(15)
)
_NAN = math.nan
_GET_SCHEDULE = attrgetter("lr_schedule")
_GET_BAD, _GET_BITS = itemgetter(_BAD), itemgetter(_BITS)
#: The entry's fields and their defaults, in entry order (a stored entry is this list).
_FIELDS = (
    ("step", -1), ("lr", _NAN), ("pstep", -1), ("plr", _NAN), ("decl", ""), ("peak", _NAN),
    ("max", 0.0), ("off", 0), ("ok", 0), ("bad", 0), ("since", -1), ("exp", _NAN),
    ("lo", _NAN), ("hi", _NAN), ("bits", 0),
)  # fmt: skip
#: What a declaration that went away resets: the fields from ``decl`` up to ``bits``.
_UNDECLARED = _FIELDS[_DECL:_BITS]


def _new_entry() -> list[Any]:
    return [default for _, default in _FIELDS]


def _ranks(ids: Iterable[int]) -> str:
    ids = sorted(ids)
    shown = ", ".join(str(r) for r in ids[:8])
    more = f" and {len(ids) - 8} more" if len(ids) > 8 else ""
    return f"rank{'s' if len(ids) > 1 else ''} {shown}{more}"


Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


def _follow(
    entries: RankEntries, ranks: Ints, steps: Ints, lrs: Floats, expected: int | None
) -> None:
    """``on_step`` over reports none of which declares a judged schedule (the usual frame;
    ``ranks`` distinct): each becomes its rank's last report (the last one its previous), and a
    declaration the rank had is dropped. The same updates as ``on_frame``'s loop, as array
    assignments over the entries' columns."""
    entries.add(ranks, expected)
    if entries.apart(ranks):  # a rank kept apart (see RankEntries): the lists, one by one
        for r, step, lr in zip(ranks.tolist(), steps.tolist(), lrs.tolist(), strict=True):
            e = entries[r]
            if step != e[_STEP]:
                e[_PSTEP], e[_PLR] = e[_STEP], e[_LR]
            e[_STEP], e[_LR] = step, lr
            if e[_DECL]:
                e[_DECL:_BITS] = _new_entry()[_DECL:_BITS]
        return
    cols = entries.columns(write=True)
    step_c, lr_c = cols["step"], cols["lr"]
    last = step_c[ranks]
    moved = last != steps
    if not moved.all():
        last = last[moved]
        ranks_moved = ranks[moved]
    else:
        ranks_moved = ranks
    cols["pstep"][ranks_moved] = last
    cols["plr"][ranks_moved] = lr_c[ranks_moved]
    step_c[ranks] = steps
    lr_c[ranks] = lrs
    declared = cols["decl"][ranks].astype(np.bool_)  # "" is the usual: nothing declared
    if declared.any():
        gone = ranks[declared]
        for name, default in _UNDECLARED:
            cols[name][gone] = default


def _counts_after(steps: Ints, prev: Ints, last: int) -> dict[int, int]:
    """How many of ``steps`` and ``prev`` (together) are each step after ``last``: what
    ``Counter(steps) + Counter(prev)`` gives for those."""
    both = np.concatenate((steps, prev))
    newer = both[both > last]
    if not len(newer):
        return {}
    values, counts = np.unique(newer, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _compared(steps: Ints, prev: Ints, step: int) -> tuple[Mask, Mask]:
    """Which entries are compared at ``step`` by their last report, and which by their
    previous one (their last is a step ahead)."""
    by_last = steps == step
    return by_last, ~by_last & (prev == step)


def _agree(steps: Ints, prev: Ints, lrs: Floats, plrs: Floats, step: int) -> bool:
    """Whether the ranks compared at ``step`` (each rank's LR at its last report if that is of
    ``step``, else at its previous one if that is) all report one LR that is its own median:
    equal to the first (so none is NaN) and ``(v + v) / 2 == v`` (the median of an even count
    is the mean of the middle two, which overflows near the float maximum). When this is
    True, ``_compare``'s loop would find ``values.count(median(values)) == len(values)``;
    when False, the loop decides (this only saves the loop and the median in the usual case)."""
    by_last, by_prev = _compared(steps, prev, step)
    values = np.concatenate((lrs[by_last], plrs[by_prev]))
    if not len(values):
        return False
    v = float(values[0])
    return v == v and (v + v) / 2 == v and bool((values == v).all())


class LrSchedule:
    """The ``lr_schedule`` rule (a job detector: ranks compared, one job-scope alert each)."""

    name: ClassVar[str] = "lr_schedule"
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("r",)
    rule: ClassVar[str] = "lr_schedule"
    #: A job with fewer entries is judged on their live lists, a bigger one on the columns
    #: (:data:`~rankwatch.streams.frames.entries.LISTS_BELOW`); a test sets 0 on an instance
    #: to run the column path on a small job.
    lists_below: int = LISTS_BELOW

    def __init__(self, config: LrScheduleConfig | None = None) -> None:
        self.config = c = config or LrScheduleConfig()
        self._mismatch_mask = (1 << c.mismatch_reports) - 1
        self._recover_mask = (1 << c.recover_reports) - 1
        self._mask = self._mismatch_mask | self._recover_mask
        # The declared curve around the last step judged: (its declaration's memo below, the
        # step, lowest, at the step, highest). The memo's identity stands for its values.
        self._memo: tuple[Any, int, float, float, float] = (None, -1, 0.0, 0.0, 0.0)
        self._decl: tuple[Any, Any, Any, str] = (None, None, None, "")  # and its key
        # The band of the last report judged: (the curve memo it used, peak, expected, low,
        # high). Every rank of a job has the same peak and reports the same step in turn.
        self._band: tuple[Any, float, float, float, float] = (None, _NAN, _NAN, _NAN, _NAN)

    def new_job_state(self) -> dict[str, Any]:
        # r: rank -> entry; a/b: the ranks/schedule incident open (0/1), reported at (event
        # time) (b: and the tick it was first seen at, -1: none); at: the step the ranks were
        # last compared at.
        return {"r": RankEntries(_FIELDS), "a": [0, -math.inf], "b": [0, -math.inf, -1], "at": -1}

    # -- each step: one rank's report against its declared curve, O(1) ---------------------
    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        lr = event.learning_rate
        if lr is None:
            return
        e = state["r"].get(rank.rank)
        if e is None:
            e = state["r"][rank.rank] = _new_entry()
        step = event.step
        if step != e[_STEP]:
            e[_PSTEP], e[_PLR] = e[_STEP], e[_LR]
        e[_STEP], e[_LR] = step, lr
        name = event.lr_schedule
        if name not in JUDGED:  # the usual event: no declaration (its total is not read)
            if e[_DECL]:  # the declaration went away: nothing to judge against
                e[_DECL:_BITS] = _new_entry()[_DECL:_BITS]
            return
        total = event.lr_total_steps
        if name in _NEEDS_TOTAL and total is None:
            if e[_DECL]:
                e[_DECL:_BITS] = _new_entry()[_DECL:_BITS]
            return
        warmup = 0 if name == "constant" else event.lr_warmup_steps or 0
        memo = self._decl
        if memo[0] != name or memo[1] != warmup or memo[2] != total:
            memo = self._decl = (name, warmup, total, f"{name}|{warmup}|{total}")
        decl = memo[3]
        if decl != e[_DECL]:
            e[_DECL:_BITS] = [decl, *_new_entry()[_PEAK:_BITS]]
        self._judge(e, name, step, lr, warmup, total, memo)

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: StepFrame, events: Sequence[Any]
    ) -> None:
        """``on_step`` over a frame's rows (each rank once), the rows without an LR skipped at
        once; the same updates in the same order, read from the frame's columns."""
        column = frame.metric("learning_rate")
        if column is None:
            return
        values, present = column
        if present.all():
            rows: Iterable[int] = range(len(present))
            ranks, steps, lrs = frame.ranks, frame.steps, values
            reports: Iterable[Any] = events
        else:
            where = np.flatnonzero(present)
            rows = where.tolist()
            ranks, steps, lrs = frame.ranks[where], frame.steps[where], values[where]
            reports = map(events.__getitem__, rows)
        entries: RankEntries = state["r"]
        if JUDGED.isdisjoint(map(_GET_SCHEDULE, reports)):
            _follow(entries, ranks, steps, lrs, job.world_size)
            return
        judge = self._judge
        # Live lists: the loop below is on_step's, per row.
        held = entries.checkout(ranks, job.world_size)
        for i, e, step, lr in zip(rows, held, steps.tolist(), lrs.tolist(), strict=True):
            if step != e[_STEP]:
                e[_PSTEP], e[_PLR] = e[_STEP], e[_LR]
            e[_STEP], e[_LR] = step, lr
            event = events[i]
            name = event.lr_schedule
            if name not in JUDGED:
                if e[_DECL]:
                    e[_DECL:_BITS] = _new_entry()[_DECL:_BITS]
                continue
            total = event.lr_total_steps
            if name in _NEEDS_TOTAL and total is None:
                if e[_DECL]:
                    e[_DECL:_BITS] = _new_entry()[_DECL:_BITS]
                continue
            warmup = 0 if name == "constant" else event.lr_warmup_steps or 0
            memo = self._decl
            if memo[0] != name or memo[1] != warmup or memo[2] != total:
                memo = self._decl = (name, warmup, total, f"{name}|{warmup}|{total}")
            decl = memo[3]
            if decl != e[_DECL]:
                e[_DECL:_BITS] = [decl, *_new_entry()[_PEAK:_BITS]]
            # The usual judged report: past warm-up, the peak known, the curve and the band
            # of this step memoised by an earlier rank, within the band, no incident: what
            # _judge does then, inline.
            peak = e[_PEAK]
            curve, band = self._memo, self._band
            if (
                step > warmup
                and band[1] == peak
                and band[0] is curve
                and curve[0] is memo
                and curve[1] == step
                and name != "cosine_with_restarts"
                and not e[_BAD]
            ):
                _, _, expected, lo, hi = band
                if lo <= lr <= hi:
                    e[_EXP], e[_LO], e[_HI] = expected, lo, hi
                    e[_OFF] = 0
                    continue
            judge(e, name, step, lr, warmup, total, memo)

    def _judge(
        self,
        e: list[Any],
        name: str,
        step: int,
        lr: float,
        warmup: int,
        total: int | None,
        declared: tuple[Any, Any, Any, str],
    ) -> None:
        """``declared``: ``self._decl``, the memo of (name, warmup, total)."""
        c = self.config
        if step <= warmup or e[_PEAK] != e[_PEAK]:
            if lr > e[_MAX]:
                e[_MAX] = lr
            if step < warmup or (step == warmup > 0):
                # Rising to a peak not known yet. The last warm-up step is left out too: one
                # trainer logs the LR there before its scheduler.step(), another after.
                return
            m = multiplier(name, step, warmup, total)
            if m < c.min_anchor:
                return
            peak = max(lr / m, e[_MAX])
            if not peak > 0:
                return
            e[_PEAK] = peak
        peak = e[_PEAK]
        if name == "cosine_with_restarts":
            # The number of cycles is not on the event: the curve is unknown, but it never
            # holds still before the end. Off: the same LR as the report before.
            e[_PEAK] = peak = max(peak, lr)
            e[_EXP] = e[_LO] = e[_HI] = _NAN
            on = not (step < (total or 0) and e[_PSTEP] > warmup and lr == e[_PLR])
        else:
            memo = self._memo
            if memo[0] is not declared or memo[1] != step:  # every rank reports it in turn
                here = [
                    multiplier(name, s, warmup, total) for s in (max(0, step - 1), step, step + 1)
                ]
                memo = self._memo = (declared, step, min(here), here[1], max(here))
            band = self._band
            if band[0] is memo and band[1] == peak:  # the same inputs: the same band
                _, _, expected, lo, hi = band
            else:
                _, _, low, mid, high = memo
                slack = c.peak_tolerance * peak
                lo = peak * low * (1 - c.tolerance) - slack
                top = c.floor_ratio + (1 - c.floor_ratio) * high
                hi = peak * top * (1 + c.tolerance) + slack
                expected = peak * mid
                self._band = (memo, peak, expected, lo, hi)
            e[_EXP], e[_LO], e[_HI] = expected, lo, hi
            on = lo <= lr <= hi
        if on:
            e[_OFF] = 0
            if e[_BAD]:
                e[_OK] += 1
                if e[_OK] >= c.recover_reports:
                    e[_BAD] = e[_OK] = 0
            return
        e[_OK] = 0
        if e[_OFF] == 0:
            e[_SINCE] = step
        e[_OFF] += 1
        if e[_OFF] >= c.off_reports:
            e[_BAD] = 1

    # -- each tick: the job's ranks, once --------------------------------------------------
    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        return self._judge_job(job, state, now, wait=True)

    def on_flush(self, job: JobState, state: dict[str, Any]) -> Iterable[Outcome]:
        """The end of a replay or an attempt: every report is in, nothing to wait for."""
        return self._judge_job(job, state, job.watermark, wait=False)

    def _judge_job(
        self, job: JobState, state: dict[str, Any], now: float, *, wait: bool
    ) -> list[Outcome]:
        entries: RankEntries = state["r"]
        if not len(entries):
            return []
        if len(entries) < self.lists_below:
            return self._judge_lists(job, state, entries.live(), now, wait=wait)
        out: list[Outcome] = []
        # Every entry's fields as arrays (a rank far beyond the others is left out: see
        # RankEntries), in rank order.
        cols = entries.columns()
        present = entries.present()
        if present.all():
            ranks = np.arange(len(present), dtype=np.int64)
            steps, prev, lrs, plrs = cols["step"], cols["pstep"], cols["lr"], cols["plr"]
            flags, bits = cols["bad"], cols["bits"]
        else:
            ranks = np.flatnonzero(present).astype(np.int64)
            steps, prev, lrs, plrs = (cols[k][ranks] for k in ("step", "pstep", "lr", "plr"))
            flags, bits = cols["bad"][ranks], cols["bits"][ranks]
        if not len(ranks):
            return []
        # A rank that stopped reporting (crashed, left an elastic job) keeps its last verdict;
        # once its peers have reported twice since, it no longer keeps an incident open.
        current = int(prev.max())
        off = flags.astype(np.bool_)
        bad = ranks[off & (steps >= current)].tolist() if off.any() else []
        self._schedule(job, state, entries, bad, now, out, wait)
        self._compare(state, entries, ranks, steps, prev, lrs, plrs, bits, set(bad), now, out)
        return out

    def _judge_lists(
        self,
        job: JobState,
        state: dict[str, Any],
        entries: dict[int, list[Any]],
        now: float,
        *,
        wait: bool,
    ) -> list[Outcome]:
        """:meth:`_judge_job` of a small job, on its entries' live lists: the same outcomes
        and state as the columns give (the frame-versus-scalar tests run both)."""
        out: list[Outcome] = []
        rows = list(entries.values())
        steps = [e[_STEP] for e in rows]
        prev = [e[_PSTEP] for e in rows]
        current = max(prev)
        bad = (
            [r for r, e in entries.items() if e[_BAD] and e[_STEP] >= current]
            if any(map(_GET_BAD, rows))
            else []
        )
        self._schedule(job, state, entries, bad, now, out, wait)
        last = state["at"]
        newer = [s for s in {*steps, *prev} if s > last]  # a step or two, usually
        counts = {s: steps.count(s) + prev.count(s) for s in newer}
        if not counts:
            return out
        step = max(counts, key=lambda s: (counts[s], s))
        if counts[step] < 2:
            return out
        state["at"] = step
        a = state["a"]
        at: dict[int, float] = {}
        for r, e in entries.items():
            if e[_STEP] == step:
                at[r] = e[_LR]
            elif e[_PSTEP] == step:
                at[r] = e[_PLR]
        values = list(at.values())
        clean = not any(map(_GET_BITS, rows))
        v = values[0]
        if clean and v == v and (v + v) / 2 == v and values.count(v) == len(values):
            self._agreed(a, step, now, out)  # as _agree finds it on the columns
            return out
        mid = median(values)
        if values.count(mid) == len(values) and clean:
            self._agreed(a, step, now, out)
            return out
        bar = self.config.rank_tolerance * abs(mid) + self.config.rank_abs_tolerance
        for r, value in at.items():
            e = entries[r]
            e[_BITS] = ((e[_BITS] << 1) | (abs(value - mid) > bar)) & self._mask
        self._decide(state, [entries[r][_BITS] for r in at], at, mid, step, set(bad), now, out)
        return out

    def _schedule(
        self,
        job: JobState,
        state: dict[str, Any],
        entries: RankEntries | dict[int, list[Any]],
        bad: list[int],
        now: float,
        out: list[Outcome],
        wait: bool,
    ) -> None:
        b = state["b"]
        if not bad:
            b[2] = -1
            if b[0]:
                b[0] = 0
                e = entries[min(entries.keys())]
                out.append(
                    Resolution(
                        self.rule,
                        None,
                        now,
                        "schedule",
                        f"the learning rate follows its declared schedule again at step {e[_STEP]}",
                    )
                )
            return
        if wait and not b[0] and b[2] < 0:
            # Wait one tick: the other ranks' reports of this step are still coming, and one
            # alert should name every rank that is off.
            b[2] = now
            return
        if b[0] and now - b[1] < self.config.refresh_s:
            return
        b[0], b[1], b[2] = 1, now, -1
        out.append(self._off_finding(job, entries, bad, now))

    def _off_finding(
        self, job: JobState, entries: RankEntries | dict[int, list[Any]], bad: list[int], now: float
    ) -> Finding:
        e = entries[min(bad)]
        name, warmup, total = e[_DECL].split("|")
        lr, step, expected, peak = e[_LR], e[_STEP], e[_EXP], e[_PEAK]
        world = job.world_size or len(job.ranks)
        who = "every rank" if len(bad) >= max(2, world) else _ranks(bad)
        if lr <= 0:
            what = "is 0: check the optimizer's LR and the scheduler"
        elif lr == e[_PLR]:
            held = "stays at its peak" if lr >= 0.9 * peak else "is frozen"
            what = f"{held}: is scheduler.step() still called after warm-up?"
        elif not lr < e[_HI]:  # above the band (or no band: restarts)
            if lr > e[_PLR]:
                what = "goes up where the schedule decays: is a second scheduler stepping it?"
            else:
                what = "decays slower than declared: check the scheduler's total steps"
        else:
            what = "decays faster than declared: check the scheduler's total and warm-up steps"
        shape = f"{name}, {warmup} warm-up steps" + ("" if total == "None" else f" of {total}")
        gives = "" if expected != expected else f", which gives {expected:.3g}"
        summary = (
            f"{who}: learning rate {lr:.3g} at step {step} is off the declared {shape} "
            f"schedule{gives} (peak {peak:.3g}), for {e[_OFF]} reports since step "
            f"{e[_SINCE]}; the LR {what}"
        )
        return Finding(
            rule=self.rule,
            rank=None,
            severity=self.config.severity,
            event_time=now,
            summary=summary,
            step=int(e[_SINCE]),
            evidence={
                "kind": "schedule",
                "schedule": name,
                "warmup_steps": int(warmup),
                "total_steps": None if total == "None" else int(total),
                "learning_rate": lr,
                "expected": expected,
                "band": [e[_LO], e[_HI]],
                "peak": peak,
                "step": step,
                "off_reports": e[_OFF],
                "ranks_off": len(bad),
            },
            action=self.config.action,
            ranks=tuple(sorted(bad)),
            incident_key="schedule",
        )

    def _compare(
        self,
        state: dict[str, Any],
        entries: RankEntries,
        ranks: Ints,
        steps: Ints,
        prev: Ints,
        lrs: Floats,
        plrs: Floats,
        bits: Ints,
        bad: set[int],
        now: float,
        out: list[Outcome],
    ) -> None:
        """``ranks`` and the entries' fields of those ranks, as arrays (a tick's read)."""
        c = self.config
        # The step most ranks have reported (of each rank's last two), newer than the last
        # compared: ranks a step apart at this tick are still compared at the same step.
        last = state["at"]
        counts = _counts_after(steps, prev, last)
        if not counts:
            return
        step = max(counts, key=lambda s: (counts[s], s))
        if counts[step] < 2:
            return
        state["at"] = step
        a = state["a"]
        clean = not bits.any()
        if clean and _agree(steps, prev, lrs, plrs, step):
            # The usual step, told without the loop below: what its first branch does.
            self._agreed(a, step, now, out)
            return
        by_last, by_prev = _compared(steps, prev, step)
        compared = by_last | by_prev
        compared_ranks = ranks[compared]
        compared_lrs = np.where(by_last, lrs, plrs)[compared]
        values: list[float] = compared_lrs.tolist()
        mid = median(values)
        if values.count(mid) == len(values) and clean:
            # A synchronous job's usual step: every rank the same LR (none is off the median)
            # and no rank with a disagreement in its window, so no rank's bits change.
            self._agreed(a, step, now, out)
            return
        bar = c.rank_tolerance * abs(mid) + c.rank_abs_tolerance
        bits_c = entries.columns(write=True)["bits"]
        now_bits = ((bits[compared] << 1) | (np.abs(compared_lrs - mid) > bar)) & self._mask
        bits_c[compared_ranks] = now_bits
        at = dict(zip(compared_ranks.tolist(), values, strict=True))
        self._decide(state, now_bits.tolist(), at, mid, step, bad, now, out)

    def _decide(
        self,
        state: dict[str, Any],
        bits: list[int],
        at: dict[int, float],
        mid: float,
        step: int,
        bad: set[int],
        now: float,
        out: list[Outcome],
    ) -> None:
        """After a comparison at ``step`` that was not unanimous: ``at`` the ranks compared
        and their LRs, ``bits`` their disagreement bits now (in ``at``'s order)."""
        a = state["a"]
        mask = self._mismatch_mask
        # Only the ranks compared now: one that stopped reporting keeps no incident open.
        firing = [r for r, b in zip(at, bits, strict=True) if b & mask == mask]
        if a[0]:
            if not any(b & self._recover_mask for b in bits):
                a[0] = 0
                out.append(
                    Resolution(
                        self.rule, None, now, "ranks", f"the ranks agree on the LR at step {step}"
                    )
                )
                return
            if not firing or now - a[1] < self.config.refresh_s:
                return
        elif not firing or bad & set(firing):
            return  # a rank off its declared schedule: that alert says it
        a[0], a[1] = 1, now
        out.append(self._mismatch_finding(at, firing, step, mid, now))

    def _agreed(self, a: list[Any], step: int, now: float, out: list[Outcome]) -> None:
        """Every rank compared at ``step`` reports one LR: an open ``ranks`` incident ends."""
        if a[0]:
            a[0] = 0
            out.append(
                Resolution(
                    self.rule, None, now, "ranks", f"the ranks agree on the LR at step {step}"
                )
            )

    def _mismatch_finding(
        self, at: dict[int, float], firing: list[int], step: int, mid: float, now: float
    ) -> Finding:
        odd = sorted(r for r in firing if r in at)
        values = ", ".join(f"rank {r} {at[r]:.6g}" for r in odd[:8])
        peers = len(at) - len(odd)
        if peers > 0:
            against = f"where its {peers} peers' median is {mid:.6g}"
        else:
            against = "with no majority between them"
        summary = (
            f"{_ranks(firing)} disagree on the learning rate at step {step} ({values}) "
            f"{against}, for {self.config.mismatch_reports}+ compared steps: a rank with a "
            f"different config; compare its launch arguments, LR and scheduler settings"
        )
        return Finding(
            rule=self.rule,
            rank=None,
            severity=self.config.severity,
            event_time=now,
            summary=summary,
            step=step,
            evidence={
                "kind": "ranks",
                "step": step,
                "values": {str(r): at[r] for r in odd[:16]},
                "median": mid,
                "ranks_compared": len(at),
            },
            action=self.config.action,
            ranks=tuple(sorted(firing)),
            incident_key="ranks",
        )
