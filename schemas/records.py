"""Step rows of decoded columns as records that read like :class:`StepEvent`, made in bulk.

The engine takes step events as columns (:class:`~rankwatch.schemas.columns.StepColumns`) but
still hands the job-level rules one event-like object per step. A pydantic ``StepEvent`` per
row costs most of what ``decode`` costs; a :class:`StepRecord` holds the same values as plain
Python values, and :func:`records` makes them for many rows at once from each column's
``tolist()``.

A record reads like the ``StepEvent`` that ``decode`` makes of the same message: every field a
rule reads (the ids, ``epoch``, the metrics, the LR declaration, ``kind``, ``schema_version``)
is a slot or class attribute holding an int, float, str or ``None``, equal to the event's and
of the same type. Every other attribute of a ``StepEvent`` (``timestamp``, ``extra``,
``model_dump``, ``__dict__``, ...; see :data:`FROM_EVENT`) is read from the event itself
(:meth:`StepRecord.as_event`), built from the columns on first use and kept. That costs about
what ``decode`` does, once per record. What differs: a record is not an instance of
``StepEvent``; ``==`` on records is identity (``StepEvent`` compares fields); the object
protocols (``iter``, ``copy``, pickling) are the record's own; a record keeps its columns alive
until it has built its event.

This module imports no numpy (``rankwatch.schemas`` exports :class:`StepRecord`, and producers
need no numpy); :func:`records` works on the arrays that ``StepColumns`` already holds.

>>> from rankwatch.schemas.columns import decode_batch
>>> cols = decode_batch([
...     b'{"schema_version":1,"job_id":"j","rank":1,"timestamp":"2025-04-05T10:23:15.250000Z",'
...     b'"kind":"step","world_size":2,"step":7,"loss":"nan"}',
... ]).steps
>>> [record] = records(cols, [0])
>>> record
StepRecord(job_id='j', rank=1, step=7)
>>> record.epoch, record.loss, record.learning_rate, record.kind
(1743848595.25, nan, None, 'step')
>>> record.timestamp.isoformat()  # not a slot: read from the StepEvent
'2025-04-05T10:23:15.250000+00:00'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import msgspec

from rankwatch.schemas.events import STEP_METRICS, Phase, StepEvent

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from rankwatch.schemas.columns import StepColumns

__all__ = ["FROM_EVENT", "ColumnRow", "StepRecord", "build_records", "records"]


# A msgspec Struct is a __slots__ class whose constructor is C code: building 1,000 records
# this way costs about a third of a Python __init__ storing the same slots. gc=False: a record
# refers to its columns and later its StepEvent, never to itself or another record, so it
# can be in no cycle; untracked, a batch of records does not push the collector to run.
# eq=False: equality is identity (comparing fields would compare the columns too).
class StepRecord(msgspec.Struct, frozen=True, eq=False, gc=False):
    """One step row, read like the ``StepEvent`` that ``decode`` makes of its message.

    The slots hold what rules read, as plain Python values; every other attribute of a
    ``StepEvent`` is read from that event (:meth:`as_event`), built from the columns on first
    use and kept. Made by :func:`records`.
    """

    job_id: str
    rank: int
    host: str | None
    #: Event time as epoch seconds, bit for bit ``StepEvent.epoch``.
    epoch: float
    attempt: int | None
    phase: Phase | None
    world_size: int | None
    step: int
    loss: float | None
    learning_rate: float | None
    gradient_norm: float | None
    gpu_memory_usage: float | None
    gpu_memory_allocated_mb: float | None
    gpu_memory_reserved_mb: float | None
    throughput_tokens_per_sec: float | None
    step_time_s: float | None
    data_time_s: float | None
    compute_time_s: float | None
    gpu_utilization: float | None
    lr_schedule: str | None
    lr_warmup_steps: int | None
    lr_total_steps: int | None
    # The StepColumns the record came from, replaced by its StepEvent once one is built.
    # (Typed object: msgspec resolves the annotations at run time, where StepColumns, and
    # numpy with it, is not imported.)
    _source: object
    _row: int

    # Every row of the columns' fast route is a step of schema version 1 (others are `rare`).
    kind: ClassVar[Literal["step"]] = "step"
    schema_version: ClassVar[int] = 1

    def as_event(self) -> StepEvent:
        """The ``StepEvent`` that ``decode`` makes of the record's message (built from the
        columns once, then kept)."""
        source = self._source
        if isinstance(source, StepEvent):
            return source
        event = cast("StepColumns", source).event(self._row)
        _force_setattr(self, "_source", event)
        return event

    def given(self) -> dict[str, Any]:
        """The fields its message gave, by name, as ``StepEvent.model_construct`` takes them
        back (what a snapshot stores of a held step), without building the ``StepEvent``: a
        row of the fast route said exactly its non-null fields."""
        source = self._source
        if isinstance(source, StepEvent):
            values = source.__dict__
            return {name: values[name] for name in source.model_fields_set}
        micros = int(cast("StepColumns", source).micros[self._row])
        out: dict[str, Any] = {
            "schema_version": 1,
            "kind": "step",
            "timestamp": _EPOCH + timedelta(microseconds=micros),
        }
        for name in _GIVEN:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        """The event's ``__dict__`` (a record has none: slots; code reads a StepEvent's)."""
        return self.as_event().__dict__

    def __repr__(self) -> str:
        return f"StepRecord(job_id={self.job_id!r}, rank={self.rank}, step={self.step})"

    if TYPE_CHECKING:
        # For the type checker only: the attributes read from the StepEvent (set below).
        def __getattr__(self, name: str) -> Any: ...


# The slots are StepEvent's fields in its order, less `timestamp` (read as `epoch`, the rest
# from the event) and the two constants; the metrics are STEP_METRICS in order.
assert StepRecord.__struct_fields__[:-2] == tuple(
    "epoch" if name == "timestamp" else name
    for name in StepEvent.model_fields
    if name not in ("schema_version", "kind")
)
assert StepRecord.__struct_fields__[8 : 8 + len(STEP_METRICS)] == STEP_METRICS

_force_setattr = msgspec.structs.force_setattr
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The slots that are fields of the event (``epoch`` is ``timestamp``'s, in seconds).
_GIVEN = tuple(name for name in StepRecord.__struct_fields__[:-2] if name != "epoch")


# Every other attribute of a StepEvent is a property that reads it from the record's event. Not
# a __getattr__: a class with one loses CPython's fast path for slot reads (a rule's read of
# `rank` or `loss` costs 31 ns instead of 5, as much as on a StepEvent). Dunder names are left
# out (the object protocols: copying, iterating, pydantic's own class machinery, which would
# then take a record for a model), except the event's instance data, which code may read.
_INSTANCE_DUNDERS = (
    "__fields_set__",
    "__pydantic_extra__",
    "__pydantic_fields_set__",
    "__pydantic_private__",
)


def _from_event(name: str) -> property:
    def read(record: StepRecord) -> Any:
        return getattr(record.as_event(), name)

    read.__name__ = name
    return property(read, doc=f"``StepEvent.{name}`` of the record's event.")


FROM_EVENT: tuple[str, ...] = tuple(
    sorted(
        name
        for name in {*dir(StepEvent), *StepEvent.model_fields}
        if (not name.startswith("__") or name in _INSTANCE_DUNDERS)
        and name != "_abc_impl"  # the ABC registry's data, read from classes only
        and not any(name in vars(c) for c in StepRecord.__mro__)  # not the record's own
    )
)
"""The attributes a record reads from its ``StepEvent``: every attribute of the event but
its slots, ``kind``, ``schema_version`` and dunder names (those of instance data excepted)."""
for _name in FROM_EVENT:
    setattr(StepRecord, _name, _from_event(_name))
del _name


class ColumnRow(msgspec.Struct, frozen=True, eq=False, gc=False):
    """A step row held by reference to its columns: what the engine holds of a big job's
    common step until every rank has caught up with it (``streams/ordering.py``).

    A :class:`StepRecord` boxes each of the row's values at once; a held row's values are
    read again only in the rare cases (a release too small for frames, a rule without a frame
    path, a snapshot). So a ``ColumnRow`` is two references, made for a whole batch in one
    ``map``. The ids, ``epoch``, ``rank``, ``step``, the declarations and the metrics read
    straight from the columns (a rule may read a few of every row); any other attribute
    builds the row's :class:`StepRecord` (:meth:`record`, once, then kept) and reads it
    there. The same values, of the same types, either way. It keeps its columns alive, as a
    record does.

    >>> from rankwatch.schemas.columns import decode_batch
    >>> cols = decode_batch([
    ...     b'{"schema_version":1,"job_id":"j","rank":1,"timestamp":"2025-04-05T10:23:15Z",'
    ...     b'"kind":"step","step":7,"loss":2.5}',
    ... ]).steps
    >>> row = ColumnRow(cols, 0)
    >>> row.job_id, row.rank, row.step, row.epoch, row.loss, row.learning_rate
    ('j', 1, 7, 1743848595.0, 2.5, None)
    """

    _source: object  # StepColumns (typed object for msgspec, as in StepRecord)
    _row: int
    _made: object = None  # the StepRecord, once built

    kind: ClassVar[Literal["step"]] = "step"
    schema_version: ClassVar[int] = 1

    @property
    def rank(self) -> int:
        return int(cast("StepColumns", self._source).ranks[self._row])

    @property
    def step(self) -> int:
        return int(cast("StepColumns", self._source).steps[self._row])

    @property
    def epoch(self) -> float:
        return float(cast("StepColumns", self._source).times[self._row])

    def record(self) -> StepRecord | StepEvent:
        """The row's :class:`StepRecord` (built on first use, then kept)."""
        made = self._made
        if made is None:
            made = records(cast("StepColumns", self._source), [self._row])[0]
            _force_setattr(self, "_made", made)
        return cast("StepRecord | StepEvent", made)

    def as_event(self) -> StepEvent:
        """The ``StepEvent`` that ``decode`` makes of the row's message."""
        made = self.record()
        return made if isinstance(made, StepEvent) else made.as_event()

    def given(self) -> dict[str, Any]:
        """As :meth:`StepRecord.given`: the fields the message gave (what a snapshot stores)."""
        made = self.record()
        if isinstance(made, StepEvent):
            values = made.__dict__
            return {name: values[name] for name in made.model_fields_set}
        return made.given()

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        """The event's ``__dict__``, as :attr:`StepRecord.__dict__`."""
        return self.as_event().__dict__

    def __getattr__(self, name: str) -> Any:
        # Only what is not a slot or property of the row: the object protocols' dunder names
        # are not the event's (copying or pickling a row must not build its record).
        if name.startswith("__") and name not in _INSTANCE_DUNDERS:
            raise AttributeError(name)
        return getattr(self.record(), name)

    def __repr__(self) -> str:
        return f"ColumnRow(job_id={self.job_id!r}, rank={self.rank}, step={self.step})"


