"""input_bound and gpu_utilization: a job whose GPUs wait for minutes fires once, names the
share and the worst ranks, and resolves; warm-up, a few slow batches, checkpoint pauses,
evaluation, one slow rank and healthy noise do not fire."""

from __future__ import annotations

import functools
import math
import pickle
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import noisy_steps
import pytest
from synth import T0, run_engine

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.simulate import JobSpec, simulate
from rankwatch.simulate.scenarios import SCENARIOS
from rankwatch.streams import DetectorConfigError, Engine
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.utilization import (
    GpuUtilizationConfig,
    GpuUtilizationDetector,
    InputBoundConfig,
    InputBoundDetector,
    detectors,
)
from rankwatch.streams.findings import Finding, Outcome
from rankwatch.streams.frames import RankEntries, StepFrame
from rankwatch.streams.frames.testing import assert_job_frames_match_scalar
from rankwatch.streams.state_codec import Layout, decode_job, encode_job
from rankwatch.streams.testing import state_difference

#: ``metrics(rank, step, rng)``: one rank's step; ``wall`` (popped) is the time the step took
#: on that rank when it is not ``step_time_s`` (data fetched outside the timed step).
Metrics = Callable[[int, int, random.Random], dict[str, Any]]


def job(
    metrics: Metrics,
    *,
    ranks: int = 4,
    steps: int = 1000,
    seed: int = 0,
    every: int = 1,
    world: int | None = None,
) -> Iterator[StepEvent]:
    """A synchronous job: each step ends when its slowest rank's does; a rank's step event
    comes every ``every`` steps (a trainer that logs means every N steps)."""
    rng = random.Random(seed)
    t = T0
    for step in range(steps):
        ms = [metrics(r, step, rng) for r in range(ranks)]
        walls = [m.pop("wall", None) for m in ms]
        t += max(
            w if w is not None else m.get("step_time_s") or m["data_time_s"] + m["compute_time_s"]
            for w, m in zip(walls, ms, strict=True)
        )
        if step % every:
            continue
        for r, m in enumerate(ms):
            yield StepEvent(job_id="job-1", rank=r, world_size=world or ranks, host=f"node{r // 4}",
                            step=step, timestamp=t + 0.001 * r, **m)  # fmt: skip


def starved(data: float = 0.06, compute: float = 0.03, comm: float = 0.01) -> Metrics:
    """The integrator's ``slow_data`` job: batches take longer than the forward, from step 0.
    Data waits jitter +-20%; the step holds the wait (the batch is made inside the step)."""

    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        d = data * rng.uniform(0.8, 1.2)
        c = compute * rng.uniform(0.9, 1.1)
        return {"data_time_s": d, "compute_time_s": c, "step_time_s": d + c + comm}

    return m


def healthy(step_s: float = 0.8, share: float = 0.05, sigma: float = 0.5) -> Metrics:
    """Data waits ~``share`` of the step, log-normal, with rare stalls of up to 30x."""

    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        d = share * step_s * rng.lognormvariate(0, sigma)
        if rng.random() < 0.01:
            d *= min(30.0, 1 + 2 * rng.paretovariate(1.5))
        c = (1 - share) * step_s * (1 + rng.gauss(0, 0.03))
        return {"data_time_s": d, "compute_time_s": c, "step_time_s": d + c}

    return m


def run(events: Iterator[StepEvent | LogEvent], *dets: Any) -> list[Alert]:
    return run_engine(Engine(list(dets) or detectors()), events)  # type: ignore[arg-type]


def firing(alerts: list[Alert], rule: str | None = None) -> list[Alert]:
    return [a for a in alerts if a.status == "firing" and rule in (None, a.rule)]


def _at(a: Alert) -> float:
    return a.last_seen.timestamp() - T0


# -- input_bound: the fault -----------------------------------------------------------------
def test_a_job_starved_of_data_from_step_0_fires_once_naming_share_and_ranks() -> None:
    # 0.06 s of data in a ~0.1 s step on all 4 ranks, 3,000 steps (~5 min).
    alerts = run(job(starved(), steps=3000))
    [a] = firing(alerts)
    assert (a.rule, a.scope, a.ranks) == ("input_bound", "job", [0, 1, 2, 3])
    assert 0.5 < a.evidence["data_share"] < 0.7
    assert a.evidence["ranks_bound"] == 4 and len(a.evidence["worst"]) == 3
    # Judged from the 21st step (warm-up) on, at ticks of 1 s (~10 steps); 120 s later.
    assert a.step is not None and 20 <= a.step <= 32
    assert 120 <= _at(a) - 0.1 * a.step < 123
    assert "input-bound: 4 of 4 ranks wait for data 5" in a.summary
    assert "worst: rank " in a.summary and "num_workers" in a.summary
    assert "pin_memory" in a.summary and "prefetch_factor" in a.summary
    assert [x.status for x in alerts] == ["firing"]  # refreshed, not repeated


