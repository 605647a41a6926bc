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

Per rank the state is one short list; on each tick (not each event) the medians over the ranks
that reported since the last tick are computed once: O(ranks log ranks) per tick of event time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from statistics import median
from typing import Any, ClassVar

import numpy as np

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.frames import StepFrame

# Per-rank entry: latest compute, data, throughput, step time; samples seen; bits of the last
# evaluations (1 = flagged, newest lowest); firing (0/1); step of the latest sample; step last
# evaluated; step of the oldest flag in the window (where an incident begins).
_C, _D, _TP, _ST, _N, _BITS, _FIRING, _STEP, _EVAL, _FIRST = range(10)
_NAN = math.nan
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


def _center_spread(values: list[float]) -> tuple[float, float]:
    """Median and robust standard deviation of the finite values (nan, nan if none)."""
    finite = [v for v in values if v == v]
    if not finite:
        return _NAN, _NAN
    m = median(finite)
    return m, _MAD_TO_SD * median([abs(v - m) for v in finite])


#: From this many peers on, a tick's medians are taken in numpy (a partition, not a sort);
#: below it numpy's fixed cost per call is more than Python's sort of a short list (measured:
#: about even at 80 ranks, numpy 2x faster at 4,096).
_NUMPY_FROM = 96
#: The latest compute, data, throughput and step time of an entry, in that order.
_SAMPLE = tuple(itemgetter(i) for i in (_C, _D, _TP, _ST))
_ENTRY = itemgetter(1)  # of a (rank, entry) pair


#: Which metric each sampled field of an entry holds (what a step writes into it).
_FIELD_OF = {
    _C: "compute_time_s",
    _D: "data_time_s",
    _TP: "throughput_tokens_per_sec",
    _ST: "step_time_s",
}
#: The frame's columns of those metrics, in the entry's order.
_SAMPLED = tuple(_FIELD_OF[i] for i in (_C, _D, _TP, _ST))
_LONG = {10}  # the lengths of a table whose entries all have today's layout


def _values(column: tuple[np.ndarray, np.ndarray] | None, count: int) -> list[float]:
    """A metric column's values as floats, nan where a row has none (as ``on_step`` writes
    ``None``); all nan where no row of the frame has it."""
    if column is None:
        return [_NAN] * count
    values, present = column
    out: list[float] = (values if present.all() else np.where(present, values, _NAN)).tolist()
    return out


def _sample_of(e: Any) -> tuple[float | None, float | None, float | None, float | None]:
    """What a step event writes into its rank's entry: compute, data, throughput, step time."""
    return e.compute_time_s, e.data_time_s, e.throughput_tokens_per_sec, e.step_time_s


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


