"""Quick versions of the key faults against the session broker: a worker killed with -9 mid-run,
and malformed messages through the live worker. The full table is ``reliability/run.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability import faults
from reliability.fuzz import corpus

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]


def test_worker_kill9_mid_run_loses_and_duplicates_no_alert(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    rows = faults.worker_crash(kafka_bootstrap, tmp_path, trials=1, seconds=5, seed=3)
    for row in rows:
        assert row.ok, row
        assert row.expected == 2 and row.events_out == row.events_in


def test_malformed_messages_go_to_the_dead_letter_topic_and_the_worker_goes_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    messages = corpus(big_bytes=10 * 1024 * 1024)
    alerts, dead = faults.bad_input(kafka_bootstrap, tmp_path, messages)
    assert dead.ok and dead.events_out == len(messages), dead
    assert alerts.ok and alerts.expected >= 1, alerts
