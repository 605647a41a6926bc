"""``job_stopped``: a job whose ranks all went quiet without a clean end, with its root cause.

When one rank fails, the others follow within seconds: their collectives time out or lose
the connection, the launcher tears them down with SIGTERM. People want ONE alert that says
which rank failed first and why, the rest listed as consequences (the seeds compare the
ranks' log timestamps for this). So this detector keeps each rank's *fate*, the first record
that says its end: a crash, a fatal error, a stuck step, a termination, a clean end; and
when the whole job has gone quiet on the worker's clock (``on_quiet``, see
:meth:`Engine.advance_clock <rankwatch.streams.engine.Engine.advance_clock>`) it decides:

- ``settle_s`` of quiet is enough when some rank said how it ended (a failure or a
  termination): the job's end is known, only late records might still come;
- with no word from any rank, the job must be quiet for ``max(min_quiet_s, step_periods x
  typical step)``, or ``phase_quiet_s`` while it said it is evaluating or checkpointing, or
  ``startup_quiet_s`` before its pace is known (a first step that compiles for minutes) and
  after it came back from a stop (a relaunch loading its model).

The root cause is, in order of trust: the rank torchelastic's failure summary names, unless
that rank's own failure is a consequence class while another rank failed of its own (torchrun
names the first exit it observed: on a loaded machine a peer whose collective broke may exit
before the rank that raised, as in ``tests/producers/data/torchrun_gloo_peer_exits_first.log``);
the earliest failure that is not a consequence class; the earliest rank stuck outside a
collective; a rank that went silent without a word before the others failed (SIGKILL, the
kernel's OOM killer, a dead node); the earliest consequence. It fires once per attempt and
resolves if the job reports again. A job whose ranks all end cleanly never gets here.

State: per rank with a fate one short list; plain data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from rankwatch.schemas import Action, LogEvent, Severity, StepEvent
from rankwatch.streams.detectors._classified import classified
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.failures import CLASSES
from rankwatch.streams.detectors.liveness import StepPeriod
from rankwatch.streams.detectors.log_patterns import (
    CUDA_OOM,
    FATAL_ERROR,
    HANG,
    NCCL,
    NCCL_TIMEOUT_LABELS,
    clip,
)
from rankwatch.streams.detectors.stacks import parse_stack
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.frames import StepFrame

RULE = "job_stopped"

# A fate: [event time, kind, class id, consequence (0/1), error line, where, remediation].
_T, _KIND, _CLASS, _CONSEQ, _ERROR, _WHERE, _FIX = range(7)
# Kinds, by how much they say about the cause.
FAILED, STUCK, TERMINATED = "failed", "stuck", "terminated"
_SIGNAL = re.compile(r"\bSIG[A-Z]+\b")
_MAX_LISTED = 16  # ranks listed by name in a summary or in evidence


@dataclass(frozen=True, slots=True)
class JobStoppedConfig:
    """``job_stopped``: how long a job must be quiet on the worker's clock.

    ``settle_s``: once a rank said how it ended, 5 s of quiet lets the records of the others
    (their timeouts, their SIGTERM) arrive before the alert names the first. ``min_quiet_s``
    and ``step_periods``: with no word, 2 minutes and 20 typical steps, longer than a
    checkpoint save of most jobs; ``phase_quiet_s`` while the job said it evaluates or saves.
    """

    settle_s: float = 5.0
    min_quiet_s: float = 120.0
    step_periods: float = 20.0
    phase_quiet_s: float = 1800.0
    #: Before an attempt's second step its pace is unknown, and the first step may compile
    #: and autotune for many minutes: with no word, wait this long.
    startup_quiet_s: float = 1800.0
    severity: Severity = "critical"
    action: Action = "notify"

    def __post_init__(self) -> None:
        for key in ("settle_s", "min_quiet_s", "step_periods", "phase_quiet_s", "startup_quiet_s"):
            if not getattr(self, key) > 0:
                raise DetectorConfigError(f"{key} must be > 0, got {getattr(self, key)}")


class JobStopped:
    """Each rank's fate from its records; ``job_stopped`` once the whole job is quiet."""

    name: ClassVar[str] = "job_end"
    #: Its job state's tables keyed by rank: stored with their ranks, not in the job's head.
    rank_keyed: ClassVar[tuple[str, ...]] = ("fates",)
    rule: ClassVar[str] = RULE

    def __init__(self, config: JobStoppedConfig | None = None) -> None:
        self.config = config or JobStoppedConfig()

    def new_job_state(self) -> dict[str, Any]:
        # fates: rank -> fate list; root: the rank torchelastic's summary names (-1: none);
        # fired: the watermark when job_stopped fired (None: not fired).
        return {**StepPeriod.new(), "fates": {}, "root": -1, "fired": None}

    # -- records ----------------------------------------------------------------------------
    def on_log(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: LogEvent
    ) -> Iterable[Outcome]:
        lifecycle = event.lifecycle
        if lifecycle == "ended":
            return ()
        fates: dict[int, list[Any]] = state["fates"]
        mine = fates.get(rank.rank)
        if mine is not None and mine[_KIND] != STUCK:
            return ()  # a rank's end is its first word on it; a stuck rank may still fail
        now = event.epoch
        # A rank that has already stepped past this record survived it. Its later step may
        # have been applied before the record came (on_step clears a fate only after it):
        # a record sorted behind its rank's later steps by a topic merge, or held back.
        survived = rank.got_step_time > now
        if lifecycle == "stuck":
            if mine is None and not survived:
                stack = parse_stack(event.message)
                where = stack.user_frame or stack.where or ""
                waits = "waiting on its peers" if stack.waits_on_peers else "not in a collective"
                fates[rank.rank] = [now, STUCK, "", int(stack.waits_on_peers), waits, where, ""]
            return ()
        if lifecycle == "terminated":
            if mine is not None and not mine[_CONSEQ]:
                return ()  # stuck outside a collective, then torn down: the stuck step says more
            if survived:
                return ()
            signal = _SIGNAL.search(event.message)
            what = f"terminated by {signal.group(0) if signal else 'a signal'}"
            fates[rank.rank] = [now, TERMINATED, "terminated", 1, what, "", ""]
            return ()
        match, failure = classified(event)
        if failure is None and match is None:
            return ()
        if failure is not None:
            figures = failure.figures
            root = figures.get("root_cause_rank")
            if isinstance(root, int):
                state["root"] = root
            if failure.failure_class.id == "launcher_exit":
                return ()  # the launcher restating a child's failure: not this rank's end
            fate = [
                now,
                FAILED,
                failure.failure_class.id,
                int(failure.consequence),
                failure.error,
                failure.frame or "",
                failure.failure_class.remediation,
            ]
        else:
            assert match is not None
            if match.rule == HANG:
                return ()  # a watchdog's words: the hang rules' business
            consequence = match.rule == NCCL and match.label in NCCL_TIMEOUT_LABELS
            kind = {CUDA_OOM: "cuda_oom", FATAL_ERROR: "fatal"}.get(match.rule, "nccl")
            fate = [now, FAILED, kind, int(consequence), clip(match.line, 200), "", ""]
        if mine is not None and not mine[_CONSEQ] and fate[_CONSEQ]:
            return ()  # stuck outside a collective, then timed out: the stuck step says more
        if survived:
            return ()
        fates[rank.rank] = fate
        return ()

    def on_step(
        self, job: JobState, rank: RankState, state: dict[str, Any], event: StepEvent
    ) -> None:
        # Only the first rank to report a step moves the pace: the others skip the call.
        if event.step > state["ms"] and StepPeriod.observe(state, event):
            state["restarting"] = False
        fates = state["fates"]
        if not fates:  # the usual step: no rank has said how it ended
            return
        fate = fates.get(rank.rank)
        if fate is not None and (fate[_KIND] == STUCK or event.epoch > fate[_T]):
            # It stepped on: not stuck after all, or it survived what it reported.
            del fates[rank.rank]

    def on_frame(
        self, job: JobState, state: dict[str, Any], frame: StepFrame, events: Sequence[Any]
    ) -> None:
        """:meth:`on_step` of each row of a frame, in order. The step period and the fates
        are apart (neither reads the other), and a frame holds each rank once: its fate is
        judged on its one row."""
        if StepPeriod.observe_frame(state, frame, events):
            state["restarting"] = False
        fates = state["fates"]
        if not fates:  # the usual frame: no rank has said how it ended
            return
        for i, r in enumerate(frame.ranks.tolist()):
            fate = fates.get(r)
            if fate is not None and (fate[_KIND] == STUCK or events[i].epoch > fate[_T]):
                del fates[r]

    # -- decisions --------------------------------------------------------------------------
    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        fired = state["fired"]
        if fired is not None and job.watermark > fired:
            # Back after a stop: a relaunch that does not count its attempts loads its model
            # before its first step, as a new job does.
            state["fired"], state["restarting"] = None, True
            return (Resolution(RULE, None, now, "", "the job reports again"),)
        return ()

    def on_quiet(
        self, job: JobState, state: dict[str, Any], now: float, quiet_s: float
    ) -> Iterable[Outcome]:
        if state["fired"] is not None or not job.ranks or job.ended.issuperset(job.ranks):
            return ()
        cfg = self.config
        said = any(f[_KIND] != STUCK for f in state["fates"].values())
        if said:
            bound = cfg.settle_s
        else:
            bound = max(cfg.min_quiet_s, cfg.step_periods * state["period"])
            if job.phase != "train":
                bound = max(bound, cfg.phase_quiet_s)
            if state["period"] <= 0 or state.get("restarting"):
                bound = max(bound, cfg.startup_quiet_s)
        if quiet_s < bound:
            return ()
        return (self._decide(job, state, now, quiet_s),)

    def on_flush(self, job: JobState, state: dict[str, Any]) -> Iterable[Outcome]:
        """End of a replay or of an attempt: a job whose ranks said they failed stopped."""
        if state["fired"] is not None or job.ended.issuperset(job.ranks):
            return ()
        if not any(f[_KIND] in (FAILED, TERMINATED) for f in state["fates"].values()):
            return ()
        return (self._decide(job, state, job.watermark, 0.0),)

    def _decide(self, job: JobState, state: dict[str, Any], now: float, quiet: float) -> Finding:
        state["fired"] = job.watermark
        fates: dict[int, list[Any]] = state["fates"]
        root, how = _root_cause(job, fates, state["root"])
        last_step = max((rs.got_step for rs in job.ranks.values()), default=-1)
        period = state["period"]
        evidence: dict[str, Any] = {
            "last_step": last_step,
            "quiet_s": round(quiet, 3),
            "typical_step_s": round(period, 4),
            "ranks": len(job.ranks),
        }
        others = sorted(r for r in fates if r != root and fates[r][_KIND] != STUCK)
        silent = sorted(r for r in job.ranks if r not in fates and r not in job.ended)
        if root is not None:
            evidence["root_cause"] = _fate_evidence(job, root, fates.get(root), how)
            cause = _cause_text(job, root, fates.get(root), how)
        elif how == "alike":
            # Every rank that spoke reports the same consequence (each timed out in one
            # collective): none failed on its own, and which spoke first is chance.
            kinds = sorted({_short(f) for f in fates.values() if f[_KIND] != STUCK})
            cause = (
                f"{_ranks_text(others)} all reported {' / '.join(kinds)} and none failed on its "
                "own: a hang in a collective, or a rank that stopped inside it; compare the "
                "ranks' last steps and stacks"
            )
            others = []
        else:
            cause = (
                f"no rank said why: none has reported for {quiet:.0f} s (typical step "
                f"{period:.2f} s) and none ended cleanly; check whether the job is alive"
            )
        if others:
            evidence["consequences"] = {
                str(r): clip(fates[r][_ERROR], 160) for r in others[:_MAX_LISTED]
            }
        if silent:
            evidence["silent_ranks"] = silent[:64]
        evidence["last_words"] = {
            str(r): clip(f[_ERROR], 160) for r, f in sorted(fates.items())[:_MAX_LISTED]
        }
        at = f" at step {last_step}" if last_step >= 0 else ""
        fate = fates.get(root) if root is not None else None
        fix = f". {fate[_FIX]}".rstrip(".") + "." if fate is not None and fate[_FIX] else ""
        followed = ""
        if others:
            kinds = sorted({_short(fates[r]) for r in others})
            followed = f"; {_ranks_text(others)} followed ({', '.join(kinds)})"
        ranks = tuple(sorted({*([root] if root is not None else []), *others}))
        return Finding(
            rule=RULE,
            rank=None,
            severity=self.config.severity,
            event_time=now,
            step=last_step if last_step >= 0 else None,
            summary=f"Job stopped{at} without a clean end: {cause}{followed}{fix}",
            evidence=evidence,
            action=self.config.action,
            ranks=ranks,
        )


