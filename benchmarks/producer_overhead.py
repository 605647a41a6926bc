"""Cost of rankwatch on the training thread: ``log_step`` and a log record through the handler.

Measures per-call time (median, p99) with the broker up (a LocalCluster started here on free
ports, or ``--bootstrap``) and down (a closed port), beside a no-op call and stdlib logging to a
file in the same run; with the broker up also ``log_step`` of a producer set up by
``rw.configure`` (lifecycle hooks and the stuck watchdog on), and ``log_step`` with a
``GpuUtilization`` enricher holding a value (its reader thread polling a stand-in NVML module,
since the cost on the training thread is the cached read, not NVML's); then the memory held
across 1M calls with the broker away and a 100k bound.

    .venv/bin/python benchmarks/producer_overhead.py [--bootstrap HOST:PORT] [--calls N]
"""

from __future__ import annotations

import argparse
import gc
import logging
import platform
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from rankwatch.config import Settings
from rankwatch.infra.admin import create_topics
from rankwatch.infra.cluster import LocalCluster, free_ports
from rankwatch.producers import (
    GpuUtilization,
    Identity,
    RankwatchLogHandler,
    RankwatchProducer,
    configure,
    shutdown,
)

# The five metrics of every log_step row.
METRICS = {
    "loss": 2.5,
    "learning_rate": 1e-4,
    "gradient_norm": 0.7,
    "step_time_s": 0.31,
    "throughput_tokens_per_sec": 9000.0,
}


class StandInNvml:
    """Answers the NVML calls GpuUtilization makes (no GPU needed), at NVML's own cost or so."""

    @staticmethod
    def nvmlInit() -> None:
        pass

    @staticmethod
    def nvmlDeviceGetHandleByIndex(index: int) -> int:
        return index

    @staticmethod
    def nvmlDeviceGetUtilizationRates(handle: int) -> object:
        time.sleep(50e-6)  # NVML's call costs ~10-50 us, on the reader thread
        return type("Utilization", (), {"gpu": 87, "memory": 30})()


def timed(fn: Callable[[int], None], calls: int) -> tuple[float, float]:
    """Median and p99 in microseconds of ``fn(i)``, one timing per call."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        fn(i)
        samples.append(clock() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def scenario(name: str, bootstrap: str, calls: int, rows: list[tuple[str, float, float]]) -> None:
    settings = Settings().with_bootstrap(bootstrap)
    producer = RankwatchProducer(Identity("bench", 0, 8, "bench-host"), settings=settings)
    time.sleep(0.5)  # let the idempotent producer connect (or give up) first
    rows.append(
        (
            f"log_step, broker {name}",
            *timed(lambda i: producer.log_step(i, **METRICS), calls),
        )
    )
    log = logging.getLogger(f"bench.{name}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(RankwatchLogHandler(producer))
    rows.append(
        (
            f"log record via handler, broker {name}",
            *timed(lambda i: log.info("step %d done, loss %.3f", i, 2.5), calls),
        )
    )
    producer.flush(30)
    print(f"  broker {name}: {producer.stats()}")
    producer.close(2)
    if name == "up":
        # What a trainer gets from rw.configure: hooks installed, the watchdog thread looking.
        configured = configure("bench", 0, 8, "bench-host", settings=settings, stuck_after_s=60)
        time.sleep(0.5)
        rows.append(
            (
                "log_step, broker up, rw.configure (hooks, watchdog)",
                *timed(lambda i: configured.log_step(i, **METRICS), calls),
            )
        )
        configured.flush(30)
        shutdown(2)
        utilization = GpuUtilization(interval_s=0.01, nvml=StandInNvml, env={"LOCAL_RANK": "0"})
        producer = RankwatchProducer(
            Identity("bench", 0, 8, "bench-host"), settings=settings, enrichers=[utilization]
        )
        producer.log_step(0, **METRICS)  # starts the reader
        time.sleep(0.5)
        rows.append(
            (
                "log_step, broker up, GpuUtilization (stand-in NVML, read every 10 ms)",
                *timed(lambda i: producer.log_step(i, **METRICS), calls),
            )
        )
        producer.flush(30)
        producer.close(2)


def memory_when_broker_away(calls: int, bound: int) -> list[tuple[int, float]]:
    (port,) = free_ports(1)
    producer = RankwatchProducer(
        Identity("bench", 0),
        settings=Settings().with_bootstrap(f"127.0.0.1:{port}"),
        max_buffered=bound,
        enrichers=[],
    )
    gc.collect()
    tracemalloc.start()
    points = []
    for i in range(calls):
        producer.log_step(i, loss=2.5, learning_rate=1e-4, gradient_norm=0.7)
        if (i + 1) % (calls // 10) == 0:
            points.append((i + 1, tracemalloc.get_traced_memory()[0] / 2**20))
    tracemalloc.stop()
    print(f"  broker away: {producer.stats()}")
    producer.close(0.5)
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []
    rows.append(("no-op call", *timed(lambda i: None, args.calls)))
    with tempfile.TemporaryDirectory() as tmp:
        file_log = logging.getLogger("bench.file")
        file_log.setLevel(logging.INFO)
        file_log.propagate = False
        file_log.addHandler(logging.FileHandler(Path(tmp) / "bench.log"))
        rows.append(
            (
                "stdlib logging to a file",
                *timed(lambda i: file_log.info("step %d done, loss %.3f", i, 2.5), args.calls),
            )
        )
        cluster = None
        bootstrap = args.bootstrap
        try:
            if bootstrap is None:
                cluster = LocalCluster.create(Path(tmp), port=0)
                cluster.start()
                bootstrap = cluster.bootstrap
            create_topics(Settings().with_bootstrap(bootstrap))
            scenario("up", bootstrap, args.calls, rows)
        finally:
            if cluster is not None:
                cluster.stop(purge=True)
        (port,) = free_ports(1)
        scenario("down", f"127.0.0.1:{port}", args.calls, rows)
    print(f"\n{platform.python_version()}, {args.calls} calls per row")
    print("| call | median (us) | p99 (us) |\n|---|---|---|")
    for name, median, p99 in rows:
        print(f"| {name} | {median:.2f} | {p99:.2f} |")
    print("\nmemory (tracemalloc, MiB) with the broker away, bound 100k events:")
    for done, mib in memory_when_broker_away(1_000_000, 100_000):
        print(f"  after {done:>9,} calls: {mib:7.1f} MiB")


if __name__ == "__main__":
    main()
