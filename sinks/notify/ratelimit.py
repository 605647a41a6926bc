"""A token bucket per destination: at most ``rate`` messages a second, bursts of ``burst``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``acquire()`` blocks until a token is free; it returns True if ``stop`` was set first.

    >>> bucket = TokenBucket(rate=1000.0, burst=2)
    >>> [bucket.acquire(threading.Event()) for _ in range(3)]
    [False, False, False]
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def acquire(self, stop: threading.Event) -> bool:
        while True:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return False
            if stop.wait((1 - self._tokens) / self.rate):
                return True
