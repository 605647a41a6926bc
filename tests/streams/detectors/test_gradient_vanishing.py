"""gradient_vanishing through the engine: the fault and its look-alikes.

A norm collapsed 100x+ with a flat loss fires once per job (every rank reports the same global
norm); a plateau, healthy convergence (slow, or fast with a falling loss), warm-up norms,
overflow skips and isolated zero norms don't. Its frame path finds what on_step finds.
"""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import noisy_steps
import pytest
from synth import T0, Fault, both, global_norm, healthy_run, run_engine

from rankwatch.schemas import Alert
from rankwatch.streams import DetectorConfigError, Engine
from rankwatch.streams.detectors.gradient_desync import GradientDesync
from rankwatch.streams.detectors.gradient_vanishing import (
    GradientVanishing,
    GradientVanishingConfig,
    VanishingState,
)
from rankwatch.streams.frames.testing import (
    assert_frames_match_scalar,
)


def engine(*detectors: Any) -> Engine:
    return Engine(list(detectors) or [GradientVanishing(), GradientDesync()])


def firing(alerts: list[Alert], rule: str | None = None) -> list[Alert]:
    return [a for a in alerts if a.status == "firing" and (rule is None or a.rule == rule)]


# -- gradient_vanishing ----------------------------------------------------------------------


def stall(
    from_step: int, to_step: int = 10**9, factor: float = 1e-4, noise: float = 0.03, seed: int = 0
) -> Fault:
    """From ``from_step`` the norm collapses ``factor`` x and the loss stays where it was
    (synth's curve there; each rank its own batches' loss: ``noise`` per step)."""
    level = 2.0 + 8.5 * math.exp(-from_step / 150)

    def fault(rank: int, step: int, m: dict[str, Any]) -> None:
        if from_step <= step < to_step:
            m["gradient_norm"] *= factor
            m["loss"] = level * random.Random(f"{seed}-{step}-{rank}").lognormvariate(0, noise)

    return fault


def test_a_collapsed_norm_with_a_flat_loss_is_one_job_alert_then_resolves() -> None:
    fault = both(global_norm(), stall(400, 520))
    alerts = run_engine(engine(), healthy_run(ranks=8, steps=600, fault=fault))
    [alert] = firing(alerts)
    assert (alert.rule, alert.scope, alert.ranks, alert.step) == (
        "gradient_vanishing",
        "job",
        list(range(8)),
        400,
    )
    assert "training has stalled" in alert.summary and "decayed to 0" in alert.summary
    assert "frozen" in alert.summary and "clipping" in alert.summary
    assert alert.evidence["gradient_norm"] < alert.evidence["threshold"]
    # Fired at the second block of 25 steps, resolved after the norm came back.
    assert alert.first_seen.timestamp() <= T0 + 460
    [resolved] = [a for a in alerts if a.status == "resolved"]
    assert resolved.alert_id == alert.alert_id
    assert T0 + 520 <= resolved.last_seen.timestamp() <= T0 + 530


@pytest.mark.parametrize("seed", range(4))
def test_ranks_with_noisy_losses_of_their_own_stall_together_as_one_alert(seed: int) -> None:
    # Judged by a 1% drop alone, a flat loss this noisy looks improving on some ranks and not
    # on others (4-6 of 8 ranks fire at first); judged against its own noise, nearly all do.
    fault = both(global_norm(seed=seed), stall(700, noise=0.12, seed=seed))
    alerts = run_engine(engine(), healthy_run(ranks=8, steps=900, seed=seed, fault=fault))
    [alert] = firing(alerts)
    # Step 700 is an overflow skip in synth's runs: the collapse is seen from step 701.
    assert (alert.scope, alert.step) == ("job", 701) and len(alert.ranks) >= 7
    assert alert.first_seen.timestamp() < T0 + 752  # the second block of 25 steps


def test_a_plateau_with_a_normal_norm_is_not_vanishing() -> None:
    def plateau(rank: int, step: int, m: dict[str, Any]) -> None:
        if step >= 200:
            m["loss"] = 3.0 * (1 + random.Random(step).gauss(0, 0.01))

    alerts = run_engine(
        engine(), healthy_run(ranks=4, steps=800, fault=both(global_norm(), plateau))
    )
    assert firing(alerts) == []


