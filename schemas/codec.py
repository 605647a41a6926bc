"""The wire codec: bytes <-> events, with orjson, and errors that name the field.

Decoding is the hot path of the worker (every message), so it does one orjson parse and one
pydantic validation, and nothing else when the input is well formed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from rankwatch.schemas._types import float_to_wire, wire_safe
from rankwatch.schemas.alert import Alert
from rankwatch.schemas.events import LogEvent, StepEvent
from rankwatch.schemas.exceptions import EventDecodeError, FieldProblem

Event = StepEvent | LogEvent | Alert

KINDS: dict[str, type[StepEvent] | type[LogEvent] | type[Alert]] = {
    "step": StepEvent,
    "log": LogEvent,
    "alert": Alert,
}

#: Messages larger than this are refused before parsing (Kafka's own default is 1 MiB).
MAX_MESSAGE_BYTES = 1024 * 1024


def _loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as first:
        # orjson rejects the bare NaN / Infinity tokens that Python's json.dumps writes;
        # the stdlib parser takes them. Only such messages (and garbage) pay for this path.
        if isinstance(data, bytes | bytearray | memoryview):
            try:
                data = bytes(data).decode("utf-8")
            except UnicodeDecodeError as error:
                raise EventDecodeError.whole(
                    f"message is not valid UTF-8 (byte {error.start})"
                ) from None
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # JSONDecodeError, and ints too long to convert
            raise EventDecodeError.whole(f"not valid JSON: {first}") from None


def _infer_kind(obj: Mapping[str, Any]) -> str | None:
    # Structured per-step logs written by trainers (docs/CONTRACT.md) carry no `kind`: they replay
    # as they are, recognised by their fields.
    if "alert_id" in obj:
        return "alert"
    if "level" in obj or "message" in obj:
        return "log"
    if "step" in obj:
        return "step"
    return None


def _problems(error: ValidationError) -> list[FieldProblem]:
    problems = []
    for item in error.errors(include_url=False):
        field = ".".join(str(p) for p in item["loc"])
        if item["type"] == "missing":
            message = "missing required field"
        else:
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] not in ("value_error",) and "input" in item:
                shown = repr(item["input"])
                message += f" (got {shown[:80]})"
        problems.append(FieldProblem(field, message))
    return problems


def decode_object(obj: Any, *, defaults: Mapping[str, Any] | None = None) -> Event:
    """Validate an already-parsed JSON object as an event.

    ``defaults`` fills fields the object lacks (``job_id`` for a log file of one job).
    """
    if not isinstance(obj, dict):
        raise EventDecodeError.whole(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind is None:
        kind = _infer_kind(obj)
        if kind is None:
            raise EventDecodeError([FieldProblem("kind", "missing required field")])
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise EventDecodeError(
            [FieldProblem("kind", f"unknown kind {kind!r} (expected one of step, log, alert)")]
        )
    if defaults:
        obj = {**defaults, **obj}
    try:
        return model.model_validate(obj)
    except ValidationError as error:
        raise EventDecodeError(_problems(error)) from None


def decode(data: bytes | str, *, defaults: Mapping[str, Any] | None = None) -> Event:
    """Parse one wire message into a :class:`StepEvent`, :class:`LogEvent` or :class:`Alert`.

    >>> decode(b'{"kind":"step","job_id":"j","rank":0,"step":3,"timestamp":0,"loss":NaN}').loss
    nan
    >>> decode(b'{"kind":"step","job_id":"j","rank":-1,"step":3,"timestamp":0}')
    Traceback (most recent call last):
    ...
    rankwatch.schemas.exceptions.EventDecodeError: rank: Input should be greater than or ...
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise EventDecodeError.whole(
            f"message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"
        )
    if not defaults and isinstance(data, bytes) and _STEP_KIND in data:
        # The hot path (16k step events a second for one big job): pydantic parses and
        # validates the bytes in one call, without building a dict first (~1 us of ~7).
        # Anything it does not take (bare NaN tokens, bad fields, a "kind" that was only
        # nested) falls through to the general path, whose errors name the field.
        try:
            event = StepEvent.model_validate_json(data)
        except ValidationError:
            pass
        else:
            if "kind" in event.model_fields_set:  # the top-level kind, not a nested one
                return event
    return decode_object(_loads(data), defaults=defaults)


_STEP_KIND = b'"kind":"step"'  # as our writers (orjson) emit it; other spellings go the long way


def to_wire_dict(event: BaseModel) -> dict[str, Any]:
    """The JSON object of an event as our writers emit it: None fields left out of step and
    log events, non-finite floats as strings, timestamps as datetimes (orjson writes UTC Z)."""
    out = event.model_dump(exclude_none=not isinstance(event, Alert))
    for key, value in out.items():
        if isinstance(value, float):
            if not math.isfinite(value):
                out[key] = float_to_wire(value)
        elif isinstance(value, dict | list):
            out[key] = wire_safe(value)
    return out


def encode(event: BaseModel) -> bytes:
    """Serialize an event for Kafka or a JSON-lines file (no trailing newline).

    >>> encode(StepEvent(job_id="j", rank=1, step=2, timestamp=0, loss=float("inf")))
    b'{"schema_version":1,"job_id":"j","rank":1,"timestamp":"1970-01-01T00:00:00Z","kind":"step","step":2,"loss":"inf"}'
    """
    return orjson.dumps(to_wire_dict(event), option=orjson.OPT_UTC_Z)
