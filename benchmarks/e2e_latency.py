"""End-to-end alert latency: an OOM record produced -> its alert on the alerts topic, p50 and
p99, while one ``rankwatch worker`` carries a large job stepping once a second.

A local broker (started here) gets the four topics and a real ``rankwatch worker`` (the
default batch runtime; ``--runtime faust`` for the Faust one) in a child process. A second
child process produces the background load: every second, one step of every rank of a
``--ranks`` job (16,384 by default: 16k step events/s), as a burst, the way synchronous ranks
report after their all-reduce. Once the load has run ``--warmup`` seconds, this process sends
``--probes`` CUDA OOM log records, ``--probe-rate`` a second, each on a job of its own (so
incident suppression cannot swallow one), and a consumer of the alerts topic in this process
timestamps each probe's ``cuda_oom`` alert. Latency is receive time minus send time on the
same clock (one machine). A probe that has no alert within ``--timeout`` seconds of the last
send is reported as lost.

The load process reports the rate it actually sustained; when it (or the worker) cannot keep
up, the figure says so rather than pretending.

    .venv/bin/python benchmarks/e2e_latency.py [--ranks 16384] [--probes 200]
        [--probe-rate 4] [--warmup 15] [--runtime batch|faust]

Writes ``benchmarks/results/e2e_latency-<ranks>.json`` (``-<ranks>-faust.json`` for Faust;
``--baseline REV`` runs the worker of commit REV instead, ``-<ranks>-baseline-REV.json``).
Figures: ``RESULTS.md``, "Latency".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import _bench
import orjson

LOAD_JOB = "bench-load-job"


# -- the background load (a child process) -------------------------------------------------------
def load_child(bootstrap: str, topic: str, ranks: int, duration_s: float, job: str) -> None:
    """One step of every rank each second, for ``duration_s``; prints what it sustained."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1_000_000, "acks": "1"}
    )
    key = job.encode()
    # Per rank, the parts that do not change from step to step, encoded once: the load must
    # cost the producer little, so the worker gets the CPU.
    heads = [
        b'{"schema_version":1,"job_id":"%s","rank":%d,"host":"node-%d","kind":"step",'
        b'"world_size":%d,"timestamp":"' % (job.encode(), r, r // 8, ranks)
        for r in range(ranks)
    ]
    tails = [
        [
            orjson.dumps(
                {
                    "learning_rate": 3e-4,
                    "gradient_norm": 1.0 + 0.2 * w,
                    "gpu_memory_usage": 64.0 + 2.0 * saw + 0.1 * w,
                    "gpu_memory_allocated_mb": 52_000.0 + 450.0 * saw + 10 * w,
                    "gpu_memory_reserved_mb": 55_296.0,
                    "throughput_tokens_per_sec": 8_000.0 + 100.0 * w,
                    "step_time_s": 1.0,
                    "data_time_s": 0.02 + 0.01 * w,
                    "compute_time_s": 0.85 + 0.02 * w,
                }
            )[1:]
            for saw in range(4)
        ]
        for w in ((r * 7919 % 1000) / 1000.0 for r in range(ranks))
    ]
    started = time.time()
    sent = late = 0
    step = 0
    while True:
        due = started + step  # step k is due at second k
        now = time.time()
        if now - started >= duration_s:
            break
        if due > now:
            time.sleep(due - now)
        elif now - due > 1.0:
            late += 1  # a whole step behind: this machine cannot produce the rate
        ts = _bench.iso(time.time()).encode()
        loss = b"%.5f" % (2.0 + 8.0 * 0.99**step)
        saw = step % 4
        for r in range(ranks):
            value = b'%s%s","step":%d,"loss":%s,%s' % (heads[r], ts, step, loss, tails[r][saw])
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
        sent += ranks
        step += 1
    producer.flush(30)
    elapsed = time.time() - started
    print(json.dumps({"sent": sent, "seconds": elapsed, "rate": sent / elapsed, "late": late}))


# -- probes and their alerts --------------------------------------------------------------------
class AlertWatch(threading.Thread):
    """Consumes the alerts topic; records when each probe's alert came."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-alerts-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        # The topic was created by this run: everything on it is ours, from the beginning.
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        self.received: dict[str, float] = {}
        self.other_alerts = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error() is not None:
                continue
            now = time.perf_counter()
            alert = orjson.loads(msg.value())
            if alert.get("rule") != "cuda_oom":
                self.other_alerts += 1
            elif alert["job_id"].startswith("probe-"):
                self.received.setdefault(alert["job_id"], now)
            elif alert["job_id"] == LOAD_JOB:  # in-band probes: one rank each
                for rank in alert["ranks"]:
                    self.received.setdefault(f"{LOAD_JOB}/{rank}", now)
        self.consumer.close()


class LagWatch(threading.Thread):
    """Scrapes the worker's ``/metrics`` once a second: its consumer lag on the steps topic
    (messages on the broker past the worker's *position*, from librdkafka's statistics).

    Committed offsets alone cannot tell "keeps up" from "falls behind": they move only at a
    snapshot, so a worker that keeps up is still up to a snapshot interval behind in them. The
    position is what the worker has processed. Keeping up: the lag stays bounded through the
    load, and drains within seconds once the load ends.
    """

    def __init__(self, port: int, topic: str) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.topic = f'topic="{topic}"'
        self.samples: list[tuple[float, int]] = []  # (seconds since start, lag)
        self.started = time.perf_counter()
        self.stop = threading.Event()

    def lag(self) -> int | None:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return None
        found = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("rankwatch_worker_consumer_lag{") and self.topic in line
        ]
        return int(sum(found)) if found else None

    def run(self) -> None:
        while not self.stop.wait(1.0):
            lag = self.lag()
            if lag is not None:
                self.samples.append((round(time.perf_counter() - self.started, 2), lag))

    def summary(self, load_s: float) -> dict[str, Any]:
        """The lag through the load (means of its halves, max) and after it: how long the
        worker took to reach the topic's end once the load stopped (None: not within the
        wait)."""
        during = [lag for t, lag in self.samples if t <= load_s]
        after = [(t, lag) for t, lag in self.samples if t > load_s]
        half = len(during) // 2
        drained = next((t - load_s for t, lag in after if lag == 0), None)
        return {
            "samples": self.samples,
            "max_during_load": max(during, default=None),
            "mean_first_half": sum(during[:half]) / half if half else None,
            "mean_second_half": (
                sum(during[half:]) / (len(during) - half) if len(during) > half else None
            ),
            "at_load_end": during[-1] if during else None,
            "drained_s_after_load": drained,
        }


def oom_record(job: str, rank: int) -> bytes:
    return orjson.dumps(
        {
            "kind": "log",
            "job_id": job,
            "rank": rank,
            "host": f"node-{rank // 8}",
            "timestamp": time.time(),
            "level": "ERROR",
            "logger": "train",
            "message": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
            "GPU 0 has a total capacity of 79.11 GiB of which 1.02 GiB is free.",
        }
    )


def send_probe(producer: Any, topic: str, job: str, rank: int, sent: dict[str, float]) -> None:
    value = oom_record(job, rank)
    sent[job if job != LOAD_JOB else f"{LOAD_JOB}/{rank}"] = time.perf_counter()
    producer.produce(topic, value, job.encode())
    producer.poll(0)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # our own child's group (start_new_session)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from confluent_kafka import Producer

    from rankwatch.config import Settings
    from rankwatch.infra.admin import create_topics

    cluster = _bench.start_cluster(tmp / "kafka")
    procs: list[subprocess.Popen[bytes]] = []
    watch: AlertWatch | None = None
    try:
        bootstrap = cluster.bootstrap
        settings = Settings().with_bootstrap(bootstrap)
        create_topics(settings)
        topics = settings.topics
        watch = AlertWatch(bootstrap, topics.alerts.name)
        watch.start()
        app_id = f"bench-latency-{uuid.uuid4().hex[:8]}"
        worker_log = tmp / "worker.log"
        # The worker's lag is read from its /metrics, which the batch runtime serves (the
        # Faust runtime has none: its lag is not reported).
        metrics_port = _bench.free_port() if args.runtime == "batch" else None
        serve = [] if metrics_port is None else ["--metrics-port", str(metrics_port)]
        with worker_log.open("wb") as log:
            tree = _bench.baseline_tree(args.baseline) if args.baseline else None
            argv = _bench.rankwatch_argv(
                tree,
                ["worker", "--bootstrap", bootstrap, "--app-id", app_id,
                 "--data-dir", str(tmp / "worker"), "--loglevel", "warn",
                 "--runtime", args.runtime, *serve],
            )  # fmt: skip
            procs.append(
                subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
        probes = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "1"})
        sent: dict[str, float] = {}
        # Ready when a first probe comes back: the worker has its partitions and is running.
        started = time.perf_counter()
        while "probe-ready" not in watch.received:
            if procs[0].poll() is not None:
                raise SystemExit(f"worker exited:\n{worker_log.read_text()[-3000:]}")
            if time.perf_counter() - started > 180:
                raise SystemExit(f"worker not ready in 180 s:\n{worker_log.read_text()[-3000:]}")
            send_probe(probes, topics.logs.name, "probe-ready", 0, sent)
            time.sleep(2.0)
        print(f"worker ready after {time.perf_counter() - started:.1f} s", flush=True)
        duration = args.warmup + args.probes / args.probe_rate + 5
        load_out = tmp / "load.json"
        with load_out.open("wb") as out:
            argv = _bench.python_argv(
                None,
                [__file__, "--load-child", bootstrap, "--ranks", str(args.ranks),
                 "--duration", str(duration)],
            )  # fmt: skip
            procs.append(subprocess.Popen(argv, stdout=out, start_new_session=True))
        lags = LagWatch(metrics_port, topics.steps.name) if metrics_port is not None else None
        if lags is not None:
            lags.start()
        time.sleep(args.warmup)
        print(f"load running; {args.probes} probes at {args.probe_rate}/s", flush=True)
        first = time.perf_counter()
        # Out-of-band probes (a job of their own, so another partition than the load's) and,
        # with --in-band, as many OOMs of the load job itself (distinct ranks): these queue
        # behind the load's own backlog when the worker does not keep up with it.
        wanted = {f"probe-{i:04d}" for i in range(args.probes)}
        in_band = {f"{LOAD_JOB}/{100 + i}" for i in range(args.probes)} if args.in_band else set()
        for i in range(args.probes):
            due = first + i / args.probe_rate
            time.sleep(max(0.0, due - time.perf_counter()))
            send_probe(probes, topics.logs.name, f"probe-{i:04d}", i % 64, sent)
            if in_band:
                send_probe(probes, topics.logs.name, LOAD_JOB, 100 + i, sent)
        probes.flush(10)
        deadline = time.perf_counter() + args.timeout
        wanted |= in_band
        while time.perf_counter() < deadline and not wanted <= watch.received.keys():
            time.sleep(0.1)
        if procs[1].wait(duration + 60) != 0:
            raise SystemExit("the load process failed")
        load = json.loads(load_out.read_text().strip().splitlines()[-1])
        # The load has ended: give the worker up to a minute to reach the topic's end.
        load_s = load["seconds"]
        if lags is not None:
            deadline = time.perf_counter() + 60
            while time.perf_counter() < deadline and not any(
                t > load_s and lag == 0 for t, lag in lags.samples
            ):
                time.sleep(0.5)
            lags.stop.set()
        load["worker_lag"] = lags.summary(load_s) if lags is not None else None
        # How far the worker is behind the load when it ends: its group's committed offsets
        # (a snapshot interval behind at most, when it keeps up) against the topic's end.
        from confluent_kafka.admin import AdminClient

        steps_end = _bench.end_offsets(bootstrap, topics.steps.name)
        committed = _bench.committed_total(
            AdminClient({"bootstrap.servers": bootstrap}), app_id, topics.steps.name, [*steps_end]
        )
        load["backlog_at_end"] = sum(steps_end.values()) - committed
    finally:
        if watch is not None:
            watch.stop.set()
        for proc in procs:
            stop(proc)
        cluster.stop(purge=True)
    got = watch.received
    out_of_band = sorted(j for j in wanted if j.startswith("probe-"))
    latencies = [(got[j] - sent[j]) * 1000 for j in out_of_band if j in got]
    band = [(got[j] - sent[j]) * 1000 for j in sorted(in_band, key=_rank_of) if j in got]
    half = len(latencies) // 2
    return {
        "ranks": args.ranks,
        "load": load,
        "probes": args.probes,
        "received": len(latencies),
        "lost": args.probes - len(latencies),
        "in_band": {
            "probes": len(in_band),
            "received": len(band),
            "p50_ms": _bench.percentile(band, 50),
            "p99_ms": _bench.percentile(band, 99),
            "first_ms": band[0] if band else None,
            "last_ms": band[-1] if band else None,
        },
        "latency_ms": {
            "p50": _bench.percentile(latencies, 50),
            "p90": _bench.percentile(latencies, 90),
            "p99": _bench.percentile(latencies, 99),
            "max": max(latencies, default=float("nan")),
            "first_half_p50": _bench.percentile(latencies[:half], 50),
            "second_half_p50": _bench.percentile(latencies[half:], 50),
        },
        "other_alerts": watch.other_alerts,
        "all_ms": [round(x, 1) for x in latencies],
    }


def load_backlog(result: dict[str, Any]) -> int:
    return int(result["load"].get("backlog_at_end", -1))


def _rank_of(key: str) -> int:
    return int(key.rsplit("/", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=16_384, help="background job: events/s")
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--probe-rate", type=float, default=4.0, help="probes per second")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of load first")
    parser.add_argument("--timeout", type=float, default=60.0, help="wait for late alerts")
    parser.add_argument(
        "--in-band", action="store_true", help="also OOMs of the load job itself (its backlog)"
    )
    parser.add_argument(
        "--runtime", choices=("batch", "faust"), default="batch", help="the worker's runtime"
    )
    parser.add_argument(
        "--baseline", metavar="REV", help="run the worker of this commit instead of this tree's"
    )
    parser.add_argument("--load-child", metavar="BOOTSTRAP", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        from rankwatch.config import Settings

        steps = Settings().topics.steps.name
        load_child(args.load_child, steps, args.ranks, args.duration, LOAD_JOB)
        return
    with tempfile.TemporaryDirectory(prefix="rw-latency-") as tmp, _bench.LoadSampler() as load:
        result = measure(args, Path(tmp))
    result = {
        "machine": _bench.machine(),
        "load_1min": load.summary(),
        "runtime": args.runtime,
        **result,
    }
    lat = result["latency_ms"]
    print(
        f"\nbackground: {result['load']['rate']:,.0f} step events/s sustained by the producer "
        f"(asked {args.ranks:,}/s, {result['load']['late']} steps late); "
        f"load (1 min) {load.summary()}"
    )
    print(
        f"OOM -> alert over {result['received']}/{args.probes} probes ({result['lost']} lost): "
        f"p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f} ms, p99 {lat['p99']:.0f} ms, "
        f"max {lat['max']:.0f} ms (p50 first half {lat['first_half_p50']:.0f} ms, "
        f"second half {lat['second_half_p50']:.0f} ms)"
    )
    print(
        f"worker's committed offsets behind the steps topic when the load ended: "
        f"{load_backlog(result):,} events (they move at snapshots)"
    )
    lag = result["load"]["worker_lag"]
    if lag is None:
        print("worker's lag: not reported (the Faust runtime serves no /metrics)")
    else:
        print(
            f"worker's position behind the steps topic (its lag), sampled each second: mean "
            f"{lag['mean_first_half']} in the load's first half, {lag['mean_second_half']} in its "
            f"second, max {lag['max_during_load']}, {lag['at_load_end']} when it ended; "
            f"reached the end {lag['drained_s_after_load']} s after the load ended"
        )
    band = result["in_band"]
    if band["probes"]:
        print(
            f"in-band (OOMs of the load job itself, behind its backlog): {band['received']}/"
            f"{band['probes']} alerted within the wait; p50 {band['p50_ms']:.0f} ms, "
            f"p99 {band['p99_ms']:.0f} ms, first {band['first_ms']} ms, last {band['last_ms']} ms"
        )
    suffix = "" if args.runtime == "batch" else f"-{args.runtime}"
    if args.baseline:
        suffix += f"-baseline-{args.baseline}"
    _bench.write_results(f"e2e_latency-{args.ranks}{suffix}", result)


if __name__ == "__main__":
    sys.exit(main())
