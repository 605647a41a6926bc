"""``rankwatch simulate``: a synthetic data-parallel job, with faults, into Kafka or a file.

    rankwatch simulate --ranks 64 --steps 300 --scenario memory_leak@100:5,cuda_oom \\
        [--step-time 1.0] [--realtime] [--seed 7] [--job ID] (--bootstrap HOST:PORT | -o FILE)
    rankwatch simulate --list

To Kafka, every simulated rank sends through its own real producer (as each trainer process
would). Without ``--realtime`` the job runs as fast as it can on a synthetic clock starting
2026-01-01T00:00:00Z, so the same arguments give the same events; with ``--realtime`` events
are sent when their time comes, starting now, at the pace of the simulated steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rankwatch.cli import common


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "simulate",
        help="a simulated training job with injected faults, into Kafka or a file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ranks", type=int, default=8, help="ranks of the job (default 8)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    parser.add_argument(
        "--scenario",
        default="",
        metavar="NAME[@STEP][:RANK],...",
        help="faults to inject (see --list; 'demo' is the demo's set); default: a healthy job",
    )
    parser.add_argument(
        "--step-time",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="nominal seconds per step (default 1.0; checkpoints take 20 steps' time)",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="send each event when its time comes (timestamps from now), not as fast as possible",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--job", default=None, help="job id (default: sim-YYYYmmdd-HHMMSS, UTC, from now)"
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help="write JSON lines here ('-': stdout) instead of sending to Kafka",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the scenarios and what each should fire"
    )
    common.add_connection_args(parser)
    parser.set_defaults(handler=common.reports_errors(_run))


def _fail(message: str) -> int:
    print(f"rankwatch simulate: error: {message}", file=sys.stderr)
    return common.EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    from rankwatch.simulate import JobSpec, simulate
    from rankwatch.simulate.plan import PlanError, describe_scenarios, parse_plan
    from rankwatch.simulate.publish import (
        MAX_PRODUCERS,
        Destination,
        FileDestination,
        RankProducers,
        publish,
    )

    if args.list:
        print(describe_scenarios())
        return 0
    if args.ranks < 1 or args.steps < 1 or not args.step_time > 0:
        return _fail("--ranks and --steps must be >= 1 and --step-time > 0")
    if args.output is None and args.ranks > MAX_PRODUCERS:
        return _fail(
            f"--ranks {args.ranks}: to Kafka the simulator runs one real producer per rank, "
            f"{MAX_PRODUCERS} at most; write larger jobs to a file with --output"
        )
    now = time.time()
    job_id = args.job or f"sim-{datetime.fromtimestamp(now, UTC):%Y%m%d-%H%M%S}"
    fields: dict[str, Any] = {"start_time": now} if args.realtime else {}
    try:
        spec = JobSpec(
            job_id=job_id,
            ranks=args.ranks,
            steps=args.steps,
            step_time_s=args.step_time,
            seed=args.seed,
            checkpoint_s=20.0 * args.step_time,
            **fields,
        )
        plan = parse_plan(args.scenario, spec)
    except PlanError as exc:
        return _fail(str(exc))
    destination: Destination
    if args.output is not None:
        destination = FileDestination(args.output)
        where = "stdout" if str(args.output) == "-" else str(args.output)
    else:
        settings = common.settings_from_args(args)
        destination = RankProducers(settings, spec.ranks)
        where = f"Kafka at {settings.bootstrap} (one producer per rank)"
    faults = ", ".join(f"{s.name}@{s.at_step}:{s.rank}" for s in plan) or "none"
    print(
        f"rankwatch simulate: job {job_id}, {args.ranks} ranks, {args.steps} steps, "
        f"faults: {faults} -> {where}",
        file=sys.stderr,
    )
    started = time.monotonic()
    try:
        sent = publish(simulate(spec, plan), destination, realtime=args.realtime)
    except BrokenPipeError:  # `rankwatch simulate -o - | head`
        sys.stderr.close()
        return 0
    print(
        f"rankwatch simulate: sent {sent.steps} step and {sent.logs} log events "
        f"(last step {sent.last_step}) in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    if sent.undelivered:
        return _fail(f"{sent.undelivered} events were not delivered")
    return 0
