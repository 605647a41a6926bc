"""``job_stopped``: a job that went quiet without a clean end, with its first failure named.

The records are what real torchrun jobs on gloo print (``tests/producers/data/`` has whole
logs of such runs); the worker's clock is driven by hand here, as the batch runtime drives it
with the wall clock and replay with recorded times.
"""

from __future__ import annotations

import random
from typing import Any

import noisy_steps
import pytest
from real_logs import shipped_alerts

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.streams.detectors.job_end import JobStopped
from rankwatch.streams.engine import Engine
from rankwatch.streams.frames.testing import assert_job_frames_match_scalar

T0 = 1_700_000_000.0
RANKS = 4

# Rank 3's own traceback (torch 2.x, gloo, CPU): a shape mismatch in the user's forward.
SHAPES = """Traceback (most recent call last):
  File "/job/train.py", line 41, in <module>
    main()
  File "/job/train.py", line 33, in main
    out = model(x)
  File "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1773, in _wrapped_call_impl
    return self._call_impl(*args, **kwargs)
  File "/job/train.py", line 18, in forward
    return x @ self.w
RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x8 and 16x4)"""
# What its peers then raise from the all-reduce (gloo's wording).
PEER = """Traceback (most recent call last):
  File "/job/train.py", line 35, in main
    dist.all_reduce(t)
  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 2806, in all_reduce
    work.wait()
RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500"""


def _steps(
    engine: Engine, upto: int, period: float = 0.5, skip: frozenset[int] = frozenset()
) -> list[Alert]:
    out: list[Alert] = []
    for step in range(upto):
        for rank in range(RANKS):
            if rank in skip and step > upto - 5:
                continue
            out += engine.process(
                StepEvent(
                    job_id="j",
                    rank=rank,
                    step=step,
                    timestamp=T0 + step * period,
                    world_size=RANKS,
                    loss=2.0,
                    step_time_s=period,
                )
            )
    return out


def _log(rank: int, t: float, message: str, level: str = "ERROR", **kw: object) -> LogEvent:
    return LogEvent(job_id="j", rank=rank, timestamp=T0 + t, level=level, message=message, **kw)


def _run_clock(engine: Engine, seconds: float, start: float = 0.0) -> list[Alert]:
    out: list[Alert] = []
    engine.advance_clock(start)
    t = start
    while t < start + seconds:
        t += 1.0
        out += engine.advance_clock(t)
    return out


def test_a_crash_then_its_cascade_is_one_crash_alert_and_one_root_cause_job_alert() -> None:
    engine = Engine.with_builtin_detectors()
    alerts = _steps(engine, 40)
    alerts += engine.process(_log(3, 20.1, SHAPES))
    crash = [a for a in alerts if a.rule == "crash"]
    assert [(a.ranks, a.evidence["exception"], a.evidence["frame"]) for a in crash] == [
        ([3], "RuntimeError", "train.py:18 in forward")
    ]
    assert crash[0].evidence["failure_class"] == "shape_mismatch"
    for rank in range(3):  # the peers lose the connection, then the launcher stops them
        alerts += engine.process(_log(rank, 20.2 + rank / 100, PEER))
        alerts += engine.process(
            _log(rank, 20.3, "rankwatch: rank got SIGTERM", "WARNING", lifecycle="terminated")
        )
    assert [a.rule for a in alerts if a.status == "firing"] == ["crash"], "peers raise nothing"
    stopped = [a for a in _run_clock(engine, 10) if a.rule == "job_stopped"]
    assert len(stopped) == 1
    alert = stopped[0]
    assert alert.scope == "job" and alert.severity == "critical"
    assert alert.evidence["root_cause"]["rank"] == 3
    assert alert.evidence["root_cause"]["failure_class"] == "shape_mismatch"
    assert sorted(alert.evidence["consequences"]) == ["0", "1", "2"]
    assert "rank 3 failed first" in alert.summary and "mat1 and mat2" in alert.summary
    assert not [a for a in _run_clock(engine, 30, start=10) if a.rule == "job_stopped"], "once"


