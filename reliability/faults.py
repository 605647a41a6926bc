"""The faults, one function each: run, inject, count. Each returns its :class:`Tally` rows.

Every function takes the broker it may use (or builds its own cluster where the fault is the
broker itself), a scratch folder and its sizes, and stops everything it started.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rankwatch.schemas import Alert, StepEvent, encode
from reliability.harness import (
    Event,
    Key,
    Pacer,
    Stack,
    Tally,
    WorkerProcess,
    committed_all,
    delete_stack,
    expected_alerts,
    job_events,
    make_stack,
    read_topic,
    topic_alerts,
)

CRASH_SCENARIOS = ("memory_leak", "straggler")


class StorageThread:
    """The storage sink (``rankwatch sink storage``'s class) on a thread."""

    def __init__(self, stack: Stack, url: str, *, batch_size: int = 200) -> None:
        from rankwatch.config import load_settings
        from rankwatch.sinks.storage import open_store
        from rankwatch.sinks.storage.consumer import StorageSink

        self.store = open_store(url)
        self.url = url
        self.sink = StorageSink(
            self.store,
            load_settings(stack.config),
            group_id=f"{stack.app_id}-storage",
            batch_size=batch_size,
            linger_s=0.2,
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sink.run()
        except BaseException as exc:  # reported by the fault as "the sink stopped"
            self.error = exc

    def alive(self) -> bool:
        return self.thread.is_alive()

    def counts(self) -> dict[str, int]:
        from rankwatch.sinks.storage import open_store

        with open_store(self.url) as store:  # its own connection: the sink's is on its thread
            return store.counts()

    def alert_keys(self) -> Counter[Key]:
        from rankwatch.sinks.storage import open_store

        with open_store(self.url) as store:
            return Counter((a.alert_id, a.status) for a in store.alerts(limit=100_000))

    def stop(self) -> None:
        self.sink.stop()
        self.thread.join(30)
        self.store.close()


def committed_some(stack: Stack) -> bool:
    """Whether the worker group has committed any input offset (a snapshot was taken)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": stack.bootstrap, "group.id": stack.app_id, "log_level": 0}
    )
    try:
        tps = [TopicPartition(stack.steps, p) for p in range(stack.partitions)]
        return any(c.offset > 0 for c in consumer.committed(tps, timeout=5))
    except KafkaException:
        return False
    finally:
        consumer.close()


def wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return check()


def settle_alerts(stack: Stack, expected: Counter[Key], timeout_s: float = 30.0) -> Counter[Key]:
    """The alerts topic once it holds every expected key (or the time is up), plus a grace
    period in which a late duplicate would show."""
    wait_until(lambda: set(topic_alerts(stack)) >= set(expected), timeout_s)
    time.sleep(1.0)
    return topic_alerts(stack)


def finish(
    stack: Stack,
    sink: StorageThread,
    events_in: int,
    expected: Counter[Key],
    topic: Tally,
    storage: Tally,
) -> None:
    """Count one trial on the alerts topic and in the storage sink."""
    got = settle_alerts(stack, expected)
    topic.add(expected, got)
    topic.events_in += events_in
    wanted = set(expected)
    wait_until(
        lambda: (
            (c := sink.counts())["steps"] + c["logs"] >= events_in
            and set(sink.alert_keys()) >= wanted
        ),
        30,
    )
    counts = sink.counts()
    storage.events_in += events_in
    storage.events_out += counts["steps"] + counts["logs"]
    storage.add(expected, sink.alert_keys())
    if not sink.alive():
        storage.notes.append(f"storage sink stopped: {sink.error!r}")


@contextmanager
def running(stack: Stack) -> Iterator[tuple[list[WorkerProcess], StorageThread]]:
    workers: list[WorkerProcess] = []
    sink = StorageThread(stack, f"sqlite:///{stack.tmp / 'store.db'}")
    try:
        yield workers, sink
    finally:
        for w in workers:
            w.stop()
        sink.stop()


def worker_crash(
    bootstrap: str, tmp: Path, *, trials: int, seconds: float, seed: int = 1
) -> list[Tally]:
    """kill -9 the worker at a random point while two jobs leak memory and straggle."""
    rng = random.Random(seed)
    topic, storage = Tally("worker kill -9 → alerts topic"), Tally("worker kill -9 → storage sink")
    restored = 0
    for trial in range(trials):
        stack = make_stack(bootstrap, tmp / f"crash-{trial}")
        events: list[Event] = []
        for scenario in CRASH_SCENARIOS:
            events += job_events(f"crash{trial}-{scenario}-{uuid.uuid4().hex[:4]}", scenario)
        events = _interleave(events)
        expected = expected_alerts(events)
        try:
            with running(stack) as (workers, sink):
                workers.append(WorkerProcess(stack, "first"))
                pacer = Pacer(stack, events, seconds)
                pacer.start()
                # Kill at a random point after the first snapshot (so there is state to restore)
                # and before the last events are produced; a slow start-up eats into the run.
                began = time.monotonic()
                wait_until(lambda s=stack: committed_some(s), 30)
                left = max(0.5, seconds - (time.monotonic() - began))
                time.sleep(rng.uniform(0.0, left))
                workers[0].kill9()
                time.sleep(rng.uniform(0.0, 1.0))
                workers.append(WorkerProcess(stack, "second"))
                pacer.join()
                drained = committed_all(stack, alive=workers[1].alive)
                if not drained:
                    topic.notes.append(f"trial {trial}: worker did not drain")
                restored += "state restored" in workers[1].text()
                topic.events_out += pacer.acked if drained else 0
                finish(stack, sink, pacer.acked, expected, topic, storage)
                topic.trials += 1
                storage.trials += 1
        finally:
            delete_stack(stack)
    topic.notes.append(f"state restored from the changelog in {restored}/{trials} restarts")
    return [topic, storage]


def _interleave(events: list[Event]) -> list[Event]:
    """The jobs' events merged by event time, as several live jobs would produce them."""
    return sorted(events, key=lambda e: e.epoch)


def scale_out_in(bootstrap: str, tmp: Path, *, seconds: float, jobs: int = 4) -> list[Tally]:
    """A second worker joins mid-run, later the first leaves: partitions and state move."""
    topic, storage = (
        Tally("scale out then in → alerts topic"),
        Tally("scale out then in → storage sink"),
    )
    stack = make_stack(bootstrap, tmp / "scale", partitions=4)
    scenarios = ("memory_leak", "straggler", "nan_loss", "gradient_explosion")
    events: list[Event] = []
    for i in range(jobs):
        events += job_events(f"scale-{i}-{uuid.uuid4().hex[:4]}", scenarios[i % len(scenarios)])
    events = _interleave(events)
    expected = expected_alerts(events)
    try:
        with running(stack) as (workers, sink):
            workers.append(WorkerProcess(stack, "a"))
            pacer = Pacer(stack, events, seconds)
            pacer.start()
            time.sleep(seconds * 0.3)
            workers.append(WorkerProcess(stack, "b"))  # joins: half the partitions move to it
            time.sleep(seconds * 0.4)
            workers[0].stop()  # leaves: its partitions and their state move to b
            pacer.join()
            drained = committed_all(stack, alive=workers[1].alive)
            topic.events_out += pacer.acked if drained else 0
            b_log = workers[1].text()
            topic.notes.append(
                f"worker b restored {b_log.count('state restored')} job states from the changelog"
            )
            finish(stack, sink, pacer.acked, expected, topic, storage)
            topic.trials = storage.trials = 1
    finally:
        delete_stack(stack)
    return [topic, storage]


def step_only(events: list[Event]) -> list[StepEvent]:
    return [e for e in events if isinstance(e, StepEvent)]


def ranks_producing(
    stack: Stack, events: list[StepEvent], seconds: float, max_buffered: int
) -> tuple[threading.Thread, dict[str, Any]]:
    """One embedded producer per rank (as in trainers), fed the events' steps at a pace."""
    from rankwatch.config import load_settings
    from rankwatch.producers import Identity, RankwatchProducer

    settings = load_settings(stack.config)
    producers: dict[tuple[str, int], RankwatchProducer] = {}
    for e in events:
        if (e.job_id, e.rank) not in producers:
            identity = Identity(job_id=e.job_id, rank=e.rank, world_size=e.world_size, host=e.host)
            producers[(e.job_id, e.rank)] = RankwatchProducer(
                identity, settings=settings, max_buffered=max_buffered, enrichers=()
            )
    result: dict[str, Any] = {"producers": producers}

    def run() -> None:
        started = time.monotonic()
        for i, e in enumerate(events):
            fields = e.model_dump(
                exclude_none=True,
                exclude={"kind", "job_id", "rank", "world_size", "host", "step", "schema_version"},
            )
            fields["timestamp"] = e.epoch
            producers[(e.job_id, e.rank)].log_step(e.step, **fields)
            if i % 50 == 49:
                time.sleep(max(0.0, started + seconds * (i + 1) / len(events) - time.monotonic()))
        left = sum(p.flush(120) for p in producers.values())
        stats = [p.stats() for p in producers.values()]
        result.update(
            left=left,
            sent=sum(s.sent for s in stats),
            dropped=sum(s.dropped for s in stats),
            errors=sum(s.errors for s in stats),
        )
        for p in producers.values():
            p.close(5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@contextmanager
def own_cluster(home: Path, nodes: int) -> Iterator[Any]:
    from rankwatch.infra.cluster import LocalCluster

    cluster = LocalCluster.create(home, nodes_count=nodes, port=0)
    try:
        cluster.start(timeout_s=120)
        yield cluster
    finally:
        cluster.stop(grace_s=10, purge=True)


def broker_restart(tmp: Path, *, seconds: float, down_s: float) -> list[Tally]:
    """Stop and start the (single) broker while ranks produce through the embedded producer."""
    topic, storage = Tally("broker restart → alerts topic"), Tally("broker restart → storage sink")
    with own_cluster(tmp / "home-restart", 1) as cluster:
        stack = make_stack(cluster.bootstrap, tmp / "restart")
        events = step_only(
            _interleave(
                job_events(f"brk-leak-{uuid.uuid4().hex[:4]}", "memory_leak")
                + job_events(f"brk-strag-{uuid.uuid4().hex[:4]}", "straggler")
            )
        )
        expected = expected_alerts(events)
        with running(stack) as (workers, sink):
            workers.append(WorkerProcess(stack, "w"))
            thread, result = ranks_producing(stack, events, seconds, max_buffered=10_000)
            # A running worker (one snapshot committed): one that cannot reach the broker while
            # it starts exits instead (RELIABILITY.md, known issues).
            wait_until(lambda: committed_some(stack), 60)
            time.sleep(seconds * 0.1)
            cluster.stop(grace_s=10)
            time.sleep(down_s)
            cluster.start(timeout_s=120)
            thread.join(seconds + 180)
            topic.notes.append(
                f"producers: {result.get('sent')} sent, {result.get('dropped')} dropped, "
                f"{result.get('left')} left unsent"
            )
            drained = committed_all(stack, alive=workers[0].alive, timeout_s=120)
            if not workers[0].alive():
                topic.notes.append("the worker stopped")
            topic.events_out += result.get("sent", 0) if drained else 0
            topic.trials = storage.trials = 1
            finish(stack, sink, len(events), expected, topic, storage)
            topic.events_in = len(events)
    return [topic, storage]


def cluster_node_kill(tmp: Path, *, seconds: float) -> list[Tally]:
    """A 3-broker cluster (RF 3, min ISR 2): kill -9 one broker mid-run."""
    topic, storage = (
        Tally("1 of 3 brokers killed → alerts topic"),
        Tally("1 of 3 brokers killed → storage sink"),
    )
    with own_cluster(tmp / "home-3", 3) as cluster:
        stack = make_stack(
            cluster.bootstrap,
            tmp / "three",
            replication=3,
            topic_config={"min.insync.replicas": "2"},
        )
        events = _interleave(
            job_events(f"n3-leak-{uuid.uuid4().hex[:4]}", "memory_leak")
            + job_events(f"n3-nan-{uuid.uuid4().hex[:4]}", "nan_loss")
        )
        expected = expected_alerts(events)
        with running(stack) as (workers, sink):
            workers.append(WorkerProcess(stack, "w"))
            pacer = Pacer(stack, events, seconds)
            pacer.start()
            wait_until(lambda: committed_some(stack), 60)
            time.sleep(seconds * 0.2)
            cluster.kill_node(2)
            pacer.join()
            drained = committed_all(stack, alive=workers[0].alive, timeout_s=120)
            if not workers[0].alive():
                topic.notes.append("the worker stopped")
            topic.events_out += pacer.acked if drained else 0
            topic.trials = storage.trials = 1
            finish(stack, sink, pacer.acked, expected, topic, storage)
            if pacer.acked < len(events):
                topic.notes.append(f"{len(events) - pacer.acked} events not acknowledged")
            topic.events_in = len(events)
    return [topic, storage]


def bad_input(bootstrap: str, tmp: Path, corpus: list[tuple[str, bytes]]) -> tuple[Tally, Tally]:
    """Malformed messages between valid events through the live worker."""
    import orjson

    from reliability.harness import producer

    alerts = Tally("bad input: valid events around it → alerts topic")
    dead = Tally("bad input → dead-letter topic")
    big = 16 * 1024 * 1024
    stack = make_stack(bootstrap, tmp / "bad", topic_config={"max.message.bytes": str(big)})
    events = job_events(f"bad-{uuid.uuid4().hex[:4]}", "nan_loss", steps=80)
    expected = expected_alerts(events)
    p = producer(bootstrap, **{"message.max.bytes": big})
    step = max(1, len(events) // (len(corpus) + 1))
    sent_bad = 0
    try:
        with running(stack) as (workers, sink):
            workers.append(WorkerProcess(stack, "w"))
            for i, event in enumerate(events):
                topic = stack.steps if isinstance(event, StepEvent) else stack.logs
                p.produce(topic, encode(event), key=event.job_id.encode())
                if i % step == 0 and sent_bad < len(corpus):
                    _name, value = corpus[sent_bad]
                    p.produce(stack.steps, value, key=event.job_id.encode())
                    sent_bad += 1
            while sent_bad < len(corpus):
                p.produce(stack.steps, corpus[sent_bad][1], key=b"tail")
                sent_bad += 1
            assert p.flush(60) == 0
            drained = committed_all(stack, alive=workers[0].alive, timeout_s=120)
            letters = [orjson.loads(v) for v in read_topic(bootstrap, stack.dead, timeout_s=20)]
            with_reason = [d for d in letters if d.get("error")]
            dead.trials = alerts.trials = 1
            dead.events_in = len(corpus)
            dead.events_out = len(with_reason)
            dead.expected = len(corpus)
            dead.delivered = min(len(with_reason), len(corpus))
            dead.lost = max(0, len(corpus) - len(with_reason))
            dead.duplicated = max(0, len(letters) - len(corpus))
            if not workers[0].alive():
                dead.notes.append("the worker stopped")
            reasons = Counter(d["error"].split(":")[0][:40] for d in with_reason)
            dead.notes.append(f"{len(reasons)} distinct reasons")
            alerts.events_out = len(events) if drained else 0
            finish(stack, sink, len(events), expected, alerts, Tally("unused"))
            alerts.events_in = len(events)
    finally:
        delete_stack(stack)
    return alerts, dead


def incident_alerts(count: int) -> list[Alert]:
    """Alerts as the worker publishes them: ``count`` incidents, each firing then resolved."""
    t0 = 1_767_225_600.0
    out: list[Alert] = []
    for n in range(count):
        firing = Alert(
            alert_id=f"rel-{uuid.uuid4().hex[:12]}",
            job_id=f"hook-job-{n % 3}",
            rule="cuda_oom",
            severity="critical",
            scope="rank",
            ranks=[n % 8],
            step=100 + n,
            first_seen=t0 + n,
            last_seen=t0 + n,
            summary=f"rank {n % 8}: CUDA out of memory",
        )
        out += [firing, firing.model_copy(update={"status": "resolved"})]
    return out


def webhook_outage(bootstrap: str, tmp: Path, *, down_s: float, incidents: int = 20) -> Tally:
    """The webhook endpoint refuses connections for ``down_s`` while alerts keep coming."""
    from rankwatch.config import load_settings
    from rankwatch.sinks.config import load_sinks_config
    from rankwatch.sinks.notify.sink import NotifySink
    from rankwatch.sinks.testing import WebhookServer
    from reliability.harness import producer, webhook_keys

    tally = Tally("webhook endpoint down → webhook")
    server = WebhookServer().start()
    stack = make_stack(
        bootstrap,
        tmp / "hook",
        extra_toml=(
            f'[sinks.notify]\ngroup_id = "hook-{uuid.uuid4().hex[:6]}"\n'
            f'state_db = "{tmp / "hook" / "delivered.db"}"\n'
            f'retry_topic = "rel.retry.{uuid.uuid4().hex[:8]}"\npark_for = "2s"\n'
            f'[sinks.notify.destinations.ops]\ntype = "webhook"\nurl = "{server.url}"\n'
            'group_wait = "200ms"\nmax_attempts = 3\nbackoff = "100ms"\nmax_backoff = "1s"\n'
            'timeout = "1s"\nrate_limit = 50.0\nburst = 50\n'
            '[[sinks.notify.routes]]\nto = ["ops"]\n'
        ),
    )
    alerts = incident_alerts(incidents)
    expected: Counter[Key] = Counter((a.alert_id, a.status) for a in alerts)
    sink = NotifySink(load_sinks_config(stack.config).notify, load_settings(stack.config))
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    p = producer(bootstrap)
    try:
        sink.wait_ready(30)
        half = len(alerts) // 2
        for a in alerts[:half]:
            p.produce(stack.alerts, encode(a), key=a.job_id.encode())
        p.flush(30)
        wait_until(lambda: len(server.received) > 0, 10)
        server.stop()  # connection refused from now on
        outage_end = time.monotonic() + down_s
        # The rest arrive during the outage, the first few twice (as a restarted worker might).
        rest = alerts[half:]
        for i, a in enumerate(rest + rest[:3]):
            p.produce(stack.alerts, encode(a), key=a.job_id.encode())
            p.poll(0)
            time.sleep(max(0.0, min(1.0, (outage_end - time.monotonic()) / (len(rest) + 3 - i))))
        p.flush(30)
        time.sleep(max(0.0, outage_end - time.monotonic()))
        server.start()
        wait_until(lambda: set(webhook_keys(server.bodies())) >= set(expected), 60 + down_s)
        time.sleep(3.0)  # a late resend would show now
        if not thread.is_alive():
            tally.notes.append("the notify sink stopped")
    finally:
        sink.stop()
        thread.join(20)
        server.stop()
        delete_stack(stack)
    tally.trials = 1
    tally.events_in = tally.events_out = len(alerts) + 3
    tally.add(expected, webhook_keys(server.bodies()))
    tally.notes.append(f"endpoint down {down_s:.0f} s; {server.attempts} requests in all")
    return tally


def postgres_restart(bootstrap: str, tmp: Path, *, seconds: float, down_s: float) -> Tally:
    """PostgreSQL stops mid-run and comes back; the storage sink writes every row once."""
    from rankwatch.sinks.testing import PostgresServer

    tally = Tally("PostgreSQL restart → storage sink")
    stack = make_stack(bootstrap, tmp / "pg")
    events = _interleave(
        job_events(f"pg-leak-{uuid.uuid4().hex[:4]}", "memory_leak", logs=True)
        + job_events(f"pg-nan-{uuid.uuid4().hex[:4]}", "nan_loss", logs=True)
    )
    alerts = incident_alerts(10)
    expected: Counter[Key] = Counter((a.alert_id, a.status) for a in alerts)
    server = PostgresServer().start()
    try:
        sink = StorageThread(stack, server.url, batch_size=100)
        try:
            from reliability.harness import producer

            p = producer(bootstrap)
            started = time.monotonic()
            restarted = False
            items: list[Any] = [*events]
            step = max(1, len(items) // len(alerts))
            for i, a in enumerate(alerts):
                items.insert((i + 1) * step, a)
            for i, item in enumerate(items):
                topic = {"step": stack.steps, "log": stack.logs, "alert": stack.alerts}[item.kind]
                p.produce(topic, encode(item), key=item.job_id.encode())
                if i % 50 == 49:
                    p.poll(0)
                    time.sleep(
                        max(0.0, started + seconds * (i + 1) / len(items) - time.monotonic())
                    )
                if not restarted and i >= len(items) // 2:
                    restarted = True
                    _pg_restart(server, down_s)
            p.flush(30)
            wait_until(
                lambda: (
                    (c := sink.counts())["steps"] + c["logs"] >= len(events)
                    and set(sink.alert_keys()) >= set(expected)
                ),
                60,
            )
            counts = sink.counts()
            tally.events_in = len(events)
            tally.events_out = counts["steps"] + counts["logs"]
            tally.add(expected, sink.alert_keys())
            if not sink.alive():
                tally.notes.append(f"the storage sink stopped: {sink.error!r}")
        finally:
            sink.stop()
    finally:
        server.stop()
        delete_stack(stack)
    tally.trials = 1
    tally.notes.append(f"PostgreSQL down {down_s:.0f} s mid-run")
    return tally


def _pg_restart(server: Any, down_s: float) -> None:
    """``pg_ctl stop -m fast``, wait, ``pg_ctl start`` on the same port and data."""
    data = server.root / "data"
    server._run(
        [str(server._bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
        "pg_ctl stop",
        60,
    )
    time.sleep(down_s)
    options = (
        f"-p {server.port} -k {server.root} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c full_page_writes=off -c shared_buffers=128MB"
    )
    server._run(
        [
            str(server._bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(server.root / "log"),
            "-o",
            options,
            "-w",
            "start",
        ],
        "pg_ctl start",
        60,
    )


def fuzz_live(bootstrap: str, tmp: Path, messages: list[bytes]) -> Tally:
    """Every fuzz message through the live worker (one partition, so the order is known): the
    worker must not stop, and must dead-letter exactly what the pipeline dead-letters."""
    import orjson

    from rankwatch.streams import Engine
    from rankwatch.streams.pipeline import DeadLetter, Pipeline
    from reliability.harness import producer

    pipeline = Pipeline(Engine.with_builtin_detectors())
    want_dead = sum(isinstance(pipeline.handle(m), DeadLetter) for m in messages)
    tally = Tally("decoder fuzz (hypothesis) → live worker, dead-letter topic")
    stack = make_stack(bootstrap, tmp / "fuzz", partitions=1)
    try:
        worker = WorkerProcess(stack, "w")
        try:
            p = producer(bootstrap)
            for i, m in enumerate(messages):
                p.produce(stack.steps, m, key=b"fuzz")
                if i % 1000 == 999:
                    p.poll(0)
            assert p.flush(60) == 0
            drained = committed_all(stack, alive=worker.alive, timeout_s=300)
            letters = read_topic(bootstrap, stack.dead, timeout_s=60)
            reasons = sum(1 for v in letters if orjson.loads(v).get("error"))
            tally.notes.append("worker alive" if worker.alive() else "the worker STOPPED")
        finally:
            worker.stop()
    finally:
        delete_stack(stack)
    tally.trials = 1
    tally.events_in = len(messages)
    tally.events_out = len(messages) if drained and worker.proc.returncode in (0, -15, None) else 0
    tally.expected = want_dead
    tally.delivered = min(reasons, want_dead)
    tally.lost = max(0, want_dead - reasons)
    tally.duplicated = max(0, len(letters) - want_dead)
    tally.notes.append(f"{want_dead} dead letters expected, {len(letters)} on the topic")
    return tally
