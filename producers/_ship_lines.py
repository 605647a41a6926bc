"""What a single line of a trainer's text log tells: rank prefix, level, time, rank, step.

Pure functions over strings, shared by the record grouping in :mod:`rankwatch.producers.ship`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import NamedTuple

# Launcher prefixes. `[rank7]:` is torch.distributed's excepthook (global rank);
# `[default7]:` is torchrun --tee with the default role (LOCAL rank: tail_log.py's
# `[{role}{local_rank}]:`); `[7]:` is a --log-line-prefix-template such as `[${rank}]:`.
# `7: ` is srun --label (the task id, right-aligned: ` 7: ` beside `12: `), read as a global rank.
# They nest: `[default3]:[rank3]: Traceback ...` under torchrun --tee.
_PREFIX = re.compile(r"^\[(rank|default)?(\d{1,6})\]:\s?")
_SRUN_PREFIX = re.compile(r"^ {0,4}(\d{1,5}): ")

_LEVEL_WORDS = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARNING": "WARNING",
    "WARN": "WARNING",
    "ERROR": "ERROR",
    "CRITICAL": "CRITICAL",
    "FATAL": "CRITICAL",
}
_LEVEL_WORD = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b")
# glog / c10 style: `E0405 10:23:15.123 ...`, `[E ProcessGroupNCCL.cpp:616]`, `[W405 ...]`.
_GLOG = re.compile(r"^\[?([IWEF])(?:\d{4}|\s|\d{3}\s)")
_GLOG_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}

_TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d{1,9}))?\s?(Z|[+-]\d{2}:?\d{2})?"
)
_RANK_IN_TEXT = re.compile(r"\[Rank (\d+)\]|\b[Rr]ank[ =:]\s*(\d+)\b")
_STEP_IN_TEXT = re.compile(r"\b(?:global[_ ])?step[ =:#\[]\s*(\d+)\b|\biteration\s+(\d+)\s*/")

# A line that starts a record of its own (as opposed to the continuation of a multi-line one).
_HEADER = re.compile(
    r"^(?:\[?\d{4}-\d{2}-\d{2}"  # a timestamp
    r"|\[?(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b"  # a level
    r"|\[[IWEF][\s\d]"  # c10 / glog
    r"|[IWEF]\d{4} "
    r"|\S+:\d+:\d+ \[\d+\] NCCL "  # NCCL's `host:pid:tid [dev] NCCL INFO ...`
    r"|\{'"  # a Hugging Face metrics dict
    r"|iteration\s+\d+"  # Megatron
    r"|\[deepspeed\]|\[\w+\]\s"  # `[deepspeed] ...`, `[INFO] ...`
    r"|Traceback \(most recent call last\):)"
)

TRACEBACK = "Traceback (most recent call last):"
CHAINING = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


class Prefix(NamedTuple):
    """What a line's launcher prefixes say: the rank, whether it is a local rank, the text."""

    rank: int | None
    local: bool
    text: str


def split_prefixes(line: str, world_size: int | None = None) -> Prefix:
    """The rank the launcher prefixes of ``line`` name, and the rest of the line.

    A nested ``[rankN]:`` (global) wins over an outer ``[defaultN]:`` (local). ``N: `` (srun
    --label) is read only where nothing else is, and not for ``N >= world_size``.

    >>> split_prefixes("[default3]:[rank3]: Traceback (most recent call last):")
    Prefix(rank=3, local=False, text='Traceback (most recent call last):')
    >>> split_prefixes("[default2]:step 4"), split_prefixes(" 3: x", 4), split_prefixes("9: x", 4)
    (Prefix(rank=2, local=True, text='step 4'), Prefix(rank=3, local=False, text='x'), \
Prefix(rank=None, local=False, text='9: x'))
    """
    rank: int | None = None
    local = False
    text = line
    for _ in range(3):  # at most a few nested prefixes
        match = _PREFIX.match(text)
        if match is None:
            break
        if rank is None or local or match.group(1) == "rank":
            rank, local = int(match.group(2)), match.group(1) == "default"
        text = text[match.end() :]
    if rank is None:
        srun = _SRUN_PREFIX.match(line)
        if srun is not None and (world_size is None or int(srun.group(1)) < world_size):
            return Prefix(int(srun.group(1)), False, line[srun.end() :])
    return Prefix(rank, local, text)


def split_prefix(line: str) -> tuple[int | None, str]:
    """The rank of a launcher prefix and the rest of the line (local and global alike).

    >>> split_prefix("[rank3]:[E ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught ...")
    (3, '[E ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught ...')
    >>> split_prefix("[default7]:  File 'x.py'"), split_prefix("plain")
    ((7, " File 'x.py'"), (None, 'plain'))
    """
    prefix = split_prefixes(line)
    return prefix.rank, prefix.text


def is_header(line: str) -> bool:
    """Whether ``line`` starts a new record by its form alone.

    >>> is_header("2025-04-05 10:23:15,123 INFO step 3"), is_header("CUDA kernel errors might")
    (True, False)
    """
    return _HEADER.match(line) is not None


