"""Argparse helpers shared by every subcommand: ``--bootstrap``/``--config`` and error exits."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankwatch.config import Settings

Handler = Callable[[argparse.Namespace], int]

# Exit status of a command stopped by bad configuration or an unreachable cluster, as argparse
# itself uses for bad usage.
EXIT_ERROR = 2


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--bootstrap`` and ``--config``; read them back with :func:`settings_from_args`."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--bootstrap",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (overrides $RANKWATCH_BOOTSTRAP and the config file)",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (default: $RANKWATCH_CONFIG, else ./rankwatch.toml if present)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load the settings the way every command does; raises ConfigError on bad config."""
    from rankwatch.config import load_settings

    return load_settings(getattr(args, "config", None), bootstrap=getattr(args, "bootstrap", None))


def error(message: str) -> int:
    """Print ``rankwatch: error: MESSAGE`` to stderr and return the error exit status."""
    print(f"rankwatch: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def reports_errors(handler: Handler) -> Handler:
    """Turn rankwatch's own exceptions (config, infra) into a one-line error and exit status 2.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        from rankwatch.config import ConfigError
        from rankwatch.infra import InfraError

        try:
            return handler(args)
        except (ConfigError, InfraError) as exc:
            return error(str(exc))

    return wrapper
