"""Errors of the stream-processing package."""

from rankwatch.schemas.rankwatch_error import RankwatchError


class StreamsError(RankwatchError):
    """Root of every error raised by :mod:`rankwatch.streams`."""


class DetectorConfigError(StreamsError, ValueError):
    """A detector threshold or option that cannot work; the message names it."""
