"""The batch runtime's ordering rules, without a broker: alerts flushed, then state written and
flushed, then offsets committed; revoked and lost partitions; alerts already published."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from rankwatch.config import Settings
from rankwatch.schemas import Alert, LogEvent, StepEvent, decode, encode
from rankwatch.streams.batch_runtime import BatchRuntime
from rankwatch.streams.worker_common import TopicLayout, WorkerOptions

OOM = "torch.OutOfMemoryError: CUDA out of memory."
LAYOUT = TopicLayout("steps", "logs", "alerts", "dead", partitions=2, replication=1)


@dataclass
class Journal:
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [c[0] if c[0] != "produce" else f"produce:{c[1]}" for c in self.calls]


class FakeProducer:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.values: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes, partition: int = -1) -> None:
        self.journal.calls.append(("produce", topic, partition, key))
        self.values.append(value)

    def flush(self, timeout: float = -1) -> int:
        self.journal.calls.append(("flush",))
        return 0

    def poll(self, timeout: float = 0) -> int:
        return 0


class FakeConsumer:
    """Its position is past every message handed out, as librdkafka's is."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.positions: dict[tuple[str, int], int] = {}
        #: End offsets the last fetch reported; by default each partition's position.
        self.ends: dict[tuple[str, int], int] = {}

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        assert cached is True  # never a broker request on the hot path
        key = (tp.topic, tp.partition)
        return 0, self.ends.get(key, self.positions.get(key, 0))

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        # A partition never handed out is empty here (at offset 0, its end).
        return [TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), 0))
                for tp in tps]  # fmt: skip

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        self.journal.calls.append(("commit", [(o.topic, o.partition, o.offset) for o in offsets]))


@dataclass
class Message:
    topic_: str
    partition_: int
    offset_: int
    value_: bytes
    key_: bytes = b"j"
    timestamp_: int = 0

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, self.timestamp_

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def value(self) -> bytes:
        return self.value_

    def key(self) -> bytes:
        return self.key_


def _runtime() -> tuple[BatchRuntime, Journal, FakeProducer, FakeConsumer]:
    # Nothing listens on port 1: the real clients are swapped for fakes before any use.
    runtime = BatchRuntime(Settings().with_bootstrap("127.0.0.1:1"), WorkerOptions(), LAYOUT)
    runtime.consumer.close()
    journal = Journal()
    producer, consumer = FakeProducer(journal), FakeConsumer(journal)
    runtime.producer = runtime.kv.producer = producer
    runtime.consumer = consumer
    runtime.owned = {0, 1}
    return runtime, journal, producer, consumer


def _batch(consumer: FakeConsumer, *messages: Message) -> list[Message]:
    for m in messages:
        consumer.positions[m.topic_, m.partition_] = m.offset_ + 1
    return list(messages)


def _oom(offset: int, partition: int = 1) -> Message:
    event = LogEvent(job_id="j", rank=5, timestamp=100 + offset, level="ERROR", message=OOM)
    return Message("logs", partition, offset, encode(event))


def test_alerts_flushed_then_state_written_and_flushed_then_offsets_committed() -> None:
    runtime, journal, producer, consumer = _runtime()
    runtime.process(_batch(consumer, _oom(0), Message("logs", 1, 1, b"junk")))
    runtime.snapshot()
    assert journal.kinds() == [
        "produce:alerts",
        "produce:dead",
        "flush",
        "produce:rankwatch-worker-engine-state-changelog",
        "produce:rankwatch-worker-engine-state-changelog",
        "flush",
        "commit",
    ]
    # The job's rank chunk, then its head, to the partition its events came from.
    assert [c[2:] for c in journal.calls[3:5]] == [(1, b"j#0"), (1, b"j")]
    assert journal.calls[-1] == ("commit", [("logs", 1, 2)])
    alert = decode(producer.values[0])
    assert isinstance(alert, Alert) and alert.rule == "cuda_oom"
    assert runtime.unacked == 0
    runtime.snapshot()  # nothing new: nothing written, nothing committed
    assert len(journal.calls) == 7


def test_an_alert_already_on_the_topic_is_not_sent_again() -> None:
    first, _, producer, consumer = _runtime()
    first.process(_batch(consumer, _oom(0)))
    alert = decode(producer.values[0])
    assert isinstance(alert, Alert)

    again, journal, _, consumer = _runtime()  # a restart replaying the same event
    again.published = {(alert.alert_id, alert.status)}
    again.process(_batch(consumer, _oom(0)))
    assert journal.kinds() == []
    assert again.counters.alerts == 0


def test_lost_partitions_are_dropped_without_a_commit() -> None:
    runtime, journal, _, consumer = _runtime()
    runtime.process(_batch(consumer, _oom(0, partition=1)))
    runtime._lost(consumer, [TopicPartition("logs", 1), TopicPartition("steps", 1)])
    assert runtime.engine.jobs == {} and runtime.owned == {0}
    assert runtime.kv.data == {} and runtime.pipeline.dirty == {}
    assert "commit" not in journal.kinds()


def test_after_an_error_a_revocation_persists_and_commits_nothing() -> None:
    runtime, journal, _, consumer = _runtime()
    runtime.process(_batch(consumer, _oom(0)))
    runtime.broken = True
    runtime._revoked(consumer, consumer.assignment())
    assert journal.kinds() == ["produce:alerts"]
    runtime.broken = False
    runtime._revoked(consumer, consumer.assignment())  # the normal case: persisted, committed
    assert journal.kinds()[-1] == "commit"


def _step(offset: int, timestamp_ms: int, partition: int = 1) -> Message:
    event = StepEvent(job_id="j", rank=0, step=offset, timestamp=timestamp_ms / 1000, loss=2.0)
    return Message("steps", partition, offset, encode(event), timestamp_=timestamp_ms)


def test_a_message_ahead_of_a_lagging_topic_is_held_and_not_committed() -> None:
    runtime, journal, _, consumer = _runtime()
    # The last fetch said steps[1] has 10 messages; none consumed yet: the OOM record at
    # t=100 s waits for the steps before it (more than the 10 s slack before it).
    consumer.ends["steps", 1] = 10
    consumer.positions["steps", 1] = 0
    oom = _oom(0)
    oom.timestamp_ = 100_000
    assert runtime.process(_batch(consumer, oom)) == 1
    runtime.process(_batch(consumer, _step(0, 50_000)))  # unacked now: the step went through
    runtime.snapshot()
    assert "produce:alerts" not in journal.kinds()  # the OOM record is still held
    assert journal.calls[-1] == ("commit", [("steps", 1, 1), ("logs", 1, 0)])
    # The steps topic read to its end: the record goes through, and the commit moves past it.
    consumer.ends["steps", 1] = 1
    assert runtime.process([]) == 0
    runtime.snapshot()
    assert journal.kinds().count("produce:alerts") == 1
    assert journal.calls[-1] == ("commit", [("steps", 1, 1), ("logs", 1, 1)])


def test_revoked_partitions_forget_what_they_held() -> None:
    runtime, _, _, consumer = _runtime()
    consumer.ends["steps", 1] = 10
    consumer.positions["steps", 1] = 0
    assert runtime.process(_batch(consumer, _oom(0))) == 1
    runtime._revoked(consumer, [TopicPartition("logs", 1), TopicPartition("steps", 1)])
    assert runtime.aligner.held() == 0  # read again from the commit by the next owner
