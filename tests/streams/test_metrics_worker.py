"""The worker's Prometheus metrics: read from a real pipeline, and scraped by a real Prometheus.

The first tests run the real engine over synthetic steps and parse the exposition text with
prometheus-client's own parser. The last starts ``rankwatch worker --metrics-port`` on the real
broker and Debian's Prometheus (1 s scrapes, loopback, temporary storage), and asks
Prometheus's HTTP API for our series.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rankwatch.schemas import StepEvent, encode
from rankwatch.streams import Engine
from rankwatch.streams.metrics import WorkerMetrics
from rankwatch.streams.pipeline import DeadLetter, Pipeline
from rankwatch.streams.runtime.common import Counters

T0 = 1_743_848_595.0


def steps(job: str, last: int, ranks: int = 4, nan_rank: int | None = None) -> list[StepEvent]:
    """Steps 0..last-1; ``nan_rank``'s loss is NaN from step 5 (a loss_nan alert)."""
    return [
        StepEvent(
            job_id=job,
            rank=rank,
            world_size=ranks,
            step=step,
            timestamp=T0 + step,
            loss=math.nan if rank == nan_rank and step >= 5 else 2.0,
        )
        for step in range(last)
        for rank in range(ranks)
    ]


def runtime_over(events: list[StepEvent], max_jobs: int = 50) -> WorkerMetrics:
    """The metrics of a runtime-shaped object whose real pipeline took ``events``."""
    pipeline = Pipeline(Engine.with_builtin_detectors())
    runtime = SimpleNamespace(
        pipeline=pipeline, engine=pipeline.engine, counters=Counters(), inputs=("steps", "logs")
    )
    metrics = WorkerMetrics(runtime, max_jobs=max_jobs)
    for event in events:
        result = pipeline.handle(encode(event), partition=0)
        if isinstance(result, DeadLetter):
            runtime.counters.dead += 1
            continue
        for alert in result:
            metrics.on_alert(alert)
    result = pipeline.handle(b"not json", partition=0)
    assert isinstance(result, DeadLetter)
    runtime.counters.dead += 1
    return metrics


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counts_are_the_pipelines_and_job_health_is_per_job() -> None:
    events = steps("llm-a", 12, nan_rank=2) + steps("llm-b", 12)
    metrics = runtime_over(events)
    metrics.on_kafka_stats(
        {
            "topics": {
                "steps": {
                    "partitions": {
                        "0": {"desired": True, "hi_offset": 500, "app_offset": 480},
                        "1": {"desired": False, "hi_offset": 9, "app_offset": 1},
                    }
                },
                "other": {"partitions": {"0": {"desired": True, "hi_offset": 5, "app_offset": 0}}},
            }
        }
    )
    metrics.on_snapshot(0.02)
    got = samples(metrics)
    assert got[("rankwatch_worker_events_consumed_total", ())] == len(events)
    assert got[("rankwatch_worker_dead_letters_total", ())] == 1
    assert got[("rankwatch_worker_jobs_watched", ())] == 2
    fired = [k for k in got if k[0] == "rankwatch_worker_alerts_total"]
    assert fired and all(dict(k[1])["status"] == "firing" for k in fired)
    assert got[("rankwatch_job_open_alerts", (("job_id", "llm-a"), ("severity", "critical")))] >= 1
    assert got[("rankwatch_job_open_alerts", (("job_id", "llm-b"), ("severity", "critical")))] == 0
    assert got[("rankwatch_job_ranks", (("job_id", "llm-a"),))] == 4
    assert got[("rankwatch_job_step", (("job_id", "llm-b"),))] == 11
    lag = {k: v for k, v in got.items() if k[0] == "rankwatch_worker_consumer_lag"}
    assert lag == {("rankwatch_worker_consumer_lag", (("partition", "0"), ("topic", "steps"))): 20}
    assert got[("rankwatch_worker_snapshot_seconds_count", ())] == 1


def test_per_job_series_are_capped_and_never_per_rank() -> None:
    jobs = [f"job-{n:02d}" for n in range(12)]
    events = [e for job in jobs for e in steps(job, 3, ranks=64)]
    events += steps("job-sick", 8, ranks=64, nan_rank=3)
    got = samples(runtime_over(events, max_jobs=5))
    per_job = {dict(k[1])["job_id"] for k in got if k[0].startswith("rankwatch_job_")}
    assert len(per_job) == 5 and "job-sick" in per_job  # the alerting job comes first
    assert got[("rankwatch_jobs_not_exported", ())] == 8
    assert not any("rank" in dict(labels) for _, labels in got)
    # 5 jobs x (3 severities + ranks + step + last event): the 64-rank jobs add no series.
    assert sum(1 for k in got if k[0].startswith("rankwatch_job_")) == 5 * 6


# -- a real Prometheus scraping a real worker ----------------------------------------------


@pytest.fixture
def topics(kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> Path:
    config = tmp_path / "rankwatch.toml"
    names = {role: make_topic(1) for role in ("steps", "logs", "alerts", "deadletter")}
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_bootstrap}"\n'
        + "".join(f'[topics.{r}]\nname = "{n}"\npartitions = 1\n' for r, n in names.items())
    )
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for event in steps("llm-prom", 40, nan_rank=1):
        producer.produce(names["steps"], encode(event), key=event.job_id.encode())
    assert producer.flush(30) == 0
    return config


@pytest.fixture
def worker(topics: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    from rankwatch.sinks.testing import _free_port

    port = _free_port()
    log = tmp_path / "worker.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("rankwatch")),
                "worker",
                "--config",
                str(topics),
                "--app-id",
                f"test-metrics-{uuid.uuid4().hex[:8]}",
                "--snapshot-interval",
                "0.5",
                "--session-timeout",
                "6",
                "--metrics-port",
                str(port),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    yield proc, port, log
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.timeout(120)
def test_a_real_prometheus_scrapes_the_worker(
    worker: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    from rankwatch.sinks.testing import PrometheusServer, ServerUnavailable

    proc, port, log = worker
    prometheus = PrometheusServer([f"127.0.0.1:{port}"])
    try:
        prometheus.start()
    except ServerUnavailable as exc:
        pytest.skip(f"Prometheus cannot be installed or started here: {exc}")
    try:

        def answer(expr: str) -> list[dict[str, Any]]:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            return prometheus.query(expr)

        deadline = time.monotonic() + 60
        consumed: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not consumed:
            consumed = answer("rankwatch_worker_events_consumed_total >= 160")
            time.sleep(0.5)
        assert consumed, f"no events counted\n{log.read_text(errors='replace')[-3000:]}"
        assert consumed[0]["metric"]["job"] == "rankwatch"  # Prometheus's scrape job label
        (jobs,) = answer("rankwatch_worker_jobs_watched")
        assert jobs["value"][1] == "1"
        alerts = answer('sum(rankwatch_worker_alerts_total{status="firing"})')
        assert alerts and float(alerts[0]["value"][1]) >= 1
        health = answer('rankwatch_job_ranks{job_id="llm-prom"}')
        assert health and health[0]["value"][1] == "4"
        lag = answer("rankwatch_worker_consumer_lag")
        assert lag and {s["metric"]["partition"] for s in lag} == {"0"}
    finally:
        prometheus.stop()
