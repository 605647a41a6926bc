"""The one root exception of the sinks package, and its few specialisations."""

from __future__ import annotations

from rankwatch.schemas.rankwatch_error import RankwatchError


class SinkError(RankwatchError):
    """Root of every error raised by :mod:`rankwatch.sinks`; its message is for a person."""


class SinkConfigError(SinkError):
    """The ``[sinks]`` configuration is wrong: one line per problem, ``SOURCE: KEY: PROBLEM``."""


class StoreError(SinkError):
    """A storage back-end cannot be opened, migrated, written or queried."""


class QueryError(SinkError):
    """A query's arguments are wrong (an unknown metric, a bad ``--since`` or ``--ranks``)."""
