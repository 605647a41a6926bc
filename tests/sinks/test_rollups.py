"""Per-rank rollups and the heatmap they answer, on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from rankwatch.schemas import Alert, StepEvent
from rankwatch.sinks.exceptions import StoreError
from rankwatch.sinks.storage import SqlStore, StepQuery, open_store
from rankwatch.sinks.storage.rollups import FANOUT, ROLLUP_COLUMNS, VALUE_COLUMNS, WIDTHS, median

T0 = 1_750_000_000.0


def noisy_steps(ranks: int = 5, n: int = 300, seed: int = 7) -> list[StepEvent]:
    """Noisy losses and memory, some missing, a few NaN, rank 3's memory leaking."""
    rng = random.Random(seed)
    events = []
    for step in range(n):
        for rank in range(ranks):
            loss: float | str | None = 3.0 - step / 200 + rng.gauss(0, 0.05)
            if rng.random() < 0.03:
                loss = "nan"
            elif rng.random() < 0.05:
                loss = None
            memory = 20_000 + rng.gauss(0, 30) + (8 * step if rank == 3 else 0)
            events.append(
                StepEvent(
                    job_id="job",
                    rank=rank,
                    step=step,
                    timestamp=T0 + step,
                    loss=loss,
                    gpu_memory_allocated_mb=memory,
                )
            )
    return events


def rollup_table(store: SqlStore) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    cols = ", ".join(ROLLUP_COLUMNS)
    return {row[:4]: row[4:] for row in store._query(f"SELECT {cols} FROM step_rollups")}


