"""A job's whole life through the engine with every built-in rule: restarts from a checkpoint,
evaluation passes, checkpoint saves. None is a fault; a fault after them is still caught."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from synth import T0, healthy_run

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.streams import Engine

RANKS = 16


def timing(rank: int, step: int, m: dict[str, Any]) -> None:
    """Compute and data times of a synchronous job (~0.9 s a step), seeded per rank and step."""
    rng = random.Random(step * 100_003 + rank)
    m["compute_time_s"] = 0.85 * (1 + rng.gauss(0, 0.02))
    m["data_time_s"] = 0.04 * rng.lognormvariate(0, 0.3)
    m["step_time_s"] = 0.95


def run(
    steps: int, *, start_step: int = 0, t0: float = T0, seed: int = 1, **kwargs: Any
) -> Iterator[StepEvent]:
    """Steps ``start_step`` .. ``start_step + steps - 1``, the first at ``t0``."""
    yield from healthy_run(
        ranks=RANKS,
        steps=steps,
        seed=seed,
        start_step=start_step,
        t0=t0 - start_step,
        fault=timing,
        **kwargs,
    )


def log(t: float, message: str, rank: int = 0, **fields: Any) -> LogEvent:
    return LogEvent(job_id="job-1", rank=rank, timestamp=t, level="INFO", message=message, **fields)


def startup(t: float, **fields: Any) -> Iterator[LogEvent]:
    """What a relaunched job logs before its first step: NCCL set-up, a minute of loading."""
    for r in range(RANKS):
        yield log(t + 0.01 * r, f"node{r // 8}:4242:4300 [{r % 8}] NCCL INFO Bootstrap : "
                  "Using eth0:10.0.0.3<0>", rank=r, **fields)  # fmt: skip
    for i in range(7):
        yield log(t + 10 * i, f"loading shard {i} of the model", **fields)


def alerts_of(events: Iterator[StepEvent | LogEvent]) -> list[Alert]:
    engine = Engine.with_builtin_detectors()
    return engine.process_many(events) + engine.flush()


def loud(alerts: list[Alert]) -> list[str]:
    return [a.summary for a in alerts if a.status == "firing" and a.severity != "info"]


def restarted_job(*, attempt: bool, fault_after: str | None = None) -> Iterator[Any]:
    """300 steps; down for 150 s; 70 s of start-up; resumes from the step-200 checkpoint."""
    first = {"attempt": 0} if attempt else {}
    again = {"attempt": 1} if attempt else {}
    for e in run(300):
        yield e.model_copy(update=first) if first else e
    t = T0 + 300 + 150
    yield from startup(t, **again)
    t += 70

    def nan_loss(rank: int, step: int, m: dict[str, Any]) -> None:
        timing(rank, step, m)
        if fault_after == "nan" and step >= 260:
            m["loss"] = math.nan

    for e in healthy_run(ranks=RANKS, steps=150, seed=2, start_step=200, t0=t - 200,
                         fault=nan_loss):  # fmt: skip
        yield e.model_copy(update=again) if again else e


def test_a_restart_from_a_checkpoint_fires_nothing_but_says_so_once() -> None:
    for attempt in (False, True):
        alerts = alerts_of(restarted_job(attempt=attempt))
        assert loud(alerts) == [], attempt
        info = [a for a in alerts if a.status == "firing"]
        assert [a.rule for a in info] == ["job_restarted"]
        evidence = info[0].evidence
        assert (evidence["attempt"], evidence["resumed_step"]) == (1, 200)
        assert (evidence["previous_last_step"], evidence["steps_lost"]) == (299, 100)
        assert 200 <= evidence["down_s"] <= 230
        assert "job restarted (attempt 1): resumed at step 200" in info[0].summary


def test_a_fault_after_a_restart_is_caught_with_an_id_of_its_own() -> None:
    alerts = alerts_of(restarted_job(attempt=False, fault_after="nan"))
    fired = [a for a in alerts if a.status == "firing" and a.severity != "info"]
    assert (fired[0].rule, fired[0].scope, fired[0].step) == ("loss_explosion", "job", 260)
    # The NaN loss makes the next overflow skip's norm a real one (a consequence).
    assert {a.rule for a in fired[1:]} <= {"gradient_explosion"}


def test_the_previous_attempts_incidents_resolve_at_the_restart() -> None:
    def events() -> Iterator[Any]:
        for e in run(100):
            yield e.model_copy(update={"loss": math.nan}) if e.step >= 80 else e
        yield from run(50, start_step=50, t0=T0 + 400, seed=3)

    alerts = alerts_of(events())
    nan = [a for a in alerts if a.rule == "loss_explosion"]
    assert [a.status for a in nan] == ["firing", "resolved"]
    assert "the job restarted (attempt 1)" in nan[1].summary


def eval_pass(t: float, minutes: float, *, hf: bool = True) -> Iterator[LogEvent]:
    """An evaluation of ``minutes`` minutes as the Hugging Face Trainer logs it, or announced
    with the phase field (what ``rw.phase("eval")`` sends)."""
    if hf:
        yield log(t, "***** Running Evaluation *****")
        yield log(t + 0.01, "  Num examples = 50000")
        yield log(t + 0.02, "  Batch size = 8")
    else:
        for r in range(RANKS):
            yield log(t + 0.001 * r, "rankwatch: phase eval begins", rank=r, phase="eval")
    for k in range(1, int(minutes * 3)):
        yield log(t + 20 * k, f"eval progress {k}/{int(minutes * 3)}")
    if not hf:
        for r in range(RANKS):
            yield log(t + 60 * minutes + 0.001 * r, "rankwatch: phase eval ends", rank=r,
                      phase="train")  # fmt: skip


def job_with_evals(*, hf: bool, minutes: float = 5.0) -> Iterator[Any]:
    """Three evaluation passes of ``minutes`` each, every 150 steps."""
    t, step = T0, 0
    for _ in range(3):
        yield from run(150, start_step=step, t0=t)
        t += 150
        step += 150
        yield from eval_pass(t, minutes, hf=hf)
        t += 60 * minutes + 1
    yield from run(150, start_step=step, t0=t)


def test_evaluation_passes_of_five_minutes_fire_nothing() -> None:
    for hf in (True, False):
        assert [a.summary for a in alerts_of(job_with_evals(hf=hf))] == [], hf


def test_an_evaluation_that_never_ends_is_a_hang_after_the_phase_bound() -> None:
    def events() -> Iterator[Any]:
        yield from run(150)
        yield from eval_pass(T0 + 150, 45.0)

    fired = [a for a in alerts_of(events()) if a.status == "firing"]
    assert [a.rule for a in fired] == ["hang"]
    assert fired[0].evidence["stalled_s"] > 1800


def test_a_checkpoint_save_of_three_minutes_logged_by_megatron_fires_nothing() -> None:
    def events() -> Iterator[Any]:
        yield from run(150)
        yield log(T0 + 150, "saving checkpoint at iteration     150 to /ckpt")
        for k in range(1, 9):
            yield log(T0 + 150 + 20 * k, f"writing shard {k}")
        yield log(T0 + 330, "  successfully saved checkpoint at iteration     150 to /ckpt")
        yield from run(150, start_step=150, t0=T0 + 331)

    assert alerts_of(events()) == []


def test_without_the_phase_the_same_pause_is_a_hang() -> None:
    # The counterpart of the tests above: a stall with chatter and no phase is what hang is for.
    def events() -> Iterator[Any]:
        yield from run(150)
        for k in range(1, 16):
            yield log(T0 + 150 + 20 * k, f"eval progress {k}/15")

    assert [a.rule for a in alerts_of(events()) if a.status == "firing"] == ["hang"]
