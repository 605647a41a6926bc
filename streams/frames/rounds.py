"""Cut rows of one job into frames by round: a rank's first row goes to frame 0, its second to
frame 1, and so on, so each frame holds each rank at most once and each rank's rows keep their
order. In vector operations: no Python work per row.

This is the cut for the per-rank rules, which see only their own rank's steps in order: what
they find and the state they end with do not depend on how ranks interleave. (A job-level
rule reads ranks side by side in event time: it needs the frames of the engine's release
order, cut at ticks, which :func:`~rankwatch.streams.frames.frames_of` gives.)

>>> import numpy as np
>>> [r.tolist() for r in rounds(np.array([3, 1, 3, 2, 1, 3]))]
[[0, 1, 3], [2, 4], [5]]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["rounds"]


def rounds(ranks: npt.NDArray[np.int64]) -> list[npt.NDArray[np.intp]]:
    """Row indices of each round, in row order within a round."""
    n = len(ranks)
    if n == 0:
        return []
    order = np.argsort(ranks, kind="stable")  # rows grouped by rank, each rank's in order
    sorted_ranks = ranks[order]
    starts = np.flatnonzero(np.r_[True, sorted_ranks[1:] != sorted_ranks[:-1]])
    # The occurrence number of each row within its rank: position minus its group's start.
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    occurrence = np.empty(n, dtype=np.intp)
    occurrence[order] = np.arange(n) - group_start
    by_round = np.argsort(occurrence, kind="stable")  # rounds in order, rows in order within
    counts = np.bincount(occurrence)
    return np.split(by_round, np.cumsum(counts)[:-1])
