"""Identity, scrubbing, the log handler and the capture helper: no broker needed."""

from __future__ import annotations

import logging
import math
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest

import rankwatch.producers as rw
from rankwatch.infra.cluster import free_ports
from rankwatch.producers import (
    GpuUtilization,
    Identity,
    IdentityError,
    RankwatchLogHandler,
    RankwatchProducer,
    Scrubber,
    log_step,
    resolve_identity,
    static_fields,
)
from rankwatch.producers.testing import capture_events
from rankwatch.schemas import LogEvent, StepEvent


def test_identity_from_torchrun_slurm_and_arguments() -> None:
    torchrun = {"RANKWATCH_JOB_ID": "run-3", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    ident = resolve_identity(env=torchrun, host="n1")
    assert (ident.job_id, ident.rank, ident.world_size, ident.local_rank) == ("run-3", 5, 8, 1)
    slurm = {"SLURM_JOB_ID": "991", "SLURM_PROCID": "12", "SLURM_NTASKS": "16"}
    assert resolve_identity(env=slurm).rank == 12
    assert resolve_identity("explicit", 2, 4, env=torchrun).job_id == "explicit"
    assert resolve_identity(env={"TORCHELASTIC_RUN_ID": "abc"}).job_id == "abc"
    with pytest.raises(IdentityError, match="RANKWATCH_JOB_ID"):
        resolve_identity(env={"TORCHELASTIC_RUN_ID": "none", "RANK": "1"})
    with pytest.raises(IdentityError, match="RANK"):
        resolve_identity(env={"RANKWATCH_JOB_ID": "j", "RANK": "x"})
    with pytest.raises(IdentityError, match="not below"):
        resolve_identity(env={"RANKWATCH_JOB_ID": "j", "RANK": "8", "WORLD_SIZE": "8"})
    with pytest.raises(IdentityError, match="characters"):
        resolve_identity("bad job id")


def test_real_looking_secrets_are_scrubbed() -> None:
    scrub = Scrubber(extra_patterns=[r"corp-[0-9a-f]{16}"])
    text = (
        "hf token hf_QwErTyUiOpAsDfGhJkLzXcVbNm1234567890 | openai sk-proj-Ab12Cd34Ef56Gh78Ij90Kl"
        " | Authorization: Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2lnbg"
        " | AKIAIOSFODNN7EXAMPLE aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        " | postgresql://trainer:S3cr3t!pw@db.internal:5432/runs | password=hunter2 token: abc123"
        " | corp-0123456789abcdef | loss=2.5 step=10"
    )
    out = scrub(text)
    for secret in (
        "hf_QwEr",
        "sk-proj",
        "eyJhbGci",
        "AKIAIOSFODNN7",
        "wJalrXUtn",
        "S3cr3t",
        "hunter2",
        "abc123",
        "corp-0123",
    ):
        assert secret not in out, secret
    assert "postgresql://trainer:[REDACTED]@db.internal:5432/runs" in out
    assert "loss=2.5 step=10" in out


def test_capture_events_sees_what_kafka_would_get() -> None:
    with capture_events(
        job_id="cap", rank=3, world_size=4, enrichers=[static_fields(cluster="eu")]
    ) as events:
        log_step(1, loss=float("nan"), gradient_norm=2.0, step_time_s=0.5)
        log_step(2, loss=1.0, learning_rate=-1.0)  # fine: only finite is required
        log_step(3, step_time_s=-1.0)  # invalid: counted, not raised
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1, 2]
    first = events[0]
    assert isinstance(first, StepEvent) and math.isnan(first.loss or 0)
    assert first.world_size == 4 and first.extra == {"cluster": "eu"}


def test_handler_one_event_per_record_traceback_included_and_scrubbed() -> None:
    log = logging.getLogger("test.handler")
    log.setLevel(logging.DEBUG)
    handler = RankwatchLogHandler()
    log.addHandler(handler)
    try:
        with capture_events() as events:
            log_step(7, loss=1.0)
            log.warning("token=%s", "hf_abcdefghijklmnopqrstuvwxyz0123456789")
            try:
                raise KeyError("missing")
            except KeyError:
                log.exception("batch failed", extra={"step": 9})
            logging.getLogger("rankwatch.producers").warning("own warnings are not sent")
    finally:
        log.removeHandler(handler)
    logs = [e for e in events if isinstance(e, LogEvent)]
    assert len(logs) == 2
    assert logs[0].message == "token=[REDACTED]" and logs[0].step == 7
    assert logs[0].level == "WARNING" and logs[0].logger == "test.handler"
    assert logs[1].step == 9 and logs[1].message.startswith("batch failed\nTraceback")
    assert logs[1].message.endswith("KeyError: 'missing'")


