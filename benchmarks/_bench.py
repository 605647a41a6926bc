"""Shared by the benchmark scripts: the machine's description, load sampling, percentiles,
simulated event files, and running a script against another source tree (a baseline commit).

Not a test helper: the scripts print figures and write them under ``benchmarks/results/``;
nothing here asserts on time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("RANKWATCH_BENCH_RESULTS", ROOT / "benchmarks" / "results"))
DATA = Path(os.environ.get("RANKWATCH_BENCH_DATA", "/tmp/rankwatch-bench"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on (the load is sampled separately, during the run)."""
    import orjson
    import pydantic

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pydantic": pydantic.VERSION,
        "orjson": orjson.__version__,
    }


class LoadSampler:
    """Samples the 1-minute load average once a second in a thread, for the report."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(1.0)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": min(s), "mean": round(statistics.fmean(s), 2), "max": max(s)}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of an unsorted sequence."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, all its threads, and of the children it
    has waited for (the worker's forked snapshot planners) (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_cpu(argv: Sequence[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a child to its end; also return the CPU seconds it used (user + system), which a
    busy machine does not inflate the way it does wall time."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, cpu


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {path}")
    return path


def simulated_file(ranks: int, steps: int, *, job_id: str = "bench") -> Path:
    """A JSON-lines file of a healthy simulated job (steps and its log chatter), made once."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"sim-{job_id}-{ranks}x{steps}.jsonl"
    if path.exists():
        return path
    from rankwatch.schemas import encode
    from rankwatch.simulate import JobSpec, simulate

    started = time.perf_counter()
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for event in simulate(JobSpec(job_id=job_id, ranks=ranks, steps=steps)):
            f.write(encode(event) + b"\n")
    tmp.rename(path)
    print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    return path


def read_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


def step_lines(path: Path) -> Iterator[bytes]:
    for line in read_lines(path):
        if b'"kind":"step"' in line:
            yield line


# -- a baseline: the same script against the code of another commit ---------------------------


def baseline_tree(rev: str) -> Path:
    """The source tree of ``rev`` (``git archive``, no checkout in the shared repository)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = DATA / f"tree-{sha[:12]}"
    if not tree.exists():
        tmp = DATA / f"tree-{sha[:12]}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", sha],
            check=True,
            capture_output=True,
        ).stdout
        tar_path = tmp / "src.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        tar_path.unlink()
        tmp.rename(tree)
    return tree


# Run in a child interpreter before anything imports rankwatch: point the editable install's
# finder at another tree, so ``import rankwatch.streams`` loads that commit's code.
_REDIRECT = """
import sys
tree, root = sys.argv[1], sys.argv[2]
for mod in list(sys.modules):
    if mod.startswith("__editable___rankwatch"):
        finder = sys.modules[mod]
        finder.MAPPING.update({k: v.replace(root, tree, 1) for k, v in finder.MAPPING.items()})
sys.argv = sys.argv[3:]
import runpy
if sys.argv[0] == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    import os.path
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python SCRIPT` sets it
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def python_argv(tree: Path | None, argv: Sequence[str]) -> list[str]:
    """``python ARGV`` with ``tree``'s rankwatch instead of this checkout's (None: this one).

    ``argv`` is a script path and its arguments, or ``-m module ...``.
    """
    if tree is None:
        return [sys.executable, *argv]
    return [sys.executable, "-c", _REDIRECT, str(tree), str(ROOT), *argv]


def rankwatch_argv(tree: Path | None, args: Sequence[str]) -> list[str]:
    return python_argv(tree, ["-m", "rankwatch.cli", *args])


# -- step events in bulk ------------------------------------------------------------------------

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, as the simulator's default


def iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def healthy_step(job_id: str, rank: int, world: int, step: int, when: float) -> bytes:
    """One healthy step event as our producers encode it, without pydantic (millions of them
    are needed). Values move like the simulator's: a decaying loss with noise, a sawtooth in
    memory, per-rank throughput; no rule fires on them."""
    import orjson

    wobble = ((rank * 7919 + step * 104729) % 1000) / 1000.0  # deterministic noise in [0, 1)
    saw = step % 4
    return orjson.dumps(
        {
            "schema_version": 1,
            "job_id": job_id,
            "rank": rank,
            "host": f"node-{rank // 8}",
            "timestamp": iso(when),
            "kind": "step",
            "world_size": world,
            "step": step,
            "loss": 2.0 + 8.0 * 0.99**step + 0.05 * wobble,
            "learning_rate": 3e-4,
            "gradient_norm": 1.0 + 0.2 * wobble,
            "gpu_memory_usage": 64.0 + 2.0 * saw + 0.1 * wobble,
            "gpu_memory_allocated_mb": 52_000.0 + 450.0 * saw + 10 * wobble,
            "gpu_memory_reserved_mb": 55_296.0,
            "throughput_tokens_per_sec": 8_000.0 + 100.0 * wobble,
            "step_time_s": 1.0,
            "data_time_s": 0.02 + 0.01 * wobble,
            "compute_time_s": 0.85 + 0.02 * wobble,
        }
    )


def step_batch(job_id: str, world: int, step: int, when: float) -> list[bytes]:
    """All ranks of one step; ranks report a few ms apart, in rank order."""
    return [healthy_step(job_id, r, world, step, when + r * 1e-6) for r in range(world)]


# -- a local broker -------------------------------------------------------------------------------


def start_cluster(tmp: Path) -> Any:
    from rankwatch.infra.cluster import LocalCluster

    cluster = LocalCluster.create(tmp, port=0)
    started = time.perf_counter()
    cluster.start()
    print(f"broker {cluster.bootstrap} up in {time.perf_counter() - started:.1f} s", flush=True)
    return cluster


def produce_all(bootstrap: str, topic: str, key: bytes, values: Sequence[bytes]) -> float:
    """Produce ``values`` as fast as librdkafka takes them; returns the seconds it took."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000, "acks": "1"}
    )
    started = time.perf_counter()
    for value in values:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    return time.perf_counter() - started


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        out = {}
        for p in meta.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out[p] = high
        return out
    finally:
        consumer.close()


def committed_total(admin: Any, group: str, topic: str, partitions: Sequence[int]) -> int:
    """Sum of a group's committed offsets on ``topic`` (0 where none yet)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    future = admin.list_consumer_group_offsets([request])[group]
    total = 0
    for tp in future.result(timeout=10).topic_partitions:
        if tp.offset is not None and tp.offset > 0:
            total += tp.offset
    return total
