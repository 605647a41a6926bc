"""Events to table rows and back, shared by the SQL back-ends.

NaN does not survive every database (SQLite stores a bound NaN as NULL), and a NaN loss is the
most important value there is. So each non-finite metric is stored as NULL in its column and
named in the row's ``nonfinite`` JSON column (``{"loss": "nan"}``); reads put it back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.schemas._types import wire_safe
from rankwatch.sinks.storage.base import LEVELS, METRICS

STEP_COLUMNS: tuple[str, ...] = (
    "job_id",
    "rank",
    "step",
    "ts",
    "world_size",
    "host",
    *METRICS,
    "nonfinite",
    "extra",
)
LOG_COLUMNS: tuple[str, ...] = (
    "job_id",
    "rank",
    "ts",
    "level",
    "level_no",
    "logger",
    "step",
    "host",
    "message",
    "msg_hash",
    "extra",
)
ALERT_COLUMNS: tuple[str, ...] = (
    "alert_id",
    "status",
    "job_id",
    "rule",
    "severity",
    "scope",
    "ranks",
    "step",
    "first_seen",
    "last_seen",
    "summary",
    "evidence",
    "action",
    "extra",
)


def _json(value: Any) -> str | None:
    if not value:
        return None
    return orjson.dumps(wire_safe(value)).decode()


def step_row(event: StepEvent) -> tuple[Any, ...]:
    """The ``steps`` row of a step event, in :data:`STEP_COLUMNS` order."""
    values: list[float | None] = []
    nonfinite: dict[str, str] = {}
    for name in METRICS:
        value = getattr(event, name)
        if value is not None and not math.isfinite(value):
            nonfinite[name] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            value = None
        values.append(value)
    return (
        event.job_id,
        event.rank,
        event.step,
        event.epoch,
        event.world_size,
        event.host,
        *values,
        _json(nonfinite),
        _json(event.extra),
    )


def message_hash(event: LogEvent) -> int:
    """A signed 64-bit hash of what makes a record itself (level, logger, message).

    Part of the logs' natural key: a replayed record has the same one, so it is not stored twice.

    >>> e = LogEvent(job_id="j", rank=0, timestamp=0, level="ERROR", message="boom")
    >>> message_hash(e) == message_hash(e.model_copy())
    True
    """
    text = "\x1f".join((event.level, event.logger or "", event.message)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


def log_row(event: LogEvent) -> tuple[Any, ...]:
    """The ``logs`` row of a log event, in :data:`LOG_COLUMNS` order."""
    return (
        event.job_id,
        event.rank,
        event.epoch,
        event.level,
        LEVELS[event.level],
        event.logger,
        event.step,
        event.host,
        event.message,
        message_hash(event),
        _json(event.extra),
    )


def alert_row(alert: Alert) -> tuple[Any, ...]:
    """The ``alerts`` row of an alert, in :data:`ALERT_COLUMNS` order."""
    return (
        alert.alert_id,
        alert.status,
        alert.job_id,
        alert.rule,
        alert.severity,
        alert.scope,
        orjson.dumps(alert.ranks).decode(),
        alert.step,
        alert.first_seen.timestamp(),
        alert.last_seen.timestamp(),
        alert.summary,
        _json(alert.evidence) or "{}",
        alert.action,
        _json(alert.extra),
    )


def alert_from_row(row: Sequence[Any]) -> Alert:
    """Rebuild the :class:`Alert` of a row selected in :data:`ALERT_COLUMNS` order."""
    fields = dict(zip(ALERT_COLUMNS, row, strict=True))
    stored_extra = fields.pop("extra")
    extra = orjson.loads(stored_extra) if stored_extra else {}
    fields["ranks"] = orjson.loads(fields["ranks"])
    fields["evidence"] = orjson.loads(fields["evidence"])
    return Alert.model_validate({**extra, **fields})


def metric_value(value: float | None, nonfinite: str | None, metric: str) -> float | None:
    """A stored metric with its non-finite value restored.

    >>> metric_value(None, '{"loss": "nan"}', "loss")
    nan
    >>> metric_value(2.5, None, "loss")
    2.5
    """
    if value is None and nonfinite:
        marker = orjson.loads(nonfinite).get(metric)
        if marker is not None:
            return float(marker)
    return None if value is None else float(value)


def job_rank_rows(
    steps: Iterable[StepEvent], logs: Iterable[LogEvent]
) -> list[tuple[str, int, int | None, float]]:
    """``(job_id, rank, last_step, last_ts)`` per rank in a batch, for the ``job_ranks`` table.

    Aggregated here so a batch of 10,000 steps costs one upsert per rank, not one per event.
    """
    latest: dict[tuple[str, int], tuple[int | None, float]] = {}
    events: list[StepEvent | LogEvent] = [*steps, *logs]
    for event in events:
        key = (event.job_id, event.rank)
        step, ts = latest.get(key, (None, float("-inf")))
        new_step = event.step
        if new_step is not None and (step is None or new_step > step):
            step = new_step
        latest[key] = (step, max(ts, event.epoch))
    return [(job, rank, step, ts) for (job, rank), (step, ts) in latest.items()]
