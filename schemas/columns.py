"""Columnar decode of step events: a batch of wire messages straight to columns.

The worker and ``rankwatch replay`` need no :class:`StepEvent` object per message to build
per-step frames (issue 14): :func:`decode_batch` turns a batch of messages into
:class:`StepColumns` (the well-formed step events, as arrays and lists, in input order), the
other events (logs, alerts) and the errors. Its verdict on every message is
:func:`~rankwatch.schemas.decode`'s: a message lands as a row whose values are those of the
``StepEvent`` that ``decode`` makes of it, or in ``others`` as exactly ``decode``'s event, or in
``errors`` with exactly the error ``decode`` raises.

How (measured in ``benchmarks/decode_speed.py``): each message is parsed and checked in one
msgspec call into a strict struct that only takes the common, well-formed shape of a step event
as our writers encode it (``kind`` and ``schema_version: 1`` said, no unknown fields, no
``null``). That costs less than ``orjson.loads`` of the same line (no dict is built), and less
than one parse of the batch joined into a JSON array (which would also need proof that each
element is one message). Then the batch is checked and converted column by column in numpy:
the timestamps (the fixed ISO forms our writers emit, and epoch numbers, converted exactly as
pydantic converts them), the job ids (once per distinct id), ``rank < world_size``, and the
metrics (an absent metric is told apart from a NaN loss by the default's NaN payload).
Whatever that route is not sure of goes to ``decode`` itself, one message at a time, and its
answer is taken as it is: a ``StepEvent`` is then a row too, kept whole in
:attr:`StepColumns.rare`. So the fast route never rejects anything, and ``decode`` decides
every case it does not know.

This module needs numpy, as :mod:`rankwatch.streams.frames` does; ``rankwatch.schemas`` does not
import it, so that producers need no numpy.

>>> batch = decode_batch([
...     b'{"schema_version":1,"job_id":"j","rank":1,"timestamp":"2025-04-05T10:23:15.250000Z",'
...     b'"kind":"step","world_size":2,"step":7,"loss":"nan"}',
...     b'{"kind":"step","job_id":"j","rank":2,"world_size":2,"step":7,"timestamp":0}',
... ])
>>> cols = batch.steps
>>> cols.index.tolist(), cols.ranks.tolist(), cols.steps.tolist(), cols.times.tolist()
([0], [1], [7], [1743848595.25])
>>> values, present = cols.metrics["loss"]
>>> values.tolist(), present.tolist(), cols.event(0).loss
([nan], [True], nan)
>>> [(i, str(error)) for i, error in batch.errors]
[(1, 'rank 2 is not below world_size 2')]
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from rankwatch.schemas._fast import (
    _build,
    _Finite,
    _Measure,
    _Percent,
    _timestamp,
)
from rankwatch.schemas._types import JOB_ID_PATTERN
from rankwatch.schemas.codec import MAX_MESSAGE_BYTES, Event, decode
from rankwatch.schemas.events import STEP_METRICS, StepEvent
from rankwatch.schemas.exceptions import EventDecodeError

__all__ = ["DecodedBatch", "StepColumns", "decode_batch"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class StepColumns:
    """Well-formed step events of a batch, as columns, rows in input order.

    ``index``: each row's position in the input batch. ``times`` are epoch seconds exactly as
    :attr:`StepEvent.epoch` gives them, ``micros`` the same instants as whole epoch
    microseconds (what the event's ``timestamp`` holds). The optional fields are lists with
    ``None`` where the event has none. ``metrics`` maps every name of :data:`STEP_METRICS`
    that any row carries to ``(values, present)``: float64 values (NaN where absent) and the
    rows that carry it (a NaN loss is present, an absent loss is not).

    ``rare`` maps a row to the ``StepEvent`` that :func:`decode` made of it, for the rows the
    fast route left to ``decode``: every event with fields the columns do not hold (unknown
    fields, see :attr:`StepEvent.extra`; a ``schema_version`` other than 1 or not said; an
    explicit ``null``) is there, and so are rarer spellings of common events. :meth:`event`
    gives any row as its ``StepEvent``.
    """

    index: Ints
    job_ids: list[str]
    ranks: Ints
    steps: Ints
    times: Floats
    micros: Ints
    hosts: list[str | None]
    attempts: list[int | None]
    world_sizes: list[int | None]
    phases: list[str | None]
    lr_schedules: list[str | None]
    lr_warmup_steps: list[int | None]
    lr_total_steps: list[int | None]
    metrics: Mapping[str, tuple[Floats, Mask]]
    rare: Mapping[int, StepEvent] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def metric(self, name: str) -> tuple[Floats, Mask] | None:
        """``(values, present)`` of one metric, or ``None`` when no row carries it."""
        return self.metrics.get(name)

    def event(self, i: int) -> StepEvent:
        """Row ``i`` as the ``StepEvent`` that :func:`decode` makes of its message (a slow
        path: for rare rows and tests)."""
        kept = self.rare.get(i)
        if kept is not None:
            return kept
        values: dict[str, Any] = {
            "schema_version": 1,
            "job_id": self.job_ids[i],
            "rank": int(self.ranks[i]),
            "host": self.hosts[i],
            "timestamp": _EPOCH + timedelta(microseconds=int(self.micros[i])),
            "attempt": self.attempts[i],
            "phase": self.phases[i],
            "kind": "step",
            "world_size": self.world_sizes[i],
            "step": int(self.steps[i]),
        }
        for name in STEP_METRICS:
            column = self.metrics.get(name)
            values[name] = float(column[0][i]) if column is not None and column[1][i] else None
        values["lr_schedule"] = self.lr_schedules[i]
        values["lr_warmup_steps"] = self.lr_warmup_steps[i]
        values["lr_total_steps"] = self.lr_total_steps[i]
        # A row of the fast route said exactly its non-null fields (nulls go to `rare`).
        fields_set = {name for name, value in values.items() if value is not None}
        return _build(StepEvent, values, fields_set, {})


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """What :func:`decode_batch` made of a batch; each input is in exactly one part.

    ``steps``: the step events, as columns. ``others``: ``(position, event)`` for every other
    event (log events, alerts, and a step event whose ``rank`` or ``step`` does not fit a
    64-bit column). ``errors``: ``(position, error)``, the error ``decode`` raises for it.
    """

    steps: StepColumns
    others: list[tuple[int, Event]]
    errors: list[tuple[int, EventDecodeError]]


# -- the fast route's struct ----------------------------------------------------------------------
# The common shape only: anything else fails to decode and goes to `decode`. Rules as in
# schemas._fast (which are checked against pydantic), narrowed: schema_version must be said and
# be 1, `kind` said, no nulls (an absent optional field is None, so a null would be ambiguous),
# every int within int64 (the columns' type, and the contract's bound). job_id is a plain str
# here: its pattern is checked once per distinct id of the batch, not once per row.
_INT64_MAX = 2**63 - 1
_Int0_64 = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
_Int1_64 = Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)]
_NonFinite = Literal["nan", "inf", "-inf"]  # our writers' spellings; pydantic reads them so

# An absent metric is this NaN, whose payload no parse makes ("nan" parses to the plain NaN and
# finite fields refuse NaN): the column's bits tell absent from present in one vector compare.
_ABSENT_BITS = 0x7FF8_0000_DEAD_BEEF
_ABSENT: Any = struct.unpack("<d", struct.pack("<Q", _ABSENT_BITS))[0]
_NONE: Any = None  # the default of an absent optional field (a null on the wire is refused)


class _Row(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    schema_version: Literal[1]
    job_id: str
    rank: _Int0_64
    host: str = _NONE
    timestamp: str | int | float
    attempt: _Int0_64 = _NONE
    phase: Literal["train", "eval", "checkpoint"] = _NONE
    kind: Literal["step"]
    world_size: _Int1_64 = _NONE
    step: _Int0_64
    loss: _Finite | _NonFinite = _ABSENT
    learning_rate: _Finite = _ABSENT
    gradient_norm: _Finite | _NonFinite = _ABSENT
    gpu_memory_usage: _Percent = _ABSENT
    gpu_memory_allocated_mb: _Measure = _ABSENT
    gpu_memory_reserved_mb: _Measure = _ABSENT
    throughput_tokens_per_sec: _Measure = _ABSENT
    step_time_s: _Measure = _ABSENT
    data_time_s: _Measure = _ABSENT
    compute_time_s: _Measure = _ABSENT
    gpu_utilization: _Percent = _ABSENT
    lr_schedule: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = _NONE
    lr_warmup_steps: _Int0_64 = _NONE
    lr_total_steps: _Int1_64 = _NONE


assert list(_Row.__struct_fields__) == list(StepEvent.model_fields)
_FIELD = {name: i for i, name in enumerate(_Row.__struct_fields__)}
_METRIC_AT = [(name, _FIELD[name]) for name in STEP_METRICS]
_decode_row = msgspec.json.Decoder(_Row).decode
_astuple = msgspec.structs.astuple
_Invalid = (msgspec.ValidationError, msgspec.DecodeError)
_JOB_ID = re.compile(JOB_ID_PATTERN.removesuffix("$") + r"\Z").match


# -- timestamps -----------------------------------------------------------------------------------
# Vectorized: the two forms our writers emit (format_timestamp: with microseconds, or without
# when they are 0), and epoch numbers; what is taken is converted as fromisoformat and
# pydantic convert it. Only instants below 2**53 us (before 2255) are taken, where
# float64(us) / 1e6 equals Python's int / int (epoch is (t - EPOCH).total_seconds()).
# Anything else: schemas._fast._timestamp per row, and where that is unsure, decode.
_LONG = "dddd-dd-ddTdd:dd:dd.ddddddZ"  # d: an ASCII digit
_SHORT = "dddd-dd-ddTdd:dd:ddZ"
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
_MAX_EXACT_US = 2**53
_YEARS = (1970, 2200)


def _positions(form: str) -> tuple[list[int], list[int], npt.NDArray[np.uint32]]:
    digits = [i for i, c in enumerate(form) if c == "d"]
    marks = [i for i, c in enumerate(form) if c != "d"]
    return digits, marks, np.array([[ord(form[i])] for i in marks], dtype=np.uint32)


def _weights() -> Floats:
    # (7, 27): the digits of a timestamp, one per row, to its year, month, day, hour, minute,
    # second and microseconds.
    weights = np.zeros((7, len(_LONG)), dtype=np.float64)
    spans = [(0, 4), (5, 2), (8, 2), (11, 2), (14, 2), (17, 2), (20, 6)]
    for row, (start, count) in enumerate(spans):
        weights[row, start : start + count] = [10.0 ** (count - 1 - k) for k in range(count)]
    return weights


_LONG_AT, _SHORT_AT, _WEIGHTS = _positions(_LONG), _positions(_SHORT), _weights()


def _matches(codes: npt.NDArray[Any], is_digit: Mask, at: tuple[Any, Any, Any]) -> Mask:
    """Columns (timestamps) that have the form: an ASCII digit where it says d, else its
    characters."""
    digits, marks, chars = at
    ok: Mask = np.logical_and.reduce(is_digit[digits], axis=0)
    ok &= np.logical_and.reduce(codes[marks] == chars, axis=0)
    return ok


def _codes(stamps: Sequence[Any], lengths: Ints) -> npt.NDArray[Any]:
    """The characters of the timestamps as a (27, n) array of code points, one column per
    timestamp, NUL-padded (longer strings cut: their length rules them out anyway)."""
    n = len(stamps)
    if (lengths == len(_LONG)).all():  # the common case: one ASCII buffer, no padding
        try:
            text = "".join(stamps).encode("ascii")
        except (UnicodeEncodeError, TypeError):
            pass
        else:
            return np.frombuffer(text, dtype=np.uint8).reshape(n, len(_LONG)).T.copy()
    # A number, if any, becomes a string of no matching length.
    array = np.array(stamps, dtype=f"U{len(_LONG)}").view(np.uint32).reshape(n, len(_LONG))
    return np.ascontiguousarray(array.T)


def _iso_micros(stamps: Sequence[Any], lengths: Ints) -> tuple[Ints, Mask]:
    """Epoch microseconds of ISO timestamps in our writers' two forms, and where that was
    sure; ``lengths``: each string's length (0 for a number)."""
    n = len(stamps)
    long, short = lengths == len(_LONG), lengths == len(_SHORT)
    if not (long.any() or short.any()):
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.bool_)
    codes = _codes(stamps, lengths)
    digits = codes - codes.dtype.type(48)  # unsigned: what is below "0" wraps around
    is_digit = digits < 10
    long &= _matches(codes, is_digit, _LONG_AT)
    if short.any():
        short &= _matches(codes, is_digit, _SHORT_AT)
    ok = long | short
    # Each field a sum of digits times powers of ten: exact in float64 (all below 2**53).
    # Where a row is not digits where it counts, `ok` refuses it, whatever it sums to.
    fields = (_WEIGHTS @ digits.astype(np.float64)).astype(np.int64)
    year, month, day, hour, minute, second, micro = fields
    micro = np.where(long, micro, 0)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    last_day = _DAYS_IN_MONTH[np.where(month_ok, month, 0)] + (leap & (month == 2))
    ok &= month_ok & (day >= 1) & (day <= last_day)
    ok &= (hour <= 23) & (minute <= 59) & (second <= 59)
    ok &= (year >= _YEARS[0]) & (year <= _YEARS[1])
    # Days from the civil date (H. Hinnant's days_from_civil), in integers.
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    micros = (((days * 24 + hour) * 60 + minute) * 60 + second) * 1_000_000 + micro
    return np.where(ok, micros, 0), ok


