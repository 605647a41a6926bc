"""The batch runtime's consumer loop: confluent-kafka consumer in, the shared core, rebalances.

:class:`BatchRuntime` takes its clients as arguments (``consumer``, the :class:`Outbox` over
its producer, the changelog store, the Kafka reads): :meth:`BatchRuntime.connect` builds the
real ones, the tests pass fakes or spies. The design, and what a crash or a rebalance costs:
:mod:`rankwatch.streams.batch_worker`.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from typing import Any

from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.runtime.changelog import ChangelogKV, KafkaReads
from rankwatch.streams.runtime.checkpoint import Outbox, TopicPartitionKey
from rankwatch.streams.runtime.common import TopicLayout, WorkerOptions, changelog_topic
from rankwatch.streams.runtime.core import Reads, StateTable, StreamCore

log = logging.getLogger("rankwatch.worker")

#: librdkafka's code for "reached the end of a partition" (KafkaError._PARTITION_EOF).
_PARTITION_EOF = -191
#: How often the worker's clock judges quiet jobs, and librdkafka reports its brokers' state.
_CLOCK_S = 1.0
#: Broker statistics older than this: the consumer is not being served; count no silence.
_STATS_STALE_S = 10.0


class Stop:
    """Set by SIGTERM/SIGINT; the loop checks it between batches."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, _frame: Any) -> None:
        if not self.requested:
            log.info("%s: stopping", signal.Signals(signum).name)
        self.requested = True

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.requested and (left := end - time.monotonic()) > 0:
            time.sleep(min(0.2, left))


