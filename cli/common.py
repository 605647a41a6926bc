"""Argparse helpers shared by every subcommand: ``--bootstrap``/``--config`` and error exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankwatch.config import Settings

Handler = Callable[[argparse.Namespace], int]

# Exit status of a command stopped by bad configuration or an unreachable cluster, as argparse
# itself uses for bad usage.
EXIT_ERROR = 2
#: The attribute a handler's function carries to name its error lines' prefix (a plain string,
#: so rankwatch.sinks can set it without importing the CLI).
ERROR_PREFIX = "error_prefix"


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
    """Mark ``handler`` as a command whose errors read ``rankwatch: error: MESSAGE``.

    It catches nothing: the CLI catches every :class:`RankwatchError` in one place
    (:func:`rankwatch.cli.main.main`, exit status 2) and asks :func:`error_prefix` how to start
    the line. Anything else is a bug and keeps its traceback.
    """
    handler.__dict__[ERROR_PREFIX] = "rankwatch"
    return handler


def error_prefix(handler: Handler, command: str) -> str:
    """How the CLI's error line for ``handler`` starts: ``rankwatch COMMAND``, unless the handler
    names its own (:func:`reports_errors`, :func:`rankwatch.sinks.query.cli.guarded`)."""
    return str(handler.__dict__.get(ERROR_PREFIX, f"rankwatch {command}"))
