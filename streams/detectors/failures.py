"""The failure catalogue: which class of failure a crashed rank's log record shows, and what to do.

:func:`classify_failure` turns one log record into a :class:`Failure` (or ``None`` for the
usual, benign record): the :class:`FailureClass` from :data:`CATALOGUE` with its one-line
remediation, the exception type, one readable error line, the user's own top frame (see
:mod:`~rankwatch.streams.detectors.tracebacks`) and the line that matched.

The rules, by what the record is:

- a record with a Python traceback is always a failure: class ``other`` when no pattern of
  the catalogue matches (an unknown exception is still a crash);
- a record at ERROR/CRITICAL is a failure when it matches a pattern, or when it is itself an
  exception line (``ValueError: ...``);
- at WARNING only the unambiguous patterns count (*strong* and *fatal* ones); at INFO/DEBUG
  only the *fatal* wording that nobody prints in passing (the kernel's OOM killer, ``NVRM:
  Xid``, a GPU fallen off the bus).

Python warnings (``UserWarning: ... cuda``), NCCL's ``INFO`` chatter, fp16 "Gradient overflow.
Skipping step" and metric lines with a ``nan`` loss are not crashes: they match nothing.
Like :mod:`~rankwatch.streams.detectors.log_patterns`, a benign record is rejected by a
keyword prefilter on one lower-cased copy before any regular expression runs
(``benchmarks/failure_classify.py`` measures it).

Order matters: classes are tried in :data:`CATALOGUE` order, the first match wins, so the
specific cause comes before its generic wrapper (``[Errno 28] No space left on device``
before the ``PytorchStreamWriter failed`` it causes, ``size mismatch for`` before the
``Error(s) in loading state_dict`` around it, a kernel assertion before the device-side assert
it surfaces as, ECC before a generic CUDA error).

*Consequence* classes (``FailureClass.consequence``) are usually another rank's failure seen
from here: peers' collective timeouts, a peer's lost connection, the launcher's SIGTERM
teardown and torchelastic's summary. Decision for the launcher: its records
(``ChildFailedError`` summary, the agent's ``failed (exitcode: 1) local_rank: 3`` line) are
class ``launcher_exit`` with ``consequence=True`` wherever they appear, because they restate
a child's failure whose own record carries the cause; :attr:`Failure.figures` names the
rank they blame (``root_cause_rank``: the global rank under "Root Cause (first observed
failure)"; ``local_rank`` from the agent's line) so the integrator credits the failure to
that rank and uses the summary as the root cause only when that rank's own record is missing.

>>> f = classify_failure('''Traceback (most recent call last):
...   File "/job/train.py", line 12, in main
...     np.zeros(8)[8]
... IndexError: index 8 is out of bounds for axis 0 with size 8''', "ERROR")
>>> f.failure_class.id, f.exception_type, f.frame
('other', 'IndexError', 'train.py:12 in main')
>>> f.error
'IndexError: index 8 is out of bounds for axis 0 with size 8'
>>> classify_failure("Out of memory: Killed process 25315 (python3) total-vm:53312244kB", "INFO"
...                  ).failure_class.id
'oom_killer'
>>> classify_failure("Epoch 3 step 1200 | loss nan | lr 1.5e-05", "INFO") is None
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from rankwatch.streams.detectors.log_patterns import clip, fatal_figures, line_at, mentions
from rankwatch.streams.detectors.tracebacks import (
    RANK_PREFIX,
    TRACEBACK_HEADER,
    fault_user_frame,
    parse_traceback,
)

__all__ = [
    "CATALOGUE",
    "CLASSES",
    "PATTERNS",
    "Failure",
    "FailureClass",
    "classify_failure",
    "launcher_figures",
]


@dataclass(frozen=True, slots=True)
class FailureClass:
    """A kind of failure: its id, a title, one actionable remediation line, and whether it
    is usually the consequence of another rank's failure."""

    id: str
    title: str
    remediation: str
    consequence: bool = False


def _c(id: str, title: str, remediation: str, consequence: bool = False) -> FailureClass:
    return FailureClass(id, title, remediation, consequence)


