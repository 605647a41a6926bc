"""throughput_drop: the recent level < 70% of the mean for 3+ steps and 10+ s fires; warm-up,
checkpoints and scattered pauses don't."""

from __future__ import annotations

import math
import pickle

import noisy_steps
import pytest
import synth

from rankwatch.schemas import StepEvent
from rankwatch.streams import DetectorConfigError, Finding
from rankwatch.streams.detectors.throughput import (
    ThroughputDrop,
    ThroughputDropConfig,
    ThroughputState,
)
from rankwatch.streams.frames.testing import assert_frames_match_scalar


def _tput(values: list[float]) -> list[dict[str, float]]:
    return [{"throughput_tokens_per_sec": v} for v in values]


def _normal(n: int, level: float = 80_000.0) -> list[float]:
    return [level * (1 + 0.03 * math.sin(i * 1.7)) for i in range(n)]


def test_a_sustained_drop_fires_with_the_numbers() -> None:
    values = [*_normal(60), 30000.0, 31000.0, 29000.0, *([30000.0] * 12)]
    out = synth.drive(ThroughputDrop(), synth.steps_of(_tput(values), rank=4))
    [(step, f)] = out
    assert isinstance(f, Finding)
    # The recent level (5 steps) goes under 70% at step 63; 5 s later (1 s steps) it fires.
    assert (step, f.step, f.rank) == (68, 63, 4)
    ev = f.evidence
    assert ev["recent_mean"] == pytest.approx(80_000, rel=0.05)
    assert ev["recent_values"] == [30_000.0, 30_000.0, 30_000.0]
    assert ev["consecutive_steps"] == 6
    assert "of its mean" in f.summary and "(5 s) since step 63" in f.summary


def test_slow_steps_scattered_among_normal_ones_are_not_a_drop() -> None:
    # A pause on one rank or another every few steps (GC, logging) in a synchronous job.
    values = _normal(300)
    for i in range(60, 300, 3):
        values[i] = 40_000.0
    assert synth.drive(ThroughputDrop(), synth.steps_of(_tput(values))) == []


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
    values = [*_normal(100), 15_000.0, 78_000.0, *([40_000.0] * 20)]
    [(step, f)] = synth.drive(ThroughputDrop(), synth.steps_of(_tput(values)))
    assert isinstance(f, Finding)
    assert f.step == 105 and step == 110


@pytest.mark.parametrize("seed", range(6))
def test_noisy_healthy_run_with_checkpoints(seed: int) -> None:
    shape = synth.RunShape(throughput_noise=0.08, checkpoint_every=25)
    events = synth.healthy_run(ranks=1, steps=2000, seed=seed, shape=shape)
    assert synth.drive(ThroughputDrop(), events) == []


def test_resolves_when_back_above_the_threshold() -> None:
    values = _normal(60) + [30_000.0] * 15 + _normal(10)
    out = synth.drive(ThroughputDrop(), synth.steps_of(_tput(values)))
    assert [(s, type(o).__name__) for s, o in out] == [(68, "Finding"), (79, "Resolution")]


def test_a_long_drop_is_refreshed_not_repeated() -> None:
    values = _normal(60) + [30_000.0] * 150
    out = synth.drive(ThroughputDrop(), synth.steps_of(_tput(values)))
    assert [s for s, _ in out] == [68, 128, 188]
    assert {o.step for _, o in out if isinstance(o, Finding)} == {63}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"drop_ratio": 1.0}, "drop_ratio"),
        ({"drop_steps": 0}, "drop_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"clip": 1.0}, "clip"),
        ({"drop_s": -1.0}, "drop_s"),
        ({"floor": 0.0}, "floor"),
        ({"recent_alpha": 1.0}, "recent_alpha"),
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


# -- the frame path (issue 14): same outcomes and state as on_step ----------------------------


def _throughputs(fault_rank: int, fault_at: int) -> noisy_steps.Values:
    """Per-rank noisy throughput: slow warm-up steps, missing reports, single stalls, a
    job-wide checkpoint every 50 steps, short three-step slowdowns, and drops of several depths
    and lengths on ``fault_rank`` (and a long one on the next rank) that recover."""

    def value(rng: object, rank: int, step: int) -> dict[str, float | None]:
        import random

        assert isinstance(rng, random.Random)
        if rng.random() < 0.03:
            return {"throughput_tokens_per_sec": None}
        level = 60_000.0 + 5_000.0 * (rank % 4)
        x = level * (1.0 + rng.gauss(0, 0.03 + 0.02 * (rank % 3)))
        if step < 8:
            x *= (step + 1) / 9  # CUDA init, compile, autotuning
        if rng.random() < 0.01:
            x *= rng.choice([0.0, 0.1, 0.5, 2.5])  # one stalled (or bursting) step
        if step % 50 == 0:
            x *= 0.2  # every rank waits for the checkpoint
        if rank % 5 == 1 and step % 37 in (0, 1, 2):
            x *= 0.25  # three slow steps in a row: a low streak that ends without firing
        depth = (0.3, 0.5, 0.0, 0.6)[fault_at % 4]
        length = 12 + (fault_at % 5) * 15
        if rank == fault_rank and fault_at <= step < fault_at + length:
            x *= depth
        if rank == fault_rank + 1 and fault_at + 30 <= step < fault_at + 130:
            x *= 0.5  # long: fires, is refreshed, recovers
        return {"throughput_tokens_per_sec": max(x, 0.0)}

    return value


@pytest.mark.parametrize("seed", range(6))
def test_the_frame_path_finds_what_on_step_finds(seed: int) -> None:

    events = noisy_steps.noisy_job(seed, _throughputs(2 + seed % 5, 60 + 13 * seed), ranks=12)
    found = assert_frames_match_scalar(ThroughputDrop(), events)
    assert found > 0  # the drops were seen both ways, not merely nothing both ways


def test_the_frame_path_with_a_tight_config() -> None:

    config = ThroughputDropConfig(
        drop_ratio=0.85,
        drop_steps=2,
        drop_s=1.0,
        warmup_steps=8,
        seed_steps=3,
        floor=0.5,
        clip=1.2,
        recover_steps=2,
        refresh_s=10.0,
    )
    events = noisy_steps.noisy_job(99, _throughputs(3, 40), ranks=8)
    assert assert_frames_match_scalar(ThroughputDrop(config), events) > 0


@pytest.mark.parametrize(("warmup", "seed_steps"), [(10, 5), (0, 1), (3, 4)])
def test_the_frame_path_seeds_every_rank_of_a_frame_at_once(warmup: int, seed_steps: int) -> None:
    # A synchronous job: whole frames of ranks collect their seed together (the frame path's
    # loop over the seed lists), one rank's reports missing now and then, so it is seeded a
    # frame or two after its peers; then a drop on rank 2 that must still be found.
    def value(rank: int, step: int) -> dict[str, float]:
        if rank == 1 and step % 4 == 1:
            return {}
        x = 8_000.0 + 100.0 * ((rank * 7919 + step * 104729) % 1000) / 1000.0
        return {"throughput_tokens_per_sec": x * (0.3 if rank == 2 and step >= 40 else 1.0)}

    events = [
        StepEvent(job_id="job-1", rank=r, step=s, timestamp=synth.T0 + 10.0 * s + 0.01 * r, **m)
        for s in range(60)
        for r in range(6)
        for m in [value(r, s)]
    ]
    config = ThroughputDropConfig(warmup_steps=warmup, seed_steps=seed_steps)
    assert assert_frames_match_scalar(ThroughputDrop(config), events) > 0
