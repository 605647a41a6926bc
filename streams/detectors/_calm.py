"""Closing a per-rank incident once its metric has been calm for long enough."""

from __future__ import annotations

import math
from typing import Protocol


class OpenIncident(Protocol):
    """The part of a per-rank detector state that tracks its open incident."""

    active: bool
    calm: int
    reported_at: float


def settled(state: OpenIncident, recover_steps: int) -> bool:
    """Count one calm step of an open incident; once ``recover_steps`` have come in a row,
    close it (the caller then reports its :class:`~rankwatch.streams.findings.Resolution`).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class S:
    ...     active: bool = True
    ...     calm: int = 0
    ...     reported_at: float = 5.0
    >>> s = S()
    >>> [settled(s, 2), settled(s, 2)], s.active, s.calm
    ([False, True], False, 0)
    """
    state.calm += 1
    if state.calm < recover_steps:
        return False
    state.active = False
    state.calm = 0
    state.reported_at = -math.inf
    return True
