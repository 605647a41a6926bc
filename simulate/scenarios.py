"""Faults to inject into a simulated job, one per built-in rule, each saying what should fire.

Log lines are worded as PyTorch, NCCL and the NVIDIA driver word them, so the detectors are
tested against the text they will meet in production.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rankwatch.simulate.model import JobSpec, StepFrame

OOM_TEXT = (
    "Traceback (most recent call last):\n"
    '  File "/workspace/train.py", line 412, in <module>\n'
    "    loss.backward()\n"
    '  File "/usr/lib/python3/dist-packages/torch/_tensor.py", line 581, in backward\n'
    "    torch.autograd.backward(\n"
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.20 GiB. GPU {rank} has a "
    "total capacity of 79.15 GiB of which 1.02 GiB is free. Including non-PyTorch memory, this "
    "process has 78.11 GiB memory in use. Of the allocated memory 74.50 GiB is allocated by "
    "PyTorch, and 2.11 GiB is reserved by PyTorch but unallocated. If reserved but unallocated "
    "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
    "fragmentation."
)
ILLEGAL_ACCESS_TEXT = (
    "Traceback (most recent call last):\n"
    '  File "/workspace/train.py", line 398, in <module>\n'
    "    outputs = model(**batch)\n"
    "RuntimeError: CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\n"
    "For debugging consider passing CUDA_LAUNCH_BLOCKING=1"
)
WATCHDOG_TIMEOUT_TEXT = (
    "[Rank {rank}] Watchdog caught collective operation timeout: WorkNCCL(SeqNum={seq}, "
    "OpType=ALLREDUCE, NumelIn=262144, NumelOut=262144, Timeout(ms)=600000) ran for 600042 "
    "milliseconds before timing out."
)
WATCHDOG_DETAIL_TEXT = (
    "[Rank {rank}] Exception (either an error or timeout) detected by watchdog at work: {seq}, "
    "last enqueued NCCL work: {seq}, last completed NCCL work: {done}."
)
WATCHDOG_STUCK_TEXT = (
    "[Rank {rank}] ProcessGroupNCCL's watchdog got stuck for 480 seconds without making progress "
    "in monitoring enqueued collectives. This typically indicates a NCCL/CUDA API "
    "(e.g., CudaEventDestroy) hang blocking the watchdog, and could be triggered by another "
    "thread holding the GIL inside a CUDA api (for example, CudaEventDestroy), or other deadlock-"
    "prone behaviors."
)
NCCL_WARN_TEXT = (
    "node-{host}:31337:31390 [{local}] NCCL WARN NET/IB : Got completion from peer "
    "10.0.3.17<52311> with error 12, opcode 0, len 0, vendor err 129 (Recv) localGid "
    "::ffff:10.0.3.16 remoteGid ::ffff:10.0.3.17"
)


@dataclass(slots=True)
class SimState:
    """What faults have done to the job so far."""

    silent: set[int] = field(default_factory=set)  # ranks that send nothing any more
    stalled: bool = False  # no rank completes a step (a hang)
    ended: bool = False  # the job died: nothing more is sent


@dataclass(frozen=True, slots=True)
class Expectation:
    """An alert that must fire: its rule, scope, the ranks it must name, and how soon.

    ``within_s`` is measured in event time from the fault's start.
    """

    rule: str
    scope: str
    ranks: tuple[int, ...] = ()
    within_s: float = 10.0


@dataclass(frozen=True)
class Scenario:
    """A fault starting at ``at_step`` on ``rank``. Subclasses edit frames in :meth:`apply`."""

    at_step: int = 150
    rank: int = 3
    name: ClassVar[str] = "healthy"
    description: ClassVar[str] = "a healthy run: nothing may fire"
    #: Rules that may fire as consequences of the fault without counting as false positives.
    consequences: ClassVar[frozenset[str]] = frozenset()

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return ()

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        return None

    def active(self, frame: StepFrame) -> bool:
        return frame.step >= self.at_step

    def after_stall(self, spec: JobSpec) -> list[tuple[float, int, str, str]]:
        """Log records once the job stopped progressing: (seconds after, rank, level, text)."""
        return []


class Healthy(Scenario):
    pass


class NanLoss(Scenario):
    name = "nan_loss"
    description = "loss and grad norm turn NaN on every rank (all-reduced): one job alert"
    consequences = frozenset({"gradient_explosion"})

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("loss_explosion", "job", (), within_s=5 * spec.step_time_s),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if self.active(frame):
            for sample in frame.samples.values():
                sample.loss = float("nan")
                sample.gradient_norm = float("nan")


class LossDivergence(Scenario):
    name = "loss_divergence"
    description = "loss grows 60% a step from its level and stays far above it"
    consequences = frozenset({"gradient_explosion"})

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("loss_explosion", "job", (), within_s=20 * spec.step_time_s),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if self.active(frame):
            factor = 1.6 ** min(30, frame.step - self.at_step + 1)
            for sample in frame.samples.values():
                sample.loss *= factor


class GradientExplosion(Scenario):
    name = "gradient_explosion"
    description = "the global grad norm jumps 50x and stays there"
    consequences = frozenset({"loss_explosion"})

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("gradient_explosion", "job", (), within_s=8 * spec.step_time_s),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if self.active(frame):
            for sample in frame.samples.values():
                if sample.gradient_norm == sample.gradient_norm:  # keep overflow skips as they are
                    sample.gradient_norm *= 50.0


class InputStall(Scenario):
    name = "throughput_drop"
    description = "the input pipeline slows on every rank: throughput ~50% for good"
    # Every rank now waits for data half its step: an input-bound job, as that rule says.
    consequences = frozenset({"input_bound", "gpu_utilization"})

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        # The recent level (~5 steps) must stay low 3 steps and 5 s: ~10 steps of the slower job.
        return (Expectation("throughput_drop", "job", (), within_s=20 * spec.step_time_s),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if self.active(frame):
            for sample in frame.samples.values():
                sample.data_time_s += 0.9 * spec.step_time_s


class MemoryLeak(Scenario):
    name = "memory_leak"
    description = "one rank's memory grows 50 MB a step, through the allocator's sawtooth"

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("memory_growth", "rank", (self.rank,), within_s=60 * spec.step_time_s),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if self.active(frame):
            frame.samples[self.rank].memory_mb += 50.0 * (frame.step - self.at_step + 1)


class CudaOom(Scenario):
    name = "cuda_oom"
    description = "one rank runs out of GPU memory; torchrun then stops the job"
    consequences = frozenset({"job_stopped"})  # the job ends on it: its first failure

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("cuda_oom", "rank", (self.rank,), within_s=2 * spec.step_time_s),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if frame.step == self.at_step:
            frame.extra_logs.append((self.rank, "ERROR", OOM_TEXT.format(rank=self.rank)))
            state.ended = True


@dataclass(frozen=True)
class NcclTimeout(Scenario):
    name = "nccl_timeout"
    description = (
        "one rank stops inside a collective; after NCCL's 600 s timeout every other rank's "
        "watchdog reports it: one burst alert naming the rank that fell behind"
    )
    consequences = frozenset({"hang", "rank_silent", "nccl_error", "job_stopped"})

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("nccl_timeout_burst", "job", (), within_s=600 + 10),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if frame.step != self.at_step:
            return
        seq = 4 * self.at_step + 2
        for rank in frame.samples:
            if rank == self.rank:
                continue
            frame.extra_logs.append(
                (rank, "ERROR", WATCHDOG_TIMEOUT_TEXT.format(rank=rank, seq=seq))
            )
            frame.extra_logs.append(
                (rank, "ERROR", WATCHDOG_DETAIL_TEXT.format(rank=rank, seq=seq, done=seq - 1))
            )
        frame.extra_logs.append(
            (
                self.rank,
                "ERROR",
                WATCHDOG_DETAIL_TEXT.format(rank=self.rank, seq=seq - 1, done=seq - 2),
            )
        )
        state.stalled = True
        self._pending.extend(frame.extra_logs)
        frame.extra_logs.clear()

    _pending: list[tuple[int, str, str]] = field(default_factory=list)

    def after_stall(self, spec: JobSpec) -> list[tuple[float, int, str, str]]:
        # Nothing arrives while the collective waits; then every watchdog fires at once.
        return [(600.0 + 0.01 * i, r, lvl, text) for i, (r, lvl, text) in enumerate(self._pending)]


class Hang(Scenario):
    name = "hang"
    description = (
        "every rank stops progressing while the processes stay up and keep logging; "
        "rank 0's NCCL watchdog later reports it is stuck"
    )
    consequences = frozenset({"rank_silent", "job_stopped"})

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("hang", "job", (), within_s=600.0),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if self.active(frame):
            state.stalled = True

    def after_stall(self, spec: JobSpec) -> list[tuple[float, int, str, str]]:
        # The processes are alive: the trainer's own periodic log lines keep coming.
        out = [
            (
                30.0 * k + 0.01 * rank,
                rank,
                "INFO",
                f"[Rank {rank}] data loader prefetch queue: 8/8 batches ready",
            )
            for k in range(1, 21)
            for rank in range(spec.ranks)
        ]
        out.append((480.0, 0, "ERROR", WATCHDOG_STUCK_TEXT.format(rank=0)))
        return sorted(out)


class RankSilent(Scenario):
    name = "rank_silent"
    description = "one rank stops reporting (its producer died) while its peers keep stepping"
    consequences = frozenset({"hang"})

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("rank_silent", "rank", (self.rank,), within_s=90.0),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if self.active(frame):
            state.silent.add(self.rank)


class Straggler(Scenario):
    name = "straggler"
    description = "one GPU throttles: its compute time grows 35% and every rank waits for it"
    consequences = frozenset({"throughput_drop"})

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("straggler", "rank", (self.rank,), within_s=30 * spec.step_time_s),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if self.active(frame):
            frame.samples[self.rank].compute_time_s *= 1.35


class IllegalMemoryAccess(Scenario):
    name = "fatal_error"
    description = "a kernel on one rank hits an illegal memory access; the job dies"
    consequences = frozenset({"job_stopped"})

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        return (Expectation("fatal_error", "rank", (self.rank,), within_s=2 * spec.step_time_s),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if frame.step == self.at_step:
            frame.extra_logs.append((self.rank, "ERROR", ILLEGAL_ACCESS_TEXT))
            state.ended = True


class NcclWarning(Scenario):
    name = "nccl_error"
    description = "one rank's InfiniBand link reports a completion error once; training goes on"

    def expectations(self, spec: JobSpec) -> tuple[Expectation, ...]:
        # A lone record is decided after 10 s of quiet, in case other ranks' records follow
        # and make it a burst (one alert, not a lone one and then the burst).
        return (Expectation("nccl_error", "rank", (self.rank,), within_s=15.0),)

    def apply(self, frame: StepFrame, state: SimState, spec: JobSpec) -> None:
        if frame.step == self.at_step:
            text = NCCL_WARN_TEXT.format(
                host=self.rank // spec.ranks_per_host, local=self.rank % spec.ranks_per_host
            )
            frame.extra_logs.append((self.rank, "WARNING", text))


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        Healthy,
        NanLoss,
        LossDivergence,
        GradientExplosion,
        InputStall,
        MemoryLeak,
        CudaOom,
        NcclTimeout,
        Hang,
        RankSilent,
        Straggler,
        IllegalMemoryAccess,
        NcclWarning,
    )
}
