"""The failure catalogue on real crash records: each class from text found in public issue
threads (cited above each sample) or produced here by real torch, gloo and torchrun runs; the
benign look-alikes of test_log_patterns stay silent."""

from __future__ import annotations

import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_log_patterns import BENIGN

from rankwatch.streams.detectors.failures import (
    CATALOGUE,
    CLASSES,
    Failure,
    classify_failure,
    launcher_figures,
)
from rankwatch.streams.detectors.tracebacks import is_user_path, parse_traceback

# -- samples from public issue threads ------------------------------------------------------

# hezhangsprinter/DCPDN issue #12 (a DataLoader worker killed by the OOM killer).
DATALOADER_KILLED = """Traceback (most recent call last):
  File "train.py", line 210, in <module>
    val_target_cpu, val_input_cpu = val_target_cpu.float().cuda(), val_input_cpu.float().cuda()
  File "/home/littlemonster/anaconda3/envs/pic/lib/python2.7/site-packages/torch/_utils.py", \
line 69, in _cuda
    return new_type(self.size()).copy_(self, async)
  File "/home/littlemonster/anaconda3/envs/pic/lib/python2.7/site-packages/torch/utils/data/\
dataloader.py", line 175, in handler
    _error_if_any_worker_fails()
RuntimeError: DataLoader worker (pid 19597) is killed by signal: Killed."""

# databrickslabs/dolly issue #139: a shipper's prefix on every line, the logger's line first.
_P = "2023-04-29 06:01:12.977 [177/train/578 (pid 28936)] [09c561ee-a44c-4795-967c-7183a83b3160] "
ENOSPC_PREFIXED = "\n".join(
    _P + line
    for line in [
        "2023-04-29 06:01:12 ERROR [__main__] main failed",
        "Traceback (most recent call last):",
        '  File "/opt/conda/lib/python3.7/site-packages/torch/serialization.py", line 379, in save',
        "    _save(obj, opened_zipfile, pickle_module, pickle_protocol)",
        '  File "/opt/conda/lib/python3.7/site-packages/torch/serialization.py", line 604, in _save',
        "    zip_file.write_record(name, storage.data_ptr(), num_bytes)",
        "OSError: [Errno 28] No space left on device",
    ]
)

# CompVis/stable-diffusion issue #93 (Windows paths; a truncated checkpoint).
ZIP_ARCHIVE = r"""Traceback (most recent call last):
  File "scripts/txt2img.py", line 344, in <module>
    main()
  File "scripts/txt2img.py", line 240, in main
    model = load_model_from_config(config, f"{opt.ckpt}")
  File "scripts/txt2img.py", line 50, in load_model_from_config
    pl_sd = torch.load(ckpt, map_location="cpu")
  File "C:\Users\Simon\anaconda3\envs\ldm\lib\site-packages\torch\serialization.py", line 705, in load
    with _open_zipfile_reader(opened_file) as opened_zipfile:
  File "C:\Users\Simon\anaconda3\envs\ldm\lib\site-packages\torch\serialization.py", line 243, \
in __init__
    super(_open_zipfile_reader, self).__init__(torch._C.PyTorchFileReader(name_or_buffer))
RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory"""

# pytorch/pytorch issue #91943 (a bare exception type, no message).
RDZV_CLOSED = """Traceback (most recent call last):
  File "/usr/local/lib/python3.6/dist-packages/torch/distributed/elastic/rendezvous/\
dynamic_rendezvous.py", line 1024, in next_rendezvous
    self._op_executor.run(join_op, deadline)
  File "/usr/local/lib/python3.6/dist-packages/torch/distributed/elastic/rendezvous/\
dynamic_rendezvous.py", line 634, in run
    raise RendezvousClosedError()
torch.distributed.elastic.rendezvous.api.RendezvousClosedError"""

# NVIDIA/NVSentinel issue #155 (dmesg; an NVRM message without an Xid).
NVRM_FALLEN = """[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0
               NVRM: (PCI ID: 10de:26b5) installed in this system has
               NVRM: fallen off the bus and is not responding to commands."""

