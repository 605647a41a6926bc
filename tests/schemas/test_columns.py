"""``decode_batch`` gives ``decode``'s verdict on every message of a batch: a row whose values
are those of ``decode``'s StepEvent (field for field, times bit for bit), or ``others`` holding
exactly ``decode``'s event, or ``errors`` with ``decode``'s error. Differential, on generated
batches of random sizes: valid events of every shape, nearly-valid ones (the fast-path test's
generator), our writers' lines broken in every way we could think of, logs and alerts mixed in.
"""

from __future__ import annotations

import json
import math
import random
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_decode_fast_path import _STEP_VALID, _wire, assert_same_event, events

from rankwatch import producers
from rankwatch.producers import _global
from rankwatch.producers.testing import capture_events
from rankwatch.schemas import (
    MAX_MESSAGE_BYTES,
    STEP_METRICS,
    Alert,
    EventDecodeError,
    LogEvent,
    StepEvent,
    decode,
    encode,
)
from rankwatch.schemas.columns import DecodedBatch, StepColumns, decode_batch
from rankwatch.simulate import JobSpec, simulate
from rankwatch.simulate.scenarios import SCENARIOS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_MAX = 2**63 - 1


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _same_float(a: float, b: float) -> bool:
    # bit for bit, except that any NaN is a NaN
    return (math.isnan(a) and math.isnan(b)) or _bits(a) == _bits(b)


def assert_row_is(cols: StepColumns, row: int, event: StepEvent) -> None:
    """Row ``row`` of the columns holds exactly ``event``'s values."""
    assert cols.job_ids[row] == event.job_id
    assert int(cols.ranks[row]) == event.rank and int(cols.steps[row]) == event.step
    assert _bits(float(cols.times[row])) == _bits(event.epoch)
    assert int(cols.micros[row]) == (event.timestamp - _EPOCH) // timedelta(microseconds=1)
    for column, name in [
        (cols.hosts, "host"),
        (cols.attempts, "attempt"),
        (cols.world_sizes, "world_size"),
        (cols.phases, "phase"),
        (cols.lr_schedules, "lr_schedule"),
        (cols.lr_warmup_steps, "lr_warmup_steps"),
        (cols.lr_total_steps, "lr_total_steps"),
    ]:
        value = getattr(event, name)
        assert column[row] == value and type(column[row]) is type(value), name
    for name in STEP_METRICS:
        value = getattr(event, name)
        column = cols.metric(name)
        if value is None:
            assert column is None or not column[1][row], name
        else:
            assert column is not None and column[1][row], name
            assert _same_float(float(column[0][row]), value), (name, column[0][row], value)
    assert_same_event(cols.event(row), event)
    if row in cols.rare:
        assert cols.rare[row].model_extra == event.model_extra


def _verdict(message: bytes) -> Any:
    try:
        return decode(message)
    except EventDecodeError as error:
        return error


def assert_same_verdicts(messages: list[bytes], batch: DecodedBatch) -> None:
    cols = batch.steps
    n = len(cols)
    assert len(cols.ranks) == len(cols.steps) == len(cols.times) == len(cols.micros) == n
    for column in (cols.job_ids, cols.hosts, cols.attempts, cols.world_sizes, cols.phases):
        assert len(column) == n
    for column in (cols.lr_schedules, cols.lr_warmup_steps, cols.lr_total_steps):
        assert len(column) == n
    for name, (values, present) in cols.metrics.items():
        assert name in STEP_METRICS and len(values) == len(present) == n and present.any()
        assert np.isnan(values[~present]).all()
    assert all(0 <= row < n for row in cols.rare)
    rows = {int(i): row for row, i in enumerate(cols.index.tolist())}
    others, errors = dict(batch.others), dict(batch.errors)
    assert cols.index.tolist() == sorted(rows), "rows in input order"
    assert [i for i, _ in batch.others] == sorted(others)
    assert [i for i, _ in batch.errors] == sorted(errors)
    assert len(rows) + len(others) + len(errors) == len(messages)
    for i, message in enumerate(messages):
        expected = _verdict(message)
        if isinstance(expected, EventDecodeError):
            assert i in errors, (message, str(expected))
            assert str(errors[i]) == str(expected) and errors[i].problems == expected.problems
        elif isinstance(expected, StepEvent) and max(expected.rank, expected.step) <= _INT64_MAX:
            assert i in rows, (message, expected)
            assert_row_is(cols, rows[i], expected)
        else:
            assert i in others, (message, expected)
            got = others[i]
            if isinstance(expected, StepEvent):  # a rank or step past int64
                assert_same_event(got, expected)
            else:
                assert type(got) is type(expected) and got == expected
                assert got.model_fields_set == expected.model_fields_set
                assert got.model_extra == expected.model_extra


