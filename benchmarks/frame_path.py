"""The per-rank part of the detector path, per event: today's (``decode`` + each per-rank rule's
``on_step``) beside the columnar one (``decode_batch`` + ``rounds`` + each rule's ``on_frame``),
and ``orjson.loads`` of the same lines as the reference (the parser: the limit).

Input: a simulated job (``rankwatch.simulate``, every metric a producer sets; one rank leaks
memory from a quarter of the way, every rank's gradient norm jumps 50x for the last eighth), its
step events only, in the order the simulator delivers them, cut into batches as a consumer's poll
gives them. Each batch goes through every path in turn (interleaved, so machine load falls on all
alike), timed by the CPU time of this thread; figures are per event, median and p99 over the
batches. The five per-rank rules: ``loss_explosion``, ``gradient_explosion``,
``throughput_drop``, ``memory_growth``, ``gradient_vanishing``. Both paths must find the same
outcomes (checked at the end and printed), so the comparison is of equal work.

Also measured: the bytes per rank of those rules' state, one dataclass per rank and rule (today)
vs their rank tables (tracemalloc of a deep copy of each).

    .venv/bin/python benchmarks/frame_path.py [--ranks 1024] [--steps 400] [--batch 1000]

Writes ``benchmarks/results/frame_path-<ranks>.json``. Figures: ``RESULTS.md``, "Per-step
frames".
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import _bench
import numpy as np
import orjson

from rankwatch.schemas import StepEvent, decode, encode
from rankwatch.schemas.columns import StepColumns, decode_batch
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.gradient import GradientExplosion
from rankwatch.streams.detectors.gradient_vanishing import GradientVanishing
from rankwatch.streams.detectors.loss import LossExplosion
from rankwatch.streams.detectors.memory import MemoryGrowth
from rankwatch.streams.detectors.throughput import ThroughputDrop
from rankwatch.streams.frames import FrameRule, RankTable, StepFrame, rounds

RULES: tuple[Callable[[], FrameRule], ...] = (
    LossExplosion,
    GradientExplosion,
    ThroughputDrop,
    MemoryGrowth,
    GradientVanishing,
)


def step_lines(ranks: int, steps: int) -> list[bytes]:
    """The job's step events: healthy, but for one rank's memory leak from a quarter of the way
    and the gradient norm jumping 50x on every rank for the last eighth (so both paths have
    findings to agree on, not only silence)."""
    from rankwatch.simulate import JobSpec, simulate
    from rankwatch.simulate.scenarios import GradientExplosion as GradientJump
    from rankwatch.simulate.scenarios import MemoryLeak

    spec = JobSpec(job_id="bench", ranks=ranks, steps=steps)
    faults = [MemoryLeak(at_step=steps // 4, rank=3), GradientJump(at_step=steps * 7 // 8)]
    return [encode(e) for e in simulate(spec, faults) if isinstance(e, StepEvent)]


class Scalar:
    """Today: one event at a time, each rule's ``on_step`` on its rank's state."""

    def __init__(self) -> None:
        self.rules = [make() for make in RULES]
        self.job = JobState("bench")
        self.states: dict[int, list[Any]] = {}
        self.found: list[tuple[str, int | None, float]] = []

    def run(self, lines: Sequence[bytes]) -> None:
        job, states, rules, found = self.job, self.states, self.rules, self.found
        for line in lines:
            event = decode(line)
            assert isinstance(event, StepEvent)
            rank = job.ranks.get(event.rank)
            if rank is None:
                rank = job.ranks[event.rank] = RankState(event.rank)
                states[event.rank] = [rule.new_rank_state() for rule in rules]
            slots = states[event.rank]
            for rule, state in zip(rules, slots, strict=True):
                for o in rule.on_step(job, rank, state, event):
                    found.append((o.rule, o.rank, o.event_time))


class Columnar:
    """Per-step frames: the batch's columns, cut into rounds per job, each rule's ``on_frame``."""

    def __init__(self) -> None:
        self.rules = [make() for make in RULES]
        self.jobs: dict[str, JobState] = {}
        self.tables: dict[str, list[RankTable[Any]]] = {}
        self.found: list[tuple[str, int | None, float]] = []

    def run(self, lines: Sequence[bytes]) -> None:
        cols = decode_batch(lines).steps
        if not len(cols):
            return
        for job_id in set(cols.job_ids):
            if len(set(cols.job_ids)) == 1:
                rows = np.arange(len(cols))
            else:
                rows = np.flatnonzero(np.array(cols.job_ids, dtype=object) == job_id)
            self._job(job_id, cols, rows)

    def _job(self, job_id: str, cols: StepColumns, rows: np.ndarray[Any, Any]) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = JobState(job_id)
            self.tables[job_id] = [RankTable(rule.state_type) for rule in self.rules]
        tables = self.tables[job_id]
        size = int(cols.ranks[rows].max()) + 1
        for table in tables:
            table.grow(size)
        found = self.found
        for part in rounds(cols.ranks[rows]):
            frame = StepFrame.from_columns(
                job_id, cols.ranks, cols.steps, cols.times, cols.metrics, rows[part]
            )
            for rule, table in zip(self.rules, tables, strict=True):
                for _, o in rule.on_frame(job, table, frame):
                    found.append((o.rule, o.rank, o.event_time))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    lines = step_lines(args.ranks, args.steps)
    batches = [lines[i : i + args.batch] for i in range(0, len(lines), args.batch)]
    print(f"{len(lines):,} step events of a {args.ranks:,}-rank job, {len(batches)} batches")
    scalar, columnar = Scalar(), Columnar()

    def reference(batch: Sequence[bytes]) -> None:
        loads = orjson.loads
        for line in batch:
            loads(line)

    def decode_only(batch: Sequence[bytes]) -> None:
        for line in batch:
            decode(line)

    paths: dict[str, Callable[[Sequence[bytes]], None]] = {
        "orjson.loads (reference)": reference,
        "decode (today's, per event)": decode_only,
        "decode_batch (columnar)": lambda batch: decode_batch(batch),
        "decode + 5 rules' on_step (today)": scalar.run,
        "decode_batch + rounds + 5 rules' on_frame": columnar.run,
    }
    per_event: dict[str, list[float]] = {name: [] for name in paths}
    gc.collect()
    gc.freeze()
    with _bench.LoadSampler() as load:
        for batch in batches:
            for name, path in paths.items():
                started = time.thread_time_ns()
                path(batch)
                per_event[name].append((time.thread_time_ns() - started) / len(batch) / 1000)
    same = sorted(scalar.found) == sorted(columnar.found)

    ref = statistics.median(per_event["orjson.loads (reference)"])
    rows = {}
    print(f"\nper event, CPU us of this thread, {len(batches)} batches, load {load.summary()}")
    print("| path | median us | p99 us | mean us | events/CPU-s (mean) | median / orjson |")
    print("|---|---|---|---|---|---|")
    for name, values in per_event.items():
        med, p99 = statistics.median(values), _bench.percentile(values, 99)
        # Batches are of equal size (but the last): the mean per event is the run's throughput.
        mean = statistics.fmean(values)
        rows[name] = {"median_us": med, "p99_us": p99, "mean_us": mean}
        print(
            f"| {name} | {med:.2f} | {p99:.2f} | {mean:.2f} | {1e6 / mean:,.0f} | {med / ref:.2f} |"
        )
    print(f"\noutcomes: today {len(scalar.found)}, frames {len(columnar.found)}, same: {same}")

    state = state_bytes(scalar, columnar, args.ranks)
    print(
        f"per-rank rules' state, bytes per rank: dataclasses {state['dataclasses']:.0f}, "
        f"rank tables {state['tables']:.0f}"
    )
    _bench.write_results(
        f"frame_path-{args.ranks}",
        {
            "machine": _bench.machine(),
            "load": load.summary(),
            "ranks": args.ranks,
            "steps": args.steps,
            "events": len(lines),
            "batch": args.batch,
            "per_event": rows,
            "outcomes": {"today": len(scalar.found), "frames": len(columnar.found)},
            "same_outcomes": same,
            "state_bytes_per_rank": state,
        },
    )


def state_bytes(scalar: Scalar, columnar: Columnar, ranks: int) -> dict[str, float]:
    """Bytes per rank of the rules' state both ways: tracemalloc of a deep copy of each."""

    def traced(value: Any) -> int:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = copy.deepcopy(value)
        size = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del kept
        return size

    return {
        "dataclasses": traced(scalar.states) / ranks,
        "tables": traced(columnar.tables) / ranks,
    }


if __name__ == "__main__":
    main()
