"""How every rankwatch command finds Kafka and its topics.

One :class:`Settings` object, loaded by :func:`load_settings` from, lowest precedence first:
built-in defaults, a TOML file (``--config FILE``, env ``RANKWATCH_CONFIG``, or ``rankwatch.toml``
in the working directory), ``RANKWATCH_*`` environment variables, and a ``--bootstrap`` flag.
Parsing is strict: an unknown key or a wrong type raises :class:`ConfigError` naming both.
See ``config/rankwatch.example.toml`` for every key.
"""

from rankwatch.config.exceptions import ConfigError
from rankwatch.config.loader import ENV_VARS, find_config_file, load_settings
from rankwatch.config.settings import (
    KafkaSettings,
    SaslMechanism,
    SecurityProtocol,
    Settings,
    TopicSettings,
    TopicsSettings,
)

__all__ = [
    "ENV_VARS",
    "ConfigError",
    "KafkaSettings",
    "SaslMechanism",
    "SecurityProtocol",
    "Settings",
    "TopicSettings",
    "TopicsSettings",
    "find_config_file",
    "load_settings",
]
