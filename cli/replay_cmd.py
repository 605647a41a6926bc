"""``rankwatch replay``: the detector engine over recorded events, offline.

    rankwatch replay --input run.jsonl [--output alerts.jsonl] [--job JOB]
    rankwatch replay --topic rankwatch.steps --topic rankwatch.logs [--bootstrap HOST:PORT]
                     [--from TIME] [--to TIME] [--rules RULES.toml] [--diff OTHER.toml]

Alerts go to ``--output`` (stdout by default), one JSON object per line; lines that do not
decode are reported on stderr as ``LINE: error`` and skipped; a summary line and the alerts
per rule end stderr. A topic is read by a consumer group of its own that commits nothing, so
the live worker's offsets never move. ``--rules`` runs a rules file instead of the built-in
defaults; ``--diff`` runs a second rules file over the same events in the same pass and
prints the incidents the ``--rules`` file adds (+) or removes (-) compared with it.
TIME: ISO 8601 with a zone, epoch seconds, or an age (30m, 2h, 7d); messages are selected by
their Kafka timestamp.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from typing import IO, Any

from rankwatch.cli import common


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "replay",
        help="run the detectors over a JSON-lines file or a topic and print the alerts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", metavar="FILE", help="JSON-lines events in arrival order ('-' for stdin)"
    )
    source.add_argument(
        "--topic",
        metavar="NAME",
        action="append",
        help="read a Kafka topic from the beginning to its current end; "
        "repeat to merge topics (steps and logs)",
    )
    parser.add_argument("--output", metavar="FILE", help="write alerts here instead of stdout")
    parser.add_argument(
        "--job", metavar="JOB_ID", help="job_id for events that lack one (per-step logs of one job)"
    )
    parser.add_argument(
        "--rules", metavar="FILE", help="a rules file (default: the built-in rules as shipped)"
    )
    parser.add_argument(
        "--diff",
        metavar="OTHER",
        help="also run this rules file ('builtin' for the defaults) and show the difference",
    )
    parser.add_argument("--from", dest="start", metavar="TIME", help="with --topic: from TIME")
    parser.add_argument("--to", dest="end", metavar="TIME", help="with --topic: until TIME")
    common.add_connection_args(parser)
    parser.set_defaults(handler=common.reports_errors(_run))


def _run(args: argparse.Namespace) -> int:
    from rankwatch.streams.engine import Engine
    from rankwatch.streams.replay import file_records, replay, summary, topic_records
    from rankwatch.streams.rules import load_rules
    from rankwatch.streams.rules.history import parse_time, replay_diff, rule_table

    if args.input and (args.start or args.end):
        return common.error("--from/--to select messages of a --topic")
    defaults = {"job_id": args.job} if args.job else None
    # Rules first: a bad rules file is reported before anything is read.
    engine = load_rules(args.rules).engine() if args.rules else Engine.with_builtin_detectors()
    other = None
    if args.diff:
        other = (
            Engine.with_builtin_detectors()
            if args.diff == "builtin"
            else load_rules(args.diff).engine()
        )
    with ExitStack() as stack:
        out: IO[bytes] = (
            stack.enter_context(open(args.output, "wb")) if args.output else sys.stdout.buffer
        )
        if args.input:
            src: IO[bytes] = (
                sys.stdin.buffer
                if args.input == "-"
                else stack.enter_context(open(args.input, "rb"))
            )
            records = file_records(src)
        else:
            settings = common.settings_from_args(args)
            records = topic_records(
                settings.confluent_config(),
                args.topic,
                start_ms=parse_time(args.start) if args.start else None,
                end_ms=parse_time(args.end) if args.end else None,
            )
        started = time.perf_counter()
        if other is None:
            stats = replay(records, out, err=sys.stderr, defaults=defaults, engine=engine)
            diff = None
        else:
            diff = replay_diff(records, out, engine, other, err=sys.stderr, defaults=defaults)
            stats = diff.stats
        out.flush()
        print(summary(stats, time.perf_counter() - started), file=sys.stderr)
        print(rule_table(stats), file=sys.stderr)
        if diff is not None:
            print(f"alerts of --diff {args.diff}:", file=sys.stderr)
            print(rule_table(diff.other_stats), file=sys.stderr)
            print(diff.render(), file=sys.stderr)
    return 0
