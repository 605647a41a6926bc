"""Property-based fuzzing of the decoder (hypothesis), and the corpus of malformed messages.

The property: :func:`rankwatch.schemas.decode` returns a valid event or raises
:class:`~rankwatch.schemas.EventDecodeError`, never anything else, whatever the bytes; and the
worker's :class:`~rankwatch.streams.pipeline.Pipeline` turns every message into alerts or a
dead letter, never an exception; and what the worker does besides (publish the alerts, tick
the clock, snapshot the state) raises nothing either: the pipeline guards its detectors, not
those, and an exception there stops the worker (a step of 10**29, an unknown field on a held
step: both once did). Three generators: arbitrary bytes, arbitrary JSON (with the
NaN/Infinity tokens Python writes), and valid events mutated field by field, truncated or with
bytes flipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rankwatch.schemas import Alert, EventDecodeError, LogEvent, StepEvent, decode

VALID: list[dict[str, Any]] = [
    {
        "kind": "step",
        "job_id": "fuzz-job",
        "rank": 3,
        "world_size": 8,
        "step": 120,
        "timestamp": "2026-01-01T00:02:00Z",
        "loss": 2.31,
        "gradient_norm": 0.8,
        "gpu_memory_usage": 71.5,
        "throughput_tokens_per_sec": 81000.0,
        "step_time_s": 1.01,
    },
    {
        "kind": "log",
        "job_id": "fuzz-job",
        "rank": 5,
        "timestamp": 1767225720.5,
        "level": "ERROR",
        "message": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "step": 120,
    },
    {
        "kind": "alert",
        "alert_id": "a1",
        "job_id": "fuzz-job",
        "rule": "cuda_oom",
        "severity": "critical",
        "scope": "rank",
        "ranks": [5],
        "step": 120,
        "first_seen": 0,
        "last_seen": 0,
        "summary": "x",
    },
]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
    | st.sampled_from(["nan", "NaN", "-inf", "Infinity", "-Infinity", "inf", "1e999", "", "step"])
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid event with one to three edits: a field dropped, retyped or added, the kind or
    schema version changed; then maybe truncated or with a byte flipped."""
    obj = dict(draw(st.sampled_from(VALID)))
    keys = [*obj.keys(), "schema_version", "extra_field", "kind"]
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["drop", "set", "set"]))
        if action == "drop":
            obj.pop(key, None)
        else:
            obj[key] = draw(json_values)
    raw = json.dumps(obj, allow_nan=True).encode()
    how = draw(st.sampled_from(["as is", "as is", "truncate", "flip"]))
    if how == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    return raw


messages = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
    | mutated_events()
)


def check_decode(raw: bytes) -> bool:
    """The property for one message; returns whether it decoded to an input event."""
    try:
        event = decode(raw)
    except EventDecodeError as error:
        assert str(error), "a decode error must say why"
        return False
    assert isinstance(event, StepEvent | LogEvent | Alert), type(event)
    if isinstance(event, StepEvent):
        assert event.step >= 0 and event.rank >= 0
        if event.world_size is not None:
            assert event.rank < event.world_size
    for name in ("loss", "gradient_norm"):  # non-finite is allowed, anything else is a float
        value = getattr(event, name, None)
        assert value is None or isinstance(value, float) or math.isnan(value)
    return isinstance(event, StepEvent | LogEvent)


def run_fuzz(cases: int, *, seed: int = 0, sink: Callable[[bytes], None] | None = None) -> int:
    """Run ``cases`` generated messages through the property (and the pipeline); return how
    many decoded to input events. ``sink`` receives every message (to feed a live worker)."""
    from rankwatch.schemas import encode
    from rankwatch.streams import Engine
    from rankwatch.streams.pipeline import DeadLetter, Pipeline
    from rankwatch.streams.state_codec import Layout, encode_parts

    engine = Engine.with_builtin_detectors()
    pipeline = Pipeline(engine)
    # The fuzz job's ranks have all reported step 119 a minute before the valid events, and
    # rank 0 step 120 now: a generated step of another rank is then held until its peers
    # catch up, as a live worker holds a rank ahead of its peers, so snapshots store it.
    for rank in range(8):
        base = {**VALID[0], "rank": rank, "step": 119, "timestamp": "2026-01-01T00:01:00Z"}
        pipeline.handle(json.dumps(base).encode())
    pipeline.handle(json.dumps({**VALID[0], "rank": 0}).encode())
    valid = 0
    count = 0

    def worker_steps(alerts: list[Alert]) -> None:
        """The worker's own steps after a message: publish, tick (its clock a tenth of a
        second on at each message: quiet jobs are judged, held steps stay held a while),
        snapshot (every 50th message: each job's whole state, as the worker's is)."""
        for alert in alerts + engine.advance_clock(count / 10):
            assert encode(alert)
        if count % 50 == 0:  # a held step stays held for 300 messages (30 s of clock)
            for job_id, job in engine.jobs.items():
                encode_parts(job, Layout.of(engine, job_id))

    @settings(
        max_examples=cases,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.generate],  # no shrinking: a failure is reported as it was found
        suppress_health_check=list(HealthCheck),
    )
    @given(messages)
    def prop(raw: bytes) -> None:
        nonlocal valid, count
        valid += check_decode(raw)
        count += 1
        result = pipeline.handle(raw)
        if isinstance(result, DeadLetter):
            assert result.error and result.to_bytes()
        worker_steps([] if isinstance(result, DeadLetter) else result)
        if sink is not None:
            sink(raw)

    import random

    random.seed(seed)
    prop()
    return valid


