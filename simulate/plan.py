"""Several faults on one simulated job: the ``--scenario`` text of ``rankwatch simulate``, what
each plan should fire, and the demo's plan.

A plan is a list of :class:`~rankwatch.simulate.scenarios.Scenario` objects, each starting at
its own step on its own rank, applied together to one job by
:func:`~rankwatch.simulate.job.simulate`. Faults that end the job (``cuda_oom``,
``fatal_error``) or stall it (``hang``, ``nccl_timeout``) must come last: nothing happens
after them.

>>> spec = JobSpec(ranks=64, steps=200)
>>> [(s.name, s.at_step, s.rank) for s in parse_plan("memory_leak@30:5, cuda_oom", spec)]
[('memory_leak', 30, 5), ('cuda_oom', 133, 14)]
>>> [(s.name, s.at_step, s.rank) for s in demo_plan(spec)]
[('memory_leak', 20, 5), ('straggler', 50, 42), ('nccl_error', 80, 17), ('cuda_oom', 199, 5)]
>>> [f"{e.rule}/{e.scope}:{list(e.ranks)}" for _, e in expected_alerts(demo_plan(spec), spec)]
['memory_growth/rank:[5]', 'straggler/rank:[42]', 'nccl_error/rank:[17]', 'cuda_oom/rank:[5]']
>>> parse_plan("memory_leak@300", spec)
Traceback (most recent call last):
...
rankwatch.simulate.plan.PlanError: memory_leak@300: step 300 is past the job's last step (199)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rankwatch.schemas.rankwatch_error import RankwatchError
from rankwatch.simulate.model import JobSpec
from rankwatch.simulate.scenarios import SCENARIOS, Expectation, Scenario

#: Faults after which the job makes no progress: nothing later in a plan would happen.
TERMINAL = frozenset({"cuda_oom", "fatal_error", "hang", "nccl_timeout"})
#: ``--scenario demo``: the demo's faults (see :func:`demo_plan`).
DEMO = "demo"
#: Shorter steps make the demo's straggler too small to tell from noise (see :func:`demo_plan`).
MIN_STRAGGLER_STEP_S = 0.2

_ITEM = re.compile(r"^(?P<name>[a-z_]+)(?:@(?P<step>\d+))?(?::(?P<rank>\d+))?$")
_DEFAULT_RANKS = (3, 14, 25, 36, 47, 58)  # spread over hosts, distinct at 64 ranks


class PlanError(RankwatchError, ValueError):
    """A ``--scenario`` text that names an unknown fault or a step or rank the job lacks."""


def parse_plan(text: str, spec: JobSpec) -> list[Scenario]:
    """``NAME[@STEP][:RANK],...`` into scenarios; ``demo`` is :func:`demo_plan`.

    Without ``@STEP`` faults are spread evenly over the job in the order given; without
    ``:RANK`` each gets its own rank (3, 14, 25, ... modulo the job size).
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if items == [DEMO]:
        return demo_plan(spec)
    plan: list[Scenario] = []
    for index, item in enumerate(items):
        match = _ITEM.match(item)
        if match is None:
            raise PlanError(f"{item!r}: expected NAME[@STEP][:RANK], e.g. memory_leak@30:5")
        name = match["name"]
        if name not in SCENARIOS:
            known = ", ".join([*SCENARIOS, DEMO])
            raise PlanError(f"{item}: unknown scenario {name!r}; known: {known}")
        spread = (index + 1) * spec.steps // (len(items) + 1)
        at_step = int(match["step"]) if match["step"] else spread
        rank = int(match["rank"]) if match["rank"] else _DEFAULT_RANKS[index % 6] % spec.ranks
        if at_step >= spec.steps:
            last = spec.steps - 1
            raise PlanError(f"{item}: step {at_step} is past the job's last step ({last})")
        if rank >= spec.ranks:
            raise PlanError(f"{item}: rank {rank} is not below the job's {spec.ranks} ranks")
        plan.append(SCENARIOS[name](at_step=at_step, rank=rank))
    _check_order(plan)
    return plan


def _check_order(plan: Sequence[Scenario]) -> None:
    for end in plan:
        if end.name not in TERMINAL:
            continue
        later = [s for s in plan if s is not end and s.at_step > end.at_step]
        if later:
            raise PlanError(
                f"{later[0].name}@{later[0].at_step} would never happen: the job stops at "
                f"step {end.at_step} ({end.name}); put {end.name} last or later"
            )


def demo_plan(spec: JobSpec) -> list[Scenario]:
    """The demo's faults: a rank leaking memory from 10% of the job, a throttled GPU from 25%,
    a lone InfiniBand error at 40%, and at the last step the leaking rank runs out of memory
    (torchrun then stops the job). Ranks 5, 42 and 17, modulo the job size, kept distinct.

    The straggler is 35% slower in compute: with steps under :data:`MIN_STRAGGLER_STEP_S`
    that is below the detector's 50 ms noise floor, so such a fast plan leaves it out.
    """
    if spec.ranks < 4:
        raise PlanError(f"the demo plan needs at least 4 ranks, got {spec.ranks}")
    leak, slow, link = _distinct([5, 42, 17], spec.ranks)
    steps = spec.steps
    plan = [SCENARIOS["memory_leak"](at_step=steps * 10 // 100, rank=leak)]
    if spec.step_time_s >= MIN_STRAGGLER_STEP_S:
        plan.append(SCENARIOS["straggler"](at_step=steps * 25 // 100, rank=slow))
    plan.append(SCENARIOS["nccl_error"](at_step=steps * 40 // 100, rank=link))
    plan.append(SCENARIOS["cuda_oom"](at_step=steps - 1, rank=leak))
    return plan


def _distinct(wanted: list[int], ranks: int) -> list[int]:
    out: list[int] = []
    for rank in wanted:
        rank %= ranks
        while rank in out:
            rank = (rank + 1) % ranks
        out.append(rank)
    return out


def expected_alerts(plan: Sequence[Scenario], spec: JobSpec) -> list[tuple[Scenario, Expectation]]:
    """What must fire for the plan, fault by fault, in plan order."""
    return [(scenario, e) for scenario in plan for e in scenario.expectations(spec)]


def allowed_rules(plan: Sequence[Scenario], spec: JobSpec) -> set[str]:
    """Rules the plan may fire: the expected ones and their documented consequences."""
    return {e.rule for _, e in expected_alerts(plan, spec)} | {
        rule for s in plan for rule in s.consequences
    }


def describe_scenarios(spec: JobSpec | None = None) -> str:
    """One paragraph per scenario: name, what it does, what must fire (``--list``)."""
    spec = spec or JobSpec()
    blocks = []
    for name, cls in SCENARIOS.items():
        scenario = cls()
        fires = ", ".join(
            f"{e.rule} ({e.scope}, within {e.within_s:g} s of event time)"
            for e in scenario.expectations(spec)
        )
        lines = [f"{name}", f"    {cls.description}", f"    fires: {fires or 'nothing'}"]
        if cls.consequences:
            lines.append(f"    may also fire: {', '.join(sorted(cls.consequences))}")
        if name in TERMINAL:
            lines.append("    the job stops here: list it last")
        blocks.append("\n".join(lines))
    demo = ", ".join(f"{s.name}@{s.at_step}:{s.rank}" for s in demo_plan(JobSpec(ranks=64)))
    blocks.append(f"{DEMO}\n    the demo's faults (at 64 ranks, 300 steps: {demo})")
    return "\n".join(blocks)