def _epoch_micros(numbers: Floats) -> tuple[Ints, Mask]:
    """Epoch microseconds of epoch-number timestamps, converted as pydantic-core does: whole
    seconds, then the fraction rounded half up to microseconds (as in _fast._timestamp)."""
    ok = (numbers >= 0.0) & (numbers < 1e10)
    value = np.where(ok, numbers, 0.0)
    seconds = np.floor(value)
    micro = np.floor((value - seconds) * 1_000_000.0 + 0.5)
    ok &= micro < 1_000_000.0
    micros = seconds.astype(np.int64) * 1_000_000 + micro.astype(np.int64)
    ok &= micros < _MAX_EXACT_US
    return np.where(ok, micros, 0), ok


def _as_number(value: Any) -> float:
    # An int converts exactly where it can be taken (below 1e10); -1 is refused.
    if type(value) is float or (type(value) is int and 0 <= value < 10_000_000_000):
        return float(value)
    return -1.0


def _times(stamps: Sequence[Any]) -> tuple[Floats, Ints, Mask]:
    """``(times, micros, ok)`` of a column of wire timestamps (str, int or float); ``ok``
    false where only pydantic can say (the row then goes to ``decode``)."""
    n = len(stamps)
    numbers = None
    try:
        lengths = np.fromiter(map(len, stamps), np.int64, n)  # all strings: the common case
    except TypeError:
        lengths = np.fromiter((len(s) if type(s) is str else 0 for s in stamps), np.int64, n)
        numbers = np.fromiter(map(_as_number, stamps), np.float64, n)
    micros, ok = _iso_micros(stamps, lengths)
    if numbers is not None:
        numeric, numeric_ok = _epoch_micros(numbers)
        micros = np.where(ok, micros, numeric)
        ok |= numeric_ok
    times = micros / 1e6  # as Python's micros / 10**6 (exact division below 2**53)
    if not ok.all():
        for i in np.flatnonzero(~ok).tolist():
            when = _timestamp(stamps[i])
            if when is not None:
                micros[i] = (when - _EPOCH) // _ONE_US
                times[i] = when.timestamp()
                ok[i] = True
    return times, micros, ok


