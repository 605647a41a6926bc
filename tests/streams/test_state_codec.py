"""Engine state survives the trip through bytes, whole and in chunks."""

from __future__ import annotations

import math
from array import array

import pytest

from rankwatch.schemas import LogEvent, StepEvent
from rankwatch.streams import Engine, JobState, RankState
from rankwatch.streams.snapshots import DictKeyValue, SnapshotStore, chunk_key, head_key
from rankwatch.streams.state_codec import (
    StateCodecError,
    decode_chunk,
    decode_head,
    decode_job,
    encode_chunk,
    encode_head,
    encode_job,
    join_parts,
)


def _busy_engine(ranks: int = 40, steps: int = 30) -> Engine:
    engine = Engine.with_builtin_detectors()
    for step in range(steps):
        for rank in range(ranks):
            engine.process(
                StepEvent(
                    job_id="job-a",
                    rank=rank,
                    world_size=ranks,
                    step=step,
                    timestamp=1000 + step,
                    loss=2.0 if not (rank == 3 and step == 20) else math.nan,
                    gradient_norm=1.0,
                    throughput_tokens_per_sec=1000.0,
                    gpu_memory_allocated_mb=100.0 + rank,
                )
            )
    engine.process(
        LogEvent(
            job_id="job-a",
            rank=5,
            timestamp=1040,
            level="ERROR",
            message="torch.OutOfMemoryError: CUDA out of memory.",
        )
    )
    return engine


def _same(a: object, b: object) -> bool:
    # repr, not ==: the state holds NaN losses, and nan != nan.
    return repr(a) == repr(b)


def test_job_round_trip_keeps_every_field() -> None:
    job = _busy_engine().jobs["job-a"]
    back = decode_job(encode_job(job))
    assert _same(back, job)
    assert back.ranks[3].last_step == job.ranks[3].last_step
    assert back.incidents.keys() == job.incidents.keys()


def test_plain_data_kinds_survive() -> None:
    rank = RankState(1, "h", slots={"a": array("d", [1.0, math.inf]), "s": {1, 2}})
    job = JobState("j", ranks={1: rank}, incidents={"k": {"ranks": {1}}})
    back = decode_job(encode_job(job))
    assert back.ranks[1].slots["a"] == array("d", [1.0, math.inf])
    assert back.incidents["k"]["ranks"] == {1}


def test_parts_rebuild_the_job() -> None:
    job = _busy_engine(ranks=40).jobs["job-a"]
    head = encode_head(job, ranks_per_chunk=16)
    _, chunks, per = decode_head(head)
    assert (chunks, per) == ([0, 1, 2], 16)
    parts = {c: encode_chunk(job, c, 16) for c in chunks}
    assert sorted(decode_chunk(parts[1])) == list(range(16, 32))
    assert _same(join_parts(head, parts), job)


def test_garbage_is_refused_with_a_reason() -> None:
    with pytest.raises(StateCodecError, match="not rankwatch engine state"):
        decode_job(b"{}")
    with pytest.raises(StateCodecError, match="cannot decode"):
        decode_job(b"RWS1garbage")


def test_store_saves_dirty_chunks_and_restores_into_a_new_engine() -> None:
    engine = _busy_engine(ranks=40)
    kv = DictKeyValue()
    store = SnapshotStore(kv, engine, ranks_per_chunk=16)
    store.save(engine.jobs["job-a"], None, partition=7)
    assert kv.partitions[head_key("job-a")] == 7
    assert chunk_key("job-a", 2) in kv.data
    restored = SnapshotStore(kv, Engine.with_builtin_detectors(), 16).load("job-a")
    assert _same(restored, engine.jobs["job-a"])
    assert SnapshotStore(kv, engine).load("never-seen") is None


def test_store_unreadable_state_starts_afresh() -> None:
    kv = DictKeyValue()
    kv.put(head_key("j"), b"RWS1broken", 0)
    assert SnapshotStore(kv, Engine([])).load("j") is None


def test_restored_engine_continues_identically() -> None:
    """Splitting a run at a snapshot gives the alerts of the unsplit run (ids included)."""

    def events(lo: int, hi: int) -> list[StepEvent]:
        return [
            StepEvent(
                job_id="j",
                rank=r,
                world_size=8,
                step=s,
                timestamp=100 + s,
                loss=math.nan if (s >= 40 and r == 2) else 2.0,
                gradient_norm=1.0,
            )
            for s in range(lo, hi)
            for r in range(8)
        ]

    whole = Engine.with_builtin_detectors()
    expected = whole.process_many(events(0, 60)) + whole.flush()

    first = Engine.with_builtin_detectors()
    got = first.process_many(events(0, 45))
    kv = DictKeyValue()
    SnapshotStore(kv, first, 4).save(first.jobs["j"], None, 0)
    second = Engine.with_builtin_detectors()
    second.jobs["j"] = SnapshotStore(kv, second, 4).load("j")  # type: ignore[assignment]
    got += second.process_many(events(40, 60))  # overlaps: duplicates are no-ops
    got += second.flush()
    assert expected, "the run must alert, or this test proves nothing"
    assert [(a.alert_id, a.status) for a in got] == [(a.alert_id, a.status) for a in expected]
