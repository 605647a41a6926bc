"""Slack incoming webhook: ``{"text": ..., "attachments": [...]}``, one attachment per alert.

The attachment colour follows severity (green once resolved); ``text`` is the notification
line phones show. Slack answers 200 ``ok`` on success.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rankwatch.schemas import Alert
from rankwatch.sinks.notify.base import Outcome
from rankwatch.sinks.notify.http import post_json
from rankwatch.sinks.query.console import alert_line

COLOURS = {"critical": "#d00000", "warning": "#e8a317", "info": "#439fe0"}
RESOLVED = "#2eb886"


def slack_body(alerts: Sequence[Alert]) -> dict[str, Any]:
    """The incoming-webhook message for one job's alerts.

    >>> a = Alert(alert_id="x", job_id="j1", rule="cuda_oom", severity="critical",
    ...           scope="rank", ranks=[7], first_seen=0, last_seen=0, summary="OOM")
    >>> slack_body([a])["text"]
    ':rotating_light: j1: 1 alert (1 firing, critical: cuda_oom)'
    """
    firing = [a for a in alerts if a.status == "firing"]
    worst = max(alerts, key=lambda a: ("info", "warning", "critical").index(a.severity))
    icon = ":rotating_light:" if firing else ":white_check_mark:"
    plural = "s" if len(alerts) != 1 else ""
    text = (
        f"{icon} {alerts[0].job_id}: {len(alerts)} alert{plural} ({len(firing)} firing, "
        f"{worst.severity}: {worst.rule})"
    )
    return {
        "text": text,
        "attachments": [
            {
                "color": RESOLVED if a.status == "resolved" else COLOURS[a.severity],
                "title": f"[{a.status.upper()}] {a.rule} ({a.severity})",
                "text": alert_line(a),
                "footer": f"rankwatch alert {a.alert_id}",
            }
            for a in alerts
        ],
    }


class SlackNotifier:
    """POST :func:`slack_body` to a Slack incoming-webhook URL."""

    def __init__(self, name: str, url: str, timeout_s: float) -> None:
        self.name, self.url, self.timeout_s = name, url, timeout_s

    def notify(self, alerts: Sequence[Alert]) -> Outcome:
        outcome, _ = post_json(self.url, slack_body(alerts), self.timeout_s)
        return outcome
