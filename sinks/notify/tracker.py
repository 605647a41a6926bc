"""Which offsets may be committed while alerts are still being delivered, out of order.

A message is done when every destination it was routed to has delivered it, found it already
delivered, or parked it on the retry topic. The committable offset of a partition is its oldest
message not yet done (or one past the last read if all are): so a restart re-reads exactly the
messages that might not have reached everyone, and the delivered set drops the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

TopicPartitionKey = tuple[str, int]


class OffsetTracker:
    """Thread-safe: workers call the ``done`` callbacks, the consumer thread commits.

    >>> t = OffsetTracker()
    >>> d0, d1 = t.add("a", 0, 10, 1), t.add("a", 0, 11, 2)
    >>> d1(); d1(); t.committable()
    {('a', 0): 10}
    >>> d0(); t.committable()
    {('a', 0): 12}
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[TopicPartitionKey, dict[int, int]] = {}
        self._next: dict[TopicPartitionKey, int] = {}

    def add(self, topic: str, partition: int, offset: int, parts: int) -> Callable[[], None]:
        """Track a message routed to ``parts`` destinations; call the result once per part."""
        key = (topic, partition)
        with self._lock:
            self._next[key] = max(self._next.get(key, 0), offset + 1)
            if parts > 0:
                self._pending.setdefault(key, {})[offset] = parts

        def done() -> None:
            with self._lock:
                pending = self._pending.get(key)
                if pending is None or offset not in pending:
                    return  # the partition was revoked meanwhile
                pending[offset] -= 1
                if pending[offset] <= 0:
                    del pending[offset]

        return done

    def committable(self) -> dict[TopicPartitionKey, int]:
        with self._lock:
            return {
                key: min(self._pending[key]) if self._pending.get(key) else end
                for key, end in self._next.items()
            }

    def forget(self, keys: list[TopicPartitionKey]) -> None:
        """Drop revoked partitions: their messages are another member's business now."""
        with self._lock:
            for key in keys:
                self._pending.pop(key, None)
                self._next.pop(key, None)
