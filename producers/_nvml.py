"""``gpu_utilization`` on step events: the GPU's own busy share, read from NVML off the hot path.

NVML calls cost tens of microseconds, and on a GPU in trouble (an Xid error) they can block for
seconds, so the training thread never makes one: a small daemon thread, started at the first
step event where this rank's device is known, reads ``nvmlDeviceGetUtilizationRates(h).gpu``
once per ``interval_s`` and keeps the latest value; the enricher copies that value onto each
step event, and leaves the field out when it is older than ``max_age_s`` (the reader is stuck,
or this is a forked child whose reader did not survive the fork).

The rank's device is ``torch.cuda.current_device()`` where torch has initialised CUDA, else
``$LOCAL_RANK``, mapped to NVML's numbering through ``$CUDA_VISIBLE_DEVICES`` (NVML ignores it):
an index there, or a (possibly partial) ``GPU-`` UUID. Without the ``pynvml`` module (the
``nvidia-ml-py`` package), or where no device is known, the field is simply absent; an NVML
failure is logged once and turns the reader off.

>>> GpuUtilization()({"kind": "step", "step": 1})  # no CUDA device known here: unchanged
{'kind': 'step', 'step': 1}
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from rankwatch.producers._once import LogOnce, logger

EventDict = dict[str, Any]
_monotonic = time.monotonic


def rank_device(env: Mapping[str, str] | None = None) -> int | str | None:
    """This rank's GPU as NVML knows it: an NVML index, a ``GPU-`` UUID (prefix), or None.

    Call it on the training thread: torch's current device is per thread.

    >>> rank_device({"LOCAL_RANK": "1"})
    1
    >>> rank_device({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "4,5"})
    5
    >>> rank_device({"LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "GPU-8f2c"})  # bound to one GPU
    'GPU-8f2c'
    >>> rank_device({}) is None
    True
    """
    env = os.environ if env is None else env
    index: int | None = None
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = torch.cuda
        if cuda.is_available() and cuda.is_initialized():
            index = int(cuda.current_device())
    if index is None:
        local = env.get("LOCAL_RANK", "").strip()
        if not local.isdigit():
            return None
        index = int(local)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return index
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if len(entries) == 1:
        entry = entries[0]  # a launcher that binds one GPU per task: it is this rank's
    elif index < len(entries):
        entry = entries[index]
    else:
        return None
    if entry.isdigit():
        return int(entry)
    return entry if entry.startswith("GPU-") else None  # MIG slices report no utilization


class GpuUtilization:
    """Adds ``gpu_utilization`` (percent, NVML's ``utilization.gpu``) to step events.

    ``nvml``: the module to use (default: ``import pynvml`` on the reader thread). A value the
    caller set is kept. :meth:`close` stops the reader (the producer's ``close`` calls it).
    """

    def __init__(
        self,
        interval_s: float = 1.0,
        *,
        max_age_s: float | None = None,
        nvml: Any = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self.max_age_s = max(5.0, 5 * interval_s) if max_age_s is None else max_age_s
        self._nvml = nvml
        self._env = env
        # (percent, monotonic time of the read): one tuple, so the training thread never sees
        # a value paired with another read's time.
        self.latest: tuple[float, float] | None = None
        self.device: int | str | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._retry_at = 0.0
        self._once = LogOnce()
        #: Off for good: no NVML module, NVML failed, or closed.
        self.off = False

    def __call__(self, event: EventDict) -> EventDict:
        if event.get("kind") != "step" or "gpu_utilization" in event:
            return event
        if self._reader is None:
            # Looking for the device costs microseconds (the environment): once per interval.
            now = _monotonic()
            if not self.off and now >= self._retry_at:
                self._retry_at = now + self.interval_s
                self._start()  # the first read arrives within a step or two
            return event
        latest = self.latest
        if latest is not None and _monotonic() - latest[1] <= self.max_age_s:
            event["gpu_utilization"] = latest[0]
        return event

    def _start(self) -> None:
        device = rank_device(self._env)
        if device is None:
            return  # not known yet (CUDA not initialised): asked again at the next step
        self.device = device
        self._reader = threading.Thread(
            target=self._run, args=(device,), name="rankwatch-nvml", daemon=True
        )
        self._reader.start()

    def close(self) -> None:
        """Stop the reader thread; the field is absent from then on."""
        self.off = True
        self.latest = None
        self._stop.set()

    # ----- the reader thread -----------------------------------------------------------------

    def _run(self, device: int | str) -> None:
        nvml = self._nvml
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError:
                logger.debug("rankwatch: no pynvml module (nvidia-ml-py): no gpu_utilization")
                self.close()
                return
        try:
            nvml.nvmlInit()
            handle = self._handle(nvml, device)
        except Exception as error:
            self._fail("init", f"NVML could not open GPU {device!r}", error)
            return
        while not self._stop.is_set():
            try:
                percent = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except Exception as error:
                self._fail("read", f"NVML could not read GPU {device!r}", error)
                return
            if self._stop.is_set():
                return  # closed meanwhile: leave the field absent
            self.latest = (percent, _monotonic())
            self._stop.wait(self.interval_s)

    @staticmethod
    def _handle(nvml: Any, device: int | str) -> Any:
        if isinstance(device, int):
            return nvml.nvmlDeviceGetHandleByIndex(device)
        # CUDA_VISIBLE_DEVICES accepts a UUID's unambiguous prefix: match it as CUDA does.
        matches = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            if uuid.startswith(device):
                matches.append(handle)
        if len(matches) != 1:
            raise LookupError(f"{len(matches)} GPUs have a UUID starting {device}")
        return matches[0]

    def _fail(self, key: str, what: str, error: Exception) -> None:
        self._once.warning(f"nvml:{key}", "rankwatch: %s (%r): gpu_utilization is off", what, error)
        self.close()  # after the warning: whoever waits for ``off`` finds it logged
