"""The default worker runtime: a confluent-kafka consumer feeding the Pipeline in batches.

Same work as the Faust runtime (:mod:`rankwatch.streams.worker`), without Faust's per-message
cost (measured in ``benchmarks/RESULTS.md``, "Worker throughput"): one consumer in group
``app_id`` subscribed to steps and logs with the ``range`` assignor, so partition N of both
co-partitioned topics lands on one worker (a job's steps and logs meet in one engine). Each
message of a batch goes through :meth:`Pipeline.handle`; alerts go to the alerts topic keyed
by job_id, undecodable messages to the dead-letter topic with the reason, through one
idempotent ``acks=all`` producer.

State, and what a crash costs
-----------------------------
Engine state lives in the compacted topic ``<app-id>-engine-state-changelog``, the Faust
table's changelog with its very keys and values (:mod:`rankwatch.streams.runtime.changelog`), so
switching runtimes keeps the state. On assignment the new partitions of the changelog are read
to their end before their events are processed; jobs then load lazily from it.

Snapshot, then commit: every ``snapshot_interval_s`` (or after ``max_unacked`` events) the
producer is flushed (alerts on the brokers first: once the state records an incident as
alerted, its alert must exist), the dirty rank chunks of each touched job are written to the
job's changelog partition and flushed, and only then are the consumer's positions committed,
synchronously (:class:`~rankwatch.streams.runtime.checkpoint.Checkpoint`, the protocol the
Faust runtime shares). The committed offset never runs ahead of the persisted state, so a crash
replays at most one interval; the replay re-fires nothing the state already records. The batch
runtime plans the state records in a forked process (:mod:`rankwatch.streams.runtime.forked`),
from the engine as it was when the positions were read, and goes on with its loop meanwhile: a
big job's snapshot does not hold up the events behind it.

On revocation the same snapshot and commit run before the partitions go, so the new owner
starts from exactly this worker's state and re-fires nothing (a job's alert is published once
on scale out/in); the jobs of partitions not assigned back are dropped at the next
assignment. Partitions *lost* (this worker was evicted from the group) are dropped without
committing: their new owner may already be ahead.
"""

from __future__ import annotations

import gc
import logging
import signal
from typing import Any

from rankwatch.streams.metrics import start_worker_metrics
from rankwatch.streams.runtime.batch import BatchRuntime, Stop
from rankwatch.streams.runtime.changelog import ensure_changelog
from rankwatch.streams.runtime.common import (
    KafkaUnreachable,
    TopicLayout,
    WorkerOptions,
    changelog_topic,
    inspect_topics,
    load_rules_file,
)

__all__ = ["BatchRuntime", "Stop", "run_batch_worker", "tune_gc", "wait_for_kafka"]

log = logging.getLogger("rankwatch.worker")

_LEVELS = {"crit": "CRITICAL", "error": "ERROR", "warn": "WARNING", "info": "INFO"}
#: Seconds between attempts to reach Kafka at start: doubles up to the last value.
_BACKOFF = (1.0, 30.0)


def wait_for_kafka(settings: Any, stop: Stop) -> TopicLayout | None:
    """The topic layout once Kafka answers; None if stopped first. Retries, with backoff,
    while Kafka is unreachable; missing topics are an error at once."""
    delay, most = _BACKOFF
    attempt = 0
    while not stop.requested:
        try:
            return inspect_topics(settings, timeout_s=5.0)
        except KafkaUnreachable as exc:
            attempt += 1
            log.warning("%s (attempt %d); retrying in %.0f s", exc, attempt, delay)
            stop.sleep(delay)
            delay = min(delay * 2, most)
    return None


def tune_gc() -> None:
    """Collect cyclic garbage far less often than CPython's default.

    A big job's state is millions of long-lived objects, and the engine allocates several
    objects per event: with the default thresholds (700, 10, 10) the older generations,
    hence that whole state, are traversed again and again, which took about a third of the
    worker's CPU (benchmarks/RESULTS.md, "Worker throughput"). Nearly all garbage here is freed
    by reference counting; cycles wait for 100,000 allocations instead of 700.
    """
    gc.freeze()  # what start-up imported lives as long as the process: never scan it again
    gc.set_threshold(100_000, 50, 100)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=_LEVELS.get(level, level.upper()),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )


def run_batch_worker(settings: Any, options: WorkerOptions) -> int:
    """Run the batch runtime until SIGTERM/SIGINT; return the exit status."""
    rules = load_rules_file(options.rules_file)  # an invalid file: refuse to start, say why
    setup_logging(options.loglevel)
    stop = Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        layout = wait_for_kafka(settings, stop)
        if layout is None:
            return 0
        runtime = BatchRuntime.connect(settings, options, layout, rules)
        start_worker_metrics(runtime, options)  # --metrics-port; serves until the process ends
        tune_gc()
        runtime.store.fit_limit(
            ensure_changelog(settings.confluent_config(), changelog_topic(options.app_id), layout)
        )
        runtime.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
