"""The webhook sink: alerts to people, Alertmanager style.

One interface for every integration (:class:`~rankwatch.sinks.notify.base.Notifier`:
``notify(alerts) -> Outcome(retryable, error)``, synchronous, one message per call), one folder
per integration (``webhook/``, ``slack/``, ``dingtalk/``), and one pipeline around them all:

    alerts topic -> route -> one worker per destination:
        group by job (group_wait) -> drop delivered -> rate limit -> retry stage -> HTTP
        -> on final failure: park on the retry topic, redelivered later

Each destination has its own thread and queue, so a dead or slow endpoint delays only itself.
Delivery is deduplicated per destination on ``(alert_id, status)`` in a SQLite file that
survives restarts.
"""
