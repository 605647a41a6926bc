"""Engine state persisted per job in a key-value table (the worker's changelog or Faust table).

Layout (see :mod:`rankwatch.streams.state_codec`): key ``JOB`` holds the job's head, ``JOB#N``
its chunk of ranks number N. Each value is written to the changelog partition that the job's
events come from, so a worker assigned that partition recovers exactly its jobs.

Every record stays well under the changelog's message limit whatever the job's size: the head
holds nothing per rank, and a job whose chunks come out larger than a quarter of the limit gets
fewer ranks per chunk (from then on). A record that would still be over the limit is refused
with :class:`StateTooLarge`, naming the job, the key and the sizes, before anything of that
snapshot is committed.

A save encodes the head, the chunks whose ranks had events, and any other chunk whose entries
in the job's rank-keyed tables changed; of those, only records whose bytes differ from what the
key holds are written: a job whose one rank logged rewrites that rank's chunk and the head.

This module knows nothing of Kafka or Faust: it takes any :class:`KeyValue`, which keeps it
testable with a dict.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from rankwatch.streams.detectors.base import JobState
from rankwatch.streams.engine import Engine
from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.state_codec import (
    DEFAULT_RANKS_PER_CHUNK,
    JobParts,
    Layout,
    StateCodecError,
    digest,
    join_parts,
    read_head,
)

log = logging.getLogger(__name__)

#: What Kafka takes by default: the producer's ``message.max.bytes`` (1,000,000) is below the
#: broker's ``message.max.bytes``/topic ``max.message.bytes`` (1,048,588).
DEFAULT_MAX_RECORD_BYTES = 1_000_000


class StateTooLarge(StreamsError):
    """A state record over the changelog's message limit: it cannot be written."""

    def __init__(self, job_id: str, key: bytes, size: int, limit: int) -> None:
        super().__init__(
            f"job {job_id}: state record {key.decode(errors='replace')!r} is {size:,} bytes, over "
            f"the changelog's limit of {limit:,} bytes; nothing of this snapshot is committed"
        )
        self.job_id, self.key, self.size, self.limit = job_id, key, size, limit


@dataclass
class SnapshotPlan:
    """The records one save of a job writes, and what the store remembers of them: plain
    data, so that a forked process can compute it and hand it back."""

    job_id: str
    partition: int | None
    #: ranks per chunk, when the job's chunks had to shrink (remembered from then on)
    per: int | None
    #: (key, value, digest of value) of the records whose bytes changed
    records: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    #: chunk key -> digest of its table entries, for the chunks encoded
    tables: dict[bytes, bytes] = field(default_factory=dict)


class KeyValue(Protocol):
    """Where snapshots live: the worker's table, or a dict in tests."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, partition: int | None) -> None: ...


class DictKeyValue:
    """A :class:`KeyValue` in memory (tests, and a worker without persistence)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.partitions: dict[bytes, int | None] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, partition: int | None) -> None:
        self.data[key] = value
        self.partitions[key] = partition


def head_key(job_id: str) -> bytes:
    return job_id.encode()


def chunk_key(job_id: str, chunk: int) -> bytes:
    # '#' cannot occur in a job id (CONTRACT.md: [A-Za-z0-9._:-]), so keys never collide.
    return f"{job_id}#{chunk}".encode()


