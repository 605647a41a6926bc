"""Replay: run the detector engine over recorded events, from a JSON-lines file or a topic.

The same :class:`~rankwatch.streams.pipeline.Pipeline` as the live worker, then
``engine.flush()`` at the end of input, so a file or topic replayed next month gives the alerts
it gave live, ids included. Output is one alert per line, written with the contract's
:func:`~rankwatch.schemas.encode`: byte-identical for identical input.

Reading a topic uses a consumer group of its own (``rankwatch-replay-<uuid>``, offsets never
committed), so it never moves the live worker's offsets; it stops at the end offsets captured
when it starts. Messages of several partitions (and of the steps and logs topics together) are
merged by their Kafka timestamp, then topic, partition and offset: deterministic for the same
topic contents, whatever order the broker delivers fetches in.
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any, NamedTuple

from rankwatch.schemas import encode
from rankwatch.streams.engine import Engine
from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.pipeline import DeadLetter, Pipeline, Stats

log = logging.getLogger(__name__)


class ReplayError(StreamsError):
    """A topic that cannot be read to its end (missing, unreachable, or stalled)."""


_PAUSE_AT = 20_000  # buffered messages per partition before it is paused (bounds memory)


class Record(NamedTuple):
    """One input message: where it came from (for error reports) and its bytes. (A named
    tuple: made once per message, it costs a third of a frozen dataclass.)"""

    where: str
    value: bytes
    topic: str = ""
    partition: int = -1
    offset: int = -1
    key: bytes | None = None


#: Messages decoded and applied together (a live worker's batches are its consumer's).
_BATCH = 4096


def batched(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """``records`` in lists of ``size`` (the last one shorter)."""
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def file_records(stream: IO[bytes]) -> Iterator[Record]:
    """The lines of a JSON-lines file; blank lines are skipped, ``where`` is the line number."""
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if line:
            yield Record(str(number), line, offset=number)


def replay(
    records: Iterable[Record],
    out: IO[bytes],
    *,
    err: IO[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    engine: Engine | None = None,
) -> Stats:
    """Run ``records`` through a fresh engine, write alerts to ``out``, report bad input on
    ``err`` as ``WHERE: error``. Returns the counts."""
    pipeline = Pipeline(engine if engine is not None else Engine.with_builtin_detectors())
    write = out.write
    handle = pipeline.handle
    # The worker's clock, fed from the recorded event times: a job that went quiet is judged
    # as it was live.
    pipeline.feed_clock_from_events()
    with few_collections():
        if defaults:  # filled in per message by decode: the one-at-a-time path
            for record in records:
                result = handle(
                    record.value,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                    defaults=defaults,
                )
                if isinstance(result, DeadLetter):
                    if err is not None:
                        err.write(f"{record.where}: {result.error}\n")
                    continue
                for alert in result:
                    write(encode(alert) + b"\n")
        else:
            for batch in batched(records, _BATCH):
                alerts, dead = pipeline.handle_batch(
                    [r.value for r in batch], partitions=[r.partition for r in batch]
                )
                if err is not None:
                    for position, letter in dead:
                        err.write(f"{batch[position].where}: {letter.error}\n")
                for alert in alerts:
                    write(encode(alert) + b"\n")
        for alert in pipeline.flush():
            write(encode(alert) + b"\n")
    return pipeline.stats


@contextmanager
def few_collections() -> Iterator[None]:
    """Collect cyclic garbage far less often while replaying (as the batch worker does).

    The engine's state is many long-lived objects and every event allocates several more: at
    CPython's default thresholds (700, 10, 10) that state is traversed again and again. Nearly
    all garbage here is freed by reference counting; cycles wait for 100,000 allocations.
    """
    before = gc.get_threshold()
    gc.freeze()  # what exists before the replay (imports, the detectors) is never scanned
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def summary(stats: Stats, seconds: float) -> str:
    """One line for stderr: events, bad input, alerts by rule, rate."""
    total = sum(stats.alerts.values())
    by_rule = ", ".join(f"{rule}: {n}" for rule, n in sorted(stats.alerts.items()))
    rate = stats.events / seconds if seconds > 0 else 0.0
    return (
        f"replay: {stats.events} events, {stats.bad} bad, {total} alerts"
        f"{f' ({by_rule})' if by_rule else ''}; {seconds:.2f} s, {rate:,.0f} events/s"
    )


def topic_records(
    consumer_config: Mapping[str, str],
    topics: list[str],
    *,
    timeout_s: float = 30.0,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> Iterator[Record]:
    """Every message of ``topics`` from the beginning up to the end offsets seen at start.

    ``consumer_config`` is the librdkafka connection config (bootstrap, security); the group,
    offset and commit settings are added here. Fails if a topic is missing or the broker stops
    delivering for ``timeout_s`` before the end is reached; raises :class:`ReplayError`.
    ``start_ms``/``end_ms`` (epoch milliseconds of the messages' Kafka timestamps) narrow it to
    ``[start, end)``, found per partition with the broker's time index (no scan).
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    config = {
        **consumer_config,
        "group.id": f"rankwatch-replay-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }
    consumer = Consumer(config)
    try:
        ends: dict[tuple[str, int], int] = {}
        assignment = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                reason = meta.error if meta is not None and meta.error else "no partitions"
                raise ReplayError(f"topic {topic!r}: {reason}")
            for p in sorted(meta.partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout_s
                )
                low, high = _time_bounds(consumer, topic, p, low, high, start_ms, end_ms, timeout_s)
                if high > low:
                    ends[(topic, p)] = high
                    assignment.append(TopicPartition(topic, p, low))
        if not assignment:
            return
        consumer.assign(assignment)
        order = {topic: i for i, topic in enumerate(topics)}
        buffers: dict[tuple[str, int], deque[Any]] = {tp: deque() for tp in ends}
        live = set(ends)  # partitions not yet read to their end offset
        paused: set[tuple[str, int]] = set()
        last_progress = time.monotonic()
        while True:
            # A partition may be picked only when every partition still being read has a
            # message buffered: otherwise an earlier message may still be on its way.
            while any(not buffers[tp] for tp in live):
                msg = consumer.poll(0.5)
                if msg is None:
                    if time.monotonic() - last_progress > timeout_s:
                        raise ReplayError(f"no messages for {timeout_s} s before the end")
                    continue
                last_progress = time.monotonic()
                tp = (msg.topic(), msg.partition())
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        live.discard(tp)
                        continue
                    raise ReplayError(f"reading {tp[0]}[{tp[1]}]: {error.str()}")
                offset: int = msg.offset() or 0
                if tp not in live or offset >= ends[tp]:
                    live.discard(tp)
                    continue
                buffers[tp].append(msg)
                if offset + 1 >= ends[tp]:
                    live.discard(tp)
                if len(buffers[tp]) >= _PAUSE_AT and tp not in paused:
                    consumer.pause([TopicPartition(*tp)])
                    paused.add(tp)
            heads = [
                (_ts(b[0]), order[tp[0]], tp[1], b[0].offset(), tp)
                for tp, b in buffers.items()
                if b
            ]
            if not heads:
                return
            tp = min(heads)[4]
            msg = buffers[tp].popleft()
            if tp in paused and len(buffers[tp]) < _PAUSE_AT // 2:
                consumer.resume([TopicPartition(*tp)])
                paused.discard(tp)
            yield Record(
                f"{tp[0]}[{tp[1]}]@{msg.offset()}",
                msg.value() or b"",
                tp[0],
                tp[1],
                msg.offset(),
                msg.key(),
            )
    except KafkaException as exc:
        raise ReplayError(f"reading {', '.join(topics)}: {exc.args[0]}") from None
    finally:
        consumer.close()


def _time_bounds(
    consumer: Any,
    topic: str,
    partition: int,
    low: int,
    high: int,
    start_ms: int | None,
    end_ms: int | None,
    timeout_s: float,
) -> tuple[int, int]:
    """Offsets ``[low, high)`` narrowed to messages timestamped in ``[start_ms, end_ms)``."""
    from confluent_kafka import TopicPartition

    def first_at(ms: int) -> int:
        # The first offset whose timestamp is >= ms; -1 (none) means the partition's end.
        found = consumer.offsets_for_times([TopicPartition(topic, partition, ms)], timeout_s)
        offset: int = found[0].offset
        return high if offset < 0 else offset

    if start_ms is not None and high > low:
        low = max(low, first_at(start_ms))
    if end_ms is not None and high > low:
        high = min(high, first_at(end_ms))
    return low, high


def _ts(msg: Any) -> int:
    kind, ms = msg.timestamp()
    return int(ms) if kind else 0