# -- what our writers emit ------------------------------------------------------------------------

_SPEC = JobSpec(job_id="cols", ranks=6, steps=40, seed=3)
_SIM = [
    encode(e)
    for e in simulate(
        _SPEC,
        [SCENARIOS["nan_loss"](at_step=30), SCENARIOS["gradient_explosion"](at_step=20, rank=2)],
    )
]
_SIM_STEPS = [line for line in _SIM if b'"kind":"step"' in line]
_SIM_LOGS = [line for line in _SIM if b'"kind":"log"' in line]
_ALERT = encode(
    Alert(
        alert_id="a1",
        job_id="cols",
        rule="loss_explosion",
        severity="critical",
        scope="job",
        first_seen=_EPOCH,
        last_seen=_EPOCH,
        summary="loss is NaN",
        evidence={"loss": float("nan")},
    )
)


def test_simulator_lines_land_as_rows_on_the_fast_route() -> None:
    assert any(b'"loss":"nan"' in line for line in _SIM_STEPS)  # the NaN losses are in
    batch = decode_batch(_SIM)
    assert_same_verdicts(_SIM, batch)
    assert len(batch.steps) == len(_SIM_STEPS) and not batch.errors
    assert not batch.steps.rare  # none of them needed decode
    assert [type(e) for _, e in batch.others] == [LogEvent] * len(_SIM_LOGS)
    loss, present = batch.steps.metrics["loss"]
    assert present.all() and np.isnan(loss).any()


def test_producer_lines_land_as_rows() -> None:
    with capture_events(job_id="train-1", rank=3, world_size=8, host="gpu-7") as captured:
        producers.log_step(0, loss=2.5, learning_rate=1e-4, gradient_norm=float("inf"))
        producers.log_step(1, loss=float("nan"), step_time_s=0.5, gpu_utilization=97)
        producers.declare_lr_schedule("cosine", warmup_steps=10, total_steps=1000)
        with producers.phase("eval"):
            producers.log_step(2, data_time_s=0.01)
        producers.log_step(3, loss=1.0, mfu=0.41)  # an unknown keyword: an extra field
        producer = _global.current()
        assert producer is not None
        producer.log_step(4, timestamp=1_767_225_600.0000005, loss=-0.0)
        producer.log("INFO", "hello")
    lines = [encode(e) for e in captured]
    steps = [i for i, e in enumerate(captured) if isinstance(e, StepEvent)]
    assert len(steps) == 5 and len(lines) > 5  # the log records of the phase, and "hello"
    batch = decode_batch(lines)
    assert_same_verdicts(lines, batch)
    assert batch.steps.index.tolist() == steps and len(batch.others) == len(lines) - 5
    assert list(batch.steps.rare) == [3]  # the extra field: kept whole, reachable
    assert batch.steps.event(3).extra == {"mfu": 0.41}
    assert batch.steps.phases[2] == "eval" and batch.steps.lr_schedules[2:] == ["cosine"] * 3


def test_empty_batch() -> None:
    batch = decode_batch([])
    assert len(batch.steps) == 0 and batch.others == [] and batch.errors == []
    assert batch.steps.metrics == {} and batch.steps.times.dtype == np.float64


# -- broken and rare spellings of our writers' lines ---------------------------------------------

