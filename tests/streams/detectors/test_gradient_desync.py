"""gradient_desync through the engine: the fault and its look-alikes.

A rank whose norm (or all-reduced loss) leaves an agreeing majority fires on that rank; bf16
rounding between ranks, jobs whose ranks report LOCAL norms or losses, and overflow skips on
every rank don't. A real 4-rank gloo DDP job under torchrun, one rank skipping the gradient
all-reduce, is caught on that rank. Its frame path leaves the state and ticks on_step leaves.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import noisy_steps
import numpy as np
import pytest
from synth import T0, Fault, both, global_norm, healthy_run, run_engine

from rankwatch.schemas import Alert, StepEvent
from rankwatch.simulate import JobSpec, simulate
from rankwatch.simulate.scenarios import SCENARIOS
from rankwatch.streams import DetectorConfigError, Engine
from rankwatch.streams.detectors.gradient_desync import GradientDesync, GradientDesyncConfig
from rankwatch.streams.detectors.gradient_vanishing import (
    GradientVanishing,
)
from rankwatch.streams.frames.testing import (
    assert_job_frames_match_scalar,
)


def engine(*detectors: Any) -> Engine:
    return Engine(list(detectors) or [GradientVanishing(), GradientDesync()])


def firing(alerts: list[Alert], rule: str | None = None) -> list[Alert]:
    return [a for a in alerts if a.status == "firing" and (rule is None or a.rule == rule)]


# -- gradient_desync -------------------------------------------------------------------------


def desync(
    rank_: int, from_step: int, to_step: int = 10**9, metric: str = "gradient_norm"
) -> Fault:
    """``rank_`` stops taking part in the all-reduce: its value is its own from then on."""

    def fault(rank: int, step: int, m: dict[str, Any]) -> None:
        if rank == rank_ and from_step <= step < to_step:
            m[metric] *= random.Random(step).lognormvariate(0.3, 0.2)

    return fault


def bf16(x: float) -> float:
    """``x`` rounded to bfloat16 (round to nearest even on the float32 bits)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", x))
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def test_a_rank_leaving_an_agreeing_majority_is_named_then_resolved() -> None:
    fault = both(global_norm(), desync(5, 150, 260))
    alerts = run_engine(engine(), healthy_run(ranks=8, steps=320, fault=fault))
    [alert] = firing(alerts)
    assert (alert.rule, alert.scope, alert.ranks, alert.step) == (
        "gradient_desync",
        "rank",
        [5],
        150,
    )
    assert alert.severity == "critical"
    assert "rank 5 (node0) reports gradient norm" in alert.summary
    assert "7 of 8 ranks agree on" in alert.summary and "skipping a collective" in alert.summary
    assert alert.evidence["relative_difference"] > 0.02
    assert alert.first_seen.timestamp() < T0 + 156  # 5 flagged steps (a tick later at most)
    [resolved] = [a for a in alerts if a.status == "resolved"]
    assert resolved.alert_id == alert.alert_id and resolved.last_seen.timestamp() < T0 + 270


def test_bf16_rounding_and_summation_order_between_ranks_never_fire() -> None:
    # Each rank sums the norm in its own order (a relative error of up to 2e-3) and rounds it
    # to bf16: neighbouring bf16 values, up to 0.8% apart.
    def noise(rank: int, step: int, m: dict[str, Any]) -> None:
        g = m["gradient_norm"]
        if math.isfinite(g):
            m["gradient_norm"] = bf16(
                g * (1 + random.Random(step * 97 + rank).uniform(-2e-3, 2e-3))
            )

    fault = both(global_norm(), noise)
    alerts = run_engine(engine(), healthy_run(ranks=16, steps=600, fault=fault))
    assert firing(alerts) == []
    by_step: dict[int, set[float | None]] = {}
    for e in healthy_run(ranks=16, steps=100, fault=fault):
        by_step.setdefault(e.step, set()).add(e.gradient_norm)
    assert sum(len(v) > 1 for v in by_step.values()) > 50  # the ranks' norms do differ


def test_jobs_whose_ranks_report_local_norms_and_losses_never_fire() -> None:
    # synth's healthy run: every rank its own norm and loss; rank 3 then drifts far off.
    fault = both(desync(3, 100), desync(3, 100, metric="loss"))
    assert firing(run_engine(engine(), healthy_run(ranks=8, steps=300, fault=fault))) == []


