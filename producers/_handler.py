"""A :class:`logging.Handler` that turns records into LogEvents.

One record is one event: a record's traceback (``logger.exception(...)``) and stack are
appended to its message, so a traceback never arrives as twenty events.
"""

from __future__ import annotations

import logging

from rankwatch.producers import _global
from rankwatch.producers._producer import RankwatchProducer

_OWN_LOGGER = "rankwatch.producers"
_FORMATTER = logging.Formatter()


class RankwatchLogHandler(logging.Handler):
    """Sends records to ``producer``, or to the one :func:`configure` set up (looked up per
    record, so the handler can be installed before ``configure`` runs and works under
    :func:`rankwatch.producers.testing.capture_events`). Never raises into the caller.

    A record's ``step`` attribute (``logger.info("...", extra={"step": 12})``) sets the event's
    step; otherwise it is the last step logged. With a formatter set, the formatted text is sent.

    >>> import logging
    >>> from rankwatch.producers.testing import capture_events
    >>> log = logging.getLogger("train")
    >>> log.addHandler(RankwatchLogHandler())
    >>> with capture_events() as events:
    ...     try:
    ...         1 / 0
    ...     except ZeroDivisionError:
    ...         log.exception("step failed")
    >>> len(events), events[0].level, events[0].message.splitlines()[-1]
    (1, 'ERROR', 'ZeroDivisionError: division by zero')
    """

    def __init__(
        self, producer: RankwatchProducer | None = None, level: int = logging.NOTSET
    ) -> None:
        super().__init__(level)
        self._producer = producer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Our own warnings ("broker unreachable") must not feed back into the producer.
            if record.name.startswith(_OWN_LOGGER):
                return
            producer = self._producer or _global.current()
            if producer is None:
                return
            if self.formatter is not None:
                message = self.format(record)
            else:
                message = record.getMessage()
                # Formatted here, on the caller's thread: the traceback object keeps frames
                # alive, and it is only valid while the exception is being handled.
                if record.exc_info and not record.exc_text:
                    record.exc_text = _FORMATTER.formatException(record.exc_info)
                if record.exc_text:
                    message = f"{message}\n{record.exc_text}"
                if record.stack_info:
                    message = f"{message}\n{record.stack_info}"
            step = getattr(record, "step", None)
            producer.log(
                record.levelname,
                message,
                logger=record.name,
                step=step if isinstance(step, int) else None,
                timestamp=record.created,
            )
        except Exception:  # principle 5: a log call never fails because of rankwatch
            pass
