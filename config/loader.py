"""Load :class:`Settings` from defaults, a TOML file, the environment and a ``--bootstrap`` flag.

Precedence, lowest first: defaults < file < environment < arguments (``bootstrap=``, and the
``[producer]`` keys a trainer passes to ``rw.configure(...)``: ``producer=``). The file is
``config_file`` if given, else ``$RANKWATCH_CONFIG``, else ``rankwatch.toml`` in the working
directory if it exists, else none. Relative file paths inside the file (``ssl_cafile``...) are
relative to the file's own folder, so a config file can travel with its certificates.

Every problem becomes one line of :class:`ConfigError`, ``SOURCE: KEY: PROBLEM``, where SOURCE is
the file or the environment variable the bad value came from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rankwatch.config.exceptions import ConfigError
from rankwatch.config.settings import (
    KafkaSettings,
    ProducerSettings,
    Settings,
    TopicSettings,
    TopicsSettings,
)
from rankwatch.schemas.validation import CONFIG_STYLE, Loc, dotted, field_errors

DEFAULT_FILE_NAME = "rankwatch.toml"
CONFIG_ENV = "RANKWATCH_CONFIG"

# Environment variable -> (section, key). Only these RANKWATCH_* names are read as settings;
# others (RANKWATCH_HOME, RANKWATCH_CONFIG, ...) belong to other parts and are left alone.
ENV_VARS: dict[str, tuple[str, str]] = {
    "RANKWATCH_BOOTSTRAP": ("kafka", "bootstrap"),
    "RANKWATCH_CLIENT_ID": ("kafka", "client_id"),
    "RANKWATCH_SECURITY_PROTOCOL": ("kafka", "security_protocol"),
    "RANKWATCH_SASL_MECHANISM": ("kafka", "sasl_mechanism"),
    "RANKWATCH_SASL_USERNAME": ("kafka", "sasl_username"),
    "RANKWATCH_SASL_PASSWORD": ("kafka", "sasl_password"),
    "RANKWATCH_SSL_CAFILE": ("kafka", "ssl_cafile"),
    "RANKWATCH_SSL_CERTFILE": ("kafka", "ssl_certfile"),
    "RANKWATCH_SSL_KEYFILE": ("kafka", "ssl_keyfile"),
    "RANKWATCH_REPORT_EXCEPTIONS": ("producer", "report_exceptions"),
    "RANKWATCH_REPORT_SIGNALS": ("producer", "report_signals"),
    "RANKWATCH_REPORT_STUCK": ("producer", "report_stuck"),
    "RANKWATCH_REPORT_END": ("producer", "report_end"),
    "RANKWATCH_STUCK_AFTER_S": ("producer", "stuck_after_s"),
    "RANKWATCH_STUCK_FACTOR": ("producer", "stuck_factor"),
    "RANKWATCH_FLUSH_ON_SIGNAL_S": ("producer", "flush_on_signal_s"),
}
# An environment variable is text: these keys are read as a number or a boolean. Text that is
# neither stays text, and the strict model's error names the variable.
_NUMBER_KEYS = frozenset({"stuck_after_s", "stuck_factor", "flush_on_signal_s"})
_BOOL_KEYS = frozenset({"report_exceptions", "report_signals", "report_stuck", "report_end"})
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True}
_BOOL_WORDS.update({"0": False, "false": False, "no": False, "off": False})
_PATH_KEYS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


def find_config_file(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path | None:
    """The config file to read, or None. An explicitly named file that is missing is an error."""
    env = os.environ if env is None else env
    if config_file is not None:
        path, origin = Path(config_file), "--config"
    elif env.get(CONFIG_ENV):
        path, origin = Path(env[CONFIG_ENV]), CONFIG_ENV
    else:
        default = (cwd or Path.cwd()) / DEFAULT_FILE_NAME
        return default if default.is_file() else None
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (named by {origin})")
    return path


def load_settings(
    config_file: str | Path | None = None,
    *,
    bootstrap: str | None = None,
    producer: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build the settings; ``bootstrap`` (the ``--bootstrap`` flag) and ``producer`` (keys of
    ``[producer]`` given to ``rw.configure(...)``) override everything."""
    env = os.environ if env is None else env
    # Which source set each dotted key, so an error can point at the file or the env var.
    sources: dict[str, str] = {}
    data: dict[str, Any] = {}
    path = find_config_file(config_file, env=env, cwd=cwd)
    if path is not None:
        data = _read_toml(path)
        # [sinks] belongs to rankwatch.sinks.config, which validates it as strictly.
        data.pop("sinks", None)
        _resolve_paths(data, path.parent)
        for key in _dotted_keys(data):
            sources[key] = str(path)
    for name, (section, key) in ENV_VARS.items():
        value = env.get(name, "")
        if value:  # an empty variable counts as unset, as in most shells' idiom VAR= cmd
            _section(data, section, name)[key] = _env_value(key, value)
            sources[f"{section}.{key}"] = f"environment variable {name}"
    if bootstrap is not None:
        _section(data, "kafka", "--bootstrap")["bootstrap"] = bootstrap
        sources["kafka.bootstrap"] = "--bootstrap"
    for key, value in (producer or {}).items():
        _section(data, "producer", "configure()")[key] = value
        sources[f"producer.{key}"] = f"configure({key}=...)"
    try:
        # Merge over the defaults so a file can set one key of a topic and keep the rest.
        return Settings.model_validate(_merged(_fields_tree(Settings()), data))
    except ValidationError as exc:
        fallback = str(path) if path is not None else "settings"
        raise ConfigError(_describe(exc, sources, fallback)) from None


