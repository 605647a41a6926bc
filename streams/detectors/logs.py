"""Log rules: crash, cuda_oom, fatal_error, nccl_error, nccl_timeout_burst and hang (from logs).

One detector, :class:`LogRulesDetector`, classifies each record once (see
:mod:`~rankwatch.streams.detectors.log_patterns`: a benign line costs about a microsecond) and
hands a match to its rule:

- ``crash``: any other failure of a rank (a Python traceback, a kernel assertion, a launcher
  exit, ...), classed by the failure catalogue (:mod:`~rankwatch.streams.detectors.failures`)
  with a remediation line; a rank-scope finding at once. Classes that are usually another
  rank's failure seen from here (a peer's lost connection, a collective's timeout, SIGTERM
  from the launcher) raise nothing of their own: ``job_stopped`` lists them as consequences;
- ``cuda_oom`` and ``fatal_error`` are one rank's own crash: a rank-scope finding at once.
  The OOM finding joins the log with the metrics: the rank's last few GPU memory readings,
  which this detector records from step events (it is a JobDetector too, for ``on_step``);
- NCCL and watchdog-hang records are gathered across ranks
  (:mod:`~rankwatch.streams.detectors.log_episodes`): several ranks within a minute are one
  job-scope ``nccl_timeout_burst`` / ``hang`` alert naming the likely culprit; a record that
  stays alone becomes ``nccl_error`` / a rank-scope ``hang``.

>>> from rankwatch.schemas import LogEvent
>>> from rankwatch.streams.engine import Engine
>>> engine = Engine(detectors())
>>> alerts = engine.process(LogEvent(job_id="j", rank=2, timestamp=5, level="ERROR",
...     message="NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus."))
>>> [(a.rule, a.ranks, a.evidence["xid"]) for a in alerts]
[('fatal_error', [2], 79)]
"""

from __future__ import annotations

import math
import struct
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import delitem, gt
from typing import Any, ClassVar, cast

import numpy as np

from rankwatch.schemas import Action, LogEvent, Severity, StepEvent
from rankwatch.streams.detectors._classified import classified
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.failures import Failure
from rankwatch.streams.detectors.log_episodes import EpisodeConfig, EpisodeGatherer
from rankwatch.streams.detectors.log_patterns import (
    CUDA_OOM,
    FATAL_ERROR,
    HANG,
    NCCL,
    XID_WARNING_CODES,
    LogMatch,
    clip,
    fatal_figures,
    nccl_figures,
    oom_figures,
)
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome
from rankwatch.streams.frames import StepFrame

__all__ = [
    "CrashConfig",
    "EpisodeConfig",
    "FatalErrorConfig",
    "LogRulesConfig",
    "LogRulesDetector",
    "OomConfig",
    "detectors",
]

CRASH = "crash"
_MEM_FIELDS = 4  # per reading: step, gpu_memory_usage %, allocated MB, reserved MB
#: One reading as the bytes of an ``array("d")`` (native C doubles, as the array stores them).
_pack_reading = struct.Struct(f"@{_MEM_FIELDS}d").pack
_MEM_METRICS = ("gpu_memory_usage", "gpu_memory_allocated_mb", "gpu_memory_reserved_mb")
#: One reading as a numpy item: a row of a (rows, 4) float64 block viewed as raw bytes.
_READING = np.dtype((np.void, _MEM_FIELDS * 8))
#: The oldest reading of a rank's array (what a trim deletes).
_OLDEST = slice(0, _MEM_FIELDS)
#: Runs an iterator to its end, keeping nothing (its items are None).
_drain = deque[Any](maxlen=0).extend


@dataclass(frozen=True, slots=True)
class OomConfig:
    """``cuda_oom``: severity, action, and how many memory readings the evidence shows."""

    severity: Severity = "critical"
    action: Action = "notify"
    memory_readings: int = 5  # enough to tell a leak (steady climb) from one huge batch

    def __post_init__(self) -> None:
        if not 0 <= self.memory_readings <= 32:
            raise DetectorConfigError(
                f"memory_readings must be in [0, 32], got {self.memory_readings}"
            )


@dataclass(frozen=True, slots=True)
class FatalErrorConfig:
    """``fatal_error``: severity and action (Xid 45/63/92 are recorded events: ``warning``)."""

    severity: Severity = "critical"
    action: Action = "notify"
    event_severity: Severity = "warning"