def _root_cause(job: JobState, fates: dict[int, list[Any]], named: int) -> tuple[int | None, str]:
    """The likely root-cause rank and how it was chosen."""
    failed = [(f[_T], r) for r, f in fates.items() if f[_KIND] == FAILED and not f[_CONSEQ]]
    if named >= 0 and (named in job.ranks or named in fates):
        mine = fates.get(named)
        if not (failed and mine is not None and mine[_KIND] == FAILED and mine[_CONSEQ]):
            return named, "launcher"
    if failed:
        return min(failed)[1], "failed"
    stuck = [(f[_T], r) for r, f in fates.items() if f[_KIND] == STUCK and not f[_CONSEQ]]
    if stuck:
        return min(stuck)[1], "stuck"
    # A rank that stopped without a word before the others failed: killed from outside.
    words = [f[_T] for f in fates.values() if f[_KIND] != STUCK]
    first_word = min(words) if words else float("inf")
    mute = [
        (rs.last_seen, r)
        for r, rs in job.ranks.items()
        if (r not in fates or fates[r][_KIND] == STUCK)
        and r not in job.ended
        and rs.last_seen < first_word
    ]
    if mute and words:
        return min(mute)[1], "silent"
    stuck = [(f[_T], r) for r, f in fates.items() if f[_KIND] == STUCK]
    if stuck:
        return min(stuck)[1], "stuck"
    consequences = [(f[_T], r) for r, f in fates.items() if f[_KIND] != STUCK]
    if len(consequences) > 1 and len({fates[r][_CLASS] for _, r in consequences}) == 1:
        return None, "alike"
    if consequences:
        return min(consequences)[1], "first"
    return None, ""


