"""The two kinds of event that ranks publish: :class:`StepEvent` and :class:`LogEvent`."""

from __future__ import annotations

from functools import cached_property
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from rankwatch.schemas._types import (
    INT64_MAX,
    JobId,
    Measure,
    NonFiniteFloat,
    Percent,
    Rank,
    Step,
    Timestamp,
)

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: What a job is doing, where the trainer says it: detectors judge training steps only, and a
#: long evaluation pass or checkpoint save is not a hang.
Phase = Literal["train", "eval", "checkpoint"]
#: What a producer says of its own rank's life, on a log record (its text says the rest):
#: ``ended`` the rank finished cleanly (``shutdown()`` or exit without an uncaught exception);
#: ``exception`` an uncaught exception, its traceback in the message; ``stuck`` a step overran
#: its typical time by far, the main thread's stack in the message and ``step`` the step in
#: progress; ``terminated`` the process was told to stop (SIGTERM, SIGINT: the signal named).
Lifecycle = Literal["ended", "exception", "stuck", "terminated"]
#: LR schedules whose curve is known, by Hugging Face's ``lr_scheduler_type`` names: what a
#: step's ``lr_schedule`` may declare (``other``, or any name of the trainer's own, is taken
#: too, and only its ranks' agreement is checked).
KNOWN_LR_SCHEDULES: tuple[str, ...] = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
)
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}


def _normalize_level(value: Any) -> Any:
    if isinstance(value, str):
        upper = value.strip().upper()
        return _LEVEL_ALIASES.get(upper, upper)
    return value


class EventBase(BaseModel):
    """Fields every event carries. Unknown fields are kept (see :attr:`extra`), never rejected."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=False)

    schema_version: Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)] = 1
    job_id: JobId
    rank: Rank
    host: str | None = None
    timestamp: Timestamp
    #: The job's attempt: a restart from a checkpoint is a new attempt of the same job
    #: (torchrun's ``TORCHELASTIC_RESTART_COUNT``). Detector state starts fresh with each one.
    attempt: Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)] | None = None
    #: The phase the rank is in when it produced the event (``train`` where not said).
    phase: Phase | None = None

    @property
    def extra(self) -> dict[str, Any]:
        """Fields this version of the contract does not know, as they arrived."""
        return self.model_extra or {}

    @cached_property
    def epoch(self) -> float:
        """Event time as epoch seconds: what detectors compute with. Computed once per event
        (the engine and a dozen detectors read it; ``datetime.timestamp`` is not free)."""
        return self.timestamp.timestamp()


class StepEvent(EventBase):
    """One rank's metrics for one optimizer step.

    >>> e = StepEvent(job_id="j1", rank=7, step=1200, timestamp=1743848595, loss="nan")
    >>> e.loss != e.loss, e.timestamp.isoformat()
    (True, '2025-04-05T10:23:15+00:00')
    """

    kind: Literal["step"] = "step"
    world_size: Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)] | None = None
    step: Step
    loss: NonFiniteFloat | None = None
    learning_rate: Annotated[float, Field(allow_inf_nan=False)] | None = None
    gradient_norm: NonFiniteFloat | None = None
    gpu_memory_usage: Percent | None = None
    gpu_memory_allocated_mb: Measure | None = None
    gpu_memory_reserved_mb: Measure | None = None
    throughput_tokens_per_sec: Measure | None = None
    step_time_s: Measure | None = None
    data_time_s: Measure | None = None
    compute_time_s: Measure | None = None
    #: The GPU's own busy share (NVML's utilization.gpu) over the step, where one is read.
    gpu_utilization: Percent | None = None
    #: The LR schedule the trainer declared (``constant``, ``constant_with_warmup``, ``linear``,
    #: ``cosine``, ``cosine_with_restarts``, ``polynomial``, ``inverse_sqrt``, or its own name),
    #: its warm-up and total steps: what the ``lr_schedule`` rule checks the observed LR against.
    lr_schedule: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    lr_warmup_steps: Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)] | None = None
    lr_total_steps: Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)] | None = None

    @model_validator(mode="after")
    def _rank_within_world(self) -> StepEvent:
        if self.world_size is not None and self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is not below world_size {self.world_size}")
        return self


def _is_float(annotation: Any) -> bool:
    """``float``, ``float | None``, ``Annotated[float, ...] | None``: a number, not an id."""
    if get_origin(annotation) is Annotated:
        return _is_float(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return len(members) == 1 and _is_float(members[0])
    return annotation is float


#: The step metrics: every float field of :class:`StepEvent`, in the contract's order. The one
#: list of them: the producer's ``log_step`` keywords, the simulator and storage read it.
STEP_METRICS: tuple[str, ...] = tuple(
    name for name, info in StepEvent.model_fields.items() if _is_float(info.annotation)
)


class LogEvent(EventBase):
    """One log record of one rank; a traceback stays inside its record.

    >>> LogEvent(job_id="j1", rank=0, timestamp=0, level="warn", message="x").level
    'WARNING'
    """

    kind: Literal["log"] = "log"
    level: Annotated[LogLevel, BeforeValidator(_normalize_level)]
    message: str
    logger: str | None = None
    step: Step | None = None
    #: Set on the records the producer writes about its rank's life (see :data:`Lifecycle`).
    lifecycle: Lifecycle | None = None