#: Every failure class, in the order they are tried (the first match wins).
CATALOGUE: Final[tuple[FailureClass, ...]] = (
    _c("launcher_exit", "Launcher reports a child's exit (torchelastic)",
       "Read the root-cause rank's own log (figures.root_cause_rank); an exitcode of -9 is "
       "usually the kernel OOM killer, -11 a segfault.", consequence=True),
    _c("terminated", "Rank terminated by the launcher (SIGTERM teardown)",
       "Not the cause: find the first rank that failed; the launcher then stopped the rest.",
       consequence=True),
    _c("oom_killer", "Kernel OOM killer",
       "The node ran out of host RAM: lower DataLoader num_workers/prefetch, shard or "
       "memory-map the dataset, or raise the job's memory limit.", ),
    _c("disk_full", "Disk full (ENOSPC / quota)",
       "Free space or point the checkpoint/cache/tmp dir at a larger volume; keep fewer "
       "checkpoints (save_total_limit)."),
    _c("hardware", "GPU hardware or driver fault (Xid, ECC, fallen off the bus, NVRM)",
       "Drain the node and run GPU diagnostics (nvidia-smi -q, dcgmi diag); resume from the "
       "last checkpoint on healthy nodes."),
    _c("cuda_oom", "CUDA out of memory",
       "Lower the micro-batch or sequence length, enable activation checkpointing or ZeRO/"
       "FSDP sharding, or set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True."),
    _c("host_oom", "Host out of memory",
       "Lower DataLoader num_workers and prefetch_factor, avoid copying the dataset per "
       "worker, or give the job more RAM (/dev/shm for workers)."),
    _c("cuda_assert", "CUDA kernel assertion (device-side assert)",
       "Usually an out-of-range index or label (vocab size, num_classes): rerun with "
       "CUDA_LAUNCH_BLOCKING=1 or on CPU to see the failing op."),
    _c("shape_mismatch", "Size or shape mismatch",
       "Check the model config against the data and checkpoint (hidden size, vocab, LoRA "
       "rank, num_labels); print the shapes at the user frame."),
    _c("checkpoint_io", "Checkpoint I/O (corrupt or incompatible checkpoint)",
       "Re-download or re-save the checkpoint (truncated file?); a failed save is usually a "
       "full disk; for key errors load with the matching model class."),
    _c("model_download", "Model, tokenizer or config missing / download failed",
       "Check the model id and path, HF_TOKEN and network/proxy (or HF_ENDPOINT mirror); "
       "pre-download to a shared cache and set HF_HUB_OFFLINE=1."),
    _c("rendezvous", "Rendezvous failure (torchelastic)",
       "Check that the rendezvous endpoint (rdzv_endpoint host:port) is up and reachable "
       "from every node; a closed rendezvous usually means another node's agent exited."),
    _c("peer_lost", "Connection to a peer lost",
       "Not the cause: a peer rank crashed or its node dropped; find that rank's own error.",
       consequence=True),
    _c("collective_timeout", "Collective operation timed out",
       "Usually a peer died or hangs: find the rank that did not reach the collective; raise "
       "the timeout only if a step is legitimately slow.", consequence=True),
    _c("comm_error", "NCCL error or connection refused / unreachable",
       "Check MASTER_ADDR/port, firewalls and NCCL_SOCKET_IFNAME/IB settings; rerun with "
       "NCCL_DEBUG=INFO to see the failing transport."),
    _c("cuda_error", "CUDA error (illegal memory access, launch failure)",
       "Rerun with CUDA_LAUNCH_BLOCKING=1 to find the op; check custom kernels and the "
       "driver/CUDA/PyTorch versions; if it recurs on one GPU, suspect the hardware."),
    _c("fatal_signal", "Segmentation fault or fatal signal",
       "Get a native stack (faulthandler, gdb, core dump); check extension/driver versions "
       "and /dev/shm size for DataLoader workers."),
    _c("data_error", "Data or file error",
       "Fix or skip the bad sample/file at the user frame (path, permissions, encoding, "
       "corrupt record); validate the dataset before training."),
    _c("other", "Unclassified exception",
       "Read the exception and the user frame; add a pattern to the catalogue if it recurs."),
)  # fmt: skip

#: The classes by id.
CLASSES: Final[Mapping[str, FailureClass]] = MappingProxyType({c.id: c for c in CATALOGUE})

# Minimum levels a pattern fires at.
ANY: Final = 0  # fatal wording: fires at every level
WARNING: Final = 2  # unambiguous: WARNING and above
ERROR: Final = 3  # ambiguous words: ERROR and above (and always inside a traceback)
_LEVEL_RANK: Final = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3, "CRITICAL": 4}


