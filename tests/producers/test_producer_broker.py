"""The embedded producer against a real broker: delivery, an unreachable broker, a return."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rankwatch.config import Settings
from rankwatch.infra.admin import create_topics
from rankwatch.infra.cluster import LocalCluster, free_ports
from rankwatch.producers import Identity, RankwatchLogHandler, RankwatchProducer
from rankwatch.schemas import Event, LogEvent, StepEvent

ReadTopic = Callable[..., list[Event]]
SettingsFor = Callable[..., Settings]


@pytest.mark.broker
def test_two_ranks_steps_and_logs_reach_the_topics(
    topic_settings: Settings, read_topic: ReadTopic
) -> None:
    producers = [
        RankwatchProducer(
            Identity("job-a", rank, 2, f"node-{rank}"), settings=topic_settings, enrichers=[]
        )
        for rank in (0, 1)
    ]
    log = logging.getLogger("test.two_ranks")
    log.propagate = False
    for rank, producer in enumerate(producers):
        handler = RankwatchLogHandler(producer)
        log.addHandler(handler)
        for step in range(5):
            producer.log_step(
                step,
                loss=2.0 - step / 10 if rank == 0 or step < 4 else math.nan,
                learning_rate=1e-4,
                gradient_norm=0.5,
                step_time_s=0.2,
            )
        try:
            raise RuntimeError(f"rank {rank} failed")
        except RuntimeError:
            log.exception("step 4 failed")
        log.removeHandler(handler)
    for producer in producers:
        assert producer.flush(20) == 0
        producer.close()
        assert producer.stats().sent == 6 and producer.stats().errors == 0
    steps = read_topic(topic_settings.bootstrap, topic_settings.topics.steps.name, 10)
    logs = read_topic(topic_settings.bootstrap, topic_settings.topics.logs.name, 2)
    assert all(isinstance(e, StepEvent) for e in steps)
    assert sorted((e.rank, e.step) for e in steps if isinstance(e, StepEvent)) == [
        (r, s) for r in (0, 1) for s in range(5)
    ]
    last = next(e for e in steps if isinstance(e, StepEvent) and (e.rank, e.step) == (1, 4))
    assert math.isnan(last.loss or 0.0) and last.world_size == 2 and last.host == "node-1"
    assert len(logs) == 2
    for event in logs:
        assert isinstance(event, LogEvent) and event.level == "ERROR" and event.step == 4
        assert "Traceback" in event.message and f"rank {event.rank} failed" in event.message


def test_unreachable_broker_never_blocks_nor_raises() -> None:
    (port,) = free_ports(1)  # nothing listens there
    settings = Settings().with_bootstrap(f"127.0.0.1:{port}")
    producer = RankwatchProducer(
        Identity("job-down", 0), settings=settings, max_buffered=1000, enrichers=[]
    )
    worst = 0.0
    for step in range(20_000):
        start = time.perf_counter()
        producer.log_step(step, loss=1.0)
        producer.log("INFO", "hello")
        worst = max(worst, time.perf_counter() - start)
    stats = producer.stats()
    assert stats.sent == 0 and stats.buffered <= 1000
    assert stats.dropped + stats.buffered == 40_000
    assert worst < 0.1  # generous for a busy 2-core machine; typical calls take microseconds
    start = time.monotonic()
    producer.close(timeout=1.0)
    assert time.monotonic() - start < 3.0
    assert producer.stats().dropped == 40_000
    producer.log_step(1, loss=1.0)  # after close: dropped, counted, no exception
    assert producer.stats().dropped == 40_001


@pytest.mark.broker
@pytest.mark.slow
def test_events_buffered_while_the_broker_is_away_drain_when_it_returns(
    tmp_path: Path, read_topic: ReadTopic, settings_for: SettingsFor
) -> None:
    cluster = LocalCluster.create(tmp_path, nodes_count=1, port=0)
    producer = None
    try:
        cluster.start(timeout_s=90)
        settings = settings_for(cluster.bootstrap, "back.steps", "back.logs")
        create_topics(settings)
        producer = RankwatchProducer(
            Identity("job-back", 0), settings=settings, enrichers=[], max_buffered=10_000
        )
        for step in range(100):
            producer.log_step(step, loss=1.0)
        assert producer.flush(20) == 0
        cluster.stop(grace_s=10)
        for step in range(100, 300):  # the broker is away: buffered, not blocking
            producer.log_step(step, loss=1.0)
        time.sleep(1.0)
        assert producer.stats().sent == 100 and producer.stats().buffered == 200
        cluster.start(timeout_s=90)
        assert producer.flush(30) == 0
        assert producer.stats().sent == 300 and producer.stats().dropped == 0
        steps = read_topic(cluster.bootstrap, "back.steps", 300)
        assert sorted(e.step for e in steps if isinstance(e, StepEvent)) == list(range(300))
    finally:
        if producer is not None:
            producer.close(1)
        cluster.stop(grace_s=10, purge=True)


@pytest.mark.broker
def test_subscribe_delivers_this_jobs_alerts(
    topic_settings: Settings, pause_alert: Callable[[str, str], bytes]
) -> None:
    from confluent_kafka import Producer

    from rankwatch.producers import subscribe
    from rankwatch.schemas import Alert

    received: list[Alert] = []
    with subscribe("job-x", received.append, settings=topic_settings) as subscription:
        assert subscription.wait_ready(20)
        producer = Producer({"bootstrap.servers": topic_settings.bootstrap})
        for job in ("job-other", "job-x"):
            producer.produce(
                topic_settings.topics.alerts.name, pause_alert(f"a-{job}", job), job.encode()
            )
        producer.produce(topic_settings.topics.alerts.name, b"not json", b"job-x")
        assert producer.flush(10) == 0
        deadline = time.monotonic() + 15
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    assert [a.alert_id for a in received] == ["a-job-x"] and received[0].action == "pause_job"
    assert subscription.errors == 1


@pytest.mark.broker
def test_subscribe_sees_alerts_raised_while_it_connects_but_not_older_ones(
    topic_settings: Settings, pause_alert: Callable[[str, str], bytes]
) -> None:
    from confluent_kafka import Producer

    from rankwatch.producers import subscribe
    from rankwatch.schemas import Alert

    def alert(alert_id: str) -> bytes:
        return pause_alert(alert_id, "job-y")

    producer = Producer({"bootstrap.servers": topic_settings.bootstrap})
    topic = topic_settings.topics.alerts.name
    producer.produce(topic, alert("before"), b"job-y")  # e.g. what paused the previous run
    assert producer.flush(10) == 0
    time.sleep(0.05)
    received: list[Alert] = []
    with subscribe("job-y", received.append, settings=topic_settings) as subscription:
        # Published at once, before the subscription has even reached the broker.
        producer.produce(topic, alert("during"), b"job-y")
        assert producer.flush(10) == 0
        assert subscription.wait_ready(20)
        deadline = time.monotonic() + 15
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    assert [a.alert_id for a in received] == ["during"]


@pytest.mark.broker
def test_subscribe_keeps_an_alert_published_while_it_positions_itself(
    topic_settings: Settings,
    pause_alert: Callable[[str, str], bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An alert that lands just after the search by time found nothing (the race CI hit: a
    pause published as the trainer's subscription was being positioned was skipped)."""
    from confluent_kafka import Producer

    from rankwatch.producers import _subscribe, subscribe
    from rankwatch.schemas import Alert

    producer = Producer({"bootstrap.servers": topic_settings.bootstrap})
    topic = topic_settings.topics.alerts.name
    made = _subscribe.AlertSubscription._consumer

    class PublishAfterSearch:
        """The real consumer; its search by time is followed at once by a published alert."""

        def __init__(self, consumer: Any) -> None:
            self._consumer = consumer

        def __getattr__(self, name: str) -> Any:
            return getattr(self._consumer, name)

        def offsets_for_times(self, *args: Any, **kwargs: Any) -> Any:
            found = self._consumer.offsets_for_times(*args, **kwargs)
            producer.produce(topic, pause_alert("in-between", "job-z"), b"job-z")
            assert producer.flush(10) == 0
            return found

    monkeypatch.setattr(
        _subscribe.AlertSubscription, "_consumer", lambda self: PublishAfterSearch(made(self))
    )
    received: list[Alert] = []
    with subscribe("job-z", received.append, settings=topic_settings) as subscription:
        assert subscription.wait_ready(20)
        deadline = time.monotonic() + 15
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [a.alert_id for a in received] == ["in-between"]
