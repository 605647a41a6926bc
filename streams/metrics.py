"""Prometheus ``/metrics`` of ``rankwatch worker`` (``--metrics-port``), and the pieces the
sinks' exporter shares (:func:`kafka_lag`, :func:`serve`).

Nothing here runs per event. The counts the runtime keeps anyway (events through the pipeline,
dead letters, jobs in the engine) are read when Prometheus scrapes, by a collector; the
consumer lag per partition comes from librdkafka's statistics, which the batch runtime already
receives every second; alerts are counted as they are published (a few per incident), and the
snapshot and commit durations once per snapshot. So the loop's per-event cost is unchanged.

Series (``rankwatch_worker_`` prefix unless said):

- ``events_consumed_total``, ``dead_letters_total``, ``alerts_total{rule,status}``;
- ``consumer_lag{topic,partition}``: messages on the broker past the worker's position;
- ``snapshot_seconds`` and ``commit_seconds`` (histograms), ``snapshots_total``;
- ``jobs_watched``; and per job, for at most ``max_jobs`` jobs (those with the most open
  incidents, then the most recent): ``rankwatch_job_open_alerts{job,severity}``,
  ``rankwatch_job_ranks{job}``, ``rankwatch_job_step{job}`` and
  ``rankwatch_job_last_event_timestamp_seconds{job}``. Never one series per rank: a job of
  4,096 ranks is four series, and a cluster of 10,000 jobs at most ``max_jobs`` x 7.

>>> stats = {"topics": {"steps": {"partitions": {
...     "0": {"desired": True, "hi_offset": 120, "app_offset": 100, "consumer_lag": 30},
...     "-1": {"desired": False, "hi_offset": -1, "app_offset": -1, "consumer_lag": -1}}}}}
>>> kafka_lag(stats, {"steps"})
{('steps', 0): 20}
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("rankwatch.metrics")

#: Seconds: a snapshot flushes the producer and writes state; a commit is one broker round trip.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Per-job series are exported for at most this many jobs unless told otherwise.
DEFAULT_MAX_JOBS = 50
SEVERITIES = ("info", "warning", "critical")


def kafka_lag(stats: dict[str, Any], topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> messages behind`` for the partitions this client is assigned,
    from one librdkafka statistics document: the high watermark less the application's
    position (less the committed offset before anything was consumed)."""
    lag: dict[tuple[str, int], int] = {}
    wanted = set(topics)
    for topic, info in (stats.get("topics") or {}).items():
        if topic not in wanted:
            continue
        for key, part in (info.get("partitions") or {}).items():
            partition = int(key)
            if partition < 0 or not part.get("desired"):
                continue  # -1: librdkafka's internal partition; not desired: not ours
            high, position = part.get("hi_offset", -1), part.get("app_offset", -1)
            if high >= 0 and position >= 0:
                lag[(topic, partition)] = max(0, high - position)
            elif part.get("consumer_lag", -1) >= 0:
                lag[(topic, partition)] = int(part["consumer_lag"])
    return lag


class MetricsServer:
    """``/metrics`` of ``registry`` on ``host:port`` (port 0: any free one), in a thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(registry: CollectorRegistry, host: str, port: int, who: str) -> MetricsServer:
    """Start serving and log where (the tests and the operator read the port there)."""
    server = MetricsServer(registry, host, port)
    log.info("%s: Prometheus metrics on %s", who, server.url)
    return server


class _Collected:
    """A collector from a function: read the runtime's own counts at scrape time."""

    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self.collect = collect

    def describe(self) -> list[Metric]:
        return []  # unchecked: registering must not read the runtime before it runs


