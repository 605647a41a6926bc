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

The median is exact for the finest width (the median of the block's values, the mean of the
middle two for an even count). A coarser block's median is the median of its finer blocks'
medians: an approximation, always between the block's min and max, and exact when every value
of a finer block is the same. Non-finite values (NaN, inf) are not in any rollup: they are stored
raw (and are the alerts' business), so a block of only NaN losses has no loss rollup.

>>> [w for w in WIDTHS], block_of(1000), stats([3.0, 1.0, 2.0, 10.0])
([16, 128, 1024], 62, (1.0, 2.5, 10.0, 4))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from rankwatch.sinks.storage.base import METRICS

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


def rollup_from_raw(key: tuple[str, int, int], raw: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """The finest-width rollup row of one block from its raw rows ``(ts, *METRICS)``."""
    cells: list[Any] = []
    for index in range(len(METRICS)):
        values = [
            float(row[1 + index])
            for row in raw
            if row[1 + index] is not None and math.isfinite(row[1 + index])
        ]
        cells.extend(stats(values))
    times = [row[0] for row in raw]
    job_id, rank, block = key
    return (job_id, WIDTHS[0], rank, block, min(times), max(times), 0, *cells)


def rollup_from_children(
    key: tuple[str, int, int], width: int, children: Sequence[Sequence[Any]]
) -> tuple[Any, ...]:
    """A coarser rollup row from its finer rollups, each ``(first_ts, last_ts, *VALUE_COLUMNS)``.

    Min, max and count are exact; the median is the median of the children's medians.
    """
    cells: list[Any] = []
    for index in range(len(METRICS)):
        at = 2 + 4 * index
        present = [c for c in children if c[at + 3]]
        if not present:
            cells.extend((None, None, None, 0))
            continue
        cells.extend(
            (
                min(c[at] for c in present),
                median([c[at + 1] for c in present]),
                max(c[at + 2] for c in present),
                sum(int(c[at + 3]) for c in present),
            )
        )
    job_id, rank, block = key
    first = min(c[0] for c in children)
    last = max(c[1] for c in children)
    return (job_id, width, rank, block, first, last, 0, *cells)


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
