"""The detector engine: events in, alerts out, for any number of jobs.

This is the pure core that the Faust worker, ``rankwatch replay`` and the tests all drive.
It owns per-job and per-rank state, the job's event-time clock (its watermark), duplicate
suppression, and the ticks that run cross-rank rules. It never reads the wall clock. A job's
steps are applied in event-time order across its ranks, whatever order they arrive in
(:mod:`~rankwatch.streams.ordering`), so the alerts are a function of the events. Step events
of a decoded batch take the columnar path (:mod:`~rankwatch.streams.engine_columns`,
:meth:`Engine.process_columns`) with the same result.

>>> from rankwatch.schemas import LogEvent
>>> engine = Engine.with_builtin_detectors()
>>> alerts = engine.process(LogEvent(job_id="j", rank=3, timestamp=100, level="ERROR",
...     message="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"))
>>> [(a.rule, a.ranks, a.status) for a in alerts]
[('cuda_oom', [3], 'firing')]
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.schemas.records import StepRecord
from rankwatch.streams.detectors.base import (
    JobDetector,
    JobState,
    LogDetector,
    RankState,
    StepDetector,
)
from rankwatch.streams.engine_columns import ColumnarSteps
from rankwatch.streams.findings import Finding, Outcome
from rankwatch.streams.frames import FrameRule
from rankwatch.streams.incidents import IncidentBook, IncidentPolicy
from rankwatch.streams.ordering import Held, StepOrder
from rankwatch.streams.phases import phase_of

Detector = StepDetector | LogDetector | JobDetector

_INF = float("inf")
_NEG_INF = float("-inf")
_RECENT_LOGS = 16  # digests kept per rank to drop duplicated log records
#: Released steps at which job rules run on frames: below, row by row costs less.
_FRAME_ROWS = 64

#: Picks the detectors of one job (per-job rules); asked once per job, not per event.
Resolve = Callable[[str], Sequence["Detector"]]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    #: Cross-rank rules run each time a job's event time enters a new interval of this length.
    tick_interval_s: float = 1.0
    #: Steps wait for every rank to catch up to their event time (see
    #: :mod:`~rankwatch.streams.ordering`) unless that rank is this far behind the median
    #: rank: rank_silent's own floor, so waiting does not delay the alert for a dead rank ...
    peer_lateness_s: float = 30.0
    #: ... or this far behind the job's newest event: the most a step waits (when more than
    #: half the job went quiet, which looks like a backlog drained rank after rank). A job
    #: whose records run ``peer_lateness_s`` past its newest step waits for nobody.
    max_lateness_s: float = 300.0
    incidents: IncidentPolicy = field(default_factory=IncidentPolicy)
    #: The worker's clock (:meth:`Engine.advance_clock`): a job silent this long on it gets
    #: quiet ticks, and one step of the clock counts for at most ``max_clock_step_s`` (longer
    #: gaps mean the worker itself was stalled, not that the jobs were silent).
    quiet_tick_s: float = 1.0
    max_clock_step_s: float = 5.0
    #: Ranks a job has from which its step rows take the columnar path
    #: (:meth:`Engine.process_columns`); a smaller job's go row by row, where frames of a
    #: few rows would cost more than they save. Either way the alerts are the same.
    columnar_from_ranks: int = 32

    def __post_init__(self) -> None:
        if not self.tick_interval_s > 0:
            raise ValueError(f"tick_interval_s must be > 0, got {self.tick_interval_s}")
        if not 0 <= self.peer_lateness_s <= self.max_lateness_s:
            raise ValueError(
                f"need 0 <= peer_lateness_s <= max_lateness_s, got {self.peer_lateness_s} "
                f"and {self.max_lateness_s}"
            )


class _Kinds:
    """One set of detectors sorted by kind once, so the per-event loops do no isinstance."""

    __slots__ = (
        "framed",
        "fresh",
        "job",
        "log",
        "on_step",
        "slotted",
        "source",
        "step",
        "tabled",
    )

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self.source = detectors  # kept alive: the engine caches these by id(detectors)
        self.step: list[StepDetector] = []
        self.log: list[LogDetector] = []
        self.job: list[JobDetector] = []
        for d in detectors:
            if isinstance(d, JobDetector):
                self.job.append(d)
            elif isinstance(d, StepDetector):
                self.step.append(d)
            # A JobDetector may read logs too (cuda_oom joins a rank's OOM record with the
            # memory readings it kept from steps): it then gets on_log as well, same job slot.
            if isinstance(d, LogDetector):
                self.log.append(d)
            elif not isinstance(d, JobDetector | StepDetector):
                raise TypeError(f"{d!r} is not a StepDetector, LogDetector or JobDetector")
        # (slot name, bound on_step) of the per-rank rules: looked up once, not per event.
        self.on_step = [(d.name, d.on_step) for d in self.step]
        self.fresh = {d.name: d.new_rank_state for d in self.step}
        # The per-rank rules that run on frames keep their state in the job's rank tables
        # (JobState.tables); the others, in each rank's slots.
        self.tabled: dict[str, FrameRule] = {
            d.name: cast(FrameRule, d)
            for d in self.step
            if hasattr(d, "on_frame") and hasattr(d, "state_type")
        }
        self.slotted = frozenset(d.name for d in self.step if d.name not in self.tabled)
        # The job rules with a frame path: run once per frame of released steps.
        self.framed: dict[str, Any] = {d.name: d for d in self.job if hasattr(d, "on_frame")}


class Engine(ColumnarSteps):
    """Runs detectors over events of many jobs and returns the alerts they raise.

    ``resolve`` (optional) gives the detectors of one job (per-job rules, see
    :mod:`rankwatch.streams.rules`); it is asked once, when the engine first meets the job,
    so the per-event path does no pattern matching. Without it every job gets ``detectors``.
    """

    def __init__(
        self,
        detectors: Sequence[Detector],
        config: EngineConfig | None = None,
        *,
        resolve: Resolve | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.jobs: dict[str, JobState] = {}
        self.book = IncidentBook(self.config.incidents)
        self._orders: dict[str, StepOrder] = {}
        #: When a list (the pipeline sets one), each batch of held steps applied adds
        #: (job, their ranks) to it: those ranks' state changed, for the worker's snapshots.
        self.released: list[tuple[str, list[int]]] | None = None
        # The worker's clock: seconds it was healthy ("awake"), and when on it each job was
        # last heard from. Not persisted: a restored job counts from its next event.
        self._awake = 0.0
        self._clock_at: float | None = None
        self._heard: dict[str, float] = {}
        self._use(detectors, resolve)

    def _use(self, detectors: Sequence[Detector], resolve: Resolve | None) -> None:
        kinds = _Kinds(detectors)
        self._default = kinds
        self._step, self._log, self._job = kinds.step, kinds.log, kinds.job
        self._resolve = resolve
        self._cache: dict[int, _Kinds] = {id(detectors): kinds}
        self._bound: dict[str, _Kinds] = {}  # job id -> its detectors, fitted to its state

    def replace_detectors(
        self, detectors: Sequence[Detector], *, resolve: Resolve | None = None
    ) -> None:
        """Swap the rules of a running engine (a reloaded rules file).

        Each job is fitted to its new detectors at its next event: slots of detectors that
        stay (same ``name``) keep their state, new ones start empty, removed ones are dropped.
        Open incidents stay in the book.
        """
        self._use(detectors, resolve)

    @classmethod
    def with_builtin_detectors(cls, config: EngineConfig | None = None) -> Engine:
        from rankwatch.streams.registry import builtin_detectors

        return cls(builtin_detectors(), config)

    @property
    def detectors(self) -> list[Detector]:
        """The default detectors (those of every job when there is no ``resolve``)."""
        return self._listed(self._default)

    def detectors_for(self, job_id: str) -> list[Detector]:
        """The detectors that run for ``job_id``."""
        return self._listed(self._bound.get(job_id) or self._kinds_for(job_id))

    @staticmethod
    def _listed(kinds: _Kinds) -> list[Detector]:
        both = {id(d) for d in kinds.job}
        return [*kinds.step, *(d for d in kinds.log if id(d) not in both), *kinds.job]

    # -- state ----------------------------------------------------------------------------
    def job_state(self, job_id: str) -> JobState:
        job = self.jobs.get(job_id)
        if job is None or job_id not in self._bound:
            job, _ = self._enter(job_id)
        return job

    def adopt(self, job: JobState) -> None:
        """Take over a job's state from elsewhere (a snapshot): it replaces what the engine
        had of that job, fitted to the job's detectors (slots of rules added since are made,
        those of rules removed dropped) and its held steps ordered anew."""
        self.jobs[job.job_id] = job
        self._bound.pop(job.job_id, None)
        self._orders.pop(job.job_id, None)
        self._enter(job.job_id)

    def release(self, job_id: str) -> JobState | None:
        """Forget a job (another worker owns it now); returns its state, if it had one."""
        self._bound.pop(job_id, None)
        self._orders.pop(job_id, None)
        return self.jobs.pop(job_id, None)

    def _kinds_for(self, job_id: str) -> _Kinds:
        if self._resolve is None:
            return self._default
        detectors = self._resolve(job_id)
        kinds = self._cache.get(id(detectors))
        if kinds is None:
            kinds = self._cache[id(detectors)] = _Kinds(detectors)
        return kinds

    def _enter(self, job_id: str) -> tuple[JobState, _Kinds]:
        """Bind a job to its detectors, creating its state or fitting the state it has."""
        kinds = self._kinds_for(job_id)
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = JobState(job_id)
            self._orders.pop(job_id, None)
        self._bound[job_id] = kinds
        names: set[str] = set()
        for d in kinds.log:
            names.add(d.name)
            if d.name not in job.slots:
                job.slots[d.name] = d.new_job_state()
        for jd in kinds.job:
            names.add(jd.name)
            if jd.name not in job.slots:  # a Log+Job detector has one slot, made once
                job.slots[jd.name] = jd.new_job_state()
        for key in [k for k in job.slots if k not in names]:
            del job.slots[key]
        for key in [k for k in job.tables if k not in kinds.tabled]:
            del job.tables[key]
        if job.ranks:  # restored state, or new rules: same fitting per rank
            step_names = {d.name for d in kinds.step}
            slotted, tabled = kinds.slotted, kinds.tabled
            for rank in job.ranks.values():
                keys = rank.slots.keys()
                if not slotted <= keys <= step_names:
                    self._fit_rank(rank, kinds, step_names)
                # A stored rank holds its frame rules' state in its slots: checked out.
                if tabled and any(name in keys for name in tabled):
                    job.checked_out.add(rank.rank)
        return job, kinds

    @staticmethod
    def _fit_rank(rank: RankState, kinds: _Kinds, names: set[str]) -> None:
        for key in [k for k in rank.slots if k not in names]:
            del rank.slots[key]
        for d in kinds.step:
            # A frame rule's state missing from the slots is in its table (a fresh rank's row
            # there is a fresh state).
            if d.name not in rank.slots and d.name not in kinds.tabled:
                rank.slots[d.name] = d.new_rank_state()

    @staticmethod
    def _rank_state(job: JobState, kinds: _Kinds, rank: int, host: str | None) -> RankState:
        state = job.ranks.get(rank)
        if state is None:
            state = job.ranks[rank] = RankState(rank, host)
            for d in kinds.step:
                state.slots[d.name] = d.new_rank_state()
            if kinds.tabled:
                job.checked_out.add(rank)
        return state

    # -- events ---------------------------------------------------------------------------
    def process(self, event: StepEvent | LogEvent | StepRecord) -> list[Alert]:
        """Apply one event; return the alerts (firing or resolved) it causes, often none.

        A step event may be held until the job's other ranks catch up with it
        (:mod:`~rankwatch.streams.ordering`); the alerts returned are those of whatever was
        applied now, which may be other ranks' steps held before.
        """
        job_id = event.job_id
        job = self.jobs.get(job_id)
        kinds = self._bound.get(job_id)
        if job is None or kinds is None:
            job, kinds = self._enter(job_id)
        out: list[Alert] = []
        self._heard[job_id] = self._awake
        attempt = event.attempt
        if attempt is not None and attempt != job.reported_attempt:
            # torchrun counts its restarts: a higher count is a new attempt of the job.
            if job.reported_attempt >= 0 and attempt > job.reported_attempt:
                job, kinds = self._new_attempt(job, kinds, event, out)
            job.reported_attempt = max(job.reported_attempt, attempt)
        rank = job.ranks.get(event.rank)
        if rank is None:
            rank = self._rank_state(job, kinds, event.rank, event.host)
        order = self._orders.get(job_id)
        if order is None or order.job is not job:
            order = self._order_for(job)
        now = event.epoch
        if event.kind == "step":  # a StepEvent, or a StepRecord of decoded columns
            event = cast(StepEvent, event)  # (a record reads as its event)
            if now <= job.attempt_floor:
                return out  # a late step of an attempt that is over
            phase = event.phase
            if phase is not None and phase != "train":
                # An evaluation or checkpoint step: the job is alive and busy, not training.
                self._set_phase(job, phase, now)
                self._advance(job, rank, now)
                return out
            step = event.step
            if step <= rank.got_step:
                if step == rank.got_step or now <= rank.got_step_time:
                    return out  # a duplicate or a late reordering: already received
                # A lower step with a newer event time: the job restarted from an earlier
                # checkpoint (launchers that do not count attempts, a manual relaunch).
                job, kinds = self._new_attempt(job, kinds, event, out)
                rank = self._rank_state(job, kinds, event.rank, event.host)
                order = self._order_for(job)
            rank.got_step = step
            rank.got_step_time = now
            world = event.world_size
            if world is not None and world != job.world_size:
                # Read here, while the event is fresh in the cache; it changes only when a
                # job is restarted at another size, and then all its ranks say so.
                job.world_size = world
            # The per-rank rules see only their rank's steps, in the rank's order (Kafka keeps
            # it): they run now, while the event is fresh in the cache; what they find waits
            # with the step for the incident book, which is cross-rank.
            found: tuple[Outcome, ...] = ()
            slots = rank.slots
            for name, on_step in kinds.on_step:
                state = slots.get(name)
                if state is None:  # a frame rule's state, in its table
                    state = self._check_out(job, kinds, rank, name)
                # Nearly every call returns an empty tuple.
                outcomes = on_step(job, rank, state, event)
                if outcomes:
                    found = (*found, *outcomes)
            if order.hold(rank.held, now, event.rank, step, event, found, event.world_size):
                self._release(job, kinds, order, out)
            return out
        digest = zlib.crc32(event.message.encode(), int(now * 1000) & 0xFFFFFFFF)
        recent = rank.recent_log_digests
        if digest in recent:
            return out
        recent.append(digest)
        if len(recent) > _RECENT_LOGS:
            del recent[0]
        rank.last_log_time = now
        self._advance(job, rank, now)
        if event.lifecycle == "ended":
            self._rank_ended(job, kinds, event.rank, now, out)
        phase = event.phase or phase_of(event.message)
        if phase is not None:
            self._set_phase(job, phase, now)
        for ld in kinds.log:
            self._apply(job, ld.on_log(job, rank, job.slots[ld.name], event), out)
        if now > order.high:
            order.high = now
            if order.active and now - order.step_high > self.config.peer_lateness_s:
                self._release(job, kinds, order, out)  # the ranks stopped stepping
        if not order.active and job.watermark - job.last_tick >= self.config.tick_interval_s:
            # No rank is stepping (a hung job that still logs, a job without step metrics):
            # its records keep the clock.
            self._tick(job, kinds, out, job.watermark)
        return out

    def _release(
        self,
        job: JobState,
        kinds: _Kinds,
        order: StepOrder,
        out: list[Alert],
        low: float | None = None,
    ) -> None:
        """Apply the held steps every active rank has caught up with, in event-time order,
        ticking between: the cross-rank rules run after the first step of each new interval
        of event time."""
        cfg = self.config
        if low is None:
            low = order.low(cfg.peer_lateness_s, cfg.max_lateness_s)
        order.due = len(order.latest)
        ready = order.take_ready(low)
        if not ready:
            return
        self._apply_ready(job, kinds, ready, out, bool(kinds.framed) and len(ready) >= _FRAME_ROWS)
        if self.released is not None:
            self.released.append((job.job_id, [e[1] for e in ready]))

    def _apply_ready(
        self, job: JobState, kinds: _Kinds, ready: list[Held], out: list[Alert], frames: bool
    ) -> None:
        """Apply ready steps in order: each row's bookkeeping, findings and job rules'
        ``on_step``, and a tick after the first step of each new interval. With ``frames``,
        the job rules that have a frame path (``on_frame``) run once per frame instead
        (:meth:`_frame`): the rows up to a tick, cut where a rank comes again or the job's
        phase turns back to training (``phase_since`` is what a rule's ``on_step`` may read
        of the job). The bookkeeping and the findings stay row by row; a job rule reads
        neither, so applying them ahead of its frame changes nothing."""
        interval = self.config.tick_interval_s
        ranks = job.ranks
        slots = job.slots
        framed = kinds.framed if frames else {}
        stepped = [(jd.on_step, slots[jd.name]) for jd in kinds.job if jd.name not in framed]
        by_frame = [(rule, slots[name]) for name, rule in framed.items()]
        rows: list[Held] = []
        seen: set[int] = set()
        # The job's clocks are kept in locals, and written to the job before each call out
        # that may read them (a frame, findings, a job rule's on_step, a tick): a big job's
        # release has none of those on most rows. Only the engine writes them.
        watermark, max_step, last_tick = job.watermark, job.max_step, job.last_tick
        training = job.phase == "train"
        for entry in ready:
            now, r, step, _, event, found = entry
            if by_frame and (r in seen or (not training and rows)):
                job.watermark, job.max_step = watermark, max_step
                self._frame(job, by_frame, rows)
                rows = []
                seen.clear()
            rank = ranks[r]
            mine = rank.held
            if mine[0] is entry:
                del mine[0]
            else:  # this rank's own steps arrived out of their time order
                mine.remove(entry)
            rank.last_step = step
            rank.last_step_time = now
            if not training and now > job.phase_since:
                job.phase = "train"  # a training step after an evaluation or a checkpoint
                job.phase_since = now
                training = True
            if now > rank.last_seen:
                rank.last_seen = now
            if now > watermark:
                watermark = now
            if step > max_step:
                max_step = step
            if found or stepped:
                job.watermark, job.max_step = watermark, max_step
                if found:
                    self._apply(job, found, out)
                for on_step, slot in stepped:
                    on_step(job, rank, slot, event)
            if by_frame:
                rows.append(entry)
                seen.add(r)
            if now - last_tick >= interval:
                job.watermark, job.max_step = watermark, max_step
                if rows:
                    self._frame(job, by_frame, rows)
                    rows = []
                    seen.clear()
                self._tick(job, kinds, out, now)
                last_tick = job.last_tick
        job.watermark, job.max_step = watermark, max_step
        if rows:
            self._frame(job, by_frame, rows)

    def process_many(self, events: Iterable[StepEvent | LogEvent]) -> list[Alert]:
        out: list[Alert] = []
        for event in events:
            out.extend(self.process(event))
        return out

    def flush(self) -> list[Alert]:
        """At the end of a replay: apply every held step, run a last tick and decide pending
        groups of every job."""
        out: list[Alert] = []
        for job in list(self.jobs.values()):
            kinds = self._bound.get(job.job_id)
            if kinds is None:
                job, kinds = self._enter(job.job_id)
            self._apply_everything_held(job, kinds, out)
            self._tick(job, kinds, out, job.watermark)
            self.book.flush(job, out)
        return out

    def _apply_everything_held(self, job: JobState, kinds: _Kinds, out: list[Alert]) -> None:
        """Apply every held step of the job and let detectors decide what they hold back (the
        end of a replay, or of an attempt)."""
        order = self._orders.get(job.job_id)
        if order is None or order.job is not job:
            order = self._order_for(job)
        self._release(job, kinds, order, out, _INF)
        for jd in kinds.job:
            # Optional hook: a detector that holds findings back in event time (NCCL records
            # gathered across ranks) decides them now, as the book does its groups.
            on_flush = getattr(jd, "on_flush", None)
            if on_flush is not None:
                self._apply(job, on_flush(job, job.slots[jd.name]), out)

    # -- internals ------------------------------------------------------------------------
    def _order_for(self, job: JobState) -> StepOrder:
        """A new (or restored) job's step order; drops those of jobs the engine let go of
        (a worker hands a partition's jobs over by removing them from ``jobs``)."""
        orders = self._orders
        jobs = self.jobs
        for job_id in [j for j, o in orders.items() if jobs.get(j) is not o.job]:
            del orders[job_id]
        order = orders[job.job_id] = StepOrder(job)
        return order

    def _new_attempt(
        self,
        job: JobState,
        kinds: _Kinds,
        event: StepEvent | LogEvent | StepRecord,
        out: list[Alert],
    ) -> tuple[JobState, _Kinds]:
        """The job restarted: finish its previous attempt and start the next with fresh state.

        What the previous attempt left is applied and decided first (held steps, pending
        groups); its open incidents resolve, since the state that would resolve them is gone.
        A step event at or before the previous attempt's last step time is a late one of it.
        """
        job_id = job.job_id
        self._apply_everything_held(job, kinds, out)
        self.book.flush(job, out)
        now = event.epoch
        # The previous attempt's last step (its records may have run on: a relaunch's start-up
        # logs before the first step that shows the restart).
        ended = max([-_INF, *(rs.got_step_time for rs in job.ranks.values())])
        last_step = max([job.max_step, *(rs.got_step for rs in job.ranks.values())])
        self.book.close_all(job, now, f"the job restarted (attempt {job.attempt + 1})", out)
        fresh = JobState(
            job_id,
            attempt=job.attempt + 1,
            reported_attempt=job.reported_attempt,
            attempt_floor=ended,
            restart={
                "last_step": last_step,
                "ended": ended,
                "world_size": job.world_size,
                "ranks": len(job.ranks),
                "reported_attempt": event.attempt,
            },
        )
        self.jobs[job_id] = fresh
        if self.released is not None and job.ranks:
            # Every stored rank chunk of the job is rewritten: none of its state is current.
            self.released.append((job_id, sorted(job.ranks)))
        fresh, kinds = self._enter(job_id)
        self._order_for(fresh)
        return fresh, kinds

    def _rank_ended(
        self, job: JobState, kinds: _Kinds, rank: int, now: float, out: list[Alert]
    ) -> None:
        """A rank ended cleanly; once every rank of the job has, its open incidents resolve:
        what they watched is over, and nothing would resolve them later."""
        job.ended.add(rank)
        if len(job.ended) < max(job.world_size or 0, len(job.ranks)):
            return
        if not job.ended.issuperset(job.ranks):
            return
        self._apply_everything_held(job, kinds, out)
        self.book.flush(job, out)
        self.book.close_all(job, now, "the job ended cleanly", out)

    # -- the worker's clock ---------------------------------------------------------------
    def advance_clock(
        self, clock: float, *, healthy: bool = True, max_step: float | None = None
    ) -> list[Alert]:
        """The worker's clock reads ``clock`` (seconds): judge jobs that went quiet.

        A job that died sends nothing, so its event time stops with it; this is how its
        silence is seen (principle 2 of the design). The live worker calls it about once a
        second with its wall clock, ``healthy`` False while it is behind its input or cut off
        from Kafka: that time does not count as anyone's silence. Replay calls it with the
        recorded timestamps, so a replay gives the alerts the live run gave.

        A job heard from ``quiet_tick_s`` or more ago gets a *quiet tick*: detectors with an
        optional ``on_quiet(job, state, now, quiet_s)`` hook decide on it, ``now`` being the
        job's event time plus its silence. Other detectors do not run: nothing new happened.
        Once the job is quiet for ``peer_lateness_s``, its held steps are applied: the ranks
        they wait for are not coming, and the incident book decides its pending groups.
        ``max_step`` overrides ``EngineConfig.max_clock_step_s`` (replay: no cap).
        """
        out: list[Alert] = []
        last, self._clock_at = self._clock_at, clock
        if last is None or not healthy or clock <= last:
            return out
        cap = self.config.max_clock_step_s if max_step is None else max_step
        self._awake += min(clock - last, cap)
        awake = self._awake
        minimum = self.config.quiet_tick_s
        for job_id, heard in list(self._heard.items()):
            quiet = awake - heard
            if quiet < minimum:
                continue
            job = self.jobs.get(job_id)
            if job is None:  # handed over to another worker
                del self._heard[job_id]
                continue
            kinds = self._bound.get(job_id)
            if kinds is None:
                job, kinds = self._enter(job_id)
            self._quiet_tick(job, kinds, out, quiet)
        return out

    def _quiet_tick(self, job: JobState, kinds: _Kinds, out: list[Alert], quiet: float) -> None:
        order = self._orders.get(job.job_id)
        held = order is not None and order.job is job and order.held
        if held and quiet >= self.config.peer_lateness_s:
            assert order is not None
            self._release(job, kinds, order, out, _INF)
        now = job.watermark + quiet
        for jd in kinds.job:
            on_quiet = getattr(jd, "on_quiet", None)
            if on_quiet is not None:
                self._apply(job, on_quiet(job, job.slots[jd.name], now, quiet), out)
        if quiet >= self.config.peer_lateness_s:
            # Groups of findings wait for the ranks that follow within a few seconds of event
            # time: a job between two slow steps is not over, so they are decided only once
            # it is (or by its next events). Deciding them at every quiet second split one
            # incident of a job with 2 s steps into a rank alert and a job alert.
            self.book.on_time(job, now, out)

    @staticmethod
    def _set_phase(job: JobState, phase: str, now: float) -> None:
        if phase != job.phase and now >= job.phase_since:
            job.phase = phase
            job.phase_since = now

    @staticmethod
    def _advance(job: JobState, rank: RankState, now: float) -> None:
        if now > rank.last_seen:
            rank.last_seen = now
        if now > job.watermark:
            job.watermark = now

    def _tick(self, job: JobState, kinds: _Kinds, out: list[Alert], now: float) -> None:
        # The next tick comes when event time enters the next interval: a grid of event time,
        # so where ticks fall does not depend on which event happened to come first.
        job.last_tick = now - now % self.config.tick_interval_s
        for jd in kinds.job:
            self._apply(job, jd.on_tick(job, job.slots[jd.name], now), out)
        self.book.on_time(job, now, out)

    def _apply(self, job: JobState, outcomes: Iterable[Outcome], out: list[Alert]) -> None:
        for o in outcomes:
            if isinstance(o, Finding):
                self.book.on_finding(job, o, out)
            else:
                self.book.on_resolution(job, o, out)
