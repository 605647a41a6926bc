"""gradient_explosion: persistent or loss-coinciding non-finite norms and sustained large spikes
fire; fp16 loss-scale overflow skips (one-off, or a run at start-up) and ordinary spikes don't."""

from __future__ import annotations

import math
import pickle

import noisy_steps
import pytest
import synth

from rankwatch.streams import DetectorConfigError, Finding, Resolution
from rankwatch.streams.detectors.gradient import (
    GradientExplosion,
    GradientExplosionConfig,
    GradientState,
)
from rankwatch.streams.frames.testing import assert_frames_match_scalar

NAN, INF = math.nan, math.inf


def _healthy(n: int, level: float = 1.0) -> list[dict[str, float]]:
    return [{"loss": 2.0, "gradient_norm": level * (1 + 0.3 * math.sin(i))} for i in range(n)]


def _steps(out: list[tuple[int, object]]) -> list[tuple[int, str]]:
    return [(s, type(o).__name__) for s, o in out]


def test_single_overflow_skips_are_not_an_explosion() -> None:
    values = _healthy(2000)
    for i in range(100, 2000, 97):
        values[i]["gradient_norm"] = INF
    for i in (500, 501, 1500, 1501):  # two in a row: the scale halved twice
        values[i]["gradient_norm"] = NAN
    assert synth.drive(GradientExplosion(), synth.steps_of(values)) == []


def test_startup_overflows_while_the_scaler_calibrates_are_ignored() -> None:
    # DeepSpeed starts at a 2**32 loss scale and halves it once per skipped step.
    values = [{"loss": 11.0, "gradient_norm": INF} for _ in range(20)] + _healthy(100)
    assert synth.drive(GradientExplosion(), synth.steps_of(values)) == []


def test_non_finite_norm_that_persists_fires() -> None:
    values = _healthy(100) + [{"loss": 2.0, "gradient_norm": INF} for _ in range(8)]
    out = synth.drive(GradientExplosion(), synth.steps_of(values, rank=2))
    [(step, f)] = out
    assert isinstance(f, Finding)
    assert (step, f.step, f.rank) == (105, 100, 2)
    assert f.evidence["consecutive_steps"] == 6
    assert "6 consecutive steps" in f.summary and f.summary.startswith("rank 2: gradient norm")


def test_a_few_overflow_skips_in_a_row_are_healthy() -> None:
    # A probe of a larger loss scale, or a jump of the gradients: the scaler skips and halves.
    values = _healthy(100) + [{"loss": 2.0, "gradient_norm": INF} for _ in range(5)]
    assert synth.drive(GradientExplosion(), synth.steps_of(values + _healthy(20))) == []


def test_non_finite_norm_with_a_non_finite_loss_fires_at_once() -> None:
    values = [*_healthy(100), {"loss": NAN, "gradient_norm": NAN}]
    [(step, f)] = synth.drive(GradientExplosion(), synth.steps_of(values))
    assert step == 100 and isinstance(f, Finding) and "with a nan loss" in f.summary


def test_non_finite_with_nan_loss_fires_even_during_startup() -> None:
    values = [{"loss": NAN, "gradient_norm": NAN}]
    assert len(synth.drive(GradientExplosion(), synth.steps_of(values))) == 1


def test_a_scaler_stuck_at_its_floor_fires_eventually() -> None:
    values = [{"loss": 11.0, "gradient_norm": INF} for _ in range(60)]
    [(step, _)] = synth.drive(GradientExplosion(), synth.steps_of(values))
    assert step == 39


def test_sustained_large_spike_fires() -> None:
    values = [*_healthy(100), *({"loss": 2.0, "gradient_norm": 40.0} for _ in range(3))]
    [(step, f)] = synth.drive(GradientExplosion(), synth.steps_of(values))
    assert isinstance(f, Finding)
    assert (step, f.step) == (101, 100)
    assert "x its recent level" in f.summary
    assert f.evidence["baseline_gradient_norm"] == pytest.approx(1.0, rel=0.2)


def test_single_large_spikes_do_not_fire() -> None:
    values = _healthy(1000)
    for i in range(50, 1000, 11):
        values[i]["gradient_norm"] = 100.0
    assert synth.drive(GradientExplosion(), synth.steps_of(values)) == []


def test_spikes_below_ten_times_do_not_fire_even_when_sustained() -> None:
    values = [
        *_healthy(100),
        *({"loss": 2.0, "gradient_norm": 7.0} for _ in range(5)),
        *_healthy(50),
    ]
    assert synth.drive(GradientExplosion(), synth.steps_of(values)) == []


