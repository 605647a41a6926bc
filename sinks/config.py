"""The ``[sinks]`` tables of the rankwatch TOML file: storage, and notify with its routes.

The file is the one every command reads (``--config FILE``, ``$RANKWATCH_CONFIG`` or
``./rankwatch.toml``); :mod:`rankwatch.config` reads the Kafka tables, this module the sinks'.
Parsing is as strict: an unknown key, a wrong type, a bad duration, or a route naming a
destination that does not exist is a :class:`SinkConfigError`, one line per problem,
``FILE: KEY: PROBLEM``. Durations are strings: ``"500ms"``, ``"10s"``, ``"5m"``, ``"30d"``.

>>> cfg = SinksConfig.model_validate({"notify": {
...     "destinations": {"ops": {"type": "slack", "url": "http://127.0.0.1:1/x"}},
...     "routes": [{"jobs": "llm-*", "min_severity": "warning", "to": ["ops"]}]}})
>>> cfg.notify.destinations["ops"].timeout, cfg.storage.db
(5.0, 'sqlite:///.rankwatch/rankwatch.db')
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from rankwatch.schemas import Severity
from rankwatch.schemas.validation import SINKS_STYLE, Loc, dotted, field_errors, model_keys
from rankwatch.sinks.durations import parse_duration
from rankwatch.sinks.exceptions import SinkConfigError
from rankwatch.sinks.storage import DEFAULT_DB


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f'expected a duration string such as "10s", got {value!r}')
    return float(value)  # a bare number is seconds


#: Seconds, written as ``"10s"``, ``"5m"``... (a bare number is seconds).
Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]


#: A TCP port for ``/metrics`` (0: any free one, logged), or None: no metrics served.
MetricsPort = Annotated[int | None, Field(strict=True, ge=0, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Strict):
    """``[sinks.storage]``: where ``rankwatch sink storage`` writes and the queries read."""

    db: str = DEFAULT_DB
    group_id: str = "rankwatch-sink-storage"
    instance_id: str | None = None  # static group membership: a restart resumes at once
    batch_size: int = Field(default=1000, ge=1, le=100_000, strict=True)
    linger: Duration = 1.0
    metrics_port: MetricsPort = None  # Prometheus /metrics (rankwatch.sinks.metrics); none: off
    metrics_host: str = "127.0.0.1"
    retention: Duration | None = None  # none: keep everything
    # Raw steps older than this go (their per-rank rollups stay, and the steps around every
    # alert stay as its evidence); none: keep them as long as ``retention`` keeps everything.
    step_retention: Duration | None = None

    @model_validator(mode="after")
    def _known_scheme(self) -> StorageConfig:
        if not self.db.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"db: expected sqlite:///PATH or postgresql://..., got {self.db!r}")
        return self

    @model_validator(mode="after")
    def _step_retention_within_retention(self) -> StorageConfig:
        steps, everything = self.step_retention, self.retention
        if steps is not None and steps <= 0:
            raise ValueError("step_retention: must be longer than 0s (leave it out to keep them)")
        if steps is not None and everything is not None and steps > everything:
            raise ValueError(
                f"step_retention: {_spoken(steps)} is longer than retention"
                f" ({_spoken(everything)}), which deletes every step first"
            )
        return self


def _spoken(seconds: float) -> str:
    """A duration as it would be written in the file.

    >>> _spoken(40 * 86400), _spoken(90), _spoken(0.5)
    ('40d', '90s', '0.5s')
    """
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class DestinationConfig(_Strict):
    """``[sinks.notify.destinations.NAME]``: one endpoint, its format and its manners."""

    type: Literal["webhook", "slack", "dingtalk", "alertmanager"]
    url: str  # alertmanager: its base URL (the receiver posts to URL/api/v2/alerts)
    timeout: Duration = 5.0
    group_wait: Duration = 10.0
    max_group: int = Field(default=50, ge=1, strict=True)
    rate_limit: float = Field(default=1.0, gt=0)  # messages per second
    burst: int = Field(default=5, ge=1, strict=True)
    max_attempts: int = Field(default=5, ge=1, strict=True)
    backoff: Duration = 0.5
    max_backoff: Duration = 30.0
    # type = "alertmanager" only (see rankwatch.sinks.notify.alertmanager):
    labels: dict[str, Annotated[str, Field(strict=True)]] = Field(default_factory=dict)
    dashboard_url: str | None = None  # annotation and generatorURL: URL/alerts/ALERT_ID
    resend_every: Duration = 60.0  # a firing alert is posted again this often

    @model_validator(mode="after")
    def _http_url(self) -> DestinationConfig:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected an http:// or https:// URL, got {self.url!r}")
        if self.type != "alertmanager":
            for key in ("labels", "dashboard_url", "resend_every"):
                if key in self.model_fields_set:
                    raise ValueError(f'{key}: only for type = "alertmanager"')
            return self
        from rankwatch.sinks.notify.alertmanager.labels import check_static_labels

        check_static_labels(self.labels)  # ValueError("labels: ...") naming the bad one
        if self.dashboard_url is not None and not self.dashboard_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"dashboard_url: expected an http:// or https:// URL, got {self.dashboard_url!r}"
            )
        if self.resend_every < 1:
            raise ValueError(f"resend_every: must be at least 1s, got {self.resend_every:g}s")
        return self


class RouteConfig(_Strict):
    """``[[sinks.notify.routes]]``: which alerts go where. Routes are tried in order; the first
    that matches decides, unless it says ``continue = true``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    jobs: str = "*"  # a glob over job_id
    rules: tuple[str, ...] = ()  # empty: every rule
    min_severity: Severity = "info"
    statuses: tuple[Literal["firing", "resolved"], ...] = ("firing", "resolved")
    to: tuple[str, ...] = Field(min_length=1)
    continue_: bool = Field(default=False, alias="continue")


