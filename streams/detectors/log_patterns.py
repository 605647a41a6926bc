"""What a fault looks like in a log record: the compiled patterns behind the log rules.

The wording is PyTorch's and NCCL's own (``ProcessGroupNCCL.cpp``, the CUDA caching
allocator, torchrun's ``ChildFailedError`` report, the kernel's ``NVRM: Xid`` lines), not a
paraphrase, so a record matches as the trainer printed it.

:func:`classify` is called for every log record, so it is built for the common case, a
benign line: one lower-cased copy and a dozen substring tests reject it in about a
microsecond; only records that mention a keyword pay for the regular expressions.

Each pattern is *strong* (unambiguous: it fires at any level, so a traceback logged at INFO
still counts) or *weak* (fires only at WARNING and above, because the same words turn up in
INFO hints and configuration dumps).

>>> m = classify("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "ERROR")
>>> m.rule, m.label
('cuda_oom', 'oom_allocate')
>>> classify("node1:12:34 [3] NCCL INFO Channel 00/02 : 0 1 2 3", "INFO") is None
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Rule ids of CONTRACT.md that come from log records.
CUDA_OOM: Final = "cuda_oom"
FATAL_ERROR: Final = "fatal_error"
NCCL: Final = "nccl"  # nccl_error or nccl_timeout_burst: decided across ranks (log_episodes)
HANG: Final = "hang"

# Lower-case keywords one of which every pattern below contains. A record without any of
# them is rejected before a single regular expression runs.
_KEYWORDS: Final = (
    "memory",  # out of memory, OutOfMemoryError, illegal memory access
    "nccl",
    "cuda",
    "cublas",
    "cudnn",
    "xid",
    "ecc",
    "watchdog",
    "hung",
    "heartbeat",
    "seg",  # Segmentation fault, SIGSEGV
    "fatal",
    "childfailed",
    "exitcode",
    "assert",
    "sigbus",
)

_LEVEL_RANK: Final = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3, "CRITICAL": 4}
_WEAK_MIN_LEVEL: Final = 2  # WARNING

# Records of Python's warnings module ("UserWarning: TORCH_NCCL_BLOCKING_WAIT is deprecated")
# mention cuda and nccl all the time; without a traceback or an exception they are not faults.
_PY_WARNING: Final = re.compile(r"\b(?:User|Future|Deprecation|PendingDeprecation)Warning: ")
_EXCEPTION_HINT: Final = ("Traceback", "Error:", "Exception:")


@dataclass(frozen=True, slots=True)
class _Pattern:
    rule: str
    label: str
    regex: re.Pattern[str]
    strong: bool


def _p(rule: str, label: str, pattern: str, *, strong: bool = True, flags: int = 0) -> _Pattern:
    return _Pattern(rule, label, re.compile(pattern, flags), strong)


# Order matters twice. Across rules: a CUDA fault that NCCL reports ("ncclUnhandledCudaError
# ... an illegal memory access was encountered") is a fatal_error, and an OOM inside NCCL
# ("Failed to CUDA calloc") is a cuda_oom; a watchdog that died of an NCCL timeout is an NCCL
# record, not a hang. Within a rule: the most specific wording first, so the line reported is
# the one that says the most (the "exitcode: -11" line, not the ChildFailedError header).
PATTERNS: Final[tuple[_Pattern, ...]] = (
    # -- cuda_oom ---------------------------------------------------------------------------
    _p(CUDA_OOM, "oom_allocate", r"CUDA out of memory\. Tried to allocate"),
    _p(CUDA_OOM, "oom_exception", r"OutOfMemoryError: "),
    _p(CUDA_OOM, "cublas_alloc_failed", r"CUBLAS_STATUS_ALLOC_FAILED"),
    _p(CUDA_OOM, "nccl_calloc_failed", r"Failed to CUDA calloc"),
    _p(CUDA_OOM, "nccl_cuda_oom", r"NCCL WARN Cuda failure '?out of memory"),
    _p(CUDA_OOM, "cuda_error_oom", r"CUDA error: out of memory"),
    _p(CUDA_OOM, "oom_text", r"CUDA out of memory|cudaErrorMemoryAllocation", strong=False),
    # -- fatal_error ------------------------------------------------------------------------
    _p(FATAL_ERROR, "xid", r"\bXid \((?:PCI:)?[0-9A-Fa-f:.]+\): \d+"),
    _p(FATAL_ERROR, "uncorrectable_ecc", r"uncorrectable ECC error", flags=re.IGNORECASE),
    _p(FATAL_ERROR, "fallen_off_bus", r"GPU has fallen off the bus"),
    _p(FATAL_ERROR, "illegal_memory_access", r"an illegal memory access was encountered"),
    _p(FATAL_ERROR, "illegal_instruction", r"an illegal instruction was encountered"),
    _p(FATAL_ERROR, "device_assert", r"device-side assert triggered"),
    _p(FATAL_ERROR, "cuda_error", r"CUDA error: \S"),
    _p(FATAL_ERROR, "fatal_python", r"Fatal Python error"),
    _p(FATAL_ERROR, "segfault", r"Segmentation fault|Signal 11 \(SIGSEGV\)"),
    _p(FATAL_ERROR, "exit_signal", r"exitcode\s*:\s*-\d+"),
    _p(FATAL_ERROR, "child_failed", r"ChildFailedError"),
    _p(FATAL_ERROR, "signal", r"\bSIG(?:SEGV|BUS|ABRT)\b|\bBus error\b", strong=False),
    _p(
        FATAL_ERROR,
        "cublas_cudnn_failure",
        r"CUBLAS_STATUS_(?:EXECUTION_FAILED|INTERNAL_ERROR)|CUDNN_STATUS_(?:INTERNAL_ERROR|"
        r"EXECUTION_FAILED)",
        strong=False,
    ),
    # -- NCCL: nccl_error / nccl_timeout_burst ----------------------------------------------
    _p(NCCL, "watchdog_timeout", r"Watchdog caught collective operation timeout"),
    _p(NCCL, "work_timeout", r"Timeout at NCCL work: \d+"),
    _p(NCCL, "watchdog_failure", r"detected by watchdog at work|failure detected by watchdog"),
    _p(NCCL, "blocking_wait_timeout", r"WorkNCCL\(.*?\) timed out in blocking wait"),
    _p(NCCL, "ops_failed", r"Some NCCL operations have failed or timed out"),
    _p(NCCL, "comm_aborted", r"NCCL communicator was aborted"),
    _p(
        NCCL,
        "nccl_error_code",
        r"\bnccl(?:SystemError|InternalError|UnhandledCudaError|InvalidUsage|InvalidArgument|"
        r"RemoteError)\b",
    ),
    _p(NCCL, "nccl_error_exception", r"(?:Error|Exception): NCCL error"),
    _p(NCCL, "nccl_warn", r"NCCL WARN "),
    _p(NCCL, "nccl_error", r"\bNCCL error\b", strong=False),
    _p(NCCL, "nccl_timeout", r"\bNCCL timeout\b", strong=False, flags=re.IGNORECASE),
    # -- hang -------------------------------------------------------------------------------
    _p(HANG, "watchdog_stuck", r"watchdog got stuck"),
    _p(HANG, "heartbeat_timeout", r"Heartbeat monitor timed out|no heartbeat of its watchdog"),
    _p(HANG, "monitor_timeout", r"NCCL monitor thread timeout"),
    _p(HANG, "watchdog_terminated", r"Process group watchdog thread terminated"),
    # The practitioners' `.*Process .* hung for .* seconds.*`, bounded to one line.
    _p(HANG, "process_hung", r"Process [^\n]{1,200}? hung for [^\n]{1,40}? seconds"),
)

#: NCCL records that report a timeout (the rest are errors).
NCCL_TIMEOUT_LABELS: Final = frozenset(
    {"watchdog_timeout", "work_timeout", "blocking_wait_timeout", "nccl_timeout"}
)


@dataclass(frozen=True, slots=True)
class LogMatch:
    """The rule a record triggers, which pattern matched, and the line it matched in."""

    rule: str
    label: str
    line: str


def mentions(low: str, keywords: tuple[str, ...]) -> bool:
    """Whether a lower-cased record contains one of ``keywords``: the prefilter that lets a
    benign record through without a single regular expression."""
    # A plain loop: any() over a generator costs a frame per record, on every log record.
    for keyword in keywords:  # noqa: SIM110
        if keyword in low:
            return True
    return False


def classify(
    message: str, level: str, *, max_line: int = 400, low: str | None = None
) -> LogMatch | None:
    """The rule a log record triggers, or ``None`` for a benign record (the usual case).
    ``low``: ``message.lower()`` where the caller has it already."""
    if not mentions(message.lower() if low is None else low, _KEYWORDS):
        return None
    multiline = "\n" in message
    # NCCL's own level marker: a one-line "NCCL INFO" record is chatter by definition.
    if not multiline and "NCCL INFO" in message:
        return None
    weak_ok = _LEVEL_RANK.get(level, _WEAK_MIN_LEVEL) >= _WEAK_MIN_LEVEL
    if _PY_WARNING.search(message) and not any(h in message for h in _EXCEPTION_HINT):
        return None
    if multiline and _ROOT_CAUSE in message:
        message = _own_entry(message)
    for pat in PATTERNS:
        if not pat.strong and not weak_ok:
            continue
        m = pat.regex.search(message)
        if m is not None:
            line = line_at(message, m.start(), max_line) if multiline else clip(message, max_line)
            return LogMatch(pat.rule, pat.label, line)
    return None


def _own_entry(message: str) -> str:
    r"""A torchelastic failure summary without its "Failures:" section: that section lists
    the *other* ranks the agent stopped (``exitcode : -15 (SIGTERM)``: its own SIGTERM), so a
    pattern matched there would quote another rank's line as this record's error. What is left
    is the launcher's traceback and the entry under "Root Cause (first observed failure)".

    >>> _own_entry("ChildFailedError:\nFailures:\n  exitcode : -15\nRoot Cause (first "
    ...            "observed failure):\n  exitcode : 1")
    'ChildFailedError:\nRoot Cause (first observed failure):\n  exitcode : 1'
    """
    root = message.find(_ROOT_CAUSE)
    failures = message.rfind("Failures:", 0, root)
    if failures < 0:
        return message
    return message[:failures] + message[root:]


def line_at(message: str, pos: int, max_len: int = 400) -> str:
    """The line of ``message`` that contains offset ``pos``, clipped around it."""
    start = message.rfind("\n", 0, pos) + 1
    end = message.find("\n", pos)
    line = message[start : end if end >= 0 else len(message)].strip()
    offset = pos - start
    if len(line) > max_len and offset > max_len // 2:
        line = "..." + line[offset - max_len // 4 :]
    return clip(line, max_len)


def clip(text: str, max_len: int = 400) -> str:
    """``text`` stripped and cut to ``max_len`` characters, marked when cut."""
    text = text.strip()
    return text if len(text) <= max_len else text[: max_len - 3] + "..."


# -- figures that evidence quotes -----------------------------------------------------------
# A number as a person writes one (\d+(?:\.\d+)?, not [\d.]+): "2..0 GiB" in a record must not
# make float() raise inside the engine (the decoder fuzz found it).
_NUMBER: Final = r"(\d+(?:\.\d+)?)"
_TRIED: Final = re.compile(rf"Tried to allocate {_NUMBER} ?([KMGT]i?B)")
_CAPACITY: Final = re.compile(
    rf"has a total capacity of {_NUMBER} ?([KMGT]i?B) of which {_NUMBER} ?([KMGT]i?B) is free"
)
_UNIT_TO_GIB: Final = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 1024.0}


def _gib(value: str, unit: str) -> float:
    return round(float(value) * _UNIT_TO_GIB[unit[0]], 3)


def oom_figures(message: str) -> dict[str, float]:
    """The allocator's numbers in an OOM message: what it tried to get, what the GPU had."""
    out: dict[str, float] = {}
    m = _TRIED.search(message)
    if m:
        out["tried_to_allocate_gib"] = _gib(m.group(1), m.group(2))
    m = _CAPACITY.search(message)
    if m:
        out["gpu_capacity_gib"] = _gib(m.group(1), m.group(2))
        out["gpu_free_gib"] = _gib(m.group(3), m.group(4))
    return out


