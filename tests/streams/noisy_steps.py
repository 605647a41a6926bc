"""Randomized step sequences of one job, for checking a rule's frame path against its scalar one.

Each rank gets its own noisy series of values (what ``value`` returns for it, ``None`` for no
value that step), with jittered event times, ranks that join late or skip steps, and the rows
sorted by (event time, rank) as the engine applies them, so the frames they are cut into have
every shape: whole steps, partial ones, a rank twice in a row.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from rankwatch.schemas import StepEvent

#: ``value(rng, rank, step) -> {metric: value or None}`` for one rank's step.
Values = Callable[[random.Random, int, int], dict[str, float | None]]


def noisy_job(
    seed: int,
    value: Values,
    *,
    ranks: int = 16,
    steps: int = 300,
    step_s: float = 1.0,
    skip: float = 0.02,
    late_ranks: int = 2,
) -> list[StepEvent]:
    rng = random.Random(seed)
    start = {r: (rng.randrange(steps // 3) if r < late_ranks else 0) for r in range(ranks)}
    rows: list[tuple[float, int, int, dict[str, float | None]]] = []
    for r in range(ranks):
        pace = step_s * rng.uniform(0.9, 1.1)
        for s in range(start[r], steps):
            if rng.random() < skip:
                continue
            t = 1.7e9 + s * pace + rng.uniform(0.0, 0.5 * step_s)
            rows.append((t, r, s, value(rng, r, s)))
    rows.sort(key=lambda row: (row[0], row[1]))
    return [
        StepEvent(job_id="frames", rank=r, step=s, timestamp=t, **{k: v for k, v in vs.items()})
        for t, r, s, vs in rows
    ]
