"""The fast path (``schemas._fast``) gives pydantic's verdict on every input: the same event
(==, the same fields set, the same unknown fields, the same wire form) or no answer at all,
in which case pydantic decides (``decode``) with its own message. Generated valid and
nearly-valid events, on the bytes path (``decode_known``) and the parsed-dict path
(``check_step``/``check_log`` + ``build``)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rankwatch.schemas import EventDecodeError, LogEvent, StepEvent, decode, encode
from rankwatch.schemas._fast import build, check_log, check_step, decode_known


def fast(data: bytes) -> StepEvent | LogEvent | None:
    """The fast path as a decoder would chain it: bytes, else the parsed dict, else None."""
    event = decode_known(data)
    if event is not None:
        return event
    try:
        # msgspec's parser, not orjson: orjson reads ints past 64 bits as floats (an unknown
        # field's value would differ from pydantic's; found by this test)
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("kind") not in ("step", "log"):
        return None
    model, check = (StepEvent, check_step) if obj["kind"] == "step" else (LogEvent, check_log)
    checked = check(obj)
    return None if checked is None else build(model, checked)


_INTS = st.one_of(
    st.integers(-3, 300),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2**53, 2**53 + 1, 2**63 - 1, 2**64 - 1, 2**64]),
)
_FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1.0, 120.0),
    st.sampled_from([0.0, -0.0, 100.0, 100.00000000000001, 1e308, -1e-320, 5e-324]),
)
_NON_FINITE = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "+inf", "Infinity", "-Infinity", "INF", " nan", "1.5", ""]
)
_TEXT = st.text(max_size=12)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _INTS,
    _FLOATS,
    _TEXT,
    _NON_FINITE,
    st.lists(st.integers(), max_size=2),
)
_ISO = st.one_of(
    st.datetimes(timezones=st.none()).map(lambda d: d.isoformat() + "Z"),
    st.datetimes(timezones=st.none()).map(lambda d: d.isoformat() + "+00:00"),
    st.datetimes(timezones=st.none()).map(lambda d: d.isoformat(timespec="milliseconds") + "Z"),
    st.sampled_from(
        [
            "2025-04-05T10:23:15Z",
            "2025-04-05T10:23:15.1Z",
            "2025-04-05T10:23:15.1234567Z",
            "2025-04-05T18:23:15+08:00",
            "2025-04-05T10:23:15",
            "2025-04-05 10:23:15Z",
            "2025-04-05t10:23:15z",
            "2025-02-30T10:23:15Z",
            "2025-04-05T24:00:00Z",
            "2025-04-05T23:59:60Z",
            "0001-01-01T00:00:00Z",
            "1743848595",
            "yesterday",
        ]
    ),
)
_TIMESTAMPS = st.one_of(
    _ISO,
    st.integers(-10, 3 * 10**10),
    st.floats(-10.0, 3e10),
    st.floats(0.0, 2e9).map(lambda x: round(x, 7)),
    st.sampled_from([0, 0.0, 1743848595.25, 1743848595.0000005, 1e10, 2e10, 2e10 + 1]),
    st.booleans(),
)

_STEP_VALID: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.integers(1, 3),
    "job_id": st.from_regex(r"\A[A-Za-z0-9._:-]{1,20}\Z"),
    "rank": st.integers(0, 600),
    "host": st.one_of(st.none(), _TEXT),
    "timestamp": st.datetimes(timezones=st.none()).map(lambda d: d.isoformat() + "Z"),
    "attempt": st.one_of(st.none(), st.integers(0, 5)),
    "phase": st.sampled_from([None, "train", "eval", "checkpoint"]),
    "world_size": st.one_of(st.none(), st.integers(512, 1024)),
    "step": st.integers(0, 10**9),
    "loss": st.one_of(st.none(), _FLOATS, st.sampled_from(["nan", "inf", "-inf"])),
    "learning_rate": st.one_of(st.none(), _FLOATS),
    "gradient_norm": st.one_of(st.none(), st.floats(0, 10), st.integers(0, 10)),
    "gpu_memory_usage": st.one_of(st.none(), st.floats(0, 100), st.integers(0, 100)),
    "gpu_memory_allocated_mb": st.floats(0, 1e6),
    "gpu_memory_reserved_mb": st.floats(0, 1e6),
    "throughput_tokens_per_sec": st.one_of(st.floats(0, 1e7), st.integers(0, 10**7)),
    "step_time_s": st.floats(0, 100),
    "data_time_s": st.floats(0, 100),
    "compute_time_s": st.floats(0, 100),
    "gpu_utilization": st.one_of(st.none(), st.floats(0, 100)),
    "lr_schedule": st.one_of(st.none(), st.text(min_size=0, max_size=70)),
    "lr_warmup_steps": st.one_of(st.none(), st.integers(0, 1000)),
    "lr_total_steps": st.one_of(st.none(), st.integers(0, 10**6)),
}
_LOG_VALID: dict[str, st.SearchStrategy[Any]] = {
    **{k: _STEP_VALID[k] for k in ("schema_version", "job_id", "rank", "host", "timestamp")},
    **{k: _STEP_VALID[k] for k in ("attempt", "phase")},
    "level": st.sampled_from(["INFO", "warn", " Error ", "FATAL", "debug", "LOUD", "Warning"]),
    "message": st.text(max_size=40),
    "logger": st.one_of(st.none(), _TEXT),
    "step": st.one_of(st.none(), st.integers(0, 10**6)),
    "lifecycle": st.sampled_from([None, "ended", "exception", "stuck", "terminated", "dead"]),
}
_REQUIRED = {
    "step": ("job_id", "rank", "step", "timestamp"),
    "log": ("job_id", "rank", "timestamp", "level", "message"),
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid-looking event, then a few of its fields broken, dropped or added."""
    kind = draw(st.sampled_from(["step", "log"]))
    fields = _STEP_VALID if kind == "step" else _LOG_VALID
    names = [n for n in fields if n in _REQUIRED[kind] or draw(st.booleans())]
    obj: dict[str, Any] = {} if draw(st.integers(0, 9)) == 0 else {"kind": kind}
    for name in draw(st.permutations(names)):
        obj[name] = draw(fields[name])
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["wrong", "drop", "extra", "timestamp", "kind"]))
        if action == "wrong":
            obj[draw(st.sampled_from(list(fields)))] = draw(_SCALARS)
        elif action == "drop" and obj:
            obj.pop(draw(st.sampled_from(sorted(obj))))
        elif action == "extra":
            obj[draw(st.sampled_from(["mfu", "tags", "Rank", "level", "_x", "ü"]))] = draw(
                st.one_of(_SCALARS, st.dictionaries(_TEXT, _SCALARS, max_size=2))
            )
        elif action == "timestamp":
            obj["timestamp"] = draw(_TIMESTAMPS)
        else:
            obj["kind"] = draw(st.sampled_from(["step", "log", "alert", None, 1, "STEP"]))
    return obj


