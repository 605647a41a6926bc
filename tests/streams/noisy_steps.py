"""Randomized step sequences of one job, for checking a rule's frame path against its scalar one.

Each rank gets its own noisy series of values (what ``value`` returns for it, ``None`` for no
value that step), with jittered event times, ranks that join late or skip steps, and the rows
sorted by (event time, rank) as the engine applies them, so the frames they are cut into have
every shape: whole steps, partial ones, a rank twice in a row.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable
from typing import Any

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


@functools.cache
def simulated_steps(name: str, ranks: int = 40, seed: int = 3) -> list[StepEvent]:
    """A simulated job's step events with one fault (1% redelivered), in the engine's
    (time, rank) order: 160 steps, the fault from step 80 on rank 3."""
    from rankwatch.simulate import JobSpec, simulate
    from rankwatch.simulate.scenarios import SCENARIOS

    spec = JobSpec(job_id=f"sim-{name}", ranks=ranks, steps=160, seed=seed)
    fault = SCENARIOS[name](at_step=80, rank=3)
    steps = [e for e in simulate(spec, [fault], duplicates=0.01) if isinstance(e, StepEvent)]
    return sorted(steps, key=lambda e: (e.epoch, e.rank))


class Seeded:
    """A job rule whose job state starts as given (an older snapshot's, or what records of the
    ranks would have left in it), not empty: for the frame checker, which feeds steps alone."""

    def __init__(self, rule: Any, state: dict[str, Any]) -> None:
        self.rule, self.state = rule, state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rule, name)

    def new_job_state(self) -> dict[str, Any]:
        return copy.deepcopy(self.state)
