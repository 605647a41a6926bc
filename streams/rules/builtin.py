"""Built-in rules as the rules file sees them: each rule id, the config dataclasses behind it.

A rule id of CONTRACT.md maps to one or two detector config dataclasses; its settings in the
file are those dataclasses' fields (plus ``enabled``), checked against their type hints and
then by the dataclasses' own ``__post_init__`` checks. Some rules share a detector:

- ``hang``: the log watchdog records (:class:`EpisodeConfig`) and no progress
  (:class:`ProgressHangConfig`); a key goes to whichever has it (``severity``/``action``: both);
- ``nccl_timeout_burst`` and ``nccl_error``: one NCCL gatherer; thresholds are set on
  ``nccl_timeout_burst``. ``nccl_error`` takes ``enabled``, ``severity`` and ``action``;
- ``cuda_oom`` and ``fatal_error``: one log classifier, each with its own config.

>>> detectors = build_detectors({"straggler": {"enabled": False}, "loss_explosion": {"ratio": 4}})
>>> "straggler" in [d.name for d in detectors], detectors[0].config.ratio
(False, 4)
>>> for key, problem in check_settings("loss_explosion", {"ratio": "4", "ratoi": 4}):
...     print(key, "->", problem[:38])
ratio -> expected a number (float), got str
ratoi -> unknown setting; known: action, alpha,
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, ClassVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

from rankwatch.schemas import Action, LogEvent, Severity, StepEvent
from rankwatch.schemas.validation import RULE_SETTING_STYLE, field_errors
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.gradient import GradientExplosion, GradientExplosionConfig
from rankwatch.streams.detectors.gradient_desync import GradientDesync, GradientDesyncConfig
from rankwatch.streams.detectors.gradient_vanishing import (
    GradientVanishing,
    GradientVanishingConfig,
)
from rankwatch.streams.detectors.job_end import JobStopped, JobStoppedConfig
from rankwatch.streams.detectors.lifecycle import JobRestarted, JobRestartedConfig
from rankwatch.streams.detectors.liveness import (
    ProgressHangConfig,
    ProgressHangDetector,
    RankSilentConfig,
    RankSilentDetector,
)
from rankwatch.streams.detectors.log_episodes import EpisodeConfig
from rankwatch.streams.detectors.logs import (
    CrashConfig,
    FatalErrorConfig,
    LogRulesConfig,
    LogRulesDetector,
    OomConfig,
)
from rankwatch.streams.detectors.loss import LossExplosion, LossExplosionConfig
from rankwatch.streams.detectors.loss_scale import LossScaleConfig, LossScaleDetector
from rankwatch.streams.detectors.lr_schedule import LrSchedule, LrScheduleConfig
from rankwatch.streams.detectors.memory import MemoryGrowth, MemoryGrowthConfig
from rankwatch.streams.detectors.straggler import StragglerConfig, StragglerDetector
from rankwatch.streams.detectors.stuck import StuckConfig, StuckRanks
from rankwatch.streams.detectors.throughput import ThroughputDrop, ThroughputDropConfig
from rankwatch.streams.detectors.utilization import (
    GpuUtilizationConfig,
    GpuUtilizationDetector,
    InputBoundConfig,
    InputBoundDetector,
)
from rankwatch.streams.engine import Detector
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome

#: rule id -> the config dataclasses its settings go to.
CONFIGS: dict[str, tuple[type[Any], ...]] = {
    "loss_explosion": (LossExplosionConfig,),
    "gradient_explosion": (GradientExplosionConfig,),
    "throughput_drop": (ThroughputDropConfig,),
    "memory_growth": (MemoryGrowthConfig,),
    "straggler": (StragglerConfig,),
    "rank_silent": (RankSilentConfig,),
    "hang": (ProgressHangConfig, EpisodeConfig, StuckConfig),
    "nccl_timeout_burst": (EpisodeConfig,),
    "nccl_error": (),
    "cuda_oom": (OomConfig,),
    "fatal_error": (FatalErrorConfig,),
    "crash": (CrashConfig,),
    "job_stopped": (JobStoppedConfig,),
    "gradient_vanishing": (GradientVanishingConfig,),
    "gradient_desync": (GradientDesyncConfig,),
    "input_bound": (InputBoundConfig,),
    "lr_schedule": (LrScheduleConfig,),
    "gpu_utilization": (GpuUtilizationConfig,),
    "job_restarted": (JobRestartedConfig,),
    "loss_scale_collapse": (LossScaleConfig,),
}
RULE_IDS = tuple(CONFIGS)
_FIXED = {"burst_rule", "lone_rule"}  # which rule ids an episode gatherer emits: not settings
_NCCL_ERROR_KEYS = {"severity", "action"}
_STRICT = ConfigDict(strict=True)


@cache
def _fields(rule: str) -> dict[str, Any]:
    """Setting name -> type hint, for one rule id."""
    out: dict[str, Any] = {"enabled": bool}
    if rule == "nccl_error":
        out.update(severity=Severity, action=Action)
    for cls in CONFIGS[rule]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in _FIXED:
                out[f.name] = hints[f.name]
    return out


@cache
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint, config=_STRICT)


def _type_problem(exc: ValidationError) -> str:
    return field_errors(exc, RULE_SETTING_STYLE)[0].message


def check_settings(rule: str, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems ``(key, message)`` of one built-in rule's settings; ``key`` "" is the rule."""
    if rule not in CONFIGS:
        return [("", f"unknown built-in rule; known: {', '.join(sorted(CONFIGS))}")]
    fields = _fields(rule)
    problems: list[tuple[str, str]] = []
    for key, value in settings.items():
        hint = fields.get(key)
        if hint is None:
            problems.append((key, f"unknown setting; known: {', '.join(sorted(fields))}"))
            continue
        try:
            _adapter(hint).validate_python(value)
        except ValidationError as exc:
            problems.append((key, _type_problem(exc)))
    return problems


