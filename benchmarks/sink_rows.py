"""Storage sink write rate: step rows/s through ``Store.write_batch`` beside a raw insert.

For each back-end (SQLite file, WAL, ``synchronous=FULL``; a throw-away PostgreSQL 15 on
loopback from ``rankwatch.sinks.testing``, fsync off), in the same run and alternating:

- the store: ``Store.write_batch`` of step events in batches of 5,000, as the storage sink
  writes them (row conversion, ``ON CONFLICT`` idempotence, the primary key and ``ts`` index,
  the per-rank ``job_ranks`` summary), into a fresh store each round;
- the reference: the same rows, already converted, ``executemany`` into a bare table of the
  same columns (no key, no index, no conflict clause), one transaction per 5,000 rows: what
  the driver and the database take at best.

    .venv/bin/python benchmarks/sink_rows.py [--rows 200000] [--rounds 2]

Writes ``benchmarks/results/sink_rows.json``. The 1M-row figures with queries are in
``sink_queries.py`` (issue 6).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _bench

BATCH = 5_000


def events(total: int) -> list[Any]:
    from rankwatch.schemas import decode

    ranks = 1024
    out = []
    for step in range(total // ranks):
        out.extend(decode(v) for v in _bench.step_batch("sink-job", ranks, step, 1e9 + step))
    return out


def timed_store(open_store: Callable[[int], Any], i: int, steps: list[Any]) -> float:
    with open_store(i) as store:
        started = time.perf_counter()
        for i in range(0, len(steps), BATCH):
            store.write_batch(steps[i : i + BATCH], [], [])
        return len(steps) / (time.perf_counter() - started)


def timed_raw(connect: Callable[[], Any], ph: str, rows: list[tuple[Any, ...]]) -> float:
    from rankwatch.sinks.storage import rows as row_defs

    cols = row_defs.STEP_COLUMNS
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("DROP TABLE IF EXISTS raw_steps")
        cur.execute(f"CREATE TABLE raw_steps ({', '.join(f'{c} TEXT' for c in cols)})")
        conn.commit()
        sql = f"INSERT INTO raw_steps ({', '.join(cols)}) VALUES ({', '.join([ph] * len(cols))})"
        started = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            cur.executemany(sql, rows[i : i + BATCH])
            conn.commit()
        return len(rows) / (time.perf_counter() - started)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from rankwatch.sinks.storage import open_store
    from rankwatch.sinks.storage.rows import step_row
    from rankwatch.sinks.testing import PostgresServer

    steps = events(args.rows)
    rows = [step_row(e) for e in steps]
    results: dict[str, Any] = {"rows": len(steps)}
    with _bench.LoadSampler() as load, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def sqlite_connect() -> sqlite3.Connection:
            conn = sqlite3.connect(folder / "raw.db")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            return conn

        backends: dict[str, tuple[Callable[[int], Any], Callable[[], Any], str]] = {
            "SQLite": (
                lambda i: open_store(f"sqlite:///{folder / f'store-{i}.db'}"),
                sqlite_connect,
                "?",
            )
        }
        server = PostgresServer().start()
        try:
            import psycopg

            backends["PostgreSQL"] = (
                lambda i: _pg_store(server.url, open_store),
                lambda: psycopg.connect(server.url),
                "%s",
            )
            for name, (store_of, connect, ph) in backends.items():
                store_rates, raw_rates = [], []
                for i in range(args.rounds):
                    store_rates.append(timed_store(store_of, i, steps))
                    raw_rates.append(timed_raw(connect, ph, rows))
                    print(
                        f"{name} round {i + 1}: store {store_rates[-1]:,.0f} rows/s, "
                        f"raw executemany {raw_rates[-1]:,.0f} rows/s",
                        flush=True,
                    )
                store, raw = statistics.median(store_rates), statistics.median(raw_rates)
                results[name] = {"store": store, "raw": raw, "ratio": store / raw}
        finally:
            server.stop()
    results = {"machine": _bench.machine(), "load_1min": load.summary(), **results}
    print(f"\n{len(steps):,} step rows, batches of {BATCH:,}; load (1 min) {load.summary()}")
    print("| | store.write_batch rows/s | raw executemany rows/s | ratio |\n|---|---|---|---|")
    for name in backends:
        r = results[name]
        print(f"| {name} | {r['store']:,.0f} | {r['raw']:,.0f} | {r['ratio']:.2f} |")
    _bench.write_results("sink_rows", results)


def _pg_store(url: str, open_store: Callable[[str], Any]) -> Any:
    """A fresh store each round: drop the tables a previous round filled."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return open_store(url)


if __name__ == "__main__":
    sys.exit(main())
