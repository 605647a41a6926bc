"""The per-rank metric rules through the :class:`Engine`: incidents, aggregation, duplicates."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
import synth

from rankwatch.schemas import Alert, StepEvent
from rankwatch.streams import Engine
from rankwatch.streams.detectors import metrics
from rankwatch.streams.registry import builtin_detectors

NOISY = synth.RunShape(
    loss_noise=0.12,
    loss_spike_prob=0.02,
    grad_sigma=0.5,
    grad_spike_prob=0.02,
    overflow_every=97,
    throughput_noise=0.06,
    checkpoint_every=50,
    mem_noise_mb=60.0,
)


def _engine() -> Engine:
    return Engine(metrics.detectors())


def _firing(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.status == "firing"]


def test_detectors_are_the_four_rules_and_registered() -> None:
    names = [d.name for d in metrics.detectors()]
    assert names == ["loss_explosion", "gradient_explosion", "throughput_drop", "memory_growth"]
    assert set(names) <= {d.name for d in builtin_detectors()}


@pytest.mark.parametrize("seed", range(3))
def test_healthy_noisy_run_of_8_ranks_fires_nothing(seed: int) -> None:
    events = synth.healthy_run(ranks=8, steps=1500, seed=seed, shape=NOISY)
    assert synth.run_engine(_engine(), events) == []


def test_healthy_run_of_256_ranks_fires_nothing() -> None:
    events = synth.healthy_run(ranks=256, steps=160, seed=3, shape=NOISY)
    assert synth.run_engine(_engine(), events) == []


def test_nan_loss_on_all_256_ranks_is_one_job_alert() -> None:
    def nan_loss(rank: int, step: int, m: dict[str, Any]) -> None:
        if step >= 150:
            m["loss"] = math.nan

    alerts = synth.run_engine(_engine(), synth.healthy_run(ranks=256, steps=160, fault=nan_loss))
    [alert] = alerts
    assert (alert.rule, alert.scope, alert.status, alert.step) == (
        "loss_explosion",
        "job",
        "firing",
        150,
    )
    assert alert.ranks == list(range(256))
    assert alert.severity == "critical" and alert.action == "pause_job"
    assert alert.summary.startswith("256 of 256 ranks: rank 0: loss is nan at step 150")


def test_nan_loss_and_gradient_on_all_ranks_is_one_job_alert_per_rule() -> None:
    def nan_both(rank: int, step: int, m: dict[str, Any]) -> None:
        if step >= 150:
            m["loss"] = m["gradient_norm"] = math.nan

    alerts = synth.run_engine(_engine(), synth.healthy_run(ranks=256, steps=160, fault=nan_both))
    assert sorted((a.rule, a.scope, a.step, len(a.ranks)) for a in alerts) == [
        ("gradient_explosion", "job", 150, 256),
        ("loss_explosion", "job", 150, 256),
    ]


def _leak_on_rank_5(rank: int, step: int, m: dict[str, Any]) -> None:
    if rank == 5 and step >= 100:
        m["gpu_memory_allocated_mb"] += 50.0 * (step - 100)


def test_leak_on_one_rank_is_one_rank_alert() -> None:
    events = synth.healthy_run(ranks=8, steps=250, shape=NOISY, fault=_leak_on_rank_5)
    alerts = synth.run_engine(_engine(), events)
    [alert] = alerts
    assert (alert.rule, alert.scope, alert.ranks) == ("memory_growth", "rank", [5])
    assert alert.step is not None and 90 <= alert.step <= 110
    assert alert.first_seen.timestamp() - synth.T0 <= 170  # within 70 steps of its start


def test_throughput_drop_on_every_rank_is_one_job_alert_then_resolved() -> None:
    def slow_network(rank: int, step: int, m: dict[str, Any]) -> None:
        if 200 <= step < 220:
            m["throughput_tokens_per_sec"] *= 0.4

    events = synth.healthy_run(ranks=8, steps=260, fault=slow_network)
    alerts = synth.run_engine(_engine(), events)
    assert [(a.rule, a.scope, a.status, a.step) for a in alerts] == [
        # The recent level (~5 steps) is under 70% from step 203, for 6 steps (5 s) when it fires.
        ("throughput_drop", "job", "firing", 203),
        ("throughput_drop", "job", "resolved", 203),
    ]
    assert alerts[0].alert_id == alerts[1].alert_id
    assert alerts[0].evidence["consecutive_steps"] == 6


def _resent(events: list[StepEvent], seed: int) -> Iterator[StepEvent]:
    """At-least-once delivery: events re-sent (some twice) and neighbours swapped."""
    rng = random.Random(seed)
    out = list(events)
    for i in range(0, len(out) - 1):
        if rng.random() < 0.05:
            out[i], out[i + 1] = out[i + 1], out[i]
    for e in out:
        yield e
        if rng.random() < 0.2:
            yield e
            if rng.random() < 0.2:
                yield e


@pytest.mark.parametrize("seed", range(3))
def test_resent_and_reordered_healthy_events_fire_nothing(seed: int) -> None:
    events = list(synth.healthy_run(ranks=8, steps=600, seed=seed, shape=NOISY))
    assert synth.run_engine(_engine(), _resent(events, seed)) == []


def test_resent_events_of_a_fault_give_the_same_alerts() -> None:
    def faults(rank: int, step: int, m: dict[str, Any]) -> None:
        _leak_on_rank_5(rank, step, m)
        if step >= 200:
            m["loss"] = math.nan

    events = list(synth.healthy_run(ranks=8, steps=220, fault=faults))
    clean = synth.run_engine(_engine(), events)
    # Whole steps re-sent later (a producer retry after a broker hiccup) are no-ops.
    replayed = events[:800] + events[600:] + events[1200:1300]
    again = synth.run_engine(_engine(), replayed)
    assert [(a.alert_id, a.status) for a in again] == [(a.alert_id, a.status) for a in clean]
    assert sorted((a.rule, a.scope) for a in _firing(clean)) == [
        ("loss_explosion", "job"),
        ("memory_growth", "rank"),
    ]
