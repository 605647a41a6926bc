"""What a producer says of its rank's life by itself: real trainer processes against the broker.

Each test writes a small trainer to ``tmp_path``, runs it in its own Python process (configured
through ``$RANKWATCH_CONFIG`` like a real rank) and reads the topics afterwards: an uncaught
exception in the main thread and in another thread, SIGTERM and SIGINT while stepping, a step
that blocks, an evaluation pass that must not count as stuck, a clean exit. The pure parts
(the stuck judgement, the messages, settings) are tested at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rankwatch.config import ConfigError, Settings, load_settings
from rankwatch.config.loader import with_producer
from rankwatch.producers import _lifecycle
from rankwatch.producers._lifecycle import StepWatch, Stuck, exception_message
from rankwatch.producers.testing import capture_events
from rankwatch.schemas import Event, LogEvent, StepEvent, decode

# The trainer: steps, then what ``argv[1]`` names. It prints "stepping" once steps are on their
# way, so a test knows when to send a signal.
TRAINER = textwrap.dedent(
    """
    import signal, sys, threading, time
    import rankwatch.producers as rw

    mode = sys.argv[1]
    if mode == "sigterm-handler":
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(3))
    if mode == "sigint":  # as in a terminal (a background job may have inherited SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    rw.configure(job_id="life", rank=2, world_size=4)

    def load_shard(index):
        try:
            return {}[f"shard-{index}"]
        except KeyError as error:
            raise RuntimeError(f"shard {index} is unreadable") from error

    def wait_for_peers():
        threading.Event().wait(4.5)

    def evaluate():
        time.sleep(3.0)

    for step in range(5):
        rw.log_step(step, loss=2.0 - step * 0.1)
        time.sleep(0.05)
    if mode == "main-exception":
        load_shard(3)
    elif mode == "thread-exception":
        worker = threading.Thread(target=load_shard, args=(7,), name="data-loader")
        worker.start()
        worker.join()
        rw.log_step(5, loss=1.4)
        rw.shutdown()
    elif mode in ("sigterm", "sigint", "sigterm-handler"):
        print("stepping", flush=True)
        for step in range(5, 100_000):
            rw.log_step(step, loss=1.0)
            time.sleep(0.02)
    elif mode == "stuck":
        wait_for_peers()
        rw.log_step(5, loss=1.4)
    elif mode == "eval":
        with rw.phase("eval"):
            evaluate()
        rw.log_step(5, loss=1.4)
    """
)


def _read_all(bootstrap: str, topic: str) -> list[Event]:
    """Every message on ``topic`` up to its end now (the trainer has exited: all are there)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "lifecycle-reader",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        events: list[Event] = []
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 30
        while len(done) < len(ends) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            events.append(decode(message.value()))
            if message.offset() + 1 >= ends[message.partition()]:
                done.add(message.partition())
        return events
    finally:
        consumer.close()


class Trainer:
    """One run of :data:`TRAINER` against the session broker, on fresh topics."""

    def __init__(self, tmp_path: Path, settings: Settings, **env: str) -> None:
        self.settings = settings
        config = tmp_path / "rankwatch.toml"
        config.write_text(
            f'[kafka]\nbootstrap = "{settings.bootstrap}"\n'
            f'[topics.steps]\nname = "{settings.topics.steps.name}"\n'
            f'[topics.logs]\nname = "{settings.topics.logs.name}"\n'
        )
        self.script = tmp_path / "trainer.py"
        self.script.write_text(TRAINER)
        self.env = {**os.environ, "RANKWATCH_CONFIG": str(config), **env}
        self.stderr = ""

    def start(self, mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(self.script), mode],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, mode: str) -> int:
        proc = self.start(mode)
        _, self.stderr = proc.communicate(timeout=60)
        return proc.returncode

    def signal_while_stepping(self, mode: str, signum: int) -> int:
        proc = self.start(mode)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "stepping\n"
        time.sleep(0.3)  # some more steps go out meanwhile
        proc.send_signal(signum)
        _, self.stderr = proc.communicate(timeout=60)
        return proc.returncode

    def steps(self) -> list[int]:
        events = _read_all(self.settings.bootstrap, self.settings.topics.steps.name)
        return sorted(e.step for e in events if isinstance(e, StepEvent))

    def lifecycle(self) -> list[LogEvent]:
        events = _read_all(self.settings.bootstrap, self.settings.topics.logs.name)
        return [e for e in events if isinstance(e, LogEvent) and e.lifecycle is not None]


