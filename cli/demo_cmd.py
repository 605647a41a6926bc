"""``rankwatch demo``: the README's main command, rankwatch end to end on this machine.

    rankwatch demo [--ranks 64] [--duration 120 | --steps N] [--step-time 0.5]
                   [--port 9092 | --bootstrap HOST:PORT] [--keep-broker] [--ui-port 8765] [--keep]

It starts (or reuses) a local Kafka broker and creates the topics; starts ``rankwatch worker``
(the detectors) and ``rankwatch sink storage`` (into ``$RANKWATCH_HOME/demo.db``, SQLite) as
child processes; then runs a simulated data-parallel job in real time, every rank through its
own real producer, with four faults: a rank leaking GPU memory, a throttled GPU (a
straggler), a lone InfiniBand error, and finally the leaking rank running out of memory. The
alerts are printed as they fire; the summary says what was caught, where the data is, what to
query next, and writes a plot. The dashboard (``rankwatch ui``, on loopback) serves the store
while the job runs, and with ``--keep`` until Ctrl-C. Every process it started is stopped at
the end, also on Ctrl-C (and the broker too, unless ``--keep-broker`` or it was already
running).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rankwatch.cli._demo_procs import Child, DemoError, forget_run, start_at_end, stop_children
from rankwatch.cli._demo_view import AlertFollower, Console, clock

#: Event-time seconds per step, on average, relative to the nominal step time: the
#: collective, the straggler's drag, a checkpoint and the compile warm-up (for --duration).
_PACE = 1.3
_MIN_STEPS = 80  # the leak needs ~35 steps to show
_MIN_JOB_S = 18.0  # a lone NCCL error is decided after 10 s of quiet: the job must go on


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="the end-to-end demo: local Kafka, worker, storage, a simulated job with faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--ranks", type=int, default=64, help="ranks of the job (default 64)")
    length = demo.add_mutually_exclusive_group()
    length.add_argument(
        "--duration",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="about how long the job runs (default 120)",
    )
    length.add_argument("--steps", type=int, default=None, help="steps of the job, instead")
    demo.add_argument(
        "--step-time",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="nominal seconds per step (default 0.5; under 0.2 a straggler cannot be told "
        "from noise and is left out)",
    )
    kafka = demo.add_mutually_exclusive_group()
    kafka.add_argument(
        "--port", type=int, default=None, help="port of the local broker (default 9092)"
    )
    kafka.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,...]",
        default=None,
        help="use this Kafka cluster instead of a local broker (nothing is started or stopped "
        "there; the topics are created if missing)",
    )
    demo.add_argument(
        "--keep-broker",
        action="store_true",
        help="leave the broker running at the end (stop it: rankwatch broker stop)",
    )
    demo.add_argument(
        "--ui-port",
        type=int,
        default=8765,
        help="port of the dashboard on 127.0.0.1 (default 8765; a free one if taken)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="after the job, keep the dashboard serving until Ctrl-C",
    )
    demo.set_defaults(handler=_run)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


class Demo:
    """One run: what it started, so :meth:`cleanup` stops exactly that."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        from rankwatch.infra.cluster import run_dir

        self.args = args
        self.console = console
        self.home = run_dir()
        self.run_id = uuid.uuid4().hex[:8]
        started = datetime.now(UTC)
        self.job_id = f"demo-{started:%Y%m%d-%H%M%S}"
        self.app_id = f"rankwatch-demo-{self.run_id}"
        self.sink_group = f"rankwatch-demo-storage-{self.run_id}"
        self.run_dir = self.home / "demo" / f"{started:%Y%m%d-%H%M%S}-{self.run_id}"
        self.db_path = self.home / "demo.db"
        self.db_url = f"sqlite:///{self.db_path}"
        self.cluster: Any = None
        self.bootstrap = ""
        self.started_broker = False
        self.settings: Any = None
        self.children: list[Child] = []
        self.follower: AlertFollower | None = None
        self.dashboard = ""

    # ----- set-up ----------------------------------------------------------------------------

    def start_kafka(self) -> None:
        from rankwatch.config import load_settings
        from rankwatch.infra.admin import create_topics
        from rankwatch.infra.cluster import LocalCluster

        say = self.console.say
        if self.args.bootstrap:
            self.bootstrap = self.args.bootstrap
            say(f"using the Kafka cluster at {self.bootstrap}")
        else:
            say("starting a local Kafka broker (KRaft, Apache Kafka from Maven Central)...")
            t0 = time.monotonic()
            self.cluster, reused = LocalCluster.start_or_reuse(port=self.args.port)
            self.started_broker = not reused
            self.bootstrap = self.cluster.bootstrap
            verb = "reusing the broker already running" if reused else "broker up"
            say(f"{verb} at {self.bootstrap} ({time.monotonic() - t0:.1f} s)")
        self.settings = load_settings(bootstrap=self.bootstrap)
        results = create_topics(self.settings)
        created = [r.name for r in results if r.created]
        say(
            f"topics {', '.join(r.name for r in results)}: "
            + (f"{len(created)} created" if created else "already there")
        )

    def start_children(self) -> None:
        topics = self.settings.topics
        bootstrap = self.bootstrap
        inputs = [topics.steps.name, topics.logs.name]
        start_at_end(self.settings, self.app_id, inputs)
        start_at_end(self.settings, self.sink_group, [*inputs, topics.alerts.name])
        worker = Child(
            "rankwatch worker",
            ["worker", "--bootstrap", bootstrap, "--app-id", self.app_id,
             "--data-dir", str(self.run_dir / "worker-data"), "--session-timeout", "6"],
            self.run_dir / "worker.log",
        )  # fmt: skip
        sink = Child(
            "rankwatch sink storage",
            ["sink", "storage", "--db", self.db_url, "--bootstrap", bootstrap,
             "--group", self.sink_group, "--linger", "0.5s"],
            self.run_dir / "storage.log",
        )  # fmt: skip
        t0 = time.monotonic()
        for child in (worker, sink):
            self.children.append(child)
            child.start()
        self.console.say(
            f"started the detector worker (pid {worker.pid}) and the storage sink into "
            f"{_shown(self.db_path)} (pid {sink.pid}); their logs: {_shown(self.run_dir)}/"
        )
        sink.wait_for("consuming", 60)
        worker.wait_for(f"worker {self.app_id}:", 90)
        self.console.say(f"worker and sink ready ({time.monotonic() - t0:.1f} s)")
        self.start_dashboard()

    def start_dashboard(self) -> None:
        """``rankwatch ui`` over the demo's store, on loopback, stopped with the other children."""
        port = _free_or_any(self.args.ui_port)
        ui = Child(
            "rankwatch ui",
            ["ui", "--db", self.db_url, "--host", "127.0.0.1", "--port", str(port)],
            self.run_dir / "ui.log",
        )
        self.children.append(ui)
        ui.start()
        ui.wait_for("dashboard over", 30)
        self.dashboard = f"http://127.0.0.1:{port}/jobs/{self.job_id}"
        self.console.say(f"dashboard (live, this job's heatmaps and alerts): {self.dashboard}")

    def keep_serving(self) -> None:
        """``--keep``: the dashboard stays up until Ctrl-C (or SIGTERM)."""
        self.console.say(f"the dashboard keeps serving at {self.dashboard}; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while all(child.alive() for child in self.children):
                time.sleep(0.5)

    # ----- the job ---------------------------------------------------------------------------

    def run_job(self) -> tuple[Any, list[Any], Any]:
        from rankwatch.simulate import JobSpec, simulate
        from rankwatch.simulate.plan import demo_plan
        from rankwatch.simulate.publish import RankProducers, publish

        args = self.args
        steps = job_steps(args)
        spec = JobSpec(
            job_id=self.job_id,
            ranks=args.ranks,
            steps=steps,
            step_time_s=args.step_time,
            start_time=time.time(),
            warmup_steps=3,
            checkpoint_s=10 * args.step_time,
        )
        plan = demo_plan(spec)
        say = self.console.say
        hosts = -(-spec.ranks // spec.ranks_per_host)
        say(
            f"job {self.job_id}: {spec.ranks} ranks on {hosts} host{'s' * (hosts > 1)}, "
            f"{steps} steps of "
            f"~{args.step_time:g} s, each rank through its own producer; it will have:"
        )
        for scenario in plan:
            say(f"  step {scenario.at_step:>4}  rank {scenario.rank:>3}  {_FAULTS[scenario.name]}")
        self.follower = AlertFollower(self.settings, self.job_id, self.console)
        self.follower.start()
        t0 = time.monotonic()
        follower = self.follower

        def progress(step: int) -> None:
            self.console.progress(step, steps, time.monotonic() - t0, len(follower.firing()))

        try:
            sent = publish(
                simulate(spec, plan), RankProducers(self.settings, spec.ranks), realtime=True,
                progress=progress,
            )  # fmt: skip
        finally:
            self.console.end_progress()
        say(
            f"job over after {clock(time.monotonic() - t0)}: {sent.steps:,} step events and "
            f"{sent.logs:,} log records sent, {sent.undelivered} undelivered"
        )
        for child in self.children:
            if not child.alive():
                raise DemoError(f"{child.name} died; the end of {child.log}:\n{child.tail()}")
        return spec, plan, sent

    def wait_for_alerts(self, spec: Any, plan: list[Any], timeout_s: float = 30.0) -> list[Any]:
        """Wait until every expected alert arrived (or the timeout); return the missing ones."""
        from rankwatch.simulate.plan import expected_alerts

        assert self.follower is not None
        deadline = time.monotonic() + timeout_s
        while True:
            firing = self.follower.firing()
            missing = [
                (s, e)
                for s, e in expected_alerts(plan, spec)
                if not any(a.rule == e.rule and set(e.ranks) <= set(a.ranks) for a in firing)
            ]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)

    def wait_for_store(self, spec: Any, last_step: int, timeout_s: float = 30.0) -> None:
        from rankwatch.sinks.storage import open_store

        deadline = time.monotonic() + timeout_s
        with open_store(self.db_url) as store:
            while time.monotonic() < deadline:
                jobs = {j.job_id: j for j in store.jobs()}
                job = jobs.get(self.job_id)
                if job is not None and job.last_step == last_step and job.ranks == spec.ranks:
                    return
                time.sleep(0.5)
        self.console.say("(the storage sink is still catching up: the store may lag a little)")

    # ----- the end ---------------------------------------------------------------------------

    def summary(self, spec: Any, plan: list[Any], missing: list[Any]) -> None:
        from rankwatch.simulate.plan import allowed_rules

        assert self.follower is not None
        say, line = self.console.say, self.console.line
        firing = self.follower.firing()
        by_rule = Counter(a.rule for a in firing)
        allowed = allowed_rules(plan, spec)
        say(f"summary: {len(firing)} alerts for job {self.job_id}")
        line(f"    {'rule':<20} {'alerts':>6}  ranks")
        for rule, count in sorted(by_rule.items()):
            ranks = sorted({r for a in firing if a.rule == rule for r in a.ranks})
            note = "" if rule in allowed else "  (not expected)"
            shown_ranks = ",".join(map(str, ranks[:8])) or "all"
            line(f"    {rule:<20} {count:>6}  {shown_ranks}{note}")
        caught = len(plan) - len({id(s) for s, _ in missing})
        unexpected = sum(1 for a in firing if a.rule not in allowed)
        say(
            f"caught {caught} of {len(plan)} injected faults"
            + (f"; missed: {', '.join(e.rule for _, e in missing)}" if missing else "")
            + (f"; {unexpected} unexpected alerts" if unexpected else "; no false alarms")
        )
        db = f"sqlite:///{_shown(self.db_path)}"
        leak = next((s for s in plan if s.name == "memory_leak"), plan[0])
        slow = next((s.rank for s in plan if s.name == "straggler"), leak.rank)
        near = f"{max(0, slow - 2)}-{min(spec.ranks - 1, slow + 1)}"
        say(f"everything is stored in {_shown(self.db_path)} (SQLite); try:")
        for query in (
            f"rankwatch logs --db {db} --job {self.job_id} --rank {leak.rank} --level ERROR",
            f"rankwatch alerts --db {db} --job {self.job_id}",
            f"rankwatch steps --db {db} --job {self.job_id} --metric compute_time_s --ranks {near}",
            f"rankwatch jobs --db {db}",
        ):
            line(f"    {query}")
        plot = self._plot(leak.rank, spec.ranks)
        if plot is not None:
            say(f"plot of GPU memory per rank (rank {leak.rank} leaks): {_shown(plot)}")

    def _plot(self, leak_rank: int, ranks: int) -> Path | None:
        from rankwatch.sinks.storage import StepQuery, open_store

        try:
            from rankwatch.sinks.query.plot import plot_steps
        except ImportError:  # matplotlib is in the `sinks` extra
            return None
        shown = list(range(min(ranks, 16)))
        if leak_rank not in shown:
            shown[-1] = leak_rank
        metric = "gpu_memory_allocated_mb"
        with open_store(self.db_url) as store:
            points = store.steps(StepQuery(job_id=self.job_id, metric=metric, ranks=shown))
        path = self.home / f"{self.job_id}-memory.png"
        return plot_steps(points, job_id=self.job_id, metric=metric, path=path)

    def cleanup(self) -> None:
        """Stop what this run started; quietly, and never interrupted by a second Ctrl-C."""
        previous = {
            signum: signal.signal(signum, signal.SIG_IGN)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            if self.follower is not None:
                self.follower.stop()
            if self.children:
                self.console.say("stopping the worker and the storage sink...")
                stop_children(self.children)
            if self.settings is not None:
                forget_run(self.settings, self.app_id, [self.app_id, self.sink_group])
            with contextlib.suppress(OSError):
                import shutil

                shutil.rmtree(self.run_dir / "worker-data", ignore_errors=True)
            if self.cluster is not None and self.started_broker and not self.args.keep_broker:
                self.console.say("stopping the broker this demo started")
                self.cluster.stop()
            elif self.cluster is not None:
                self.console.say(
                    f"the broker at {self.cluster.bootstrap} keeps running "
                    "(stop it: rankwatch broker stop)"
                )
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


_FAULTS = {
    "memory_leak": "starts leaking GPU memory, 50 MB a step",
    "straggler": "its GPU throttles: 35% slower, and every rank waits for it",
    "nccl_error": "its InfiniBand link reports a completion error (NCCL WARN)",
    "cuda_oom": "runs out of GPU memory: CUDA OOM, torchrun stops the job",
}


def job_steps(args: argparse.Namespace) -> int:
    """``--steps``, or as many as fit in ``--duration``."""
    if args.steps is not None:
        return int(args.steps)
    duration: float = args.duration
    step_time: float = args.step_time
    return max(_MIN_STEPS, round(duration / (_PACE * step_time)))


def _check(args: argparse.Namespace) -> str | None:
    if args.ranks < 4:
        return f"--ranks {args.ranks}: the demo's faults need at least 4 ranks"
    if not args.step_time > 0:
        return f"--step-time must be > 0, got {args.step_time}"
    steps = job_steps(args)
    if steps < _MIN_STEPS or steps * args.step_time < _MIN_JOB_S:
        return (
            f"{steps} steps of {args.step_time:g} s are too short for the demo's faults: "
            f"it needs at least {_MIN_STEPS} steps and {_MIN_JOB_S:g} s"
        )
    return None


def _free_or_any(port: int) -> int:
    """``port`` if nothing listens there on loopback, else a free one."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    from rankwatch.config import ConfigError
    from rankwatch.infra import InfraError

    problem = _check(args)
    if problem:
        print(f"rankwatch demo: error: {problem}", file=sys.stderr)
        return 2
    console = Console()
    demo = Demo(args, console)
    # SIGTERM (a CI timeout, `kill`) cleans up like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.start_kafka()
        demo.start_children()
        spec, plan, sent = demo.run_job()
        missing = demo.wait_for_alerts(spec, plan)
        demo.wait_for_store(spec, sent.last_step)
        demo.summary(spec, plan, missing)
        if args.keep:
            demo.keep_serving()
        return 1 if missing or sent.undelivered else 0
    except KeyboardInterrupt:
        console.end_progress()
        console.say("interrupted")
        return 130
    except (DemoError, ConfigError, InfraError) as exc:
        console.end_progress()
        console.say(f"error: {exc}")
        if isinstance(exc, InfraError) and "in use" in str(exc):
            console.say(
                "(another Kafka there? run the demo on it with --bootstrap HOST:PORT, "
                "or pick a free port with --port)"
            )
        return 1
    finally:
        try:
            demo.cleanup()
        finally:
            signal.signal(signal.SIGTERM, previous)