def test_the_step_is_measured_whole_when_the_batch_is_fetched_outside_it() -> None:
    # `for batch in loader: with watch_step(...)`: step_time_s is forward+backward (0.04 s),
    # the 0.06 s fetch is only in data_time_s; the rank's own period tells the 0.1 s step.
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        d = 0.06 * rng.uniform(0.9, 1.1)
        return {"data_time_s": d, "compute_time_s": 0.015, "step_time_s": 0.04, "wall": d + 0.04}

    [a] = firing(run(job(m, steps=2500)))
    assert 0.5 < a.evidence["data_share"] < 0.7
    assert a.evidence["step_time_s"] == pytest.approx(0.1, rel=0.1)


def test_means_every_ten_steps_without_step_time_are_judged_on_the_period() -> None:
    # The Hugging Face callback: means since its last log, no step_time_s; compute_time_s is
    # the forward only, so data + compute (0.15 s) is not the step (0.25 s).
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        return {"data_time_s": 0.1 * rng.uniform(0.9, 1.1), "compute_time_s": 0.05, "wall": 0.25}

    [a] = firing(run(job(m, ranks=8, steps=8000, every=10)), "input_bound")
    assert 0.35 < a.evidence["data_share"] < 0.45
    assert a.evidence["step_time_s"] == pytest.approx(0.25, rel=0.1)


def test_a_starved_job_of_256_ranks_is_one_alert() -> None:
    alerts = run(job(starved(data=0.5, compute=0.4, comm=0.1), ranks=256, steps=200))
    [a] = firing(alerts)
    assert a.evidence["ranks_bound"] == 256 and len(a.ranks) == 256
    assert a.summary.startswith("input-bound: 256 of 256 ranks")


# -- input_bound: look-alikes ---------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_a_healthy_job_with_heavy_tailed_data_waits_fires_nothing(seed: int) -> None:
    assert run(job(healthy(step_s=0.3, share=0.08), ranks=8, steps=4000, seed=seed)) == []


def test_a_few_slow_batches_do_not_fire() -> None:
    base = healthy()

    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        out = base(rank, step, rng)
        if 400 <= step < 410:  # a storage hiccup: ten batches of 3 s on every rank
            out["data_time_s"] += 3.0
            out["step_time_s"] += 3.0
        return out

    assert run(job(m, ranks=8, steps=1000)) == []


def test_checkpoint_pauses_counted_as_data_wait_do_not_fire() -> None:
    # Every rank waits 120 s for the checkpoint writer every 200 steps (0.8 s each), and the
    # wait lands in data_time_s (the next batch is fetched after the save): no phase said.
    base = healthy()

    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        out = base(rank, step, rng)
        if step and step % 200 == 0:
            out["data_time_s"] += 120.0
            out["step_time_s"] += 120.0
        return out

    assert run(job(m, ranks=8, steps=1200)) == []


def test_warm_up_with_a_slow_first_batches_and_compile_does_not_fire() -> None:
    base = healthy()

    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        out = base(rank, step, rng)
        if step < 15:  # worker processes spawn, the page cache is cold, compile
            out["data_time_s"] += 8.0 / (step + 1)
            out["step_time_s"] += 8.0 / (step + 1) + 5.0 * (step < 3)
        return out

    assert run(job(m, ranks=8, steps=600)) == []


def test_one_slow_rank_is_a_stragglers_business_not_input_bound() -> None:
    base = healthy()

    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        out = base(rank, step, rng)
        if rank in (3, 5):  # two of eight ranks' hosts read from a slow disk
            out["data_time_s"] = 1.5
            out["step_time_s"] = 1.5 + out["compute_time_s"]
        return out

    assert firing(run(job(m, ranks=8, steps=600), InputBoundDetector())) == []


def test_a_single_rank_job_is_judged_only_when_asked() -> None:
    assert run(job(starved(), ranks=1, steps=2000)) == []
    [a] = firing(run(job(starved(), ranks=1, steps=2000), InputBoundDetector(
        InputBoundConfig(min_ranks=1))))  # fmt: skip
    assert a.ranks == [0]


def test_ranks_that_never_report_count_against_the_share() -> None:
    # Only ranks 0-3 of 8 report (world_size 8): half the job cannot be called input-bound.
    assert run(job(starved(), ranks=4, world=8, steps=2000)) == []


