"""The Faust worker runtime (`rankwatch worker --runtime faust`): steps and logs from Kafka
through the engine, alerts back to Kafka. The default runtime is
:mod:`rankwatch.streams.batch_worker` (same core and state, without Faust's per-message cost).

One Faust app, one agent over BOTH input topics (one engine must see a job's steps and its
logs in one place; the producers key both by job_id, so a job's two streams share a partition
number and land on the same worker). Faust only consumes: its agent takes messages in batches
(``noack_take``) and hands them to the runtime core the batch runtime runs on
(:class:`~rankwatch.streams.runtime.core.StreamCore`): steps and logs merged by timestamp,
the pipeline, alerts and dead letters through one confluent-kafka producer, engine state in
the changelog topic ``<app-id>-engine-state-changelog`` (:mod:`~rankwatch.streams.runtime.
changelog`, the very topic and format Faust's table used: switching runtimes keeps the state).

Commits: the same :class:`~rankwatch.streams.runtime.checkpoint.Checkpoint` as the batch
runtime, every ``snapshot_interval`` seconds and before partitions are revoked: alerts
flushed, the changed jobs' state written and flushed, then the offsets of what was processed
(no further than a message still held for the merge) committed through Faust's consumer.
Events are never acked, so Faust itself commits nothing. The checkpoint runs on a thread
(its flushes block), holding the lock that keeps the agent and the clock out meanwhile.

Partitions assigned: their changelog partitions are read and the alerts published since their
last snapshot read back, as in the batch runtime, so a restart or a rebalance publishes no
alert twice; revoked: checkpoint first, then the jobs of partitions not assigned back go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from rankwatch.streams.runtime.changelog import ChangelogKV, KafkaReads, ensure_changelog
from rankwatch.streams.runtime.checkpoint import Outbox, TopicPartitionKey
from rankwatch.streams.runtime.common import (
    TopicLayout,
    WorkerOptions,
    changelog_topic,
    inspect_topics,
    load_rules_file,
)
from rankwatch.streams.runtime.core import Reads, StateTable, StreamCore

__all__ = ["Runtime", "TopicLayout", "WorkerOptions", "build_app", "inspect_topics", "run_worker"]

log = logging.getLogger("rankwatch.worker")


class _Message:
    """A Faust event seen as a confluent-kafka ``Message``: what the core reads of one."""

    __slots__ = ("_key", "_offset", "_partition", "_topic", "_ts", "_value")

    def __init__(self, event: Any) -> None:
        message = event.message
        self._value = event.value
        self._topic = message.topic
        self._partition = message.partition
        self._offset = message.offset
        self._key = message.key
        # Faust gives the Kafka timestamp in seconds; the merge orders by milliseconds.
        self._ts = round(message.timestamp * 1000)

    def value(self) -> bytes:
        return self._value  # type: ignore[no-any-return]

    def topic(self) -> str:
        return self._topic  # type: ignore[no-any-return]

    def partition(self) -> int:
        return self._partition  # type: ignore[no-any-return]

    def offset(self) -> int:
        return self._offset  # type: ignore[no-any-return]

    def key(self) -> bytes | None:
        return self._key  # type: ignore[no-any-return]

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)

    def error(self) -> None:
        return None


class FaustOffsets:
    """:class:`~rankwatch.streams.runtime.checkpoint.Offsets` over Faust's consumer: positions
    are what the agent received; commits go through the consumer, from the checkpoint's
    thread into the app's loop."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def positions(self) -> dict[TopicPartitionKey, int]:
        assigned = {(tp.topic, tp.partition) for tp in self.runtime.app.consumer.assignment()}
        return {k: v for k, v in self.runtime.received.items() if k in assigned}

    def commit(self, offsets: dict[TopicPartitionKey, int]) -> bool:
        from faust.types import TP

        runtime = self.runtime
        tps = {TP(t, p): o for (t, p), o in offsets.items()}
        done = asyncio.run_coroutine_threadsafe(runtime.app.consumer._commit(tps), runtime.loop)
        try:
            return bool(done.result(60))
        except Exception as exc:  # a rebalance under way: the revocation commits
            log.warning("commit failed, retried at the next snapshot: %r", exc)
            return False


