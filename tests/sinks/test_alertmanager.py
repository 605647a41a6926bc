"""The Alertmanager receiver against a real Alertmanager (Debian's ``prometheus-alertmanager``).

Alertmanager runs alone on a free loopback port with its storage in a temporary folder, and
notifies a loopback :class:`WebhookServer` of what it fires and resolves (its own
``webhook_configs`` with ``send_resolved``): so the tests see what Alertmanager made of our
posts twice, in its ``GET /api/v2/alerts`` and in the notifications it sends on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rankwatch.schemas import Alert
from rankwatch.sinks.config import DestinationConfig, parse_sinks_config
from rankwatch.sinks.exceptions import SinkConfigError
from rankwatch.sinks.notify.alertmanager import AlertmanagerNotifier
from rankwatch.sinks.testing import AlertmanagerServer, ServerUnavailable, WebhookServer

NOW = time.time()


def oom(status: str = "firing", **update: Any) -> Alert:
    alert = Alert(
        alert_id="inc-oom-7",
        job_id="llm-a",
        rule="cuda_oom",
        severity="critical",
        scope="rank",
        ranks=[7],
        step=1200,
        first_seen=NOW - 30,
        last_seen=NOW - 1,
        summary="rank 7: CUDA out of memory (tried to allocate 2.00 GiB)",
        evidence={"remediation": "lower the micro-batch size or enable activation checkpointing"},
        status=status,
    )
    return Alert.model_validate({**alert.model_dump(), **update})


def eventually(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture
def alertmanager(hook: WebhookServer) -> Iterator[AlertmanagerServer]:
    server = AlertmanagerServer(webhook_url=hook.url)
    try:
        server.start()
    except ServerUnavailable as exc:
        pytest.skip(f"Alertmanager cannot be installed or started here: {exc}")
    yield server
    server.stop()


def destination(url: str, **keys: Any) -> DestinationConfig:
    return DestinationConfig.model_validate({"type": "alertmanager", "url": url, **keys})


def notified(hook: WebhookServer, status: str) -> list[dict[str, Any]]:
    """The alerts Alertmanager notified with ``status``."""
    return [a for body in hook.bodies() for a in body["alerts"] if a["status"] == status]


@pytest.mark.slow
def test_a_firing_alert_and_its_resolution_reach_alertmanager(
    alertmanager: AlertmanagerServer, hook: WebhookServer, tmp_path: Path
) -> None:
    config = destination(
        alertmanager.url,
        labels={"team": "ml-infra"},
        dashboard_url="http://127.0.0.1:8765/",
    )
    notifier = AlertmanagerNotifier("am", config, tmp_path / "notify.db")
    assert notifier.notify([oom()]).ok

    (active,) = alertmanager.alerts()
    assert active["labels"] == {
        "alertname": "cuda_oom",
        "rule": "cuda_oom",
        "job": "llm-a",
        "rank": "7",
        "severity": "critical",
        "scope": "rank",
        "alert_id": "inc-oom-7",
        "team": "ml-infra",
    }
    annotations = active["annotations"]
    assert annotations["summary"] == "rank 7: CUDA out of memory (tried to allocate 2.00 GiB)"
    assert annotations["remediation"].startswith("lower the micro-batch size")
    assert annotations["dashboard"] == "http://127.0.0.1:8765/alerts/inc-oom-7"
    assert active["generatorURL"] == "http://127.0.0.1:8765/alerts/inc-oom-7"
    assert active["status"]["state"] == "active"
    fired = eventually(lambda: notified(hook, "firing"), 15, "Alertmanager's firing notice")
    assert fired[0]["labels"]["alert_id"] == "inc-oom-7"

    assert notifier.notify([oom("resolved")]).ok
    resolved = eventually(lambda: notified(hook, "resolved"), 15, "its resolved notice")
    assert resolved[0]["labels"] == active["labels"]  # the same alert, not a new one
    assert alertmanager.alerts() == []  # ended: no longer listed
    assert notifier.refresh() is None  # nothing open to re-post


@pytest.mark.slow
def test_a_firing_alert_is_posted_again_until_resolved_across_a_restart(
    alertmanager: AlertmanagerServer, tmp_path: Path
) -> None:
    config = destination(alertmanager.url, resend_every="1s")
    state = tmp_path / "notify.db"
    # The real time now, not the module's import time (minutes earlier in a whole-suite run):
    # Alertmanager drops an alert whose endsAt has passed, and endsAt follows this clock.
    clock = [time.time()]
    notifier = AlertmanagerNotifier("am", config, state, clock=lambda: clock[0])
    assert notifier.notify([oom()]).ok
    (first,) = alertmanager.alerts()
    assert notifier.refresh() is not None  # due at once after start

    clock[0] += 2.0
    again = notifier.refresh()
    assert again is not None and again.ok
    (second,) = alertmanager.alerts()
    assert second["endsAt"] > first["endsAt"]  # held open four intervals past the re-post
    notifier.close()

    # A restarted sink (same state file) re-posts at once what was open before.
    clock[0] += 5.0
    restarted = AlertmanagerNotifier("am", config, state, clock=lambda: clock[0])
    assert [a.alert_id for a in restarted.open.firing()] == ["inc-oom-7"]
    assert restarted.refresh() is not None
    (third,) = alertmanager.alerts()
    assert third["endsAt"] > second["endsAt"]

    assert restarted.notify([oom("resolved")]).ok
    # A firing copy that was parked meanwhile does not reopen it.
    assert restarted.notify([oom()]).ok
    assert alertmanager.alerts() == []


@pytest.mark.slow
def test_a_refused_alert_is_not_retried(alertmanager: AlertmanagerServer) -> None:
    # Alertmanager refuses an alert that ends before it starts: a 400, not worth retrying.
    notifier = AlertmanagerNotifier("am", destination(alertmanager.url))
    bad = oom("resolved", first_seen=NOW + 3600, last_seen=NOW - 3600)
    body = notifier.body([bad], NOW)
    body[0]["endsAt"] = "2000-01-01T00:00:00Z"  # what a careless client would send

    from rankwatch.sinks.notify.http import post_json

    outcome, _ = post_json(notifier.url, body, 5)
    assert (outcome.retryable, outcome.error) == (False, "HTTP 400 Bad Request")
    # Ours clamps a resolution's end to its start: the same alert is accepted.
    assert notifier.notify([bad]).ok


def test_unreachable_alertmanager_is_retryable(tmp_path: Path) -> None:
    from rankwatch.sinks.testing import _free_port

    notifier = AlertmanagerNotifier("am", destination(f"http://127.0.0.1:{_free_port()}"))
    outcome = notifier.notify([oom()])
    assert outcome.retryable and "cannot reach" in str(outcome.error)
    assert notifier.open.firing() == []  # not delivered: nothing to keep alive


def test_a_job_wide_alert_keeps_its_labels_as_ranks_join() -> None:
    notifier = AlertmanagerNotifier("am", destination("http://127.0.0.1:1"))
    first = oom(scope="job", ranks=[1, 5], rule="nccl_timeout_burst")
    later = oom("resolved", scope="job", ranks=list(range(300)), rule="nccl_timeout_burst")
    (a,), (b,) = notifier.body([first], NOW), notifier.body([later], NOW)
    assert a["labels"] == b["labels"] and "rank" not in a["labels"]
    assert a["annotations"]["ranks"] == "1,5"
    assert b["annotations"]["ranks"].endswith(",63,...(300 ranks)")


# -- configuration: one test per mistake, each with its exact message -----------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"labels": {"2fast": "x"}},
            "sinks.notify.destinations.am.labels: '2fast' is not a label name "
            "(letters, digits and _, not starting with a digit)",
        ),
        (
            {"labels": {"__name__": "x"}},
            "sinks.notify.destinations.am.labels: '__name__': names starting with __ are reserved",
        ),
        (
            {"labels": {"job": "x"}},
            "sinks.notify.destinations.am.labels: 'job' is set by rankwatch "
            "(alert_id, alertname, job, rank, rule, scope, severity)",
        ),
        (
            {"labels": {"team": 3}},
            "sinks.notify.destinations.am.labels.team: Input should be a valid string, got 3",
        ),
        (
            {"dashboard_url": "127.0.0.1:8080"},
            "sinks.notify.destinations.am.dashboard_url: expected an http:// or https:// URL, "
            "got '127.0.0.1:8080'",
        ),
        (
            {"resend_every": "500ms"},
            "sinks.notify.destinations.am.resend_every: must be at least 1s, got 0.5s",
        ),
        (
            {"resend_every": "often"},
            "sinks.notify.destinations.am.resend_every: 'often' is not a duration (expected a "
            "number and a unit: 500ms, 10s, 5m, 2h, 7d, 1w)",
        ),
        (
            {"type": "slack", "labels": {"team": "ml"}},
            'sinks.notify.destinations.am.labels: only for type = "alertmanager"',
        ),
        (
            {"type": "webhook", "resend_every": "1m"},
            'sinks.notify.destinations.am.resend_every: only for type = "alertmanager"',
        ),
        (
            {"lables": {"team": "ml"}},
            "sinks.notify.destinations.am: unknown key 'lables' (did you mean 'labels'?)",
        ),
    ],
)
def test_each_config_mistake_is_one_line_naming_the_key(keys: dict[str, Any], message: str) -> None:
    table = {"type": "alertmanager", "url": "http://127.0.0.1:9093", **keys}
    with pytest.raises(SinkConfigError) as info:
        parse_sinks_config({"notify": {"destinations": {"am": table}}}, source="rw.toml")
    assert str(info.value).splitlines()[0] == f"rw.toml: {message}"


def test_a_full_alertmanager_destination_loads() -> None:
    config = parse_sinks_config(
        {
            "notify": {
                "destinations": {
                    "am": {
                        "type": "alertmanager",
                        "url": "http://127.0.0.1:9093/",
                        "labels": {"team": "ml-infra", "env": "prod"},
                        "dashboard_url": "https://rankwatch.example/",
                        "resend_every": "30s",
                    }
                },
                "routes": [{"min_severity": "warning", "to": ["am"]}],
            }
        }
    )
    am = config.notify.destinations["am"]
    assert (am.labels, am.resend_every) == ({"team": "ml-infra", "env": "prod"}, 30.0)
    assert AlertmanagerNotifier("am", am).url == "http://127.0.0.1:9093/api/v2/alerts"


# -- through the notify sink, from the alerts topic ------------------------------------------


@pytest.mark.slow
@pytest.mark.broker
def test_the_notify_sink_delivers_an_alert_and_its_resolution_to_alertmanager(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    tmp_path: Path,
    alertmanager: AlertmanagerServer,
    hook: WebhookServer,
) -> None:
    import threading

    from confluent_kafka import Producer

    from rankwatch.config import load_settings
    from rankwatch.schemas import encode
    from rankwatch.sinks.config import load_sinks_config
    from rankwatch.sinks.notify.sink import NotifySink

    topic = make_topic(1)
    path = tmp_path / "rankwatch.toml"
    path.write_text(f"""
[kafka]
bootstrap = "{kafka_bootstrap}"
[topics.alerts]
name = "{topic}"
[sinks.notify]
group_id = "am-sink"
state_db = "{tmp_path / "notify.db"}"
retry_topic = "{topic}.retry"
[sinks.notify.destinations.am]
type = "alertmanager"
url = "{alertmanager.url}"
group_wait = "200ms"
labels = {{ cluster = "test" }}
[[sinks.notify.routes]]
to = ["am"]
""")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def send(alert: Alert) -> None:
        producer.produce(topic, encode(alert), key=alert.job_id.encode())
        assert producer.flush(30) == 0

    sink = NotifySink(load_sinks_config(path).notify, load_settings(path))
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    try:
        assert sink.wait_ready(30), "the notify sink got no partitions"
        send(oom())
        (active,) = eventually(alertmanager.alerts, 20, "the alert in Alertmanager")
        assert (active["labels"]["job"], active["labels"]["cluster"]) == ("llm-a", "test")
        send(oom("resolved"))
        (resolved,) = eventually(lambda: notified(hook, "resolved"), 20, "its resolution")
        assert resolved["labels"] == active["labels"]
        assert alertmanager.alerts() == []
    finally:
        sink.stop()
        thread.join(20)
