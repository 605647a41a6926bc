"""The scenario suite as a test: every fault is caught within its bound, healthy runs and
benign look-alikes fire nothing, and a job-wide fault is one alert, at 8 to 256 ranks."""

from __future__ import annotations

import pytest

from rankwatch.simulate import SCENARIOS, JobSpec, simulate
from rankwatch.simulate.suite import format_report, run_scenario
from rankwatch.streams import Engine


@pytest.mark.parametrize("ranks", [8, 64])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str, ranks: int) -> None:
    result = run_scenario(name, ranks)
    assert result.passed, "\n" + format_report([result])


@pytest.mark.parametrize(
    "name", ["healthy", "nan_loss", "nccl_timeout", "straggler", "rank_silent", "memory_leak"]
)
def test_scenario_at_256_ranks(name: str) -> None:
    result = run_scenario(name, 256, steps=200, at_step=120)
    assert result.passed, "\n" + format_report([result])


def test_job_wide_nan_on_256_ranks_is_one_alert() -> None:
    result = run_scenario("nan_loss", 256, steps=200, at_step=120)
    firing = [d.alert for d in result.detections if d.alert is not None]
    assert result.passed, "\n" + format_report([result])
    assert len(firing) == 1
    # The NaN reaches the gradient norm too: at most one alert for that rule as well.
    assert result.firing <= 2
    alert = firing[0]
    assert alert.scope == "job" and alert.rule == "loss_explosion"
    assert alert.ranks == [] or len(alert.ranks) >= 128


def test_same_input_same_alerts() -> None:
    def alerts() -> list[str]:
        engine = Engine.with_builtin_detectors()
        spec = JobSpec(ranks=16, steps=220)
        events = simulate(
            spec, [SCENARIOS["memory_leak"](at_step=100)], duplicates=0.02, reorder=0.02
        )
        out = [a for e in events for a in engine.process(e)] + engine.flush()
        return [a.model_dump_json() for a in out]

    first = alerts()
    assert first and first == alerts()
