"""PostgreSQL back-end (psycopg 3): the same tables as SQLite, a ``tsvector`` GIN index for search.

Writes use psycopg's pipeline mode (``executemany``), so a batch is one round trip's worth of
latency, not one per row. Migrations hold an advisory lock, so two sinks starting at once do
not both create the tables.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from rankwatch.sinks.exceptions import StoreError
from rankwatch.sinks.storage import rollups
from rankwatch.sinks.storage.base import METRICS
from rankwatch.sinks.storage.sql import ROLLUP_WRITERS, Migration, SqlStore, backfill_rollups

if TYPE_CHECKING:
    import psycopg

_METRIC_COLUMNS = ", ".join(f"{name} double precision" for name in METRICS)
_MIGRATION_LOCK = 0x72616E6B  # "rank": any constant shared by every rankwatch process

V1: tuple[str, ...] = (
    f"""CREATE TABLE steps (
        job_id text NOT NULL, rank integer NOT NULL, step bigint NOT NULL,
        ts double precision NOT NULL, world_size integer, host text, {_METRIC_COLUMNS},
        nonfinite text, extra text, PRIMARY KEY (job_id, rank, step))""",
    "CREATE INDEX steps_ts ON steps (ts)",
    """CREATE TABLE logs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job_id text NOT NULL,
        rank integer NOT NULL, ts double precision NOT NULL, level text NOT NULL,
        level_no smallint NOT NULL, logger text, step bigint, host text, message text NOT NULL,
        msg_hash bigint NOT NULL, extra text, UNIQUE (job_id, rank, ts, msg_hash))""",
    "CREATE INDEX logs_job_ts ON logs (job_id, ts)",
    "CREATE INDEX logs_ts ON logs (ts)",
    """CREATE TABLE alerts (
        alert_id text NOT NULL, status text NOT NULL, job_id text NOT NULL, rule text NOT NULL,
        severity text NOT NULL, scope text NOT NULL, ranks text NOT NULL, step bigint,
        first_seen double precision NOT NULL, last_seen double precision NOT NULL,
        summary text NOT NULL, evidence text NOT NULL, action text NOT NULL, extra text,
        PRIMARY KEY (alert_id, status))""",
    "CREATE INDEX alerts_job_seen ON alerts (job_id, last_seen)",
    "CREATE INDEX alerts_seen ON alerts (last_seen)",
)

# The 'simple' configuration: no stemming or stop words, so "NCCL", "rank" and "out of memory"
# are found as written.
V2: tuple[str, ...] = (
    "CREATE INDEX logs_message_fts ON logs USING GIN (to_tsvector('simple', message))",
    """CREATE TABLE job_ranks (
        job_id text NOT NULL, rank integer NOT NULL, last_step bigint,
        last_ts double precision NOT NULL, PRIMARY KEY (job_id, rank))""",
    """INSERT INTO job_ranks (job_id, rank, last_step, last_ts)
        SELECT job_id, rank, max(step), max(ts) FROM (
            SELECT job_id, rank, step, ts FROM steps
            UNION ALL SELECT job_id, rank, NULL, ts FROM logs) AS seen
        GROUP BY job_id, rank""",
    "CREATE INDEX logs_job_rank_ts ON logs (job_id, rank, ts)",
)


_ROLLUP_VALUES = ", ".join(
    f"{name} {'integer NOT NULL' if name.endswith('_n') else 'double precision'}"
    for name in rollups.VALUE_COLUMNS
)

#: Version 3: per-rank rollups of the step metrics per block of steps (see ``rollups``), filled
#: from the steps already stored.
V3: tuple[Migration, ...] = (
    f"""CREATE TABLE step_rollups (
        job_id text NOT NULL, width integer NOT NULL, rank integer NOT NULL,
        block bigint NOT NULL, first_ts double precision NOT NULL,
        last_ts double precision NOT NULL,
        sealed integer NOT NULL DEFAULT 0, {_ROLLUP_VALUES},
        PRIMARY KEY (job_id, width, rank, block))""",
    # Block ranges across ranks: the heatmap's span, the write path's sealed blocks.
    "CREATE INDEX step_rollups_blocks ON step_rollups (job_id, width, block)",
    backfill_rollups,
)

#: Version 4: each job's last rollup writer, so a store may keep its open blocks in memory.
V4: tuple[str, ...] = (
    ROLLUP_WRITERS,
    # Room on each page for a rollup's next version: its updates (every batch, in place) stay
    # HOT, no new index entries. Pages written from now on.
    "ALTER TABLE step_rollups SET (fillfactor = 70)",
)


class PostgresStore(SqlStore):
    """A store in a PostgreSQL database, given by a ``postgresql://`` URL (libpq syntax)."""

    migrations = (V1, V2, V3, V4)
    ph = "%s"

    def __init__(self, url: str, *, connect_timeout_s: int = 10) -> None:
        import psycopg

        self.url = url
        self._connect_timeout_s = connect_timeout_s
        try:
            self._conn: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(
                url, autocommit=True, connect_timeout=connect_timeout_s
            )
        except psycopg.Error as exc:
            raise StoreError(f"{_redacted(url)}: cannot connect to PostgreSQL: {exc}") from None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        import psycopg

        try:
            if self._conn.closed or self._conn.broken:
                # The server restarted: a broken connection never heals, so a writer that
                # retries (the storage sink) would fail forever without a new one.
                self._conn = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=self._connect_timeout_s
                )
            with self._conn.transaction():
                yield
        except psycopg.Error as exc:
            raise StoreError(f"{_redacted(self.url)}: {exc}") from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._conn.cursor() as cursor:
            cursor.execute(sql.encode(), params)  # bytes: a dynamic SQL string, not a literal
            return cursor.rowcount

    def _executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        with self._conn.cursor() as cursor:
            cursor.executemany(sql.encode(), params)
            return cursor.rowcount

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            with self._conn.cursor() as cursor:
                cursor.execute(sql.encode(), params)
                return cursor.fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"{_redacted(self.url)}: {exc}") from None

    def _table_exists(self, name: str) -> bool:
        return self._query("SELECT to_regclass(%s)", (name,))[0][0] is not None

    def _greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"  # ignores NULLs, unlike SQLite's max()

    def _lock_for_migration(self) -> None:
        self._execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))

    def _grep_clause(self, text: str) -> tuple[str, list[Any]]:
        # Same expression as the GIN index, so the index serves it.
        return "to_tsvector('simple', message) @@ phraseto_tsquery('simple', %s)", [text]

    def _rank_in_json(self, ranks: str, rank: str) -> str:
        return f"{ranks}::jsonb @> to_jsonb({rank})"

    def _upsert_rollups(
        self,
        width: int,
        cells: dict[tuple[str, int, int], rollups.Cells],
        metrics: Sequence[str],
        *,
        existing: bool = False,
        steady: Collection[tuple[str, int, int]] = (),
    ) -> None:
        """One statement per job for all its rows, a column an array: a statement a row
        (``executemany``) costs the server more than the rollups themselves. The arrays are
        written as text by orjson (psycopg's own dumping of lists costs more than the rest):
        the shortest text that reads back the same float, read by the server correctly
        rounded, so every value arrives exactly."""
        if not cells:
            return
        if existing:
            groups = rollups.update_groups(cells, metrics, steady)
        else:
            groups = [(cells, rollups.written_columns(metrics))]
        for group, columns in groups:
            pick = operator.itemgetter(*rollups.cell_positions(columns))
            by_job: dict[str, list[tuple[Any, ...]]] = {}
            for (job_id, rank, block), row in group.items():
                by_job.setdefault(job_id, []).append((rank, block, *pick(row)))
            sql = _upsert_array_sql(tuple(metrics), columns, existing)
            for job_id, matrix in by_job.items():
                arrays = [
                    orjson.dumps(c).translate(_TO_ARRAY).decode() for c in zip(*matrix, strict=True)
                ]
                key = (job_id, width)
                with self._conn.cursor() as cursor:
                    # Never prepared: a generic plan cannot see how many rows the arrays
                    # hold, and chooses scans that take seconds; a custom plan, milliseconds.
                    cursor.execute(
                        sql.encode(),
                        (*arrays, *key) if existing else (*key, *arrays),
                        prepare=False,
                    )

    def close(self) -> None:
        self._conn.close()


