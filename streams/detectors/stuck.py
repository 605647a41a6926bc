"""``hang`` from stuck steps: the ranks' own watchdogs say where each one is blocked.

The producer's watchdog sends a ``lifecycle="stuck"`` record, with the main thread's stack,
when a step overruns its typical time by far (``producers``). In a hang of synchronous
training every rank soon says so: the peers from inside a collective, waiting; the rank that
caused it from somewhere else (its own code, its data loader, a file system call). This
detector gathers those records for ``stuck_settle_s`` (or until every rank has spoken) and
raises one job-scope ``hang`` naming the ranks stuck outside a collective, with their stacks,
long before a collective's own timeout (10 minutes for NCCL by default) ends the job.

When every stuck rank waits in a collective, the culprit is a rank that did not say it is
stuck while most did: blocked in native code that holds the interpreter, or dead. A rank that
reported a failure is not silent: when the peers wait for ranks that failed, the crash
alerts say it all, and no hang is raised.

>>> from rankwatch.schemas import LogEvent, StepEvent
>>> from rankwatch.streams.engine import Engine
>>> engine = Engine([StuckRanks()])
>>> for r in range(4):
...     _ = engine.process(StepEvent(job_id="j", rank=r, step=40, timestamp=1, world_size=4))
>>> def stuck(rank, t, frame):
...     stack = f'rankwatch: rank {rank} stuck in step 41 for 9 s; main thread stack:\\n{frame}'
...     return LogEvent(job_id="j", rank=rank, timestamp=t, level="WARNING", step=41,
...                     lifecycle="stuck", message=stack)
>>> wait = '  File "/venv/site-packages/torch/distributed/c10d.py", line 9, in all_reduce'
>>> alerts = [a for r in (0, 1, 2) for a in engine.process(stuck(r, 10 + r / 10, wait))]
>>> alerts += engine.process(stuck(3, 10.5, '  File "/job/data.py", line 7, in next_batch'))
>>> [(a.rule, a.ranks, a.evidence["where"]) for a in alerts]
[('hang', [3], 'data.py:7 in next_batch')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rankwatch.schemas import Action, LogEvent, Severity, StepEvent
from rankwatch.streams.detectors._classified import classified
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.log_patterns import HANG
from rankwatch.streams.detectors.stacks import parse_stack
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.frames import StepFrame

RULE = "hang"
KEY = "stuck"  # its own incident: the event-time hang and the watchdog records have theirs
_FOR = re.compile(r"\bfor (\d+(?:\.\d+)?) ?s\b")  # not [\d.]+: "for 1..2 s" must not raise
_FAILURE_LEVELS = frozenset({"ERROR", "CRITICAL"})  # a crash's record; the rest is not read
_MAX_NAMED = 4  # culprits named in the summary: more is no longer "this rank"
_STACKS_KEPT = 2  # stacks kept of ranks waiting on their peers (all culprits' are kept)
# An entry per stuck rank: [event time first stuck, step, waits on peers (0/1), where, stack,
# seconds the rank said it was stuck then (-1: not said)].
_T, _STEP, _WAITS, _WHERE, _STACK, _FOR_S = range(6)


@dataclass(frozen=True, slots=True)
class StuckConfig:
    """``hang`` from stuck records: how long to gather the ranks' records before deciding.

    3 s: the watchdogs of one hang report within a poll of each other; the decision comes at
    once when every rank has spoken.
    """

    stuck_settle_s: float = 3.0
    severity: Severity = "critical"
    action: Action = "notify"

    def __post_init__(self) -> None:
        if not self.stuck_settle_s > 0:
            raise DetectorConfigError(f"stuck_settle_s must be > 0, got {self.stuck_settle_s}")


class StuckRanks:
    """Stuck-step records across ranks: one ``hang`` naming the rank that is elsewhere."""

    name: ClassVar[str] = "stuck_ranks"
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("stuck",)
    rule: ClassVar[str] = RULE

    def __init__(self, config: StuckConfig | None = None) -> None:
        self.config = config or StuckConfig()

    def new_job_state(self) -> dict[str, Any]:
        # stuck: rank -> entry; since: event time of the episode's first record (None: none);
        # open: a hang was raised for this episode.
        # failed: ranks that reported a failure (their peers' wait for them is no hang).
        return {"stuck": {}, "since": None, "open": False, "failed": []}

    def on_log(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: LogEvent
    ) -> Iterable[Outcome]:
        if event.lifecycle != "stuck":
            if event.level in _FAILURE_LEVELS and rank.rank not in state["failed"]:
                match, failure = classified(event)
                if failure is not None or (match is not None and match.rule != HANG):
                    state["failed"].append(rank.rank)
            return ()
        if job.phase != "train":
            return ()  # an evaluation or a checkpoint save may take its time
        stuck: dict[int, list[Any]] = state["stuck"]
        if rank.rank in stuck:
            return ()  # still stuck: its first record said where
        step = event.step if event.step is not None else rank.last_step + 1
        if rank.got_step >= step:
            # It has finished that step already: a record that came after the rank's later
            # steps (a topic merge orders by the messages' timestamps), as job_stopped judges.
            return ()
        now = event.epoch
        stack = parse_stack(event.message)
        waits = int(stack.waits_on_peers)
        keep = not waits or sum(e[_WAITS] for e in stuck.values()) < _STACKS_KEPT
        where = stack.user_frame or stack.where or "an unknown place"
        if waits and stack.where and stack.where != where:
            where = f"{where} (in {stack.where})"
        said = _FOR.search(event.message[:200])
        seconds = float(said.group(1)) if said else -1.0
        stuck[rank.rank] = [now, step, waits, where, stack.text if keep else "", seconds]
        if state["since"] is None:
            state["since"] = now
        if state["open"] or len(stuck) < max(job.world_size or 0, len(job.ranks)):
            return ()
        return self._decide(job, state, now)

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        entry = state["stuck"].get(rank.rank)
        if entry is not None and event.step >= entry[_STEP]:
            del state["stuck"][rank.rank]  # it finished the step it was stuck in

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: StepFrame, events: Sequence[Any]
    ) -> None:
        """:meth:`on_step` of each row of a frame, in order (each rank once, so in any order:
        a row reads and clears its own rank's entry alone)."""
        stuck: dict[int, list[Any]] = state["stuck"]
        if not stuck:  # the usual frame: no rank is stuck
            return
        for r, step in zip(frame.ranks.tolist(), frame.steps.tolist(), strict=True):
            entry = stuck.get(r)
            if entry is not None and step >= entry[_STEP]:
                del stuck[r]

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        if state["since"] is None:
            return ()
        if not state["stuck"]:
            was_open = state["open"]
            state["since"], state["open"] = None, False
            if was_open:
                return (Resolution(RULE, None, now, KEY, "the stuck ranks progress again"),)
            return ()
        if state["open"] or now - state["since"] < self.config.stuck_settle_s:
            return ()
        return self._decide(job, state, now)

    def on_quiet(
        self, job: JobState, state: dict[str, Any], now: float, quiet_s: float
    ) -> Iterable[Outcome]:
        return self.on_tick(job, state, now)

    def _decide(self, job: JobState, state: dict[str, Any], now: float) -> tuple[Finding, ...]:
        state["open"] = True
        stuck: dict[int, list[Any]] = state["stuck"]
        failed = set(state.setdefault("failed", []))  # older snapshots lack it
        # A rank that reported its own failure is on its way down, wherever its watchdog caught
        # it then (a real torchrun job in CI: a peer's gloo error, then its stuck record from
        # inside the exception's handling, "not in a collective"): its crash says why.
        elsewhere = sorted(r for r, e in stuck.items() if not e[_WAITS] and r not in failed)
        mute: list[int] = []
        if not elsewhere and len(stuck) * 2 >= len(job.ranks):
            mute = sorted(r for r in job.ranks if r not in stuck and r not in failed)
        if not elsewhere and failed:
            # The peers wait in a collective while ranks report failures: those ranks' alerts
            # say why (a quiet rank may be one still on its way down).
            return ()
        culprits = elsewhere or mute
        step = min(e[_STEP] for e in stuck.values())
        first = min(stuck, key=lambda r: stuck[r][_T])
        evidence: dict[str, Any] = {
            "step": step,
            "stuck_ranks": len(stuck),
            "ranks": len(job.ranks),
            "where_each": {str(r): stuck[r][_WHERE] for r in sorted(stuck)[:16]},
        }
        seconds = stuck[first][_FOR_S]
        named = culprits[:_MAX_NAMED] if len(culprits) <= _MAX_NAMED else []
        if elsewhere and named:
            lead = stuck[named[0]]
            evidence["where"] = lead[_WHERE]
            evidence["stack"] = lead[_STACK]
            waiting = sorted(r for r in stuck if r not in elsewhere)
            who = _names(job, named)
            summary = (
                f"{who} stuck in step {lead[_STEP]} at {lead[_WHERE]}, not in a collective"
                + (f", while {_count(waiting)} wait for it in a collective" if waiting else "")
                + f": start with {'its' if len(named) == 1 else 'their'} stack"
            )
        elif mute and named:
            evidence["silent"] = named
            summary = (
                f"{len(stuck)} ranks stuck in step {step} waiting in a collective; "
                f"{_names(job, named)} did not report: blocked in native code or dead, "
                "dump its stack (py-spy dump --native)"
            )
        else:
            lead = stuck[first]
            evidence["where"] = lead[_WHERE]
            evidence["stack"] = lead[_STACK]
            summary = (
                f"{len(stuck)} ranks stuck in step {step} (first: rank {first} at "
                f"{lead[_WHERE]}): no single culprit, compare their stacks"
            )
        if seconds >= 0:
            evidence["stuck_s"] = seconds
        return (
            Finding(
                rule=RULE,
                rank=None,
                severity=self.config.severity,
                event_time=now,
                step=step,
                summary=summary,
                evidence=evidence,
                action=self.config.action,
                ranks=tuple(named),
                incident_key=KEY,
            ),
        )


def _names(job: JobState, ranks: list[int]) -> str:
    parts = [
        f"{r}" + (f" ({h})" if (h := job.ranks[r].host if r in job.ranks else None) else "")
        for r in ranks
    ]
    return ("rank " if len(parts) == 1 else "ranks ") + ", ".join(parts)


def _count(ranks: list[int]) -> str:
    if len(ranks) <= 8:
        return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))
    return f"{len(ranks)} ranks"


def detectors() -> list[Any]:
    return [StuckRanks()]
