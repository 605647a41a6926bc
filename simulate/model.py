"""Healthy synchronous data-parallel training, one step at a time.

Every rank computes its micro-batch, then all wait at the all-reduce for the slowest: so every
rank's ``step_time_s`` is the same (the slowest rank's compute and data time plus the
collective), while ``compute_time_s`` and ``data_time_s`` are each rank's own. What normal
training does and no detector may fire on is all here: a compile/warm-up phase, a noisy loss
curve with learning-rate warm-up and cosine decay, checkpoint saves that slow one step of every
rank, allocator sawtooth in memory, fp16 loss-scale overflow skips.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class JobSpec:
    """The shape of a simulated job; every number is in the job's own (event) time."""

    job_id: str = "sim-job"
    ranks: int = 8
    steps: int = 300
    step_time_s: float = 1.0
    start_time: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z: fixed, so runs repeat exactly
    seed: int = 7
    ranks_per_host: int = 8
    tokens_per_step_per_rank: int = 8192
    warmup_steps: int = 5  # compile / cudnn autotune: slow first steps
    lr_warmup_steps: int = 50
    peak_lr: float = 3e-4
    checkpoint_every: int = 100
    checkpoint_s: float = 20.0
    overflow_every: int = 67  # an fp16 loss-scale overflow skip every so often
    memory_base_mb: float = 52_000.0
    memory_capacity_mb: float = 81_559.0  # an 80 GB H100
    sawtooth_mb: float = 1_800.0  # the allocator's rise and release within a step cycle
    sawtooth_period: int = 4  # gradient-accumulation cycle, in steps


@dataclass(slots=True)
class RankSample:
    """One rank's figures for one step, before faults are applied."""

    loss: float
    gradient_norm: float
    compute_time_s: float
    data_time_s: float
    memory_mb: float
    overflow: bool = False


@dataclass(slots=True)
class StepFrame:
    """All ranks at one step: the samples, then the job-wide times derived from them."""

    step: int
    learning_rate: float
    samples: dict[int, RankSample]
    step_time_s: float = 0.0
    end_time: float = 0.0
    extra_logs: list[tuple[int, str, str]] = field(default_factory=list)  # rank, level, text


class HealthyModel:
    """Draws healthy samples; faults (``scenarios``) edit them afterwards."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        # Each GPU is a little faster or slower than the others, for the whole run.
        self.speed = [1.0 + self.rng.uniform(-0.03, 0.03) for _ in range(spec.ranks)]

    def learning_rate(self, step: int) -> float:
        s = self.spec
        if step < s.lr_warmup_steps:
            return s.peak_lr * (step + 1) / s.lr_warmup_steps
        progress = (step - s.lr_warmup_steps) / max(1, s.steps - s.lr_warmup_steps)
        return s.peak_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def frame(self, step: int) -> StepFrame:
        s, rng = self.spec, self.rng
        mean_loss = 2.0 + 9.0 * math.exp(-step / 60.0)
        overflow = s.overflow_every > 0 and step > 0 and step % s.overflow_every == 0
        compile_factor = 8.0 if step < s.warmup_steps else 1.0
        cycle = step % s.sawtooth_period
        samples = {}
        for rank in range(s.ranks):
            compute = 0.78 * s.step_time_s * self.speed[rank] * compile_factor
            samples[rank] = RankSample(
                loss=mean_loss * (1 + rng.gauss(0, 0.03)),
                gradient_norm=float("inf") if overflow else abs(rng.gauss(1.2, 0.25)) + 0.2,
                compute_time_s=compute * (1 + rng.gauss(0, 0.02)),
                data_time_s=0.02 * s.step_time_s * (1 + abs(rng.gauss(0, 0.3))),
                memory_mb=s.memory_base_mb
                + s.sawtooth_mb * cycle / max(1, s.sawtooth_period - 1)
                + rng.gauss(0, 60.0),
                overflow=overflow,
            )
        return StepFrame(step, self.learning_rate(step), samples)

    def finish(self, frame: StepFrame, start: float, active: list[int]) -> None:
        """Synchronous training: the step ends when the slowest active rank is done."""
        s = self.spec
        slowest = max(
            (frame.samples[r].compute_time_s + frame.samples[r].data_time_s for r in active),
            default=s.step_time_s,
        )
        collective = 0.15 * s.step_time_s * (1 + abs(self.rng.gauss(0, 0.05)))
        checkpoint = (
            s.checkpoint_s
            if s.checkpoint_every and frame.step > 0 and (frame.step % s.checkpoint_every == 0)
            else 0.0
        )
        frame.step_time_s = slowest + collective + checkpoint
        frame.end_time = start + frame.step_time_s
