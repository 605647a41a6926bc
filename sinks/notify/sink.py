"""``rankwatch sink notify``: the alerts topic (and the retry topic) to webhooks.

The consumer thread routes each alert to its destinations' workers and commits, every half
second, the offsets up to the oldest alert not yet done (:mod:`~rankwatch.sinks.notify.tracker`).
An alert a destination could not take after its retries is parked on the retry topic with a
``destination`` and a ``not_before`` header; read back from there, it goes to that destination
only, once due. So an alert is delivered, or parked, or re-read after a restart: never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from rankwatch.schemas import Alert, EventDecodeError, decode, encode
from rankwatch.sinks.config import DestinationConfig, NotifyConfig
from rankwatch.sinks.exceptions import SinkError
from rankwatch.sinks.notify.base import Notifier
from rankwatch.sinks.notify.dedupe import DeliveredSet
from rankwatch.sinks.notify.route import destinations_for
from rankwatch.sinks.notify.tracker import OffsetTracker
from rankwatch.sinks.notify.worker import DestinationWorker
from rankwatch.sinks.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message, Producer

    from rankwatch.config import Settings

log = logging.getLogger("rankwatch.sinks.notify")


def make_notifier(name: str, config: DestinationConfig, state_db: str | None = None) -> Notifier:
    """The integration a destination's ``type`` names (``state_db``: where Alertmanager's
    open alerts are kept, to re-post them)."""
    if config.type == "alertmanager":
        from rankwatch.sinks.notify.alertmanager import AlertmanagerNotifier

        return AlertmanagerNotifier(name, config, state_db)
    from rankwatch.sinks.notify.dingtalk import DingTalkNotifier
    from rankwatch.sinks.notify.slack import SlackNotifier
    from rankwatch.sinks.notify.webhook import WebhookNotifier

    kinds: dict[str, Any] = {
        "webhook": WebhookNotifier,
        "slack": SlackNotifier,
        "dingtalk": DingTalkNotifier,
    }
    notifier: Notifier = kinds[config.type](name, config.url, config.timeout)
    return notifier


class NotifySink:
    """Run with :meth:`run` (blocks) and end with :meth:`stop` (any thread, signal handlers)."""

    def __init__(self, config: NotifyConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self._stop = threading.Event()
        self._tracker = OffsetTracker()
        self._bad = RateLimitedLog("skipped a message that is not an alert", emit=log.warning)
        self.delivered = DeliveredSet(config.state_db)
        self.workers = {
            name: DestinationWorker(
                name,
                make_notifier(name, dest, config.state_db),
                dest,
                self.delivered,
                self._park,
                self._stop,
            )
            for name, dest in config.destinations.items()
        }
        self._producer: Producer | None = None
        self._ready = threading.Event()
        #: Prometheus metrics (rankwatch.sinks.metrics) when --metrics-port is given.
        self.metrics: Any = None

    @property
    def alerts_topic(self) -> str:
        return self.settings.topics.alerts.name

    def stop(self) -> None:
        self._stop.set()

    def wait_ready(self, timeout_s: float) -> bool:
        """True once the consumer has its partitions (for tests and the demo)."""
        return self._ready.wait(timeout_s)

    def run(self) -> None:
        from confluent_kafka import Consumer, Producer

        self._ensure_retry_topic()
        self._producer = Producer(
            {**self.settings.confluent_config(), "enable.idempotence": True, "log_level": 3}
        )
        consumer = Consumer(
            {
                **self.settings.confluent_config(),
                "group.id": self.config.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 10_000,
                "log_level": 3,
                **(self.metrics.kafka_config() if self.metrics is not None else {}),
            }
        )
        consumer.subscribe(
            [self.alerts_topic, self.config.retry_topic],
            on_assign=lambda c, p: self._ready.set(),
            on_revoke=self._on_revoke,
        )
        for worker in self.workers.values():
            worker.start()
        log.info("delivering %s to %s", self.alerts_topic, ", ".join(self.workers) or "nobody")
        next_commit = time.monotonic() + 0.5
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.1)
                if message is not None:
                    self._handle(message)
                if time.monotonic() >= next_commit:
                    self._commit(consumer)
                    next_commit = time.monotonic() + 0.5
        finally:
            self._stop.set()
            for worker in self.workers.values():
                worker.join(10)
            self._commit(consumer)
            consumer.close()
            self._producer.flush(10)
            self.delivered.close()
            log.info("stopped: %s", {n: w.stats for n, w in self.workers.items()})

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            log.warning("consumer error: %s", error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        value = message.value()
        try:
            event = decode(value) if value is not None else None
            if not isinstance(event, Alert):
                raise EventDecodeError.whole("not an alert")
        except EventDecodeError as exc:
            self._bad.hit(f"{topic}[{partition}]@{offset}: {exc}")
            self._tracker.add(topic, partition, offset, 0)
            return
        if topic == self.config.retry_topic:
            name = _header(message, "destination")
            not_before = float(_header(message, "not_before") or 0)
            if name not in self.workers:
                log.warning(
                    "parked alert %s for %r: no such destination any more; dropped",
                    event.alert_id,
                    name,
                )
                self._tracker.add(topic, partition, offset, 0)
                return
            names = [name]
        else:
            names = [n for n in destinations_for(self.config.routes, event) if n in self.workers]
            not_before = 0.0
        done = self._tracker.add(topic, partition, offset, len(names))
        for name in names:
            self.workers[name].submit(event, done, not_before)

    def _park(self, destination: str, alert: Alert) -> bool:
        """Put ``alert`` on the retry topic for ``destination``; wait until the broker has it."""
        from confluent_kafka import KafkaException

        assert self._producer is not None
        due = time.time() + self.config.park_for
        while not self._stop.is_set():
            try:
                self._producer.produce(
                    self.config.retry_topic,
                    encode(alert),
                    key=alert.job_id.encode(),
                    headers=[
                        ("destination", destination.encode()),
                        ("not_before", repr(due).encode()),
                    ],
                )
                if self._producer.flush(10) == 0:
                    return True
            except (KafkaException, BufferError) as exc:
                log.error("parking alert %s failed, retrying: %s", alert.alert_id, exc)
            self._stop.wait(1.0)
        return False

    def _commit(self, consumer: Consumer) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(t, p, o) for (t, p), o in self._tracker.committable().items()]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Harmless: uncommitted alerts are re-read and the delivered set drops them.
            log.debug("commit failed: %s", exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[Any]) -> None:
        self._commit(consumer)
        self._tracker.forget([(p.topic, p.partition) for p in partitions])

    def _ensure_retry_topic(self) -> None:
        """Create the retry topic if it does not exist (the first run on a new cluster)."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        topic = self.config.retry_topic
        admin = AdminClient({**self.settings.confluent_config(), "log_level": 0})
        try:
            if topic in admin.list_topics(timeout=10).topics:
                return
            future = admin.create_topics(
                [NewTopic(topic, num_partitions=1, replication_factor=-1)]
            )[topic]
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise SinkError(f"cannot create the retry topic {topic}: {exc}") from None
        # Wait until the cluster serves it: a consumer subscribing before that sees "unknown
        # topic" and, until its next metadata refresh (5 min), never reads the parked alerts.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = admin.list_topics(topic, timeout=10).topics.get(topic)
            if (
                found is not None
                and found.error is None
                and found.partitions
                and all(p.leader >= 0 for p in found.partitions.values())
            ):
                return
            time.sleep(0.2)


def _header(message: Message, name: str) -> str:
    """A header of a retry-topic message as text ('' if absent)."""
    headers: Any = message.headers() or []
    for key, value in headers:
        if key == name:
            return value.decode() if isinstance(value, bytes) else str(value or "")
    return ""