def test_healthy_convergence_is_not_vanishing() -> None:
    # Slow: the norm falls 1,000x over 1,500 steps (the level follows it) ...
    def slow(rank: int, step: int, m: dict[str, Any]) -> None:
        if step >= 200:
            m["gradient_norm"] *= 1000 ** (-(step - 200) / 1500)
            m["loss"] *= 0.5 ** ((step - 200) / 500)

    # ... fast: it falls 300x within 20 steps while the loss keeps falling (a model fitting
    # its training set: the loss goes down by half every 100 steps towards 0).
    def fast(rank: int, step: int, m: dict[str, Any]) -> None:
        if step >= 300:
            m["gradient_norm"] *= 300 ** -min(1.0, (step - 300) / 20)
            m["loss"] = 0.5 * 0.5 ** ((step - 300) / 100) * (1 + 0.02 * math.sin(step))

    for fault, steps in ((slow, 1700), (fast, 900)):
        alerts = run_engine(engine(), healthy_run(ranks=2, steps=steps, fault=fault))
        assert firing(alerts) == [], fault


def test_warm_up_norms_overflow_skips_and_isolated_zero_norms_are_not_vanishing() -> None:
    def noisy(rank: int, step: int, m: dict[str, Any]) -> None:
        if step < 30:
            m["gradient_norm"] *= 200.0  # the first steps' norms, far above the later ones
        elif step % 37 == 0 or 500 <= step < 520:
            m["gradient_norm"] = 0.0  # skipped steps some trainers report as 0 (a run of 20)
        m["loss"] = 3.0 * (1 + 0.01 * math.sin(step))  # and a flat loss throughout

    alerts = run_engine(engine(), healthy_run(ranks=4, steps=900, fault=noisy))
    assert firing(alerts) == []


def test_no_loss_no_vanishing_and_a_rising_loss_fires() -> None:
    def no_loss(rank: int, step: int, m: dict[str, Any]) -> None:
        m.pop("loss")
        if step >= 300:
            m["gradient_norm"] = 0.0

    assert firing(run_engine(engine(), healthy_run(ranks=2, steps=500, fault=no_loss))) == []

    def dead(rank: int, step: int, m: dict[str, Any]) -> None:
        if step >= 300:  # every unit dead: no gradient, the loss back up to ln(vocab)
            m["gradient_norm"], m["loss"] = 0.0, 10.4

    [alert] = firing(run_engine(engine(), healthy_run(ranks=1, steps=400, fault=dead)))
    assert alert.scope == "rank" and alert.step == 300
    assert "gradient norm 0 for 50 steps since step 300" in alert.summary


def test_the_vanishing_state_pickles_and_a_restored_detector_still_fires() -> None:
    detector = GradientVanishing()
    fault = both(global_norm(), stall(300))
    events = list(healthy_run(ranks=1, steps=420, fault=fault))
    e = engine(detector)
    e.process_many(events[:320])
    (job,) = e.jobs.values()
    state = job.ranks[0].slots[detector.name]
    assert (
        isinstance(state, VanishingState) and 15 <= state.low <= 20
    )  # the engine holds a step back
    assert len(pickle.dumps(state)) < 1024
    restored = pickle.loads(pickle.dumps(state))
    job.ranks[0].slots[detector.name] = restored
    assert [a.rule for a in firing(e.process_many(events[320:]))] == ["gradient_vanishing"]


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"ratio": 1.0}, "ratio"),
        ({"persist_steps": 0}, "persist_steps"),
        ({"min_loss_improvement": -0.1}, "min_loss_improvement"),
        ({"min_loss_improvement": 0.9}, "min_loss_improvement"),
        ({"alpha": 1.5}, "alpha"),
        ({"loss_z": -1.0}, "loss_z"),
        ({"recover_ratio": 200.0}, "recover_ratio"),
        ({"severity": "loud"}, "severity"),
    ],
)
def test_vanishing_config_is_checked(settings: dict[str, Any], name: str) -> None:
    with pytest.raises(DetectorConfigError, match=f"GradientVanishingConfig.{name} must"):
        GradientVanishingConfig(**settings)


