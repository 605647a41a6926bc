"""The producer's background thread: validate, encode, hand to librdkafka, count deliveries.

How the two buffers interact, so memory stays bounded and nothing is lost silently:

* The training thread appends plain dicts to our ``deque`` (bounded by ``max_buffered``; past it
  the oldest are dropped and counted).
* This thread moves events into librdkafka only while fewer than ``max_in_flight`` are there
  (``len(producer)``), and librdkafka's own queue is bounded at the same number. So when the
  broker is away, at most ``max_in_flight`` events wait inside librdkafka and the rest wait in
  the deque, where the bound and the drop counting are ours.
* ``message.timeout.ms`` is 0 (infinite): librdkafka keeps retrying the events it holds instead
  of expiring them after 5 minutes, so an outage of any length loses only what our bound drops,
  and when the broker returns everything held drains, oldest first.
* Events still undelivered when the producer is closed are counted as dropped.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rankwatch.producers._once import LogOnce, logger

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer

# Encoded message ready for librdkafka: topic, key, value.
Prepared = tuple[str, bytes, bytes]


def producer_config(base: Mapping[str, str], max_in_flight: int) -> dict[str, Any]:
    """librdkafka settings for the embedded producer on top of the connection settings."""
    return {
        **base,
        "enable.idempotence": True,  # implies acks=all and in-order, duplicate-free retries
        "acks": "all",
        "message.timeout.ms": 0,  # infinite: see the module docstring
        "queue.buffering.max.messages": max(1, max_in_flight),
        "linger.ms": 20,  # batch ranks' events a little: one request per ~20 ms, not per step
        "compression.type": "lz4",
        "reconnect.backoff.max.ms": 2000,  # notice a returning broker within ~2 s
        # librdkafka prints every refused connection to stderr; our error callback says it once.
        "log_level": 0,
    }


class Sender(threading.Thread):
    """Drains ``buffer`` into a confluent-kafka ``Producer`` until stopped."""

    def __init__(
        self,
        buffer: collections.deque[dict[str, Any]],
        prepare: Callable[[dict[str, Any]], Prepared | None],
        config: Mapping[str, str],
        *,
        max_in_flight: int,
        once: LogOnce,
    ) -> None:
        super().__init__(name="rankwatch-producer", daemon=True)
        self._buffer = buffer
        self._prepare = prepare
        self._config = producer_config(config, max_in_flight)
        self._max_in_flight = max_in_flight
        self._once = once
        self._stop_event = threading.Event()
        self._producer: Producer | None = None
        self._reset_needed = False
        self.sent = 0
        self.errors = 0
        self.lost = 0  # handed to librdkafka but never delivered (fatal reset, close)

    # ----- librdkafka callbacks (called on this thread, from poll) ---------------------------

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.sent += 1
            self._once.forget("broker-down")
            return
        self.errors += 1
        self._once.warning(
            f"delivery:{error.name()}",
            "rankwatch: delivery failed (%s); "
            "further failures of this kind are counted, not logged",
            error.str(),
        )

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            # An idempotent producer that hit a fatal error refuses all further messages.
            self._reset_needed = True
            self._once.warning(
                f"fatal:{error.name()}",
                "rankwatch: producer failed (%s); starting a new one",
                error.str(),
            )
        else:
            self._once.warning(
                "broker-down",
                "rankwatch: broker unreachable (%s); buffering "
                "events in memory up to the configured bound",
                error.str(),
            )

    # ----- the loop --------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        producer = self._producer
        return len(producer) if producer is not None else 0

    def _new_producer(self) -> Producer:
        from confluent_kafka import Producer

        return Producer({**self._config, "error_cb": self._on_error})

    def run(self) -> None:
        try:
            self._producer = self._new_producer()
            while not self._stop_event.is_set():
                moved = self._pump()
                # poll() waits inside librdkafka with the GIL released: while idle this thread
                # costs the trainer nothing. When busy, it still yields the GIL between batches.
                self._producer.poll(0 if moved else 0.05)
                if self._reset_needed:
                    self._reset()
        except Exception as error:  # never let the thread die silently
            self.errors += 1
            logger.exception("rankwatch: producer thread stopped: %s", error)

    def _pump(self, batch: int = 500) -> int:
        producer = self._producer
        assert producer is not None
        buffer, moved = self._buffer, 0
        while buffer and moved < batch and len(producer) < self._max_in_flight:
            raw = buffer.popleft()
            prepared = self._prepare(raw)
            if prepared is None:  # invalid: counted and logged by prepare
                continue
            topic, key, value = prepared
            try:
                producer.produce(topic, value, key, on_delivery=self._on_delivery)
            except BufferError:
                buffer.appendleft(raw)  # librdkafka full after all: try again next round
                break
            except Exception as error:  # KafkaException: message too large, unknown topic...
                self.errors += 1
                self._once.warning(
                    f"produce:{type(error).__name__}",
                    "rankwatch: could not send an event (%s)",
                    error,
                )
                continue
            moved += 1
        return moved

    def _reset(self) -> None:
        old = self._producer
        self._reset_needed = False
        if old is not None:
            self.lost += len(old)
        self._producer = self._new_producer()

    def drained(self) -> bool:
        return not self._buffer and self.in_flight == 0

    def stop(self, timeout_s: float) -> int:
        """Stop the loop, give librdkafka up to ``timeout_s`` more; return events left behind."""
        deadline = time.monotonic() + timeout_s
        self._stop_event.set()
        self.join(max(0.0, deadline - time.monotonic()))
        producer, self._producer = self._producer, None
        if producer is None:
            return 0
        left = producer.flush(max(0.0, deadline - time.monotonic()))
        self.lost += left
        return left
