"""One classification per log record, shared by the detectors that read failures.

The log rules (a rank's crash, OOM, NCCL) and the job's end (who failed first) both need to
know what a record is. Classifying costs a keyword scan of the record, and a regular
expression or a traceback parse when it is a failure; the second detector to ask about the
same record gets the first one's answer from a one-entry cache (the engine hands every log
detector the same event object, one after another).
"""

from __future__ import annotations

from rankwatch.schemas import LogEvent
from rankwatch.streams.detectors.failures import Failure, classify_failure
from rankwatch.streams.detectors.log_patterns import LogMatch, classify

_MAX_LINE = 400

# The last record classified, kept alive so its id cannot be reused by another object.
_last: tuple[LogEvent | None, int, LogMatch | None, Failure | None] = (None, 0, None, None)


def classified(
    event: LogEvent, max_line: int = _MAX_LINE
) -> tuple[LogMatch | None, Failure | None]:
    """The log rule a record triggers (:func:`log_patterns.classify`) and the failure it
    shows (:func:`failures.classify_failure`); both ``None`` for a benign record."""
    global _last
    last, width, match, failure = _last
    if last is event and width == max_line:
        return match, failure
    message, level = event.message, event.level
    low = message.lower()  # once for both
    match = classify(message, level, max_line=max_line, low=low)
    failure = classify_failure(message, level, max_line=max_line, low=low)
    _last = (event, max_line, match, failure)
    return match, failure
