"""``rankwatch rules``: check a rules file, and test it against recorded events.

    rankwatch rules check RULES.toml [...]
    rankwatch rules test RULES.toml --input EVENTS.jsonl --expect ALERTS.jsonl [--update]

``check`` prints every problem as ``FILE:LINE: field: problem`` and exits 1 if there is any.
``test`` replays the events with the rules and passes (exit 0) when they fire exactly the
expected alerts, compared on rule, ranks and step; otherwise it prints the difference
(``- missing``, ``+ unexpected``) and exits 1. ``--update`` writes the alerts fired as the new
expectations instead. The file format is in the README ("Rules").
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

from rankwatch.cli import common


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "rules",
        help="check a rules file, or test it against recorded events",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="rules_command", metavar="ACTION")
    commands.required = True
    check = commands.add_parser("check", help="validate rules files; every problem with its line")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(handler=common.reports_errors(_check))
    test = commands.add_parser("test", help="replay events and compare with expected alerts")
    test.add_argument("file", metavar="FILE", help="the rules file")
    test.add_argument("--input", required=True, metavar="EVENTS", help="JSON-lines events")
    test.add_argument("--expect", required=True, metavar="ALERTS", help="JSON-lines alerts")
    test.add_argument(
        "--update", action="store_true", help="write the fired alerts to --expect instead"
    )
    test.add_argument("--job", metavar="JOB_ID", help="job_id for events that lack one")
    test.set_defaults(handler=common.reports_errors(_test))


def _check(args: argparse.Namespace) -> int:
    from rankwatch.streams.rules import check_rules

    failed = False
    for path in args.files:
        problems = check_rules(path)
        for p in problems:
            print(p.render(path))
        if problems:
            failed = True
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def _test(args: argparse.Namespace) -> int:
    from rankwatch.schemas import Alert, decode
    from rankwatch.streams.replay import file_records, replay
    from rankwatch.streams.rules import load_rules
    from rankwatch.streams.rules.regress import (
        compare,
        expectation_line,
        observed,
        read_expected,
        render,
    )

    rules = load_rules(args.file)
    out = io.BytesIO()
    with open(args.input, "rb") as events:
        stats = replay(
            file_records(events),
            out,
            err=sys.stderr,
            defaults={"job_id": args.job} if args.job else None,
            engine=rules.engine(),
        )
    alerts = [a for a in map(decode, out.getvalue().splitlines()) if isinstance(a, Alert)]
    if args.update:
        with open(args.expect, "wb") as f:
            for alert in alerts:
                if alert.status == "firing":
                    f.write(expectation_line(alert) + b"\n")
        print(f"{args.expect}: wrote {len(observed(alerts))} expected alerts")
        return 0
    with open(args.expect, "rb") as f:
        expected = read_expected(f, args.expect)
    result = compare(expected, observed(alerts))
    if result.ok:
        print(f"ok: {result.matched} alerts as expected ({stats.events} events)")
        return 0
    print(render(result))
    print(
        f"FAILED: {len(result.missing)} missing, {len(result.unexpected)} unexpected, "
        f"{result.matched} as expected ({stats.events} events)"
    )
    return 1
