"""Cost of the failure catalogue per log record, beside the log rules' classifier.

Every log record goes through :func:`~rankwatch.streams.detectors.failures.classify_failure`
and :func:`~rankwatch.streams.detectors.log_patterns.classify`, so the common case, a benign
record, must stay cheap (a keyword prefilter, about a microsecond). Measured in one run, on
the same records:

- ``chatter``: training lines with none of the keywords (metrics, progress bars, overflow
  skips): the prefilter's fast path, the common record;
- ``lookalike``: ``test_log_patterns.BENIGN`` and a few more benign records that mention a
  keyword (NCCL INFO, Python warnings, memory summaries, c10d retry warnings);
- ``failure``: crash records (a torch traceback, an OOM-killer line, a gloo error), which pay
  for the regular expressions and the traceback parse.

Per call, timed in batches of ``--batch`` calls (``perf_counter_ns`` per batch / batch size),
``--batches`` batches per record kind and function, interleaved so that drift of the machine
hits both functions alike. Reports the median and p99 of the per-call times.

    .venv/bin/python benchmarks/failure_classify.py [--batches 400] [--batch 200] [--write]

``--write`` saves ``benchmarks/results/failure_classify.json``. No assertion on time here:
the figures are read, not tested.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "streams" / "detectors"))

import _bench

from rankwatch.streams.detectors.failures import classify_failure
from rankwatch.streams.detectors.log_patterns import classify

# The common record: training chatter with none of the keywords (the prefilter's fast path).
CHATTER: list[tuple[str, str]] = [
    ("INFO", "Epoch 3 step 1200 | loss 2.153 | lr 1.5e-05 | grad_norm 0.42 | tokens/s 78400"),
    ("INFO", "step 1200 | loss: nan | grad_norm: nan | lr 1.5e-05"),
    ("INFO", "{'loss': 1.0432, 'grad_norm': 0.61, 'learning_rate': 1.9e-05, 'epoch': 0.42}"),
    ("INFO", "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0"),
    ("INFO", "100%|##########| 3000/3000 [03:33<00:00, 14.06it/s]"),
    ("INFO", "Saving model checkpoint to /ckpt/checkpoint-1200"),
]
# Benign records that mention a keyword (NCCL INFO, warnings, memory summaries): they pass
# the prefilter and are rejected by the level rules or the patterns.
LOOKALIKE_EXTRA: list[tuple[str, str]] = [
    ("WARNING", "[W socket.cpp:663] [c10d] The client socket has failed to connect to "
     "[::ffff:172.16.8.232]:39623 (errno: 110 - Connection timed out)"),
    ("DEBUG", "The node 'node-0_945987_0' updated its keep-alive heartbeat time for the "
     "rendezvous 'none'. Pending sync."),
]  # fmt: skip

FAILURES: list[tuple[str, str]] = [
    (
        "ERROR",
        "Traceback (most recent call last):\n"
        '  File "/job/train.py", line 42, in forward\n'
        "    return self.proj(x)\n"
        '  File "/venv/lib/python3.11/site-packages/torch/nn/modules/linear.py", line 134, '
        "in forward\n"
        "    return F.linear(input, self.weight, self.bias)\n"
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x8 and 16x4)",
    ),
    (
        "INFO",
        "[2059991.491542] Out of memory: Killed process 25315 (python3) total-vm:53312244kB, "
        "anon-rss:31451456kB, file-rss:74816kB, shmem-rss:12296kB, UID:0 pgtables:69068kB",
    ),
    (
        "ERROR",
        "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed "
        "by peer [127.0.0.1]:10895",
    ),
]


def per_call_ns(
    fn: Callable[[str, str], object], records: Sequence[tuple[str, str]], batch: int
) -> float:
    """One batch: ``batch`` calls cycling over ``records``; the mean ns per call."""
    n = len(records)
    start = time.perf_counter_ns()
    for i in range(batch):
        level, message = records[i % n]
        fn(message, level)
    return (time.perf_counter_ns() - start) / batch


def measure(batches: int, batch: int) -> dict[str, Any]:
    from test_log_patterns import BENIGN

    kinds: dict[str, list[tuple[str, str]]] = {
        "chatter": CHATTER,
        "lookalike": list(BENIGN) + LOOKALIKE_EXTRA,
        "failure": FAILURES,
    }
    funcs: dict[str, Callable[[str, str], object]] = {
        "failures.classify_failure": classify_failure,
        "log_patterns.classify": classify,
    }
    # The benign sets must be benign, or the figure means nothing.
    for level, message in kinds["chatter"] + kinds["lookalike"]:
        assert classify_failure(message, level) is None, message
    samples: dict[tuple[str, str], list[float]] = {(k, f): [] for k in kinds for f in funcs}
    for records in kinds.values():
        for fn in funcs.values():
            per_call_ns(fn, records, batch)  # warm up
    for _ in range(batches):
        for kind, records in kinds.items():
            for fname, fn in funcs.items():
                samples[(kind, fname)].append(per_call_ns(fn, records, batch))
    out: dict[str, Any] = {}
    for (kind, fname), values in samples.items():
        out.setdefault(kind, {})[fname] = {
            "median_us": round(statistics.median(values) / 1000, 3),
            "p99_us": round(_bench.percentile(values, 99) / 1000, 3),
            "records": len(kinds[kind]),
        }
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="save the results JSON")
    args = parser.parse_args(argv)
    with _bench.LoadSampler() as sampler:
        figures = measure(args.batches, args.batch)
    results = {
        "machine": _bench.machine(),
        "load_1m": sampler.summary(),
        "batches": args.batches,
        "batch": args.batch,
        "per_call": figures,
    }
    for kind, by_fn in figures.items():
        for fname, f in by_fn.items():
            print(
                f"{kind:9} {fname:26} median {f['median_us']:7.3f} us   "
                f"p99 {f['p99_us']:7.3f} us   ({f['records']} records)"
            )
    if args.write:
        _bench.write_results("failure_classify", results)


if __name__ == "__main__":
    main()
