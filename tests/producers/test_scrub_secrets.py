"""Every kind of secret a trainer's log is known to leak is redacted; metric lines are left alone.

The tokens are real-looking (right prefixes, lengths and alphabets) but invented.
"""

from __future__ import annotations

import logging

import pytest

from rankwatch.producers import RankwatchLogHandler
from rankwatch.producers._scrub import REDACTED, scrub
from rankwatch.producers.testing import capture_events
from rankwatch.schemas import LogEvent

# (log line, the secret in it). Each secret must be gone from the scrubbed line.
LEAKS = [
    (
        "hub login hf_QwErTyUiOpAsDfGhJkLzXcVbNm1234567890",
        "hf_QwErTyUiOpAsDfGhJkLzXcVbNm1234567890",
    ),
    ("OPENAI_API_KEY sk-proj-Ab12Cd34Ef56Gh78Ij90KlMnOp", "sk-proj-Ab12Cd34Ef56Gh78Ij90KlMnOp"),
    (
        "client = Anthropic(sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv)",
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv",
    ),
    ("headers={'Authorization': 'Bearer ya29.A0ARrdaM-abcdefghijklmnop'}", "ya29.A0ARrdaM"),
    ("curl -H 'authorization: token ghp_1234567890abcdefghijABCDEFGHIJ123456'", "ghp_1234567890"),
    ("pushing with github_pat_11ABCDEFG0abcdefghijkl_MNOPQRSTUVWXYZ", "github_pat_11ABCDEFG0"),
    ("boto3 key AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("temporary ASIAY34FZKBOKMUTVV7A in use", "ASIAY34FZKBOKMUTVV7A"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
    ("dsn postgresql://trainer:S3cr3t!pw@db.internal:5432/runs", "S3cr3t!pw"),
    ("mirror https://bob:hunter2@pypi.internal/simple", "hunter2"),
    ("WANDB_API_KEY=0123456789abcdef0123456789abcdef01234567", "0123456789abcdef01234"),
    (
        'sasl.jaas.config=ScramLoginModule required username="u" password="Xy9-Secret";',
        "Xy9-Secret",
    ),
    ("slack bot xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "xoxb-1234567890"),
    (
        "webhook https://hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/abcdefABCDEF123456",
        "B0BBBBBBB",
    ),
    (
        "dingtalk https://oapi.dingtalk.com/robot/send?access_token=3a1f0c9e8d7b6a5f4e3d",
        "3a1f0c9e8d",
    ),
    ("gcs key AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "AIzaSyA1b2C3d4E5f6G7h8"),
    (
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0cmFpbmVyIn0.dGhlLXNpZ25hdHVyZQ",
        "eyJhbGciOiJIUzI1NiJ9",
    ),
    (
        "loaded key:\n-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0w\n"
        "-----END PRIVATE KEY-----\ndone",
        "MIGHAgEAMBMGByqGSM49",
    ),
]

HARMLESS = [
    "step=1200 loss=2.1503 lr=3.0e-04 grad_norm=0.42 throughput_tokens_per_sec=78400",
    "iteration 1200/50000 | consumed samples: 153600 | elapsed time per iteration (ms): 812.4",
    "NCCL INFO Channel 00/32 : 0[0] -> 1[1] via P2P/IPC/read",
    "saved checkpoint to s3://bucket/run-7/step_1200 (max_tokens: 4096, num_tokens=8192)",
]


@pytest.mark.parametrize(("line", "secret"), LEAKS, ids=[line.split()[0] for line, _ in LEAKS])
def test_each_kind_of_secret_is_redacted(line: str, secret: str) -> None:
    out = scrub(line)
    assert secret not in out
    assert REDACTED in out


@pytest.mark.parametrize("line", HARMLESS)
def test_ordinary_training_lines_are_untouched(line: str) -> None:
    assert scrub(line) == line


def test_redacted_in_the_event_that_leaves_the_process() -> None:
    """Through the log handler: the LogEvent handed to Kafka already has the secrets out."""
    log = logging.getLogger("test.scrub.leaving")
    log.setLevel(logging.INFO)
    handler = RankwatchLogHandler()
    log.addHandler(handler)
    try:
        with capture_events() as events:
            for line, _ in LEAKS:
                log.error(line)
            try:
                raise ConnectionError("login failed for https://svc:pa55w0rd-xyz@hub.internal/")
            except ConnectionError:
                log.exception("download failed")
    finally:
        log.removeHandler(handler)
    messages = [e.message for e in events if isinstance(e, LogEvent)]
    assert len(messages) == len(LEAKS) + 1
    sent = "\n".join(messages)
    for _, secret in LEAKS:
        assert secret not in sent, secret
    assert "pa55w0rd-xyz" not in sent and "Traceback" in messages[-1]
