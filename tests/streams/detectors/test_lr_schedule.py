"""lr_schedule: an LR off its declared schedule or off its peers' fires once, job scope, and
resolves; Hugging Face's own schedulers (stepped for real), warm-up, restarts, sparse logging,
float rounding between ranks and a restart from a checkpoint do not."""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable, Iterator
from typing import Any

import noisy_steps
import numpy as np
import pytest
from synth import T0

from rankwatch.schemas import Alert, StepEvent
from rankwatch.simulate import JobSpec, simulate
from rankwatch.simulate.scenarios import SCENARIOS
from rankwatch.streams import DetectorConfigError, Engine
from rankwatch.streams.detectors.lr_schedule import (
    JUDGED,
    LrSchedule,
    LrScheduleConfig,
    multiplier,
)
from rankwatch.streams.frames.testing import assert_job_frames_match_scalar

LrOf = Callable[[int, int], float]  # (rank, step) -> the LR the rank reports


def hf_lrs(name: str, warmup: int, total: int, peak: float = 3e-4, **kwargs: Any) -> list[float]:
    """The LR a real Hugging Face scheduler gives after each of ``total`` steps (index = step),
    as the Trainer logs it: ``scheduler.get_last_lr()`` after ``global_step`` steps."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = get_scheduler(
        name,
        opt,
        num_warmup_steps=warmup,
        num_training_steps=total,
        scheduler_specific_kwargs=kwargs,
    )
    out = [sched.get_last_lr()[0]]
    for _ in range(total):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def job(
    lr_of: LrOf,
    steps: Iterator[int] | range,
    *,
    ranks: int = 4,
    schedule: str | None = "cosine",
    warmup: int = 0,
    total: int | None = 1000,
    step_s: float = 1.0,
    job_id: str = "j",
    start: float = T0,
) -> Iterator[StepEvent]:
    """Every rank's step events, a synchronous job's: the same steps, a few ms apart."""
    declared: dict[str, Any] = {}
    if schedule is not None:
        declared = {"lr_schedule": schedule, "lr_warmup_steps": warmup, "lr_total_steps": total}
    for i, step in enumerate(steps):
        for r in range(ranks):
            yield StepEvent(
                job_id=job_id,
                rank=r,
                world_size=ranks,
                step=step,
                timestamp=start + i * step_s + 0.003 * r,
                learning_rate=lr_of(r, step),
                loss=2.0,
                **declared,
            )


def run(events: Iterator[StepEvent], config: LrScheduleConfig | None = None) -> list[Alert]:
    e = Engine([LrSchedule(config)])
    return e.process_many(events) + e.flush()


def firing(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.status == "firing"]


def curve(name: str, warmup: int, total: int | None, peak: float = 3e-4) -> LrOf:
    return lambda rank, step: peak * multiplier(name, step, warmup, total)


def test_lr_stuck_at_its_peak_after_warm_up_fires_once_for_the_job() -> None:
    # A scheduler.step() that ran only during warm-up: the LR stays at 3e-4 from step 50 on.
    good = curve("cosine", 50, 1000)
    alerts = run(job(lambda r, s: good(r, min(s, 50)), range(1, 601), warmup=50))
    [a] = firing(alerts)
    assert a.rule == "lr_schedule" and a.scope == "job" and a.ranks == [0, 1, 2, 3]
    assert a.evidence["kind"] == "schedule" and a.evidence["schedule"] == "cosine"
    assert "every rank" in a.summary and "stays at its peak" in a.summary
    assert "scheduler.step()" in a.summary
    # Off once the cosine has come down by more than the slack (~13%): about a quarter in.
    assert a.step is not None and 250 < a.step < 300
    assert a.evidence["peak"] == pytest.approx(3e-4, rel=0.01)


@pytest.mark.parametrize(
    ("observed", "words"),
    [
        (curve("cosine", 50, 500), "decays faster"),  # the scheduler's total is half the run's
        (curve("cosine", 50, 3000), "decays slower"),
        (lambda r, s: 0.0 if s >= 200 else curve("cosine", 50, 1000)(r, s), "is 0"),
        (
            lambda r, s: curve("cosine", 50, 1000)(r, s if s < 400 else max(50, 800 - s)),
            "goes up",
        ),
    ],
)
def test_an_lr_off_the_declared_curve_fires_and_says_how(observed: LrOf, words: str) -> None:
    [a] = firing(run(job(observed, range(1, 801), warmup=50)))
    assert words in a.summary, a.summary


def test_a_restarts_schedule_that_holds_still_fires() -> None:
    # The cycles are not declared: a restarts schedule is judged on moving at all.
    lrs = hf_lrs("cosine_with_restarts", 40, 600, num_cycles=3)
    stuck: LrOf = lambda r, s: lrs[min(s, 41)]  # noqa: E731
    [a] = firing(run(job(stuck, range(1, 601), schedule="cosine_with_restarts", warmup=40)))
    assert a.step == 42 and "stays at its peak" in a.summary


def test_an_lr_back_on_its_schedule_resolves_the_incident() -> None:
    good = curve("linear", 10, 1000)
    # Stuck between steps 300 and 600 (a scheduler skipped, then stepped to catch up).
    stuck: LrOf = lambda r, s: good(r, 300 if 300 <= s < 600 else s)  # noqa: E731
    alerts = run(job(stuck, range(1, 900), schedule="linear", warmup=10))
    assert [a.status for a in alerts] == ["firing", "resolved"]
    assert "follows its declared schedule again" in alerts[1].summary


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("constant", {}),
        ("constant_with_warmup", {}),
        ("linear", {}),
        ("cosine", {}),
        ("cosine_with_restarts", {"num_cycles": 3}),
        ("polynomial", {}),
        ("inverse_sqrt", {}),
    ],
)
def test_hugging_face_schedulers_stepped_for_real_fire_nothing(
    name: str, kwargs: dict[str, Any]
) -> None:
    lrs = hf_lrs(name, 40, 600, **kwargs)
    assert not run(job(lambda r, s: lrs[s], range(1, 601), schedule=name, warmup=40, total=600))


def test_a_decay_to_a_min_lr_and_an_lr_logged_before_the_step_are_on_schedule() -> None:
    # Declared cosine; the trainer decays to 10% of the peak (cosine_with_min_lr) and logs the
    # LR before its scheduler.step() (one step behind Hugging Face's convention).
    lrs = hf_lrs("cosine_with_min_lr", 30, 500, min_lr_rate=0.1)
    events = job(lambda r, s: lrs[s - 1], range(1, 501), warmup=30, total=500)
    assert not run(events)


def test_warm_up_alone_and_a_constant_schedule_are_not_stuck() -> None:
    assert not run(job(curve("cosine", 500, 1000), range(1, 400), warmup=500))
    assert not run(job(lambda r, s: 1e-4, range(1, 400), schedule="constant", warmup=100))


def test_without_a_declaration_or_with_other_only_the_ranks_are_compared() -> None:
    frozen: LrOf = lambda r, s: 3e-4  # noqa: E731
    assert not run(job(frozen, range(1, 800), schedule=None))
    assert not run(job(frozen, range(1, 800), schedule="other"))
    assert not run(job(frozen, range(1, 800), schedule="warmup_stable_decay"))  # unknown name
    # Declared linear without its total steps: the curve cannot be known.
    assert not run(job(frozen, range(1, 800), schedule="linear", total=None))


def test_sparse_logging_is_judged_at_the_steps_logged() -> None:
    # The Trainer's logging_steps=50: a report every 50 steps of 20 s each.
    good = curve("cosine", 100, 5000)
    steps = range(50, 5001, 50)
    assert not run(job(good, steps, warmup=100, total=5000, step_s=20.0))
    stuck = firing(run(job(lambda r, s: good(r, 100), steps, warmup=100, total=5000, step_s=20)))
    [a] = stuck
    assert a.step is not None and a.step % 50 == 0


def test_a_rank_with_another_lr_is_named_alone() -> None:
    good = curve("cosine", 20, 1000)
    alerts = run(
        job(lambda r, s: good(r, s) * (2 if r == 3 else 1), range(1, 200), ranks=8, warmup=20)
    )
    [a] = firing(alerts)
    assert a.ranks == [3] and a.evidence["kind"] == "ranks"
    assert "rank 3 disagree" in a.summary and "7 peers' median" in a.summary
    assert "different config" in a.summary


def test_an_odd_rank_that_stops_reporting_keeps_no_incident_open() -> None:
    good = curve("cosine", 20, 1000)
    events = job(lambda r, s: good(r, s) * (2 if r == 3 else 1), range(1, 300), warmup=20)
    alerts = run(e for e in events if e.rank != 3 or e.step < 100)  # rank 3 crashed
    assert [(a.status, a.ranks) for a in alerts] == [("firing", [3]), ("resolved", [3])]


def test_two_ranks_that_disagree_are_both_named() -> None:
    alerts = run(job(lambda r, s: 1e-4 * (1 + r), range(1, 50), ranks=2, schedule=None))
    [a] = firing(alerts)
    assert a.ranks == [0, 1] and "no majority" in a.summary


def test_float_rounding_between_ranks_is_agreement() -> None:
    good = curve("cosine", 20, 1000)
    # float32 vs float64 arithmetic of the same schedule: ~1e-7 apart.
    assert not run(job(lambda r, s: good(r, s) * (1 + 1e-7 * r), range(1, 300), ranks=8, warmup=20))


def test_ranks_that_agree_again_resolve_and_one_odd_step_is_nothing() -> None:
    good = curve("cosine", 20, 1000)
    odd: LrOf = lambda r, s: good(r, s) * (1.5 if r == 1 and 50 <= s < 80 else 1)  # noqa: E731
    alerts = run(job(odd, range(1, 200), ranks=4, warmup=20))
    assert [(a.status, a.ranks) for a in alerts] == [("firing", [1]), ("resolved", [1])]
    blip: LrOf = lambda r, s: good(r, s) * (1.5 if r == 1 and s == 50 else 1)  # noqa: E731
    assert not run(job(blip, range(1, 200), ranks=4, warmup=20))


def test_a_restart_from_a_checkpoint_starts_fresh() -> None:
    good = curve("cosine", 50, 1000)
    # Attempt 0 runs to step 450 stuck at its peak (fires); the job is relaunched from the
    # checkpoint of step 300 with the scheduler fixed: its state starts again, nothing fires.
    first = job(lambda r, s: good(r, 50), range(1, 451), warmup=50)
    second = job(good, range(300, 700), warmup=50, start=T0 + 2000)
    alerts = run(iter([*first, *second]))
    assert [a.status for a in alerts] == ["firing", "resolved"]
    assert "restarted" in alerts[1].summary
    # A healthy job resumed late in its decay anchors its peak where it resumes.
    late = job(good, range(700, 1000), warmup=50)
    assert not run(late)


def test_configs_are_validated() -> None:
    for bad in (
        {"tolerance": 0.0},
        {"peak_tolerance": 1.0},
        {"floor_ratio": 1.0},
        {"rank_tolerance": 2.0},
        {"off_reports": 0},
        {"mismatch_reports": 63},
        {"recover_reports": 1.5},
        {"refresh_s": math.inf},
        {"severity": "loud"},
    ):
        with pytest.raises(DetectorConfigError, match=next(iter(bad))):
            LrScheduleConfig(**bad)


def test_state_is_small_plain_data() -> None:
    e = Engine([LrSchedule()])
    e.process_many(job(curve("cosine", 50, 1000), range(1, 300), ranks=64, warmup=50))
    state = e.job_state("j").slots["lr_schedule"]
    assert len(pickle.dumps(state)) / 64 < 400
    assert pickle.loads(pickle.dumps(state)) == state


# -- the frame path (issue 14): the same state and tick outcomes as on_step -------------------


def _declared(events: list[StepEvent], declare: Callable[[int], dict[str, Any]]) -> list[StepEvent]:
    """``events`` with what ``declare(step)`` declares (lr_schedule, warm-up, total)."""
    return [e.model_copy(update=declare(e.step)) for e in events]


def _noisy_lrs(name: str, warmup: int, total: int, seed: int) -> noisy_steps.Values:
    """A declared curve with faults: rank 5 on an LR of its own (steps 100-160), every rank's
    twice the curve (steps 180-220), then stuck (steps 230-290), an LR of 0 on rank 2 (steps
    300-310); single reports off, float rounding between ranks, missing LRs, and losses that
    do not matter. (The ranks of a noisy job drift apart by up to 20% of their steps: a fault
    of one rank is often judged stale, so the faults of every rank are what fire.)"""

    def value(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
        lr = 3e-4 * multiplier(name, step, warmup, total)
        if rank == 5 and 100 <= step < 160:
            lr *= 1.5
        if 180 <= step < 220:
            lr *= 2.0
        if 230 <= step < 290:
            lr = 3e-4 * multiplier(name, 230, warmup, total)
        if rank == 2 and 300 <= step < 310:
            lr = 0.0
        odd = rng.random()
        if odd < 0.1:
            lr *= 1 + rng.uniform(-1e-6, 1e-6)
        elif odd < 0.12:
            lr *= 3.0  # one report off: a streak that ends before it fires
        return {"learning_rate": None if rng.random() < 0.03 else lr, "loss": rng.gauss(2, 0.1)}

    return value


@pytest.mark.parametrize("seed", range(7))
def test_the_frame_path_leaves_the_state_and_ticks_on_step_leaves(seed: int) -> None:
    name = sorted(JUDGED)[seed]
    warmup, total = 20 + seed, 400

    def declare(step: int) -> dict[str, Any]:
        # The declaration changes: none for a while, "other", a total missing, back.
        if 320 <= step < 340:
            return {}
        if 340 <= step < 350:
            return {"lr_schedule": "other"}
        if 350 <= step < 360:
            return {"lr_schedule": name, "lr_warmup_steps": warmup}
        return {"lr_schedule": name, "lr_warmup_steps": warmup, "lr_total_steps": total}

    events = noisy_steps.noisy_job(seed, _noisy_lrs(name, warmup, total, seed), steps=400)
    events = _declared(events, declare)
    assert assert_job_frames_match_scalar(LrSchedule(), events) > 0
    tight = LrScheduleConfig(mismatch_reports=1, off_reports=1, recover_reports=1, refresh_s=5)
    assert assert_job_frames_match_scalar(LrSchedule(tight), events) > 0
    # Ticks far apart: frames of many steps.
    assert assert_job_frames_match_scalar(LrSchedule(tight), events, tick_interval_s=7) > 0
    undeclared = _declared(events, lambda step: {"lr_schedule": None})
    assert_job_frames_match_scalar(LrSchedule(), undeclared)


@pytest.mark.parametrize("seed", range(3))
def test_a_small_job_is_judged_on_its_lists_as_on_its_columns(seed: int) -> None:
    # Under LISTS_BELOW ranks a tick reads the entries' live lists (numpy costs more than the
    # loop there): the same ticks on the columns give the same outcomes and state. The job's
    # ranks disagree at times (noisy LRs) and leave the declared curve.
    name = sorted(JUDGED)[seed]
    events = noisy_steps.noisy_job(seed, _noisy_lrs(name, 20, 400, seed), steps=400)
    events = _declared(
        events, lambda step: {"lr_schedule": name, "lr_warmup_steps": 20, "lr_total_steps": 400}
    )
    tight = LrScheduleConfig(mismatch_reports=1, off_reports=1, recover_reports=1, refresh_s=5)
    found = 0
    for config in (LrScheduleConfig(), tight):
        columns = LrSchedule(config)
        columns.lists_below = 0
        found += assert_job_frames_match_scalar(LrSchedule(config), events, frames_rule=columns)
    assert found > 0


@pytest.mark.parametrize("name", ["healthy", "straggler", "rank_silent"])
def test_the_frame_path_over_simulated_jobs(name: str) -> None:
    spec = JobSpec(job_id=f"sim-{name}", ranks=8, steps=200, seed=5)
    scenario = SCENARIOS[name](at_step=100, rank=3)
    simulated = simulate(spec, [scenario], duplicates=0.02, reorder=0.02)
    events = sorted(
        (e for e in simulated if isinstance(e, StepEvent)), key=lambda e: (e.epoch, e.rank)
    )
    assert_job_frames_match_scalar(LrSchedule(), events)
    # Declared (the simulated curve is a cosine to 10% of its peak, warm-up one step early).
    events = _declared(
        events,
        lambda step: {"lr_schedule": "cosine", "lr_warmup_steps": 50, "lr_total_steps": 200},
    )
    assert_job_frames_match_scalar(LrSchedule(), events)


def test_the_frame_path_at_the_edges() -> None:
    good = curve("cosine", 10, 100)
    rows = list(job(good, range(1, 60), ranks=6, warmup=10, total=100))
    # A rank's first step alone; no LR anywhere; the same step twice (a rank's report again,
    # and a whole step again); a rank that joins late.
    first = rows[:1]
    no_lr = [e.model_copy(update={"learning_rate": None}) for e in rows[:30]]
    twice = [e for e in rows[:120] for _ in range(1 + (e.step % 7 == 0))]
    repeated = rows[:60] + rows[54:60] + rows[60:]
    late = [e for e in rows if e.rank != 4 or e.step > 30]
    for events in (first, no_lr, twice, repeated, late):
        assert_job_frames_match_scalar(LrSchedule(), events)
    # Ranks in step (a synchronous job), rank 1 on an LR of its own for a while, then a rank
    # with a schedule of its own (declared or not): both alerts fire and resolve, both ways.
    odd = list(
        job(
            lambda r, s: good(r, s) * (1.5 if r == 1 and 30 <= s < 50 else 1.0),
            range(1, 100),
            ranks=6,
            warmup=10,
            total=100,
            schedule=None,
        )
    )
    assert assert_job_frames_match_scalar(LrSchedule(), odd) >= 2
    assert assert_job_frames_match_scalar(LrSchedule(), _declared(odd, lambda s: {})) >= 2
    declared = _declared(
        odd, lambda s: {"lr_schedule": "cosine", "lr_warmup_steps": 10, "lr_total_steps": 100}
    )
    assert assert_job_frames_match_scalar(LrSchedule(), declared) >= 2


def test_a_tick_finds_the_compared_step_and_agreement_as_its_loop_does() -> None:
    # A tick's shortcuts against what they stand for: the step counts against a Counter of
    # both reports, and "every rank one LR" against the loop's values.count(median) test,
    # on ranks a step or more apart, values one ulp apart, zeros of both signs, and values
    # whose mean of two overflows.
    from collections import Counter
    from statistics import median

    from rankwatch.streams.detectors.lr_schedule import _agree, _counts_after

    rng = random.Random(3)
    picks = [[3e-4], [3e-4, math.nextafter(3e-4, 1.0)], [0.0, -0.0], [1.7e308], [1e-300, 0.0]]
    agreed = 0
    for _ in range(3000):
        n = rng.randrange(2, 12)
        base = rng.randrange(0, 300)
        steps = [base + rng.choice([0, 0, 0, 1, 2, rng.randrange(9)]) for _ in range(n)]
        prev = [s - rng.choice([1, 1, 2]) for s in steps]
        pick = rng.choice(picks)
        rows = [
            [s, rng.choice(pick), p, rng.choice(pick)] for s, p in zip(steps, prev, strict=True)
        ]
        lrs = [row[1] for row in rows]
        last = base - rng.randrange(-2, 3)
        reported = Counter(steps) + Counter(prev)
        want = {s: k for s, k in reported.items() if s > last}
        s_arr, p_arr = np.array(steps, dtype=np.int64), np.array(prev, dtype=np.int64)
        lr_arr = np.array(lrs, dtype=np.float64)
        plr_arr = np.array([row[3] for row in rows], dtype=np.float64)
        assert _counts_after(s_arr, p_arr, last) == want
        for step in {*steps, *prev}:
            values = [
                row[1] if row[0] == step else row[3] for row in rows if step in (row[0], row[2])
            ]
            if len(values) < 2:
                continue
            got = _agree(s_arr, p_arr, lr_arr, plr_arr, step)
            if got:  # never where the loop finds a rank off the median
                assert values.count(median(values)) == len(values)
                agreed += 1
            elif pick != [1.7e308]:  # and only misses it where the mean of two overflows
                assert values.count(median(values)) != len(values)
    assert agreed > 500
