"""Sinks: alerts to people and to storage, and queries over everything stored.

- :mod:`rankwatch.sinks.storage`: the storage sink (its own consumer group on steps, logs and
  alerts) and the :class:`~rankwatch.sinks.storage.Store` back-ends, SQLite and PostgreSQL, that
  the query commands (``rankwatch logs|alerts|steps|jobs``) read.
- :mod:`rankwatch.sinks.notify`: the webhook sink (generic JSON, Slack, DingTalk) with routing,
  grouping, retries, rate limits, a retry topic and delivery deduplication.
- :mod:`rankwatch.sinks.config`: the ``[sinks]`` tables of the rankwatch TOML file.

Every error raised here derives from :class:`rankwatch.sinks.exceptions.SinkError`.
"""