def build_records(rows: Iterable[ColumnRow]) -> None:
    """Give every row that has none its :class:`StepRecord`, built in bulk (one
    :func:`records` call per columns object, not one per row): before reading many rows'
    values, as a snapshot of held steps does (:meth:`ColumnRow.given`)."""
    groups: dict[int, tuple[StepColumns, list[ColumnRow]]] = {}
    for row in rows:
        if row._made is None:
            source = cast("StepColumns", row._source)
            group = groups.get(id(source))
            if group is None:
                group = groups[id(source)] = (source, [])
            group[1].append(row)
    for source, members in groups.values():
        for row, made in zip(members, records(source, [r._row for r in members]), strict=True):
            _force_setattr(row, "_made", made)


def _listed(name: str, column: str) -> property:
    def read(row: ColumnRow) -> Any:
        return getattr(row._source, column)[row._row]

    read.__name__ = name
    return property(read, doc=f"``StepEvent.{name}`` of the row, from its columns.")


# The fields a StepColumns holds as lists: read from there as they are (no conversion).
for _name, _column in (
    ("job_id", "job_ids"),
    ("host", "hosts"),
    ("attempt", "attempts"),
    ("phase", "phases"),
    ("world_size", "world_sizes"),
    ("lr_schedule", "lr_schedules"),
    ("lr_warmup_steps", "lr_warmup_steps"),
    ("lr_total_steps", "lr_total_steps"),
):
    setattr(ColumnRow, _name, _listed(_name, _column))
