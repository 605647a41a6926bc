"""Prometheus ``/metrics`` of the sinks (``rankwatch sink storage|notify --metrics-port``).

As for the worker (:mod:`rankwatch.streams.metrics`, whose :func:`kafka_lag` and :func:`serve`
are shared), nothing runs per message: the sinks' own counters are read when Prometheus
scrapes, the consumer lag comes from librdkafka's statistics (every second), and the storage
sink's write and commit durations are observed once per batch.

Storage sink (``rankwatch_sink_storage_`` prefix): ``consumed_total``, ``undecodable_total``,
``batches_total``, ``rows_written_total{kind=steps|logs|alerts}``, ``write_failures_total``,
``write_seconds`` and ``commit_seconds`` (histograms), ``consumer_lag{topic,partition}``.

Notify sink (``rankwatch_sink_notify_`` prefix), per destination: ``delivered_total``,
``messages_total``, ``duplicates_total``, ``parked_total``, ``attempts_total``, and for an
Alertmanager destination ``open_alerts`` (the firing alerts it keeps re-posting); and
``consumer_lag{topic,partition}``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: librdkafka statistics, for the lag: one JSON document a second to parse, as the worker.
STATS_INTERVAL_MS = 1000


class _Collected:
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self.collect = collect

    def describe(self) -> list[Metric]:
        return []  # do not read the sink before it runs


class _SinkMetrics:
    """A registry with a consumer lag gauge fed by librdkafka's statistics callback."""

    prefix = ""

    def __init__(self, topics: list[str]) -> None:
        self.registry = CollectorRegistry()
        self.topics = topics
        self._lag: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self.registry.register(_Collected(self._collect))

    def kafka_config(self) -> dict[str, Any]:
        """What the sink's consumer configuration gets so that the lag is reported."""
        return {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self.on_kafka_stats}

    def on_kafka_stats(self, raw: str) -> None:
        import json

        from rankwatch.streams.metrics import kafka_lag

        try:
            lag = kafka_lag(json.loads(raw), self.topics)
        except (ValueError, AttributeError, TypeError):
            return
        with self._lock:
            self._lag = lag

    def _collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            f"{self.prefix}consumer_lag",
            "Messages on the broker past the sink's position, per partition.",
            labels=["topic", "partition"],
        )
        with self._lock:
            for (topic, partition), behind in sorted(self._lag.items()):
                lag.add_metric([topic, str(partition)], behind)
        yield lag
        yield from self.counts()

    def counts(self) -> Iterator[Metric]:
        return iter(())

    def _counter(self, name: str, documentation: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(f"{self.prefix}{name}", documentation, value)


class StorageMetrics(_SinkMetrics):
    """Metrics of a :class:`~rankwatch.sinks.storage.consumer.StorageSink` (its ``stats``)."""

    prefix = "rankwatch_sink_storage_"

    def __init__(self, sink: Any) -> None:
        super().__init__(sink.topics)
        self.sink = sink
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
        self.write_seconds = Histogram(
            f"{self.prefix}write_seconds",
            "Writing one batch to the store (one transaction; retries while it is down included).",
            buckets=buckets,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            f"{self.prefix}commit_seconds",
            "Committing one batch's offsets.",
            buckets=buckets,
            registry=self.registry,
        )

    def counts(self) -> Iterator[Metric]:
        stats = self.sink.stats
        yield self._counter("consumed", "Messages consumed.", stats.consumed)
        yield self._counter("undecodable", "Messages skipped: not a valid event.", stats.bad)
        yield self._counter("batches", "Batches written.", stats.batches)
        rows = CounterMetricFamily(
            f"{self.prefix}rows_written", "New rows written, by kind.", labels=["kind"]
        )
        rows.add_metric(["steps"], stats.new_steps)
        rows.add_metric(["logs"], stats.new_logs)
        rows.add_metric(["alerts"], stats.alerts_written)
        yield rows
        yield self._counter(
            "write_failures", "Batch writes that failed (retried).", stats.write_failures
        )


class NotifyMetrics(_SinkMetrics):
    """Metrics of a :class:`~rankwatch.sinks.notify.sink.NotifySink` (its workers' stats)."""

    prefix = "rankwatch_sink_notify_"

    def __init__(self, sink: Any) -> None:
        super().__init__([sink.alerts_topic, sink.config.retry_topic])
        self.sink = sink

    def counts(self) -> Iterator[Metric]:
        workers = dict(self.sink.workers)
        for field, documentation in (
            ("delivered", "Alerts delivered."),
            ("messages", "Messages (groups of alerts) delivered."),
            ("duplicates", "Alerts skipped: already delivered."),
            ("parked", "Alerts parked on the retry topic after their retries."),
            ("attempts", "Delivery attempts."),
        ):
            family = CounterMetricFamily(
                f"{self.prefix}{field}", documentation, labels=["destination"]
            )
            for name, worker in sorted(workers.items()):
                family.add_metric([name], getattr(worker.stats, field))
            yield family
        open_alerts = GaugeMetricFamily(
            f"{self.prefix}open_alerts",
            "Firing alerts an Alertmanager destination keeps posting until they resolve.",
            labels=["destination"],
        )
        for name, worker in sorted(workers.items()):
            book = getattr(worker.notifier, "open", None)
            if book is not None:
                open_alerts.add_metric([name], len(book.firing()))
        yield open_alerts


def serve_sink_metrics(sink: Any, host: str, port: int | None) -> Any:
    """Give ``sink`` (a storage or notify sink, before it runs) its metrics and serve them on
    ``host:port``; None (and no metrics) when ``port`` is None. Returns the server."""
    if port is None:
        return None
    from rankwatch.sinks.notify.sink import NotifySink
    from rankwatch.streams.metrics import serve

    metrics: _SinkMetrics = (
        NotifyMetrics(sink) if isinstance(sink, NotifySink) else StorageMetrics(sink)
    )
    sink.metrics = metrics
    who = "sink notify" if isinstance(sink, NotifySink) else "sink storage"
    return serve(metrics.registry, host, port, who)
