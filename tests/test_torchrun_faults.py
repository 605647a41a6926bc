"""Real faults in real torchrun jobs, caught by the real worker.

Four ranks under ``torchrun --standalone`` on the CPU (gloo), instrumented as the README says
(``tests/faulty_trainer.py``), stream into the session broker; one ``rankwatch worker`` (the
batch runtime, default rules) watches them all. Each job has one real fault: an exception, a
SIGKILL, a rank blocked before its collectives, a rank 50% slower under DDP, or none. The
jobs run side by side (their device time is a sleep, so sharing two cores does not change
what they show).

Under DDP the fast ranks wait for the slow one in the gradient all-reduce, so every rank's
step time grows together: ``watch_step(step, model=ddp_model)`` times each rank's forward with
module hooks, free of that wait, and the slow rank stands out; the same events with the whole
step as compute (the old way) name nobody.

Latency is read from the alerts topic: the Kafka timestamp the worker's producer put on the
alert, against the event time of the fault's own record (both this machine's clock).
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rankwatch.infra.testing import create_unique_topic
from rankwatch.schemas import Alert, LogEvent, StepEvent, decode
from rankwatch.streams import Engine

pytest.importorskip("torch", reason="torch is a test extra (rankwatch[train])")

TRAINER = Path(__file__).with_name("faulty_trainer.py")
RANKS = 4
STUCK_AFTER_S = 3.0  # the producers' stuck bound in these jobs


@dataclass
class Stack:
    bootstrap: str
    topics: dict[str, str]
    config: Path
    worker: subprocess.Popen[bytes]
    worker_log: Path


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Fresh topics, a config file naming them, and one worker over them."""
    tmp = tmp_path_factory.mktemp("torchrun-faults")
    topics = {
        "steps": create_unique_topic(kafka_bootstrap, 2),
        "logs": create_unique_topic(kafka_bootstrap, 2),
        "alerts": create_unique_topic(kafka_bootstrap, 1),
        "deadletter": create_unique_topic(kafka_bootstrap, 1),
    }
    config = tmp / "rankwatch.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_bootstrap}"\n'
        + "".join(f'[topics.{kind}]\nname = "{name}"\n' for kind, name in topics.items())
    )
    log = tmp / "worker.log"
    rules = tmp / "rules.toml"
    rules.write_text(RULES)
    rankwatch = str(Path(sys.executable).with_name("rankwatch"))
    with log.open("wb") as handle:
        worker = subprocess.Popen(
            [rankwatch, "worker", "--config", str(config), "--app-id",
             f"faults-{uuid.uuid4().hex[:8]}", "--data-dir", str(tmp / "data"),
             "--snapshot-interval", "0.5", "--rules", str(rules)],
            stdout=handle, stderr=subprocess.STDOUT, cwd=tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        _wait(lambda: "partitions assigned" in log.read_text(), 60, worker, log)
        yield Stack(kafka_bootstrap, topics, config, worker, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()


def _wait(check: Callable[[], Any], timeout_s: float, proc: Any = None, log: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the worker exited:\n{log.read_text() if log else ''}")
        time.sleep(0.3)
    raise AssertionError(
        f"not within {timeout_s} s" + (f":\n{log.read_text()[-4000:]}" if log else "")
    )


JOBS: dict[str, dict[str, str]] = {
    "raise": {"FAULT": "raise"},
    "raise_logged": {"FAULT": "raise_logged"},
    "sigkill": {"FAULT": "sigkill"},
    "hang": {"FAULT": "hang", "GLOO_TIMEOUT_S": "25"},
    "slow": {"FAULT": "slow", "STEPS": "220", "SLOW_FACTOR": "1.5", "FORWARD_S": "0.06"},
    "healthy": {"FAULT": "none"},
    "desync": {"FAULT": "desync"},
    "slow_data": {"FAULT": "slow_data", "STEPS": "300"},
}
#: The worker's rules: input_bound judges 20 s of training instead of 2 minutes (its other
#: settings as shipped), so the input-bound job can stay short.
RULES = "[builtin.input_bound]\nsustain_s = 20.0\n"


@dataclass
class Job:
    job_id: str
    proc: subprocess.Popen[str]
    output: Path
    ended: float = math.inf  # time.monotonic() when the job ended, set by a watcher thread

    def finish(self, timeout_s: float = 240) -> int:
        code = self.proc.wait(timeout_s)
        deadline = time.monotonic() + 5
        while self.ended == math.inf and time.monotonic() < deadline:
            time.sleep(0.05)  # the watcher's wait returns at the same moment
        return code

    def settle(self, seconds: float) -> None:
        """Wait until ``seconds`` after the job ended (the tests run one after another while
        the jobs ran side by side: most ended long ago, and wait for nothing)."""
        time.sleep(max(0.0, min(self.ended, time.monotonic()) + seconds - time.monotonic()))

    def watch(self) -> None:
        def wait() -> None:
            self.proc.wait()
            self.ended = time.monotonic()

        threading.Thread(target=wait, daemon=True).start()


@pytest.fixture(scope="module")
def jobs(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Job]]:
    """Every job of this module, started side by side (they share the worker and the broker;
    their device time is sleeps, so sharing two cores does not change what they show)."""
    tmp = tmp_path_factory.mktemp("jobs")
    started: dict[str, Job] = {}
    try:
        for name, env in JOBS.items():
            job_id = f"{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
            out = tmp / f"{name}.log"
            with out.open("w") as handle:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={RANKS}", str(TRAINER)],
                    env={**os.environ, "RANKWATCH_JOB_ID": job_id,
                         "RANKWATCH_CONFIG": str(stack.config),
                         "RANKWATCH_STUCK_AFTER_S": str(STUCK_AFTER_S),
                         "OMP_NUM_THREADS": "1", **env},
                    stdout=handle, stderr=subprocess.STDOUT, text=True,
                )  # fmt: skip
            started[name] = Job(job_id, proc, out)
            started[name].watch()
        yield started
    finally:
        for job in started.values():
            if job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait(10)


def _read(stack: Stack, kind: str, job: str) -> list[tuple[Any, float]]:
    """``(event, Kafka timestamp in s)`` of one job on one topic, from the beginning."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "unused",
                         "enable.auto.commit": False})  # fmt: skip
    topic = stack.topics[kind]
    out: list[tuple[Any, float]] = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = []
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                tps.append((TopicPartition(topic, p, low), high))
        consumer.assign([tp for tp, _ in tps])
        left = {tp.partition: high for tp, high in tps}
        deadline = time.monotonic() + 20
        while left and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            if msg.offset() + 1 >= left.get(msg.partition(), 0):
                left.pop(msg.partition(), None)
            if msg.key() != job.encode():
                continue
            out.append((decode(msg.value()), msg.timestamp()[1] / 1000))
    finally:
        consumer.close()
    return out


def _alerts(stack: Stack, job: str) -> list[tuple[Alert, float]]:
    return [(a, ts) for a, ts in _read(stack, "alerts", job) if isinstance(a, Alert)]


def _settled(stack: Stack, job: str, rule: str, timeout_s: float) -> list[tuple[Alert, float]]:
    """The job's alerts once one of ``rule`` arrived, plus a few seconds after it (on the
    alerts topic's clock) for any that follow."""
    first = _wait(lambda: min((ts for a, ts in _alerts(stack, job) if a.rule == rule), default=0),
                  timeout_s, stack.worker, stack.worker_log)  # fmt: skip
    time.sleep(max(0.0, first + 6 - time.time()))
    return _alerts(stack, job)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["raise", "raise_logged"])