@dataclass(frozen=True, slots=True)
class _Pattern:
    cls: str
    label: str
    regex: re.Pattern[str]
    min_level: int


def _p(cls: str, label: str, pattern: str, min_level: int = WARNING, flags: int = 0) -> _Pattern:
    return _Pattern(cls, label, re.compile(pattern, flags), min_level)


_I: Final = re.IGNORECASE

#: The patterns, grouped by class in :data:`CATALOGUE` order.
PATTERNS: Final[tuple[_Pattern, ...]] = (
    # -- launcher_exit: torchelastic's summary and the agent's line ------------------------
    _p("launcher_exit", "root_cause", r"Root Cause \(first observed failure\):"),
    _p("launcher_exit", "child_failed", r"ChildFailedError"),
    _p("launcher_exit", "agent_failed",
       r"failed \(exitcode: -?\d+\) local_rank: \d+ \(pid: \d+\)"),
    _p("launcher_exit", "spawn_exited", r"ProcessExitedException|process \d+ terminated with "
       r"(?:exit code|signal)"),
    # -- terminated: the launcher's SIGTERM teardown ---------------------------------------
    _p("terminated", "closing_sigterm", r"Sending process \d+ closing signal SIG(?:TERM|INT)"),
    _p("terminated", "got_sigterm", r"SignalException: Process \d+ got signal: (?:15|2)\b|"
       r"Signal 15 \(SIGTERM\) received by PID"),
    # -- oom_killer ------------------------------------------------------------------------
    _p("oom_killer", "killed_process",
       r"(?:Out of memory|Memory cgroup out of memory): Kill(?:ed)? process \d+", ANY),
    _p("oom_killer", "invoked", r"invoked oom-killer:|\boom-kill:constraint=", ANY),
    # -- disk_full -------------------------------------------------------------------------
    _p("disk_full", "enospc", r"No space left on device|\[Errno 28\]|\bENOSPC\b|StorageFull"),
    _p("disk_full", "quota", r"Disk quota exceeded|\[Errno 122\]|\bEDQUOT\b"),
    # -- hardware --------------------------------------------------------------------------
    _p("hardware", "xid", r"\bXid \((?:PCI:)?[0-9A-Fa-f:.]+\): \d+", ANY),
    _p("hardware", "fallen_off_bus", r"fallen off the bus", ANY),
    _p("hardware", "ecc", r"uncorrectable ECC error|cudaErrorECCUncorrectable|"
       r"double bit error \(DBE\)", WARNING, _I),
    _p("hardware", "nvrm", r"\bNVRM: (?!loading NVIDIA)", WARNING),
    _p("hardware", "nvlink", r"NVLink (?:error|fatal)", ERROR, _I),
    # -- cuda_oom --------------------------------------------------------------------------
    _p("cuda_oom", "oom_allocate", r"(?:CUDA|HIP) out of memory\. Tried to allocate", ANY),
    _p("cuda_oom", "oom_exception", r"\bOutOfMemoryError\b"),
    _p("cuda_oom", "alloc_failed", r"CUBLAS_STATUS_ALLOC_FAILED|Failed to CUDA calloc|"
       r"CUDA error: out of memory|cudaErrorMemoryAllocation|NCCL WARN Cuda failure "
       r"'?out of memory"),
    _p("cuda_oom", "oom_text", r"(?:CUDA|HIP) out of memory"),
    # -- host_oom --------------------------------------------------------------------------
    _p("host_oom", "worker_killed", r"DataLoader worker \(pid\(?s?\)? ?[\d, ]+\) is killed "
       r"by signal: Killed"),
    _p("host_oom", "cpu_alloc", r"DefaultCPUAllocator: (?:can't|not enough memory)|"
       r"Cannot allocate memory|\[Errno 12\]|std::bad_alloc"),
    _p("host_oom", "memory_error", r"^\s*MemoryError\b", ERROR, re.MULTILINE),
    # -- cuda_assert -----------------------------------------------------------------------
    _p("cuda_assert", "kernel_assert",
       r"\.cuh?:\d+: [^\n]{0,200}?block: \[[\d,]+\], thread: \[[\d,]+\] Assertion [^\n]+ failed"),
    _p("cuda_assert", "device_assert", r"device-side assert triggered"),
    # -- shape_mismatch --------------------------------------------------------------------
    _p("shape_mismatch", "matmul", r"shapes cannot be multiplied"),
    _p("shape_mismatch", "state_dict_size", r"size mismatch for \S+: copying a param"),
    _p("shape_mismatch", "broadcast",
       r"The size of tensor a \(\d+\) must match the size of tensor b \(\d+\)"),
    _p("shape_mismatch", "other_shape",
       r"Sizes of tensors must match|shape '\[[^\]]*\]' is invalid for input of size|"
       r"Expected input batch_size \(\d+\) to match target batch_size|"
       r"\b(?:size|shape) mismatch\b|Expected (?:shape|size) ", ERROR, _I),
    # -- checkpoint_io ---------------------------------------------------------------------
    _p("checkpoint_io", "zip_archive", r"PytorchStream(?:Reader|Writer) failed"),
    # Loaders with strict=False report key differences as warnings: ERROR only.
    _p("checkpoint_io", "state_dict_keys", r"(?:Missing|Unexpected) key\(s\) in state_dict|"
       r"Error\(s\) in loading state_dict", ERROR),
    _p("checkpoint_io", "unpickle", r"UnpicklingError|invalid load key|SafetensorError|"
       r"Weights only load failed|unexpected EOF, expected \d+ more bytes"),
    # What torch.save prints when the write fails (a full disk, a dead mount): no "ENOSPC".
    _p("checkpoint_io", "write_failed", r"inline_container\.cc:\d+\] \. unexpected pos \d+|"
       r"basic_ios::clear: iostream error"),
    # -- model_download --------------------------------------------------------------------
    _p("model_download", "missing_file",
       r"does not appear to have a file named|Error no file named \S+ found in directory|"
       r"Can't load (?:tokenizer|the configuration|config|the model) for"),
    _p("model_download", "hub_error", r"\b(?:RepositoryNotFoundError|GatedRepoError|"
       r"RevisionNotFoundError|EntryNotFoundError|LocalEntryNotFoundError)\b|We couldn't "
       r"connect to 'https?://[^']+' to load"),
    _p("model_download", "hub_connection",
       r"HTTPSConnectionPool\(host='(?:huggingface\.co|hf-mirror\.com|[\w.-]*modelscope\.cn|"
       r"cdn-lfs[\w.-]*)'", ERROR),
    _p("model_download", "seed_wording", r"Tokenizer not found|config\.json missing", ERROR),
    # -- rendezvous ------------------------------------------------------------------------
    _p("rendezvous", "rdzv_error",
       r"\bRendezvous(?:Timeout|Closed|Connection|State|Graceful.*?Exit)?Error\b"),
    _p("rendezvous", "keep_alive", r"failed to send a keep-alive heartbeat to the rendezvous"),
    _p("rendezvous", "store_wait", r"DistStoreError|Timed out after \d+ seconds waiting for "
       r"clients|Timed out initializing process group in store based barrier"),
    # -- peer_lost -------------------------------------------------------------------------
    _p("peer_lost", "nccl_remote", r"remote process exited or there was a network error|"
       r"\bncclRemoteError\b"),
    _p("peer_lost", "gloo_closed", r"Connection closed by (?:remote )?peer"),
    # HTTP clients (hub downloads, metric uploaders) warn of resets while they retry: ERROR.
    _p("peer_lost", "reset", r"Connection reset by peer|\[Errno 104\]|Broken pipe|"
       r"\[Errno 32\]", ERROR),
    # -- collective_timeout ----------------------------------------------------------------
    _p("collective_timeout", "watchdog", r"Watchdog caught collective operation timeout|"
       r"Timeout at NCCL work: \d+|WorkNCCL\(.*?\) timed out in blocking wait|"
       r"Some NCCL operations have failed or timed out"),
    _p("collective_timeout", "gloo_timeout",
       r"Timed out waiting \d+ms for (?:recv|send) operation to complete"),
    _p("collective_timeout", "hang", r"watchdog got stuck|Heartbeat monitor timed out|"
       r"no heartbeat of its watchdog|NCCL monitor thread timeout"),
    _p("collective_timeout", "nccl_timeout", r"\bNCCL timeout\b", ERROR, _I),
    # -- comm_error ------------------------------------------------------------------------
    _p("comm_error", "nccl_code", r"\bnccl(?:SystemError|InternalError|UnhandledCudaError|"
       r"InvalidUsage|InvalidArgument)\b|(?:Error|Exception): NCCL error|DistBackendError"),
    _p("comm_error", "nccl_warn", r"NCCL WARN "),
    # c10d logs these at W while it retries, and the job often goes on: ERROR only.
    _p("comm_error", "store_connect", r"DistNetworkError|The client socket has failed to "
       r"connect|The client socket has timed out after \d+ms while trying to connect|"
       r"TCP client failed to connect", ERROR),
    _p("comm_error", "refused", r"Connection refused|\[Errno 111\]|No route to host|"
       r"Network is unreachable|\[Errno 113\]|\[Errno 101\]", ERROR),
    _p("comm_error", "nccl_error", r"\bNCCL error\b", ERROR),
    _p("comm_error", "gloo_error", r"gloo/transport/\S+\] ", ERROR),
    # -- cuda_error ------------------------------------------------------------------------
    _p("cuda_error", "illegal", r"an illegal (?:memory access|instruction) was encountered|"
       r"misaligned address|unspecified launch failure"),
    _p("cuda_error", "library", r"CUBLAS_STATUS_(?:EXECUTION_FAILED|INTERNAL_ERROR|"
       r"NOT_SUPPORTED)|CUDNN_STATUS_(?:INTERNAL_ERROR|EXECUTION_FAILED|NOT_SUPPORTED)"),
    _p("cuda_error", "cuda_error", r"CUDA error: \S|\bcudaError\w+", ERROR),
    # -- fatal_signal ----------------------------------------------------------------------
    _p("fatal_signal", "fatal_python", r"Fatal Python error"),
    _p("fatal_signal", "segfault", r"Segmentation fault|\bSIGSEGV\b|core dumped"),
    _p("fatal_signal", "signal", r"\bSIG(?:BUS|ABRT|ILL|FPE)\b|\bBus error\b|"
       r"terminate called after throwing"),
    _p("fatal_signal", "worker_signal", r"DataLoader worker \(pid[^)]*\) is killed by signal"),
    # -- data_error ------------------------------------------------------------------------
    _p("data_error", "in_worker", r"Caught \w+ in DataLoader worker process"),
    _p("data_error", "file", r"^\s*(?:FileNotFoundError|PermissionError|IsADirectoryError|"
       r"NotADirectoryError|UnicodeDecodeError|(?:json\.decoder\.)?JSONDecodeError|"
       r"(?:PIL\.)?UnidentifiedImageError|pyarrow\.lib\.ArrowInvalid)\b", ERROR, re.MULTILINE),
    _p("data_error", "image", r"cannot identify image file|image file is truncated"),
)  # fmt: skip

