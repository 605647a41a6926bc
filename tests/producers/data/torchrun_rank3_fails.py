"""The trainer behind the ``torchrun_gloo_*.log`` fixtures: 4 ranks over gloo on the CPU, rank 3 fails.

``FAIL_MODE=raise`` (default): rank 3 raises ``IndexError`` after 4 all-reduces;
``FAIL_MODE=kill``: rank 3 SIGKILLs itself there; ``FAIL_MODE=tqdm``: rank 0 draws a tqdm bar
(to stderr, without newlines between redraws) and rank 3 raises after 6 all-reduces.
Run as ``torchrun --standalone --nproc-per-node 4 torchrun_rank3_fails.py > out.log 2>&1``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

import torch
import torch.distributed as dist

MODE = os.environ.get("FAIL_MODE", "raise")


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    total = torch.ones(4)
    fail_at = 5 if MODE == "tqdm" else 3
    steps: Iterable[int] = range(8)
    if MODE == "tqdm" and rank == 0:
        from tqdm import tqdm  # type: ignore[import-untyped]

        steps = tqdm(steps, mininterval=0)
    for step in steps:
        dist.all_reduce(total)
        if MODE == "tqdm":
            time.sleep(0.05)
        elif rank == 0:
            print(f"step {step} sum {total.sum().item()}", flush=True)
        if rank == 3 and step == fail_at:
            if MODE == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            batches = [1, 2, 3]
            print(batches[step + 5])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
