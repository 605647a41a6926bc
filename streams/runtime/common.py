"""What both worker runtimes share: options, the topic check, rules reload, the stats line.

The runtimes (:mod:`rankwatch.streams.batch_worker`, the default, and the Faust one in
:mod:`rankwatch.streams.worker`) differ only in how messages reach the shared core
(:mod:`rankwatch.streams.runtime.core`) and how their consumer commits.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from rankwatch.streams.engine import Engine
from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.state_codec import DEFAULT_RANKS_PER_CHUNK

log = logging.getLogger("rankwatch.worker")

#: The engine-state table's name; its changelog topic is ``<app-id>-engine-state-changelog``
#: (Faust's naming, kept by the batch runtime so both runtimes read the same state).
TABLE_NAME = "engine-state"


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-{TABLE_NAME}-changelog"


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    app_id: str = "rankwatch-worker"
    data_dir: str = ".rankwatch/worker"
    loglevel: str = "info"
    batch_size: int = 2000
    #: How long a turn of the loop waits for a batch to fill. Under load batches fill at
    #: once; when they do not, a record waits up to this long before it is processed.
    batch_within_s: float = 0.05
    snapshot_interval_s: float = 5.0
    #: The batch runtime plans each snapshot in a forked process while its loop goes on
    #: (``streams/runtime/forked.py``); False: in the loop, which then waits for it. The
    #: Faust runtime checkpoints on a thread of its own either way.
    snapshot_fork: bool = True
    #: How long the group waits for a silent (crashed) worker before giving its partitions
    #: to the others: the pause a kill -9 causes. The broker's minimum is 6 s.
    session_timeout_s: float = 30.0
    stats_interval_s: float = 30.0
    #: Unacked events held between snapshots before one is forced (bounds memory).
    max_unacked: int = 200_000
    ranks_per_chunk: int = DEFAULT_RANKS_PER_CHUNK
    #: A rules file (``rankwatch.streams.rules``); None runs the built-in rules as shipped.
    rules_file: str | None = None
    #: How often the rules file's modification time is checked for a live reload.
    rules_poll_s: float = 2.0
    #: Prometheus /metrics on this port (None: off; rankwatch.streams.metrics), on this host.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_max_jobs: int = 50


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """The topics as found on the cluster."""

    steps: str
    logs: str
    alerts: str
    deadletter: str
    partitions: int
    replication: int


class KafkaUnreachable(StreamsError):
    """No metadata answer from the bootstrap servers (a worker starting may retry)."""


def inspect_topics(settings: Any, timeout_s: float = 15.0) -> TopicLayout:
    """Check the four topics exist and the inputs are co-partitioned.

    Faust would auto-create a missing input topic with one partition and then fail against
    its table's changelog, so a missing topic is an error here, with the command that fixes it.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    topics = settings.topics
    # log_level 0: while Kafka is down librdkafka would print a line per refused connection;
    # the caller says what went wrong, once per attempt.
    admin = AdminClient({**settings.confluent_config(), "log_level": 0})
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnreachable(
            f"cannot reach Kafka at {settings.bootstrap}: {exc.args[0]}"
        ) from None
    counts: dict[str, int] = {}
    for role, topic in topics.by_role().items():
        found = meta.topics.get(topic.name)
        if found is None or found.error is not None or not found.partitions:
            raise StreamsError(
                f"topic {topic.name!r} ({role}) does not exist on {settings.bootstrap}: "
                "create the topics first (rankwatch topics create)"
            )
        counts[role] = len(found.partitions)
    if counts["steps"] != counts["logs"]:
        raise StreamsError(
            f"{topics.steps.name} has {counts['steps']} partitions and {topics.logs.name} "
            f"{counts['logs']}: they must be equal so a job's steps and logs meet in one worker"
        )
    rf = topics.steps.replication_factor
    if rf < 1:  # the broker's default: follow the cluster size, as Kafka's own default does
        rf = min(3, max(1, len(meta.brokers)))
    return TopicLayout(
        topics.steps.name,
        topics.logs.name,
        topics.alerts.name,
        topics.deadletter.name,
        counts["steps"],
        rf,
    )


def load_rules_file(path: str | None) -> Any:
    """The RuleSet of ``path`` (None: built-in rules); an invalid file raises, saying why."""
    if path is None:
        return None
    from rankwatch.streams.rules import load_rules

    return load_rules(path)


def new_engine(rules: Any) -> Engine:
    return rules.engine() if rules is not None else Engine.with_builtin_detectors()


class RulesWatcher:
    """Notices a changed rules file and loads it; the runtime installs the result."""

    def __init__(self, path: str | None, rules: Any) -> None:
        self.path = path
        self.rules = rules
        self.stamp = _stamp(path)

    def changed(self) -> Any:
        """The new RuleSet if the file changed and validates, else None.

        A file that does not validate is refused (the rules in use stay) and the log says why.
        """
        from rankwatch.streams.rules import RulesError, changes, load_rules

        path = self.path
        stamp = _stamp(path)
        if path is None or stamp == self.stamp:
            return None
        self.stamp = stamp
        try:
            new = load_rules(path)
        except RulesError as exc:
            log.error("rules file changed but is invalid; keeping the rules in use. %s", exc)
            return None
        changed = changes(self.rules, new) if self.rules is not None else ["all"]
        self.rules = new
        log.info("rules reloaded from %s: %s", path, "; ".join(changed) or "no rule changed")
        return new


@dataclass(slots=True)
class Counters:
    """What a runtime sent and persisted, for the stats line."""

    alerts: int = 0
    dead: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0


class StatsLine:
    """The periodic one-line summary, with the event rate since the previous line."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), 0)

    def log(self, events: int, jobs: int, counters: Counters) -> None:
        then, before = self._last
        now = time.monotonic()
        self._last = (now, events)
        rate = (events - before) / (now - then) if now > then else 0.0
        log.info(
            "%d events (%.0f/s), %d alerts, %d dead letters, %d jobs, %d snapshots (%d bytes)",
            events,
            rate,
            counters.alerts,
            counters.dead,
            jobs,
            counters.snapshots,
            counters.snapshot_bytes,
        )


def restore_job(store: Any, job_id: str) -> Any:
    """A job's state from the changelog (a :class:`SnapshotStore`), or None; logged once."""
    job = store.load(job_id)
    if job is not None:
        log.info(
            "job %s: state restored (%d ranks, %d open incidents)",
            job_id,
            len(job.ranks),
            len(job.incidents),
        )
    return job


def log_alert(alert: Any) -> None:
    log.info(
        "alert %s %s %s job=%s ranks=%s",
        alert.alert_id,
        alert.rule,
        alert.status,
        alert.job_id,
        _ranks(alert.ranks),
    )


def _stamp(path: str | None) -> tuple[float, int] | None:
    """When a file last changed (mtime, size), or None if it is missing."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


def _ranks(ranks: list[int]) -> str:
    return str(ranks) if len(ranks) <= 8 else f"[{ranks[0]}..{ranks[-1]}] ({len(ranks)})"
