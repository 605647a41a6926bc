"""One-line integrations: Hugging Face Trainer, PyTorch Lightning, hand-written loops.

Each framework is imported only when its class is used, so this module imports with neither
installed. Every hook never raises into training (the producer counts problems).

    trainer = Trainer(..., callbacks=[rankwatch_hf_callback(stop_on_pause_job=True)])
    trainer = lightning.Trainer(..., callbacks=[rankwatch_lightning_callback()])
    with watch_step(step, model=model) as s: ...; s.loss = loss   # a hand-written loop

Stragglers under data-parallel training: every rank's step time includes its wait for the
slowest rank in the gradient all-reduce, so it cannot tell who is slow. Given the model,
each integration times the forward pass on this rank with module hooks (:class:`ComputeTimer`:
the all-reduce runs in backward, so the forward is free of it) and reports it as
``compute_time_s``, and the time from the end of the previous step to this step's first
forward as ``data_time_s``: what the ``straggler`` rule compares across ranks.

Each integration also declares the LR schedule where it can tell it
(:meth:`RankwatchProducer.declare_lr_schedule`): the Trainer's ``lr_scheduler_type`` with its
warm-up and ``max_steps``; under Lightning, the first optimizer's torch scheduler
(:func:`torch_lr_schedule`).
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from rankwatch.producers import _global
from rankwatch.producers._producer import RankwatchProducer
from rankwatch.schemas import KNOWN_LR_SCHEDULES

_HF_KEYS = {"loss": "loss", "grad_norm": "gradient_norm", "learning_rate": "learning_rate"}
# The Trainer's scheduler types with a name of rankwatch's own; the rest (reduce_lr_on_plateau,
# cosine_with_min_lr, warmup_stable_decay...) are declared "other".
_HF_SCHEDULES = frozenset(KNOWN_LR_SCHEDULES)
_log = logging.getLogger("rankwatch.producers")

#: A declared schedule: name, warm-up steps, total steps (None: not known).
Schedule = tuple[str, int | None, int | None]


def hf_lr_schedule(args: Any, max_steps: int) -> Schedule:
    """The schedule the Trainer builds from its ``TrainingArguments`` over ``max_steps``.

    >>> from types import SimpleNamespace
    >>> hf_lr_schedule(SimpleNamespace(lr_scheduler_type="cosine", warmup_steps=0.1), 500)
    ('cosine', 50, 500)
    >>> hf_lr_schedule(SimpleNamespace(lr_scheduler_type="constant", warmup_steps=10), 500)
    ('constant', 0, 500)
    """
    kind = getattr(args, "lr_scheduler_type", "linear")
    name = str(getattr(kind, "value", kind))
    kwargs = getattr(args, "lr_scheduler_kwargs", None) or {}
    if name == "cosine" and kwargs.get("num_cycles", 0.5) != 0.5:
        name = "other"  # not the half cosine down to zero that "cosine" names
    elif name not in _HF_SCHEDULES:
        name = "other"
    total = max_steps if max_steps > 0 else None
    # transformers 5 takes a float below 1 in warmup_steps as the ratio; 4.x had warmup_ratio.
    warmup_arg = float(getattr(args, "warmup_steps", 0) or 0)
    ratio = float(getattr(args, "warmup_ratio", 0) or 0)
    if warmup_arg >= 1:
        warmup: int | None = int(warmup_arg)
    elif total is None:
        warmup = None
    else:
        warmup = math.ceil(total * (warmup_arg or ratio))
    if name == "constant":
        warmup = 0  # the Trainer's constant schedule ignores the warm-up
    if warmup is not None and total is not None:
        warmup = min(warmup, total)
    return name, warmup, total


def _is_hf_schedule(scheduler: Any) -> bool:
    """Whether ``scheduler`` is one the Trainer built from its arguments (a LambdaLR over a
    function of ``transformers.optimization``), not one the user passed in."""
    lambdas = getattr(scheduler, "lr_lambdas", None) or []
    func = getattr(lambdas[0], "func", lambdas[0]) if lambdas else None
    return str(getattr(func, "__module__", "")).startswith("transformers.")


def torch_lr_schedule(scheduler: Any, *, per_step: bool = True) -> Schedule | None:
    """What a torch LR scheduler declares: CosineAnnealingLR is ``cosine`` over ``T_max``,
    a falling LinearLR ``linear``, a rising one ``constant_with_warmup``, PolynomialLR
    ``polynomial``, CosineAnnealingWarmRestarts ``cosine_with_restarts``, SequentialLR of a
    rising LinearLR then CosineAnnealingLR ``cosine`` with that warm-up; any other scheduler
    (StepLR, LambdaLR, OneCycleLR...) ``other``; None for what is no scheduler. Step counts
    only where the scheduler steps once per optimizer step (``per_step``)."""
    kind = type(scheduler).__name__
    if not hasattr(scheduler, "step") or not hasattr(scheduler, "optimizer"):
        return None
    found: Schedule
    if kind == "CosineAnnealingLR":
        found = ("cosine", 0, int(scheduler.T_max))
    elif kind == "LinearLR":
        iters = int(scheduler.total_iters)
        if scheduler.end_factor >= scheduler.start_factor:
            found = ("constant_with_warmup", iters, None)
        else:
            found = ("linear", 0, iters)
    elif kind == "PolynomialLR":
        found = ("polynomial", 0, int(scheduler.total_iters))
    elif kind == "CosineAnnealingWarmRestarts":
        found = ("cosine_with_restarts", 0, None)
    elif kind == "SequentialLR":
        parts = list(scheduler._schedulers)
        milestones = list(scheduler._milestones)
        first = torch_lr_schedule(parts[0], per_step=True) if parts else None
        last = torch_lr_schedule(parts[-1], per_step=True) if len(parts) == 2 else None
        if (
            first is not None
            and last is not None
            and first[0] == "constant_with_warmup"
            and last[0] == "cosine"
            and last[2] is not None
        ):
            warmup = int(milestones[0])
            found = ("cosine", warmup, warmup + last[2])
        else:
            found = ("other", None, None)
    else:
        found = ("other", None, None)
    return found if per_step else (found[0], None, None)


_PENDING_STEPS = 8  # CUDA timings kept waiting for the device before the oldest is dropped


def _unwrap(module: Any) -> Any:
    """The module DDP wraps: its own forward starts with collectives (the buffer broadcast)."""
    inner = getattr(module, "module", None)
    if type(module).__name__ == "DistributedDataParallel" and inner is not None:
        return inner
    return module


class ComputeTimer:
    """This rank's own forward time and its wait for data, free of collective waits.

    Forward pre-/post-hooks on ``module`` (DDP's inner module when given the DDP wrapper) sum
    the forward calls of a step (micro-batches included); :meth:`end_step` returns that sum
    and the time from the end of the previous step to the step's first forward (the wait for
    the batch), and starts the next step. Without a module, :meth:`start` and :meth:`stop`
    mark the span by hand (the Lightning callback).

    On a CUDA module (or ``cuda=True``) the forward is timed with CUDA events on the current
    stream, never synchronising the device: :meth:`end_step` returns the latest step whose
    events the GPU has passed (usually this one when the loop read the loss; else an earlier
    one), and ``None`` until one has. On the CPU it is the host's clock.

    Under FSDP or ZeRO-3 the forward gathers parameters from the peers, so it is not free of
    collective waits: time the compute some other way there.

    ``ComputeTimer(model)`` registers the hooks; by hand (what each forward does)::

    >>> timer = ComputeTimer()
    >>> timer.start(); timer.stop(); timer.start(); timer.stop()  # two micro-batches
    >>> compute, data = timer.end_step()
    >>> compute > 0, data   # no previous step: the wait for data is not known yet
    (True, None)
    >>> timer.start(); timer.stop()
    >>> compute, data = timer.end_step()
    >>> data >= 0   # from the previous end_step to this step's first start
    True
    """

    def __init__(self, module: Any = None, *, cuda: bool | None = None) -> None:
        self._cuda = cuda  # None: found from the hooked module's parameters at its first forward
        self._depth = 0  # nested spans (a hooked module called inside itself) count once
        self._began = 0.0
        self._first: float | None = None  # this step's first forward (perf_counter)
        self._last_end: float | None = None  # the previous step's end
        self._host_s = 0.0
        self._start_event: Any = None
        self._events: list[tuple[Any, Any]] = []  # this step's (start, end) CUDA events
        self._queue: deque[list[tuple[Any, Any]]] = deque()
        self._handles: list[Any] = []
        if module is not None:
            self.attach(module)

    @classmethod
    def of(cls, module: Any) -> ComputeTimer:
        """The timer of ``module``, created (hooks registered) at the first call."""
        timer = _TIMERS.get(module)
        if timer is None:
            timer = _TIMERS[module] = cls(module)
        return timer

    def attach(self, module: Any) -> None:
        """Register the forward hooks (``always_call``: a forward that raises ends its span)."""
        inner = _unwrap(module)
        self._handles.append(inner.register_forward_pre_hook(self._pre))
        self._handles.append(inner.register_forward_hook(self._post, always_call=True))

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # The hooks run inside the trainer's forward: whatever goes wrong in them stays there.
    def _pre(self, module: Any, args: Any) -> None:
        with suppress(Exception):
            if self._cuda is None:  # once: where the model is when it first runs
                self._cuda = False
                with suppress(StopIteration, AttributeError):
                    self._cuda = bool(next(module.parameters()).is_cuda)
            self.start()

    def _post(self, module: Any, args: Any, output: Any) -> None:
        with suppress(Exception):
            self.stop()

    def start(self) -> None:
        """A span of this rank's own compute begins (a forward pass)."""
        self._depth += 1
        if self._depth > 1:
            return
        now = self._began = time.perf_counter()
        if self._first is None:
            self._first = now
        if self._cuda:
            self._start_event = self._record()

    def stop(self) -> None:
        """The span begun by :meth:`start` ends."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        self._host_s += time.perf_counter() - self._began
        if self._cuda and self._start_event is not None:
            self._events.append((self._start_event, self._record()))
            self._start_event = None

    @staticmethod
    def _record() -> Any:
        torch = sys.modules["torch"]
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def end_step(self, started: float | None = None) -> tuple[float | None, float | None]:
        """``(compute_time_s, data_time_s)`` of the step ending now; each ``None`` when not
        known. ``started`` (perf_counter): where the wait for data is counted from when no
        previous step ended."""
        since = self._last_end if self._last_end is not None else started
        first = self._first
        data = max(0.0, first - since) if first is not None and since is not None else None
        if self._cuda:
            compute = None
            with suppress(Exception):  # a device error is the trainer's to meet, not ours
                compute = self._cuda_seconds()
        else:
            compute = self._host_s if first is not None and self._depth == 0 else None
        self.discard()
        self._last_end = time.perf_counter()
        return compute, data

    def discard(self) -> None:
        """Forget the step under way (it failed): the next step starts clean."""
        self._depth, self._first, self._host_s = 0, None, 0.0
        self._start_event, self._events = None, []

    def _cuda_seconds(self) -> float | None:
        if self._events:
            self._queue.append(self._events)
        if len(self._queue) > _PENDING_STEPS:
            self._queue.popleft()  # the device is far behind: that step is not worth waiting for
        latest: float | None = None
        # query() asks whether the GPU has passed the event, without waiting for it.
        while self._queue and all(end.query() for _, end in self._queue[0]):
            pairs = self._queue.popleft()
            latest = sum(s.elapsed_time(e) for s, e in pairs) / 1000.0  # ms to s
        return latest


#: The timers :func:`watch_step` made, by model: gone with the model.
_TIMERS: weakref.WeakKeyDictionary[Any, ComputeTimer] = weakref.WeakKeyDictionary()


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
        self.timer: ComputeTimer | None = None
        self._sums = [0.0, 0, 0.0, 0]  # compute seconds, steps; data seconds, steps (since a log)

    def producer(self) -> RankwatchProducer | None:
        return self._producer or _global.current()

    def on_train_begin(
        self, model: Any = None, args: Any = None, state: Any = None, lr_scheduler: Any = None
    ) -> None:
        if model is not None and self.timer is None:
            self.timer = ComputeTimer(model)
        producer = self.producer()
        if producer is not None and args is not None and state is not None:
            self.declare_schedule(producer, args, int(state.max_steps), lr_scheduler)
        if self.stop_on_pause_job and producer is not None and self.pause is None:
            self.pause = PauseFlag(producer.identity.job_id, producer.settings)

    @staticmethod
    def declare_schedule(
        producer: RankwatchProducer, args: Any, max_steps: int, lr_scheduler: Any = None
    ) -> None:
        """Declare the Trainer's schedule: from its arguments, unless the user passed in a
        scheduler of their own (then from that, as :func:`torch_lr_schedule` tells it)."""
        try:
            if lr_scheduler is None or _is_hf_schedule(lr_scheduler):
                found: Schedule | None = hf_lr_schedule(args, max_steps)
            else:
                found = torch_lr_schedule(lr_scheduler)
            if found is not None:
                producer.declare_lr_schedule(*found)
        except Exception as error:  # never into training: the run goes on undeclared
            _log.warning("rankwatch: could not declare the LR schedule: %r", error)

    def on_log(self, step: int, logs: dict[str, Any] | None) -> None:
        producer = self.producer()
        if producer is None or not logs:
            return
        metrics = {name: logs[key] for key, name in _HF_KEYS.items() if key in logs}
        if metrics:
            # The Trainer logs every ``logging_steps``: the mean over the steps since its last log.
            compute_s, computed, data_s, waited = self._sums
            if computed:
                metrics["compute_time_s"] = compute_s / computed
            if waited:
                metrics["data_time_s"] = data_s / waited
            self._sums = [0.0, 0, 0.0, 0]
            producer.log_step(step, **metrics)

    def on_step_end(self, control: Any) -> Any:
        if self.timer is not None:
            compute, data = self.timer.end_step()
            sums = self._sums
            if compute is not None:
                sums[0] += compute
                sums[1] += 1
            if data is not None:
                sums[2] += data
                sums[3] += 1
        if self.pause is not None and self.pause.is_set():
            control.should_save = True  # save first, then stop: the run can resume
            control.should_training_stop = True
        return control

    def on_train_end(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None
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
    ``stop_on_pause_job``, an alert with action ``pause_job`` for this job saves and stops.

    Each event carries this rank's mean forward time (``compute_time_s``) and wait for data
    (``data_time_s``) over the steps since the previous log, timed by hooks on the model: keep
    ``logging_steps`` small (10, not the default 500) for ``straggler`` to see enough steps."""
    # Through importlib: typed Any whether or not transformers is installed where mypy runs.
    trainer_callback: Any = importlib.import_module("transformers").TrainerCallback

    bridge = HFBridge(producer, stop_on_pause_job)

    class RankwatchCallback(trainer_callback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            bridge.on_train_begin(kw.get("model"), args, state, kw.get("lr_scheduler"))

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            bridge.on_log(state.global_step, logs)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            return bridge.on_step_end(control)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            bridge.on_train_end()

    return RankwatchCallback()


def rankwatch_lightning_callback(producer: RankwatchProducer | None = None) -> Any:
    """A PyTorch Lightning ``Callback``: one step event per training batch (loss, learning
    rate of the first optimizer, step time), with this rank's own compute (from the batch's
    start to ``on_before_backward``: the forward and loss, before DDP's all-reduce in backward)
    as ``compute_time_s`` and the gap since the previous batch ended as ``data_time_s``."""
    callback: Any
    try:
        callback = importlib.import_module("lightning.pytorch").Callback
    except ImportError:
        callback = importlib.import_module("pytorch_lightning").Callback

    class RankwatchLightningCallback(callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self._started = 0.0
            self._timer: ComputeTimer | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            target = producer or _global.current()
            if target is not None:
                declare_lightning_schedule(target, trainer)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if self._timer is None:
                device = getattr(pl_module, "device", None)
                self._timer = ComputeTimer(cuda=getattr(device, "type", None) == "cuda")
            self._started = time.perf_counter()
            self._timer.start()

        def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
            if self._timer is not None:
                self._timer.stop()

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, *args: Any
        ) -> None:
            compute, data = self._timer.end_step() if self._timer else (None, None)
            target = producer or _global.current()
            if target is None:
                return
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            metrics: dict[str, Any] = {"step_time_s": time.perf_counter() - self._started}
            if compute is not None:
                metrics["compute_time_s"] = compute
            if data is not None:
                metrics["data_time_s"] = data
            if loss is not None:
                metrics["loss"] = loss.detach() if hasattr(loss, "detach") else loss
            with suppress(AttributeError, IndexError, KeyError):
                metrics["learning_rate"] = trainer.optimizers[0].param_groups[0]["lr"]
            target.log_step(trainer.global_step, **metrics)

    return RankwatchLightningCallback()


def declare_lightning_schedule(producer: RankwatchProducer, trainer: Any) -> None:
    """Declare the schedule of the first optimizer's scheduler in ``trainer.lr_scheduler_configs``
    (nothing without one); step counts only for one stepped every optimizer step."""
    try:
        for config in getattr(trainer, "lr_scheduler_configs", None) or []:
            if getattr(config, "opt_idx", None) not in (None, 0):
                continue
            per_step = config.interval == "step" and config.frequency == 1
            found = torch_lr_schedule(config.scheduler, per_step=per_step)
            if found is not None:
                producer.declare_lr_schedule(*found)
            return
    except Exception as error:
        _log.warning("rankwatch: could not declare the LR schedule: %r", error)


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
    model: Any = None,
    sync_cuda: bool = False,
    producer: RankwatchProducer | None = None,
) -> Iterator[StepRecord]:
    """Time one step of a hand-written loop and log it (GPU memory added by the producer's
    enricher where torch has CUDA). ``sync_cuda`` waits for the GPU before reading the clock,
    so the time is the step's, not its launch's (it costs a device sync).

    With ``model`` (the DDP wrapper or the plain module), its forward passes in the step are
    timed by hooks (:class:`ComputeTimer`, registered at the first step) and reported as
    ``compute_time_s``, and the time from the previous step's end to this step's first
    forward as ``data_time_s`` (a ``data_time_s`` given here or set on the record wins): under
    DDP these are what tell the slow rank, since every rank's step time waits for it.
    Without ``model``, a given ``data_time_s`` comes with the whole step as its compute time,
    which under DDP includes the wait for the slowest rank: no use for finding it.

    >>> from rankwatch.producers.testing import capture_events
    >>> with capture_events() as events:
    ...     with watch_step(5, data_time_s=0.01) as s:
    ...         s.loss, s.tokens = 2.5, 4096
    >>> e = events[0]
    >>> e.step, e.loss, e.data_time_s, e.throughput_tokens_per_sec > 0
    (5, 2.5, 0.01, True)
    """
    timer = ComputeTimer.of(model) if model is not None else None
    record = StepRecord(step, data_time_s=data_time_s)
    started = time.perf_counter()
    try:
        yield record
    except BaseException:
        if timer is not None:
            timer.discard()
        raise
    if sync_cuda:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    compute, data = timer.end_step(started) if timer is not None else (None, None)
    target = producer or _global.current()
    if target is None:
        return
    metrics: dict[str, Any] = {"step_time_s": elapsed, **record.metrics}
    if record.loss is not None:
        metrics["loss"] = record.loss
    if record.data_time_s is not None:
        data = record.data_time_s
    if timer is None and data is not None:
        compute = elapsed  # no model to time: the whole step (see above)
    if compute is not None:
        metrics.setdefault("compute_time_s", compute)
    if data is not None:
        metrics["data_time_s"] = data
    if record.tokens is not None and elapsed > 0:
        metrics["throughput_tokens_per_sec"] = record.tokens / elapsed
    target.log_step(step, **metrics)
