"""Errors of the contract package. Every one names the field and the problem."""

from __future__ import annotations

from dataclasses import dataclass

from rankwatch.schemas.rankwatch_error import RankwatchError


class SchemaError(RankwatchError):
    """Root of every error raised by :mod:`rankwatch.schemas`."""


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One thing wrong with one field: ``field`` is a dotted path, ``""`` for the whole event."""

    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}" if self.field else self.problem


class EventDecodeError(SchemaError, ValueError):
    """A message that is not a valid event of the contract.

    ``str(error)`` is one line, e.g. ``rank: must be >= 0 (got -1)``; ``problems`` has them
    one by one for programs (the dead-letter topic stores both).
    """

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))

    @classmethod
    def whole(cls, problem: str) -> EventDecodeError:
        return cls([FieldProblem("", problem)])
