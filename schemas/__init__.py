"""The rankwatch wire contract (docs/CONTRACT.md, version 1), as pydantic models.

This package is the only place that knows the contract's field names. Producers, streams and
sinks import it; it imports nothing of theirs.
"""

from rankwatch.schemas._types import JOB_ID_PATTERN, format_timestamp
from rankwatch.schemas.alert import Action, Alert, Scope, Severity, Status, alert_id_for
from rankwatch.schemas.codec import (
    KINDS,
    MAX_MESSAGE_BYTES,
    Event,
    decode,
    decode_object,
    encode,
    to_wire_dict,
)
from rankwatch.schemas.events import (
    KNOWN_LR_SCHEDULES,
    STEP_METRICS,
    EventBase,
    Lifecycle,
    LogEvent,
    LogLevel,
    Phase,
    StepEvent,
)
from rankwatch.schemas.exceptions import EventDecodeError, FieldProblem, SchemaError
from rankwatch.schemas.rankwatch_error import RankwatchError
from rankwatch.schemas.records import StepRecord
from rankwatch.schemas.topics import ALERTS_TOPIC, DEADLETTER_TOPIC, LOGS_TOPIC, STEPS_TOPIC

__all__ = [
    "ALERTS_TOPIC",
    "DEADLETTER_TOPIC",
    "JOB_ID_PATTERN",
    "KINDS",
    "KNOWN_LR_SCHEDULES",
    "LOGS_TOPIC",
    "MAX_MESSAGE_BYTES",
    "STEPS_TOPIC",
    "STEP_METRICS",
    "Action",
    "Alert",
    "Event",
    "EventBase",
    "EventDecodeError",
    "FieldProblem",
    "Lifecycle",
    "LogEvent",
    "LogLevel",
    "Phase",
    "RankwatchError",
    "SchemaError",
    "Scope",
    "Severity",
    "Status",
    "StepEvent",
    "StepRecord",
    "alert_id_for",
    "decode",
    "decode_object",
    "encode",
    "format_timestamp",
    "to_wire_dict",
]
