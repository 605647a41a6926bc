"""A real training run: two torch processes under torchrun (gloo) stream into a real broker,
which is killed mid-run and comes back; the test reads every step and log back from the topics.

The trainer is ``examples/torchrun_ddp.py``, unchanged: what a user would run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rankwatch.infra.admin import create_topics
from rankwatch.infra.cluster import LocalCluster
from rankwatch.schemas import LogEvent, StepEvent, decode

pytest.importorskip("torch", reason="torch is a test extra (rankwatch[train])")

TRAINER = Path(__file__).resolve().parents[2] / "examples" / "torchrun_ddp.py"
RANKS, STEPS = 2, 60


def _count(bootstrap: str, topic: str, at_least: int, timeout_s: float) -> int:
    """Messages on ``topic`` (all partitions), polled until ``at_least`` or the timeout."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    deadline = time.monotonic() + timeout_s
    total = 0
    try:
        while time.monotonic() < deadline:
            total = 0
            try:
                meta = consumer.list_topics(topic, timeout=5).topics[topic]
                for p in meta.partitions:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                    total += high - low
            except KafkaException:  # a fresh topic's leader may not be known yet
                total = 0
            if total >= at_least:
                break
            time.sleep(0.2)
    finally:
        consumer.close()
    return total


def _read_all(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list[bytes]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value())
        # Anything beyond the expected count would be a duplicate: give it a moment to show.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                values.append(message.value())
    finally:
        consumer.close()
    return values


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_torchrun_job_streams_through_a_broker_restart(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path / "kafka", nodes_count=1, port=0)
    trainer = None
    try:
        cluster.start(timeout_s=90)
        config = tmp_path / "rankwatch.toml"
        config.write_text(
            f'[kafka]\nbootstrap = "{cluster.bootstrap}"\n'
            '[topics.steps]\nname = "ddp.steps"\npartitions = 2\n'
            '[topics.logs]\nname = "ddp.logs"\npartitions = 2\n'
        )
        from rankwatch.config import load_settings

        create_topics(load_settings(str(config)))
        env = {
            **os.environ,
            "RANKWATCH_JOB_ID": "ddp-gloo",
            "RANKWATCH_CONFIG": str(config),
            "OMP_NUM_THREADS": "1",  # two ranks on a two-core machine
        }
        report = tmp_path / "report"
        trainer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={RANKS}",
                str(TRAINER),
                f"--steps={STEPS}",
                "--step-sleep=0.1",
                f"--report={report}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Training is under way and streaming: now kill the broker under it.
        assert _count(cluster.bootstrap, "ddp.steps", 20, timeout_s=120) >= 20
        (node,) = [s.node_id for s in cluster.specs]
        cluster.kill_node(node)
        time.sleep(2.0)
        assert trainer.poll() is None, "training must go on while the broker is away"
        cluster.restart_node(node)
        output, _ = trainer.communicate(timeout=150)
        assert trainer.returncode == 0, output

        steps = [decode(v) for v in _read_all(cluster.bootstrap, "ddp.steps", RANKS * STEPS)]
        assert all(isinstance(e, StepEvent) for e in steps)
        seen = sorted((e.rank, e.step) for e in steps if isinstance(e, StepEvent))
        assert seen == [(r, s) for r in range(RANKS) for s in range(STEPS)]  # each exactly once

        for rank in range(RANKS):
            summary = json.loads(Path(f"{report}.{rank}").read_text())
            assert summary["stats"]["dropped"] == 0 and summary["stats"]["errors"] == 0
            mine = sorted(
                (e for e in steps if isinstance(e, StepEvent) and e.rank == rank),
                key=lambda e: e.step,
            )
            # The losses on the topic are the ones the trainer computed, and it learned.
            assert [e.loss for e in mine] == summary["losses"]
            assert summary["losses"][-1] < summary["losses"][0] / 2
            assert all(e.job_id == "ddp-gloo" and e.world_size == RANKS for e in mine)
            assert all(e.gradient_norm is not None and e.step_time_s for e in mine)

        logs = [decode(v) for v in _read_all(cluster.bootstrap, "ddp.logs", 2 * RANKS)]
        finished = [e for e in logs if isinstance(e, LogEvent) and "training finished" in e.message]
        assert sorted(e.rank for e in finished) == list(range(RANKS))
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
        cluster.stop(grace_s=10, purge=True)
