"""Entry point of the ``rankwatch`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from rankwatch.cli import schema_cmd


def _command_modules() -> list[ModuleType]:
    """Every subcommand module, in the order ``--help`` lists them.

    One explicit list (not discovery) so a newcomer sees all commands in one place.
    """
    modules: list[ModuleType] = [schema_cmd]
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


if __name__ == "__main__":
    sys.exit(main())
