"""Flags and error handling shared by the sink and query commands."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from rankwatch.sinks.storage.sql import SqlStore

Handler = Callable[[argparse.Namespace], int]


def add_store_args(parser: argparse.ArgumentParser) -> None:
    """``--db`` and ``--config``: where the store is (flag > [sinks.storage] db > default)."""
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="sqlite:///PATH or postgresql://... (default: [sinks.storage] db "
        "of the config file, else sqlite:///.rankwatch/rankwatch.db)",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="rankwatch TOML config (default: $RANKWATCH_CONFIG, ./rankwatch.toml)",
    )


def store_url(args: argparse.Namespace) -> str:
    """The store URL the flags and config file select."""
    if args.db:
        return str(args.db)
    from rankwatch.sinks.config import load_sinks_config

    return load_sinks_config(args.config).storage.db


def open_store_from_args(args: argparse.Namespace) -> SqlStore:
    from rankwatch.sinks.storage import open_store

    return open_store(store_url(args))


def guarded(name: str) -> Callable[[Handler], Handler]:
    """Our errors read ``rankwatch NAME: error: ...`` (rc 2); a closed pipe ends quietly (rc 0).

    The error line itself is printed by the CLI's one ``except RankwatchError``
    (``rankwatch.cli.main``); this names its prefix in the handler's ``error_prefix``.
    """

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except BrokenPipeError:  # `rankwatch logs ... | head`
                sys.stderr.close()
                return 0

        run.__dict__["error_prefix"] = f"rankwatch {name}"
        return run

    return wrap


def print_out(text: str) -> None:
    """Print and flush (lines reach a pipe or a follower as they are made)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def tty() -> bool:
    isatty: Any = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())
