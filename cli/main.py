"""Entry point of the ``rankwatch`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from rankwatch.cli import (
    alerts_cmd,
    broker_cmd,
    demo_cmd,
    query_cmd,
    replay_cmd,
    rules_cmd,
    scenarios_cmd,
    schema_cmd,
    ship_cmd,
    simulate_cmd,
    sink_cmd,
    topics_cmd,
    ui_cmd,
    worker_cmd,
)
from rankwatch.cli.common import EXIT_ERROR, error_prefix
from rankwatch.schemas.rankwatch_error import RankwatchError


def _command_modules() -> list[ModuleType]:
    """Every subcommand module, in the order ``--help`` lists them.

    One explicit list (not discovery) so a newcomer sees all commands in one place.
    """
    modules: list[ModuleType] = [
        broker_cmd,
        topics_cmd,
        worker_cmd,
        replay_cmd,
        rules_cmd,
        ship_cmd,
        scenarios_cmd,
        simulate_cmd,
        sink_cmd,
        query_cmd,
        alerts_cmd,
        ui_cmd,
        demo_cmd,
        schema_cmd,
    ]
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankwatch",
        description="Live fault detection for every rank of a distributed training job.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _command_modules():
        module.register(sub)
    return parser


Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except RankwatchError as error:
        # The one place our own errors are caught: they already say what is wrong and where, so
        # no traceback. Anything else is a bug and keeps its traceback.
        print(f"{error_prefix(handler, args.command)}: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
