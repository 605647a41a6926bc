"""Talking to a cluster with confluent-kafka's AdminClient: readiness, topics.

Everything has a timeout: a command pointed at the wrong address fails in seconds with a message
naming the address, instead of hanging.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rankwatch.infra.exceptions import BrokerTimeout, TopicError

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

    from rankwatch.config import Settings


def admin_client(config: Mapping[str, str]) -> AdminClient:
    from confluent_kafka.admin import AdminClient

    # log_level 0: librdkafka would print a line per refused connection while a broker starts;
    # our own errors say what went wrong.
    return AdminClient({**config, "log_level": 0})


def wait_until_ready(
    config: Mapping[str, str] | str,
    *,
    timeout_s: float = 60.0,
    brokers: int = 1,
    alive: Callable[[], bool] | None = None,
) -> float:
    """Wait until a metadata request lists ``brokers`` brokers; return the seconds it took.

    ``config`` is a librdkafka config dict or a bootstrap string. ``alive`` is polled between
    attempts so a broker that crashed at start fails fast instead of timing out.
    """
    if isinstance(config, str):
        config = {"bootstrap.servers": config}
    from confluent_kafka import KafkaException

    start = time.monotonic()
    client = admin_client(config)
    seen = 0
    while True:
        if alive is not None and not alive():
            raise BrokerTimeout("the broker process exited while starting")
        remaining = timeout_s - (time.monotonic() - start)
        if remaining <= 0:
            raise BrokerTimeout(
                f"no answer from {config['bootstrap.servers']} with {brokers} broker(s) within "
                f"{timeout_s:.0f} s (last metadata listed {seen})"
            )
        try:
            metadata = client.list_topics(timeout=min(1.0, remaining))
        except KafkaException:
            time.sleep(0.1)
            continue
        seen = len(metadata.brokers)
        if seen >= brokers:
            return time.monotonic() - start
        time.sleep(0.1)


@dataclass(frozen=True)
class TopicResult:
    """What ``create_topics`` did with one topic."""

    name: str
    created: bool  # False: it already existed (left as it is)


def create_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[TopicResult]:
    """Create the four configured topics; existing ones are fine and left unchanged."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.cimpl import NewTopic

    topics = [
        NewTopic(
            topic.name,
            num_partitions=topic.partitions,
            replication_factor=topic.replication_factor,
            config={"retention.ms": str(topic.retention_ms)},
        )
        for topic in settings.topics.by_role().values()
    ]
    client = admin_client(settings.confluent_config())
    futures = client.create_topics(topics, operation_timeout=timeout_s, request_timeout=timeout_s)
    results: list[TopicResult] = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            results.append(TopicResult(name, created=True))
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                results.append(TopicResult(name, created=False))
            else:
                raise TopicError(f"creating topic {name!r} failed: {error.str()}") from None
        except TimeoutError:
            raise TopicError(
                f"creating topic {name!r}: no answer from {settings.bootstrap} "
                f"within {timeout_s:.0f} s"
            ) from None
    return results


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    replication_factor: int


def list_topics(
    config: Mapping[str, str], *, timeout_s: float = 10.0, internal: bool = False
) -> list[TopicInfo]:
    """The cluster's topics, sorted by name; internal ones (``__*``) only if asked."""
    from confluent_kafka import KafkaException

    try:
        metadata = admin_client(config).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise TopicError(
            f"cannot list topics on {config['bootstrap.servers']}: {exc.args[0].str()}"
        ) from None
    infos = [
        TopicInfo(
            name=name,
            partitions=len(topic.partitions),
            replication_factor=max((len(p.replicas) for p in topic.partitions.values()), default=0),
        )
        for name, topic in metadata.topics.items()
        if internal or not name.startswith("__")
    ]
    return sorted(infos, key=lambda info: info.name)


def delete_topics(config: Mapping[str, str], names: list[str], *, timeout_s: float = 30.0) -> None:
    """Delete topics; missing ones are ignored (used to clean up after tests)."""
    from confluent_kafka import KafkaError, KafkaException

    if not names:
        return
    client = admin_client(config)  # keep it referenced until the futures resolve
    futures = client.delete_topics(names, operation_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise TopicError(f"deleting topic {name!r} failed: {exc.args[0].str()}") from None
