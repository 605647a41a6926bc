"""``rankwatch topics create|list``: the four topics of the wire contract.

``create`` must run before the stream worker: faust would otherwise auto-create its source topics
with one partition, and our brokers refuse auto-creation anyway.
"""

from __future__ import annotations

import argparse
from typing import Any

from rankwatch.cli.common import add_connection_args, reports_errors, settings_from_args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "topics",
        help="create or list rankwatch's Kafka topics",
        description="Create the steps, logs, alerts and dead-letter topics from the config, "
        "or list the cluster's topics.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    create = actions.add_parser(
        "create", help="create the configured topics (existing ones are left as they are)"
    )
    add_connection_args(create)
    create.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="list the cluster's topics")
    add_connection_args(listing)
    listing.add_argument("--internal", action="store_true", help="include __* internal topics")
    listing.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    listing.set_defaults(handler=_list)


@reports_errors
def _create(args: argparse.Namespace) -> int:
    from rankwatch.infra import create_topics

    settings = settings_from_args(args)
    for result in create_topics(settings, timeout_s=args.timeout):
        print(f"{result.name}: {'created' if result.created else 'exists'}")
    return 0


@reports_errors
def _list(args: argparse.Namespace) -> int:
    from rankwatch.infra import list_topics

    settings = settings_from_args(args)
    for info in list_topics(
        settings.confluent_config(), internal=args.internal, timeout_s=args.timeout
    ):
        print(f"{info.name}\tpartitions={info.partitions}\treplication={info.replication_factor}")
    return 0
