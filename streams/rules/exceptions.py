"""Errors of the rules package: every problem of a rules file, with its line and field."""

from __future__ import annotations

from dataclasses import dataclass

from rankwatch.streams.exceptions import StreamsError


class RulesError(StreamsError):
    """Root of every error raised by :mod:`rankwatch.streams.rules`."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a rules file: where (line, dotted field) and what."""

    line: int | None
    field: str
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class RulesFileError(RulesError):
    """A rules file that cannot be used; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join("  " + p.render(source) for p in problems)
        n = len(problems)
        super().__init__(
            f"{source}: {n} problem{'s' if n != 1 else ''} in the rules file:\n{lines}"
        )


class PluginError(RulesError):
    """A Python rule that cannot be imported or built; the message says which and why."""
