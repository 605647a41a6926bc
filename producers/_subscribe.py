"""The way back: a trainer hears the alerts about its own job.

:func:`subscribe` reads the alerts topic on a background thread with its own confluent-kafka
consumer. It uses ``assign()`` at the partitions' ends rather than a group subscription: every
rank must see every alert of its job (a shared group would split them), and there is no
rebalance to wait for. Each partition is positioned at the first alert published at or after
the moment :func:`subscribe` was called (by the messages' timestamps), so an alert raised while
the consumer was still connecting is not skipped, and one from before (say, the ``pause_job``
that paused the previous run of this job) is not replayed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rankwatch.producers._once import LogOnce, logger
from rankwatch.schemas import Alert, EventDecodeError, decode

if TYPE_CHECKING:
    from confluent_kafka import Consumer

    from rankwatch.config import Settings


class AlertSubscription:
    """Handle on a running subscription: :meth:`close` it (also a context manager)."""

    def __init__(
        self,
        job_id: str,
        on_alert: Callable[[Alert], object],
        settings: Settings,
        *,
        from_beginning: bool,
    ) -> None:
        self.job_id = job_id
        self._key = job_id.encode()
        self._on_alert = on_alert
        self._settings = settings
        self._from_beginning = from_beginning
        self._since_ms = int(time.time() * 1000)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._once = LogOnce()
        self.received = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="rankwatch-alerts", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Wait until the consumer is positioned (alerts published since :func:`subscribe` are
        delivered either way; this says the broker has been reached)."""
        return self._ready.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> AlertSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- background thread -----------------------------------------------------------------

    def _consumer(self) -> Consumer:
        from confluent_kafka import Consumer

        return Consumer(
            {
                **self._settings.confluent_config(),
                # A group of its own, never committed: this rank reads every alert.
                "group.id": f"rankwatch-trainer-{self.job_id[:64]}-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if self._from_beginning else "latest",
                "log_level": 0,
            }
        )

    def _position(self, consumer: Consumer) -> bool:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        topic = self._settings.topics.alerts.name
        try:
            metadata = consumer.list_topics(topic, timeout=2.0)
        except KafkaException as error:
            self._once.warning(
                "alerts-metadata",
                "rankwatch: alerts topic %s unreachable (%s); retrying",
                topic,
                error,
            )
            return False
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            self._once.warning(
                "alerts-missing", "rankwatch: alerts topic %s not found yet; retrying", topic
            )
            return False
        if self._from_beginning:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in info.partitions])
            return True
        try:
            # The ends first, then the search by time: an alert published between the two is
            # found by the search or lies past the end taken before it, never skipped.
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5.0)[1]
                for p in info.partitions
            }
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, self._since_ms) for p in info.partitions], timeout=5.0
            )
            assignment = []
            for tp in found:
                if tp.offset < 0:  # nothing published since: start at the end taken before
                    tp.offset = ends[tp.partition]
                assignment.append(tp)
        except KafkaException as error:
            self._once.warning(
                "alerts-offsets", "rankwatch: alerts topic %s offsets (%s); retrying", topic, error
            )
            return False
        consumer.assign(assignment)
        return True

    def _run(self) -> None:
        consumer = None
        try:
            consumer = self._consumer()
            while not self._stop.is_set() and not self._ready.is_set():
                if self._position(consumer):
                    self._ready.set()
                else:
                    self._stop.wait(1.0)
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                if message is None or message.error() is not None:
                    continue
                if message.key() not in (self._key, None):
                    continue  # another job's alert: not even decoded
                if not self._from_beginning and 0 <= message.timestamp()[1] < self._since_ms:
                    continue  # published before subscribe(), read because it was near the end
                self._handle(message.value())
        except Exception as error:
            self.errors += 1
            logger.exception("rankwatch: alert subscription stopped: %s", error)
        finally:
            if consumer is not None:
                consumer.close()

    def _handle(self, value: Any) -> None:
        try:
            event = decode(value)
        except EventDecodeError as error:
            self.errors += 1
            self._once.warning("alert-decode", "rankwatch: undecodable alert skipped: %s", error)
            return
        if not isinstance(event, Alert) or event.job_id != self.job_id:
            return
        self.received += 1
        try:
            self._on_alert(event)
        except Exception as error:  # the user's callback must not stop the subscription
            self.errors += 1
            self._once.warning(
                f"on-alert:{type(error).__name__}",
                "rankwatch: on_alert raised %r; further ones counted",
                error,
            )


def subscribe(
    job_id: str,
    on_alert: Callable[[Alert], object],
    *,
    settings: Settings | None = None,
    from_beginning: bool = False,
) -> AlertSubscription:
    """Call ``on_alert(alert)`` on a background thread for every alert of ``job_id``.

    Only alerts published after the subscription is positioned are delivered (see
    :meth:`AlertSubscription.wait_ready`), unless ``from_beginning``. ``on_alert`` runs on the
    subscription's thread: keep it short (set a flag the training loop reads). Never raises
    after start; problems are counted in ``errors`` and logged once.
    """
    if settings is None:
        from rankwatch.config import load_settings

        settings = load_settings()
    return AlertSubscription(job_id, on_alert, settings, from_beginning=from_beginning)
