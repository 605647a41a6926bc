"""Parsing the query flags: ``--since 10m`` (or a timestamp) and ``--ranks 0-7,12``."""

from __future__ import annotations

import time
from datetime import datetime

from rankwatch.sinks.durations import parse_duration
from rankwatch.sinks.exceptions import QueryError


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds from a duration before now (``10m``) or an ISO 8601 time with a zone.

    >>> parse_since("10m", now=1000.0)
    400.0
    >>> parse_since("1970-01-01T00:01:00Z")
    60.0
    >>> parse_since("yesterday")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rankwatch.sinks.exceptions.QueryError: --since 'yesterday': expected a duration ...
    """
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise QueryError(
            f"--since {text!r}: expected a duration (10m, 2h, 7d) or an ISO 8601 time with a "
            "zone (2025-04-05T10:23:15Z)"
        )
    return moment.timestamp()


def parse_ranks(text: str) -> list[int]:
    """``0-3,7`` -> ``[0, 1, 2, 3, 7]``.

    >>> parse_ranks("0-3,7")
    [0, 1, 2, 3, 7]
    >>> parse_ranks("3-1")
    Traceback (most recent call last):
    ...
    rankwatch.sinks.exceptions.QueryError: --ranks '3-1': 3-1 is not a range (low-high)
    """
    ranks: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        low, sep, high = part.partition("-")
        try:
            first, last = int(low), int(high if sep else low)
        except ValueError:
            raise QueryError(f"--ranks {text!r}: {part!r} is not a rank or a range") from None
        if first < 0 or last < first:
            raise QueryError(f"--ranks {text!r}: {part} is not a range (low-high)")
        if last - first > 1_000_000:
            raise QueryError(f"--ranks {text!r}: {part} is too wide")
        ranks.update(range(first, last + 1))
    return sorted(ranks)
