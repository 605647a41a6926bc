"""The batch runtime against a real broker: crash and restart, scale out and in, start-up.

Alerts and dead letters of both runtimes: ``test_worker_broker.py``. Here: every expected
alert exactly once on the alerts topic across a kill -9 (both runtimes: they share the commit
protocol and the read-back of published alerts) and across partitions moving between two
workers, a drained backlog merged into the produced order (both runtimes), and a start while
Kafka is unreachable.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from test_worker_broker import (  # the broker tests' helpers: topics, producer, worker process
    RANKWATCH,
    Setup,
    WorkerProcess,
    events,
    firing,
    make_topics,
    produce,
    read_all,
    replayed,
    setup,
    wait_drained,
    workers,
)

from rankwatch.schemas import Alert, LogEvent, StepEvent, decode

__all__ = ["make_topics", "setup", "workers"]  # fixtures, used by name


def published(s: Setup, minimum: int = 0) -> Counter[tuple[str, str]]:
    alerts = [decode(v) for v in read_all(s, s.alerts, minimum=minimum)]
    return Counter((a.alert_id, a.status) for a in alerts if isinstance(a, Alert))


def all_alerts(s: Setup) -> list[Alert]:
    return [a for a in (decode(v) for v in read_all(s, s.alerts)) if isinstance(a, Alert)]


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("runtime", ["batch", "faust"])
def test_kill9_after_an_alert_restart_publishes_it_once(
    setup: Setup, workers: list[WorkerProcess], runtime: str
) -> None:
    s = setup
    job = f"job-{uuid.uuid4().hex[:6]}"
    # OOM at step 20 before the crash window; rank 2's loss is NaN from step 30, in it.
    first, crash_window, second = events(job, 0, 26), events(job, 26, 40), events(job, 40, 60)
    produce(s, first)
    before = WorkerProcess(s, "before", runtime=runtime)
    workers.append(before)
    wait_drained(s, before)  # the OOM incident is in the persisted state
    before.stop()

    # No snapshot for a minute: the loss alert goes out, its state is never persisted.
    crashy = WorkerProcess(s, "crashy", "--snapshot-interval", "60", runtime=runtime)
    workers.append(crashy)
    produce(s, crash_window)
    deadline = time.monotonic() + 40
    while not any(a.rule == "loss_explosion" for a in all_alerts(s)):
        assert time.monotonic() < deadline and crashy.proc.poll() is None, crashy.text()[-3000:]
        time.sleep(0.3)
    crashy.kill9()

    produce(s, second)
    again = WorkerProcess(s, "after", runtime=runtime)
    workers.append(again)
    wait_drained(s, again)
    log = again.text()
    assert "state restored" in log, log[-3000:]
    # The replay of the crash window re-fired the loss alert and the worker held it back.
    assert "already published" in log, log[-3000:]
    counts = published(s)
    assert counts and max(counts.values()) == 1, counts
    assert firing(all_alerts(s)) == firing(replayed(first + crash_window + second))


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_second_worker_joins_then_first_leaves_every_alert_once(
    setup: Setup, workers: list[WorkerProcess]
) -> None:
    s = setup
    jobs = [f"job{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]  # spread over 3 partitions

    def part(first: int, last: int) -> list[StepEvent | LogEvent]:
        return [e for job in jobs for e in events(job, first, last, ranks=4)]

    a = WorkerProcess(s, "a")
    workers.append(a)
    produce(s, part(0, 25))
    wait_drained(s, a)
    b = WorkerProcess(s, "b")  # joins: some partitions, and their jobs' state, move to b
    workers.append(b)
    deadline = time.monotonic() + 40
    while "partitions assigned: [" not in b.text() or "partitions assigned: []" in b.text():
        assert time.monotonic() < deadline, b.text()[-3000:]
        time.sleep(0.3)
    produce(s, part(25, 40))
    wait_drained(s, b)
    a.stop()  # leaves: b gets every partition and the state a persisted when they were revoked
    assert a.proc.returncode == 0, a.text()[-3000:]
    produce(s, part(40, 60))
    wait_drained(s, b)

    assert "state restored" in b.text(), b.text()[-3000:]
    counts = published(s)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert firing(all_alerts(s)) == firing(replayed(part(0, 60)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_unreachable_kafka_at_start_retries_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RANKWATCH, "worker", "--bootstrap", f"127.0.0.1:{_free_port()}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 30
        while "attempt 2" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert "cannot reach Kafka at 127.0.0.1:" in text and "retrying in 2 s" in text
    # One line per attempt, not librdkafka's line per refused connection.
    assert len(text.splitlines()) < 8, text


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_missing_topics_are_an_error_naming_the_fix(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = tmp_path / "rankwatch.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_bootstrap}"\n[topics.steps]\nname = "nope-{uuid.uuid4().hex}"\n'
    )
    done = subprocess.run(
        [RANKWATCH, "worker", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "does not exist" in done.stderr and "rankwatch topics create" in done.stderr


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("runtime", ["batch", "faust"])
def test_a_drained_backlog_gives_the_alerts_of_the_live_order(
    setup: Setup, workers: list[WorkerProcess], runtime: str
) -> None:
    """Steps and logs wait on two topics; a worker that starts behind reads the small logs
    topic in its first fetch and the steps over many. Merged by timestamp, the engine still
    meets them in the order they were produced: the straggler is alerted at the step live
    processing (and replay) alerts it at, under the same id, not where the logs ran ahead."""
    from rankwatch.simulate import JobSpec, simulate
    from rankwatch.simulate.scenarios import SCENARIOS

    s = setup
    # 64 ranks x 120 steps of 1 s, the last two minutes: 3.3 MB of steps on one partition,
    # several fetches' worth.
    spec = JobSpec(
        job_id=f"job-{uuid.uuid4().hex[:6]}",
        ranks=64,
        steps=120,
        checkpoint_every=0,
        start_time=time.time() - 130,
    )
    items = list(simulate(spec, [SCENARIOS["straggler"](at_step=40, rank=31)]))
    logs = [e for e in items if isinstance(e, LogEvent)]
    assert logs and items[-1].epoch - logs[0].epoch > 60  # the logs reach far past the fault
    # In event-time order and timestamped as the ranks produced them live.
    produce(s, items, event_timestamps=True)

    worker = WorkerProcess(s, "behind", runtime=runtime)
    workers.append(worker)
    wait_drained(s, worker)
    want = replayed(items)
    expected = firing(want)
    assert [rule for rule, _ in expected.values()] == ["straggler"]
    got = all_alerts(s)
    steps = [(a.rule, a.step) for a in got], [(a.rule, a.step) for a in want]
    assert firing(got) == expected, steps
