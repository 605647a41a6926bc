"""``hang`` from stuck records: the rank stuck outside a collective is named, with its stack.

Stacks are what ``traceback.format_stack`` prints in the producer's watchdog (see
``tests/test_torchrun_faults.py`` for the same through real torchrun jobs).
"""

from __future__ import annotations

import random
from typing import Any

import noisy_steps
import pytest

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.streams.detectors.stacks import parse_stack
from rankwatch.streams.detectors.stuck import StuckRanks
from rankwatch.streams.engine import Engine
from rankwatch.streams.frames.testing import assert_job_frames_match_scalar

T0 = 1_700_000_000.0
RANKS = 4
USER = '  File "/job/train.py", line 80, in <module>\n    main()\n'
# A DDP rank waiting in backward's all-reduce, as torch 2.x prints it.
IN_BACKWARD = (
    USER + '  File "/job/train.py", line 61, in main\n    loss.backward()\n'
    '  File "/venv/lib/python3.11/site-packages/torch/_tensor.py", line 648, in backward\n'
    "    torch.autograd.backward(\n"
    '  File "/venv/lib/python3.11/site-packages/torch/autograd/__init__.py", line 353, in backward\n'
    "    _engine_run_backward(\n"
    '  File "/venv/lib/python3.11/site-packages/torch/autograd/graph.py", line 824, in _engine_run_backward\n'
    "    return Variable._execution_engine.run_backward(\n"
)
IN_ALL_REDUCE = (
    USER + '  File "/job/train.py", line 70, in main\n    dist.all_reduce(t)\n'
    '  File "/venv/lib/python3.11/site-packages/torch/distributed/c10d_logger.py", line 81, in wrapper\n'
    "    return func(*args, **kwargs)\n"
    '  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 2806, in all_reduce\n'
    "    work.wait()\n"
)
IN_DATA = (
    USER + '  File "/job/train.py", line 55, in main\n    batch = next(it)\n'
    '  File "/job/data.py", line 31, in __next__\n    return self.read_shard()\n'
    '  File "/job/data.py", line 19, in read_shard\n    time.sleep(30)\n'
)


def _stuck(rank: int, t: float, stack: str, step: int = 41) -> LogEvent:
    return LogEvent(
        job_id="j", rank=rank, timestamp=T0 + t, level="WARNING", step=step, lifecycle="stuck",
        message=f"rankwatch: rank {rank} stuck in step {step} for 9.0 s (typical 0.2 s); "
        f"main thread stack:\n{stack}",
    )  # fmt: skip


CRASH = (
    'Traceback (most recent call last):\n  File "/job/train.py", line 9, in main\n    x[8]\n'
    "IndexError: index 8 is out of bounds"
)
PEER = "RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection closed by peer [::1]:1"


def _error(rank: int, t: float, message: str) -> LogEvent:
    return LogEvent(job_id="j", rank=rank, timestamp=T0 + t, level="ERROR", message=message)


def _job(engine: Engine, steps: int = 41) -> None:
    for step in range(steps):
        for rank in range(RANKS):
            engine.process(StepEvent(job_id="j", rank=rank, step=step, timestamp=T0 + step * 0.2,
                                     world_size=RANKS))  # fmt: skip


def test_where_a_stack_waits() -> None:
    assert parse_stack(IN_BACKWARD).waits_on_peers
    assert parse_stack(IN_ALL_REDUCE).waits_on_peers
    data = parse_stack(IN_DATA)
    assert not data.waits_on_peers and data.where == "data.py:19 in read_shard"
    # A thread's own wait (a queue, a lock) is the rank's business, not its peers'.
    lock = (
        USER
        + '  File "/usr/lib/python3.11/threading.py", line 320, in wait\n    waiter.acquire()\n'
    )
    assert not parse_stack(lock).waits_on_peers


def test_the_rank_stuck_outside_a_collective_is_named_with_its_stack() -> None:
    engine = Engine.with_builtin_detectors()
    _job(engine)
    alerts: list[Alert] = []
    for rank, stack in ((0, IN_BACKWARD), (1, IN_BACKWARD), (2, IN_ALL_REDUCE)):
        alerts += engine.process(_stuck(rank, 20 + rank / 10, stack))
    assert not alerts, "waits for the other ranks' records"
    alerts += engine.process(_stuck(3, 20.4, IN_DATA))
    (hang,) = alerts
    assert (hang.rule, hang.scope, hang.ranks) == ("hang", "job", [3])
    assert hang.evidence["where"] == "data.py:19 in read_shard"
    assert "time.sleep(30)" in hang.evidence["stack"]
    assert (
        "rank 3 stuck in step 41 at data.py:19 in read_shard, not in a collective" in hang.summary
    )
    # Still stuck: the repeated records add nothing; progress resolves it.
    assert not engine.process(_stuck(3, 30, IN_DATA))
    resolved = []
    for step in (41, 42, 43):
        for rank in range(RANKS):
            resolved += engine.process(
                StepEvent(job_id="j", rank=rank, step=step, timestamp=T0 + step - 10)
            )
    assert [(a.rule, a.status) for a in resolved] == [("hang", "resolved")]


def test_a_stuck_record_with_a_malformed_duration_is_still_read() -> None:
    # "for 1..2 s": the duration is not a number. It used to raise ValueError from float()
    # inside the engine (the reliability run's decoder fuzz); it is "not said" now.
    engine = Engine.with_builtin_detectors()
    _job(engine)
    alerts: list[Alert] = []
    for rank in range(RANKS):
        stuck = _stuck(rank, 20 + rank / 10, IN_DATA if rank == 3 else IN_ALL_REDUCE)
        alerts += engine.process(stuck.model_copy(update={"message": stuck.message.replace(
            "for 9.0 s", "for 1..2 s")}))  # fmt: skip
    (hang,) = alerts
    assert (hang.rule, hang.ranks) == ("hang", [3])