_TIMESTAMPS: list[Any] = [
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00.000001Z",
    "2024-02-29T23:59:59.999999Z",
    "2025-02-29T00:00:00Z",
    "2000-02-29T12:00:00Z",
    "1900-02-29T12:00:00Z",
    "2100-02-28T12:00:00.5Z",
    "2100-02-29T12:00:00Z",
    "2200-02-29T12:00:00.000000Z",
    "2024-02-30T12:00:00Z",
    "1970-01-01T00:00:00.000000Z",
    "1969-12-31T23:59:59.999999Z",
    "2200-12-31T23:59:59.999999Z",
    "2201-01-01T00:00:00.000000Z",
    "2255-06-05T23:47:34.740991Z",
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "2026-00-10T00:00:00Z",
    "2026-13-10T00:00:00Z",
    "2026-04-31T00:00:00Z",
    "2026-04-00T00:00:00Z",
    "2026-04-10T24:00:00Z",
    "2026-04-10T23:60:00Z",
    "2026-04-10T23:59:60Z",
    "2026-04-10T23:59:60.000000Z",
    "2026-04-10T10:00:00.123Z",
    "2026-04-10T10:00:00+00:00",
    "2026-04-10T10:00:00.123456+00:00",
    "2026-04-10T10:00:00.123456+02:00",
    "2026-04-10T10:00:00.1234567Z",
    "2026-04-10T10:00:00.123456z",
    "2026-04-10 10:00:00.123456Z",
    "2026-04-10T10:00:00.123456",
    "2026-04-10T10:00:00Z\x00",
    "2026-04-10T10:00:00.123456Z\x00",
    "2026-04-10T10:00:00\x00\x00\x00\x00\x00\x00\x00Z",
    "２０２６-04-10T10:00:00Z",  # noqa: RUF001 (full-width digits: \\d matches them)
    "2026-04-10T10:00:0５Z",  # noqa: RUF001
    "1767225600",
    "",
    "x" * 27,
    "x" * 300,
    0,
    0.0,
    -1,
    -0.0,
    1,
    1_767_225_600,
    1_767_225_600.25,
    1_767_225_600.0000005,
    1_767_225_600.0000015,
    1_767_225_600.9999996,
    5e-07,  # exactly half a microsecond as pydantic computes it: rounded up, not to even
    2.5e-06,
    1.0022065,
    1_767_225_600.0078125,
    1_767_225_600.0390625,
    0.9999995,
    0.9999996,
    9_007_199_254.740991,
    9_007_199_254.740992,
    9_999_999_999,
    9_999_999_999.9999995,
    10_000_000_000,
    2e10,
    2e10 + 1,
    1e300,
    2**63,
    2**70,
    True,
    None,
    [],
    {},
]
_BROKEN_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    1,
    2**63 - 1,
    2**63,
    2**64,
    2**70,
    1.0,
    1.5,
    -0.0,
    1e308,
    -1e308,
    101,
    "nan",
    "NaN",
    "inf",
    "-inf",
    "+inf",
    "Infinity",
    "1.5",
    "",
    "x",
    "x" * 65,
    "train",
    "eval",
    "predict",
    "step",
    "log",
    [],
    {},
    [1],
]
_FIELDS = [
    "schema_version",
    "job_id",
    "rank",
    "host",
    "timestamp",
    "attempt",
    "phase",
    "kind",
    "world_size",
    "step",
    *STEP_METRICS,
    "lr_schedule",
    "lr_warmup_steps",
    "lr_total_steps",
    "mfu",
    "level",
    "message",
    "alert_id",
]