del _name, _column


def _metric(name: str) -> property:
    def read(row: ColumnRow) -> float | None:
        column = cast("StepColumns", row._source).metrics.get(name)
        if column is None or not column[1][row._row]:
            return None
        return float(column[0][row._row])  # the same double as the record's tolist()

    read.__name__ = name
    return property(read, doc=f"``StepEvent.{name}`` of the row, from its columns.")


# The metrics, read from their columns too: a rule that reads a few of every held row (a row
# by row path) costs two numpy reads each, not a record built per row.
for _name in STEP_METRICS:
    setattr(ColumnRow, _name, _metric(_name))
del _name

#: The held rows that read from their columns (as origins() gathers them).
_FROM_COLUMNS = (StepRecord, ColumnRow)


def origins(events: Sequence[Any]) -> tuple[list[tuple[StepColumns, Any, Any]], list[int]]:
    """Where a list of events' values are: ``(columns, positions in events, rows of those
    columns)`` (index lists or arrays) for the records still reading from their columns, one
    entry per columns object in order of first appearance, and the positions of every other
    event (a ``StepEvent``, or a record whose event was built). How a frame gathers a metric
    of released records with one numpy take per batch rather than an attribute read per row."""
    if all(type(e) in _FROM_COLUMNS for e in events):
        # The common case, in bulk: rows of a few batches, no record with its event built.
        sources = [e._source for e in events]
        by_id = dict(zip(map(id, sources), sources, strict=True))
        if not any(isinstance(source, StepEvent) for source in by_id.values()):
            rows = [e._row for e in events]
            if len(by_id) == 1:
                return [(cast("StepColumns", sources[0]), list(range(len(events))), rows)], []
            import numpy as np  # only here, as in records()

            order = {key: k for k, key in enumerate(by_id)}
            which = np.fromiter(map(order.__getitem__, map(id, sources)), np.intp, len(sources))
            at = np.array(rows, dtype=np.intp)
            out: list[tuple[StepColumns, Any, Any]] = []
            for k, source in enumerate(by_id.values()):
                positions = np.flatnonzero(which == k)
                out.append((cast("StepColumns", source), positions, at[positions]))
            return out, []
    groups: dict[int, tuple[StepColumns, Any, Any]] = {}
    rest: list[int] = []
    for i, e in enumerate(events):
        source = getattr(e, "_source", None) if type(e) in _FROM_COLUMNS else None
        if source is None or isinstance(source, StepEvent):
            rest.append(i)
            continue
        group = groups.get(id(source))
        if group is None:
            group = groups[id(source)] = (source, [], [])
        group[1].append(i)
        group[2].append(e._row)
    return list(groups.values()), rest


