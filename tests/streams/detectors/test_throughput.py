"""throughput_drop: < 70% of the recent mean for 3+ steps fires; warm-up and checkpoints don't."""

from __future__ import annotations

import math
import pickle

import pytest
import synth

from rankwatch.streams import DetectorConfigError, Finding
from rankwatch.streams.detectors.throughput import (
    ThroughputDrop,
    ThroughputDropConfig,
    ThroughputState,
)


def _tput(values: list[float]) -> list[dict[str, float]]:
    return [{"throughput_tokens_per_sec": v} for v in values]


def _normal(n: int, level: float = 80_000.0) -> list[float]:
    return [level * (1 + 0.03 * math.sin(i * 1.7)) for i in range(n)]


def test_three_slow_steps_fire_with_the_numbers() -> None:
    values = [*_normal(60), 30000.0, 31000.0, 29000.0, 30000.0]
    out = synth.drive(ThroughputDrop(), synth.steps_of(_tput(values), rank=4))
    [(step, f)] = out
    assert isinstance(f, Finding)
    assert (step, f.step, f.rank) == (62, 60, 4)
    ev = f.evidence
    assert ev["recent_mean"] == pytest.approx(80_000, rel=0.05)
    assert ev["recent_values"] == [30_000.0, 31_000.0, 29_000.0]
    assert ev["consecutive_steps"] == 3
    assert "36% of its recent mean" in f.summary and "since step 60" in f.summary


def test_two_slow_steps_are_not_a_drop() -> None:
    values = [*_normal(60), 30000.0, 30000.0, *_normal(60)]
    assert synth.drive(ThroughputDrop(), synth.steps_of(_tput(values))) == []


def test_warm_up_and_compile_steps_are_ignored() -> None:
    values = [2000.0, 5000.0, 9000.0, 20000.0, 40000.0, 60000.0, *_normal(100)]
    assert synth.drive(ThroughputDrop(), synth.steps_of(_tput(values))) == []


def test_a_slow_step_while_the_mean_is_seeded_does_not_skew_it() -> None:
    values = [*_normal(12), 10000.0, *_normal(100)]
    state = ThroughputState()
    assert synth.drive(ThroughputDrop(), synth.steps_of(_tput(values)), state) == []
    assert state.mean == pytest.approx(80_000, rel=0.05)


def test_checkpoint_saves_neither_fire_nor_poison_the_mean() -> None:
    values = _normal(500)
    for i in range(100, 500, 100):
        values[i] = 15_000.0  # one step of every rank slows while the checkpoint is written
    state = ThroughputState()
    assert synth.drive(ThroughputDrop(), synth.steps_of(_tput(values[:101])), state) == []
    mean_before = state.mean
    assert synth.drive(ThroughputDrop(), synth.steps_of(_tput(values[101:])), state) == []
    assert mean_before == pytest.approx(80_000, rel=0.05)
    assert state.mean == pytest.approx(80_000, rel=0.05)


def test_a_drop_right_after_a_checkpoint_is_still_caught() -> None:
    values = [*_normal(100), 15_000.0, 78_000.0, *([40_000.0] * 3)]
    [(step, _)] = synth.drive(ThroughputDrop(), synth.steps_of(_tput(values)))
    assert step == 104


@pytest.mark.parametrize("seed", range(6))
def test_noisy_healthy_run_with_checkpoints(seed: int) -> None:
    shape = synth.RunShape(throughput_noise=0.08, checkpoint_every=25)
    events = synth.healthy_run(ranks=1, steps=2000, seed=seed, shape=shape)
    assert synth.drive(ThroughputDrop(), events) == []


def test_resolves_when_back_above_the_threshold() -> None:
    values = _normal(60) + [30_000.0] * 5 + _normal(5)
    out = synth.drive(ThroughputDrop(), synth.steps_of(_tput(values)))
    assert [(s, type(o).__name__) for s, o in out] == [(62, "Finding"), (67, "Resolution")]


def test_a_long_drop_is_refreshed_not_repeated() -> None:
    values = _normal(60) + [30_000.0] * 150
    out = synth.drive(ThroughputDrop(), synth.steps_of(_tput(values)))
    assert [s for s, _ in out] == [62, 122, 182]
    assert {o.step for _, o in out if isinstance(o, Finding)} == {60}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"drop_ratio": 1.0}, "drop_ratio"),
        ({"drop_steps": 0}, "drop_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"clip": 1.0}, "clip"),
        ({"action": "page"}, "action"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(DetectorConfigError, match=rf"ThroughputDropConfig\.{field}\b"):
        ThroughputDropConfig(**kwargs)  # type: ignore[arg-type]


def test_state_is_small_and_plain() -> None:
    state = ThroughputState()
    values = _normal(60) + [30_000.0] * 5
    synth.drive(ThroughputDrop(), synth.steps_of(_tput(values)), state)
    assert len(pickle.dumps(state)) < 500
