"""The storage back-ends against a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.sinks.exceptions import QueryError, StoreError
from rankwatch.sinks.storage import LogQuery, SqlStore, StepQuery, open_store
from rankwatch.sinks.storage import postgres as pg_schema
from rankwatch.sinks.storage import sqlite as sqlite_schema
from rankwatch.sinks.storage.rows import LOG_COLUMNS, STEP_COLUMNS, log_row, step_row

T0 = 1_750_000_000.0


def steps(job: str = "j1", ranks: int = 4, n: int = 20) -> list[StepEvent]:
    return [
        StepEvent(
            job_id=job, rank=r, step=s, timestamp=T0 + s, loss=2.0 - s / 100, gradient_norm=1.0
        )
        for r in range(ranks)
        for s in range(n)
    ]


def log(rank: int, ts: float, level: str, message: str, job: str = "j1") -> LogEvent:
    return LogEvent(job_id=job, rank=rank, timestamp=ts, level=level, message=message)


def alert(status: str = "firing", last: float = T0 + 5, summary: str = "rank 3: OOM") -> Alert:
    return Alert(
        alert_id="a-1",
        job_id="j1",
        rule="cuda_oom",
        severity="critical",
        scope="rank",
        ranks=[3],
        step=5,
        first_seen=T0 + 5,
        last_seen=last,
        summary=summary,
        evidence={"lines": ["CUDA out of memory"]},
        status=status,
    )


def test_a_replayed_batch_adds_no_rows(store: SqlStore) -> None:
    batch = (steps(), [log(0, T0, "INFO", "hello"), log(1, T0, "ERROR", "boom")], [alert()])
    first = store.write_batch(*batch)
    again = store.write_batch(*batch)
    assert (first.steps, first.logs, first.alerts) == (80, 2, 1)
    assert (again.steps, again.logs) == (0, 0)
    assert store.counts() == {
        "steps": 80,
        "logs": 2,
        "alerts": 1,
        "job_ranks": 4,
        "step_rollups": 4 * (2 + 1 + 1),  # 20 steps: two 16-step blocks, one of each coarser
    }


def test_non_finite_metrics_survive_storage(store: SqlStore) -> None:
    store.write_batch(
        [StepEvent(job_id="j", rank=0, step=1, timestamp=T0, loss="nan", gradient_norm="-inf")],
        [],
        [],
    )
    (loss,) = store.steps(StepQuery("j", "loss"))
    (grad,) = store.steps(StepQuery("j", "gradient_norm"))
    assert math.isnan(loss.value or 0.0)
    assert grad.value == -math.inf


def test_alert_repeat_updates_last_seen_and_resolution_closes_it(store: SqlStore) -> None:
    store.write_batch([], [], [alert()])
    store.write_batch([], [], [alert(last=T0 + 50, summary="rank 3: OOM again")])
    store.write_batch([], [], [alert(last=T0 + 10, summary="older")])  # out of order: ignored
    (only,) = store.alerts("j1")
    assert only.last_seen.timestamp() == T0 + 50
    assert only.summary == "rank 3: OOM again"
    store.write_batch(steps(ranks=1, n=1), [], [])
    assert store.jobs()[0].open_alerts == 1
    store.write_batch([], [], [alert(status="resolved", last=T0 + 60)])
    assert [a.status for a in store.alerts("j1")] == ["firing", "resolved"]
    assert store.jobs()[0].open_alerts == 0


def test_log_filters_rank_since_level_and_full_text(store: SqlStore) -> None:
    store.write_batch(
        [],
        [
            log(7, T0 + 1, "INFO", "step 100 done"),
            log(7, T0 + 2, "WARNING", "loss scale overflow, skipping step"),
            log(
                7, T0 + 3, "ERROR", "NCCL watchdog timeout after 600000 ms\nTraceback (most recent"
            ),
            log(2, T0 + 3, "ERROR", "CUDA out of memory. Tried to allocate 4.20 GiB"),
            log(2, T0 + 4, "INFO", "other job line", job="j2"),
        ],
        [],
    )
    assert [r.message[:4] for r in store.logs(LogQuery("j1", rank=7))] == ["step", "loss", "NCCL"]
    assert len(store.logs(LogQuery("j1", since=T0 + 2))) == 3
    assert [r.rank for r in store.logs(LogQuery("j1", level="WARNING"))] == [7, 7, 2]
    found = store.logs(LogQuery("j1", grep="watchdog timeout"))
    assert [r.rank for r in found] == [7]
    assert "Traceback" in found[0].message  # a traceback stays in its record
    assert [r.rank for r in store.logs(LogQuery("j1", grep="out of memory"))] == [2]
    assert store.logs(LogQuery("j1", grep="timeout watchdog")) == []  # a phrase, in order
    assert [r.message for r in store.logs(LogQuery("j1", limit=1))] == [
        "CUDA out of memory. Tried to allocate 4.20 GiB"
    ]  # the latest, not the first
    with pytest.raises(QueryError, match="unknown level 'LOUD'"):
        store.logs(LogQuery("j1", level="LOUD"))


def test_steps_by_rank_and_jobs_summary(store: SqlStore) -> None:
    store.write_batch(steps("j1", ranks=4, n=20), [log(9, T0 + 99, "INFO", "late")], [])
    points = store.steps(StepQuery("j1", "loss", ranks=[1, 3]))
    assert [(p.rank, p.step) for p in points[:2]] == [(1, 0), (1, 1)]
    assert {p.rank for p in points} == {1, 3} and len(points) == 40
    (job,) = store.jobs()
    assert (job.job_id, job.ranks, job.min_rank, job.max_rank, job.last_step) == ("j1", 5, 0, 9, 19)
    assert job.last_seen.timestamp() == T0 + 99
    with pytest.raises(QueryError, match="unknown metric 'los'"):
        store.steps(StepQuery("j1", "los"))


def test_retention_deletes_only_what_is_older(store: SqlStore) -> None:
    store.write_batch(
        steps(ranks=1, n=10), [log(0, T0, "INFO", "old"), log(0, T0 + 9, "INFO", "new")], [alert()]
    )
    result = store.delete_older_than(5, now=T0 + 10)
    assert result.deleted == {
        "steps": 5,
        "logs": 1,
        "alerts": 0,
        "job_ranks": 0,
        "step_rollups": 0,  # the one block of each width holds a newer step too
    }
    assert [r.message for r in store.logs(LogQuery("j1"))] == ["new"]
    assert store.logs(LogQuery("j1", grep="old")) == []  # gone from the text index too
    assert store.counts()["steps"] == 5


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_migrate_upgrades_a_version_1_database_in_place(
    kind: str, make_db_url: Callable[[str], str]
) -> None:
    url = make_db_url(kind)
    # Build a version-1 database by hand, as an older rankwatch left it, with data in it.
    old = open_store(url, migrate=False)
    schema = sqlite_schema if kind == "sqlite" else pg_schema
    ph = old.ph
    for statement in (
        *schema.V1,
        "CREATE TABLE rankwatch_schema_version (version INTEGER)",
        "INSERT INTO rankwatch_schema_version VALUES (1)",
    ):
        old._execute(statement)
    old._executemany(
        f"INSERT INTO steps ({', '.join(STEP_COLUMNS)}) VALUES "
        f"({', '.join([ph] * len(STEP_COLUMNS))})",
        [step_row(e) for e in steps()],
    )
    old._executemany(
        f"INSERT INTO logs ({', '.join(LOG_COLUMNS)}) VALUES "
        f"({', '.join([ph] * len(LOG_COLUMNS))})",
        [log_row(log(3, T0 + 30, "ERROR", "NCCL watchdog timeout"))],
    )
    assert old.schema_version() == 1
    old.close()

    with open_store(url) as upgraded:  # migrates
        assert upgraded.schema_version() == 4
        assert upgraded.counts()["steps"] == 80
        # Version 2's features work on the old rows: full-text search and the job summary.
        assert [r.rank for r in upgraded.logs(LogQuery("j1", grep="watchdog"))] == [3]
        (job,) = upgraded.jobs()
        assert (job.ranks, job.last_step, job.last_seen.timestamp()) == (4, 19, T0 + 30)
        # Version 3's rollups are filled from the old steps.
        assert upgraded.heatmap("j1", "loss", stat="min", columns=4).values[3] == [1.85, 1.81]
        assert upgraded.migrate() == 4  # idempotent


def test_a_database_newer_than_the_code_is_refused(store: SqlStore) -> None:
    store._execute("UPDATE rankwatch_schema_version SET version = 99")
    with pytest.raises(StoreError, match="version 99, newer than this rankwatch"):
        store.migrate()


def test_unknown_url_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="unknown database URL"):
        open_store("mysql://localhost/x")


def test_postgres_connection_failure_names_the_server_not_the_password() -> None:
    with pytest.raises(StoreError, match=r"postgresql://u:\*\*\*@127.0.0.1:1/x") as info:
        open_store("postgresql://u:secret@127.0.0.1:1/x")
    assert "secret" not in str(info.value)
