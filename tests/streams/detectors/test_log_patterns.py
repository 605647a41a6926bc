"""The log patterns: real PyTorch/NCCL/kernel wording fires its rule, look-alikes fire nothing."""

from __future__ import annotations

import timeit
from pathlib import Path

import pytest

from rankwatch.streams.detectors.log_patterns import (
    classify,
    fatal_figures,
    line_at,
    nccl_figures,
    oom_figures,
)

OOM_TRACEBACK = """Traceback (most recent call last):
  File "train.py", line 212, in <module>
    loss.backward()
  File "/usr/lib/python3.10/site-packages/torch/_tensor.py", line 522, in backward
    torch.autograd.backward(
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.20 GiB. GPU 7 has a total \
capacity of 79.15 GiB of which 1.02 GiB is free. Including non-PyTorch memory, this process \
has 78.12 GiB memory in use. Of the allocated memory 71.30 GiB is allocated by PyTorch, and \
5.91 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large \
try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."""

CHILD_FAILED = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2025-04-05_10:23:45
  host      : node3
  rank      : 27 (local_rank: 3)
  exitcode  : -11 (pid: 48213)
  error_file: <N/A>
  traceback : Signal 11 (SIGSEGV) received by PID 48213
============================================================"""

FIRES = [
    # (level, message, rule, label)
    (
        "ERROR",
        "ERROR 2025-04-05 10:23:45,123 model_loader - CUDA out of memory. Tried to "
        "allocate 2.30 GiB.",
        "cuda_oom",
        "oom_allocate",
    ),
    ("ERROR", OOM_TRACEBACK, "cuda_oom", "oom_allocate"),
    ("INFO", OOM_TRACEBACK, "cuda_oom", "oom_allocate"),  # a traceback logged at INFO
    ("ERROR", "RuntimeError: CUDA out of memory. ", "cuda_oom", "oom_text"),
    (
        "ERROR",
        "torch.cuda.OutOfMemoryError: CUDA error: out of memory",
        "cuda_oom",
        "oom_exception",
    ),
    (
        "ERROR",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuda_oom",
        "cublas_alloc_failed",
    ),
    (
        "WARNING",
        "node1:2231:2290 [3] include/alloc.h:48 NCCL WARN Failed to CUDA calloc 10485760 bytes",
        "cuda_oom",
        "nccl_calloc_failed",
    ),
    (
        "ERROR",
        "[rank3]:[E405 10:23:45.123 ProcessGroupNCCL.cpp:616] [Rank 3] Watchdog caught "
        "collective operation timeout: WorkNCCL(SeqNum=1182, OpType=ALLREDUCE, NumelIn=16777216, "
        "NumelOut=16777216, Timeout(ms)=600000) ran for 600012 milliseconds before timing out.",
        "nccl",
        "watchdog_timeout",
    ),
    (
        "ERROR",
        "[rank3]:[E405 ProcessGroupNCCL.cpp:1709] [PG 0 Rank 3] Timeout at NCCL work: "
        "1182, last enqueued NCCL work: 1182, last completed NCCL work: 1181.",
        "nccl",
        "work_timeout",
    ),
    (
        "ERROR",
        "[Rank 1] Work WorkNCCL(SeqNum=2521, OpType=ALLREDUCE, NumelIn=160672064, "
        "NumelOut=160672064, Timeout(ms)=600000) timed out in blocking wait.",
        "nccl",
        "blocking_wait_timeout",
    ),
    (
        "ERROR",
        "[Rank 3] Some NCCL operations have failed or timed out. Due to the asynchronous "
        "nature of CUDA kernels, subsequent GPU operations might run on corrupted/incomplete "
        "data.",
        "nccl",
        "ops_failed",
    ),
    ("ERROR", "RuntimeError: NCCL error: unhandled system error", "nccl", "nccl_error_exception"),
    (
        "ERROR",
        "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/"
        "c10d/NCCLUtils.hpp:275, unhandled system error (run with NCCL_DEBUG=INFO for details), "
        "NCCL version 2.20.5\nncclSystemError: System call (e.g. socket, malloc) or external "
        "library call failed or device error.",
        "nccl",
        "nccl_error_code",
    ),
    (
        "INFO",
        "node2:771:802 [0] transport/net_ib.cc:1295 NCCL WARN NET/IB : Got completion "
        "from peer 10.0.0.12<41870> with error 12, opcode 0, len 0, vendor err 129",
        "nccl",
        "nccl_warn",
    ),
    ("ERROR", "[Rank 2] NCCL communicator was aborted on rank 2.", "nccl", "comm_aborted"),
    ("WARNING", "NCCL timeout: unhandled system error", "nccl", "nccl_timeout"),
    (
        "CRITICAL",
        "[rank2]:[F405 ProcessGroupNCCL.cpp:1224] [PG 0 Rank 2] ProcessGroupNCCL's "
        "watchdog got stuck for 600 seconds without making progress in monitoring enqueued "
        "collectives.",
        "hang",
        "watchdog_stuck",
    ),
    (
        "ERROR",
        "[rank0]:[E ProcessGroupNCCL.cpp:1316] [PG 0 Rank 0] Heartbeat monitor timed "
        "out! Process will be terminated after dumping debug info. workMetaList_.size()=103",
        "hang",
        "heartbeat_timeout",
    ),
    ("INFO", "Process 48213 hung for 300 seconds", "hang", "process_hung"),
    (
        "ERROR",
        "terminate called after throwing an instance of 'c10::DistBackendError'\n  "
        "what():  [PG 0 Rank 3] Process group watchdog thread terminated with exception: "
        "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1182, "
        "OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600031 milliseconds before timing out.",
        "nccl",
        "watchdog_timeout",
    ),
    (
        "ERROR",
        "Process group watchdog thread terminated with exception: CUDA error: an illegal "
        "memory access was encountered",
        "fatal_error",
        "illegal_memory_access",
    ),
    (
        "ERROR",
        "RuntimeError: CUDA error: device-side assert triggered\nCUDA kernel errors might "
        "be asynchronously reported at some other API call",
        "fatal_error",
        "device_assert",
    ),
    ("ERROR", "RuntimeError: CUDA error: unspecified launch failure", "fatal_error", "cuda_error"),
    (
        "ERROR",
        "RuntimeError: NCCL error in: NCCLUtils.hpp:275, unhandled cuda error, NCCL "
        "version 2.18.1\nncclUnhandledCudaError: Call to CUDA function failed.\nLast error:\n"
        "Cuda failure 'an illegal memory access was encountered'",
        "fatal_error",
        "illegal_memory_access",
    ),
    (
        "ERROR",
        "NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen "
        "off the bus.",
        "fatal_error",
        "xid",
    ),
    (
        "INFO",
        "kernel: NVRM: Xid (PCI:0000:b1:00): 48, pid=1234, name=python, An uncorrectable "
        "double bit error (DBE) has been detected on GPU",
        "fatal_error",
        "xid",
    ),
    (
        "ERROR",
        "RuntimeError: CUDA error: uncorrectable ECC error encountered",
        "fatal_error",
        "uncorrectable_ecc",
    ),
    (
        "ERROR",
        "Fatal Python error: Segmentation fault\n\nThread 0x00007f (most recent call first):",
        "fatal_error",
        "fatal_python",
    ),
    (
        "ERROR",
        "/bin/bash: line 1: 48213 Segmentation fault      (core dumped) python train.py",
        "fatal_error",
        "segfault",
    ),
    ("ERROR", CHILD_FAILED, "fatal_error", "segfault"),
    (
        "ERROR",
        "torch.distributed.elastic.multiprocessing.api:failed (exitcode: -6) local_rank: "
        "0 (pid: 1234) of binary: /usr/bin/python",
        "fatal_error",
        "exit_signal",
    ),
]

BENIGN = [
    (
        "INFO",
        "node1:1234:1290 [3] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; "
        "OOB eth0:10.0.0.11<0>",
    ),
    (
        "INFO",
        "node1:1234:1290 [3] NCCL INFO comm 0x55d0c8a0e2f0 rank 3 nranks 8 cudaDev 3 "
        "busId 3b000 commId 0x5b2c1d - Init COMPLETE",
    ),
    ("INFO", "node1:1234:1290 [3] NCCL INFO Channel 00/02 :    0   1   2   3   4   5   6   7"),
    ("WARNING", "node1:1234:1290 [3] NCCL INFO Using network IB"),
    (
        "INFO",
        "[2025-04-05 10:23:15] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: "
        "65536, reducing to 32768",
    ),
    ("WARNING", "OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768"),
    ("INFO", "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0"),
    (
        "WARNING",
        "/usr/lib/python3.10/site-packages/torch/distributed/distributed_c10d.py:1234: "
        "UserWarning: Environment variable TORCH_NCCL_BLOCKING_WAIT is deprecated, use "
        "TORCH_NCCL_ASYNC_ERROR_HANDLING instead\n  warnings.warn(",
    ),
    (
        "WARNING",
        "train.py:88: FutureWarning: `torch.cuda.amp.GradScaler(args...)` is "
        "deprecated. Please use `torch.amp.GradScaler('cuda', args...)` instead.",
    ),
    (
        "WARNING",
        "FutureWarning: `torch.cuda.amp.autocast(args...)` is deprecated. Please use "
        "`torch.amp.autocast('cuda', args...)` instead.",
    ),
    (
        "INFO",
        "Setting PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:512 to reduce fragmentation "
        "and avoid CUDA out of memory on long sequences",
    ),
    ("INFO", "max_split_size_mb tuning: reserved 72000 MB, allocated 61000 MB"),
    ("DEBUG", "cuda memory stats: allocated 61.2 GiB reserved 70.3 GiB (NCCL error handling on)"),
    ("DEBUG", "watchdog heartbeat ok, NCCL timeout set to 600 s"),
    ("INFO", "NCCL timeout set to 1800 s (TORCH_NCCL_ASYNC_ERROR_HANDLING=1)"),
    ("INFO", "Epoch 3 step 1200 | loss 2.153 | lr 1.5e-05 | grad_norm 0.42 | tokens/s 78400"),
    ("INFO", "Saving checkpoint to /ckpt/step_1200 (rank 0), ECC mode enabled on all GPUs"),
    ("INFO", "torch.cuda.memory_summary(): |  Allocated memory | 61200 MiB | 70000 MiB |"),
    ("INFO", "GPU 0 Memory Summary: | Allocated: 76.21 GiB | Cached: 78.00 GiB |"),
]


@pytest.mark.parametrize(("level", "message", "rule", "label"), FIRES)
def test_fault_wording_fires_its_rule(level: str, message: str, rule: str, label: str) -> None:
    m = classify(message, level)
    assert m is not None, message
    assert (m.rule, m.label) == (rule, label)
    assert m.line and "\n" not in m.line


@pytest.mark.parametrize(("level", "message"), BENIGN)
def test_benign_look_alikes_fire_nothing(level: str, message: str) -> None:
    assert classify(message, level) is None


def test_the_reported_line_is_the_most_specific_one() -> None:
    m = classify(OOM_TRACEBACK, "ERROR")
    assert m is not None and m.line.startswith("torch.OutOfMemoryError: CUDA out of memory.")
    m = classify(CHILD_FAILED, "ERROR")
    assert m is not None and m.line == "traceback : Signal 11 (SIGSEGV) received by PID 48213"


def test_long_lines_are_clipped_around_the_match() -> None:
    text = "x" * 2000 + " CUDA error: an illegal memory access was encountered " + "y" * 2000
    line = line_at(text, 2001, 400)
    assert len(line) <= 400 and "illegal memory access" in line


def test_figures() -> None:
    assert oom_figures(OOM_TRACEBACK) == {
        "tried_to_allocate_gib": 4.2,
        "gpu_capacity_gib": 79.15,
        "gpu_free_gib": 1.02,
    }
    f = fatal_figures(CHILD_FAILED)
    assert (f["exitcode"], f["signal"], f["root_cause_rank"]) == (-11, "SIGSEGV", 27)
    assert fatal_figures("NVRM: Xid (PCI:0000:3b:00): 95, pid=1")["xid"] == 95
    n = nccl_figures(FIRES[7][1])
    assert (n["seq"], n["op"], n["timeout_ms"], n["ran_for_ms"]) == (
        1182, "ALLREDUCE", 600000, 600012
    )  # fmt: skip


def test_benign_lines_are_cheap() -> None:
    # A regression guard, not a benchmark: the prefilter keeps benign lines in the
    # microsecond range (about 1-2 us here); 25 us only catches a lost prefilter.
    line = "Epoch 3 step 1200 | loss 2.153 | lr 1.5e-05 | grad_norm 0.42 | tokens/s 78400"
    n = 20_000
    per_call = timeit.timeit(lambda: classify(line, "INFO"), number=n) / n
    assert per_call < 25e-6


def test_torchelastic_summary_figures_are_the_root_causes() -> None:
    # A real 4-rank gloo run's summary (tests/producers/data/torchrun_gloo_indexerror.log):
    # "Failures:" lists the ranks torchrun stopped with SIGTERM before the root cause.
    text = (
        Path(__file__).parents[2] / "producers" / "data" / "torchrun_gloo_indexerror.log"
    ).read_text()
    summary = text[text.index("ChildFailedError") :]
    figures = fatal_figures(summary)
    assert (figures["root_cause_rank"], figures["exitcode"]) == (3, 1)
    assert "signal" not in figures


@pytest.mark.parametrize("number", ["2..0", "1.2.3", "..."])
def test_an_oom_with_a_malformed_figure_still_fires_without_it(number: str) -> None:
    # "Tried to allocate 2..0 GiB" made float() raise inside the engine (found by the
    # reliability run's decoder fuzz): the record's OOM alert was lost with the exception.
    from rankwatch.schemas import LogEvent
    from rankwatch.streams.engine import Engine

    message = (
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {number} GiB. GPU 0 "
        f"has a total capacity of {number} GiB of which 1.02 GiB is free."
    )
    assert "tried_to_allocate_gib" not in oom_figures(message)
    engine = Engine.with_builtin_detectors()
    [alert] = engine.process(
        LogEvent(job_id="j", rank=0, timestamp=1.0, level="ERROR", message=message)
    )
    assert alert.rule == "cuda_oom" and "tried_to_allocate_gib" not in alert.evidence