# NVIDIA/nccl issue #2076 (NCCL's view of a peer that died).
NCCL_REMOTE = """torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/\
c10d/NCCLUtils.hpp:268, remote process exited or there was a network error, NCCL version 2.21.5
ncclRemoteError: A call failed possibly due to a network error or a remote process exiting \
prematurely.
Last error:
socketProgressOpt: Call to recv from 172....<33759> failed : Connection reset by peer"""

# aks2203/deep-thinking issue #5.
MISSING_KEYS = """RuntimeError: Error(s) in loading state_dict for DTNet:
\tMissing key(s) in state_dict: "projection.0.weight", "recur_block.0.0.conv1.weight", \
"head.4.weight".
\tUnexpected key(s) in state_dict: "module.projection.0.weight", "module.head.4.weight"."""

# Lvchangze/snn issue #6 (faulthandler's dump, indented as faulthandler prints it; cut).
FAULT_DUMP = """Fatal Python error: Segmentation fault

Current thread 0x00007fd9b8151600 (most recent call first):
  File "/home/jean/snn-main/snntorch/spikegen.py", line 362 in rate_conv
  File "/home/jean/snn-main/snntorch/spikegen.py", line 120 in rate
  File "main.py", line 86 in build_rated_dataset
  File "main.py", line 343 in train
Segmentation fault (core dumped)"""

# Produced here: a 2-process gloo job (torch 2.x, CPU), rank 0 in dist.recv from rank 1 that
# never sends, process-group timeout 60 s.
GLOO_TIMEOUT_60S = """Traceback (most recent call last):
  File "/tmp/rw_gen/gloo_fail.py", line 15, in run
    dist.recv(t, src=1)
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/c10d_logger.py", line 83, in wrapper
    return func(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 2799, in recv
    work.wait()
RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 60000ms for recv operation to complete"""

