"""Durations as people write them in flags and config files: ``500ms``, ``10s``, ``10m``, ``7d``.

>>> parse_duration("10m"), parse_duration("1.5s"), parse_duration("250ms"), parse_duration("2d")
(600.0, 1.5, 0.25, 172800.0)
>>> parse_duration("ten")
Traceback (most recent call last):
...
ValueError: 'ten' is not a duration (expected a number and a unit: 500ms, 10s, 5m, 2h, 7d, 1w)
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; a ValueError naming the text if it is not a duration."""
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration (expected a number and a unit: 500ms, 10s, 5m, 2h, 7d, 1w)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]
