"""The snapshot store: records bounded by the changelog's limit whatever the job's size,
only what changed written, and a restored engine that goes on as if never stopped."""

from __future__ import annotations

import math
import random

import pytest

from rankwatch.schemas import LogEvent, StepEvent
from rankwatch.streams import Engine
from rankwatch.streams.snapshots import (
    DictKeyValue,
    SnapshotStore,
    StateTooLarge,
    chunk_key,
    head_key,
)
from rankwatch.streams.state_codec import Layout, encode_parts


def _steps(ranks: int, steps: range, job: str = "big", seed: int = 5) -> list[StepEvent]:
    """Realistic noisy values (not constants that compress away)."""
    rng = random.Random(seed)
    return [
        StepEvent(
            job_id=job,
            rank=r,
            world_size=ranks,
            step=s,
            timestamp=1000 + s + r * 1e-5 + rng.random() * 0.01,
            loss=2.0 + 8 * 0.99**s + 0.05 * rng.gauss(0, 1),
            gradient_norm=1.0 + 0.2 * rng.random(),
            gpu_memory_allocated_mb=52_000 + 450 * (s % 4) + 10 * rng.random(),
            throughput_tokens_per_sec=8_000 + 100 * rng.gauss(0, 1),
            step_time_s=1.0 + 0.05 * rng.random(),
            data_time_s=0.02 + 0.01 * rng.random(),
            compute_time_s=0.85 + 0.02 * rng.random(),
        )
        for s in steps
        for r in range(ranks)
    ]


def _one_record_head(engine: Engine, job_id: str) -> int:
    """The size the head had when it carried every job-level table whole (before issue 16):
    the same encoding with no table declared rank-keyed."""
    layout = Layout.of(engine, job_id)
    whole = Layout(layout.rank_types, layout.job_types, {}, layout.ranks_per_chunk)
    head, _ = encode_parts(engine.jobs[job_id], whole)
    return len(head)


def test_a_head_that_would_exceed_the_limit_is_written_and_read_back() -> None:
    limit = 48 * 1024
    engine = Engine.with_builtin_detectors()
    engine.process_many(_steps(2048, range(12)))
    assert _one_record_head(engine, "big") > limit, "the job must be big enough to matter"
    kv = DictKeyValue()
    store = SnapshotStore(kv, engine, max_record_bytes=limit)
    store.save(engine.jobs["big"], None, partition=0)
    assert max(len(v) for v in kv.data.values()) <= limit // 4
    assert store.largest_record == max(len(v) for v in kv.data.values())
    fresh = Engine.with_builtin_detectors()
    back = SnapshotStore(kv, fresh, max_record_bytes=limit).load("big")
    assert back is not None
    assert back.ranks.keys() == engine.jobs["big"].ranks.keys()
    assert back.slots["straggler"]["r"].keys() == engine.jobs["big"].slots["straggler"]["r"].keys()
    was, now = engine.jobs["big"].ranks[2047], back.ranks[2047]
    assert (now.last_step, repr(now.slots)) == (was.last_step, repr(was.slots))


def test_big_ranks_get_smaller_chunks() -> None:
    """Ranks whose state is large go fewer to a chunk, and the job keeps that layout."""
    engine = Engine.with_builtin_detectors()
    engine.process_many(_steps(256, range(12)))
    kv = DictKeyValue()
    store = SnapshotStore(kv, engine, ranks_per_chunk=256, max_record_bytes=16 * 1024)
    store.save(engine.jobs["big"], None, partition=0)
    chunks = [k for k in kv.data if b"#" in k]
    assert len(chunks) > 1
    assert all(len(kv.data[k]) <= 4096 for k in chunks)
    back = SnapshotStore(kv, Engine.with_builtin_detectors()).load("big")
    assert back is not None and sorted(back.ranks) == list(range(256))


def test_a_record_over_the_limit_is_refused_naming_job_key_and_size() -> None:
    engine = Engine.with_builtin_detectors()
    engine.process_many(_steps(4, range(3), job="tiny"))
    job = engine.jobs["tiny"]
    job.incidents["huge"] = {  # an incident whose evidence no record can carry
        "ranks": {0},
        "firing": {0},
        "evidence": {"lines": [f"{random.random()!r}" for _ in range(4000)]},
    }
    kv = DictKeyValue()
    with pytest.raises(StateTooLarge) as info:
        SnapshotStore(kv, engine, max_record_bytes=8192).save(job, None, partition=0)
    assert str(info.value).startswith("job tiny: state record 'tiny' is ")
    assert "over the changelog's limit of 8,192 bytes" in str(info.value)
    assert kv.data == {}, "nothing of a snapshot that cannot be whole is written"


