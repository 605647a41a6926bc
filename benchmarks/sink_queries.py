"""Storage and queries: fill a store with a million rows, time the writes and each query.

    .venv/bin/python benchmarks/sink_queries.py [--backend sqlite|postgres|both] [--steps 1000000]

Writes go through ``Store.write_batch`` in batches of 5,000 (what the storage sink does); each
query is the one its command runs, timed as the median of 7 runs after one warm-up. PostgreSQL
is a throw-away server from ``rankwatch.sinks.testing`` (fsync off: the figure is the client's
and the SQL's cost, not the disk's).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.sinks.storage import LogQuery, SqlStore, StepQuery, open_store
from rankwatch.sinks.testing import PostgresServer

T0 = 1_750_000_000.0
JOBS, RANKS = 10, 100
WORDS = [
    "checkpoint saved",
    "loss scale overflow",
    "dataloader worker restarted",
    "NCCL INFO channel",
    "allreduce done",
    "evaluation finished",
]


def step_batches(total: int, size: int) -> Iterator[list[StepEvent]]:
    steps_per_rank = total // (JOBS * RANKS)
    batch: list[StepEvent] = []
    for job in range(JOBS):
        for step in range(steps_per_rank):
            for rank in range(RANKS):
                batch.append(
                    StepEvent(
                        job_id=f"job-{job}",
                        rank=rank,
                        step=step,
                        timestamp=T0 + step,
                        loss=3.0 - step / 1e4,
                        throughput_tokens_per_sec=80_000.0,
                    )
                )
                if len(batch) == size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def log_batches(total: int, size: int) -> Iterator[list[LogEvent]]:
    batch: list[LogEvent] = []
    for i in range(total):
        job, rank = i % JOBS, (i // JOBS) % RANKS
        level = "ERROR" if (i // JOBS) % 500 == 0 else "INFO"
        text = "NCCL watchdog timeout on rank" if level == "ERROR" else WORDS[i % len(WORDS)]
        batch.append(
            LogEvent(
                job_id=f"job-{job}",
                rank=rank,
                timestamp=T0 + i / 100,
                level=level,
                message=f"{text} {i}",
            )
        )
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def fill(store: SqlStore, steps: int, logs: int) -> dict[str, float]:
    # Only write_batch is timed: building the events is the producer's cost, not the store's.
    rates: dict[str, float] = {}
    spent = 0.0
    for batch in step_batches(steps, 5000):
        start = time.perf_counter()
        store.write_batch(batch, [], [])
        spent += time.perf_counter() - start
    rates["steps/s"] = steps / spent
    spent = 0.0
    for log_batch in log_batches(logs, 5000):
        start = time.perf_counter()
        store.write_batch([], log_batch, [])
        spent += time.perf_counter() - start
    rates["logs/s"] = logs / spent
    alerts = [
        Alert(
            alert_id=f"a{i}",
            job_id=f"job-{i % JOBS}",
            rule="straggler",
            severity="warning",
            scope="rank",
            ranks=[i % RANKS],
            step=i,
            first_seen=T0 + i,
            last_seen=T0 + i,
            summary="slow rank",
            status="resolved" if i % 3 == 0 else "firing",
        )
        for i in range(5000)
    ]
    store.write_batch([], [], alerts)
    return rates


def median_ms(run: Callable[[], Any], repeat: int = 7) -> tuple[float, int]:
    rows = len(run())  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, rows


def queries(store: SqlStore, logs: int) -> dict[str, Callable[[], Any]]:
    since = T0 + logs / 100 - 600  # the last ten minutes of the log stream
    return {
        "logs --job J --rank R --since": lambda: store.logs(LogQuery("job-3", rank=7, since=since)),
        "logs --job J --level ERROR": lambda: store.logs(LogQuery("job-3", level="ERROR")),
        "logs --job J --grep 'watchdog timeout'": lambda: store.logs(
            LogQuery("job-3", grep="watchdog timeout")
        ),
        "steps --job J --metric loss --ranks 0-7": lambda: store.steps(
            StepQuery("job-3", "loss", ranks=range(8))
        ),
        "alerts --job J": lambda: store.alerts("job-3"),
        "jobs": store.jobs,
    }


def bench(store: SqlStore, name: str, steps: int, logs: int) -> None:
    rates = fill(store, steps, logs)
    counts = store.counts()
    print(f"\n{name}: {sum(counts.values()) - counts['job_ranks']:,} rows {counts}")
    print(f"  write: {rates['steps/s']:,.0f} steps/s, {rates['logs/s']:,.0f} logs/s")
    for label, run in queries(store, logs).items():
        ms, rows = median_ms(run)
        print(f"  {label:<42} {ms:8.1f} ms  ({rows} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--logs", type=int, default=250_000)
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        folder = tempfile.mkdtemp(prefix="rankwatch-bench-")
        try:
            with open_store(f"sqlite:///{Path(folder) / 'bench.db'}") as store:
                bench(store, "SQLite", args.steps, args.logs)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.backend in ("postgres", "both"):
        with PostgresServer() as server, open_store(server.url) as store:
            bench(store, "PostgreSQL", args.steps, args.logs)


if __name__ == "__main__":
    main()