# The patterns that may fire at each level rank (0 DEBUG .. 4 CRITICAL or a traceback).
_BY_RANK: Final = tuple(tuple(p for p in PATTERNS if p.min_level <= r) for r in range(5))

# Exception types that name a class when no pattern matched (traceback or exception line).
_TYPE_CLASS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "MemoryError": "host_oom",
        "OutOfMemoryError": "cuda_oom",
        "FileNotFoundError": "data_error",
        "PermissionError": "data_error",
        "IsADirectoryError": "data_error",
        "UnicodeDecodeError": "data_error",
        "JSONDecodeError": "data_error",
        "UnidentifiedImageError": "data_error",
        "ChildFailedError": "launcher_exit",
        "DistBackendError": "comm_error",
        "DistNetworkError": "comm_error",
        "DistStoreError": "rendezvous",
    }
)

# Lower-case keywords, one of which every pattern's wording contains (or the exception line
# around it: transformers' "Can't load tokenizer" is an OSError, "[errno: 111] Connection
# refused" has "err"): a record without any is rejected before a regular expression runs.
# Short stems keep the list, and so the cost of a benign record, small.
_KEYWORDS: Final = (
    "err",  # every *Error, "NCCL error", "CUDA error", errno
    "fail",  # failed, failure: "Assertion ... failed", "failed (exitcode", "FAILED"
    "xcept",  # *Exception
    "trace",  # Traceback
    "mem",  # out of memory, illegal memory access, cannot allocate memory
    "kill",  # Killed process, oom-kill, killed by signal
    "sig",  # signal, SIGTERM, SIGSEGV
    "seg",  # Segmentation fault
    "assert",
    "match",  # size mismatch, must match
    "shape",
    "state_dict",
    "timed",  # timed out
    "timeout",
    "watchdog",
    "peer",
    "refused",
    "space left",
    "nvrm",
    "xid",
    "fallen off",
    "nccl warn",
    "core dump",
    "terminat",  # terminate called, terminated with exit code
    "bad_alloc",
    "not found",
    "missing",
)

