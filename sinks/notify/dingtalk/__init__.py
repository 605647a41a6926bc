"""DingTalk custom robot: a ``markdown`` message; the answer's ``errcode`` must be 0.

DingTalk answers HTTP 200 even when it refuses a message, with ``{"errcode": N, "errmsg": ...}``
in the body: a non-zero code is a failure (130101, sending too fast, is worth retrying).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from rankwatch.schemas import Alert
from rankwatch.sinks.notify.base import Outcome
from rankwatch.sinks.notify.http import post_json

RATE_LIMITED = 130101


def dingtalk_body(alerts: Sequence[Alert]) -> dict[str, Any]:
    """The robot's markdown message for one job's alerts.

    >>> a = Alert(alert_id="x", job_id="j1", rule="cuda_oom", severity="critical",
    ...           scope="rank", ranks=[7], step=3, first_seen=0, last_seen=0, summary="OOM")
    >>> print(dingtalk_body([a])["markdown"]["text"])
    ### rankwatch: j1, 1 alert(s)
    - **[FIRING] CRITICAL cuda_oom** ranks 7, step 3: OOM
    """
    job = alerts[0].job_id
    lines = [f"### rankwatch: {job}, {len(alerts)} alert(s)"]
    for a in alerts:
        ranks = ",".join(map(str, a.ranks[:16])) or "all"
        step = "-" if a.step is None else a.step
        lines.append(
            f"- **[{a.status.upper()}] {a.severity.upper()} {a.rule}** "
            f"ranks {ranks}, step {step}: {' '.join(a.summary.split())}"
        )
    return {
        "msgtype": "markdown",
        "markdown": {"title": f"rankwatch {job}: {alerts[0].rule}", "text": "\n".join(lines)},
    }


class DingTalkNotifier:
    """POST :func:`dingtalk_body` to a DingTalk robot webhook URL."""

    def __init__(self, name: str, url: str, timeout_s: float) -> None:
        self.name, self.url, self.timeout_s = name, url, timeout_s

    def notify(self, alerts: Sequence[Alert]) -> Outcome:
        outcome, body = post_json(self.url, dingtalk_body(alerts), self.timeout_s)
        if not outcome.ok:
            return outcome
        try:
            answer = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return Outcome(True, f"not a DingTalk answer: {body[:80]!r}")
        code = answer.get("errcode", 0) if isinstance(answer, dict) else 0
        if code:
            return Outcome(code == RATE_LIMITED, f"DingTalk errcode {code}: {answer.get('errmsg')}")
        return outcome
