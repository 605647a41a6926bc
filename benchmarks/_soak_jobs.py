"""Healthy synthetic data-parallel training jobs with wide, randomized noise: the soak's input.

rankwatch's detectors were tuned on ``rankwatch.simulate``'s jobs. This generator shares no
code or parameter with it: each job draws its shape and its noise from a seeded generator
(8-1024 ranks, 0.2-10 s steps, compute and heavy-tailed data-wait jitter, slow nodes, GC
pauses, compile warm-up, fp16 overflow skips, allocator sawtooth, NVML utilization readings,
checkpoints, evaluation pauses of minutes, restarts from a checkpoint, elastic resizes,
duplicated and reordered delivery), wide on purpose: noise a detector was never tuned on
shows up as false alarms.

:func:`draw_job` draws a job's :class:`JobParams`; :class:`SoakJob` turns them into one
iterator of step and log events in (about) the order a worker would receive them. Faults
(``_soak_faults.py``) plug into the same generator through :class:`Injection`, so a faulty
job is a healthy one plus the fault. Log lines are worded as Hugging Face ``transformers``,
Megatron-LM, DeepSpeed, apex, NCCL and PyTorch word them (the last section, with the sources
of each wording), since the detectors will meet that text in production.

Per step the numbers of every rank are drawn at once with numpy; the cost that remains is one
pydantic model per event (measured: ``model_construct`` is slower than validation here).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from rankwatch.schemas import LogEvent, StepEvent

Event = StepEvent | LogEvent
Floats = NDArray[np.float64]

CAPACITY_MB = 81_920.0  # an 80 GB GPU
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z; each job starts a random number of days later
DEFAULT_MAX_EVENTS = 600_000
MIN_STEPS = 600  # long enough for checkpoints, evaluation passes and restarts to happen


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


@dataclass(frozen=True, slots=True)
class JobParams:
    """Everything drawn for one job (plain data: it goes into the report as it is)."""

    seed: int
    job_id: str
    start: float
    framework: str  # "hf" | "megatron" | "deepspeed": the wording of its log lines
    ranks: int
    ranks_per_host: int
    first_host: int  # hosts are gpu-node-{first_host + i:03d}
    steps: int
    step_s: float  # base step time
    compute_share: float
    data_share: float
    compute_jitter: float  # relative s.d. per rank-step
    data_jitter: float  # lognormal sigma per rank-step
    data_spike_p: float
    data_spike_alpha: float  # Pareto tail of the data-wait spikes
    slow_hosts: tuple[tuple[int, float], ...]  # (host index, compute slowness)
    pause_p: float  # GC / logging pause per rank-step
    warmup_steps: int
    warmup_factor: float
    send_jitter_s: float
    report_timing: bool  # compute_time_s and data_time_s too, not only step_time_s
    loss_start: float
    loss_floor: float
    loss_tau: float
    loss_noise: float
    loss_allreduced: bool  # every rank reports the same (all-reduced) loss
    loss_spike_p: float
    lr_peak: float
    lr_warmup: int
    lr_schedule: str  # cosine | linear | constant
    # Drawn from a stream of their own ([seed, 7]): the other draws stay as they were.
    lr_declared: bool  # steps declare the schedule (lr_schedule, lr_warmup_steps, lr_total_steps)
    lr_floor: float  # the decay ends at this fraction of the peak (a min LR; 0: none)
    grad_level: float
    grad_sigma: float
    grad_spike_p: float
    fp16: bool
    overflow_every: float
    startup_overflows: int
    overflow_value: str  # what the norm reads on a skipped step: inf | nan
    overflow_log_all_ranks: bool
    memory_report: str  # all | percent | none
    mem_level_mb: float
    mem_rank_spread: float
    saw_mb: float
    saw_beta: tuple[float, float]  # where in the sawtooth each reading falls
    accum_steps: int
    accum_mb: float
    mem_noise_mb: float
    mem_stepup_mb: float  # one-time rise at the first checkpoint or evaluation, stays
    stepup_all_ranks: bool
    headroom_mb: float  # reserved above the peak, reached after ~headroom_tau steps
    headroom_tau: float
    tokens_per_step: float
    ckpt_every: int
    ckpt_cost_s: float
    ckpt_logs: bool
    eval_every: int  # 0: no evaluation passes
    eval_s: tuple[float, float]
    eval_all_ranks: bool
    eval_phase: bool  # events carry phase= (as rw.phase("eval") sends)
    restarts: tuple[tuple[int, float], ...]  # (step the job dies at, seconds down)
    attempt_field: bool  # events carry attempt= (TORCHELASTIC_RESTART_COUNT)
    elastic: bool  # the first restart comes back one host smaller
    chatter_every: int
    warn_p: float
    dup_rate: float
    reorder_s: float
    nccl_env_warning: bool  # the image still sets NCCL_ASYNC_ERROR_HANDLING
    apex: bool  # hf: apex amp's loss scaler (logs its skips), not torch's GradScaler (silent)
    exit_warning: bool  # torch >= 2.4 warns on exit without destroy_process_group()
    # Drawn from a stream of their own ([seed, 3]): every draw above is what it was before.
    gpu_util: bool  # steps carry gpu_utilization (NVML's utilization.gpu, read by the producer)
    util_busy: float  # share of its compute time a rank's GPU runs kernels (launches, syncs)
    util_noise: float  # s.d. of one NVML reading, percentage points
    # Drawn from a stream of their own ([seed, 5]), like the three above.
    grad_local: bool  # ranks report their LOCAL norm (before the all-reduce, or their shard's)
    grad_local_spread: float  # s.d. of the log of a rank's local norm around the global one

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def draw_job(
    seed: int,
    *,
    max_events: int = DEFAULT_MAX_EVENTS,
    min_steps: int = MIN_STEPS,
    ranks: int | None = None,
    steps: int | None = None,
    restarts: bool = True,
    job_id: str | None = None,
) -> JobParams:
    """One healthy job from ``seed``: ranks x steps stays about under ``max_events`` (at least
    ``min_steps`` steps, fewer ranks if need be). Every draw is made whatever the overrides,
    so an override changes nothing else about the job."""
    rng = np.random.default_rng([seed, 0])
    u = rng.uniform
    per_host = 8 if rng.random() < 0.75 else 4
    room = int(0.95 * max_events)  # the rest for log records and duplicates
    top = max(8, min(1024, room // min_steps))
    drawn = _logu(rng, 8, top + 1)
    world = ranks or max(8, int(drawn) // per_host * per_host)
    hosts = max(1, world // per_host)
    budget = steps or max(min_steps, room // world)
    # Saves every 200-2000 steps and evaluations every 300-3000, but a short job still gets a
    # few of each: the interval is at most a third (a half) of its length.
    ckpt_every = int(min(_logu(rng, 200, 2000), max(50, budget // 3)))
    eval_every = int(min(_logu(rng, 300, 3000), max(60, budget // 2)))
    has_eval = rng.random() < 0.5
    restarting, two = rng.random() < 0.4, rng.random() < 0.3
    n_restarts = (2 if two else 1) if restarting and restarts else 0
    # Replayed steps (a restart goes back to the last checkpoint) count against the budget.
    n_steps = steps or max(min_steps, budget - n_restarts * ckpt_every // 2)
    ckpt_every = min(ckpt_every, max(50, n_steps // 3))
    stops = sorted(int(f * n_steps) for f in u(0.3, 0.95, 2))[:n_restarts]
    downs = u(60, 600, 2)
    # Per-host draws come from their own stream: their number depends on the job's size.
    per_host_rng = np.random.default_rng([seed, 2])
    slow_frac = u(0, 0.03)
    slowness = per_host_rng.uniform(0, 0.04, hosts)
    slow = np.flatnonzero(per_host_rng.random(hosts) < slow_frac).tolist()
    elastic = rng.random() < 0.25
    lo_eval = u(60, 200)
    mem_level = u(20_000, 70_000)
    saw = min(u(0.02, 0.2) * mem_level, CAPACITY_MB * 0.9 - mem_level - 6_000)
    report = rng.choice(["all", "percent", "none"], p=[0.7, 0.2, 0.1])
    fp16 = rng.random() < 0.3
    framework = str(rng.choice(["hf", "megatron", "deepspeed"]))
    lr_rng = np.random.default_rng([seed, 7])
    util_rng = np.random.default_rng([seed, 3])
    grad_rng = np.random.default_rng([seed, 5])
    return JobParams(
        seed=seed,
        job_id=job_id or f"soak-{seed}",
        start=START + 86_400 * float(u(0, 365)),
        framework=framework,
        ranks=world,
        ranks_per_host=per_host,
        first_host=int(rng.integers(1, 400)),
        steps=n_steps,
        step_s=_logu(rng, 0.2, 10),
        compute_share=u(0.85, 0.95),
        data_share=u(0.02, 0.08),
        compute_jitter=u(0.01, 0.05),
        data_jitter=u(0.10, 0.50),
        data_spike_p=u(0.001, 0.01),
        data_spike_alpha=u(1.5, 3.0),
        slow_hosts=tuple((h, float(slowness[h])) for h in slow),
        pause_p=u(0.0001, 0.005),
        warmup_steps=int(rng.integers(1, 6)),
        warmup_factor=u(5, 50),
        send_jitter_s=u(0, 0.05),
        report_timing=rng.random() < 0.9,
        loss_start=u(6, 11),
        loss_floor=u(1.5, 3.5),
        loss_tau=_logu(rng, 50, 3000),
        loss_noise=u(0.01, 0.06),
        loss_allreduced=rng.random() < 0.5,
        loss_spike_p=u(0.001, 0.01),
        lr_peak=_logu(rng, 1e-5, 1e-3),
        lr_warmup=int(u(0, 0.1) * n_steps),
        lr_schedule=str(rng.choice(["cosine", "linear", "constant"])),
        lr_declared=lr_rng.random() < 0.7,
        lr_floor=0.0 if lr_rng.random() < 0.4 else float(lr_rng.uniform(0.0, 0.1)),
        grad_level=_logu(rng, 0.1, 5),
        grad_sigma=u(0.1, 0.4),
        grad_spike_p=u(0.001, 0.01),
        fp16=fp16,
        overflow_every=_logu(rng, 100, 1000),
        # DeepSpeed starts its scale at 2**32 and halves it once per skipped step.
        startup_overflows=int(rng.integers(0, 17)) if framework == "deepspeed" else 0,
        overflow_value=str(rng.choice(["inf", "nan"])),
        overflow_log_all_ranks=rng.random() < 0.5,
        memory_report=str(report),
        mem_level_mb=mem_level,
        mem_rank_spread=u(0.005, 0.03),
        saw_mb=max(500.0, saw),
        saw_beta=(_logu(rng, 0.3, 30), _logu(rng, 0.3, 30)),
        accum_steps=int(rng.integers(1, 17)),
        accum_mb=u(0, 0.05) * mem_level,
        mem_noise_mb=u(0.001, 0.003) * CAPACITY_MB,
        mem_stepup_mb=u(100, 800),
        stepup_all_ranks=rng.random() < 0.5,
        headroom_mb=u(200, 3000),
        headroom_tau=u(10, 100),
        tokens_per_step=_logu(rng, 4096, 262_144),
        ckpt_every=ckpt_every,
        ckpt_cost_s=_logu(rng, 2, 60),
        ckpt_logs=rng.random() < 0.8,
        eval_every=eval_every if has_eval else 0,
        eval_s=(lo_eval, u(lo_eval, 360)),
        eval_all_ranks=rng.random() < 0.3,
        eval_phase=rng.random() < 0.4,
        restarts=tuple((s, float(d)) for s, d in zip(stops, downs, strict=False)),
        attempt_field=rng.random() < 0.5,
        elastic=elastic and n_restarts > 0 and hosts > 1,
        chatter_every=int(rng.integers(10, 101)),
        warn_p=u(0.0005, 0.005),
        dup_rate=u(0.005, 0.02),
        reorder_s=u(0.2, 1.5),
        nccl_env_warning=rng.random() < 0.3,
        apex=rng.random() < 0.5,
        exit_warning=rng.random() < 0.5,
        gpu_util=util_rng.random() < 0.6,
        util_busy=float(util_rng.uniform(0.85, 1.0)),
        util_noise=float(util_rng.uniform(1.0, 6.0)),
        grad_local=grad_rng.random() < 0.25,
        grad_local_spread=float(grad_rng.uniform(0.01, 0.2)),
    )


@dataclass(slots=True)
class Frame:
    """One step of every rank, handed to a fault's hooks to change (healthy jobs have none).

    ``timing`` sees compute and data before the step's wall time is taken; ``values`` sees the
    rest after it. Logs are (time, rank, level, message).
    """

    step: int
    world: int
    t_start: float
    step_s: float
    compute: Floats
    data: Floats
    hosts: list[str]
    t_end: float = 0.0
    loss: Floats = field(default_factory=lambda: np.zeros(0))
    grad: Floats = field(default_factory=lambda: np.zeros(0))
    alloc: Floats = field(default_factory=lambda: np.zeros(0))  # MB, reported or not
    logs: list[tuple[float, int, str, str]] = field(default_factory=list)
    muted: set[int] = field(default_factory=set)  # ranks that send nothing from now on
    dies: bool = False  # no rank reports this step: the fault's logs are the job's last events


class Injection:
    """A fault's hooks into the generator; the subclasses are in ``_soak_faults.py``."""

    rank: int = 0
    start_step: int = 0
    start_time: float | None = None  # event time the fault began: the step's start

    def timing(self, frame: Frame) -> None:
        """Change compute or data time before the step's wall time is taken."""

    def values(self, frame: Frame) -> None:
        """Change loss, grad, memory; add logs; set ``muted`` or ``dies``."""