_PY_WARNING: Final = re.compile(r"\b(?:User|Future|Deprecation|PendingDeprecation|Runtime)"
                                r"Warning: ")  # fmt: skip
# A flush-left exception line: "ValueError: x", "torch.OutOfMemoryError: x", "MemoryError".
_EXC_LINE: Final = re.compile(
    r"^\s*(?P<type>(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception))"
    r"(?::\s*(?P<msg>[^\n]*))?$",
    re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class Failure:
    """What a crashed rank's record says: the class, the exception, where, the line."""

    failure_class: FailureClass
    exception_type: str | None  # as printed ("torch.OutOfMemoryError"); None without one
    error: str  # one readable line: "IndexError: index 8 is out of bounds ..."
    frame: str | None  # the user's innermost frame: "train.py:42 in forward"
    line: str  # the line of the record that matched (or the exception line)
    label: str = ""  # which pattern matched ("" when classed by type or as "other")
    cause_type: str | None = None  # first exception of a chained traceback
    figures: Mapping[str, int | str] = field(default_factory=dict)  # launcher: ranks, exitcode

    @property
    def consequence(self) -> bool:
        """Usually the consequence of another rank's failure (see the module docstring)."""
        return self.failure_class.consequence


def classify_failure(
    message: str, level: str, *, max_line: int = 400, low: str | None = None
) -> Failure | None:
    """The failure a log record shows, or ``None`` for a benign record (the usual case).
    ``low``: ``message.lower()`` where the caller has it already."""
    if not mentions(message.lower() if low is None else low, _KEYWORDS):
        return None
    has_tb = TRACEBACK_HEADER in message
    multiline = "\n" in message
    if not has_tb:
        # NCCL's own level marker: a one-line "NCCL INFO" record is chatter by definition.
        if not multiline and "NCCL INFO" in message:
            return None
        if _PY_WARNING.search(message):
            return None
    rank = 4 if has_tb else _LEVEL_RANK.get(level.upper(), WARNING)
    match: tuple[_Pattern, re.Match[str]] | None = None
    for pat in _BY_RANK[rank]:
        m = pat.regex.search(message)
        if m is not None:
            match = (pat, m)
            break
    tb = parse_traceback(message) if has_tb else None
    if match is None and tb is None:
        if rank < ERROR:
            return None
        exc = _EXC_LINE.search(message)
        if exc is None:
            return None
        etype = exc.group("type")
        cls = CLASSES[_TYPE_CLASS.get(etype.rsplit(".", 1)[-1], "other")]
        line = clip(exc.group(0), max_line)
        return Failure(cls, etype, line, None, line)
    if match is not None:
        pat, m = match
        cls = CLASSES[pat.cls]
        line = line_at(message, m.start(), max_line) if multiline else clip(message, max_line)
        label = pat.label
    else:
        assert tb is not None
        etype = tb.exc_type or ""
        cls = CLASSES[_TYPE_CLASS.get(etype.rsplit(".", 1)[-1], "other")]
        line = clip(tb.exc_line, max_line) if tb.exc_line else ""
        label = ""
    figures: Mapping[str, int | str] = {}
    if cls.id in ("launcher_exit", "terminated"):
        figures = launcher_figures(message)
    elif cls.id == "hardware":
        # Xid code, PCI address and meaning (XID_MEANINGS), as the fatal_error evidence has.
        figures = {k: v for k, v in fatal_figures(message).items() if k in _XID_KEYS}
    if tb is not None and tb.exc_type is not None and cls.id != "launcher_exit":
        exc_type: str | None = tb.exc_type
        error = clip(tb.error, max_line)
    elif cls.id == "launcher_exit" and figures:
        exc_type = tb.exc_type if tb is not None else None
        error = _launcher_error(figures, line)
    else:
        # No traceback: the record's first exception line, if any, is the readable error.
        exc = _EXC_LINE.search(RANK_PREFIX.sub("", message) if "]:" in message else message)
        exc_type = exc.group("type") if exc is not None else None
        error = clip(exc.group(0), max_line) if exc is not None else line
    frame = tb.user_frame if tb is not None else None
    if frame is None and cls.id == "fatal_signal" and "most recent call first" in message:
        frame = fault_user_frame(message)
    return Failure(
        failure_class=cls,
        exception_type=exc_type,
        error=error,
        frame=frame,
        line=line,
        label=label,
        cause_type=tb.cause_type if tb is not None else None,
        figures=figures,
    )


# -- the launcher's figures -----------------------------------------------------------------
_ROOT_BLOCK: Final = re.compile(r"Root Cause \(first observed failure\):(?P<block>.*)", re.S)
_RANK: Final = re.compile(r"^\s*rank\s*:\s*(\d+)(?: \(local_rank: (\d+)\))?", re.MULTILINE)
_EXITCODE: Final = re.compile(r"exitcode\s*:\s*(-?\d+)(?: \(pid: (\d+)\))?")
_AGENT: Final = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+) \(pid: (\d+)\)")
_HOST: Final = re.compile(r"^\s*host\s*:\s*(\S+)", re.MULTILINE)
_CHILD_TB: Final = re.compile(r"^\s*traceback\s*:\s*(\S[^\n]*)", re.MULTILINE)
_SIGTERM_PID: Final = re.compile(r"Sending process (\d+) closing signal (SIG\w+)")
_XID_KEYS: Final = frozenset({"xid", "pci", "xid_meaning"})
_SIGNALS: Final = {2: "SIGINT", 6: "SIGABRT", 7: "SIGBUS", 9: "SIGKILL", 11: "SIGSEGV",
                   15: "SIGTERM"}  # fmt: skip