def expected_rollups(store: SqlStore, metric: str) -> dict[tuple[int, int, int], tuple[Any, ...]]:
    """``(width, rank, block) -> (min, median, max, count)`` from the raw rows, as documented:
    exact for the finest width, the median of the finer medians above it."""
    points = store.steps(StepQuery("job", metric))
    finest: dict[tuple[int, int], list[float]] = {}
    for p in points:
        if p.value is not None and math.isfinite(p.value):
            finest.setdefault((p.rank, p.step // WIDTHS[0]), []).append(p.value)
    out: dict[tuple[int, int, int], tuple[Any, ...]] = {}
    level = {k: (min(v), median(v), max(v), len(v)) for k, v in finest.items()}
    out.update({(WIDTHS[0], *k): v for k, v in level.items()})
    for width in WIDTHS[1:]:
        children: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
        for (rank, block), value in level.items():
            children.setdefault((rank, block // FANOUT), []).append(value)
        level = {
            k: (
                min(c[0] for c in v),
                median([c[1] for c in v]),
                max(c[2] for c in v),
                sum(c[3] for c in v),
            )
            for k, v in children.items()
        }
        out.update({(width, *k): v for k, v in level.items()})
    return out


@pytest.mark.parametrize("metric", ["loss", "gpu_memory_allocated_mb"])
def test_rollups_equal_what_the_raw_rows_give(store: SqlStore, metric: str) -> None:
    events = noisy_steps()
    rng = random.Random(1)
    rng.shuffle(events)  # the sink sees ranks and steps interleaved, batches out of order
    for start in range(0, len(events), 97):
        store.write_batch(events[start : start + 97], [], [])
    table = rollup_table(store)
    at = 3 + VALUE_COLUMNS.index(f"{metric}_min")  # after first_ts, last_ts, sealed
    got = {}
    for (job, width, rank, block), row in table.items():
        assert job == "job"
        values = row[at : at + 4]
        if values[3]:
            got[(width, rank, block)] = tuple(values)
    want = expected_rollups(store, metric)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key][3] == value[3], key
        assert got[key][:3] == pytest.approx(value[:3], rel=1e-12), key
    # Every finite value is counted once; the NaN losses are stored raw but in no rollup.
    finite = [getattr(e, metric) for e in events]
    finite = [v for v in finite if v is not None and math.isfinite(v)]
    for width in WIDTHS:
        assert sum(v[3] for k, v in got.items() if k[0] == width) == len(finite)
    assert metric != "loss" or len(finite) < len(events)


def test_a_replayed_batch_changes_no_rollup(store: SqlStore) -> None:
    events = noisy_steps(ranks=3, n=200)
    store.write_batch(events[:400], [], [])
    store.write_batch(events[400:], [], [])
    before = rollup_table(store)
    store.write_batch(events[:400], [], [])  # the sink re-reads an uncommitted batch
    store.write_batch(events[300:500], [], [])  # and one overlapping two batches
    assert rollup_table(store) == before
    assert Counter(key[1] for key in before) == {16: 3 * 13, 128: 3 * 2, 1024: 3}


def test_heatmap_shapes_none_cells_and_the_leaking_rank(store: SqlStore) -> None:
    events = [e for e in noisy_steps(ranks=6, n=400) if not (e.rank == 4 and e.step >= 100)]
    store.write_batch(events, [], [])
    full = store.heatmap("job", "gpu_memory_allocated_mb", columns=25)
    assert full.ranks == [0, 1, 2, 3, 4, 5]
    assert (full.step_edges[0], full.step_edges[-1]) == (0, 400)
    widths = {b - a for a, b in zip(full.step_edges, full.step_edges[1:], strict=False)}
    assert widths == {16}  # 25 blocks of 16 steps
    assert all(len(row) == len(full.step_edges) - 1 == 25 for row in full.values)
    assert full.values[4][6] is not None and full.values[4][7:] == [None] * 18  # stopped at 100
    last = [row[-1] for row in full.values]
    assert max(range(6), key=lambda i: last[i] or 0.0) == 3  # the leak stands out
    # Max over a column is the max of its raw values.
    raw = [e.gpu_memory_allocated_mb for e in events if e.rank == 3 and 384 <= e.step < 400]
    assert last[3] == pytest.approx(max(v for v in raw if v is not None))

    few = store.heatmap("job", "gpu_memory_allocated_mb", stat="min", columns=4, ranks=[5, 3, 99])
    assert few.ranks == [3, 5, 99] and few.stat == "min"
    assert len(few.step_edges) - 1 <= 4 and few.step_edges[0] == 0
    assert few.values[2] == [None] * (len(few.step_edges) - 1)  # a rank with no rows
    part = store.heatmap("job", "loss", stat="median", columns=10, step_from=100, step_to=260)
    assert (part.step_edges[0], part.step_edges[-1]) == (96, 272)  # aligned to 16-step blocks
    assert all(1.5 < v < 2.6 for row in part.values for v in row if v is not None)
    assert store.heatmap("nope", "loss") == type(full)("nope", "loss", "max", [], [], [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "los"}, "unknown metric 'los' (one of loss, learning_rate,"),
        ({"stat": "mean"}, "unknown stat 'mean' (one of min, median, max)"),
        ({"columns": 0}, "columns: expected a positive integer, got 0"),
        ({"columns": True}, "columns: expected a positive integer, got True"),
        ({"columns": "9"}, "columns: expected a positive integer, got '9'"),
        ({"step_from": 50, "step_to": 50}, "step_to (50) must be greater than step_from (50)"),
    ],
)
def test_heatmap_bad_arguments_name_what_is_wrong(
    store: SqlStore, kwargs: dict[str, Any], message: str
) -> None:
    store.write_batch(noisy_steps(ranks=2, n=20), [], [])
    args: dict[str, Any] = {"metric": "loss", **kwargs}
    with pytest.raises(StoreError) as info:
        store.heatmap("job", **args)
    assert str(info.value).startswith(message)


def evidence_alert(ranks: list[int], at: float, alert_id: str) -> Alert:
    return Alert(
        alert_id=alert_id,
        job_id="job",
        rule="memory_leak",
        severity="warning",
        scope="rank" if ranks else "job",
        ranks=ranks,
        step=int(at - T0),
        first_seen=at,
        last_seen=at + 10,
        summary="rank 3: memory grows",
    )


def test_raw_step_retention_keeps_rollups_and_the_alert_windows(store: SqlStore) -> None:
    events = noisy_steps(ranks=4, n=400)
    alerts = [evidence_alert([3], T0 + 100, "a-rank"), evidence_alert([], T0 + 300, "a-job")]
    store.write_batch(events, [], alerts)
    heatmap = store.heatmap("job", "gpu_memory_allocated_mb", columns=25)
    rollups = rollup_table(store)

    result = store.delete_older_than(None, now=T0 + 1000, steps_age_s=650, evidence_s=20)
    # Steps before T0 + 350 go, but for [80, 130] on rank 3 and [280, 330] on every rank.
    kept = {(p.rank, p.step) for p in store.steps(StepQuery("job", "gpu_memory_allocated_mb"))}
    want = {(e.rank, e.step) for e in events if e.step >= 350}
    want |= {(3, s) for s in range(80, 131)} | {(r, s) for r in range(4) for s in range(280, 331)}
    assert kept == want
    assert result.deleted == {"raw_steps": len(events) - len(want)}
    assert store.heatmap("job", "gpu_memory_allocated_mb", columns=25) == heatmap
    assert len(store.alerts("job")) == 2

    # An old batch replayed after its raw rows went must not change the sealed rollups.
    store.write_batch(events[:800], [], [])
    assert store.heatmap("job", "gpu_memory_allocated_mb", columns=25) == heatmap
    # (all but the sealed flag: the blocks whose raw rows went are sealed)
    assert {k: v[:2] + v[3:] for k, v in rollup_table(store).items()} == {
        k: v[:2] + v[3:] for k, v in rollups.items()
    }
    # Whole-store retention then takes the rollups older than it too.
    result = store.delete_older_than(200, now=T0 + 400)
    # Per rank: the 16-step blocks that end before step 200, and the first 128-step block.
    assert result.deleted["step_rollups"] == 4 * (12 + 1)
    assert store.heatmap("job", "gpu_memory_allocated_mb", columns=25).step_edges[0] == 192


def assert_rollups_match_raw(store: SqlStore, metric: str = "gpu_memory_allocated_mb") -> None:
    at = 3 + VALUE_COLUMNS.index(f"{metric}_min")
    got = {
        (width, rank, block): tuple(row[at : at + 4])
        for (_, width, rank, block), row in rollup_table(store).items()
        if row[at + 3]
    }
    want = expected_rollups(store, metric)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key][3] == value[3], key
        assert got[key][:3] == pytest.approx(value[:3], rel=1e-12), key


