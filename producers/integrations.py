"""One-line integrations: Hugging Face Trainer, PyTorch Lightning, hand-written loops.

Each framework is imported only when its class is used, so this module imports with neither
installed. Every hook never raises into training (the producer counts problems).

    trainer = Trainer(..., callbacks=[rankwatch_hf_callback(stop_on_pause_job=True)])
    trainer = lightning.Trainer(..., callbacks=[rankwatch_lightning_callback()])
    with watch_step(step) as s: ...; s.loss = loss   # a hand-written loop
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from rankwatch.producers import _global
from rankwatch.producers._producer import RankwatchProducer

_HF_KEYS = {"loss": "loss", "grad_norm": "gradient_norm", "learning_rate": "learning_rate"}


class PauseFlag:
    """Set from the alert thread when an alert for this job asks ``pause_job``."""

    def __init__(self, job_id: str, settings: Any = None) -> None:
        from rankwatch.producers._subscribe import subscribe

        self._event = threading.Event()
        self.subscription = subscribe(job_id, self._on_alert, settings=settings)

    def _on_alert(self, alert: Any) -> None:
        if alert.action == "pause_job" and alert.status == "firing":
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class HFBridge:
    """What the Hugging Face callback does, free of transformers (tested on its own)."""

    def __init__(
        self, producer: RankwatchProducer | None = None, stop_on_pause_job: bool = False
    ) -> None:
        self._producer = producer
        self.stop_on_pause_job = stop_on_pause_job
        self.pause: PauseFlag | None = None

    def producer(self) -> RankwatchProducer | None:
        return self._producer or _global.current()

    def on_train_begin(self) -> None:
        producer = self.producer()
        if self.stop_on_pause_job and producer is not None and self.pause is None:
            self.pause = PauseFlag(producer.identity.job_id, producer.settings)

    def on_log(self, step: int, logs: dict[str, Any] | None) -> None:
        producer = self.producer()
        if producer is None or not logs:
            return
        metrics = {name: logs[key] for key, name in _HF_KEYS.items() if key in logs}
        if metrics:
            producer.log_step(step, **metrics)

    def on_step_end(self, control: Any) -> Any:
        if self.pause is not None and self.pause.is_set():
            control.should_save = True  # save first, then stop: the run can resume
            control.should_training_stop = True
        return control

    def on_train_end(self) -> None:
        if self.pause is not None:
            self.pause.subscription.close()
            self.pause = None
        producer = self.producer()
        if producer is not None:
            producer.flush(5.0)


def rankwatch_hf_callback(
    producer: RankwatchProducer | None = None, *, stop_on_pause_job: bool = False
) -> Any:
    """A ``transformers.TrainerCallback`` streaming the Trainer's logs as step events; with
    ``stop_on_pause_job``, an alert with action ``pause_job`` for this job saves and stops."""
    # Through importlib: typed Any whether or not transformers is installed where mypy runs.
    trainer_callback: Any = importlib.import_module("transformers").TrainerCallback

    bridge = HFBridge(producer, stop_on_pause_job)

    class RankwatchCallback(trainer_callback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            bridge.on_train_begin()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            bridge.on_log(state.global_step, logs)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            return bridge.on_step_end(control)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            bridge.on_train_end()

    return RankwatchCallback()


def rankwatch_lightning_callback(producer: RankwatchProducer | None = None) -> Any:
    """A PyTorch Lightning ``Callback``: one step event per training batch (loss, learning
    rate of the first optimizer, step time)."""
    callback: Any
    try:
        callback = importlib.import_module("lightning.pytorch").Callback
    except ImportError:
        callback = importlib.import_module("pytorch_lightning").Callback

    class RankwatchLightningCallback(callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self._started = 0.0

        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            self._started = time.perf_counter()

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, *args: Any
        ) -> None:
            target = producer or _global.current()
            if target is None:
                return
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            metrics: dict[str, Any] = {"step_time_s": time.perf_counter() - self._started}
            if loss is not None:
                metrics["loss"] = loss.detach() if hasattr(loss, "detach") else loss
            with suppress(AttributeError, IndexError, KeyError):
                metrics["learning_rate"] = trainer.optimizers[0].param_groups[0]["lr"]
            target.log_step(trainer.global_step, **metrics)

    return RankwatchLightningCallback()


@dataclass
class StepRecord:
    """Filled in by the loop inside :func:`watch_step`: ``loss``, ``tokens``, any metrics."""

    step: int
    loss: Any = None
    tokens: int | None = None
    data_time_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@contextmanager
def watch_step(
    step: int,
    *,
    data_time_s: float | None = None,
    sync_cuda: bool = False,
    producer: RankwatchProducer | None = None,
) -> Iterator[StepRecord]:
    """Time one step of a hand-written loop and log it (GPU memory added by the producer's
    enricher where torch has CUDA). ``sync_cuda`` waits for the GPU before reading the clock,
    so the time is the step's, not its launch's (it costs a device sync).

    >>> from rankwatch.producers.testing import capture_events
    >>> with capture_events() as events:
    ...     with watch_step(5, data_time_s=0.01) as s:
    ...         s.loss, s.tokens = 2.5, 4096
    >>> e = events[0]
    >>> e.step, e.loss, e.data_time_s, e.throughput_tokens_per_sec > 0
    (5, 2.5, 0.01, True)
    """
    record = StepRecord(step, data_time_s=data_time_s)
    started = time.perf_counter()
    yield record
    if sync_cuda:
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    target = producer or _global.current()
    if target is None:
        return
    metrics: dict[str, Any] = {"step_time_s": elapsed, **record.metrics}
    if record.loss is not None:
        metrics["loss"] = record.loss
    if record.data_time_s is not None:
        metrics["data_time_s"] = record.data_time_s
        metrics.setdefault("compute_time_s", elapsed)
    if record.tokens is not None and elapsed > 0:
        metrics["throughput_tokens_per_sec"] = record.tokens / elapsed
    target.log_step(step, **metrics)
