"""Validation shared by the per-rank metric rules' config dataclasses.

Each check raises :class:`DetectorConfigError` naming the config class and the field, so a bad
threshold in a settings file is reported as ``ThroughputDropConfig.drop_ratio must be ...``
at start-up rather than as a detector that silently never (or always) fires.
"""

from __future__ import annotations

import math
from typing import get_args

from rankwatch.schemas import Action, Severity
from rankwatch.streams.exceptions import DetectorConfigError

_SEVERITIES = frozenset(get_args(Severity))
_ACTIONS = frozenset(get_args(Action))


def _fail(owner: object, name: str, value: object, must: str) -> DetectorConfigError:
    return DetectorConfigError(f"{type(owner).__name__}.{name} must be {must}, got {value!r}")


def positive(owner: object, name: str, value: float, *, allow_inf: bool = False) -> None:
    """``value > 0`` (and finite unless ``allow_inf``: +inf then means "rule off")."""
    ok = value > 0 and (math.isfinite(value) or (allow_inf and value == math.inf))
    if not ok:
        raise _fail(owner, name, value, "> 0" if allow_inf else "a finite number > 0")


def non_negative(owner: object, name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise _fail(owner, name, value, "a finite number >= 0")


def above_one(owner: object, name: str, value: float) -> None:
    """A multiplier of a baseline: it must actually be above the baseline."""
    if not (value > 1 and math.isfinite(value)):
        raise _fail(owner, name, value, "a finite number > 1")


def fraction(owner: object, name: str, value: float) -> None:
    """Strictly between 0 and 1 (a ratio below the mean, an EWMA weight)."""
    if not (0 < value < 1):
        raise _fail(owner, name, value, "strictly between 0 and 1")


def count(owner: object, name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(owner, name, value, f"an integer >= {minimum}")


def at_most(owner: object, name: str, value: float, limit: float, limit_name: str) -> None:
    """Two thresholds that only make sense in one order (recover below fire, say)."""
    if value > limit:
        raise _fail(owner, name, value, f"<= {limit_name} ({limit!r})")


def severity_action(owner: object, severity: str, action: str) -> None:
    if severity not in _SEVERITIES:
        raise _fail(owner, "severity", severity, f"one of {sorted(_SEVERITIES)}")
    if action not in _ACTIONS:
        raise _fail(owner, "action", action, f"one of {sorted(_ACTIONS)}")