# (level, message, class id, exception type or None)
SAMPLES: list[tuple[str, str, str, str | None]] = [
    # -- model_download -- yul091/DGSlow issue #1 (cut before its link)
    ("ERROR", "OSError:  results/dialogpt-small does not appear to have a file named config.json.",
     "model_download", "OSError"),
    # mazurowski-lab/segmentation-guided-diffusion issue #1
    ("ERROR", r"OSError: Error no file named config.json found in directory ddim-breast_mri-256\unet.",
     "model_download", "OSError"),
    # -- cuda_oom -- the OOM record of the article rankwatch started from
    ("ERROR", "ERROR 2025-04-05 10:23:45,123 model_loader - CUDA out of memory. Tried to allocate "
     "2.30 GiB.", "cuda_oom", None),
    # -- host_oom -- hezhangsprinter/DCPDN issue #12
    ("ERROR", DATALOADER_KILLED, "host_oom", "RuntimeError"),
    # mittagessen/kraken issue #266 (title)
    ("ERROR", "RuntimeError: DataLoader worker (pid 22048) is killed by signal: Killed.",
     "host_oom", "RuntimeError"),
    # JingyunLiang/VRT issue #49 (title)
    ("ERROR", "RuntimeError: [enforce fail at alloc_cpu.cpp:73] . DefaultCPUAllocator: can't "
     "allocate memory: you tried to allocate 116813856768 bytes. Error code 12 (Cannot allocate "
     "memory)", "host_oom", "RuntimeError"),
    # -- oom_killer -- pcyin/tranX issue #41 (dmesg, shipped at INFO)
    ("INFO", "[2059991.491542] Out of memory: Killed process 25315 (python3) total-vm:53312244kB, "
     "anon-rss:31451456kB, file-rss:74816kB, shmem-rss:12296kB, UID:0 pgtables:69068kB "
     "oom_score_adj:0", "oom_killer", None),
    # equinor/ert issue #7797
    ("DEBUG", "2024-04-29T14:55:41,679685+02:00 oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null)"
     ",cpuset=/,mems_allowed=0,global_oom,task_memcg=/user.slice/user-21417.slice/user@21417.service"
     ",task=perl,pid=1440763,uid=21417", "oom_killer", None),
    # -- comm_error -- vllm-project/vllm issue #3771 (title), at ERROR
    ("ERROR", "[W socket.cpp:663] [c10d] The client socket has failed to connect to "
     "[::ffff:172.16.8.232]:39623 (errno: 110 - Connection timed out)", "comm_error", None),
    # vllm-project/vllm issue #19670 (title)
    ("ERROR", "torch.distributed.DistNetworkError: The client socket has timed out after 600000ms "
     "while trying to connect to (172.17.0.9, 46229).", "comm_error",
     "torch.distributed.DistNetworkError"),
    # -- collective_timeout -- mila-iqia/milabench pull #269 (one line, wrapped in the thread)
    ("ERROR", "[rank6]:[E909 09:55:35.239719860 ProcessGroupNCCL.cpp:1515] [PG 0 (default_pg) "
     "Rank 6] Process group watchdog thread terminated with exception: [Rank 6] Watchdog caught "
     "collective operation timeout: WorkNCCL(SeqNum=2070, OpType=ALLREDUCE, NumelIn=1, "
     "NumelOut=1, Timeout(ms)=600000) ran for 600022 milliseconds before timing out.",
     "collective_timeout", None),
    ("ERROR", GLOO_TIMEOUT_60S, "collective_timeout", "RuntimeError"),
    # -- peer_lost -- RVC-Project/Retrieval-based-Voice-Conversion-WebUI issue #1882
    ("ERROR", "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
     "closed by peer [127.0.0.1]:10895", "peer_lost", "RuntimeError"),
    # the same thread, a later comment
    ("ERROR", "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:589] Read error "
     "[192.168.70.92]:25266: Connection reset by peer", "peer_lost", "RuntimeError"),
    ("ERROR", NCCL_REMOTE, "peer_lost", "torch.distributed.DistBackendError"),
    # tatsu-lab/stanford_alpaca issue #207
    ("ERROR", "terminate called after throwing an instance of 'std::runtime_error' what(): NCCL "
     "error: remote process exited or there was a network error, NCCL version 2.14.3 "
     "ncclRemoteError: A call failed possibly due to a network error or a remote process exiting "
     "prematurely.", "peer_lost", None),
    # -- shape_mismatch -- aimagelab/meshed-memory-transformer issue #58
    ("ERROR", "\tsize mismatch for pretrained.conv1.1.running_mean: copying a param with shape "
     "torch.Size([32]) from checkpoint, the shape in current model is torch.Size([64]).",
     "shape_mismatch", None),
    # -- disk_full -- babysor/MockingBird issue #774 (the exception line)
    ("ERROR", "OSError: [Errno 28] No space left on device", "disk_full", "OSError"),
    ("ERROR", ENOSPC_PREFIXED, "disk_full", "OSError"),
    # hiyouga/LlamaFactory issue #5155 (title)
    ("ERROR", 'safetensors_rust.SafetensorError: Error while serializing: IoError(Os { code: 28, '
     'kind: StorageFull, message: "No space left on device" })', "disk_full",
     "safetensors_rust.SafetensorError"),
    # -- data_error -- qibin0506/Cortex issue #13 (title)
    ("ERROR", "UnicodeDecodeError: 'utf-8' codec can't decode byte 0x80 in position 0: invalid "
     "start byte", "data_error", "UnicodeDecodeError"),
    # -- checkpoint_io
    ("ERROR", ZIP_ARCHIVE, "checkpoint_io", "RuntimeError"),
    ("ERROR", MISSING_KEYS, "checkpoint_io", "RuntimeError"),
    # -- cuda_assert -- NVIDIA/garak issue #199
    ("ERROR", "../aten/src/ATen/native/cuda/Indexing.cu:1236: indexSelectSmallIndex: block: "
     "[5,0,0], thread: [31,0,0] Assertion `srcIndex < srcSelectDimSize` failed.",
     "cuda_assert", None),
    # stanfordnlp/stanza issue #1158 (the same assertion at WARNING: unambiguous)
    ("WARNING", "../aten/src/ATen/native/cuda/Indexing.cu:1141: indexSelectLargeIndex: block: "
     "[58,0,0], thread: [7,0,0] Assertion `srcIndex < srcSelectDimSize` failed.",
     "cuda_assert", None),
    # -- hardware -- NVIDIA/NVSentinel issue #155 (the thread quotes both lines)
    ("INFO", NVRM_FALLEN, "hardware", None),
    ("INFO", "NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus", "hardware", None),
    # -- rendezvous -- hpcaitech/ColossalAI issue #2748 (logged at WARNING by the agent)
    ("WARNING", "WARNING:torch.distributed.elastic.rendezvous.dynamic_rendezvous:The node "
     "'xxxxxx' has failed to send a keep-alive heartbeat to the rendezvous "
     "'colossalai-default-job' due to an error of type RendezvousConnectionError.",
     "rendezvous", None),
    ("ERROR", RDZV_CLOSED, "rendezvous", "torch.distributed.elastic.rendezvous.api.RendezvousClosedError"),
    # wenet-e2e/wekws issue #172 (title)
    ("ERROR", "torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection "
     "to the C10d store has failed. See inner exception for details.", "rendezvous",
     "torch.distributed.elastic.rendezvous.api.RendezvousConnectionError"),
    # -- launcher_exit -- showlab/EgoVLP issue #21
    ("ERROR", "ERROR:torch.distributed.elastic.multiprocessing.api:failed (exitcode: -9) "
     "local_rank: 3 (pid: 407727) of binary: /fs/nexus-scratch/sanjoyc/anaconda/envs/egovlp/bin/"
     "python", "launcher_exit", None),
    # dhcode-cpp/X-R1 issue #23 (glog format of newer torch)
    ("ERROR", "E0217 16:43:29.165000 355419 torch/distributed/elastic/multiprocessing/api.py:869] "
     "failed (exitcode: 1) local_rank: 1 (pid: 355716) of binary: /usr/bin/python3.11",
     "launcher_exit", None),
    # -- terminated -- hiyouga/LlamaFactory issue #163
    ("WARNING", "stderr: WARNING:torch.distributed.elastic.multiprocessing.api:Sending process "
     "153929 closing signal SIGTERM", "terminated", None),
    # -- fatal_signal -- idiap/pkwrap issue #4 (bash's report of a crashed job, cut)
    ("ERROR", "bash: line 1: 80675 Segmentation fault      ( local/chain/tuning/model/1d.py "
     "--dir exp/chain/tdnn_sp --mode training --lr 0.002 --frame-shift 0 )",
     "fatal_signal", None),
    ("ERROR", FAULT_DUMP, "fatal_signal", None),
    # -- cuda_error -- evo-design/evo issue #136
    ("ERROR", "RuntimeError: CUDA error: an illegal memory access was encountered\nCUDA kernel "
     "errors might be asynchronously reported at some other API call, so the stacktrace below "
     "might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with "
     "`TORCH_USE_CUDA_DSA` to enable device-side assertions.", "cuda_error", "RuntimeError"),
    # -- hardware -- jade-hpc-gpu/jade-hpc-gpu.github.io issue #194 (ECC beats "CUDA error")
    ("ERROR", "RuntimeError: CUDA error: uncorrectable ECC error encountered\nCUDA kernel errors "
     "might be asynchronously reported at some other API call, so the stacktrace below might "
     "be incorrect.", "hardware", "RuntimeError"),
    # -- cuda_oom -- carolchenyx/MGFN. issue #35
    ("ERROR", "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.70 GiB. GPU 0 "
     "has a total capacty of 6.00 GiB of which 0 bytes is free. Of the allocated memory 2.93 GiB "
     "is allocated by PyTorch, and 2.30 GiB is reserved by PyTorch but unallocated.",
     "cuda_oom", "torch.cuda.OutOfMemoryError"),
]  # fmt: skip


