"""Replay throughput: ``rankwatch replay --input FILE`` beside plain orjson decoding of the file.

The file is a healthy simulated job (``rankwatch.simulate``: step events and the log chatter of
a data-parallel job, default 4,096 ranks x 50 steps, about 210k events). Each round, in the same
run: (1) the reference, ``orjson.loads`` of every line (file read included); (2) the real
command in a child process, whose own summary line gives events/s (start-up excluded, file
reading included); (3) with ``--baseline REV``, the same command running the code of commit
REV (before/after an optimisation in one run). Rates are given per wall second (what the
command prints) and per CPU second of the process (its CPU time less that of its start-up on
an empty file), which other work on a shared machine does not distort. Then a per-event
breakdown (orjson, ``decode``, ``Engine.process``, ``Pipeline.handle``) of each tree, in CPU
time: where the time goes.

    .venv/bin/python benchmarks/replay_throughput.py [--ranks 4096] [--steps 50]
        [--rounds 3] [--baseline REV]

Writes ``benchmarks/results/replay_throughput.json``. Figures: ``RESULTS.md``, "Replay".
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _bench
import orjson

_SUMMARY = re.compile(r"replay: (\d+) events.*; ([\d.]+) s, ([\d,]+) events/s")


def reference(path: Path) -> tuple[int, float, float]:
    """Plain orjson decoding of every line: the limit of any Python replay of this file.
    Returns the events, wall seconds and CPU seconds."""
    started, cpu = time.perf_counter(), time.process_time()
    loads = orjson.loads
    n = 0
    with path.open("rb") as f:
        for line in f:
            line = line.strip()
            if line:
                loads(line)
                n += 1
    return n, time.perf_counter() - started, time.process_time() - cpu


def replay_once(path: Path, tree: Path | None, startup_cpu: float) -> dict[str, float]:
    argv = _bench.rankwatch_argv(tree, ["replay", "--input", str(path), "--output", "/dev/null"])
    started = time.perf_counter()
    done, cpu = _bench.run_cpu(argv)
    wall = time.perf_counter() - started
    match = _SUMMARY.search(done.stderr)
    if match is None:
        raise SystemExit(f"no summary line from rankwatch replay:\n{done.stderr[-2000:]}")
    events, seconds = int(match.group(1)), float(match.group(2))
    return {
        "events": events,
        "seconds": seconds,
        "rate": events / seconds if seconds > 0 else float("nan"),  # printed to 0.01 s
        "wall_s": wall,
        "cpu_s": cpu,
        # CPU seconds of the child less those of its start-up (the same command on an empty
        # file): events per CPU second, what a busy machine does not distort.
        "cpu_rate": events / max(1e-9, cpu - startup_cpu),
    }


def startup_cpu(tree: Path | None, empty: Path) -> float:
    """CPU seconds of ``rankwatch replay`` on an empty file: imports and set-up."""
    argv = _bench.rankwatch_argv(tree, ["replay", "--input", str(empty), "--output", "/dev/null"])
    return min(_bench.run_cpu(argv)[1] for _ in range(3))


def breakdown(path: Path) -> dict[str, float]:
    """Per-event microseconds of each stage, in this process (run as a child per tree)."""
    from rankwatch.schemas import decode
    from rankwatch.streams import Engine
    from rankwatch.streams.pipeline import Pipeline

    lines = _bench.read_lines(path)
    n = len(lines)
    out: dict[str, float] = {"events": n}

    def per_event(fn: Any) -> float:  # CPU time of this process: robust on a busy machine
        started = time.process_time()
        fn()
        return (time.process_time() - started) / n * 1e6

    out["orjson_us"] = per_event(lambda: [orjson.loads(line) for line in lines])
    events: list[Any] = []
    out["decode_us"] = per_event(lambda: events.extend(decode(line) for line in lines))
    engine = Engine.with_builtin_detectors()
    process = engine.process

    def run_engine() -> None:
        for event in events:
            process(event)

    out["engine_us"] = per_event(run_engine)
    handle = Pipeline(Engine.with_builtin_detectors()).handle

    def run_pipeline() -> None:
        for line in lines:
            handle(line)

    out["pipeline_us"] = per_event(run_pipeline)
    return out


def child_breakdown(path: Path, tree: Path | None) -> dict[str, float]:
    argv = _bench.python_argv(tree, [__file__, "--breakdown-of", str(path)])
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also run the code of this commit")
    parser.add_argument("--breakdown-of", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.breakdown_of:  # child mode: one tree's per-stage figures, as JSON
        print(json.dumps(breakdown(Path(args.breakdown_of))))
        return

    path = _bench.simulated_file(args.ranks, args.steps)
    trees: dict[str, Path | None] = {"current": None}
    if args.baseline:
        trees[f"baseline {args.baseline}"] = _bench.baseline_tree(args.baseline)
    refs: list[float] = []
    ref_cpu: list[float] = []
    rates: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    empty = _bench.DATA / "empty.jsonl"
    empty.write_bytes(b"")
    with _bench.LoadSampler() as load:
        startups = {name: startup_cpu(tree, empty) for name, tree in trees.items()}
        for i in range(args.rounds):
            n, seconds, cpu = reference(path)
            refs.append(n / seconds)
            ref_cpu.append(n / cpu)
            line = f"round {i + 1}: orjson {n / seconds:,.0f}/s ({n / cpu:,.0f}/cpu-s)"
            for name, tree in trees.items():
                r = replay_once(path, tree, startups[name])
                rates[name].append(r)
                line += f", replay[{name}] {r['rate']:,.0f}/s ({r['cpu_rate']:,.0f}/cpu-s)"
            print(line, flush=True)
        stages = {name: child_breakdown(path, tree) for name, tree in trees.items()}
    ref = statistics.median(refs)
    refc = statistics.median(ref_cpu)
    results: dict[str, Any] = {
        "machine": _bench.machine(),
        "load_1min": load.summary(),
        "file": {"path": str(path), "ranks": args.ranks, "steps": args.steps, "events": n},
        "reference_orjson_per_s": ref,
        "reference_orjson_per_cpu_s": refc,
        "startup_cpu_s": startups,
        "replay": {},
        "breakdown_us_per_event": stages,
    }
    print(f"\n{n:,} events; load average (1 min) during the run: {load.summary()}")
    print("| | events/s (wall, median) | ratio | events per CPU-second (median) | ratio |")
    print("|---|---|---|---|---|")
    print(f"| orjson.loads of every line (reference) | {ref:,.0f} | 1.00 | {refc:,.0f} | 1.00 |")
    for name, runs in rates.items():
        rate = statistics.median(r["rate"] for r in runs)
        crate = statistics.median(r["cpu_rate"] for r in runs)
        results["replay"][name] = {
            "rate": rate,
            "ratio": rate / ref,
            "cpu_rate": crate,
            "cpu_ratio": crate / refc,
            "runs": runs,
        }
        print(
            f"| rankwatch replay [{name}] | {rate:,.0f} | {rate / ref:.3f} | {crate:,.0f} "
            f"| {crate / refc:.3f} |"
        )
    print("\nper event (us) | " + " | ".join(stages))
    for key in ("orjson_us", "decode_us", "engine_us", "pipeline_us"):
        print(f"{key} | " + " | ".join(f"{s[key]:.2f}" for s in stages.values()))
    _bench.write_results("replay_throughput", results)


if __name__ == "__main__":
    sys.exit(main())