def _mutate(rng: random.Random, line: bytes) -> bytes:
    """One of our writers' lines, changed in one way (some keep it valid)."""
    how = rng.randrange(16)
    obj = orjson.loads(line)
    if how == 0:
        obj[rng.choice(_FIELDS)] = rng.choice(_BROKEN_VALUES)
    elif how == 1:
        obj.pop(rng.choice(sorted(obj)), None)
    elif how == 2:
        obj["timestamp"] = rng.choice(_TIMESTAMPS)
    elif how == 3:
        cut = rng.randrange(len(line))
        return line[:cut]
    elif how == 4:
        at = rng.randrange(len(line))
        return line[:at] + rng.choice([b"\xff", b"\xc3", b"\x00", b"\n", b" ", b"}"]) + line[at:]
    elif how == 5:
        obj["rank"] = rng.choice([0, 5, 6, 7, 2**62, _INT64_MAX, 2**63, 2**64 - 1])
        obj["world_size"] = rng.choice([None, 1, 6, 7, _INT64_MAX, 2**63])
    elif how == 6:
        obj["step"] = rng.choice([0, _INT64_MAX, 2**63, 2**64 - 1, 2**64, -1])
    elif how == 7:
        obj["loss"] = rng.choice([float("nan"), float("inf"), float("-inf"), 1e400])
        return json.dumps(obj).encode()  # bare NaN tokens: only the stdlib parser reads them
    elif how == 8:
        obj[rng.choice(["mfu", "tags", "Rank", "_x", "ü"])] = rng.choice(_BROKEN_VALUES)
    elif how == 9:
        obj["schema_version"] = rng.choice([1, 2, 0, 1.0, True, "1"])
    elif how == 10:
        obj.pop("kind")
    elif how == 11:
        return rng.choice([b" ", b"\n", b"\t"]) + line + rng.choice([b"", b" ", b"\n"])
    elif how == 12:
        return json.dumps(obj, indent=rng.choice([None, 1])).encode()
    elif how == 13:
        key = rng.choice([b'"rank":', b'"kind":', b'"loss":', b'"step":'])
        return line[:-1] + b"," + key + rng.choice([b"1", b'"step"', b'"log"', b"null"]) + b"}"
    elif how == 14:
        obj["job_id"] = rng.choice(["j\n", "", "a" * 128, "a" * 129, "ü", "a b", "ok.id:1-2"])
    else:
        return rng.choice(
            [b"", b"null", b"[]", b"[1]", b"1", b'"x"', b"{}", b"{", _ALERT, b"\xff\xfe", b"NaN"]
        )
    try:
        return orjson.dumps(obj)
    except TypeError:  # ints past 64 bits: the stdlib writes them
        return json.dumps(obj).encode()


def _batches(rng: random.Random, messages: list[bytes]) -> list[list[bytes]]:
    out, start = [], 0
    while start < len(messages):
        size = rng.choice([1, 2, 3, rng.randrange(1, 40), rng.randrange(1, 400)])
        out.append(messages[start : start + size])
        start += size
    return out


@pytest.mark.parametrize("seed", range(3))
def test_mixed_batches_give_decodes_verdict(seed: int) -> None:
    rng = random.Random(seed)
    messages = []
    for _ in range(1500):
        pick = rng.random()
        if pick < 0.45:
            messages.append(rng.choice(_SIM_STEPS))  # most stay fast
        elif pick < 0.55:
            messages.append(rng.choice(_SIM_LOGS))
        elif pick < 0.57:
            messages.append(_ALERT)
        else:
            messages.append(_mutate(rng, rng.choice(_SIM_STEPS)))
    seen = {"rows": 0, "rare": 0, "others": 0, "errors": 0}
    for batch_messages in _batches(rng, messages):
        batch = decode_batch(batch_messages)
        assert_same_verdicts(batch_messages, batch)
        seen["rows"] += len(batch.steps)
        seen["rare"] += len(batch.steps.rare)
        seen["others"] += len(batch.others)
        seen["errors"] += len(batch.errors)
    # every outcome happened, the fast route included (or the test proves little)
    assert seen["rows"] - seen["rare"] > 600 and seen["rare"] > 20, seen
    assert seen["others"] > 100 and seen["errors"] > 100, seen


def test_timestamps_every_form() -> None:
    base = orjson.loads(_SIM_STEPS[0])
    messages = []
    for stamp in _TIMESTAMPS:
        messages.append(orjson.dumps({**base, "timestamp": stamp}) if stamp != 2**70 else b"x")
    messages += [orjson.dumps({**base, "timestamp": s}) for s in (0, 1, 2.5, 1e9)]  # all numbers
    for batch in ([messages], [[m] for m in messages], [messages[-4:]]):
        for part in batch:
            assert_same_verdicts(part, decode_batch(part))


def test_oversized_message_is_refused_as_decode_refuses_it() -> None:
    base = orjson.loads(_SIM_STEPS[0])
    big = orjson.dumps({**base, "host": "h" * MAX_MESSAGE_BYTES})
    messages = [_SIM_STEPS[1], big, _SIM_STEPS[2]]
    batch = decode_batch(messages)
    assert_same_verdicts(messages, batch)
    assert [i for i, _ in batch.errors] == [1]


# -- the fast-path test's generator: valid and nearly-valid events of every shape ----------------


