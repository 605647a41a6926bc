"""The batch runtime's ordering rules against the real broker: alerts flushed, then state
written and flushed, then offsets committed; revoked and lost partitions; alerts already
published; messages held back by the steps/logs merge are not committed.

The runtime's own confluent-kafka clients talk to the session broker; each is wrapped in a
spy that writes down the calls the runtime makes, in order, and passes every call on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Producer, TopicPartition

from rankwatch.config import Settings
from rankwatch.schemas import Alert, LogEvent, StepEvent, decode, encode
from rankwatch.streams.runtime.batch import BatchRuntime, ConsumerOffsets
from rankwatch.streams.runtime.changelog import ensure_changelog
from rankwatch.streams.runtime.common import TopicLayout, WorkerOptions, changelog_topic

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

OOM = "torch.OutOfMemoryError: CUDA out of memory."
PARTITIONS = 2
START_MS = int(time.time() * 1000) - 3_600_000  # the tests' Kafka timestamps count from here


@dataclass
class Journal:
    """The calls the runtime made on its clients, topics named by their role."""

    roles: dict[str, str]
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [c[0] if c[0] != "produce" else f"produce:{c[1]}" for c in self.calls]


class SpyProducer:
    """The runtime's real producer; ``produce`` and ``flush`` are written down first."""

    def __init__(self, real: Any, journal: Journal) -> None:
        self.real = real
        self.journal = journal
        self.values: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes, partition: int = -1) -> None:
        self.journal.calls.append(("produce", self.journal.roles[topic], partition, key))
        self.values.append(value)
        self.real.produce(topic, value, key, partition=partition)

    def flush(self, timeout: float = -1) -> int:
        self.journal.calls.append(("flush",))
        left: int = self.real.flush(timeout)
        return left

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class SpyConsumer:
    """The runtime's real consumer; ``commit`` is written down first."""

    def __init__(self, real: Any, journal: Journal) -> None:
        self.real = real
        self.journal = journal

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        roles = self.journal.roles
        done = sorted((roles[o.topic], o.partition, o.offset) for o in offsets)
        self.journal.calls.append(("commit", done))
        self.real.commit(offsets=offsets, asynchronous=asynchronous)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@dataclass
class Rig:
    """A runtime on fresh topics, its spied clients, and a producer of input messages."""

    runtime: BatchRuntime
    journal: Journal
    producer: SpyProducer
    consumer: SpyConsumer
    layout: TopicLayout
    send: Producer

    def put(self, role: str, partition: int, value: bytes, timestamp_ms: int) -> None:
        """Produce ``value``, its Kafka timestamp ``timestamp_ms`` after the run's start (a
        timestamp from 1970 would be the broker's to delete under its retention)."""
        topic = self.layout.steps if role == "steps" else self.layout.logs
        stamp = START_MS + timestamp_ms
        self.send.produce(topic, value, b"j", partition=partition, timestamp=stamp)
        assert self.send.flush(10) == 0

    def read(self, roles: list[str], partitions: list[int]) -> None:
        """Assign these input partitions (from the start): the runtime's consumer reads them."""
        names = [self.layout.steps if r == "steps" else self.layout.logs for r in roles]
        self.consumer.incremental_assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in names for p in partitions]
        )

    def take(self, count: int, *, to_end: bool = True, timeout_s: float = 20.0) -> list[Any]:
        """The next ``count`` messages, one at a time, and the end-of-partition events met on
        the way; with ``to_end``, until every assigned partition has reported its end too (as
        a live consumer soon does), else what follows the messages stays in the consumer."""
        got: list[Any] = []
        ends: set[tuple[str, int]] = set()
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        deadline = time.monotonic() + timeout_s
        while sum(m.error() is None for m in got) < count or (to_end and ends != assigned):
            assert time.monotonic() < deadline, f"only {got} of {count}, ends {ends}"
            for m in self.consumer.consume(1, 0.2):
                got.append(m)
                if m.error() is not None:
                    ends.add((m.topic(), m.partition()))
        return got


@pytest.fixture
def rig(kafka_bootstrap: str, make_topic: Callable[..., str]) -> Iterator[Callable[[], Rig]]:
    """``rig()``: a runtime of its own app id over one set of fresh topics (call it twice
    for a restart: the second runtime shares the topics)."""
    layout = TopicLayout(
        make_topic(PARTITIONS), make_topic(PARTITIONS), make_topic(1), make_topic(1),
        partitions=PARTITIONS, replication=1,
    )  # fmt: skip
    settings = Settings().with_bootstrap(kafka_bootstrap)
    made: list[Rig] = []

    def make() -> Rig:
        options = WorkerOptions(app_id=f"test-runtime-{uuid.uuid4().hex[:8]}")
        changelog = changelog_topic(options.app_id)
        ensure_changelog(settings.confluent_config(), changelog, layout)
        roles = {
            layout.steps: "steps", layout.logs: "logs", layout.alerts: "alerts",
            layout.deadletter: "dead", changelog: "changelog",
        }  # fmt: skip
        runtime = BatchRuntime.connect(settings, options, layout)
        journal = Journal(roles)
        producer = SpyProducer(runtime.outbox.producer, journal)
        consumer = SpyConsumer(runtime.consumer, journal)
        runtime.outbox.producer = producer  # the changelog store writes through it too
        runtime.consumer = consumer
        runtime.checkpoint.offsets = ConsumerOffsets(consumer)
        runtime.owned = set(range(PARTITIONS))
        send = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
        made.append(Rig(runtime, journal, producer, consumer, layout, send))
        return made[-1]

    yield make
    for r in made:
        r.consumer.real.close()
        r.producer.real.flush(10)


