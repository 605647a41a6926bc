"""Shared parts of the fault runs: topics, worker processes, paced producers, the tally.

Every run builds its own topics and consumer groups on the broker it is given, so runs never
see each other's messages. "Expected" alerts come from the pure pipeline (the same code the
worker runs) over each job's events, without the end-of-input flush a live worker never does;
"delivered" is what the alerts topic, the storage sink or a webhook got. Both are counted by
``(alert_id, status)``: a key expected once and seen twice is a duplicate, one not seen is lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankwatch.schemas import Alert, LogEvent, StepEvent, decode, encode

RANKWATCH = str(Path(sys.executable).with_name("rankwatch"))
#: The worker runtime every fault runs (``run.py --runtime``): batch (the default) or faust.
RUNTIME = "batch"
Key = tuple[str, str]  # (alert_id, status)
Event = StepEvent | LogEvent


@dataclass
class Stack:
    """One run's four topics, its config file, its worker group and its scratch folder."""

    bootstrap: str
    tmp: Path
    steps: str
    logs: str
    alerts: str
    dead: str
    partitions: int
    app_id: str
    config: Path

    def topics(self) -> list[str]:
        return [self.steps, self.logs, self.alerts, self.dead]


def make_stack(
    bootstrap: str,
    tmp: Path,
    *,
    partitions: int = 3,
    replication: int = -1,
    topic_config: dict[str, str] | None = None,
    extra_toml: str = "",
) -> Stack:
    """Create four fresh topics and write a config naming them."""
    from confluent_kafka.admin import AdminClient, NewTopic

    tag = uuid.uuid4().hex[:8]
    names = {r: f"rel.{tag}.{r}" for r in ("steps", "logs", "alerts", "deadletter")}
    counts = {"steps": partitions, "logs": partitions, "alerts": 2, "deadletter": 1}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(
                names[r],
                num_partitions=counts[r],
                replication_factor=replication,
                config=dict(topic_config or {}),
            )
            for r in names
        ],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(30)
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "rankwatch.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{bootstrap}"\n'
        + "".join(
            f'[topics.{r}]\nname = "{n}"\npartitions = {counts[r]}\n' for r, n in names.items()
        )
        + extra_toml
    )
    return Stack(
        bootstrap,
        tmp,
        names["steps"],
        names["logs"],
        names["alerts"],
        names["deadletter"],
        partitions,
        f"rel-worker-{tag}",
        config,
    )


def delete_stack(stack: Stack) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    for future in admin.delete_topics(stack.topics(), operation_timeout=30).values():
        with contextlib.suppress(Exception):  # best effort: a leftover topic only costs disk
            future.result(30)


class WorkerProcess:
    """``rankwatch worker`` as a subprocess, its output in a file."""

    def __init__(
        self,
        stack: Stack,
        name: str,
        *,
        session_timeout_s: float = 6.0,
        snapshot_interval_s: float = 0.5,
    ) -> None:
        self.name = name
        self.log = stack.tmp / f"{name}.log"
        self._handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                RANKWATCH,
                "worker",
                "--config",
                str(stack.config),
                "--app-id",
                stack.app_id,
                "--data-dir",
                str(stack.tmp / f"data-{name}"),
                "--snapshot-interval",
                str(snapshot_interval_s),
                "--session-timeout",
                str(session_timeout_s),
                "--runtime",
                RUNTIME,
            ],
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            cwd=stack.tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._handle.close()


def job_events(
    job_id: str, scenario: str, *, ranks: int = 8, steps: int = 200, logs: bool = True
) -> list[Event]:
    """A simulated job with one fault from ``rankwatch.simulate`` starting at step 40: its
    steps and its log records (NCCL chatter, overflow skips), or only the steps. 200 steps:
    ``memory_growth`` learns a rank's noise over its first ~140 steps before it judges."""
    from rankwatch.simulate import JobSpec, simulate
    from rankwatch.simulate.scenarios import SCENARIOS

    spec = JobSpec(job_id=job_id, ranks=ranks, steps=steps, checkpoint_every=0, seed=len(job_id))
    fault = SCENARIOS[scenario](at_step=40, rank=ranks // 2 - 1)
    events = list(simulate(spec, [fault]))
    return events if logs else [e for e in events if isinstance(e, StepEvent)]


def expected_alerts(events: Iterable[Event]) -> Counter[Key]:
    """What the worker must publish for these events: the pure pipeline, job by job, in the
    order they are produced (the worker merges a job's steps and logs topics back into it by
    timestamp, however far one topic's backlog runs ahead: ``streams/alignment.py``)."""
    from rankwatch.streams import Engine
    from rankwatch.streams.pipeline import Pipeline

    by_job: dict[str, list[Event]] = {}
    for event in events:
        by_job.setdefault(event.job_id, []).append(event)
    out: Counter[Key] = Counter()
    for job_events_ in by_job.values():
        pipeline = Pipeline(Engine.with_builtin_detectors())
        for event in job_events_:
            result = pipeline.handle(encode(event))
            assert isinstance(result, list), result
            out.update((a.alert_id, a.status) for a in result)
    return out


def producer(bootstrap: str, **extra: Any) -> Any:
    from confluent_kafka import Producer

    # murmur2: the partitioner of Java clients and aiokafka, so keys land where Faust expects.
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": 5,
            "log_level": 0,
            **extra,
        }
    )