@pytest.mark.parametrize(("level", "message", "cls", "exc_type"), SAMPLES)
def test_real_records_get_their_class(
    level: str, message: str, cls: str, exc_type: str | None
) -> None:
    f = classify_failure(message, level)
    assert f is not None, message
    assert f.failure_class.id == cls, (f, message)
    assert f.exception_type == exc_type
    assert f.line and "\n" not in f.line and "\n" not in f.error
    assert f.failure_class.remediation


@pytest.mark.parametrize(("level", "message"), BENIGN)
def test_benign_look_alikes_are_not_failures(level: str, message: str) -> None:
    assert classify_failure(message, level) is None


@pytest.mark.parametrize(
    ("level", "message"),
    [
        # NCCL INFO chatter, even when it mentions a closed connection (NVIDIA/nccl-tests #252)
        ("INFO", "kolyoz2:25146:25852 [0] NCCL INFO [Service thread] Connection closed by localRank 0"),
        ("INFO", "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0"),
        ("INFO", "step 1200 | loss: nan | grad_norm: nan | lr 1.5e-05"),
        ("WARNING", "loss: nan at step 1200, skipping"),
        # Python warnings about cuda/nccl are not crashes (Plachtaa/VITS-fast-fine-tuning #397)
        ("WARNING", "/root/miniconda3/envs/vits/lib/python3.8/site-packages/joblib/"
         "_multiprocessing_helpers.py:46: UserWarning: [Errno 28] No space left on device.  "
         "joblib will operate in serial mode"),
        ("WARNING", "UserWarning: CUDA initialization: Found no NVIDIA driver on your system."),
        # c10d retries a refused store connection and logs it at W (vllm-project/vllm #3771)
        ("WARNING", "[W socket.cpp:663] [c10d] The client socket has failed to connect to "
         "[::ffff:172.16.8.232]:39623 (errno: 110 - Connection timed out)"),
        # the agent's DEBUG keep-alive chatter (pytorch/pytorch #111646)
        ("DEBUG", "[2023-10-20 11:55:31,077] torch.distributed.elastic.rendezvous.dynamic_rendezvous:"
         " [DEBUG] The node 'georg-AERO-15-YC_945987_0' updated its keep-alive heartbeat time for "
         "the rendezvous 'none'. Pending sync."),
        # NCCL's last-error line alone, at WARNING (NVIDIA/nccl issue #2076)
        ("WARNING", "socketProgressOpt: Call to recv from 172....<33759> failed : Connection "
         "reset by peer"),
        # an exception line at INFO is a message about an error, not a crash
        ("INFO", "retrying download after ConnectionError: timed out"),
    ],
)  # fmt: skip
def test_more_benign_records(level: str, message: str) -> None:
    assert classify_failure(message, level) is None