class StragglerDetector:
    """One rank's own compute or data time far above its peers' (rank scope)."""

    name: ClassVar[str] = "straggler"
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("r",)
    rule: ClassVar[str] = "straggler"

    def __init__(self, config: StragglerConfig | None = None) -> None:
        self.config = config or StragglerConfig()
        self._mask = (1 << self.config.window) - 1
        self._recover_mask = (1 << self.config.recover) - 1

    def new_job_state(self) -> dict[str, Any]:
        return {"r": {}}

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        c, d, tp = event.compute_time_s, event.data_time_s, event.throughput_tokens_per_sec
        if c is None and d is None and tp is None:
            return
        entry = state["r"].get(rank.rank)
        if entry is None or len(entry) != 10:  # new, or from an older snapshot
            entry = state["r"][rank.rank] = [_NAN, _NAN, _NAN, _NAN, 0, 0, 0, -1, -1, -1]
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
        """:meth:`on_step` of each row of a frame, in order, each rank's entry written once (a
        frame holds each rank once).

        The common frame (every row carries one of compute, data or throughput, and every
        rank has an entry of today's layout) is written from the frame's metric columns, with
        no call and no test per row. The engine's frame builds a column once for all its
        rules, from the decoded batches' columns, and ``utilization`` reads three of these
        four: measured at 16,384 ranks (records from decoded batches, the columns built
        afresh each frame), this rule and the two of ``utilization`` took 1.59 us a row where
        they took 1.77 reading the events here. Where no other rule asks for the columns, or
        the events are not from decoded batches, building them costs more than it saves.
        Exact: the columns hold the events' own floats, and a value a row lacks is written
        as nan, as ``on_step`` writes ``None``. Any other frame (a rank's first step, a row
        with none of the three) takes :meth:`_on_rows`."""
        if not events:
            return
        columns = [frame.metric(name) for name in _SAMPLED]
        reported = [col[1] for col in columns[:3] if col is not None]
        if not reported or not np.logical_or.reduce(reported).all():
            self._on_rows(state, frame, events)  # a row with none of the three: not written
            return
        table: dict[int, list[Any]] = state["r"]
        es: list[Any] = list(map(table.get, frame.ranks.tolist()))  # None: a rank not seen yet
        try:
            lengths = set(map(len, es))
        except TypeError:  # len(None): a rank's first step
            lengths = set()
        if lengths != _LONG:  # a new rank, or an older snapshot's entry
            self._on_rows(state, frame, events)
            return
        count = len(es)
        c, d, tp, st = (_values(col, count) for col in columns)
        for entry, c_, d_, tp_, st_, step in zip(
            es, c, d, tp, st, frame.steps.tolist(), strict=True
        ):
            entry[_C] = c_
            entry[_D] = d_
            entry[_TP] = tp_
            entry[_ST] = st_
            entry[_N] += 1
            entry[_STEP] = step

    def _on_rows(self, state: dict[str, Any], frame: StepFrame, events: Sequence[Any]) -> None:
        """:meth:`on_step` of each row of a frame, row by row: the values read from the
        events (``_sample_of`` mapped over them), each rank's entry looked up ahead."""
        table: dict[int, list[Any]] = state["r"]
        ranks = frame.ranks.tolist()
        for r, entry, (c, d, tp, st), step in zip(
            ranks,
            map(table.get, ranks),
            map(_sample_of, events),
            frame.steps.tolist(),
            strict=True,
        ):
            if c is None or d is None or tp is None or st is None:  # a value missing: rare
                if c is None and d is None and tp is None:
                    continue
                c = _NAN if c is None else c
                d = _NAN if d is None else d
                tp = _NAN if tp is None else tp
                st = _NAN if st is None else st
            if entry is None or len(entry) != 10:  # new, or from an older snapshot
                table[r] = [c, d, tp, st, 1, 0, 0, step, -1, -1]
            else:
                entry[_C] = c
                entry[_D] = d
                entry[_TP] = tp
                entry[_ST] = st
                entry[_N] += 1
                entry[_STEP] = step

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        cfg = self.config
        entries: dict[int, list[Any]] = state["r"]
        if len(entries) < cfg.min_ranks:
            return ()
        fresh_after = now - cfg.stale_s
        ranks = job.ranks
        peers = [
            (r, e)
            for r, e in entries.items()
            if e[_N] > cfg.warmup_samples and ranks[r].last_seen >= fresh_after
        ]
        if len(peers) < cfg.min_ranks or not any(e[_STEP] > e[_EVAL] for _, e in peers):
            return ()
        n = len(peers)
        bar_z = cfg.z + math.sqrt(2.0 * math.log(n))
        if n < _NUMPY_FROM:
            med_c, sd_c = _center_spread([e[_C] for _, e in peers])
            med_d, sd_d = _center_spread([e[_D] for _, e in peers])
            med_tp, sd_tp = _center_spread([e[_TP] for _, e in peers])
            step_s = median([e[_ST] for _, e in peers if e[_ST] == e[_ST]] or [_NAN])
        else:
            # A column per component, gathered by C loops (no bytecode per rank); partitions.
            es = list(map(_ENTRY, peers))
            c, d, tp, st = (np.fromiter(map(get, es), np.float64, n) for get in _SAMPLE)
            med_c, sd_c = _center_spread_np(c)
            med_d, sd_d = _center_spread_np(d)
            med_tp, sd_tp = _center_spread_np(tp)
            st_finite = st[st == st]
            step_s = _median_np(st_finite) if st_finite.size else _NAN
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
        # Whether each peer's latest sample is over a bar (nan compares False: a component
        # nobody reports never flags); only the peers with a new sample use theirs.
        flags: list[bool]
        if n < _NUMPY_FROM:
            flags = [
                e[_C] - med_c > bar_c or e[_D] - med_d > bar_d or med_tp - e[_TP] > bar_tp
                for _, e in peers
            ]
        else:
            flags = ((c - med_c > bar_c) | (d - med_d > bar_d) | (med_tp - tp > bar_tp)).tolist()
        mask, recover_mask = self._mask, self._recover_mask
        out: list[Outcome] = []
        for (r, e), flagged in zip(peers, flags, strict=True):
            step = e[_STEP]
            if step <= e[_EVAL]:
                continue  # nothing new from this rank since the last evaluation
            e[_EVAL] = step
            before = e[_BITS]
            if not (flagged or before or e[_FIRING]):
                continue  # clean, and clean before: its bits stay 0 (the common case)
            bits = e[_BITS] = ((before << 1) | flagged) & mask
            if flagged and not before:
                e[_FIRST] = step
            if e[_FIRING]:
                if not bits & recover_mask:
                    e[_FIRING] = 0
                    out.append(
                        Resolution(self.rule, r, now, "", f"rank {r} keeps pace with its peers")
                    )
                continue
            if flagged and bits.bit_count() >= cfg.min_flagged:
                e[_FIRING] = 1
                verdict = self._worst(e, (med_c, bar_c), (med_d, bar_d), (med_tp, bar_tp))
                out.append(self._finding(ranks[r], e, verdict, n, step_s, bar_z, now))
        return out

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

    def _finding(
        self,
        rs: RankState,
        e: list[Any],
        verdict: tuple[str, float, float, float],
        n: int,
        step_s: float,
        bar_z: float,
        now: float,
    ) -> Finding:
        component, value, med, bar = verdict
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
            step=int(e[_FIRST]),
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