# The corpus fed through the live worker: (what it is, the message). Each must be dead-lettered.
def corpus(big_bytes: int = 10 * 1024 * 1024) -> list[tuple[str, bytes]]:
    step = json.dumps(VALID[0]).encode()
    out: list[tuple[str, bytes]] = [
        ("truncated JSON", step[: len(step) // 2]),
        ("empty message", b""),
        ("not JSON", b"hello world"),
        ("JSON array", b"[1, 2, 3]"),
        ("JSON string", b'"step"'),
        ("invalid UTF-8", b'{"kind":"step","job_id":"\xff\xfe","rank":1}'),
        ("missing fields", b'{"kind":"step","job_id":"j"}'),
        ("wrong type: rank", _edit(step, rank="three")),
        ("wrong type: step", _edit(step, step=[1])),
        ("wrong type: loss", _edit(step, loss={"v": 1})),
        ("unknown kind", _edit(step, kind="metric")),
        ("alert on the input topic", json.dumps(VALID[2]).encode()),
        ("future schema_version without required fields", b'{"schema_version":99,"kind":"step"}'),
        ("negative step", _edit(step, step=-5)),
        ("negative rank", _edit(step, rank=-1)),
        ("rank beyond world_size", _edit(step, rank=64, world_size=8)),
        ("world_size 0", _edit(step, world_size=0)),
        ("bad timestamp", _edit(step, timestamp="yesterday")),
        ("timestamp without zone", _edit(step, timestamp="2026-01-01T00:00:00")),
        ("bad job_id", _edit(step, job_id="a b/c")),
        ("memory percent 400", _edit(step, gpu_memory_usage=400)),
        ("huge integer", step.replace(b'"step": 120', b'"step": ' + b"9" * 5000)),
        # Past 64 bits: accepted once, then it stopped the worker at its next snapshot.
        ("step past 64 bits", _edit(step, step=2**63)),
        ("deeply nested", b'{"kind":"step","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        (
            "log without message",
            b'{"kind":"log","job_id":"j","rank":0,"timestamp":0,"level":"INFO"}',
        ),
        (
            "log with a bad level",
            b'{"kind":"log","job_id":"j","rank":0,"timestamp":0,"level":"LOUD","message":"x"}',
        ),
        ("10 MB message", b'{"kind":"log","message":"' + b"x" * big_bytes + b'"}'),
    ]
    return out


# Accepted, not dead-lettered: the contract says these parse (NaN in every spelling, a future
# schema_version that parses, unknown fields). They travel with the corpus as valid events.
def accepted(job_id: str, first_step: int, rank: int = 7) -> list[bytes]:
    base = (
        '{"kind":"step","job_id":"%s","rank":%d,"world_size":8,"step":%d,"timestamp":%d,"loss":%s}'
    )
    spellings = [
        '"nan"',
        '"NaN"',
        '"NAN"',
        "NaN",
        '"inf"',
        '"Infinity"',
        "Infinity",
        "-Infinity",
        '"-inf"',
    ]
    out = [
        (base % (job_id, rank, first_step + i, 1767225600 + first_step + i, s)).encode()
        for i, s in enumerate(spellings)
    ]
    out.append(
        b'{"schema_version":7,"kind":"step","job_id":"%s","rank":%d,"step":%d,"timestamp":1767225600,"new_field":{"a":1}}'
        % (job_id.encode(), rank, first_step + len(spellings))
    )
    return out


def _edit(raw: bytes, **changes: Any) -> bytes:
    obj = json.loads(raw)
    obj.update(changes)
    return json.dumps(obj).encode()
