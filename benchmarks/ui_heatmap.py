"""The browser's time to a drawn heatmap: 1,024 ranks x 20,000 steps, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/ui_heatmap.py [--backend sqlite|postgres|both]
        [--ranks 1024] [--steps 20000] [--loads 12]

The store is filled by ``benchmarks/heatmap_query.py``'s :func:`fill_job` (rollups only: the
heatmap never reads raw rows; ``--raw`` adds them), served by ``rankwatch ui`` (a real server
process), and the job page is loaded ``--loads`` times in Debian's chromium after one warm-up.
Each load's figure is the page's own ``performance.measure``: ``heatmap`` (from the page's
heatmap request to the drawn canvas, band and marked row included) and
``heatmap-from-navigation`` (from the navigation's start). Beside them, in the same run, the
reference: the same JSON fetched by a plain HTTP client (the server's whole answer, no
drawing), median and p99.
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

from heatmap_query import JOB, fill_job  # type: ignore[import-not-found]

from rankwatch.sinks.storage import SqlStore, open_store
from rankwatch.sinks.testing import PostgresServer
from rankwatch.ui.testing import UIServer, browser_page, http_get


def stats(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):7.1f} ms  p99 {p99:7.1f} ms  ({len(ordered)})"


def bench(
    name: str, make_store: Callable[[], tuple[SqlStore, str]], args: argparse.Namespace
) -> None:
    store, url = make_store()
    with store:
        start = time.perf_counter()
        leak = fill_job(store, ranks=args.ranks, steps=args.steps, raw=args.raw)
        print(
            f"\n{name}: filled {args.ranks} x {args.steps} in {time.perf_counter() - start:.0f} s"
        )
    with UIServer(url) as ui, browser_page(width=1300, height=1000) as page:
        api = f"{ui.url}/api/jobs/{JOB}/heatmap?metric=gpu_memory_allocated_mb&stat=max&columns=200"
        drawn: list[float] = []
        from_nav: list[float] = []
        marked: set[str | None] = set()
        for load in range(args.loads + 1):
            page.goto(f"{ui.url}/jobs/{JOB}")
            page.wait_for_selector("body[data-heatmap-drawn]", timeout=120_000)
            got: Any = page.evaluate(
                "['heatmap', 'heatmap-from-navigation']"
                ".map((n) => performance.getEntriesByName(n)[0].duration)"
            )
            marked.add(page.locator("#heatmap").get_attribute("data-marked"))
            if load:  # the first load warms the server, the store's cache and the browser
                drawn.append(got[0])
                from_nav.append(got[1])
        fetched: list[float] = []
        size = 0
        for _ in range(args.loads):
            start = time.perf_counter()
            reply = http_get(api)
            fetched.append((time.perf_counter() - start) * 1000)
            size = len(reply.body)
    print(f"  marked row: rank {', '.join(sorted(str(m) for m in marked))} (the leak: rank {leak})")
    print(f"  browser, request to drawn heatmap ('heatmap')   {stats(drawn)}")
    print(f"  browser, navigation to drawn ('...-navigation') {stats(from_nav)}")
    print(f"  reference: the heatmap JSON by HTTP ({size / 1e6:.1f} MB) {stats(fetched)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--loads", type=int, default=12)
    parser.add_argument("--raw", action="store_true", help="also store the raw step rows")
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        folder = Path(tempfile.mkdtemp(prefix="rankwatch-ui-heatmap-"))
        try:
            url = f"sqlite:///{folder / 'ui.db'}"
            bench("SQLite", lambda: (open_store(url), url), args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.backend in ("postgres", "both"):
        with PostgresServer() as server:

            def make() -> tuple[SqlStore, str]:
                url = server.create_database("ui")
                return open_store(url), url

            bench("PostgreSQL", make, args)


if __name__ == "__main__":
    main()
