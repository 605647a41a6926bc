"""The demo's child processes (``rankwatch worker``, ``rankwatch sink storage``) and the Kafka
bookkeeping around them.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the demo, which
then stops its children in order: SIGTERM to the child's process group, SIGKILL to whatever is
left after a grace period (a Faust worker takes seconds to leave its group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from rankwatch.schemas.rankwatch_error import RankwatchError


class DemoError(RankwatchError):
    """The demo cannot go on: a child died, a broker is missing, a wait timed out."""


class Child:
    """``python -m rankwatch.cli ARGS`` with stdout and stderr to ``log``."""

    def __init__(self, name: str, args: Sequence[str], log: Path) -> None:
        self.name = name
        self.args = [sys.executable, "-m", "rankwatch.cli", *args]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = self.log.open("wb")
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(self, marker: str, timeout_s: float) -> None:
        """Wait until ``marker`` appears in the child's log; DemoError if it dies or times out."""
        deadline = time.monotonic() + timeout_s
        while marker not in self.text():
            if not self.alive():
                raise DemoError(f"{self.name} exited; the end of {self.log}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise DemoError(
                    f"{self.name} not ready after {timeout_s:.0f} s; the end of {self.log}:\n"
                    f"{self.tail()}"
                )
            time.sleep(0.2)

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


def stop_children(children: Iterable[Child], grace_s: float = 20.0) -> None:
    """SIGTERM every child at once, SIGKILL those alive after ``grace_s``; reap them all."""
    children = [c for c in children if c.process is not None]
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        assert child.process is not None
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.signal(signal.SIGKILL)
            child.process.wait(10)
        child.close_log()


def start_at_end(settings: Any, group_id: str, topics: Sequence[str]) -> None:
    """Commit ``group_id``'s offsets at the current end of ``topics``.

    A new consumer group starts from the earliest offset; committed at the end instead, the
    demo's worker and sink read this run's events only, not every earlier run's.
    """
    from confluent_kafka import Consumer, KafkaException

    consumer = Consumer(
        {
            **settings.confluent_config(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        offsets = end_offsets(consumer, topics)
        deadline = time.monotonic() + 60
        while True:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
                return
            except KafkaException as exc:
                # A broker started a moment ago is still loading its group coordinator.
                if time.monotonic() > deadline:
                    raise DemoError(f"cannot commit offsets for group {group_id}: {exc}") from None
                time.sleep(0.5)
    finally:
        consumer.close()


def end_offsets(consumer: Any, topics: Sequence[str], timeout_s: float = 30.0) -> list[Any]:
    """Every partition of ``topics`` at its current end (high watermark).

    Topics created a moment ago may have no leader yet: asked again until ``timeout_s``.
    """
    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            metadata = consumer.list_topics(timeout=10)
            return [
                TopicPartition(topic, p, consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10)[1])
                for topic in topics
                for p in metadata.topics[topic].partitions
            ]  # fmt: skip
        except (KafkaException, KeyError) as exc:
            if time.monotonic() > deadline:
                names = ", ".join(topics)
                raise DemoError(f"cannot read the end offsets of {names}: {exc}") from None
            time.sleep(0.5)


def forget_run(settings: Any, app_id: str, groups: Sequence[str]) -> None:
    """Best effort: delete the run's worker topics (changelog, assignor) and consumer groups."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**settings.confluent_config(), "log_level": 3})
    with contextlib.suppress(Exception):
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{app_id}-")]
        if names:
            for future in admin.delete_topics(names, operation_timeout=10).values():
                future.exception(15)
    with contextlib.suppress(Exception):
        for future in admin.delete_consumer_groups(list(groups), request_timeout=10).values():
            future.exception(15)
