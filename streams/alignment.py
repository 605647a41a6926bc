"""The worker's input topics merged by timestamp, partition by partition, as they were produced.

A job's steps and its log records travel on two topics (partition N of each, by the job key).
Kafka orders each partition, never the two between themselves: a worker that starts behind
(a restart after a long stop, the replay after a crash) reads the small logs partition in its
first fetch and the steps over many, and the engine would meet a job's log records minutes of
event time ahead of its steps. The log records move the job's clock, the cross-rank rules then
run fewer ticks over those steps, and an incident is detected at another step, under another
``alert_id``, than live processing or ``rankwatch replay`` gave it.

So, as Kafka Streams does for the partitions of one task, the messages of one partition number
are handed on in timestamp order across the topics: the head with the smallest timestamp
first (ties: the topics' order, steps before logs). A message waits only while another topic's
partition of the same number has nothing buffered *and is known to have more* on the broker:
not at its end (``mark_end``, from the consumer's end-of-partition events) and not caught up
with the end offset the last fetch reported (``caught_up``). Live, every partition is caught
up between fetches and nothing waits; only a backlog is merged. A partition that waited
``max_wait_s`` (its leader away, say), or holds ``max_held`` messages, is handed on as it is:
the worker never stalls on it and its memory stays bounded.

Held messages are not processed: the worker commits, per topic partition, no further than the
first message still held here (:meth:`InputAligner.first_held`), so a crash loses none.

>>> aligner = InputAligner(topics=2)
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
from collections.abc import Callable
from typing import Any

#: A held message: (timestamp, topic index, offset, the message); the first three order it.
_Held = tuple[int, int, int, Any]
#: (topic index, partition) -> whether the consumer has read everything the broker had.
CaughtUp = Callable[[int, int], bool]


class InputAligner:
    """Messages of ``topics`` input topics (index 0, 1, ...), merged per partition number.

    ``add`` messages in the order the consumer gives them, ``mark_end`` when the consumer
    reports the end of a topic partition, then take what is ``ready``.
    """

    __slots__ = ("_at_end", "_queues", "_since", "max_held", "max_wait_s", "topics")

    def __init__(self, topics: int, *, max_wait_s: float = 5.0, max_held: int = 200_000) -> None:
        if topics < 1:
            raise ValueError(f"topics must be >= 1, got {topics}")
        self.topics = topics
        self.max_wait_s = max_wait_s
        self.max_held = max_held
        self._queues: dict[int, list[deque[_Held]]] = {}
        #: (topic index, partition) whose end the consumer reached, with nothing after it yet.
        self._at_end: set[tuple[int, int]] = set()
        #: partition -> when (monotonic seconds) it began waiting for another topic.
        self._since: dict[int, float] = {}

    def add(self, topic: int, partition: int, timestamp: int, offset: int, message: Any) -> None:
        queues = self._queues.get(partition)
        if queues is None:
            queues = self._queues[partition] = [deque() for _ in range(self.topics)]
        queues[topic].append((timestamp, topic, offset, message))
        self._at_end.discard((topic, partition))

    def mark_end(self, topic: int, partition: int) -> None:
        """The consumer reached the end of this topic partition: nothing more to wait for."""
        self._at_end.add((topic, partition))

    def ready(self, now: float, caught_up: CaughtUp | None = None) -> list[Any]:
        """The messages that can be processed now, in order; the rest stay held.

        ``caught_up(topic, partition)``, asked only about an empty topic partition whose end
        was not reported, says whether the consumer has read all the broker had for it.
        """
        out: list[Any] = []
        for partition, queues in self._queues.items():
            held = [q for q in queues if q]
            if not held:
                continue
            if len(held) == 1 and self._quiet(queues, partition, caught_up):
                # The common case, live: one topic flowing, the others read to their ends.
                out.extend(m[3] for m in held[0])
                held[0].clear()
                self._since.pop(partition, None)
                continue
            force = False
            since = self._since.get(partition)
            if since is not None:
                force = now - since >= self.max_wait_s or sum(map(len, held)) >= self.max_held
            if self._merge(queues, partition, force, caught_up, out):
                self._since.setdefault(partition, now)
            else:
                self._since.pop(partition, None)
        return out

    def _quiet(
        self, queues: list[deque[_Held]], partition: int, caught_up: CaughtUp | None
    ) -> bool:
        """Whether every empty topic partition of this number has nothing more to give."""
        at_end = self._at_end
        for t, q in enumerate(queues):
            if not q and (t, partition) not in at_end:
                if caught_up is None or not caught_up(t, partition):
                    return False
                at_end.add((t, partition))
        return True

    def _merge(
        self,
        queues: list[deque[_Held]],
        partition: int,
        force: bool,
        caught_up: CaughtUp | None,
        out: list[Any],
    ) -> bool:
        """Hand on heads in timestamp order; True if it stopped to wait for a topic."""
        at_end = self._at_end
        while True:
            head: _Held | None = None
            for t, q in enumerate(queues):
                if q:
                    if head is None or q[0] < head:
                        head = q[0]
                elif not force and (t, partition) not in at_end:
                    if caught_up is None or not caught_up(t, partition):
                        return True  # an earlier message may still come on topic t
                    at_end.add((t, partition))
            if head is None:
                return False
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
