"""``rankwatch replay`` over files: deterministic output, seeds-style logs, bad lines."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import orjson
import pytest

from rankwatch.cli.main import main
from rankwatch.schemas import LogEvent, StepEvent, decode, encode
from rankwatch.streams.replay import Record, file_records, replay

T0 = 1_743_848_595.0


def recorded_run(jobs: int = 2, ranks: int = 8, steps: int = 80, seed: int = 7) -> list[bytes]:
    """Events of a few jobs in arrival order, with duplicates, reordering and faults."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    for step in range(steps):
        batch: list[bytes] = []
        for j in range(jobs):
            for rank in range(ranks):
                loss = 2.0 + 0.05 * rng.random()
                if j == 0 and rank == 3 and step >= 50:
                    loss = math.nan
                batch.append(
                    encode(
                        StepEvent(
                            job_id=f"job-{j}",
                            rank=rank,
                            world_size=ranks,
                            step=step,
                            timestamp=T0 + step,
                            loss=loss,
                            gradient_norm=1.0 + 0.1 * rng.random(),
                            throughput_tokens_per_sec=80_000 * (1 + 0.02 * rng.random()),
                        )
                    )
                )
        rng.shuffle(batch)  # small reordering within a step
        if step % 10 == 0:
            batch += batch[:3]  # at-least-once duplicates
        lines += batch
        if step == 60:
            lines.append(
                encode(
                    LogEvent(
                        job_id="job-1",
                        rank=5,
                        timestamp=T0 + step,
                        level="ERROR",
                        step=step,
                        message="torch.OutOfMemoryError: CUDA out of memory. "
                        "Tried to allocate 2.00 GiB",
                    )
                )
            )
    return lines


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_replay_twice_is_byte_identical(tmp_path: Path) -> None:
    events = _write(tmp_path / "run.jsonl", recorded_run())
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.jsonl"
        assert main(["replay", "--input", str(events), "--output", str(out)]) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    alerts = [decode(line) for line in outputs[0].splitlines()]
    rules = {(a.rule, a.job_id) for a in alerts}
    assert ("cuda_oom", "job-1") in rules
    assert ("loss_explosion", "job-0") in rules


def test_bad_lines_are_reported_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = recorded_run(jobs=1, ranks=2, steps=5)
    lines[3:3] = [b"not json", b'{"kind":"step","job_id":"j","rank":-1,"step":1,"timestamp":0}']
    events = _write(tmp_path / "run.jsonl", lines)
    assert main(["replay", "--input", str(events)]) == 0
    err = capsys.readouterr().err
    assert "4: not valid JSON" in err
    assert "5: rank: Input should be greater than or equal to 0" in err
    assert "replay: 12 events, 2 bad, 0 alerts" in err


def test_seeds_style_per_step_logs_replay_with_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed article's per-step records, no job_id and no kind: --job fills the job."""
    lines = []
    for step in range(1200, 1260):
        for rank in range(4):
            record = {
                "step": step,
                "loss": 2.15,
                "learning_rate": 1.5e-5,
                "gpu_memory_usage": 87.3,
                "gradient_norm": 0.42,
                "throughput_tokens_per_sec": 78400,
                "timestamp": f"2025-04-05T10:{23 + (step - 1200) // 60:02d}:"
                f"{(step - 1200) % 60:02d}Z",
                "rank": rank,
            }
            if rank == 7 % 4 and step >= 1250:
                record["loss"] = float("nan")
            lines.append(
                orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY).replace(b"null", b'"nan"')
            )
    events = _write(tmp_path / "seed.jsonl", lines)
    assert main(["replay", "--input", str(events)]) == 0
    assert "240 bad" in capsys.readouterr().err  # job_id is required...
    assert main(["replay", "--input", str(events), "--job", "j-20250405"]) == 0
    captured = capsys.readouterr()
    assert "240 events, 0 bad" in captured.err
    alerts = [decode(line) for line in captured.out.splitlines()]
    assert alerts and {a.job_id for a in alerts} == {"j-20250405"}
    assert "loss_explosion" in {a.rule for a in alerts}
    assert alerts[0].ranks == [3]
    assert alerts[0].step == 1250


def test_replay_api_reports_where(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.StringIO()
    stats = replay(
        [Record("t[0]@5", b"{}"), *file_records(io.BytesIO(b"\n" + recorded_run()[0]))],
        out,
        err=err,
    )
    assert err.getvalue() == "t[0]@5: kind: missing required field\n"
    assert (stats.events, stats.bad) == (1, 1)
