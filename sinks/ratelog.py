"""A log line that says "this happened N times" at most once per interval.

A stream of bad messages must be visible without flooding the log: the first one is logged at
once, then at most one line per interval with the count since the last line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Count every occurrence; log the first, then one summary line per ``interval_s``.

    >>> clock = iter([0.0, 1.0, 2.0, 11.0]).__next__
    >>> lines = []
    >>> log = RateLimitedLog("bad message", interval_s=10, emit=lines.append, clock=clock)
    >>> for reason in "abcd":
    ...     log.hit(reason)
    >>> log.total, lines
    (4, ['bad message (1 so far): a', 'bad message (4 so far, 3 since the last line): d'])
    """

    def __init__(
        self,
        what: str,
        *,
        interval_s: float = 10.0,
        emit: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.interval_s = interval_s
        self.total = 0
        self._since_line = 0
        self._last_line: float | None = None
        self._emit = emit or logging.getLogger("rankwatch.sinks").warning
        self._clock = clock

    def hit(self, detail: str) -> None:
        """One more occurrence, with its detail (shown only if this one is logged)."""
        self.total += 1
        self._since_line += 1
        now = self._clock()
        if self._last_line is not None and now - self._last_line < self.interval_s:
            return
        if self._last_line is None:
            self._emit(f"{self.what} ({self.total} so far): {detail}")
        else:
            self._emit(
                f"{self.what} ({self.total} so far, {self._since_line} since the last "
                f"line): {detail}"
            )
        self._last_line = now
        self._since_line = 0
