"""A job rule's per-rank entries as columns: what a cross-rank rule keeps of each rank.

A job rule (``lr_schedule``, ``straggler``, the utilization rules) keeps a short entry of
numbers per rank: the last report, a few counters, bits of recent verdicts. Kept as one Python
list per rank, a frame's update and a tick's read are a Python loop over every rank of the job,
and each entry costs a list and its boxed values (~250 bytes). :class:`RankEntries` keeps the
same fields for every rank as numpy columns indexed by rank, so a frame updates its ranks with
one assignment per field and a tick reads a field of every rank as one array.

Two ways in, one state:

- **vector**: :meth:`RankEntries.columns` (every column, the ranks ``0 .. size - 1``) and
  :meth:`RankEntries.add` (give ranks an entry, at the defaults, where they had none);
- **scalar**, for rare rows and small jobs: :meth:`RankEntries.get` gives a rank's entry as a
  *live* list in field order; the code changes it in place, as it did a dict's list, and the
  entry goes back into the columns before the next vector access (:meth:`settle`).

For the snapshot codec and the tests it is a mapping of rank -> entry list, ranks ascending:
stored, an entry is the same list the rule kept before it had columns, so stored state reads
back either way (``streams/state_codec.py``).

>>> entries = RankEntries((("step", -1), ("lr", 0.0), ("name", "")))
>>> entries.add(np.array([0, 3]))
>>> entries.columns()["step"][[0, 3]] = [5, 7]
>>> e = entries.get(3)
>>> e
[7, 0.0, '']
>>> e[1] = 0.5
>>> entries.columns()["lr"].tolist(), sorted(entries), 1 in entries
([0.0, 0.0, 0.0, 0.5], [0, 3], False)
>>> dict(entries.items())
{0: [5, 0.0, ''], 3: [7, 0.5, '']}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RankEntries"]

_KINDS: dict[type, Any] = {bool: np.bool_, int: np.int64, float: np.float64}


class RankEntries:
    """Fixed-layout entries for some ranks of one job, as columns; see the module doc."""

    __slots__ = ("_defaults", "_fields", "_kinds", "_cols", "_has", "_size", "_out", "_count")

    def __init__(self, fields: Sequence[tuple[str, Any]]) -> None:
        """``fields``: ``(name, default)`` in entry order; a bool, int or float default makes a
        numpy column of that kind, any other (a string) an object column."""
        self._fields = tuple(name for name, _ in fields)
        self._defaults = [default for _, default in fields]
        self._kinds = [_KINDS.get(type(default)) for default in self._defaults]
        self._cols: list[npt.NDArray[Any]] = [
            np.empty(0, dtype=kind if kind is not None else object) for kind in self._kinds
        ]
        self._has: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
        self._size = 0  # ranks 0 .. size - 1 have a row (an entry where _has)
        self._count = 0  # ranks with an entry (settled)
        #: Entries handed out as lists by get/put, written back by settle.
        self._out: dict[int, list[Any]] = {}

    @property
    def fields(self) -> tuple[str, ...]:
        return self._fields

    def like(self) -> RankEntries:
        """An empty table of the same fields."""
        return RankEntries(tuple(zip(self._fields, self._defaults, strict=True)))

    def fresh(self) -> list[Any]:
        """A new entry at the defaults (not in the table)."""
        return list(self._defaults)

    # -- vector access ---------------------------------------------------------------------

    def columns(self) -> dict[str, npt.NDArray[Any]]:
        """Every field's column for ranks ``0 .. size - 1`` (views: writing to them writes the
        entries; a rank without an entry holds the defaults there). Entries handed out as
        lists are written back first."""
        if self._out:
            self.settle()
        n = self._size
        return {name: col[:n] for name, col in zip(self._fields, self._cols, strict=True)}

    def present(self) -> npt.NDArray[np.bool_]:
        """Which of the ranks ``0 .. size - 1`` have an entry (a view)."""
        if self._out:
            self.settle()
        return self._has[: self._size]

    def ranks(self) -> npt.NDArray[np.int64]:
        """The ranks with an entry, ascending."""
        return np.flatnonzero(self.present()).astype(np.int64)

    def __len__(self) -> int:
        if self._out:
            self.settle()
        return self._count

    @property
    def size(self) -> int:
        """One more than the highest rank with a row (after :meth:`settle`)."""
        if self._out:
            self.settle()
        return self._size

    def add(self, ranks: npt.NDArray[np.int64]) -> None:
        """Give every rank in ``ranks`` an entry (at the defaults) where it has none."""
        if not len(ranks):
            return
        if self._out:
            self.settle()
        top = int(ranks.max()) + 1
        if top > self._size:
            self._grow(top)
        has = self._has
        new = ranks[~has[ranks]]
        if len(new):
            new = np.unique(new)
            has[new] = True
            self._count += len(new)

    def _grow(self, size: int) -> None:
        capacity = len(self._has)
        if size > capacity:
            capacity = max(size, capacity * 2, 8)
            for j, (kind, default) in enumerate(zip(self._kinds, self._defaults, strict=True)):
                old = self._cols[j]
                col = np.full(capacity, default, dtype=kind if kind is not None else object)
                col[: len(old)] = old
                self._cols[j] = col
            has = np.zeros(capacity, dtype=np.bool_)
            has[: len(self._has)] = self._has
            self._has = has
        self._size = size

    # -- scalar access: live lists ---------------------------------------------------------

    def get(self, rank: int, default: Any = None) -> Any:
        """Rank ``rank``'s entry as a live list (change it in place), or ``default``."""
        e = self._out.get(rank)
        if e is not None:
            return e
        if not (0 <= rank < self._size and self._has[rank]):
            return default
        e = self._out[rank] = [col[rank] for col in self._cols]
        for j, kind in enumerate(self._kinds):
            if kind is not None:
                e[j] = e[j].item()
        return e

    def __getitem__(self, rank: int) -> list[Any]:
        e: list[Any] | None = self.get(rank)
        if e is None:
            raise KeyError(rank)
        return e

    def __setitem__(self, rank: int, entry: list[Any]) -> None:
        """Put ``entry`` (a list in field order) as rank ``rank``'s; it stays live."""
        if len(entry) != len(self._fields):
            raise ValueError(f"an entry has {len(self._fields)} fields, got {len(entry)}")
        if rank < 0:
            raise ValueError(f"rank {rank} is negative")
        self._out[rank] = entry

    def settle(self) -> None:
        """Write the entries handed out as lists back into the columns."""
        out = self._out
        if not out:
            return
        top = max(out) + 1
        if top > self._size:
            self._grow(top)
        ranks = np.fromiter(out, dtype=np.int64, count=len(out))
        has = self._has
        self._count += int(len(ranks) - np.count_nonzero(has[ranks]))
        has[ranks] = True
        rows = list(out.values())
        for j, col in enumerate(self._cols):
            values = [e[j] for e in rows]
            if self._kinds[j] is None:
                for r, v in zip(out, values, strict=True):
                    col[r] = v
            else:
                col[ranks] = values
        out.clear()

    # -- a mapping of rank -> entry (the codec, the tests) ---------------------------------

    def __contains__(self, rank: object) -> bool:
        if rank in self._out:
            return True
        return isinstance(rank, int) and 0 <= rank < self._size and bool(self._has[rank])

    def __iter__(self) -> Iterator[int]:
        return iter(self.ranks().tolist())

    def keys(self) -> list[int]:
        return self.ranks().tolist()  # type: ignore[no-any-return]

    def items(self) -> list[tuple[int, list[Any]]]:
        """Every entry as ``(rank, list)``, ranks ascending (copies, made column by column)."""
        ranks = self.ranks()
        values = [col[ranks].tolist() for col in self._cols]
        return list(zip(ranks.tolist(), map(list, zip(*values, strict=True)), strict=True))

    def values(self) -> list[list[Any]]:
        return [e for _, e in self.items()]

    def update(self, entries: Mapping[int, list[Any]]) -> None:
        for rank, entry in entries.items():
            self[int(rank)] = list(entry)
        self.settle()

    def pop(self, rank: int, default: Any = None) -> Any:
        """Remove rank ``rank``'s entry; it, or ``default``."""
        e = self.get(rank)
        if e is None:
            return default
        self.settle()
        self._has[rank] = False
        self._count -= 1
        for col, default_value in zip(self._cols, self._defaults, strict=True):
            col[rank] = default_value
        return e

    def clear(self) -> None:
        self._out.clear()
        self.__init__(tuple(zip(self._fields, self._defaults, strict=True)))  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RankEntries):
            return self._fields == other._fields and self.items() == other.items()
        if isinstance(other, dict):
            return dict(self.items()) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RankEntries({len(self)} ranks, fields {', '.join(self._fields)})"

    def __getstate__(self) -> dict[str, Any]:
        self.settle()
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
