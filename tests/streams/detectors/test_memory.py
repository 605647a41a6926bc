"""memory_growth: rising window lows fire; sawtooth, noise and flat-high memory don't."""

from __future__ import annotations

import itertools
import math
import pickle
import random

import pytest
import synth

from rankwatch.streams import DetectorConfigError, Finding
from rankwatch.streams.detectors.memory import MemoryGrowth, MemoryGrowthConfig, MemoryState


def _series(
    n: int,
    *,
    base: float = 30_000.0,
    leak_from: int | None = None,
    leak_mb: float = 0.0,
    saw_mb: float = 6_000.0,
    saw_period: int = 4,
    noise_mb: float = 30.0,
    seed: int = 0,
    field: str = "gpu_memory_allocated_mb",
) -> list[dict[str, float]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v = base + saw_mb * (i % saw_period) / saw_period + rng.gauss(0, noise_mb)
        if leak_from is not None and i >= leak_from:
            v += leak_mb * (i - leak_from)
        out.append({field: v})
    return out


def _fired(values: list[dict[str, float]], det: MemoryGrowth | None = None) -> list[int]:
    out = synth.drive(det or MemoryGrowth(), synth.steps_of(values))
    return [s for s, o in out if isinstance(o, Finding)]


def test_a_50mb_per_step_leak_fires_within_a_few_dozen_steps() -> None:
    values = _series(400, leak_from=200, leak_mb=50.0)
    out = synth.drive(MemoryGrowth(), synth.steps_of(values, rank=7))
    step, f = out[0]
    assert isinstance(f, Finding)
    # The leak goes on: the same incident is re-reported (refresh_s), never a new one.
    assert all(isinstance(o, Finding) and o.step == f.step for _, o in out)
    assert 200 < step <= 260
    assert f.rank == 7 and 180 <= (f.step or 0) <= 210
    ev = f.evidence
    # Window lows are read at random points of the sawtooth: the estimate is rough.
    assert ev["slope_per_step"] == pytest.approx(50, rel=0.35)
    minima = ev["window_minima"]
    assert len(minima) == 16 and all(b > a for a, b in itertools.pairwise(minima[-4:]))
    assert "MB/step" in f.summary and f.summary.startswith("rank 7: GPU memory lows rising")


def test_a_slow_leak_fires_in_reasonable_time() -> None:
    values = _series(1500, leak_from=100, leak_mb=3.0, noise_mb=5.0)
    fired = _fired(values)
    assert fired and fired[0] < 500


def test_a_leak_under_heavy_noise_still_fires() -> None:
    values = _series(600, leak_from=200, leak_mb=50.0, noise_mb=150.0)
    fired = _fired(values)
    assert fired and fired[0] <= 280


@pytest.mark.parametrize("period", [1, 2, 3, 4, 7, 10])
@pytest.mark.parametrize("seed", range(3))
def test_allocator_sawtooth_is_not_growth(period: int, seed: int) -> None:
    assert _fired(_series(3000, saw_period=period, seed=seed)) == []


@pytest.mark.parametrize("seed", range(5))
def test_heavy_noise_alone_is_not_growth(seed: int) -> None:
    assert _fired(_series(5000, noise_mb=150.0, saw_mb=0.0, seed=seed)) == []


def test_flat_high_usage_is_not_growth() -> None:
    rng = random.Random(1)
    values = [{"gpu_memory_usage": min(100.0, 98.0 + rng.gauss(0, 0.3))} for _ in range(3000)]
    assert _fired(values) == []


def test_usage_percent_climbing_fires() -> None:
    values = [{"gpu_memory_usage": 20.0 + 0.1 * i + (1.0 if i % 3 else 0.0)} for i in range(700)]
    fired = _fired(values)
    # From the first step: the cache's warm-up (300 steps), then 10 windows to learn the noise.
    assert fired and fired[0] < 480


def test_reserved_is_used_when_allocated_is_not_reported() -> None:
    values = _series(700, leak_from=400, leak_mb=50.0, field="gpu_memory_reserved_mb")
    out = synth.drive(MemoryGrowth(), synth.steps_of(values))
    assert out and isinstance(out[0][1], Finding)
    assert out[0][1].evidence["series"] == "gpu_memory_reserved_mb"


def test_a_cache_filling_to_its_plateau_is_not_growth() -> None:
    # Reserved memory grows to a plateau over the first hundreds of steps, and levels off.
    values = [
        {"gpu_memory_reserved_mb": 60_000 + 3_000 * (1 - math.exp(-i / 150)) + (i % 7)}
        for i in range(2000)
    ]
    assert _fired(values) == []


def test_a_one_time_step_up_is_not_growth() -> None:
    values = _series(1000)
    for i in range(500, 1000):
        values[i]["gpu_memory_allocated_mb"] += 4_000.0  # a new buffer, allocated once
    assert _fired(values) == []


@pytest.mark.parametrize("seed", range(4))
def test_healthy_synthetic_runs_are_quiet(seed: int) -> None:
    events = synth.healthy_run(ranks=1, steps=3000, seed=seed)
    assert synth.drive(MemoryGrowth(), events) == []


def test_resolves_when_growth_stops() -> None:
    values = _series(300, leak_from=100, leak_mb=50.0)
    top = values[-1]["gpu_memory_allocated_mb"]
    values += _series(100, base=top - 6_000 * 3 / 4)
    out = synth.drive(MemoryGrowth(), synth.steps_of(values))
    assert [type(o).__name__ for _, o in out] == ["Finding"] * (len(out) - 1) + ["Resolution"]
    assert 300 < out[-1][0] <= 400  # once the last 8 windows are flat after the leak stopped at 300


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window_steps": 1}, "window_steps"),
        ({"windows": 7}, "windows"),
        ({"windows": 17}, "windows"),
        ({"min_total_mb": 0.0}, "min_total_mb"),
        ({"noise_z": math.inf}, "noise_z"),
        ({"severity": "CRITICAL"}, "severity"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(DetectorConfigError, match=rf"MemoryGrowthConfig\.{field}\b"):
        MemoryGrowthConfig(**kwargs)  # type: ignore[arg-type]


def test_state_is_small_and_plain() -> None:
    state = MemoryState()
    synth.drive(MemoryGrowth(), synth.steps_of(_series(400, leak_from=200, leak_mb=50)), state)
    assert len(pickle.dumps(state)) < 500