def test_an_all_reduced_loss_that_splits_fires_on_the_loss() -> None:
    def all_reduced(rank: int, step: int, m: dict[str, Any]) -> None:
        m["loss"] = 3.0 + 2.0 * math.exp(-step / 100) + 0.05 * math.sin(step * 1.3)

    fault = both(all_reduced, desync(2, 120, metric="loss"))
    [alert] = firing(run_engine(engine(), healthy_run(ranks=4, steps=200, fault=fault)))
    assert alert.ranks == [2] and alert.evidence["metric"] == "loss"
    assert "rank 2 (node0) reports loss" in alert.summary and "all-reduced loss" in alert.summary
    off = GradientDesync(GradientDesyncConfig(check_loss=False))
    assert firing(run_engine(engine(off), healthy_run(ranks=4, steps=200, fault=fault))) == []


def test_a_two_rank_job_that_splits_is_one_job_alert_naming_both() -> None:
    fault = both(global_norm(), desync(1, 100))
    [alert] = firing(run_engine(engine(), healthy_run(ranks=2, steps=200, fault=fault)))
    assert (alert.rule, alert.scope, alert.ranks) == ("gradient_desync", "job", [0, 1])
    assert "no longer agree (no majority" in alert.summary


def test_a_missing_rank_and_overflow_skips_on_every_rank_do_not_fire() -> None:
    def gaps(rank: int, step: int, m: dict[str, Any]) -> None:
        if step % 50 == 25:
            m["gradient_norm"] = math.nan  # an overflow skip: every rank, and a nan this time
        if rank == 2 and step % 9 == 0:
            m.pop("gradient_norm")  # this rank did not report its norm at that step

    events = [
        e
        for e in healthy_run(ranks=4, steps=400, fault=both(global_norm(), gaps))
        if not (e.rank == 1 and 200 <= e.step < 260)  # a rank silent for a while
    ]
    assert firing(run_engine(engine(), events)) == []


def test_the_desync_state_is_small_plain_data() -> None:
    detector = GradientDesync()
    e = engine(detector)
    e.process_many(healthy_run(ranks=64, steps=60, fault=both(global_norm(), desync(9, 40))))
    (job,) = e.jobs.values()
    state = job.slots[detector.name]
    assert len(state["p"]) <= 4 and state["mode"][0] == 1
    assert len(pickle.dumps(state)) < 200 * 64
    blob = pickle.dumps(state)
    assert pickle.dumps(pickle.loads(blob)) == blob


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"rel_tolerance": 0.0}, "rel_tolerance"),
        ({"learn_steps": 0}, "learn_steps"),
        ({"agree_fraction": 1.0}, "agree_fraction"),
        ({"window": 63}, "window"),
        ({"min_flagged": 9}, "min_flagged"),
        ({"recover": 9}, "recover"),
        ({"action": "page"}, "action"),
    ],
)
def test_desync_config_is_checked(settings: dict[str, Any], name: str) -> None:
    with pytest.raises(DetectorConfigError, match=f"GradientDesyncConfig.{name} must"):
        GradientDesyncConfig(**settings)


# -- a real DDP job --------------------------------------------------------------------------

#: A 4-rank gloo DDP trainer; from $FAULT_STEP rank $FAULT_RANK skips the gradient all-reduce:
#: its DDP comm hook all-reduces zeros of the bucket's size (its peers do not deadlock) and
#: keeps its own gradients. Each rank writes (step, loss, global norm) as JSON lines.
TRAINER = """
import json, os, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

fault_rank, fault_step = int(os.environ["FAULT_RANK"]), int(os.environ["FAULT_STEP"])
dtype = getattr(torch, os.environ["DTYPE"])
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(rank)  # DDP broadcasts rank 0's weights
net = torch.nn.Sequential(
    torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
).to(dtype)
model = DistributedDataParallel(net, bucket_cap_mb=0.001)
now = {"step": 0}

def allreduce_or_skip(state, bucket):
    buf = bucket.buffer()
    if rank == fault_rank and now["step"] >= fault_step:
        fut = dist.all_reduce(torch.zeros_like(buf), async_op=True).get_future()
        return fut.then(lambda f: buf)
    buf.div_(world)
    fut = dist.all_reduce(buf, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])

model.register_comm_hook(None, allreduce_or_skip)
opt = torch.optim.SGD(model.parameters(), lr=0.02)
target = torch.randn(16, 1, generator=torch.Generator().manual_seed(42))
data = torch.Generator().manual_seed(1000 + rank)
with open(os.path.join(sys.argv[1], f"rank{rank}.jsonl"), "w") as out:
    for step in range(int(os.environ["STEPS"])):
        now["step"] = step
        x = torch.randn(64, 16, generator=data)
        loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), x @ target)
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        opt.step()
        out.write(json.dumps({"step": step, "loss": loss.item(), "norm": norm.item()}) + "\\n")
dist.destroy_process_group()
"""


