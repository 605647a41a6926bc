"""Enrichers: plain callables that add fields to an event dict on its way out.

An enricher takes the event dict (``kind`` is ``"step"`` or ``"log"``) and returns it, possibly
with fields added, like a structlog processor. They run on the calling (training) thread, in
order, so they must be cheap: reading a counter is fine, a network call is not. One that raises
is counted and logged once by the producer, and the event goes on without its fields.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rankwatch.producers._nvml import GpuUtilization

EventDict = dict[str, Any]
Enricher = Callable[[EventDict], EventDict]

_MB = 1024 * 1024


def static_fields(**fields: Any) -> Enricher:
    """An enricher adding the same fields to every event (unknown ones travel as ``extra``).

    >>> static_fields(cluster="eu-1")({"kind": "step", "step": 1})
    {'kind': 'step', 'step': 1, 'cluster': 'eu-1'}
    """

    def enrich(event: EventDict) -> EventDict:
        event.update(fields)
        return event

    return enrich


class GpuMemory:
    """Adds ``gpu_memory_allocated_mb``, ``gpu_memory_reserved_mb`` and ``gpu_memory_usage``
    (reserved, in percent of the device's capacity) to step events, from torch's allocator.

    It only looks at torch if the trainer already imported it (``sys.modules``): importing torch
    here would cost seconds, and a process that never imported torch has no CUDA tensors. Without
    torch or without CUDA the event passes unchanged. Values the caller set are kept.

    >>> GpuMemory()({"kind": "step", "step": 1})  # no CUDA here: unchanged
    {'kind': 'step', 'step': 1}
    """

    def __init__(self) -> None:
        self._capacity: dict[int, float] = {}

    def __call__(self, event: EventDict) -> EventDict:
        if event.get("kind") != "step" or "gpu_memory_allocated_mb" in event:
            return event
        torch = sys.modules.get("torch")
        if torch is None:
            return event
        cuda = torch.cuda
        if not cuda.is_available() or not cuda.is_initialized():
            return event
        device = cuda.current_device()
        reserved = float(cuda.memory_reserved(device))
        event["gpu_memory_allocated_mb"] = float(cuda.memory_allocated(device)) / _MB
        event["gpu_memory_reserved_mb"] = reserved / _MB
        capacity = self._capacity.get(device)
        if capacity is None:
            # The device's total memory never changes: ask once per device.
            capacity = float(cuda.get_device_properties(device).total_memory)
            self._capacity[device] = capacity
        if capacity > 0:
            event["gpu_memory_usage"] = min(100.0, 100.0 * reserved / capacity)
        return event


def default_enrichers() -> list[Enricher]:
    """What :func:`configure` uses when not told otherwise: GPU memory where torch has CUDA,
    and the GPU's utilization where NVML can read it
    (:class:`~rankwatch.producers._nvml.GpuUtilization`, on a reader thread of its own)."""
    return [GpuMemory(), GpuUtilization()]
