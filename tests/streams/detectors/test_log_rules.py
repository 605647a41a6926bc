"""The log rules through the engine: what a person sees for OOMs, NCCL storms and hangs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from noisy_steps import noisy_job
from real_logs import shipped_alerts
from synth import T0, healthy_run

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.simulate import JobSpec, simulate
from rankwatch.simulate.scenarios import SCENARIOS
from rankwatch.streams import DetectorConfigError, Engine
from rankwatch.streams.detectors import logs
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.log_episodes import EpisodeConfig
from rankwatch.streams.frames import StepFrame
from rankwatch.streams.frames.testing import assert_job_frames_match_scalar


def log(rank: int, t: float, message: str, level: str = "ERROR", **kw: object) -> LogEvent:
    return LogEvent(
        job_id="job-1", rank=rank, timestamp=T0 + t, level=level, message=message,
        host=f"node{rank // 8}", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def step(rank: int, s: int, t: float, world: int = 8, **metrics: float) -> StepEvent:
    return StepEvent(
        job_id="job-1", rank=rank, step=s, timestamp=T0 + t, world_size=world,
        host=f"node{rank // 8}", **metrics,  # type: ignore[arg-type]
    )  # fmt: skip


def engine() -> Engine:
    return Engine(logs.detectors())


def timeout_records(rank: int, seq: int, done: int) -> list[str]:
    """What ProcessGroupNCCL prints on one rank when a collective times out."""
    p = f"[rank{rank}]:[E405 10:33:15.994 ProcessGroupNCCL.cpp:"
    return [
        f"{p}616] [Rank {rank}] Watchdog caught collective operation timeout: WorkNCCL(SeqNum="
        f"{seq}, OpType=ALLREDUCE, NumelIn=16777216, NumelOut=16777216, Timeout(ms)=600000) "
        f"ran for 600021 milliseconds before timing out.",
        f"{p}1709] [PG 0 Rank {rank}] Timeout at NCCL work: {seq}, last enqueued NCCL work: "
        f"{seq}, last completed NCCL work: {done}.",
        f"{p}621] [Rank {rank}] Some NCCL operations have failed or timed out. Due to the "
        f"asynchronous nature of CUDA kernels, subsequent GPU operations might run on "
        f"corrupted/incomplete data.",
        f"{p}627] [Rank {rank}] To avoid data inconsistency, we are taking the entire process "
        f"down.",
    ]


def firing(alerts: list[Alert], rule: str | None = None) -> list[Alert]:
    return [a for a in alerts if a.status == "firing" and (rule is None or a.rule == rule)]


# -- cuda_oom -------------------------------------------------------------------------------
def test_oom_fires_at_once_with_the_memory_trend_of_the_rank() -> None:
    e = engine()
    for s in range(10):
        for r in range(8):
            usage = 80.0 + (2.0 * s if r == 7 else 0.0)
            e.process(step(r, s, s, gpu_memory_usage=usage, gpu_memory_allocated_mb=60000 + s))
    out = e.process(
        log(7, 9.5, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.20 GiB. "
            "GPU 7 has a total capacity of 79.15 GiB of which 1.02 GiB is free.", step=10)
    )  # fmt: skip
    assert len(out) == 1
    a = out[0]
    assert (a.rule, a.severity, a.scope, a.ranks, a.step) == (
        "cuda_oom",
        "critical",
        "rank",
        [7],
        10,
    )
    assert a.evidence["tried_to_allocate_gib"] == 4.2
    trend = a.evidence["memory_trend"]
    assert [row["step"] for row in trend] == [5, 6, 7, 8, 9]
    assert trend[-1]["gpu_memory_usage"] == 98.0
    assert "tried to allocate 4.2 GiB" in a.summary and "90% -> 98%" in a.summary
    assert a.evidence["line"].startswith("torch.OutOfMemoryError")


def test_oom_without_metrics_still_fires() -> None:
    out = engine().process(log(3, 0, "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"))
    assert [(a.rule, a.ranks) for a in out] == [("cuda_oom", [3])]
    assert "memory_trend" not in out[0].evidence


def test_the_same_record_twice_fires_once_and_a_repeat_is_suppressed() -> None:
    e = engine()
    record = log(3, 0, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert len(e.process(record)) == 1
    assert e.process(record) == []  # a redelivered duplicate
    later = log(3, 5, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.00 GiB")
    assert e.process(later) == []  # the same incident, still open


# -- fatal_error ----------------------------------------------------------------------------
def test_xid_fires_with_its_meaning() -> None:
    out = engine().process(
        log(13, 0, "NVRM: Xid (PCI:0000:b1:00): 48, pid=1234, name=python, An uncorrectable "
            "double bit error (DBE) has been detected on GPU", level="INFO")
    )  # fmt: skip
    assert [(a.rule, a.ranks, a.severity) for a in out] == [("fatal_error", [13], "critical")]
    assert "double-bit ECC" in out[0].evidence["xid_meaning"]
    assert out[0].summary.startswith("Xid 48 on rank 13 (node1)")


def test_child_failed_names_the_signal() -> None:
    out = engine().process(
        log(
            0,
            0,
            "ChildFailedError:\n  rank      : 27 (local_rank: 3)\n  exitcode  : -11 (pid: 48213)",
        )
    )
    assert out[0].rule == "fatal_error"
    assert (out[0].evidence["signal"], out[0].evidence["root_cause_rank"]) == ("SIGSEGV", 27)


# -- NCCL -----------------------------------------------------------------------------------
def run_logs(e: Engine, events: list[LogEvent]) -> list[Alert]:
    alerts = e.process_many(sorted(events, key=lambda ev: ev.epoch))
    return alerts + e.flush()


def test_256_rank_timeout_burst_is_one_alert_naming_the_rank_that_did_not_report() -> None:
    e = engine()
    for r in range(256):
        e.process(step(r, 1181, 0.0, world=256))
    events = [
        log(r, 600 + 0.01 * r, text)
        for r in range(256)
        if r != 5  # rank 5 is stuck in compute: it never enqueued SeqNum 1182
        for text in timeout_records(r, 1182, 1181)
    ]
    alerts = run_logs(e, events)
    fired = firing(alerts)
    assert len(fired) == 1, [a.summary for a in fired]
    a = fired[0]
    assert (a.rule, a.scope, a.severity) == ("nccl_timeout_burst", "job", "critical")
    assert a.evidence["culprit_ranks"] == [5]
    assert a.evidence["ranks_reporting"] == 255
    assert len(a.ranks) == 255 and 5 not in a.ranks
    assert "rank 5 on node0 did not report" in a.summary
    assert "NCCL timeouts on 255 of 256 ranks" in a.summary


def test_burst_names_the_rank_that_fell_behind_by_sequence_number() -> None:
    e = engine()
    events = [
        log(r, 10 + 8 * r, text)  # over 40 s, still one burst
        for r in range(6)
        for text in timeout_records(r, 1182, 1181 if r == 5 else 1182)
    ]
    fired = firing(run_logs(e, events))
    assert [a.rule for a in fired] == ["nccl_timeout_burst"]
    a = fired[0]
    assert a.ranks == [0, 1, 2, 3, 4, 5]
    assert a.evidence["culprit_ranks"] == [5]
    assert "rank 5 on node0 fell behind (last completed SeqNum 1181 vs 1182)" in a.summary
    assert "within 40 s" in a.summary


def test_burst_alert_fires_within_seconds_and_late_ranks_join_it_silently() -> None:
    e = engine()
    out: list[Alert] = []
    for r in range(4):
        out += e.process(log(r, 100 + 0.1 * r, timeout_records(r, 7, 6)[0]))
    out += e.process(log(0, 115, "heartbeat", level="INFO"))  # event time moves on
    assert [a.rule for a in firing(out)] == ["nccl_timeout_burst"]
    assert out[0].ranks == [0, 1, 2, 3]
    late = e.process(log(4, 130, timeout_records(4, 7, 6)[0]))
    late += e.process(log(0, 140, "heartbeat", level="INFO"))
    assert firing(late) == []
    inc = next(iter(e.jobs["job-1"].incidents.values()))
    assert inc["ranks"] == {0, 1, 2, 3, 4}


def test_a_lone_nccl_error_is_nccl_error_after_a_short_wait() -> None:
    e = engine()
    out = e.process(log(3, 0, "RuntimeError: NCCL error: unhandled system error"))
    out += e.process(log(3, 0.5, "[Rank 3] NCCL communicator was aborted on rank 3."))
    assert out == []  # waiting: other ranks may follow within seconds
    out += e.process(log(0, 11, "training", level="INFO"))
    assert [(a.rule, a.ranks, a.scope) for a in firing(out)] == [("nccl_error", [3], "rank")]
    assert "NCCL error on rank 3 (node0)" in out[0].summary


def test_nccl_warn_alone_is_a_warning() -> None:
    e = engine()
    out = e.process(
        log(2, 0, "node0:771:802 [2] NCCL WARN NET/IB : Got completion from peer with error 12",
            level="INFO")
    )  # fmt: skip
    out += e.flush()
    assert [(a.rule, a.severity) for a in firing(out)] == [("nccl_error", "warning")]


def test_two_separate_episodes_are_two_incidents() -> None:
    e = engine()
    out = run_logs(e, [log(1, 0, "RuntimeError: NCCL error: unhandled system error")])
    out += e.process(log(6, 5000, "RuntimeError: NCCL error: unhandled system error"))
    out += e.flush()
    assert [(a.rule, a.ranks) for a in firing(out)] == [("nccl_error", [1]), ("nccl_error", [6])]


# -- hang from logs -------------------------------------------------------------------------
def test_watchdog_hang_on_several_ranks_is_one_job_alert() -> None:
    events = [
        log(r, 0.2 * r, f"[rank{r}]:[E ProcessGroupNCCL.cpp:1316] [PG 0 Rank {r}] Heartbeat "
            "monitor timed out! Process will be terminated after dumping debug info.")
        for r in range(8)
    ]  # fmt: skip
    fired = firing(run_logs(engine(), events))
    assert [(a.rule, a.scope, len(a.ranks)) for a in fired] == [("hang", "job", 8)]
    assert fired[0].summary.startswith("Hang reported on 8 of 8 ranks")


def test_hang_on_one_rank_is_a_rank_alert() -> None:
    fired = firing(run_logs(engine(), [log(3, 0, "Process 4242 hung for 300 seconds")]))
    assert [(a.rule, a.scope, a.ranks) for a in fired] == [("hang", "rank", [3])]


# -- benign runs ----------------------------------------------------------------------------
BENIGN_LOGS = [
    ("INFO", "node0:1234:1290 [3] NCCL INFO comm 0x55d0c8a0 rank 3 nranks 8 - Init COMPLETE"),
    ("INFO", "OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768"),
    ("WARNING", "FutureWarning: `torch.cuda.amp.GradScaler(args...)` is deprecated."),
    ("DEBUG", "allocator: max_split_size_mb=512"),
]


@pytest.mark.parametrize("ranks", [8, 256])
def test_healthy_run_with_chatter_fires_nothing(ranks: int) -> None:
    e = engine()
    alerts: list[Alert] = []
    for ev in healthy_run(ranks=ranks, steps=40 if ranks > 8 else 200, seed=3):
        alerts += e.process(ev)
        if ev.rank % 4 == 0:
            level, text = BENIGN_LOGS[ev.step % len(BENIGN_LOGS)]
            alerts += e.process(
                LogEvent(job_id=ev.job_id, rank=ev.rank, timestamp=ev.timestamp, level=level,
                         message=text, step=ev.step)  # type: ignore[arg-type]
            )  # fmt: skip
    alerts += e.flush()
    assert alerts == []


def test_configs_are_validated() -> None:
    with pytest.raises(DetectorConfigError):
        EpisodeConfig(burst_rule="a", lone_rule="b", settle_s=0)
    with pytest.raises(DetectorConfigError):
        EpisodeConfig(burst_rule="a", lone_rule="b", min_ranks=1)
    with pytest.raises(DetectorConfigError):
        logs.OomConfig(memory_readings=-1)
    with pytest.raises(DetectorConfigError):
        logs.LogRulesConfig(nccl=EpisodeConfig(burst_rule="x", lone_rule="x"))


def test_a_family_can_be_turned_off() -> None:
    e = Engine([logs.LogRulesDetector(logs.LogRulesConfig(oom=None))])
    assert e.process(log(3, 0, "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB")) == []


# -- the frame path of the memory readings (issue 14): the same state as on_step -------------


def _simulated(name: str, ranks: int = 8, steps: int = 160) -> list[StepEvent]:
    """A simulated job with one fault: its step events only, in (event time, rank) order,
    with a few duplicates (a rank's step twice) and reordered deliveries."""
    spec = JobSpec(job_id=f"sim-{name}", ranks=ranks, steps=steps, seed=5)
    scenario = SCENARIOS[name](at_step=steps // 2, rank=min(3, ranks - 1))
    events = simulate(spec, [scenario], duplicates=0.02, reorder=0.02)
    return sorted((e for e in events if isinstance(e, StepEvent)), key=lambda e: (e.epoch, e.rank))


def _memory_values(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
    """Memory readings with any of the three missing (all three now and then), zeros, whole
    numbers and values of every size; the other metrics as a step carries them."""
    out: dict[str, float | None] = {
        "gpu_memory_usage": rng.choice(
            [rng.uniform(0, 100), 0.0, 100.0, float(rng.randrange(101))]
        ),
        "gpu_memory_allocated_mb": rng.choice([rng.uniform(0, 9e4), 0.0, 5e-324, 1e300]),
        "gpu_memory_reserved_mb": float(rng.randrange(10**6)),
        "loss": rng.gauss(2.0, 0.1),
    }
    for name in ("gpu_memory_usage", "gpu_memory_allocated_mb", "gpu_memory_reserved_mb"):
        if rng.random() < 0.15:
            out[name] = None
    return out


@pytest.mark.parametrize("seed", range(4))
def test_the_memory_frame_path_leaves_the_state_on_step_leaves(seed: int) -> None:
    events = noisy_job(seed, _memory_values, ranks=12, steps=200)
    assert any(e.gpu_memory_usage is None and e.gpu_memory_reserved_mb is None for e in events)
    for readings in (5, 1, 32):
        rule = logs.LogRulesDetector(
            logs.LogRulesConfig(oom=logs.OomConfig(memory_readings=readings))
        )
        assert assert_job_frames_match_scalar(rule, events) == 0  # steps alone never alert
        assert assert_job_frames_match_scalar(rule, events, tick_interval_s=7) == 0


@pytest.mark.parametrize("name", ["healthy", "cuda_oom", "memory_leak", "rank_silent"])
def test_the_memory_frame_path_over_simulated_jobs(name: str) -> None:
    events = _simulated(name)
    assert_job_frames_match_scalar(logs.LogRulesDetector(), events)


def test_the_memory_frame_path_at_the_edges() -> None:
    # No memory metric at all, a rank's first step alone, the same step twice, readings off.
    bare = [step(r, s, s + 0.01 * r, loss=2.0) for s in range(5) for r in range(4)]
    first = [step(5, 0, 0.0, gpu_memory_usage=50.0)]
    twice = [
        step(r, s, s, gpu_memory_allocated_mb=10.0 * s + r)
        for s in (1, 1, 2, 2, 2)
        for r in range(3)
    ]
    for events in (bare, first, twice, bare + twice):
        for rule in (logs.LogRulesDetector(), logs.LogRulesDetector(logs.LogRulesConfig(oom=None))):
            assert assert_job_frames_match_scalar(rule, events) == 0
    rule = logs.LogRulesDetector()
    state = rule.new_job_state()
    job = JobState("job-1")
    for e in twice:
        job.ranks.setdefault(e.rank, RankState(e.rank, e.host))
    rule.on_frame(job, state, StepFrame.from_events(twice[:3]), twice[:3])
    # One packed reading per rank: step, usage %, allocated, reserved (NaN: not reported).
    assert repr(state["mem"][2]) == "array('d', [1.0, nan, 12.0, nan])"


def test_the_memory_frame_path_with_ranks_joining_late() -> None:
    # Ranks 0-3 from step 0 (their readings full after five steps), rank 4 from step 9 and
    # rank 5 from step 14: a frame with every rank known and full, one with a rank new among
    # full ones, and one with a rank not full yet among full ones.
    events = [
        step(r, s, s + 0.01 * r, gpu_memory_usage=40.0 + s + r, gpu_memory_reserved_mb=1e3 * r)
        for s in range(24)
        for r in range(6)
        if s >= {4: 9, 5: 14}.get(r, 0)
    ]
    for readings in (5, 1):
        rule = logs.LogRulesDetector(
            logs.LogRulesConfig(oom=logs.OomConfig(memory_readings=readings))
        )
        assert assert_job_frames_match_scalar(rule, events) == 0
        assert assert_job_frames_match_scalar(rule, events, tick_interval_s=5) == 0


@pytest.mark.parametrize(
    ("name", "rank"),
    [("torchrun_gloo_indexerror.log", 3), ("torchrun_gloo_peer_exits_first.log", 0)],
)
def test_a_launcher_summary_quotes_its_root_cause_not_a_peer_it_stopped(
    name: str, rank: int, tmp_path: Path
) -> None:
    # Real torchrun runs (tests/producers/data/): the launcher's ChildFailedError summary is
    # one record, on the rank it saw fail. Its "Failures:" section lists the peers the agent
    # stopped ("exitcode : -15 (pid: ...) (SIGTERM)"); the alert used to quote that line as
    # the record's own error: "Fatal error on rank 3: exitcode : -15 (pid: 6938) (SIGTERM)".
    alerts = shipped_alerts(name, tmp_path)
    [fatal] = [a for a in alerts if a.rule == "fatal_error"]
    assert fatal.ranks == [rank] and "SIGTERM" not in fatal.summary
    assert fatal.summary == (
        f"Fatal error on rank {rank}: the launcher's failure summary names rank {rank} as the "
        "root cause (exitcode 1)"
    )
    assert fatal.evidence["exitcode"] == 1 and "signal" not in fatal.evidence