def test_evaluation_steps_and_the_step_after_an_eval_pass_are_not_counted() -> None:
    # Steps marked phase="eval" wait for their batches 90% of the time; a 5-minute eval pass
    # every 300 training steps, announced in the log; the first training step after it waits
    # 20 s for the loader's workers to restart.
    def events() -> Iterator[StepEvent | LogEvent]:
        t = T0
        rng = random.Random(3)
        base = healthy(step_s=0.5)
        for step in range(1500):
            if step and step % 300 == 0:
                # huggingface/transformers src/transformers/trainer.py, Trainer.evaluation_loop:
                # logger.info(f"***** Running {description} *****"), description "Evaluation".
                yield LogEvent(job_id="job-1", rank=0, timestamp=t + 0.01, level="INFO",
                               message="***** Running Evaluation *****")  # fmt: skip
                for _ in range(300):
                    t += 1.0
                    for r in range(4):
                        yield StepEvent(job_id="job-1", rank=r, world_size=4, step=step,
                                        timestamp=t, phase="eval", data_time_s=0.9,
                                        step_time_s=1.0)  # fmt: skip
            ms = [base(r, step, rng) for r in range(4)]
            if step and step % 300 == 0:
                for m in ms:
                    m["data_time_s"] += 20.0
                    m["step_time_s"] += 20.0
            t += max(m["step_time_s"] for m in ms)
            for r, m in enumerate(ms):
                yield StepEvent(job_id="job-1", rank=r, world_size=4, step=step,
                                timestamp=t + 0.001 * r, **m)  # fmt: skip

    assert run(events()) == []


# -- input_bound: resolution ----------------------------------------------------------------
def test_resolves_once_the_wait_is_back_under_the_bar_for_a_while() -> None:
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        d = 0.06 if step < 2000 else 0.005  # num_workers raised at step 2000 (200 s)
        return {"data_time_s": d, "compute_time_s": 0.09 - d, "step_time_s": 0.1}

    alerts = run(job(m, steps=4000))
    assert [a.status for a in alerts] == ["firing", "resolved"]
    fired, resolved = alerts
    assert fired.alert_id == resolved.alert_id
    # The EWMA forgets the wait within a few steps, then 60 s under the bar (+ a tick).
    assert 60 <= _at(resolved) - 200 < 65
    assert resolved.summary.startswith("resolved: the data wait is down to 5% of the step")


def test_a_share_that_hovers_under_the_bar_after_firing_does_not_flap() -> None:
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        share = 0.4 if step < 2000 else 0.23  # under the 25% bar, over the 20% resolve bar
        d = share * 0.1 * rng.uniform(0.9, 1.1)
        return {"data_time_s": d, "compute_time_s": 0.1 - d, "step_time_s": 0.1}

    alerts = run(job(m, steps=8000))
    assert [a.status for a in alerts] == ["firing"]


def test_a_dip_during_the_streak_does_not_restart_it() -> None:
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        share = 0.22 if 600 <= step < 700 else 0.4  # 10 s under the bar, over the 20% it holds
        d = share * 0.1
        return {"data_time_s": d, "compute_time_s": 0.1 - d, "step_time_s": 0.1}

    [a] = firing(run(job(m, steps=2000)))
    assert 120 <= _at(a) - 0.1 * (a.step or 0) < 122 and (a.step or 0) < 40


def test_a_long_evaluation_neither_breaks_the_streak_nor_resolves_the_incident() -> None:
    # 400 s without training steps (the ranks' samples go stale), then starved as before.
    def events() -> Iterator[StepEvent]:
        for e in job(starved(), steps=3000):
            later = StepEvent(**{**e.model_dump(), "timestamp": e.epoch + 400})
            yield later if e.step >= 1500 else e

    alerts = run(events())
    assert [a.status for a in alerts] == ["firing"]


# -- gpu_utilization ------------------------------------------------------------------------
def _util(level: float, noise: float = 5.0, **extra: float) -> Metrics:
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        u = min(100.0, max(0.0, rng.gauss(level, noise)))
        return {"gpu_utilization": u, **extra}

    return m


