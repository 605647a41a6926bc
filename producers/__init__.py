"""What runs inside trainers: stream steps and log records to rankwatch, and hear alerts back.

One line in the trainer (identity from torchrun/Slurm variables, Kafka from the config)::

    import rankwatch.producers as rw
    rw.configure(job_id="llama-7b-run3", capture_logs=True)   # or $RANKWATCH_JOB_ID
    ...
    rw.log_step(step, loss=loss.item(), learning_rate=lr, gradient_norm=norm)

The training thread never blocks on the network and never sees an exception from here: events
wait in a bounded buffer while the broker is away (oldest dropped past the bound, counted in
:func:`stats`), and drain when it returns. Importing this package connects to nothing.

:func:`configure` also reports the rank's own life (records with a ``lifecycle``): an uncaught
exception, SIGTERM/SIGINT, a stuck step, a clean end (:mod:`rankwatch.producers._lifecycle`).
"""

from rankwatch.producers._enrich import Enricher, GpuMemory, default_enrichers, static_fields
from rankwatch.producers._global import (
    configure,
    declare_lr_schedule,
    flush,
    log_step,
    phase,
    shutdown,
    stats,
)
from rankwatch.producers._handler import RankwatchLogHandler
from rankwatch.producers._identity import Identity, IdentityError, resolve_identity
from rankwatch.producers._nvml import GpuUtilization
from rankwatch.producers._producer import LR_SCHEDULES, ProducerStats, RankwatchProducer
from rankwatch.producers._scrub import Scrubber, scrub
from rankwatch.producers._subscribe import AlertSubscription, subscribe

__all__ = [
    "LR_SCHEDULES",
    "AlertSubscription",
    "Enricher",
    "GpuMemory",
    "GpuUtilization",
    "Identity",
    "IdentityError",
    "ProducerStats",
    "RankwatchLogHandler",
    "RankwatchProducer",
    "Scrubber",
    "configure",
    "declare_lr_schedule",
    "default_enrichers",
    "flush",
    "log_step",
    "phase",
    "resolve_identity",
    "scrub",
    "shutdown",
    "static_fields",
    "stats",
    "subscribe",
]
