"""The worker against a real broker: alerts, dead letters, live == replay, restarts.

Each test gets its own four topics, its own app id (consumer group and changelog topic) and
its own worker subprocess, stopped in teardown (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rankwatch.schemas import Alert, LogEvent, StepEvent, decode, encode
from rankwatch.streams.replay import Record, replay, topic_records

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(120)]

RANKWATCH = str(Path(sys.executable).with_name("rankwatch"))
T0 = 1_743_848_595.0
PARTITIONS = 3
OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 5)"


@dataclass
class Setup:
    bootstrap: str
    config: Path
    steps: str
    logs: str
    alerts: str
    dead: str
    app_id: str
    tmp: Path


@pytest.fixture
def make_topics(kafka_bootstrap: str) -> Iterator[Callable[[int], str]]:
    """Like conftest's ``make_topic``, but deletes with an admin client it keeps alive.

    ``infra.admin.delete_topics`` drops its AdminClient before the futures resolve, and
    librdkafka then fails them ("Broker handle destroyed"); reported to infra's owner.
    """
    from confluent_kafka.admin import AdminClient

    from rankwatch.infra.testing import create_unique_topic

    created: list[str] = []

    def make(partitions: int) -> str:
        created.append(create_unique_topic(kafka_bootstrap, partitions))
        return created[-1]

    yield make
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_topics(created, operation_timeout=30).values():
        future.exception(30)  # best effort: a leftover topic only costs disk


@pytest.fixture
def setup(kafka_bootstrap: str, make_topics: Callable[[int], str], tmp_path: Path) -> Setup:
    steps, logs = make_topics(PARTITIONS), make_topics(PARTITIONS)
    alerts, dead = make_topics(1), make_topics(1)
    config = tmp_path / "rankwatch.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_bootstrap}"\n'
        + "".join(
            f'[topics.{role}]\nname = "{name}"\npartitions = {n}\n'
            for role, name, n in [
                ("steps", steps, PARTITIONS),
                ("logs", logs, PARTITIONS),
                ("alerts", alerts, 1),
                ("deadletter", dead, 1),
            ]
        )
    )
    app_id = f"test-worker-{uuid.uuid4().hex[:8]}"
    return Setup(kafka_bootstrap, config, steps, logs, alerts, dead, app_id, tmp_path)


class WorkerProcess:
    """``rankwatch worker`` as a subprocess; its stderr goes to a file for the assertions."""

    def __init__(self, s: Setup, name: str, *extra: str, runtime: str = "batch") -> None:
        self.log = s.tmp / f"{name}.log"
        self._handle = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                RANKWATCH,
                "worker",
                "--config",
                str(s.config),
                "--app-id",
                s.app_id,
                "--data-dir",
                str(s.tmp / "data"),
                "--snapshot-interval",
                "0.5",
                "--session-timeout",
                "6",
                "--runtime",
                runtime,
                *extra,
            ],
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            cwd=s.tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._handle.close()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def events(job: str, first: int, last: int, ranks: int = 8) -> list[StepEvent | LogEvent]:
    """Steps ``first..last-1`` of a job; rank 2's loss is NaN from step 30; OOM at step 20."""
    out: list[StepEvent | LogEvent] = []
    for step in range(first, last):
        for rank in range(ranks):
            out.append(
                StepEvent(
                    job_id=job,
                    rank=rank,
                    world_size=ranks,
                    step=step,
                    timestamp=T0 + step,
                    loss=math.nan if rank == 2 and step >= 30 else 2.0 + 0.001 * (step % 7),
                    gradient_norm=1.0,
                    throughput_tokens_per_sec=80_000.0,
                )
            )
        if step in (20, 45):  # the second OOM record extends the first incident
            out.append(
                LogEvent(
                    job_id=job,
                    rank=min(5, ranks - 1),  # a rank of the job, which steps on after it
                    timestamp=T0 + step + 0.5,
                    step=step,
                    level="ERROR",
                    message=OOM,
                )
            )
    return out


GARBAGE = [b"not json at all", b'{"kind":"step","job_id":"j","rank":1}', b"\xff\xfe{bad"]


