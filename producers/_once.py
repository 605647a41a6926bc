"""Log a problem once per kind, not once per event: a dead broker must not flood the trainer."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("rankwatch.producers")


class LogOnce:
    """Remembers which keys were logged.

    >>> once = LogOnce()
    >>> once.warning("down", "broker down"), once.warning("down", "broker down")
    (True, False)
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def _first(self, key: str) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    def warning(self, key: str, message: str, *args: object) -> bool:
        if self._first(key):
            logger.warning(message, *args)
            return True
        return False

    def forget(self, key: str) -> None:
        """Allow ``key`` to be logged again (a broker that came back may go away again)."""
        with self._lock:
            self._seen.discard(key)
