"""``rankwatch demo``: the README's main command.

Starts (or reuses) a local Kafka broker, creates the topics, sends a step event and a log
record of a small job through the real broker and reads them back, decoded by the contract.
It stops every process it started, also on Ctrl-C, unless ``--keep-broker``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from rankwatch.schemas import Event, LogEvent, StepEvent


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the end-to-end demo on a local Kafka broker")
    demo.add_argument("--port", type=int, default=None,
                      help="port of the local broker (default 9092, or the running one's)")
    demo.add_argument("--keep-broker", action="store_true",
                      help="leave the broker running at the end (stop: rankwatch broker stop)")
    demo.set_defaults(handler=_run)


def say(text: str) -> None:
    print(f"rankwatch demo | {text}", flush=True)


def _round_trip(settings: Any, events: list[Event]) -> list[Event]:
    """Produce ``events`` to their topics and read exactly those messages back."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from rankwatch.schemas import decode, encode

    producer = Producer({**settings.confluent_config(), "enable.idempotence": True})
    delivered: list[tuple[str, int, int]] = []

    def on_delivery(error: Any, message: Any) -> None:
        if error is not None:
            raise RuntimeError(f"delivery failed: {error}")
        delivered.append((message.topic(), message.partition(), message.offset()))

    topics = settings.topics
    for event in events:
        topic = topics.steps.name if isinstance(event, StepEvent) else topics.logs.name
        producer.produce(topic, encode(event), key=event.job_id.encode(), on_delivery=on_delivery)
    if producer.flush(30) != 0:
        raise RuntimeError("the broker did not acknowledge the demo events within 30 s")

    consumer = Consumer({
        **settings.confluent_config(),
        "group.id": f"rankwatch-demo-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
    })
    try:
        first: dict[tuple[str, int], int] = {}
        for t, p, o in delivered:
            first[(t, p)] = min(o, first.get((t, p), o))
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in first.items()])
        back: list[Event] = []
        deadline = time.monotonic() + 30
        while len(back) < len(delivered) and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            if (message.topic(), message.partition(), message.offset()) in delivered:
                back.append(decode(message.value()))
        return back
    finally:
        consumer.close()


def _run(args: argparse.Namespace) -> int:
    from rankwatch.config import load_settings
    from rankwatch.infra.admin import create_topics
    from rankwatch.infra.cluster import LocalCluster
    from rankwatch.schemas import encode

    cluster = None
    started = False
    try:
        say("starting a local Kafka broker (KRaft, Apache Kafka from Maven Central)...")
        t0 = time.monotonic()
        cluster, reused = LocalCluster.start_or_reuse(port=args.port)
        started = not reused
        verb = "reusing the running broker" if reused else "broker up"
        say(f"{verb} at {cluster.bootstrap} ({time.monotonic() - t0:.1f} s)")

        settings = load_settings(bootstrap=cluster.bootstrap)
        for result in create_topics(settings):
            say(f"topic {result.name}: {'created' if result.created else 'exists'}")

        now = datetime.now(UTC)
        job = f"demo-{now:%Y%m%d-%H%M%S}"
        events: list[Event] = [
            StepEvent(job_id=job, rank=0, world_size=2, host="node-0", step=1, timestamp=now,
                      loss=2.31, gradient_norm=0.9, throughput_tokens_per_sec=78400.0),
            StepEvent(job_id=job, rank=1, world_size=2, host="node-0", step=1, timestamp=now,
                      loss=float("nan"), gradient_norm=float("inf")),
            LogEvent(job_id=job, rank=1, host="node-0", timestamp=now, level="ERROR",
                     message="torch.OutOfMemoryError: CUDA out of memory. "
                             "Tried to allocate 4.20 GiB"),
        ]
        back = _round_trip(settings, events)
        for event in back:
            if isinstance(event, StepEvent):
                say(f"read back step  job={event.job_id} rank={event.rank} step={event.step} "
                    f"loss={event.loss} gradient_norm={event.gradient_norm}")
            elif isinstance(event, LogEvent):
                say(f"read back log   job={event.job_id} rank={event.rank} "
                    f"level={event.level} {event.message[:60]!r}")
        if sorted(map(encode, back)) != sorted(map(encode, events)):
            say("FAILED: what came back differs from what was sent")
            return 1
        say(f"{len(back)} events round-tripped through {cluster.bootstrap}, NaN and Inf intact")
        return 0
    finally:
        if cluster is not None and started and not args.keep_broker:
            say("stopping the broker this demo started")
            cluster.stop()