def produce(
    s: Setup,
    items: list[StepEvent | LogEvent],
    garbage: list[bytes] = (),
    *,
    event_timestamps: bool = False,
) -> None:
    """Produce ``items`` (then ``garbage``); with ``event_timestamps`` each message carries its
    event time as its Kafka timestamp, as one produced live carries about that."""
    from confluent_kafka import Producer

    # murmur2: the partitioner of Java clients and aiokafka, so keys land where Faust expects.
    producer = Producer(
        {
            "bootstrap.servers": s.bootstrap,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    for event in items:
        topic = s.steps if isinstance(event, StepEvent) else s.logs
        ms = int(event.epoch * 1000) if event_timestamps else 0  # 0: the producer's clock
        producer.produce(topic, encode(event), key=event.job_id.encode(), timestamp=ms)
    for value in garbage:
        producer.produce(s.steps, value, key=b"garbage")
    assert producer.flush(30) == 0


def read_all(s: Setup, topic: str, minimum: int = 0, timeout_s: float = 40.0) -> list[bytes]:
    """Every message of ``topic``, waiting until there are at least ``minimum``."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = [r.value for r in topic_records({"bootstrap.servers": s.bootstrap}, [topic])]
        if len(values) >= minimum or time.monotonic() > deadline:
            return values
        time.sleep(0.5)


def wait_drained(s: Setup, worker: WorkerProcess, timeout_s: float = 45.0) -> None:
    """Until the worker's group has committed the end offset of every input partition.

    Offsets are committed only after a snapshot covers the events, so this also means the
    state of everything produced so far is persisted.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": s.bootstrap, "group.id": s.app_id, "enable.auto.commit": False}
    )
    try:
        tps = [TopicPartition(t, p) for t in (s.steps, s.logs) for p in range(PARTITIONS)]
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, 10)[1] for tp in tps}
        committed: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert worker.proc.poll() is None, worker.text()[-3000:]
            try:
                committed = consumer.committed(tps, timeout=10)
            except KafkaException as exc:
                # A fresh broker loads __consumer_offsets lazily: NOT_COORDINATOR for a while.
                committed = [exc]
                time.sleep(0.5)
                continue
            if all(
                c.offset >= ends[(c.topic, c.partition)] or ends[(c.topic, c.partition)] == 0
                for c in committed
            ):
                return
            time.sleep(0.5)
        raise AssertionError(f"worker did not drain: {committed}\n{worker.text()[-3000:]}")
    finally:
        consumer.close()


def replayed(items: list[StepEvent | LogEvent]) -> list[Alert]:
    out = io.BytesIO()
    replay([Record(str(i), encode(e)) for i, e in enumerate(items)], out)
    return [decode(line) for line in out.getvalue().splitlines()]  # type: ignore[misc]