def test_hot_path_never_raises_and_counts() -> None:
    from rankwatch.config import Settings

    def broken(event: dict[str, object]) -> dict[str, object]:
        raise RuntimeError("enricher bug")

    producer = RankwatchProducer(
        Identity("j"), settings=Settings(), max_buffered=100, enrichers=[broken], start=False
    )
    for step in range(1000):
        producer.log_step(step, loss=1.0)
    producer.log_step("not a step", loss=object())  # type: ignore[arg-type]
    stats = producer.stats()
    assert stats.buffered == 100 - 10 and stats.dropped == 1001 - 90
    assert stats.errors == 1001  # the enricher failed each time, logged once


def test_the_attempt_comes_from_torchruns_restart_count() -> None:
    env = {"RANKWATCH_JOB_ID": "j", "RANK": "1", "WORLD_SIZE": "2"}
    assert resolve_identity(env=env).attempt is None
    restarted = resolve_identity(env={**env, "TORCHELASTIC_RESTART_COUNT": "2"})
    assert restarted.attempt == 2
    assert restarted.as_fields()["attempt"] == 2
    with pytest.raises(IdentityError, match=r"\$TORCHELASTIC_RESTART_COUNT='x' is not an integer"):
        resolve_identity(env={**env, "TORCHELASTIC_RESTART_COUNT": "x"})


def test_a_phase_marks_its_records_and_steps_and_ends() -> None:
    with capture_events(job_id="j1", rank=0) as events:
        rw.log_step(10, loss=2.0)
        with rw.phase("eval"):
            rw.log_step(10, loss=1.9)
        rw.log_step(11, loss=2.0)
    seen = [(e.kind, e.phase, getattr(e, "message", None)) for e in events]
    assert seen == [
        ("step", None, None),
        ("log", "eval", "rankwatch: phase eval begins"),
        ("step", "eval", None),
        ("log", "train", "rankwatch: phase eval ends"),
        ("step", None, None),
    ]
    bad = "phase must be one of train, eval, checkpoint, got 'evaluate'"
    with pytest.raises(ValueError, match=bad), rw.phase("evaluate"):
        pass


# ----- gpu_utilization (NVML) ---------------------------------------------------------------


class FakeNvml:
    """A stand-in for the ``pynvml`` module (nvidia-ml-py): this machine has no NVIDIA GPU nor
    driver, so the calls the enricher makes are answered here, with what NVML returns."""

    def __init__(self, uuids: tuple[str, ...] = ("GPU-aaa1", "GPU-bbb2", "GPU-ccc3", "GPU-ddd4")):
        self.uuids = uuids
        self.busy = {index: 10.0 * (index + 1) for index in range(len(uuids))}
        self.init_error: Exception | None = None
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlDeviceGetCount(self) -> int:
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.uuids):
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.uuids[handle]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=int(self.busy[handle]), memory=5)


def _first_read(enricher: GpuUtilization) -> None:
    # The reader thread starts at the first step event; wait for its first value (or its end).
    deadline = time.monotonic() + 30
    while (
        enricher._reader is not None
        and enricher.latest is None
        and not enricher.off
        and time.monotonic() < deadline
    ):
        time.sleep(0.005)


def _utilization(enricher: GpuUtilization, steps: int = 2) -> list[float | None]:
    with capture_events(enrichers=[enricher]) as events:
        log_step(0)
        _first_read(enricher)
        for step in range(1, steps + 1):
            log_step(step)
    enricher.close()
    return [e.gpu_utilization for e in events if isinstance(e, StepEvent)]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LOCAL_RANK": "1"}, 20.0),  # NVML index = local rank
        ({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "3,2"}, 30.0),  # NVML ignores the mask
        ({"LOCAL_RANK": "5", "CUDA_VISIBLE_DEVICES": "GPU-ddd"}, 40.0),  # one GPU, UUID prefix
    ],
)
def test_gpu_utilization_is_read_from_nvml_for_the_ranks_device(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: float
) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    enricher = GpuUtilization(interval_s=0.01, env=env)
    # The first step only starts the reader: the training thread never waits for NVML.
    assert _utilization(enricher) == [None, expected, expected]
    assert fake.inits == 1


