"""``rankwatch simulate``: to a file (deterministic, paced in real time on request) and to the
real broker, one producer per rank, read back from the topics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from rankwatch.cli.main import main
from rankwatch.schemas import LogEvent, StepEvent, decode, encode

JOB = ["--job", "sim-test", "--ranks", "4", "--steps", "40", "--scenario", "memory_leak@5:1"]


def events_in(path: Path) -> list[StepEvent | LogEvent]:
    out = [decode(line) for line in path.read_bytes().splitlines()]
    assert all(isinstance(e, StepEvent | LogEvent) for e in out)
    return out  # type: ignore[return-value]


def test_to_a_file_is_deterministic_and_follows_the_contract(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["simulate", *JOB, "--output", str(first)]) == 0
    assert main(["simulate", *JOB, "--output", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    events = events_in(first)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 4 * 40 and {e.rank for e in steps} == {0, 1, 2, 3}
    assert {e.job_id for e in events} == {"sim-test"}
    # The synthetic clock: 2026-01-01T00:00:00Z onwards, whatever the wall clock says.
    assert min(e.epoch for e in events) == 1_767_225_600.0

    def mean_memory(rank: int) -> float:
        values = [e.gpu_memory_allocated_mb or 0 for e in steps if e.rank == rank and e.step >= 28]
        return sum(values) / len(values)

    assert mean_memory(1) - mean_memory(0) > 1000  # the leak: 50 MB a step from step 5


def test_realtime_paces_events_against_the_wall_clock(tmp_path: Path) -> None:
    out = tmp_path / "rt.jsonl"
    started = time.time()
    args = ["--ranks", "2", "--steps", "3", "--step-time", "0.05", "--realtime"]
    assert main(["simulate", *args, "--output", str(out)]) == 0
    took = time.time() - started
    events = events_in(out)
    span = max(e.epoch for e in events) - min(e.epoch for e in events)
    assert span > 0.5  # three compile-slowed warm-up steps
    assert abs(min(e.epoch for e in events) - started) < 2.0
    assert took >= span


def test_list_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "cuda_oom\n    one rank runs out of GPU memory" in listing
    assert "fires: cuda_oom (rank" in listing
    assert main(["simulate", "--scenario", "oom", "--output", "-"]) == 2
    assert "unknown scenario 'oom'" in capsys.readouterr().err
    assert main(["simulate", "--ranks", "4096", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "one real producer per rank, 512 at most" in capsys.readouterr().err


@pytest.mark.broker
def test_to_kafka_through_one_producer_per_rank(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    from confluent_kafka import Consumer

    steps, logs = make_topic(3), make_topic(3)
    config = tmp_path / "rankwatch.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_bootstrap}"\n'
        f'[topics.steps]\nname = "{steps}"\n[topics.logs]\nname = "{logs}"\n'
    )
    assert main(["simulate", *JOB, "--config", str(config)]) == 0
    file = tmp_path / "same.jsonl"
    assert main(["simulate", *JOB, "--output", str(file)]) == 0
    expected = events_in(file)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([steps, logs])
    got: list[tuple[str, bytes | None, bytes]] = []
    deadline = time.monotonic() + 30
    while len(got) < len(expected) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got.append((message.topic(), message.key(), message.value()))  # type: ignore[arg-type]
    consumer.close()
    assert {key for _, key, _ in got} == {b"sim-test"}
    assert {topic for topic, _, value in got if b'"kind":"step"' in value} == {steps}
    # What each rank's producer sent is what the file holds, event for event.
    assert sorted(encode(decode(value)) for _, _, value in got) == sorted(map(encode, expected))
