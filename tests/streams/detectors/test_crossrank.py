"""Cross-rank rules over whole synthetic jobs: straggler, rank_silent, hang (no progress)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from typing import Any

import noisy_steps
import pytest
from synth import T0, Fault, RunShape, healthy_run

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.streams import DetectorConfigError, Engine
from rankwatch.streams.detectors import crossrank, logs
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.liveness import (
    ProgressHangConfig,
    ProgressHangDetector,
    RankSilentConfig,
    RankSilentDetector,
)
from rankwatch.streams.detectors.straggler import (
    _FIRING,
    _N,
    StragglerConfig,
    StragglerDetector,
)
from rankwatch.streams.findings import Outcome
from rankwatch.streams.frames import RankEntries
from rankwatch.streams.frames.testing import assert_job_frames_match_scalar
from rankwatch.streams.state_codec import Layout, decode_job, encode_job
from rankwatch.streams.testing import state_difference


def engine() -> Engine:
    return Engine([*crossrank.detectors(), *logs.detectors()])


def timing(
    slow_rank: int | None = None,
    *,
    component: str = "compute_time_s",
    factor: float = 2.0,
    from_step: int = 0,
    to_step: int = 10**9,
    checkpoint_every: int = 100,
) -> Fault:
    """Adds compute/data times as a synchronous data-parallel job has them.

    Every rank computes ~0.8 s and waits ~10 ms for data; a checkpoint step slows every rank
    alike. ``slow_rank`` has ``component`` multiplied by ``factor`` between the steps given.
    """

    def fault(rank: int, step: int, m: dict[str, Any]) -> None:
        rng = random.Random(step * 100_003 + rank)
        compute = 0.8 * (1 + rng.gauss(0, 0.03))
        data = 0.01 * (1 + abs(rng.gauss(0, 0.3)))
        if checkpoint_every and step and step % checkpoint_every == 0:
            data += 20.0  # every rank waits for the checkpoint writer
        m["compute_time_s"], m["data_time_s"] = compute, data
        if slow_rank == rank and from_step <= step < to_step:
            m[component] *= factor
        m["step_time_s"] = compute + data

    return fault


def run(events: Iterator[StepEvent], e: Engine | None = None) -> list[Alert]:
    e = e or engine()
    return e.process_many(events) + e.flush()


def firing(alerts: list[Alert], rule: str | None = None) -> list[Alert]:
    return [a for a in alerts if a.status == "firing" and (rule is None or a.rule == rule)]


# -- healthy --------------------------------------------------------------------------------
@pytest.mark.parametrize(("ranks", "steps"), [(8, 400), (256, 60)])
def test_healthy_runs_fire_nothing(ranks: int, steps: int) -> None:
    alerts = run(healthy_run(ranks=ranks, steps=steps, seed=7, fault=timing()))
    assert alerts == []


def test_checkpoint_pause_on_every_rank_is_not_a_straggler_or_a_hang() -> None:
    # A 90 s checkpoint save: every rank stops stepping while rank 0 logs its progress.
    def events() -> Iterator[StepEvent | LogEvent]:
        yield from healthy_run(ranks=16, steps=60, seed=1, fault=timing())
        for i in range(9):
            yield LogEvent(job_id="job-1", rank=0, timestamp=T0 + 60 + 10 * i, level="INFO",
                           message=f"saving checkpoint shard {i}/9")  # fmt: skip
        yield from healthy_run(ranks=16, steps=60, seed=2, fault=timing(), t0=T0 + 90,
                               start_step=60)  # fmt: skip

    e = engine()
    assert e.process_many(events()) + e.flush() == []


# -- straggler ------------------------------------------------------------------------------
def test_one_straggler_among_256_ranks_is_flagged_alone_and_resolves() -> None:
    fault = timing(slow_rank=77, factor=1.9, from_step=20, to_step=40)
    alerts = run(healthy_run(ranks=256, steps=60, seed=5, fault=fault))
    fired = firing(alerts)
    assert [(a.rule, a.ranks, a.scope) for a in fired] == [("straggler", [77], "rank")]
    a = fired[0]
    assert a.evidence["component"] == "compute"
    assert 1.7 < a.evidence["factor"] < 2.1
    assert 20 <= a.step <= 24  # type: ignore[operator]
    assert "rank 77 (node9) is a straggler: compute time" in a.summary
    assert "GPU" in a.summary
    resolved = [x for x in alerts if x.status == "resolved"]
    assert [(x.rule, x.alert_id) for x in resolved] == [("straggler", a.alert_id)]


def test_a_slow_input_pipeline_points_at_the_host() -> None:
    fault = timing(slow_rank=3, component="data_time_s", factor=40.0, from_step=10)
    fired = firing(run(healthy_run(ranks=8, steps=40, seed=5, fault=fault)))
    assert [(a.rule, a.ranks, a.evidence["component"]) for a in fired] == [
        ("straggler", [3], "data")
    ]
    assert "input pipeline" in fired[0].summary


def test_throughput_that_falls_alone_is_a_straggler() -> None:
    def fault(rank: int, step: int, m: dict[str, Any]) -> None:
        if rank == 2 and step >= 20:
            m["throughput_tokens_per_sec"] *= 0.4

    fired = firing(run(healthy_run(ranks=8, steps=40, seed=5, fault=fault)), "straggler")
    assert [(a.ranks, a.evidence["component"]) for a in fired] == [([2], "throughput")]


def data_wait(slow_rank: int, *, factor: float = 1.0, plus_share: float = 0.0) -> Fault:
    """A job whose data wait is ~7% of its ~0.86 s step, heavy-tailed; ``slow_rank`` waits
    ``factor`` x as long plus ``plus_share`` of the step, from step 10."""

    def fault(rank: int, step: int, m: dict[str, Any]) -> None:
        rng = random.Random(step * 100_003 + rank)
        m["compute_time_s"] = 0.8 * (1 + rng.gauss(0, 0.02))
        m["data_time_s"] = 0.06 * rng.lognormvariate(0, 0.3)
        m["step_time_s"] = 0.86
        if rank == slow_rank and step >= 10:
            m["data_time_s"] = m["data_time_s"] * factor + plus_share * 0.86

    return fault


def test_a_slow_data_loader_that_costs_the_job_little_is_not_a_straggler() -> None:
    # 1.5x its peers' data wait: +0.03 s, 3.5% of the step, under the 5% materiality bound.
    fault = data_wait(slow_rank=5, factor=1.5)
    assert run(healthy_run(ranks=64, steps=200, seed=3, fault=fault)) == []


def test_a_slow_data_loader_that_costs_the_job_a_fifth_is_a_straggler() -> None:
    fault = data_wait(slow_rank=5, plus_share=0.2)
    fired = firing(run(healthy_run(ranks=64, steps=200, seed=3, fault=fault)))
    assert [(a.rule, a.ranks, a.evidence["component"]) for a in fired] == [
        ("straggler", [5], "data")
    ]
    a = fired[0]
    assert 0.18 < a.evidence["share_of_step"] < 0.3
    assert 10 <= a.step <= 20  # type: ignore[operator]
    assert "of the job's 0.860 s step" in a.summary


def test_the_bar_rises_with_the_number_of_ranks_compared() -> None:
    # A 20% straggler in a job whose compute jitters 5% (4 deviations): among 8 ranks it stands
    # out; among 1,024 the slowest healthy ranks are about as far out, and the bar says so.
    def noisy(slow_rank: int) -> Fault:
        def fault(rank: int, step: int, m: dict[str, Any]) -> None:
            rng = random.Random(step * 100_003 + rank)
            m["compute_time_s"] = 0.8 * (1 + rng.gauss(0, 0.05)) * (1.2 if rank == slow_rank else 1)
            m["data_time_s"] = 0.01
            m["step_time_s"] = 0.9

        return fault

    small = firing(run(healthy_run(ranks=8, steps=80, seed=3, fault=noisy(2))))
    big = run(healthy_run(ranks=1024, steps=30, seed=3, fault=noisy(-1)))
    assert [a.ranks for a in small] == [[2]]
    assert small[0].evidence["bar_deviations"] == pytest.approx(
        1 + math.sqrt(2 * math.log(8)), abs=1e-3
    )
    assert big == []


def test_a_single_slow_step_is_not_a_straggler() -> None:
    fault = timing(slow_rank=0, factor=5.0, from_step=30, to_step=31)
    assert run(healthy_run(ranks=8, steps=60, seed=5, fault=fault)) == []


# -- rank_silent ----------------------------------------------------------------------------
def stop_rank(events: Iterator[StepEvent], rank: int, start: int, end: int) -> Iterator[StepEvent]:
    """Drops ``rank``'s events for steps in [start, end)."""
    return (ev for ev in events if not (ev.rank == rank and start <= ev.step < end))


