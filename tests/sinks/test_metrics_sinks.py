"""The sinks' Prometheus ``/metrics``: ``rankwatch sink storage|notify --metrics-port`` as real
processes on the real broker, scraped over HTTP and parsed with prometheus-client's parser."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from rankwatch.schemas import Alert, StepEvent, encode
from rankwatch.sinks.config import parse_sinks_config
from rankwatch.sinks.exceptions import SinkConfigError
from rankwatch.sinks.testing import (
    AlertmanagerServer,
    ServerUnavailable,
    _free_port,
)

T0 = time.time() - 60

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"storage": {"metrics_port": 70000}},
            "sinks.storage.metrics_port: Input should be less than or equal to 65535, got 70000",
        ),
        (
            {"notify": {"metrics_port": "9100"}},
            "sinks.notify.metrics_port: Input should be a valid integer, got '9100'",
        ),
        (
            {"notify": {"metrics_prot": 9100}},
            "sinks.notify: unknown key 'metrics_prot' (did you mean 'metrics_port'?)",
        ),
    ],
)
def test_each_metrics_config_mistake_is_one_line(table: dict[str, Any], message: str) -> None:
    with pytest.raises(SinkConfigError) as info:
        parse_sinks_config(table, source="rw.toml")
    assert str(info.value).splitlines()[0] == f"rw.toml: {message}"


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def until(proc: subprocess.Popen[bytes], port: int, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds (the process must stay up), at most 40 s."""
    got: Samples = {}
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            got = scrape(port)
        except OSError:
            got = {}  # not listening yet
        if got and check(got):
            return got
        time.sleep(0.3)
    raise AssertionError(f"metrics never matched: {got}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def sink(kind: str, config: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "rankwatch.cli", "sink", kind, "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
@pytest.mark.broker
def test_storage_sink_metrics(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    steps, logs, alerts = make_topic(2), make_topic(1), make_topic(1)
    config = tmp_path / "rankwatch.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_bootstrap}"\n[topics.steps]\nname = "{steps}"\n'
        f'[topics.logs]\nname = "{logs}"\n[topics.alerts]\nname = "{alerts}"\n'
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for step in range(30):
        event = StepEvent(job_id="llm-m", rank=0, step=step, timestamp=T0 + step, loss=2.0)
        producer.produce(steps, encode(event), key=b"llm-m")
    producer.produce(steps, b"not an event", key=b"llm-m")
    assert producer.flush(30) == 0
    port = _free_port()
    processes.append(
        proc := sink(
            "storage",
            config,
            "--db",
            f"sqlite:///{tmp_path / 'rw.db'}",
            "--linger",
            "100ms",
            "--metrics-port",
            str(port),
        )
    )
    got = until(
        proc,
        port,
        lambda s: (
            s.get(("rankwatch_sink_storage_consumed_total", ())) == 31
            and any(k[0] == "rankwatch_sink_storage_consumer_lag" for k in s)
        ),
    )
    assert got[("rankwatch_sink_storage_undecodable_total", ())] == 1
    assert got[("rankwatch_sink_storage_rows_written_total", (("kind", "steps"),))] == 30
    assert got[("rankwatch_sink_storage_write_seconds_count", ())] >= 1
    lag = {dict(k[1])["topic"] for k in got if k[0] == "rankwatch_sink_storage_consumer_lag"}
    assert steps in lag


@pytest.mark.slow
@pytest.mark.broker
def test_notify_sink_metrics_count_deliveries_and_open_alertmanager_alerts(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    alertmanager = AlertmanagerServer()
    try:
        alertmanager.start()
    except ServerUnavailable as exc:
        pytest.skip(f"Alertmanager cannot be installed or started here: {exc}")
    try:
        topic = make_topic(1)
        port = _free_port()
        config = tmp_path / "rankwatch.toml"
        config.write_text(f"""
[kafka]
bootstrap = "{kafka_bootstrap}"
[topics.alerts]
name = "{topic}"
[sinks.notify]
group_id = "metrics-notify"
state_db = "{tmp_path / "notify.db"}"
retry_topic = "{topic}.retry"
metrics_port = {port}
[sinks.notify.destinations.am]
type = "alertmanager"
url = "{alertmanager.url}"
group_wait = "100ms"
[[sinks.notify.routes]]
to = ["am"]
""")
        alert = Alert(
            alert_id="m-1",
            job_id="llm-m",
            rule="loss_nan",
            severity="critical",
            scope="rank",
            ranks=[2],
            step=5,
            first_seen=T0,
            last_seen=T0 + 1,
            summary="rank 2: loss is NaN",
        )
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topic, encode(alert), key=b"llm-m")
        assert producer.flush(30) == 0
        processes.append(proc := sink("notify", config))
        got = until(
            proc,
            port,
            lambda s: (
                s.get(("rankwatch_sink_notify_delivered_total", (("destination", "am"),))) == 1
            ),
        )
        assert got[("rankwatch_sink_notify_open_alerts", (("destination", "am"),))] == 1
        assert got[("rankwatch_sink_notify_parked_total", (("destination", "am"),))] == 0
        assert [a["labels"]["alert_id"] for a in alertmanager.alerts()] == ["m-1"]
    finally:
        alertmanager.stop()
