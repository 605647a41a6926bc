"""The worker's ordering rules, without a broker: flush alerts, then persist, then ack."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from rankwatch.schemas import LogEvent, encode
from rankwatch.streams.worker import Runtime, TopicLayout, WorkerOptions

OOM = "torch.OutOfMemoryError: CUDA out of memory."


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class Event:
    value: bytes
    message: Message


@dataclass
class Journal:
    """Everything the fakes were asked to do, in order."""

    calls: list[tuple[str, Any]] = field(default_factory=list)


class FakeTopic:
    def __init__(self, name: str, journal: Journal) -> None:
        self.name, self.journal = name, journal

    async def send(self, key: bytes, value: bytes) -> None:
        self.journal.calls.append((f"send:{self.name}", key))


class FakeTable:
    def __init__(self, journal: Journal) -> None:
        self.data: dict[bytes, bytes] = {}
        self.journal = journal

    def send_changelog(self, partition: int | None, key: bytes, value: bytes) -> None:
        self.journal.calls.append(("changelog", (partition, key)))


class FakeApp:
    def __init__(self, journal: Journal, assigned: set[TP]) -> None:
        self.journal = journal
        self.consumer = self
        self.producer = self
        self.assigned = assigned

    def assignment(self) -> set[TP]:
        return self.assigned

    async def flush(self) -> None:
        self.journal.calls.append(("flush", None))


class FakeStream:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def ack(self, event: Event) -> None:
        self.journal.calls.append(("ack", event.message.offset))


def _runtime(assigned: set[TP]) -> tuple[Runtime, Journal, FakeTable]:
    journal = Journal()
    table = FakeTable(journal)
    layout = TopicLayout("steps", "logs", "alerts", "dead", partitions=2, replication=1)
    runtime = Runtime(
        FakeApp(journal, assigned),
        table,
        FakeTopic("alerts", journal),
        FakeTopic("dead", journal),
        layout,
        WorkerOptions(),
    )
    return runtime, journal, table


def _oom(offset: int, partition: int = 1) -> Event:
    event = LogEvent(job_id="j", rank=5, timestamp=100 + offset, level="ERROR", message=OOM)
    return Event(encode(event), Message("logs", partition, offset, b"j"))


def test_alert_flushed_before_state_and_state_before_ack() -> None:
    runtime, journal, table = _runtime({TP("logs", 1)})
    stream = FakeStream(journal)

    async def run() -> None:
        await runtime.on_batch(stream, [_oom(0), Event(b"junk", Message("logs", 1, 1, b"j"))])
        await runtime.snapshot()

    asyncio.run(run())
    kinds = [name for name, _ in journal.calls]
    assert kinds == ["send:alerts", "send:dead", "flush", "changelog", "changelog", "ack", "ack"]
    # The job's state (rank chunk, then head) goes to the partition its events came from.
    assert [call[1] for call in journal.calls[3:5]] == [(1, b"j#0"), (1, b"j")]
    assert b"j" in table.data


def test_revoked_partitions_are_dropped_and_skipped() -> None:
    runtime, journal, _ = _runtime({TP("logs", 1)})
    stream = FakeStream(journal)

    async def run() -> None:
        await runtime.on_batch(stream, [_oom(0)])
        await runtime.on_revoked({1})
        runtime.app.assigned = set()  # type: ignore[attr-defined]
        await runtime.on_batch(stream, [_oom(1)])  # taken before the revocation: not ours
        await runtime.snapshot()

    asyncio.run(run())
    assert runtime.engine.jobs == {}
    assert [name for name, _ in journal.calls] == ["send:alerts"]  # nothing persisted or acked
