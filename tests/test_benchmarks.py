"""The benchmark scripts still run: tiny versions of the ones that need no broker.

Figures are not checked (timing assertions do not belong in tests); the scripts' outputs are.
The full runs and their results are in ``benchmarks/`` and ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str, tmp: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "RANKWATCH_BENCH_DATA": str(tmp / "data"),
        "RANKWATCH_BENCH_RESULTS": str(tmp / "results"),
    }
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name = next((tmp / "results").glob("*.json"))
    result: dict[str, object] = json.loads(name.read_text())
    return result


def test_state_memory_runs(tmp_path: Path) -> None:
    result = run("state_memory", "--ranks", "64", "--steps", "12", tmp=tmp_path)
    assert result["ranks"] == 64
    assert isinstance(result["tracemalloc_bytes_per_rank"], float)
    assert result["machine"]["nproc"] == os.cpu_count()  # type: ignore[index]


def test_replay_throughput_runs(tmp_path: Path) -> None:
    result = run(
        "replay_throughput", "--ranks", "8", "--steps", "20", "--rounds", "1", tmp=tmp_path
    )
    replay = result["replay"]["current"]  # type: ignore[index]
    assert replay["runs"][0]["events"] == result["file"]["events"]  # type: ignore[index]
    assert set(result["breakdown_us_per_event"]["current"]) >= {"decode_us", "engine_us"}  # type: ignore[index]
