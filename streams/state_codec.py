"""Engine state <-> bytes, for the worker's changelog-backed table.

Only the worker reads what it wrote, through its own changelog topic, but a worker of a newer
version must read what an older one wrote. So the format names no Python class: it is
MessagePack of plain values (maps, arrays, numbers, strings) with field *names*, compressed
with zlib and prefixed with a magic and a format version. A detector's state is rebuilt from
the state a fresh detector starts with (its *template*): a field added since takes its default,
a field removed is dropped, and a class renamed or moved changes nothing. Old formats are
upgraded in one place, :func:`_read` (format 1 was a pickle of the engine's classes).

A job is stored in *parts* so that no record grows with the number of ranks:

- the *head*: the job-level fields, the detectors' job-level slots *without* their rank-keyed
  tables, the incident book (rank sets as ranges), and the layout (which chunks exist, how many
  ranks a chunk holds);
- one *chunk* per ``ranks_per_chunk`` consecutive ranks: each rank's own state, plus that rank's
  entries of every rank-keyed table of the job (a detector names its tables in
  ``rank_keyed``; the engine's own are the pending findings per rank and the ranks that ended).

>>> from rankwatch.streams import Engine, JobState, RankState
>>> engine = Engine.with_builtin_detectors()
>>> job = JobState("j", world_size=2, ranks={0: RankState(0, "h0", last_step=5)})
>>> head, chunks = encode_parts(job, Layout.of(engine, "j"))
>>> join_parts(head, chunks, Layout.of(engine, "j")) == job
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from rankwatch.schemas import StepEvent
from rankwatch.schemas.records import ColumnRow, build_records
from rankwatch.streams.detectors.base import JobDetector, JobState, RankState, StepDetector
from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.findings import Finding, Resolution
from rankwatch.streams.frames.entries import RankEntries

if TYPE_CHECKING:
    from rankwatch.streams.engine import Engine

_MAGIC = b"RWS"
#: The format written. 1: a pickle of the engine's classes (read, upgraded, never written).
FORMAT = 2
_LEVEL = 1  # zlib level 1: most of the gain (the state is repetitive) at a fraction of the cost

#: Ranks per stored chunk to begin with; a job whose ranks carry more state gets fewer per chunk
#: (see :mod:`rankwatch.streams.snapshots`).
DEFAULT_RANKS_PER_CHUNK = 512

_EXT_ARRAY = 1  # array.array: its typecode, then its machine bytes


class StateCodecError(StreamsError, ValueError):
    """Bytes that are not engine state of a known format (corrupt, or from another product)."""


# -- plain values <-> bytes ----------------------------------------------------------------------


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, RankEntries):  # a rank-keyed table in the head: its entries are in chunks
        return {}
    if isinstance(obj, array):
        return msgspec.msgpack.Ext(_EXT_ARRAY, obj.typecode.encode() + obj.tobytes())
    raise TypeError(f"engine state holds a {type(obj).__name__}, which is not plain data")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == _EXT_ARRAY:
        out = array(chr(data[0]))
        out.frombytes(data[1:])
        return out
    raise StateCodecError(f"unknown extension type {code} in engine state")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_DECODER = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def _dump(kind: str, obj: Any) -> bytes:
    return _MAGIC + bytes([FORMAT]) + zlib.compress(_ENCODER.encode([kind, obj]), _LEVEL)


def _read(data: bytes) -> tuple[int, Any]:
    """``(format, value)`` of a stored record, of any format this version reads."""
    if len(data) < 4 or not data.startswith(_MAGIC):
        raise StateCodecError(f"not rankwatch engine state (starts with {data[:4]!r})")
    # Format 1 wrote its version as the character "1"; later formats write it as a byte.
    version = 1 if data[3:4] == b"1" else data[3]
    try:
        raw = zlib.decompress(data[4:])
        if version == 1:
            import pickle

            # Format 1, written by this worker alone before it stopped pickling: read once and
            # rewritten in format 2 at the next snapshot.
            return 1, pickle.loads(raw)
        if version == FORMAT:
            return FORMAT, _DECODER.decode(raw)
    except Exception as exc:  # zlib.error, msgpack errors, a moved class in format 1
        raise StateCodecError(f"cannot decode engine state: {exc!r}") from None
    raise StateCodecError(f"engine state of format {version}; this version reads 1 and {FORMAT}")


# -- what a job's state looks like ---------------------------------------------------------------

_RANK_FIELDS = tuple(f.name for f in dataclasses.fields(RankState) if f.name not in ("slots",))
_JOB_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(JobState)
    if f.name not in ("ranks", "slots", "incidents", "pending", "ended", "tables", "checked_out")
)


@dataclass(frozen=True, slots=True)
class Layout:
    """How one job's state is laid out: the detectors' templates and rank-keyed tables."""

    #: slot name -> the type of a fresh per-rank state (to rebuild it by field name)
    rank_types: Mapping[str, type]
    #: slot name -> the type of a fresh job-level state
    job_types: Mapping[str, type]
    #: slot name -> paths of its rank-keyed tables ("r", "nccl.ep.ranks", "p.*", "" = the slot)
    rank_keyed: Mapping[str, tuple[str, ...]]
    ranks_per_chunk: int = DEFAULT_RANKS_PER_CHUNK
    #: slot name -> {key: an empty table}, for each rank-keyed table a rule keeps as columns
    #: (:class:`RankEntries`): stored as a mapping of rank -> entry, made columns again on read.
    entry_tables: Mapping[str, Mapping[str, RankEntries]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, engine: Engine, job_id: str, ranks_per_chunk: int = DEFAULT_RANKS_PER_CHUNK
    ) -> Layout:
        rank_types: dict[str, type] = {}
        job_types: dict[str, type] = {}
        keyed: dict[str, tuple[str, ...]] = {}
        entry_tables: dict[str, dict[str, RankEntries]] = {}
        for d in engine.detectors_for(job_id):
            # The engine's own classification order: JobDetector, then StepDetector, then log.
            if isinstance(d, StepDetector) and not isinstance(d, JobDetector):
                rank_types[d.name] = type(d.new_rank_state())
            else:
                fresh = d.new_job_state()
                job_types[d.name] = type(fresh)
                keyed[d.name] = tuple(getattr(d, "rank_keyed", ()))
                if isinstance(fresh, dict):
                    tables = {k: v for k, v in fresh.items() if isinstance(v, RankEntries)}
                    if tables:
                        entry_tables[d.name] = tables
        return cls(rank_types, job_types, keyed, ranks_per_chunk, entry_tables)

    def with_chunk(self, ranks_per_chunk: int) -> Layout:
        return dataclasses.replace(self, ranks_per_chunk=ranks_per_chunk)


Path = tuple[Any, ...]


def _expand(node: Any, parts: Sequence[str], at: Path) -> Iterator[tuple[Path, Any]]:
    if not parts:
        if isinstance(node, dict | RankEntries):
            yield at, node
        return
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        for key, value in node.items():
            yield from _expand(value, rest, (*at, key))
    elif head in node:
        yield from _expand(node[head], rest, (*at, head))


def rank_tables(job: JobState, layout: Layout) -> list[tuple[Path, Any]]:
    """Every rank-keyed table of the job (a dict, or :class:`RankEntries`), with its path from
    the job's ``slots``/``pending``."""
    found: list[tuple[Path, Any]] = []
    for name, paths in layout.rank_keyed.items():
        slot = job.slots.get(name)
        for path in paths:
            found.extend(_expand(slot, path.split(".") if path else (), ("slots", name)))
    found.extend(_expand(job.pending, ("*", "findings"), ("pending",)))
    return found