# -- the batch ------------------------------------------------------------------------------------


def decode_batch(messages: Sequence[bytes]) -> DecodedBatch:
    """Decode a batch of wire messages (as :func:`decode` takes them, without ``defaults``);
    each lands where ``decode``'s verdict puts it (see the module's docstring). The step rows,
    ``others`` and ``errors`` are each in input order."""
    n = len(messages)
    rows: list[_Row] = []
    positions: list[int] | None = None  # None: row i is message i
    slow: list[int] = []
    try:
        rows = [_decode_row(message) for message in messages]
    except _Invalid:
        positions = []
        for i, message in enumerate(messages):
            try:
                rows.append(_decode_row(message))
            except _Invalid:
                slow.append(i)
            else:
                positions.append(i)
    index = (
        np.arange(n, dtype=np.int64) if positions is None else np.array(positions, dtype=np.int64)
    )
    if rows and max(map(len, messages)) > MAX_MESSAGE_BYTES:  # decode refuses these unparsed
        big = np.fromiter((len(messages[i]) > MAX_MESSAGE_BYTES for i in index), np.bool_)
        slow.extend(index[big].tolist())
        rows = list(compress(rows, ~big))
        index = index[~big]
    fast, refused = _columns(rows, index)
    slow.extend(refused)
    slow.sort()

    events: list[tuple[int, StepEvent]] = []
    others: list[tuple[int, Event]] = []
    errors: list[tuple[int, EventDecodeError]] = []
    for i in slow:
        try:
            event = decode(messages[i])
        except EventDecodeError as error:
            errors.append((i, error))
            continue
        if isinstance(event, StepEvent) and event.rank <= _INT64_MAX and event.step <= _INT64_MAX:
            events.append((i, event))
        else:
            others.append((i, event))
    steps = _merge(fast, _from_events(events)) if events else fast
    return DecodedBatch(steps, others, errors)