def firing(alerts: list[Alert]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {a.alert_id: (a.rule, tuple(a.ranks)) for a in alerts if a.status == "firing"}


@pytest.mark.parametrize("runtime", ["batch", "faust"])
def test_worker_alerts_deadletters_and_matches_replay(
    setup: Setup, workers: list[WorkerProcess], runtime: str
) -> None:
    s = setup
    job = f"job-{uuid.uuid4().hex[:6]}"
    items = events(job, 0, 60)
    produce(s, items, GARBAGE)  # before the worker starts: it reads from the beginning
    started = time.monotonic()
    worker = WorkerProcess(s, "worker", runtime=runtime)
    workers.append(worker)
    wait_drained(s, worker)
    elapsed = time.monotonic() - started

    live = [decode(v) for v in read_all(s, s.alerts, minimum=2)]
    rules = {(a.rule, tuple(a.ranks)) for a in live if isinstance(a, Alert)}
    assert ("cuda_oom", (5,)) in rules, worker.text()[-3000:]
    assert ("loss_explosion", (2,)) in rules
    assert all(a.job_id == job for a in live)  # type: ignore[union-attr]

    import orjson

    dead = [orjson.loads(v) for v in read_all(s, s.dead, minimum=len(GARBAGE))]
    assert len(dead) == len(GARBAGE)
    assert dead[0]["error"].startswith("not valid JSON") and dead[0]["topic"] == s.steps
    assert {p["field"] for p in dead[1]["problems"]} >= {"step", "timestamp"}
    assert dead[1]["payload"] == GARBAGE[1].decode() and dead[1]["payload_encoding"] == "utf-8"
    assert dead[2]["payload_encoding"] == "base64" and "UTF-8" in dead[2]["error"]
    assert all(isinstance(d["offset"], int) and d["offset"] >= 0 for d in dead)

    live_firing = firing(live)  # type: ignore[arg-type]
    assert live_firing == firing(replayed(items))
    # The same from the topics themselves, through `replay --topic`'s reader.
    from_topics = io.BytesIO()
    replay(topic_records({"bootstrap.servers": s.bootstrap}, [s.steps, s.logs]), from_topics)
    topic_alerts = [decode(x) for x in from_topics.getvalue().splitlines()]
    assert firing(topic_alerts) == live_firing  # type: ignore[arg-type]
    print(f"worker drained {len(items)} events in {elapsed:.1f} s including start-up")


@pytest.mark.parametrize("runtime", ["batch", "faust"])
def test_restart_after_kill9_resumes_state(
    setup: Setup, workers: list[WorkerProcess], runtime: str
) -> None:
    """A kill -9 after events were processed but before their state was persisted: the
    restart restores state, loses no alert and re-fires none under a new id."""
    s = setup
    job = f"job-{uuid.uuid4().hex[:6]}"
    first, crash_window, second = events(job, 0, 35), events(job, 35, 40), events(job, 40, 60)
    produce(s, first)
    worker = WorkerProcess(s, "before", runtime=runtime)
    workers.append(worker)
    wait_drained(s, worker)  # state of `first` persisted, offsets committed
    before = firing([decode(v) for v in read_all(s, s.alerts, minimum=2)])  # type: ignore[misc]
    assert ("cuda_oom", (5,)) in before.values(), worker.text()[-3000:]
    produce(s, crash_window)
    time.sleep(0.3)  # processed, perhaps, but not yet snapshotted: replayed after the restart
    worker.kill9()

    produce(s, second)  # includes a second OOM record of rank 5: the same open incident
    again = WorkerProcess(s, "after", runtime=runtime)
    workers.append(again)
    wait_drained(s, again)
    assert "state restored" in again.text(), again.text()[-3000:]

    alerts = [decode(v) for v in read_all(s, s.alerts)]
    after = firing(alerts)  # type: ignore[arg-type]
    # At-least-once may repeat an alert, never under a new id: one id per incident.
    incidents = list(after.values())
    assert len(incidents) == len(set(incidents)), after
    assert after == firing(replayed(first + crash_window + second))


@pytest.mark.parametrize("runtime", ["batch", "faust"])
def test_a_job_that_goes_quiet_after_a_crash_is_job_stopped_on_the_worker_clock(
    setup: Setup, workers: list[WorkerProcess], runtime: str
) -> None:
    """No event says a job stopped: the worker's wall clock does, in both runtimes."""
    s = setup
    job = f"job-{uuid.uuid4().hex[:6]}"
    now = time.time()
    items: list[StepEvent | LogEvent] = [
        StepEvent(job_id=job, rank=r, world_size=4, step=step, timestamp=now - 20 + step * 0.5)
        for step in range(20)
        for r in range(4)
    ]
    items.append(LogEvent(job_id=job, rank=3, timestamp=now - 10, level="ERROR", message=(
        'Traceback (most recent call last):\n  File "/job/train.py", line 9, in main\n'
        "    x[8]\nIndexError: index 8 is out of bounds for dimension 0 with size 8")))  # fmt: skip
    worker = WorkerProcess(s, "worker", runtime=runtime)
    workers.append(worker)
    produce(s, items)
    deadline = time.monotonic() + 60
    stopped: list[Alert] = []
    while not stopped:
        assert time.monotonic() < deadline, worker.text()[-3000:]
        alerts = [decode(v) for v in read_all(s, s.alerts, timeout_s=1)]
        stopped = [a for a in alerts if isinstance(a, Alert) and a.rule == "job_stopped"]
        time.sleep(0.5)
    assert stopped[0].evidence["root_cause"]["rank"] == 3