@dataclass(frozen=True, slots=True)
class CrashConfig:
    """``crash``: severity and action of a rank's crash that no other log rule names."""

    severity: Severity = "critical"
    action: Action = "notify"


def _nccl_default() -> EpisodeConfig:
    return EpisodeConfig(burst_rule="nccl_timeout_burst", lone_rule="nccl_error")


def _hang_default() -> EpisodeConfig:
    return EpisodeConfig(burst_rule="hang", lone_rule="hang")


@dataclass(frozen=True, slots=True)
class LogRulesConfig:
    """One sub-config per rule family; ``None`` turns that family off."""

    oom: OomConfig | None = field(default_factory=OomConfig)
    fatal: FatalErrorConfig | None = field(default_factory=FatalErrorConfig)
    crash: CrashConfig | None = field(default_factory=CrashConfig)
    nccl: EpisodeConfig | None = field(default_factory=_nccl_default)
    hang: EpisodeConfig | None = field(default_factory=_hang_default)
    max_line: int = 400  # characters of a log line kept in evidence

    def __post_init__(self) -> None:
        if self.max_line < 40:
            raise DetectorConfigError(f"max_line must be >= 40, got {self.max_line}")
        if self.nccl is not None and self.nccl.burst_rule == self.nccl.lone_rule:
            raise DetectorConfigError("nccl burst_rule and lone_rule must differ")


