"""Numerical blow-ups that trainers report only in their logs.

Two families of records, one detector (:class:`LossScaleDetector`, a
:class:`~rankwatch.streams.detectors.base.LogDetector`):

- **the dynamic loss scale collapsing** (rule ``loss_scale_collapse``). An fp16 loss scaler
  halves its scale at each overflow and skips the step. That is routine: DeepSpeed and apex
  probe a larger scale every ~1,000 clean steps and overflow once; at start-up they calibrate
  down from 2**16 or 2**32. What is not routine is the scale driven down to its *floor*
  (``min_scale``, or the trainer's own: DeepSpeed's "Attempted loss scale: 1, reducing to 1"
  shows a reduction that no longer reduces): every step is then skipped and training stands
  still. It fires when the scale sits at its floor after at least ``min_skips`` overflow skips
  within the last ``window_steps`` steps (``window_s`` seconds for records without a step):
  half the steps skipped, not a scale that drifted down over thousands of steps and overflows
  now and then. And at once on the trainer saying so itself (DeepSpeed's "Current loss scale
  already at minimum - cannot decrease scale anymore. Exiting run.", fairseq's "Minimum loss
  scale reached (0.0001)."). It resolves when a later overflow shows the scale grew back above
  its floor. Skips that recover are silent.
- **non-finite checks** the trainer reports (Megatron-LM's ``--check-for-nan-in-loss-and-grad``
  "found NaN in local forward loss calculation" / "found NaN in local grad norm ...", torch's
  anomaly detection "Function 'XBackward0' returned nan values in its 0th output.") fire the
  existing ``loss_explosion`` (a non-finite loss) and ``gradient_explosion`` (a non-finite
  gradient) rules, rank scope, with ``evidence["source"] = "log"``. They take those rules'
  severity and action, and their incident key, so a rank's log finding and its metric finding
  are one incident.

Every log record comes through here, so a record that mentions none of a handful of fixed
substrings is rejected before any regular expression runs.

>>> from rankwatch.schemas import LogEvent
>>> from rankwatch.streams.engine import Engine
>>> engine = Engine(detectors())
>>> alerts = engine.process(LogEvent(job_id="j", rank=0, timestamp=5, level="ERROR",
...     message="Exception: Current loss scale already at minimum - cannot decrease scale "
...     "anymore. Exiting run."))
>>> alerts += engine.flush()
>>> [(a.rule, a.ranks, a.evidence["pattern"]) for a in alerts]
[('loss_scale_collapse', [0], 'scale_at_minimum')]
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from rankwatch.schemas import Action, LogEvent, Severity
from rankwatch.streams.detectors import _metric_config as check
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.gradient import GradientExplosionConfig
from rankwatch.streams.detectors.log_patterns import clip, line_at
from rankwatch.streams.detectors.loss import LossExplosionConfig
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome, Resolution

__all__ = ["LOSS_SCALE_COLLAPSE", "LossScaleConfig", "LossScaleDetector", "detectors"]

LOSS_SCALE_COLLAPSE: Final = "loss_scale_collapse"
_LOSS: Final = "loss_explosion"
_GRADIENT: Final = "gradient_explosion"

_NOTHING: tuple[()] = ()
_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"

# A scale change. DeepSpeed (loss_scaler.py, fused_optimizer.py, ZeRO; "[deepscale]" in old
# versions): "OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 64, reducing to 32";
# with hysteresis "Attempted loss scale: 65536, but hysteresis is 2. Reducing hysteresis to 1"
# (a skip, the scale kept). apex amp: "Gradient overflow.  Skipping step, loss scaler 0
# reducing loss scale to 32768.0". fairseq: "NOTE: overflow detected, setting loss scale to:
# 16384.0"; Megatron-DeepSpeed: "Overflow detected, setting loss scale to 32768.0".
_ATTEMPTED: Final = re.compile(
    r"Attempted loss scale: " + _NUM + r"(?:, reducing to " + _NUM + r"|, but hysteresis)"
)
_REDUCING: Final = re.compile(r"reducing loss scale to " + _NUM)
_SETTING: Final = re.compile(r"[Oo]verflow detected, setting loss scale to:? " + _NUM)
# The trainer gives up: the scale is at its floor and the run exits.
_AT_MINIMUM: Final = "Current loss scale already at minimum"  # DeepSpeed loss_scaler.py
_MINIMUM_REACHED: Final = re.compile(r"Minimum loss scale reached \(" + _NUM + r"\)")  # fairseq
# Non-finite checks. Megatron-LM: "Rank 3: found NaN in local forward loss calculation. ..."
# (assertions of older versions), or the rerun state machine's "Unexpected result nan
# (message='found NaN in local forward loss calculation')"; grad norms "found NaN in local grad
# norm in backward pass before data-parallel communication collective" or "... for bucket #0
# in backward pass ...". torch autograd anomaly mode (engine.cpp): "Function 'PowBackward0'
# returned nan values in its 0th output."
_NAN_LOSS: Final = re.compile(r"found (NaN|Inf) in local forward loss")
_NAN_GRAD: Final = re.compile(r"found (NaN|Inf) in local grad norm(?: for bucket #(\d+))?")
_ANOMALY: Final = re.compile(r"Function '(\w+)' returned (nan|inf) values in its (\d+)th output")
_NODE: Final = re.compile(r"[Dd]evice:? (\d+), node:? ([\w.-]+)|node ([\w.-]+), device (\d+)")


_MAX_SKIPS = 64  # skips kept per rank: min_skips above this could never be reached


@dataclass(frozen=True, slots=True)
class LossScaleConfig:
    """Thresholds of ``loss_scale_collapse``."""

    #: The scale at or below which the scaler is at its floor (DeepSpeed's ``min_loss_scale``
    #: defaults to 1). A reduction that does not reduce ("reducing to 1" from 1) is the
    #: trainer's own floor, whatever this says.
    min_scale: float = 1.0
    #: Overflow skips within the window, the last at the floor, before firing. A collapse
    #: skips (nearly) every step: the scale halves step after step. A scale that drifted down
    #: over thousands of steps and overflows now and then still trains: not this rule.
    min_skips: int = 5
    #: The window of a record that carries its step (and the skip it is compared with): the
    #: last ``window_steps`` steps, so 5 of 10 is half the steps skipped, at any step time ...
    window_steps: int = 10
    #: ... and of a record without a step: ``window_s`` seconds of event time. Slow steps
    #: (issue threads show 132 s) fit fewer skips in it: DeepSpeed's "already at minimum"
    #: record still fires at once.
    window_s: float = 300.0
    #: While the scale stays at its floor, re-report this often (event time) so the incident
    #: does not expire.
    refresh_s: float = 60.0
    #: Nearly every step is skipped: the run has stopped learning.
    severity: Severity = "critical"
    action: Action = "notify"

    def __post_init__(self) -> None:
        check.positive(self, "min_scale", self.min_scale)
        check.count(self, "min_skips", self.min_skips)
        check.positive(self, "window_s", self.window_s)
        check.count(self, "window_steps", self.window_steps)
        # More skips than the window has steps, or than are kept, could never fire.
        check.at_most(self, "min_skips", self.min_skips, self.window_steps, "window_steps")
        check.at_most(self, "min_skips", self.min_skips, _MAX_SKIPS, "the skips kept per rank")
        check.positive(self, "refresh_s", self.refresh_s)
        check.severity_action(self, self.severity, self.action)


class LossScaleDetector:
    """``loss_scale_collapse`` from overflow records; log-reported NaN/Inf as the metric rules.

    Any part may be ``None`` (that rule is off). ``loss`` and ``gradient`` are the metric
    rules' own configs: only their ``severity`` and ``action`` are read.
    """

    name: ClassVar[str] = "loss_scale"
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("",)

    def __init__(
        self,
        config: LossScaleConfig | None = None,
        loss: LossExplosionConfig | None = None,
        gradient: GradientExplosionConfig | None = None,
        *,
        max_line: int = 400,
    ) -> None:
        if max_line < 40:
            raise DetectorConfigError(f"max_line must be >= 40, got {max_line}")
        self.config = config
        self.loss = loss
        self.gradient = gradient
        self.max_line = max_line

    def new_job_state(self) -> dict[int, dict[str, Any]]:
        # rank -> {"t": [event times of recent skips], "s": [their steps or -1], "scale": the
        # scale after the last skip, "active": bool, "reported": event time of the last finding}
        return {}

    def on_log(
        self, job: JobState, rank: RankState, state: dict[int, dict[str, Any]], event: LogEvent
    ) -> Iterable[Outcome]:
        m = event.message
        # The cheap reject: every pattern above contains one of these.
        if "loss scale" in m:
            if self.config is None:
                return _NOTHING
            return self._scale(rank, state, event, m, self.config)
        if "found " in m:
            hit = _NAN_LOSS.search(m)
            if hit is not None:
                return self._nonfinite(rank, event, _LOSS, hit, {"value": hit[1].lower()})
            hit = _NAN_GRAD.search(m)
            if hit is not None:
                figures: dict[str, Any] = {"value": hit[1].lower()}
                if hit[2] is not None:
                    figures["bucket"] = int(hit[2])
                return self._nonfinite(rank, event, _GRADIENT, hit, figures)
            return _NOTHING
        if " values in its " in m:
            hit = _ANOMALY.search(m)
            if hit is not None:
                figures = {"value": hit[2], "function": hit[1], "output": int(hit[3])}
                return self._nonfinite(rank, event, _GRADIENT, hit, figures)
        return _NOTHING

    # -- loss_scale_collapse -------------------------------------------------------------
    def _scale(
        self,
        rank: RankState,
        state: dict[int, dict[str, Any]],
        event: LogEvent,
        m: str,
        c: LossScaleConfig,
    ) -> Iterable[Outcome]:
        if _AT_MINIMUM in m:
            return self._gave_up(rank, state, event, m, m.index(_AT_MINIMUM), None, c)
        # Each expression runs only on records with its fixed words: Megatron's iteration
        # line ("| loss scale: 65536.0 |") comes here too, and pays substring tests only.
        hit = _MINIMUM_REACHED.search(m) if "Minimum loss scale" in m else None
        if hit is not None:
            return self._gave_up(rank, state, event, m, hit.start(), float(hit[1]), c)
        attempted: float | None = None
        stuck = False  # a reduction that does not reduce ("reducing to 1" from 1): the floor
        hit = _ATTEMPTED.search(m) if "Attempted loss scale" in m else None
        if hit is not None:
            attempted = float(hit[1])
            new = attempted if hit[2] is None else float(hit[2])  # hysteresis: scale kept
            stuck = hit[2] is not None and new >= attempted
        else:
            if "reducing loss scale" in m:
                hit = _REDUCING.search(m)
            elif "setting loss scale" in m:
                hit = _SETTING.search(m)
            if hit is None:
                return _NOTHING
            new = float(hit[1])
        s = state.get(rank.rank)
        if s is None:
            s = state[rank.rank] = {
                "t": [], "s": [], "scale": math.inf, "active": False, "reported": -math.inf
            }  # fmt: skip
        now = event.epoch
        step = -1 if event.step is None else event.step
        last = s["scale"]
        if attempted is not None:
            grew = attempted > last
            before = attempted
        else:
            # apex and fairseq do not say the scale they tried. The same scale again is a
            # recovery (doubled, then halved) unless it is at the floor (stuck there).
            grew = new > last or (new == last and new > c.min_scale)
            before = new * 2.0
        out: list[Outcome] = []
        if grew:
            # The scale grew back since the last skip (clean steps doubled it): that descent
            # is over, and an open collapse has recovered.
            s["t"].clear()
            s["s"].clear()
            if s["active"]:
                s["active"] = False
                out.append(self._recovered(rank, before, new, now))
        s["scale"] = new
        times, steps = s["t"], s["s"]
        times.append(now)
        steps.append(step)
        # Forget skips outside the window: in steps where both records say their step, else
        # in event time.
        while times and (
            step - steps[0] >= c.window_steps
            if step >= 0 and steps[0] >= 0
            else now - times[0] > c.window_s
        ):
            del times[0]
            del steps[0]
        if len(times) > _MAX_SKIPS:
            del times[0]
            del steps[0]
        floor = stuck or new <= c.min_scale
        if not floor or len(times) < c.min_skips:
            return out
        if s["active"] and now - s["reported"] < c.refresh_s:
            return out
        s["active"] = True
        s["reported"] = now
        line = line_at(m, hit.start(), self.max_line)
        where = rank.label
        summary = (
            f"{where}: the fp16 loss scale collapsed to {new:g} (its floor) after "
            f"{len(times)} overflow skips; nearly every step is skipped, so the run has stopped "
            f"learning: lower the learning rate, check the data for bad samples, or switch to "
            f"bf16"
        )
        evidence = {
            "source": "log",
            "pattern": "scale_at_floor",
            "line": line,
            "loss_scale": new,
            "attempted_loss_scale": attempted,
            "min_scale": c.min_scale,
            "skips_in_window": len(times),
        }
        out.append(
            self._finding(rank, event, LOSS_SCALE_COLLAPSE, summary, evidence, c.severity, c.action)
        )
        return out

    def _gave_up(
        self,
        rank: RankState,
        state: dict[int, dict[str, Any]],
        event: LogEvent,
        m: str,
        at: int,
        floor: float | None,
        c: LossScaleConfig,
    ) -> Iterable[Outcome]:
        s = state.get(rank.rank)
        if s is not None:
            s["active"] = True
            s["reported"] = event.epoch
        trainer = "fairseq" if floor is not None else "DeepSpeed"
        at_floor = f" ({floor:g})" if floor is not None else ""
        summary = (
            f"{rank.label}: the fp16 loss scale is at its minimum{at_floor} and {trainer} is "
            f"stopping the run: the loss or gradients overflow at every scale. Lower the "
            f"learning rate, check the data for bad samples, add gradient clipping, or switch "
            f"to bf16; restart from the last good checkpoint"
        )
        evidence: dict[str, Any] = {
            "source": "log",
            "pattern": "scale_at_minimum",
            "line": line_at(m, at, self.max_line),
        }
        if floor is not None:
            evidence["min_scale"] = floor
        return (
            self._finding(
                rank, event, LOSS_SCALE_COLLAPSE, summary, evidence, c.severity, c.action
            ),
        )

    def _recovered(self, rank: RankState, before: float, new: float, now: float) -> Resolution:
        return Resolution(
            rule=LOSS_SCALE_COLLAPSE,
            rank=rank.rank,
            event_time=now,
            summary=f"{rank.label}: the loss scale grew back to {before:g} (now {new:g})",
        )

    # -- loss_explosion / gradient_explosion from the trainer's own checks -----------------
    def _nonfinite(
        self,
        rank: RankState,
        event: LogEvent,
        rule: str,
        hit: re.Match[str],
        figures: dict[str, Any],
    ) -> Iterable[Outcome]:
        cfg = self.loss if rule == _LOSS else self.gradient
        if cfg is None:
            return _NOTHING
        m = event.message
        line = line_at(m, hit.start(), self.max_line)
        evidence: dict[str, Any] = {"source": "log", "line": line, **figures}
        node = _NODE.search(m)
        if node is not None:
            evidence["device"] = int(node[1] or node[4])
            evidence["node"] = node[2] or node[3]
        value = figures["value"]
        step = f" at step {event.step}" if event.step is not None else ""
        if rule == _LOSS:
            what = f"the trainer found a {value} loss{step}"
            todo = "check the data batch and the learning rate"
        elif "function" in figures:
            what = f"autograd's {figures['function']} returned {value} gradients{step}"
            todo = "check that op's inputs (log of 0, division by 0), the data batch and the LR"
        else:
            what = f"the trainer found a {value} gradient norm{step}"
            todo = "check the data batch, the learning rate and the loss scaler"
        paused = ", pausing the job" if cfg.action == "pause_job" else ""
        summary = f"{rank.label}: {what} (log: {clip(line, 120)}); {todo}{paused}"
        return (self._finding(rank, event, rule, summary, evidence, cfg.severity, cfg.action),)

    @staticmethod
    def _finding(
        rank: RankState,
        event: LogEvent,
        rule: str,
        summary: str,
        evidence: dict[str, Any],
        severity: Severity,
        action: Action,
    ) -> Finding:
        if rank.host:
            evidence["host"] = rank.host
        # The record's own step only, as the other log rules do: the alert id is built from
        # it and must not depend on how the steps and logs topics interleave.
        return Finding(
            rule=rule,
            rank=rank.rank,
            severity=severity,
            event_time=event.epoch,
            step=event.step,
            summary=summary,
            evidence=evidence,
            action=action,
        )


def detectors() -> list[Any]:
    """The detector with its defaults (wired in by ``streams/registry.py``)."""
    return [LossScaleDetector(LossScaleConfig(), LossExplosionConfig(), GradientExplosionConfig())]
