"""``rankwatch replay``: the detector engine over recorded events, offline.

    rankwatch replay --input run.jsonl [--output alerts.jsonl] [--job JOB]
    rankwatch replay --topic rankwatch.steps --topic rankwatch.logs [--bootstrap HOST:PORT]

Alerts go to ``--output`` (stdout by default), one JSON object per line; lines that do not
decode are reported on stderr as ``LINE: error`` and skipped; a summary line ends stderr.
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
    common.add_connection_args(parser)
    parser.set_defaults(handler=common.reports_errors(_run))


def _run(args: argparse.Namespace) -> int:
    from rankwatch.streams.replay import file_records, replay, summary, topic_records

    defaults = {"job_id": args.job} if args.job else None
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
            records = topic_records(settings.confluent_config(), args.topic)
        started = time.perf_counter()
        stats = replay(records, out, err=sys.stderr, defaults=defaults)
        out.flush()
        print(summary(stats, time.perf_counter() - started), file=sys.stderr)
    return 0
