"""The SQL shared by the SQLite and PostgreSQL stores; each back-end supplies its dialect.

Both speak ``INSERT ... ON CONFLICT``, so idempotent writes are the same statements; what differs
(placeholders, ``GREATEST``, full-text search, connections, migrations) is a few hooks.
"""

from __future__ import annotations

import functools
import itertools
import operator
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.sinks.exceptions import QueryError, StoreError
from rankwatch.sinks.storage import rollups, rows
from rankwatch.sinks.storage.base import (
    LEVELS,
    METRICS,
    Heatmap,
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

#: Raw steps this close in time to an alert (before its first, after its last sighting) on its
#: job and ranks are kept past raw-step retention: they are the alert's evidence.
EVIDENCE_WINDOW_S = 600.0

#: Rollup writer generations: unique in this process (with the store's random writer id, unique
#: across processes).
_GENERATIONS = itertools.count(1)

#: At most this many ranks in one ``rank IN (...)`` list (both drivers cap the parameters).
_IN_LIST = 1000

#: A migration step: a SQL statement, or a function run on the store in the same transaction.
Migration = str | Callable[["SqlStore"], None]


class SqlStore(ABC):
    """A :class:`~rankwatch.sinks.storage.base.Store` over a DB-API connection."""

    url: str
    #: The migrations, in order: migration ``i`` brings the schema from version ``i`` to ``i+1``.
    migrations: Sequence[Sequence[Migration]] = ()
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
    def _rank_in_json(self, ranks: str, rank: str) -> str:
        """A condition: the integer column ``rank`` is in the JSON list column ``ranks``."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    @functools.cached_property
    def _rollup_cache(self) -> rollups.RollupCache:
        """The open blocks this store last wrote (see :meth:`_write_rollups`)."""
        return rollups.RollupCache()

    @functools.cached_property
    def _writer(self) -> str:
        """This store's name in ``rollup_writers``: random, so no two stores share one."""
        return uuid.uuid4().hex

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
                    if isinstance(statement, str):
                        self._execute(statement)
                    else:
                        statement(self)
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
        step_rows: list[tuple[Any, ...]] = []
        with self._rollups_kept(), self._transaction():
            if steps:
                cols = rows.STEP_COLUMNS
                step_rows = [rows.step_row(e) for e in steps]
                new_steps = self._executemany(
                    f"INSERT INTO steps ({', '.join(cols)}) VALUES ({', '.join([p] * len(cols))})"
                    " ON CONFLICT (job_id, rank, step) DO NOTHING",
                    step_rows,
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
            if steps:
                self._write_rollups(
                    {(e.job_id, e.rank, rollups.block_of(e.step)) for e in steps}, step_rows
                )
        return WriteStats(
            received=len(steps) + len(logs) + len(alerts),
            steps=new_steps,
            logs=new_logs,
            alerts=new_alerts,
        )

    @contextmanager
    def _rollups_kept(self) -> Iterator[None]:
        """Drop the rollup cache if the transaction inside fails: it may hold uncommitted rows."""
        try:
            yield
        except BaseException:
            self._rollup_cache.clear()
            raise

    def _write_rollups(
        self,
        keys: Iterable[tuple[str, int, int]],
        step_rows: Sequence[Sequence[Any]] = (),
        *,
        claim: bool = True,
    ) -> None:
        """Recompute the rollups of the touched ``(job, rank, finest block)`` keys, every width.

        Inside the caller's transaction; see :mod:`~rankwatch.sinks.storage.rollups` for why a
        recomputation (never an increment) keeps a replayed batch from counting twice.
        ``step_rows`` are the batch's ``steps`` rows (already inserted): a block this store
        holds in its :class:`~rankwatch.sinks.storage.rollups.RollupCache` (while it is the
        job's last writer) takes the rows it lacks from them instead of re-reading the block;
        any other block, and any coarser block not held, is read from the database.
        ``claim=False`` (the migration's backfill, before ``rollup_writers`` exists) reads
        every block and must be followed by clearing the cache.
        """
        cache = self._rollup_cache
        keys = set(keys)
        for job_id in sorted({job for job, _, _ in keys}):
            if claim:
                self._claim_rollups(job_id)
            else:
                cache.drop(job_id)
        finest = rollups.WIDTHS[0]
        held: dict[tuple[str, int, int], rollups.FineBlock] = {}
        for job_id, rank, block in keys:
            state = cache.fine.get((job_id, rank))
            if state is not None and state.block == block:
                held[(job_id, rank, block)] = state
        loaded = self._load_fine(self._unsealed(keys - held.keys()))
        reported = rollups.reported(step_rows)
        only = rollups.metric_indexes(reported)
        grown: set[tuple[str, int, int]] = set()
        at = rollups.FIRST_METRIC
        for row in step_rows:
            key = (row[0], row[1], row[2] // finest)
            state = held.get(key)
            if state is not None and state.add(row[2], row[3], row, at, only):
                grown.add(key)
        # A block read back is recomputed whole; its metrics without a value have an empty
        # rollup, which is what is stored (or a new row's default), so they need no writing.
        touched: Sequence[str] = [
            metric
            for index, metric in enumerate(METRICS)
            if metric in reported or any(state.values[index] for state in loaded.values())
        ]
        changed = {key: state.cells() for key, state in loaded.items()}
        self._upsert_rollups(finest, changed, touched)
        cells: dict[tuple[str, int, int], rollups.Cells] = {}
        steady: set[tuple[str, int, int]] = set()
        for key in grown:
            state = held[key]
            cells[key] = state.cells(only)
            if not state.moved:
                steady.add(key)
            state.moved = False
        for state in loaded.values():
            state.moved = False
        self._upsert_rollups(finest, cells, reported, existing=True, steady=steady)
        changed.update(cells)
        for (job_id, rank, _), state in loaded.items():  # the held ones are there already
            cache.keep_fine(job_id, rank, state)
        for level, (finer, width) in enumerate(
            zip(rollups.WIDTHS, rollups.WIDTHS[1:], strict=False)
        ):
            changed, touched = self._write_coarse(level, finer, width, changed, touched)
        cache.trim()

    def _write_coarse(
        self,
        level: int,
        finer: int,
        width: int,
        children: dict[tuple[str, int, int], rollups.Cells],
        touched: Sequence[str],
    ) -> tuple[dict[tuple[str, int, int], rollups.Cells], Sequence[str]]:
        """Recompute the ``width`` blocks over the finer blocks whose cells changed (only in
        the ``touched`` metrics); return their cells and the metrics they changed in."""
        cache = self._rollup_cache.coarse[level]
        fan = rollups.FANOUT
        only = rollups.metric_indexes(touched)
        cells: dict[tuple[str, int, int], rollups.Cells] = {}
        moved: set[tuple[str, int, int]] = set()
        later: list[tuple[tuple[str, int, int], int, rollups.Cells]] = []
        for (job_id, rank, child), child_cells in children.items():
            block = child // fan
            state = cache.get((job_id, rank))
            if state is not None and state.block == block:
                cells[(job_id, rank, block)] = state.update(child, child_cells, only)
                if state.moved:
                    moved.add((job_id, rank, block))
                    state.moved = False
            else:
                later.append(((job_id, rank, block), child, child_cells))
        loaded = self._load_coarse(finer, {key for key, _, _ in later})
        for key, child, child_cells in later:
            loaded[key].children[child] = child_cells
        # A block read back is recomputed whole and written whole, and then so is the next
        # width up (the read-back block may differ in any metric from what was stored).
        out = {key: state.cells() for key, state in loaded.items()}
        for state in loaded.values():
            state.moved = False
        self._upsert_rollups(width, out, METRICS)
        steady = cells.keys() - moved
        self._upsert_rollups(width, cells, touched, existing=True, steady=steady)
        out.update(cells)
        for (job_id, rank, _), state in loaded.items():  # the held ones are there already
            self._rollup_cache.keep_coarse(level, job_id, rank, state)
        return out, METRICS if loaded else touched

    def _claim_rollups(self, job_id: str) -> None:
        """Make this store the job's last rollup writer; drop its cache of the job unless it
        already was (nobody else wrote the job's rows since its last commit)."""
        p = self.ph
        cache = self._rollup_cache
        generation = next(_GENERATIONS)
        last = cache.generation.get(job_id)
        if last is None or not self._execute(
            f"UPDATE rollup_writers SET generation = {p}"
            f" WHERE job_id = {p} AND writer = {p} AND generation = {p}",
            (generation, job_id, self._writer, last),
        ):
            cache.drop(job_id)
            self._execute(
                "INSERT INTO rollup_writers (job_id, writer, generation)"
                f" VALUES ({p}, {p}, {p}) ON CONFLICT (job_id) DO UPDATE SET"
                " writer = excluded.writer, generation = excluded.generation",
                (job_id, self._writer, generation),
            )
        cache.generation[job_id] = generation

    def _load_fine(
        self, keys: set[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], rollups.FineBlock]:
        """The finest blocks of ``keys`` from their raw rows, one read per block."""
        p = self.ph
        finest = rollups.WIDTHS[0]
        out: dict[tuple[str, int, int], rollups.FineBlock] = {}
        for (job_id, block), ranks in rollups.group_by_block(keys).items():
            for chunk in iter_chunks(ranks, _IN_LIST):
                found = self._query(
                    f"SELECT rank, step, ts, {', '.join(METRICS)} FROM steps WHERE job_id = {p}"
                    f" AND rank IN ({', '.join([p] * len(chunk))}) AND step >= {p} AND step < {p}",
                    (job_id, *chunk, block * finest, (block + 1) * finest),
                )
                for row in found:
                    key = (job_id, row[0], block)
                    state = out.get(key)
                    if state is None:
                        state = out[key] = rollups.FineBlock(block)
                    state.add(row[1], row[2], row, 3)
        return out

    def _load_coarse(
        self, finer: int, keys: set[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], rollups.CoarseBlock]:
        """The coarser blocks of ``keys`` with their finer rollups, one read per block."""
        p = self.ph
        fan = rollups.FANOUT
        out = {key: rollups.CoarseBlock(key[2]) for key in keys}
        values = ", ".join(rollups.VALUE_COLUMNS)
        for (job_id, block), ranks in rollups.group_by_block(keys).items():
            for chunk in iter_chunks(ranks, _IN_LIST):
                found = self._query(
                    f"SELECT rank, block, first_ts, last_ts, {values} FROM step_rollups"
                    f" WHERE job_id = {p} AND width = {p}"
                    f" AND rank IN ({', '.join([p] * len(chunk))}) AND block >= {p}"
                    f" AND block < {p}",
                    (job_id, finer, *chunk, block * fan, (block + 1) * fan),
                )
                for row in found:
                    out[(job_id, row[0], block)].children[row[1]] = tuple(row[2:])
        return out

    def _unsealed(self, touched: set[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
        """``touched`` less the keys whose finest rollup is sealed (never recomputed)."""
        p = self.ph
        for job_id in {job for job, _, _ in touched}:
            blocks = [b for job, _, b in touched if job == job_id]
            sealed = self._query(
                f"SELECT rank, block FROM step_rollups WHERE job_id = {p} AND width = {p}"
                f" AND sealed = 1 AND block >= {p} AND block <= {p}",
                (job_id, rollups.WIDTHS[0], min(blocks), max(blocks)),
            )
            touched -= {(job_id, rank, block) for rank, block in sealed}
        return touched

    def _upsert_rollups(
        self,
        width: int,
        cells: dict[tuple[str, int, int], rollups.Cells],
        metrics: Sequence[str],
        *,
        existing: bool = False,
        steady: Collection[tuple[str, int, int]] = (),
    ) -> None:
        """Upsert the ``width`` rollups ``(job, rank, block) -> cells``, only the columns of
        ``metrics`` (and the times): the others are a new row's empty defaults, and an
        existing row's own values (unchanged: no row of the batch holds those metrics).
        ``existing``: every row is known to be there (a back-end may update, not upsert);
        ``steady``: rows whose ``first_ts``, mins and maxes are as stored (not written)."""
        if not cells:
            return
        if not existing:
            columns = rollups.written_columns(metrics)
            pick = operator.itemgetter(*rollups.cell_positions(columns))
            self._executemany(
                self._upsert_sql(tuple(metrics)),
                [
                    (job_id, width, rank, block, *pick(row))
                    for (job_id, rank, block), row in cells.items()
                ],
            )
            return
        for group, columns in rollups.update_groups(cells, metrics, steady):
            pick = operator.itemgetter(*rollups.cell_positions(columns))
            self._executemany(
                self._update_sql(columns),
                [
                    (*pick(row), job_id, width, rank, block)
                    for (job_id, rank, block), row in group.items()
                ],
            )

    @functools.cache  # noqa: B019 (a few statement texts per store, for its lifetime)
    def _update_sql(self, columns: tuple[str, ...]) -> str:
        p = self.ph
        return (
            f"UPDATE step_rollups SET {', '.join(f'{c} = {p}' for c in columns)}"
            f" WHERE job_id = {p} AND width = {p} AND rank = {p} AND block = {p}"
        )

    @functools.cache  # noqa: B019 (a few statement texts per store, for its lifetime)
    def _upsert_sql(self, metrics: tuple[str, ...]) -> str:
        given = ["first_ts", "last_ts"]
        given += [f"{m}_{s}" for m in metrics for s in ("min", "med", "max", "n")]
        empty = [f"{m}_n" for m in METRICS if m not in metrics]  # NOT NULL: 0 for a new row
        values = [self.ph] * (4 + len(given)) + ["0"] * (1 + len(empty))
        return (
            f"INSERT INTO step_rollups (job_id, width, rank, block, {', '.join(given)}, sealed"
            f"{''.join(', ' + c for c in empty)}) VALUES ({', '.join(values)})"
            " ON CONFLICT (job_id, width, rank, block) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in given)
        )

    def delete_older_than(
        self,
        age_s: float | None,
        now: float | None = None,
        *,
        steps_age_s: float | None = None,
        evidence_s: float = EVIDENCE_WINDOW_S,
    ) -> RetentionResult:
        """Delete what is older than ``age_s`` (event time): steps, logs, alerts, per-rank
        summaries and rollups; and raw steps older than ``steps_age_s``, keeping their rollups
        and the steps within ``evidence_s`` of an alert on its job and ranks (its evidence).

        Either age may be ``None`` (no such retention). Before raw rows go, the finest rollups
        of their blocks are sealed: never recomputed from the rows that are left.
        """
        now = time.time() if now is None else now
        deleted: dict[str, int] = {}
        p = self.ph
        with self._rollups_kept(), self._transaction():
            # Sealing and deleting change rollups under every writer's cache: none is valid now.
            self._execute("DELETE FROM rollup_writers")
            self._rollup_cache.clear()
            for age in (age_s, steps_age_s):
                if age is not None:
                    self._execute(
                        f"UPDATE step_rollups SET sealed = 1 WHERE width = {p} AND sealed = 0"
                        f" AND first_ts < {p}",
                        (rollups.WIDTHS[0], now - age),
                    )
            if age_s is not None:
                for table, column in (
                    ("steps", "ts"),
                    ("logs", "ts"),
                    ("alerts", "last_seen"),
                    ("job_ranks", "last_ts"),
                    ("step_rollups", "last_ts"),
                ):
                    deleted[table] = self._execute(
                        f"DELETE FROM {table} WHERE {column} < {p}", (now - age_s,)
                    )
            if steps_age_s is not None:
                evidence = (
                    "SELECT 1 FROM alerts a WHERE a.job_id = steps.job_id"
                    f" AND steps.ts >= a.first_seen - {p} AND steps.ts <= a.last_seen + {p}"
                    f" AND (a.ranks = '[]' OR {self._rank_in_json('a.ranks', 'steps.rank')})"
                )
                deleted["raw_steps"] = self._execute(
                    f"DELETE FROM steps WHERE ts < {p} AND NOT EXISTS ({evidence})",
                    (now - steps_age_s, evidence_s, evidence_s),
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

    def heatmap(
        self,
        job_id: str,
        metric: str,
        *,
        stat: str = "max",
        columns: int = 200,
        step_from: int | None = None,
        step_to: int | None = None,
        ranks: Sequence[int] | None = None,
    ) -> Heatmap:
        """A rank x step grid of one statistic of ``metric``, read from the rollups.

        Steps ``[step_from, step_to)`` (default: the job's whole span) in at most ``columns``
        columns of equal width, each a whole number of rollup blocks (edges aligned to them:
        see :func:`~rankwatch.sinks.storage.rollups.plan_columns`). Rows: ``ranks`` if given,
        else every rank that reported a step. A cell without data is ``None``. The median of a
        column of several blocks is the median of their medians (an approximation).
        """
        if metric not in METRICS:
            raise StoreError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")
        if stat not in rollups.STATS:
            raise StoreError(f"unknown stat {stat!r} (one of {', '.join(rollups.STATS)})")
        if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
            raise StoreError(f"columns: expected a positive integer, got {columns!r}")
        if step_from is not None and step_to is not None and step_to <= step_from:
            raise StoreError(f"step_to ({step_to}) must be greater than step_from ({step_from})")
        p = self.ph
        if ranks is None:
            rows_ = [
                int(r[0])
                for r in self._query(
                    f"SELECT rank FROM job_ranks WHERE job_id = {p} AND last_step IS NOT NULL"
                    " ORDER BY rank",
                    (job_id,),
                )
            ]
        else:
            rows_ = sorted({int(r) for r in ranks})
        lo, hi = step_from, step_to
        if lo is None or hi is None:
            first, last = self._step_span(job_id)
            lo = first if lo is None else lo
            hi = last if hi is None else hi
        if lo is None or hi is None or hi <= lo or not rows_:
            return Heatmap(job_id, metric, stat, rows_, [], [[] for _ in rows_])
        width, k, edges = rollups.plan_columns(lo, hi, columns)
        first_block = edges[0] // width
        last_block = edges[-1] // width
        column = f"{metric}_{rollups.STATS[stat]}"
        where = f"job_id = {p} AND width = {p} AND block >= {p} AND block < {p}"
        params: list[Any] = [job_id, width, first_block, last_block]
        if ranks is not None:
            where += f" AND rank IN ({', '.join([p] * len(rows_))})"
            params.extend(rows_)
        cell = f"(block - {first_block}) / {k}"
        if stat == "median" and k > 1:
            found = self._query(
                f"SELECT rank, {cell}, {column} FROM step_rollups WHERE {where}"
                f" AND {column} IS NOT NULL",
                params,
            )
            grouped: dict[tuple[int, int], list[float]] = {}
            for rank, col, value in found:
                grouped.setdefault((rank, col), []).append(value)
            found = [(r, c, rollups.median(v)) for (r, c), v in grouped.items()]
        elif k > 1:
            found = self._query(
                f"SELECT rank, {cell}, {stat}({column}) FROM step_rollups WHERE {where}"
                f" GROUP BY rank, {cell}",
                params,
            )
        else:
            found = self._query(
                f"SELECT rank, block - {first_block}, {column} FROM step_rollups WHERE {where}",
                params,
            )
        index = {rank: i for i, rank in enumerate(rows_)}
        values: list[list[float | None]] = [[None] * (len(edges) - 1) for _ in rows_]
        for rank, col, value in found:
            at = index.get(rank)
            if at is not None and value is not None:
                values[at][int(col)] = float(value)
        return Heatmap(job_id, metric, stat, rows_, edges, values)

    def _step_span(self, job_id: str) -> tuple[int | None, int | None]:
        """The job's first step (block-aligned) and last step + 1, from its rollups."""
        p = self.ph
        coarse, finest = rollups.WIDTHS[-1], rollups.WIDTHS[0]
        # The coarsest rollups are few; the first of them bounds where the finest ones start.
        (found,) = self._query(
            f"SELECT min(block), max(block) FROM step_rollups WHERE job_id = {p} AND width = {p}",
            (job_id, coarse),
        )
        if found[0] is None:
            return None, None
        per = coarse // finest
        bounds: list[int] = []
        for block, agg in ((found[0], "min"), (found[1], "max")):
            (edge,) = self._query(
                f"SELECT {agg}(block) FROM step_rollups WHERE job_id = {p} AND width = {p}"
                f" AND block >= {p} AND block < {p}",
                (job_id, finest, block * per, (block + 1) * per),
            )
            bounds.append(int(edge[0]))
        (last,) = self._query(f"SELECT max(last_step) FROM job_ranks WHERE job_id = {p}", (job_id,))
        end = (bounds[1] + 1) * finest if last[0] is None else int(last[0]) + 1
        return bounds[0] * finest, end

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
            for table in ("steps", "logs", "alerts", "job_ranks", "step_rollups")
        }

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def backfill_rollups(store: SqlStore) -> None:
    """Migration step: the rollups of every step already stored (a store from before them)."""
    finest = rollups.WIDTHS[0]
    keys = store._query(f"SELECT DISTINCT job_id, rank, step / {finest} FROM steps")
    store._write_rollups(((job, int(rank), int(block)) for job, rank, block in keys), claim=False)
    store._rollup_cache.clear()


#: The migration step that lets a store keep its open rollup blocks in memory: the last writer
#: of each job's rollups (see ``SqlStore._claim_rollups``). Same text on both back-ends.
ROLLUP_WRITERS = (
    "CREATE TABLE rollup_writers (job_id TEXT NOT NULL PRIMARY KEY, writer TEXT NOT NULL,"
    " generation BIGINT NOT NULL)"
)


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of ``size``.

    >>> [list(c) for c in iter_chunks([1, 2, 3], 2)]
    [[1, 2], [3]]
    """
    for start in range(0, len(items), size):
        yield items[start : start + size]
