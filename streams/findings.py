"""What detectors return: plain records, turned into :class:`~rankwatch.schemas.Alert` by the
engine, which owns ids, suppression and job-level aggregation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rankwatch.schemas import Action, Severity


@dataclass(slots=True)
class Finding:
    """Evidence that an incident is going on.

    ``rank`` is the rank at fault, or ``None`` for a job-wide finding (then ``ranks`` lists the
    implicated ranks, empty meaning all). ``incident_key`` tells apart incidents of one rule on
    one rank that may be open at the same time (rarely needed: leave it empty).
    ``step`` is the first step of the incident where it has one; ``event_time`` the event time
    (epoch seconds) of the evidence.
    """

    rule: str
    rank: int | None
    severity: Severity
    event_time: float
    summary: str
    step: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    action: Action = "notify"
    ranks: tuple[int, ...] = ()
    incident_key: str = ""


@dataclass(slots=True)
class Resolution:
    """The condition behind an open incident has cleared."""

    rule: str
    rank: int | None
    event_time: float
    incident_key: str = ""
    summary: str = ""


Outcome = Finding | Resolution
