"""Worker throughput: step events/s through every detector in one ``rankwatch worker`` process,
beside the raw consume-and-decode rate of the same topic (the limit).

A local broker (started here, on free ports) gets the four topics; the steps topic is
pre-filled with ``--ranks`` x ``--steps`` healthy step events of one large job (default
16,384 x 64 = 1,048,576 events, all on the job's partition, key = job_id). Then, in one run:

1. the reference: a confluent-kafka consumer reads the topic from the start and ``decode``s
   every message (``--rounds`` times; also the consume-only rate);
2. the real ``rankwatch worker`` in a child process, once per runtime (``--runtime batch``,
   the default, and ``--runtime faust``), each in a fresh consumer group; its group's
   committed offsets are polled; the rate is the events committed between the first commit
   and the last one made while a backlog remained, over the time between them (start-up and
   the commit lag at both ends cancel), and the worker's own snapshot and commit cadence is
   included as it runs live;
3. with ``--baseline REV``: the worker of commit REV on the same topic (before/after);
4. with ``--metrics``: the batch runtime again with ``--metrics-port``, its ``/metrics``
   scraped every second meanwhile (as Prometheus would), beside the run without.

    .venv/bin/python benchmarks/worker_throughput.py [--ranks 16384] [--steps 64]
        [--runtimes batch,faust] [--baseline REV] [--metrics] [--profile FILE]

Writes ``benchmarks/results/worker_throughput.json``. Figures: ``RESULTS.md``, "Worker".
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import _bench


def consume_reference(bootstrap: str, topic: str, total: int, stage: str) -> tuple[float, float]:
    """Events/s of a plain confluent-kafka consumer over the whole topic, doing ``stage`` to
    each message: nothing ("consume"), ``decode`` ("decode"), or the worker's own
    ``Pipeline.handle`` with every detector but without Faust ("pipeline"; "pipeline-gc" with
    the batch worker's garbage-collector settings, :func:`tune_gc`)."""
    from confluent_kafka import Consumer

    from rankwatch.schemas import decode
    from rankwatch.streams import Engine
    from rankwatch.streams.pipeline import Pipeline

    handle = Pipeline(Engine.with_builtin_detectors()).handle
    thresholds = gc.get_threshold()
    if stage == "pipeline-gc":  # the batch worker's GC settings, in this process for the run
        from rankwatch.streams.batch_worker import tune_gc

        tune_gc()

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-ref-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 10_485_760,
        }
    )
    consumer.subscribe([topic])
    n = 0
    started = None
    try:
        while n < total:
            messages = consumer.consume(num_messages=10_000, timeout=1.0)
            if not messages:
                continue
            if started is None:
                started, cpu = time.perf_counter(), time.process_time()
            for msg in messages:
                if msg.error() is None:
                    if stage == "decode":
                        decode(msg.value())
                    elif stage in ("pipeline", "pipeline-gc"):
                        handle(msg.value(), partition=msg.partition(), offset=msg.offset())
                    n += 1
        assert started is not None
        return n / (time.perf_counter() - started), n / (time.process_time() - cpu)
    finally:
        consumer.close()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def run_worker(
    bootstrap: str,
    tree: Path | None,
    topic: str,
    total: int,
    tmp: Path,
    timeout_s: float,
    profile: Path | None = None,
    direct: bool = False,
    runtime: str | None = None,
    metrics: bool = False,
) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient

    app_id = f"bench-worker-{uuid.uuid4().hex[:8]}"
    args = [
        "worker",
        "--bootstrap",
        bootstrap,
        "--app-id",
        app_id,
        "--data-dir",
        str(tmp / app_id),
        "--loglevel",
        "warn",
    ]
    if runtime is not None:  # None: the tree's default (a baseline may predate --runtime)
        args += ["--runtime", runtime]
    scraper = Scraper() if metrics else None
    if scraper is not None:
        args += ["--metrics-port", str(scraper.port)]
    if direct:  # the experiment: Faust's fetcher without wait_first per message
        argv = _bench.python_argv(tree, [str(Path(__file__).with_name("_faust_direct.py")), *args])
    else:
        argv = _bench.rankwatch_argv(tree, args)
    if profile is not None:  # pyinstrument around the whole worker: where its time goes
        argv[1:1] = ["-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(profile)]
    log_path = tmp / f"{app_id}.log"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = sorted(_bench.end_offsets(bootstrap, topic))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if scraper is not None:
        scraper.start()
    points: list[tuple[float, int]] = []
    cpu: list[float] = []  # the worker's CPU seconds at each point: immune to a busy machine
    launched = time.perf_counter()
    try:
        while time.perf_counter() - launched < timeout_s:
            if proc.poll() is not None:
                tail = log_path.read_text()[-3000:]
                raise SystemExit(f"worker exited {proc.returncode}:\n{tail}")
            done = _bench.committed_total(admin, app_id, topic, partitions)
            now = time.perf_counter()
            if done and (not points or done != points[-1][1]):
                points.append((now, done))
                cpu.append(_bench.cpu_seconds(proc.pid))
                print(f"  {now - launched:6.1f} s: {done:>9,} committed", flush=True)
            if done >= total:
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"worker did not finish in {timeout_s} s: {points[-1:]}")
    finally:
        if scraper is not None:
            scraper.stop()
        stop(proc)
    # Timed from the first commit to the last one made while a backlog remained: the final
    # commit waits for the next snapshot after the worker ran dry, idle time that is not
    # throughput (it is up to a snapshot interval, as long as a fast worker's whole run).
    last = max((i for i, (_, n) in enumerate(points) if n < total), default=len(points) - 1)
    if last < 1:
        last = len(points) - 1
    (t0, n0), (t1, n1) = points[0], points[last]
    rate = (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")
    cpu_s = cpu[last] - cpu[0]
    return {
        "rate": rate,
        "cpu_rate": (n1 - n0) / cpu_s if cpu_s > 0 else float("nan"),
        "cpu_seconds_timed": cpu_s,
        "events_timed": n1 - n0,
        "seconds_timed": t1 - t0,
        "first_commit_after_s": t0 - launched,
        "all_done_after_s": t1 - launched,
        "commits": len(points),
        "commits_timed": last + 1,
        **({"scrapes": scraper.scrapes, "scrape_failures": scraper.failures} if scraper else {}),
    }


class Scraper(threading.Thread):
    """GET the worker's ``/metrics`` every second, as a Prometheus scraping it would."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.scrapes = self.failures = 0
        self._done = threading.Event()

    def run(self) -> None:
        import urllib.request

        while not self._done.wait(1.0):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5):
                    self.scrapes += 1
            except OSError:
                self.failures += 1  # not listening yet, at start

    def stop(self) -> None:
        self._done.set()
        self.join(10)


FAUST_DIRECT = "experiment: Faust fetcher without wait_first"
WITH_METRICS = "batch runtime, this tree, --metrics-port scraped 1/s"


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group (ours alone: start_new_session), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=16_384)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="reference rounds")
    parser.add_argument(
        "--runtimes",
        default="batch,faust",
        help="worker runtimes of this tree to run, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--faust-events",
        type=int,
        default=196_608,
        help="the Faust runtime is timed over the first this many events only: at its rate "
        "the whole topic would take many minutes (default: %(default)s)",
    )
    parser.add_argument("--baseline", metavar="REV", help="also run the worker of this commit")
    parser.add_argument("--timeout", type=float, default=600.0, help="per worker run, seconds")
    parser.add_argument(
        "--faust-direct",
        action="store_true",
        help="also the experiment benchmarks/_faust_direct.py (Faust without wait_first)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also the batch runtime with --metrics-port, scraped every second",
    )
    parser.add_argument("--profile", metavar="FILE", help="pyinstrument the worker: text report")
    args = parser.parse_args()

    from rankwatch.config import Settings
    from rankwatch.infra.admin import create_topics

    runtimes = [r for r in args.runtimes.split(",") if r]
    if not runtimes or any(r not in ("batch", "faust") for r in runtimes):
        parser.error(f"--runtimes: batch and/or faust, comma-separated (got {args.runtimes!r})")
    # name -> (source tree, runtime); the first is the one --profile looks at
    trees: dict[str, tuple[Path | None, str | None]] = {
        f"{r} runtime, this tree": (None, r) for r in runtimes
    }
    if args.baseline:
        trees[f"baseline {args.baseline}"] = (_bench.baseline_tree(args.baseline), None)
    if args.faust_direct:
        trees[FAUST_DIRECT] = (None, None)
    if args.metrics:  # alternated twice: a shared machine's load drifts between runs
        trees[WITH_METRICS] = (None, "batch")
        trees["batch runtime, this tree (again)"] = (None, "batch")
        trees[f"{WITH_METRICS} (again)"] = (None, "batch")
    profiled = next(iter(trees))
    total = args.ranks * args.steps
    job = "bench-big-job"
    with tempfile.TemporaryDirectory(prefix="rw-bench-") as tmp_name, _bench.LoadSampler() as load:
        tmp = Path(tmp_name)
        cluster = _bench.start_cluster(tmp / "kafka")
        try:
            bootstrap = cluster.bootstrap
            settings = Settings().with_bootstrap(bootstrap)
            create_topics(settings)
            topic = settings.topics.steps.name
            started = time.perf_counter()
            produced = 0
            for step in range(args.steps):
                batch = _bench.step_batch(job, args.ranks, step, _bench.START + step)
                _bench.produce_all(bootstrap, topic, job.encode(), batch)
                produced += len(batch)
            print(f"{produced:,} events produced in {time.perf_counter() - started:.1f} s")
            # stage -> [(wall rate, CPU rate)] over the rounds
            refs: dict[str, list[tuple[float, float]]] = {}
            workers: dict[str, dict[str, Any]] = {}
            for i in range(args.rounds):
                line = f"reference {i + 1}:"
                for stage in ("consume", "decode", "pipeline", "pipeline-gc"):
                    rate = consume_reference(bootstrap, topic, total, stage)
                    refs.setdefault(stage, []).append(rate)
                    line += f" {stage} {rate[0]:,.0f}/s ({rate[1]:,.0f}/cpu-s)"
                print(line, flush=True)
                if i == 0:  # the workers between reference rounds, so the load is alike
                    for name, (tree, runtime) in trees.items():
                        print(f"worker [{name}]:", flush=True)
                        profile = Path(args.profile) if args.profile and name == profiled else None
                        w = run_worker(
                            bootstrap,
                            tree,
                            topic,
                            total if runtime != "faust" else min(total, args.faust_events),
                            tmp,
                            args.timeout,
                            profile,
                            direct=name == FAUST_DIRECT,
                            runtime=runtime,
                            metrics=name.startswith(WITH_METRICS),
                        )
                        workers[name] = w
                        print(
                            f"  -> {w['rate']:,.0f} events/s ({w['cpu_rate']:,.0f}/cpu-s)",
                            flush=True,
                        )
        finally:
            cluster.stop(purge=True)
    med = {
        stage: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        for stage, runs in refs.items()
    }
    ref, refc = med["decode"]
    results: dict[str, Any] = {
        "machine": _bench.machine(),
        "load_1min": load.summary(),
        "events": total,
        "ranks": args.ranks,
        "steps": args.steps,
        "reference": {stage: {"rate": m[0], "cpu_rate": m[1]} for stage, m in med.items()},
        "reference_runs": refs,
        "workers": {
            n: {**w, "ratio": w["rate"] / ref, "cpu_ratio": w["cpu_rate"] / refc}
            for n, w in workers.items()
        },
    }
    print(f"\n{total:,} step events of one {args.ranks}-rank job; load (1 min): {load.summary()}")
    print("| | events/s (wall) | ratio | events per CPU-second | ratio |")
    print("|---|---|---|---|---|")
    labels = {
        "consume": "confluent-kafka consume only",
        "decode": "confluent-kafka consume + decode (reference)",
        "pipeline": "confluent-kafka consume + Pipeline (all detectors, no Faust)",
        "pipeline-gc": "the same with the batch worker's GC thresholds (tune_gc)",
    }
    for stage, (rate, crate) in med.items():
        print(
            f"| {labels[stage]} | {rate:,.0f} | {rate / ref:.3f} | {crate:,.0f} "
            f"| {crate / refc:.3f} |"
        )
    for name, w in workers.items():
        print(
            f"| rankwatch worker [{name}] | {w['rate']:,.0f} | {w['rate'] / ref:.3f} "
            f"| {w['cpu_rate']:,.0f} | {w['cpu_rate'] / refc:.3f} |"
        )
    _bench.write_results("worker_throughput", results)


if __name__ == "__main__":
    sys.exit(main())
