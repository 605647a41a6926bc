"""loss_explosion: fires on non-finite and sustained-high losses, silent on healthy noise."""

from __future__ import annotations

import math
import pickle

import noisy_steps
import pytest
import synth

from rankwatch.streams import DetectorConfigError, Finding, Resolution
from rankwatch.streams.detectors.loss import LossExplosion, LossExplosionConfig, LossState
from rankwatch.streams.frames.testing import assert_frames_match_scalar

NAN, INF = math.nan, math.inf


def _flat(n: int, level: float = 2.0, **extra: float) -> list[dict[str, float]]:
    return [{"loss": level + 0.05 * math.sin(i), **extra} for i in range(n)]


def _findings(out: list[tuple[int, object]]) -> list[tuple[int, Finding]]:
    return [(step, o) for step, o in out if isinstance(o, Finding)]


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_loss_fires_at_once(bad: float) -> None:
    values = [*_flat(150), {"loss": bad}]
    out = synth.drive(LossExplosion(), synth.steps_of(values, rank=7))
    [(step, f)] = _findings(out)
    assert step == 150 and f.step == 150 and f.rank == 7
    assert f.severity == "critical" and f.action == "pause_job"
    assert f.summary.startswith(f"rank 7: loss is {bad} at step 150 (was 1.95")
    assert "pausing the job" in f.summary
    assert math.isnan(f.evidence["loss"]) or math.isinf(f.evidence["loss"])


def test_nan_in_the_very_first_step_fires() -> None:
    out = synth.drive(LossExplosion(), synth.steps_of([{"loss": NAN}]))
    assert len(_findings(out)) == 1


def test_ceiling_fires_after_five_consecutive_steps() -> None:
    values = [*_flat(50), *({"loss": 5e3} for _ in range(5))]
    [(step, f)] = _findings(synth.drive(LossExplosion(), synth.steps_of(values)))
    assert step == 54 and f.step == 50
    assert f.evidence["consecutive_steps"] == 5


def test_four_high_steps_that_come_back_are_not_an_explosion() -> None:
    values = [*_flat(50), *({"loss": 5e3} for _ in range(4)), *_flat(50)]
    assert synth.drive(LossExplosion(), synth.steps_of(values)) == []


def test_ratio_rule_fires_when_loss_stays_far_above_its_level() -> None:
    values = [*_flat(100), *({"loss": 9.0} for _ in range(10))]
    [(step, f)] = _findings(synth.drive(LossExplosion(), synth.steps_of(values, rank=3)))
    assert (step, f.step) == (104, 100)
    assert f.evidence["baseline_loss"] == pytest.approx(2.0, abs=0.1)
    assert "diverging" in f.summary and "since step 100" in f.summary


def test_single_spikes_are_not_an_explosion() -> None:
    values = _flat(300)
    for i in range(40, 300, 7):
        values[i] = {"loss": 30.0}  # 15x, one step at a time
    assert synth.drive(LossExplosion(), synth.steps_of(values)) == []


def test_high_loss_during_warm_up_falls_below_ratio_rule() -> None:
    # A run whose loss starts ~11 and falls fast: the ratio rule waits for the warm-up.
    values = [{"loss": 2 + 9 * math.exp(-i / 10)} for i in range(200)]
    assert synth.drive(LossExplosion(), synth.steps_of(values)) == []


def test_a_sum_reduced_loss_that_lives_above_the_ceiling_is_not_exploding() -> None:
    values = [{"loss": 5e3 + 100 * math.sin(i)} for i in range(200)]
    assert synth.drive(LossExplosion(), synth.steps_of(values)) == []


def test_fp16_overflow_skips_do_not_fire() -> None:
    # A skipped step reports a normal, finite loss with a non-finite gradient norm.
    values = [{"loss": 2.0 + 0.05 * math.sin(i), "gradient_norm": 1.0} for i in range(400)]
    for i in [*range(12), *range(50, 400, 23), 200, 201]:
        values[i]["gradient_norm"] = INF if i % 2 else NAN
    assert synth.drive(LossExplosion(), synth.steps_of(values)) == []


@pytest.mark.parametrize("seed", range(6))
def test_noisy_healthy_loss_curve_with_lr_warm_up_and_decay(seed: int) -> None:
    shape = synth.RunShape(loss_noise=0.12, loss_spike_prob=0.03, total_steps=3000)
    events = (e for e in synth.healthy_run(ranks=1, steps=3000, seed=seed, shape=shape))
    assert synth.drive(LossExplosion(), events) == []


