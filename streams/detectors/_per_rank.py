"""The base class of the per-rank metric rules: what they share, so each keeps only its statistics.

``loss_explosion``, ``gradient_explosion``, ``throughput_drop``, ``memory_growth`` and
``gradient_vanishing`` are :class:`~rankwatch.streams.detectors.base.StepDetector` s of one
shape: a config dataclass of thresholds, a small state per rank, at most one open incident per
rank. :class:`PerRankRule` holds the parts that are the same in all of them:

- the config plumbing: ``Rule()`` takes the defaults of ``config_type``, ``new_rank_state()``
  gives a fresh ``state_type``;
- the warm-up (:func:`warmed_up`): the first reports ignored, the next ones collected, and the
  baseline seeded from them once there are enough;
- the incident's life on the state's ``active``/``calm``/``reported_at``: :meth:`~PerRankRule._due`
  (a confirming step opens the incident, or re-reports an open one every ``refresh_s`` so that
  it does not expire) and :func:`~rankwatch.streams.detectors._calm.settled` (calm steps in a row
  close it);
- the records: :meth:`~PerRankRule._report` (a :class:`Finding` with the rule's name, rank,
  severity and action, the summary led by the rank's name) and
  :meth:`~PerRankRule._resolution`.

What each rule writes itself is its ``on_step``: reading its metric from the event, the
statistics, and the summary and evidence of its findings. The read stays there, not in a
template ``on_step`` of this class calling a per-rule hook, because this runs for every step of
every rank: the extra call would be paid five times per event, on the path where nearly every
call finds nothing. The helpers here are called only on the paths that are rare (warming up, a
step that confirms an incident, one that ends it), so the common path costs what it did.

A rule with its own state and config, in full:

>>> from dataclasses import dataclass
>>> from rankwatch.schemas import StepEvent
>>> from rankwatch.streams.detectors.base import JobState, RankState
>>> @dataclass(frozen=True)
... class HotConfig:
...     limit: float = 90.0
...     recover_steps: int = 2
...     refresh_s: float = 60.0
...     severity: str = "warning"
...     action: str = "notify"
>>> @dataclass
... class HotState:
...     active: bool = False
...     calm: int = 0
...     reported_at: float = float("-inf")
>>> class TooHot(PerRankRule[HotConfig, HotState]):
...     name = "too_hot"
...     config_type, state_type = HotConfig, HotState
...     def on_step(self, job, rank, state, event):
...         x = event.gpu_utilization
...         if x is None:
...             return ()
...         if x > self.config.limit:
...             state.calm = 0
...             if self._due(state, event.epoch):
...                 return (self._report(rank, event.epoch, event.step, f"{x:.0f}% busy", {}),)
...             return ()
...         if state.active and settled(state, self.config.recover_steps):
...             return self._resolution(rank, event, "cool again")
...         return ()
>>> rule, rank = TooHot(), RankState(3, host="gpu-7")
>>> state = rule.new_rank_state()
>>> def step(i, busy):
...     event = StepEvent(job_id="j", rank=3, step=i, timestamp=1e9 + i, gpu_utilization=busy)
...     return [o.summary for o in rule.on_step(JobState("j"), rank, state, event)]
>>> step(0, 95), step(1, 96), step(2, 50), step(3, 50)
(['rank 3: 95% busy'], [], [], ['rank 3: cool again'])
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Protocol, TypeVar

from rankwatch.schemas import Action, Severity, StepEvent
from rankwatch.streams.detectors._calm import OpenIncident, settled
from rankwatch.streams.detectors.base import RankState
from rankwatch.streams.findings import Finding, Resolution

__all__ = ["PerRankRule", "RuleConfig", "Seeding", "settled", "warmed_up"]


class RuleConfig(Protocol):
    """What :class:`PerRankRule` reads of a rule's config dataclass (the rest is the rule's)."""

    @property
    def refresh_s(self) -> float: ...

    @property
    def severity(self) -> Severity: ...

    @property
    def action(self) -> Action: ...


ConfigT = TypeVar("ConfigT", bound=RuleConfig)
StateT = TypeVar("StateT", bound=OpenIncident)


class PerRankRule(Generic[ConfigT, StateT]):
    """A per-rank metric rule (a :class:`~rankwatch.streams.detectors.base.StepDetector` once a
    subclass writes ``on_step``). A subclass sets ``name``, ``config_type`` and ``state_type``."""

    name: ClassVar[str]
    #: The config dataclass; ``Rule()`` is the rule with its defaults.
    config_type: type[ConfigT]
    #: The per-rank state dataclass (stored state is read back by its field names).
    state_type: type[StateT]
    #: Findings name the rank with its host, ``rank 3 (gpu-node-007): ...``; else ``rank 3: ...``.
    names_host: ClassVar[bool] = False

    def __init__(self, config: ConfigT | None = None) -> None:
        self.config: ConfigT = config or self.config_type()

    def new_rank_state(self) -> StateT:
        return self.state_type()

    def _due(self, s: StateT, now: float) -> bool:
        """A step confirms the incident: whether to report it now. Yes when it opens the
        incident, or when the open one was last reported ``refresh_s`` ago or more (an alert
        not refreshed expires). Marks it reported if so."""
        if s.active:
            if now - s.reported_at < self.config.refresh_s:
                return False
        else:
            s.active = True
            s.calm = 0
        s.reported_at = now
        return True

    def _report(
        self, rank: RankState, now: float, step: int, what: str, evidence: dict[str, Any]
    ) -> Finding:
        """The finding of this rule on ``rank``: ``what`` after the rank's name, the first
        ``step`` of the incident, the rule's severity and action."""
        c = self.config
        who = rank.label if self.names_host else f"rank {rank.rank}"
        return Finding(
            rule=self.name,
            rank=rank.rank,
            severity=c.severity,
            event_time=now,
            summary=f"{who}: {what}",
            step=step,
            evidence=evidence,
            action=c.action,
        )

    def _resolution(self, rank: RankState, event: StepEvent, what: str) -> tuple[Resolution]:
        """The incident of ``rank`` is over at this step (the caller closed it: ``settled``)."""
        return (
            Resolution(
                rule=self.name,
                rank=rank.rank,
                event_time=event.epoch,
                summary=f"rank {rank.rank}: {what}",
            ),
        )


class Seeding(Protocol):
    """The part of a rule's state that a seeded warm-up keeps."""

    seen: int  # reports ignored so far (capped at the warm-up)
    seed: list[float]  # values collected since
    ready: bool  # the baseline is seeded: the warm-up is over


def warmed_up(s: Seeding, x: float | None, warmup_steps: int, seed_steps: int) -> list[float]:
    """One report during the warm-up: the first ``warmup_steps`` are ignored (init, compile,
    the first fast-falling steps), the next ``seed_steps`` values collected (``None``: this
    report has none to give). Returns them sorted once there are enough (the caller seeds its
    baseline from them, a median say: one odd report cannot skew it), and ``ready`` is then
    set; else ``[]``.

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class S:
    ...     seen: int = 0
    ...     seed: list[float] = field(default_factory=list)
    ...     ready: bool = False
    >>> s = S()
    >>> [warmed_up(s, x, 1, 3) for x in (9.0, 5.0, None, 1.0, 3.0)], s.ready, s.seed
    ([[], [], [], [], [1.0, 3.0, 5.0]], True, [])
    """
    if s.seen < warmup_steps:
        s.seen += 1
        return []
    if x is not None:
        s.seed.append(x)
    if len(s.seed) < seed_steps:
        return []
    ordered = sorted(s.seed)
    s.ready = True
    s.seed.clear()
    return ordered
