"""Engine state in a compacted Kafka topic, and what a worker reads back from Kafka.

The topic is the one Faust keeps its ``engine-state`` table in
(``<app-id>-engine-state-changelog``), with the same raw bytes as key and value, so a worker
switched between ``--runtime faust`` and ``--runtime batch`` keeps its state. Partition N of
the changelog holds the jobs whose events arrive on partition N of the inputs: a worker
assigned input partition N reads changelog partition N, and nothing else.

:class:`KafkaReads` holds the reads a worker makes when it takes partitions over (the alerts
already published, whether the group has uncommitted input): the runtime gets it as an
argument, so its tests pass a fake.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.runtime.common import TopicLayout

log = logging.getLogger("rankwatch.worker")


def ensure_changelog(config: dict[str, str], name: str, layout: TopicLayout) -> int | None:
    """Create the compacted changelog topic if missing; refuse one of another partition count.

    Returns the topic's ``max.message.bytes`` (the largest state record it takes), None where
    the broker would not say."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({**config, "log_level": 0})
    found = admin.list_topics(name, timeout=15).topics.get(name)
    if found is not None and found.error is None and found.partitions:
        if len(found.partitions) != layout.partitions:
            raise StreamsError(
                f"changelog topic {name!r} has {len(found.partitions)} partitions but the "
                f"inputs have {layout.partitions}: state would land on the wrong worker; "
                "delete it (its state is lost) or use another --app-id"
            )
        return _max_message_bytes(admin, name)
    topic = NewTopic(
        name,
        num_partitions=layout.partitions,
        replication_factor=layout.replication,
        config={"cleanup.policy": "compact"},
    )
    try:
        admin.create_topics([topic], operation_timeout=30)[name].result(30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another worker was first
            raise StreamsError(f"cannot create changelog topic {name!r}: {exc.args[0]}") from None
    log.info("created changelog topic %s (%d partitions)", name, layout.partitions)
    return _max_message_bytes(admin, name)


def _max_message_bytes(admin: Any, name: str) -> int | None:
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    try:
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        configs = admin.describe_configs([resource])[resource].result(15)
        return int(configs["max.message.bytes"].value)
    except Exception as exc:  # an old broker, or no right to describe: the default applies
        log.warning("changelog %s: cannot read max.message.bytes (%s)", name, exc)
        return None


class ChangelogKV:
    """:class:`~rankwatch.streams.snapshots.KeyValue` over the changelog topic.

    Reads come from memory, filled by :meth:`restore` for the assigned partitions; writes go
    to the producer (to the given partition) and to memory. The caller flushes the producer
    before it commits the offsets the writes cover.
    """

    def __init__(self, config: dict[str, str], topic: str, producer: Any) -> None:
        # producer: anything with produce(topic, value, key, partition=) (an Outbox).
        self.config = config
        self.topic = topic
        self.producer = producer
        self.data: dict[bytes, bytes] = {}
        self.keys_of: dict[int, set[bytes]] = {}  # partition -> its keys, to drop them

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, partition: int | None) -> None:
        if partition is None or partition < 0:
            raise StreamsError(f"state key {key!r} has no partition to be written to")
        self.producer.produce(self.topic, value, key, partition=partition)
        self.data[key] = value
        self.keys_of.setdefault(partition, set()).add(key)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the keys of partitions now owned by another worker."""
        for p in partitions:
            for key in self.keys_of.pop(p, ()):
                self.data.pop(key, None)

    def restore(self, partitions: Iterable[int], timeout_s: float = 60.0) -> dict[int, int]:
        """Read the changelog partitions from the beginning to their high watermark.

        A consumer of its own, assigned (no group, nothing committed): the changelog is read
        whole each time, as Faust's in-memory table store does. Returns, per partition that
        holds state, the timestamp (epoch ms) of its last record: when it was last snapshotted.
        """
        wanted = sorted(set(partitions))
        latest: dict[int, int] = {}
        if not wanted:
            return latest
        started = time.monotonic()
        consumer = _reader(self.config)
        read = 0
        try:
            ends: dict[int, int] = {}
            assign = []
            for p in wanted:
                tp = TopicPartition(self.topic, p)
                low, high = _watermarks(consumer, tp, timeout_s)
                if high > low:
                    ends[p] = high
                    assign.append(TopicPartition(self.topic, p, low))
            if assign:
                consumer.assign(assign)
            deadline = time.monotonic() + timeout_s
            while ends:
                if time.monotonic() > deadline:
                    raise StreamsError(
                        f"changelog {self.topic}: partitions {sorted(ends)} not read to their "
                        f"end within {timeout_s:.0f} s"
                    )
                for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                    if msg.error() is not None:
                        raise StreamsError(f"changelog {self.topic}: {msg.error()}")
                    p = msg.partition()
                    key, value = msg.key(), msg.value()
                    if key is not None:
                        if value is None:  # a tombstone (never written here, but Kafka allows)
                            self.data.pop(key, None)
                        else:
                            self.data[key] = value
                            self.keys_of.setdefault(p, set()).add(key)
                    read += 1
                    latest[p] = max(latest.get(p, 0), msg.timestamp()[1])
                    if msg.offset() + 1 >= ends.get(p, 0):
                        ends.pop(p, None)
        finally:
            consumer.close()
        log.info(
            "state of partitions %s read from %s: %d records, %.1f s",
            wanted,
            self.topic,
            read,
            time.monotonic() - started,
        )
        return latest


def published_alerts(
    config: dict[str, str], topic: str, since_ms: int | None, timeout_s: float = 60.0
) -> set[tuple[str, str]]:
    """(alert_id, status) of every alert on ``topic`` since ``since_ms`` (None: all of it).

    Alert ids are deterministic, so a pair already on the topic must not be published again:
    events replayed after a crash re-fire the alerts sent since the last snapshot.
    """
    import orjson

    consumer = _reader(config)
    seen: set[tuple[str, str]] = set()
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        start = -2 if since_ms is None else since_ms  # -2: OFFSET_BEGINNING
        tps = [TopicPartition(topic, p, start) for p in sorted(meta.partitions)]
        if since_ms is not None:
            tps = consumer.offsets_for_times(tps, timeout=timeout_s)
        ends: dict[int, int] = {}
        assign = []
        for tp in tps:
            low, high = _watermarks(consumer, tp, timeout_s)
            first = low if tp.offset < 0 and since_ms is None else tp.offset
            if 0 <= first < high:  # offsets_for_times gives -1 when nothing is that recent
                ends[tp.partition] = high
                assign.append(TopicPartition(topic, tp.partition, max(first, low)))
        if assign:
            consumer.assign(assign)
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    continue
                try:
                    alert = orjson.loads(msg.value() or b"")
                    seen.add((alert["alert_id"], alert["status"]))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    pass  # not ours to judge: the alerts topic is the sinks' input
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
        if ends:
            raise StreamsError(f"{topic}: partitions {sorted(ends)} not read to their end")
    finally:
        consumer.close()
    return seen


class KafkaReads:
    """The reads of a worker taking input partitions over, on their own short-lived clients:
    the alerts already on the alerts topic, and whether the group left input uncommitted."""

    def __init__(
        self, config: dict[str, str], group_id: str, inputs: tuple[str, ...], alerts: str
    ) -> None:
        self.config = config
        self.group_id = group_id
        self.inputs = inputs
        self.alerts = alerts

    def published_alerts(self, since_ms: int | None) -> set[tuple[str, str]]:
        return published_alerts(self.config, self.alerts, since_ms)

    def uncommitted(self, partitions: set[int]) -> bool:
        """Whether any of these input partitions has events past the group's commit (True
        when Kafka would not say: reading back too much costs time, too little duplicates)."""
        from confluent_kafka import KafkaException

        try:
            return any(start < high for start, high in self.starts(partitions).values())
        except KafkaException as exc:
            log.warning("partitions %s: %s; reading back every alert", sorted(partitions), exc)
            return True

    def starts(self, partitions: set[int]) -> dict[tuple[str, int], tuple[int, int]]:
        """(topic, partition) -> (where the group will start reading, the end offset)."""
        tps = [TopicPartition(t, p) for t in self.inputs for p in sorted(partitions)]
        consumer = Consumer(
            {**self.config, "group.id": self.group_id, "enable.auto.commit": False, "log_level": 0}
        )
        out: dict[tuple[str, int], tuple[int, int]] = {}
        try:
            for tp in consumer.committed(tps, timeout=30):
                low, high = consumer.get_watermark_offsets(tp, timeout=30)
                out[(tp.topic, tp.partition)] = (max(tp.offset, low), high)  # no commit: low
        finally:
            consumer.close()
        return out


def _watermarks(consumer: Any, tp: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """Low and high watermark, waiting out a topic created a moment ago (no leader yet)."""
    from confluent_kafka import KafkaError, KafkaException

    transient = {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    }
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=min(5.0, timeout_s))
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in transient or time.monotonic() > deadline:
                raise StreamsError(f"{tp.topic}[{tp.partition}]: {exc.args[0]}") from None
            time.sleep(0.2)


def _reader(config: dict[str, str]) -> Any:
    """A consumer for assign() only: its random group never joins nor commits."""
    return Consumer(
        {
            **config,
            "group.id": f"rankwatch-restore-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "log_level": 0,
        }
    )
