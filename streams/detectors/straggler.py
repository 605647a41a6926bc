"""``straggler``: one rank holding the others back at the same steps, calibrated on the job.

In synchronous data-parallel training every rank's ``step_time_s`` grows together: they all
wait for the slowest at the all-reduce. Step time cannot tell who is slow; the rank's OWN
work can: ``compute_time_s`` (forward, backward, optimizer, waits in collectives excluded)
and ``data_time_s`` (waiting for the next batch). Compute points at the GPU (throttled,
failing, a noisy neighbour), data at the host (dataloader workers, storage, CPU).

A rank is judged at each tick of event time on its latest sample, against its peers' samples
of about the same step, with three guards, each a setting:

- **Calibrated on the job's own noise.** The peers' spread is their robust standard deviation
  (1.4826 x the median absolute deviation; never under the job's typical spread, an average
  over its ticks) and the bar is ``z + sqrt(2 ln n)`` of them: the
  slowest of ``n`` ranks of pure noise lies about ``sqrt(2 ln n)`` deviations out (the expected
  maximum of ``n`` normal draws), so a 1,024-rank job is not held to an 8-rank job's bar.
- **Material.** The excess over the peers' median must cost the job ``materiality`` of its step
  (5%): the whole job waits that long for this rank each step. A data wait 1.5x its peers' on a
  wait that is 2% of the step is not worth anyone's time, however many deviations out it is.
- **Persistent.** Flagged in ``min_flagged`` of the rank's last ``window`` evaluations (6 of 8):
  a garbage-collection pause, a logging stall or a heavy-tailed data fetch is one step, and a
  node a few per cent slower than its peers (hardware varies) stays under the bar.

A rank's throughput (when it reports its own) is judged the same way, as a shortfall below its
peers' median. Resolution: the last ``recover`` evaluations all clean.

Per rank the state is one entry of ten fields, kept as columns indexed by rank
(:class:`~rankwatch.streams.frames.RankEntries`): a frame of a big job writes its ranks' latest
samples with a few array assignments, and a tick (not each event) takes the medians over its
fresh peers and updates their verdicts in numpy: O(ranks) per tick of event time, with no
Python work per rank but the lookup of its last event time. A small job's steps come one at a
time, each written to its rank's entry as a live list, and its ticks read those lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from statistics import median
from typing import Any, ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.frames import RankEntries, StepFrame
from rankwatch.streams.frames.entries import LISTS_BELOW

# Per-rank entry: latest compute, data, throughput, step time; samples seen; bits of the last
# evaluations (1 = flagged, newest lowest); firing (0/1); step of the latest sample; step last
# evaluated; step of the oldest flag in the window (where an incident begins).
_C, _D, _TP, _ST, _N, _BITS, _FIRING, _STEP, _EVAL, _FIRST = range(10)
_NAN = math.nan
#: The entry's fields and their defaults, in entry order (a stored entry is this list). The
#: defaults make the columns' kinds: the four samples float (nan: none), the rest int.
_FIELDS: tuple[tuple[str, Any], ...] = (
    ("c", _NAN), ("d", _NAN), ("tp", _NAN), ("st", _NAN), ("n", 0), ("bits", 0),
    ("firing", 0), ("step", -1), ("eval", -1), ("first", -1),
)  # fmt: skip
_DEFAULTS = tuple(default for _, default in _FIELDS)
#: ``first`` of an entry stored in an older layout (see :class:`_Entries`); a step is >= 0.
_OLD = -2
_MAD_TO_SD = 1.4826  # a normal distribution's s.d. per median absolute deviation

_HINTS = {
    "compute": "likely a slow or throttled GPU: check its clocks, temperature, power and Xid",
    "data": "its input pipeline is slow: check dataloader workers, storage and CPU on the host",
    "throughput": "check its GPU and host",
}


@dataclass(frozen=True, slots=True)
class StragglerConfig:
    """Thresholds of ``straggler`` (see the module docstring for how they combine).

    ``materiality`` 0.05: the job loses 5% of its time to this one rank, every step: on a
    1,024-GPU job that is 50 GPUs' worth. ``z`` 1.0 deviation on top of the expected maximum
    of the job's own noise (8 ranks: 3.0 deviations; 1,024: 4.7). ``window`` 8 evaluations of
    which ``min_flagged`` 6: a rank of pure noise flagged at 2% of its evaluations gets there
    with odds of about 1e-9 per evaluation. ``warmup_samples`` 5: compile and warm-up steps
    vary across ranks. ``min_excess_s`` 0.01: below that, timer noise.
    """

    materiality: float = 0.05
    z: float = 1.0
    window: int = 8
    min_flagged: int = 6
    recover: int = 8
    min_excess_s: float = 0.01
    warmup_samples: int = 5
    min_ranks: int = 3
    stale_s: float = 30.0  # a rank not heard from for this long is left out (rank_silent's job)
    severity: Severity = "warning"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.fraction(self, "materiality", self.materiality)
        check.non_negative(self, "z", self.z)
        check.count(self, "window", self.window)
        if self.window > 62:
            raise DetectorConfigError(f"window must be <= 62, got {self.window}")
        check.count(self, "min_flagged", self.min_flagged)
        if self.min_flagged > self.window:
            raise DetectorConfigError(
                f"min_flagged must be <= window ({self.window}), got {self.min_flagged}"
            )
        check.count(self, "recover", self.recover)
        if self.recover > self.window:
            raise DetectorConfigError(
                f"recover must be <= window ({self.window}), got {self.recover}"
            )
        check.non_negative(self, "min_excess_s", self.min_excess_s)
        check.count(self, "warmup_samples", self.warmup_samples, minimum=0)
        if self.min_ranks < 3:
            raise DetectorConfigError(f"min_ranks must be >= 3, got {self.min_ranks}")
        check.positive(self, "stale_s", self.stale_s)
        check.severity_action(self, self.severity, self.action)


_SPREAD_ALPHA = 0.05  # EWMA weight of one tick's spread in the job's typical spread


def _floored(typical: list[float], i: int, spread: float) -> float:
    """Fold ``spread`` into the job's typical spread ``typical[i]``; the larger of the two."""
    if spread != spread:
        return spread
    t = typical[i]
    typical[i] = spread if t != t else t + _SPREAD_ALPHA * (spread - t)
    return spread if t != t or spread > t else t


