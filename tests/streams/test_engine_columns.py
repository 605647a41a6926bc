"""rankwatch.streams.engine_columns: the columnar step path gives what Engine.process gives
(alerts, ids included, and every rank's state), with the real detectors and decoder."""

from __future__ import annotations

from typing import Any

from rankwatch.streams import Engine


def _life_of_a_job(ranks: int = 6) -> list[bytes]:
    """Step events of one 6-rank job through the rows the columnar path leaves to process():
    first steps, duplicates, an evaluation pass, a world_size announced late, a restart that
    says its attempt, one that does not (a lower step, later), late steps of an attempt that
    is over, and a rank whose gradient norm blows up (findings held with the steps)."""
    import random

    import orjson

    rng = random.Random(5)
    out: list[bytes] = []

    def emit(rank: int, n: int, t: float, **extra: object) -> None:
        value = {"schema_version": 1, "kind": "step", "job_id": "life", "rank": rank, "step": n, "timestamp": t,
                 "loss": 2.0 + rng.gauss(0, 0.02), "gradient_norm": 1.0 + rng.random() * 0.1,
                 "step_time_s": 1.0, "compute_time_s": 0.8, "data_time_s": 0.05,
                 "throughput_tokens_per_sec": 8000.0 + rng.random(), **extra}  # fmt: skip
        out.append(orjson.dumps(value))

    t = 1_700_000_000.0
    for n in range(60):
        for r in rng.sample(range(ranks), ranks):
            extra: dict[str, object] = {"world_size": ranks} if n >= 3 else {}
            if 30 <= n < 33:
                extra["phase"] = "eval"
            if n >= 45 and r == 2:
                extra["gradient_norm"] = 500.0
            emit(r, n, t + n + r * 0.01, **extra)
            if rng.random() < 0.03:
                emit(r, n, t + n + r * 0.01, **extra)  # redelivered
    t += 100
    for n in range(20, 40):  # restarted from step 20, attempt said
        for r in range(ranks):
            emit(r, n, t + n + r * 0.01, world_size=ranks, attempt=1)
    emit(4, 59, t - 50, world_size=ranks)  # a late step of the attempt that is over
    t += 100
    for n in range(10, 30):  # restarted again, attempt not said: a lower step, later
        for r in range(ranks):
            emit(r, n, t + n + r * 0.01, world_size=ranks, attempt=1)
    return out


def test_process_columns_matches_process_row_for_row() -> None:
    """Alerts, and every rank's state after each batch, the same as one event at a time."""
    from rankwatch.schemas import decode
    from rankwatch.schemas.columns import decode_batch
    from rankwatch.streams.engine import EngineConfig
    from rankwatch.streams.testing import state_difference

    messages = _life_of_a_job()
    for size in (len(messages), 97, 5, 1):
        one = Engine.with_builtin_detectors()
        # Every row that can takes the columnar path, however small the job.
        other = Engine.with_builtin_detectors(EngineConfig(columnar_from_ranks=0))
        alerts, got = [], []
        for i in range(0, len(messages), size):
            batch = messages[i : i + size]
            alerts += [a for m in batch for a in one.process(decode(m))]
            cols = decode_batch(batch).steps
            got += other.process_columns(cols, range(len(cols)))
            assert state_difference(other.jobs["life"], one.jobs["life"]) is None, i
        alerts += one.flush()
        got += other.flush()
        assert any(a.rule == "gradient_explosion" for a in alerts)
        assert any(a.rule == "job_restarted" for a in alerts)
        assert repr([a.model_dump() for a in got]) == repr([a.model_dump() for a in alerts])


class _Quiet:
    """A job rule that finds nothing and has no frame path: its ``on_step`` may read the job's
    clocks, so a release writes them to the job at every row. It keeps the clocks as each
    tick sees them (in its state, which the test compares)."""

    name = "quiet"

    def new_job_state(self) -> dict[str, list[Any]]:
        return {"ticks": []}

    def on_step(self, job: object, rank: object, state: object, event: object) -> None:
        return None

    def on_tick(self, job: Any, state: dict[str, list[Any]], now: float) -> tuple[()]:
        state["ticks"].append((now, job.watermark, job.max_step, job.last_tick, job.phase))
        return ()


