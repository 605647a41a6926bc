"""Cost of timing a rank's forward with module hooks (``ComputeTimer``) on the training thread.

Per call, median and p99 in microseconds, measured in interleaved rounds in one run: a bare
forward of a small module (the reference), the same forward with two no-op hooks (torch's
call path with hooks, by itself), with the timer's pre-/post-hooks, the hooks' work alone
(``start`` + ``stop``), and ``end_step`` once per step; then the same on the GPU (CUDA events
recorded, never synchronised) where torch sees one. The smaller the module, the larger the
hooks' share: this one is the worst case, a real model's forward is milliseconds.

    .venv/bin/python benchmarks/forward_hooks.py [--calls 20000] [--write]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import _bench
import torch

from rankwatch.producers.integrations import ComputeTimer

ROUNDS = 10  # rounds of each case, interleaved: a load spike hits all cases alike


def timed(fn: Callable[[], object], calls: int) -> list[int]:
    """Nanoseconds of each of ``calls`` calls of ``fn``."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


def cases(device: str) -> dict[str, Callable[[], object]]:
    """The calls to time on ``device``: a bare forward beside the hooked one."""
    torch.manual_seed(0)
    x = torch.randn(8, 64, device=device)
    bare = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).to(device)
    hooked = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).to(device)
    timer = ComputeTimer(hooked)
    # The same two hooks doing nothing: what torch's call path with hooks costs by itself.
    noop = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).to(device)
    noop.register_forward_pre_hook(lambda module, args: None)
    noop.register_forward_hook(lambda module, args, output: None, always_call=True)
    alone = ComputeTimer(cuda=device == "cuda")

    def span() -> None:
        alone.start()
        alone.stop()

    def step() -> None:
        hooked(x)
        timer.end_step()

    return {
        f"bare forward ({device})": lambda: bare(x),
        f"forward with two no-op hooks ({device})": lambda: noop(x),
        f"forward with the timer's hooks ({device})": lambda: hooked(x),
        f"hooks' work alone, start + stop ({device})": span,
        f"hooked forward + end_step, one step ({device})": step,
    }


def measure(device: str, calls: int) -> list[dict[str, Any]]:
    named = cases(device)
    for fn in named.values():  # warm up: allocator, CUDA context, first-call paths
        timed(fn, 200)
    samples: dict[str, list[int]] = {name: [] for name in named}
    per_round = max(1, calls // ROUNDS)
    gc.disable()  # a collection landing in one case's round would be charged to it
    try:
        for _ in range(ROUNDS):
            for name, fn in named.items():
                samples[name] += timed(fn, per_round)
            if device == "cuda":
                torch.cuda.synchronize()  # between rounds, outside any timing
    finally:
        gc.enable()
    rows = []
    for name, values in samples.items():
        rows.append(
            {
                "case": name,
                "calls": len(values),
                "median_us": round(_bench.percentile(values, 50) / 1000, 2),
                "p99_us": round(_bench.percentile(values, 99) / 1000, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="per case and device")
    parser.add_argument("--write", action="store_true", help="write results/forward_hooks.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with _bench.LoadSampler() as load:
        rows = [row for device in devices for row in measure(device, args.calls)]
    print("| case | calls | median µs | p99 µs |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['case']} | {row['calls']} | {row['median_us']} | {row['p99_us']} |")
    print(f"torch {torch.__version__}; load (1-min average) {load.summary()}")
    if args.write:
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        machine = {**_bench.machine(), "torch": torch.__version__, "gpu": gpu}
        _bench.write_results(
            "forward_hooks", {"machine": machine, "load": load.summary(), "rows": rows}
        )


if __name__ == "__main__":
    main()
