"""``rankwatch scenarios``: every fault scenario through the detectors; recall and false
positives, per job size."""

from __future__ import annotations

import argparse
import time
from typing import Any


def register(sub: Any) -> None:
    cmd = sub.add_parser(
        "scenarios",
        help="score the detectors on simulated faults (recall, false positives)",
        description="Runs each simulated fault scenario (and a healthy run) through the "
        "built-in detectors in-process and prints what fired. Exit 1 if an expected alert is "
        "missing or anything else fired.",
    )
    cmd.add_argument("--ranks", default="8,64,256", help="job sizes, comma-separated")
    cmd.add_argument("--only", default="", help="scenario names, comma-separated (default all)")
    cmd.add_argument("--steps", type=int, default=260)
    cmd.add_argument("--seed", type=int, default=7)
    cmd.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from rankwatch.simulate import SCENARIOS
    from rankwatch.simulate.suite import format_report, run_suite

    try:
        sizes = [int(x) for x in args.ranks.split(",") if x.strip()]
    except ValueError:
        print(f"rankwatch scenarios: --ranks: expected numbers like 8,64, got {args.ranks!r}")
        return 2
    names = [x.strip() for x in args.only.split(",") if x.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(
            f"rankwatch scenarios: unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}"
        )
        return 2
    started = time.perf_counter()
    results = run_suite(sizes, names, steps=args.steps, seed=args.seed)
    print(format_report(results))
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0 if all(r.passed for r in results) else 1