#: JSON lists to PostgreSQL array braces (``null`` is read as NULL in any case).
_TO_ARRAY = bytes.maketrans(b"[]", b"{}")


@functools.cache
def _upsert_array_sql(metrics: tuple[str, ...], given: tuple[str, ...], existing: bool) -> str:
    """``INSERT ... SELECT FROM unnest(arrays)`` of the columns ``(rank, block, *given)``,
    ``ON CONFLICT DO UPDATE`` of the given columns (parameters: job, width, the arrays); for
    rows known to exist, a plain ``UPDATE ... FROM unnest(...)`` (no speculative insert)."""
    empty = [f"{m}_n" for m in METRICS if m not in metrics]  # NOT NULL: 0 for a new row
    names = ["rank", "block", *given]
    types = ["integer", "bigint"] + [
        "integer" if c.endswith("_n") else "double precision" for c in given
    ]
    rows = f"unnest({', '.join(f'%s::{t}[]' for t in types)}) AS k({', '.join(names)})"
    if existing:
        return (
            f"UPDATE step_rollups AS r SET {', '.join(f'{c} = k.{c}' for c in given)}"
            f" FROM {rows} WHERE r.job_id = %s AND r.width = %s AND r.rank = k.rank"
            " AND r.block = k.block"
        )
    return (
        f"INSERT INTO step_rollups (job_id, width, {', '.join(names)}, sealed"
        f"{''.join(', ' + c for c in empty)})"
        f" SELECT %s, %s, {', '.join(names)}, 0{', 0' * len(empty)} FROM {rows}"
        " ON CONFLICT (job_id, width, rank, block) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in given)
    )


def _redacted(url: str) -> str:
    """The URL without its password, for error messages.

    >>> _redacted("postgresql://u:secret@h:5432/db")
    'postgresql://u:***@h:5432/db'
    """
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