def torchrun_job(tmp: Path, dtype: str, fault_step: int, steps: int = 40) -> Iterator[StepEvent]:
    tmp.mkdir(parents=True, exist_ok=True)
    script = tmp / "trainer.py"
    script.write_text(TRAINER)
    env = {
        **os.environ,
        "FAULT_RANK": "3",
        "FAULT_STEP": str(fault_step),
        "STEPS": str(steps),
        "DTYPE": dtype,
        "OMP_NUM_THREADS": "1",
    }
    # The job is this test's input, not what it tests: a launch that fails (CI once saw torchrun
    # exit 1 on a loaded machine, its output unkept) is tried once more, and said aloud.
    for attempt in (1, 2):
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             "4", str(script), str(tmp)],
            env=env, timeout=240, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode == 0:
            break
        message = f"torchrun exited {done.returncode}:\n{done.stderr[-6000:]}"
        assert attempt == 1, message
        warnings.warn(f"first launch failed, relaunched; {message}", stacklevel=1)
    rows = []
    for rank in range(4):
        for line in (tmp / f"rank{rank}.jsonl").read_text().splitlines():
            j = json.loads(line)
            rows.append((j["step"], rank, j["norm"], j["loss"]))
    for step, rank, norm, loss in sorted(rows):
        yield StepEvent(
            job_id=f"ddp-{dtype}",
            rank=rank,
            world_size=4,
            step=step,
            timestamp=T0 + step + 0.001 * rank,
            gradient_norm=norm,
            loss=loss,
        )