_SEQ: Final = re.compile(
    r"SeqNum=(\d+)|Timeout at NCCL work: (\d+)|watchdog at work(?: sequence id)?: (\d+)"
)
_LAST_COMPLETED: Final = re.compile(r"last completed (?:NCCL )?work: (\d+)")
_LAST_ENQUEUED: Final = re.compile(r"last enqueued (?:NCCL )?work: (\d+)")
_OP_TYPE: Final = re.compile(r"OpType=(\w+)")
_TIMEOUT_MS: Final = re.compile(r"Timeout\(ms\)=(\d+)")
_RAN_FOR_MS: Final = re.compile(r"ran for (\d+) milliseconds")


def nccl_figures(message: str) -> dict[str, int | str]:
    """Sequence numbers and the collective from a ProcessGroupNCCL record, where it has them.

    >>> nccl_figures("[PG 0 Rank 3] Timeout at NCCL work: 1182, last enqueued NCCL work: 1182, "
    ...              "last completed NCCL work: 1181.")
    {'seq': 1182, 'last_completed': 1181, 'last_enqueued': 1182}
    """
    out: dict[str, int | str] = {}
    m = _SEQ.search(message)
    if m:
        out["seq"] = int(next(g for g in m.groups() if g is not None))
    for key, regex in (("last_completed", _LAST_COMPLETED), ("last_enqueued", _LAST_ENQUEUED)):
        m = regex.search(message)
        if m:
            out[key] = int(m.group(1))
    m = _OP_TYPE.search(message)
    if m:
        out["op"] = m.group(1)
    for key, regex in (("timeout_ms", _TIMEOUT_MS), ("ran_for_ms", _RAN_FOR_MS)):
        m = regex.search(message)
        if m:
            out[key] = int(m.group(1))
    return out