def test_rank_silent_fires_while_7_peers_continue_and_resolves_when_it_is_back() -> None:
    events = list(stop_rank(healthy_run(ranks=8, steps=200, seed=2, fault=timing()), 5, 100, 150))
    e = engine()
    alerts: list[Alert] = []
    fired_at = None
    for ev in events:
        new = e.process(ev)
        if new and fired_at is None:
            fired_at = ev.step
        alerts += new
    alerts += e.flush()
    assert [(a.rule, a.ranks, a.scope, a.status) for a in alerts] == [
        ("rank_silent", [5], "rank", "firing"),
        ("rank_silent", [5], "rank", "resolved"),
    ]
    fire, resolve = alerts
    # 30 s of silence, then seen silent for half as long again before it is called silent.
    assert fired_at is not None and 145 <= fired_at <= 148  # its last step was 99
    assert fire.step == 100 and fire.severity == "critical"
    assert fire.summary.startswith("rank 5 (node0) silent for 4")
    assert resolve.alert_id == fire.alert_id
    assert resolve.last_seen.timestamp() == pytest.approx(T0 + 150, abs=0.1)


def test_backlogs_drained_one_rank_after_another_after_a_broker_outage_are_not_silence() -> None:
    # The broker was away for steps 100-160; when it came back every rank's producer emptied
    # its own buffer, one rank after the other. The job's clock jumps to the newest events of
    # the first rank drained while the others' backlogs are still on their way.
    events = list(healthy_run(ranks=8, steps=220, seed=2, fault=timing()))
    before = [ev for ev in events if ev.step < 100]
    held = [ev for ev in events if 100 <= ev.step < 160]
    after = [ev for ev in events if ev.step >= 160]
    drained = sorted(held, key=lambda ev: (ev.rank, ev.step))  # rank by rank, each in order
    assert run(iter(before + drained + after)) == []


