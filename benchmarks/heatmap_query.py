"""The dashboard's heatmap query: 1,024 ranks x 20,000 steps, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/heatmap_query.py [--backend sqlite|postgres|both]
        [--ranks 1024] [--steps 20000] [--repeat 40]

:func:`fill_job` fills a store with one job (noisy loss, memory and step time; one rank's
memory leaking) by a bulk path: the raw rows are exactly what ``write_batch`` stores, and the
rollups are computed with numpy by the rules of ``rankwatch.sinks.storage.rollups``; before the
big fill the script checks, on a small job, that the bulk path and the real write path leave
identical ``steps`` and ``step_rollups`` tables. The real write path's own rate is measured
separately (batches of one step per rank, as a live sink sees them), with and without rollups,
alternated on fresh stores: median and p99 batch latency and the ratio of the rates.

Then ``SqlStore.heatmap()`` of the leaking metric (200 columns asked, every rank) is timed:
median and p99 over ``--repeat`` calls after a warm-up, beside a reference measured in the same
run, the same cells from the raw rows (``GROUP BY rank, step / width``), and the curve query the
dashboard makes for two ranks. PostgreSQL is a throw-away server (fsync off) from
``rankwatch.sinks.testing``. ``benchmarks/ui_heatmap.py`` imports :func:`fill_job`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rankwatch.schemas import StepEvent
from rankwatch.sinks.storage import SqlStore, open_store
from rankwatch.sinks.storage import rollups as R
from rankwatch.sinks.storage.base import METRICS
from rankwatch.sinks.storage.postgres import PostgresStore
from rankwatch.sinks.storage.rows import STEP_COLUMNS
from rankwatch.sinks.testing import PostgresServer

T0 = 1_750_000_000.0
JOB = "bench-heatmap"
STEP_S = 0.5  # seconds per training step
FILLED = ("loss", "gpu_memory_allocated_mb", "step_time_s")


def job_values(ranks: int, steps: int, leak_rank: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``metric -> (ranks, steps)`` array: a falling noisy loss, memory with noise (the leaking
    rank gains 0.25 MB a step), step times with the odd slow step."""
    rng = np.random.default_rng(seed)
    step = np.arange(steps, dtype=np.float64)
    loss = 2.5 - 0.4 * np.log1p(step / 2000) + rng.normal(0, 0.03, (ranks, steps))
    memory = 30_000 + rng.normal(0, 40, (ranks, steps))
    memory[leak_rank] += 0.25 * step
    step_time = 0.5 + rng.gamma(2.0, 0.01, (ranks, steps))
    return {
        "loss": np.round(loss, 6),
        "gpu_memory_allocated_mb": np.round(memory, 2),
        "step_time_s": np.round(step_time, 5),
    }


def _raw_rows(job_id: str, values: dict[str, np.ndarray], rank: int) -> list[tuple[Any, ...]]:
    steps = values["loss"].shape[1]
    columns = [values[m][rank].tolist() if m in values else [None] * steps for m in METRICS]
    return [
        (job_id, rank, step, T0 + step * STEP_S, None, None, *cells, None, None)
        for step, cells in enumerate(zip(*columns, strict=True))
    ]


def _rollup_rows(job_id: str, values: dict[str, np.ndarray]) -> list[tuple[Any, ...]]:
    """Every width's rollup rows, by the rules of ``rollups`` (NaN-free input)."""
    ranks, steps = values["loss"].shape
    ts = T0 + np.arange(steps) * STEP_S
    blocks = -(-steps // R.WIDTHS[0])
    pad = blocks * R.WIDTHS[0] - steps
    level: dict[str, tuple[np.ndarray, ...]] = {}
    for metric in values:  # the finest width from the raw values (NaN pads a partial block)
        v = np.pad(values[metric], ((0, 0), (0, pad)), constant_values=np.nan)
        v = v.reshape(ranks, blocks, R.WIDTHS[0])
        n = np.sum(~np.isnan(v), axis=2)
        level[metric] = (np.nanmin(v, 2), np.nanmedian(v, 2), np.nanmax(v, 2), n)
    t = np.pad(ts, (0, pad), constant_values=np.nan).reshape(blocks, R.WIDTHS[0])
    first, last = np.nanmin(t, 1), np.nanmax(t, 1)
    out: list[tuple[Any, ...]] = []
    for depth, width in enumerate(R.WIDTHS):
        if depth:  # a coarser width from the finer one: min, median of medians, max, sum
            blocks = -(-level["loss"][0].shape[1] // R.FANOUT)
            pad = blocks * R.FANOUT - level["loss"][0].shape[1]

            def group(a: np.ndarray, fill: float, pad: int = pad, count: int = blocks) -> Any:
                padded = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)], constant_values=fill)
                return padded.reshape(*a.shape[:-1], count, R.FANOUT)

            for metric, (lo, med, hi, n) in level.items():
                level[metric] = (
                    np.nanmin(group(lo, np.nan), -1),
                    np.nanmedian(group(med, np.nan), -1),
                    np.nanmax(group(hi, np.nan), -1),
                    group(n, 0).sum(-1),
                )
            first, last = np.nanmin(group(first, np.nan), -1), np.nanmax(group(last, np.nan), -1)
        cells = {m: [a.tolist() for a in level[m]] for m in level}
        for rank in range(ranks):
            for block in range(blocks):
                row: list[Any] = [job_id, width, rank, block, first[block], last[block], 0]
                for metric in METRICS:
                    if metric in cells:
                        lo, med, hi, n = (cells[metric][i][rank][block] for i in range(4))
                        row += [lo, med, hi, int(n)]
                    else:
                        row += [None, None, None, 0]
                out.append(tuple(row))
    return out