# NVIDIA's Xid catalogue, the codes a training cluster meets. Severity "warning" marks codes
# that are a consequence or a recorded event rather than a dead GPU (45: cleanup after a
# process died; 63: a page retired or row remapped successfully; 92: high single-bit rate).
XID_MEANINGS: Final[dict[int, str]] = {
    13: "graphics engine exception (often an application fault, e.g. out-of-range access)",
    31: "GPU memory page fault (often an application fault)",
    43: "GPU stopped processing",
    45: "preemptive cleanup, due to previous errors",
    48: "double-bit ECC error: the GPU needs a reset",
    61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recorded: schedule a GPU reset",
    64: "ECC page retirement or row remapping failure: drain the node",
    74: "NVLink error",
    79: "GPU has fallen off the bus: drain the node",
    92: "high single-bit ECC error rate",
    94: "contained ECC error: the affected application must restart",
    95: "uncontained ECC error: reset the GPU, drain the node",
    119: "GSP RPC timeout",
    120: "GSP error",
}
XID_WARNING_CODES: Final = frozenset({45, 63, 92})

_XID: Final = re.compile(r"\bXid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+)")
_EXITCODE: Final = re.compile(r"exitcode\s*:\s*(-?\d+)")
_ROOT_RANK: Final = re.compile(r"^\s*rank\s*:\s*(\d+)", re.MULTILINE)
_ROOT_CAUSE: Final = "Root Cause (first observed failure)"
_SIGNALS: Final = {6: "SIGABRT", 7: "SIGBUS", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


def fatal_figures(message: str) -> dict[str, int | str]:
    """Xid code and its meaning, exit code and signal, torchrun's root-cause rank."""
    out: dict[str, int | str] = {}
    m = _XID.search(message)
    if m:
        code = int(m.group(2))
        out["xid"] = code
        out["pci"] = m.group(1)
        out["xid_meaning"] = XID_MEANINGS.get(code, "see NVIDIA's Xid catalogue")
    m = _EXITCODE.search(message)
    if m:
        code = int(m.group(1))
        out["exitcode"] = code
        if code < 0:
            out["signal"] = _SIGNALS.get(-code, f"signal {-code}")
    # torchelastic's summary lists the ranks it stopped under "Failures:" first; the root
    # cause is the entry under "Root Cause (first observed failure)".
    root = message.find(_ROOT_CAUSE)
    m = _ROOT_RANK.search(message, root if root >= 0 else 0)
    if m:
        out["root_cause_rank"] = int(m.group(1))
        found = _EXITCODE.search(message, m.end()) if root >= 0 else None
        if found is not None:  # the root cause's exit code, not the first stopped rank's
            exitcode = int(found.group(1))
            out["exitcode"] = exitcode
            out.pop("signal", None)
            if exitcode < 0:
                out["signal"] = _SIGNALS.get(-exitcode, f"signal {-exitcode}")
    return out
