"""A small data-parallel trainer with rankwatch in it: real torch, real gloo all-reduce.

Run it on the CPU, two ranks, against a broker (``rankwatch broker start``)::

    RANKWATCH_JOB_ID=ddp-demo torchrun --standalone --nproc-per-node 2 \\
        examples/torchrun_ddp.py --steps 50

The rankwatch part is the ``configure`` line (identity from ``$RANKWATCH_JOB_ID`` and torchrun's
``$RANK``/``$WORLD_SIZE``; Kafka from ``rankwatch.toml`` or ``$RANKWATCH_BOOTSTRAP``) and the
``watch_step`` block around each step. Given the model, ``watch_step`` times this rank's forward
pass (hooks on the module) as its ``compute_time_s`` and the wait before it as ``data_time_s``:
every rank's step time includes its wait for the slowest rank in the all-reduce, these do
not, and they are what the ``straggler`` rule compares. Everything else is an ordinary DDP
loop. The test suite runs this file (``tests/producers/test_torchrun.py``) and reads the events
back from the topics.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import rankwatch.producers as rw
from rankwatch.producers.integrations import watch_step

FEATURES, BATCH = 16, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds after each step")
    parser.add_argument("--report", help="write this rank's summary (JSON) to REPORT.<rank>")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rw.configure(capture_logs=True)  # the one line
    log = logging.getLogger("trainer")
    logging.getLogger().setLevel(logging.INFO)

    torch.manual_seed(0)  # the same initial weights on every rank, as DDP expects
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    target = torch.randn(FEATURES, 1, generator=torch.Generator().manual_seed(42))
    data = torch.Generator().manual_seed(1000 + rank)  # each rank its own shard of the data

    losses: list[float] = []
    step_times: list[float] = []
    for step in range(args.steps):
        started = time.perf_counter()
        with watch_step(step, model=model) as record:
            x = torch.randn(BATCH, FEATURES, generator=data)
            loss = torch.nn.functional.mse_loss(model(x), x @ target)
            optimizer.zero_grad()
            loss.backward()  # DDP all-reduces the gradients here, over gloo
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            record.loss = loss.item()
            record.tokens = BATCH
            record.metrics["gradient_norm"] = float(norm)
            record.metrics["learning_rate"] = args.lr
        step_times.append(time.perf_counter() - started)
        losses.append(record.loss)
        if step % 10 == 0:
            log.info("step %d loss %.4f", step, record.loss)
        if args.step_sleep:
            time.sleep(args.step_sleep)  # idle before the next batch: reported as data_time_s
    log.info("training finished after %d steps, loss %.4f", args.steps, losses[-1])

    stats = rw.stats()
    rw.shutdown(timeout=30.0)
    dist.destroy_process_group()
    if args.report:
        with open(f"{args.report}.{rank}", "w") as out:
            summary = {"losses": losses, "step_times": step_times}
            json.dump({**summary, "stats": dataclasses.asdict(stats)}, out)


if __name__ == "__main__":
    main()