def test_a_rank_that_stays_quiet_while_its_peers_wait_is_named() -> None:
    engine = Engine.with_builtin_detectors()
    _job(engine)
    alerts: list[Alert] = []
    for rank in range(3):
        alerts += engine.process(_stuck(rank, 20 + rank / 10, IN_ALL_REDUCE))
    engine.advance_clock(0.0)  # the job is quiet now: the worker's clock decides
    alerts += engine.advance_clock(5.0)
    (hang,) = [a for a in alerts if a.rule == "hang"]
    assert hang.ranks == [3] and "did not report" in hang.summary


def test_peers_waiting_for_a_rank_that_crashed_are_no_hang() -> None:
    engine = Engine.with_builtin_detectors()
    _job(engine)
    alerts = engine.process(_error(3, 19, CRASH))
    for rank in range(2):
        alerts += engine.process(_stuck(rank, 22 + rank / 10, IN_ALL_REDUCE))
    # Rank 2's collective failed before its watchdog spoke: it is no silent rank either.
    alerts += engine.process(_error(2, 22.5, PEER))
    engine.advance_clock(0.0)
    alerts += engine.advance_clock(5.0)
    assert [a.rule for a in alerts] == ["crash", "job_stopped"]  # and no hang


def test_a_rank_stuck_after_its_own_failure_is_no_culprit() -> None:
    # A peer's collective fails when the crashed rank goes; its watchdog may then catch it
    # inside the exception's handling, outside any collective (a real torchrun job in CI).
    engine = Engine.with_builtin_detectors()
    _job(engine)
    alerts = engine.process(_error(3, 19, CRASH))
    for rank in range(2):
        alerts += engine.process(_stuck(rank, 22 + rank / 10, IN_ALL_REDUCE))
    alerts += engine.process(_error(2, 22.3, PEER))
    alerts += engine.process(_stuck(2, 22.6, IN_DATA))
    engine.advance_clock(0.0)
    for t in (5.0, 10.0, 15.0):
        alerts += engine.advance_clock(t)
    assert "hang" not in [a.rule for a in alerts], [a.summary for a in alerts]


def test_a_stuck_record_of_a_step_its_rank_has_finished_is_stale() -> None:
    # A topic replay merges by the messages' timestamps: a watchdog's record can come after
    # its rank's later steps. The rank is past that step: no hang from it.
    engine = Engine.with_builtin_detectors()
    _job(engine, steps=45)
    alerts = engine.process(_stuck(3, 9, IN_DATA, step=41))
    for rank in range(3):
        alerts += engine.process(_stuck(rank, 9.1, IN_ALL_REDUCE, step=41))
    engine.advance_clock(0.0)
    alerts += engine.advance_clock(5.0)
    assert "hang" not in [a.rule for a in alerts], [a.summary for a in alerts]


def test_no_hang_while_the_job_says_it_evaluates() -> None:
    engine = Engine.with_builtin_detectors()
    _job(engine)
    engine.process(LogEvent(job_id="j", rank=0, timestamp=T0 + 19, level="INFO",
                            message="rankwatch: phase eval begins", phase="eval"))  # fmt: skip
    alerts: list[Alert] = []
    for rank in range(RANKS):
        alerts += engine.process(_stuck(rank, 20 + rank / 10, IN_DATA))
    assert not alerts


# -- the frame path (on_frame) against on_step -------------------------------------------------


def _no_metrics(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
    return {"loss": 2.0} if rng.random() < 0.5 else {}


def _stuck_state(t: float, *, open_: bool, stays: bool) -> dict[str, Any]:
    """From ``t``: ranks 1 and 2 stuck in step 41 (they clear it when they step on), rank 30
    in step 45; with ``stays``, rank 9 in a step no row reaches, so the episode is decided."""
    stuck: dict[int, list[Any]] = {
        1: [t, 41, 0, "data.py:19 in read_shard", "a stack", 9.0],
        2: [t, 41, 1, "train.py:70 in main (in all_reduce)", "", -1.0],
        30: [t + 3, 45, 1, "train.py:70 in main (in all_reduce)", "", -1.0],
    }
    if stays:
        stuck[9] = [t + 1, 10**6, 0, "data.py:7 in next_batch", "", 9.0]
    return {"stuck": stuck, "since": t, "open": open_, "failed": []}


@pytest.mark.parametrize("seed", range(3))
def test_the_frame_path_clears_what_on_step_clears(seed: int) -> None:
    events = noisy_steps.noisy_job(seed, _no_metrics, ranks=48, steps=80)
    t = events[0].epoch
    decided = noisy_steps.Seeded(StuckRanks(), _stuck_state(t, open_=False, stays=True))
    resolved = noisy_steps.Seeded(StuckRanks(), _stuck_state(t, open_=True, stays=False))
    for interval in (0.3, 1.0, 4.0):
        assert assert_job_frames_match_scalar(decided, events, tick_interval_s=interval) == 1
        assert assert_job_frames_match_scalar(resolved, events, tick_interval_s=interval) == 1
        assert_job_frames_match_scalar(StuckRanks(), events, tick_interval_s=interval)


@pytest.mark.parametrize("name", ["healthy", "hang", "nccl_timeout", "straggler"])
def test_the_frame_path_on_simulated_faults(name: str) -> None:
    events = noisy_steps.simulated_steps(name)
    state = _stuck_state(events[0].epoch, open_=False, stays=True)
    assert_job_frames_match_scalar(StuckRanks(), events)
    assert assert_job_frames_match_scalar(noisy_steps.Seeded(StuckRanks(), state), events) == 1
