"""Memory of detector state per rank, at 16,384 ranks.

An engine with every built-in detector is fed a healthy ``--ranks`` job for ``--steps`` steps
(enough for every per-rank window to fill: memory_growth keeps window minima of 10-step windows,
the log rules a trail of memory readings per rank). Measured, in the same run:

- tracemalloc: the memory the engine holds at the end (traced allocations still alive after
  the events are dropped and a gc), per rank; and what one event-sized Python object costs,
  for scale;
- the stored size per rank through ``streams/state_codec.py`` (what the worker writes to its
  changelog: the head and chunks of 512 ranks), the head's size and the largest record; the
  raw pickle of the whole job for scale.

    .venv/bin/python benchmarks/state_memory.py [--ranks 16384] [--steps 40]

Writes ``benchmarks/results/state_memory.json``. Figures: ``RESULTS.md``, "State".
"""

from __future__ import annotations

import argparse
import gc
import pickle
import sys
import time
import tracemalloc
from typing import Any

import _bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=16_384)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--path",
        choices=("batch", "scalar"),
        default="batch",
        help="feed the events as the worker does (batch, the default) or one at a time",
    )
    args = parser.parse_args()

    from rankwatch.schemas import decode
    from rankwatch.streams import Engine
    from rankwatch.streams.pipeline import Pipeline
    from rankwatch.streams.state_codec import Layout, encode_parts

    job_id = "bench-state"
    with _bench.LoadSampler() as load:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        engine = Engine.with_builtin_detectors()
        pipeline = Pipeline(engine)
        started = time.perf_counter()
        peak_after: list[tuple[int, float]] = []
        for step in range(args.steps):
            # Encoded then decoded, as the worker gets them; one step at a time so that only
            # one step's events are alive besides the state.
            lines = _bench.step_batch(job_id, args.ranks, step, _bench.START + step)
            if args.path == "scalar":
                for line in lines:
                    engine.process(decode(line))
            else:  # the worker's: batches of 2,000 messages, step rows as columns
                for i in range(0, len(lines), 2000):
                    pipeline.handle_batch(lines[i : i + 2000])
            del lines
            if (step + 1) % 10 == 0:
                gc.collect()
                now = tracemalloc.get_traced_memory()[0] - base
                peak_after.append((step + 1, now / args.ranks))
                print(f"after {step + 1:3d} steps: {now / args.ranks:,.0f} bytes/rank", flush=True)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        fed_s = time.perf_counter() - started
        job = engine.jobs[job_id]
        raw = len(pickle.dumps(job, pickle.HIGHEST_PROTOCOL))
        started = time.perf_counter()
        head_bytes, parts = encode_parts(job, Layout.of(engine, job_id))
        encode_s = time.perf_counter() - started
        head = len(head_bytes)
        chunks = list(parts)
        stored = sum(map(len, parts.values()))
        largest = max(head, *map(len, parts.values()))
        slot_sizes: dict[str, Any] = {}
        for name, slot in job.rank_slots(args.ranks // 2).items():
            slot_sizes[name] = len(pickle.dumps(slot, pickle.HIGHEST_PROTOCOL))
        job_slots = {
            name: len(pickle.dumps(slot, pickle.HIGHEST_PROTOCOL)) / args.ranks
            for name, slot in job.slots.items()
        }
    n = args.ranks
    results = {
        "machine": _bench.machine(),
        "load_1min": load.summary(),
        "ranks": n,
        "steps": args.steps,
        "path": args.path,
        "tracemalloc_bytes_per_rank": held / n,
        "tracemalloc_by_steps": peak_after,
        "pickle_bytes_per_rank": raw / n,
        "stored_bytes_per_rank": (head + stored) / n,
        "stored_total_bytes": head + stored,
        "encode_all_chunks_s": encode_s,
        "head_bytes": head,
        "largest_record_bytes": largest,
        "pickled_rank_slot_bytes": slot_sizes,
        "pickled_job_slot_bytes_per_rank": job_slots,
        "feed_s": fed_s,
        "target_bytes_per_rank": 4096,
    }
    print(f"\n{n:,} ranks x {args.steps} steps; load (1 min) {load.summary()}")
    print("| | bytes per rank | ratio to the 4 KB target |\n|---|---|---|")
    print(f"| in memory (tracemalloc) | {held / n:,.0f} | {held / n / 4096:.2f} |")
    print(f"| pickled (state_codec, raw) | {raw / n:,.0f} | {raw / n / 4096:.2f} |")
    print(f"| stored (head + zlib chunks) | {(head + stored) / n:,.0f} | "
          f"{(head + stored) / n / 4096:.2f} |")  # fmt: skip
    print(
        f"encoding the head and all {len(chunks)} chunks: {encode_s * 1000:.0f} ms (one snapshot)"
    )
    print(f"head {head:,} bytes; largest record {largest:,} bytes")
    print("pickled per-rank slots (bytes):", slot_sizes)
    print("job-level slots (pickled bytes per rank):", {k: round(v) for k, v in job_slots.items()})
    _bench.write_results("state_memory", results)


if __name__ == "__main__":
    sys.exit(main())