# -- the frame path of gradient_vanishing (issue 14): same outcomes and state as on_step ------


def _norms(fault_at: int, lasting: int) -> Any:
    """A noisy job's gradient norms: warm-up norms 20x the later ones, lognormal noise, odd
    spikes and dips, overflow skips (inf, nan), zero and negative norms, missing norms and
    losses; a short collapse (100x+) that passes before a block ends, then from ``fault_at`` one
    of ``lasting`` steps with a flat loss (with a falling loss on every fourth rank: learning)."""

    def value(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
        loss: float | None = 3.0 * math.exp(-step / 150) + 1.0 + rng.gauss(0, 0.03)
        g: float | None = (1.0 + 20.0 * math.exp(-step / 15)) * rng.lognormvariate(0, 0.3)
        assert g is not None and loss is not None
        if fault_at - 40 <= step < fault_at - 25:
            g *= 1e-3  # 15 collapsed steps: not a block, a normal norm ends the streak
        if fault_at <= step < fault_at + lasting:
            g *= 1e-3
            # A stall (flat loss) on most ranks; a model still fitting on every fourth.
            loss = (
                1.8 * 0.5 ** ((step - fault_at) / 20) if rank % 4 == 3 else 1.8 + rng.gauss(0, 0.03)
            )
        odd = rng.random()
        if odd < 0.01:
            g *= 50.0  # a spike: the level's update is clipped
        elif odd < 0.02:
            g *= 0.005  # one dip below the threshold
        elif odd < 0.04:
            g = rng.choice([math.inf, math.nan, -math.inf])  # fp16 overflow skips
        elif odd < 0.05:
            g = rng.choice([0.0, -0.0, -1.0])
        elif odd < 0.08:
            g = None
        odd = rng.random()
        if odd < 0.03:
            loss = None
        elif odd < 0.04:
            loss = math.nan
        return {"gradient_norm": g, "loss": loss}

    return value


@pytest.mark.parametrize("seed", range(6))
def test_the_vanishing_frame_path_finds_what_on_step_finds(seed: int) -> None:

    lasting = (60, 90, 10**9)[seed % 3]  # passes after firing, later, or never
    value = _norms(170 + 11 * seed, lasting)
    events = noisy_steps.noisy_job(seed, value, ranks=12, steps=400)
    found = assert_frames_match_scalar(GradientVanishing(), events)
    assert found > 0  # the stall was seen both ways, not merely nothing both ways


def test_the_vanishing_frame_path_with_a_tight_config() -> None:

    config = GradientVanishingConfig(
        ratio=20.0,
        persist_steps=4,
        warmup_steps=5,
        seed_steps=3,
        alpha=0.05,
        clip=2.0,
        loss_z=1.0,
        recover_ratio=5.0,
        recover_steps=2,
        refresh_s=5.0,
    )
    events = noisy_steps.noisy_job(99, _norms(90, 60), ranks=8, steps=250)
    assert assert_frames_match_scalar(GradientVanishing(config), events) > 0


def test_the_vanishing_frame_path_without_norms_or_losses() -> None:

    def no_loss(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
        values = _norms(150, 10**9)(rng, rank, step)
        values["loss"] = None
        return values

    def no_norm(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
        return {"loss": 2.0 + rng.gauss(0, 0.1)}

    rule = GradientVanishing(GradientVanishingConfig(warmup_steps=10, persist_steps=5))
    # No loss at all: a collapsed norm alone never fires (no outcome to match), but the
    # warm-up, the level and the streaks must still agree; no norm: nothing happens.
    for value in (no_loss, no_norm):
        events = noisy_steps.noisy_job(5, value, ranks=6, steps=250)
        assert assert_frames_match_scalar(rule, events) == 0
    # The same norms with their losses do fire.
    events = noisy_steps.noisy_job(5, _norms(150, 10**9), ranks=6, steps=250)
    assert assert_frames_match_scalar(rule, events) > 0