def test_a_real_ddp_rank_skipping_the_all_reduce_is_named(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    events = list(torchrun_job(tmp_path, "bfloat16", fault_step=20))
    by_step: dict[int, set[float | None]] = {}
    for e in events:
        by_step.setdefault(e.step, set()).add(e.gradient_norm)
    # Before the fault the bf16 DDP ranks report the very same norm; after it, rank 3 its own.
    assert [len(by_step[s]) for s in range(20)] == [1] * 20
    assert sum(len(by_step[s]) > 1 for s in range(20, 40)) >= 18
    assert len({e.loss for e in events if e.step == 5}) == 4  # local losses differ
    assert firing(run_engine(engine(), [e for e in events if e.step < 20])) == []
    [alert] = firing(run_engine(engine(), events))
    assert (alert.rule, alert.ranks, alert.step) == ("gradient_desync", [3], 20)
    assert "3 of 4 ranks agree on" in alert.summary


# -- the frame path of gradient_desync (issue 14): the same state and ticks as on_step --------


def _synchronous(seed: int, *, local: bool = False) -> noisy_steps.Values:
    """A job's all-reduced norms and losses (every rank the same value at a step: drawn from
    the step alone); from step 80 to 150 every rank's norm its own (the job split), from 200
    to 260 the loss of every fourth rank off by 10%; overflow skips on every rank (inf, nan),
    bf16-like rounding on a few rows, missing values, negative zeros. ``local``: each rank its
    own values throughout. (The ranks of a noisy job drift apart by up to 20% of their steps,
    so a step is compared among the fastest ranks only: faults of one rank may go unseen.)"""

    def value(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
        shared = random.Random(seed * 1_000_003 + step * 7 + (rank if local else 0))
        g: float | None = (1 + 5 * math.exp(-step / 20)) * shared.lognormvariate(0, 0.3)
        loss: float | None = 2.0 + math.exp(-step / 90) + shared.gauss(0, 0.05)
        assert g is not None and loss is not None
        if 80 <= step < 150:
            g *= rng.lognormvariate(0.3, 0.2)
        if rank % 4 == 1 and 200 <= step < 260:
            loss *= 1.1
        odd = shared.random()
        if odd < 0.03:
            g = shared.choice([math.inf, math.nan, -math.inf])  # an overflow skip, every rank
        elif odd < 0.04:
            g = -0.0
        odd = rng.random()
        if odd < 0.03:
            g = None
        elif odd < 0.05:
            loss = None
        elif odd < 0.06:
            loss = math.nan
        elif odd < 0.1:
            g = g * (1 + rng.uniform(-5e-3, 5e-3))  # summation order, bf16 rounding
        return {"gradient_norm": g, "loss": loss}

    return value


@pytest.mark.parametrize("seed", range(5))
def test_the_desync_frame_path_leaves_the_state_and_ticks_on_step_leaves(seed: int) -> None:
    events = noisy_steps.noisy_job(seed, _synchronous(seed), ranks=12, steps=300)
    assert_job_frames_match_scalar(GradientDesync(), events)
    tight = GradientDesyncConfig(
        learn_steps=3, window=3, min_flagged=1, recover=1, refresh_s=5.0, agree_fraction=0.5
    )
    assert assert_job_frames_match_scalar(GradientDesync(tight), events) > 0  # fires, resolves
    # Ticks far apart: frames of many steps, several compared (and the learning ended) in one.
    assert assert_job_frames_match_scalar(GradientDesync(tight), events, tick_interval_s=7) > 0
    no_loss = GradientDesync(GradientDesyncConfig(check_loss=False))
    assert_job_frames_match_scalar(no_loss, events)
    # Local values: the metric is learned as local and never compared again.
    local = noisy_steps.noisy_job(seed, _synchronous(seed, local=True), ranks=12, steps=200)
    assert assert_job_frames_match_scalar(GradientDesync(), local) == 0


@pytest.mark.parametrize("name", ["healthy", "gradient_explosion", "nan_loss", "rank_silent"])
def test_the_desync_frame_path_over_simulated_jobs(name: str) -> None:
    spec = JobSpec(job_id=f"sim-{name}", ranks=8, steps=200, seed=5)
    scenario = SCENARIOS[name](at_step=100, rank=3)
    simulated = simulate(spec, [scenario], duplicates=0.02, reorder=0.02)
    events = sorted(
        (e for e in simulated if isinstance(e, StepEvent)), key=lambda e: (e.epoch, e.rank)
    )
    assert_job_frames_match_scalar(GradientDesync(), events)


def test_the_desync_frame_path_at_the_edges() -> None:
    fault = both(global_norm(), desync(5, 60, 120))
    rows = list(healthy_run(ranks=8, steps=160, fault=fault))
    first = rows[:1]
    no_values = [e.model_copy(update={"gradient_norm": None, "loss": None}) for e in rows[:80]]
    nan = [e.model_copy(update={"gradient_norm": math.nan, "loss": math.inf}) for e in rows[:80]]
    twice = [e for e in rows for _ in range(1 + (e.step % 9 == 0 and e.rank % 3 == 0))]
    missing_rank = [e for e in rows if e.rank != 6 or not 40 <= e.step < 70]
    for events in (first, no_values, nan, twice, missing_rank):
        assert_job_frames_match_scalar(GradientDesync(), events)
    # A synchronous job in step with one rank off, then back: fires and resolves both ways.
    assert assert_job_frames_match_scalar(GradientDesync(), rows) >= 2
    assert assert_job_frames_match_scalar(GradientDesync(), twice) >= 2


@pytest.mark.parametrize("seed", range(3))
def test_the_desync_bulk_path_leaves_the_state_and_ticks_on_step_leaves(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frame path's runs of one step held in bulk and compared in numpy (long runs only,
    so a small job's frames take it only when every run is long enough: here, all)."""
    from rankwatch.streams.detectors import gradient_desync

    monkeypatch.setattr(gradient_desync, "_BULK_ROWS", 1)
    events = noisy_steps.noisy_job(seed, _synchronous(seed), ranks=12, steps=300)
    tight = GradientDesyncConfig(
        learn_steps=3, window=3, min_flagged=1, recover=1, refresh_s=5.0, agree_fraction=0.5
    )
    assert_job_frames_match_scalar(GradientDesync(), events)
    assert assert_job_frames_match_scalar(GradientDesync(tight), events) > 0
    assert assert_job_frames_match_scalar(GradientDesync(tight), events, tick_interval_s=7) > 0
    assert_job_frames_match_scalar(GradientDesync(GradientDesyncConfig(check_loss=False)), events)
    local = noisy_steps.noisy_job(seed, _synchronous(seed, local=True), ranks=12, steps=200)
    assert assert_job_frames_match_scalar(GradientDesync(), local) == 0
    fault = both(global_norm(), desync(5, 60, 120))
    rows = list(healthy_run(ranks=8, steps=160, fault=fault))
    twice = [e for e in rows for _ in range(1 + (e.step % 9 == 0 and e.rank % 3 == 0))]
    missing_rank = [e for e in rows if e.rank != 6 or not 40 <= e.step < 70]
    nan = [e.model_copy(update={"gradient_norm": math.nan, "loss": math.inf}) for e in rows[:80]]
    for events in (rows[:1], nan, twice, missing_rank):
        assert_job_frames_match_scalar(GradientDesync(), events)
    assert assert_job_frames_match_scalar(GradientDesync(), rows) >= 2
    assert assert_job_frames_match_scalar(GradientDesync(), twice, tick_interval_s=7) >= 2


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 100, 101])
def test_the_desync_median_is_statistics_median_to_the_bit(n: int) -> None:
    from statistics import median

    from rankwatch.streams.detectors.gradient_desync import _median

    rng = random.Random(n)
    for _ in range(200):
        values = [
            rng.choice([rng.lognormvariate(0, 3), -rng.random(), 0.0, -0.0, 1e308])
            for _ in range(n)
        ]
        expected = median(values)
        got = _median(np.array(values))
        assert struct.pack("<d", got) == struct.pack("<d", expected) or got == expected == 0.0