def fill_job(
    store: SqlStore,
    *,
    job_id: str = JOB,
    ranks: int = 1024,
    steps: int = 20_000,
    leak_rank: int | None = None,
    seed: int = 0,
    raw: bool = True,
) -> int:
    """Fill ``store`` with one job as the storage sink would have stored it (see the module
    docstring); ``raw=False`` leaves the raw rows out (a job past raw-step retention). Returns
    the leaking rank (default: the one 60% of the way up)."""
    leak_rank = ranks * 3 // 5 if leak_rank is None else leak_rank
    values = job_values(ranks, steps, leak_rank, seed)
    p = store.ph
    with store._transaction():
        if raw:
            insert = (
                f"INSERT INTO steps ({', '.join(STEP_COLUMNS)})"
                f" VALUES ({', '.join([p] * len(STEP_COLUMNS))})"
            )
            for rank in range(ranks):
                store._executemany(insert, _raw_rows(job_id, values, rank))
        store._executemany(
            f"INSERT INTO job_ranks (job_id, rank, last_step, last_ts) VALUES ({p}, {p}, {p}, {p})",
            [(job_id, r, steps - 1, T0 + (steps - 1) * STEP_S) for r in range(ranks)],
        )
        rows = _rollup_rows(job_id, values)
        cols = R.ROLLUP_COLUMNS
        insert = (
            f"INSERT INTO step_rollups ({', '.join(cols)}) VALUES ({', '.join([p] * len(cols))})"
        )
        for start in range(0, len(rows), 50_000):
            store._executemany(insert, rows[start : start + 50_000])
    if isinstance(store, PostgresStore):
        # What autovacuum does soon after a bulk load: without statistics, the planner reads
        # the two-rank heatmap through the block index (every rank's rows) instead of the key.
        store._execute("ANALYZE step_rollups")
    return leak_rank


def _events(job_id: str, values: dict[str, np.ndarray], rank: int, step: int) -> StepEvent:
    return StepEvent(
        job_id=job_id,
        rank=rank,
        step=step,
        timestamp=T0 + step * STEP_S,
        **{m: float(values[m][rank][step]) for m in values},
    )


def _table(store: SqlStore, name: str, order: str) -> list[tuple[Any, ...]]:
    return store._query(f"SELECT * FROM {name} ORDER BY {order}")


def check_bulk_path(make_store: Callable[[], SqlStore]) -> None:
    """The bulk fill leaves the same tables as the write path, on a small job."""
    ranks, steps = 6, 300
    values = job_values(ranks, steps, leak_rank=2, seed=5)
    with make_store() as real, make_store() as bulk:
        for step in range(steps):  # one step of every rank per batch, as a live sink sees it
            real.write_batch([_events("j", values, r, step) for r in range(ranks)], [], [])
        fill_job(bulk, job_id="j", ranks=ranks, steps=steps, leak_rank=2, seed=5)
        for name, order in (("steps", "rank, step"), ("step_rollups", "width, rank, block")):
            a, b = _table(real, name, order), _table(bulk, name, order)
            assert a == b, f"bulk path differs from write_batch in {name}"


def write_times(
    store: SqlStore, *, rollups: bool, ranks: int = 1024, steps: int = 64
) -> list[float]:
    """Milliseconds of each ``write_batch``, a batch being one step of every rank (as a live
    sink sees them), ``steps`` batches; ``rollups=False`` skips the rollups (raw rows only)."""
    values = job_values(ranks, steps, leak_rank=0, seed=9)
    batches = [[_events("w", values, r, s) for r in range(ranks)] for s in range(steps)]
    saved = type(store)._write_rollups
    if not rollups:
        store._write_rollups = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        times = []
        for batch in batches:
            start = time.perf_counter()
            store.write_batch(batch, [], [])
            times.append((time.perf_counter() - start) * 1000)
        return times
    finally:
        store._write_rollups = saved.__get__(store)  # type: ignore[method-assign]


