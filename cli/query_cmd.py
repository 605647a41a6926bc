"""``rankwatch logs|steps|jobs``: what storage knows, as a table or JSON lines (``--json``).

- ``rankwatch logs --job J [--rank R] [--since 10m] [--level ERROR] [--grep TEXT]``
- ``rankwatch steps --job J --metric loss [--ranks 0-7] [--plot FILE.png]``
- ``rankwatch jobs``
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from rankwatch.sinks.query.cli import add_store_args, guarded, open_store_from_args, print_out


def register(sub: Any) -> None:
    from rankwatch.sinks.storage import LEVELS, METRICS

    logs = sub.add_parser("logs", help="a job's stored log records")
    logs.add_argument("--job", required=True, help="job id")
    logs.add_argument("--rank", type=int, default=None, help="only this rank")
    logs.add_argument("--since", default=None, help="10m, 2h, 7d, or an ISO 8601 time")
    logs.add_argument(
        "--level", default=None, type=str.upper, choices=list(LEVELS), help="this level and above"
    )
    logs.add_argument(
        "--grep",
        default=None,
        metavar="TEXT",
        help="records containing these words, in this order (full-text search)",
    )
    logs.add_argument("--limit", type=int, default=1000, help="the latest N records (1000)")
    logs.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_store_args(logs)
    logs.set_defaults(handler=_logs)

    steps = sub.add_parser("steps", help="one metric of every rank of a job, side by side")
    steps.add_argument("--job", required=True, help="job id")
    steps.add_argument("--metric", required=True, choices=list(METRICS))
    steps.add_argument("--ranks", default=None, help="e.g. 0-7,12 (default: all)")
    steps.add_argument("--since", default=None, help="10m, 2h, 7d, or an ISO 8601 time")
    steps.add_argument(
        "--plot", default=None, metavar="FILE.png", help="also write a PNG of the per-rank curves"
    )
    steps.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_store_args(steps)
    steps.set_defaults(handler=_steps)

    jobs = sub.add_parser(
        "jobs", help="the jobs seen: running, ended or stopped; ranks, last step, open alerts"
    )
    jobs.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_store_args(jobs)
    jobs.set_defaults(handler=_jobs)


@guarded("logs")
def _logs(args: argparse.Namespace) -> int:
    from rankwatch.sinks.query.specs import parse_since
    from rankwatch.sinks.query.table import json_line, render_table
    from rankwatch.sinks.storage import LogQuery

    since = parse_since(args.since) if args.since else None
    with open_store_from_args(args) as store:
        found = store.logs(
            LogQuery(
                job_id=args.job,
                rank=args.rank,
                since=since,
                level=args.level,
                grep=args.grep,
                limit=args.limit,
            )
        )
    if args.json:
        for row in found:
            print_out(
                json_line(
                    {
                        "job_id": row.job_id,
                        "rank": row.rank,
                        "timestamp": row.timestamp,
                        "level": row.level,
                        "logger": row.logger,
                        "step": row.step,
                        "host": row.host,
                        "message": row.message,
                    }
                )
            )
        return 0
    # A traceback stays in its record: continuation lines are indented under the message.
    table_rows = [
        [r.timestamp, r.rank, r.level, r.message.replace("\n", "\n" + " " * 8)] for r in found
    ]
    print_out(render_table(["TIME", "RANK", "LEVEL", "MESSAGE"], table_rows))
    if len(found) == args.limit:
        print_out(f"(the latest {args.limit} records; --limit shows more)")
    return 0


@guarded("steps")
def _steps(args: argparse.Namespace) -> int:
    from rankwatch.sinks.query.specs import parse_ranks, parse_since
    from rankwatch.sinks.query.table import json_line, render_table
    from rankwatch.sinks.storage import StepQuery

    ranks = parse_ranks(args.ranks) if args.ranks else None
    since = parse_since(args.since) if args.since else None
    with open_store_from_args(args) as store:
        points = store.steps(
            StepQuery(job_id=args.job, metric=args.metric, ranks=ranks, since=since)
        )
    if args.plot:
        from rankwatch.sinks.query.plot import plot_steps

        path = plot_steps(points, job_id=args.job, metric=args.metric, path=Path(args.plot))
        print_out(f"wrote {path} ({len({p.rank for p in points})} ranks, {len(points)} points)")
        return 0
    if args.json:
        for p in points:
            print_out(
                json_line(
                    {"rank": p.rank, "step": p.step, args.metric: p.value, "timestamp": p.timestamp}
                )
            )
        return 0
    # Side by side: one row per step, one column per rank.
    by_step: dict[int, dict[int, float | None]] = defaultdict(dict)
    for p in points:
        by_step[p.step][p.rank] = p.value
    columns = sorted({p.rank for p in points})
    rows = [[step, *(by_step[step].get(rank) for rank in columns)] for step in sorted(by_step)]
    print_out(render_table(["STEP", *(f"rank {r}" for r in columns)], rows))
    return 0


@guarded("jobs")
def _jobs(args: argparse.Namespace) -> int:
    from rankwatch.sinks.query.table import json_line, render_table

    with open_store_from_args(args) as store:
        found = store.jobs()
    if args.json:
        for j in found:
            print_out(
                json_line(
                    {
                        "job_id": j.job_id,
                        "ranks": j.ranks,
                        "min_rank": j.min_rank,
                        "max_rank": j.max_rank,
                        "last_step": j.last_step,
                        "last_seen": j.last_seen,
                        "open_alerts": j.open_alerts,
                        "state": j.state,
                    }
                )
            )
        return 0
    rows = [
        [
            j.job_id,
            j.state,
            j.ranks,
            f"{j.min_rank}-{j.max_rank}",
            j.last_step,
            j.last_seen,
            j.open_alerts,
        ]
        for j in found
    ]
    header = ["JOB", "STATE", "RANKS", "RANGE", "LAST STEP", "LAST SEEN", "OPEN ALERTS"]
    print_out(render_table(header, rows))
    return 0
