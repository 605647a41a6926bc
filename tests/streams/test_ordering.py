"""Alerts are a function of the events, not of how the ranks' events interleave on arrival.

After a broker outage each rank's producer drains its own backlog, one rank after another:
the same events reach the engine rank by rank instead of step by step. The engine holds steps
until every active rank has caught up (rankwatch.streams.ordering), so both orders give the
same alerts, ids included.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from rankwatch.schemas import LogEvent, StepEvent
from rankwatch.simulate import JobSpec, simulate
from rankwatch.simulate.scenarios import SCENARIOS
from rankwatch.streams import Engine
from rankwatch.streams.pipeline import Pipeline
from rankwatch.streams.state_codec import decode_job, encode_job

Event = StepEvent | LogEvent
Seen = tuple[str, str, str, str, int | None, tuple[int, ...]]


def job(scenario: str, *, ranks: int = 8, steps: int = 160, logs: bool = False) -> list[Event]:
    spec = JobSpec(job_id=f"ord-{scenario}", ranks=ranks, steps=steps, checkpoint_every=0, seed=7)
    events = list(simulate(spec, [SCENARIOS[scenario](at_step=40, rank=ranks // 2 - 1)]))
    return events if logs else [e for e in events if isinstance(e, StepEvent)]


def alerts(events: Sequence[Event]) -> list[Seen]:
    engine = Engine.with_builtin_detectors()
    out = engine.process_many(events) + engine.flush()
    return [(a.alert_id, a.status, a.rule, a.scope, a.step, tuple(a.ranks)) for a in out]


def drained(events: Sequence[Event], start_s: float, end_s: float) -> list[Event]:
    """The events between ``start_s`` and ``end_s`` (from the first) held by each rank's
    producer during an outage, then delivered rank after rank."""
    t0 = events[0].epoch
    held = [e for e in events if start_s <= e.epoch - t0 < end_s]
    return (
        [e for e in events if e.epoch - t0 < start_s]
        + sorted(held, key=lambda e: e.rank)  # stable: each rank's own order is kept
        + [e for e in events if e.epoch - t0 >= end_s]
    )


def delayed(events: Sequence[Event], max_delay_s: float, seed: int) -> list[Event]:
    """Each rank's events delivered in their order, each rank late by its own random delay."""
    rng = random.Random(seed)
    delay = {r: rng.uniform(0, max_delay_s) for r in sorted({e.rank for e in events})}
    return sorted(events, key=lambda e: e.epoch + delay[e.rank])