def test_two_writers_of_one_job_keep_the_rollups_exact(store: SqlStore) -> None:
    # Each store keeps the blocks it last wrote in memory; a second store writing the same
    # blocks in between must make the first read them back, not trust what it holds.
    other = open_store(store.url)
    try:
        events = noisy_steps(ranks=4, n=300)
        batches = [events[i : i + 4] for i in range(0, len(events), 4)]  # a step of each rank
        for i, batch in enumerate(batches):
            (store if i % 3 else other).write_batch(batch, [], [])
            if i % 7 == 0:
                (other if i % 3 else store).write_batch(batches[max(0, i - 5)], [], [])
        for metric in ("loss", "gpu_memory_allocated_mb"):
            assert_rollups_match_raw(store, metric)
    finally:
        other.close()


def test_a_failed_batch_leaves_nothing_behind_in_the_writer(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = noisy_steps(ranks=3, n=120)
    batches = [events[i : i + 3] for i in range(0, len(events), 3)]
    for batch in batches[:20]:
        store.write_batch(batch, [], [])
    upsert = type(store)._upsert_rollups

    def fail_above_the_finest(self: SqlStore, width: int, *args: Any, **kwargs: Any) -> None:
        if width > WIDTHS[0]:
            raise StoreError("the database went away")
        upsert(self, width, *args, **kwargs)

    monkeypatch.setattr(type(store), "_upsert_rollups", fail_above_the_finest)
    with pytest.raises(StoreError):
        store.write_batch(batches[20], [], [])  # rolled back after the finest rollups
    monkeypatch.undo()
    for batch in batches[20:]:  # the sink writes the failed batch again, then goes on
        store.write_batch(batch, [], [])
    assert_rollups_match_raw(store)
    assert_rollups_match_raw(store, "loss")


def test_retention_by_another_process_freezes_the_blocks_for_this_writer(
    store: SqlStore,
) -> None:
    events = noisy_steps(ranks=3, n=200)
    store.write_batch(events[:450], [], [])  # steps 0-149
    before = rollup_table(store)
    with open_store(store.url) as other:  # `rankwatch` retention run beside the sink
        other.delete_older_than(None, now=T0 + 1000, steps_age_s=1000 - 100, evidence_s=0)
    store.write_batch(events[:300], [], [])  # replayed: steps 0-99, now sealed or raw-less
    after = rollup_table(store)
    sealed = {k for k, v in after.items() if v[2]}
    assert sealed and all(k[1] == WIDTHS[0] and k[3] < 100 // WIDTHS[0] + 1 for k in sealed)
    assert {k: v[:2] + v[3:] for k, v in after.items()} == {
        k: v[:2] + v[3:] for k, v in before.items()
    }
    store.write_batch(events[450:], [], [])  # and the job goes on from where it was
    got = store.heatmap("job", "gpu_memory_allocated_mb", columns=25)
    assert got.step_edges[-1] == 208 and all(v is not None for v in got.values[2][-3:])
