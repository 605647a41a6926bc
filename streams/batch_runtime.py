"""The batch runtime's loop: consumer, producer, engine, snapshot-then-commit, rebalances.

The design, and what a crash or a rebalance costs: :mod:`rankwatch.streams.batch_worker`.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from typing import Any

from rankwatch.schemas import encode
from rankwatch.streams.alignment import InputAligner
from rankwatch.streams.changelog import ChangelogKV, published_alerts
from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.pipeline import DeadLetter, Pipeline
from rankwatch.streams.snapshots import SnapshotStore
from rankwatch.streams.worker_common import (
    Counters,
    RulesWatcher,
    StatsLine,
    TopicLayout,
    WorkerOptions,
    changelog_topic,
    log_alert,
    new_engine,
    restore_job,
)

log = logging.getLogger("rankwatch.worker")

#: How far before a partition's last snapshot the alerts topic is read back at assignment:
#: the previous owner's clock may differ from the broker's.
_ALERTS_MARGIN_MS = 60_000
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


class BatchRuntime:
    """Consumer, producer, engine and the snapshot-then-commit cycle; see the module doc."""

    def __init__(
        self, settings: Any, options: WorkerOptions, layout: TopicLayout, rules: Any = None
    ) -> None:
        from confluent_kafka import Consumer, Producer

        self.options = options
        self.layout = layout
        config = settings.confluent_config()
        kafka_log = logging.getLogger("rankwatch.worker.kafka")
        self.failed: str | None = None  # the first delivery that failed since the last check
        self.producer = Producer(
            {
                **config,
                "enable.idempotence": True,
                "acks": "all",
                # Alerts are few and their latency counts; state writes are flushed anyway.
                "linger.ms": 5,
                "on_delivery": self._delivered,
                "logger": kafka_log,
            }
        )
        session_ms = int(options.session_timeout_s * 1000)
        self.consumer = Consumer(
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
                "stats_cb": self._kafka_stats,
                "logger": kafka_log,
            }
        )
        self.kv = ChangelogKV(config, changelog_topic(options.app_id), self.producer)
        self.rules = RulesWatcher(options.rules_file, rules)
        self.engine = new_engine(rules)
        self.store = SnapshotStore(self.kv, self.engine, options.ranks_per_chunk)
        self.pipeline = Pipeline(
            self.engine, restore=self._restore, ranks_per_chunk=options.ranks_per_chunk
        )
        self.inputs = (layout.steps, layout.logs)
        self._input_index = {topic: i for i, topic in enumerate(self.inputs)}
        #: A job's steps and logs, merged by timestamp as they were produced (see alignment).
        self.aligner = InputAligner(len(self.inputs))
        self.owned: set[int] = set()  # input partitions whose state is loaded here
        #: (alert_id, status) already on the alerts topic, sent after the snapshot that the
        #: state of newly assigned partitions comes from: their replay must not resend them.
        self.published: set[tuple[str, str]] = set()
        self.rebalanced = False
        self.unacked = 0  # events processed since the last commit
        self.counters = Counters()
        self.stats = StatsLine()
        #: Prometheus metrics (rankwatch.streams.metrics) when --metrics-port is given.
        self.metrics: Any = None
        self.stop = Stop()  # run() gets the one the signal handlers set
        self.broken = False  # an error stopped the loop: persist and commit nothing more
        #: (monotonic time of librdkafka's last statistics, whether a broker was up then).
        self._brokers: tuple[float, bool] | None = None
        self._unhealthy: str | None = None  # why the clock last did not count, for the log

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
        held = 0
        try:
            while not stop.requested:
                messages = consume(size, within)
                if messages or held:
                    held = self.process(messages)
                self.producer.poll(0)  # delivery reports
                now = time.monotonic()
                if now >= next_snapshot or self.unacked >= options.max_unacked:
                    self.snapshot()
                    next_snapshot = now + options.snapshot_interval_s
                if options.rules_file is not None and now >= next_rules:
                    new = self.rules.changed()
                    if new is not None:  # between batches: no event sees half the rules
                        new.install(self.engine)
                    next_rules = now + options.rules_poll_s
                if now >= next_stats:
                    self.log_stats()
                    next_stats = now + options.stats_interval_s
                if now >= next_clock:
                    self.tick_clock()
                    next_clock = now + _CLOCK_S
            self.snapshot()
        except BaseException:
            # The positions may cover messages of a batch cut short: committing them on the
            # way out (the revocation in close()) would skip those events for good.
            self.broken = True
            raise
        finally:
            # Leaves the group (the revocation callback persists what is left, if anything),
            # so the others get the partitions now rather than after the session timeout.
            self.consumer.close()
            self.producer.flush(30)
        self.log_stats()

    def process(self, messages: list[Any]) -> int:
        """Every message through the pipeline, in timestamp order across the input topics;
        alerts and dead letters sent, not yet flushed. Returns how many are held back."""
        if self.rebalanced:
            # Fetched for partitions that may have moved on: keep only those still ours.
            self.rebalanced = False
            owned = self.owned
            messages = [m for m in messages if m.partition() in owned]
        aligner, index = self.aligner, self._input_index
        for msg in messages:
            error = msg.error()
            if error is None:
                aligner.add(
                    index[msg.topic()], msg.partition(), msg.timestamp()[1], msg.offset(), msg
                )
            elif error.code() == _PARTITION_EOF:
                aligner.mark_end(index[msg.topic()], msg.partition())
            else:
                self._consumer_error(msg)
        ready = aligner.ready(time.monotonic(), self._caught_up)
        handle = self.pipeline.handle
        produce = self._send
        for msg in ready:
            value = msg.value()
            result = handle(b"" if value is None else value, partition=msg.partition())
            if not result:  # the common case: an event, no alert
                continue
            if type(result) is DeadLetter:
                result.topic, result.offset, result.key = msg.topic(), msg.offset(), msg.key()
                log.warning(
                    "dead letter %s[%d]@%d: %s",
                    result.topic,
                    result.partition,
                    result.offset,
                    result.error,
                )
                produce(self.layout.deadletter, result.to_bytes(), result.key)
                self.counters.dead += 1
                continue
            self._publish(result)  # type: ignore[arg-type]
        self.unacked += len(ready)
        return aligner.held()

    def _publish(self, alerts: list[Any]) -> None:
        for alert in alerts:
            if self.published and (alert.alert_id, alert.status) in self.published:
                log.info("alert %s %s already published", alert.alert_id, alert.status)
                continue
            log_alert(alert)
            self._send(self.layout.alerts, encode(alert), alert.job_id.encode())
            self.counters.alerts += 1
            if self.metrics is not None:
                self.metrics.on_alert(alert)

    # -- the worker's clock ----------------------------------------------------------------

    def tick_clock(self) -> None:
        """Judge the jobs that went quiet, on the wall clock, while this worker is healthy."""
        engine = self.engine
        why = self.unhealthy()
        if why != self._unhealthy:
            if why:
                log.info("silence of jobs not counted: %s", why)
            elif self._unhealthy is not None:
                log.info("silence of jobs counted again")
            self._unhealthy = why
        alerts = engine.advance_clock(time.time(), healthy=not why)
        pipeline = self.pipeline
        pipeline.note_released()  # held steps applied at a quiet tick: their ranks changed
        if alerts:
            for alert in alerts:  # the job's state changed: persist it with the next snapshot
                pipeline.dirty.setdefault(alert.job_id, set())
            self._publish(alerts)
            self.unacked += 1

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

    def _kafka_stats(self, raw: str) -> None:
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

    def snapshot(self) -> None:
        """Flush alerts, persist the touched jobs, flush, then commit what was processed."""
        if not self.unacked:
            return
        started = time.perf_counter()
        dirty = self.pipeline.take_dirty()
        # Alerts and dead letters before the state that records them as sent.
        if not self._flush():
            return
        written = 0
        for job_id, chunks in dirty.items():
            job = self.engine.jobs.get(job_id)
            if job is not None:
                written += self.store.save(job, chunks, self.pipeline.partition_of.get(job_id))
        if not self._flush():
            return
        committed = self._commit()
        self.counters.snapshots += 1
        self.counters.snapshot_bytes += written
        if self.metrics is not None:
            self.metrics.on_snapshot(time.perf_counter() - started)
        log.debug(
            "snapshot: %d jobs, %d bytes, %d events %s, %.1f ms",
            len(dirty),
            written,
            self.unacked,
            "committed" if committed else "NOT committed",
            (time.perf_counter() - started) * 1000,
        )
        if committed:
            self.unacked = 0

    def log_stats(self) -> None:
        self.stats.log(self.pipeline.stats.events, len(self.engine.jobs), self.counters)

    # -- rebalances --------------------------------------------------------------------------

    def _assigned(self, _consumer: Any, partitions: list[Any]) -> None:
        new = {tp.partition for tp in partitions if tp.topic in self.inputs}
        self._drop(self.owned - new)
        added = new - self.owned
        if added:  # before any of their events is processed
            snapshotted = self.kv.restore(added)
            # Alerts sent after a partition's last snapshot are not in its state: its replay
            # re-fires them. A partition with events but no snapshot at all (a crash before
            # the first one) may re-fire any alert on the topic; one with nothing to replay
            # re-fires none.
            stateless = added - snapshotted.keys()
            if stateless and self._replays(stateless):
                self.published |= published_alerts(self.kv.config, self.layout.alerts, None)
            elif snapshotted:
                since = min(snapshotted.values()) - _ALERTS_MARGIN_MS
                self.published |= published_alerts(self.kv.config, self.layout.alerts, since)
        self.owned = new
        self.rebalanced = True
        log.info("partitions assigned: %s (state read for %s)", sorted(new), sorted(added))

    def _replays(self, partitions: set[int]) -> bool:
        """Whether any of these input partitions has events past the group's commit."""
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(t, p) for t in self.inputs for p in sorted(partitions)]
        try:
            for tp in self.consumer.committed(tps, timeout=30):
                low, high = self.consumer.get_watermark_offsets(tp, timeout=30)
                if max(tp.offset, low) < high:  # no commit (offset < 0): from the start
                    return True
        except KafkaException as exc:
            log.warning("partitions %s: %s; reading back every alert", sorted(partitions), exc)
            return True
        return False

    def _revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        # Persist and commit while the partitions are still ours: the next owner starts from
        # this state and re-fires nothing. Their jobs stay until the next assignment shows
        # which partitions really left (the range assignor often gives them back).
        if not self.broken:
            self.snapshot()
        # What is held here is read again from the commit (at or before it) by whoever owns
        # the partitions next, this worker included: the range assignor revokes them all.
        self.aligner.drop({tp.partition for tp in partitions if tp.topic in self.inputs})
        self.rebalanced = True

    def _lost(self, _consumer: Any, partitions: list[Any]) -> None:
        lost = {tp.partition for tp in partitions if tp.topic in self.inputs}
        log.warning("partitions %s lost (evicted from the group): dropped uncommitted", lost)
        self._drop(lost)
        self.aligner.drop(lost)
        self.owned -= lost
        self.rebalanced = True

    def _drop(self, partitions: set[int]) -> None:
        if not partitions:
            return
        gone = self.pipeline.forget_partitions(partitions)
        for job_id in gone:
            self.store.forget(job_id)
        self.kv.drop(partitions)
        log.info("partitions %s gone: dropped %d jobs", sorted(partitions), len(gone))

    # -- Kafka plumbing ----------------------------------------------------------------------

    def _restore(self, job_id: str) -> Any:
        return restore_job(self.store, job_id)

    def _send(self, topic: str, value: bytes, key: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self.producer.poll(0.1)

    def _delivered(self, error: Any, msg: Any) -> None:
        if error is not None and self.failed is None:
            self.failed = f"{msg.topic()}[{msg.partition()}]: {error}"

    def _flush(self) -> bool:
        """Wait until every message sent is on the brokers; False if stopped meanwhile."""
        waited = 0
        while left := self.producer.flush(1.0):
            if self.stop.requested:  # Kafka away at shutdown: no commit, the restart replays
                return False
            waited += 1
            if waited % 30 == 0:
                log.warning("%d messages still waiting for Kafka after %d s", left, waited)
        if self.failed:
            # Committing now could skip an alert that never reached the brokers: stop, and
            # let the restart replay from the last commit.
            raise StreamsError(f"producer could not deliver: {self.failed}")
        return True

    def _commit(self) -> bool:
        from confluent_kafka import KafkaException

        positions = self.consumer.position(self.consumer.assignment())
        held = self.aligner.first_held()
        if held:  # consumed but not processed yet: a restart must read them again
            index = self._input_index
            for tp in positions:
                first = held.get((index.get(tp.topic, -1), tp.partition))
                if first is not None and (tp.offset < 0 or first < tp.offset):
                    tp.offset = first
        offsets = [tp for tp in positions if tp.offset >= 0]
        if not offsets:
            return True
        started = time.perf_counter()
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # A rebalance under way: the revocation that follows commits these positions.
            log.warning("commit failed, retried at the next snapshot: %s", exc.args[0])
            return False
        if self.metrics is not None:
            self.metrics.on_commit(time.perf_counter() - started)
        return True

    def _consumer_error(self, msg: Any) -> None:
        error = msg.error()
        if error.fatal():
            raise StreamsError(f"Kafka consumer: {error}")
        log.warning("Kafka consumer: %s", error)
