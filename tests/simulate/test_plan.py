"""Plans of several faults: parsing ``--scenario``, and the demo's promise checked in-process
(its faults fire exactly the alerts it announces, nothing else), at the demo's sizes."""

from __future__ import annotations

import pytest

from rankwatch.simulate import JobSpec, simulate
from rankwatch.simulate.plan import (
    PlanError,
    allowed_rules,
    demo_plan,
    describe_scenarios,
    expected_alerts,
    parse_plan,
)
from rankwatch.simulate.scenarios import SCENARIOS
from rankwatch.streams import Engine


def test_defaults_spread_faults_over_steps_and_ranks() -> None:
    spec = JobSpec(ranks=64, steps=300)
    plan = parse_plan("memory_leak, straggler, nccl_error", spec)
    assert [(s.name, s.at_step) for s in plan] == [
        ("memory_leak", 75),
        ("straggler", 150),
        ("nccl_error", 225),
    ]
    assert len({s.rank for s in plan}) == 3
    assert parse_plan("", spec) == []
    assert parse_plan(" demo ", spec) == demo_plan(spec)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("memory_leek", "unknown scenario 'memory_leek'; known: healthy"),
        ("memory_leak@x", "expected NAME[@STEP][:RANK]"),
        ("memory_leak@10:8", "rank 8 is not below the job's 8 ranks"),
        ("memory_leak@100", "step 100 is past the job's last step (99)"),
        ("hang@20,straggler@30", "straggler@30 would never happen: the job stops at step 20"),
    ],
)
def test_bad_plans_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PlanError) as raised:
        parse_plan(text, JobSpec(ranks=8, steps=100))
    assert message in str(raised.value)


def test_list_names_every_scenario_and_what_it_fires() -> None:
    text = describe_scenarios()
    for name in SCENARIOS:
        assert f"\n{name}\n" in f"\n{text}\n"
    assert "fires: memory_growth (rank" in text
    assert "may also fire: hang, job_stopped, nccl_error, rank_silent" in text


@pytest.mark.parametrize(
    ("ranks", "step_time", "steps"),
    [(64, 0.5, 185), (8, 0.2, 240), (8, 0.1, 180)],
    ids=["demo-default", "demo-test", "too-fast-for-a-straggler"],
)
def test_demo_plan_fires_what_it_announces_and_nothing_else(
    ranks: int, step_time: float, steps: int
) -> None:
    spec = JobSpec(
        job_id="demo",
        ranks=ranks,
        steps=steps,
        step_time_s=step_time,
        warmup_steps=3,
        checkpoint_s=10 * step_time,
    )
    plan = demo_plan(spec)
    assert ("straggler" in {s.name for s in plan}) == (step_time >= 0.2)
    engine = Engine.with_builtin_detectors()
    # Live, nothing is flushed at the end: every alert must come from process().
    alerts = [a for e in simulate(spec, plan) for a in engine.process(e)]
    firing = [a for a in alerts if a.status == "firing"]
    for _, expected in expected_alerts(plan, spec):
        assert any(a.rule == expected.rule and set(expected.ranks) <= set(a.ranks) for a in firing)
    assert {a.rule for a in firing} <= allowed_rules(plan, spec)
    assert len(firing) == len(plan)
