"""Identity, scrubbing, the log handler and the capture helper: no broker needed."""

from __future__ import annotations

import logging
import math

import pytest

import rankwatch.producers as rw
from rankwatch.producers import (
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
