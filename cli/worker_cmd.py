"""``rankwatch worker``: the live stream processor.

    rankwatch worker [--bootstrap HOST:PORT] [--config FILE] [--app-id ID]
                     [--runtime batch|faust] [--loglevel info] [--data-dir DIR]
                     [--rules RULES.toml] [--metrics-port PORT]

Consumes the steps and logs topics, runs every detector, writes alerts to the alerts topic
and undecodable messages to the dead-letter topic. Its state is kept in a changelog topic, so
a restarted worker resumes where it was. Stop it with SIGTERM or Ctrl-C. The topics must exist
(``rankwatch topics create``); while Kafka cannot be reached at start, the batch runtime
retries.

``--runtime batch`` (the default) feeds the detectors from a plain Kafka consumer in batches;
``--runtime faust`` runs the same detectors inside a Faust app, several times slower per event.
Both keep their state in the same changelog topic: switching keeps it.

``--rules`` runs a rules file (see ``rankwatch rules check``): the worker refuses to start on an
invalid one, and picks up changes to it while running (a change that does not validate is
logged and ignored; the rules in use stay).
"""

from __future__ import annotations

import argparse
from typing import Any

from rankwatch.cli import common

_LEVELS = ("crit", "error", "warn", "info", "debug")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "worker",
        help="run the live detector worker on the Kafka topics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_connection_args(parser)
    parser.add_argument(
        "--app-id",
        default="rankwatch-worker",
        help="the consumer group and the state changelog topic's prefix (default: %(default)s)",
    )
    parser.add_argument(
        "--runtime",
        default="batch",
        choices=("batch", "faust"),
        help="batch: a Kafka consumer feeding the detectors in batches; faust: the same in a "
        "Faust app, slower (default: %(default)s)",
    )
    parser.add_argument(
        "--loglevel",
        default="info",
        choices=_LEVELS,
        help="log level, to stderr (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        default=".rankwatch/worker",
        help="Faust's local data directory; unused by the batch runtime (default: %(default)s)",
    )
    parser.add_argument(
        "--snapshot-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often engine state is persisted; a crash replays at most "
        "this much (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=2000,
        help="events taken from Kafka per batch (default: %(default)s)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long the group waits for a crashed worker before reassigning its partitions "
        "(default: %(default)s; the broker's minimum is 6)",
    )
    parser.add_argument(
        "--rules",
        metavar="FILE",
        help="rules file: tune built-in rules, add your own; reloaded when it changes",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics on this port (0: any free one, logged; default: off; "
        "batch runtime)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics binds to (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-max-jobs",
        type=int,
        default=50,
        metavar="N",
        help="per-job series for at most N jobs, the most alerting first (default: %(default)s)",
    )
    parser.set_defaults(handler=common.reports_errors(_run))


def _run(args: argparse.Namespace) -> int:
    from rankwatch.streams.runtime.common import WorkerOptions

    if args.snapshot_interval <= 0 or args.batch_size < 1:
        raise SystemExit("rankwatch worker: --snapshot-interval and --batch-size must be > 0")
    if args.session_timeout < 1:
        raise SystemExit("rankwatch worker: --session-timeout must be >= 1 second")
    options = WorkerOptions(
        app_id=args.app_id,
        data_dir=args.data_dir,
        loglevel=args.loglevel,
        snapshot_interval_s=args.snapshot_interval,
        batch_size=args.batch_size,
        session_timeout_s=args.session_timeout,
        rules_file=args.rules,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        metrics_max_jobs=args.metrics_max_jobs,
    )
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise SystemExit("rankwatch worker: --metrics-port must be 0..65535")
    if args.metrics_port is not None and args.runtime == "faust":
        raise SystemExit("rankwatch worker: --metrics-port needs the batch runtime")
    settings = common.settings_from_args(args)
    if args.runtime == "faust":
        from rankwatch.streams.worker import run_worker

        return run_worker(settings, options)
    from rankwatch.streams.batch_worker import run_batch_worker

    return run_batch_worker(settings, options)