def test_a_rank_that_raises_is_a_crash_alert_then_one_root_cause_job_alert(
    stack: Stack, jobs: dict[str, Job], fault: str
) -> None:
    job = jobs[fault].job_id
    assert jobs[fault].finish() != 0
    alerts = _settled(stack, job, "job_stopped", 60)
    crash = [(a, ts) for a, ts in alerts if a.rule == "crash"]
    assert len(crash) == 1, [a.summary for a, _ in alerts]
    alert, published = crash[0]
    assert alert.ranks == [3] and alert.evidence["failure_class"] == "shape_mismatch"
    assert alert.evidence["exception"] == "RuntimeError"
    assert "mat1 and mat2 shapes cannot be multiplied" in alert.summary
    assert "faulty_trainer.py" in alert.evidence["frame"]
    latency = published - alert.first_seen.timestamp()
    print(f"\n{fault}: crash alert {latency:.2f} s after the record")  # shown with -s
    assert latency <= 2.0, f"crash alert {latency:.2f} s after the record"
    stopped = [a for a, _ in alerts if a.rule == "job_stopped"]
    assert len(stopped) == 1, [a.summary for a in stopped]
    assert stopped[0].evidence["root_cause"]["rank"] == 3
    assert "rank 3 (" in stopped[0].summary and "failed first" in stopped[0].summary
    assert {a.rule for a, _ in alerts} == {"crash", "job_stopped"}, [a.summary for a, _ in alerts]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_rank_killed_by_sigkill_is_named_within_30_s(stack: Stack, jobs: dict[str, Job]) -> None:
    job = jobs["sigkill"].job_id
    assert jobs["sigkill"].finish() != 0
    alerts = _settled(stack, job, "job_stopped", 60)
    steps = [e for e, _ in _read(stack, "steps", job) if isinstance(e, StepEvent) and e.rank == 3]
    killed_at = max(e.epoch for e in steps)  # its last step: the kill came right after
    named = [(a, ts) for a, ts in alerts if 3 in a.ranks or
             (a.evidence.get("root_cause") or {}).get("rank") == 3]  # fmt: skip
    assert named, [a.summary for a, _ in alerts]
    published = min(ts for _, ts in named)
    print(f"\nsigkill: rank 3 named {published - killed_at:.2f} s after its last step")
    assert published - killed_at <= 30.0, published - killed_at
    stopped = [a for a, _ in alerts if a.rule == "job_stopped"]
    assert len(stopped) == 1 and stopped[0].evidence["root_cause"]["rank"] == 3
    assert "went silent first without a word" in stopped[0].summary


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_blocked_before_its_collective_is_a_hang_naming_it_with_its_stack(
    stack: Stack, jobs: dict[str, Job]
) -> None:
    job = jobs["hang"].job_id
    assert jobs["hang"].finish() != 0
    alerts = _settled(stack, job, "job_stopped", 90)
    logs = [e for e, _ in _read(stack, "logs", job) if isinstance(e, LogEvent)]
    blocked_at = next(e.epoch for e in logs if "fault injection" in e.message)
    hangs = [(a, ts) for a, ts in alerts if a.rule == "hang" and a.status == "firing"]
    assert len(hangs) == 1, [a.summary for a, _ in alerts]
    hang, published = hangs[0]
    assert hang.ranks == [3], hang.summary
    assert "faulty_trainer.py" in hang.evidence["stack"] and "time.sleep" in hang.evidence["stack"]
    print(f"\nhang: rank 3 named {published - blocked_at:.2f} s after it blocked")
    assert published - blocked_at <= 3 * STUCK_AFTER_S, published - blocked_at
    stopped = [a for a, _ in alerts if a.rule == "job_stopped" and a.status == "firing"]
    assert len(stopped) == 1
    assert stopped[0].evidence["root_cause"]["rank"] == 3


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_rank_50_percent_slower_under_ddp_is_the_straggler(
    stack: Stack, jobs: dict[str, Job]
) -> None:
    job = jobs["slow"].job_id
    assert jobs["slow"].finish() == 0, jobs["slow"].output.read_text()[-3000:]
    jobs["slow"].settle(4)
    alerts = [a for a, _ in _alerts(stack, job) if a.status == "firing"]
    assert [(a.rule, a.ranks) for a in alerts] == [("straggler", [3])], [a.summary for a in alerts]
    assert alerts[0].evidence["component"] == "compute", alerts[0].summary

    # The slowdown is real and the job paid for it: every rank's step took as long as the
    # slow rank's, so the old way (the whole step as the rank's compute, what watch_step
    # without a model reports) names nobody on the same events.
    steps = [e for e, _ in _read(stack, "steps", job) if isinstance(e, StepEvent)]
    late = [e for e in steps if e.step >= 40]
    forward = {
        r: statistics.median(e.compute_time_s for e in late if e.rank == r) for r in range(4)
    }
    whole = [statistics.median(e.step_time_s for e in late if e.rank == r) for r in range(4)]
    assert forward[3] > 1.3 * max(forward[r] for r in range(3)), forward
    assert max(whole) < 1.1 * min(whole), whole
    old_way = [e.model_copy(update={"compute_time_s": e.step_time_s, "data_time_s": None})
               for e in steps]  # fmt: skip
    engine = Engine.with_builtin_detectors()
    replayed = engine.process_many(sorted(old_way, key=lambda e: (e.epoch, e.rank)))
    assert [a.rule for a in replayed + engine.flush()] == []


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_healthy_job_that_ends_cleanly_raises_nothing(stack: Stack, jobs: dict[str, Job]) -> None:
    job = jobs["healthy"].job_id
    assert jobs["healthy"].finish() == 0, jobs["healthy"].output.read_text()[-3000:]
    logs = [e for e, _ in _read(stack, "logs", job) if isinstance(e, LogEvent)]
    assert sorted(e.rank for e in logs if e.lifecycle == "ended") == list(range(RANKS))
    jobs["healthy"].settle(8)  # longer than job_stopped's settle and the worker's clock tick
    assert [a.summary for a, _ in _alerts(stack, job)] == []


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_rank_that_skips_the_gradient_all_reduce_is_the_desync(
    stack: Stack, jobs: dict[str, Job]
) -> None:
    job = jobs["desync"].job_id
    assert jobs["desync"].finish() == 0, jobs["desync"].output.read_text()[-3000:]
    jobs["desync"].settle(4)
    alerts = [a for a, _ in _alerts(stack, job) if a.status == "firing"]
    assert [(a.rule, a.ranks) for a in alerts] == [("gradient_desync", [3])], [
        a.summary for a in alerts
    ]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_job_starved_by_its_data_loader_from_step_0_is_input_bound(
    stack: Stack, jobs: dict[str, Job]
) -> None:
    job = jobs["slow_data"].job_id
    assert jobs["slow_data"].finish() == 0, jobs["slow_data"].output.read_text()[-3000:]
    jobs["slow_data"].settle(4)
    alerts = [a for a, _ in _alerts(stack, job) if a.status == "firing"]
    assert [(a.rule, a.scope) for a in alerts] == [("input_bound", "job")], [
        a.summary for a in alerts
    ]
    assert alerts[0].evidence["data_share"] > 0.5