def _wire(obj: dict[str, Any], draw_style: int) -> bytes:
    if draw_style == 0:
        return orjson.dumps(obj)  # as our writers do: the bytes path
    if draw_style == 1:
        return json.dumps(obj).encode()  # spaces, bare NaN: the dict path
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _verdict(fn: Any, data: bytes) -> Any:
    try:
        return fn(data)
    except EventDecodeError as error:
        return ("rejected", str(error), error.problems)


def _form(event: Any) -> Any:
    try:
        return encode(event)
    except TypeError:  # ints past 64 bits (json.loads reads them): orjson writes none
        return event.model_dump()


def assert_same_event(fast: Any, slow: Any) -> None:
    assert type(fast) is type(slow)
    # NaN != NaN: the wire form and the fields say the rest
    assert fast == slow or _form(fast) == _form(slow)
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_extra == slow.model_extra or _form(fast) == _form(slow)
    assert [k for k in fast.__dict__ if k != "epoch"] == [k for k in slow.__dict__ if k != "epoch"]
    assert _form(fast) == _form(slow)
    assert fast.epoch == slow.epoch and fast.timestamp == slow.timestamp
    assert fast.timestamp.utcoffset() == slow.timestamp.utcoffset()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=events(), style=st.integers(0, 2))
@example(obj={"kind": "step", "job_id": "j", "rank": 0, "step": 1, "timestamp": 0}, style=0)
@example(obj={"kind": "step", "job_id": "j\n", "rank": 0, "step": 1, "timestamp": 0}, style=0)
@example(obj={"kind": "step", "job_id": "j", "rank": 5, "world_size": 5, "step": 1,
              "timestamp": 0}, style=0)  # fmt: skip
