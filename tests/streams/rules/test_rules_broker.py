"""Rules against the real broker: the worker and ``replay --topic`` give the same alerts for a
rules file with a no-code and a Python rule; the worker reloads a changed file (and refuses an
invalid one); ``replay --topic`` never moves the live group's offsets; ``--diff``, ``--from``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rules_data

from rankwatch.cli.main import main
from rankwatch.schemas import Alert, LogEvent, StepEvent, decode, encode
from rankwatch.streams.detectors.job_end import JobStoppedConfig
from rankwatch.streams.engine import EngineConfig
from rankwatch.streams.replay import topic_records

pytestmark = [pytest.mark.broker]
RANKWATCH = str(Path(sys.executable).with_name("rankwatch"))
PARTITIONS = 2


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Callable[[int], str]]:
    from confluent_kafka.admin import AdminClient

    from rankwatch.infra.testing import create_unique_topic

    created: list[str] = []

    def make(partitions: int) -> str:
        created.append(create_unique_topic(kafka_bootstrap, partitions))
        return created[-1]

    yield make
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_topics(created, operation_timeout=30).values():
        future.exception(30)


def _config(tmp: Path, bootstrap: str, names: dict[str, str]) -> Path:
    config = tmp / "rankwatch.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{bootstrap}"\n'
        + "".join(
            f'[topics.{role}]\nname = "{name}"\npartitions = {1 if role in ("alerts", "deadletter") else PARTITIONS}\n'
            for role, name in names.items()
        )
    )  # fmt: skip
    return config


def _produce(bootstrap: str, steps: str, logs: str, items: list[StepEvent | LogEvent]) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
    )
    for event in items:
        topic = steps if isinstance(event, StepEvent) else logs
        producer.produce(topic, encode(event), key=event.job_id.encode())
    assert producer.flush(30) == 0


def _alerts(bootstrap: str, topic: str) -> list[Alert]:
    out = [decode(r.value) for r in topic_records({"bootstrap.servers": bootstrap}, [topic])]
    return [a for a in out if isinstance(a, Alert)]


def _committed(bootstrap: str, group: str, tps: list[tuple[str, int]]) -> list[int]:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        for _ in range(40):
            try:
                got = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
                return [c.offset for c in got]
            except KafkaException:  # the group coordinator is still loading
                time.sleep(0.5)
        raise AssertionError("committed() kept failing")
    finally:
        consumer.close()


def _high(bootstrap: str, tps: list[tuple[str, int]]) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "rankwatch-test-peek"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(t, p), 10)[1] for t, p in tps]
    finally:
        consumer.close()


def _wait(
    what: Callable[[], Any], timeout_s: float, proc: subprocess.Popen[bytes], log: Path
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        result = what()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out\n{log.read_text()[-3000:]}")


def _firing(alerts: list[Alert]) -> dict[str, tuple[str, tuple[int, ...], int | None]]:
    return {a.alert_id: (a.rule, tuple(a.ranks), a.step) for a in alerts if a.status == "firing"}


def _replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[list[Alert], str]:
    assert main(["replay", *args]) == 0
    captured = capsys.readouterr()
    alerts = [decode(line) for line in captured.out.encode().splitlines()]
    return [a for a in alerts if isinstance(a, Alert)], captured.err


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_worker_and_replay_run_the_same_rules_and_reload(
    kafka_bootstrap: str,
    topics: Callable[[int], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    b = kafka_bootstrap
    names = {"steps": topics(PARTITIONS), "logs": topics(PARTITIONS), "alerts": topics(1),
             "deadletter": topics(1)}  # fmt: skip
    config = _config(tmp_path, b, names)
    rules = tmp_path / "rules.toml"
    rules.write_text(rules_data.RULES)
    job = f"llama-{uuid.uuid4().hex[:6]}"
    _produce(b, names["steps"], names["logs"], rules_data.job_events(job))

    app_id = f"test-rules-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [RANKWATCH, "worker", "--config", str(config), "--app-id", app_id, "--data-dir",
             str(tmp_path / "data"), "--snapshot-interval", "0.5", "--session-timeout", "6",
             "--rules", str(rules)],
            stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            want = {"disk_full", "low_mfu", "loss_plateau", "retry_storm", "loss_explosion",
                    "crash"}  # fmt: skip
            live = _wait(
                lambda: (a := _alerts(b, names["alerts"])) and want <= {x.rule for x in a} and a,
                60, proc, log,
            )  # fmt: skip
            # Replay over the recorded topics: the same incidents, the same ids.
            tps = [(names[t], p) for t in ("steps", "logs") for p in range(PARTITIONS)]
            high = _high(b, tps)

            def drained() -> list[int] | None:
                c = _committed(b, app_id, tps)
                return c if all(o >= h or h == 0 for o, h in zip(c, high, strict=True)) else None

            ends = _wait(drained, 30, proc, log)
            source = ["--topic", names["steps"], "--topic", names["logs"], "--config", str(config)]
            replayed, err = _replay(capsys, *source, "--rules", str(rules))
            # Where the topics merge the job's ENOSPC records after its last steps, the job
            # ends on them: the live worker decides what replay decides at the end of its
            # input once the job is quiet on its clock (job_stopped after settle_s; the crash
            # records' pending group after peer_lateness_s).
            wait_s = EngineConfig().peer_lateness_s + JobStoppedConfig().settle_s + 10
            live = _wait(
                lambda: (a := _alerts(b, names["alerts"])) and _firing(a) == _firing(replayed) and a,
                wait_s, proc, log,
            )  # fmt: skip
            assert _firing(replayed) == _firing(live), err
            assert _committed(b, app_id, tps) == ends  # the live group's offsets did not move

            # Live change: a new rule appears, low_mfu goes; the log says so.
            new_rules = rules_data.RULES.replace(
                'name = "low_mfu"', 'name = "low_mfu"\nenabled = false'
            )
            new_rules += '\n[[rule]]\nname = "kaboom"\nkind = "log_pattern"\npattern = "kaboom"\n'
            old = tmp_path / "old.toml"
            old.write_text(rules_data.RULES)
            rules.write_text(new_rules)
            _wait(lambda: "rules reloaded" in log.read_text(), 20, proc, log)
            text = log.read_text()
            assert "added kaboom" in text and "changed low_mfu (enabled: True -> False)" in text
            late = [LogEvent(job_id=job, rank=3, timestamp=rules_data.T0 + 70, level="ERROR",
                             message="kaboom in the data loader")]  # fmt: skip
            _produce(b, names["steps"], names["logs"], late)
            _wait(lambda: "kaboom" in {a.rule for a in _alerts(b, names["alerts"])}, 30, proc, log)

            # A broken edit is refused; the worker keeps running with the rules it has.
            rules.write_text(new_rules + "\n[builtin.nope]\n")
            _wait(lambda: "keeping the rules in use" in log.read_text(), 20, proc, log)
            assert "builtin.nope: unknown built-in rule" in log.read_text()
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    # --diff over the same history: what the new rules add and remove.
    rules.write_text(new_rules)
    _, err = _replay(capsys, *source, "--rules", str(rules), "--diff", str(old))
    assert "+ kaboom job=" in err and "- low_mfu job=" in err and "diff: 1 added, 1 removed" in err
    # --from after everything: nothing to read; --to before everything: nothing either.
    replayed, err = _replay(capsys, *source, "--from", str(time.time() + 3600))
    assert replayed == [] and "replay: 0 events" in err
    replayed, err = _replay(capsys, *source, "--to", "2000-01-01T00:00:00Z")
    assert "replay: 0 events" in err


def test_worker_refuses_an_invalid_rules_file(kafka_bootstrap: str, tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nname = "x"\nkind = "log_pattern"\npattern = "(("\n')
    done = subprocess.run(
        [RANKWATCH, "worker", "--bootstrap", kafka_bootstrap, "--rules", str(bad)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{bad}:4: rule[0].pattern: bad regex" in done.stderr
    assert "Traceback" not in done.stderr
