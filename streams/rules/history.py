"""Rules against history: time bounds, a per-rule summary and the diff of two rule sets.

``rankwatch replay --topic T --rules NEW [--diff OLD]`` reads the recorded topic ONCE and runs
both rule sets side by side (two engines, one pass), then says which incidents the change of
rules would add or remove. Incidents are compared by ``alert_id`` (deterministic: job, rule,
scope, first step), so a threshold change that makes an incident start later shows as one
removed and one added.

>>> parse_time("2025-04-05T10:23:15Z"), parse_time("1743848595.5")
(1743848595000, 1743848595500)
>>> parse_time("2h", now=7200.0), parse_time("-30m", now=7200.0)
(0, 5400000)
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from rankwatch.schemas import Alert, encode
from rankwatch.streams.engine import Engine
from rankwatch.streams.pipeline import DeadLetter, Pipeline, Stats
from rankwatch.streams.replay import Record
from rankwatch.streams.rules.exceptions import RulesError

_AGO = re.compile(r"^-?(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> int:
    """Epoch milliseconds of ``--from``/``--to``: ISO 8601 with a zone, epoch seconds, or an
    age (``30m``, ``2h``, ``7d``, ``-1w``: that long before now)."""
    value = text.strip()
    m = _AGO.match(value)
    if m:
        base = time.time() if now is None else now
        return round((base - float(m.group(1)) * _UNIT[m.group(2)]) * 1000)
    try:
        return round(float(value) * 1000)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RulesError(
            f"bad time {text!r}: use ISO 8601 with a zone, epoch seconds, or an age like 2h"
        ) from None
    if parsed.tzinfo is None:
        raise RulesError(f"time {text!r} has no zone: add Z or +HH:MM")
    return round(parsed.timestamp() * 1000)


def rule_table(stats: Stats) -> str:
    """Alerts by rule: firing and resolved counts, one line per rule."""
    firing: Counter[str] = Counter()
    resolved: Counter[str] = Counter()
    for key, n in stats.alerts.items():
        rule, _, status = key.rpartition("/")
        (firing if status == "firing" else resolved)[rule] += n
    rules = sorted(firing.keys() | resolved.keys())
    if not rules:
        return "  (no alerts)"
    width = max(len(r) for r in rules)
    lines = [f"  {'rule':<{width}}  firing  resolved"]
    lines += [f"  {r:<{width}}  {firing[r]:>6}  {resolved[r]:>8}" for r in rules]
    return "\n".join(lines)


@dataclass
class Diff:
    """Firing incidents of the new rules that the old ones lack (added), and the reverse."""

    stats: Stats
    other_stats: Stats
    added: list[Alert] = field(default_factory=list)
    removed: list[Alert] = field(default_factory=list)

    def render(self) -> str:
        def line(sign: str, a: Alert) -> str:
            step = f" step={a.step}" if a.step is not None else ""
            return f"{sign} {a.rule} job={a.job_id} ranks={_few(a.ranks)}{step}: {a.summary}"

        out = [line("+", a) for a in self.added] + [line("-", a) for a in self.removed]
        out.append(f"diff: {len(self.added)} added, {len(self.removed)} removed")
        return "\n".join(out)


def _few(ranks: list[int]) -> str:
    return str(ranks) if len(ranks) <= 8 else f"[{ranks[0]}..{ranks[-1]}] ({len(ranks)})"


def replay_diff(
    records: Iterable[Record],
    out: IO[bytes],
    engine: Engine,
    other: Engine,
    *,
    err: IO[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Diff:
    """Like :func:`~rankwatch.streams.replay.replay` with ``engine`` (its alerts go to
    ``out``), and ``other`` over the same records in the same pass; returns the diff."""
    mine, theirs = Pipeline(engine), Pipeline(other)
    new: dict[str, Alert] = {}
    old: dict[str, Alert] = {}
    write = out.write
    for record in records:
        kwargs: dict[str, Any] = dict(
            topic=record.topic, partition=record.partition, offset=record.offset,
            key=record.key, defaults=defaults,
        )  # fmt: skip
        result = mine.handle(record.value, **kwargs)
        if isinstance(result, DeadLetter):
            if err is not None:
                err.write(f"{record.where}: {result.error}\n")
            continue  # the other pipeline would refuse it as well
        _keep(result, new, write)
        result = theirs.handle(record.value, **kwargs)
        if not isinstance(result, DeadLetter):
            _keep(result, old, None)
    _keep(mine.flush(), new, write)
    _keep(theirs.flush(), old, None)
    return Diff(
        mine.stats,
        theirs.stats,
        added=[a for k, a in new.items() if k not in old],
        removed=[a for k, a in old.items() if k not in new],
    )


def _keep(alerts: list[Alert], firing: dict[str, Alert], write: Any) -> None:
    for alert in alerts:
        if write is not None:
            write(encode(alert) + b"\n")
        if alert.status == "firing":
            firing.setdefault(alert.alert_id, alert)
