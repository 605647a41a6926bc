"""The embedded default: one SQLite file, WAL journal, FTS5 over log messages.

WAL lets the query commands read while the storage sink writes. ``synchronous=FULL`` makes each
batch durable before the sink commits its Kafka offsets (one fsync per batch, not per row).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rankwatch.sinks.exceptions import StoreError
from rankwatch.sinks.storage import rollups
from rankwatch.sinks.storage.base import METRICS
from rankwatch.sinks.storage.sql import ROLLUP_WRITERS, Migration, SqlStore, backfill_rollups

_METRIC_COLUMNS = ", ".join(f"{name} REAL" for name in METRICS)

#: Version 1: the three tables and their indexes.
V1: tuple[str, ...] = (
    f"""CREATE TABLE steps (
        job_id TEXT NOT NULL, rank INTEGER NOT NULL, step INTEGER NOT NULL, ts REAL NOT NULL,
        world_size INTEGER, host TEXT, {_METRIC_COLUMNS}, nonfinite TEXT, extra TEXT,
        PRIMARY KEY (job_id, rank, step)) WITHOUT ROWID""",
    "CREATE INDEX steps_ts ON steps (ts)",
    """CREATE TABLE logs (
        id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, rank INTEGER NOT NULL, ts REAL NOT NULL,
        level TEXT NOT NULL, level_no INTEGER NOT NULL, logger TEXT, step INTEGER, host TEXT,
        message TEXT NOT NULL, msg_hash INTEGER NOT NULL, extra TEXT,
        UNIQUE (job_id, rank, ts, msg_hash))""",
    "CREATE INDEX logs_job_ts ON logs (job_id, ts)",
    "CREATE INDEX logs_ts ON logs (ts)",
    """CREATE TABLE alerts (
        alert_id TEXT NOT NULL, status TEXT NOT NULL, job_id TEXT NOT NULL, rule TEXT NOT NULL,
        severity TEXT NOT NULL, scope TEXT NOT NULL, ranks TEXT NOT NULL, step INTEGER,
        first_seen REAL NOT NULL, last_seen REAL NOT NULL, summary TEXT NOT NULL,
        evidence TEXT NOT NULL, action TEXT NOT NULL, extra TEXT,
        PRIMARY KEY (alert_id, status))""",
    "CREATE INDEX alerts_job_seen ON alerts (job_id, last_seen)",
    "CREATE INDEX alerts_seen ON alerts (last_seen)",
)

#: Version 2: full-text search over log messages, and a per-rank summary so ``rankwatch jobs``
#: reads a few rows per rank instead of scanning every step. Both are filled from existing rows.
V2: tuple[str, ...] = (
    "CREATE VIRTUAL TABLE logs_fts USING fts5(message, content='logs', content_rowid='id')",
    """CREATE TRIGGER logs_fts_insert AFTER INSERT ON logs BEGIN
        INSERT INTO logs_fts (rowid, message) VALUES (new.id, new.message); END""",
    """CREATE TRIGGER logs_fts_delete AFTER DELETE ON logs BEGIN
        INSERT INTO logs_fts (logs_fts, rowid, message) VALUES ('delete', old.id, old.message);
        END""",
    "INSERT INTO logs_fts (logs_fts) VALUES ('rebuild')",
    """CREATE TABLE job_ranks (
        job_id TEXT NOT NULL, rank INTEGER NOT NULL, last_step INTEGER, last_ts REAL NOT NULL,
        PRIMARY KEY (job_id, rank)) WITHOUT ROWID""",
    """INSERT INTO job_ranks (job_id, rank, last_step, last_ts)
        SELECT job_id, rank, max(step), max(ts) FROM (
            SELECT job_id, rank, step, ts FROM steps
            UNION ALL SELECT job_id, rank, NULL, ts FROM logs)
        GROUP BY job_id, rank""",
    "CREATE INDEX logs_job_rank_ts ON logs (job_id, rank, ts)",
)


_ROLLUP_VALUES = ", ".join(
    f"{name} {'INTEGER NOT NULL' if name.endswith('_n') else 'REAL'}"
    for name in rollups.VALUE_COLUMNS
)

#: Version 3: per-rank rollups of the step metrics per block of steps (see ``rollups``), filled
#: from the steps already stored.
V3: tuple[Migration, ...] = (
    f"""CREATE TABLE step_rollups (
        job_id TEXT NOT NULL, width INTEGER NOT NULL, rank INTEGER NOT NULL,
        block INTEGER NOT NULL, first_ts REAL NOT NULL, last_ts REAL NOT NULL,
        sealed INTEGER NOT NULL DEFAULT 0, {_ROLLUP_VALUES},
        PRIMARY KEY (job_id, width, rank, block)) WITHOUT ROWID""",
    # Block ranges across ranks: the heatmap's span, the write path's sealed blocks.
    "CREATE INDEX step_rollups_blocks ON step_rollups (job_id, width, block)",
    backfill_rollups,
)

#: Version 4: each job's last rollup writer, so a store may keep its open blocks in memory.
V4: tuple[str, ...] = (ROLLUP_WRITERS,)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL.

    >>> str(sqlite_path("sqlite:////tmp/x.db")), str(sqlite_path("sqlite:///data/x.db"))
    ('/tmp/x.db', 'data/x.db')
    """
    if not url.startswith("sqlite:///"):
        raise StoreError(f"{url!r}: expected sqlite:///PATH (sqlite:////abs/path for absolute)")
    return Path(url.removeprefix("sqlite:///"))


class SQLiteStore(SqlStore):
    """A store in one SQLite file (created, with its folder, if missing)."""

    migrations = (V1, V2, V3, V4)
    ph = "?"

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        path = sqlite_path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
            self._conn = sqlite3.connect(
                path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{url}: cannot open the SQLite database: {exc}") from None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            # IMMEDIATE takes the write lock up front, so two writers queue instead of failing
            # half-way with "database is locked".
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {exc}") from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def _executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        return self._conn.executemany(sql, params).rowcount

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {exc}") from None

    def _table_exists(self, name: str) -> bool:
        found = self._query("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
        return bool(found)

    def _grep_clause(self, text: str) -> tuple[str, list[Any]]:
        # One FTS5 phrase: the words in this order, punctuation ignored, case-insensitive.
        phrase = '"' + text.replace('"', '""') + '"'
        return "id IN (SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?)", [phrase]

    def _rank_in_json(self, ranks: str, rank: str) -> str:
        return f"EXISTS (SELECT 1 FROM json_each({ranks}) WHERE json_each.value = {rank})"

    def close(self) -> None:
        self._conn.close()
