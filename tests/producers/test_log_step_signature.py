"""The module-level ``rankwatch.producers.log_step`` has the signature of
``RankwatchProducer.log_step``, so a trainer's editor and mypy check its keywords too."""

from __future__ import annotations

import inspect

import pytest

import rankwatch.producers as rw
from rankwatch.producers import RankwatchProducer


def test_the_module_function_has_the_methods_signature() -> None:
    method = inspect.signature(RankwatchProducer.log_step)
    function = inspect.signature(rw.log_step)
    without_self = method.replace(parameters=list(method.parameters.values())[1:])
    assert function == without_self


def test_it_forwards_every_metric_to_the_configured_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rankwatch.producers._global as global_

    calls: list[tuple[int, dict[str, object]]] = []

    class Recorder:
        def log_step(self, step: int, **metrics: object) -> None:
            calls.append((step, metrics))

    monkeypatch.setattr(global_, "_producer", Recorder())
    rw.log_step(3, loss=1.5, gpu_utilization=97.0, tokens=12)
    ((step, metrics),) = calls
    assert step == 3 and metrics["loss"] == 1.5 and metrics["gpu_utilization"] == 97.0
    assert metrics["tokens"] == 12 and metrics["learning_rate"] is None
