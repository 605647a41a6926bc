"""User rules without code: detectors built from ``[[rule]]`` entries of the rules file.

- ``log_pattern``: a regex on log records. Each matching record is a rank finding; with
  ``min_ranks`` > 1, once that many distinct ranks matched within ``window_s`` (event time)
  it is ONE job finding listing them (later matches only add ranks to the open incident).
- ``frequency``: ``count`` matching records within ``window_s``, per job or per rank.
- ``threshold``: ``field op value`` on step events for ``for_steps`` consecutive steps of a
  rank; ``scope = "job"`` makes it one job finding once ``min_ranks`` ranks are at fault.
  Any field works, including ones the contract does not know (``extra``); numbers given as
  strings ("nan", "1e3") count, other values and missing fields are skipped.

They return the same :class:`~rankwatch.streams.findings.Finding` as the built-in detectors,
so the incident book gives them the same suppression, job aggregation, resolution and
deterministic ids. Their state is plain lists and dicts (persisted by the worker), kept in a
slot named ``user:NAME:FINGERPRINT``: a rule whose definition changes starts afresh.

>>> from rankwatch.schemas import LogEvent
>>> from rankwatch.streams.engine import Engine
>>> from rankwatch.streams.rules.model import LogPatternRule
>>> rule = LogPatternRule(kind="log_pattern", name="disk_full", pattern="No space left",
...                       severity="critical")
>>> engine = Engine([build(rule)])
>>> alerts = engine.process(LogEvent(job_id="j", rank=1, timestamp=10, level="ERROR",
...     message="OSError: [Errno 28] No space left on device: '/ckpt/step_900'"))
>>> alerts += engine.flush()
>>> [(a.rule, a.ranks, a.severity) for a in alerts]
[('disk_full', [1], 'critical')]
>>> alerts[0].summary
"disk_full on rank 1: OSError: [Errno 28] No space left on device: '/ckpt/step_900'"
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from rankwatch.schemas import LogEvent, StepEvent
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.log_patterns import line_at
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.rules.model import FrequencyRule, LogPatternRule, ThresholdRule

_NOTHING: tuple[()] = ()
_REFRESH_S = 60.0  # an open threshold incident is re-reported this often, so it never expires
_MAX_LINE = 300
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_STEP_FIELDS = frozenset(StepEvent.model_fields)


def fingerprint(rule: Any) -> str:
    """8 hex digits of the rule's definition: the same rule, the same slot."""
    data = orjson.dumps(rule.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()[:8]


def _slot(rule: Any) -> str:
    return f"user:{rule.name}:{fingerprint(rule)}"


def _summary(template: str | None, default: str, **values: Any) -> str:
    if template is None:
        return default
    try:
        return template.format_map(values)
    except (KeyError, IndexError, AttributeError, ValueError):
        # A placeholder this rule kind does not fill: say so rather than lose the alert.
        return f"{default} (summary template: {template!r})"


def _step_of(event: LogEvent, rank: RankState) -> int | None:
    if event.step is not None:
        return event.step
    return rank.last_step if rank.last_step >= 0 else None


class _LogMatcher:
    def __init__(self, rule: LogPatternRule | FrequencyRule) -> None:
        self.name = _slot(rule)
        self.rule = rule.name
        self.definition = rule
        self._search = rule.regex().search
        self._levels = frozenset(rule.levels) if rule.levels else None

    def _match(self, event: LogEvent) -> str | None:
        if self._levels is not None and event.level not in self._levels:
            return None
        m = self._search(event.message)
        return None if m is None else line_at(event.message, m.start(), _MAX_LINE)


class LogPatternDetector(_LogMatcher):
    """``log_pattern``: a :class:`~rankwatch.streams.detectors.base.LogDetector`."""

    def __init__(self, rule: LogPatternRule) -> None:
        super().__init__(rule)
        self.config = rule

    def new_job_state(self) -> dict[int, list[Any]]:
        return {}  # rank -> [event time, step, line] of its last match (min_ranks > 1 only)

    def on_log(
        self, job: JobState, rank: RankState, state: dict[int, list[Any]], event: LogEvent
    ) -> Iterable[Outcome]:
        line = self._match(event)
        if line is None:
            return _NOTHING
        r, now, step, cfg = rank.rank, event.epoch, _step_of(event, rank), self.config
        evidence: dict[str, Any] = {"line": line, "pattern": cfg.pattern}
        if cfg.min_ranks == 1:
            default = f"{self.rule} on rank {r}: {line}"
            summary = _summary(
                cfg.summary, default, rule=self.rule, job=job.job_id, rank=r, ranks=[r],
                step=step, line=line, count=1,
            )  # fmt: skip
            return (Finding(self.rule, r, cfg.severity, now, summary, step, evidence, cfg.action),)
        state[r] = [now, step, line]
        cutoff = now - cfg.window_s
        for old in [k for k, v in state.items() if v[0] < cutoff]:
            del state[old]
        if len(state) < cfg.min_ranks:
            return _NOTHING
        ranks = sorted(state)
        steps = [v[1] for v in state.values() if v[1] is not None]
        first = min(state.values(), key=lambda v: v[0])
        evidence.update(ranks_matched=len(ranks), line=first[2])
        default = f"{self.rule} on {len(ranks)} ranks within {cfg.window_s:g} s: {first[2]}"
        summary = _summary(
            cfg.summary, default, rule=self.rule, job=job.job_id, rank=ranks[0], ranks=ranks,
            step=min(steps) if steps else None, line=first[2], count=len(ranks),
        )  # fmt: skip
        return (
            Finding(
                self.rule, None, cfg.severity, now, summary,
                min(steps) if steps else None, evidence, cfg.action, tuple(ranks),
            ),
        )  # fmt: skip


class FrequencyDetector(_LogMatcher):
    """``frequency``: ``count`` matching records within ``window_s`` (a LogDetector)."""

    def __init__(self, rule: FrequencyRule) -> None:
        super().__init__(rule)
        self.config = rule

    def new_job_state(self) -> dict[Any, list[list[Any]]]:
        # key ("job" or a rank) -> the last `count` matches as [time, rank, step]
        return {}

    def on_log(
        self, job: JobState, rank: RankState, state: dict[Any, list[list[Any]]], event: LogEvent
    ) -> Iterable[Outcome]:
        line = self._match(event)
        if line is None:
            return _NOTHING
        cfg, now, step = self.config, event.epoch, _step_of(event, rank)
        key = "job" if cfg.per == "job" else rank.rank
        recent = state.setdefault(key, [])
        recent.append([now, rank.rank, step])
        if len(recent) > cfg.count:
            del recent[0]
        if len(recent) < cfg.count or now - recent[0][0] > cfg.window_s:
            return _NOTHING
        ranks = sorted({m[1] for m in recent})
        steps = [m[2] for m in recent if m[2] is not None]
        first_step = min(steps) if steps else None
        where = f"rank {rank.rank}" if cfg.per == "rank" else f"{len(ranks)} rank(s)"
        default = (
            f"{self.rule}: {cfg.count} matching records within {now - recent[0][0]:.0f} s "
            f"({where}): {line}"
        )
        summary = _summary(
            cfg.summary, default, rule=self.rule, job=job.job_id, rank=rank.rank, ranks=ranks,
            step=first_step, line=line, count=cfg.count,
        )  # fmt: skip
        evidence = {"line": line, "pattern": cfg.pattern, "count": cfg.count,
                    "window_s": cfg.window_s, "ranks": ranks}  # fmt: skip
        scope_rank = rank.rank if cfg.per == "rank" else None
        return (
            Finding(
                self.rule, scope_rank, cfg.severity, now, summary, first_step, evidence,
                cfg.action, () if scope_rank is not None else tuple(ranks),
            ),
        )  # fmt: skip


def _reader(field: str) -> Callable[[StepEvent], float | None]:
    """How to read ``field`` from a step event as a float (None when absent or not a number)."""

    def number(value: Any) -> float | None:
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return None
        return None

    if field in _STEP_FIELDS:
        return lambda event: number(getattr(event, field))
    return lambda event: number((event.__pydantic_extra__ or {}).get(field))


def _test(rule: ThresholdRule) -> Callable[[float], bool]:
    if rule.op == "nonfinite":
        return lambda v: not math.isfinite(v)
    op, threshold = _OPS[rule.op], rule.value
    assert threshold is not None
    return lambda v: op(v, threshold)


class _Threshold:
    def __init__(self, rule: ThresholdRule) -> None:
        self.name = _slot(rule)
        self.rule = rule.name
        self.config = rule
        self._read = _reader(rule.field)
        self._bad = _test(rule)

    def _describe(self, value: float) -> str:
        cfg = self.config
        what = "non-finite" if cfg.op == "nonfinite" else f"{cfg.op} {cfg.value:g}"
        steps = f" for {cfg.for_steps} steps" if cfg.for_steps > 1 else ""
        return f"{cfg.field} {what}{steps} (now {value:g})"

    def _evidence(self, value: float, steps: int) -> dict[str, Any]:
        cfg = self.config
        return {"field": cfg.field, "op": cfg.op, "threshold": cfg.value, "value": value,
                "consecutive_steps": steps}  # fmt: skip


class ThresholdRankDetector(_Threshold):
    """``threshold`` with ``scope = "rank"``: a StepDetector; resolved after
    ``recover_steps`` good steps in a row."""

    def new_rank_state(self) -> list[Any]:
        return [0, -1, False, 0, -math.inf]  # run, first step of run, active, calm, reported

    def on_step(
        self, job: JobState, rank: RankState, s: list[Any], event: StepEvent
    ) -> Iterable[Outcome]:
        value = self._read(event)
        if value is None:
            return _NOTHING
        cfg = self.config
        if self._bad(value):
            if s[0] == 0:
                s[1] = event.step
            s[0] += 1
            s[3] = 0
            now = event.epoch
            if s[0] >= cfg.for_steps and (not s[2] or now - s[4] >= _REFRESH_S):
                s[2], s[4] = True, now
                r = rank.rank
                default = f"{self.rule} on rank {r}: {self._describe(value)}"
                summary = _summary(
                    cfg.summary, default, rule=self.rule, job=job.job_id, rank=r, ranks=[r],
                    step=s[1], field=cfg.field, value=value, threshold=cfg.value, count=s[0],
                )  # fmt: skip
                return (
                    Finding(self.rule, r, cfg.severity, now, summary, s[1],
                            self._evidence(value, s[0]), cfg.action),
                )  # fmt: skip
            return _NOTHING
        s[0] = 0
        if s[2]:
            s[3] += 1
            if s[3] >= cfg.recover_steps:
                s[2], s[3] = False, 0
                return (
                    Resolution(self.rule, rank.rank, event.epoch, "",
                               f"{cfg.field} back to {value:g}"),
                )  # fmt: skip
        return _NOTHING


class ThresholdJobDetector(_Threshold):
    """``threshold`` with ``scope = "job"``: a JobDetector; judged at the job's ticks."""

    def new_job_state(self) -> dict[str, Any]:
        # run: rank -> [consecutive bad steps, first step, last value]; active; when and how
        # many ranks were last reported (more ranks join the open incident at once)
        return {"run": {}, "active": False, "reported": -math.inf, "n": 0}

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        value = self._read(event)
        if value is None:
            return
        run = state["run"]
        if self._bad(value):
            entry = run.get(rank.rank)
            if entry is None:
                run[rank.rank] = [1, event.step, value]
            else:
                entry[0] += 1
                entry[2] = value
        elif rank.rank in run:
            del run[rank.rank]

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        cfg = self.config
        over = {r: e for r, e in state["run"].items() if e[0] >= cfg.for_steps}
        if not over:
            if state["active"]:
                state["active"], state["n"] = False, 0
                return (Resolution(self.rule, None, now, "", f"{cfg.field} back in range"),)
            return _NOTHING
        if len(over) < cfg.min_ranks:
            return _NOTHING
        if state["active"] and now - state["reported"] < _REFRESH_S and len(over) <= state["n"]:
            return _NOTHING
        state["active"], state["reported"], state["n"] = True, now, len(over)
        ranks = sorted(over)
        step = min(e[1] for e in over.values())
        worst = over[ranks[0]][2]
        default = f"{self.rule} on {len(ranks)} rank(s) {_few(ranks)}: {self._describe(worst)}"
        summary = _summary(
            cfg.summary, default, rule=self.rule, job=job.job_id, rank=ranks[0], ranks=ranks,
            step=step, field=cfg.field, value=worst, threshold=cfg.value, count=len(ranks),
        )  # fmt: skip
        evidence = self._evidence(worst, over[ranks[0]][0])
        evidence["ranks_affected"] = len(ranks)
        return (
            Finding(self.rule, None, cfg.severity, now, summary, step, evidence, cfg.action,
                    tuple(ranks)),
        )  # fmt: skip


def _few(ranks: list[int]) -> str:
    return str(ranks) if len(ranks) <= 8 else f"[{ranks[0]}..{ranks[-1]}]"


def build(rule: LogPatternRule | FrequencyRule | ThresholdRule) -> Any:
    """The detector of one no-code user rule."""
    if isinstance(rule, LogPatternRule):
        return LogPatternDetector(rule)
    if isinstance(rule, FrequencyRule):
        return FrequencyDetector(rule)
    if rule.scope == "job":
        return ThresholdJobDetector(rule)
    return ThresholdRankDetector(rule)
