"""Fixtures of the producer tests: settings pointing at fresh topics, and a topic reader."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from rankwatch.config import Settings, TopicSettings, TopicsSettings
from rankwatch.schemas import Event, decode

ReadTopic = Callable[..., list[Event]]
SettingsFor = Callable[..., Settings]


def settings_for(bootstrap: str, steps: str, logs: str, alerts: str | None = None) -> Settings:
    topics = TopicsSettings(
        steps=TopicSettings(name=steps),
        logs=TopicSettings(name=logs),
        alerts=TopicSettings(name=alerts or f"unused.alerts.{uuid.uuid4().hex[:8]}"),
        deadletter=TopicSettings(name=f"unused.deadletter.{uuid.uuid4().hex[:8]}"),
    )
    return Settings(topics=topics).with_bootstrap(bootstrap)


@pytest.fixture
def topic_settings(kafka_bootstrap: str, make_topic: Callable[..., str]) -> Settings:
    """Settings on the session broker with fresh steps (2 partitions), logs and alerts topics."""
    return settings_for(kafka_bootstrap, make_topic(2), make_topic(1), make_topic(1))


def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = 20.0) -> list[Event]:
    """Every message of ``topic`` from the beginning, decoded, until ``count`` or the timeout."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        events: list[Event] = []
        deadline = time.monotonic() + timeout_s
        while len(events) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                assert message.key() is not None
                events.append(decode(message.value()))
        return events
    finally:
        consumer.close()


@pytest.fixture(name="read_topic")
def read_topic_fixture() -> ReadTopic:
    """``read_topic(bootstrap, topic, count, timeout_s=20)``: see :func:`read_topic`."""
    return read_topic


@pytest.fixture(name="settings_for")
def settings_for_fixture() -> SettingsFor:
    """``settings_for(bootstrap, steps, logs, alerts=None)``: see :func:`settings_for`."""
    return settings_for


@pytest.fixture
def pause_alert() -> Callable[[str, str], bytes]:
    """The wire bytes of a firing ``pause_job`` alert: ``pause_alert(alert_id, job_id)``."""
    from rankwatch.schemas import Alert, encode

    def make(alert_id: str, job_id: str) -> bytes:
        alert = Alert(
            alert_id=alert_id,
            job_id=job_id,
            rule="loss_explosion",
            severity="critical",
            scope="job",
            first_seen=0,
            last_seen=1,
            summary="loss is NaN",
            action="pause_job",
        )
        return encode(alert)

    return make