class Runtime(StreamCore):
    """The core between Faust's callbacks; see the module docstring."""

    def __init__(
        self,
        app: Any,
        layout: TopicLayout,
        options: WorkerOptions,
        *,
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
            offsets=FaustOffsets(self),
            reads=reads,
            rules=rules,
        )
        self.app = app
        self.loop: Any = None  # the app's event loop, once running
        self.lock = asyncio.Lock()
        #: (topic, partition) -> the offset after the last message the agent received.
        self.received: dict[TopicPartitionKey, int] = {}
        #: (topic, partition) -> (the group's start offset there, its end) at assignment.
        self.starts: dict[TopicPartitionKey, tuple[int, int]] = {}
        self.stopping = False

    async def on_batch(self, events: list[Any]) -> None:
        """Take one batch through the core; alerts and dead letters are sent, not flushed."""
        async with self.lock:
            # Events of partitions revoked while they sat in Faust's buffers belong to the new
            # owner now: processing them here would rebuild their jobs from nothing.
            assigned = self.app.consumer.assignment()
            received = self.received
            messages = []
            for event in events:
                message = event.message
                if message.tp in assigned:
                    messages.append(_Message(event))
                    received[(message.topic, message.partition)] = message.offset + 1
            self.process(messages, time.monotonic(), self._caught_up)
        if self.checkpoint.pending >= self.options.max_unacked:
            await self.snapshot()

    def _caught_up(self, topic: int, partition: int) -> bool | None:
        """Whether the agent has received all the broker had on this input partition at the
        consumer's last fetch; None while that is not known."""
        from faust.types import TP

        name = self.inputs[topic]
        try:
            high = self.app.consumer.highwater(TP(name, partition))
        except Exception:  # not fetched yet, or no longer assigned
            return None
        if high is None or high < 0:
            return None
        seen = self.received.get((name, partition))
        if seen is None:
            start = self.starts.get((name, partition))
            return None if start is None else start[0] >= high
        return bool(seen >= high)

    async def clock(self) -> None:
        """Hand on what waited for the merge, then judge the jobs that went quiet on the wall
        clock, counting only time in which this worker is caught up and reaches the brokers."""
        healthy = await self._all_caught_up()
        async with self.lock:
            if self.aligner.held():
                self.process([], time.monotonic(), self._caught_up)
                healthy = healthy and not self.aligner.held()
            self.tick_clock(healthy)

    async def _all_caught_up(self) -> bool:
        """Every owned input partition read to its end, as the brokers say now (a request:
        no answer within two seconds means cut off, and then no silence counts)."""
        consumer = self.app.consumer
        inputs = set(self.inputs)
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
        """The checkpoint (:class:`~rankwatch.streams.runtime.checkpoint.Checkpoint`), on a
        thread: its flushes block, the app's loop must not."""
        async with self.lock:
            if self.checkpoint.pending:
                await asyncio.to_thread(self.checkpoint.commit)

    async def on_assigned(self, partitions: set[int]) -> None:
        """Read the state and published alerts of partitions new here (Faust holds their
        events back until this returns)."""
        async with self.lock:
            await asyncio.to_thread(self._assign, partitions)

    def _assign(self, partitions: set[int]) -> None:
        added = partitions - self.owned
        self.assign(partitions)
        self.received = {k: v for k, v in self.received.items() if k[1] in partitions}
        if added:
            try:
                self.starts.update(self.reads.starts(added))
            except Exception as exc:  # the merge then waits up to its limit instead
                log.warning("partitions %s: start offsets unknown: %r", sorted(added), exc)

    async def on_revoked(self, partitions: set[int]) -> None:
        """Checkpoint while the partitions are still ours; forget what is held for them."""
        async with self.lock:
            await asyncio.to_thread(self.revoke, partitions)

    async def reload_rules_async(self) -> None:
        async with self.lock:  # between batches: no event sees half the rules
            self.reload_rules()


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
        # Faust's default waits, at shutdown and at each rebalance, until every event taken is
        # acked; ours are never acked (the checkpoint commits): it would wait forever.
        stream_wait_empty=False,
        broker_session_timeout=options.session_timeout_s,
        broker_heartbeat_interval=min(3.0, options.session_timeout_s / 3),
    )
    # Raw bytes: values are decoded by the contract's codec, never Faust models.
    source = app.topic(
        layout.steps,
        layout.logs,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    runtime = connect(app, settings, options, layout, rules)

    @app.agent(source, name="detect")
    async def detect(stream: Any) -> None:
        runtime.loop = asyncio.get_running_loop()
        async for events in stream.noack_take(options.batch_size, within=options.batch_within_s):
            await runtime.on_batch(events)

    @app.timer(options.snapshot_interval_s, name="snapshot")  # type: ignore[untyped-decorator]
    async def snapshot() -> None:
        await runtime.snapshot()

    if options.rules_file is not None:

        @app.timer(options.rules_poll_s, name="rules")  # type: ignore[untyped-decorator]
        async def rules_timer() -> None:
            await runtime.reload_rules_async()

    @app.timer(1.0, name="clock")  # type: ignore[untyped-decorator]
    async def clock() -> None:
        await runtime.clock()

    @app.timer(options.stats_interval_s, name="stats")  # type: ignore[untyped-decorator]
    async def stats() -> None:
        runtime.log_stats()

    inputs = {layout.steps, layout.logs}

    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        runtime.loop = asyncio.get_running_loop()
        await runtime.on_assigned({tp.partition for tp in assigned if tp.topic in inputs})

    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        await runtime.on_revoked({tp.partition for tp in revoked if tp.topic in inputs})

    async def on_shutdown(sender: Any, **_: Any) -> None:
        # The consumer has stopped: nothing more is committed; what was sent is flushed
        # (a flush that cannot complete gives up, the restart replays).
        runtime.stopping = True
        await asyncio.to_thread(runtime.outbox.producer.flush, 10)

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]

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


