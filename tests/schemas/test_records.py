"""``records`` gives, for step rows of decoded columns, records that read like ``decode``'s
StepEvent of the same message: every field a rule reads equal and of the same type (NaN as
NaN, ``epoch`` bit for bit), and every other attribute (``timestamp``, ``extra``, ...) exactly
the event's. Differential, on the batches that ``test_columns`` generates (our writers' lines,
their mutations, hypothesis's step shapes) and on step lines with every optional field varied.
"""

from __future__ import annotations

import math
import random
import struct
import subprocess
import sys
import types
import warnings
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_columns import _MESSAGES, _SIM, _SIM_STEPS, _batches, _mutate

from rankwatch import schemas
from rankwatch.schemas import STEP_METRICS, StepEvent, decode
from rankwatch.schemas.columns import StepColumns, decode_batch
from rankwatch.schemas.records import FROM_EVENT, StepRecord, records

#: What rules read: every field of StepEvent but `timestamp` (read as `epoch`), and `epoch`.
_READ = [name for name in StepEvent.model_fields if name != "timestamp"] + ["epoch"]
#: Read from the full StepEvent: FROM_EVENT (timestamp, extra, model_dump, ...) and __dict__.
_FALLBACK = [*FROM_EVENT, "__dict__"]


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _same(got: Any, want: Any) -> bool:
    """Equal, of the same type; NaN equals NaN, other floats bit for bit; a bound method is
    the same function (bound to each one's own event)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, float):
        return (math.isnan(got) and math.isnan(want)) or _bits(got) == _bits(want)
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    if isinstance(want, types.MethodType):
        return got.__func__ is want.__func__ and type(got.__self__) is type(want.__self__)
    return bool(got == want)


def assert_reads_as(record: Any, event: StepEvent) -> None:
    """``record`` reads like ``event``: the same values, of the same types, for every field a
    rule reads and for every attribute read from the event."""
    for name in _READ:
        got, want = getattr(record, name), getattr(event, name)
        assert _same(got, want), (name, got, want)
    assert _bits(record.epoch) == _bits(event.epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic's deprecated ones (model_fields, dict, ...)
        for name in _FALLBACK:
            got, want = getattr(record, name), getattr(event, name)
            if name == "__dict__":  # epoch: cached in it once read, on either
                got = {k: v for k, v in got.items() if k != "epoch"}
                want = {k: v for k, v in want.items() if k != "epoch"}
            assert _same(got, want), (name, got, want)
    # JSON: NaN == NaN there, and a UTC timestamp is the same whatever its tzinfo object
    assert record.model_dump_json() == event.model_dump_json()


def assert_records_read_as_decoded(
    messages: list[bytes], cols: StepColumns, rows: list[int]
) -> int:
    """Every record of ``rows`` reads as ``decode`` of its message; returns how many of them
    were StepRecords (not rare rows' events)."""
    made = records(cols, rows)
    assert len(made) == len(rows)
    fast = 0
    for row, record in zip(rows, made, strict=True):
        event = decode(messages[int(cols.index[row])])
        assert isinstance(event, StepEvent)
        if row in cols.rare:
            assert record is cols.rare[row]
        else:
            assert type(record) is StepRecord
            fast += 1
        assert_reads_as(record, event)
    return fast


# -- step lines with every optional field varied ----------------------------------------------------

_BASE = orjson.loads(_SIM_STEPS[0])
_METRIC_VALUES: list[Any] = [0.0, -0.0, 1.5, 3, 1e308, 5e-324, "nan", "inf", "-inf", 99.5, 100]


def _varied(rng: random.Random) -> bytes:
    """A step line as our writers emit it, optional fields and metrics present or not, NaN and
    inf where the contract takes them, some with an unknown field (a rare row)."""
    obj: dict[str, Any] = {k: v for k, v in _BASE.items() if k not in STEP_METRICS}
    obj["rank"] = rng.randrange(8)
    obj["step"] = rng.randrange(10**6)
    obj["timestamp"] = rng.choice(
        [
            f"2026-0{rng.randrange(1, 10)}-1{rng.randrange(10)}T0{rng.randrange(10)}:00:00Z",
            f"2026-01-01T00:00:{rng.randrange(60):02}.{rng.randrange(10**6):06}Z",
            rng.uniform(0, 2e9),
            rng.randrange(2 * 10**9),
        ]
    )
    optional: list[tuple[str, list[Any]]] = [
        ("host", [None, "node-1", "gpu-ü"]),
        ("attempt", [None, 0, 2]),
        ("phase", [None, "train", "eval", "checkpoint"]),
        ("world_size", [None, 8, 1024]),
        ("lr_schedule", [None, "cosine", "my-own"]),
        ("lr_warmup_steps", [None, 0, 100]),
        ("lr_total_steps", [None, 1, 10_000]),
    ]
    for name, values in optional:
        value = rng.choice(values)
        if value is None:
            obj.pop(name, None)
        else:
            obj[name] = value
    for name in STEP_METRICS:
        if rng.random() < 0.6:
            value = rng.choice(_METRIC_VALUES)
            if isinstance(value, str) and name not in ("loss", "gradient_norm"):
                value = rng.random()  # only those two take NaN and inf
            if name in ("gpu_memory_usage", "gpu_utilization") and not 0 <= float(value) <= 100:
                value = 50
            obj[name] = value
    if rng.random() < 0.05:
        obj["mfu"] = 0.41
    return orjson.dumps(obj)


@pytest.mark.parametrize("seed", range(3))
def test_varied_step_lines_read_as_decoded(seed: int) -> None:
    rng = random.Random(seed)
    messages = [_varied(rng) for _ in range(600)]
    cols = decode_batch(messages).steps
    assert len(cols) == len(messages) and cols.rare  # every one a step row, a few rare
    fast = assert_records_read_as_decoded(messages, cols, list(range(len(cols))))
    assert fast > 500
    # a random subset, in any order, some rows twice; and as a numpy array
    rows = [rng.randrange(len(cols)) for _ in range(300)]
    assert_records_read_as_decoded(messages, cols, rows)
    as_array = records(cols, np.array(rows, dtype=np.int64))
    assert [r.epoch for r in as_array] == [cols.event(i).epoch for i in rows]


@pytest.mark.parametrize("seed", range(2))
def test_mixed_batches_read_as_decoded(seed: int) -> None:
    """test_columns's mixed batches: our writers' lines, mutated, logs and alerts among them."""
    rng = random.Random(seed)
    messages = [
        _mutate(rng, rng.choice(_SIM_STEPS)) if rng.random() < 0.5 else rng.choice(_SIM)
        for _ in range(1000)
    ]
    fast = rare = 0
    for part in _batches(rng, messages):
        cols = decode_batch(part).steps
        fast += assert_records_read_as_decoded(part, cols, list(range(len(cols))))
        rare += len(cols.rare)
        if len(cols) > 1:
            rows = rng.sample(range(len(cols)), rng.randrange(1, len(cols)))
            assert_records_read_as_decoded(part, cols, rows)
    assert fast > 400 and rare > 10, (fast, rare)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(_MESSAGES, min_size=20, max_size=100), data=st.data())
