"""``rankwatch sink storage|notify``: run a sink until Ctrl-C or SIGTERM.

``sink storage`` consumes steps, logs and alerts into SQLite or PostgreSQL (its own consumer
group; offsets committed after each batch is written). ``sink notify`` delivers alerts to the
webhooks the ``[sinks.notify]`` tables of the config file name.
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from rankwatch.sinks.query.cli import add_store_args, guarded


def register(sub: Any) -> None:
    sink = sub.add_parser("sink", help="run a sink: storage (SQLite/PostgreSQL) or notify")
    kinds = sink.add_subparsers(dest="sink", metavar="SINK")
    kinds.required = True

    storage = kinds.add_parser("storage", help="write steps, logs and alerts to a database")
    add_store_args(storage)
    storage.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers")
    storage.add_argument("--group", default=None, help="consumer group id")
    storage.add_argument(
        "--instance-id",
        default=None,
        help="static group member id: a restarted sink resumes at once",
    )
    storage.add_argument(
        "--batch-size", type=int, default=None, help="messages per write (default 1000)"
    )
    storage.add_argument(
        "--linger", default=None, help="write a batch after this long at the latest (default 1s)"
    )
    storage.add_argument(
        "--retention",
        default=None,
        help="delete what is older than this (e.g. 30d; default: keep all)",
    )
    _add_metrics_args(storage)
    storage.set_defaults(handler=_storage)

    notify = kinds.add_parser("notify", help="deliver alerts to webhooks (Slack, DingTalk, JSON)")
    notify.add_argument("--config", default=None, metavar="FILE", help="rankwatch TOML config")
    notify.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers")
    _add_metrics_args(notify)
    notify.set_defaults(handler=_notify)


def _add_metrics_args(parser: Any) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics on this port (0: any free one; default: the config "
        "file's metrics_port, else off)",
    )
    parser.add_argument(
        "--metrics-host", default=None, help="address /metrics binds to (default 127.0.0.1)"
    )


def _stop_on_signals(stop: Any) -> None:
    def handle(signum: int, frame: Any) -> None:
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _logging(name: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"rankwatch sink {name} | %(message)s")


def _serve_metrics(sink: Any, args: argparse.Namespace, config: Any) -> None:
    """/metrics for the sink if a port is given (flag first, then config); off otherwise."""
    from rankwatch.sinks.exceptions import SinkConfigError
    from rankwatch.sinks.metrics import serve_sink_metrics

    port = args.metrics_port if args.metrics_port is not None else config.metrics_port
    if port is not None and not 0 <= port <= 65535:
        raise SinkConfigError(f"--metrics-port: expected 0..65535, got {port}")
    serve_sink_metrics(sink, args.metrics_host or config.metrics_host, port)


@guarded("sink storage")
def _storage(args: argparse.Namespace) -> int:
    from rankwatch.config import load_settings
    from rankwatch.sinks.config import load_sinks_config
    from rankwatch.sinks.durations import parse_duration
    from rankwatch.sinks.exceptions import SinkConfigError
    from rankwatch.sinks.storage import open_store
    from rankwatch.sinks.storage.consumer import StorageSink

    _logging("storage")
    settings = load_settings(args.config, bootstrap=args.bootstrap)
    config = load_sinks_config(args.config).storage
    try:
        linger = parse_duration(args.linger) if args.linger else config.linger
        retention = parse_duration(args.retention) if args.retention else config.retention
    except ValueError as exc:
        raise SinkConfigError(str(exc)) from None
    store = open_store(args.db or config.db)
    try:
        sink = StorageSink(
            store,
            settings,
            group_id=args.group or config.group_id,
            batch_size=args.batch_size or config.batch_size,
            linger_s=linger,
            retention_s=retention,
            step_retention_s=config.step_retention,
            instance_id=args.instance_id or config.instance_id,
        )
        _stop_on_signals(sink.stop)
        _serve_metrics(sink, args, config)
        log = logging.getLogger("rankwatch.sinks.storage")
        where = store.url.split("@")[-1]  # never log a password in the URL
        log.info("consuming %s into %s (group %s)", ", ".join(sink.topics), where, sink.group_id)
        stats = sink.run()
        log.info("stopped: %s", stats)
    finally:
        store.close()
    return 0


@guarded("sink notify")
def _notify(args: argparse.Namespace) -> int:
    from rankwatch.config import load_settings
    from rankwatch.sinks.config import load_sinks_config
    from rankwatch.sinks.notify.sink import NotifySink

    _logging("notify")
    settings = load_settings(args.config, bootstrap=args.bootstrap)
    config = load_sinks_config(args.config).notify
    sink = NotifySink(config, settings)
    _stop_on_signals(sink.stop)
    _serve_metrics(sink, args, config)
    sink.run()
    return 0
