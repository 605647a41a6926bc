"""A job far bigger than Kafka's message limit allows in one record: its state must persist.

A 131,072-rank job (realistic noisy values, one rank whose loss turns NaN) through the real
worker; the worker is SIGKILLed after a snapshot of the job, while it is still working through
the job's steps, and restarted: its state comes back from the changelog and the job's alerts
are those of the run without the kill, none lost, none twice. The largest record on the
changelog is reported beside Kafka's limit.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

from reliability.faults import committed_some, running, settle_alerts, wait_until
from reliability.harness import (
    Key,
    Tally,
    WorkerProcess,
    committed_all,
    delete_stack,
    make_stack,
    producer,
    read_topic,
)

#: Kafka's default message limit (the producer's ``message.max.bytes``), which state records
#: must stay under; the row checks they stay under half of it.
KAFKA_LIMIT = 1_000_000


def big_job_lines(job_id: str, ranks: int, steps: int, nan_rank: int, seed: int) -> Iterator[bytes]:
    """The job's step events as its producers encode them, step by step, rank by rank."""
    rng = random.Random(seed)
    start = 1_767_225_600.0
    for step in range(steps):
        for rank in range(ranks):
            when = datetime.fromtimestamp(start + step + rank * 2e-6, UTC)
            loss = float("nan") if (rank == nan_rank and step >= steps // 2) else None
            yield orjson.dumps(
                {
                    "schema_version": 1,
                    "job_id": job_id,
                    "rank": rank,
                    "host": f"node-{rank // 8:05d}",
                    "timestamp": when.isoformat(),
                    "kind": "step",
                    "world_size": ranks,
                    "step": step,
                    "loss": "NaN"
                    if loss is not None
                    else 2 + 8 * 0.99**step + 0.05 * rng.gauss(0, 1),
                    "learning_rate": 3e-4,
                    "gradient_norm": 1.0 + 0.2 * rng.random(),
                    "gpu_memory_allocated_mb": 52_000 + 450 * (step % 4) + 10 * rng.random(),
                    "gpu_memory_reserved_mb": 55_296.0,
                    "throughput_tokens_per_sec": 8_000 + 100 * rng.gauss(0, 1),
                    "step_time_s": 1.0 + 0.05 * rng.random(),
                    "data_time_s": 0.02 + 0.01 * rng.random(),
                    "compute_time_s": 0.85 + 0.02 * rng.random(),
                }
            )


def expected(lines: list[bytes]) -> Counter[Key]:
    """The alerts of the run without a kill: the pure pipeline over the same bytes."""
    from rankwatch.streams import Engine
    from rankwatch.streams.pipeline import Pipeline

    pipeline = Pipeline(Engine.with_builtin_detectors())
    out: Counter[Key] = Counter()
    for line in lines:
        result = pipeline.handle(line)
        assert isinstance(result, list), result
        out.update((a.alert_id, a.status) for a in result)
    out.update((a.alert_id, a.status) for a in pipeline.flush())
    return out


def big_job_restart(
    bootstrap: str, tmp: Path, *, ranks: int = 131_072, steps: int = 10, seed: int = 3
) -> list[Tally]:
    """kill -9 the worker after it snapshotted a ``ranks``-rank job; restart; compare."""
    from rankwatch.streams.runtime.common import changelog_topic

    row = Tally(f"{ranks:,}-rank job, worker kill -9 after a snapshot → alerts topic")
    job_id = f"big-{ranks}"
    began = time.monotonic()
    lines = list(big_job_lines(job_id, ranks, steps, nan_rank=ranks - 7, seed=seed))
    want = expected(lines)
    row.notes.append(f"{len(lines):,} step events; expected alerts {sorted(k[1] for k in want)}")
    row.notes.append(f"the run without a kill computed in {time.monotonic() - began:.0f} s")
    stack = make_stack(bootstrap, tmp / "big-job", partitions=1)
    try:
        p = producer(bootstrap)
        for line in lines:
            while True:
                try:
                    p.produce(stack.steps, line, key=job_id.encode())
                    break
                except BufferError:
                    p.poll(0.05)
        p.flush(120)
        with running(stack) as (workers, _sink):
            workers.append(WorkerProcess(stack, "first", snapshot_interval_s=5.0))
            # After the first snapshot of the job (offsets are committed only after its state
            # is written), and while steps are still to be worked through.
            if not wait_until(lambda: committed_some(stack), 600):
                row.notes.append("no snapshot within 600 s")
            time.sleep(3.0)
            workers[0].kill9()
            workers.append(WorkerProcess(stack, "second", snapshot_interval_s=5.0))
            drained = committed_all(stack, timeout_s=900, alive=workers[1].alive)
            if not drained:
                row.notes.append("the restarted worker did not drain the job")
            restored = "state restored" in workers[1].text()
            row.notes.append(f"state restored from the changelog: {restored}")
            got = settle_alerts(stack, want, timeout_s=60)
            row.add(want, got)
            row.trials += 1
            row.events_in += len(lines)
            row.events_out += len(lines) if drained else 0
        records = read_topic(bootstrap, changelog_topic(stack.app_id), timeout_s=60)
        largest = max(map(len, records), default=0)
        row.notes.append(
            f"{len(records)} state records; largest {largest:,} bytes "
            f"({largest / KAFKA_LIMIT:.1%} of Kafka's {KAFKA_LIMIT:,}-byte limit)"
        )
        if largest * 2 >= KAFKA_LIMIT:
            row.notes.append("FAILED: a state record reached half of the limit")
    finally:
        delete_stack(stack)
    return [row]