def is_native_log(line: str) -> bool:
    """Whether the line comes from C++ logging (glog/c10: ``E0405 ...``, ``[W405 ...]``).

    >>> is_native_log("[E405 10:31:42.561 ProcessGroupNCCL.cpp:616] x"), is_native_log("ERROR x")
    (True, False)
    """
    return _GLOG.match(line) is not None


def level_of(first_line: str, text: str) -> str:
    """The level a record's header says, else what its content implies.

    >>> level_of("[E ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog", "")
    'ERROR'
    >>> level_of("node-1:77:77 [0] NCCL WARN Call to ibv_reg_mr failed", "")
    'WARNING'
    >>> level_of("Traceback (most recent call last):", "Traceback ...\\nValueError: bad")
    'ERROR'
    """
    glog = _GLOG.match(first_line)
    if glog is not None:
        return _GLOG_LEVELS[glog.group(1)]
    head = first_line[:120]
    if "NCCL WARN" in head:
        return "WARNING"
    word = _LEVEL_WORD.search(head)
    if word is not None:
        return _LEVEL_WORDS[word.group(1)]
    if (
        TRACEBACK in text
        or first_line.startswith(TRACEBACK)
        or re.match(r"^[\w.]*(?:Error|Exception)\b:?", first_line)
    ):
        return "ERROR"
    lowered = text.lower()
    if any(
        s in lowered
        for s in (
            "out of memory",
            "watchdog caught",
            "segmentation fault",
            "illegal memory access",
            "nccl error",
            "sigsegv",
            "sigabrt",
            "core dumped",
            "fallen off the bus",  # NVIDIA driver: a lost GPU, an Xid, its crash dump
            "nvrm: xid",
            "gpu crash dump",
        )
    ):
        return "ERROR"
    if "overflow" in lowered or "warning" in lowered[:200]:
        return "WARNING"
    return "INFO"


def timestamp_of(line: str, naive_tz: tzinfo | None) -> datetime | None:
    """A timestamp near the start of the line; one without a zone is read in ``naive_tz``
    (None: this machine's local zone).

    >>> timestamp_of("[2025-04-05 10:23:15,250] INFO x", UTC).isoformat()
    '2025-04-05T10:23:15.250000+00:00'
    >>> timestamp_of("2025-04-05T10:23:15+08:00 x", None).isoformat()
    '2025-04-05T10:23:15+08:00'
    """
    match = _TIMESTAMP.search(line[:64])
    if match is None:
        return None
    date, time_of_day, fraction, zone = match.groups()
    try:
        value = datetime.fromisoformat(f"{date}T{time_of_day}")
    except ValueError:
        return None
    if fraction:
        value = value.replace(microsecond=int(fraction[:6].ljust(6, "0")))
    if zone == "Z":
        return value.replace(tzinfo=UTC)
    if zone:
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        return value.replace(tzinfo=timezone(sign * offset))
    return value.replace(tzinfo=naive_tz) if naive_tz is not None else value.astimezone()


def rank_in_text(line: str) -> int | None:
    """A rank the line names (``[Rank 7]``, ``Rank 0 Skipping``, ``rank: 3``).

    >>> rank_in_text("[deepspeed] OVERFLOW! Rank 0 Skipping step."), rank_in_text("x")
    (0, None)
    """
    match = _RANK_IN_TEXT.search(line)
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def step_in_text(line: str) -> int | None:
    """A step the line names (``step 120``, ``global_step=120``, ``iteration  120/``).

    >>> step_in_text("saving checkpoint at global_step=1200"), step_in_text("Skipping step.")
    (1200, None)
    """
    match = _STEP_IN_TEXT.search(line)
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


# ----- launcher (torchelastic) lines ---------------------------------------------------------

# torchelastic's agent (torch/distributed/elastic/multiprocessing/api.py), in glog form
# (`E1207 00:52:50.237000 32606 .../api.py:1002] failed ...`) or Python logging form
# (`ERROR:torch.distributed.elastic.multiprocessing.api:failed ...`).
_AGENT_FAILED = re.compile(r"\bfailed \(exitcode: (-?\d+)\) local_rank: (\d+) \(pid: (\d+)\)")
_AGENT_SIGNAL = re.compile(r"\bSending process (\d+) closing signal (SIG[A-Z]+)")
# The failure summary of ChildFailedError: one entry per failed rank.
_SUMMARY_START = re.compile(
    r"^(?:torch\.distributed\.elastic\.multiprocessing\.errors\.)?ChildFailedError:"
)
_SUMMARY_RANK = re.compile(r"^\s*rank\s*:\s*(\d+) \(local_rank: (\d+)\)")
_SUMMARY_PID = re.compile(r"^\s*exitcode\s*:\s*-?\d+ \(pid: (\d+)\)")
ROOT_CAUSE = "Root Cause (first observed failure):"


class AgentLine(NamedTuple):
    """A torchelastic agent line about one worker: its pid, local rank (if named), signal."""

    pid: int
    local_rank: int | None
    signal: str | None


