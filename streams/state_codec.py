"""Engine state <-> bytes, for the worker's changelog-backed table.

The format is internal: only the worker reads what it wrote, through its own changelog topic.
So it is a pickle of the engine's slotted dataclasses (fast, and it keeps ``set``,
``array('d')`` and :class:`~rankwatch.streams.findings.Finding` as they are), compressed with
zlib and prefixed with a magic and a format version so that a future format can be told apart.

A job of 16,384 ranks holds megabytes of state, more than one Kafka message may carry and
more than a worker should rewrite for one event. So a job is stored in *parts*: a *head* (the
job-level fields and slots, incidents included, and which rank chunks exist) and one part per
chunk of ``ranks_per_chunk`` consecutive ranks. The worker rewrites only the chunks whose ranks
had events since its last snapshot.

>>> from rankwatch.streams import JobState, RankState
>>> job = JobState("j", world_size=2, ranks={0: RankState(0, "h0", last_step=5)})
>>> decode_job(encode_job(job)) == job
True
"""

from __future__ import annotations

import dataclasses
import pickle
import zlib
from collections.abc import Mapping

from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.exceptions import StreamsError

_MAGIC = b"RWS1"
_LEVEL = 1  # zlib level 1: most of the gain (the state is repetitive) at a fraction of the cost

#: Ranks per stored chunk. At well under 1 KB of state per rank, a chunk stays far below
#: Kafka's default 1 MiB message limit even before compression.
DEFAULT_RANKS_PER_CHUNK = 512


class StateCodecError(StreamsError, ValueError):
    """Bytes that are not engine state of this format (corrupt, or from another version)."""


def _dump(obj: object) -> bytes:
    return _MAGIC + zlib.compress(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL), _LEVEL)


def _load(data: bytes) -> object:
    if not data.startswith(_MAGIC):
        raise StateCodecError(f"not rankwatch engine state (starts with {data[:4]!r})")
    try:
        # pickle is safe here only because the changelog is written by this worker alone;
        # never point this at a topic that others can write to.
        return pickle.loads(zlib.decompress(data[len(_MAGIC) :]))
    except Exception as exc:  # zlib.error, UnpicklingError, AttributeError of a moved class
        raise StateCodecError(f"cannot decode engine state: {exc!r}") from None


def _upgrade(job: JobState) -> JobState:
    """Fields added to :class:`JobState` since the state was written take their defaults
    (unpickling a slotted dataclass leaves a slot it did not know unset)."""
    for f in _JOB_FIELDS:
        try:
            getattr(job, f.name)
        except AttributeError:
            value = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            setattr(job, f.name, value)
    return job


_JOB_FIELDS = dataclasses.fields(JobState)


def encode_job(job: JobState) -> bytes:
    """The whole state of one job as one value (fine for small jobs and for tests)."""
    return _dump(job)


def decode_job(data: bytes) -> JobState:
    job = _load(data)
    if not isinstance(job, JobState):
        raise StateCodecError(f"expected a JobState, got {type(job).__name__}")
    return _upgrade(job)


def chunk_of(rank: int, ranks_per_chunk: int = DEFAULT_RANKS_PER_CHUNK) -> int:
    return rank // ranks_per_chunk


def encode_head(job: JobState, ranks_per_chunk: int = DEFAULT_RANKS_PER_CHUNK) -> bytes:
    """The job without its ranks, plus the list of chunks that hold them."""
    chunks = sorted({chunk_of(r, ranks_per_chunk) for r in job.ranks})
    # replace() is a shallow copy: the job-level slots are shared, not duplicated.
    return _dump((dataclasses.replace(job, ranks={}), chunks, ranks_per_chunk))


def decode_head(data: bytes) -> tuple[JobState, list[int], int]:
    """``(job without ranks, chunk numbers, ranks_per_chunk)``."""
    value = _load(data)
    if not (isinstance(value, tuple) and len(value) == 3 and isinstance(value[0], JobState)):
        raise StateCodecError("expected a job head (JobState, chunks, ranks_per_chunk)")
    job, chunks, per_chunk = value
    return _upgrade(job), list(chunks), int(per_chunk)


def encode_chunk(
    job: JobState, chunk: int, ranks_per_chunk: int = DEFAULT_RANKS_PER_CHUNK
) -> bytes:
    """The ranks of one chunk of ``job``."""
    lo = chunk * ranks_per_chunk
    hi = lo + ranks_per_chunk
    if len(job.ranks) <= ranks_per_chunk * 4:
        ranks = {r: s for r, s in job.ranks.items() if lo <= r < hi}
    else:  # a big job: look the chunk's ranks up instead of scanning every rank
        ranks = {r: job.ranks[r] for r in range(lo, hi) if r in job.ranks}
    return _dump(ranks)


def decode_chunk(data: bytes) -> dict[int, RankState]:
    ranks = _load(data)
    if not isinstance(ranks, dict):
        raise StateCodecError(f"expected a chunk of ranks, got {type(ranks).__name__}")
    return ranks


def join_parts(head: bytes, chunks: Mapping[int, bytes]) -> JobState:
    """Rebuild a job from its head and whichever of its chunks were found.

    A chunk that is missing (a crash between writing parts) leaves its ranks out; they start
    afresh at their next event, which at worst delays a per-rank rule by a window.
    """
    job, _, _ = decode_head(head)
    for data in chunks.values():
        job.ranks.update(decode_chunk(data))
    return job