def test_generated_batches_read_as_decoded(messages: list[bytes], data: st.DataObject) -> None:
    cols = decode_batch(messages).steps
    assert_records_read_as_decoded(messages, cols, list(range(len(cols))))
    if len(cols):
        rows = data.draw(st.lists(st.integers(0, len(cols) - 1), max_size=len(cols)))
        assert_records_read_as_decoded(messages, cols, rows)


# -- the record itself -------------------------------------------------------------------------


def test_fallback_builds_the_event_once() -> None:
    cols = decode_batch(_SIM_STEPS[:3]).steps
    record = records(cols, [1])[0]
    assert isinstance(record, StepRecord)
    assert record._source is cols  # nothing built yet
    stamp = record.timestamp
    event = record._source
    assert isinstance(event, StepEvent) and event.timestamp is stamp
    assert record.as_event() is event and record.extra == {} and vars(record) is event.__dict__
    assert record._source is event  # kept, not built again
    assert record.model_dump()["step"] == record.step
    assert {"timestamp", "extra", "model_dump", "model_extra"} <= set(FROM_EVENT)
    with pytest.raises(AttributeError):
        _ = record.no_such_field  # as the StepEvent has none
    with pytest.raises(AttributeError):
        record.loss = 1.0  # frozen, as the StepEvent is


def test_slot_reads_stay_fast() -> None:
    # A __getattr__ (or __getattribute__) on the class would slow every read of a slot about
    # sixfold (no specialized attribute access): the fallbacks are properties instead.
    for cls in StepRecord.__mro__:
        assert ("__getattr__" not in vars(cls) and "__getattribute__" not in vars(cls)) or (
            cls is object
        )


def test_record_values_are_plain_python() -> None:
    cols = decode_batch(_SIM_STEPS).steps
    for record in records(cols, np.arange(len(cols))):
        assert isinstance(record, StepRecord)
        for name in _READ:
            value = getattr(record, name)
            assert value is None or type(value) in (int, float, str), (name, type(value))


