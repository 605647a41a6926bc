"""Field types shared by the event models, so each rule of the contract is written once."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, Field, PlainSerializer, WithJsonSchema

JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

# Matches every spelling of a non-finite float that readers must accept on the wire.
# JSON Schema regexes (ECMA 262) have no case-insensitive flag: spell each letter's cases.
_NON_FINITE_SCHEMA = {
    "type": "string",
    "pattern": r"^[+-]?([Nn][Aa][Nn]|[Ii][Nn][Ff]([Ii][Nn][Ii][Tt][Yy])?)$",
}


def _to_utc(value: datetime) -> datetime:
    return value if value.utcoffset() == _ZERO else value.astimezone(UTC)


_ZERO = datetime(2000, 1, 1, tzinfo=UTC).utcoffset()


def format_timestamp(value: datetime) -> str:
    """UTC ISO 8601 with a ``Z``: the one form our writers emit.

    >>> format_timestamp(datetime(2025, 4, 5, 10, 23, 15, tzinfo=UTC))
    '2025-04-05T10:23:15Z'
    """
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def float_to_wire(value: float) -> float | str:
    """Non-finite floats travel as the strings ``"nan"``, ``"inf"``, ``"-inf"``.

    JSON has no NaN, and orjson would silently write ``null``: a NaN loss, the most important
    event there is, would arrive as "no loss reported".

    >>> float_to_wire(float("-inf")), float_to_wire(2.5)
    ('-inf', 2.5)
    """
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN, description="the training job")]
#: The largest integer any field takes: a signed 64-bit one, what every reader of an event
#: holds (Kafka's consumers, SQL's BIGINT, numpy, the worker's stored state). A step of
#: 10**29 used to be accepted, then stopped the worker at its next snapshot.
INT64_MAX = 2**63 - 1
Rank = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX, description="global rank")]
Step = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX, description="optimizer step")]

Timestamp = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number", "description": "epoch seconds"},
            ],
            "description": "event time: ISO 8601 with a zone, or epoch seconds",
        }
    ),
]

# A float that may be NaN or infinite (loss, gradient norm), in any of the wire spellings.
NonFiniteFloat = Annotated[
    float,
    Field(allow_inf_nan=True),
    PlainSerializer(float_to_wire, when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "number"}, _NON_FINITE_SCHEMA]}),
]
# A plain measurement: finite, not negative.
Measure = Annotated[float, Field(allow_inf_nan=False, ge=0)]
Percent = Annotated[float, Field(allow_inf_nan=False, ge=0, le=100)]


def wire_safe(value: Any) -> Any:
    """Deep copy of free-form JSON (evidence, extra fields) with non-finite floats as strings."""
    if isinstance(value, float):
        return float_to_wire(value)
    if isinstance(value, dict):
        return {k: wire_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [wire_safe(v) for v in value]
    return value