def test_a_dead_node_is_one_alert() -> None:
    events = healthy_run(ranks=32, steps=120, seed=2, fault=timing())
    dead = (ev for ev in events if not (8 <= ev.rank < 16 and ev.step >= 50))
    fired = firing(run(dead))
    assert [(a.rule, a.scope, a.ranks) for a in fired] == [
        ("rank_silent", "job", list(range(8, 16)))
    ]
    assert "8 ranks on node1 silent" in fired[0].summary


def test_a_rank_dying_later_is_a_new_alert() -> None:
    events = healthy_run(ranks=32, steps=200, seed=2, fault=timing())
    dead = (
        ev
        for ev in events
        if not (8 <= ev.rank < 16 and ev.step >= 50) and not (ev.rank == 30 and ev.step >= 120)
    )
    fired = firing(run(dead))
    assert [(a.scope, a.ranks) for a in fired] == [("job", list(range(8, 16))), ("rank", [30])]


# -- hang (no progress) ---------------------------------------------------------------------
def test_no_progress_while_logs_arrive_is_a_hang_naming_the_rank_behind() -> None:
    def events() -> Iterator[StepEvent | LogEvent]:
        # Rank 6 never reports step 100: its peers block in the all-reduce of step 101.
        yield from (
            ev for ev in healthy_run(ranks=8, steps=101, seed=4, fault=timing())
            if not (ev.rank == 6 and ev.step == 100)
        )  # fmt: skip
        for i in range(60):  # rank 0 keeps logging heartbeats, 5 s apart
            yield LogEvent(job_id="job-1", rank=0, timestamp=T0 + 101 + 5 * i, level="INFO",
                           message="dataloader heartbeat")  # fmt: skip
        yield from healthy_run(ranks=8, steps=5, seed=4, fault=timing(), t0=T0 + 300,
                               start_step=101)  # fmt: skip

    e = engine()
    alerts = e.process_many(events()) + e.flush()
    hang = [a for a in alerts if a.rule == "hang"]
    assert [(a.status, a.scope) for a in hang] == [("firing", "job"), ("resolved", "job")]
    a = hang[0]
    assert a.evidence["ranks_behind"] == [6]
    assert 120 <= a.evidence["stalled_s"] <= 126
    assert "rank 6 (node0) never reported step 100" in a.summary
    assert [x.rule for x in alerts if x.rule != "hang"] == []  # peers did not step: no silence


