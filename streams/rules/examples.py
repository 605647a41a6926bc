"""An example Python rule: ``loss_plateau``, the loss has stopped improving.

Use it from a rules file::

    [[rule]]
    name = "loss_plateau"
    kind = "python"
    class = "rankwatch.streams.rules.examples:LossPlateau"
    options = { window = 200, min_improvement = 0.01 }

It is a :class:`~rankwatch.streams.detectors.base.StepDetector`: per rank, the best loss seen
is compared with the best loss ``window`` steps later. Less than ``min_improvement`` (relative)
better: a rank-scope ``warning`` finding (the incident book gathers ranks into one job alert);
a new best loss resolves it. State: four numbers per rank, a plain list.

>>> from rankwatch.schemas import StepEvent
>>> from rankwatch.streams.engine import Engine
>>> engine = Engine([LossPlateau(window=20)])
>>> alerts = []
>>> for step in range(60):
...     loss = max(3.0 - 0.1 * step, 2.0)  # falls, then stalls at 2.0 from step 10
...     alerts += engine.process(StepEvent(job_id="j", rank=0, step=step, timestamp=step,
...                                        loss=loss))
>>> [(a.rule, a.ranks, a.step, a.status) for a in alerts + engine.flush()]
[('loss_plateau', [0], 10, 'firing')]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rankwatch.schemas import StepEvent
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Finding, Outcome, Resolution


class LossPlateau:
    """No relative improvement of ``min_improvement`` in the best loss over ``window`` steps."""

    name = "loss_plateau"  # the state slot, and the rule id of its alerts

    def __init__(self, window: int = 200, min_improvement: float = 0.01) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        if not 0 <= min_improvement < 1:
            raise ValueError(f"min_improvement must be in [0, 1), got {min_improvement}")
        self.window = window
        self.min_improvement = min_improvement

    def new_rank_state(self) -> list[Any]:
        # best loss, step of the best, best at the start of the window, window start; active
        return [math.inf, -1, math.inf, -1, False]

    def on_step(
        self, job: JobState, rank: RankState, state: list[Any], event: StepEvent
    ) -> Iterable[Outcome]:
        loss = event.loss
        if loss is None or not math.isfinite(loss):
            return ()  # non-finite losses are loss_explosion's business
        if state[3] < 0:
            state[2], state[3] = loss, event.step
        if loss < state[0]:
            state[0], state[1] = loss, event.step
            if state[4] and loss < state[2] * (1 - self.min_improvement):
                state[4] = False
                state[2], state[3] = loss, event.step
                return (Resolution(self.name, rank.rank, event.epoch, "", "loss improves again"),)
        if event.step - state[3] < self.window:
            return ()
        improved = state[0] < state[2] * (1 - self.min_improvement)
        start = state[3]
        state[2], state[3] = state[0], event.step
        if improved or state[4]:
            return ()
        state[4] = True
        return (
            Finding(
                rule=self.name,
                rank=rank.rank,
                severity="warning",
                event_time=event.epoch,
                summary=f"loss has not improved by {self.min_improvement:.0%} over "
                f"{self.window} steps on rank {rank.rank} (best {state[0]:.4g})",
                step=state[1] if state[1] >= 0 else start,
                evidence={"best_loss": state[0], "window_steps": self.window},
            ),
        )
