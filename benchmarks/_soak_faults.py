"""Graded faults for the soak, each injected into an otherwise healthy ``_soak_jobs`` job.

A :class:`FaultCase` is one fault kind at one severity on one seed and job size. The job is
the healthy job of that seed (same noise at every severity, so a detection curve compares like
with like), without restarts (a restart would step back over the fault), plus the fault from a
step after warm-up to the end. Its ground truth (:class:`FaultKind`) is the rule that must fire,
whether the alert must name the faulty rank, and the rules that may fire as consequences (a
big straggler slows the whole job, so ``throughput_drop`` is no false alarm there).

Severities bracket the built-in thresholds on purpose: the smallest ones are below what a rule
can see, so the curve shows where detection starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from _soak_jobs import CAPACITY_MB, Frame, Injection, JobParams, draw_job

FAULT_STEPS = 500  # fault jobs: warm-up, ~200 healthy steps, then the fault for ~250-300


@dataclass(frozen=True, slots=True)
class FaultKind:
    name: str
    rule: str
    scope: str  # "rank": the alert must name the faulty rank; "job": any alert of the rule
    severities: tuple[float, ...]
    unit: str
    allowed: tuple[str, ...]  # rules that may fire as consequences: not false alarms


KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind(
            "straggler_compute",
            "straggler",
            "rank",
            (0.05, 0.1, 0.2, 0.35, 0.5, 1.0),
            "compute x(1+f)",
            ("throughput_drop",),
        ),
        FaultKind(
            "straggler_data",
            "straggler",
            "rank",
            (0.02, 0.05, 0.1, 0.2, 0.5),
            "data wait + g x step time",
            ("throughput_drop",),
        ),
        FaultKind(
            "memory_leak",
            "memory_growth",
            "rank",
            (5, 10, 20, 50, 100),
            "MB/step",
            ("cuda_oom", "job_stopped"),  # a leak runs into its OOM: the job stops
        ),
        FaultKind("nan_loss", "loss_explosion", "job", (1,), "all ranks", ("gradient_explosion",)),
        FaultKind(
            "loss_divergence",
            "loss_explosion",
            "job",
            (1.5, 2, 3, 5, 10),
            "loss x k",
            ("gradient_explosion",),
        ),
        FaultKind(
            "gradient_explosion",
            "gradient_explosion",
            "job",
            (5, 10, 20, 50),
            "grad norm x k",
            ("loss_explosion",),
        ),
        FaultKind(
            "throughput_drop",
            "throughput_drop",
            "job",
            (0.2, 0.35, 0.5, 0.7),
            "drop",
            ("input_bound", "gpu_utilization"),  # every rank waits on shared storage
        ),
        FaultKind("rank_silent", "rank_silent", "rank", (1,), "one rank", ("hang",)),
        FaultKind(
            "hang",
            "hang",
            "job",
            (1,),
            "all ranks",
            ("rank_silent", "nccl_timeout_burst", "nccl_error", "job_stopped"),
        ),
        FaultKind(
            "cuda_oom", "cuda_oom", "rank", (1,), "one rank", ("rank_silent", "hang", "job_stopped")
        ),
    )
}


class _Fault(Injection):
    def __init__(self, severity: float, rank: int, start_step: int, seed: int) -> None:
        self.severity = severity
        self.rank = rank
        self.start_step = start_step
        self.start_time: float | None = None
        self.rng = np.random.default_rng([seed, 4])

    def on(self, frame: Frame) -> bool:
        if frame.step < self.start_step:
            return False
        if self.start_time is None:
            self.start_time = frame.t_start
        return True


class StragglerCompute(_Fault):
    """A throttled GPU: the rank's compute is (1+f) times slower; everyone waits for it."""

    def timing(self, frame: Frame) -> None:
        if self.on(frame):
            frame.compute[self.rank] *= 1 + self.severity


class StragglerData(_Fault):
    """A slow input pipeline on one host: the rank waits g x the step time for each batch."""

    def timing(self, frame: Frame) -> None:
        if self.on(frame):
            frame.data[self.rank] += self.severity * frame.step_s


class ThroughputDrop(_Fault):
    """Shared storage stalls: every rank waits alike, so the job's throughput falls by ``drop``."""

    def timing(self, frame: Frame) -> None:
        if self.on(frame):
            extra = frame.step_s * (1 / (1 - self.severity) - 1)
            frame.data += extra * (1 + 0.03 * self.rng.standard_normal(frame.world))


class MemoryLeak(_Fault):
    """L MB a step on one rank, until the GPU is full: then torch's OOM ends the job."""

    def values(self, frame: Frame) -> None:
        if not self.on(frame):
            return
        frame.alloc[self.rank] += self.severity * (frame.step - self.start_step + 1)
        if frame.alloc[self.rank] > 0.985 * CAPACITY_MB:
            frame.logs.append((frame.t_end - 0.2, self.rank, "ERROR", oom_text(self.rank, 2.0)))
            frame.dies = True


class NanLoss(_Fault):
    def values(self, frame: Frame) -> None:
        if self.on(frame):
            frame.loss[:] = math.nan
            frame.grad[:] = math.nan