def test_a_clock_jump_alone_is_not_a_hang() -> None:
    # The job was down for an hour (nothing arrived), then resumed.
    e = engine()
    alerts = run(healthy_run(ranks=8, steps=50, seed=4, fault=timing()), e)
    alerts += run(healthy_run(ranks=8, steps=50, seed=4, fault=timing(), t0=T0 + 3600,
                              start_step=50), e)  # fmt: skip
    assert alerts == []


# -- configuration and scale ----------------------------------------------------------------
def test_configs_are_validated() -> None:
    for bad in (
        lambda: StragglerConfig(materiality=0.0),
        lambda: StragglerConfig(materiality=1.0),
        lambda: StragglerConfig(min_ranks=2),
        lambda: StragglerConfig(window=0),
        lambda: StragglerConfig(window=63),
        lambda: StragglerConfig(window=8, min_flagged=9),
        lambda: StragglerConfig(z=-1.0),
        lambda: ProgressHangConfig(phase_stall_s=0),
        lambda: RankSilentConfig(min_silence_s=0),
        lambda: RankSilentConfig(min_peer_steps=0),
        lambda: ProgressHangConfig(watch_fraction=2),
    ):
        with pytest.raises(DetectorConfigError):
            bad()


def test_per_rank_state_stays_small() -> None:
    e = engine()
    e.process_many(healthy_run(ranks=64, steps=20, seed=1, fault=timing(),
                               shape=RunShape(checkpoint_every=0)))  # fmt: skip
    job = e.jobs["job-1"]
    straggler_entry = job.slots["straggler"]["r"][3]
    memory = job.slots["log_rules"]["mem"][3]
    assert len(straggler_entry) == 10
    assert len(memory) == 5 * 4


# -- the straggler's state in a snapshot ------------------------------------------------------
def test_the_straggler_state_survives_a_snapshot_as_columns() -> None:
    e = engine()
    e.process_many(healthy_run(ranks=64, steps=40, seed=1, fault=timing(5, from_step=10),
                               shape=RunShape(checkpoint_every=0)))  # fmt: skip
    job = e.jobs["job-1"]
    layout = Layout.of(e, "job-1", ranks_per_chunk=16)
    table = job.slots["straggler"]["r"]
    assert isinstance(table, RankEntries) and table[5][_FIRING] == 1  # rank 5 fired
    back = decode_job(encode_job(job, layout), layout).slots["straggler"]["r"]
    assert isinstance(back, RankEntries) and len(back) == 64
    assert state_difference(back, table) is None
    # A state stored when the entries were a dict of lists reads back as the same columns.
    job.slots["straggler"] = dict(job.slots["straggler"], r=dict(table.items()))
    again = decode_job(encode_job(job, layout), layout).slots["straggler"]["r"]
    assert isinstance(again, RankEntries) and state_difference(again, table) is None


def test_entries_kept_out_of_the_columns_are_judged_like_the_others() -> None:
    # Producers' bugs: a rank far beyond the others (2**62, no world size) and steps past
    # int64. Their entries are kept apart (RankEntries.far), and judged as the lists they were.
    events = list(healthy_run(ranks=70, steps=60, seed=2, fault=timing(3, from_step=10),
                              shape=RunShape(checkpoint_every=0)))  # fmt: skip
    slow = [e for e in events if e.rank == 3]
    far = [e.model_copy(update={"rank": 2**62, "world_size": None}) for e in slow]
    big = [e.model_copy(update={"rank": 70, "world_size": None, "step": e.step + 2**63})
           for e in slow]  # fmt: skip
    e = engine()
    fired = firing(run(iter(sorted([*events, *far, *big], key=lambda x: (x.epoch, x.rank))), e))
    assert [(a.rule, a.ranks) for a in fired] == [
        ("straggler", [3]),
        ("straggler", [70]),
        ("straggler", [2**62]),
    ]
    assert sorted(e.jobs["job-1"].slots["straggler"]["r"].far) == [70, 2**62]