# -- real tracebacks made here with torch ---------------------------------------------------


def _traceback_of(fn: Callable[[], object]) -> str:
    try:
        fn()
    except BaseException:
        return traceback.format_exc()
    raise AssertionError("did not raise")


def _matmul_mismatch() -> object:
    return torch.nn.Linear(16, 4)(torch.zeros(4, 8))


def _broadcast_mismatch() -> object:
    return torch.zeros(3) + torch.zeros(4)


def _state_dict_mismatch() -> object:
    return torch.nn.Linear(16, 4).load_state_dict(torch.nn.Linear(8, 4).state_dict())


def _index_error() -> object:
    return torch.zeros(8)[8]


def _host_oom() -> object:
    return bytearray(1 << 62)


def _missing_shard() -> object:
    return open("/nonexistent/rankwatch/shard-00042.jsonl")


def _corrupt_sample() -> object:
    import json

    return json.loads('{"input_ids": [1, 2, 3')


def _chained() -> None:
    try:
        {}["labels"]
    except KeyError as e:
        raise RuntimeError("batch has no labels") from e


def test_real_torch_shape_mismatch() -> None:
    f = classify_failure(_traceback_of(_matmul_mismatch), "ERROR")
    assert f is not None and f.failure_class.id == "shape_mismatch"
    assert f.error == "RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x8 and 16x4)"
    # torch's own frames (site-packages) are skipped: the user's frame is this module's.
    assert f.frame is not None and f.frame.startswith("test_failures.py:")
    assert f.frame.endswith("in _matmul_mismatch")


