"""The Hugging Face Trainer with a cosine schedule whose scheduler is broken fires lr_schedule.

A real ``transformers.Trainer`` trains a tiny model on CPU with the rankwatch callback (as in
``test_trainer_callbacks.py``, whose model and data it reuses), ``lr_scheduler_type="cosine"`` and 6 warm-up
steps of 60, logging every 2 steps (sparse, as the Trainer logs). Broken: a Trainer whose
scheduler stops stepping once warm-up is over (the LR stays at its peak). The captured events
go through the built-in rules (``lr_schedule`` among them); the same Trainer unbroken fires
nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_trainer_callbacks import Regression, _dataset  # the same tiny model and data

from rankwatch.producers.integrations import rankwatch_hf_callback
from rankwatch.producers.testing import capture_events
from rankwatch.schemas import Alert, StepEvent
from rankwatch.streams import Engine
from rankwatch.streams.registry import builtin_detectors

torch = pytest.importorskip("torch", reason="torch is a test extra (rankwatch[train])")
transformers = pytest.importorskip("transformers", reason="a test extra (rankwatch[train])")

MAX_STEPS, WARMUP, PEAK = 60, 6, 0.01


class WarmUpOnlyTrainer(transformers.Trainer):  # type: ignore[misc,name-defined]
    """The fault: the Trainer's own cosine scheduler, stepped only while it warms up (a
    ``scheduler.step()`` moved under a warm-up condition)."""

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        step = scheduler.step
        warmup = self.args.get_warmup_steps(num_training_steps)

        def warm_up_only(*args: Any, **kwargs: Any) -> None:
            if scheduler.last_epoch < warmup:
                step(*args, **kwargs)

        scheduler.step = warm_up_only
        return scheduler


def _train(tmp_path: Path, trainer_cls: type[Any]) -> list[StepEvent]:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=8,
        learning_rate=PEAK,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = trainer_cls(
        model=Regression(),
        args=args,
        train_dataset=_dataset(256),
        callbacks=[rankwatch_hf_callback()],
    )
    with capture_events(job_id="hf-cosine", world_size=1) as events:
        trainer.train()
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == list(range(2, MAX_STEPS + 1, 2))
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert [e.learning_rate for e in steps] == pytest.approx(logged)
    declared = {"lr_schedule": "cosine", "lr_warmup_steps": WARMUP, "lr_total_steps": MAX_STEPS}
    if steps[0].lr_schedule is None:
        # A callback that does not declare the schedule yet: declared here as it would.
        steps = [e.model_copy(update=declared) for e in steps]
    assert {(e.lr_schedule, e.lr_warmup_steps, e.lr_total_steps) for e in steps} == {
        tuple(declared.values())
    }
    return steps


def _alerts(events: list[StepEvent]) -> list[Alert]:
    engine = Engine(builtin_detectors())  # lr_schedule is one of them
    return engine.process_many(events) + engine.flush()


def test_a_cosine_schedule_stepped_only_in_warm_up_fires_lr_schedule(tmp_path: Path) -> None:
    steps = _train(tmp_path, WarmUpOnlyTrainer)
    # The fault is real: after warm-up the Trainer logs its peak LR at every step.
    assert [e.learning_rate for e in steps if e.step > WARMUP] == pytest.approx(
        [PEAK] * ((MAX_STEPS - WARMUP) // 2)
    )
    firing = [a for a in _alerts(steps) if a.status == "firing"]
    assert [a.rule for a in firing] == ["lr_schedule"]
    [alert] = firing
    assert alert.scope == "job" and alert.ranks == [0]
    assert "stays at its peak" in alert.summary and "cosine" in alert.summary
    assert alert.evidence["peak"] == pytest.approx(PEAK, rel=0.01)


def test_the_same_trainer_unbroken_fires_nothing(tmp_path: Path) -> None:
    steps = _train(tmp_path, transformers.Trainer)
    assert steps[-1].learning_rate is not None and steps[-1].learning_rate < PEAK / 100
    assert _alerts(steps) == []
