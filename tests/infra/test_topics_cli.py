"""`rankwatch topics create|list` against the session broker."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rankwatch.infra import delete_topics, free_ports, list_topics

RANKWATCH = Path(sys.executable).with_name("rankwatch")


def rankwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RANKWATCH), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _config(tmp_path: Path) -> tuple[Path, list[str]]:
    """A config with unique topic names, so a shared broker never sees a collision."""
    suffix = uuid.uuid4().hex[:8]
    names = [f"t{suffix}.{role}" for role in ("steps", "logs", "alerts", "deadletter")]
    path = tmp_path / "rankwatch.toml"
    path.write_text(
        f'[topics.steps]\nname = "{names[0]}"\npartitions = 4\nretention_ms = 3600000\n'
        f'[topics.logs]\nname = "{names[1]}"\npartitions = 4\n'
        f'[topics.alerts]\nname = "{names[2]}"\npartitions = 2\nreplication_factor = 1\n'
        f'[topics.deadletter]\nname = "{names[3]}"\nretention_ms = -1\n'
    )
    return path, names


@pytest.mark.broker
def test_create_twice_is_idempotent(kafka_bootstrap: str, tmp_path: Path) -> None:
    path, names = _config(tmp_path)
    try:
        first = rankwatch("topics", "create", "--config", str(path), "--bootstrap", kafka_bootstrap)
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [f"{name}: created" for name in names]
        second = rankwatch(
            "topics", "create", "--config", str(path), "--bootstrap", kafka_bootstrap
        )
        assert second.returncode == 0, second.stderr
        assert second.stdout.splitlines() == [f"{name}: exists" for name in names]

        found = {t.name: t for t in list_topics({"bootstrap.servers": kafka_bootstrap})}
        assert [found[n].partitions for n in names] == [4, 4, 2, 3]
        assert all(found[n].replication_factor == 1 for n in names)
        assert _retention(kafka_bootstrap, names[0]) == "3600000"
        assert _retention(kafka_bootstrap, names[3]) == "-1"

        listed = rankwatch("topics", "list", "--bootstrap", kafka_bootstrap)
        assert listed.returncode == 0, listed.stderr
        assert f"{names[0]}\tpartitions=4\treplication=1" in listed.stdout.splitlines()
    finally:
        delete_topics({"bootstrap.servers": kafka_bootstrap}, names)


def _retention(bootstrap: str, topic: str) -> str:
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    resource = ConfigResource(ResourceType.TOPIC, topic)
    client = AdminClient({"bootstrap.servers": bootstrap})  # referenced until the result
    configs = client.describe_configs([resource])
    value: str = configs[resource].result(timeout=10)["retention.ms"].value
    return value


@pytest.mark.broker
def test_make_topic_fixture_round_trip(kafka_bootstrap: str, make_topic: object) -> None:
    from confluent_kafka import Consumer, Producer

    topic = make_topic(partitions=3)  # type: ignore[operator]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(30):
        producer.produce(topic, key=f"job-{i % 5}", value=str(i))
    assert producer.flush(10) == 0
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    values: set[str] = set()
    try:
        for _ in range(200):
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                values.add(message.value().decode())
            if len(values) == 30:
                break
    finally:
        consumer.close()
    assert values == {str(i) for i in range(30)}


def test_unreachable_bootstrap_fails_fast_with_a_message() -> None:
    (port,) = free_ports(1)
    result = rankwatch("topics", "list", "--bootstrap", f"127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == 2
    assert result.stderr.startswith(f"rankwatch: error: cannot list topics on 127.0.0.1:{port}:")


def test_bad_config_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[topics.steps]\npartitions = 0\n")
    result = rankwatch("topics", "create", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"rankwatch: error: {path}: topics.steps.partitions: must be >= 1, got integer 0\n"
    )
