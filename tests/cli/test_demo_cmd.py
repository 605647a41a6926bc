"""``rankwatch demo`` as a newcomer runs it, shortened: its own broker on free ports under its
own ``$RANKWATCH_HOME``, a worker and a storage sink, an 8-rank job with the four faults. It
must catch them all, say where things are, and leave no process behind, also on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]

ROLES = ("steps", "logs", "alerts", "deadletter")
SHORT = ["--ranks", "8", "--steps", "240", "--step-time", "0.2", "--port", "0"]


def demo(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rankwatch.cli", "demo", *args],
        cwd=home,
        env={**os.environ, "RANKWATCH_HOME": str(home / "rw")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def processes_mentioning(path: Path) -> list[str]:
    """Command lines of live processes naming ``path`` (broker, worker, sink all do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def test_demo_catches_every_fault_and_cleans_up(tmp_path: Path) -> None:
    proc = demo(tmp_path, *SHORT)
    try:
        out, _ = proc.communicate(timeout=200)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "broker up at 127.0.0.1:" in out
    for rule, rank in [("memory_growth", 5), ("straggler", 2), ("nccl_error", 1), ("cuda_oom", 5)]:
        # Live, as it fired (console sink format), and in the summary table.
        live = f" {rule} ranks={rank} step="
        assert any(" firing   demo-" in line and live in line for line in out.splitlines()), out
        assert any(line.split()[:3] == [rule, "1", str(rank)] for line in out.splitlines()), out
    assert "caught 4 of 4 injected faults; no false alarms" in out
    job = out.split("summary: 4 alerts for job ")[1].split()[0]
    assert f"rankwatch logs --db sqlite:///rw/demo.db --job {job} --rank 5 --level ERROR" in out
    assert (tmp_path / "rw" / f"{job}-memory.png").stat().st_size > 10_000
    assert "stopping the broker this demo started" in out

    from rankwatch.sinks.storage import open_store

    with open_store(f"sqlite:///{tmp_path / 'rw' / 'demo.db'}") as store:
        stored = store.alerts(job)
        (summary,) = [j for j in store.jobs() if j.job_id == job]
    assert sorted(a.rule for a in stored) == [
        "cuda_oom",
        "memory_growth",
        "nccl_error",
        "straggler",
    ]
    assert (summary.ranks, summary.last_step) == (8, 239)
    assert processes_mentioning(tmp_path) == []


def test_ctrl_c_stops_everything_it_started(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    # The session's broker (no time spent starting one), with topics of this test's own.
    (tmp_path / "rankwatch.toml").write_text(
        "".join(f'[topics.{role}]\nname = "{make_topic(2)}"\n' for role in ROLES)
    )
    proc = demo(tmp_path, *SHORT[:-2], "--bootstrap", kafka_bootstrap)
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "it will have:" in line:  # the job is starting: the worker and sink are up
                break
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert f"using the Kafka cluster at {kafka_bootstrap}" in out
    assert "interrupted" in out and "stopping the worker and the storage sink" in out
    assert processes_mentioning(tmp_path) == []