class LogRulesDetector:
    """Every built-in log rule, over one classification per record.

    It is a :class:`~rankwatch.streams.detectors.base.LogDetector` (``on_log``) and a
    :class:`~rankwatch.streams.detectors.base.JobDetector` (``on_step`` records memory
    readings for the OOM evidence; ``on_tick`` decides gathered NCCL/hang episodes in event
    time). Both see the same job-level slot.
    """

    name: ClassVar[str] = "log_rules"
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("mem", "nccl.ep.ranks", "hang.ep.ranks")

    def __init__(self, config: LogRulesConfig | None = None) -> None:
        self.config = cfg = config or LogRulesConfig()
        self._nccl = EpisodeGatherer(cfg.nccl, what="NCCL", name_culprit=True) if cfg.nccl else None
        self._hang = (
            EpisodeGatherer(cfg.hang, what="Hang", name_culprit=False) if cfg.hang else None
        )
        self._mem_len = (cfg.oom.memory_readings if cfg.oom else 0) * _MEM_FIELDS

    def new_job_state(self) -> dict[str, Any]:
        # mem: rank -> array('d') of the last readings, flattened; nccl/hang: episode dicts.
        return {"mem": {}, "nccl": {}, "hang": {}}

    # -- logs -----------------------------------------------------------------------------
    def on_log(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: LogEvent
    ) -> Iterable[Outcome]:
        match, failure = classified(event, self.config.max_line)
        if match is None:
            if failure is None or failure.consequence or self.config.crash is None:
                return ()
            return (self._crash(rank, event, failure, self.config.crash),)
        now = event.epoch
        # Only the record's own step: the rank's last step would depend on how the steps and
        # logs topics interleave, and the alert id (built from the step) must not, or live and
        # replayed alerts of the same record would get different ids.
        step = event.step
        if match.rule == CUDA_OOM and self.config.oom is not None:
            found = self._oom(rank, state, event, match, now, step, self.config.oom)
            return (_with_class(found, failure),)
        if match.rule == FATAL_ERROR and self.config.fatal is not None:
            found = self._fatal(rank, event, match, now, step, self.config.fatal)
            return (_with_class(found, failure),)
        if match.rule == NCCL and self._nccl is not None:
            figures = nccl_figures(event.message)
            return self._nccl.add(
                job, state["nccl"], rank.rank, now, match.label, match.line, figures, step
            )
        if match.rule == HANG and self._hang is not None:
            return self._hang.add(
                job, state["hang"], rank.rank, now, match.label, match.line, {}, step
            )
        return ()

    @staticmethod
    def _crash(rank: RankState, event: LogEvent, failure: Failure, cfg: CrashConfig) -> Finding:
        cls = failure.failure_class
        where = rank.label
        at = f" at {failure.frame}" if failure.frame else ""
        step = f" in step {event.step}" if event.step is not None else ""
        evidence: dict[str, Any] = {
            "error": failure.error,
            "line": failure.line,
            "exception": failure.exception_type,
            "frame": failure.frame,
        }
        if failure.cause_type:
            evidence["cause_exception"] = failure.cause_type
        if failure.figures:
            evidence.update(failure.figures)
        if rank.host:
            evidence["host"] = rank.host
        return _with_class(
            Finding(
                rule=CRASH,
                rank=rank.rank,
                severity=cfg.severity,
                event_time=event.epoch,
                step=event.step,
                summary=(
                    f"{where} crashed{step}: {clip(failure.error, 200)}{at} "
                    f"[{cls.title}]: {cls.remediation}"
                ),
                evidence=evidence,
                action=cfg.action,
            ),
            failure,
        )

    def _oom(
        self,
        rank: RankState,
        state: dict[str, Any],
        event: LogEvent,
        match: LogMatch,
        now: float,
        step: int | None,
        cfg: OomConfig,
    ) -> Finding:
        evidence: dict[str, Any] = {"line": match.line, "pattern": match.label}
        evidence.update(oom_figures(event.message))
        if rank.host:
            evidence["host"] = rank.host
        trend = _memory_trend(state["mem"].get(rank.rank))
        parts = [f"CUDA out of memory on rank {rank.rank}"]
        if rank.host:
            parts[0] += f" ({rank.host})"
        if step is not None:
            parts[0] += f" at step {step}"
        if "tried_to_allocate_gib" in evidence:
            parts.append(f"tried to allocate {evidence['tried_to_allocate_gib']:g} GiB")
        if trend:
            evidence["memory_trend"] = trend
            parts.append(_trend_text(trend))
        return Finding(
            rule=CUDA_OOM,
            rank=rank.rank,
            severity=cfg.severity,
            event_time=now,
            step=step,
            summary="; ".join(parts) + ": lower the batch or sequence length, or look for a leak",
            evidence=evidence,
            action=cfg.action,
        )

    def _fatal(
        self,
        rank: RankState,
        event: LogEvent,
        match: LogMatch,
        now: float,
        step: int | None,
        cfg: FatalErrorConfig,
    ) -> Finding:
        evidence: dict[str, Any] = {"line": match.line, "pattern": match.label}
        evidence.update(fatal_figures(event.message))
        if rank.host:
            evidence["host"] = rank.host
        where = rank.label
        severity = cfg.severity
        if "xid" in evidence:
            what = f"Xid {evidence['xid']} on {where}: {evidence['xid_meaning']}"
            if evidence["xid"] in XID_WARNING_CODES:
                severity = cfg.event_severity
        elif "signal" in evidence:
            what = f"{where} died of {evidence['signal']}: {clip(match.line, 160)}"
        elif match.label == "child_failed" and "root_cause_rank" in evidence:
            # torchelastic's summary: its lines are the launcher's, not the error itself.
            code = evidence.get("exitcode")
            what = (
                f"Fatal error on {where}: the launcher's failure summary names rank "
                f"{evidence['root_cause_rank']} as the root cause"
                + (f" (exitcode {code})" if code is not None else "")
            )
        else:
            what = f"Fatal error on {where}: {clip(match.line, 160)}"
        return Finding(
            rule=FATAL_ERROR,
            rank=rank.rank,
            severity=severity,
            event_time=now,
            step=step,
            summary=what,
            evidence=evidence,
            action=cfg.action,
        )

    # -- steps and ticks (JobDetector) ----------------------------------------------------
    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        mem_len = self._mem_len
        if not mem_len:
            return
        pct = event.gpu_memory_usage
        alloc = event.gpu_memory_allocated_mb
        reserved = event.gpu_memory_reserved_mb
        if pct is None or alloc is None or reserved is None:
            if pct is None and alloc is None and reserved is None:
                return
            nan = math.nan
            pct = nan if pct is None else pct
            alloc = nan if alloc is None else alloc
            reserved = nan if reserved is None else reserved
        readings = state["mem"].get(rank.rank)
        if readings is None:
            readings = state["mem"][rank.rank] = array("d")
        # One packed reading appended as bytes: array.extend converts item by item, and this
        # runs for every step event (the same doubles: pack and the array both use C doubles).
        readings.frombytes(_pack_reading(event.step, pct, alloc, reserved))
        if len(readings) > mem_len:
            del readings[:_MEM_FIELDS]

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: StepFrame, events: Sequence[Any]
    ) -> None:
        """``on_step`` over a frame's rows (each rank once): the readings of every row with a
        memory metric packed in one numpy pass (the same doubles ``on_step`` packs, NaN for a
        missing one), then appended to the ranks' arrays and the oldest readings trimmed."""
        mem_len = self._mem_len
        if not mem_len:
            return
        columns = [frame.metric(name) for name in _MEM_METRICS]
        given = [column for column in columns if column is not None]
        if not given:
            return
        present = given[0][1]
        for _, more in given[1:]:
            present = present | more
        rows = np.flatnonzero(present)
        if not len(rows):
            return
        block = np.empty((len(rows), _MEM_FIELDS), dtype=np.float64)
        # A step is a C double in on_step's pack too (correctly rounded: the same value).
        block[:, 0] = frame.steps[rows]
        for j, column in enumerate(columns, start=1):
            if column is None:
                block[:, j] = math.nan
            else:
                values, given_here = column
                block[:, j] = np.where(given_here[rows], values[rows], math.nan)
        # Each row's reading as one bytes object (a 32-byte void item each), made in C.
        chunks = cast("list[bytes]", block.view(_READING).ravel().tolist())
        mem: dict[int, array[float]] = state["mem"]
        ranks = frame.ranks[rows].tolist()
        try:
            arrays = list(map(mem.__getitem__, ranks))
        except KeyError:
            # Ranks seen for the first time (a job's first frames): their arrays made in row
            # order, so the dict's order is the one on_step gives it.
            arrays = []
            for r in ranks:
                readings = mem.get(r)
                if readings is None:
                    readings = mem[r] = array("d")
                arrays.append(readings)
        # on_step's append then trim, for each rank (every append first, then every trim: each
        # rank's array is its own, so the contents are the same), driven by map: one C call per
        # rank, where a Python loop over the ranks cost more than the appends themselves.
        _drain(map(array.frombytes, arrays, chunks))
        if min(map(len, arrays)) > mem_len:  # the steady state: every rank's readings full
            over: Iterable[array[float]] = arrays
        else:
            over = compress(arrays, map(gt, map(len, arrays), repeat(mem_len)))
        _drain(map(delitem, over, repeat(_OLDEST)))

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        out: list[Outcome] = []
        if self._nccl is not None and state["nccl"]:
            out.extend(self._nccl.tick(job, state["nccl"], now))
        if self._hang is not None and state["hang"]:
            out.extend(self._hang.tick(job, state["hang"], now))
        return out

    def on_flush(self, job: JobState, state: dict[str, Any]) -> Iterable[Outcome]:
        """End of input (``Engine.flush``): decide NCCL/hang episodes still gathering."""
        out: list[Outcome] = []
        if self._nccl is not None and state["nccl"]:
            out.extend(self._nccl.flush(job, state["nccl"]))
        if self._hang is not None and state["hang"]:
            out.extend(self._hang.flush(job, state["hang"]))
        return out