@pytest.mark.broker
def test_uncaught_exception_in_the_main_thread(tmp_path: Path, topic_settings: Settings) -> None:
    trainer = Trainer(tmp_path, topic_settings)
    assert trainer.run("main-exception") == 1, trainer.stderr
    (record,) = trainer.lifecycle()  # the exception, and no "ended": the end was not clean
    assert (record.lifecycle, record.level, record.logger) == (
        "exception",
        "ERROR",
        "rankwatch.lifecycle",
    )
    assert (record.rank, record.step) == (2, 4)
    # Exactly the traceback Python printed, chained exception included.
    assert record.message.startswith("Traceback (most recent call last):\n  File ")
    assert record.message in trainer.stderr
    assert "KeyError: 'shard-3'" in record.message
    assert "The above exception was the direct cause of the following exception:" in record.message
    assert record.message.endswith("RuntimeError: shard 3 is unreadable")
    assert trainer.steps() == [0, 1, 2, 3, 4]


@pytest.mark.broker
def test_uncaught_exception_in_a_thread(tmp_path: Path, topic_settings: Settings) -> None:
    trainer = Trainer(tmp_path, topic_settings)
    assert trainer.run("thread-exception") == 0, trainer.stderr  # the main thread went on
    (record,) = trainer.lifecycle()  # shutdown() sent no "ended" after an uncaught exception
    assert (record.lifecycle, record.level) == ("exception", "ERROR")
    first, second = record.message.splitlines()[:2]
    assert first == "Exception in thread data-loader:"
    assert second == "Traceback (most recent call last):"
    assert record.message in trainer.stderr
    assert record.message.endswith("RuntimeError: shard 7 is unreadable")
    assert trainer.steps() == [0, 1, 2, 3, 4, 5]


@pytest.mark.broker
def test_sigterm_while_stepping_is_reported_and_still_kills(
    tmp_path: Path, topic_settings: Settings
) -> None:
    trainer = Trainer(tmp_path, topic_settings)
    assert trainer.signal_while_stepping("sigterm", signal.SIGTERM) == -signal.SIGTERM
    (record,) = trainer.lifecycle()
    assert (record.lifecycle, record.level) == ("terminated", "WARNING")
    assert record.message == f"rankwatch: rank 2 got SIGTERM at step {record.step}"
    # Every step before the signal reached the topic: the flush ran before the process died.
    assert record.step is not None and record.step >= 5
    assert trainer.steps() == list(range(record.step + 1))


@pytest.mark.broker
def test_sigterm_chains_to_the_trainers_own_handler(
    tmp_path: Path, topic_settings: Settings
) -> None:
    trainer = Trainer(tmp_path, topic_settings)
    assert trainer.signal_while_stepping("sigterm-handler", signal.SIGTERM) == 3  # its sys.exit(3)
    (record,) = trainer.lifecycle()  # and no "ended" from the exit hook
    assert record.lifecycle == "terminated" and "SIGTERM" in record.message


@pytest.mark.broker
def test_sigint_is_a_keyboard_interrupt_as_before(tmp_path: Path, topic_settings: Settings) -> None:
    trainer = Trainer(tmp_path, topic_settings)
    code = trainer.signal_while_stepping("sigint", signal.SIGINT)
    assert code == -signal.SIGINT, trainer.stderr  # Python's exit for an uncaught Ctrl-C
    assert trainer.stderr.rstrip().endswith("KeyboardInterrupt")
    (record,) = trainer.lifecycle()  # terminated; the KeyboardInterrupt is not an "exception"
    assert record.lifecycle == "terminated" and "SIGINT" in record.message


