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
    Prefix,
    SummaryEntry,
    agent_line,
    is_header,
    is_native_log,
    is_rule,
    level_of,
    nvrm_continues,
    nvrm_text,
    rank_in_text,
    split_prefixes,
    starts_summary,
    step_in_text,
    summary_entries,
    timestamp_of,
)
from rankwatch.producers._ship_metrics import (
    parse_hf,
    parse_json,
    parse_megatron,
    split_progress,
    tqdm_position,
)
from rankwatch.schemas import EventDecodeError, LogEvent, StepEvent, decode_object

ShipEvent = StepEvent | LogEvent
_MAX_TAIL_LINES = 60  # unindented lines kept after an exception line (multi-line messages)
_MAX_SUMMARY_LINES = 20_000  # torchrun's failure summary: ~7 lines per failed rank
# An agent's `Sending process PID closing signal` names a pid, not a rank; the failure summary
# that maps pids to ranks follows it. With --follow such records wait this long for it.
_PENDING_HOLD_S = 10.0
_MAX_PENDING = 4096


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
    summary: bool = False  # torchrun's ChildFailedError summary: kept whole to its last rule
    rules: int = 0
    nvrm_head: str | None = None  # an NVIDIA driver message: its first and last NVRM text
    nvrm_last: str = ""
    nvrm_xid: bool = False


@dataclass
class _Pending:
    """A record waiting for the rank of the pid it names."""

    pid: int
    fields: dict[str, Any]
    since: float


