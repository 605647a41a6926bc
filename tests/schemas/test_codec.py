"""Round-trips of the wire contract (CONTRACT.md): every field, every spelling, every error."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import orjson
import pytest

from rankwatch.schemas import (
    MAX_MESSAGE_BYTES,
    Alert,
    EventDecodeError,
    LogEvent,
    StepEvent,
    alert_id_for,
    decode,
    encode,
)

STEP = {
    "kind": "step",
    "job_id": "llama-70b.run:7_a-b",
    "rank": 7,
    "world_size": 256,
    "host": "node-3",
    "step": 1200,
    "timestamp": "2025-04-05T10:23:15Z",
    "loss": 2.15,
    "learning_rate": 1.5e-5,
    "gradient_norm": 0.42,
    "gpu_memory_usage": 87.3,
    "gpu_memory_allocated_mb": 51234.5,
    "gpu_memory_reserved_mb": 60000.0,
    "throughput_tokens_per_sec": 78400.0,
    "step_time_s": 1.02,
    "data_time_s": 0.01,
    "compute_time_s": 0.81,
}
LOG = {
    "kind": "log",
    "job_id": "j1",
    "rank": 3,
    "host": "node-0",
    "timestamp": 1743848595.5,
    "level": "ERROR",
    "message": 'Traceback (most recent call last):\n  File "train.py"\ntorch.OutOfMemoryError: CUDA out of memory.',
    "logger": "torch.distributed",
    "step": 12,
}
ALERT = {
    "kind": "alert",
    "alert_id": alert_id_for("j1", "cuda_oom", 3, 12),
    "job_id": "j1",
    "rule": "cuda_oom",
    "severity": "critical",
    "scope": "rank",
    "ranks": [3],
    "step": 12,
    "first_seen": "2025-04-05T10:23:15Z",
    "last_seen": "2025-04-05T10:23:16Z",
    "summary": "rank 3: CUDA out of memory at step 12",
    "evidence": {"tried_gib": 2.0, "loss": float("nan")},
    "action": "pause_job",
    "status": "firing",
}


def wire(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode()  # stdlib: writes NaN bare, like many trainers do


@pytest.mark.parametrize("payload", [STEP, LOG, ALERT], ids=["step", "log", "alert"])
def test_every_field_round_trips(payload: dict[str, object]) -> None:
    event = decode(wire(payload))
    again = decode(encode(event))
    assert again == event or (  # NaN != NaN: compare the wire form instead
        encode(again) == encode(event)
    )
    for key, value in payload.items():
        if key in ("timestamp", "first_seen", "last_seen", "evidence"):
            continue
        assert getattr(event, key) == value, key


def test_all_step_fields_of_the_contract_exist() -> None:
    # The metric names are a public interface: a rename breaks every producer.
    assert set(STEP) - {"kind"} <= set(StepEvent.model_fields)


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ('"nan"', "nan"),
        ('"NaN"', "nan"),
        ('"NAN"', "nan"),
        ('"inf"', "inf"),
        ('"Inf"', "inf"),
        ('"Infinity"', "inf"),
        ('"+inf"', "inf"),
        ('"-inf"', "-inf"),
        ('"-Infinity"', "-inf"),
        ('"-INFINITY"', "-inf"),
        ("NaN", "nan"),
        ("Infinity", "inf"),
        ("-Infinity", "-inf"),
    ],
)
@pytest.mark.parametrize("field", ["loss", "gradient_norm"])
def test_non_finite_floats_survive_the_wire(spelling: str, expected: str, field: str) -> None:
    raw = f'{{"kind":"step","job_id":"j","rank":0,"step":1,"timestamp":0,"{field}":{spelling}}}'
    event = decode(raw.encode())
    value = getattr(event, field)
    assert not math.isfinite(value)
    assert repr(value) == expected
    # Our writers emit the lower-case strings, never null (orjson's default for NaN).
    assert orjson.loads(encode(event))[field] == expected


def test_non_finite_in_alert_evidence_is_written_as_string() -> None:
    alert = decode(wire(ALERT))
    assert orjson.loads(encode(alert))["evidence"]["loss"] == "nan"


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ('"2025-04-05T10:23:15Z"', "2025-04-05T10:23:15Z"),
        ('"2025-04-05T18:23:15+08:00"', "2025-04-05T10:23:15Z"),
        ('"2025-04-05T10:23:15.250+00:00"', "2025-04-05T10:23:15.250000Z"),
        ("1743848595", "2025-04-05T10:23:15Z"),
        ("1743848595.25", "2025-04-05T10:23:15.250000Z"),
    ],
)
def test_both_timestamp_forms_are_stored_as_utc(timestamp: str, expected: str) -> None:
    raw = '{"kind":"log","job_id":"j","rank":0,"timestamp":%s,"level":"INFO","message":"m"}'
    event = decode((raw % timestamp).encode())
    assert event.timestamp.tzinfo is not None and event.timestamp.utcoffset().total_seconds() == 0
    assert orjson.loads(encode(event))["timestamp"] == expected


def test_unknown_fields_are_kept_and_written_back() -> None:
    payload = {**STEP, "mfu": 0.41, "tags": {"team": "pretrain", "lr": "nan"}}
    event = decode(wire(payload))
    assert event.extra == {"mfu": 0.41, "tags": {"team": "pretrain", "lr": "nan"}}
    assert orjson.loads(encode(event))["mfu"] == 0.41


def test_future_schema_version_is_accepted_when_it_parses() -> None:
    event = decode(wire({**STEP, "schema_version": 7, "new_field": [1, 2]}))
    assert event.schema_version == 7
    assert event.extra["new_field"] == [1, 2]


@pytest.mark.parametrize(
    ("alias", "level"),
    [
        ("warn", "WARNING"),
        ("WARN", "WARNING"),
        ("Fatal", "CRITICAL"),
        ("error", "ERROR"),
        ("critical", "CRITICAL"),
        ("debug", "DEBUG"),
        ("Info", "INFO"),
        ("warning", "WARNING"),
    ],
)
def test_levels_in_any_case_and_aliases(alias: str, level: str) -> None:
    assert decode(wire({**LOG, "level": alias})).level == level


def test_seeds_style_step_log_replays_with_a_default_job_id() -> None:
    # A trainer's structured per-step log (docs/CONTRACT.md, Encoding) has neither kind nor job_id.
    line = (
        b'{"step": 1200, "loss": 2.15, "learning_rate": 1.5e-5, "gpu_memory_usage": 87.3,'
        b' "gradient_norm": 0.42, "throughput_tokens_per_sec": 78400,'
        b' "timestamp": "2025-04-05T10:23:15Z", "rank": 7}'
    )
    event = decode(line, defaults={"job_id": "j-20250405"})
    assert isinstance(event, StepEvent)
    assert (event.job_id, event.rank, event.step) == ("j-20250405", 7, 1200)


REQUIRED = {
    "step": ["job_id", "rank", "step", "timestamp"],
    "log": ["job_id", "rank", "timestamp", "level", "message"],
    "alert": [
        "alert_id",
        "job_id",
        "rule",
        "severity",
        "scope",
        "first_seen",
        "last_seen",
        "summary",
    ],
}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (p, f)
        for p, kind in ((STEP, "step"), (LOG, "log"), (ALERT, "alert"))
        for f in REQUIRED[kind]
    ],
)
def test_every_required_field_missing_is_named(payload: dict[str, object], field: str) -> None:
    broken = {k: v for k, v in payload.items() if k != field}
    with pytest.raises(EventDecodeError) as info:
        decode(wire(broken))
    assert str(info.value) == f"{field}: missing required field"
    assert info.value.problems[0].field == field


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rank": "7"}, "rank: Input should be a valid integer (got '7')"),
        ({"rank": 7.5}, "rank: Input should be a valid integer (got 7.5)"),
        ({"rank": True}, "rank: Input should be a valid integer (got True)"),
        ({"rank": -1}, "rank: Input should be greater than or equal to 0 (got -1)"),
        ({"step": -3}, "step: Input should be greater than or equal to 0 (got -3)"),
        # Every reader holds 64 bits: a step of 10**29 was accepted, then stopped the worker
        # at its next snapshot (the state format holds 64 bits too).
        ({"step": 10**29}, "step: Input should be a valid integer (got 1e+29)"),
        (
            {"step": 2**63 + 5},
            "step: Input should be less than or equal to 9223372036854775807 "
            "(got 9223372036854775813)",
        ),
        (
            {"rank": 2**63, "world_size": None},
            "rank: Input should be less than or equal to 9223372036854775807",
        ),
        ({"rank": 300}, "rank 300 is not below world_size 256"),
        ({"world_size": 0}, "world_size: Input should be greater than or equal to 1 (got 0)"),
        ({"job_id": ""}, "job_id: String should match pattern '^[A-Za-z0-9._:-]{1,128}$' (got '')"),
        (
            {"job_id": "a/b"},
            "job_id: String should match pattern '^[A-Za-z0-9._:-]{1,128}$' (got 'a/b')",
        ),
        ({"job_id": "x" * 129}, "job_id: String should match pattern"),
        ({"job_id": 5}, "job_id: Input should be a valid string (got 5)"),
        (
            {"loss": "lots"},
            "loss: Input should be a valid number, unable to parse string as a number (got 'lots')",
        ),
        ({"loss": [1]}, "loss: Input should be a valid number (got [1])"),
        (
            {"gpu_memory_usage": 120},
            "gpu_memory_usage: Input should be less than or equal to 100 (got 120)",
        ),
        (
            {"gpu_memory_usage": "nan"},
            "gpu_memory_usage: Input should be a finite number (got 'nan')",
        ),
        (
            {"step_time_s": -1.0},
            "step_time_s: Input should be greater than or equal to 0 (got -1.0)",
        ),
        ({"timestamp": "yesterday"}, "timestamp: Input should be a valid datetime"),
        (
            {"timestamp": "2025-04-05T10:23:15"},
            "timestamp: Input should have timezone info (got '2025-04-05T10:23:15')",
        ),
        ({"kind": "metrics"}, "kind: unknown kind 'metrics' (expected one of step, log, alert)"),
        (
            {"schema_version": 0},
            "schema_version: Input should be greater than or equal to 1 (got 0)",
        ),
    ],
)
def test_wrong_values_name_field_and_problem(change: dict[str, object], message: str) -> None:
    with pytest.raises(EventDecodeError) as info:
        decode(wire({**STEP, **change}))
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"kind":"step","job_id":', "not valid JSON"),
        (b"\xff\xfe{}", "message is not valid UTF-8"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"step"', "expected a JSON object, got str"),
        (b"{}", "kind: missing required field"),
        (b"", "not valid JSON"),
    ],
)
def test_garbage_is_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(EventDecodeError) as info:
        decode(data)
    assert str(info.value).startswith(message)


def test_oversized_message_is_refused_before_parsing() -> None:
    big = wire({**LOG, "message": "x" * MAX_MESSAGE_BYTES})
    with pytest.raises(EventDecodeError, match="over the 1048576-byte limit"):
        decode(big)


def test_log_level_rejects_unknown() -> None:
    with pytest.raises(EventDecodeError, match=r"^level: Input should be 'DEBUG'"):
        decode(wire({**LOG, "level": "LOUD"}))


def test_alert_rejects_bad_enums() -> None:
    with pytest.raises(EventDecodeError) as info:
        decode(wire({**ALERT, "severity": "high", "scope": "node", "status": "open"}))
    assert [p.field for p in info.value.problems] == ["severity", "scope", "status"]


def test_models_are_constructible_in_python() -> None:
    now = datetime(2025, 4, 5, 10, 23, 15, tzinfo=UTC)
    step = StepEvent(job_id="j", rank=0, step=0, timestamp=now)
    log = LogEvent(job_id="j", rank=0, timestamp=now, level="INFO", message="hi")
    alert = Alert(
        alert_id="a",
        job_id="j",
        rule="r",
        severity="info",
        scope="job",
        first_seen=now,
        last_seen=now,
        summary="s",
    )
    for event in (step, log, alert):
        assert decode(encode(event)) == event


def test_alert_id_is_deterministic() -> None:
    assert alert_id_for("j", "cuda_oom", 3, 12) == alert_id_for("j", "cuda_oom", 3, 12)
    assert alert_id_for("j", "cuda_oom", 3, 12) != alert_id_for("j", "cuda_oom", 3, 13)