def test_resolves_when_loss_is_back_near_its_level() -> None:
    values = [*_flat(100), *({"loss": 9.0} for _ in range(6)), *_flat(10)]
    out = synth.drive(LossExplosion(), synth.steps_of(values))
    assert [type(o) for _, o in out] == [Finding, Resolution]
    assert out[1][0] == 108  # the third calm step


def test_resolves_after_nan_when_finite_again() -> None:
    values = [*_flat(30), {"loss": NAN}, {"loss": NAN}, *_flat(5)]
    out = synth.drive(LossExplosion(), synth.steps_of(values))
    assert [(s, type(o)) for s, o in out] == [(30, Finding), (34, Resolution)]


def test_refreshes_a_lasting_incident_so_it_does_not_expire() -> None:
    values = [*_flat(30), *({"loss": NAN} for _ in range(130))]
    out = synth.drive(LossExplosion(), synth.steps_of(values))
    assert [s for s, _ in out] == [30, 90, 150]  # every refresh_s = 60 s of event time
    assert {o.step for _, o in out if isinstance(o, Finding)} == {30}


def test_nonfinite_steps_can_tolerate_fp16_forward_overflow() -> None:
    det = LossExplosion(LossExplosionConfig(nonfinite_steps=2))
    values = [*_flat(30), {"loss": INF}, *_flat(30), {"loss": NAN}, {"loss": NAN}]
    assert [s for s, _ in synth.drive(det, synth.steps_of(values))] == [62]


def test_missing_loss_is_ignored() -> None:
    values = [*_flat(30), *({} for _ in range(10)), {"loss": NAN}]
    out = synth.drive(LossExplosion(), synth.steps_of(values))
    assert [s for s, _ in out] == [40]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ceiling": 0}, "ceiling"),
        ({"ratio": 1.0}, "ratio"),
        ({"sustain_steps": 0}, "sustain_steps"),
        ({"alpha": 1.5}, "alpha"),
        ({"recover_ratio": 5.0}, "recover_ratio"),
        ({"min_rise": -1}, "min_rise"),
        ({"severity": "fatal"}, "severity"),
        ({"action": "reboot"}, "action"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(DetectorConfigError, match=rf"LossExplosionConfig\.{field}\b"):
        LossExplosionConfig(**kwargs)  # type: ignore[arg-type]


def test_ceiling_can_be_turned_off() -> None:
    LossExplosionConfig(ceiling=math.inf)


def test_state_is_small_and_plain() -> None:
    state = LossState()
    synth.drive(LossExplosion(), synth.steps_of([*_flat(100), {"loss": NAN}]), state)
    assert len(pickle.dumps(state)) < 500
    assert pickle.loads(pickle.dumps(state)) == state


# -- the frame path (issue 14): same outcomes and state as on_step ----------------------------


def _losses(fault_rank: int, fault_at: int) -> noisy_steps.Values:
    def value(rng: object, rank: int, step: int) -> dict[str, float | None]:
        import random

        assert isinstance(rng, random.Random)
        if rng.random() < 0.03:
            return {"loss": None}
        base = 3.0 * math.exp(-step / 80) + 1.0 + rng.gauss(0, 0.05 + 0.02 * (rank % 3))
        if rng.random() < 0.01:
            base *= rng.choice([2.5, 4.0, 0.2])  # one odd batch
        if rank % 7 == 5:
            base -= 3.0  # a loss that goes negative (an ELBO, a reward)
        if rank == fault_rank and fault_at <= step:
            kind = fault_at % 4
            if kind == 0:
                base = NAN if step < fault_at + 3 else base  # a NaN run that passes
            elif kind == 1:
                base *= 6.0 if step < fault_at + 40 else 1.0  # diverges, then recovers
            elif kind == 2:
                base = 5e3  # above the ceiling for good
            else:
                base = INF if rng.random() < 0.5 else base
        return {"loss": base}

    return value


@pytest.mark.parametrize("seed", range(6))
def test_the_frame_path_finds_what_on_step_finds(seed: int) -> None:

    events = noisy_steps.noisy_job(seed, _losses(2 + seed % 5, 60 + 13 * seed), ranks=12)
    found = assert_frames_match_scalar(LossExplosion(), events)
    assert found > 0  # the fault was seen both ways, not merely nothing both ways


def test_the_frame_path_with_a_tight_config() -> None:

    config = LossExplosionConfig(ceiling=4.0, sustain_steps=2, nonfinite_steps=2, warmup_steps=5)
    events = noisy_steps.noisy_job(99, _losses(3, 40), ranks=8)
    assert assert_frames_match_scalar(LossExplosion(config), events) > 0
