"""Per-rank state as arrays: one column per field of a rule's state dataclass, indexed by rank.

A per-rank rule keeps a small dataclass of numbers per rank (``LossState``: a level, a few
counters, whether an incident is open). :class:`RankTable` keeps the same fields for every rank
of a job as columns, so a frame updates all its ranks at once
(``table.column("level")[ranks] = ...``), and a rank's row reads back as the dataclass, field
for field: the scalar rule code runs on it unchanged for the rare rows, and a stored rank reads
the same either way.

Fields whose default is a float, an int or a bool become float64, int64 and bool columns; any
other field (a list, say) is an object column holding a Python value per rank.

>>> from dataclasses import dataclass
>>> @dataclass
... class S:
...     level: float = 0.0
...     n: int = 0
...     active: bool = False
>>> table = RankTable(S)
>>> table.grow(4)
>>> table.column("level")[[1, 3]] += 2.5
>>> table.row(3), table.row(0)
(S(level=2.5, n=0, active=False), S(level=0.0, n=0, active=False))
>>> table.store(2, S(level=1.0, n=7, active=True))
>>> table.column("n").tolist(), len(table)
([0, 0, 7, 0], 4)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["DENSE_RANKS", "RankTable", "dense_limit"]

S = TypeVar("S")

_KINDS: dict[type, Any] = {bool: np.bool_, int: np.int64, float: np.float64}

#: Ranks below this always get a row of a rank-indexed table (131,072: the largest jobs
#: tested); above it, only ranks within 4x the ranks a job holds. A rank far beyond the others
#: is a producer's bug (a declared world size bounds the ranks): rows up to it would be
#: gigabytes. Its state is kept apart, as the scalar path keeps it.
DENSE_RANKS = 1 << 17


def dense_limit(held: int) -> int:
    """The first rank without a row in the tables of a job holding ``held`` ranks.

    >>> dense_limit(16), dense_limit(100_000)
    (131072, 400004)
    """
    return max(DENSE_RANKS, 4 * (held + 1))


class RankTable(Generic[S]):
    """The state of one per-rank rule for every rank of one job, as columns."""

    def __init__(self, state_type: type[S], capacity: int = 0) -> None:
        if not dataclasses.is_dataclass(state_type):
            raise TypeError(f"{state_type!r} is not a dataclass: a rank table needs its fields")
        self.state_type = state_type
        template = state_type()
        #: (name, numpy dtype or None for an object column, default value)
        self._fields: list[tuple[str, Any, Any]] = []
        for f in dataclasses.fields(state_type):
            default = getattr(template, f.name)
            kind = _KINDS.get(type(default))
            self._fields.append((f.name, kind, default))
        self._columns: dict[str, npt.NDArray[Any]] = {}
        self._size = 0
        for name, kind, _ in self._fields:
            self._columns[name] = np.empty(0, dtype=kind if kind is not None else object)
        if capacity:
            self.grow(capacity)

    def __len__(self) -> int:
        """Ranks the table has rows for (0 to ``len - 1``)."""
        return self._size

    def column(self, name: str) -> npt.NDArray[Any]:
        """The column of one field for ranks ``0 .. len - 1`` (a view: writing to it writes
        the state; :meth:`grow` makes new columns, so take it again after growing)."""
        return self._columns[name][: self._size]

    def grow(self, size: int, expected: int | None = None) -> None:
        """Make rows for ranks up to ``size - 1``, each at its field defaults. Room is made
        for twice as many, but no more than ``expected`` (the job's world size, when it said
        one): a job's columns end at its size, not at the next power of two."""
        if size <= self._size:
            return
        capacity = len(next(iter(self._columns.values()))) if self._columns else 0
        if size > capacity:
            new_capacity = max(size, capacity * 2, 8)
            if expected is not None and size <= expected:
                new_capacity = min(new_capacity, expected)
            for name, kind, default in self._fields:
                old = self._columns[name]
                if kind is not None:
                    col = np.full(new_capacity, default, dtype=kind)
                else:
                    col = np.empty(new_capacity, dtype=object)
                col[: len(old)] = old
                self._columns[name] = col
        for name, kind, default in self._fields:
            if kind is None:
                col = self._columns[name]
                for i in range(self._size, size):
                    col[i] = _fresh(self.state_type, name, default)
        self._size = size

    def row(self, rank: int) -> S:
        """Rank ``rank``'s state, as the rule's dataclass (numbers copied, object fields
        shared: write it back with :meth:`store`)."""
        if not 0 <= rank < self._size:
            raise IndexError(f"rank {rank} has no row (the table has {self._size})")
        values: dict[str, Any] = {}
        for name, kind, _ in self._fields:
            value = self._columns[name][rank]
            values[name] = value.item() if kind is not None else value
        return self.state_type(**values)

    def store(self, rank: int, state: S) -> None:
        """Write one rank's state back (after its scalar path ran on :meth:`row`)."""
        if not 0 <= rank < self._size:
            raise IndexError(f"rank {rank} has no row (the table has {self._size})")
        for name, _, _ in self._fields:
            self._columns[name][rank] = getattr(state, name)

    def states_at(self, ranks: npt.NDArray[np.int64]) -> list[S]:
        """The states of several ranks at once (their rows, as :meth:`row` gives them): one
        ``tolist`` per column rather than a conversion per value."""
        if len(ranks) and (int(ranks.min()) < 0 or int(ranks.max()) >= self._size):
            raise IndexError(f"ranks outside the table's {self._size} rows")
        values = [self._columns[name][ranks].tolist() for name, _, _ in self._fields]
        make = self.state_type
        return [make(*row) for row in zip(*values, strict=True)]

    def store_states(self, ranks: npt.NDArray[np.int64], states: list[S]) -> None:
        """Write back the states of distinct ranks (from :meth:`states_at`), column by column."""
        for name, kind, _ in self._fields:
            got = [getattr(state, name) for state in states]
            col = self._columns[name]
            if kind is None:
                for r, value in zip(ranks.tolist(), got, strict=True):
                    col[r] = value
            else:
                col[ranks] = got

    def nbytes(self) -> int:
        """Bytes held by the numeric columns (object columns count their pointers only)."""
        return sum(col.nbytes for col in self._columns.values())


def _fresh(state_type: type[Any], name: str, default: Any) -> Any:
    """A fresh default of an object field: a new list per rank, not one shared by all."""
    for f in dataclasses.fields(state_type):
        if f.name == name and f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
    return default