def test_low_utilization_from_waiting_for_data_fires_and_says_so() -> None:
    base = starved(data=0.4, compute=0.5, comm=0.1)

    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        return {**base(rank, step, rng), "gpu_utilization": rng.gauss(55, 8)}

    alerts = run(job(m, ranks=8, steps=500), GpuUtilizationDetector())
    [a] = firing(alerts)
    assert (a.rule, a.scope, len(a.ranks)) == ("gpu_utilization", "job", 8)
    assert 50 < a.evidence["gpu_utilization"] < 60
    assert 0.35 < a.evidence["data_share"] < 0.45
    assert a.evidence["collective_share"] == pytest.approx(0.1, abs=0.02)
    assert "GPUs underused: 8 of 8 ranks at 5" in a.summary and "lowest: rank " in a.summary
    assert "waiting for data" in a.summary and "num_workers" in a.summary
    assert 300 <= _at(a) - (a.step or 0) * 1.0 < 305  # five minutes of ~1 s steps


def test_low_utilization_from_collectives_points_at_communication() -> None:
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        u = rng.gauss(50, 5)
        return {"gpu_utilization": u, "data_time_s": 0.01, "compute_time_s": 0.5,
                "step_time_s": 1.0}  # fmt: skip

    [a] = firing(run(job(m, ranks=8, steps=500), GpuUtilizationDetector()))
    assert a.evidence["collective_share"] == pytest.approx(0.49, abs=0.01)
    assert "communication" in a.summary and "bucket_cap_mb" in a.summary


def test_low_utilization_with_no_timing_blames_the_host_side() -> None:
    [a] = firing(run(job(_util(40.0, step_time_s=0.5), steps=1000), GpuUtilizationDetector()))
    assert a.evidence["data_share"] is None and a.evidence["collective_share"] is None
    assert "torch.compile" in a.summary


def test_silent_without_gpu_utilization() -> None:
    base = starved(data=0.4, compute=0.5, comm=0.1)
    assert firing(run(job(base, ranks=8, steps=500), GpuUtilizationDetector())) == []


def test_healthy_utilization_with_warm_up_checkpoints_and_noise_fires_nothing() -> None:
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        u = rng.gauss(88, 8)
        st = 1.0
        if step < 30:  # compile: the GPU idles while the host works
            u = rng.uniform(0, 30)
        if step and step % 100 == 0:  # a checkpoint save: one step mostly idle
            u, st = 5.0, 30.0
        return {"gpu_utilization": min(100.0, max(0.0, u)), "step_time_s": st}

    assert run(job(m, ranks=8, steps=2000), GpuUtilizationDetector()) == []


def test_one_rank_with_a_low_utilization_is_not_the_jobs() -> None:
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        return {"gpu_utilization": 30.0 if rank == 2 else 90.0, "step_time_s": 1.0}

    assert run(job(m, ranks=8, steps=800), GpuUtilizationDetector()) == []


def test_evaluation_steps_with_idle_gpus_are_not_counted() -> None:
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        return {"gpu_utilization": min(100.0, rng.gauss(90, 3)), "step_time_s": 1.0}

    def events() -> Iterator[StepEvent]:
        for e in job(m, ranks=4, steps=1000):
            if 300 <= e.step < 900:  # a long evaluation, reported with phase="eval"
                yield e.model_copy(update={"phase": "eval", "gpu_utilization": 10.0})
            else:
                yield e

    assert run(events(), GpuUtilizationDetector()) == []


def test_utilization_resolves_when_back_over_the_resolve_bar() -> None:
    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        level = 50.0 if step < 600 else 90.0
        return {"gpu_utilization": rng.gauss(level, 3), "step_time_s": 1.0}

    alerts = run(job(m, ranks=4, steps=900), GpuUtilizationDetector())
    assert [a.status for a in alerts] == ["firing", "resolved"]
    assert alerts[1].summary.startswith("resolved: GPU utilization back to 8")
    # ~20 steps (1 s each) for the EWMA to climb past 75%, then 60 s over it.
    assert 75 <= _at(alerts[1]) - 600 < 85