class _QuietFramed(_Quiet):
    """The same rule with a frame path: every job rule has one, so a release of a big job
    writes the job's clocks only before a frame, findings or a tick."""

    def on_frame(self, job: object, state: object, frame: object, events: object) -> None:
        return None


def test_a_release_in_frames_gives_what_the_row_by_row_release_gives() -> None:
    """A 64-rank job with a straggler and a leak, checkpoints and reordering, and a 70-rank
    job's life with restarts, in batches: the same alerts, state and clocks at every tick
    whether a release writes the job's clocks at every row or only before the calls out."""
    from rankwatch.schemas import encode
    from rankwatch.simulate import JobSpec, simulate
    from rankwatch.simulate.scenarios import SCENARIOS
    from rankwatch.streams.pipeline import Pipeline
    from rankwatch.streams.registry import builtin_detectors
    from rankwatch.streams.testing import state_difference

    spec = JobSpec(job_id="frames", ranks=64, steps=160, seed=3, checkpoint_every=50)
    faults = [
        SCENARIOS["straggler"](at_step=60, rank=5),
        SCENARIOS["memory_leak"](at_step=40, rank=9),
    ]
    messages = [encode(e) for e in simulate(spec, faults, duplicates=0.01, reorder=0.02)]
    messages += _life_of_a_job(ranks=70)  # restarts (job_restarted reads the job's max_step)
    runs = []
    for rule in (_Quiet(), _QuietFramed()):
        pipeline = Pipeline(Engine([*builtin_detectors(), rule]))
        pipeline.feed_clock_from_events()
        alerts = []
        for i in range(0, len(messages), 700):
            alerts += pipeline.handle_batch(messages[i : i + 700])[0]
        runs.append((alerts + pipeline.flush(), pipeline.engine))
    (rows, a), (frames, b) = runs
    assert len(a.jobs["frames"].slots["quiet"]["ticks"]) > 100
    assert any(x.rule == "straggler" and x.status == "firing" for x in frames)
    assert repr([x.model_dump() for x in frames]) == repr([x.model_dump() for x in rows])
    assert any(x.rule == "job_restarted" for x in frames)
    assert a.jobs.keys() == b.jobs.keys() == {"frames", "life"}
    for job_id, job in a.jobs.items():
        assert state_difference(b.jobs[job_id], job) is None


def test_a_rank_far_beyond_the_others_or_a_step_past_int64_fails_no_batch() -> None:
    """A producer's bug can send rank 2**62 in a 64-rank job that declares no world size
    (valid by the contract: rank tables up to it would be exabytes), and a step of the
    largest int64 (valid) or past it (refused by the contract: every reader holds 64 bits).
    Before, the first made every later batch of the job fail (dead letters, detection lost);
    now every batch is applied and the tables keep their 64 rows, and the step past int64
    alone is a dead letter that says why."""
    import orjson

    from rankwatch.streams.pipeline import Pipeline

    engine = Engine.with_builtin_detectors()
    pipeline = Pipeline(engine)
    t = 1_700_000_000.0

    def step(rank: int, n: int) -> bytes:
        value = {"schema_version": 1, "kind": "step", "job_id": "odd", "rank": rank, "step": n,
                 "timestamp": t + min(n, 9) + min(rank, 99) * 1e-3, "loss": 2.0,
                 "learning_rate": 3e-4, "step_time_s": 1.0, "compute_time_s": 0.8,
                 "data_time_s": 0.05}  # fmt: skip
        return orjson.dumps(value)

    failed: list[str] = []
    for n in range(8):
        batch = [step(r, n) for r in range(64)]
        if n in (2, 3, 4):
            batch.append(step(2**62, n))
        if n == 5:
            batch += [step(7, 2**63 - 1), step(8, 2**63 + 5)]
        _, dead = pipeline.handle_batch(batch)
        failed += [letter.error for _, letter in dead]
    assert failed == [
        "step: Input should be less than or equal to 9223372036854775807 (got 9223372036854775813)"
    ]
    job = engine.jobs["odd"]
    assert job.tables and all(len(table) == 64 for table in job.tables.values())