@pytest.mark.broker
def test_a_blocked_step_is_reported_stuck_with_the_main_stack(
    tmp_path: Path, topic_settings: Settings
) -> None:
    trainer = Trainer(tmp_path, topic_settings, RANKWATCH_STUCK_AFTER_S="1")
    assert trainer.run("stuck") == 0, trainer.stderr
    records = trainer.lifecycle()
    stuck = [r for r in records if r.lifecycle == "stuck"]
    # Blocked 4.5 s with a 1 s bound: reported at 1 s, and again at each further multiple.
    assert len(stuck) >= 2, records
    for record in stuck:
        assert (record.level, record.step, record.logger) == ("WARNING", 5, "rankwatch.lifecycle")
        head, stack = record.message.split("\n", 1)
        assert head.startswith("rankwatch: rank 2 stuck in step 5 for ")
        assert head.endswith("main thread stack:")
        assert re.search(r" s \(typical [0-9.e-]+ s\); ", head), head  # known from 5 steps
        assert "in wait_for_peers\n" in stack  # the blocking function, innermost last
        assert stack.index("in <module>") < stack.index("in wait_for_peers")
    elapsed = [float(r.message.split(" for ", 1)[1].split(" s ", 1)[0]) for r in stuck]
    assert elapsed == sorted(elapsed) and elapsed[1] >= 2.0
    assert records[-1].lifecycle == "ended"  # it got going again and ended cleanly
    assert records[-1].message == "rankwatch: rank 2 ended cleanly at step 5"


@pytest.mark.broker
def test_an_evaluation_pass_is_not_a_stuck_step(tmp_path: Path, topic_settings: Settings) -> None:
    trainer = Trainer(tmp_path, topic_settings, RANKWATCH_STUCK_AFTER_S="1")
    assert trainer.run("eval") == 0, trainer.stderr
    assert [r.lifecycle for r in trainer.lifecycle()] == ["ended"]


@pytest.mark.broker
def test_a_clean_exit_says_ended(tmp_path: Path, topic_settings: Settings) -> None:
    trainer = Trainer(tmp_path, topic_settings)
    assert trainer.run("clean") == 0, trainer.stderr  # no shutdown(): the exit hook sends it
    (record,) = trainer.lifecycle()
    assert (record.lifecycle, record.level, record.step) == ("ended", "INFO", 4)
    assert record.message == "rankwatch: rank 2 ended cleanly at step 4"
    assert trainer.steps() == [0, 1, 2, 3, 4]


@pytest.mark.broker
def test_hooks_off_reports_nothing(tmp_path: Path, topic_settings: Settings) -> None:
    trainer = Trainer(tmp_path, topic_settings, RANKWATCH_REPORT_EXCEPTIONS="0")
    assert trainer.run("main-exception") == 1
    assert trainer.lifecycle() == []  # no exception record, and still no "ended"


# ----- in this process: hooks installed once, restored, the pure parts ----------------------


@pytest.mark.broker
def test_hooks_are_installed_once_and_restored(topic_settings: Settings) -> None:
    import rankwatch.producers as rw

    before = (sys.excepthook, threading.excepthook, signal.getsignal(signal.SIGTERM))
    rw.configure(job_id="hooks", settings=topic_settings, stuck_after_s=30)
    try:
        hooked = (sys.excepthook, threading.excepthook, signal.getsignal(signal.SIGTERM))
        assert all(h is not b for h, b in zip(hooked, before, strict=True))
        rw.configure(job_id="hooks", settings=topic_settings)  # again: the same hooks, not two
        assert (sys.excepthook, threading.excepthook, signal.getsignal(signal.SIGTERM)) == hooked
        assert _lifecycle.installed() == {"exceptions": True, "signals": True, "stuck": True}
    finally:
        rw.shutdown(5)
    assert (sys.excepthook, threading.excepthook, signal.getsignal(signal.SIGTERM)) == before
    assert _lifecycle.installed() == {"exceptions": False, "signals": False, "stuck": False}


@pytest.mark.broker
def test_configure_keywords_are_validated_and_named(topic_settings: Settings) -> None:
    import rankwatch.producers as rw

    with pytest.raises(ConfigError) as info:
        rw.configure(job_id="x", settings=topic_settings, stuck_after_s=0)
    assert str(info.value) == (
        "configure(stuck_after_s=...): producer.stuck_after_s: must be > 0.0, got integer 0"
    )


