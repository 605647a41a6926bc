"""Turn an existing text log of a trainer into events: ``rankwatch ship`` without Kafka.

:class:`LogParser` is fed lines in file order and returns the events they complete: one
:class:`~rankwatch.schemas.LogEvent` per record (a multi-line traceback is one record, also
when several ranks' prefixed lines interleave), and a :class:`~rankwatch.schemas.StepEvent` per
metric line (Hugging Face Trainer dicts, Megatron-LM iteration lines, JSON step lines).

>>> parser = LogParser("job-1", rank=0, start_time=0.0)
>>> events = [e for line in [
...     "[rank1]:Traceback (most recent call last):",
...     "[rank0]:{'loss': 2.1, 'grad_norm': 0.5, 'learning_rate': 1e-05, 'epoch': 0.1}",
...     '[rank1]:  File "train.py", line 9, in <module>',
...     "[rank1]:torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.20 GiB",
... ] for e in parser.feed(line)] + parser.flush()
>>> [(e.kind, e.rank, getattr(e, "level", None)) for e in events]
[('step', 0, None), ('log', 1, 'ERROR')]
>>> events[1].message.count("\\n")
2
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from pydantic import ValidationError

from rankwatch.producers._scrub import Scrubber
from rankwatch.producers._ship_lines import (
    CHAINING,
    TRACEBACK,
    is_header,
    is_native_log,
    level_of,
    rank_in_text,
    split_prefix,
    step_in_text,
    timestamp_of,
)
from rankwatch.producers._ship_metrics import parse_hf, parse_json, parse_megatron, tqdm_position
from rankwatch.schemas import EventDecodeError, LogEvent, StepEvent, decode_object

ShipEvent = StepEvent | LogEvent
_MAX_TAIL_LINES = 60  # unindented lines kept after an exception line (multi-line messages)


@dataclass
class _Record:
    prefix_rank: int | None
    lines: list[str] = field(default_factory=list)
    in_traceback: bool = False
    exception_seen: bool = False
    tail: int = 0
    # Decided when the record opens, so event time follows file order whatever closes it.
    timestamp: datetime | None = None
    step: int | None = None


class LogParser:
    """Groups lines into records and turns them into events. Not thread-safe.

    ``rank`` is used for lines that name none; ``naive_tz`` reads timestamps without a zone
    (None: this machine's zone). Lines without a timestamp get a synthetic one: 1 ms after the
    previous event, starting at ``start_time`` (default: now), or the wall clock when ``live``
    (``--follow``), so event time never goes backwards.
    """

    def __init__(
        self,
        job_id: str,
        rank: int = 0,
        *,
        host: str | None = None,
        world_size: int | None = None,
        naive_tz: tzinfo | None = None,
        start_time: float | None = None,
        live: bool = False,
        scrubber: Scrubber | None = None,
    ) -> None:
        self.job_id, self.rank, self.host, self.world_size = job_id, rank, host, world_size
        self.naive_tz = naive_tz
        self.live = live
        self._clock = time.time() if start_time is None else start_time
        self._scrub = scrubber or Scrubber()
        self._open: dict[int | None, _Record] = {}
        self._last_step: dict[int, int] = {}
        self._metric_lines: dict[int, int] = {}
        self._tqdm_step: dict[int, int] = {}
        self.records = 0

    # ----- feeding ---------------------------------------------------------------------------

    def feed(self, line: str) -> list[ShipEvent]:
        """One line (with or without its newline); returns the events it completes."""
        line = line.rstrip("\r\n")
        if "\r" in line:  # progress bars redraw with \r: keep the last non-empty frame
            line = next((p for p in reversed(line.split("\r")) if p.strip()), "")
        prefix_rank, text = split_prefix(line)
        out: list[ShipEvent] = []
        record = self._open.get(prefix_rank)
        if not text.strip() and prefix_rank is not None:
            # A bare `[0]:` inside torchrun's failure summary belongs to that summary.
            summary = self._open.get(None)
            if summary is not None and summary.in_traceback:
                summary.lines.append(line)
                return out
        if not text.strip():
            if record is not None and not record.in_traceback:
                out += self._close(prefix_rank)
            return out
        rank = prefix_rank if prefix_rank is not None else self.rank
        position = tqdm_position(text)
        if position is not None:
            self._tqdm_step[rank] = position
        step_event = self._metric(text, rank)
        if step_event is not None:
            out += self._close(prefix_rank)
            out.append(step_event)
            return out
        if record is not None and self._continues(record, text):
            record.lines.append(text)
            return out
        out += self._close(prefix_rank)
        record = _Record(prefix_rank, [text])
        record.in_traceback = text.startswith(TRACEBACK)
        record.timestamp = self._time(timestamp_of(text, self.naive_tz))
        step = step_in_text(text)
        record.step = step if step is not None else self._last_step.get(rank)
        self._open[prefix_rank] = record
        return out

    def flush(self) -> list[ShipEvent]:
        """Close every open record (end of file, or the file went quiet while following)."""
        out: list[ShipEvent] = []
        for key in list(self._open):
            out += self._close(key)
        return out

    def parse(self, lines: Iterable[str]) -> Iterator[ShipEvent]:
        """Every event of ``lines``, the open records flushed at the end."""
        for line in lines:
            yield from self.feed(line)
        yield from self.flush()

    # ----- grouping --------------------------------------------------------------------------

    @staticmethod
    def _continues(record: _Record, text: str) -> bool:
        if text[:1].isspace():
            return True
        if text.startswith(TRACEBACK):
            if record.in_traceback:  # the next exception of a chain
                record.exception_seen = False
                return True
            # `logger.exception(...)`: a Python logging line, then its traceback. (A c10/glog
            # line such as `[E ProcessGroupNCCL.cpp:616]` before a traceback is another record.)
            head = record.lines[0]
            if (
                len(record.lines) == 1
                and not is_native_log(head)
                and level_of(head, head) in ("ERROR", "CRITICAL", "WARNING")
            ):
                record.in_traceback = True
                return True
            return False
        if not record.in_traceback:
            return False
        if text in CHAINING:
            record.exception_seen = False
            return True
        if not record.exception_seen:
            record.exception_seen = True  # the `SomeError: message` line ends the frames
            return True
        # After the exception line: more lines of its message, until something looks new.
        if is_header(text) or record.tail >= _MAX_TAIL_LINES:
            return False
        record.tail += 1
        return True

    def _close(self, key: int | None) -> list[ShipEvent]:
        record = self._open.pop(key, None)
        if record is None:
            return []
        self.records += 1
        first = record.lines[0]
        message = "\n".join(record.lines)
        rank = record.prefix_rank
        if rank is None:
            rank = rank_in_text(first)
        if rank is None:
            rank = self.rank
        step = record.step
        fields: dict[str, Any] = {
            "level": level_of(first, message),
            "message": self._scrub(message),
            "timestamp": record.timestamp or self._time(None),
        }
        if step is not None:
            fields["step"] = step
        try:
            return [LogEvent.model_validate({**self._identity(rank), **fields})]
        except ValidationError:  # e.g. a rank named in the text beyond world_size
            return [LogEvent.model_validate({**self._identity(self.rank), **fields})]

    # ----- metric lines ----------------------------------------------------------------------

    def _metric(self, text: str, rank: int) -> StepEvent | None:
        obj = parse_json(text)
        if obj is not None:
            try:
                event = decode_object(
                    {"kind": "step", **obj},
                    defaults={**self._identity(rank), "timestamp": self._time(None)},
                )
            except EventDecodeError:
                return None
            if isinstance(event, StepEvent):
                self._last_step[event.rank] = event.step
                return event
            return None
        parsed = parse_megatron(text) or parse_hf(text)
        if parsed is None:
            return None
        step, fields = parsed
        if step is None:
            step = self._tqdm_step.get(rank)
        if step is None:  # no step printed anywhere: number the metric lines
            step = self._metric_lines.get(rank, 0) + 1
        self._metric_lines[rank] = self._metric_lines.get(rank, 0) + 1
        identity = self._identity(rank)
        if self.world_size is not None:
            identity["world_size"] = self.world_size
        when = self._time(timestamp_of(text, self.naive_tz))
        try:
            event = StepEvent.model_validate(
                {**identity, **fields, "step": step, "timestamp": when}
            )
        except ValidationError:
            return None  # out-of-contract values: the line stays a log record
        self._last_step[rank] = step
        return event

    # ----- helpers ---------------------------------------------------------------------------

    def _identity(self, rank: int) -> dict[str, Any]:
        identity: dict[str, Any] = {"job_id": self.job_id, "rank": rank}
        if self.host is not None:
            identity["host"] = self.host
        return identity

    def _time(self, parsed: datetime | None) -> datetime:
        if parsed is not None:
            # A real timestamp resets the clock: records without one that follow it are
            # placed just after it, in file order.
            self._clock = parsed.timestamp()
            return parsed
        self._clock = max(time.time(), self._clock) if self.live else self._clock + 0.001
        return datetime.fromtimestamp(self._clock, UTC)
