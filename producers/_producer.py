"""The embedded producer: :class:`RankwatchProducer`.

The training thread only builds a small dict and appends it to a bounded deque (about a
microsecond); validation with the contract's pydantic models, secrets scrubbing, JSON encoding
and Kafka all happen on a background thread (:mod:`rankwatch.producers._sender`). Nothing here
raises into the caller after construction: problems are counted in :meth:`stats` and logged once.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import operator
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

from pydantic import ValidationError

from rankwatch.producers._enrich import Enricher, EventDict, default_enrichers
from rankwatch.producers._identity import Identity
from rankwatch.producers._once import LogOnce
from rankwatch.producers._scrub import Scrubber
from rankwatch.producers._sender import Prepared, Sender
from rankwatch.schemas import KNOWN_LR_SCHEDULES, STEP_METRICS, LogEvent, Phase, StepEvent, encode

if TYPE_CHECKING:
    from rankwatch.config import Settings

_now = time.time
_monotonic = time.monotonic
_PHASES: tuple[str, ...] = get_args(Phase)
_NUMERIC_FIELDS = ("step", *STEP_METRICS)
#: The schedule names :meth:`RankwatchProducer.declare_lr_schedule` accepts (Hugging Face's
#: ``lr_scheduler_type`` names; ``other`` for any schedule of the trainer's own).
LR_SCHEDULES: tuple[str, ...] = (*KNOWN_LR_SCHEDULES, "other")


def _steps(argument: str, value: Any, least: int) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        steps = operator.index(value)  # ints and numpy integers, not 10.0 nor "10"
    except TypeError:
        raise ValueError(f"{argument} must be an integer, got {value!r}") from None
    if steps < least:
        raise ValueError(f"{argument} must be >= {least}, got {steps}")
    return steps


def lr_schedule_fields(
    name: str,
    warmup_steps: Any = None,
    total_steps: Any = None,
    *,
    arguments: tuple[str, str, str] = ("name", "warmup_steps", "total_steps"),
) -> dict[str, Any]:
    """The step-event fields declaring an LR schedule, checked: a ValueError names the bad
    argument (as ``arguments`` calls the three).

    >>> lr_schedule_fields("cosine", warmup_steps=100, total_steps=10_000)
    {'lr_schedule': 'cosine', 'lr_warmup_steps': 100, 'lr_total_steps': 10000}
    >>> lr_schedule_fields("cosine", warmup_steps=-1)
    Traceback (most recent call last):
    ...
    ValueError: warmup_steps must be >= 0, got -1
    """
    name_arg, warmup_arg, total_arg = arguments
    if name not in LR_SCHEDULES:
        raise ValueError(f"{name_arg} must be one of {', '.join(LR_SCHEDULES)}, got {name!r}")
    warmup = _steps(warmup_arg, warmup_steps, 0)
    total = _steps(total_arg, total_steps, 1)
    if warmup is not None and total is not None and warmup > total:
        raise ValueError(f"{warmup_arg} ({warmup}) must not exceed {total_arg} ({total})")
    fields: dict[str, Any] = {"lr_schedule": name}
    if warmup is not None:
        fields["lr_warmup_steps"] = warmup
    if total is not None:
        fields["lr_total_steps"] = total
    return fields


@dataclass(frozen=True, slots=True)
class ProducerStats:
    """Counters since the producer started.

    ``sent``: acknowledged by the broker. ``buffered``: waiting, in our buffer or in librdkafka.
    ``dropped``: discarded because the buffer was full, or left undelivered at close.
    ``errors``: events refused (invalid values, delivery failures) and internal failures.
    """

    sent: int
    buffered: int
    dropped: int
    errors: int


def _plain(value: Any) -> Any:
    # Tensors and numpy scalars become Python numbers here, on the background thread: calling
    # .item() on a CUDA tensor synchronises the device, which the training thread must not do.
    item = getattr(value, "item", None)
    return item() if item is not None and not isinstance(value, int | float) else value


class EventPreparer:
    """Turns a raw event dict into a validated, scrubbed event: shared by the Kafka path and
    :func:`rankwatch.producers.testing.capture_events`, so tests see what Kafka would get."""

    def __init__(
        self, identity: Identity, settings: Settings | None, scrubber: Scrubber, once: LogOnce
    ) -> None:
        self.identity = identity
        self._fields = identity.as_fields()
        self._key = identity.job_id.encode()
        self._scrub = scrubber
        self._once = once
        if settings is not None:
            self._steps_topic = settings.topics.steps.name
            self._logs_topic = settings.topics.logs.name
        self.errors = 0

    def model(self, raw: EventDict) -> StepEvent | LogEvent | None:
        try:
            kind = raw.pop("kind")
            fields = {**self._fields, **raw}
            for name in _NUMERIC_FIELDS:
                if name in fields:
                    fields[name] = _plain(fields[name])
            if kind == "step":
                if self.identity.world_size is not None:
                    fields.setdefault("world_size", self.identity.world_size)
                return StepEvent.model_validate(fields)
            fields["message"] = self._scrub(str(fields.get("message", "")))
            return LogEvent.model_validate(fields)
        except ValidationError as error:
            self.errors += 1
            problem = error.errors(include_url=False)[0]
            field = ".".join(str(p) for p in problem["loc"]) or "event"
            self._once.warning(
                f"invalid:{field}",
                "rankwatch: dropped an event with an invalid "
                "%s: %s (got %r); further ones are counted, not logged",
                field,
                problem["msg"],
                problem.get("input"),
            )
        except Exception as error:
            self.errors += 1
            self._once.warning(
                f"prepare:{type(error).__name__}",
                "rankwatch: could not prepare an event: %r",
                error,
            )
        return None

    def prepare(self, raw: EventDict) -> Prepared | None:
        event = self.model(raw)
        if event is None:
            return None
        topic = self._steps_topic if isinstance(event, StepEvent) else self._logs_topic
        return topic, self._key, encode(event)


class RankwatchProducer:
    """Streams one rank's steps and log records to Kafka without ever hurting training.

    Most trainers use :func:`rankwatch.producers.configure` instead of building one directly.
    ``settings`` (a :class:`rankwatch.config.Settings`) says where Kafka is; default: loaded
    from the usual config file and environment. ``start=False`` builds one that buffers but
    sends nothing (for tests of the hot path).

    Memory is bounded by ``max_buffered`` events (of which up to ``max_in_flight``, at most a
    tenth of the bound, are handed to librdkafka); past it the oldest are dropped and counted.

    ``report_end=True`` (what :func:`~rankwatch.producers.configure` passes, unless
    ``settings.producer.report_end`` is off) makes :meth:`close` and the exit hook send one
    ``lifecycle="ended"`` record, unless an uncaught exception or a terminating signal was seen.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        settings: Settings | None = None,
        max_buffered: int = 100_000,
        max_in_flight: int = 10_000,
        enrichers: Iterable[Enricher] | None = None,
        scrub_patterns: Iterable[str] = (),
        kafka_config: Mapping[str, Any] | None = None,
        flush_on_exit_s: float = 5.0,
        start: bool = True,
        report_end: bool = False,
    ) -> None:
        if settings is None:
            from rankwatch.config import load_settings

            settings = load_settings()
        if max_buffered < 1:
            raise ValueError(f"max_buffered must be >= 1, got {max_buffered}")
        self.identity = identity
        self.settings = settings
        # max_buffered bounds everything held: up to a tenth of it may sit inside librdkafka
        # (in flight), the rest in our deque, where dropping the oldest is counted.
        in_flight = max(1, min(max_in_flight, max_buffered // 10))
        self._max_queued = max(1, max_buffered - in_flight)
        self.max_buffered = self._max_queued + in_flight
        self._once = LogOnce()
        self._buffer: collections.deque[EventDict] = collections.deque(maxlen=self._max_queued)
        self._enrichers = list(default_enrichers() if enrichers is None else enrichers)
        self._preparer = EventPreparer(identity, settings, Scrubber(scrub_patterns), self._once)
        self._dropped = 0
        self._errors = 0
        self._closed = False
        # The declared LR schedule's fields, stamped on every step event (None: undeclared).
        self.lr_schedule: dict[str, Any] | None = None
        self.last_step: int | None = None
        #: The phase set by :meth:`phase` (None: training), stamped on every event meanwhile.
        self.current_phase: str | None = None
        # The step clock the stuck watchdog reads (rankwatch.producers._lifecycle): log_step
        # writes the time, then the count; a phase's end moves clock_resets.
        self.step_started: float | None = None
        self.first_step_started: float | None = None
        self.steps_seen = 0
        self.clock_resets = 0
        # What the lifecycle hooks saw: the end is clean only without either.
        self.exception_seen = False
        self.terminated_by: str | None = None
        self._report_end = report_end
        self._end_reported = False
        self._sender: Sender | None = None
        self._flush_on_exit_s = flush_on_exit_s
        if start:
            config = {**settings.confluent_config(), **(kafka_config or {})}
            self._sender = Sender(
                self._buffer,
                self._preparer.prepare,
                config,
                max_in_flight=in_flight,
                once=self._once,
            )
            self._sender.start()
            atexit.register(self._at_exit)

    # ----- the hot path: called on the training thread ---------------------------------------

    def log_step(
        self,
        step: int,
        *,
        loss: float | None = None,
        learning_rate: float | None = None,
        gradient_norm: float | None = None,
        gpu_memory_usage: float | None = None,
        gpu_memory_allocated_mb: float | None = None,
        gpu_memory_reserved_mb: float | None = None,
        throughput_tokens_per_sec: float | None = None,
        step_time_s: float | None = None,
        data_time_s: float | None = None,
        compute_time_s: float | None = None,
        gpu_utilization: float | None = None,
        **extra: Any,
    ) -> None:
        """Record one optimizer step. Values may be floats, numpy scalars or 0-d tensors (read
        on the background thread). Unknown keywords travel as extra fields. Never raises."""
        try:
            event: EventDict = {"kind": "step", "step": step, "timestamp": _now()}
            # One test per metric is cheaper than building a dict of all and filtering it.
            if loss is not None:
                event["loss"] = loss
            if learning_rate is not None:
                event["learning_rate"] = learning_rate
            if gradient_norm is not None:
                event["gradient_norm"] = gradient_norm
            if gpu_memory_usage is not None:
                event["gpu_memory_usage"] = gpu_memory_usage
            if gpu_memory_allocated_mb is not None:
                event["gpu_memory_allocated_mb"] = gpu_memory_allocated_mb
            if gpu_memory_reserved_mb is not None:
                event["gpu_memory_reserved_mb"] = gpu_memory_reserved_mb
            if throughput_tokens_per_sec is not None:
                event["throughput_tokens_per_sec"] = throughput_tokens_per_sec
            if step_time_s is not None:
                event["step_time_s"] = step_time_s
            if data_time_s is not None:
                event["data_time_s"] = data_time_s
            if compute_time_s is not None:
                event["compute_time_s"] = compute_time_s
            if gpu_utilization is not None:
                event["gpu_utilization"] = gpu_utilization
            if self.lr_schedule is not None:
                event.update(self.lr_schedule)
            if extra:
                event.update(extra)
            if self.current_phase is not None:
                event["phase"] = self.current_phase
            if isinstance(step, int):
                self.last_step = step
            started = self.step_started = _monotonic()
            if self.first_step_started is None:
                self.first_step_started = started
            self.steps_seen += 1
            for enrich in self._enrichers:
                event = self._enrich(enrich, event)
            self._put(event)
        except Exception as error:  # principle 5: count it, never raise into training
            self._internal_error("log_step", error)

    def log(
        self,
        level: str,
        message: str,
        *,
        logger: str | None = None,
        step: int | None = None,
        timestamp: float | None = None,
        phase: str | None = None,
        lifecycle: str | None = None,
    ) -> None:
        """Record one log message (a whole record: put a traceback inside it). Never raises.

        ``step`` defaults to the last step given to :meth:`log_step`, ``phase`` to the one
        :meth:`phase` set. ``lifecycle`` is for the records the producer writes about its rank
        (:data:`rankwatch.schemas.events.Lifecycle`)."""
        try:
            event: EventDict = {
                "kind": "log",
                "level": level,
                "message": message,
                "timestamp": _now() if timestamp is None else timestamp,
            }
            if logger is not None:
                event["logger"] = logger
            step = self.last_step if step is None else step
            if step is not None:
                event["step"] = step
            phase = self.current_phase if phase is None else phase
            if phase is not None:
                event["phase"] = phase
            if lifecycle is not None:
                event["lifecycle"] = lifecycle
            for enrich in self._enrichers:
                event = self._enrich(enrich, event)
            self._put(event)
        except Exception as error:
            self._internal_error("log", error)

    def declare_lr_schedule(
        self, name: str, warmup_steps: int | None = None, total_steps: int | None = None
    ) -> None:
        """Declare the LR schedule: every later step event carries ``lr_schedule`` (one of
        :data:`LR_SCHEDULES`), ``lr_warmup_steps`` and ``lr_total_steps`` (where given), what
        the worker checks the observed ``learning_rate`` against. Declaring again replaces it.
        Unlike the hot path this raises: a ValueError naming the bad argument, at setup."""
        self.lr_schedule = lr_schedule_fields(name, warmup_steps, total_steps)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark what the job does meanwhile: ``"eval"`` or ``"checkpoint"``.

        The worker expects no training step then (a long evaluation pass is not a hang) and
        judges no step metric reported meanwhile. A record says where the phase begins and
        ends (one each), so the worker knows even when no step is reported during it::

            with rw.phase("eval"):
                metrics = evaluate(model, val_loader)
        """
        if name not in _PHASES:
            raise ValueError(f"phase must be one of {', '.join(_PHASES)}, got {name!r}")
        outer = self.current_phase
        self.current_phase = name
        self.log("INFO", f"rankwatch: phase {name} begins", logger="rankwatch")
        try:
            yield
        finally:
            self.current_phase = outer
            # The watchdog starts the step in progress afresh: the phase's time is no step's.
            self.step_started = _monotonic()
            self.clock_resets += 1
            self.log(
                "INFO",
                f"rankwatch: phase {name} ends",
                logger="rankwatch",
                phase=outer or "train",
            )

    def lifecycle_record(
        self, lifecycle: str, level: str, message: str, *, step: int | None = None
    ) -> None:
        """Record what happened to this rank (logger ``rankwatch.lifecycle``). Never raises."""
        self.log(level, message, logger="rankwatch.lifecycle", step=step, lifecycle=lifecycle)

    def report_end(self) -> bool:
        """Send the ``ended`` record, once, unless an uncaught exception or a terminating
        signal was seen (or ``report_end`` is off); return whether it was sent."""
        if (
            not self._report_end
            or self._end_reported
            or self._closed
            or self.exception_seen
            or self.terminated_by is not None
        ):
            return False
        self._end_reported = True
        step = self.last_step
        where = f"at step {step}" if step is not None else "before its first step"
        self.lifecycle_record(
            "ended", "INFO", f"rankwatch: rank {self.identity.rank} ended cleanly {where}"
        )
        return True

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: events are dropped (and counted) from then on."""
        return self._closed

    def _enrich(self, enrich: Enricher, event: EventDict) -> EventDict:
        try:
            return enrich(event)
        except Exception as error:
            self._internal_error(f"enricher {getattr(enrich, '__name__', enrich)!r}", error)
            return event

    def _put(self, event: EventDict) -> None:
        buffer = self._buffer
        if self._closed:
            self._dropped += 1
            return
        # Drop the oldest ourselves so every drop is counted exactly, even while the sender
        # pops concurrently (deque's own maxlen stays as a backstop for racing producers).
        if len(buffer) >= self._max_queued:
            try:
                buffer.popleft()
                self._dropped += 1
            except IndexError:  # the sender emptied it meanwhile
                pass
        buffer.append(event)

    def _internal_error(self, where: str, error: Exception) -> None:
        self._errors += 1
        self._once.warning(
            f"internal:{where}:{type(error).__name__}",
            "rankwatch: %s failed (%r); counted, not raised",
            where,
            error,
        )

    # ----- control: called at setup and teardown ---------------------------------------------

    def stats(self) -> ProducerStats:
        """Counters since start (see :class:`ProducerStats`)."""
        sender = self._sender
        in_flight = sender.in_flight if sender is not None else 0
        sent = sender.sent if sender is not None else 0
        send_errors = sender.errors if sender is not None else 0
        lost = sender.lost if sender is not None else 0
        return ProducerStats(
            sent=sent,
            buffered=len(self._buffer) + in_flight,
            dropped=self._dropped + lost,
            errors=self._errors + self._preparer.errors + send_errors,
        )

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` seconds until everything buffered is acknowledged; return the
        number of events still waiting (0: all delivered). Never raises."""
        deadline = time.monotonic() + timeout
        sender = self._sender
        if sender is None or not sender.is_alive():
            return len(self._buffer)
        while not sender.drained() and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self._buffer) + sender.in_flight

    def close(self, timeout: float = 10.0, *, end: bool = True) -> None:
        """Flush for up to ``timeout`` seconds, then stop. Events still waiting are counted as
        dropped; later calls to :meth:`log_step` are dropped and counted too. ``end=False``:
        the rank goes on (another producer takes over), so no ``ended`` record."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        if end:
            self.report_end()
        self.flush(timeout)
        self._closed = True
        sender = self._sender
        if sender is not None:
            # The stopped sender keeps its final counters for stats().
            sender.stop(max(0.0, deadline - time.monotonic()))
            atexit.unregister(self._at_exit)
        self._dropped += len(self._buffer)
        self._buffer.clear()
        for enrich in self._enrichers:
            stop = getattr(enrich, "close", None)  # an enricher's own thread (GpuUtilization)
            if stop is not None:
                with contextlib.suppress(Exception):
                    stop()

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):  # at exit there is no one left to tell
            # Python keeps the uncaught exception it printed in sys.last_value (3.12+ also
            # last_exc): the end was not clean, even where the exception hook was off.
            if getattr(sys, "last_value", None) is not None:
                self.exception_seen = True
            self.close(self._flush_on_exit_s)

    def __enter__(self) -> RankwatchProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
