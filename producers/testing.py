"""Test your instrumentation without Kafka, like structlog's ``capture_logs``.

:func:`capture_events` swaps the process-wide producer for one that validates every event
with the contract's models (scrubbing included) synchronously and keeps it in a list: what
Kafka would have received, as :class:`~rankwatch.schemas.StepEvent` and
:class:`~rankwatch.schemas.LogEvent` objects.

>>> from rankwatch import producers
>>> with capture_events(job_id="test", rank=1) as events:
...     producers.log_step(10, loss=2.5, learning_rate=1e-4)
...     producers.log_step(-1, loss=1.0)  # invalid: counted, not raised, not captured
>>> [(e.kind, e.job_id, e.rank, e.step, e.loss) for e in events]
[('step', 'test', 1, 10, 2.5)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rankwatch.producers import _global
from rankwatch.producers._enrich import Enricher, EventDict
from rankwatch.producers._identity import Identity
from rankwatch.producers._producer import ProducerStats, RankwatchProducer
from rankwatch.schemas import LogEvent, StepEvent


class CapturingProducer(RankwatchProducer):
    """A producer that keeps events in :attr:`events` instead of sending them."""

    def __init__(
        self,
        identity: Identity,
        *,
        enrichers: Iterable[Enricher] = (),
        scrub_patterns: Iterable[str] = (),
    ) -> None:
        from rankwatch.config import Settings

        super().__init__(
            identity,
            settings=Settings(),
            enrichers=enrichers,
            scrub_patterns=scrub_patterns,
            start=False,
        )
        self.events: list[StepEvent | LogEvent] = []

    def _put(self, event: EventDict) -> None:
        model = self._preparer.model(event)
        if model is not None:
            self.events.append(model)

    def stats(self) -> ProducerStats:
        base = super().stats()
        return ProducerStats(
            sent=len(self.events), buffered=0, dropped=base.dropped, errors=base.errors
        )


@contextmanager
def capture_events(
    job_id: str = "test-job",
    rank: int = 0,
    world_size: int | None = None,
    host: str | None = "test-host",
    *,
    enrichers: Iterable[Enricher] = (),
    scrub_patterns: Iterable[str] = (),
) -> Iterator[list[StepEvent | LogEvent]]:
    """Capture every event sent through the process-wide producer inside the block.

    The previous producer (if any) is put back afterwards, untouched.
    """
    producer = CapturingProducer(
        Identity(job_id, rank, world_size, host), enrichers=enrichers, scrub_patterns=scrub_patterns
    )
    previous = _global.install(producer)
    try:
        yield producer.events
    finally:
        _global.install(previous)
