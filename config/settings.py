"""The settings model: what Kafka to talk to, how to authenticate, and which topics to use.

The models are strict (no coercion of ``"3"`` to ``3``, unknown keys rejected) and frozen. They
know nothing about where values came from; :mod:`rankwatch.config.loader` does that and turns
validation errors into messages that name the file or environment variable.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# Kafka's own rule for topic names (kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_DAY_MS = 24 * 60 * 60 * 1000


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _split_bootstrap(value: Any) -> Any:
    """Accept ``"h1:9092,h2:9092"`` or ``["h1:9092", "h2:9092"]``; anything else fails later."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    raise ValueError(f'expected a "host:port,..." string or an array of them, got {value!r}')


def _check_host_port(server: str) -> str:
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{server!r} is not host:port")
    return server


class KafkaSettings(_Strict):
    """Connection to the cluster. Field names match the ``RANKWATCH_*`` env vars that set them."""

    bootstrap: tuple[str, ...] = ("127.0.0.1:9092",)
    client_id: str = "rankwatch"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    # SecretStr keeps the password out of repr(), str() and any log line that formats settings.
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @field_validator("bootstrap", mode="before")
    @classmethod
    def _bootstrap_list(cls, value: Any) -> Any:
        return _split_bootstrap(value)

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one host:port")
        return tuple(_check_host_port(server) for server in value)

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        # librdkafka and the Kafka docs are case-insensitive here; so are we.
        return value.upper() if isinstance(value, str) else value

    @field_validator("sasl_password", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        return SecretStr(value) if isinstance(value, str) else value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @model_validator(mode="after")
    def _consistent_security(self) -> KafkaSettings:
        protocol = self.security_protocol
        sasl = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_username": self.sasl_username,
            "sasl_password": self.sasl_password,
        }
        if protocol.startswith("SASL_"):
            missing = [key for key, value in sasl.items() if value is None]
            if missing:
                raise ValueError(f"security_protocol {protocol} needs {', '.join(missing)}")
        else:
            extra = [key for key, value in sasl.items() if value is not None]
            if extra:
                raise ValueError(
                    f"{', '.join(extra)} set but security_protocol is {protocol} "
                    "(use SASL_PLAINTEXT or SASL_SSL)"
                )
        if not protocol.endswith("SSL"):
            extra = [
                key
                for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
                if getattr(self, key) is not None
            ]
            if extra:
                raise ValueError(
                    f"{', '.join(extra)} set but security_protocol is {protocol} "
                    "(use SSL or SASL_SSL)"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: set both or neither")
        return self

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol.endswith("SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context for aiokafka/faust, or None when the protocol has no TLS."""
        if not self.uses_ssl:
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile is not None:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context


class TopicSettings(_Strict):
    """One topic: its name and what ``rankwatch topics create`` creates it with."""

    name: str
    partitions: int = Field(default=12, ge=1)
    # -1 means the broker's default.replication.factor (KIP-464): 1 on the single local node,
    # 3 in the local 3-node cluster, whatever the operator chose on a real one.
    replication_factor: int = Field(default=-1, ge=-1)
    # -1 keeps messages forever, as Kafka's retention.ms does.
    retention_ms: int = Field(default=7 * _DAY_MS, ge=-1)

    @field_validator("name")
    @classmethod
    def _legal_name(cls, value: str) -> str:
        if not _TOPIC_NAME.match(value) or value in (".", ".."):
            raise ValueError(f"{value!r} is not a legal Kafka topic name ([A-Za-z0-9._-], 1-249)")
        return value

    @field_validator("replication_factor")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be >= 1, or -1 for the broker's default")
        return value

    @field_validator("retention_ms")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be > 0, or -1 to keep messages forever")
        return value


class TopicsSettings(_Strict):
    """The four topics of the wire contract, by role."""

    steps: TopicSettings = TopicSettings(name="rankwatch.steps")
    logs: TopicSettings = TopicSettings(name="rankwatch.logs")
    alerts: TopicSettings = TopicSettings(
        name="rankwatch.alerts", partitions=3, retention_ms=30 * _DAY_MS
    )
    deadletter: TopicSettings = TopicSettings(name="rankwatch.deadletter", partitions=3)

    @model_validator(mode="after")
    def _distinct(self) -> TopicsSettings:
        seen: dict[str, str] = {}
        for role, topic in self.by_role().items():
            if topic.name in seen:
                raise ValueError(f"{role} and {seen[topic.name]} both use topic {topic.name!r}")
            seen[topic.name] = role
        return self

    def by_role(self) -> dict[str, TopicSettings]:
        """``{"steps": ..., "logs": ..., "alerts": ..., "deadletter": ...}`` in that order."""
        return {
            "steps": self.steps,
            "logs": self.logs,
            "alerts": self.alerts,
            "deadletter": self.deadletter,
        }


class ProducerSettings(_Strict):
    """What the producer inside a trainer reports about its rank's life by itself.

    Each ``report_*`` switch turns one of them off (``rw.configure(install_hooks=False)`` turns
    off all four). The env var of each key is ``RANKWATCH_`` and the key in capitals.
    """

    #: An uncaught exception (main thread or any other): its traceback, as Python prints it.
    report_exceptions: bool = True
    #: SIGTERM and SIGINT: a record naming the signal, then the signal does what it did before.
    report_signals: bool = True
    #: A step that overruns its typical time by far: the main thread's stack.
    report_stuck: bool = True
    #: A clean end (``shutdown()`` or exit without an uncaught exception or signal).
    report_end: bool = True
    #: A step is stuck after max(stuck_after_s, stuck_factor x its typical time), in seconds.
    stuck_after_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    stuck_factor: float = Field(default=10.0, ge=1, allow_inf_nan=False)
    #: How long a dying process waits for the broker (exception, signal, stuck record): well
    #: under torchrun's grace period between SIGTERM and SIGKILL.
    flush_on_signal_s: float = Field(default=5.0, ge=0, allow_inf_nan=False)


class Settings(_Strict):
    """Everything a rankwatch process needs to reach Kafka. Build it with ``load_settings``."""

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicsSettings = TopicsSettings()
    producer: ProducerSettings = ProducerSettings()

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers as one comma-separated string."""
        return ",".join(self.kafka.bootstrap)

    def confluent_config(self) -> dict[str, str]:
        """librdkafka properties for confluent-kafka's Producer, Consumer and AdminClient.

        The result holds the password in clear (librdkafka needs it): never log it.
        """
        kafka = self.kafka
        config = {
            "bootstrap.servers": self.bootstrap,
            "client.id": kafka.client_id,
            "security.protocol": kafka.security_protocol,
        }
        optional = {
            "sasl.mechanism": kafka.sasl_mechanism,
            "sasl.username": kafka.sasl_username,
            "sasl.password": kafka.sasl_password.get_secret_value()
            if kafka.sasl_password is not None
            else None,
            "ssl.ca.location": kafka.ssl_cafile,
            "ssl.certificate.location": kafka.ssl_certfile,
            "ssl.key.location": kafka.ssl_keyfile,
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        return config

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's AIOKafkaProducer/AIOKafkaConsumer/admin client.

        The result holds the password in clear: never log it.
        """
        kafka = self.kafka
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(kafka.bootstrap),
            "client_id": kafka.client_id,
            "security_protocol": kafka.security_protocol,
        }
        context = kafka.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if kafka.uses_sasl:
            assert kafka.sasl_password is not None  # guaranteed by KafkaSettings' validator
            kwargs["sasl_mechanism"] = kafka.sasl_mechanism
            kwargs["sasl_plain_username"] = kafka.sasl_username
            kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
        return kwargs

    def faust_broker_url(self) -> str:
        """The ``broker=`` argument of ``faust.App``: ``kafka://h1:9092;h2:9092``."""
        return "kafka://" + ";".join(self.kafka.bootstrap)

    def faust_credentials(self) -> CredentialsT | None:
        """The ``broker_credentials=`` argument of ``faust.App`` (imports faust, lazily)."""
        kafka = self.kafka
        if not kafka.uses_ssl and not kafka.uses_sasl:
            return None
        from faust.auth import SASLCredentials, SSLCredentials

        if kafka.uses_sasl:
            assert kafka.sasl_password is not None  # guaranteed by KafkaSettings' validator
            return SASLCredentials(
                username=kafka.sasl_username,
                password=kafka.sasl_password.get_secret_value(),
                ssl_context=kafka.ssl_context(),
                mechanism=kafka.sasl_mechanism,
            )
        return SSLCredentials(kafka.ssl_context())

    def with_bootstrap(self, bootstrap: str) -> Settings:
        """A copy pointing at other bootstrap servers (validated like the file's value)."""
        kafka = KafkaSettings.model_validate({**_fields(self.kafka), "bootstrap": bootstrap})
        return self.model_copy(update={"kafka": kafka})


def _fields(model: BaseModel) -> dict[str, Any]:
    """A model's fields as they are (SecretStr stays SecretStr), for re-validation."""
    return {name: getattr(model, name) for name in type(model).model_fields}