def launcher_figures(message: str) -> dict[str, int | str]:
    """The rank a launcher record blames, its exit code and signal, from torchelastic's
    summary (its "Root Cause" entry, not the first of the "Failures" list) or the agent's
    ``failed (exitcode: N) local_rank: N (pid: N)`` line.

    >>> launcher_figures("failed (exitcode: -9) local_rank: 3 (pid: 407727) of binary: x")
    {'exitcode': -9, 'local_rank': 3, 'pid': 407727, 'signal': 'SIGKILL'}
    """
    out: dict[str, int | str] = {}
    root = _ROOT_BLOCK.search(message)
    if root is not None:
        block = root.group("block")
        m = _RANK.search(block)
        if m is not None:
            out["root_cause_rank"] = int(m.group(1))
            if m.group(2) is not None:
                out["local_rank"] = int(m.group(2))
        m = _HOST.search(block)
        if m is not None:
            out["host"] = m.group(1)
        m = _EXITCODE.search(block)
        if m is not None:
            out["exitcode"] = int(m.group(1))
            if m.group(2) is not None:
                out["pid"] = int(m.group(2))
        m = _CHILD_TB.search(block)
        if m is not None and not m.group(1).startswith("To enable traceback"):
            out["traceback"] = clip(m.group(1), 200)
    else:
        m = _AGENT.search(message)
        if m is not None:
            out["exitcode"] = int(m.group(1))
            out["local_rank"] = int(m.group(2))
            out["pid"] = int(m.group(3))
        else:
            m = _SIGTERM_PID.search(message)
            if m is not None:
                out["pid"] = int(m.group(1))
                out["signal"] = m.group(2)
    code = out.get("exitcode")
    if isinstance(code, int) and code < 0:
        out["signal"] = _SIGNALS.get(-code, f"signal {-code}")
    return out


def _launcher_error(figures: Mapping[str, int | str], line: str) -> str:
    if "root_cause_rank" in figures:
        who = f"rank {figures['root_cause_rank']}"
        if "local_rank" in figures:
            who += f" (local_rank {figures['local_rank']})"
    elif "local_rank" in figures:
        who = f"local_rank {figures['local_rank']}"
    else:
        return line
    text = f"{who} exited"
    if "exitcode" in figures:
        text += f" with exitcode {figures['exitcode']}"
    if "signal" in figures:
        text += f" ({figures['signal']})"
    if "traceback" in figures:
        text += f": {figures['traceback']}"
    return text
