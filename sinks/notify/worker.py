"""One destination's worker: its own thread and queue, grouping, dedupe, rate limit, retries.

Nothing here is shared with other destinations except the delivered set (a short SQLite call)
and the parking producer, so a dead or hanging endpoint only ever delays its own alerts.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rankwatch.schemas import Alert
from rankwatch.sinks.config import DestinationConfig
from rankwatch.sinks.notify.base import Notifier
from rankwatch.sinks.notify.dedupe import DeliveredSet
from rankwatch.sinks.notify.ratelimit import TokenBucket
from rankwatch.sinks.notify.retry import RetryPolicy, deliver

log = logging.getLogger("rankwatch.sinks.notify")

Done = Callable[[], None]


@dataclass(order=True)
class _Parked:
    due: float
    seq: int
    alert: Alert = field(compare=False)
    done: Done = field(compare=False)


@dataclass
class _Group:
    deadline: float
    items: list[tuple[Alert, Done]] = field(default_factory=list)


@dataclass
class WorkerStats:
    delivered: int = 0  # alerts delivered
    messages: int = 0  # messages (groups) delivered
    duplicates: int = 0  # alerts skipped: already delivered
    parked: int = 0
    attempts: int = 0


class DestinationWorker:
    """Deliver alerts to one destination; ``park(name, alert)`` keeps undeliverable ones
    (it returns False only if the sink stopped before the retry topic took the alert)."""

    def __init__(
        self,
        name: str,
        notifier: Notifier,
        config: DestinationConfig,
        delivered: DeliveredSet,
        park: Callable[[str, Alert], bool],
        stop: threading.Event,
    ) -> None:
        self.name, self.notifier, self.config = name, notifier, config
        self.delivered, self.park, self.stop = delivered, park, stop
        self.policy = RetryPolicy(config.max_attempts, config.backoff, config.max_backoff)
        self.bucket = TokenBucket(config.rate_limit, config.burst)
        self.stats = WorkerStats()
        self._inbox: queue.Queue[tuple[Alert, Done, float]] = queue.Queue()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name=f"notify-{name}", daemon=True)
        #: Alertmanager's receiver re-posts firing alerts from this thread, between deliveries.
        self._refresh: Callable[[], object] | None = getattr(notifier, "refresh", None)

    def submit(self, alert: Alert, done: Done, not_before: float = 0.0) -> None:
        """Queue ``alert``; ``done()`` is called once it is delivered, known, or parked.

        ``not_before`` (epoch seconds) holds back an alert read from the retry topic.
        """
        self._inbox.put((alert, done, not_before))

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        groups: dict[str, _Group] = {}
        parked: list[_Parked] = []
        while not self.stop.is_set():
            now = time.monotonic()
            wake = [g.deadline for g in groups.values()]
            if parked:
                wake.append(now + parked[0].due - time.time())
            timeout = min([0.2, *(w - now for w in wake)])
            try:
                alert, done, not_before = self._inbox.get(timeout=max(0.0, timeout))
                if not_before > time.time():
                    heapq.heappush(parked, _Parked(not_before, next(self._seq), alert, done))
                else:
                    self._group(groups, alert, done)
            except queue.Empty:
                pass
            while parked and parked[0].due <= time.time():
                item = heapq.heappop(parked)
                self._group(groups, item.alert, item.done)
            now = time.monotonic()
            for job in [j for j, g in groups.items() if g.deadline <= now]:
                self._send(groups.pop(job).items)
            if self._refresh is not None:
                self._refresh()
        # Stopping: what is still queued or grouped is not done, so its offset is not
        # committed and the next run delivers it.

    def _group(self, groups: dict[str, _Group], alert: Alert, done: Done) -> None:
        group = groups.get(alert.job_id)
        if group is None:
            group = groups[alert.job_id] = _Group(time.monotonic() + self.config.group_wait)
        group.items.append((alert, done))
        if len(group.items) >= self.config.max_group:
            group.deadline = 0.0  # full: send now

    def _send(self, items: list[tuple[Alert, Done]]) -> None:
        fresh: dict[tuple[str, str], Alert] = {}
        for alert, _ in items:
            key = (alert.alert_id, alert.status)
            if key in fresh or self.delivered.contains(self.name, *key):
                self.stats.duplicates += 1
                continue
            fresh[key] = alert
        if fresh:
            alerts = list(fresh.values())
            outcome, attempts = deliver(
                self.notifier,
                alerts,
                self.policy,
                wait=self.stop.wait,
                before_attempt=lambda: self.bucket.acquire(self.stop),
            )
            self.stats.attempts += attempts
            if outcome.ok:
                self.delivered.add(self.name, fresh)
                self.stats.delivered += len(alerts)
                self.stats.messages += 1
            elif self.stop.is_set():
                return  # not done: re-read and delivered by the next run
            else:
                log.error(
                    "%s: %d alert(s) of %s not delivered after %d attempt(s): %s; "
                    "parked for a later retry",
                    self.name,
                    len(alerts),
                    alerts[0].job_id,
                    attempts,
                    outcome.error,
                )
                for alert in alerts:
                    if not self.park(self.name, alert):
                        return  # stopping: not done, so re-read and retried by the next run
                    self.stats.parked += 1
        for _, done in items:
            done()
