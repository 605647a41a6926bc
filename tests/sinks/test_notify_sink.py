"""The webhook sink on the real broker, with real HTTP endpoints on loopback.

Slack and DingTalk cannot be reached from here: :class:`WebhookServer` stands in for them,
answering as they do (DingTalk's ``errcode`` body included), and fails, hangs and recovers on
command.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from rankwatch.config import load_settings
from rankwatch.schemas import Alert, encode
from rankwatch.sinks.config import load_sinks_config
from rankwatch.sinks.notify.sink import NotifySink
from rankwatch.sinks.testing import WebhookServer

pytestmark = pytest.mark.broker

T0 = 1_750_000_000.0


def incident(job: str, n: int, status: str = "firing") -> Alert:
    return Alert(
        alert_id=f"{job}-inc-{n}",
        job_id=job,
        rule="cuda_oom",
        severity="critical",
        scope="rank",
        ranks=[n],
        step=100 + n,
        first_seen=T0 + n,
        last_seen=T0 + n,
        summary=f"rank {n}: CUDA out of memory",
        status=status,
    )


ALERTS = [incident(job, n) for job in ("llm-a", "llm-b") for n in range(4)] + [
    incident("llm-a", 0, "resolved"),
    incident("llm-b", 1, "resolved"),
]
KEYS = {(a.alert_id, a.status) for a in ALERTS}


def keys_in(server: WebhookServer, kind: str) -> list[tuple[str, str]]:
    """Every (alert_id, status) the server received, repeats included."""
    out: list[tuple[str, str]] = []
    for body in server.bodies():
        if kind == "webhook":
            out += [(a["alert_id"], a["status"]) for a in body["alerts"]]
        elif kind == "slack":
            out += [
                (att["footer"].split()[-1], att["title"].split("]")[0][1:].lower())
                for att in body["attachments"]
            ]
        else:
            for line in body["markdown"]["text"].splitlines()[1:]:
                status = line.split("[")[1].split("]")[0].lower()
                job = body["markdown"]["title"].split()[1].rstrip(":")
                rank = int(line.split("ranks ")[1].split(",")[0])
                out.append((f"{job}-inc-{rank}", status))
    return out


def produce(bootstrap: str, topic: str, alerts: list[Alert]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for alert in alerts:
        producer.produce(topic, encode(alert), key=alert.job_id.encode())
    assert producer.flush(30) == 0


def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def servers() -> Iterator[dict[str, WebhookServer]]:
    started = {
        "flaky": WebhookServer(mode="error").start(),
        "chat": WebhookServer().start(),
        "robot": WebhookServer(mode="hang").start(),
    }
    yield started
    for server in started.values():
        server.stop()


def write_config(
    path: Path, bootstrap: str, topic: str, servers: dict[str, WebhookServer], group: str
) -> Path:
    path.write_text(f"""
[kafka]
bootstrap = "{bootstrap}"
[topics.alerts]
name = "{topic}"
[sinks.notify]
group_id = "{group}"
state_db = "{path.parent / "delivered.db"}"
retry_topic = "{topic}.retry"
park_for = "1s"
[sinks.notify.destinations.flaky]
type = "webhook"
url = "{servers["flaky"].url}"
max_attempts = 2
backoff = "50ms"
group_wait = "300ms"
[sinks.notify.destinations.chat]
type = "slack"
url = "{servers["chat"].url}"
group_wait = "1s"
[sinks.notify.destinations.robot]
type = "dingtalk"
url = "{servers["robot"].url}"
timeout = "300ms"
max_attempts = 1
group_wait = "300ms"
[[sinks.notify.routes]]
jobs = "llm-*"
min_severity = "warning"
to = ["flaky", "chat", "robot"]
""")
    return path


def start(config: Path) -> tuple[NotifySink, threading.Thread]:
    sink = NotifySink(load_sinks_config(config).notify, load_settings(config))
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    assert sink.wait_ready(30), "the notify sink got no partitions"
    return sink, thread


def test_down_and_hanging_endpoints_get_every_alert_exactly_once_when_back(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    tmp_path: Path,
    servers: dict[str, WebhookServer],
) -> None:
    topic = make_topic(2)
    config = write_config(tmp_path / "rankwatch.toml", kafka_bootstrap, topic, servers, "n1")
    sink, thread = start(config)
    try:
        produce(kafka_bootstrap, topic, ALERTS + ALERTS[:3])  # repeats must not be resent
        # The healthy endpoint is not held up by the one that is down or the one that hangs:
        # each job's alerts arrive grouped, one message per job, within group_wait + a little.
        eventually(lambda: set(keys_in(servers["chat"], "slack")) == KEYS, 5, "chat")
        assert len(servers["chat"].received) == 2
        eventually(lambda: servers["flaky"].attempts >= 4, 10, "flaky to be retried")
        time.sleep(1.5)  # down for a while: alerts are parked on the retry topic
        assert keys_in(servers["flaky"], "webhook") == []
        servers["flaky"].set_mode("ok")
        servers["robot"].set_mode("ok")
        for name, kind in (("flaky", "webhook"), ("robot", "dingtalk")):
            eventually(lambda n=name, k=kind: set(keys_in(servers[n], k)) == KEYS, 20, name)
        time.sleep(1.5)  # anything redelivered late would show up now
    finally:
        sink.stop()
        thread.join(20)
    for name, kind in (("flaky", "webhook"), ("chat", "slack"), ("robot", "dingtalk")):
        counts = Counter(keys_in(servers[name], kind))
        assert counts == dict.fromkeys(KEYS, 1), f"{name}: {counts}"


def test_a_restarted_sink_does_not_resend_what_it_delivered(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    tmp_path: Path,
    servers: dict[str, WebhookServer],
) -> None:
    for server in servers.values():
        server.set_mode("ok")
    topic = make_topic(1)
    config = write_config(tmp_path / "rankwatch.toml", kafka_bootstrap, topic, servers, "r1")
    produce(kafka_bootstrap, topic, ALERTS)
    sink, thread = start(config)
    try:
        eventually(lambda: set(keys_in(servers["chat"], "slack")) == KEYS, 10, "first run")
    finally:
        sink.stop()
        thread.join(20)
    before = {name: len(server.received) for name, server in servers.items()}
    # A new consumer group re-reads the whole topic: only the delivered set stands in the way.
    config = write_config(config, kafka_bootstrap, topic, servers, "r2")
    sink, thread = start(config)
    try:
        time.sleep(2.5)
    finally:
        sink.stop()
        thread.join(20)
    assert {name: len(server.received) for name, server in servers.items()} == before
    stats: Any = {n: w.stats for n, w in sink.workers.items()}
    assert stats["chat"].duplicates == len(ALERTS)