def _cause_text(job: JobState, rank: int, fate: list[Any] | None, how: str) -> str:
    where = job.label(rank)
    if how == "silent" or fate is None:
        return (
            f"{where} went silent first without a word (killed from outside: SIGKILL, the "
            "kernel's OOM killer, or its node died; check the node's kernel log)"
        )
    at = f" at {fate[_WHERE]}" if fate[_WHERE] else ""
    if fate[_KIND] == STUCK:
        return f"{where} was stuck first ({fate[_ERROR]}{at})"
    verb = "failed first" if how != "launcher" else "failed first (the launcher's root cause)"
    cls = CLASSES.get(fate[_CLASS])
    title = cls.title if cls is not None else str(fate[_CLASS]).replace("_", " ")
    return f"{where} {verb} ({clip(fate[_ERROR], 200)}{at}; {title})"


def _fate_evidence(job: JobState, rank: int, fate: list[Any] | None, how: str) -> dict[str, Any]:
    out: dict[str, Any] = {"rank": rank, "chosen_by": how}
    rs = job.ranks.get(rank)
    if rs is not None and rs.host:
        out["host"] = rs.host
    if fate is None:
        if rs is not None and rs.last_seen > float("-inf"):
            out["last_seen"] = datetime.fromtimestamp(rs.last_seen, UTC).isoformat()
        return out
    out.update(
        time=datetime.fromtimestamp(fate[_T], UTC).isoformat(),
        kind=fate[_KIND],
        failure_class=fate[_CLASS],
        error=clip(fate[_ERROR], 300),
    )
    if fate[_WHERE]:
        out["where"] = fate[_WHERE]
    if fate[_FIX]:
        out["remediation"] = fate[_FIX]
    return out


def _short(fate: list[Any]) -> str:
    if fate[_KIND] == TERMINATED:
        return str(fate[_ERROR])
    cls = CLASSES.get(fate[_CLASS])
    return cls.title if cls is not None else str(fate[_CLASS]).replace("_", " ")


def _ranks_text(ranks: list[int]) -> str:
    shown = ", ".join(map(str, ranks[:_MAX_LISTED])) + (", ..." if len(ranks) > _MAX_LISTED else "")
    return f"rank {shown}" if len(ranks) == 1 else f"ranks {shown}"


def detectors() -> list[Any]:
    return [JobStopped()]