def agent_line(line: str) -> AgentLine | None:
    """What a torchelastic agent line says about a worker process, or None.

    >>> agent_line("ERROR:torch.distributed.elastic.multiprocessing.api:failed (exitcode: 1) "
    ...     "local_rank: 3 (pid: 5678) of binary: /usr/bin/python3")
    AgentLine(pid=5678, local_rank=3, signal=None)
    >>> agent_line("W1207 00:52:50.202000 32606 torch/distributed/elastic/multiprocessing/"
    ...     "api.py:1028] Sending process 32708 closing signal SIGTERM")
    AgentLine(pid=32708, local_rank=None, signal='SIGTERM')
    """
    head = line[:400]
    failed = _AGENT_FAILED.search(head)
    if failed is not None:
        return AgentLine(int(failed.group(3)), int(failed.group(2)), None)
    sent = _AGENT_SIGNAL.search(head)
    if sent is not None:
        return AgentLine(int(sent.group(1)), None, sent.group(2))
    return None


def starts_summary(line: str) -> bool:
    """Whether the line is the ``ChildFailedError:`` line that opens torchrun's failure summary.

    >>> starts_summary("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ")
    True
    """
    return _SUMMARY_START.match(line) is not None


def is_rule(line: str, char: str = "=") -> bool:
    """Whether the line is a horizontal rule of ``char`` (the summary's frame).

    >>> is_rule("=" * 53), is_rule("-" * 60, "-"), is_rule("== x ==")
    (True, True, False)
    """
    stripped = line.strip()
    return len(stripped) >= 10 and stripped == char * len(stripped)


class SummaryEntry(NamedTuple):
    """One failure the summary lists: global rank, local rank, pid (if shown)."""

    rank: int
    local_rank: int
    pid: int | None


def summary_entries(text: str) -> tuple[SummaryEntry | None, list[SummaryEntry]]:
    """The root-cause entry of a torchrun failure summary and every entry (root cause included).

    >>> root, entries = summary_entries("Failures:\\n[1]:\\n  rank      : 0 (local_rank: 0)\\n"
    ...     "  exitcode  : -15 (pid: 32708)  (SIGTERM)\\n" + ROOT_CAUSE + "\\n[0]:\\n"
    ...     "  rank      : 3 (local_rank: 3)\\n  exitcode  : 1 (pid: 32712) ")
    >>> root, len(entries)
    (SummaryEntry(rank=3, local_rank=3, pid=32712), 2)
    """
    root: SummaryEntry | None = None
    entries: list[SummaryEntry] = []
    in_root = False
    for raw in text.splitlines():
        line = split_prefixes(raw).text if raw.startswith("[") else raw
        if line.startswith(ROOT_CAUSE):
            in_root = True
            continue
        rank = _SUMMARY_RANK.match(line)
        if rank is not None:
            entries.append(SummaryEntry(int(rank.group(1)), int(rank.group(2)), None))
            if in_root and root is None:
                root = entries[-1]
            continue
        pid = _SUMMARY_PID.match(line)
        if pid is not None and entries and entries[-1].pid is None:
            entries[-1] = entries[-1]._replace(pid=int(pid.group(1)))
            if in_root and root is not None and root.rank == entries[-1].rank:
                root = entries[-1]
    return root, entries


# ----- NVIDIA driver (NVRM) messages ---------------------------------------------------------

_NVRM = "NVRM: "


def nvrm_text(line: str) -> str | None:
    """The text of a kernel NVRM line after ``NVRM: `` (behind a dmesg or syslog header).

    >>> nvrm_text("Oct 30 09:49:36 pc kernel: NVRM: Xid (PCI:0000:03:00): 79, pid='<unknown>'")
    "Xid (PCI:0000:03:00): 79, pid='<unknown>'"
    """
    at = line.find(_NVRM, 0, 120)
    return None if at < 0 else line[at + len(_NVRM) :]


def nvrm_continues(head: str, last: str, following: str, has_xid: bool) -> bool:
    """Whether the NVRM text ``following`` continues the NVRM record that began with ``head``
    and so far ends with ``last`` (``has_xid``: it already holds its ``Xid`` line).

    The driver reports an Xid as ``GPU at PCI:...`` (and ``GPU Board Serial Number``) then the
    ``Xid (...)`` line; a long message (``The NVIDIA GPU ... installed in this system has`` /
    ``fallen off the bus ...``) is one printk wrapped over lines, each starting ``NVRM:``.

    >>> nvrm_continues("GPU at PCI:0000:3b:00: GPU-1", "GPU at PCI:0000:3b:00: GPU-1",
    ...     "Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.", False)
    True
    >>> nvrm_continues("Xid (PCI:0000:cb:00): 13, x", "Xid (PCI:0000:cb:00): 13, x",
    ...     "Xid (PCI:0000:cb:00): 13, y", True)
    False
    """
    if following.startswith(("Xid (", "GPU Board Serial Number")):
        return head.startswith("GPU at PCI:") and not has_xid
    if following.startswith("GPU at PCI:"):
        return False
    # A wrapped message: the previous line stops mid-sentence and this one goes on.
    return not last.rstrip().endswith(".") and (following[:1].islower() or following[:1] == "(")
