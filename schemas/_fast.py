"""The hand-checked fast path of :func:`rankwatch.schemas.decode`: parsed JSON to events.

The pydantic models are the contract; this module only knows the common, well-formed shapes
of step and log events and checks them by hand, so that decoding costs little more than the
JSON parser. Each check is a function over the parsed mapping that returns the validated field
values (:class:`Checked`), or ``None`` where it is not sure: anything it does not recognise
(a wrong type, an out-of-range value, a timestamp in a rarer spelling, a non-finite float
string other than ``"nan"``/``"inf"``/``"-inf"``) goes back to pydantic, whose verdict and
error message are the contract's. It never rejects anything itself.

What "sure" means, field by field, mirrors the models in :mod:`rankwatch.schemas.events`
(``tests/schemas/test_decode_fast_path.py`` checks it against pydantic on generated input):

- strict ints (``rank``, ``step`` ...): an ``int`` (not a ``bool``) within the bounds;
- floats: an ``int`` or finite ``float`` within the bounds (an int becomes a float, as
  pydantic makes it); ``loss`` and ``gradient_norm`` also take the lower-case strings our
  writers emit for non-finite values;
- timestamps: ``YYYY-MM-DDTHH:MM:SS[.f{1,6}]`` with ``Z`` or ``+00:00``, or epoch seconds in
  ``[0, 1e10)``, converted as pydantic converts them;
- the rest (``job_id``'s pattern, literals, ``level``'s aliases, optional fields given as
  ``null``, unknown fields kept as they are) as the models say.

>>> checked = check_step({"kind": "step", "job_id": "j", "rank": 1, "step": 2, "timestamp": 0})
>>> checked.values["rank"], checked.values["loss"], sorted(checked.fields_set)
(1, None, ['job_id', 'kind', 'rank', 'step', 'timestamp'])
>>> check_step({"kind": "step", "job_id": "j", "rank": True, "step": 2, "timestamp": 0}) is None
True
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import msgspec
from pydantic import BaseModel

from rankwatch.schemas._types import JOB_ID_PATTERN
from rankwatch.schemas.events import LogEvent, StepEvent, _normalize_level

__all__ = ["Checked", "build", "check_log", "check_step", "decode_known"]


class Checked(NamedTuple):
    """The validated field values of one event, as pydantic would hold them.

    ``values``: every field of the model in its declared order, defaults included;
    ``fields_set``: the fields the input named (unknown ones too, as pydantic has it);
    ``extra``: unknown fields as they arrived (``None`` where there were none).
    """

    values: dict[str, Any]
    fields_set: set[str]
    extra: dict[str, Any] | None


# -- the field rules, as msgspec types (checked in C) ---------------------------------------------
# Only what pydantic surely takes, and to the same value: strict ints (no bools, no floats);
# ints or finite floats for floats (msgspec converts an int as pydantic does); strings as they
# are. Timestamps are only typed here and converted below. An absent optional field is UNSET,
# so the fields the input named are the ones left after ``to_builtins``.
_MAX = sys.float_info.max
_Finite = Annotated[float, msgspec.Meta(ge=-_MAX, le=_MAX)]
_Measure = Annotated[float, msgspec.Meta(ge=0, le=_MAX)]
_Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
_Int0 = Annotated[int, msgspec.Meta(ge=0)]
_Int1 = Annotated[int, msgspec.Meta(ge=1)]
_JobId = Annotated[str, msgspec.Meta(pattern=JOB_ID_PATTERN.removesuffix("$") + r"\Z")]
_Time = str | int | float
_Unset = msgspec.UnsetType
_UNSET: Any = msgspec.UNSET


class _Common(msgspec.Struct, kw_only=True):
    schema_version: _Int1 | _Unset = _UNSET
    job_id: _JobId
    rank: _Int0
    host: str | _Unset | None = _UNSET
    timestamp: _Time
    attempt: _Int0 | _Unset | None = _UNSET
    phase: Literal["train", "eval", "checkpoint"] | _Unset | None = _UNSET


class _Step(_Common, kw_only=True):
    kind: Literal["step"] | _Unset = _UNSET
    world_size: _Int1 | _Unset | None = _UNSET
    step: _Int0
    loss: _Finite | _Unset | None = _UNSET  # "nan" and the like: the dict path, or pydantic
    learning_rate: _Finite | _Unset | None = _UNSET
    gradient_norm: _Finite | _Unset | None = _UNSET
    gpu_memory_usage: _Percent | _Unset | None = _UNSET
    gpu_memory_allocated_mb: _Measure | _Unset | None = _UNSET
    gpu_memory_reserved_mb: _Measure | _Unset | None = _UNSET
    throughput_tokens_per_sec: _Measure | _Unset | None = _UNSET
    step_time_s: _Measure | _Unset | None = _UNSET
    data_time_s: _Measure | _Unset | None = _UNSET
    compute_time_s: _Measure | _Unset | None = _UNSET
    gpu_utilization: _Percent | _Unset | None = _UNSET
    lr_schedule: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | _Unset | None = _UNSET
    lr_warmup_steps: _Int0 | _Unset | None = _UNSET
    lr_total_steps: _Int1 | _Unset | None = _UNSET


class _Log(_Common, kw_only=True):
    kind: Literal["log"] | _Unset = _UNSET
    level: str  # normalised below, as the model's before-validator does
    message: str
    logger: str | _Unset | None = _UNSET
    step: _Int0 | _Unset | None = _UNSET
    lifecycle: Literal["ended", "exception", "stuck", "terminated"] | _Unset | None = _UNSET


# The bytes path refuses unknown fields (they go the dict path, which keeps them) and wants
# the top-level kind said (an inferred kind goes the dict path too).
class _StepWire(_Step, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["step"]


class _LogWire(_Log, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["log"]


_MODELS: tuple[tuple[type[msgspec.Struct], type[BaseModel]], ...] = (
    (_Step, StepEvent),
    (_Log, LogEvent),
)
for _struct, _model in _MODELS:
    assert list(_struct.__struct_fields__) == list(_model.model_fields), _model.__name__


# -- from checked values to the pydantic event -----------------------------------------------------

# The forms our writers emit (format_timestamp), and the +00:00 of isoformat(); others go to
# pydantic. fromisoformat takes exactly these (and more, which the pattern keeps out).
_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|\+00:00)").fullmatch
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
_to_builtins = msgspec.to_builtins
_convert = msgspec.convert
_fromisoformat = datetime.fromisoformat
_Invalid = (msgspec.ValidationError, msgspec.DecodeError)


def _timestamp(value: Any) -> datetime | None:
    """The UTC datetime pydantic makes of a timestamp, where this is sure of it."""
    if type(value) is str:
        if _ISO_UTC(value) is None:
            return None
        try:
            return _fromisoformat(value)
        except ValueError:  # day 31 of April, hour 24: pydantic's message says which
            return None
    if type(value) is int:
        # pydantic reads numbers above 2e10 as milliseconds; stay well below.
        return _EPOCH + timedelta(seconds=value) if 0 <= value < 10_000_000_000 else None
    if type(value) is float and 0.0 <= value < 1e10:
        # pydantic-core's conversion: whole seconds, then the fraction rounded half away
        # from zero to microseconds (Python's fromtimestamp rounds half to even).
        seconds = math.floor(value)
        micro = math.floor((value - seconds) * 1_000_000.0 + 0.5)
        if micro < 1_000_000:
            return _EPOCH + timedelta(seconds=seconds, microseconds=micro)
    return None


def _finish(present: dict[str, Any], template: dict[str, Any]) -> dict[str, Any] | None:
    """The model's values from the fields an input named (checked), or None if unsure."""
    when = _timestamp(present["timestamp"])
    if when is None:
        return None
    values = template.copy()
    values.update(present)
    values["timestamp"] = when
    if template is _STEP_TEMPLATE:
        world = values["world_size"]
        if world is not None and values["rank"] >= world:  # the model's own validator
            return None
    else:
        level = _normalize_level(values["level"])
        if level not in _LEVELS:
            return None
        values["level"] = level
    return values