class WorkerMetrics:
    """The worker's registry; ``runtime`` is a :class:`~rankwatch.streams.runtime.batch.
    BatchRuntime` (its ``pipeline``, ``engine``, ``counters`` and ``inputs`` are read at
    scrape time; the runtime calls the ``on_*`` methods)."""

    def __init__(self, runtime: Any, *, max_jobs: int = DEFAULT_MAX_JOBS) -> None:
        self.runtime = runtime
        self.max_jobs = max_jobs
        self.registry = CollectorRegistry()
        self.alerts = Counter(
            "rankwatch_worker_alerts",
            "Alerts published to the alerts topic, by rule and status.",
            ["rule", "status"],
            registry=self.registry,
        )
        self.snapshot_seconds = Histogram(
            "rankwatch_worker_snapshot_seconds",
            "Snapshots: flush alerts, write the touched jobs' state, flush, commit.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "rankwatch_worker_commit_seconds",
            "Synchronous offset commits of the input topics.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._lag: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self.registry.register(_Collected(self._collect))

    # -- called by the runtime (never per event) --------------------------------------------

    def on_alert(self, alert: Any) -> None:
        self.alerts.labels(alert.rule, alert.status).inc()

    def on_snapshot(self, seconds: float) -> None:
        self.snapshot_seconds.observe(seconds)

    def on_commit(self, seconds: float) -> None:
        self.commit_seconds.observe(seconds)

    def on_kafka_stats(self, stats: dict[str, Any]) -> None:
        lag = kafka_lag(stats, self.runtime.inputs)
        with self._lock:
            self._lag = lag

    # -- scrape time --------------------------------------------------------------------------

    def _collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        counters = runtime.counters
        events = runtime.pipeline.stats.events
        yield _counter("events_consumed", "Events taken through the detectors.", events)
        yield _counter("dead_letters", "Messages sent to the dead-letter topic.", counters.dead)
        yield _counter(
            "snapshots",
            "Snapshots written: state persisted, offsets committed.",
            counters.snapshots,
        )
        lag = GaugeMetricFamily(
            "rankwatch_worker_consumer_lag",
            "Messages on the broker past the worker's position, per input partition.",
            labels=["topic", "partition"],
        )
        with self._lock:
            for (topic, partition), behind in sorted(self._lag.items()):
                lag.add_metric([topic, str(partition)], behind)
        yield lag
        # list(): one atomic copy under the GIL; the loop may add a job meanwhile.
        jobs = list(runtime.engine.jobs.values())
        yield GaugeMetricFamily(
            "rankwatch_worker_jobs_watched", "Jobs whose state this worker holds.", len(jobs)
        )
        yield from job_health(jobs, self.max_jobs)


def job_health(jobs: list[Any], max_jobs: int) -> Iterator[Metric]:
    """Per-job gauges for at most ``max_jobs`` jobs: the most open incidents first, then the
    most recent events (a cap, so a cluster's thousands of jobs stay a bounded series count)."""
    rows = []
    for job in jobs:
        open_by = dict.fromkeys(SEVERITIES, 0)
        for incident in list(job.incidents.values()):
            severity = incident.get("severity")
            if severity in open_by:
                open_by[severity] += 1
        rows.append((sum(open_by.values()), job.watermark, job, open_by))
    rows.sort(key=lambda row: (row[0], row[1]), reverse=True)
    shown = rows[:max_jobs]
    open_alerts = GaugeMetricFamily(
        "rankwatch_job_open_alerts",
        "Open incidents of a job, by severity.",
        labels=["job_id", "severity"],
    )
    ranks = GaugeMetricFamily("rankwatch_job_ranks", "Ranks seen in a job.", labels=["job_id"])
    step = GaugeMetricFamily(
        "rankwatch_job_step", "Highest step a job reported.", labels=["job_id"]
    )
    last = GaugeMetricFamily(
        "rankwatch_job_last_event_timestamp_seconds",
        "Event time of a job's newest event (its producer's clock).",
        labels=["job_id"],
    )
    for _, watermark, job, open_by in shown:
        for severity, count in open_by.items():
            open_alerts.add_metric([job.job_id, severity], count)
        ranks.add_metric([job.job_id], len(job.ranks))
        step.add_metric([job.job_id], max(job.max_step, 0))
        if watermark != float("-inf"):
            last.add_metric([job.job_id], watermark)
    yield from (open_alerts, ranks, step, last)
    yield GaugeMetricFamily(
        "rankwatch_jobs_not_exported",
        "Jobs left out of the per-job series by the cap (--metrics-max-jobs).",
        len(rows) - len(shown),
    )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"rankwatch_worker_{name}", documentation, value)


def start_worker_metrics(runtime: Any, options: Any) -> MetricsServer | None:
    """Serve the worker's metrics if ``options.metrics_port`` is set (None: off)."""
    if options.metrics_port is None:
        return None
    metrics = WorkerMetrics(runtime, max_jobs=options.metrics_max_jobs)
    runtime.metrics = metrics
    return serve(metrics.registry, options.metrics_host, options.metrics_port, "worker")
