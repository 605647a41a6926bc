"""The storage sink: a Kafka consumer group that writes steps, logs and alerts to a store.

At-least-once, made effectively-once by the store's idempotent writes: messages are batched (by
count and by time), each batch is written in one transaction, and only then are the batch's
offsets committed. A sink killed between the write and the commit re-reads the batch after a
restart and the store ignores the rows it already has.

Messages that do not decode are skipped (they are the detectors' dead-letter business, not
ours), counted, and logged at most once per interval.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rankwatch.schemas import Alert, EventDecodeError, LogEvent, StepEvent, decode
from rankwatch.sinks.exceptions import StoreError
from rankwatch.sinks.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

    from rankwatch.config import Settings
    from rankwatch.sinks.storage.sql import SqlStore

log = logging.getLogger("rankwatch.sinks.storage")

DEFAULT_GROUP = "rankwatch-sink-storage"


@dataclass
class SinkStats:
    """Counters of one sink run."""

    consumed: int = 0
    bad: int = 0
    batches: int = 0
    new_steps: int = 0
    new_logs: int = 0
    alerts_written: int = 0
    write_failures: int = 0


@dataclass
class _Batch:
    steps: list[StepEvent] = field(default_factory=list)
    logs: list[LogEvent] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    # (topic, partition) -> next offset to commit: the last offset read + 1.
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    size: int = 0
    started: float = 0.0


class StorageSink:
    """Consume the steps, logs and alerts topics into ``store`` until :meth:`stop`.

    ``batch_size`` and ``linger_s`` bound a batch: it is written when it holds ``batch_size``
    messages or its first message is ``linger_s`` old. ``retention_s`` (if set) deletes rows
    older than that at start and every ``retention_every_s``; ``step_retention_s`` (if set)
    deletes raw steps older than that, keeping their rollups and the steps around every alert
    (``SqlStore.delete_older_than``). ``instance_id`` makes the sink a static member of its
    group: restarted with the same id, it takes its partitions back at once instead of waiting
    for the killed process's session to time out.
    """

    def __init__(
        self,
        store: SqlStore,
        settings: Settings,
        *,
        group_id: str = DEFAULT_GROUP,
        batch_size: int = 1000,
        linger_s: float = 1.0,
        retention_s: float | None = None,
        retention_every_s: float = 3600.0,
        instance_id: str | None = None,
        step_retention_s: float | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.group_id = group_id
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retention_s = retention_s
        self.retention_every_s = retention_every_s
        self.step_retention_s = step_retention_s
        self.instance_id = instance_id
        self.stats = SinkStats()
        self._stop = threading.Event()
        self._batch = _Batch()
        self._bad = RateLimitedLog("skipped a message that is not a valid event", emit=log.warning)
        self._next_retention = 0.0
        #: Prometheus metrics (rankwatch.sinks.metrics) when --metrics-port is given.
        self.metrics: Any = None

    @property
    def topics(self) -> list[str]:
        t = self.settings.topics
        return [t.steps.name, t.logs.name, t.alerts.name]

    def stop(self) -> None:
        """Ask :meth:`run` to write what it holds, commit, and return (any thread, signals)."""
        self._stop.set()

    def run(self) -> SinkStats:
        """Consume until :meth:`stop`; the last batch is written and committed before returning."""
        from confluent_kafka import Consumer

        config: dict[str, Any] = {
            **self.settings.confluent_config(),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # A crashed sink's partitions move to a survivor after 10 s, not librdkafka's 45 s.
            "session.timeout.ms": 10_000,
            "log_level": 3,
        }
        if self.instance_id:
            config["group.instance.id"] = self.instance_id
        if self.metrics is not None:
            config.update(self.metrics.kafka_config())  # librdkafka's statistics: the lag
        consumer = Consumer(config)
        consumer.subscribe(self.topics, on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                self._maybe_retain()
                room = max(1, self.batch_size - self._batch.size)
                wait = 0.2
                if self._batch.size:
                    due = self._batch.started + self.linger_s
                    wait = max(0.0, min(wait, due - time.monotonic()))
                for message in consumer.consume(num_messages=room, timeout=wait):
                    self._add(message)
                if self._batch.size >= self.batch_size or (
                    self._batch.size and time.monotonic() - self._batch.started >= self.linger_s
                ):
                    self._flush(consumer)
            self._flush(consumer)
        finally:
            consumer.close()
        return self.stats

    def _add(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            log.warning("consumer error: %s", error)
            return
        batch = self._batch
        if not batch.size:
            batch.started = time.monotonic()
        batch.size += 1
        self.stats.consumed += 1
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        batch.offsets[(topic, partition)] = offset + 1
        value = message.value()
        try:
            if value is None:
                raise EventDecodeError.whole("empty message")
            event = decode(value)
        except EventDecodeError as exc:
            self.stats.bad += 1
            self._bad.hit(f"{topic}[{partition}]@{offset}: {exc}")
            return
        if isinstance(event, StepEvent):
            batch.steps.append(event)
        elif isinstance(event, LogEvent):
            batch.logs.append(event)
        else:
            batch.alerts.append(event)

    def _flush(self, consumer: Consumer) -> None:
        """Write the batch (retrying while the store is down), then commit its offsets."""
        from confluent_kafka import KafkaException, TopicPartition

        batch = self._batch
        if not batch.size:
            return
        delay = 0.5
        started = time.perf_counter()
        while True:
            try:
                written = self.store.write_batch(batch.steps, batch.logs, batch.alerts)
                break
            except StoreError as exc:
                # Never drop a batch and never commit past it: wait for the store to come back.
                self.stats.write_failures += 1
                log.error(
                    "writing a batch of %d failed, retrying in %.1f s: %s", batch.size, delay, exc
                )
                if self._stop.wait(delay):
                    return  # stopping: uncommitted, so the next run reads the batch again
                delay = min(delay * 2, 30.0)
        if self.metrics is not None:
            self.metrics.write_seconds.observe(time.perf_counter() - started)
            started = time.perf_counter()
        self.stats.batches += 1
        self.stats.new_steps += written.steps
        self.stats.new_logs += written.logs
        self.stats.alerts_written += written.alerts
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
        self._batch = _Batch()
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            if self.metrics is not None:
                self.metrics.commit_seconds.observe(time.perf_counter() - started)
        except KafkaException as exc:
            # The rows are stored; an uncommitted batch is only read (and ignored) again.
            log.warning(
                "committing offsets failed (the batch will be re-read, harmlessly): %s", exc
            )

    def _on_revoke(self, consumer: Consumer, partitions: list[Any]) -> None:
        # Write and commit what we hold before another member takes these partitions.
        self._flush(consumer)

    def _maybe_retain(self) -> None:
        if self.retention_s is None and self.step_retention_s is None:
            return
        if time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + self.retention_every_s
        try:
            result = self.store.delete_older_than(
                self.retention_s, steps_age_s=self.step_retention_s
            )
        except StoreError as exc:
            log.error("retention failed (will retry in %.0f s): %s", self.retention_every_s, exc)
            return
        if any(result.deleted.values()):
            log.info("retention: deleted %s", result.deleted)
