"""The root of every exception rankwatch raises on purpose: :class:`RankwatchError`.

Each package has its own root (``ConfigError``, ``SchemaError``, ``SinkError``, ``InfraError``,
``StreamsError``, the CLI's ``DemoError``...) and every one of them derives from this class, so
a caller that wants "any error rankwatch means a person to read" catches one name: the
``rankwatch`` command does exactly that, in one place (:func:`rankwatch.cli.main.main`).

Why it lives here: dependencies between the packages point one way, and ``rankwatch.schemas``
(the contract) is the bottom of that order: it imports no other rankwatch package, and every
other package may import it. The module itself imports nothing, so it cannot start a cycle.

>>> from rankwatch.config import ConfigError
>>> from rankwatch.sinks.exceptions import StoreError
>>> issubclass(ConfigError, RankwatchError), issubclass(StoreError, RankwatchError)
(True, True)
"""

from __future__ import annotations


class RankwatchError(Exception):
    """An error rankwatch raises on purpose; its message is meant for a person, as it is.

    Anything else that escapes a command is a bug and keeps its traceback.
    """
