"""The Hugging Face and Lightning callbacks inside real training runs (CPU, a tiny model).

Skipped only where the library is missing; ``make test`` installs both (``rankwatch[train]``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rankwatch.config import Settings
from rankwatch.producers import Identity, RankwatchProducer
from rankwatch.producers.integrations import rankwatch_hf_callback, rankwatch_lightning_callback
from rankwatch.producers.testing import capture_events
from rankwatch.schemas import StepEvent

torch = pytest.importorskip("torch", reason="torch is a test extra (rankwatch[train])")


class Regression(torch.nn.Module):  # type: ignore[misc]
    """What the Trainer expects of a model: a dict with ``loss`` when labels are given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: Any, labels: Any = None) -> dict[str, Any]:
        out = self.linear(x)
        loss = torch.nn.functional.mse_loss(out, labels) if labels is not None else None
        return {"loss": loss, "logits": out}


def _dataset(n: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    weights = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    rows = []
    for _ in range(n):
        x = torch.randn(4, generator=generator)
        rows.append({"x": x, "labels": x @ weights})
    return rows


def _hf_trainer(tmp_path: Path, max_steps: int, callback: Any, **more: Any) -> Any:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        **more,
        output_dir=str(tmp_path / "out"),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    return Trainer(model=Regression(), args=args, train_dataset=_dataset(256), callbacks=[callback])


def test_hf_trainer_streams_its_logged_steps(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    trainer = _hf_trainer(tmp_path, 6, rankwatch_hf_callback())
    with capture_events(job_id="hf") as events:
        trainer.train()
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(e.loss is not None and e.gradient_norm is not None for e in steps)
    assert all(e.learning_rate is not None for e in steps)
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert [e.loss for e in steps] == pytest.approx(logged)
    # The model's forward, timed by hooks the callback registered at on_train_begin: this
    # rank's own work, what straggler compares under DDP. The wait for data is known from the
    # second step (counted from the end of the previous one).
    assert all(e.compute_time_s is not None and e.compute_time_s > 0 for e in steps)
    assert all(e.data_time_s is not None for e in steps[1:])
    assert not trainer.model._forward_pre_hooks  # removed at on_train_end


def test_hf_trainer_declares_its_cosine_schedule(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    trainer = _hf_trainer(
        tmp_path, 8, rankwatch_hf_callback(), lr_scheduler_type="cosine", warmup_steps=2
    )
    with capture_events(job_id="hf") as events:
        trainer.train()
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 8
    assert {(e.lr_schedule, e.lr_warmup_steps, e.lr_total_steps) for e in steps} == {
        ("cosine", 2, 8)
    }
    # The learning rate the Trainer logged, on every step: up for the warm-up, then down.
    rates = [e.learning_rate for e in steps]
    assert rates == pytest.approx([h["learning_rate"] for h in trainer.state.log_history[:-1]])
    # (the rate each step used: the warm-up's two steps lead up to the peak at the third)
    assert rates[0] < rates[1] < rates[2] == pytest.approx(0.05)
    assert all(a > b for a, b in itertools.pairwise(rates[2:]))


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_hf_trainer_saves_and_stops_on_a_pause_job_alert(
    tmp_path: Path, topic_settings: Settings, pause_alert: Callable[[str, str], bytes]
) -> None:
    pytest.importorskip("transformers")
    from confluent_kafka import Producer

    producer = RankwatchProducer(Identity("hf-pause", 0), settings=topic_settings, enrichers=[])
    callback = rankwatch_hf_callback(producer, stop_on_pause_job=True)
    trainer = _hf_trainer(tmp_path, 1_000_000, callback)

    def pause_when_training() -> None:
        # Once the run has taken a few steps (its subscription is up by then), an alert asks
        # this job to pause, as the worker would publish it.
        while trainer.state.global_step < 20:
            time.sleep(0.05)
        kafka = Producer({"bootstrap.servers": topic_settings.bootstrap})
        kafka.produce(
            topic_settings.topics.alerts.name, pause_alert("pause-1", "hf-pause"), b"hf-pause"
        )
        kafka.flush(10)

    sender = threading.Thread(target=pause_when_training, daemon=True)
    sender.start()
    try:
        trainer.train()
    finally:
        producer.close(5)
    stopped_at = trainer.state.global_step
    assert 20 <= stopped_at < 1_000_000
    # Saved before stopping, so the run can resume from where it paused.
    assert (tmp_path / "out" / f"checkpoint-{stopped_at}").is_dir()


@pytest.mark.parametrize("with_schedule", [False, True])
def test_lightning_trainer_streams_every_batch(with_schedule: bool) -> None:
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = Regression()

        def training_step(self, batch: Any, _index: int) -> Any:
            return self.model(batch["x"], batch["labels"])["loss"]

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
            if not with_schedule:
                return optimizer
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": cosine, "interval": "step"},
            }

    loader = torch.utils.data.DataLoader(_dataset(64), batch_size=8)
    trainer = lightning.Trainer(
        max_steps=5,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rankwatch_lightning_callback()],
    )
    with capture_events(job_id="pl") as events:
        trainer.fit(Module(), loader)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5]
    assert all(e.loss is not None and e.learning_rate is not None for e in steps)
    declared = {(e.lr_schedule, e.lr_warmup_steps, e.lr_total_steps) for e in steps}
    if with_schedule:  # the scheduler's config, read at on_train_start
        assert declared == {("cosine", 0, 5)} and steps[-1].learning_rate < 0.05
    else:  # no scheduler: nothing declared, the learning rate as set
        assert declared == {(None, None, None)}
        assert all(e.learning_rate == 0.05 for e in steps)
    assert all(e.step_time_s is not None and e.step_time_s > 0 for e in steps)
    # The batch's start to on_before_backward (this rank's forward and loss), within the step.
    assert all(
        e.compute_time_s is not None and 0 < e.compute_time_s <= (e.step_time_s or 0) for e in steps
    )
    assert all(e.data_time_s is not None for e in steps[1:])
