"""The Faust worker runtime (`rankwatch worker --runtime faust`): steps and logs from Kafka
through the engine, alerts back to Kafka. The default runtime is
:mod:`rankwatch.streams.batch_worker` (same pipeline and state, without Faust).

One Faust app, one agent over BOTH input topics (one engine must see a job's steps and its
logs in one place; the producers key both by job_id, so a job's two streams share a partition
number and land on the same worker). Messages are taken in batches (``noack_take``) to
amortise Faust's per-event cost, decoded with the contract's own ``decode`` (raw bytes, never
Faust models), and run through :class:`~rankwatch.streams.pipeline.Pipeline`. Alerts go to the
alerts topic keyed by job_id; messages that do not decode go to the dead-letter topic with the
reason, and the worker carries on.

State and restarts
------------------
Engine state is persisted per job in a Faust table (``engine-state``, a compacted changelog
topic ``<app-id>-engine-state-changelog``) in parts: a head per job and one value per chunk of
512 ranks, written to the changelog partition the job's events come from.

Persisting is periodic, not per event: a 16,384-rank job holds megabytes of state, and
rewriting it for each of its 16k events a second is out of the question. Every
``snapshot_interval`` seconds the worker (1) flushes the producer, so the alerts already
emitted are on the brokers before any state that records them as sent, (2) writes the head and
the dirty rank chunks of each job that had events, and (3) only then acks the events those
snapshots cover. Faust commits only acked offsets, and flushes the producer (the snapshots)
before it commits. So the committed offset never runs ahead of the persisted state.

The trade-off: a crash loses the in-memory state since the last snapshot, and the restarted
worker replays at most the events since then (``snapshot_interval`` seconds' worth, plus the
commit interval). Replaying them is a no-op for the state (a rank drops steps at or below its
last applied step; recent log records are recognised) and any alert re-fired in the gap has
the same deterministic ``alert_id``, which sinks deduplicate. A shorter interval means less
replay and more write load; the unacked events in between are held in memory.

Restoring is lazy: Faust recovers the table's partitions on assignment before the agent gets
events, and the first event of a job the engine does not hold loads the job from the table.
On revocation the jobs of the revoked partitions are dropped (their new owner loads them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from rankwatch.schemas import encode
from rankwatch.streams.pipeline import DeadLetter, Pipeline
from rankwatch.streams.snapshots import SnapshotStore
from rankwatch.streams.worker_common import (
    TABLE_NAME,
    Counters,
    RulesWatcher,
    StatsLine,
    TopicLayout,
    WorkerOptions,
    inspect_topics,
    load_rules_file,
    log_alert,
    new_engine,
    restore_job,
)

__all__ = ["Runtime", "TopicLayout", "WorkerOptions", "build_app", "inspect_topics", "run_worker"]

log = logging.getLogger("rankwatch.worker")


class _TableKV:
    """:class:`~rankwatch.streams.snapshots.KeyValue` over a Faust table of raw bytes.

    Writes go to an explicit changelog partition (the job's input partition) rather than
    through ``table[key] = value``, which takes the partition from the *current* event: in a
    batch that is the last event of the batch, possibly another job's partition.
    """

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: bytes) -> bytes | None:
        value = self.table.data.get(key)
        return value if isinstance(value, bytes) else None

    def put(self, key: bytes, value: bytes, partition: int | None) -> None:
        self.table.send_changelog(partition, key, value)
        self.table.data[key] = value


class Runtime:
    """The worker's state between Faust callbacks: engine, pipeline, unacked events."""

    def __init__(
        self,
        app: Any,
        table: Any,
        alerts: Any,
        dead: Any,
        layout: TopicLayout,
        options: WorkerOptions,
        rules: Any = None,
    ) -> None:
        self.app = app
        self.alerts = alerts
        self.dead = dead
        self.layout = layout
        self.options = options
        # rules: a RuleSet (rankwatch.streams.rules), loaded and checked before start-up.
        self.rules = RulesWatcher(options.rules_file, rules)
        self.engine = new_engine(rules)
        self.store = SnapshotStore(_TableKV(table), self.engine, options.ranks_per_chunk)
        self.pipeline = Pipeline(
            self.engine, restore=self._restore, ranks_per_chunk=options.ranks_per_chunk
        )
        self.stream: Any = None
        self.pending: list[Any] = []  # events processed but not acked: no snapshot covers them
        self.lock = asyncio.Lock()
        self.counters = Counters()
        self.stats = StatsLine()

    def _restore(self, job_id: str) -> Any:
        return restore_job(self.store, job_id)

    async def on_batch(self, stream: Any, events: list[Any]) -> None:
        """Process one batch; alerts and dead letters are sent, events wait for a snapshot."""
        self.stream = stream
        handle = self.pipeline.handle
        async with self.lock:
            # Events of partitions revoked while they sat in Faust's buffers belong to the new
            # owner now: processing them here would rebuild their jobs from nothing.
            assigned = self.app.consumer.assignment()
            kept: list[Any] = []
            for event in events:
                message = event.message
                if message.tp not in assigned:
                    continue
                kept.append(event)
                result = handle(
                    event.value,
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    key=message.key,
                )
                if isinstance(result, DeadLetter):
                    log.warning(
                        "dead letter %s[%d]@%d: %s",
                        message.topic,
                        message.partition,
                        message.offset,
                        result.error,
                    )
                    await self.dead.send(key=message.key, value=result.to_bytes())
                    self.counters.dead += 1
                    continue
                for alert in result:
                    log_alert(alert)
                    await self.alerts.send(key=alert.job_id.encode(), value=encode(alert))
                    self.counters.alerts += 1
            self.pending.extend(kept)
        if len(self.pending) >= self.options.max_unacked:
            await self.snapshot()

    async def tick_clock(self) -> None:
        """Judge the jobs that went quiet on the wall clock (see ``Engine.advance_clock``),
        counting only time in which this worker is caught up and reaches the brokers."""
        healthy = await self._caught_up()
        async with self.lock:
            alerts = self.engine.advance_clock(time.time(), healthy=healthy)
            self.pipeline.note_released()
            for alert in alerts:
                self.pipeline.dirty.setdefault(alert.job_id, set())  # persist what changed
                log_alert(alert)
                await self.alerts.send(key=alert.job_id.encode(), value=encode(alert))
                self.counters.alerts += 1

    async def _caught_up(self) -> bool:
        """Every owned input partition read to its end, as the brokers say now (a request:
        no answer within two seconds means cut off, and then no silence counts)."""
        consumer = self.app.consumer
        inputs = {self.layout.steps, self.layout.logs}
        tps = [tp for tp in consumer.assignment() if tp.topic in inputs]
        try:
            highs = await asyncio.wait_for(consumer.highwaters(*tps), timeout=2.0)
            for tp in tps:
                position = await consumer.position(tp)
                if position is None or position < highs.get(tp, 0):
                    return False
        except Exception:  # no answer, or partitions moving: not now
            return False
        return True

    async def snapshot(self) -> None:
        """Persist the jobs touched since the last snapshot, then ack the events it covers."""
        async with self.lock:
            if not self.pending:
                return
            started = time.perf_counter()
            pending, self.pending = self.pending, []
            dirty = self.pipeline.take_dirty()
            # Alerts first: once the state says an incident was alerted, the alert must be
            # on the brokers, or a crash would lose it for good.
            await self.app.producer.flush()
            written = 0
            for job_id, chunks in dirty.items():
                job = self.engine.jobs.get(job_id)
                if job is not None:
                    written += self.store.save(job, chunks, self.pipeline.partition_of.get(job_id))
            stream = self.stream
            for event in pending:
                await stream.ack(event)
            self.counters.snapshots += 1
            self.counters.snapshot_bytes += written
            log.debug(
                "snapshot: %d jobs, %d bytes, %d events acked, %.1f ms",
                len(dirty),
                written,
                len(pending),
                (time.perf_counter() - started) * 1000,
            )

    async def on_revoked(self, partitions: set[int]) -> None:
        """Forget the jobs of partitions now owned by another worker."""
        async with self.lock:  # not in the middle of a batch or a snapshot
            self._drop(partitions)

    def _drop(self, partitions: set[int]) -> None:
        gone = self.pipeline.forget_partitions(partitions)
        for job_id in gone:
            self.store.forget(job_id)
        # Not acked, so not committed: the new owner processes them again.
        self.pending = [e for e in self.pending if e.message.partition not in partitions]
        if gone:
            log.info("partitions %s revoked: dropped %d jobs", sorted(partitions), len(gone))

    async def reload_rules(self) -> None:
        """Use the rules file anew if it changed (and validates)."""
        new = self.rules.changed()
        if new is not None:
            async with self.lock:  # between batches: no event sees half the rules
                new.install(self.engine)

    def log_stats(self) -> None:
        self.stats.log(self.pipeline.stats.events, len(self.engine.jobs), self.counters)


def build_app(
    settings: Any, options: WorkerOptions, layout: TopicLayout, rules: Any = None
) -> tuple[Any, Runtime]:
    """The Faust app with its agent, timers and rebalance hooks; faust is imported here only."""
    import faust

    app = faust.App(
        options.app_id,
        broker=settings.faust_broker_url(),
        broker_credentials=settings.faust_credentials(),
        datadir=options.data_dir,
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=layout.partitions,
        topic_replication_factor=layout.replication,
        table_standby_replicas=0,
        producer_acks=-1,
        # Faust's default waits, at shutdown and at each rebalance, until every event taken is
        # acked; ours are acked by snapshots, which have stopped by then: it would wait forever.
        # Without it, only acked (= persisted) offsets are committed, which is what we want.
        stream_wait_empty=False,
        broker_session_timeout=options.session_timeout_s,
        broker_heartbeat_interval=min(3.0, options.session_timeout_s / 3),
    )

    def raw_topic(*names: str) -> Any:
        # Raw bytes both ways: values are decoded by the contract's codec, never Faust models.
        return app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    source = raw_topic(layout.steps, layout.logs)
    alerts = raw_topic(layout.alerts)
    dead = raw_topic(layout.deadletter)
    table = app.Table(
        TABLE_NAME,
        partitions=layout.partitions,
        # bytes both ways makes Faust use its raw codec: values are state_codec's bytes.
        key_type=bytes,
        value_type=bytes,
    )
    runtime = Runtime(app, table, alerts, dead, layout, options, rules)

    @app.agent(source, name="detect")
    async def detect(stream: Any) -> None:
        async for events in stream.noack_take(options.batch_size, within=options.batch_within_s):
            await runtime.on_batch(stream, events)

    @app.timer(options.snapshot_interval_s, name="snapshot")  # type: ignore[untyped-decorator]
    async def snapshot() -> None:
        await runtime.snapshot()

    if options.rules_file is not None:

        @app.timer(options.rules_poll_s, name="rules")  # type: ignore[untyped-decorator]
        async def rules_timer() -> None:
            await runtime.reload_rules()

    @app.timer(1.0, name="clock")  # type: ignore[untyped-decorator]
    async def clock() -> None:
        await runtime.tick_clock()

    @app.timer(options.stats_interval_s, name="stats")  # type: ignore[untyped-decorator]
    async def stats() -> None:
        runtime.log_stats()

    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        inputs = {layout.steps, layout.logs}
        await runtime.on_revoked({tp.partition for tp in revoked if tp.topic in inputs})

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    @app.task  # type: ignore[untyped-decorator]
    async def hello() -> None:
        # Logged from inside the app: Faust sets logging up only when the worker starts.
        log.info(
            "worker %s: %s + %s (%d partitions) -> %s, dead letters -> %s",
            options.app_id,
            layout.steps,
            layout.logs,
            layout.partitions,
            layout.alerts,
            layout.deadletter,
        )

    return app, runtime


def run_worker(settings: Any, options: WorkerOptions) -> int:
    """Run the Faust runtime until SIGTERM/SIGINT; return the exit status."""
    rules = load_rules_file(options.rules_file)  # an invalid file: refuse to start, say why
    layout = inspect_topics(settings)
    app, _ = build_app(settings, options, layout, rules)
    from faust import Worker

    if options.loglevel != "debug":
        # Faust narrates every rebalance and recovery step in tables at INFO: keep the
        # worker's own lines readable; its warnings and errors still show.
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(logging.WARNING)
    else:
        # Even at debug: aiokafka.conn dumps every request it sends, and the request of a
        # SASL PLAIN handshake carries the password in clear.
        logging.getLogger("aiokafka.conn").setLevel(logging.INFO)
    worker = Worker(app, loglevel=options.loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