@pytest.mark.parametrize(
    ("fn", "cls", "exc_type", "starts"),
    [
        (_broadcast_mismatch, "shape_mismatch", "RuntimeError", "RuntimeError: The size of tensor a (3)"),
        (_state_dict_mismatch, "shape_mismatch", "RuntimeError",
         "RuntimeError: Error(s) in loading state_dict for Linear: size mismatch for weight"),
        (_index_error, "other", "IndexError", "IndexError: index 8 is out of bounds"),
        (_host_oom, "host_oom", "MemoryError", "MemoryError"),
        (_missing_shard, "data_error", "FileNotFoundError",
         "FileNotFoundError: [Errno 2] No such file or directory"),
        (_corrupt_sample, "data_error", "json.decoder.JSONDecodeError",
         "json.decoder.JSONDecodeError: Expecting ','"),
    ],
)  # fmt: skip
def test_real_torch_tracebacks(
    fn: Callable[[], object], cls: str, exc_type: str, starts: str
) -> None:
    f = classify_failure(_traceback_of(fn), "INFO")  # a traceback counts at any level
    assert f is not None and f.failure_class.id == cls
    assert f.exception_type == exc_type and f.error.startswith(starts)
    assert f.frame is not None and f.frame.endswith(f"in {fn.__name__}")


def test_chained_exception_reports_the_last_and_keeps_the_cause() -> None:
    text = _traceback_of(_chained)
    assert "direct cause" in text
    tb = parse_traceback(text)
    assert tb is not None
    assert (tb.exc_type, tb.cause_type) == ("RuntimeError", "KeyError")
    assert tb.error == "RuntimeError: batch has no labels"
    f = classify_failure(text, "ERROR")
    assert f is not None and f.failure_class.id == "other" and f.cause_type == "KeyError"


def _torch_save_to_full_disk() -> None:
    torch.save({"w": torch.zeros(1 << 16)}, "/dev/full")


def _write_to_full_disk() -> None:
    try:
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 100_000)
    except OSError as e:
        raise RuntimeError("checkpoint save failed") from e


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_for_real() -> None:
    # torch.save on a full device: torch never says ENOSPC, only that the write went wrong.
    text = _traceback_of(_torch_save_to_full_disk)
    assert "During handling of the above exception" in text
    f = classify_failure(text, "ERROR")
    assert f is not None and f.failure_class.id == "checkpoint_io", text
    assert f.exception_type == "RuntimeError" and f.cause_type == "RuntimeError"
    assert f.frame is not None and f.frame.endswith("in _torch_save_to_full_disk")
    # Python's own write says so, and the cause's class wins over the wrapper.
    text = _traceback_of(_write_to_full_disk)
    f = classify_failure(text, "ERROR")
    assert f is not None and f.failure_class.id == "disk_full", text
    assert (f.exception_type, f.cause_type) == ("RuntimeError", "OSError")
    assert f.error == "RuntimeError: checkpoint save failed"


def test_prefixes_are_stripped() -> None:
    tb = parse_traceback(ENOSPC_PREFIXED)
    assert tb is not None
    assert tb.error == "OSError: [Errno 28] No space left on device"
    assert tb.user_frame is None  # every frame is torch's
    assert len(tb.frames) == 2 and tb.frames[0].func == "save"
    tb = parse_traceback(ZIP_ARCHIVE)
    assert tb is not None and tb.user_frame == "scripts/txt2img.py:50 in load_model_from_config"
    tb = parse_traceback(DATALOADER_KILLED)
    assert tb is not None and tb.user_frame == "train.py:210 in <module>"


def test_a_prefix_whose_timestamp_ticks_is_stripped_too() -> None:
    # The shape of databrickslabs/dolly issue #139, with the milliseconds moving on.
    lines = ENOSPC_PREFIXED.split("\n")
    ticking = "\n".join(line.replace("06:01:12.977", f"06:01:12.{977 + i}") for i, line in
                        enumerate(lines))  # fmt: skip
    tb = parse_traceback(ticking)
    assert tb is not None and tb.error == "OSError: [Errno 28] No space left on device"
    assert [f.line for f in tb.frames] == [379, 604]


def test_a_logger_prefix_on_the_traceback_line_only() -> None:
    text = (
        "ERROR:root:Traceback (most recent call last):\n"
        + _traceback_of(_index_error).split("\n", 1)[1]
    )
    tb = parse_traceback(text)
    assert tb is not None and tb.exc_type == "IndexError"
    assert tb.user_frame is not None and tb.user_frame.endswith("in _index_error")


