"""The soak's job generator makes what it says, the same way for a seed; the runner runs.

Tiny jobs only (a few thousand events each). Figures (false alarms, detection, speed) are the
runner's output, not checked here: ``benchmarks/soak.py`` prints and records them.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from _soak_faults import FaultCase  # noqa: E402
from _soak_jobs import JobParams, SoakJob, draw_job  # noqa: E402

from rankwatch.schemas import LogEvent, StepEvent, encode  # noqa: E402

SMALL = 5_000  # events per job: 8 ranks x ~600 steps


def first_seed(want: Callable[[JobParams], bool]) -> JobParams:
    """The first small job that has what a test looks at (deterministic: seeds in order)."""
    return next(p for s in range(500) if want(p := draw_job(s, max_events=SMALL)))


def test_a_seed_gives_the_same_job_and_another_seed_another() -> None:
    def encoded(seed: int) -> list[bytes]:
        return [encode(e) for e in SoakJob(draw_job(seed, max_events=SMALL)).events()]

    first = encoded(3)
    assert first == encoded(3)
    assert first != encoded(4)
    assert draw_job(3, max_events=SMALL) == draw_job(3, max_events=SMALL)


def test_a_restart_goes_back_to_the_last_checkpoint_with_the_attempt_where_the_job_says() -> None:
    for with_attempt in (True, False):

        def restarting(p: JobParams, a: bool = with_attempt) -> bool:
            return bool(p.restarts) and p.attempt_field == a

        p = first_seed(restarting)
        steps = [e for e in SoakJob(p).events() if isinstance(e, StepEvent) and e.rank == 1]
        drops = [(a, b) for a, b in itertools.pairwise(steps) if b.step < a.step]
        stop = p.restarts[0][0]
        resumed = (stop - 1) // p.ckpt_every * p.ckpt_every + 1
        assert drops, "steps never went back"
        before, after = drops[0]
        assert before.step <= stop and after.step == resumed
        assert after.epoch > before.epoch + 60  # down a minute or more
        if with_attempt:
            assert (before.attempt, after.attempt) == (0, 1)
        else:
            assert {e.attempt for e in steps} == {None}


def test_an_evaluation_pause_is_logged_as_the_hugging_face_trainer_logs_it() -> None:
    p = first_seed(lambda p: p.eval_every > 0 and p.framework == "hf" and p.eval_phase)
    events = list(SoakJob(p).events())
    messages = [e.message for e in events if isinstance(e, LogEvent) and e.rank == 0]
    at = messages.index("***** Running Evaluation *****")
    assert messages[at + 1].startswith("  Num examples = ")
    assert messages[at + 2] == "  Batch size = 8"
    assert any(m.startswith("{'eval_loss': ") for m in messages[at:])
    phases = {(e.message, e.phase) for e in events if isinstance(e, LogEvent)}
    assert {("phase eval begins", "eval"), ("phase eval ends", "train")} <= phases
    # No step for a minute or more across the pass.
    rank0 = [e.epoch for e in events if isinstance(e, StepEvent) and e.rank == 0]
    assert max(b - a for a, b in itertools.pairwise(rank0)) > 60


def test_delivery_duplicates_some_events_and_keeps_each_ranks_steps_in_order() -> None:
    job = SoakJob(draw_job(5, max_events=SMALL))
    events = list(job.events())
    assert job.duplicates > 0
    assert len(events) - len({id(e) for e in events}) == job.duplicates
    assert len(events) == job.step_events + job.log_events
    last: dict[int, float] = {}
    for e in events:
        if isinstance(e, StepEvent) and e.epoch < last.get(e.rank, 0) - 2.5:
            pytest.fail(f"rank {e.rank}'s step {e.step} arrived after a later one")
        if isinstance(e, StepEvent):
            last[e.rank] = max(last.get(e.rank, 0), e.epoch)


def test_a_memory_leak_grows_only_the_faulty_ranks_memory_from_its_start() -> None:
    params, fault = FaultCase("memory_leak", 50.0, seed=2, ranks=8).build(SMALL)
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for e in SoakJob(params, fault).events():
        if isinstance(e, StepEvent) and e.gpu_memory_usage is not None:
            if e.step == fault.start_step - 1:
                first[e.rank] = e.gpu_memory_usage
            last[e.rank] = e.gpu_memory_usage
    assert fault.start_time is not None
    grown = {r: last[r] - first[r] for r in first}
    assert max(grown, key=lambda r: grown[r]) == fault.rank
    assert grown[fault.rank] > 10  # percent of the GPU


def run_soak(tmp: Path, *args: str) -> dict[str, object]:
    env = {**os.environ, "RANKWATCH_BENCH_RESULTS": str(tmp)}
    done = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), *args, "--out", "t"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "False alarms:" in done.stdout
    result: dict[str, object] = json.loads((tmp / "soak-t.json").read_text())
    return result


def test_the_soak_runs_healthy_jobs_and_faults_end_to_end(tmp_path: Path) -> None:
    result = run_soak(
        tmp_path,
        *("--healthy-jobs", "2", "--seed", "7", "--max-events-per-job", str(SMALL)),
        *("--faults", "--fault-seeds", "1", "--fault-kinds", "nan_loss,cuda_oom"),
        *("--fault-shapes", "8", "--processes", "2"),
    )
    healthy, faults = result["healthy"], result["faults"]
    assert isinstance(healthy, dict) and isinstance(faults, dict)
    assert healthy["seeds"] == [7, 8]
    assert healthy["events"] > 0 and healthy["rank_hours"] > 0
    assert "per_1000_rank_hours" in healthy["false_alarms"]
    assert [j["job_id"] for j in healthy["jobs"]] == ["soak-7", "soak-8"]
    assert set(faults["curve"]) == {"nan_loss", "cuda_oom"}
    assert all(row["total"] == 1 for c in faults["curve"].values() for row in c["rows"])
    assert result["git"]["revision"]  # type: ignore[index]


def test_the_soak_draws_jobs_until_the_rank_hours_are_covered(tmp_path: Path) -> None:
    result = run_soak(
        tmp_path, "--rank-hours", "2", "--max-events-per-job", str(SMALL), "--processes", "1"
    )
    healthy = result["healthy"]
    assert isinstance(healthy, dict)
    hours = [j["rank_hours"] for j in healthy["jobs"]]
    assert sum(hours) >= 2 and sum(hours[:-1]) < 2
