"""The per-rank metric rules' base class: config plumbing, the incident's life, the records."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import synth

from rankwatch.streams import Finding, Resolution
from rankwatch.streams.detectors._per_rank import PerRankRule, settled
from rankwatch.streams.detectors.base import JobDetector, RankState, StepDetector
from rankwatch.streams.detectors.gradient import GradientExplosion, GradientState
from rankwatch.streams.detectors.gradient_vanishing import GradientVanishing, VanishingState
from rankwatch.streams.detectors.loss import LossExplosion, LossState
from rankwatch.streams.detectors.memory import MemoryGrowth, MemoryState
from rankwatch.streams.detectors.throughput import (
    ThroughputDrop,
    ThroughputDropConfig,
    ThroughputState,
)

RULES: list[type[PerRankRule[Any, Any]]] = [
    LossExplosion,
    GradientExplosion,
    ThroughputDrop,
    MemoryGrowth,
    GradientVanishing,
]

# Stored state is rebuilt by field name: a field renamed is a field lost on restart. These are
# the fields as they were stored before the base class; new ones may be added, none renamed.
STORED_FIELDS: dict[type, tuple[str, ...]] = {
    LossState: (
        "level", "n", "last_ok", "bad", "nonfinite", "start_step", "active", "calm",
        "reported_at",
    ),
    GradientState: (
        "level", "n", "last_ok", "calibrated", "nonfinite", "nonfinite_start", "spikes",
        "spike_start", "active", "calm", "reported_at",
    ),
    ThroughputState: (
        "seen", "mean", "ready", "seed", "low", "low_start", "recent_low", "active", "calm",
        "reported_at", "recent", "low_since",
    ),
    MemoryState: (
        "series", "seen", "win_min", "win_min_step", "win_n", "minima", "trend_from",
        "trend_step", "trend_fits", "steady_fits", "noise", "prev_delta", "d2_mean", "d2_n",
        "active", "calm", "reported_at",
    ),
    VanishingState: (
        "seen", "seed", "ready", "level", "loss_last", "loss_step_dev", "low", "low_start",
        "block_ref", "block_sum", "block_n", "last_block", "active", "calm", "reported_at",
    ),
}  # fmt: skip


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.name)
def test_each_rule_is_a_per_rank_step_detector_with_its_defaults(
    cls: type[PerRankRule[Any, Any]],
) -> None:
    rule = cls()
    # What the engine classifies by: a per-rank rule, not a job-level one.
    assert isinstance(rule, StepDetector) and not isinstance(rule, JobDetector)
    assert rule.config == cls.config_type()
    first, second = rule.new_rank_state(), rule.new_rank_state()
    assert type(first) is cls.state_type and first is not second
    assert first == cls.state_type() and not first.active


@pytest.mark.parametrize("state_type", list(STORED_FIELDS), ids=lambda t: t.__name__)
def test_state_keeps_the_stored_field_names(state_type: type) -> None:
    names = [f.name for f in dataclasses.fields(state_type)]
    missing = [n for n in STORED_FIELDS[state_type] if n not in names]
    assert missing == [], f"{state_type.__name__} lost stored fields {missing}"


def test_a_config_given_is_the_one_used() -> None:
    config = ThroughputDropConfig(drop_ratio=0.5)
    assert ThroughputDrop(config).config is config


def test_due_opens_the_incident_then_re_reports_only_every_refresh_s() -> None:
    rule = ThroughputDrop(ThroughputDropConfig(refresh_s=60.0))
    s = rule.new_rank_state()
    assert rule._due(s, 100.0)
    assert (s.active, s.calm, s.reported_at) == (True, 0, 100.0)
    assert not rule._due(s, 159.5)
    assert s.reported_at == 100.0
    assert rule._due(s, 160.0)
    assert s.reported_at == 160.0


def test_settled_closes_after_the_calm_steps_then_due_opens_afresh() -> None:
    rule = LossExplosion()
    s = rule.new_rank_state()
    rule._due(s, 10.0)
    assert [settled(s, 3) for _ in range(3)] == [False, False, True]
    assert (s.active, s.calm, s.reported_at) == (False, 0, -math.inf)
    assert rule._due(s, 11.0) and s.active and s.reported_at == 11.0


def test_report_carries_the_rules_name_severity_action_and_names_the_rank() -> None:
    rank = RankState(5, host="gpu-node-007")
    loss = LossExplosion()._report(rank, 12.5, 40, "loss is nan", {"loss": math.nan})
    assert loss == Finding(
        rule="loss_explosion",
        rank=5,
        severity="critical",
        event_time=12.5,
        summary="rank 5: loss is nan",
        step=40,
        evidence=loss.evidence,
        action="pause_job",
    )
    # gradient_vanishing names the host in its findings (not in its resolutions).
    vanishing = GradientVanishing()._report(rank, 12.5, 40, "stalled", {})
    assert vanishing.summary == "rank 5 (gpu-node-007): stalled"
    assert (vanishing.severity, vanishing.action) == ("warning", "notify")


def test_resolution_names_the_rank_and_the_steps_time() -> None:
    [event] = synth.steps_of([{"loss": 2.0}], rank=5, start_step=7)
    [r] = GradientVanishing()._resolution(RankState(5, host="h"), event, "back")
    assert r == Resolution(
        rule="gradient_vanishing", rank=5, event_time=event.epoch, summary=("rank 5: back")
    )


def test_a_rule_through_its_whole_incident_life() -> None:
    """Warm-up, a drop that opens one incident, a refresh while it lasts, then its end."""
    config = ThroughputDropConfig(warmup_steps=2, seed_steps=3, refresh_s=20.0)
    values = [{"throughput_tokens_per_sec": x} for x in [1.0, 1.0, 100.0, 90.0, 110.0]]
    values += [{"throughput_tokens_per_sec": 100.0}] * 20
    values += [{"throughput_tokens_per_sec": 10.0}] * 40
    values += [{"throughput_tokens_per_sec": 100.0}] * 30
    out = synth.drive(ThroughputDrop(config), synth.steps_of(values, rank=2))
    kinds = [(step, type(o).__name__) for step, o in out]
    # Low from step 25: the recent level is under 70% of the mean from step 27, a streak of
    # drop_s (5 s) fires at 32, re-reported 20 s later; back up from step 65, the recent level
    # recovers and three steps above the bar resolve it.
    assert kinds == [(32, "Finding"), (52, "Finding"), (70, "Resolution")]
    first = out[0][1]
    assert isinstance(first, Finding) and first.summary.startswith("rank 2: throughput")
    # Seeded with the median (100) of the reports after the warm-up (the 1.0s are ignored),
    # then the first low steps, before the recent level fell, folded in at alpha 0.02.
    assert 95 < first.evidence["recent_mean"] < 100
