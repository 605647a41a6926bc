"""rounds: a rank's k-th row goes to round k; rows keep their order within a round."""

from __future__ import annotations

import random

import numpy as np

from rankwatch.streams.frames import rounds


def test_every_round_holds_each_rank_once_and_ranks_keep_their_order() -> None:
    rng = random.Random(3)
    ranks = np.array([rng.randrange(20) for _ in range(500)], dtype=np.int64)
    got = rounds(ranks)
    assert sorted(np.concatenate(got).tolist()) == list(range(500))
    seen: dict[int, int] = {}
    for k, rows in enumerate(got):
        assert len(set(ranks[rows].tolist())) == len(rows)
        assert rows.tolist() == sorted(rows.tolist())
        for row in rows.tolist():
            r = int(ranks[row])
            assert seen.get(r, -1) == k - 1  # its previous row was in the round before
            seen[r] = k


def test_no_rows_no_rounds() -> None:
    assert rounds(np.zeros(0, dtype=np.int64)) == []
