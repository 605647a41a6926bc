"""``rankwatch alerts --follow``, the console sink, against the real broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from rankwatch.schemas import Alert, encode

pytestmark = pytest.mark.broker


def test_follow_prints_each_new_alert_of_the_job_on_one_line(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(1)
    config = tmp_path / "rankwatch.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_bootstrap}"\n[topics.alerts]\nname = "{topic}"\n'
    )
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rankwatch.cli",
            "alerts",
            "--follow",
            "--job",
            "llm-a",
            "--exit-after",
            "2",
            "--config",
            str(config),
            "--db",
            f"sqlite:///{tmp_path / 'x.db'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stderr is not None
        assert "following" in follower.stderr.readline()  # subscribed: from now on
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for job, rule, severity in (
            ("llm-a", "cuda_oom", "critical"),
            ("other", "hang", "critical"),
            ("llm-a", "straggler", "warning"),
        ):
            producer.produce(
                topic,
                encode(
                    Alert(
                        alert_id=f"{job}-{rule}",
                        job_id=job,
                        rule=rule,
                        severity=severity,
                        scope="rank",
                        ranks=[3],
                        step=10,
                        first_seen=0,
                        last_seen=60,
                        summary=f"{rule} on rank 3\nsecond line",
                    )
                ),
            )
        assert producer.flush(30) == 0
        out, _ = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert out.splitlines() == [
        "1970-01-01 00:01:00 CRITICAL firing   llm-a cuda_oom ranks=3 step=10: "
        "cuda_oom on rank 3 second line",
        "1970-01-01 00:01:00 WARNING  firing   llm-a straggler ranks=3 step=10: "
        "straggler on rank 3 second line",
    ]
