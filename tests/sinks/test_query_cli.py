"""The query commands end to end (``rankwatch logs|steps|jobs|alerts``) on a real SQLite store."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from rankwatch.cli.main import main
from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.sinks.storage import open_store

T0 = 1_750_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'rw.db'}"
    with open_store(url) as store:
        steps = [
            StepEvent(
                job_id="llm-7b",
                rank=r,
                step=s,
                timestamp=T0 + s,
                loss=3.0 * math.exp(-s / 40) + (0.015 * s if r == 5 else 0.0),
            )
            for r in range(8)
            for s in range(120)
        ]
        logs = [
            LogEvent(
                job_id="llm-7b",
                rank=7,
                timestamp=T0 + 100,
                level="ERROR",
                message="NCCL watchdog timeout\nTraceback (most recent call last):",
            ),
            LogEvent(
                job_id="llm-7b",
                rank=3,
                timestamp=T0 + 101,
                level="INFO",
                message="checkpoint saved",
            ),
        ]
        alerts = [
            Alert(
                alert_id="x1",
                job_id="llm-7b",
                rule="straggler",
                severity="warning",
                scope="rank",
                ranks=[5],
                step=60,
                first_seen=T0 + 60,
                last_seen=T0 + 90,
                summary="rank 5 drifts from its peers",
            )
        ]
        store.write_batch(steps, logs, alerts)
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_logs_table_json_and_filters(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "logs", "--job", "llm-7b", "--db", db)
    assert code == 0
    assert out.splitlines()[0].split() == ["TIME", "RANK", "LEVEL", "MESSAGE"]
    assert "        Traceback (most recent call last):" in out  # indented under its record
    code, out, _ = run(
        capsys,
        "logs",
        "--job",
        "llm-7b",
        "--rank",
        "7",
        "--level",
        "error",
        "--grep",
        "watchdog",
        "--since",
        "2025-01-01T00:00:00Z",
        "--json",
        "--db",
        db,
    )
    (record,) = [orjson.loads(line) for line in out.splitlines()]
    assert (record["rank"], record["level"], record["timestamp"]) == (
        7,
        "ERROR",
        "2025-06-15T15:08:20Z",
    )


def test_steps_side_by_side_and_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "steps", "--job", "llm-7b", "--metric", "loss", "--ranks", "4-5", "--db", db
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["STEP", "rank", "4", "rank", "5"]
    assert lines[1].split() == ["0", "3", "3"] and len(lines) == 121
    _code, out, _ = run(
        capsys, "steps", "--job", "llm-7b", "--metric", "loss", "--ranks", "0", "--json", "--db", db
    )
    assert orjson.loads(out.splitlines()[0]) == {
        "rank": 0,
        "step": 0,
        "loss": 3.0,
        "timestamp": "2025-06-15T15:06:40Z",
    }


def test_steps_plot_writes_a_png_of_every_rank(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "loss.png"
    code, out, _ = run(
        capsys, "steps", "--job", "llm-7b", "--metric", "loss", "--plot", str(png), "--db", db
    )
    assert code == 0 and "8 ranks, 960 points" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_jobs_and_alerts(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "jobs", "--db", db)
    assert out.splitlines()[1].split()[:5] == ["llm-7b", "running", "8", "0-7", "119"]
    assert out.splitlines()[1].split()[-1] == "1"  # one open alert
    code, out, _ = run(capsys, "alerts", "--job", "llm-7b", "--db", db)
    assert code == 0
    assert "WARNING  firing   llm-7b straggler ranks=5 step=60: rank 5 drifts" in out
    assert "\033[" not in out  # no colour when the output is not a terminal
    _code, out, _ = run(capsys, "alerts", "--job", "llm-7b", "--json", "--db", db)
    assert orjson.loads(out)["alert_id"] == "x1"


def test_bad_arguments_are_one_line_errors(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "logs", "--job", "x", "--since", "soon", "--db", db)
    assert code == 2
    assert err.startswith("rankwatch logs: error: --since 'soon': expected a duration")
    code, _, err = run(
        capsys, "steps", "--job", "x", "--metric", "loss", "--ranks", "7-2", "--db", db
    )
    assert (code, err.strip()) == (
        2,
        "rankwatch steps: error: --ranks '7-2': 7-2 is not a range (low-high)",
    )


def test_jobs_say_which_ended_cleanly_and_which_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'states.db'}"
    with open_store(url) as store:
        steps = [StepEvent(job_id=j, rank=r, step=0, timestamp=T0) for j in "abc" for r in (0, 1)]
        ended = [
            LogEvent(job_id=j, rank=r, timestamp=T0 + 1, level="INFO", logger="rankwatch.lifecycle",
                     message=f"rankwatch: rank {r} ended cleanly at step 0", lifecycle="ended")
            for j, ranks in (("a", (0, 1)), ("b", (0,))) for r in ranks
        ]  # fmt: skip
        stopped = Alert(alert_id="s1", job_id="c", rule="job_stopped", severity="critical",
                        scope="job", ranks=[1], step=0, first_seen=T0 + 5, last_seen=T0 + 5,
                        summary="Job stopped at step 0 without a clean end")  # fmt: skip
        store.write_batch(steps, ended, [stopped])
    assert run(capsys, "jobs", "--json", "--db", url)[0] == 0
    out = run(capsys, "jobs", "--json", "--db", url)[1]
    states = {r["job_id"]: r["state"] for r in map(orjson.loads, out.splitlines())}
    assert states == {"a": "ended", "b": "running", "c": "stopped"}