class SnapshotStore:
    """Saves and loads engine job states in parts; see the module docstring."""

    def __init__(
        self,
        kv: KeyValue,
        engine: Engine,
        ranks_per_chunk: int = DEFAULT_RANKS_PER_CHUNK,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if max_record_bytes < 4096:
            raise StreamsError(f"max_record_bytes must be at least 4096, got {max_record_bytes}")
        self.kv = kv
        self.engine = engine
        self.ranks_per_chunk = ranks_per_chunk
        self.max_record_bytes = max_record_bytes
        #: The largest record written so far (bytes), for the worker's figures.
        self.largest_record = 0
        self._chunking: dict[str, int] = {}  # job -> ranks per chunk, once it had to shrink
        self._digests: dict[bytes, bytes] = {}  # key -> digest of what it holds now
        self._tables: dict[bytes, bytes] = {}  # chunk key -> digest of its table entries

    def fit_limit(self, topic_limit: int | None) -> None:
        """Keep records within the changelog topic's ``max.message.bytes`` too (the producer's
        own limit, the default, is usually the lower one)."""
        if topic_limit is not None and 4096 <= topic_limit < self.max_record_bytes:
            self.max_record_bytes = topic_limit

    @property
    def chunk_bytes(self) -> int:
        """A chunk larger than this is split: a quarter of the limit leaves room for growth
        between snapshots (a rank's state grows slowly, never by a factor of four)."""
        return self.max_record_bytes // 4

    def save(self, job: JobState, chunks: Iterable[int] | None, partition: int | None) -> int:
        """Write the records of ``job`` that changed since last written; return bytes written.

        ``chunks``: the chunks (of ``ranks_per_chunk`` ranks, as the runtimes count them) whose
        ranks had events since the last save, or None for all. Those are encoded whole; of
        every other chunk only its entries in the job's rank-keyed tables are, and it is
        encoded whole too when they changed (a cross-rank rule marked a quiet rank at a tick).
        """
        return self.apply(self.plan(job, chunks, partition))

    def plan(
        self, job: JobState, chunks: Iterable[int] | None, partition: int | None
    ) -> SnapshotPlan:
        """What :meth:`save` would write, computed without writing or remembering anything:
        a forked process plans, the worker applies (:mod:`rankwatch.streams.runtime.forked`).
        Raises :class:`StateTooLarge` as :meth:`save` does."""
        per = self._chunking.get(job.job_id, self.ranks_per_chunk)
        tables: dict[bytes, bytes] = {}
        records = self._records(job, per, chunks, tables)  # the chunks, then the head
        while any(len(v) > self.chunk_bytes for _, v in records[:-1]):
            if per == 1:
                break  # one rank's state alone: the limit check below decides
            per = max(1, per // 2)  # a new layout: every chunk is written anew
            tables = {}  # the old layout's digests name other ranks
            records = self._records(job, per, None, tables)
        for key, value in records:
            if len(value) > self.max_record_bytes:
                raise StateTooLarge(job.job_id, key, len(value), self.max_record_bytes)
        plan = SnapshotPlan(job.job_id, partition, per if per != self.ranks_per_chunk else None)
        plan.tables = tables
        for key, value in records:
            seen = digest(value)
            if self._digests.get(key) != seen:
                plan.records.append((key, value, seen))
        return plan

    def apply(self, plan: SnapshotPlan) -> int:
        """Write a plan's records and remember what they hold; return bytes written."""
        if plan.per is not None:
            self._chunking[plan.job_id] = plan.per
        self._tables.update(plan.tables)
        written = 0
        for key, value, seen in plan.records:
            self.kv.put(key, value, plan.partition)
            self._digests[key] = seen
            written += len(value)
            self.largest_record = max(self.largest_record, len(value))
        return written

    def _records(
        self, job: JobState, per: int, dirty: Iterable[int] | None, seen: dict[bytes, bytes]
    ) -> list[tuple[bytes, bytes]]:
        """(key, value) of the chunks to write, then the head (last: it names the chunks,
        and a reader never sees a head ahead of them). ``seen`` gets the table digests of the
        chunks encoded."""
        parts = JobParts(job, Layout.of(self.engine, job.job_id, per))
        wanted: set[int] | None = None
        if dirty is not None and per == self.ranks_per_chunk:
            wanted = set(dirty)
        elif dirty is not None:  # the job's chunks are smaller than the runtime's
            base = self.ranks_per_chunk
            wanted = {
                c for d in dirty for c in range(d * base // per, ((d + 1) * base - 1) // per + 1)
            }
        records = []
        for c in parts.numbers:
            key = chunk_key(job.job_id, c)
            tables = parts.tables_digest(c)
            if wanted is None or c in wanted or self._tables.get(key) != tables:
                records.append((key, parts.chunk(c)))
                seen[key] = tables
        records.append((head_key(job.job_id), parts.head))
        return records

    def load(self, job_id: str) -> JobState | None:
        """The job as last saved (fitted to the detectors by :meth:`Engine.adopt`); None if
        never saved, or unreadable (logged: the job starts afresh)."""
        head = self.kv.get(head_key(job_id))
        if head is None:
            return None
        try:
            chunk_ids, per = read_head(head)
            parts = {}
            for chunk in chunk_ids:
                key = chunk_key(job_id, chunk)
                value = self.kv.get(key)
                if value is not None:
                    parts[chunk] = value
                    self._digests[key] = digest(value)
            job = join_parts(head, parts, Layout.of(self.engine, job_id, per))
        except StateCodecError as exc:
            # State from an incompatible version must not wedge the worker: start the job
            # afresh (its incidents may alert once more, under the same deterministic ids).
            log.warning("job %s: stored state unreadable, starting afresh: %s", job_id, exc)
            return None
        self._digests[head_key(job_id)] = digest(head)
        if per != self.ranks_per_chunk:
            self._chunking[job_id] = per
        return job

    def forget(self, job_id: str) -> None:
        """Drop what is remembered of a job another worker owns now."""
        self._chunking.pop(job_id, None)
        prefix = job_id.encode()
        for key in [k for k in self._digests if k == prefix or k.startswith(prefix + b"#")]:
            del self._digests[key]
            self._tables.pop(key, None)
