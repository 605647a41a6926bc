"""A small data-parallel trainer with one real fault, run by torchrun in the real-job tests.

Instrumented as the README says: ``rw.configure(capture_logs=True)``, ``watch_step(step,
model=ddp_model)`` around each step, Python ``logging`` for the trainer's own records. The
fault is chosen by ``$FAULT`` on rank ``$FAULT_RANK`` at step ``$FAULT_STEP``:

- ``raise``: a shape mismatch in the forward (``mat1 and mat2 shapes cannot be multiplied``),
  uncaught: the producer's excepthook reports it; ``raise_logged``: the trainer logs it with
  ``logger.exception`` first, then re-raises;
- ``sigkill``: the rank sends itself SIGKILL (what the kernel's OOM killer does);
- ``hang``: the rank blocks in its own code before the step's collectives (``time.sleep``);
  its peers wait in the all-reduce until gloo's timeout (``$GLOO_TIMEOUT_S``);
- ``slow``: the rank's forward takes ``$SLOW_FACTOR`` times as long (a straggler);
- ``slow_data``: every rank's DataLoader takes 0.1 s a batch from step 0, three times its
  forward (an input-bound job);
- ``desync``: from the fault step the rank skips the gradient all-reduce (it all-reduces zeros
  instead, so nobody deadlocks): its replica drifts from its peers';
- ``none``: a healthy run that ends cleanly.

The forward's device time is a sleep, so four ranks sharing two cores do not slow each other
at random.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from datetime import timedelta
from typing import Any

#: The forward's device time (``$FORWARD_S`` to change it: the straggler job takes 60 ms so that
#: its extra 30 ms stands clear of the scheduling noise of 30-odd processes on two cores).
FORWARD_S = float(os.environ.get("FORWARD_S", "0.03"))


def skip_all_reduce_from(model: Any, fault_rank: int, fault_step: int, now: dict[str, int]) -> None:
    """``desync``: from ``fault_step`` rank ``fault_rank`` skips the gradient all-reduce.

    A DDP communication hook on every rank averages each gradient bucket as DDP does; on the
    faulty rank, from ``fault_step``, it all-reduces zeros of the bucket's size instead (the
    peers' collectives still match it: nobody deadlocks) and keeps its own gradients.
    """
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()

    # Unannotated: DDP rejects a hook whose ``bucket`` annotation is not the dist.GradBucket
    # class itself, and this module's annotations are strings.
    def hook(state, bucket):  # type: ignore[no-untyped-def]
        buf = bucket.buffer()
        if rank == fault_rank and now["step"] >= fault_step:
            fut = dist.all_reduce(torch.zeros_like(buf), async_op=True).get_future()
            return fut.then(lambda _: buf)
        buf.div_(world)
        fut = dist.all_reduce(buf, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    model.register_comm_hook(None, hook)


def main() -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import rankwatch.producers as rw
    from rankwatch.producers.integrations import watch_step

    fault = os.environ.get("FAULT", "none")
    fault_rank = int(os.environ.get("FAULT_RANK", "3"))
    fault_step = int(os.environ.get("FAULT_STEP", "20"))
    steps = int(os.environ.get("STEPS", "60"))
    torch.set_num_threads(1)
    timeout = timedelta(seconds=float(os.environ.get("GLOO_TIMEOUT_S", "60")))
    dist.init_process_group("gloo", timeout=timeout)
    rank = dist.get_rank()
    rw.configure(capture_logs=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("trainer")
    mine = rank == fault_rank
    seconds = FORWARD_S * (float(os.environ.get("SLOW_FACTOR", "1.5")) if mine else 1.0)

    class Net(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
            )
            self.broken = False

        def forward(self, x: Any) -> Any:
            time.sleep(seconds if fault == "slow" else FORWARD_S)
            if self.broken:  # a layer built for the wrong width: a real shape mismatch
                return x[:, :8] @ self.layers[0].weight.t()
            return self.layers(x)

    torch.manual_seed(0)
    net = Net()
    model = DistributedDataParallel(net)
    now = {"step": 0}
    if fault == "desync":
        skip_all_reduce_from(model, fault_rank, fault_step, now)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    target = torch.randn(16, 1, generator=torch.Generator().manual_seed(42))
    data = torch.Generator().manual_seed(1000 + rank)

    class Batches(torch.utils.data.IterableDataset):  # type: ignore[misc,type-arg]
        def __iter__(self) -> Any:
            while True:
                if fault == "slow_data":
                    time.sleep(0.1)  # reading and decoding from slow storage
                yield torch.randn(64, 16, generator=data)

    batches = iter(torch.utils.data.DataLoader(Batches(), batch_size=None, num_workers=0))
    log.info("training %d steps on rank %d", steps, rank)
    for step in range(steps):
        now["step"] = step
        if mine and step == fault_step:
            if fault == "sigkill":
                rw.flush(5.0)
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "hang":
                log.warning("fault injection: rank %d blocks before step %d", rank, step)
                time.sleep(3600)
            if fault in ("raise", "raise_logged"):
                net.broken = True
        with watch_step(step, model=model) as record:
            x = next(batches)
            try:
                loss = torch.nn.functional.mse_loss(model(x), x @ target)
            except RuntimeError:
                if fault == "raise_logged":
                    log.exception("step %d failed", step)
                raise
            optimizer.zero_grad()
            loss.backward()
            # The global norm (every rank's the same under DDP): what gradient_desync compares.
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=math.inf)
            record.metrics["gradient_norm"] = norm.item()
            optimizer.step()
            record.loss = loss.item()
    log.info("done")
    rw.shutdown(timeout=30.0)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