def _wire_or_skip(obj: dict[str, Any], style: int) -> bytes:
    try:
        return _wire(obj, style)
    except (TypeError, ValueError, OverflowError):  # orjson: ints past 64 bits
        return json.dumps(obj).encode()


@st.composite
def step_shapes(draw: st.DrawFn) -> dict[str, Any]:
    """A step event as our writers emit it (kind and schema_version said), with any subset of
    the optional fields, their values mostly valid (ints for floats, edge values, nulls)."""
    obj: dict[str, Any] = {"schema_version": 1}
    for name, values in _STEP_VALID.items():
        if name in ("job_id", "rank", "step", "timestamp") or draw(st.booleans()):
            obj[name] = draw(values)
    obj["schema_version"] = draw(st.sampled_from([1, 1, 1, 2]))
    obj["kind"] = "step"
    if draw(st.integers(0, 3)) == 0:
        obj["timestamp"] = draw(_STAMPS)
    return obj


# Any digits in our writers' two forms: invalid dates and times too (Feb 29 of 2100, hour 24).
_FIELD_DIGITS = st.tuples(
    st.integers(1965, 2210),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 24),
    st.integers(0, 60),
    st.integers(0, 60),
    st.one_of(st.none(), st.integers(0, 999_999)),
)
_STAMPS = st.one_of(
    _FIELD_DIGITS.map(
        lambda t: (
            f"{t[0]:04}-{t[1]:02}-{t[2]:02}T{t[3]:02}:{t[4]:02}:{t[5]:02}"
            + ("Z" if t[6] is None else f".{t[6]:06}Z")
        )
    ),
    st.datetimes(datetime(1960, 1, 1), datetime(2300, 1, 1)).map(
        lambda d: d.isoformat(timespec=("seconds", "microseconds")[d.microsecond % 2]) + "Z"
    ),
    st.integers(-10, 10**10 + 10),
    st.floats(-1.0, 1.1e10),
    st.floats(0.0, 2e9).map(lambda x: round(x, 7)),
    st.integers(0, 2**38).map(lambda k: k / 128),  # odd k: exactly half a microsecond
    st.integers(0, 10**6).map(lambda k: 1_767_225_600 + (k + 0.5) / 1e6),
    st.sampled_from(_TIMESTAMPS),
)
_MESSAGES = st.one_of(
    st.builds(_wire_or_skip, events(), st.integers(0, 2)),
    st.builds(_wire_or_skip, step_shapes(), st.just(0)),
    st.sampled_from(_SIM_STEPS),
    st.sampled_from([*_SIM_LOGS[:20], _ALERT]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(_MESSAGES, min_size=20, max_size=100))
def test_generated_batches_give_decodes_verdict(messages: list[bytes]) -> None:
    assert_same_verdicts(messages, decode_batch(messages))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stamps=st.lists(_STAMPS, min_size=20, max_size=100))
def test_generated_timestamps_convert_as_decode_converts_them(stamps: list[Any]) -> None:
    base = orjson.loads(_SIM_STEPS[0])
    messages = [_wire_or_skip({**base, "timestamp": stamp}, 0) for stamp in stamps]
    assert_same_verdicts(messages, decode_batch(messages))


def test_repeated_ids_hosts_and_sizes_are_one_object_each() -> None:
    """A batch's job id, hosts and world size are held once per distinct value, not once per
    row (held rows keep their batch's lists alive), with the values decode gives."""
    lines = [
        orjson.dumps({"schema_version": 1, "kind": "step", "job_id": "job-a", "rank": r,
                      "step": 1, "timestamp": 1_700_000_000 + r, "world_size": 64,
                      **({"host": f"node-{r // 8}"} if r % 5 else {})})
        for r in range(64)
    ]  # fmt: skip
    cols = decode_batch(lines).steps
    assert len(cols) == 64
    assert len({id(j) for j in cols.job_ids}) == 1
    assert len({id(w) for w in cols.world_sizes}) == 1
    assert len({id(h) for h in cols.hosts}) == len(set(cols.hosts))
    for i, line in enumerate(lines):
        event = decode(line)
        assert (cols.job_ids[i], cols.hosts[i], cols.world_sizes[i]) == (
            event.job_id, event.host, event.world_size)  # fmt: skip