def _with_class(found: Finding, failure: Failure | None) -> Finding:
    """The failure class and its remediation in the evidence, where the catalogue knows it."""
    if failure is not None:
        cls = failure.failure_class
        found.evidence["failure_class"] = cls.id
        found.evidence["remediation"] = cls.remediation
    return found


def _memory_trend(readings: array[float] | None) -> list[dict[str, float]]:
    if not readings:
        return []
    out: list[dict[str, float]] = []
    names = ("gpu_memory_usage", "gpu_memory_allocated_mb", "gpu_memory_reserved_mb")
    for i in range(0, len(readings), _MEM_FIELDS):
        row: dict[str, float] = {"step": int(readings[i])}
        for j, key in enumerate(names, start=1):
            value = readings[i + j]
            if not math.isnan(value):
                row[key] = round(value, 2)
        out.append(row)
    return out


def _trend_text(trend: list[dict[str, float]]) -> str:
    for key, unit in (
        ("gpu_memory_usage", "%"),
        ("gpu_memory_allocated_mb", " MB"),
        ("gpu_memory_reserved_mb", " MB"),
    ):
        values = [row[key] for row in trend if key in row]
        if values:
            first, last = values[0], values[-1]
            return f"memory {first:g}{unit} -> {last:g}{unit} over the last {len(values)} steps"
    return ""


def detectors() -> list[Any]:
    """The log rules with their default thresholds (wired in by ``streams/registry.py``)."""
    return [LogRulesDetector()]