def test_edges() -> None:
    cols = decode_batch(_SIM_STEPS[:5]).steps
    assert records(cols, []) == [] and records(cols, np.zeros(0, dtype=np.int64)) == []
    [one] = records(cols, [4])
    assert_reads_as(one, cols.event(4))
    assert repr(one) == f"StepRecord(job_id={one.job_id!r}, rank={one.rank}, step={one.step})"
    for bad in ([5], [-1], [0, 7]):
        with pytest.raises(IndexError):
            records(cols, bad)
    empty = decode_batch([]).steps
    assert records(empty, []) == []


def test_exported_and_numpy_free() -> None:
    assert schemas.StepRecord is StepRecord
    code = "import sys, rankwatch.schemas; assert 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_given_is_what_the_event_was_given() -> None:
    """What a snapshot stores of a held record: the fields its message set, as decode's
    event has them, without the event being built."""
    messages = [
        orjson.dumps({"schema_version": 1, "kind": "step", "job_id": "j", "rank": r, "step": 3,
                      "timestamp": 1_700_000_000.25 + r, "loss": 2.5, "world_size": 4,
                      **({"attempt": 1, "host": "h"} if r % 2 else {"gradient_norm": "nan"})})
        for r in range(4)
    ]  # fmt: skip
    cols = decode_batch(messages).steps
    assert not cols.rare
    for record, message in zip(records(cols, range(4)), messages, strict=True):
        event = decode(message)
        got = record.given()
        assert record._source is not event  # no StepEvent built for it
        assert got.keys() == event.model_fields_set
        assert repr({k: getattr(event, k) for k in got}).replace("TzInfo(0)", "UTC") == repr(
            got
        ).replace("datetime.timezone.utc", "UTC")


# -- ColumnRow: a held row by reference -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(2))
def test_column_rows_read_as_decoded(seed: int) -> None:
    """A ColumnRow reads as decode's event of its message, every field and every attribute
    read from the event, as a record does; what a snapshot stores of it is its record's."""
    from rankwatch.schemas.records import ColumnRow

    rng = random.Random(100 + seed)
    messages = [_varied(rng) for _ in range(300)]
    cols = decode_batch(messages).steps
    rows = [i for i in range(len(cols)) if i not in cols.rare]
    assert len(rows) > 250
    for i in rows:
        event = decode(messages[int(cols.index[i])])
        assert isinstance(event, StepEvent)
        assert_reads_as(ColumnRow(cols, i), event)
        assert _same(ColumnRow(cols, i).given(), records(cols, [i])[0].given())  # type: ignore[union-attr]


def test_a_column_row_builds_its_record_only_for_what_the_columns_do_not_hold() -> None:
    from rankwatch.schemas.records import ColumnRow

    cols = decode_batch([_SIM_STEPS[0], _SIM_STEPS[1]]).steps
    row = ColumnRow(cols, 1)
    event = decode(_SIM_STEPS[1])
    assert isinstance(event, StepEvent)
    read = (row.job_id, row.rank, row.step, row.epoch, row.host, row.world_size, row.attempt)
    assert read == (event.job_id, event.rank, event.step, event.epoch, event.host,
                    event.world_size, event.attempt)  # fmt: skip
    assert row.lr_schedule == event.lr_schedule and row.phase == event.phase
    assert _same(row.loss, event.loss) and _same(row.learning_rate, event.learning_rate)
    assert row._made is None  # none of those built the record
    assert row.timestamp == event.timestamp  # this one does
    made = row._made
    assert type(made) is StepRecord and row.record() is made  # built once, then kept
    with pytest.raises(AttributeError):
        row.__reduce_ex_not_a_name__  # noqa: B018 (an unknown dunder is no event attribute)
    assert repr(row) == f"ColumnRow(job_id={event.job_id!r}, rank={event.rank}, step={event.step})"


def test_build_records_gives_rows_their_records_in_bulk() -> None:
    """Rows of two batches, some with a record already: each gets its own record (the one
    records() makes of its row), one records() call per batch; a built one is kept."""
    from rankwatch.schemas.records import ColumnRow, build_records

    first = decode_batch(list(_SIM_STEPS[:6])).steps
    second = decode_batch(list(_SIM_STEPS[6:12])).steps
    rows = [ColumnRow(first, i) for i in (4, 0, 2)] + [ColumnRow(second, i) for i in (1, 5)]
    kept = rows[1].record()
    build_records(rows)
    assert rows[1]._made is kept
    for row in rows:
        made = row._made
        assert type(made) is StepRecord and made._row == row._row and made._source is row._source
        assert made.given() == records(row._source, [row._row])[0].given()  # type: ignore[arg-type, union-attr]
