"""The text-log parser and ``rankwatch ship``: records, levels, ranks, steps, metrics, follow."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from datetime import UTC
from pathlib import Path

import orjson

from rankwatch.cli.main import main
from rankwatch.producers._tail import IDLE, follow
from rankwatch.producers.ship import LogParser
from rankwatch.schemas import LogEvent, StepEvent, decode

DATA = Path(__file__).parent / "data"


def _parse(lines: list[str], rank: int = 0) -> list[StepEvent | LogEvent]:
    return list(LogParser("job-1", rank, naive_tz=UTC, start_time=0.0).parse(lines))


def test_real_pytorch_error_log_gives_one_event_per_record(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    code = main(
        [
            "ship",
            str(DATA / "torchrun_nccl_oom.log"),
            "--job",
            "llama-run3",
            "--rank",
            "0",
            "--utc",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    events = [decode(line) for line in out.read_bytes().splitlines()]
    logs = [e for e in events if isinstance(e, LogEvent)]
    steps = [e for e in events if isinstance(e, StepEvent)]
    # 17 records in the file (counted by hand), each exactly once.
    assert len(logs) == 17
    assert [(s.rank, s.step) for s in steps] == [(0, 1), (0, 2), (0, 3)]
    assert math.isnan(steps[2].loss or 0) and math.isnan(steps[2].gradient_norm or 0)

    oom = [e for e in logs if "OutOfMemoryError" in e.message]
    assert len(oom) == 1 and oom[0].rank == 1 and oom[0].level == "ERROR"
    assert oom[0].message.startswith("Traceback") and oom[0].message.count("\n") == 8
    watchdog = [e for e in logs if "Watchdog caught collective operation timeout" in e.message]
    assert sorted(e.rank for e in watchdog) == [2, 3]
    assert all(e.level == "ERROR" and e.message.count("\n") == 0 for e in watchdog)
    chained = [e for e in logs if "DistBackendError" in e.message]
    assert len(chained) == 1 and chained[0].rank == 3 and "SystemExit" in chained[0].message
    upload = next(e for e in logs if "checkpoint upload failed" in e.message)
    assert upload.level == "ERROR" and "AccessDenied" in upload.message and upload.step == 3
    assert "wJalrXUtnFEMI" not in upload.message and "[REDACTED]" in upload.message
    start = next(e for e in logs if "starting training run" in e.message)
    assert "hf_AbCd" not in start.message and start.level == "INFO"
    assert start.timestamp.isoformat() == "2025-04-05T10:20:09.412000+00:00"
    summary = next(e for e in logs if "ChildFailedError" in e.message)
    assert "Root Cause" in summary.message and "gpu-node-07" in summary.message
    assert [e.level for e in logs if "ProcessGroupNCCL.cpp:1250" in e.message] == ["WARNING"]
    # Event time follows file order, also for lines without a timestamp.
    first = next(e for e in logs if "OMP_NUM_THREADS" in e.message)
    assert first.timestamp < start.timestamp


def test_levels_ranks_and_steps_from_line_forms() -> None:
    events = _parse(
        [
            "[Rank 7] step 120: all good",
            "[default5]:NCCL WARN Cuda failure 'out of memory'",
            "[4]:[deepspeed] OVERFLOW! Rank 4 Skipping step. Attempted loss scale: 65536, "
            "reducing to 32768",
            "WARNING:root:slow data loader",
            "2025-04-05T10:23:15+08:00 CRITICAL node lost",
        ]
    )
    # Records close at different times per rank stream; event time keeps file order.
    events.sort(key=lambda e: e.timestamp)
    assert [(e.rank, e.level, getattr(e, "step", None)) for e in events] == [
        (7, "INFO", 120),
        (5, "WARNING", None),
        (4, "WARNING", None),
        (0, "WARNING", None),
        (0, "CRITICAL", None),
    ]
    assert events[4].timestamp.isoformat() == "2025-04-05T02:23:15+00:00"


def test_megatron_and_hf_metric_lines_become_step_events() -> None:
    events = _parse(
        [
            " [2025-04-05 10:23:15] iteration      100/  500000 | consumed samples: 51200 | "
            "elapsed time per iteration (ms): 1234.5 | learning rate: 1.000E-04 | global batch "
            "size:   512 | lm loss: 2.345678E+00 | loss scale: 1.0 | grad norm: 0.567 | number of "
            "skipped iterations:   0 | number of nan iterations:   0 |",
            " 12%|█▏        | 120/1000 [00:42<05:08,  2.85it/s]{'loss': 1.5, 'grad_norm': inf, "
            "'learning_rate': 2e-05, 'epoch': 0.12}",
            "{'train_runtime': 10.0, 'train_loss': 1.7, 'epoch': 1.0}",
            '{"step": 7, "loss": 3.5, "timestamp": "2025-04-05T10:23:15Z"}',
        ]
    )
    mega, hf, summary, structured = events
    assert isinstance(mega, StepEvent) and mega.step == 100 and mega.loss == 2.345678
    assert mega.learning_rate == 1e-4 and mega.gradient_norm == 0.567
    assert mega.step_time_s == 1.2345
    assert isinstance(hf, StepEvent) and hf.step == 120 and hf.gradient_norm == math.inf
    assert isinstance(summary, LogEvent)
    assert isinstance(structured, StepEvent) and structured.step == 7


def test_logger_exception_with_its_traceback_is_one_record() -> None:
    events = _parse(
        [
            "2025-04-05 10:00:00,000 ERROR step failed",
            "Traceback (most recent call last):",
            '  File "t.py", line 1, in <module>',
            "ValueError: bad batch",
            "2025-04-05 10:00:01,000 INFO next",
            "2025-04-05 10:00:02,000 INFO plain line",
            "Traceback (most recent call last):",
            '  File "t.py", line 2, in <module>',
            "RuntimeError: CUDA error: an illegal memory access was encountered",
            "CUDA kernel errors might be asynchronously reported at some other API call.",
            "For debugging consider passing CUDA_LAUNCH_BLOCKING=1",
        ]
    )
    assert [e.message.count("\n") + 1 for e in events if isinstance(e, LogEvent)] == [4, 1, 1, 5]
    assert [e.level for e in events if isinstance(e, LogEvent)] == [
        "ERROR",
        "INFO",
        "INFO",
        "ERROR",
    ]


def test_follow_reads_across_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    path.write_text("one\n")
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in follow(path, poll_s=0.02, idle_s=0.1, stop=done.is_set):
            if line != IDLE:
                seen.append(line.strip())

    reader = threading.Thread(target=read)
    reader.start()

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 5
        while len(seen) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(seen) >= count, seen

    try:
        wait_for(1)
        with path.open("a") as handle:
            handle.write("two\n")
        wait_for(2)
        path.rename(tmp_path / "train.log.1")  # rotation: a new file under the same name
        path.write_text("three\n")
        wait_for(3)
        path.write_text("")  # truncation
        time.sleep(0.1)
        path.write_text("four\n")
        wait_for(4)
    finally:
        done.set()
        reader.join(5)
    assert seen == ["one", "two", "three", "four"]


def test_ship_follow_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    log, out = tmp_path / "live.log", tmp_path / "out.jsonl"
    log.write_text('[rank1]:Traceback (most recent call last):\n[rank1]:  File "x.py"\n')
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rankwatch.cli",
            "ship",
            str(log),
            "--job",
            "j",
            "--follow",
            "-o",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        with log.open("a") as handle:
            handle.write("[rank1]:ValueError: boom\n")
        time.sleep(1.0)
        process.send_signal(2)  # SIGINT, as Ctrl-C
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(events) == 1 and events[0]["rank"] == 1 and events[0]["message"].endswith("boom")


def test_ship_without_job_is_a_clear_error(tmp_path: Path, capsys: object) -> None:
    env_job = os.environ.pop("RANKWATCH_JOB_ID", None)
    try:
        from rankwatch.cli.main import build_parser

        args = build_parser().parse_args(["ship", str(tmp_path / "x.log")])
        assert args.handler(args) == 2
    finally:
        if env_job is not None:
            os.environ["RANKWATCH_JOB_ID"] = env_job
