"""The :class:`Alert`: what detectors emit and every sink delivers."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rankwatch.schemas._types import JobId, Timestamp

Severity = Literal["info", "warning", "critical"]
Scope = Literal["rank", "job"]
Action = Literal["notify", "pause_job"]
Status = Literal["firing", "resolved"]


def alert_id_for(*parts: object) -> str:
    """A deterministic id from the parts that identify one incident.

    The same incident in the same input gives the same id, live or replayed, so sinks can
    deduplicate on it.

    >>> alert_id_for("job-1", "cuda_oom", 7, 1200)
    '1c2f6fdf9a49dd0357dafeee'
    """
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class Alert(BaseModel):
    """One incident, firing or resolved."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["alert"] = "alert"
    schema_version: int = Field(default=1, ge=1)
    alert_id: str = Field(min_length=1)
    job_id: JobId
    rule: str = Field(min_length=1)
    severity: Severity
    scope: Scope
    ranks: list[int] = Field(default_factory=list)
    step: int | None = None
    first_seen: Timestamp
    last_seen: Timestamp
    summary: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    action: Action = "notify"
    status: Status = "firing"

    @property
    def extra(self) -> dict[str, Any]:
        return self.model_extra or {}
