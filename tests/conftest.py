"""Session-wide fixtures: one real Kafka broker for every test marked ``broker``.

The logic lives in :mod:`rankwatch.infra.testing`; set ``RANKWATCH_TEST_BOOTSTRAP=host:port``
to run the tests against a broker you started yourself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from rankwatch.infra.testing import create_unique_topic, delete_test_topics, session_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a single-node broker that lives for the whole session."""
    with session_broker(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """``make_topic(partitions=1) -> name``: a fresh uniquely named topic, deleted afterwards."""
    created: list[str] = []

    def make(partitions: int = 1) -> str:
        name = create_unique_topic(kafka_bootstrap, partitions)
        created.append(name)
        return name

    yield make
    delete_test_topics(kafka_bootstrap, created)
