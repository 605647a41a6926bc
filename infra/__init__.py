"""A real Apache Kafka for development and tests: jars, local brokers, topics.

- :func:`ensure_kafka_jars` assembles the Kafka jars with Maven once (``infra/pom.xml``).
- :class:`LocalCluster` starts, stops and inspects 1 or 3 local KRaft nodes whose state lives in
  the run dir (``$RANKWATCH_HOME`` or ``./.rankwatch``), so separate commands can manage them.
- :func:`create_topics`, :func:`list_topics`, :func:`wait_until_ready` talk to any cluster.
- :mod:`rankwatch.infra.testing` holds the pieces behind the test fixtures.
"""

from rankwatch.infra.admin import (
    TopicInfo,
    TopicResult,
    create_topics,
    delete_topics,
    list_topics,
    wait_until_ready,
)
from rankwatch.infra.cluster import LocalCluster, NodeStatus, free_ports, run_dir
from rankwatch.infra.exceptions import (
    BrokerError,
    BrokerTimeout,
    InfraError,
    KafkaJarsError,
    TopicError,
)
from rankwatch.infra.jars import KAFKA_VERSION, ensure_kafka_jars, jars_present, kafka_home

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "BrokerTimeout",
    "InfraError",
    "KafkaJarsError",
    "LocalCluster",
    "NodeStatus",
    "TopicError",
    "TopicInfo",
    "TopicResult",
    "create_topics",
    "delete_topics",
    "ensure_kafka_jars",
    "free_ports",
    "jars_present",
    "kafka_home",
    "list_topics",
    "run_dir",
    "wait_until_ready",
]