def connect(
    app: Any, settings: Any, options: WorkerOptions, layout: TopicLayout, rules: Any
) -> Runtime:
    """The runtime with its confluent-kafka producer and the changelog store, as the batch
    runtime has them (:meth:`~rankwatch.streams.runtime.batch.BatchRuntime.connect`)."""
    from confluent_kafka import Producer

    config = settings.confluent_config()
    holder: list[Runtime] = []
    outbox = Outbox(None, lambda: bool(holder) and holder[0].stopping)
    outbox.producer = Producer(
        {
            **config,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "on_delivery": outbox.delivered,
            "logger": logging.getLogger("rankwatch.worker.kafka"),
        }
    )
    table = ChangelogKV(config, changelog_topic(options.app_id), outbox)
    reads = KafkaReads(config, options.app_id, (layout.steps, layout.logs), layout.alerts)
    runtime = Runtime(app, layout, options, outbox=outbox, table=table, reads=reads, rules=rules)
    holder.append(runtime)
    return runtime


def run_worker(settings: Any, options: WorkerOptions) -> int:
    """Run the Faust runtime until SIGTERM/SIGINT; return the exit status."""
    rules = load_rules_file(options.rules_file)  # an invalid file: refuse to start, say why
    layout = inspect_topics(settings)
    app, runtime = build_app(settings, options, layout, rules)
    runtime.store.fit_limit(
        ensure_changelog(settings.confluent_config(), changelog_topic(options.app_id), layout)
    )
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
