"""``rankwatch ship`` on launcher output: torchrun's failure summary, agent lines, prefixes,
NVIDIA driver (NVRM) messages and tqdm bars.

The ``data/torchrun_gloo_*.log`` fixtures are real, whole outputs (stdout and stderr together)
of ``timeout 120 .venv/bin/torchrun --standalone --nproc-per-node 4
tests/producers/data/torchrun_rank3_fails.py > out.log 2>&1`` with torch 2.13.0+cu130 on the
CPU over gloo, Python 3.11, 2026-12-07:

- ``torchrun_gloo_indexerror.log``: rank 3 raises ``IndexError`` after 4 all-reduces;
- ``torchrun_gloo_sigkill.log``: ``FAIL_MODE=kill``, rank 3 SIGKILLs itself there;
- ``torchrun_gloo_tee.log``: as the first, with ``--tee 3`` (``[defaultN]:`` prefixes);
- ``torchrun_gloo_tqdm.log``: ``FAIL_MODE=tqdm``, rank 0 draws a tqdm 4.70.1 bar;
- ``torchrun_gloo_peer_exits_first.log``: as the first, during a full suite run on 2026-12-08
  (a loaded machine): rank 0's broken all-reduce exited before rank 3 was reaped, so torchrun's
  own report names rank 0 as the root cause.

``test_live_torchrun_failure_is_blamed_on_the_failing_rank`` runs that trainer again, so a
torch whose launcher output reads differently fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest

from rankwatch.cli.main import main
from rankwatch.producers.ship import LogParser
from rankwatch.schemas import LogEvent, StepEvent, decode

DATA = Path(__file__).parent / "data"
TRAINER = DATA / "torchrun_rank3_fails.py"


def _ship(path: Path, tmp_path: Path, *extra: str) -> list[LogEvent]:
    out = tmp_path / f"events-{len(list(tmp_path.iterdir()))}.jsonl"  # ship appends
    code = main(["ship", str(path), "--job", "j", "--utc", "--output", str(out), *extra])
    assert code == 0
    events = [decode(line) for line in out.read_bytes().splitlines()]
    return [e for e in events if isinstance(e, LogEvent)]


def _parse(lines: list[str], world_size: int | None = None) -> list[StepEvent | LogEvent]:
    parser = LogParser("j", 0, naive_tz=UTC, start_time=0.0, world_size=world_size)
    return list(parser.parse(lines))


def _summary(logs: list[LogEvent]) -> LogEvent:
    found = [e for e in logs if "ChildFailedError" in e.message]
    assert len(found) == 1, [e.message[:80] for e in found]
    return found[0]


def _assert_rank3_blamed(logs: list[LogEvent], exitcode: str) -> None:
    summary = _summary(logs)
    # One record: torchrun's own traceback, the summary, its closing rule.
    assert summary.rank == 3 and summary.level == "ERROR"
    assert summary.message.startswith("Traceback") and summary.message.endswith("=" * 20)
    assert "Root Cause (first observed failure):" in summary.message
    assert f"exitcode  : {exitcode} " in summary.message
    failed = [e for e in logs if "failed (exitcode:" in e.message]
    assert [(e.rank, e.level) for e in failed] == [(3, "ERROR")]
    assert f"failed (exitcode: {exitcode})" in failed[0].message
    # The agent stopped ranks 0-2 because of rank 3: each is told of its own SIGTERM.
    sent = [e for e in logs if "closing signal SIGTERM" in e.message]
    assert sorted(e.rank for e in sent) == [0, 1, 2]
    assert {e.lifecycle for e in sent} == {"terminated"} and {e.level for e in sent} == {"WARNING"}
    # Nothing about the failure lands on rank 0 (rank 0's own record is its broken all-reduce).
    for event in logs:
        if event.rank == 0:
            assert "ChildFailedError" not in event.message
            assert "IndexError" not in event.message
            assert "failed (exitcode" not in event.message
            assert "SIGKILL" not in event.message


def test_summary_and_crash_of_a_raising_rank(tmp_path: Path) -> None:
    logs = _ship(DATA / "torchrun_gloo_indexerror.log", tmp_path)
    _assert_rank3_blamed(logs, "1")
    crash = [e for e in logs if "IndexError" in e.message]
    assert len(crash) == 1 and crash[0].rank == 3 and crash[0].level == "ERROR"
    assert crash[0].message.startswith("Traceback (most recent call last):")
    assert crash[0].message.endswith("IndexError: list index out of range")
    assert crash[0].message.count("\n") == 6  # `[rank3]: ` stripped from all 7 lines
    # The consequences on ranks 0 and 2 are their own records, one each.
    broken = [e for e in logs if "Connection closed by peer" in e.message]
    assert sorted(e.rank for e in broken) == [0, 2]
    # 4 launcher warnings + 4 `step` prints + 3 tracebacks + 3 SIGTERM + failed + summary.
    assert len(logs) == 16


def test_summary_of_a_sigkilled_rank(tmp_path: Path) -> None:
    logs = _ship(DATA / "torchrun_gloo_sigkill.log", tmp_path)
    _assert_rank3_blamed(logs, "-9")
    summary = _summary(logs)
    assert "Signal 9 (SIGKILL) received by PID" in summary.message
    assert not [
        e
        for e in logs
        if e.rank == 3 and "Traceback" in e.message.split("\n")[0] and e is not summary
    ]


def test_tee_prefixes_nest_and_default_is_a_local_rank(tmp_path: Path) -> None:
    logs = _ship(DATA / "torchrun_gloo_tee.log", tmp_path)
    _assert_rank3_blamed(logs, "1")
    crash = [e for e in logs if "IndexError" in e.message]
    # `[default3]:[rank3]: ` on every line: still one record, both prefixes gone.
    assert len(crash) == 1 and crash[0].rank == 3
    assert crash[0].message.startswith("Traceback") and "[rank3]" not in crash[0].message
    steps = [e for e in logs if e.message.startswith("step ")]
    assert len(steps) == 4 and {e.rank for e in steps} == {0}
    # On the second node of 4 ranks per node, `[default0]:` and `local_rank: 3` are ranks 4, 7.
    second = _ship(
        DATA / "torchrun_gloo_tee.log", tmp_path, "--node-rank", "1", "--nproc-per-node", "4"
    )
    assert {e.rank for e in second if e.message.startswith("step ")} == {4}
    assert [e.rank for e in second if "failed (exitcode:" in e.message] == [7]


def test_tqdm_redraws_glued_to_another_ranks_traceback(tmp_path: Path) -> None:
    text = (DATA / "torchrun_gloo_tqdm.log").read_text()
    # The real interleaving this test is about: the bar has no newline, so rank 3's first
    # traceback line is glued to a redraw of rank 0's bar.
    assert "it/s][rank3]: Traceback (most recent call last):" in text
    logs = _ship(DATA / "torchrun_gloo_tqdm.log", tmp_path)
    _assert_rank3_blamed(logs, "1")
    crash = [e for e in logs if "IndexError" in e.message]
    assert len(crash) == 1 and crash[0].rank == 3
    assert crash[0].message.count("\n") == 6 and crash[0].message.startswith("Traceback")
    # No record is a progress bar, none holds one.
    assert not [e for e in logs if "it/s]" in e.message]
    # 4 launcher warnings + 3 tracebacks + 3 SIGTERM + failed + summary.
    assert len(logs) == 12


def test_tqdm_lines_inside_a_traceback_and_beside_metrics() -> None:
    bar = " 40%|████      | 4/10 [00:01<00:01,  4.00it/s]"
    events = _parse(
        [
            "Traceback (most recent call last):",
            bar,
            '  File "train.py", line 9, in <module>',
            f"{bar}\r 50%|█████     | 5/10 [00:01<00:01,  4.00it/s]",
            "IndexError: list index out of range",
            "[rank1]: 10%|█         | 1/10 [00:00<00:02,  4.00it/s]",
            "{'loss': 1.5, 'grad_norm': 0.5, 'learning_rate': 2e-05, 'epoch': 0.5}",
        ]
    )
    logs = [e for e in events if isinstance(e, LogEvent)]
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.message.count("\n") for e in logs] == [2]
    assert "%|" not in logs[0].message
    assert [(s.rank, s.step) for s in steps] == [(0, 5)]  # the step rank 0's bar showed last


def test_prefix_styles() -> None:
    events = _parse(
        [
            "[rank2]: Traceback (most recent call last):",
            '[rank2]:   File "t.py", line 1, in <module>',
            "[rank2]: ValueError: bad",
            "[default1]:plain line of local rank 1",
            "[5]:plain line of a ${rank} template",
            " 3: srun --label line of task 3",
            "12: srun --label line of task 12",
        ],
        world_size=16,
    )
    assert [(e.rank, e.message.count("\n")) for e in events if isinstance(e, LogEvent)] == [
        (2, 2),
        (1, 0),
        (5, 0),
        (3, 0),
        (12, 0),
    ]
    # Beyond the world size it is text, not a prefix.
    (only,) = _parse(["40: not a rank"], world_size=16)
    assert isinstance(only, LogEvent) and only.rank == 0 and only.message == "40: not a rank"


def test_agent_lines_in_python_logging_form() -> None:
    # The torchelastic agent's lines as Python logging prints them (older torch), pids mapped
    # to ranks by the summary that follows (trimmed from the indexerror fixture's form).
    lines = [
        "WARNING:torch.distributed.elastic.multiprocessing.api:Sending process 1234 closing "
        "signal SIGTERM",
        "ERROR:torch.distributed.elastic.multiprocessing.api:failed (exitcode: 1) local_rank: 3 "
        "(pid: 5678) of binary: /usr/bin/python3",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "=" * 60,
        "train.py FAILED",
        "-" * 60,
        "Failures:",
        "[1]:",
        "  rank      : 0 (local_rank: 0)",
        "  exitcode  : -15 (pid: 1234)",
        "-" * 60,
        "Root Cause (first observed failure):",
        "[0]:",
        "  rank      : 3 (local_rank: 3)",
        "  exitcode  : 1 (pid: 5678)",
        "=" * 60,
        "after the summary",
    ]
    logs = [e for e in _parse(lines) if isinstance(e, LogEvent)]
    assert [(e.rank, e.level, e.lifecycle) for e in logs] == [
        (3, "ERROR", None),  # failed
        (0, "WARNING", "terminated"),  # Sending process 1234: rank 0, once the summary says so
        (3, "ERROR", None),  # summary
        (0, "INFO", None),
    ]
    assert logs[2].message.count("\n") == 13 and logs[3].message == "after the summary"


def test_nvrm_messages_wrapped_over_lines_are_one_record_each() -> None:
    events = _parse(
        [
            # dmesg -T, from akash-network/support issue #209 (an Xid 79): the Xid report is
            # `GPU at PCI:` then the `Xid` line; the crash-dump notice is one printk that dmesg
            # wraps with indented `NVRM:` lines.
            "[Fri Apr  5 21:29:39 2024] NVRM: GPU at PCI:0000:a1:00: "
            "GPU-979426f2-893a-7cbb-c4cf-81472f89a462",
            "[Fri Apr  5 21:29:39 2024] NVRM: Xid (PCI:0000:a1:00): 79, pid='<unknown>', "
            "name=<unknown>, GPU has fallen off the bus.",
            "[Fri Apr  5 21:29:39 2024] NVRM: GPU 0000:a1:00.0: GPU has fallen off the bus.",
            "[Fri Apr  5 21:29:39 2024] NVRM: A GPU crash dump has been created. If possible, "
            "please run",
            "                           NVRM: nvidia-bug-report.sh as root to collect this data "
            "before",
            "                           NVRM: the NVIDIA kernel module is unloaded.",
            # dmesg -T, from akash-network/support issue #244: with the board serial number.
            "[Wed Jul 31 23:14:18 2024] NVRM: GPU at PCI:0000:00:05: "
            "GPU-efbdfde9-5798-a6e7-4c46-12518fa15375",
            "[Wed Jul 31 23:14:18 2024] NVRM: GPU Board Serial Number: 1650423013443",
            "[Wed Jul 31 23:14:18 2024] NVRM: Xid (PCI:0000:00:05): 43, pid=1045242, "
            "name=pt_main_thread, Ch 00000008",
            "[Wed Jul 31 23:15:26 2024] NVRM: Xid (PCI:0000:00:05): 43, pid=1084984, "
            "name=pt_main_thread, Ch 00000008",
            # dmesg, from NVIDIA/NVSentinel issue #155: one printk over three lines (its format
            # string is in NVIDIA/open-gpu-kernel-modules src/nvidia/arch/nvalloc/unix/src/osapi.c).
            "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0",
            "               NVRM: (PCI ID: 10de:26b5) installed in this system has",
            "               NVRM: fallen off the bus and is not responding to commands.",
            "[ 1843.439662] NVRM: The NVIDIA probe routine failed for 1 device(s).",
        ]
    )
    logs = [e for e in events if isinstance(e, LogEvent)]
    assert [e.message.count("\n") + 1 for e in logs] == [2, 1, 3, 3, 1, 3, 1]
    assert "GPU at PCI" in logs[0].message and "Xid" in logs[0].message
    assert [e.level for e in logs[:4]] == ["ERROR"] * 4
    assert logs[5].level == "ERROR" and "fallen off the bus" in logs[5].message


def test_nvrm_lines_without_indentation_behind_syslog_headers() -> None:
    # journalctl/syslog form: every line has its own header, nothing is indented. Lines from
    # a grep of the driver's output in the same form (`NVRM:` at the start of each line): the
    # driver's `... installed in this system has` / `fallen off the bus ...` printk.
    events = _parse(
        [
            "Oct 30 09:49:36 pc kernel: NVRM: The NVIDIA GPU 0000:03:00.0",
            "Oct 30 09:49:36 pc kernel: NVRM: (PCI ID: 10de:2330) installed in this system has",
            "Oct 30 09:49:36 pc kernel: NVRM: fallen off the bus and is not responding to "
            "commands.",
            "Oct 30 09:49:36 pc kernel: NVRM: GPU at PCI:0000:03:00: "
            "GPU-44ec53bd-277c-984f-fa9f-cded30fbfd5d",
            "Oct 30 09:49:36 pc kernel: NVRM: Xid (PCI:0000:03:00): 79, pid='<unknown>', "
            "name=<unknown>, GPU has fallen off the bus.",
            "Oct 30 09:49:37 pc kernel: nvidia-modeset: ERROR: GPU:0: Failed detecting "
            "connected display devices",
        ]
    )
    logs = [e for e in events if isinstance(e, LogEvent)]
    assert [e.message.count("\n") + 1 for e in logs] == [3, 2, 1]
    assert [e.level for e in logs] == ["ERROR", "ERROR", "ERROR"]


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun over gloo on Linux")
def test_live_torchrun_failure_is_blamed_on_the_failing_rank(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "FAIL_MODE": "raise", "OMP_NUM_THREADS": "1"}
    # Under a loaded machine torchrun may observe a peer's exit first (rank 0's all-reduce
    # breaks when rank 3 dies, and it exits 1 before the agent reaps rank 3): its own report
    # then names rank 0 as the root cause, and the log says so. Seen once in a full suite run
    # here. That race is torchrun's, not the parser's: the job is run again, at most 3 times,
    # until torchrun's report names rank 3, and the parser is judged on that report.
    for attempt in range(3):
        log = tmp_path / f"out-{attempt}.log"
        with log.open("wb") as handle:
            finished = subprocess.run(
                [
                    "timeout",
                    "120",
                    str(torchrun),
                    "--standalone",
                    "--nproc-per-node",
                    "4",
                    str(TRAINER),
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
                check=False,
            )
        assert finished.returncode == 1, log.read_text()[-3000:]
        text = log.read_text()
        if re.search(r"rank\s*:\s*3 ", text[text.index("Root Cause") :]):
            break
    # Rank 3 exits with 1, or dies of SIGABRT (-6) when its process group aborts while the
    # interpreter winds down (seen in about one run in ten here): rank 3 either way.
    root = re.search(r"exitcode\s*:\s*(-?\d+)", text[text.index("Root Cause") :])
    assert root is not None and root.group(1) in ("1", "-6"), text[-3000:]
    logs = _ship(log, tmp_path)
    _assert_rank3_blamed(logs, root.group(1))
    assert [e.rank for e in logs if "IndexError" in e.message] == [3]
