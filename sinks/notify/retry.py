"""The one retry stage: exponential backoff with full jitter, a bounded number of attempts.

Every integration goes through it, so retry behaviour is written (and tested) once. Between
attempts it waits on the caller's ``wait`` (an Event's wait), so stopping the sink interrupts
a backoff at once instead of sleeping it out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rankwatch.schemas import Alert
from rankwatch.sinks.notify.base import Notifier, Outcome


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` tries; the wait before try ``n+1`` is uniform in
    ``[0, min(max_backoff, backoff * 2**(n-1))]`` (full jitter: retries of many senders spread
    out instead of hitting a recovering endpoint together)."""

    max_attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt ``attempt`` (1-based).

        >>> RetryPolicy(backoff=1, max_backoff=5).delay(10, rng=lambda: 1.0)
        5.0
        """
        return float(rng() * min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1)))


def deliver(
    notifier: Notifier,
    alerts: Sequence[Alert],
    policy: RetryPolicy,
    *,
    wait: Callable[[float], bool],
    before_attempt: Callable[[], bool] | None = None,
) -> tuple[Outcome, int]:
    """Try until delivered, a non-retryable error, the last attempt, or a stop.

    ``wait(seconds)`` returns True when the sink is stopping; ``before_attempt()`` (the rate
    limit) likewise. Returns the last outcome and the number of attempts made.
    """
    outcome = Outcome(True, "not attempted: stopping")
    for attempt in range(1, policy.max_attempts + 1):
        if before_attempt is not None and before_attempt():
            return outcome, attempt - 1
        outcome = notifier.notify(alerts)
        if outcome.ok or not outcome.retryable or attempt == policy.max_attempts:
            return outcome, attempt
        if wait(policy.delay(attempt)):
            return outcome, attempt
    return outcome, policy.max_attempts
