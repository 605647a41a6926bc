"""Regression tests for rules: do the rules fire exactly the expected alerts?

``rankwatch rules test RULES --input EVENTS.jsonl --expect ALERTS.jsonl`` replays the events
with the rules and compares the *firing* alerts with the expected ones on ``rule``, ``ranks``
and ``step`` (and ``job_id`` where the expectation gives one), as multisets. An expectation
line may be a whole alert (what ``rankwatch replay`` writes) or just those keys::

    {"rule": "disk_full", "ranks": [3], "step": 120}

>>> exp = [Expected("disk_full", (3,), 120), Expected("low_mfu", (), None)]
>>> got = [Expected("disk_full", (3,), 120), Expected("low_mfu", (1, 2), 40)]
>>> print(render(compare(exp, got)))
- missing:    low_mfu ranks=[] step=None
+ unexpected: low_mfu ranks=[1, 2] step=40
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import orjson

from rankwatch.schemas import Alert
from rankwatch.streams.rules.exceptions import RulesError


@dataclass(frozen=True, slots=True, order=True)
class Expected:
    """What a regression test compares of one alert."""

    rule: str
    ranks: tuple[int, ...]
    step: int | None
    job_id: str | None = None

    def text(self) -> str:
        job = f" job={self.job_id}" if self.job_id else ""
        return f"{self.rule}{job} ranks={list(self.ranks)} step={self.step}"


@dataclass
class Comparison:
    missing: list[Expected]
    unexpected: list[Expected]
    matched: int

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected


def read_expected(stream: IO[bytes], where: str = "expect") -> list[Expected]:
    """Expectations from JSON lines; firing alerts only (``status`` absent or "firing")."""
    out: list[Expected] = []
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            obj: Any = orjson.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("rule"), str):
                raise ValueError("needs a 'rule' string")
            if obj.get("status", "firing") != "firing":
                continue
            ranks = obj.get("ranks", [])
            step = obj.get("step")
            job = obj.get("job_id")
            if not isinstance(ranks, list) or not all(isinstance(r, int) for r in ranks):
                raise ValueError("'ranks' must be a list of integers")
            if step is not None and not isinstance(step, int):
                raise ValueError("'step' must be an integer or null")
            out.append(Expected(obj["rule"], tuple(sorted(ranks)), step, job))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise RulesError(f"{where}:{number}: {exc}") from None
    return out


def observed(alerts: Iterable[Alert]) -> list[Expected]:
    return [
        Expected(a.rule, tuple(a.ranks), a.step, a.job_id) for a in alerts if a.status == "firing"
    ]


def compare(expected: list[Expected], got: list[Expected]) -> Comparison:
    """Multiset comparison; an expectation without ``job_id`` matches any job."""
    remaining = Counter(got)
    missing: list[Expected] = []
    matched = 0
    for exp in sorted(expected, key=lambda e: e.job_id is None):  # exact ones first
        hit = exp if exp.job_id is not None and remaining[exp] > 0 else None
        if hit is None and exp.job_id is None:
            hit = next(
                (g for g in remaining if remaining[g] > 0 and g.rule == exp.rule
                 and g.ranks == exp.ranks and g.step == exp.step),
                None,
            )  # fmt: skip
        if hit is None:
            missing.append(exp)
            continue
        remaining[hit] -= 1
        matched += 1
    unexpected = sorted(remaining.elements())
    return Comparison(sorted(missing), unexpected, matched)


def render(result: Comparison) -> str:
    lines = [f"- missing:    {e.text()}" for e in result.missing]
    lines += [f"+ unexpected: {e.text()}" for e in result.unexpected]
    return "\n".join(lines)


def expectation_line(alert: Alert) -> bytes:
    """The short expectation for one firing alert (what ``--update`` writes)."""
    return orjson.dumps(
        {"rule": alert.rule, "job_id": alert.job_id, "ranks": alert.ranks, "step": alert.step}
    )