def test_user_paths() -> None:
    assert is_user_path("/job/models/llama.py")
    for path in (
        "/usr/lib/python3.10/threading.py",
        "/opt/conda/lib/python3.7/site-packages/torch/serialization.py",
        "/usr/local/lib/python3.6/dist-packages/torch/distributed/launch.py",
        "<frozen runpy>",
        "<string>",  # a dataclass's generated __init__ (huggingface/trl issue #4149)
        "/home/akemid/llama/venv/bin/torchrun",
        r"C:\Users\Simon\anaconda3\envs\ldm\lib\site-packages\torch\serialization.py",
    ):
        assert not is_user_path(path), path


def test_xid_figures() -> None:
    f = classify_failure("NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus", "INFO")
    assert f is not None and f.failure_class.id == "hardware"
    assert (f.figures["xid"], f.figures["pci"]) == (79, "0000:44:00")


def test_fault_dump_names_the_user_frame() -> None:
    f = classify_failure(FAULT_DUMP, "ERROR")
    assert f is not None and f.failure_class.id == "fatal_signal"
    # snn-main/snntorch is the user's own checkout (not site-packages): its frame counts.
    assert f.frame == "spikegen.py:362 in rate_conv"


def test_no_traceback_no_parse() -> None:
    assert parse_traceback("RuntimeError: CUDA error: unspecified launch failure") is None


def test_exception_line_at_error_is_other() -> None:
    f = classify_failure("ValueError: too many values to unpack (expected 2)", "ERROR")
    assert f is not None and f.failure_class.id == "other" and f.exception_type == "ValueError"
    assert classify_failure("ValueError: too many values to unpack (expected 2)", "WARNING") is None


def test_catalogue_is_complete_and_consistent() -> None:
    ids = [c.id for c in CATALOGUE]
    assert len(ids) == len(set(ids)) and set(ids) == set(CLASSES)
    for required in (
        "model_download", "cuda_oom", "host_oom", "oom_killer", "comm_error",
        "collective_timeout", "peer_lost", "shape_mismatch", "disk_full", "data_error",
        "checkpoint_io", "cuda_assert", "hardware", "fatal_signal", "rendezvous",
        "launcher_exit", "other",
    ):  # fmt: skip
        assert required in CLASSES
    consequences = {c.id for c in CATALOGUE if c.consequence}
    assert consequences == {"collective_timeout", "peer_lost", "terminated", "launcher_exit"}
    for c in CATALOGUE:
        assert c.remediation and "\n" not in c.remediation and len(c.remediation) < 200


# -- real distributed failures: gloo and torchrun --------------------------------------------

_GLOO = """
import datetime, os, sys, time, traceback
import torch, torch.distributed as dist
import torch.multiprocessing as mp

def run(rank, mode, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"; os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=2))
    if rank == 1:
        time.sleep(0.5 if mode == "closed" else 6); os._exit(1)
    try:
        dist.recv(torch.zeros(4), src=1)
    except Exception:
        sys.stderr.write(traceback.format_exc()); sys.stderr.flush()
    os._exit(0)

if __name__ == "__main__":
    ctx = mp.start_processes(run, args=(sys.argv[1], int(sys.argv[2])), nprocs=2,
                             start_method="spawn", join=False)
    for p in ctx.processes:
        p.join(30)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "cls", "wording"),
    [
        ("closed", "peer_lost", "Connection closed by peer"),
        ("timeout", "collective_timeout", "Timed out waiting 2000ms for recv operation"),
    ],
)
def test_real_gloo_failures(tmp_path: Path, mode: str, cls: str, wording: str) -> None:
    script = tmp_path / "gloo_fail.py"
    script.write_text(_GLOO)
    out = subprocess.run(
        [sys.executable, str(script), mode, str(_free_port())],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert wording in out.stderr, out.stderr[-2000:]
    start = out.stderr.index("Traceback (most recent call last):")
    f = classify_failure(out.stderr[start:], "ERROR")
    assert f is not None and f.failure_class.id == cls and f.consequence
    assert f.exception_type == "RuntimeError" and wording in f.error
    assert (
        f.frame is not None and f.frame.startswith("gloo_fail.py:") and f.frame.endswith(" in run")
    )


# The text of a real run (torchrun --nproc_per_node=4, local rank 3 raised IndexError, gloo),
# cut to the summary the agent prints.
SUMMARY = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
elastic_fail.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-07_00:53:04
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 478)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 478
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-07_00:53:04
  host      : localhost
  rank      : 3 (local_rank: 3)
  exitcode  : 1 (pid: 481) 
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================"""  # noqa: W291