def records(
    columns: StepColumns, rows: Sequence[int] | npt.NDArray[np.integer[Any]]
) -> list[StepRecord | StepEvent]:
    """The records of the given rows of ``columns`` (indices ``0 <= i < len(columns)``, in any
    order), one per index; a row of ``columns.rare`` is its ``StepEvent`` itself (it reads the
    same). Built column by column, with no numpy indexing per row."""
    index: list[int] = rows.tolist() if hasattr(rows, "tolist") else [int(i) for i in rows]
    n = len(columns)
    if not index:
        return []
    if min(index) < 0 or max(index) >= n:
        raise IndexError(f"row indices must be in [0, {n}): {min(index)}..{max(index)}")
    whole = len(index) == n and index == list(range(n))
    take: Any = None
    pick: Any = None
    if not whole:
        import numpy as np  # only here: the module itself stays numpy-free (see above)

        take = np.array(index, dtype=np.intp)
        pick = itemgetter(*index) if len(index) > 1 else lambda column: (column[index[0]],)

    def array(values: npt.NDArray[Any]) -> list[Any]:
        return (values if take is None else values[take]).tolist()  # type: ignore[no-any-return]

    def listed(column: list[Any]) -> Iterable[Any]:
        return column if pick is None else pick(column)

    def metric(name: str) -> Iterable[float | None]:
        column = columns.metrics.get(name)
        if column is None:
            return repeat(None)
        values, present = column
        if take is not None:
            values, present = values[take], present[take]
        if present.all():
            return values.tolist()  # type: ignore[no-any-return]
        if not present.any():
            return repeat(None)
        boxed = values.astype(object)  # Python floats, NaN payloads and -0.0 kept
        boxed[~present] = None
        return boxed.tolist()  # type: ignore[no-any-return]

    # map over the columns: one constructor call per row, each value one positional argument.
    made: list[StepRecord | StepEvent] = list(
        map(
            StepRecord,
            listed(columns.job_ids),
            array(columns.ranks),
            listed(columns.hosts),
            array(columns.times),
            listed(columns.attempts),
            listed(columns.phases),
            listed(columns.world_sizes),
            array(columns.steps),
            *map(metric, STEP_METRICS),
            listed(columns.lr_schedules),
            listed(columns.lr_warmup_steps),
            listed(columns.lr_total_steps),
            repeat(columns),
            index,
        )
    )
    rare = columns.rare
    if rare:
        if whole:
            for i, event in rare.items():
                made[i] = event
        else:
            made = [rare.get(i, record) for i, record in zip(index, made, strict=True)]
    return made
