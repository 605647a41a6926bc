"""The SQL shared by the SQLite and PostgreSQL stores; each back-end supplies its dialect.

Both speak ``INSERT ... ON CONFLICT``, so idempotent writes are the same statements; what differs
(placeholders, ``GREATEST``, full-text search, connections, migrations) is a few hooks.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.sinks.exceptions import QueryError, StoreError
from rankwatch.sinks.storage import rows
from rankwatch.sinks.storage.base import (
    LEVELS,
    METRICS,
    JobSummary,
    LogQuery,
    LogRow,
    RetentionResult,
    StepPoint,
    StepQuery,
    WriteStats,
    from_epoch,
)

VERSION_TABLE = "rankwatch_schema_version"


class SqlStore(ABC):
    """A :class:`~rankwatch.sinks.storage.base.Store` over a DB-API connection."""

    url: str
    #: The migrations, in order: migration ``i`` brings the schema from version ``i`` to ``i+1``.
    migrations: Sequence[Sequence[str]] = ()
    ph = "?"  # the placeholder of the driver's paramstyle

    # ---- dialect hooks -------------------------------------------------------------------
    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """A context manager: one transaction, committed on exit, rolled back on error."""

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return its row count."""

    @abstractmethod
    def _executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        """Run one statement per parameter row; return the summed row count."""

    @abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a SELECT and return all its rows."""

    @abstractmethod
    def _grep_clause(self, text: str) -> tuple[str, list[Any]]:
        """A WHERE fragment selecting log rows whose message contains the phrase ``text``."""

    def _greatest(self, a: str, b: str) -> str:
        # NULL-proof on every back-end: SQLite's max(NULL, 5) is NULL.
        return f"max(coalesce({a}, {b}), coalesce({b}, {a}))"

    def _lock_for_migration(self) -> None:
        """Serialise concurrent migrations (two sinks starting at once).

        SQLite needs nothing: ``BEGIN IMMEDIATE`` already takes the one write lock.
        """
        return None

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    # ---- schema --------------------------------------------------------------------------
    def schema_version(self) -> int:
        """The schema version of the database (0: empty)."""
        if not self._table_exists(VERSION_TABLE):
            return 0
        found = self._query(f"SELECT max(version) FROM {VERSION_TABLE}")
        return int(found[0][0] or 0)

    @abstractmethod
    def _table_exists(self, name: str) -> bool: ...

    def migrate(self) -> int:
        """Apply every migration the database lacks, each in its own transaction."""
        target = len(self.migrations)
        with self._transaction():
            self._lock_for_migration()
            self._execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
        current = self.schema_version()
        if current > target:
            raise StoreError(
                f"{self.url}: database schema is version {current}, newer than this rankwatch "
                f"(knows up to {target}): upgrade rankwatch"
            )
        for version in range(current, target):
            with self._transaction():
                self._lock_for_migration()
                if self.schema_version() != version:  # another process migrated meanwhile
                    continue
                for statement in self.migrations[version]:
                    self._execute(statement)
                self._execute(f"DELETE FROM {VERSION_TABLE}")
                self._execute(
                    f"INSERT INTO {VERSION_TABLE} (version) VALUES ({self.ph})", (version + 1,)
                )
        return target

    # ---- writes --------------------------------------------------------------------------
    def write_batch(
        self,
        steps: Sequence[StepEvent],
        logs: Sequence[LogEvent],
        alerts: Sequence[Alert],
    ) -> WriteStats:
        """Write all three in one transaction; replays are no-ops (see the Store protocol)."""
        p = self.ph
        g = self._greatest
        new_steps = new_logs = new_alerts = 0
        with self._transaction():
            if steps:
                cols = rows.STEP_COLUMNS
                new_steps = self._executemany(
                    f"INSERT INTO steps ({', '.join(cols)}) VALUES ({', '.join([p] * len(cols))})"
                    " ON CONFLICT (job_id, rank, step) DO NOTHING",
                    [rows.step_row(e) for e in steps],
                )
            if logs:
                cols = rows.LOG_COLUMNS
                new_logs = self._executemany(
                    f"INSERT INTO logs ({', '.join(cols)}) VALUES ({', '.join([p] * len(cols))})"
                    " ON CONFLICT (job_id, rank, ts, msg_hash) DO NOTHING",
                    [rows.log_row(e) for e in logs],
                )
            if alerts:
                cols = rows.ALERT_COLUMNS
                newer = "excluded.last_seen >= alerts.last_seen"
                new_alerts = self._executemany(
                    f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join([p] * len(cols))})"
                    " ON CONFLICT (alert_id, status) DO UPDATE SET"
                    f" last_seen = {g('alerts.last_seen', 'excluded.last_seen')},"
                    f" summary = CASE WHEN {newer} THEN excluded.summary ELSE alerts.summary END,"
                    f" evidence = CASE WHEN {newer} THEN excluded.evidence"
                    " ELSE alerts.evidence END,"
                    f" ranks = CASE WHEN {newer} THEN excluded.ranks ELSE alerts.ranks END",
                    [rows.alert_row(a) for a in alerts],
                )
            if steps or logs:
                self._executemany(
                    "INSERT INTO job_ranks (job_id, rank, last_step, last_ts)"
                    f" VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (job_id, rank) DO UPDATE SET"
                    f" last_step = {g('job_ranks.last_step', 'excluded.last_step')},"
                    f" last_ts = {g('job_ranks.last_ts', 'excluded.last_ts')}",
                    rows.job_rank_rows(steps, logs),
                )
        return WriteStats(
            received=len(steps) + len(logs) + len(alerts),
            steps=new_steps,
            logs=new_logs,
            alerts=new_alerts,
        )

    def delete_older_than(self, age_s: float, now: float | None = None) -> RetentionResult:
        """Delete steps, logs, alerts and per-rank summaries older than ``age_s`` (event time)."""
        cutoff = (time.time() if now is None else now) - age_s
        deleted: dict[str, int] = {}
        with self._transaction():
            for table, column in (
                ("steps", "ts"),
                ("logs", "ts"),
                ("alerts", "last_seen"),
                ("job_ranks", "last_ts"),
            ):
                deleted[table] = self._execute(
                    f"DELETE FROM {table} WHERE {column} < {self.ph}", (cutoff,)
                )
        return RetentionResult(deleted)

    # ---- queries -------------------------------------------------------------------------
    def logs(self, query: LogQuery) -> list[LogRow]:
        """The latest ``query.limit`` matching records, oldest first."""
        p = self.ph
        where: list[str] = [f"job_id = {p}"]
        params: list[Any] = [query.job_id]
        if query.rank is not None:
            where.append(f"rank = {p}")
            params.append(query.rank)
        if query.since is not None:
            where.append(f"ts >= {p}")
            params.append(query.since)
        if query.level is not None:
            level = query.level.upper()
            if level not in LEVELS:
                raise QueryError(f"unknown level {query.level!r} (one of {', '.join(LEVELS)})")
            where.append(f"level_no >= {p}")
            params.append(LEVELS[level])
        if query.grep:
            clause, extra = self._grep_clause(query.grep)
            where.append(clause)
            params.extend(extra)
        found = self._query(
            "SELECT job_id, rank, ts, level, message, logger, step, host FROM logs"
            f" WHERE {' AND '.join(where)} ORDER BY ts DESC, id DESC LIMIT {p}",
            [*params, query.limit],
        )
        return [
            LogRow(
                job_id=r[0],
                rank=r[1],
                timestamp=from_epoch(r[2]),
                level=r[3],
                message=r[4],
                logger=r[5],
                step=r[6],
                host=r[7],
            )
            for r in reversed(found)
        ]

    def alerts(
        self, job_id: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Alert]:
        """Alerts (one per ``(alert_id, status)``) by ``last_seen``, oldest first."""
        p = self.ph
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if job_id is not None:
            where.append(f"job_id = {p}")
            params.append(job_id)
        if since is not None:
            where.append(f"last_seen >= {p}")
            params.append(since)
        found = self._query(
            f"SELECT {', '.join(rows.ALERT_COLUMNS)} FROM alerts WHERE {' AND '.join(where)}"
            f" ORDER BY last_seen DESC LIMIT {p}",
            [*params, limit],
        )
        return [rows.alert_from_row(r) for r in reversed(found)]

    def steps(self, query: StepQuery) -> list[StepPoint]:
        """One metric per rank and step, ordered by rank then step."""
        if query.metric not in METRICS:
            raise QueryError(f"unknown metric {query.metric!r} (one of {', '.join(METRICS)})")
        p = self.ph
        where: list[str] = [f"job_id = {p}"]
        params: list[Any] = [query.job_id]
        if query.ranks is not None:
            ranks = sorted(set(query.ranks))
            if not ranks:
                return []
            where.append(f"rank IN ({', '.join([p] * len(ranks))})")
            params.extend(ranks)
        for clause, value in (
            (f"ts >= {p}", query.since),
            (f"step >= {p}", query.min_step),
            (f"step <= {p}", query.max_step),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        # The metric is one of METRICS (checked above), so naming the column is safe.
        found = self._query(
            f"SELECT rank, step, {query.metric}, nonfinite, ts FROM steps"
            f" WHERE {' AND '.join(where)} ORDER BY rank, step",
            params,
        )
        return [
            StepPoint(
                rank=r[0],
                step=r[1],
                value=rows.metric_value(r[2], r[3], query.metric),
                timestamp=from_epoch(r[4]),
            )
            for r in found
        ]

    def jobs(self) -> list[JobSummary]:
        """Every job seen, most recently active first, with its open (unresolved) alerts."""
        open_alerts = dict(
            self._query(
                "SELECT a.job_id, count(*) FROM alerts a WHERE a.status = 'firing' AND NOT EXISTS"
                " (SELECT 1 FROM alerts r WHERE r.alert_id = a.alert_id AND r.status = 'resolved')"
                " GROUP BY a.job_id"
            )
        )
        stopped = {
            r[0]
            for r in self._query(
                "SELECT a.job_id FROM alerts a WHERE a.rule = 'job_stopped' AND a.status = "
                "'firing' AND NOT EXISTS (SELECT 1 FROM alerts r WHERE r.alert_id = a.alert_id"
                " AND r.status = 'resolved')"
            )
        }
        # The producer's clean-end record (lifecycle "ended"), by its logger and wording.
        ended = dict(
            self._query(
                "SELECT job_id, count(DISTINCT rank) FROM logs WHERE logger = "
                f"'rankwatch.lifecycle' AND message LIKE {self.ph} GROUP BY job_id",
                ["rankwatch: rank % ended cleanly%"],
            )
        )
        found = self._query(
            "SELECT job_id, count(*), min(rank), max(rank), max(last_step), max(last_ts)"
            " FROM job_ranks GROUP BY job_id ORDER BY max(last_ts) DESC"
        )
        return [
            JobSummary(
                job_id=r[0],
                ranks=r[1],
                min_rank=r[2],
                max_rank=r[3],
                last_step=r[4],
                last_seen=from_epoch(r[5]),
                open_alerts=int(open_alerts.get(r[0], 0)),
                state="stopped"
                if r[0] in stopped
                else "ended"
                if int(ended.get(r[0], 0)) >= r[1]
                else "running",
            )
            for r in found
        ]

    def counts(self) -> dict[str, int]:
        """Rows per table: for tests, benchmarks and the sink's status line."""
        return {
            table: int(self._query(f"SELECT count(*) FROM {table}")[0][0])
            for table in ("steps", "logs", "alerts", "job_ranks")
        }

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of ``size``.

    >>> [list(c) for c in iter_chunks([1, 2, 3], 2)]
    [[1, 2], [3]]
    """
    for start in range(0, len(items), size):
        yield items[start : start + size]
