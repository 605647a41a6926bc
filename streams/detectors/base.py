"""The three shapes a detector can take, and the per-rank/per-job views they read.

- :class:`StepDetector`: sees each new step event of one rank (per-rank metric rules).
- :class:`LogDetector`: sees each log record of one rank (pattern rules).
- :class:`JobDetector`: sees the whole job at ticks of event time (cross-rank rules).

A detector keeps its state in the slot the engine gives it (``rank.slots[name]`` or
``job.slots[name]``), created by ``new_rank_state()`` / ``new_job_state()``. State must be
plain data (numbers, strings, lists, dicts, ``array('d')``) so the worker can persist it to a
changelog and a restarted worker resumes where it was. Keep it small: O(1) per event, and
well under 1 KB per rank per detector (16,384 ranks must fit in memory).

Stored state is MessagePack by field name (:mod:`rankwatch.streams.state_codec`): use lists,
not tuples or sets, inside a job-level slot (they come back as lists), and name every table of
the job-level state that is keyed by rank in the detector's ``rank_keyed`` (paths such as
``("r", "p.*")``), so that it is stored with its ranks' chunks and no record grows with the job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from rankwatch.schemas import LogEvent, StepEvent
from rankwatch.streams.findings import Outcome


@dataclass(slots=True)
class RankState:
    """Everything the engine remembers about one rank of one job."""

    rank: int
    host: str | None = None
    last_step: int = -1  # step applied last (in event-time order across the job's ranks)
    last_step_time: float = float("-inf")  # event time of that step
    last_seen: float = float("-inf")  # event time of the rank's latest event of any kind
    last_log_time: float = float("-inf")
    recent_log_digests: list[int] = field(default_factory=list)
    slots: dict[str, Any] = field(default_factory=dict)
    # Steps received, not yet applied: the engine applies a job's steps in event-time order
    # across ranks (rankwatch.streams.ordering); kept here so a snapshot keeps them.
    held: list[Any] = field(default_factory=list)
    got_step: int = -1  # highest step received: a step at or below it is a duplicate
    got_step_time: float = float("-inf")  # event time of that step

    @property
    def label(self) -> str:
        """How summaries name the rank: ``rank 3 (gpu-node-007)``."""
        return f"rank {self.rank}" + (f" ({self.host})" if self.host else "")


@dataclass(slots=True)
class JobState:
    """Everything the engine remembers about one job: its ranks and job-level slots."""

    job_id: str
    world_size: int | None = None
    watermark: float = float("-inf")  # highest event time seen: the job's clock
    max_step: int = -1
    last_tick: float = float("-inf")
    ranks: dict[int, RankState] = field(default_factory=dict)
    slots: dict[str, Any] = field(default_factory=dict)
    # Owned by the engine's incident book-keeping (rankwatch.streams.incidents).
    incidents: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, Any] = field(default_factory=dict)
    # A job's life (the engine keeps these): each attempt (a restart from a checkpoint) starts
    # with fresh state; ``phase`` is what the job said it is doing since ``phase_since``.
    attempt: int = 0
    #: The highest attempt number the events reported (-1: none yet).
    reported_attempt: int = -1
    #: Step events at or before this event time belong to an attempt already over.
    attempt_floor: float = float("-inf")
    #: What the previous attempt left (for the ``job_restarted`` alert at the first step).
    restart: dict[str, Any] | None = None
    phase: str = "train"
    phase_since: float = float("-inf")
    #: Ranks whose producer said they ended cleanly (``lifecycle="ended"``); when every rank
    #: has, the job is over and its open incidents resolve.
    ended: set[int] = field(default_factory=set)
    #: The per-rank rules that run on frames (``on_frame``) keep their ranks' state here, one
    #: :class:`~rankwatch.streams.frames.RankTable` per rule, while the engine's step path is
    #: columnar. A rank whose state the scalar path took out (one event at a time: a rare
    #: row, a test) holds it in its ``slots`` until the next frame puts it back: its number
    #: is in ``checked_out``. The engine's working form, not compared (a stored job holds
    #: the same state in its ranks' slots, see rankwatch.streams.state_codec).
    tables: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    checked_out: set[int] = field(default_factory=set, compare=False, repr=False)

    def rank_slots(self, rank: int) -> dict[str, Any]:
        """Every per-rank rule's state of one rank, wherever the engine keeps it (its
        ``slots``, or a frame rule's table): what a snapshot stores of it."""
        slots = self.ranks[rank].slots
        tabled = {
            name: table.row(rank)
            for name, table in self.tables.items()
            if name not in slots and rank < len(table)
        }
        return {**slots, **tabled} if tabled else slots

    def label(self, rank: int) -> str:
        """How summaries name one of the job's ranks (host where known)."""
        rs = self.ranks.get(rank)
        return rs.label if rs is not None else f"rank {rank}"


@runtime_checkable
class StepDetector(Protocol):
    """A per-rank rule over step metrics."""

    name: ClassVar[str]

    def new_rank_state(self) -> Any: ...

    def on_step(
        self, job: JobState, rank: RankState, state: Any, event: StepEvent
    ) -> Iterable[Outcome]: ...


@runtime_checkable
class LogDetector(Protocol):
    """A rule over log records. ``state`` is the detector's job-level slot."""

    name: ClassVar[str]

    def new_job_state(self) -> Any: ...

    def on_log(
        self, job: JobState, rank: RankState, state: Any, event: LogEvent
    ) -> Iterable[Outcome]: ...


@runtime_checkable
class JobDetector(Protocol):
    """A cross-rank rule, evaluated when the job's event time advances by a tick.

    It may also look at each step event (``on_step``) to keep per-job running figures; both
    get the job-level slot as ``state``.
    """

    name: ClassVar[str]

    def new_job_state(self) -> Any: ...

    def on_step(self, job: JobState, rank: RankState, state: Any, event: StepEvent) -> None: ...

    def on_tick(self, job: JobState, state: Any, now: float) -> Iterable[Outcome]: ...

    # Optional: ``on_flush(job, state) -> Iterable[Outcome]``, called by ``Engine.flush()`` at
    # the end of a replay, for a detector that holds findings back in event time (records
    # gathered across ranks) to decide them. It is looked up with getattr, so it is not
    # declared here: a Protocol member would make it required.