def _template(model: type[BaseModel]) -> dict[str, Any]:
    # A required field's place holds None until the input names it (it always does here).
    return {
        name: (None if f.is_required() else f.default) for name, f in model.model_fields.items()
    }


_STEP_TEMPLATE = _template(StepEvent)
_LOG_TEMPLATE = _template(LogEvent)


def _check(
    obj: Mapping[str, Any], struct: type[msgspec.Struct], template: dict[str, Any]
) -> Checked | None:
    try:
        present = _to_builtins(_convert(obj, struct))
    except _Invalid:
        return None
    if _has_wide_int(present):
        return None
    values = _finish(present, template)
    if values is None:
        return None
    fields_set = set(present)
    extra = None
    if len(present) < len(obj):
        extra = {key: value for key, value in obj.items() if key not in present}
        if _has_wide_int(extra):
            return None
        fields_set.update(extra)  # pydantic counts unknown fields as set too
    return Checked(values, fields_set, extra)


_I64 = range(-(2**63), 2**63)


def _has_wide_int(value: Any) -> bool:
    """Whether a field holds an integer past 64 bits, at any depth: a parser may keep it whole
    where pydantic's own JSON parse makes a float of it (2**64 -> 1.8446744073709552e19, which a
    strict int field then refuses), so pydantic decides those."""
    if isinstance(value, int):
        return value not in _I64
    if isinstance(value, dict):
        return any(_has_wide_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_wide_int(v) for v in value)
    return False