#: Which metric each sampled field of an entry holds (what a step writes into it).
_FIELD_OF = {
    _C: "compute_time_s",
    _D: "data_time_s",
    _TP: "throughput_tokens_per_sec",
    _ST: "step_time_s",
}
#: The frame's columns of those metrics, and the entry's columns that take them, in order.
_SAMPLED = tuple(_FIELD_OF[i] for i in (_C, _D, _TP, _ST))
_SAMPLES = tuple(_FIELDS[i][0] for i in (_C, _D, _TP, _ST))
_LAST_SEEN = attrgetter("last_seen")

_RANK = attrgetter("rank")  # of an outcome
Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


class _Entries(RankEntries):
    """The rule's entries (:data:`_FIELDS`), as columns.

    An entry stored in an older layout (a list of another length: the rule's nine fields from
    before it was calibrated on the job, in snapshots pickled then) is taken in padded to
    today's length, each value at the index the rule read it at before, and marked ``_OLD`` in
    ``first``: the rule replaces it at the rank's next step, as it replaced such a list. The
    codec makes a stored table columns through :meth:`like` and ``update``
    (``Layout.entry_tables``), so the padding is done here, not there.

    No ``__slots__`` of its own: ``RankEntries.__getstate__`` (copies, pickles) saves the slots
    that ``self.__slots__`` names, and an empty one here would hide them.
    """

    def like(self) -> _Entries:
        return _Entries(_FIELDS)

    def __setitem__(self, rank: int, entry: list[Any]) -> None:
        if len(entry) != len(_FIELDS):
            entry = [*entry[:_FIRST], *_DEFAULTS[len(entry) : _FIRST], _OLD]
        super().__setitem__(rank, entry)


def _table(state: dict[str, Any]) -> _Entries:
    """The job's entries; a dict of rank -> list (a pickled snapshot's: the codec makes the
    tables of later formats columns on read) becomes columns at the rule's first use."""
    table = state["r"]
    if type(table) is not _Entries:
        stored: Mapping[int, list[Any]] = table
        table = state["r"] = _Entries(_FIELDS)
        table.update(dict(stored.items()))
    return table


def _column(column: tuple[Floats, npt.NDArray[np.bool_]] | None) -> Floats | float:
    """A metric column's values, nan where a row has none (as ``on_step`` writes ``None``);
    a lone nan where no row of the frame has it."""
    if column is None:
        return _NAN
    values, present = column
    return values if present.all() else np.where(present, values, _NAN)


