"""Engine state persisted per job in a key-value table (the worker's Faust table).

Layout (see :mod:`rankwatch.streams.state_codec`): key ``JOB`` holds the job's head,
``JOB#N`` its chunk of ranks number N. Each value is written to the changelog partition that
the job's events come from, so a worker assigned that partition recovers exactly its jobs.

This module knows nothing of Faust: it takes any :class:`KeyValue`, which keeps it testable
with a dict.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from rankwatch.streams.detectors.base import JobDetector, JobState, StepDetector
from rankwatch.streams.engine import Engine
from rankwatch.streams.state_codec import (
    DEFAULT_RANKS_PER_CHUNK,
    StateCodecError,
    decode_head,
    encode_chunk,
    encode_head,
    join_parts,
)

log = logging.getLogger(__name__)


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
        self, kv: KeyValue, engine: Engine, ranks_per_chunk: int = DEFAULT_RANKS_PER_CHUNK
    ) -> None:
        self.kv = kv
        self.engine = engine
        self.ranks_per_chunk = ranks_per_chunk

    def save(self, job: JobState, chunks: Iterable[int] | None, partition: int | None) -> int:
        """Write the head and the given rank chunks (all of them if None); return bytes written."""
        per = self.ranks_per_chunk
        if chunks is None:
            chunks = {r // per for r in job.ranks}
        written = 0
        for chunk in sorted(chunks):
            value = encode_chunk(job, chunk, per)
            self.kv.put(chunk_key(job.job_id, chunk), value, partition)
            written += len(value)
        # The head last: it names the chunks, and a reader never sees a head ahead of them.
        head = encode_head(job, per)
        self.kv.put(head_key(job.job_id), head, partition)
        return written + len(head)

    def load(self, job_id: str) -> JobState | None:
        """The job as last saved, fitted to this engine's detectors; None if never saved."""
        head = self.kv.get(head_key(job_id))
        if head is None:
            return None
        try:
            _, chunk_ids, _ = decode_head(head)
            parts = {}
            for chunk in chunk_ids:
                value = self.kv.get(chunk_key(job_id, chunk))
                if value is not None:
                    parts[chunk] = value
            job = join_parts(head, parts)
        except StateCodecError as exc:
            # State from an incompatible version must not wedge the worker: start the job
            # afresh (its incidents may alert once more, under the same deterministic ids).
            log.warning("job %s: stored state unreadable, starting afresh: %s", job_id, exc)
            return None
        self._fit(job)
        return job

    def _fit(self, job: JobState) -> None:
        """Add slots for detectors added since the state was saved; drop removed ones."""
        names: set[str] = set()
        for d in self.engine.detectors_for(job.job_id):  # per-job rules: its own set
            names.add(d.name)
            # The engine's own classification order: JobDetector, then StepDetector, then log.
            if isinstance(d, StepDetector) and not isinstance(d, JobDetector):
                for rank in job.ranks.values():
                    if d.name not in rank.slots:
                        rank.slots[d.name] = d.new_rank_state()
            elif d.name not in job.slots:
                job.slots[d.name] = d.new_job_state()
        for key in [k for k in job.slots if k not in names]:
            del job.slots[key]