# -- configuration and state ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (InputBoundConfig, {"share": 1.0}, "share"),
        (InputBoundConfig, {"share": 0.0}, "share"),
        (InputBoundConfig, {"resolve_share": 0.3}, "resolve_share"),
        (InputBoundConfig, {"rank_share": 1.5}, "rank_share"),
        (InputBoundConfig, {"rank_share": 0.0}, "rank_share"),
        (InputBoundConfig, {"min_ranks": 0}, "min_ranks"),
        (InputBoundConfig, {"sustain_s": 0.0}, "sustain_s"),
        (InputBoundConfig, {"sustain_s": math.inf}, "sustain_s"),
        (InputBoundConfig, {"min_steps": -1}, "min_steps"),
        (InputBoundConfig, {"warmup_steps": 1.5}, "warmup_steps"),
        (InputBoundConfig, {"smoothing_steps": 0}, "smoothing_steps"),
        (InputBoundConfig, {"recover_s": -1.0}, "recover_s"),
        (InputBoundConfig, {"recover_steps": -1}, "recover_steps"),
        (InputBoundConfig, {"refresh_s": 0.0}, "refresh_s"),
        (InputBoundConfig, {"stale_s": math.nan}, "stale_s"),
        (InputBoundConfig, {"severity": "fatal"}, "severity"),
        (GpuUtilizationConfig, {"bar": 100.0}, "bar"),
        (GpuUtilizationConfig, {"bar": 0.0}, "bar"),
        (GpuUtilizationConfig, {"resolve_bar": 65.0}, "resolve_bar"),
        (GpuUtilizationConfig, {"resolve_bar": 101.0}, "resolve_bar"),
        (GpuUtilizationConfig, {"min_steps": True}, "min_steps"),
        (GpuUtilizationConfig, {"action": "page"}, "action"),
    ],
)
def test_bad_config_names_the_setting(
    cls: type[Any], kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(DetectorConfigError, match=rf"{cls.__name__}\.{field}\b"):
        cls(**kwargs)


def test_state_is_small_plain_data() -> None:
    engine = Engine(detectors())
    run_engine(engine, job(starved(), ranks=8, steps=300))
    job_state = engine.jobs["job-1"]
    for name in ("input_bound", "gpu_utilization"):
        state = job_state.slots[name]
        assert pickle.loads(pickle.dumps(state)).keys() == state.keys()
        entries = state["r"]
        assert isinstance(entries, RankEntries)
        assert {type(v) for _, e in entries.items() for v in e} <= {int, float}
        stored = dict(entries.items())  # what the snapshot codec stores of it
        assert len(pickle.dumps(stored)) < 120 * 8  # under 120 bytes a rank


def _starved_and_idle() -> Metrics:
    slow_data = starved()

    def m(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        return {**slow_data(rank, step, rng), "gpu_utilization": rng.uniform(30.0, 50.0)}

    return m


def test_the_state_survives_the_codec_as_columns_and_goes_on_alike() -> None:
    # The entries are stored as rank -> list and read back as RankEntries; an engine that
    # adopts the state then raises what the live one raises (gpu_utilization fires after the
    # cut, input_bound before it).
    events = list(job(_starved_and_idle(), ranks=8, steps=4000))
    cut = 8 * 1500
    live, restored = Engine(detectors()), Engine(detectors())
    before = live.process_many(events[:cut])
    assert [a.rule for a in firing(before)] == ["input_bound"]
    layout = Layout.of(live, "job-1")
    back = decode_job(encode_job(live.jobs["job-1"], layout), layout)
    for name in ("input_bound", "gpu_utilization"):
        entries = back.slots[name]["r"]
        assert isinstance(entries, RankEntries) and list(entries) == list(range(8))
        assert state_difference(live.jobs["job-1"].slots[name], back.slots[name], name) is None
    restored.adopt(back)
    after = [(a.rule, a.status, a.summary) for a in run_engine(live, events[cut:])]
    assert ("gpu_utilization", "firing") in {(rule, status) for rule, status, _ in after}
    assert [(a.rule, a.status, a.summary) for a in run_engine(restored, events[cut:])] == after
    assert state_difference(live.jobs["job-1"], restored.jobs["job-1"]) is None


def test_a_state_stored_as_a_dict_of_lists_reads_back_as_columns() -> None:
    # Stored before the rules kept columns, "r" was a dict of rank -> the same entry lists.
    engine = Engine(detectors())
    run_engine(engine, job(_starved_and_idle(), ranks=8, steps=300))
    job_state = engine.jobs["job-1"]
    layout = Layout.of(engine, "job-1")
    states = {name: job_state.slots[name] for name in ("input_bound", "gpu_utilization")}
    for name, state in states.items():
        old = {r: list(e) for r, e in state["r"].items()}
        assert old[3][:3] == [300, old[3][1], 299] and len(old[3]) == 8
        job_state.slots[name] = dict(state, r=old)
    back = decode_job(encode_job(job_state, layout), layout)
    for name, state in states.items():
        assert isinstance(back.slots[name]["r"], RankEntries)
        assert state_difference(state, back.slots[name], name) is None


def _judged_alone(
    rank_of: Callable[[int], int], step_of: Callable[[int, int], int]
) -> tuple[list[Outcome], dict[str, Any]]:
    """input_bound's outcomes and state over a starved 4-rank job, each rank's events given
    the rank ``rank_of(rank)`` and the step ``step_of(rank, step)``, row by row (ticks every
    ten steps)."""
    rule = InputBoundDetector()
    ranks = {rank_of(r): RankState(rank_of(r), f"node{r}") for r in range(4)}
    j = JobState("job-1", ranks=ranks)
    state, out = rule.new_job_state(), list[Outcome]()
    for i, e in enumerate(job(starved(), steps=1600)):
        r = rank_of(e.rank)
        j.max_step = max(j.max_step, e.step)
        rule.on_step(
            j, j.ranks[r], state, e.model_copy(update={"rank": r, "step": step_of(r, e.step)})
        )
        if i % 40 == 39:
            out += rule.on_tick(j, state, e.epoch)
    return out, state


def test_entries_kept_out_of_the_columns_are_judged_as_the_others() -> None:
    # A rank far beyond the others (no world size) and a step past int64 (pydantic takes any
    # integer) have their entries kept apart from the columns (RankEntries.far): the tick
    # counts and names them as any rank, as it did when the entries were lists.
    far = 2**40
    [plain] = _judged_alone(lambda r: r, lambda r, s: s)[0]
    outcomes, state = _judged_alone(
        lambda r: far if r == 3 else r, lambda r, s: s + 2**64 * (r == 2)
    )
    [apart] = outcomes
    assert isinstance(plain, Finding) and isinstance(apart, Finding)
    state["r"].settle()  # a small job's tick reads the lists as they are: copied back here
    assert sorted(state["r"].far) == [2, far] and state["r"][2][2] == 2**64 + 1599
    assert apart.ranks == (0, 1, 2, far) and apart.evidence["ranks_bound"] == 4
    assert {k: v for k, v in apart.evidence.items() if k != "worst"} == {
        k: v for k, v in plain.evidence.items() if k != "worst"
    }
    # A frame over a rank kept apart takes on_step's way, with the same state.
    events = [
        e.model_copy(update={"rank": far}) if e.rank == 3 else e for e in job(starved(), steps=300)
    ]
    for rule in _frame_rules():
        assert_job_frames_match_scalar(rule, events)


# -- a real loop: torch DataLoader, watch_step, the producer's own timing -------------------
def _real_loop(data_s: float, steps: int) -> list[StepEvent]:
    """One rank of the ``slow_data`` job, in process: a DataLoader whose batches take
    ``data_s`` (a sleep: storage), a forward of 0.03 s (a sleep, as tests/faulty_trainer.py),
    the README's loop (the batch is fetched outside ``watch_step``)."""
    torch = pytest.importorskip("torch")
    from rankwatch.producers.integrations import watch_step
    from rankwatch.producers.testing import capture_events

    class Slow(torch.utils.data.Dataset):  # type: ignore[misc]
        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int) -> Any:
            time.sleep(data_s)
            return torch.randn(64, 16, generator=torch.Generator().manual_seed(i))

    class Net(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(16, 1)

        def forward(self, x: Any) -> Any:
            time.sleep(0.03)
            return self.layer(x)

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(Slow(), batch_size=None, num_workers=0)
    with capture_events(job_id="job-1", rank=0) as events:
        for step, x in enumerate(loader):
            with watch_step(step, model=model) as s:
                loss = model(x).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                s.loss = loss.item()
    return [e for e in events if isinstance(e, StepEvent)]


_QUICK = InputBoundConfig(min_ranks=1, warmup_steps=5, sustain_s=2.0, min_steps=15)


def test_a_real_loop_starved_by_its_dataloader_fires() -> None:
    events = _real_loop(0.06, 50)
    assert all(e.data_time_s is not None and e.data_time_s >= 0.06 for e in events[1:])
    [a] = firing(run(iter(events), InputBoundDetector(_QUICK)))
    assert a.rule == "input_bound" and a.ranks == [0]
    # watch_step times forward+backward only; the rank's period holds the 0.06 s fetch too.
    timed = statistics.median(e.step_time_s or 0.0 for e in events[5:])
    assert a.evidence["step_time_s"] >= 0.09 and a.evidence["step_time_s"] > timed + 0.03


def test_a_real_loop_with_a_fast_dataloader_does_not() -> None:
    events = _real_loop(0.001, 50)
    assert run(iter(events), InputBoundDetector(_QUICK)) == []


# -- the frame path (on_frame) leaves the state on_step leaves ------------------------------
#: Quick settings, so a noisy job of a few hundred steps fires and resolves both rules (no
#: step counts: the checker's job keeps no highest step).
_QUICK_IB = InputBoundConfig(
    warmup_steps=5, sustain_s=30.0, min_steps=0, recover_s=10.0, recover_steps=0, refresh_s=20.0
)
_QUICK_GPU = GpuUtilizationConfig(
    warmup_steps=5, sustain_s=30.0, min_steps=0, recover_s=10.0, recover_steps=0, refresh_s=20.0
)


def _frame_rules() -> list[Any]:
    return [
        InputBoundDetector(),
        GpuUtilizationDetector(),
        InputBoundDetector(_QUICK_IB),
        GpuUtilizationDetector(_QUICK_GPU),
    ]


def _noisy_times(rng: random.Random, rank: int, step: int) -> dict[str, float | None]:
    """A rank's timings and utilization, each sometimes missing; starved of data (and its GPU
    idle) on most ranks from step 80 to 180; now and then a stall of 30 steps' time; a step
    time that sometimes leaves out the batch fetch (the period is longer)."""

    def maybe(p: float, value: float) -> float | None:
        return None if rng.random() < p else value

    bad = 80 <= step < 180 and rank % 8 != 7
    data = (0.5 if bad else 0.03) * rng.lognormvariate(0, 0.4)
    if rng.random() < 0.01:
        data *= 30.0
    compute = 0.4 * (1 + rng.gauss(0, 0.05))
    step_s = data + compute + 0.05 * rng.random()
    if rng.random() < 0.2:
        step_s = compute  # timed without the fetch
    return {
        "data_time_s": maybe(0.05, data),
        "compute_time_s": maybe(0.1, compute),
        "step_time_s": maybe(0.15, step_s),
        "gpu_utilization": maybe(0.05, min(100.0, max(0.0, rng.gauss(45 if bad else 90, 6)))),
    }


@pytest.mark.parametrize(("seed", "ranks"), [(0, 12), (1, 32), (2, 9)])
def test_the_frame_path_leaves_the_state_on_step_leaves(seed: int, ranks: int) -> None:
    events = noisy_steps.noisy_job(seed, _noisy_times, ranks=ranks, steps=260, step_s=0.6)
    found = 0
    for rule in _frame_rules():
        for interval in (0.3, 1.0, 4.0):  # frames of a few rows to whole steps
            found += assert_job_frames_match_scalar(rule, events, tick_interval_s=interval)
    assert found >= 12  # both quick rules fired and resolved: judged both ways, not silent


@pytest.mark.parametrize("seed", range(2))
def test_a_small_job_is_judged_on_its_lists_as_on_its_columns(seed: int) -> None:
    # Under LISTS_BELOW ranks a tick reads the entries' live lists (numpy costs more than the
    # loop there): the same ticks on the columns give the same outcomes and state.
    events = noisy_steps.noisy_job(seed, _noisy_times, ranks=12, steps=260, step_s=0.6)
    found = 0
    for lists, columns in zip(_frame_rules(), _frame_rules(), strict=True):
        columns.lists_below = 0
        for interval in (0.3, 1.0, 4.0):
            found += assert_job_frames_match_scalar(
                lists, events, tick_interval_s=interval, frames_rule=columns
            )
    assert found >= 12  # both quick rules fired and resolved


@functools.cache
def _simulated(name: str, ranks: int = 24) -> list[StepEvent]:
    """A simulated job's step events with one fault, in the engine's (time, rank) order, with
    a GPU utilization (the compute share of the step, noisy) and, from step 60 on, batches
    fifteen times slower (input-bound) on seven ranks in eight."""
    spec = JobSpec(job_id=f"sim-{name}", ranks=ranks, steps=160, seed=3)
    fault = SCENARIOS[name](at_step=80, rank=3)
    rng = random.Random(name)
    steps = []
    for e in simulate(spec, [fault], duplicates=0.01, reorder=0.02):
        if not isinstance(e, StepEvent):
            continue
        update: dict[str, Any] = {}
        if e.compute_time_s is not None and e.step_time_s:
            busy = 100 * e.compute_time_s / e.step_time_s + rng.gauss(0, 3)
            update["gpu_utilization"] = min(100.0, max(0.0, busy))
        if e.data_time_s is not None and e.step >= 60 and e.rank < 7 * ranks // 8:
            update["data_time_s"] = 15 * e.data_time_s
        steps.append(e.model_copy(update=update))
    return sorted(steps, key=lambda e: (e.epoch, e.rank))


# The faults that move step times and utilization, and a healthy job; `rankwatch scenarios`
# covers the rest.
@pytest.mark.parametrize("name", ["healthy", "straggler", "throughput_drop", "hang", "memory_leak"])
def test_the_frame_path_on_simulated_faults(name: str) -> None:
    events = _simulated(name)
    for rule in _frame_rules():
        assert_job_frames_match_scalar(rule, events)


def test_the_frame_path_on_a_simulated_starved_job_fires_both_ways() -> None:
    events = _simulated("healthy")
    assert assert_job_frames_match_scalar(InputBoundDetector(_QUICK_IB), events) > 0


def _edge_steps(ranks: int = 16) -> list[StepEvent]:
    """Rows that take the rare turns: no timing at all, a step time alone, data and compute
    without a step time, no measure, NaN values (an unvalidated event), ranks whose first
    step comes late, a step reported twice, a step that goes back, a stall of an hour."""
    rng = random.Random(11)
    out: list[StepEvent] = []
    t = 1.7e9
    for step in range(120):
        t += 0.5
        for r in range(ranks):
            if r >= ranks - 2 and step < 40 + 20 * (r - ranks + 2):
                continue  # late ranks
            kind = rng.random()
            values: dict[str, Any] = {
                "data_time_s": 0.2 * rng.random(),
                "compute_time_s": 0.3,
                "step_time_s": 0.5,
                "gpu_utilization": 100 * rng.random(),
            }
            if kind < 0.05:
                values = {}
            elif kind < 0.1:
                values = {"step_time_s": 0.5}
            elif kind < 0.15:
                del values["step_time_s"]
            elif kind < 0.2:
                values["data_time_s"] = None
            elif kind < 0.25:
                values["gpu_utilization"] = None
            elif kind < 0.3:
                values["compute_time_s"] = None
            s = step
            if rng.random() < 0.03:
                s = step - 1 - rng.randrange(3)  # the same step again, or one that goes back
            at = t + 3600.0 if step == 90 else t  # an hour's stall
            e = StepEvent(job_id="edge", rank=r, step=max(s, 0), timestamp=at + 1e-3 * r)
            nan = rng.random() < 0.03
            e = e.model_copy(update={k: math.nan if nan else v for k, v in values.items()})
            out.append(e)
        if step == 90:
            t += 3600.0
    return sorted(out, key=lambda e: (e.epoch, e.rank))


def test_the_frame_path_at_the_edges() -> None:
    rows = _edge_steps()
    first = rows[:1]
    no_measure = [
        e.model_copy(update={"data_time_s": None, "gpu_utilization": None}) for e in rows[:200]
    ]
    only_one = [e.model_copy(update={"data_time_s": None}) if e.rank % 2 else e for e in rows]
    twice = [e for e in rows[:600] for _ in range(1 + (e.step % 7 == 0))]
    warm_up = rows[: 16 * 4]  # nothing counted yet
    huge = [e.model_copy(update={"step": e.step + 2**53}) for e in rows[:400]]
    for rule in _frame_rules():
        for events in (rows, first, no_measure, only_one, twice, warm_up, huge):
            for interval in (0.3, 1.0, 4.0):
                assert_job_frames_match_scalar(rule, events, tick_interval_s=interval)


@pytest.mark.parametrize("make", [InputBoundDetector, GpuUtilizationDetector])
def test_the_frame_path_after_a_phase_change(make: Callable[[], Any]) -> None:
    """A rank's first step after an evaluation or a checkpoint is not counted, on both paths:
    the phase turns at a time between two ranks' steps, mid-frame."""
    rule = make()
    slow_data = starved()

    def metrics(rank: int, step: int, rng: random.Random) -> dict[str, Any]:
        return {**slow_data(rank, step, rng), "gpu_utilization": rng.uniform(30.0, 50.0)}

    events = list(job(metrics, ranks=8, steps=80))
    by_step: dict[int, list[StepEvent]] = {}
    for e in events:
        by_step.setdefault(e.step, []).append(e)
    jobs = [JobState("job-1"), JobState("job-1")]
    for j in jobs:
        j.world_size = 8
        j.ranks.update({r: RankState(r, f"node{r // 4}") for r in range(8)})
    scalar, framed = rule.new_job_state(), rule.new_job_state()
    for step, rows in sorted(by_step.items()):
        if step in (30, 55):
            for j in jobs:  # after rank 3's step before, before rank 4's
                j.phase_since = 0.5 * (by_step[step - 1][3].epoch + by_step[step - 1][4].epoch)
        for e in rows:
            rule.on_step(jobs[0], jobs[0].ranks[e.rank], scalar, e)
        rule.on_frame(jobs[1], framed, StepFrame.from_events(rows), rows)
        assert state_difference(scalar, framed, "state") is None, step
    assert scalar["new"] == 8 * (80 - 20) - 2 * 4  # the warm-up and eight steps not counted
