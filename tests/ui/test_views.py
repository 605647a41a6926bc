"""The heatmap's statistics across ranks: one bad rank among many stands out."""

from __future__ import annotations

import random

from rankwatch.ui.views import band_and_deviation, quantile


def test_one_leaking_rank_among_a_thousand_is_marked() -> None:
    rng = random.Random(3)
    ranks = list(range(1024))
    # Every rank noisy around 52 GB; rank 777 climbs 50 MB a column from column 20.
    values = [
        [
            52_000 + rng.gauss(0, 300) + (50.0 * max(0, c - 20) if r == 777 else 0)
            for c in range(200)
        ]
        for r in ranks
    ]
    out = band_and_deviation(ranks, values)
    assert out["marked"] == 777
    worst_healthy = max(d for r, d in zip(ranks, out["deviation"], strict=True) if r != 777)
    assert out["deviation"][777] > 5 * worst_healthy
    # The band is the healthy ranks' spread, not pulled by the one leaking rank.
    assert 51_500 < out["p10"][199] < out["median"][199] < out["p90"][199] < 52_500


def test_gaps_and_non_finite_values() -> None:
    nan = float("nan")
    out = band_and_deviation([0, 1, 2, 3], [[1.0, None], [1.0, None], [1.0, 2.0], [nan, 2.0]])
    assert out["median"] == [1.0, 2.0]
    assert out["marked"] == 3  # a NaN is as far from its peers as a value can be
    assert band_and_deviation([0, 1], [[1.0], [9.0]])["marked"] is None  # no majority of 2


def test_quantile_interpolates() -> None:
    assert quantile([0.0, 10.0, 20.0], 0.25) == 5.0
    assert quantile([0.0, 10.0, 20.0], 1.0) == 20.0
