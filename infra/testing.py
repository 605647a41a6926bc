"""Test support (public API): a real broker for a test session, and throwaway topics.

``tests/conftest.py`` wraps these in fixtures; other projects' tests may use them the same way::

    with session_broker(tmp_dir) as bootstrap:
        topic = create_unique_topic(bootstrap, partitions=3)
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rankwatch.infra.admin import admin_client, delete_topics, wait_until_ready
from rankwatch.infra.cluster import LocalCluster
from rankwatch.infra.exceptions import TopicError

TEST_BOOTSTRAP_ENV = "RANKWATCH_TEST_BOOTSTRAP"


@contextmanager
def session_broker(home: Path, *, timeout_s: float = 90.0) -> Iterator[str]:
    """Yield the bootstrap of a single-node broker on free ports, stopped on exit.

    With ``$RANKWATCH_TEST_BOOTSTRAP`` set, that broker is used instead (and left running).
    """
    external = os.environ.get(TEST_BOOTSTRAP_ENV)
    if external:
        wait_until_ready(external, timeout_s=timeout_s)
        yield external
        return
    cluster = LocalCluster.create(home, nodes_count=1, port=0)
    try:
        cluster.start(timeout_s=timeout_s)
        yield cluster.bootstrap
    finally:
        # Also after a failed start: a half-started JVM must not outlive the test session.
        cluster.stop(grace_s=10.0, purge=True)


@contextmanager
def secure_cluster(home: Path, *, timeout_s: float = 90.0) -> Iterator[LocalCluster]:
    """Yield a started single-node SASL_SSL cluster on free ports, stopped on exit.

    Its clients need ``cluster.client_config()`` (librdkafka) or the rankwatch config file
    ``cluster.security.client_config_file``; see :mod:`rankwatch.infra.security`.
    """
    cluster = LocalCluster.create(home, nodes_count=1, port=0, secure=True)
    try:
        cluster.start(timeout_s=timeout_s)
        yield cluster
    finally:
        cluster.stop(grace_s=10.0, purge=True)


def create_unique_topic(
    bootstrap: str,
    partitions: int = 1,
    *,
    prefix: str = "test",
    replication_factor: int = -1,
    timeout_s: float = 30.0,
) -> str:
    """Create ``<prefix>.<random hex>`` and return its name once the cluster knows it."""
    from confluent_kafka import KafkaException
    from confluent_kafka.cimpl import NewTopic

    name = f"{prefix}.{uuid.uuid4().hex[:12]}"
    client = admin_client({"bootstrap.servers": bootstrap})
    future = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)],
        operation_timeout=timeout_s,
    )[name]
    try:
        future.result(timeout=timeout_s)
    except KafkaException as exc:
        raise TopicError(f"creating test topic {name!r} failed: {exc.args[0].str()}") from None
    _wait_until_every_broker_knows(bootstrap, name, partitions, timeout_s)
    return name


def _wait_until_every_broker_knows(
    bootstrap: str, name: str, partitions: int, timeout_s: float
) -> None:
    # A created topic reaches each broker's metadata cache a little later (KRaft propagates it
    # asynchronously); on a 3-node cluster a metadata request right after creation can miss it.
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    for address in bootstrap.split(","):
        client = admin_client({"bootstrap.servers": address})
        while True:
            try:
                # All topics, not ``list_topics(name)``: naming one may auto-create it.
                found = client.list_topics(timeout=1.0).topics.get(name)
            except KafkaException:
                found = None
            if (
                found is not None
                and found.error is None
                and len(found.partitions) == partitions
                and all(p.leader >= 0 for p in found.partitions.values())
            ):
                break
            if time.monotonic() > deadline:
                raise TopicError(f"test topic {name!r} not visible on {address} after {timeout_s}s")
            time.sleep(0.05)


def delete_test_topics(bootstrap: str, names: list[str]) -> None:
    """Delete topics made by :func:`create_unique_topic` (missing ones are fine)."""
    delete_topics({"bootstrap.servers": bootstrap}, names)
