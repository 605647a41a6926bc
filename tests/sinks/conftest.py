"""Fixtures of the sink tests: a real PostgreSQL server for the session, stores of both kinds.

The PostgreSQL logic lives in :mod:`rankwatch.sinks.testing` (installs Debian's package if it is
missing, runs the server as the ``postgres`` user on a free loopback port).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rankwatch.sinks.storage import SqlStore, open_store
from rankwatch.sinks.testing import PostgresServer, PostgresUnavailable


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session; tests skip only if it cannot run here."""
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        server.stop()
        pytest.skip(f"PostgreSQL cannot be installed or started here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def make_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """``make_db_url("sqlite" | "postgres") -> URL`` of a fresh, empty database."""

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
        server: PostgresServer = request.getfixturevalue("postgres")
        return server.create_database(f"t_{uuid.uuid4().hex[:12]}")

    return make


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, make_db_url: Callable[[str], str]) -> Iterator[SqlStore]:
    """A migrated, empty store of each back-end in turn."""
    opened = open_store(make_db_url(backend))
    yield opened
    opened.close()
