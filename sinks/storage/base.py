"""The storage interface every back-end implements, and the rows its queries return.

Time is stored as epoch seconds (UTC, float) in both back-ends: one representation for SQLite
and PostgreSQL, cheap to index and compare. Queries return :class:`datetime` in UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from rankwatch.schemas import STEP_METRICS, Alert, LogEvent, StepEvent

#: Step metrics that storage keeps and ``rankwatch steps --metric`` can show: the contract's
#: STEP_METRICS but gpu_utilization, which joined the contract after the first schema and has no
#: column yet. The migrations build their columns from this tuple, so adding one needs the
#: earlier migrations' column lists frozen first, then a migration that adds the column.
METRICS: tuple[str, ...] = tuple(name for name in STEP_METRICS if name != "gpu_utilization")

#: Log levels in order; ``--level WARNING`` selects WARNING and everything above it.
LEVELS: dict[str, int] = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def from_epoch(seconds: float) -> datetime:
    """An epoch-seconds column as an aware UTC datetime.

    >>> from_epoch(0).isoformat()
    '1970-01-01T00:00:00+00:00'
    """
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What one :meth:`Store.write_batch` did: rows new to the store, per table.

    A replayed message is counted in ``received`` but not in the new rows.
    """

    received: int = 0
    steps: int = 0
    logs: int = 0
    alerts: int = 0  # (alert_id, status) rows inserted or updated (a later last_seen)


@dataclass(frozen=True, slots=True)
class StepPoint:
    """One rank's value of one metric at one step (``None`` where the rank did not report it)."""

    rank: int
    step: int
    value: float | None
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class LogRow:
    """One stored log record."""

    job_id: str
    rank: int
    timestamp: datetime
    level: str
    message: str
    logger: str | None = None
    step: int | None = None
    host: str | None = None


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job seen in storage: its ranks, last step, last event time, open alerts, and how it
    stands: ``stopped`` (an open ``job_stopped`` alert: its ranks went quiet without a clean
    end), ``ended`` (every rank's producer said it ended cleanly), else ``running``."""

    job_id: str
    ranks: int
    min_rank: int
    max_rank: int
    last_step: int | None
    last_seen: datetime
    open_alerts: int = 0
    state: str = "running"


@dataclass(frozen=True, slots=True)
class LogQuery:
    """The filters of ``rankwatch logs``. ``since`` is epoch seconds; ``grep`` is a phrase."""

    job_id: str
    rank: int | None = None
    since: float | None = None
    level: str | None = None
    grep: str | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class StepQuery:
    """The filters of ``rankwatch steps``: one metric of some ranks of one job."""

    job_id: str
    metric: str
    ranks: Sequence[int] | None = None
    since: float | None = None
    min_step: int | None = None
    max_step: int | None = None


@dataclass(frozen=True, slots=True)
class Heatmap:
    """A rank x step grid of one statistic of one metric, from the per-rank rollups.

    Row ``i`` is rank ``ranks[i]``; column ``j`` covers steps ``[step_edges[j], step_edges[j+1])``;
    ``values[i][j]`` is ``None`` where that rank has no (finite) value in that column.
    """

    job_id: str
    metric: str  # one of METRICS
    stat: str  # "min" | "median" | "max"
    ranks: list[int]
    step_edges: list[int]
    values: list[list[float | None]]


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """Rows deleted by :meth:`Store.delete_older_than`, per table."""

    deleted: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """A place that keeps steps, logs and alerts, and answers the query commands.

    Writes are idempotent: writing the same event twice leaves one row. Natural keys:
    steps ``(job_id, rank, step)``, logs ``(job_id, rank, timestamp, hash of the record)``,
    alerts ``(alert_id, status)`` (a repeat updates ``last_seen``). A batch is one transaction.
    """

    url: str

    def migrate(self) -> int:
        """Create or upgrade the schema in place; return the schema version now in force."""

    def schema_version(self) -> int:
        """The schema version of the database (0: empty)."""

    def write_batch(
        self,
        steps: Sequence[StepEvent],
        logs: Sequence[LogEvent],
        alerts: Sequence[Alert],
    ) -> WriteStats:
        """Write all three in one transaction; replays are no-ops."""

    def logs(self, query: LogQuery) -> list[LogRow]:
        """The latest ``query.limit`` matching records, oldest first."""

    def alerts(
        self, job_id: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[Alert]:
        """Alerts (one per ``(alert_id, status)``) by ``last_seen``, oldest first."""

    def steps(self, query: StepQuery) -> list[StepPoint]:
        """One metric per rank and step, ordered by rank then step."""

    def jobs(self) -> list[JobSummary]:
        """Every job seen, most recently active first."""

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
        """A rank x step grid of ``stat`` of ``metric`` over steps ``[step_from, step_to)`` in
        at most ``columns`` columns, from the rollups; a bad argument is a ``StoreError``."""

    def delete_older_than(
        self,
        age_s: float | None,
        now: float | None = None,
        *,
        steps_age_s: float | None = None,
        evidence_s: float = ...,
    ) -> RetentionResult:
        """Delete what is older than ``age_s`` seconds (event time), and raw steps older than
        ``steps_age_s`` except around alerts (within ``evidence_s``); ``now`` defaults to now."""

    def close(self) -> None:
        """Release the connection."""