@pytest.mark.parametrize("logs", [False, True], ids=["steps", "steps+logs"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_drained_rank_by_rank_gives_the_alerts_of_the_produced_order(
    scenario: str, logs: bool
) -> None:
    events = job(scenario, logs=logs)
    expected = alerts(events)
    assert expected or scenario == "healthy" or not logs  # log faults need their logs
    for start, end in [(10, 40), (20, 70), (30, 80), (5, 150)]:
        assert alerts(drained(events, start, end)) == expected, (start, end)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_ranks_delayed_differently_give_the_same_alerts(scenario: str) -> None:
    events = job(scenario, logs=True)
    expected = alerts(events)
    for seed in range(3):
        assert alerts(delayed(events, 25.0, seed)) == expected, seed


def test_a_bigger_job_drained_after_a_long_outage_gives_the_same_alerts() -> None:
    events = job("straggler", ranks=64, steps=90, logs=True)
    expected = alerts(events)
    assert [(a[1], a[2], a[5]) for a in expected] == [("firing", "straggler", (31,))]
    assert alerts(drained(events, 5, 80)) == expected


def test_the_test_orders_do_differ_from_the_produced_one() -> None:
    events = job("straggler")
    ranks = [e.rank for e in drained(events, 20, 70)]
    assert ranks != [e.rank for e in events]
    # rank 0's backlog lands whole before rank 1's: 50 s of steps, far past one tick
    assert any(ranks[i : i + 40] == [0] * 40 for i in range(len(ranks)))


def test_a_rank_that_dies_while_others_go_on_is_still_silent_in_any_order() -> None:
    events = job("rank_silent")
    for order in (events, drained(events, 10, 60), delayed(events, 25.0, 1)):
        fired = [a for a in alerts(order) if a[1] == "firing"]
        assert [(a[2], a[5]) for a in fired] == [("rank_silent", (3,))]


def test_a_job_where_every_rank_stops_still_hangs() -> None:
    events = job("hang", logs=True)
    fired = [a for a in alerts(events) if a[1] == "firing"]
    assert "hang" in {a[2] for a in fired}


def test_held_steps_survive_a_snapshot_and_the_pipeline_marks_their_ranks() -> None:
    from rankwatch.schemas import encode

    events = drained(job("straggler"), 20, 70)
    expected = alerts(events)
    cut = len(events) // 2
    first = Pipeline(Engine.with_builtin_detectors())
    seen = [a for e in events[:cut] for a in first.handle(encode(e))]
    state = first.engine.jobs["ord-straggler"]
    assert any(rs.held for rs in state.ranks.values())  # the cut falls inside a backlog
    restored = decode_job(encode_job(state))
    second = Pipeline(Engine.with_builtin_detectors())
    second.engine.jobs["ord-straggler"] = restored
    second.take_dirty()
    for e in events[cut:]:
        result = second.handle(encode(e))
        assert isinstance(result, list)
        seen.extend(result)
    dirty = second.take_dirty()["ord-straggler"]
    assert dirty == {0}  # 8 ranks, one chunk: held steps of ranks not in the event marked too
    seen.extend(second.flush())
    got = [(a.alert_id, a.status, a.rule, a.scope, a.step, tuple(a.ranks)) for a in seen]
    assert got == expected


def test_a_snapshot_from_before_steps_were_held_resumes() -> None:
    events = job("memory_leak")
    cut = len(events) // 2
    first = Engine.with_builtin_detectors()
    seen = first.process_many(events[:cut]) + first.flush()
    state = decode_job(encode_job(first.jobs["ord-memory_leak"]))
    for rs in state.ranks.values():  # what an older worker wrote: no held steps, no got_*
        assert not rs.held
        del rs.held, rs.got_step, rs.got_step_time
    second = Engine.with_builtin_detectors()
    second.jobs["ord-memory_leak"] = state
    assert second.process(events[cut - 1]) == []  # a step already applied is a duplicate
    assert not any(rs.held for rs in state.ranks.values())
    seen += second.process_many(events[cut:]) + second.flush()
    assert [(a.rule, a.status, a.ranks) for a in seen] == [("memory_growth", "firing", [3])]


def test_holding_rows_in_bulk_is_holding_them_one_by_one() -> None:
    """StepOrder.hold_rows (the columnar path's loop) leaves the order as hold() of each row
    in turn, and stops after the row that makes a round due, as hold() says True there."""
    from rankwatch.streams.detectors.base import JobState
    from rankwatch.streams.ordering import StepOrder

    rng = random.Random(3)
    rows = [(1000.0 + rng.random() * 5, rng.randrange(6), n) for n in range(40)]
    worlds: list[int | None] = [None if n % 3 else 6 + n % 2 for n in range(40)]
    found = {5: ["f"], 17: ["g", "h"]}

    def fresh() -> tuple[StepOrder, dict[int, list[object]]]:
        order = StepOrder(JobState("j"))
        order.due = 7
        return order, {r: [] for r in range(6)}

    one, held_one = fresh()
    due_at = []
    for k, (now, r, step) in enumerate(rows):
        got = tuple(found.get(k, ()))
        if one.hold(held_one[r], now, r, step, k, got, worlds[k]):  # type: ignore[arg-type]
            due_at.append(k + 1)
            one.due = 7

    bulk, held_bulk = fresh()
    stops, k = [], 0
    while k < len(rows):
        k = bulk.hold_rows(
            [held_bulk[r] for _, r, _ in rows],  # type: ignore[misc]
            [t for t, _, _ in rows],
            [r for _, r, _ in rows],
            [s for _, _, s in rows],
            list(range(len(rows))),
            found,  # type: ignore[arg-type]
            worlds,
            k,
        )
        if bulk.due <= 0:
            stops.append(k)
            bulk.due = 7
    assert stops == due_at == [7, 14, 21, 28, 35]
    for name in StepOrder.__slots__:
        if name != "job":
            assert getattr(bulk, name) == getattr(one, name), name
    assert held_bulk == held_one