def test_an_older_layouts_entries_read_back_and_are_replaced_at_the_next_step() -> None:
    # The nine fields of an older layout: read where they were, then made afresh, as before.
    rule = StragglerDetector()
    layout = Layout.of(Engine([rule]), "j")
    job = JobState("j", ranks={r: RankState(r) for r in range(3)})
    job.slots["straggler"] = {"r": {r: [0.5, 0.01, 0.0, 0.9, 7, 0, 0, 3, 3] for r in range(3)}}
    state = decode_job(encode_job(job, layout), layout).slots["straggler"]
    assert isinstance(state["r"], RankEntries)
    assert state["r"][1][:9] == [0.5, 0.01, 0.0, 0.9, 7, 0, 0, 3, 3]
    event = StepEvent(job_id="j", rank=1, step=4, timestamp=T0, compute_time_s=0.7)
    rule.on_step(job, job.ranks[1], state, event)
    assert state_difference(state["r"][1], [0.7, *[math.nan] * 3, 1, 0, 0, 4, -1, -1]) is None
    assert state["r"][2][_N] == 7  # not stepped: kept as it was read


# -- the frame path (on_frame) against on_step -------------------------------------------------


class Fresh:
    """A rule whose ticks see every rank as just heard from: the frame checker's jobs keep no
    bookkeeping (``last_seen`` stays -inf), and straggler judges only fresh ranks."""

    def __init__(self, rule: Any) -> None:
        self.rule = rule

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rule, name)

    def on_tick(self, job: JobState, state: dict[str, Any], now: float) -> Iterable[Outcome]:
        for rs in job.ranks.values():
            rs.last_seen = now
        return self.rule.on_tick(job, state, now)


def _frame_rules() -> list[Any]:
    return [
        StragglerDetector(),
        Fresh(
            StragglerDetector(StragglerConfig(warmup_samples=2, window=4, min_flagged=3, recover=4))
        ),
        RankSilentDetector(),
        ProgressHangDetector(),
        ProgressHangDetector(ProgressHangConfig(min_stall_s=3.0, step_periods=2.0)),
    ]


