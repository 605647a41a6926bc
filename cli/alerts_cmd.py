"""``rankwatch alerts --job J [--since 1h] [--follow]``: stored alerts, then (``--follow``) live.

``--follow`` is the console sink: it reads the alerts topic as alerts fire and prints one line
each, coloured by severity when the output is a terminal. It joins no shared consumer group
(a fresh one each time, nothing committed), so it never takes alerts away from another sink.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

from rankwatch.sinks.query.cli import add_store_args, guarded, print_out, store_url, tty


def register(sub: Any) -> None:
    alerts = sub.add_parser("alerts", help="a job's alerts; --follow prints new ones live")
    alerts.add_argument("--job", default=None, help="job id (default: every job)")
    alerts.add_argument("--since", default=None, help="10m, 2h, 7d, or an ISO 8601 time")
    alerts.add_argument("--limit", type=int, default=1000, help="the latest N stored alerts")
    alerts.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="then print new alerts as they fire (from the alerts topic)",
    )
    alerts.add_argument(
        "--exit-after",
        type=int,
        default=None,
        metavar="N",
        help="with --follow: stop after N live alerts",
    )
    alerts.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (--follow)")
    alerts.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_store_args(alerts)
    alerts.set_defaults(handler=_alerts)


@guarded("alerts")
def _alerts(args: argparse.Namespace) -> int:
    from rankwatch.sinks.query.specs import parse_since
    from rankwatch.sinks.storage import open_store

    since = parse_since(args.since) if args.since else None
    colour = tty() and not args.json
    shown: set[tuple[str, str, float]] = set()
    url = store_url(args)
    # With --follow a missing store is no reason to refuse: print what fires from now on.
    if not args.follow or args.db or _exists(url):
        with open_store(url) as store:
            for alert in store.alerts(args.job, since=since, limit=args.limit):
                shown.add((alert.alert_id, alert.status, alert.last_seen.timestamp()))
                print_out(_render(alert, args.json, colour))
    if not args.follow:
        return 0
    from rankwatch.config import load_settings

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    printed = 0
    for alert in follow_alerts(settings, args.job):
        key = (alert.alert_id, alert.status, alert.last_seen.timestamp())
        if key in shown:
            continue
        shown.add(key)
        print_out(_render(alert, args.json, colour))
        printed += 1
        if args.exit_after is not None and printed >= args.exit_after:
            break
    return 0


def _exists(url: str) -> bool:
    from rankwatch.sinks.storage.sqlite import sqlite_path

    return not url.startswith("sqlite:") or sqlite_path(url).exists()


def _render(alert: Any, as_json: bool, colour: bool) -> str:
    from rankwatch.schemas import encode
    from rankwatch.sinks.query.console import alert_line

    return encode(alert).decode() if as_json else alert_line(alert, colour=colour)


def follow_alerts(settings: Any, job_id: str | None) -> Any:
    """Yield alerts of ``job_id`` (or all) as they arrive on the alerts topic, from now on."""
    from confluent_kafka import Consumer

    from rankwatch.schemas import Alert, EventDecodeError, decode

    topic = settings.topics.alerts.name
    consumer = Consumer(
        {
            **settings.confluent_config(),
            "group.id": f"rankwatch-console-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "log_level": 3,
        }
    )

    def on_assign(consumer: Any, partitions: list[Any]) -> None:
        # Pin "from now on" to the end offsets as of now: "latest" would be resolved only at
        # the first fetch, and alerts fired in between would be missed.
        for partition in partitions:
            partition.offset = consumer.get_watermark_offsets(partition, timeout=10)[1]
        consumer.assign(partitions)
        # On stderr, so --json output stays clean; tests wait for this line.
        print(
            f"following {topic} ({len(partitions)} partitions), Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )

    consumer.subscribe([topic], on_assign=on_assign)
    try:
        while True:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            value = message.value()
            try:
                alert = decode(value) if value is not None else None
            except EventDecodeError:
                continue  # not ours to report: the storage sink counts bad messages
            if isinstance(alert, Alert) and (job_id is None or alert.job_id == job_id):
                yield alert
    finally:
        consumer.close()
