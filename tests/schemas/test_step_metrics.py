"""The step metric names are defined once, from StepEvent (schemas.STEP_METRICS), and every
place that needs them reads that definition instead of a copy."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from rankwatch.producers import RankwatchProducer
from rankwatch.schemas import STEP_METRICS, StepEvent
from rankwatch.sinks.storage import METRICS

ROOT = Path(__file__).resolve().parents[2]


def test_the_step_metrics_are_the_float_fields_of_step_event() -> None:
    assert STEP_METRICS == (
        "loss",
        "learning_rate",
        "gradient_norm",
        "gpu_memory_usage",
        "gpu_memory_allocated_mb",
        "gpu_memory_reserved_mb",
        "throughput_tokens_per_sec",
        "step_time_s",
        "data_time_s",
        "compute_time_s",
        "gpu_utilization",
    )
    # Every one is a field of the model and takes a float; no id or count is among them.
    event = StepEvent(job_id="j", rank=0, step=1, timestamp=0, **dict.fromkeys(STEP_METRICS, 1.5))
    assert all(getattr(event, name) == 1.5 for name in STEP_METRICS)
    assert not {"step", "rank", "world_size", "lr_warmup_steps"} & set(STEP_METRICS)


def test_log_step_takes_every_metric_as_a_keyword() -> None:
    params = inspect.signature(RankwatchProducer.log_step).parameters
    keywords = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert tuple(keywords) == STEP_METRICS


def test_storage_keeps_the_contracts_metrics_in_its_order() -> None:
    # gpu_utilization has no column yet (see sinks/storage/base.py): the rest, in order.
    assert tuple(m for m in STEP_METRICS if m != "gpu_utilization") == METRICS


def test_no_module_keeps_its_own_copy_of_the_names() -> None:
    """A tuple literal holding three or more metric names is a copy of the list."""
    names = "|".join(STEP_METRICS)
    copy = re.compile(rf'\(\s*(?:"(?:{names})",\s*){{3,}}')
    found = []
    for folder in ("schemas", "producers", "simulate", "sinks", "streams", "cli", "config", "ui"):
        for path in (ROOT / folder).rglob("*.py"):
            if copy.search(path.read_text()):
                found.append(str(path.relative_to(ROOT)))
    assert found == []