def test_overflow_between_two_spikes_neither_breaks_nor_extends_the_run() -> None:
    spike = {"loss": 2.0, "gradient_norm": 40.0}
    values = [*_healthy(100), spike, {"loss": 2.0, "gradient_norm": INF}, spike]
    [(step, _)] = synth.drive(GradientExplosion(), synth.steps_of(values))
    assert step == 102


@pytest.mark.parametrize("seed", range(6))
def test_heavy_tailed_healthy_run_with_overflow_skips(seed: int) -> None:
    shape = synth.RunShape(grad_sigma=0.6, grad_spike_prob=0.03, overflow_every=37)
    events = synth.healthy_run(ranks=1, steps=3000, seed=seed, shape=shape)
    assert synth.drive(GradientExplosion(), events) == []


def test_resolves_when_norm_is_back() -> None:
    values = [*_healthy(100), *({"loss": 2.0, "gradient_norm": INF} for _ in range(7))]
    values += _healthy(5)
    out = synth.drive(GradientExplosion(), synth.steps_of(values))
    assert _steps(out) == [(105, "Finding"), (109, "Resolution")]
    assert isinstance(out[1][1], Resolution)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nonfinite_steps": 0}, "nonfinite_steps"),
        ({"ratio": 0.5}, "ratio"),
        ({"spike_steps": 1.5}, "spike_steps"),
        ({"clip": math.nan}, "clip"),
        ({"recover_ratio": 20.0}, "recover_ratio"),
        ({"refresh_s": 0}, "refresh_s"),
        ({"severity": "high"}, "severity"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(DetectorConfigError, match=rf"GradientExplosionConfig\.{field}\b"):
        GradientExplosionConfig(**kwargs)  # type: ignore[arg-type]


def test_state_is_small_and_plain() -> None:
    state = GradientState()
    synth.drive(GradientExplosion(), synth.steps_of(_healthy(100)), state)
    assert len(pickle.dumps(state)) < 500


# -- the frame path (issue 14): same outcomes and state as on_step ----------------------------


def _norms(fault_rank: int, fault_at: int, stuck_rank: int) -> noisy_steps.Values:
    def value(rng: object, rank: int, step: int) -> dict[str, float | None]:
        import random

        assert isinstance(rng, random.Random)
        loss: float | None = 3.0 * math.exp(-step / 80) + 1.0 + rng.gauss(0, 0.05)
        if rng.random() < 0.03:
            loss = None
        if rng.random() < 0.03:
            return {"loss": loss, "gradient_norm": None}
        # Heavy-tailed norms that fall early on, a different scale per rank.
        g = (0.5 + rank % 3) * (1.0 + 4.0 * math.exp(-step / 30)) * rng.lognormvariate(0, 0.3)
        u = rng.random()
        if step < 12 or (rank == stuck_rank and step < 50):
            g = INF  # the scaler calibrating at start-up (stuck at its floor on one rank)
        elif u < 0.01:
            g = INF  # an overflow skip
        elif u < 0.015:
            g = NAN if rng.random() < 0.5 else -INF  # a skip that reports nan
        elif u < 0.025:
            g *= rng.choice([15.0, 30.0, 5.0])  # one odd batch
        if rank == fault_rank and fault_at <= step:
            kind = fault_at % 4
            if kind == 0:
                g *= 30.0 if step < fault_at + 15 else 1.0  # explodes, then recovers
            elif kind == 1:
                # Non-finite norms with a finite loss: a run that fires, then one that lasts.
                if step < fault_at + 8 or fault_at + 30 <= step < fault_at + 110:
                    g = INF if rng.random() < 0.7 else NAN
            elif kind == 2:
                if step in (fault_at, fault_at + 50):
                    g, loss = NAN, NAN  # the forward pass broke: fires at once
            elif step < fault_at + 20:
                g = g * 40.0 if step % 2 else INF  # spikes with overflows between them
        return {"loss": loss, "gradient_norm": g}

    return value


@pytest.mark.parametrize("seed", range(8))
def test_the_frame_path_finds_what_on_step_finds(seed: int) -> None:

    value = _norms(2 + seed % 5, 60 + 13 * seed, 11 - seed % 2)
    events = noisy_steps.noisy_job(seed, value, ranks=12)
    found = assert_frames_match_scalar(GradientExplosion(), events)
    assert found > 0  # the faults were seen both ways, not merely nothing both ways


def test_the_frame_path_with_a_tight_config() -> None:

    config = GradientExplosionConfig(
        nonfinite_steps=2,
        startup_overflow_steps=8,
        ratio=4.0,
        spike_steps=1,
        warmup_steps=5,
        alpha=0.2,
        clip=1.5,
        recover_ratio=2.0,
        recover_steps=2,
        refresh_s=10.0,
    )
    events = noisy_steps.noisy_job(99, _norms(3, 41, 7), ranks=8)
    assert assert_frames_match_scalar(GradientExplosion(config), events) > 0
