"""Synthetic training runs for detector tests: healthy by default, faults injected on demand.

A healthy run is deliberately *not* clean: it has everything normal training does that a naive
rule would fire on (CONTRACT.md, "Normal training must not fire them"):

- a loss that falls fast from ~ln(vocab), with per-step noise, a bump at the end of the LR
  warm-up, cosine LR decay, and rare single-step spikes;
- heavy-tailed gradient norms, high in the first steps, with rare 3-6x spikes;
- fp16 loss-scale overflow skips: a dozen consecutive non-finite norms at the start (the
  scaler calibrating) and a single one every ``overflow_every`` steps, each with a normal loss;
- slow warm-up/compile steps and a checkpoint save every ``checkpoint_every`` steps that slows
  one step of every rank;
- allocator sawtooth and noise on allocated memory, reserved memory flat-high, usage at 98%.

Everything is seeded per rank, so a run is reproducible whatever order it is consumed in.

>>> events = list(healthy_run(ranks=2, steps=3, seed=1))
>>> [(e.rank, e.step) for e in events]
[(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rankwatch.schemas import Alert, StepEvent
from rankwatch.streams import Engine, Outcome, RankState
from rankwatch.streams.detectors.base import JobState, StepDetector

T0 = 1_743_848_595.0  # 2025-04-05T10:23:15Z, the seed article's timestamp

#: ``fault(rank, step, metrics)`` may change the metrics dict of one rank's step in place.
Fault = Callable[[int, int, dict[str, Any]], None]


@dataclass(frozen=True)
class RunShape:
    """How a healthy run looks. Override fields to make it noisier or quieter."""

    loss_start: float = 10.5
    loss_end: float = 2.0
    loss_tau: float = 150.0  # steps for the loss to fall by 1/e of the way
    loss_noise: float = 0.05  # relative, per step
    loss_spike_prob: float = 0.01  # single-step spikes of 1.5-2.5x
    lr_peak: float = 3e-4
    lr_warmup: int = 100
    total_steps: int = 10_000
    grad_level: float = 1.0
    grad_sigma: float = 0.3  # log-normal noise
    grad_spike_prob: float = 0.01  # single-step spikes of 3-6x
    startup_overflows: int = 12  # consecutive fp16 overflow skips at step 0..
    overflow_every: int = 200  # then one overflow skip every so many steps (0 = never)
    throughput: float = 80_000.0
    throughput_noise: float = 0.03
    compile_steps: int = 6  # first steps run at 5-50% speed
    checkpoint_every: int = 100  # one step at ~25% speed on every rank (0 = never)
    mem_base_mb: float = 30_000.0
    mem_saw_mb: float = 6_000.0  # activations: rise within a cycle, released at its end
    mem_saw_period: int = 4  # steps per accumulation cycle
    mem_noise_mb: float = 30.0
    reserved_mb: float = 72_000.0
    usage_pct: float = 98.0


def healthy_metrics(rank: int, step: int, rng: random.Random, shape: RunShape) -> dict[str, Any]:
    """The metrics of one healthy step of one rank."""
    sh = shape
    # Learning rate: linear warm-up, then cosine decay.
    if step < sh.lr_warmup:
        lr = sh.lr_peak * (step + 1) / sh.lr_warmup
    else:
        done = min(1.0, (step - sh.lr_warmup) / max(1, sh.total_steps - sh.lr_warmup))
        lr = sh.lr_peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))
    # Loss: exponential fall, a bump where the LR peaks, noise, rare single spikes.
    loss = sh.loss_end + (sh.loss_start - sh.loss_end) * math.exp(-step / sh.loss_tau)
    loss *= 1 + 0.15 * math.exp(-(((step - sh.lr_warmup) / 20) ** 2))
    loss *= 1 + rng.gauss(0, sh.loss_noise)
    if rng.random() < sh.loss_spike_prob:
        loss *= rng.uniform(1.5, 2.5)
    # Gradient norm: heavy-tailed, high early, rare spikes, fp16 overflow skips.
    grad = sh.grad_level * (1 + 5 * math.exp(-step / 20)) * rng.lognormvariate(0, sh.grad_sigma)
    if rng.random() < sh.grad_spike_prob:
        grad *= rng.uniform(3, 6)
    if step < sh.startup_overflows or (
        sh.overflow_every and step % sh.overflow_every == sh.overflow_every // 2
    ):
        grad = math.inf if rng.random() < 0.5 else math.nan
    # Throughput: slow compile steps, checkpoint saves, noise.
    tput = sh.throughput * (1 + rng.gauss(0, sh.throughput_noise))
    if step < sh.compile_steps:
        tput *= rng.uniform(0.05, 0.5)
    if sh.checkpoint_every and step and step % sh.checkpoint_every == 0:
        tput *= rng.uniform(0.2, 0.3)
    # Memory: sawtooth within an accumulation cycle, released at its end, plus noise.
    phase = step % sh.mem_saw_period
    alloc = sh.mem_base_mb + sh.mem_saw_mb * phase / sh.mem_saw_period
    alloc += rng.gauss(0, sh.mem_noise_mb)
    return {
        "loss": loss,
        "learning_rate": lr,
        "gradient_norm": grad,
        "throughput_tokens_per_sec": max(0.0, tput),
        "gpu_memory_allocated_mb": max(0.0, alloc),
        "gpu_memory_reserved_mb": sh.reserved_mb,
        "gpu_memory_usage": min(100.0, max(0.0, sh.usage_pct + rng.gauss(0, 0.2))),
        "step_time_s": 4096 * 8 / max(1.0, tput),
    }


def healthy_run(
    ranks: int = 8,
    steps: int = 300,
    seed: int = 0,
    *,
    job_id: str = "job-1",
    t0: float = T0,
    step_s: float = 1.0,
    shape: RunShape | None = None,
    fault: Fault | None = None,
    start_step: int = 0,
) -> Iterator[StepEvent]:
    """Step events of a run, step by step, every rank in turn (the order Kafka gives them)."""
    sh = shape or RunShape()
    rngs = [random.Random(seed * 1_000_003 + r) for r in range(ranks)]
    for step in range(start_step, start_step + steps):
        t = t0 + step * step_s
        for r in range(ranks):
            m = healthy_metrics(r, step, rngs[r], sh)
            if fault is not None:
                fault(r, step, m)
            # Ranks report a few ms apart, as they do.
            yield StepEvent(
                job_id=job_id,
                rank=r,
                world_size=ranks,
                host=f"node{r // 8}",
                step=step,
                timestamp=t + 0.001 * (r % 64),
                **m,
            )


def steps_of(
    values: Iterable[dict[str, Any]], *, rank: int = 0, start_step: int = 0, step_s: float = 1.0
) -> Iterator[StepEvent]:
    """Step events of one rank from explicit metric dicts (for a single detector's tests)."""
    for i, m in enumerate(values):
        step = start_step + i
        yield StepEvent(job_id="job-1", rank=rank, step=step, timestamp=T0 + step * step_s, **m)


def drive(
    detector: StepDetector, events: Iterable[StepEvent], state: Any = None
) -> list[tuple[int, Outcome]]:
    """Feed one rank's events to one detector, as the engine would; ``(step, outcome)`` pairs."""
    job = JobState("job-1")
    ranks: dict[int, RankState] = {}
    states: dict[int, Any] = {}
    out: list[tuple[int, Outcome]] = []
    for e in events:
        rank = ranks.setdefault(e.rank, RankState(e.rank, e.host))
        if e.rank not in states:
            states[e.rank] = state if state is not None else detector.new_rank_state()
        out.extend((e.step, o) for o in detector.on_step(job, rank, states[e.rank], e))
    return out


def run_engine(engine: Engine, events: Iterable[StepEvent]) -> list[Alert]:
    """Every alert an engine raises over the events, the end-of-input flush included."""
    alerts = engine.process_many(events)
    alerts.extend(engine.flush())
    return alerts


def global_norm(level: float = 1.0, seed: int = 7) -> Fault:
    """Every rank reports the same (all-reduced) norm at a step, as a DDP job does; fp16
    overflow skips stay non-finite on every rank."""

    def fault(rank: int, step: int, m: dict[str, Any]) -> None:
        rng = random.Random(seed * 1_000_003 + step)
        g = level * (1 + 5 * math.exp(-step / 20)) * rng.lognormvariate(0, 0.3)
        m["gradient_norm"] = g if math.isfinite(m["gradient_norm"]) else math.inf

    return fault


def both(*faults: Fault) -> Fault:
    def fault(rank: int, step: int, m: dict[str, Any]) -> None:
        for f in faults:
            f(rank, step, m)

    return fault