class SoakJob:
    """The events of one job, in arrival order; counts what it produced while iterating."""

    def __init__(self, params: JobParams, fault: Injection | None = None) -> None:
        self.p = params
        self.fault = fault
        self.rng = np.random.default_rng([params.seed, 1])
        self.util_rng = np.random.default_rng([params.seed, 4])  # self.rng's draws: as they were
        self.grad_rng = np.random.default_rng([params.seed, 6])  # the same
        self.rank_seconds = 0.0  # ranks x time up (downtime between attempts excluded)
        self.step_events = 0
        self.log_events = 0
        self.duplicates = 0
        self.attempts = 0
        self.clean_end = False
        #: (from, to, what) of each stretch that is not steady training (warm-up, a restart's
        #: replay, a checkpoint save, an evaluation pass): where an alert came from.
        self.timeline: list[tuple[float, float, str]] = []
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self._attempt = 0
        self._phase = "train"
        self._hosts: list[str] = []
        self._muted: set[int] = set()
        self._last_step_arrival: Floats = np.zeros(0)
        self._last_log_arrival: dict[int, float] = {}
        self._latest = 0.0

    # -- delivery ----------------------------------------------------------------------------
    def _delays(self, n: int) -> Floats:
        # Mostly tens of ms, now and then up to reorder_s: local reordering across ranks.
        return 0.005 + self.p.reorder_s * self.rng.beta(1.0, 5.0, n)

    def _push_steps(self, events: list[StepEvent], ranks: list[int], ts: Floats) -> None:
        idx = np.asarray(ranks, dtype=np.int64)
        # One producer per rank sends its steps in order: a rank's own steps never overtake.
        arrival = np.maximum(ts + self._delays(len(ts)), self._last_step_arrival[idx] + 1e-6)
        self._last_step_arrival[idx] = arrival
        dups = np.flatnonzero(self.rng.random(len(ts)) < self.p.dup_rate)
        later = arrival[dups] + self.rng.uniform(0.01, 2.0, len(dups))  # a producer's retry
        heap, seq = self._heap, self._seq
        for a, e in zip(arrival.tolist(), events, strict=True):
            heapq.heappush(heap, (a, next(seq), e))
        for i, a in zip(dups.tolist(), later.tolist(), strict=True):
            heapq.heappush(heap, (a, next(seq), events[i]))
        self.step_events += len(events) + len(dups)
        self.duplicates += len(dups)
        if len(ts):
            self._latest = max(self._latest, float(ts.max()))

    def _log(
        self, ts: float, rank: int, level: str, message: str, logger: str, step: int | None
    ) -> None:
        if rank in self._muted:
            return
        extra: dict[str, Any] = {}
        if self.p.attempt_field:
            extra["attempt"] = self._attempt
        if self.p.eval_phase:
            extra["phase"] = self._phase
        event = LogEvent(
            job_id=self.p.job_id,
            rank=rank,
            host=self._hosts[rank],
            timestamp=ts,
            level=level,
            message=message,
            logger=logger,
            step=step,
            **extra,
        )
        arrival = max(ts + float(self._delays(1)[0]), self._last_log_arrival.get(rank, 0) + 1e-6)
        self._last_log_arrival[rank] = arrival
        heapq.heappush(self._heap, (arrival, next(self._seq), event))
        self.log_events += 1
        if self.rng.random() < self.p.dup_rate:
            heapq.heappush(self._heap, (arrival + 0.5, next(self._seq), event))
            self.log_events += 1
            self.duplicates += 1
        self._latest = max(self._latest, ts)

    def _drain(self, safe: float) -> Iterator[Event]:
        """What arrived by ``safe``: every event still to be made is younger than that."""
        heap = self._heap
        while heap and heap[0][0] <= safe:
            yield heapq.heappop(heap)[2]

    # -- the job -----------------------------------------------------------------------------
    def _plan(self) -> list[tuple[int, int, float]]:
        """(first step, last step, seconds down before) of each attempt."""
        p = self.p
        out: list[tuple[int, int, float]] = []
        first, down = 1, 0.0
        for stop, downtime in p.restarts:
            if stop < first + 10:
                continue
            out.append((first, stop, down))
            # Back at the last checkpoint completed before the step it died in.
            first, down = (stop - 1) // p.ckpt_every * p.ckpt_every + 1, downtime
        out.append((first, p.steps, down))
        return out

    def events(self) -> Iterator[Event]:
        p, rng = self.p, self.rng
        all_hosts = [f"gpu-node-{p.first_host + h:03d}" for h in range(p.ranks // p.ranks_per_host)]
        host_ids = list(range(len(all_hosts)))
        t, stop = p.start, 0
        for k, (first, last, down) in enumerate(self._plan()):
            self._attempt, self.attempts = k, k + 1
            if k == 1 and p.elastic:  # torchrun --nnodes MIN:MAX: back without one host
                del host_ids[int(rng.integers(len(host_ids)))]
            world = len(host_ids) * p.ranks_per_host
            self._hosts = [all_hosts[host_ids[r // p.ranks_per_host]] for r in range(world)]
            self._last_step_arrival = np.full(world, -math.inf)
            t += down
            t_up = t
            t = self._startup(t, world, k, first)
            yield from self._drain(t)
            t, over = yield from self._steps(t, first, last, world, host_ids, (t_up, stop))
            self.rank_seconds += world * (self._latest - t_up)
            stop = last
            if over:
                break
        yield from self._drain(math.inf)

    def _startup(self, t: float, world: int, attempt: int, first: int) -> float:
        """Processes start, NCCL initialises, rank 0 says what it runs (or resumes)."""
        p, rng = self.p, self.rng
        boot = float(rng.uniform(5, 60))  # imports, model load, NCCL init
        pids = rng.integers(10_000, 99_999, world).tolist()
        when = (t + np.sort(rng.uniform(1, boot, (world, 3)), axis=1)).tolist()
        for r in range(world):
            if p.nccl_env_warning:
                self._log(when[r][0] - 0.1, r, "WARNING", NCCL_ENV_WARNING, "torch", None)
            for i, line in enumerate(nccl_init(self._hosts[r], pids[r], r, world)):
                self._log(when[r][i], r, "INFO", line, "NCCL", None)
        if first > 1:
            lines = say(p, "resume", ckpt=first - 1)
        else:
            lines = say(p, "start", examples=512 * p.steps)
        for i, line in enumerate(lines):
            self._log(t + boot + 0.01 * i, 0, "INFO", line, p.framework, first - 1)
        return t + boot + 0.5

    def _steps(
        self,
        t: float,
        first: int,
        last: int,
        world: int,
        host_ids: list[int],
        since: tuple[float, int],
    ) -> Generator[Event, None, tuple[float, bool]]:
        """One attempt's steps (and its evaluation passes): (when it ended, whether the job is
        over: a clean end, or a fault that killed it). ``since``: when its processes started,
        and the step the attempt before died at (0: none)."""
        p, rng, fault = self.p, self.rng, self.fault
        slow = dict(p.slow_hosts)
        host_slow = np.array([slow.get(h, 0.0) for h in host_ids]).repeat(p.ranks_per_host)
        rank_bias = (1 + host_slow) * (1 + rng.normal(0, 0.005, world))
        level = p.mem_level_mb * (1 + rng.normal(0, p.mem_rank_spread, world))
        stepup = np.zeros(world)
        reserved = np.zeros(world)
        base_c, base_d = p.step_s * p.compute_share, p.step_s * p.data_share
        comm = p.step_s * (1 - p.compute_share - p.data_share)
        warm = p.warmup_factor * rng.uniform(0.6, 1.4, world)
        # The loss scale is restored from the checkpoint: it calibrates only on a fresh start.
        overflow_run = p.startup_overflows if first == 1 else 0
        scale = 2.0**32 if p.startup_overflows else 2.0**16
        clean, stepped, aborted = 0, False, last != p.steps
        for step in range(first, last + 1):
            i = step - first
            compute = base_c * rank_bias * (1 + p.compute_jitter * rng.standard_normal(world))
            pauses = rng.random(world) < p.pause_p  # GC, a synchronous log flush
            compute[pauses] *= 1 + rng.uniform(0.2, 1.0, int(pauses.sum()))
            if i < p.warmup_steps:  # compile and autotuning, different on each rank
                compute *= 1 + (warm - 1) * 0.3**i
            np.maximum(compute, 1e-4, out=compute)
            data = base_d * rng.lognormal(0, p.data_jitter, world)
            spikes = rng.random(world) < p.data_spike_p
            # Several x at the median, now and then tens of x (capped: a stall, not an outage).
            data[spikes] *= np.minimum(
                1 + 2 * rng.pareto(p.data_spike_alpha, int(spikes.sum())), 30
            )
            frame = Frame(step, world, t, p.step_s, compute, data, self._hosts)
            if fault is not None:
                fault.timing(frame)
            # Synchronous: everyone waits for the slowest at the all-reduce.
            wall = float((compute + data).max()) + comm * (1 + 0.05 * abs(rng.standard_normal()))
            save = 0.0
            if step % p.ckpt_every == 0:  # rank 0 writes, every rank waits in the barrier
                save = p.ckpt_cost_s * float(rng.uniform(0.8, 1.25))
                wall += save
            frame.t_end = t_end = t + wall
            util = None
            if p.gpu_util:  # NCCL's kernels count as busy; waits for data and a save do not
                busy = compute * p.util_busy
                if i < p.warmup_steps:  # compiling and autotuning on the host
                    busy *= self.util_rng.uniform(0.05, 0.5, world)
                busy += np.maximum(0.0, wall - save - compute - data)
                noise = self.util_rng.normal(0, p.util_noise, world)
                util = np.clip(100 * busy / wall + noise, 0.0, 100.0)
            curve = loss_curve(p, step)
            spike = 1 + float(rng.uniform(0.1, 0.8)) if rng.random() < p.loss_spike_p else 1.0
            if p.loss_allreduced:
                loss = np.full(world, curve * spike * rng.lognormal(0, p.loss_noise))
            else:
                loss = curve * rng.lognormal(0, 2 * p.loss_noise, world)
                loss[rng.random(world) < 0.1] *= spike  # a hard batch on some ranks
            g = p.grad_level * (0.6 + 0.4 * math.exp(-step / 300)) * rng.lognormal(0, p.grad_sigma)
            if rng.random() < p.grad_spike_p:
                g *= float(rng.uniform(2, 4))
            if p.fp16 and overflow_run == 0 and rng.random() < 1 / p.overflow_every:
                overflow_run = 1 if rng.random() < 0.85 else 2  # hysteresis: two in a row
            overflow = p.fp16 and overflow_run > 0
            if overflow:
                overflow_run -= 1
                g = math.inf if p.overflow_value == "inf" else math.nan
            frame.loss, frame.grad = loss, np.full(world, g)
            if p.grad_local and not overflow:  # an overflow skip is global: the scaler's check
                frame.grad = g * self.grad_rng.lognormal(0, p.grad_local_spread, world)
            # Memory: level + sawtooth read at a random phase + accumulation cycle + noise.
            phase = rng.beta(p.saw_beta[0], p.saw_beta[1], world)
            cycle = p.accum_mb * (step % p.accum_steps) / p.accum_steps
            noise = rng.normal(0, p.mem_noise_mb, world)
            frame.alloc = level + stepup + p.saw_mb * phase + cycle + noise
            if fault is not None:
                fault.values(frame)
            self._muted |= frame.muted
            # Reserved: the allocator's cache grows to a plateau early and never shrinks.
            grow = p.headroom_mb * (1 - math.exp(-(i + 1) / p.headroom_tau))
            target = np.maximum(level + stepup + p.saw_mb + p.accum_mb + grow, frame.alloc)
            reserved = np.minimum(np.maximum(reserved, np.ceil(target / 2) * 2), CAPACITY_MB)
            if not frame.dies:
                reporting = [r for r in range(world) if r not in self._muted]
                if step == last and aborted:  # killed mid-step: some ranks never report it
                    cut = rng.uniform(0.3, 1.0)
                    reporting = [r for r in reporting if rng.random() < cut]
                ts = t_end + p.send_jitter_s * rng.random(world)
                self._emit_steps(frame, reporting, ts, wall, reserved, util)
            for when, rank, lvl, msg in frame.logs:
                self._log(when, rank, lvl, msg, "train", step)
            if frame.dies:
                return t_end, True
            if i == min(p.warmup_steps + 10, last - first):
                self.timeline.append((since[0], t_end, "warm-up" if first == 1 else "restart"))
            if step == since[1]:
                self.timeline.append((since[0], t_end, f"restart, replaying {first}-{step}"))
            if save:
                self.timeline.append((t_end - save, t_end, "checkpoint"))
            self._step_logs(frame, save, float(loss[0]), g, overflow, scale)
            if overflow:
                scale, clean = max(scale / 2, 1.0), 0
            else:
                clean += 1
                if clean % 1000 == 0:  # the dynamic scaler probes a larger scale
                    scale = min(scale * 2, 2.0**24)
            t = t_end
            yield from self._drain(t)
            evaluate = p.eval_every > 0 and step % p.eval_every == 0 and step < last
            if (save or evaluate) and not stepped:  # buffers the first save/eval leaves behind
                stepped = True
                stepup += p.mem_stepup_mb * (
                    np.ones(world) if p.stepup_all_ranks else (np.arange(world) == 0)
                )
            if evaluate:
                t = self._evaluate(t, step, world)
                self.timeline.append((t_end, t, "eval pass"))
                yield from self._drain(t)
        if aborted:
            return t, False
        self._finish(t, world)
        self.clean_end = True
        return t, True

    def _emit_steps(
        self,
        frame: Frame,
        reporting: list[int],
        ts: Floats,
        wall: float,
        reserved: Floats,
        util: Floats | None = None,
    ) -> None:
        p = self.p
        common: dict[str, Any] = {
            "job_id": p.job_id,
            "world_size": frame.world,
            "step": frame.step,
            "learning_rate": learning_rate(p, frame.step),
            **(lr_declaration(p) if p.lr_declared else {}),
            "step_time_s": wall,
            "throughput_tokens_per_sec": p.tokens_per_step / wall,
        }
        if p.attempt_field:
            common["attempt"] = self._attempt
        if p.eval_phase:
            common["phase"] = "train"
        cols: list[tuple[str, list[float]]] = [
            ("loss", frame.loss.tolist()),
            ("gradient_norm", frame.grad.tolist()),
        ]
        if p.report_timing:
            cols.append(("compute_time_s", frame.compute.tolist()))
            cols.append(("data_time_s", frame.data.tolist()))
        if p.memory_report == "all":
            cols.append(("gpu_memory_allocated_mb", np.clip(frame.alloc, 0, CAPACITY_MB).tolist()))
            cols.append(("gpu_memory_reserved_mb", reserved.tolist()))
        if p.memory_report != "none":
            cols.append(("gpu_memory_usage", (reserved / CAPACITY_MB * 100).tolist()))
        if util is not None:
            cols.append(("gpu_utilization", util.tolist()))
        hosts, when = self._hosts, ts.tolist()
        events = [
            StepEvent(
                rank=r, host=hosts[r], timestamp=when[r], **common, **{k: v[r] for k, v in cols}
            )
            for r in reporting
        ]
        self._push_steps(events, reporting, ts[reporting])

    def _step_logs(
        self, frame: Frame, save: float, loss: float, grad: float, overflow: bool, scale: float
    ) -> None:
        p, rng, step, t_end = self.p, self.rng, frame.step, frame.t_end
        if overflow and (line := overflow_line(p, scale)) is not None:
            for r in range(frame.world) if p.overflow_log_all_ranks else (0,):
                self._log(t_end + 0.001 * r, r, "INFO", line.format(rank=r), "loss_scaler", step)
        if save and p.ckpt_logs:
            before, after = say(p, "save", step=step)
            self._log(t_end - save, 0, "INFO", before, "checkpoint", step)
            self._log(t_end - 0.01, 0, "INFO", after, "checkpoint", step)
        if step % p.chatter_every == 0:
            (line,) = say(
                p,
                "progress",
                step=step,
                loss=loss,
                grad=grad,
                lr=learning_rate(p, step),
                epoch=step / p.steps,
                samples=512 * step,
                ms=1000 * (t_end - frame.t_start),
                scale=scale if p.fp16 else 1.0,
            )
            self._log(t_end + 0.02, 0, "INFO", line, p.framework, step)
        if rng.random() < p.warn_p:
            r = int(rng.integers(frame.world))
            message = WARNINGS[int(rng.integers(len(WARNINGS)))]
            when = frame.t_start + float(rng.uniform(0, t_end - frame.t_start))
            self._log(when, r, "WARNING", message, "py.warnings", step)

    def _evaluate(self, t: float, step: int, world: int) -> float:
        """Minutes without steps; rank 0 (or every rank) logs as its library does."""
        p, rng = self.p, self.rng
        seconds = float(rng.uniform(*p.eval_s))
        talkers = range(world) if p.eval_all_ranks else range(1)
        if p.eval_phase:  # rw.phase("eval"): every rank's producer says so
            self._phase = "eval"
            for r in range(world):
                self._log(t + 0.01, r, "INFO", "phase eval begins", "rankwatch", step)
        batches = int(rng.integers(50, 2000))
        for r in talkers:
            for i, line in enumerate(say(p, "eval_begin", examples=8 * batches)):
                self._log(t + 0.05 + 0.001 * i, r, "INFO", line, "eval", step)
        done = float(rng.uniform(10, 30))
        while done < seconds:
            i, left = max(1, int(done / seconds * batches)), seconds - done
            (line,) = say(
                p,
                "eval_progress",
                pct=int(100 * done / seconds),
                bar="#" * int(10 * done / seconds),
                i=i,
                n=batches,
                elapsed=mmss(done),
                left=mmss(left),
                rate=i / done,
            )
            for r in talkers:
                self._log(t + done + 0.001 * r, r, "INFO", line, "eval", step)
            done += float(rng.uniform(10, 30))
        loss = 1.03 * loss_curve(p, step)
        (line,) = say(
            p,
            "eval_end",
            step=step,
            loss=loss,
            ppl=math.exp(loss),
            seconds=seconds,
            rate=8 * batches / seconds,
            epoch=step / p.steps,
            rule="-" * 100,
        )
        for r in talkers:
            self._log(t + seconds, r, "INFO", line, "eval", step)
        if p.eval_phase:
            self._phase = "train"
            for r in range(world):
                self._log(t + seconds + 0.01, r, "INFO", "phase eval ends", "rankwatch", step)
        return t + seconds + 0.05

    def _finish(self, t: float, world: int) -> None:
        p = self.p
        stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines = say(p, "finish", runtime=t - p.start, loss=loss_curve(p, p.steps), stamp=stamp)
        for i, line in enumerate(lines):
            self._log(t + 0.5 + 0.01 * i, 0, "INFO", line, p.framework, p.steps)
        if p.exit_warning:
            for r in range(world):
                self._log(t + 1.0, r, "WARNING", PG_NOT_DESTROYED.format(rank=r), "torch", None)


# -- wording: as the libraries write it -------------------------------------------------------


def learning_rate(p: JobParams, step: int) -> float:
    if step < p.lr_warmup:
        return p.lr_peak * (step + 1) / p.lr_warmup
    progress = min(1.0, (step - p.lr_warmup) / max(1, p.steps - p.lr_warmup))
    low = p.lr_floor * p.lr_peak
    if p.lr_schedule == "cosine":
        return low + (p.lr_peak - low) * 0.5 * (1 + math.cos(math.pi * progress))
    if p.lr_schedule == "linear":
        return p.lr_peak - (p.lr_peak - low) * progress
    return p.lr_peak


def lr_declaration(p: JobParams) -> dict[str, Any]:
    """The schedule as the Hugging Face callback declares it (the Trainer's names)."""
    name = "constant_with_warmup" if p.lr_schedule == "constant" and p.lr_warmup else p.lr_schedule
    return {"lr_schedule": name, "lr_warmup_steps": p.lr_warmup, "lr_total_steps": p.steps}


def loss_curve(p: JobParams, step: int) -> float:
    return p.loss_floor + (p.loss_start - p.loss_floor) / math.pow(1 + step / p.loss_tau, 0.7)


_BUS_IDS = ("18000", "2a000", "3a000", "5d000", "9a000", "ab000", "ba000", "db000")


def nccl_init(host: str, pid: int, rank: int, world: int) -> list[str]:
    """NCCL_DEBUG=INFO chatter at communicator init (as NCCL 2.18-2.21 words it)."""
    local, node = rank % 8, int(host.rsplit("-", 1)[-1])
    head, ip = f"{host}:{pid}:{pid + 55} [{local}] NCCL INFO", f"10.0.{node // 256}.{node % 256}"
    return [
        f"{head} Bootstrap : Using eth0:{ip}<0>",
        f"{head} NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB eth0:{ip}<0>",
        f"{head} comm 0x{0x55D1C000 + 64 * rank:x} rank {rank} nranks {world} cudaDev {local} "
        f"busId {_BUS_IDS[local]} commId 0x{0x3F2A9C11 * (world + 7) % 2**32:x} - Init COMPLETE",
    ]


NCCL_ENV_WARNING = (
    "[W Utils.hpp:164] Warning: Environment variable NCCL_ASYNC_ERROR_HANDLING is deprecated; "
    "use TORCH_NCCL_ASYNC_ERROR_HANDLING instead (function getCvarInt)"
)
PG_NOT_DESTROYED = (
    "[rank{rank}]:[W ProcessGroupNCCL.cpp:1250] Warning: WARNING: process group has NOT been "
    "destroyed before we destruct ProcessGroupNCCL. On normal program exit, the application "
    "should call destroy_process_group to ensure that any pending NCCL operations have finished "
    "in this process. In rare cases this process can exit before this point and block the "
    "progress of another member of the process group. This constraint has always been present,  "
    "but this warning has only been added since PyTorch 2.4 (function operator())"
)
#: Benign warnings of real jobs (transformers, tokenizers, DDP's reducer, torch, wandb, dynamo);
#: some say "error" or "timeout" and are still nothing to page anyone about.
WARNINGS = (
    "Token indices sequence length is longer than the specified maximum sequence length for "
    "this model (4127 > 4096). Running this sequence through the model will result in indexing "
    "errors",
    "huggingface/tokenizers: The current process just got forked, after parallelism has "
    "already been used. Disabling parallelism to avoid deadlocks...",
    "[W reducer.cpp:1389] Warning: find_unused_parameters=True was specified in DDP "
    "constructor, but did not find any unused parameters in the forward pass. This flag results "
    "in an extra traversal of the autograd graph every iteration,  which can adversely affect "
    "performance. (function operator())",
    "[W reducer.cpp:325] Warning: Grad strides do not match bucket view strides. This may "
    "indicate grad was not created according to the gradient layout contract, or that the "
    "param's strides changed since DDP was constructed.  This is not an error, but may impair "
    "performance.",
    "/usr/local/lib/python3.11/dist-packages/torch/utils/checkpoint.py:91: UserWarning: None "
    "of the inputs have requires_grad=True. Gradients will be None",
    "wandb: Network error (ReadTimeout), entering retry loop.",
    "torch._dynamo hit config.cache_size_limit (8)\n   function: 'forward' "
    "(/workspace/model.py:212)\n   last reason: 0/7: tensor 'L['x']' size mismatch at index 1. "
    "expected 2048, actual 1987",
    "Could not estimate the number of tokens of the input, floating-point operations will not "
    "be computed",
    "`use_cache=True` is incompatible with gradient checkpointing. Setting `use_cache=False`.",
    "Skipping corrupted sample 4711 in shard /data/shard-00042.tar: unexpected end of stream",
)

# Per library, the lines of each moment of a job (str.format templates). Sources:
# hf: transformers Trainer (_inner_training_loop, _load_from_checkpoint, _save_checkpoint,
# evaluation_loop, log); megatron: Megatron-LM megatron/training/{training,checkpointing}.py
# (training_log, evaluate_and_print_results, save_checkpoint, load_checkpoint); deepspeed:
# deepspeed/runtime/checkpoint_engine/torch_checkpoint_engine.py (create, commit) and
# runtime/engine.py (_report_progress).
_SAY: dict[str, dict[str, tuple[str, ...]]] = {
    "hf": {
        "start": (
            "***** Running training *****",
            "  Num examples = {examples:,}",
            "  Num Epochs = 1",
            "  Instantaneous batch size per device = 8",
            "  Total optimization steps = {steps:,}",
        ),
        "resume": (
            "Loading model from /ckpt/checkpoint-{ckpt}.",
            "***** Running training *****",
            "  Continuing training from checkpoint, will skip to saved global_step",
            "  Continuing training from epoch 0",
            "  Continuing training from global step {ckpt}",
        ),
        "save": (
            "Saving model checkpoint to /ckpt/checkpoint-{step}",
            "Model weights saved in /ckpt/checkpoint-{step}/model.safetensors",
        ),
        "progress": (
            "{{'loss': {loss:.4f}, 'grad_norm': {grad:.4f}, 'learning_rate': {lr:.4e}, "
            "'epoch': {epoch:.2f}}}",
        ),
        "eval_begin": (
            "***** Running Evaluation *****",
            "  Num examples = {examples}",
            "  Batch size = 8",
        ),
        # the tqdm bar of evaluation_loop, as a log line
        "eval_progress": ("{pct:3d}%|{bar:10}| {i}/{n} [{elapsed}<{left}, {rate:.2f}it/s]",),
        "eval_end": (
            "{{'eval_loss': {loss:.4f}, 'eval_runtime': {seconds:.1f}, "
            "'eval_samples_per_second': {rate:.3f}, 'epoch': {epoch:.2f}}}",
        ),
        "finish": (
            "{{'train_runtime': {runtime:.1f}, 'train_loss': {loss:.4f}, 'epoch': 1.0}}",
            "Training completed. Do not forget to share your model on huggingface.co/models =)",
        ),
    },
    "megatron": {
        "start": ("> building train, validation, and test datasets ...", "training ..."),
        "resume": (
            " loading checkpoint from /ckpt at iteration {ckpt}",
            "  successfully loaded checkpoint from /ckpt [ t 0/1, p 0/1 ] at iteration {ckpt}",
        ),
        "save": (
            "saving checkpoint at iteration {step:7d} to /ckpt",
            "  successfully saved checkpoint at iteration {step:7d} to /ckpt",
        ),
        "progress": (
            " iteration {step:8d}/{steps:8d} | consumed samples: {samples:12d} | elapsed time per "
            "iteration (ms): {ms:.1f} | learning rate: {lr:.6E} | global batch size:   512 | lm "
            "loss: {loss:.6E} | loss scale: {scale:.1f} | grad norm: {grad:.3f} | number of "
            "skipped iterations:   0 | number of nan iterations:   0 |",
        ),
        "eval_begin": ("Evaluating on {examples} samples",),
        "eval_progress": ("Evaluating iter {i}/{n}",),
        "eval_end": (
            "{rule}\n validation loss at iteration {step} | lm loss value: {loss:.6E} | lm loss "
            "PPL: {ppl:.6E} | \n{rule}",
        ),
        "finish": ("[after training is done] datetime: {stamp} ",),
    },
    "deepspeed": {
        "start": ("DeepSpeed info: version=0.16.4, git-hash=unknown, git-branch=unknown",),
        "resume": ("Loading checkpoint from /ckpt/global_step{ckpt}",),
        "save": (
            "[Torch] Checkpoint global_step{step} is about to be saved!",
            "[Torch] Checkpoint global_step{step} is ready now!",
        ),
        "progress": ("[Rank 0] step={step}, skipped=0, lr=[{lr}], mom=[(0.9, 0.95)]",),
        # Megatron-DeepSpeed evaluates as Megatron does
        "eval_begin": ("Evaluating on {examples} samples",),
        "eval_progress": ("Evaluating iter {i}/{n}",),
        "eval_end": (
            "{rule}\n validation loss at iteration {step} | lm loss value: {loss:.6E} | lm loss "
            "PPL: {ppl:.6E} | \n{rule}",
        ),
        "finish": ("Training completed.",),
    },
}


def say(p: JobParams, moment: str, **values: Any) -> list[str]:
    """The job's library's lines for ``moment`` (keys of ``_SAY``), filled in."""
    return [line.format(steps=p.steps, **values) for line in _SAY[p.framework][moment]]


def overflow_line(p: JobParams, scale: float) -> str | None:
    """The skip message of the job's loss scaler, ``{rank}`` left to fill; None where it logs
    none (Megatron counts skips in its iteration line; torch's GradScaler is silent)."""
    if p.framework == "deepspeed":
        # deepspeed/runtime/fp16/loss_scaler.py, DynamicLossScaler.update_scale
        return (
            "[deepspeed] OVERFLOW! Rank {rank} Skipping step. Attempted loss scale: "
            f"{int(scale)}, reducing to {int(max(scale / 2, 1))}"
        )
    if p.framework == "hf" and p.apex:
        # apex/amp/handle.py, scale_loss's skip_step
        return (
            f"Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to {scale / 2}"
        )
    return None


def mmss(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"
