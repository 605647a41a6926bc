"""A real straggler under real DDP: four torch ranks under torchrun (gloo), one 50% slower in
its forward, stream into the session broker; the detector engine over what they sent names it.

In synchronous data parallelism the fast ranks wait for the slow one in the gradient
all-reduce, so every rank's step time grows together: the old way of reporting (the whole
step as ``compute_time_s``, what ``watch_step(step, data_time_s=...)`` without a model does)
names nobody, which the first test also shows on the same events. ``watch_step(step,
model=ddp_model)`` times the forward pass on each rank with module hooks, free of the
all-reduce (it runs in backward): the slow rank stands out there.

This file is also the trainer: torchrun runs it as a script (see :func:`train`). The
forward's work is a sleep (simulated device time) so that four ranks sharing two cores do
not slow each other at random; the slow rank sleeps ``SLOW_FACTOR`` times as long. What the
detector needs with its default settings (``StragglerConfig``): ``warmup_samples`` 5 samples
per rank, then flagged in ``min_flagged`` 6 of its last ``window`` 8 evaluations, one per
tick of event time (``EngineConfig.tick_interval_s`` 1 s): about 12 s of training.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RANKS, STEPS = 4, 160
FORWARD_S = 0.04  # each forward's simulated device time
SLOW_RANK, SLOW_FACTOR = 3, 1.5


def train(steps: int, slow_rank: int, slow_factor: float) -> None:
    """One rank of the job: a DDP loop as ``examples/torchrun_ddp.py`` writes it.

    Fault injection: rank ``slow_rank``'s forward takes ``slow_factor`` times as long.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import rankwatch.producers as rw
    from rankwatch.producers.integrations import watch_step

    torch.set_num_threads(1)  # four ranks on two cores
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rw.configure()
    seconds = FORWARD_S * (slow_factor if rank == slow_rank else 1.0)

    class Net(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
            )

        def forward(self, x: Any) -> Any:
            time.sleep(seconds)  # the device's work on this batch (see the module docstring)
            return self.layers(x)

    torch.manual_seed(0)
    model = DistributedDataParallel(Net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    target = torch.randn(16, 1, generator=torch.Generator().manual_seed(42))
    data = torch.Generator().manual_seed(1000 + rank)
    for step in range(steps):
        with watch_step(step, model=model) as record:
            x = torch.randn(64, 16, generator=data)
            loss = torch.nn.functional.mse_loss(model(x), x @ target)
            optimizer.zero_grad()
            loss.backward()  # the all-reduce: the fast ranks wait for the slow one here
            optimizer.step()
            record.loss = loss.item()
    rw.shutdown(timeout=30.0)
    dist.destroy_process_group()


def _run_job(
    tmp_path: Path, bootstrap: str, steps_topic: str, logs_topic: str, job_id: str, slow: int
) -> None:
    config = tmp_path / f"{job_id}.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{bootstrap}"\n'
        f'[topics.steps]\nname = "{steps_topic}"\n'
        f'[topics.logs]\nname = "{logs_topic}"\n'
    )
    env = {
        **os.environ,
        "RANKWATCH_JOB_ID": job_id,
        "RANKWATCH_CONFIG": str(config),
        "OMP_NUM_THREADS": "1",
        "DDP_STRAGGLER_SLOW_RANK": str(slow),  # read by this file's __main__ only
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={RANKS}",
            __file__,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _straggler_ranks(events: list[Any]) -> set[int]:
    """Ranks that ``straggler`` fires for, with the built-in detectors over ``events``."""
    from rankwatch.streams import Engine

    engine = Engine.with_builtin_detectors()
    alerts = engine.process_many(sorted(events, key=lambda e: (e.epoch, e.rank)))
    alerts += engine.flush()
    return {r for a in alerts if a.rule == "straggler" and a.status == "firing" for r in a.ranks}


def _job_steps(
    tmp_path: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    read_topic: Callable[..., list[Any]],
    job_id: str,
    slow: int,
) -> list[Any]:
    from rankwatch.schemas import StepEvent

    steps_topic, logs_topic = make_topic(2), make_topic(1)
    _run_job(tmp_path, kafka_bootstrap, steps_topic, logs_topic, job_id, slow)
    events = read_topic(kafka_bootstrap, steps_topic, RANKS * STEPS, timeout_s=30)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert sorted((e.rank, e.step) for e in steps) == [
        (r, s) for r in range(RANKS) for s in range(STEPS)
    ]
    # Every step says the rank's own forward time and its wait for data (at the first step,
    # counted from the start of the ``watch_step`` block).
    assert all(e.compute_time_s is not None and e.data_time_s is not None for e in steps)
    return steps


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_slow_in_its_forward_is_named_and_step_time_names_nobody(
    tmp_path: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    read_topic: Callable[..., list[Any]],
) -> None:
    pytest.importorskip("torch", reason="torch is a test extra (rankwatch[train])")
    steps = _job_steps(tmp_path, kafka_bootstrap, make_topic, read_topic, "ddp-slow", SLOW_RANK)

    assert _straggler_ranks(steps) == {SLOW_RANK}

    # The slowdown is real and the job paid for it: every rank's step took as long as the
    # slow rank's, so the old way (the whole step as the rank's compute) names nobody.
    late = [e for e in steps if e.step >= STEPS // 4]
    forward = {r: sorted(e.compute_time_s for e in late if e.rank == r) for r in range(RANKS)}
    step_time = {r: sorted(e.step_time_s for e in late if e.rank == r) for r in range(RANKS)}
    median = {r: v[len(v) // 2] for r, v in forward.items()}
    assert median[SLOW_RANK] > 1.3 * max(m for r, m in median.items() if r != SLOW_RANK)
    step_median = [v[len(v) // 2] for v in step_time.values()]
    assert max(step_median) < 1.1 * min(step_median)
    old_way = [
        e.model_copy(update={"compute_time_s": e.step_time_s, "data_time_s": None}) for e in steps
    ]
    assert _straggler_ranks(old_way) == set()


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_healthy_ddp_job_has_no_straggler(
    tmp_path: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    read_topic: Callable[..., list[Any]],
) -> None:
    pytest.importorskip("torch", reason="torch is a test extra (rankwatch[train])")
    steps = _job_steps(tmp_path, kafka_bootstrap, make_topic, read_topic, "ddp-healthy", -1)
    assert _straggler_ranks(steps) == set()


if __name__ == "__main__":
    train(STEPS, int(os.environ["DDP_STRAGGLER_SLOW_RANK"]), SLOW_FACTOR)