def _timings(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
    """Compute, data, throughput and step time, each missing now and then; rank 3 computes
    three times as long from step 40 on."""

    def maybe(p: float, value: float) -> float | None:
        return None if rng.random() < p else value

    slow = 3.0 if rank == 3 and step >= 40 else 1.0
    return {
        "compute_time_s": maybe(0.05, 0.8 * slow * (1 + rng.gauss(0, 0.03))),
        "data_time_s": maybe(0.1, 0.01 * (1 + abs(rng.gauss(0, 0.3)))),
        "throughput_tokens_per_sec": maybe(0.3, 8000 * rng.uniform(0.95, 1.05)),
        "step_time_s": maybe(0.2, 0.9),
    }


@pytest.mark.parametrize("ranks", [12, 48])
@pytest.mark.parametrize("seed", range(2))
def test_the_frame_path_leaves_the_state_on_step_leaves(seed: int, ranks: int) -> None:
    events = noisy_steps.noisy_job(seed, _timings, ranks=ranks, steps=100)
    found = 0
    for rule in _frame_rules():
        for interval in (0.3, 1.0, 4.0):  # frames of a few rows to whole steps
            n = assert_job_frames_match_scalar(rule, events, tick_interval_s=interval)
            if isinstance(rule, Fresh):
                found += n
    assert found > 0  # the straggler was judged both ways, not merely nothing both ways


@pytest.mark.parametrize("seed", range(2))
def test_a_small_job_is_judged_on_its_lists_as_on_its_columns(seed: int) -> None:
    # Under LISTS_BELOW ranks a tick reads the entries' live lists (numpy costs more than the
    # loop there): the same ticks on the columns give the same outcomes and state.
    events = noisy_steps.noisy_job(seed, _timings, ranks=12, steps=100)
    config = StragglerConfig(warmup_samples=2, window=4, min_flagged=3, recover=4)
    lists, columns = StragglerDetector(config), StragglerDetector(config)
    columns.lists_below = 0
    for interval in (0.3, 1.0, 4.0):
        found = assert_job_frames_match_scalar(
            Fresh(lists), events, tick_interval_s=interval, frames_rule=Fresh(columns)
        )
        assert found > 0  # the straggler was judged both ways


# The faults these rules judge, and a healthy job; `rankwatch scenarios` covers the rest.
@pytest.mark.parametrize("name", ["healthy", "straggler", "hang", "rank_silent", "nccl_timeout"])
def test_the_frame_path_on_simulated_faults(name: str) -> None:
    events = noisy_steps.simulated_steps(name)
    found = sum(assert_job_frames_match_scalar(rule, events) for rule in _frame_rules())
    if name == "straggler":
        assert found > 0


def _edge_steps(ranks: int = 40) -> list[StepEvent]:
    """Rows that take the rare turns: no metric at all, a step time alone, throughput alone,
    a NaN, ranks whose first step comes late, a step reported twice, a step that goes back;
    then the job stalls while its ranks keep repeating their last step, and resumes."""
    rng = random.Random(5)
    out: list[StepEvent] = []

    def add(r: int, step: int, t: float, **metrics: float) -> None:
        out.append(StepEvent(job_id="edge", rank=r, step=step, timestamp=t, **metrics))

    for s in range(60):
        for r in range(ranks):
            if r >= ranks - 3 and s < 30:
                continue  # late ranks
            t = T0 + s + r * 1e-3 + rng.uniform(0, 0.3)
            kind = (7 * s + r) % 11
            if kind == 0:
                add(r, s, t)
            elif kind == 1:
                add(r, s, t, step_time_s=0.9)
            elif kind == 2:
                add(r, s, t, throughput_tokens_per_sec=8000.0)
            else:
                add(r, s, t, compute_time_s=0.8 + rng.gauss(0, 0.02), data_time_s=0.01,
                    step_time_s=0.9)  # fmt: skip
            if r == 5 and s % 9 == 0:
                add(r, s, t + 0.05, compute_time_s=0.7)  # the same step again
            if r == 6 and s % 13 == 0 and s:
                add(r, s - 3, t + 0.05, data_time_s=0.02)  # a step from the past
    nan = out[len(out) // 2]
    out[len(out) // 2] = nan.model_copy(update={"compute_time_s": math.nan})
    for k in range(20):  # stalled at step 59, events still arriving
        for r in range(ranks):
            add(r, 59, T0 + 60 + k + r * 1e-3, compute_time_s=0.8)
    for s in range(60, 70):
        for r in range(ranks):
            add(r, s, T0 + 20 + s + r * 1e-3, compute_time_s=0.8, data_time_s=0.01)
    return sorted(out, key=lambda e: (e.epoch, e.rank))


@pytest.mark.parametrize("reported", ["all", "compute_and_data_only"])
def test_the_frame_path_writes_every_frame_from_the_columns(reported: str) -> None:
    """Every frame is written from the frame's columns (rows with none of compute, data or
    throughput left out, ranks new to the job given an entry): it leaves the state ``on_step``
    leaves, with throughput and step time reported now and then, or by nobody (a column the
    frame does not have)."""

    def timings(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
        got = _timings(rng, rank, step)
        if reported != "all":
            got["throughput_tokens_per_sec"] = got["step_time_s"] = None
        return got

    events = noisy_steps.noisy_job(1, timings, ranks=48, steps=100)
    bare = [
        e
        for e in events
        if e.compute_time_s is None
        and e.data_time_s is None
        and e.throughput_tokens_per_sec is None
    ]
    assert bare  # rows that on_step leaves out are among them
    rule = Fresh(
        StragglerDetector(StragglerConfig(warmup_samples=2, window=4, min_flagged=3, recover=4))
    )
    found = assert_job_frames_match_scalar(rule, events, tick_interval_s=4.0)
    assert found > 0  # rank 3 was judged a straggler both ways


def test_the_frame_path_on_rare_rows() -> None:
    events = _edge_steps()
    hang = ProgressHangDetector(ProgressHangConfig(min_stall_s=3.0, step_periods=2.0))
    assert assert_job_frames_match_scalar(hang, events) >= 2  # fired, then resolved
    for rule in _frame_rules():
        for interval in (0.5, 1.0, 30.0):
            assert_job_frames_match_scalar(rule, events, tick_interval_s=interval)


def test_the_frame_path_replaces_an_older_snapshots_entries() -> None:
    events = _edge_steps()
    old = {"r": {r: [0.5, 0.01, math.nan, 0.9, 7, 0, 0, 3, 3] for r in range(0, 40, 3)}}
    assert_job_frames_match_scalar(noisy_steps.Seeded(StragglerDetector(), old), events)
