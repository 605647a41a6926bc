"""Prometheus Alertmanager: alerts posted to its v2 API, and posted again while they fire.

Body: a JSON array of ``PostableAlert`` (``labels``, ``annotations``, ``startsAt``, ``endsAt``,
``generatorURL``), POSTed to ``URL/api/v2/alerts``; labels and annotations:
:mod:`~rankwatch.sinks.notify.alertmanager.labels`. Alertmanager answers 200 on success and 400
to an alert it refuses (not retried); the rest is the HTTP helper's rules
(:mod:`rankwatch.sinks.notify.http`).

Alertmanager ends an alert nobody posts again: at the ``endsAt`` the client gave, or after its
``resolve_timeout`` when none was given. Its clients must re-post active alerts (Prometheus
every minute, each post ending four intervals later). This receiver does the same: a firing
alert is posted with ``endsAt`` = now + 4 x ``resend_every``, remembered
(:class:`~rankwatch.sinks.notify.alertmanager.state.OpenAlerts`, in the sink's state file, so
a restart keeps re-posting), and posted again every ``resend_every`` by :meth:`refresh`, which
the destination's worker thread calls between deliveries, until its resolution is delivered;
the resolution is posted with ``endsAt`` set. So an incident open in rankwatch stays open in
Alertmanager whatever its ``resolve_timeout``, and one whose sink is gone for good ends by
itself four intervals later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rankwatch.schemas import Alert
from rankwatch.sinks.notify.alertmanager.labels import postable
from rankwatch.sinks.notify.alertmanager.state import OpenAlerts
from rankwatch.sinks.notify.base import OK, Outcome
from rankwatch.sinks.notify.http import post_json
from rankwatch.sinks.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from rankwatch.sinks.config import DestinationConfig

__all__ = ["API_PATH", "HOLD_INTERVALS", "AlertmanagerNotifier", "api_url", "postable"]

log = logging.getLogger("rankwatch.sinks.notify")

API_PATH = "/api/v2/alerts"
#: A firing post's ``endsAt`` lies this many ``resend_every`` ahead (Prometheus's choice):
#: three re-posts may fail before Alertmanager ends the alert.
HOLD_INTERVALS = 4
#: Alerts per re-post request.
_CHUNK = 500


def api_url(url: str) -> str:
    """The v2 alerts endpoint of an Alertmanager given by its base URL (a path prefix, as
    behind a proxy or with ``--web.route-prefix``, is kept).

    >>> api_url("http://127.0.0.1:9093/"), api_url("http://am/prefix/api/v2/alerts")
    ('http://127.0.0.1:9093/api/v2/alerts', 'http://am/prefix/api/v2/alerts')
    """
    base = url.rstrip("/")
    return base if base.endswith(API_PATH) else base + API_PATH


class AlertmanagerNotifier:
    """POST alerts to one Alertmanager and keep the firing ones alive (see the module doc).

    ``state_db``: the SQLite file of the open alerts (the notify sink's ``state_db``); None
    keeps them in memory. ``notify`` and ``refresh`` are called from one thread.
    """

    def __init__(
        self,
        name: str,
        config: DestinationConfig,
        state_db: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.url = api_url(config.url)
        self.timeout_s = config.timeout
        self.labels = dict(config.labels)
        self.dashboard_url = config.dashboard_url
        self.resend_every = config.resend_every
        self.hold_s = HOLD_INTERVALS * config.resend_every
        self.open = OpenAlerts(state_db, name)
        self._clock = clock
        self._next_refresh = 0.0  # at start: re-post at once what was open before a restart
        self._failed = RateLimitedLog(f"{name}: re-posting firing alerts failed", emit=log.warning)

    def body(self, alerts: Sequence[Alert], now: float) -> list[dict[str, Any]]:
        return [
            postable(
                a,
                now=now,
                hold_s=self.hold_s,
                static_labels=self.labels,
                dashboard_url=self.dashboard_url,
            )
            for a in alerts
        ]

    def notify(self, alerts: Sequence[Alert]) -> Outcome:
        """Post ``alerts``; once delivered, the firing ones are re-posted until resolved.

        A firing copy of an alert whose resolution was already delivered here (it was parked
        and retried meanwhile) is not posted: it would reopen the incident in Alertmanager.
        Nor is a firing copy beside its own resolution in the same group.
        """
        ending = {a.alert_id for a in alerts if a.status == "resolved"}
        sent = [
            a
            for a in alerts
            if a.status == "resolved"
            or (a.alert_id not in ending and not self.open.resolved(a.alert_id))
        ]
        if not sent:
            return OK
        outcome, _ = post_json(self.url, self.body(sent, self._clock()), self.timeout_s)
        if outcome.ok:
            self.open.update(sent)
        return outcome

    def refresh(self) -> Outcome | None:
        """Post the open firing alerts again if ``resend_every`` has passed since the last
        time (None when not due or nothing is open). A failure is logged and tried again a
        quarter of an interval later; the alerts stay open meanwhile."""
        now = self._clock()
        if now < self._next_refresh:
            return None
        self._next_refresh = now + self.resend_every
        firing = self.open.firing()
        if not firing:
            return None
        outcome = OK
        for start in range(0, len(firing), _CHUNK):
            chunk = firing[start : start + _CHUNK]
            outcome, _ = post_json(self.url, self.body(chunk, now), self.timeout_s)
            if not outcome.ok:
                self._failed.hit(str(outcome.error))
                self._next_refresh = now + self.resend_every / 4
                break
        return outcome

    def close(self) -> None:
        self.open.close()
