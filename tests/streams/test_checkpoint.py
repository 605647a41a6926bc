"""The commit protocol without a broker: the runtime's core on fake clients that write down
the order of their calls. One test per promise of :mod:`rankwatch.streams.runtime.checkpoint`;
the same order against a real broker: ``test_batch_runtime.py``.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from rankwatch.schemas import Alert, LogEvent, StepEvent, decode, encode
from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.runtime.checkpoint import Outbox
from rankwatch.streams.runtime.common import TopicLayout, WorkerOptions
from rankwatch.streams.runtime.core import StreamCore
from rankwatch.streams.snapshots import DictKeyValue, SnapshotStore, StateTooLarge

OOM = "torch.OutOfMemoryError: CUDA out of memory."
LAYOUT = TopicLayout("steps", "logs", "alerts", "dead", partitions=2, replication=1)


@dataclass
class Calls:
    """Every call the core made on its clients, in order."""

    log: list[tuple[Any, ...]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [c[0] if c[0] != "produce" else f"produce:{c[1]}" for c in self.log]


class FakeProducer:
    """Keeps what is produced; ``flush`` returns what ``unflushed`` says is left."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.values: list[bytes] = []
        self.unflushed = 0

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int = -1
    ) -> None:
        self.calls.log.append(("produce", topic, partition, key))
        self.values.append(value)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.calls.log.append(("flush",))
        return self.unflushed


class FakeOffsets:
    """The consumer's positions, as set by the test; commits are written down."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.at: dict[tuple[str, int], int] = {}
        self.refuse = False

    def positions(self) -> dict[tuple[str, int], int]:
        return dict(self.at)

    def commit(self, offsets: dict[tuple[str, int], int]) -> bool:
        self.calls.log.append(("commit", sorted(offsets.items())))
        return not self.refuse


class FakeTable(DictKeyValue):
    """The changelog store: writes go through the outbox, as ChangelogKV's do."""

    def __init__(self, outbox: Outbox, snapshotted: dict[int, int]) -> None:
        super().__init__()
        self.outbox = outbox
        self.snapshotted = snapshotted

    def put(self, key: bytes, value: bytes, partition: int | None) -> None:
        super().put(key, value, partition)
        self.outbox.produce(
            "changelog", value, key, partition=-1 if partition is None else partition
        )

    def restore(self, partitions: set[int]) -> dict[int, int]:
        return {p: t for p, t in self.snapshotted.items() if p in partitions}

    def drop(self, partitions: set[int]) -> None:
        for key in [k for k, p in self.partitions.items() if p in partitions]:
            del self.data[key], self.partitions[key]


class FakeReads:
    def __init__(self, on_topic: set[tuple[str, str]]) -> None:
        self.on_topic = on_topic
        self.asked: list[int | None] = []

    def published_alerts(self, since_ms: int | None) -> set[tuple[str, str]]:
        self.asked.append(since_ms)
        return set(self.on_topic)

    def uncommitted(self, partitions: set[int]) -> bool:
        return True

    def starts(self, partitions: set[int]) -> dict[tuple[str, int], tuple[int, int]]:
        return {}


class Error:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code


