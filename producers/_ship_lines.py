"""What a single line of a trainer's text log tells: rank prefix, level, time, rank, step.

Pure functions over strings, shared by the record grouping in :mod:`rankwatch.producers.ship`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

# torchrun/launch prefixes: `[rank7]:` (torch >= 2.2 log prefixes), `[default7]:` (torchrun
# --tee with the default role), `[7]:` (log_line_prefix_template / older --tee).
_PREFIX = re.compile(r"^\[(?:rank|default)?(\d{1,6})\]:\s?")

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


def split_prefix(line: str) -> tuple[int | None, str]:
    """The rank of a launcher prefix and the rest of the line.

    >>> split_prefix("[rank3]:[E ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught ...")
    (3, '[E ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught ...')
    >>> split_prefix("[default7]:  File 'x.py'"), split_prefix("plain")
    ((7, " File 'x.py'"), (None, 'plain'))
    """
    match = _PREFIX.match(line)
    if match is None:
        return None, line
    return int(match.group(1)), line[match.end() :]


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
