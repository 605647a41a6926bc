"""The worker's input topics merged by timestamp, partition by partition, as they were produced.

A job's steps and its log records travel on two topics (partition N of each, by the job key).
Kafka orders each partition, never the two between themselves: a worker that starts behind
(a restart after a long stop, the replay after a crash) reads the small logs partition in its
first fetch and the steps over many, and the engine would meet a job's log records minutes of
event time ahead of its steps. Records more than ``peer_lateness_s`` (30 s) past a job's
newest step tell the engine the job stopped stepping; its cross-rank rules then run fewer ticks
over the steps that follow, and an incident is detected at another step, under another
``alert_id``, than live processing or ``rankwatch replay`` gave it.

So, as Kafka Streams does for the partitions of one task, the messages of one partition number
are handed on in timestamp order across the topics: the head with the smallest timestamp
first (ties: the topics' order, steps before logs). A head waits only while another topic's
partition of the same number has nothing buffered, its newest message is more than
``slack_ms`` older than the head, and it may still have more:

- not at its end (``mark_end``, from the consumer's end-of-partition events), and
- ``caught_up(topic, partition)`` says False (the consumer is behind the end offset the last
  fetch reported: the earlier messages are on their way) or None (not known yet).

The slack (20 s) lets a live worker run as before: the engine orders what is within its
lateness bounds by itself (measured: every scenario of ``rankwatch.simulate`` gives the same
alerts with its log records up to 30 s ahead of its steps, not at 40 s), so only a real
backlog is merged. The price: while a worker is more than the slack behind on a partition's
steps, the log records of the jobs on that partition wait with them (an OOM's alert is as late
as the steps around it), as every record of a partition waits for the ones before it. A partition
waits as long as the other topic is known to be behind (its messages will come: Kafka Streams
waits the same), up to ``max_wait_s`` (15 s) for one not fetched yet, and is handed on
as it is once it holds ``max_held`` messages: the worker never stalls on a partition whose
leader is away, and its memory stays bounded.

Held messages are not processed: the worker commits, per topic partition, no further than the
first message still held here (:meth:`InputAligner.first_held`), so a crash loses none.

>>> aligner = InputAligner(topics=2, slack_ms=0)
>>> aligner.add(1, 0, 20, 0, "log@20")          # logs[0] first, at t=20
>>> aligner.add(0, 0, 10, 0, "step@10")         # steps[0], at t=10
>>> aligner.add(0, 0, 30, 1, "step@30")
>>> aligner.ready(now=0.0)                       # logs may have more before t=30: wait
['step@10', 'log@20']
>>> aligner.mark_end(1, 0)                       # logs[0] is read to its end
>>> aligner.ready(now=0.0)
['step@30']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: A held message: (timestamp, topic index, offset, the message); the first three order it.
_Held = tuple[int, int, int, Any]
#: (topic index, partition) -> True: the consumer has read all the broker had; False: it is
#: behind (more is on its way); None: not known (nothing fetched or consumed there yet).
CaughtUp = Callable[[int, int], "bool | None"]

_NEVER = -(2**63)  # the newest timestamp of a topic partition nothing came from yet

# What _blocked found about a partition's empty topics.
_GO, _BEHIND, _UNKNOWN = 0, 1, 2


class InputAligner:
    """Messages of ``topics`` input topics (index 0, 1, ...), merged per partition number.

    ``add`` messages in the order the consumer gives them, ``mark_end`` when the consumer
    reports the end of a topic partition, then take what is ``ready``.
    """

    __slots__ = (
        "_at_end",
        "_newest",
        "_queues",
        "_since",
        "max_held",
        "max_wait_s",
        "slack_ms",
        "topics",
    )

    def __init__(
        self,
        topics: int,
        *,
        slack_ms: int = 20_000,
        max_wait_s: float = 15.0,
        max_held: int = 200_000,
    ) -> None:
        if topics < 1:
            raise ValueError(f"topics must be >= 1, got {topics}")
        self.topics = topics
        self.slack_ms = slack_ms
        self.max_wait_s = max_wait_s
        self.max_held = max_held
        self._queues: dict[int, list[deque[_Held]]] = {}
        #: (topic index, partition) whose end the consumer reached, with nothing after it yet.
        self._at_end: set[tuple[int, int]] = set()
        #: (topic index, partition) -> timestamp of the newest message added from it.
        self._newest: dict[tuple[int, int], int] = {}
        #: partition -> when (monotonic seconds) it began waiting on a topic not known.
        self._since: dict[int, float] = {}

    def add(self, topic: int, partition: int, timestamp: int, offset: int, message: Any) -> None:
        queues = self._queues.get(partition)
        if queues is None:
            queues = self._queues[partition] = [deque() for _ in range(self.topics)]
        queues[topic].append((timestamp, topic, offset, message))
        key = (topic, partition)
        self._newest[key] = timestamp
        self._at_end.discard(key)

    def add_messages(self, messages: Sequence[Any], topics: Mapping[str, int], start: int) -> int:
        """:meth:`add` of ``messages[start:]`` (with confluent-kafka's ``Message`` methods;
        ``topics``: each input topic's index) in order, up to the first one that carries an
        error; returns its index (``len(messages)`` when none does). The consumer loop's
        per-message work, in one loop: a consumed batch comes in runs of one partition."""
        queues_of, newest, at_end = self._queues, self._newest, self._at_end
        queue: deque[_Held] | None = None
        topic = partition = -1
        stamp = 0
        n = len(messages)
        i = start
        while i < n:
            msg = messages[i]
            if msg.error() is not None:
                break
            t, p = topics[msg.topic()], msg.partition()
            if queue is None or t != topic or p != partition:
                if queue is not None:
                    newest[(topic, partition)] = stamp
                topic, partition = t, p
                queues = queues_of.get(p)
                if queues is None:
                    queues = queues_of[p] = [deque() for _ in range(self.topics)]
                queue = queues[t]
                at_end.discard((t, p))
            stamp = msg.timestamp()[1]
            queue.append((stamp, t, msg.offset(), msg))
            i += 1
        if queue is not None:
            newest[(topic, partition)] = stamp
        return i

    def mark_end(self, topic: int, partition: int) -> None:
        """The consumer reached the end of this topic partition: nothing more to wait for."""
        self._at_end.add((topic, partition))

    def ready(self, now: float, caught_up: CaughtUp | None = None) -> list[Any]:
        """The messages that can be processed now, in order; the rest stay held.

        ``caught_up`` is asked only about an empty topic partition that is not at its end and
        whose newest message is more than the slack behind the head that would go next.
        """
        out: list[Any] = []
        for partition, queues in self._queues.items():
            held = [q for q in queues if q]
            if not held:
                continue
            # The common case, live: one topic flowing, the others quiet. Its newest message
            # decides for the whole batch.
            if (
                len(held) == 1
                and self._blocked(queues, partition, held[0][-1][0], caught_up) == _GO
            ):
                out.extend(m[3] for m in held[0])
                held[0].clear()
                self._since.pop(partition, None)
                continue
            force = sum(map(len, held)) >= self.max_held
            since = self._since.get(partition)
            if since is not None and now - since >= self.max_wait_s:
                force = True
            found = self._merge(queues, partition, force, caught_up, out)
            if found == _UNKNOWN:
                self._since.setdefault(partition, now)
            else:
                self._since.pop(partition, None)
        return out

    def _blocked(
        self, queues: list[deque[_Held]], partition: int, head: int, caught_up: CaughtUp | None
    ) -> int:
        """Whether a message at ``head`` must wait for this partition's empty topics."""
        at_end, newest, limit = self._at_end, self._newest, head - self.slack_ms
        result = _GO
        for t, q in enumerate(queues):
            if q or (t, partition) in at_end or newest.get((t, partition), _NEVER) >= limit:
                continue
            state = None if caught_up is None else caught_up(t, partition)
            if state:
                at_end.add((t, partition))
            elif state is None:
                result = _UNKNOWN
            else:
                return _BEHIND
        return result

    def _merge(
        self,
        queues: list[deque[_Held]],
        partition: int,
        force: bool,
        caught_up: CaughtUp | None,
        out: list[Any],
    ) -> int:
        """Hand on heads in timestamp order until one must wait; say why it stopped."""
        while True:
            head: _Held | None = None
            for q in queues:
                if q and (head is None or q[0] < head):
                    head = q[0]
            if head is None:
                return _GO
            if not force:
                found = self._blocked(queues, partition, head[0], caught_up)
                if found != _GO:
                    return found
            out.append(queues[head[1]].popleft()[3])

    def first_held(self) -> dict[tuple[int, int], int]:
        """(topic index, partition) -> offset of its first held message: commit no further."""
        return {
            (t, partition): q[0][2]
            for partition, queues in self._queues.items()
            for t, q in enumerate(queues)
            if q
        }

    def held(self) -> int:
        return sum(len(q) for queues in self._queues.values() for q in queues)

    def drop(self, partitions: set[int]) -> None:
        """Forget these partitions (revoked or lost): the next owner reads them from the
        committed offsets, which are at or before anything held here."""
        for partition in partitions:
            self._queues.pop(partition, None)
            self._since.pop(partition, None)
        self._at_end = {k for k in self._at_end if k[1] not in partitions}
        self._newest = {k: v for k, v in self._newest.items() if k[1] not in partitions}
