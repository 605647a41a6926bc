"""Integrations: the Hugging Face bridge (without transformers) and the hand-written-loop helper.

The callbacks inside real Trainer runs: ``test_trainer_callbacks.py``."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rankwatch.producers.integrations import ComputeTimer, HFBridge, watch_step
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


class _Sleepy:
    """A module whose forward takes at least ``seconds`` (torch imported only when used)."""

    @staticmethod
    def make(seconds: float, fail_at: int = -1) -> Any:
        torch = pytest.importorskip("torch")

        class Sleepy(torch.nn.Module):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.linear = torch.nn.Linear(4, 1)
                self.calls = 0

            def forward(self, x: Any) -> Any:
                self.calls += 1
                if self.calls == fail_at:
                    raise RuntimeError("out of memory")
                time.sleep(seconds)
                return self.linear(x)

        return Sleepy()


def test_watch_step_with_a_model_reports_its_forward_and_the_wait_before_it() -> None:
    torch = pytest.importorskip("torch")
    model = _Sleepy.make(0.02)
    x = torch.ones(2, 4)
    with capture_events() as events:
        for step in range(3):
            time.sleep(0.03)  # waiting for the batch, between steps
            with watch_step(step, model=model) as record:
                loss = model(x).sum() + model(x).sum()  # two micro-batches: both counted
                loss.backward()
                record.loss = loss.item()
    assert len(events) == 3
    for event in events:
        assert isinstance(event, StepEvent)
        assert event.compute_time_s is not None and event.step_time_s is not None
        assert 2 * 0.02 <= event.compute_time_s <= event.step_time_s
    # At the first step the wait is counted from the block's start (the sleep came before it);
    # after that from the previous step's end.
    first, *rest = events
    assert isinstance(first, StepEvent) and first.data_time_s is not None
    assert first.data_time_s < 0.03
    assert all(isinstance(e, StepEvent) and (e.data_time_s or 0) >= 0.03 for e in rest)
    # The hooks are registered once, at the first step.
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1


def test_a_forward_that_raises_ends_its_span_and_a_failed_step_is_forgotten() -> None:
    torch = pytest.importorskip("torch")
    model = _Sleepy.make(0.0, fail_at=2)
    x = torch.ones(2, 4)
    timer = ComputeTimer(model)
    model(x)
    with pytest.raises(RuntimeError):
        model(x)  # the post-hook runs all the same (always_call): the span is closed
    model(x)
    compute, data = timer.end_step(started=0.0)
    assert compute is not None and compute > 0 and data is not None
    timer.close()
    assert not model._forward_pre_hooks and not model._forward_hooks

    model = _Sleepy.make(0.0, fail_at=1)
    with capture_events() as events:
        with pytest.raises(RuntimeError), watch_step(0, model=model):
            model(x)
        with watch_step(1, model=model):
            pass  # no forward in this step: nothing of the failed one is carried over
    (event,) = events
    assert isinstance(event, StepEvent) and event.step == 1 and event.compute_time_s is None


def test_the_timer_hooks_the_module_ddp_wraps(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    # DDP's own forward begins with collectives (its buffers are broadcast from rank 0): the
    # hooks go on the module inside, whose forward is this rank's work alone.
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        inner = _Sleepy.make(0.0)
        ddp = DistributedDataParallel(inner)
        with capture_events() as events, watch_step(0, model=ddp):
            ddp(torch.ones(2, 4)).sum().backward()
        assert len(inner._forward_pre_hooks) == 1 and not ddp._forward_pre_hooks
        (event,) = events
        assert isinstance(event, StepEvent) and event.compute_time_s is not None
    finally:
        dist.destroy_process_group()


def test_hf_bridge_reports_the_mean_forward_and_data_time_since_its_last_log() -> None:
    torch = pytest.importorskip("torch")
    model = _Sleepy.make(0.01)
    bridge = HFBridge()
    bridge.on_train_begin(model)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    with capture_events(job_id="hf") as events:
        for _ in range(2):
            model(torch.ones(2, 4))
            bridge.on_step_end(control)
        bridge.on_log(2, {"loss": 1.0})
        bridge.on_log(3, {"loss": 1.0})  # no step since the last log: no times
    first, second = events
    assert isinstance(first, StepEvent) and isinstance(second, StepEvent)
    assert first.compute_time_s is not None and first.compute_time_s >= 0.01
    assert first.data_time_s is not None  # the second step's wait (the first has none)
    assert second.compute_time_s is None and second.data_time_s is None
    bridge.on_train_end()
    assert not model._forward_pre_hooks


def test_hf_bridge_declares_the_trainers_schedule() -> None:
    from rankwatch.producers.integrations import hf_lr_schedule

    # transformers 5: a warmup_steps below 1 is a ratio of max_steps; 4.x had warmup_ratio.
    v5 = SimpleNamespace(lr_scheduler_type="cosine", warmup_steps=0.05, lr_scheduler_kwargs={})
    assert hf_lr_schedule(v5, 1000) == ("cosine", 50, 1000)
    v4 = SimpleNamespace(lr_scheduler_type="linear", warmup_steps=0, warmup_ratio=0.1)
    assert hf_lr_schedule(v4, 999) == ("linear", 100, 999)
    restarts = SimpleNamespace(lr_scheduler_type="cosine", lr_scheduler_kwargs={"num_cycles": 2})
    assert hf_lr_schedule(restarts, 10)[0] == "other"  # no longer one half cosine down
    wsd = SimpleNamespace(lr_scheduler_type="warmup_stable_decay", warmup_steps=10)
    assert hf_lr_schedule(wsd, 100) == ("other", 10, 100)
    bridge = HFBridge()
    args = SimpleNamespace(lr_scheduler_type="cosine", warmup_steps=20)
    with capture_events() as events:
        bridge.on_train_begin(None, args, SimpleNamespace(max_steps=400))
        bridge.on_log(1, {"loss": 2.0, "learning_rate": 5e-6})
    (event,) = events
    assert isinstance(event, StepEvent)
    assert (event.lr_schedule, event.lr_warmup_steps, event.lr_total_steps) == ("cosine", 20, 400)
    assert event.learning_rate == 5e-6


def test_torch_schedulers_declare_what_they_are() -> None:
    torch = pytest.importorskip("torch")
    from torch.optim import lr_scheduler as sched

    from rankwatch.producers.integrations import torch_lr_schedule

    def opt() -> Any:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    o = opt()
    warm = sched.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=100)
    cosine = sched.CosineAnnealingLR(o, T_max=900)
    assert torch_lr_schedule(sched.SequentialLR(o, [warm, cosine], milestones=[100])) == (
        "cosine",
        100,
        1000,
    )
    assert torch_lr_schedule(sched.CosineAnnealingLR(opt(), T_max=500)) == ("cosine", 0, 500)
    assert torch_lr_schedule(sched.CosineAnnealingLR(opt(), T_max=50), per_step=False) == (
        "cosine",
        None,
        None,
    )
    decay = sched.LinearLR(opt(), start_factor=1.0, end_factor=0.0, total_iters=300)
    assert torch_lr_schedule(decay) == ("linear", 0, 300)
    assert torch_lr_schedule(sched.PolynomialLR(opt(), total_iters=70)) == ("polynomial", 0, 70)
    assert torch_lr_schedule(sched.StepLR(opt(), step_size=10)) == ("other", None, None)
    assert torch_lr_schedule(sched.LambdaLR(opt(), lambda s: 1.0)) == ("other", None, None)
    assert torch_lr_schedule(object()) is None
