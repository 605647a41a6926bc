"""The secure local broker (TLS + SASL/SCRAM) and every rankwatch client connecting to it.

One secure broker for the module. Clients without credentials, with a wrong password or
without trusting the cluster's CA are refused; the embedded producer, the worker, the storage
sink, ``topics create`` and ``replay --topic`` work over SASL_SSL with credentials from a config
file or from ``RANKWATCH_*`` variables, and the password shows up in none of their output.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rankwatch.infra import LocalCluster
from rankwatch.infra.testing import secure_cluster

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(180)]

RANKWATCH = str(Path(sys.executable).with_name("rankwatch"))
HF_TOKEN = "hf_QwErTyUiOpAsDfGhJkLzXcVbNm1234567890"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    started = time.monotonic()
    with secure_cluster(tmp_path_factory.mktemp("secure-kafka")) as cluster:
        print(f"secure broker ready in {time.monotonic() - started:.1f} s")
        yield cluster


def security(cluster: LocalCluster) -> Any:
    assert cluster.security is not None
    return cluster.security


def credentials_env(cluster: LocalCluster) -> dict[str, str]:
    """The ``RANKWATCH_*`` variables a client of the secure cluster needs."""
    sec = security(cluster)
    return {
        "RANKWATCH_BOOTSTRAP": cluster.bootstrap,
        "RANKWATCH_SECURITY_PROTOCOL": "SASL_SSL",
        "RANKWATCH_SASL_MECHANISM": "SCRAM-SHA-512",
        "RANKWATCH_SASL_USERNAME": "rankwatch",
        "RANKWATCH_SASL_PASSWORD": sec.users()["rankwatch"],
        "RANKWATCH_SSL_CAFILE": str(sec.ca_file),
    }


def first_error(config: dict[str, str], timeout_s: float = 10.0) -> tuple[Any, bool]:
    """(the first error librdkafka reports for ``config``, whether metadata came back)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[Any] = []
    client = AdminClient({**config, "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            client.list_topics(timeout=0.5)
            return None, True
        except KafkaException:
            pass
        client.poll(0)
        if errors:
            return errors[0], False
    return None, False


def test_clients_without_valid_credentials_are_refused(cluster: LocalCluster) -> None:
    from confluent_kafka import KafkaError

    good = cluster.client_config()
    assert first_error(good) == (None, True)

    plain = {"bootstrap.servers": cluster.bootstrap}
    error, answered = first_error(plain, timeout_s=3)
    assert not answered, "a plaintext client got metadata from the secure broker"
    controller = f"127.0.0.1:{cluster.specs[0].controller_port}"
    assert first_error({"bootstrap.servers": controller}, timeout_s=2)[1] is False

    tls_only = {k: v for k, v in good.items() if not k.startswith("sasl.")}
    assert first_error({**tls_only, "security.protocol": "SSL"}, timeout_s=3)[1] is False

    error, answered = first_error({**good, "sasl.password": "not-the-password"})
    assert not answered and error is not None
    assert error.code() == KafkaError._AUTHENTICATION, error

    untrusting = {k: v for k, v in good.items() if k != "ssl.ca.location"}  # system CAs only
    error, answered = first_error(untrusting)
    assert not answered and error is not None
    assert error.code() == KafkaError._SSL and "certificate verify failed" in error.str()

    wrong = {**os.environ, **credentials_env(cluster), "RANKWATCH_SASL_PASSWORD": "Wr0ng-pa55"}
    result = subprocess.run(
        [RANKWATCH, "topics", "list", "--timeout", "3"],
        env=wrong,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and result.stderr.startswith("rankwatch: error:")
    assert "Wr0ng-pa55" not in result.stdout + result.stderr


class Proc:
    """A rankwatch command in the background, its output in a file."""

    def __init__(self, tmp: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.log = tmp / f"{name}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [RANKWATCH, *args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def test_producer_worker_sink_and_replay_over_sasl_ssl(
    cluster: LocalCluster,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from rankwatch.config import load_settings
    from rankwatch.producers import (
        RankwatchLogHandler,
        configure,
        flush,
        log_step,
        shutdown,
        stats,
    )
    from rankwatch.schemas import decode
    from rankwatch.sinks.storage import LogQuery, open_store

    sec = security(cluster)
    password = sec.users()["rankwatch"]
    suffix = uuid.uuid4().hex[:8]
    topics = "".join(
        f'[topics.{role}]\nname = "rw.{role}.{suffix}"\npartitions = {n}\n'
        for role, n in [("steps", 2), ("logs", 2), ("alerts", 1), ("deadletter", 1)]
    )
    # Two ways in: the worker and the sink read the credentials from a file, everything else
    # (topics create, the producer, replay) from RANKWATCH_* variables over a topics-only file.
    with_credentials = tmp_path / "secure.toml"
    with_credentials.write_text(
        "[kafka]\n"
        f'bootstrap = "{cluster.bootstrap}"\n'
        'security_protocol = "SASL_SSL"\n'
        'sasl_mechanism = "SCRAM-SHA-512"\n'
        'sasl_username = "rankwatch"\n'
        f'sasl_password = "{password}"\n'
        f'ssl_cafile = "{sec.ca_file}"\n' + topics
    )
    topics_only = tmp_path / "topics.toml"
    topics_only.write_text(topics)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RANKWATCH_")}
    env = {**base_env, **credentials_env(cluster), "RANKWATCH_CONFIG": str(topics_only)}

    created = subprocess.run(
        [RANKWATCH, "topics", "create"], env=env, capture_output=True, text=True, timeout=60
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.count(": created") == 4

    db = tmp_path / "store.db"
    file_env = {**base_env, "RANKWATCH_CONFIG": str(with_credentials)}
    worker_args = ["worker", "--app-id", f"secure-{suffix}", "--data-dir", str(tmp_path / "w")]
    # --loglevel debug: the most a worker ever logs must still not hold the password.
    worker = Proc(tmp_path, "worker", [*worker_args, "--loglevel", "debug"], file_env)
    sink = Proc(
        tmp_path,
        "sink",
        ["sink", "storage", "--db", f"sqlite:///{db}", "--linger", "100ms"],
        file_env,
    )
    job = f"secure-{suffix}"
    log = logging.getLogger("test.secure.trainer")
    handler = RankwatchLogHandler()
    caplog.set_level(logging.DEBUG)
    try:
        settings = load_settings(topics_only, env=env)
        assert settings.kafka.security_protocol == "SASL_SSL"
        # No lifecycle hooks in pytest's process (and no "ended" record: one log row expected).
        configure(job_id=job, rank=0, world_size=1, settings=settings, install_hooks=False)
        log.addHandler(handler)
        try:
            for step in range(40):
                log_step(step, loss=math.nan if step >= 30 else 2.0, gradient_norm=1.0)
            log.error("upload failed for token %s", HF_TOKEN)
            assert flush(30) == 0
            sent = stats()
        finally:
            log.removeHandler(handler)
            shutdown(10)
        assert (sent.sent, sent.dropped, sent.errors) == (41, 0, 0)

        with open_store(f"sqlite:///{db}") as store:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                counts = store.counts()
                if counts["steps"] == 40 and counts["logs"] == 1 and counts["alerts"] >= 1:
                    break
                assert worker.proc.poll() is None, worker.text()[-3000:]
                assert sink.proc.poll() is None, sink.text()[-3000:]
                time.sleep(0.3)
            else:
                raise AssertionError(
                    f"store has {store.counts()}\n{worker.text()[-2000:]}\n{sink.text()[-2000:]}"
                )
            stored = {a.alert_id: a.rule for a in store.alerts(job) if a.status == "firing"}
            (message,) = [row.message for row in store.logs(LogQuery(job))]
        assert "loss_explosion" in stored.values()
        # Redacted in the trainer, before it left: the broker and the store never had it.
        assert HF_TOKEN not in message and "[REDACTED]" in message

        out = tmp_path / "replayed.jsonl"
        replayed = subprocess.run(
            [
                RANKWATCH,
                "replay",
                *("--topic", f"rw.steps.{suffix}", "--topic", f"rw.logs.{suffix}"),
                *("--output", str(out)),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert replayed.returncode == 0, replayed.stderr
        alerts = [decode(line) for line in out.read_bytes().splitlines()]
        assert {a.alert_id for a in alerts if getattr(a, "status", "") == "firing"} == set(stored)
    finally:
        worker.stop()
        sink.stop()

    outputs = {
        "worker": worker.text(),
        "sink": sink.text(),
        "topics create": created.stdout + created.stderr,
        "replay": replayed.stdout + replayed.stderr,
        "producer logs": caplog.text,
        "test process stdout/stderr": "".join(capfd.readouterr()),
    }
    assert "[DEBUG]" in outputs["worker"] and "loss_explosion" in outputs["worker"]
    # aiokafka's request dumps (SASL exchange included) stay hidden even at debug.
    assert "SaslAuthenticateRequest" not in outputs["worker"]
    for secret in sec.users().values():
        for name, text in outputs.items():
            assert secret not in text, f"a password appears in the {name} output"
