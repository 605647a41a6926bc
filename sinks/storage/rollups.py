"""Per-rank rollups of the step metrics: min, median, max and count per block of steps.

A heatmap of a long job must not scan its raw rows (1,024 ranks x 20,000 steps is 20 million of
them), so the store keeps, beside the raw ``steps`` rows, one ``step_rollups`` row per
``(job, width, rank, block)``: block ``b`` of width ``w`` covers steps ``[b*w, (b+1)*w)``. There
are three widths, each :data:`FANOUT` times the previous one (:data:`WIDTHS`).

How they stay exactly-once under the storage sink's replays: nothing is ever *added* to a
rollup. A write recomputes the rollup of every ``(job, rank, block)`` its steps touch, in the
same transaction, from what is stored: the finest width from the raw rows of the block, each
coarser width from the :data:`FANOUT` finer rollups under it. Writing a batch twice therefore
recomputes the same numbers. Raw-step retention deletes raw rows of old blocks; it first marks
their finest rollups ``sealed``, and a sealed rollup is never recomputed again (its raw rows are
gone), so a step that arrives for a sealed block (a replay, or a very late step) is stored raw but
left out of the rollups.

How a write stays cheap (a live sink writes every rank's open blocks, three widths, every
batch): a store keeps in memory (:class:`RollupCache`) the open blocks it last wrote: each
finest block's steps and values, each coarser block's children's cells. It uses them only while
they are provably what the database holds: in the write transaction it checks that it is still
the job's last rollup writer (``rollup_writers``: the generation it wrote last time); another
store's write, retention (which clears that table) or a rolled-back transaction make it read
the blocks back. Held blocks then take the batch's new rows (a step already held is a replay:
the raw insert kept the stored row, and the block adds nothing), and each coarser block moves
the one child that changed (:meth:`CoarseBlock.update`): the same numbers as recomputing from
the rows, without the reads. Only the columns of the metrics that changed are written; those
without a value in a block are empty in its rollup, as stored.

The median is exact for the finest width (the median of the block's values, the mean of the
middle two for an even count). A coarser block's median is the median of its finer blocks'
medians: an approximation, always between the block's min and max, and exact when every value
of a finer block is the same. Non-finite values (NaN, inf) are not in any rollup: they are stored
raw (and are the alerts' business), so a block of only NaN losses has no loss rollup.

>>> [w for w in WIDTHS], block_of(1000), stats([3.0, 1.0, 2.0, 10.0])
([16, 128, 1024], 62, (1.0, 2.5, 10.0, 4))
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from rankwatch.sinks.storage.base import METRICS
from rankwatch.sinks.storage.rows import STEP_COLUMNS

#: How many blocks of one width make a block of the next.
FANOUT = 8
#: The block widths in steps, finest first.
WIDTHS: tuple[int, ...] = (16, 16 * FANOUT, 16 * FANOUT * FANOUT)
#: The statistics a heatmap can show, and the rollup column suffix of each.
STATS: dict[str, str] = {"min": "min", "median": "med", "max": "max"}

#: The rollup columns after the key, in order: times, the sealed flag, then per metric
#: ``{metric}_min, {metric}_med, {metric}_max, {metric}_n``.
VALUE_COLUMNS: tuple[str, ...] = tuple(
    f"{metric}_{suffix}" for metric in METRICS for suffix in ("min", "med", "max", "n")
)
ROLLUP_COLUMNS: tuple[str, ...] = (
    "job_id",
    "width",
    "rank",
    "block",
    "first_ts",
    "last_ts",
    "sealed",
    *VALUE_COLUMNS,
)

Stats = tuple[float | None, float | None, float | None, int]


def block_of(step: int, width: int = WIDTHS[0]) -> int:
    """The block of ``width`` that holds ``step``."""
    return step // width


def median(values: Sequence[float]) -> float:
    """The median of a non-empty list (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def stats(values: Sequence[float]) -> Stats:
    """``(min, median, max, count)`` of the values (``(None, None, None, 0)`` for none)."""
    if not values:
        return None, None, None, 0
    return min(values), median(values), max(values), len(values)


def reported(step_rows: Sequence[Sequence[Any]]) -> list[str]:
    """The metrics that at least one of these ``steps`` rows (``rows.STEP_COLUMNS``) holds.

    >>> from rankwatch.schemas import StepEvent
    >>> from rankwatch.sinks.storage.rows import step_row
    >>> reported([step_row(StepEvent(job_id="j", rank=0, step=1, timestamp=0.0, loss=2.0))])
    ['loss']
    """
    if not step_rows:
        return []
    columns = list(zip(*step_rows, strict=True))
    return [
        metric
        for at, metric in enumerate(METRICS, start=FIRST_METRIC)
        if columns[at].count(None) != len(step_rows)
    ]


#: Where the metrics start in a ``steps`` row.
FIRST_METRIC = STEP_COLUMNS.index(METRICS[0])
_EMPTY: Stats = (None, None, None, 0)

#: A rollup's cells: ``(first_ts, last_ts, *VALUE_COLUMNS)``, the row less its key and flag.
Cells = tuple[Any, ...]


def metric_indexes(metrics: Iterable[str]) -> list[int]:
    """Positions in :data:`METRICS` (and in a block's cells, by fours after the times)."""
    return [METRICS.index(metric) for metric in metrics]


class FineBlock:
    """What one rank's finest block holds: its steps, their time span, each metric's finite
    values in order. Its :meth:`cells` are exactly the rollup of those rows.

    >>> b = FineBlock(0)
    >>> [b.add(3, 10.0, [2.0], only=[0]), b.add(3, 10.0, [2.0], only=[0])]
    [True, False]
    >>> [b.add(4, 11.0, [1.0], only=[0]), b.add(5, 9.0, [None], only=[0])]
    [True, True]
    >>> b.cells()[:6]
    (9.0, 11.0, 1.0, 1.5, 2.0, 2)
    """

    __slots__ = ("_cells", "block", "first", "last", "moved", "steps", "values")

    def __init__(self, block: int) -> None:
        self.block = block
        self.steps: set[int] = set()
        self.first = math.inf
        self.last = -math.inf
        self.values: list[list[float]] = [[] for _ in METRICS]
        self._cells: list[Any] | None = None
        #: Whether ``first_ts`` or a min or max moved since the caller last cleared it (most
        #: of a live block's new rows move only ``last_ts``, the medians and the counts).
        self.moved = True

    def add(
        self,
        step: int,
        ts: float,
        row: Sequence[Any],
        at: int = 0,
        only: Iterable[int] | None = None,
    ) -> bool:
        """Add one raw row, its metrics at ``row[at:]`` (only those of ``only`` if given: the
        others are None); False (nothing done) for a step it already holds."""
        if step in self.steps:
            return False
        self.steps.add(step)
        if ts < self.first:
            self.first = ts
            self.moved = True
        if ts > self.last:
            self.last = ts
        for index in range(len(METRICS)) if only is None else only:
            value = row[at + index]
            if value is not None and math.isfinite(value):
                values = self.values[index]
                if not values or value < values[0] or value > values[-1]:
                    self.moved = True
                bisect.insort(values, value)
        return True

    def cells(self, only: Sequence[int] | None = None) -> Cells:
        """The rollup cells; ``only`` recomputes just those metrics (the others have had no
        value added since the last call)."""
        out = self._cells
        if out is None or only is None:
            out = self._cells = [None, None, *([None] * 4 * len(METRICS))]
            only = range(len(METRICS))
        out[0], out[1] = self.first, self.last
        for index in only:
            values = self.values[index]
            at = 2 + 4 * index
            n = len(values)
            if not n:
                out[at : at + 4] = _EMPTY
                continue
            middle = n // 2
            mid = values[middle] if n % 2 else (values[middle - 1] + values[middle]) / 2
            out[at : at + 4] = (values[0], mid, values[-1], n)
        return tuple(out)


class CoarseBlock:
    """One rank's coarser block: the cells of each finer block under it, by block number.

    >>> c = CoarseBlock(0, {0: (0.0, 1.0, 1.0, 1.0, 1.0, 2), 1: (2.0, 3.0, 0.0, 5.0, 9.0, 3)})
    >>> c.cells(metrics=1)
    (0.0, 3.0, 0.0, 3.0, 9.0, 5)
    >>> c.update(2, (4.0, 5.0, 7.0, 7.0, 7.0, 1), [0])
    (0.0, 5.0, 0.0, 5.0, 9.0, 6)
    >>> c.update(2, (4.0, 6.0, 6.0, 6.5, 7.0, 2), [0])
    (0.0, 6.0, 0.0, 5.0, 9.0, 7)
    """

    __slots__ = ("_cells", "_medians", "block", "children", "moved")

    def __init__(self, block: int, children: dict[int, Cells] | None = None) -> None:
        self.block = block
        self.children: dict[int, Cells] = {} if children is None else children
        self._cells: list[Any] | None = None
        #: As :attr:`FineBlock.moved`: ``first_ts``, a min or a max moved.
        self.moved = True
        #: Per metric, the medians of the children that have values, in order.
        self._medians: list[list[float]] = []

    def cells(self, metrics: int = len(METRICS)) -> Cells:
        """Min of mins, median of medians, max of maxes, sum of counts; the time span."""
        kids = list(self.children.values())
        self.moved = True
        out = self._cells = [None] * (2 + 4 * metrics)
        out[0] = min([k[0] for k in kids])
        out[1] = max([k[1] for k in kids])
        self._medians = []
        for index in range(metrics):
            at = 2 + 4 * index
            present = [k for k in kids if k[at + 3]]
            medians = sorted([k[at + 1] for k in present])
            self._medians.append(medians)
            if not present:
                out[at : at + 4] = _EMPTY
                continue
            out[at] = min([k[at] for k in present])
            out[at + 1] = _middle(medians)
            out[at + 2] = max([k[at + 2] for k in present])
            out[at + 3] = sum([k[at + 3] for k in present])
        return tuple(out)

    def update(self, child: int, cells: Cells, only: Sequence[int]) -> Cells:
        """Set one child's cells, which hold every value its old cells held and more only in
        the metrics ``only`` (a finer block only ever gains rows), and return the new cells.

        Exactly what :meth:`cells` would compute, in a few steps: a min only falls, a max
        only rises, a count changes by the child's, and one median moves in the sorted list.
        """
        children = self.children
        old = children.get(child)
        children[child] = cells
        out = self._cells
        if out is None:
            return self.cells(len(cells) // 4)
        if old is None:  # a new child: as if it had been there, empty
            old = (math.inf, -math.inf, *(_EMPTY * (len(cells) // 4)))
        if cells[0] < out[0]:
            out[0] = cells[0]
            self.moved = True
        if cells[1] > out[1]:
            out[1] = cells[1]
        all_medians = self._medians
        insort = bisect.insort
        for index in only:  # plain comparisons, no calls: this runs for every rank and batch
            at = 2 + 4 * index
            had, has = old[at + 3], cells[at + 3]
            if has == had:
                continue
            medians = all_medians[index]
            if had:
                medians.remove(old[at + 1])
            insort(medians, cells[at + 1])
            if out[at + 3]:
                if cells[at] < out[at]:
                    out[at] = cells[at]
                    self.moved = True
                if cells[at + 2] > out[at + 2]:
                    out[at + 2] = cells[at + 2]
                    self.moved = True
            else:
                out[at], out[at + 2] = cells[at], cells[at + 2]
                self.moved = True
            half = len(medians) >> 1
            if len(medians) & 1:
                out[at + 1] = medians[half]
            else:
                out[at + 1] = (medians[half - 1] + medians[half]) / 2
            out[at + 3] += has - had
        return tuple(out)


def _middle(ordered: Sequence[float]) -> float:
    """The median of a sorted non-empty list, as :func:`median` computes it."""
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def written_columns(metrics: Iterable[str], steady: bool = False) -> tuple[str, ...]:
    """The rollup columns a write of ``metrics`` sends: the times and every statistic, or for
    a ``steady`` row (first time, mins and maxes as stored) the last time, medians and counts.

    >>> written_columns(["loss"], steady=True)
    ('last_ts', 'loss_med', 'loss_n')
    """
    if steady:
        return ("last_ts", *(f"{m}_{s}" for m in metrics for s in ("med", "n")))
    return (
        "first_ts",
        "last_ts",
        *(f"{m}_{s}" for m in metrics for s in ("min", "med", "max", "n")),
    )


def cell_positions(columns: Iterable[str]) -> list[int]:
    """Where each column is in a block's cells ``(first_ts, last_ts, *VALUE_COLUMNS)``."""
    return [ROLLUP_COLUMNS.index(c) - 4 - (c not in ("first_ts", "last_ts")) for c in columns]


def update_groups(
    cells: dict[tuple[str, int, int], Cells],
    metrics: Sequence[str],
    steady: Collection[tuple[str, int, int]],
) -> list[tuple[dict[tuple[str, int, int], Cells], tuple[str, ...]]]:
    """The rows to update in two groups, each with the columns it needs written."""
    calm = {key: row for key, row in cells.items() if key in steady}
    rest = {key: row for key, row in cells.items() if key not in steady}
    groups = [(calm, written_columns(metrics, steady=True)), (rest, written_columns(metrics))]
    return [(group, columns) for group, columns in groups if group]


class RollupCache:
    """The open blocks of the ranks a store last wrote: one finest block and one block of each
    coarser width per ``(job, rank)``, so a batch needs no read of what it already knows.

    It is only ever used while it is provably the database's state: the store checks that it
    was the last writer of the job's rollups (``rollup_writers``) in the write transaction, and
    drops the cache on any failed transaction and on retention.
    """

    def __init__(self, max_ranks: int = 1 << 17) -> None:
        self.max_ranks = max_ranks
        self.fine: dict[tuple[str, int], FineBlock] = {}
        self.coarse: list[dict[tuple[str, int], CoarseBlock]] = [{} for _ in WIDTHS[1:]]
        #: job -> the generation this store last wrote to ``rollup_writers``.
        self.generation: dict[str, int] = {}

    def clear(self) -> None:
        self.fine.clear()
        for level in self.coarse:
            level.clear()
        self.generation.clear()

    def drop(self, job_id: str) -> None:
        """Forget one job (another writer wrote it since)."""
        self.generation.pop(job_id, None)
        for key in [k for k in self.fine if k[0] == job_id]:
            del self.fine[key]
        for level in self.coarse:
            for key in [k for k in level if k[0] == job_id]:
                del level[key]

    def keep_fine(self, job_id: str, rank: int, block: FineBlock) -> None:
        held = self.fine.get((job_id, rank))
        if held is None or held.block <= block.block:  # the newest block is the open one
            self.fine[(job_id, rank)] = block

    def keep_coarse(self, level: int, job_id: str, rank: int, block: CoarseBlock) -> None:
        held = self.coarse[level].get((job_id, rank))
        if held is None or held.block <= block.block:
            self.coarse[level][(job_id, rank)] = block

    def trim(self) -> None:
        """Bound the memory: past ``max_ranks`` open blocks, start again from the database."""
        if len(self.fine) > self.max_ranks:
            generation = dict(self.generation)
            self.clear()
            self.generation.update(generation)


def group_by_block(
    keys: Iterable[tuple[str, int, int]],
) -> dict[tuple[str, int], list[int]]:
    """Touched ``(job, rank, block)`` keys as ``{(job, block): sorted ranks}``: one query each.

    >>> group_by_block([("j", 3, 0), ("j", 1, 0), ("j", 1, 2)])
    {('j', 0): [1, 3], ('j', 2): [1]}
    """
    grouped: dict[tuple[str, int], set[int]] = {}
    for job_id, rank, block in keys:
        grouped.setdefault((job_id, block), set()).add(rank)
    return {key: sorted(ranks) for key, ranks in sorted(grouped.items())}


def plan_columns(span_from: int, span_to: int, columns: int) -> tuple[int, int, list[int]]:
    """Pick the rollup width and the columns of a heatmap over steps ``[span_from, span_to)``.

    The coarsest width that still gives at least ``columns / 2`` blocks (else the finest); each
    column is a whole number ``k`` of blocks, so its values are exact statistics of whole blocks,
    and there are at most ``columns`` columns. The edges are aligned to the blocks, so the first
    and the last column may reach beyond the span asked. Returns ``(width, k, edges)``.

    >>> width, k, edges = plan_columns(0, 20_000, 200)
    >>> width, k, len(edges) - 1, edges[:3], edges[-1]
    (128, 1, 157, [0, 128, 256], 20096)
    >>> plan_columns(5, 40, 200)
    (16, 1, [0, 16, 32, 48])
    """
    span = max(1, span_to - span_from)
    width = WIDTHS[0]
    for candidate in reversed(WIDTHS):
        if math.ceil(span / candidate) * 2 >= columns:
            width = candidate
            break
    first = block_of(span_from, width)
    last = -(-span_to // width)  # exclusive, rounded up
    blocks = max(1, last - first)
    k = -(-blocks // columns)
    count = -(-blocks // k)
    edges = [(first + i * k) * width for i in range(count)] + [(first + blocks) * width]
    return width, k, edges
