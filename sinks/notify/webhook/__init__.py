"""Generic JSON webhook: the alerts as the contract defines them, one job per message.

Body::

    {"receiver": NAME, "status": "firing"|"resolved", "job_id": J,
     "alerts": [<Alert as on the wire>, ...]}

``status`` is ``firing`` if any alert of the group is firing, as Alertmanager does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rankwatch.schemas import Alert, to_wire_dict
from rankwatch.schemas._types import format_timestamp
from rankwatch.sinks.notify.base import Outcome
from rankwatch.sinks.notify.http import post_json


def webhook_body(name: str, alerts: Sequence[Alert]) -> dict[str, Any]:
    """The JSON body for ``alerts`` (one job)."""
    wire = []
    for alert in alerts:
        item = to_wire_dict(alert)
        item["first_seen"] = format_timestamp(alert.first_seen)
        item["last_seen"] = format_timestamp(alert.last_seen)
        wire.append(item)
    return {
        "receiver": name,
        "status": "firing" if any(a.status == "firing" for a in alerts) else "resolved",
        "job_id": alerts[0].job_id if alerts else None,
        "alerts": wire,
    }


class WebhookNotifier:
    """POST :func:`webhook_body` to ``url``."""

    def __init__(self, name: str, url: str, timeout_s: float) -> None:
        self.name, self.url, self.timeout_s = name, url, timeout_s

    def notify(self, alerts: Sequence[Alert]) -> Outcome:
        outcome, _ = post_json(self.url, webhook_body(self.name, alerts), self.timeout_s)
        return outcome