def _columns(rows: list[_Row], index: Ints) -> tuple[StepColumns, list[int]]:
    """The columns of decoded rows, and the positions of those only ``decode`` can judge."""
    n = len(rows)
    if n == 0:
        return _empty(), []
    cols = list(zip(*map(_astuple, rows), strict=True))
    # fromiter: a quarter cheaper than np.array of a tuple (no shape or type to discover).
    ranks = np.fromiter(cols[_FIELD["rank"]], np.int64, n)
    steps = np.fromiter(cols[_FIELD["step"]], np.int64, n)
    times, micros, ok = _times(cols[_FIELD["timestamp"]])

    world_sizes = cols[_FIELD["world_size"]]
    unsaid = world_sizes.count(None)
    if unsaid == 0:  # the model's own check: rank < world_size
        ok &= ranks < np.array(world_sizes, dtype=np.int64)
    elif unsaid < n:
        world = np.array([-1 if w is None else w for w in world_sizes], dtype=np.int64)
        ok &= (world < 0) | (ranks < world)

    job_ids = cols[_FIELD["job_id"]]
    distinct = set(job_ids)
    bad_ids = {job for job in distinct if _JOB_ID(job) is None}
    if bad_ids:
        ok &= np.fromiter((job not in bad_ids for job in job_ids), np.bool_, n)

    metrics: dict[str, tuple[Floats, Mask]] = {}
    for name, at in _METRIC_AT:
        values = np.fromiter(cols[at], np.float64, n)  # "nan", "inf", "-inf" parse as such
        present = values.view(np.uint64) != _ABSENT_BITS
        if present.any():
            values[~present] = np.nan
            metrics[name] = (values, present)

    lists = {name: list(cols[_FIELD[name]]) for name in _LIST_FIELDS}
    # One object per distinct value of the strings and sizes that repeat (the parser makes one
    # per row): the engine holds a big job's step rows by reference to these lists until every
    # rank has caught up (schemas.records.ColumnRow), so a copy per row would be held too.
    if len(distinct) == 1:
        lists["job_id"] = [job_ids[0]] * n
    if unsaid == 0 and len(set(world_sizes)) == 1:
        lists["world_size"] = [world_sizes[0]] * n
    hosts = lists["host"]
    one_of = {host: host for host in hosts}
    lists["host"] = list(map(one_of.__getitem__, hosts))
    refused: list[int] = []
    if not ok.all():
        refused = index[~ok].tolist()
        ranks, steps, times, micros, index = ranks[ok], steps[ok], times[ok], micros[ok], index[ok]
        lists = {name: list(compress(column, ok)) for name, column in lists.items()}
        metrics = {
            name: (values[ok], present[ok])
            for name, (values, present) in metrics.items()
            if present[ok].any()
        }
    return _make(index, ranks, steps, times, micros, lists, metrics, {}), refused


