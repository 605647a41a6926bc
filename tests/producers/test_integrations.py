"""Integrations: the Hugging Face bridge (without transformers) and the hand-written-loop helper.

The callbacks inside real Trainer runs: ``test_trainer_callbacks.py``."""

from __future__ import annotations

from types import SimpleNamespace

from rankwatch.producers.integrations import HFBridge, watch_step
from rankwatch.producers.testing import capture_events
from rankwatch.schemas import StepEvent


def test_hf_bridge_maps_trainer_logs_and_stops_on_pause() -> None:
    bridge = HFBridge()
    with capture_events(job_id="hf") as events:
        bridge.on_log(10, {"loss": 2.0, "grad_norm": 0.5, "learning_rate": 1e-5, "epoch": 0.1})
        bridge.on_log(11, {"eval_loss": 1.0})  # no training metric: nothing sent
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, StepEvent) and event.step == 10 and event.gradient_norm == 0.5

    class Flag:
        def is_set(self) -> bool:
            return True

    bridge.pause = SimpleNamespace(is_set=Flag().is_set)  # type: ignore[assignment]
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    bridge.on_step_end(control)
    assert control.should_save and control.should_training_stop


def test_watch_step_times_a_hand_written_step() -> None:
    with capture_events() as events:
        for step in range(3):
            with watch_step(step, data_time_s=0.001) as record:
                record.loss = 1.0 / (step + 1)
                record.tokens = 1000
    assert [e.step for e in events] == [0, 1, 2]
    assert all(isinstance(e, StepEvent) and (e.step_time_s or 0) >= 0 for e in events)