def test_only_changed_records_are_written() -> None:
    engine = Engine.with_builtin_detectors()
    engine.process_many(_steps(64, range(10), job="j"))
    kv = DictKeyValue()
    store = SnapshotStore(kv, engine, ranks_per_chunk=16)
    assert store.save(engine.jobs["j"], None, partition=0) > 0
    assert store.save(engine.jobs["j"], None, partition=0) == 0  # nothing changed
    writes: list[bytes] = []
    put = kv.put
    kv.put = lambda k, v, p: (writes.append(k), put(k, v, p))  # type: ignore[method-assign]
    engine.process(
        LogEvent(job_id="j", rank=40, timestamp=1012, level="WARNING", message="slow disk")
    )
    store.save(engine.jobs["j"], None, partition=0)
    assert writes == [chunk_key("j", 2), head_key("j")]


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
    restored = SnapshotStore(kv, second, 4).load("j")
    assert restored is not None
    second.adopt(restored)
    got += second.process_many(events(40, 60))  # overlaps: duplicates are no-ops
    got += second.flush()
    assert expected, "the run must alert, or this test proves nothing"
    assert [(a.alert_id, a.status) for a in got] == [(a.alert_id, a.status) for a in expected]


def test_unreadable_state_starts_afresh() -> None:
    kv = DictKeyValue()
    kv.put(head_key("j"), b"RWS\x02broken", 0)
    assert SnapshotStore(kv, Engine([])).load("j") is None
    assert SnapshotStore(kv, Engine([])).load("never-seen") is None


def test_a_limit_below_any_record_is_refused() -> None:
    with pytest.raises(Exception, match="max_record_bytes must be at least 4096, got 100"):
        SnapshotStore(DictKeyValue(), Engine([]), max_record_bytes=100)


@pytest.mark.parametrize("name", ["rank_silent", "hang", "nccl_timeout", "straggler"])
def test_snapshots_of_the_changed_chunks_give_the_live_state(name: str) -> None:
    """What the runtimes do: after each interval, save only the chunks whose ranks had events
    (the pipeline's record) and the chunks whose table entries a rule changed at a tick (a
    silent rank marked); a worker that restores from that at any snapshot has the live state."""
    from rankwatch.schemas import encode
    from rankwatch.simulate.job import JobSpec, Timeline, simulate
    from rankwatch.simulate.scenarios import SCENARIOS
    from rankwatch.streams.pipeline import Pipeline
    from rankwatch.streams.testing import state_difference

    spec = JobSpec(job_id=f"dirty-{name}", ranks=24, steps=200, seed=3)
    engine = Engine.with_builtin_detectors()
    pipeline = Pipeline(engine, ranks_per_chunk=4)
    pipeline.feed_clock_from_events()  # quiet ticks: rules change quiet ranks' entries
    kv = DictKeyValue()
    store = SnapshotStore(kv, engine, ranks_per_chunk=4)
    checked = 0
    for i, event in enumerate(
        simulate(spec, [SCENARIOS[name](at_step=100, rank=5)], timeline=Timeline())
    ):
        pipeline.handle(encode(event))
        if i % 211 == 0:
            for job_id, chunks in pipeline.take_dirty().items():
                store.save(engine.jobs[job_id], chunks, partition=0)
            if i % (211 * 5) == 0 and spec.job_id in engine.jobs:
                restored = SnapshotStore(kv, Engine.with_builtin_detectors(), 4).load(spec.job_id)
                assert state_difference(restored, engine.jobs[spec.job_id]) is None
                checked += 1
    assert checked >= 3


def test_a_quiet_ranks_table_entry_changed_at_a_tick_is_written() -> None:
    engine = Engine.with_builtin_detectors()
    engine.process_many(_steps(64, range(10), job="j"))
    kv = DictKeyValue()
    store = SnapshotStore(kv, engine, ranks_per_chunk=16)
    store.save(engine.jobs["j"], None, partition=0)
    engine.jobs["j"].slots["straggler"]["r"][50][0] = 123.0  # as a rule's tick would
    writes: list[bytes] = []
    put = kv.put
    kv.put = lambda k, v, p: (writes.append(k), put(k, v, p))  # type: ignore[method-assign]
    store.save(engine.jobs["j"], set(), partition=0)  # no rank had events
    assert writes == [chunk_key("j", 3)]