def _center_spread(values: list[float]) -> tuple[float, float]:
    """Median and robust standard deviation of the finite values (nan, nan if none)."""
    finite = [v for v in values if v == v]
    if not finite:
        return _NAN, _NAN
    m = median(finite)
    return m, _MAD_TO_SD * median([abs(v - m) for v in finite])


def _median_np(finite: np.ndarray) -> float:
    """``statistics.median`` of a non-empty array without nan, the same float: the same
    middle element, or the same ``(a + b) / 2`` of the two middle ones."""
    n = finite.size
    h = n // 2
    if n % 2:
        m = float(np.partition(finite, h)[h])
    else:
        part = np.partition(finite, (h - 1, h))
        m = (float(part[h - 1]) + float(part[h])) / 2
    if m == 0.0 and np.signbit(finite).any():
        # Which of 0.0 and -0.0 is in the middle depends on the order a stable sort keeps
        # them in (a summary prints the sign): Python's own answer, for this rare case.
        return float(median(finite.tolist()))
    return m


def _center_spread_np(values: np.ndarray) -> tuple[float, float]:
    """:func:`_center_spread` of an array, the same floats."""
    finite = values[values == values]
    if not finite.size:
        return _NAN, _NAN
    m = _median_np(finite)
    return m, _MAD_TO_SD * _median_np(np.abs(finite - m))


class _Bars(NamedTuple):
    """What one tick judges its peers against."""

    peers: int
    step_s: float  # the job's step: the peers' median step time, or their own work's
    z: float  # the bar in deviations: z + sqrt(2 ln peers)
    #: (peers' median, bar) of compute, data and throughput; nan: nobody reports it
    bars: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