def produce(stack: Stack, events: Sequence[Event], *, seconds: float = 0.0) -> int:
    """Produce ``events`` (spread evenly over ``seconds``); return how many were acknowledged.

    Each message's Kafka timestamp is its event time moved to now (the first event at the
    moment this starts), as a job producing live would have stamped it: the worker merges a
    job's steps and logs topics by those timestamps.
    """
    p = producer(stack.bootstrap)
    acked = 0
    base_ms = time.time() * 1000 - (events[0].epoch * 1000 if events else 0)

    def delivered(error: Any, message: Any) -> None:
        nonlocal acked
        if error is None:
            acked += 1

    started = time.monotonic()
    chunk = max(1, len(events) // max(1, int(seconds * 20)))
    for i, event in enumerate(events):
        topic = stack.steps if isinstance(event, StepEvent) else stack.logs
        p.produce(
            topic,
            encode(event),
            key=event.job_id.encode(),
            on_delivery=delivered,
            timestamp=int(base_ms + event.epoch * 1000),
        )
        if seconds and i % chunk == chunk - 1:
            p.poll(0)
            due = started + seconds * (i + 1) / len(events)
            time.sleep(max(0.0, due - time.monotonic()))
    p.flush(60)
    return acked


class Pacer(threading.Thread):
    """:func:`produce` on a thread, so faults can be injected while events flow."""

    def __init__(self, stack: Stack, events: Sequence[Event], seconds: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.events, self.seconds = stack, events, seconds
        self.acked = 0

    def run(self) -> None:
        self.acked = produce(self.stack, self.events, seconds=self.seconds)


def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 10.0) -> list[bytes]:
    """Every message of ``topic`` up to its current end."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rel-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        tps = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout_s)[1] for tp in tps}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign(tps)
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error():
                    continue
                out.append(message.value())
                if message.offset() + 1 >= ends[message.partition()]:
                    todo.discard(message.partition())
        return out
    finally:
        consumer.close()


def topic_alerts(stack: Stack) -> Counter[Key]:
    alerts = [decode(v) for v in read_topic(stack.bootstrap, stack.alerts)]
    return Counter((a.alert_id, a.status) for a in alerts if isinstance(a, Alert))


def committed_all(stack: Stack, *, timeout_s: float = 90.0, alive: Any = None) -> bool:
    """Wait until the worker group committed the end offset of every input partition."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": stack.app_id,
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        tps = [
            TopicPartition(t, p) for t in (stack.steps, stack.logs) for p in range(stack.partitions)
        ]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                return False
            try:
                ends = [consumer.get_watermark_offsets(tp, 10)[1] for tp in tps]
                committed = consumer.committed(tps, timeout=10)
            except KafkaException:  # coordinator loading, a broker away: ask again
                time.sleep(0.5)
                continue
            if all(c.offset >= end or end == 0 for c, end in zip(committed, ends, strict=True)):
                return True
            time.sleep(0.5)
        return False
    finally:
        consumer.close()


@dataclass
class Tally:
    """One fault's figures, summed over its trials."""

    fault: str
    trials: int = 0
    events_in: int = 0
    events_out: int = 0  # events that reached the far side (worker commits, sink rows...)
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, expected: Counter[Key], got: Counter[Key]) -> None:
        """Count one trial's alerts: every expected key exactly once, nothing else."""
        self.expected += sum(expected.values())
        self.delivered += sum(min(got[k], n) for k, n in expected.items())
        self.lost += sum(max(0, n - got[k]) for k, n in expected.items())
        self.duplicated += sum(max(0, n - expected[k]) for k, n in got.items())

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.events_out >= self.events_in


def webhook_keys(bodies: Iterable[Any]) -> Counter[Key]:
    """(alert_id, status) of every alert in the generic webhook bodies received."""
    return Counter((a["alert_id"], a["status"]) for body in bodies for a in body["alerts"])