class LossDivergence(_Fault):
    """The loss climbs to k times its level over ten steps and stays there."""

    def values(self, frame: Frame) -> None:
        if self.on(frame):
            ramp = min(1.0, (frame.step - self.start_step + 1) / 10)
            frame.loss *= 1 + (self.severity - 1) * ramp


class GradientExplosion(_Fault):
    def values(self, frame: Frame) -> None:
        if self.on(frame):
            frame.grad *= self.severity


class RankSilent(_Fault):
    """One rank's events stop (its producer died, say) while training goes on."""

    def values(self, frame: Frame) -> None:
        if self.on(frame):
            frame.muted.add(self.rank)


class Hang(_Fault):
    """No rank finishes the step; a monitor thread on each rank keeps logging until NCCL's
    watchdog times out (10 minutes, torch's default) and every rank reports it."""

    def values(self, frame: Frame) -> None:
        if not self.on(frame):
            return
        frame.dies = True
        t, rng = frame.t_start, self.rng
        for r in range(frame.world):
            when = float(rng.uniform(5, 30))
            while when < 600:
                line = f"GPU {r % 8} utilization 100%, memory {frame.alloc[r] / 1024:.1f} GiB"
                frame.logs.append((t + when, r, "INFO", line))
                when += float(rng.uniform(20, 40))
            frame.logs.append((t + 600 + float(rng.uniform(0, 2)), r, "ERROR", watchdog_text(r)))


class CudaOom(_Fault):
    """One rank runs out of memory mid-step; torchrun then stops the job."""

    def values(self, frame: Frame) -> None:
        if self.on(frame):
            when = frame.t_start + 0.6 * (frame.t_end - frame.t_start)
            frame.logs.append((when, self.rank, "ERROR", oom_text(self.rank, 4.2)))
            frame.dies = True


_CLASSES: dict[str, type[_Fault]] = {
    "straggler_compute": StragglerCompute,
    "straggler_data": StragglerData,
    "memory_leak": MemoryLeak,
    "nan_loss": NanLoss,
    "loss_divergence": LossDivergence,
    "gradient_explosion": GradientExplosion,
    "throughput_drop": ThroughputDrop,
    "rank_silent": RankSilent,
    "hang": Hang,
    "cuda_oom": CudaOom,
}


@dataclass(frozen=True, slots=True)
class FaultCase:
    kind: str
    severity: float
    seed: int
    ranks: int

    @property
    def job_id(self) -> str:
        return f"fault-{self.kind}-{self.severity:g}-r{self.ranks}-s{self.seed}"

    def build(self, max_events: int) -> tuple[JobParams, _Fault]:
        p = draw_job(
            self.seed,
            max_events=max_events,
            ranks=self.ranks,
            steps=FAULT_STEPS,
            restarts=False,
            job_id=self.job_id,
        )
        # What a rule needs to see the fault at all must be reported.
        if self.kind.startswith("straggler"):
            p = dataclasses.replace(p, report_timing=True)
        if self.kind == "memory_leak" and p.memory_report == "none":
            p = dataclasses.replace(p, memory_report="all")
        rng = np.random.default_rng([self.seed, 3])  # same rank and step at every severity
        start = int(rng.integers(max(p.warmup_steps + 50, 175), 250))
        rank = int(rng.integers(1, p.ranks))
        return p, _CLASSES[self.kind](self.severity, rank, start, self.seed)


def fault_suite(
    seeds: int,
    base_seed: int,
    max_events: int,
    shapes: tuple[int, ...] = (8, 64, 256),
    kinds: tuple[str, ...] = tuple(KINDS),
) -> list[FaultCase]:
    """Each kind at each severity, on ``seeds`` seeds and each job size that fits the bound."""
    cap = max(8, max_events // FAULT_STEPS // 8 * 8)
    sizes = sorted({min(s, cap) for s in shapes})
    return [
        FaultCase(kind, float(sev), base_seed + i, ranks)
        for kind in kinds
        for sev in KINDS[kind].severities
        for ranks in sizes
        for i in range(seeds)
    ]


def oom_text(rank: int, gib: float) -> str:
    """A torch OOM traceback, one record (torch >= 2.3 wording of the allocator's message)."""
    return (
        "Traceback (most recent call last):\n"
        '  File "/workspace/train.py", line 233, in <module>\n'
        "    loss.backward()\n"
        '  File "/usr/local/lib/python3.11/dist-packages/torch/_tensor.py", line 626, in '
        "backward\n"
        "    torch.autograd.backward(\n"
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {gib:.2f} GiB. GPU "
        f"{rank % 8} has a total capacity of 79.11 GiB of which 1.06 GiB is free. Including "
        "non-PyTorch memory, this process has 78.04 GiB memory in use. Of the allocated memory "
        "74.12 GiB is allocated by PyTorch, and 2.37 GiB is reserved by PyTorch but unallocated."
        " If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
    )


def watchdog_text(rank: int) -> str:
    """torch's ProcessGroupNCCL watchdog on a collective that never completed."""
    return (
        f"[rank{rank}]:[E ProcessGroupNCCL.cpp:616] [Rank {rank}] Watchdog caught collective "
        "operation timeout: WorkNCCL(SeqNum=48213, OpType=ALLREDUCE, NumelIn=262144, "
        f"NumelOut=262144, Timeout(ms)=600000) ran for {600_000 + rank % 997} milliseconds "
        "before timing out."
    )