class NotifyConfig(_Strict):
    """``[sinks.notify]``: the webhook sink."""

    group_id: str = "rankwatch-sink-notify"
    state_db: str = ".rankwatch/notify.db"
    retry_topic: str = "rankwatch.alerts.retry"
    park_for: Duration = 60.0  # how long a parked alert waits before it is tried again
    metrics_port: MetricsPort = None  # Prometheus /metrics (rankwatch.sinks.metrics); none: off
    metrics_host: str = "127.0.0.1"
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()

    @model_validator(mode="after")
    def _routes_name_destinations(self) -> NotifyConfig:
        for index, route in enumerate(self.routes):
            for name in route.to:
                if name not in self.destinations:
                    known = ", ".join(sorted(self.destinations)) or "none defined"
                    raise ValueError(f"routes[{index}].to: no destination named {name!r} ({known})")
        return self


class SinksConfig(_Strict):
    """Everything under ``[sinks]``."""

    storage: StorageConfig = StorageConfig()
    notify: NotifyConfig = NotifyConfig()


def load_sinks_config(config_file: str | Path | None = None) -> SinksConfig:
    """The ``[sinks]`` tables of the config file (defaults where there is no file or table)."""
    from rankwatch.config import ConfigError, find_config_file

    try:
        path = find_config_file(config_file)
    except ConfigError as exc:
        raise SinkConfigError(str(exc)) from None
    if path is None:
        return SinksConfig()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise SinkConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SinkConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return parse_sinks_config(data.get("sinks", {}), source=str(path))


def parse_sinks_config(table: Any, *, source: str = "config") -> SinksConfig:
    """Validate a ``[sinks]`` table; errors name ``source`` and the full key."""
    if not isinstance(table, Mapping):
        raise SinkConfigError(f"{source}: sinks: expected a table")
    try:
        return SinksConfig.model_validate(table)
    except ValidationError as exc:
        problems = field_errors(exc, SINKS_STYLE, prefix=("sinks",), suggest=_keys)
        raise SinkConfigError("\n".join(f"{source}: {problem}" for problem in problems)) from None


_FIELDS: dict[str, type[BaseModel]] = {
    "sinks": SinksConfig,
    "sinks.storage": StorageConfig,
    "sinks.notify": NotifyConfig,
}


def _keys(loc: Loc) -> list[str]:
    """The keys the table at ``loc`` may have: near misses of them get a suggestion."""
    parent = dotted(loc)
    model = _FIELDS.get(parent)
    if model is None and parent.startswith("sinks.notify.destinations."):
        model = DestinationConfig
    if model is None and parent.startswith("sinks.notify.routes."):
        model = RouteConfig
    return model_keys(model) if model is not None else []
