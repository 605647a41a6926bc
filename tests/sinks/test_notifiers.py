"""Each integration and the retry stage against a real loopback HTTP server.

The server stands in for Slack and DingTalk (unreachable from here) and speaks their answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from rankwatch.schemas import Alert
from rankwatch.sinks.notify.dingtalk import DingTalkNotifier
from rankwatch.sinks.notify.retry import RetryPolicy, deliver
from rankwatch.sinks.notify.slack import SlackNotifier
from rankwatch.sinks.notify.webhook import WebhookNotifier
from rankwatch.sinks.testing import WebhookServer

ALERT = Alert(
    alert_id="a1",
    job_id="llm-a",
    rule="nccl_timeout_burst",
    severity="critical",
    scope="job",
    ranks=[1, 5, 9],
    step=1200,
    first_seen=0,
    last_seen=5,
    summary="NCCL timeouts on 3 ranks",
    evidence={"ratio": float("nan")},
)


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    with WebhookServer() as running:
        yield running


def test_generic_webhook_sends_the_alerts_as_on_the_wire(server: WebhookServer) -> None:
    assert WebhookNotifier("ops", server.url, 2).notify([ALERT]).ok
    (body,) = server.bodies()
    assert (body["receiver"], body["status"], body["job_id"]) == ("ops", "firing", "llm-a")
    assert body["alerts"][0]["ranks"] == [1, 5, 9]
    assert body["alerts"][0]["evidence"] == {"ratio": "nan"}  # non-finite survives JSON
    assert body["alerts"][0]["last_seen"] == "1970-01-01T00:00:05Z"


def test_slack_incoming_webhook_format(server: WebhookServer) -> None:
    assert SlackNotifier("chat", server.url, 2).notify([ALERT]).ok
    (body,) = server.bodies()
    assert body["text"].startswith(":rotating_light: llm-a: 1 alert")
    assert body["attachments"][0]["color"] == "#d00000"
    assert body["attachments"][0]["title"] == "[FIRING] nccl_timeout_burst (critical)"


def test_dingtalk_markdown_format_and_errcode(server: WebhookServer) -> None:
    assert DingTalkNotifier("robot", server.url, 2).notify([ALERT]).ok
    (body,) = server.bodies()
    assert body["msgtype"] == "markdown"
    assert "**[FIRING] CRITICAL nccl_timeout_burst** ranks 1,5,9" in body["markdown"]["text"]


def test_a_400_is_not_retried_a_503_is_until_the_last_attempt(server: WebhookServer) -> None:
    policy = RetryPolicy(max_attempts=3, backoff=0.01, max_backoff=0.02)
    server.set_mode("reject")
    outcome, attempts = deliver(
        WebhookNotifier("x", server.url, 1), [ALERT], policy, wait=threading.Event().wait
    )
    assert (outcome.retryable, outcome.error, attempts) == (False, "HTTP 400 Bad Request", 1)
    server.set_mode("error")
    outcome, attempts = deliver(
        WebhookNotifier("x", server.url, 1), [ALERT], policy, wait=threading.Event().wait
    )
    assert (outcome.retryable, attempts, server.attempts) == (True, 3, 4)


def test_a_hanging_endpoint_costs_at_most_its_timeout(server: WebhookServer) -> None:
    server.set_mode("hang")
    start = time.monotonic()
    outcome = WebhookNotifier("x", server.url, 0.3).notify([ALERT])
    assert outcome == (True, "no answer within 0.3 s")
    assert time.monotonic() - start < 2


def test_a_refused_connection_is_retryable() -> None:
    server = WebhookServer().start()
    url = server.url
    server.stop()
    outcome = WebhookNotifier("x", url, 1).notify([ALERT])
    assert outcome.retryable and "cannot reach the endpoint" in (outcome.error or "")