def check_step(obj: Mapping[str, Any]) -> Checked | None:
    """A step event's validated field values, or ``None`` where pydantic must decide.

    Its verdict is ``StepEvent.model_validate(obj)``'s. Parse with ``msgspec.json.decode``
    where unknown fields must match pydantic's own parse: orjson reads integers past 64 bits
    as floats."""
    return _check(obj, _Step, _STEP_TEMPLATE)


def check_log(obj: Mapping[str, Any]) -> Checked | None:
    """A log event's validated field values, or ``None`` where pydantic must decide."""
    return _check(obj, _Log, _LOG_TEMPLATE)


M = TypeVar("M", bound=BaseModel)
_setattr: Callable[[object, str, Any], None] = object.__setattr__
_new = object.__new__


def build(model: type[M], checked: Checked) -> M:
    """The model instance of checked values, as ``model_validate`` would have made it (what
    ``model_construct`` does, without its per-field Python loop: the values are complete)."""
    return _build(model, checked.values, checked.fields_set, checked.extra or {})


def _build(model: type[M], values: dict[str, Any], fields_set: set[str], extra: Any) -> M:
    event = _new(model)
    _setattr(event, "__dict__", values)
    _setattr(event, "__pydantic_fields_set__", fields_set)
    _setattr(event, "__pydantic_extra__", extra)
    _setattr(event, "__pydantic_private__", None)
    return event


_step_wire = msgspec.json.Decoder(_StepWire).decode
_log_wire = msgspec.json.Decoder(_LogWire).decode
_STEP_KIND = b'"kind":"step"'  # as our writers (orjson) emit it
_LOG_KIND = b'"kind":"log"'


def decode_known(data: bytes) -> StepEvent | LogEvent | None:
    """A step or log event straight from the bytes, as our writers encode them (no unknown
    fields, ``kind`` said): parsed and checked by msgspec in one call, no dict in between.
    ``None`` where this path is not sure (the caller tries the dict path, then pydantic)."""
    decoder: Callable[[bytes], msgspec.Struct]
    model: type[StepEvent] | type[LogEvent]
    if _STEP_KIND in data:
        decoder, template, model = _step_wire, _STEP_TEMPLATE, StepEvent
    elif _LOG_KIND in data:
        decoder, template, model = _log_wire, _LOG_TEMPLATE, LogEvent
    else:
        return None
    try:
        present = _to_builtins(decoder(data))
    except _Invalid:
        return None
    if _has_wide_int(present):
        return None
    values = _finish(present, template)
    if values is None:
        return None
    return _build(model, values, set(present), {})