def write_rate(store: SqlStore, *, rollups: bool, ranks: int = 1024, steps: int = 64) -> float:
    """Steps per second through ``write_batch`` (see :func:`write_times`)."""
    return (
        ranks * steps / (sum(write_times(store, rollups=rollups, ranks=ranks, steps=steps)) / 1000)
    )


def percentiles(times: list[float]) -> tuple[float, float]:
    """(median, p99) of a list of times."""
    ordered = sorted(times)
    return statistics.median(ordered), ordered[
        min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    ]


def bench_writes(name: str, make_store: Callable[[], SqlStore], args: argparse.Namespace) -> None:
    """Batch latency with and without rollups, fresh stores, the two alternated
    ``--write-rounds`` times so that the machine's load falls on both alike."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.write_rounds):
        for rollups in (True, False):
            with make_store() as store:
                times[rollups] += write_times(store, rollups=rollups, steps=args.write_steps)
    print(
        f"\n{name}: write_batch, 1,024 steps a batch (one per rank), {args.write_steps} batches"
        f" x {args.write_rounds} rounds each, alternated:"
    )
    (med_r, p99_r), (med_w, p99_w) = percentiles(times[False]), percentiles(times[True])
    for label, med, p99 in (("raw rows only", med_r, p99_r), ("with rollups", med_w, p99_w)):
        print(
            f"  {label:<14} batch median {med:6.1f} ms ({1024 / med * 1000:7,.0f} steps/s)"
            f"  p99 {p99:6.1f} ms ({1024 / p99 * 1000:7,.0f} steps/s)"
        )
    print(
        f"  with/without rollups: rate at the median {med_r / med_w:.2f},"
        f" at p99 {p99_r / p99_w:.2f}"
    )


def timed(run: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(median, p99) milliseconds over ``repeat`` calls after one warm-up."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]


def bench(name: str, make_store: Callable[[], SqlStore], args: argparse.Namespace) -> None:
    check_bulk_path(make_store)
    bench_writes(name, make_store, args)
    if args.write_only:
        return
    with make_store() as store:
        start = time.perf_counter()
        leak = fill_job(store, ranks=args.ranks, steps=args.steps)
        spent = time.perf_counter() - start
        print(f"  bulk fill {args.ranks} x {args.steps}: {spent:.0f} s, {store.counts()}")
        metric = "gpu_memory_allocated_mb"
        heatmap = store.heatmap(JOB, metric)
        width = heatmap.step_edges[1] - heatmap.step_edges[0]
        last = [row[-1] or 0.0 for row in heatmap.values]
        assert last.index(max(last)) == leak, "the leaking rank is not the hottest row"
        rows, columns = len(heatmap.ranks), len(heatmap.step_edges) - 1
        print(f"  heatmap: {rows} x {columns} cells ({rows * columns:,}), {width} steps a column")
        runs: dict[str, Callable[[], Any]] = {
            "heatmap(max, 200 columns)": lambda: store.heatmap(JOB, metric),
            "heatmap(median, 200 columns)": lambda: store.heatmap(JOB, metric, stat="median"),
            "heatmap(max, ranks=[0, leak])": lambda: store.heatmap(JOB, metric, ranks=[0, leak]),
        }
        for label, run in runs.items():
            med, p99 = timed(run, args.repeat)
            print(f"  {label:<34} median {med:8.1f} ms  p99 {p99:8.1f} ms  ({args.repeat} calls)")
        p = store.ph
        reference = lambda: store._query(  # noqa: E731
            f"SELECT rank, step / {width}, max({metric}) FROM steps WHERE job_id = {p}"
            f" GROUP BY rank, step / {width}",
            (JOB,),
        )
        med, p99 = timed(reference, args.reference_repeat)
        print(
            f"  {'reference: same cells from raw rows':<34} median {med:8.1f} ms  p99 {p99:8.1f} ms"
            f"  ({args.reference_repeat} calls)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--reference-repeat", type=int, default=3)
    parser.add_argument("--write-steps", type=int, default=160, help="batches a write round")
    parser.add_argument("--write-rounds", type=int, default=2)
    parser.add_argument("--write-only", action="store_true", help="skip the 20M-row heatmap")
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        folder = Path(tempfile.mkdtemp(prefix="rankwatch-heatmap-"))
        made = iter(range(1_000))
        try:
            bench("SQLite", lambda: open_store(f"sqlite:///{folder / f'{next(made)}.db'}"), args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.backend in ("postgres", "both"):
        with PostgresServer() as server:
            made = iter(range(1_000))
            bench("PostgreSQL", lambda: open_store(server.create_database(f"h{next(made)}")), args)


if __name__ == "__main__":
    main()
