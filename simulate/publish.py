"""Send a simulated job's events the way its ranks would: through the real producer, or to a
JSON-lines file; as fast as possible, or paced against the wall clock.

The simulator is one process standing in for N trainer processes. Each simulated rank speaks
through its own :class:`~rankwatch.producers.RankwatchProducer`, with its own identity, exactly
as a trainer's rank does (``log_step`` and ``log``: the background thread, validation,
scrubbing, the bounded buffer, librdkafka). That costs a background thread and a librdkafka
instance (about four threads, ~1 ms of CPU a second when idle) per rank, so it is bounded at
:data:`MAX_PRODUCERS` ranks; larger jobs go to a file.

Unlike a trainer, the simulator must not lose events to the producer's bound when it runs
faster than Kafka takes them, and its ranks must not drift apart: in a synchronous job no rank
gets a step ahead of the others (they meet at every all-reduce), but N independent producers
fed as fast as possible would deliver some ranks seconds behind the rest, which in a job's
event time looks like silent ranks. So, running ahead of real time, :func:`publish` waits
for delivery (:meth:`RankProducers.sync`) each time event time has moved on by ``max_skew_s``
(2 s): ranks then arrive at most that far apart, as producers of a live job do, far under the
liveness rules' 30 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from rankwatch.schemas import STEP_METRICS, LogEvent, StepEvent, encode

if TYPE_CHECKING:
    from rankwatch.config import Settings
    from rankwatch.producers import RankwatchProducer

SimEvent = StepEvent | LogEvent
#: The most ranks sent through one producer each (see the module docstring).
MAX_PRODUCERS = 512


class Destination(Protocol):
    def send(self, event: SimEvent) -> None: ...

    def sync(self) -> None:
        """Wait until everything sent so far is delivered."""
        ...

    def close(self) -> int:
        """Flush; return the number of events not delivered."""
        ...


class FileDestination:
    """JSON lines, one event per line (``-``: stdout), encoded by the contract's codec."""

    def __init__(self, path: Path) -> None:
        import sys

        self._stream: IO[bytes] = sys.stdout.buffer if str(path) == "-" else path.open("wb")
        self._stdout = str(path) == "-"

    def send(self, event: SimEvent) -> None:
        self._stream.write(encode(event) + b"\n")

    def sync(self) -> None:
        return None

    def close(self) -> int:
        self._stream.flush()
        if not self._stdout:
            self._stream.close()
        return 0


class RankProducers:
    """One real producer per simulated rank (of a job of ``world_size`` ranks), created at the
    rank's first event.

    ``max_buffered`` bounds what each producer holds: far above one step's events, so
    between :meth:`sync` calls nothing is ever dropped.
    """

    def __init__(
        self, settings: Settings, world_size: int | None = None, *, max_buffered: int = 100_000
    ) -> None:
        self._settings = settings
        self._world_size = world_size
        self._producers: dict[int, RankwatchProducer] = {}
        self._max_buffered = max_buffered

    def _producer(self, event: SimEvent) -> RankwatchProducer:
        producer = self._producers.get(event.rank)
        if producer is None:
            from rankwatch.producers import Identity, RankwatchProducer

            if len(self._producers) >= MAX_PRODUCERS:
                raise ValueError(
                    f"more than {MAX_PRODUCERS} ranks through Kafka: the simulator runs one "
                    "real producer per rank; write larger jobs to a file (--output)"
                )
            # A rank's first event may be a log record, which has no world size: it is the job's.
            identity = Identity(event.job_id, event.rank, self._world_size, event.host)
            # No enrichers: the simulated memory figures are the event's own, not this GPU's.
            producer = RankwatchProducer(
                identity, settings=self._settings, enrichers=[], max_buffered=self._max_buffered
            )
            self._producers[event.rank] = producer
        return producer

    def send(self, event: SimEvent) -> None:
        producer = self._producer(event)
        # timestamp= overrides the producer's clock: the simulated time is the event time.
        if isinstance(event, StepEvent):
            metrics = {name: getattr(event, name) for name in STEP_METRICS}
            producer.log_step(
                event.step,
                timestamp=event.epoch,
                **{name: value for name, value in metrics.items() if value is not None},
            )
        else:
            producer.log(
                event.level, event.message, logger=event.logger, step=event.step,
                timestamp=event.epoch,
            )  # fmt: skip

    def sync(self) -> None:
        for producer in self._producers.values():
            while producer.flush(10.0):  # the broker is away: wait, dropping nothing
                pass

    def close(self, timeout: float = 30.0) -> int:
        """Flush every producer (side by side), then close them; return events not delivered."""
        deadline = time.monotonic() + timeout
        for producer in self._producers.values():
            producer.flush(max(0.0, deadline - time.monotonic()))
        for producer in self._producers.values():
            producer.close(max(0.1, deadline - time.monotonic()))
        return sum(p.stats().dropped + p.stats().errors for p in self._producers.values())

    @property
    def ranks(self) -> int:
        return len(self._producers)


def paced(
    events: Iterable[SimEvent],
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[SimEvent]:
    """Yield each event no earlier than its own timestamp on ``clock`` (real time).

    >>> from rankwatch.simulate import JobSpec, simulate
    >>> now = [1_767_225_600.0]
    >>> events = paced(simulate(JobSpec(ranks=1, steps=2)), clock=lambda: now[0],
    ...                sleep=lambda s: now.__setitem__(0, now[0] + s))
    >>> last = list(events)[-1]
    >>> now[0] == last.epoch
    True
    """
    for event in events:
        delay = event.epoch - clock()
        if delay > 0:
            sleep(delay)
        yield event


@dataclass(slots=True)
class Sent:
    """What :func:`publish` sent."""

    steps: int = 0
    logs: int = 0
    last_step: int = -1
    undelivered: int = 0


def publish(
    events: Iterable[SimEvent],
    destination: Destination,
    *,
    realtime: bool = False,
    progress: Callable[[int], None] | None = None,
    max_skew_s: float = 2.0,
) -> Sent:
    """Send ``events`` (paced when ``realtime``), close the destination, count what went.

    ``progress(step)`` is called each time a new highest step starts arriving. Ahead of real
    time, it waits for delivery every ``max_skew_s`` of event time (see the module docstring).
    """
    sent = Sent()
    synced = float("-inf")
    try:
        for event in paced(events) if realtime else events:
            if isinstance(event, StepEvent) and event.step > sent.last_step:
                if not realtime and event.epoch - synced >= max_skew_s:
                    destination.sync()
                    synced = event.epoch
                sent.last_step = event.step
                if progress is not None:
                    progress(event.step)
            destination.send(event)
            if isinstance(event, StepEvent):
                sent.steps += 1
            else:
                sent.logs += 1
    finally:
        sent.undelivered = destination.close()
    return sent
