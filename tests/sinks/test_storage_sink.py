"""The storage sink on the real broker: SIGKILLed mid-run and restarted, nothing lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from rankwatch.schemas import Alert, LogEvent, StepEvent, encode
from rankwatch.sinks.storage import LogQuery, SqlStore, StepQuery, open_store
from rankwatch.sinks.storage.consumer import StorageSink
from rankwatch.sinks.storage.rollups import WIDTHS

pytestmark = pytest.mark.broker

T0 = 1_750_000_000.0
RANKS, STEPS = 8, 400  # 3,200 steps: enough batches of 20 that the kill lands mid-run


def run_events(first: int, last: int) -> list[StepEvent | LogEvent | Alert]:
    events: list[StepEvent | LogEvent | Alert] = []
    for step in range(first, last):
        for rank in range(RANKS):
            events.append(
                StepEvent(
                    job_id="job-a",
                    rank=rank,
                    step=step,
                    timestamp=T0 + step,
                    loss=3.0 - step / 1000,
                    world_size=RANKS,
                )
            )
        if step % 10 == 0:
            events.append(
                LogEvent(
                    job_id="job-a",
                    rank=step % RANKS,
                    timestamp=T0 + step,
                    level="INFO",
                    message=f"step {step} checkpoint saved",
                )
            )
        if step % 100 == 50:
            fired = Alert(
                alert_id=f"inc-{step}",
                job_id="job-a",
                rule="straggler",
                severity="warning",
                scope="rank",
                ranks=[3],
                step=step,
                first_seen=T0 + step,
                last_seen=T0 + step,
                summary="rank 3 is slow",
            )
            events += [
                fired,
                fired,  # a repeat of the same incident: still one row
                fired.model_copy(update={"status": "resolved", "last_seen": fired.last_seen}),
            ]
    return events


def produce(bootstrap: str, topics: dict[str, str], events: list[object]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for event in events:
        assert isinstance(event, StepEvent | LogEvent | Alert)
        topic = topics[event.kind]
        producer.produce(topic, encode(event), key=event.job_id.encode())
    assert producer.flush(30) == 0


def start_sink(config: Path, url: str, group: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rankwatch.cli",
            "sink",
            "storage",
            "--config",
            str(config),
            "--db",
            url,
            "--group",
            group,
            "--instance-id",
            group,
            "--batch-size",
            "20",
            "--linger",
            "100ms",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_for(store: SqlStore, done: Callable[[dict[str, int]], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done(store.counts()):
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out; store has {store.counts()}")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_run_is_stored_once_each_after_the_sink_is_killed_and_restarted(
    kind: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_db_url: Callable[[str], str],
    tmp_path: Path,
) -> None:
    topics = {"step": make_topic(3), "log": make_topic(3), "alert": make_topic(1)}
    config = tmp_path / "rankwatch.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_bootstrap}"\n'
        f'[topics.steps]\nname = "{topics["step"]}"\n'
        f'[topics.logs]\nname = "{topics["log"]}"\n'
        f'[topics.alerts]\nname = "{topics["alert"]}"\n'
        # Runs at start through the CLI's wiring; deletes nothing of a run from 2025.
        '[sinks.storage]\nstep_retention = "3650d"\n'
    )
    url = make_db_url(kind)
    group = f"storage-{tmp_path.name}"
    first_half, second_half = run_events(0, STEPS // 2), run_events(STEPS // 2, STEPS)
    produce(kafka_bootstrap, topics, first_half)

    with open_store(url) as store:
        sink = start_sink(config, url, group)
        try:
            # Kill once some batches are committed, while the sink is still busy.
            wait_for(store, lambda c: c["steps"] > 400, 60)
            os.kill(sink.pid, signal.SIGKILL)  # mid-run: batches written but not committed
        finally:
            sink.wait(10)
        at_kill = store.counts()["steps"]
        assert 400 < at_kill < RANKS * STEPS // 2, "the kill did not land mid-run"

        produce(kafka_bootstrap, topics, second_half)
        # A message that is not an event: skipped and counted, never a reason to stop.
        garbage = Producer({"bootstrap.servers": kafka_bootstrap})
        garbage.produce(topics["step"], b"{not json")
        assert garbage.flush(30) == 0
        sink = start_sink(config, url, group)
        try:
            wait_for(
                store,
                lambda c: (
                    c["steps"] == RANKS * STEPS
                    and c["logs"] == STEPS // 10
                    and c["alerts"] == 2 * 4
                ),
                60,
            )
            time.sleep(0.5)  # anything re-read after this point must still not add rows
        finally:
            sink.send_signal(signal.SIGTERM)
            output = sink.communicate(timeout=20)[0].decode()
        assert sink.returncode == 0, output
        assert "skipped a message that is not a valid event" in output

        assert store.counts() == {
            "steps": RANKS * STEPS,
            "logs": STEPS // 10,
            "alerts": 8,
            "job_ranks": RANKS,
            "step_rollups": RANKS * (25 + 4 + 1),  # 400 steps: blocks of 16, 128 and 1024
        }
        # The rollups counted each step once through the kill and the re-read batches.
        counted = store._query(
            "SELECT width, sum(loss_n), min(loss_min) FROM step_rollups GROUP BY width"
        )
        assert sorted(counted) == [(w, RANKS * STEPS, 3.0 - (STEPS - 1) / 1000) for w in WIDTHS]
        heatmap = store.heatmap("job-a", "loss", stat="max", columns=25)
        assert heatmap.values == [[3.0 - block * 16 / 1000 for block in range(25)]] * RANKS
        logs = store.logs(LogQuery("job-a", limit=10_000))
        assert sorted(r.message for r in logs) == sorted(
            e.message for e in first_half + second_half if isinstance(e, LogEvent)
        )
        stored_alerts = {(a.alert_id, a.status) for a in store.alerts("job-a")}
        assert stored_alerts == {
            (f"inc-{s}", st) for s in range(50, STEPS, 100) for st in ("firing", "resolved")
        }
        (job,) = store.jobs()
        assert (job.ranks, job.last_step, job.open_alerts) == (RANKS, STEPS - 1, 0)


def test_the_sinks_step_retention_keeps_the_evidence_and_the_rollups(tmp_path: Path) -> None:
    from rankwatch.config import load_settings

    events = run_events(0, 200)
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        store.write_batch(
            [e for e in events if isinstance(e, StepEvent)],
            [],
            [e for e in events if isinstance(e, Alert)],
        )
        before = store.heatmap("job-a", "loss", columns=13)
        sink = StorageSink(
            store, load_settings(None, bootstrap="127.0.0.1:1"), step_retention_s=60.0
        )
        sink._maybe_retain()  # what the run loop does at start and every hour
        kept = {(p.rank, p.step) for p in store.steps(StepQuery("job-a", "loss"))}
        # Only the steps within 10 minutes of the alerts at steps 50 and 150, on rank 3.
        assert kept == {(3, s) for s in range(200)}
        assert store.heatmap("job-a", "loss", columns=13) == before
    finally:
        store.close()