@example(obj={"kind": "log", "job_id": "j", "rank": 0, "timestamp": 1743848595.0000005,
              "level": "warn", "message": "m"}, style=0)  # fmt: skip
# A field holding 2**64: pydantic's JSON parse makes a float of it, json.loads an int.
@example(obj={"kind": "step", "job_id": "0", "rank": 0, "timestamp": 0, "step": 1,
              "mfu": {"": 2**64}}, style=1)  # fmt: skip
@example(obj={"kind": "log", "job_id": "0", "rank": 0, "timestamp": "2000-01-01T00:00:00Z",
              "level": "INFO", "message": "", "schema_version": 2**64}, style=1)  # fmt: skip
@example(obj={"kind": "step", "job_id": "0", "rank": 0, "timestamp": 0, "step": 2**63},
         style=2)  # fmt: skip
def test_decode_gives_pydantic_verdict(obj: dict[str, Any], style: int) -> None:
    try:
        data = _wire(obj, style)
    except (TypeError, ValueError, OverflowError):  # orjson: ints past 64 bits
        assume(False)
        return
    answer, verdict = fast(data), _verdict(decode, data)
    if answer is not None:  # the fast path answers only when sure, and then as pydantic does
        assert not isinstance(verdict, tuple), verdict
        assert_same_event(answer, verdict)


@settings(max_examples=600, deadline=None)
@given(obj=events())
def test_checks_over_the_parsed_mapping_agree_with_the_models(obj: dict[str, Any]) -> None:
    try:
        orjson.dumps(obj)  # what a parser can give: no ints past 64 bits
    except TypeError:
        assume(False)
    for check, model in ((check_step, StepEvent), (check_log, LogEvent)):
        checked = check(obj)
        if checked is None:
            continue
        assert "kind" not in obj or obj["kind"] == model.model_fields["kind"].default
        assert_same_event(build(model, checked), model.model_validate(obj))


@pytest.mark.parametrize(
    "data",
    [
        b'{"kind":"step","job_id":"j","rank":0,"step":1,"timestamp":0,"rank":2}',  # dup key
        b'{"kind":"step","job_id":"j","rank":0,"step":1,"timestamp":0,"host":"\\ud800"}',
        b'{"kind":"step","job_id":"j","rank":0,"step":1,"timestamp":0,"loss":1e400}',
        b'{"kind":"step","job_id":"j","rank":0,"step":1,"timestamp":"2025-04-05T10:23:15.5Z"}',
        b'{"kind":"log","job_id":"j","rank":0,"timestamp":0,"level":"warn","message":"\xc3\xa9"}',
        b'{"kind":"step","job_id":"j","rank":0,"step":1,"timestamp":0,"x":{"kind":"log"}}',
        b' {"kind":"step","job_id":"j","rank":0,"step":1,"timestamp":0} ',
    ],
)
def test_edge_spellings(data: bytes) -> None:
    answer, verdict = fast(data), _verdict(decode, data)
    if answer is not None:
        assert not isinstance(verdict, tuple), verdict
        assert_same_event(answer, verdict)


def test_writer_output_takes_the_bytes_path() -> None:
    # Not a timing: the common case must not fall back, or the fast path is dead code.
    event = StepEvent(job_id="j", rank=3, world_size=8, step=2, timestamp=1.5, loss=0.5)
    log = LogEvent(job_id="j", rank=0, timestamp=0, level="INFO", message="m", step=1)
    for e in (event, log):
        assert decode_known(encode(e)) == e == decode(encode(e))
