"""One simulated job in one SQLite store for the dashboard's tests, and a server over it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rankwatch.ui.testing import Filled, UIServer, fill_store


@pytest.fixture(scope="session")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Filled]:
    """A 16-rank job whose rank 5 leaks GPU memory from step 20 over 200 steps (and rank 11 hits an NCCL
    error at step 70), through the real detectors into a real store."""
    db = "sqlite:///" + str(tmp_path_factory.mktemp("ui") / "ui.db")
    job = fill_store(db, ranks=16, steps=200, leak_rank=5, extra="nccl_error@70:11")
    rules = {a.rule for a in job.alerts}
    assert "memory_growth" in rules, f"the simulated leak fired no memory_growth: {rules}"
    return db, job


@pytest.fixture(scope="session")
def server(filled: tuple[str, Filled]) -> Iterator[UIServer]:
    """``rankwatch ui`` on loopback (no token) over the filled store."""
    with UIServer(filled[0]) as ui:
        yield ui