_LIST_FIELDS = (
    "job_id",
    "host",
    "attempt",
    "world_size",
    "phase",
    "lr_schedule",
    "lr_warmup_steps",
    "lr_total_steps",
)


def _make(
    index: Ints,
    ranks: Ints,
    steps: Ints,
    times: Floats,
    micros: Ints,
    lists: Mapping[str, list[Any]],
    metrics: dict[str, tuple[Floats, Mask]],
    rare: dict[int, StepEvent],
) -> StepColumns:
    return StepColumns(
        index=index,
        job_ids=lists["job_id"],
        ranks=ranks,
        steps=steps,
        times=times,
        micros=micros,
        hosts=lists["host"],
        attempts=lists["attempt"],
        world_sizes=lists["world_size"],
        phases=lists["phase"],
        lr_schedules=lists["lr_schedule"],
        lr_warmup_steps=lists["lr_warmup_steps"],
        lr_total_steps=lists["lr_total_steps"],
        metrics=metrics,
        rare=rare,
    )


def _empty() -> StepColumns:
    none_i: Ints = np.zeros(0, dtype=np.int64)
    return _make(none_i, none_i, none_i, np.zeros(0), none_i, {k: [] for k in _LIST_FIELDS}, {}, {})


def _from_events(events: list[tuple[int, StepEvent]]) -> StepColumns:
    """Columns of the step events ``decode`` made (rows kept whole in ``rare``)."""
    just = [e for _, e in events]
    metrics: dict[str, tuple[Floats, Mask]] = {}
    for name in STEP_METRICS:
        got = [getattr(e, name) for e in just]
        present = np.array([v is not None for v in got], dtype=np.bool_)
        if present.any():
            values = np.array([np.nan if v is None else v for v in got], dtype=np.float64)
            metrics[name] = (values, present)
    return _make(
        np.array([i for i, _ in events], dtype=np.int64),
        np.array([e.rank for e in just], dtype=np.int64),
        np.array([e.step for e in just], dtype=np.int64),
        np.array([e.epoch for e in just], dtype=np.float64),
        np.array([(e.timestamp - _EPOCH) // _ONE_US for e in just], dtype=np.int64),
        {name: [getattr(e, name) for e in just] for name in _LIST_FIELDS},
        metrics,
        dict(enumerate(just)),
    )


def _merge(a: StepColumns, b: StepColumns) -> StepColumns:
    """The rows of both, in input order (``b``'s rows keep their ``rare`` events)."""
    if len(a) == 0:
        return b
    order = np.argsort(np.concatenate([a.index, b.index]), kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(len(order))  # the merged row of each row of a, then of b

    def cat(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.concatenate([x, y])[order]

    def cat_list(x: list[Any], y: list[Any]) -> list[Any]:
        both = x + y
        return [both[j] for j in order.tolist()]

    metrics: dict[str, tuple[Floats, Mask]] = {}
    for name in STEP_METRICS:
        ca, cb = a.metrics.get(name), b.metrics.get(name)
        if ca is None and cb is None:
            continue
        va, pa = ca if ca is not None else (np.full(len(a), np.nan), np.zeros(len(a), np.bool_))
        vb, pb = cb if cb is not None else (np.full(len(b), np.nan), np.zeros(len(b), np.bool_))
        metrics[name] = (cat(va, vb), cat(pa, pb))
    lists = {
        "job_id": cat_list(a.job_ids, b.job_ids),
        "host": cat_list(a.hosts, b.hosts),
        "attempt": cat_list(a.attempts, b.attempts),
        "world_size": cat_list(a.world_sizes, b.world_sizes),
        "phase": cat_list(a.phases, b.phases),
        "lr_schedule": cat_list(a.lr_schedules, b.lr_schedules),
        "lr_warmup_steps": cat_list(a.lr_warmup_steps, b.lr_warmup_steps),
        "lr_total_steps": cat_list(a.lr_total_steps, b.lr_total_steps),
    }
    rare = {int(where[k]): event for k, event in a.rare.items()}
    rare.update((int(where[len(a) + k]), event) for k, event in b.rare.items())
    return _make(
        cat(a.index, b.index),
        cat(a.ranks, b.ranks),
        cat(a.steps, b.steps),
        cat(a.times, b.times),
        cat(a.micros, b.micros),
        lists,
        metrics,
        rare,
    )