def _oom(at_s: float = 100.0) -> bytes:
    return encode(LogEvent(job_id="j", rank=5, timestamp=at_s, level="ERROR", message=OOM))


def _step(step: int, at_s: float) -> bytes:
    return encode(StepEvent(job_id="j", rank=0, step=step, timestamp=at_s, loss=2.0))


def test_alerts_flushed_then_state_written_and_flushed_then_offsets_committed(
    rig: Callable[[], Rig],
) -> None:
    r = rig()
    r.put("logs", 1, _oom(), 100_000)
    r.put("logs", 1, b"junk", 100_001)
    r.read(["steps", "logs"], [0, 1])
    r.runtime.process_batch(r.take(2))
    r.runtime.checkpoint.commit()
    assert r.journal.kinds() == [
        "produce:alerts",
        "produce:dead",
        "flush",
        "produce:changelog",
        "produce:changelog",
        "flush",
        "commit",
    ]
    # The job's rank chunk, then its head, to the partition its events came from.
    assert [c[2:] for c in r.journal.calls[3:5]] == [(1, b"j#0"), (1, b"j")]
    assert r.journal.calls[-1] == ("commit", [("logs", 1, 2)])
    alert = decode(r.producer.values[0])
    assert isinstance(alert, Alert) and alert.rule == "cuda_oom"
    assert r.runtime.unacked == 0
    r.runtime.checkpoint.commit()  # nothing new: nothing written, nothing committed
    assert len(r.journal.calls) == 7


def test_an_alert_already_on_the_topic_is_not_sent_again(rig: Callable[[], Rig]) -> None:
    first = rig()
    first.put("logs", 1, _oom(), 100_000)
    first.read(["steps", "logs"], [0, 1])
    first.runtime.process_batch(first.take(1))
    alert = decode(first.producer.values[0])
    assert isinstance(alert, Alert)

    again = rig()  # a restart replaying the same event
    again.runtime.published = {(alert.alert_id, alert.status)}
    again.read(["steps", "logs"], [0, 1])
    again.runtime.process_batch(again.take(1))
    assert again.journal.kinds() == []
    assert again.runtime.counters.alerts == 0


def test_lost_partitions_are_dropped_without_a_commit(rig: Callable[[], Rig]) -> None:
    r = rig()
    r.put("logs", 1, _oom(), 100_000)
    r.read(["steps", "logs"], [0, 1])
    r.runtime.process_batch(r.take(1))
    r.runtime._lost(
        r.consumer, [TopicPartition(r.layout.logs, 1), TopicPartition(r.layout.steps, 1)]
    )
    assert r.runtime.engine.jobs == {} and r.runtime.owned == {0}
    assert r.runtime.kv.data == {} and r.runtime.pipeline.dirty == {}
    assert "commit" not in r.journal.kinds()


def test_after_an_error_a_revocation_persists_and_commits_nothing(rig: Callable[[], Rig]) -> None:
    r = rig()
    r.put("logs", 1, _oom(), 100_000)
    r.read(["steps", "logs"], [0, 1])
    r.runtime.process_batch(r.take(1))
    r.runtime.broken = True
    r.runtime._revoked(r.consumer, r.consumer.assignment())
    assert r.journal.kinds() == ["produce:alerts"]
    r.runtime.broken = False
    r.runtime._revoked(r.consumer, r.consumer.assignment())  # the normal case: persisted, committed
    assert r.journal.kinds()[-1] == "commit"


def test_a_record_ahead_of_its_steps_is_held_and_not_committed(rig: Callable[[], Rig]) -> None:
    r = rig()
    r.put("logs", 1, _oom(100.0), 100_000)
    r.put("steps", 1, _step(0, 50.0), 50_000)
    r.put("steps", 1, _step(1, 101.0), 101_000)
    # The logs first, steps[1] not read yet: nothing is known of it, so the OOM record (more
    # than the 20 s slack ahead of any step seen) waits for the steps before it.
    r.read(["logs"], [0, 1])
    assert r.runtime.process_batch(r.take(1)) == 1
    r.runtime.checkpoint.commit()  # nothing processed: nothing committed
    assert r.journal.kinds() == []
    r.read(["steps"], [1])
    # The step at 50 s goes through; the record still waits: the one at 101 s is fetched, not
    # consumed yet (the consumer's position is behind the end offset the fetch reported).
    held = r.runtime.process_batch(r.take(1, to_end=False))
    assert held == 1 and r.runtime.unacked == 1
    r.runtime.checkpoint.commit()
    assert "produce:alerts" not in r.journal.kinds()
    assert r.journal.calls[-1] == ("commit", [("logs", 1, 0), ("steps", 1, 1)])
    assert r.runtime.process_batch(r.take(1, to_end=False)) == 0  # at 101 s: the record goes first
    r.runtime.checkpoint.commit()
    assert r.journal.kinds().count("produce:alerts") == 1
    assert r.journal.calls[-1] == ("commit", [("logs", 1, 1), ("steps", 1, 2)])


def test_revoked_partitions_forget_what_they_held(rig: Callable[[], Rig]) -> None:
    r = rig()
    r.put("logs", 1, _oom(), 100_000)
    r.read(["logs"], [0, 1])
    assert r.runtime.process_batch(r.take(1)) == 1
    r.runtime._revoked(r.consumer, [TopicPartition(r.layout.logs, 1)])
    assert r.runtime.aligner.held() == 0  # read again from the commit by the next owner
