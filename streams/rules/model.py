"""The rules file, as a strict pydantic schema (TOML; see the README's "Rules" section).

Top level::

    version = 1               # optional; the only version so far
    [builtin.<rule id>]       # tune or disable a built-in rule (keys: its thresholds)
    [[rule]]                  # a user rule: kind = log_pattern|threshold|frequency|python
    [[jobs]]                  # per-job overrides: match = ["glob", ...], then
    [jobs.builtin.<rule id>]  #   built-in settings for those jobs
    [jobs.rule.<name>]        #   changes to a user rule for those jobs (enabled = false)

Every model forbids unknown keys and coerces nothing (strict: ``"3"`` is not a number), so a
typo is an error with its line rather than a rule that silently keeps its default. Built-in
settings are checked against the detectors' own config dataclasses in :mod:`.builtin`.

>>> LogPatternRule(kind="log_pattern", name="disk_full", pattern="No space left").min_ranks
1
>>> LogPatternRule(kind="log_pattern", name="x", pattern="(")
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for LogPatternRule
pattern
  Value error, bad regex: missing ), unterminated subpattern at position 0 ...
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from rankwatch.schemas import Action, LogLevel, Severity

#: A user rule's name: what the alerts' ``rule`` field says.
RuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Comparison = Literal[">", ">=", "<", "<=", "==", "!=", "nonfinite"]

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
_LEVELS = {"WARN": "WARNING", "FATAL": "CRITICAL"}
#: What a ``summary`` template may use (each rule fills those that apply).
SUMMARY_FIELDS = frozenset(
    {"rule", "job", "rank", "ranks", "step", "line", "field", "value", "threshold", "count"}
)


def _compile(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise ValueError(f"bad regex: {exc}") from None


class _UserRule(BaseModel):
    model_config = _STRICT

    name: RuleName
    enabled: bool = True
    severity: Severity = "warning"
    action: Action = "notify"
    #: One line for people; ``{rank}``, ``{step}``, ``{line}``, ``{value}``... are filled in.
    summary: str | None = None

    @field_validator("summary")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"bad template: {exc}") from None
        unknown = sorted(n for n in names if n.split(".")[0].split("[")[0] not in SUMMARY_FIELDS)
        if unknown or "" in names:
            raise ValueError(
                f"unknown placeholder(s) {unknown or ['{}']}; use {sorted(SUMMARY_FIELDS)}"
            )
        return value


class _LogMatching(_UserRule):
    pattern: str
    ignore_case: bool = False
    #: Only records of these levels (default: any level).
    levels: list[LogLevel] | None = None

    @field_validator("levels", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_LEVELS.get(v.upper(), v.upper()) if isinstance(v, str) else v for v in value]
        return value

    def regex(self) -> re.Pattern[str]:
        return _compile(self.pattern, self.ignore_case)


class LogPatternRule(_LogMatching):
    """A regex on log records; with ``min_ranks`` > 1, one job alert once that many distinct
    ranks matched within ``window_s`` seconds of event time."""

    kind: Literal["log_pattern"]
    min_ranks: Annotated[int, Field(ge=1)] = 1
    window_s: Annotated[float, Field(gt=0)] = 60.0

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        _compile(value, False)
        return value


class FrequencyRule(_LogMatching):
    """``count`` matching records within ``window_s`` seconds, per job or per rank."""

    kind: Literal["frequency"]
    count: Annotated[int, Field(ge=2, le=100_000)]
    window_s: Annotated[float, Field(gt=0)]
    per: Literal["job", "rank"] = "job"

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        _compile(value, False)
        return value


class ThresholdRule(_UserRule):
    """A step metric (any field, including ones the contract does not know) compared with a
    threshold for ``for_steps`` consecutive steps, per rank or job-wide."""

    kind: Literal["threshold"]
    field: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    op: Comparison
    value: float | None = None
    for_steps: Annotated[int, Field(ge=1)] = 1
    #: ``rank``: one alert per rank at fault (gathered into a job alert when most ranks are);
    #: ``job``: one job alert listing the ranks, once ``min_ranks`` of them are at fault.
    scope: Literal["rank", "job"] = "rank"
    min_ranks: Annotated[int, Field(ge=1)] = 1
    #: Good steps in a row that resolve a rank's incident.
    recover_steps: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _needs_value(self) -> ThresholdRule:
        if self.op != "nonfinite" and self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        if self.op == "nonfinite" and self.value is not None:
            raise ValueError("op 'nonfinite' takes no value")
        if self.scope == "rank" and self.min_ranks != 1:
            raise ValueError("min_ranks applies to scope = 'job' only")
        return self


class PythonRule(_UserRule):
    """A detector class of your own: ``class = "package.module:Class"`` or ``entry_point``
    (a name in the ``rankwatch.rules`` entry-point group); ``options`` are its keyword
    arguments. Its findings carry whatever rule id it sets; ``severity``/``action`` here are
    unused (the class decides)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    kind: Literal["python"]
    class_: Annotated[
        str | None,
        Field(alias="class", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"),
    ] = None
    entry_point: str | None = None
    options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_source(self) -> PythonRule:
        if (self.class_ is None) == (self.entry_point is None):
            raise ValueError("give exactly one of 'class' (module:Class) or 'entry_point'")
        return self


UserRule = Annotated[
    LogPatternRule | FrequencyRule | ThresholdRule | PythonRule, Field(discriminator="kind")
]
KINDS = ("log_pattern", "threshold", "frequency", "python")


class JobsOverride(BaseModel):
    """Settings for the jobs whose id matches one of ``match`` (shell globs). The first
    ``[[jobs]]`` that matches a job applies; the top-level settings are its base."""

    model_config = _STRICT

    match: list[Annotated[str, StringConstraints(min_length=1)]]
    builtin: dict[str, dict[str, Any]] = {}
    rule: dict[str, dict[str, Any]] = {}

    @field_validator("match", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class RulesFile(BaseModel):
    """The shape of the whole file; user rules are validated one by one (see the loader)."""

    model_config = _STRICT

    version: Literal[1] = 1
    builtin: dict[str, dict[str, Any]] = {}
    rule: list[dict[str, Any]] = []
    jobs: list[JobsOverride] = []