def with_producer(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """``settings`` with keys of ``[producer]`` replaced, validated as strictly as the file's
    (a :class:`ConfigError` names the ``configure(KEY=...)`` argument).

    >>> with_producer(Settings(), {"stuck_after_s": 5}).producer.stuck_after_s
    5.0
    >>> try:
    ...     with_producer(Settings(), {"stuck_after_s": -1})
    ... except ConfigError as error:
    ...     print(error)
    configure(stuck_after_s=...): producer.stuck_after_s: must be > 0.0, got integer -1
    """
    if not overrides:
        return settings
    data = {**_fields_tree(settings.producer), **overrides}
    try:
        producer = ProducerSettings.model_validate(data)
    except ValidationError as exc:
        sources = {f"producer.{key}": f"configure({key}=...)" for key in overrides}
        raise ConfigError(_describe(exc, sources, "configure()", prefix=("producer",))) from None
    return settings.model_copy(update={"producer": producer})


def _env_value(key: str, value: str) -> Any:
    if key in _NUMBER_KEYS:
        try:
            return float(value)
        except ValueError:
            return value
    if key in _BOOL_KEYS:
        return _BOOL_WORDS.get(value.strip().lower(), value)
    return value


def _fields_tree(model: BaseModel) -> dict[str, Any]:
    """A model as nested dicts of its field values (SecretStr stays SecretStr, not dumped)."""
    tree: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        tree[name] = _fields_tree(value) if isinstance(value, BaseModel) else value
    return tree


def _merged(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = value
    return result


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None


def _section(data: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    table = data.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: cannot apply: [{section}] in the config file is not a table")
    return table


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    kafka = data.get("kafka")
    if not isinstance(kafka, dict):
        return
    for key in _PATH_KEYS:
        value = kafka.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            kafka[key] = str(base / value)
        elif isinstance(value, str):
            kafka[key] = str(Path(value).expanduser())


def _dotted_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping):
            keys.extend(_dotted_keys(value, dotted + "."))
    return keys


def _source_of(key: str, sources: Mapping[str, str], fallback: str) -> str:
    # A whole-section error (from a model validator) may mix sources: name all of them.
    found = sorted({src for k, src in sources.items() if k == key or k.startswith(key + ".")})
    return ", ".join(found) if found else fallback


def _describe(
    exc: ValidationError, sources: Mapping[str, str], fallback: str, prefix: Loc = ()
) -> str:
    """One line per problem, ``SOURCE: KEY: PROBLEM`` (the wording is schemas.validation's)."""
    return "\n".join(
        f"{_source_of(dotted(problem.loc), sources, fallback)}: {problem}"
        for problem in field_errors(exc, CONFIG_STYLE, prefix=prefix, suggest=_keys)
    )


_MODELS: dict[str, type[BaseModel]] = {
    "": Settings,
    "kafka": KafkaSettings,
    "topics": TopicsSettings,
    "producer": ProducerSettings,
}


def _keys(parent: Loc) -> list[str]:
    """The keys the table at ``parent`` may have: near misses of them get a suggestion."""
    dotted_parent = dotted(parent)
    model = _MODELS.get(
        dotted_parent, TopicSettings if dotted_parent.startswith("topics.") else None
    )
    return list(model.model_fields) if model is not None else []
