"""The process-wide producer that :func:`configure` sets up, and module-level shortcuts."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, get_args

from rankwatch.producers import _lifecycle
from rankwatch.producers._enrich import Enricher
from rankwatch.producers._identity import resolve_identity
from rankwatch.producers._once import logger
from rankwatch.producers._producer import ProducerStats, RankwatchProducer, lr_schedule_fields
from rankwatch.schemas import Phase

if TYPE_CHECKING:
    from rankwatch.config import Settings

_lock = threading.Lock()
_producer: RankwatchProducer | None = None
_warned_unconfigured = False


def current() -> RankwatchProducer | None:
    """The configured producer, or None before :func:`configure`."""
    return _producer


def install(producer: RankwatchProducer | None) -> RankwatchProducer | None:
    """Make ``producer`` the process-wide one; return the previous one (not closed)."""
    global _producer
    with _lock:
        previous, _producer = _producer, producer
    return previous


def configure(
    job_id: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    host: str | None = None,
    *,
    settings: Settings | None = None,
    bootstrap: str | None = None,
    config_file: str | None = None,
    max_buffered: int = 100_000,
    enrichers: Iterable[Enricher] | None = None,
    scrub_patterns: Iterable[str] = (),
    kafka_config: Mapping[str, Any] | None = None,
    capture_logs: bool | int = False,
    flush_on_exit_s: float = 5.0,
    install_hooks: bool = True,
    stuck_after_s: float | None = None,
    stuck_factor: float | None = None,
    flush_on_signal_s: float | None = None,
    report_exceptions: bool | None = None,
    report_signals: bool | None = None,
    report_stuck: bool | None = None,
    report_end: bool | None = None,
    lr_schedule: str | None = None,
    lr_warmup_steps: int | None = None,
    lr_total_steps: int | None = None,
) -> RankwatchProducer:
    """Set up this process's producer: the one line a trainer adds.

    Identity comes from the arguments, else the environment (``$RANKWATCH_JOB_ID``, torchrun's
    ``$RANK``/``$WORLD_SIZE``, Slurm's ``$SLURM_*``); a missing job id raises
    :class:`IdentityError` here, at setup, never later. Kafka settings come from ``settings``,
    else the config file and ``RANKWATCH_*`` variables (``bootstrap`` overrides the servers).
    ``capture_logs=True`` (or a level) also attaches a :class:`RankwatchLogHandler` to the root
    logger. Calling it again replaces (and closes) the previous producer. At exit, buffered
    events get up to ``flush_on_exit_s`` seconds to reach the broker.

    The producer also reports its rank's life by itself (records with a ``lifecycle``): an
    uncaught exception, SIGTERM/SIGINT, a stuck step, a clean end. The keys of the config's
    ``[producer]`` section (``stuck_after_s=``, ``report_signals=``...) override the file and
    ``RANKWATCH_*`` variables here; ``install_hooks=False`` turns all four reports off. The
    hooks are installed once per process; :func:`shutdown` puts back the previous ones.

    ``lr_schedule`` (with ``lr_warmup_steps``, ``lr_total_steps``) declares the LR schedule, as
    :meth:`~RankwatchProducer.declare_lr_schedule` does; a bad one raises ValueError here.
    """
    identity = resolve_identity(job_id, rank, world_size, host)
    schedule = None
    if lr_schedule is not None:
        schedule = lr_schedule_fields(
            lr_schedule,
            lr_warmup_steps,
            lr_total_steps,
            arguments=("lr_schedule", "lr_warmup_steps", "lr_total_steps"),
        )
    elif lr_warmup_steps is not None or lr_total_steps is not None:
        raise ValueError("lr_warmup_steps and lr_total_steps need lr_schedule")
    given = {
        "stuck_after_s": stuck_after_s,
        "stuck_factor": stuck_factor,
        "flush_on_signal_s": flush_on_signal_s,
        "report_exceptions": report_exceptions,
        "report_signals": report_signals,
        "report_stuck": report_stuck,
        "report_end": report_end,
    }
    overrides = {key: value for key, value in given.items() if value is not None}
    if settings is None:
        from rankwatch.config import load_settings

        settings = load_settings(config_file, bootstrap=bootstrap, producer=overrides)
    else:
        from rankwatch.config.loader import with_producer

        settings = with_producer(settings, overrides)
        if bootstrap is not None:
            settings = settings.with_bootstrap(bootstrap)
    producer = RankwatchProducer(
        identity,
        settings=settings,
        max_buffered=max_buffered,
        enrichers=enrichers,
        scrub_patterns=scrub_patterns,
        kafka_config=kafka_config,
        flush_on_exit_s=flush_on_exit_s,
        report_end=install_hooks and settings.producer.report_end,
    )
    producer.lr_schedule = schedule
    previous = install(producer)
    if previous is not None:
        previous.close(flush_on_exit_s, end=False)  # the rank goes on, with the new one
    _lifecycle.install(current, settings.producer, enabled=install_hooks)
    if capture_logs is not False:
        from rankwatch.producers._handler import RankwatchLogHandler

        root = logging.getLogger()
        if not any(isinstance(h, RankwatchLogHandler) for h in root.handlers):
            level = logging.INFO if capture_logs is True else int(capture_logs)
            root.addHandler(RankwatchLogHandler(level=level))
    return producer


def log_step(
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
    """:meth:`RankwatchProducer.log_step` on the configured producer, with its signature (a
    test holds the two equal); before :func:`configure` it does nothing (warned once). Never
    raises."""
    producer = _producer
    if producer is None:
        _warn_unconfigured()
        return
    producer.log_step(
        step,
        loss=loss,
        learning_rate=learning_rate,
        gradient_norm=gradient_norm,
        gpu_memory_usage=gpu_memory_usage,
        gpu_memory_allocated_mb=gpu_memory_allocated_mb,
        gpu_memory_reserved_mb=gpu_memory_reserved_mb,
        throughput_tokens_per_sec=throughput_tokens_per_sec,
        step_time_s=step_time_s,
        data_time_s=data_time_s,
        compute_time_s=compute_time_s,
        gpu_utilization=gpu_utilization,
        **extra,
    )


def declare_lr_schedule(
    name: str, warmup_steps: int | None = None, total_steps: int | None = None
) -> None:
    """:meth:`RankwatchProducer.declare_lr_schedule` on the configured producer: every later
    step event carries the schedule. Raises ValueError on a bad argument; before
    :func:`configure` it only checks them (warned once)."""
    producer = _producer
    if producer is None:
        lr_schedule_fields(name, warmup_steps, total_steps)
        _warn_unconfigured()
        return
    producer.declare_lr_schedule(name, warmup_steps, total_steps)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """:meth:`RankwatchProducer.phase` on the configured producer: ``with rw.phase("eval"):``
    marks an evaluation pass (or ``"checkpoint"``), so the worker does not take it for a hang.
    Before :func:`configure` it only checks the name."""
    producer = _producer
    if producer is None:
        if name not in get_args(Phase):
            raise ValueError(f"phase must be one of {', '.join(get_args(Phase))}, got {name!r}")
        yield
        return
    with producer.phase(name):
        yield


def flush(timeout: float = 10.0) -> int:
    """Flush the configured producer; return events still waiting (0 without a producer)."""
    producer = _producer
    return producer.flush(timeout) if producer is not None else 0


def stats() -> ProducerStats:
    """The configured producer's counters (all zero before :func:`configure`)."""
    producer = _producer
    return producer.stats() if producer is not None else ProducerStats(0, 0, 0, 0)


def shutdown(timeout: float = 10.0) -> None:
    """Close the configured producer (flushing up to ``timeout`` seconds, after its ``ended``
    record) and forget it; put back the exception hooks and signal handlers it replaced."""
    producer = install(None)
    _lifecycle.uninstall()
    if producer is not None:
        producer.close(timeout)


def _warn_unconfigured() -> None:
    global _warned_unconfigured
    if not _warned_unconfigured:
        _warned_unconfigured = True
        logger.warning("rankwatch: log_step() before configure(): events are not sent")
