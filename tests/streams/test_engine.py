"""The engine's own duties: duplicates, reordering, restarts from a checkpoint."""

from __future__ import annotations

from rankwatch.schemas import StepEvent
from rankwatch.streams import Engine


def step(rank: int, n: int, t: float, loss: float = 2.0) -> StepEvent:
    return StepEvent(job_id="j", rank=rank, step=n, timestamp=t, loss=loss)


def test_duplicates_and_late_steps_are_not_applied_twice() -> None:
    engine = Engine.with_builtin_detectors()
    engine.process(step(0, 10, 100.0))
    engine.process(step(0, 11, 101.0))
    rank = engine.jobs["j"].ranks[0]
    engine.process(step(0, 11, 101.0))  # redelivered
    engine.process(step(0, 10, 100.0))  # late
    assert (rank.last_step, rank.last_step_time) == (11, 101.0)


def test_a_restart_from_an_earlier_checkpoint_is_followed() -> None:
    # The job died at step 500 and resumed from the step-400 checkpoint, later in time:
    # its events are new, and a NaN in them must still be caught.
    engine = Engine.with_builtin_detectors()
    for n in range(0, 501):
        engine.process(step(0, n, 1000.0 + n))
    assert engine.jobs["j"].ranks[0].last_step == 500
    alerts = []
    for n in range(400, 420):
        alerts += engine.process(step(0, n, 2000.0 + n, loss=float("nan") if n >= 410 else 2.0))
    assert engine.jobs["j"].ranks[0].last_step == 419
    firing = [(a.rule, a.severity) for a in alerts if a.status == "firing"]
    assert firing[:2] == [("job_restarted", "info"), ("loss_explosion", "critical")]
    assert engine.jobs["j"].attempt == 1


def test_an_oom_on_every_rank_is_two_alerts_not_one_per_rank() -> None:
    from rankwatch.schemas import LogEvent

    engine = Engine.with_builtin_detectors()
    for rank in range(64):
        engine.process(step(rank, 1, 100.0))
    alerts = []
    for rank in range(64):
        alerts += engine.process(
            LogEvent(
                job_id="j",
                rank=rank,
                timestamp=101.0 + rank * 0.01,
                level="ERROR",
                message="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            )
        )
    for rank in range(64):  # time goes on: the gathered ranks are decided
        alerts += engine.process(step(rank, 2, 110.0))
    firing = [(a.rule, a.scope, len(a.ranks)) for a in alerts if a.status == "firing"]
    assert firing == [("cuda_oom", "rank", 1), ("cuda_oom", "job", 64)]


def test_an_oom_on_two_ranks_of_64_is_two_rank_alerts() -> None:
    from rankwatch.schemas import LogEvent

    engine = Engine.with_builtin_detectors()
    for rank in range(64):
        engine.process(step(rank, 1, 100.0))
    alerts = []
    for rank in (5, 9):
        alerts += engine.process(
            LogEvent(
                job_id="j",
                rank=rank,
                timestamp=101.0,
                level="ERROR",
                message="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            )
        )
    for rank in range(64):
        alerts += engine.process(step(rank, 2, 110.0))
    firing = sorted((a.scope, a.ranks) for a in alerts if a.status == "firing")
    assert firing == [("rank", [5]), ("rank", [9])]


def test_alert_id_of_a_log_record_does_not_depend_on_topic_interleaving() -> None:
    # Live, the steps and logs topics interleave as the fetches happen to come back; replayed,
    # they are merged by time. The OOM record's alert must get the same id either way.
    from rankwatch.schemas import LogEvent

    oom = LogEvent(
        job_id="j",
        rank=0,
        timestamp=105.5,
        level="ERROR",
        message="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1 GiB",
    )
    steps = [step(0, n, 100.0 + n) for n in range(10)]

    def alert_ids(order: list[StepEvent | LogEvent]) -> list[str]:
        engine = Engine.with_builtin_detectors()
        return [a.alert_id for e in order for a in engine.process(e) if a.rule == "cuda_oom"]

    logs_first = [oom, *steps]
    steps_first = [*steps, oom]
    assert alert_ids(logs_first) == alert_ids(steps_first)
    assert len(alert_ids(logs_first)) == 1