class StragglerDetector:
    """One rank's own compute or data time far above its peers' (rank scope)."""

    name: ClassVar[str] = "straggler"
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("r",)
    rule: ClassVar[str] = "straggler"
    #: A job with fewer entries is judged on their live lists, a bigger one on the columns
    #: (:data:`~rankwatch.streams.frames.entries.LISTS_BELOW`); a test sets 0 on an instance
    #: to run the column path on a small job.
    lists_below: int = LISTS_BELOW

    def __init__(self, config: StragglerConfig | None = None) -> None:
        self.config = config or StragglerConfig()
        self._mask = (1 << self.config.window) - 1
        self._recover_mask = (1 << self.config.recover) - 1

    def new_job_state(self) -> dict[str, Any]:
        return {"r": _Entries(_FIELDS)}

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        c, d, tp = event.compute_time_s, event.data_time_s, event.throughput_tokens_per_sec
        if c is None and d is None and tp is None:
            return
        table = state["r"]
        if type(table) is not _Entries:
            table = _table(state)
        entry = table.get(rank.rank)
        if entry is None or entry[_FIRST] == _OLD:  # new, or from an older snapshot
            entry = table.fresh()
            table[rank.rank] = entry
        st = event.step_time_s
        entry[_C] = _NAN if c is None else c
        entry[_D] = _NAN if d is None else d
        entry[_TP] = _NAN if tp is None else tp
        entry[_ST] = _NAN if st is None else st
        entry[_N] += 1
        entry[_STEP] = event.step

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: StepFrame, events: Sequence[Any]
    ) -> None:
        """:meth:`on_step` of each row of a frame, as array assignments over the entries'
        columns (a frame holds each rank once, so no two rows write one entry).

        The rows that carry none of compute, data or throughput are left out (``on_step``
        writes nothing for them); a rank without an entry gets one at the defaults, and an
        entry of an older layout is put back to them first (``on_step`` makes both afresh).
        Exact: the frame's columns hold the events' own floats, and a value a row lacks is
        written as nan, as ``on_step`` writes ``None``. A rank whose entry is kept out of the
        columns (``RankEntries.far``: a rank far beyond the others, a step past int64) sends
        the frame to :meth:`on_step`, row by row."""
        columns = [frame.metric(name) for name in _SAMPLED]
        given = [col[1] for col in columns[:3] if col is not None]
        if not given:
            return  # no row has any of the three: nothing written
        ranks, steps = frame.ranks, frame.steps
        values = [_column(col) for col in columns]
        written = np.logical_or.reduce(given)
        if not written.all():
            ranks, steps = ranks[written], steps[written]
            values = [v[written] if isinstance(v, np.ndarray) else v for v in values]
        if not len(ranks):
            return
        entries = _table(state)
        entries.add(ranks, job.world_size)
        if entries.apart(ranks):  # an entry kept out of the columns: on_step, row by row
            for event in events:
                self.on_step(job, job.ranks[event.rank], state, event)
            return
        cols = entries.columns(write=True)
        old = cols["first"][ranks] == _OLD
        if old.any():  # an older snapshot's entries: replaced, as on_step replaces them
            for name, default in _FIELDS:
                cols[name][ranks[old]] = default
        for name, value in zip(_SAMPLES, values, strict=True):
            cols[name][ranks] = value
        cols["n"][ranks] += 1
        cols["step"][ranks] = steps

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        """Each fresh peer with a new sample judged against the peers (module docstring),
        ranks ascending.

        A small job's steps come row by row (``on_step``), so its entries are live lists: they
        are read as lists, not written back to the columns, which would make every next step
        build its rank's list again (measured, ``Engine.process`` of an 8-rank job: 33 us an
        event with its ticks reading the columns, 19 reading the lists). A big job's entries
        are read as columns."""
        entries = _table(state)
        if len(job.ranks) < self.lists_below:
            return self._tick_lists(job, state, entries, now)
        return self._tick_columns(job, state, entries, now)

    def _fresh(
        self, job: JobState, held: Iterable[tuple[int, list[Any]]], now: float
    ) -> list[tuple[int, list[Any]]]:
        """The entries past their warm-up whose rank was heard from within ``stale_s``."""
        cfg = self.config
        ranks = job.ranks
        fresh_after = now - cfg.stale_s
        return [
            (r, e)
            for r, e in held
            if e[_N] > cfg.warmup_samples and ranks[r].last_seen >= fresh_after
        ]

    def _tick_lists(
        self, job: JobState, state: dict[str, Any], entries: _Entries, now: float
    ) -> list[Outcome]:
        """:meth:`on_tick` over the entries as lists."""
        cfg = self.config
        held = [(r, e) for r in sorted(job.ranks) if (e := entries.get(r)) is not None]
        if len(held) < cfg.min_ranks:
            return []
        peers = self._fresh(job, held, now)
        if len(peers) < cfg.min_ranks or not any(e[_STEP] > e[_EVAL] for _, e in peers):
            return []
        tick = self._bars(
            state,
            len(peers),
            _center_spread([e[_C] for _, e in peers]),
            _center_spread([e[_D] for _, e in peers]),
            _center_spread([e[_TP] for _, e in peers]),
            median([e[_ST] for _, e in peers if e[_ST] == e[_ST]] or [_NAN]),
        )
        return self._judge_lists(job, peers, tick, now)

    def _judge_lists(
        self, job: JobState, peers: list[tuple[int, list[Any]]], tick: _Bars, now: float
    ) -> list[Outcome]:
        """Each peer with a new sample, judged and its entry (a list) updated."""
        (med_c, bar_c), (med_d, bar_d), (med_tp, bar_tp) = tick.bars
        mask, recover_mask = self._mask, self._recover_mask
        out: list[Outcome] = []
        for r, e in peers:
            step = e[_STEP]
            if step <= e[_EVAL]:
                continue  # nothing new from this rank since the last evaluation
            e[_EVAL] = step
            # Over a bar (nan compares False: a component nobody reports never flags)?
            flagged = e[_C] - med_c > bar_c or e[_D] - med_d > bar_d or med_tp - e[_TP] > bar_tp
            before = e[_BITS]
            if not (flagged or before or e[_FIRING]):
                continue  # clean, and clean before: its bits stay 0 (the common case)
            bits = e[_BITS] = ((before << 1) | flagged) & mask
            if flagged and not before:
                e[_FIRST] = step
            if e[_FIRING]:
                if not bits & recover_mask:
                    e[_FIRING] = 0
                    out.append(self._resolution(r, now))
            elif flagged and bits.bit_count() >= self.config.min_flagged:
                e[_FIRING] = 1
                out.append(self._finding(job.ranks[r], e, tick, now))
        return out

    def _tick_columns(
        self, job: JobState, state: dict[str, Any], entries: _Entries, now: float
    ) -> list[Outcome]:
        """:meth:`on_tick` over the entries' columns: the same floats and outcomes as
        :meth:`_tick_lists`, in numpy. The entries kept out of the columns (``far``: a rank
        far beyond the others, a step past int64) are judged as lists, as they were."""
        cfg = self.config
        if len(entries) < cfg.min_ranks:
            return []
        cols = entries.columns(write=True)
        apart = self._fresh(job, sorted(entries.far.items()), now) if entries.far else []
        news_apart = any(e[_STEP] > e[_EVAL] for _, e in apart)
        warm = np.flatnonzero(entries.present() & (cols["n"] > cfg.warmup_samples))
        steps, evaluated = cols["step"], cols["eval"]
        if len(warm) + len(apart) < cfg.min_ranks or not (
            news_apart or (steps[warm] > evaluated[warm]).any()
        ):
            return []  # too few, or nothing new: whoever is fresh among them (no lookups)
        ranks = job.ranks
        seen = np.fromiter(
            map(_LAST_SEEN, map(ranks.__getitem__, warm.tolist())), np.float64, len(warm)
        )
        peers = warm[seen >= now - cfg.stale_s]
        step = steps[peers]
        new = step > evaluated[peers]
        n = len(peers) + len(apart)
        if n < cfg.min_ranks or not (news_apart or new.any()):
            return []
        c, d, tp, st = (cols[name][peers] for name in _SAMPLES)
        every = [c, d, tp, st]
        if apart:
            every = [
                np.concatenate([x, np.array([e[i] for _, e in apart], dtype=np.float64)])
                for x, i in zip(every, (_C, _D, _TP, _ST), strict=True)
            ]
        st_finite = every[3][every[3] == every[3]]
        tick = self._bars(
            state,
            n,
            _center_spread_np(every[0]),
            _center_spread_np(every[1]),
            _center_spread_np(every[2]),
            _median_np(st_finite) if st_finite.size else _NAN,
        )
        (med_c, bar_c), (med_d, bar_d), (med_tp, bar_tp) = tick.bars
        # Over a bar (nan compares False: a component nobody reports never flags)?
        flags = (c - med_c > bar_c) | (d - med_d > bar_d) | (med_tp - tp > bar_tp)
        out = self._judge_columns(job, cols, peers[new], step[new], flags[new], tick, now)
        if apart:
            out = sorted(out + self._judge_lists(job, apart, tick, now), key=_RANK)
        return out

    def _judge_columns(
        self,
        job: JobState,
        cols: dict[str, npt.NDArray[Any]],
        at: Ints,
        step: Ints,
        flagged: npt.NDArray[np.bool_],
        tick: _Bars,
        now: float,
    ) -> list[Outcome]:
        """:meth:`_judge_lists` of the peers ``at`` (ascending) with a new sample at
        ``step``, ``flagged`` over a bar, in array operations on the columns."""
        cols["eval"][at] = step
        # A peer clean now and before, not firing, keeps its bits at 0 (the common case).
        before, firing = cols["bits"][at], cols["firing"][at]
        moved = flagged | (before != 0) | (firing != 0)
        if not moved.any():
            return []
        at, step, flagged, before, firing = (x[moved] for x in (at, step, flagged, before, firing))
        bits = ((before << 1) | flagged) & self._mask
        cols["bits"][at] = bits
        starts = flagged & (before == 0)
        cols["first"][at[starts]] = step[starts]
        # Firing: resolved once its last `recover` evaluations are clean. Not firing: fires
        # when flagged in `min_flagged` of the window (the bits counted for the few flagged).
        resolved = (firing != 0) & ((bits & self._recover_mask) == 0)
        fires = (firing == 0) & flagged
        fires[fires] = [b.bit_count() >= self.config.min_flagged for b in bits[fires].tolist()]
        cols["firing"][at[resolved]] = 0
        cols["firing"][at[fires]] = 1
        out: list[Outcome] = []
        told = resolved | fires
        for r, fired in zip(at[told].tolist(), fires[told].tolist(), strict=True):
            if fired:
                e = [col[r].item() for col in cols.values()]  # the entry, as on_step keeps it
                out.append(self._finding(job.ranks[r], e, tick, now))
            else:
                out.append(self._resolution(r, now))
        return out

    def _bars(
        self,
        state: dict[str, Any],
        n: int,
        compute: tuple[float, float],
        data: tuple[float, float],
        throughput: tuple[float, float],
        step_s: float,
    ) -> _Bars:
        """The bars of one tick, from the peers' median and spread of each component and
        their median step time (nan: none reported)."""
        cfg = self.config
        (med_c, sd_c), (med_d, sd_d), (med_tp, sd_tp) = compute, data, throughput
        bar_z = cfg.z + math.sqrt(2.0 * math.log(n))
        # A few ranks' spread at one tick is a rough estimate (heavy-tailed data waits among 8
        # ranks): the job's typical spread, averaged over its ticks, is a floor under it.
        typical = state.setdefault("sd", [_NAN, _NAN, _NAN])  # older snapshots lack it
        sd_c, sd_d, sd_tp = (
            _floored(typical, 0, sd_c),
            _floored(typical, 1, sd_d),
            _floored(typical, 2, sd_tp),
        )
        if step_s != step_s:  # no step time reported: the rank's own work is the step
            step_s = (med_c if med_c == med_c else 0.0) + (med_d if med_d == med_d else 0.0)
        # What an excess over the median must reach, per component (seconds) ...
        material = max(cfg.materiality * step_s, cfg.min_excess_s)
        bar_c = max(material, bar_z * sd_c) if med_c == med_c else _NAN
        bar_d = max(material, bar_z * sd_d) if med_d == med_d else _NAN
        # ... and a shortfall of throughput below its median (tokens/s).
        bar_tp = max(cfg.materiality * med_tp, bar_z * sd_tp) if med_tp == med_tp else _NAN
        return _Bars(n, step_s, bar_z, ((med_c, bar_c), (med_d, bar_d), (med_tp, bar_tp)))

    def _resolution(self, r: int, now: float) -> Resolution:
        return Resolution(self.rule, r, now, "", f"rank {r} keeps pace with its peers")

    @staticmethod
    def _worst(
        e: list[Any],
        compute: tuple[float, float],
        data: tuple[float, float],
        throughput: tuple[float, float],
    ) -> tuple[str, float, float, float]:
        """The component that stands out most: (name, value, peers' median, bar)."""
        best: tuple[str, float, float, float] = ("compute", e[_C], compute[0], compute[1])
        best_over = -math.inf
        for name, value, (med, bar) in (
            ("compute", e[_C], compute),
            ("data", e[_D], data),
        ):
            over = (value - med) / bar if bar > 0 else _NAN
            if over == over and over > best_over:
                best, best_over = (name, value, med, bar), over
        med, bar = throughput
        over = (med - e[_TP]) / bar if bar > 0 else _NAN
        if over == over and over > best_over:
            best = ("throughput", e[_TP], med, bar)
        return best

    def _finding(self, rs: RankState, e: list[Any], tick: _Bars, now: float) -> Finding:
        component, value, med, bar = self._worst(e, *tick.bars)
        n, step_s, bar_z = tick.peers, tick.step_s, tick.z
        where = rs.label
        flagged = int(e[_BITS]).bit_count()
        window = self.config.window
        if component == "throughput":
            factor = med / value if value > 0 else math.inf
            share = (med - value) / med if med > 0 else math.nan
            what = (
                f"throughput {value:.0f} tok/s vs peers' median {med:.0f} "
                f"({factor:.1f}x lower, {share:.0%} short)"
            )
        else:
            factor = value / med if med > 0 else math.inf
            share = (value - med) / step_s if step_s > 0 else math.nan
            what = (
                f"{component} time {value:.3f} s vs peers' median {med:.3f} s "
                f"({factor:.1f}x): +{value - med:.3f} s, {share:.0%} of the job's "
                f"{step_s:.3f} s step"
            )
        return Finding(
            rule=self.rule,
            rank=rs.rank,
            severity=self.config.severity,
            event_time=now,
            # An older layout's entry flagged before has no first flag (the rule raised here).
            step=int(e[_FIRST] if e[_FIRST] != _OLD else e[_EVAL]),
            summary=(
                f"{where} is a straggler: {what}, in {flagged} of its last {window} steps "
                f"judged: {_HINTS[component]}"
            ),
            evidence={
                "component": component,
                "value": round(value, 4),
                "peers_median": round(med, 4),
                "factor": round(factor, 3),
                "step_time_s": round(step_s, 4),
                "share_of_step": round(share, 4),
                "bar": round(bar, 4),
                "bar_deviations": round(bar_z, 3),
                "flagged": flagged,
                "window": window,
                "peers": n,
                "host": rs.host,
            },
            action=self.config.action,
        )
