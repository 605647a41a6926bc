"""memory_growth: rising window lows fire; sawtooth, noise and flat-high memory don't."""

from __future__ import annotations

import itertools
import math
import pickle
import random

import noisy_steps
import pytest
import synth

from rankwatch.schemas import StepEvent
from rankwatch.streams import DetectorConfigError, Finding
from rankwatch.streams.detectors.memory import MemoryGrowth, MemoryGrowthConfig, MemoryState
from rankwatch.streams.frames.testing import assert_frames_match_scalar, run_scalar


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


def _lows_rising(rises: dict[int, float]) -> list[dict[str, float]]:
    """600 steps whose window lows (windows of 10 steps) rise by ``rises[window]``."""
    values = _series(600, noise_mb=10.0)
    shift = 0.0
    for i, v in enumerate(values):
        if i % 10 == 0:
            shift += rises.get(i // 10, 0.0)
        v["gpu_memory_allocated_mb"] += shift
    return values


def test_a_step_up_cut_in_two_by_the_windows_is_not_a_climb() -> None:
    # Fresh soak data (seed 4002, rank 215): a checkpoint's step up spread over a few windows
    # read as lows rising 150, 388, 118, 82 MB, then flat: two "steady" fits running, and an
    # alert. A climb does not fall away like that; a leak whose first rise is small does fire.
    assert _fired(_lows_rising({30: 150.0, 31: 388.0, 32: 118.0, 33: 82.0})) == []
    growing = {30: 60.0, 31: 300.0, 32: 500.0, **{w: 500.0 for w in range(33, 60)}}
    assert _fired(_lows_rising(growing))[0] < 360


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


# -- the frame path (issue 14): same outcomes and state as on_step ----------------------------


def _memory(seed: int, scale: float = 1.0) -> noisy_steps.Values:
    """Memory readings with every path of the rule, one kind of rank per ``rank % 8``; steps
    (and so leak starts) are scaled by ``scale`` for a config with shorter windows."""

    def at(step: float) -> int:
        return int(step * scale)

    def value(rng: object, rank: int, step: int) -> dict[str, float | None]:
        assert isinstance(rng, random.Random)
        kind = (rank + seed) % 8
        saw = 2_000.0 * (step % (3 + rank % 4)) + rng.gauss(0, 30.0)
        mb = 20_000.0 + 1_000.0 * rank + saw
        if kind == 0:  # flat, noisy memory; now and then no reading at all
            return {"gpu_memory_allocated_mb": None if rng.random() < 0.05 else mb}
        if kind == 1:  # a slow leak from step 120 (a few MB a step, under the sawtooth)
            return {"gpu_memory_allocated_mb": mb + 8.0 * max(0, step - at(120))}
        if kind == 2:  # one step up: a new buffer, allocated once
            return {"gpu_memory_allocated_mb": mb + (4_000.0 if step >= at(250) else 0.0)}
        if kind == 3:  # a fast leak that stops (and resolves)
            grown = 50.0 * (min(step, at(300)) - at(150)) if step >= at(150) else 0.0
            return {"gpu_memory_allocated_mb": mb + grown}
        if kind == 4:  # reserved only: the cache's warm-up, then a leak
            return {"gpu_memory_reserved_mb": mb + 40.0 * step, "gpu_memory_allocated_mb": None}
        if kind == 5:  # percent only, climbing
            pct = 20.0 + 0.1 * step + (1.0 if step % 3 else 0.0) + rng.gauss(0, 0.1)
            return {"gpu_memory_usage": min(100.0, max(0.0, pct))}
        if kind == 6:  # allocated, now and then missing with reserved given: a switch of series
            if rng.random() < 0.01:
                return {"gpu_memory_reserved_mb": mb + 5_000.0}
            return {"gpu_memory_allocated_mb": mb + 30.0 * step, "gpu_memory_usage": 50.0}
        # all three series, flat; from some step on only percent (a series switch for good)
        if step >= at(350):
            return {"gpu_memory_usage": 40.0 + rng.gauss(0, 0.2)}
        return {"gpu_memory_allocated_mb": mb, "gpu_memory_reserved_mb": mb + 2_000.0}

    return value


def _kinds(events: list[StepEvent], rule: MemoryGrowth) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for i, o in run_scalar(rule, events)[0]:
        out.setdefault(events[i].rank, []).append(type(o).__name__)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_the_frame_path_finds_what_on_step_finds(seed: int) -> None:

    events = noisy_steps.noisy_job(seed, _memory(seed), ranks=8, steps=500)
    found = assert_frames_match_scalar(MemoryGrowth(), events)
    assert found > 0  # the leaks were seen both ways, not merely nothing both ways
    # The generator does what it says: each leak fires (on ranks that start at step 0: ranks
    # 0 and 1 may join late), the step up and flat memory do not.
    fired = {(r + seed) % 8: kinds for r, kinds in _kinds(events, MemoryGrowth()).items()}
    assert {1, 3, 4, 5} - {seed % 8, (1 + seed) % 8} <= fired.keys()
    assert not {0, 2, 7} & fired.keys()
    assert "Resolution" in fired.get(3, ["Resolution"])


def test_the_frame_path_with_a_tight_config() -> None:

    config = MemoryGrowthConfig(
        window_steps=4,
        windows=8,
        warmup_steps=5,
        cache_warmup_steps=40,
        persist_windows=3,
        min_total_mb=64.0,
        recover_windows=2,
        refresh_s=20.0,
    )
    events = noisy_steps.noisy_job(7, _memory(7, scale=0.4), ranks=8, steps=300)
    assert assert_frames_match_scalar(MemoryGrowth(config), events) > 0