class ConsumerOffsets:
    """:class:`~rankwatch.streams.runtime.checkpoint.Offsets` of a confluent-kafka consumer."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer

    def positions(self) -> dict[TopicPartitionKey, int]:
        consumer = self.consumer
        return {
            (tp.topic, tp.partition): tp.offset for tp in consumer.position(consumer.assignment())
        }

    def commit(self, offsets: dict[TopicPartitionKey, int]) -> bool:
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        try:
            self.consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            # A rebalance under way: the revocation that follows commits these positions.
            log.warning("commit failed, retried at the next snapshot: %s", exc.args[0])
            return False
        return True


class BatchRuntime(StreamCore):
    """The consumer loop over :class:`StreamCore`; see the module doc."""

    def __init__(
        self,
        options: WorkerOptions,
        layout: TopicLayout,
        *,
        consumer: Any,
        outbox: Outbox,
        table: StateTable,
        reads: Reads,
        rules: Any = None,
    ) -> None:
        super().__init__(
            options,
            layout,
            outbox=outbox,
            table=table,
            offsets=ConsumerOffsets(consumer),
            reads=reads,
            rules=rules,
        )
        self.consumer = consumer
        self.rebalanced = False
        self.stop = Stop()  # run() gets the one the signal handlers set
        self.broken = False  # an error stopped the loop: persist and commit nothing more
        #: (monotonic time of librdkafka's last statistics, whether a broker was up then).
        self._brokers: tuple[float, bool] | None = None
        self._unhealthy: str | None = None  # why the clock last did not count, for the log

    @property
    def producer(self) -> Any:
        return self.outbox.producer

    @classmethod
    def connect(
        cls, settings: Any, options: WorkerOptions, layout: TopicLayout, rules: Any = None
    ) -> BatchRuntime:
        """The runtime with real confluent-kafka clients for ``settings``' cluster."""
        from confluent_kafka import Consumer, Producer

        config = settings.confluent_config()
        kafka_log = logging.getLogger("rankwatch.worker.kafka")
        holder: list[BatchRuntime] = []
        outbox = Outbox(None, lambda: bool(holder) and holder[0].stop.requested)
        outbox.producer = Producer(
            {
                **config,
                "enable.idempotence": True,
                "acks": "all",
                # Alerts are few and their latency counts; state writes are flushed anyway.
                "linger.ms": 5,
                "on_delivery": outbox.delivered,
                "logger": kafka_log,
            }
        )
        session_ms = int(options.session_timeout_s * 1000)
        consumer = Consumer(
            {
                **config,
                "group.id": options.app_id,
                # range: partition N of steps and of logs go to the same member.
                "partition.assignment.strategy": "range",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": min(3000, session_ms // 3),
                # A short local queue: librdkafka's default prefetch (64 MB) puts seconds of a
                # big job's backlog ahead of another job's OOM record fetched a moment later;
                # 4 MB is a fraction of a second of work. Refilled at once when it runs low
                # (the default waits a second once the queue was full: the loop starves).
                "queued.max.messages.kbytes": 4096,
                "queued.min.messages": 20_000,
                "fetch.queue.backoff.ms": 5,
                # Ends of partitions, for merging the steps and logs by timestamp (alignment).
                "enable.partition.eof": True,
                # Whether a broker is up, for the worker's clock: silence of a job while the
                # worker is cut off from Kafka is not the job's (see tick_clock).
                "statistics.interval.ms": int(_CLOCK_S * 1000),
                "stats_cb": lambda raw: holder[0].kafka_stats(raw) if holder else None,
                "logger": kafka_log,
            }
        )
        table = ChangelogKV(config, changelog_topic(options.app_id), outbox)
        reads = KafkaReads(config, options.app_id, (layout.steps, layout.logs), layout.alerts)
        runtime = cls(
            options, layout, consumer=consumer, outbox=outbox, table=table, reads=reads,
            rules=rules,
        )  # fmt: skip
        holder.append(runtime)
        return runtime

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: Stop) -> None:
        """Consume until ``stop``; then persist, commit and leave the group."""
        options = self.options
        self.stop = stop
        self.consumer.subscribe(
            list(self.inputs),
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._lost,
        )
        log.info(
            # The demo waits for "worker <app-id>:" (the Faust runtime's line too).
            "worker %s: %s + %s (%d partitions) -> %s, dead letters -> %s (batch runtime)",
            options.app_id,
            self.layout.steps,
            self.layout.logs,
            self.layout.partitions,
            self.layout.alerts,
            self.layout.deadletter,
        )
        now = time.monotonic()
        next_snapshot = now + options.snapshot_interval_s
        next_rules = now + options.rules_poll_s
        next_stats = now + options.stats_interval_s
        next_clock = now + _CLOCK_S
        consume, size, within = self.consumer.consume, options.batch_size, options.batch_within_s
        poll = self.outbox.producer.poll
        checkpoint = self.checkpoint
        held = 0
        try:
            while not stop.requested:
                messages = consume(size, within)
                if messages or held:
                    held = self.process_batch(messages)
                poll(0)  # delivery reports
                checkpoint.advance()  # a snapshot planned in a forked process, if one is
                now = time.monotonic()
                if now >= next_snapshot or checkpoint.pending >= options.max_unacked:
                    checkpoint.begin()  # forked, or here and now (snapshot_fork)
                    next_snapshot = now + options.snapshot_interval_s
                if options.rules_file is not None and now >= next_rules:
                    self.reload_rules()  # between batches: no event sees half the rules
                    next_rules = now + options.rules_poll_s
                if now >= next_stats:
                    self.log_stats()
                    next_stats = now + options.stats_interval_s
                if now >= next_clock:
                    self.clock()
                    next_clock = now + _CLOCK_S
            checkpoint.commit()
        except BaseException:
            # The positions may cover messages of a batch cut short: committing them on the
            # way out (the revocation in close()) would skip those events for good.
            self.broken = True
            checkpoint.abandon()
            raise
        finally:
            # Leaves the group (the revocation callback persists what is left, if anything),
            # so the others get the partitions now rather than after the session timeout.
            self.consumer.close()
            self.outbox.producer.flush(30)
        self.log_stats()

    def process_batch(self, messages: list[Any]) -> int:
        """A batch from the consumer through the core; returns how many are held back."""
        if self.rebalanced:
            # Fetched for partitions that may have moved on: keep only those still ours.
            self.rebalanced = False
            owned = self.owned
            messages = [m for m in messages if m.partition() in owned]
        return self.process(messages, time.monotonic(), self._caught_up, eof=_PARTITION_EOF)

    def consumer_error(self, msg: Any) -> None:
        error = msg.error()
        if error.fatal():
            raise StreamsError(f"Kafka consumer: {error}")
        log.warning("Kafka consumer: %s", error)

    # -- the worker's clock ----------------------------------------------------------------

    def clock(self) -> None:
        """Judge the jobs that went quiet, on the wall clock, while this worker is healthy."""
        why = self.unhealthy()
        if why != self._unhealthy:
            if why:
                log.info("silence of jobs not counted: %s", why)
            elif self._unhealthy is not None:
                log.info("silence of jobs counted again")
            self._unhealthy = why
        self.tick_clock(healthy=not why)

    def unhealthy(self) -> str:
        """Why a job's silence would not be the job's now ("" when healthy): this worker must
        be caught up with every owned input partition, hold nothing back, and see a broker."""
        if self.broken:
            return "the worker stopped on an error"
        if self.aligner.held():
            return "input held back for alignment"
        brokers = self._brokers
        if brokers is not None:
            at, up = brokers
            if not up:
                return "no Kafka broker is up"
            if time.monotonic() - at > _STATS_STALE_S:
                return "no news from Kafka"
        for topic in range(len(self.inputs)):
            for partition in self.owned:
                if not self._at_end(topic, partition):
                    return f"behind on {self.inputs[topic]}[{partition}]"
        return ""

    def _at_end(self, topic: int, partition: int) -> bool:
        """Caught up with this input partition, or it holds nothing to consume."""
        return bool(self._caught_up(topic, partition, empty_is_end=True))

    def kafka_stats(self, raw: str) -> None:
        """librdkafka's statistics (every second): is any broker of the cluster up?"""
        try:
            stats = json.loads(raw)
        except ValueError:
            return
        brokers = stats.get("brokers", {})
        if self.metrics is not None:
            self.metrics.on_kafka_stats(stats)
        up = any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers.values())
        self._brokers = (time.monotonic(), up)

    def _caught_up(self, topic: int, partition: int, *, empty_is_end: bool = False) -> bool | None:
        """Whether this input partition's position is at the end offset the last fetch
        reported (no broker request); None while that end is not known yet. Before anything
        was consumed it is not (its messages, or its end, are on their way), unless
        ``empty_is_end`` and the partition holds nothing."""
        from confluent_kafka import TopicPartition

        tp = TopicPartition(self.inputs[topic], partition)
        try:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            (position,) = self.consumer.position([tp])
        except Exception:  # not fetched yet, or no longer assigned
            return None
        if high < 0:
            return None
        if position.offset < 0:
            return empty_is_end and high <= low
        return bool(position.offset >= high)

    # -- rebalances (librdkafka's callbacks, inside consume()) --------------------------------

    def _inputs_of(self, partitions: list[Any]) -> set[int]:
        return {tp.partition for tp in partitions if tp.topic in self.inputs}

    def _assigned(self, _consumer: Any, partitions: list[Any]) -> None:
        self.assign(self._inputs_of(partitions))
        self.rebalanced = True

    def _revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        # Their jobs stay until the next assignment shows which partitions really left (the
        # range assignor often gives them back). After an error, nothing more is committed.
        self.revoke(self._inputs_of(partitions), persist=not self.broken)
        self.rebalanced = True

    def _lost(self, _consumer: Any, partitions: list[Any]) -> None:
        self.lose(self._inputs_of(partitions))
        self.rebalanced = True
