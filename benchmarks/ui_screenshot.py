"""The README's screenshot: a simulated 64-rank job whose rank 5 leaks GPU memory, on the
dashboard's job page in Debian's chromium, the leaking rank standing out in the memory heatmap.

    .venv/bin/python benchmarks/ui_screenshot.py [--out docs/dashboard.png]

The job goes through the real detectors and the store's write path
(``rankwatch.ui.testing.fill_store``), into a throw-away SQLite store served by ``rankwatch ui``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from rankwatch.ui.testing import UIServer, browser_page, fill_store

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rankwatch-shot-"))
    try:
        db = f"sqlite:///{folder / 'shot.db'}"
        job = fill_store(
            db,
            job_id="llama-7b-run3",
            ranks=args.ranks,
            steps=args.steps,
            leak_rank=5,
            leak_step=args.steps // 10,
            extra=f"straggler@{args.steps // 4}:42,nccl_error@{args.steps * 2 // 5}:17",
        )
        print(
            f"filled: {job.ranks} ranks x {job.steps} steps, alerts: "
            + ", ".join(sorted({a.rule for a in job.alerts}))
        )
        with UIServer(db) as ui, browser_page(width=1280, height=900) as page:
            page.goto(f"{ui.url}/jobs/{job.job_id}?ranks=5,42")
            page.wait_for_selector("body[data-heatmap-drawn]")
            page.locator("#curves .u-legend").wait_for()
            page.wait_for_timeout(300)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            print(f"marked: {page.locator('#heatmap-marked').inner_text()}")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
