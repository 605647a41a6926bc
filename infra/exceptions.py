"""The exceptions of rankwatch.infra: one root, a few specific kinds."""

from __future__ import annotations

from rankwatch.schemas.rankwatch_error import RankwatchError


class InfraError(RankwatchError):
    """Root of every error raised by rankwatch.infra; the message is meant for a person."""


class KafkaJarsError(InfraError):
    """The Kafka jars could not be assembled (Maven missing or failing, no network...)."""


class BrokerError(InfraError):
    """A local broker could not be formatted, started, reached or stopped."""


class BrokerTimeout(BrokerError):
    """A broker or cluster did not answer within the time allowed."""


class TopicError(InfraError):
    """Topics could not be created or listed."""
