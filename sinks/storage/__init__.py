"""Storage: every step, log record and alert, kept queryable after the job is gone.

:func:`open_store` picks the back-end from a URL: ``sqlite:///path.db`` (the default, one file)
or ``postgresql://user@host/db``. :class:`StorageSink` is the Kafka consumer that fills a store.
"""

from __future__ import annotations

from rankwatch.sinks.exceptions import StoreError
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
    Store,
    WriteStats,
)
from rankwatch.sinks.storage.sql import SqlStore

DEFAULT_DB = "sqlite:///.rankwatch/rankwatch.db"


def open_store(url: str = DEFAULT_DB, *, migrate: bool = True) -> SqlStore:
    """Open (and by default create or upgrade) the store at ``url``.

    >>> import tempfile, os
    >>> store = open_store("sqlite:///" + os.path.join(tempfile.mkdtemp(), "rw.db"))
    >>> store.schema_version(), store.counts()["steps"]
    (4, 0)
    >>> store.close()
    """
    store: SqlStore
    if url.startswith("sqlite:"):
        from rankwatch.sinks.storage.sqlite import SQLiteStore

        store = SQLiteStore(url)
    elif url.startswith(("postgresql://", "postgres://")):
        from rankwatch.sinks.storage.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        raise StoreError(
            f"{url!r}: unknown database URL (expected sqlite:///PATH or postgresql://...)"
        )
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store


__all__ = [
    "DEFAULT_DB",
    "LEVELS",
    "METRICS",
    "Heatmap",
    "JobSummary",
    "LogQuery",
    "LogRow",
    "RetentionResult",
    "SqlStore",
    "StepPoint",
    "StepQuery",
    "Store",
    "StoreError",
    "WriteStats",
    "open_store",
]
