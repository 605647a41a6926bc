"""The local cluster's layout, jar assembly, and the 3-node cluster surviving a crashed node."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rankwatch.infra import (
    BrokerError,
    KafkaJarsError,
    LocalCluster,
    ensure_kafka_jars,
    jars_present,
    list_topics,
)
from rankwatch.infra.testing import create_unique_topic


def test_port_layout_follows_kafka_quickstart(tmp_path: Path) -> None:
    single = LocalCluster.create(tmp_path)
    assert [(s.port, s.controller_port) for s in single.specs] == [(9092, 9093)]
    triple = LocalCluster.create(tmp_path, nodes_count=3, port=19092)
    assert triple.bootstrap == "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
    assert [s.controller_port for s in triple.specs] == [19095, 19096, 19097]


def test_only_one_or_three_nodes(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="nodes must be 1 or 3, got 2"):
        LocalCluster.create(tmp_path, nodes_count=2)


def test_jars_are_assembled_once() -> None:
    lib = ensure_kafka_jars()
    assert jars_present()
    assert any(lib.glob("kafka_2.13-4.1.1.jar"))
    started = time.monotonic()
    assert ensure_kafka_jars() == lib
    assert time.monotonic() - started < 0.5  # the marker short-cuts Maven


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKWATCH_KAFKA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KafkaJarsError, match="`mvn` is not on PATH"):
        ensure_kafka_jars()


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_three_nodes_survive_one_killed(tmp_path: Path) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    cluster = LocalCluster.create(tmp_path, nodes_count=3, port=0)
    try:
        cluster.start()
        topic = create_unique_topic(cluster.bootstrap, partitions=3)  # broker default: RF 3
        (info,) = [
            t for t in list_topics({"bootstrap.servers": cluster.bootstrap}) if t.name == topic
        ]
        assert info.replication_factor == 3

        producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})

        def produce(start: int, stop: int) -> None:
            for i in range(start, stop):
                producer.produce(topic, key=str(i % 7), value=str(i))
            assert producer.flush(30) == 0

        produce(0, 100)
        # Crash the node leading partition 0, so a leader election has to happen.
        metadata = producer.list_topics(topic, timeout=10)
        leader = metadata.topics[topic].partitions[0].leader
        cluster.kill_node(leader)
        assert [s.running for s in cluster.status()].count(True) == 2

        produce(100, 200)  # acks=all with min.insync.replicas=2: needs both survivors

        # No consumer group: __consumer_offsets (RF 3) may not exist yet with a node down.
        consumer = Consumer(
            {
                "bootstrap.servers": cluster.bootstrap,
                "group.id": "unused",
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        values: set[str] = set()
        deadline = time.monotonic() + 30
        try:
            while len(values) < 200 and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    values.add(message.value().decode())
        finally:
            consumer.close()
        assert values == {str(i) for i in range(200)}

        cluster.restart_node(leader)
        assert all(s.running for s in cluster.status())
    finally:
        cluster.stop(grace_s=5, purge=True)