def test_a_rank_killed_without_a_word_is_named_by_its_silence() -> None:
    engine = Engine.with_builtin_detectors()
    alerts = _steps(engine, 40, skip=frozenset({3}))  # rank 3 stops 4 steps before the rest
    for rank in range(3):
        alerts += engine.process(_log(rank, 19.6, PEER))
    stopped = [a for a in _run_clock(engine, 10) if a.rule == "job_stopped"]
    assert len(stopped) == 1
    assert stopped[0].evidence["root_cause"] == {
        "rank": 3,
        "chosen_by": "silent",
        "last_seen": stopped[0].evidence["root_cause"]["last_seen"],
    }
    assert "went silent first without a word" in stopped[0].summary


OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_a_failure_its_rank_stepped_past_is_survived_in_whatever_order_it_comes() -> None:
    # A topic replay merges by the messages' timestamps, so a record can come after its rank's
    # later steps (CI: an OOM at step 45 sorted behind the job's last step): the rank survived
    # it all the same, as when the record comes in time.
    for late in (False, True):
        engine = Engine.with_builtin_detectors()
        if not late:
            _steps(engine, 20)
            engine.process(_log(2, 10.2, OOM))
        _steps(engine, 40)
        if late:
            engine.process(_log(2, 10.2, OOM))
        assert not [a for a in _run_clock(engine, 10) if a.rule == "job_stopped"], late
    engine = Engine.with_builtin_detectors()  # the same record as the rank's last word
    _steps(engine, 40, skip=frozenset({2}))
    engine.process(_log(2, 18.2, OOM))
    stopped = [a for a in _run_clock(engine, 10) if a.rule == "job_stopped"]
    assert [a.evidence["root_cause"]["rank"] for a in stopped] == [2]


def test_no_word_at_all_waits_for_the_long_bound() -> None:
    engine = Engine.with_builtin_detectors()
    _steps(engine, 40)
    assert not [a for a in _run_clock(engine, 100) if a.rule == "job_stopped"]
    stopped = [a for a in _run_clock(engine, 30, start=100) if a.rule == "job_stopped"]
    assert len(stopped) == 1 and "no rank said why" in stopped[0].summary


def test_a_clean_end_resolves_open_alerts_and_stops_nothing() -> None:
    engine = Engine.with_builtin_detectors()
    alerts = _steps(engine, 20)
    alerts += engine.process(_log(1, 9.8, SHAPES))  # a crash caught and survived, say
    assert [a.rule for a in alerts] == ["crash"]
    ended = []
    for rank in range(RANKS):
        ended += engine.process(
            _log(rank, 10.5, "rankwatch: ended cleanly", "INFO", lifecycle="ended")
        )
    assert [(a.rule, a.status) for a in ended] == [("crash", "resolved")]
    assert "ended cleanly" in ended[0].summary
    assert not _run_clock(engine, 600)


def test_silence_while_the_worker_is_unhealthy_does_not_count() -> None:
    engine = Engine.with_builtin_detectors()
    _steps(engine, 40)
    engine.advance_clock(0.0)
    out: list[Alert] = []
    for t in range(1, 1000):
        out += engine.advance_clock(float(t), healthy=False)
    assert not out
    out += engine.advance_clock(1000.0, healthy=True)
    assert not out, "one step of the clock counts at most max_clock_step_s"


def test_a_hang_then_its_timeouts_names_the_rank_stuck_outside_a_collective() -> None:
    engine = Engine.with_builtin_detectors()
    _steps(engine, 40)
    stuck = "rankwatch: rank {r} stuck in step 40 for 3.1 s; main thread stack:\n{s}"
    mine = '  File "/job/train.py", line 50, in main\n    time.sleep(3600)'
    waiting = (
        '  File "/job/train.py", line 60, in main\n    loss.backward()\n'
        '  File "/venv/lib/python3.11/site-packages/torch/_tensor.py", line 648, in backward\n'
        "    torch.autograd.backward("
    )
    for r in range(RANKS):
        message = stuck.format(r=r, s=mine if r == 3 else waiting)
        engine.process(_log(r, 23 + r / 10, message, "WARNING", lifecycle="stuck", step=40))
    timeout = PEER.replace("Connection closed by peer [127.0.0.1]:29500",
                           "Timed out waiting 25000ms for recv operation to complete")  # fmt: skip
    for r in range(3):  # gloo's timeout ends the peers, then the launcher stops rank 3
        engine.process(_log(r, 45, timeout))
    engine.process(_log(3, 46, "rankwatch: rank 3 got SIGTERM", "WARNING", lifecycle="terminated"))
    stopped = [a for a in _run_clock(engine, 10) if a.rule == "job_stopped"]
    assert len(stopped) == 1
    assert stopped[0].evidence["root_cause"]["rank"] == 3
    assert stopped[0].evidence["root_cause"]["kind"] == "stuck"
    assert "train.py:50 in main" in stopped[0].summary