def test_gpu_utilization_failures_turn_it_off_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeNvml()
    fake.init_error = RuntimeError("NVML_ERROR_DRIVER_NOT_LOADED")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    enricher = GpuUtilization(interval_s=0.01, env={"LOCAL_RANK": "0"})
    with caplog.at_level(logging.WARNING, "rankwatch.producers"):
        assert _utilization(enricher, steps=3) == [None] * 4
    assert enricher.off and fake.inits == 1
    assert [r.getMessage() for r in caplog.records if "gpu_utilization" in r.getMessage()] == [
        "rankwatch: NVML could not open GPU 0 (RuntimeError('NVML_ERROR_DRIVER_NOT_LOADED')):"
        " gpu_utilization is off"
    ]
    # An ambiguous UUID prefix is a failure too, not a guess.
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(uuids=("GPU-ab1", "GPU-ab2")))
    ambiguous = GpuUtilization(
        interval_s=0.01, env={"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "GPU-ab"}
    )
    assert _utilization(ambiguous) == [None, None, None] and ambiguous.off


def test_gpu_utilization_absent_without_nvml_or_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # None in sys.modules: import fails
    no_module = GpuUtilization(interval_s=0.01, env={"LOCAL_RANK": "0"})
    assert _utilization(no_module) == [None, None, None] and no_module.off
    # No CUDA in torch here and no LOCAL_RANK: no device to ask about, no reader started.
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    no_device = GpuUtilization(interval_s=0.01, env={})
    assert _utilization(no_device) == [None, None, None] and no_device.device is None
    assert rw.default_enrichers()[-1].__class__ is GpuUtilization


def test_gpu_utilization_stale_values_are_dropped_and_close_stops_the_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    enricher = GpuUtilization(interval_s=0.01, max_age_s=60, env={"LOCAL_RANK": "2"})
    producer = RankwatchProducer(Identity("j", 0), enrichers=[enricher], start=False)
    producer.log_step(0)
    _first_read(enricher)
    producer.log_step(1)
    assert producer._buffer[-1]["gpu_utilization"] == 30.0
    enricher.latest = (30.0, time.monotonic() - 61)  # the reader stuck for a minute
    enricher._stop.set()
    producer.log_step(2)
    assert "gpu_utilization" not in producer._buffer[-1]
    producer.close(0)
    assert enricher.off and enricher.latest is None


def test_log_step_takes_gpu_utilization_like_the_other_metrics() -> None:
    with capture_events() as events:
        log_step(1, gpu_utilization=87.5)
        log_step(2, gpu_utilization=130.0)  # not a percent: refused, counted
        log_step(3, gpu_utilization=44.0)
    assert [(e.step, e.gpu_utilization) for e in events if isinstance(e, StepEvent)] == [
        (1, 87.5),
        (3, 44.0),
    ]


# ----- the declared LR schedule -------------------------------------------------------------


def test_a_declared_lr_schedule_is_on_every_later_step() -> None:
    with capture_events() as events:
        log_step(1, learning_rate=0.0)
        rw.declare_lr_schedule("cosine", warmup_steps=100, total_steps=10_000)
        log_step(2, learning_rate=1e-5)
        rw.declare_lr_schedule("constant")  # declaring again replaces it
        log_step(3, learning_rate=1e-4)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [(e.lr_schedule, e.lr_warmup_steps, e.lr_total_steps) for e in steps] == [
        (None, None, None),
        ("cosine", 100, 10_000),
        ("constant", None, None),
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("cosine_annealing", None, None), "name must be one of constant, "),
        (("cosine", -1, 100), "warmup_steps must be >= 0, got -1"),
        (("cosine", 10, 0), "total_steps must be >= 1, got 0"),
        (("cosine", 10, 1000.0), "total_steps must be an integer, got 1000.0"),
        (("cosine", True, 1000), "warmup_steps must be an integer, got True"),
        (("linear", 200, 100), r"warmup_steps \(200\) must not exceed total_steps \(100\)"),
    ],
)
def test_a_bad_lr_schedule_is_refused_naming_the_argument(
    arguments: tuple[Any, Any, Any], message: str
) -> None:
    producer = RankwatchProducer(Identity("j", 0), enrichers=[], start=False)
    with pytest.raises(ValueError, match=message):
        producer.declare_lr_schedule(*arguments)
    assert producer.lr_schedule is None
    with pytest.raises(ValueError, match=message):
        rw.declare_lr_schedule(*arguments)  # checked even before configure


def test_configure_declares_the_schedule() -> None:
    (port,) = free_ports(1)  # nothing listens: the events stay buffered
    with pytest.raises(ValueError, match="lr_total_steps must be >= 1"):
        rw.configure("j", 0, lr_schedule="cosine", lr_total_steps=0)
    with pytest.raises(ValueError, match="need lr_schedule"):
        rw.configure("j", 0, lr_warmup_steps=10)
    producer = rw.configure(
        "j",
        0,
        bootstrap=f"127.0.0.1:{port}",
        install_hooks=False,
        enrichers=[],
        lr_schedule="linear",
        lr_warmup_steps=50,
        lr_total_steps=5000,
    )
    try:
        rw.log_step(1, learning_rate=1e-5)
        assert producer._buffer[-1]["lr_schedule"] == "linear"
        assert (producer._buffer[-1]["lr_warmup_steps"], producer.lr_schedule) == (
            50,
            {"lr_schedule": "linear", "lr_warmup_steps": 50, "lr_total_steps": 5000},
        )
    finally:
        rw.shutdown(0.1)
