"""Testing helpers for code built on the engine (public: tests of rules and runtimes use them).

>>> from rankwatch.streams import JobState
>>> state_difference(JobState("j", world_size=2), JobState("j", world_size=3))
'job.world_size: 2 != 3'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rankwatch.schemas.records import ColumnRow, StepRecord
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.frames.entries import RankEntries


def state_difference(a: Any, b: Any, path: str = "job") -> str | None:
    """Where two engine states first differ, or None: type for type (a tuple is not a list, a
    set not a list), NaN equal to NaN. A dict's order is not compared: a rank-keyed table comes
    back from a snapshot in chunk order."""
    # A held step of decoded columns is the event it reads as.
    if isinstance(a, StepRecord | ColumnRow):
        a = a.as_event()
    if isinstance(b, StepRecord | ColumnRow):
        b = b.as_event()
    # A rule's entries kept as columns compare as the mapping of rank -> entry they store.
    if isinstance(a, RankEntries):
        a = dict(a.items())
    if isinstance(b, RankEntries):
        b = dict(b.items())
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(map(repr, a))[:8]} != {sorted(map(repr, b))[:8]}"
        items = [(f"{path}[{k!r}]", a[k], b[k]) for k in a]
    elif isinstance(a, JobState):
        # As stored: a frame rule's state compares wherever the engine keeps it.
        items = [
            (f"{path}.{f.name}", getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a)
            if f.compare and f.name != "ranks"
        ]
        if a.ranks.keys() != b.ranks.keys():
            return f"{path}.ranks: keys {sorted(a.ranks)[:8]} != {sorted(b.ranks)[:8]}"
        fields = [f.name for f in dataclasses.fields(RankState) if f.name != "slots"]
        for r in a.ranks:
            x, y, at = a.ranks[r], b.ranks[r], f"{path}.ranks[{r}]"
            items += [(f"{at}.{k}", getattr(x, k), getattr(y, k)) for k in fields]
            items.append((f"{at}.slots", a.rank_slots(r), b.rank_slots(r)))
    elif hasattr(a, "__dataclass_fields__"):
        items = [(f"{path}.{k}", getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__]
    elif isinstance(a, list | tuple):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        items = [(f"{path}[{i}]", x, y) for i, (x, y) in enumerate(zip(a, b, strict=True))]
    else:
        # Leaves by repr: NaN equals NaN; pydantic's UTC (a parsed number) and the datetime
        # module's (a parsed ISO string) are the same offset.
        if _utc(repr(a)) == _utc(repr(b)):
            return None
        return f"{path}: {repr(a)[:200]} != {repr(b)[:200]}"
    return next((d for p, x, y in items if (d := state_difference(x, y, p))), None)


def _utc(text: str) -> str:
    return text.replace("TzInfo(0)", "datetime.timezone.utc").replace(
        "TzInfo(UTC)", "datetime.timezone.utc"
    )
