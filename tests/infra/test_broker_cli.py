"""`rankwatch broker start|status|stop` in separate processes, as a person would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rankwatch.infra import LocalCluster, list_topics

RANKWATCH = Path(sys.executable).with_name("rankwatch")


def rankwatch(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RANKWATCH_HOME": str(home)}
    return subprocess.run(
        [str(RANKWATCH), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.broker
@pytest.mark.slow
def test_start_status_stop_across_processes(tmp_path: Path) -> None:
    try:
        started = rankwatch(tmp_path, "broker", "start", "--port", "0")
        assert started.returncode == 0, started.stderr
        assert "Kafka started: 1 node(s), bootstrap 127.0.0.1:" in started.stdout

        cluster = LocalCluster.open(tmp_path)
        assert cluster is not None and cluster.running
        assert list_topics({"bootstrap.servers": cluster.bootstrap}) == []

        again = rankwatch(tmp_path, "broker", "start")
        assert again.returncode == 0, again.stderr
        assert f"Kafka already running: 1 node(s), bootstrap {cluster.bootstrap}" in again.stdout

        status = rankwatch(tmp_path, "broker", "status")
        assert status.returncode == 0
        assert status.stdout.startswith(f"1/1 node(s) running, bootstrap {cluster.bootstrap}")

        stopped = rankwatch(tmp_path, "broker", "stop")
        assert (stopped.returncode, stopped.stdout) == (0, "stopped\n")
        status = rankwatch(tmp_path, "broker", "status")
        assert status.returncode == 3
        assert "node 1" in status.stdout and "stopped" in status.stdout

        # A stopped cluster comes back on the same port with its data.
        restarted = rankwatch(tmp_path, "broker", "start")
        assert restarted.returncode == 0, restarted.stderr
        assert f"Kafka started: 1 node(s), bootstrap {cluster.bootstrap}" in restarted.stdout

        other_port = rankwatch(tmp_path, "broker", "start", "--port", "1")
        assert other_port.returncode == 2
        assert "stop it with `rankwatch broker stop --purge`" in other_port.stderr
    finally:
        rankwatch(tmp_path, "broker", "stop", "--purge", "--grace", "5")
    assert not (tmp_path / "broker").exists()


def test_status_and_stop_without_a_cluster(tmp_path: Path) -> None:
    status = rankwatch(tmp_path, "broker", "status")
    assert (status.returncode, status.stdout) == (3, "not running (no local cluster)\n")
    stop = rankwatch(tmp_path, "broker", "stop")
    assert (stop.returncode, stop.stdout) == (0, "no local cluster to stop\n")