def test_before_its_pace_is_known_a_quiet_job_may_be_compiling() -> None:
    engine = Engine.with_builtin_detectors()
    for rank in range(RANKS):  # one step: the first may compile and autotune for minutes
        engine.process(StepEvent(job_id="j", rank=rank, step=0, timestamp=T0, world_size=RANKS))
    assert not [a for a in _run_clock(engine, 1200) if a.rule == "job_stopped"]
    assert [a.rule for a in _run_clock(engine, 700, start=1200)] == ["job_stopped"]


def test_every_rank_timing_out_alike_names_no_rank_first() -> None:
    engine = Engine.with_builtin_detectors()
    _steps(engine, 40)
    timeout = PEER.replace("Connection closed by peer [127.0.0.1]:29500",
                           "Timed out waiting 60000ms for recv operation to complete")  # fmt: skip
    for rank in range(RANKS):
        engine.process(_log(rank, 80 + rank / 100, timeout))
    (stopped,) = [a for a in _run_clock(engine, 10) if a.rule == "job_stopped"]
    assert "root_cause" not in stopped.evidence
    assert "none failed on its own" in stopped.summary and stopped.ranks == []


# -- the frame path (on_frame) against on_step -------------------------------------------------


def _no_metrics(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
    return {"loss": 2.0} if rng.random() < 0.5 else {}


def _fates(t: float) -> dict[str, Any]:
    """Rank 2 stuck (cleared by its next step), rank 3 failed at ``t + 30`` (cleared by a
    later step), rank 7 terminated after the last step (kept); a relaunch in progress."""
    return {
        "ms": -1,
        "mt": float("-inf"),
        "period": 0.0,
        "fates": {
            2: [t + 5, "stuck", "", 0, "not in a collective", "data.py:19 in read_shard", ""],
            3: [t + 30, "failed", "cuda_oom", 0, "CUDA out of memory", "", "Lower the batch"],
            7: [t + 1e6, "terminated", "terminated", 1, "terminated by SIGTERM", "", ""],
        },
        "root": -1,
        "fired": None,
        "restarting": True,
    }


@pytest.mark.parametrize("seed", range(3))
def test_the_frame_path_leaves_the_state_on_step_leaves(seed: int) -> None:
    events = noisy_steps.noisy_job(seed, _no_metrics, ranks=48, steps=80)
    seeded = noisy_steps.Seeded(JobStopped(), _fates(events[0].epoch))
    for interval in (0.3, 1.0, 4.0):
        assert_job_frames_match_scalar(JobStopped(), events, tick_interval_s=interval)
        assert_job_frames_match_scalar(seeded, events, tick_interval_s=interval)


@pytest.mark.parametrize("name", ["healthy", "hang", "fatal_error", "rank_silent"])
def test_the_frame_path_on_simulated_faults(name: str) -> None:
    events = noisy_steps.simulated_steps(name)
    assert_job_frames_match_scalar(JobStopped(), events)
    assert_job_frames_match_scalar(
        noisy_steps.Seeded(JobStopped(), _fates(events[0].epoch)), events
    )


@pytest.mark.parametrize(
    "log",
    ["torchrun_gloo_indexerror.log", "torchrun_gloo_peer_exits_first.log"],
)
def test_the_rank_that_raised_is_the_root_cause_whoever_torchrun_saw_exit_first(
    log: str, tmp_path: Any
) -> None:
    # Two real runs of one job (rank 3 raises IndexError; tests/producers/data/): in the
    # second, on a loaded machine, rank 0's broken all-reduce exited first and torchrun's
    # own summary names rank 0 ("Root Cause (first observed failure): rank 0"). Rank 0's
    # failure is gloo's "Connection closed by peer", a consequence of rank 3's: job_stopped
    # names rank 3 in both, its peers as having followed. (Before, the second said "rank 0
    # failed first (the launcher's root cause)".)
    alerts = shipped_alerts(log, tmp_path, flush=True)
    [stopped] = [a for a in alerts if a.rule == "job_stopped"]
    assert stopped.summary.startswith("Job stopped without a clean end: rank 3 failed first")
    assert "IndexError: list index out of range" in stopped.summary
    assert "ranks 0, 1, 2 followed" in stopped.summary