def test_step_watch_typical_is_an_ewma_and_phases_reset_it() -> None:
    watch = StepWatch(alpha=0.5)
    kwargs = {"stuck_after_s": 1.0, "factor": 10.0}
    assert watch.observe(0, None, 0, now=0.0, **kwargs) is None  # not armed before a step
    watch.observe(1, 10.0, 0, now=10.0, **kwargs)
    watch.observe(2, 11.0, 0, now=11.0, **kwargs)
    assert watch.typical == 1.0
    watch.observe(4, 17.0, 0, now=17.0, **kwargs)  # two intervals of 3 s seen at once
    assert watch.typical == pytest.approx(0.25 * 1.0 + 0.75 * 3.0)
    bound = 10.0 * watch.typical
    # In a phase other than train: never stuck, and the phase's end starts the clock afresh.
    assert watch.observe(4, 17.0, 0, now=17.0 + 5 * bound, paused=True, **kwargs) is None
    assert watch.observe(4, 100.0, 1, now=100.0 + bound / 2, **kwargs) is None
    stuck = watch.observe(4, 100.0, 1, now=100.0 + bound * 1.5, **kwargs)
    assert stuck == Stuck(bound * 1.5, watch.typical, bound)
    assert watch.observe(4, 100.0, 1, now=100.0 + bound * 1.9, **kwargs) is None
    assert watch.observe(4, 100.0, 1, now=100.0 + bound * 2.1, **kwargs) is not None
    # A step arrives: its interval counts (the reset was its start), and a new step is watched.
    assert watch.observe(5, 200.0, 1, now=200.0, **kwargs) is None
    bound = 10.0 * watch.typical
    assert watch.observe(5, 200.0, 1, now=200.0 + bound * 0.9, **kwargs) is None
    assert watch.observe(5, 200.0, 1, now=200.0 + bound * 1.1, **kwargs) is not None


def test_the_stuck_bound_has_a_floor() -> None:
    watch = StepWatch()
    for n in range(1, 50):
        watch.observe(n, n * 0.01, 0, now=n * 0.01, stuck_after_s=60, factor=10)
    assert watch.observe(49, 0.49, 0, now=59.0, stuck_after_s=60, factor=10) is None
    assert watch.observe(49, 0.49, 0, now=61.0, stuck_after_s=60, factor=10) is not None


def test_exception_message_is_pythons_traceback() -> None:
    import traceback

    try:
        try:
            {}["k"]
        except KeyError:
            raise ValueError("bad batch") from None
    except ValueError as error:
        exc = error
    text = exception_message(type(exc), exc, exc.__traceback__)
    assert text + "\n" == "".join(traceback.format_exception(exc))
    assert text.endswith("ValueError: bad batch") and "KeyError" not in text


def test_lifecycle_records_pass_the_contract_and_end_is_said_once() -> None:
    from rankwatch.producers import _global

    with capture_events(job_id="j", rank=1) as events:
        producer = _global.current()
        assert producer is not None
        producer._report_end = True  # what configure() sets
        producer.log_step(7)
        assert producer.report_end() and not producer.report_end()
        producer.exception_seen = True
    (event,) = [e for e in events if isinstance(e, LogEvent)]
    assert (event.lifecycle, event.step) == ("ended", 7)
    assert event.message == "rankwatch: rank 1 ended cleanly at step 7"


def test_producer_settings_from_file_env_and_arguments(tmp_path: Path) -> None:
    path = tmp_path / "rankwatch.toml"
    path.write_text("[producer]\nstuck_after_s = 120\nreport_signals = false\n")
    settings = load_settings(path, env={"RANKWATCH_STUCK_FACTOR": "4"})
    assert (settings.producer.stuck_after_s, settings.producer.stuck_factor) == (120.0, 4.0)
    assert settings.producer.report_signals is False
    assert with_producer(settings, {"stuck_after_s": 5}).producer.stuck_after_s == 5.0
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"RANKWATCH_STUCK_AFTER_S": "soon"})
    assert str(info.value) == (
        "environment variable RANKWATCH_STUCK_AFTER_S: producer.stuck_after_s: "
        "expected a finite number, got string 'soon'"
    )
    path.write_text("[producer]\nstuck_after = 120\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == (
        f"{path}: producer: unknown key 'stuck_after' (did you mean 'stuck_after_s'?)"
    )
