"""The one exception the config package raises."""

from __future__ import annotations

from rankwatch.schemas.rankwatch_error import RankwatchError


class ConfigError(RankwatchError):
    """Bad configuration: the message names the source (file or env var), the key and the problem.

    It is meant to be shown to a person as it is, so every message is one self-contained sentence
    per problem, one problem per line.
    """