def test_torchelastic_summary_names_the_root_cause_rank() -> None:
    f = classify_failure(SUMMARY, "ERROR")
    assert f is not None and f.failure_class.id == "launcher_exit" and f.consequence
    # The "Root Cause" entry, not the first of the "Failures" list (a SIGTERM'd peer).
    assert f.figures["root_cause_rank"] == 3 and f.figures["local_rank"] == 3
    assert f.figures["exitcode"] == 1 and "signal" not in f.figures
    assert f.error == "rank 3 (local_rank 3) exited with exitcode 1"
    assert launcher_figures("failed (exitcode: 1) local_rank: 3 (pid: 481) of binary: x") == {
        "exitcode": 1,
        "local_rank": 3,
        "pid": 481,
    }


def test_summary_with_a_signal_keeps_the_child_traceback_line() -> None:
    from test_log_patterns import CHILD_FAILED

    f = classify_failure(CHILD_FAILED, "ERROR")
    assert f is not None and f.failure_class.id == "launcher_exit"
    assert f.error == (
        "rank 27 (local_rank 3) exited with exitcode -11 (SIGSEGV): "
        "Signal 11 (SIGSEGV) received by PID 48213"
    )
    assert f.figures["host"] == "node3"


_ELASTIC = """
import time, torch, torch.distributed as dist
dist.init_process_group("gloo")
def step(batch):
    return batch[8]
if dist.get_rank() == 1:
    time.sleep(0.5)
    step(torch.zeros(8))
dist.barrier()
"""


@pytest.mark.slow
def test_real_torchrun_failure(tmp_path: Path) -> None:
    script = tmp_path / "elastic_fail.py"
    script.write_text(_ELASTIC)
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", f"--master_port={_free_port()}", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    lines = out.stderr.splitlines()
    # The crashed rank's own record: its [rank1]: lines.
    own = "\n".join(line for line in lines if line.startswith("[rank1]:"))
    f = classify_failure(own, "ERROR")
    assert f is not None and f.failure_class.id == "other" and not f.consequence
    assert f.exception_type == "IndexError"
    assert f.error.startswith("IndexError: index 8 is out of bounds for dimension 0 with size 8")
    assert (
        f.frame is not None
        and f.frame.startswith("elastic_fail.py:")
        and f.frame.endswith("in step")
    )
    # The peer's record: a consequence.
    peer = "\n".join(line for line in lines if line.startswith("[rank0]:"))
    p = classify_failure(peer, "ERROR")
    assert p is not None and p.consequence, peer
    # The agent's line and its summary: both blame local rank 1.
    agent = next(line for line in lines if "failed (exitcode:" in line)
    a = classify_failure(agent, "ERROR")
    assert a is not None and a.failure_class.id == "launcher_exit"
    assert a.figures["local_rank"] == 1 and a.figures["exitcode"] == 1
    # The agent's own record: everything after its "failed" line.
    summary = out.stderr[out.stderr.index(agent) + len(agent) :]
    s = classify_failure(summary, "ERROR")
    assert s is not None and s.failure_class.id == "launcher_exit"
    assert s.figures["root_cause_rank"] == 1 and s.frame is None


def test_failure_is_frozen() -> None:
    f = classify_failure("OSError: [Errno 28] No space left on device", "ERROR")
    assert isinstance(f, Failure)
    with pytest.raises(AttributeError):
        f.error = "x"  # type: ignore[misc]


def test_the_readme_lists_the_catalogue_as_it_is() -> None:
    """README's catalogue table is the catalogue: ids, titles and remediations, in order."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    start = readme.index("| class | what | consequence | remediation |")
    table = readme[start:].split("\n\n", 1)[0].splitlines()[2:]
    listed = [tuple(cell.strip() for cell in row.strip("|").split(" | ")) for row in table]
    assert listed == [
        (f"`{c.id}`", c.title, "yes" if c.consequence else "", c.remediation) for c in CATALOGUE
    ]