def _ranges(ranks: set[int]) -> list[int]:
    """A set of ranks as flat ``[first, last, first, last, ...]``: 131,072 ranks in 2 numbers.

    >>> _ranges({0, 1, 2, 7, 9, 10})
    [0, 2, 7, 7, 9, 10]
    """
    out: list[int] = []
    for r in sorted(ranks):
        if out and r == out[-1] + 1:
            out[-1] = r
        else:
            out += [r, r]
    return out


def _from_ranges(flat: Sequence[int]) -> set[int]:
    out: set[int] = set()
    for i in range(0, len(flat), 2):
        out.update(range(flat[i], flat[i + 1] + 1))
    return out


def _outcome(o: Finding | Resolution) -> list[Any]:
    kind = "F" if isinstance(o, Finding) else "R"
    return [kind, {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}]


def _from_outcome(value: Sequence[Any]) -> Finding | Resolution:
    if value[0] == "F":
        return msgspec.convert(value[1], Finding)
    return msgspec.convert(value[1], Resolution)


# -- encode --------------------------------------------------------------------------------------


def encode_parts(job: JobState, layout: Layout) -> tuple[bytes, dict[int, bytes]]:
    """The job as ``(head, {chunk number: chunk})``; see the module docstring."""
    parts = JobParts(job, layout)
    return parts.head, {c: parts.chunk(c) for c in parts.numbers}


