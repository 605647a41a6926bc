"""The one interface every integration implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from rankwatch.schemas import Alert


class Outcome(NamedTuple):
    """What one delivery attempt did: ``error`` is None on success.

    ``retryable`` says whether trying again may help (a 503, a timeout, a refused connection)
    or not (a 400: the message or the URL is wrong). Either way an alert that is not delivered
    is parked, never dropped; ``retryable`` only decides whether the retry stage tries again now.
    """

    retryable: bool
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


OK = Outcome(False, None)


class Notifier(Protocol):
    """An integration: formats alerts as its service expects and sends them in one request.

    Synchronous by design: each destination has its own worker thread, so a blocking call with
    a timeout is the simplest correct thing, and the retry stage around it owns backoff.
    """

    def notify(self, alerts: Sequence[Alert]) -> Outcome:
        """Send ``alerts`` (one job's group) as one message."""
