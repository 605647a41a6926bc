"""A job rule's per-rank entries as columns: what a cross-rank rule keeps of each rank.

A job rule (``lr_schedule``, ``straggler``, the utilization rules) keeps a short entry of
numbers per rank: the last report, a few counters, bits of recent verdicts. Kept as one Python
list per rank, a frame's update and a tick's read are a Python loop over every rank of the job,
and each entry costs a list and its boxed values (~250 bytes). :class:`RankEntries` keeps the
same fields for every rank as numpy columns indexed by rank, so a frame updates its ranks with
one assignment per field and a tick reads a field of every rank as one array.

Two ways in, one state:

- **vector**: :meth:`RankEntries.columns` (every column, the ranks ``0 .. size - 1``; read-only
  views, or writable ones with ``write=True``) and :meth:`RankEntries.add` (give ranks an
  entry, at the defaults, where they had none);
- **scalar**, for rare rows and small jobs: :meth:`RankEntries.get` gives a rank's entry as a
  *live* list in field order; the code changes it in place, as it did a dict's list (before
  its next vector access), and the entry is copied into the columns at the next vector access
  (:meth:`settle`). The list stays live through reads of the columns, so a small job's steps
  (one at a time, between ticks that read the columns) do not make it again each time; a
  vector write (``columns(write=True)``) ends it.

For the snapshot codec and the tests it is a mapping of rank -> entry list, ranks ascending:
stored, an entry is the same list the rule kept before it had columns, so stored state reads
back either way (``streams/state_codec.py``).

A rank far beyond the others (:func:`~rankwatch.streams.frames.table.dense_limit`: a producer's
bug, since a declared world size bounds the ranks) gets no row: columns up to it would hold
gigabytes. So does an entry holding an int past int64 (the contract bounds its ints to int64;
an event built without validation, or a sum of steps, can still hold one). Such
an entry is kept apart (:attr:`RankEntries.far`): it is stored, restored and handed out as a
live list like any other, but the columns do not show it. A frame over such a rank goes row by
row (:meth:`RankEntries.apart`); a tick that must count it reads ``far`` too (the utilization
rules do; ``lr_schedule`` leaves it out of the ranks it compares).

>>> entries = RankEntries((("step", -1), ("lr", 0.0), ("name", "")))
>>> entries.add(np.array([0, 3]))
>>> entries.columns(write=True)["step"][[0, 3]] = [5, 7]
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

__all__ = ["LISTS_BELOW", "RankEntries"]

from rankwatch.streams.frames.table import dense_limit

#: Below this many ranks a job rule judges its entries as the live lists: numpy's fixed cost
#: per call on a few ranks is more than a Python loop over them.
LISTS_BELOW = 64

_KINDS: dict[type, Any] = {bool: np.bool_, int: np.int64, float: np.float64}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class RankEntries:
    """Fixed-layout entries for some ranks of one job, as columns; see the module doc."""

    __slots__ = (
        "_cols",
        "_count",
        "_defaults",
        "_fields",
        "_has",
        "_kinds",
        "_new",
        "_out",
        "_size",
        "_synced",
        "far",
    )

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
        #: Entries handed out as lists by get/put, copied back by settle.
        self._out: dict[int, list[Any]] = {}
        self._synced = True  # no list handed out since the last copy back
        self._new: set[int] = set()  # ranks put as lists, without a row yet (for len)
        #: Entries of ranks too far beyond the others for a row (see the module doc).
        self.far: dict[int, list[Any]] = {}

    def _dense(self, rank: int) -> bool:
        # ranks held: those settled into rows and those put as lists without a row yet (a
        # list handed out for a settled rank stays live, so counting _out would count it twice)
        return rank < dense_limit(self._count + len(self._new))

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

    def columns(self, *, write: bool = False) -> dict[str, npt.NDArray[Any]]:
        """Every field's column for ranks ``0 .. size - 1`` (a rank without an entry holds
        the defaults there), the entries handed out as lists copied in first. Read-only views;
        with ``write``, views that write the entries (the lists handed out are no longer
        live: :meth:`get` makes them again)."""
        self.settle()
        n = self._size
        if write:
            self._out.clear()
            return {name: col[:n] for name, col in zip(self._fields, self._cols, strict=True)}
        views = {}
        for name, col in zip(self._fields, self._cols, strict=True):
            view = views[name] = col[:n]
            view.flags.writeable = False
        return views

    def present(self) -> npt.NDArray[np.bool_]:
        """Which of the ranks ``0 .. size - 1`` have an entry (a read-only view)."""
        self.settle()
        view = self._has[: self._size]
        view.flags.writeable = False
        return view

    def ranks(self) -> npt.NDArray[np.int64]:
        """The ranks with an entry, ascending."""
        return np.flatnonzero(self.present()).astype(np.int64)

    def __len__(self) -> int:
        # Not copied back to count: a small job's tick asks between steps that each hand a
        # list out.
        return self._count + len(self._new) + len(self.far)

    @property
    def size(self) -> int:
        """One more than the highest rank with a row (after :meth:`settle`)."""
        self.settle()
        return self._size

    def add(self, ranks: npt.NDArray[np.int64], expected: int | None = None) -> None:
        """Give every rank in ``ranks`` an entry (at the defaults) where it has none.
        ``expected``: the ranks the job said it has (its world size), if it said: the columns
        then end there rather than at the next doubling."""
        if not len(ranks):
            return
        self.settle()
        top = int(ranks.max()) + 1
        if not self._dense(top - 1):  # a rank far beyond: its entry apart, the rest as rows
            far = ranks[~np.fromiter(map(self._dense, ranks.tolist()), np.bool_, len(ranks))]
            for r in far.tolist():
                if r not in self.far:
                    self.far[r] = self.fresh()
            ranks = np.setdiff1d(ranks, far)
            if not len(ranks):
                return
            top = int(ranks.max()) + 1
        if top > self._size:
            self._grow(top, expected)
        has = self._has
        new = ranks[~has[ranks]]
        if self.far and len(new):
            new = new[~np.isin(new, np.fromiter(self.far, np.int64, len(self.far)))]
        if len(new):
            new = np.unique(new)
            has[new] = True
            self._count += len(new)

    def _grow(self, size: int, expected: int | None = None) -> None:
        capacity = len(self._has)
        if size > capacity:
            capacity = max(size, capacity * 2, 8)
            if expected is not None and size <= expected:
                capacity = min(capacity, expected)
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
            self._synced = False
            return e
        if not (0 <= rank < self._size and self._has[rank]):
            return self.far.get(rank, default) if self.far else default
        self._synced = False
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
        if rank in self.far or not (rank < self._size or self._dense(rank)):
            self.far[rank] = entry
        else:
            if not (rank < self._size and self._has[rank]):
                self._new.add(rank)
            self._out[rank] = entry
            self._synced = False

    def apart(self, ranks: npt.NDArray[np.int64]) -> bool:
        """Whether any of ``ranks`` has its entry kept apart (:attr:`far`): the columns do not
        show it, so a frame over these ranks takes the lists."""
        return bool(self.far) and not self.far.keys().isdisjoint(ranks.tolist())

    def live(self) -> dict[int, list[Any]]:
        """Every entry as a live list, ranks ascending: a small job's tick reads its entries
        as its steps left them (each a dict hit once they are live)."""
        ranks = set(np.flatnonzero(self._has[: self._size]).tolist())
        ranks.update(self._out)
        ranks.update(self.far)
        return {r: self[r] for r in sorted(ranks)}

    def checkout(
        self, ranks: npt.NDArray[np.int64], expected: int | None = None
    ) -> list[list[Any]]:
        """The entries of distinct ``ranks`` as live lists, at once (column by column), made
        at the defaults where a rank has none: the scalar code of a frame's rare rows."""
        self.add(ranks, expected)
        if self.apart(ranks):
            return [self[r] for r in ranks.tolist()]
        values = [col[ranks].tolist() for col in self._cols]
        rows = list(map(list, zip(*values, strict=True)))
        self._out.update(zip(ranks.tolist(), rows, strict=True))
        self._synced = False
        return rows

    def settle(self) -> None:
        """Copy the entries handed out as lists into the columns (they stay live)."""
        out = self._out
        if self._synced or not out:
            return
        try:
            self._write(out)
        except OverflowError:
            # An int past int64 in an entry (an unvalidated event's step): such an entry
            # is kept apart, as a far rank's is; the others are written.
            for r, e in list(out.items()):
                if any(type(v) is int and not _INT64_MIN <= v <= _INT64_MAX for v in e):
                    del out[r]
                    self._new.discard(r)
                    self.far[r] = e
                    if r < self._size and self._has[r]:
                        self._has[r] = False
                        self._count -= 1
            self._write(out)
        self._synced = True

    def _write(self, out: dict[int, list[Any]]) -> None:
        if not out:
            return
        top = max(out) + 1
        if top > self._size:
            self._grow(top)
        ranks = np.fromiter(out, dtype=np.int64, count=len(out))
        rows = list(out.values())
        for j, col in enumerate(self._cols):
            values = [e[j] for e in rows]
            if self._kinds[j] is None:
                for r, v in zip(out, values, strict=True):
                    col[r] = v
            else:
                col[ranks] = values  # all or nothing: the list is made an array first
        has = self._has
        self._count += int(len(ranks) - np.count_nonzero(has[ranks]))
        has[ranks] = True
        self._new.clear()

    # -- a mapping of rank -> entry (the codec, the tests) ---------------------------------

    def __contains__(self, rank: object) -> bool:
        if rank in self._out or rank in self.far:
            return True
        return isinstance(rank, int) and 0 <= rank < self._size and bool(self._has[rank])

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys())

    def keys(self) -> list[int]:
        ranks: list[int] = self.ranks().tolist()
        return ranks + sorted(self.far) if self.far else ranks

    def items(self) -> list[tuple[int, list[Any]]]:
        """Every entry as ``(rank, list)``, ranks ascending (copies, made column by column)."""
        ranks = self.ranks()
        values = [col[ranks].tolist() for col in self._cols]
        out = list(zip(ranks.tolist(), map(list, zip(*values, strict=True)), strict=True))
        return out + [(r, list(self.far[r])) for r in sorted(self.far)] if self.far else out

    def values(self) -> list[list[Any]]:
        return [e for _, e in self.items()]

    def update(self, entries: Mapping[int, list[Any]]) -> None:
        for rank, entry in entries.items():
            self[int(rank)] = list(entry)
        self.settle()
        self._out.clear()  # copies: nobody holds them

    def pop(self, rank: int, default: Any = None) -> Any:
        """Remove rank ``rank``'s entry; it, or ``default``."""
        e = self.get(rank)
        if e is None:
            return default
        if rank in self.far:
            return self.far.pop(rank)
        self.settle()
        del self._out[rank]
        self._has[rank] = False
        self._count -= 1
        for col, default_value in zip(self._cols, self._defaults, strict=True):
            col[rank] = default_value
        return e

    def clear(self) -> None:
        self.far.clear()
        self.__init__(tuple(zip(self._fields, self._defaults, strict=True)))  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        """The same fields and entries (NaN equal to NaN, as stored state reads back)."""
        if not isinstance(other, RankEntries):
            return NotImplemented
        if self._fields != other._fields or self.keys() != other.keys():
            return False
        mine, theirs = self.present(), other.present()
        for kind, a, b in zip(self._kinds, self._cols, other._cols, strict=True):
            x, y = a[: len(mine)][mine], b[: len(theirs)][theirs]
            if kind is None:
                if x.tolist() != y.tolist():
                    return False
            elif not np.array_equal(x, y, equal_nan=kind is np.float64):
                return False
        return repr(self.far) == repr(other.far)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RankEntries({len(self)} ranks, fields {', '.join(self._fields)})"

    def __getstate__(self) -> dict[str, Any]:
        self.settle()
        state = {name: getattr(self, name) for name in RankEntries.__slots__}
        state["_out"] = {}  # copied into the columns: a copy or a pickle starts with none live
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