def check_config(rule: str, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems the config dataclasses' own checks find in well-typed settings."""
    fixed = {"burst_rule": "a", "lone_rule": "b"}
    for cls in CONFIGS.get(rule, ()):
        try:
            _config(cls, settings, **(fixed if cls is EpisodeConfig else {}))
        except DetectorConfigError as exc:
            return [config_problem(rule, exc)]
    return []


def _config(cls: type[Any], settings: Mapping[str, Any], **fixed: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in settings.items() if k in names}
    return cls(**fixed, **values)


_NAMED = re.compile(r"^(?:\w+Config\.)?(\w+) must")


def config_problem(rule: str, exc: DetectorConfigError) -> tuple[str, str]:
    """The setting a config dataclass complained about (if it says), and its message."""
    m = _NAMED.match(str(exc))
    key = m.group(1) if m and m.group(1) in _fields(rule) else ""
    return key, str(exc)


def build_detectors(settings: Mapping[str, Mapping[str, Any]]) -> list[Detector]:
    """The built-in detectors configured by ``settings`` (rule id -> checked settings).

    Raises :class:`DetectorConfigError` with ``args[1]`` the rule id when a config's own
    checks fail (a ratio below one, ...). Rules not mentioned keep their defaults.
    """

    def on(rule: str) -> bool:
        return bool(settings.get(rule, {}).get("enabled", True))

    def make(rule: str, cls: type[Any], **fixed: Any) -> Any:
        try:
            return _config(cls, settings.get(rule, {}), **fixed)
        except DetectorConfigError as exc:
            raise DetectorConfigError(str(exc), rule) from None

    out: list[Detector] = []
    for rule, config_cls, detector_cls in (
        ("loss_explosion", LossExplosionConfig, LossExplosion),
        ("gradient_explosion", GradientExplosionConfig, GradientExplosion),
        ("throughput_drop", ThroughputDropConfig, ThroughputDrop),
        ("memory_growth", MemoryGrowthConfig, MemoryGrowth),
        ("gradient_vanishing", GradientVanishingConfig, GradientVanishing),
    ):
        if on(rule):
            out.append(detector_cls(make(rule, config_cls)))
    nccl = None
    if on("nccl_timeout_burst") or on("nccl_error"):
        nccl = make(
            "nccl_timeout_burst",
            EpisodeConfig,
            burst_rule="nccl_timeout_burst",
            lone_rule="nccl_error",
        )
    logs = LogRulesConfig(
        oom=make("cuda_oom", OomConfig) if on("cuda_oom") else None,
        fatal=make("fatal_error", FatalErrorConfig) if on("fatal_error") else None,
        crash=make("crash", CrashConfig) if on("crash") else None,
        nccl=nccl,
        hang=make("hang", EpisodeConfig, burst_rule="hang", lone_rule="hang")
        if on("hang")
        else None,
    )
    if logs.oom or logs.fatal or logs.crash or logs.nccl or logs.hang:
        log_rules = LogRulesDetector(logs)
        muted = {r for r in ("nccl_timeout_burst", "nccl_error") if nccl and not on(r)}
        retag = {k: v for k, v in settings.get("nccl_error", {}).items() if k in _NCCL_ERROR_KEYS}
        out.append(Retagged(log_rules, muted, {"nccl_error": retag} if retag else {}))
    if on("straggler"):
        out.append(StragglerDetector(make("straggler", StragglerConfig)))
    if on("lr_schedule"):
        out.append(LrSchedule(make("lr_schedule", LrScheduleConfig)))
    if on("input_bound"):
        out.append(InputBoundDetector(make("input_bound", InputBoundConfig)))
    if on("gpu_utilization"):
        out.append(GpuUtilizationDetector(make("gpu_utilization", GpuUtilizationConfig)))
    if on("gradient_desync"):
        out.append(GradientDesync(make("gradient_desync", GradientDesyncConfig)))
    if on("rank_silent"):
        out.append(RankSilentDetector(make("rank_silent", RankSilentConfig)))
    if on("hang"):
        out.append(ProgressHangDetector(make("hang", ProgressHangConfig)))
        out.append(StuckRanks(make("hang", StuckConfig)))
    if on("job_stopped"):
        out.append(JobStopped(make("job_stopped", JobStoppedConfig)))
    if on("job_restarted"):
        out.append(JobRestarted(make("job_restarted", JobRestartedConfig)))
    # The trainer's own log records: the loss scale, and NaN/Inf checks reported as
    # loss_explosion / gradient_explosion with those rules' severity and action.
    scale = make("loss_scale_collapse", LossScaleConfig) if on("loss_scale_collapse") else None
    nan_loss = make("loss_explosion", LossExplosionConfig) if on("loss_explosion") else None
    nan_grad = (
        make("gradient_explosion", GradientExplosionConfig) if on("gradient_explosion") else None
    )
    if scale or nan_loss or nan_grad:
        out.append(LossScaleDetector(scale, nan_loss, nan_grad))
    return [d.inner if isinstance(d, Retagged) and d.idle else d for d in out]


class Retagged:
    """A log+job detector whose outcomes of some rule ids are dropped or re-tagged.

    For rules that share a detector (``nccl_error`` and ``nccl_timeout_burst``): used only
    when the file mutes one of them or sets ``nccl_error``'s severity or action, so the usual
    case pays nothing.
    """

    name: ClassVar[str] = LogRulesDetector.name

    def __init__(
        self,
        inner: LogRulesDetector,
        muted: set[str],
        retag: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self.inner = inner
        self.muted = frozenset(muted)
        self.retag = dict(retag)
        self.idle = not muted and not retag

    def _filter(self, outcomes: Iterable[Outcome]) -> list[Outcome]:
        out: list[Outcome] = []
        for o in outcomes:
            if o.rule in self.muted:
                continue
            change = self.retag.get(o.rule)
            if change and isinstance(o, Finding):
                o = dataclasses.replace(o, **change)
            out.append(o)
        return out

    def new_job_state(self) -> Any:
        return self.inner.new_job_state()

    def on_log(self, job: JobState, rank: RankState, state: Any, event: LogEvent) -> list[Outcome]:
        return self._filter(self.inner.on_log(job, rank, state, event))

    def on_step(self, job: JobState, rank: RankState, state: Any, event: StepEvent) -> None:
        self.inner.on_step(job, rank, state, event)

    def on_tick(self, job: JobState, state: Any, now: float) -> list[Outcome]:
        return self._filter(self.inner.on_tick(job, state, now))

    def on_flush(self, job: JobState, state: Any) -> list[Outcome]:
        return self._filter(self.inner.on_flush(job, state))