@dataclass
class Message:
    """What the core reads of a consumed message (confluent-kafka's ``Message`` methods)."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _ms: int = 0
    _error: Error | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return b"j"

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ms)

    def error(self) -> Error | None:
        return self._error


EOF = -191


def end(topic: str, partition: int) -> Message:
    return Message(topic, partition, -1, None, _error=Error(EOF))


@dataclass
class Rig:
    core: StreamCore
    calls: Calls
    producer: FakeProducer
    offsets: FakeOffsets
    stopping: list[bool]


def rig(
    *,
    on_topic: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
    snapshotted: dict[int, int] | None = None,
    options: WorkerOptions | None = None,
) -> Rig:
    calls = Calls()
    producer = FakeProducer(calls)
    offsets = FakeOffsets(calls)
    stopping = [False]
    outbox = Outbox(producer, lambda: stopping[0])
    core = StreamCore(
        options or WorkerOptions(),
        LAYOUT,
        outbox=outbox,
        table=FakeTable(outbox, snapshotted or {}),
        offsets=offsets,
        reads=FakeReads(set(on_topic)),
    )
    core.owned = {0, 1}
    return Rig(core, calls, producer, offsets, stopping)


def oom(at_s: float = 100.0) -> bytes:
    return encode(LogEvent(job_id="j", rank=5, timestamp=at_s, level="ERROR", message=OOM))


def step(n: int, at_s: float) -> bytes:
    return encode(StepEvent(job_id="j", rank=0, step=n, timestamp=at_s, loss=2.0))


def feed(r: Rig, *messages: Message) -> int:
    return r.core.process(list(messages), 0.0, lambda t, p: True, eof=EOF)


def test_alerts_flushed_then_state_written_and_flushed_then_offsets_committed() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 2, ("steps", 1): 0}
    feed(r, Message("logs", 1, 0, oom()), Message("logs", 1, 1, b"junk"))
    assert r.core.checkpoint.commit()
    assert r.calls.kinds() == [
        "produce:alerts", "produce:dead", "flush",
        "produce:changelog", "produce:changelog", "flush", "commit",
    ]  # fmt: skip
    # The job's rank chunk, then its head, to the partition its events came from.
    assert [c[2:] for c in r.calls.log[3:5]] == [(1, b"j#0"), (1, b"j")]
    assert r.calls.log[-1] == ("commit", [(("logs", 1), 2), (("steps", 1), 0)])
    assert r.core.unacked == 0 and r.core.counters.snapshots == 1
    assert r.core.checkpoint.commit()  # nothing new: nothing flushed, written or committed
    assert len(r.calls.log) == 7


def test_nothing_is_written_or_committed_while_the_alerts_are_not_flushed() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    r.producer.unflushed, r.stopping[0] = 1, True  # Kafka away, and the worker stopping
    assert not r.core.checkpoint.commit()
    assert r.calls.kinds() == ["produce:alerts", "flush"]
    assert r.core.unacked == 1 and "j" in r.core.pipeline.dirty  # kept for the next one
    r.producer.unflushed, r.stopping[0] = 0, False
    assert r.core.checkpoint.commit()
    assert r.calls.kinds()[2:] == [
        "flush", "produce:changelog", "produce:changelog", "flush", "commit",
    ]  # fmt: skip


def test_nothing_is_committed_while_the_state_is_not_flushed() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    flushes = iter([0, 1, 1])  # the alerts go, the state does not

    def flush(timeout: float) -> int:
        r.calls.log.append(("flush",))
        return next(flushes)

    r.producer.flush = flush  # type: ignore[method-assign]
    r.stopping[0] = True
    assert not r.core.checkpoint.commit()
    assert "commit" not in r.calls.kinds() and "produce:changelog" in r.calls.kinds()
    assert "j" in r.core.pipeline.dirty and r.core.unacked == 1


def test_a_failed_delivery_stops_the_worker_before_any_commit() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    r.core.outbox.delivered("Broker: Message size too large", Message("alerts", 0, -1, None))
    with pytest.raises(StreamsError, match="could not deliver: alerts"):
        r.core.checkpoint.commit()
    assert r.calls.kinds() == ["produce:alerts", "flush"]


def test_state_too_large_commits_nothing() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))

    def plan(job: Any, chunks: Any, partition: int | None) -> Any:
        raise StateTooLarge(job.job_id, b"j#0", 2_000_000, 1_000_000)

    r.core.store.plan = plan  # type: ignore[method-assign]
    with pytest.raises(StateTooLarge):
        r.core.checkpoint.commit()
    assert "commit" not in r.calls.kinds()
    assert r.core.unacked == 1


def test_offsets_are_never_committed_past_a_held_message() -> None:
    r = rig()
    # logs[1] read up to offset 4 (the next to read is 5); its record at offset 3 is more
    # than 20 s ahead of the only step seen, and the steps partition is behind: it waits.
    held = r.core.process(
        [Message("steps", 1, 0, step(0, 50.0), 50_000), Message("logs", 1, 3, oom(), 100_000)],
        0.0,
        lambda t, p: False,
        eof=EOF,
    )
    assert held == 1
    r.offsets.at = {("logs", 1): 5, ("steps", 1): 1, ("logs", 0): 7}
    assert r.core.checkpoint.commit()
    assert r.calls.log[-1] == ("commit", [(("logs", 0), 7), (("logs", 1), 3), (("steps", 1), 1)])
    assert "produce:alerts" not in r.calls.kinds()


def test_a_held_message_of_a_partition_no_longer_assigned_is_not_committed() -> None:
    r = rig()
    only_0 = lambda t, p: p == 0  # noqa: E731  (partition 0 read to its end, 1 behind)
    r.core.process([Message("logs", 1, 3, oom(), 100_000)], 0.0, only_0, eof=EOF)
    r.core.process([Message("steps", 0, 0, step(0, 1.0), 1_000)], 0.0, only_0, eof=EOF)
    assert r.core.aligner.held() == 1
    r.offsets.at = {("steps", 0): 1}  # logs[1] has gone (no position)
    assert r.core.checkpoint.commit()
    assert r.calls.log[-1] == ("commit", [(("steps", 0), 1)])


def test_a_refused_commit_is_retried_at_the_next_checkpoint() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    r.offsets.refuse = True
    assert not r.core.checkpoint.commit()
    assert r.core.unacked == 1
    r.offsets.refuse = False
    assert r.core.checkpoint.commit() and r.core.unacked == 0
    assert r.calls.kinds().count("commit") == 2


def test_revocation_persists_and_commits_before_forgetting_what_is_held() -> None:
    r = rig()
    only_0 = lambda t, p: p == 0  # noqa: E731  (partition 0 read to its end, 1 behind)
    r.core.process([Message("logs", 1, 3, oom(), 100_000)], 0.0, only_0, eof=EOF)
    r.core.process([Message("steps", 0, 0, step(0, 1.0), 1_000)], 0.0, only_0, eof=EOF)
    assert r.core.aligner.held() == 1
    r.offsets.at = {("steps", 0): 1, ("logs", 1): 4}
    r.core.revoke({0, 1})
    assert r.calls.log[-1] == ("commit", [(("logs", 1), 3), (("steps", 0), 1)])
    assert r.core.aligner.held() == 0
    before = len(r.calls.log)
    r.core.revoke({0, 1}, persist=False)  # after an error: nothing more is committed
    assert len(r.calls.log) == before


def test_lost_partitions_are_dropped_without_a_commit() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    r.core.lose({1})
    assert r.core.engine.jobs == {} and r.core.owned == {0}
    assert r.core.pipeline.dirty == {} and "commit" not in r.calls.kinds()


def test_alerts_on_the_topic_since_the_last_snapshot_are_not_published_again() -> None:
    first = rig()
    feed(first, Message("logs", 1, 0, oom()))
    alert = decode(first.producer.values[0])
    assert isinstance(alert, Alert)

    # A restart replaying the same record; its partitions' last snapshots at 500 and 600 s.
    again = rig(on_topic={(alert.alert_id, alert.status)}, snapshotted={0: 500_000, 1: 600_000})
    again.core.owned = set()
    again.core.assign({0, 1})
    assert again.core.reads.asked == [500_000 - 60_000]  # type: ignore[attr-defined]
    feed(again, Message("logs", 1, 0, oom()))
    assert again.calls.kinds() == [] and again.core.counters.alerts == 0


def test_partitions_ends_release_what_waited_for_them() -> None:
    r = rig()
    held = r.core.process([Message("logs", 1, 0, oom(), 100_000)], 0.0, lambda t, p: None, eof=EOF)
    assert held == 1
    assert r.core.process([end("steps", 1)], 0.0, lambda t, p: None, eof=EOF) == 0
    assert r.calls.kinds() == ["produce:alerts"]


# -- the same protocol, the state planned in a forked process (Checkpoint.begin) --------------


def stored_ranks(r: Rig) -> set[int]:
    """The ranks of job "j" in the state written so far."""
    store = SnapshotStore(r.core.kv, r.core.engine)
    job = store.load("j")
    return set() if job is None else set(job.ranks)


def test_a_forked_checkpoint_writes_the_state_and_commits_the_positions_of_the_fork() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    r.core.checkpoint.begin()
    assert r.calls.kinds() == ["produce:alerts", "flush"]  # the alerts first, then the fork
    assert r.core.unacked == 0
    # The loop goes on: a step of rank 0 changes the job after the fork.
    feed(r, Message("steps", 1, 0, step(1, 100.0), 100_000))
    r.offsets.at = {("logs", 1): 1, ("steps", 1): 1}
    deadline = time.monotonic() + 30
    while "commit" not in r.calls.kinds() and time.monotonic() < deadline:
        r.core.checkpoint.advance()  # never waits: the loop calls it every turn
        time.sleep(0.01)
    assert r.calls.kinds()[2:] == [
        "produce:changelog", "produce:changelog", "flush", "commit",
    ]  # fmt: skip
    assert r.calls.log[-1] == ("commit", [(("logs", 1), 1)])  # the positions at the fork
    assert stored_ranks(r) == {5}  # the job as it was at the fork: rank 0 came after
    assert r.core.unacked == 1 and r.core.counters.snapshots == 1
    assert r.core.checkpoint.commit()  # the step after the fork, committed here and now
    assert stored_ranks(r) == {0, 5}
    assert r.calls.log[-1] == ("commit", [(("logs", 1), 1), (("steps", 1), 1)])


def test_a_forked_checkpoint_commits_only_once_its_state_is_delivered() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    r.core.checkpoint.begin()
    r.producer.unflushed = 1  # the state records are not on the brokers yet
    deadline = time.monotonic() + 30
    while "produce:changelog" not in r.calls.kinds() and time.monotonic() < deadline:
        r.core.checkpoint.advance()
        time.sleep(0.01)
    for _ in range(3):
        r.core.checkpoint.advance()
    assert "commit" not in r.calls.kinds()
    r.producer.unflushed = 0
    r.core.checkpoint.advance()
    assert r.calls.kinds()[-1] == "commit" and r.core.unacked == 0


def test_a_commit_or_a_revocation_completes_a_forked_checkpoint_first() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    r.core.checkpoint.begin()
    feed(r, Message("steps", 1, 0, step(1, 100.0), 100_000))
    r.offsets.at = {("logs", 1): 1, ("steps", 1): 1}
    r.core.revoke({0, 1})
    commits = [c for c in r.calls.log if c[0] == "commit"]
    assert commits == [
        ("commit", [(("logs", 1), 1)]),  # the forked one, then what came after it
        ("commit", [(("logs", 1), 1), (("steps", 1), 1)]),
    ]
    assert r.core.unacked == 0


def test_state_too_large_in_the_forked_planner_is_raised_and_commits_nothing() -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))

    def plan(job: Any, chunks: Any, partition: int | None) -> Any:
        raise StateTooLarge(job.job_id, b"j#0", 2_000_000, 1_000_000)

    r.core.store.plan = plan  # type: ignore[method-assign]  # the child inherits it
    r.core.checkpoint.begin()
    with pytest.raises(StateTooLarge, match="'j#0' is 2,000,000 bytes"):
        r.core.checkpoint.finish()
    assert "commit" not in r.calls.kinds() and "produce:changelog" not in r.calls.kinds()
    assert r.core.unacked == 1 and "j" in r.core.pipeline.dirty


def test_a_planner_that_dies_leaves_the_checkpoints_to_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = rig()
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    store_plan = r.core.store.plan

    def plan(job: Any, chunks: Any, partition: int | None) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)  # in the child: the OOM killer, say

    r.core.store.plan = plan  # type: ignore[method-assign]
    r.core.checkpoint.begin()
    r.core.checkpoint.finish()
    assert "ended with status -9" in caplog.text
    assert "commit" not in r.calls.kinds() and r.core.unacked == 1
    r.core.store.plan = store_plan  # type: ignore[method-assign]
    r.core.checkpoint.begin()  # no fork this time: done here and now
    assert r.calls.kinds()[-1] == "commit" and r.core.unacked == 0
    assert stored_ranks(r) == {5}


def test_without_snapshot_fork_a_checkpoint_begun_is_done_here_and_now() -> None:
    r = rig(options=WorkerOptions(snapshot_fork=False))
    r.offsets.at = {("logs", 1): 1}
    feed(r, Message("logs", 1, 0, oom()))
    r.core.checkpoint.begin()
    assert r.calls.kinds() == [
        "produce:alerts", "flush", "produce:changelog", "produce:changelog", "flush", "commit",
    ]  # fmt: skip
    assert r.core.unacked == 0