def digest(value: bytes) -> bytes:
    """What tells a record's bytes from any other's: the snapshot store writes a record only
    when this changed."""
    return hashlib.blake2b(value, digest_size=16).digest()


class JobParts:
    """One job split for a snapshot: the head at once, each chunk when asked for.

    Encoding a chunk costs its ranks' whole state; a snapshot encodes only the chunks whose
    ranks had events, and of the others only their entries in the job's rank-keyed tables
    (:meth:`tables_digest`), which a cross-rank rule may change at a tick without an event
    of theirs (a rank marked silent).
    """

    def __init__(self, job: JobState, layout: Layout) -> None:
        self.job = job
        self.per = per = layout.ranks_per_chunk
        tables = rank_tables(job, layout)
        # The head is written with the rank-keyed dicts emptied in place and refilled after
        # (one thread owns the engine): no copy of a job's largest structures per snapshot.
        # A table of columns is written empty in the head (_enc_hook), its entries as lists.
        saved: list[dict[int, Any]] = [
            dict(t.items()) if isinstance(t, RankEntries) else dict(t) for _, t in tables
        ]
        emptied = [t for _, t in tables if isinstance(t, dict)]
        for t in emptied:
            t.clear()
        try:
            self.head = _dump("head", _head_value(job, per))
        finally:
            for (_, t), entries in zip(tables, saved, strict=True):
                if isinstance(t, dict):
                    t.update(entries)
        self._tables: dict[int, dict[int, list[Any]]] = {}
        for i, (path, _) in enumerate(tables):
            pending = path[0] == "pending"  # a Finding: stored as its kind and fields
            for rank, entry in saved[i].items():
                if pending:
                    entry = _outcome(entry)
                bucket = self._tables.setdefault(rank // per, {})
                bucket.setdefault(i, [list(path), {}])[1][rank] = entry
        self._orphans: dict[int, list[int]] = {}  # ended ranks with no state of their own
        for r in sorted(job.ended):
            if r not in job.ranks:
                self._orphans.setdefault(r // per, []).append(r)
        numbers = {r // per for r in job.ranks} | self._orphans.keys() | self._tables.keys()
        self.numbers: list[int] = sorted(numbers)

    def tables_digest(self, chunk: int) -> bytes:
        """A digest of the chunk's entries in the rank-keyed tables alone."""
        return digest(_ENCODER.encode(list(self._tables.get(chunk, {}).values())))

    def chunk(self, chunk: int) -> bytes:
        job, per = self.job, self.per
        ranks = job.ranks
        if len(ranks) > per * 4:  # a big job: look the chunk's ranks up, do not scan them all
            members = [r for r in range(chunk * per, (chunk + 1) * per) if r in ranks]
        else:
            members = sorted(r for r in ranks if r // per == chunk)
        # Held rows by reference read their values from a record: built for all at once.
        build_records(e[4] for r in members for e in ranks[r].held if type(e[4]) is ColumnRow)
        values = [_rank_value(ranks[r], r in job.ended) for r in members]
        if job.tables:
            _add_table_rows(job, members, values)
        values += [{"rank": r, "ended": True, "orphan": True} for r in self._orphans.get(chunk, ())]
        tables = list(self._tables.get(chunk, {}).values())
        return _dump("chunk", {"ranks": values, "tables": tables})


def _head_value(job: JobState, per: int) -> dict[str, Any]:
    incidents = {
        key: {**inc, "ranks": _ranges(inc["ranks"]), "firing": _ranges(inc["firing"])}
        for key, inc in job.incidents.items()
    }
    pending = {
        key: {**group, "findings": {r: _outcome(f) for r, f in group["findings"].items()}}
        for key, group in job.pending.items()
    }
    chunks = sorted({r // per for r in job.ranks} | {r // per for r in job.ended})
    return {
        "job": {name: getattr(job, name) for name in _JOB_FIELDS},
        "slots": job.slots,
        "incidents": incidents,
        "pending": pending,
        "chunks": chunks,
        "ranks_per_chunk": per,
    }


def _event_fields(event: StepEvent) -> dict[str, Any]:
    """A held step event as the fields it was given (validated when it arrived: rebuilt
    without validating again, 6x cheaper than its wire form both ways)."""
    if not isinstance(event, StepEvent):  # a row of decoded columns (schemas.StepRecord)
        return event.given()
    # The declared fields it was given: an unknown field (kept by the contract, read by no
    # detector) is in model_fields_set but not in __dict__, and may hold what the format
    # cannot (an integer past 64 bits).
    values = event.__dict__
    return {name: values[name] for name in event.model_fields_set if name in values}


def _event_from(value: Mapping[str, Any]) -> StepEvent:
    if not {"job_id", "rank", "step"} <= value.keys():  # not what _event_fields writes
        raise StateCodecError(f"a held step event without its fields: {sorted(value)}")
    return StepEvent.model_construct(_fields_set=set(value), **value)


def _add_table_rows(job: JobState, members: list[int], values: list[dict[str, Any]]) -> None:
    """The frame rules' state of these ranks, from their tables, into each rank's ``slots``
    (stored as the scalar engine stores it: one format for both paths). A rank whose state
    is checked out has it in its slots already."""
    for name, table in job.tables.items():
        at = [i for i, r in enumerate(members) if r < len(table) and name not in values[i]["slots"]]
        if not at:
            continue
        states = table.states_at(np.array([members[i] for i in at], dtype=np.int64))
        for i, state in zip(at, states, strict=True):
            value = values[i]
            if value["slots"] is job.ranks[members[i]].slots:
                value["slots"] = dict(value["slots"])  # the rank's own dict stays as it is
            value["slots"][name] = state


def _rank_value(rs: RankState, ended: bool) -> dict[str, Any]:
    value = {name: getattr(rs, name) for name in _RANK_FIELDS}
    value["held"] = [
        [t, rank, step, seq, _event_fields(event), [_outcome(o) for o in found]]
        for t, rank, step, seq, event, found in rs.held
    ]
    value["slots"] = rs.slots
    value["ended"] = ended
    return value


def encode_job(job: JobState, layout: Layout | None = None) -> bytes:
    """The whole state of one job as one value (small jobs, tests); see :func:`decode_job`."""
    head, chunks = encode_parts(job, layout or _builtin_layout(job.job_id))
    return _dump("job", {"head": head, "chunks": chunks})


def decode_job(data: bytes, layout: Layout | None = None) -> JobState:
    """A job from :func:`encode_job`; ``layout`` defaults to the built-in detectors'."""
    value = _expect(_read(data)[1], "job")
    return join_parts(value["head"], value["chunks"], layout or _builtin_layout(""))


def _builtin_layout(job_id: str) -> Layout:
    from rankwatch.streams.engine import Engine

    return Layout.of(Engine.with_builtin_detectors(), job_id)


# -- decode --------------------------------------------------------------------------------------


def read_head(data: bytes) -> tuple[list[int], int]:
    """``(chunk numbers, ranks_per_chunk)`` of a stored head, of any format."""
    version, value = _read(data)
    if version == 1:
        _, chunks, per = _v1_head(value)
        return list(chunks), int(per)
    head = _expect(value, "head")
    return list(head["chunks"]), int(head["ranks_per_chunk"])


def join_parts(head: bytes, chunks: Mapping[int, bytes], layout: Layout) -> JobState:
    """Rebuild a job from its head and whichever of its chunks were found.

    A chunk that is missing (a crash between writing parts) leaves its ranks out; they start
    afresh at their next event, which at worst delays a per-rank rule by a window.
    """
    version, value = _read(head)
    if version == 1:
        return _v1_join(value, chunks)
    head_value = _expect(value, "head")
    job = JobState(head_value["job"]["job_id"])
    for name in _JOB_FIELDS:
        if name in head_value["job"]:
            setattr(job, name, head_value["job"][name])
    if job.restart is not None:
        job.restart = dict(job.restart)
    job.slots = {
        name: _rebuild(state, layout.job_types.get(name))
        for name, state in head_value["slots"].items()
    }
    job.incidents = {
        key: {**inc, "ranks": _from_ranges(inc["ranks"]), "firing": _from_ranges(inc["firing"])}
        for key, inc in head_value["incidents"].items()
    }
    job.pending = {
        key: {**g, "findings": {int(r): _from_outcome(f) for r, f in g["findings"].items()}}
        for key, g in head_value["pending"].items()
    }
    for data in chunks.values():
        chunk = _expect(_read(data)[1], "chunk")
        for value in chunk["ranks"]:
            if value.get("orphan"):  # a rank that ended before any state of its own
                job.ended.add(value["rank"])
                continue
            rs = _rank_from(value, layout)
            job.ranks[rs.rank] = rs
            if value.get("ended"):
                job.ended.add(rs.rank)
        for path, entries in chunk["tables"]:
            table = _locate(job, path)
            if table is not None:
                if path[0] == "pending":
                    entries = {r: _from_outcome(f) for r, f in entries.items()}
                table.update(entries)
    _as_columns(job, layout)
    return job


def _as_columns(job: JobState, layout: Layout) -> None:
    """The rank-keyed tables a rule keeps as columns, made columns again (stored, and in the
    head, they are mappings of rank -> entry; a state stored before the rule had columns
    reads the same way)."""
    for name, tables in layout.entry_tables.items():
        slot = job.slots.get(name)
        if not isinstance(slot, dict):
            continue
        for key, template in tables.items():
            stored = slot.get(key)
            if isinstance(stored, dict):
                table = template.like()
                table.update(stored)
                slot[key] = table


def _expect(value: Any, kind: str) -> dict[str, Any]:
    if not (isinstance(value, list) and len(value) == 2 and value[0] == kind):
        got = value[0] if isinstance(value, list) and value else type(value).__name__
        raise StateCodecError(f"expected a job {kind}, got {got!r}")
    return value[1]  # type: ignore[no-any-return]


def _rebuild(value: Any, template: type | None) -> Any:
    """A detector's state from its stored fields, by the type a fresh one has."""
    if template is not None and dataclasses.is_dataclass(template) and isinstance(value, dict):
        try:
            return msgspec.convert(value, template)
        except msgspec.ValidationError as exc:
            raise StateCodecError(f"stored {template.__name__} does not fit: {exc}") from None
    return value


def _rank_from(value: Mapping[str, Any], layout: Layout) -> RankState:
    rs = RankState(value["rank"])
    for name in _RANK_FIELDS:
        if name in value and name != "held":
            setattr(rs, name, value[name])
    rs.held = [
        (t, rank, step, seq, _event_from(event), tuple(_from_outcome(o) for o in found))
        for t, rank, step, seq, event, found in value.get("held", ())
    ]
    rs.slots = {
        name: _rebuild(state, layout.rank_types.get(name)) for name, state in value["slots"].items()
    }
    return rs


def _locate(job: JobState, path: Sequence[Any]) -> dict[int, Any] | None:
    node: Any = job.slots if path[0] == "slots" else job.pending
    for key in path[1:]:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


# -- format 1 (a pickle), read for the upgrade -----------------------------------------------------


def _v1_head(value: Any) -> tuple[JobState, list[int], int]:
    if not (isinstance(value, tuple) and len(value) == 3 and isinstance(value[0], JobState)):
        raise StateCodecError("expected a job head (JobState, chunks, ranks_per_chunk)")
    return value


def _v1_join(head: Any, chunks: Mapping[int, bytes]) -> JobState:
    job, _, _ = _v1_head(head)
    for f in dataclasses.fields(JobState):  # fields added since: their defaults
        try:
            getattr(job, f.name)
        except AttributeError:
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            setattr(job, f.name, default)
    for data in chunks.values():
        version, ranks = _read(data)
        if version != 1 or not isinstance(ranks, dict):
            raise StateCodecError("a format-1 head with chunks of another format")
        job.ranks.update(ranks)
    return job