class LogParser:
    """Groups lines into records and turns them into events. Not thread-safe.

    ``rank`` is used for lines that name none; ``naive_tz`` reads timestamps without a zone
    (None: this machine's zone). Lines without a timestamp get a synthetic one: 1 ms after the
    previous event, starting at ``start_time`` (default: now), or the wall clock when ``live``
    (``--follow``), so event time never goes backwards.

    Launcher output: torchrun's failure summary is one record of the root-cause rank; the
    agent's lines go to the worker they name (a local rank, plus ``node_rank *
    nproc_per_node``; a pid, once the summary maps it). ``[defaultN]:`` prefixes are local ranks.
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
        node_rank: int = 0,
        nproc_per_node: int | None = None,
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
        self._offset: int | None = None if nproc_per_node is None else node_rank * nproc_per_node
        self._pids: dict[int, int] = {}  # worker pid -> global rank, from the agent's lines
        self._pending: list[_Pending] = []
        self.records = 0

    # ----- feeding ---------------------------------------------------------------------------

    def feed(self, line: str) -> list[ShipEvent]:
        """One line (with or without its newline); returns the events it completes."""
        raw = line.rstrip("\r\n")
        prefix = split_prefixes(raw, self.world_size)
        if prefix.text.strip():
            kept = self._drop_progress(prefix.text, self._key(prefix))
            if kept is None:  # only progress bars: they tell the step, and are no record
                return []
            # A bar has no newline: the next writer's line (another rank's prefix) is glued
            # to it, as in ` 75%|███████▌  | 6/8 [00:00<00:00, 18.00it/s][rank3]: Traceback`.
            inner = split_prefixes(kept, self.world_size)
            prefix = inner if inner.rank is not None else prefix._replace(text=kept)
        key = self._key(prefix)
        rank = key if key is not None else self.rank
        text = prefix.text
        out: list[ShipEvent] = []
        summary = self._open.get(None)
        if summary is not None and summary.summary and key is None:
            if not is_header(text):
                return self._summary_line(summary, text)
            out += self._close(None)  # a summary cut short: what follows is new
            summary = None
        if not text.strip():
            if key is not None and summary is not None and summary.in_traceback:
                # A bare `[0]:` inside torchrun's failure summary belongs to that summary.
                summary.lines.append(raw)
                return out
            record = self._open.get(key)
            if record is not None and not record.in_traceback:
                out += self._close(key)
            return out
        record = self._open.get(key)
        position = tqdm_position(text)
        if position is not None:
            self._tqdm_step[rank] = position
        step_event = self._metric(text, rank)
        if step_event is not None:
            out += self._close(key)
            out.append(step_event)
            return out
        if record is not None and self._continues(record, text):
            record.lines.append(text)
            if record.in_traceback and starts_summary(text):
                record.summary = True
            return out
        out += self._close(key)
        record = _Record(key, [text])
        record.in_traceback = text.startswith(TRACEBACK)
        if starts_summary(text):  # a summary printed without torchrun's own traceback
            record.in_traceback = record.exception_seen = record.summary = True
        record.nvrm_head = nvrm_text(text)
        if record.nvrm_head is not None:
            record.nvrm_last = record.nvrm_head
            record.nvrm_xid = record.nvrm_head.startswith("Xid (")
        record.timestamp = self._time(timestamp_of(text, self.naive_tz))
        step = step_in_text(text)
        record.step = step if step is not None else self._last_step.get(rank)
        self._open[key] = record
        return out

    def flush(self, final: bool = True) -> list[ShipEvent]:
        """Close every open record (end of file, or the file went quiet while following:
        ``final=False`` keeps agent records that wait for their rank, up to a few seconds)."""
        out: list[ShipEvent] = []
        for key in list(self._open):
            out += self._close(key)
        now = time.monotonic()
        for pending in list(self._pending):
            if final or now - pending.since > _PENDING_HOLD_S:
                self._pending.remove(pending)
                out += self._event(self.rank, pending.fields)
        return out

    def parse(self, lines: Iterable[str]) -> Iterator[ShipEvent]:
        """Every event of ``lines``, the open records flushed at the end."""
        for line in lines:
            yield from self.feed(line)
        yield from self.flush()

    # ----- grouping --------------------------------------------------------------------------

    def _key(self, prefix: Prefix) -> int | None:
        """The global rank a prefix names (the key of that rank's open record)."""
        if prefix.rank is None or not prefix.local:
            return prefix.rank
        return self._global(prefix.rank)

    def _drop_progress(self, text: str, key: int | None) -> str | None:
        """``text`` without its tqdm bars (a bar redraws with \\r: the last frame with text
        is kept); None when nothing but bars is left."""
        kept: str | None = None
        for frame in text.split("\r"):
            bar = split_progress(frame)
            if bar is not None:
                if bar[0] is not None:
                    self._tqdm_step[key if key is not None else self.rank] = bar[0]
                frame = bar[1]
            if frame.strip():
                kept = frame
        return kept

    def _summary_line(self, record: _Record, text: str) -> list[ShipEvent]:
        # The summary is framed by two `=====` rules; its `[N]:` entries, `-----` rules and
        # unindented `Failures:` lines would otherwise each look like something new.
        if not text.strip():
            return []
        record.lines.append(text)
        if is_rule(text):
            record.rules += 1
        if record.rules >= 2 or len(record.lines) >= _MAX_SUMMARY_LINES:
            return self._close(None)
        return []

    @staticmethod
    def _continues(record: _Record, text: str) -> bool:
        if text[:1].isspace():
            following = nvrm_text(text)
            if following is not None and record.nvrm_head is not None:
                record.nvrm_last = following  # dmesg indents the lines of a wrapped message
                record.nvrm_xid = record.nvrm_xid or following.startswith("Xid (")
            return True
        if record.nvrm_head is not None:
            following = nvrm_text(text)
            if following is None or not nvrm_continues(
                record.nvrm_head, record.nvrm_last, following, record.nvrm_xid
            ):
                return False
            record.nvrm_last = following
            record.nvrm_xid = record.nvrm_xid or following.startswith("Xid (")
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
        if starts_summary(text):
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
        step = record.step
        fields: dict[str, Any] = {
            "level": level_of(first, message),
            "message": self._scrub(message),
            "timestamp": record.timestamp or self._time(None),
        }
        if step is not None:
            fields["step"] = step
        rank = record.prefix_rank
        out: list[ShipEvent] = []
        if record.summary:
            # The root cause (first observed failure) is the rank that failed; the others
            # the summary lists were stopped because of it.
            root, entries = summary_entries(message)
            out += self._learn(entries)
            if root is not None:
                rank = root.rank
        elif rank is None and (agent := agent_line(first)) is not None:
            if agent.local_rank is not None:
                rank = self._global(agent.local_rank)
                self._pids[agent.pid] = rank
                out += self._learn([])
            elif agent.pid in self._pids:
                rank = self._pids[agent.pid]
                fields["lifecycle"] = "terminated"
            else:
                if len(self._pending) < _MAX_PENDING:
                    self._pending.append(_Pending(agent.pid, fields, time.monotonic()))
                    return out
        if rank is None:
            rank = rank_in_text(first)
        if rank is None:
            rank = self.rank
        return out + self._event(rank, fields)

    def _learn(self, entries: list[SummaryEntry]) -> list[ShipEvent]:
        """Take the pid -> rank map of a summary; returns the waiting records it resolves."""
        for entry in entries:
            if entry.pid is not None:
                self._pids[entry.pid] = entry.rank
            if self._offset is None and entry.rank != entry.local_rank:
                self._offset = entry.rank - entry.local_rank  # this node's first rank
        out: list[ShipEvent] = []
        for pending in list(self._pending):
            if pending.pid in self._pids:
                self._pending.remove(pending)
                fields = {**pending.fields, "lifecycle": "terminated"}
                out += self._event(self._pids[pending.pid], fields)
        return out

    def _event(self, rank: int, fields: dict[str, Any]) -> list[ShipEvent]:
        try:
            return [LogEvent.model_validate({**self._identity(rank), **fields})]
        except ValidationError:  # e.g. a rank named in the text beyond world_size
            return [LogEvent.model_validate({**self._identity(self.rank), **fields})]

    def _global(self, local_rank: int) -> int:
        return local_rank + (self._offset or 0)

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
