"""User rules in Python: a detector class of your own, named in the rules file.

The plugin API is the built-in detectors' own shape (:mod:`rankwatch.streams.detectors.base`):
a class with a string ``name`` (its state slot, unique among the rules) and the methods of
one of the protocols:

- :class:`~rankwatch.streams.detectors.base.StepDetector`: ``new_rank_state()`` and
  ``on_step(job, rank, state, event) -> iterable of Finding/Resolution``, per rank;
- :class:`~rankwatch.streams.detectors.base.LogDetector`: ``new_job_state()`` and
  ``on_log(job, rank, state, event)``;
- :class:`~rankwatch.streams.detectors.base.JobDetector`: ``new_job_state()``,
  ``on_step(job, rank, state, event) -> None`` and ``on_tick(job, state, now)``; optionally
  ``on_flush(job, state)`` at the end of a replay.

Rules for a plugin: no I/O and no wall clock (use ``event.epoch`` and ``now``); state is plain
data (numbers, strings, lists, dicts) because the worker persists it; O(1) work per event.
It is built once as ``Class(**options)`` from the file's ``options`` table, and the same
instance serves every job of a profile. It is found by ``class = "package.module:Class"`` or
by ``entry_point = "NAME"`` in the ``rankwatch.rules`` entry-point group of an installed
package (``[project.entry-points."rankwatch.rules"] NAME = "package.module:Class"``).
See :mod:`rankwatch.streams.rules.examples`.

>>> detector = instantiate(load_class("rankwatch.streams.rules.examples:LossPlateau"),
...                        {"window": 50})
>>> detector.name, detector.window
('loss_plateau', 50)
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any

from rankwatch.streams.detectors.base import JobDetector, LogDetector, StepDetector
from rankwatch.streams.rules.exceptions import PluginError

GROUP = "rankwatch.rules"


def load_class(spec: str) -> type[Any]:
    """The class at ``package.module:Class``; raises :class:`PluginError` saying why not."""
    module_name, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or the module's own error at import
        raise PluginError(f"cannot import {module_name!r}: {exc!r}") from None
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"module {module_name!r} has no {qualname!r}") from None
    if not isinstance(obj, type):
        raise PluginError(f"{spec} is not a class")
    return obj


def entry_point_class(name: str) -> type[Any]:
    """The class registered as ``name`` in the ``rankwatch.rules`` entry-point group."""
    found = importlib.metadata.entry_points(group=GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in importlib.metadata.entry_points(group=GROUP))
        raise PluginError(
            f"no entry point {name!r} in group {GROUP!r} "
            f"(installed: {', '.join(known) if known else 'none'})"
        )
    ep = next(iter(found))
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginError(f"entry point {name!r} ({ep.value}) does not load: {exc!r}") from None
    if not isinstance(obj, type):
        raise PluginError(f"entry point {name!r} ({ep.value}) is not a class")
    return obj


def instantiate(cls: type[Any], options: Mapping[str, Any]) -> Any:
    """``cls(**options)``, checked to be a detector; raises :class:`PluginError`."""
    try:
        detector = cls(**options)
    except Exception as exc:  # TypeError for a wrong option, the class's own ValueError...
        raise PluginError(f"{cls.__qualname__}(**options) failed: {exc}") from None
    name = getattr(detector, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"{cls.__qualname__} has no string 'name' (its state slot)")
    if not isinstance(detector, StepDetector | LogDetector | JobDetector):
        raise PluginError(
            f"{cls.__qualname__} is not a detector: it needs new_rank_state and on_step "
            "(per rank), new_job_state and on_log (logs), or new_job_state, on_step and "
            "on_tick (job)"
        )
    return detector
