"""The simulated job as a stream of contract events, in arrival order."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from rankwatch.schemas import LogEvent, StepEvent
from rankwatch.simulate.model import HealthyModel, JobSpec
from rankwatch.simulate.scenarios import Scenario, SimState

NCCL_INIT_TEXT = (
    "node-{host}:31337:31337 [{local}] NCCL INFO comm 0x55d0c3a0 rank {rank} nranks {world} "
    "cudaDev {local} busId {local}b000 commId 0x9e5c3a1d - Init COMPLETE"
)
NCCL_CHANNEL_TEXT = "node-{host}:31337:31337 [{local}] NCCL INFO Channel 00/02 :    0   1   2   3"
OVERFLOW_TEXT = (
    "[INFO] [stage_1_and_2.py:1843:step] [deepspeed] OVERFLOW! Rank 0 Skipping step. "
    "Attempted loss scale: 65536, reducing to 32768"
)
DEPRECATION_TEXT = (
    "/usr/lib/python3/dist-packages/torch/distributed/distributed_c10d.py:4317: UserWarning: "
    "TORCH_NCCL_BLOCKING_WAIT is deprecated, use TORCH_NCCL_ASYNC_ERROR_HANDLING instead"
)


@dataclass(slots=True)
class Timeline:
    """When each scenario's fault started, in event time (filled while simulating)."""

    fault_start: dict[str, float] = field(default_factory=dict)


def _memory_fields(allocated: float, capacity: float) -> tuple[float, float, float]:
    allocated = min(max(allocated, 0.0), capacity)
    reserved = min(capacity, math.ceil((allocated + 1500.0) / 2048.0) * 2048.0)
    return allocated, reserved, round(100.0 * reserved / capacity, 2)


def simulate(
    spec: JobSpec,
    scenarios: Sequence[Scenario] = (),
    *,
    duplicates: float = 0.0,
    reorder: float = 0.0,
    timeline: Timeline | None = None,
) -> Iterator[StepEvent | LogEvent]:
    """Yield the job's step events and log records in the order a broker would deliver them.

    ``duplicates`` is the share of events delivered twice (at-least-once redelivery);
    ``reorder`` the share of neighbouring events swapped. Same arguments, same events.

    >>> events = list(simulate(JobSpec(ranks=2, steps=3)))
    >>> [e.kind for e in events].count("step")
    6
    """
    rng = random.Random(spec.seed + 1)
    model = HealthyModel(spec)
    state = SimState()
    timeline = timeline if timeline is not None else Timeline()
    world = spec.ranks
    t = spec.start_time
    batch: list[StepEvent | LogEvent] = []

    def log(rank: int, when: float, level: str, text: str, step: int | None) -> LogEvent:
        return LogEvent(
            job_id=spec.job_id,
            rank=rank,
            host=_host(spec, rank),
            timestamp=when,
            level=level,
            message=text,
            logger="train",
            step=step,
        )

    for rank in range(world):  # start-up chatter: benign by definition
        host, local = rank // spec.ranks_per_host, rank % spec.ranks_per_host
        batch.append(
            log(
                rank,
                t + 0.001 * rank,
                "INFO",
                NCCL_INIT_TEXT.format(host=host, local=local, rank=rank, world=world),
                0,
            )
        )
        batch.append(
            log(rank, t + 0.001 * rank, "INFO", NCCL_CHANNEL_TEXT.format(host=host, local=local), 0)
        )
    batch.append(log(0, t + 0.5, "WARNING", DEPRECATION_TEXT, 0))
    yield from _deliver(batch, rng, duplicates, reorder)

    for step in range(spec.steps):
        frame = model.frame(step)
        for scenario in scenarios:
            if step == scenario.at_step:
                timeline.fault_start.setdefault(scenario.name, t)
            scenario.apply(frame, state, spec)
        batch = []
        if state.stalled:
            for scenario in scenarios:
                for offset, rank, level, text in scenario.after_stall(spec):
                    batch.append(log(rank, t + offset, level, text, step))
            yield from _deliver(sorted(batch, key=lambda e: e.epoch), rng, duplicates, reorder)
            return
        active = [r for r in range(world) if r not in state.silent]
        model.finish(frame, t, active)
        tokens = spec.tokens_per_step_per_rank
        for rank in active:
            sample = frame.samples[rank]
            allocated, reserved, percent = _memory_fields(sample.memory_mb, spec.memory_capacity_mb)
            batch.append(
                StepEvent(
                    job_id=spec.job_id,
                    rank=rank,
                    world_size=world,
                    host=_host(spec, rank),
                    step=step,
                    timestamp=frame.end_time + rng.uniform(0.0, 0.05),
                    loss=sample.loss,
                    learning_rate=frame.learning_rate,
                    gradient_norm=sample.gradient_norm,
                    gpu_memory_usage=percent,
                    gpu_memory_allocated_mb=round(allocated, 1),
                    gpu_memory_reserved_mb=reserved,
                    throughput_tokens_per_sec=round(tokens / frame.step_time_s, 1),
                    step_time_s=round(frame.step_time_s, 4),
                    data_time_s=round(sample.data_time_s, 4),
                    compute_time_s=round(sample.compute_time_s, 4),
                )
            )
        if frame.samples[0].overflow and 0 in active:
            batch.append(log(0, frame.end_time + 0.01, "INFO", OVERFLOW_TEXT, step))
        if spec.checkpoint_every and step > 0 and step % spec.checkpoint_every == 0:
            batch.append(
                log(
                    0,
                    frame.end_time - 1.0,
                    "INFO",
                    f"Saving model checkpoint to /ckpt/{spec.job_id}/step_{step}",
                    step,
                )
            )
        for rank, level, text in frame.extra_logs:
            batch.append(log(rank, frame.end_time + 0.02, level, text, step))
        batch.sort(key=lambda e: e.epoch)
        yield from _deliver(batch, rng, duplicates, reorder)
        if state.ended:
            return
        t = frame.end_time


def _host(spec: JobSpec, rank: int) -> str:
    return f"node-{rank // spec.ranks_per_host}"


def _deliver(
    batch: list[StepEvent | LogEvent], rng: random.Random, duplicates: float, reorder: float
) -> Iterator[StepEvent | LogEvent]:
    if reorder:
        for i in range(len(batch) - 1):
            if rng.random() < reorder:
                batch[i], batch[i + 1] = batch[i + 1], batch[i]
    for event in batch:
        yield event
        if duplicates and rng.random() < duplicates:
            yield event
